"""8. A fleet on one etcd cluster (issue 16): N simulated hosts against a real 3-member etcd.

Each simulated host has what a real host's lease agent keeps in etcd: one lease, kept alive every
TTL/3, and G guests' keys on it (the agents' key schema: ``<prefix>L/<key>/x``).  A steady
churn of starts, stops and migrations runs across the fleet (each a transaction of the agents'
shape: a stop deletes a guest's key, a start creates it again, a migration's take-over
compares the handed-off key and puts it on another host's lease).  The hosts live in a few worker
processes (``python -m bench.fleet --worker``: asyncio, one client each), not N Python
processes: the load is etcd's.  Beside them two real hosts (real ``lockfsm-etcd-agent``\\ s,
supervisors, guests) hand a 4-disk guest back and forth, and a bare take-over transaction is
timed, all under the load.

Measured at each N: keepalive latency (p50, p99) and how late keepalives were sent (the workers'
own lag: when it grows, the load generator, not etcd, is the limit), churn transaction latency
(p50, p99), the real handoff (p50, p99) against the bare transaction, etcd's CPU (the three
members, percent of one core), memory (RSS, summed) and database size.  The cliff is the N at
which keepalive p99 passes TTL/3: a host whose keepalives take that long renews late.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from typing import Any

from bench import Context, disk_files, run_dir
from bench import etcd_hosts as etcd
from bench.handoff import DISKS, KEYS, one_handoff
from bench.measure import median
from bench.report import Row, Target, unavailable

PREFIX = "/lockfsm-fleet/"
TTL = 10
GUESTS = 100  # G: guests (keys) per host
WORKERS = 3  # processes playing the hosts
CHURN = 50.0  # starts, stops and migrations a second, across the fleet
BATCH = 64  # keys per set-up transaction


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the worker: a share of the fleet in one process ----------------------------------------------


async def play(args: argparse.Namespace) -> dict[str, Any]:
    from lockfsm.backends.etcd import parse_endpoint
    from lockfsm.backends.etcd.client import Etcd, delete, put, value

    client = Etcd([parse_endpoint(e) for e in args.endpoints], 5.0)
    hosts = list(range(args.first, args.first + args.count))
    leases: dict[int, int] = {}
    keepalive: list[float] = []
    lag: list[float] = []
    txns: list[float] = []
    errors: dict[str, int] = {}
    window = {"measuring": False, "stop": False}

    def count(e: BaseException) -> None:
        if window["measuring"]:
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    async def keep(h: int) -> None:
        """The host's keepalives every TTL/3 from its grant on (the set-up of thousands of
        hosts takes longer than a TTL); measured only in the window."""
        period = args.ttl / 3
        due = time.monotonic() + random.uniform(0, period)
        while not window["stop"]:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            measured = window["measuring"]
            if measured:
                lag.append(now - due)
            try:
                await client.keepalive(leases[h], period)
                if measured:
                    keepalive.append(time.monotonic() - now)
            except Exception as e:
                count(e)
            due += period

    def key(h: int, g: int) -> bytes:
        return f"{PREFIX}L/h{h}g{g}/x".encode()

    def holder(h: int) -> bytes:
        return json.dumps({"host": f"h{h}", "pid": 1000 + h, "mode": "exclusive"}).encode()

    keepers = []
    for h in hosts:
        leases[h], _ = await client.grant(args.ttl, 10.0)
        keepers.append(asyncio.ensure_future(keep(h)))
    puts = [(key(h, g), holder(h), leases[h]) for h in hosts for g in range(args.guests)]
    for i in range(0, len(puts), BATCH):
        await client.txn([], [put(k, v, lease) for k, v, lease in puts[i : i + BATCH]])
    with open(args.ready, "w") as f:
        f.write("ready")
    while not os.path.exists(args.go):
        await asyncio.sleep(0.05)
    until = time.monotonic() + args.duration
    window["measuring"] = True

    async def churn() -> None:
        rate = args.churn / args.workers
        owner = {(h, g): h for h in hosts for g in range(args.guests)}
        while time.monotonic() < until:
            await asyncio.sleep(random.expovariate(rate))
            h = random.choice(hosts)
            g = random.randrange(args.guests)
            k, was = key(h, g), owner[(h, g)]
            kind = random.choice(("stop+start", "migration"))
            started = time.monotonic()
            try:
                if kind == "stop+start":
                    await client.txn([value(k, holder(was))], [delete(k)])
                    await client.txn([], [put(k, holder(was), leases[was])])
                else:  # the take-over's shape: compare the source's value, put on the target's
                    to = random.choice(hosts)
                    await client.txn([value(k, holder(was))], [put(k, holder(to), leases[to])])
                    owner[(h, g)] = to
                txns.append(time.monotonic() - started)
            except Exception as e:
                count(e)

    await churn()
    window["measuring"] = False
    window["stop"] = True
    await asyncio.gather(*keepers)
    for h in hosts:
        try:
            await client.revoke(leases[h], 5.0)
        except Exception:
            pass
    await client.close()
    return {"keepalive": keepalive, "lag": lag, "txn": txns, "errors": errors}


def worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet --worker")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--endpoints", nargs="+", required=True)
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--guests", type=int, default=GUESTS)
    p.add_argument("--ttl", type=int, default=TTL)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--churn", type=float, default=CHURN)
    p.add_argument("--workers", type=int, default=WORKERS)
    p.add_argument("--ready", required=True)
    p.add_argument("--go", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    result = asyncio.run(play(args))
    with open(args.out, "w") as f:
        json.dump(result, f)
    return 0


# -- the parent: the cluster, the workers, the real hosts, the figures ----------------------------


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def db_mb(data_dir: str) -> float:
    path = os.path.join(data_dir, "member", "snap", "db")
    return os.path.getsize(path) / 2**20 if os.path.exists(path) else 0.0


class Fleet:
    """The worker processes playing ``hosts`` hosts on ``cluster`` (files in ``tmp``): started
    at once, each sets its share up and waits for :meth:`go`."""

    def __init__(self, cluster: Any, hosts: int, duration: float, tmp: str) -> None:
        self.tmp, self.go_path = tmp, os.path.join(tmp, "go")
        share = -(-hosts // WORKERS)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.outs: list[tuple[str, str]] = []
        for w in range(WORKERS):
            first, count = w * share, min(share, hosts - w * share)
            if count <= 0:
                break
            out, ready = os.path.join(tmp, f"out{w}.json"), os.path.join(tmp, f"ready{w}")
            self.outs.append((out, ready))
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.fleet",
                        "--worker",
                        *("--endpoints", *cluster.endpoints),
                        *("--first", str(first), "--count", str(count)),
                        *("--duration", str(duration), "--workers", str(WORKERS)),
                        *("--ready", ready, "--go", self.go_path, "--out", out),
                    ],
                    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    stderr=open(os.path.join(tmp, f"err{w}"), "wb"),  # noqa: SIM115
                )
            )

    def wait_ready(self) -> None:
        """Until every worker has set its hosts up.  Raises RuntimeError if one failed."""
        while not all(os.path.exists(r) for _, r in self.outs):
            failed = [w for w, p in enumerate(self.procs) if p.poll() not in (None, 0)]
            if failed:
                with open(os.path.join(self.tmp, f"err{failed[0]}"), errors="replace") as f:
                    why = f.read().strip().splitlines()[-1:] or ["?"]
                raise RuntimeError(f"a fleet worker failed during its set-up: {why[0]}")
            time.sleep(0.2)

    def go(self) -> None:
        with open(self.go_path, "w") as f:
            f.write("go")

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(30)


def fleet_at(ctx: Context, hosts: int, duration: float) -> dict[str, Any]:
    """One fleet of ``hosts`` on a fresh 3-member cluster; its measurements."""
    from tests.support.etcd_cluster import Site

    tmp = ctx.tmpdir("lfbf")
    disks = disk_files(ctx.tmpdir("lfbd"), DISKS)
    with etcd.cluster(3, 0) as sites:
        cluster = sites.cluster
        fleet = Fleet(cluster, hosts, duration, tmp)
        procs, outs = fleet.procs, fleet.outs
        set_up = time.monotonic()
        real = [Site(cluster, f"real{i}", etcd.PREFIX, TTL) for i in range(2)]
        try:
            fleet.wait_ready()
            set_up = time.monotonic() - set_up
            source = real[0].host(stderr=subprocess.DEVNULL, run_dir=run_dir())
            target = real[1].host(stderr=subprocess.DEVNULL, run_dir=run_dir())
            one_handoff(source, target, disks, "sequential")  # warm-up
            members = [m.proc.pid for m in cluster.members if m.proc is not None]
            cpu0 = sum(cpu_seconds(p) for p in members)
            fleet.go()
            started = time.monotonic()
            handoffs: list[float] = []
            bare: list[float] = []
            client = cluster.client()
            try:
                while time.monotonic() - started < duration - 2:
                    handoffs.append(one_handoff(source, target, disks, "concurrent"))
                    bare.append(etcd.bare_takeover(client, KEYS, "fleet"))
                    source, target = target, source
            finally:
                client.close()
            cpu = (sum(cpu_seconds(p) for p in members) - cpu0) / (time.monotonic() - started)
            rss = sum(rss_mb(p) for p in members)
            size = max(db_mb(m.data) for m in cluster.members)
            for p in procs:
                p.wait(duration + 120)
        finally:
            for site in real:
                site.close()
            fleet.kill()
    results: dict[str, Any] = {"keepalive": [], "lag": [], "txn": [], "errors": {}}
    for out, _ in outs:
        with open(out) as f:
            got = json.load(f)
        for k in ("keepalive", "lag", "txn"):
            results[k] += got[k]
        for name, n in got["errors"].items():
            results["errors"][name] = results["errors"].get(name, 0) + n
    return {
        "hosts": hosts,
        "keys": hosts * GUESTS,
        "set_up_s": set_up,
        "keepalive_p50_ms": percentile(results["keepalive"], 0.5) * 1e3,
        "keepalive_p99_ms": percentile(results["keepalive"], 0.99) * 1e3,
        "keepalives": len(results["keepalive"]),
        "lag_p99_ms": percentile(results["lag"], 0.99) * 1e3,
        "txn_p50_ms": percentile(results["txn"], 0.5) * 1e3,
        "txn_p99_ms": percentile(results["txn"], 0.99) * 1e3,
        "txns": len(results["txn"]),
        "errors": results["errors"],
        "handoff_p50_ms": median(handoffs) * 1e3 if handoffs else float("nan"),
        "handoff_p99_ms": percentile(handoffs, 0.99) * 1e3,
        "handoffs": len(handoffs),
        "bare_ms": median(bare) * 1e3 if bare else float("nan"),
        "etcd_cpu_pct": cpu * 100,
        "etcd_rss_mb": rss,
        "db_mb": size,
    }


def rows_of(m: dict[str, Any]) -> list[Row]:
    n = m["hosts"]
    scale = f"{n} hosts x {GUESTS} guests ({m['keys']:,} keys), 3 members"
    keep_note = (
        f"{m['keepalives']} keepalives, p50 {m['keepalive_p50_ms']:.1f} ms; the workers' own "
        f"lag p99 {m['lag_p99_ms']:.0f} ms; errors {m['errors'] or 'none'}; set-up "
        f"{m['set_up_s']:.0f} s"
    )
    return [
        Row(
            f"8.fleet.{n}.keepalive",
            f"keepalive p99, {scale}",
            m["keepalive_p99_ms"],
            "ms",
            target=Target("value", TTL / 3 * 1e3),
            note=keep_note,
            extra=m,
        ),
        Row(
            f"8.fleet.{n}.txn",
            f"churn transaction p99 (starts, stops, migrations at {CHURN:g}/s), {scale}",
            m["txn_p99_ms"],
            "ms",
            note=f"{m['txns']} transactions, p50 {m['txn_p50_ms']:.1f} ms",
        ),
        Row(
            f"8.fleet.{n}.handoff",
            f"real handoff p50 under the load ({DISKS} disks, concurrent), {scale}",
            m["handoff_p50_ms"],
            "ms",
            m["bare_ms"],
            "one bare take-over transaction under the same load",
            Target("ratio", 4),
            note=f"{m['handoffs']} handoffs, p99 {m['handoff_p99_ms']:.1f} ms",
        ),
        Row(
            f"8.fleet.{n}.etcd",
            f"etcd CPU (3 members, % of one core), {scale}",
            m["etcd_cpu_pct"],
            "%",
            note=f"RSS {m['etcd_rss_mb']:.0f} MB summed; database {m['db_mb']:.0f} MB",
        ),
    ]


def storm_under_fleet(ctx: Context) -> Row:
    """The etcd storm (bench/etcd_storm.py: starts, then every guest migrated, judged from
    etcd's keys all along) on a cluster that also carries a fleet's keepalives and churn."""
    from bench import etcd_storm

    fleet_hosts = 300 if ctx.quick else 1000
    hosts, guests, window = (4, 10, 10) if ctx.quick else (4, 50, 25)
    tmp = ctx.tmpdir("lfbf")

    def background(sites: etcd.Sites) -> Any:
        fleet = Fleet(sites.cluster, fleet_hosts, 3600, tmp)
        try:
            fleet.wait_ready()
        except BaseException:
            fleet.kill()
            raise
        fleet.go()
        return fleet.kill

    found = etcd_storm.lockfsm_storm(hosts, guests, window, background)
    return Row(
        "8.fleet.storm.violations",
        f"etcd storm ({hosts} hosts x {guests} guests, all migrated {window} at a time), "
        f"judged, with a fleet of {fleet_hosts} hosts x {GUESTS} guests on the same cluster",
        float(found["violations"]),
        "",
        target=Target("value", 0),
        note=(
            f"{found.get('samples', 0)} samples of etcd's keys; start storm "
            f"{found['storm_s']:.1f} s, migration storm {found['migration_s']:.1f} s; "
            f"{found.get('violations_sampled') or 'no violation'}"
        ),
    )


def run(ctx: Context) -> list[Row]:
    why = etcd.missing()
    sizes = (100, 1000) if ctx.quick else (100, 1000, 5000)
    if why:
        return [unavailable(f"8.fleet.{n}.keepalive", "fleet keepalive p99", why) for n in sizes]
    rows: list[Row] = []
    duration = 20.0 if ctx.quick else 40.0
    for n in sizes:
        try:
            rows += rows_of(fleet_at(ctx, n, duration))
        except Exception as e:  # the machine's limit, reported
            rows.append(
                unavailable(f"8.fleet.{n}.keepalive", f"fleet of {n} hosts", f"failed: {e}")
            )
            break
    try:
        rows.append(storm_under_fleet(ctx))
    except Exception as e:
        rows.append(unavailable("8.fleet.storm.violations", "etcd storm under a fleet", str(e)))
    cliff = next((r for r in rows if r.key.endswith(".keepalive") and r.met is False), None)
    print(
        "fleet: keepalive p99 "
        + (f"passes TTL/3 at {cliff.key.split('.')[2]} hosts" if cliff else "stays under TTL/3")
    )
    return rows


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
