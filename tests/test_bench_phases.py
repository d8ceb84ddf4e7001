"""``python -m bench.phases`` (where an etcd handoff's time goes): its reading of the processes'
timestamps, and its refusal of a bad value.  The measurement itself is a benchmark, run by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench import phases
from tests.support import ROOT

#: one take-over call as the processes stamp it (ns, pid, label, edge), 1 ms = 1,000,000 ns
CALL = [
    (0, 1, "daemon.call:take_over", "start"),
    (300_000, 2, "supervisor.handle:take_over", "start"),
    (400_000, 2, "holder.call:take_over", "start"),
    (600_000, 3, "agent.take_over", "start"),
    (800_000, 3, "etcd.txn", "start"),
    (2_800_000, 3, "etcd.txn", "end"),
    (2_900_000, 3, "agent.take_over", "end"),
    (3_000_000, 2, "holder.call:take_over", "end"),
    (3_300_000, 2, "supervisor.reply", "start"),
    (3_500_000, 1, "daemon.call:take_over", "end"),
    (3_600_000, 3, "etcd.txn", "start"),  # after the call: not this call's
]


def test_each_hop_is_read_from_the_first_of_its_events_in_the_call(tmp_path: Path) -> None:
    log = tmp_path / "phases.log"
    other = [(5_000_000, 1, "daemon.call:hand_off", "start")]
    lines = [
        (ns + shift, pid, label, edge) for shift in (0, 10_000_000) for ns, pid, label, edge in CALL
    ] + other
    log.write_text("".join(f"{ns} {pid} {label} {edge}\n" for ns, pid, label, edge in lines))
    events = phases.calls(str(log))
    assert len(events) == 2
    got = {name: (ms, n) for name, ms, n in phases.table(events)}
    assert got["the etcd transaction (agent's gRPC call)"] == (2.0, 2)
    assert got["daemon -> supervisor (connect, request)"] == (0.3, 2)
    assert got["supervisor -> daemon (reply)"] == (0.2, 2)
    assert got["total: the target's complete_migrate_in"] == (3.5, 2)
    hops = sum(ms for name, ms, _ in phases.table(events) if not name.startswith("total"))
    assert abs(hops - 3.5) < 1e-9, "the hops do not add up to the call"


def test_a_bad_rounds_value_is_refused_naming_it() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.phases", "--rounds", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--rounds 0" in proc.stderr, proc.stderr
