"""``lockfsm-supervisor``: the per-guest process that holds the guest's leases.

Run by the daemon as ``[supervisor_path, *supervisor_args, "--", *guest_argv]``.  It takes every
lease, then starts the guest as its child with ``PR_SET_PDEATHSIG`` (so the guest dies with it),
holds the leases until the guest exits, releases them and exits with the guest's status.  If a
lease cannot be had it starts no guest, records why, and exits with :data:`EXIT_REFUSED`.

Its moves are those of ``specs/supervisor.toml`` (and one ``specs/lease.toml`` machine per lease),
driven by the light interpreter in lockfsm/engine.py: this process runs once per guest, so it
imports neither ``transitions`` nor ``attrs`` nor ``hashlib`` (the daemon names the leases).

One thread: a selector over the control socket, its connections, a signal wake-up pipe and the
guest's pidfd.  The guest is forked from this main thread, since PR_SET_PDEATHSIG fires when the
parent *thread* exits.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from lockfsm.backends import make_holder
from lockfsm.errors import BackendError, InvalidArgument, LeaseConflict, LeaseLost, LockFSMError
from lockfsm.protocol import rundir, tables, wire
from lockfsm.protocol.engine import Instance

EXIT_USAGE = 2
EXIT_REFUSED = 75  # EX_TEMPFAIL: a lease was held elsewhere, no guest was started
EXIT_LEASE_LOST = 76  # a lease was lost: the lock-failure policy was applied, the guest is gone
PR_SET_PDEATHSIG = 1
DEFAULT_GRACE = 10.0
MAX_CONNECTIONS = 256  # open control connections at once; more wait in the listen backlog
REPLY_TIMEOUT = 0.5  # a peer that does not take its reply for this long is dropped (a daemon
# reads its reply at once, and the kernel buffers ~200 KB of replies before a send blocks)


def parse_argv(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """``--launch <json> -- guest...`` (other ``--key value`` pairs before ``--`` are for ``ps``
    readers only and are ignored).  Raises ValueError."""
    if "--" not in argv:
        raise ValueError("usage: lockfsm-supervisor --launch JSON [--name N --uuid U] -- GUEST...")
    cut = argv.index("--")
    opts, guest = argv[:cut], argv[cut + 1 :]
    if not guest:
        raise ValueError("no guest command after '--'")
    if len(opts) % 2 or "--launch" not in opts[::2]:
        raise ValueError("options must be '--key value' pairs and include --launch")
    spec = json.loads(opts[opts.index("--launch") + 1])
    if not isinstance(spec, dict) or spec.get("v") != wire.PROTOCOL:
        raise ValueError("--launch is not a launch of this lockfsm version")
    if not wire.LAUNCH.fullmatch(str(spec.get("launch"))):
        raise ValueError(f"launch id {spec.get('launch')!r} is malformed")
    for res in spec.get("resources", []):
        wire.check_resource(res)
    return spec, guest


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def _in_order(
    resources: Iterable[Mapping[str, Any]], exclusive_first: bool
) -> list[tuple[dict[str, Any], Mapping[str, Any]]]:
    """(lease, resource) for every lease of ``resources``, in the fixed order they are taken:
    by key, exclusive leases first if asked."""
    return sorted(
        ((lease, res) for res in resources for lease in res["leases"]),
        key=lambda x: (exclusive_first and x[0]["mode"] != "exclusive", x[0]["key"]),
    )


def _label(res: Mapping[str, Any]) -> str:
    """How errors name a resource: "disk /path", "lease ls:key", or the guest's own lease."""
    if res["type"] == "lease" and res["path"].startswith("lockfsm-domains:"):
        return f"the own lease of guest {res['path'].split(':', 1)[1]}"
    return f"{res['type']} {res['path']}"


def _ident(res: Mapping[str, Any]) -> tuple[str, str]:
    return (res["type"], res["canonical"])


class Supervisor:
    def __init__(self, spec: dict[str, Any], guest: list[str]) -> None:
        self.spec = spec
        self.guest_argv = guest
        self.config = spec["config"]
        self.run_dir: str = self.config["run_dir"]
        self.launch: str = spec["launch"]
        self.holder = make_holder(spec["driver"], self.config)
        self.resources: dict[tuple[str, str], dict[str, Any]] = {}
        self.leases: dict[str, Instance] = {}
        self.gen = 1
        self.guest_pid: int | None = None
        self.status: int | None = None
        self.error: dict[str, Any] | None = None
        self.sm = Instance(tables.SUPERVISOR, self._guard, self._act)
        self.mode: str = spec.get("mode", "start")
        if self.mode not in ("start", "incoming"):
            raise ValueError(f"launch mode {self.mode!r} is unknown")
        self.migration: dict[str, Any] | None = spec.get("migration")
        self.policy: str = spec.get("lock_failure") or self.config["lock_failure"]
        if self.policy not in ("poweroff", "pause", "ignore"):
            raise ValueError(f"lock-failure policy {self.policy!r} is unknown")
        self.failure: dict[str, Any] | None = None
        self.watched: set[int] = set()  # the backend's event fds in the selector
        self.kill_at: float | None = None
        # A pending take-over: the connection to answer, the deadline, the next try, the pause.
        self.take_over: tuple[socket.socket, float, float, float] | None = None
        self.waiters: list[socket.socket] = []
        self.buffers: dict[socket.socket, bytes] = {}
        self.accepting = True
        self.accept_at: float | None = None  # out of descriptors: try accepting again then
        for action in {a for m in tables.SUPERVISOR.moves for a in m.actions}:
            getattr(self, f"_do_{action}")  # every action of the table exists, or fail now

    # -- the machine's callbacks ----------------------------------------------------------------

    def _guard(self, name: str, args: Mapping[str, Any]) -> str | None:
        raise AssertionError(f"the supervisor table has no guard {name}")  # pragma: no cover

    def _act(self, name: str, args: Mapping[str, Any]) -> None:
        getattr(self, f"_do_{name}")(args)

    def _lease_act(self, name: str, args: Mapping[str, Any]) -> None:
        if name == "backend_acquire":
            self.holder.acquire(args["lease"], args["label"])
        elif name == "backend_reserve":
            self.holder.reserve(args["lease"], args["label"])
        elif name == "backend_revert":
            self.holder.revert(args["lease"])
        else:
            self.holder.release(args["lease"])

    def _take(self, resources: list[dict[str, Any]], event: str = "acquire") -> None:
        """Take (or reserve) every lease of ``resources`` in key order; on a failure give back
        what was taken."""
        wanted = _in_order(resources, exclusive_first=False)
        taken: list[dict[str, str]] = []
        try:
            for lease, res in wanted:
                if lease["key"] in self.leases:
                    raise InvalidArgument(f"{res['path']}: lease {lease['key']} is already held")
                machine = Instance(tables.LEASE, self._guard, self._lease_act)
                self._fire_lease(machine, event, lease, res)
                self.leases[lease["key"]] = machine
                taken.append(lease)
        except BaseException:
            self._give(taken)
            raise
        now = time.time()
        for res in resources:
            self.resources[_ident(res)] = {**res, "since": now}

    def _fire_lease(
        self, machine: Instance, event: str, lease: dict[str, str], res: Mapping[str, Any]
    ) -> None:
        try:
            machine.fire(event, lease=lease, label=_label(res))
        except LeaseConflict as e:
            raise self._named_holder(e, lease["key"]) from None

    def _give(self, leases: list[dict[str, str]]) -> None:
        """Release each lease; one that fails is reported and the others are still released."""
        failed = None
        for lease in leases:
            machine = self.leases.get(lease["key"])
            if machine is None:
                continue
            try:
                machine.fire("release", lease=lease)
                del self.leases[lease["key"]]
            except LockFSMError as e:
                print(f"lockfsm-supervisor: releasing {lease['key']}: {e}", file=sys.stderr)
                failed = e
        if failed is not None and self.guest_pid is not None and self.status is None:
            raise failed  # the guest still runs (hot-unplug): the daemon must hear of it

    def _named_holder(self, err: LeaseConflict, key: str) -> LeaseConflict:
        """Say which local guest holds lease ``key``, when its supervisor's record tells."""
        for name in sorted(os.listdir(self.run_dir)):
            launch = name.removesuffix(".json")
            if launch == self.launch or not wire.LAUNCH.fullmatch(launch):
                continue
            rec = rundir.read_record(self.run_dir, launch)
            if not rec or rec.get("state") not in ("running", "stopping", "migrating_out"):
                continue
            if not rundir.supervisor_alive(rec, launch):  # killed: its record still says so
                continue
            for res in rec.get("resources", []):
                if any(lease.get("key") == key for lease in res.get("leases", [])):
                    who = (
                        f"domain {rec.get('name')!r} (uuid {rec.get('uuid')}, "
                        f"supervisor pid {rec.get('pid')}) on this host"
                    )
                    return LeaseConflict(f"{err.resource} is held by {who}", err.resource, who)
        return err

    def _do_acquire_leases(self, args: Mapping[str, Any]) -> None:
        if self.sm.state != "incoming":
            self._take(list(self.spec.get("resources", [])))
            return
        # A migration target's take-over, all or nothing.  First every reserved lease is probed:
        # one visibly held elsewhere (the source has not completed) fails the attempt before it
        # takes any, so a repeated early attempt never holds even a free lease for a moment.
        # Then each is acquired, exclusive ones first, then by key; if one cannot be had (taken
        # between probe and acquire), those taken in this attempt go back to reserved and the
        # attempt raises; once all are held, settle them.
        wanted = _in_order(self.resources.values(), exclusive_first=True)
        for lease, res in wanted:  # one still held elsewhere: fail before taking any
            try:
                self.holder.probe(lease, _label(res))
            except LeaseConflict as e:
                raise self._named_holder(e, lease["key"]) from None
        taken: list[dict[str, Any]] = []
        try:
            for lease, res in wanted:
                self._fire_lease(self.leases[lease["key"]], "acquire", lease, res)
                taken.append(lease)
        except BaseException:
            for lease in taken:
                self.leases[lease["key"]].fire("revert", lease=lease)
            raise
        for lease, _ in wanted:
            self.holder.settle(lease)

    def _do_reserve_leases(self, args: Mapping[str, Any]) -> None:
        self._take(list(self.spec.get("resources", [])), "reserve")

    def _do_record_migration(self, args: Mapping[str, Any]) -> None:
        self.migration = {"id": args["migration"], "hosturi": args["hosturi"]}
        for res in self.resources.values():  # what the target needs for an atomic handoff
            res["leases"] = [{**le, **self.holder.handoff_data(le)} for le in res["leases"]]

    def _do_forget_migration(self, args: Mapping[str, Any]) -> None:
        self.migration = None

    def _do_kill_guest(self, args: Mapping[str, Any]) -> None:
        assert self.guest_pid is not None
        os.kill(self.guest_pid, signal.SIGKILL)

    def _do_report_refusal(self, args: Mapping[str, Any]) -> None:
        self.error = wire.error_reply(args["error"])
        self._record()

    def _do_spawn_guest(self, args: Mapping[str, Any]) -> None:
        inherit = self.holder.inheritable_fds()
        for fd in inherit:
            os.set_inheritable(fd, True)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the guest-to-be
            try:
                import ctypes  # here only: the supervisor itself never needs it

                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                if os.getppid() != parent:  # the supervisor died before prctl took effect
                    os._exit(EXIT_REFUSED)
                for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                os.execvp(self.guest_argv[0], self.guest_argv)
            except BaseException as e:
                try:
                    os.write(2, f"lockfsm-supervisor: cannot run guest: {e}\n".encode())
                finally:
                    os._exit(127)
        for fd in inherit:
            os.set_inheritable(fd, False)
        self.guest_pid = pid
        self.pidfd = os.pidfd_open(pid)

    def _do_acquire_lease(self, args: Mapping[str, Any]) -> None:
        res = args["resource"]
        if _ident(res) in self.resources:
            raise InvalidArgument(f"{res['type']} {res['path']} is already held by this guest")
        self._take([res])

    def _do_release_lease(self, args: Mapping[str, Any]) -> None:
        res = self.resources.get(_ident(args["resource"]))
        if res is None:
            raise InvalidArgument(f"{args['resource']['path']} is not held by this guest")
        self._give(list(res["leases"]))
        del self.resources[_ident(res)]

    def _do_pause_guest(self, args: Mapping[str, Any]) -> None:
        assert self.guest_pid is not None
        os.kill(self.guest_pid, signal.SIGSTOP)

    def _do_forfeit_leases(self, args: Mapping[str, Any]) -> None:
        """Record the loss and let every lease go; a lease the backend cannot release is
        reported and dropped all the same (it is lost already)."""
        self.failure = {"reason": args["reason"], "policy": self.policy, "at": time.time()}
        for res in list(self.resources.values()):
            for lease in res["leases"]:
                machine = self.leases.pop(lease["key"], None)
                try:
                    if machine is not None:
                        machine.fire("release", lease=lease)
                except LockFSMError as e:
                    print(f"lockfsm-supervisor: letting {lease['key']} go: {e}", file=sys.stderr)
        self.resources.clear()
        self._end_take_over(wire.error_reply(self._lost_error()))

    def _lost_error(self) -> LeaseLost:
        return LeaseLost(wire.lost_message(self.info()))

    def _do_new_controller(self, args: Mapping[str, Any]) -> None:
        self.gen += 1

    def _do_signal_guest(self, args: Mapping[str, Any]) -> None:
        assert self.guest_pid is not None
        os.kill(self.guest_pid, signal.SIGTERM)
        self.kill_at = time.monotonic() + float(args.get("grace", DEFAULT_GRACE))

    def _do_release_all(self, args: Mapping[str, Any]) -> None:
        self.status = int(args["status"])
        for res in list(self.resources.values()):
            self._give(list(res["leases"]))
        self.resources.clear()

    # -- records and the socket ------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "v": wire.PROTOCOL,
            "pid": os.getpid(),
            "launch": self.launch,
            "driver": self.spec["driver"],
            "uuid": self.spec.get("uuid"),
            "name": self.spec.get("name"),
            "id": self.spec.get("id"),
            "state": self.sm.state,
            "guest_pid": self.guest_pid,
            "gen": self.gen,
            "resources": list(self.resources.values()),
            "mode": self.mode,
            "migration": self.migration,
            "status": self.status,
            "error": self.error,
            "policy": self.policy,
            "failure": self.failure,
            "since": time.time(),
        }

    def _record(self) -> None:
        rundir.write_record(self.run_dir, self.launch, self.info())

    def fire(self, event: str, **args: Any) -> None:
        started = time.monotonic()
        source, dest = self.sm.fire(event, **args)
        self._record()
        if self.config.get("supervisor_log") == "moves":
            # The daemon's own move lines (logger lockfsm.core) have the same shape.
            print(
                f"lockfsm-supervisor: move machine=supervisor domain={self.spec.get('name')} "
                f"from={source} event={event} to={dest} "
                f"duration_ms={(time.monotonic() - started) * 1000:.3f}",
                file=sys.stderr,
                flush=True,
            )

    def _listen(self) -> socket.socket:
        path = rundir.socket_path(self.run_dir, self.launch)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is born 0600
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(MAX_CONNECTIONS)
        sock.setblocking(False)
        return sock

    # -- the main loop ---------------------------------------------------------------------------

    def run(self) -> int:
        try:
            os.setsid()  # a signal to the daemon's process group must not reach the guest
        except OSError:
            pass
        self.listener = self._listen()
        self._record()
        try:
            self.holder.watch(self._notify_argv())
        except LockFSMError as e:
            print(f"lockfsm-supervisor: {e}", file=sys.stderr)
            self.fire("refuse", error=e)
            self._close()
            return EXIT_REFUSED
        try:
            self.fire("reserve" if self.mode == "incoming" else "acquire_all")
        except LockFSMError as e:
            self.fire("refuse", error=e)
            self._close()
            print(f"lockfsm-supervisor: {e}", file=sys.stderr)
            return EXIT_REFUSED
        self.fire("spawn")
        self._point()
        self._loop()
        assert self.status is not None
        if self.sm.state == "lost":
            return EXIT_LEASE_LOST
        return 0 if self.sm.state in ("handed_off", "cancelled") else self.status

    def _loop(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        signal.set_wakeup_fd(wake_w)
        self.signalled = False
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        self.sel.register(wake_r, selectors.EVENT_READ, "wake")
        self.sel.register(self.pidfd, selectors.EVENT_READ, "guest")
        while self.sm.state not in tables.SUPERVISOR.terminal:
            self._watch_holder()
            check = self.holder.next_check() if self.failure is None else None
            timers = [
                t
                for t in (self.kill_at, self.take_over and self.take_over[2], check, self.accept_at)
                if t
            ]
            timeout = max(0.0, min(timers) - time.monotonic()) if timers else None
            for key, _ in self.sel.select(timeout):
                if key.data == "holder":
                    self._poll_holder()
                elif key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    os.read(wake_r, 512)
                    self._on_wake()
                elif key.data == "guest":
                    self._reap()
                else:
                    self._readable(key.fileobj)  # type: ignore[arg-type]
            if self.kill_at is not None and time.monotonic() >= self.kill_at:
                self._kill_guest()
            if check is not None and time.monotonic() >= check:
                self._poll_holder()
            if self.accept_at is not None and time.monotonic() >= self.accept_at:
                self.accept_at = None
                self._resume_accepting()
            if self.take_over is not None and time.monotonic() >= self.take_over[2]:
                self._try_take_over()
        self._close()

    def _watch_holder(self) -> None:
        """Keep the selector watching exactly the backend's event fds (they may change)."""
        fds = set(self.holder.event_fds())
        for fd in self.watched - fds:
            self.sel.unregister(fd)
        for fd in fds - self.watched:
            self.sel.register(fd, selectors.EVENT_READ, "holder")
        self.watched = fds

    def _poll_holder(self) -> None:
        if self.failure is not None:
            return
        reason = self.holder.poll()
        if reason is not None:
            self.lose(reason)

    def lose(self, reason: str) -> None:
        """A lease is lost: apply the domain's lock-failure policy now (once)."""
        event = f"lost_{self.policy}"
        if self.sm.can(event):
            self.fire(event, reason=reason)
            print(f"lockfsm-supervisor: lease lost ({reason}): {self.policy}", file=sys.stderr)

    def _notify_argv(self) -> list[str]:
        """The command that reports a lease loss to this supervisor (sanlock's kill path)."""
        program = sys.argv[0] if sys.argv else ""
        if os.path.basename(program) == "lockfsm-supervisor" and os.path.isabs(program):
            head = [program]
        else:
            head = [sys.executable, "-m", "lockfsm.supervisor"]
        return [*head, "--lease-lost", rundir.socket_path(self.run_dir, self.launch)]

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signalled = True

    def _try_take_over(self) -> None:
        """One attempt of a pending take-over; reply when all leases are had or time is up."""
        assert self.take_over is not None
        conn, deadline, _, pause = self.take_over
        try:
            self.fire("take_over")
        except LeaseConflict as e:
            now = time.monotonic()
            if e.final:
                self._end_take_over(wire.error_reply(e))
                return
            if now < deadline:
                pause = min(pause * 2, 0.002)  # a probe is a cheap query per lease
                self.take_over = (conn, deadline, min(now + pause, deadline), pause)
                return
            self._end_take_over(
                wire.error_reply(
                    LeaseConflict(f"the source did not give up the lease in time: {e}", e.resource)
                )
            )
            return
        except LockFSMError as e:
            self._end_take_over(wire.error_reply(e))
            return
        self._point(take=True)  # this launch runs the guest now: ATTACH must find it
        self._end_take_over({"ok": True, **self.info()})

    def _point(self, take: bool = False) -> None:
        """Make ``dom-<uuid>`` name this launch, for a restarted daemon's ATTACH -- unless it
        names a live supervisor of another launch (the source of a migration to this same
        host) and this one does not ``take`` it (a target takes it when it takes over)."""
        uuid = self.spec.get("uuid")
        if not uuid:
            return
        other = rundir.pointed(self.run_dir, uuid)
        if not take and other is not None and other != self.launch:
            record = rundir.read_record(self.run_dir, other)
            if record is not None and rundir.supervisor_alive(record, other):
                return
        rundir.point(self.run_dir, uuid, self.launch)

    def _end_take_over(self, reply: Mapping[str, Any]) -> None:
        if self.take_over is not None:
            conn = self.take_over[0]
            self.take_over = None
            self._reply(conn, reply)

    def _on_wake(self) -> None:
        if not self.signalled:
            return
        self.signalled = False
        if self.sm.state in ("running", "migrating_out", "incoming"):
            self.fire("stop", grace=DEFAULT_GRACE)
        elif self.sm.state in ("stopping", "handing_off", "cancelling"):
            self._kill_guest()

    def _kill_guest(self) -> None:
        self.kill_at = None
        if self.guest_pid is not None and self.status is None:
            try:
                os.kill(self.guest_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _reap(self) -> None:
        assert self.guest_pid is not None
        _, wait_status = os.waitpid(self.guest_pid, 0)
        code = os.waitstatus_to_exitcode(wait_status)
        self.sel.unregister(self.pidfd)
        os.close(self.pidfd)
        self.fire("guest_exited", status=code if code >= 0 else 128 - code)
        self.kill_at = None
        self._end_take_over(
            wire.error_reply(BackendError(f"the guest exited (status {self.status})"))
        )
        for conn in list(self.waiters):
            self._reply(conn, {"ok": True, "status": self.status})
        self.waiters.clear()

    def _close(self) -> None:
        try:
            os.unlink(rundir.socket_path(self.run_dir, self.launch))
        except FileNotFoundError:
            pass
        self.listener.close()

    def _accept(self) -> None:
        while True:
            if len(self.buffers) >= MAX_CONNECTIONS:
                self._pause_accepting()  # until one of them closes
                return
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors (EMFILE, ENFILE...): the guest goes on
                print(f"lockfsm-supervisor: accept: {e.strerror}", file=sys.stderr)
                self._pause_accepting()
                self.accept_at = time.monotonic() + 0.1
                return
            uid = _peer_uid(conn)
            if uid not in (os.geteuid(), 0):
                conn.settimeout(1.0)
                why = (
                    f"uid {uid} may not control this supervisor (only uid {os.geteuid()} and root)"
                )
                self._reply(conn, wire.error_reply(PermissionError(why)))
                conn.close()
                continue
            conn.setblocking(False)
            self.buffers[conn] = b""
            self.sel.register(conn, selectors.EVENT_READ, "conn")

    def _pause_accepting(self) -> None:
        if self.accepting:
            self.sel.unregister(self.listener)
            self.accepting = False

    def _resume_accepting(self) -> None:
        if not self.accepting:
            self.sel.register(self.listener, selectors.EVENT_READ, "accept")
            self.accepting = True

    def _drop(self, conn: socket.socket) -> None:
        if self.take_over is not None and self.take_over[0] is conn:
            self.take_over = None  # the daemon that asked is gone: take nothing on its behalf
        if conn in self.buffers:
            self.sel.unregister(conn)
            del self.buffers[conn]
        if conn in self.waiters:
            self.waiters.remove(conn)
        conn.close()
        if self.accept_at is None:
            self._resume_accepting()

    def _readable(self, conn: socket.socket) -> None:
        try:
            chunk = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            left = self.buffers.get(conn, b"")
            if left:  # the peer stopped mid-message: say so (it may still read)
                why = f"truncated message: {len(left)} bytes without a newline"
                self._reply(conn, wire.error_reply(InvalidArgument(why)))
            if conn in self.buffers:
                self._drop(conn)
            return
        buf = self.buffers[conn] + chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            self._request(conn, line)
            if conn not in self.buffers:
                return  # dropped while answering (it did not read its reply)
        if len(buf) > wire.MAX_MESSAGE:
            self._reply(conn, wire.error_reply(InvalidArgument("message over the size limit")))
            self._drop(conn)
            return
        if conn in self.buffers:
            self.buffers[conn] = buf

    def _reply(self, conn: socket.socket, reply: Mapping[str, Any]) -> None:
        """Send one reply; a peer that does not take it within REPLY_TIMEOUT (or is gone) is
        dropped with what it still had buffered, so no peer can stall the supervisor."""
        try:
            data = wire.encode(reply)
        except InvalidArgument as e:  # a reply over the limit: say so rather than die
            data = wire.encode(wire.error_reply(BackendError(f"reply not sent: {e}")))
        try:
            conn.setblocking(True)
            conn.settimeout(REPLY_TIMEOUT)
            conn.sendall(data)
            conn.setblocking(False)
        except OSError:
            if conn in self.buffers or conn in self.waiters:
                self._drop(conn)

    def _request(self, conn: socket.socket, line: bytes) -> None:
        try:
            op, fields = wire.parse_request(line)
            reply = self._handle(conn, op, fields)
        except LockFSMError as e:
            reply = wire.error_reply(e)
        except Exception as e:  # no message may kill the supervisor, and with it the guest
            reply = wire.error_reply(BackendError(f"request refused: {type(e).__name__}: {e}"))
        if reply is not None:
            self._reply(conn, reply)

    def _handle(
        self, conn: socket.socket, op: str, fields: dict[str, Any]
    ) -> dict[str, Any] | None:
        if op in ("hello", "get_child"):
            return {"ok": True, **self.info()}
        if op == "lease_lost":
            self.lose(fields["reason"])
            return {"ok": True, **self.info()}
        if op == "attach":
            self.fire("attach")
            # A take-over the superseded controller asked for ends now: its daemon is gone (or
            # no longer drives this guest), and the new one decides whether to complete.
            self._end_take_over(
                wire.error_reply(
                    BackendError(
                        f"the take-over was superseded by a later attach (generation {self.gen})"
                    )
                )
            )
            return {"ok": True, **self.info()}
        if fields["gen"] != self.gen:
            raise BackendError(
                f"this controller (generation {fields['gen']}) was superseded by a later attach "
                f"(generation {self.gen}): it may no longer drive the supervisor of "
                f"{self.spec.get('name')!r}"
            )
        if self.failure is not None and op != "shutdown":
            raise self._lost_error()
        if op == "acquire":
            self.fire("acquire", resource=fields["resource"])
            return {"ok": True, **self.info()}
        if op == "release":
            self.fire("release", resource=fields["resource"])
            return {"ok": True, **self.info()}
        if op == "prepare":
            self.fire("prepare", migration=fields["migration"], hosturi=fields["hosturi"])
            return {"ok": True, **self.info()}
        if op == "resume":
            self.fire("resume")
            return {"ok": True, **self.info()}
        if op == "take_over":
            if self.take_over is not None:
                raise InvalidArgument("a take-over is already under way")
            if not self.sm.can("take_over"):
                raise BackendError(f"no take-over in state {self.sm.state}")
            now = time.monotonic()
            self.take_over = (conn, now + fields["timeout"], now, 0.0005)
            self._try_take_over()
            return None
        if op in ("hand_off", "cancel"):
            self.fire(op)
        else:
            assert op == "shutdown"
            self.fire("stop", grace=fields["grace"])
        self.waiters.append(conn)
        return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lockfsm-supervisor``."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--lease-lost"]:
        return report_loss(args[1:])
    try:
        spec, guest = parse_argv(args)
        supervisor = Supervisor(spec, guest)
    except (ValueError, KeyError, TypeError, LockFSMError) as e:
        print(f"lockfsm-supervisor: {e}", file=sys.stderr)
        return EXIT_USAGE
    return supervisor.run()


def report_loss(args: list[str]) -> int:
    """``lockfsm-supervisor --lease-lost SOCKET [WHY...]``: tell the supervisor at SOCKET that
    its leases are lost (run by the lock service, e.g. as sanlock's kill path)."""
    if not args:
        print("usage: lockfsm-supervisor --lease-lost SOCKET [WHY...]", file=sys.stderr)
        return EXIT_USAGE
    why = " ".join(args[1:]) or "the lock service revoked the leases"
    try:
        wire.call(args[0], {"op": "lease_lost", "reason": why[:1024]}, 5.0)
    except (OSError, LockFSMError) as e:
        print(f"lockfsm-supervisor --lease-lost: {args[0]}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
