"""Deliberate breakages of lockfsm for the fault matrix's bite proof (tests/test_faults.py,
``test_the_matrix_bites``): with this directory on ``PYTHONPATH`` and ``LOCKFSM_BREAK`` naming a
breakage, every Python process of the run (the test runner, each daemon process and each
``lockfsm-supervisor``, which inherit the environment) patches lockfsm at start-up.  No file
under lockfsm/ is touched.  Without ``LOCKFSM_BREAK`` (or with another value) this does nothing.
:data:`APPLIED` names the breakage in force.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

APPLIED: str | None = None


def no_pdeathsig() -> None:
    """The guest is not told to die with its supervisor (PR_SET_PDEATHSIG is never set)."""
    from lockfsm.supervisor import guest

    guest.PR_SET_PDEATHSIG = 0  # prctl(0, ...) fails with EINVAL: nothing is set


def attach_forgets_hotplug() -> None:
    """A re-attaching daemon drops the hot-plugged disks from what it tracks (S4)."""
    from lockfsm.daemon import manager as api

    original = api.LockManager._do_attach_supervisor

    def attach(self: Any, args: Mapping[str, Any]) -> None:
        original(self, args)
        items = self._registry.items
        for ident in list(items)[1:]:
            if ident[0].value == "disk" and len(items) > 2:
                del items[ident]

    api.LockManager._do_attach_supervisor = attach  # type: ignore[method-assign]


def timeout_kills_supervisor() -> None:
    """A daemon whose supervisor does not answer kills it (a refused call changes the leases:
    S5)."""
    from lockfsm.daemon import client
    from lockfsm.errors import BackendError
    from lockfsm.protocol import rundir

    original = client.SupervisorClient.call

    def call(self: Any, launch: str, request: dict[str, Any], timeout: float) -> Any:
        try:
            return original(self, launch, request, timeout)
        except BackendError as e:
            if "did not answer" in str(e):
                record = rundir.read_record(self.run_dir, launch)
                if record is not None:
                    os.kill(int(record["pid"]), signal.SIGKILL)
            raise

    client.SupervisorClient.call = call  # type: ignore[method-assign]


def take_over_without_leases() -> None:
    """A migration target's take-over reports success without taking the leases (S3, S2)."""
    from lockfsm.supervisor import process as supervisor

    def take_over_leases(self: Any, args: Mapping[str, Any]) -> None:
        pass

    supervisor.Supervisor._do_take_over_leases = take_over_leases  # type: ignore[method-assign]


BREAKAGES: dict[str, Callable[[], None]] = {
    "no-pdeathsig": no_pdeathsig,
    "attach-forgets-hotplug": attach_forgets_hotplug,
    "timeout-kills-supervisor": timeout_kills_supervisor,
    "take-over-without-leases": take_over_without_leases,
}

_wanted = os.environ.get("LOCKFSM_BREAK")
if _wanted in BREAKAGES:
    BREAKAGES[_wanted]()
    APPLIED = _wanted
elif _wanted:
    print(f"fault_breakage: unknown LOCKFSM_BREAK {_wanted!r}", file=sys.stderr)
