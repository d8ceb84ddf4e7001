"""The two-host hypothesis stateful test of tests/test_stateful_migration.py, on etcd: the same
rules (any daemon call on any of hosts A, B and the rogue C, crashes, restarts, illegal calls,
runs of enabled moves), the same invariants (S1-S5, L1), judged from etcd's key space and the
processes instead of the kernel's lock table.

Three hosts, each with a real ``lockfsm-etcd-agent`` on one real etcd member, started once for
the module; every example has disks (so keys) of its own.  What etcd says (``Entry``): for each
disk, ``x`` (the exclusive key, naming its holder's supervisor pid), ``s`` (a shared holder),
``r`` (an incoming target's reservation) and ``m`` (an exclusive key handed off to the
reserving target: "handed off to" that target's pid).

Where etcd differs from fcntl, the model says so (and nothing else changes):

* a lease given up while a target reserves it is handed off to that target (``m``), where
  fcntl leaves it free behind the target's gate; either way only that target can take it;
* the target's take-over needs every exclusive key handed off to it *at the create revision
  the cookie carries*: an exclusive key that is gone, or was freed and taken anew since the
  cookie was made (a stale cookie), fails the take-over for good and at once (LeaseConflict,
  nothing changed), where fcntl would take the free lease.  The model tracks each exclusive
  key's incarnation (a new one at each fresh acquire) for that;
* a killed supervisor's keys outlive it until its guest is dead (the guest inherits the agent
  connection, hot-plugged keys included); then the agent lets them go (hands them off if
  reserved), a moment later: the test waits for it.

Profiles from tests/conftest.py; this file runs a third of the examples the fcntl one does
(each step starts real processes on both sides of an agent)."""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from hypothesis import Phase, event, settings

from lockfsm import LeaseConflict
from lockfsm.backends.etcd.client import SyncEtcd
from lockfsm.embed.standin import Host, make_disks, short_tmpdir
from lockfsm.fuzz import machine as base
from tests.support.etcd_cluster import Cluster, Site, keys_under
from tests.support.helpers import wait_until
from tests.support.needs import require

Entry = tuple[str, str, int]  # (disk, "x" | "s" | "r" | "m", supervisor pid it names)
GUEST_LEASE = "@guest"  # the guest's own exclusive lease on its uuid (domain_lease), as a disk

TTL = 4
PREFIX = "/lockfsm-stateful/"
EXCL = base.EXCLUSIVE


class World:
    """The module's etcd member, its three agents and a client."""

    def __init__(self) -> None:
        self.cluster = Cluster(1)
        self.sites: dict[str, Site] = {}
        try:
            for name in "ABC":
                self.sites[name] = Site(self.cluster, f"host{name}", PREFIX, TTL)
        except BaseException:
            self.close()
            raise
        self.db = self.cluster.client()

    def host(self, name: str) -> Host:
        site = self.sites[name]
        return Host("etcd", site.dir, handoff_timeout=base.HANDOFF_TIMEOUT, **site.config)

    def close(self) -> None:
        if hasattr(self, "db"):
            self.db.close()
        for site in self.sites.values():
            site.close()
        self.cluster.stop()


WORLD: World | None = None


@pytest.fixture(scope="module", autouse=True)
def world() -> Iterator[World]:
    global WORLD
    require("etcd")
    WORLD = World()
    try:
        yield WORLD
    finally:
        WORLD.close()
        WORLD = None


class EtcdTwoHosts(base.ServiceTwoHosts):
    HOLDINGS, CONNECTION = "keys", "agent connection"
    LETS_GO = "the agent to let the keys go"

    def __init__(self) -> None:  # not the fcntl world: the same sides on etcd
        base.RuleBasedStateMachine.__init__(self)
        base.EXAMPLES[0] += 1
        assert WORLD is not None
        self.world = WORLD
        self.db: SyncEtcd = WORLD.db
        self.work = os.path.realpath(short_tmpdir("lfw"))
        make_disks(self.work, *base.FLAGS)
        self.lockspace = self.work
        self.sides = {name: base.Side(name, WORLD.host(name)) for name in "ABC"}
        backend = self.sides["A"].host.driver.backend
        self.keys = {
            backend.leases("disk", self.path(d), self.path(d), False)[0]["key"]: d
            for d in base.FLAGS
        }
        guest = f"lockfsm-domains:{base.UUID}"
        self.keys[backend.leases("lease", guest, guest, False)[0]["key"]] = GUEST_LEASE
        self.base = {}
        self.cookie = None
        self.migrations = 0
        self.completed = []
        self.pending = None
        # etcd's side of the model: each exclusive disk's key, and its incarnation.
        self.xkey: dict[str, tuple[str, str, int] | None] = {
            d: None for d in [*base.FLAGS, GUEST_LEASE] if d == GUEST_LEASE or base.FLAGS[d] is EXCL
        }
        self.incarnation: Counter[str] = Counter()
        self.versions: dict[int, dict[str, int]] = {}  # migration number -> incarnations
        #: incoming supervisor pid -> the disks its migration brings (a run that came in takes
        #: those keys over: never a new incarnation, whoever made the cookie it came in with)
        self.came_in: dict[int, set[str]] = {}

    def teardown(self) -> None:
        for side in self.sides.values():
            side.host.cleanup()
        if self.pending is not None and self.pending.thread is not None:
            self.pending.thread.join(30)
        # The agents let the killed supervisors' keys go: wait, so the next example starts clean
        # (the guest's own lease is on the same uuid in every example).
        wait_until(lambda: not self.etcd_entries(), 10, "the example's keys to go")
        shutil.rmtree(self.work, ignore_errors=True)

    # -- etcd as the judge ------------------------------------------------------------------------

    def etcd_entries(self) -> Counter[Entry]:
        """Every key of this example's disks, as etcd has it now."""
        found: Counter[Entry] = Counter()
        for key, kind, data in keys_under(self.db, PREFIX):
            disk = self.keys.get(key)
            if disk is None:
                continue
            if kind == "x" and "handed_off_to" in data:
                found[(disk, "m", int(data["handed_off_to"]["pid"]))] += 1
            else:
                found[(disk, kind, int(data["pid"]))] += 1
        return found

    def kernel_locks(self) -> Counter[Entry]:  # type: ignore[override]
        return self.etcd_entries()

    def held_by(  # type: ignore[override]
        self, pid: int | None, inodes: Any = None
    ) -> frozenset[Entry]:
        """The keys that name supervisor ``pid`` as their holder (x, s) or reserver (r)."""
        if pid is None:
            return frozenset()
        return frozenset(e for e in self.etcd_entries() if e[2] == pid and e[1] != "m")

    def inodes(self) -> dict[int, str]:
        return {}

    def side_locks(  # type: ignore[override]
        self, side: base.Side, disks: Iterable[str] | None = None
    ) -> frozenset[Entry]:
        """The keys the model says ``side``'s live supervisor holds (or reserves)."""
        if side.sup is base.Sup.NONE or side.proc is None:
            return frozenset()
        names = [*(side.disks if disks is None else disks), GUEST_LEASE]
        pid = side.proc.pid
        if side.sup is base.Sup.IN:
            return frozenset((d, "r", pid) for d in names)
        return frozenset((d, "s" if base.FLAGS.get(d) else "x", pid) for d in names)

    def expected_locks(self) -> Counter[Entry]:  # type: ignore[override]
        self.reconcile()
        want: Counter[Entry] = Counter()
        for side in self.live():
            want.update(self.side_locks(side))
        for disk, x in self.xkey.items():
            if x is not None and x[0] == "marker":
                want[(disk, "m", x[2])] += 1
        return want

    # -- the exclusive keys' history ------------------------------------------------------------

    def reconcile(self) -> None:
        """Bring the model of each exclusive key up to the sides' states: a fresh acquire makes
        a new incarnation; a take-over keeps it; a release while a target reserves hands the key
        off to that target; a target that goes takes its handed-off keys with it."""
        for disk in self.xkey:
            was = self.xkey[disk]
            holders = [s for s in self.live() if s.sup in base.EXECUTING and self.has(s, disk)]
            if holders:
                side = holders[0]
                assert side.proc is not None
                now = ("held", side.name, side.proc.pid)
                if was != now:
                    # A side whose run came in by a migration took the key over (the model
                    # may not have judged its completion yet: a background one), even when
                    # it came in with a cookie it made itself, and before reconcile saw the
                    # handoff marker; a fresh start, or a disk hot-plugged since, did not.
                    took_over = was is not None and (
                        was == ("marker", side.name, side.proc.pid)
                        or disk in self.came_in.get(side.proc.pid, ())
                    )
                    if not took_over:  # a fresh acquire: a new incarnation of the key
                        self.incarnation[disk] += 1
                    self.xkey[disk] = now
                continue
            target = next(
                (s for s in self.live() if s.sup is base.Sup.IN and self.has(s, disk)), None
            )
            if was is not None and was[0] == "held":
                if target is not None and target.proc is not None:
                    self.xkey[disk] = ("marker", target.name, target.proc.pid)
                else:
                    self.xkey[disk] = None
            elif (
                was is not None
                and was[0] == "marker"
                and (target is None or target.proc is None or target.proc.pid != was[2])
            ):
                self.xkey[disk] = None  # the target went, and took the handed-off key along

    def has(self, side: base.Side, disk: str) -> bool:
        """Whether ``side``'s supervisor holds or reserves the lease of ``disk``."""
        return disk == GUEST_LEASE or disk in side.disks

    def takeover_final(self, target: base.Side) -> bool:
        """Whether the target's take-over must fail for good: an exclusive key of its cookie
        is gone, or is another incarnation than the cookie's."""
        self.reconcile()
        m = target.migration
        assert m is not None
        versions = self.versions[m.number]
        for disk in [*(d for d, f in m.disks.items() if f is EXCL), GUEST_LEASE]:
            if self.xkey[disk] is None or self.incarnation[disk] != versions.get(disk):
                return True
        return False

    def do_incoming(self, side: base.Side) -> None:
        before = side.proc
        super().do_incoming(side)
        if side.proc is not before and side.proc is not None and side.migration is not None:
            self.came_in[side.proc.pid] = {*side.migration.disks, GUEST_LEASE}

    def do_prepare(self, side: base.Side) -> None:
        self.reconcile()
        before = self.migrations
        super().do_prepare(side)
        if self.migrations != before:
            self.versions[self.migrations] = {
                d: self.incarnation[d]
                for d in [*(d for d, f in side.disks.items() if f is EXCL), GUEST_LEASE]
            }

    def do_complete(self, side: base.Side, cancel: bool, background: bool) -> None:
        if (
            side.state is base.IN
            and side.sup is base.Sup.IN
            and not cancel
            and self.takeover_final(side)
        ):
            started = time.monotonic()
            err = self.refused(
                LeaseConflict,
                lambda: side.mgr.complete_migrate_in(),  # type: ignore[union-attr]
                f"S3: the target {side.name}'s take-over of a lease that changed hands",
            )
            assert time.monotonic() - started < base.HANDOFF_TIMEOUT + 2, "not refused at once"
            assert "changed hands" in str(err) or "no longer holds" in str(err), err
            event("take-over refused for good: the lease changed hands or vanished")
            return
        super().do_complete(side, cancel, background)

    def released(self, sup: int) -> bool:
        return not self.held_by(sup)

    def lock_reader(self, pid: int) -> Callable[[], frozenset[Any]]:
        return lambda: self.held_by(pid)

    def s1_one_writer(self) -> None:
        """S1: among executing guests no disk is used by two unless all hold it shared, and
        etcd agrees: an exclusive key names one holder, never beside a shared one."""
        self.s1_disks_used_once()
        kinds: dict[str, list[str]] = {}
        for disk, kind, _ in self.etcd_entries():
            if kind in ("x", "s", "m"):
                kinds.setdefault(disk, []).append(kind)
        for disk, found in kinds.items():
            assert found.count("x") + found.count("m") <= 1 and (
                "s" not in found or "x" not in found
            ), f"S1: etcd has {found} for {disk}"

    def s2_executing_guests_hold_their_leases(self) -> None:
        """S2: etcd names the supervisor of every executing guest as the holder of exactly its
        disks' keys, and the guest holds the supervisor's agent connection (so the keys outlive
        a killed supervisor until the guest is dead)."""
        for side in self.live():
            if side.sup not in base.EXECUTING:
                continue
            assert side.proc is not None
            got, want = self.held_by(side.proc.pid), self.side_locks(side)
            assert got == want, (
                f"S2: etcd has {sorted(got)} for {side.name}'s executing guest, its disks need "
                f"{sorted(want)}"
            )
            self.s2_guest_shares_the_connection(side)

    def s3_targets_only_reserve(self) -> None:
        """S3: an incoming target holds exactly the reservations of its leases and no lease."""
        for side in self.live():
            if side.sup is not base.Sup.IN:
                continue
            assert side.proc is not None
            got, want = self.held_by(side.proc.pid), self.side_locks(side)
            assert got == want, (
                f"S3: the incoming target {side.name} has {sorted(got - want)} and lacks "
                f"{sorted(want - got)}: before its take-over it must only reserve"
            )
        self.s3_handed_off_guests_are_dead()


# Rules like the fcntl test's, fewer examples: every step starts processes against an agent.
EtcdTwoHosts.TestCase.settings = settings(
    max_examples=max(1, settings().max_examples // 3),
    deadline=None,
    phases=[p for p in Phase if p is not Phase.explain],
)
TestEtcdTwoHosts = EtcdTwoHosts.TestCase
