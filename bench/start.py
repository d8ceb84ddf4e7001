"""Item 3: a guest start with 4 disks on fcntl, from running the supervisor to ``get_child``
returning, against starting a bare ``python -c pass``; and the supervisor's memory (RSS, PSS)
while it holds the 4 leases, against a bare interpreter's, both alive at the same moment (PSS
divides shared pages among the processes mapping them: measured side by side, both see the
same sharers).

The bare interpreter is the supervisor's own (``sys.executable``), started the same way.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid as uuidlib

from bench import GUEST, Context, disk_files, quiet_host
from bench.measure import alternate, bare_interpreters, end, median, memory_kb, spread
from bench.report import Row, Target, collect
from lockfsm.embed.standin import Guest, Host

DISKS = 4


def _bare_start() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def start_time(ctx: Context) -> Row:
    """Guest start with 4 disks on fcntl, against a bare python -c pass."""
    host = quiet_host("fcntl")
    disks = disk_files(ctx.tmpdir("lfbd"), DISKS)
    count = [0]

    def start() -> float:
        count[0] += 1
        name, uuid = f"vm{count[0]}", str(uuidlib.uuid4())
        mgr = host.manager(name, uuid, disks)
        args = mgr.supervisor_args  # computed before the clock starts, as a daemon would
        started = time.perf_counter()
        guest = Guest(host, mgr, host.launch(mgr, GUEST), name, uuid, disks)
        guest.pid = mgr.get_child(timeout=30)
        took = time.perf_counter() - started
        del args
        host.stop(guest)
        return took

    try:
        ours, theirs = alternate(start, _bare_start, rounds=ctx.pick(full=30, quick=6))
    finally:
        host.cleanup()
    return Row(
        "3.start",
        "guest start, 4 disks on fcntl: run supervisor -> get_child returns",
        median(ours) * 1e3,
        "ms",
        median(theirs) * 1e3,
        f"start and wait for a bare `{sys.executable} -c pass`",
        Target("ratio", 3),
        note=spread(ours, 1e3, "ms"),
    )


def _side_by_side(host: Host, disks: list[str], n: int) -> tuple[dict[str, int], ...]:
    """The memory of a supervisor holding ``disks`` and of an idle bare interpreter."""
    guest = host.start(f"mem{n}", disks, guest=GUEST, timeout=30)
    (bare,) = bare_interpreters(1)
    try:
        time.sleep(0.05)  # the supervisor is in its loop: get_child was answered from it
        return memory_kb(guest.supervisor_pid), memory_kb(bare.pid)
    finally:
        end([bare])
        host.stop(guest)


def supervisor_memory(ctx: Context) -> list[Row]:
    """The supervisor's RSS and PSS holding 4 leases, against a bare interpreter's."""
    host = quiet_host("fcntl")
    disks = disk_files(ctx.tmpdir("lfbd"), DISKS)
    readings = []
    try:
        for n in range(ctx.pick(full=7, quick=2)):
            readings.append(_side_by_side(host, disks, n))
    finally:
        host.cleanup()
    rows = []
    for kind in ("rss", "pss"):
        ours = [sup[kind] / 1024 for sup, _ in readings]
        theirs = [bare[kind] / 1024 for _, bare in readings]
        rows.append(
            Row(
                f"3.{kind}",
                f"supervisor {kind.upper()} holding 4 fcntl leases",
                median(ours),
                "MB",
                median(theirs),
                "an idle bare interpreter, read at the same moment",
                Target("ratio", 1.5),
                note=f"/proc/<pid>/smaps_rollup, median of {len(ours)}",
            )
        )
    return rows


def run(ctx: Context) -> list[Row]:
    return collect(ctx, [start_time, supervisor_memory])
