"""Test helpers around the stand-in hosts (:mod:`lockfsm.embed.standin`): waiting, the lease
keys and files of a guest, who locks what on a lockspace (from :mod:`lockfsm.protocol.kernel`),
a migration pair of given hosts, and hosts made for one test and cleaned up after it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import lockfsm
from lockfsm.embed.standin import Guest, Host, Pair
from lockfsm.fuzz.procs import wait_until as wait_until  # the tests import it from here
from lockfsm.protocol import kernel
from tests.support import ROOT


@contextmanager
def made_hosts(new: Callable[..., Host]) -> Iterator[Callable[..., Host]]:
    """``make(...)``: a host ``new(...)`` made, every one cleaned up (whatever it started
    killed, its run dir removed) at the end."""
    made: list[Host] = []

    def make(*args: Any, **kwargs: Any) -> Host:
        made.append(new(*args, **kwargs))
        return made[-1]

    try:
        yield make
    finally:
        for h in made:
            h.cleanup()


class HostsPair(Pair):
    """A :class:`~lockfsm.embed.standin.Pair` of given hosts (each its own lock service slot:
    a sanlock host_id, an etcd lease agent)."""

    def __init__(self, source: Host, target: Host) -> None:
        self.source, self.target = source, target
        self.lockspace = source.lockspace
        self.guest: Guest | None = None
        self.incoming: Guest | None = None
        self.cookie: str | None = None


def running(g: Guest) -> bool:
    """The guest and its supervisor both alive, the guest executing (not stopped)."""
    assert g.pid is not None
    return (
        g.proc.poll() is None
        and kernel.alive(g.pid)
        and kernel.process_state(g.pid) not in ("T", "t", "Z")
    )


# -- leases ---------------------------------------------------------------------------------------


def key_of(host: Host, disk: str) -> str:
    """The lease key ``host``'s backend names ``disk`` by."""
    return host.driver.backend.leases("disk", disk, os.path.realpath(disk), False)[0]["key"]


def domain_key(host: Host, uuid: str) -> str:
    """The key of the guest's own lease on its uuid (domain_lease)."""
    name = f"lockfsm-domains:{uuid}"
    return host.driver.backend.leases("lease", name, name, False)[0]["key"]


def lease_inode(lockspace: str, key: str) -> int:
    return os.stat(os.path.join(lockspace, key)).st_ino


def leases_of(mgr: lockfsm.LockManager) -> Iterator[tuple[str, str]]:
    """(key, mode) of every lease the manager's supervisor holds: its resources' and the
    guest's own lease on its uuid (domain_lease)."""
    for res, leases in mgr._registry.everything(mgr._params.get("uuid")):
        del res
        for lease in leases:
            yield lease["key"], lease["mode"]


# -- the kernel's locks ---------------------------------------------------------------------------


def locked_inodes(inodes: Iterable[int] | None = None) -> dict[int, list[str]]:
    """inode -> lock kinds ("WRITE"/"READ") of the granted locks the kernel lists (on
    ``inodes`` only, if given), from one consistent reading of /proc/locks."""
    found: dict[int, list[str]] = {}
    for lock in kernel.locks_on(inodes):
        found.setdefault(lock.inode, []).append(lock.kind)
    return found


def lockspace_locks(lockspace: str) -> dict[str, list[str]]:
    """Lease file name -> kinds of the locks the kernel lists on it, for one lockspace only."""
    names = {}
    for name in sorted(os.listdir(lockspace)):
        with suppress(FileNotFoundError):
            names[os.stat(os.path.join(lockspace, name)).st_ino] = name
    found = locked_inodes(names)
    return {name: sorted(found[ino]) for ino, name in sorted(names.items()) if ino in found}


def inodes_locked_by(pid: int) -> set[int]:
    """Inodes on which the open files of process ``pid`` hold a lock."""
    return {inode for inode, _, _ in kernel.fd_locks(pid)}


def copy_tracked(dest: str) -> None:
    """Copy the project's files as git knows them (from the work tree) into ``dest``: what a
    fresh clone has, without any venv or build output."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, tracked.split("\0")):
        src = os.path.join(ROOT, name)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, name))


def lockfsm_status(conf_dir: str, settings: Mapping[str, Any], driver: str | None = None) -> str:
    """What ``lockfsm status`` prints for ``settings`` (written as ``conf_dir/status.toml``),
    run in a process of its own (a process talks to one sanlock daemon only)."""
    conf = os.path.join(conf_dir, "status.toml")
    with open(conf, "w") as f:
        for k, v in settings.items():
            f.write(f"{k} = {str(v).lower() if isinstance(v, bool) else json.dumps(v)}\n")
    command = [sys.executable, "-m", "lockfsm", "status", "--config", conf]
    done = subprocess.run(
        [*command, *(["--driver", driver] if driver else [])],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
