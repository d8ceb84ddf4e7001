"""Layer 1: the protocol tables and the two engines that run them (no process, no file lock)."""

from __future__ import annotations

import enum
import itertools
import shutil
from pathlib import Path
from typing import Any

import pytest

from lockfsm.daemon.machine import build
from lockfsm.errors import BackendError, IllegalTransition, InvalidArgument, LeaseLost, LockFSMError
from lockfsm.protocol import states, tables
from lockfsm.protocol.engine import Instance, Table, check_model, choose, fire_all
from lockfsm.tools import spec

ENUMS: dict[str, type[enum.Enum]] = {
    "domain": states.DomainState,
    "supervisor": states.SupervisorState,
    "lease": states.LeaseState,
}


def test_generated_tables_are_fresh() -> None:
    """lockfsm/protocol/states.py and tables.py are what `lockfsm spec gen` makes of specs/."""
    specs = spec.load_all()
    assert spec.GENERATED.read_text() == spec.generate(specs), (
        "lockfsm/protocol/states.py is stale: run `lockfsm spec gen`"
    )
    assert spec.GENERATED_MACHINES.read_text() == spec.generate_machines(specs), (
        "lockfsm/protocol/tables.py is stale: run `lockfsm spec gen`"
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
    """A model whose guards answer from a fixed table of outcomes, and that logs its reads and
    actions."""

    def __init__(self, state: enum.Enum, outcomes: dict[str, bool], fail: str = "") -> None:
        self.fsm = state
        self.outcomes = outcomes
        self.fail = fail
        self.log: list[str] = []
        self.reads: list[str] = []


def _probe_class(table: Table) -> type:
    """A _Probe subclass with every callback ``table`` names."""
    names = table.names()

    def guard(name: str) -> Any:
        return lambda self, args: None if self.outcomes[name] else f"{name} says no"

    def read(name: str) -> Any:
        def run(self: _Probe, args: Any) -> str:
            self.reads.append(name)
            return f"read {name}"

        return run

    def act(name: str) -> Any:
        def run(self: _Probe, args: Any) -> None:
            if name == self.fail:
                raise RuntimeError(f"{name} failed")
            self.log.append(name)

        return run

    methods = {f"_guard_{g}": guard(g) for g in names["guard"]}
    methods.update({f"_read_{r}": read(r) for r in names["read"]})
    methods.update({f"_do_{a}": act(a) for a in names["do"]})
    return type(f"Probe_{table.name}", (_Probe,), methods)


def _outcome(run: Any) -> tuple[str, Any]:
    try:
        return "ok", run()
    except LockFSMError as e:
        return type(e).__name__, None


@pytest.mark.parametrize("name", spec.TABLE_NAMES)
def test_both_engines_give_the_same_answer_everywhere(name: str) -> None:
    """For every state, event and combination of the outcomes of the guards its candidate moves
    name, the supervisor's light engine and the daemon's transitions machine make the same move
    with the same reads and actions, or refuse with the same error."""
    table: Table = tables.TABLES[name]
    states = ENUMS[name]
    cls = _probe_class(table)
    machine = build(table, states, cls, "fsm")
    events = sorted({m.event for m in table.moves})
    fired = 0
    for state, event in itertools.product(table.states, events):
        moves = table.candidates(state, event)
        own = table.event_guards.get(event, ()) if not moves else ()
        guards = sorted({g for m in moves for g in m.guards} | set(own))
        for values in itertools.product([True, False], repeat=len(guards)):
            outcomes = dict(zip(guards, values, strict=True))
            light = cls(states(state), outcomes)
            inst = Instance(table, light, state)
            heavy = cls(states(state), outcomes)

            def run_heavy(heavy: Any = heavy, event: str = event, state: str = state) -> Any:
                memo: dict[str, Any] = {}
                if not table.candidates(state, event):
                    choose(table, state, event, heavy, {"_memo": memo})
                if not machine.events[event].trigger(heavy, _memo=memo):
                    choose(table, state, event, heavy, {"_memo": memo})
                return heavy.fsm.value

            a = _outcome(lambda inst=inst, event=event: inst.fire(event)[1])
            b = _outcome(run_heavy)
            fired += 1
            assert a == b, (state, event, outcomes)
            assert light.log == heavy.log
            assert light.reads == heavy.reads, (state, event, outcomes)
            assert len(set(light.reads)) == len(light.reads), "a read was made twice in a call"
    assert fired < 5000, f"{fired} firings: enumerate only the guards of the candidate moves"


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
                machine.events[move.event].trigger(heavy, _memo={})
            assert heavy.fsm is states(move.source)
            light = cls(states(move.source), outcomes, fail=action)
            inst = Instance(table, light, move.source)
            with pytest.raises(RuntimeError):
                inst.fire(move.event)
            assert inst.state == move.source


def test_a_bad_argument_says_more_than_the_wrong_mode() -> None:
    """get_child on an ATTACH manager without a uuid: the missing uuid is the error, not the
    start-mode guard of the other branch."""
    cls = _probe_class(tables.DOMAIN)
    outcomes = {g: False for m in tables.DOMAIN.moves for g in m.guards}
    outcomes.update(attach_mode=True, found_running=True)
    probe = cls(states.DomainState.IDLE, outcomes)
    with pytest.raises(InvalidArgument, match="identity_set says no"):
        choose(tables.DOMAIN, "idle", "get_child", probe, {})
    assert probe.reads == [], "the supervisor was looked up before the identity was checked"


def test_a_read_is_made_once_and_only_when_a_guard_needs_it() -> None:
    """ATTACH's get_child: the supervisor is looked up once, however many rows' guards need it;
    a fresh start's get_child never looks."""
    cls = _probe_class(tables.DOMAIN)
    outcomes = {g: True for m in tables.DOMAIN.moves for g in m.guards}
    outcomes.update(
        start_mode=False, migrate_mode=False, found_running=False, found_migrating_out=False
    )
    probe = cls(states.DomainState.IDLE, outcomes)
    args: dict[str, Any] = {}
    move = choose(tables.DOMAIN, "idle", "get_child", probe, args)
    assert move.guards[-1] == "found_incoming"
    assert probe.reads == ["supervisor"]
    assert args["supervisor"] == "read supervisor"
    fresh = cls(states.DomainState.IDLE, {g: True for g in outcomes})
    choose(tables.DOMAIN, "idle", "get_child", fresh, {})
    assert fresh.reads == []


def test_an_event_guard_refuses_first_even_without_a_move() -> None:
    """A superseded controller's request is refused as such, not as out of order."""
    cls = _probe_class(tables.SUPERVISOR)
    probe = cls(states.SupervisorState.RUNNING, {"current_controller": False})
    with pytest.raises(BackendError, match="current_controller says no"):
        choose(tables.SUPERVISOR, "running", "hand_off", probe, {})
    probe.outcomes["current_controller"] = True
    with pytest.raises(IllegalTransition, match="'hand_off' is not legal in state 'running'"):
        choose(tables.SUPERVISOR, "running", "hand_off", probe, {})


def test_a_supervisor_that_lost_its_leases_refuses_with_lease_lost() -> None:
    cls = type(
        "Explaining",
        (_probe_class(tables.SUPERVISOR),),
        {"_explain": lambda s, st, ev: f"lost in {st}"},
    )
    for state in ("paused", "unprotected", "fencing"):
        probe = cls(states.SupervisorState(state), {"current_controller": True})
        with pytest.raises(LeaseLost, match=f"lost in {state}"):
            choose(tables.SUPERVISOR, state, "acquire", probe, {})


def test_the_lease_lost_answer_is_a_domain_event() -> None:
    """LeaseLost raised by an action moves the manager to failed: a table row, not code."""
    event = tables.DOMAIN.raised_by["LeaseLost"]
    for state in ("started", "migrating_out", "migrating_in"):
        (move,) = tables.DOMAIN.candidates(state, event)
        assert move.dest == "failed"


def test_a_batch_action_runs_once_for_the_group() -> None:
    """The lease take-over: one backend call for every lease, all or nothing."""
    cls = _probe_class(tables.LEASE)
    model = cls(states.LeaseState.RESERVED, {})
    group = [Instance(tables.LEASE, model, "reserved") for _ in range(3)]
    fire_all(group, "take_over", [{"n": i} for i in range(3)])
    assert model.log == ["backend_take_over"]
    assert [i.state for i in group] == ["taken"] * 3
    failing = cls(states.LeaseState.RESERVED, {}, fail="backend_take_over")
    group = [Instance(tables.LEASE, failing, "reserved") for _ in range(3)]
    with pytest.raises(RuntimeError):
        fire_all(group, "take_over", [{}, {}, {}])
    assert [i.state for i in group] == ["reserved"] * 3


def test_a_model_lacking_a_callback_is_refused_when_it_is_built() -> None:
    cls = _probe_class(tables.DOMAIN)
    lacking = type("Lacking", (cls,), {"_guard_cookie_set": None})
    with pytest.raises(AssertionError, match="_guard_cookie_set"):
        check_model(tables.DOMAIN, lacking)
    with pytest.raises(AssertionError, match="_guard_cookie_set"):
        build(tables.DOMAIN, states.DomainState, lacking, "fsm")


def test_state_sets_come_from_the_tables_attributes() -> None:
    """Every set of states the runtime uses is generated from the specs' state attributes."""
    specs = spec.load_all()
    sup = specs["supervisor"].states
    assert {n for n, s in sup.items() if s.attrs.get("holds")} == tables.SUPERVISOR_HOLDS
    assert {"holding", "running", "stopping", "migrating_out", "handing_off"} <= (
        tables.SUPERVISOR_HOLDS
    )
    assert not tables.SUPERVISOR_HOLDS & tables.SUPERVISOR_RESERVES
    assert tables.SUPERVISOR_EXECUTES <= tables.SUPERVISOR_GUEST
    assert tables.SUPERVISOR_EXECUTES - tables.SUPERVISOR_UNPROTECTED <= tables.SUPERVISOR_HOLDS
    assert set(tables.SUPERVISOR_EXIT) == set(tables.SUPERVISOR.terminal)
    assert {"held", "taken"} == tables.LEASE_HOLDS


def test_no_transitions_back_door() -> None:
    """auto_transitions is off: no to_<state>() event exists."""
    machine = build(tables.DOMAIN, states.DomainState, _probe_class(tables.DOMAIN), "fsm")
    assert not [e for e in machine.events if e.startswith("to_")]
    assert set(machine.events) == {m.event for m in tables.DOMAIN.moves}
