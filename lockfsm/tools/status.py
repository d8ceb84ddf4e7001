"""Who holds what: ``lockfsm status``.

Two sources, merged:

* this host's supervisors, from their records in the run directory (each checked against the
  kernel: a record whose supervisor is gone is not a holder); they name the resource, the domain,
  the pids and since when;
* the lockspace itself, as the backend's lock service sees it, across hosts: the fcntl lease files
  and the kernel's locks on them (a lock no lockfsm supervisor here holds is another lock
  manager's, libvirt's virtlockd for one, or another host's), sanlock's lease files and leader
  records, etcd's keys.

A lease file only names a SHA-256, so a lease held elsewhere is shown by its key, with what the
lock service says of its holder.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lockfsm.errors import LockFSMError
from lockfsm.protocol import rundir, wire

#: Supervisor states in which every lease is held, and those in which every lease is reserved.
HOLDING = frozenset({"holding", "running", "stopping", "migrating_out", "handing_off"})
RESERVING = frozenset({"reserved", "incoming", "cancelling"})
_KEY = re.compile(r"[0-9a-f]{47,64}")


def supervisors(run_dir: str) -> list[dict[str, Any]]:
    """The records of the supervisors in ``run_dir``, each with ``alive`` set, by name."""
    found = []
    try:
        names = sorted(os.listdir(run_dir))
    except FileNotFoundError:
        return []
    for name in names:
        launch = name.removesuffix(".json")
        if not name.endswith(".json") or not wire.LAUNCH.fullmatch(launch):
            continue
        record = rundir.read_record(run_dir, launch)
        if record is not None:
            record["alive"] = rundir.supervisor_alive(record, launch)
            found.append(record)
    return sorted(found, key=lambda r: (str(r.get("name")), str(r.get("launch"))))


def leases(run_dir: str) -> list[dict[str, Any]]:
    """One row per resource of this host's live supervisors: resource, type, its lease keys,
    mode, held or reserved, holder (domain name and uuid, pids), since."""
    rows = []
    host = socket.gethostname()
    for rec in supervisors(run_dir):
        state = rec.get("state")
        if not rec["alive"] or state not in HOLDING | RESERVING:
            continue
        for res in rec.get("resources", []):
            rows.append(
                {
                    "resource": res["path"],
                    "type": res["type"],
                    "keys": [lease["key"] for lease in res.get("leases", [])],
                    "mode": "shared" if res["flags"] else "exclusive",
                    "held": "held" if state in HOLDING else "reserved",
                    "holder": {
                        "manager": "lockfsm",
                        "host": host,
                        "domain": rec.get("name"),
                        "uuid": rec.get("uuid"),
                        "supervisor_pid": rec.get("pid"),
                        "guest_pid": rec.get("guest_pid"),
                    },
                    "since": res.get("since"),
                }
            )
    return rows


# -- the lockspace, as each lock service sees it --------------------------------------------------


def _proc_locks(inodes: Iterable[int]) -> dict[int, list[tuple[str, str, int, int]]]:
    """inode -> (class, kind, pid, first byte) of each granted lock the kernel lists on it."""
    wanted = set(inodes)
    found: dict[int, list[tuple[str, str, int, int]]] = {}
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 8 or parts[1] == "->":
                continue
            inode = int(parts[5].rsplit(":", 1)[1])
            if inode in wanted:
                found.setdefault(inode, []).append(
                    (parts[1], parts[3], int(parts[4]), int(parts[6]))
                )
    return found


def _ofd_holders(inodes: set[int]) -> dict[tuple[int, int], set[int]]:
    """(inode, first byte) -> pids of the processes whose open files hold an OFD lock there
    (/proc/*/fdinfo: the kernel lists OFD locks without a pid)."""
    found: dict[tuple[int, int], set[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            continue
        for fd in fds:
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    for line in f:
                        if line.startswith("lock:") and "OFDLCK" in line:
                            parts = line.split()
                            inode = int(parts[6].rsplit(":", 1)[1])
                            if inode in inodes:
                                where = (inode, int(parts[7]))
                                found.setdefault(where, set()).add(int(pid))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _ofd_holder(pids: list[int]) -> dict[str, Any]:
    """Who the processes holding an OFD lock are: a lockfsm supervisor (of this host, perhaps of
    another run dir: its command line names the domain) or another program."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")]
        except OSError:
            continue
        if any(a.endswith(("lockfsm-supervisor", "lockfsm.supervisor")) for a in argv):
            opts = argv[: argv.index("--")] if "--" in argv else argv
            named = {
                opts[i][2:]: opts[i + 1]
                for i in range(len(opts) - 1)
                if opts[i] in ("--name", "--uuid")
            }
            return {
                "manager": "lockfsm",
                "domain": named.get("name"),
                "uuid": named.get("uuid"),
                "supervisor_pid": pid,
                "pids": pids,
            }
    return {"manager": "lockfsm or another OFD lock user", "pids": pids}


def fcntl_holders(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every locked lease file of the fcntl lockspace: key, kind (exclusive, shared or
    reserved) and, for each lock, who holds it as far as this host's kernel tells (a lock over
    NFS from another host is not listed by this kernel: shown as unknown)."""
    lockspace = config["lockspace_dir"]
    files = {}
    for name in sorted(os.listdir(lockspace)):
        if _KEY.fullmatch(name):
            try:
                files[os.stat(os.path.join(lockspace, name), follow_symlinks=False).st_ino] = name
            except FileNotFoundError:
                continue
    locks = _proc_locks(files)
    ofd = _ofd_holders(set(locks)) if locks else {}
    rows = []
    for inode, held in sorted(locks.items(), key=lambda x: files[x[0]]):
        for cls, kind, pid, byte in held:
            # byte 1 is lockfsm's migration gate: a reservation
            what = "reserved" if byte == 1 else "exclusive" if kind == "WRITE" else "shared"
            if cls == "POSIX":
                holder: dict[str, Any] = {"manager": "another lock manager", "pid": pid}
            else:
                holder = _ofd_holder(sorted(ofd.get((inode, byte), ())))
            rows.append({"key": files[inode], "kind": what, "holder": holder})
    return rows


def sanlock_holders(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every lease of the sanlock lockspace that a host owns, from its leader record (shared
    holders from the mode blocks, through the binding): key, kind, owner host id and name."""
    from lockfsm.backends import sanlock

    lease_dir = config["lease_dir"]
    # The binding reads through a daemon: this host's, unless this process already chose one
    # (any daemon of the lockspace reads the same records).
    os.environ.setdefault("SANLOCK_RUN_DIR", config["sanlock_run_dir"])
    binding = sanlock._binding(os.path.join(config["run_dir"], ".sanlock-py"))
    space = str(config["lockspace"]).encode()
    rows = []
    for name in sorted(os.listdir(lease_dir)):
        if not _KEY.fullmatch(name):
            continue
        try:
            owners = binding.read_resource_owners(
                space, name.encode(), [(os.path.join(lease_dir, name), 0)]
            )
        except binding.SanlockException:
            continue
        for o in owners:
            host_id = int(o["host_id"])
            rows.append(
                {
                    "key": name,
                    "kind": "held",
                    "holder": {
                        "manager": "sanlock",
                        "host_id": host_id,
                        "host": sanlock.host_name(lease_dir, host_id),
                    },
                }
            )
    return rows


def etcd_holders(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    from lockfsm.backends import etcd

    rows: list[dict[str, Any]] = etcd.EtcdBackend(config).holders()
    return rows


SURVEYS: dict[str, Callable[[Mapping[str, Any]], list[dict[str, Any]]]] = {
    "fcntl": fcntl_holders,
    "sanlock": sanlock_holders,
    "etcd": etcd_holders,
}


def _pids(holder: Mapping[str, Any]) -> set[int]:
    return {int(p) for p in [holder.get("pid"), *holder.get("pids", [])] if p is not None}


def survey(driver: str, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """This host's supervisors' leases (named), merged with the lockspace as the driver's lock
    service sees it: a lease no supervisor here holds is listed by key with its holder.  Raises
    LockFSMError when the lock service cannot be read."""
    rows = leases(config["run_dir"])
    probe = SURVEYS.get(driver)
    if probe is None:
        return rows
    ours: dict[str, set[int]] = {}
    for row in rows:
        h = row["holder"]
        for key in row["keys"]:
            ours.setdefault(key, set()).update({h["supervisor_pid"], h["guest_pid"]})
    for found in probe(config):
        mine = ours.get(found["key"])
        pids = _pids(found["holder"])
        if mine is not None and (not pids or pids & mine):
            continue  # one of this host's supervisors (or its guest): named above
        if found["holder"].get("manager") == "lockfsm or another OFD lock user" and not pids:
            found["holder"]["manager"] = "another host (not visible to this kernel)"
        rows.append(
            {
                "resource": None,
                "type": None,
                "keys": [found["key"]],
                "mode": found["kind"],
                "held": "reserved" if found["kind"] == "reserved" else "held",
                "holder": found["holder"],
                "since": None,
            }
        )
    return rows


def describe(row: Mapping[str, Any]) -> str:
    """One line for a person."""
    h = row["holder"]
    what = row["resource"] or f"lease file {row['keys'][0]}"
    if h.get("manager") == "lockfsm":
        who = f"domain {h.get('domain')} ({h.get('uuid')})"
        who += f" on {h['host']}" if h.get("host") else " on this host (another run dir)"
        who += f", supervisor {h.get('supervisor_pid')}"
        who += f", guest {h['guest_pid']}" if h.get("guest_pid") else ""
    else:
        extra = ", ".join(
            f"{k} {v}" for k, v in h.items() if k != "manager" and v not in (None, [], "")
        )
        who = h.get("manager", "unknown") + (f" ({extra})" if extra else "")
    since = ""
    if row.get("since"):
        import time

        since = "  since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["since"]))
    return f"{what}  {row['mode']}  {row['held']} by {who}{since}"


def main(
    driver: str, conf: Mapping[str, Any] | str | None, run_dir: str | None, as_json: bool
) -> int:
    """``lockfsm status``: print the survey; 2 on a bad configuration."""
    import json

    from lockfsm import backends
    from lockfsm.daemon import config

    try:
        keys = {**config.COMMON_KEYS, **backends.module(driver).BACKEND.config_keys}
        raw = dict(config.load(keys, conf)) if conf is not None else None
        settings = config.load(keys, {**(raw or {}), **({"run_dir": run_dir} if run_dir else {})})
        rows = survey(driver, settings)
    except LockFSMError as e:
        print(f"lockfsm status: {e}")
        return 2
    if as_json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    if not rows:
        print(f"no lease is held in the {driver} lockspace (supervisors of {settings['run_dir']})")
    for row in rows:
        print(describe(row))
    return 0
