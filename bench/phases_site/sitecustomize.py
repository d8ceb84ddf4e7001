"""Timestamps for ``python -m bench.phases``: with ``LOCKFSM_PHASES`` naming a file, every Python
process that has this directory on ``PYTHONPATH`` (the daemon side, each supervisor, each lease
agent) appends ``<monotonic ns> <pid> <label> start|end`` lines around the calls of the etcd
handoff path.  CLOCK_MONOTONIC is one clock for every process of the machine.  Without
``LOCKFSM_PHASES`` this does nothing.  No lockfsm file is touched."""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable
from typing import Any

from tests.breakage.sitecustomize import after_import

LOG = os.environ.get("LOCKFSM_PHASES")


def _mark(label: str, edge: str) -> None:
    assert LOG is not None
    with open(LOG, "a") as f:
        f.write(f"{time.monotonic_ns()} {os.getpid()} {label} {edge}\n")


def _wrap(owner: Any, name: str, label: str, what: Callable[..., str] | None = None) -> None:
    """Stamp ``label`` (with ``what(*args)`` after it) at the start and the end of each call
    of ``owner.name``."""
    original = getattr(owner, name)
    if inspect.iscoroutinefunction(original):

        async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
            stamp = label + (what(*args) if what else "")
            _mark(stamp, "start")
            try:
                return await original(*args, **kwargs)
            finally:
                _mark(stamp, "end")

        setattr(owner, name, wrapped_async)
        return

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        stamp = label + (what(*args) if what else "")
        _mark(stamp, "start")
        try:
            return original(*args, **kwargs)
        finally:
            _mark(stamp, "end")

    setattr(owner, name, wrapped)


if LOG:
    after_import(
        "lockfsm.protocol.wire",
        lambda m: _wrap(m, "call", "daemon.call", lambda path, req, *_: f":{req.get('op')}"),
    )
    after_import(
        "lockfsm.supervisor.process",
        lambda m: _wrap(
            m.Supervisor, "_handle", "supervisor.handle", lambda s, c, op, *_: f":{op}"
        ),
    )
    after_import(
        "lockfsm.supervisor.server", lambda m: _wrap(m.ControlServer, "reply", "supervisor.reply")
    )
    after_import(
        "lockfsm.backends.etcd",
        lambda m: _wrap(m.EtcdHolder, "_call", "holder.call", lambda s, req, *_: f":{req['op']}"),
    )
    after_import(
        "lockfsm.agent.store",
        lambda m: (
            _wrap(m.LeaseStore, "take_over", "agent.take_over"),
            _wrap(m.LeaseStore, "release_many", "agent.release"),
        ),
    )
    after_import(
        "lockfsm.agent.server",
        lambda m: _wrap(
            m.Conn, "send", "agent.send", lambda c, msg: f":{msg.get('push', 'reply')}"
        ),
    )
    after_import("lockfsm.supervisor.guest", lambda m: _wrap(m.GuestProcess, "reap", "guest.reap"))
    after_import(
        "lockfsm.backends.etcd.client",
        lambda m: _wrap(m.Etcd, "txn", "etcd.txn"),
    )
