"""``lockfsm-supervisor``: the per-guest process that holds the guest's leases.

Run by the daemon as ``[supervisor_path, *supervisor_args, "--", *guest_argv]``.  It takes every
lease, then starts the guest as its child with ``PR_SET_PDEATHSIG`` (so the guest dies with it),
holds the leases until the guest exits, releases them and exits with the guest's status.  If a
lease cannot be had it starts no guest, records why, and exits with :data:`EXIT_REFUSED`.

Every decision is a move of ``specs/supervisor.toml`` (with the migration and lock-failure rows
joined in), made by the light interpreter in lockfsm/protocol/engine.py; its exit status is the
final state's ``exit`` attribute.  The parts, one job each:

* :class:`~lockfsm.supervisor.leases.LeaseSet`: the lease machines and the backend holder;
* :class:`~lockfsm.supervisor.guest.GuestProcess`: fork with PR_SET_PDEATHSIG, signal, reap;
* :class:`~lockfsm.supervisor.server.ControlServer`: the control socket;
* :class:`Supervisor` (here): the machine's guards and actions, the requests, the loop.

This process runs once per guest, so it imports neither ``transitions`` nor ``attrs`` nor
``hashlib`` (the daemon names the leases), nor anything of the daemon side.  One thread: a
selector over the control socket, its connections, a signal wake-up pipe, the guest's pidfd and
the backend's event fds.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any, NoReturn

from lockfsm.errors import BackendError, InvalidArgument, LeaseConflict, LeaseLost, LockFSMError
from lockfsm.protocol import rundir, tables, trace, wire
from lockfsm.protocol.engine import Instance, check_model
from lockfsm.protocol.launch import USAGE, LaunchSpec
from lockfsm.supervisor.guest import GuestProcess
from lockfsm.supervisor.leases import LeaseSet
from lockfsm.supervisor.server import ControlServer

EXIT_USAGE = 2


def _status_of(state: str) -> int:
    code = tables.SUPERVISOR_EXIT[state]
    assert isinstance(code, int), f"state {state} exits with the guest's status"
    return code


EXIT_REFUSED = _status_of("refused")  # 75, EX_TEMPFAIL: held elsewhere, no guest started
EXIT_LEASE_LOST = _status_of("lost")  # 76: a lease was lost, the policy was applied
DEFAULT_GRACE = 10.0
HELP = f"""{USAGE}

The per-guest supervisor: the daemon runs [supervisor_path, *supervisor_args, "--", *guest]
(LockManager.supervisor_path and supervisor_args); it takes every lease, runs the guest, and
holds the leases until the guest exits.  `lockfsm-supervisor --lease-lost SOCKET [WHY]` tells a
supervisor its leases are lost (a lock service's kill path).

Exit status: 0 handed off (migrated away) or cancelled; the guest's own status once it exited
(128 + N if a signal N killed it); 75 a lease is held elsewhere, no guest was started; 76 a lease
was lost and the lock-failure policy applied; 2 a bad command line."""
# First and longest pause between take-over attempts (a probe is a cheap query per lease).
RETRY_PAUSE = (0.0005, 0.002)
NOTIFIED_FALLBACK = 0.25  # seconds between attempts when the backend tells of changes


class TakeOver:
    """A pending take-over: who asked (the connection to answer, its generation), until when,
    and when the next attempt is due."""

    __slots__ = ("conn", "deadline", "gen", "next_at", "pause")

    def __init__(self, conn: socket.socket, gen: int, timeout: float) -> None:
        now = time.monotonic()
        self.conn, self.gen = conn, gen
        self.deadline = now + timeout
        self.pause = RETRY_PAUSE[0]
        self.next_at = min(now + self.pause, self.deadline)

    def later(self, told: bool = False) -> None:
        """Schedule the next attempt: backing off up to RETRY_PAUSE's longest, or after
        NOTIFIED_FALLBACK when the backend tells of changes (the timer is only a fallback then:
        no polling)."""
        self.pause = NOTIFIED_FALLBACK if told else min(self.pause * 2, RETRY_PAUSE[1])
        self.next_at = min(time.monotonic() + self.pause, self.deadline)


class Supervisor:
    """The supervisor's machine and loop."""

    def __init__(self, spec: LaunchSpec, guest_argv: list[str]) -> None:
        self.spec = spec
        self.guest_argv = guest_argv
        self.config = spec.config
        self.run_dir: str = self.config["run_dir"]
        trace.origin = self.run_dir  # what the backend records is this host's
        self.launch = spec.launch
        self.policy = spec.policy()
        self.leases = LeaseSet(spec.driver, self.config, spec.launch)
        self.guest: GuestProcess | None = None
        self.gen = 1
        self.error: dict[str, Any] | None = None
        self.failure: dict[str, Any] | None = None
        self.migration: dict[str, Any] | None = spec.migration
        self.kill_at: float | None = None
        self.take_over: TakeOver | None = None
        self.waiters: list[socket.socket] = []
        self.sm = Instance(tables.SUPERVISOR, self)
        self.sel = selectors.DefaultSelector()
        self.watched: set[int] = set()  # the backend's event fds in the selector
        self.signalled = False
        self.server: ControlServer | None = None

    # -- guards ---------------------------------------------------------------------------------

    def _guard_start_launch(self, args: Mapping[str, Any]) -> str | None:
        return None if self.spec.mode == "start" else f"the launch is {self.spec.mode}"

    def _guard_incoming_launch(self, args: Mapping[str, Any]) -> str | None:
        return None if self.spec.mode == "incoming" else f"the launch is {self.spec.mode}"

    def _guard_current_controller(self, args: Mapping[str, Any]) -> str | None:
        if args.get("gen") == self.gen:
            return None
        return (
            f"this controller (generation {args.get('gen')}) was superseded by a later attach "
            f"(generation {self.gen}): it may no longer drive the supervisor of {self.spec.name!r}"
        )

    def _guard_no_take_over_pending(self, args: Mapping[str, Any]) -> str | None:
        if args.get("retry") or self.take_over is None:
            return None
        return "a take-over is already under way"

    def _guard_policy_poweroff(self, args: Mapping[str, Any]) -> str | None:
        return None if self.policy == "poweroff" else f"the policy is {self.policy}"

    def _guard_policy_pause(self, args: Mapping[str, Any]) -> str | None:
        return None if self.policy == "pause" else f"the policy is {self.policy}"

    def _guard_policy_ignore(self, args: Mapping[str, Any]) -> str | None:
        return None if self.policy == "ignore" else f"the policy is {self.policy}"

    def _explain(self, state: str, event: str) -> str:
        """The message of a state's refusal (a supervisor that lost its leases: LeaseLost)."""
        return wire.lost_message(self.info())

    # -- actions --------------------------------------------------------------------------------

    def _do_acquire_leases(self, args: Mapping[str, Any]) -> None:
        self.leases.take(self.spec.resources)

    def _do_reserve_leases(self, args: Mapping[str, Any]) -> None:
        self.leases.take(self.spec.resources, "reserve")

    def _do_take_over_leases(self, args: Mapping[str, Any]) -> None:
        self.leases.take_over_all()

    def _do_report_refusal(self, args: Mapping[str, Any]) -> None:
        self.error = wire.error_reply(args["error"])
        self._record()

    def _do_spawn_guest(self, args: Mapping[str, Any]) -> None:
        self.guest = GuestProcess.spawn(self.guest_argv, self.leases.holder.inheritable_fds())

    def _do_acquire_lease(self, args: Mapping[str, Any]) -> None:
        res = args["resource"]
        if (res["type"], res["canonical"]) in self.leases.resources:
            raise InvalidArgument(f"{res['type']} {res['path']} is already held by this guest")
        self.leases.take([res])

    def _do_release_lease(self, args: Mapping[str, Any]) -> None:
        self.leases.give_resource(args["resource"])

    def _do_new_controller(self, args: Mapping[str, Any]) -> None:
        self.gen += 1
        # A take-over the superseded controller asked for ends now: its daemon is gone (or no
        # longer drives this guest), and the new one decides whether to complete.
        self._end_take_over(
            wire.error_reply(
                BackendError(
                    f"the take-over was superseded by a later attach (generation {self.gen})"
                )
            )
        )

    def _do_record_migration(self, args: Mapping[str, Any]) -> None:
        self.migration = {"id": args["migration"], "hosturi": args["hosturi"]}
        self.leases.with_handoff_data()  # what the target needs for an atomic handoff
        self.leases.holder.expect_handoff(True)  # the handoff may come at any moment now

    def _do_forget_migration(self, args: Mapping[str, Any]) -> None:
        self.migration = None
        self.leases.holder.expect_handoff(False)

    def _do_signal_guest(self, args: Mapping[str, Any]) -> None:
        assert self.guest is not None
        self.guest.signal(signal.SIGTERM)
        self.kill_at = time.monotonic() + float(args.get("grace", DEFAULT_GRACE))

    def _do_kill_guest(self, args: Mapping[str, Any]) -> None:
        assert self.guest is not None
        self.kill_at = None
        self.guest.kill()
        self.leases.holder.expect_release()  # every lease goes once the guest is dead

    def _do_pause_guest(self, args: Mapping[str, Any]) -> None:
        assert self.guest is not None
        self.guest.signal(signal.SIGSTOP)

    def _do_forfeit_leases(self, args: Mapping[str, Any]) -> None:
        self.failure = {"reason": args["reason"], "policy": self.policy, "at": time.time()}
        self.leases.forfeit_all()
        self._end_take_over(wire.error_reply(LeaseLost(wire.lost_message(self.info()))))

    def _do_release_all(self, args: Mapping[str, Any]) -> None:
        self.leases.give_all()

    # -- the machine ----------------------------------------------------------------------------

    def fire(self, event: str, **args: Any) -> None:
        started = time.monotonic()
        source, dest = self.sm.fire(event, **args)
        if trace.on() and source != dest:
            trace.emit(
                "state",
                run_dir=self.run_dir,
                launch=self.launch,
                machine="supervisor",
                event=event,
                source=source,
                dest=dest,
            )
        self._record()
        if self.config.get("supervisor_log") == "moves":
            # The daemon's own move lines (logger lockfsm.core) have the same shape.
            print(
                f"lockfsm-supervisor: move machine=supervisor domain={self.spec.name} "
                f"from={source} event={event} to={dest} "
                f"duration_ms={(time.monotonic() - started) * 1000:.3f}",
                file=sys.stderr,
                flush=True,
            )

    def info(self) -> dict[str, Any]:
        guest = self.guest
        return {
            "v": wire.PROTOCOL,
            "pid": os.getpid(),
            "launch": self.launch,
            "driver": self.spec.driver,
            "uuid": self.spec.uuid,
            "name": self.spec.name,
            "id": self.spec.id,
            "state": self.sm.state,
            "guest_pid": guest.pid if guest else None,
            "gen": self.gen,
            "resources": list(self.leases.resources.values()),
            "mode": self.spec.mode,
            "migration": self.migration,
            "status": guest.status if guest else None,
            "error": self.error,
            "policy": self.policy,
            "failure": self.failure,
            "since": time.time(),
        }

    def _record(self) -> None:
        rundir.write_record(self.run_dir, self.launch, self.info())

    def lose(self, reason: str) -> None:
        """A lease is lost: apply the domain's lock-failure policy now (once)."""
        if self.sm.can("lost", reason=reason):
            self.fire("lost", reason=reason)
            print(f"lockfsm-supervisor: lease lost ({reason}): {self.policy}", file=sys.stderr)

    # -- requests -------------------------------------------------------------------------------

    def _request(self, conn: socket.socket, line: bytes) -> Mapping[str, Any] | None:
        try:
            op, fields = wire.parse_request(line)
            return self._handle(conn, op, fields)
        except LockFSMError as e:
            return wire.error_reply(e)
        except Exception as e:  # no message may kill the supervisor, and with it the guest
            return wire.error_reply(BackendError(f"request refused: {type(e).__name__}: {e}"))

    def _handle(
        self, conn: socket.socket, op: str, fields: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Answer one request (None: answered later).  Reads are not moves; every other op is
        one event of the table (shutdown is ``stop``)."""
        if op in ("hello", "get_child"):
            return {"ok": True, **self.info()}
        if op == "lease_lost":
            self.lose(fields["reason"])
            return {"ok": True, **self.info()}
        if op == "take_over":
            self._try_take_over(TakeOver(conn, fields["gen"], fields["timeout"]), first=True)
            return None
        self.fire("stop" if op == "shutdown" else op, **fields)
        if op in ("hand_off", "cancel", "shutdown"):
            self.waiters.append(conn)  # answered when the guest has exited
            return None
        return {"ok": True, **self.info()}

    def _try_take_over(self, pending: TakeOver, first: bool = False) -> None:
        """One attempt of a take-over; answer when all leases are had, an attempt fails for
        good, or time is up; otherwise try again later."""
        try:
            self.fire("take_over", gen=pending.gen, retry=not first)
        except LeaseConflict as e:
            # A backend that tells when a lease changed wakes the next attempt; the timer is
            # only a fallback then.
            if not e.final and self._again(pending, told=self.leases.holder.notifies_changes):
                return
            if not e.final:
                e = LeaseConflict(f"the source did not give up the lease in time: {e}", e.resource)
            self._answer_take_over(pending, wire.error_reply(e))
            return
        except BackendError as e:
            # The lock service did not answer (a lease agent restarting, an etcd election):
            # nothing was taken, so try again until the take-over's time is up.
            if self.sm.can("take_over", gen=pending.gen, retry=True) and self._again(pending):
                print(f"lockfsm-supervisor: take-over: {e}; trying again", file=sys.stderr)
                return
            self._answer_take_over(pending, wire.error_reply(e))
            return
        except LockFSMError as e:
            self._answer_take_over(pending, wire.error_reply(e))
            return
        self._point(take=True)  # this launch runs the guest now: ATTACH must find it
        self._answer_take_over(pending, {"ok": True, **self.info()})

    def _again(self, pending: TakeOver, told: bool = False) -> bool:
        """Schedule the next attempt of ``pending`` unless its time is up; whether it was.
        ``told``: the backend wakes the next attempt when a lease changes (an etcd watch), the
        timer is only a fallback; else the attempts poll, backing off."""
        if time.monotonic() >= pending.deadline:
            return False
        pending.later(told)
        self.take_over = pending
        return True

    def _answer_take_over(self, pending: TakeOver, reply: Mapping[str, Any]) -> None:
        if self.take_over is pending:
            self.take_over = None
        assert self.server is not None
        if self.server.owns(pending.conn):
            self.server.reply(pending.conn, reply)

    def _end_take_over(self, reply: Mapping[str, Any]) -> None:
        if self.take_over is not None:
            self._answer_take_over(self.take_over, reply)

    def _dropped(self, conn: socket.socket) -> None:
        if self.take_over is not None and self.take_over.conn is conn:
            self.take_over = None  # the daemon that asked is gone: take nothing on its behalf
        if conn in self.waiters:
            self.waiters.remove(conn)

    def _point(self, take: bool = False) -> None:
        """Make ``dom-<uuid>`` name this launch, for a restarted daemon's ATTACH -- unless it
        names a live supervisor of another launch (the source of a migration to this same
        host) and this one does not ``take`` it (a target takes it when it takes over)."""
        uuid = self.spec.uuid
        if not uuid:
            return
        other = rundir.pointed(self.run_dir, uuid)
        if other == self.launch:
            return  # it does already (a target on another host than its source)
        if not take and other is not None:
            record = rundir.read_record(self.run_dir, other)
            if record is not None and rundir.supervisor_alive(record, other):
                return
        rundir.point(self.run_dir, uuid, self.launch)

    # -- the main loop --------------------------------------------------------------------------

    def run(self) -> int:
        """Take the leases, run the guest, serve until the guest is gone; the exit status."""
        try:
            os.setsid()  # a signal to the daemon's process group must not reach the guest
        except OSError:
            pass
        path = rundir.socket_path(self.run_dir, self.launch)
        self.server = ControlServer(path, self.sel, self._request, self._dropped)
        self._record()
        try:
            self.leases.holder.watch(self._notify_argv())
            self.fire("begin")
        except LockFSMError as e:
            self.fire("refuse", error=e)
            self.server.close()
            print(f"lockfsm-supervisor: {e}", file=sys.stderr)
            return self._exit_status()
        self.fire("spawn")
        self._point()
        self._loop()
        return self._exit_status()

    def _exit_status(self) -> int:
        code = tables.SUPERVISOR_EXIT[self.sm.state]
        if isinstance(code, int):
            return code
        assert code == "guest" and self.guest is not None and self.guest.status is not None
        return self.guest.status

    def _notify_argv(self) -> list[str]:
        """The command that reports a lease loss to this supervisor (sanlock's kill path)."""
        program = sys.argv[0] if sys.argv else ""
        if os.path.basename(program) == "lockfsm-supervisor" and os.path.isabs(program):
            head = [program]
        else:
            head = [sys.executable, "-m", "lockfsm.supervisor"]
        return [*head, "--lease-lost", rundir.socket_path(self.run_dir, self.launch)]

    def _loop(self) -> None:
        assert self.server is not None and self.guest is not None
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.server.start()
        self.sel.register(wake_r, selectors.EVENT_READ, "wake")
        self.sel.register(self.guest.pidfd, selectors.EVENT_READ, "guest")
        while self.sm.state not in tables.SUPERVISOR.terminal:
            self._watch_holder()
            check = self.leases.holder.next_check() if self.failure is None else None
            pending = self.take_over.next_at if self.take_over else None
            timers = [t for t in (self.kill_at, pending, check, self.server.timer()) if t]
            timeout = max(0.0, min(timers) - time.monotonic()) if timers else None
            for key, _ in self.sel.select(timeout):
                if key.data == "holder":
                    self._poll_holder()
                elif key.data == "accept":
                    self.server.accept()
                elif key.data == "wake":
                    os.read(wake_r, 512)
                    self._on_wake()
                elif key.data == "guest":
                    self._reap()
                else:
                    self.server.readable(key.fileobj)  # type: ignore[arg-type]
            now = time.monotonic()
            if self.kill_at is not None and now >= self.kill_at:
                self.kill_at = None
                if self.sm.can("grace_over"):
                    self.fire("grace_over")
            if check is not None and now >= check:
                self._poll_holder()
            self.server.tick()
            if self.take_over is not None and now >= self.take_over.next_at:
                self._try_take_over(self.take_over)
        self.server.close()

    def _watch_holder(self) -> None:
        """Keep the selector watching exactly the backend's event fds (they may change)."""
        fds = set(self.leases.holder.event_fds())
        for fd in self.watched - fds:
            self.sel.unregister(fd)
        for fd in fds - self.watched:
            self.sel.register(fd, selectors.EVENT_READ, "holder")
        self.watched = fds

    def _poll_holder(self) -> None:
        if self.failure is not None:
            return
        reason = self.leases.holder.poll()
        if reason is not None:
            self.lose(reason)
        elif self.take_over is not None and self.leases.holder.take_over_due():
            self._try_take_over(self.take_over)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signalled = True

    def _on_wake(self) -> None:
        if self.signalled:
            self.signalled = False
            if self.sm.can("terminate"):
                self.fire("terminate", grace=DEFAULT_GRACE)

    def _reap(self) -> None:
        assert self.guest is not None and self.server is not None
        self.sel.unregister(self.guest.pidfd)
        status = self.guest.reap()
        self.kill_at = None
        self.fire("guest_exited", status=status)
        self._end_take_over(wire.error_reply(BackendError(f"the guest exited (status {status})")))
        for conn in list(self.waiters):
            self.server.reply(conn, {"ok": True, "status": status})
        self.waiters.clear()


check_model(tables.SUPERVISOR, Supervisor)
assert (
    tables.SUPERVISOR_EXIT["refused"],
    tables.SUPERVISOR_EXIT["lost"],
) == (EXIT_REFUSED, EXIT_LEASE_LOST), (
    "specs/supervisor.toml changed an exit status: change the constants with it"
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lockfsm-supervisor``."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--lease-lost"]:
        return report_loss(args[1:])
    if args in (["--version"], ["--help"], ["-h"]):
        if args == ["--version"]:
            from importlib.metadata import version

            print(f"lockfsm-supervisor {version('lockfsm')}")
        else:
            print(HELP)
        return 0
    try:
        spec, guest = LaunchSpec.parse_argv(args)
        supervisor = Supervisor(spec, guest)
    except (ValueError, KeyError, TypeError, LockFSMError) as e:
        print(f"lockfsm-supervisor: {e}", file=sys.stderr)
        return EXIT_USAGE
    return supervisor.run()


def entry() -> NoReturn:
    """The ``lockfsm-supervisor`` program: :func:`main`, then exit at once.  A supervisor ends
    right after its guest, often in a handoff whose other half (the target's take-over) runs on
    the same cores: the interpreter's teardown (several ms of CPU) buys nothing here, since
    every file it wrote is closed and every descriptor goes with the process."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def report_loss(args: list[str]) -> int:
    """``lockfsm-supervisor --lease-lost SOCKET [WHY...]``: tell the supervisor at SOCKET that
    its leases are lost (run by the lock service, e.g. as sanlock's kill path)."""
    if not args:
        print("usage: lockfsm-supervisor --lease-lost SOCKET [WHY...]", file=sys.stderr)
        return EXIT_USAGE
    why = " ".join(args[1:]) or "the lock service revoked the leases"
    trace.emit("lost_report", socket=args[0], reason=why[:80])
    try:
        wire.call(args[0], {"op": "lease_lost", "reason": why[:1024]}, 5.0)
    except (OSError, LockFSMError) as e:
        print(f"lockfsm-supervisor --lease-lost: {args[0]}: {e}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "EXIT_LEASE_LOST",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "USAGE",
    "Supervisor",
    "entry",
    "main",
]
