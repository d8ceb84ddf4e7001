"""Item 4: a hot-plug round trip over the control socket: ``acquire_resource`` (the daemon names
the lease, the supervisor takes it and answers) and ``release_resource``, on a running guest
with 4 disks on fcntl.  The baseline is the same socket's cheapest round trip, ``hello`` (the
supervisor answers with its record, takes nothing), through the same client code.
"""

from __future__ import annotations

import time

from bench import GUEST, Context, disk_files, quiet_host
from bench.measure import median, spread
from bench.report import Row, Target, collect

DISKS = 4


def round_trips(ctx: Context) -> list[Row]:
    """Hot-plug acquire and release round trips, against a hello round trip."""
    from lockfsm import ResourceType
    from lockfsm.protocol import rundir, wire

    host = quiet_host("fcntl")
    disks = disk_files(ctx.tmpdir("lfbd"), DISKS + 1)
    plugged = disks[DISKS]
    times: dict[str, list[float]] = {"acquire": [], "release": [], "hello": []}
    try:
        guest = host.start("hotplug", disks[:DISKS], guest=GUEST, timeout=30)
        socket_path = rundir.socket_path(host.run_dir, guest.mgr._launch or "")
        steps = {
            "acquire": lambda: guest.mgr.acquire_resource(ResourceType.DISK, plugged),
            "release": lambda: guest.mgr.release_resource(ResourceType.DISK, plugged),
            "hello": lambda: wire.call(socket_path, {"op": "hello"}, 5.0),
        }
        for i in range(ctx.pick(full=300, quick=40) + 5):
            for name, step in steps.items():
                started = time.perf_counter()
                step()
                if i >= 5:  # warm-up
                    times[name].append(time.perf_counter() - started)
        host.stop(guest)
    finally:
        host.cleanup()
    return [
        Row(
            f"4.{name}",
            f"hot-plug {name}_resource round trip (fcntl, 4 disks held)",
            median(times[name]) * 1e3,
            "ms",
            median(times["hello"]) * 1e3,
            "a hello round trip on the same control socket",
            Target("value", 2),
            note=spread(times[name], 1e3, "ms"),
        )
        for name in ("acquire", "release")
    ]


def run(ctx: Context) -> list[Row]:
    return collect(ctx, [round_trips])
