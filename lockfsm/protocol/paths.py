"""Where lockfsm keeps its files, and the checks that keep those places safe (light module)."""

from __future__ import annotations

import os
import stat


def default_run_dir() -> str:
    """Supervisors' sockets and records: /run/lockfsm for root, else a per-user runtime dir.
    Short on purpose: a Unix socket path holds at most 107 bytes."""
    if os.geteuid() == 0:
        return "/run/lockfsm"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "lockfsm") if runtime else f"/tmp/lockfsm-{os.geteuid()}"


def default_state_dir(leaf: str) -> str:
    """Lease files: /var/lib/lockfsm/<leaf> for root, else under the user's state dir."""
    if os.geteuid() == 0:
        return os.path.join("/var/lib/lockfsm", leaf)
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "lockfsm", leaf)


def safe_dir(path: str, what: str, mode: int = 0o700) -> str:
    """Create ``path`` with ``mode`` if missing (missing parents 0755: never writable by others,
    whatever the umask); refuse one that is not a directory, is world-writable, or is owned by
    another user than us or root, or that lies under a directory that another user could rename
    it out of (world-writable without the sticky bit, or owned by another user).  Returns the
    path.

    Raises ValueError with the reason (the caller names the configuration key).
    """
    if not os.path.isabs(path):
        raise ValueError(f"{what} {path!r} is not an absolute path")
    _check_parents(os.path.realpath(path), what, path)  # before anything is made
    try:
        _make(path, mode)
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"{what} {path!r} cannot be used: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{what} {path!r} is not a directory")
    if st.st_mode & stat.S_IWOTH:
        raise ValueError(f"{what} {path!r} is world-writable (mode {st.st_mode & 0o7777:o})")
    if st.st_uid not in (os.geteuid(), 0):
        raise ValueError(f"{what} {path!r} belongs to uid {st.st_uid}, not to us or root")
    return path


def _make(path: str, mode: int) -> None:
    """mkdir -p, each missing parent 0755 and the leaf ``mode`` (os.makedirs gives parents
    0777 less the umask: world-writable under umask 0)."""
    missing = []
    head = os.path.normpath(path)
    while not os.path.lexists(head):
        missing.append(head)
        head = os.path.dirname(head)
    for i, d in enumerate(reversed(missing)):
        try:
            os.mkdir(d, mode if i == len(missing) - 1 else 0o755)
        except FileExistsError:
            pass  # made meanwhile by another process: checked like any existing one


def _check_parents(real: str, what: str, given: str) -> None:
    """Whoever may rename or replace a parent directory can swap this one for theirs.  Parents
    still missing are skipped: safe_dir makes them."""
    parent = os.path.dirname(real)
    while True:
        try:
            st = os.stat(parent)
        except FileNotFoundError:
            parent = os.path.dirname(parent)
            continue
        except OSError as e:
            raise ValueError(f"{what} {given!r} cannot be used: {e.strerror}") from None
        if st.st_uid not in (os.geteuid(), 0):
            raise ValueError(
                f"{what} {given!r} lies under {parent!r}, which belongs to uid {st.st_uid}"
            )
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            raise ValueError(
                f"{what} {given!r} lies under {parent!r}, which is world-writable without the "
                f"sticky bit (mode {st.st_mode & 0o7777:o})"
            )
        if parent == "/":
            return
        parent = os.path.dirname(parent)
