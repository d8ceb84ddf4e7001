"""Item 6 on etcd: ``hosts`` simulated hosts (one lease agent each) x ``guests`` guests with 4
disks on a 3-member cluster: a start storm, then a migration storm of every guest, judged from
etcd's key space all along.  Run in a fresh interpreter, which is every host's daemon:
``python -m bench.etcd_storm lockfsm|bare HOSTS GUESTS WINDOW`` prints the figures as JSON
(bench/scale.py makes the rows).

The storms.  Start: every guest's supervisor is run at once (guest ``i`` on host ``i % hosts``),
then each ``get_child`` waited for.  Migration: every guest moves to the next host (prepare, the
target's incoming supervisor with the cookie, completion on both sides, the source's manager
stopped), ``WINDOW`` migrations at a time (each one's calls in one thread, as a daemon's job
thread would run them); even guests complete source first then target, odd ones target first
(its take-over waits) and the source right after.  Memory (PSS) is read when every guest is up,
before and after the migrations; the agents' beside as many bare interpreters that import the
etcd client (gRPC, asyncio), alive at the same moment.

The judge (bench/etcd_judge.py, a process of its own) samples etcd's key space for the whole
run and counts violations: at no sampled instant may two hosts' live supervisors hold one disk
exclusively (what that means in etcd's keys: there).  Every side is told to it as soon as its
supervisor is run, its guest once it is up, a target's completion when it returns.

After each storm every guest's keys (4 disks and its own lease) are checked: ``x`` naming its
host's supervisor, nothing else under them (after the migration: the target's, no reservation
or marker left).  The bare run is the same storms' skeleton without lockfsm: as many bare
interpreters started at once; then, ``WINDOW`` at a time, each replaced by a new one (started,
up, the old one ended).
"""

from __future__ import annotations

import gc
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bench import disk_files, launched
from bench import etcd_hosts as etcd
from bench.etcd_judge import JudgeProcess
from bench.measure import IDLE, bare_interpreters, end, own_rss_kb, progress, pss_mb, quantile
from lockfsm.embed.standin import Guest, short_tmpdir

DISKS = 4
MEMBERS = 3
URI = "qemu+tcp://target/system"
#: A bare interpreter with the agent's client library loaded: the agents' memory baseline.
CLIENT_IDLE = "import lockfsm.backends.etcd.client; " + IDLE
TIMEOUT = 900  # seconds any one get_child or completion may take in a storm of hundreds


@dataclass
class Side:
    """One side of a guest: its host's index, its supervisor, its guest process (once up)."""

    host: int
    sup: int
    guest: int = 0


@dataclass
class Domain:
    """One guest of the storm and what the judge needs to know about it."""

    name: str
    uuid: str
    host: int
    disks: list[str]
    keys: list[str] = field(default_factory=list)  # its lease keys: disks, then its own
    source: Side | None = None
    target: Side | None = None
    took: float = 0.0  # seconds of its whole migration
    error: str = ""  # why its migration failed


def _check_keys(client: Any, domains: list[Domain], side: str) -> list[str]:
    """What is wrong with the key space now: every domain's keys held (``x``, no marker) by
    its ``side`` ("source" or "target") and nothing else there."""
    root = f"{etcd.PREFIX}L/".encode()
    found: dict[str, dict[str, Any]] = {}
    for kv in client.prefix(root):
        lease_key, _, kind = kv.key[len(root) :].decode().partition("/")
        found.setdefault(lease_key, {})[kind] = json.loads(kv.value)
    wrong = []
    for d in domains:
        if d.error:
            continue  # counted as a failed migration
        owner: Side | None = getattr(d, side)
        assert owner is not None
        for key in d.keys:
            kinds = found.pop(key, {})
            x = kinds.get("x", {})
            if set(kinds) != {"x"} or (x.get("host"), x.get("pid")) != (
                f"host{owner.host}",
                owner.sup,
            ):
                wrong.append(f"{d.name} ({side}): {key} is {kinds or 'absent'}")
    wrong += [f"{key}: {kinds} of no guest" for key, kinds in found.items()]
    return wrong


class Storm:
    """The daemons of every host, their guests, the judge."""

    def __init__(self, sites: etcd.Sites, hosts: int, guests: int, judge: JudgeProcess) -> None:
        self.sites = sites
        self.judge = judge
        self.hosts = [sites.host(i) for i in range(hosts)]
        self.disk_dir = short_tmpdir("lfbd")
        files = disk_files(self.disk_dir, hosts * guests * DISKS)
        self.domains = []
        backend = self.hosts[0].driver.backend
        for i in range(hosts * guests):
            disks = [os.path.realpath(p) for p in files[i * DISKS : (i + 1) * DISKS]]
            d = Domain(f"vm{i}", str(uuidlib.uuid4()), i % hosts, disks)
            d.keys = [backend.leases("disk", p, p, False)[0]["key"] for p in disks]
            own = f"lockfsm-domains:{d.uuid}"
            d.keys.append(backend.leases("lease", own, own, False)[0]["key"])
            self.domains.append(d)
        self.guests: dict[str, Guest] = {}  # domain name -> the guest on its current host

    def start(self) -> float:
        started = time.perf_counter()
        spawned = []
        for d in self.domains:
            g = launched(self.hosts[d.host], d.name, d.disks, d.uuid)
            d.source = Side(d.host, g.supervisor_pid)
            self.judge.side(d.uuid, "source", f"host{d.host}", g.supervisor_pid)
            spawned.append((d, g))
        for i, (d, g) in enumerate(spawned, 1):
            g.pid = g.mgr.get_child(timeout=TIMEOUT)
            progress("etcd storm: guests running", i, len(spawned))
            assert d.source is not None
            d.source.guest = g.pid
            self.judge.up(d.uuid, "source", g.pid)
            self.guests[d.name] = g
        return time.perf_counter() - started

    def migrate(self, d: Domain, index: int) -> None:
        try:
            self._migrate(d, index)
        except Exception as e:  # counted; the storm goes on
            d.error = f"{type(e).__name__}: {e}"

    def _migrate(self, d: Domain, index: int) -> None:
        began = time.perf_counter()
        source, target = self.hosts[d.host], self.hosts[(d.host + 1) % len(self.hosts)]
        src = self.guests[d.name]
        tgt = launched(target, d.name, d.disks, d.uuid, src.mgr.prepare_migrate(URI))
        mgr = tgt.mgr
        d.target = Side((d.host + 1) % len(self.hosts), tgt.supervisor_pid)
        self.judge.side(d.uuid, "target", f"host{d.target.host}", tgt.supervisor_pid)
        tgt.pid = d.target.guest = mgr.get_child(timeout=TIMEOUT)
        self.judge.up(d.uuid, "target", tgt.pid)
        if index % 2 == 0:
            src.mgr.complete_migrate_in()
            mgr.complete_migrate_in()
            self.judge.done(d.uuid)
        else:
            error: list[BaseException] = []

            def take_over() -> None:
                try:
                    mgr.complete_migrate_in()
                    self.judge.done(d.uuid)
                except BaseException as e:  # raised below
                    error.append(e)

            thread = threading.Thread(target=take_over)
            thread.start()
            src.mgr.complete_migrate_in()
            thread.join(TIMEOUT)
            if error:
                raise error[0]
        source.stop(src)
        self.guests[d.name] = tgt
        d.took = time.perf_counter() - began

    def migrate_all(self, window: int) -> float:
        order = list(enumerate(self.domains))
        random.Random(8).shuffle(order)
        started = time.perf_counter()
        with ThreadPoolExecutor(window) as pool:
            futures = [pool.submit(self.migrate, d, i) for i, d in order]
            for n, done in enumerate(futures, 1):
                done.result()
                progress("etcd storm: guests migrated", n, len(futures))
        return time.perf_counter() - started

    def stop_all(self) -> float:
        started = time.perf_counter()
        for d in self.domains:
            if d.error:
                continue  # whatever it left running, the hosts' cleanup kills
            assert d.target is not None
            self.hosts[d.target.host].stop(self.guests[d.name])
        return time.perf_counter() - started

    def memory(self, side: str) -> dict[str, float]:
        sides: list[Side] = [getattr(d, side) for d in self.domains if not d.error]
        return {
            "supervisors_mb": pss_mb([s.sup for s in sides]),
            "guests_mb": pss_mb([s.guest for s in sides]),
        }


def lockfsm_storm(
    hosts: int,
    guests: int,
    window: int,
    background: Callable[[etcd.Sites], Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """The storms through lockfsm on a fresh cluster; the figures.  ``background(sites)``, if
    given, starts a load on the cluster before the storms and returns what stops it."""
    with etcd.cluster(MEMBERS, hosts) as sites:
        stop_background = background(sites) if background is not None else None
        try:
            return _storms_on(sites, hosts, guests, window)
        finally:
            if stop_background is not None:
                stop_background()


def _storms_on(sites: etcd.Sites, hosts: int, guests: int, window: int) -> dict[str, Any]:
    judge = JudgeProcess(etcd.PREFIX, sites.cluster.endpoints)
    client = sites.client()
    storm = Storm(sites, hosts, guests, judge)
    try:
        gc.collect()
        before = own_rss_kb()
        start_s = storm.start()
        gc.collect()
        daemon_mb = (own_rss_kb() - before) / 1024
        wrong_start = _check_keys(client, storm.domains, "source")
        started = storm.memory("source")
        clients = bare_interpreters(hosts, CLIENT_IDLE)  # the agents' baseline, alive beside them
        agents_mb = pss_mb(sites.agent_pids())
        clients_mb = pss_mb([p.pid for p in clients])
        end(clients)
        migration_s = storm.migrate_all(window)
        found = judge.finish()  # its last sample is of the settled key space
        wrong_end = _check_keys(client, storm.domains, "target")
        migrated = storm.memory("target")
        stop_s = storm.stop_all()
    finally:
        judge.kill()
        client.close()
        shutil.rmtree(storm.disk_dir, ignore_errors=True)
    took = [d.took for d in storm.domains if not d.error] or [0.0]
    failed = [f"{d.name}: {d.error}" for d in storm.domains if d.error]
    return {
        "hosts": hosts,
        "guests": hosts * guests,
        "window": window,
        "members": MEMBERS,
        "storm_s": start_s,
        "migration_s": migration_s,
        "stop_s": stop_s,
        "migration_p50_s": quantile(took, 0.5),
        "migration_p90_s": quantile(took, 0.9),
        "started": started,
        "migrated": migrated,
        "daemon_mb": daemon_mb,
        "agents_mb": agents_mb,
        "clients_mb": clients_mb,
        **found,
        "violations": found["violations"] + len(wrong_start) + len(wrong_end),
        "migrations_failed": len(failed),
        "failures": failed[:20],
        "wrong_after_start": wrong_start[:20],
        "wrong_after_migration": wrong_end[:20],
    }


def bare_storm(count: int, window: int) -> dict[str, Any]:
    """The storms' skeleton with bare interpreters: all started at once; then each replaced,
    ``window`` at a time, by a new one (started, up, the old one ended)."""
    started = time.perf_counter()
    procs = bare_interpreters(count)
    storm_s = time.perf_counter() - started
    total_mb = pss_mb([p.pid for p in procs])

    def replace(old: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        new = bare_interpreters(1)[0]
        end([old])
        return new

    started = time.perf_counter()
    with ThreadPoolExecutor(window) as pool:
        procs = list(pool.map(replace, procs))
    migration_s = time.perf_counter() - started
    end(procs)
    return {"storm_s": storm_s, "migration_s": migration_s, "total_mb": total_mb}


if __name__ == "__main__":
    kind, n_hosts, n_guests, n_window = sys.argv[1], *map(int, sys.argv[2:5])
    if kind == "lockfsm":
        result = lockfsm_storm(n_hosts, n_guests, n_window)
    else:
        result = bare_storm(n_hosts * n_guests, n_window)
    print(json.dumps(result))
