"""The fcntl backend against real contending processes.

Each contender is its own process (OFD locks of one process would also conflict, but a guest's
leases live in another process than its rival's): ``HolderProc`` runs a ``FcntlHolder`` in a
child Python driven line by line over a pipe; foreign lockers (virtlockd's POSIX lock, QEMU's
image locks) are small child programs too.  Outcomes are read from the kernel (/proc/locks,
/proc/<pid>/fdinfo), not from lockfsm's own bookkeeping.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lockfsm import BackendError, LeaseConflict, ResourceFlags, ResourceType, load_driver
from lockfsm.embed.standin import Host, make_disks
from lockfsm.errors import BY_NAME
from lockfsm.protocol.kernel import alive, read_proc_locks
from tests.support.helpers import inodes_locked_by, leases_of, locked_inodes

# A FcntlHolder in its own process.  LF_REPLACE=n: before each of its first n attempts to lock,
# another process replaces the lease file (as virtlockd deletes lease files it holds), exactly in
# the window between the holder's open and its lock.  An audit hook is the only way to reach into
# that window; it changes nothing in the holder's code path.
HOLDER = r"""
import fcntl, json, os, struct, subprocess, sys
os.umask(0)  # the lease file's mode must come from lockfsm, not from the umask
from lockfsm.backends.fcntl import FcntlHolder
from lockfsm.errors import LockFSMError

lockspace = sys.argv[1]
budget = [int(os.environ.get("LF_REPLACE", "0"))]
opens = {}
busy = [False]

def hook(event, args):
    if busy[0]:
        return
    if event == "open" and isinstance(args[0], str) and args[0].startswith(lockspace + "/"):
        opens[args[0]] = opens.get(args[0], 0) + 1
    if event == "fcntl.fcntl" and args[1] == fcntl.F_OFD_SETLK and budget[0] > 0:
        if struct.unpack("hhqqi", args[2])[0] != fcntl.F_UNLCK:
            budget[0] -= 1
            path = os.readlink(f"/proc/self/fd/{args[0]}")
            busy[0] = True
            try:
                subprocess.run(
                    ["sh", "-c", 'umask 077 && : > "$1.new" && mv -f "$1.new" "$1"', "sh", path],
                    check=True,
                )
            finally:
                busy[0] = False

sys.addaudithook(hook)
leases = {}


class View:
    # The lease machines a supervisor would have: held while the holder has the file.

    def state(self, key):
        return "held" if key in holder.fds else None

    def keys(self, *states):
        return sorted(k for k in holder.fds if "held" in states)

    def lease(self, key):
        return leases[key]

    def label(self, key):
        return key


holder = FcntlHolder(lockspace, View())
print(json.dumps({"ready": True, "nfds": len(os.listdir("/proc/self/fd"))}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    reply = {"ok": True}
    try:
        if req["op"] == "acquire":
            leases[req["lease"]["key"]] = req["lease"]
            holder.acquire(req["lease"], req["resource"])
        else:
            holder.release([req["lease"]])
    except LockFSMError as e:
        reply = {"ok": False, "error": type(e).__name__, "message": str(e),
                 "resource": getattr(e, "resource", None), "holder": getattr(e, "holder", None)}
    busy[0] = True
    reply["held"] = sorted(holder.fds)
    reply["nfds"] = len(os.listdir("/proc/self/fd"))
    reply["opens"] = opens
    busy[0] = False
    print(json.dumps(reply), flush=True)
"""

# virtlockd's lock: a classic POSIX write lock on byte 0 of the lease file.
POSIX_LOCKER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
except OSError as e:
    print(f"refused {e.errno}", flush=True)
    sys.exit(0)
print("ready", flush=True)
sys.stdin.read()
"""

# QEMU's image locks: OFD write locks on bytes 100 and 200 of the image.
QEMU_LOCKER = r"""
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
for start in (100, 200):
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, start, 1, 0))
print("ready", flush=True)
sys.stdin.read()
"""

TIMEOUT = 10.0


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
    if not ready:
        raise AssertionError(f"process {proc.pid} did not answer within {TIMEOUT} s")
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"process {proc.pid} exited ({proc.wait(TIMEOUT)})")
    return line


class HolderProc:
    """A process holding leases through its own FcntlHolder."""

    def __init__(self, lockspace: str, replace: int = 0) -> None:
        self.lockspace = lockspace
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, lockspace],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "LF_REPLACE": str(replace)},
        )
        self.last: dict[str, Any] = json.loads(read_line(self.proc))
        self.idle_fds: int = self.last["nfds"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(
        self, op: str, key: str, mode: str = "exclusive", resource: str = ""
    ) -> dict[str, Any]:
        assert self.proc.stdin is not None
        lease = {"key": key, "mode": mode}
        self.proc.stdin.write(json.dumps({"op": op, "lease": lease, "resource": resource}) + "\n")
        self.proc.stdin.flush()
        self.last = json.loads(read_line(self.proc))
        return self.last

    def _raise(self, reply: dict[str, Any]) -> None:
        if reply["ok"]:
            return
        cls = BY_NAME[reply["error"]]
        if cls is LeaseConflict:
            raise LeaseConflict(reply["message"], reply["resource"], reply["holder"])
        raise cls(reply["message"])

    def acquire(self, key: str, mode: str = "exclusive", resource: str = "disk /img") -> None:
        self._raise(self.call("acquire", key, mode, resource))

    def release(self, key: str, mode: str = "exclusive") -> None:
        self._raise(self.call("release", key, mode))

    def assert_holds_nothing(self) -> None:
        """After a refusal: no lease recorded, no lock in the kernel, no descriptor leaked."""
        assert self.last["held"] == []
        assert inodes_locked_by(self.pid) == set()
        assert self.last["nfds"] == self.idle_fds

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


class Helper:
    """A foreign locker program that prints one line once it holds (or failed to get) its lock."""

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.said = read_line(self.proc).strip()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


@pytest.fixture
def spawn(lockspace: str) -> Iterator[Callable[..., HolderProc]]:
    made: list[HolderProc] = []

    def make(replace: int = 0) -> HolderProc:
        h = HolderProc(lockspace, replace)
        made.append(h)
        return h

    yield make
    for h in made:
        h.kill()


@pytest.fixture
def helper() -> Iterator[Callable[..., Helper]]:
    made: list[Helper] = []

    def make(script: str, *args: str) -> Helper:
        h = Helper(script, *args)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


def lock_ranges(path: str) -> list[tuple[str, str, int, int]]:
    """(class, kind, start, end) of every granted lock the kernel lists on the file at ``path``."""
    st = os.stat(path)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    found = []
    text = read_proc_locks(lambda line: line.split()[5] == ident)
    assert text is not None, "/proc/locks changes too fast for a consistent reading"
    for line in text.splitlines():
        parts = line.split()
        if parts[1] == "->" or parts[5] != ident:
            continue
        end = -1 if parts[7] == "EOF" else int(parts[7])
        found.append((parts[1], parts[3], int(parts[6]), end))
    return sorted(found)


# -- exclusive and shared leases ------------------------------------------------------------------


def test_exclusive_refuses_exclusive(spawn: Callable[..., HolderProc], lockspace: str) -> None:
    """A second exclusive holder gets LeaseConflict naming the resource and holds nothing after;
    the lease is a write lock on byte 0 only, and release lets the other process take it."""
    key = sha("/images/a.img")
    a, b = spawn(), spawn()
    a.acquire(key, resource="disk /images/a.img")
    ino = os.stat(os.path.join(lockspace, key)).st_ino
    assert inodes_locked_by(a.pid) == {ino}
    assert lock_ranges(os.path.join(lockspace, key)) == [("OFDLCK", "WRITE", 0, 0)]

    with pytest.raises(LeaseConflict) as err:
        b.acquire(key, resource="disk /images/a.img")
    assert err.value.resource == "disk /images/a.img"
    assert "disk /images/a.img" in str(err.value)
    assert "another lockfsm supervisor" in err.value.holder
    b.assert_holds_nothing()
    assert inodes_locked_by(a.pid) == {ino}

    a.release(key)
    assert inodes_locked_by(a.pid) == set()
    b.acquire(key)
    assert inodes_locked_by(b.pid) == {ino}


def test_same_key_twice_in_one_holder(spawn: Callable[..., HolderProc]) -> None:
    """Acquiring a lease the holder already holds is a BackendError that keeps the lease held."""
    key = sha("/images/twice.img")
    a = spawn()
    a.acquire(key)
    with pytest.raises(BackendError, match="already held"):
        a.acquire(key)
    assert a.last["held"] == [key]
    assert len(inodes_locked_by(a.pid)) == 1


def test_shared_leases_coexist(spawn: Callable[..., HolderProc], lockspace: str) -> None:
    """Two shared holders coexist (two read locks on byte 0); an exclusive one is refused."""
    key = sha("/images/shared.iso")
    a, b, c = spawn(), spawn(), spawn()
    a.acquire(key, "shared")
    b.acquire(key, "shared")
    ino = os.stat(os.path.join(lockspace, key)).st_ino
    assert inodes_locked_by(a.pid) == inodes_locked_by(b.pid) == {ino}
    assert lock_ranges(os.path.join(lockspace, key)) == [("OFDLCK", "READ", 0, 0)] * 2
    with pytest.raises(LeaseConflict):
        c.acquire(key, "exclusive", resource="disk /images/shared.iso")
    c.assert_holds_nothing()


@pytest.mark.parametrize(("first", "second"), [("shared", "exclusive"), ("exclusive", "shared")])
def test_shared_and_exclusive_exclude(
    spawn: Callable[..., HolderProc], first: str, second: str
) -> None:
    """A shared and an exclusive lease of one disk exclude each other, whichever came first."""
    key = sha("/images/mixed.img")
    a, b = spawn(), spawn()
    a.acquire(key, first)
    with pytest.raises(LeaseConflict) as err:
        b.acquire(key, second, resource="disk /images/mixed.img")
    assert err.value.resource == "disk /images/mixed.img"
    b.assert_holds_nothing()
    a.release(key, first)
    b.acquire(key, second)


# -- other lock managers and other programs -------------------------------------------------------


def test_posix_lock_of_virtlockd_refuses(
    spawn: Callable[..., HolderProc], helper: Callable[..., Helper], lockspace: str
) -> None:
    """virtlockd's POSIX write lock on byte 0 refuses both lease modes, naming "another lock
    manager" and its pid; once it lets go the lease is ours, and then virtlockd is refused."""
    key = sha("/images/libvirt.img")
    path = os.path.join(lockspace, key)
    virtlockd = helper(POSIX_LOCKER, path)
    assert virtlockd.said == "ready"
    a = spawn()
    for mode in ("exclusive", "shared"):
        with pytest.raises(LeaseConflict) as err:
            a.acquire(key, mode, resource="disk /images/libvirt.img")
        assert "another lock manager" in err.value.holder
        assert f"pid {virtlockd.pid}" in err.value.holder
        assert err.value.resource == "disk /images/libvirt.img"
        a.assert_holds_nothing()

    virtlockd.stop()
    a.acquire(key)
    late = helper(POSIX_LOCKER, path)
    assert late.said.startswith("refused"), late.said


def test_image_itself_is_never_opened(
    host: Host, helper: Callable[..., Helper], workdir: str
) -> None:
    """With QEMU's image locks (OFD write locks on bytes 100 and 200) on the image, a start of
    that disk succeeds, and neither the supervisor nor the guest opens or locks the image."""
    (image,) = make_disks(workdir, "qemu.img")
    ino = os.stat(image).st_ino
    qemu = helper(QEMU_LOCKER, image)
    assert qemu.said == "ready"

    g = host.start("imaged", [image])
    assert g.pid is not None
    assert lock_ranges(image) == [("OFDLCK", "WRITE", 100, 100), ("OFDLCK", "WRITE", 200, 200)]
    lease_inodes = {os.stat(os.path.join(host.lockspace, k)).st_ino for k, _ in leases_of(g.mgr)}
    assert inodes_locked_by(g.supervisor_pid) == lease_inodes
    for pid in (g.supervisor_pid, g.pid):
        assert ino not in inodes_locked_by(pid)
        targets = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                targets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except FileNotFoundError:
                pass
        assert image not in targets
    g.mgr.shutdown()
    assert lock_ranges(image) == [("OFDLCK", "WRITE", 100, 100), ("OFDLCK", "WRITE", 200, 200)]


# -- lease files deleted or replaced under a holder -----------------------------------------------


def test_deleted_lease_file_gives_way(spawn: Callable[..., HolderProc], lockspace: str) -> None:
    """A lease file deleted while held (as virtlockd does) no longer guards the name: the next
    holder creates and locks the new file at the path, and a third is refused by it."""
    key = sha("/images/deleted.img")
    path = os.path.join(lockspace, key)
    a, b, c = spawn(), spawn(), spawn()
    a.acquire(key)
    old = os.stat(path).st_ino
    os.unlink(path)
    b.acquire(key)
    new = os.stat(path).st_ino
    assert new != old
    assert inodes_locked_by(b.pid) == {new}
    assert inodes_locked_by(a.pid) == {old}
    with pytest.raises(LeaseConflict):
        c.acquire(key)
    c.assert_holds_nothing()


def test_lease_file_replaced_after_open_is_locked_anew(
    spawn: Callable[..., HolderProc], lockspace: str
) -> None:
    """When another process replaces the lease file between the holder's open and its lock, the
    holder notices the inode changed, drops that lock and locks the file now at the path."""
    key = sha("/images/replaced.img")
    path = os.path.join(lockspace, key)
    a = spawn(replace=1)
    a.acquire(key)
    assert a.last["opens"] == {path: 2}  # one attempt on the replaced file, one on the new
    here = os.stat(path).st_ino
    assert inodes_locked_by(a.pid) == {here}
    assert a.last["nfds"] == a.idle_fds + 1
    assert os.stat(path).st_size == 0  # the replacing process's empty file, never written
    b = spawn()
    with pytest.raises(LeaseConflict):
        b.acquire(key)
    b.assert_holds_nothing()


def test_lease_file_always_replaced_is_refused(
    spawn: Callable[..., HolderProc], lockspace: str
) -> None:
    """A lease file replaced at every attempt is a BackendError after a bounded number of tries,
    with no lock and no descriptor left behind."""
    key = sha("/images/churn.img")
    a = spawn(replace=1000)
    with pytest.raises(BackendError, match="keeps being replaced"):
        a.acquire(key)
    a.assert_holds_nothing()
    assert 1 < a.last["opens"][os.path.join(lockspace, key)] < 100


# -- what the lockspace may contain --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["directory", "symlink", "dangling symlink", "fifo"])
def test_foreign_lease_entry_is_refused(
    spawn: Callable[..., HolderProc], lockspace: str, workdir: str, kind: str
) -> None:
    """A lease entry that is not a regular file is a BackendError: a symlink is not followed
    (its target is neither created, written nor locked), nothing is replaced or held."""
    key = sha(f"/images/{kind}.img")
    path = os.path.join(lockspace, key)
    target = os.path.join(workdir, "target")
    if kind == "directory":
        os.mkdir(path)
    elif kind == "symlink":
        with open(target, "w") as f:
            f.write("precious")
        os.symlink(target, path)
    elif kind == "dangling symlink":
        os.symlink(target, path)
    else:
        os.mkfifo(path)
    before = os.lstat(path)

    a = spawn()
    with pytest.raises(BackendError) as err:
        a.acquire(key)
    assert not isinstance(err.value, LeaseConflict)
    assert path in str(err.value)
    a.assert_holds_nothing()
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    if kind == "symlink":
        with open(target) as f:
            assert f.read() == "precious"
        assert os.stat(target).st_ino not in locked_inodes()
    if kind == "dangling symlink":
        assert not os.path.lexists(target)


def test_lease_files_are_0600_and_never_truncated(
    spawn: Callable[..., HolderProc], lockspace: str
) -> None:
    """A lease file lockfsm creates is 0600 whatever the umask; an existing one (as libvirt's
    lockd leaves them: empty, not writable by others) keeps its size, mode and mtime through
    acquire and release.  A non-empty one is refused: tests/test_bad_input.py."""
    a = spawn()
    fresh = sha("/images/fresh.img")
    a.acquire(fresh)
    st = os.stat(os.path.join(lockspace, fresh))
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size == 0

    old = sha("/images/old.img")
    path = os.path.join(lockspace, old)
    with open(path, "wb"):
        pass
    os.chmod(path, 0o640)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    a.acquire(old)
    a.release(old)
    a.acquire(old, "shared")
    a.release(old, "shared")
    st = os.stat(path)
    assert (st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0, 0o640, 1_000_000_000)


def test_release_of_lease_not_held(spawn: Callable[..., HolderProc]) -> None:
    """Releasing a lease never taken, or released already, is a BackendError."""
    key = sha("/images/never.img")
    a = spawn()
    with pytest.raises(BackendError, match="not held"):
        a.release(key)
    a.acquire(key)
    a.release(key)
    with pytest.raises(BackendError, match="not held"):
        a.release(key)
    a.assert_holds_nothing()


def test_holder_death_frees_lease_at_once(spawn: Callable[..., HolderProc]) -> None:
    """L2: once a holder is killed with SIGKILL, its leases are free at once (no wait, no
    cleanup by anyone)."""
    key, shared_key = sha("/images/dead.img"), sha("/images/dead.iso")
    a, b = spawn(), spawn()
    a.acquire(key)
    a.acquire(shared_key, "shared")
    with pytest.raises(LeaseConflict):
        b.acquire(key)
    os.kill(a.pid, signal.SIGKILL)
    a.proc.wait(TIMEOUT)
    assert not alive(a.pid)
    b.acquire(key)
    b.acquire(shared_key, "exclusive")


# -- lease names ----------------------------------------------------------------------------------


def test_lease_names(lockspace: str, workdir: str) -> None:
    """The lease of a disk is the SHA-256 hex of the path as given (as libvirt's lockd names
    it), plus that of the canonical path where it differs (symlink, '..')."""
    driver = load_driver("fcntl", {"lockspace_dir": lockspace, "run_dir": workdir})
    (disk,) = make_disks(workdir, "named.img")
    os.mkdir(os.path.join(workdir, "sub"))
    link = os.path.join(workdir, "link.img")
    os.symlink(disk, link)
    dotted = os.path.join(workdir, "sub", "..", "named.img")

    def names(path: str, flags: int = 0) -> list[tuple[str, str]]:
        mgr = driver.new_manager()
        mgr.register_resource(ResourceType.DISK, path, flags)
        return list(leases_of(mgr))

    assert names(disk) == [(sha(disk), "exclusive")]
    assert names(link) == [(sha(link), "exclusive"), (sha(disk), "exclusive")]
    assert names(dotted) == [(sha(dotted), "exclusive"), (sha(disk), "exclusive")]
    assert names(disk, ResourceFlags.SHARED) == [(sha(disk), "shared")]
    assert names(link, ResourceFlags.READONLY) == [(sha(link), "shared"), (sha(disk), "shared")]
    backend = driver.backend
    assert backend.leases("disk", "/a/../b", "/b", False) == [
        {"key": sha("/a/../b"), "mode": "exclusive"},
        {"key": sha("/b"), "mode": "exclusive"},
    ]


@pytest.mark.parametrize("via_link_first", [True, False])
def test_two_names_of_one_disk_exclude(
    host: Host, other_host: Host, workdir: str, via_link_first: bool
) -> None:
    """Hosts naming one image by a symlink and by its real path exclude each other (S1): the
    supervisor of the symlinked name locks the lease of the canonical path too."""
    (disk,) = make_disks(workdir, "two-names.img")
    link = os.path.join(workdir, "alias.img")
    os.symlink(disk, link)
    first, second = (link, disk) if via_link_first else (disk, link)
    g = host.start("first", [first])
    held = {os.stat(os.path.join(host.lockspace, k)).st_ino for k, _ in leases_of(g.mgr)}
    assert len(held) == (2 if via_link_first else 1) + 1  # and the guest's lease on its uuid
    assert inodes_locked_by(g.supervisor_pid) == held
    with pytest.raises(LeaseConflict) as err:
        other_host.start("second", [second])
    assert second in str(err.value)
    assert alive(g.pid or 0)
