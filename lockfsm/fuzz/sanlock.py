"""The two-host race machine of :mod:`lockfsm.fuzz.machine` on sanlock: the same
rules (any daemon call on any of hosts A, B and the rogue C, crashes, restarts, illegal calls,
runs of enabled moves), the same invariants (S1-S5, L1), judged from what the real sanlock
daemons report and from the processes instead of the kernel's lock table.

Three simulated hosts, each a real unprivileged sanlock daemon with its own host_id on one
lockspace (a :class:`~lockfsm.fuzz.sanlock_daemons.Cluster`, set as
``SanlockTwoHosts.CLUSTER``).  Every example has
disks of its own and a guest uuid of its own, so lease names (sanlock resources) never cross
examples; its lease files are removed at its end.  The names are picked so that the exclusive
leases' sanlock names sort in an order hypothesis draws (supervisors take leases in that order,
and the model's predictions depend on it).  What sanlock says (``Entry``): for each lease
of the example (the disks and ``@guest``, the guest's own exclusive lease on its uuid), which
registered client pid holds it, exclusive ("x") or shared ("s"), from ``sanlock client status``
of every daemon; and each exclusive lease's version (lver) from its leader record on disk.

Where sanlock differs from fcntl, the model says so (and nothing else changes):

* an incoming target's reservation holds nothing (there is no gate): sanlock's handoff is
  protected by the lease version, not by a reservation.  So a second incoming target is NOT
  refused at start; a fresh start or a hot-plug is refused only by an executing holder; and
  between the source's release and the target's take-over a third host (C, or the old source)
  CAN take the leases.  The target's take-over then fails for good (LeaseConflict, final, at
  once): sanlock refuses an acquire carrying a lease version that is no longer the lease's;
* every successful exclusive acquire moves the lease's version on by one (a fresh start, a
  hot-plug, a take-over; a release keeps it), and the take-over carries the versions the
  source held at prepare_migrate (the cookie).  The model counts each exclusive lease's version
  (checked against the leader records and the cookie) and predicts the take-over by walking
  the cookie's exclusive leases in the supervisor's order (exclusive first, by key), as the
  supervisor does: a lease held at the cookie's version waits (the source has not handed off),
  a free one at the cookie's version is taken, one at another version ends the take-over for
  good.  A failed attempt gives back what it took *with its version moved*, so an attempt that
  took some leases and then waited makes the next attempt fail for good; a refused start moves
  the versions of the free leases it took before its conflict (key order) too: so S5's "a
  refused call changes nothing" holds for holders, states and processes, while versions are
  judged against the model after each step.  A stale cookie therefore fails at once, where
  fcntl would wait or take free leases;
* a killed supervisor's leases are freed when its registered connection closes, i.e. once the
  guest (which inherits it) is dead too; the test waits for the daemon to drop them.

A known backend race is tolerated and counted (``KNOWN_PARTIAL_TAKEOVER_RACE``): see there."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from hypothesis import event, note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize

import lockfsm
from lockfsm import LeaseConflict, NewFlags, ResourceFlags
from lockfsm.backends.sanlock import NAME_LEN as SANLOCK_NAME_LEN
from lockfsm.backends.sanlock import read_leader
from lockfsm.daemon.manager import DOMAIN_LOCKSPACE
from lockfsm.embed.standin import Host, make_disks, short_tmpdir
from lockfsm.fuzz import machine as base
from lockfsm.fuzz.machine import cookie_versions
from lockfsm.fuzz.procs import living, wait_until
from lockfsm.fuzz.sanlock_daemons import LOCKSPACE, Cluster

Entry = tuple[str, str, int]  # (lease, "x" | "s", pid of the registered client holding it)
GUEST_LEASE = "@guest"  # the guest's own exclusive lease on its uuid (domain_lease), as a disk
EXCL = base.EXCLUSIVE
DAEMON_OF = {"A": 0, "B": 1, "C": 2}  # each side's sanlock daemon in the cluster
XLEASES = (*sorted(d for d in base.FLAGS if base.FLAGS[d] is EXCL), GUEST_LEASE)  # exclusive


def key_of_text(text: str) -> str:
    """The sanlock resource name the backend gives a disk's canonical path (or a lease's
    "lease:<path>"): checked against the backend's own naming in arrange()."""
    return hashlib.sha256(text.encode()).hexdigest()[:SANLOCK_NAME_LEN]


# KNOWN BACKEND RACE (reported; lockfsm/backends/sanlock.py, SanlockHolder.probe/revert, with
# lockfsm/supervisor.py Supervisor._do_acquire_leases): a target's take-over that runs while the
# source is part-way through releasing its leases (a pending take-over during the source's
# hand-off, shutdown or death: the source lets them go one by one, 5-50 ms each) may take the
# leases already released (versions +1), find a later one still held, give the taken ones back
# with their versions moved, and fail for good on its next attempt ("the lease changed hands"):
# a correct migration fails, the guest runs nowhere (safe: S1-S3 hold, but not available).  The
# sanlock holder's probe checks nothing, so the supervisor's "probe every lease before taking
# any" does not hold for sanlock.  While this is True, a pending take-over that the model says
# succeeds may instead fail for good with exactly that signature (a non-empty proper prefix of
# its leases, in take-over order, moved by one and last written by the target's host, nothing
# held): it is counted as an event ("KNOWN RACE"), and the target's daemon cancels and starts
# the guest afresh (restart_on_target), which puts the example back on the model's track.  Set
# it to False once the backend is fixed: the test then demands the take-over.
KNOWN_PARTIAL_TAKEOVER_RACE = False  # fixed: SanlockHolder.revert, expect


class Status:
    """One reading of every daemon's ``sanlock client status``, for this example's leases."""

    def __init__(self, held: Counter[Entry], versions: dict[str, int], busy: list[str]) -> None:
        self.held = held  # settled holdings
        self.versions = versions  # lease -> lver an exclusive holder holds it at
        self.busy = busy  # entries being added or removed (an acquire or release under way)

    def of(self, pid: int) -> list[str]:
        """What the daemons list for client ``pid``: held, being taken or being let go."""
        mine = [f"{e[0]} {e[1]}" for e in self.held if e[2] == pid]
        return mine + [b for b in self.busy if b.split()[2] == str(pid)]


class SanlockTwoHosts(base.ServiceTwoHosts):
    """The machine of :mod:`lockfsm.fuzz.machine` with the sanlock daemons as the judge (module
    docstring)."""

    CONNECTION, LETS_GO = "registered connection", "the daemon to drop the leases"

    #: where the machines run: three daemons (host_ids) that joined one lockspace
    CLUSTER: ClassVar[Cluster | None] = None

    def __init__(self) -> None:  # not the fcntl world: the same sides on sanlock
        RuleBasedStateMachine.__init__(self)
        base.EXAMPLES[0] += 1
        cluster = type(self).CLUSTER
        assert cluster is not None, "set SanlockTwoHosts.CLUSTER (a sanlock_daemons.Cluster) first"
        self.cluster = cluster
        self.top = os.path.realpath(short_tmpdir("lfw"))
        self.work = self.lockspace = self.top  # the disks' directory: see arrange()
        self.uuid = ""  # the guest's, this example's own: see arrange()
        self.keys: dict[str, str] = {}  # sanlock resource name -> disk (or GUEST_LEASE)
        self.key_of: dict[str, str] = {}
        self.sides = {name: base.Side(name, self.host(name)) for name in sorted(DAEMON_OF)}
        self.base = {}
        self.cookie = None
        self.migrations = 0
        self.completed = []
        self.pending = None
        # sanlock's side of the model: each exclusive lease's version (lver), and each
        # migration's cookie versions.
        self.xleases = list(XLEASES)
        self.version: Counter[str] = Counter({d: 0 for d in self.xleases})
        self.versions: dict[int, dict[str, int]] = {}
        self.expect: tuple[str, list[str]] | None = None  # a pending take-over's fate
        self.concurrent_release = False  # the leases of a pending target's blocker went

    @initialize(shared=st.booleans(), order=st.permutations(XLEASES))
    def boot(self, shared: bool, order: list[str]) -> None:
        """As on fcntl, with the exclusive leases' key order drawn too: it decides what a
        refused start takes and which lease a take-over tries first."""
        self.arrange(order)
        super().boot(shared)

    def arrange(self, order: list[str]) -> None:
        """Name this example's disks (their directory) and guest (its uuid) so that the
        exclusive leases' sanlock names sort in ``order``, then make the disks and their lease
        files.  The supervisors take leases in key order: with the order drawn, what the model
        predicts is a function of hypothesis's choices, as a replay needs."""
        disks = [d for d in order if d != GUEST_LEASE]
        for n in itertools.count():
            work = os.path.join(self.top, str(n))
            if sorted(disks, key=lambda d: key_of_text(os.path.join(work, d))) == disks:
                break
        where = order.index(GUEST_LEASE)
        while True:
            uuid = str(uuidlib.uuid4())
            mine = key_of_text(f"lease:{DOMAIN_LOCKSPACE}:{uuid}")
            if sum(key_of_text(os.path.join(work, d)) < mine for d in disks) == where:
                break
        os.mkdir(work)
        make_disks(work, *base.FLAGS)
        self.work, self.uuid = work, uuid
        backend = self.sides["A"].host.driver.backend
        self.keys = {  # this also initialises the lease files
            backend.leases("disk", self.path(d), self.path(d), False)[0]["key"]: d
            for d in base.FLAGS
        }
        guest = f"{DOMAIN_LOCKSPACE}:{self.uuid}"
        self.keys[backend.leases("lease", guest, guest, False)[0]["key"]] = GUEST_LEASE
        self.key_of = {d: k for k, d in self.keys.items()}
        got = sorted(XLEASES, key=self.key_of.__getitem__)
        assert got == order, f"model: the leases sort {got}, not {order} (lease names changed?)"
        note(f"  (lease order: {' < '.join(order)})")

    def host(self, name: str) -> Host:
        d = self.cluster.daemons[DAEMON_OF[name]]
        config = self.cluster.config(d, handoff_timeout=base.HANDOFF_TIMEOUT)
        return Host("sanlock", self.cluster.lease_dir, **config)

    def teardown(self) -> None:
        for side in self.sides.values():
            side.host.cleanup()  # a pending call's supervisor dies: the call ends at once
        if self.pending is not None and self.pending.thread is not None:
            self.pending.thread.join(30)
        # Killed supervisors' leases go when the daemon sees their connections close.
        wait_until(lambda: not (now := self.status()).held and not now.busy, 10, "the leases to go")
        for key in self.keys:
            try:
                os.unlink(os.path.join(self.cluster.lease_dir, key))
            except FileNotFoundError:
                pass
        shutil.rmtree(self.top, ignore_errors=True)

    def new_manager(
        self, side: base.Side, flags: NewFlags, disks: dict[str, ResourceFlags]
    ) -> lockfsm.LockManager:
        mgr = side.host.driver.new_manager(flags)
        mgr.set_parameter("uuid", self.uuid)
        mgr.set_parameter("name", base.NAME)
        mgr.set_parameter("id", base.ID)
        for disk in sorted(disks):
            mgr.register_resource(base.DISK, self.path(disk), disks[disk])
        return mgr

    # -- sanlock as the judge ----------------------------------------------------------------------

    def status(self) -> Status:
        """Every daemon's view of this example's leases, read at once."""
        procs = [
            subprocess.Popen(
                ["sanlock", "client", "status"],
                env=d.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,  # never share a process group with sanlock's helpers
            )
            for d in self.cluster.daemons
        ]
        held: Counter[Entry] = Counter()
        versions: dict[str, int] = {}
        busy: list[str] = []
        for proc in procs:
            out, _ = proc.communicate(timeout=10)
            for line in out.splitlines():
                # r lockfsm:<name>:<path>:<offset>:<lver or SH> p <pid> [ADD|REM]
                parts = line.split()
                if len(parts) < 4 or parts[0] != "r" or parts[2] != "p":
                    continue
                spec = parts[1].split(":")
                if spec[0] != LOCKSPACE or spec[1] not in self.keys:
                    continue
                lease, pid = self.keys[spec[1]], int(parts[3])
                if parts[4:]:
                    busy.append(f"{lease} {' '.join(parts[2:])}")
                    continue
                kind = "s" if spec[-1] == "SH" else "x"
                held[(lease, kind, pid)] += 1
                if kind == "x":
                    versions[lease] = int(spec[-1])
        return Status(held, versions, busy)

    def stray(self, now: Status) -> list[str]:
        """Acquires or releases under way, but a pending take-over's attempts."""
        p = self.pending
        proc = self.sides[p.side].proc if p is not None else None
        mine = f"p {proc.pid} ADD" if proc is not None else None
        return [b for b in now.busy if mine is None or not b.endswith(mine)]

    def settled(self) -> Status:
        """A reading once the daemons have finished the releases a step left under way (a
        daemon lets the leases of a client that exited or released go a moment after it
        answered: "REM" in its status), within 2 s; the judge then says what remains."""
        deadline = time.monotonic() + 2.0
        while True:
            now = self.status()
            stray = self.stray(now)
            if not stray or time.monotonic() > deadline:
                return now
            for b in stray:
                what = self.who(int(b.split()[2])).split(" ", 1)[-1]
                event(f"a daemon still busy after the step ({b.split()[-1]}): {what}")
            time.sleep(0.005)

    def who(self, pid: int) -> str:
        for side in self.sides.values():
            if side.proc is not None and side.proc.pid == pid:
                return f"{side.name}'s supervisor ({side.sup.value})"
            if side.guest == pid:
                return f"{side.name}'s guest"
        return "no supervisor the model knows"

    def kernel_locks(self) -> Counter[Entry]:  # type: ignore[override]
        return self.settled().held

    def held_by(  # type: ignore[override]
        self, pid: int | None, inodes: Any = None
    ) -> frozenset[Entry]:
        """The leases whose holder sanlock names as the registered client ``pid``."""
        if pid is None:
            return frozenset()
        return frozenset(e for e in self.status().held if e[2] == pid)

    def inodes(self) -> dict[int, str]:
        return {}

    def snapshot(self, extra: Iterable[lockfsm.LockManager] = ()) -> dict[str, Any]:
        """As on fcntl, from one reading of the daemons.  Lease versions are left out: a
        refused start or take-over moves the versions of the leases it took and gave back
        (sanlock: every acquire moves it); the model predicts those moves, and check_all
        compares every version with it after each step."""
        mgrs = [s.mgr for s in self.managed()] + list(extra)
        held = self.settled().held

        def of(pid: int | None) -> frozenset[Entry]:
            return frozenset(e for e in held if pid is not None and e[2] == pid)

        return {
            "managers": [
                (m.label, m.flags, m.state, m.moves, frozenset(m.resources))
                for m in mgrs
                if m is not None
            ],
            "sanlock": held,
            "processes": {
                s.name: (
                    s.proc.poll() if s.proc else None,
                    living(s.guest) if s.guest else None,
                    of(s.proc.pid if s.proc else None),
                )
                for s in self.sides.values()
            },
        }

    def leader_versions(self) -> dict[str, tuple[int, int]]:
        """Exclusive lease -> (lver, host_id of its last owner), from its leader record."""
        found = {}
        for lease in self.xleases if self.key_of else ():
            leader = read_leader(os.path.join(self.cluster.lease_dir, self.key_of[lease]))
            assert leader is not None, f"model: {lease}'s lease file has no leader record"
            found[lease] = (leader[4], leader[3])
        return found

    def side_locks(  # type: ignore[override]
        self, side: base.Side, disks: Iterable[str] | None = None
    ) -> frozenset[Entry]:
        """The leases the model says ``side``'s live supervisor holds: an executing one every
        lease of its disks and the guest's own; an incoming target none (nothing reserved)."""
        if side.sup not in base.EXECUTING or side.proc is None:
            return frozenset()
        names = [*(side.disks if disks is None else disks), GUEST_LEASE]
        pid = side.proc.pid
        return frozenset((d, "s" if base.FLAGS.get(d) else "x", pid) for d in names)

    def expected_locks(self) -> Counter[Entry]:  # type: ignore[override]
        want: Counter[Entry] = Counter()
        for side in self.live():
            want.update(self.side_locks(side))
        return want

    # -- the predicates, as sanlock has them -------------------------------------------------------

    def has(self, side: base.Side, lease: str) -> bool:
        """Whether ``side``'s supervisor holds ``lease`` (executing, the lease among its own)."""
        return side.sup in base.EXECUTING and (lease == GUEST_LEASE or lease in side.disks)

    def blockers(
        self, disks: Iterable[str], asker: base.Side | None, whole_guest: bool = False
    ) -> dict[str, str]:
        """Executing supervisors (other than ``asker``'s) that refuse a fresh acquire of
        ``disks``: an incoming target holds nothing and refuses nothing (sanlock has no gate).
        With ``whole_guest`` (a start) every executing supervisor of the guest refuses it (each
        holds the guest's own lease); there is at most one."""
        found: dict[str, str] = {}
        for other in self.live():
            if other is asker or other.sup not in base.EXECUTING:
                continue
            if whole_guest or any(d in other.disks and not base.FLAGS[d] for d in disks):
                found[other.name] = "holds"
        return found

    def gate_blockers(self, disks: Iterable[str]) -> list[str]:
        """None: a second incoming target is not refused (its reservation holds nothing)."""
        return []

    def holder_of(self, lease: str, but: base.Side | None = None) -> base.Side | None:
        return next((s for s in self.live() if s is not but and self.has(s, lease)), None)

    def start_walk(self) -> list[str]:
        """The exclusive leases a refused start takes (and gives back, versions moved) before
        its conflict: its leases in key order (the supervisor's), shared ones never refused."""
        took: list[str] = []
        for lease in sorted([*self.base, GUEST_LEASE], key=self.key_of.__getitem__):
            if base.FLAGS.get(lease) is ResourceFlags.SHARED:
                continue
            if self.holder_of(lease) is not None:
                return took
            took.append(lease)
        raise AssertionError("model: a refused start found every lease free")

    def takeover_walk(self, target: base.Side) -> tuple[str, list[str]]:
        """What the target's take-over does now: ("ok" | "wait" | "final", the exclusive leases
        its attempts take, in order).  Its attempt walks the cookie's exclusive leases by key
        (shared ones come after and always succeed): held at the cookie's version -> wait; free
        at it -> taken (version + 1); another version -> final.  An attempt that took some and
        then waits gives them back moved: its next attempt is final."""
        m = target.migration
        assert m is not None
        cookie = self.versions[m.number]
        took: list[str] = []
        for lease in sorted(cookie, key=self.key_of.__getitem__):
            if self.version[lease] != cookie[lease]:
                return "final", took
            if self.holder_of(lease, but=target) is not None:
                return ("final" if took else "wait"), took
            took.append(lease)
        return "ok", took

    def takeover_blockers(self, target: base.Side) -> list[str]:
        return [o.name for o in self.live() if o is not target and o.sup in base.EXECUTING]

    def bump(self, leases: Iterable[str]) -> None:
        for lease in leases:
            self.version[lease] += 1

    # -- the rules' sanlock parts ------------------------------------------------------------------

    def do_start(self, side: base.Side) -> None:
        refused = bool(self.blockers(self.base, asker=None, whole_guest=True))
        moved = self.start_walk() if refused else [*self.base, GUEST_LEASE]
        super().do_start(side)
        self.bump(lease for lease in moved if lease in self.version)
        if not refused and any(s.sup is base.Sup.IN for s in self.live()):
            event("a third host started the guest while a target waits to take over")

    def do_incoming(self, side: base.Side) -> None:
        others = [s for s in self.live() if s.sup is base.Sup.IN]
        super().do_incoming(side)
        if others and side.sup is base.Sup.IN:
            event("a second incoming target: not refused (nothing is reserved)")

    def do_prepare(self, side: base.Side) -> None:
        before = self.migrations
        super().do_prepare(side)
        if self.migrations == before:
            return
        m = self.cookie
        assert m is not None
        mine = {d: self.version[d] for d in [*m.disks, GUEST_LEASE] if d in self.version}
        self.versions[m.number] = mine
        carried = {self.keys[k]: v for k, v in cookie_versions(m.cookie).items()}
        want = {d: mine.get(d) for d in carried}
        assert carried == want, f"S3: the cookie carries lease versions {carried}, not {want}"

    def do_hotplug(self, side: base.Side, op: str, disk: str) -> None:
        had = disk in side.disks
        super().do_hotplug(side, op, disk)
        if op == "acquire" and not had and disk in side.disks and disk in self.version:
            self.bump([disk])

    def do_shutdown(self, side: base.Side) -> None:
        self.concurrent_release = self.is_blocker(side)
        super().do_shutdown(side)

    def is_blocker(self, side: base.Side) -> bool:
        p = self.pending
        return p is not None and side.sup in base.EXECUTING and side.name != p.side

    def take_over(self, side: base.Side) -> None:
        """A take-over that returned took every exclusive lease of its cookie: each is a version
        further, last owned by the target's host -- or more than one, where an attempt that
        took some while the source was still releasing gave them back (the holder then
        expects its own version: SanlockHolder.revert) before the attempt that took all."""
        m = side.migration
        assert m is not None
        leaders = self.leader_versions()
        host_id = self.cluster.daemons[DAEMON_OF[side.name]].host_id
        for lease in self.versions[m.number]:
            lver, owner = leaders[lease]
            assert owner == host_id and lver > self.version[lease], (
                f"S3: {lease} after the take-over: version {lver} of host {owner}, the model "
                f"says version {self.version[lease] + 1} of host {host_id}"
            )
            if lver > self.version[lease] + 1:
                event("take-over: an attempt gave leases back before the one that took all")
            self.version[lease] = lver
        super().take_over(side)

    def do_complete(self, side: base.Side, cancel: bool, background: bool) -> None:
        if side.state is base.IN and side.sup is base.Sup.IN and not cancel:
            fate, took = self.takeover_walk(side)
            if fate == "final":
                started = time.monotonic()
                err = self.refused(
                    LeaseConflict,
                    lambda: side.mgr.complete_migrate_in(),  # type: ignore[union-attr]
                    f"S3: the target {side.name}'s take-over of a lease that changed hands",
                )
                took_s = time.monotonic() - started  # sanlock's first look at another
                # host's lease may take 1 s: "at once" is "without waiting for the source"
                assert took_s < base.HANDOFF_TIMEOUT + 2, f"S3: refused after {took_s:.2f} s"
                assert "changed hands" in str(err), f"S3: {err}"
                self.bump(took)
                event(
                    "take-over refused for good: a version changed"
                    + (" (after taking and giving back leases)" if took else "")
                )
                self.after_release()
                return
        super().do_complete(side, cancel, background)

    def after_release(self) -> None:
        """The pending target's call returns when its take-over can no longer wait: every
        lease it walks is free (success) or one has moved on (final), or its supervisor died."""
        p = self.pending
        if p is None:
            return
        target = self.sides[p.side]
        if target.sup is base.Sup.NONE:
            self.settle()
            return
        fate, took = self.takeover_walk(target)
        if fate == "wait":
            self.concurrent_release = False
            return
        self.expect = (fate, took)
        if fate == "ok":
            p.unblocked = time.monotonic()
        self.settle()

    def settle(self) -> None:
        """The pending target's call returns: success iff the model says its take-over goes
        through, LeaseConflict (final) iff a version moved on, BackendError iff its supervisor
        died; only once no source guest executed."""
        p = self.returned()
        if p is None:
            return
        expect, self.expect = self.expect, None
        concurrent, self.concurrent_release = self.concurrent_release, False
        side = self.sides[p.side]
        if isinstance(p.error, lockfsm.BackendError) and side.sup is base.Sup.NONE:
            event("background take-over: its supervisor died")
            return
        assert expect is not None, (
            f"model: the target {p.side}'s take-over returned ({p.error!r}) while the model "
            "says it waits"
        )
        fate, took = expect
        if p.error is None:
            assert fate == "ok", (
                f"S3: the target {p.side}'s take-over succeeded; the model says {fate} "
                f"(a lease version moved on since the cookie)"
            )
            assert not p.overlap, (
                f"S1: the target {p.side}'s completion returned while the guest(s) {p.overlap} "
                "of the source still executed"
            )
            self.take_over(side)
            event("background take-over: ok")
            return
        if not isinstance(p.error, LeaseConflict) or "changed hands" not in str(p.error):
            raise AssertionError(f"model: the target {p.side}'s take-over: {p.error!r}") from (
                p.error
            )
        moved = self.moved_prefix(side, took)
        if fate == "ok":
            if not (KNOWN_PARTIAL_TAKEOVER_RACE and concurrent and 0 < len(moved) < len(took)):
                raise AssertionError(
                    f"L1: the target {p.side} did not take the leases that came free "
                    f"(moved {moved} of {took})"
                ) from p.error
            note(f"  (known race: the take-over took {moved} while the source released)")
            event("KNOWN RACE: a take-over racing the source's release failed for good")
            self.bump(moved)
            self.restart_on_target(side)
            return
        # A concurrent release lets the attempts see it part-way: any non-empty prefix of the
        # static walk's leases may have moved.  (The model adopts what moved; only a cookie
        # older than this one could then be judged differently: not seen in practice.)
        assert moved == took or (concurrent and moved and took[: len(moved)] == moved), (
            f"model: the failed take-over moved {moved}, the model says {took}"
        )
        event("background take-over: refused for good, a version changed")
        self.bump(moved)

    def restart_on_target(self, side: base.Side) -> None:
        """After the known race (``KNOWN_PARTIAL_TAKEOVER_RACE``): the target's daemon cancels
        its incoming guest and starts the guest afresh with the cookie's disks, as an operator
        would.  hypothesis needs the model to be a function of its choices: this puts the
        example back where the model says it is (the target runs the guest holding every lease,
        each exclusive one a version further), so the rest of the example goes on as drawn."""
        m, mgr = side.migration, side.mgr
        assert m is not None and mgr is not None and side.proc is not None
        self.expect_ok(lambda: mgr.complete_migrate_in(cancel=True), "model: cancel after race")
        assert side.proc.wait(10) == 0, "S3: a cancelled target's supervisor exits 0"
        fresh = self.new_manager(side, NewFlags(0), m.disks)
        proc = side.host.launch(fresh)
        pid = self.expect_ok(lambda: fresh.get_child(timeout=10), "model: the restart after race")
        side.mgr, side.proc, side.guest = fresh, proc, pid
        self.take_over(side)  # the model's take-over: every exclusive lease a version further

    def moved_prefix(self, target: base.Side, took: list[str]) -> list[str]:
        """The leases a failed take-over moved on (version + 1, last owner the target's host),
        read from the leader records: a prefix of ``took`` (the rest unmoved), none held."""
        leaders = self.leader_versions()
        host_id = self.cluster.daemons[DAEMON_OF[target.name]].host_id
        moved = [d for d in took if leaders[d] == (self.version[d] + 1, host_id)]
        assert moved == took[: len(moved)], f"model: the take-over moved {moved}, not a prefix"
        for d in self.xleases:
            if d not in moved:
                assert leaders[d][0] == self.version[d], (
                    f"model: {d} is at version {leaders[d][0]}, the model says {self.version[d]}"
                )
        held = self.held_by(target.proc.pid if target.proc else None)
        assert not held, f"S3: the failed take-over left {sorted(held)} held"
        return moved

    def enabled_moves(self) -> list[tuple[str, str]]:
        """As on fcntl, plus more weight on a third host's start in the handoff window (no
        holder, a target waiting): sanlock lets it start, and the take-over then fails."""
        moves = super().enabled_moves()
        if any(s.sup is base.Sup.IN for s in self.live()) and not self.blockers(
            self.base, asker=None, whole_guest=True
        ):
            busy = self.pending.side if self.pending is not None else None
            for side in self.sides.values():
                if (
                    side.sup is base.Sup.NONE
                    and side.state not in base.ACTIVE
                    and side.name != busy
                ):
                    moves += [("start", side.name)] * 2
        return moves

    # -- L1, crashes, the hand-off -----------------------------------------------------------------

    def kill(self, side: base.Side, what: str) -> None:
        """As on etcd: what a killed supervisor holds outlives it while its guest executes (the
        guest holds the registered connection); once the guest is dead the daemon drops the
        leases, versions unchanged."""
        self.concurrent_release = self.is_blocker(side)
        super().kill(side, what)

    def released(self, sup: int) -> bool:
        return not self.status().of(sup)

    def lock_reader(self, pid: int) -> Callable[[], frozenset[Any]]:
        return lambda: self.held_by(pid)

    def hand_off(self, side: base.Side) -> None:
        """As on fcntl; whether the source releases while a target waits decides what a
        failed take-over may have moved."""
        self.concurrent_release = self.is_blocker(side)
        super().hand_off(side)

    def check_all(self) -> None:
        """In this order: the first that fails names the invariant."""
        p = self.pending
        if p is not None and p.thread is not None and not p.thread.is_alive():
            self.settle()  # it returned by itself: judge it now
        now = self.settled()
        self.model_agrees_with_reality()
        self.s1_one_writer(now)
        self.s2_executing_guests_hold_their_leases(now)
        self.s3_targets_hold_nothing(now)
        self.sanlock_holds_what_the_model_says(now)

    def s1_one_writer(self, now: Status | None = None) -> None:
        """S1: among executing guests no disk is used by two unless all hold it shared, and the
        daemons agree: an exclusive lease has one holder, never beside a shared one."""
        now = now or self.status()
        self.s1_disks_used_once()
        kinds: dict[str, list[str]] = {}
        for (lease, kind, _), n in now.held.items():
            kinds.setdefault(lease, []).extend([kind] * n)
        for lease, found in kinds.items():
            assert found.count("x") <= 1 and ("s" not in found or "x" not in found), (
                f"S1: the sanlock daemons have {found} for {lease}"
            )

    def s2_executing_guests_hold_their_leases(self, now: Status | None = None) -> None:
        """S2: the daemons name the supervisor of every executing guest as the holder of exactly
        its leases, at the model's versions, and the guest holds the supervisor's registered
        connection (so they outlive a killed supervisor until the guest is dead)."""
        now = now or self.status()
        for side in self.live():
            if side.sup not in base.EXECUTING:
                continue
            assert side.proc is not None
            got = frozenset(e for e in now.held if e[2] == side.proc.pid)
            want = self.side_locks(side)
            assert got == want, (
                f"S2: sanlock has {sorted(got)} for {side.name}'s executing guest, it needs "
                f"{sorted(want)}"
            )
            self.s2_guest_shares_the_connection(side)

    def s3_targets_hold_nothing(self, now: Status) -> None:
        """S3: an incoming target holds no lease before its take-over (nor anything reserved:
        sanlock has nothing to reserve); a handed-off source's guest is dead."""
        for side in self.live():
            if side.sup is not base.Sup.IN:
                continue
            assert side.proc is not None
            got = sorted(e for e in now.held if e[2] == side.proc.pid)
            assert not got, f"S3: the incoming target {side.name} holds {got} before its take-over"
        self.s3_handed_off_guests_are_dead()

    def sanlock_holds_what_the_model_says(self, now: Status) -> None:
        """The daemons hold exactly the model's leases, each exclusive one at the model's
        version (the leader records too); nothing is being added or removed (after 2 s) except
        by a pending take-over's attempts."""
        want = self.expected_locks()
        assert now.held == want, f"sanlock: holds {dict(now.held)}, the model says {dict(want)}"
        stray = [f"{b} ({self.who(int(b.split()[2]))})" for b in self.stray(now)]
        assert not stray, f"sanlock: acquires or releases under way for 2 s: {stray}"
        for lease, lver in now.versions.items():
            assert lver == self.version[lease], (
                f"sanlock: {lease} is held at version {lver}, the model says {self.version[lease]}"
            )
        for lease, (lver, _) in self.leader_versions().items():
            assert lver == self.version[lease], (
                f"sanlock: {lease}'s leader record is at version {lver}, the model says "
                f"{self.version[lease]}"
            )
