"""What a host's agent keeps in its run directory across restarts: a lock that refuses a second
agent, and the lease it keeps alive, so that a restarted agent takes the same lease up and no
guest is stopped.

* ``etcd-agent.lock``: held (``flock``) for the agent's whole life; it names the agent's pid;
* ``etcd-agent.lease``: mode 0600, rewritten after each keepalive: the lease id, the local
  deadline promised to the supervisors (on the monotonic clock, which counts from the boot: the
  boot id is kept with it), and the settings it was kept under.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from typing import Any

from lockfsm.errors import BackendError

LOCK_FILE = "etcd-agent.lock"
LEASE_FILE = "etcd-agent.lease"


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class HostState:
    """The agent's files in ``run_dir``, for the agent of ``settings`` (endpoints, prefix,
    host name: a lease kept under other settings is not this agent's)."""

    def __init__(self, run_dir: str, settings: Mapping[str, Any]) -> None:
        self.dir = run_dir
        self.settings = {k: settings[k] for k in ("endpoints", "prefix", "host_name")}
        self.lock_fd: int | None = None

    def lock(self) -> None:
        """Become this host's one agent.  Raises BackendError naming the running one."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.dir, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BackendError(
                f"another lockfsm-etcd-agent (pid {other}) runs for {self.dir}: one agent per host"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.lock_fd = fd

    def load(self) -> tuple[int, float] | None:
        """(lease id, local deadline) a previous agent of this boot kept, under these settings,
        or None."""
        try:
            with open(os.path.join(self.dir, LEASE_FILE)) as f:
                data = json.load(f)
            if data.get("boot") != boot_id() or data.get("settings") != self.settings:
                return None
            return int(data["lease"]), float(data["valid_until"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, lease: int, valid_until: float) -> None:
        """Record the lease and its deadline (atomically, mode 0600)."""
        path = os.path.join(self.dir, LEASE_FILE)
        tmp = f"{path}.tmp"
        data = {"lease": lease, "valid_until": valid_until, "boot": boot_id()}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({**data, "settings": self.settings}, f)
        os.replace(tmp, path)

    def clear(self) -> None:
        """The lease is gone (lost, revoked, released): no agent may take it up."""
        try:
            os.unlink(os.path.join(self.dir, LEASE_FILE))
        except FileNotFoundError:
            pass
