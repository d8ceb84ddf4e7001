"""Where an etcd handoff's time goes (issue 16): ``python -m bench.phases [--members 3]
[--rounds 15]``.

Sequential handoffs of 4 disks between two hosts (real agents, supervisors and etcd, as the
``handoff`` group runs them), with every process timestamping the calls of the target's path
(bench/phases_site/sitecustomize.py: daemon → supervisor → lease agent → etcd and back) on the
machine's one monotonic clock.  It prints the median of each hop of the target's
``complete_migrate_in`` beside one bare transaction of the take-over's shape measured in the
same run (warm, and after 50 ms idle as the agent's come), and writes
``bench/results/phases.json``.  The timestamps cost a file append each (tens of µs): the total
here is a little above the ``handoff`` group's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import REPO
from bench.handoff import DISKS, IDLE, KEYS, one_handoff

SITE = Path(__file__).resolve().parent / "phases_site"
#: (name, from event, to event): each event is (label, edge), the first of its kind in the call
PHASES = [
    (
        "daemon -> supervisor (connect, request)",
        ("daemon.call:take_over", "start"),
        ("supervisor.handle:take_over", "start"),
    ),
    (
        "supervisor: the table's move, to the holder",
        ("supervisor.handle:take_over", "start"),
        ("holder.call:take_over", "start"),
    ),
    (
        "supervisor -> agent (request)",
        ("holder.call:take_over", "start"),
        ("agent.take_over", "start"),
    ),
    ("agent: before the transaction", ("agent.take_over", "start"), ("etcd.txn", "start")),
    ("the etcd transaction (agent's gRPC call)", ("etcd.txn", "start"), ("etcd.txn", "end")),
    ("agent -> supervisor (reply)", ("etcd.txn", "end"), ("holder.call:take_over", "end")),
    (
        "supervisor: after (state, record, pointer)",
        ("holder.call:take_over", "end"),
        ("supervisor.reply", "start"),
    ),
    (
        "supervisor -> daemon (reply)",
        ("supervisor.reply", "start"),
        ("daemon.call:take_over", "end"),
    ),
    (
        "total: the target's complete_migrate_in",
        ("daemon.call:take_over", "start"),
        ("daemon.call:take_over", "end"),
    ),
]


def calls(log: str) -> list[dict[tuple[str, str], int]]:
    """Each take-over call's events: (label, edge) -> ns, the first of each after its start."""
    rows = [line.split() for line in Path(log).read_text().splitlines()]
    found: list[dict[tuple[str, str], int]] = []
    current: dict[tuple[str, str], int] | None = None
    for ns, _pid, label, edge in rows:
        if (label, edge) == ("daemon.call:take_over", "start"):
            current = {}
            found.append(current)
        if current is not None:
            current.setdefault((label, edge), int(ns))
            if (label, edge) == ("daemon.call:take_over", "end"):
                current = None
    return found


def table(events: Sequence[dict[tuple[str, str], int]]) -> list[tuple[str, float, int]]:
    """(phase, median ms, calls that had it) for each of :data:`PHASES`."""
    from bench.measure import median

    out = []
    for name, a, b in PHASES:
        spans = [(e[b] - e[a]) / 1e6 for e in events if a in e and b in e and e[b] >= e[a]]
        out.append((name, median(spans) if spans else float("nan"), len(spans)))
    return out


def measure(members: int, rounds: int, log: str) -> dict[str, float]:
    """The handoffs (timestamped by every process) and the bare transactions beside them."""
    from bench import disk_files
    from bench import etcd_hosts as etcd
    from bench.measure import median

    base, idle = [], []
    disks = disk_files(tempfile.mkdtemp(prefix="lfph"), DISKS)
    with etcd.cluster(members, 2) as sites:
        source, target = sites.host(0), sites.host(1)
        client = sites.client()
        try:
            one_handoff(source, target, disks, "sequential")  # warm-up
            etcd.bare_takeover(client, KEYS, "phases")
            Path(log).write_text("")  # only the measured rounds
            for _ in range(rounds):
                one_handoff(source, target, disks, "sequential")
                base.append(etcd.bare_takeover(client, KEYS, "phases") * 1e3)
                idle.append(etcd.bare_takeover(client, KEYS, "phases", IDLE) * 1e3)
        finally:
            client.close()
    return {"bare_ms": median(base), "bare_idle_ms": median(idle)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.phases", description=__doc__)
    parser.add_argument("--members", type=int, default=1, choices=(1, 3))
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: at least 1")
    if "LOCKFSM_PHASES" not in os.environ:  # again, with every process timestamping
        fd, log = tempfile.mkstemp(prefix="lockfsm-phases-", suffix=".log")
        os.close(fd)
        path = os.pathsep.join([str(SITE), str(REPO), os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "LOCKFSM_PHASES": log, "PYTHONPATH": path.rstrip(os.pathsep)}
        argv = [sys.executable, "-m", "bench.phases", *(argv if argv is not None else sys.argv[1:])]
        os.execve(sys.executable, argv, env)
    log = os.environ["LOCKFSM_PHASES"]
    try:
        bare = measure(args.members, args.rounds, log)
        phases = table(calls(log))
    finally:
        Path(log).unlink(missing_ok=True)
    where = "1 member" if args.members == 1 else f"{args.members} members"
    rounds = f"{args.rounds} sequential rounds, {DISKS} disks, {where}"
    print(f"etcd handoff, the target's call, {rounds}:")
    for name, ms, n in phases:
        print(f"  {name:48} {ms:7.3f} ms  (n={n})")
    print(
        f"  {'bare take-over transaction, warm / after 50 ms idle':48} "
        f"{bare['bare_ms']:7.3f} / {bare['bare_idle_ms']:.3f} ms"
    )
    out = Path(REPO) / "bench" / "results" / "phases.json"
    out.write_text(
        json.dumps(
            {
                "members": args.members,
                "rounds": args.rounds,
                "phases_ms": {name: ms for name, ms, _ in phases},
                **bare,
            },
            indent=2,
        )
    )
    print(f"written to {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
