"""The host's etcd lease: granted, kept alive every TTL/3, given up for good at the local
deadline.

Each keepalive's *send* time ``t`` proves the lease alive until ``t + TTL`` on etcd's side (the
leader starts the TTL when the request arrives, after ``t``); the keeper tells its listener
``t + TTL - fence_margin`` ("valid until", on this host's monotonic clock).  It gives the lease
up for good at that instant if no keepalive succeeded meanwhile (a late answer, even an OK, is
never used: a lease can come back to life after etcd's quorum returns), tells the listener,
revokes the old lease once etcd's own TTL would have run out, and grants a new one.

The clock, the sleep and the etcd client are the keeper's arguments, so that a test can drive
it on a fake clock against a fake etcd (tests/test_agent_keeper.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from lockfsm.backends.etcd.client import EtcdError
from lockfsm.errors import BackendError

log = logging.getLogger("lockfsm.agent")

RETRY = 0.1  # pause after a failed keepalive before the next try


class LeaseClient(Protocol):
    """What the keeper asks of etcd (lockfsm.backends.etcd.client.Etcd)."""

    @property
    def endpoint(self) -> str: ...

    async def grant(self, ttl: int, timeout: float) -> tuple[int, int]: ...

    async def keepalive(self, lease: int, timeout: float) -> int: ...

    async def revoke(self, lease: int, timeout: float) -> None: ...


def short(error: BaseException) -> str:
    """The first line of an error, at most 200 characters (gRPC's are long)."""
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__


class HostLease:
    """One etcd lease of this host."""

    __slots__ = ("id", "lost", "sent", "ttl", "valid_until")

    def __init__(self, lease_id: int, ttl: int, sent: float, margin: float) -> None:
        self.id = lease_id
        self.ttl = ttl
        self.sent = sent  # monotonic send time of the last successful grant or keepalive
        self.valid_until = sent + ttl - margin
        self.lost: str | None = None


class Listener(Protocol):
    def valid(self, lease: HostLease) -> None:
        """The lease is proven alive until ``lease.valid_until`` (a grant or a keepalive)."""

    def lost(self, lease: HostLease, why: str) -> None:
        """The lease is given up for good."""


class HostLeaseKeeper:
    """Keeps one host lease alive (``run``); ``current()`` is the lease requests may use."""

    def __init__(
        self,
        etcd: LeaseClient,
        ttl: int,
        margin: float,
        listener: Listener,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.etcd = etcd
        self.ttl = ttl
        self.margin = margin
        self.listener = listener
        self.clock = clock
        self.sleep = sleep
        self.try_timeout = min(1.0, ttl / 4)
        self.budget = 3 * self.try_timeout
        self.lease: HostLease | None = None
        self.ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self.revokers: set[asyncio.Task[Any]] = set()

    async def resume(self, lease_id: int, valid_until: float) -> HostLease | None:
        """Take up ``lease_id``, the lease a previous agent of this host kept alive until the
        local deadline ``valid_until``: one keepalive now, and the lease is this keeper's if
        etcd still knows it and the deadline has not passed (its supervisors were promised
        ``valid_until`` and have not fenced).  A lease past its deadline is never resumed (its
        guests were fenced): it is revoked, so that its keys go at once.  Returns the lease, or
        None (then the caller grants a new one)."""
        sent = self.clock()
        if sent >= valid_until:
            log.warning(
                "etcd lease %x of the previous agent is past its local deadline: its guests were "
                "fenced; it is revoked and a new lease taken",
                lease_id,
            )
            await self._revoke_now(lease_id)
            return None
        try:
            ttl = await self.etcd.keepalive(lease_id, min(self.budget, valid_until - sent))
        except EtcdError as e:
            log.warning("etcd lease %x cannot be resumed (%s): a new lease", lease_id, short(e))
            await self._revoke_now(lease_id)
            return None
        if ttl <= 0 or self.clock() >= valid_until:
            log.warning(
                "etcd lease %x has expired (or answered after its deadline): the guests it "
                "protected were fenced; a new lease",
                lease_id,
            )
            await self._revoke_now(lease_id)
            return None
        lease = HostLease(lease_id, min(ttl, self.ttl), sent, self.margin)
        self.lease = lease
        self.ready.set()
        log.info("etcd lease %x resumed via %s", lease_id, self.etcd.endpoint)
        self.listener.valid(lease)
        return lease

    async def _revoke_now(self, lease_id: int) -> None:
        try:
            await self.etcd.revoke(lease_id, self.budget)
        except EtcdError:
            pass  # it expires by itself

    async def grant(self) -> HostLease:
        """Get a new lease, trying until etcd gives one (or the keeper stops)."""
        while True:
            sent = self.clock()
            try:
                lease_id, granted = await self.etcd.grant(self.ttl, self.budget)
            except EtcdError as e:
                log.warning("cannot get an etcd lease yet: %s", short(e))
                if self.stopping.is_set():
                    raise BackendError("stopping without an etcd lease") from None
                await self.sleep(RETRY)
                continue
            # etcd may raise a short TTL to its minimum, never lower it: ours is the bound.
            lease = HostLease(lease_id, min(granted, self.ttl), sent, self.margin)
            self.lease = lease
            self.ready.set()
            log.info(
                "etcd lease %x granted (TTL %s s) via %s", lease_id, lease.ttl, self.etcd.endpoint
            )
            self.listener.valid(lease)
            return lease

    def lose(self, lease: HostLease, why: str) -> None:
        """Give ``lease`` up for good: the listener hears it, no request uses it again, and it
        is revoked once etcd's own TTL would have run out (in case it came back to life)."""
        if lease.lost is not None:
            return
        lease.lost = why
        if self.lease is lease:
            self.lease = None
            self.ready.clear()
        log.warning("etcd lease %x lost: %s", lease.id, why)
        self.listener.lost(lease, why)
        task = asyncio.ensure_future(self._revoke_later(lease))
        self.revokers.add(task)
        task.add_done_callback(self.revokers.discard)

    async def _revoke_later(self, lease: HostLease) -> None:
        await self.sleep(max(0.0, lease.sent + lease.ttl - self.clock()))
        for _ in range(100):
            try:
                await self.etcd.revoke(lease.id, self.budget)
                log.info("etcd lease %x revoked", lease.id)
                return
            except EtcdError:
                await self.sleep(self.ttl / 3)

    async def run(self) -> None:
        """Keep the host's lease alive every TTL/3 (after a failure, every RETRY s on the next
        member), and give it up at the local deadline, until ``stopping`` is set."""
        interval = self.ttl / 3
        failures = 0
        retry_at = 0.0
        while not self.stopping.is_set():
            lease = self.lease
            if lease is None:
                await self.grant()
                failures = 0
                continue
            now = self.clock()
            if now >= lease.valid_until:
                self.lose(lease, "no keepalive succeeded before the local deadline")
                continue
            due = retry_at if failures else lease.sent + interval
            if now < due:
                await self.sleep(min(due, lease.valid_until) - now)
                continue
            sent = self.clock()
            # Room for several tries before the deadline: a member that hangs (it lost its
            # leader, or stopped) costs one try, then the next member is asked.
            limit = min(self.try_timeout, max(0.05, (lease.valid_until - sent) / 3))
            try:
                ttl = await self.etcd.keepalive(lease.id, min(limit, 0.3) if failures else limit)
            except EtcdError as e:
                if not failures:
                    log.warning("keepalive of %x failed, retrying: %s", lease.id, short(e))
                failures += 1
                retry_at = self.clock() + RETRY
                continue
            if lease.lost is not None:
                continue  # given up meanwhile (etcd no longer knew it): never renewed again
            if self.clock() >= lease.valid_until:  # too late: never resume on it
                self.lose(lease, "the keepalive answer came after the local deadline")
                continue
            if ttl <= 0:
                self.lose(lease, "etcd says the lease has expired")
                continue
            if failures:
                log.info(
                    "keepalive of %x succeeds again via %s after %d failed tries, %.2f s after "
                    "the last success",
                    lease.id,
                    self.etcd.endpoint,
                    failures,
                    sent - lease.sent,
                )
            failures = 0
            lease.sent = sent
            lease.valid_until = sent + min(ttl, self.ttl) - self.margin
            self.listener.valid(lease)

    async def current(self) -> HostLease:
        """The host's lease, valid now; waits a little for one.  Raises BackendError."""
        try:
            if not self.ready.is_set():
                await asyncio.wait_for(self.ready.wait(), self.budget)
        except TimeoutError:
            raise BackendError(
                "the lease agent is not ready yet: it holds no etcd lease (etcd does not answer)"
            ) from None
        lease = self.lease
        if lease is None or self.clock() >= lease.valid_until:
            raise BackendError("this host's etcd lease cannot be proven alive now")
        return lease

    def stop(self) -> None:
        self.stopping.set()
        for task in list(self.revokers):
            task.cancel()
