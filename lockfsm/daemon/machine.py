"""The daemon side's lifecycle engine: ``transitions`` machines built from the generated tables.

One ``transitions.Machine`` per *table*, shared by every manager: the managers are its models but
are never added to it (``Machine.add_model`` is quadratic in the number of models), and an event
is fired with ``machine.events[event].trigger(model)``.  Guards are the machine's conditions and
actions its ``before`` callbacks, so an action that raises leaves the state as it was; the state
is committed only after every action succeeded.  No ``to_<state>`` back door exists
(``auto_transitions=False``), and every callback is a callable bound when the machine is built, so
a table naming a guard, read or action the code lacks fails at import, not in the middle of a move.

A guard that needs a read makes it (once per call) before it is evaluated, as
lockfsm/protocol/engine.py does: the call's arguments carry a ``_memo`` dict that keeps each
read's result for the other candidate moves, the actions, and the refusal that may follow.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from functools import partial

from transitions import EventData, Machine

from lockfsm.protocol.engine import Table, check_model, run_reads

# transitions reports every callback at INFO: a daemon with many guests would drown in it.  Quiet
# it unless the application configured that logger itself; lockfsm logs each move once, its way.
if logging.getLogger("transitions").level == logging.NOTSET:
    logging.getLogger("transitions").setLevel(logging.WARNING)


def _condition(table: Table, name: str, event: EventData) -> bool:
    run_reads(table, name, event.kwargs, event.model)
    guard: Callable[[dict[str, object]], str | None] = getattr(event.model, f"_guard_{name}")
    return guard(event.kwargs) is None


def _before(name: str, event: EventData) -> None:
    getattr(event.model, f"_do_{name}")(event.kwargs)


def build(table: Table, states: type[enum.Enum], model_cls: type, attribute: str) -> Machine:
    """The shared machine of ``table``; ``model_cls`` must define the table's callbacks
    (lockfsm.protocol.engine.check_model).  Raises AssertionError (at import time) if one is
    missing."""
    check_model(table, model_cls)
    machine = Machine(
        model=None,
        states=states,
        initial=states(table.initial),
        auto_transitions=False,
        send_event=True,
        model_attribute=attribute,
    )
    for move in table.moves:
        machine.add_transition(
            move.event,
            states(move.source),
            states(move.dest),
            conditions=[partial(_condition, table, g) for g in move.guards],
            before=[partial(_before, a) for a in move.actions],
        )
    return machine


def triggers(machine: Machine) -> dict[str, Callable[..., bool]]:
    """event name -> the bound trigger of the shared machine (call it with the model first)."""
    return {name: event.trigger for name, event in machine.events.items()}
