"""Layer 4: lockfsm against a real hypervisor.

Each simulated host is a virt daemon (the reference embedding, ``lockfsm.host.Host``) in its own
Python process, with its own run directory and QMP connections, driven over a pipe; the hosts
share a lockspace and the disk images, as hosts share storage.  Guests are real
``qemu-system-x86_64`` (TCG) processes run by real supervisors; migrations are real QEMU live
migrations over a Unix socket.  What the tests judge they read from the kernel (locks, processes)
and from QEMU, not from the daemons' word.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import pickle
import shutil
import signal
import subprocess
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from contextlib import suppress
from multiprocessing.connection import Connection
from typing import Any

import pytest

import lockfsm
from lockfsm import DomainState, status
from lockfsm.host import Disk, Guest, Host, migrate
from lockfsm.supervisor import EXIT_REFUSED
from tests.conftest import require
from tests.helpers import alive, lock_ranges, lockspace_locks, short_tmpdir, wait_until

QEMU = "qemu-system-x86_64"
SLOW_LINK = 1000  # bytes/s: a migration this slow is still active when it is cancelled


class RemoteError(Exception):
    """An error of a daemon process that does not cross a pipe as itself."""


def _portable(e: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RemoteError(f"{type(e).__name__}: {e}")


def _serve(conn: Connection, name: str, state_dir: str, backend: str, config: dict) -> None:
    """A daemon process: one Host, whose methods the test calls over ``conn``."""
    try:
        host = Host(name, state_dir, backend, config)
    except BaseException as e:
        conn.send(("err", _portable(e)))
        return
    conn.send(("ok", None))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            break
        if request is None:
            break
        method, args, kwargs = request
        try:
            conn.send(("ok", getattr(host, method)(*args, **kwargs)))
        except Exception as e:
            conn.send(("err", _portable(e)))
    host.close()
    conn.send(("ok", None))


class Daemon:
    """One simulated host's virt daemon, in its own process.  ``daemon.method(...)`` runs
    ``Host.method`` there and returns its result or raises its error."""

    def __init__(self, name: str, state_dir: str, backend: str, config: dict[str, Any]) -> None:
        self.name, self.state_dir = name, state_dir
        self.run_dir = str(config.get("run_dir", os.path.join(state_dir, "run")))
        ctx = multiprocessing.get_context("spawn")
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(
            target=_serve, args=(theirs, name, state_dir, backend, config), daemon=True
        )
        self.proc.start()
        theirs.close()
        self.lock = threading.Lock()
        self._answer()

    def _answer(self) -> Any:
        kind, value = self.conn.recv()
        if kind == "err":
            raise value
        return value

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            self.conn.send((method, args, kwargs))
            return self._answer()

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        return functools.partial(self.call, method)

    def kill(self) -> None:
        """kill -9 of the daemon: its guests and their supervisors go on."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(10)

    def stop(self) -> None:
        if self.proc.is_alive():
            with suppress(OSError, EOFError):
                self.conn.send(None)
                self.conn.recv()
        self.proc.join(10)
        if self.proc.is_alive():
            self.kill()
        self.conn.close()


# -- what the kernel and QEMU say ---------------------------------------------------------------


def supervisors(run_dir: str, name: str) -> list[dict[str, Any]]:
    """The live supervisors of guest ``name`` in ``run_dir``."""
    return [r for r in status.supervisors(run_dir) if r["name"] == name and r["alive"]]


def supervisor_pid(host: Daemon, name: str) -> int:
    (rec,) = supervisors(host.run_dir, name)
    return int(rec["pid"])


def lease_inode(lockspace: str, disk: str) -> int:
    """The inode of the lease file of ``disk`` (libvirt lockd's naming: sha256 of the path)."""
    return os.stat(os.path.join(lockspace, hashlib.sha256(disk.encode()).hexdigest())).st_ino


def lease_holders(lockspace: str, disk: str, pids: dict[str, int]) -> dict[str, set[int]]:
    """Which of ``pids`` (by label) lock which bytes of ``disk``'s lease file: byte 0 is the
    lease, byte 1 a migration target's gate."""
    inode = lease_inode(lockspace, disk)
    return {
        label: {byte for ino, byte, _ in lock_ranges(pid) if ino == inode}
        for label, pid in pids.items()
    }


def image_locked_by(pid: int, image: str) -> bool:
    """Whether QEMU process ``pid`` holds its own lock (bytes 100+) on ``image``."""
    inode = os.stat(image).st_ino
    return any(ino == inode and byte >= 100 for ino, byte, _ in lock_ranges(pid))


def devices(host: Daemon, name: str) -> set[str]:
    """The ids of the devices the guest's QEMU has."""
    return {p["name"] for p in host.qmp(name, "qom-list", {"path": "/machine/peripheral"})}


def qemu_exe(pid: int) -> str:
    return os.path.basename(os.readlink(f"/proc/{pid}/exe"))


def parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _qemu() -> None:
    require(QEMU)
    require("qemu-img")


@pytest.fixture
def top() -> Iterator[str]:
    d = short_tmpdir("lfq")
    os.makedirs(os.path.join(d, "ls"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def hosts(top: str) -> Iterator[Callable[[str], Daemon]]:
    """``make(name)``: a daemon process on the shared lockspace; ``make(name)`` again for a name
    made before is that host's daemon restarted (same state directory).  At the end every daemon
    stops and every supervisor its hosts ran is killed."""
    made: list[Daemon] = []

    def make(name: str) -> Daemon:
        config = {"lockspace_dir": os.path.join(top, "ls"), "shutdown_grace": 2.0}
        made.append(Daemon(name, os.path.join(top, name), "fcntl", config))
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


def test_a_guest_is_a_real_qemu_run_by_its_supervisor_with_both_locks(
    top: str, hosts: Callable[[str], Daemon]
) -> None:
    """The guest is QEMU, the child of a supervisor that holds the disk's lease (byte 0 of the
    lease file); QEMU's own image lock sits beside it (bytes 100+ of the image); the guest's
    lock-failure policy reached its supervisor."""
    a = hosts("a")
    disk = image(top, "a.qcow2")
    pid = a.start(guest("vm", disk, lock_failure="pause"))
    sup = supervisor_pid(a, "vm")
    assert qemu_exe(pid) == QEMU and parent(pid) == sup
    assert a.status("vm") == "running"
    assert lease_holders(os.path.join(top, "ls"), disk, {"sup": sup})["sup"] == {0}
    assert image_locked_by(pid, disk)
    with open(f"/proc/{sup}/cmdline") as f:
        argv = f.read().split("\0")
    assert json.loads(argv[argv.index("--launch") + 1])["config"]["lock_failure"] == "pause"
    a.shutdown("vm")
    assert not alive(pid) and lockspace_locks(os.path.join(top, "ls")) == {}


def test_a_second_start_is_refused_by_lockfsm_before_qemus_image_lock(
    top: str, hosts: Callable[[str], Daemon]
) -> None:
    """The same guest on a second host, then another guest with the same disk: lockfsm refuses
    both and their supervisors exit 75 without ever running QEMU (no QMP socket, no word from
    QEMU).  QEMU's own image lock would have been the next barrier: run bare, QEMU is refused by
    it."""
    a, b = hosts("a"), hosts("b")
    disk = image(top, "a.qcow2")
    vm = guest("vm", disk)
    a.start(vm)
    for again in (vm, guest("other", disk)):
        with pytest.raises(lockfsm.LeaseConflict, match=r"a\.qcow2") as refused:
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
    top: str, hosts: Callable[[str], Daemon]
) -> None:
    a, b = hosts("a"), hosts("b")
    lockspace = os.path.join(top, "ls")
    boot, extra, theirs = image(top, "a.qcow2"), image(top, "b.qcow2"), image(top, "c.qcow2")
    pid = a.start(guest("vm", boot))
    sup = supervisor_pid(a, "vm")
    b.start(guest("other", theirs))
    # A disk held elsewhere: refused before QEMU opens it.
    with pytest.raises(lockfsm.LeaseConflict, match=r"c\.qcow2"):
        a.hotplug("vm", Disk(theirs))
    assert sorted(n["node-name"] for n in a.qmp("vm", "query-named-block-nodes")) == ["d0", "f0"]
    assert not image_locked_by(pid, theirs)
    # A free disk: the supervisor holds its lease, QEMU has it open as a SCSI disk.
    placed = a.hotplug("vm", Disk(extra))
    assert placed.slot == 1
    assert "disk1" in devices(a, "vm")
    assert lease_holders(lockspace, extra, {"sup": sup})["sup"] == {0}
    assert image_locked_by(pid, extra)
    with pytest.raises(lockfsm.LeaseConflict):
        b.start(guest("third", extra))
    # Unplug: QEMU drops the device and closes the image; then the lease is free.
    a.unplug("vm", extra)
    assert "disk1" not in devices(a, "vm")
    assert not image_locked_by(pid, extra)
    assert lease_holders(lockspace, extra, {"sup": sup})["sup"] == set()
    b.start(guest("third", extra))
    assert a.status("vm") == "running"


def test_live_migration_hands_the_leases_over_before_the_target_runs(
    top: str, hosts: Callable[[str], Daemon]
) -> None:
    """Step by step: while QEMU migrates, the source holds every lease and the target only
    reserves them (its QEMU does not run); when QEMU is done, the target is still paused; after
    both completions the target holds every lease, runs, and the source QEMU is gone."""
    a, b = hosts("a"), hosts("b")
    lockspace = os.path.join(top, "ls")
    disks = [image(top, "a.qcow2"), image(top, "b.qcow2")]
    source_pid = a.start(guest("vm", disks[0]))
    a.hotplug("vm", Disk(disks[1]))
    src_sup = supervisor_pid(a, "vm")
    offer = a.migrate_begin("vm", "qemu+unix:///b")
    uri = b.migrate_prepare(offer)
    target_pid = b.pid("vm")
    tgt_sup = supervisor_pid(b, "vm")
    assert b.status("vm") == "inmigrate"
    pids = {"source": src_sup, "target": tgt_sup}
    for d in disks:
        assert lease_holders(lockspace, d, pids) == {"source": {0}, "target": {1}}
    a.migrate_perform("vm", uri)
    wait_until(lambda: b.status("vm") != "inmigrate", 10, "the target to receive the guest")
    assert (a.status("vm"), b.status("vm")) == ("postmigrate", "paused")
    for d in disks:
        assert lease_holders(lockspace, d, pids) == {"source": {0}, "target": {1}}
    done = threading.Thread(target=b.migrate_finish, args=("vm",))
    done.start()  # the target's completion waits for the source's
    assert a.migrate_confirm("vm") is DomainState.DONE
    done.join(30)
    assert b.status("vm") == "running"
    assert not alive(source_pid) and not alive(src_sup) and a.names() == []
    for d in disks:
        assert lease_holders(lockspace, d, {"target": tgt_sup}) == {"target": {0}}
        assert image_locked_by(target_pid, d)
    assert [d.path for d in b.guest("vm").disks] == disks
    # And back, in one call.
    times = migrate(b, a, "vm")
    assert a.status("vm") == "running" and b.names() == []
    assert 0 < times.qemu < times.total and 0 < times.handoff < times.total


def test_a_cancelled_migration_leaves_the_source_running_and_owning_every_lease(
    top: str, hosts: Callable[[str], Daemon]
) -> None:
    a, b = hosts("a"), hosts("b")
    lockspace = os.path.join(top, "ls")
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
    assert lease_holders(lockspace, disk, {"source": sup}) == {"source": {0}}
    assert lockspace_locks(lockspace) == {os.path.basename(lease_file(lockspace, disk)): ["WRITE"]}
    migrate(a, b, "vm")  # the source can still migrate, unthrottled
    assert b.status("vm") == "running"


def lease_file(lockspace: str, disk: str) -> str:
    return os.path.join(lockspace, hashlib.sha256(disk.encode()).hexdigest())


def test_kill_9_of_the_supervisor_ends_qemu_and_frees_the_disks(
    top: str, hosts: Callable[[str], Daemon]
) -> None:
    a, b = hosts("a"), hosts("b")
    disk = image(top, "a.qcow2")
    vm = guest("vm", disk)
    pid = a.start(vm)
    os.kill(supervisor_pid(a, "vm"), signal.SIGKILL)
    wait_until(lambda: not alive(pid), 10, "QEMU to die with its supervisor")
    assert lockspace_locks(os.path.join(top, "ls")) == {}
    b.start(vm)  # the guest starts again elsewhere
    assert b.status("vm") == "running"
    a.shutdown("vm")  # the daemon copes with a supervisor already gone
    assert a.names() == []


def test_a_restarted_daemon_attaches_to_the_running_guest(
    top: str, hosts: Callable[[str], Daemon]
) -> None:
    """kill -9 of the daemon: QEMU runs on, its leases held; the restarted daemon attaches
    (manager and QMP), sees the hot-plugged disk, unplugs it, and stops the guest."""
    a = hosts("a")
    lockspace = os.path.join(top, "ls")
    boot, extra = image(top, "a.qcow2"), image(top, "b.qcow2")
    pid = a.start(guest("vm", boot))
    a.hotplug("vm", Disk(extra))
    sup = supervisor_pid(a, "vm")
    a.kill()
    time.sleep(0.2)
    assert alive(pid) and alive(sup)
    for d in (boot, extra):
        assert lease_holders(lockspace, d, {"sup": sup})["sup"] == {0}
    again = hosts("a")
    assert again.attach("vm") == pid
    assert again.status("vm") == "running"
    assert [d.path for d in again.guest("vm").disks] == [boot, extra]
    again.unplug("vm", extra)
    assert lease_holders(lockspace, extra, {"sup": sup})["sup"] == set()
    again.shutdown("vm")
    assert not alive(pid) and lockspace_locks(lockspace) == {}
