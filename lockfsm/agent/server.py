"""The lease agent's server: the host's supervisors' connections, their requests, and the pushes
of the host lease's validity.

It serves the host's supervisors on a Unix socket (mode 0600, peer uid checked; JSON lines, one
request at a time per connection, each answered within a few seconds).  Requests
(``{"id": n, "op": ...}``): ``hello``, ``acquire``, ``reserve``, ``take_over``, ``release``,
``holders``, ``status``.  When a supervisor's connection closes (supervisor and guest dead: the
guest inherits it), the agent releases everything that connection held, at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Awaitable, Mapping
from typing import Any

from lockfsm.agent.keeper import HostLease, HostLeaseKeeper
from lockfsm.agent.keys import KeySchema
from lockfsm.agent.store import LeaseStore, Party, lease_request
from lockfsm.backends import etcd as backend
from lockfsm.backends.etcd.client import Etcd, EtcdError
from lockfsm.errors import BackendError, InvalidArgument, LeaseConflict, LockFSMError
from lockfsm.protocol import sockets, wire

log = logging.getLogger("lockfsm.agent")

_WHO = ("name", "uuid", "launch", "migration")
BACKLOG = 256


class Conn(Party):
    """One supervisor's connection."""

    def __init__(self, writer: asyncio.StreamWriter, pid: int, host: str) -> None:
        super().__init__({"pid": pid, "host": host}, f"{host}.{pid}")
        self.writer = writer
        self.pid = pid

    def send(self, message: Mapping[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(wire.encode(message))


class Agent:
    """One host's lease agent: the keeper of its etcd lease, the store of its keys, and the
    server of its supervisors."""

    def __init__(self, conf: Mapping[str, Any]) -> None:
        self.settings = backend.agent_settings(conf)
        self.host: str = conf["host_name"]
        self.ttl: int = conf["ttl"]
        self.path = backend.agent_socket(conf)
        try_timeout = min(1.0, self.ttl / 4)
        self.etcd = Etcd([backend.parse_endpoint(e) for e in conf["endpoints"]], try_timeout)
        self.keeper = HostLeaseKeeper(self.etcd, self.ttl, backend.fence_margin(conf), self)
        self.store = LeaseStore(self.etcd, KeySchema(conf["prefix"]), self.keeper)
        self.budget = self.keeper.budget
        self.conns: set[Conn] = set()
        self.stopping = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()

    @property
    def lease(self) -> HostLease | None:
        return self.keeper.lease

    # -- what the keeper tells: pushed to every connection --------------------------------------

    def valid(self, lease: HostLease) -> None:
        self._push_all({"push": "valid", "lease": lease.id, "valid_until": lease.valid_until})

    def lost(self, lease: HostLease, why: str) -> None:
        self._push_all({"push": "lost", "lease": lease.id, "reason": why})

    def _push_all(self, message: Mapping[str, Any]) -> None:
        for conn in list(self.conns):
            conn.send(message)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

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

    async def op_acquire(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        return await self.store.acquire(conn, *lease_request(req))

    async def op_reserve(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        return await self.store.reserve(conn, *lease_request(req))

    async def op_take_over(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        return await self.store.take_over(conn, req.get("leases"))

    async def op_release(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        key = req.get("key")
        if isinstance(key, str):
            await self.store.release(conn, key)
        return {}

    async def op_holders(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        return {"holders": await self.store.holders()}

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
        pid, uid = sockets.peer(writer.get_extra_info("socket"))
        conn = Conn(writer, pid, self.host)
        why = sockets.refusal(uid)
        if why is not None:
            conn.send(wire.error_reply(PermissionError(why)))
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
            log.error("request failed: %s: %s", type(e).__name__, e)
            reply = wire.error_reply(BackendError(f"{type(e).__name__}: {e}"))
        if rid:
            conn.send({**reply, "id": rid})

    async def _cleanup(self, conn: Conn) -> None:
        """The supervisor and its guest are dead: release all they had, at once.  What etcd
        does not take now is tried again while the lease it lives on is this host's (else it
        goes with that lease)."""
        released = 0
        while conn.owned:
            keys = list(conn.owned)
            results = await asyncio.gather(
                *(self.store.release(conn, k, self.budget) for k in keys),
                return_exceptions=True,
            )
            released += sum(not isinstance(r, BaseException) for r in results)
            current = self.lease.id if self.lease else None
            for key in [k for k, o in conn.owned.items() if o.lease != current]:
                del conn.owned[key]  # on an older lease: it goes with that lease
            if conn.owned:
                log.warning(
                    "supervisor pid %s gone: %d lease(s) not released yet",
                    conn.pid,
                    len(conn.owned),
                )
                await asyncio.sleep(self.ttl / 3)
        log.info("supervisor pid %s gone: released %d lease(s)", conn.pid, released)

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        import signal

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        server = await self._listen()
        keeper = asyncio.ensure_future(self.keeper.run())
        members = ", ".join(self.settings["endpoints"])
        log.info("serving %s for host %s, etcd %s", self.path, self.host, members)
        try:
            await self.stopping.wait()
        finally:
            server.close()
            self.keeper.stop()
            keeper.cancel()
            await self._shutdown()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def _listen(self) -> asyncio.AbstractServer:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        try:
            sock = sockets.listen_unix(self.path, BACKLOG)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise BackendError(f"another lockfsm-etcd-agent serves {self.path}") from None
            raise BackendError(f"cannot serve {self.path}: {e.strerror or e}") from None
        return await asyncio.start_unix_server(self.serve_conn, sock=sock, limit=wire.MAX_MESSAGE)

    async def _shutdown(self) -> None:
        """Stop: every supervisor hears its connection close (and stops its guest); the lease is
        revoked once the validity promised to them has passed."""
        holding = any(c.owned for c in self.conns)
        log.info("stopping: %d supervisor(s) lose their connection", len(self.conns))
        for conn in list(self.conns):
            conn.writer.close()
        lease = self.lease
        if lease is not None:
            if holding:
                await asyncio.sleep(max(0.0, lease.valid_until - time.monotonic()))
            try:
                await self.etcd.revoke(lease.id, self.budget)
            except EtcdError as e:
                log.warning("could not revoke lease %x: %s", lease.id, e)
        for task in list(self.tasks):
            task.cancel()
        await self.etcd.close()
