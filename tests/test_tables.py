"""Layer 1: the protocol tables and the two engines that run them (no process, no file lock)."""

from __future__ import annotations

import enum
import itertools
import shutil
from pathlib import Path
from typing import Any

import pytest

from lockfsm.daemon.machine import build
from lockfsm.errors import IllegalTransition, InvalidArgument, LockFSMError
from lockfsm.protocol import states, tables
from lockfsm.protocol.engine import Instance, Table, choose
from lockfsm.tools import spec

ENUMS: dict[str, type[enum.Enum]] = {
    "domain": states.DomainState,
    "supervisor": states.SupervisorState,
    "lease": states.LeaseState,
}


def test_generated_tables_are_fresh() -> None:
    """lockfsm/tables.py and lockfsm/_machines.py are what `lockfsm spec gen` makes of specs/."""
    specs = spec.load_all()
    assert spec.GENERATED.read_text() == spec.generate(specs), (
        "lockfsm/tables.py is stale: run `lockfsm spec gen`"
    )
    assert spec.GENERATED_MACHINES.read_text() == spec.generate_machines(specs), (
        "lockfsm/_machines.py is stale: run `lockfsm spec gen`"
    )


def test_generation_is_byte_stable() -> None:
    assert spec.generate(spec.load_all()) == spec.generate(spec.load_all())
    assert spec.generate_machines(spec.load_all()) == spec.generate_machines(spec.load_all())


@pytest.mark.parametrize("name", spec.TABLE_NAMES)
def test_enum_lists_every_state(name: str) -> None:
    table: Table = tables.TABLES[name]
    assert [s.value for s in ENUMS[name]] == list(table.states)
    assert table.terminal, f"{name} has no terminal state"


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    d = tmp_path / "specs"
    shutil.copytree(spec.default_specs_dir(), d)
    text = (d / "domain.toml").read_text()
    assert old in text
    (d / "domain.toml").write_text(text.replace(old, new, 1))
    return d


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ('to = "stopped"', 'to = "halted"', "unknown target state 'halted'"),
        ('guards = ["resource_known"]', 'guards = ["resource_knwon"]', "unknown guard"),
        ('actions = ["forget"]', 'actions = ["forgett"]', "unknown action"),
        (
            '[states.freed]\ndoc = "free() returned',
            '[states.limbo]\ndoc = "x"\n[states.freed]\ndoc = "',
            "cannot be reached",
        ),
        ("terminal = true", "terminal = false", "has no move out"),
        ('requires = "hotplug"', 'requires = "teleport"', "unknown capability"),
    ],
)
def test_a_broken_table_is_refused(tmp_path: Path, old: str, new: str, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match=complaint):
        spec.load_all(_broken(tmp_path, old, new))


def test_terminal_state_with_a_move_out_is_refused(tmp_path: Path) -> None:
    d = _broken(
        tmp_path,
        'from = ["idle", "started", "stopped"]',
        'from = ["idle", "started", "stopped", "freed"]',
    )
    with pytest.raises(InvalidArgument, match="terminal state 'freed' has moves out"):
        spec.load_all(d)


class _Probe:
    """A model whose guards answer from a fixed table of outcomes, and that logs its actions."""

    def __init__(self, state: enum.Enum, outcomes: dict[str, bool], fail: str = "") -> None:
        self.fsm = state
        self.outcomes = outcomes
        self.fail = fail
        self.log: list[str] = []

    def _guard(self, name: str, args: Any) -> str | None:
        return None if self.outcomes[name] else f"{name} says no"

    def _act(self, name: str, args: Any) -> None:
        if name == self.fail:
            raise RuntimeError(f"{name} failed")
        self.log.append(name)


def _probe_class(table: Table) -> type:
    actions = {a for m in table.moves for a in m.actions}
    return type(f"Probe_{table.name}", (_Probe,), {f"_do_{a}": None for a in actions})


def _outcome(run: Any) -> tuple[str, Any]:
    try:
        return "ok", run()
    except LockFSMError as e:
        return type(e).__name__, None


@pytest.mark.parametrize("name", spec.TABLE_NAMES)
def test_both_engines_give_the_same_answer_everywhere(name: str) -> None:
    """For every state, event and combination of guard outcomes, the supervisor's light engine
    and the daemon's transitions machine make the same move with the same actions, or refuse."""
    table: Table = tables.TABLES[name]
    states = ENUMS[name]
    cls = _probe_class(table)
    machine = build(table, states, cls, "fsm")
    guards = sorted({g for m in table.moves for g in m.guards})
    events = sorted({m.event for m in table.moves})
    for state, event, values in itertools.product(
        table.states, events, itertools.product([True, False], repeat=len(guards))
    ):
        outcomes = dict(zip(guards, values, strict=True))
        light = cls(states(state), outcomes)
        inst = Instance(table, light._guard, light._act, state)
        heavy = cls(states(state), outcomes)

        def run_heavy(heavy: Any = heavy, event: str = event, state: str = state) -> Any:
            if not table.candidates(state, event):
                raise IllegalTransition(name, state, event)
            if not machine.events[event].trigger(heavy):
                choose(table, state, event, heavy._guard, {})
            return heavy.fsm.value

        a = _outcome(lambda inst=inst, event=event: inst.fire(event)[1])
        b = _outcome(run_heavy)
        assert a == b, (state, event, outcomes)
        assert light.log == heavy.log


@pytest.mark.parametrize("name", spec.TABLE_NAMES)
def test_a_failing_action_leaves_the_old_state(name: str) -> None:
    table: Table = tables.TABLES[name]
    states = ENUMS[name]
    cls = _probe_class(table)
    machine = build(table, states, cls, "fsm")
    guards = {g for m in table.moves for g in m.guards}
    for move in table.moves:
        for action in move.actions:
            outcomes = {g: g in move.guards for g in guards}
            heavy = cls(states(move.source), outcomes, fail=action)
            with pytest.raises(RuntimeError):
                machine.events[move.event].trigger(heavy)
            assert heavy.fsm is states(move.source)
            light = cls(states(move.source), outcomes, fail=action)
            inst = Instance(table, light._guard, light._act, move.source)
            with pytest.raises(RuntimeError):
                inst.fire(move.event)
            assert inst.state == move.source


def test_a_bad_argument_says_more_than_the_wrong_mode() -> None:
    """get_child on an ATTACH manager without a uuid: the missing uuid is the error, not the
    start-mode guard of the other branch."""
    outcomes = {g: False for m in tables.DOMAIN.moves for g in m.guards}
    outcomes.update(attach_mode=True, found_running=True)
    probe = _Probe(states.DomainState.IDLE, outcomes)
    with pytest.raises(InvalidArgument, match="identity_set says no"):
        choose(tables.DOMAIN, "idle", "get_child", probe._guard, {})


def test_no_transitions_back_door() -> None:
    """auto_transitions is off: no to_<state>() event exists."""
    machine = build(tables.DOMAIN, states.DomainState, _probe_class(tables.DOMAIN), "fsm")
    assert not [e for e in machine.events if e.startswith("to_")]
    assert set(machine.events) == {m.event for m in tables.DOMAIN.moves}
