"""Logging: one logger per layer (lockfsm.core: every domain move; lockfsm.control: every request
to a supervisor), each move one structured line; the supervisor's own moves on its stderr when
asked (supervisor_log = "moves")."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import pytest

from lockfsm.embed.standin import Host, make_disks

MOVE = re.compile(
    r"move machine=(\w+) domain=(\S+) from=(\w+) event=(\w+) to=(\w+) duration_ms=[\d.]+$"
)


def test_each_layer_logs_one_line_per_step(
    hosts: Callable[..., Host], workdir: str, caplog: pytest.LogCaptureFixture
) -> None:
    host = hosts(supervisor_log="moves")
    caplog.set_level(logging.DEBUG, logger="lockfsm")
    g = host.start("vm-log", make_disks(workdir, "a.img"))
    g.mgr.shutdown()
    assert g.proc.stderr is not None
    supervisor = g.proc.stderr.read().decode()
    by_logger: dict[str, list[str]] = {}
    for r in caplog.records:
        by_logger.setdefault(r.name, []).append(r.getMessage())
    core = [MOVE.match(m) for m in by_logger["lockfsm.core"]]
    assert all(core) and [m.group(5) for m in core if m][-2:] == ["started", "stopped"]
    assert [r for r in caplog.records if r.name == "lockfsm.core"][-1].dest == "stopped"  # type: ignore[attr-defined]
    assert any("op=get_child" in m and "result=ok" in m for m in by_logger["lockfsm.control"])
    assert any("op=shutdown" in m for m in by_logger["lockfsm.control"])
    lines = [ln.removeprefix("lockfsm-supervisor: ") for ln in supervisor.splitlines()]
    moves = [MOVE.match(ln) for ln in lines if ln.startswith("move ")]
    assert moves and all(moves)
    assert [(m.group(3), m.group(4), m.group(5)) for m in moves if m] == [
        ("starting", "begin", "holding"),
        ("holding", "spawn", "running"),
        ("running", "stop", "stopping"),
        ("stopping", "guest_exited", "exited"),
    ]


def test_the_supervisor_is_quiet_by_default(host: Host, workdir: str) -> None:
    g = host.start("vm-quiet", make_disks(workdir, "a.img"))
    g.mgr.shutdown()
    assert g.proc.stderr is not None and g.proc.stderr.read() == b""
