"""GENERATED from specs/*.toml by `lockfsm spec gen`: do not edit by hand."""

# ruff: noqa
from __future__ import annotations

from lockfsm.protocol.engine import Move, Table


DOMAIN = Table(
    name='domain',
    initial='idle',
    states=('idle', 'started', 'stopped', 'freed', 'migrating_out', 'done', 'migrating_in', 'cancelled', 'failed'),
    terminal=frozenset(['freed']),
    requires={'acquire_resource': 'hotplug', 'release_resource': 'hotplug', 'prepare_migrate': 'migration', 'complete_migrate_in': 'migration'},
    refuse={'start_mode': 'IllegalTransition', 'attach_mode': 'IllegalTransition', 'found_running': 'IllegalTransition', 'identity_set': 'InvalidArgument', 'leases_required': 'InvalidArgument', 'resource_new': 'InvalidArgument', 'resource_known': 'InvalidArgument', 'cancel': 'IllegalTransition', 'no_cancel': 'IllegalTransition', 'found_migrating_out': 'IllegalTransition', 'migrate_mode': 'IllegalTransition', 'cookie_set': 'InvalidArgument', 'found_incoming': 'IllegalTransition', 'supervisor_failed': 'IllegalTransition', 'supervisor_sound': 'IllegalTransition', 'loss_reported': 'IllegalTransition', 'found_failed': 'IllegalTransition'},
    moves=(
        Move('idle', 'set_parameter', (), ('store_parameter',), 'idle'),
        Move('idle', 'register_resource', ('resource_new',), ('store_resource',), 'idle'),
        Move('idle', 'supervisor_args', ('start_mode', 'identity_set', 'leases_required'), ('make_launch',), 'idle'),
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
        Move('idle', 'supervisor_args', ('migrate_mode', 'identity_set', 'cookie_set', 'leases_required'), ('make_launch',), 'idle'),
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
        Move('started', 'lease_lost', ('loss_reported',), ('record_loss',), 'failed'),
        Move('migrating_out', 'lease_lost', ('loss_reported',), ('record_loss',), 'failed'),
        Move('migrating_in', 'lease_lost', ('loss_reported',), ('record_loss',), 'failed'),
        Move('failed', 'check', (), (), 'failed'),
        Move('failed', 'shutdown', (), ('supervisor_shutdown',), 'stopped'),
        Move('failed', 'free', (), ('forget',), 'freed'),
        Move('idle', 'get_child', ('attach_mode', 'identity_set', 'found_failed'), ('attach_supervisor', 'record_failure'), 'failed'),
    ),
    attrs={},
    reads={'found_running': ('supervisor',), 'found_migrating_out': ('supervisor',), 'found_incoming': ('supervisor',), 'supervisor_failed': ('health',), 'supervisor_sound': ('health',), 'found_failed': ('supervisor',)},
    raised_by={'LeaseLost': 'lease_lost'},
    state_refuse={},
    batch=frozenset([]),
    event_guards={},
    unrecorded=frozenset(['supervisor_args']),
)

SUPERVISOR = Table(
    name='supervisor',
    initial='starting',
    states=('starting', 'holding', 'running', 'stopping', 'refused', 'exited', 'migrating_out', 'handing_off', 'handed_off', 'reserved', 'incoming', 'cancelling', 'stopping_incoming', 'cancelled', 'paused', 'unprotected', 'fencing', 'lost'),
    terminal=frozenset(['cancelled', 'exited', 'handed_off', 'lost', 'refused']),
    requires={},
    refuse={'start_launch': 'IllegalTransition', 'current_controller': 'BackendError', 'incoming_launch': 'IllegalTransition', 'no_take_over_pending': 'InvalidArgument', 'policy_poweroff': 'IllegalTransition', 'policy_pause': 'IllegalTransition', 'policy_ignore': 'IllegalTransition'},
    moves=(
        Move('starting', 'begin', ('start_launch',), ('acquire_leases',), 'holding'),
        Move('starting', 'refuse', (), ('report_refusal',), 'refused'),
        Move('holding', 'spawn', (), ('spawn_guest',), 'running'),
        Move('running', 'acquire', ('current_controller',), ('acquire_lease',), 'running'),
        Move('running', 'release', ('current_controller',), ('release_lease',), 'running'),
        Move('running', 'attach', (), ('new_controller',), 'running'),
        Move('stopping', 'attach', (), ('new_controller',), 'stopping'),
        Move('running', 'stop', ('current_controller',), ('signal_guest',), 'stopping'),
        Move('stopping', 'stop', ('current_controller',), (), 'stopping'),
        Move('running', 'terminate', (), ('signal_guest',), 'stopping'),
        Move('stopping', 'terminate', (), ('kill_guest',), 'stopping'),
        Move('stopping', 'grace_over', (), ('kill_guest',), 'stopping'),
        Move('running', 'guest_exited', (), ('release_all',), 'exited'),
        Move('stopping', 'guest_exited', (), ('release_all',), 'exited'),
        Move('running', 'prepare', ('current_controller',), ('record_migration',), 'migrating_out'),
        Move('migrating_out', 'resume', ('current_controller',), ('forget_migration',), 'running'),
        Move('migrating_out', 'hand_off', ('current_controller',), ('kill_guest',), 'handing_off'),
        Move('handing_off', 'guest_exited', (), ('release_all',), 'handed_off'),
        Move('migrating_out', 'stop', ('current_controller',), ('signal_guest',), 'stopping'),
        Move('migrating_out', 'guest_exited', (), ('release_all',), 'exited'),
        Move('migrating_out', 'terminate', (), ('signal_guest',), 'stopping'),
        Move('handing_off', 'terminate', (), ('kill_guest',), 'handing_off'),
        Move('migrating_out', 'attach', (), ('new_controller',), 'migrating_out'),
        Move('handing_off', 'attach', (), ('new_controller',), 'handing_off'),
        Move('starting', 'begin', ('incoming_launch',), ('reserve_leases',), 'reserved'),
        Move('reserved', 'spawn', (), ('spawn_guest',), 'incoming'),
        Move('incoming', 'take_over', ('current_controller', 'no_take_over_pending'), ('take_over_leases',), 'running'),
        Move('incoming', 'cancel', ('current_controller',), ('kill_guest',), 'cancelling'),
        Move('cancelling', 'guest_exited', (), ('release_all',), 'cancelled'),
        Move('incoming', 'stop', ('current_controller',), ('signal_guest',), 'stopping_incoming'),
        Move('incoming', 'guest_exited', (), ('release_all',), 'exited'),
        Move('incoming', 'terminate', (), ('signal_guest',), 'stopping_incoming'),
        Move('stopping_incoming', 'stop', ('current_controller',), (), 'stopping_incoming'),
        Move('stopping_incoming', 'terminate', (), ('kill_guest',), 'stopping_incoming'),
        Move('stopping_incoming', 'grace_over', (), ('kill_guest',), 'stopping_incoming'),
        Move('stopping_incoming', 'guest_exited', (), ('release_all',), 'exited'),
        Move('cancelling', 'terminate', (), ('kill_guest',), 'cancelling'),
        Move('incoming', 'attach', (), ('new_controller',), 'incoming'),
        Move('cancelling', 'attach', (), ('new_controller',), 'cancelling'),
        Move('stopping_incoming', 'attach', (), ('new_controller',), 'stopping_incoming'),
        Move('running', 'lost', ('policy_poweroff',), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('migrating_out', 'lost', ('policy_poweroff',), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('running', 'lost', ('policy_pause',), ('pause_guest', 'forfeit_leases'), 'paused'),
        Move('migrating_out', 'lost', ('policy_pause',), ('pause_guest', 'forfeit_leases'), 'paused'),
        Move('running', 'lost', ('policy_ignore',), ('forfeit_leases',), 'unprotected'),
        Move('migrating_out', 'lost', ('policy_ignore',), ('forfeit_leases',), 'unprotected'),
        Move('stopping', 'lost', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('handing_off', 'lost', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('incoming', 'lost', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('cancelling', 'lost', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('stopping_incoming', 'lost', (), ('kill_guest', 'forfeit_leases'), 'fencing'),
        Move('paused', 'lost', (), (), 'paused'),
        Move('unprotected', 'lost', (), (), 'unprotected'),
        Move('fencing', 'lost', (), (), 'fencing'),
        Move('paused', 'stop', ('current_controller',), ('kill_guest',), 'fencing'),
        Move('unprotected', 'stop', ('current_controller',), ('kill_guest',), 'fencing'),
        Move('fencing', 'stop', ('current_controller',), (), 'fencing'),
        Move('paused', 'terminate', (), ('kill_guest',), 'fencing'),
        Move('unprotected', 'terminate', (), ('kill_guest',), 'fencing'),
        Move('fencing', 'terminate', (), (), 'fencing'),
        Move('paused', 'guest_exited', (), ('release_all',), 'lost'),
        Move('unprotected', 'guest_exited', (), ('release_all',), 'lost'),
        Move('fencing', 'guest_exited', (), ('release_all',), 'lost'),
        Move('paused', 'attach', (), ('new_controller',), 'paused'),
        Move('unprotected', 'attach', (), ('new_controller',), 'unprotected'),
        Move('fencing', 'attach', (), ('new_controller',), 'fencing'),
    ),
    attrs={'holding': {'holds': True}, 'running': {'holds': True, 'guest': True}, 'stopping': {'holds': True, 'guest': True}, 'refused': {'exit': 75}, 'exited': {'exit': 'guest'}, 'migrating_out': {'holds': True, 'guest': True}, 'handing_off': {'holds': True, 'guest': True, 'executes': False}, 'handed_off': {'exit': 0}, 'reserved': {'reserves': True}, 'incoming': {'reserves': True, 'guest': True, 'executes': False}, 'cancelling': {'reserves': True, 'guest': True, 'executes': False}, 'stopping_incoming': {'reserves': True, 'guest': True, 'executes': False}, 'cancelled': {'exit': 0}, 'paused': {'guest': True, 'executes': False}, 'unprotected': {'guest': True, 'unprotected': True}, 'fencing': {'guest': True, 'executes': False}, 'lost': {'exit': 76}},
    reads={},
    raised_by={},
    state_refuse={'paused': 'LeaseLost', 'unprotected': 'LeaseLost', 'fencing': 'LeaseLost'},
    batch=frozenset([]),
    event_guards={'acquire': ('current_controller',), 'release': ('current_controller',), 'stop': ('current_controller',), 'prepare': ('current_controller',), 'resume': ('current_controller',), 'hand_off': ('current_controller',), 'take_over': ('current_controller',), 'cancel': ('current_controller',)},
    unrecorded=frozenset([]),
)

#: supervisor states in which the leases are held
SUPERVISOR_HOLDS = frozenset(['handing_off', 'holding', 'migrating_out', 'running', 'stopping'])

#: supervisor states in which the leases are reserved for an incoming migration
SUPERVISOR_RESERVES = frozenset(['cancelling', 'incoming', 'reserved', 'stopping_incoming'])

#: supervisor states in which the guest process exists
SUPERVISOR_GUEST = frozenset(['cancelling', 'fencing', 'handing_off', 'incoming', 'migrating_out', 'paused', 'running', 'stopping', 'stopping_incoming', 'unprotected'])

#: supervisor states in which the guest may execute
SUPERVISOR_EXECUTES = frozenset(['migrating_out', 'running', 'stopping', 'unprotected'])

#: supervisor states in which the guest runs without its leases, by the operator's choice
SUPERVISOR_UNPROTECTED = frozenset(['unprotected'])

#: supervisor terminal state -> the process's exit status ('guest': the guest's own)
SUPERVISOR_EXIT: dict[str, int | str] = {'refused': 75, 'exited': 'guest', 'handed_off': 0, 'cancelled': 0, 'lost': 76}

LEASE = Table(
    name='lease',
    initial='unheld',
    states=('unheld', 'held', 'released', 'reserved', 'taken'),
    terminal=frozenset(['released']),
    requires={},
    refuse={},
    moves=(
        Move('unheld', 'acquire', (), ('backend_acquire',), 'held'),
        Move('held', 'release', (), ('backend_release',), 'released'),
        Move('unheld', 'reserve', (), ('backend_reserve',), 'reserved'),
        Move('reserved', 'take_over', (), ('backend_take_over',), 'taken'),
        Move('taken', 'settle', (), ('backend_settle',), 'held'),
        Move('reserved', 'release', (), ('backend_unreserve',), 'released'),
    ),
    attrs={'held': {'holds': True}, 'reserved': {'reserves': True}, 'taken': {'holds': True, 'reserves': True}},
    reads={},
    raised_by={},
    state_refuse={},
    batch=frozenset(['backend_release', 'backend_take_over', 'backend_unreserve']),
    event_guards={},
    unrecorded=frozenset([]),
)

#: lease states in which the leases are held
LEASE_HOLDS = frozenset(['held', 'taken'])

#: lease states in which the leases are reserved for an incoming migration
LEASE_RESERVES = frozenset(['reserved', 'taken'])

TABLES = {'domain': DOMAIN, 'supervisor': SUPERVISOR, 'lease': LEASE}
