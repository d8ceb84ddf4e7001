"""The formal model: generated from the tables, fresh, passing, and able to fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lockfsm.tools import model, modelcheck, spec
from tests.support.needs import require


def test_committed_models_are_fresh() -> None:
    specs = spec.load_all()
    for hosts in modelcheck.HOSTS:
        path = modelcheck.model_path(spec.default_specs_dir(), hosts)
        assert path.read_text() == model.generate(specs, hosts), (
            f"{path} is stale: run `lockfsm spec gen`"
        )


def test_every_guard_and_action_has_a_meaning(tmp_path: Path) -> None:
    """A table naming an action the model cannot interpret is refused, not skipped."""
    d = tmp_path / "specs"
    shutil.copytree(spec.default_specs_dir(), d)
    text = (d / "supervisor.toml").read_text()
    text = text.replace(
        "[actions.release_all]", '[actions.teleport]\ndoc = "x"\n\n[actions.release_all]'
    )
    text = text.replace('actions = ["signal_guest"]', 'actions = ["signal_guest", "teleport"]', 1)
    (d / "supervisor.toml").write_text(text)
    with pytest.raises(spec.InvalidArgument, match=r"no meaning for.*teleport"):
        model.generate(spec.load_all(d), 2)


@pytest.mark.parametrize("hosts", [2])  # 3 hosts (12M states, ~40 s): `lockfsm spec check` in CI
def test_spin_finds_no_violation(hosts: int) -> None:
    require("spin")
    verdict = modelcheck.check(model.generate(spec.load_all(), hosts), hosts)
    assert verdict.ok, verdict.report()
    assert verdict.states > 10_000 * hosts, verdict.report()  # the model really went somewhere


def _mutated(tmp_path: Path, table: str, old: str, new: str) -> dict[str, spec.Spec]:
    d = tmp_path / "specs"
    shutil.copytree(spec.default_specs_dir(), d)
    text = (d / table).read_text()
    assert text.count(old) == 1, old
    (d / table).write_text(text.replace(old, new))
    return spec.load_all(d)


MUTATIONS = {
    # The target's supervisor runs the guest without taking the leases on take-over.
    "take-over without acquiring": (
        "migration_target.toml",
        'event = "take_over"\nguards = ["no_take_over_pending"]\nactions = ["take_over_leases"]',
        'event = "take_over"\nguards = ["no_take_over_pending"]',
        "S3",
        "migrating_in --complete_migrate_in--> started",
    ),
    # A source whose migration is called off resumes without its leases.
    "cancelled source resumes without its leases": (
        "migration_source.toml",
        'event = "resume"\nactions = ["forget_migration"]',
        'event = "resume"\nactions = ["release_all"]',
        "S3",
        "--complete_migrate_in--> started",
    ),
    # On a lost lease (policy poweroff) the running guest is not killed: it runs on unprotected.
    "lost lease, guest left running": (
        "lock_failure.toml",
        'event = "lost"\nguards = ["policy_poweroff"]\n'
        'actions = ["kill_guest", "forfeit_leases"]\nto = "fencing"',
        'event = "lost"\nguards = ["policy_poweroff"]\n'
        'actions = ["forfeit_leases"]\nto = "unprotected"',
        "S3",
        "--lost--> unprotected",
    ),
    # An incoming target told to stop counts as holding its leases (the bug spin found when
    # SIGTERM became a table row): it goes to stopping, not stopping_incoming.
    "stopped incoming target claims the leases": (
        "migration_target.toml",
        'event = "terminate"\nactions = ["signal_guest"]\nto = "stopping_incoming"',
        'event = "terminate"\nactions = ["signal_guest"]\nto = "stopping"',
        "S3",
        "incoming --terminate--> stopping",
    ),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_spin_bites_a_broken_table(tmp_path: Path, name: str) -> None:
    """Break a copy of the tables; spin reports the violation with a shortest counterexample
    written as protocol steps."""
    require("spin")
    table, old, new, invariant, step = MUTATIONS[name]
    specs = _mutated(tmp_path, table, old, new)
    verdict = modelcheck.check(model.generate(specs, 2), 2)
    assert verdict.violation is not None and invariant in verdict.violation, verdict.report()
    assert any(step in s for s in verdict.steps), verdict.report()
    assert verdict.steps[0].startswith("host "), verdict.steps
