"""The guest's leases in the supervisor: one ``specs/lease.toml`` machine per lease key, and the
backend holder those machines drive.

The holder keeps no lease state of its own: it reads the machines' states through this set
(the :class:`~lockfsm.backends.LeaseView` it was made with).  Every backend call is an action of
a lease move, so a lease is in exactly the state its machine says, on every backend.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lockfsm.backends import make_holder, module
from lockfsm.errors import BackendError, InvalidArgument, LeaseConflict, LockFSMError
from lockfsm.protocol import rundir, tables, trace, wire
from lockfsm.protocol.engine import Instance, check_model, fire_all

Lease = dict[str, Any]  # {"key", "mode"[, "version"]}, as the daemon named it


def in_order(
    resources: Iterable[Mapping[str, Any]], exclusive_first: bool = False
) -> list[tuple[Lease, Mapping[str, Any]]]:
    """(lease, resource) for every lease of ``resources``, in the fixed order they are taken:
    by key, exclusive leases first if asked."""
    return sorted(
        ((lease, res) for res in resources for lease in res["leases"]),
        key=lambda x: (exclusive_first and x[0]["mode"] != "exclusive", x[0]["key"]),
    )


def label(res: Mapping[str, Any]) -> str:
    """How errors name a resource: "disk /path", "lease ls:key", or the guest's own lease."""
    if res["type"] == "lease" and res["path"].startswith("lockfsm-domains:"):
        return f"the own lease of guest {res['path'].split(':', 1)[1]}"
    return f"{res['type']} {res['path']}"


def ident(res: Mapping[str, Any]) -> tuple[str, str]:
    return (res["type"], res["canonical"])


class LeaseMachines:
    """Leases, one ``specs/lease.toml`` machine each, and the backend holder they drive: every
    holder call is the action of a lease move.  This is the :class:`~lockfsm.backends.LeaseView`
    the holder reads.  The supervisor's :class:`LeaseSet` builds on it; a test or a benchmark
    that drives a backend's holder without a supervisor uses it as it is."""

    def __init__(self, driver: str, config: Mapping[str, Any]) -> None:
        self.machines: dict[str, Instance] = {}
        self.leases: dict[str, Lease] = {}
        self.labels: dict[str, str] = {}
        self.driver = driver
        self.holder = make_holder(driver, config, self)

    # -- the LeaseView the holder reads --------------------------------------------------------

    def state(self, key: str) -> str | None:
        machine = self.machines.get(key)
        return None if machine is None else machine.state

    def keys(self, *states: str) -> list[str]:
        return sorted(k for k, m in self.machines.items() if m.state in states)

    def lease(self, key: str) -> Mapping[str, Any]:
        return self.leases[key]

    def label(self, key: str) -> str:
        return self.labels.get(key, key)

    # -- the lease table's actions -------------------------------------------------------------

    def _do_backend_acquire(self, args: Mapping[str, Any]) -> None:
        lease, label = args["lease"], args["label"]
        self._traced("acquire", [lease], lambda: self.holder.acquire(lease, label), label)

    def _do_backend_reserve(self, args: Mapping[str, Any]) -> None:
        lease, label = args["lease"], args["label"]
        self._traced("reserve", [lease], lambda: self.holder.reserve(lease, label), label)

    def _do_backend_take_over(self, args: Mapping[str, Any]) -> None:
        group = [(a["lease"], a["label"]) for a in args["group"]]
        self._traced("take_over", [le for le, _ in group], lambda: self.holder.take_over(group))

    def _do_backend_settle(self, args: Mapping[str, Any]) -> None:
        lease = args["lease"]
        self._traced("settle", [lease], lambda: self.holder.settle(lease))

    def _do_backend_release(self, args: Mapping[str, Any]) -> None:
        leases = [a["lease"] for a in args["group"]]
        self._traced("release", leases, lambda: self.holder.release(leases))

    def _do_backend_unreserve(self, args: Mapping[str, Any]) -> None:
        leases = [a["lease"] for a in args["group"]]
        self._traced("unreserve", leases, lambda: self.holder.unreserve(leases))

    def _traced(
        self, op: str, leases: list[Lease], call: Callable[[], None], label: str = ""
    ) -> None:
        """Make one holder call; while lockfsm.protocol.trace records, record it as an operation
        on the lock service, with what the backend sends (its module's TRACE says)."""
        if not trace.on():
            call()
            return
        outcome = "ok"
        sent = time.monotonic_ns()  # the operation is drawn where it began
        try:
            call()
        except BaseException as e:
            outcome = type(e).__name__
            raise
        finally:
            template = getattr(module(self.driver), "TRACE", {}).get(op, op)
            if template is not None:
                trace.emit(
                    "service",
                    t=sent,
                    op=op,
                    does=template,
                    leases=[
                        {
                            "key": le["key"],
                            "mode": le["mode"],
                            "version": le.get("version"),
                            "label": self.labels.get(le["key"]) or label,
                        }
                        for le in leases
                    ],
                    outcome=outcome,
                )

    # -- one lease at a time ---------------------------------------------------------------------

    def _start(self, event: str, lease: Lease, label: str) -> None:
        """A new lease machine makes its first move (acquire or reserve); on a refusal it is
        dropped again.  Raises InvalidArgument for a lease that has a machine already."""
        key = lease["key"]
        if key in self.machines:
            raise InvalidArgument(f"{label}: lease {key} is already held")
        self.machines[key] = Instance(tables.LEASE, self)
        self.leases[key], self.labels[key] = dict(lease), label
        try:
            self.machines[key].fire(event, lease=lease, label=label)
        except BaseException:
            self._forget(key)
            raise

    def acquire(self, lease: Lease, label: str) -> None:
        """Take a lease.  Raises what the holder's acquire raises (nothing is then held)."""
        self._start("acquire", lease, label)

    def reserve(self, lease: Lease, label: str) -> None:
        """Reserve a lease for an incoming migration."""
        self._start("reserve", lease, label)

    def release(self, lease: Lease) -> None:
        """Release a held lease, or let a reservation go.  Raises BackendError for a lease
        that has no machine here, the holder's error otherwise (the machine then stays)."""
        machine = self.machines.get(lease["key"])
        if machine is None:
            raise BackendError(f"lease {lease['key']} is not held by this supervisor")
        machine.fire("release", lease=lease)
        self._forget(lease["key"])

    def release_all(self, leases: list[Lease]) -> None:
        """Release ``leases`` in one step (one backend call)."""
        fire_all(
            [self.machines[le["key"]] for le in leases], "release", [{"lease": le} for le in leases]
        )
        for le in leases:
            self._forget(le["key"])

    def take_over(self, group: list[tuple[Lease, str]]) -> None:
        """Take every lease of ``group`` (reserved, with the cookie's handoff data) over in one
        step, then settle each.  Raises LeaseConflict; then every one is still reserved."""
        machines = [self.machines[lease["key"]] for lease, _ in group]
        fire_all(machines, "take_over", [{"lease": le, "label": lb} for le, lb in group])
        for lease, _ in group:
            self.machines[lease["key"]].fire("settle", lease=lease)

    def handoff_data(self, lease: Mapping[str, Any]) -> dict[str, int]:
        return self.holder.handoff_data(lease)

    def _forget(self, key: str) -> None:
        self.machines.pop(key, None)
        self.leases.pop(key, None)
        self.labels.pop(key, None)

    # -- what the holder tells by itself -----------------------------------------------------

    def watch(self, notify: list[str]) -> None:
        self.holder.watch(notify)

    def poll(self) -> str | None:
        return self.holder.poll()

    def next_check(self) -> float | None:
        return self.holder.next_check()

    def event_fds(self) -> list[int]:
        return self.holder.event_fds()

    def inheritable_fds(self) -> list[int]:
        return self.holder.inheritable_fds()


class LeaseSet(LeaseMachines):
    """The resources a supervisor holds (or reserves) and their lease machines.  ``launch``
    lets it name another local guest of the run directory that holds a lease it wanted."""

    def __init__(self, driver: str, config: Mapping[str, Any], launch: str) -> None:
        super().__init__(driver, config)
        self.run_dir: str = config["run_dir"]
        self.launch = launch
        self.resources: dict[tuple[str, str], dict[str, Any]] = {}

    # -- what the supervisor's actions do --------------------------------------------------------

    def take(self, resources: list[dict[str, Any]], event: str = "acquire") -> None:
        """Take (``acquire``) or ``reserve`` every lease of ``resources`` in key order; on a
        failure give back what was taken and raise (LeaseConflict naming the holder)."""
        taken: list[Lease] = []
        key = ""
        try:
            for lease, res in in_order(resources):
                key = lease["key"]
                self._start(event, lease, label(res))
                taken.append(lease)
        except LeaseConflict as e:
            self.give(taken)
            raise self.named_holder(e, key) from None
        except BaseException:
            self.give(taken)
            raise
        now = time.time()
        for res in resources:
            self.resources[ident(res)] = {**res, "since": now}

    def take_over_all(self) -> None:
        """A migration target's take-over, all or nothing.  First every reserved lease is probed:
        one visibly held elsewhere (the source has not completed) fails the attempt before it
        takes any, so a repeated early attempt never holds even a free lease for a moment.  Then
        the backend takes them all over in one step (exclusive ones first, then by key), and
        each is settled.  Raises LeaseConflict (``final`` when it can never succeed)."""
        wanted = in_order(self.resources.values(), exclusive_first=True)
        for lease, res in wanted:
            try:
                self.holder.probe(lease, label(res))
            except LeaseConflict as e:
                raise self.named_holder(e, lease["key"]) from None
        try:
            super().take_over([(le, label(r)) for le, r in wanted])
        except LeaseConflict as e:
            keys = [le["key"] for le, r in wanted if label(r) == e.resource]
            raise self.named_holder(e, keys[0]) if keys else e from None

    def give(self, leases: list[Lease], *, quiet: bool = False) -> None:
        """Release every lease (or let its reservation go), in one backend call per kind;
        leases without a machine are skipped.  Raises the backend's error unless ``quiet`` (it
        is then reported, and the machines are dropped all the same)."""
        mine = [le for le in leases if le["key"] in self.machines]
        try:
            fire_all(
                [self.machines[le["key"]] for le in mine], "release", [{"lease": le} for le in mine]
            )
        except LockFSMError as e:
            keys = ", ".join(le["key"] for le in mine)
            print(f"lockfsm-supervisor: releasing {keys}: {e}", file=sys.stderr)
            if not quiet:
                raise
        for le in mine:
            self._forget(le["key"])

    def give_resource(self, res: Mapping[str, Any]) -> None:
        """Hot-unplug: release the leases of one held resource.  Raises InvalidArgument if this
        guest does not hold it, the backend's error if a release failed (the guest still runs:
        the daemon must hear of it)."""
        held = self.resources.get(ident(res))
        if held is None:
            raise InvalidArgument(f"{res['path']} is not held by this guest")
        self.give(list(held["leases"]))
        del self.resources[ident(held)]

    def give_all(self) -> None:
        """Release every lease at once, reporting (not raising) what fails: the guest is gone."""
        self.give([le for res in self.resources.values() for le in res["leases"]], quiet=True)
        self.resources.clear()

    def forfeit_all(self) -> None:
        """A lease was lost: let every lease go; what the backend cannot release is reported and
        dropped all the same (it is lost already)."""
        self.give_all()

    def with_handoff_data(self) -> None:
        """Add to each lease what a migration target needs to take it over atomically (a lease
        version, a fencing token), for the cookie."""
        for res in self.resources.values():
            res["leases"] = [{**le, **self.holder.handoff_data(le)} for le in res["leases"]]

    def _forget(self, key: str) -> None:
        self.machines.pop(key, None)
        self.leases.pop(key, None)
        self.labels.pop(key, None)

    def named_holder(self, err: LeaseConflict, key: str) -> LeaseConflict:
        """Say which local guest holds lease ``key``, when its supervisor's record tells."""
        for name in sorted(os.listdir(self.run_dir)):
            launch = name.removesuffix(".json")
            if launch == self.launch or not wire.LAUNCH.fullmatch(launch):
                continue
            rec = rundir.read_record(self.run_dir, launch)
            if not rec or rec.get("state") not in tables.SUPERVISOR_HOLDS:
                continue
            if not rundir.supervisor_alive(rec, launch):  # killed: its record still says so
                continue
            for res in rec.get("resources", []):
                if any(lease.get("key") == key for lease in res.get("leases", [])):
                    who = (
                        f"domain {rec.get('name')!r} (uuid {rec.get('uuid')}, "
                        f"supervisor pid {rec.get('pid')}) on this host"
                    )
                    return LeaseConflict(
                        f"{err.resource} is held by {who}", err.resource, who, final=err.final
                    )
        return err


check_model(tables.LEASE, LeaseMachines)
