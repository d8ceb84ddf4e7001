"""Recording what crosses each boundary, for the diagrams' message sequence charts.

Off unless the ``LOCKFSM_TRACE`` environment variable names a file (read at import, so a
supervisor or an etcd agent started with it records too), or :func:`start` was called.  When off,
:func:`emit` returns at its first line: a recording hook costs one global read.

When on, every process appends one JSON line per event to that file: the instant
(``CLOCK_MONOTONIC``, one clock for every process of the machine, in ns), the pid, and the
event's fields.  Who emits what:

* the daemon's manager: each seed call and its outcome, each of its state moves (``run_dir``
  tells which simulated host);
* the daemon's control-socket client: each request to a supervisor and its reply;
* the supervisor: each of its state moves;
* a backend's holder: each operation on the lock service, with what it carries;
* the harness (lockfsm.embed.standin): each supervisor it runs.

:mod:`lockfsm.tools.recording` turns such a file into a recording.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

ENV = "LOCKFSM_TRACE"

_path: str | None = os.environ.get(ENV) or None
origin: str | None = None  # this process's run_dir, once it is one host's (the supervisor)


def on() -> bool:
    """Whether events are being recorded.  Raises nothing."""
    return _path is not None


def start(path: str) -> None:
    """Record from now on into ``path`` (and in every process started from now on).  Raises
    nothing: the file is opened at each event."""
    global _path
    _path = path
    os.environ[ENV] = path


def stop() -> None:
    """Stop recording (here and in processes started from now on).  Raises nothing."""
    global _path
    _path = None
    os.environ.pop(ENV, None)


def emit(kind: str, **fields: Any) -> None:
    """Append one event of ``kind`` (with ``fields``, JSON values; ``t`` the instant it is
    drawn at, when not now) to the trace file; nothing when off.  Never raises: a trace that
    cannot be written is not written."""
    if _path is None:
        return
    event = {"t": time.monotonic_ns(), "pid": os.getpid(), "kind": kind, **fields}
    if origin is not None:
        event.setdefault("run_dir", origin)
    line = json.dumps(event, separators=(",", ":"), default=str) + "\n"
    try:
        fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        os.write(fd, line.encode())
    except OSError:
        pass
    finally:
        os.close(fd)
