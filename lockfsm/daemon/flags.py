"""The flag and type enums of the seed API (light: ``import lockfsm`` loads them)."""

from __future__ import annotations

import enum

from lockfsm.errors import InvalidArgument, show


class NewFlags(enum.IntFlag):
    """How a manager comes to be (``virLockManagerNew`` flags)."""

    ATTACH = 1
    """Re-attach to the running supervisor of a guest, after a daemon restart."""
    MIGRATE = 2
    """The target of an incoming migration."""


class ResourceType(enum.Enum):
    """What a resource names (``VIR_LOCK_MANAGER_RESOURCE_TYPE_*``)."""

    DISK = "disk"
    """A disk image, by absolute path."""
    LEASE = "lease"
    """An explicit lease, written ``"<lockspace>:<key>"`` (names of letters, digits, ``._-``)."""


class ResourceFlags(enum.IntFlag):
    """How a resource is used (``VIR_LOCK_MANAGER_RESOURCE_*``)."""

    SHARED = 1
    """Several guests use it at once: a shared lease."""
    READONLY = 2
    """The guest only reads it: a shared lease."""


def check_flags(cls: type[enum.IntFlag], value: object, what: str) -> int:
    """``value`` as an int of known bits of ``cls``; raise InvalidArgument naming it otherwise."""

    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be {cls.__name__} flags, not {show(value)}")
    known = 0
    for member in cls:
        known |= member.value
    if value < 0 or value & ~known:
        raise InvalidArgument(
            f"{what} {show(value)} has unknown bits for {cls.__name__} (known: {known:#x})"
        )
    return int(value)
