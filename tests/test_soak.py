"""The soak (issue 9, item 6; marker ``slow``): N simulated hosts, each a daemon process
(tests/support/fault_daemon.py) on one lock service, run hundreds of random lifecycles -- start,
hot-plug, unplug, migrate (target first, source first, or cancelled), shutdown -- while a killer
thread sends kill -9 at random moments to supervisors, guests and daemons (a killed daemon is
replaced by a new one that ATTACHes to its guests) and, on etcd, lease agents (restarted).  A
checker thread samples the lock service's truth all along (tests/support/fault_world.py): S1 (no
disk written by two executing guests; no lease granted twice) and S2 (a guest that executes with
its supervisor alive holds every lease; a guest whose supervisor is dead dies within a second).  At
the end every guest is brought down through fresh daemons, and no lease may be left held.

It prints the operations done (by outcome), the faults injected, the samples taken and the
violations, which must be 0.  Settings (environment): LOCKFSM_SOAK_SECONDS (default 180),
LOCKFSM_SOAK_BACKEND (fcntl, sanlock or etcd; default fcntl), LOCKFSM_SOAK_HOSTS (default 3),
LOCKFSM_SOAK_SEED (default random, printed).  Run:
``LOCKFSM_SLOW=1 .venv/bin/python -m pytest -s tests/test_soak.py``.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid as uuidlib
from collections import Counter
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import pytest

import lockfsm
from lockfsm.fuzz.procs import living
from lockfsm.protocol import rundir
from tests.support.fault_daemon import DaemonGone
from tests.support.fault_world import (
    DOMAIN_LOCKSPACE,
    GRACE,
    GuestRec,
    SimHost,
    World,
    lease_key,
    make_env,
    wait_for,
)
from tests.support.needs import require

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("LOCKFSM_SOAK_SECONDS", "180"))
BACKEND = os.environ.get("LOCKFSM_SOAK_BACKEND", "fcntl")
HOSTS = int(os.environ.get("LOCKFSM_SOAK_HOSTS", "3"))
SEED = int(os.environ.get("LOCKFSM_SOAK_SEED") or random.randrange(1 << 32))
DISKS = 10  # the pool of exclusive disks the guests draw from
MAX_GUESTS = 6
FAILURES = (lockfsm.LockFSMError, DaemonGone, FutureTimeout, RuntimeError, KeyError)


class Soak:
    def __init__(self, env: Any, rng: random.Random) -> None:
        self.rng = rng
        self.world = World(env)
        self.hosts: list[SimHost] = [
            self.world.host(f"h{i}", env.slot(i % 3)) for i in range(HOSTS)
        ]
        self.pool = self.world.disks(*(f"d{i}.img" for i in range(DISKS)))
        self.shared_pool = self.world.disks("s0.img", "s1.img")
        self.live: list[GuestRec] = []  # guests believed started, one record per guest
        self.lock = threading.RLock()
        self.ops: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.samples = 0
        self.unread: Counter[str] = Counter()  # readings of the truth that failed
        self.violations: list[str] = []
        self.stop = threading.Event()
        self.dead_since: dict[int, float] = {}
        self.uuids: set[str] = set()
        self.drain_errors: dict[str, str] = {}

    # -- the daemon side's calls ------------------------------------------------------------------

    def call(self, g: GuestRec, fn: str, *args: Any, timeout: float = 60) -> dict[str, Any]:
        return g.host.daemon.call("call", timeout, uuid=g.uuid, fn=fn, args=args)  # type: ignore[no-any-return]

    def done(self, op: str, outcome: str = "ok") -> None:
        self.ops[f"{op}: {outcome}"] += 1

    def forget(self, g: GuestRec) -> None:
        with self.lock:
            if g in self.live:
                self.live.remove(g)

    # -- operations ---------------------------------------------------------------------------

    def op_start(self) -> None:
        host = self.rng.choice(self.hosts)
        disks = self.rng.sample(self.pool, self.rng.choice([1, 1, 2]))
        shared = [self.rng.choice(self.shared_pool)] if self.rng.random() < 0.5 else []
        uuid = str(uuidlib.uuid4())
        name = f"g{sum(self.ops.values())}"
        self.uuids.add(uuid)
        try:
            g = self.world.start(host, name, disks, shared, uuid=uuid)
            with self.lock:
                self.live.append(g)
        except lockfsm.LeaseConflict:
            self.done("start", "refused (held elsewhere)")
            return
        except FAILURES:
            self.adopt(host, uuid, name)  # its daemon died: find what it left
            raise
        self.done("start")

    def adopt(self, host: SimHost, uuid: str, name: str) -> None:
        """A daemon died while it started a supervisor (a start, an incoming target): as a
        restarted daemon does with what its predecessor left, find it (ATTACH, once it has
        pointed dom-<uuid> at itself) and bring it down."""
        wait_for(lambda: not host.daemon.dead, 10, 0.05)  # the killer starts a new daemon
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                state = host.daemon.call("attach", uuid=uuid, name=name)["state"]
            except FAILURES:
                if not self.launched(host, uuid):
                    return  # no supervisor of it lives: nothing was left
                time.sleep(0.1)
                continue
            g = GuestRec(host, uuid, name, 0, 0, [], [])
            try:
                if state == "migrating_in":
                    self.call(g, "complete_migrate_in", True)
                self.call(g, "shutdown")
                self.done("adopt a dead daemon's launch (ATTACH)")
            except FAILURES:
                pass
            return

    def launched(self, host: SimHost, uuid: str) -> bool:
        """Whether a supervisor of ``uuid`` lives on ``host`` (its record says so)."""
        for name in os.listdir(host.run_dir):
            if name.endswith(".json"):
                record = rundir.read_record(host.run_dir, name[: -len(".json")])
                mine = record is not None and record.get("uuid") == uuid
                if mine and rundir.supervisor_alive(record, record["launch"]):  # type: ignore[arg-type]
                    return True
        return False

    def op_hotplug(self, g: GuestRec) -> None:
        free = [d for d in self.pool if d not in g.disks]
        disk = self.rng.choice(free)
        try:
            self.call(g, "acquire_resource", disk)
        except lockfsm.LeaseConflict:
            self.done("hot-plug", "refused (held elsewhere)")
            return
        g.add_disk(disk)  # the device is added once the lease is held
        g.hot = [*getattr(g, "hot", []), disk]  # type: ignore[attr-defined]
        self.done("hot-plug")

    def op_unplug(self, g: GuestRec) -> None:
        hot = getattr(g, "hot", [])
        if not hot:
            return self.op_hotplug(g)
        disk = hot.pop()
        g.remove_disk(disk)  # the device is gone before the lease is given back
        self.call(g, "release_resource", disk)
        self.done("unplug")
        return None

    def op_shutdown(self, g: GuestRec) -> None:
        self.forget(g)
        self.call(g, "shutdown")
        self.done("shutdown")

    def op_migrate(self, g: GuestRec) -> None:
        others = [h for h in self.hosts if h is not g.host]
        dest = self.rng.choice(others)
        how = self.rng.choice(["target first", "source first", "cancel"])
        cookie = self.call(g, "prepare_migrate", f"qemu+tcp://{dest.name}/system")["result"]
        try:
            t = self.world.incoming(dest, g, cookie)
        except FAILURES as e:
            if not isinstance(e, lockfsm.LeaseConflict):
                self.adopt(dest, g.uuid, g.name)
            self.call(g, "complete_migrate_in", True)
            raise
        source_done = False
        try:
            if how == "cancel":
                self.call(t, "complete_migrate_in", True)
                self.call(t, "shutdown")
                self.call(g, "complete_migrate_in", True)
                self.done("migrate", "cancelled")
                return
            if how == "target first":
                fut = dest.daemon.submit("call", uuid=t.uuid, fn="complete_migrate_in")
                time.sleep(self.rng.uniform(0, 0.05))
                self.call(g, "complete_migrate_in")
                source_done = True
                fut.result(60)
            else:
                self.call(g, "complete_migrate_in")
                source_done = True
                self.call(t, "complete_migrate_in")
        except FAILURES:
            self.rescue(g, t, source_done)
            raise
        t.role = "running"
        t.hot = list(getattr(g, "hot", []))  # type: ignore[attr-defined]
        with self.lock:
            self.live[self.live.index(g)] = t
        try:
            self.call(g, "shutdown")  # the source's manager: done -> stopped
        except FAILURES:
            pass
        self.done("migrate", how)

    def state(self, g: GuestRec) -> str:
        """The state of the guest's manager on its host, attaching first if that host's daemon
        is a new one (it was killed and replaced)."""
        try:
            return str(g.host.daemon.call("state", uuid=g.uuid)["state"])
        except (RuntimeError, KeyError):  # this daemon has no manager: a new daemon
            return str(g.host.daemon.call("attach", uuid=g.uuid, name=g.name)["state"])

    def rescue(self, g: GuestRec, t: GuestRec, source_done: bool) -> None:
        """A migration failed part way: cancel both sides if the source still has the guest;
        else the target keeps it if it can still take over, or it is gone."""
        if not source_done:
            for side in (t, g):
                try:
                    if self.state(side) in ("migrating_in", "migrating_out"):
                        self.call(side, "complete_migrate_in", True)
                except FAILURES:
                    pass
            try:
                self.call(t, "shutdown")
            except FAILURES:
                pass
            return
        try:
            state = self.state(t)
            if state == "migrating_in":
                self.call(t, "complete_migrate_in")
            t.role = "running"
            t.hot = list(getattr(g, "hot", []))  # type: ignore[attr-defined]
            with self.lock:
                self.live[self.live.index(g)] = t
        except FAILURES:
            self.forget(g)

    def settle(self, g: GuestRec) -> None:
        """After a failed call: find out where the guest is, and put it back to started or
        shut it down."""
        try:
            state = self.state(g)
            if state == "migrating_out":
                self.call(g, "complete_migrate_in", True)
                state = "started"
            if state != "started" or not g.executing():
                self.forget(g)
                self.call(g, "shutdown")
        except FAILURES:
            self.forget(g)

    # -- faults ---------------------------------------------------------------------------------

    def killer(self, rng: random.Random) -> None:
        while not self.stop.wait(rng.uniform(0.3, 2.0)):
            try:
                self.kill_one(rng)
            except Exception as e:  # the soak goes on; the count says so
                self.faults[f"killer error ({type(e).__name__}: {e})"[:80]] += 1

    def kill_one(self, rng: random.Random) -> None:
        kinds = {"supervisor": 4, "guest": 4, "daemon": 2}
        if BACKEND == "etcd":
            kinds["lease agent"] = 1  # every guest of its host is fenced at once
        kind = rng.choices(list(kinds), list(kinds.values()))[0]
        if kind == "daemon":
            self.kill_daemon(rng.choice(self.hosts))
            return
        if kind == "lease agent":
            agent = rng.choice(self.hosts).slot
            agent.kill()
            self.faults["kill -9 lease agent"] += 1
            agent.start()  # a new agent, a new etcd lease: the host starts guests again
            return
        victims = [g for g in self.world.guests if living(g.pid) and g.supervised()]
        if not victims:
            return
        g = rng.choice(victims)
        try:
            os.kill(g.sup if kind == "supervisor" else g.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.faults[f"kill -9 {kind}"] += 1

    def kill_daemon(self, host: SimHost) -> None:
        host.daemon.kill()
        self.faults["kill -9 daemon"] += 1
        host.new_daemon()
        with self.lock:
            mine = [g for g in self.live if g.host is host]
        for g in mine:
            try:
                host.daemon.call("attach", uuid=g.uuid, name=g.name)
            except FAILURES:
                continue  # the main loop finds out (settle)

    # -- the checker ----------------------------------------------------------------------------

    def checker(self) -> None:
        pause = 0.02 if BACKEND == "fcntl" else 0.1
        while not self.stop.wait(pause):
            try:
                seen = self.world.observe()
            except Exception as e:  # a reading that failed is no sample, and is counted
                self.unread[f"{type(e).__name__}: {e}"[:80]] += 1
                continue
            self.samples += 1
            found = self.world.check("soak", seen, dead_supervisor=False)
            now = time.monotonic()
            for g in seen.running:
                if g not in seen.supervised:  # PR_SET_PDEATHSIG: dead within a moment
                    since = self.dead_since.setdefault(g.pid, now)
                    if now - since > 1.0:
                        found.append(f"S2: {g!r} executes 1 s after its supervisor died")
            for v in found:
                if v not in self.violations:
                    self.violations.append(v)
                    print(f"VIOLATION: {v}", flush=True)

    # -- the run ---------------------------------------------------------------------------------

    def run(self, seconds: float) -> None:
        threads = [
            threading.Thread(target=self.checker, daemon=True),
            threading.Thread(target=self.killer, args=(random.Random(SEED + 1),), daemon=True),
        ]
        for t in threads:
            t.start()
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                self.step()
                self.prune()
        finally:
            self.stop.set()
            for t in threads:
                t.join(60)

    def step(self) -> None:
        with self.lock:
            live = list(self.live)
        if len(live) < 2 or (len(live) < MAX_GUESTS and self.rng.random() < 0.3):
            op, g = "start", None
        else:
            g = self.rng.choice(live)
            op = self.rng.choices(
                ["hotplug", "unplug", "migrate", "shutdown"], [3, 2, 4, 1 + len(live) // 3]
            )[0]
        try:
            if g is None:
                self.op_start()
            else:
                getattr(self, f"op_{op}")(g)
        except FAILURES as e:
            self.done(op.replace("hotplug", "hot-plug"), f"failed ({type(e).__name__})")
            if g is not None:
                self.settle(g)

    def prune(self) -> None:
        """Forget guests that are gone: a dead process's pid may be reused."""
        with self.lock:
            self.world.guests = [
                g for g in self.world.guests if g in self.live or living(g.pid) or g.supervised()
            ]
            for g in list(self.live):
                if not living(g.pid) and not g.supervised():
                    self.live.remove(g)
                    try:
                        self.call(g, "shutdown", timeout=20)
                    except FAILURES:
                        pass

    def all_keys(self) -> set[str]:
        """Every lease key the run may have used: the disks' and every guest's own."""
        b = BACKEND
        keys = {lease_key(b, "disk", d) for d in self.pool + self.shared_pool}
        return keys | {lease_key(b, "lease", f"{DOMAIN_LOCKSPACE}:{u}") for u in self.uuids}

    def drain(self) -> list[str]:
        """Bring every guest down through fresh daemons; return what is left."""
        for host in self.hosts:
            host.daemon.kill()
            host.new_daemon()
        leftovers = []
        for _ in range(3):
            alive = 0
            for host in self.hosts:
                for name in sorted(os.listdir(host.run_dir)):
                    if not name.endswith(".json"):
                        continue
                    launch = name[: -len(".json")]
                    record = rundir.read_record(host.run_dir, launch)
                    if not record or not rundir.supervisor_alive(record, launch):
                        continue
                    alive += 1
                    self.bring_down(host, record)
            if not alive:
                break
            time.sleep(GRACE + 1)
        for host in self.hosts:
            for name in sorted(os.listdir(host.run_dir)):
                launch = name[: -len(".json")]
                record = (
                    rundir.read_record(host.run_dir, launch) if name.endswith(".json") else None
                )
                if record and rundir.supervisor_alive(record, launch):
                    pointed = rundir.pointed(host.run_dir, record["uuid"])
                    os.kill(int(record["pid"]), signal.SIGKILL)
                    leftovers.append(
                        f"{host.name}: supervisor {record['pid']} ({record['state']}, launch "
                        f"{launch}; dom-{record['uuid']} names "
                        f"{'it' if pointed == launch else pointed}; "
                        f"{self.drain_errors.get(launch, 'no error')})"
                    )
        return leftovers

    def bring_down(self, host: SimHost, record: dict[str, Any]) -> None:
        uuid, name = record["uuid"], record["name"]
        g = GuestRec(host, uuid, name, record["pid"], record.get("guest_pid") or 0, [], [])
        try:
            state = host.daemon.call("attach", uuid=uuid, name=name)["state"]
            if state in ("migrating_in", "migrating_out"):
                self.call(g, "complete_migrate_in", True)
            self.call(g, "shutdown")
        except FAILURES as e:
            self.drain_errors[record["launch"]] = f"{type(e).__name__}: {e}"[:200]


def test_soak() -> None:
    if BACKEND != "fcntl":
        require(BACKEND)
    env = make_env(BACKEND)
    rng = random.Random(SEED)
    soak = Soak(env, rng)
    started = time.monotonic()
    try:
        soak.run(SECONDS)
        ran = time.monotonic() - started
        leftovers = soak.drain()
        wait = getattr(env, "TTL", 0) + 3
        keys = soak.all_keys()
        free = wait_for(lambda: not any(soak.world.holders(keys).values()), wait, 0.1)
        if not free:
            soak.violations.append(f"end: leases still held: {soak.world.holders(keys)}")
        if leftovers:
            soak.violations.append(f"end: supervisors left running: {leftovers}")
        executing = [g for g in soak.world.guests if g.executing()]
        if executing:
            soak.violations.append(f"end: guests still executing: {executing}")
    finally:
        soak.stop.set()
        soak.world.close()
        env.close()
    total = sum(soak.ops.values())
    print(f"\nsoak on {BACKEND}: {HOSTS} hosts, seed {SEED}, {ran:.0f} s")
    print(f"operations: {total}")
    for op, n in sorted(soak.ops.items()):
        print(f"  {op:40s} {n}")
    print(f"faults injected: {sum(soak.faults.values())}")
    for fault, n in sorted(soak.faults.items()):
        print(f"  {fault:40s} {n}")
    print(f"S1/S2 samples of the lock service's truth: {soak.samples}")
    for why, n in sorted(soak.unread.items()):
        print(f"  readings that failed: {n} x {why}")
    print(f"violations: {len(soak.violations)}")
    for v in soak.violations:
        print(f"  {v}")
    assert not soak.violations, soak.violations
