"""The table interpreter: one move = look up, check guards, run actions, commit.

Sans-I/O and light (no third-party import): the supervisor, which must stay lean, drives its own
and its leases' machines with :class:`Instance`.  The daemon side drives the domain table through
``transitions`` (lockfsm/daemon/machine.py); both read the same generated tables
(lockfsm/protocol/tables.py), and a test holds the two engines to the same answers.

What a table says, and this module carries out:

* a **move** is (source, event, guards, actions, dest); the moves of one (source, event) are
  candidates in table order, and the first whose guards all pass is made;
* a **guard** passes or gives the reason it fails; the error a failure raises is the guard's
  ``refuse`` (IllegalTransition unless told).  An event may name guards of its own: they are
  in every one of its rows, and they refuse the event first even from a state where it has no
  move (a request from a superseded controller is told so, whatever it asked).  A refusal about
  an argument says more than one about the state, so it wins over IllegalTransition when
  several candidates fail;
* a guard may need a **read** (something looked up outside the machine): each read is made once
  per call, when the first guard that needs it is evaluated, and its result is in the call's
  arguments under the read's name for the later guards and the actions.  A read that raises
  refuses the call and changes nothing;
* **actions** run in order; one that raises leaves the state as it was, and the state is
  committed only after all of them ran.  An action a table marks ``batch`` runs once for a group
  of machines moved together (:func:`fire_all`), all or nothing;
* a **state** may say which error refuses an event that has no move there (``refuse``: a
  supervisor that lost its leases answers LeaseLost), IllegalTransition otherwise;
* an **event** may be ``raised_by`` an error class: the caller makes that move when an action
  raised it (lockfsm/daemon/manager.py: a LeaseLost answer moves the manager to ``failed``).

Every guard, read and action a table names is a method of the model class
(``_guard_<name>``, ``_read_<name>``, ``_do_<name>``): :func:`check_model` refuses a class that
lacks one, at import time, not in the middle of a move.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from lockfsm.errors import BY_NAME, IllegalTransition, LockFSMError


class Move(NamedTuple):
    """One row of a table, for one source state."""

    source: str
    event: str
    guards: tuple[str, ...]
    actions: tuple[str, ...]
    dest: str


class Table:
    """A lifecycle table, as generated from ``specs/<name>.toml``: immutable once built."""

    __slots__ = (
        "_index",
        "attrs",
        "batch",
        "event_guards",
        "initial",
        "moves",
        "name",
        "raised_by",
        "reads",
        "refuse",
        "requires",
        "state_refuse",
        "states",
        "terminal",
        "unrecorded",
    )

    def __init__(
        self,
        name: str,
        initial: str,
        states: tuple[str, ...],
        terminal: frozenset[str],
        requires: Mapping[str, str],
        refuse: Mapping[str, str],
        moves: tuple[Move, ...],
        attrs: Mapping[str, Mapping[str, Any]] | None = None,
        reads: Mapping[str, tuple[str, ...]] | None = None,
        raised_by: Mapping[str, str] | None = None,
        state_refuse: Mapping[str, str] | None = None,
        batch: frozenset[str] = frozenset(),
        event_guards: Mapping[str, tuple[str, ...]] | None = None,
        unrecorded: frozenset[str] = frozenset(),
    ) -> None:
        self.name = name
        self.initial = initial
        self.states = states
        self.terminal = terminal
        self.requires = requires  # event -> capability it needs
        self.refuse = refuse  # guard -> name of the error class raised when it fails
        self.moves = moves
        self.attrs = attrs or {}  # state -> its attributes (holds, guest, exit...)
        self.reads = reads or {}  # guard -> the reads it needs
        self.raised_by = raised_by or {}  # error class name -> the event it raises
        self.state_refuse = state_refuse or {}  # state -> error class for an event without move
        self.batch = batch  # actions run once for a group of machines
        self.event_guards = event_guards or {}  # event -> guards of every one of its moves
        self.unrecorded = unrecorded  # events whose moves are not recorded (property reads)
        index: dict[tuple[str, str], list[Move]] = {}
        for move in moves:
            index.setdefault((move.source, move.event), []).append(move)
        self._index = {k: tuple(v) for k, v in index.items()}

    def candidates(self, state: str, event: str) -> tuple[Move, ...]:
        """The moves for ``event`` from ``state``, in table order: the first whose guards pass
        is made."""
        return self._index.get((state, event), ())

    def events_from(self, state: str) -> tuple[str, ...]:
        """Events that have a move from ``state``, in table order, without duplicates."""
        return tuple(dict.fromkeys(m.event for m in self.moves if m.source == state))

    def names(self) -> dict[str, set[str]]:
        """Every guard, read and action the table names (what its model class must define)."""
        guards = {g for m in self.moves for g in m.guards}
        return {
            "guard": guards,
            "read": {r for g in guards for r in self.reads.get(g, ())},
            "do": {a for m in self.moves for a in m.actions},
        }

    def __repr__(self) -> str:
        return f"<Table {self.name}: {len(self.states)} states, {len(self.moves)} moves>"


def check_model(table: Table, cls: type) -> None:
    """Raise AssertionError (at import time) if ``cls`` lacks a callback the table names:
    ``_guard_<g>`` for each guard, ``_read_<r>`` for each read, ``_do_<a>`` for each action."""
    missing = sorted(
        f"_{kind}_{name}"
        for kind, names in table.names().items()
        for name in names
        if not callable(getattr(cls, f"_{kind}_{name}", None))
    )
    assert not missing, f"{cls.__name__} lacks callbacks of the {table.name} table: {missing}"


def refusal(table: Table, state: str, event: str, guard: str, reason: str) -> LockFSMError:
    """The error a failed guard raises, as its table says (IllegalTransition unless told)."""
    cls = BY_NAME.get(table.refuse.get(guard, "IllegalTransition"), IllegalTransition)
    if cls is IllegalTransition:
        return IllegalTransition(table.name, state, event, f"guard {guard}: {reason}")
    return cls(reason)


def no_move(
    table: Table, state: str, event: str, explain: Callable[[str, str], str] | None = None
) -> LockFSMError:
    """The error for an event that has no move from ``state``: the state's ``refuse`` error
    (its message from ``explain``) or IllegalTransition."""
    cls = BY_NAME.get(table.state_refuse.get(state, ""), IllegalTransition)
    if cls is IllegalTransition or explain is None:
        return IllegalTransition(table.name, state, event)
    return cls(explain(state, event))


def run_reads(table: Table, guard: str, args: dict[str, Any], model: Any) -> None:
    """Make the reads ``guard`` needs that this call has not made yet, into ``args`` (and into
    ``args["_memo"]``, a dict the caller may pass to keep them across several evaluations of
    one call)."""
    memo = args.get("_memo")
    for read in table.reads.get(guard, ()):
        if read in args:
            continue
        if memo is not None and read in memo:
            args[read] = memo[read]
            continue
        args[read] = getattr(model, f"_read_{read}")(args)
        if memo is not None:
            memo[read] = args[read]


def choose(table: Table, state: str, event: str, model: Any, args: dict[str, Any]) -> Move:
    """The move ``event`` makes from ``state``, or the error that refuses it (no action runs;
    reads may, and their results stay in ``args``)."""
    moves = table.candidates(state, event)
    if not moves:
        # An event's own guards (in every one of its rows) refuse it first, from any state.
        for name in table.event_guards.get(event, ()):
            run_reads(table, name, args, model)
            reason = getattr(model, f"_guard_{name}")(args)
            if reason is not None:
                raise refusal(table, state, event, name, reason)
        raise no_move(table, state, event, getattr(model, "_explain", None))
    first_refusal: LockFSMError | None = None
    for move in moves:
        for name in move.guards:
            run_reads(table, name, args, model)
            reason = getattr(model, f"_guard_{name}")(args)
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
    """One live machine: a table, its current state, and the model whose methods give it
    meaning (see :func:`check_model`)."""

    __slots__ = ("model", "state", "table")

    def __init__(self, table: Table, model: Any, state: str | None = None) -> None:
        self.table = table
        self.model = model
        self.state = table.initial if state is None else state

    def can(self, event: str, **args: Any) -> bool:
        """Whether ``event`` would be accepted now (guards are evaluated, reads may be made;
        no action runs)."""
        try:
            choose(self.table, self.state, event, self.model, args)
        except LockFSMError:
            return False
        return True

    def fire(self, event: str, **args: Any) -> tuple[str, str]:
        """Make the move; return (old state, new state).  If an action raises, the state stays."""
        move = choose(self.table, self.state, event, self.model, args)
        for action in move.actions:
            if action in self.table.batch:  # a group of one
                getattr(self.model, f"_do_{action}")({"group": [args]})
            else:
                getattr(self.model, f"_do_{action}")(args)
        old, self.state = self.state, move.dest
        return old, move.dest


def fire_all(
    instances: Sequence[Instance], event: str, args: Iterable[Mapping[str, Any]]
) -> list[tuple[str, str]]:
    """Move every instance (all of one table and one model) by ``event``, all or nothing: each
    move is chosen first (a refusal moves none); an action the table marks ``batch`` runs once,
    with ``{"group": [the args of each instance whose move has it]}``, the others once per
    instance, in order; if one raises, no instance moves.  Return (old, new) per instance."""
    every = [dict(a) for a in args]
    if not instances:
        return []
    table, model = instances[0].table, instances[0].model
    moves = [choose(table, i.state, event, model, a) for i, a in zip(instances, every, strict=True)]
    done: set[str] = set()
    for move, a in zip(moves, every, strict=True):
        for action in move.actions:
            if action in table.batch:
                if action not in done:
                    group = [b for m, b in zip(moves, every, strict=True) if action in m.actions]
                    getattr(model, f"_do_{action}")({"group": group})
                    done.add(action)
            else:
                getattr(model, f"_do_{action}")(a)
    result = []
    for instance, move in zip(instances, moves, strict=True):
        result.append((instance.state, move.dest))
        instance.state = move.dest
    return result
