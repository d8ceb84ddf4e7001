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
    """Create ``path`` (and parents) with ``mode`` if missing; refuse one that is not a directory,
    is world-writable, or is owned by another user than us or root.  Returns the path.

    Raises ValueError with the reason (the caller names the configuration key).
    """
    if not os.path.isabs(path):
        raise ValueError(f"{what} {path!r} is not an absolute path")
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
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
