"""``python -m bench.phases`` (where an etcd handoff's time goes): its reading of the processes'
timestamps, and its refusal of a bad value.  The measurement itself is a benchmark, run by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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


#: one concurrent round: the target (daemon 1, supervisor 5, agent 6) waits; the source (daemon
#: 1, supervisor 2, agent 3) hands off.  The target's agent hears of the release (its watch)
#: before the source's agent has the transaction's answer.
ROUND = [
    (0, "6", "etcd.txn", "start"),  # the target's first attempt, before the source's call
    (1_000_000, "6", "etcd.txn", "end"),
    (10_000_000, "1", "daemon.call:hand_off", "start"),
    (10_500_000, "2", "supervisor.handle:hand_off", "start"),
    (10_600_000, "5", "guest.reap", "end"),  # another supervisor's: not the source's guest
    (11_000_000, "2", "guest.reap", "end"),
    (11_200_000, "3", "agent.release", "start"),
    (11_400_000, "3", "etcd.txn", "start"),
    (13_300_000, "6", "agent.send:changed", "start"),
    (13_400_000, "3", "etcd.txn", "end"),
    (13_500_000, "2", "supervisor.reply", "start"),  # the source's reply: not the target's
    (13_700_000, "5", "holder.call:take_over", "start"),
    (14_000_000, "6", "etcd.txn", "start"),
    (16_000_000, "6", "etcd.txn", "end"),
    (16_500_000, "5", "supervisor.reply", "start"),
    (16_800_000, "1", "daemon.call:take_over", "end"),
]


def test_the_concurrent_chain_is_walked_step_by_step_in_each_process(tmp_path: Path) -> None:
    log = tmp_path / "phases.log"
    text = "".join(
        f"{phases.ROUND}\n"
        + "".join(f"{ns + shift} {pid} {lb} {ed}\n" for ns, pid, lb, ed in ROUND)
        for shift in (0, 100_000_000)
    )
    log.write_text("some line before the first round\n" + text)
    rows = phases.rounds(str(log))
    assert len(rows) == 2
    got = {name: (round(ms, 6), n) for name, ms, n in phases.chain_table(rows)}
    assert got["source supervisor: guest killed and reaped"] == (0.5, 2)
    assert got["the source's release transaction (one, every lease)"] == (2.0, 2)
    assert got["etcd watch -> target agent -> push sent"] == (-0.1, 2)
    assert got["target agent -> supervisor -> reply"] == (0.5, 2)
    assert got["the target's take-over transaction"] == (2.0, 2)
    assert got[phases.CHAIN_TOTAL] == (6.8, 2)
    hops = sum(ms for name, ms, _ in phases.chain_table(rows) if name != phases.CHAIN_TOTAL)
    assert abs(hops - 6.8) < 1e-9, "the hops do not add up to the chain"
    assert phases.chain(ROUND[:-1]) is None  # a round without the target's answer


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--rounds", "0"], ["--rounds 0"]),
        (["--order", "sideways"], ["sideways", "concurrent"]),  # the bad value and the choices
    ],
)
def test_a_bad_value_is_refused_naming_it(args: list[str], says: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.phases", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and all(s in proc.stderr for s in says), proc.stderr
