"""What the kernel says of a process beyond :mod:`lockfsm.protocol.kernel` (its state, whether it
lives, its locks and its command line are there): the fields of ``/proc/<pid>/stat`` a judge
reads (parent, session, task flags), its name, and its open files; and waiting for a condition.
Used by the race machines and the tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from lockfsm.protocol.kernel import alive

PF_EXITING = 0x4  # task flag (/proc/<pid>/stat field 9): the task has entered do_exit()


def stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name, from the state on (field 3 of
    proc(5) is index 0), or [] if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def parent_of(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def session_of(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[3]) if fields else None


def executing(pid: int | None) -> bool:
    """Whether ``pid`` exists and has not begun to exit (a dying task runs no more user code)."""
    fields = stat_fields(pid) if pid is not None else []
    return bool(fields) and fields[0] not in ("Z", "X") and not int(fields[6]) & PF_EXITING


def living(pid: int | None) -> bool:
    """Whether ``pid`` is a process that exists and is not a zombie (a stopped one lives)."""
    return pid is not None and alive(pid)


def comm(pid: int) -> str:
    """The process's name (``/proc/<pid>/comm``), or "" if it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def open_files(pid: int | None) -> list[str]:
    """What the open descriptors of ``pid`` point to (paths, "socket:[inode]"...), [] if gone."""
    if pid is None:
        return []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    found = []
    for fd in fds:
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return found


def socket_inodes(pid: int | None) -> set[str]:
    """The sockets process ``pid`` has open ("socket:[inode]")."""
    return {name for name in open_files(pid) if name.startswith("socket:")}


def wait_until(
    predicate: Callable[[], object], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Return once ``predicate()`` is true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)
