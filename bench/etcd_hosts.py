"""etcd members and one lease agent per simulated host, for the benchmarks.

The processes are the tests' (tests/support/etcd_cluster.py: members on loopback with free
ports, each in its own session and data directory, fast elections; one real
``lockfsm-etcd-agent`` per host, a ``Site``, also in its own session), stopped by pid at the
end.  :func:`cluster` starts them (the agents in parallel: each imports gRPC, about a second of
CPU) and gives a :class:`Sites`: the hosts, a quiet stand-in host (a daemon) on any of them, and
a client that reads etcd's key space.

The bare baseline, :func:`bare_takeover`, is one etcd transaction of the take-over's shape
(per lease: compare the reservation, the handed-off marker and the create revision the cookie
carries; put the holder, delete the reservation, read the holder back; on failure, read the
lease's keys), timed inside the client's event loop, so that it costs what etcd and gRPC cost
and nothing of this process's threads.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from lockfsm.embed.standin import Host

if TYPE_CHECKING:  # the etcd client loads gRPC: imported once a cluster is started
    from tests.support.etcd_cluster import Site

PREFIX = "/lockfsm-bench/"


def missing() -> str | None:
    """Why the etcd figures cannot be measured here, or None."""
    if importlib.util.find_spec("lockfsm.backends.etcd") is None:
        return "etcd backend not built"
    if shutil.which("etcd") is None:
        return "etcd is not installed (Debian: etcd-server)"
    if importlib.util.find_spec("aetcd") is None:
        return "aetcd is not installed (pip install -e '.[etcd]')"
    return None


class Sites:
    """A running cluster of ``members`` and ``hosts`` lease agents (host0, host1, ...)."""

    def __init__(self, members: int, hosts: int, ttl: int, tls_dir: str | None = None) -> None:
        from tests.support.etcd_cluster import Cluster, Site

        ca = None
        if tls_dir is not None:  # production settings: TLS, client certificates, etcd auth
            from tests.support.certs import CA

            ca = CA(tls_dir)
        self.cluster = Cluster(members, ca)
        names = [f"host{i}" for i in range(hosts)]
        creds: dict[str, dict[str, str]] = {n: {} for n in names}
        if ca is not None:
            self.cluster.enable_auth({"lockfsm": PREFIX}, {n: "lockfsm" for n in names})
            creds = {n: self.cluster.tls_config(n) for n in names}
        self.sites: list[Site | None] = [None] * hosts
        errors: list[BaseException] = []

        def start(i: int) -> None:
            try:
                self.sites[i] = Site(self.cluster, names[i], PREFIX, ttl, **creds[names[i]])
            except BaseException as e:  # raised below, once every thread is done
                errors.append(e)

        threads = [threading.Thread(target=start, args=(i,)) for i in range(hosts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.stop()
            raise errors[0]

    def host(self, i: int, **extra: Any) -> Host:
        """A daemon on simulated host ``i`` (its own run dir, the host's agent)."""
        from bench import run_dir

        site = self.sites[i]
        assert site is not None
        extra.setdefault("run_dir", run_dir())
        return site.host(stderr=subprocess.DEVNULL, **extra)

    def agent_pids(self) -> list[int]:
        return [s.agent.pid for s in self.sites if s is not None]

    def client(self) -> Any:
        """A synchronous client of every member (a lockfsm.etcd_client.SyncEtcd)."""
        return self.cluster.client()

    def stop(self) -> None:
        for site in self.sites:  # its hosts first, then its agent
            if site is not None:
                site.close()
        self.cluster.stop()


@contextmanager
def cluster(members: int, hosts: int, ttl: int = 10, tls_dir: str | None = None) -> Iterator[Sites]:
    """``members`` etcd members and ``hosts`` agents; with ``tls_dir``, TLS with client
    certificates (a CA made there) and etcd authentication, as in production."""
    sites = Sites(members, hosts, ttl, tls_dir)
    try:
        yield sites
    finally:
        sites.stop()


def bare_takeover(client: Any, keys: int, tag: str, idle: float = 0.0) -> float:
    """Seconds of one bare etcd transaction of the take-over's shape over ``keys`` keys (the
    keys are set up before the clock starts, untimed, and left for the next sample).  The
    setup is a transaction too, so the timed one finds etcd and the connection busy; with
    ``idle``, the client waits that many seconds first, as an agent's transaction comes after
    a pause (a handoff's take-over seconds after the reservation)."""
    from lockfsm.backends.etcd.client import create, delete, get, prefix_end, put, value

    base = f"/lockfsm-bench-bare/{tag}/".encode()
    pairs = [(base + b"%d/x" % i, base + b"%d/r" % i) for i in range(keys)]

    async def sample(etcd: Any) -> float:
        setup = await etcd.txn(
            [],
            [op for x, r in pairs for op in (put(x, b"handed off to r"), put(r, b"r"))]
            + [get(x) for x, _ in pairs],
        )
        made = [rows[0].create for rows in setup.ranges]  # the create revision a cookie carries
        compare = [
            c
            for (x, r), rev in zip(pairs, made, strict=True)
            for c in (value(r, b"r"), value(x, b"handed off to r"), create(x, rev))
        ]
        success = [op for x, r in pairs for op in (put(x, b"holder"), delete(r), get(x))]
        failure = [get(x[:-1], prefix_end(x[:-1])) for x, _ in pairs]  # each lease's keys
        if idle:
            await asyncio.sleep(idle)
        started = time.perf_counter()
        result = await etcd.txn(compare, success, failure)
        took = time.perf_counter() - started
        if not result.succeeded:
            raise RuntimeError("the bare take-over transaction did not succeed")
        return took

    took: float = client.run(sample)
    return took
