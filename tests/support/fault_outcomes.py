"""The fault matrix's expected outcomes: the documented end state of each row
(specs/PROTOCOL.md, DESIGN.md, README), in the words the matrix prints beside what the row
did, and the rows known to reveal a bug in lockfsm/.  The rows are tests/support/fault_rows.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.support.fault_world import HANDOFF, HOLD

if TYPE_CHECKING:
    from tests.support.fault_rows import Row

#: Rows that reveal a bug in lockfsm/ (reported, not fixed here): row id -> reason.
KNOWN_BUGS: dict[str, str] = {}


def documented(row: Row) -> str:
    """The documented end state of a row, in words (specs/PROTOCOL.md, DESIGN.md, README)."""
    backend, target, sig = row.backend, row.target, row.sig
    kind, side, at = row.kind, row.side, row.at
    if kind == "n/a":
        return "not applicable: the kernel is fcntl's lock service"
    if row.source_faulted:
        return _source_faulted(backend, kind, target, sig, at)
    if kind == "gone":
        who = "the guest" if target == "guest" else "the supervisor; its guest dies (PDEATHSIG)"
        if side == "target":
            ends = (
                "the pending complete_migrate_in raises BackendError"
                if at == "waiting"
                else "the target's next call raises BackendError"
            )
            return (
                f"kill -9 {who}: the target's reservations go with it; {ends}; both sides "
                "cancel and the source holds every lease (S3)"
            )
        free = (
            "its supervisor releases every lease at once"
            if target == "guest"
            else "its leases come free once the guest is dead (fcntl and sanlock: the guest's "
            "inherited descriptors; etcd: the agent's connection)"
        )
        if at == "shutdown":
            return f"kill -9 {who}; {free}; the pending shutdown() returns: stopped"
        return (
            f"kill -9 {who}; {free}; the manager's next call raises BackendError; shutdown() "
            "succeeds" + ("; no migration" if at == "prepared" else "")
        )
    if kind == "paused":
        if at == "shutdown":
            return (
                "SIGSTOP guest: nothing changes; the pending shutdown() still ends it "
                "(SIGKILL at the end of the grace period kills a stopped guest): stopped"
            )
        return "SIGSTOP guest: nothing changes, leases held, SIGCONT resumes; the lifecycle ends"
    if kind == "supervisor stopped":
        if at == "waiting":
            return (
                "SIGSTOP target supervisor: its take-over pauses; the source completes "
                "meanwhile (nobody else can take the leases: fcntl's gate, etcd's marker); "
                "SIGCONT and the pending call returns holding every lease (L1)"
            )
        if at == "shutdown":
            return (
                "SIGSTOP supervisor: the guest outlives the grace period with its leases; "
                "SIGCONT and the pending shutdown() completes"
            )
        return (
            "SIGSTOP supervisor: the guest keeps running and holding; calls time out with "
            "BackendError and change nothing; SIGCONT and the next call works"
        )
    if kind == "daemon killed":
        if at == "shutdown":
            return (
                "kill -9 daemon: the supervisor finishes the stop by itself (guest killed "
                "after the grace period, leases released); a new daemon's ATTACH finds "
                "nothing to attach and changes nothing"
            )
        state = {"source": "started", "target": "migrating_in"}[side]
        if at == "prepared":
            state = "migrating_out"
        extra = ""
        if at == "waiting":
            extra = "the pending call dies with the daemon and the supervisor takes nothing on "
            extra += "its behalf; "
        return (
            f"kill -9 daemon: guest and leases stay; {extra}a new daemon ATTACHes: {state}, "
            "same guest, disks and leases (S4); the lifecycle ends"
        )
    if kind == "daemon stopped":
        return (
            "SIGSTOP daemon: guests and leases stay, supervisors act on their own; the "
            "daemon's calls wait; SIGCONT and they complete"
        )
    if kind == "crash":
        return (
            "kill -9 sanlock daemon = a host crash: with no watchdog the guest runs on, its "
            "leases stay owned on disk by the crashed host until 8 x io_timeout + 60 s and "
            "nothing else can acquire them meanwhile (the bounded part is checked); calls that "
            "need the daemon fail and change nothing; migrations are cancelled; shutdown() "
            "succeeds"
        )
    if kind == "stall":
        return _stall(backend)
    if kind == "fenced":
        if side == "target":
            return (
                "kill -9 the target's lease agent: the target holds only reservations; its "
                "take-over cannot succeed (the agent is gone): both sides cancel and the "
                "source holds every lease (S3); the reservations expire with the host's lease"
            )
        return (
            "kill -9 lease agent, no agent back before the deadline: every supervisor of the "
            "host tries to reconnect until its deadline (ttl - fence_margin after the last "
            "keepalive), then stops its guest (poweroff, exit 76); the keys expire after the "
            "TTL and nothing else acquires before; check() says failed; shutdown() succeeds"
        )
    if kind == "agent restarted":
        return _agent_restarted(sig)
    if kind == "hangup":
        return _hangup()
    if kind == "supervisor fenced":
        return _supervisor_fenced(side, at)
    return _failover(sig)


def _agent_restarted(sig: str) -> str:
    how = "kill -9" if sig.startswith("SIGKILL") else "SIGTERM (a service restart)"
    return (
        f"{how} lease agent, a new one started at once: it resumes the host's etcd lease, the "
        "supervisors reconnect and adopt their keys; no guest is stopped, the keys are the "
        "same (S2), the lifecycle ends"
    )


def _hangup() -> str:
    return "SIGHUP lease agent: ignored; nothing changes, the lifecycle ends"


def _supervisor_fenced(side: str, at: str) -> str:
    return (
        "SIGSTOP supervisor (etcd: a call to it times out past its lease's deadline): it does "
        "not acknowledge the agent's "
        "pushes, so the agent stops its guest (poweroff) and lets its keys go before the "
        "deadline; nothing else acquires before the guest is dead; SIGCONT: the supervisor "
        "exits 76"
        + ("; the migration cannot complete: both cancel, the guest is down" * (at == "prepared"))
        + ("; the pending shutdown() returns" * (at == "shutdown"))
    )


def _stall(backend: str) -> str:
    what = "sanlock daemon" if backend == "sanlock" else "lease agent"
    bound = "8 x io_timeout" if backend == "sanlock" else "the fencing deadline"
    return (
        f"SIGSTOP {what} for {HOLD} s (under {bound}): nothing changes; calls that need it "
        "wait; SIGCONT and the lifecycle ends"
    )


def _failover(sig: str) -> str:
    sig_word = "kill -9" if sig == "SIGKILL" else "SIGSTOP"
    return (
        f"{sig_word} the member the agent uses: the agent fails over, the keys stay (same "
        "holders), no guest is fenced; the lifecycle ends"
    )


def _source_faulted(backend: str, kind: str, target: str, sig: str, at: str) -> str:
    """The documented end of a fault on the source while the target is incoming or waits in
    complete_migrate_in (PROTOCOL.md, "Crashes": only the target can take a dead source's
    leases, and only if its daemon completes, which it must not do unless QEMU's migration
    completed: "incoming" is before that, "waiting" after)."""
    if kind == "gone":
        who = "guest" if target == "guest" else "supervisor (its guest dies: PDEATHSIG)"
        if at == "incoming":
            return (
                f"kill -9 the source's {who}: its leases come free but stay reserved for the "
                "target (fcntl's gate, etcd's markers: another host is refused); the target "
                "must not complete before QEMU's migration has: both cancel, shutdown() "
                "succeeds on both; the guest is down"
            )
        return (
            f"kill -9 the source's {who}: its leases come free for the target's reservation; "
            "the target's pending completion takes them and returns (L1); the source's "
            "shutdown() succeeds"
        )
    if kind == "paused":
        return (
            "SIGSTOP the source's guest: nothing changes; the migration completes (the "
            "source's hand_off kills a stopped guest too)"
        )
    if kind == "supervisor stopped":
        late = ""
        if at == "waiting":
            late = (
                "; the target's pending completion fails with LeaseConflict when "
                f"handoff_timeout ({HANDOFF:g} s) passes, taking nothing, and it stays "
                "migrating_in; its daemon completes again"
            )
        return (
            "SIGSTOP the source's supervisor: its guest keeps running and holding; the "
            "target takes nothing; the source's calls time out with BackendError and change "
            f"nothing{late}; SIGCONT and the migration completes (L1)"
        )
    if kind == "daemon killed":
        return (
            "kill -9 the source's daemon: guest and leases stay; a new daemon ATTACHes: "
            "migrating_out, same guest, disks and leases (S4); the migration completes (L1)"
        )
    if kind == "daemon stopped":
        return (
            "SIGSTOP the source's daemon: nothing changes; SIGCONT and the migration completes (L1)"
        )
    if kind == "crash":
        return (
            "kill -9 the source host's sanlock daemon = a crash: its guest runs on (no "
            "watchdog), its leases stay owned on disk and nothing else can take them, the "
            "target included"
            + (
                " (its pending completion fails when handoff_timeout passes)"
                if at == "waiting"
                else ""
            )
            + "; both cancel; shutdown() succeeds; the leases stay on disk until sanlock's bound"
        )
    if kind == "fenced":
        return (
            "kill -9 the source host's lease agent: the source's guest is stopped at once "
            "(poweroff); its keys stay until the host's lease expires, then vanish: the target "
            "cannot take over"
            + (" (its pending completion fails)" if at == "waiting" else "")
            + "; both cancel; the guest is down"
        )
    if kind == "stall":
        return _stall(backend) + " (the migration completes, L1)"
    if kind == "supervisor fenced":
        if at == "waiting":
            return (
                "SIGSTOP the source's supervisor past its lease's deadline: the agent stops "
                "the source's guest (poweroff), then lets its keys go, handed off to the "
                "waiting target's reservations: the target takes them over (L1) if its "
                "handoff_timeout has not passed, else both cancel and the guest is down"
            )
        return (
            "SIGSTOP the source's supervisor past its lease's deadline: the agent stops the "
            "source's guest (poweroff) and lets its keys go (handed off to the target's "
            "reservations); the migration is not completed: both cancel; the guest is down"
        )
    if kind == "agent restarted":
        return _agent_restarted(sig) + " (the migration completes, L1)"
    if kind == "hangup":
        return _hangup() + " (the migration completes)"
    return _failover(sig) + " (the migration completes)"
