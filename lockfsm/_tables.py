"""GENERATED from specs/*.toml by `lockfsm spec gen`: do not edit by hand."""

# ruff: noqa
from __future__ import annotations

import enum

from lockfsm.engine import Move, Table


class DomainState(enum.Enum):
    """States of the domain table."""

    IDLE = 'idle'
    STARTED = 'started'
    STOPPED = 'stopped'
    FREED = 'freed'


class SupervisorState(enum.Enum):
    """States of the supervisor table."""

    STARTING = 'starting'
    HOLDING = 'holding'
    RUNNING = 'running'
    STOPPING = 'stopping'
    REFUSED = 'refused'
    EXITED = 'exited'


class LeaseState(enum.Enum):
    """States of the lease table."""

    UNHELD = 'unheld'
    HELD = 'held'
    RELEASED = 'released'


DOMAIN = Table(
    name='domain',
    initial='idle',
    states=('idle', 'started', 'stopped', 'freed'),
    terminal=frozenset(['freed']),
    requires={'acquire_resource': 'hotplug', 'release_resource': 'hotplug'},
    refuse={'start_mode': 'IllegalTransition', 'attach_mode': 'IllegalTransition', 'identity_set': 'InvalidArgument', 'resource_new': 'InvalidArgument', 'resource_known': 'InvalidArgument'},
    moves=(
        Move('idle', 'set_parameter', (), ('store_parameter',), 'idle'),
        Move('idle', 'register_resource', ('resource_new',), ('store_resource',), 'idle'),
        Move('idle', 'get_child', ('start_mode', 'identity_set'), ('await_launch',), 'started'),
        Move('idle', 'get_child', ('attach_mode', 'identity_set'), ('attach_supervisor',), 'started'),
        Move('started', 'get_child', (), (), 'started'),
        Move('started', 'acquire_resource', ('resource_new',), ('supervisor_acquire',), 'started'),
        Move('started', 'release_resource', ('resource_known',), ('supervisor_release',), 'started'),
        Move('started', 'shutdown', (), ('supervisor_shutdown',), 'stopped'),
        Move('idle', 'free', (), ('forget',), 'freed'),
        Move('started', 'free', (), ('forget',), 'freed'),
        Move('stopped', 'free', (), ('forget',), 'freed'),
    ),
)

SUPERVISOR = Table(
    name='supervisor',
    initial='starting',
    states=('starting', 'holding', 'running', 'stopping', 'refused', 'exited'),
    terminal=frozenset(['exited', 'refused']),
    requires={},
    refuse={},
    moves=(
        Move('starting', 'acquire_all', (), ('acquire_leases',), 'holding'),
        Move('starting', 'refuse', (), ('report_refusal',), 'refused'),
        Move('holding', 'spawn', (), ('spawn_guest',), 'running'),
        Move('running', 'acquire', (), ('acquire_lease',), 'running'),
        Move('running', 'release', (), ('release_lease',), 'running'),
        Move('running', 'attach', (), ('new_controller',), 'running'),
        Move('stopping', 'attach', (), ('new_controller',), 'stopping'),
        Move('running', 'stop', (), ('signal_guest',), 'stopping'),
        Move('stopping', 'stop', (), (), 'stopping'),
        Move('running', 'guest_exited', (), ('release_all',), 'exited'),
        Move('stopping', 'guest_exited', (), ('release_all',), 'exited'),
    ),
)

LEASE = Table(
    name='lease',
    initial='unheld',
    states=('unheld', 'held', 'released'),
    terminal=frozenset(['released']),
    requires={},
    refuse={},
    moves=(
        Move('unheld', 'acquire', (), ('backend_acquire',), 'held'),
        Move('held', 'release', (), ('backend_release',), 'released'),
    ),
)

TABLES = {'domain': DOMAIN, 'supervisor': SUPERVISOR, 'lease': LEASE}
