"""The seed API: :func:`load_driver`, :class:`LockDriver`, :class:`LockManager`.

A manager is one guest's lifecycle, as the daemon sees it (``specs/domain.toml``).  Each public
call is one event of that table: the capability the event requires is checked, then the move is
looked up (IllegalTransition if there is none), then its guards and actions run through the shared
``transitions`` machine, and the new state is committed last.  Calls on one manager are serialised
by the manager's own lock, so a manager may be used from several threads.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

from lockfsm import backends
from lockfsm.daemon import config
from lockfsm.daemon.flags import NewFlags, ResourceFlags, ResourceType, check_flags
from lockfsm.daemon.machine import build, triggers
from lockfsm.daemon.values import (
    HistoryEntry,
    MigrationCookie,
    Resource,
    check_id,
    check_name,
    check_uuid,
)
from lockfsm.errors import (
    BackendError,
    IllegalTransition,
    InvalidArgument,
    LeaseConflict,
    LeaseLost,
    Unsupported,
    show,
)
from lockfsm.protocol import rundir, tables, wire
from lockfsm.protocol.states import DomainState

log = logging.getLogger("lockfsm.core")  # one line per move of a domain machine
log_control = logging.getLogger("lockfsm.control")  # one line per request to a supervisor


def _lock_failure(value: Any) -> str:
    try:
        return config.check_policy(value)
    except ValueError as e:
        raise InvalidArgument(f"lock_failure {e}") from None


#: Parameter keys and their checks (``virLockManagerSetParameter``).
PARAMETERS = {
    "id": check_id,
    "uuid": check_uuid,
    "name": check_name,
    "migration_cookie": MigrationCookie.decode,
    "lock_failure": _lock_failure,
}

#: First and longest wait between attempts to reach a supervisor that is starting (a start takes
#: ~70 ms: a longer wait would be noticed late).
_POLL = (0.001, 0.004)
#: The lockspace of the guests' own leases (``domain_lease``): ``lockfsm-domains:<uuid>``.
DOMAIN_LOCKSPACE = "lockfsm-domains"
_NO_FLAGS = NewFlags(0)
_NO_RESOURCE_FLAGS = ResourceFlags(0)


def load_driver(
    name: str, config: Mapping[str, Any] | str | os.PathLike[str] | None = None
) -> LockDriver:
    """Load backend ``name`` (``nop``, ``fcntl``, ``sanlock``) with ``config`` (a mapping or a
    TOML file path).

    Raises InvalidArgument for an unknown name, an unknown configuration key or a bad value.
    """
    return LockDriver(name, config)


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


def _supervisor_command() -> tuple[str, list[str]]:
    script = os.path.join(os.path.dirname(sys.executable), "lockfsm-supervisor")
    if os.access(script, os.X_OK):
        return script, []
    return sys.executable, ["-m", "lockfsm.supervisor"]


class LockManager:
    """One guest's lock manager.  Made by :meth:`LockDriver.new_manager`, never directly."""

    def __init__(self, driver: LockDriver, flags: NewFlags) -> None:
        self._driver = driver
        self._flags = flags
        self._fsm = DomainState.IDLE
        self._params: dict[str, Any] = {}
        self._resources: dict[tuple[ResourceType, str], tuple[Resource, list[dict[str, str]]]] = {}
        self._history: list[HistoryEntry] = []
        self._lock = threading.RLock()
        self._launch: str | None = None
        self._gen = 1
        self._child: int | None = None
        self._cookie: str | None = None
        self._found: dict[str, Any] = {}
        self._failure: dict[str, Any] | None = None

    # -- what the daemon reads -------------------------------------------------------------------

    @property
    def state(self) -> DomainState:
        """The current state, a :class:`DomainState`."""
        return self._fsm

    @property
    def history(self) -> tuple[HistoryEntry, ...]:
        """The moves this manager made, oldest first."""
        return tuple(self._history)

    @property
    def failure(self) -> str | None:
        """Why the guest's leases were lost and what was done to the guest (state ``failed``),
        or None."""
        f = self._failure
        if f is None:
            return None
        return f"{f['reason']} (policy {f['policy']})"

    @property
    def flags(self) -> NewFlags:
        return self._flags

    @property
    def label(self) -> str:
        return str(self._params.get("name") or self._params.get("uuid") or f"manager@{id(self):x}")

    @property
    def resources(self) -> tuple[Resource, ...]:
        """The resources whose leases the guest holds (or will hold at start)."""
        return tuple(r for r, _ in self._resources.values())

    @property
    def supervisor_path(self) -> str:
        """The program the daemon runs (``virLockManagerGetSupervisorPath``)."""
        return _supervisor_command()[0]

    @property
    def supervisor_args(self) -> list[str]:
        """The supervisor's arguments (``virLockManagerGetSupervisorArgs``): the daemon runs
        ``[supervisor_path, *supervisor_args, "--", *guest_argv]``.  Read it after the last
        :meth:`register_resource`.

        Raises IllegalTransition unless the manager is idle and made for a fresh start,
        InvalidArgument while uuid, name or id is unset, or when the driver requires a lease
        for disks (``require_lease_for_disks``) and the guest has disks but none.
        """
        with self._lock:
            if self._fsm is not DomainState.IDLE or self._flags & NewFlags.ATTACH:
                raise IllegalTransition("domain", self._fsm.value, "supervisor_args")
            for guard in ("identity_set", "cookie_set") if self._flags else ("identity_set",):
                reason = self._guard(guard, {})
                if reason:
                    raise InvalidArgument(reason)
            self._check_required_leases()
            if self._launch is None:
                self._launch = secrets.token_hex(8)
            cookie = self._params.get("migration_cookie")
            spec = {
                "v": wire.PROTOCOL,
                "driver": self._driver.name,
                "config": self._driver.config,
                "launch": self._launch,
                "uuid": self._params["uuid"],
                "name": self._params["name"],
                "id": self._params["id"],
                "mode": "incoming" if cookie else "start",
                "lock_failure": self._params.get("lock_failure"),
                "migration": {"id": cookie.migration, "from": cookie.source} if cookie else None,
                "resources": [
                    r.to_wire(self._with_handoff(leases, cookie))
                    for r, leases in self._all_resources()
                ],
            }
            prefix = _supervisor_command()[1]
            return [
                *prefix,
                *("--name", spec["name"], "--uuid", spec["uuid"]),
                *("--launch", json.dumps(spec)),
            ]

    # -- the seed's calls, one event each ----------------------------------------------------------

    def set_parameter(self, key: str, value: Any) -> None:
        """Set ``id`` (int >= 0), ``uuid`` (RFC 4122 text), ``name``, ``lock_failure`` (this
        domain's policy when a lease is lost: ``poweroff``, ``pause`` or ``ignore``; the driver's
        ``lock_failure`` setting by default) or, on a MIGRATE manager, ``migration_cookie``.

        Raises InvalidArgument for another key or a bad value, IllegalTransition unless idle.
        """
        with self._lock:
            self._legal("set_parameter")
            check = PARAMETERS.get(key) if isinstance(key, str) else None
            if check is None:
                raise InvalidArgument(f"unknown parameter {key!r} (known: {', '.join(PARAMETERS)})")
            if key == "migration_cookie" and not self._flags & NewFlags.MIGRATE:
                raise InvalidArgument("migration_cookie is for a NewFlags.MIGRATE manager only")
            self._fire("set_parameter", key=key, value=check(value))

    def register_resource(
        self, type: ResourceType, path: str, flags: ResourceFlags | int = _NO_RESOURCE_FLAGS
    ) -> None:
        """Register a resource the guest needs from its start.

        Raises InvalidArgument for a bad type, path or flags, a resource registered twice
        (two paths naming one file are one resource), or a lease in the lockspace lockfsm keeps
        for the guests' own leases; IllegalTransition unless idle.
        """
        with self._lock:
            self._legal("register_resource")
            self._fire("register_resource", resource=self._user_resource(type, path, flags))

    def _user_resource(self, type: object, path: object, flags: object) -> Resource:
        res = Resource.make(type, path, flags)
        if self._is_domain_lease(res.type, res.path):
            raise InvalidArgument(
                f"lease {res.path!r}: the lockspace {DOMAIN_LOCKSPACE!r} is lockfsm's own "
                "(each guest's lease on its uuid)"
            )
        return res

    def get_child(self, timeout: float = 30.0) -> int:
        """The guest's pid, once its supervisor holds every lease (``virLockManagerGetChild``).

        Fresh start: waits up to ``timeout`` s for the supervisor the daemon ran with
        :attr:`supervisor_args`.  ATTACH: finds the running supervisor of the uuid.
        Raises LeaseConflict (naming the resource) if the supervisor could not get a lease (it
        then exits by itself, having started no guest); BackendError if no supervisor answers, or
        the guest exited already; InvalidArgument if uuid/name/id are unset or, on ATTACH, do not
        match the supervisor's; IllegalTransition in another state.
        """
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or not 0 < timeout <= 86400
        ):
            raise InvalidArgument(
                f"timeout {show(timeout)} must be a number of seconds in (0, 86400]"
            )
        with self._lock:
            if self._flags & NewFlags.ATTACH and self._fsm is DomainState.IDLE:
                self._legal("get_child")
                reason = self._guard("identity_set", {})
                if reason:
                    raise InvalidArgument(reason)
                self._found = self._find_supervisor(float(timeout))
            self._fire("get_child", timeout=float(timeout))
            assert self._child is not None
            return self._child

    def acquire_resource(
        self, type: ResourceType, path: str, flags: ResourceFlags | int = _NO_RESOURCE_FLAGS
    ) -> None:
        """Hot-plug: the supervisor takes the resource's leases; add the device after this returns.

        Raises LeaseConflict if held elsewhere (nothing is then held), InvalidArgument for a bad
        or already registered resource, Unsupported without the hot-plug capability,
        IllegalTransition unless started, BackendError if the supervisor is gone.
        """
        with self._lock:
            self._legal("acquire_resource")
            self._fire("acquire_resource", resource=self._user_resource(type, path, flags))

    def release_resource(
        self, type: ResourceType, path: str, flags: ResourceFlags | int = _NO_RESOURCE_FLAGS
    ) -> None:
        """Hot-unplug: the supervisor gives the resource's leases back; call it after the device
        is gone.

        Raises InvalidArgument if the resource is not registered (with these flags), Unsupported
        without the hot-plug capability, IllegalTransition unless started, BackendError if the
        supervisor is gone.
        """
        with self._lock:
            self._legal("release_resource")
            self._fire("release_resource", resource=self._registered(type, path, flags))

    def prepare_migrate(self, hosturi: str) -> str:
        """Source: allow a migration to ``hosturi`` and return the cookie the target daemon gives
        its manager with ``set_parameter("migration_cookie", cookie)``.

        Raises Unsupported if the backend cannot migrate, IllegalTransition unless started,
        InvalidArgument for a bad hosturi, BackendError if the supervisor is gone.
        """
        with self._lock:
            self._legal("prepare_migrate")
            self._fire("prepare_migrate", hosturi=wire.check_text(hosturi, "hosturi", 1024))
            assert self._cookie is not None
            return self._cookie

    def complete_migrate_in(self, cancel: bool = False) -> None:
        """Finish a migration (``virLockManagerCompleteMigrateIn``), on either side.

        Source: its guest is killed (it executes no more), then every lease is given up.
        Target: returns once it holds every lease, waiting up to the ``handoff_timeout``
        setting for the source's completion; only then may the daemon let the guest run.
        ``cancel=True``: the target's incoming guest is killed (it held nothing; a target whose
        incoming guest already exited cancels too); the source goes back to started, having
        kept every lease.

        Raises Unsupported if the backend cannot migrate; IllegalTransition unless migrating;
        LeaseConflict on the target if a lease did not come free in time (the manager stays
        migrating_in: cancel it); BackendError if the supervisor is gone.
        """
        if not isinstance(cancel, bool):
            raise InvalidArgument(f"cancel must be True or False, not {cancel!r}")
        with self._lock:
            self._fire("complete_migrate_in", cancel=cancel)

    def check(self) -> DomainState:
        """Ask the supervisor whether the guest's leases are safe; return the state.

        A lost lease (the supervisor applied the domain's lock-failure policy) moves the manager
        to ``failed`` and :attr:`failure` says why; any other call that reaches such a
        supervisor raises LeaseLost and does the same.  Raises IllegalTransition unless started,
        migrating or failed; BackendError if the supervisor is gone without a lease loss (the
        guest exited or was killed).
        """
        with self._lock:
            self._legal("check")
            if self._fsm is not DomainState.FAILED:
                self._failure = self._ask_failure()
            self._fire("check")
            return self._fsm

    def _ask_failure(self) -> dict[str, Any] | None:
        """The failure the supervisor reports (from its record once it has exited), or None."""
        assert self._launch is not None
        try:
            info = self._call(self._launch, {"op": "hello"}, 5.0)
        except (BackendError, LeaseLost):
            record = rundir.read_record(self._run_dir, self._launch)
            if record is None or not record.get("failure"):
                raise
            info = record
        failure: dict[str, Any] | None = info.get("failure")
        return failure

    def shutdown(self) -> None:
        """Stop the guest if it still runs; return once every lease is released.

        Succeeds when the supervisor has already gone.  Raises IllegalTransition unless started,
        BackendError if the supervisor runs but does not answer.
        """
        with self._lock:
            self._fire("shutdown")

    def free(self) -> None:
        """Forget the manager (``virLockManagerFree``).  Never releases a lease: a guest still
        running keeps them and can be re-attached.  Raises IllegalTransition once freed."""
        with self._lock:
            self._fire("free")

    # -- the engine ------------------------------------------------------------------------------

    def _legal(self, event: str) -> None:
        """Raise before any argument is even looked at if the event cannot happen now."""
        capability = tables.DOMAIN.requires.get(event)
        if capability and not getattr(self._driver.capabilities, capability):
            raise Unsupported(f"the {self._driver.name} driver does not support {capability}")
        if not tables.DOMAIN.candidates(self._fsm.value, event):
            raise IllegalTransition("domain", self._fsm.value, event)

    def _fire(self, event: str, **args: Any) -> None:
        from lockfsm.protocol.engine import choose

        self._legal(event)
        source = self._fsm
        started = time.monotonic()
        try:
            moved = _TRIGGERS[event](self, **args)
        except LeaseLost as e:
            # The supervisor lost a lease and applied the policy: the call is refused (nothing
            # it asked for happened) and the manager moves to failed, as check() would.
            if event != "check" and self._fsm is not DomainState.FAILED:
                self._failure = {"reason": str(e), "policy": self._policy()}
                if tables.DOMAIN.candidates(self._fsm.value, "check"):
                    self._fire("check")
            raise
        if not moved:
            choose(tables.DOMAIN, source.value, event, self._guard, args)  # raises the refusal
            raise AssertionError("transitions refused a move the table allows")  # pragma: no cover
        seconds = time.monotonic() - started
        self._history.append(HistoryEntry(source.value, event, self._fsm.value, seconds=seconds))
        log.info(
            "move machine=domain domain=%s from=%s event=%s to=%s duration_ms=%.3f",
            self.label,
            source.value,
            event,
            self._fsm.value,
            seconds * 1000,
            extra={
                "machine": "domain",
                "domain": self.label,
                "source": source.value,
                "event": event,
                "dest": self._fsm.value,
                "duration": seconds,
            },
        )

    def _guard(self, name: str, args: Mapping[str, Any]) -> str | None:
        if name == "start_mode":
            return None if not self._flags else f"manager made with {self._flags!r}"
        if name == "attach_mode":
            return None if self._flags & NewFlags.ATTACH else "manager not made with ATTACH"
        if name == "migrate_mode":
            return None if self._flags & NewFlags.MIGRATE else "manager not made with MIGRATE"
        if name in ("cancel", "no_cancel"):
            return None if args["cancel"] is (name == "cancel") else f"cancel={args['cancel']}"
        if name == "found_failed":
            found = self._found.get("state")
            return None if self._found.get("failure") else f"the supervisor is {found}, not failed"
        if name.startswith("found_"):
            want = {"found_running": "running", "found_migrating_out": "migrating_out"}
            found = self._found.get("state")
            expected = want.get(name, "incoming")
            if self._found.get("failure"):
                return f"the supervisor lost a lease ({found}), it is not {expected}"
            return None if found == expected else f"the supervisor is {found}, not {expected}"
        if name == "cookie_set":
            return self._cookie_mismatch()
        if name == "supervisor_failed":
            return None if self._failure else "the supervisor reports no lost lease"
        if name == "supervisor_sound":
            return f"a lease was lost: {self.failure}" if self._failure else None
        if name == "identity_set":
            missing = [k for k in ("uuid", "name", "id") if k not in self._params]
            return f"set_parameter {', '.join(missing)} first" if missing else None
        if name == "resource_new":
            res: Resource = args["resource"]
            have = self._resources.get(res.ident)
            if have is None:
                return None
            return f"{res.describe()} names the same file as registered {have[0].describe()}"
        if name == "resource_known":
            res = args["resource"]
            return None if res.ident in self._resources else f"{res.describe()} is not registered"
        raise AssertionError(f"unknown guard {name}")  # pragma: no cover

    def _act(self, name: str, args: Mapping[str, Any]) -> None:
        getattr(self, f"_do_{name}")(args)

    @staticmethod
    def _with_handoff(
        leases: list[dict[str, Any]], cookie: MigrationCookie | None
    ) -> list[dict[str, Any]]:
        """The leases, with the source's handoff data (a lease version) where the cookie has it."""
        if cookie is None:
            return leases
        theirs = {le["key"]: le for r in cookie.resources for le in r["leases"]}
        return [
            {**le, **{k: v for k, v in theirs[le["key"]].items() if k == "version"}}
            for le in leases
        ]

    def _check_required_leases(self) -> None:
        """require_lease_for_disks: a guest with disks needs some lease."""
        conf = self._driver.config
        require = conf["require_lease_for_disks"]
        if require is None:
            require = not conf["auto_disk_leases"]
        if not require or not self._driver.capabilities.per_disk:
            return
        disks = [r for r, _ in self._resources.values() if r.type is ResourceType.DISK]
        if disks and not any(leases for _, leases in self._resources.values()):
            raise InvalidArgument(
                f"require_lease_for_disks: {self.label!r} has disks ({disks[0].path}"
                f"{', ...' if len(disks) > 1 else ''}) but no lease: register a "
                "ResourceType.LEASE, or turn auto_disk_leases on"
            )

    @staticmethod
    def _is_domain_lease(type: object, path: object) -> bool:
        kind = type.value if isinstance(type, ResourceType) else type
        return kind == "lease" and str(path).startswith(f"{DOMAIN_LOCKSPACE}:")

    def _domain_lease(self) -> list[tuple[Resource, list[dict[str, str]]]]:
        """The guest's own exclusive lease, on its uuid (``domain_lease``): whatever its disks,
        the guest runs on one host at a time, and a migration target takes over only once the
        source has handed off (a guest with shared disks only has nothing else exclusive)."""
        if not self._driver.config["domain_lease"] or "uuid" not in self._params:
            return []
        res = Resource.make(ResourceType.LEASE, f"{DOMAIN_LOCKSPACE}:{self._params['uuid']}")
        leases = self._driver.backend.leases(res.type.value, res.path, res.canonical, False)
        return [(res, leases)] if leases else []

    def _all_resources(self) -> list[tuple[Resource, list[dict[str, str]]]]:
        """What the supervisor holds: the registered resources and the domain lease."""
        return [*self._resources.values(), *self._domain_lease()]

    def _cookie_mismatch(self) -> str | None:
        """Why the migration cookie does not fit this manager, or None."""
        cookie: MigrationCookie | None = self._params.get("migration_cookie")
        if cookie is None:
            return "set_parameter migration_cookie first"
        if cookie.uuid != self._params.get("uuid"):
            return f"the migration_cookie is for uuid {cookie.uuid}, not {self._params.get('uuid')}"
        if cookie.driver != self._driver.name:
            return (
                f"the migration_cookie is for the {cookie.driver} driver, not {self._driver.name}"
            )
        ours = {(le["key"], le["mode"]) for _, leases in self._all_resources() for le in leases}
        if ours != cookie.leases():
            names = sorted(r["path"] for r in cookie.resources)
            mine = sorted(r.path for r in self.resources)
            return f"registered resources {mine} are not the cookie's {names}"
        return None

    def _registered(self, type: object, path: object, flags: object) -> Resource:
        """The registered resource that ``(type, path, flags)`` names, even if the file is gone."""
        bits = check_flags(ResourceFlags, flags, "resource flags")
        for res, _ in self._resources.values():
            if res.type is type and path in (res.path, res.canonical):
                if res.flags != bits:
                    raise InvalidArgument(
                        f"{res.describe()} was registered with flags {res.flags}, not {bits}"
                    )
                return res
        return Resource.make(type, path, flags)  # not registered: refused by resource_known

    # -- actions ---------------------------------------------------------------------------------

    def _do_store_parameter(self, args: Mapping[str, Any]) -> None:
        self._params[args["key"]] = args["value"]

    def _leases_of(self, res: Resource) -> list[dict[str, str]]:
        """The leases the backend names for ``res`` (none for a disk with auto_disk_leases off)."""
        if res.type is ResourceType.DISK and not self._driver.config["auto_disk_leases"]:
            return []
        return self._driver.backend.leases(res.type.value, res.path, res.canonical, res.shared)

    def _do_store_resource(self, args: Mapping[str, Any]) -> None:
        res: Resource = args["resource"]
        self._resources[res.ident] = (res, self._leases_of(res))

    @property
    def _run_dir(self) -> str:
        return str(self._driver.config["run_dir"])

    def _do_await_launch(self, args: Mapping[str, Any]) -> None:
        if self._launch is None:
            raise InvalidArgument(
                "supervisor_args was never read: run the supervisor with it first"
            )
        launch = self._launch
        try:
            info = self._reach(launch, {"op": "get_child"}, args["timeout"])
            want = sorted(r.to_wire(le)["canonical"] for r, le in self._all_resources())
            got = sorted(r["canonical"] for r in info["resources"])
            if want != got:
                self._call(launch, {"op": "shutdown", "gen": self._gen, "grace": 0.0}, 30.0)
                raise BackendError(
                    f"the supervisor holds {got}, the manager registered {want}: read "
                    "supervisor_args after the last register_resource; that guest was stopped"
                )
        except BaseException:
            self._launch = None  # a new launch, with new supervisor_args, may follow
            raise
        self._child = int(info["guest_pid"])

    def _reach(self, launch: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Ask the supervisor of ``launch``, waiting up to ``timeout`` for it to come up.  If it
        has exited, raise what its record says."""
        deadline = time.monotonic() + timeout
        delay = _POLL[0]
        while True:
            try:
                return self._send(launch, request, timeout)
            except (FileNotFoundError, ConnectionError, TimeoutError):
                record = rundir.read_record(self._run_dir, launch)
                if record and record.get("state") in tables.SUPERVISOR.terminal:
                    rundir.forget(self._run_dir, launch, record.get("uuid"))
                    self._raise_ended(record)
                if record and not rundir.supervisor_alive(record, launch):
                    raise BackendError(
                        f"the supervisor of {self.label!r} (pid {record.get('pid')}) is gone: "
                        "killed, its guest died with it and its leases are free"
                    ) from None
                if time.monotonic() >= deadline:
                    raise BackendError(
                        f"no supervisor of {self.label!r} answered within {timeout:g} s (was "
                        f"it run as [supervisor_path, *supervisor_args, '--', guest...]?)"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, _POLL[1])

    def _raise_ended(self, record: Mapping[str, Any]) -> None:
        error = record.get("error")
        if error:
            wire.raise_reply(error)
        raise BackendError(
            f"the guest of {self.label!r} has exited (status {record.get('status')}); "
            "its leases are released"
        )

    def _send(self, launch: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """wire.call to this launch's supervisor, logged (one line per request)."""
        started = time.monotonic()
        outcome = "ok"
        try:
            return wire.call(rundir.socket_path(self._run_dir, launch), request, timeout)
        except BaseException as e:
            outcome = type(e).__name__
            raise
        finally:
            log_control.debug(
                "request domain=%s op=%s launch=%s result=%s duration_ms=%.3f",
                self.label,
                request.get("op"),
                launch,
                outcome,
                (time.monotonic() - started) * 1000,
            )

    def _call(self, launch: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One request to a supervisor that must be running."""
        try:
            return self._send(launch, request, timeout)
        except (FileNotFoundError, ConnectionError) as e:
            record = rundir.read_record(self._run_dir, launch)
            if record is not None and record.get("failure"):
                raise LeaseLost(wire.lost_message(record)) from None
            raise BackendError(f"the supervisor of {self.label!r} is gone ({e})") from None
        except TimeoutError:
            raise BackendError(f"the supervisor of {self.label!r} did not answer") from None

    def _find_supervisor(self, timeout: float) -> dict[str, Any]:
        """The hello of the supervisor ``dom-<uuid>`` names, checked to be this domain's."""
        uuid = self._params["uuid"]
        launch = rundir.pointed(self._run_dir, uuid)
        if launch is None:
            raise BackendError(f"no supervisor of uuid {uuid} is known in {self._run_dir}")
        hello = self._reach(launch, {"op": "hello"}, min(timeout, 5.0))
        for key in ("uuid", "name", "id"):
            if hello.get(key) != self._params[key]:
                raise InvalidArgument(
                    f"{key} {self._params[key]!r} does not match the running supervisor's "
                    f"{hello.get(key)!r}"
                )
        theirs = {
            (ResourceType(r["type"]), r["canonical"])
            for r in hello["resources"]
            if not self._is_domain_lease(r["type"], r["path"])
        }
        if self._resources and theirs != set(self._resources):
            raise InvalidArgument(
                f"registered resources {sorted(c for _, c in self._resources)} do not match the "
                f"supervisor's {sorted(c for _, c in theirs)}"
            )
        return hello

    def _do_attach_supervisor(self, args: Mapping[str, Any]) -> None:
        launch = self._found["launch"]
        info = self._call(launch, {"op": "attach"}, 5.0)
        self._resources = {
            (ResourceType(r["type"]), r["canonical"]): (Resource.from_wire(r), list(r["leases"]))
            for r in info["resources"]
            if not self._is_domain_lease(r["type"], r["path"])
        }
        self._launch, self._gen, self._child = launch, int(info["gen"]), int(info["guest_pid"])

    def _policy(self) -> str:
        return str(self._params.get("lock_failure") or self._driver.config["lock_failure"])

    def _do_record_failure(self, args: Mapping[str, Any]) -> None:
        if self._found.get("failure"):  # ATTACH found a supervisor that had lost a lease
            self._failure = dict(self._found["failure"])
        assert self._failure is not None

    def _do_supervisor_acquire(self, args: Mapping[str, Any]) -> None:
        res: Resource = args["resource"]
        leases = self._leases_of(res)
        assert self._launch is not None
        self._call(
            self._launch, {"op": "acquire", "gen": self._gen, "resource": res.to_wire(leases)}, 30.0
        )
        self._resources[res.ident] = (res, leases)

    def _do_supervisor_release(self, args: Mapping[str, Any]) -> None:
        res: Resource = args["resource"]
        _, leases = self._resources[res.ident]
        assert self._launch is not None
        self._call(
            self._launch, {"op": "release", "gen": self._gen, "resource": res.to_wire(leases)}, 30.0
        )
        del self._resources[res.ident]

    def _do_supervisor_shutdown(self, args: Mapping[str, Any]) -> None:
        launch = self._launch
        assert launch is not None
        grace = float(self._driver.config["shutdown_grace"])
        request = {"op": "shutdown", "gen": self._gen, "grace": grace}
        try:
            self._send(launch, request, grace + 30.0)
        except (FileNotFoundError, ConnectionError):
            record = rundir.read_record(self._run_dir, launch)
            if record is not None and rundir.supervisor_alive(record, launch):
                raise BackendError(
                    f"the supervisor of {self.label!r} (pid {record['pid']}) runs but does not "
                    "answer on its control socket"
                ) from None
            # Gone: the guest exited, or the supervisor died and took the guest with it; the
            # kernel or the supervisor released every lease.
        except TimeoutError:
            raise BackendError(f"the supervisor of {self.label!r} did not stop in time") from None
        rundir.forget(self._run_dir, launch, self._params.get("uuid"))

    def _request(self, op: str, wait: float, **fields: Any) -> dict[str, Any]:
        """One request to this launch's supervisor, as its current controller."""
        assert self._launch is not None
        return self._call(self._launch, {"op": op, "gen": self._gen, **fields}, wait)

    def _do_supervisor_prepare(self, args: Mapping[str, Any]) -> None:
        import socket

        migration = secrets.token_hex(8)
        info = self._request("prepare", 30.0, migration=migration, hosturi=args["hosturi"])
        self._cookie = MigrationCookie(
            migration=migration,
            uuid=self._params["uuid"],
            name=self._params["name"],
            id=self._params["id"],
            driver=self._driver.name,
            source=socket.gethostname(),
            hosturi=args["hosturi"],
            resources=tuple(
                {k: r[k] for k in ("type", "path", "canonical", "flags", "leases")}
                for r in info["resources"]
            ),
        ).encode()

    def _do_supervisor_resume(self, args: Mapping[str, Any]) -> None:
        self._request("resume", 30.0)
        self._cookie = None

    def _do_supervisor_hand_off(self, args: Mapping[str, Any]) -> None:
        self._request("hand_off", 60.0)
        self._forget_launch()

    def _do_supervisor_take_over(self, args: Mapping[str, Any]) -> None:
        timeout = float(self._driver.config["handoff_timeout"])
        self._request("take_over", timeout + 30.0, timeout=timeout)

    def _do_supervisor_cancel(self, args: Mapping[str, Any]) -> None:
        try:
            self._request("cancel", 60.0)
        except BackendError:
            # An incoming guest may end before the daemon cancels (QEMU exits when its
            # migration stream breaks): its supervisor then let every reservation go and exited.
            # The cancel has nothing left to undo.
            assert self._launch is not None
            record = rundir.read_record(self._run_dir, self._launch)
            if record is None or rundir.supervisor_alive(record, self._launch):
                raise
        self._forget_launch()

    def _forget_launch(self) -> None:
        if self._launch is not None:
            rundir.forget(self._run_dir, self._launch, self._params.get("uuid"))

    def _do_forget(self, args: Mapping[str, Any]) -> None:
        self._driver._managers.discard(self)

    def __repr__(self) -> str:
        return f"<LockManager {self.label!r} {self._fsm.value} flags={self._flags!r}>"


_TRIGGERS = triggers(build(tables.DOMAIN, DomainState, LockManager, "_fsm"))

__all__ = [
    "LeaseConflict",
    "LockDriver",
    "LockManager",
    "load_driver",
]
