"""Item 1, core overhead: one manager call through the tables (nop backend, in-process) against
one bare ``transitions`` trigger, and the memory of 10,000 live managers in one process.

The call is ``set_parameter("name", ...)`` on an idle manager: one event of the domain table, its
argument checked, its move looked up, its action run through the shared ``transitions`` machine,
its history entry and log record made.  The bare trigger is a model added to its own
``Machine`` with one self-loop and no callback.

Memory is measured in fresh interpreters (``python -m bench.core``), so that what this process
allocated before cannot be reused and hide the cost: RSS after building the managers minus RSS
before, per manager.
"""

from __future__ import annotations

import json
import sys
import uuid as uuidlib
from typing import Any

from bench import Context
from bench.measure import alternate, in_fresh_interpreter, median, per_call, spread
from bench.report import Row, Target, collect

MANAGERS = 10_000
DISKS_PER_MANAGER = 4


def _bare_trigger() -> Any:
    """A zero-argument callable firing one bare transitions trigger."""
    from transitions import Machine

    class Model:
        pass

    model = Model()
    machine = Machine(model=model, states=["idle"], initial="idle", auto_transitions=False)
    machine.add_transition("tick", "idle", "idle")
    return model.tick


def _manager_call(run_dir: str) -> Any:
    """A zero-argument callable making one manager call, on a manager that is replaced every
    10,000 calls (its history grows one entry a call)."""
    import lockfsm

    driver = lockfsm.load_driver("nop", {"run_dir": run_dir})
    state: dict[str, Any] = {"calls": 0}

    def fresh() -> Any:
        mgr = driver.new_manager()
        mgr.set_parameter("uuid", str(uuidlib.uuid4()))
        mgr.set_parameter("id", 1)
        return mgr

    state["mgr"] = fresh()

    def call() -> None:
        state["calls"] += 1
        if state["calls"] % 10_000 == 0:
            state["mgr"].free()
            state["mgr"] = fresh()
        state["mgr"].set_parameter("name", "vm1")

    return call


def call_overhead(ctx: Context) -> Row:
    """One manager call against one bare trigger, per call, interleaved batches."""
    run_dir = ctx.tmpdir("lfbc")
    calls = 2000
    ours, theirs = alternate(
        per_call(_manager_call(run_dir), calls),
        per_call(_bare_trigger(), calls),
        rounds=ctx.pick(full=40, quick=8),
    )
    return Row(
        "1.call",
        "manager call (set_parameter), nop, in-process",
        median(ours) * 1e6,
        "us",
        median(theirs) * 1e6,
        "one bare transitions trigger (self-loop, no callback)",
        Target("ratio", 3),
        note=f"batches of {calls} calls, {spread(ours, 1e6, 'us')}",
    )


def _worker(kind: str, count: int) -> dict[str, float]:
    """In a fresh interpreter: RSS growth for ``count`` live managers (``lockfsm``) or bare
    transitions models (``bare``)."""
    import gc
    import shutil
    import tempfile

    from bench import disk_files
    from bench.measure import own_rss_kb

    keep: list[Any] = []
    tmp = tempfile.mkdtemp(prefix="lfbm", dir="/tmp")
    if kind == "lockfsm":
        import lockfsm
        from lockfsm import ResourceType

        disks = disk_files(tmp, count * DISKS_PER_MANAGER)
        driver = lockfsm.load_driver("nop", {"run_dir": tmp})
        driver.new_manager().free()  # everything imported and built once
    else:
        from transitions import Machine

        class Model:
            pass

        machine = Machine(model=None, states=["idle"], initial="idle", auto_transitions=False)
        machine.add_transition("tick", "idle", "idle")
    gc.collect()
    before = own_rss_kb()
    for i in range(count):
        if kind == "lockfsm":
            mgr = driver.new_manager()
            mgr.set_parameter("uuid", str(uuidlib.uuid4()))
            mgr.set_parameter("name", f"vm{i}")
            mgr.set_parameter("id", i)
            for d in range(DISKS_PER_MANAGER):
                mgr.register_resource(ResourceType.DISK, disks[i * DISKS_PER_MANAGER + d])
            keep.append(mgr)
        else:
            model = Model()
            machine.add_model(model)
            keep.append(model)
    gc.collect()
    after = own_rss_kb()
    shutil.rmtree(tmp, ignore_errors=True)
    return {"kb_each": (after - before) / count}


def _measure_in_child(kind: str, count: int) -> float:
    return float(in_fresh_interpreter("bench.core", kind, count, timeout=600)["kb_each"])


def manager_memory(ctx: Context) -> Row:
    """RSS per live manager (identity set, 4 disks registered) in a process of 10,000."""
    ours, theirs = alternate(
        lambda: _measure_in_child("lockfsm", MANAGERS),
        lambda: _measure_in_child("bare", MANAGERS),
        rounds=ctx.pick(full=3, quick=1),
        warmup=0,
    )
    return Row(
        "1.memory",
        f"memory per live manager, {MANAGERS:,} in one process ({DISKS_PER_MANAGER} disks each)",
        median(ours),
        "KB",
        median(theirs),
        "a bare transitions model added to a shared Machine",
        Target("value", 20),
        note=f"RSS growth / {MANAGERS:,} in a fresh interpreter, median of {len(ours)}",
    )


def run(ctx: Context) -> list[Row]:
    return collect(ctx, [call_overhead, manager_memory])


if __name__ == "__main__":
    print(json.dumps(_worker(sys.argv[1], int(sys.argv[2]))))
