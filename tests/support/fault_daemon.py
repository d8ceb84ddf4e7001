"""A simulated host's virt daemon in a process of its own, for the fault matrix and the soak:
it owns the host's ``LockDriver`` and managers and drives them on request over a socket pair, so
that a test can kill -9 or SIGSTOP it like a real libvirtd, and replace a killed one by a new
daemon that ATTACHes.  Run as ``python -m tests.support.fault_daemon FD``; light on purpose (it
imports lockfsm, not the test modules): its host is a stand-in host (lockfsm.embed.standin).

Requests are ``(id, method, kwargs)``; each runs in a thread of its own (a migration target's
``complete_migrate_in`` waits for the source while other calls go on, as in libvirtd) and is
answered ``(id, "ok", value)`` or ``(id, "err", error)``.  The guests are stand-ins: ``sleep``,
with two shapes a daemon gives them:

* an incoming migration target's guest does not execute until the daemon lets it (QEMU
  ``-incoming``, CPUs stopped, then ``cont``): it is a shell that stops itself (SIGSTOP) until its
  go file exists, then execs ``sleep``.  The daemon makes the go file and sends SIGCONT once the
  target's ``complete_migrate_in`` returned;
* ``ignore_term``: a guest that ignores SIGTERM, so that a shutdown lasts its grace period.

So "the guest executes" is, in the kernel's words: the process runs ``sleep`` (``comm``) and is
not stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future
from contextlib import suppress
from multiprocessing.connection import Connection
from typing import Any

from lockfsm.embed.standin import GUEST
from tests.support import ROOT


def go_file(run_dir: str, uuid: str) -> str:
    """The file whose existence lets an incoming guest run (the daemon's ``cont``)."""
    return os.path.join(run_dir, f"go-{uuid}")


def guest_argv(kind: str, run_dir: str, uuid: str) -> list[str]:
    """The stand-in guest's command line: ``plain``, ``ignore_term`` or ``incoming``."""
    if kind == "plain":
        return list(GUEST)
    if kind == "ignore_term":
        return ["sh", "-c", "trap '' TERM; exec sleep 1000"]
    if kind == "incoming":
        go = go_file(run_dir, uuid)
        return ["sh", "-c", f"while [ ! -e {go} ]; do kill -STOP $$; done; exec sleep 1000"]
    raise ValueError(f"guest kind {kind!r}")


def _portable(e: BaseException) -> tuple[str, str, dict[str, Any]]:
    """An error as (class name, message, attributes), to be raised again by the client."""
    attrs = {k: v for k, v in vars(e).items() if isinstance(v, str | int | float | bool)}
    return type(e).__name__, str(e), attrs


class Server:
    """The daemon's side: one driver, one manager per uuid."""

    def __init__(self, conn: Connection, backend: str, config: dict[str, Any]) -> None:
        import lockfsm
        from lockfsm.embed.standin import Host

        self.lockfsm = lockfsm
        self.conn = conn
        self.send_lock = threading.Lock()
        settings = dict(config)
        self.run_dir = str(settings["run_dir"])
        self.log = open(os.path.join(self.run_dir, "supervisors.log"), "ab")  # noqa: SIM115
        # The stand-in host of this daemon: its driver, and the supervisors it runs (their
        # output in the log).  fcntl's lockspace is the world's; other backends have none.
        lockspace = settings.pop("lockspace_dir", None) or self.run_dir
        self.host = Host(backend, lockspace, stderr=self.log, **settings)
        self.driver = self.host.driver
        self.managers: dict[str, Any] = {}
        self.guests: dict[str, int] = {}

    def send(self, message: tuple[Any, ...]) -> None:
        with self.send_lock:
            self.conn.send(message)

    def run(self, rid: int, method: str, kwargs: dict[str, Any]) -> None:
        try:
            value = getattr(self, f"op_{method}")(**kwargs)
        except Exception as e:
            self.send((rid, "err", _portable(e)))
        else:
            self.send((rid, "ok", value))

    # -- the operations -------------------------------------------------------------------------

    def _manager(
        self, uuid: str, name: str, disks: list[str], shared: list[str], flags: int
    ) -> Any:
        return self.host.manager(name, uuid, disks, flags, shared)

    def _launch(self, mgr: Any, guest: list[str]) -> subprocess.Popen[bytes]:
        proc = self.host.launch(mgr, guest)
        for p in list(self.host.procs):  # reap the supervisors that exited
            if p.poll() is not None:
                self.host.procs.remove(p)
        return proc

    def _info(self, uuid: str, mgr: Any, supervisor: int | None = None) -> dict[str, Any]:
        return {
            "state": mgr.state.value,
            "guest": self.guests.get(uuid),
            "supervisor": supervisor,
            "disks": sorted(r.path for r in mgr.resources),
            "launch": mgr._launch,
        }

    def op_start(
        self,
        uuid: str,
        name: str,
        disks: list[str],
        shared: list[str] = (),  # type: ignore[assignment]
        guest: str = "plain",
        policy: str | None = None,
    ) -> dict[str, Any]:
        mgr = self._manager(uuid, name, list(disks), list(shared), 0)
        if policy is not None:
            mgr.set_parameter("lock_failure", policy)
        self.managers[uuid] = mgr
        return self._spawn(uuid, mgr, guest_argv(guest, self.run_dir, uuid))

    def op_incoming(
        self,
        uuid: str,
        name: str,
        disks: list[str],
        shared: list[str],
        cookie: str,
    ) -> dict[str, Any]:
        from lockfsm import NewFlags

        mgr = self._manager(uuid, name, list(disks), list(shared), NewFlags.MIGRATE)
        mgr.set_parameter("migration_cookie", cookie)
        self.managers[uuid] = mgr
        with suppress(FileNotFoundError):
            os.unlink(go_file(self.run_dir, uuid))
        return self._spawn(uuid, mgr, guest_argv("incoming", self.run_dir, uuid))

    def _spawn(self, uuid: str, mgr: Any, guest: list[str]) -> dict[str, Any]:
        """Launch ``mgr``'s supervisor with ``guest`` and wait for its child."""
        proc = self._launch(mgr, guest)
        try:
            self.guests[uuid] = mgr.get_child(timeout=20)
        except BaseException:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            raise
        return self._info(uuid, mgr, proc.pid)

    def op_attach(self, uuid: str, name: str) -> dict[str, Any]:
        from lockfsm import NewFlags

        mgr = self._manager(uuid, name, [], [], NewFlags.ATTACH)
        self.managers[uuid] = mgr
        self.guests[uuid] = mgr.get_child(timeout=10)
        return self._info(uuid, mgr)

    def op_call(self, uuid: str, fn: str, args: tuple[Any, ...] = ()) -> dict[str, Any]:
        """``mgr.<fn>(*args)``; a disk path in ``args`` of a hot-plug call is a DISK."""
        from lockfsm import ResourceType

        mgr = self.managers[uuid]
        if fn in ("acquire_resource", "release_resource"):
            args = (ResourceType.DISK, *args)
        result = getattr(mgr, fn)(*args)
        if fn == "complete_migrate_in" and not (args and args[0]):
            self._cont(uuid, mgr)
        info = self._info(uuid, mgr)
        info["result"] = result.value if hasattr(result, "value") else result
        return info

    def _cont(self, uuid: str, mgr: Any) -> None:
        """A migration target holds every lease: let its guest run (QEMU's ``cont``)."""
        from lockfsm import DomainState

        pid = self.guests.get(uuid)
        if mgr.state is DomainState.STARTED and pid is not None:
            with open(go_file(self.run_dir, uuid), "w"):
                pass
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def op_state(self, uuid: str) -> dict[str, Any]:
        mgr = self.managers[uuid]
        info = self._info(uuid, mgr)
        info["failure"] = mgr.failure
        return info

    def op_forget(self, uuid: str) -> None:
        mgr = self.managers.pop(uuid, None)
        if mgr is not None:
            with suppress(Exception):
                mgr.free()
        self.guests.pop(uuid, None)

    def op_ping(self) -> int:
        return os.getpid()


def serve(fd: int) -> None:
    conn = Connection(fd)
    backend, config = conn.recv()
    try:
        server = Server(conn, backend, config)
    except Exception as e:
        conn.send((0, "err", _portable(e)))
        return
    conn.send((0, "ok", os.getpid()))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            break
        if request is None:
            break
        rid, method, kwargs = request
        threading.Thread(target=server.run, args=(rid, method, kwargs), daemon=True).start()
    os._exit(0)  # managers are forgotten, never shut down: their guests keep their leases


# -- the client (the test's side) -----------------------------------------------------------------


class DaemonGone(Exception):
    """The daemon process died (or was killed) before it answered."""


def _raise(kind: str, message: str, attrs: dict[str, Any]) -> BaseException:
    import lockfsm.errors

    cls = lockfsm.errors.BY_NAME.get(kind)
    if cls is None:
        return RuntimeError(f"{kind}: {message}")
    e = cls.__new__(cls)
    Exception.__init__(e, message)
    for k, v in attrs.items():
        setattr(e, k, v)
    return e


class Daemon:
    """One simulated host's daemon process.  ``call(method, **kw)`` runs ``op_<method>`` there
    and returns its value or raises its error (lockfsm errors as themselves); ``submit`` returns
    a Future instead, for a call that waits (a target's completion, a shutdown)."""

    def __init__(
        self, backend: str, config: dict[str, Any], env: dict[str, str] | None = None
    ) -> None:
        self.backend, self.config = backend, config
        ours, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fault_daemon", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.lock = threading.Lock()
        self.pending: dict[int, Future[Any]] = {}
        self.ids = 0
        self.dead = False
        self.pending[0] = Future()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.conn.send((backend, config))
        self.reader.start()
        self.pid: int = self.pending[0].result(60)

    def _read(self) -> None:
        while True:
            try:
                rid, kind, value = self.conn.recv()
            except (EOFError, OSError):
                break
            with self.lock:
                fut = self.pending.pop(rid, None)
            if fut is None:
                continue
            if kind == "ok":
                fut.set_result(value)
            else:
                fut.set_exception(_raise(*value))
        with self.lock:
            self.dead = True
            pending, self.pending = self.pending, {}
        for fut in pending.values():
            fut.set_exception(DaemonGone(f"daemon pid {self.proc.pid} died"))

    def submit(self, method: str, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        with self.lock:
            if self.dead:
                fut.set_exception(DaemonGone(f"daemon pid {self.proc.pid} is dead"))
                return fut
            self.ids += 1
            self.pending[self.ids] = fut
            try:
                self.conn.send((self.ids, method, kwargs))
            except OSError as e:
                self.pending.pop(self.ids)
                fut.set_exception(DaemonGone(f"daemon pid {self.proc.pid}: {e}"))
        return fut

    def call(self, method: str, timeout: float = 90.0, **kwargs: Any) -> Any:
        return self.submit(method, **kwargs).result(timeout)

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9: its managers are gone; its supervisors and guests go on."""
        with suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.reader.join(10)
        self.conn.close()

    def stop(self) -> None:
        """End the daemon (its managers are forgotten, the guests keep running)."""
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            with suppress(OSError):
                self.conn.send(None)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self.reader.join(10)
        self.conn.close()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
