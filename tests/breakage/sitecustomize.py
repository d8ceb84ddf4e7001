"""Deliberate breakages of the migration protocol, for tests/test_bites.py.

Python imports ``sitecustomize`` at start-up from ``sys.path``: with this directory on
``PYTHONPATH`` and ``LOCKFSM_BREAK`` naming a breakage, every Python process of the run (the
test runner and each ``lockfsm-supervisor`` it starts, which inherit the environment) patches
lockfsm at import time.  No file under lockfsm/ is touched.  Without ``LOCKFSM_BREAK`` this does
nothing.  :data:`APPLIED` names the breakage in force (the bite test checks it took).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

APPLIED: str | None = None


def _unlock_leases(holder: Any) -> None:
    """Let go of byte 0 (the lease) of every lease file the holder has open, keeping the files
    and the holder's belief that it holds them."""
    from lockfsm.backends import fcntl as backend

    for fd in holder.fds.values():
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, backend._flock(fcntl.F_UNLCK, backend.LEASE_BYTE))


def target_ignores_conflicts() -> None:
    """(a) The target completes while the source still holds the leases: a migration target's
    take-over of a lease it reserved ignores the conflict and reports success (and its probe,
    which would have found the source, finds nothing)."""
    from lockfsm.backends import fcntl as backend
    from lockfsm.errors import LeaseConflict

    original = backend.FcntlHolder._take_over_one

    def take_over_one(self: Any, lease: Mapping[str, Any], resource: str) -> None:
        try:
            original(self, lease, resource)
        except LeaseConflict:
            pass

    backend.FcntlHolder._take_over_one = take_over_one  # type: ignore[method-assign]
    backend.FcntlHolder.probe = lambda self, lease, resource: None  # type: ignore[method-assign]


def start_ignores_conflicts() -> None:
    """(l) fcntl: a fresh acquire of a lease that another host holds ignores the conflict and
    reports success (the file opened, nothing locked): a guest starts beside a running one on
    the same disks (S1)."""
    from lockfsm.backends import fcntl as backend
    from lockfsm.errors import LeaseConflict

    original = backend.FcntlHolder.acquire

    def acquire(self: Any, lease: Mapping[str, str], resource: str) -> None:
        try:
            original(self, lease, resource)
        except LeaseConflict:
            self.fds[lease["key"]] = self._open(os.path.join(self.dir, lease["key"]))

    backend.FcntlHolder.acquire = acquire  # type: ignore[method-assign]


def resume_drops_leases() -> None:
    """(b) A cancelled source resumes without its leases: the supervisor's resume (the source's
    complete_migrate_in(cancel=True)) lets every lease go, and the guest runs on."""
    from lockfsm.supervisor import process as supervisor

    original = supervisor.Supervisor._do_forget_migration

    def forget_migration(self: Any, args: Mapping[str, Any]) -> None:
        original(self, args)
        _unlock_leases(self.leases.holder)

    supervisor.Supervisor._do_forget_migration = forget_migration  # type: ignore[method-assign]


def hand_off_before_kill() -> None:
    """(c) The source's hand_off gives the leases up before its guest is dead: it lets every
    lease go, then kills the guest, which (as a real QEMU does) takes a moment to stop."""
    from lockfsm.supervisor import process as supervisor

    original = supervisor.Supervisor._do_kill_guest

    def kill_guest(self: Any, args: Mapping[str, Any]) -> None:
        if self.sm.state == "migrating_out":  # hand_off (a target's cancel kills from incoming)
            _unlock_leases(self.leases.holder)
            time.sleep(0.05)
        original(self, args)

    supervisor.Supervisor._do_kill_guest = kill_guest  # type: ignore[method-assign]


def acquire_skips_gate() -> None:
    """(d) A fresh acquire does not pass the gate (byte 1): a third host can take a lease that an
    incoming target reserved, in the window between the source's release and the take-over."""
    from lockfsm.backends import fcntl as backend

    original = backend.FcntlHolder._locked_file

    def locked_file(self: Any, key: str, resource: str, steps: list[tuple[int, int]]) -> int:
        steps = [(k, b) for k, b in steps if (k, b) != (fcntl.F_RDLCK, backend.GATE_BYTE)]
        return int(original(self, key, resource, steps))

    backend.FcntlHolder._locked_file = locked_file  # type: ignore[method-assign]


def takeover_drops_a_lease() -> None:
    """(g) The target's take-over takes every lease of the group but the last (in the holder's
    order: the domain lease or a disk's), and reports success: the guest runs after the handoff
    without that lease (L1; S2 while it executes)."""
    from lockfsm.backends import fcntl as backend

    original = backend.FcntlHolder.take_over

    def take_over(self: Any, group: Any) -> None:
        group = list(group)
        original(self, group[:-1] if len(group) > 1 else group)

    backend.FcntlHolder.take_over = take_over  # type: ignore[method-assign]


def gate_dropped_after_timeout() -> None:
    """(h) fcntl: a target whose take-over timed out (the source still held the leases) lets its
    gates go, though it stays incoming and still reserves them: a third host can take a lease
    in the window between the source's handoff and the target's next attempt (S3)."""
    from lockfsm.backends import fcntl as backend
    from lockfsm.supervisor import process as supervisor

    original = supervisor.Supervisor._answer_take_over

    def answer(self: Any, pending: Any, reply: Mapping[str, Any]) -> None:
        if not reply.get("ok"):
            for fd in self.leases.holder.fds.values():
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, backend._flock(fcntl.F_UNLCK, backend.GATE_BYTE))
        original(self, pending, reply)

    supervisor.Supervisor._answer_take_over = answer  # type: ignore[method-assign]


def refused_call_counts_a_move() -> None:
    """(i) A refused call is not quite refused: the manager counts a move before it raises (its
    ``moves`` changes while its state stays): a rejected call changes something (S5)."""
    from lockfsm.daemon import manager
    from lockfsm.errors import LockFSMError

    original = manager.LockManager._fire

    def fire(self: Any, event: str, **args: Any) -> None:
        try:
            original(self, event, **args)
        except LockFSMError:
            self._moves += 1
            raise

    manager.LockManager._fire = fire  # type: ignore[method-assign]


def attach_forgets_migration() -> None:
    """(j) A restarted daemon's ATTACH to a source whose migration is prepared takes its
    supervisor for a plain running one: the manager comes back started, the migration forgotten
    (S4)."""
    from lockfsm.daemon import manager

    original = manager.LockManager._read_supervisor

    def read_supervisor(self: Any, args: Mapping[str, Any]) -> dict[str, Any]:
        hello = dict(original(self, args))
        if hello.get("state") == "migrating_out":
            hello["state"] = "running"
        return hello

    manager.LockManager._read_supervisor = read_supervisor  # type: ignore[method-assign]


def leases_outlive_their_holder() -> None:
    """(k) fcntl: the supervisor also hands the lease descriptions of a guest it starts to a
    helper that outlives them both (20 s): a dead holder's leases do not come free (L2), so a
    later start elsewhere is refused and the kernel keeps locks of no live holder."""
    import subprocess

    from lockfsm.supervisor import process as supervisor

    original = supervisor.Supervisor._do_spawn_guest

    def spawn_guest(self: Any, args: Mapping[str, Any]) -> None:
        original(self, args)
        fds = self.leases.holder.inheritable_fds()
        subprocess.Popen(["sleep", "20"], pass_fds=fds, start_new_session=True)

    supervisor.Supervisor._do_spawn_guest = spawn_guest  # type: ignore[method-assign]


def after_import(name: str, patch: Callable[[Any], None]) -> None:
    """Run ``patch(module)`` right after module ``name`` is first imported in this process
    (the etcd agent imports gRPC: only the agent's process should pay for it)."""
    import importlib.abc
    import importlib.machinery

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
            if fullname != name:
                return None
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is None or spec.loader is None:
                return spec
            loader = spec.loader
            original = loader.exec_module

            def exec_module(module: Any) -> None:
                original(module)
                patch(module)

            loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, Finder())


def etcd_takeover_skips_handoff() -> None:
    """(e) etcd: the target's take-over transaction does not check that the source handed the
    exclusive keys off (the marker): it takes them while the source's guest still runs."""

    def patch(agent: Any) -> None:
        from aetcd import rpc

        original = agent.value

        def value(key: bytes, data: bytes) -> Any:
            if key.endswith(b"/x") and data.startswith(b'{"handed_off_to":'):
                always = rpc.Compare(key=key, target=rpc.Compare.VERSION)
                always.result = rpc.Compare.GREATER
                always.version = -1
                return always
            return original(key, data)

        agent.value = value

    after_import("lockfsm.agent.store", patch)


def etcd_keeper_revives_a_dead_lease() -> None:
    """(m) etcd: the lease agent takes a keepalive answer that says its lease is gone (TTL 0:
    it expired or was revoked, and etcd deleted every key on it) as proof of life: it goes on
    pushing deadlines to its supervisors, and a new agent resumes such a lease.  The guests run
    on while their keys are free for another host (S2, then S1)."""

    def patch(keeper: Any) -> None:
        init = keeper.HostLeaseKeeper.__init__

        def __init__(self: Any, etcd: Any, ttl: int, *args: Any, **kwargs: Any) -> None:
            init(self, etcd, ttl, *args, **kwargs)
            real = etcd.keepalive

            async def keepalive(lease: int, timeout: float) -> int:
                renewed: int = await real(lease, timeout)
                return renewed if renewed > 0 else ttl

            etcd.keepalive = keepalive

        keeper.HostLeaseKeeper.__init__ = __init__

    after_import("lockfsm.agent.keeper", patch)


def sanlock_takeover_ignores_version() -> None:
    """(f) sanlock: the target's take-over acquires without the lease version the cookie
    carries: it takes a lease that a third host took (and gave back) in the handoff window, or
    that a stale cookie names."""
    from lockfsm.backends import sanlock as backend

    original = backend.SanlockHolder._acquire

    def acquire(self: Any, lease: Mapping[str, Any], resource: str, version: Any) -> None:
        original(self, lease, resource, None)

    backend.SanlockHolder._acquire = acquire  # type: ignore[method-assign]


BREAKAGES: dict[str, Callable[[], None]] = {
    "target-ignores-conflicts": target_ignores_conflicts,
    "start-ignores-conflicts": start_ignores_conflicts,
    "resume-drops-leases": resume_drops_leases,
    "hand-off-before-kill": hand_off_before_kill,
    "acquire-skips-gate": acquire_skips_gate,
    "takeover-drops-a-lease": takeover_drops_a_lease,
    "fcntl-gate-dropped-after-timeout": gate_dropped_after_timeout,
    "refused-call-counts-a-move": refused_call_counts_a_move,
    "attach-forgets-migration": attach_forgets_migration,
    "leases-outlive-their-holder": leases_outlive_their_holder,
    "etcd-takeover-skips-handoff": etcd_takeover_skips_handoff,
    "etcd-keeper-revives-a-dead-lease": etcd_keeper_revives_a_dead_lease,
    "sanlock-takeover-ignores-version": sanlock_takeover_ignores_version,
}

_wanted = os.environ.get("LOCKFSM_BREAK")
if _wanted:
    if _wanted not in BREAKAGES:
        print(f"sitecustomize: unknown LOCKFSM_BREAK {_wanted!r}", file=sys.stderr)
    else:
        BREAKAGES[_wanted]()
        APPLIED = _wanted
