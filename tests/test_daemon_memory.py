"""A daemon polls check() and hot-plugs for months: the daemon side's memory stays flat.

Measured with tracemalloc (Python's own allocations, what a manager can accumulate), after a
warm-up that fills every bounded structure (the history ring), over thousands of calls.  Before
the history was bounded, 20,000 check() calls and 2,000 hot-plug cycles grew the heap by 3.2 MB
(138 bytes a call); this test's run would have grown it by about 0.6 MB."""

from __future__ import annotations

import tracemalloc

from lockfsm import DomainState, ResourceType
from lockfsm.daemon.manager import HISTORY_LIMIT
from lockfsm.embed.standin import Host, make_disks

CHECKS = 3000
CYCLES = 300
ALLOWED_GROWTH = 64 * 1024  # bytes: noise of the allocator and the interpreter's caches


def test_the_daemon_side_stays_flat_over_checks_and_hot_plugs(host: Host, workdir: str) -> None:
    disk, spare = make_disks(workdir, "a.img", "spare.img")
    g = host.start("vm-flat", [disk])
    mgr = g.mgr

    def work(checks: int, cycles: int) -> None:
        for _ in range(checks):
            assert mgr.check() is DomainState.STARTED
        for _ in range(cycles):
            mgr.acquire_resource(ResourceType.DISK, spare)
            mgr.release_resource(ResourceType.DISK, spare)

    tracemalloc.start()
    try:
        work(HISTORY_LIMIT * 2, 20)  # warm-up: the history ring is full
        before = tracemalloc.get_traced_memory()[0]
        work(CHECKS, CYCLES)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(mgr.history) == HISTORY_LIMIT
    assert mgr.moves >= CHECKS + 2 * CYCLES
    assert mgr.history[-1].event == "release_resource"
    assert grown < ALLOWED_GROWTH, (
        f"the daemon side grew by {grown} bytes over {CHECKS} checks and {CYCLES} hot-plug "
        f"cycles ({grown / (CHECKS + 2 * CYCLES):.1f} bytes a call)"
    )
    mgr.shutdown()
