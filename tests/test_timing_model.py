"""The timing argument of lease loss and self-fencing, model-checked (lockfsm/tools/timing.py):
spin proves S1 with the etcd backend's defaults, and finds the counterexample when the margin is
zero, when fencing may come after the lease expires, when stopping a guest may take longer than
the margin, or when the supervisor table's lost move leaves the guest executing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lockfsm.tools import modelcheck, spec, timing
from tests.support.needs import require


def test_the_committed_timing_model_is_fresh() -> None:
    path = modelcheck.model_path(spec.default_specs_dir(), "timing")
    assert path.read_text() == timing.generate(spec.load_all(), timing.defaults()), (
        f"{path} is stale: run `lockfsm spec gen`"
    )


def test_the_parameters_are_the_backends_defaults() -> None:
    t = timing.defaults()
    assert t.ttl * timing.TICK == 10 and t.margin * timing.TICK == 2.5
    assert t.keepalive == round(10 / 3 / timing.TICK)
    assert t.stop < t.margin, "the model's bound on stopping a guest must fit in the margin"


def test_spin_proves_s1_for_the_defaults() -> None:
    require("spin")
    verdict = timing.check(spec.load_all(), timing.defaults())
    assert verdict.ok, verdict.report()
    assert verdict.states > 100_000, verdict.report()  # the clock really ran


MUTATIONS = {
    "no margin": lambda t: t._replace(margin=0),
    "fencing after the lease expired": lambda t: t._replace(fence_delay=t.margin + 1),
    "stopping longer than the margin": lambda t: t._replace(stop=t.margin + 1),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_spin_finds_the_counterexample_of_a_broken_timing(name: str) -> None:
    require("spin")
    verdict = timing.check(spec.load_all(), MUTATIONS[name](timing.defaults()))
    assert verdict.violation == "S1", verdict.report()
    assert any("B takes it over" in s for s in verdict.steps), verdict.report()


def test_spin_finds_a_lost_move_that_leaves_the_guest_running(tmp_path: Path) -> None:
    """The supervisor table, broken: a lost lease under policy poweroff leaves the guest
    running (unprotected).  The timing model reads that row, and fails."""
    require("spin")
    d = tmp_path / "specs"
    shutil.copytree(spec.default_specs_dir(), d)
    table = d / "lock_failure.toml"
    old = (
        'event = "lost"\nguards = ["policy_poweroff"]\n'
        'actions = ["kill_guest", "forfeit_leases"]\nto = "fencing"'
    )
    text = table.read_text()
    assert text.count(old) == 1
    table.write_text(
        text.replace(
            old,
            'event = "lost"\nguards = ["policy_poweroff"]\nactions = ["forfeit_leases"]\n'
            'to = "unprotected"',
        )
    )
    verdict = timing.check(spec.load_all(d), timing.defaults())
    assert verdict.violation == "S1", verdict.report()
