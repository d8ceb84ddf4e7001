"""Backends: the seed's lock-manager plugins.

A backend has two halves, both in its module:

* the **naming half** (:class:`Backend`), in the daemon: validates its configuration, declares its
  capabilities as data, and names the leases a resource needs;
* the **holding half** (:class:`Holder`), in the supervisor: acquires and releases those leases.

The supervisor imports only the holding half's needs: a backend module keeps heavy imports
(hashlib, clients of lock services) inside the functions of its naming half.

The contract of each method, in the manner of libvirt's ``lock_driver.h``:

``Backend.__init__(config)``
    Called once per :func:`lockfsm.load_driver` with the validated configuration (every key of
    :data:`COMMON_KEYS` and of the backend's ``config_keys``, defaults filled in).  May create
    directories.  Raises :class:`~lockfsm.InvalidArgument` for a configuration it cannot use.

``Backend.leases(resource_type, path, canonical, shared)``
    Called when a resource is registered or hot-plugged, in the daemon.  Returns the leases that
    protect the resource as ``[{"key": str, "mode": "exclusive" | "shared"}]``, in the order they
    are to be taken.  A key is a name without ``/``.  A backend with VM-level leases returns ``[]``.
    Pure: it takes nothing.

Every holder is driven by the supervisor's lease machines (``specs/lease.toml``): each call
below is the action of one lease move, made only from the state the table names, and the
holder reads the machines' states through the :class:`LeaseView` it was made with.  A holder
keeps no lease state of its own (what it keeps is its own resources: open files, connections,
lease versions).

``Holder.acquire(lease, resource)``
    Called in the supervisor for an unheld lease (``acquire``: before the guest starts, or on
    hot-plug).  Takes the lease without waiting.  Raises :class:`~lockfsm.LeaseConflict`
    (naming ``resource`` and, where it can, the holder) when the lease is held elsewhere,
    :class:`~lockfsm.BackendError` otherwise.  On a raise nothing is held.

``Holder.reserve(lease, resource)``
    Called in an incoming migration's supervisor before its guest starts (``reserve``).  Makes
    sure that no one but this holder can acquire the lease from now on, while the source may
    still hold it.  Raises LeaseConflict if another holder reserved it.  A backend whose handoff
    is atomic may do nothing here.

``Holder.probe(lease, resource)``
    Called in a migration target's supervisor, for every reserved lease, before a take-over
    attempt: raises LeaseConflict (as ``acquire`` would) if the lease is visibly held elsewhere
    right now, so that an attempt bound to fail takes nothing, not even for a moment.  Takes
    nothing.  A backend that cannot tell without taking returns (the take-over then decides).

``Holder.take_over(group)``
    A migration target's take-over (``take_over``, one step for every reserved lease of the
    guest): ``group`` is ``[(lease, resource)]``, exclusive leases first, then by key, each with
    the handoff data the cookie carried.  All or nothing: takes every lease over from the source
    (the reservations stay until ``settle``), or raises LeaseConflict (``final`` when it can
    never succeed: the lease changed hands since the cookie was made) and then holds none of
    them, each still reserved, so that the attempt may be made again.

``Holder.settle(lease)``
    The take-over is whole (``settle``, ``taken`` to ``held``): the reservation is no longer
    needed.

``Holder.release(leases)``
    Called for held leases (``release``, one step for a group): all of a guest's after it exited
    or on a handoff (after the guest is dead), or when a lease is lost; one resource's on
    hot-unplug.  Gives them all back at once (etcd: one transaction, the handoff markers
    included).  Never raises for leases it holds; releasing a lease it does not hold is a
    BackendError.

``Holder.expect_release()``
    A hint: the guest is being killed, and once it is dead every held lease will be released
    (a handoff, a stop, a lost lease).  A backend may prepare meanwhile (etcd: the agent reads
    the reservations the release must look at while the guest dies, so that the release itself
    is one transaction).  Never blocks and never raises; the release stays correct without it.

``Holder.expect_handoff(prepared)``
    A hint: a migration was prepared (``prepared`` true; the held leases will be handed off
    once it completes, whenever that is) or called off (false).  A backend may prepare
    meanwhile (etcd: the agent follows the leases' reservations with a watch, so that the
    handoff's release is one transaction however soon the guest dies).  Never blocks and never
    raises; the release stays correct without it.

``Holder.unreserve(leases)``
    Called for reserved leases (``release`` from ``reserved``): the migration was cancelled or
    the incoming guest exited.

``Holder.handoff_data(lease)``
    Called in a migration source's supervisor when the migration is prepared, for each lease it
    holds.  Returns what the target needs to take the lease over atomically, as
    ``{"version": int}`` (sanlock: the lease version; etcd: the key's revision, a fencing token)
    or ``{}``.  It travels in the cookie, and the target's ``acquire`` receives it in the lease.

``Holder.watch(notify)``
    Called once in the supervisor, after its control socket listens and before any lease is
    taken.  ``notify`` is a command (argv) that reports a lease loss to this supervisor; a
    backend whose lock service revokes leases and runs a program when it does (sanlock's kill
    path) registers it, adding its own words saying why.  Raises BackendError if the lock
    service cannot be told (the supervisor then starts nothing).

``Holder.event_fds()``, ``Holder.next_check()`` and ``Holder.poll()``
    How a backend reports a lost lease by itself.  The supervisor watches ``event_fds()`` for
    readability (etcd: the connection to the host's lease agent; they may change after a lease
    is taken) and calls ``poll()`` when one is readable and at the ``time.monotonic()`` instant
    ``next_check()`` returns (None: no timer).  ``poll()`` never blocks and returns None while
    every lease is safe, or why the leases are lost (or can no longer be proven held before
    another holder could be granted them); once it has reported a loss it keeps reporting it.
    The supervisor then applies the domain's lock-failure policy at once
    (``specs/lock_failure.toml``).

``hosts(config)`` (a function of the backend's module, like ``holders``)
    Called by ``LockDriver.hosts`` (a cluster manager) and ``lockfsm status``: every host of the
    lockspace the lock service knows, as ``[{"name": str, "state": "alive" | "dead" |
    "unknown", "since": epoch seconds | None, "detail": str}]``.  *dead* is a promise: the
    host's guests have stopped by the protocol's own timing (etcd: its lease expired, and its
    supervisors fenced before that; sanlock: its delta lease expired, and sanlock's fencing,
    with a watchdog, stopped them).  Raises BackendError when the lock service does not answer.

``wait_free(config, leases, timeout)`` (a function of the backend's module)
    Called by ``LockDriver.wait_for_leases``: returns once none of ``leases`` is held or
    reserved by anyone (so that a START would get them, unless another host is faster), or
    raises LeaseConflict naming a holder when ``timeout`` seconds passed first; BackendError
    when the lock service does not answer.  Takes nothing.

``holders(config)`` (a function of the backend's module)
    Called by ``lockfsm status``, in any process, with a validated configuration: every lease of
    the lockspace that someone holds, as the lock service itself sees it, across hosts:
    ``[{"key": str, "kind": "exclusive" | "shared" | "reserved" | "held" | ..., "holder":
    {"manager": str, ...}}]``.  Takes nothing and joins nothing.  Raises OSError or
    BackendError when the lock service cannot be read.

``Holder.notifies_changes`` and ``Holder.take_over_due()``
    How a migration target waits for its source.  A backend whose lock service tells when a
    lease changes (etcd: a watch) has ``notifies_changes`` true: after a take-over attempt that
    may succeed later, its event fds become readable when a lease changed, and
    ``take_over_due()`` (which never blocks) says so, once; the supervisor then tries again at
    once instead of polling.  Otherwise the supervisor tries again every few milliseconds.

``Holder.inheritable_fds()``
    The file descriptors the guest must inherit so that its leases outlive the supervisor until
    the guest itself is dead (fcntl: the lock's open file descriptions).  May be empty.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from lockfsm.errors import InvalidArgument


class Capabilities(NamedTuple):
    """What a backend can do, as data (DESIGN.md's capability table).  Tables' events name the
    capability they require (``requires = "hotplug"``)."""

    per_disk: bool
    shared: bool
    hotplug: bool
    migration: bool
    atomic_handoff: bool
    holder_death_frees: str
    self_fencing: bool
    spans_hosts: str


class ConfigKey(NamedTuple):
    """One configuration key: its check (returns the value to keep or raises ValueError with the
    reason), its default (a callable, computed when absent) and one line of documentation."""

    check: Callable[[Any], Any]
    default: Callable[[], Any]
    doc: str


class LeaseView(Protocol):
    """The supervisor's lease machines, read-only: what a holder is driven by."""

    def state(self, key: str) -> str | None:
        """The state of lease ``key`` (a state of specs/lease.toml), None if it has no machine."""
        ...

    def keys(self, *states: str) -> list[str]:
        """The keys of the leases in one of ``states``, sorted."""
        ...

    def lease(self, key: str) -> Mapping[str, Any]:
        """The lease ``key`` as the daemon named it (``key``, ``mode``, maybe ``version``)."""
        ...

    def label(self, key: str) -> str:
        """The resource lease ``key`` protects, as errors name it."""
        ...


class Holder(Protocol):
    def reserve(self, lease: Mapping[str, str], resource: str) -> None: ...

    def acquire(self, lease: Mapping[str, str], resource: str) -> None: ...

    def take_over(self, group: Sequence[tuple[Mapping[str, Any], str]]) -> None: ...

    def release(self, leases: Sequence[Mapping[str, Any]]) -> None: ...

    def unreserve(self, leases: Sequence[Mapping[str, Any]]) -> None: ...

    def expect_release(self) -> None: ...

    def expect_handoff(self, prepared: bool) -> None: ...

    def inheritable_fds(self) -> list[int]: ...

    notifies_changes: bool

    def take_over_due(self) -> bool: ...

    def handoff_data(self, lease: Mapping[str, Any]) -> dict[str, int]: ...

    def probe(self, lease: Mapping[str, str], resource: str) -> None: ...

    def watch(self, notify: list[str]) -> None: ...

    def event_fds(self) -> list[int]: ...

    def next_check(self) -> float | None: ...

    def poll(self) -> str | None: ...

    def settle(self, lease: Mapping[str, str]) -> None: ...


class PollingHolder:
    """What a holder without change notifications shares (fcntl, sanlock, nop): a waiting
    take-over polls, no descriptor wakes the supervisor, and a handoff carries no data (the
    target's reservation covers the window).  A holder overrides what it does otherwise."""

    notifies_changes = False  # a waiting take-over polls

    def take_over_due(self) -> bool:
        return False

    def event_fds(self) -> list[int]:
        return []

    def handoff_data(self, lease: Mapping[str, Any]) -> dict[str, int]:
        return {}

    def expect_release(self) -> None:
        pass  # a release costs the same whenever it comes

    def expect_handoff(self, prepared: bool) -> None:
        pass  # likewise


class Backend(Protocol):
    name: str
    capabilities: Capabilities
    config_keys: Mapping[str, ConfigKey]

    def leases(
        self, resource_type: str, path: str, canonical: str, shared: bool
    ) -> list[dict[str, str]]: ...


#: Backend name -> module (imported on first use).
MODULES = {
    "nop": "lockfsm.backends.nop",
    "fcntl": "lockfsm.backends.fcntl",
    "sanlock": "lockfsm.backends.sanlock",
    "etcd": "lockfsm.backends.etcd",
}


def module(name: object) -> Any:
    """The module of backend ``name``.  Raises InvalidArgument for an unknown name."""
    if not isinstance(name, str) or name not in MODULES:
        raise InvalidArgument(f"unknown driver {name!r}: known drivers are {', '.join(MODULES)}")
    return importlib.import_module(MODULES[name])


def make_holder(name: str, config: Mapping[str, Any], view: LeaseView) -> Holder:
    """The holding half of backend ``name`` (in the supervisor), from a validated config, driven
    by the lease machines ``view`` shows."""
    holder: Holder = module(name).make_holder(config, view)
    return holder
