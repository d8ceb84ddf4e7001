"""Interoperation with libvirt's sanlock driver: a lockfsm host (the sanlock backend with
``libvirt_disk_leases``) and a libvirt host (``lock_manager = "sanlock"``, the ``libvirt-sanlock``
plugin, ``auto_disk_leases``) protect each other's disks on libvirt's lockspace.

The libvirt host is real (tests/support/libvirt_fixture.py): libvirtd and its sanlock daemon
(host_id 1) in a private mount namespace; its guests are TCG QEMUs made with ``virsh create``.
The lockfsm host is a sanlock daemon of its own (host_id 2) on the same ``disk_lease_dir``, with
stand-in guests under real supervisors (a second QEMU on one image would meet QEMU's own image
lock before any lease mattered).  A lockfsm host on libvirt's own sanlock daemon (host_id 1: a
machine that runs both during a move) is made where a test says so.  Who holds a lease is read
from sanlock: its daemons' ``client status`` and the leases' leader records.  The daemons start
once for the module (~12 s: QEMU's capability probe, then both hosts join the lockspace).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lockfsm import BackendError, LeaseConflict, LockFSMError
from lockfsm.backends.sanlock import LIBVIRT_LOCKSPACE, local_owners, owner_of, read_leader
from lockfsm.embed.standin import Host, short_tmpdir
from lockfsm.fuzz.sanlock_daemons import Daemon, start_daemons, stop_all
from tests.support.helpers import lockfsm_status as status_of
from tests.support.helpers import made_hosts, wait_until
from tests.support.libvirt_fixture import (
    PROGRAMS,
    SANLOCK_PLUGIN,
    Libvirt,
    VirshError,
    sanlock_lease,
)
from tests.support.needs import IN_CI, missing, require, require_sanlock

PAXOS_MAGIC = 0x06152010
HELD_ELSEWHERE = "Failed to acquire lock: Lease is held by another host"

# -- the two sides ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def libvirt() -> Iterator[Libvirt]:
    for program in PROGRAMS:
        require(program)
    require_sanlock()
    if not os.path.exists(SANLOCK_PLUGIN):
        missing("libvirt-sanlock (libvirt's sanlock lock driver)")
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the libvirt tests run libvirtd and sanlock as root: CI runs as root")
        pytest.skip("libvirtd and its sanlock daemon run here as root only")
    lv = Libvirt("sanlock")
    try:
        lv.start()
        yield lv
    finally:
        lv.stop()


@pytest.fixture(scope="module")
def ours(libvirt: Libvirt) -> Iterator[Daemon]:
    """The lockfsm host's sanlock daemon, host_id 2 (it joins libvirt's lockspace with the
    first lockfsm host made on it)."""
    base = short_tmpdir("lfq")
    (daemon,) = start_daemons(base, 2, 1)
    try:
        yield daemon
    finally:
        stop_all([daemon])
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def lv(libvirt: Libvirt) -> Iterator[Libvirt]:
    """The libvirt host; every guest it runs at the end of a test is destroyed."""
    yield libvirt
    libvirt.destroy_all()


@pytest.fixture
def hosts(lv: Libvirt, ours: Daemon) -> Iterator[Callable[..., Host]]:
    """``make()``: a lockfsm host on its own sanlock daemon (host_id 2); ``make(same=True)``: a
    lockfsm host on libvirt's sanlock daemon (host_id 1).  Both use libvirt's disk leases."""

    def new(same: bool = False) -> Host:
        return Host("sanlock", **config(lv, ours, same))

    with made_hosts(new) as make:
        yield make


def config(lv: Libvirt, ours: Daemon, same: bool = False) -> dict[str, Any]:
    return {
        "lease_dir": lv.lease_dir,
        "host_id": 1 if same else ours.host_id,
        "io_timeout": 1,
        "sanlock_run_dir": lv.sanlock_run_dir if same else ours.run_dir,
        "libvirt_disk_leases": True,
    }


def image(lv: Libvirt, fmt: str = "qcow2") -> str:
    return lv.image(f"{uuidlib.uuid4().hex[:8]}.{fmt}", fmt)


def key(disk: str) -> str:
    return os.path.basename(sanlock_lease("", disk))


def libvirt_holds(lv: Libvirt, disk: str) -> list[tuple[int, str]]:
    """(pid, owner name) of each process holding ``disk``'s lease through libvirt's daemon."""
    return local_owners(lv.sanlock_run_dir, LIBVIRT_LOCKSPACE).get(key(disk), [])


def settle(lv: Libvirt, disk: str) -> None:
    """Until libvirt's daemon has let a dead QEMU's lease go (it does so asynchronously)."""
    wait_until(lambda: not libvirt_holds(lv, disk), 5, f"libvirt to let {disk} go")


def lockfsm_status(host: Host) -> str:
    """``lockfsm status`` of ``host``'s configuration, in a process of its own."""
    return status_of(host.run_dir, {"run_dir": host.run_dir, **host.extra}, "sanlock")


# -- libvirt's conventions, and a libvirt guest's disk refused to lockfsm --------------------------


def test_a_libvirt_guests_disk_is_refused_to_lockfsm_naming_the_vm(
    lv: Libvirt, hosts: Callable[..., Host]
) -> None:
    """libvirt leases a running guest's disk as ``__LIBVIRT__DISKS__:<md5 of the path as
    written>`` in ``<disk_lease_dir>/<md5>`` (1 MiB, offset 0), for the QEMU, owner name the
    VM's name; lockfsm names the disk so too.  lockfsm refuses the disk: from another host
    naming libvirt's host (host_id and name: sanlock keeps owner names in the holding daemon
    only), from libvirt's own daemon naming the VM.  Once the guest is gone lockfsm takes it."""
    disk = image(lv)
    lease = sanlock_lease(lv.lease_dir, disk)
    qemu = lv.create("g1", disk)
    assert libvirt_holds(lv, disk) == [(qemu, "g1")]
    assert os.stat(lease).st_size == 1 << 20
    assert read_leader(lease) == (PAXOS_MAGIC, LIBVIRT_LOCKSPACE, key(disk), 1, 1)
    assert owner_of(lease) == 1
    a, same = hosts(), hosts(same=True)
    assert a.driver.backend.leases("disk", disk, disk, False) == [
        {"key": key(disk), "mode": "exclusive"}
    ]
    with pytest.raises(LeaseConflict) as refused:
        a.start("vm", [disk])
    assert disk in str(refused.value) and disk in refused.value.resource
    assert refused.value.holder == f"sanlock host_id 1 ({lv.host_name})"
    with pytest.raises(LeaseConflict) as refused:
        same.start("vm", [disk])
    assert refused.value.holder == f"g1 (pid {qemu}) on this host (sanlock host_id 1)"
    assert libvirt_holds(lv, disk) == [(qemu, "g1")]  # the refusals changed nothing
    lv.destroy("g1")
    settle(lv, disk)
    g = a.start("vm", [disk])
    assert owner_of(lease) == 2
    a.stop(g)


def test_virsh_create_fails_while_lockfsm_holds_the_disk(
    lv: Libvirt, hosts: Callable[..., Host]
) -> None:
    """While a lockfsm guest holds a disk, ``virsh create`` of a guest with it fails at the
    lease, before the guest runs: also when lockfsm was given the disk through a symlink
    (lockfsm takes the canonical path's lease too), and when the lockfsm host is on libvirt's
    own daemon.  The lease file lockfsm made is libvirt's: afterwards libvirt starts on it."""
    a, same = hosts(), hosts(same=True)
    disk = image(lv)
    link = os.path.join(lv.images, "link-" + os.path.basename(disk))
    os.symlink(disk, link)
    assert [le["key"] for le in a.driver.backend.leases("disk", link, disk, False)] == [
        key(link),
        key(disk),
    ]
    for host, given, says in (
        (a, disk, HELD_ELSEWHERE),
        (a, link, HELD_ELSEWHERE),
        (same, disk, "Failed to acquire lock: File exists"),
    ):
        g = host.start("vm", [given])
        with pytest.raises(VirshError, match=says):
            lv.create("g1", disk)
        assert "g1" not in lv.virsh("list", "--all", "--name").stdout.split()
        host.stop(g)
    qemu = lv.create("g1", disk)
    assert lv.state("g1") == "running" and libvirt_holds(lv, disk) == [(qemu, "g1")]
    lv.destroy("g1")


# -- shareable disks, paused guests --------------------------------------------------------------


def test_a_shareable_disk_is_shared_by_both_sides_and_a_writer_of_either_is_refused(
    lv: Libvirt, hosts: Callable[..., Host]
) -> None:
    """A lockfsm guest's shared lease and a libvirt ``<shareable/>`` guest's shared lease
    coexist; a libvirt writer and a lockfsm writer are both refused while they run."""
    a, b = hosts(), hosts()
    raw = image(lv, "raw")
    g = a.start("vm", shared=[raw])
    qemu = lv.create("s1", raw, fmt="raw", shareable=True)
    assert lv.state("s1") == "running" and libvirt_holds(lv, raw) == [(qemu, "s1")]
    with pytest.raises(VirshError, match="Failed to acquire lock"):
        lv.create("writer", raw, fmt="raw")
    with pytest.raises(LeaseConflict, match=raw):
        b.start("writer", [raw])
    lv.destroy("s1")
    settle(lv, raw)
    with pytest.raises(VirshError, match="Failed to acquire lock"):
        lv.create("writer", raw, fmt="raw")
    a.stop(g)


def test_a_paused_libvirt_guest_holds_no_lease_and_cannot_resume_over_lockfsm(
    lv: Libvirt, hosts: Callable[..., Host]
) -> None:
    """libvirt holds a guest's leases only while its CPUs run: lockfsm takes the disk of a
    guest created paused; resuming it is refused while lockfsm holds the disk."""
    a = hosts()
    disk = image(lv)
    lv.create("g1", disk, "--paused")
    assert libvirt_holds(lv, disk) == []
    g = a.start("vm", [disk])
    with pytest.raises(VirshError, match=HELD_ELSEWHERE):
        lv.virsh("resume", "g1")
    assert lv.state("g1") == "paused"
    a.stop(g)
    lv.virsh("resume", "g1")
    assert lv.state("g1") == "running"


def test_a_read_only_libvirt_disk_has_no_lease(lv: Libvirt, hosts: Callable[..., Host]) -> None:
    """libvirt takes no lease for a ``<readonly/>`` disk: a lockfsm writer starts beside the
    libvirt reader (a limit, in the README).  A lockfsm reader's shared lease keeps a libvirt
    writer out."""
    a = hosts()
    disk = image(lv)
    lv.create("reader", disk, readonly=True)
    assert libvirt_holds(lv, disk) == []
    g = a.start("vm", [disk])
    a.stop(g)
    lv.destroy("reader")
    g = a.start("vm", shared=[disk])
    with pytest.raises(VirshError, match="Failed to acquire lock"):
        lv.create("writer", disk)
    a.stop(g)


# -- lockfsm status ------------------------------------------------------------------------------


def test_lockfsm_status_lists_libvirts_holders(
    lv: Libvirt, ours: Daemon, hosts: Callable[..., Host]
) -> None:
    """``lockfsm status`` lists the leases libvirt's guests hold, by lease file, with libvirt's
    host id and host name; on libvirt's own daemon with the VM names (and QEMU pids) too; a
    shared lease of both sides shows both holders."""
    a, same = hosts(), hosts(same=True)
    disk, raw = image(lv), image(lv, "raw")
    qemu = lv.create("g1", disk)
    g = a.start("vm", shared=[raw])
    shared = lv.create("s1", raw, fmt="raw", shareable=True)
    far = lockfsm_status(a)
    assert f"lease file {key(disk)}  held  held by sanlock (host_id 1, host {lv.host_name})" in far
    assert f"lease file {key(raw)}  held  held by sanlock (host_id 1, host {lv.host_name})" in far
    assert f"{raw}  shared  held by domain vm" in far
    near = lockfsm_status(same)
    assert (
        f"lease file {key(disk)}  held  held by sanlock (host_id 1, host {lv.host_name}, "
        f"owner g1, pids [{qemu}])"
    ) in near
    assert f"owner s1, pids [{shared}])" in near
    assert f"lease file {key(raw)}  held  held by sanlock (host_id 2, host {ours.name})" in near
    a.stop(g)


# -- lease files: one another host is initialising, one the cleanup tool deleted -----------------


def test_a_lease_file_deleted_by_virt_sanlock_cleanup_is_made_again(
    lv: Libvirt, hosts: Callable[..., Host]
) -> None:
    """``virt-sanlock-cleanup`` (run in libvirt's namespace) deletes every free lease file,
    lockfsm's too.  lockfsm makes a lease file deleted after the daemon named the disk again
    when its supervisor acquires (as the daemon makes it); libvirt then finds it held."""
    a = hosts()
    disk, other = image(lv), image(lv)
    lv.create("g1", other)  # a held lease: the cleanup leaves it
    mgr = a.manager("vm", disks=[disk])  # the daemon names the disk: its lease file is made
    lease = sanlock_lease(lv.lease_dir, disk)
    assert os.path.exists(lease)
    done = subprocess.run(
        ["nsenter", "-t", str(lv.pid("libvirtd")), "-m", "virt-sanlock-cleanup"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert f"Cleanup: {LIBVIRT_LOCKSPACE}:{key(disk)}:{lease}:0 PASS" in done.stdout
    assert not os.path.exists(lease)
    assert os.path.exists(sanlock_lease(lv.lease_dir, other)), "a held lease file is kept"
    a.launch(mgr)
    mgr.get_child(timeout=10)
    assert owner_of(lease) == 2
    with pytest.raises(VirshError, match=HELD_ELSEWHERE):
        lv.create("g2", disk)
    mgr.shutdown()


def test_a_lease_file_another_host_is_initialising_is_waited_for_never_written(
    lv: Libvirt, hosts: Callable[..., Host]
) -> None:
    """libvirt creates a lease file in place: empty, then zero-filled, then initialised.  lockfsm
    waits for such a file and uses it once initialised; one that stays uninitialised is refused
    with an error naming it, and left as it is."""
    a = hosts()
    disk, stuck = image(lv), image(lv)
    lease = sanlock_lease(lv.lease_dir, disk)
    open(lease, "x").close()

    def libvirt_finishes() -> None:
        time.sleep(0.5)
        os.truncate(lease, 1 << 20)
        time.sleep(0.5)
        subprocess.run(
            ["sanlock", "direct", "init", "-r", f"{LIBVIRT_LOCKSPACE}:{key(disk)}:{lease}:0"],
            capture_output=True,
            check=True,
            timeout=30,
        )

    maker = threading.Thread(target=libvirt_finishes)
    began = time.monotonic()
    maker.start()
    try:
        g = a.start("vm", [disk])
    finally:
        maker.join()
    assert time.monotonic() - began >= 1.0
    assert owner_of(lease) == 2
    a.stop(g)
    half = sanlock_lease(lv.lease_dir, stuck)
    with open(half, "wb") as f:
        f.truncate(1 << 20)
    with pytest.raises(LockFSMError, match=f"lease file {half} exists but is still not") as e:
        a.start("vm", [stuck])
    assert isinstance(e.value, BackendError), e.value
    with open(half, "rb") as f:
        assert f.read() == bytes(1 << 20), "left as it was"
    os.unlink(half)


# -- configuration (no daemon needed) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"libvirt_disk_leases": "yes"}, "'libvirt_disk_leases'.*'yes' is not true or false"),
        (
            {"libvirt_disk_leases": True, "lockspace": "mine"},
            "lockspace 'mine': with libvirt_disk_leases the lockspace is libvirt's",
        ),
    ],
)
def test_the_setting_is_checked(workdir: str, extra: dict[str, Any], says: str) -> None:
    """A bad value of the setting, or a lockspace of lockfsm's own beside it, is refused naming
    the value before any lease file is made."""
    import lockfsm

    lease_dir = os.path.join(workdir, "l")
    config = {"run_dir": workdir, "lease_dir": lease_dir, "host_id": 1, **extra}
    with pytest.raises(lockfsm.InvalidArgument, match=says):
        lockfsm.load_driver("sanlock", config)
    assert not os.path.exists(lease_dir) or os.listdir(lease_dir) == []
