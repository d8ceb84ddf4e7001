"""The table interpreter: one move = look up, check guards, run actions, commit.

Sans-I/O and light (no third-party import): the supervisor, which must stay lean, drives its own
and its leases' machines with :class:`Instance`.  The daemon side drives the domain table through
``transitions`` (lockfsm/core.py); both read the same generated tables (lockfsm/_tables.py), and a
test holds the two engines to the same answers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from lockfsm.errors import BY_NAME, IllegalTransition, LockFSMError


class Move(NamedTuple):
    """One row of a table, for one source state."""

    source: str
    event: str
    guards: tuple[str, ...]
    actions: tuple[str, ...]
    dest: str


class Table(NamedTuple):
    """A lifecycle table, as generated from ``specs/<name>.toml``."""

    name: str
    initial: str
    states: tuple[str, ...]
    terminal: frozenset[str]
    requires: Mapping[str, str]  # event -> capability it needs
    refuse: Mapping[str, str]  # guard -> name of the error class raised when it fails
    moves: tuple[Move, ...]

    def candidates(self, state: str, event: str) -> tuple[Move, ...]:
        """The moves for ``event`` from ``state``, in table order: the first whose guards pass
        is made."""
        return _index(self).get((state, event), ())

    def events_from(self, state: str) -> tuple[str, ...]:
        """Events that have a move from ``state``, in table order, without duplicates."""
        return tuple(dict.fromkeys(m.event for m in self.moves if m.source == state))


_INDEXES: dict[str, dict[tuple[str, str], tuple[Move, ...]]] = {}


def _index(table: Table) -> dict[tuple[str, str], tuple[Move, ...]]:
    key = f"{table.name}:{id(table)}"
    index = _INDEXES.get(key)
    if index is None:
        built: dict[tuple[str, str], list[Move]] = {}
        for move in table.moves:
            built.setdefault((move.source, move.event), []).append(move)
        index = _INDEXES[key] = {k: tuple(v) for k, v in built.items()}
    return index


Guard = Callable[[str, Mapping[str, Any]], "str | None"]
"""A guard callback: given the guard's name and the call's arguments, None to pass, or a reason."""

Action = Callable[[str, Mapping[str, Any]], None]
"""An action callback: given the action's name and the call's arguments; raising aborts the move."""


def refusal(table: Table, state: str, event: str, guard: str, reason: str) -> LockFSMError:
    """The error a failed guard raises, as its table says (IllegalTransition unless told)."""
    cls = BY_NAME.get(table.refuse.get(guard, "IllegalTransition"), IllegalTransition)
    if cls is IllegalTransition:
        return IllegalTransition(table.name, state, event, f"guard {guard}: {reason}")
    return cls(reason)


def choose(table: Table, state: str, event: str, guard: Guard, args: Mapping[str, Any]) -> Move:
    """The move ``event`` makes from ``state``, or the error that refuses it (nothing is run)."""
    moves = table.candidates(state, event)
    if not moves:
        raise IllegalTransition(table.name, state, event)
    first_refusal: LockFSMError | None = None
    for move in moves:
        for name in move.guards:
            reason = guard(name, args)
            if reason is not None:
                if first_refusal is None or isinstance(first_refusal, IllegalTransition):
                    # A refusal that is not about the state (a bad argument) says more.
                    candidate = refusal(table, state, event, name, reason)
                    if first_refusal is None or not isinstance(candidate, IllegalTransition):
                        first_refusal = candidate
                break
        else:
            return move
    assert first_refusal is not None
    raise first_refusal


class Instance:
    """One live machine: a table, its current state, and the callbacks that give it meaning."""

    __slots__ = ("_act", "_guard", "state", "table")

    def __init__(self, table: Table, guard: Guard, act: Action, state: str | None = None) -> None:
        self.table = table
        self.state = table.initial if state is None else state
        self._guard = guard
        self._act = act

    def can(self, event: str, **args: Any) -> bool:
        """Whether ``event`` would be accepted now (guards are evaluated; nothing runs)."""
        try:
            choose(self.table, self.state, event, self._guard, args)
        except LockFSMError:
            return False
        return True

    def fire(self, event: str, **args: Any) -> tuple[str, str]:
        """Make the move; return (old state, new state).  If an action raises, the state stays."""
        move = choose(self.table, self.state, event, self._guard, args)
        for action in move.actions:
            self._act(action, args)
        old, self.state = self.state, move.dest
        return old, move.dest
