"""The tests' common fixtures (a work directory, a lockspace, stand-in hosts on it, disks), the
hypothesis profiles and the ``slow`` marker's rule.  The lock services' fixtures (sanlock
daemons, etcd members and agents, the fault matrix's environments) are in
tests/support/fixtures.py."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

from lockfsm.embed.standin import Host, make_disks, short_tmpdir
from tests.support.helpers import made_hosts

pytest_plugins = ["tests.support.fixtures"]

#: In CI hypothesis derandomizes by default (the same examples in every run, and a seed given
#: with --hypothesis-seed does not count); LOCKFSM_HYPOTHESIS_DERANDOMIZE=0 makes the seed count
#: (tests/power.py and the bite canaries need it), =1 derandomizes anywhere.
_DERANDOMIZE = os.environ.get("LOCKFSM_HYPOTHESIS_DERANDOMIZE")
_SEEDING = {} if _DERANDOMIZE is None else {"derandomize": _DERANDOMIZE == "1"}

settings.register_profile(
    "ci",
    **_SEEDING,
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "nightly",
    **_SEEDING,
    max_examples=2000,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "hunt",  # a few minutes: LOCKFSM_HYPOTHESIS_PROFILE=hunt, to look for a rare interleaving
    **_SEEDING,
    max_examples=int(os.environ.get("LOCKFSM_HUNT_EXAMPLES", "200")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("LOCKFSM_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def workdir() -> Iterator[str]:
    d = short_tmpdir("lfw")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def lockspace() -> Iterator[str]:
    d = short_tmpdir("lfl")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def hosts(lockspace: str) -> Iterator[Callable[..., Host]]:
    """Make simulated hosts on the test's lockspace (each its own run dir and daemon); every
    process they started is killed at the end."""

    def new(backend: str = "fcntl", **config: object) -> Host:
        return Host(backend, lockspace, **config)

    with made_hosts(new) as make:
        yield make


@pytest.fixture
def host(hosts: Callable[..., Host]) -> Host:
    return hosts()


@pytest.fixture
def other_host(hosts: Callable[..., Host]) -> Host:
    """A second host on the same lockspace."""
    return hosts()


@pytest.fixture
def disks(workdir: str) -> list[str]:
    """Two disks and one to share (the tests that want others say which)."""
    return make_disks(workdir, "a.img", "b.img", "s.img")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long runs (marker ``slow``) run only with LOCKFSM_SLOW=1 or when ``-m`` selects them."""
    if os.environ.get("LOCKFSM_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with LOCKFSM_SLOW=1 (or -m slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
