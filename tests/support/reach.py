"""Every (state of A, state of B, "host:call") triple the two-host machine can start a step from:
an exhaustive exploration, in plain Python, of the machine's own model (lockfsm/fuzz/machine.py
on fcntl), abstracted as the machine records it (:meth:`TwoHosts.abstract`: "manager
state/supervisor" per host, "-" for no manager).

What is explored is the model the machine asserts against, not the tables: each call's effect on
the abstract state is the one the machine's ``do_*`` methods predict (a refused call changes
nothing), and which calls are possible is what its rules allow (:meth:`TwoHosts.idle`,
``launchable``, ``incoming_hosts``, ``live``).  Disks (hot-plug) and the cookie's details do not
change the abstract state and are left out.  tests/power.py measures coverage against this set, and
counts any triple a run reaches outside it (there should be none: that would mean this
exploration and the machine disagree).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from lockfsm.fuzz.machine import CALLS  # the daemon calls the machine makes

HOSTS = "ABC"
ACTIVE = ("started", "migrating_out", "migrating_in")
EXECUTING = ("running", "migrating_out")
STATE_OF = {"running": "started", "migrating_out": "migrating_out", "incoming": "migrating_in"}

Host = tuple[str, str]  # (manager state or "-", supervisor)
World = tuple[tuple[Host, ...], bool, int]  # (hosts A B C, a cookie exists, pending host or -1)


def _live(hosts: tuple[Host, ...]) -> list[int]:
    return [i for i, (_, sup) in enumerate(hosts) if sup != "none"]


def _blocked(hosts: tuple[Host, ...], i: int) -> bool:
    """takeover_blockers: another live supervisor executes the guest."""
    return any(j != i and hosts[j][1] in EXECUTING for j in _live(hosts))


def _after_release(hosts: list[Host], pending: int) -> int:
    if pending < 0:
        return pending
    if hosts[pending][1] == "none":
        return -1  # its supervisor died: the call failed
    if not _blocked(tuple(hosts), pending):
        hosts[pending] = ("started", "running")  # the take-over returned
        return -1
    return pending


def calls(world: World) -> Iterator[tuple[int, str]]:
    """(host, call) pairs the machine's rules can make from ``world``."""
    hosts, cookie, pending = world
    for i, (state, sup) in enumerate(hosts):
        if state not in ACTIVE:
            yield i, "start"
            if cookie and sup == "none":
                yield i, "incoming"
        if state != "-" and i != pending:
            for call in CALLS:
                yield i, call
        if sup != "none":
            yield i, "kill -9 supervisor"
            yield i, "kill -9 guest"
        if i != pending:
            yield i, "restart daemon"


def step(world: World, i: int, call: str) -> World:
    """The world after host ``i`` made ``call``, as the machine's model predicts."""
    hosts, cookie, pending = list(world[0]), world[1], world[2]
    state, sup = hosts[i]
    anyone = bool(_live(world[0]))
    if call == "start":
        hosts[i] = ("idle", sup) if anyone else ("started", "running")
    elif call == "incoming":
        blocked = any(s == "incoming" for _, s in hosts)
        hosts[i] = ("idle", sup) if blocked else ("migrating_in", "incoming")
    elif call == "prepare_migrate":
        if state == "started" and sup != "none":
            hosts[i], cookie = ("migrating_out", "migrating_out"), True
    elif call.startswith("complete_migrate_in"):
        cancel, background = "cancel" in call, "background" in call
        if state not in ("migrating_out", "migrating_in"):
            pass
        elif sup == "none":
            if state == "migrating_in" and cancel:
                hosts[i] = ("cancelled", "none")
        elif state == "migrating_out":
            hosts[i] = ("started", "running") if cancel else ("done", "none")
        elif cancel:
            hosts[i] = ("cancelled", "none")
        elif _blocked(world[0], i):
            if background and pending < 0:
                pending = i
        else:
            hosts[i] = ("started", "running")
        pending = _after_release(hosts, pending)
    elif call == "shutdown":
        if state in ("started", "migrating_out", "migrating_in", "done", "cancelled"):
            hosts[i] = ("stopped", "none")
            pending = _after_release(hosts, pending)
    elif call == "free":
        if state != "freed":
            hosts[i] = ("freed", sup)
    elif call.startswith("kill -9"):
        hosts[i] = (state, "none")
        pending = _after_release(hosts, pending)
    elif call == "restart daemon":
        hosts[i] = ("-", sup) if sup == "none" else (STATE_OF[sup], sup)
    return tuple(hosts), cookie, pending


def explore() -> tuple[set[World], set[tuple[str, str, str]]]:
    """Every reachable world and every (A, B, "host:call") triple of A's and B's calls, from
    the machine's boot (the guest started on A; no manager on B or C)."""
    start: World = ((("started", "running"), ("-", "none"), ("-", "none")), False, -1)
    seen, triples, todo = {start}, set(), deque([start])
    while todo:
        world = todo.popleft()
        a, b = ("/".join(world[0][n]) for n in (0, 1))
        for i, call in calls(world):
            if HOSTS[i] != "C":  # the triple has A's and B's states: their calls only
                triples.add((a, b, f"{HOSTS[i]}:{call}"))
            after = step(world, i, call)
            if after not in seen:
                seen.add(after)
                todo.append(after)
    return seen, triples


if __name__ == "__main__":
    worlds, found = explore()
    pairs = {(a, b) for a, b, _ in found}
    print(f"{len(worlds)} worlds, {len(pairs)} (A, B) state pairs, {len(found)} triples")
