"""High availability (issue 17): a cluster manager restarts a dead host's guests elsewhere with
the liveness API (``LockDriver.hosts``, ``host_status``) and ``wait_for_leases``, then the seed's
ordinary START -- never while a guest of the dead host could still run.

Host A runs guests; all of A is killed -9 (lease agent or sanlock daemon, supervisors, guests; its
daemon is this process's driver, which is simply never used again), or only A's lock-service
process with A's guests frozen (SIGSTOP: not dead).  Host B sees A dead, waits for the leases and
starts A's guests.  Judged from timestamps (each guest's death seen through a pidfd, the instant
B's START was sent) and from the lock service's own truth (etcd's keys, sanlock's owners).  The
times from A's crash to B's guests running are printed (``-s``)."""

from __future__ import annotations

import os
import select
import signal
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import pytest

import lockfsm
from lockfsm import DomainState, Liveness, ResourceType
from lockfsm.embed.standin import Guest, Host, make_disks, short_tmpdir
from lockfsm.protocol.kernel import alive, command_line
from tests.support.helpers import wait_until

DISK = ResourceType.DISK
ETCD_TTL = 4
GUESTS = 3


class Death:
    """When a process (not our child) died, on the monotonic clock, seen through a pidfd."""

    def __init__(self, pid: int) -> None:
        self.fd = os.pidfd_open(pid)
        self.at: float | None = None
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        select.select([self.fd], [], [])
        self.at = time.monotonic()
        os.close(self.fd)


def crash(guests: list[Guest], service: Callable[[], None], mode: str) -> list[Death]:
    """A's crash: ``all`` kills the lock-service process, the supervisors and the guests (-9);
    ``frozen`` stops the guests (SIGSTOP) and kills only the lock-service process."""
    deaths = []
    for g in guests:
        assert g.pid is not None
        pid = g.pid  # frozen once it runs the guest (not between fork and exec)
        wait_until(lambda pid=pid: command_line(pid)[:1] == ["sleep"], 5, "the guest to run")
        deaths.append(Death(pid))
        if mode == "frozen":
            os.kill(g.pid, signal.SIGSTOP)
    if mode == "all":  # the whole host at once: its guests and supervisors, then the service
        for g in guests:
            assert g.pid is not None
            for pid in (g.pid, g.supervisor_pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    service()
    return deaths


def restart_elsewhere(
    b: Host,
    guests: list[Guest],
    disks: list[str],
    deaths: list[Death],
    crashed: float,
    limit: float,
) -> list[float]:
    """B waits for each guest's leases, then STARTs it; the seconds from the crash to each
    guest running on B.  Every A guest was dead before B's START was sent."""
    took = []
    for g, disk, death in zip(guests, disks, deaths, strict=True):
        b.driver.wait_for_leases(g.uuid, [(DISK, disk)], timeout=limit)
        # The guest's locks go when its exit closes its files, a moment before it is a zombie
        # (it runs no code by then); it never outlives that moment.
        assert g.pid is not None
        pid = g.pid
        wait_until(lambda pid=pid: not alive(pid), 0.5, "A's guest dead once its leases are free")
        again = b.start(g.name, [disk], uuid=g.uuid)
        took.append(time.monotonic() - crashed)
        assert again.mgr.state is DomainState.STARTED
        death.thread.join(1)
        assert death.at is not None
    return took


# -- the API on one host --------------------------------------------------------------------------


def test_the_api_on_fcntl(hosts: Callable[..., Host], disks: list[str]) -> None:
    """fcntl sees only this host (alive); another name is unknown; wait_for_leases refuses
    bad input and names the holder when its time is up."""
    a = hosts()
    listed = a.driver.hosts()
    assert [h.state for h in listed] == [Liveness.ALIVE]
    assert a.driver.host_status("elsewhere").state is Liveness.UNKNOWN
    for bad in ("", 3, "x" * 300):
        with pytest.raises(lockfsm.InvalidArgument):
            a.driver.host_status(bad)  # type: ignore[arg-type]
    g = a.start("vm", disks[:1])
    with pytest.raises(lockfsm.InvalidArgument, match="timeout"):
        a.driver.wait_for_leases(g.uuid, [(DISK, disks[0])], timeout=-1)
    with pytest.raises(lockfsm.InvalidArgument, match="not-a-uuid"):
        a.driver.wait_for_leases("not-a-uuid", [(DISK, disks[0])], timeout=1)
    started = time.monotonic()
    with pytest.raises(lockfsm.LeaseConflict):
        a.driver.wait_for_leases(g.uuid, [(DISK, disks[0])], timeout=0.3)
    assert time.monotonic() - started < 5
    assert a.driver.wait_for_leases(str(uuidlib.uuid4()), [(DISK, disks[1])], timeout=1) < 1
    g.mgr.shutdown()


def test_nop_has_nothing_to_wait_for(workdir: str) -> None:
    driver = lockfsm.load_driver("nop", {"run_dir": workdir})
    with pytest.raises(lockfsm.Unsupported):
        driver.wait_for_leases("5eed0000-0000-4000-8000-00000000c0de", timeout=1)


@pytest.mark.parametrize("mode", ["all", "frozen"])
def test_fcntl_restart_on_one_host(hosts: Callable[..., Host], mode: str) -> None:
    """On one host (fcntl's case) a killed guest's leases are free at once; a frozen guest
    keeps its supervisor and its leases, so nothing may restart it (wait_for_leases times out,
    naming the holder) until it is killed."""
    a, b = hosts(), hosts()
    disks = make_disks(short_tmpdir("lfd"), *(f"d{i}" for i in range(GUESTS)))
    guests = [a.start(f"vm{i}", [disks[i]]) for i in range(GUESTS)]
    crashed = time.monotonic()
    if mode == "frozen":  # the supervisors live: nothing is free
        deaths = crash(guests, lambda: None, "frozen")
        with pytest.raises(lockfsm.LeaseConflict):
            b.driver.wait_for_leases(guests[0].uuid, [(DISK, disks[0])], timeout=0.5)
        for g in guests:
            os.kill(g.supervisor_pid, signal.SIGKILL)  # the host's crash, then
        crashed = time.monotonic()
    else:
        deaths = crash(guests, lambda: None, "all")
    took = restart_elsewhere(b, guests, disks, deaths, crashed, 10)
    print(f"\nfcntl ({mode}): A's guests running on B after {max(took) * 1000:.0f} ms")
    assert max(took) < 5


# -- etcd -----------------------------------------------------------------------------------------


@pytest.fixture
def etcd_sites(etcd1: Any) -> Iterator[Callable[..., Any]]:
    from tests.support.etcd_cluster import Site

    made: list[Site] = []
    prefix = etcd1.fresh_prefix()

    def make(name: str) -> Site:
        made.append(Site(etcd1, name, prefix, ttl=ETCD_TTL))
        return made[-1]

    yield make
    for site in made:
        site.close()


@pytest.mark.parametrize("mode", ["all", "frozen"])
def test_etcd_restart_elsewhere(etcd1: Any, etcd_sites: Callable[..., Any], mode: str) -> None:
    """B sees A alive, then -- once A's etcd lease has expired -- dead; B's starts succeed at
    once then, within TTL + 1 s of the crash, and each A guest was dead before: killed, or
    (frozen) stopped by its own supervisor at its deadline, before the lease expired."""
    from tests.support.etcd_cluster import held

    site_a, site_b = etcd_sites("hostA"), etcd_sites("hostB")
    a, b = site_a.host(), site_b.host()
    disks = make_disks(short_tmpdir("lfd"), *(f"d{i}" for i in range(GUESTS)))
    guests = [a.start(f"vm{i}", [disks[i]]) for i in range(GUESTS)]
    assert b.driver.host_status("hostA").state is Liveness.ALIVE
    with pytest.raises(lockfsm.LeaseConflict, match="hostA"):
        b.driver.wait_for_leases(guests[0].uuid, [(DISK, disks[0])], timeout=0.3)
    crashed = time.monotonic()
    deaths = crash(guests, site_a.agent.kill, mode)
    took = restart_elsewhere(b, guests, disks, deaths, crashed, ETCD_TTL + 10)
    status = b.driver.host_status("hostA")
    assert status.state is Liveness.DEAD and status.since is not None
    assert status.since <= time.time()
    with etcd1.client() as db:
        holders = {v["x"]["host"] for v in held(db, site_a.config["prefix"]).values()}
    assert holders == {"hostB"}
    if mode == "frozen":  # the supervisors stopped their guests themselves, before the expiry
        for d in deaths:
            assert d.at is not None and d.at - crashed < ETCD_TTL
    print(
        f"\netcd ({mode}): A's guests running on B {min(took):.2f}-{max(took):.2f} s after the "
        f"crash (TTL {ETCD_TTL} s)"
    )
    assert max(took) <= ETCD_TTL + 1


# -- sanlock (slow: a dead host's delta lease expires 8 x io_timeout + 60 s after it stopped) ----


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["all", "frozen"])
def test_sanlock_restart_elsewhere(cluster: Any, mode: str) -> None:
    """A is a sanlock host of its own (a daemon, a host_id); B sees it dead once its delta lease
    expired and then takes its guests' leases.  With ``frozen``, A's supervisors stop their
    guests as soon as their sanlock daemon is dead (nothing renews their leases)."""
    from lockfsm.fuzz.sanlock_daemons import HOSTS, IO_TIMEOUT, join_all, start_daemons, stop_all

    host_id = HOSTS + (3 if mode == "all" else 4)  # a crashed host_id cannot join again soon
    extra = start_daemons(cluster.base, host_id, 1)
    try:
        join_all(cluster, extra)
        a = Host("sanlock", cluster.lease_dir, **cluster.config(extra[0]))
        b = Host("sanlock", cluster.lease_dir, **cluster.config(cluster.daemons[0]))
        disks = make_disks(short_tmpdir("lfd"), *(f"d{i}" for i in range(GUESTS)))
        try:
            guests = [a.start(f"vm{i}", [disks[i]]) for i in range(GUESTS)]
            with pytest.raises(lockfsm.LeaseConflict):
                b.driver.wait_for_leases(guests[0].uuid, [(DISK, disks[0])], timeout=0.5)

            def kill_daemon() -> None:
                extra[0].proc.kill()
                extra[0].proc.wait(10)

            crashed = time.monotonic()
            deaths = crash(guests, kill_daemon, mode)
            if mode == "frozen":
                for g in guests:
                    assert g.pid is not None
                    wait_until(lambda g=g: not alive(g.pid), 10, "A's supervisor to stop it")
            limit = 8 * IO_TIMEOUT + 60 + 30
            took = restart_elsewhere(b, guests, disks, deaths, crashed, limit)
            print(
                f"\nsanlock ({mode}): A's guests running on B {max(took):.1f} s after the crash "
                f"(io_timeout {IO_TIMEOUT} s: a dead host's delta lease expires after "
                f"8 x io_timeout + 60 s = {8 * IO_TIMEOUT + 60} s)"
            )
            names = {h.name: h.state for h in b.driver.hosts()}
            assert Liveness.DEAD in names.values(), names
        finally:
            a.cleanup()
            b.cleanup()
    finally:
        stop_all(extra)


def test_status_lists_the_hosts(etcd1: Any, etcd_sites: Callable[..., Any]) -> None:
    """``lockfsm status --hosts`` lists the lockspace's hosts with their liveness: A alive, then
    dead once its agent is killed and etcd dropped its lease."""
    import json
    import subprocess
    import sys

    site_a, site_b = etcd_sites("hostA"), etcd_sites("hostB")
    command = [sys.executable, "-m", "lockfsm", "status", "--driver", "etcd"]
    command += ["--config", site_b.agent.conf_file, "--hosts"]

    def states() -> dict[str, str]:
        out = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        hosts = json.loads(out.stdout)
        return {h["name"]: h["state"] for h in hosts}

    assert states() == {"hostA": "alive", "hostB": "alive"}
    text = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
    assert "hostA" in text and "alive" in text
    site_a.agent.kill()
    wait_until(lambda: states().get("hostA") == "dead", ETCD_TTL + 10, "hostA to be dead")
    assert states()["hostB"] == "alive"
