"""Recorded runs for the message sequence charts: real runs on two simulated hosts, through the
project's one harness (:mod:`lockfsm.embed.standin`), recorded by :mod:`lockfsm.protocol.trace`.

:func:`run_scenes` drives two hosts through every scene the charts show: a start, a hot-plug, a
migration cancelled, a migration completed target first (the target's call waits for the
source's) and one completed source first (back the other way), and a lease lost under each
lock-failure policy.  :func:`record` does it on a backend whose hosts the caller made (the
sanlock and etcd runs need their daemons: tools/record_runs.py starts them);
:func:`record_fcntl` makes its own two fcntl hosts.

:func:`normalise` turns the trace into a recording: events in the order they happened (one
monotonic clock for every process), each on its host (``A`` or ``B``) and lane, with nothing
that differs from run to run (no instants, pids, uuids, temporary paths or random ids: lease
names are shortened to the disk's file name, migration ids become ``m1``, ``m2``...), and, after
each event, each host's domain and supervisor states and who holds which lease.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping
from typing import Any

from lockfsm.errors import InvalidArgument
from lockfsm.protocol import rundir, trace

#: The scenes of a recorded run, in order: (name, title).
SCENES = (
    ("start", "the guest starts on host A"),
    ("hot-plug", "a disk is hot-plugged and unplugged"),
    ("cancel", "a migration A to B, cancelled"),
    ("target-first", "a migration A to B, completed: the target's call first (it waits)"),
    ("source-first", "a migration B to A, completed: the source's call first"),
    ("lost-poweroff", "a lease is lost under policy poweroff"),
    ("lost-pause", "a lease is lost under policy pause"),
    ("lost-ignore", "a lease is lost under policy ignore"),
)
#: The charts drawn from a recording: (file name part, title, scenes).
CHARTS = (
    ("start", "start and hot-plug", ("start", "hot-plug")),
    (
        "migration",
        "migration: cancelled, then completed in each order",
        ("cancel", "target-first", "source-first"),
    ),
    (
        "lease-lost",
        "a lease lost, under each lock-failure policy",
        ("lost-poweroff", "lost-pause", "lost-ignore"),
    ),
)
HOSTURI = {"A": "qemu+tcp://host-a/system", "B": "qemu+tcp://host-b/system"}
KINDS = (
    "scene",
    "spawn",
    "seed",
    "seed_reply",
    "control",
    "control_reply",
    "state",
    "service",
    "service_note",
    "lost_report",
)

Lose = Callable[[Any, str], None]  # (guest, why): make the guest's supervisor lose a lease


def run_scenes(a: Any, b: Any, disks: list[str], hotplug: str, lose: Lose) -> None:
    """Drive hosts ``a`` and ``b`` (:class:`lockfsm.embed.standin.Host`) through every scene.
    Raises what the harness raises (LockFSMError, TimeoutError)."""
    from lockfsm import ResourceType
    from lockfsm.embed.standin import complete

    def scene(name: str) -> None:
        trace.emit("scene", name=name, title=dict(SCENES)[name])

    scene("start")
    g = a.start("vm", disks, uuid=str(uuidlib.uuid4()))
    scene("hot-plug")
    g.mgr.acquire_resource(ResourceType.DISK, hotplug)
    g.mgr.release_resource(ResourceType.DISK, hotplug)

    scene("cancel")
    cookie = g.mgr.prepare_migrate(HOSTURI["B"])
    incoming = b.incoming(g, cookie)
    incoming.mgr.complete_migrate_in(cancel=True)
    g.mgr.complete_migrate_in(cancel=True)
    b.stop(incoming)

    scene("target-first")
    incoming = b.incoming(g, g.mgr.prepare_migrate(HOSTURI["B"]))
    complete(g.mgr, incoming.mgr, "target-first", pause=0.3)  # the target waits
    a.stop(g)
    g = incoming

    scene("source-first")
    incoming = a.incoming(g, g.mgr.prepare_migrate(HOSTURI["A"]))
    g.mgr.complete_migrate_in()
    incoming.mgr.complete_migrate_in()
    b.stop(g)
    a.stop(incoming)

    for policy in ("poweroff", "pause", "ignore"):
        scene(f"lost-{policy}")
        g = a.start("vm", disks[:1], uuid=str(uuidlib.uuid4()), policy=policy)
        lose(g, disks[0])
        if policy == "poweroff":
            # The supervisor exits by itself once the guest is dead: let it, so that shutdown
            # finds it gone (not exiting, its socket closed, its record not yet final).
            g.proc.wait(30)
        g.mgr.check()
        a.stop(g)


def report_loss(g: Any, disk: str) -> None:
    """The lock service's report of a lost lease, as sanlock's kill path makes it:
    ``lockfsm-supervisor --lease-lost SOCKET WHY``.  Raises CalledProcessError or
    TimeoutExpired when the report fails."""
    launch = rundir.pointed(g.host.run_dir, g.uuid)
    assert launch is not None
    sock = rundir.socket_path(g.host.run_dir, launch)
    command = [g.mgr.supervisor_path, "--lease-lost", sock, "the lock service revoked the lease"]
    subprocess.run(command, check=True, timeout=30, stdout=subprocess.DEVNULL)


def steal_fcntl(lockspace: str) -> Lose:
    """fcntl's own way of losing a lease: its lease file is replaced by one a rival has locked
    already; the supervisor finds out within its check interval.  The rival is this process
    (its lock goes once the supervisor noticed the loss, so that the next scene can take the
    lease).  The returned function raises TimeoutError when the supervisor does not notice in
    30 s, OSError when the lease file cannot be replaced."""
    rivals: list[int] = []

    def lose(g: Any, disk: str) -> None:
        path = os.path.join(lockspace, hashlib.sha256(disk.encode()).hexdigest())
        fd = os.open(path + ".new", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        rivals.append(fd)
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 1, 0))
        os.rename(path + ".new", path)
        trace.emit(
            "service_note", label=f"disk {disk}", note="lease file replaced; a rival locks it"
        )
        launch = rundir.pointed(g.host.run_dir, g.uuid)
        assert launch is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            record = rundir.read_record(g.host.run_dir, launch)
            if record is not None and record.get("failure"):
                os.close(rivals.pop())  # the rival goes: the next scene may take the lease
                return
            time.sleep(0.05)
        raise TimeoutError(f"the supervisor of {g.name} did not notice the lost lease")

    lose.rivals = rivals  # type: ignore[attr-defined]
    return lose


def record(backend: str, a: Any, b: Any, workdir: str, lose: Lose | None = None) -> dict[str, Any]:
    """Record one run of every scene on hosts ``a`` and ``b`` of ``backend`` (disks are made
    in ``workdir``) and return it normalised.  Raises what the run raises."""
    from lockfsm.embed.standin import make_disks

    disks = make_disks(workdir, "a.img", "b.img", "c.img")
    path = os.path.join(workdir, "trace.jsonl")
    trace.start(path)
    try:
        run_scenes(a, b, disks[:2], disks[2], lose or report_loss)
    finally:
        trace.stop()
    with open(path) as f:
        events = [json.loads(line) for line in f]
    return normalise(events, backend, {a.run_dir: "A", b.run_dir: "B"})


def record_fcntl() -> dict[str, Any]:
    """One recorded run on two fcntl hosts sharing a lockspace.  Raises what the run raises."""
    from lockfsm.embed.standin import Host

    top = tempfile.mkdtemp(prefix="lfrec", dir="/tmp")
    lockspace = os.path.join(top, "ls")
    hosts = [
        Host("fcntl", lockspace, os.path.join(top, n), n, stderr=subprocess.DEVNULL)
        for n in ("a", "b")
    ]
    lose = steal_fcntl(lockspace)
    try:
        return record("fcntl", hosts[0], hosts[1], top, lose)
    finally:
        for h in hosts:
            h.cleanup()
        for fd in lose.rivals:  # type: ignore[attr-defined]
            os.close(fd)
        shutil.rmtree(top, ignore_errors=True)


# -- from a trace to a recording -------------------------------------------------------------------

_OWN = re.compile(r"the own lease of guest .*")


def short(label: str) -> str:
    """A lease or resource name as the charts show it: a disk's file name, ``own`` for the
    guest's own lease.  Raises nothing."""
    if _OWN.fullmatch(label):
        return "own"
    return os.path.basename(label.split(" ", 1)[-1]) or label


def _fill(template: str, leases: list[Mapping[str, Any]]) -> str:
    """A backend's TRACE text for an operation on ``leases`` (one, or a group of the same
    mode): each lease's version, in the order of ``leases``, where they differ."""
    exclusive = leases[0]["mode"] == "exclusive"
    versions = [str(le.get("version")) for le in leases]
    return template.format(
        lock="wr" if exclusive else "rd",
        mode=leases[0]["mode"],
        version=versions[0] if len(set(versions)) == 1 else "/".join(versions),
        kind="x" if exclusive else "s",
    )


def _host(event: Mapping[str, Any], hosts: Mapping[str, str]) -> str | None:
    run_dir = event.get("run_dir")
    if run_dir is None and "socket" in event:
        run_dir = os.path.dirname(event["socket"])
    return hosts.get(str(run_dir)) if run_dir is not None else None


def normalise(
    events: list[dict[str, Any]], backend: str, hosts: Mapping[str, str]
) -> dict[str, Any]:
    """The recording of a trace (events as :mod:`lockfsm.protocol.trace` wrote them) on two
    hosts (``hosts``: run_dir -> ``A`` / ``B``).  Raises InvalidArgument for an event on neither
    host."""
    timed: list[tuple[int, int, dict[str, Any]]] = []
    for n, e in enumerate(events):
        if e["kind"] == "control":
            timed.append((e["sent"], n, {**e, "kind": "control"}))
            timed.append((e["t"], n, {**e, "kind": "control_reply"}))
        else:
            timed.append((e["t"], n, e))
    timed.sort(key=lambda x: (x[0], x[1]))
    ids: dict[str, str] = {}

    def mid(text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            return ids.setdefault(m.group(1), f"m{len(ids) + 1}")

        return re.sub(r"(?<![0-9a-f])([0-9a-f]{16})(?![0-9a-f])", sub, text)

    out: list[dict[str, Any]] = []
    for _, _, e in timed:
        kind = e["kind"]
        host = _host(e, hosts)
        if host is None and kind not in ("scene", "service_note"):
            raise InvalidArgument(f"trace event {kind} of run dir {e.get('run_dir')} is on no host")
        ev: dict[str, Any] = {"kind": kind}
        if host is not None:
            ev["host"] = host
        if kind == "scene":
            ev.update(name=e["name"], title=e["title"])
        elif kind == "spawn":
            ev["guest"] = e["guest"]
        elif kind == "seed":
            carries = mid(str(e["carries"]))
            if carries.startswith("uuid"):
                carries = "uuid"
            elif carries.startswith("/"):
                carries = os.path.basename(carries)
            ev.update(call=e["call"], carries=carries)
        elif kind == "seed_reply":
            ev.update(call=e["call"], outcome=mid(str(e["outcome"])))
        elif kind in ("control", "control_reply"):
            ev["op"] = e["op"]
            if kind == "control":
                carries = mid(str(e["carries"]))
                ev["carries"] = os.path.basename(carries) if carries.startswith("/") else carries
            else:
                ev["outcome"] = e["outcome"]
        elif kind == "state":
            ev.update(machine=e["machine"], event=e["event"], source=e["source"], dest=e["dest"])
        elif kind == "service":
            leases = [short(le["label"]) for le in e["leases"]]
            ev.update(
                op=e["op"],
                leases=leases,
                modes=[le["mode"] for le in e["leases"]],
                does=_fill(e["does"], e["leases"]) if e["leases"] else e["does"],
                outcome=e["outcome"],
            )
        elif kind == "service_note":
            ev.update(lease=short(e["label"]), note=e["note"])
        elif kind == "lost_report":
            ev["reason"] = e["reason"]
        out.append(ev)
    return {"backend": backend, "events": _fold(out)}


def _fold(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Repeated attempts (a take-over tried again while the source still holds) drawn once,
    with how many times: the count varies from run to run, so it is kept as "repeated"."""
    folded: list[dict[str, Any]] = []
    for ev in events:
        if folded and ev == {k: v for k, v in folded[-1].items() if k != "repeated"}:
            folded[-1]["repeated"] = True
            continue
        folded.append(dict(ev))
    return folded


# -- what each step shows ---------------------------------------------------------------------

#: A lock-service operation's effect on the lease table: what the host then has (None: nothing).
EFFECTS: dict[str, str | None] = {
    "acquire": "held",
    "reserve": "reserved",
    "take_over": "held",
    "settle": "held",
    "release": None,
    "unreserve": None,
}
#: Backends whose reservation is nothing in the lock service (sanlock: the version check is).
NO_RESERVATION = frozenset(["sanlock"])


def steps(recording: Mapping[str, Any]) -> list[dict[str, Any]]:
    """After each event of ``recording``: each host's domain and supervisor state (None before
    its first move) and who has which lease (``{lease: {host: "held" | "shared" |
    "reserved"}}``).  Raises InvalidArgument for a malformed recording."""
    check(recording)
    states: dict[str, dict[str, str | None]] = {
        h: {"domain": None, "supervisor": None} for h in ("A", "B")
    }
    leases: dict[str, dict[str, str]] = {}
    out = []
    for ev in recording["events"]:
        if ev["kind"] == "state":
            states[ev["host"]][ev["machine"]] = ev["dest"]
        elif ev["kind"] == "service" and ev["outcome"] == "ok":
            effect = EFFECTS.get(ev["op"])
            if ev["op"] == "reserve" and recording["backend"] in NO_RESERVATION:
                effect = None
            for name, mode in zip(ev["leases"], ev["modes"], strict=True):
                who = leases.setdefault(name, {})
                if effect is None:
                    who.pop(ev["host"], None)
                else:
                    who[ev["host"]] = "shared" if effect == "held" and mode == "shared" else effect
        out.append(
            {
                "states": {h: dict(s) for h, s in states.items()},
                "leases": {k: dict(v) for k, v in sorted(leases.items()) if v},
            }
        )
    return out


#: The fields each kind of event must carry (what the charts and the step-through page read).
FIELDS: Mapping[str, tuple[str, ...]] = {
    "scene": ("name", "title"),
    "seed": ("call", "carries"),
    "seed_reply": ("call", "outcome"),
    "spawn": ("guest",),
    "control": ("op", "carries"),
    "control_reply": ("op", "outcome"),
    "state": ("machine", "dest"),
    "service": ("op", "leases", "modes", "does", "outcome"),
    "service_note": ("lease", "note"),
    "lost_report": ("reason",),
}


def check(recording: Any) -> None:
    """Raises InvalidArgument, naming what is wrong, unless ``recording`` is a recording."""
    if not isinstance(recording, dict) or not isinstance(recording.get("events"), list):
        raise InvalidArgument("recording must be a JSON object with a list of events")
    if not isinstance(recording.get("backend"), str):
        raise InvalidArgument(f"recording backend {recording.get('backend')!r} is not a name")
    for n, ev in enumerate(recording["events"]):
        if not isinstance(ev, dict) or ev.get("kind") not in KINDS:
            raise InvalidArgument(f"recording event {n} is not an event: {str(ev)[:80]}")
        if ev["kind"] not in ("scene", "service_note") and ev.get("host") not in ("A", "B"):
            raise InvalidArgument(f"recording event {n} has host {ev.get('host')!r}, not A or B")
        missing = [f for f in FIELDS[ev["kind"]] if f not in ev]
        if missing:
            raise InvalidArgument(
                f"recording event {n} ({ev['kind']}) lacks {', '.join(missing)}: {str(ev)[:80]}"
            )
        if ev["kind"] == "state" and ev.get("machine") not in ("domain", "supervisor"):
            raise InvalidArgument(f"recording event {n} has machine {ev.get('machine')!r}")
        if ev["kind"] == "service" and (
            not isinstance(ev.get("leases"), list)
            or not isinstance(ev.get("modes"), list)
            or len(ev["leases"]) != len(ev["modes"])
        ):
            raise InvalidArgument(f"recording event {n} has leases and modes that do not pair")
