"""The formal model: a Promela program generated from the protocol tables, for spin.

Every state and move of the domain and supervisor tables (with the migration rows joined in)
becomes a state and a guarded atomic step of the model, for N hosts that share one guest and one
exclusive lease.  What the tables name, this module gives a meaning in the model:

* each **guard** of the domain table is a Promela condition (:data:`DOMAIN_GUARDS`);
* each **action** of the supervisor table is a condition and an effect on the shared lease
  (:data:`SUPERVISOR_ACTIONS`); the backend's acquire is one atomic compare-and-set, as the
  kernel's lock table (fcntl), sanlock's lease version or an etcd transaction make it;
* each **action** of the domain table is the supervisor events it drives, fired in the same atomic
  step, as the daemon blocks on its supervisor's answer (:data:`DOMAIN_ACTIONS`).

A table naming a guard or action that has no meaning here is refused, so the model cannot
silently drift from the tables.  The environment adds what no table lists: a supervisor killed
(its leases and its guest die with it), a guest killed, a daemon restarted (its managers come back
with ATTACH), and a daemon making a new manager of any kind.

The invariants are assertions checked in every reachable state:

* S1: no two hosts' guests execute at once (the one disk is exclusive);
* S3 (with S2): a guest executes only while its supervisor holds the lease, so during a migration
  only the side holding the lease runs;
* L1: a source whose migration completed holds nothing, and a target whose completion returned
  and whose supervisor runs the guest holds the lease.
"""

from __future__ import annotations

from collections.abc import Iterable

from lockfsm.errors import InvalidArgument
from lockfsm.tools.spec import Spec

# A supervisor that lost a lease and applied the lock-failure policy.
_FAILED = (
    "(sup[h] == S_paused || sup[h] == S_unprotected || sup[h] == S_fencing || sup[h] == S_lost)"
)

# The meaning of the domain table's guards: conditions on host h's manager and the world.
DOMAIN_GUARDS = {
    "start_mode": "mode[h] == M_START",
    "attach_mode": "mode[h] == M_ATTACH",
    "migrate_mode": "mode[h] == M_MIGRATE",
    "identity_set": "true",
    "cookie_set": "cookie != 0 && cookie != h",
    "resource_new": "true",
    "resource_known": "true",
    "cancel": "true",
    "no_cancel": "true",
    "found_running": "sup[h] == S_running",
    "found_migrating_out": "sup[h] == S_migrating_out",
    "found_incoming": "sup[h] == S_incoming",
    "found_failed": "(sup[h] == S_paused || sup[h] == S_unprotected || sup[h] == S_fencing)",
    "supervisor_failed": _FAILED,
    "supervisor_sound": f"!{_FAILED}",
    "loss_reported": _FAILED,
    "leases_required": "true",
}

# The meaning of the supervisor table's guards: conditions on host h's supervisor.  The model's
# daemon is always the current controller, and the ignore policy gives S1 up by the operator's
# choice: not explored.
SUPERVISOR_GUARDS = {
    "start_launch": "supmode[h] == M_START",
    "incoming_launch": "supmode[h] == M_MIGRATE",
    "current_controller": "true",
    "no_take_over_pending": "true",
    "policy_poweroff": "true",
    "policy_pause": "true",
    "policy_ignore": "false",
}

# The meaning of the supervisor table's actions: (condition, effect) for host h.
_CAN_ACQUIRE = "lease == 0 && (gate == 0 || gate == h)"
_CAN_RESERVE = "gate == 0"
SUPERVISOR_ACTIONS = {
    "acquire_leases": (_CAN_ACQUIRE, "lease = h; if :: gate == h -> gate = 0 :: else -> skip fi"),
    "take_over_leases": (
        _CAN_ACQUIRE,
        "lease = h; if :: gate == h -> gate = 0 :: else -> skip fi",
    ),
    "reserve_leases": (_CAN_RESERVE, "gate = h"),
    "report_refusal": (
        f"(supmode[h] == M_START && !({_CAN_ACQUIRE})) || "
        f"(supmode[h] == M_MIGRATE && !({_CAN_RESERVE}))",
        "skip",
    ),
    "spawn_guest": ("true", "guest[h] = true"),
    "kill_guest": ("true", "guest[h] = false"),
    "signal_guest": ("true", "skip"),
    "release_all": ("true", "release(h)"),
    "acquire_lease": ("true", "skip"),
    "release_lease": ("true", "skip"),
    "new_controller": ("true", "skip"),
    "record_migration": ("true", "skip"),
    "forget_migration": ("true", "skip"),
    "pause_guest": ("true", "skip"),  # the guest exists; its state says it does not execute
    "forfeit_leases": ("true", "release(h)"),
}

# Which supervisor events a supervisor fires by itself or the environment gives it (not on a
# daemon's request), with the condition each needs besides its rows' guards.
OWN_EVENTS = {
    "begin": "true",
    "refuse": "true",
    "spawn": "true",
    "guest_exited": "!guest[h]",  # the guest's pidfd is readable only once it is dead
    # A lease lost at any moment, fenced by the policy in the same step (the lock service's
    # promise: sanlock kills or runs the kill path, etcd's holder fences before the TTL ends,
    # before any other holder can be granted the lease).
    "lost": "true",
    "terminate": "true",  # a signal to the supervisor, at any moment
    "grace_over": "guest[h]",  # a signalled guest that did not exit in time
}

# The meaning of the domain table's actions: the supervisor events the daemon's call drives, in
# order, in the same atomic step ("die" stands for the guest dying of the SIGTERM it was sent).
# None: no supervisor is involved.  "launch": see _launch_steps.
DOMAIN_ACTIONS: dict[str, list[str] | None] = {
    "store_parameter": None,
    "store_resource": None,
    "forget": None,
    "await_launch": [],  # the supervisor reached its goal state by its own steps
    "attach_supervisor": ["attach"],
    "supervisor_acquire": ["acquire"],
    "supervisor_release": ["release"],
    "supervisor_shutdown": ["stop", "die", "guest_exited"],
    "supervisor_prepare": ["prepare"],
    "supervisor_resume": ["resume"],
    "supervisor_hand_off": ["hand_off", "guest_exited"],
    "supervisor_take_over": ["take_over"],
    "supervisor_cancel": ["cancel", "guest_exited"],
    "record_failure": None,
    "record_loss": None,
    "make_launch": None,
}

# Extra effects of domain actions on the world the model keeps.
DOMAIN_EFFECTS = {"supervisor_prepare": "cookie = h"}

# get_child ends when the supervisor of this launch reached these states.
LAUNCH_GOALS = {"started": "S_running", "migrating_in": "S_incoming"}


def _c(name: str, prefix: str) -> str:
    return f"{prefix}_{name}"


def _check_meanings(domain: Spec, supervisor: Spec) -> None:
    missing = [g for g in domain.guards if g not in DOMAIN_GUARDS]
    missing += [a for a in domain.actions if a not in DOMAIN_ACTIONS]
    missing += [a for a in supervisor.actions if a not in SUPERVISOR_ACTIONS]
    missing += [g for g in supervisor.guards if g not in SUPERVISOR_GUARDS]
    missing += [
        e for e in supervisor.events if e not in OWN_EVENTS and not _requested(e, DOMAIN_ACTIONS)
    ]
    if missing:
        raise InvalidArgument(f"the formal model has no meaning for {sorted(set(missing))}")


def _requested(event: str, actions: dict[str, list[str] | None]) -> bool:
    return any(event in (steps or []) for steps in actions.values())


class _Writer:
    def __init__(self, domain: Spec, supervisor: Spec) -> None:
        self.d = domain
        self.s = supervisor
        self.d_rows = domain.expanded()
        self.s_rows = supervisor.expanded()

    def supervisor_event(self, event: str) -> tuple[str, str]:
        """(condition, effect) of host h's supervisor taking ``event`` from whatever state it is
        in: one branch per table row (with the row's actions), or not enabled at all."""
        rows = [r for r in self.s_rows if r[1] == event]
        conds, branches = [], []
        for src, _, guards, actions, dest in rows:
            cond = " && ".join(
                [f"sup[h] == {_c(src, 'S')}"]
                + [f"({SUPERVISOR_GUARDS[g]})" for g in guards]
                + [f"({SUPERVISOR_ACTIONS[a][0]})" for a in actions]
            )
            effect = "; ".join(
                [SUPERVISOR_ACTIONS[a][1] for a in actions] + [f"sup[h] = {_c(dest, 'S')}"]
            )
            conds.append(f"({cond})")
            branches.append(f":: {cond} -> {effect}")
        if not rows:
            return "false", "skip"
        # The step's guard holds the first event's condition; an event chained after it must be
        # possible where the first left the supervisor, or the model and the tables disagree.
        return " || ".join(conds), "if " + " ".join(branches) + " :: else -> assert(false) fi"

    def domain_step(self, row: tuple[str, str, tuple[str, ...], tuple[str, ...], str]) -> str:
        src, event, guards, actions, dest = row
        conds = [f"dm[h] == {_c(src, 'D')}"] + [f"({DOMAIN_GUARDS[g]})" for g in guards]
        effects: list[str] = []
        for action in actions:
            steps = DOMAIN_ACTIONS[action]
            if action == "await_launch":
                conds.append(f"sup[h] == {LAUNCH_GOALS[dest]} && supmode[h] == mode[h]")
            elif action == "supervisor_shutdown":
                # Succeeds at once when the supervisor is already gone; otherwise the supervisor
                # stops the guest, and the daemon's call returns when it has released everything.
                stop_cond, _ = self.supervisor_event("stop")
                conds.append(f"(sup[h] == S_gone || {self.terminal()} || {stop_cond})")
                effects.append(f"if :: {stop_cond} -> {self.chain(steps or [])} :: else -> skip fi")
            elif steps:
                conds.append(f"({self.supervisor_event(steps[0])[0]})")
                effects.append(self.chain(steps))
            if action in DOMAIN_EFFECTS:
                effects.append(DOMAIN_EFFECTS[action])
        effects.append(f"dm[h] = {_c(dest, 'D')}")
        if dest != "idle":
            effects.append("mode[h] = M_START")  # read only while idle: keep one value after
        label = f"domain {src} --{event}--> {dest}"
        return (
            f"    :: atomic {{ {' && '.join(conds)} ->\n"
            f"         {'; '.join(effects)};\n"
            f'         printf("STEP host %d: {label}\\n", h) }}'
        )

    def chain(self, steps: list[str]) -> str:
        """The effects of supervisor events fired one after the other ("die": the guest dies)."""
        return "; ".join(
            "guest[h] = false" if step == "die" else self.supervisor_event(step)[1]
            for step in steps
        )

    def terminal(self) -> str:
        return "(" + " || ".join(f"sup[h] == {_c(t, 'S')}" for t in self.s.terminal) + ")"

    def guest_states(self, executing: bool = False) -> str:
        names = [
            n
            for n, st in self.s.states.items()
            if st.attrs.get("guest") and (not executing or st.attrs.get("executes", True))
        ]
        return "(" + " || ".join(f"sup[h] == {_c(n, 'S')}" for n in names) + ")"

    def own_steps(self, lease_loss: bool) -> Iterable[str]:
        for event, mode in OWN_EVENTS.items():
            if event in ENVIRONMENT_EVENTS and not lease_loss:
                continue
            for src, ev, guards, actions, dest in self.s_rows:
                if ev != event:
                    continue
                conds = [f"sup[h] == {_c(src, 'S')}", mode]
                conds += [f"({SUPERVISOR_GUARDS[g]})" for g in guards]
                conds += [f"({SUPERVISOR_ACTIONS[a][0]})" for a in actions]
                effects = [SUPERVISOR_ACTIONS[a][1] for a in actions]
                effects.append(f"sup[h] = {_c(dest, 'S')}")
                label = f"supervisor {src} --{event}--> {dest}"
                yield (
                    f"    :: atomic {{ {' && '.join(conds)} ->\n"
                    f"         {'; '.join(effects)};\n"
                    f'         printf("STEP host %d: {label}\\n", h) }}'
                )


#: Supervisor events the environment gives at any moment (a lost lease, a signal, a grace period
#: over), explored up to LEASE_LOSS_HOSTS hosts.
ENVIRONMENT_EVENTS = ("lost", "terminate", "grace_over")

#: Up to this many hosts the model loses leases and takes signals too.  Beyond, those steps are
#: left out: with lease loss 3 hosts reach 108 million states (211 s, measured here), with
#: signals alone 22 million (52 s), against 12 million without; their interplay with the
#: handoff is the same with 2 hosts as with 3.
LEASE_LOSS_HOSTS = 2


def generate(specs: dict[str, Spec], hosts: int) -> str:
    """The Promela model of ``specs`` for ``hosts`` hosts (byte-stable)."""
    lease_loss = hosts <= LEASE_LOSS_HOSTS
    domain, supervisor = specs["domain"], specs["supervisor"]
    _check_meanings(domain, supervisor)
    w = _Writer(domain, supervisor)
    out = [
        f"/* GENERATED from specs/*.toml by `lockfsm spec model`: {hosts} hosts. Do not edit. */",
        "/* Lease loss and signals (the lost, terminate and grace_over events): "
        + ("modelled." if lease_loss else f"left out beyond {LEASE_LOSS_HOSTS} hosts.")
        + " */",
        f"#define N {hosts}",
        "",
        "/* domain manager states (daemon side) */",
    ]
    out += [f"#define {_c(s, 'D')} {i}" for i, s in enumerate(domain.states)]
    out += ["", "/* supervisor states; S_gone: no supervisor process */"]
    out += [f"#define {_c(s, 'S')} {i}" for i, s in enumerate(supervisor.states)]
    out += [
        f"#define S_gone {len(supervisor.states)}",
        "",
        "/* how a manager was made, and how its supervisor was launched */",
        "#define M_START 0",
        "#define M_ATTACH 1",
        "#define M_MIGRATE 2",
        "",
        "byte dm[N + 1];      /* each host's manager of the guest */",
        "byte mode[N + 1];",
        "byte sup[N + 1];      /* each host's supervisor of the guest */",
        "byte supmode[N + 1];",
        "bool guest[N + 1];   /* the guest process exists on host h */",
        "byte lease = 0;      /* who holds the guest's exclusive lease (0: nobody) */",
        "byte gate = 0;       /* who reserved it for an incoming migration */",
        "byte cookie = 0;     /* the host that last prepared a migration */",
        "",
        "inline release(h) {",
        "    if :: lease == h -> lease = 0 :: else -> skip fi;",
        "    if :: gate == h -> gate = 0 :: else -> skip fi",
        "}",
        "",
        "#define executing(h) (guest[h] && " + w.guest_states(executing=True) + ")",
        "",
        "proctype host(byte h) {",
        "    do",
    ]
    out += [w.domain_step(r) for r in w.d_rows]
    out += list(w.own_steps(lease_loss))
    gone = f"(sup[h] == S_gone || {w.terminal()})"
    alive = f"!{gone}"
    out += [
        "    /* the environment: what no table lists */",
        f"    :: atomic {{ dm[h] == D_idle && mode[h] != M_ATTACH && {gone} &&",
        "         (mode[h] != M_MIGRATE || (cookie != 0 && cookie != h)) ->",
        "         sup[h] = S_starting; supmode[h] = mode[h]; guest[h] = false;",
        '         printf("STEP host %d: daemon runs a supervisor (mode %d)\\n", h, mode[h]) }',
        "    :: atomic { dm[h] == D_idle && sup[h] == S_refused ->",
        "         sup[h] = S_gone; supmode[h] = M_START;",
        '         printf("STEP host %d: daemon reads the refusal\\n", h) }',
        f"    :: atomic {{ {alive} -> release(h); guest[h] = false; sup[h] = S_gone;",
        "         supmode[h] = M_START;",
        '         printf("STEP host %d: kill -9 of the supervisor (its guest dies)\\n", h) }',
        "    :: atomic { guest[h] -> guest[h] = false;",
        '         printf("STEP host %d: the guest dies\\n", h) }',
        "    :: atomic { dm[h] != D_freed -> dm[h] = D_idle; mode[h] = M_ATTACH;",
        '         printf("STEP host %d: the daemon restarts (ATTACH)\\n", h) }',
        "    :: atomic { dm[h] == D_freed || dm[h] == D_idle ->",
        "         dm[h] = D_idle;",
        "         /* a fresh start or a migration target only where no supervisor runs */",
        f"         if :: mode[h] = M_ATTACH :: {gone} -> mode[h] = M_START",
        f"            :: {gone} -> mode[h] = M_MIGRATE fi;",
        '         printf("STEP host %d: the daemon makes a new manager (mode %d)\\n",',
        "                h, mode[h]) }",
        "    od",
        "}",
        "",
        "/* S1: no two hosts' guests execute at once (one exclusive disk). */",
        "#define S1 ("
        + " && ".join(
            f"!(executing({a}) && executing({b}))"
            for a in range(1, hosts + 1)
            for b in range(a + 1, hosts + 1)
        )
        + ")",
        "/* S3 (with S2): a guest executes only while its supervisor holds the lease. */",
        "#define S3 ("
        + " && ".join(f"(!executing({h}) || lease == {h})" for h in range(1, hosts + 1))
        + ")",
        "/* L1: a completed source holds nothing; a completed target whose guest runs holds it. */",
        "#define L1 ("
        + " && ".join(
            f"(dm[{h}] != D_done || (lease != {h} && gate != {h})) && "
            f"(!(dm[{h}] == D_started && sup[{h}] == S_running) || lease == {h})"
            for h in range(1, hosts + 1)
        )
        + ")",
        "",
        "active proctype invariants() {",
        "    atomic { !(S1 && S3 && L1) ->",
        '        if :: !S1 -> printf("VIOLATION S1\\n") :: else -> skip fi;',
        '        if :: !S3 -> printf("VIOLATION S3\\n") :: else -> skip fi;',
        '        if :: !L1 -> printf("VIOLATION L1\\n") :: else -> skip fi;',
        "        assert(S1 && S3 && L1) }",
        "}",
        "",
        "init {",
        "    atomic {",
        "        byte i = 1;",
        "        do",
        "        :: i <= N -> dm[i] = D_idle; sup[i] = S_gone; mode[i] = M_START; run host(i); i++",
        "        :: else -> break",
        "        od",
        "    }",
        "}",
        "",
    ]
    return "\n".join(out)
