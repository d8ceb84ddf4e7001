"""What the lease handoff adds to a live migration of a real QEMU guest.

Two simulated hosts per backend (lockfsm.embed.host daemons in this process, one lockspace or none),
one guest per backend migrated back and forth between them; the backends' migrations are
interleaved in one run (the order alternates each round) so that drift on a shared machine
touches both alike.  For each migration, lockfsm.embed.host.migrate
reports QEMU's transfer, QEMU's own
downtime, the handoff (from QEMU's ``completed`` until the target's CPUs run: both
``complete_migrate_in`` calls and ``cont``) and the whole (from ``prepare_migrate`` on); the
setup is the rest (prepare_migrate, the target's supervisor and incoming QEMU); take_over is
the target's ``complete_migrate_in`` alone (part of the handoff).

    python tools/qemu_handoff.py [--rounds 15] [--backends fcntl,nop] [--json]

The nop backend makes the same calls through the same supervisors with no lease at all, so the
difference of the medians is the cost of the leases themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from contextlib import suppress

from lockfsm.embed.host import Disk, Guest, Host, MigrationTimes, migrate
from lockfsm.tools import status

FIELDS = ("total", "setup", "qemu", "downtime", "handoff", "take_over")


def hosts(top: str, backend: str) -> tuple[Host, Host]:
    config = {"lockspace_dir": os.path.join(top, "ls")} if backend == "fcntl" else {}

    def host(side: str) -> Host:
        return Host(f"{backend}-{side}", os.path.join(top, f"{backend[:2]}{side}"), backend, config)

    return host("a"), host("b")


def image(top: str, name: str) -> str:
    path = os.path.join(top, name)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "16M"], check=True)
    return path


class Sample:
    """One migration: lockfsm.embed.host's times, and how long the target's complete_migrate_in took
    (it returns once the target holds every lease)."""

    def __init__(self, times: MigrationTimes, take_over: float) -> None:
        self.times = times
        self.take_over = take_over


def run(rounds: int, backends: list[str], memory: int) -> dict[str, list[Sample]]:
    top = tempfile.mkdtemp(prefix="lfh", dir="/tmp")
    pairs: dict[str, tuple[Host, Host]] = {}
    try:
        for b in backends:
            pairs[b] = hosts(top, b)
            disks = [Disk(image(top, f"{b}-{i}.qcow2")) for i in range(2)]
            guest = Guest(name=b, uuid=str(uuidlib.uuid4()), id=1, disks=disks, memory_mb=memory)
            pairs[b][0].start(guest)
        results: dict[str, list[Sample]] = {b: [] for b in backends}
        for r in range(rounds):
            for b in backends if r % 2 == 0 else list(reversed(backends)):
                source, target = pairs[b] if r % 2 == 0 else pairs[b][::-1]
                times = migrate(source, target, b)
                (move,) = [
                    m for m in target.domain(b).mgr.history if m.event == "complete_migrate_in"
                ]
                results[b].append(Sample(times, move.seconds))
        return results
    finally:
        for pair in pairs.values():
            for h in pair:
                for name in h.names():
                    with suppress(Exception):
                        h.shutdown(name)
                h.close()
                for rec in status.supervisors(h.run_dir):
                    if rec["alive"]:
                        with suppress(ProcessLookupError):
                            os.kill(rec["pid"], signal.SIGKILL)
        shutil.rmtree(top, ignore_errors=True)


def summary(results: dict[str, list[Sample]]) -> dict[str, dict[str, float]]:
    """Median milliseconds of each field, per backend."""
    return {
        b: {f: statistics.median(value(t, f) for t in times) * 1000 for f in FIELDS}
        for b, times in results.items()
    }


def value(s: Sample, field: str) -> float:
    """A field of ``s`` in seconds; ``setup`` is what precedes QEMU's transfer:
    prepare_migrate, the target's supervisor and its incoming QEMU, migrate-incoming."""
    t = s.times
    if field == "setup":
        return t.total - t.qemu - t.handoff
    if field == "take_over":
        return s.take_over
    return float(getattr(t, field))


def report(results: dict[str, list[Sample]], memory: int) -> str:
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
    med = summary(results)
    n = min(len(t) for t in results.values())
    lines = [
        f"{n} live migrations per backend, interleaved, one run; guest: TCG, {memory} MiB, "
        "two qcow2 disks, migrated over a Unix socket",
        f"{qemu.stdout.splitlines()[0]}; {os.cpu_count()} cpus; Python {platform.python_version()}",
        "",
        "median ms      " + "".join(f"{f:>10}" for f in FIELDS),
    ]
    for b, row in med.items():
        lines.append(f"{b:<15}" + "".join(f"{row[f]:>10.1f}" for f in FIELDS))
    if {"fcntl", "nop"} <= set(med):
        lines.append(
            f"{'fcntl - nop':<15}"
            + "".join(f"{med['fcntl'][f] - med['nop'][f]:>+10.1f}" for f in FIELDS)
        )
    for b, times in results.items():
        spread = sorted(t.times.handoff * 1000 for t in times)
        lines.append(
            f"{b} handoff ms: min {spread[0]:.1f}, max {spread[-1]:.1f}, "
            f"all {', '.join(f'{x:.0f}' for x in spread)}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15, help="migrations per backend (>= 10)")
    p.add_argument("--backends", default="fcntl,nop", help="comma-separated backends")
    p.add_argument("--memory", type=int, default=32, help="guest memory in MiB")
    p.add_argument("--json", action="store_true", help="print the raw times as JSON")
    args = p.parse_args(argv)
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        print("qemu_handoff: QEMU (qemu-system-x86_64, qemu-img) is not installed", file=sys.stderr)
        return 2
    started = time.monotonic()
    results = run(args.rounds, args.backends.split(","), args.memory)
    if args.json:
        raw = {b: [{f: value(t, f) for f in FIELDS} for t in ts] for b, ts in results.items()}
        print(json.dumps(raw, indent=1))
    else:
        print(report(results, args.memory))
        print(f"(run took {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
