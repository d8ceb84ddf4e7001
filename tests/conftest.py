from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

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
def host(lockspace: str) -> Iterator[Host]:
    h = Host("fcntl", lockspace)
    yield h
    h.cleanup()


@pytest.fixture
def other_host(lockspace: str) -> Iterator[Host]:
    """A second host on the same lockspace (its own run dir, its own daemon)."""
    h = Host("fcntl", lockspace)
    yield h
    h.cleanup()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long runs (marker ``slow``) run only with LOCKFSM_SLOW=1 or when ``-m`` selects them."""
    if os.environ.get("LOCKFSM_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with LOCKFSM_SLOW=1 (or -m slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
