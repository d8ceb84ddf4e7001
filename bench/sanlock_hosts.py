"""Unprivileged sanlock daemons for the benchmarks, one per simulated host, as FIELD-NOTES.md
says they run here: ``SANLOCK_PRIVILEGED=0``, no watchdog, each in its own session (a sanlock
helper may kill its own process group), io_timeout 1 so that joining takes seconds.

:func:`cluster` starts them, makes each join the lockspace (through the backend's own
``load_driver``, in parallel) and stops them at the end.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from bench.world import short_tmpdir

IO_TIMEOUT = 1
LOCKSPACE = "lockfsm"
BINDING = "/usr/lib/python3/dist-packages/sanlock.cpython-311-*.so"


def missing() -> str | None:
    """Why sanlock cannot be benchmarked here, or None."""
    if shutil.which("sanlock") is None and not os.path.exists("/usr/sbin/sanlock"):
        return "sanlock is not installed (Debian: sanlock python3-sanlock)"
    if not glob.glob(BINDING):
        return "python3-sanlock (the binding) is not installed"
    return None


class Daemon:
    """One simulated host's sanlock daemon."""

    def __init__(self, base: str, host_id: int) -> None:
        self.host_id = host_id
        self.run_dir = os.path.join(base, f"r{host_id}")
        os.makedirs(self.run_dir, mode=0o700)
        self.env = {**os.environ, "SANLOCK_RUN_DIR": self.run_dir, "SANLOCK_PRIVILEGED": "0"}
        self.log = open(os.path.join(base, f"daemon{host_id}.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *("sanlock", "daemon", "-D", "-w", "0", "-l", "0", "-h", "0"),
                *("-U", "root", "-G", "root", "-e", f"lfbench{host_id}", "-g", "3"),
            ],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 10.0) -> None:
        path = os.path.join(self.run_dir, "sanlock.sock")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sanlock daemon {self.host_id} exited ({self.proc.returncode})")
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(path)
                    return
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"sanlock daemon {self.host_id} does not accept"
                        ) from None
            time.sleep(0.01)

    def client(self, *args: str, timeout: float = 30.0) -> str:
        """``sanlock client ARGS`` against this daemon; its output."""
        return subprocess.run(
            ["sanlock", "client", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        ).stdout

    def stop(self) -> subprocess.Popen[bytes] | None:
        if self.proc.poll() is not None:
            return None
        return subprocess.Popen(
            ["sanlock", "client", "shutdown", "-f", "1", "-w", "1"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def kill(self) -> None:
        with suppress(ProcessLookupError):
            self.proc.kill()  # by pid, last
        self.proc.wait(10)
        self.log.close()


class Cluster:
    """The daemons and the shared lease directory."""

    def __init__(self, base: str, daemons: list[Daemon]) -> None:
        self.base = base
        self.lease_dir = os.path.join(base, "leases")
        self.daemons = daemons

    def config(self, daemon: Daemon) -> dict[str, Any]:
        """The sanlock keys of a driver of ``daemon``'s host."""
        return {
            "lease_dir": self.lease_dir,
            "host_id": daemon.host_id,
            "io_timeout": IO_TIMEOUT,
            "sanlock_run_dir": daemon.run_dir,
        }


def _join_all(c: Cluster) -> None:
    """Initialise the lockspace and join every host, in parallel (the backend does both)."""
    import lockfsm

    errors: list[BaseException] = []

    def join(d: Daemon) -> None:
        try:
            run_dir = os.path.join(c.base, f"j{d.host_id}")
            lockfsm.load_driver("sanlock", {"run_dir": run_dir, **c.config(d)})
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=join, args=(d,)) for d in c.daemons]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]


def _stop_all(daemons: list[Daemon]) -> None:
    stoppers = [d.stop() for d in daemons]
    for p in stoppers:
        if p is not None:
            with suppress(subprocess.TimeoutExpired):
                p.wait(15)
    for d in daemons:
        d.kill()


@contextmanager
def cluster(hosts: int) -> Iterator[Cluster]:
    """``hosts`` sanlock daemons that have joined one lockspace; stopped on exit."""
    base = short_tmpdir("lfbs")
    os.makedirs(os.path.join(base, "leases"), mode=0o700)
    daemons: list[Daemon] = []
    try:
        for i in range(1, hosts + 1):
            daemons.append(Daemon(base, i))
        for d in daemons:
            d.wait_ready()
        c = Cluster(base, daemons)
        _join_all(c)
        yield c
    finally:
        _stop_all(daemons)
        shutil.rmtree(base, ignore_errors=True)
