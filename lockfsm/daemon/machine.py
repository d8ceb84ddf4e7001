"""The daemon side's lifecycle engine: ``transitions`` machines built from the generated tables.

One ``transitions.Machine`` per *table*, shared by every manager: the managers are its models but
are never added to it (``Machine.add_model`` is quadratic in the number of models), and an event
is fired with ``machine.events[event].trigger(model)``.  Guards are the machine's conditions and
actions its ``before`` callbacks, so an action that raises leaves the state as it was; the state
is committed only after every action succeeded.  No ``to_<state>`` back door exists
(``auto_transitions=False``), and every callback is a callable bound when the machine is built, so
a table naming an action the code lacks fails at import, not in the middle of a move.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol

from transitions import EventData, Machine

from lockfsm.protocol.engine import Table

# transitions reports every callback at INFO: a daemon with many guests would drown in it.  Quiet
# it unless the application configured that logger itself; lockfsm logs each move once, its way.
if logging.getLogger("transitions").level == logging.NOTSET:
    logging.getLogger("transitions").setLevel(logging.WARNING)


class Model(Protocol):
    """What a model of a table must offer: guard and action callbacks by name."""

    def _guard(self, name: str, args: Mapping[str, Any]) -> str | None: ...

    def _act(self, name: str, args: Mapping[str, Any]) -> None: ...


def _condition(name: str, event: EventData) -> bool:
    model: Model = event.model  # type: ignore[assignment]
    return model._guard(name, event.kwargs) is None


def _before(name: str, event: EventData) -> None:
    model: Model = event.model  # type: ignore[assignment]
    model._act(name, event.kwargs)


def build(table: Table, states: type[enum.Enum], model_cls: type, attribute: str) -> Machine:
    """The shared machine of ``table``; ``model_cls`` must define ``_do_<action>`` for each
    action of the table.  Raises AssertionError (at import time) if one is missing."""
    missing = sorted(
        {a for m in table.moves for a in m.actions if not hasattr(model_cls, f"_do_{a}")}
    )
    assert not missing, f"{model_cls.__name__} lacks actions of the {table.name} table: {missing}"
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
            conditions=[partial(_condition, g) for g in move.guards],
            before=[partial(_before, a) for a in move.actions],
        )
    return machine


def triggers(machine: Machine) -> dict[str, Callable[..., bool]]:
    """event name -> the bound trigger of the shared machine (call it with the model first)."""
    return {name: event.trigger for name, event in machine.events.items()}
