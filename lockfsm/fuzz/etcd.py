"""The two-host race machine of :mod:`lockfsm.fuzz.machine` on etcd: the same rules (any daemon
call on any of hosts A, B and the rogue C, crashes, restarts, illegal calls, runs of enabled
moves), the same invariants (S1-S5, L1), judged from etcd's key space and the processes instead
of the kernel's lock table.

Three hosts, each with a real ``lockfsm-etcd-agent`` (:class:`Agent`) on one lockspace prefix
(an :class:`EtcdWorld`, set as ``EtcdTwoHosts.WORLD``); every example has disks (so keys) of its
own.  What etcd says (``Entry``): for each disk, ``x`` (the exclusive key, naming its holder's
supervisor pid), ``s`` (a shared holder), ``r`` (an incoming target's reservation) and ``m`` (an
exclusive key handed off to the reserving target: "handed off to" that target's pid).

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
  reserved), a moment later: the machine waits for it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from typing import Any, ClassVar, Protocol

from hypothesis import event
from hypothesis.stateful import RuleBasedStateMachine

from lockfsm import LeaseConflict
from lockfsm.backends.etcd import AGENT_SOCKET, agent_call
from lockfsm.backends.etcd.client import SyncEtcd
from lockfsm.embed.standin import Host, make_disks, short_tmpdir
from lockfsm.fuzz import machine as base
from lockfsm.fuzz.procs import wait_until

Entry = tuple[str, str, int]  # (disk, "x" | "s" | "r" | "m", supervisor pid it names)
GUEST_LEASE = "@guest"  # the guest's own exclusive lease on its uuid (domain_lease), as a disk
EXCL = base.EXCLUSIVE


class EtcdWorld(Protocol):
    """Where the etcd machines run."""

    prefix: str  # the lockspace prefix of the three hosts' agents
    db: SyncEtcd  # a client that reads every key under it

    def host(self, name: str) -> Host:
        """A daemon (stand-in host) of host ``name`` ("A", "B" or "C"), on its agent."""
        ...


def toml_text(config: dict[str, Any]) -> str:
    """A TOML file of ``config`` (strings, numbers and lists of strings only)."""
    lines = []
    for key, val in config.items():
        if val is None:
            continue
        lines.append(f"{key} = {json.dumps(val)}")
    return "\n".join(lines) + "\n"


def agent_command() -> list[str]:
    """``lockfsm-etcd-agent`` next to this Python, else the module."""
    script = os.path.join(os.path.dirname(sys.executable), "lockfsm-etcd-agent")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "lockfsm.agent"]


class Agent:
    """One simulated host's lease agent: a real ``lockfsm-etcd-agent`` process with the
    host's configuration file (its run dir holds the agent's socket)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = dict(config)
        self.run_dir = config["run_dir"]
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        self.path = config.get("agent_socket") or os.path.join(self.run_dir, AGENT_SOCKET)
        self.conf_file = os.path.join(self.run_dir, "etcd.toml")
        with open(self.conf_file, "w") as f:
            f.write(toml_text(self.config))
        self.log_path = os.path.join(self.run_dir, "agent.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*agent_command(), self.conf_file],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(self.ready, 15, f"the lease agent of {self.config['host_name']}")
        except BaseException:
            self.kill()
            raise

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the agent exited {self.proc.returncode}: {self.log()}")
        try:
            return agent_call(self.path, {"op": "status"}, 1.0)["lease"] is not None
        except Exception:
            return False

    def status(self) -> dict[str, Any]:
        return agent_call(self.path, {"op": "status"}, 5.0)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def release(self) -> None:
        """A host shutdown (``--release-all``): the lease revoked, every key of the host gone,
        the agent stopped; :meth:`stop` if it does not answer."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with suppress(Exception):
            os.kill(self.proc.pid, signal.SIGCONT)
            agent_call(self.path, {"op": "release_host"}, 5.0)
            self.proc.wait(10)
        self.stop()

    def stop(self) -> None:
        """SIGTERM (a stopped agent is continued first; the lease stays for the next agent),
        kill -9 if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()


def keys_under(client: SyncEtcd, prefix: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(lease key, kind "x"/"r"/"s", value as JSON) of every key of a lockspace prefix."""
    root = f"{prefix}L/".encode()
    for kv in client.prefix(root):
        lease_key, rest = kv.key[len(root) :].decode().split("/", 1)
        yield lease_key, rest[:1], json.loads(kv.value)


class EtcdTwoHosts(base.ServiceTwoHosts):
    """The machine of :mod:`lockfsm.fuzz.machine` with etcd as the judge (module docstring)."""

    #: where the machines run: three hosts' agents on one lockspace prefix, and a client
    WORLD: ClassVar[EtcdWorld | None] = None
    HOLDINGS, CONNECTION = "keys", "agent connection"
    LETS_GO = "the agent to let the keys go"

    def __init__(self) -> None:  # not the fcntl world: the same sides on etcd
        RuleBasedStateMachine.__init__(self)
        base.EXAMPLES[0] += 1
        world = type(self).WORLD
        assert world is not None, "set EtcdTwoHosts.WORLD (an EtcdWorld) first"
        self.world = world
        self.db: SyncEtcd = world.db
        self.work = os.path.realpath(short_tmpdir("lfw"))
        make_disks(self.work, *base.FLAGS)
        self.lockspace = self.work
        self.sides = {name: base.Side(name, world.host(name)) for name in "ABC"}
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
        for key, kind, data in keys_under(self.db, self.world.prefix):
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
