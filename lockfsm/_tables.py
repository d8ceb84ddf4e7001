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


DOMAIN = Table(
    name='domain',
    initial='idle',
    states=('idle', 'started', 'stopped', 'freed', 'migrating_out', 'done', 'migrating_in', 'cancelled', 'failed'),
    terminal=frozenset(['freed']),
    requires={'acquire_resource': 'hotplug', 'release_resource': 'hotplug', 'prepare_migrate': 'migration', 'complete_migrate_in': 'migration'},
    refuse={'start_mode': 'IllegalTransition', 'attach_mode': 'IllegalTransition', 'found_running': 'IllegalTransition', 'identity_set': 'InvalidArgument', 'resource_new': 'InvalidArgument', 'resource_known': 'InvalidArgument', 'cancel': 'IllegalTransition', 'no_cancel': 'IllegalTransition', 'found_migrating_out': 'IllegalTransition', 'migrate_mode': 'IllegalTransition', 'cookie_set': 'InvalidArgument', 'found_incoming': 'IllegalTransition', 'supervisor_failed': 'IllegalTransition', 'supervisor_sound': 'IllegalTransition', 'found_failed': 'IllegalTransition'},
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
        Move('started', 'check', ('supervisor_sound',), (), 'started'),
        Move('migrating_out', 'check', ('supervisor_sound',), (), 'migrating_out'),
        Move('migrating_in', 'check', ('supervisor_sound',), (), 'migrating_in'),
        Move('started', 'check', ('supervisor_failed',), ('record_failure',), 'failed'),
        Move('migrating_out', 'check', ('supervisor_failed',), ('record_failure',), 'failed'),
        Move('migrating_in', 'check', ('supervisor_failed',), ('record_failure',), 'failed'),
        Move('failed', 'check', (), (), 'failed'),
        Move('failed', 'shutdown', (), ('supervisor_shutdown',), 'stopped'),
        Move('failed', 'free', (), ('forget',), 'freed'),
        Move('idle', 'get_child', ('attach_mode', 'identity_set', 'found_failed'), ('attach_supervisor', 'record_failure'), 'failed'),
    ),
)

SUPERVISOR = Table(
    name='supervisor',
    initial='starting',
    states=('starting', 'holding', 'running', 'stopping', 'refused', 'exited', 'migrating_out', 'handing_off', 'handed_off', 'reserved', 'incoming', 'cancelling', 'cancelled', 'paused', 'unprotected', 'fencing', 'lost'),
    terminal=frozenset(['cancelled', 'exited', 'handed_off', 'lost', 'refused']),
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
        Move('running', 'lost_poweroff', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('migrating_out', 'lost_poweroff', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('running', 'lost_pause', (), ('pause_guest', 'forfeit_leases'), 'paused'),
        Move('migrating_out', 'lost_pause', (), ('pause_guest', 'forfeit_leases'), 'paused'),
        Move('running', 'lost_ignore', (), ('forfeit_leases',), 'unprotected'),
        Move('migrating_out', 'lost_ignore', (), ('forfeit_leases',), 'unprotected'),
        Move('stopping', 'lost_poweroff', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('handing_off', 'lost_poweroff', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('incoming', 'lost_poweroff', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('cancelling', 'lost_poweroff', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('stopping', 'lost_pause', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('handing_off', 'lost_pause', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('incoming', 'lost_pause', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('cancelling', 'lost_pause', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('stopping', 'lost_ignore', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('handing_off', 'lost_ignore', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('incoming', 'lost_ignore', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('cancelling', 'lost_ignore', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('paused', 'lost_poweroff', (), (), 'paused'),
        Move('unprotected', 'lost_poweroff', (), (), 'unprotected'),
        Move('fencing', 'lost_poweroff', (), (), 'fencing'),
        Move('paused', 'lost_pause', (), (), 'paused'),
        Move('unprotected', 'lost_pause', (), (), 'unprotected'),
        Move('fencing', 'lost_pause', (), (), 'fencing'),
        Move('paused', 'lost_ignore', (), (), 'paused'),
        Move('unprotected', 'lost_ignore', (), (), 'unprotected'),
        Move('fencing', 'lost_ignore', (), (), 'fencing'),
        Move('paused', 'stop', (), ('kill_guest',), 'fencing'),
        Move('unprotected', 'stop', (), ('kill_guest',), 'fencing'),
        Move('fencing', 'stop', (), (), 'fencing'),
        Move('paused', 'guest_exited', (), ('release_all',), 'lost'),
        Move('unprotected', 'guest_exited', (), ('release_all',), 'lost'),
        Move('fencing', 'guest_exited', (), ('release_all',), 'lost'),
        Move('paused', 'attach', (), ('new_controller',), 'paused'),
        Move('unprotected', 'attach', (), ('new_controller',), 'unprotected'),
        Move('fencing', 'attach', (), ('new_controller',), 'fencing'),
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
