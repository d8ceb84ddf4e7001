"""The lease store: every operation on a lockspace's keys as one etcd transaction.

Acquire: exclusive, "nothing under the lease's directory"; shared, "no ``x`` and no ``r``".
The handoff: the source's release of a reserved lease turns ``x`` into a marker "handed off to
<the reservation>" on the target host's etcd lease, and the target's take-over is one
transaction over every lease that compares each ``x`` with that marker and with the create
revision the cookie carries (the fencing token), and moves them all to the target.

A transaction that failed in flight may have been applied: the store reads the keys back before
it answers or retries.  Every key lives on the host's etcd lease (the keeper's), so a dead
host's keys go when its lease expires.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from lockfsm.agent.keeper import HostLease, HostLeaseKeeper
from lockfsm.agent.keys import (
    KeySchema,
    describe,
    holder_value,
    is_marker,
    marker,
    reservation_value,
)
from lockfsm.backends.etcd.client import (
    KV,
    Etcd,
    EtcdError,
    LeaseNotFound,
    TxnResult,
    Uncertain,
    create,
    delete,
    get,
    lease_is,
    nested,
    prefix_end,
    put,
    value,
)
from lockfsm.errors import BackendError, InvalidArgument, LeaseConflict
from lockfsm.protocol import trace, wire

log = logging.getLogger("lockfsm.agent")


class WaitingConflict(LeaseConflict):
    """A take-over that waiting may help (a source still holds a lease): ``keys`` are the etcd
    keys to watch from ``revision`` on."""

    def __init__(self, conflict: LeaseConflict, keys: list[bytes], revision: int) -> None:
        super().__init__(str(conflict), conflict.resource, conflict.holder)
        self.keys = keys
        self.revision = revision


#: How long what a ``peek`` read may stand in for the release's own read (seconds).  Older rows
#: would only cost a failed try; the guest of a handoff is dead well within this.
PEEK_FRESH = 2.0


class Owned:
    """What one party (a supervisor's connection) has written for one lease key."""

    __slots__ = ("held", "lease", "mode", "reserved", "resource", "rvalue")

    def __init__(self, mode: str, resource: str) -> None:
        self.mode = mode
        self.resource = resource
        self.held: bytes | None = None  # our value of x (exclusive) or s/<id> (shared)
        self.reserved: bytes | None = None  # our reservation r, while it is in etcd
        self.rvalue: bytes | None = None  # the reservation's value
        self.lease = 0


class Party:
    """Who asks: a supervisor, named by ``who`` in its keys' values and by ``sid`` in its shared
    keys, and what it owns."""

    def __init__(self, who: dict[str, Any], sid: str) -> None:
        self.who = who
        self.sid = sid
        self.owned: dict[str, Owned] = {}
        #: what a ``peek`` read for the coming release: (when, key -> (x rows, r rows))
        self.peeked: tuple[float, dict[str, tuple[list[KV], list[KV]]]] | None = None
        #: the same rows, kept up to date by an etcd watch while a migration is prepared
        #: (:meth:`LeaseStore.follow`), and the task that keeps them
        self.followed: dict[str, tuple[list[KV], list[KV]]] | None = None
        self.follower: asyncio.Task[None] | None = None


def lease_request(req: Mapping[str, Any]) -> tuple[str, str, str]:
    """(key, mode, resource) of a request about one lease.  Raises InvalidArgument."""
    key, mode, resource = req.get("key"), req.get("mode"), req.get("resource", "")
    if not isinstance(key, str) or mode not in ("exclusive", "shared"):
        raise InvalidArgument("a lease needs a key and a mode")
    return key, str(mode), wire.check_text(resource or key, "resource", 4096)


class LeaseStore:
    """The lockspace's keys (``keys``) in ``etcd``, written on the ``keeper``'s lease."""

    def __init__(self, etcd: Etcd, keys: KeySchema, keeper: HostLeaseKeeper) -> None:
        self.etcd = etcd
        self.keys = keys
        self.keeper = keeper
        self.budget = keeper.budget

    # -- transactions ------------------------------------------------------------------------------

    async def _write(
        self,
        compare: Sequence[Any],
        success: Sequence[Any],
        failure: Sequence[Any],
        written: Mapping[bytes, bytes | None],
        budget: float | None = None,
    ) -> TxnResult | None:
        """One transaction, retried until it is known to have run.  ``written`` says what its
        success branch leaves (key -> value, None: deleted): when a try fails in flight those
        keys are read back, and if they hold it the transaction ran (then None is returned: its
        answer is unknown).  Raises BackendError, LeaseNotFound."""
        deadline = time.monotonic() + (budget or self.budget)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackendError(f"etcd did not answer in {budget or self.budget:g} s")
            try:
                return await self.etcd.txn(compare, success, failure, timeout=left)
            except Uncertain:
                pass
            except LeaseNotFound:
                raise
            except EtcdError as e:
                raise BackendError(f"etcd refused the transaction: {e}") from None
            try:
                found = {}
                for key in written:
                    rows = await self.etcd.range(key, budget=max(0.01, deadline - time.monotonic()))
                    found[key] = rows[0].value if rows else None
            except EtcdError:
                continue
            if found == dict(written):
                return None

    async def _read(self, key: bytes, range_end: bytes | None = None) -> list[KV]:
        try:
            return await self.etcd.range(key, range_end, self.budget)
        except EtcdError as e:
            raise BackendError(f"etcd did not answer: {e}") from None

    async def _with_lease(
        self, attempt: Callable[[HostLease], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """Run ``attempt`` with the host's lease; if etcd no longer knows that lease, it is lost
        (its supervisors hear so) and the attempt runs once more on a new one."""
        for _ in range(2):
            lease = await self.keeper.current()
            try:
                return await attempt(lease)
            except LeaseNotFound:
                self.keeper.lose(lease, "etcd no longer knows it (it expired)")
        raise BackendError("this host's etcd lease keeps expiring")

    # -- operations --------------------------------------------------------------------------------

    async def acquire(self, party: Party, key: str, mode: str, resource: str) -> dict[str, Any]:
        """Take lease ``key`` for ``party``.  Raises LeaseConflict naming the holder."""
        if key in party.owned:
            raise InvalidArgument(f"lease {key} is already held or reserved on this connection")
        base, x, r = self.keys.dir(key), self.keys.exclusive(key), self.keys.reservation(key)
        mine = holder_value(party.who, mode, resource)
        target = x if mode == "exclusive" else self.keys.shared(key, party.sid)

        async def attempt(lease: HostLease) -> dict[str, Any]:
            if mode == "exclusive":  # nothing at all under the lease's directory
                compare = [create(base, 0, prefix_end(base))]
            else:  # no exclusive holder, no reservation
                compare = [create(x, 0), create(r, 0)]
            result = await self._write(
                compare,
                [put(target, mine, lease.id), get(target)],
                [get(base, prefix_end(base))],
                {target: mine},
            )
            if result is not None and not result.succeeded:
                raise self._conflict(resource, base, result.ranges[0])
            rows = result.ranges[0] if result is not None else await self._read(target)
            owned = Owned(mode, resource)
            owned.held, owned.lease = mine, lease.id
            party.owned[key] = owned
            return {
                "lease": lease.id,
                "valid_until": lease.valid_until,
                "revision": rows[0].create if rows else None,
            }

        return await self._with_lease(attempt)

    def _kinds(self, base: bytes, rows: list[KV]) -> dict[str, KV]:
        """The rows under a lease's directory by kind: "x", "r", "s" (the first shared one)."""
        found: dict[str, KV] = {}
        for kv in rows:
            found.setdefault(self.keys.kind_in(base, kv.key), kv)
        return found

    def _conflict(self, resource: str, base: bytes, rows: list[KV]) -> LeaseConflict:
        """Why an acquire was refused, naming the holder the rows show."""
        kinds = self._kinds(base, rows)
        for kind, how in (("x", "held by"), ("r", "reserved by"), ("s", "shared by")):
            if kind in kinds:
                data = kinds[kind].value
                holder = describe(data)
                if kind == "x" and is_marker(data):
                    how = "handed off to"
                return LeaseConflict(f"{resource} is {how} {holder} (etcd)", resource, holder)
        return LeaseConflict(f"{resource} was held by another holder a moment ago (etcd)", resource)

    async def reserve(self, party: Party, key: str, mode: str, resource: str) -> dict[str, Any]:
        """Put ``party``'s reservation on lease ``key``.  Raises LeaseConflict if another
        migration reserves it."""
        if key in party.owned:
            raise InvalidArgument(f"lease {key} is already held or reserved on this connection")
        base, r = self.keys.dir(key), self.keys.reservation(key)
        mine = reservation_value(party.who, mode, resource)

        async def attempt(lease: HostLease) -> dict[str, Any]:
            result = await self._write(
                [create(r, 0)], [put(r, mine, lease.id)], [get(base, prefix_end(base))], {r: mine}
            )
            if result is not None and not result.succeeded:
                raise self._conflict(resource, base, [kv for kv in result.ranges[0] if kv.key == r])
            owned = Owned(mode, resource)
            owned.reserved = owned.rvalue = mine
            owned.lease = lease.id
            party.owned[key] = owned
            return {"lease": lease.id}

        return await self._with_lease(attempt)

    async def take_over(self, party: Party, wanted: Any) -> dict[str, Any]:
        """One transaction: every reserved lease of ``wanted`` (``[{"key", "version"}]``) moves
        to ``party``, each only if its exclusive key is the source's, handed off to our
        reservation, at the cookie's create revision.  Raises LeaseConflict (final when it can
        never succeed), InvalidArgument."""
        if not isinstance(wanted, list) or not wanted or len(wanted) > 40:
            raise InvalidArgument("take_over needs 1 to 40 leases")
        plan: list[tuple[str, Owned, int | None]] = []
        for item in wanted:
            key = item.get("key") if isinstance(item, dict) else None
            owned = party.owned.get(key) if isinstance(key, str) else None
            if owned is None or owned.reserved is None:
                raise InvalidArgument(f"lease {key!r} is not reserved on this connection")
            version = item.get("version")
            plan.append((str(key), owned, int(version) if isinstance(version, int) else None))

        async def attempt(lease: HostLease) -> dict[str, Any]:
            compare, success, failure = [], [], []
            written: dict[bytes, bytes | None] = {}
            mine: dict[str, bytes] = {}
            for key, owned, version in plan:
                base, x, r = (
                    self.keys.dir(key),
                    self.keys.exclusive(key),
                    self.keys.reservation(key),
                )
                assert owned.reserved is not None
                mine[key] = holder_value(party.who, owned.mode, owned.resource)
                compare.append(value(r, owned.reserved))
                if owned.mode == "exclusive":
                    compare.append(value(x, marker(owned.reserved)))
                    if version is not None:
                        compare.append(create(x, version))
                    target = x
                else:
                    compare.append(create(x, 0))
                    target = self.keys.shared(key, party.sid)
                success += [put(target, mine[key], lease.id), delete(r), get(target)]
                failure.append(get(base, prefix_end(base)))
                written[target] = mine[key]
            result = await self._write(compare, success, failure, written)
            if result is not None and not result.succeeded:
                refused = self._take_over_refused(plan, result.ranges)
                if refused.final:
                    raise refused
                watch = [self.keys.exclusive(k) for k, _, _ in plan]
                raise WaitingConflict(refused, watch, result.revision + 1)
            revisions = {}
            for i, (key, owned, _) in enumerate(plan):
                rows = result.ranges[i] if result is not None else []
                revisions[key] = rows[0].create if rows else None
                owned.held, owned.reserved, owned.lease = mine[key], None, lease.id
            return {"lease": lease.id, "valid_until": lease.valid_until, "revisions": revisions}

        return await self._with_lease(attempt)

    def _take_over_refused(
        self, plan: list[tuple[str, Owned, int | None]], ranges: list[list[KV]]
    ) -> LeaseConflict:
        """Why a take-over failed: waiting helps while a source still holds a lease; nothing
        helps (final) once a lease changed hands, vanished, or our reservation did."""
        waiting: LeaseConflict | None = None
        for (key, owned, version), rows in zip(plan, ranges, strict=True):
            base = self.keys.dir(key)
            found = self._kinds(base, rows)
            resource = owned.resource
            r, x = found.get("r"), found.get("x")
            assert owned.reserved is not None
            if r is None or r.value != owned.reserved:
                return LeaseConflict(
                    f"{resource}: this migration's reservation is gone (its etcd lease expired)",
                    resource,
                    final=True,
                )
            if owned.mode == "shared":
                if x is not None and waiting is None:
                    waiting = self._conflict(resource, base, [x])
                continue
            if x is None:
                return LeaseConflict(
                    f"{resource}: the source no longer holds the lease and did not hand it off "
                    "(its host's etcd lease expired, or it was released without a reservation)",
                    resource,
                    final=True,
                )
            if version is not None and x.create != version:
                return LeaseConflict(
                    f"{resource}: the lease changed hands since the source prepared the migration"
                    f" (create revision {x.create}, the handoff expected {version}); now "
                    f"{describe(x.value)}",
                    resource,
                    describe(x.value),
                    final=True,
                )
            if x.value == marker(owned.reserved):
                continue
            if is_marker(x.value):
                return LeaseConflict(
                    f"{resource} was handed off to another migration: {describe(x.value)}",
                    resource,
                    describe(x.value),
                    final=True,
                )
            if waiting is None:
                waiting = self._conflict(resource, base, [x])
        return waiting or LeaseConflict("the take-over raced with another change; try again")

    async def release(self, party: Party, key: str, budget: float | None = None) -> None:
        """Give back what ``party`` has of lease ``key`` (see :meth:`release_many`)."""
        await self.release_many(party, [key], budget)

    async def release_many(
        self, party: Party, keys: list[str], budget: float | None = None
    ) -> None:
        """Give back what ``party`` has of ``keys`` -- held keys, reservations and keys handed
        off to them -- in one transaction: an exclusive key that a migration target reserves
        is handed off to it (a marker on the target's etcd lease that only its take-over
        matches), as the fcntl gate makes a lease given up while reserved the target's.  A
        read of the reservations comes first, unless a ``peek`` or a followed migration
        (:meth:`follow`) says what is there; a key whose reservation changed between them is
        tried again.  Each key is forgotten only once etcd did it, so that what is left behind
        is tried again when the party goes.  Raises BackendError."""
        pending = {k: party.owned[k] for k in keys if k in party.owned}
        deadline = time.monotonic() + (budget or self.budget)
        known = self._peeked(party, sorted(pending))
        if party.followed is not None and any(k in party.followed for k in keys):
            self.unfollow(party)  # the handoff (or a stop) is under way: nothing more to follow
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackendError(f"etcd did not take the release of {sorted(pending)} in time")
            try:
                await self._release_once(party, pending, left, known)
            except (Uncertain, LeaseNotFound):
                continue  # read back, then decide again
            except EtcdError as e:
                raise BackendError(f"etcd refused the release: {e}") from None
            finally:
                known = None  # a second try reads for itself

    async def peek(self, party: Party, keys: list[str]) -> None:
        """Read, for a release that is coming (the guest is being killed), the keys and the
        reservations it must look at.  Raises BackendError."""
        keys = sorted(k for k in keys if k in party.owned)
        followed = party.followed
        if keys and (followed is None or any(k not in followed for k in keys)):
            try:  # never longer than its rows would be of use (requests wait behind it)
                rows, _ = await self._look(keys, PEEK_FRESH / 2)
            except EtcdError as e:
                raise BackendError(f"etcd did not answer: {e}") from None
            party.peeked = (time.monotonic(), rows)

    async def follow(self, party: Party, keys: list[str]) -> None:
        """A migration is prepared: read what the release of ``keys`` (the handoff) must look
        at, and keep it up to date with an etcd watch until the release (or :meth:`unfollow`),
        so that the release is one transaction whenever it comes, however soon the guest dies.
        No keys: stop following.  Raises BackendError (nothing is followed then)."""
        self.unfollow(party)
        keys = sorted(k for k in keys if k in party.owned)
        if not keys:
            return
        try:
            rows, revision = await self._look(keys, self.budget)
        except EtcdError as e:
            raise BackendError(f"etcd did not answer: {e}") from None
        view = dict(rows)
        party.followed = view
        party.follower = asyncio.get_running_loop().create_task(
            self._keep(party, view, revision + 1)
        )

    def unfollow(self, party: Party) -> None:
        """Stop keeping ``party``'s rows up to date (they are forgotten)."""
        task, party.follower, party.followed = party.follower, None, None
        if task is not None:
            task.cancel()

    async def _keep(
        self, party: Party, view: dict[str, tuple[list[KV], list[KV]]], revision: int
    ) -> None:
        """Apply every change of the followed keys from ``revision`` on to ``view``; when the
        watch fails, the view is dropped (the release then reads for itself)."""
        where = {self.keys.exclusive(k): (k, 0) for k in view}
        where.update({self.keys.reservation(k): (k, 1) for k in view})

        def changed(key: bytes, row: KV | None) -> None:
            name, which = where[key]
            x, r = view[name]
            now = [row] if row is not None else []
            view[name] = (now, r) if which == 0 else (x, now)

        try:
            await self.etcd.follow(list(where), revision, changed, self.budget)
        except EtcdError as e:
            log.info("the reservations of a prepared migration are no longer followed: %s", e)
        finally:
            if party.followed is view:
                party.followed, party.follower = None, None

    def _peeked(self, party: Party, keys: list[str]) -> dict[str, tuple[list[KV], list[KV]]] | None:
        """What a recent ``peek`` read of every one of ``keys``, once, or the followed rows of
        a prepared migration; else None."""
        peeked, party.peeked = party.peeked, None
        followed = party.followed
        if followed is not None and all(k in followed for k in keys):
            return {k: followed[k] for k in keys}
        if peeked is None or time.monotonic() - peeked[0] > PEEK_FRESH:
            return None
        rows = peeked[1]
        return rows if all(k in rows for k in keys) else None

    async def _look(
        self, keys: list[str], timeout: float
    ) -> tuple[dict[str, tuple[list[KV], list[KV]]], int]:
        """Each key's exclusive key and reservation, in one read, and the revision read at."""
        reads = [get(self.keys.exclusive(k)) for k in keys]
        reads += [get(self.keys.reservation(k)) for k in keys]
        now = await self.etcd.txn([], reads, timeout=timeout, idempotent=True)
        n = len(keys)
        return {k: (now.ranges[i], now.ranges[n + i]) for i, k in enumerate(keys)}, now.revision

    async def _release_once(
        self,
        party: Party,
        pending: dict[str, Owned],
        timeout: float,
        known: dict[str, tuple[list[KV], list[KV]]] | None = None,
    ) -> None:
        """One transaction, after one read unless ``known`` (a ``peek``'s rows) says what is
        there: every choice made on those rows is also a compare of the transaction, so rows
        that are out of date only fail the compare and the next try reads (a key they show as
        not ours any more is left to that try too).  What is done leaves ``pending``."""
        keys = sorted(pending)
        rows = known if known is not None else (await self._look(keys, timeout))[0]
        xs = {k: rows[k][0] for k in keys}
        rs = {k: rows[k][1] for k in keys}
        ops: list[Any] = []
        order: list[str | None] = []
        handed: dict[str, bytes] = {}  # key -> the reservation it is handed off to
        for key in keys:
            owned = pending[key]
            x, r = self.keys.exclusive(key), self.keys.reservation(key)
            if owned.reserved is not None:  # our reservation, and a key handed off to it
                ops.append(nested([value(r, owned.reserved)], [delete(r)]))
                ops.append(nested([value(x, marker(owned.reserved))], [delete(x)]))
                order += [None, None]
            if owned.held is None:
                continue
            if owned.mode == "shared":
                s = self.keys.shared(key, party.sid)
                ops.append(nested([value(s, owned.held)], [delete(s)]))
            elif not xs[key] or xs[key][0].value != owned.held:
                if known is not None:
                    continue  # only a peek's rows say so: the next try reads afresh
                owned.held = None  # not ours any more: nothing to give back
                continue
            elif rs[key]:
                res = rs[key][0]
                compare = [value(x, owned.held), value(r, res.value), lease_is(r, res.lease)]
                ops.append(nested(compare, [put(x, marker(res.value), res.lease)]))
                handed[key] = res.value
                trace.emit("service_note", label=owned.resource, note="x := handoff marker")
            else:
                ops.append(nested([value(x, owned.held), create(r, 0)], [delete(x)]))
            order.append(key)
        if ops:
            result = await self.etcd.txn([], ops, timeout=timeout)
            for which, done in zip(order, result.nested, strict=True):
                if which is not None and done:
                    pending[which].held = None
            given = [k for k in handed if pending[k].held is None]
            if given:  # one line for the handoff, after it (not on the way to etcd)
                log.info(
                    "handed off to %s: %s",
                    describe(handed[given[0]]),
                    ", ".join(pending[k].resource for k in given),
                )
        for key in keys:
            pending[key].reserved = None  # deleted if it was still ours
        for key in keys:  # a nested compare that failed: read again, try again
            if pending[key].held is None and pending[key].reserved is None:
                party.owned.pop(key, None)
                del pending[key]

    async def adopt(self, party: Party, wanted: Any, host: str) -> dict[str, Any]:
        """Take up, for a reconnected ``party``, the keys it owned through the previous agent of
        this host: ``wanted`` is ``[{"key", "mode", "state": "held" | "reserved"}]``.  Each key
        must be in etcd, on this host's current lease, with a value naming this supervisor
        (its pid and launch).  All or nothing.  Raises BackendError naming a key that is not
        (the supervisor must then treat its leases as lost), InvalidArgument."""
        if not isinstance(wanted, list) or len(wanted) > 64:
            raise InvalidArgument("adopt needs a list of at most 64 leases")
        lease = await self.keeper.current()
        found: dict[str, Owned] = {}
        revisions: dict[str, int] = {}
        for item in wanted:
            key, mode, _ = lease_request(item if isinstance(item, dict) else {})
            state = item.get("state")
            base = self.keys.dir(key)
            if state == "held":
                target = (
                    self.keys.exclusive(key)
                    if mode == "exclusive"
                    else self.keys.shared(key, party.sid)
                )
            elif state == "reserved":
                target = self.keys.reservation(key)
            else:
                raise InvalidArgument(f"lease {key}: state {state!r} is neither held nor reserved")
            rows = [kv for kv in await self._read(base, prefix_end(base)) if kv.key == target]
            if not rows or rows[0].lease != lease.id or not _names(rows[0].value, party, host):
                raise BackendError(
                    f"lease {key} is no longer this supervisor's on etcd lease {lease.id:x}: "
                    "its keys went with an expired lease, or were taken"
                )
            owned = Owned(mode, _resource(rows[0].value, key))
            owned.lease = lease.id
            if state == "held":
                owned.held = rows[0].value
                revisions[key] = rows[0].create
            else:
                owned.reserved = owned.rvalue = rows[0].value
            found[key] = owned
        party.owned.update(found)
        return {"lease": lease.id, "valid_until": lease.valid_until, "revisions": revisions}

    async def sweep(self, lease_id: int, keep: set[bytes]) -> int:
        """Delete every key on etcd lease ``lease_id`` except those of ``keep`` (each only if it
        is still on that lease); how many went.  A key handed off to a reservation lives on the
        target's lease and is not touched."""
        gone = 0
        for kv in await self._read(self.keys.root, prefix_end(self.keys.root)):
            if kv.lease != lease_id or kv.key in keep:
                continue
            result = await self._write(
                [lease_is(kv.key, lease_id), value(kv.key, kv.value)], [delete(kv.key)], [], {}
            )
            gone += result is None or result.succeeded
        return gone

    async def register(self, host: str, lease: HostLease, margin: float) -> None:
        """Put this host's registration on its lease (its liveness for the other hosts: the
        lease's id and the timing by which its guests stop when it is lost), and its membership
        (which stays when the host dies, so that it is seen dead rather than unknown)."""
        data = json.dumps(
            {"host": host, "lease": lease.id, "ttl": lease.ttl, "fence_margin": margin},
            sort_keys=True,
        ).encode()
        key, member = self.keys.host(host), self.keys.member(host)
        await self._write(
            [], [put(key, data, lease.id), put(member, data)], [], {key: data, member: data}
        )

    async def hosts(self) -> list[tuple[str, dict[str, Any] | None]]:
        """(name, its registration or None: its lease is gone) of every host that joined."""
        members = await self._read(self.keys.members, prefix_end(self.keys.members))
        alive = await self._read(self.keys.hosts, prefix_end(self.keys.hosts))
        now = {kv.key[len(self.keys.hosts) :].decode(errors="replace"): kv for kv in alive}
        rows: list[tuple[str, dict[str, Any] | None]] = []
        for kv in members:
            name = kv.key[len(self.keys.members) :].decode(errors="replace")
            try:
                registration = json.loads(now[name].value) if name in now else None
            except ValueError:
                registration = {}
            rows.append((name, registration))
        return rows

    async def wait_free(self, keys: list[str], timeout: float) -> dict[str, Any]:
        """Wait until none of lease ``keys`` has any holder or reservation (each directory is
        empty), waking on an etcd watch; ``{"free": true, "revision": n}``, or the holders left
        when ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            reads = [get(self.keys.dir(k), prefix_end(self.keys.dir(k))) for k in keys]
            now = await self.etcd.txn([], reads, timeout=self.budget, idempotent=True)
            left = [kv for rows in now.ranges for kv in rows]
            if not left:
                return {"free": True, "revision": now.revision}
            rest = deadline - time.monotonic()
            if rest <= 0:
                return {
                    "free": False,
                    "held": [
                        {"key": self.keys.parse(kv.key)[0], "holder": describe(kv.value)}
                        for kv in left
                    ],
                }
            await self.etcd.wait_change([kv.key for kv in left], now.revision + 1, rest)

    async def holders(self) -> list[dict[str, Any]]:
        """Every key of the lockspace, across all hosts."""
        rows = []
        for kv in await self._read(self.keys.root, prefix_end(self.keys.root)):
            key, kind = self.keys.parse(kv.key)
            if kind == "exclusive" and is_marker(kv.value):
                kind = "handed-off"
            try:
                holder = json.loads(kv.value)
            except ValueError:
                holder = None
            rows.append(
                {
                    "key": key,
                    "kind": kind,
                    "holder": holder,
                    "create_revision": kv.create,
                    "lease": kv.lease,
                }
            )
        return rows


def _names(data: bytes, party: Party, host: str) -> bool:
    """Whether a key's value names ``party`` (its pid on this host, and its launch if known)."""
    try:
        obj = json.loads(data)
    except ValueError:
        return False
    if (
        not isinstance(obj, dict)
        or obj.get("pid") != party.who.get("pid")
        or obj.get("host") != host
    ):
        return False
    return "launch" not in party.who or obj.get("launch") == party.who["launch"]


def _resource(data: bytes, default: str) -> str:
    try:
        obj = json.loads(data)
    except ValueError:
        return default
    return str(obj.get("resource") or default) if isinstance(obj, dict) else default
