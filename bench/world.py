"""A simulated host for the benchmarks: a run directory, a lockspace, a driver, disk files, and
guests started under real ``lockfsm-supervisor`` processes, as a daemon starts them.

Like tests/helpers.py's Host, but quiet (the supervisors' output goes nowhere, so that hundreds
of them hold no pipe to this process) and with nothing a benchmark does not need.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import uuid as uuidlib
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import lockfsm
from lockfsm import NewFlags, ResourceType

#: A stand-in guest: a real process that runs until it is stopped.
GUEST = ["sleep", "100000"]


def short_tmpdir(prefix: str) -> str:
    """A short directory under /tmp (a Unix socket path holds at most 107 bytes)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def make_disks(directory: str, count: int, prefix: str = "d") -> list[str]:
    """``count`` empty disk image files in ``directory``; their paths."""
    paths = []
    for i in range(count):
        path = os.path.join(directory, f"{prefix}{i}.img")
        with open(path, "wb"):
            pass
        paths.append(path)
    return paths


@dataclass
class Guest:
    """A started guest: its manager, its supervisor process, its pid."""

    mgr: lockfsm.LockManager
    proc: subprocess.Popen[bytes]
    pid: int = 0

    @property
    def supervisor_pid(self) -> int:
        return self.proc.pid


class BenchHost:
    """One simulated host: its own run dir and daemon (driver), on a lockspace it may share."""

    def __init__(self, backend: str = "fcntl", lockspace: str | None = None, **config: Any):
        self.backend = backend
        self.run_dir = short_tmpdir("lfbr")
        self.lockspace = lockspace
        self.config: dict[str, Any] = {"run_dir": self.run_dir, "shutdown_grace": 2.0, **config}
        if backend == "fcntl":
            self.lockspace = lockspace or short_tmpdir("lfbl")
            self.config["lockspace_dir"] = self.lockspace
        self.driver = lockfsm.load_driver(backend, self.config)
        self.procs: list[subprocess.Popen[bytes]] = []

    def manager(
        self, name: str, disks: list[str], uuid: str | None = None, flags: int = 0
    ) -> lockfsm.LockManager:
        """A manager with its identity set and ``disks`` registered (exclusive)."""
        mgr = self.driver.new_manager(NewFlags(flags))
        mgr.set_parameter("uuid", uuid or str(uuidlib.uuid4()))
        mgr.set_parameter("name", name)
        mgr.set_parameter("id", 1)
        for disk in disks:
            mgr.register_resource(ResourceType.DISK, disk)
        return mgr

    def spawn(self, mgr: lockfsm.LockManager, guest: list[str] | None = None) -> Guest:
        """Run the supervisor as a daemon does; do not wait for it."""
        proc = subprocess.Popen(
            [mgr.supervisor_path, *mgr.supervisor_args, "--", *(guest or GUEST)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return Guest(mgr, proc)

    def start(self, name: str, disks: list[str], uuid: str | None = None) -> Guest:
        """Start a guest and wait until it runs under its leases (``get_child``)."""
        guest = self.spawn(self.manager(name, disks, uuid))
        guest.pid = guest.mgr.get_child(timeout=30)
        return guest

    def stop(self, guest: Guest) -> None:
        """Shut the guest down (its leases are released), free its manager, reap it."""
        guest.mgr.shutdown()
        guest.mgr.free()
        guest.proc.wait(30)
        self.procs.remove(guest.proc)

    def cleanup(self) -> None:
        """Kill whatever this host started and is still running, and remove its run dir."""
        for proc in self.procs:
            if proc.poll() is None:
                # The supervisor leads its own session and process group, with its guest.
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with suppress(ProcessLookupError):
                    proc.kill()
            proc.wait(30)
        self.procs.clear()
        shutil.rmtree(self.run_dir, ignore_errors=True)
