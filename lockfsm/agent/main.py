"""``lockfsm-etcd-agent``: the per-host lease agent of the etcd backend.

One per host, started with the host's lockfsm configuration file (``lockfsm-etcd-agent
/etc/lockfsm/etcd.toml``).  It holds the host's one connection to etcd (every member an
endpoint, see lockfsm/etcd_client.py) and the host's one etcd lease, and serves the host's
supervisors on a Unix socket (mode 0600, peer uid checked; JSON lines, one request at a time per
connection, each answered within a few seconds).  Why an agent and not each supervisor, and
the fencing timeline: specs/PROTOCOL.md, "The etcd backend".

The lease.  Granted at start, kept alive every TTL/3.  Each keepalive's *send* time ``t``
proves the lease alive until ``t + TTL`` on etcd's side (the leader starts the TTL when the
request arrives, after ``t``); the agent pushes ``t + TTL - fence_margin`` ("valid until", on
this host's monotonic clock) to every supervisor.  A supervisor that reaches that instant
without a newer one stops its guest.  The agent gives the lease up for good at the same
instant if no keepalive succeeded meanwhile (a late answer, even an OK, is never used: a lease
can come back to life after etcd's quorum returns), pushes "lost", revokes the old lease once
etcd's own TTL would have run out, and grants a new one for new requests.

Requests (``{"id": n, "op": ...}``): ``hello``, ``acquire``, ``reserve``, ``take_over``,
``revert``, ``release``, ``holders``, ``status``.  Each is one etcd transaction (a release of a
reserved lease two: read the reservation, then hand the key to it).  A transaction that failed
in flight may have been applied: the agent reads the keys back before it answers or retries.
When a supervisor's connection closes (supervisor and guest dead: the guest inherits it), the
agent releases everything that connection held, at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from lockfsm.backends import etcd as backend
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
from lockfsm.daemon import config as configuration
from lockfsm.errors import BackendError, InvalidArgument, LeaseConflict, LockFSMError
from lockfsm.protocol import wire

_WHO = ("name", "uuid", "launch", "migration")
_RETRY = 0.1  # pause after a failed keepalive before the next try


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"{stamp} lockfsm-etcd-agent[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def _short(error: BaseException) -> str:
    """The first line of an error, at most 200 characters (gRPC's are long)."""
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__


def _json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def marker(reservation: bytes) -> bytes:
    """The value of an exclusive key handed off to the holder of ``reservation``: only that
    holder's take-over can match it, and only it can be built from the reservation's bytes."""
    return b'{"handed_off_to":' + reservation + b"}"


def describe(data: bytes) -> str:
    """Who a key's value names, for messages."""
    try:
        obj = json.loads(data)
    except ValueError:
        return "an unknown holder"
    if not isinstance(obj, dict):
        return "an unknown holder"
    if "handed_off_to" in obj:
        inner = obj["handed_off_to"]
        return "an incoming migration" + (f" ({_who(inner)})" if isinstance(inner, dict) else "")
    if obj.get("reserved"):
        return f"an incoming migration ({_who(obj)})"
    return _who(obj)


def _who(obj: Mapping[str, Any]) -> str:
    name = f"domain {obj['name']!r}" if obj.get("name") else "a supervisor"
    details = [f"uuid {obj['uuid']}"] if obj.get("uuid") else []
    details.append(f"supervisor pid {obj.get('pid')}")
    return f"{name} ({', '.join(details)}) on host {obj.get('host', '?')}"


class HostLease:
    """One etcd lease of this host."""

    __slots__ = ("id", "lost", "sent", "ttl", "valid_until")

    def __init__(self, lease_id: int, ttl: int, sent: float, margin: float) -> None:
        self.id = lease_id
        self.ttl = ttl
        self.sent = sent  # monotonic send time of the last successful grant or keepalive
        self.valid_until = sent + ttl - margin
        self.lost: str | None = None


class Owned:
    """What one connection has written for one lease key."""

    __slots__ = ("held", "lease", "mode", "reserved", "resource", "rvalue")

    def __init__(self, mode: str, resource: str) -> None:
        self.mode = mode
        self.resource = resource
        self.held: bytes | None = None  # our value of x (exclusive) or s/<id> (shared)
        self.reserved: bytes | None = None  # our reservation r, while it is in etcd
        self.rvalue: bytes | None = None  # the reservation's value (kept for a revert)
        self.lease = 0


class Conn:
    """One supervisor's connection."""

    def __init__(self, writer: asyncio.StreamWriter, pid: int, host: str) -> None:
        self.writer = writer
        self.pid = pid
        self.who: dict[str, Any] = {"pid": pid, "host": host}
        self.sid = f"{host}.{pid}"
        self.owned: dict[str, Owned] = {}

    def send(self, message: Mapping[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(wire.encode(message))


class Agent:
    def __init__(self, conf: Mapping[str, Any]) -> None:
        self.settings = backend.agent_settings(conf)
        self.host: str = conf["host_name"]
        self.ttl: int = conf["ttl"]
        self.margin = backend.fence_margin(conf)
        self.prefix: bytes = str(conf["prefix"]).encode()
        self.path = backend.agent_socket(conf)
        self.try_timeout = min(1.0, self.ttl / 4)
        self.budget = 3 * self.try_timeout
        self.etcd = Etcd([backend.parse_endpoint(e) for e in conf["endpoints"]], self.try_timeout)
        self.lease: HostLease | None = None
        self.lease_ready = asyncio.Event()
        self.conns: set[Conn] = set()
        self.stopping = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()

    # -- keys -------------------------------------------------------------------------------------

    def dir(self, key: str) -> bytes:
        if not wire.LEASE_KEY.fullmatch(key):
            raise InvalidArgument(f"lease key {key!r} is malformed")
        return self.prefix + b"L/" + key.encode() + b"/"

    def _holder_value(self, conn: Conn, mode: str, resource: str) -> bytes:
        return _json(
            {**conn.who, "mode": mode, "resource": resource, "nonce": secrets.token_hex(6)}
        )

    def _reservation_value(self, conn: Conn, mode: str, resource: str) -> bytes:
        return _json(
            {
                **conn.who,
                "reserved": True,
                "mode": mode,
                "resource": resource,
                "nonce": secrets.token_hex(6),
            }
        )

    # -- the host's etcd lease --------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _push_all(self, message: Mapping[str, Any]) -> None:
        for conn in list(self.conns):
            conn.send(message)

    async def _grant(self) -> None:
        while not self.stopping.is_set():
            sent = time.monotonic()
            try:
                lease_id, granted = await self.etcd.grant(self.ttl, self.budget)
            except EtcdError as e:
                log(f"cannot get an etcd lease yet: {_short(e)}")
                await asyncio.sleep(_RETRY)
                continue
            # etcd may raise a short TTL to its minimum, never lower it: ours is the bound.
            lease = HostLease(lease_id, min(granted, self.ttl), sent, self.margin)
            self.lease = lease
            self.lease_ready.set()
            log(f"etcd lease {lease_id:x} granted (TTL {lease.ttl} s) via {self.etcd.endpoint}")
            self._push_all({"push": "valid", "lease": lease.id, "valid_until": lease.valid_until})
            return

    def _lose(self, lease: HostLease, why: str) -> None:
        """Give ``lease`` up for good: every supervisor hears it, no request uses it again, and
        it is revoked once etcd's own TTL would have run out (in case it came back to life)."""
        if lease.lost is not None:
            return
        lease.lost = why
        if self.lease is lease:
            self.lease = None
            self.lease_ready.clear()
        log(f"etcd lease {lease.id:x} lost: {why}")
        self._push_all({"push": "lost", "lease": lease.id, "reason": why})
        self._spawn(self._revoke_later(lease))

    async def _revoke_later(self, lease: HostLease) -> None:
        await asyncio.sleep(max(0.0, lease.sent + lease.ttl - time.monotonic()))
        for _ in range(100):
            try:
                await self.etcd.revoke(lease.id, self.budget)
                log(f"etcd lease {lease.id:x} revoked")
                return
            except EtcdError:
                await asyncio.sleep(self.ttl / 3)

    async def keepalive(self) -> None:
        """Keep the host's lease alive every TTL/3 (after a failure, every 0.1 s on the next
        member), and give it up at the local deadline."""
        interval = self.ttl / 3
        failures = 0
        retry_at = 0.0
        while not self.stopping.is_set():
            lease = self.lease
            if lease is None:
                await self._grant()
                failures = 0
                continue
            now = time.monotonic()
            if now >= lease.valid_until:
                self._lose(lease, "no keepalive succeeded before the local deadline")
                continue
            due = retry_at if failures else lease.sent + interval
            if now < due:
                await asyncio.sleep(min(due, lease.valid_until) - now)
                continue
            sent = time.monotonic()
            # Room for several tries before the deadline: a member that hangs (it lost its
            # leader, or stopped) costs one try, then the next member is asked.
            limit = min(self.try_timeout, max(0.05, (lease.valid_until - sent) / 3))
            try:
                ttl = await self.etcd.keepalive(lease.id, min(limit, 0.3) if failures else limit)
            except EtcdError as e:
                if not failures:
                    log(f"keepalive of {lease.id:x} failed, retrying: {_short(e)}")
                failures += 1
                retry_at = time.monotonic() + _RETRY
                continue
            if lease.lost is not None:
                continue  # given up meanwhile (etcd no longer knew it): never renewed again
            if time.monotonic() >= lease.valid_until:  # too late: never resume on it
                self._lose(lease, "the keepalive answer came after the local deadline")
                continue
            if ttl <= 0:
                self._lose(lease, "etcd says the lease has expired")
                continue
            if failures:
                log(
                    f"keepalive of {lease.id:x} succeeds again via {self.etcd.endpoint} after "
                    f"{failures} failed tries, {sent - lease.sent:.2f} s after the last success"
                )
            failures = 0
            lease.sent = sent
            lease.valid_until = sent + min(ttl, self.ttl) - self.margin
            self._push_all({"push": "valid", "lease": lease.id, "valid_until": lease.valid_until})

    async def _current(self) -> HostLease:
        """The host's lease, valid now; waits a little for one.  Raises BackendError."""
        try:
            await asyncio.wait_for(self.lease_ready.wait(), self.budget)
        except TimeoutError:
            raise BackendError("this host has no etcd lease: etcd does not answer") from None
        lease = self.lease
        if lease is None or time.monotonic() >= lease.valid_until:
            raise BackendError("this host's etcd lease cannot be proven alive now")
        return lease

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
            lease = await self._current()
            try:
                return await attempt(lease)
            except LeaseNotFound:
                self._lose(lease, "etcd no longer knows it (it expired)")
        raise BackendError("this host's etcd lease keeps expiring")

    # -- requests ----------------------------------------------------------------------------------

    async def op_hello(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        who = req.get("who")
        if isinstance(who, dict):
            for k in _WHO:
                if isinstance(who.get(k), str):
                    conn.who[k] = who[k][:256]
        lease = self.lease
        return {
            "host": self.host,
            "settings": self.settings,
            "lease": lease.id if lease else None,
            "valid_until": lease.valid_until if lease else None,
        }

    def _owned(self, conn: Conn, req: Mapping[str, Any]) -> tuple[str, str, str]:
        key, mode, resource = req.get("key"), req.get("mode"), req.get("resource", "")
        if not isinstance(key, str) or mode not in ("exclusive", "shared"):
            raise InvalidArgument("a lease needs a key and a mode")
        return key, str(mode), wire.check_text(resource or key, "resource", 4096)

    async def op_acquire(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        key, mode, resource = self._owned(conn, req)
        if key in conn.owned:
            raise InvalidArgument(f"lease {key} is already held or reserved on this connection")
        base = self.dir(key)
        mine = self._holder_value(conn, mode, resource)
        target = base + b"x" if mode == "exclusive" else base + b"s/" + conn.sid.encode()

        async def attempt(lease: HostLease) -> dict[str, Any]:
            if mode == "exclusive":  # nothing at all under the lease's directory
                compare = [create(base, 0, prefix_end(base))]
            else:  # no exclusive holder, no reservation
                compare = [create(base + b"x", 0), create(base + b"r", 0)]
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
            conn.owned[key] = owned
            return {
                "lease": lease.id,
                "valid_until": lease.valid_until,
                "revision": rows[0].create if rows else None,
            }

        return await self._with_lease(attempt)

    @staticmethod
    def _kinds(base: bytes, rows: list[KV]) -> dict[str, KV]:
        """The rows under a lease's directory by kind: "x", "r", "s" (the first shared one)."""
        found: dict[str, KV] = {}
        for kv in rows:
            rel = kv.key[len(base) :]
            found.setdefault("s" if rel.startswith(b"s/") else rel.decode(errors="replace"), kv)
        return found

    def _conflict(self, resource: str, base: bytes, rows: list[KV]) -> LeaseConflict:
        """Why an acquire was refused, naming the holder the rows show."""
        kinds = self._kinds(base, rows)
        for kind, how in (("x", "held by"), ("r", "reserved by"), ("s", "shared by")):
            if kind in kinds:
                data = kinds[kind].value
                holder = describe(data)
                if kind == "x" and data.startswith(b'{"handed_off_to":'):
                    how = "handed off to"
                return LeaseConflict(f"{resource} is {how} {holder} (etcd)", resource, holder)
        return LeaseConflict(f"{resource} was held by another holder a moment ago (etcd)", resource)

    async def op_reserve(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        key, mode, resource = self._owned(conn, req)
        if key in conn.owned:
            raise InvalidArgument(f"lease {key} is already held or reserved on this connection")
        base = self.dir(key)
        mine = self._reservation_value(conn, mode, resource)

        async def attempt(lease: HostLease) -> dict[str, Any]:
            result = await self._write(
                [create(base + b"r", 0)],
                [put(base + b"r", mine, lease.id)],
                [get(base, prefix_end(base))],
                {base + b"r": mine},
            )
            if result is not None and not result.succeeded:
                raise self._conflict(
                    resource, base, [kv for kv in result.ranges[0] if kv.key == base + b"r"]
                )
            owned = Owned(mode, resource)
            owned.reserved = owned.rvalue = mine
            owned.lease = lease.id
            conn.owned[key] = owned
            return {"lease": lease.id}

        return await self._with_lease(attempt)

    async def op_take_over(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        """One transaction: every reserved lease moves to us, each only if its exclusive key is
        the source's, handed off to our reservation, at the cookie's create revision."""
        wanted = req.get("leases")
        if not isinstance(wanted, list) or not wanted or len(wanted) > 40:
            raise InvalidArgument("take_over needs 1 to 40 leases")
        plan: list[tuple[str, Owned, int | None]] = []
        for item in wanted:
            key = item.get("key") if isinstance(item, dict) else None
            owned = conn.owned.get(key) if isinstance(key, str) else None
            if owned is None or owned.reserved is None:
                raise InvalidArgument(f"lease {key!r} is not reserved on this connection")
            version = item.get("version")
            plan.append((str(key), owned, int(version) if isinstance(version, int) else None))

        async def attempt(lease: HostLease) -> dict[str, Any]:
            compare, success, failure = [], [], []
            written: dict[bytes, bytes | None] = {}
            mine: dict[str, bytes] = {}
            for key, owned, version in plan:
                base = self.dir(key)
                assert owned.reserved is not None
                mine[key] = self._holder_value(conn, owned.mode, owned.resource)
                compare.append(value(base + b"r", owned.reserved))
                if owned.mode == "exclusive":
                    compare.append(value(base + b"x", marker(owned.reserved)))
                    if version is not None:
                        compare.append(create(base + b"x", version))
                    target = base + b"x"
                else:
                    compare.append(create(base + b"x", 0))
                    target = base + b"s/" + conn.sid.encode()
                success += [put(target, mine[key], lease.id), delete(base + b"r"), get(target)]
                failure.append(get(base, prefix_end(base)))
                written[target] = mine[key]
            result = await self._write(compare, success, failure, written)
            if result is not None and not result.succeeded:
                raise self._take_over_refused(conn, plan, result.ranges)
            revisions = {}
            for i, (key, owned, _) in enumerate(plan):
                rows = result.ranges[i] if result is not None else []
                revisions[key] = rows[0].create if rows else None
                owned.held, owned.reserved, owned.lease = mine[key], None, lease.id
            return {"lease": lease.id, "valid_until": lease.valid_until, "revisions": revisions}

        return await self._with_lease(attempt)

    def _take_over_refused(
        self, conn: Conn, plan: list[tuple[str, Owned, int | None]], ranges: list[list[KV]]
    ) -> LeaseConflict:
        """Why a take-over failed: waiting helps while a source still holds a lease; nothing
        helps (final) once a lease changed hands, vanished, or our reservation did."""
        waiting: LeaseConflict | None = None
        for (key, owned, version), rows in zip(plan, ranges, strict=True):
            base = self.dir(key)
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
            if b"handed_off_to" in x.value:
                return LeaseConflict(
                    f"{resource} was handed off to another migration: {describe(x.value)}",
                    resource,
                    describe(x.value),
                    final=True,
                )
            if waiting is None:
                waiting = self._conflict(resource, base, [x])
        return waiting or LeaseConflict("the take-over raced with another change; try again")

    async def op_revert(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        """Back to reserved: the keys a take-over moved go back to being handed off to us."""
        keys = req.get("keys")
        if not isinstance(keys, list) or not keys:
            raise InvalidArgument("revert needs keys")
        compare, success = [], []
        written: dict[bytes, bytes | None] = {}
        changes = []
        for key in keys:
            owned = conn.owned.get(key) if isinstance(key, str) else None
            if owned is None or owned.held is None or owned.rvalue is None:
                raise InvalidArgument(f"lease {key!r} was not taken over on this connection")
            base = self.dir(key)
            if owned.mode == "exclusive":
                compare.append(value(base + b"x", owned.held))
                success.append(put(base + b"x", marker(owned.rvalue), owned.lease))
                written[base + b"x"] = marker(owned.rvalue)
            else:
                target = base + b"s/" + conn.sid.encode()
                compare.append(value(target, owned.held))
                success.append(delete(target))
                written[target] = None
            success.append(put(base + b"r", owned.rvalue, owned.lease))
            written[base + b"r"] = owned.rvalue
            changes.append(owned)
        result = await self._write(compare, success, [], written)
        if result is not None and not result.succeeded:
            raise BackendError("revert: the keys are no longer ours")
        for owned in changes:
            owned.reserved, owned.held = owned.rvalue, None
        return {}

    async def op_release(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        key = req.get("key")
        owned = conn.owned.get(key) if isinstance(key, str) else None
        if owned is not None:
            # Forgotten only once etcd did it: a key left behind is retried when the
            # connection closes, rather than held for as long as this agent lives.
            await self._release(conn, str(key), owned)
            conn.owned.pop(str(key), None)
        return {}

    async def _release(
        self, conn: Conn, key: str, owned: Owned, budget: float | None = None
    ) -> None:
        base = self.dir(key)
        if owned.reserved is not None:  # our reservation, and a key handed off to it
            await self._write(
                [],
                [
                    nested([value(base + b"r", owned.reserved)], [delete(base + b"r")]),
                    nested([value(base + b"x", marker(owned.reserved))], [delete(base + b"x")]),
                ],
                [],
                {},
                budget,
            )
        if owned.held is None:
            return
        if owned.mode == "shared":
            target = base + b"s/" + conn.sid.encode()
            await self._write([value(target, owned.held)], [delete(target)], [], {}, budget)
            return
        await self._release_exclusive(base, owned.held, owned.resource, budget)

    async def _release_exclusive(
        self, base: bytes, mine: bytes, resource: str, budget: float | None
    ) -> None:
        """Delete our ``x`` -- or, if a migration target reserves the lease, hand it to that
        target (a marker on the target's etcd lease that only its take-over matches): a lease
        given up while reserved is the target's, as the fcntl gate makes it."""
        x, r = base + b"x", base + b"r"
        for _ in range(8):
            result = await self._write(
                [value(x, mine), create(r, 0)], [delete(x)], [get(x), get(r)], {x: None}, budget
            )
            if result is None or result.succeeded:
                return
            xs, rs = result.ranges
            if not xs or xs[0].value != mine:
                return  # not ours any more
            if not rs:
                continue  # the reservation went meanwhile
            reservation = rs[0]
            try:
                result = await self._write(
                    [value(x, mine), value(r, reservation.value), lease_is(r, reservation.lease)],
                    [put(x, marker(reservation.value), reservation.lease)],
                    [],
                    {x: marker(reservation.value)},
                    budget,
                )
            except LeaseNotFound:
                continue  # the target's lease just expired: its reservation is gone too
            if result is None or result.succeeded:
                log(f"{resource}: handed off to {describe(reservation.value)}")
                return
        raise BackendError(f"{resource}: the release kept racing with reservations")

    async def op_holders(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        root = self.prefix + b"L/"
        rows = []
        for kv in await self._read(root, prefix_end(root)):
            parts = kv.key[len(root) :].split(b"/")
            kind = {b"x": "exclusive", b"r": "reserved", b"s": "shared"}.get(parts[1], "?")
            if kind == "exclusive" and b"handed_off_to" in kv.value:
                kind = "handed-off"
            try:
                holder = json.loads(kv.value)
            except ValueError:
                holder = None
            rows.append(
                {
                    "key": parts[0].decode(errors="replace"),
                    "kind": kind,
                    "holder": holder,
                    "create_revision": kv.create,
                    "lease": kv.lease,
                }
            )
        return {"holders": rows}

    async def op_status(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        lease = self.lease
        return {
            "pid": os.getpid(),
            "host": self.host,
            "lease": lease.id if lease else None,
            "valid_until": lease.valid_until if lease else None,
            "endpoint": self.etcd.endpoint,
            "connections": len(self.conns),
        }

    # -- the socket -------------------------------------------------------------------------------

    async def serve_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        pid, uid, _ = struct.unpack(
            "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        )
        conn = Conn(writer, pid, self.host)
        if uid not in (os.geteuid(), 0):
            conn.send(wire.error_reply(PermissionError(f"uid {uid} may not")))
            writer.close()
            return
        self.conns.add(conn)
        try:
            while not self.stopping.is_set():
                try:
                    line = await reader.readline()
                except (ValueError, ConnectionError):
                    break
                if not line:
                    break
                await self._request(conn, line)
        finally:
            self.conns.discard(conn)
            writer.close()
            # Not when this agent is stopping: then the connection closed on our side, its
            # supervisor and guest may live a moment more, and the keys go with the lease.
            if conn.owned and not self.stopping.is_set():
                self._spawn(self._cleanup(conn))

    async def _request(self, conn: Conn, line: bytes) -> None:
        rid: Any = None
        try:
            req = wire.decode(line)
            rid = req.get("id")
            handler = getattr(self, f"op_{req.get('op')}", None)
            if handler is None:
                raise InvalidArgument(f"unknown op {req.get('op')!r}")
            reply = {"ok": True, **await handler(conn, req)}
        except LockFSMError as e:
            reply = wire.error_reply(e)
            if isinstance(e, LeaseConflict):
                reply["final"] = e.final
        except Exception as e:  # no request may kill the agent, and with it every lease
            log(f"request failed: {type(e).__name__}: {e}")
            reply = wire.error_reply(BackendError(f"{type(e).__name__}: {e}"))
        if rid:
            conn.send({**reply, "id": rid})

    async def _cleanup(self, conn: Conn) -> None:
        """The supervisor and its guest are dead: release all they had, at once.  What etcd
        does not take now is tried again while the lease it lives on is this host's (else it
        goes with that lease)."""
        left = dict(conn.owned)
        released = 0
        while left:
            items = list(left.items())
            results = await asyncio.gather(
                *(self._release(conn, k, o, self.budget) for k, o in items),
                return_exceptions=True,
            )
            for (key, _), result in zip(items, results, strict=True):
                if not isinstance(result, BaseException):
                    released += 1
                    del left[key]
            current = self.lease.id if self.lease else None
            left = {k: o for k, o in left.items() if o.lease == current}
            if left:
                log(f"supervisor pid {conn.pid} gone: {len(left)} lease(s) not released yet")
                await asyncio.sleep(self.ttl / 3)
        log(f"supervisor pid {conn.pid} gone: released {released} lease(s)")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        server = await self._listen()
        keeper = asyncio.ensure_future(self.keepalive())
        members = ", ".join(self.settings["endpoints"])
        log(f"serving {self.path} for host {self.host}, etcd {members}")
        try:
            await self.stopping.wait()
        finally:
            server.close()
            keeper.cancel()
            await self._shutdown()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def _listen(self) -> asyncio.AbstractServer:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if os.path.exists(self.path):
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(self.path)
                raise BackendError(f"another lockfsm-etcd-agent serves {self.path}")
            except OSError:
                os.unlink(self.path)  # a stale socket of an agent that died
            finally:
                probe.close()
        old = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(
                self.serve_conn, self.path, limit=wire.MAX_MESSAGE
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        return server

    async def _shutdown(self) -> None:
        """Stop: every supervisor hears its connection close (and stops its guest); the lease is
        revoked once the validity promised to them has passed."""
        holding = any(c.owned for c in self.conns)
        log(f"stopping: {len(self.conns)} supervisor(s) lose their connection")
        for conn in list(self.conns):
            conn.writer.close()
        lease = self.lease
        if lease is not None:
            if holding:
                await asyncio.sleep(max(0.0, lease.valid_until - time.monotonic()))
            try:
                await self.etcd.revoke(lease.id, self.budget)
            except EtcdError as e:
                log(f"could not revoke lease {lease.id:x}: {e}")
        for task in list(self.tasks):
            task.cancel()
        await self.etcd.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lockfsm-etcd-agent CONFIG``: CONFIG is the host's lockfsm TOML file
    (the keys of the etcd driver)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: lockfsm-etcd-agent CONFIG.toml", file=sys.stderr)
        return 2
    try:
        conf = configuration.load({**configuration.COMMON_KEYS, **backend.CONFIG_KEYS}, args[0])
        agent = Agent(conf)
    except LockFSMError as e:
        print(f"lockfsm-etcd-agent: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(agent.run())
    except BackendError as e:
        print(f"lockfsm-etcd-agent: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
