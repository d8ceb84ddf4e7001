"""Item 2: one fcntl lease acquired and released through the backend's holder (what the
supervisor runs), against the raw system calls doing the least that works on the same file:
open, OFD write lock on byte 0, unlock, close.

The holder does more, on purpose: it refuses a file that is not a regular one (fstat), passes
the migration gate (a read lock on byte 1, dropped again) and checks that the file it locked is
still the one at the path (stat + fstat: another lock manager may delete lease files).
"""

from __future__ import annotations

import fcntl
import os
import struct

from bench import Context
from bench.measure import alternate, median, per_call, spread
from bench.report import Row, Target, collect

_FLOCK = "hhqqi"


def _raw(path: str) -> None:
    """The least that takes and gives back an exclusive lease on ``path``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(_FLOCK, fcntl.F_WRLCK, 0, 0, 1, 0))
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(_FLOCK, fcntl.F_UNLCK, 0, 0, 1, 0))
    os.close(fd)


def acquire_release(ctx: Context) -> Row:
    """fcntl lease acquire+release through the backend vs the raw system calls."""
    from lockfsm.supervisor.leases import LeaseMachines

    lockspace = ctx.tmpdir("lfbl")
    # The backend's own cost: its holder, called as a lease machine's actions call it.
    holder = LeaseMachines("fcntl", {"lockspace_dir": lockspace}).holder
    key = "0" * 64  # a lease file name as the daemon names it (a SHA-256 hex)
    lease = {"key": key, "mode": "exclusive"}
    path = os.path.join(lockspace, key)

    def through_backend() -> None:
        holder.acquire(lease, "disk /bench.img")
        holder.release([lease])

    calls = 500
    ours, theirs = alternate(
        per_call(through_backend, calls),
        per_call(lambda: _raw(path), calls),
        rounds=ctx.pick(full=40, quick=8),
    )
    return Row(
        "2.fcntl",
        "fcntl lease acquire+release of one disk, through the backend",
        median(ours) * 1e6,
        "us",
        median(theirs) * 1e6,
        "raw open + OFD lock + unlock + close of the same file",
        Target("ratio", 3),
        note=f"batches of {calls}, {spread(ours, 1e6, 'us')}",
    )


def run(ctx: Context) -> list[Row]:
    return collect(ctx, [acquire_release])
