"""What the kernel says of processes and file locks: one place for every reader of ``/proc``.

* :func:`process_state` and :func:`alive`: a process's one-letter state, and whether it runs (a
  zombie does not);
* :func:`read_proc_locks`: ``/proc/locks`` in one consistent reading (a buffered line-by-line
  read of a long table repeats or drops lines);
* :func:`locks_on`: the granted locks on some inodes, parsed;
* :func:`fd_locks`: the locks a process's open files hold (``/proc/<pid>/fdinfo``: the kernel
  lists OFD locks without a pid in ``/proc/locks``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

PAGE = os.sysconf("SC_PAGE_SIZE")


def process_state(pid: int) -> str:
    """The one-letter state of process ``pid`` (R, S, T for stopped, Z...), or "" if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return ""


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    return process_state(pid) not in ("", "Z", "X")


def read_proc_locks(keep: Callable[[str], bool] | None = None) -> str | None:
    """``/proc/locks`` as one consistent reading (only the lines ``keep`` accepts), or None if
    it changes too fast to get one.

    The kernel makes the table a page per read() and resumes the next read() by position, so a
    reading in several pieces that overlaps a lock change anywhere on the machine repeats or
    drops lines (measured here: about 1 reading in 70 while another process takes and drops
    ten locks in a loop).  One read() that returns less than a page is one pass under the
    kernel's lock: complete and consistent.  A longer table (a host with hundreds of guests) is
    read whole until two readings in a row agree on the lines kept."""
    last = None
    for _ in range(20):
        fd = os.open("/proc/locks", os.O_RDONLY | os.O_CLOEXEC)
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


class Lock(NamedTuple):
    """One granted lock of ``/proc/locks``: class (POSIX, OFDLCK, FLOCK), kind (READ, WRITE),
    pid (-1 for an OFD lock), inode, and the bytes it covers."""

    cls: str
    kind: str
    pid: int
    inode: int
    bytes: range


def locks_on(inodes: Iterable[int] | None = None) -> list[Lock]:
    """The granted locks on ``inodes`` (all, if None), from one consistent reading.  Raises
    OSError if /proc/locks changes too fast to read consistently."""
    wanted = None if inodes is None else {str(i) for i in inodes}

    def keep(line: str) -> bool:
        parts = line.split()
        return (
            len(parts) >= 8
            and parts[1] != "->"
            and (wanted is None or parts[5].rsplit(":", 1)[1] in wanted)
        )

    text = read_proc_locks(keep)
    if text is None:
        raise OSError("/proc/locks changes too fast for a consistent reading")
    found = []
    for line in text.splitlines():
        parts = line.split()
        found.append(
            Lock(
                parts[1],
                parts[3],
                int(parts[4]),
                int(parts[5].rsplit(":", 1)[1]),
                lock_bytes(parts[6], parts[7]),
            )
        )
    return found


def fd_locks(pid: int) -> set[tuple[int, int, str]]:
    """(inode, byte, kind) of every byte locked through process ``pid``'s open files."""
    found: set[tuple[int, int, str]] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return found
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("lock:"):
                        parts = line.split()
                        inode = int(parts[6].rsplit(":", 1)[1])
                        for byte in lock_bytes(parts[7], parts[8]):
                            found.add((inode, byte, parts[4]))
        except (OSError, ValueError, IndexError):
            continue
    return found


def command_line(pid: int) -> list[str]:
    """The argv of process ``pid`` ([] if gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []
