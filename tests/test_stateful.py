"""One host on the fcntl backend, driven by hypothesis: real supervisors, real guests (``sleep``),
the kernel as the judge.

The world is small on purpose, so that conflicts are frequent: four disk files and a symlink to one
of them, and four domains.  alpha and beta share d2 (SHARED); gamma writes d0 through the symlink
a0, so it clashes with alpha on d0's canonical lease; gamma reads d3 (READONLY), which delta writes.
Hot-plug may add any file with any flags, so any clash can come up.

Each step is one call that can be made now (:data:`CALLS`): start, hot-plug, hot-unplug, shutdown,
free, kill -9 of a supervisor or of a guest, ATTACH, daemon restart, a stale daemon's manager, an
illegal call.  Each asserts what the model predicts: success, or which error.  The invariants hold
DESIGN.md's safety properties against the kernel, not against the model alone:

* S1: no disk is used, or locked through a live guest's processes, by two live guests unless
  every holder is shared;
* S2: every live guest's supervisor holds exactly the leases of the guest's disks
  (``/proc/<pid>/fdinfo``), and the guest shares the descriptions of the leases taken at its start,
  so that they outlive a killed supervisor (also checked at the instant of the kill);
* S4: a daemon restart, then ATTACH, finds the same guest pid, the same resources and the same
  locks (:meth:`OneHost.restart_daemon`, :meth:`OneHost.attach_to`);
* S5: a refused call changes nothing: managers' states, histories and resources, the lease files'
  locks, the processes and the run directory (:meth:`OneHost.refused`);
* the kernel's locks on the lease files (F_OFD_GETLK) are those the model says the live guests
  hold, and no other process has a lease file open.

Profiles come from tests/conftest.py (``LOCKFSM_HYPOTHESIS_PROFILE=nightly`` for the long run).
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import os
import shutil
import signal
import struct
import subprocess
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import lockfsm
from lockfsm import (
    BackendError,
    DomainState,
    IllegalTransition,
    InvalidArgument,
    LeaseConflict,
    NewFlags,
    ResourceFlags,
    ResourceType,
)
from lockfsm.embed.standin import GUEST, Host, make_disks, short_tmpdir
from lockfsm.fuzz.procs import executing, open_files
from lockfsm.protocol.kernel import alive, command_line, fd_locks
from lockfsm.supervisor.process import EXIT_REFUSED
from tests.support.helpers import leases_of, wait_until

DISK = ResourceType.DISK
EXCLUSIVE = ResourceFlags(0)
SHARED = ResourceFlags.SHARED
READONLY = ResourceFlags.READONLY
FLAGS = (EXCLUSIVE, SHARED, READONLY)
LEASE_BYTE = 0  # the byte of a lease file that is the lease (libvirt's lockd locks it too)
GATE_BYTE = 1  # fcntl's migration gate: locked for an instant, or by a migration target
_FLOCK = "hhqqi"  # struct flock: l_type, l_whence, l_start, l_len, l_pid
DEAD_ATTACH_TIMEOUT = 0.3  # a killed supervisor's record still says "running": attach polls

DISKS = ("d0", "d1", "d2", "d3")
ALIASES = {"a0": "d0"}  # symlink -> the disk it names
FILES = DISKS + tuple(ALIASES)
REGISTER = ("nothing", "same", "other")  # what an ATTACH manager registers before get_child
STALE_OPS = ("shutdown", "acquire_resource")


class Phase(enum.Enum):
    OFF = "off"  # no supervisor, no guest
    RUNNING = "running"  # supervisor and guest alive (with a started manager, or orphaned)
    CRASHED = "crashed"  # the manager is started but its supervisor and guest are gone


@dataclass(frozen=True)
class Use:
    """A file of the world as one domain uses it."""

    name: str
    flags: ResourceFlags

    @property
    def disk(self) -> str:
        return ALIASES.get(self.name, self.name)

    @property
    def shared(self) -> bool:
        return bool(self.flags)

    @property
    def lease_names(self) -> frozenset[str]:
        """fcntl takes the lease of the path as given and, where it differs, the canonical one."""
        return frozenset({self.name, self.disk})

    def clashes(self, other: Use) -> bool:
        return bool(self.lease_names & other.lease_names) and not (self.shared and other.shared)


WORLD = (
    ("alpha", "a1a1a1a1-0000-4000-8000-000000000001", (Use("d0", EXCLUSIVE), Use("d2", SHARED))),
    ("beta", "b2b2b2b2-0000-4000-8000-000000000002", (Use("d1", EXCLUSIVE), Use("d2", SHARED))),
    ("gamma", "c3c3c3c3-0000-4000-8000-000000000003", (Use("a0", EXCLUSIVE), Use("d3", READONLY))),
    ("delta", "d4d4d4d4-0000-4000-8000-000000000004", (Use("d3", EXCLUSIVE),)),
)


@dataclass(eq=False)
class Domain:
    """The model of one domain, and the handles of its current run."""

    name: str
    uuid: str
    uses: tuple[Use, ...]
    phase: Phase = Phase.OFF
    mgr: lockfsm.LockManager | None = None  # the daemon's current manager of the domain
    proc: subprocess.Popen[bytes] | None = None  # the supervisor of the current run
    guest: int | None = None
    held: dict[str, Use] = field(default_factory=dict)  # disk -> use: the run's resources
    inherited: set[str] = field(default_factory=set)  # disks whose start lease the guest shares
    run: int = 0


@dataclass(eq=False)
class Stale:
    """A manager of a daemon that has since restarted."""

    mgr: lockfsm.LockManager
    domain: str
    run: int


# -- the kernel's view ---------------------------------------------------------------------------


def lease_files(lockspace: str) -> dict[int, str]:
    """inode -> lease key, for every lease file of the lockspace (other tests lock other files on
    this machine: only ours count)."""
    return {os.stat(os.path.join(lockspace, key)).st_ino: key for key in os.listdir(lockspace)}


Lock = tuple[str, int, str]  # (lease key, byte, "WRITE" or "READ")
Calls = dict[str, tuple[Callable[[], object], type[Exception]]]  # name -> (call, its error)


def lease_states(lockspace: str) -> dict[tuple[str, int], str]:
    """(lease key, byte) -> "WRITE" or "READ", for each locked lease or gate byte of the
    lockspace, as the kernel answers F_OFD_GETLK on each lease file.

    Not from /proc/locks: one read() of it is one consistent walk of the kernel's table but
    returns at most a page, and each further read() -- even the one that only meets the end of
    the file -- walks again from a position, so while other processes lock and unlock (the other
    tests on this machine) a listing shows locks twice or misses them.  Exact counts come from
    each process's /proc/<pid>/fdinfo instead (:func:`process_locks`).
    """
    states = {}
    for key in os.listdir(lockspace):
        fd = os.open(os.path.join(lockspace, key), os.O_RDWR | os.O_CLOEXEC)
        try:
            for byte in (LEASE_BYTE, GATE_BYTE):
                probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0)
                kind = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe))[0]
                if kind != fcntl.F_UNLCK:  # a write lock excludes every other lock
                    states[(key, byte)] = "WRITE" if kind == fcntl.F_WRLCK else "READ"
        finally:
            os.close(fd)
    return states


def process_locks(pid: int | None, files: dict[int, str]) -> frozenset[Lock]:
    """The locks held through the open files of ``pid`` on lease files."""
    if pid is None:
        return frozenset()
    return frozenset((files[i], byte, kind) for i, byte, kind in fd_locks(pid) if i in files)


def changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    """What differs between two snapshots, for an assertion message."""
    return "changed " + "; ".join(
        f"{key}: {before[key]} -> {after[key]}" for key in before if before[key] != after[key]
    )


def openers(directory: str) -> set[int]:
    """The processes that have a file of ``directory`` open."""
    return {
        int(pid)
        for pid in filter(str.isdigit, os.listdir("/proc"))
        if any(name.startswith(directory + "/") for name in open_files(int(pid)))
    }


class OneHost(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.work = os.path.realpath(short_tmpdir("lfw"))
        make_disks(self.work, *DISKS)
        for alias, disk in ALIASES.items():
            os.symlink(disk, self.path(alias))
        self.lockspace = short_tmpdir("lfl")
        # Disk leases only: each domain's own lease on its uuid (domain_lease) would be one more
        # lock per guest for the model to count; the two-host machine and test_config cover it.
        self.host = Host("fcntl", self.lockspace, domain_lease=False)
        self.domains = {name: Domain(name, uuid, uses) for name, uuid, uses in WORLD}
        self.stale: list[Stale] = []
        self.made: list[lockfsm.LockManager] = []  # managers of the current daemon's driver
        self.guests: list[int] = []  # every guest pid seen, for teardown
        self.at_restart: object = None  # the world as the last daemon restart left it
        self.runs = 0

    def teardown(self) -> None:
        self.host.cleanup()
        # Host.cleanup kills the process groups of live supervisors only: a guest that outlived
        # its supervisor (a failed run, a broken PR_SET_PDEATHSIG) would live on, holding leases
        # and pytest's output pipe.
        for pid in self.guests:
            if alive(pid) and command_line(pid) == GUEST:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.lockspace, ignore_errors=True)

    # -- the model -------------------------------------------------------------------------------

    def path(self, name: str) -> str:
        return os.path.join(self.work, name)

    def leases(self, use: Use) -> set[Lock]:
        """The locks that protect ``use``: byte 0 of each lease file, named as libvirt's lockd
        names them.  (Byte 1, fcntl's migration gate, is locked only for an instant, or by a
        migration target: never at rest in this one-host world.)"""
        kind = "READ" if use.shared else "WRITE"
        return {
            (hashlib.sha256(self.path(n).encode()).hexdigest(), LEASE_BYTE, kind)
            for n in use.lease_names
        }

    def live(self) -> list[Domain]:
        return [d for d in self.domains.values() if d.phase is Phase.RUNNING]

    def controlled(self) -> list[Domain]:
        """Domains whose current manager is started (their guest runs, or crashed)."""
        return [d for d in self.domains.values() if d.mgr and d.mgr.state is DomainState.STARTED]

    def startable(self) -> list[Domain]:
        return [d for d in self.domains.values() if d.phase is Phase.OFF]

    def unpluggable(self) -> list[Domain]:
        return [d for d in self.controlled() if d.held]

    def freeable(self) -> list[Domain]:
        return [d for d in self.domains.values() if d.mgr and d.mgr.state is not DomainState.FREED]

    def world(self) -> object:
        """What a daemon restart depends on (a second restart in a row tests nothing new)."""
        return [
            (d.phase, d.run, sorted(d.held), d.mgr, d.mgr and d.mgr.state)
            for d in self.domains.values()
        ]

    def restartable(self) -> bool:
        return self.world() != self.at_restart

    def attachable(self) -> list[Domain]:
        """Domains no manager controls: orphans, and domains that do not run."""
        return [d for d in self.domains.values() if d not in self.controlled()]

    def clashers(self, use: Use, asker: Domain) -> list[Domain]:
        """The live domains, other than ``asker``, whose leases refuse ``use``."""
        return [
            d
            for d in self.live()
            if d is not asker and any(use.clashes(h) for h in d.held.values())
        ]

    def expected_states(self) -> dict[tuple[str, int], str]:
        """What F_OFD_GETLK must find: the lease byte of each disk a live guest holds, locked
        for writing if one holds it exclusively; no gate byte locked (no migration here)."""
        want: dict[tuple[str, int], str] = {}
        for dom in self.live():
            for use in dom.held.values():
                for key, byte, kind in self.leases(use):
                    if want.get((key, byte)) != "WRITE":
                        want[(key, byte)] = kind
        return want

    def described(self, resources: Iterable[lockfsm.Resource]) -> set[tuple[str, str, int]]:
        return {(r.path, r.canonical, int(r.flags)) for r in resources}

    def described_uses(self, uses: Iterable[Use]) -> set[tuple[str, str, int]]:
        return {(self.path(u.name), self.path(u.disk), int(u.flags)) for u in uses}

    def managers(self) -> list[lockfsm.LockManager]:
        mgrs = [d.mgr for d in self.domains.values() if d.mgr is not None]
        return mgrs + [s.mgr for s in self.stale]

    def pick(self, data: st.DataObject, domains: list[Domain], label: str) -> Domain:
        name = data.draw(st.sampled_from(sorted(d.name for d in domains)), label=label)
        return self.domains[name]

    def new_manager(self, dom: Domain, flags: int = 0) -> lockfsm.LockManager:
        mgr = self.host.manager(dom.name, dom.uuid, flags=flags)
        self.made.append(mgr)
        return mgr

    # -- S5: a refused call changes nothing --------------------------------------------------------

    def snapshot(self, extra: Iterable[lockfsm.LockManager] = (), run_dir: bool = True) -> Any:
        files = lease_files(self.lockspace)
        return {
            "managers": [
                (m.label, m.state, m.moves, frozenset(m.resources), m.flags)
                for m in [*self.managers(), *extra]
            ],
            "lease states": lease_states(self.lockspace),
            "processes": {
                d.name: (
                    d.proc.poll() if d.proc else None,
                    d.guest and alive(d.guest),
                    process_locks(d.proc.pid if d.proc else None, files),
                    process_locks(d.guest, files),
                )
                for d in self.domains.values()
            },
            "run_dir": sorted(os.listdir(self.host.run_dir)) if run_dir else None,
        }

    def refused(
        self,
        error: type[Exception],
        call: Callable[[], object],
        extra: Iterable[lockfsm.LockManager] = (),
        run_dir: bool = True,
    ) -> Any:
        """Assert ``call`` raises ``error`` and changes nothing (S5); return the error."""
        extra = list(extra)
        before = self.snapshot(extra, run_dir)
        with pytest.raises(error) as info:
            call()
        after = self.snapshot(extra, run_dir)
        assert after == before, f"S5: a refused call ({info.value!r}) {changes(before, after)}"
        return info.value

    def check_conflict(self, err: LeaseConflict, clashes: dict[Use, list[Domain]]) -> None:
        """The conflict names a clashing resource and, since every holder is local, its domain."""
        by_label = {f"disk {self.path(u.name)}": who for u, who in clashes.items() if who}
        assert err.resource in by_label, f"{err.resource!r} is not one of {sorted(by_label)}"
        names = sorted(d.name for d in by_label[err.resource])
        assert any(f"domain {n!r}" in err.holder for n in names), (
            f"LeaseConflict says the holder is {err.holder!r}; the live holders are {names}"
        )

    # -- lifecycle rules -------------------------------------------------------------------------

    @initialize(order=st.permutations([name for name, _, _ in WORLD]), count=st.integers(0, 4))
    def boot(self, order: list[str], count: int) -> None:
        """Start some domains in some order (the later ones may be refused), so that every
        example begins in an interesting state."""
        for name in order[:count]:
            self.start_domain(self.domains[name], reuse=False)

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        """One of the calls that can be made now, drawn by the weights of :data:`CALLS`.

        One rule, not one per call: hypothesis's swarm testing turns whole rules off for an
        example, and in a 25-example run that starved the calls with preconditions (measured:
        one successful hot-plug in 27 examples, while restarts and refused attaches churned)."""
        names = [
            name for name, (can, _, weight) in CALLS.items() if can(self) for _ in range(weight)
        ]
        name = data.draw(st.sampled_from(names), label="call")
        args = {key: data.draw(strategy, label=key) for key, strategy in CALLS[name][1].items()}
        getattr(self, name)(data, **args)

    def start(self, data: st.DataObject) -> None:
        dom = self.pick(data, self.startable(), "start")
        old = dom.mgr
        reusable = old is not None and old.state is DomainState.IDLE and not old.flags
        self.start_domain(dom, reusable and data.draw(st.booleans(), label="reuse idle manager"))

    def start_domain(self, dom: Domain, reuse: bool) -> None:
        """Launch a supervisor for ``dom``, which must start iff none of its leases clashes with
        a live guest's, or else refuse with LeaseConflict changing nothing."""
        if reuse:
            assert dom.mgr is not None
            mgr = dom.mgr
        else:
            mgr = self.new_manager(dom)
            for use in dom.uses:
                mgr.register_resource(DISK, self.path(use.name), use.flags)
        clashes = {use: self.clashers(use, dom) for use in dom.uses}
        moves = mgr.moves
        if any(clashes.values()):
            procs: list[subprocess.Popen[bytes]] = []

            def launch() -> None:
                procs.append(self.host.launch(mgr))
                mgr.get_child(timeout=10)

            # The refused supervisor has given back what it took and closed its socket before
            # get_child raises, which has removed its record: nothing is left to see.
            self.check_conflict(self.refused(LeaseConflict, launch, [mgr]), clashes)
            assert procs[0].wait(10) == EXIT_REFUSED, "a refused supervisor exits EX_TEMPFAIL"
            dom.mgr = mgr
            event("start: refused, LeaseConflict")
            return
        proc = self.host.launch(mgr)
        dom.guest = mgr.get_child(timeout=10)
        self.guests.append(dom.guest)
        assert mgr.state is DomainState.STARTED and mgr.moves == moves + 1
        self.runs += 1
        dom.phase, dom.mgr, dom.proc, dom.run = Phase.RUNNING, mgr, proc, self.runs
        dom.held = {use.disk: use for use in dom.uses}
        dom.inherited = set(dom.held)
        event("start: ok" + (", with the manager a conflict refused" if reuse else ""))

    def hotplug(self, data: st.DataObject, name: str, flags: ResourceFlags) -> None:
        dom = self.pick(data, self.controlled(), "hot-plug into")
        mgr, use = dom.mgr, Use(name, flags)
        assert mgr is not None

        def call() -> None:
            mgr.acquire_resource(DISK, self.path(name), flags)

        if use.disk in dom.held:  # names a file the guest has (maybe by another path)
            self.refused(InvalidArgument, call)
            event("hot-plug: refused, already registered")
        elif dom.phase is Phase.CRASHED:
            self.refused(BackendError, call)
            event("hot-plug: refused, supervisor gone")
        elif who := self.clashers(use, dom):
            self.check_conflict(self.refused(LeaseConflict, call), {use: who})
            event("hot-plug: refused, LeaseConflict")
        else:
            moves = mgr.moves
            call()
            assert mgr.state is DomainState.STARTED and mgr.moves == moves + 1
            dom.held[use.disk] = use
            event("hot-plug: ok")

    def hot_unplug(self, data: st.DataObject, by_canonical: bool) -> None:
        dom = self.pick(data, self.unpluggable(), "hot-unplug from")
        disk = data.draw(st.sampled_from(sorted(dom.held)), label="disk")
        use, mgr = dom.held[disk], dom.mgr
        assert mgr is not None

        def call() -> None:
            mgr.release_resource(DISK, self.path(use.disk if by_canonical else use.name), use.flags)

        if dom.phase is Phase.CRASHED:
            self.refused(BackendError, call)
            event("hot-unplug: refused, supervisor gone")
            return
        moves = mgr.moves
        call()
        assert mgr.state is DomainState.STARTED and mgr.moves == moves + 1
        del dom.held[disk]
        dom.inherited.discard(disk)
        event("hot-unplug: ok")

    def shutdown(self, data: st.DataObject) -> None:
        dom = self.pick(data, self.controlled(), "shut down")
        assert dom.mgr is not None
        moves = dom.mgr.moves
        dom.mgr.shutdown()
        assert dom.mgr.state is DomainState.STOPPED and dom.mgr.moves == moves + 1
        if dom.phase is Phase.RUNNING:
            assert dom.proc is not None and dom.guest is not None
            # "Returns once every lease is released": at once, not when the supervisor exits.
            assert not alive(dom.guest), "shutdown() returned while the guest lives"
            held = process_locks(dom.proc.pid, lease_files(self.lockspace))
            assert not held, f"shutdown() returned while the supervisor still holds {held}"
            assert dom.proc.wait(10) == 128 + signal.SIGTERM, "the guest's status, passed on"
        event(f"shutdown: of a {dom.phase.value} domain")
        self.ended(dom)

    def free(self, data: st.DataObject) -> None:
        dom = self.pick(data, self.freeable(), "free the manager of")
        assert dom.mgr is not None
        moves = dom.mgr.moves
        dom.mgr.free()  # never releases a lease: a running guest becomes an orphan
        assert dom.mgr.state is DomainState.FREED and dom.mgr.moves == moves + 1
        event(f"free: of a {dom.phase.value} domain's manager")
        if dom.phase is Phase.CRASHED:
            self.ended(dom)

    def ended(self, dom: Domain) -> None:
        dom.phase, dom.proc, dom.guest = Phase.OFF, None, None
        dom.held, dom.inherited = {}, set()

    # -- crashes ---------------------------------------------------------------------------------

    def crashed(self, dom: Domain) -> None:
        """The supervisor and the guest are dead: with a started manager the domain waits for its
        shutdown(); an orphan is simply off."""
        if dom.mgr is not None and dom.mgr.state is DomainState.STARTED:
            dom.phase, dom.proc, dom.guest, dom.inherited = Phase.CRASHED, None, None, set()
        else:
            self.ended(dom)

    def kill_supervisor(self, data: st.DataObject) -> None:
        dom = self.pick(data, self.live(), "kill -9 the supervisor of")
        assert dom.proc is not None and dom.guest is not None
        os.kill(dom.proc.pid, signal.SIGKILL)
        assert dom.proc.wait(10) == -signal.SIGKILL
        # S2 at the instant that matters: while the guest still executes, the leases it took at
        # start are still locked (it shares their open file descriptions).  Locks first, then the
        # guest: a lock freed by the guest's own exit means the guest had begun to exit.
        shared = process_locks(dom.guest, lease_files(self.lockspace))
        if executing(dom.guest):
            event("kill -9 supervisor: start leases checked while the guest executes")
            for disk in dom.inherited:
                lost = self.leases(dom.held[disk]) - shared
                assert not lost, (
                    f"S2: the start leases {lost} of {disk} came free while the guest of "
                    f"{dom.name} still executes"
                )
        wait_until(lambda: not alive(dom.guest), what=f"the guest of {dom.name} to die (PDEATHSIG)")
        self.crashed(dom)
        event("kill -9 supervisor")

    def kill_guest(self, data: st.DataObject) -> None:
        dom = self.pick(data, self.live(), "kill -9 the guest of")
        assert dom.proc is not None and dom.guest is not None
        os.kill(dom.guest, signal.SIGKILL)
        assert dom.proc.wait(10) == 128 + signal.SIGKILL, "the supervisor exits with the guest"
        assert not alive(dom.guest)
        self.crashed(dom)
        event("kill -9 guest")

    # -- daemon restarts, ATTACH, stale controllers (S4) -----------------------------------------

    def attach_to(self, dom: Domain, register: str) -> None:
        """A new ATTACH manager for ``dom``: it must find the same guest and resources if the
        domain runs (and the registration, if any, matches), and fail changing nothing if not."""
        mgr = self.new_manager(dom, NewFlags.ATTACH)
        if register == "same":
            uses = list(dom.held.values())
        elif register == "other":  # one disk too many, or (all four held) one too few
            spare = [n for n in DISKS if n not in dom.held]
            held = [dom.held[d] for d in sorted(dom.held)]
            uses = [*held, Use(spare[0], EXCLUSIVE)] if spare else held[1:]
        else:
            uses = []
        for use in uses:
            mgr.register_resource(DISK, self.path(use.name), use.flags)
        matches = self.described_uses(uses) in (set(), self.described_uses(dom.held.values()))
        if dom.phase is Phase.RUNNING and matches:
            before = self.snapshot()
            moves = mgr.moves
            assert mgr.get_child(timeout=10) == dom.guest, "S4: ATTACH found another guest"
            assert mgr.state is DomainState.STARTED and mgr.moves == moves + 1
            assert self.described(mgr.resources) == self.described_uses(dom.held.values()), (
                "S4: ATTACH came back with other resources"
            )
            after = self.snapshot()
            for key in ("lease states", "processes"):
                assert after[key] == before[key], f"S4: ATTACH {changes(before, after)}"
            event(f"attach: ok, registering {register}")
        elif dom.phase is Phase.RUNNING:
            self.refused(InvalidArgument, lambda: mgr.get_child(timeout=10), [mgr])
            event("attach: refused, other resources registered")
        else:
            # An ATTACH that finds a dead supervisor's leftovers may clean them up (run_dir).
            self.refused(
                BackendError,
                lambda: mgr.get_child(timeout=DEAD_ATTACH_TIMEOUT),
                [mgr],
                run_dir=False,
            )
            event("attach: refused, no running supervisor")
        dom.mgr = mgr

    def attach(self, data: st.DataObject, register: str) -> None:
        dom = self.pick(data, self.attachable(), "attach to")
        self.attach_to(dom, register)

    def restart_daemon(self, data: st.DataObject) -> None:
        files = lease_files(self.lockspace)
        before = lease_states(self.lockspace)
        held = {d.name: process_locks(d.proc.pid, files) for d in self.live() if d.proc}
        self.host.restart_daemon()
        self.made = []
        for dom in self.domains.values():
            if dom.mgr is not None and dom.mgr.state is DomainState.STARTED:
                self.stale.append(Stale(dom.mgr, dom.name, dom.run))
            dom.mgr = None
            crashed = dom.phase is Phase.CRASHED
            if crashed:
                self.ended(dom)  # the new daemon tries it, and learns that the guest is gone
            if crashed or dom.phase is Phase.RUNNING:
                self.attach_to(dom, "nothing")
        assert lease_states(self.lockspace) == before, "S4: a daemon restart changed the locks"
        files = lease_files(self.lockspace)
        after = {d.name: process_locks(d.proc.pid, files) for d in self.live() if d.proc}
        assert after == held, "S4: a daemon restart changed what the supervisors hold"
        event(f"daemon restart with {len(held)} guests running")
        self.at_restart = self.world()

    def stale_manager(self, data: st.DataObject, op: str) -> None:
        """A manager of the daemon before a restart: refused while a newer one controls its
        guest; once that run is over, its shutdown() succeeds and touches nothing else."""
        stale = self.stale[data.draw(st.integers(0, len(self.stale) - 1), label="stale manager")]
        dom = self.domains[stale.domain]
        mine = {os.path.basename(r.canonical) for r in stale.mgr.resources}
        spare = [n for n in DISKS if n not in mine]
        if op == "acquire_resource" and spare:
            self.refused(
                BackendError, lambda: stale.mgr.acquire_resource(DISK, self.path(spare[0]))
            )
            event("stale manager: acquire_resource refused")
        elif dom.phase is Phase.RUNNING and dom.run == stale.run:
            self.refused(BackendError, stale.mgr.shutdown)
            event("stale manager: refused, superseded")
        else:
            self.stale.remove(stale)
            before = self.snapshot(run_dir=False)
            stale.mgr.shutdown()  # its supervisor is gone: succeeds, touching nothing else
            assert stale.mgr.state is DomainState.STOPPED
            after = self.snapshot(run_dir=False)
            assert after == before, f"a stale manager's shutdown {changes(before, after)}"
            event("stale manager: shutdown after its run")

    # -- illegal calls (S5) ----------------------------------------------------------------------

    def illegal_calls(self, mgr: lockfsm.LockManager) -> Calls:
        """Calls ``mgr`` must refuse in its current state, and the error each raises."""
        it, ia, p = IllegalTransition, InvalidArgument, self.path
        calls: Calls = {}
        if mgr.state is not DomainState.STARTED:
            calls["prepare_migrate"] = (lambda: mgr.prepare_migrate("qemu+tcp://b/system"), it)
            calls["complete_migrate_in"] = (mgr.complete_migrate_in, it)
        if mgr.state is DomainState.IDLE:
            calls["set_parameter('cpus')"] = (lambda: mgr.set_parameter("cpus", 2), ia)
            calls.update(self.idle_calls(mgr))
        else:  # before any argument is looked at, the state refuses
            calls["set_parameter('cpus')"] = (lambda: mgr.set_parameter("cpus", 2), it)
            calls["set_parameter('name')"] = (lambda: mgr.set_parameter("name", "x"), it)
            calls["register_resource"] = (lambda: mgr.register_resource(DISK, p("d1")), it)
        if mgr.state is DomainState.STARTED:
            calls.update(self.started_calls(mgr))
        elif mgr.state in (DomainState.STOPPED, DomainState.FREED):
            calls["get_child"] = (lambda: mgr.get_child(timeout=1), it)
            calls["shutdown"] = (mgr.shutdown, it)
            calls["acquire_resource"] = (lambda: mgr.acquire_resource(DISK, p("d0")), it)
            calls["release_resource"] = (lambda: mgr.release_resource(DISK, p("d0")), it)
        if mgr.state is DomainState.FREED:
            calls["free"] = (mgr.free, it)
        return calls

    def idle_calls(self, mgr: lockfsm.LockManager) -> Calls:
        it, ia, p = IllegalTransition, InvalidArgument, self.path
        calls: Calls = {
            "acquire_resource": (lambda: mgr.acquire_resource(DISK, p("d0")), it),
            "release_resource": (lambda: mgr.release_resource(DISK, p("d0")), it),
            "shutdown": (mgr.shutdown, it),
            "set_parameter('uuid', bad)": (lambda: mgr.set_parameter("uuid", "x-y"), ia),
            "set_parameter('id', -1)": (lambda: mgr.set_parameter("id", -1), ia),
            "register relative path": (lambda: mgr.register_resource(DISK, "d0"), ia),
            "register missing file": (lambda: mgr.register_resource(DISK, p("no")), ia),
            "register flags 8": (lambda: mgr.register_resource(DISK, p("d1"), 8), ia),
        }
        mine = {os.path.basename(r.canonical): r for r in mgr.resources}
        if "d0" in mine:  # the same file again, by its other path
            other = p("d0") if mine["d0"].path == p("a0") else p("a0")
            calls["register d0 again"] = (lambda: mgr.register_resource(DISK, other), ia)
        if mgr.flags & NewFlags.ATTACH:
            calls["supervisor_args"] = (lambda: mgr.supervisor_args, it)
        else:
            calls["get_child before launch"] = (lambda: mgr.get_child(timeout=1), ia)
            calls["set_parameter('migration_cookie')"] = (
                lambda: mgr.set_parameter("migration_cookie", "x"),
                ia,
            )
        return calls

    def started_calls(self, mgr: lockfsm.LockManager) -> Calls:
        it, ia, p = IllegalTransition, InvalidArgument, self.path
        calls: Calls = {
            "supervisor_args": (lambda: mgr.supervisor_args, it),
            "get_child(timeout=0)": (lambda: mgr.get_child(timeout=0), ia),
            "complete_migrate_in": (mgr.complete_migrate_in, it),
            "prepare_migrate('')": (lambda: mgr.prepare_migrate(""), ia),
            "acquire missing file": (lambda: mgr.acquire_resource(DISK, p("no")), ia),
            "acquire flags 8": (lambda: mgr.acquire_resource(DISK, p("d1"), 8), ia),
        }
        mine = {os.path.basename(r.canonical): r for r in mgr.resources}
        if spare := [n for n in DISKS if n not in mine]:
            calls["release unregistered"] = (lambda: mgr.release_resource(DISK, p(spare[0])), ia)
        if mine:
            disk, res = sorted(mine.items())[0]
            wrong = SHARED if not res.flags else EXCLUSIVE
            calls["acquire registered"] = (lambda: mgr.acquire_resource(DISK, p(disk)), ia)
            calls["release other flags"] = (
                lambda: mgr.release_resource(DISK, res.path, wrong),
                ia,
            )
        return calls

    def driver_calls(self) -> Calls:
        driver = self.host.driver
        calls: Calls = {
            "new_manager(ATTACH|MIGRATE)": (
                lambda: driver.new_manager(NewFlags.ATTACH | NewFlags.MIGRATE),
                InvalidArgument,
            ),
            "new_manager(8)": (lambda: driver.new_manager(8), InvalidArgument),
        }
        if any(m.state is not DomainState.FREED for m in self.made):
            calls["unload"] = (driver.unload, IllegalTransition)
        return calls

    def illegal_call(self, data: st.DataObject) -> None:
        targets = [d.name for d in self.domains.values() if d.mgr is not None]
        targets += [f"stale {i}" for i in range(len(self.stale))] + ["new manager", "driver"]
        target = data.draw(st.sampled_from(targets), label="target")
        extra: list[lockfsm.LockManager] = []
        if target == "driver":
            calls = self.driver_calls()
        else:
            if target == "new manager":
                dom = self.pick(data, list(self.domains.values()), "identity of")
                mgr = self.new_manager(dom)
                extra.append(mgr)
            elif target.startswith("stale "):
                mgr = self.stale[int(target.split()[1])].mgr
            else:
                mgr = self.domains[target].mgr  # type: ignore[assignment]
            calls = self.illegal_calls(mgr)
        name = data.draw(st.sampled_from(sorted(calls)), label="illegal call")
        call, error = calls[name]
        self.refused(error, call, extra)
        event(f"illegal call refused: {error.__name__}")

    # -- invariants, against the kernel ------------------------------------------------------------

    @invariant()
    def model_agrees_with_reality(self) -> None:
        ours = set()
        for dom in self.domains.values():
            state = dom.mgr.state if dom.mgr is not None else None
            if dom.phase is Phase.RUNNING:
                assert dom.proc is not None and dom.guest is not None
                assert dom.proc.poll() is None, f"the supervisor of {dom.name} died"
                assert alive(dom.guest), f"the guest of {dom.name} died"
                ours.add(dom.proc)
            elif dom.phase is Phase.CRASHED:
                assert state is DomainState.STARTED, f"{dom.name}: crashed, manager {state}"
            else:
                assert state in (None, DomainState.IDLE, DomainState.STOPPED, DomainState.FREED)
            if state is DomainState.STARTED:
                assert dom.mgr is not None
                assert self.described(dom.mgr.resources) == self.described_uses(
                    dom.held.values()
                ), f"the manager of {dom.name} lists other resources than the model"
                want = {
                    (k, "shared" if kind == "READ" else "exclusive")
                    for u in dom.held.values()
                    for k, _, kind in self.leases(u)
                }
                assert set(leases_of(dom.mgr)) == want, f"{dom.name}: leases named otherwise"
        for proc in self.host.procs:
            assert proc in ours or proc.poll() is not None, f"stray supervisor {proc.pid}"

    @invariant()
    def s1_one_writer(self) -> None:
        # What the guests use, as their managers (or, for orphans, the model) list it...
        users: dict[str, list[tuple[str, bool]]] = {}
        for dom in self.live():
            for disk, use in dom.held.items():
                users.setdefault(disk, []).append((dom.name, use.shared))
        for disk, who in users.items():
            assert len(who) == 1 or all(shared for _, shared in who), f"S1: {disk} used by {who}"
        # ...and what the kernel says their processes lock, per lease file.
        files = lease_files(self.lockspace)
        lockers: dict[tuple[str, int], list[tuple[str, str]]] = {}
        for dom in self.live():
            assert dom.proc is not None
            held = process_locks(dom.proc.pid, files) | process_locks(dom.guest, files)
            for key, byte, kind in held:
                lockers.setdefault((key, byte), []).append((dom.name, kind))
        for lease, lockers_of in lockers.items():
            assert len(lockers_of) == 1 or all(k == "READ" for _, k in lockers_of), (
                f"S1: lease {lease} is locked by {lockers_of}"
            )

    @invariant()
    def s2_every_live_guest_is_protected(self) -> None:
        files = lease_files(self.lockspace)
        for dom in self.live():
            assert dom.proc is not None
            want = set().union(*(self.leases(u) for u in dom.held.values()))
            got = process_locks(dom.proc.pid, files)
            assert got == want, (
                f"S2: the supervisor of {dom.name} holds {sorted(got)}, its disks need "
                f"{sorted(want)}"
            )
            shared = set().union(*(self.leases(dom.held[d]) for d in dom.inherited))
            got = process_locks(dom.guest, files)
            assert got == shared, (
                f"S2: the guest of {dom.name} shares the locks {sorted(got)}, not its start "
                f"leases {sorted(shared)}: they would not outlive a killed supervisor"
            )

    @invariant()
    def the_kernel_holds_what_the_model_says(self) -> None:
        got, want = lease_states(self.lockspace), self.expected_states()
        assert got == want, f"the kernel's lease states {got} != the model's {want}"
        ours = {pid for d in self.live() for pid in (d.proc.pid if d.proc else None, d.guest)}
        strays = openers(self.lockspace) - ours
        assert not strays, f"processes {sorted(strays)} have lease files open"


#: call -> (whether it can be made now, its arguments other than ``data``, its weight).  Cheap
#: calls first: in a short run hypothesis draws the first choices more often than the others.
CALLS: dict[str, tuple[Callable[[OneHost], object], dict[str, st.SearchStrategy[Any]], int]] = {
    "hotplug": (
        OneHost.controlled,
        {"name": st.sampled_from(FILES), "flags": st.sampled_from(FLAGS)},
        4,
    ),
    "illegal_call": (lambda machine: True, {}, 2),
    "hot_unplug": (OneHost.unpluggable, {"by_canonical": st.booleans()}, 2),
    "start": (OneHost.startable, {}, 2),
    "restart_daemon": (OneHost.restartable, {}, 2),
    "stale_manager": (lambda machine: machine.stale, {"op": st.sampled_from(STALE_OPS)}, 2),
    "shutdown": (OneHost.controlled, {}, 1),
    "free": (OneHost.freeable, {}, 1),
    "kill_supervisor": (OneHost.live, {}, 2),
    "kill_guest": (OneHost.live, {}, 1),
    "attach": (OneHost.attachable, {"register": st.sampled_from(REGISTER)}, 1),
}

OneHost.TestCase.settings = settings(deadline=None)  # the rest from the loaded profile
TestOneHost = OneHost.TestCase
