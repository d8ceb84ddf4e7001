"""Layer 1 of the etcd agent: the host-lease keeper on a fake clock against a fake etcd.

Its timing rules (keepalive every TTL/3, the local deadline, never resuming on a late answer)
are checked here in simulated seconds; tests/test_etcd.py checks them against a real etcd."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from lockfsm.agent.keeper import RETRY, HostLease, HostLeaseKeeper
from lockfsm.backends.etcd.client import Unavailable

TTL = 9
MARGIN = 2.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


class FakeEtcd:
    """Grants leases; keepalives succeed unless the clock is in an outage, and each takes
    ``delay`` simulated seconds."""

    endpoint = "fake:2379"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.next_id = 0x100
        self.outages: list[tuple[float, float]] = []
        self.delay = 0.0
        self.keepalives: list[tuple[float, int]] = []
        self.revoked: list[int] = []

    def down(self) -> bool:
        return any(a <= self.clock.now < b for a, b in self.outages)

    async def grant(self, ttl: int, timeout: float) -> tuple[int, int]:
        if self.down():
            await self.clock.sleep(timeout)
            raise Unavailable("down")
        self.next_id += 1
        return self.next_id, ttl

    async def keepalive(self, lease: int, timeout: float) -> int:
        sent = self.clock.now
        await self.clock.sleep(self.delay)
        if self.down() or any(a <= sent < b for a, b in self.outages):
            raise Unavailable("down")
        self.keepalives.append((sent, lease))
        return TTL

    async def revoke(self, lease: int, timeout: float) -> None:
        self.revoked.append(lease)


class Listener:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.valid: list[tuple[float, int, float]] = []
        self.lost: list[tuple[float, int, str]] = []

    def valid_(self, lease: HostLease) -> None:
        self.valid.append((self.clock.now, lease.id, lease.valid_until))

    def lost_(self, lease: HostLease, why: str) -> None:
        self.lost.append((self.clock.now, lease.id, why))


def run_for(seconds: float, outages: list[tuple[float, float]] = (), delay: float = 0.0) -> Any:
    clock = Clock()
    etcd = FakeEtcd(clock)
    etcd.outages = [(clock.now + a, clock.now + b) for a, b in outages]
    etcd.delay = delay
    heard = Listener(clock)
    listener: Any = type(
        "L",
        (),
        {"valid": lambda s, le: heard.valid_(le), "lost": lambda s, le, why: heard.lost_(le, why)},
    )()

    async def main() -> HostLeaseKeeper:
        keeper = HostLeaseKeeper(etcd, TTL, MARGIN, listener, clock=clock, sleep=clock.sleep)
        start = clock.now
        task = asyncio.ensure_future(keeper.run())
        while clock.now - start < seconds:
            await asyncio.sleep(0)
        keeper.stop()
        task.cancel()
        return keeper

    keeper = asyncio.run(main())
    return clock, etcd, heard, keeper


def test_keepalives_every_third_of_the_ttl() -> None:
    _, etcd, heard, _ = run_for(60)
    sent = [t for t, _ in etcd.keepalives]
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert gaps and all(g == pytest.approx(TTL / 3) for g in gaps), gaps
    assert not heard.lost
    for at, _, until in heard.valid:
        assert until <= at + TTL - MARGIN + 1e-9  # never promised past send + TTL - margin


def test_an_outage_shorter_than_the_margin_loses_nothing() -> None:
    """Keepalives fail for a while, then succeed before the local deadline: one lease all
    along, retried every RETRY seconds meanwhile."""
    _, etcd, heard, _ = run_for(40, outages=[(5, 9)])
    assert not heard.lost
    assert len({lease for _, lease in etcd.keepalives}) == 1
    during = [t for t, _ in etcd.keepalives if t > 9]
    assert during, "keepalives resumed"


def test_a_lease_not_renewed_by_its_deadline_is_lost_for_good() -> None:
    """A long outage: the lease is given up at send + TTL - margin, revoked later, and a new
    lease is granted once etcd answers -- the old one is never used again."""
    _, etcd, heard, keeper = run_for(60, outages=[(2, 20)])
    assert len(heard.lost) == 1
    lost_at, old, why = heard.lost[0]
    last_proof = max(until for _, lease, until in heard.valid if lease == old)
    assert lost_at == pytest.approx(last_proof, abs=RETRY + 0.31)
    assert "deadline" in why
    assert keeper.lease is not None and keeper.lease.id != old
    assert old in etcd.revoked
    assert not [1 for t, lease in etcd.keepalives if lease == old and t > lost_at]


def test_a_late_answer_is_never_used() -> None:
    """Each keepalive answer arrives after the deadline it would have extended: the lease is
    lost even though etcd said OK."""
    _, _, heard, _ = run_for(30, delay=TTL)
    assert heard.lost and "after the local deadline" in heard.lost[0][2]
