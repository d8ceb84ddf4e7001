"""Simulated hosts on real lock services for the fault matrix (tests/test_faults.py) and the soak
(tests/test_soak.py), with readers of each backend's truth and the invariants as checks that
return violations instead of raising (a row reports every violation it saw).

* An **environment** is one backend's lock service, shared by a session's worlds: fcntl (a
  lockspace directory; the kernel is the lock service), sanlock (one real sanlock daemon per
  simulated host, on one lockspace; a daemon that is killed is a crashed host, so rows that kill
  one use a fresh daemon and host_id), etcd (three real members, one real lease agent per
  simulated host).
* A **world** is what one row (or the soak) runs: simulated hosts, each a daemon process
  (tests/support/fault_daemon.py) with its own run dir, and the guests they started.
* The **truth** is read from the lock service, never from lockfsm: the kernel's lock table and
  each process's open files (fcntl), each host's ``sanlock client status`` and the lease areas
  (sanlock), etcd's key space (etcd).
* A guest **executes** when its process runs ``sleep`` and is not stopped (see
  tests/support/fault_daemon.py: an incoming guest stops itself until its daemon lets it run).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable
from contextlib import suppress
from subprocess import DEVNULL
from typing import Any, NamedTuple

import lockfsm
from lockfsm.embed import standin
from lockfsm.embed.standin import make_disks, short_tmpdir
from lockfsm.fuzz import sanlock_daemons
from lockfsm.fuzz.procs import comm, living, session_of
from lockfsm.protocol import kernel, rundir
from tests.support.fault_daemon import Daemon

GRACE = 1.5  # shutdown_grace: a guest that ignores SIGTERM is killed after this
HANDOFF = 4.0  # handoff_timeout
HOLD = 0.6  # seconds a stopped process stays stopped (a stall shorter than any deadline)
COMMON = {"shutdown_grace": GRACE, "handoff_timeout": HANDOFF}
DOMAIN_LOCKSPACE = "lockfsm-domains"


# -- processes ------------------------------------------------------------------------------------


def executing(pid: int | None) -> bool:
    """The guest runs its code: ``sleep``, not stopped, not dead."""
    return pid is not None and kernel.process_state(pid) in ("R", "S", "D") and comm(pid) == "sleep"


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


def kill_ours(pid: int | None, marker: str) -> None:
    """SIGKILL ``pid`` if its command line still names ``marker`` (a run dir or launch of ours:
    never a process someone else got the pid of)."""
    if pid is not None and launched(pid, marker):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)


def launched(pid: int, marker: str) -> bool:
    """Whether the command line of ``pid`` names ``marker`` (a run dir, a launch)."""
    return marker in "\0".join(kernel.command_line(pid))


def kill_guest(g: GuestRec) -> None:
    """SIGKILL a guest if it still is one of ours: in its supervisor's session."""
    if g.pid and session_of(g.pid) == g.sup:
        with suppress(ProcessLookupError):
            os.kill(g.pid, signal.SIGCONT)
            os.kill(g.pid, signal.SIGKILL)


# -- leases ---------------------------------------------------------------------------------------


def lease_key(backend: str, kind: str, path: str) -> str:
    """The lease key lockfsm names for a disk (canonical path) or a lease, as each backend
    does (computed here, not asked of lockfsm)."""
    text = f"lease:{path}" if kind == "lease" else path
    key = hashlib.sha256(text.encode()).hexdigest()
    return key[:47] if backend == "sanlock" else key


class Holder(NamedTuple):
    """One holder of a lease as the lock service has it: a host name (or ""), the holding
    process (-1 where the service does not say), and the mode: exclusive, shared, gate (fcntl's
    migration reservation), reserved / marker (etcd's reservation and handoff marker), on disk
    (sanlock: owned in the lease area by a host whose daemon cannot be asked), acquiring
    (sanlock: an acquire under way, not granted)."""

    host: str
    pid: int
    mode: str


class Observation(NamedTuple):
    holders: dict[str, set[Holder]]
    running: list[GuestRec]  # executing at both readings of the processes
    supervised: list[GuestRec]  # of those, with their supervisor alive at both readings
    uses: dict[int, tuple[list[str], list[str]]]  # id(guest) -> the disks it used throughout


class GuestRec:
    """A guest the world started (or a migration target's incoming guest)."""

    def __init__(
        self,
        host: SimHost,
        uuid: str,
        name: str,
        sup: int,
        pid: int,
        disks: list[str],
        shared: list[str],
        role: str = "running",
    ) -> None:
        self.host, self.uuid, self.name = host, uuid, name
        self.sup, self.pid = sup, pid
        self.disks, self.shared = list(disks), list(shared)
        self.role = role
        self.launch: str | None = None
        self.version = 0  # bumped at every change of the disks the guest uses

    def add_disk(self, disk: str) -> None:
        """Hot-plug: the device is added once its lease is held."""
        self.version += 1
        self.disks = [*self.disks, disk]

    def remove_disk(self, disk: str) -> None:
        """Hot-unplug: the device is gone before its lease is given back."""
        self.version += 1
        self.disks = [d for d in self.disks if d != disk]

    def executing(self) -> bool:
        """This guest (its pid, in its supervisor's session: not a process that reused the
        pid) runs its code."""
        return executing(self.pid) and session_of(self.pid) == self.sup

    def supervised(self) -> bool:
        """Its supervisor lives (and is this launch's, if known)."""
        if not living(self.sup):
            return False
        return self.launch is None or launched(self.sup, self.launch)

    def leases(self, uses: tuple[list[str], list[str]] | None = None) -> list[tuple[str, str, str]]:
        """(key, mode, what) of every lease the guest's supervisor must hold (while it uses
        ``uses``: its exclusive and shared disks, by default the current ones)."""
        b = self.host.env.backend
        disks, shared = uses if uses is not None else (self.disks, self.shared)
        out = [(lease_key(b, "disk", d), "exclusive", d) for d in disks]
        out += [(lease_key(b, "disk", d), "shared", d) for d in shared]
        dom = f"{DOMAIN_LOCKSPACE}:{self.uuid}"
        out.append((lease_key(b, "lease", dom), "exclusive", f"the domain lease of {self.name}"))
        return out

    def __repr__(self) -> str:
        return f"<guest {self.name} on {self.host.name}: supervisor {self.sup}, pid {self.pid}>"


# -- environments ---------------------------------------------------------------------------------


class FcntlEnv:
    """fcntl: one lockspace directory; the kernel is the lock service (nothing to fault)."""

    backend = "fcntl"
    lock_service = None

    def __init__(self) -> None:
        self.lockspace = short_tmpdir("lfl")

    def slot(self, index: int, fresh: bool = False) -> Any:
        return None

    def host_config(self, slot: Any, run_dir: str) -> dict[str, Any]:
        return {"run_dir": run_dir, "lockspace_dir": self.lockspace, **COMMON}

    def holders(self, keys: Iterable[str], world: World) -> dict[str, set[Holder]]:
        """The locks on the lease files from one consistent reading of /proc/locks (every lock,
        whoever holds it: one line per open file description), each attributed to the world's
        processes that claim it in /proc/<pid>/fdinfo both before and after that reading (a
        lock the supervisor and its guest share is the supervisor's).  Each process's fdinfo is
        read on its own: a handoff between two processes' readings would show both holders,
        so only a claim made all the while counts.  A lock no process claims all the while is
        a holder of pid -1 (-2, ... for more than one)."""
        inode_key: dict[int, str] = {}
        for key in keys:
            with suppress(FileNotFoundError):
                inode_key[os.stat(os.path.join(self.lockspace, key)).st_ino] = key
        before = self._claims(inode_key, world)
        locks = kernel.locks_on(inode_key)
        after = self._claims(inode_key, world)
        present: dict[tuple[str, int, str], int] = {}
        for lock in locks:
            for byte in lock.bytes:
                held = (inode_key[lock.inode], byte, lock.kind)
                present[held] = present.get(held, 0) + 1
        found: dict[str, set[Holder]] = {}
        for (key, byte, kind), count in present.items():
            mode = "gate" if byte == 1 else ("exclusive" if kind == "WRITE" else "shared")
            if byte > 1:
                mode = f"byte {byte}"
            claimed = before.get((key, byte, kind), set()) & after.get((key, byte, kind), set())
            pids = sorted(claimed) + [-n for n in range(1, count - len(claimed) + 1)]
            found.setdefault(key, set()).update(Holder("", pid, mode) for pid in pids)
        return found

    @staticmethod
    def _claims(inode_key: dict[int, str], world: World) -> dict[tuple[str, int, str], set[int]]:
        """(key, byte, kind) -> the supervisors (or processes) whose open files lock it."""
        claims: dict[tuple[str, int, str], set[int]] = {}
        owner = world.owner_of()
        for pid in world.pids():
            for inode, byte, kind in kernel.fd_locks(pid):
                if inode in inode_key:
                    who = owner.get(pid, pid)
                    claims.setdefault((inode_key[inode], byte, kind), set()).add(who)
        return claims

    def close(self) -> None:
        shutil.rmtree(self.lockspace, ignore_errors=True)


class SanlockEnv:
    """sanlock: one daemon per simulated host (host_ids 1-3 for the session), on one lockspace.
    ``slot(i, fresh=True)`` starts and joins a daemon of its own (a new host_id): a crashed
    host_id cannot join again before it is declared dead."""

    backend = "sanlock"
    lock_service = "the host's sanlock daemon"

    def __init__(self) -> None:
        self.cluster = sanlock_daemons.new_cluster(3)
        self.base, self.daemons = self.cluster.base, self.cluster.daemons
        self.extra: list[Any] = []
        self.next_id = 10
        self.stopped: set[int] = set()  # host_ids whose daemon is SIGSTOPped
        from lockfsm.backends.sanlock import _binding

        # The binding talks to the daemon of the SANLOCK_RUN_DIR of its first call, for good;
        # the variable is put back after that call, so that no later test of the session finds
        # it set (lockfsm's status and holders read it as this host's daemon's).
        before = os.environ.get("SANLOCK_RUN_DIR")
        os.environ["SANLOCK_RUN_DIR"] = self.daemons[2].run_dir
        try:
            self.binding = _binding(os.path.join(self.base, "py"))
            self.binding.get_lockspaces()
        finally:
            if before is None:
                del os.environ["SANLOCK_RUN_DIR"]
            else:
                os.environ["SANLOCK_RUN_DIR"] = before

    def slot(self, index: int, fresh: bool = False) -> Any:
        if not fresh:
            return self.daemons[index]
        (d,) = sanlock_daemons.start_daemons(self.base, self.next_id, 1)
        self.next_id += 1
        self.extra.append(d)
        sanlock_daemons.join_all(self.cluster, [d])
        return d

    def host_config(self, slot: Any, run_dir: str) -> dict[str, Any]:
        return {"run_dir": run_dir, **self.cluster.config(slot), **COMMON}

    def holders(self, keys: Iterable[str], world: World) -> dict[str, set[Holder]]:
        """Who holds what through all of two readings of every host's daemon in turn: each
        daemon is asked on its own (no reading spans the hosts at one instant), so a holder
        counts only if it is in both (a handoff between two hosts' readings would otherwise
        show both holders).  A holder that is there throughout held all the while."""
        keys = set(keys)
        first = self._holders_once(keys, world)
        second = self._holders_once(keys, world)
        return {
            k: first[k] & second[k] for k in first.keys() & second.keys() if first[k] & second[k]
        }

    def _holders_once(self, keys: set[str], world: World) -> dict[str, set[Holder]]:
        """Each host's daemon's ``client status`` (holding pid, mode); for a host whose daemon
        is dead or stopped, the owners its lease areas name (read through a live daemon)."""
        found: dict[str, set[Holder]] = {}
        slots = {h.slot.host_id: h.slot for h in world.hosts}
        for host_id, d in sorted(slots.items()):
            if d.proc.poll() is not None or host_id in self.stopped:
                for key in keys:
                    for owner in self._owners(key):
                        if owner == host_id:
                            found.setdefault(key, set()).add(Holder(d.name, -1, "on disk"))
                continue
            try:
                status = d.client("status", timeout=5)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"sanlock daemon {d.name} does not answer status") from None
            for line in status.splitlines():
                parts = line.split()
                if len(parts) < 4 or parts[0] != "r":
                    continue
                fields = parts[1].split(":")
                if fields[0] != "lockfsm" or fields[1] not in keys:
                    continue
                mode = "shared" if fields[-1] == "SH" else "exclusive"
                if parts[4:5] == ["ADD"]:  # an acquire under way (a take-over's attempt)
                    mode = "acquiring"
                found.setdefault(fields[1], set()).add(Holder(d.name, int(parts[3]), mode))
        return found

    def _owners(self, key: str) -> list[int]:
        path = os.path.join(self.cluster.lease_dir, key)
        if not os.path.exists(path):
            return []
        owners = self.binding.read_resource_owners(b"lockfsm", key.encode(), [(path, 0)])
        return [int(o["host_id"]) for o in owners]

    def close(self) -> None:
        for d in [*self.daemons, *self.extra]:
            with suppress(ProcessLookupError):
                os.kill(d.proc.pid, signal.SIGCONT)
        sanlock_daemons.close(self.cluster, *self.extra)


class EtcdEnv:
    """etcd: three members; one lease agent per simulated host (A, B, C), all on one key
    prefix (each world's disks and guests are its own, so are their keys).  TTL 5 s: an
    election (0.5-1 s here) is ridden out."""

    backend = "etcd"
    lock_service = "the etcd member the host's agent uses"
    TTL = 5

    def __init__(self) -> None:
        from tests.support.etcd_cluster import Cluster, Site

        self.cluster = Cluster(3)
        self.prefix = self.cluster.fresh_prefix()
        self.sites: list[Site] = []
        try:
            for name in ("hostA", "hostB", "hostC"):
                self.sites.append(Site(self.cluster, name, self.prefix, self.TTL))
        except BaseException:
            self.close()
            raise
        self.agents = [site.agent for site in self.sites]
        self.client = self.cluster.client()

    def slot(self, index: int, fresh: bool = False) -> Any:
        return self.agents[index]

    def host_config(self, slot: Any, run_dir: str) -> dict[str, Any]:
        settings = {k: v for k, v in slot.config.items() if k != "run_dir"}
        return {"run_dir": run_dir, **settings, **COMMON}

    def member_of(self, host: SimHost) -> Any:
        """The member the host's agent talks to now."""
        endpoint = host.slot.status()["endpoint"]
        for m in self.cluster.members:
            if m.endpoint == endpoint or endpoint.endswith(f":{m.client}"):
                return m
        raise AssertionError(f"the agent uses {endpoint}, no member of the cluster")

    def revive(self) -> None:
        """Every member and agent running again (after a row's fault)."""
        for m in self.cluster.members:
            if m.proc is None or m.proc.poll() is not None:
                m.start(new=False)
            elif m.stopped:
                m.signal(signal.SIGCONT)
        for a in self.agents:
            with suppress(ProcessLookupError):
                a.signal(signal.SIGCONT)
            if a.proc is None or a.proc.poll() is not None:
                a.start()
        self.cluster.wait_healthy()

    def holders(self, keys: Iterable[str], world: World) -> dict[str, set[Holder]]:
        from tests.support.etcd_cluster import keys_under

        keys = set(keys)
        found: dict[str, set[Holder]] = {}
        for key, kind, value in keys_under(self.client, self.prefix):
            if key not in keys:
                continue
            if kind == "x" and "handed_off_to" in value:
                to = value["handed_off_to"]
                holder = Holder(str(to.get("host", "")), int(to.get("pid", -1)), "marker")
            else:
                mode = {"x": "exclusive", "s": "shared", "r": "reserved"}[kind]
                holder = Holder(str(value.get("host", "")), int(value.get("pid", -1)), mode)
            found.setdefault(key, set()).add(holder)
        return found

    def close(self) -> None:
        with suppress(Exception):
            self.client.close()
        for site in self.sites:
            site.close()
        self.cluster.stop()


Env = FcntlEnv | SanlockEnv | EtcdEnv


def make_env(backend: str) -> Env:
    return {"fcntl": FcntlEnv, "sanlock": SanlockEnv, "etcd": EtcdEnv}[backend]()


# -- hosts and worlds -----------------------------------------------------------------------------


class SimHost:
    """A simulated host: a run dir, a slot of the lock service, and a daemon process."""

    def __init__(
        self,
        env: Env,
        name: str,
        slot: Any,
        daemon_env: dict[str, str] | None = None,
        daemon: bool = True,
    ) -> None:
        self.env, self.name, self.slot = env, name, slot
        self.run_dir = short_tmpdir("lfr")
        self.config = env.host_config(slot, self.run_dir)
        self.daemon_env = daemon_env
        self.daemons: list[Daemon] = []
        if daemon:
            self.new_daemon()

    @property
    def lock_name(self) -> str:
        return str(getattr(self.slot, "name", self.name))

    def new_daemon(self) -> Daemon:
        """A daemon (re)started: a new process on the host's run dir (its managers are new)."""
        self.daemon = Daemon(self.env.backend, self.config, env=self.daemon_env)
        self.daemons.append(self.daemon)
        return self.daemon

    def close(self) -> None:
        for d in self.daemons:
            with suppress(Exception):
                d.kill()
        shutil.rmtree(self.run_dir, ignore_errors=True)


class World:
    """The hosts and guests of one row (or of the soak), and the invariants over them."""

    def __init__(self, env: Env, daemon_env: dict[str, str] | None = None) -> None:
        self.env = env
        self.daemon_env = daemon_env
        self.hosts: list[SimHost] = []
        self.guests: list[GuestRec] = []
        self.workdir = short_tmpdir("lfw")
        self.rival: standin.Host | None = None  # host C's side run from this process

    def host(self, name: str, slot: Any, daemon: bool = True) -> SimHost:
        h = SimHost(self.env, name, slot, self.daemon_env, daemon)
        self.hosts.append(h)
        return h

    def disks(self, *names: str) -> list[str]:
        return make_disks(self.workdir, *names)

    def start(
        self,
        host: SimHost,
        name: str,
        disks: list[str],
        shared: list[str] = (),  # type: ignore[assignment]
        guest: str = "plain",
        uuid: str | None = None,
        policy: str | None = None,
    ) -> GuestRec:
        uuid = uuid or str(uuidlib.uuid4())
        info = host.daemon.call(
            "start",
            uuid=uuid,
            name=name,
            disks=list(disks),
            shared=list(shared),
            guest=guest,
            policy=policy,
        )
        g = GuestRec(host, uuid, name, info["supervisor"], info["guest"], disks, list(shared))
        g.launch = info["launch"]
        self.guests.append(g)
        return g

    def incoming(self, host: SimHost, source: GuestRec, cookie: str) -> GuestRec:
        info = host.daemon.call(
            "incoming",
            uuid=source.uuid,
            name=source.name,
            disks=list(source.disks),
            shared=list(source.shared),
            cookie=cookie,
        )
        g = GuestRec(
            host,
            source.uuid,
            source.name,
            info["supervisor"],
            info["guest"],
            source.disks,
            source.shared,
            "incoming",
        )
        g.launch = info["launch"]
        self.guests.append(g)
        return g

    # -- the rival: a third host that tries to take a disk ---------------------------------------

    def rival_start(self, host: SimHost, disk: str) -> GuestRec | None:
        """Start a new guest (a uuid of its own) on ``disk`` from this test process, as
        ``host``'s daemon would; return it if it started (then it is tracked: an executing
        guest), None if it was refused with LeaseConflict."""
        if self.rival is None:  # host C's run dir; fcntl's lockspace, or none to make
            config = dict(host.config)
            lockspace = config.pop("lockspace_dir", None) or host.run_dir
            self.rival = standin.Host(self.env.backend, lockspace, stderr=DEVNULL, **config)
        uuid = str(uuidlib.uuid4())
        mgr = self.rival.manager("rival", uuid, [disk], id=99)
        proc = self.rival.launch(mgr)
        try:
            pid = mgr.get_child(timeout=15)
        except lockfsm.LeaseConflict:
            proc.wait(15)
            return None
        g = GuestRec(host, uuid, "rival", proc.pid, pid, [disk], [])
        g.role = "rival"
        g.launch = mgr._launch
        self.guests.append(g)
        g.mgr = mgr  # type: ignore[attr-defined]
        return g

    # -- truth -----------------------------------------------------------------------------------

    def pids(self) -> set[int]:
        return {p for g in self.guests for p in (g.sup, g.pid) if p}

    def owner_of(self) -> dict[int, int]:
        """guest pid -> its supervisor's pid (a lock they share is the supervisor's)."""
        return {g.pid: g.sup for g in self.guests if g.pid}

    def keys(self) -> set[str]:
        return {k for g in self.guests for k, _, _ in g.leases()}

    def holders(self, keys: Iterable[str] | None = None) -> dict[str, set[Holder]]:
        return self.env.holders(self.keys() if keys is None else keys, self)

    def snapshot(self) -> dict[str, list[Holder]]:
        """Who holds what, in a form two readings compare by (S4, S5)."""
        held = {k: sorted(h for h in v if h.mode != "acquiring") for k, v in self.holders().items()}
        return {k: v for k, v in sorted(held.items()) if v}

    # -- the invariants --------------------------------------------------------------------------

    def observe(self, keys: Iterable[str] | None = None) -> Observation:
        """The lock service's truth, and the guests that executed all the while it was read:
        executing just before and just after (a guest that starts or stops executing while the
        truth is read is left out; one that executes at both readings executed in between)."""
        guests = list(self.guests)
        versions = {id(g): g.version for g in guests}
        first = {id(g) for g in guests if g.executing()}
        sup = {id(g) for g in guests if id(g) in first and g.supervised()}
        holders = self.holders(keys)
        running = [g for g in guests if id(g) in first and g.executing()]
        supervised = [g for g in running if id(g) in sup and g.supervised()]
        # The disks each guest used all the while (a guest whose disks changed meanwhile is
        # left out: a hot-plugged disk's lease may not have been read, an unplugged one's may
        # have been given back before the reading).
        uses = {}
        for g in guests:
            lists = (g.disks, g.shared)  # replaced, never changed in place, on a change
            if g.version == versions[id(g)]:  # bumped before the lists change
                uses[id(g)] = lists
        return Observation(holders, running, supervised, uses)

    def check(
        self,
        where: str,
        seen: Observation | None = None,
        exempt: Iterable[GuestRec] = (),
        dead_supervisor: bool = True,
    ) -> list[str]:
        """S1 and S2 over every guest of the world, from one observation.  ``exempt``: guests
        whose lock service was documented to be unable to vouch for them (a crashed sanlock
        host: its leases are on disk, owned by it).  ``dead_supervisor``: report a guest that
        executes with its supervisor dead (off where the caller allows it a moment to die)."""
        holders, running, supervised, uses = seen if seen is not None else self.observe()
        out = []
        for key, hs in holders.items():
            excl = {(h.host, h.pid) for h in hs if h.mode == "exclusive"}
            shared = {(h.host, h.pid) for h in hs if h.mode == "shared"}
            if len(excl) > 1 or (excl and shared - excl):
                out.append(f"S1 {where}: the lock service grants {key[:12]} to {sorted(hs)}")
        users: dict[str, list[tuple[GuestRec, bool]]] = {}
        for g in running:
            if id(g) not in uses:
                continue
            disks, shared = uses[id(g)]
            for d in disks:
                users.setdefault(d, []).append((g, True))
            for d in shared:
                users.setdefault(d, []).append((g, False))
        for disk, using in users.items():
            if len(using) > 1 and any(excl for _, excl in using):
                out.append(
                    f"S1 {where}: {os.path.basename(disk)} is written by executing guests "
                    f"{[g for g, _ in using]}"
                )
        exempt_ids = {id(g) for g in exempt}
        if dead_supervisor:
            for g in running:
                if g not in supervised:
                    out.append(f"S2 {where}: {g!r} executes but its supervisor is dead")
        for g in supervised:
            if id(g) not in uses:
                continue
            for key, mode, what in g.leases(uses[id(g)]):
                hs = holders.get(key, set())
                mine = any(h.pid == g.sup and h.mode == mode for h in hs)
                on_disk = any(h.mode == "on disk" and h.host == g.host.lock_name for h in hs)
                if not mine and not (on_disk and id(g) in exempt_ids):
                    out.append(
                        f"S2 {where}: {g!r} executes without its {mode} lease on {what} "
                        f"(holders: {sorted(hs)})"
                    )
        return out

    def check_migration(
        self,
        where: str,
        source: GuestRec,
        target: GuestRec | None,
        phase: str,
        holders: dict[str, set[Holder]] | None = None,
    ) -> list[str]:
        """S3 and L1.  ``phase``: ``before`` (the source has not completed: it holds every lease
        and the target none, the target does not execute), ``cancelled`` (the same, and the
        target is gone), ``done`` (L1: the target holds every lease, the source none and its
        guest is dead)."""
        holders = self.holders() if holders is None else holders
        out = []
        owner, other = (target, source) if phase == "done" else (source, target)
        law = "L1" if phase == "done" else "S3"
        if owner is not None:
            for key, mode, what in owner.leases():
                hs = holders.get(key, set())
                if not any(h.pid == owner.sup and h.mode == mode for h in hs):
                    side = "target" if owner is target else "source"
                    out.append(
                        f"{law} {where}: the {side} does not hold its {mode} lease on {what} "
                        f"(holders: {sorted(hs)})"
                    )
        if other is not None:
            side = "source" if other is source else "target"
            for key, _, what in other.leases():
                theirs = [
                    h
                    for h in holders.get(key, set())
                    if h.pid == other.sup and h.mode in ("exclusive", "shared")
                ]
                if theirs:
                    out.append(f"{law} {where}: the {side} holds {what} too: {theirs}")
            if phase in ("done", "cancelled") and living(other.pid):
                out.append(f"{law} {where}: the {side}'s guest {other.pid} still exists")
            if phase == "before" and executing(other.pid):
                out.append(f"S3 {where}: the target's guest executes before the handoff")
        return out

    # -- the end ---------------------------------------------------------------------------------

    def close(self) -> None:
        for g in self.guests:
            kill_ours(g.sup, g.host.run_dir)
            kill_guest(g)
        for h in self.hosts:  # supervisors no guest record knows of (a dead daemon's launch)
            for name in os.listdir(h.run_dir) if os.path.isdir(h.run_dir) else ():
                if name.endswith(".json"):
                    record = rundir.read_record(h.run_dir, name[: -len(".json")])
                    if record and rundir.supervisor_alive(record, str(record.get("launch"))):
                        kill_ours(int(record["pid"]), h.run_dir)
        if self.rival is not None:
            self.rival.cleanup()
        for h in self.hosts:
            h.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
