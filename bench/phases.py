"""Where an etcd handoff's time goes (issue 16): ``python -m bench.phases [--members 3]
[--rounds 15] [--order sequential|concurrent]``.

Handoffs of 4 disks between two hosts (real agents, supervisors and etcd, as the ``handoff``
group runs them), with every process timestamping the calls of the handoff's path
(bench/phases_site/sitecustomize.py) on the machine's one monotonic clock:

* ``sequential`` (the default): the target's ``complete_migrate_in`` alone, after the source's
  returned: daemon → supervisor → lease agent → etcd and back (:data:`PHASES`);
* ``concurrent``: the target's call waits, then the source's call; the chain from the source's
  call to the target holding every lease: the source kills and reaps its guest, its agent
  gives every lease up in one transaction, etcd's watch wakes the target's agent, which tells
  its supervisor, whose take-over is one transaction (:data:`CHAIN`).

It prints the median of each hop beside one bare transaction of the take-over's shape
measured in the same run (warm, and after 50 ms idle as the agents' come), and writes
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


#: The concurrent chain, step by step: (name of the hop that ends here, label, edge, the step
#: whose process this one must be in or None, the step it comes after or None for the one
#: before).  Each step is the first of its event at or after that step, in the round.  etcd
#: sends the watch event and the transaction's answer at once: the target's agent may hear of
#: the release before the source's does (that hop is then negative).
CHAIN: list[tuple[str, str, str, int | None, int | None]] = [
    ("", "daemon.call:hand_off", "start", None, None),
    ("daemon -> source supervisor (hand_off)", "supervisor.handle:hand_off", "start", None, None),
    ("source supervisor: guest killed and reaped", "guest.reap", "end", 1, None),
    ("source supervisor -> its agent (release)", "agent.release", "start", None, None),
    ("source agent: before its transaction", "etcd.txn", "start", 3, None),
    ("the source's release transaction (one, every lease)", "etcd.txn", "end", 3, None),
    ("etcd watch -> target agent -> push sent", "agent.send:changed", "start", None, 4),
    ("push -> target supervisor's take-over request", "holder.call:take_over", "start", None, None),
    ("target supervisor -> agent -> transaction", "etcd.txn", "start", 6, None),
    ("the target's take-over transaction", "etcd.txn", "end", 6, None),
    ("target agent -> supervisor -> reply", "supervisor.reply", "start", 7, None),
    ("target supervisor -> daemon (reply)", "daemon.call:take_over", "end", None, None),
]
CHAIN_TOTAL = "total: source's call to the target holding every lease"
ROUND = "round"


def rounds(log: str) -> list[list[tuple[int, str, str, str]]]:
    """The events of each concurrent round, (ns, pid, label, edge), split at ``round`` lines."""
    found: list[list[tuple[int, str, str, str]]] = []
    for line in Path(log).read_text().splitlines():
        if line == ROUND:
            found.append([])
        elif found:
            ns, pid, label, edge = line.split()
            found[-1].append((int(ns), pid, label, edge))
    return found


def chain(events: Sequence[tuple[int, str, str, str]]) -> list[int] | None:
    """The instant (ns) of each step of :data:`CHAIN` in one round, or None when the round
    lacks one."""
    times: list[int] = []
    pids: list[str] = []
    ordered = sorted(events)
    for _, label, edge, same, since in CHAIN:
        after = times[since] if since is not None else times[-1] if times else -1
        hit = next(
            (
                (ns, pid)
                for ns, pid, lb, ed in ordered
                if (lb, ed) == (label, edge) and ns >= after and (same is None or pid == pids[same])
            ),
            None,
        )
        if hit is None:
            return None
        times.append(hit[0])
        pids.append(hit[1])
    return times


def chain_table(
    rows: Sequence[Sequence[tuple[int, str, str, str]]],
) -> list[tuple[str, float, int]]:
    """(hop, median ms, rounds that had it) of :data:`CHAIN`, and the total."""
    from bench.measure import median

    walks = [t for t in (chain(r) for r in rows) if t is not None]
    out = []
    for i, (name, *_) in enumerate(CHAIN[1:], start=1):
        spans = [(t[i] - t[i - 1]) / 1e6 for t in walks]
        out.append((name, median(spans) if spans else float("nan"), len(spans)))
    totals = [(t[-1] - t[0]) / 1e6 for t in walks]
    out.append((CHAIN_TOTAL, median(totals) if totals else float("nan"), len(totals)))
    return out


def calls(log: str) -> list[dict[tuple[str, str], int]]:
    """Each take-over call's events: (label, edge) -> ns, the first of each after its start."""
    rows = [line.split() for line in Path(log).read_text().splitlines() if line != ROUND]
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


def measure(members: int, count: int, log: str, order: str = "sequential") -> dict[str, float]:
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
            one_handoff(source, target, disks, order)  # warm-up
            etcd.bare_takeover(client, KEYS, "phases")
            Path(log).write_text("")  # only the measured rounds
            for _ in range(count):
                with open(log, "a") as f:
                    f.write(ROUND + "\n")
                one_handoff(source, target, disks, order)
                base.append(etcd.bare_takeover(client, KEYS, "phases") * 1e3)
                idle.append(etcd.bare_takeover(client, KEYS, "phases", IDLE) * 1e3)
        finally:
            client.close()
    return {"bare_ms": median(base), "bare_idle_ms": median(idle)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.phases", description=__doc__)
    parser.add_argument("--members", type=int, default=1, choices=(1, 3))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--order", default="sequential", choices=("sequential", "concurrent"))
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
        bare = measure(args.members, args.rounds, log, args.order)
        phases = table(calls(log)) if args.order == "sequential" else chain_table(rounds(log))
    finally:
        Path(log).unlink(missing_ok=True)
    where = "1 member" if args.members == 1 else f"{args.members} members"
    what = "the target's call" if args.order == "sequential" else "from the source's call"
    print(f"etcd handoff, {what}, {args.rounds} {args.order} rounds, {DISKS} disks, {where}:")
    bare_name = "bare take-over transaction, warm / after 50 ms idle"
    width = max(len(name) for name, _, _ in [*phases, (bare_name, 0, 0)])
    for name, ms, n in phases:
        print(f"  {name:{width}} {ms:7.3f} ms  (n={n})")
    print(f"  {bare_name:{width}} {bare['bare_ms']:7.3f} / {bare['bare_idle_ms']:.3f} ms")
    out = Path(REPO) / "bench" / "results" / "phases.json"
    out.write_text(
        json.dumps(
            {
                "members": args.members,
                "rounds": args.rounds,
                "order": args.order,
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
