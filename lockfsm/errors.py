"""The error tree.  Every error lockfsm raises is a :class:`LockFSMError`.

This module imports nothing heavy: the supervisor, which must stay lean, uses it too.
"""

from __future__ import annotations

from typing import Any


class LockFSMError(Exception):
    """Base of every lockfsm error."""


class IllegalTransition(LockFSMError):
    """A call that is not legal in the current state.  Nothing was changed.

    ``machine``, ``state`` and ``call`` name the table, the state the machine was in and the event
    that was refused; ``reason`` says which guard refused it, if one did.
    """

    def __init__(self, machine: str, state: str, call: str, reason: str = "") -> None:
        self.machine = machine
        self.state = state
        self.call = call
        self.reason = reason
        text = f"{machine} machine: {call!r} is not legal in state {state!r}"
        super().__init__(f"{text} ({reason})" if reason else text)


class InvalidArgument(LockFSMError, ValueError):
    """A bad value: the message names it.  Nothing was changed."""


class Unsupported(LockFSMError):
    """The backend lacks the capability the call needs (hot-plug, migration)."""


class LeaseConflict(LockFSMError):
    """A lease is held elsewhere.  ``resource`` names it; ``holder`` says by whom, if known.

    ``final`` says that waiting cannot help (a migration target's handoff found the lease taken
    by someone else since the source prepared): a take-over stops at once instead of retrying.
    """

    def __init__(
        self, message: str, resource: str = "", holder: str = "", final: bool = False
    ) -> None:
        self.resource = resource
        self.holder = holder
        self.final = final
        super().__init__(message)


class LeaseLost(LockFSMError):
    """A lease that was held is held no more."""


class BackendError(LockFSMError):
    """The backend, the supervisor or the lock service failed in a way not covered above."""


#: Error classes by name, for errors that cross the control socket.
BY_NAME: dict[str, type[LockFSMError]] = {
    cls.__name__: cls
    for cls in (
        LockFSMError,
        IllegalTransition,
        InvalidArgument,
        Unsupported,
        LeaseConflict,
        LeaseLost,
        BackendError,
    )
}


def show(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to about ``limit`` characters: what an error message shows of a value
    that may be as long as a whole message."""
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than Python will print
        return f"<an int of {value.bit_length()} bits>"
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"
