"""Item 5: migration handoff latency, from both sides' completion calls to the target holding
every lease, for a guest with 4 disks, on each backend.

A round: the guest starts on the source host, the source prepares the migration, the target
starts its incoming supervisor with the cookie; then the two daemons complete, in one of two
orders, and the clock runs from the later of the two calls to the target's call returning (it
returns once the target holds every lease):

* ``concurrent``: the target's daemon calls first and waits (its supervisor retries the take-over
  with a growing pause); 40-80 ms later the source's daemon calls; the clock starts at the
  source's call.  This is how two daemons run it.
* ``sequential``: the source's call has returned (its guest is dead, its leases released), then
  the target's daemon calls; the clock starts at the target's call.

Baselines, measured in the same run between the rounds: fcntl, the raw kernel handoff (4 OFD
unlocks by one open file description, 4 OFD write locks by another); sanlock, one
``sanlock client acquire`` of 4 free leases (one call, ``-r`` four times) by a registered
process: the least the target's side of a 4-disk handoff costs in sanlock (each lease is a
paxos round on disk, ~5.5 ms here; one lease in one call: ~7 ms); etcd, one bare etcd
transaction of the take-over's shape over the 4 keys (bench/etcd_hosts.py), timed inside the
client's event loop right after the untimed transaction that sets its keys up: the least the
target's side costs in etcd (the row's note adds the same transaction after 50 ms idle, which
costs more: the agents' transactions come after a pause).  etcd runs twice, on a
single member and on a 3-member cluster (``5.etcd.*``, ``5.etcd3.*``), each with two hosts'
lease agents.  One unrecorded round of each order first: a sanlock handoff in the first
seconds after the hosts joined the lockspace sometimes takes about a second.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from bench import GUEST, Context, disk_files, quiet_host
from bench import etcd_hosts as etcd
from bench.measure import median, spread
from bench.report import Row, Target, collect, unavailable
from lockfsm import ResourceType
from lockfsm.embed.standin import Host
from lockfsm.fuzz import sanlock_daemons as sl

DISKS = 4
#: the leases an etcd take-over moves: the disks' and the guest's own (its uuid's)
KEYS = DISKS + 1
URI = "qemu+tcp://target/system"
ORDERS = ("concurrent", "sequential")
TARGETS = {"fcntl": None, "sanlock": Target("ratio", 2), "etcd": Target("ratio", 3)}
#: etcd's targets per order (issue 16): the target's call alone about one transaction; from the
#: source's call to the target holding everything, the source's give-up transaction included.
ETCD_TARGETS = {"sequential": Target("ratio", 2), "concurrent": Target("ratio", 4)}
#: The pause before the informative second baseline: an etcd transaction right after another
#: (the baseline's) finds etcd's and gRPC's threads awake; the agent's come after a pause.
IDLE = 0.05


def one_handoff(
    source: Host,
    target: Host,
    disks: list[str],
    order: str,
    parts: dict[str, list[float]] | None = None,
) -> float:
    """Seconds from the later completion call to the target holding every lease.  With
    ``parts``, a sequential round also appends the source's call's seconds to
    ``parts["source"]`` (it kills and reaps the guest, then gives up every lease)."""
    src = source.start("mig", disks, guest=GUEST, timeout=30)
    tgt = target.incoming(src, src.mgr.prepare_migrate(URI), GUEST, timeout=30)
    try:
        if order == "sequential":
            started = time.perf_counter()
            src.mgr.complete_migrate_in()
            if parts is not None:
                parts.setdefault("source", []).append(time.perf_counter() - started)
            started = time.perf_counter()
            tgt.mgr.complete_migrate_in()
            return time.perf_counter() - started
        return _concurrent(src.mgr.complete_migrate_in, tgt.mgr.complete_migrate_in)
    finally:
        source.stop(src)
        target.stop(tgt)


def _concurrent(source_call: Callable[[], None], target_call: Callable[[], None]) -> float:
    """The target's call in a thread, the source's 40-80 ms later; seconds from the source's
    call to the target's return."""
    done: dict[str, Any] = {}

    def run_target() -> None:
        try:
            target_call()
        except BaseException as e:  # raised below, in the caller
            done["error"] = e
        done["at"] = time.perf_counter()

    thread = threading.Thread(target=run_target)
    thread.start()
    time.sleep(random.uniform(0.04, 0.08))  # the target's take-over is pending by now
    started = time.perf_counter()
    source_call()
    thread.join(120)
    if "error" in done:
        raise done["error"]
    return float(done["at"]) - started


def _rows(
    backend: str,
    times: dict[str, list[float]],
    base: list[float],
    base_of: str,
    note: str = "",
    name: str = "",
    size: str = "",
) -> list[Row]:
    return [
        Row(
            f"5.{name or backend}.{order}",
            f"handoff, {DISKS} disks on {size}{backend} ({order} completions)",
            median(times[order]) * 1e3,
            "ms",
            median(base) * 1e3,
            base_of,
            ETCD_TARGETS[order] if backend == "etcd" else TARGETS[backend],
            note=spread(times[order], 1e3, "ms") + note,
        )
        for order in ORDERS
    ]


# -- fcntl ---------------------------------------------------------------------------------------


def _raw_fcntl_handoff(lockspace: str) -> float:
    """Seconds for 4 OFD unlocks by one description and 4 OFD write locks by another."""
    lock = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 1, 0)
    unlock = struct.pack("hhqqi", fcntl.F_UNLCK, 0, 0, 1, 0)
    paths = [os.path.join(lockspace, f"raw{i}") for i in range(DISKS)]
    mine = [os.open(p, os.O_RDWR | os.O_CREAT, 0o600) for p in paths]
    theirs = [os.open(p, os.O_RDWR) for p in paths]
    for fd in mine:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock)
    started = time.perf_counter()
    for fd in mine:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, unlock)
    for fd in theirs:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock)
    took = time.perf_counter() - started
    for fd in mine + theirs:
        os.close(fd)
    return took


def handoff_fcntl(ctx: Context) -> list[Row]:
    """Handoff latency on fcntl, against the raw kernel handoff."""
    source = quiet_host("fcntl")
    target = quiet_host("fcntl", source.lockspace)
    disks = disk_files(ctx.tmpdir("lfbd"), DISKS)
    times: dict[str, list[float]] = {order: [] for order in ORDERS}
    base: list[float] = []
    try:
        one_handoff(source, target, disks, "sequential")  # warm-up
        for _ in range(ctx.pick(full=15, quick=3)):
            for order in ORDERS:
                times[order].append(one_handoff(source, target, disks, order))
                base.append(_raw_fcntl_handoff(source.lockspace))
    finally:
        source.cleanup()
        target.cleanup()
    return _rows("fcntl", times, base, "raw kernel handoff: 4 OFD unlocks + 4 OFD locks")


# -- sanlock -------------------------------------------------------------------------------------

# A process registered with a sanlock daemon (leases are held by registered processes), so that
# `sanlock client acquire -p PID` has someone to acquire for.
_REGISTERED = """
import json, os, sys
from lockfsm.supervisor.leases import LeaseMachines
LeaseMachines("sanlock", json.loads(sys.argv[1])).reserve({"key": "x", "mode": "exclusive"}, "b")
print(os.getpid(), flush=True)
sys.stdin.read()
"""


def _client_acquire(daemon: sl.Daemon, resources: list[str], pid: int) -> float:
    """Seconds of one ``sanlock client acquire`` of ``resources``; they are released again,
    untimed."""
    args = [a for r in resources for a in ("-r", r)]
    started = time.perf_counter()
    out = daemon.client("acquire", *args, "-p", str(pid), timeout=30)
    took = time.perf_counter() - started
    if " done 0" not in out:
        raise RuntimeError(f"sanlock client acquire failed: {out.strip()[-200:]}")
    daemon.client("release", *args, "-p", str(pid), timeout=30)
    return took


def handoff_sanlock(ctx: Context) -> list[Row]:
    """Handoff latency on sanlock, against one sanlock client acquire."""
    why = sl.missing()
    if why:
        why = f"{why} is not installed"
        return [
            unavailable(f"5.sanlock.{o}", f"handoff on sanlock ({o})", why, TARGETS["sanlock"])
            for o in ORDERS
        ]
    times: dict[str, list[float]] = {order: [] for order in ORDERS}
    base: list[float] = []
    with sl.cluster(2) as c:
        source = quiet_host("sanlock", c.lease_dir, **c.config(c.daemons[0]))
        target = quiet_host("sanlock", c.lease_dir, **c.config(c.daemons[1]))
        disks = disk_files(ctx.tmpdir("lfbd"), 2 * DISKS)
        keys = [target.driver.backend.leases("disk", d, d, False)[0]["key"] for d in disks]
        spares = [f"{sl.LOCKSPACE}:{k}:{os.path.join(c.lease_dir, k)}:0" for k in keys[DISKS:]]
        registered = subprocess.Popen(
            [sys.executable, "-c", _REGISTERED, json.dumps(target.driver.config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert registered.stdout is not None
            pid = int(registered.stdout.readline())
            for order in ORDERS:  # warm-up: the first handoffs after joining can take ~1 s
                one_handoff(source, target, disks[:DISKS], order)
            for _ in range(ctx.pick(full=12, quick=2)):
                for order in ORDERS:
                    times[order].append(one_handoff(source, target, disks[:DISKS], order))
                    base.append(_client_acquire(c.daemons[1], spares, pid))
        finally:
            registered.communicate(timeout=30)
            source.cleanup()
            target.cleanup()
    return _rows("sanlock", times, base, f"one `sanlock client acquire` of {DISKS} free leases")


# -- etcd ----------------------------------------------------------------------------------------


def etcd_missing() -> str | None:
    """Why the etcd figures cannot be measured here, or None."""
    return etcd.missing()


def _handoff_etcd_on(ctx: Context, members: int) -> list[Row]:
    """The rounds on a fresh cluster of ``members``, two hosts (agents) on it."""
    times: dict[str, list[float]] = {order: [] for order in ORDERS}
    parts: dict[str, list[float]] = {}
    base: list[float] = []
    idle: list[float] = []  # the same transaction after a pause: not the target's baseline
    disks = disk_files(ctx.tmpdir("lfbd"), DISKS)
    with etcd.cluster(members, 2) as sites:
        source, target = sites.host(0), sites.host(1)
        client = sites.client()
        try:
            for order in ORDERS:  # warm-up: the agents' first transactions open connections
                one_handoff(source, target, disks, order)
                etcd.bare_takeover(client, KEYS, "handoff")
            for _ in range(ctx.pick(full=15, quick=3)):
                for order in ORDERS:
                    times[order].append(one_handoff(source, target, disks, order, parts))
                    base.append(etcd.bare_takeover(client, KEYS, "handoff"))
                    idle.append(etcd.bare_takeover(client, KEYS, "handoff", IDLE))
        finally:
            client.close()
    where = "one member" if members == 1 else f"{members} members"
    note = (
        f"; the source's own call (sequential rounds): median {median(parts['source']) * 1e3:.1f}"
        f" ms (the guest killed and reaped, then {DISKS} + 1 leases handed off, the guest's"
        " own included, in one transaction); the bare transaction after"
        f" {IDLE * 1e3:.0f} ms idle, as the agent's come: median {median(idle) * 1e3:.2f} ms"
    )
    return _rows(
        "etcd",
        times,
        base,
        f"one bare etcd transaction of the take-over's shape over {KEYS} leases ({where})",
        note,
        name="etcd" if members == 1 else f"etcd{members}",
        size=f"{members}-member ",
    )


def handoff_etcd(ctx: Context) -> list[Row]:
    """Handoff latency on etcd (one member, then three), against one bare etcd transaction."""
    why = etcd_missing()
    if why:
        return [
            unavailable(
                f"5.{name}.{o}", f"handoff, {DISKS} disks on etcd ({o})", why, TARGETS["etcd"]
            )
            for name in ("etcd", "etcd3")
            for o in ORDERS
        ]
    return _handoff_etcd_on(ctx, 1) + _handoff_etcd_on(ctx, 3)


def _hot_plug_acquire(host: Host, disks: list[str]) -> float:
    """Seconds of one hot-plug acquire (the daemon's call: the supervisor asks the agent,
    which writes the key in one etcd transaction) on a running guest; released again."""
    g = host.start("plug", disks[:1], guest=GUEST, timeout=30)
    try:
        started = time.perf_counter()
        g.mgr.acquire_resource(ResourceType.DISK, disks[1])
        took = time.perf_counter() - started
        g.mgr.release_resource(ResourceType.DISK, disks[1])
        return took
    finally:
        host.stop(g)


def handoff_etcd_tls(ctx: Context) -> list[Row]:
    """The handoff and a hot-plug acquire on etcd with TLS, client certificates and etcd
    authentication, against the same on plain-text etcd: two 1-member clusters running side
    by side, their rounds alternated."""
    why = etcd_missing() or (None if shutil.which("openssl") else "openssl is not installed")
    keys = [*(f"5.etcd-tls.{o}" for o in ORDERS), "5.etcd-tls.acquire"]
    if why:
        return [unavailable(k, "etcd with TLS and auth against plain", why) for k in keys]
    disks = disk_files(ctx.tmpdir("lfbd"), DISKS)
    tls: dict[str, list[float]] = {o: [] for o in (*ORDERS, "acquire")}
    plain: dict[str, list[float]] = {o: [] for o in (*ORDERS, "acquire")}
    with (
        etcd.cluster(1, 2) as bare,
        etcd.cluster(1, 2, tls_dir=ctx.tmpdir("lfbc")) as secure,
    ):
        sides = [(plain, bare.host(0), bare.host(1)), (tls, secure.host(0), secure.host(1))]
        for _, source, target in sides:  # warm-up
            one_handoff(source, target, disks, "sequential")
        for i in range(ctx.pick(full=12, quick=3)):
            for times, source, target in sides if i % 2 else reversed(sides):
                for order in ORDERS:
                    times[order].append(one_handoff(source, target, disks, order))
                times["acquire"].append(_hot_plug_acquire(source, disks))
    rows = []
    for order in (*ORDERS, "acquire"):
        what = "hot-plug acquire" if order == "acquire" else f"handoff ({order} completions)"
        rows.append(
            Row(
                f"5.etcd-tls.{order}",
                f"{what}, etcd with TLS + client certificates + auth (1 member)",
                median(tls[order]) * 1e3,
                "ms",
                median(plain[order]) * 1e3,
                "the same on plain-text etcd without auth, in the same run",
                None,
                note=spread(tls[order], 1e3, "ms"),
            )
        )
    return rows


def run(ctx: Context) -> list[Row]:
    random.seed(8)
    return collect(ctx, [handoff_fcntl, handoff_etcd, handoff_etcd_tls, handoff_sanlock])
