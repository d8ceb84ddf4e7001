"""etcd in production, part 2: the lease agent as an operator runs it (issue 15).

A real etcd member and real ``lockfsm-etcd-agent`` processes.  An agent restart (kill -9, and
SIGTERM as ``systemctl restart`` sends it) stops none of a host's 20 guests, judged from etcd's
keys and the processes; hot-plug and a migration work afterwards; an agent back past the deadline
never resumes its lease (the guests fenced themselves); a stalled supervisor is fenced by the
agent; hosts starting together never read a push as a reply; the command line and the systemd
unit behave like a daemon's."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import lockfsm
from lockfsm import DomainState, ResourceType
from lockfsm.backends.etcd.client import SyncEtcd
from lockfsm.embed.standin import Guest, Host, make_disks, short_tmpdir
from lockfsm.protocol.kernel import alive, process_state
from lockfsm.supervisor.process import EXIT_LEASE_LOST
from tests.support import ROOT
from tests.support.etcd_cluster import Cluster, Site, agent_command, held, toml_text
from tests.support.helpers import HostsPair, key_of, running, wait_until
from tests.support.needs import require

GUESTS = 20
RESTART_TTL = 10  # the default ttl: the deadline is ttl - ttl/4 after the last keepalive


@pytest.fixture
def sites(etcd1: Cluster) -> Iterator[Callable[..., Site]]:
    """``make(name, **config)``: a host with an agent of its own, on the test's own prefix."""
    made: list[Site] = []
    prefix = etcd1.fresh_prefix()

    def make(name: str, **config: Any) -> Site:
        made.append(Site(etcd1, name, prefix, **config))
        return made[-1]

    yield make
    for site in made:
        site.close()


def host_keys(db: SyncEtcd, site: Site) -> dict[str, dict[str, Any]]:
    """The lease keys of ``site``'s lockspace held by that host (holder values as etcd has
    them: host name, supervisor pid, etcd lease id)."""
    return {
        key: kinds
        for key, kinds in held(db, site.config["prefix"]).items()
        if any(v.get("host") == site.name for v in kinds.values())
    }


def twenty_guests(site: Site) -> tuple[Host, list[Guest], list[str]]:
    host = site.host()
    disks = make_disks(short_tmpdir("lfd"), *(f"d{i}" for i in range(GUESTS + 2)))
    guests = [host.start(f"vm{i}", [disks[i]]) for i in range(GUESTS)]
    return host, guests, disks


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_an_agent_restart_stops_no_guest(
    etcd1: Cluster, sites: Callable[..., Site], how: str
) -> None:
    """20 guests; the agent is killed (-9) or stopped (SIGTERM, a service restart) and started
    again at once.  The new agent resumes the same etcd lease: no guest is stopped, etcd still
    has every key with the same holder (host, supervisor pid, lease), and a while past the
    old deadline this is still so (the supervisors re-attached and get new deadlines).  Then a
    hot-plug and a migration of one of the guests work."""
    site = sites("hostA", ttl=RESTART_TTL)
    other = sites("hostB", ttl=RESTART_TTL)
    host, guests, disks = twenty_guests(site)
    with etcd1.client() as db:
        before = host_keys(db, site)
        assert len(before) == 2 * GUESTS  # a disk lease and a domain lease each
        lease = site.agent.status()
        deadline = lease["valid_until"]
        stopped = time.monotonic()
        if how == "SIGKILL":
            site.agent.kill()
        else:
            site.agent.stop()
            assert site.agent.proc is not None and site.agent.proc.returncode == 0
        site.agent.start()  # returns once the new agent holds a lease
        back = time.monotonic()
        assert site.agent.status()["lease"] == lease["lease"], site.agent.log()
        assert "resumed" in site.agent.log()
        print(
            f"\netcd agent {how} + restart: {back - stopped:.2f} s without an agent; the guests' "
            f"deadline was {deadline - stopped:.2f} s after the stop (ttl {RESTART_TTL})"
        )
        assert all(running(g) for g in guests)
        assert host_keys(db, site) == before
        # Past the deadline the old agent had promised: only re-attached supervisors live on.
        time.sleep(max(0.0, deadline - time.monotonic()) + 1.0)
        stopped_guests = [g.name for g in guests if not running(g)]
        assert not stopped_guests, f"{len(stopped_guests)} of {GUESTS} stopped: {site.agent.log()}"
        assert host_keys(db, site) == before
        status = site.agent.status()
        assert status["supervisors"] == GUESTS
        # Hot-plug on one guest, a migration of another, both through the new agent.
        guests[0].mgr.acquire_resource(ResourceType.DISK, disks[GUESTS])
        assert held(db, site.config["prefix"])[key_of(host, disks[GUESTS])]["x"]["host"] == "hostA"
        pair = HostsPair(host, other.host())
        pair.guest = guests[1]
        pair.prepare()
        tgt = pair.incoming_start()
        pair.migrate()
        assert (guests[1].mgr.state, tgt.mgr.state) == (DomainState.DONE, DomainState.STARTED)
        assert held(db, site.config["prefix"])[key_of(host, disks[1])]["x"]["host"] == "hostB"
        assert all(running(g) for g in guests[2:])


def test_the_longest_outage_that_stops_no_guest(etcd1: Cluster, sites: Callable[..., Site]) -> None:
    """The agent may stay away until just before the deadline it promised the supervisors
    (its last keepalive + ttl - fence_margin): started 2 s before it (the agent's own start,
    about 0.5 s, comes on top), it resumes the lease and no guest is stopped."""
    site = sites("hostA", ttl=RESTART_TTL)
    host = site.host()
    disks = make_disks(short_tmpdir("lfd"), "a", "b", "c")
    guests = [host.start(f"vm{i}", [disks[i]]) for i in range(3)]
    lease = site.agent.status()
    stopped = time.monotonic()
    site.agent.kill()
    time.sleep(max(0.0, lease["valid_until"] - 2.0 - time.monotonic()))
    site.agent.start()
    outage = time.monotonic() - stopped
    assert site.agent.status()["lease"] == lease["lease"]
    time.sleep(1.0)
    assert all(running(g) for g in guests), site.agent.log()
    print(
        f"\netcd agent away {outage:.2f} s (ttl {RESTART_TTL}; the deadline was "
        f"{lease['valid_until'] - stopped:.2f} s after the kill): no guest stopped"
    )


def test_an_agent_back_past_the_deadline_fences_and_takes_a_new_lease(
    etcd1: Cluster, sites: Callable[..., Site]
) -> None:
    """The agent dies and stays away past the guests' deadline: every guest is stopped by its
    supervisor (poweroff) as today.  The next agent never resumes the old lease: it says so,
    revokes it (every key of the old lease goes), and takes a new one; guests start again."""
    site = sites("hostA", ttl=4)
    host = site.host()
    disks = make_disks(short_tmpdir("lfd"), "a", "b")
    guests = [host.start(f"vm{i}", [disks[i]]) for i in range(2)]
    old = site.agent.status()["lease"]
    site.agent.kill()
    for g in guests:
        assert g.proc.wait(10) == EXIT_LEASE_LOST
        assert g.pid is not None and not alive(g.pid)
    site.agent.start()
    assert site.agent.status()["lease"] != old
    assert re.search(r"past .*deadline|a new lease", site.agent.log()), site.agent.log()
    with etcd1.client() as db:
        assert host_keys(db, site) == {}
    again = host.start("vm0", disks[:1])
    assert again.mgr.state is DomainState.STARTED
    again.mgr.shutdown()


@pytest.mark.parametrize("policy", ["poweroff", "pause"])
def test_a_stalled_supervisor_is_fenced_by_the_agent(
    etcd1: Cluster, sites: Callable[..., Site], policy: str
) -> None:
    """A supervisor SIGSTOPped while its guest runs stops acknowledging the agent's deadline
    pushes: before that deadline the agent stops the guest by its policy (poweroff kills it,
    pause stops it), and its keys go.  Another host can then start the guest."""
    site = sites("hostA", ttl=4, lock_failure=policy)
    other = sites("hostB", ttl=4)
    disks = make_disks(short_tmpdir("lfd"), "a")
    g = site.host().start("vm", disks)
    keys = set(held(etcd1.client(), site.config["prefix"]))
    assert g.pid is not None and keys
    os.kill(g.supervisor_pid, signal.SIGSTOP)
    stalled = time.monotonic()
    try:
        if policy == "poweroff":
            wait_until(lambda: not alive(g.pid), 4, "the agent to kill the stalled guest")
        else:
            wait_until(lambda: process_state(g.pid) in ("T", "t"), 4, "the guest to be paused")
        fenced = time.monotonic() - stalled
        with etcd1.client() as db:
            wait_until(lambda: not keys & set(held(db, site.config["prefix"])), 2, "keys to go")
        print(f"\netcd: a stalled supervisor's guest {policy} after {fenced:.2f} s (ttl 4)")
        assert "stalled" in site.agent.log() or "acknowledg" in site.agent.log(), site.agent.log()
        b = other.host()
        moved = b.start("vm", disks)
        moved.mgr.shutdown()
    finally:
        os.kill(g.supervisor_pid, signal.SIGCONT)
    if policy == "poweroff":
        assert g.proc.wait(10) == EXIT_LEASE_LOST
    else:  # the supervisor keeps its paused guest, for the daemon to decide
        time.sleep(0.5)
        assert g.proc.poll() is None and process_state(g.pid) in ("T", "t")


def test_hosts_starting_together_never_take_a_push_for_a_reply(
    etcd1: Cluster, sites: Callable[..., Site]
) -> None:
    """Eight hosts' agents start at once; as soon as each serves, its host loads the driver
    and starts and stops a guest, again and again, while the other agents are granting and
    renewing and pushing deadlines.  No call fails."""
    errors: list[str] = []
    calls = [0]
    disks = make_disks(short_tmpdir("lfd"), *(f"d{i}" for i in range(8)))
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            site = sites(f"host{i}", ttl=3)
            for _ in range(6):
                lockfsm.load_driver("etcd", {**site.config, "run_dir": site.dir})
                g = site.host().start(f"vm{i}", disks[i : i + 1])
                g.mgr.shutdown()
                with lock:
                    calls[0] += 1
        except Exception as e:
            errors.append(f"host{i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert calls[0] == 48


def test_a_client_before_the_lease_is_told_not_ready(workdir: str) -> None:
    """An agent whose etcd does not answer yet (SIGSTOPped) listens but holds no lease: a
    daemon's hello is answered, a guest's start is refused with "not ready yet" (never with a
    push taken for a reply, or a missing-agent error), and once etcd answers the agent becomes
    ready and the same start works."""
    require("etcd")
    cluster = Cluster(1)
    proc: subprocess.Popen[bytes] | None = None
    host: Host | None = None
    try:
        conf = {
            "endpoints": cluster.endpoints,
            "ttl": 4,
            "host_name": "early",
            "prefix": cluster.fresh_prefix(),
            "run_dir": workdir,
        }
        path = os.path.join(workdir, "etcd.toml")
        with open(path, "w") as f:
            f.write(toml_text(conf))
        cluster.members[0].signal(signal.SIGSTOP)
        proc = subprocess.Popen(
            [*agent_command(), path], stderr=subprocess.DEVNULL, start_new_session=True
        )
        sock = os.path.join(workdir, "etcd-agent.sock")
        wait_until(lambda: os.path.exists(sock), 15, "the agent to listen")
        lockfsm.load_driver("etcd", conf)  # answered: the agent runs, with these settings
        host = Host("etcd", workdir, **conf)
        disks = make_disks(short_tmpdir("lfd"), "a")
        with pytest.raises(lockfsm.BackendError, match="not ready yet"):
            host.start("vm", disks)
        cluster.members[0].signal(signal.SIGCONT)
        wait_until(lambda: agent_ready(sock), 20, "the agent to hold its lease once etcd answers")
        g = host.start("vm", disks)
        assert g.mgr.state is DomainState.STARTED
        g.mgr.shutdown()
    finally:
        if host is not None:
            host.cleanup()
        if proc is not None:
            proc.kill()
            proc.wait(10)
        cluster.stop()


def agent_ready(sock: str) -> bool:
    from lockfsm.backends.etcd import agent_call

    try:
        return agent_call(sock, {"op": "status"}, 1.0)["lease"] is not None
    except lockfsm.LockFSMError:
        time.sleep(0.1)
        return False


# -- the command line and the service ------------------------------------------------------------


def agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*agent_command(), *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_version_and_bad_arguments() -> None:
    out = agent("--help")
    assert out.returncode == 0
    for word in ("--check", "--release-all", "--log-level", "SIGTERM", "SIGHUP"):
        assert word in out.stdout
    out = agent("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"lockfsm-etcd-agent {lockfsm.__version__}"
    out = agent("--log-level", "loud", "x.toml")
    assert out.returncode == 2 and "loud" in out.stderr
    out = agent("/nonexistent/etcd.toml")
    assert out.returncode == 2 and "/nonexistent/etcd.toml" in out.stderr
    assert "Traceback" not in out.stderr


def test_check_says_the_host_can_serve(etcd1: Cluster, workdir: str) -> None:
    conf = {"endpoints": etcd1.endpoints, "host_name": "checker", "prefix": "/chk/"}
    path = os.path.join(workdir, "etcd.toml")
    with open(path, "w") as f:
        f.write(toml_text({**conf, "run_dir": workdir}))
    out = agent("--check", path)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout
    with etcd1.client() as db:
        assert not db.prefix(b"/chk/")  # a check writes nothing


def test_a_second_agent_on_the_host_is_refused(sites: Callable[..., Site]) -> None:
    site = sites("hostA")
    out = agent(site.agent.conf_file)
    assert out.returncode == 1
    assert f"pid {site.agent.pid}" in out.stderr and "one agent per host" in out.stderr


def test_sighup_is_ignored(etcd1: Cluster, sites: Callable[..., Site]) -> None:
    site = sites("hostA")
    g = site.host().start("vm", make_disks(short_tmpdir("lfd"), "a"))
    lease = site.agent.status()["lease"]
    for _ in range(3):
        site.agent.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert site.agent.proc is not None and site.agent.proc.poll() is None
    assert site.agent.status()["lease"] == lease and running(g)
    g.mgr.shutdown()


def test_release_all_gives_everything_up(etcd1: Cluster, sites: Callable[..., Site]) -> None:
    """The documented host-shutdown command: the agent revokes its lease, every key of the
    host goes at once (no waiting for the ttl), and the agent exits 0."""
    site = sites("hostA", ttl=RESTART_TTL)
    g = site.host().start("vm", make_disks(short_tmpdir("lfd"), "a"))
    with etcd1.client() as db:
        assert host_keys(db, site)
        out = agent("--release-all", site.agent.conf_file)
        assert out.returncode == 0, out.stderr
        assert site.agent.proc is not None and site.agent.proc.wait(10) == 0
        assert host_keys(db, site) == {}
    assert g.proc.wait(10) == EXIT_LEASE_LOST  # its lease is gone: the guest is stopped


def test_the_systemd_unit_verifies() -> None:
    """``systemd-analyze verify`` accepts the shipped unit (with the agent's path of this
    install); it is Type=notify, keeps its run directory, restarts on failure, waits longer
    than the default ttl to stop, and comes before the virt daemons."""
    require("systemd-analyze")
    with open(os.path.join(ROOT, "conf", "lockfsm-etcd-agent.service")) as f:
        unit = f.read()
    for line in (
        "Type=notify",
        "RuntimeDirectoryPreserve=yes",
        "Restart=on-failure",
        "Before=libvirtd.service virtqemud.service",
    ):
        assert line in unit.splitlines(), line
    stop = re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M)
    assert stop is not None and int(stop.group(1)) > RESTART_TTL
    program = shutil.which("lockfsm-etcd-agent") or agent_command()[0]
    if not program.endswith("lockfsm-etcd-agent"):
        pytest.fail("lockfsm-etcd-agent is not installed as a program")
    workdir = short_tmpdir("lfu")
    try:
        path = os.path.join(workdir, "lockfsm-etcd-agent.service")
        with open(path, "w") as f:
            f.write(unit.replace("/usr/bin/lockfsm-etcd-agent", program))
        out = subprocess.run(
            ["systemd-analyze", "verify", path], capture_output=True, text=True, timeout=60
        )
        problems = [ln for ln in out.stderr.splitlines() if "lockfsm-etcd-agent" in ln]
        assert out.returncode == 0 and not problems, out.stderr
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
