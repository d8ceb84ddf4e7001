"""The ``etcd`` backend: leases as keys in an etcd v3 cluster that many hosts share.

Every host runs one lease agent, ``lockfsm-etcd-agent`` (lockfsm/etcd_agent.py): it holds the
host's one connection to etcd (every member as an endpoint) and the host's one etcd *lease*,
kept alive every TTL/3, and performs each acquire, release, reservation and take-over as one etcd
transaction on a supervisor's behalf.  This module is the light half that the daemon and the
supervisors import: plain sockets and JSON lines to the agent, no event loop, no gRPC.

Keys, under ``<prefix>L/<lease key>/`` (the lease key is the SHA-256 hex of the disk's canonical
path): ``x`` the exclusive holder, ``s/<host>.<pid>`` each shared holder, ``r`` a migration
target's reservation.  A value names its holder (host, supervisor pid, launch, domain uuid and
name, the resource) as JSON.  Every key lives on its host's etcd lease, so a dead host's keys go
when its lease expires (after the TTL); a dead supervisor's keys go at once, when the agent sees
its connection close (the guest inherits that connection, so only once the guest is dead too).

Acquire is one transaction: exclusive, "nothing under the lease's directory"; shared, "no ``x``
and no ``r``".  The handoff: the source's release of a reserved lease turns ``x`` into a marker
"handed off to <the reservation>" on the target host's etcd lease, and the target's take-over
is one transaction over every lease that compares each ``x`` with that marker and with the
create revision the cookie carries (the fencing token), and moves them all to the target.  The
protocol, the fencing timeline and why the agent (not each supervisor) holds the connection are
in specs/PROTOCOL.md, section "The etcd backend".

Self-fencing: the agent pushes, after each keepalive reply, the instant until which the lease is
proven alive (keepalive *sent* + TTL - fence_margin, on this host's monotonic clock).  The
holder keeps the latest; when it passes with no newer one, :meth:`EtcdHolder.poll` reports the
leases lost, for good, and the supervisor stops the guest by its lock-failure policy, before
etcd could grant the keys to anyone else.
"""

from __future__ import annotations

import os
import re
import select
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from lockfsm.backends import Capabilities, ConfigKey, LeaseView
from lockfsm.errors import BackendError, InvalidArgument, LeaseConflict, LeaseLost, LockFSMError
from lockfsm.protocol import tables, wire
from lockfsm.protocol.launch import LaunchSpec

CAPABILITIES = Capabilities(
    per_disk=True,
    shared=True,
    hotplug=True,
    migration=True,
    atomic_handoff=True,  # one transaction moves every lease, checked against the cookie
    holder_death_frees="a dead supervisor's at once (its agent deletes them); a dead host's "
    "after the etcd lease TTL",
    self_fencing=True,  # the guest is stopped before the TTL can run out
    spans_hosts="any network",
)

#: What each holder call has the host's agent do in etcd, as the diagrams' sequence charts label
#: it (None: nothing).
TRACE: dict[str, str | None] = {
    "acquire": "txn: put {kind} if free",
    "reserve": "txn: put r (reservation)",
    "take_over": "txn: x = handoff marker and create rev = {version} -> x := ours, delete r",
    "settle": None,
    "release": "txn: delete {kind} (x reserved by a target: x := handoff marker)",
    "unreserve": "txn: delete r",
}

AGENT_SOCKET = "etcd-agent.sock"  # in run_dir unless agent_socket says otherwise
RECONNECT_PAUSE = 0.1  # seconds between tries to reach a restarted agent
DEFAULT_PORT = 2379
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_PREFIX = re.compile(r"/(?:[A-Za-z0-9._-]+/){0,8}")
_MAX_SOCKET = 107


# -- configuration -------------------------------------------------------------------------------


def scheme(text: str) -> str:
    """``https`` or ``http`` (the default) of an endpoint."""
    return text.split("://", 1)[0] if "://" in text else "http"


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port``, ``http://host:port``, ``https://host:port`` or ``host`` (port 2379) ->
    (host, port).  Raises ValueError."""
    rest = text
    if "://" in text:
        kind, rest = text.split("://", 1)
        if kind not in ("http", "https"):
            raise ValueError(f"{text!r}: an endpoint is http:// or https://, not {kind}://")
    rest = rest.rstrip("/")
    if rest.startswith("["):  # [v6]:port
        host, _, port_text = rest[1:].partition("]")
        port_text = port_text.removeprefix(":")
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    else:
        host, port_text = rest, ""
    if not host or any(c in host for c in "/@ ") or "\x00" in host:
        raise ValueError(f"{text!r} is not an endpoint (host:port)")
    port = DEFAULT_PORT
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{text!r}: {port_text!r} is not a port")
        port = int(port_text)
    return host, port


def _endpoints(value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, list) or not value or len(value) > 16:
        raise ValueError(f"{value!r} is not a list of 1 to 16 endpoints ('host:port')")
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"{item!r} is not an endpoint ('host:port')")
        parse_endpoint(item)
    if len({scheme(item) for item in value}) > 1:
        raise ValueError(f"{value!r} mixes http:// and https:// endpoints: one cluster, one way")
    return list(value)


def _ttl(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3600:
        raise ValueError(f"{value!r} is not a whole number of seconds in 1..3600")
    return value


def _margin(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1800:
        raise ValueError(f"{value!r} is not a number of seconds in (0, 1800)")
    return float(value)


def _host_name(value: Any) -> str:
    if not isinstance(value, str) or not _HOST_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a host name (1-63 of A-Z a-z 0-9 . _ -)")
    return value


def _default_host_name() -> str:
    name = socket.gethostname().split(".")[0]
    if not _HOST_NAME.fullmatch(name):
        raise ValueError(f"this machine's name {name!r} is not usable: set it")
    return name


def _prefix(value: Any) -> str:
    if not isinstance(value, str) or not _PREFIX.fullmatch(value) or len(value) > 128:
        raise ValueError(f"{value!r} is not a key prefix like '/lockfsm/' (starts and ends in /)")
    return value


def _socket(value: Any) -> str:
    if value == "":
        return ""
    if not isinstance(value, str) or not os.path.isabs(value):
        raise ValueError(f"{value!r} is not an absolute path")
    if len(value.encode()) > _MAX_SOCKET:
        raise ValueError(f"{value!r} is longer than {_MAX_SOCKET} bytes (Unix socket paths)")
    return value


def _file(value: Any) -> str:
    if value == "":
        return ""
    if not isinstance(value, str) or not os.path.isabs(value):
        raise ValueError(f"{value!r} is not an absolute path")
    return value


def _user(value: Any) -> str:
    if value == "":
        return ""
    if not isinstance(value, str) or not _HOST_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not an etcd user name (1-63 of A-Z a-z 0-9 . _ -)")
    return value


CONFIG_KEYS: Mapping[str, ConfigKey] = {
    "endpoints": ConfigKey(
        _endpoints,
        lambda: [f"127.0.0.1:{DEFAULT_PORT}"],
        "the etcd members, each 'host:port' (give every member: the agent fails over)",
    ),
    "ttl": ConfigKey(_ttl, lambda: 10, "seconds of the host's etcd lease (a dead host's bound)"),
    "fence_margin": ConfigKey(
        _margin,
        lambda: None,
        "seconds before the TTL runs out at which a guest whose lease cannot be proven alive "
        "is stopped (default ttl/4; below ttl/2)",
    ),
    "host_name": ConfigKey(
        _host_name, _default_host_name, "this host's name in the keys (unique per host)"
    ),
    "prefix": ConfigKey(_prefix, lambda: "/lockfsm/", "the etcd key prefix of the lockspace"),
    "agent_socket": ConfigKey(
        _socket, lambda: "", f"the lease agent's socket (default <run_dir>/{AGENT_SOCKET})"
    ),
    "ca_file": ConfigKey(
        _file,
        lambda: "",
        "https endpoints: the CA certificates (PEM) that sign the etcd members' certificates "
        "(default: the system's)",
    ),
    "cert_file": ConfigKey(
        _file,
        lambda: "",
        "this host's client certificate (PEM), for etcd's --client-cert-auth; with auth "
        "enabled etcd takes its CN as the user",
    ),
    "key_file": ConfigKey(_file, lambda: "", "the client certificate's private key (PEM)"),
    "user": ConfigKey(
        _user, lambda: "", "an etcd user, for etcd's password authentication (with password_file)"
    ),
    "password_file": ConfigKey(
        _file, lambda: "", "a file (mode 0600) holding the user's password on its first line"
    ),
}


def agent_socket(config: Mapping[str, Any]) -> str:
    """The path of this host's lease agent socket."""
    return str(config.get("agent_socket") or os.path.join(config["run_dir"], AGENT_SOCKET))


def fence_margin(config: Mapping[str, Any]) -> float:
    """The fencing margin in seconds.  Raises InvalidArgument naming the key if it is not below
    half the TTL (a keepalive every TTL/3 must fit before the local deadline)."""
    ttl = float(config["ttl"])
    margin = config.get("fence_margin")
    if margin is None:
        return ttl / 4
    if not float(margin) < ttl / 2:
        raise InvalidArgument(
            f"configuration key 'fence_margin': {margin!r} must be below half the ttl ({ttl:g} s)"
        )
    return float(margin)


def _read(config: Mapping[str, Any], key: str, private: bool = False) -> bytes:
    path = config[key]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if private and st.st_mode & 0o077:
                raise InvalidArgument(
                    f"configuration key {key!r}: {path} is readable by others "
                    f"(mode {st.st_mode & 0o777:o}): make it 0600"
                )
            with os.fdopen(os.dup(fd), "rb") as f:
                return f.read(1 << 20)
        finally:
            os.close(fd)
    except OSError as e:
        raise InvalidArgument(f"configuration key {key!r}: {path}: {e.strerror}") from None


def credentials(config: Mapping[str, Any]) -> Any:
    """The agent's :class:`~lockfsm.backends.etcd.client.Credentials`, read from the files the
    configuration names.  Raises InvalidArgument naming the key and the file (missing,
    unreadable, a private key or password readable by others, a certificate without its key,
    TLS files for http:// endpoints, a PEM file that is not one)."""
    from lockfsm.backends.etcd.client import Credentials

    tls = scheme(config["endpoints"][0]) == "https"
    files = [k for k in ("ca_file", "cert_file", "key_file") if config.get(k)]
    if files and not tls:
        raise InvalidArgument(
            f"configuration key {files[0]!r} is for https:// endpoints; the endpoints are http://"
        )
    if bool(config.get("cert_file")) != bool(config.get("key_file")):
        raise InvalidArgument("configuration keys 'cert_file' and 'key_file' go together")
    if bool(config.get("user")) != bool(config.get("password_file")):
        raise InvalidArgument("configuration keys 'user' and 'password_file' go together")
    ca = _read(config, "ca_file") if config.get("ca_file") else None
    cert = _read(config, "cert_file") if config.get("cert_file") else None
    key = _read(config, "key_file", private=True) if config.get("key_file") else None
    for name, data in (("ca_file", ca), ("cert_file", cert)):
        if data is not None and b"-----BEGIN CERTIFICATE-----" not in data:
            raise InvalidArgument(
                f"configuration key {name!r}: {config[name]} is not a PEM certificate"
            )
    if key is not None and b"PRIVATE KEY-----" not in key:
        raise InvalidArgument(
            f"configuration key 'key_file': {config['key_file']} is not a PEM private key"
        )
    password = None
    if config.get("password_file"):
        lines = _read(config, "password_file", private=True).decode(errors="replace").splitlines()
        password = lines[0] if lines else ""
    return Credentials(tls, ca, cert, key, config.get("user") or None, password)


def agent_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a daemon and its host's agent must agree on (checked at load_driver)."""
    return {
        "endpoints": list(config["endpoints"]),
        "ttl": int(config["ttl"]),
        "fence_margin": fence_margin(config),
        "host_name": config["host_name"],
        "prefix": config["prefix"],
    }


# -- talking to the agent (synchronous, no event loop) -----------------------------------------


def agent_call(path: str, request: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """One request to the lease agent at ``path`` on a connection of its own; its reply.

    Raises BackendError when no agent answers, or the reply's error (LeaseConflict,
    InvalidArgument, BackendError)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(wire.encode({"id": 1, **request}))
            while True:  # a message that is not the reply to this request is never taken for it
                line = wire.recv_line(s)
                if not line:
                    raise BackendError(f"the lockfsm-etcd-agent at {path} closed the connection")
                reply = wire.decode(line)
                if reply.get("id") == 1:
                    break
    except OSError as e:
        raise BackendError(
            f"no lockfsm-etcd-agent answers at {path} ({e.strerror or e}): start it with "
            "`lockfsm-etcd-agent <config file>` on this host"
        ) from None
    _raise_reply(reply)
    return reply


def _raise_reply(reply: Mapping[str, Any]) -> None:
    if reply.get("ok") is True:
        return
    message = str(reply.get("message", "the lease agent refused the request"))
    error = reply.get("error")
    if error == "LeaseConflict":
        raise LeaseConflict(
            message,
            str(reply.get("resource", "")),
            str(reply.get("holder", "")),
            final=bool(reply.get("final")),
        )
    if error == "InvalidArgument":
        raise InvalidArgument(message)
    if error == "LeaseLost":
        raise LeaseLost(message)
    raise BackendError(message)


# -- the naming half ----------------------------------------------------------------------------


class EtcdBackend:
    """The naming half (daemon side): pure naming, plus a check that this host's agent runs
    with the same settings.  It talks to etcd only through the agent."""

    name = "etcd"
    capabilities = CAPABILITIES
    config_keys: Mapping[str, ConfigKey] = CONFIG_KEYS

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config
        self.settings = agent_settings(config)  # raises InvalidArgument on a bad margin
        self.socket = agent_socket(config)
        info = agent_call(self.socket, {"op": "hello"}, 5.0)
        theirs = info.get("settings")
        if theirs != self.settings:
            raise BackendError(
                f"the lockfsm-etcd-agent at {self.socket} runs with {theirs}, not this "
                f"configuration's {self.settings}: one host, one configuration"
            )

    def leases(
        self, resource_type: str, path: str, canonical: str, shared: bool
    ) -> list[dict[str, str]]:
        import hashlib  # here, not at the top: the supervisor never needs it

        text = f"lease:{path}" if resource_type == "lease" else canonical
        key = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
        return [{"key": key, "mode": "shared" if shared else "exclusive"}]

    def holders(self) -> list[dict[str, Any]]:
        """Every key of the lockspace, across all hosts, as etcd has it now: ``{"key": lease
        key, "kind": "exclusive" | "shared" | "reserved" | "handed-off", "holder": the value}``.
        Raises BackendError when the agent or etcd cannot answer."""
        rows: list[dict[str, Any]] = agent_call(self.socket, {"op": "holders"}, 10.0)["holders"]
        return rows


# -- the holding half ---------------------------------------------------------------------------


def _identity() -> dict[str, Any]:
    """Who this supervisor is, for the value of its keys: from the launch spec on its command
    line (which names it there for readers like this one)."""
    ident: dict[str, Any] = {"pid": os.getpid()}
    spec = LaunchSpec.of_process(sys.argv[1:])
    if spec is not None:
        ident.update(name=str(spec.name)[:256], uuid=str(spec.uuid)[:256], launch=spec.launch)
        ident["policy"] = spec.policy()
        if spec.migration:
            ident["migration"] = str(spec.migration["id"])
    return ident


class EtcdHolder:
    """The holding half (supervisor side): one connection to this host's lease agent, which
    the guest inherits (so the agent frees the keys only once supervisor and guest are dead).
    Plain sockets and JSON lines; no etcd client, no event loop.

    When the agent restarts (its connection closes), the holder connects to the new agent and
    has it take up (``adopt``) the keys it owns; until its local deadline passes, nothing is
    lost.  If the new agent does not have them (a new etcd lease: the old one expired), the
    leases are lost.  Each validity push is acknowledged, so that the agent can tell a stalled
    supervisor and stop its guest.

    Each method keeps the contract of lockfsm/backends/__init__.py.  Besides what it names
    there, every call that talks to the agent raises BackendError when no agent answers or etcd
    does not answer it in time, and LeaseLost when the fencing deadline passes during the
    call (the supervisor is then told by :meth:`poll`)."""

    def __init__(self, config: Mapping[str, Any], view: LeaseView) -> None:
        self.view = view
        self.path = agent_socket(config)
        ttl = float(config["ttl"])
        # The agent answers within its own budget (a few tries of min(1, ttl/4) s each).
        self.budget = 3 * min(1.0, ttl / 4) + 2.0
        self.sock: socket.socket | None = None
        self.buf = b""
        self.eof = False
        self.ids = 0
        self.revisions: dict[str, int] = {}  # key -> the create revision of our exclusive key
        self.lease_id: int | None = None  # the etcd lease our held keys are on
        self.valid_until = 0.0  # monotonic instant until which that lease is proven alive
        self.lost: str | None = None
        self.abandoned: dict[int, str] = {}  # request id -> lease key of an unanswered acquire
        self.notify: list[str] = []
        self.reconnect_at: float | None = None  # the agent went: try to reach the next one then
        self.changed = False  # etcd saw a key a waiting take-over needs change

    # -- the connection ---------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        if self.sock is not None:
            return self.sock
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.settimeout(5.0)
            s.connect(self.path)
        except OSError as e:
            s.close()
            raise BackendError(
                f"no lockfsm-etcd-agent answers at {self.path} ({e.strerror or e})"
            ) from None
        s.setblocking(False)
        self.sock, self.eof, self.buf = s, False, b""
        try:
            self._call({"op": "hello", "who": _identity(), "subscribe": True})
        except BackendError:
            self._gone("the lockfsm-etcd-agent did not answer its hello")
            raise
        return s

    def _reconnect(self) -> None:
        """The agent restarted: reach the new one and have it take up every key this holder
        owns (all on the same etcd lease, or the leases are lost).  Tried again later when no
        agent answers yet."""
        self.reconnect_at = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        try:
            self._connect()
            owned = [
                {"key": k, "mode": self.view.lease(k)["mode"], "state": "held"}
                for k in self.view.keys(*tables.LEASE_HOLDS)
            ]
            owned += [
                {"key": k, "mode": self.view.lease(k)["mode"], "state": "reserved"}
                for k in self.view.keys("reserved")
            ]
            reply = self._call({"op": "adopt", "leases": owned}) if owned else None
        except (BackendError, InvalidArgument) as e:
            if self.eof or self.sock is None:
                self.reconnect_at = time.monotonic() + RECONNECT_PAUSE
                return
            self._lose(f"the restarted lockfsm-etcd-agent does not have this guest's keys: {e}")
            return
        except LeaseConflict as e:
            self._lose(f"the restarted lockfsm-etcd-agent does not have this guest's keys: {e}")
            return
        if reply is not None and self._holding():
            self._held_on(reply)
        print(
            "lockfsm-supervisor: reconnected to the restarted lockfsm-etcd-agent", file=sys.stderr
        )

    def _send(self, data: bytes, deadline: float) -> None:
        assert self.sock is not None
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
                view = view[sent:]
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    if len(view) < len(data):  # half a line is out: the stream is broken
                        self._gone("a message to the lockfsm-etcd-agent was cut off")
                    raise BackendError("the lockfsm-etcd-agent does not read its socket") from None
                select.select([], [self.sock], [], left)
            except OSError as e:
                self._gone(f"the connection to the lockfsm-etcd-agent failed: {e}")
                raise BackendError(f"the lockfsm-etcd-agent at {self.path}: {e}") from None

    def _drain(self) -> list[dict[str, Any]]:
        """Every whole message the agent has sent so far (never blocks)."""
        if self.sock is None or self.eof:
            return []
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self._gone(f"the connection to the lockfsm-etcd-agent failed: {e}")
                break
            if not chunk:
                self._gone("the lockfsm-etcd-agent closed the connection (it died or restarted)")
                break
            self.buf += chunk
            if len(self.buf) > 2 * wire.MAX_MESSAGE and b"\n" not in self.buf:
                self.buf = b""
                self._gone("the lockfsm-etcd-agent sent a message over the size limit")
                break
        messages = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            try:
                messages.append(wire.decode(line))
            except InvalidArgument:
                continue
        return messages

    def _gone(self, why: str) -> None:
        """The connection to the agent is gone (it died or restarted): reconnect, until the
        local deadline passes (then :meth:`poll` reports the loss)."""
        self.eof = True
        if (
            self.lost is None
            and self.reconnect_at is None
            and self.view.keys(*tables.LEASE_HOLDS, "reserved")
        ):
            print(f"lockfsm-supervisor: {why}; reconnecting", file=sys.stderr)
            self.reconnect_at = time.monotonic()

    def _call(self, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send one request and wait for its reply, handling pushes meanwhile.  Never waits past
        the fencing deadline while a lease is held.  Raises the reply's error, BackendError."""
        if self.eof and request["op"] not in ("hello", "adopt"):
            self._reconnect()
        if self.eof:
            raise BackendError(f"the lockfsm-etcd-agent at {self.path} is gone")
        self.ids += 1
        rid = self.ids
        deadline = time.monotonic() + (self.budget if timeout is None else timeout)
        self._send(wire.encode({**request, "id": rid}), deadline)
        while True:
            reply = None
            for msg in self._drain():
                if msg.get("id") == rid:
                    reply = msg
                else:
                    self._message(msg)
            if reply is not None:
                _raise_reply(reply)
                return reply
            if self.eof:
                raise BackendError(f"the lockfsm-etcd-agent at {self.path} is gone")
            now = time.monotonic()
            limit = deadline
            if self._holding() and self.lost is None:
                limit = min(limit, self.valid_until)
            if now >= limit:
                if request["op"] in ("acquire", "take_over"):
                    self.abandoned[rid] = str(request.get("key", ""))
                if self._holding() and now >= self.valid_until:
                    self._lose("the lockfsm-etcd-agent did not prove the lease alive in time")
                    raise LeaseLost(f"{self.lost} (during {request['op']})")
                raise BackendError(
                    f"the lockfsm-etcd-agent did not answer {request['op']} in "
                    f"{self.budget if timeout is None else timeout:g} s"
                )
            assert self.sock is not None
            select.select([self.sock], [], [], limit - now)

    def _message(self, msg: Mapping[str, Any]) -> None:
        """A push from the agent, or a late reply to a request given up on."""
        push = msg.get("push")
        if push == "valid":
            lease, until = msg.get("lease"), msg.get("valid_until")
            if not isinstance(until, float | int):
                return
            if self._holding() and self.lease_id is not None and lease != self.lease_id:
                self._lose(
                    f"this host's etcd lease {self.lease_id:x} was replaced: its keys are gone"
                )
            elif lease == self.lease_id:
                self.valid_until = max(self.valid_until, float(until))
            if self.lost is None:
                try:  # the agent fences a supervisor that stops acknowledging
                    self._send(
                        wire.encode({"op": "ack", "valid_until": until, "id": 0}),
                        time.monotonic() + 0.5,
                    )
                except BackendError:
                    pass
        elif push == "changed":
            self.changed = True
        elif push == "lost":
            if self._holding() and msg.get("lease") == self.lease_id:
                self._lose(str(msg.get("reason", "the lease agent lost this host's etcd lease")))
        elif "id" in msg and msg["id"] in self.abandoned:
            key = self.abandoned.pop(msg["id"])
            if msg.get("ok") is True and key:  # taken after all: give it back
                try:
                    self._send(
                        wire.encode({"op": "release", "keys": [key], "id": 0}),
                        time.monotonic() + 1.0,
                    )
                except BackendError:
                    pass

    # -- fencing ------------------------------------------------------------------------------

    def _holding(self, besides: str = "") -> bool:
        """Whether a key other than ``besides`` is held (its lease machine says so)."""
        return any(k != besides for k in self.view.keys(*tables.LEASE_HOLDS))

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            print(f"lockfsm-supervisor: etcd leases lost: {why}", file=sys.stderr)

    def _held_on(self, reply: Mapping[str, Any]) -> None:
        """Keys are now held on the reply's lease, proven alive until its ``valid_until``."""
        lease = int(reply["lease"])
        if self.lease_id is not None and lease != self.lease_id and self._holding():
            self._lose(f"this host's etcd lease {self.lease_id:x} was replaced: its keys are gone")
        if lease != self.lease_id:
            self.valid_until = 0.0
        self.lease_id = lease
        self.valid_until = max(self.valid_until, float(reply["valid_until"]))

    def watch(self, notify: list[str]) -> None:
        # The agent pushes the lease's validity over the connection; the supervisor's own timer
        # (next_check) is the fence.  Connect now, so that a missing agent refuses the start.
        self.notify = list(notify)
        self._connect()

    def event_fds(self) -> list[int]:
        return [] if self.sock is None or self.eof else [self.sock.fileno()]

    notifies_changes = True  # a waiting take-over is told when to try again (an etcd watch)

    def take_over_due(self) -> bool:
        """Whether etcd saw a lease a waiting take-over needs change since the last attempt."""
        for msg in self._drain():
            self._message(msg)
        due, self.changed = self.changed, False
        return due

    def next_check(self) -> float | None:
        if self.lost is not None:
            return None
        times = [self.valid_until] if self._holding() else []
        if self.reconnect_at is not None:
            times.append(self.reconnect_at)
        return min(times) if times else None

    def poll(self) -> str | None:
        due = self.reconnect_at
        if due is not None and self.lost is None and time.monotonic() >= due:
            self._reconnect()
        for msg in self._drain():
            self._message(msg)
        if self.lost is None and self._holding() and time.monotonic() >= self.valid_until:
            self._lose(
                "the lockfsm-etcd-agent did not prove this host's etcd lease alive before the "
                "local deadline (last keepalive sent + TTL - fence_margin)"
            )
        return self.lost

    # -- the contract ---------------------------------------------------------------------------

    def reserve(self, lease: Mapping[str, Any], resource: str) -> None:
        """Put this migration's reservation ``r``.  Raises LeaseConflict if another target
        reserves the lease."""
        self._connect()
        self._call(
            {"op": "reserve", "key": lease["key"], "mode": lease["mode"], "resource": resource}
        )

    def acquire(self, lease: Mapping[str, Any], resource: str) -> None:
        """Take the lease in one transaction.  Raises LeaseConflict naming the holder."""
        self._connect()
        reply = self._call(
            {"op": "acquire", "key": lease["key"], "mode": lease["mode"], "resource": resource}
        )
        self._held_on(reply)
        if reply.get("revision") is not None:
            self.revisions[lease["key"]] = int(reply["revision"])

    def take_over(self, group: Sequence[tuple[Mapping[str, Any], str]]) -> None:
        """One transaction moves every lease of ``group`` from the source to us, or none (each
        compared with the handoff marker and the create revision the cookie carries).  Raises
        LeaseConflict, ``final`` when the lease changed hands or vanished since the cookie was
        made."""
        reply = self._call(
            {
                "op": "take_over",
                "leases": [
                    {"key": le["key"], "mode": le["mode"], "version": le.get("version")}
                    for le, _ in group
                ],
                "resource": group[0][1] if group else "",
            }
        )
        self._held_on(reply)
        for key, revision in reply.get("revisions", {}).items():
            if revision is not None:
                self.revisions[key] = int(revision)

    def probe(self, lease: Mapping[str, str], resource: str) -> None:
        # The take-over is one transaction that takes every lease or none: an attempt bound to
        # fail takes nothing, so there is nothing to find out first.
        return

    def settle(self, lease: Mapping[str, str]) -> None:
        pass  # the reservation went in the take-over transaction

    def release(self, leases: Sequence[Mapping[str, Any]]) -> None:
        """Give the leases back, in one request and one etcd transaction; a lease given up while
        a migration target reserves it is handed off to that target.  Raises BackendError for
        a lease this holder does not have; never for one it has (a failure is reported and left
        to the agent)."""
        keys = [le["key"] for le in leases]
        missing = [k for k in keys if self.view.state(k) not in tables.LEASE_HOLDS]
        if missing:
            raise BackendError(f"lease {missing[0]} is not held by this supervisor")
        for key in keys:
            self.revisions.pop(key, None)
        last = not any(k not in keys for k in self.view.keys(*tables.LEASE_HOLDS))
        self._give(keys)  # pushes may come meanwhile: the keys are still on lease_id
        if last:
            self.lease_id = None

    def expect_release(self) -> None:
        """Ask the agent to read, while the guest dies, what the coming release must look at
        (its keys and their reservations): the release is then one transaction.  No reply is
        awaited; a failure only leaves the release to read for itself."""
        keys = self.view.keys(*tables.LEASE_HOLDS)
        if keys:
            self._hint("peek", keys)

    def expect_handoff(self, prepared: bool) -> None:
        """Ask the agent to follow (an etcd watch) the reservations of every held lease while
        the migration is prepared, or to stop (``prepared`` false): the handoff's release is
        then one transaction however soon the guest dies.  No reply is awaited; a failure only
        leaves the release to read for itself."""
        self._hint("follow", self.view.keys(*tables.LEASE_HOLDS) if prepared else [])

    def _hint(self, op: str, keys: list[str]) -> None:
        """Send ``op`` over ``keys`` to the agent, awaiting no reply; nothing while the leases
        are lost or no agent is connected, and nothing lost if it cannot be sent."""
        if self.lost is not None or self.eof or self.sock is None:
            return
        try:
            self._send(wire.encode({"op": op, "keys": keys, "id": 0}), time.monotonic() + 0.1)
        except BackendError:
            pass

    def unreserve(self, leases: Sequence[Mapping[str, Any]]) -> None:
        """Let the reservations go (the migration was called off)."""
        self._give([le["key"] for le in leases])

    def _give(self, keys: list[str]) -> None:
        if not keys:
            return
        if self.lost is not None:
            if self.eof:
                return  # lost, and the agent is gone: its keys go with its lease
            # Lost already: tell the agent, but never wait for it (it may be the reason; the
            # supervisor is letting everything go after stopping the guest).
            try:
                self._send(
                    wire.encode({"op": "release", "keys": keys, "id": 0}), time.monotonic() + 0.1
                )
            except BackendError:
                pass
            return
        try:
            self._call({"op": "release", "keys": keys})
        except LockFSMError as e:
            # Not held by this supervisor any more either way; the agent deletes what is left
            # when the connection closes, etcd when the lease expires.
            print(f"lockfsm-supervisor: etcd release of {', '.join(keys)}: {e}", file=sys.stderr)

    def handoff_data(self, lease: Mapping[str, Any]) -> dict[str, int]:
        revision = self.revisions.get(lease["key"])
        if lease["mode"] != "exclusive" or revision is None:
            return {}  # shared leases coexist: nothing to hand over atomically
        return {"version": revision}

    def inheritable_fds(self) -> list[int]:
        return [] if self.sock is None else [self.sock.fileno()]


BACKEND = EtcdBackend


def make_holder(config: Mapping[str, Any], view: LeaseView) -> EtcdHolder:
    return EtcdHolder(config, view)


def holders(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every key of the lockspace, across all hosts (EtcdBackend.holders).  Raises
    BackendError when the agent or etcd cannot answer."""
    return EtcdBackend(config).holders()


def hosts(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every host that joined the lockspace, alive or dead (see the agent's op_hosts).
    Raises BackendError when the agent or etcd cannot answer."""
    rows: list[dict[str, Any]] = agent_call(agent_socket(config), {"op": "hosts"}, 10.0)["hosts"]
    return rows


def wait_free(
    config: Mapping[str, Any], leases: Sequence[Mapping[str, Any]], timeout: float
) -> None:
    """Wait (an etcd watch, in the agent) until none of ``leases`` has a key.  Raises
    LeaseConflict naming a holder when ``timeout`` passed first, BackendError."""
    keys = [le["key"] for le in leases]
    if not keys:
        return
    reply = agent_call(
        agent_socket(config), {"op": "wait_free", "keys": keys, "timeout": timeout}, timeout + 15.0
    )
    if not reply.get("free"):
        first = reply.get("held", [{}])[0]
        raise LeaseConflict(
            f"lease {first.get('key')} is still held after {timeout:g} s, by "
            f"{first.get('holder', 'another holder')}",
            f"lease {first.get('key')}",
            str(first.get("holder", "")),
        )
