"""lockfsm's benchmarks (issue 8): ``python -m bench`` runs them all, prints a table and writes
``bench/results/latest.json``.  See bench/README.md."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

#: The source tree (bench/ sits in it): the working directory of helper processes.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `python bench/run.py` as well as `python -m bench`
    sys.path.insert(0, REPO)

if TYPE_CHECKING:
    from lockfsm.embed.standin import Guest, Host

#: The benchmarks' stand-in guest: a real process that outlives the longest storm.
GUEST = ["sleep", "100000"]


@dataclass
class Context:
    """What every benchmark is given: the mode (``quick`` for development: fewer repetitions,
    smaller storms), options of single groups, and a place for temporary directories, removed
    at the end of each group."""

    quick: bool = False
    spin_hosts: tuple[int, ...] = ()  # models `lockfsm spec check` runs (default: checking.py's)
    etcd_scale: tuple[int, int, int] | None = None  # hosts, guests a host, migrations at a time
    dirs: list[str] = field(default_factory=list)

    def pick(self, full: int, quick: int) -> int:
        """A repetition count for this mode."""
        return quick if self.quick else full

    def tmpdir(self, prefix: str = "lfb") -> str:
        """A fresh short directory under /tmp, removed by :meth:`cleanup`."""
        path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        self.dirs.append(path)
        return path

    def cleanup(self) -> None:
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)
        self.dirs.clear()


# -- simulated hosts: lockfsm.embed.standin's, quiet ---------------------------------------------


def run_dir() -> str:
    """A new run directory on tmpfs (``/dev/shm``), as a host's ``/run/lockfsm`` is: the
    supervisor rewrites its record there at each move, which costs ~0.1 ms on tmpfs and ~0.6 ms
    on this machine's ext4 /tmp.  (Removed by the host's cleanup.)"""
    root = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else "/tmp"
    return tempfile.mkdtemp(prefix="lfbr", dir=root)


def quiet_host(backend: str = "fcntl", lockspace: str | None = None, **config: Any) -> Host:
    """A stand-in host (a run dir on tmpfs and a driver: a daemon) on ``lockspace`` (a new one
    if not given); its supervisors' output goes nowhere, so that hundreds of them hold no pipe
    to this process."""
    from lockfsm.embed.standin import Host

    config.setdefault("run_dir", run_dir())
    return Host(backend, lockspace, stderr=subprocess.DEVNULL, **config)


def disk_files(directory: str, count: int) -> list[str]:
    """``count`` empty disk images in ``directory``: d0.img, d1.img..."""
    from lockfsm.embed.standin import make_disks

    return make_disks(directory, *(f"d{i}.img" for i in range(count)), size=0)


def launched(
    on: Host,
    name: str,
    disks: list[str],
    uuid: str | None = None,
    cookie: str | None = None,
) -> Guest:
    """A guest's manager made on ``on`` and its supervisor run, as a daemon does, without
    waiting for ``get_child`` (a storm runs every supervisor first); with ``cookie``, a
    migration's target."""
    from lockfsm import NewFlags
    from lockfsm.embed.standin import Guest

    uuid = uuid or str(uuidlib.uuid4())
    flags = NewFlags.MIGRATE if cookie is not None else 0
    mgr = on.manager(name, uuid, disks, flags)
    if cookie is not None:
        mgr.set_parameter("migration_cookie", cookie)
    return Guest(on, mgr, on.launch(mgr, GUEST), name, uuid, disks)
