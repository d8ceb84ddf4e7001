"""A loaded backend, the seed's plugin: :func:`load_driver` and :class:`LockDriver`."""

from __future__ import annotations

import os
import sys
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from lockfsm import backends
from lockfsm.daemon import config
from lockfsm.daemon.flags import NewFlags, ResourceType, check_flags
from lockfsm.daemon.values import HostStatus, Liveness
from lockfsm.errors import IllegalTransition, InvalidArgument, Unsupported, show
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

    def hosts(self) -> list[HostStatus]:
        """Every host of the lockspace the lock service knows, alive or dead.  Raises
        BackendError when the lock service does not answer."""
        return [_status(row) for row in backends.module(self.name).hosts(self.config)]

    def host_status(self, name: str) -> HostStatus:
        """Host ``name`` as the lock service sees it (``Liveness.UNKNOWN`` for a host it does
        not know).  Raises InvalidArgument for a bad name, BackendError when the lock service
        does not answer."""
        if not isinstance(name, str) or not name or len(name) > 255:
            raise InvalidArgument(f"host name {show(name)} is not a host name")
        for status in self.hosts():
            if status.name == name:
                return status
        return HostStatus(name, Liveness.UNKNOWN, None, "the lockspace does not know this host")

    def wait_for_leases(
        self,
        uuid: str,
        resources: Iterable[tuple[ResourceType, str] | tuple[ResourceType, str, int]] = (),
        timeout: float = 60.0,
    ) -> float:
        """Wait until every lease of a guest can be taken -- its own lease (on ``uuid``, when
        ``domain_lease`` is on) and those of ``resources`` ((type, path[, flags]) as
        register_resource takes them) -- or ``timeout`` seconds pass.  Return the seconds
        waited.  A cluster manager restarting a dead host's guests elsewhere calls it, then
        starts the guest as usual (its START still takes the leases, and is refused if another
        host was faster).

        Raises InvalidArgument for a bad uuid, resource or timeout; LeaseConflict (naming a
        holder) when ``timeout`` passed first; Unsupported for a backend with no leases to wait
        for (nop); BackendError when the lock service does not answer."""
        from lockfsm.daemon.resources import ResourceRegistry
        from lockfsm.daemon.values import check_uuid

        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 <= timeout <= 86400
        ):
            raise InvalidArgument(f"timeout {show(timeout)} must be 0 to 86400 seconds")
        if not self.capabilities.per_disk:
            raise Unsupported(f"the {self.name} driver holds no leases to wait for")
        registry = ResourceRegistry(self.backend, self.config)
        for item in resources:
            type_, path, *flags = item
            registry.add(registry.user_resource(type_, path, flags[0] if flags else 0))
        leases = [lease for _, found in registry.everything(check_uuid(uuid)) for lease in found]
        started = time.monotonic()
        backends.module(self.name).wait_free(self.config, leases, float(timeout))
        return time.monotonic() - started

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


def _status(row: Mapping[str, Any]) -> HostStatus:
    return HostStatus(
        str(row["name"]), Liveness(row["state"]), row.get("since"), str(row.get("detail", ""))
    )
