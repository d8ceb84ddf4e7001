"""The two-host machine of tests/test_stateful_migration.py, the base of its etcd and sanlock
variants (tests/test_stateful_etcd.py, tests/test_stateful_sanlock.py): hosts A and B (a
:class:`~lockfsm.embed.standin.Pair`) and a rogue C on one fcntl lockspace, one guest, the rules
(the daemons' calls in any order, legal or not, kills, restarts) and the invariants checked
against the kernel.  What the machine tests and how: tests/test_stateful_migration.py."""

from __future__ import annotations

import enum
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from hypothesis import event, note
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

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
from lockfsm.daemon.values import MigrationCookie
from lockfsm.embed.standin import Host, Pair, make_disks
from lockfsm.fuzz.procs import executing, living, socket_inodes, wait_until
from lockfsm.protocol import kernel
from lockfsm.protocol.states import DOMAIN
from lockfsm.supervisor.process import EXIT_REFUSED

T = TypeVar("T")

DISK = ResourceType.DISK
EXCLUSIVE, SHARED = ResourceFlags(0), ResourceFlags.SHARED
NAME, UUID, ID = "vm", "5eed0000-0000-4000-8000-00000000c0de", 7
FLAGS = {"d0": EXCLUSIVE, "d1": EXCLUSIVE, "h": EXCLUSIVE, "s": SHARED}  # each disk, always so
URI = "qemu+tcp://peer/system"
HANDOFF_TIMEOUT = 0.6  # how long a target's complete_migrate_in waits for the source...
WAIT_IN_BACKGROUND = 120.0  # ...and when it runs in the background: never, in an example
DEAD_ATTACH_TIMEOUT = 0.3  # a killed supervisor's record still names it: ATTACH polls that long
SIGTERMED, SIGKILLED = 128 + signal.SIGTERM, 128 + signal.SIGKILL
LEASE, GATE = 0, 1  # the bytes of a lease file: the lease (libvirt's too), lockfsm's gate

STARTED, OUT, IN = DomainState.STARTED, DomainState.MIGRATING_OUT, DomainState.MIGRATING_IN
ACTIVE = (STARTED, OUT, IN)  # a manager in these states owns its run: no new launch beside it

PLUGGABLE = tuple(sorted(FLAGS))
#: the guest's own exclusive lease on its uuid (``domain_lease``), judged as a disk every run holds
GUEST_LEASE = "@guest"
#: the lease of each name the kernel may show (the disks and the guest's own lease)
LEASE_FLAGS = {**FLAGS, GUEST_LEASE: EXCLUSIVE}
CALLS = (
    "prepare_migrate",
    "complete_migrate_in",
    "complete_migrate_in (cancel)",
    "complete_migrate_in (in the background)",
    "shutdown",
    "free",
    "acquire_resource",
    "release_resource",
)


def choose(data: st.DataObject, items: Sequence[T], label: str) -> T:
    """One of ``items``, which depend on what real processes did: draw an index of a fixed range,
    so that a replay draws the same data whatever the list's length (hypothesis refuses
    strategies that draw differently from one run to the next).  A failing program shows the
    item chosen after the index drawn."""
    item = items[data.draw(st.integers(0, 1023), label=label) % len(items)]
    note(f"  ({label}: {item!r})")
    return item


def cookie_versions(cookie: str) -> dict[str, Any]:
    """Lease key -> the version the migration cookie carries for it (None where it has none)."""
    decoded = MigrationCookie.decode(cookie)
    return {le["key"]: le.get("version") for r in decoded.resources for le in r["leases"]}


class Sup(enum.Enum):
    """The model of a host's supervisor of the guest (at most one is live per host)."""

    NONE = "none"  # no live supervisor (never run, exited, killed, handed off, cancelled)
    RUNNING = "running"  # holds every lease (byte 0); the guest executes
    OUT = "migrating_out"  # the same, with a migration prepared
    IN = "incoming"  # reserves every lease (gate, byte 1), holds none; the guest does not execute


EXECUTING = (Sup.RUNNING, Sup.OUT)

#: Every (state of A, state of B, "host:call") triple the machines of this process went through,
#: a state being "manager state/supervisor" as the model has it: what tests/power.py measures
#: coverage with (against the reachable ones, tests/support/reach.py).
REACHED: set[tuple[str, str, str]] = set()
#: The examples (machines) this process ran.
EXAMPLES = [0]
#: protocol_run's moves, as the calls they make (the names the other rules use)
MOVE_CALLS = {
    "start": "start",
    "incoming": "incoming",
    "prepare": "prepare_migrate",
    "complete": "complete_migrate_in",
    "cancel": "complete_migrate_in (cancel)",
    "complete in the background": "complete_migrate_in (in the background)",
    "shutdown": "shutdown",
    "hot-plug h": "acquire_resource",
    "hot-unplug h": "release_resource",
    "restart daemon": "restart daemon",
}
STATE_OF = {Sup.RUNNING: STARTED, Sup.OUT: OUT, Sup.IN: IN}  # what ATTACH must come back as


@dataclass(eq=False)
class Migration:
    """One prepare_migrate: its cookie, the disks it names, how far each side got."""

    number: int
    source: str
    cookie: str
    disks: dict[str, ResourceFlags]
    source_proc: subprocess.Popen[bytes]
    source_guest: int
    source_done: bool = False  # the source's completion returned (handoff)
    target: str | None = None  # the host whose take-over with this cookie returned
    target_proc: subprocess.Popen[bytes] | None = None


@dataclass(eq=False)
class Side:
    """One host's view of the guest: its daemon's current manager, its supervisor, its guest."""

    name: str
    host: Host
    mgr: lockfsm.LockManager | None = None
    state: DomainState | None = None  # what mgr.state must be
    sup: Sup = Sup.NONE
    proc: subprocess.Popen[bytes] | None = None  # the supervisor of the current (or last) run
    guest: int | None = None
    disks: dict[str, ResourceFlags] = field(default_factory=dict)  # the run's resources
    inherited: set[str] = field(default_factory=set)  # disks whose lease the guest shares
    migration: Migration | None = None


@dataclass(eq=False)
class Pending:
    """A target's complete_migrate_in() running in a thread, as a daemon waiting for the leases."""

    side: str
    mgr: lockfsm.LockManager
    blockers: list[str]
    watched: list[int]  # guests that must have stopped executing when the call returns
    began: float
    thread: threading.Thread | None = None
    error: BaseException | None = None
    overlap: list[int] = field(default_factory=list)
    unblocked: float | None = None  # when the model saw the blockers' leases come free


# -- the kernel's view ---------------------------------------------------------------------------

Lock = tuple[str, int, str]  # (disk, byte, "WRITE" or "READ")


def kind_of(flags: ResourceFlags) -> str:
    return "READ" if flags else "WRITE"


class TwoHosts(RuleBasedStateMachine):
    #: how much a run of enabled moves weighs a blocked target's completion at once (it times
    #: out, refused), against 3 in the background
    AT_ONCE_WHEN_BLOCKED = 4

    #: the directory each example's disks and lockspace are made in (None: /tmp); ``lockfsm
    #: fuzz`` sets a scratch directory of the operator's lockspace
    SCRATCH: ClassVar[str | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.work = os.path.realpath(tempfile.mkdtemp(prefix="lfw", dir=self.SCRATCH or "/tmp"))
        make_disks(self.work, *FLAGS)
        self.lockspace = tempfile.mkdtemp(prefix="lfl", dir=self.SCRATCH or "/tmp")
        self.pair = Pair(self.lockspace, handoff_timeout=HANDOFF_TIMEOUT)
        rogue = Host("fcntl", self.lockspace, handoff_timeout=HANDOFF_TIMEOUT)
        self.sides = {
            "A": Side("A", self.pair.source),
            "B": Side("B", self.pair.target),
            "C": Side("C", rogue),
        }
        self.keys = {hashlib.sha256(self.path(d).encode()).hexdigest(): d for d in FLAGS}
        guest = f"lease:lockfsm-domains:{UUID}"
        self.keys[hashlib.sha256(guest.encode()).hexdigest()] = GUEST_LEASE
        self.base: dict[str, ResourceFlags] = {}
        self.cookie: Migration | None = None  # the latest prepared migration
        self.migrations = 0
        self.completed: list[tuple[str, str]] = []  # (source, target) of completed migrations
        self.pending: Pending | None = None
        EXAMPLES[0] += 1

    def teardown(self) -> None:
        for side in self.sides.values():
            side.host.cleanup()  # a pending call's supervisor dies: the call ends at once
        if self.pending is not None and self.pending.thread is not None:
            self.pending.thread.join(30)
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.lockspace, ignore_errors=True)

    # -- the model -------------------------------------------------------------------------------

    def path(self, disk: str) -> str:
        return os.path.join(self.work, disk)

    @staticmethod
    def abstract(side: Side) -> str:
        """A host's state as the model has it: "manager state/supervisor" ("-": no manager)."""
        return f"{side.state.value if side.state else '-'}/{side.sup.value}"

    def record(self, call: str, side: Side) -> None:
        """Note the (A, B, call) triple this step starts from (see :data:`REACHED`)."""
        a, b = (self.abstract(self.sides[n]) for n in "AB")
        REACHED.add((a, b, f"{side.name}:{call}"))

    def live(self) -> list[Side]:
        return [s for s in self.sides.values() if s.sup is not Sup.NONE]

    def managed(self) -> list[Side]:
        return [s for s in self.sides.values() if s.mgr is not None]

    def idle(self) -> list[Side]:
        """Hosts with a manager whose daemon is not busy in a pending call (a daemon serialises
        the calls on one manager, and that call ends only when its leases come free)."""
        busy = self.pending.side if self.pending is not None else None
        return [s for s in self.managed() if s.name != busy]

    def launchable(self) -> list[Side]:
        """Hosts whose daemon may make a new manager for the guest: none of theirs is active,
        and no orphan supervisor of theirs would end up beside a second one."""
        blockers = self.blockers(self.base, asker=None, whole_guest=True)
        return [
            s
            for s in self.sides.values()
            if s.state not in ACTIVE and (s.sup is Sup.NONE or s.name in blockers)
        ]

    def pick(self, data: st.DataObject, sides: list[Side], label: str) -> Side:
        return self.sides[choose(data, [s.name for s in sides], label)]

    def blockers(
        self, disks: Iterable[str], asker: Side | None, whole_guest: bool = False
    ) -> dict[str, str]:
        """Live supervisors (other than ``asker``'s) that refuse a fresh acquire of ``disks``:
        host -> "holds" (byte 0, not shared) or "reserves" (gate: an incoming target).  With
        ``whole_guest`` (a start), every live supervisor of the guest refuses it: each holds or
        reserves the guest's own lease on its uuid (domain_lease), whatever its disks."""
        found: dict[str, str] = {}
        for other in self.live():
            if other is asker:
                continue
            if whole_guest:
                found[other.name] = "reserves" if other.sup is Sup.IN else "holds"
                continue
            for disk in disks:
                if disk in other.disks and other.sup is Sup.IN:
                    found[other.name] = "reserves"
                elif disk in other.disks and not FLAGS[disk]:
                    found.setdefault(other.name, "holds")
        return found

    def gate_blockers(self, disks: Iterable[str]) -> list[str]:
        """Incoming targets of the guest: a second target is refused (each reserves the guest's
        own lease, whatever ``disks``)."""
        return [o.name for o in self.live() if o.sup is Sup.IN]

    def takeover_blockers(self, target: Side) -> list[str]:
        """Executing supervisors whose leases the target's take-over cannot have yet: every one
        of the guest's, since each holds the guest's own exclusive lease (domain_lease), even
        where the disks are all shared."""
        return [o.name for o in self.live() if o is not target and o.sup in EXECUTING]

    @staticmethod
    def why(blockers: dict[str, str], what: str) -> str:
        """The invariant a call that must be refused protects: S1 if someone holds a lease,
        S3 if it is only reserved by an incoming target."""
        tag = "S1" if "holds" in blockers.values() else "S3"
        who = ", ".join(f"{h} {how}" for h, how in sorted(blockers.items()))
        return f"{tag}: {what} must be refused ({who} the leases)"

    def side_locks(self, side: Side, disks: Iterable[str] | None = None) -> frozenset[Lock]:
        """The locks the model says ``side``'s live supervisor has on ``disks`` (all of the run's,
        by default) and on the guest's own lease, which every run holds from its start."""
        if side.sup is Sup.NONE:
            return frozenset()
        names = [*(side.disks if disks is None else disks), GUEST_LEASE]
        if side.sup is Sup.IN:
            return frozenset((d, GATE, "WRITE") for d in names)
        return frozenset((d, LEASE, kind_of(LEASE_FLAGS[d])) for d in names)

    def expected_locks(self) -> Counter[Lock]:
        want: Counter[Lock] = Counter()
        for side in self.live():
            want.update(self.side_locks(side))
        return want

    def new_manager(
        self, side: Side, flags: NewFlags, disks: dict[str, ResourceFlags]
    ) -> lockfsm.LockManager:
        mgr = side.host.driver.new_manager(flags)
        mgr.set_parameter("uuid", UUID)
        mgr.set_parameter("name", NAME)
        mgr.set_parameter("id", ID)
        for disk in sorted(disks):
            mgr.register_resource(DISK, self.path(disk), disks[disk])
        return mgr

    def resources(self, mgr: lockfsm.LockManager) -> dict[str, int]:
        return {os.path.basename(r.path): int(r.flags) for r in mgr.resources}

    # -- the kernel ------------------------------------------------------------------------------

    def inodes(self) -> dict[int, str]:
        """inode -> disk, for this example's lease files."""
        found = {}
        for key in os.listdir(self.lockspace):
            if key in self.keys:
                found[os.stat(os.path.join(self.lockspace, key)).st_ino] = self.keys[key]
        return found

    def kernel_locks(self) -> Counter[Lock] | None:
        """Every lock the kernel lists on this lockspace's lease files (other tests lock other
        files on this machine: only ours count), or None if the table cannot be read whole."""
        files = self.inodes()
        try:
            locks = kernel.locks_on(files)
        except OSError:
            return None
        return Counter(
            (files[lock.inode], byte, lock.kind) for lock in locks for byte in lock.bytes
        )

    def held_by(self, pid: int | None, inodes: dict[int, str] | None = None) -> frozenset[Lock]:
        """The locks held through process ``pid``'s open files on this lockspace's lease files."""
        if pid is None:
            return frozenset()
        names = self.inodes() if inodes is None else inodes
        return frozenset((names[i], b, k) for i, b, k in kernel.fd_locks(pid) if i in names)

    # -- S5: a refused call changes nothing --------------------------------------------------------

    def snapshot(self, extra: Iterable[lockfsm.LockManager] = ()) -> dict[str, Any]:
        mgrs = [s.mgr for s in self.managed()] + list(extra)
        return {
            "managers": [
                (m.label, m.flags, m.state, m.moves, frozenset(m.resources))
                for m in mgrs
                if m is not None
            ],
            "kernel locks": self.kernel_locks(),
            "processes": {
                s.name: (
                    s.proc.poll() if s.proc else None,
                    living(s.guest) if s.guest else None,
                    self.held_by(s.proc.pid if s.proc else None),
                    self.held_by(s.guest),
                )
                for s in self.sides.values()
            },
        }

    def refused(
        self,
        error: type[Exception],
        call: Callable[[], object],
        why: str,
        extra: Iterable[lockfsm.LockManager] = (),
    ) -> Exception:
        """Assert ``call`` raises ``error`` (``why`` names the invariant if it does not) and that
        it changed nothing (S5); return the error."""
        extra = list(extra)
        before = self.snapshot(extra)
        try:
            call()
        except error as e:
            err = e
        except lockfsm.LockFSMError as e:
            raise AssertionError(f"{why}: raised {e!r}, not {error.__name__}") from e
        else:
            raise AssertionError(f"{why}: the call succeeded, {error.__name__} was expected")
        after = self.snapshot(extra)
        changed = {
            k: (before[k], after[k])
            for k in before
            if before[k] != after[k] and None not in (before[k], after[k])
        }
        assert not changed, f"S5: a refused call ({err!r}) changed (before, after) {changed}"
        return err

    @staticmethod
    def expect_ok(call: Callable[[], T], what: str) -> T:
        """Run a call the model says must succeed; name the invariant if it does not."""
        try:
            return call()
        except lockfsm.LockFSMError as e:
            raise AssertionError(f"{what}: refused with {e!r}") from e

    # -- starts ----------------------------------------------------------------------------------

    @initialize(shared=st.booleans())
    def boot(self, shared: bool) -> None:
        """The guest's disks (with or without the shared one), and the guest started on A (the
        protocol's first step; any host may start it again later)."""
        self.base = {"d0": EXCLUSIVE, "d1": EXCLUSIVE}
        if shared:
            self.base["s"] = SHARED
        self.do_start(self.sides["A"])

    def launch_refused(self, side: Side, mgr: lockfsm.LockManager) -> Callable[[], None]:
        """A launch whose supervisor must be refused: it exits 75 having started no guest."""

        def call() -> None:
            proc = side.host.launch(mgr)
            try:
                mgr.get_child(timeout=10)
            except lockfsm.LockFSMError:
                code = proc.wait(10)
                assert code == EXIT_REFUSED, f"S5: a refused supervisor exited {code}, not 75"
                raise

        return call

    def do_start(self, side: Side) -> None:
        mgr = self.new_manager(side, NewFlags(0), self.base)
        blockers = self.blockers(self.base, asker=None, whole_guest=True)
        if blockers:
            why = self.why(blockers, f"a start on {side.name}")
            self.refused(LeaseConflict, self.launch_refused(side, mgr), why, [mgr])
            side.mgr, side.state = mgr, DomainState.IDLE
            event(f"start refused: {'held' if 'holds' in blockers.values() else 'reserved'}")
            return
        proc = side.host.launch(mgr)
        pid = self.expect_ok(lambda: mgr.get_child(timeout=10), f"model: start on {side.name}")
        assert mgr.state is STARTED
        side.mgr, side.state, side.sup, side.proc, side.guest = mgr, STARTED, Sup.RUNNING, proc, pid
        side.disks, side.inherited, side.migration = dict(self.base), set(self.base), None
        event(f"start on {side.name}: ok")

    @precondition(lambda self: self.launchable())
    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        """A fresh start on any host (C: the rogue third): it starts iff no live supervisor holds
        or reserves one of its leases, or is refused (LeaseConflict, exit 75) changing nothing."""
        side = self.pick(data, self.launchable(), "start on")
        self.record("start", side)
        self.do_start(side)

    def incoming_hosts(self) -> list[Side]:
        return [s for s in self.launchable() if s.sup is Sup.NONE] if self.cookie else []

    def do_incoming(self, side: Side) -> None:
        m = self.cookie
        assert m is not None
        mgr = self.new_manager(side, NewFlags.MIGRATE, m.disks)
        mgr.set_parameter("migration_cookie", m.cookie)
        if others := self.gate_blockers(m.disks):
            why = f"S3: a second incoming target on {side.name} (while {others} reserves)"
            self.refused(LeaseConflict, self.launch_refused(side, mgr), why, [mgr])
            side.mgr, side.state = mgr, DomainState.IDLE
            event("incoming refused: another target reserves")
            return
        proc = side.host.launch(mgr)
        pid = self.expect_ok(lambda: mgr.get_child(timeout=10), f"model: incoming on {side.name}")
        assert mgr.state is IN
        side.mgr, side.state, side.sup, side.proc, side.guest = mgr, IN, Sup.IN, proc, pid
        side.disks, side.inherited, side.migration = dict(m.disks), set(m.disks), m
        event(f"incoming on {side.name}: ok" + (" (stale cookie)" if m.source_done else ""))

    @precondition(lambda self: self.incoming_hosts())
    @rule(data=st.data())
    def incoming(self, data: st.DataObject) -> None:
        """A target's incoming start with the latest cookie (even a stale one): it reserves every
        lease unless another target does (then LeaseConflict, nothing changed)."""
        side = self.pick(data, self.incoming_hosts(), "incoming on")
        self.record("incoming", side)
        self.do_incoming(side)

    # -- the source's calls ----------------------------------------------------------------------

    def do_prepare(self, side: Side) -> None:
        mgr = side.mgr
        assert mgr is not None

        def call() -> str:
            return mgr.prepare_migrate(URI)

        if side.state is not STARTED:
            self.refused(IllegalTransition, call, f"S5: prepare_migrate in {side.state}")
            return
        if side.sup is Sup.NONE:
            self.refused(BackendError, call, "S5: prepare_migrate with the supervisor gone")
            return
        cookie = self.expect_ok(call, f"model: prepare_migrate on {side.name}")
        assert side.proc is not None and side.guest is not None
        self.migrations += 1
        m = Migration(self.migrations, side.name, cookie, dict(side.disks), side.proc, side.guest)
        side.state, side.sup, side.migration, self.cookie = OUT, Sup.OUT, m, m
        event("prepare_migrate: ok")

    def hand_off(self, side: Side) -> None:
        """The source's completion, watched: while its guest executes, its supervisor holds
        every lease (S3); when the call returns the guest is dead and the supervisor gone."""
        mgr, proc, guest, m = side.mgr, side.proc, side.guest, side.migration
        assert mgr is not None and proc is not None and m is not None
        want, read = self.side_locks(side), self.lock_reader(proc.pid)
        stop, seen = threading.Event(), []

        def watch() -> None:
            while not stop.is_set():
                got = read()  # the locks first, then the guest
                if not want <= got and executing(guest):
                    seen.append(sorted(want - got))
                    return
                time.sleep(0.0005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            self.expect_ok(mgr.complete_migrate_in, f"model: the source {side.name} completes")
        finally:
            stop.set()
            watcher.join(10)
        assert not seen, (
            f"S3: the source {side.name}'s supervisor let {seen[0]} go while its guest executed"
        )
        assert not executing(guest), "S3: the source's completion returned, its guest executes"
        assert proc.wait(10) == 0, f"L1: the handed-off supervisor exited {proc.returncode}"
        side.state, side.sup, m.source_done = DomainState.DONE, Sup.NONE, True
        event("source completed (handoff)")
        if m.target is not None:
            self.check_l1(m)

    def lock_reader(self, pid: int) -> Callable[[], frozenset[Any]]:
        """What the watch of a handoff reads, again and again: the locks of ``pid`` (on fcntl,
        through the lease files' inodes, looked up once)."""
        names = self.inodes()
        return lambda: self.held_by(pid, names)

    def take_over(self, side: Side) -> None:
        """The model's side of a target's take-over that returned: the guest may run now, with
        every lease of the cookie held and no resource lost or added (S3)."""
        assert side.sup is Sup.IN and side.mgr is not None and side.proc is not None
        side.state, side.sup = STARTED, Sup.RUNNING
        m = side.migration
        event("target took over")
        if m is not None and m.target is None:
            got = self.resources(side.mgr)
            assert got == m.disks, f"S3: the take-over came back with {got}, not {m.disks}"
            m.target, m.target_proc = side.name, side.proc
            if m.source_done:
                self.check_l1(m)

    def check_l1(self, m: Migration) -> None:
        """L1: both sides completed: the target holds every lease (byte 0 only); the source none,
        its guest dead, its supervisor exited 0."""
        assert m.target is not None
        target = self.sides[m.target]
        proc = target.proc
        if target.sup is Sup.RUNNING and proc is not None and proc is m.target_proc:  # that run
            want = self.side_locks(target)
            got = self.lock_reader(proc.pid)()
            assert got == want, f"L1: after the handoff the target holds {sorted(got)}, not {want}"
        assert m.source_proc.poll() == 0, f"L1: the source supervisor: {m.source_proc.poll()}"
        assert not living(m.source_guest), "L1: the source's guest lives after the handoff"
        assert not self.lock_reader(m.source_proc.pid)(), "L1: the source still holds leases"
        back = any(t == m.source for _, t in self.completed)
        self.completed.append((m.source, m.target))
        event("L1: a migration completed on both sides" + (", migrating back" if back else ""))

    # -- complete_migrate_in, either side, any order ---------------------------------------------

    def do_complete(self, side: Side, cancel: bool, background: bool) -> None:
        mgr = side.mgr
        assert mgr is not None

        def call() -> None:
            mgr.complete_migrate_in(cancel=cancel)

        gone = f"S5: complete_migrate_in(cancel={cancel}) with {side.name}'s supervisor gone"
        if side.state not in (OUT, IN):
            self.refused(IllegalTransition, call, f"S5: complete_migrate_in in {side.state}")
        elif side.sup is Sup.NONE and side.state is IN and cancel:
            # A target whose supervisor is gone (killed, or its incoming guest exited) has
            # nothing left to undo: the cancel succeeds.
            self.expect_ok(call, f"model: the target {side.name} cancels, its supervisor gone")
            side.state = DomainState.CANCELLED
            event("target cancelled, its supervisor gone")
        elif side.sup is Sup.NONE:
            self.refused(BackendError, call, gone)
        elif side.state is OUT and cancel:
            self.expect_ok(call, f"model: the source {side.name} cancels")
            side.state, side.sup, side.migration = STARTED, Sup.RUNNING, None
            event("source cancelled: resumed")
        elif side.state is OUT:
            self.hand_off(side)
        elif cancel:
            self.expect_ok(call, f"model: the target {side.name} cancels")
            assert side.proc is not None
            assert side.proc.wait(10) == 0, "S3: a cancelled target's supervisor exits 0"
            assert not living(side.guest), "S3: the cancelled incoming guest lives"
            side.state, side.sup = DomainState.CANCELLED, Sup.NONE
            event("target cancelled")
        elif blockers := self.takeover_blockers(side):
            if background and self.pending is None:
                self.begin_pending(side, blockers)
            else:
                why = f"S3: the target {side.name} completed while {blockers} hold the leases"
                self.refused(LeaseConflict, call, why)
                event("target completed first: timed out")
        else:
            self.expect_ok(call, f"L1: the target {side.name}'s take-over of free leases")
            self.take_over(side)
        self.after_release()

    def begin_pending(self, side: Side, blockers: list[str]) -> None:
        """The target daemon's complete_migrate_in, in a thread, waiting for the source: with a
        handoff_timeout no example outlives, so that it ends when, and only when, the model says
        (the blockers' leases come free: success; its supervisor or guest dies: BackendError),
        never by the clock: the model stays a function of hypothesis's choices."""
        assert side.mgr is not None
        side.host.driver.config["handoff_timeout"] = WAIT_IN_BACKGROUND  # this daemon, this call
        watched = [g for g in (self.sides[b].guest for b in blockers) if g is not None]
        p = Pending(side.name, side.mgr, blockers, watched, time.monotonic())

        def run() -> None:
            try:
                p.mgr.complete_migrate_in()
            except BaseException as e:  # judged by settle()
                p.error = e
            p.overlap = [pid for pid in p.watched if executing(pid)]

        p.thread = threading.Thread(target=run, daemon=True)
        p.thread.start()
        self.pending = p
        time.sleep(0.05)  # its first attempt runs, as a target daemon's call would have begun
        event("target completes first, in the background")

    def settle(self) -> None:
        """The pending target's call returns: it must have succeeded iff its source's leases
        came free, and only once no source guest executed; or failed with BackendError iff its
        supervisor died."""
        p = self.returned()
        if p is None:
            return
        side = self.sides[p.side]
        if p.error is None:
            assert p.unblocked is not None, (
                f"S3: the target {p.side} completed while {p.blockers} still held the leases"
            )
            assert not p.overlap, (
                f"S1: the target {p.side}'s completion returned while the guest(s) {p.overlap} "
                "of the source still executed"
            )
            self.take_over(side)
            event("background take-over: ok")
        elif isinstance(p.error, BackendError) and side.sup is Sup.NONE:
            event("background take-over: its supervisor died")
        elif isinstance(p.error, LeaseConflict) and p.unblocked is not None:
            why = f"L1: the target {p.side} did not take the leases that came free"
            raise AssertionError(why) from p.error
        else:
            raise AssertionError(f"model: the target {p.side}'s take-over: {p.error!r}") from (
                p.error
            )

    def returned(self) -> Pending | None:
        """The pending target's call, once it returned (None if there is none): its host's
        handoff_timeout back to the examples' own."""
        p = self.pending
        if p is None:
            return None
        assert p.thread is not None
        p.thread.join(30)
        assert not p.thread.is_alive(), "model: a target's complete_migrate_in never returned"
        self.pending = None
        self.sides[p.side].host.driver.config["handoff_timeout"] = HANDOFF_TIMEOUT
        return p

    def after_release(self) -> None:
        """Leases may have come free (or the pending target died): its call returns now."""
        p = self.pending
        if p is None:
            return
        target = self.sides[p.side]
        if target.sup is Sup.NONE:
            self.settle()
        elif p.unblocked is None and not self.takeover_blockers(target):
            p.unblocked = time.monotonic()
            self.settle()

    # -- shutdown, free, hot-plug ----------------------------------------------------------------

    def do_shutdown(self, side: Side) -> None:
        mgr = side.mgr
        assert mgr is not None
        if side.state not in (STARTED, OUT, IN, DomainState.DONE, DomainState.CANCELLED):
            self.refused(IllegalTransition, mgr.shutdown, f"S5: shutdown in {side.state}")
            return
        self.expect_ok(mgr.shutdown, f"model: shutdown on {side.name}")
        if side.sup is not Sup.NONE:
            assert side.proc is not None
            assert side.proc.wait(10) == SIGTERMED, "the guest's status is passed on"
            assert not living(side.guest), "S2: shutdown() returned while the guest lives"
        side.state, side.sup = DomainState.STOPPED, Sup.NONE
        event(f"shutdown: ok from {mgr.history[-1].source}")
        self.after_release()

    def do_hotplug(self, side: Side, op: str, disk: str) -> None:
        mgr, path, flags = side.mgr, self.path(disk), FLAGS[disk]
        assert mgr is not None

        def call() -> None:
            if op == "acquire":
                mgr.acquire_resource(DISK, path, flags)
            else:
                mgr.release_resource(DISK, path, flags)

        what = f"{op}_resource({disk})"
        if side.state is not STARTED:
            self.refused(IllegalTransition, call, f"S5: {what} in {side.state}")
            if side.state in (OUT, IN):
                event("hot-plug refused during a migration")
        elif (disk in side.disks) == (op == "acquire"):
            self.refused(InvalidArgument, call, f"S5: {what}, registered: {sorted(side.disks)}")
        elif side.sup is Sup.NONE:
            self.refused(BackendError, call, f"S5: {what} with the supervisor gone")
        elif op == "acquire" and (blockers := self.blockers([disk], asker=side)):
            self.refused(LeaseConflict, call, self.why(blockers, f"hot-plug of {disk}"))
        elif op == "acquire":
            self.expect_ok(call, f"model: {what}")
            side.disks[disk] = flags
        else:
            self.expect_ok(call, f"model: {what}")
            del side.disks[disk]
            side.inherited.discard(disk)
        self.after_release()

    def do_free(self, side: Side) -> None:
        mgr = side.mgr
        assert mgr is not None
        if side.state is DomainState.FREED:
            self.refused(IllegalTransition, mgr.free, "S5: free twice")
            return
        self.expect_ok(mgr.free, "model: free")
        side.state = DomainState.FREED

    @precondition(lambda self: self.idle())
    @rule(data=st.data(), call=st.sampled_from(sorted(CALLS)))
    def daemon_call(self, data: st.DataObject, call: str) -> None:
        """A daemon's call on any host's manager, in whatever state it is, legal or not:

        * prepare_migrate: legal only when started; the guest keeps running and every lease
          stays held (S3);
        * complete_migrate_in, with or without cancel: a target whose source still holds the
          leases either waits and fails (LeaseConflict after handoff_timeout, nothing changed)
          or, in the background, waits until a later rule frees the leases or kills it;
        * shutdown: from every state but idle/stopped/freed it stops the guest if it runs and
          returns once its leases are released;
        * free: never releases a lease: a live supervisor becomes an orphan that keeps them
          (and a later ATTACH finds);
        * hot-plug or unplug of any disk: refused (IllegalTransition, nothing changed) unless
          started, so in particular during a migration on either side."""
        side = self.pick(data, self.idle(), call)
        self.record(call, side)
        if call == "prepare_migrate":
            self.do_prepare(side)
        elif call.startswith("complete_migrate_in"):
            self.do_complete(side, "cancel" in call, "background" in call)
        elif call == "shutdown":
            self.do_shutdown(side)
        elif call == "free":
            self.do_free(side)
        else:
            disk = data.draw(st.sampled_from(PLUGGABLE), label="disk")
            self.do_hotplug(side, call.removesuffix("_resource"), disk)

    # -- crashes and restarts --------------------------------------------------------------------

    @rule(data=st.data(), what=st.sampled_from(["supervisor", "guest", "daemon"]))
    def crash(self, data: st.DataObject, what: str) -> None:
        """A crash on any host:

        * kill -9 of a supervisor: its guest dies by PDEATHSIG, keeping its start leases or
          reservations until it is dead (S2);
        * kill -9 of a guest: its supervisor releases and exits with the guest's status;
        * the daemon dies and restarts, and ATTACHes: see :meth:`restart_daemon`.

        With no live supervisor, a kill becomes a daemon restart."""
        if what == "daemon" or not self.live():
            self.restart_daemon(data)
        else:
            side = self.pick(data, self.live(), f"kill -9 the {what} of")
            self.record(f"kill -9 {what}", side)
            self.kill(side, what)

    def kill(self, side: Side, what: str) -> None:
        assert side.proc is not None and side.guest is not None
        guest = side.guest
        if what == "supervisor":
            os.kill(side.proc.pid, signal.SIGKILL)
            assert side.proc.wait(10) == -signal.SIGKILL
            locks = self.held_by(guest)  # the locks first, then the guest
            if executing(guest):
                lost = self.side_locks(side, side.inherited) - locks
                assert not lost, f"S2: {sorted(lost)} came free while {side.name}'s guest executes"
                event("kill -9 supervisor: inherited locks checked while the guest executes")
            wait_until(lambda: not living(guest), what="the guest to die (PDEATHSIG)")
        else:
            os.kill(guest, signal.SIGKILL)
            assert side.proc.wait(10) == SIGKILLED, "the supervisor exits with its guest's status"
        side.sup = Sup.NONE
        event(f"kill -9 {what} of a {side.state.value if side.state else 'orphan'} host")
        self.after_release()

    def restart_daemon(self, data: st.DataObject) -> None:
        """A host's daemon restarts and ATTACHes: it comes back in its supervisor's state
        (started, migrating_out, migrating_in) with the same guest, resources and locks (S4), or
        is refused (BackendError, nothing changed) when no supervisor lives."""
        busy = self.pending.side if self.pending is not None else None
        sides = [s for s in self.sides.values() if s.name != busy]  # not a daemon in a call
        side = self.pick(data, sides, "restart the daemon of")
        self.record("restart daemon", side)
        self.do_restart(side)

    def do_restart(self, side: Side) -> None:
        before = self.kernel_locks()
        held = {s.name: self.held_by(s.proc.pid if s.proc else None) for s in self.live()}
        side.host.restart_daemon()
        side.mgr, side.state = None, None
        mgr = self.new_manager(side, NewFlags.ATTACH, {})
        if side.sup is Sup.NONE:
            why = "S5: ATTACH with no live supervisor"
            attach = lambda: mgr.get_child(timeout=DEAD_ATTACH_TIMEOUT)  # noqa: E731
            self.refused(BackendError, attach, why, [mgr])
            event("restart: nothing to attach")
        else:
            pid = self.expect_ok(lambda: mgr.get_child(timeout=10), "S4: ATTACH")
            assert pid == side.guest, f"S4: ATTACH found guest {pid}, not {side.guest}"
            assert mgr.state is STATE_OF[side.sup], (
                f"S4: ATTACH came back {mgr.state}, the supervisor is {side.sup.value}"
            )
            assert self.resources(mgr) == side.disks, "S4: ATTACH came back with other resources"
            side.mgr, side.state = mgr, mgr.state
            event(f"restart: attached in {mgr.state.value}")
        now = self.kernel_locks()
        assert None in (now, before) or now == before, "S4: a daemon restart changed the locks"
        after = {s.name: self.held_by(s.proc.pid if s.proc else None) for s in self.live()}
        assert after == held, "S4: a daemon restart changed what the supervisors hold"

    # -- calls that must be refused whatever the state (S5) --------------------------------------

    @staticmethod
    def bad_arguments(
        mgr: lockfsm.LockManager,
    ) -> list[tuple[str, Callable[[], object], type[Exception] | None]]:
        """Calls with a bad argument, and their error (None: IllegalTransition unless started,
        where the argument is looked at)."""
        not_a_bool: Any = "yes"
        return [
            (
                "complete_migrate_in(cancel='yes')",
                lambda: mgr.complete_migrate_in(not_a_bool),
                InvalidArgument,
            ),
            ("get_child(timeout=0)", lambda: mgr.get_child(timeout=0), InvalidArgument),
            ("prepare_migrate('')", lambda: mgr.prepare_migrate(""), None),
        ]

    @rule(data=st.data())
    def illegal_call(self, data: st.DataObject) -> None:
        """Bad arguments and bad targets are refused and change nothing (S5)."""
        calls: dict[str, tuple[Callable[[], object], type[Exception]]] = {}
        extra: list[lockfsm.LockManager] = []
        driver = self.sides["B"].host.driver
        calls["new_manager(ATTACH|MIGRATE)"] = (
            lambda: driver.new_manager(NewFlags.ATTACH | NewFlags.MIGRATE),
            InvalidArgument,
        )
        for side in self.idle():
            mgr = side.mgr
            assert mgr is not None
            it_or_ia = InvalidArgument if side.state is STARTED else IllegalTransition
            for what, call, error in self.bad_arguments(mgr):
                calls[f"{side.name}: {what}"] = (call, it_or_ia if error is None else error)
        if self.cookie is not None:
            host = self.sides[data.draw(st.sampled_from(sorted(self.sides)), label="target")]
            disks = dict(self.cookie.disks)
            if "h" in disks:
                del disks["h"]
            else:
                disks["h"] = EXCLUSIVE
            wrong = self.new_manager(host, NewFlags.MIGRATE, disks)
            wrong.set_parameter("migration_cookie", self.cookie.cookie)
            extra.append(wrong)
            calls["a target registering other disks than the cookie's"] = (
                lambda: wrong.supervisor_args,
                InvalidArgument,
            )
            calls["a garbled cookie"] = (
                lambda: wrong.set_parameter("migration_cookie", self.cookie.cookie[:-6]),  # type: ignore[union-attr]
                InvalidArgument,
            )
        name = choose(data, sorted(calls), "illegal call")
        call, error = calls[name]
        self.refused(error, call, f"S5: {name}", extra)

    # -- only enabled moves, so that deep protocol paths are reached -----------------------------

    def enabled_moves(self) -> list[tuple[str, str]]:
        """(move, host) pairs for calls the domain table allows from the host's manager state,
        with arguments the model says succeed; and, while a migration is under way, a third
        host's start, which the model says is refused, and a daemon restart on either side.
        Migration steps weigh more, the target's completion before the source's (the seed's
        order) most."""
        moves: list[tuple[str, str]] = []
        migrating = any(s.sup in (Sup.OUT, Sup.IN) for s in self.sides.values())
        for side in self.sides.values():
            name = side.name
            if self.pending is not None and self.pending.side == name:
                continue  # its daemon is busy in that call
            if side.state not in ACTIVE:
                if side.sup is Sup.NONE and not self.blockers(
                    self.base, asker=None, whole_guest=True
                ):
                    moves.append(("start", name))
                elif side in self.launchable() and migrating:
                    # A third host, refused; twice as likely while a target only reserves the
                    # leases (in the window between the source's completion and the take-over).
                    reserved = (
                        "reserves"
                        in self.blockers(self.base, asker=None, whole_guest=True).values()
                    )
                    moves += [("start", name)] * (2 if reserved else 1)
                if side in self.incoming_hosts() and not self.gate_blockers(self.cookie.disks):  # type: ignore[union-attr]
                    moves += [("incoming", name)] * 3
                continue
            if side.state in (OUT, IN):
                # A daemon restart mid-migration: ATTACH must find the migration (S4).
                moves.append(("restart daemon", name))
            if side.sup is Sup.NONE:
                moves.append(("shutdown", name))
                continue
            assert side.state is not None
            for ev in DOMAIN.events_from(side.state.value):
                if ev == "prepare_migrate" and side.sup is Sup.RUNNING:
                    moves += [("prepare", name)] * 3
                elif ev == "complete_migrate_in" and side.state is OUT:
                    moves += [("complete", name)] * 3 + [("cancel", name)] * 2
                elif ev == "complete_migrate_in":
                    moves.append(("cancel", name))
                    if not self.takeover_blockers(side):
                        moves += [("complete", name)] * 3
                    else:
                        # At once: it waits handoff_timeout and is refused, changing nothing (a
                        # target whose take-over timed out must still reserve every lease).
                        moves += [("complete", name)] * self.AT_ONCE_WHEN_BLOCKED
                        if self.pending is None:
                            moves += [("complete in the background", name)] * 3
                elif ev == "shutdown":
                    moves.append(("shutdown", name))
                elif ev == "acquire_resource" and not self.blockers(["h"], asker=side):
                    if "h" not in side.disks:
                        moves.append(("hot-plug h", name))
                elif ev == "release_resource" and "h" in side.disks:
                    moves.append(("hot-unplug h", name))
        return moves

    def do_move(self, move: str, side: Side) -> None:
        self.record(MOVE_CALLS[move], side)
        if move == "start":
            self.do_start(side)
        elif move == "incoming":
            self.do_incoming(side)
        elif move == "prepare":
            self.do_prepare(side)
        elif move in ("complete", "cancel", "complete in the background"):
            self.do_complete(side, move == "cancel", move.endswith("background"))
        elif move == "shutdown":
            self.do_shutdown(side)
        elif move == "restart daemon":
            self.do_restart(side)
        else:
            self.do_hotplug(side, "acquire" if move == "hot-plug h" else "release", "h")

    @rule(data=st.data(), length=st.integers(1, 10))
    def protocol_run(self, data: st.DataObject, length: int) -> None:
        """A short run of moves the protocol allows, each with valid arguments, each doing what
        the model predicts (the event soup alone seldom gets through prepare, incoming, both
        completions and a migration back; a run of enabled moves does)."""
        for _ in range(length):
            moves = self.enabled_moves()
            if not moves:
                return
            move, host = choose(data, moves, "enabled move")
            self.do_move(move, self.sides[host])
            self.check_all()  # between the moves of a run too

    # -- invariants, against the kernel ------------------------------------------------------------

    @invariant()
    def protocol_invariants(self) -> None:
        """All of them, after every step."""
        self.check_all()

    def check_all(self) -> None:
        """In this order: the first that fails names the invariant."""
        p = self.pending
        if p is not None and p.thread is not None and not p.thread.is_alive():
            self.settle()  # it returned by itself: judge it now
        self.model_agrees_with_reality()
        self.s1_one_writer()
        self.s2_executing_guests_hold_their_leases()
        self.s3_targets_only_reserve()
        self.kernel_holds_what_the_model_says()

    def model_agrees_with_reality(self) -> None:
        """Each manager is in the model's state with the model's resources; a supervisor and its
        guest live exactly when the model says; no supervisor lives that the model forgot."""
        ours = set()
        for side in self.sides.values():
            if side.mgr is not None:
                assert side.mgr.state is side.state, (
                    f"model: {side.name}'s manager is {side.mgr.state}, the model says {side.state}"
                )
                if side.state in ACTIVE:
                    assert self.resources(side.mgr) == side.disks, (
                        f"model: {side.name}'s manager lists {self.resources(side.mgr)}"
                    )
            if side.sup is Sup.NONE:
                assert side.proc is None or side.proc.poll() is not None, (
                    f"model: {side.name}'s supervisor should be gone"
                )
            else:
                assert side.proc is not None and side.proc.poll() is None, (
                    f"model: {side.name}'s supervisor died ({side.proc and side.proc.poll()})"
                )
                assert living(side.guest), f"model: {side.name}'s guest died"
                ours.add(side.proc)
        for side in self.sides.values():
            for proc in side.host.procs:
                assert proc in ours or proc.poll() is not None, f"model: stray supervisor {proc}"

    def s1_one_writer(self) -> None:
        """S1: among executing guests (started or migrating out: incoming targets do not
        execute), no disk is used, and no lease byte 0 locked by their processes, by two, unless
        all hold it shared."""
        self.s1_disks_used_once()
        names = self.inodes()
        lockers: dict[str, list[tuple[str, str]]] = {}
        for side in self.live():
            if side.sup in EXECUTING:
                assert side.proc is not None
                held = self.held_by(side.proc.pid, names) | self.held_by(side.guest, names)
                for disk, byte, kind in held:
                    if byte == LEASE:
                        lockers.setdefault(disk, []).append((side.name, kind))
        for disk, lockers_of in lockers.items():
            assert len(lockers_of) == 1 or all(k == "READ" for _, k in lockers_of), (
                f"S1: {disk} locked by {lockers_of}"
            )

    def s2_executing_guests_hold_their_leases(self) -> None:
        """S2: the supervisor of every executing guest holds byte 0 of exactly its disks' leases
        (and no gate); the guest shares the lease descriptions its run was started with."""
        names = self.inodes()
        for side in self.live():
            if side.sup not in EXECUTING:
                continue
            assert side.proc is not None
            got, want = self.held_by(side.proc.pid, names), self.side_locks(side)
            assert got == want, (
                f"S2: the supervisor of {side.name}'s executing guest holds {sorted(got)}, its "
                f"disks need {sorted(want)}"
            )
            got, want = self.held_by(side.guest, names), self.side_locks(side, side.inherited)
            assert got == want, (
                f"S2: {side.name}'s guest shares the locks {sorted(got)}, not its start leases "
                f"{sorted(want)}: they would not outlive a killed supervisor"
            )

    def s3_targets_only_reserve(self) -> None:
        """S3: an incoming target's supervisor (and guest) holds exactly the gates (byte 1) of its
        leases and no lease (byte 0); a handed-off source's guest is dead."""
        names = self.inodes()
        for side in self.live():
            if side.sup is not Sup.IN:
                continue
            assert side.proc is not None
            got, want = self.held_by(side.proc.pid, names), self.side_locks(side)
            assert got == want, (
                f"S3: the incoming target {side.name} holds {sorted(got - want)} and lacks "
                f"{sorted(want - got)}: before its take-over it must only reserve (gate byte)"
            )
            got, want = self.held_by(side.guest, names), self.side_locks(side, side.inherited)
            assert got == want, f"S3: the incoming guest of {side.name} shares {sorted(got)}"
        self.s3_handed_off_guests_are_dead()

    def s1_disks_used_once(self) -> None:
        """S1 in the model: among executing guests (started or migrating out), no disk is used
        by two unless all hold it shared."""
        users: dict[str, list[tuple[str, bool]]] = {}
        for side in self.live():
            if side.sup in EXECUTING:
                for disk in side.disks:
                    users.setdefault(disk, []).append((side.name, bool(FLAGS[disk])))
        for disk, who in users.items():
            assert len(who) == 1 or all(shared for _, shared in who), f"S1: {disk} used by {who}"

    def s3_handed_off_guests_are_dead(self) -> None:
        """S3: a source that handed off (done) has no living guest."""
        for side in self.sides.values():
            if side.state is DomainState.DONE:
                assert not living(side.guest), f"S3: {side.name} handed off, its guest lives"

    def kernel_holds_what_the_model_says(self) -> None:
        """The kernel's lock table on this lockspace is exactly the model's: no lock of a dead
        or forgotten process, none missing."""
        got, want = self.kernel_locks(), self.expected_locks()
        if got is None:
            event("the kernel's lock table was too big to read whole: per-process checks only")
            return
        assert got == want, f"kernel: the lock table {dict(got)} is not the model's {dict(want)}"


class ServiceTwoHosts(TwoHosts):
    """The machine on a lock service that names each lease's holder by the supervisor's pid
    (etcd's keys, the sanlock daemons), so that a variant judges by what the service says."""

    HOLDINGS = "leases"  # what the service holds for a supervisor
    CONNECTION = "connection"  # the supervisor's connection to the service, which its guest shares
    LETS_GO = "the service to let the leases go"

    def released(self, sup: int) -> bool:
        """Whether the service holds nothing for supervisor ``sup`` any more."""
        raise NotImplementedError

    def kill(self, side: Side, what: str) -> None:
        """kill -9 a supervisor: everything it holds (hot-plugged leases too) outlives it while
        its guest executes (the guest holds its connection to the service); once the guest is
        dead the service lets them go.  kill -9 a guest: its supervisor releases and exits."""
        assert side.proc is not None and side.guest is not None
        guest, sup = side.guest, side.proc.pid
        if what == "supervisor":
            want = self.side_locks(side)
            os.kill(sup, signal.SIGKILL)
            assert side.proc.wait(10) == -signal.SIGKILL
            got = self.held_by(sup)  # what it holds first, then the guest
            if executing(guest):
                assert want <= got, (
                    f"S2: {sorted(want - got)} went while {side.name}'s guest executes"
                )
                event(f"kill -9 supervisor: its {self.HOLDINGS} checked while the guest executes")
            wait_until(lambda: not living(guest), what="the guest to die (PDEATHSIG)")
            wait_until(lambda: self.released(sup), 10, self.LETS_GO)
        else:
            os.kill(guest, signal.SIGKILL)
            assert side.proc.wait(10) == SIGKILLED, "the supervisor exits with its status"
        side.sup = Sup.NONE
        event(f"kill -9 {what} of a {side.state.value if side.state else 'orphan'} host")
        self.after_release()

    def s2_guest_shares_the_connection(self, side: Side) -> None:
        """S2: the executing guest of ``side`` holds its supervisor's connection to the service
        (so what the supervisor holds outlives a killed supervisor until the guest is dead)."""
        assert side.proc is not None
        shared = socket_inodes(side.proc.pid) & socket_inodes(side.guest)
        assert shared, f"S2: {side.name}'s guest does not hold the {self.CONNECTION}"
