"""Directed programs: one exact interleaving of moves driven through the two-host machine
(lockfsm/fuzz/machine.py, fcntl), with every invariant checked after each move, as the
stateful test checks them.  tests/test_bites.py runs them with and without a breakage, to tell a
breakage the protocol made harmless (the program passes with it) from one the fuzzing does not
reach (the program fails with it, passes without).

    python -m tests.support.directed target-completes-first

prints ``passed`` (exit 0) or ``FAILED: <the invariant's message>`` (exit 1).
"""

from __future__ import annotations

import sys
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from lockfsm.fuzz.machine import TwoHosts

#: name -> (move, host) steps after the boot (the guest started on A, disks d0 and d1)
PROGRAMS: dict[str, list[tuple[str, str]]] = {
    # The target's take-over while the source's guest still executes: refused (S3).
    "target-completes-first": [("prepare", "A"), ("incoming", "B"), ("complete", "B")],
    # The same take-over waiting in the background; the source hands off, then it returns.
    "target-completes-first-in-the-background": [
        ("prepare", "A"),
        ("incoming", "B"),
        ("complete in the background", "B"),
        ("complete", "A"),
    ],
    # A second host starts the guest while the first runs it: refused (S1).
    "start-beside-a-running-guest": [("start", "B")],
    # The protocol's own order: the source hands off, then the target takes over.
    "source-completes-first": [
        ("prepare", "A"),
        ("incoming", "B"),
        ("complete", "A"),
        ("complete", "B"),
    ],
}


def run(
    program: list[tuple[str, str]], machine_class: type[TwoHosts] = TwoHosts, **boot: Any
) -> str | None:
    """Drive ``program`` through ``machine_class`` (booted with ``boot``, by default the
    guest's disks exclusive); None if every invariant held, else the first assertion's
    message."""
    failures: list[str] = []

    @settings(
        max_examples=1,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.none())
    def drive(_: None) -> None:
        machine = machine_class()
        try:
            machine.boot(**(boot or {"shared": False}))
            machine.check_all()
            for move, host in program:
                machine.do_move(move, machine.sides[host])
                machine.check_all()
        except AssertionError as e:
            failures.append(str(e))
        finally:
            machine.teardown()

    drive()
    return failures[0] if failures else None


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in PROGRAMS:
        print(f"usage: python -m tests.support.directed {{{','.join(PROGRAMS)}}}", file=sys.stderr)
        return 2
    failure = run(PROGRAMS[argv[0]])
    print("passed" if failure is None else f"FAILED: {failure}")
    return 0 if failure is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
