"""Stand-in hosts: the daemon's side of the seed API, running stand-in guests.

A :class:`Host` is one simulated host: its own run directory and driver (its "daemon"), on a
lockspace it may share with other hosts.  It runs each guest as a daemon would --
``[supervisor_path, *supervisor_args, "--", *guest_argv]`` -- with a stand-in guest (a plain
process, ``sleep``) instead of QEMU.  :class:`Pair` joins a source and a target host so that a
migration reads as the protocol does.

This is the one harness of the project: the demo, the diagrams' recorded run, the tests and the
benchmarks all use it.  The reference embedding that runs real QEMU guests is
:mod:`lockfsm.embed.host`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid as uuidlib
from collections.abc import Iterable
from contextlib import suppress
from typing import IO, Any

import lockfsm
from lockfsm import NewFlags, ResourceFlags, ResourceType
from lockfsm.protocol import trace

GUEST = ["sleep", "1000"]  # a stand-in guest: a real process that runs until killed


def short_tmpdir(prefix: str = "lf") -> str:
    """A short new directory under /tmp (a Unix socket path holds at most 107 bytes)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def make_disks(directory: str, *names: str, size: int = 1 << 20) -> list[str]:
    """Disk images (sparse files of ``size`` bytes) named ``names`` in ``directory``."""
    paths = []
    for name in names:
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.truncate(size)
        paths.append(path)
    return paths


class Guest:
    """One launched guest: its manager, its supervisor process, its disks, and its pid once
    get_child returned."""

    def __init__(
        self,
        host: Host,
        mgr: lockfsm.LockManager,
        proc: subprocess.Popen[bytes],
        name: str,
        uuid: str,
        disks: list[str],
    ) -> None:
        self.host, self.mgr, self.proc = host, mgr, proc
        self.name, self.uuid, self.disks = name, uuid, disks
        self.pid: int | None = None

    @property
    def supervisor_pid(self) -> int:
        return self.proc.pid


class Host:
    """A simulated host: a run dir and a driver on a lockspace (shared with other hosts if
    given).  ``config`` adds driver settings; ``stderr`` is where supervisors write (a pipe by
    default, so that a test can read it; ``subprocess.DEVNULL`` to drop it)."""

    def __init__(
        self,
        backend: str = "fcntl",
        lockspace: str | None = None,
        run_dir: str | None = None,
        name: str = "",
        stderr: int | IO[Any] | None = subprocess.PIPE,
        **config: Any,
    ) -> None:
        self.backend = backend
        self.name = name
        self.extra = config
        self.stderr = stderr
        self.run_dir = run_dir or short_tmpdir("lfr")
        self.lockspace = lockspace or short_tmpdir("lfl")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.driver = self.load()

    @property
    def config(self) -> dict[str, Any]:
        """The driver's configuration: the run dir, a short shutdown grace, the extra keys."""
        cfg: dict[str, Any] = {"run_dir": self.run_dir, "shutdown_grace": 2.0, **self.extra}
        if self.backend == "fcntl":
            cfg.setdefault("lockspace_dir", self.lockspace)
        return cfg

    def load(self) -> lockfsm.LockDriver:
        return lockfsm.load_driver(self.backend, self.config)

    def restart_daemon(self) -> None:
        """Forget every manager, as a daemon that died would, and load the driver anew."""
        self.driver = self.load()

    def manager(
        self,
        name: str,
        uuid: str | None = None,
        disks: Iterable[str] = (),
        flags: int = 0,
        shared: Iterable[str] = (),
        id: int = 1,
        policy: str | None = None,
    ) -> lockfsm.LockManager:
        """A manager with its identity set and ``disks`` (exclusive) and ``shared`` registered."""
        mgr = self.driver.new_manager(NewFlags(flags))
        mgr.set_parameter("uuid", uuid or str(uuidlib.uuid4()))
        mgr.set_parameter("name", name)
        mgr.set_parameter("id", id)
        if policy is not None:
            mgr.set_parameter("lock_failure", policy)
        for d in disks:
            mgr.register_resource(ResourceType.DISK, d)
        for d in shared:
            mgr.register_resource(ResourceType.DISK, d, ResourceFlags.SHARED)
        return mgr

    def launch(
        self, mgr: lockfsm.LockManager, guest: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Run the manager's supervisor as a daemon does; do not wait for it."""
        argv = [mgr.supervisor_path, *mgr.supervisor_args, "--", *(guest or GUEST)]
        trace.emit("spawn", run_dir=self.run_dir, guest=os.path.basename((guest or GUEST)[0]))
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
        )
        self.procs.append(proc)
        return proc

    def start(
        self,
        name: str,
        disks: Iterable[str] = (),
        shared: Iterable[str] = (),
        uuid: str | None = None,
        guest: list[str] | None = None,
        timeout: float = 10.0,
        policy: str | None = None,
    ) -> Guest:
        """Start a guest and wait until it runs under its leases.  On a refusal the LockFSMError
        propagates (the supervisor, which exits by itself, is reaped)."""
        uuid = uuid or str(uuidlib.uuid4())
        disks = list(disks)
        mgr = self.manager(name, uuid, disks, shared=shared, policy=policy)
        proc = self.launch(mgr, guest)
        g = Guest(self, mgr, proc, name, uuid, disks + list(shared))
        try:
            g.pid = mgr.get_child(timeout=timeout)
        except lockfsm.LockFSMError:
            proc.wait(10)
            raise
        return g

    def incoming(
        self,
        source: Guest,
        cookie: str,
        guest: list[str] | None = None,
        timeout: float = 10.0,
    ) -> Guest:
        """The target of ``source``'s migration on this host: a MIGRATE manager with the
        source's resources and the cookie, its supervisor, get_child (the incoming guest exists
        and runs nothing)."""
        res = source.mgr.resources
        disks = [r.path for r in res if not r.shared]
        shared = [r.path for r in res if r.shared]
        mgr = self.manager(source.name, source.uuid, disks, NewFlags.MIGRATE, shared)
        mgr.set_parameter("migration_cookie", cookie)
        proc = self.launch(mgr, guest)
        g = Guest(self, mgr, proc, source.name, source.uuid, disks + shared)
        g.pid = mgr.get_child(timeout=timeout)
        return g

    def attach(self, g: Guest, timeout: float = 10.0) -> lockfsm.LockManager:
        """A restarted daemon's ATTACH manager for ``g``, which takes it over."""
        mgr = self.manager(g.name, g.uuid, flags=NewFlags.ATTACH)
        g.pid = mgr.get_child(timeout=timeout)
        g.mgr = mgr
        return mgr

    def stop(self, g: Guest, timeout: float = 30.0) -> None:
        """Shut the guest down (its leases are released), free its manager, reap it."""
        g.mgr.shutdown()
        g.mgr.free()
        g.proc.wait(timeout)
        if g.proc in self.procs:
            self.procs.remove(g.proc)

    def cleanup(self) -> None:
        """Kill whatever this host started and still runs (the supervisor leads its own session,
        with its guest), and remove its run dir."""
        for proc in self.procs:
            if proc.poll() is None:
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with suppress(ProcessLookupError):
                    proc.kill()
            proc.wait(30)
            if proc.stderr:
                proc.stderr.close()
        self.procs.clear()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def complete(
    source: lockfsm.LockManager, target: lockfsm.LockManager, order: str, pause: float = 0.05
) -> None:
    """Both sides of a migration complete: ``"target-first"`` (the target's call waits for the
    source's, as two daemons run them; the source completes ``pause`` s later) or
    ``"source-first"``.  Raises what either call raises; TimeoutError if the target's call
    has not returned 60 s after the source's."""
    if order == "source-first":
        source.complete_migrate_in()
        target.complete_migrate_in()
        return
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target.complete_migrate_in()
        except BaseException as e:  # reported to the caller below
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(pause)  # let the target's take-over begin before the source completes
    source.complete_migrate_in()
    t.join(60)
    if errors:
        raise errors[0]
    if t.is_alive():
        raise TimeoutError("the target's complete_migrate_in did not return in 60 s")


class Pair:
    """A source and a target host on one lockspace, joined so that a migration reads as the
    protocol (after h11's ConnectionPair).  Each side's calls go to its own host's driver."""

    def __init__(self, lockspace: str | None = None, backend: str = "fcntl", **config: Any) -> None:
        self.source = Host(backend, lockspace, name="source", **config)
        self.target = Host(backend, self.source.lockspace, name="target", **config)
        self.lockspace = self.source.lockspace
        self.guest: Guest | None = None
        self.incoming: Guest | None = None
        self.cookie: str | None = None

    def start(self, name: str, disks: Iterable[str] = (), shared: Iterable[str] = ()) -> Guest:
        """The guest starts on the source."""
        self.guest = self.source.start(name, disks, shared)
        return self.guest

    def prepare(self, hosturi: str = "qemu+tcp://target/system") -> str:
        """Source: prepare_migrate; the cookie is kept for the target."""
        assert self.guest is not None
        self.cookie = self.guest.mgr.prepare_migrate(hosturi)
        return self.cookie

    def incoming_start(self, guest: list[str] | None = None) -> Guest:
        """Target: a MIGRATE manager with the cookie, its supervisor, get_child."""
        assert self.guest is not None and self.cookie is not None
        self.incoming = self.target.incoming(self.guest, self.cookie, guest)
        return self.incoming

    def migrate(self, order: str = "target-first", pause: float = 0.05) -> None:
        """Both sides complete: target first (its call waits for the source's, as two daemons
        would run them; the source completes ``pause`` s later), or source first."""
        assert self.guest is not None and self.incoming is not None
        complete(self.guest.mgr, self.incoming.mgr, order, pause)

    def cancel(self, order: str = "target-first") -> None:
        assert self.guest is not None and self.incoming is not None
        sides = [self.incoming.mgr, self.guest.mgr]
        for mgr in sides if order == "target-first" else reversed(sides):
            mgr.complete_migrate_in(cancel=True)

    def cleanup(self) -> None:
        self.source.cleanup()
        self.target.cleanup()
