"""A simulated host's virt daemon in a process of its own: ``lockfsm.embed.host.Host`` driven over a
socket pair, one pickled request at a time.  Light on purpose (run as ``python -m
tests.support.qemu_daemon FD``): it imports the embedding, not the test modules."""

from __future__ import annotations

import functools
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import suppress
from multiprocessing.connection import Connection
from typing import Any

from tests.support import ROOT


class RemoteError(Exception):
    """An error of a daemon process that does not cross the socket as itself."""


def _portable(e: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RemoteError(f"{type(e).__name__}: {e}")


def serve(conn: Connection) -> None:
    """The daemon: the first message builds the Host, each later one is a call of one of its
    methods; None (or the socket's end) closes the Host and ends the process."""
    from lockfsm.embed.host import Host

    try:
        host = Host(*conn.recv())
    except BaseException as e:
        conn.send(("err", _portable(e)))
        return
    conn.send(("ok", None))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            break
        if request is None:
            break
        method, args, kwargs = request
        try:
            conn.send(("ok", getattr(host, method)(*args, **kwargs)))
        except Exception as e:
            conn.send(("err", _portable(e)))
    host.close()
    with suppress(OSError):
        conn.send(("ok", None))


class Daemon:
    """One simulated host's virt daemon, in its own process.  ``daemon.method(...)`` runs
    ``Host.method`` there and returns its result or raises its error."""

    def __init__(self, name: str, state_dir: str, backend: str, config: dict[str, Any]) -> None:
        self.name, self.state_dir = name, state_dir
        self.run_dir = str(config.get("run_dir", os.path.join(state_dir, "run")))
        ours, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.qemu_daemon", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.lock = threading.Lock()
        self.conn.send((name, state_dir, backend, config))
        self._answer()

    def _answer(self) -> Any:
        kind, value = self.conn.recv()
        if kind == "err":
            raise value
        return value

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            self.conn.send((method, args, kwargs))
            return self._answer()

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        return functools.partial(self.call, method)

    def kill(self) -> None:
        """kill -9 of the daemon: its guests and their supervisors go on."""
        with suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with suppress(OSError, EOFError):
                self.conn.send(None)
                self.conn.recv()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.conn.close()


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
