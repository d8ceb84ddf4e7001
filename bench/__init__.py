"""lockfsm's benchmarks (issue 8): ``python -m bench`` runs them all, prints a table and writes
``bench/results/latest.json``.  See bench/README.md."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field

#: The source tree (bench/ sits in it): the working directory of helper processes.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `python bench/run.py` as well as `python -m bench`
    sys.path.insert(0, REPO)


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
