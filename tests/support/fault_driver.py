"""The fault matrix's driver: one row run against a world of the row's backend (the guest
driven to the row's step, the fault, what it is documented to do checked, the recovery, the
end), the matrix of outcomes printed at the end of the session, and the backends'
environments (one per session each).  The rows are tests/support/fault_rows.py, their
documented outcomes tests/support/fault_outcomes.py."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import lockfsm
from lockfsm.fuzz.procs import living
from lockfsm.protocol import rundir, wire
from lockfsm.protocol.kernel import process_state
from tests.support.fault_daemon import DaemonGone
from tests.support.fault_rows import Row, all_rows
from tests.support.fault_world import (
    GRACE,
    HANDOFF,
    HOLD,
    Env,
    EtcdEnv,
    GuestRec,
    SanlockEnv,
    SimHost,
    World,
    lease_key,
    make_env,
    wait_for,
)
from tests.support.needs import require, require_sanlock

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


# -- the backends' environments (one per session each) -----------------------------------------


def _available(backend: str) -> None:
    if backend == "sanlock":
        require_sanlock()
    elif backend == "etcd":
        require("etcd")


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
        self.side = row.side  # the faulted side
        self.at = row.at
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
                self.check_refused_after_the_kill(g)
            return
        if self.at == "waiting":  # the target takes the dead source's leases (L1)
            ended = self.settle(self.pending)
            self.expect(ended == "started", f"the target's completion: {ended}")
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
            self.check_refused_after_the_kill(g)

    def check_refused_after_the_kill(self, g: GuestRec) -> None:
        """S5: check() of a killed guest raises BackendError and changes nothing."""
        self.refused(
            lambda: self.call(g.host, "check"), "check() after the kill", (lockfsm.BackendError,)
        )

    def fault_paused(self) -> None:
        g = self.subject
        os.kill(g.pid, signal.SIGSTOP)
        time.sleep(HOLD)
        self.expect(process_state(g.pid) == "T", f"the guest is stopped ({process_state(g.pid)})")
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
        if not self.pending_returns("after the supervisor's SIGCONT"):
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
        self.pending_returns("after the daemon's SIGCONT")

    def pending_returns(self, when: str) -> bool:
        """A call left pending by a stopped process returns once it runs again: a shutdown
        as stopped, a target's take-over as started (the migration is then done).  True if
        there was one."""
        if self.at == "shutdown":
            self.expect(self.settle(self.pending) == "stopped", f"shutdown completes {when}")
        elif self.at == "waiting" and self.side == "target":
            self.expect(self.settle(self.pending) == "started", f"the take-over completes {when}")
            self.pending = None
            self.mark_done()
            return True
        else:
            return False
        self.pending = None
        return True

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
        """kill -9 of the host's etcd lease agent, restarted only after its guests fenced."""
        g = self.subject
        agent = g.host.slot
        agent.kill()
        self.fenced = g.host
        self.lose_subject()
        try:
            if self.side == "source":
                self.expect(
                    wait_for(lambda: not living(g.pid), EtcdEnv.TTL),
                    "the guest is stopped by its deadline",
                )
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

    def fault_agent_restarted(self) -> None:
        """The host's lease agent killed (-9) or stopped (SIGTERM, a service restart) and a new
        one started at once: it resumes the lease, the supervisors reconnect; nothing changes."""
        g = self.subject
        agent = g.host.slot
        if self.row.sig.startswith("SIGKILL"):
            agent.kill()
        else:
            agent.stop()
            self.expect(agent.proc.returncode == 0, "the agent exits 0 on SIGTERM")
        agent.start()
        if self.at != "shutdown":
            if g.role != "incoming":
                self.expect(g.executing(), "the guest keeps running (not fenced)")
            self.rival_refused("after the agent's restart")
            self.unchanged(self.before, "after the agent's restart", "S2")

    def fault_hangup(self) -> None:
        """SIGHUP to the host's lease agent (``systemctl reload``): ignored."""
        g = self.subject
        agent = g.host.slot
        agent.signal(signal.SIGHUP)
        time.sleep(0.3)
        self.expect(agent.proc.poll() is None, "the agent lives on after SIGHUP")
        if self.at != "shutdown":
            if g.role != "incoming":
                self.expect(g.executing(), "the guest keeps running")
            self.unchanged(self.before, "after SIGHUP", "S2")

    def fault_supervisor_fenced(self) -> None:
        """The subject's supervisor SIGSTOPped until its lease's deadline has passed: the agent
        stops the guest (poweroff) and lets its keys go; on SIGCONT the supervisor exits 76."""
        g = self.subject
        assert isinstance(self.env, EtcdEnv)
        os.kill(g.sup, signal.SIGSTOP)
        self.lose_subject()
        try:
            stopped = time.monotonic()
            self.expect(
                wait_for(lambda: not living(g.pid), self.env.TTL),
                "the agent stops the stalled supervisor's guest before the deadline",
            )
            gone = wait_for(lambda: not self.held_by(g), 3)
            self.expect(gone, f"its keys go once its guest is dead: {self.held_by(g)}")
            self.check(f"{time.monotonic() - stopped:.1f} s after the stop")
        finally:
            os.kill(g.sup, signal.SIGCONT)
        self.expect(wait_for(lambda: not g.supervised(), 5), "the supervisor exits after SIGCONT")
        if self.at == "shutdown":
            ended = self.settle(self.pending, 10)
            self.expect(ended != "still pending", f"the pending shutdown returns: {ended}")
            self.pending = None
        elif self.at == "waiting":
            # The agent let the dead source's keys go: handed off to the waiting target's
            # reservations, which may take them over before its handoff_timeout (L1: the
            # source's guest was dead first), or time out; either way nobody else has them.
            ended = self.settle(self.pending, HANDOFF + 5)
            self.pending = None
            if ended == "started":
                self.source_completed = True
                self.mark_done()
            else:
                self.expect("LeaseConflict" in ended, f"the take-over ends: {ended}")

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
        ended = self.settle(self.pending)
        self.expect(ended == "started", f"the target's completion: {ended}")
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
