"""Real sanlock daemons, one per simulated host, on one lockspace: for ``lockfsm fuzz``, the tests
and the benchmarks.

The daemons run unprivileged and without a watchdog (``SANLOCK_PRIVILEGED=0``), each in its own
session (a sanlock helper may kill its own process group: never the test runner's), as
FIELD-NOTES says; io_timeout 1, so that joining the lockspace takes seconds.  :func:`cluster`
starts them, makes each join the lockspace (through the backend's own ``load_driver``, in
parallel) and stops them at the end.
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

from lockfsm.embed.standin import short_tmpdir

HOSTS = 3  # the tests' session cluster: host_ids 1 to 3 (more are started by the tests)
IO_TIMEOUT = 1
LOCKSPACE = "lockfsm"
BINDING = "/usr/lib/python3/dist-packages/sanlock.cpython-311-*.so"


def missing() -> str | None:
    """What of sanlock is not installed here ("sanlock", "python3-sanlock"), or None."""
    if shutil.which("sanlock") is None and not os.path.exists("/usr/sbin/sanlock"):
        return "sanlock"
    if not glob.glob(BINDING):
        return "python3-sanlock"
    return None


class Daemon:
    """One simulated host's sanlock daemon (``-g grace``: seconds it lets a client whose leases
    it revoked keep them before it kills the client)."""

    def __init__(self, base: str, host_id: int, grace: int = 3) -> None:
        self.host_id = host_id
        self.name = f"lfhost{host_id}"
        self.run_dir = os.path.join(base, f"r{host_id}")
        os.makedirs(self.run_dir, mode=0o700)
        self.log = open(os.path.join(base, f"daemon{host_id}.log"), "wb")  # noqa: SIM115
        self.env = {**os.environ, "SANLOCK_RUN_DIR": self.run_dir, "SANLOCK_PRIVILEGED": "0"}
        self.proc = subprocess.Popen(
            [
                *("sanlock", "daemon", "-D", "-w", "0", "-l", "0", "-h", "0", "-U", "root"),
                *("-G", "root", "-e", self.name, "-g", str(grace)),
            ],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until the daemon accepts on its socket (RuntimeError if it exits or does not)."""
        path = os.path.join(self.run_dir, "sanlock.sock")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sanlock daemon {self.name} exited ({self.proc.returncode})")
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(path)
                    return
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"sanlock daemon {self.name} does not accept") from None
            time.sleep(0.01)

    def client(self, *args: str, timeout: float = 10.0) -> str:
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

    def held(self) -> dict[str, int]:
        """Lease name -> pid of the registered client holding it, as the daemon reports."""
        found = {}
        for line in self.client("status").splitlines():
            parts = line.split()
            if parts and parts[0] == "r" and parts[1].startswith(f"{LOCKSPACE}:"):
                found[parts[1].split(":")[1]] = int(parts[3])
        return found

    def stop(self) -> subprocess.Popen[bytes] | None:
        """Ask the daemon to shut down (its clients' leases go); the asking process, to wait
        for, or None if the daemon is not running."""
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
            self.proc.kill()  # kill -9 by pid, last
        self.proc.wait(10)
        self.log.close()


class Cluster:
    """The daemons and the shared lease directory (``base``/leases unless ``lease_dir``)."""

    def __init__(self, base: str, daemons: list[Daemon], lease_dir: str | None = None) -> None:
        self.base = base
        self.lease_dir = lease_dir or os.path.join(base, "leases")
        self.daemons = daemons

    def config(self, daemon: Daemon, **extra: Any) -> dict[str, Any]:
        """The sanlock keys of a driver of ``daemon``'s host, and ``extra``."""
        return {
            "lease_dir": self.lease_dir,
            "host_id": daemon.host_id,
            "io_timeout": IO_TIMEOUT,
            "sanlock_run_dir": daemon.run_dir,
            # "lockspace" is left at its default, LOCKSPACE: Host's own ``lockspace``
            # parameter would swallow the key.
            **extra,
        }


def stop_all(daemons: list[Daemon]) -> None:
    """Shut every daemon down (at once), then kill -9 each by pid."""
    stoppers = [d.stop() for d in daemons]
    for p in stoppers:
        if p is not None:
            with suppress(subprocess.TimeoutExpired):
                p.wait(15)
    for d in daemons:
        d.kill()


def start_daemons(base: str, first_id: int, count: int, grace: int = 3) -> list[Daemon]:
    """``count`` daemons, host_ids from ``first_id``, each accepting on its socket."""
    daemons = []
    try:
        for i in range(first_id, first_id + count):
            daemons.append(Daemon(base, i, grace))
        for d in daemons:
            d.wait_ready()
    except BaseException:
        stop_all(daemons)
        raise
    return daemons


def join_all(cluster: Cluster, daemons: list[Daemon]) -> None:
    """Init the lockspace (once, whoever comes first) and join every host, in parallel: each
    load_driver does both through the backend's own code."""
    import lockfsm

    errors: list[BaseException] = []

    def load(d: Daemon) -> None:
        try:
            run_dir = os.path.join(cluster.base, f"j{d.host_id}")
            lockfsm.load_driver("sanlock", {"run_dir": run_dir, **cluster.config(d)})
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=load, args=(d,)) for d in daemons]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]


def new_cluster(hosts: int, lease_dir: str | None = None) -> Cluster:
    """``hosts`` daemons (host_ids 1 to ``hosts``) that have joined one lockspace, in a new
    directory (the lease files in ``lease_dir`` if given, which must exist and be empty);
    :func:`close` ends them."""
    base = short_tmpdir("lfs")
    if lease_dir is None:
        os.makedirs(os.path.join(base, "leases"), mode=0o700)
    try:
        daemons = start_daemons(base, 1, hosts)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    c = Cluster(base, daemons, lease_dir)
    try:
        join_all(c, daemons)
    except BaseException:
        close(c)
        raise
    return c


def close(cluster: Cluster, *more: Daemon) -> None:
    """Stop the cluster's daemons (and ``more`` of its lockspace) and remove its directory."""
    stop_all([*cluster.daemons, *more])
    shutil.rmtree(cluster.base, ignore_errors=True)


@contextmanager
def cluster(hosts: int) -> Iterator[Cluster]:
    """``hosts`` sanlock daemons that have joined one lockspace; stopped on exit."""
    c = new_cluster(hosts)
    try:
        yield c
    finally:
        close(c)
