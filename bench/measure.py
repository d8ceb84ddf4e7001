"""Timing and memory readings: interleaved samples, medians, RSS and PSS from /proc.

The machines are small and shared (2 cores, other people's tests running), so a figure and its
baseline are sampled alternately, in the order A B B A A B ..., and compared by their medians:
whatever the machine was doing meanwhile weighs on both alike.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

#: A bare interpreter that says when it is up, then idles until its stdin closes.
IDLE = "import sys; sys.stdout.write('up\\n'); sys.stdout.flush(); sys.stdin.read()"

#: A sampler takes one sample and returns what it measured (seconds, usually).  It may do
#: untimed setup and cleanup around the part it times.
Sampler = Callable[[], float]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def spread(values: Sequence[float], scale: float = 1.0, unit: str = "") -> str:
    """'median of n (p10 .. p90)' for a note."""
    lo, hi = quantile(values, 0.1) * scale, quantile(values, 0.9) * scale
    return f"median of {len(values)}, p10 {lo:.3g} {unit}, p90 {hi:.3g} {unit}".replace(" ,", ",")


def alternate(
    measured: Sampler, baseline: Sampler, rounds: int, warmup: int = 1
) -> tuple[list[float], list[float]]:
    """``rounds`` samples of each, alternating A B B A A B ... after ``warmup`` unrecorded
    samples of each.  Returns (measured samples, baseline samples)."""
    for _ in range(warmup):
        measured()
        baseline()
    ours: list[float] = []
    theirs: list[float] = []
    for i in range(rounds):
        if i % 2 == 0:
            ours.append(measured())
            theirs.append(baseline())
        else:
            theirs.append(baseline())
            ours.append(measured())
    return ours, theirs


def per_call(fn: Callable[[], object], calls: int) -> Sampler:
    """A sampler timing ``calls`` calls of ``fn``; it returns seconds per call."""

    def sample() -> float:
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - started) / calls

    return sample


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def memory_kb(pid: int) -> dict[str, int]:
    """{"rss": kB, "pss": kB} of process ``pid``, from /proc/<pid>/smaps_rollup.  Raises
    FileNotFoundError (or ProcessLookupError) if the process is gone."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                found[name.lower()] = int(rest.split()[0])
    return found


def own_rss_kb() -> int:
    """This process's resident set size, kB (from /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def pss_mb(pids: list[int]) -> float:
    """The PSS of processes ``pids`` summed, MB: what they cost the machine together."""
    return sum(memory_kb(pid)["pss"] for pid in pids) / 1024


def bare_interpreters(count: int, code: str = IDLE) -> list[subprocess.Popen[bytes]]:
    """``count`` bare interpreters running ``code`` (which says "up", then idles: :data:`IDLE`)
    started at once, each until it is up; :func:`end` ends them."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for _ in range(count)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == b"up\n"
    return procs


def end(procs: list[subprocess.Popen[bytes]]) -> None:
    """End idle interpreters (their stdin closes) and reap them."""
    for p in procs:
        p.communicate(timeout=60)


def in_fresh_interpreter(module: str, *args: object, timeout: float = 3600) -> Any:
    """``python -m <module> <args>`` in a fresh interpreter (in the source tree): the JSON it
    prints.  Its stderr (its progress) goes to ours."""
    from bench import REPO

    command = [sys.executable, "-m", module, *map(str, args)]
    out = subprocess.run(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout
    )
    if out.returncode:
        what = " ".join(command[1:])
        raise RuntimeError(f"python {what} failed (exit {out.returncode}; its stderr is above)")
    return json.loads(out.stdout)


def progress(what: str, done: int, total: int) -> None:
    """Say how far a long step (a storm) is, on stderr: one live line on a terminal, else a
    line at each tenth."""
    if total <= 0:
        return
    if sys.stderr.isatty():
        end = "\n" if done >= total else ""
        print(f"\r   {what}: {done}/{total}", end=end, file=sys.stderr, flush=True)
    elif done >= total or done % max(1, total // 10) == 0:
        print(f"   {what}: {done}/{total}", file=sys.stderr, flush=True)
