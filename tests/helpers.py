"""Test helpers: a simulated host (a lockspace, a run dir, a driver) that starts guests under real
supervisor processes, and readers of the kernel's view of locks and processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from typing import Any

import lockfsm
from lockfsm import NewFlags, ResourceFlags, ResourceType

GUEST = ["sleep", "1000"]  # a stand-in guest: a real process that runs until killed


def short_tmpdir(prefix: str = "lf") -> str:
    """A short directory under /tmp (Unix socket paths hold at most 107 bytes)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def proc_state(pid: int) -> str:
    """The one-letter state of process ``pid`` (R, S, T for stopped, Z...), or "" if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ""


def wait_until(predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


PAGE = os.sysconf("SC_PAGE_SIZE")


def read_proc_locks(keep: Callable[[str], bool] | None = None) -> str | None:
    """/proc/locks as one consistent reading (only the lines ``keep`` accepts), or None.

    The kernel makes the table a page per read() and resumes the next read() by position, so a
    reading in several pieces that overlaps a lock change anywhere on the machine repeats or
    drops lines (measured here: about 1 reading in 70 while another process takes and drops
    ten locks in a loop).  One read() that returns less than a page is one pass under the
    kernel's lock: complete and consistent.  A longer table (other programs on the machine
    hold many locks) is read whole until two readings in a row agree on the lines kept."""
    last = None
    for _ in range(20):
        fd = os.open("/proc/locks", os.O_RDONLY)
        try:
            chunk = os.read(fd, 1 << 16)
            if len(chunk) < PAGE - 256:  # room for another line: the table ended in this pass
                text = chunk.decode()
                return "\n".join(x for x in text.splitlines() if keep is None or keep(x))
            while more := os.read(fd, 1 << 16):
                chunk += more
        finally:
            os.close(fd)
        kept = "\n".join(x for x in chunk.decode().splitlines() if keep is None or keep(x))
        if kept == last:
            return kept
        last = kept
        time.sleep(0.002)
    return None


def lock_bytes(start: str, end: str) -> range:
    """The bytes a lock from ``start`` to ``end`` (as the kernel prints them) covers.  The
    kernel merges one open file description's adjacent locks of one kind into one range (a
    target's gate on byte 1 and its lease on byte 0 show as 0-1), so a range is read byte by
    byte; a lock to the end of the file ("EOF") counts as its first byte."""
    first = int(start)
    return range(first, first + 1 if end == "EOF" else int(end) + 1)


def locked_inodes(inodes: Iterable[int] | None = None) -> dict[int, list[str]]:
    """inode -> lock kinds ("WRITE"/"READ") of the OFD and POSIX locks the kernel lists (on
    ``inodes`` only, if given), from one consistent reading of /proc/locks."""
    wanted = None if inodes is None else {str(i) for i in inodes}

    def keep(line: str) -> bool:
        parts = line.split()
        return parts[1] != "->" and (wanted is None or parts[5].rsplit(":", 1)[1] in wanted)

    text = read_proc_locks(keep)
    if text is None:
        raise AssertionError("/proc/locks changes too fast for a consistent reading")
    found: dict[int, list[str]] = {}
    for line in text.splitlines():
        parts = line.split()
        found.setdefault(int(parts[5].rsplit(":", 1)[1]), []).append(parts[3])
    return found


def lock_ranges(pid: int) -> set[tuple[int, int, str]]:
    """(inode, byte, kind) of every byte locked through process ``pid``'s open files."""
    found: set[tuple[int, int, str]] = set()
    with suppress(FileNotFoundError, ProcessLookupError):
        for fd in os.listdir(f"/proc/{pid}/fdinfo"):
            with suppress(FileNotFoundError), open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("lock:"):
                        parts = line.split()
                        inode = int(parts[6].rsplit(":", 1)[1])
                        for byte in lock_bytes(parts[7], parts[8]):
                            found.add((inode, byte, parts[4]))
    return found


def fd_locks(pid: int) -> set[int]:
    """Inodes on which the open files of process ``pid`` hold a lock (from /proc/pid/fdinfo)."""
    inodes: set[int] = set()
    with suppress(FileNotFoundError, ProcessLookupError):
        for fd in os.listdir(f"/proc/{pid}/fdinfo"):
            with suppress(FileNotFoundError), open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("lock:"):
                        inodes.add(int(line.split()[6].rsplit(":", 1)[1]))
    return inodes


class Guest:
    """One started guest: its manager, its supervisor process, its disks."""

    def __init__(
        self,
        host: Host,
        mgr: lockfsm.LockManager,
        proc: subprocess.Popen[bytes],
        name: str,
        uuid: str,
        disks: list[str],
    ) -> None:
        self.host, self.mgr, self.proc = host, mgr, proc
        self.name, self.uuid, self.disks = name, uuid, disks
        self.pid: int | None = None

    @property
    def supervisor_pid(self) -> int:
        return self.proc.pid


class Host:
    """A simulated host: its own run dir and a lockspace (shared with other hosts if given)."""

    def __init__(
        self,
        backend: str = "fcntl",
        lockspace: str | None = None,
        run_dir: str | None = None,
        **extra: Any,
    ) -> None:
        self.backend = backend
        self.extra = extra
        self.run_dir = run_dir or short_tmpdir("lfr")
        self.lockspace = lockspace or short_tmpdir("lfl")
        self.driver = self.load()
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"run_dir": self.run_dir, "shutdown_grace": 2.0, **self.extra}
        if self.backend == "fcntl":
            cfg["lockspace_dir"] = self.lockspace
        return cfg

    def load(self) -> lockfsm.LockDriver:
        return lockfsm.load_driver(self.backend, self.config)

    def restart_daemon(self) -> None:
        """Forget every manager, as a daemon that died would, and load the driver anew."""
        self.driver = self.load()

    def manager(
        self,
        name: str,
        uuid: str,
        disks: Iterable[str] = (),
        flags: int = 0,
        shared: Iterable[str] = (),
        id: int = 1,
    ) -> lockfsm.LockManager:
        mgr = self.driver.new_manager(NewFlags(flags))
        mgr.set_parameter("uuid", uuid)
        mgr.set_parameter("name", name)
        mgr.set_parameter("id", id)
        for d in disks:
            mgr.register_resource(ResourceType.DISK, d)
        for d in shared:
            mgr.register_resource(ResourceType.DISK, d, ResourceFlags.SHARED)
        return mgr

    def launch(
        self, mgr: lockfsm.LockManager, guest: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [mgr.supervisor_path, *mgr.supervisor_args, "--", *(guest or GUEST)],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc

    def start(
        self,
        name: str,
        disks: Iterable[str] = (),
        shared: Iterable[str] = (),
        uuid: str | None = None,
        guest: list[str] | None = None,
    ) -> Guest:
        """Start a guest; on refusal the LockFSMError propagates (the supervisor is reaped)."""
        uuid = uuid or str(uuidlib.uuid4())
        disks = list(disks)
        mgr = self.manager(name, uuid, disks, shared=shared)
        proc = self.launch(mgr, guest)
        g = Guest(self, mgr, proc, name, uuid, disks + list(shared))
        try:
            g.pid = mgr.get_child(timeout=10)
        except lockfsm.LockFSMError:
            proc.wait(10)
            raise
        return g

    def attach(self, g: Guest) -> lockfsm.LockManager:
        mgr = self.manager(g.name, g.uuid, flags=NewFlags.ATTACH)
        g.pid = mgr.get_child(timeout=10)
        g.mgr = mgr
        return mgr

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with suppress(ProcessLookupError):
                    proc.kill()
            proc.wait(10)
            if proc.stderr:
                proc.stderr.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def make_disks(directory: str, *names: str) -> list[str]:
    paths = []
    for n in names:
        p = os.path.join(directory, n)
        with open(p, "wb") as f:
            f.truncate(1 << 20)
        paths.append(p)
    return paths


def lease_inode(lockspace: str, key: str) -> int:
    return os.stat(os.path.join(lockspace, key)).st_ino


def leases_of(mgr: lockfsm.LockManager) -> Iterator[tuple[str, str]]:
    """(key, mode) of every lease the manager's supervisor holds: its resources' and the
    guest's own lease on its uuid (domain_lease)."""
    for res, leases in mgr._registry.everything(mgr._params.get("uuid")):
        del res
        for lease in leases:
            yield lease["key"], lease["mode"]


def lockspace_locks(lockspace: str) -> dict[str, list[str]]:
    """Lease file name -> kinds of the locks the kernel lists on it, for one lockspace only."""
    names = {}
    for name in sorted(os.listdir(lockspace)):
        with suppress(FileNotFoundError):
            names[os.stat(os.path.join(lockspace, name)).st_ino] = name
    kernel = locked_inodes(names)
    return {name: sorted(kernel[ino]) for ino, name in sorted(names.items()) if ino in kernel}


class HostPair:
    """A source and a target host on one lockspace, joined so that tests read as the protocol
    (after h11's ConnectionPair).  Each side's calls go to its own host's driver and managers."""

    def __init__(self, lockspace: str, backend: str = "fcntl", **extra: Any) -> None:
        self.lockspace = lockspace
        self.source = Host(backend, lockspace, **extra)
        self.target = Host(backend, lockspace, **extra)
        self.guest: Guest | None = None
        self.incoming: Guest | None = None
        self.cookie: str | None = None

    def start(self, name: str, disks: Iterable[str] = (), shared: Iterable[str] = ()) -> Guest:
        """The guest starts on the source."""
        self.guest = self.source.start(name, disks, shared)
        return self.guest

    def prepare(self, hosturi: str = "qemu+tcp://target/system") -> str:
        """Source: prepare_migrate; the cookie is kept for the target."""
        assert self.guest is not None
        self.cookie = self.guest.mgr.prepare_migrate(hosturi)
        return self.cookie

    def incoming_start(self, guest: list[str] | None = None) -> Guest:
        """Target: a MIGRATE manager with the cookie, its supervisor, get_child."""
        assert self.guest is not None and self.cookie is not None
        g = self.guest
        disks = [r.path for r in g.mgr.resources if not r.shared]
        shared = [r.path for r in g.mgr.resources if r.shared]
        mgr = self.target.manager(g.name, g.uuid, disks, flags=NewFlags.MIGRATE, shared=shared)
        mgr.set_parameter("migration_cookie", self.cookie)
        proc = self.target.launch(mgr, guest)
        self.incoming = Guest(self.target, mgr, proc, g.name, g.uuid, disks + shared)
        self.incoming.pid = mgr.get_child(timeout=10)
        return self.incoming

    def migrate(self, order: str = "target-first") -> None:
        """Both sides complete: target first (its call waits for the source's, as two daemons
        would run them), or source first."""
        assert self.guest is not None and self.incoming is not None
        source, target = self.guest.mgr, self.incoming.mgr
        if order == "source-first":
            source.complete_migrate_in()
            target.complete_migrate_in()
            return
        errors: list[BaseException] = []

        def run() -> None:
            try:
                target.complete_migrate_in()
            except BaseException as e:  # reported to the caller below
                errors.append(e)

        import threading

        t = threading.Thread(target=run)
        t.start()
        wait_until(lambda: target._launch is not None, what="target waiting")
        time.sleep(0.05)  # let the target's take-over begin before the source completes
        source.complete_migrate_in()
        t.join(60)
        if errors:
            raise errors[0]

    def cancel(self, order: str = "target-first") -> None:
        assert self.guest is not None and self.incoming is not None
        sides = [self.incoming.mgr, self.guest.mgr]
        for mgr in sides if order == "target-first" else reversed(sides):
            mgr.complete_migrate_in(cancel=True)

    def cleanup(self) -> None:
        self.source.cleanup()
        self.target.cleanup()
