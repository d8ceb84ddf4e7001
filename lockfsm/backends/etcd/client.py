"""etcd v3 through gRPC (the stubs aetcd generated): an asyncio client that fails over between
members, and a synchronous wrapper that runs it on a private event loop in its own thread.

Heavy (imports grpc): only the lease agent (lockfsm/agent/), tools and tests import it;
neither the daemon's naming half nor the supervisor does.

What it adds to aetcd's stubs:

* TLS (the members' certificates checked against a CA, a client certificate whose CN etcd takes
  as the user) and etcd's user/password authentication (:class:`Credentials`);
* every member is an endpoint: a request that times out or finds its member unavailable is
  tried on the next one;
* every request has a timeout of its own, so that a member that stopped answering (a partition,
  a SIGSTOP) costs one timeout, not a hang;
* a write that failed in flight may have been applied: it raises :class:`Uncertain`, and the
  caller reads back before deciding (never blindly retried);
* transactions are built from small tuples (:func:`create`, :func:`value`, :func:`put`, ...)
  and answer with plain :class:`KV` rows, including the revisions (the fencing tokens).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, NamedTuple, TypeVar

# gRPC's C core writes TLS handshake failures to stderr as it retries; the agent reports the
# cause itself, once, in a sentence (lockfsm/agent/preflight.py).  Set before grpc is imported.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc
from aetcd import rpc

T = TypeVar("T")


class EtcdError(Exception):
    """etcd refused a request for a reason that retrying elsewhere cannot cure."""


class Unavailable(EtcdError):
    """No member answered within the time allowed."""


class Uncertain(EtcdError):
    """A write failed in flight: it may or may not have been applied."""


class LeaseNotFound(EtcdError):
    """etcd does not know the lease (it expired or was revoked)."""


class Credentials(NamedTuple):
    """How the agent proves itself to etcd and checks etcd: TLS (the CA that signs the members'
    certificates, None for the system's; the client's certificate and key, PEM bytes, for
    ``--client-cert-auth``: etcd then takes the certificate's CN as the user), and a user name
    with its password (etcd's own authentication, for a deployment without client
    certificates)."""

    tls: bool = False
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    user: str | None = None
    password: str | None = None


PLAIN = Credentials()  # plain-text gRPC, no authentication


class KV(NamedTuple):
    key: bytes
    value: bytes
    create: int  # create revision (0: absent)
    mod: int
    lease: int


# -- transaction pieces ------------------------------------------------------------------------

Compare = Any  # rpc.Compare
Op = Any  # rpc.RequestOp


def prefix_end(prefix: bytes) -> bytes:
    """The end of the key range of every key starting with ``prefix``."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def create(key: bytes, revision: int, range_end: bytes | None = None) -> Compare:
    """Compare: the key's create revision (0 for an absent key) equals ``revision``; with
    ``range_end``, every key of the range (so ``0`` means: the range is empty)."""
    c = rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL)
    c.create_revision = revision
    if range_end is not None:
        c.range_end = range_end
    return c


def value(key: bytes, data: bytes) -> Compare:
    """Compare: the key exists and holds ``data``."""
    c = rpc.Compare(key=key, target=rpc.Compare.VALUE, result=rpc.Compare.EQUAL)
    c.value = data
    return c


def lease_is(key: bytes, lease: int) -> Compare:
    """Compare: the key is attached to ``lease``."""
    c = rpc.Compare(key=key, target=rpc.Compare.LEASE, result=rpc.Compare.EQUAL)
    c.lease = lease
    return c


def put(key: bytes, data: bytes, lease: int = 0) -> Op:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=data, lease=lease))


def get(key: bytes, range_end: bytes | None = None) -> Op:
    req = rpc.RangeRequest(key=key)
    if range_end is not None:
        req.range_end = range_end
    return rpc.RequestOp(request_range=req)


def delete(key: bytes) -> Op:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def nested(compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> Op:
    """A transaction inside a transaction's branch (each key at most once in a request)."""
    return rpc.RequestOp(
        request_txn=rpc.TxnRequest(compare=compare, success=success, failure=failure)
    )


def _rows(kvs: Any) -> list[KV]:
    return [KV(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease) for kv in kvs]


async def _watch_keys(stream: Any, keys: Sequence[bytes], start_revision: int) -> None:
    """Have etcd watch each of ``keys`` from ``start_revision`` on, on one watch ``stream``."""
    for key in keys:
        create = rpc.WatchCreateRequest(key=key, start_revision=start_revision)
        await stream.write(rpc.WatchRequest(create_request=create))


class TxnResult(NamedTuple):
    succeeded: bool
    revision: int  # the store's revision after the transaction
    ranges: list[list[KV]]  # the rows of each range op of the branch taken, in order
    nested: list[bool] = []  # whether each nested transaction of that branch succeeded


# -- the client ---------------------------------------------------------------------------------

_RETRY_PAUSE = 0.05
# A member that comes back is tried again within a second (gRPC's default backoff grows to 2 min).
_CHANNEL = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
}


def _stale_token(error: rpc.AioRpcError) -> bool:
    """Whether etcd refused our authentication token (it expired): authenticate again."""
    return error.code() == rpc.StatusCode.UNAUTHENTICATED or "invalid auth token" in (
        error.details() or ""
    )


def _classify(error: BaseException) -> EtcdError | None:
    """Turn a gRPC error into ours: None for errors another member may not have (retry
    elsewhere), an EtcdError to raise otherwise."""
    if isinstance(error, rpc.AioRpcError):
        details = error.details() or ""
        if "lease not found" in details:
            return LeaseNotFound(details)
        if error.code() in (rpc.StatusCode.INVALID_ARGUMENT, rpc.StatusCode.FAILED_PRECONDITION):
            return EtcdError(details)
        if error.code() == rpc.StatusCode.PERMISSION_DENIED:
            return EtcdError(details)
    return None


class _Member:
    """One member's gRPC channel and stubs, made on first use (and again after a failure that
    may have broken it: an expired authentication token)."""

    def __init__(self, host: str, port: int, creds: Credentials) -> None:
        self.target = f"{host}:{port}"
        self.creds = creds
        self.channel: grpc.aio.Channel | None = None
        self.metadata: tuple[tuple[str, str], ...] | None = None
        self.kvstub: Any = None
        self.leasestub: Any = None
        self.maintenancestub: Any = None
        self.watchstub: Any = None

    async def connect(self, timeout: float) -> _Member:
        if self.channel is not None:
            return self
        creds = self.creds
        if creds.tls:
            secure = grpc.ssl_channel_credentials(creds.ca, creds.key, creds.cert)
            channel = grpc.aio.secure_channel(self.target, secure, options=_CHANNEL.items())
        else:
            channel = grpc.aio.insecure_channel(self.target, options=_CHANNEL.items())
        metadata = None
        try:
            if creds.user is not None:
                auth = rpc.AuthStub(channel)
                resp = await auth.Authenticate(
                    rpc.AuthenticateRequest(name=creds.user, password=creds.password or ""),
                    timeout=timeout,
                )
                metadata = (("token", resp.token),)
        except BaseException:
            await channel.close()
            raise
        self.channel, self.metadata = channel, metadata
        self.kvstub = rpc.KVStub(channel)
        self.leasestub = rpc.LeaseStub(channel)
        self.maintenancestub = rpc.MaintenanceStub(channel)
        self.watchstub = rpc.WatchStub(channel)
        return self

    async def close(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            await channel.close()


class Etcd:
    """An asyncio etcd client over every member of a cluster.  Use from one event loop."""

    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        try_timeout: float = 1.0,
        creds: Credentials = PLAIN,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        self.endpoints = list(endpoints)
        self.try_timeout = try_timeout
        self.creds = creds
        self.current = 0
        self._members: dict[int, _Member] = {}
        #: requests made, by kind: "reads" (ranges and read-only transactions, each try) and
        #: "writes" (transactions that may change the store): what ``lockfsm-etcd-agent``'s
        #: status reports, and how a test tells that a release was one transaction
        self.requests = {"reads": 0, "writes": 0}

    @property
    def endpoint(self) -> str:
        host, port = self.endpoints[self.current]
        return f"{'https' if self.creds.tls else 'http'}://{host}:{port}"

    async def _client(self, timeout: float) -> _Member:
        member = self._members.get(self.current)
        if member is None:
            host, port = self.endpoints[self.current]
            member = self._members[self.current] = _Member(host, port, self.creds)
        return await member.connect(timeout)

    def _rotate(self, failed: int) -> None:
        if self.current == failed:
            self.current = (failed + 1) % len(self.endpoints)

    async def _once(self, fn: Callable[[_Member], Awaitable[T]], timeout: float) -> T:
        """One try on the current member.  Raises EtcdError, or (after moving to the next
        member) TimeoutError/ConnectionError for a try that another member may answer."""
        index = self.current
        host, port = self.endpoints[index]
        try:
            async with asyncio.timeout(max(0.001, timeout)):  # no task per request
                return await self._call(fn, max(0.001, timeout))
        except TimeoutError:
            self._rotate(index)
            raise TimeoutError(f"etcd member {host}:{port} did not answer in time") from None
        except rpc.AioRpcError as e:
            if _stale_token(e):
                await self._members[index].close()  # authenticate again on the next try
            ours = _classify(e)
            if ours is not None:
                raise ours from None
            self._rotate(index)
            raise ConnectionError(f"etcd member {host}:{port}: {e.details()}") from None

    async def _call(self, fn: Callable[[_Member], Awaitable[T]], timeout: float) -> T:
        return await fn(await self._client(timeout))

    async def read(self, fn: Callable[[_Member], Awaitable[T]], budget: float) -> T:
        """An idempotent request, tried member after member until ``budget`` seconds pass.
        Raises Unavailable, EtcdError."""
        deadline = time.monotonic() + budget
        last: BaseException | None = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(f"no etcd member answered in {budget:g} s: {last}")
            try:
                return await self._once(fn, min(self.try_timeout, left))
            except ConnectionError as e:
                last = e
            except TimeoutError as e:
                # A member's refusal says why (a certificate refused, say); a try cut short by
                # the time left says nothing more: the refusal stays the reason given.
                if not isinstance(last, ConnectionError):
                    last = e
            await asyncio.sleep(min(_RETRY_PAUSE, max(0.0, deadline - time.monotonic())))

    async def write(self, fn: Callable[[_Member], Awaitable[T]], timeout: float) -> T:
        """A request that changes the store, tried once.  Raises Uncertain when it failed in
        flight (it may have been applied: read back), EtcdError."""
        try:
            return await self._once(fn, min(self.try_timeout, timeout))
        except (TimeoutError, ConnectionError) as e:
            raise Uncertain(str(e)) from None

    # -- requests ------------------------------------------------------------------------------

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> TxnResult:
        """One transaction.  Raises Uncertain (unless ``idempotent``: then Unavailable after
        trying every member for ``timeout``), LeaseNotFound, EtcdError."""
        request = rpc.TxnRequest(compare=compare, success=success, failure=failure)

        async def call(client: _Member) -> TxnResult:
            self.requests["reads" if idempotent else "writes"] += 1
            resp = await client.kvstub.Txn(request, metadata=client.metadata)
            kinds = [r.WhichOneof("response") for r in resp.responses]
            ranges = [
                _rows(r.response_range.kvs)
                for r, kind in zip(resp.responses, kinds, strict=True)
                if kind == "response_range"
            ]
            nested = [
                bool(r.response_txn.succeeded)
                for r, kind in zip(resp.responses, kinds, strict=True)
                if kind == "response_txn"
            ]
            return TxnResult(resp.succeeded, resp.header.revision, ranges, nested)

        limit = self.try_timeout if timeout is None else timeout
        if idempotent:
            return await self.read(call, limit)
        return await self.write(call, limit)

    async def range(
        self, key: bytes, range_end: bytes | None = None, budget: float = 2.0
    ) -> list[KV]:
        """The keys from ``key`` to ``range_end`` (or just ``key``).  Raises Unavailable."""
        result = await self.txn([], [get(key, range_end)], timeout=budget, idempotent=True)
        return result.ranges[0]

    async def grant(self, ttl: int, budget: float) -> tuple[int, int]:
        """A new lease: (id, granted TTL).  A grant lost in flight only leaves a lease nobody
        uses, which expires: it is retried.  Raises Unavailable."""

        async def call(client: _Member) -> tuple[int, int]:
            resp = await client.leasestub.LeaseGrant(
                rpc.LeaseGrantRequest(TTL=ttl), metadata=client.metadata
            )
            if resp.error:
                raise EtcdError(resp.error)
            return int(resp.ID), int(resp.TTL)

        return await self.read(call, budget)

    async def keepalive(self, lease: int, timeout: float) -> int:
        """One keepalive of ``lease``: the TTL etcd renewed it to, 0 if etcd no longer knows
        it.  One try (a late renewal must not be mistaken for a timely one).  Raises Uncertain
        (no answer in time), EtcdError."""

        async def call(client: _Member) -> int:
            stream = client.leasestub.LeaseKeepAlive(
                iter([rpc.LeaseKeepAliveRequest(ID=lease)]), metadata=client.metadata
            )
            try:
                reply = await stream.read()
            finally:
                stream.cancel()
            if reply is grpc.aio.EOF or reply is None:
                raise ConnectionError("the keepalive stream ended without a reply")
            return int(reply.TTL)

        return await self.write(call, timeout)

    async def revoke(self, lease: int, budget: float) -> None:
        """Revoke ``lease`` (its keys are deleted); a lease etcd no longer knows is fine.
        Raises Unavailable."""

        async def call(client: _Member) -> None:
            await client.leasestub.LeaseRevoke(
                rpc.LeaseRevokeRequest(ID=lease), metadata=client.metadata
            )

        try:
            await self.read(call, budget)
        except LeaseNotFound:
            pass

    async def status(self, budget: float = 2.0) -> tuple[int, int]:
        """(member id, leader id) as the current member reports.  Raises Unavailable."""

        async def call(client: _Member) -> tuple[int, int]:
            resp = await client.maintenancestub.Status(
                rpc.StatusRequest(), metadata=client.metadata
            )
            return int(resp.header.member_id), int(resp.leader)

        return await self.read(call, budget)

    async def wait_change(self, keys: Sequence[bytes], start_revision: int, timeout: float) -> bool:
        """Wait until one of ``keys`` changes at or after ``start_revision`` (an etcd watch):
        True when it did (or etcd cannot tell: compacted, cancelled), False when ``timeout``
        passed first or the member went away (the caller then polls)."""
        try:
            member = await self._client(min(self.try_timeout, timeout))
        except (rpc.AioRpcError, TimeoutError):
            return False
        stream = member.watchstub.Watch(metadata=member.metadata)

        async def changed() -> bool:
            await _watch_keys(stream, keys, start_revision)
            async for resp in stream:
                if resp.events or resp.canceled or resp.compact_revision:
                    return True
            return False

        try:
            return await asyncio.wait_for(changed(), timeout)
        except (TimeoutError, rpc.AioRpcError):
            return False
        finally:
            stream.cancel()

    async def follow(
        self,
        keys: Sequence[bytes],
        start_revision: int,
        changed: Callable[[bytes, KV | None], None],
        budget: float,
    ) -> None:
        """Call ``changed(key, row)`` for every change of one of ``keys`` from
        ``start_revision`` on, in etcd's order (``row`` None: deleted), until cancelled (one
        etcd watch stream).  Raises EtcdError when the changes can no longer be told (the
        revision was compacted, etcd cancelled the watch, the member went away, or it did not
        take the watch within ``budget`` s): the caller's view is out of date from then on."""
        try:
            member = await self._client(min(self.try_timeout, budget))
        except (rpc.AioRpcError, TimeoutError) as e:
            raise Unavailable(f"no etcd member to watch: {e}") from None
        stream = member.watchstub.Watch(metadata=member.metadata)
        try:
            async with asyncio.timeout(budget):
                await _watch_keys(stream, keys, start_revision)
            async for resp in stream:
                if resp.canceled or resp.compact_revision:
                    raise EtcdError(f"etcd ended the watch: {resp.cancel_reason or 'compacted'}")
                for event in resp.events:
                    kv = event.kv
                    row = KV(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease)
                    changed(kv.key, None if event.type == rpc.Event.DELETE else row)
            raise Unavailable("the etcd watch stream ended")
        except (rpc.AioRpcError, TimeoutError) as e:
            raise Unavailable(f"the etcd watch failed: {e}") from None
        finally:
            stream.cancel()

    async def close(self) -> None:
        for member in self._members.values():
            try:
                await member.close()
            except Exception:  # closing a broken channel: nothing left to do
                pass
        self._members.clear()


# -- the synchronous wrapper ------------------------------------------------------------------


class SyncEtcd:
    """An :class:`Etcd` driven from synchronous code: its event loop runs in a private daemon
    thread, so no loop is visible to (or required from) the caller, who may be a plain thread
    or even a coroutine of another loop.  Every call blocks until its answer.

    Raises what the :class:`Etcd` call raises, and TimeoutError when the loop does not answer
    in time (a call is never left running: it is cancelled)."""

    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        try_timeout: float = 1.0,
        creds: Credentials = PLAIN,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="lockfsm-etcd-loop", daemon=True
        )
        self._thread.start()
        self.etcd = Etcd(endpoints, try_timeout, creds)

    def run(self, fn: Callable[[Etcd], Coroutine[Any, Any, T]], timeout: float = 30.0) -> T:
        """Run ``fn(etcd)`` on the private loop; its result."""
        future = asyncio.run_coroutine_threadsafe(fn(self.etcd), self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"etcd call took over {timeout:g} s") from None

    def range(self, key: bytes, range_end: bytes | None = None) -> list[KV]:
        return self.run(lambda e: e.range(key, range_end))

    def prefix(self, prefix: bytes) -> list[KV]:
        """Every key starting with ``prefix``."""
        return self.range(prefix, prefix_end(prefix))

    def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        return self.run(lambda e: e.txn(compare, success, failure, timeout=5.0))

    def status(self) -> tuple[int, int]:
        return self.run(lambda e: e.status())

    def close(self) -> None:
        """Close the connections and stop the loop thread."""
        if not self._loop.is_closed():
            try:
                self.run(lambda e: e.close(), 5.0)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(5)
                self._loop.close()

    def __enter__(self) -> SyncEtcd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
