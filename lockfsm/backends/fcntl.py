"""The ``fcntl`` backend, the embedded default: open-file-description locks on lease files.

A lease is byte 0 (length 1) of a file in the lockspace directory, locked with ``F_OFD_SETLK``:
a write lock for an exclusive lease, a read lock for a shared one.  The file of a disk is named as
libvirt's lockd names it, the SHA-256 hex of the disk path as the daemon gives it; where the
canonical path differs (symlinks, ``..``), the canonical path's lease is taken too, so that hosts
naming one file differently still exclude each other.  The disk image itself is never opened, so
QEMU's own image locks (bytes 100+ and 200+ of the image) are never touched.

Locks belong to open file descriptions: the kernel frees them when the last descriptor of the
description is closed, that is when the holder dies.  The supervisor lets the guest inherit the
descriptors of the leases taken at start, so those leases are freed only once the guest is dead
too (it dies by PR_SET_PDEATHSIG when the supervisor dies).

Lease files are never truncated, written or deleted by lockfsm.  Another lock manager may delete
a lease file while it holds the lock (libvirt's virtlockd does): after locking, the locked inode is
compared with the one at the path, and the lock is taken again if they differ.  A lease file
deleted or replaced while held here is locked again at once on the file now at the path; only if
a rival locked that one first is the lease lost (see specs/PROTOCOL.md, "Lease files").
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from lockfsm.backends import Capabilities, ConfigKey, LeaseView, PollingHolder
from lockfsm.errors import BackendError, InvalidArgument, LeaseConflict, LockFSMError
from lockfsm.protocol import kernel, tables
from lockfsm.protocol.launch import SUPERVISOR_NAMES, LaunchSpec
from lockfsm.protocol.paths import default_state_dir, safe_dir

CAPABILITIES = Capabilities(
    per_disk=True,
    shared=True,
    hotplug=True,
    migration=True,
    atomic_handoff=False,  # the gate byte closes the window to lockfsm hosts, not to libvirt's
    holder_death_frees="at once (kernel)",
    self_fencing=False,
    spans_hosts="on shared NFS",
)

_FLOCK = "hhqqi"  # struct flock: l_type, l_whence, l_start, l_len, l_pid
LEASE_BYTE = 0  # the lease, as libvirt's lockd locks it
GATE_BYTE = 1  # lockfsm's migration gate (see FcntlHolder)
_RETRIES = 8  # lease file replaced under us this many times in a row: give up
CHECK_EVERY = 1.0  # seconds between checks that every held lease file is still in place


def _lockspace(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a path string, not {value!r}")
    return safe_dir(value, "lockspace_dir", 0o700)


#: What each holder call does to the lock files, as the diagrams' sequence charts label it
#: ({lock}: the lease's lock kind; the gate is byte 1, the lease byte 0).
TRACE: dict[str, str | None] = {
    "acquire": "OFD {lock}-lock byte 0, passing the gate (rd-lock byte 1, unlock)",
    "reserve": "OFD wr-lock gate byte 1",
    "take_over": "OFD {lock}-lock byte 0, gate kept",
    "settle": "OFD unlock gate byte 1",
    "release": "OFD unlock bytes 0-1, close",
    "unreserve": "OFD unlock gate byte 1, close",
}


class FcntlBackend:
    """The naming half (daemon side)."""

    name = "fcntl"
    capabilities = CAPABILITIES
    config_keys: Mapping[str, ConfigKey] = {
        "lockspace_dir": ConfigKey(
            _lockspace,
            lambda: default_state_dir("lockspace"),
            "directory of the lease files (shared with libvirt's file_lockspace_dir)",
        ),
    }

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config

    def leases(
        self, resource_type: str, path: str, canonical: str, shared: bool
    ) -> list[dict[str, str]]:
        import hashlib  # here, not at the top: the supervisor never needs it

        mode = "shared" if shared else "exclusive"
        if resource_type == "lease":
            names = [f"lease:{path}"]
        else:
            names = [path] if canonical == path else [path, canonical]
        return [
            {"key": hashlib.sha256(n.encode("utf-8", "surrogateescape")).hexdigest(), "mode": mode}
            for n in names
        ]


def _flock(kind: int, start: int = LEASE_BYTE, length: int = 1) -> bytes:
    return struct.pack(_FLOCK, kind, os.SEEK_SET, start, length, 0)


def _holder_of(fd: int, kind: int, start: int = LEASE_BYTE) -> str:
    """Who holds a conflicting lock on ``start``, as far as the kernel says."""
    try:
        got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(kind, start))
    except OSError:
        return "unknown holder"
    ltype, _, _, _, pid = struct.unpack(_FLOCK, got)
    if ltype == fcntl.F_UNLCK:
        return "a holder that has just let go"
    if pid > 0:  # a classic POSIX lock: virtlockd, or another program
        return f"another lock manager (pid {pid}, POSIX lock)"
    if start == GATE_BYTE:
        return "an incoming migration of this guest (the lease is reserved for it)"
    return "another lockfsm supervisor (OFD lock)"


def _foreign(st: os.stat_result) -> str | None:
    """Why a file is not a lease file, or None."""
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid not in (os.geteuid(), 0):
        return f"belongs to uid {st.st_uid}, not to us or root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    if st.st_size:
        return f"holds {st.st_size} bytes (lease files are empty)"
    return None


_KEY = re.compile(r"[0-9a-f]{64}")


class FcntlHolder(PollingHolder):
    """The holding half (supervisor side): one open file description per lease.

    Byte 0 of a lease file is the lease; byte 1 is its *gate*, lockfsm's own (libvirt locks
    byte 0 only).  An incoming migration target reserves a lease by write-locking the gate for
    the whole migration; every other acquire passes the gate (read-locks it for the moment of
    taking byte 0), so while a target holds the gate no other lockfsm host can take the lease, even
    in the instant between the source's release and the target's acquire.

    Which locks a lease's file carries follows from its lease machine's state (the view): the
    gate while reserved or taken, byte 0 while taken or held.
    """

    def __init__(self, lockspace_dir: str, view: LeaseView) -> None:
        self.dir = lockspace_dir
        self.view = view
        self.fds: dict[str, int] = {}
        self.lost: str | None = None
        self.next_at: float | None = None

    def _open(self, path: str) -> int:
        """Open (create, 0600) a lease file, refusing anything that is not one: a lease file is
        an empty regular file of ours or root's, writable by no one else (as lockfsm and
        libvirt's lockd make them).  Anything else is reported and left exactly as it is: a
        symlink is not followed, a FIFO or device is opened without blocking or becoming a
        terminal, and nothing is ever written."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as e:
            raise BackendError(f"lease file {path} cannot be opened: {e.strerror}") from None
        st = os.fstat(fd)
        why = _foreign(st)
        if why:
            os.close(fd)
            raise BackendError(f"lease file {path} {why}: a foreign or corrupt file, not used")
        return fd

    @staticmethod
    def _still_there(fd: int, path: str) -> bool:
        """Whether the file at ``path`` is still the one ``fd`` has open (another lock manager
        may delete a lease file on release, even while we wait for its lock)."""
        try:
            here, held = os.stat(path), os.fstat(fd)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)

    def _lock(self, fd: int, kind: int, start: int, path: str, resource: str) -> None:
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(kind, start))
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                holder = _holder_of(fd, kind, start)
                raise LeaseConflict(
                    f"{resource} is locked by {holder} (lease file {path})", resource, holder
                ) from None
            raise BackendError(f"locking {path} for {resource}: {e.strerror}") from None

    def _locked_file(self, key: str, resource: str, steps: list[tuple[int, int]]) -> int:
        """Open the lease file and take ``steps`` ((kind, byte) locks) on it, again from the
        start if the file was replaced meanwhile.  On a raise nothing is held."""
        if not _KEY.fullmatch(key):  # the lease file's name: never another file in the dir
            raise InvalidArgument(f"lease key {key[:80]!r} of {resource} is not a SHA-256 hex name")
        path = os.path.join(self.dir, key)
        for _ in range(_RETRIES):
            fd = self._open(path)
            try:
                for kind, start in steps:
                    self._lock(fd, kind, start, path, resource)
            except BaseException:
                os.close(fd)
                raise
            if self._still_there(fd, path):
                return fd
            os.close(fd)
        raise BackendError(f"lease file {path} of {resource} keeps being replaced; not taken")

    def reserve(self, lease: Mapping[str, str], resource: str) -> None:
        key = lease["key"]
        if key in self.fds:
            raise BackendError(f"lease {key} of {resource} is already held by this supervisor")
        self.fds[key] = self._locked_file(key, resource, [(fcntl.F_WRLCK, GATE_BYTE)])

    def acquire(self, lease: Mapping[str, str], resource: str) -> None:
        key = lease["key"]
        if key in self.fds:
            raise BackendError(f"lease {key} of {resource} is already held by this supervisor")
        kind = _kind(lease)
        fd = self._locked_file(key, resource, [(fcntl.F_RDLCK, GATE_BYTE), (kind, LEASE_BYTE)])
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, GATE_BYTE))
        self.fds[key] = fd

    def take_over(self, group: Sequence[tuple[Mapping[str, Any], str]]) -> None:
        """Lock byte 0 of each reserved lease file, the gate kept; if one cannot be had, unlock
        the ones this attempt locked (back to reserved, nothing lost) and raise."""
        taken: list[str] = []
        try:
            for lease, resource in group:
                self._take_over_one(lease, resource)
                taken.append(lease["key"])
        except BaseException:
            for key in taken:
                fcntl.fcntl(self.fds[key], fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, LEASE_BYTE))
            raise

    def _reserved(self, key: str, resource: str) -> tuple[int, str]:
        """The open file of a lease this holder reserved, and its path."""
        if key not in self.fds:
            raise BackendError(f"lease {key} of {resource} is not reserved by this supervisor")
        return self.fds[key], os.path.join(self.dir, key)

    def _take_over_one(self, lease: Mapping[str, Any], resource: str) -> None:
        key = lease["key"]
        fd, path = self._reserved(key, resource)
        kind = _kind(lease)
        self._lock(fd, kind, LEASE_BYTE, path, resource)
        if not self._still_there(self.fds[key], path):
            # virtlockd deletes a lease file it lets go even while a gate is held on it (it
            # locks byte 0 only): take gate and lease on the file now at the path.
            try:
                self._retake(key, gate=True, kind=kind)
            except BaseException:
                fcntl.fcntl(self.fds[key], fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, LEASE_BYTE))
                raise

    def probe(self, lease: Mapping[str, str], resource: str) -> None:
        fd, path = self._reserved(lease["key"], resource)
        try:  # our own description's gate lock never conflicts with this query
            got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(_kind(lease)))
        except OSError as e:
            raise BackendError(f"querying {path} for {resource}: {e.strerror}") from None
        if struct.unpack(_FLOCK, got)[0] != fcntl.F_UNLCK:
            holder = _holder_of(fd, _kind(lease))
            raise LeaseConflict(
                f"{resource} is locked by {holder} (lease file {path})", resource, holder
            )

    def settle(self, lease: Mapping[str, str]) -> None:
        fcntl.fcntl(self.fds[lease["key"]], fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, GATE_BYTE))

    def release(self, leases: Sequence[Mapping[str, Any]]) -> None:
        missing = [le["key"] for le in leases if le["key"] not in self.fds]
        if missing:
            raise BackendError(f"lease {missing[0]} is not held by this supervisor")
        for lease in leases:
            fd = self.fds.pop(lease["key"])
            try:
                # Unlock explicitly (lease and gate): the guest may share this open description.
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, LEASE_BYTE, 2))
            finally:
                os.close(fd)

    unreserve = release  # the gate goes the same way: unlock both bytes, close

    def watch(self, notify: list[str]) -> None:
        self.next_at = time.monotonic() + CHECK_EVERY  # the kernel never revokes a lock

    def next_check(self) -> float | None:
        return self.next_at if self.fds else None

    def _retake(self, key: str, gate: bool, kind: int | None) -> None:
        """The file of a lease held or reserved here is no longer the one at its path: take the
        same locks (the ``gate``, byte 0 with ``kind``), at once, on the file now at the path
        (made anew if missing), and put it in the old one's place.  The old open file
        description is unlocked and the supervisor's descriptor of it closed; a guest that
        inherited it keeps it open until it exits, on an inode no lock manager looks at.  The
        new lock is the supervisor's alone, like a hot-plugged lease's.  The holder restores
        its own lease, so it does not pass the gate.  Raises LeaseConflict (a rival locked the
        new file first) or BackendError; then nothing changed."""
        steps = [(fcntl.F_WRLCK, GATE_BYTE)] if gate else []
        if kind is not None:
            steps.append((kind, LEASE_BYTE))
        fd = self._locked_file(key, self.view.label(key), steps)
        old, self.fds[key] = self.fds[key], fd
        try:
            fcntl.fcntl(old, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, LEASE_BYTE, 2))
        finally:
            os.close(old)

    def poll(self) -> str | None:
        """A lease file deleted or replaced while held (by a foreign cleanup, by hand, or by
        virtlockd letting go of a file whose gate a target holds) leaves the lock on an inode
        no other host can see: the lock is taken again at once on the file now at the path
        (_retake).  The lease is lost only if that fails: a rival locked the new file first.
        Checked every CHECK_EVERY seconds: a detection, not a fence (the fcntl backend cannot
        fence; see specs/PROTOCOL.md)."""
        self.next_at = time.monotonic() + CHECK_EVERY
        if self.lost is None:
            for key, fd in sorted(self.fds.items()):
                path = os.path.join(self.dir, key)
                if self._still_there(fd, path):
                    continue
                what = f"the lease file {path} of {self.view.label(key)}"
                state = self.view.state(key)
                held = state in tables.LEASE_HOLDS
                try:
                    self._retake(
                        key,
                        gate=state in tables.LEASE_RESERVES,
                        kind=_kind(self.view.lease(key)) if held else None,
                    )
                except LockFSMError as e:
                    self.lost = f"{what} was deleted or replaced while held; not taken again: {e}"
                    break
                print(
                    f"lockfsm-supervisor: {what} was deleted or replaced; taken again",
                    file=sys.stderr,
                )
        return self.lost

    def inheritable_fds(self) -> list[int]:
        return list(self.fds.values())


WAIT_POLL = 0.05  # seconds between looks at the kernel's locks while waiting for a lease


def _locked(lockspace: str, lease: Mapping[str, Any]) -> str | None:
    """Who holds a lock on the lease or gate byte of ``lease``'s file, or None."""
    path = os.path.join(lockspace, lease["key"])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BackendError(f"lease file {path} cannot be opened: {e.strerror}") from None
    try:
        for start in (LEASE_BYTE, GATE_BYTE):
            got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, start))
            if struct.unpack(_FLOCK, got)[0] != fcntl.F_UNLCK:
                return _holder_of(fd, fcntl.F_WRLCK, start)
    finally:
        os.close(fd)
    return None


def _kind(lease: Mapping[str, Any]) -> int:
    """The lock a lease takes on byte 0: a read lock for a shared lease, else a write lock."""
    return fcntl.F_RDLCK if lease["mode"] == "shared" else fcntl.F_WRLCK


BACKEND = FcntlBackend


def make_holder(config: Mapping[str, Any], view: LeaseView) -> FcntlHolder:
    return FcntlHolder(config["lockspace_dir"], view)


# -- who holds what (lockfsm status) ------------------------------------------------------------


def _ofd_holder(pids: list[int]) -> dict[str, Any]:
    """Who the processes holding an OFD lock are: a lockfsm supervisor (of this host, perhaps of
    another run dir: its launch spec names the domain) or another program."""
    for pid in pids:
        argv = kernel.command_line(pid)
        marks = [i for i, a in enumerate(argv) if a.endswith(SUPERVISOR_NAMES)]
        if not marks:
            continue
        spec = LaunchSpec.of_process(argv[marks[0] + 1 :])
        return {
            "manager": "lockfsm",
            "domain": spec.name if spec else None,
            "uuid": spec.uuid if spec else None,
            "supervisor_pid": pid,
            "pids": pids,
        }
    return {"manager": "lockfsm or another OFD lock user", "pids": pids}


def holders(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every locked lease file of the lockspace: ``{"key", "kind": exclusive, shared or
    reserved, "holder"}``, for each lock as far as this host's kernel tells (a lock over NFS
    from another host is not listed by this kernel: its holder's pids are empty).  Raises
    OSError when the kernel's lock table cannot be read."""
    lockspace = config["lockspace_dir"]
    files = {}
    for name in sorted(os.listdir(lockspace)):
        if _KEY.fullmatch(name):
            try:
                files[os.stat(os.path.join(lockspace, name), follow_symlinks=False).st_ino] = name
            except FileNotFoundError:
                continue
    locks = [lock for lock in kernel.locks_on(files) if lock.cls in ("POSIX", "OFDLCK")]
    ofd: dict[tuple[int, int], set[int]] = {}
    if any(lock.cls == "OFDLCK" for lock in locks):
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
            for inode, byte, _ in kernel.fd_locks(pid):
                if inode in files:
                    ofd.setdefault((inode, byte), set()).add(pid)
    rows = []
    for lock in sorted(locks, key=lambda lk: (files[lk.inode], lk.bytes.start)):
        for byte in lock.bytes:
            if byte not in (LEASE_BYTE, GATE_BYTE):
                continue
            what = (
                "reserved"
                if byte == GATE_BYTE
                else "exclusive"
                if lock.kind == "WRITE"
                else "shared"
            )
            if lock.cls == "POSIX":
                holder: dict[str, Any] = {"manager": "another lock manager", "pid": lock.pid}
            else:
                holder = _ofd_holder(sorted(ofd.get((lock.inode, byte), ())))
            rows.append({"key": files[lock.inode], "kind": what, "holder": holder})
    return rows


def hosts(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """This host only: the kernel tells nothing of others.  On a shared filesystem (NFS)
    another host's locks are the NFS server's to keep: a dead client's are freed when the
    server's lock manager learns it rebooted or after its grace period -- not visible to
    lockfsm, which therefore never reports another host dead."""
    import socket

    return [
        {
            "name": socket.gethostname(),
            "state": "alive",
            "since": None,
            "detail": "this host; the fcntl backend cannot see other hosts",
        }
    ]


def wait_free(
    config: Mapping[str, Any], leases: Sequence[Mapping[str, Any]], timeout: float
) -> None:
    """Poll the kernel (F_OFD_GETLK on each lease file's lease and gate bytes) until no
    lock is left: a dead holder's go at once."""
    deadline = time.monotonic() + timeout
    while True:
        busy = [le for le in leases if _locked(config["lockspace_dir"], le)]
        if not busy:
            return
        if time.monotonic() >= deadline:
            key = busy[0]["key"]
            raise LeaseConflict(
                f"lease {key} is still held after {timeout:g} s",
                f"lease file {key}",
                _locked(config["lockspace_dir"], busy[0]) or "",
            )
        time.sleep(WAIT_POLL)
