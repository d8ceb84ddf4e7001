"""The two-host hypothesis stateful test of tests/test_stateful_migration.py, on etcd: the
machine of :mod:`lockfsm.fuzz.etcd` (the same rules, the same invariants S1-S5 and L1, judged
from etcd's key space and the processes instead of the kernel's lock table).

Three hosts, each with a real ``lockfsm-etcd-agent`` on one real etcd member, started once for
the module (the :class:`~lockfsm.fuzz.etcd.EtcdWorld` of the machines); every example has disks
(so keys) of its own.

Profiles from tests/conftest.py; this file runs a third of the examples the fcntl one does
(each step starts real processes on both sides of an agent)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import Phase, settings

from lockfsm.embed.standin import Host
from lockfsm.fuzz import machine as base
from lockfsm.fuzz.etcd import EtcdTwoHosts
from tests.support.etcd_cluster import Cluster, Site
from tests.support.needs import require

TTL = 4
PREFIX = "/lockfsm-stateful/"


class World:
    """The module's etcd member, its three agents and a client."""

    prefix = PREFIX

    def __init__(self) -> None:
        self.cluster = Cluster(1)
        self.sites: dict[str, Site] = {}
        try:
            for name in "ABC":
                self.sites[name] = Site(self.cluster, f"host{name}", PREFIX, TTL)
        except BaseException:
            self.close()
            raise
        self.db = self.cluster.client()

    def host(self, name: str) -> Host:
        site = self.sites[name]
        return Host("etcd", site.dir, handoff_timeout=base.HANDOFF_TIMEOUT, **site.config)

    def close(self) -> None:
        if hasattr(self, "db"):
            self.db.close()
        for site in self.sites.values():
            site.close()
        self.cluster.stop()


@pytest.fixture(scope="module", autouse=True)
def world() -> Iterator[World]:
    require("etcd")
    EtcdTwoHosts.WORLD = world = World()
    try:
        yield world
    finally:
        world.close()
        EtcdTwoHosts.WORLD = None


# Rules like the fcntl test's, fewer examples: every step starts processes against an agent.
EtcdTwoHosts.TestCase.settings = settings(
    max_examples=max(1, settings().max_examples // 3),
    deadline=None,
    phases=[p for p in Phase if p is not Phase.explain],
)
TestEtcdTwoHosts = EtcdTwoHosts.TestCase
