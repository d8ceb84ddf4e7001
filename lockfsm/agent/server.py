"""The lease agent's server: the host's supervisors' connections, their requests, and the pushes
of the host lease's validity.

It serves the host's supervisors on a Unix socket (mode 0600, peer uid checked; JSON lines).
Requests (``{"id": n, "op": ...}``, each answered by a message with the same id; id 0: no
answer): ``hello``, ``acquire``, ``reserve``, ``take_over``, ``peek``, ``release``, ``adopt``,
``ack``, ``holders``, ``status``, ``release_host``.  Pushes (``{"push": ...}``, no id) go only
to connections that subscribed in their hello (a supervisor's); a one-shot request never sees one.

* **A restart stops no guest.**  The agent keeps its lease in its run directory
  (:mod:`lockfsm.agent.hoststate`).  A restarted agent takes the same lease up if its local
  deadline has not passed; its supervisors reconnect and ``adopt`` the keys they own (the agent
  checks in etcd that each is theirs, on this lease).  SIGTERM (a service restart) therefore
  leaves the lease and every key in place; ``release_host`` (``lockfsm-etcd-agent
  --release-all``) gives everything up, for a real host shutdown.
* **A stalled supervisor is fenced.**  A supervisor acknowledges each validity push.  One that
  holds keys and has not acknowledged the latest push by half the fence margin before the
  deadline it last acknowledged (SIGSTOPped, hung) cannot stop its own guest in time: the agent
  does it, by the guest's lock-failure policy (poweroff: SIGKILL; pause: SIGSTOP; ignore: the
  guest runs on), lets the supervisor's keys go and pushes it ``lost``.
* When a supervisor's connection closes (supervisor and guest dead: the guest inherits it, or,
  after a reconnect, the agent waits until the guest is gone), the agent releases everything
  that connection held, at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from lockfsm.agent import preflight
from lockfsm.agent.hoststate import HostState
from lockfsm.agent.keeper import HostLease, HostLeaseKeeper
from lockfsm.agent.keys import KeySchema
from lockfsm.agent.store import LeaseStore, Party, WaitingConflict, lease_request
from lockfsm.backends import etcd as backend
from lockfsm.backends.etcd.client import Etcd, EtcdError, LeaseNotFound
from lockfsm.errors import BackendError, InvalidArgument, LeaseConflict, LockFSMError
from lockfsm.protocol import kernel, sockets, wire

log = logging.getLogger("lockfsm.agent")

_WHO = ("name", "uuid", "launch", "migration", "policy")
BACKLOG = 256
WATCH_EVERY = 0.05  # seconds between looks at the supervisors' acknowledgements


class Conn(Party):
    """One connection: a supervisor's (it subscribes to the pushes), or a one-shot request's."""

    def __init__(self, writer: asyncio.StreamWriter, pid: int, host: str) -> None:
        super().__init__({"pid": pid, "host": host}, f"{host}.{pid}")
        self.writer = writer
        self.pid = pid
        self.subscribed = False
        self.acked = 0.0  # the latest valid_until this supervisor acknowledged
        self.guests: set[int] = set()  # the supervisor's children, as last seen
        self.fenced = False
        self.waiting: asyncio.Future[Any] | None = None  # the watch of a waiting take-over

    def send(self, message: Mapping[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(wire.encode(message))

    def stop_waiting(self) -> None:
        """End the watch of a waiting take-over, if any."""
        if self.waiting is not None:
            self.waiting.cancel()
        self.waiting = None

    def look_at_guests(self) -> None:
        """Remember the supervisor's children (its guest)."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                self.guests |= {int(p) for p in f.read().split()}
        except (OSError, ValueError):
            pass


class Agent:
    """One host's lease agent: the keeper of its etcd lease, the store of its keys, and the
    server of its supervisors.  ``conf`` is the host's validated etcd configuration."""

    def __init__(self, conf: Mapping[str, Any]) -> None:
        self.conf = conf
        self.settings = backend.agent_settings(conf)
        self.host: str = conf["host_name"]
        self.ttl: int = conf["ttl"]
        self.margin = backend.fence_margin(conf)
        self.path = backend.agent_socket(conf)
        try_timeout = min(1.0, self.ttl / 4)
        endpoints = [backend.parse_endpoint(e) for e in conf["endpoints"]]
        self.etcd = Etcd(endpoints, try_timeout, backend.credentials(conf))
        self.keeper = HostLeaseKeeper(self.etcd, self.ttl, self.margin, self)
        self.keys = KeySchema(conf["prefix"])
        self.store = LeaseStore(self.etcd, self.keys, self.keeper)
        self.state = HostState(conf["run_dir"], self.settings)
        self.budget = self.keeper.budget
        self.conns: set[Conn] = set()
        self.stopping = asyncio.Event()
        self.releasing = False  # release_host: revoke the lease on the way out
        self.pushed = 0.0  # the latest valid_until pushed
        self.registered = 0  # the lease this host's registration is on
        self.gone_at: dict[str, float] = {}  # host -> when this agent first saw its lease gone
        self.tasks: set[asyncio.Task[Any]] = set()

    @property
    def lease(self) -> HostLease | None:
        return self.keeper.lease

    # -- what the keeper tells: pushed to every supervisor -----------------------------------------

    def valid(self, lease: HostLease) -> None:
        self.pushed = lease.valid_until
        self.state.save(lease.id, lease.valid_until)
        if self.registered != lease.id:
            self.registered = lease.id
            self._spawn(self._register(lease))
        self._push_all({"push": "valid", "lease": lease.id, "valid_until": lease.valid_until})

    def lost(self, lease: HostLease, why: str) -> None:
        self.state.clear()
        self._push_all({"push": "lost", "lease": lease.id, "reason": why})

    def _push_all(self, message: Mapping[str, Any]) -> None:
        for conn in list(self.conns):
            if conn.subscribed:
                conn.send(message)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- requests ----------------------------------------------------------------------------------

    async def op_hello(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        """Who asks; ``subscribe``: this connection wants the pushes (a supervisor's)."""
        who = req.get("who")
        if isinstance(who, dict):
            for k in _WHO:
                if isinstance(who.get(k), str):
                    conn.who[k] = who[k][:256]
        if req.get("subscribe") is True:
            conn.subscribed = True
        lease = self.lease
        return {
            "host": self.host,
            "settings": self.settings,
            "ready": lease is not None,
            "lease": lease.id if lease else None,
            "valid_until": lease.valid_until if lease else None,
        }

    async def op_acquire(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        reply = await self.store.acquire(conn, *lease_request(req))
        conn.acked = max(conn.acked, float(reply["valid_until"]))
        return reply

    async def op_reserve(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        return await self.store.reserve(conn, *lease_request(req))

    async def op_take_over(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        """One take-over attempt; when waiting may help, the connection is told (push
        ``changed``) as soon as etcd sees a lease of it change, so that it tries again then
        rather than polling (one watch per waiting take-over: this attempt's replaces any)."""
        try:
            reply = await self.store.take_over(conn, req.get("leases"))
        except WaitingConflict as e:
            conn.stop_waiting()
            if conn.subscribed:
                conn.waiting = self._spawn(
                    self._tell_change(conn, e.keys, e.revision, self.budget * 3)
                )
            raise
        conn.stop_waiting()  # taken: nothing more to wait for
        conn.acked = max(conn.acked, float(reply["valid_until"]))
        return reply

    async def op_release(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        """Give back what the connection has of ``keys`` (or of ``key``): one transaction."""
        keys = req.get("keys", [req.get("key")])
        if not isinstance(keys, list) or len(keys) > 64:
            raise InvalidArgument("release needs keys: a list of at most 64 lease keys")
        await self.store.release_many(conn, [k for k in keys if isinstance(k, str)])
        return {}

    async def op_peek(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        """The connection's guest is being killed: read now what the release of ``keys`` that
        follows must look at, so that the release is one transaction."""
        keys = req.get("keys")
        if not isinstance(keys, list) or len(keys) > 64:
            raise InvalidArgument("peek needs keys: a list of at most 64 lease keys")
        await self.store.peek(conn, [k for k in keys if isinstance(k, str)])
        return {}

    async def op_follow(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        """The connection's migration is prepared: keep what the release of ``keys`` (the
        handoff) must look at up to date with an etcd watch, so that the release is one
        transaction however soon the guest dies.  No keys: stop (the migration was called
        off)."""
        keys = req.get("keys")
        if not isinstance(keys, list) or len(keys) > 64:
            raise InvalidArgument("follow needs keys: a list of at most 64 lease keys")
        await self.store.follow(conn, [k for k in keys if isinstance(k, str)])
        return {}

    async def op_adopt(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        """A supervisor reconnected (this agent restarted): take up the keys it owns, each
        checked in etcd to be its own on this host's current lease.  Raises BackendError when
        one is not (it is gone: the supervisor's guest must be fenced)."""
        reply = await self.store.adopt(conn, req.get("leases"), self.host)
        conn.look_at_guests()
        conn.acked = max(conn.acked, float(reply["valid_until"]))
        log.info("supervisor pid %s reconnected: %d lease(s) taken up", conn.pid, len(conn.owned))
        return reply

    async def op_ack(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        """The supervisor took the validity push up to ``valid_until`` into account."""
        until = req.get("valid_until")
        if isinstance(until, int | float):
            conn.acked = max(conn.acked, float(until))
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
            "supervisors": sum(1 for c in self.conns if c.subscribed),
            "etcd_requests": dict(self.etcd.requests),
        }

    async def op_release_host(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        """A real host shutdown: revoke the lease (every key of this host goes, every
        supervisor hears it lost) and stop."""
        holding = sum(len(c.owned) for c in self.conns)
        log.warning("releasing the host: %d lease(s) still held go with the etcd lease", holding)
        self.releasing = True
        self.stopping.set()
        return {"released": holding}

    async def _register(self, lease: HostLease) -> None:
        try:
            await self.store.register(self.host, lease, self.keeper.margin)
        except (BackendError, EtcdError, LeaseNotFound) as e:
            self.registered = 0  # tried again with the next keepalive
            log.warning("this host's registration not written: %s", e)

    async def op_hosts(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        """Every host that joined the lockspace: alive while its lease is, dead once etcd
        dropped its lease (its supervisors stopped their guests before that: they fence at
        their local deadline, fence_margin before the lease can expire), since when this
        agent first saw it gone."""
        rows: list[dict[str, Any]] = []
        for name, registration in await self.store.hosts():
            if registration is not None:
                self.gone_at.pop(name, None)
                rows.append(
                    {
                        "name": name,
                        "state": "alive",
                        "since": None,
                        "detail": f"etcd lease {registration.get('lease', 0):x} alive",
                    }
                )
            else:
                since = self.gone_at.setdefault(name, time.time())
                rows.append(
                    {
                        "name": name,
                        "state": "dead",
                        "since": since,
                        "detail": "its etcd lease expired: its guests stopped before that",
                    }
                )
        return {"hosts": rows}

    async def op_wait_free(self, conn: Conn, req: Mapping[str, Any]) -> dict[str, Any]:
        """Wait until none of ``keys`` is held or reserved by anyone, at most ``timeout`` s."""
        keys, timeout = req.get("keys"), req.get("timeout")
        if not isinstance(keys, list) or not 0 < len(keys) <= 64:
            raise InvalidArgument("wait_free needs keys: a list of 1 to 64 lease keys")
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 <= timeout <= 3600
        ):
            raise InvalidArgument(f"wait_free: timeout {timeout!r} is not 0 to 3600 seconds")
        for key in keys:
            self.keys.dir(key)  # a malformed key is refused
        return await self.store.wait_free([str(k) for k in keys], float(timeout))

    async def _tell_change(
        self, conn: Conn, keys: list[bytes], revision: int, timeout: float
    ) -> None:
        if await self.etcd.wait_change(keys, revision, timeout):
            conn.send({"push": "changed"})

    # -- stalled supervisors ------------------------------------------------------------------

    async def watch_acks(self) -> None:
        """Fence the guest of every supervisor that holds keys and did not acknowledge the
        latest validity push in time."""
        while not self.stopping.is_set():
            await asyncio.sleep(WATCH_EVERY)
            now = time.monotonic()
            for conn in list(self.conns):
                held = any(o.held is not None for o in conn.owned.values())
                if not conn.subscribed or conn.fenced or not held or conn.acked >= self.pushed:
                    continue
                if conn.acked and now >= conn.acked - self.margin / 2:
                    await self._fence(conn)

    async def _fence(self, conn: Conn) -> None:
        """Stop the guest of a stalled supervisor by its policy, let its keys go once the guest
        is dead (or paused), tell it.  Only a supervisor (a connection that names its launch)
        has a guest: the children of another holder (a program using the holder itself) are
        never touched.  A supervisor whose guest the agent cannot see or kill keeps its keys
        (it lets them go itself when it runs again; else they go with the host's lease)."""
        conn.fenced = True
        conn.look_at_guests()
        policy = str(conn.who.get("policy") or self.conf["lock_failure"])
        sig = {"poweroff": signal.SIGKILL, "pause": signal.SIGSTOP}.get(policy)
        supervisor = bool(conn.who.get("launch"))
        guests = sorted(conn.guests - {os.getpid()}) if supervisor else []
        for pid in guests:
            if sig is not None and kernel.alive(pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        why = "the supervisor did not acknowledge the lease's validity in time (stalled)"
        running: list[int] = []
        if sig == signal.SIGKILL:  # the guest's writes end when it is dead, not when signalled
            until = time.monotonic() + self.budget
            while any(kernel.alive(p) for p in guests) and time.monotonic() < until:
                await asyncio.sleep(0.01)
            running = [p for p in guests if kernel.alive(p)]
        if (supervisor and not guests) or running:
            log.warning(
                "supervisor pid %s did not acknowledge its deadline; its guest %s: its leases "
                "stay held until it lets them go or this host's lease ends",
                conn.pid,
                f"{running} does not die" if running else "is not visible",
            )
        else:
            why += f": the agent applied policy {policy} to its guest and let its leases go"
            log.warning(
                "supervisor pid %s did not acknowledge its deadline: its guest(s) %s stopped "
                "by policy %s, its leases let go",
                conn.pid,
                guests or "(none: not a supervisor)",
                policy,
            )
            try:
                await self.store.release_many(conn, list(conn.owned), self.budget)
            except (BackendError, EtcdError) as e:
                log.warning("fenced supervisor pid %s: leases not released: %s", conn.pid, e)
        lease = self.lease
        conn.send({"push": "lost", "lease": lease.id if lease else None, "reason": why})

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
                except asyncio.CancelledError:
                    return  # the agent stops: the finally below closes the connection
                if not line:
                    break
                await self._request(conn, line)
        finally:
            self.conns.discard(conn)
            self.store.unfollow(conn)
            conn.stop_waiting()
            writer.close()
            # Not when this agent is stopping: then the connection closed on our side, its
            # supervisor reconnects to the next agent, or the keys go with the lease.
            if conn.owned and not self.stopping.is_set():
                self._spawn(self._cleanup(conn))

    async def _request(self, conn: Conn, line: bytes) -> None:
        rid: Any = None
        try:
            req = wire.decode(line)
            rid = req.get("id")
            handler: Callable[[Conn, Mapping[str, Any]], Awaitable[dict[str, Any]]] | None = (
                getattr(self, f"op_{req.get('op')}", None)
            )
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
        """The supervisor is dead: once its guest is dead too (it dies with the supervisor,
        PR_SET_PDEATHSIG; the guest inherits the connection unless it was made after a restart
        of this agent), release all they had, at once.  What etcd does not take now is tried
        again while the lease it lives on is this host's (else it goes with that lease)."""
        deadline = time.monotonic() + self.ttl
        while any(kernel.alive(p) for p in conn.guests) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        released = 0
        while conn.owned:
            before = len(conn.owned)
            try:
                await self.store.release_many(conn, list(conn.owned), self.budget)
            except (BackendError, EtcdError) as e:
                log.warning("supervisor pid %s gone: release failed: %s", conn.pid, e)
            released += before - len(conn.owned)
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

    # -- start and stop -----------------------------------------------------------------------

    async def _sweep(self, lease_id: int, deadline: float) -> None:
        """Delete the keys on ``lease_id`` that no reconnected supervisor took up by
        ``deadline`` (their supervisors died while no agent ran, or fenced)."""
        await asyncio.sleep(max(0.0, deadline - time.monotonic()) + 0.5)
        owned = {self.keys.exclusive(k) for c in self.conns for k in c.owned}
        owned |= {self.keys.reservation(k) for c in self.conns for k in c.owned}
        owned |= {self.keys.shared(k, c.sid) for c in self.conns for k in c.owned}
        try:
            swept = await self.store.sweep(lease_id, owned)
        except (BackendError, EtcdError) as e:
            log.warning("keys of supervisors that did not reconnect not swept: %s", e)
            return
        if swept:
            log.info("%d key(s) of supervisors that did not reconnect deleted", swept)

    async def start(self) -> None:
        """Become ready: the checks (certificates, authentication, permissions), then the lease
        (the previous agent's, resumed, or a new one).  Raises BackendError saying why not."""
        await preflight.check(self.etcd, self.keys, self.conf, 2 * self.budget)
        previous = self.state.load()
        if previous is not None and await self.keeper.resume(*previous) is not None:
            # A supervisor that does not reconnect by the deadline it was promised has fenced
            # its guest by then: whatever of it is left on the lease goes after that.
            self._spawn(self._sweep(previous[0], previous[1]))
        else:
            await self.keeper.grant()

    async def run(self, ready: Callable[[], None] = lambda: None) -> None:
        """Serve until SIGTERM or SIGINT (the lease stays, for the next agent) or release_host
        (the lease is revoked).  SIGHUP is ignored: it never stops a guest.  ``ready`` is
        called once the agent listens and holds its lease."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._hangup)
        self.state.lock()
        # Listen first: a supervisor that reconnects, or a daemon's one-shot request, is told
        # "not ready yet" (or waits a little) rather than that no agent runs.
        server = await self._listen()
        try:
            await self.start()
        except BaseException:
            server.close()
            os.unlink(self.path)
            raise
        keeper = asyncio.ensure_future(self.keeper.run())
        watcher = asyncio.ensure_future(self.watch_acks())
        members = ", ".join(self.settings["endpoints"])
        log.info("serving %s for host %s, etcd %s", self.path, self.host, members)
        ready()
        try:
            await self.stopping.wait()
        finally:
            server.close()
            self.keeper.stop()
            keeper.cancel()
            watcher.cancel()
            await self._shutdown()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def _hangup(self) -> None:
        log.info("SIGHUP ignored: no guest is stopped; restart the agent to reload its settings")

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
        """Stop.  A service stop or restart keeps the lease (recorded in the run directory) and
        every key: the supervisors reconnect to the next agent, or fence at their deadline.
        release_host revokes the lease: every key of this host goes at once."""
        lease = self.lease
        if self.releasing and lease is not None:
            self._push_all({"push": "lost", "lease": lease.id, "reason": "the host was released"})
            self.state.clear()
            try:
                await self.etcd.revoke(lease.id, self.budget)
                log.info("etcd lease %x revoked: the host is released", lease.id)
            except EtcdError as e:
                log.warning("could not revoke lease %x: %s", lease.id, e)
        elif lease is not None:
            log.info(
                "stopping: etcd lease %x kept for the next agent (%d supervisor(s) reconnect)",
                lease.id,
                sum(1 for c in self.conns if c.subscribed),
            )
        for conn in list(self.conns):
            conn.writer.close()
        for task in list(self.tasks):
            task.cancel()
        await self.etcd.close()
