"""Record the diagrams' runs on real lock services: ``python tools/record_runs.py [BACKEND...]``
(fcntl, sanlock, etcd; all three by default) writes ``diagrams/run-<backend>.json``; then run
``lockfsm spec gen`` (the package's copy) and ``lockfsm diagrams``.

sanlock: two real sanlock daemons (two simulated hosts) joined to one lockspace; etcd: a real
one-member etcd cluster and one real lease agent per simulated host.  Both are started here, by
the tests' own support (tests/support), and stopped by pid when the run is recorded.  A lease is
lost on fcntl the way fcntl loses one (its lease file replaced, a rival locking it); on sanlock
and etcd through the report the lock service's kill path makes (``lockfsm-supervisor
--lease-lost``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lockfsm.embed.standin import Host, short_tmpdir  # noqa: E402
from lockfsm.tools import recording  # noqa: E402


def record_sanlock() -> dict[str, Any]:
    from tests.support import sanlock_daemons

    with sanlock_daemons.cluster(2) as cluster:
        work = short_tmpdir("lfrs")
        hosts = [
            Host(
                "sanlock",
                cluster.lease_dir,
                stderr=subprocess.DEVNULL,
                **cluster.config(cluster.daemons[i]),
            )
            for i in (0, 1)
        ]
        try:
            return recording.record("sanlock", hosts[0], hosts[1], work)
        finally:
            for h in hosts:
                h.cleanup()
            shutil.rmtree(work, ignore_errors=True)


def record_etcd() -> dict[str, Any]:
    from tests.support.etcd_cluster import Cluster, Site

    work = short_tmpdir("lfre")
    path = os.path.join(work, "trace.jsonl")
    os.environ["LOCKFSM_TRACE"] = path  # the agents record their handoff markers too
    cluster = Cluster(1)
    sites: list[Site] = []
    try:
        cluster.wait_healthy()
        prefix = cluster.fresh_prefix()
        sites = [Site(cluster, name, prefix) for name in ("host-a", "host-b")]
        hosts = [s.host(stderr=subprocess.DEVNULL) for s in sites]
        return recording.record("etcd", hosts[0], hosts[1], work)
    finally:
        os.environ.pop("LOCKFSM_TRACE", None)
        for s in sites:
            s.close()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(backends: list[str]) -> int:
    makers = {"fcntl": recording.record_fcntl, "sanlock": record_sanlock, "etcd": record_etcd}
    for backend in backends or list(makers):
        if backend not in makers:
            print(f"record_runs: unknown backend {backend!r} (known: {', '.join(makers)})")
            return 2
        path = ROOT / "diagrams" / f"run-{backend}.json"
        path.write_text(json.dumps(makers[backend](), indent=1) + "\n")
        print(f"recorded {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
