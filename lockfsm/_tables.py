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
    MIGRATING_OUT = 'migrating_out'
    DONE = 'done'
    MIGRATING_IN = 'migrating_in'
    CANCELLED = 'cancelled'


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
    CANCELLED = 'cancelled'


class LeaseState(enum.Enum):
    """States of the lease table."""

    UNHELD = 'unheld'
    HELD = 'held'
    RELEASED = 'released'
    RESERVED = 'reserved'


DOMAIN = Table(
    name='domain',
    initial='idle',
    states=('idle', 'started', 'stopped', 'freed', 'migrating_out', 'done', 'migrating_in', 'cancelled'),
    terminal=frozenset(['freed']),
    requires={'acquire_resource': 'hotplug', 'release_resource': 'hotplug', 'prepare_migrate': 'migration', 'complete_migrate_in': 'migration'},
    refuse={'start_mode': 'IllegalTransition', 'attach_mode': 'IllegalTransition', 'found_running': 'IllegalTransition', 'identity_set': 'InvalidArgument', 'resource_new': 'InvalidArgument', 'resource_known': 'InvalidArgument', 'cancel': 'IllegalTransition', 'no_cancel': 'IllegalTransition', 'found_migrating_out': 'IllegalTransition', 'migrate_mode': 'IllegalTransition', 'cookie_set': 'InvalidArgument', 'found_incoming': 'IllegalTransition'},
    moves=(
        Move('idle', 'set_parameter', (), ('store_parameter',), 'idle'),
        Move('idle', 'register_resource', ('resource_new',), ('store_resource',), 'idle'),
        Move('idle', 'get_child', ('start_mode', 'identity_set'), ('await_launch',), 'started'),
        Move('idle', 'get_child', ('attach_mode', 'identity_set', 'found_running'), ('attach_supervisor',), 'started'),
        Move('started', 'get_child', (), (), 'started'),
        Move('started', 'acquire_resource', ('resource_new',), ('supervisor_acquire',), 'started'),
        Move('started', 'release_resource', ('resource_known',), ('supervisor_release',), 'started'),
        Move('started', 'shutdown', (), ('supervisor_shutdown',), 'stopped'),
        Move('idle', 'free', (), ('forget',), 'freed'),
        Move('started', 'free', (), ('forget',), 'freed'),
        Move('stopped', 'free', (), ('forget',), 'freed'),
        Move('started', 'prepare_migrate', (), ('supervisor_prepare',), 'migrating_out'),
        Move('migrating_out', 'complete_migrate_in', ('cancel',), ('supervisor_resume',), 'started'),
        Move('migrating_out', 'complete_migrate_in', ('no_cancel',), ('supervisor_hand_off',), 'done'),
        Move('migrating_out', 'shutdown', (), ('supervisor_shutdown',), 'stopped'),
        Move('done', 'shutdown', (), ('supervisor_shutdown',), 'stopped'),
        Move('migrating_out', 'free', (), ('forget',), 'freed'),
        Move('done', 'free', (), ('forget',), 'freed'),
        Move('idle', 'get_child', ('attach_mode', 'identity_set', 'found_migrating_out'), ('attach_supervisor',), 'migrating_out'),
        Move('idle', 'get_child', ('migrate_mode', 'identity_set', 'cookie_set'), ('await_launch',), 'migrating_in'),
        Move('migrating_in', 'complete_migrate_in', ('no_cancel',), ('supervisor_take_over',), 'started'),
        Move('migrating_in', 'complete_migrate_in', ('cancel',), ('supervisor_cancel',), 'cancelled'),
        Move('migrating_in', 'shutdown', (), ('supervisor_shutdown',), 'stopped'),
        Move('cancelled', 'shutdown', (), ('supervisor_shutdown',), 'stopped'),
        Move('migrating_in', 'free', (), ('forget',), 'freed'),
        Move('cancelled', 'free', (), ('forget',), 'freed'),
        Move('idle', 'get_child', ('attach_mode', 'identity_set', 'found_incoming'), ('attach_supervisor',), 'migrating_in'),
    ),
)

SUPERVISOR = Table(
    name='supervisor',
    initial='starting',
    states=('starting', 'holding', 'running', 'stopping', 'refused', 'exited', 'migrating_out', 'handing_off', 'handed_off', 'reserved', 'incoming', 'cancelling', 'cancelled'),
    terminal=frozenset(['cancelled', 'exited', 'handed_off', 'refused']),
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
        Move('running', 'prepare', (), ('record_migration',), 'migrating_out'),
        Move('migrating_out', 'resume', (), ('forget_migration',), 'running'),
        Move('migrating_out', 'hand_off', (), ('kill_guest',), 'handing_off'),
        Move('handing_off', 'guest_exited', (), ('release_all',), 'handed_off'),
        Move('migrating_out', 'stop', (), ('signal_guest',), 'stopping'),
        Move('migrating_out', 'guest_exited', (), ('release_all',), 'exited'),
        Move('migrating_out', 'attach', (), ('new_controller',), 'migrating_out'),
        Move('handing_off', 'attach', (), ('new_controller',), 'handing_off'),
        Move('starting', 'reserve', (), ('reserve_leases',), 'reserved'),
        Move('reserved', 'spawn', (), ('spawn_guest',), 'incoming'),
        Move('incoming', 'take_over', (), ('acquire_leases',), 'running'),
        Move('incoming', 'cancel', (), ('kill_guest',), 'cancelling'),
        Move('cancelling', 'guest_exited', (), ('release_all',), 'cancelled'),
        Move('incoming', 'stop', (), ('signal_guest',), 'stopping'),
        Move('incoming', 'guest_exited', (), ('release_all',), 'exited'),
        Move('incoming', 'attach', (), ('new_controller',), 'incoming'),
        Move('cancelling', 'attach', (), ('new_controller',), 'cancelling'),
    ),
)

LEASE = Table(
    name='lease',
    initial='unheld',
    states=('unheld', 'held', 'released', 'reserved'),
    terminal=frozenset(['released']),
    requires={},
    refuse={},
    moves=(
        Move('unheld', 'acquire', (), ('backend_acquire',), 'held'),
        Move('held', 'release', (), ('backend_release',), 'released'),
        Move('unheld', 'reserve', (), ('backend_reserve',), 'reserved'),
        Move('reserved', 'acquire', (), ('backend_acquire',), 'held'),
        Move('held', 'revert', (), ('backend_revert',), 'reserved'),
        Move('reserved', 'release', (), ('backend_release',), 'released'),
    ),
)

TABLES = {'domain': DOMAIN, 'supervisor': SUPERVISOR, 'lease': LEASE}
