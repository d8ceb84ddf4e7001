"""What a test needs from the machine: a component that is missing skips the test outside CI and
fails it in CI (``CI=true``), where everything must be installed."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

from lockfsm.fuzz import sanlock_daemons

IN_CI = os.environ.get("CI") == "true"


def missing(component: str) -> NoReturn:
    """Skip (outside CI) or fail (in CI): ``component`` is not installed."""
    if IN_CI:
        pytest.fail(f"{component} is required in CI but is not installed")
    pytest.skip(f"{component} is not installed")


def require(program: str) -> None:
    """Skip (outside CI) or fail (in CI) when a program the test needs is missing."""
    if shutil.which(program) is None:
        missing(program)


def require_sanlock() -> None:
    """Skip (outside CI) or fail (in CI) when sanlock or its Python binding is missing."""
    why = sanlock_daemons.missing()
    if why:
        missing(why)
