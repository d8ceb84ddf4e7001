"""The control socket's wire format, both ends (light: the supervisor imports it).

One message is one JSON object on one line.  A request is at most :data:`MAX_MESSAGE` bytes with
its newline, ``{"op": <op>, ...}`` with exactly the fields :data:`REQUESTS` lists for the op, each
name once; a reply (and a record) at most :data:`MAX_REPLY` bytes, ``{"ok": true, ...}`` or
``{"ok": false, "error": <class name>, "message": <text>}``.  Anything else is refused with an
error reply that says why, and changes nothing.  Every error message is short
(:data:`MAX_ERROR` characters at most, a bad value shown cut), so that refusing a request of any
size is an answer, never an oversized reply.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Mapping
from typing import Any

from lockfsm.errors import (
    BY_NAME,
    BackendError,
    InvalidArgument,
    LeaseConflict,
    LockFSMError,
    show,
)

MAX_MESSAGE = 64 * 1024
# A reply carries the supervisor's whole state (every resource, with paths of up to 4 KiB each):
# its own, larger bound.  The launch spec travels in one argv string (128 KiB at most on Linux).
MAX_REPLY = 1024 * 1024
MAX_ERROR = 2048
MAX_PATH = 4096  # bytes, as PATH_MAX
PROTOCOL = 1
LAUNCH = re.compile(r"[0-9a-f]{16}")
LEASE_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1 (NEL, CSI...)

#: op -> {field: type}; "gen" (the controller generation) is required where listed.
REQUESTS: dict[str, dict[str, type]] = {
    "hello": {},
    "get_child": {},
    "attach": {},
    "acquire": {"gen": int, "resource": dict},
    "release": {"gen": int, "resource": dict},
    "shutdown": {"gen": int, "grace": float},
    "prepare": {"gen": int, "migration": str, "hosturi": str},
    "resume": {"gen": int},
    "hand_off": {"gen": int},
    "take_over": {"gen": int, "timeout": float},
    "cancel": {"gen": int},
    "lease_lost": {"reason": str},
}


def encode(message: Mapping[str, Any], limit: int = MAX_REPLY) -> bytes:
    """One line of JSON.  Raises InvalidArgument when it would be over ``limit`` bytes."""
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"
    if len(data) > limit:
        raise InvalidArgument(f"message of {len(data)} bytes is over the {limit} limit")
    return data


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        names = [k for k, _ in pairs]
        twice = sorted({k for k in names if names.count(k) > 1})
        raise ValueError(f"field {show(twice[0], 40)} appears more than once")
    return obj


def decode(line: bytes, limit: int = MAX_MESSAGE) -> dict[str, Any]:
    """One message, from one line (with or without its newline) of at most ``limit`` bytes with
    its newline.  A field named twice is refused (a message reads one way only).  Raises
    InvalidArgument."""
    size = len(line) + (not line.endswith(b"\n"))
    if size > limit:
        raise InvalidArgument(f"message of {size} bytes is over the {limit} limit")
    try:
        obj = json.loads(line.decode("utf-8"), object_pairs_hook=_unique)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InvalidArgument(f"message is not JSON text: {str(e)[:80]}") from None
    if not isinstance(obj, dict):
        raise InvalidArgument(f"message is not a JSON object: {line[:60]!r}")
    return obj


def _path_ok(value: Any) -> bool:
    """A path as lockfsm's values accept one: a non-empty string of at most MAX_PATH bytes, no
    NUL or control character (a path ends up in log lines and error messages)."""
    if not isinstance(value, str) or not value or _CONTROL.search(value):
        return False
    return len(value.encode("utf-8", "surrogatepass")) <= MAX_PATH


def check_resource(res: Any) -> dict[str, Any]:
    """A resource as it crosses the socket: type, path, canonical, flags, leases."""
    if not isinstance(res, dict) or set(res) != {"type", "path", "canonical", "flags", "leases"}:
        raise InvalidArgument(
            f"resource must have type, path, canonical, flags, leases: {show(res)}"
        )
    if res["type"] not in ("disk", "lease"):
        raise InvalidArgument(f"resource type {show(res['type'])} is unknown")
    for k in ("path", "canonical"):
        if not _path_ok(res[k]):
            raise InvalidArgument(
                f"resource {k} {show(res[k])} is not a usable path (1 to {MAX_PATH} bytes, "
                "no control character)"
            )
    if isinstance(res["flags"], bool) or not isinstance(res["flags"], int) or res["flags"] & ~3:
        raise InvalidArgument(f"resource flags {show(res['flags'])} are unknown")
    leases = res["leases"]
    if not isinstance(leases, list) or len(leases) > 8:
        raise InvalidArgument(f"resource leases {show(leases)} must be a list of at most 8")
    for lease in leases:
        if (
            not isinstance(lease, dict)
            or not {"key", "mode"} <= set(lease) <= {"key", "mode", "version"}
            or not isinstance(lease["key"], str)
            or not LEASE_KEY.fullmatch(lease["key"])
            or lease["mode"] not in ("exclusive", "shared")
            or not _version_ok(lease.get("version", 0))
        ):
            raise InvalidArgument(
                f"lease {show(lease)} must be {{key, mode[, version]}} with a plain key"
            )
    return res


def _version_ok(value: Any) -> bool:
    """A lease version (handoff data: the holder's lease version, a fencing token)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _as_float(value: int) -> float:
    try:
        return float(value)
    except OverflowError:  # an int too large for a float: out of every range anyway
        return float("inf") if value > 0 else float("-inf")


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """(op, fields) of a well-formed request.  Raises InvalidArgument naming what is wrong."""
    msg = decode(line)
    op = msg.pop("op", None)
    if not isinstance(op, str) or op not in REQUESTS:
        raise InvalidArgument(f"unknown op {show(op)} (known: {', '.join(REQUESTS)})")
    want = REQUESTS[op]
    if set(msg) != set(want):
        raise InvalidArgument(f"op {op} takes fields {sorted(want)}, got {show(sorted(msg))}")
    for name, kind in want.items():
        value = msg[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = msg[name] = _as_float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InvalidArgument(f"field {name} of op {op} must be {kind.__name__}: {show(value)}")
    if "resource" in msg:
        check_resource(msg["resource"])
    for key in ("grace", "timeout"):
        if key in msg and not 0.0 <= msg[key] <= 3600.0:
            raise InvalidArgument(f"{key} {show(msg[key])} must be 0 to 3600 seconds")
    if "migration" in msg and not LAUNCH.fullmatch(msg["migration"]):
        raise InvalidArgument(f"migration id {show(msg['migration'])} must be 16 hex digits")
    if "hosturi" in msg:
        check_text(msg["hosturi"], "hosturi", 1024)
    if "reason" in msg:
        check_text(msg["reason"], "reason", 1024)
    return op, msg


def check_text(value: Any, what: str, limit: int) -> str:
    """A printable, non-empty string of at most ``limit`` characters."""
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidArgument(
            f"{what} {show(value)} must be a non-empty string of at most {limit} characters"
        )
    if _CONTROL.search(value):
        raise InvalidArgument(f"{what} {show(value)} contains a control character")
    return value


def lost_message(info: Mapping[str, Any]) -> str:
    """What LeaseLost says, from a supervisor's record or hello that reports a failure."""
    failure = info["failure"]
    return (
        f"a lease of {info.get('name')!r} was lost ({failure['reason']}); "
        f"policy {failure['policy']} was applied and nothing is held"
    )


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 3] + "..."


def error_reply(err: BaseException) -> dict[str, Any]:
    """The reply that reports ``err`` (by the class of the error tree it is, or BackendError):
    always small enough to send, whatever ``err`` says."""
    name = next((c.__name__ for c in type(err).__mro__ if c.__name__ in BY_NAME), "BackendError")
    reply: dict[str, Any] = {"ok": False, "error": name, "message": _cut(str(err))}
    if isinstance(err, LeaseConflict):
        reply["resource"] = _cut(err.resource)
        reply["holder"] = _cut(err.holder)
    return reply


def raise_reply(reply: Mapping[str, Any]) -> None:
    """Raise the error a failed reply carries (its own class, from the error tree)."""
    if reply.get("ok") is True:
        return
    cls = BY_NAME.get(str(reply.get("error")), BackendError)
    message = str(reply.get("message", "supervisor refused the request"))
    if cls is LeaseConflict:
        raise LeaseConflict(message, str(reply.get("resource", "")), str(reply.get("holder", "")))
    if cls is LockFSMError or cls.__name__ == "IllegalTransition":
        cls = BackendError  # the supervisor's own machine refused: a race with the guest's end
    raise cls(message)


def recv_line(sock: socket.socket) -> bytes:
    """Read one line (bounded) from a blocking socket.  b'' if the peer closed first."""
    buf = b""
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        buf += chunk
        if len(buf) > MAX_REPLY:
            raise BackendError(f"reply over {MAX_REPLY} bytes")
    return buf.split(b"\n", 1)[0]


def call(path: str, request: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """Send one request to the supervisor at socket ``path``; return its successful reply.

    Raises the reply's error, ``ConnectionError``/``FileNotFoundError``/``TimeoutError`` when no
    supervisor answers (the caller decides what that means), BackendError for a garbled reply.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(encode(request, MAX_MESSAGE))
        line = recv_line(s)
    if not line:
        raise ConnectionResetError(f"supervisor at {path} closed the connection")
    try:
        reply = decode(line, MAX_REPLY)
    except InvalidArgument as e:
        raise BackendError(f"garbled reply from supervisor at {path}: {e}") from None
    raise_reply(reply)
    return reply
