"""Layer 3 on etcd: real etcd servers on loopback (one member, and a 3-member cluster), one real
``lockfsm-etcd-agent`` per simulated host, real supervisors and guests.

The backend-independent behaviours (start, conflicts, shared disks, hot-plug, a killed
supervisor, a daemon restart, migration in both orders), the etcd-only ones (what the keys say,
the handoff marker and the cookie's create revision, no window for a third host), and the faults
the issue lists: the leader killed, a holder's agent stopped past the TTL (its guest is stopped
before another host acquires: the order is asserted from timestamps), a host killed with -9 (its
leases come free within the TTL), a host partitioned from etcd, and N hosts racing to start one
guest.  The measured figures are printed (``-s``): latency against a bare etcd transaction in the
same run, and the take-over time after a host crash.

Every assertion about who holds what reads etcd's key space (through
lockfsm.backends.etcd.client)."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import pytest

import lockfsm
from lockfsm import DomainState, ResourceType
from lockfsm.agent.keys import KeySchema
from lockfsm.backends.etcd import agent_call
from lockfsm.backends.etcd.client import SyncEtcd, create, delete, get, prefix_end, put, value
from lockfsm.embed.standin import Guest, Host
from lockfsm.fuzz.machine import cookie_versions
from lockfsm.protocol.kernel import alive, process_state
from lockfsm.supervisor.leases import LeaseMachines
from lockfsm.supervisor.process import EXIT_REFUSED
from tests.support.etcd_cluster import TTL as SHARED_TTL
from tests.support.etcd_cluster import Cluster, Site, held
from tests.support.helpers import HostsPair, key_of, made_hosts, wait_until

EXIT_LEASE_LOST = 76
FAULT_TTL = 2  # the agents of the fault tests: a fence within ~1.5 s, a dead host's keys in ~2


@pytest.fixture
def hosts(shared_sites: list[Site]) -> Iterator[Callable[..., Host]]:
    """``make(i, **config)``: a daemon on shared host ``i``; its supervisors die at the end."""

    def new(i: int, **extra: Any) -> Host:
        return Host("etcd", shared_sites[i].dir, **shared_sites[i].config, **extra)

    with made_hosts(new) as make:
        yield make


@pytest.fixture
def sites() -> Iterator[Callable[..., Site]]:
    """``make(cluster, name, **config)``: a host with an agent of its own (for the fault tests),
    on a key prefix of the test's own."""
    made: list[Site] = []
    prefix: list[str] = []

    def make(cluster: Cluster, name: str, **config: Any) -> Site:
        if not prefix:
            prefix.append(cluster.fresh_prefix())
        made.append(Site(cluster, name, prefix[0], **config))
        return made[-1]

    yield make
    for site in made:
        site.close()


def exclusive_holder(client: SyncEtcd, prefix: str, key: str) -> dict[str, Any] | None:
    return held(client, prefix).get(key, {}).get("x")


class DeathWatch:
    """When a process (not our child) died -- or, with ``paused``, stopped executing (SIGSTOP:
    state T) -- on the monotonic clock: seen through a pidfd, or /proc every millisecond, so
    never earlier than it happened."""

    def __init__(self, pid: int, paused: bool = False) -> None:
        self.pid = pid
        self.fd = os.pidfd_open(pid)
        self.died: float | None = None
        self.thread = threading.Thread(target=self._poll if paused else self._wait, daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        select.select([self.fd], [], [])
        self.died = time.monotonic()
        os.close(self.fd)

    def _poll(self) -> None:
        while True:
            if process_state(self.pid) in ("T", "t", "Z", "X", ""):
                self.died = time.monotonic()
                return
            time.sleep(0.001)


def acquire_when_free(
    holder: LeaseMachines, lease: dict[str, str], limit: float, pause: float = 0.01
) -> tuple[float, int]:
    """Try to acquire until it succeeds; (monotonic instant the successful request was sent,
    number of refusals before it)."""
    refused = 0
    deadline = time.monotonic() + limit
    while True:
        sent = time.monotonic()
        try:
            holder.acquire(lease, "disk racing")
            return sent, refused
        except lockfsm.LeaseConflict:
            refused += 1
        except lockfsm.BackendError:
            refused += 1  # etcd unavailable for a moment (an election)
        assert time.monotonic() < deadline, f"not acquired in {limit} s ({refused} refusals)"
        time.sleep(pause)


# -- configuration (no etcd needed) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("endpoints", "127.0.0.1:2379", "list"),
        ("endpoints", [], "list"),
        ("endpoints", ["ftp://127.0.0.1:2379"], "http:// or https://"),
        ("endpoints", ["127.0.0.1:99999"], "port"),
        ("ttl", 0, "1..3600"),
        ("ttl", 2.5, "whole number"),
        ("fence_margin", 0, "(0, 1800)"),
        ("fence_margin", 2.0, "below half the ttl"),
        ("host_name", "a b", "host name"),
        ("prefix", "lockfsm", "prefix"),
        ("agent_socket", "relative.sock", "absolute"),
    ],
)
def test_config_is_checked(workdir: str, key: str, value: Any, says: str) -> None:
    config: dict[str, Any] = {"run_dir": workdir, "ttl": 4, key: value}
    with pytest.raises(lockfsm.InvalidArgument, match=key) as err:
        lockfsm.load_driver("etcd", config)
    assert says in str(err.value)


def test_no_agent_is_a_backend_error(workdir: str) -> None:
    with pytest.raises(lockfsm.BackendError, match="lockfsm-etcd-agent"):
        lockfsm.load_driver("etcd", {"run_dir": workdir, "host_name": "nowhere"})


def test_the_agent_must_run_with_the_same_settings(shared_sites: list[Site]) -> None:
    site = shared_sites[0]
    with pytest.raises(lockfsm.BackendError, match="one host, one configuration"):
        lockfsm.load_driver("etcd", {**site.config, "run_dir": site.dir, "ttl": 9})


def test_the_supervisor_and_the_daemon_import_no_etcd_client() -> None:
    """The heavy client lives in the agent only: the naming half and the holder are plain
    sockets (the supervisor runs once per guest)."""
    import subprocess
    import sys

    code = (
        "import sys, lockfsm.supervisor.process, lockfsm.backends.etcd as e, lockfsm;"
        "e.EtcdHolder({'run_dir': '/tmp', 'ttl': 4}, None);"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'aetcd', 'asyncio') "
        "or m == 'lockfsm.backends.etcd.client'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# -- the synchronous client ------------------------------------------------------------------


def test_sync_client_hides_its_loop(etcd1: Cluster) -> None:
    """No event loop leaks into callers: the client works from a plain thread, from several at
    once, and from inside another running loop (it blocks that loop, but never touches it)."""
    with etcd1.client() as client:
        key = f"/sync{os.getpid()}/k".encode()
        client.txn([], [put(key, b"1")])

        async def inside_a_loop() -> list[Any]:
            return client.range(key)

        assert asyncio.run(inside_a_loop())[0].value == b"1"
        results: list[bytes] = []
        threads = [
            threading.Thread(target=lambda: results.append(client.range(key)[0].value))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert results == [b"1"] * 8
        client.txn([], [delete(key)])


# -- start, conflicts, shared, hot-plug ------------------------------------------------------


def test_keys_name_their_holder_and_live_on_the_host_lease(
    hosts: Callable[..., Host], shared_sites: list[Site], db: SyncEtcd, disks: list[str]
) -> None:
    a = hosts(0)
    g = a.start("vm", disks[:1], shared=disks[2:])
    prefix = shared_sites[0].config["prefix"]
    exclusive = exclusive_holder(db, prefix, key_of(a, disks[0]))
    assert exclusive is not None
    assert (exclusive["host"], exclusive["pid"], exclusive["name"], exclusive["uuid"]) == (
        "hostA",
        g.supervisor_pid,
        "vm",
        g.uuid,
    )
    assert exclusive["resource"] == f"disk {disks[0]}"
    shared = held(db, prefix)[key_of(a, disks[2])]
    assert set(shared) == {"s"} and shared["s"]["mode"] == "shared"
    status = {r["key"]: r for r in a.driver.backend.holders()}  # the daemon's view, via the agent
    assert status[key_of(a, disks[0])]["kind"] == "exclusive"
    assert status[key_of(a, disks[0])]["holder"]["pid"] == g.supervisor_pid
    assert status[key_of(a, disks[2])]["kind"] == "shared"
    lease = shared_sites[0].agent.status()["lease"]
    rows = db.prefix(f"{prefix}L/{key_of(a, disks[0])}/".encode())
    assert [kv.lease for kv in rows] == [lease]
    g.mgr.shutdown()
    assert key_of(a, disks[0]) not in held(db, prefix)
    assert key_of(a, disks[2]) not in held(db, prefix)


def test_second_start_from_another_host_is_refused(
    hosts: Callable[..., Host], shared_sites: list[Site], db: SyncEtcd, disks: list[str]
) -> None:
    a, b = hosts(0), hosts(1)
    g = a.start("vm", disks[:2])
    marker = os.path.join(b.run_dir, "guest-ran")
    other_uuid = "5eed0000-0000-4000-8000-0000000000b2"  # another guest, one disk in common
    mgr = b.manager("vm2", other_uuid, disks[1:2])
    proc = b.launch(mgr, ["sh", "-c", f"touch {marker}; exec sleep 1000"])
    with pytest.raises(lockfsm.LeaseConflict) as err:
        mgr.get_child(timeout=10)
    assert proc.wait(10) == EXIT_REFUSED and not os.path.exists(marker)
    assert disks[1] in err.value.resource
    assert "hostA" in err.value.holder and "'vm'" in err.value.holder
    assert str(g.supervisor_pid) in err.value.holder
    prefix = shared_sites[0].config["prefix"]
    assert exclusive_holder(db, prefix, key_of(a, disks[1]))["host"] == "hostA"  # type: ignore[index]
    with pytest.raises(lockfsm.LeaseConflict, match="hostA"):  # the same guest, no disk at all:
        b.start("vm", uuid=g.uuid)  # its own lease on its uuid (domain_lease) is held on A
    g.mgr.shutdown()
    b.start("vm", disks[1:2]).mgr.shutdown()


def test_shared_leases_coexist(
    hosts: Callable[..., Host], shared_sites: list[Site], db: SyncEtcd, disks: list[str]
) -> None:
    a, b, c = hosts(0), hosts(1), hosts(2)
    ga = a.start("va", shared=disks[2:])
    gb = b.start("vb", shared=disks[2:])
    with pytest.raises(lockfsm.LeaseConflict, match="shared by"):
        c.start("vc", disks[2:])  # exclusive against two shared holders
    prefix = shared_sites[0].config["prefix"]
    key = key_of(a, disks[2])
    assert {kv.key.rsplit(b"/", 1)[-1] for kv in db.prefix(f"{prefix}L/{key}/s/".encode())} == {
        f"hostA.{ga.supervisor_pid}".encode(),
        f"hostB.{gb.supervisor_pid}".encode(),
    }
    ga.mgr.shutdown()
    with pytest.raises(lockfsm.LeaseConflict):
        c.start("vc", disks[2:])
    gb.mgr.shutdown()
    gc = c.start("vc", disks[2:])
    with pytest.raises(lockfsm.LeaseConflict, match="held by"):
        a.start("va", shared=disks[2:])  # shared against an exclusive holder
    gc.mgr.shutdown()


def test_hot_plug(
    hosts: Callable[..., Host], shared_sites: list[Site], db: SyncEtcd, disks: list[str]
) -> None:
    a, b = hosts(0), hosts(1)
    prefix = shared_sites[0].config["prefix"]
    g = a.start("vm", disks[:1])
    g.mgr.acquire_resource(ResourceType.DISK, disks[1])
    assert exclusive_holder(db, prefix, key_of(a, disks[1]))["pid"] == g.supervisor_pid  # type: ignore[index]
    with pytest.raises(lockfsm.LeaseConflict):
        b.start("other", disks[1:2])
    other = b.start("other", disks[2:3])
    with pytest.raises(lockfsm.LeaseConflict):
        other.mgr.acquire_resource(ResourceType.DISK, disks[1])
    g.mgr.release_resource(ResourceType.DISK, disks[1])
    assert key_of(a, disks[1]) not in held(db, prefix)
    other.mgr.acquire_resource(ResourceType.DISK, disks[1])
    other.mgr.shutdown()
    g.mgr.shutdown()


def test_killed_supervisor_frees_its_leases_at_once(
    hosts: Callable[..., Host], shared_sites: list[Site], db: SyncEtcd, disks: list[str]
) -> None:
    """L2: the supervisor dies, its guest dies (PR_SET_PDEATHSIG); the guest held the agent
    connection too, so when it closes both are dead, and the agent deletes the keys at once --
    hot-plugged ones included -- without waiting for the TTL."""
    a, b = hosts(0), hosts(1)
    prefix = shared_sites[0].config["prefix"]
    g = a.start("vm", disks[:1])
    g.mgr.acquire_resource(ResourceType.DISK, disks[1])
    keys = {key_of(a, d) for d in disks[:2]}
    assert g.pid is not None
    guest = DeathWatch(g.pid)
    killed = time.monotonic()
    os.kill(g.supervisor_pid, signal.SIGKILL)
    wait_until(lambda: not keys & set(held(db, prefix)), 5, "the keys to go")
    freed = time.monotonic()
    guest.thread.join(5)
    assert guest.died is not None and guest.died <= freed
    print(f"\netcd: supervisor killed -> keys deleted after {(freed - killed) * 1000:.0f} ms")
    assert freed - killed < SHARED_TTL / 2  # not the lease's expiry: at once
    b.start("vm", disks[:2]).mgr.shutdown()


def test_daemon_restart_attach_keeps_the_leases(
    hosts: Callable[..., Host], shared_sites: list[Site], db: SyncEtcd, disks: list[str]
) -> None:
    a, b = hosts(0), hosts(1)
    prefix = shared_sites[0].config["prefix"]
    g = a.start("vm", disks[:2])
    before = {k: v for k, v in held(db, prefix).items() if k in {key_of(a, d) for d in disks}}
    a.restart_daemon()
    mgr = a.attach(g)
    assert mgr.state is DomainState.STARTED
    after = {k: v for k, v in held(db, prefix).items() if k in {key_of(a, d) for d in disks}}
    assert after == before
    with pytest.raises(lockfsm.LeaseConflict):
        b.start("vm", disks[:1])
    mgr.shutdown()


# -- migration -----------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["target-first", "source-first"])
def test_handoff_moves_every_lease_in_one_transaction(
    hosts: Callable[..., Host], shared_sites: list[Site], db: SyncEtcd, disks: list[str], order: str
) -> None:
    """L1 and S3: the cookie carries each exclusive key's create revision (shared ones none);
    after both completions etcd says the target holds every lease, the source none, and the
    exclusive keys kept their create revision (the handoff moved them, it did not free them)."""
    prefix = shared_sites[0].config["prefix"]
    pair = HostsPair(hosts(0), hosts(1))
    src = pair.start("vm", disks[:2], shared=disks[2:])
    keys = {key_of(pair.source, d): d for d in disks}
    versions = cookie_versions(pair.prepare())
    for key, disk in keys.items():
        rows = db.range(f"{prefix}L/{key}/x".encode())
        if disk in disks[:2]:
            assert versions[key] == rows[0].create
        else:
            assert versions[key] is None and not rows
    tgt = pair.incoming_start()
    assert {k: set(v) for k, v in held(db, prefix).items() if k in keys} == {
        **{k: {"x", "r"} for k, d in keys.items() if d in disks[:2]},
        **{k: {"s", "r"} for k, d in keys.items() if d in disks[2:]},
    }
    pair.migrate(order)
    assert (src.mgr.state, tgt.mgr.state) == (DomainState.DONE, DomainState.STARTED)
    assert src.proc.wait(10) == 0
    now = {k: v for k, v in held(db, prefix).items() if k in keys}
    for key, disk in keys.items():
        kind = "s" if disk in disks[2:] else "x"
        assert set(now[key]) == {kind}, now[key]
        assert (now[key][kind]["host"], now[key][kind]["pid"]) == ("hostB", tgt.supervisor_pid)
        if kind == "x":
            assert db.range(f"{prefix}L/{key}/x".encode())[0].create == versions[key]
    with pytest.raises(lockfsm.LeaseConflict):
        hosts(2).start("vm", disks[:1])
    src.mgr.shutdown()
    tgt.mgr.shutdown()
    assert not set(held(db, prefix)) & set(keys)


def test_no_window_for_a_third_host(
    hosts: Callable[..., Host], shared_sites: list[Site], db: SyncEtcd, disks: list[str]
) -> None:
    """S3 with no window at all: while the target reserves, a third host is refused; after the
    source handed off and before the target took over, the keys say "handed off to" that
    target, and the third host is refused again; the target then takes every lease."""
    prefix = shared_sites[0].config["prefix"]
    pair = HostsPair(hosts(0), hosts(1))
    third = hosts(2)
    src = pair.start("vm", disks[:2], shared=disks[2:])
    pair.prepare()
    tgt = pair.incoming_start()
    with pytest.raises(lockfsm.LeaseConflict, match=r"held by .*hostA"):
        third.start("vm", disks[:2])
    src.mgr.complete_migrate_in()  # the source's guest is dead, its keys handed off
    for d in disks[:2]:
        x = exclusive_holder(db, prefix, key_of(third, d))
        assert x is not None and x["handed_off_to"]["host"] == "hostB"
        assert x["handed_off_to"]["pid"] == tgt.supervisor_pid
    with pytest.raises(lockfsm.LeaseConflict, match="handed off to an incoming migration") as e:
        third.start("vm", disks[:2])
    assert "hostB" in e.value.holder
    with pytest.raises(lockfsm.LeaseConflict, match="reserved by an incoming migration"):
        third.start("other", shared=disks[2:])  # the shared disk: its source gave it up
    tgt.mgr.complete_migrate_in()
    assert tgt.mgr.state is DomainState.STARTED
    for d in disks[:2]:
        assert exclusive_holder(db, prefix, key_of(third, d))["pid"] == tgt.supervisor_pid  # type: ignore[index]
    tgt.mgr.shutdown()


def test_a_take_over_with_a_stale_cookie_fails_at_once(
    hosts: Callable[..., Host], shared_sites: list[Site], db: SyncEtcd, disks: list[str]
) -> None:
    """The create revision is a fencing token: a target holding the cookie of a migration whose
    disk lease has since been freed and taken anew (another incarnation of the key) -- and whose
    guest lease (on its uuid) is gone -- is refused for good (LeaseConflict, final: no waiting
    for handoff_timeout), and its guest never runs."""
    a, b = hosts(0), hosts(1, handoff_timeout=20.0)
    pair = HostsPair(a, b)
    src = pair.start("vm", disks[:1])
    stale = pair.prepare()
    src.mgr.shutdown()  # no target yet: the key is deleted
    again = a.start("vm", disks[:1])  # a new incarnation of the key
    pair.cookie = stale
    pair.guest = src
    tgt = pair.incoming_start()
    again.mgr.shutdown()  # handed off to the stale target's reservation...
    started = time.monotonic()
    with pytest.raises(lockfsm.LeaseConflict, match=r"changed hands|no longer holds"):
        tgt.mgr.complete_migrate_in()  # ...but at another create revision
    assert time.monotonic() - started < 5
    assert tgt.mgr.state is DomainState.MIGRATING_IN
    tgt.mgr.complete_migrate_in(cancel=True)
    tgt.mgr.shutdown()
    prefix = shared_sites[0].config["prefix"]
    assert key_of(a, disks[0]) not in held(db, prefix)  # the cancel took the marker with it


# -- faults ------------------------------------------------------------------------------------


def fenced_before_acquired(
    victim: Guest,
    other: Site,
    lease: dict[str, str],
    fault: Callable[[], None],
    limit: float,
    paused: bool = False,
) -> tuple[float, float, float]:
    """Run ``fault``; another host acquires ``lease`` in a tight loop meanwhile.  Returns
    (fault instant, guest death instant, instant the other host's winning request was sent),
    monotonic.  The guest's death is seen through a pidfd (seen no earlier than it happened);
    the request was sent no later than etcd granted it: death < sent proves the order."""
    assert victim.pid is not None
    death = DeathWatch(victim.pid, paused)
    racer = other.holder()
    racer.watch([])
    with pytest.raises(lockfsm.LeaseConflict):
        racer.acquire(lease, "disk racing")
    at = time.monotonic()
    fault()
    sent, _ = acquire_when_free(racer, lease, limit)
    death.thread.join(5)
    assert death.died is not None, "the guest was never stopped"
    racer.release(lease)
    return at, death.died, sent


@pytest.mark.parametrize("policy", ["poweroff", "pause"])
def test_a_stopped_agent_fences_its_guest_before_another_host_acquires(
    etcd1: Cluster, sites: Callable[..., Site], db: SyncEtcd, disks: list[str], policy: str
) -> None:
    """SIGSTOP the holder's host process (its lease agent) past the TTL: its supervisor sees
    no "valid until" newer than the last, and at that deadline stops the guest by the domain's
    policy (poweroff: killed; pause: SIGSTOPped), before etcd could let the lease expire; only
    then does another host acquire.  After SIGCONT the agent never resumes the old lease (it
    was given up at the deadline): the supervisor stays lost, and the host starts guests again
    on a new lease."""
    a, b = sites(etcd1, "hostA", ttl=FAULT_TTL), sites(etcd1, "hostB", ttl=FAULT_TTL)
    ha = a.host(lock_failure=policy)
    g = ha.start("vm", disks[:1])
    lease = {"key": key_of(ha, disks[0]), "mode": "exclusive"}
    at, died, acquired = fenced_before_acquired(
        g, b, lease, lambda: a.agent.signal(signal.SIGSTOP), FAULT_TTL + 3, policy == "pause"
    )
    print(
        f"\netcd ({policy}): agent stopped at 0; guest stopped at {died - at:.2f} s; another "
        f"host acquired at {acquired - at:.2f} s (TTL {FAULT_TTL} s, margin {FAULT_TTL / 4:g} s)"
    )
    assert died < acquired, "S2: another host acquired while the guest could still run"
    assert died - at < FAULT_TTL, "the guest must be stopped before the TTL runs out"
    a.agent.signal(signal.SIGCONT)
    wait_until(lambda: "lost" in a.agent.log(), 5, "the agent to give the old lease up")
    wait_until(a.agent.ready, 10, "a new lease")
    if policy == "pause":
        assert g.pid is not None and alive(g.pid)  # it exists, and executes no more
        assert g.mgr.check() is DomainState.FAILED
        assert g.mgr.failure is not None and "deadline" in g.mgr.failure
        g.mgr.shutdown()
    assert g.proc.wait(10) == EXIT_LEASE_LOST
    again = ha.start("vm2", disks[1:2])  # a new lease serves new guests
    assert again.pid is not None and alive(again.pid)
    again.mgr.shutdown()


def test_a_holder_never_resumes_on_a_late_answer(
    etcd1: Cluster, sites: Callable[..., Site], disks: list[str]
) -> None:
    """The holder's side of the deadline, without a supervisor: lost once its deadline passed
    with no newer proof, and lost for good -- whatever the agent says after SIGCONT.  The agent
    lets the keys of this holder (which acknowledged nothing meanwhile) go, but never touches
    its process's children: it is no supervisor, it has no guest.  (The agent used to SIGKILL
    every child of the test process, the agent and etcd among them.)"""
    bystander = subprocess.Popen(["sleep", "60"])
    a = sites(etcd1, "hostA", ttl=FAULT_TTL)
    holder = a.holder()
    holder.watch([])
    lease = {"key": "late" + str(os.getpid()), "mode": "exclusive"}
    holder.acquire(lease, "disk late")
    assert holder.poll() is None
    deadline = holder.next_check()
    assert deadline is not None and 0 < deadline - time.monotonic() <= FAULT_TTL * 0.75
    a.agent.signal(signal.SIGSTOP)
    try:
        time.sleep(max(0.0, deadline - time.monotonic()) + 0.05)
        assert holder.poll() is not None, "past the deadline with no proof: lost"
        assert holder.next_check() is None
    finally:
        a.agent.signal(signal.SIGCONT)
    wait_until(a.agent.ready, 10, "the agent's new lease")
    time.sleep(FAULT_TTL / 2)  # pushes of the new lease arrive
    reason = holder.poll()
    assert reason is not None and "deadline" in reason
    fresh = a.holder()  # the old lease is gone for good (expired, then revoked): free
    fresh.watch([])
    fresh.acquire(lease, "disk late")
    assert fresh.poll() is None and holder.poll() == reason
    holder.release(lease)  # lost: told to the agent, not waited for
    fresh.release(lease)
    assert bystander.poll() is None and a.agent.proc is not None and a.agent.proc.poll() is None
    bystander.kill()
    bystander.wait()


def test_a_validity_push_during_the_last_release_is_no_loss(
    shared_sites: list[Site], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A validity push the agent sends while the holder waits for the reply to its release of
    its last keys is a push for the lease those keys are still on: no loss, no crash.  (Found by
    the fault matrix: the holder forgot its lease before the release was answered, and a push
    in that window killed a migration source's supervisor with a TypeError.)"""
    holder = shared_sites[0].holder()
    etcd_holder: Any = holder.holder
    holder.watch([])
    lease = {"key": f"push-during-release-{os.getpid()}", "mode": "exclusive"}
    holder.acquire(lease, "disk pushed")
    on_lease, until = etcd_holder.lease_id, etcd_holder.valid_until
    assert on_lease is not None
    real_call = etcd_holder._call

    def call_with_a_push_first(request: dict[str, Any], timeout: float | None = None) -> Any:
        if request["op"] == "release":  # the agent's push, read before the reply
            etcd_holder._message({"push": "valid", "lease": on_lease, "valid_until": until})
        return real_call(request, timeout)

    monkeypatch.setattr(etcd_holder, "_call", call_with_a_push_first)
    holder.release_all([lease])
    assert holder.poll() is None and etcd_holder.lost is None
    assert etcd_holder.lease_id is None  # nothing held: no lease to follow


def two_holders(
    etcd1: Cluster, shared_sites: list[Site], name: str
) -> tuple[LeaseMachines, LeaseMachines, dict[str, str], Callable[[], bytes | None]]:
    """A source's and a target's lease machines (hosts 0 and 1, watching), an exclusive lease
    named after ``name``, and a reader of its ``x`` key's value in etcd."""
    src, dst = shared_sites[0].holder(), shared_sites[1].holder()
    src.watch([])
    dst.watch([])
    key = f"{name}-{os.getpid()}"
    x = KeySchema(shared_sites[0].config["prefix"]).exclusive(key)

    def value_of_x() -> bytes | None:
        with etcd1.client() as client:
            rows = client.range(x)
        return rows[0].value if rows else None

    return src, dst, {"key": key, "mode": "exclusive"}, value_of_x


def test_a_release_read_ahead_by_peek_is_right_when_the_reservations_changed_since(
    etcd1: Cluster, shared_sites: list[Site]
) -> None:
    """The source's agent reads the reservations while the guest dies (``expect_release``: the
    agent's peek), and the release's one transaction goes by those rows.  Rows out of date
    cost a try, never a wrong give-up: (1) a reservation made after the peek still gets the
    lease handed off (the target's take-over then succeeds); (2) a reservation let go after
    the peek does not leave a marker nobody can take: the key is deleted."""
    src, dst, lease, value_of_x = two_holders(etcd1, shared_sites, "peeked")

    # (1) peeked with no reservation; then the target reserves; then the release.
    src.acquire(lease, "disk peeked")
    assert value_of_x() is not None, lease
    data = src.handoff_data(lease)
    src.holder.expect_release()
    time.sleep(0.2)  # the peek is read (no reply is awaited)
    dst.reserve({**lease, **data}, "disk peeked")
    src.release(lease)
    assert b"handed_off_to" in (value_of_x() or b""), value_of_x()
    dst.take_over([({**lease, **data}, "disk peeked")])
    assert b"handed_off_to" not in (value_of_x() or b"handed_off_to")

    # (2) the other way: peeked with the reservation, which is let go before the release.
    data = dst.handoff_data(lease)
    src.reserve({**lease, **data}, "disk peeked")
    dst.holder.expect_release()
    time.sleep(0.2)
    src.release(lease)  # the reservation goes (its migration was called off)
    dst.release(lease)
    assert value_of_x() is None  # deleted, not a marker for a reservation that is gone


def etcd_requests(site: Site) -> dict[str, int]:
    """What the site's lease agent has asked etcd so far: {"reads": n, "writes": m}."""
    counts: dict[str, int] = agent_call(site.config["agent_socket"], {"op": "status"}, 5.0)[
        "etcd_requests"
    ]
    return counts


def test_a_prepared_handoff_is_released_in_one_transaction_without_a_read(
    etcd1: Cluster, shared_sites: list[Site]
) -> None:
    """Once the migration is prepared (``expect_handoff``) the source's agent follows the
    reservations with a watch, so the release is one etcd transaction and no read, however
    soon the guest died: (1) a reservation made after the migration was prepared gets the lease
    handed off (the target's take-over then succeeds); (2) a reservation let go before the
    release leaves no marker: the key is deleted.  Both are one write."""
    src, dst, lease, value_of_x = two_holders(etcd1, shared_sites, "followed")

    def prepared(site: Site, holder: LeaseMachines) -> None:
        before = etcd_requests(site)["reads"]
        holder.holder.expect_handoff(True)
        wait_until(lambda: etcd_requests(site)["reads"] > before, 2, "the follow's one read")

    # (1) followed before the target reserves; the release is one write, a handoff.
    src.acquire(lease, "disk followed")
    data = src.handoff_data(lease)
    prepared(shared_sites[0], src)
    dst.reserve({**lease, **data}, "disk followed")
    time.sleep(0.2)  # the watch tells the source's agent of the reservation
    before = etcd_requests(shared_sites[0])
    src.release(lease)
    assert etcd_requests(shared_sites[0]) == {**before, "writes": before["writes"] + 1}
    assert b"handed_off_to" in (value_of_x() or b""), value_of_x()
    dst.take_over([({**lease, **data}, "disk followed")])
    assert b"handed_off_to" not in (value_of_x() or b"handed_off_to")

    # (2) the other way: followed with the reservation, which is let go before the release.
    data = dst.handoff_data(lease)
    src.reserve({**lease, **data}, "disk followed")
    prepared(shared_sites[1], dst)
    src.release(lease)  # the reservation goes (its migration was called off)
    time.sleep(0.2)
    before = etcd_requests(shared_sites[1])
    dst.release(lease)
    assert etcd_requests(shared_sites[1]) == {**before, "writes": before["writes"] + 1}
    assert value_of_x() is None  # deleted, not a marker for a reservation that is gone


def test_a_waiting_take_over_wakes_on_the_watch_and_does_not_poll(
    hosts: Callable[..., Host], shared_sites: list[Site], disks: list[str]
) -> None:
    """The target completes first and waits 0.1 s for its source: its agent tries the
    take-over once, watches, and tries again when the source's release changes the keys --
    two transactions, not one every few milliseconds."""
    pair = HostsPair(hosts(0), hosts(1))
    pair.start("vm", disks[:2])
    pair.prepare()
    tgt = pair.incoming_start()
    before = etcd_requests(shared_sites[1])["writes"]
    pair.migrate("target-first", pause=0.1)
    assert tgt.mgr.state is DomainState.STARTED
    assert etcd_requests(shared_sites[1])["writes"] - before == 2
    tgt.mgr.shutdown()


def test_a_killed_host_frees_its_leases_within_the_ttl(
    etcd1: Cluster, sites: Callable[..., Site], disks: list[str]
) -> None:
    """kill -9 of a whole host (its agent, then its supervisors and guests): nothing deletes
    its keys, etcd expires its lease, and another host acquires within the TTL (plus etcd's
    expiry check, every 500 ms).  sanlock's bound for the same crash: 8 x io_timeout + 60 s."""
    a, b = sites(etcd1, "hostA", ttl=FAULT_TTL), sites(etcd1, "hostB", ttl=FAULT_TTL)
    ha = a.host()
    g = ha.start("vm", disks[:1])
    lease = {"key": key_of(ha, disks[0]), "mode": "exclusive"}
    racer = b.holder()
    racer.watch([])

    def crash() -> None:
        a.agent.kill()
        os.kill(g.supervisor_pid, signal.SIGKILL)
        assert g.pid is not None
        with suppress(ProcessLookupError):
            os.kill(g.pid, signal.SIGKILL)

    at = time.monotonic()
    crash()
    sent, refused = acquire_when_free(racer, lease, FAULT_TTL + 5)
    took = sent - at
    print(
        f"\netcd: host killed -> its lease taken over by another host after {took:.2f} s "
        f"({refused} refusals; TTL {FAULT_TTL} s; sanlock: 8 x io_timeout + 60 s = 68 s at "
        "io_timeout 1)"
    )
    assert took <= FAULT_TTL + 1.5
    racer.release(lease)


def test_a_killed_agent_not_back_fences_its_guests_by_the_deadline(
    etcd1: Cluster, sites: Callable[..., Site], disks: list[str]
) -> None:
    """kill -9 of the agent alone, and no new agent: every supervisor of the host tries to
    reconnect (a restarted agent would take them up) until its local deadline (ttl -
    fence_margin after the last keepalive), then stops its guest -- before the keys go with the
    lease's expiry and another host acquires."""
    a, b = sites(etcd1, "hostA", ttl=FAULT_TTL), sites(etcd1, "hostB", ttl=FAULT_TTL)
    ha = a.host()
    g = ha.start("vm", disks[:1])
    lease = {"key": key_of(ha, disks[0]), "mode": "exclusive"}
    at, died, acquired = fenced_before_acquired(g, b, lease, a.agent.kill, FAULT_TTL + 3)
    print(f"\netcd: agent killed -> guest stopped after {(died - at) * 1000:.0f} ms")
    assert died - at <= FAULT_TTL and died < acquired
    assert g.proc.wait(10) == EXIT_LEASE_LOST


def test_killing_the_leader_keeps_held_leases(
    etcd3: Cluster, sites: Callable[..., Site], disks: list[str]
) -> None:
    """kill -9 the leader of three: the agents fail over to the other members (each agent is
    given all three), the held keys survive (same create revision, holder and lease), no guest
    is fenced, and another host, trying all along, never gets the lease.  The killed member is
    brought back at the end.  TTL 5: fence_margin 1.25 s, keepalives every 1.7 s, so an outage
    of at least 2 s is ridden out (an election here takes 0.5-1 s)."""
    ttl = 5
    a = sites(etcd3, "hostA", ttl=ttl)
    b = sites(etcd3, "hostB", ttl=ttl)
    ha = a.host()
    g = ha.start("vm", disks[:1])
    assert g.pid is not None
    death = DeathWatch(g.pid)
    key = key_of(ha, disks[0])
    prefix = a.config["prefix"]
    with etcd3.client() as client:
        before = client.range(f"{prefix}L/{key}/x".encode())
    racer = b.holder()
    racer.watch([])
    leader = etcd3.leader()
    leader.kill()
    killed = time.monotonic()
    tries = refusals = 0
    try:
        while time.monotonic() - killed < 2 * ttl:
            tries += 1
            try:
                racer.acquire({"key": key, "mode": "exclusive"}, "disk racing")
            except lockfsm.LeaseConflict:
                refusals += 1
            except lockfsm.BackendError:
                pass  # no leader yet
            else:
                assert death.died is not None, "S1: another host acquired while the guest ran"
                raise AssertionError("the held lease did not survive the election")
            assert death.died is None, f"the guest was fenced: {a.agent.log()}"
            time.sleep(0.05)
    finally:
        leader.start(new=False)
    with etcd3.client() as client:
        after = client.range(f"{prefix}L/{key}/x".encode())
    assert [(kv.create, kv.value, kv.lease) for kv in after] == [
        (kv.create, kv.value, kv.lease) for kv in before
    ]
    assert g.proc.poll() is None
    gaps = [line for line in a.agent.log().splitlines() if "succeeds again" in line]
    print(
        f"\netcd: leader killed; {refusals}/{tries} tries from another host refused (the rest "
        f"found no leader); the holder's guest never stopped; {gaps[-1] if gaps else ''}"
    )
    assert refusals > 0
    etcd3.wait_healthy()
    g.mgr.shutdown()


def test_a_host_partitioned_from_etcd_is_fenced_first(
    etcd3: Cluster, sites: Callable[..., Site], disks: list[str]
) -> None:
    """A host that reaches etcd through one member only is cut off when that member stops
    (SIGSTOP: no connection error, just silence).  Its guest is stopped at the local deadline,
    before the lease expires on the other members, where another host then acquires.  When
    the member comes back the partitioned agent's late answers are never used: the lease was
    given up for good."""
    members = etcd3.members
    lonely = next(m for m in members if m is not etcd3.leader())
    others = [m.endpoint for m in members if m is not lonely]
    a = sites(etcd3, "hostA", ttl=FAULT_TTL, endpoints=[lonely.endpoint])
    b = sites(etcd3, "hostB", ttl=FAULT_TTL, endpoints=others)
    ha = a.host()
    g = ha.start("vm", disks[:1])
    lease = {"key": key_of(ha, disks[0]), "mode": "exclusive"}
    try:
        at, died, acquired = fenced_before_acquired(
            g, b, lease, lambda: lonely.signal(signal.SIGSTOP), FAULT_TTL + 4
        )
    finally:
        lonely.signal(signal.SIGCONT)
    print(
        f"\netcd: partitioned at 0; guest stopped at {died - at:.2f} s; another host acquired "
        f"at {acquired - at:.2f} s"
    )
    assert died < acquired and died - at < FAULT_TTL
    assert g.proc.wait(10) == EXIT_LEASE_LOST
    wait_until(a.agent.ready, 15, "the partitioned agent's new lease")
    assert "lost" in a.agent.log()


@pytest.mark.parametrize(
    ("n", "rounds"), [(4, 3), pytest.param(6, 25, marks=pytest.mark.slow, id="slow")]
)
def test_n_hosts_racing_to_start_one_guest(
    etcd1: Cluster, sites: Callable[..., Site], disks: list[str], n: int, rounds: int
) -> None:
    """N hosts start the same guest at the same instant: exactly one wins, every time; the
    others exit EX_TEMPFAIL having started nothing."""
    racers = [sites(etcd1, f"host{i}").host() for i in range(n)]
    uuid = "5eed0000-0000-4000-8000-00000000ace5"
    for _ in range(rounds):
        mgrs = [h.manager("vm", uuid, disks[:2]) for h in racers]
        barrier = threading.Barrier(n)
        outcomes: list[Any] = [None] * n

        def race(
            i: int, mgrs: list[Any] = mgrs, barrier: Any = barrier, outcomes: list[Any] = outcomes
        ) -> None:
            barrier.wait()
            proc = racers[i].launch(mgrs[i])
            try:
                outcomes[i] = ("won", mgrs[i].get_child(timeout=10))
            except lockfsm.LeaseConflict as e:
                outcomes[i] = ("lost", proc.wait(10), e)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        winners = [i for i, o in enumerate(outcomes) if o and o[0] == "won"]
        assert len(winners) == 1, outcomes
        assert all(o[1] == EXIT_REFUSED for o in outcomes if o[0] == "lost"), outcomes
        mgrs[winners[0]].shutdown()


# -- figures --------------------------------------------------------------------------------------


def _ms(values: list[float]) -> str:
    v = sorted(values)
    return (
        f"median {statistics.median(v) * 1000:5.2f} ms, p90 {v[int(len(v) * 0.9)] * 1000:5.2f} ms"
    )


@pytest.mark.parametrize("members", [1, 3])
def test_latency_against_a_bare_transaction(
    request: pytest.FixtureRequest, sites: Callable[..., Site], members: int
) -> None:
    """Not a timed assertion: prints acquire, release and handoff latency through lockfsm
    (holder -> agent -> etcd, as a supervisor sees it) next to bare etcd transactions of the
    same shapes, in the same run, on the same cluster (each client talks to the first
    member, as the agent does).  A handoff is the source's release of a reserved key (a
    transaction that finds the reservation, then the marker's) plus the target's take-over."""
    cluster: Cluster = request.getfixturevalue("etcd1" if members == 1 else "etcd3")
    a, b = sites(cluster, "hostA").holder(), sites(cluster, "hostB").holder()
    a.watch([])
    b.watch([])
    rounds = 40
    figures: dict[str, list[float]] = {
        k: [] for k in ("acq", "rel", "hand", "bacq", "brel", "bhand")
    }
    lease = {"key": f"bench{os.getpid()}", "mode": "exclusive"}
    for _ in range(rounds):
        t = time.perf_counter()
        a.acquire(lease, "bench")
        figures["acq"].append(time.perf_counter() - t)
        t = time.perf_counter()
        a.release(lease)
        figures["rel"].append(time.perf_counter() - t)
    for i in range(rounds):  # a hands the lease to b and b back to a, in turn
        src, dst = (a, b) if i % 2 == 0 else (b, a)
        if i == 0:
            src.acquire(lease, "bench")
        data = src.handoff_data(lease)
        dst.reserve({**lease, **data}, "bench")
        t = time.perf_counter()
        src.release(lease)  # the source hands off (its guest is dead)
        dst.take_over([({**lease, **data}, "bench")])  # one take-over transaction, settled
        figures["hand"].append(time.perf_counter() - t)
    (b if rounds % 2 else a).release(lease)

    async def bare(etcd: Any) -> None:
        base = f"/bench{os.getpid()}/{members}/".encode()
        x, r = base + b"x", base + b"r"
        for _ in range(rounds):
            t = time.perf_counter()
            await etcd.txn([create(base, 0, prefix_end(base))], [put(x, b"v"), get(x)], [get(base)])
            figures["bacq"].append(time.perf_counter() - t)
            t = time.perf_counter()
            await etcd.txn([value(x, b"v"), create(r, 0)], [delete(x)], [get(x), get(r)])
            figures["brel"].append(time.perf_counter() - t)
        await etcd.txn([], [put(x, b"v"), put(r, b"r")])
        for _ in range(rounds):
            t = time.perf_counter()
            await etcd.txn([value(x, b"v"), create(r, 0)], [delete(x)], [get(x), get(r)])
            await etcd.txn([value(x, b"v"), value(r, b"r")], [put(x, b"m")], [])
            await etcd.txn(
                [value(r, b"r"), value(x, b"m")], [put(x, b"v"), delete(r), get(x)], [get(base)]
            )
            figures["bhand"].append(time.perf_counter() - t)
            await etcd.txn([], [put(r, b"r")])
        await etcd.txn([], [delete(x), delete(r)])

    with cluster.client() as client:
        client.run(bare)
    where = "one member" if members == 1 else "three members"
    print(f"\netcd latency, {rounds} rounds, {where} on loopback (lockfsm | bare etcd):")
    for label, ours, theirs in (
        ("acquire", "acq", "bacq"),
        ("release", "rel", "brel"),
        ("handoff (hand off + take over)", "hand", "bhand"),
    ):
        print(f"  {label:31s} {_ms(figures[ours])} | {_ms(figures[theirs])}")
