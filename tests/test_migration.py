"""Layer 3: the two-host migration handoff with real supervisors, read as the protocol
(Pair), checked against the kernel's locks."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import lockfsm
from lockfsm import DomainState, IllegalTransition, InvalidArgument, NewFlags, ResourceType
from lockfsm.embed.standin import Host, Pair, make_disks
from lockfsm.protocol.kernel import alive, fd_locks
from tests.support.helpers import lease_inode, leases_of, lockspace_locks, wait_until


@pytest.fixture
def pair(lockspace: str) -> Iterator[Pair]:
    p = Pair(lockspace)
    yield p
    p.cleanup()


@pytest.fixture
def third(hosts: Callable[..., Host]) -> Host:
    """A third host on the lockspace: a rogue that tries to start the same guest."""
    return hosts()


@pytest.fixture
def disks(workdir: str) -> list[str]:
    return make_disks(workdir, "a.img", "b.img", "s.img")


def held_bytes(pid: int, lockspace: str, mgr: lockfsm.LockManager) -> dict[int, set[int]]:
    """For each lease inode of ``mgr``: which bytes (0 = lease, 1 = gate) ``pid`` locks."""
    inodes = {lease_inode(lockspace, key) for key, _ in leases_of(mgr)}
    got: dict[int, set[int]] = {i: set() for i in inodes}
    for inode, start, _ in fd_locks(pid):
        if inode in got:
            got[inode].add(start)
    return got


def refused_to_third(third: Host, pair: Pair, disks: list[str]) -> None:
    assert pair.guest is not None
    with pytest.raises(lockfsm.LeaseConflict):
        third.start(pair.guest.name, disks[:2])


@pytest.mark.parametrize("order", ["target-first", "source-first"])
def test_handoff_in_either_order_ends_the_same(
    pair: Pair, disks: list[str], lockspace: str, order: str
) -> None:
    """L1: after both completions the target holds every lease and the source none, its guest
    dead and its supervisor gone with status 0."""
    src = pair.start("vm", disks[:2], shared=disks[2:])
    pair.prepare()
    tgt = pair.incoming_start()
    assert (src.mgr.state, tgt.mgr.state) == (DomainState.MIGRATING_OUT, DomainState.MIGRATING_IN)
    pair.migrate(order)
    assert (src.mgr.state, tgt.mgr.state) == (DomainState.DONE, DomainState.STARTED)
    assert src.proc.wait(10) == 0
    assert src.pid is not None and not alive(src.pid)
    assert all(b == {0} for b in held_bytes(tgt.supervisor_pid, lockspace, tgt.mgr).values())
    assert [r.path for r in tgt.mgr.resources] == [r.path for r in src.mgr.resources]
    src.mgr.shutdown()
    assert src.mgr.state is DomainState.STOPPED
    tgt.mgr.shutdown()
    assert lockspace_locks(lockspace) == {}


@pytest.mark.parametrize("order", ["target-first", "source-first"])
def test_cancel_leaves_the_source_owning_everything(
    pair: Pair, disks: list[str], lockspace: str, order: str
) -> None:
    src = pair.start("vm", disks[:2])
    before = held_bytes(src.supervisor_pid, lockspace, src.mgr)
    pair.prepare()
    tgt = pair.incoming_start()
    pair.cancel(order)
    assert (src.mgr.state, tgt.mgr.state) == (DomainState.STARTED, DomainState.CANCELLED)
    assert tgt.pid is not None and not alive(tgt.pid) and tgt.proc.wait(10) == 0
    assert held_bytes(src.supervisor_pid, lockspace, src.mgr) == before
    assert all(b == {0} for b in before.values())
    tgt.mgr.shutdown()
    assert tgt.mgr.state is DomainState.STOPPED
    assert src.pid is not None and alive(src.pid)
    pair.prepare()  # the source can migrate again
    src.mgr.complete_migrate_in(cancel=True)


def test_target_does_not_hold_before_the_handoff(
    pair: Pair, disks: list[str], lockspace: str, third: Host
) -> None:
    """S3: before the source's completion the target only reserves (gate byte), never the
    lease byte; a third host is refused before, in and after the window."""
    pair.start("vm", disks[:2])
    pair.prepare()
    refused_to_third(third, pair, disks)
    tgt = pair.incoming_start()
    assert all(b == {1} for b in held_bytes(tgt.supervisor_pid, lockspace, tgt.mgr).values())
    refused_to_third(third, pair, disks)
    assert pair.guest is not None
    pair.guest.mgr.complete_migrate_in()
    refused_to_third(third, pair, disks)  # the window: the gate refuses it
    tgt.mgr.complete_migrate_in()
    refused_to_third(third, pair, disks)


def test_a_second_target_is_refused(pair: Pair, disks: list[str], lockspace: str) -> None:
    pair.start("vm", disks[:2])
    pair.prepare()
    pair.incoming_start()
    rogue = Pair(lockspace)
    try:
        rogue.guest, rogue.cookie = pair.guest, pair.cookie
        with pytest.raises(lockfsm.LeaseConflict, match="incoming migration"):
            rogue.incoming_start()
    finally:
        rogue.target.cleanup()


def test_target_gives_up_when_the_source_never_completes(lockspace: str, disks: list[str]) -> None:
    pair = Pair(lockspace, handoff_timeout=0.3)
    try:
        pair.start("vm", disks[:1], shared=disks[2:])  # the shared lease could be had at once
        pair.prepare()
        tgt = pair.incoming_start()
        t = time.monotonic()
        with pytest.raises(lockfsm.LeaseConflict, match="did not give up"):
            tgt.mgr.complete_migrate_in()
        assert 0.3 <= time.monotonic() - t < 5
        assert tgt.mgr.state is DomainState.MIGRATING_IN
        # All or nothing: the failed take-over kept only its reservations (S5).
        held = held_bytes(tgt.supervisor_pid, lockspace, tgt.mgr)
        assert all(b == {1} for b in held.values()), held
        tgt.mgr.complete_migrate_in(cancel=True)
        assert pair.guest is not None
        pair.guest.mgr.complete_migrate_in(cancel=True)
        assert pair.guest.mgr.state is DomainState.STARTED
    finally:
        pair.cleanup()


def test_hot_plug_is_refused_during_migration(pair: Pair, disks: list[str]) -> None:
    src = pair.start("vm", disks[:1])
    pair.prepare()
    tgt = pair.incoming_start()
    for mgr in (src.mgr, tgt.mgr):
        before = (mgr.state, mgr.moves, mgr.resources)
        with pytest.raises(IllegalTransition, match="acquire_resource"):
            mgr.acquire_resource(ResourceType.DISK, disks[1])
        with pytest.raises(IllegalTransition, match="release_resource"):
            mgr.release_resource(ResourceType.DISK, disks[0])
        assert (mgr.state, mgr.moves, mgr.resources) == before


def test_the_cookie_is_checked(pair: Pair, disks: list[str]) -> None:
    src = pair.start("vm", disks[:2])
    cookie = pair.prepare()
    mgr = pair.target.manager("vm", src.uuid, disks[:1], flags=NewFlags.MIGRATE)
    for bad, why in [
        ("garbage", "not a lockfsm migration cookie"),
        ("lockfsm-cookie-1:!!!", "garbled"),
        (cookie[:-8], "garbled"),
    ]:
        with pytest.raises(InvalidArgument, match=why):
            mgr.set_parameter("migration_cookie", bad)
    mgr.set_parameter("migration_cookie", cookie)
    with pytest.raises(InvalidArgument, match="are not the cookie's"):
        _ = mgr.supervisor_args  # one disk registered, the cookie names two
    other = pair.target.manager(
        "vm", "11111111-2222-4333-8444-555555555555", disks[:2], flags=NewFlags.MIGRATE
    )
    other.set_parameter("migration_cookie", cookie)
    with pytest.raises(InvalidArgument, match="is for uuid"):
        other.get_child(timeout=0.2)
    plain = pair.target.manager("vm", src.uuid, disks[:2])
    with pytest.raises(InvalidArgument, match="MIGRATE manager only"):
        plain.set_parameter("migration_cookie", cookie)


@pytest.mark.parametrize("side", ["source", "target"])
def test_daemon_restart_during_migration(pair: Pair, disks: list[str], side: str) -> None:
    """S4: either daemon restarts mid-migration; ATTACH finds the migration where it was."""
    src = pair.start("vm", disks[:2])
    pair.prepare()
    tgt = pair.incoming_start()
    host, guest, state = (
        (pair.source, src, DomainState.MIGRATING_OUT)
        if side == "source"
        else (pair.target, tgt, DomainState.MIGRATING_IN)
    )
    pid = guest.pid
    host.restart_daemon()
    mgr = host.attach(guest)
    assert mgr.state is state and guest.pid == pid
    pair.migrate()
    assert (src.mgr.state, tgt.mgr.state) == (DomainState.DONE, DomainState.STARTED)


def test_a_pending_take_over_ends_with_its_daemon(
    pair: Pair, disks: list[str], lockspace: str
) -> None:
    """The target daemon's complete_migrate_in waits for the source; the daemon restarts and
    attaches meanwhile.  The old call ends (BackendError, superseded) and the supervisor takes
    nothing on its behalf, even once the source has handed off: only the new daemon's own
    completion takes the leases over."""
    src = pair.start("vm", disks[:2])
    pair.prepare()
    tgt = pair.incoming_start()
    pair.target.driver.config["handoff_timeout"] = 60.0
    errors: list[BaseException] = []

    def old_daemon() -> None:
        try:
            tgt.mgr.complete_migrate_in()
        except BaseException as e:  # judged below
            errors.append(e)

    t = threading.Thread(target=old_daemon)
    t.start()
    time.sleep(0.2)  # the take-over is pending: the source still holds every lease
    pair.target.restart_daemon()
    mgr = pair.target.attach(tgt)
    t.join(10)
    assert not t.is_alive(), "the superseded daemon's take-over never ended"
    assert len(errors) == 1 and isinstance(errors[0], lockfsm.BackendError), errors
    assert "superseded" in str(errors[0])
    src.mgr.complete_migrate_in()  # the source hands off: its leases come free
    assert all(b == {1} for b in held_bytes(tgt.supervisor_pid, lockspace, mgr).values()), (
        "the supervisor took leases over for a daemon that is gone"
    )
    mgr.complete_migrate_in()
    assert mgr.state is DomainState.STARTED
    assert all(b == {0} for b in held_bytes(tgt.supervisor_pid, lockspace, mgr).values())


def test_a_take_over_attempt_takes_nothing_while_another_lease_is_held(
    lockspace: str, disks: list[str], hosts: Callable[..., Host]
) -> None:
    """A stale cookie names a disk no one holds any more: a third host's take-over attempts,
    while the others are still held, never lock even that free lease, not for a moment (all or
    nothing, and nothing at all for an attempt bound to fail).  The free disk is the one whose
    lease is tried first, so an attempt that locked as it went would be seen."""
    pair = Pair(lockspace)
    try:
        src = pair.start("vm", disks)
        stale = pair.prepare()
        pair.incoming_start()
        pair.migrate()
        moved = pair.incoming
        assert moved is not None
        key_of = {d: hashlib.sha256(d.encode()).hexdigest() for d in disks}  # libvirt's naming
        first = min(disks, key=lambda d: key_of[d])
        moved.mgr.release_resource(ResourceType.DISK, first)
        late = hosts()
        mgr = late.manager("vm", src.uuid, disks, flags=NewFlags.MIGRATE)
        mgr.set_parameter("migration_cookie", stale)
        proc = late.launch(mgr)
        mgr.get_child(timeout=10)
        late.driver.config["handoff_timeout"] = 1.0
        free = lease_inode(lockspace, key_of[first])
        errors: list[BaseException] = []

        def complete() -> None:
            try:
                mgr.complete_migrate_in()
            except BaseException as e:  # judged below
                errors.append(e)

        t = threading.Thread(target=complete, daemon=True)
        readings = 0
        t.start()
        while t.is_alive():  # its attempts repeat for a second
            assert (free, 0, "WRITE") not in fd_locks(proc.pid), "an attempt locked the free lease"
            readings += 1
        assert readings > 50 and mgr.state is DomainState.MIGRATING_IN
        assert [type(e) for e in errors] == [lockfsm.LeaseConflict], errors
    finally:
        pair.cleanup()


def test_a_target_whose_incoming_guest_exited_can_cancel(pair: Pair, disks: list[str]) -> None:
    """QEMU exits when its incoming stream breaks: the target supervisor lets its reservations go
    and exits before the daemon cancels.  The cancel succeeds; the source resumes."""
    src = pair.start("vm", disks[:2])
    pair.prepare()
    tgt = pair.incoming_start(["sh", "-c", "sleep 0.3; exit 1"])
    assert tgt.proc.wait(10) == 1
    tgt.mgr.complete_migrate_in(cancel=True)
    assert tgt.mgr.state is DomainState.CANCELLED
    src.mgr.complete_migrate_in(cancel=True)
    assert src.mgr.state is DomainState.STARTED


@pytest.mark.parametrize("domain_lease", [True, False])
def test_a_guest_with_shared_disks_only_runs_on_one_side(
    lockspace: str, disks: list[str], domain_lease: bool
) -> None:
    """S3 for a guest whose disks are all shared: no disk lease is exclusive, so only the
    guest's own lease on its uuid (domain_lease, on by default) makes the target's take-over
    wait for the source's handoff.  Without it the target would take over while the source's
    guest still runs -- shown here, so that this test fails if the domain lease stops working."""
    pair = Pair(lockspace, domain_lease=domain_lease, handoff_timeout=0.3)
    try:
        src = pair.start("vm", shared=disks[2:3])
        pair.prepare()
        tgt = pair.incoming_start()
        if domain_lease:
            with pytest.raises(lockfsm.LeaseConflict, match="the own lease of guest"):
                tgt.mgr.complete_migrate_in()
            assert src.pid is not None and alive(src.pid)
            src.mgr.complete_migrate_in()
            tgt.mgr.complete_migrate_in()
        else:
            tgt.mgr.complete_migrate_in()  # at once: the source's guest still runs
            assert src.pid is not None and alive(src.pid)
            src.mgr.complete_migrate_in()
        assert (src.mgr.state, tgt.mgr.state) == (DomainState.DONE, DomainState.STARTED)
    finally:
        pair.cleanup()


def test_source_supervisor_crash_mid_migration(
    pair: Pair, disks: list[str], lockspace: str, third: Host
) -> None:
    """kill -9 of the source supervisor: its guest dies; the target's reservation still keeps a
    third host out; the target may take over (its daemon decides, from QEMU's outcome)."""
    src = pair.start("vm", disks[:2])
    pair.prepare()
    tgt = pair.incoming_start()
    os.kill(src.supervisor_pid, signal.SIGKILL)
    assert src.pid is not None
    wait_until(lambda: not alive(src.pid), what="source guest to die")  # type: ignore[arg-type]
    refused_to_third(third, pair, disks)
    tgt.mgr.complete_migrate_in()
    assert all(b == {0} for b in held_bytes(tgt.supervisor_pid, lockspace, tgt.mgr).values())
    src.mgr.shutdown()  # the source supervisor is gone: shutdown still succeeds
    assert src.mgr.state is DomainState.STOPPED


def test_target_supervisor_crash_mid_migration(
    pair: Pair, disks: list[str], lockspace: str
) -> None:
    src = pair.start("vm", disks[:2])
    pair.prepare()
    tgt = pair.incoming_start()
    os.kill(tgt.supervisor_pid, signal.SIGKILL)
    assert tgt.pid is not None
    wait_until(lambda: not alive(tgt.pid), what="incoming guest to die")  # type: ignore[arg-type]
    with pytest.raises(lockfsm.BackendError, match="gone"):
        tgt.mgr.complete_migrate_in()
    src.mgr.complete_migrate_in(cancel=True)
    assert all(b == {0} for b in held_bytes(src.supervisor_pid, lockspace, src.mgr).values())


def test_concurrent_completions_from_threads(pair: Pair, disks: list[str]) -> None:
    """Both daemons call at once, many times over: every run ends target started, source done."""
    for _ in range(3):
        src = pair.start("vm", disks[:2])
        pair.prepare()
        tgt = pair.incoming_start()
        threads = [
            threading.Thread(target=src.mgr.complete_migrate_in),
            threading.Thread(target=tgt.mgr.complete_migrate_in),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert (src.mgr.state, tgt.mgr.state) == (DomainState.DONE, DomainState.STARTED)
        src.mgr.shutdown()
        tgt.mgr.shutdown()


def test_nop_backend_migrates_with_no_lease(lockspace: str, disks: list[str]) -> None:
    pair = Pair(lockspace, backend="nop")
    try:
        src = pair.start("vm", disks[:1])
        pair.prepare()
        tgt = pair.incoming_start()
        pair.migrate("source-first")
        assert (src.mgr.state, tgt.mgr.state) == (DomainState.DONE, DomainState.STARTED)
    finally:
        pair.cleanup()
