"""Layer 4: lockfsm against a real hypervisor, on every backend.

Each simulated host is a virt daemon (the reference embedding, ``lockfsm.embed.host.Host``) in its
own Python process (tests/support/qemu_daemon.py), with its own run directory and QMP connections;
the hosts share the disk images and the lock service, as hosts share storage: an fcntl lockspace, a
sanlock lockspace (one sanlock daemon per host) or an etcd key space (one lease agent per host).
Guests are real ``qemu-system-x86_64`` (TCG) processes run by real supervisors; migrations are
real QEMU live migrations over a Unix socket.  Who holds a lease is read from the kernel's locks,
the sanlock daemons or etcd, and what runs from the kernel and QEMU, never from lockfsm's records.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import pytest

import lockfsm
from lockfsm import DomainState
from lockfsm.backends.sanlock import NAME_LEN as SANLOCK_NAME_LEN
from lockfsm.embed.host import Disk, Guest, HypervisorError, migrate
from lockfsm.embed.standin import short_tmpdir
from lockfsm.fuzz.procs import parent_of
from lockfsm.protocol.kernel import alive, command_line, fd_locks
from lockfsm.supervisor.process import EXIT_REFUSED
from lockfsm.tools import status
from tests.support.etcd_cluster import held as etcd_keys
from tests.support.helpers import locked_inodes, wait_until
from tests.support.needs import require
from tests.support.qemu_daemon import Daemon

QEMU = "qemu-system-x86_64"
SLOW_LINK = 1000  # bytes/s: a migration this slow is still active when it is cancelled


# -- what the kernel, the lock services and QEMU say --------------------------------------------


class Storage:
    """The shared storage of the simulated hosts on one backend: each host's configuration, and
    who holds a disk's lease, read from the lock service itself (never from lockfsm's records)."""

    backend = ""

    def config(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def holds(self, pid: int, disk: str) -> bool:
        """Whether supervisor ``pid`` holds the disk's exclusive lease."""
        raise NotImplementedError

    def reserves(self, pid: int, disk: str) -> bool:
        """Whether migration target ``pid`` reserved the lease without holding it."""
        raise NotImplementedError

    def free(self, disk: str) -> bool:
        """Whether no one holds the disk's lease."""
        raise NotImplementedError


class Fcntl(Storage):
    """A lockspace directory: byte 0 of a lease file is the lease, byte 1 a target's gate."""

    backend = "fcntl"

    def __init__(self, top: str) -> None:
        self.lockspace = os.path.join(top, "ls")
        os.makedirs(self.lockspace)

    def config(self, index: int) -> dict[str, Any]:
        return {"lockspace_dir": self.lockspace, "shutdown_grace": 2.0}

    def _bytes(self, pid: int, disk: str) -> set[int]:
        name = os.path.join(self.lockspace, hashlib.sha256(disk.encode()).hexdigest())
        inode = os.stat(name).st_ino
        return {byte for ino, byte, _ in fd_locks(pid) if ino == inode}

    def holds(self, pid: int, disk: str) -> bool:
        return self._bytes(pid, disk) == {0}

    def reserves(self, pid: int, disk: str) -> bool:
        return self._bytes(pid, disk) == {1}

    def free(self, disk: str) -> bool:
        name = os.path.join(self.lockspace, hashlib.sha256(disk.encode()).hexdigest())
        return os.stat(name).st_ino not in locked_inodes()


class Sanlock(Storage):
    """A sanlock lockspace, one sanlock daemon per host; a target reserves nothing there (the
    handoff checks the lease version instead)."""

    backend = "sanlock"

    def __init__(self, sanlock_cluster: Any) -> None:
        self.cluster = sanlock_cluster

    def config(self, index: int) -> dict[str, Any]:
        return dict(self.cluster.config(self.cluster.daemons[index], shutdown_grace=2.0))

    def _holders(self, disk: str) -> set[int]:
        key = hashlib.sha256(os.path.realpath(disk).encode()).hexdigest()[:SANLOCK_NAME_LEN]
        return {pid for d in self.cluster.daemons if (pid := d.held().get(key)) is not None}

    def holds(self, pid: int, disk: str) -> bool:
        return self._holders(disk) == {pid}

    def reserves(self, pid: int, disk: str) -> bool:
        return pid not in self._holders(disk)

    def free(self, disk: str) -> bool:
        return not self._holders(disk)


class Etcd(Storage):
    """An etcd lockspace under the shared hosts' key prefix, one lease agent per host: ``x`` the
    exclusive holder, ``r`` a migration target's reservation, each naming its supervisor."""

    backend = "etcd"

    def __init__(self, sites: list[Any], client: Any) -> None:
        self.sites, self.db = sites, client
        self.prefix = sites[0].config["prefix"]

    def config(self, index: int) -> dict[str, Any]:
        return {**self.sites[index].config, "shutdown_grace": 2.0}

    def _keys(self, disk: str) -> dict[str, dict[str, Any]]:
        key = hashlib.sha256(os.path.realpath(disk).encode()).hexdigest()
        return dict(etcd_keys(self.db, self.prefix).get(key, {}))

    def holds(self, pid: int, disk: str) -> bool:
        return self._keys(disk).get("x", {}).get("pid") == pid

    def reserves(self, pid: int, disk: str) -> bool:
        keys = self._keys(disk)
        return keys.get("r", {}).get("pid") == pid and keys.get("x", {}).get("pid") != pid

    def free(self, disk: str) -> bool:
        return not self._keys(disk)


def supervisors(run_dir: str, name: str) -> list[dict[str, Any]]:
    """The live supervisors of guest ``name`` in ``run_dir``."""
    return [r for r in status.supervisors(run_dir) if r["name"] == name and r["alive"]]


def supervisor_pid(host: Daemon, name: str) -> int:
    (rec,) = supervisors(host.run_dir, name)
    return int(rec["pid"])


def image_locked_by(pid: int, image: str) -> bool:
    """Whether QEMU process ``pid`` holds its own lock (bytes 100+) on ``image``."""
    inode = os.stat(image).st_ino
    return any(ino == inode and byte >= 100 for ino, byte, _ in fd_locks(pid))


def devices(host: Daemon, name: str) -> set[str]:
    """The ids of the devices the guest's QEMU has."""
    found = host.qmp(name, "qom-list", {"path": "/machine/peripheral"})
    return {p["name"] for p in found if p["type"].startswith("child<")}


def qemu_exe(pid: int) -> str:
    return os.path.basename(os.readlink(f"/proc/{pid}/exe"))


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qemu() -> None:
    require(QEMU)
    require("qemu-img")


@pytest.fixture
def top() -> Iterator[str]:
    d = short_tmpdir("lfq")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["fcntl", "sanlock", "etcd"])
def storage(request: pytest.FixtureRequest, top: str) -> Storage:
    if request.param == "sanlock":
        return Sanlock(request.getfixturevalue("cluster"))
    if request.param == "etcd":
        return Etcd(request.getfixturevalue("shared_sites"), request.getfixturevalue("db"))
    return Fcntl(top)


@pytest.fixture
def hosts(qemu: None, top: str, storage: Storage) -> Iterator[Callable[[str], Daemon]]:
    """``make(name)``: a daemon process on the shared storage; ``make(name)`` again for a name
    made before is that host's daemon restarted (same state directory, same lock service).  At
    the end every daemon stops and every supervisor its hosts ran is killed."""
    made: list[Daemon] = []
    index: dict[str, int] = {}

    def make(name: str) -> Daemon:
        i = index.setdefault(name, len(index))
        made.append(Daemon(name, os.path.join(top, name), storage.backend, storage.config(i)))
        return made[-1]

    yield make
    for d in made:
        d.stop()
    for run_dir in {d.run_dir for d in made}:
        for rec in status.supervisors(run_dir):
            if rec["alive"]:
                with suppress(ProcessLookupError):
                    os.kill(rec["pid"], signal.SIGKILL)  # its QEMU dies with it


def image(top: str, name: str, fmt: str = "qcow2") -> str:
    path = os.path.join(top, name)
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, path, "16M"], check=True)
    return path


def guest(name: str, *disks: str, **kw: Any) -> Guest:
    return Guest(name=name, uuid=str(uuidlib.uuid4()), id=1, disks=[Disk(d) for d in disks], **kw)


# -- the tests ------------------------------------------------------------------------------------


def test_a_guest_definition_places_its_disks_and_makes_qemus_command_line() -> None:
    """Slots are SCSI ids, kept across hot-plug and unplug so a target started from the live
    definition has the source's devices; CPUs start stopped; a target waits for its stream."""
    g = guest("vm", "/img/a", "/img/b")
    assert [d.slot for d in g.disks] == [0, 1]
    g = g.without_disk("/img/a").with_disk(Disk("/img/c")).with_disk(Disk("/img/d"))
    assert [(d.path, d.slot) for d in g.disks] == [("/img/b", 1), ("/img/c", 0), ("/img/d", 2)]
    assert Guest.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    argv = g.argv(QEMU, "/run/q.sock")
    assert argv[0] == QEMU and argv[-1] == "-S" and "-incoming" not in argv
    assert g.argv(QEMU, "/run/q.sock", incoming=True)[-3:] == ["-S", "-incoming", "defer"]
    devices = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-device"]
    assert [(d["driver"], d.get("scsi-id")) for d in devices] == [
        ("virtio-scsi-pci", None),
        ("scsi-hd", 1),
        ("scsi-hd", 0),
        ("scsi-hd", 2),
    ]
    shared = guest("vm", "/img/s").with_disk(Disk("/img/r", readonly=True, shared=True))
    assert (
        shared.disk("/img/r").flags == lockfsm.ResourceFlags.SHARED | lockfsm.ResourceFlags.READONLY
    )
    for bad in (
        lambda: g.with_disk(Disk("/img/b")),  # twice
        lambda: Disk("relative.qcow2"),
        lambda: Disk("/img/x", format="vmdk"),
        lambda: guest("vm", lock_failure="restart"),
        lambda: g.argv(QEMU, "/run/a,b.sock"),
    ):
        with pytest.raises(lockfsm.InvalidArgument):
            bad()


def test_a_guest_is_a_real_qemu_run_by_its_supervisor_with_both_locks(
    top: str, storage: Storage, hosts: Callable[[str], Daemon]
) -> None:
    """The guest is QEMU, the child of a supervisor that holds the disk's lease; QEMU's own
    image lock (bytes 100+ of the image) sits beside it; the guest's lock-failure policy
    reached its supervisor."""
    a = hosts("a")
    disk = image(top, "a.qcow2")
    pid = a.start(guest("vm", disk, lock_failure="pause"))
    sup = supervisor_pid(a, "vm")
    assert qemu_exe(pid) == QEMU and parent_of(pid) == sup
    assert a.status("vm") == "running"
    assert storage.holds(sup, disk) and image_locked_by(pid, disk)
    argv = command_line(sup)
    assert json.loads(argv[argv.index("--launch") + 1])["lock_failure"] == "pause"
    a.shutdown("vm")
    assert not alive(pid) and storage.free(disk)


def test_a_second_start_is_refused_by_lockfsm_before_qemus_image_lock(
    top: str, storage: Storage, hosts: Callable[[str], Daemon]
) -> None:
    """The same guest on a second host, then another guest with the same disk: lockfsm refuses
    both and their supervisors exit 75 without ever running QEMU (no QMP socket, no word from
    QEMU).  QEMU's own image lock would have been the next barrier: run bare, QEMU is refused by
    it."""
    a, b = hosts("a"), hosts("b")
    disk = image(top, "a.qcow2")
    vm = guest("vm", disk)
    a.start(vm)
    # The same guest is refused by whichever of its leases comes first (in key order): the
    # disk's or its own; another guest by the disk's.
    own = re.escape(f"the own lease of guest {vm.uuid}")
    for again, named in ((vm, rf"a\.qcow2|{own}"), (guest("other", disk), r"a\.qcow2")):
        with pytest.raises(lockfsm.LeaseConflict, match=named) as refused:
            b.start(again)
        assert f"exited with status {EXIT_REFUSED}" in " ".join(refused.value.__notes__)
        assert not os.path.exists(os.path.join(b.state_dir, f"{again.uuid[:13]}.qmp"))
        with open(os.path.join(b.state_dir, f"{again.uuid[:13]}.log")) as f:
            said = f.read()
        assert "lockfsm-supervisor:" in said and "qemu-system" not in said, said
        assert b.names() == []
    bare = subprocess.run(
        [*vm.argv(QEMU, os.path.join(top, "bare.qmp"))[:-1], "-daemonize"],  # no -S
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bare.returncode != 0 and 'Failed to get "write" lock' in bare.stderr, bare.stderr


def test_hotplug_takes_the_lease_first_and_unplug_gives_it_back_last(
    top: str, storage: Storage, hosts: Callable[[str], Daemon]
) -> None:
    a, b = hosts("a"), hosts("b")
    boot, extra, theirs = image(top, "a.qcow2"), image(top, "b.qcow2"), image(top, "c.qcow2")
    pid = a.start(guest("vm", boot))
    sup = supervisor_pid(a, "vm")
    b.start(guest("other", theirs))
    # A disk held elsewhere: refused before QEMU opens it.
    with pytest.raises(lockfsm.LeaseConflict, match=r"c\.qcow2"):
        a.hotplug("vm", Disk(theirs))
    nodes = a.qmp("vm", "query-named-block-nodes")
    assert sorted(n["node-name"] for n in nodes) == ["d0", "f0"]
    assert not image_locked_by(pid, theirs)
    # A disk QEMU refuses (a raw file called qcow2): its lease is taken, then given back.
    bad = image(top, "bad.raw", "raw")
    with pytest.raises(HypervisorError, match="qcow2"):
        a.hotplug("vm", Disk(bad))
    assert storage.free(bad) and devices(a, "vm") == {"scsi0", "disk0"}
    # A free disk: the supervisor holds its lease, QEMU has it open as a SCSI disk.
    placed = a.hotplug("vm", Disk(extra))
    assert placed.slot == 1 and "disk1" in devices(a, "vm")
    assert storage.holds(sup, extra) and image_locked_by(pid, extra)
    with pytest.raises(lockfsm.LeaseConflict):
        b.start(guest("third", extra))
    # Unplug: QEMU drops the device and closes the image; then the lease is free.
    a.unplug("vm", extra)
    assert "disk1" not in devices(a, "vm")
    assert not image_locked_by(pid, extra) and storage.free(extra)
    b.start(guest("third", extra))
    assert a.status("vm") == "running"


def test_live_migration_hands_the_leases_over_before_the_target_runs(
    top: str, storage: Storage, hosts: Callable[[str], Daemon]
) -> None:
    """Step by step: while QEMU migrates, the source holds every lease and the target none (its
    QEMU does not run); when QEMU is done the target is still paused, holding nothing; after
    both completions the target holds every lease and runs, and the source QEMU is gone."""
    a, b = hosts("a"), hosts("b")
    disks = [image(top, "a.qcow2"), image(top, "b.qcow2")]
    source_pid = a.start(guest("vm", disks[0]))
    a.hotplug("vm", Disk(disks[1]))
    src = supervisor_pid(a, "vm")
    offer = a.migrate_begin("vm", "qemu+unix:///b")
    uri = b.migrate_prepare(offer)
    target_pid = b.pid("vm")
    tgt = supervisor_pid(b, "vm")
    assert b.status("vm") == "inmigrate"
    assert all(storage.holds(src, d) and storage.reserves(tgt, d) for d in disks)
    a.migrate_perform("vm", uri)
    wait_until(lambda: b.status("vm") != "inmigrate", 10, "the target to receive the guest")
    assert (a.status("vm"), b.status("vm")) == ("postmigrate", "paused")
    assert all(storage.holds(src, d) and storage.reserves(tgt, d) for d in disks)
    errors: list[BaseException] = []

    def finish() -> None:
        try:
            b.migrate_finish("vm")
        except BaseException as e:  # judged below
            errors.append(e)

    done = threading.Thread(target=finish)
    done.start()  # the target's completion waits for the source's
    assert a.migrate_confirm("vm") is DomainState.DONE
    done.join(30)
    assert not done.is_alive() and not errors, errors
    assert b.status("vm") == "running"
    assert not alive(source_pid) and not alive(src) and a.names() == []
    assert all(storage.holds(tgt, d) and image_locked_by(target_pid, d) for d in disks)
    assert [d.path for d in b.guest("vm").disks] == disks
    # And back, in one call.
    times = migrate(b, a, "vm")
    assert a.status("vm") == "running" and b.names() == []
    assert 0 < times.qemu < times.total and 0 < times.handoff < times.total


def test_a_cancelled_migration_leaves_the_source_running_and_owning_every_lease(
    top: str, storage: Storage, hosts: Callable[[str], Daemon]
) -> None:
    a, b = hosts("a"), hosts("b")
    disk = image(top, "a.qcow2")
    pid = a.start(guest("vm", disk))
    sup = supervisor_pid(a, "vm")
    uri = b.migrate_prepare(a.migrate_begin("vm", "qemu+unix:///b"))
    target_pid = b.pid("vm")
    a.migrate_perform("vm", uri, max_bandwidth=SLOW_LINK, wait=False)
    assert a.qmp("vm", "query-migrate")["status"] == "active"
    assert a.migrate_abort("vm") == "cancelled"
    b.migrate_finish("vm", cancel=True)
    assert a.migrate_confirm("vm", cancel=True) is DomainState.STARTED
    assert a.status("vm") == "running" and alive(pid)
    wait_until(lambda: not alive(target_pid), 10, "the incoming QEMU to end")
    assert b.names() == [] and supervisors(b.run_dir, "vm") == []
    assert storage.holds(sup, disk)
    if isinstance(storage, Fcntl):  # and the target's reservation went with it
        assert list(locked_inodes().get(os.stat(lease_file(storage, disk)).st_ino, [])) == ["WRITE"]
    migrate(a, b, "vm")  # the source can still migrate, unthrottled
    assert b.status("vm") == "running"


def lease_file(storage: Fcntl, disk: str) -> str:
    return os.path.join(storage.lockspace, hashlib.sha256(disk.encode()).hexdigest())


def test_kill_9_of_the_supervisor_ends_qemu_and_frees_the_disks(
    top: str, storage: Storage, hosts: Callable[[str], Daemon]
) -> None:
    a, b = hosts("a"), hosts("b")
    disk = image(top, "a.qcow2")
    vm = guest("vm", disk)
    pid = a.start(vm)
    os.kill(supervisor_pid(a, "vm"), signal.SIGKILL)
    wait_until(lambda: not alive(pid), 10, "QEMU to die with its supervisor")
    wait_until(lambda: storage.free(disk), 5, "the lease to come free")
    b.start(vm)  # the guest starts again elsewhere
    assert b.status("vm") == "running"
    a.shutdown("vm")  # the daemon copes with a supervisor already gone
    assert a.names() == []


def test_a_restarted_daemon_attaches_to_the_running_guest(
    top: str, storage: Storage, hosts: Callable[[str], Daemon]
) -> None:
    """kill -9 of the daemon: QEMU runs on, its leases held; the restarted daemon attaches
    (manager and QMP), sees the hot-plugged disk, unplugs it, and stops the guest."""
    a = hosts("a")
    boot, extra = image(top, "a.qcow2"), image(top, "b.qcow2")
    pid = a.start(guest("vm", boot))
    a.hotplug("vm", Disk(extra))
    sup = supervisor_pid(a, "vm")
    a.kill()
    time.sleep(0.2)
    assert alive(pid) and alive(sup)
    assert storage.holds(sup, boot) and storage.holds(sup, extra)
    again = hosts("a")
    assert again.attach("vm") == pid
    assert again.status("vm") == "running"
    assert [d.path for d in again.guest("vm").disks] == [boot, extra]
    again.unplug("vm", extra)
    assert storage.free(extra) and storage.holds(sup, boot)
    again.shutdown("vm")
    assert not alive(pid) and storage.free(boot)
