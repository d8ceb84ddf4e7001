"""Interoperation with libvirt's lockd: a lockfsm host and a libvirt host on one lockspace
protect each other's disks.

The libvirt host is real (tests/support/libvirt_fixture.py): libvirtd with ``lock_manager =
"lockd"`` and virtlockd with ``file_lockspace_dir`` pointing at the lockspace directory the lockfsm
hosts use as ``lockspace_dir``; its guests are TCG QEMUs made with ``virsh create``.  The lockfsm
hosts are virt daemons in processes of their own (``lockfsm.embed.host.Host`` behind
tests/support/qemu_daemon.py) running real QEMUs under ``lockfsm-supervisor``.  Who holds a lease is
read from the kernel's lock table, never from either side's records.  The daemons start once for the
module (~8 s: QEMU's capability probe).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from contextlib import suppress

import pytest

from lockfsm import LeaseConflict
from lockfsm.backends.fcntl import CHECK_EVERY, GATE_BYTE
from lockfsm.embed.host import Disk, Guest
from lockfsm.embed.standin import Host, short_tmpdir
from lockfsm.protocol import kernel
from lockfsm.protocol.kernel import fd_locks
from lockfsm.supervisor.leases import LeaseMachines
from lockfsm.tools import status
from tests.support.helpers import lockfsm_status as status_of
from tests.support.helpers import wait_until
from tests.support.libvirt_fixture import PROGRAMS, Libvirt, VirshError, lease_name
from tests.support.needs import IN_CI, require
from tests.support.qemu_daemon import Daemon

# -- the two sides ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def libvirt() -> Iterator[Libvirt]:
    for program in PROGRAMS:
        require(program)
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the libvirt tests run libvirtd and virtlockd as root: CI runs as root")
        pytest.skip("libvirtd and virtlockd run here as root only")
    lv = Libvirt()
    try:
        lv.start()
        yield lv
    finally:
        lv.stop()


@pytest.fixture
def lv(libvirt: Libvirt) -> Iterator[Libvirt]:
    """The libvirt host; every guest it runs at the end of a test is destroyed."""
    yield libvirt
    libvirt.destroy_all()


@pytest.fixture
def hosts(lv: Libvirt) -> Iterator[Callable[[str], Daemon]]:
    """``make(name)``: a lockfsm host on the libvirt host's lockspace, in a process of its own.
    At the end every lockfsm daemon stops and every supervisor is killed."""
    top = short_tmpdir("lfw")
    made: list[Daemon] = []
    config = {"lockspace_dir": lv.lockspace, "shutdown_grace": 2.0}

    def make(name: str) -> Daemon:
        made.append(Daemon(name, os.path.join(top, name), "fcntl", config))
        return made[-1]

    yield make
    for d in made:
        d.stop()
    for d in made:
        for rec in status.supervisors(d.run_dir):
            if rec["alive"]:
                with suppress(ProcessLookupError):
                    os.kill(rec["pid"], signal.SIGKILL)
    shutil.rmtree(top, ignore_errors=True)


def image(libvirt: Libvirt, fmt: str = "qcow2") -> str:
    return libvirt.image(f"{uuidlib.uuid4().hex[:8]}.{fmt}", fmt)


def guest(name: str, *disks: Disk) -> Guest:
    return Guest(name=name, uuid=str(uuidlib.uuid4()), id=1, disks=disks)


def supervisor_of(host: Daemon, name: str) -> int:
    (rec,) = [r for r in status.supervisors(host.run_dir) if r["name"] == name and r["alive"]]
    return int(rec["pid"])


def locks_on(path: str) -> list[tuple[str, str, int]]:
    """(class, kind, pid) of each lock the kernel lists on byte 0 of the file at ``path``
    (an OFD lock has no pid: -1), from one consistent reading of /proc/locks."""
    found = kernel.locks_on([os.stat(path).st_ino])
    return sorted((lock.cls, lock.kind, lock.pid) for lock in found if lock.bytes.start == 0)


def holds(pid: int, path: str, kind: str) -> bool:
    """Whether process ``pid`` holds a ``kind`` lock on byte 0 of the file now at ``path``."""
    return (os.stat(path).st_ino, 0, kind) in fd_locks(pid)


def busy(lease: str) -> str:
    """virsh's words when virtlockd finds the lease locked by someone else."""
    return f"resource busy: Lockspace resource '{os.path.basename(lease)}' is locked"


def lockfsm_status(host: Daemon, libvirt: Libvirt) -> str:
    return status_of(host.state_dir, {"lockspace_dir": libvirt.lockspace, "run_dir": host.run_dir})


# -- exclusive disks -------------------------------------------------------------------------------


def test_a_libvirt_guests_disk_is_refused_to_a_lockfsm_guest(
    lv: Libvirt, hosts: Callable[[str], Daemon]
) -> None:
    """While a libvirt guest runs, lockfsm refuses its disk before QEMU starts: LeaseConflict
    names the disk and virtlockd as another lock manager; ``lockfsm status`` shows the lease
    held by it.  Once the libvirt guest is gone (virtlockd deleted the lease file), lockfsm
    takes the disk."""
    a = hosts("a")
    disk = image(lv)
    lease = lease_name(lv.lockspace, disk)
    virtlockd = lv.pid("virtlockd")
    lv.create("lv", disk)
    assert locks_on(lease) == [("POSIX", "WRITE", virtlockd)]
    with pytest.raises(LeaseConflict) as refused:
        a.start(guest("vm", Disk(disk)))
    said = str(refused.value)
    assert disk in said and disk in refused.value.resource
    assert f"another lock manager (pid {virtlockd}, POSIX lock)" in said
    assert "status 75" in " ".join(getattr(refused.value, "__notes__", []))  # no QEMU run
    assert a.names() == []
    key = os.path.basename(lease)
    assert f"lease file {key}  exclusive  held by another lock manager (pid {virtlockd})" in (
        lockfsm_status(a, lv)
    )
    lv.destroy("lv")
    assert not os.path.exists(lease), "virtlockd deletes the lease files it lets go"
    a.start(guest("vm", Disk(disk)))
    assert holds(supervisor_of(a, "vm"), lease, "WRITE")
    a.shutdown("vm")


def test_a_lockfsm_guests_disk_makes_virsh_create_fail(
    lv: Libvirt, hosts: Callable[[str], Daemon]
) -> None:
    """While a lockfsm guest runs, ``virsh create`` of a guest with its disk fails with
    libvirt's "resource busy", at the lease, before QEMU runs; also when lockfsm was given the
    disk through a symlink (lockfsm locks the canonical path's lease too).  After the lockfsm
    guest stops, libvirt starts it."""
    a = hosts("a")
    disk = image(lv)
    lease = lease_name(lv.lockspace, disk)
    link = os.path.join(lv.images, "link-" + os.path.basename(disk))
    os.symlink(disk, link)
    for given in (disk, link):
        a.start(guest("vm", Disk(given)))
        assert holds(supervisor_of(a, "vm"), lease, "WRITE")
        with pytest.raises(VirshError, match=busy(lease)):
            lv.create("lv", disk)
        assert "lv" not in lv.virsh("list", "--all", "--name").stdout.split()
        a.shutdown("vm")
    lv.create("lv", disk)
    assert lv.state("lv") == "running"
    lv.destroy("lv")


# -- shared and read-only disks --------------------------------------------------------------------


def test_two_guests_one_from_each_side_share_a_shareable_raw_disk(
    lv: Libvirt, hosts: Callable[[str], Daemon]
) -> None:
    """A shareable raw disk: a lockfsm guest (shared lease: an OFD read lock) and a libvirt
    guest (``<shareable/>``: virtlockd's POSIX read lock) run together; a writer of either side
    is refused.  When the libvirt guest stops, virtlockd cannot upgrade its lock to delete the
    lease file (lockfsm's read lock is in the way), so the file stays: the lockfsm guest runs on
    past its supervisor's checks and the disk stays guarded."""
    a, b = hosts("a"), hosts("b")
    raw = image(lv, "raw")
    lease = lease_name(lv.lockspace, raw)
    virtlockd = lv.pid("virtlockd")
    a.start(guest("vm", Disk(raw, format="raw", shared=True)))
    lv.create("lv", raw, fmt="raw", shareable=True)
    assert lv.state("lv") == "running" and a.status("vm") == "running"
    assert locks_on(lease) == [("OFDLCK", "READ", -1), ("POSIX", "READ", virtlockd)]
    sup = supervisor_of(a, "vm")
    assert holds(sup, lease, "READ")
    shown = lockfsm_status(a, lv)
    assert f"{raw}  shared  held by domain vm" in shown
    assert f"shared  held by another lock manager (pid {virtlockd})" in shown
    with pytest.raises(VirshError, match=busy(lease)):
        lv.create("lv-writer", raw, fmt="raw")
    with pytest.raises(LeaseConflict, match=raw):
        b.start(guest("writer", Disk(raw, format="raw")))
    inode = os.stat(lease).st_ino
    lv.destroy("lv")
    assert os.stat(lease).st_ino == inode, "virtlockd left the lease file in place"
    time.sleep(CHECK_EVERY * 2.5)
    assert a.status("vm") == "running" and holds(sup, lease, "READ")
    with pytest.raises(VirshError, match=busy(lease)):
        lv.create("lv-writer", raw, fmt="raw")
    a.shutdown("vm")


def test_a_read_only_lockfsm_disk_blocks_a_libvirt_writer(
    lv: Libvirt, hosts: Callable[[str], Daemon]
) -> None:
    """lockfsm takes a shared lease for a read-only disk: a libvirt guest that would write it
    is refused.  libvirt takes no lease for its own read-only disks, so a libvirt reader starts
    beside it (and would beside a lockfsm writer: a limit of libvirt's lockd)."""
    a = hosts("a")
    disk = image(lv)
    lease = lease_name(lv.lockspace, disk)
    a.start(guest("vm", Disk(disk, readonly=True)))
    assert holds(supervisor_of(a, "vm"), lease, "READ")
    with pytest.raises(VirshError, match=busy(lease)):
        lv.create("lv-writer", disk)
    lv.create("lv-reader", disk, readonly=True)
    assert lv.state("lv-reader") == "running"
    assert locks_on(lease) == [("OFDLCK", "READ", -1)], "libvirt's reader took no lease"
    lv.destroy("lv-reader")
    a.shutdown("vm")


def test_a_paused_libvirt_guest_holds_no_lease_and_cannot_resume_over_lockfsm(
    lv: Libvirt,
) -> None:
    """libvirt holds a guest's leases only while its CPUs run: a guest created paused holds
    none, and lockfsm grants its disk.  Resuming the libvirt guest takes the lease again:
    refused while lockfsm holds it.  (The lockfsm guest is a stand-in process here: on one host
    a second QEMU would meet QEMU's own image lock before any lease mattered.)"""
    disk = image(lv)
    lease = lease_name(lv.lockspace, disk)
    lv.create("lv", disk, "--paused")
    assert not os.path.exists(lease), "no lease for a paused guest"
    host = Host("fcntl", lv.lockspace)
    try:
        g = host.start("vm", [disk])
        assert holds(g.supervisor_pid, lease, "WRITE")
        with pytest.raises(VirshError, match=busy(lease)):
            lv.virsh("resume", "lv")
        assert lv.state("lv") == "paused"
        g.mgr.shutdown()
    finally:
        host.cleanup()
    lv.virsh("resume", "lv")
    assert lv.state("lv") == "running"
    lv.virsh("suspend", "lv")
    assert not os.path.exists(lease), "suspend lets the lease go"
    lv.destroy("lv")


# -- lease files virtlockd deletes -----------------------------------------------------------------


def test_a_migration_targets_reservation_outlives_virtlockd_deleting_the_lease_file(
    lv: Libvirt, hosts: Callable[[str], Daemon]
) -> None:
    """A lockfsm guest on a shareable raw disk migrates while a libvirt guest shares the disk.
    After the source let its lease go, the target holds only its gate (byte 1); when the libvirt
    guest stops, virtlockd's upgrade to delete the lease file succeeds (it locks byte 0 only), so
    the gate is left on a deleted inode.  The target locks the file now at the path again, and
    its take-over holds the lease there: a libvirt writer is still refused."""
    a, b = hosts("a"), hosts("b")
    raw = image(lv, "raw")
    lease = lease_name(lv.lockspace, raw)
    vm = guest("vm", Disk(raw, format="raw", shared=True))
    a.start(vm)
    lv.create("lv", raw, fmt="raw", shareable=True)
    offer = a.migrate_begin("vm", "qemu+unix:///system")
    uri = b.migrate_prepare(offer)
    target = supervisor_of(b, "vm")
    gated = os.stat(lease).st_ino
    assert (gated, GATE_BYTE, "WRITE") in fd_locks(target)
    a.migrate_perform("vm", uri)
    a.migrate_confirm("vm")  # the source's QEMU is gone, its lease let go
    lv.destroy("lv")  # virtlockd deletes the lease file
    wait_until(
        lambda: os.path.exists(lease) and os.stat(lease).st_ino != gated,
        CHECK_EVERY * 3,
        "the target to lock the lease file anew",
    )
    assert (os.stat(lease).st_ino, GATE_BYTE, "WRITE") in fd_locks(target)
    b.migrate_finish("vm")
    assert b.status("vm") == "running" and holds(target, lease, "READ")
    with pytest.raises(VirshError, match=busy(lease)):
        lv.create("lv-writer", raw, fmt="raw")
    b.shutdown("vm")


# -- the same, replayed without the daemons: the take-over of a deleted lease file ---------------


def test_a_take_over_locks_the_file_now_at_the_path(lockspace: str) -> None:
    """A reserved lease whose file was deleted meanwhile (as virtlockd does above) is taken
    over on the file now at the path (then settled: the gate let go); a rival on that file
    refuses it, and the
    reservation is kept for a later try."""
    key = hashlib.sha256(b"/images/deleted-under-a-gate.raw").hexdigest()
    path = os.path.join(lockspace, key)
    lease = {"key": key, "mode": "shared"}
    leases = LeaseMachines("fcntl", {"lockspace_dir": lockspace})
    leases.reserve(lease, "disk x")
    os.unlink(path)
    rival = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(rival, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)  # virtlockd's kind of lock
        with pytest.raises(LeaseConflict, match=f"another lock manager \\(pid {os.getpid()}"):
            leases.take_over([(lease, "disk x")])
        assert leases.state(key) == "reserved"
    finally:
        os.close(rival)
    leases.take_over([(lease, "disk x")])
    mine = {(ino, byte, kind) for ino, byte, kind in fd_locks(os.getpid())}
    inode = os.stat(path).st_ino
    assert os.fstat(leases.holder.fds[key]).st_ino == inode  # type: ignore[attr-defined]
    assert {(inode, 0, "READ")} <= mine
    assert (inode, GATE_BYTE, "WRITE") not in mine, "settled: the gate is let go"
    assert leases.poll() is None
    leases.release(lease)
