"""Timestamps for ``python -m bench.phases``: with ``LOCKFSM_PHASES`` naming a file, every Python
process that has this directory on ``PYTHONPATH`` (the daemon side, each supervisor, each lease
agent) appends ``<monotonic ns> <pid> <label> start|end`` lines around the calls of the etcd
handoff path.  CLOCK_MONOTONIC is one clock for every process of the machine.  Without
``LOCKFSM_PHASES`` this does nothing.  No lockfsm file is touched."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time
from collections.abc import Callable
from typing import Any

LOG = os.environ.get("LOCKFSM_PHASES")


def _mark(label: str, edge: str) -> None:
    assert LOG is not None
    with open(LOG, "a") as f:
        f.write(f"{time.monotonic_ns()} {os.getpid()} {label} {edge}\n")


def _wrap(owner: Any, name: str, label: str, what: Callable[..., str] | None = None) -> None:
    original = getattr(owner, name)
    import inspect

    if inspect.iscoroutinefunction(original):

        async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
            _mark(f"{label}{what(*args) if what else ''}", "start")
            try:
                return await original(*args, **kwargs)
            finally:
                _mark(f"{label}{what(*args) if what else ''}", "end")

        setattr(owner, name, wrapped_async)
        return

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        _mark(f"{label}{what(*args) if what else ''}", "start")
        try:
            return original(*args, **kwargs)
        finally:
            _mark(f"{label}{what(*args) if what else ''}", "end")

    setattr(owner, name, wrapped)


def _after_import(name: str, patch: Callable[[Any], None]) -> None:
    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
            if fullname != name:
                return None
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is None or spec.loader is None:
                return spec
            original = spec.loader.exec_module

            def exec_module(module: Any) -> None:
                original(module)
                patch(module)

            spec.loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, Finder())


if LOG:
    _after_import(
        "lockfsm.protocol.wire",
        lambda m: _wrap(m, "call", "daemon.call", lambda path, req, *_: f":{req.get('op')}"),
    )
    _after_import(
        "lockfsm.supervisor.process",
        lambda m: _wrap(
            m.Supervisor, "_handle", "supervisor.handle", lambda s, c, op, *_: f":{op}"
        ),
    )
    _after_import(
        "lockfsm.supervisor.server", lambda m: _wrap(m.ControlServer, "reply", "supervisor.reply")
    )
    _after_import(
        "lockfsm.backends.etcd",
        lambda m: _wrap(m.EtcdHolder, "_call", "holder.call", lambda s, req, *_: f":{req['op']}"),
    )
    _after_import(
        "lockfsm.agent.store", lambda m: _wrap(m.LeaseStore, "take_over", "agent.take_over")
    )
    _after_import(
        "lockfsm.backends.etcd.client",
        lambda m: _wrap(m.Etcd, "txn", "etcd.txn"),
    )
