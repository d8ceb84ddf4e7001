from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers import Host, short_tmpdir

IN_CI = os.environ.get("CI") == "true"

settings.register_profile(
    "ci",
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "nightly",
    max_examples=2000,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "hunt",  # a few minutes: LOCKFSM_HYPOTHESIS_PROFILE=hunt, to look for a rare interleaving
    max_examples=int(os.environ.get("LOCKFSM_HUNT_EXAMPLES", "200")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("LOCKFSM_HYPOTHESIS_PROFILE", "ci"))


def require(program: str) -> None:
    """Skip (outside CI) or fail (in CI) when a component the test needs is missing."""
    if shutil.which(program) is None:
        if IN_CI:
            pytest.fail(f"{program} is required in CI but is not installed")
        pytest.skip(f"{program} is not installed")


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
    made: list[Host] = []

    def make(backend: str = "fcntl", **config: object) -> Host:
        made.append(Host(backend, lockspace, **config))
        return made[-1]

    yield make
    for h in made:
        h.cleanup()


@pytest.fixture
def host(hosts: Callable[..., Host]) -> Host:
    return hosts()


@pytest.fixture
def other_host(hosts: Callable[..., Host]) -> Host:
    """A second host on the same lockspace."""
    return hosts()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long runs (marker ``slow``) run only with LOCKFSM_SLOW=1 or when ``-m`` selects them."""
    if os.environ.get("LOCKFSM_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with LOCKFSM_SLOW=1 (or -m slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
