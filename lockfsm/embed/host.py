"""A reference embedding: the virt daemon of one host, running real QEMU guests under lockfsm.

:class:`Host` plays the daemon's part of the seed design and nothing more.  It starts a guest
through ``lockfsm-supervisor`` (the supervisor takes the leases, then runs QEMU stopped, ``-S``;
the daemon sends ``cont`` once ``get_child`` returned), hot-plugs a disk only after its lease is
held and gives the lease back only after QEMU closed the image, re-attaches to running guests
after a restart, and live-migrates a guest to another host over QMP, calling the lock manager at
the seed's points: prepare, a target started with ``-incoming defer``, complete or cancel.  The
target's CPUs start only after its manager holds every lease.

The migration is split in the steps two daemons run on their own hosts (the names are libvirt's
phases): source :meth:`Host.migrate_begin` (prepare_migrate: the offer), target
:meth:`Host.migrate_prepare` (the incoming QEMU under a ``MIGRATE`` manager), source
:meth:`Host.migrate_perform` (QMP ``migrate``), target :meth:`Host.migrate_finish` and source
:meth:`Host.migrate_confirm` (``complete_migrate_in`` on both, or cancel).  :func:`migrate` runs
them in order for two hosts, each step on its own host's object (which may live in another
process).

A host keeps its files in ``state_dir``: the supervisors' run directory, each guest's QMP and
migration sockets, QEMU's log, and a record of each guest it runs (as libvirt's status XML), from
which a restarted daemon re-attaches.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

import attrs

import lockfsm
from lockfsm import DomainState, NewFlags, ResourceType
from lockfsm.embed.qemu import Disk, EventLoop, Guest, HypervisorError, Monitor
from lockfsm.errors import BackendError, InvalidArgument, LeaseConflict, LockFSMError
from lockfsm.protocol import kernel

__all__ = [
    "Disk",
    "Domain",
    "Guest",
    "Host",
    "HypervisorError",
    "MigrationTimes",
    "Role",
    "migrate",
]

UNTHROTTLED = 1 << 33  # bytes/s: a migration on loopback is limited by nothing else
_POLL = 0.002


class Role(enum.Enum):
    """What a host's daemon does with a guest."""

    RUNNING = "running"
    """It runs here."""
    OUTGOING = "outgoing"
    """It is the source of a migration."""
    INCOMING = "incoming"
    """It is the target of a migration (its CPUs do not run until the handoff)."""


class Domain:
    """A guest this host's daemon runs, sends or receives.

    ``role`` is ``running``, ``outgoing`` (a migration source) or ``incoming`` (a migration
    target).  ``supervisor`` is the supervisor process, when this daemon started it (not after a
    restart).
    """

    def __init__(
        self,
        guest: Guest,
        mgr: lockfsm.LockManager,
        monitor: Monitor,
        pid: int,
        role: Role,
        supervisor: subprocess.Popen[bytes] | None,
    ) -> None:
        self.guest = guest
        self.mgr = mgr
        self.monitor = monitor
        self.pid = pid
        self.role = role
        self.supervisor = supervisor


@attrs.frozen
class MigrationTimes:
    """Seconds spent in one live migration: QEMU's transfer (``migrate`` until the source's
    QEMU reports ``completed``), QEMU's own downtime (as it reports it), the handoff (from
    ``completed`` until the target's CPUs run: both completions and ``cont``; the guest is
    stopped on both sides meanwhile), and the whole (from ``prepare_migrate`` until the
    target's CPUs run)."""

    qemu: float
    downtime: float
    handoff: float
    total: float


class Host:
    """The virt daemon of one simulated host.

    ``config`` is the lock driver's configuration (``run_dir`` defaults to ``state_dir/run``);
    each guest's ``lock_failure`` policy is its manager's parameter of that name.  Raises
    InvalidArgument for a bad backend name or configuration.
    """

    def __init__(
        self,
        name: str,
        state_dir: str,
        backend: str = "fcntl",
        config: Mapping[str, Any] | None = None,
        qemu: str = "qemu-system-x86_64",
    ) -> None:
        self.name = name
        self.state_dir = state_dir
        self.backend = backend
        self.qemu = qemu
        os.makedirs(os.path.join(state_dir, "domains"), mode=0o700, exist_ok=True)
        self.config: dict[str, Any] = {"run_dir": os.path.join(state_dir, "run"), **(config or {})}
        self.driver = lockfsm.load_driver(backend, self.config)
        self._domains: dict[str, Domain] = {}
        self._lock = threading.Lock()
        self._loop = EventLoop()

    @property
    def run_dir(self) -> str:
        return str(self.driver.config["run_dir"])

    # -- what the daemon knows ---------------------------------------------------------------

    def names(self) -> list[str]:
        """The guests this daemon runs, sends or receives."""
        with self._lock:
            return sorted(self._domains)

    def domain(self, name: str) -> Domain:
        """Raises InvalidArgument if no guest of that name is here."""
        with self._lock:
            dom = self._domains.get(name)
        if dom is None:
            raise InvalidArgument(f"no guest {name!r} on host {self.name}")
        return dom

    def status(self, name: str) -> str:
        """QEMU's run state of the guest (``running``, ``paused``, ``inmigrate``...).  Raises
        InvalidArgument for an unknown guest, HypervisorError if QEMU does not answer."""
        return self.domain(name).monitor.status()

    def qmp(self, name: str, command: str, args: Mapping[str, object] | None = None) -> Any:
        """Run one QMP command on the guest's QEMU and return its result (for tools and tests:
        the daemon's own steps never need it).  Raises InvalidArgument for an unknown guest,
        HypervisorError if QEMU refuses or does not answer."""
        return self.domain(name).monitor.execute(command, args)

    def pid(self, name: str) -> int:
        """The guest's (QEMU's) pid.  Raises InvalidArgument for an unknown guest."""
        return self.domain(name).pid

    def guest(self, name: str) -> Guest:
        """The guest's live definition.  Raises InvalidArgument for an unknown guest."""
        return self.domain(name).guest

    # -- start, hot-plug, stop ---------------------------------------------------------------

    def start(self, guest: Guest, timeout: float = 30.0) -> int:
        """Start ``guest``: the supervisor takes every lease, then runs QEMU with its CPUs
        stopped; once ``get_child`` returned the daemon sends ``cont``.  Returns QEMU's pid.

        Raises LeaseConflict if a disk's lease is held elsewhere (the supervisor then exits
        without running QEMU), InvalidArgument if a guest of that name is here already,
        HypervisorError if QEMU does not come up (its leases are then released), or what
        ``get_child`` raises.
        """
        self._not_here(guest.name)
        mgr = self._manager(guest, NewFlags(0))
        qmp = self._path(guest, "qmp")
        proc = self._launch(mgr, guest.argv(self.qemu, qmp), guest)
        pid = self._child(mgr, proc, timeout)
        dom = Domain(guest, mgr, Monitor(self._loop, qmp, guest.name), pid, Role.RUNNING, proc)
        try:
            dom.monitor.connect(alive=lambda: kernel.alive(pid))
            dom.monitor.execute("cont")
        except HypervisorError as e:
            self._stop(dom)
            raise HypervisorError(f"{e}; QEMU said: {self.log_tail(guest)}") from None
        self._keep(dom)
        return pid

    def hotplug(self, name: str, disk: Disk) -> Disk:
        """Add ``disk`` to the running guest: its lease first, then QEMU's block nodes and
        device.  Returns the disk as placed (with its slot).

        Raises LeaseConflict if the disk is held elsewhere (QEMU never opens it),
        InvalidArgument for an unknown guest, one that is migrating, or a disk it has already,
        HypervisorError if QEMU refuses (the lease is then given back, unless QEMU could not
        drop what it had opened: then the lease stays held), BackendError if the supervisor is
        gone.
        """
        dom = self._role(name, Role.RUNNING)
        guest = dom.guest.with_disk(disk)
        placed = guest.disk(disk.path)
        dom.mgr.acquire_resource(ResourceType.DISK, placed.path, placed.flags)
        added: list[str] = []
        try:
            for node in placed.blockdevs():
                dom.monitor.execute("blockdev-add", node)
                added.append(node["node-name"])
            dom.monitor.execute("device_add", placed.device())
        except HypervisorError:
            # Undo in QEMU first; if that fails, QEMU may still have the image open and the
            # error propagates with the lease held.
            for node_name in reversed(added):
                dom.monitor.execute("blockdev-del", {"node-name": node_name})
            dom.mgr.release_resource(ResourceType.DISK, placed.path, placed.flags)
            raise
        dom.guest = guest
        self._save(dom)
        return placed

    def unplug(self, name: str, path: str) -> None:
        """Remove the disk at ``path`` from the running guest: the device, then QEMU's block
        nodes (QEMU closes the image), and only then its lease.

        Raises InvalidArgument for an unknown guest or disk or a guest that is migrating,
        HypervisorError if QEMU does not remove the device or close the image (the lease then
        stays held), BackendError if the supervisor is gone.
        """
        dom = self._role(name, Role.RUNNING)
        disk = dom.guest.disk(path)
        dom.monitor.device_del(disk.device_id)
        for node in reversed(disk.blockdevs()):
            dom.monitor.execute("blockdev-del", {"node-name": node["node-name"]})
        dom.guest = dom.guest.without_disk(path)
        self._save(dom)
        dom.mgr.release_resource(ResourceType.DISK, disk.path, disk.flags)

    def shutdown(self, name: str) -> None:
        """Stop the guest (the supervisor ends QEMU) and release its leases; forget it.

        Raises InvalidArgument for an unknown guest, IllegalTransition while it migrates out,
        BackendError if its supervisor runs but does not answer.
        """
        self._stop(self.domain(name))

    def attach(self, name: str, timeout: float = 10.0) -> int:
        """After a daemon restart: find the running guest ``name`` from this host's record of
        it, attach its supervisor (``NewFlags.ATTACH``) and its QMP monitor.  Returns QEMU's
        pid; the guest's role (running, outgoing, incoming) is the supervisor's.

        Raises InvalidArgument if this host has no record of the guest or it is attached
        already, BackendError if its supervisor is gone, HypervisorError if QEMU does not
        answer.
        """
        self._not_here(name)
        guest = self._record(name)
        mgr = self.driver.new_manager(NewFlags.ATTACH)
        for key, value in (("name", guest.name), ("uuid", guest.uuid), ("id", guest.id)):
            mgr.set_parameter(key, value)
        pid = mgr.get_child(timeout)
        role = {
            DomainState.MIGRATING_OUT: Role.OUTGOING,
            DomainState.MIGRATING_IN: Role.INCOMING,
        }.get(mgr.state, Role.RUNNING)
        monitor = Monitor(self._loop, self._path(guest, "qmp"), guest.name)
        monitor.connect(timeout, alive=lambda: kernel.alive(pid))
        self._keep(Domain(guest, mgr, monitor, pid, role, None))
        return pid

    def close(self) -> None:
        """The daemon exits: managers are freed and monitors closed; guests keep running with
        their leases (S4), for a later :meth:`attach`.  Never raises."""
        with self._lock:
            domains, self._domains = list(self._domains.values()), {}
        for dom in domains:
            dom.monitor.close()
            with contextlib.suppress(LockFSMError):
                dom.mgr.free()
        with contextlib.suppress(LockFSMError):
            self.driver.unload(force=True)
        self._loop.close()

    # -- live migration, step by step ----------------------------------------------------------

    def migrate_begin(self, name: str, hosturi: str) -> dict[str, Any]:
        """Source: ``prepare_migrate``.  Returns the offer the target daemon needs: the cookie
        and the guest's live definition.

        Raises InvalidArgument for an unknown guest or one not running, what
        ``prepare_migrate`` raises (IllegalTransition, Unsupported, BackendError).
        """
        dom = self._role(name, Role.RUNNING)
        cookie = dom.mgr.prepare_migrate(hosturi)
        dom.role = Role.OUTGOING
        return {"cookie": cookie, "guest": dom.guest.to_dict()}

    def migrate_prepare(self, offer: Mapping[str, Any], timeout: float = 30.0) -> str:
        """Target: start the incoming QEMU (``-incoming defer``, CPUs stopped) under a
        ``MIGRATE`` manager given the cookie, and let it listen.  Returns the URI the source's
        QEMU migrates to.

        Raises InvalidArgument for a bad offer or a guest of that name here already,
        LeaseConflict if another target reserved the leases, HypervisorError if QEMU does not
        come up (the incoming guest is then stopped), or what ``get_child`` raises.
        """
        guest = Guest.from_dict(offer["guest"])
        self._not_here(guest.name)
        mgr = self._manager(guest, NewFlags.MIGRATE)
        mgr.set_parameter("migration_cookie", offer["cookie"])
        qmp = self._path(guest, "qmp")
        proc = self._launch(mgr, guest.argv(self.qemu, qmp, incoming=True), guest)
        pid = self._child(mgr, proc, timeout)
        dom = Domain(guest, mgr, Monitor(self._loop, qmp, guest.name), pid, Role.INCOMING, proc)
        uri = f"unix:{self._path(guest, 'mig')}"
        try:
            dom.monitor.connect(alive=lambda: kernel.alive(pid))
            dom.monitor.execute("migrate-incoming", {"uri": uri})
        except HypervisorError as e:
            self._drop_incoming(dom)
            raise HypervisorError(f"{e}; QEMU said: {self.log_tail(guest)}") from None
        self._keep(dom)
        return uri

    def migrate_perform(
        self,
        name: str,
        uri: str,
        max_bandwidth: int | None = None,
        wait: bool = True,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Source: QEMU sends the guest to ``uri``.  With ``wait``, return once QEMU reports
        the migration completed (the source's CPUs are stopped); without, once it is active.
        ``max_bandwidth`` (bytes/s) throttles it, so that it can be cancelled.  Returns QEMU's
        ``query-migrate`` at that moment (``total-time``, ``downtime`` in ms when completed).

        Raises InvalidArgument for an unknown guest or one not migrating out, HypervisorError
        if QEMU's migration fails or is cancelled, or does not get there within ``timeout``.
        """
        dom = self._role(name, Role.OUTGOING)
        bandwidth = UNTHROTTLED if max_bandwidth is None else max_bandwidth
        dom.monitor.execute("migrate-set-parameters", {"max-bandwidth": bandwidth})
        dom.monitor.execute("migrate", {"uri": uri})
        want = {"completed"} if wait else {"active", "completed"}
        info = self._migration(dom, want | {"failed", "cancelled"}, timeout)
        if info["status"] not in want:
            raise HypervisorError(f"the migration of {name!r} {info['status']}")
        return info

    def migrate_abort(self, name: str, timeout: float = 30.0) -> str:
        """Source: cancel QEMU's migration (``migrate_cancel``); the source's QEMU goes on
        running.  Returns the migration's final status (``cancelled``, or ``completed`` if it
        completed first: then the daemon must complete, not cancel).  The lock manager is not
        called: :meth:`migrate_finish` and :meth:`migrate_confirm` with ``cancel=True`` follow.

        Raises InvalidArgument for an unknown guest or one not migrating out, HypervisorError
        if QEMU does not answer.
        """
        dom = self._role(name, Role.OUTGOING)
        dom.monitor.execute("migrate_cancel")
        return str(self._migration(dom, {"cancelled", "failed", "completed"}, timeout)["status"])

    def migrate_finish(self, name: str, cancel: bool = False, timeout: float = 30.0) -> None:
        """Target: once QEMU received the guest, ``complete_migrate_in()`` (it returns when the
        target holds every lease, after the source's completion), then ``cont``.  With
        ``cancel``: ``complete_migrate_in(cancel=True)`` (the supervisor kills the incoming
        QEMU), then the manager is shut down and freed.

        Raises InvalidArgument for an unknown guest or one not migrating in, HypervisorError if
        QEMU did not receive the guest (cancel then), LeaseConflict if the source did not give
        the leases up within ``handoff_timeout`` (cancel then; the CPUs never ran).
        """
        dom = self._role(name, Role.INCOMING)
        if cancel:
            self._drop_incoming(dom)
            return
        deadline = time.monotonic() + timeout
        while (status := dom.monitor.status()) == "inmigrate":
            if time.monotonic() > deadline:
                raise HypervisorError(f"QEMU of {name!r} is still receiving the guest")
            time.sleep(_POLL)
        if status != "paused":
            raise HypervisorError(f"the incoming QEMU of {name!r} is {status}, not paused")
        dom.mgr.complete_migrate_in()
        dom.monitor.execute("cont")  # only now: the target holds every lease
        dom.role = Role.RUNNING
        self._save(dom)

    def migrate_confirm(self, name: str, cancel: bool = False) -> DomainState:
        """Source: ``complete_migrate_in()`` once QEMU's migration completed (the supervisor
        kills the source's QEMU, then gives up every lease), then the guest is forgotten here.
        With ``cancel``: ``complete_migrate_in(cancel=True)``; the guest keeps running here with
        every lease.  Returns the manager's state right after ``complete_migrate_in``.

        Raises InvalidArgument for an unknown guest or one not migrating out, HypervisorError
        if QEMU's migration has not completed (never hand off a guest the target lacks), and
        what ``complete_migrate_in`` raises.
        """
        dom = self._role(name, Role.OUTGOING)
        if cancel:
            dom.mgr.complete_migrate_in(cancel=True)
            dom.role = Role.RUNNING
            return dom.mgr.state
        status = dom.monitor.execute("query-migrate").get("status")
        if status != "completed":
            raise HypervisorError(f"the migration of {name!r} is {status}, not completed")
        dom.monitor.close()
        dom.mgr.complete_migrate_in()
        state = dom.mgr.state
        self._stop(dom)
        return state

    # -- the parts --------------------------------------------------------------------------------

    def log_tail(self, guest: Guest, lines: int = 5) -> str:
        """The last lines the guest's supervisor and QEMU wrote on this host."""
        try:
            with open(self._path(guest, "log"), errors="replace") as f:
                return " | ".join(f.read().splitlines()[-lines:]) or "(nothing)"
        except FileNotFoundError:
            return "(no log)"

    def _path(self, guest: Guest, kind: str) -> str:
        # Short names: a Unix socket path holds at most 107 bytes.
        return os.path.join(self.state_dir, f"{guest.uuid[:13]}.{kind}")

    def _not_here(self, name: str) -> None:
        with self._lock:
            if name in self._domains:
                raise InvalidArgument(f"guest {name!r} is already on host {self.name}")

    def _role(self, name: str, role: Role) -> Domain:
        dom = self.domain(name)
        if dom.role != role:
            raise InvalidArgument(
                f"guest {name!r} on host {self.name} is {dom.role.value}, not {role.value}"
            )
        return dom

    def _manager(self, guest: Guest, flags: NewFlags) -> lockfsm.LockManager:
        mgr = self.driver.new_manager(flags)
        mgr.set_parameter("name", guest.name)
        mgr.set_parameter("uuid", guest.uuid)
        mgr.set_parameter("id", guest.id)
        mgr.set_parameter("lock_failure", guest.lock_failure)
        for disk in guest.disks:
            mgr.register_resource(ResourceType.DISK, disk.path, disk.flags)
        return mgr

    def _launch(
        self, mgr: lockfsm.LockManager, argv: list[str], guest: Guest
    ) -> subprocess.Popen[bytes]:
        """Run the supervisor with QEMU's command line after ``--``; both write to the log."""
        with open(self._path(guest, "log"), "ab") as log:
            return subprocess.Popen(
                [mgr.supervisor_path, *mgr.supervisor_args, "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a signal to the daemon is not one to its guests
            )

    @staticmethod
    def _child(mgr: lockfsm.LockManager, proc: subprocess.Popen[bytes], timeout: float) -> int:
        try:
            return mgr.get_child(timeout)
        except BaseException as e:
            try:  # a refused supervisor exits by itself, having run no guest
                proc.wait(5 if isinstance(e, LeaseConflict) else 0.01)
            except subprocess.TimeoutExpired:
                proc.kill()  # it holds whatever it holds until it is gone
            e.add_note(f"lockfsm-supervisor exited with status {proc.wait(30)}")
            with contextlib.suppress(LockFSMError):
                mgr.free()
            raise

    def _migration(self, dom: Domain, until: set[str], timeout: float) -> dict[str, Any]:
        """QEMU's ``query-migrate``, once its status is one of ``until``."""
        deadline = time.monotonic() + timeout
        while True:
            info: dict[str, Any] = dom.monitor.execute("query-migrate")
            status = info.get("status")
            if status in until:
                return info
            if time.monotonic() > deadline:
                raise HypervisorError(f"the migration of {dom.guest.name!r} is still {status}")
            time.sleep(_POLL)

    def _drop_incoming(self, dom: Domain) -> None:
        """Call off an incoming guest: cancel, stop, free, forget."""
        dom.monitor.close()
        try:
            dom.mgr.complete_migrate_in(cancel=True)
        except BackendError:
            # QEMU ends by itself when its incoming migration fails (the source cancelled):
            # its supervisor released the reservations and exited, and the cancel cannot
            # reach it.  shutdown() below succeeds on a gone supervisor and fails on one that
            # runs but does not answer.
            pass
        self._stop(dom)

    def _stop(self, dom: Domain) -> None:
        dom.monitor.close()
        if dom.mgr.state not in (DomainState.STOPPED, DomainState.FREED):
            dom.mgr.shutdown()
        if dom.mgr.state is not DomainState.FREED:
            dom.mgr.free()
        if dom.supervisor is not None:
            dom.supervisor.wait(30)
        with self._lock:
            if self._domains.get(dom.guest.name) is dom:
                del self._domains[dom.guest.name]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._record_path(dom.guest.uuid))

    def _keep(self, dom: Domain) -> None:
        with self._lock:
            self._domains[dom.guest.name] = dom
        self._save(dom)

    def _record_path(self, uuid: str) -> str:
        return os.path.join(self.state_dir, "domains", f"{uuid}.json")

    def _save(self, dom: Domain) -> None:
        path = self._record_path(dom.guest.uuid)
        with open(path + ".tmp", "w") as f:
            json.dump(dom.guest.to_dict(), f)
        os.replace(path + ".tmp", path)

    def _record(self, name: str) -> Guest:
        folder = os.path.join(self.state_dir, "domains")
        for entry in sorted(os.listdir(folder)):
            if entry.endswith(".json"):
                with open(os.path.join(folder, entry)) as f:
                    data = json.load(f)
                if data.get("name") == name:
                    return Guest.from_dict(data)
        raise InvalidArgument(f"host {self.name} has no record of a guest {name!r}")


class MigrationEnd(Protocol):
    """What :func:`migrate` needs of each host: a :class:`Host`, or a proxy to one in another
    process."""

    def migrate_begin(self, name: str, hosturi: str) -> dict[str, Any]: ...
    def migrate_prepare(self, offer: Mapping[str, Any], timeout: float = ...) -> str: ...
    def migrate_perform(
        self,
        name: str,
        uri: str,
        max_bandwidth: int | None = ...,
        wait: bool = ...,
        timeout: float = ...,
    ) -> dict[str, Any]: ...
    def migrate_abort(self, name: str, timeout: float = ...) -> str: ...
    def migrate_finish(self, name: str, cancel: bool = ..., timeout: float = ...) -> None: ...
    def migrate_confirm(self, name: str, cancel: bool = ...) -> DomainState: ...


def migrate(
    source: MigrationEnd,
    target: MigrationEnd,
    name: str,
    hosturi: str = "qemu+unix:///system",
    timeout: float = 60.0,
) -> MigrationTimes:
    """Live-migrate guest ``name`` from ``source`` to ``target``, in the seed's order: prepare,
    the incoming QEMU, QEMU's migration, then both completions at once (the target's waits for
    the source's), then the target's CPUs run.  If a step before the completions fails, the
    migration is cancelled on both sides (the guest goes on running on the source) and the
    error raised.

    Raises what the steps raise (see :class:`Host`).
    """
    began = time.monotonic()
    offer = source.migrate_begin(name, hosturi)
    try:
        uri = target.migrate_prepare(offer)
    except BaseException:
        source.migrate_confirm(name, cancel=True)
        raise
    try:
        sent = time.monotonic()
        info = source.migrate_perform(name, uri, timeout=timeout)
        done = time.monotonic()
    except BaseException:
        if source.migrate_abort(name) != "completed":
            target.migrate_finish(name, cancel=True)
            source.migrate_confirm(name, cancel=True)
        raise
    errors: list[BaseException] = []
    resumed: list[float] = []

    def finish() -> None:
        try:
            target.migrate_finish(name, timeout=timeout)
            resumed.append(time.monotonic())
        except BaseException as e:  # raised below, in the caller's thread
            errors.append(e)

    waiter = threading.Thread(target=finish, name=f"finish-{name}")
    waiter.start()
    try:
        source.migrate_confirm(name)
    finally:
        waiter.join()
    if errors:
        raise errors[0]
    return MigrationTimes(
        qemu=done - sent,
        downtime=float(info.get("downtime", 0)) / 1000,
        handoff=resumed[0] - done,
        total=resumed[0] - began,
    )
