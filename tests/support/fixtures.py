"""The lock services' fixtures, each started once a session and shared by the modules that use
it (registered by tests/conftest.py through ``pytest_plugins``; never imported by a test)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from lockfsm.fuzz import sanlock_daemons
from tests.support.needs import require, require_sanlock

if TYPE_CHECKING:  # the etcd client loads gRPC: only the sessions that use etcd import it
    from lockfsm.backends.etcd.client import SyncEtcd
    from tests.support.etcd_cluster import Cluster, Site
    from tests.support.fault_driver import Matrix
    from tests.support.fault_world import Env

SHARED_PREFIX = "/lockfsm-tests/"


# -- sanlock --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cluster() -> Iterator[sanlock_daemons.Cluster]:
    """Three sanlock daemons, one per simulated host, joined to one lockspace (~3 s with
    io_timeout 1)."""
    require_sanlock()
    hosts, started = sanlock_daemons.HOSTS, time.monotonic()
    with sanlock_daemons.cluster(hosts) as c:
        print(f"\nsanlock: {hosts} hosts joined in {time.monotonic() - started:.2f} s")
        yield c


# -- etcd -----------------------------------------------------------------------------------------


def _etcd(size: int) -> Iterator[Cluster]:
    from tests.support.etcd_cluster import Cluster

    require("etcd")
    cluster = Cluster(size)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def etcd1() -> Iterator[Cluster]:
    """A single etcd member."""
    yield from _etcd(1)


@pytest.fixture(scope="session")
def etcd3() -> Iterator[Cluster]:
    """A 3-member etcd cluster."""
    yield from _etcd(3)


@pytest.fixture(scope="session")
def shared_sites(etcd1: Cluster) -> Iterator[list[Site]]:
    """Three hosts' agents on the single member, shared by the tests that do not break them
    (each test has disks of its own, so keys of its own)."""
    from tests.support.etcd_cluster import Site

    sites: list[Site] = []
    try:
        for name in ("hostA", "hostB", "hostC"):
            sites.append(Site(etcd1, name, SHARED_PREFIX))
        yield sites
    finally:
        for site in sites:
            site.close()


@pytest.fixture
def db(etcd1: Cluster) -> Iterator[SyncEtcd]:
    """A synchronous client of the single member, to read etcd's key space."""
    with etcd1.client() as client:
        yield client


# -- the fault matrix (tests/test_faults.py) ------------------------------------------------------


@pytest.fixture(scope="session")
def matrix() -> Iterator[Matrix]:
    """The rows' outcomes, printed at the end of the session (and written to the file
    LOCKFSM_FAULT_MATRIX names)."""
    from tests.support.fault_driver import Matrix

    m = Matrix()
    yield m
    text = m.render()
    if text:
        print(text)
        path = os.environ.get("LOCKFSM_FAULT_MATRIX")
        if path:
            with open(path, "w") as f:
                f.write(text + "\n")


@pytest.fixture(scope="session")
def environments() -> Iterator[dict[str, Env]]:
    """The backends' lock services, each started by the first row that needs it."""
    envs: dict[str, Env] = {}
    yield envs
    for env in envs.values():
        env.close()
    envs.clear()
