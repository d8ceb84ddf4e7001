"""Small frozen values, validated when built: a bad value is refused here, by name.

Daemon side only (attrs is not imported by the supervisor).
"""

from __future__ import annotations

import enum
import os
import re
import stat
import time
from typing import Any

import attrs

from lockfsm.daemon.flags import ResourceFlags, ResourceType, check_flags
from lockfsm.errors import InvalidArgument, show

MAX_PATH = 4096
MAX_NAME = 255
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_LEASE_PART = re.compile(r"[A-Za-z0-9._-]{1,48}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1 (NEL, CSI...)


def _text(value: object, what: str, limit: int, errors: str = "strict") -> str:
    """A string without NUL or control characters, of at most ``limit`` bytes once encoded
    (UTF-8, with ``errors``: ``surrogateescape`` for a file name, whose undecodable bytes Python
    shows as lone surrogates; text must be real Unicode)."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string, not {show(value)}")
    if "\x00" in value:
        raise InvalidArgument(f"{what} {show(value)} contains a NUL byte")
    if _CONTROL.search(value):
        raise InvalidArgument(f"{what} {show(value)} contains a control character")
    try:
        size = len(value.encode("utf-8", errors))
    except UnicodeEncodeError as e:
        raise InvalidArgument(
            f"{what} {show(value)} is not valid text ({e.reason} at {e.start})"
        ) from None
    if size > limit:
        raise InvalidArgument(f"{what} {value[:40]!r}... is longer than {limit} bytes")
    return value


def check_uuid(value: object) -> str:
    """RFC 4122 text (8-4-4-4-12 hex digits), returned in lower case."""
    text = _text(value, "uuid", 36)
    if not _UUID.fullmatch(text):
        raise InvalidArgument(f"uuid {text!r} is not RFC 4122 text like 'xxxxxxxx-xxxx-...'")
    return text.lower()


def check_id(value: object) -> int:
    """A domain id: an int from 0 to 2**31 - 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"id must be an int, not {show(value)}")
    if not 0 <= value < 2**31:
        raise InvalidArgument(f"id {show(value)} is out of range (0 to 2**31 - 1)")
    return value


def check_name(value: object) -> str:
    """A domain name: 1 to 255 bytes, no '/', no control character."""
    text = _text(value, "name", MAX_NAME)
    if not text or "/" in text:
        raise InvalidArgument(f"name {text!r} must be non-empty and contain no '/'")
    return text


def _disk_paths(value: object) -> tuple[str, str]:
    """The path as given and its canonical form, for an existing non-directory file."""
    if isinstance(value, os.PathLike):
        try:
            value = os.fspath(value)
        except TypeError as e:
            raise InvalidArgument(f"disk path {show(value)} is not a path: {e}") from None
    path = _text(value, "disk path", MAX_PATH, "surrogateescape")
    if not os.path.isabs(path):
        raise InvalidArgument(f"disk path {show(path)} is not absolute")
    canonical = os.path.realpath(path)
    try:
        # The path as given, as the kernel (and QEMU) will resolve it: realpath alone would
        # accept '/x/missing/../a.img' or 'a.img/', which name no file.
        st = os.stat(path)
        same = os.stat(canonical)
    except OSError as e:
        raise InvalidArgument(f"disk path {show(path)} cannot be used: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"disk path {show(path)} is a directory")
    if (st.st_dev, st.st_ino) != (same.st_dev, same.st_ino):
        raise InvalidArgument(f"disk path {show(path)} changed while it was looked up")
    return path, canonical


def _lease_name(value: object) -> tuple[str, str]:
    text = _text(value, "lease", 2 * 48 + 1)
    parts = text.split(":")
    if len(parts) != 2 or not all(_LEASE_PART.fullmatch(p) for p in parts):
        raise InvalidArgument(
            f"lease {text!r} must read '<lockspace>:<key>' (each 1-48 of A-Z a-z 0-9 . _ -)"
        )
    return text, text


@attrs.frozen
class Resource:
    """A disk or an explicit lease that a guest uses, validated.

    ``canonical`` identifies the resource: two paths that name one file are one resource.
    """

    type: ResourceType
    path: str
    flags: int
    canonical: str

    @classmethod
    def make(cls, type: object, path: object, flags: object = 0) -> Resource:
        """Validate and build.  Raises InvalidArgument naming the bad value."""
        if not isinstance(type, ResourceType):
            raise InvalidArgument(f"resource type must be a ResourceType, not {show(type)}")
        bits = check_flags(ResourceFlags, flags, "resource flags")
        given, canonical = _disk_paths(path) if type is ResourceType.DISK else _lease_name(path)
        return cls(type, given, bits, canonical)

    @property
    def shared(self) -> bool:
        """SHARED and READONLY resources take shared leases; the others exclusive ones."""
        return bool(self.flags & (ResourceFlags.SHARED | ResourceFlags.READONLY))

    @property
    def ident(self) -> tuple[ResourceType, str]:
        return (self.type, self.canonical)

    def describe(self) -> str:
        kind = "disk" if self.type is ResourceType.DISK else "lease"
        mode = "shared" if self.shared else "exclusive"
        return f"{kind} {self.path} ({mode})"

    def to_wire(self, leases: list[dict[str, str]]) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "path": self.path,
            "canonical": self.canonical,
            "flags": self.flags,
            "leases": leases,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Resource:
        """A resource as a supervisor reports it (already validated when it was registered)."""
        return cls(ResourceType(d["type"]), d["path"], int(d["flags"]), d["canonical"])


class Liveness(enum.Enum):
    """What the lock service can tell of another host."""

    ALIVE = "alive"
    """It holds its place in the lockspace (its etcd lease, its sanlock delta lease)."""
    DEAD = "dead"
    """Its guests have stopped by the protocol's own timing: a cluster manager may restart
    them elsewhere (once their leases can be taken: LockDriver.wait_for_leases)."""
    UNKNOWN = "unknown"
    """The lock service cannot tell (it does not answer, or the backend cannot know)."""


@attrs.frozen
class HostStatus:
    """One host of a lockspace as the lock service sees it: ``state``; for a dead host,
    ``since``, the instant (epoch seconds) from which its guests have stopped (None where the
    lock service does not say); ``detail``, how the backend knows."""

    name: str
    state: Liveness
    since: float | None = None
    detail: str = ""


@attrs.frozen
class HistoryEntry:
    """One move a manager made: ``source --event--> dest`` at ``at`` (epoch seconds), in
    ``seconds``."""

    source: str
    event: str
    dest: str
    at: float = attrs.field(factory=time.time)
    seconds: float = 0.0


COOKIE_PREFIX = "lockfsm-cookie-1:"


@attrs.frozen
class MigrationCookie:
    """What the source tells the target (``prepare_migrate`` → ``set_parameter``): the migration,
    the guest, and every resource with the leases that protect it.  Opaque to the daemons: a
    prefix and base64url JSON, at most 64 KiB."""

    migration: str
    uuid: str
    name: str
    id: int
    driver: str
    source: str
    hosturi: str
    resources: tuple[dict[str, Any], ...]

    def encode(self) -> str:
        import base64
        import json

        body = json.dumps(attrs.asdict(self), separators=(",", ":"), sort_keys=True)
        return COOKIE_PREFIX + base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: object) -> MigrationCookie:
        """Parse and check a cookie.  Raises InvalidArgument saying what is wrong with it."""
        import base64
        import binascii
        import json

        from lockfsm.protocol import wire

        if not isinstance(text, str) or not text.startswith(COOKIE_PREFIX):
            raise InvalidArgument(
                f"migration_cookie {str(text)[:40]!r}... is not a lockfsm migration cookie"
            )
        if len(text) > 64 * 1024:
            raise InvalidArgument("migration_cookie is over 64 KiB")
        body = text[len(COOKIE_PREFIX) :]
        try:
            raw = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (binascii.Error, ValueError, RecursionError) as e:
            raise InvalidArgument(f"migration_cookie is garbled: {str(e)[:80]}") from None
        fields = {f.name for f in attrs.fields(cls)}
        if not isinstance(raw, dict) or set(raw) != fields:
            raise InvalidArgument(f"migration_cookie must carry exactly {sorted(fields)}")
        if not isinstance(raw["resources"], list):
            raise InvalidArgument("migration_cookie resources must be a list")
        for res in raw["resources"]:
            wire.check_resource(res)
        wire.check_text(raw["migration"], "migration id", 16)
        wire.check_text(raw["driver"], "driver", 32)
        wire.check_text(raw["source"], "source host", 255)
        wire.check_text(raw["hosturi"], "hosturi", 1024)
        return cls(
            migration=raw["migration"],
            uuid=check_uuid(raw["uuid"]),
            name=check_name(raw["name"]),
            id=check_id(raw["id"]),
            driver=raw["driver"],
            source=raw["source"],
            hosturi=raw["hosturi"],
            resources=tuple(raw["resources"]),
        )

    def leases(self) -> set[tuple[str, str]]:
        """(key, mode) of every lease the cookie names."""
        return {(lease["key"], lease["mode"]) for r in self.resources for lease in r["leases"]}
