"""The run directory: where a host's supervisors and daemon meet (light: the supervisor imports it).

The files beside the socket, in the run directory (one set per launch, named by its launch id, so
that a new launch never talks to an earlier supervisor or its stale socket):

* ``<launch>.sock``: the control socket, mode 0600;
* ``<launch>.json``: the supervisor's record (pid, identity, state, leases, exit status), rewritten
  atomically at each state change and left behind for the daemon when the supervisor exits;
* ``dom-<uuid>``: a symlink to the record of the supervisor that currently runs the guest, for
  ``NewFlags.ATTACH``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from lockfsm.errors import InvalidArgument
from lockfsm.protocol.wire import LAUNCH, MAX_REPLY, decode


def socket_path(run_dir: str, launch: str) -> str:
    return os.path.join(run_dir, f"{launch}.sock")


def record_path(run_dir: str, launch: str) -> str:
    return os.path.join(run_dir, f"{launch}.json")


def pointer_path(run_dir: str, uuid: str) -> str:
    return os.path.join(run_dir, f"dom-{uuid}")


def write_record(run_dir: str, launch: str, record: Mapping[str, Any]) -> None:
    """Replace the record atomically (write a temporary file, then rename)."""
    path = record_path(run_dir, launch)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, separators=(",", ":"))
    os.replace(tmp, path)


def read_record(run_dir: str, launch: str) -> dict[str, Any] | None:
    try:
        with open(record_path(run_dir, launch), "rb") as f:
            data = f.read(MAX_REPLY + 1)
        return decode(data, MAX_REPLY)
    except (FileNotFoundError, InvalidArgument):
        return None


def point(run_dir: str, uuid: str, launch: str) -> None:
    """Make ``dom-<uuid>`` name this launch, atomically."""
    link = pointer_path(run_dir, uuid)
    tmp = f"{link}.{launch}.tmp"
    os.symlink(f"{launch}.json", tmp)
    os.replace(tmp, link)


def pointed(run_dir: str, uuid: str) -> str | None:
    """The launch ``dom-<uuid>`` names, if any."""
    try:
        target = os.readlink(pointer_path(run_dir, uuid))
    except OSError:
        return None
    launch = target.removesuffix(".json")
    return launch if LAUNCH.fullmatch(launch) else None


def supervisor_alive(record: Mapping[str, Any], launch: str) -> bool:
    """Whether the supervisor of ``record`` still runs: its pid exists and runs this launch."""
    try:
        with open(f"/proc/{int(record['pid'])}/cmdline", "rb") as f:
            return launch.encode() in f.read()
    except (OSError, KeyError, ValueError, TypeError):
        return False


def forget(run_dir: str, launch: str, uuid: str | None) -> None:
    """Remove a finished launch's record (and the pointer, if it still names this launch)."""
    if uuid is not None and pointed(run_dir, uuid) == launch:
        try:
            os.unlink(pointer_path(run_dir, uuid))
        except FileNotFoundError:
            pass
    for path in (record_path(run_dir, launch), socket_path(run_dir, launch)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
