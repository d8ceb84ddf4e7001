"""Item 7: protocol checking throughput.

hypothesis: the stateful tests' machines run for a fixed number of examples, derandomized,
without the example database: on fcntl, tests/test_stateful.py's one host and
tests/test_stateful_migration.py's two hosts and a rogue third (real supervisors, real guests,
the kernel's locks as the judge); the same two hosts and rogue on etcd
(tests/test_stateful_etcd.py: etcd's key space as the judge) and on sanlock
(tests/test_stateful_sanlock.py, when it exists: the daemons' reports as the judge).  A
subclass counts the steps (hypothesis checks the invariants once after the machine is built
and once after each step).  Steps per second, wall clock, each example's set-up and teardown
included; what the module's fixture starts once (etcd's member and three lease agents, three
joined sanlock daemons) is started before the clock, as pytest would.  The baseline is
hypothesis itself: a machine whose one rule and one invariant do nothing, same settings.

spin: ``lockfsm spec check`` (spin -a, gcc, pan, breadth-first) on the committed models; the
states it reports per second of pan, and the whole command's time against the same pipeline
on an empty model (its fixed cost: mostly gcc).  The 3-host model takes minutes: it runs only
when asked (``--spin-hosts 2,3``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench import REPO, Context
from bench.handoff import etcd_missing
from bench.report import Row, collect, unavailable
from lockfsm.fuzz import sanlock_daemons as sl

STEPS = 20  # stateful_step_count, as the ci profile
#: backend -> the stateful machines that run on it: (module, class).
MACHINES = {
    "fcntl": [
        ("tests.test_stateful", "OneHost"),
        ("tests.test_stateful_migration", "TwoHosts"),
    ],
    "etcd": [("tests.test_stateful_etcd", "EtcdTwoHosts")],
    "sanlock": [("tests.test_stateful_sanlock", "SanlockTwoHosts")],
}
SPIN_HOSTS = (2,)


def _missing(backend: str, module_name: str) -> str | None:
    """Why the machines of ``module_name`` cannot run here, or None."""
    if not os.path.exists(os.path.join(REPO, *module_name.split(".")) + ".py"):
        return f"{module_name.replace('.', '/')}.py does not exist yet"
    if backend == "etcd":
        return etcd_missing()
    if backend == "sanlock":
        why = sl.missing()
        return f"{why} is not installed" if why else None
    return None


@contextmanager
def _world(backend: str, module: Any, machine: Any) -> Iterator[None]:
    """What ``machine`` (a class of ``module``) needs around it, as its pytest fixture gives
    it: on etcd, the module's ``World`` (a member and three lease agents) in ``machine.WORLD``;
    on sanlock, three joined daemons (lockfsm/fuzz/sanlock_daemons.py) in
    ``machine.CLUSTER``."""
    if backend == "etcd":
        machine.WORLD = module.World()
        try:
            yield
        finally:
            machine.WORLD.close()
            machine.WORLD = None
    elif backend == "sanlock":
        with sl.cluster(sl.HOSTS) as cluster:
            machine.CLUSTER = cluster
            try:
                yield
            finally:
                machine.CLUSTER = None
    else:
        yield


def _settings(examples: int) -> Any:
    from hypothesis import HealthCheck, Phase, settings

    return settings(
        max_examples=examples,
        stateful_step_count=STEPS,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


def _steps_per_second(machine: type, examples: int) -> tuple[float, int, float]:
    """(steps/s, steps, seconds) of ``machine`` run for ``examples`` examples."""
    from hypothesis.stateful import run_state_machine_as_test

    counts = {"invariant_checks": 0, "machines": 0}

    class Counting(machine):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            counts["machines"] += 1
            super().__init__()

        def check_invariants(self, *args: Any, **kwargs: Any) -> Any:
            counts["invariant_checks"] += 1
            return super().check_invariants(*args, **kwargs)

    Counting.__name__ = Counting.__qualname__ = f"Counting{machine.__name__}"
    started = time.perf_counter()
    run_state_machine_as_test(Counting, settings=_settings(examples))
    seconds = time.perf_counter() - started
    steps = counts["invariant_checks"] - counts["machines"]
    return steps / seconds, steps, seconds


def _bare_machine() -> type:
    from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

    class Bare(RuleBasedStateMachine):
        @rule()
        def step(self) -> None:
            pass

        @invariant()
        def holds(self) -> None:
            pass

    return Bare


def hypothesis_steps(ctx: Context) -> list[Row]:
    """hypothesis steps per second of the stateful machines, on each backend."""
    import importlib

    examples = ctx.pick(full=8, quick=2)
    bare, _, _ = _steps_per_second(_bare_machine(), examples * 5)
    rows = []
    for backend, machines in MACHINES.items():
        for module_name, name in machines:
            figure = f"hypothesis steps/s, {module_name.split('.')[-1]}.{name} ({backend})"
            why = _missing(backend, module_name)
            if why:
                rows.append(unavailable(f"7.hypothesis.{name}", figure, why))
                continue
            try:
                module = importlib.import_module(module_name)
                machine = getattr(module, name)
                with _world(backend, module, machine):
                    rate, steps, seconds = _steps_per_second(machine, examples)
            except Exception as e:  # this machine's row says so; the others still run
                traceback.print_exc()
                rows.append(
                    unavailable(f"7.hypothesis.{name}", figure, f"failed: {type(e).__name__}: {e}")
                )
                continue
            rows.append(
                Row(
                    f"7.hypothesis.{name}",
                    figure,
                    rate,
                    "steps/s",
                    bare,
                    "a machine whose rule and invariant do nothing",
                    higher_is_better=True,
                    note=f"{steps} steps in {examples} examples, {seconds:.1f} s",
                )
            )
    return rows


def _spin_pipeline(model: str) -> float:
    """Seconds of spin -a, gcc and pan on ``model``, as lockfsm.modelcheck runs them."""
    work = tempfile.mkdtemp(prefix="lfbspin")
    try:
        with open(f"{work}/model.pml", "w") as f:
            f.write(model)
        started = time.perf_counter()
        for cmd in (
            ["spin", "-a", "model.pml"],
            ["gcc", "-O2", "-w", "-DSAFETY", "-DBFS", "-o", "pan", "pan.c"],
            ["./pan", "-m100000"],
        ):
            subprocess.run(cmd, cwd=work, capture_output=True, check=cmd[0] != "./pan")
        return time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)


_REPORT = re.compile(r"(\d+) hosts: (\d+) states, .*?([\d.]+) s \(([\d,]+) states/s\): (.*)")


def spin_states(ctx: Context) -> list[Row]:
    """spin: states explored per second, and the spec check's time."""
    if shutil.which("spin") is None or shutil.which("gcc") is None:
        return [unavailable("7.spin", "spin states/s", "spin or gcc is not installed")]
    hosts = ctx.spin_hosts or SPIN_HOSTS
    args = [a for h in hosts for a in ("--hosts", str(h))]
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "lockfsm", "spec", "check", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    wall = time.perf_counter() - started
    found = _REPORT.findall(out.stdout)
    if not found:
        raise RuntimeError(f"lockfsm spec check said: {(out.stdout + out.stderr)[-300:]}")
    empty = _spin_pipeline("active proctype p() { skip }\n") * len(hosts)
    rows = [
        Row(
            f"7.spin.{n}hosts",
            f"spin states explored per second, {n}-host model (pan's run)",
            float(rate.replace(",", "")),
            "states/s",
            note=f"{int(states):,} states in {float(secs):.1f} s: {verdict}",
        )
        for n, states, secs, rate, verdict in found
    ]
    total = sum(int(s) for _, s, _, _, _ in found)
    rows.append(
        Row(
            "7.spin.check",
            f"`lockfsm spec check --hosts {','.join(map(str, hosts))}`, whole command",
            wall,
            "s",
            empty,
            "the same pipeline (spin -a, gcc, pan) on an empty model, once a model",
            note=f"{total / wall:,.0f} states/s over the whole command",
        )
    )
    return rows


def run(ctx: Context) -> list[Row]:
    return collect(ctx, [hypothesis_steps, spin_states])
