"""A loaded backend, the seed's plugin: :func:`load_driver` and :class:`LockDriver`."""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lockfsm import backends
from lockfsm.daemon import config
from lockfsm.daemon.flags import NewFlags, check_flags
from lockfsm.errors import IllegalTransition, InvalidArgument, Unsupported
from lockfsm.protocol.states import DomainState

if TYPE_CHECKING:
    from lockfsm.daemon.manager import LockManager

_NO_FLAGS = NewFlags(0)


def load_driver(
    name: str, config: Mapping[str, Any] | str | os.PathLike[str] | None = None
) -> LockDriver:
    """Load backend ``name`` (``nop``, ``fcntl``, ``sanlock``, ``etcd``) with ``config`` (a
    mapping or a TOML file path).

    Raises InvalidArgument for an unknown name, an unknown configuration key or a bad value;
    BackendError when the backend's lock service cannot be used (sanlock's daemon, etcd's
    lease agent).
    """
    return LockDriver(name, config)


def supervisor_command() -> tuple[str, list[str]]:
    """The program a daemon runs as the supervisor, and the arguments that come first."""
    script = os.path.join(os.path.dirname(sys.executable), "lockfsm-supervisor")
    if os.access(script, os.X_OK):
        return script, []
    return sys.executable, ["-m", "lockfsm.supervisor"]


class LockDriver:
    """A loaded backend (``virLockManagerPluginLoad``).  Makes managers; unloads."""

    def __init__(self, name: str, conf: Mapping[str, Any] | str | os.PathLike[str] | None) -> None:
        mod = backends.module(name)
        cls = mod.BACKEND
        self.name: str = cls.name
        self.config: dict[str, Any] = config.load({**config.COMMON_KEYS, **cls.config_keys}, conf)
        self.backend: backends.Backend = cls(self.config)
        self.capabilities: backends.Capabilities = cls.capabilities
        self._managers: weakref.WeakSet[LockManager] = weakref.WeakSet()
        self._unloaded = False

    def new_manager(self, flags: NewFlags | int = _NO_FLAGS) -> LockManager:
        """A manager for one guest (``virLockManagerNew``).

        Raises InvalidArgument for unknown flags or ATTACH with MIGRATE, Unsupported for MIGRATE
        on a backend without migration, IllegalTransition after :meth:`unload`.
        """
        from lockfsm.daemon.manager import LockManager

        bits = check_flags(NewFlags, flags, "new_manager flags")
        if self._unloaded:
            raise IllegalTransition("driver", "unloaded", "new_manager")
        if bits & NewFlags.ATTACH and bits & NewFlags.MIGRATE:
            raise InvalidArgument(
                f"new_manager flags {flags!r}: ATTACH and MIGRATE exclude each other"
            )
        if bits & NewFlags.MIGRATE and not self.capabilities.migration:
            raise Unsupported(f"the {self.name} driver does not support migration")
        manager = LockManager(self, NewFlags(bits))
        self._managers.add(manager)
        return manager

    def forget(self, manager: LockManager) -> None:
        """A freed manager is no longer this driver's."""
        self._managers.discard(manager)

    def unload(self, force: bool = False) -> None:
        """Unload (``virLockManagerPluginUnload``).  Raises IllegalTransition while managers made
        by this driver are not freed, unless ``force``; running guests keep their leases either
        way."""
        if self._unloaded:
            raise IllegalTransition("driver", "unloaded", "unload")
        alive = [m for m in self._managers if m.state is not DomainState.FREED]
        if alive and not force:
            names = ", ".join(sorted(repr(m.label) for m in alive)[:5])
            raise IllegalTransition(
                "driver", "loaded", "unload", f"{len(alive)} manager(s) not freed: {names}"
            )
        self._unloaded = True
