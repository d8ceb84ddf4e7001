"""The seed API's manager: one guest's lifecycle as the daemon sees it (``specs/domain.toml``).

Each public call is one event of that table: the capability the event requires is checked, then
the move is looked up (IllegalTransition if there is none), then its guards (with the reads they
need) and actions run through the shared ``transitions`` machine, and the new state is committed
last.  Calls on one manager are serialised by the manager's own lock, so a manager may be used
from several threads.

The manager holds the seed calls, the table's guards, reads and actions; its helpers each have
one job: :class:`~lockfsm.daemon.resources.ResourceRegistry` (the resources and their leases),
:class:`~lockfsm.daemon.client.SupervisorClient` (the control socket),
:class:`~lockfsm.protocol.launch.LaunchSpec` (what the supervisor is run with).
"""

from __future__ import annotations

import logging
import math
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from lockfsm.daemon import config
from lockfsm.daemon.client import SupervisorClient
from lockfsm.daemon.driver import LockDriver, load_driver, supervisor_command
from lockfsm.daemon.flags import NewFlags, ResourceFlags, ResourceType
from lockfsm.daemon.machine import build, triggers
from lockfsm.daemon.resources import DOMAIN_LOCKSPACE, ResourceRegistry, is_domain_lease
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
    LockFSMError,
    Unsupported,
    show,
)
from lockfsm.protocol import tables, trace, wire
from lockfsm.protocol.engine import choose
from lockfsm.protocol.launch import LaunchSpec
from lockfsm.protocol.states import DomainState

log = logging.getLogger("lockfsm.core")  # one line per move of a domain machine

#: How many moves :attr:`LockManager.history` keeps: the last ones, oldest first.  A daemon
#: polls check() and hot-plugs for months; an unbounded history would grow without end.
HISTORY_LIMIT = 256


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

_NO_RESOURCE_FLAGS = ResourceFlags(0)
#: ATTACH: each found_<state> guard wants the supervisor found in <state>.
_FOUND = {g: g.removeprefix("found_") for g in tables.DOMAIN.refuse if g.startswith("found_")}
_FOUND.pop("found_failed")  # any state of a supervisor that lost a lease (its failure record)
assert set(_FOUND.values()) <= set(tables.SUPERVISOR.states), _FOUND


class LockManager:
    """One guest's lock manager.  Made by :meth:`LockDriver.new_manager`, never directly."""

    def __init__(self, driver: LockDriver, flags: NewFlags) -> None:
        self._driver = driver
        self._flags = flags
        self._fsm = DomainState.IDLE
        self._params: dict[str, Any] = {}
        self._registry = ResourceRegistry(driver.backend, driver.config)
        self._client = SupervisorClient(str(driver.config["run_dir"]), lambda: self.label)
        # A list cut back to the last HISTORY_LIMIT entries once it holds twice as many: an
        # empty deque(maxlen=...) costs 600 bytes a manager, a list 56.
        self._history: list[HistoryEntry] = []
        self._moves = 0
        self._lock = threading.RLock()
        self._launch: str | None = None
        self._argv: list[str] | None = None
        self._gen = 1
        self._child: int | None = None
        self._cookie: str | None = None
        self._failure: dict[str, Any] | None = None

    # -- what the daemon reads -------------------------------------------------------------------

    @property
    def state(self) -> DomainState:
        """The current state, a :class:`DomainState`."""
        return self._fsm

    @property
    def history(self) -> tuple[HistoryEntry, ...]:
        """The last moves this manager made (at most :data:`HISTORY_LIMIT`), oldest first."""
        return tuple(self._history[-HISTORY_LIMIT:])

    @property
    def moves(self) -> int:
        """How many moves this manager made in all (:attr:`history` keeps the last ones)."""
        return self._moves

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
        return self._registry.resources

    @property
    def supervisor_path(self) -> str:
        """The program the daemon runs (``virLockManagerGetSupervisorPath``)."""
        return supervisor_command()[0]

    @property
    def supervisor_args(self) -> list[str]:
        """The supervisor's arguments (``virLockManagerGetSupervisorArgs``): the daemon runs
        ``[supervisor_path, *supervisor_args, "--", *guest_argv]``.  Read it after the last
        :meth:`register_resource`.

        Raises IllegalTransition unless the manager is idle and made for a fresh start or a
        migration target, InvalidArgument while uuid, name or id is unset, when a MIGRATE
        manager's cookie does not match, or when the driver requires a lease for disks
        (``require_lease_for_disks``) and the guest has disks but none.
        """
        with self._lock:
            self._fire("supervisor_args")
            assert self._argv is not None
            return [*supervisor_command()[1], *self._argv]

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
            resource = self._registry.user_resource(type, path, flags)
            self._fire("register_resource", resource=resource)

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
            self._fire("get_child", timeout=float(timeout))
            assert self._child is not None
            return self._child

    def acquire_resource(
        self, type: ResourceType, path: str, flags: ResourceFlags | int = _NO_RESOURCE_FLAGS
    ) -> None:
        """Hot-plug: the supervisor takes the resource's leases; add the device after this returns.

        Raises LeaseConflict if held elsewhere (nothing is then held), InvalidArgument for a bad
        or already registered resource, Unsupported without the hot-plug capability,
        IllegalTransition unless started, BackendError if the supervisor is gone, LeaseLost if
        it lost a lease (the manager is then failed).
        """
        with self._lock:
            self._legal("acquire_resource")
            resource = self._registry.user_resource(type, path, flags)
            self._fire("acquire_resource", resource=resource)

    def release_resource(
        self, type: ResourceType, path: str, flags: ResourceFlags | int = _NO_RESOURCE_FLAGS
    ) -> None:
        """Hot-unplug: the supervisor gives the resource's leases back; call it after the device
        is gone.

        Raises InvalidArgument if the resource is not registered (with these flags), Unsupported
        without the hot-plug capability, IllegalTransition unless started, BackendError if the
        supervisor is gone, LeaseLost if it lost a lease (the manager is then failed).
        """
        with self._lock:
            self._legal("release_resource")
            resource = self._registry.registered(type, path, flags)
            self._fire("release_resource", resource=resource)

    def prepare_migrate(self, hosturi: str) -> str:
        """Source: allow a migration to ``hosturi`` and return the cookie the target daemon gives
        its manager with ``set_parameter("migration_cookie", cookie)``.

        Raises Unsupported if the backend cannot migrate, IllegalTransition unless started,
        InvalidArgument for a bad hosturi, BackendError if the supervisor is gone, LeaseLost if
        it lost a lease (the manager is then failed).
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
        InvalidArgument if ``cancel`` is not a bool; LeaseConflict on the target if a lease did
        not come free in time (the manager stays migrating_in: cancel it); BackendError if the
        supervisor is gone; LeaseLost if it lost a lease (the manager is then failed).
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
            self._fire("check")
            return self._fsm

    def shutdown(self) -> None:
        """Stop the guest if it still runs; return once every lease is released.

        Succeeds when the supervisor has already gone, or is exiting (it applied a lease loss's
        ``poweroff``).  Raises IllegalTransition unless started,
        migrating or failed; BackendError if the supervisor runs but does not answer.
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
        """Raise before any argument is even looked at if the event cannot happen now (the
        capability its table row requires, or no move at all from this state)."""
        capability = tables.DOMAIN.requires.get(event)
        if capability and not getattr(self._driver.capabilities, capability):
            raise Unsupported(f"the {self._driver.name} driver does not support {capability}")
        if not tables.DOMAIN.candidates(self._fsm.value, event):
            raise IllegalTransition("domain", self._fsm.value, event)

    def _fire(self, event: str, **args: Any) -> None:
        self._legal(event)
        if trace.on() and "error" not in args:  # a seed call (not the move a raise makes)
            self._trace_call(event, args)
        source = self._fsm
        started = time.monotonic()
        memo: dict[str, Any] = {}  # the reads this call made, shared by every candidate move
        try:
            moved = _TRIGGERS[event](self, **args, _memo=memo)
        except LockFSMError as e:
            if trace.on() and "error" not in args:
                self._trace_reply(event, type(e).__name__)
            # An error the table names an event for (LeaseLost: the supervisor lost a lease and
            # applied the policy): the call is refused, and the manager makes that move.
            raised = tables.DOMAIN.raised_by.get(type(e).__name__)
            if raised and tables.DOMAIN.candidates(self._fsm.value, raised):
                self._fire(raised, error=e)
            raise
        if not moved:
            try:
                choose(tables.DOMAIN, source.value, event, self, {**args, "_memo": memo})
            except LockFSMError as e:  # a guard refused: the call's reply is that error
                if trace.on() and "error" not in args:
                    self._trace_reply(event, type(e).__name__)
                raise
            raise AssertionError("transitions refused a move the table allows")  # pragma: no cover
        if trace.on():
            self._trace_move(source, event, "error" in args)
        if event in tables.DOMAIN.unrecorded:
            return
        seconds = time.monotonic() - started
        self._history.append(HistoryEntry(source.value, event, self._fsm.value, seconds=seconds))
        if len(self._history) >= 2 * HISTORY_LIMIT:
            del self._history[:-HISTORY_LIMIT]
        self._moves += 1
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

    # -- the recording hooks (lockfsm.protocol.trace; only called while it records) ------------

    def _trace_call(self, event: str, args: Mapping[str, Any]) -> None:
        carries = ""
        if event == "set_parameter":
            key, value = args["key"], args["value"]
            carries = key
            if isinstance(value, MigrationCookie):
                carries += f"=cookie({value.migration})"
            elif key in ("name", "id", "lock_failure"):
                carries += f"={value}"
        elif "resource" in args:
            carries = args["resource"].path
        elif "hosturi" in args:
            carries = args["hosturi"]
        elif args.get("cancel"):
            carries = "cancel"
        trace.emit("seed", run_dir=self._client.run_dir, mgr=id(self), call=event, carries=carries)

    def _trace_reply(self, event: str, outcome: str) -> None:
        trace.emit(
            "seed_reply", run_dir=self._client.run_dir, mgr=id(self), call=event, outcome=outcome
        )

    def _trace_move(self, source: DomainState, event: str, raised: bool) -> None:
        if not raised:
            outcome = "ok"
            if event == "get_child":
                outcome = "pid"
            elif event == "prepare_migrate" and self._cookie is not None:
                outcome = f"cookie({MigrationCookie.decode(self._cookie).migration})"
            self._trace_reply(event, outcome)
        if source is not self._fsm:
            trace.emit(
                "state",
                run_dir=self._client.run_dir,
                mgr=id(self),
                machine="domain",
                event=event,
                source=source.value,
                dest=self._fsm.value,
            )

    # -- guards: None to pass, or why not ------------------------------------------------------

    def _guard_start_mode(self, args: Mapping[str, Any]) -> str | None:
        return None if not self._flags else f"manager made with {self._flags!r}"

    def _guard_attach_mode(self, args: Mapping[str, Any]) -> str | None:
        return None if self._flags & NewFlags.ATTACH else "manager not made with ATTACH"

    def _guard_migrate_mode(self, args: Mapping[str, Any]) -> str | None:
        return None if self._flags & NewFlags.MIGRATE else "manager not made with MIGRATE"

    def _guard_cancel(self, args: Mapping[str, Any]) -> str | None:
        return None if args["cancel"] else "cancel=False"

    def _guard_no_cancel(self, args: Mapping[str, Any]) -> str | None:
        return None if not args["cancel"] else "cancel=True"

    def _found(self, args: Mapping[str, Any], guard: str) -> str | None:
        found = args["supervisor"]
        want = _FOUND[guard]
        if found.get("failure"):
            return f"the supervisor lost a lease ({found.get('state')}), it is not {want}"
        return (
            None
            if found.get("state") == want
            else f"the supervisor is {found.get('state')}, not {want}"
        )

    def _guard_found_running(self, args: Mapping[str, Any]) -> str | None:
        return self._found(args, "found_running")

    def _guard_found_migrating_out(self, args: Mapping[str, Any]) -> str | None:
        return self._found(args, "found_migrating_out")

    def _guard_found_incoming(self, args: Mapping[str, Any]) -> str | None:
        return self._found(args, "found_incoming")

    def _guard_found_failed(self, args: Mapping[str, Any]) -> str | None:
        found = args["supervisor"]
        return (
            None if found.get("failure") else f"the supervisor is {found.get('state')}, not failed"
        )

    def _guard_cookie_set(self, args: Mapping[str, Any]) -> str | None:
        return self._registry.cookie_mismatch(
            self._params.get("migration_cookie"), self._params.get("uuid"), self._driver.name
        )

    def _guard_supervisor_failed(self, args: Mapping[str, Any]) -> str | None:
        return None if args["health"] else "the supervisor reports no lost lease"

    def _guard_supervisor_sound(self, args: Mapping[str, Any]) -> str | None:
        failure = args["health"]
        return None if not failure else f"a lease was lost: {failure['reason']}"

    def _guard_loss_reported(self, args: Mapping[str, Any]) -> str | None:
        return None if isinstance(args.get("error"), LeaseLost) else "no LeaseLost was answered"

    def _guard_identity_set(self, args: Mapping[str, Any]) -> str | None:
        missing = [k for k in ("uuid", "name", "id") if k not in self._params]
        return f"set_parameter {', '.join(missing)} first" if missing else None

    def _guard_leases_required(self, args: Mapping[str, Any]) -> str | None:
        return self._registry.missing_lease(self.label, self._driver.capabilities.per_disk)

    def _guard_resource_new(self, args: Mapping[str, Any]) -> str | None:
        return self._registry.clash(args["resource"])

    def _guard_resource_known(self, args: Mapping[str, Any]) -> str | None:
        return self._registry.known(args["resource"])

    # -- reads: what a guard needs from outside ----------------------------------------------------

    def _read_supervisor(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """ATTACH: the hello of the supervisor ``dom-<uuid>`` names, checked to be this
        domain's.  Raises BackendError (none found), InvalidArgument (not this domain's)."""
        hello = self._client.find(self._params["uuid"], args["timeout"])
        for key in ("uuid", "name", "id"):
            if hello.get(key) != self._params[key]:
                raise InvalidArgument(
                    f"{key} {self._params[key]!r} does not match the running supervisor's "
                    f"{hello.get(key)!r}"
                )
        theirs = {
            (ResourceType(r["type"]), r["canonical"])
            for r in hello["resources"]
            if not is_domain_lease(r["type"], r["path"])
        }
        mine = self._registry.idents()
        if mine and theirs != mine:
            raise InvalidArgument(
                f"registered resources {sorted(c for _, c in mine)} do not match the "
                f"supervisor's {sorted(c for _, c in theirs)}"
            )
        return hello

    def _read_health(self, args: Mapping[str, Any]) -> dict[str, Any] | None:
        """The lease loss the supervisor reports, or None."""
        assert self._launch is not None
        return self._client.health(self._launch)

    # -- actions ---------------------------------------------------------------------------------

    def _do_store_parameter(self, args: Mapping[str, Any]) -> None:
        self._params[args["key"]] = args["value"]

    def _do_store_resource(self, args: Mapping[str, Any]) -> None:
        self._registry.add(args["resource"])

    def _do_make_launch(self, args: Mapping[str, Any]) -> None:
        if self._launch is None:
            self._launch = secrets.token_hex(8)
        cookie: MigrationCookie | None = self._params.get("migration_cookie")
        spec = LaunchSpec(
            driver=self._driver.name,
            config=self._driver.config,
            launch=self._launch,
            uuid=self._params["uuid"],
            name=self._params["name"],
            id=self._params["id"],
            mode="incoming" if cookie else "start",
            lock_failure=self._params.get("lock_failure"),
            migration={"id": cookie.migration, "from": cookie.source} if cookie else None,
            resources=self._registry.to_wire(self._params["uuid"], cookie),
        )
        self._argv = spec.argv()

    def _do_await_launch(self, args: Mapping[str, Any]) -> None:
        if self._launch is None:
            raise InvalidArgument(
                "supervisor_args was never read: run the supervisor with it first"
            )
        launch = self._launch
        try:
            info = self._client.reach(launch, {"op": "get_child"}, args["timeout"])
            want = sorted(
                r.canonical for r, _ in self._registry.everything(self._params.get("uuid"))
            )
            got = sorted(r["canonical"] for r in info["resources"])
            if want != got:
                self._client.call(launch, {"op": "shutdown", "gen": self._gen, "grace": 0.0}, 30)
                raise BackendError(
                    f"the supervisor holds {got}, the manager registered {want}: read "
                    "supervisor_args after the last register_resource; that guest was stopped"
                )
        except BaseException:
            self._launch = None  # a new launch, with new supervisor_args, may follow
            raise
        self._child = int(info["guest_pid"])

    def _do_attach_supervisor(self, args: Mapping[str, Any]) -> None:
        launch = args["supervisor"]["launch"]
        info = self._client.call(launch, {"op": "attach"}, 5.0)
        self._registry.replace(info["resources"])
        self._launch, self._gen, self._child = launch, int(info["gen"]), int(info["guest_pid"])

    def _policy(self) -> str:
        return str(self._params.get("lock_failure") or self._driver.config["lock_failure"])

    def _do_record_failure(self, args: Mapping[str, Any]) -> None:
        failure = args["health"] if "health" in args else args["supervisor"]["failure"]
        self._failure = dict(failure)

    def _do_record_loss(self, args: Mapping[str, Any]) -> None:
        self._failure = {"reason": str(args["error"]), "policy": self._policy()}

    def _request(self, op: str, wait: float, **fields: Any) -> dict[str, Any]:
        """One request to this launch's supervisor, as its current controller."""
        assert self._launch is not None
        return self._client.call(self._launch, {"op": op, "gen": self._gen, **fields}, wait)

    def _do_supervisor_acquire(self, args: Mapping[str, Any]) -> None:
        res: Resource = args["resource"]
        leases = self._registry.leases_of(res)
        self._request("acquire", 30.0, resource=res.to_wire(leases))
        self._registry.add(res, leases)

    def _do_supervisor_release(self, args: Mapping[str, Any]) -> None:
        res: Resource = args["resource"]
        self._request("release", 30.0, resource=res.to_wire(self._registry.leases(res)))
        self._registry.remove(res)

    def _do_supervisor_shutdown(self, args: Mapping[str, Any]) -> None:
        assert self._launch is not None
        grace = float(self._driver.config["shutdown_grace"])
        self._client.shutdown(self._launch, self._gen, grace, self._params.get("uuid"))

    def _do_supervisor_prepare(self, args: Mapping[str, Any]) -> None:
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
            if not self._client.exited(self._launch):
                raise
        self._forget_launch()

    def _forget_launch(self) -> None:
        if self._launch is not None:
            self._client.forget(self._launch, self._params.get("uuid"))

    def _do_forget(self, args: Mapping[str, Any]) -> None:
        self._driver.forget(self)

    def __repr__(self) -> str:
        return f"<LockManager {self.label!r} {self._fsm.value} flags={self._flags!r}>"


_TRIGGERS = triggers(build(tables.DOMAIN, DomainState, LockManager, "_fsm"))

__all__ = [
    "DOMAIN_LOCKSPACE",
    "HISTORY_LIMIT",
    "LeaseConflict",
    "LockDriver",
    "LockManager",
    "load_driver",
]
