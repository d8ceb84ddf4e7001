"""Item 6: scale.  500 guests with 4 disks each on one host under fcntl, started at once by one
daemon: the start storm's time, the memory of the supervisors and their stand-in guests
(``sleep``), and the daemon side's memory; then the 8 hosts x 100 guests etcd storms (a start
storm, a migration storm of every guest, violations judged from etcd's key space, the agents'
memory: bench/etcd_storm.py runs them; ``--etcd-scale`` sizes them, 8x8 with ``--quick``).

Each storm runs in a fresh interpreter (``python -m bench.scale``), which is the daemon: it
builds the managers, runs every supervisor, then waits on each ``get_child``; its RSS growth is
the daemon side's memory.  The baseline storm runs, in a fresh interpreter too, as many bare
interpreters that each say when they are up; it is measured before and (full run) after the
lockfsm storm.  Memory is PSS summed over the processes (shared pages divided among sharers,
so the sum is what the storm costs the machine), read when every one is up.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from bench import Context
from bench.handoff import etcd_missing
from bench.measure import (
    bare_interpreters,
    end,
    in_fresh_interpreter,
    median,
    own_rss_kb,
    progress,
    pss_mb,
)
from bench.report import Row, Target, collect, unavailable

GUESTS = 500
GUESTS_PER_ETCD_HOST = 100
DISKS = 4


def _lockfsm_storm(count: int) -> dict[str, Any]:
    """The daemon's side of a storm of ``count`` guests: start them all, measure, stop them."""
    import gc

    from bench import disk_files, launched, quiet_host
    from lockfsm.embed.standin import short_tmpdir

    host = quiet_host("fcntl")
    disks = disk_files(short_tmpdir("lfbd"), count * DISKS)
    gc.collect()
    before = own_rss_kb()
    started = time.perf_counter()
    guests = [launched(host, f"vm{i}", disks[i * DISKS : (i + 1) * DISKS]) for i in range(count)]
    for i, g in enumerate(guests, 1):
        g.pid = g.mgr.get_child(timeout=300)
        progress("fcntl storm: guests running", i, count)
    storm = time.perf_counter() - started
    gc.collect()
    daemon_mb = (own_rss_kb() - before) / 1024
    supervisors = pss_mb([g.supervisor_pid for g in guests])
    stand_ins = pss_mb([g.pid for g in guests])
    started = time.perf_counter()
    for g in guests:
        host.stop(g)
    stop = time.perf_counter() - started
    host.cleanup()
    return {
        "storm_s": storm,
        "stop_s": stop,
        "supervisors_mb": supervisors,
        "guests_mb": stand_ins,
        "daemon_mb": daemon_mb,
    }


def _bare_storm(count: int) -> dict[str, Any]:
    """``count`` bare interpreters started at once, until each is up; their memory."""
    import gc

    gc.collect()
    before = own_rss_kb()
    started = time.perf_counter()
    procs = bare_interpreters(count)
    storm = time.perf_counter() - started
    gc.collect()
    daemon_mb = (own_rss_kb() - before) / 1024
    total = pss_mb([p.pid for p in procs])
    end(procs)
    return {"storm_s": storm, "total_mb": total, "daemon_mb": daemon_mb}


def _storms(ctx: Context, module: str, *args: int) -> tuple[Any, list[Any], dict[str, float]]:
    """``python -m <module> lockfsm|bare <args>``, each in a fresh interpreter: the lockfsm
    storm after a bare one (and, in a full run, before another): (its figures, the bare runs'
    figures, their medians)."""
    bare = [in_fresh_interpreter(module, "bare", *args)]
    ours = in_fresh_interpreter(module, "lockfsm", *args)
    if not ctx.quick:
        bare.append(in_fresh_interpreter(module, "bare", *args))
    return ours, bare, {k: median([b[k] for b in bare]) for k in bare[0]}


def storm_fcntl(ctx: Context) -> list[Row]:
    """The start storm of 500 guests x 4 disks on fcntl, against as many bare interpreters."""
    count = ctx.pick(full=GUESTS, quick=50)
    ours, bare, base = _storms(ctx, "bench.scale", count)
    what = f"{count} guests x {DISKS} disks on fcntl"
    bare_of = f"{count} bare interpreters started at once (median of {len(bare)} storms)"
    return [
        Row(
            "6.fcntl.storm",
            f"start storm, {what}: until every get_child returned",
            ours["storm_s"],
            "s",
            base["storm_s"],
            f"{bare_of}, until each is up",
            note=f"then a stop storm (shutdown of each): {ours['stop_s']:.1f} s",
            extra={"lockfsm": ours, "bare": bare},
        ),
        Row(
            "6.fcntl.memory",
            f"memory (PSS), {count} supervisors + their stand-in guests",
            ours["supervisors_mb"] + ours["guests_mb"],
            "MB",
            base["total_mb"],
            f"PSS of {bare_of}",
            note=(
                f"supervisors {ours['supervisors_mb']:.0f} MB "
                f"({ours['supervisors_mb'] / count * 1024:.0f} KB each), "
                f"guests (sleep) {ours['guests_mb']:.0f} MB"
            ),
        ),
        Row(
            "6.fcntl.daemon",
            f"daemon side's memory (RSS growth) for {count} started guests",
            ours["daemon_mb"],
            "MB",
            base["daemon_mb"],
            f"RSS growth of the process starting {bare_of}",
            note=f"{ours['daemon_mb'] / count * 1024:.1f} KB a guest",
        ),
    ]


def storm_etcd(ctx: Context) -> list[Row]:
    """8 simulated hosts x 100 guests on a 3-member etcd cluster: start storm, migration storm
    of every guest, violations (bench/etcd_storm.py), against bare interpreters."""
    hosts, per_host, window = ctx.etcd_scale or (
        (8, 8, 8) if ctx.quick else (8, GUESTS_PER_ETCD_HOST, 50)
    )
    count = hosts * per_host
    what = f"etcd, {hosts} hosts x {per_host} guests x {DISKS} disks, 3 members"
    why = etcd_missing()
    if why:
        return [
            unavailable("6.etcd.storm", f"start storm, {what}", why),
            unavailable("6.etcd.migration", f"migration storm of every guest, {what}", why),
            unavailable("6.etcd.violations", f"violations in the storms, {what}", why),
            unavailable("6.etcd.memory", f"memory (PSS), {what}", why),
            unavailable("6.etcd.agents", f"memory (PSS) of the {hosts} lease agents", why),
        ]
    ours, bare, base = _storms(ctx, "bench.etcd_storm", hosts, per_host, window)
    bare_of = f"{count} bare interpreters (median of {len(bare)} runs)"
    sups, guests = ours["started"]["supervisors_mb"], ours["started"]["guests_mb"]
    return [
        Row(
            "6.etcd.storm",
            f"start storm, {what}: until every get_child returned",
            ours["storm_s"],
            "s",
            base["storm_s"],
            f"{bare_of} started at once, until each is up",
            note=f"then the migration storm; at the end a stop storm: {ours['stop_s']:.1f} s",
            extra={"lockfsm": ours, "bare": bare},
        ),
        Row(
            "6.etcd.migration",
            f"migration storm, every guest to the next host, {window} at a time",
            ours["migration_s"],
            "s",
            base["migration_s"],
            f"{bare_of}, each replaced by a new one ({window} at a time: started, up, the old "
            "one ended)",
            note=(
                f"one migration (prepare, incoming target, both completions, source stopped): "
                f"median {ours['migration_p50_s']:.2f} s, p90 {ours['migration_p90_s']:.2f} s; "
                f"{ours['migrations_failed']} failed"
                + (f" ({ours['failures'][0]})" if ours["failures"] else "")
            ),
        ),
        Row(
            "6.etcd.violations",
            "two hosts holding one disk at a sampled instant (etcd's keys), or keys not the "
            "right side's after a storm",
            ours["violations"],
            "",
            target=Target("value", 0),
            note=(
                f"{ours['samples']} samples of the whole key space (up to {ours['keys_max']} "
                f"keys; one every {ours['gap_p50_s']:.2f} s, median, at most "
                f"{ours['gap_max_s']:.1f} s apart), {ours['samples_in_flight']} with a handoff in "
                f"flight, {ours['samples_failed']} failed reads; after each storm every guest's "
                f"{DISKS + 1} keys checked"
                + (
                    f"; first: {ours['violations_sampled'][0]}"
                    if ours["violations_sampled"]
                    else ""
                )
            ),
        ),
        Row(
            "6.etcd.memory",
            f"memory (PSS), {count} supervisors + their stand-in guests",
            sups + guests,
            "MB",
            base["total_mb"],
            f"PSS of {bare_of}",
            note=(
                f"supervisors {sups:.0f} MB ({sups / count * 1024:.0f} KB each), guests (sleep) "
                f"{guests:.0f} MB; after the migration storm "
                f"{ours['migrated']['supervisors_mb'] + ours['migrated']['guests_mb']:.0f} MB; "
                f"daemon side's RSS growth {ours['daemon_mb']:.1f} MB"
            ),
        ),
        Row(
            "6.etcd.agents",
            f"memory (PSS) of the {hosts} lease agents serving the {count} guests",
            ours["agents_mb"],
            "MB",
            ours["clients_mb"],
            f"{hosts} bare interpreters that imported lockfsm.etcd_client (aetcd, gRPC), alive "
            "at the same moment",
            note=f"{ours['agents_mb'] / hosts:.1f} MB an agent",
        ),
    ]


def run(ctx: Context) -> list[Row]:
    return collect(ctx, [storm_fcntl, storm_etcd])


if __name__ == "__main__":
    kind, n = sys.argv[1], int(sys.argv[2])
    print(json.dumps(_lockfsm_storm(n) if kind == "lockfsm" else _bare_storm(n)))
