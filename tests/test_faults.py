"""The fault matrix (issue 9, item 1): one parametrised test, each row a real fault on real
processes -- kill -9 or SIGSTOP of the guest, its supervisor, the daemon side (a process of its
own per simulated host, tests/fault_daemon.py) or the lock service (sanlock: the host's sanlock
daemon; etcd: the member the host's lease agent uses, and the agent itself) -- at one step of a
guest's life: started, a disk hot-plugged, a migration prepared, the target's incoming guest
running, the target waiting in complete_migrate_in, a shutdown in progress.

Each row carries the documented end state (specs/PROTOCOL.md, DESIGN.md) and checks it, with the
invariants read from the lock service's truth (tests/fault_world.py) before the fault, while it
acts, after the recovery and at the end: S1 (no disk written by two executing guests; the lock
service never grants a lease twice), S2 (an executing guest's supervisor holds all its leases),
S3/L1 in migration rows, S4 after a daemon is killed and a new one ATTACHes, S5 where a call is
refused.  Faults on the target side hit the target's processes (steps "target incoming" and
"target waiting"); the others hit the source's, and the full product adds the two target steps
with the fault on the source's side.  The guest is then driven to its end: a
migration completes if both sides can, else both cancel; every guest is shut down; at the end
no lease is held (or, for a crashed sanlock host, its leases stay owned on disk until sanlock's
bound: nothing else can take them meanwhile).

The default rows cover every (target, signal) and every step at least once per backend; the
whole cross product runs with LOCKFSM_SLOW=1.  A row of its own: the daemon killed during a
migration to the host that runs the source (it found an S4 bug, fixed in Supervisor._point).
Rows that reveal a bug in lockfsm/ are marked xfail(strict=True) with the reason (KNOWN_BUGS)
until it is fixed.  ``pytest -s tests/test_faults.py`` prints the matrix with each row's
outcome.  Backends the machine lacks are skipped (a failure in CI).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import pytest

import lockfsm
from lockfsm.protocol import rundir, wire
from tests.conftest import IN_CI, require
from tests.fault_daemon import DaemonGone
from tests.fault_world import (
    GRACE,
    HANDOFF,
    Env,
    EtcdEnv,
    GuestRec,
    SanlockEnv,
    SimHost,
    World,
    lease_key,
    living,
    make_env,
    proc_state,
    wait_for,
)

BACKENDS = ("fcntl", "sanlock", "etcd")
TARGETS = ("guest", "supervisor", "daemon", "lock service", "lease agent")
SIGNALS = ("SIGKILL", "SIGSTOP")
STEPS = (
    "started",
    "hot-plugged",
    "migration prepared",
    "target incoming",
    "target waiting in complete_migrate_in",
    "shutdown in progress",
)
TARGET_SIDE = ("target incoming", "target waiting in complete_migrate_in")
HOLD = 0.6  # seconds a stopped process stays stopped (a stall shorter than any deadline)


# -- the rows: what each fault is documented to do ----------------------------------------------

#: More steps, in the full product only: the target's steps with the fault on the source's side.
SOURCE_FAULTED = (
    "target incoming, fault on the source",
    "target waiting, fault on the source",
)
ALL_STEPS = STEPS + SOURCE_FAULTED


def phase(step: str) -> str:
    """started, hot-plugged, prepared, incoming, waiting or shutdown."""
    for word, name in (
        ("waiting", "waiting"),
        ("incoming", "incoming"),
        ("prepared", "prepared"),
        ("shutdown", "shutdown"),
        ("hot-plugged", "hot-plugged"),
    ):
        if word in step:
            return name
    return "started"


def effect(backend: str, target: str, sig: str) -> str:
    """The kind of fault, which decides the documented end state."""
    if target == "guest":
        return "gone" if sig == "SIGKILL" else "paused"
    if target == "supervisor":
        return "gone" if sig == "SIGKILL" else "supervisor stopped"
    if target == "daemon":
        return "daemon killed" if sig == "SIGKILL" else "daemon stopped"
    if target == "lease agent":
        return "fenced" if sig == "SIGKILL" else "stall"
    if backend == "fcntl":
        return "n/a"
    if backend == "sanlock":
        return "crash" if sig == "SIGKILL" else "stall"
    return "failover"


def documented(backend: str, target: str, sig: str, step: str) -> str:
    """The documented end state of a row, in words (specs/PROTOCOL.md, DESIGN.md, README)."""
    kind = effect(backend, target, sig)
    if kind == "n/a":
        return "not applicable: the kernel is fcntl's lock service"
    if step in SOURCE_FAULTED:
        return _source_faulted(backend, kind, target, sig, phase(step))
    side = "target" if step in TARGET_SIDE else "source"
    at = phase(step)
    if kind == "gone":
        who = "the guest" if target == "guest" else "the supervisor; its guest dies (PDEATHSIG)"
        if side == "target":
            ends = (
                "the pending complete_migrate_in raises BackendError"
                if at == "waiting"
                else "the target's next call raises BackendError"
            )
            return (
                f"kill -9 {who}: the target's reservations go with it; {ends}; both sides "
                "cancel and the source holds every lease (S3)"
            )
        free = (
            "its supervisor releases every lease at once"
            if target == "guest"
            else "its leases come free once the guest is dead (fcntl and sanlock: the guest's "
            "inherited descriptors; etcd: the agent's connection)"
        )
        if at == "shutdown":
            return f"kill -9 {who}; {free}; the pending shutdown() returns: stopped"
        return (
            f"kill -9 {who}; {free}; the manager's next call raises BackendError; shutdown() "
            "succeeds" + ("; no migration" if at == "prepared" else "")
        )
    if kind == "paused":
        if at == "shutdown":
            return (
                "SIGSTOP guest: nothing changes; the pending shutdown() still ends it "
                "(SIGKILL at the end of the grace period kills a stopped guest): stopped"
            )
        return "SIGSTOP guest: nothing changes, leases held, SIGCONT resumes; the lifecycle ends"
    if kind == "supervisor stopped":
        if at == "waiting":
            return (
                "SIGSTOP target supervisor: its take-over pauses; the source completes "
                "meanwhile (nobody else can take the leases: fcntl's gate, etcd's marker); "
                "SIGCONT and the pending call returns holding every lease (L1)"
            )
        if at == "shutdown":
            return (
                "SIGSTOP supervisor: the guest outlives the grace period with its leases; "
                "SIGCONT and the pending shutdown() completes"
            )
        return (
            "SIGSTOP supervisor: the guest keeps running and holding; calls time out with "
            "BackendError and change nothing; SIGCONT and the next call works"
        )
    if kind == "daemon killed":
        if at == "shutdown":
            return (
                "kill -9 daemon: the supervisor finishes the stop by itself (guest killed "
                "after the grace period, leases released); a new daemon's ATTACH finds "
                "nothing to attach and changes nothing"
            )
        state = {"source": "started", "target": "migrating_in"}[side]
        if at == "prepared":
            state = "migrating_out"
        extra = ""
        if at == "waiting":
            extra = "the pending call dies with the daemon and the supervisor takes nothing on "
            extra += "its behalf; "
        return (
            f"kill -9 daemon: guest and leases stay; {extra}a new daemon ATTACHes: {state}, "
            "same guest, disks and leases (S4); the lifecycle ends"
        )
    if kind == "daemon stopped":
        return (
            "SIGSTOP daemon: guests and leases stay, supervisors act on their own; the "
            "daemon's calls wait; SIGCONT and they complete"
        )
    if kind == "crash":
        return (
            "kill -9 sanlock daemon = a host crash: with no watchdog the guest runs on, its "
            "leases stay owned on disk by the crashed host until 8 x io_timeout + 60 s and "
            "nothing else can acquire them meanwhile (the bounded part is checked); calls that "
            "need the daemon fail and change nothing; migrations are cancelled; shutdown() "
            "succeeds"
        )
    if kind == "stall":
        return _stall(backend)
    if kind == "fenced":
        if side == "target":
            return (
                "kill -9 the target's lease agent: the target holds only reservations; its "
                "take-over cannot succeed (the agent is gone): both sides cancel and the "
                "source holds every lease (S3); the reservations expire with the host's lease"
            )
        return (
            "kill -9 lease agent: every supervisor of the host sees the connection close and "
            "stops its guest at once (poweroff, exit 76); the keys expire after the TTL and "
            "nothing else acquires before; check() says failed; shutdown() succeeds"
        )
    return _failover(sig)


def _stall(backend: str) -> str:
    what = "sanlock daemon" if backend == "sanlock" else "lease agent"
    bound = "8 x io_timeout" if backend == "sanlock" else "the fencing deadline"
    return (
        f"SIGSTOP {what} for {HOLD} s (under {bound}): nothing changes; calls that need it "
        "wait; SIGCONT and the lifecycle ends"
    )


def _failover(sig: str) -> str:
    sig_word = "kill -9" if sig == "SIGKILL" else "SIGSTOP"
    return (
        f"{sig_word} the member the agent uses: the agent fails over, the keys stay (same "
        "holders), no guest is fenced; the lifecycle ends"
    )


def _source_faulted(backend: str, kind: str, target: str, sig: str, at: str) -> str:
    """The documented end of a fault on the source while the target is incoming or waits in
    complete_migrate_in (PROTOCOL.md, "Crashes": only the target can take a dead source's
    leases, and only if its daemon completes, which it must not do unless QEMU's migration
    completed: "incoming" is before that, "waiting" after)."""
    if kind == "gone":
        who = "guest" if target == "guest" else "supervisor (its guest dies: PDEATHSIG)"
        if at == "incoming":
            return (
                f"kill -9 the source's {who}: its leases come free but stay reserved for the "
                "target (fcntl's gate, etcd's markers: another host is refused); the target "
                "must not complete before QEMU's migration has: both cancel, shutdown() "
                "succeeds on both; the guest is down"
            )
        return (
            f"kill -9 the source's {who}: its leases come free for the target's reservation; "
            "the target's pending completion takes them and returns (L1); the source's "
            "shutdown() succeeds"
        )
    if kind == "paused":
        return (
            "SIGSTOP the source's guest: nothing changes; the migration completes (the "
            "source's hand_off kills a stopped guest too)"
        )
    if kind == "supervisor stopped":
        late = ""
        if at == "waiting":
            late = (
                "; the target's pending completion fails with LeaseConflict when "
                f"handoff_timeout ({HANDOFF:g} s) passes, taking nothing, and it stays "
                "migrating_in; its daemon completes again"
            )
        return (
            "SIGSTOP the source's supervisor: its guest keeps running and holding; the "
            "target takes nothing; the source's calls time out with BackendError and change "
            f"nothing{late}; SIGCONT and the migration completes (L1)"
        )
    if kind == "daemon killed":
        return (
            "kill -9 the source's daemon: guest and leases stay; a new daemon ATTACHes: "
            "migrating_out, same guest, disks and leases (S4); the migration completes (L1)"
        )
    if kind == "daemon stopped":
        return (
            "SIGSTOP the source's daemon: nothing changes; SIGCONT and the migration completes (L1)"
        )
    if kind == "crash":
        return (
            "kill -9 the source host's sanlock daemon = a crash: its guest runs on (no "
            "watchdog), its leases stay owned on disk and nothing else can take them, the "
            "target included"
            + (
                " (its pending completion fails when handoff_timeout passes)"
                if at == "waiting"
                else ""
            )
            + "; both cancel; shutdown() succeeds; the leases stay on disk until sanlock's bound"
        )
    if kind == "fenced":
        return (
            "kill -9 the source host's lease agent: the source's guest is stopped at once "
            "(poweroff); its keys stay until the host's lease expires, then vanish: the target "
            "cannot take over"
            + (" (its pending completion fails)" if at == "waiting" else "")
            + "; both cancel; the guest is down"
        )
    if kind == "stall":
        return _stall(backend) + " (the migration completes, L1)"
    return _failover(sig) + " (the migration completes)"


@dataclass(frozen=True)
class Row:
    backend: str
    target: str
    sig: str
    step: str
    expected: str = field(compare=False)

    @property
    def kind(self) -> str:
        return effect(self.backend, self.target, self.sig)

    @property
    def id(self) -> str:
        step = self.step.split(" in ")[0].replace(", fault on the ", "-").replace(" ", "-")
        return f"{self.backend}-{self.target.replace(' ', '-')}-{self.sig}-{step}"


#: Rows that reveal a bug in lockfsm/ (reported, not fixed here): row id -> reason.
KNOWN_BUGS: dict[str, str] = {}


def targets(backend: str) -> tuple[str, ...]:
    return TARGETS if backend == "etcd" else TARGETS[:4]


def all_rows() -> list[Row]:
    return [
        Row(b, t, s, st, documented(b, t, s, st))
        for b in BACKENDS
        for t in targets(b)
        for s in SIGNALS
        for st in ALL_STEPS
    ]


def default_rows() -> set[Row]:
    """Per backend, each (target, signal) once, at steps that rotate so that every step is hit
    at least once (fcntl's lock service is not applicable: its cells count as covered)."""
    chosen = set()
    for offset, b in enumerate(BACKENDS):
        pairs = [(t, s) for t in targets(b) for s in SIGNALS]
        live = [(t, s) for t, s in pairs if effect(b, t, s) != "n/a"]
        for i, (t, s) in enumerate(live):
            st = STEPS[(i + 2 * offset) % len(STEPS)]
            chosen.add(Row(b, t, s, st, documented(b, t, s, st)))
        for t, s in pairs:
            if (t, s) not in live:
                chosen.add(Row(b, t, s, STEPS[0], documented(b, t, s, STEPS[0])))
    return chosen


def params() -> list[Any]:
    default = default_rows()
    out = []
    for row in all_rows():
        marks = []
        if row not in default:
            marks.append(pytest.mark.slow)
        if row.id in KNOWN_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[row.id]))
        out.append(pytest.param(row, id=row.id, marks=marks))
    return out


# -- the matrix, printed at the end of the session ---------------------------------------------


class Matrix:
    def __init__(self) -> None:
        self.rows: dict[Row, tuple[str, float]] = {}

    def record(self, row: Row, outcome: str, seconds: float) -> None:
        self.rows[row] = (outcome, seconds)

    def render(self) -> str:
        if not self.rows:
            return ""
        lines = ["", "fault matrix (backend x target x signal x step): outcome", ""]
        order = {r: i for i, r in enumerate(all_rows())}
        order.update({r: len(order) + i for i, r in enumerate(self.rows) if r not in order})
        width = max(len(r.step) for r in self.rows) + 2
        for row in sorted(self.rows, key=lambda r: order.get(r, 0)):
            outcome, seconds = self.rows[row]
            lines.append(
                f"{row.backend:8s} {row.target:13s} {row.sig:8s} {row.step:{width}s} "
                f"{seconds:5.1f}s  {outcome}"
            )
            lines.append(f"{'':9s}documented: {row.expected}")
        outcomes = [o.split(":")[0].split(" (")[0] for o, _ in self.rows.values()]
        counts = ", ".join(f"{outcomes.count(o)} {o}" for o in sorted(set(outcomes)))
        lines.append("")
        lines.append(f"{len(self.rows)} rows: {counts}")
        return "\n".join(lines)


@pytest.fixture(scope="session")
def matrix() -> Iterator[Matrix]:
    m = Matrix()
    yield m
    text = m.render()
    if text:
        print(text)
        path = os.environ.get("LOCKFSM_FAULT_MATRIX")
        if path:
            with open(path, "w") as f:
                f.write(text + "\n")


# -- the backends' environments (one per session each) -----------------------------------------

_envs: dict[str, Env] = {}


def _available(backend: str) -> None:
    if backend == "sanlock":
        import glob

        from tests.test_sanlock import BINDING

        require("sanlock")
        if not glob.glob(BINDING):
            if IN_CI:
                pytest.fail("python3-sanlock is required in CI but is not installed")
            pytest.skip("python3-sanlock is not installed")
    elif backend == "etcd":
        require("etcd")


@pytest.fixture(scope="session")
def environments() -> Iterator[dict[str, Env]]:
    yield _envs
    for env in _envs.values():
        env.close()
    _envs.clear()


def env_for(environments: dict[str, Env], backend: str) -> Env:
    _available(backend)
    if backend not in environments:
        environments[backend] = make_env(backend)
    env = environments[backend]
    if isinstance(env, EtcdEnv):
        env.revive()  # a row before may have left a member or an agent down
    return env


# -- one row ------------------------------------------------------------------------------------


class FaultRun:
    """One row: a world on the backend, the guest driven to the step, the fault, what it is
    documented to do, the recovery, the end.  ``self.violations`` collects what broke.

    Host A is the source, B the target (migration steps), C a rival host that tries to start
    another guest on the source's exclusive disk (no daemon: it runs from this process)."""

    def __init__(self, env: Env, row: Row) -> None:
        self.env, self.row = env, row
        self.world = World(env)
        self.violations: list[str] = []
        self.kind = row.kind
        self.side = "target" if row.step in TARGET_SIDE else "source"  # the faulted side
        self.at = phase(row.step)
        self.pending: Future[Any] | None = None  # B's completion, or A's shutdown, under way
        self.cookie: str | None = None
        self.src: GuestRec | None = None
        self.tgt: GuestRec | None = None
        self.src_ok = True  # the source can go on with the migration
        self.tgt_ok = True  # the target can
        self.exempt: list[GuestRec] = []  # guests whose leases are "on disk" (a crashed host)
        self.crashed: SimHost | None = None
        self.fenced: SimHost | None = None
        self.cancelled = False
        self.done = False
        self.source_completed = False
        self.rival_host: SimHost | None = None
        self.B: SimHost | None = None

    # -- bookkeeping -------------------------------------------------------------------------

    def expect(self, ok: bool, what: str) -> bool:
        if not ok:
            self.violations.append(f"end state: {what}")
        return ok

    def check(self, where: str) -> None:
        """S1, S2 over the world; S3 while the migration is under way."""
        seen = self.world.observe()
        holders = seen.holders
        self.violations += self.world.check(where, seen, self.exempt)
        src, tgt = self.src, self.tgt
        if src is None or tgt is None or self.cancelled or self.done:
            return
        if self.source_completed or not self.src_ok:  # the window: the source holds nothing
            # (but a dead host's leases stay: sanlock's on disk, etcd's until the TTL)
            stale = self.crashed is not None or self.fenced is not None
            modes = ("exclusive", "shared")
            held = [
                h for hs in holders.values() for h in hs if h.pid == src.sup and h.mode in modes
            ]
            if held and not stale:
                self.violations.append(f"S3 {where}: the source still holds {held}")
        elif self.crashed is None and self.fenced is None:
            self.violations += self.world.check_migration(where, src, tgt, "before", holders)

    def unchanged(self, before: dict[str, Any], where: str, law: str) -> None:
        after = self.world.snapshot()
        if after != before:
            self.violations.append(f"{law} {where}: the leases changed: {before} -> {after}")

    def refused(self, call: Any, where: str, errors: tuple[type[BaseException], ...]) -> bool:
        """S5: ``call()`` raises one of ``errors`` and nothing changes."""
        before = self.world.snapshot()
        try:
            call()
        except errors:
            self.unchanged(before, f"after the refused {where}", "S5")
            return True
        except Exception as e:
            self.violations.append(f"end state: {where} raised {type(e).__name__}: {e}")
            return False
        self.violations.append(f"end state: {where} was not refused")
        return False

    def rival_refused(self, where: str) -> None:
        """S1 from the outside: another host cannot start a guest on the source's disk (and
        its refused start changes nothing: S5)."""
        if self.rival_host is None:
            self.rival_host = self.world.host("C", self.env.slot(2), daemon=False)
        before = self.world.snapshot()
        g = self.world.rival_start(self.rival_host, self.disks[0])
        if g is not None:
            self.violations.append(f"S1 {where}: another host started a guest on the disk")
            self.check(f"{where} (rival started)")
            g.mgr.shutdown()  # type: ignore[attr-defined]
        else:
            self.unchanged(before, f"{where}: the rival's refused start", "S5")

    def call(self, host: SimHost, method: str, *args: Any) -> dict[str, Any]:
        assert self.src is not None
        reply: dict[str, Any] = host.daemon.call("call", uuid=self.src.uuid, fn=method, args=args)
        return reply

    @property
    def subject(self) -> GuestRec:
        g = self.tgt if self.side == "target" else self.src
        assert g is not None
        return g

    def lose_subject(self) -> None:
        if self.side == "target":
            self.tgt_ok = False
        else:
            self.src_ok = False

    # -- the run --------------------------------------------------------------------------------

    def run(self) -> None:
        env = self.env
        fresh = self.kind == "crash"  # a crashed sanlock host_id cannot join again: a new one
        self.A = self.world.host("A", env.slot(0, fresh=fresh and self.side == "source"))
        if self.at in ("prepared", "incoming", "waiting"):
            self.B = self.world.host("B", env.slot(1, fresh=fresh and self.side == "target"))
        self.disks = self.world.disks("x.img", "s.img", "h.img")
        self.drive()
        self.check("before the fault")
        self.before = self.world.snapshot()
        getattr(self, "fault_" + self.kind.replace(" ", "_"))()
        self.check("after the fault")
        self.finish()
        self.end()

    def drive(self) -> None:
        at = self.at
        guest = "ignore_term" if at == "shutdown" else "plain"
        src = self.world.start(self.A, "vm", self.disks[:1], self.disks[1:2], guest)
        self.src = src
        assert wait_for(src.executing, 5), "the guest never ran"
        if at == "hot-plugged":
            self.call(self.A, "acquire_resource", self.disks[2])
            src.add_disk(self.disks[2])
        if at in ("prepared", "incoming", "waiting"):
            self.cookie = self.call(self.A, "prepare_migrate", "qemu+tcp://B/system")["result"]
        if at in ("incoming", "waiting"):
            assert self.B is not None and self.cookie is not None
            self.tgt = self.world.incoming(self.B, src, self.cookie)
        if at == "waiting":
            assert self.B is not None
            self.pending = self.B.daemon.submit("call", uuid=src.uuid, fn="complete_migrate_in")
            time.sleep(0.3)
            if self.pending.done():
                self.violations.append(
                    f"S3: the target's completion returned before the source's: "
                    f"{self.settle(self.pending)}"
                )
                self.pending = None
                self.check("after the early completion")
        if at == "shutdown":
            self.pending = self.A.daemon.submit("call", uuid=src.uuid, fn="shutdown")
            time.sleep(0.2)
            assert not self.pending.done(), "the shutdown ended within the grace period"

    # -- the faults -----------------------------------------------------------------------------

    def fault_na(self) -> None:
        raise AssertionError("not applicable")

    def fault_gone(self) -> None:
        """kill -9 of the guest or of its supervisor."""
        g = self.subject
        os.kill(g.pid if self.row.target == "guest" else g.sup, signal.SIGKILL)
        self.lose_subject()
        self.expect(wait_for(lambda: not living(g.pid), 3), f"the guest {g.pid} died")
        self.expect(wait_for(lambda: not g.supervised(), 3), f"the supervisor {g.sup} exited")
        if self.side == "target":
            self.expect(
                wait_for(lambda: not self.held_by(g), 3),
                f"the target's reservations are gone: {self.world.holders()}",
            )
            if self.at == "waiting":
                self.expect_raises(self.pending, lockfsm.BackendError, "the pending completion")
                self.pending = None
            else:
                self.refused(
                    lambda: self.call(g.host, "check"),
                    "check() after the kill",
                    (lockfsm.BackendError,),
                )
            return
        if self.at == "waiting":  # the target takes the dead source's leases (L1)
            self.expect(self.settle(self.pending) == "started", "the target's completion")
            self.pending = None
            self.mark_done()
            return
        if self.at == "incoming":  # free, reserved for the target: nobody else may take them
            self.expect(wait_for(lambda: not self.held_by(g), 3), "the source holds nothing")
            if self.env.backend != "sanlock":
                self.rival_refused("with the leases reserved for the target")
            return
        keys = {k for k, _, _ in g.leases()}
        self.expect(
            wait_for(lambda: not any(self.world.holders(keys).values()), 3),
            f"every lease of the guest is free at once: {self.world.holders(keys)}",
        )
        if self.at == "shutdown":
            self.expect(self.settle(self.pending) == "stopped", "the pending shutdown: stopped")
            self.pending = None
        else:
            self.refused(
                lambda: self.call(g.host, "check"),
                "check() after the kill",
                (lockfsm.BackendError,),
            )

    def fault_paused(self) -> None:
        g = self.subject
        os.kill(g.pid, signal.SIGSTOP)
        time.sleep(HOLD)
        self.expect(proc_state(g.pid) == "T", f"the guest is stopped ({proc_state(g.pid)})")
        self.expect(g.supervised(), "the supervisor lives")
        if self.at != "shutdown":
            self.unchanged(self.before, "while the guest is stopped", "S2")
            self.rival_refused("while the guest is stopped")
        os.kill(g.pid, signal.SIGCONT)

    def fault_supervisor_stopped(self) -> None:
        g = self.subject
        os.kill(g.sup, signal.SIGSTOP)
        try:
            if self.at == "shutdown":
                time.sleep(GRACE + 0.3)
                self.expect(g.executing(), "the guest outlives the grace period")
                self.expect(self.waits(), "shutdown waits")
                self.unchanged(self.before, "while the supervisor is stopped", "S2")
            elif self.at == "waiting" and self.side == "target":
                path = rundir.socket_path(g.host.run_dir, self.launch_of(g))
                try:
                    wire.call(path, {"op": "hello"}, 0.5)
                    self.violations.append("end state: a stopped supervisor answered")
                except TimeoutError:
                    pass
                self.complete_source()
                if self.env.backend != "sanlock":  # sanlock reserves nothing: no gate
                    self.rival_refused("in the handoff window, the target stopped")
                self.expect(self.waits(), "the take-over waits")
            else:
                started = time.monotonic()
                self.refused(
                    lambda: self.call(g.host, "check"),
                    "check() of a stopped supervisor",
                    (lockfsm.BackendError,),
                )
                took = time.monotonic() - started
                self.expect(took < 15, f"the call timed out in {took:.1f} s")
                if g.role != "incoming":
                    self.expect(g.executing(), "the guest keeps running")
                if self.at == "waiting":  # the source stalls past handoff_timeout
                    self.expect_raises(
                        self.pending, lockfsm.LeaseConflict, "the target's completion", HANDOFF + 5
                    )
                    self.pending = None
                    assert self.B is not None
                    state = self.B.daemon.call("state", uuid=g.uuid)["state"]
                    self.expect(state == "migrating_in", f"the target stays migrating_in: {state}")
                    held = self.held_by(self.tgt, ("exclusive", "shared"))
                    self.expect(not held, f"the target holds nothing (reserves only): {held}")
                self.rival_refused("while the supervisor is stopped")
        finally:
            os.kill(g.sup, signal.SIGCONT)
        if self.at == "shutdown":
            self.expect(self.settle(self.pending) == "stopped", "shutdown completes after SIGCONT")
            self.pending = None
        elif self.at == "waiting" and self.side == "target":
            self.expect(self.settle(self.pending) == "started", "the take-over completes")
            self.pending = None
            self.mark_done()
        else:
            state = self.call(g.host, "check")["state"]
            want = self.state_of(g)
            self.expect(state == want, f"after SIGCONT check() works: {state}, not {want}")

    def fault_daemon_killed(self) -> None:
        g = self.subject
        host = g.host
        host.daemon.kill()
        if self.pending is not None and self.pending_host() is host:
            self.expect_raises(self.pending, DaemonGone, "the dead daemon's pending call")
            self.pending = None
        if self.at == "shutdown":
            self.expect(
                wait_for(lambda: not g.supervised(), GRACE + 5),
                "the supervisor finishes the stop by itself",
            )
            self.expect(not living(g.pid), "the guest is dead")
            self.expect(not any(self.world.holders().values()), "every lease released")
            host.new_daemon()
            self.refused(
                lambda: host.daemon.call("attach", uuid=g.uuid, name=g.name),
                "ATTACH of a stopped guest",
                (lockfsm.LockFSMError,),
            )
            self.src_ok = False
            return
        self.expect(g.supervised() and living(g.pid), "supervisor and guest live on")
        self.unchanged(self.before, "after the daemon died", "S4")
        host.new_daemon()
        info = host.daemon.call("attach", uuid=g.uuid, name=g.name)
        want = self.state_of(g)
        if info["state"] != want or info["guest"] != g.pid:
            self.violations.append(f"S4: ATTACH found {info}, not {want} with guest {g.pid}")
        if sorted(info["disks"]) != sorted(g.disks + g.shared):
            self.violations.append(f"S4: ATTACH found disks {info['disks']}")
        self.unchanged(self.before, "after ATTACH", "S4")
        if self.at == "waiting" and self.side == "target":
            self.pending = host.daemon.submit("call", uuid=g.uuid, fn="complete_migrate_in")

    def fault_daemon_stopped(self) -> None:
        g = self.subject
        host = g.host
        host.daemon.signal(signal.SIGSTOP)
        try:
            probe = host.daemon.submit("ping")
            time.sleep(HOLD)
            self.expect(not probe.done(), "a stopped daemon does not answer")
            if self.at == "shutdown":
                self.expect(
                    wait_for(lambda: not g.supervised(), GRACE + 5),
                    "the supervisor stops the guest by itself",
                )
                self.expect(not any(self.world.holders().values()), "every lease released")
            elif self.at == "waiting" and self.side == "target":
                self.complete_source()
                self.expect(
                    wait_for(lambda: self.holds_all(g), 5),
                    "the target's supervisor takes every lease while its daemon is stopped",
                )
            else:
                self.unchanged(self.before, "while the daemon is stopped", "S4")
                self.rival_refused("while the daemon is stopped")
        finally:
            host.daemon.signal(signal.SIGCONT)
        self.expect(probe.result(10) == host.daemon.pid, "the daemon answers after SIGCONT")
        if self.at == "shutdown":
            self.expect(self.settle(self.pending) == "stopped", "the pending shutdown returns")
            self.pending = None
        elif self.at == "waiting" and self.side == "target":
            self.expect(self.settle(self.pending) == "started", "the pending completion returns")
            self.pending = None
            self.mark_done()

    def fault_crash(self) -> None:
        """kill -9 of the host's sanlock daemon (a fresh one, with a host_id of its own)."""
        g = self.subject
        host = g.host
        host.slot.proc.kill()
        host.slot.proc.wait(10)
        self.crashed = host
        self.exempt.append(g)
        self.lose_subject()
        time.sleep(0.5)
        self.expect(g.supervised() and living(g.pid), "no watchdog: supervisor and guest live")
        if self.side == "source":
            keys = {k for k, m, _ in g.leases() if m == "exclusive"}
            held = self.world.holders(keys)
            self.expect(
                all(any(h.mode == "on disk" for h in held.get(k, ())) for k in keys),
                f"the crashed host owns its leases on disk: {held}",
            )
            self.rival_refused("after the host crash")
            if self.at in ("started", "hot-plugged"):
                self.refused(
                    lambda: self.call(host, "acquire_resource", self.disks[2] + ".new"),
                    "hot-plug with the daemon dead",
                    (lockfsm.LockFSMError,),
                )
        if self.at == "waiting":  # the take-over cannot succeed, whichever side crashed
            self.expect_raises(
                self.pending, lockfsm.LockFSMError, "the take-over past a crash", timeout=30
            )
            self.pending = None

    def fault_stall(self) -> None:
        """SIGSTOP of the sanlock daemon or of the lease agent, for HOLD seconds."""
        g = self.subject
        host = g.host
        if isinstance(self.env, SanlockEnv):
            pid = host.slot.proc.pid
            self.env.stopped.add(host.slot.host_id)
        else:
            pid = host.slot.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(HOLD)
            if self.at != "shutdown":
                if g.role != "incoming":
                    self.expect(g.executing(), "the guest keeps running")
                self.rival_refused("while the lock service stalls")
        finally:
            os.kill(pid, signal.SIGCONT)
            if isinstance(self.env, SanlockEnv):
                self.env.stopped.discard(host.slot.host_id)
        if self.at != "shutdown":
            self.unchanged(self.before, "after the stall", "S2")

    def fault_failover(self) -> None:
        """kill -9 or SIGSTOP of the etcd member the host's agent uses."""
        g = self.subject
        assert isinstance(self.env, EtcdEnv)
        member = self.env.member_of(g.host)
        if self.row.sig == "SIGKILL":
            member.kill()
        else:
            member.signal(signal.SIGSTOP)
        try:
            time.sleep(2 * HOLD)
            if self.at != "shutdown":
                if g.role != "incoming":
                    self.expect(g.executing(), "the guest keeps running (not fenced)")
                self.unchanged(self.before, "with a member down", "S2")
        finally:
            self.env.revive()

    def fault_fenced(self) -> None:
        """kill -9 of the host's etcd lease agent (restarted afterwards)."""
        g = self.subject
        agent = g.host.slot
        agent.kill()
        self.fenced = g.host
        self.lose_subject()
        try:
            if self.side == "source":
                self.expect(wait_for(lambda: not living(g.pid), 2), "the guest is stopped at once")
                self.expect(wait_for(lambda: not g.supervised(), 3), "the supervisor exits")
                if self.at == "shutdown":
                    self.expect(self.settle(self.pending) == "stopped", "the pending shutdown")
                    self.pending = None
                    return
                self.rival_refused("before the host's lease expired")
                if self.at not in ("incoming", "waiting"):
                    state = self.call(g.host, "check")["state"]
                    self.expect(state == "failed", f"check() says failed, not {state}")
            if self.at == "waiting":
                self.expect_raises(self.pending, lockfsm.LockFSMError, "the take-over", 30)
                self.pending = None
        finally:
            agent.start()

    # -- helpers for the migration --------------------------------------------------------------

    def pending_host(self) -> SimHost | None:
        return self.B if self.at == "waiting" else self.A

    def waits(self) -> bool:
        return self.pending is not None and not self.pending.done()

    def state_of(self, g: GuestRec) -> str:
        """The manager state the subject's guest is in before the fault."""
        if g.role == "incoming":
            return "migrating_in"
        return "migrating_out" if self.at in ("prepared", "incoming", "waiting") else "started"

    def launch_of(self, g: GuestRec) -> str:
        launch = rundir.pointed(g.host.run_dir, g.uuid)
        assert launch is not None
        return launch

    def held_by(
        self,
        g: GuestRec | None,
        modes: tuple[str, ...] = ("exclusive", "shared", "gate", "reserved"),
    ) -> list[Any]:
        """What the lock service says ``g``'s supervisor holds (in ``modes``)."""
        if g is None:
            return []
        holders = self.world.holders()
        return [h for hs in holders.values() for h in hs if h.pid == g.sup and h.mode in modes]

    def holds_all(self, g: GuestRec) -> bool:
        holders = self.world.holders()
        return all(
            any(h.pid == g.sup and h.mode == mode for h in holders.get(k, ()))
            for k, mode, _ in g.leases()
        )

    def complete_source(self) -> None:
        """The source completes: its guest is killed, then its leases released."""
        assert self.src is not None
        self.call(self.A, "complete_migrate_in")
        self.source_completed = True
        self.expect(not living(self.src.pid), "the source's guest is dead after its completion")
        self.check("after the source's completion")

    def mark_done(self) -> None:
        assert self.src is not None and self.tgt is not None
        tgt = self.tgt
        self.done = True
        tgt.role = "running"
        self.expect(wait_for(tgt.executing, 3), "the target's guest runs after cont")
        self.violations += self.world.check_migration(
            "after both completions", self.src, tgt, "done"
        )
        self.check("after both completions")

    def settle(self, fut: Future[Any] | None, timeout: float = 60) -> str:
        assert fut is not None
        try:
            return str(fut.result(timeout)["state"])
        except FutureTimeout:
            return "still pending"
        except Exception as e:
            return f"{type(e).__name__}: {e}"

    def expect_raises(
        self,
        fut: Future[Any] | None,
        error: type[BaseException] | tuple[type[BaseException], ...],
        what: str,
        timeout: float = 30,
    ) -> None:
        assert fut is not None
        try:
            value = fut.result(timeout)
        except error:
            return
        except FutureTimeout:
            self.violations.append(f"end state: {what} never ended")
            return
        except Exception as e:
            self.violations.append(f"end state: {what} raised {type(e).__name__}: {e}")
            return
        self.violations.append(f"end state: {what} returned {value}, it should have failed")

    # -- the end --------------------------------------------------------------------------------

    def finish(self) -> None:
        """Drive the guest to its end from wherever the fault left it."""
        src = self.src
        assert src is not None
        if self.at == "shutdown":
            if self.pending is not None:
                self.expect(self.settle(self.pending) == "stopped", "the shutdown completes")
                self.pending = None
            return
        if self.at == "hot-plugged" and self.src_ok:
            hot = self.disks[2]
            src.remove_disk(hot)
            self.call(self.A, "release_resource", hot)
            key = lease_key(self.env.backend, "disk", hot)
            self.expect(not self.world.holders({key}).get(key), "the unplugged disk is free")
        if self.at == "prepared" and self.src_ok:
            assert self.B is not None and self.cookie is not None
            self.tgt = self.world.incoming(self.B, src, self.cookie)
            self.check("target incoming")
        if self.tgt is not None and not self.done:
            if self.src_ok and self.tgt_ok:
                self.migrate()
            else:
                self.cancel()
        for g in (self.tgt, src):
            if g is not None:
                self.shutdown(g)

    def migrate(self) -> None:
        assert self.src is not None and self.tgt is not None and self.B is not None
        if self.pending is None:
            self.pending = self.B.daemon.submit(
                "call", uuid=self.src.uuid, fn="complete_migrate_in"
            )
            time.sleep(0.05)
        if not self.source_completed:
            self.complete_source()
        self.expect(self.settle(self.pending) == "started", "the target's completion")
        self.pending = None
        self.mark_done()

    def cancel(self) -> None:
        """Both sides cancel: the target's incoming guest dies, the source (if its guest
        lives) goes back to started holding everything (S3)."""
        assert self.src is not None and self.tgt is not None and self.B is not None
        if self.pending is not None:  # a take-over still pending: it must end first
            self.settle(self.pending)
            self.pending = None
        try:
            self.call(self.B, "complete_migrate_in", True)
        except lockfsm.LockFSMError as e:
            self.violations.append(f"end state: the target's cancel raised {e!r}")
        if self.src_ok or self.crashed is self.A:
            try:
                self.call(self.A, "complete_migrate_in", True)
            except lockfsm.LockFSMError as e:
                self.violations.append(f"end state: the source's cancel raised {e!r}")
        tgt = self.tgt
        self.expect(wait_for(lambda: not living(tgt.pid), 3), "the target's guest is dead")
        self.cancelled = True
        if self.src_ok:
            self.violations += self.world.check_migration(
                "after the cancel", self.src, tgt, "cancelled"
            )
        self.check("after the cancel")

    def shutdown(self, g: GuestRec) -> None:
        try:
            state = g.host.daemon.call("call", uuid=g.uuid, fn="shutdown")["state"]
            self.expect(state == "stopped", f"shutdown() of {g.name} on {g.host.name}: {state}")
        except lockfsm.LockFSMError as e:
            self.violations.append(f"end state: shutdown() on {g.host.name} raised {e!r}")
        self.expect(wait_for(lambda: not living(g.pid), 3), f"{g!r} is dead after shutdown")

    def end(self) -> None:
        """Every guest dead, no lease held -- or the documented exceptions."""
        self.check("at the end")
        for g in self.world.guests:
            self.expect(not living(g.pid), f"{g!r} is dead at the end")
        if self.crashed is not None and self.side == "source":
            keys = {k for k, _, _ in self.subject.leases()}  # shared ones too
            held = self.world.holders(keys)
            self.expect(
                all(any(h.mode == "on disk" for h in held.get(k, ())) for k in keys),
                f"the crashed host's leases stay on disk until sanlock's bound: {held}",
            )
            self.rival_refused("after the crashed host's guest was shut down")
            others = set(self.world.keys()) - keys
            left = {k: v for k, v in self.world.holders(others).items() if v}
            self.expect(not left, f"no other lease is held: {left}")
            return
        wait = EtcdEnv.TTL + 3 if self.fenced is not None else 3
        self.expect(
            wait_for(lambda: not any(self.world.holders().values()), wait, 0.1),
            f"no lease is held at the end: {self.world.holders()}",
        )

    def close(self) -> None:
        self.world.close()


def outcome(violations: list[str]) -> str:
    if not violations:
        return "ok"
    return "VIOLATION: " + "; ".join(violations)[:600]


@pytest.mark.parametrize("row", params())
def test_fault(row: Row, matrix: Matrix, environments: dict[str, Env]) -> None:
    started = time.monotonic()
    if row.kind == "n/a":
        matrix.record(row, "n/a", 0.0)
        pytest.skip(row.expected)
    try:
        env = env_for(environments, row.backend)
    except pytest.skip.Exception:
        matrix.record(row, "skipped: backend missing", 0.0)
        raise
    run = FaultRun(env, row)
    try:
        run.run()
    except Exception as e:
        run.violations.append(f"error: {type(e).__name__}: {e}")
        raise
    finally:
        run.close()
        text = outcome(run.violations)
        if row.id in KNOWN_BUGS and run.violations:
            text = "xfail (known bug): " + text
        matrix.record(row, text, time.monotonic() - started)
    assert not run.violations, "\n".join(run.violations)


# -- a row of its own: the daemon dies during a migration to the host that runs the source ---

# Found by this row: a migration target on the host that runs the source took dom-<uuid> from
# the running source (S4).  Supervisor._point now leaves it to a live supervisor of another launch
# until the target takes over.


@pytest.mark.parametrize("backend", BACKENDS)
def test_daemon_killed_in_a_migration_to_the_same_host(
    backend: str, matrix: Matrix, environments: dict[str, Env]
) -> None:
    """kill -9 of a host's daemon while it migrates a guest to the same host (the target's
    side run by a second daemon process on the same run dir): the new daemon's ATTACH must find
    the running source (S4), and still find it after the target is cancelled."""
    step = "target incoming on the source's own host"
    row = Row(
        backend,
        "daemon",
        "SIGKILL",
        step,
        "kill -9 daemon: guest and leases stay; a new daemon ATTACHes to the running source: "
        "migrating_out, same guest and leases (S4); after the target's cancel, still",
    )
    started = time.monotonic()
    env = env_for(environments, backend)
    world = World(env)
    violations: list[str] = []
    try:
        host = world.host("A", env.slot(0))
        disks = world.disks("x.img", "s.img")
        src = world.start(host, "vm", disks[:1], disks[1:])
        source_daemon = host.daemon
        prepared = source_daemon.call(
            "call", uuid=src.uuid, fn="prepare_migrate", args=("qemu+tcp://A/system",)
        )
        target_daemon = host.new_daemon()
        tgt = world.incoming(host, src, prepared["result"])
        source_daemon.kill()
        target_daemon.kill()
        host.new_daemon()
        info = host.daemon.call("attach", uuid=src.uuid, name=src.name)
        if (info["state"], info["guest"]) != ("migrating_out", src.pid):
            violations.append(
                f"S4: ATTACH found {info['state']} with guest {info['guest']}, not the running "
                f"source's guest {src.pid}"
            )
        if info["state"] == "migrating_in":  # the daemon cancels the target it found
            host.daemon.call("call", uuid=src.uuid, fn="complete_migrate_in", args=(True,))
            wait_for(lambda: not living(tgt.pid), 3)
            host.new_daemon()
            try:
                info = host.daemon.call("attach", uuid=src.uuid, name=src.name)
            except lockfsm.LockFSMError as e:
                holders = world.holders()
                holds = all(
                    any(h.pid == src.sup and h.mode == mode for h in holders.get(k, ()))
                    for k, mode, _ in src.leases()
                )
                violations.append(
                    f"S4: after the target's cancel ATTACH finds nothing ({e}) while the source "
                    f"guest executes ({src.executing()}) holding every lease ({holds})"
                )
        violations += world.check("after ATTACH")
    finally:
        world.close()
        text = outcome(violations)
        matrix.record(row, ("xfail (known bug): " if violations else "") + text, 0.0)
        matrix.rows[row] = (matrix.rows[row][0], time.monotonic() - started)
    assert not violations, "\n".join(violations)


# -- the matrix bites: with lockfsm deliberately broken, rows report the violation ------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: breakage (tests/fault_breakage/sitecustomize.py) -> (a row, the laws it must report)
BITES = {
    "no-pdeathsig": ("fcntl-supervisor-SIGKILL-started", ("S2",)),
    "attach-forgets-hotplug": ("fcntl-daemon-SIGKILL-hot-plugged", ("S4",)),
    "timeout-kills-supervisor": ("fcntl-supervisor-SIGSTOP-started", ("S5", "S1")),
    "take-over-without-leases": ("fcntl-guest-SIGSTOP-target-waiting", ("S3", "S1", "S2")),
}


@pytest.mark.slow
@pytest.mark.parametrize("breakage", sorted(BITES))
def test_the_matrix_bites(breakage: str, tmp_path: Any) -> None:
    """Every check can fail: each breakage (applied in the test runner, the daemons and the
    supervisors, lockfsm's files untouched) makes its row report the violation it is caught
    by."""
    import subprocess
    import sys

    row, laws = BITES[breakage]
    env = {
        **os.environ,
        "LOCKFSM_BREAK": breakage,
        "LOCKFSM_SLOW": "1",
        "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests", "fault_breakage"), ROOT]),
        "LOCKFSM_FAULT_MATRIX": str(tmp_path / "matrix.txt"),
    }
    check = [sys.executable, "-c", "import sitecustomize; print(sitecustomize.APPLIED)"]
    applied = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
    assert applied.stdout.strip() == breakage, f"breakage not in force: {applied}"
    node = f"tests/test_faults.py::test_fault[{row}]"
    command = [sys.executable, "-m", "pytest", node, "-q", "-p", "no:cacheprovider"]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, f"{breakage}: the row did not fail:\n{out.stdout[-3000:]}"
    matrix = (tmp_path / "matrix.txt").read_text()
    reported = [line for line in matrix.splitlines() if "VIOLATION" in line]
    assert reported, f"{breakage}: no violation in the matrix:\n{matrix}"
    caught = [law for law in laws if f"{law} " in reported[0] or f"{law}:" in reported[0]]
    print(f"\n{breakage}: {row} reports {caught}: {reported[0][:300]}")
    assert caught, f"{breakage}: caught, but not by {laws}: {reported[0]}"
