"""The etcd key schema of a lockspace, as a value: where each lease's keys live, and what their
values say.

Under ``<prefix>L/<lease key>/``: ``x`` the exclusive holder, ``s/<host>.<pid>`` each shared
holder, ``r`` a migration target's reservation.  A value names its holder (host, supervisor pid,
launch, domain uuid and name, the resource) as JSON; an exclusive key handed off to a migration
target holds a *marker* that only that target's reservation matches.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

from lockfsm.errors import InvalidArgument
from lockfsm.protocol import wire

_KINDS = {b"x": "exclusive", b"r": "reserved", b"s": "shared"}
_HANDED = b'{"handed_off_to":'


class KeySchema:
    """The keys of one lockspace (one ``prefix``)."""

    __slots__ = ("prefix", "root")

    # Under the prefix: L/<lease key>/... the leases, H/<host> the hosts' registrations (on
    # their leases), K/<host> every host that ever joined.

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.encode()
        self.root = self.prefix + b"L/"

    def host(self, name: str) -> bytes:
        """The registration of host ``name``: on its etcd lease, so it goes when the lease
        does (the host's liveness, for the other hosts)."""
        return self.prefix + b"H/" + name.encode()

    @property
    def hosts(self) -> bytes:
        return self.prefix + b"H/"

    def member(self, name: str) -> bytes:
        """Host ``name`` joined the lockspace once (no lease: it stays when the host dies)."""
        return self.prefix + b"K/" + name.encode()

    @property
    def members(self) -> bytes:
        return self.prefix + b"K/"

    def dir(self, key: str) -> bytes:
        """The directory of lease ``key``.  Raises InvalidArgument for a malformed key."""
        if not wire.LEASE_KEY.fullmatch(key):
            raise InvalidArgument(f"lease key {key!r} is malformed")
        return self.root + key.encode() + b"/"

    def exclusive(self, key: str) -> bytes:
        return self.dir(key) + b"x"

    def reservation(self, key: str) -> bytes:
        return self.dir(key) + b"r"

    def shared(self, key: str, sid: str) -> bytes:
        return self.dir(key) + b"s/" + sid.encode()

    def parse(self, full: bytes) -> tuple[str, str]:
        """(lease key, kind: exclusive, reserved, shared or ?) of a key under the root."""
        parts = full[len(self.root) :].split(b"/")
        kind = _KINDS.get(parts[1], "?") if len(parts) > 1 else "?"
        return parts[0].decode(errors="replace"), kind

    def kind_in(self, directory: bytes, full: bytes) -> str:
        """ "x", "r" or "s" (any shared holder) of a key in a lease's ``directory``."""
        rel = full[len(directory) :]
        return "s" if rel.startswith(b"s/") else rel.decode(errors="replace")


def _json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def holder_value(who: Mapping[str, Any], mode: str, resource: str) -> bytes:
    """The value of a holder's key (unique: a nonce, so that a value compares as its own)."""
    return _json({**who, "mode": mode, "resource": resource, "nonce": secrets.token_hex(6)})


def reservation_value(who: Mapping[str, Any], mode: str, resource: str) -> bytes:
    return _json(
        {**who, "reserved": True, "mode": mode, "resource": resource, "nonce": secrets.token_hex(6)}
    )


def marker(reservation: bytes) -> bytes:
    """The value of an exclusive key handed off to the holder of ``reservation``: only that
    holder's take-over can match it, and only it can be built from the reservation's bytes."""
    return _HANDED + reservation + b"}"


def is_marker(data: bytes) -> bool:
    return data.startswith(_HANDED)


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
