"""GENERATED from specs/*.toml by `lockfsm spec gen`: do not edit by hand."""

# ruff: noqa
from __future__ import annotations

import enum

from lockfsm.protocol.tables import TABLES as TABLES
from lockfsm.protocol.tables import DOMAIN as DOMAIN
from lockfsm.protocol.tables import SUPERVISOR as SUPERVISOR
from lockfsm.protocol.tables import LEASE as LEASE


class DomainState(enum.Enum):
    """States of the domain table."""

    IDLE = 'idle'
    STARTED = 'started'
    STOPPED = 'stopped'
    FREED = 'freed'
    MIGRATING_OUT = 'migrating_out'
    DONE = 'done'
    MIGRATING_IN = 'migrating_in'
    CANCELLED = 'cancelled'
    FAILED = 'failed'


class SupervisorState(enum.Enum):
    """States of the supervisor table."""

    STARTING = 'starting'
    HOLDING = 'holding'
    RUNNING = 'running'
    STOPPING = 'stopping'
    REFUSED = 'refused'
    EXITED = 'exited'
    MIGRATING_OUT = 'migrating_out'
    HANDING_OFF = 'handing_off'
    HANDED_OFF = 'handed_off'
    RESERVED = 'reserved'
    INCOMING = 'incoming'
    CANCELLING = 'cancelling'
    STOPPING_INCOMING = 'stopping_incoming'
    CANCELLED = 'cancelled'
    PAUSED = 'paused'
    UNPROTECTED = 'unprotected'
    FENCING = 'fencing'
    LOST = 'lost'


class LeaseState(enum.Enum):
    """States of the lease table."""

    UNHELD = 'unheld'
    HELD = 'held'
    RELEASED = 'released'
    RESERVED = 'reserved'
    TAKEN = 'taken'
