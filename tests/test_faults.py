"""The fault matrix (issue 9, item 1): one parametrised test, each row a real fault on real
processes -- kill -9 or SIGSTOP of the guest, its supervisor, the daemon side (a process of its
own per simulated host, tests/support/fault_daemon.py) or the lock service (sanlock: the host's
sanlock daemon; etcd: the member the host's lease agent uses, and the agent itself) -- at one
step of a guest's life: started, a disk hot-plugged, a migration prepared, the target's incoming
guest running, the target waiting in complete_migrate_in, a shutdown in progress.

Each row carries the documented end state (specs/PROTOCOL.md, DESIGN.md) and checks it, with the
invariants read from the lock service's truth (tests/support/fault_world.py) before the fault,
while it acts, after the recovery and at the end: S1 (no disk written by two executing guests;
the lock service never grants a lease twice), S2 (an executing guest's supervisor holds all its
leases), S3/L1 in migration rows, S4 after a daemon is killed and a new one ATTACHes, S5 where a
call is refused.  Faults on the target side hit the target's processes (steps "target incoming"
and "target waiting"); the others hit the source's, and the full product adds the two target
steps with the fault on the source's side.  The guest is then driven to its end: a migration
completes if both sides can, else both cancel; every guest is shut down; at the end no lease is
held (or, for a crashed sanlock host, its leases stay owned on disk until sanlock's bound:
nothing else can take them meanwhile).

The default rows cover every (target, signal) and every step at least once per backend; the
whole cross product runs with LOCKFSM_SLOW=1.  A row of its own: the daemon killed during a
migration to the host that runs the source (it found an S4 bug, fixed in Supervisor._point).
Rows that reveal a bug in lockfsm/ are marked xfail(strict=True) with the reason (KNOWN_BUGS)
until it is fixed.  ``pytest -s tests/test_faults.py`` prints the matrix with each row's
outcome.  Backends the machine lacks are skipped (a failure in CI).

What a row is and how the rows are enumerated: tests/support/fault_rows.py; each row's
documented end state: tests/support/fault_outcomes.py; running a row against a world:
tests/support/fault_driver.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

import lockfsm
from lockfsm.fuzz.procs import living
from tests.support import ROOT
from tests.support.fault_driver import FaultRun, Matrix, env_for, outcome
from tests.support.fault_outcomes import KNOWN_BUGS
from tests.support.fault_rows import BACKENDS, Row, all_rows, default_rows
from tests.support.fault_world import Env, World, wait_for


def params() -> list[Any]:
    default = default_rows()
    out = []
    for row in all_rows():
        marks = []
        if row not in default:
            marks.append(pytest.mark.slow)
        if row.id in KNOWN_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[row.id]))
        out.append(pytest.param(row, id=row.id, marks=marks))
    return out


def print_supervisor_logs(run: FaultRun) -> None:
    """Show what the row's supervisors wrote (pytest prints it with the failure)."""
    for host in run.world.hosts:
        path = os.path.join(host.run_dir, "supervisors.log")
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                print(f"--- host {host.name}: {path}\n{f.read()[-4000:]}")


@pytest.mark.parametrize("row", params())
def test_fault(row: Row, matrix: Matrix, environments: dict[str, Env]) -> None:
    started = time.monotonic()
    if row.kind == "n/a":
        matrix.record(row, "n/a", 0.0)
        pytest.skip(row.expected)
    try:
        env = env_for(environments, row.backend)
    except pytest.skip.Exception:
        matrix.record(row, "skipped: backend missing", 0.0)
        raise
    run = FaultRun(env, row)
    try:
        run.run()
    except Exception as e:
        run.violations.append(f"error: {type(e).__name__}: {e}")
        raise
    finally:
        if run.violations:
            print_supervisor_logs(run)
        run.close()
        text = outcome(run.violations)
        if row.id in KNOWN_BUGS and run.violations:
            text = "xfail (known bug): " + text
        matrix.record(row, text, time.monotonic() - started)
    assert not run.violations, "\n".join(run.violations)


# -- a row of its own: the daemon dies during a migration to the host that runs the source ---

# Found by this row: a migration target on the host that runs the source took dom-<uuid> from
# the running source (S4).  Supervisor._point now leaves it to a live supervisor of another launch
# until the target takes over.


@pytest.mark.parametrize("backend", BACKENDS)
def test_daemon_killed_in_a_migration_to_the_same_host(
    backend: str, matrix: Matrix, environments: dict[str, Env]
) -> None:
    """kill -9 of a host's daemon while it migrates a guest to the same host (the target's
    side run by a second daemon process on the same run dir): the new daemon's ATTACH must find
    the running source (S4), and still find it after the target is cancelled."""
    step = "target incoming on the source's own host"
    row = Row(
        backend,
        "daemon",
        "SIGKILL",
        step,
        "kill -9 daemon: guest and leases stay; a new daemon ATTACHes to the running source: "
        "migrating_out, same guest and leases (S4); after the target's cancel, still",
    )
    started = time.monotonic()
    env = env_for(environments, backend)
    world = World(env)
    violations: list[str] = []
    try:
        host = world.host("A", env.slot(0))
        disks = world.disks("x.img", "s.img")
        src = world.start(host, "vm", disks[:1], disks[1:])
        source_daemon = host.daemon
        prepared = source_daemon.call(
            "call", uuid=src.uuid, fn="prepare_migrate", args=("qemu+tcp://A/system",)
        )
        target_daemon = host.new_daemon()
        tgt = world.incoming(host, src, prepared["result"])
        source_daemon.kill()
        target_daemon.kill()
        host.new_daemon()
        info = host.daemon.call("attach", uuid=src.uuid, name=src.name)
        if (info["state"], info["guest"]) != ("migrating_out", src.pid):
            violations.append(
                f"S4: ATTACH found {info['state']} with guest {info['guest']}, not the running "
                f"source's guest {src.pid}"
            )
        if info["state"] == "migrating_in":  # the daemon cancels the target it found
            host.daemon.call("call", uuid=src.uuid, fn="complete_migrate_in", args=(True,))
            wait_for(lambda: not living(tgt.pid), 3)
            host.new_daemon()
            try:
                info = host.daemon.call("attach", uuid=src.uuid, name=src.name)
            except lockfsm.LockFSMError as e:
                holders = world.holders()
                holds = all(
                    any(h.pid == src.sup and h.mode == mode for h in holders.get(k, ()))
                    for k, mode, _ in src.leases()
                )
                violations.append(
                    f"S4: after the target's cancel ATTACH finds nothing ({e}) while the source "
                    f"guest executes ({src.executing()}) holding every lease ({holds})"
                )
        violations += world.check("after ATTACH")
    finally:
        world.close()
        text = outcome(violations)
        matrix.record(row, ("xfail (known bug): " if violations else "") + text, 0.0)
        matrix.rows[row] = (matrix.rows[row][0], time.monotonic() - started)
    assert not violations, "\n".join(violations)


# -- the matrix bites: with lockfsm deliberately broken, rows report the violation ------------

#: breakage (tests/fault_breakage/sitecustomize.py) -> (a row, the laws it must report)
BITES = {
    "no-pdeathsig": ("fcntl-supervisor-SIGKILL-started", ("S2",)),
    "attach-forgets-hotplug": ("fcntl-daemon-SIGKILL-hot-plugged", ("S4",)),
    "timeout-kills-supervisor": ("fcntl-supervisor-SIGSTOP-started", ("S5", "S1")),
    "take-over-without-leases": ("fcntl-guest-SIGSTOP-target-waiting", ("S3", "S1", "S2")),
}


@pytest.mark.slow
@pytest.mark.parametrize("breakage", sorted(BITES))
def test_the_matrix_bites(breakage: str, tmp_path: Any) -> None:
    """Every check can fail: each breakage (applied in the test runner, the daemons and the
    supervisors, lockfsm's files untouched) makes its row report the violation it is caught
    by."""
    row, laws = BITES[breakage]
    env = {
        **os.environ,
        "LOCKFSM_BREAK": breakage,
        "LOCKFSM_SLOW": "1",
        "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests", "fault_breakage"), ROOT]),
        "LOCKFSM_FAULT_MATRIX": str(tmp_path / "matrix.txt"),
    }
    check = [sys.executable, "-c", "import sitecustomize; print(sitecustomize.APPLIED)"]
    applied = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
    assert applied.stdout.strip() == breakage, f"breakage not in force: {applied}"
    node = f"tests/test_faults.py::test_fault[{row}]"
    command = [sys.executable, "-m", "pytest", node, "-q", "-p", "no:cacheprovider"]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, f"{breakage}: the row did not fail:\n{out.stdout[-3000:]}"
    matrix = (tmp_path / "matrix.txt").read_text()
    reported = [line for line in matrix.splitlines() if "VIOLATION" in line]
    assert reported, f"{breakage}: no violation in the matrix:\n{matrix}"
    caught = [law for law in laws if f"{law} " in reported[0] or f"{law}:" in reported[0]]
    print(f"\n{breakage}: {row} reports {caught}: {reported[0][:300]}")
    assert caught, f"{breakage}: caught, but not by {laws}: {reported[0]}"
