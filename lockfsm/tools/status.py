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
import socket
import sys
from collections.abc import Mapping
from typing import Any

from lockfsm.errors import BackendError, LockFSMError
from lockfsm.protocol import rundir, tables, wire


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
        if not rec["alive"] or state not in tables.SUPERVISOR_HOLDS | tables.SUPERVISOR_RESERVES:
            continue
        for res in rec.get("resources", []):
            rows.append(
                {
                    "resource": res["path"],
                    "type": res["type"],
                    "keys": [lease["key"] for lease in res.get("leases", [])],
                    "mode": "shared" if res["flags"] else "exclusive",
                    "held": "held" if state in tables.SUPERVISOR_HOLDS else "reserved",
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


def _pids(holder: Mapping[str, Any]) -> set[int]:
    return {int(p) for p in [holder.get("pid"), *holder.get("pids", [])] if p is not None}


def survey(driver: str, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """This host's supervisors' leases (named), merged with the lockspace as the driver's lock
    service sees it: a lease no supervisor here holds is listed by key with its holder.  Raises
    LockFSMError when the lock service cannot be read."""
    from lockfsm import backends

    rows = leases(config["run_dir"])
    ours: dict[str, set[int]] = {}
    for row in rows:
        h = row["holder"]
        for key in row["keys"]:
            ours.setdefault(key, set()).update({h["supervisor_pid"], h["guest_pid"]})
    try:
        found_rows = backends.module(driver).holders(config)
    except OSError as e:
        raise BackendError(f"the {driver} lockspace cannot be read: {e}") from None
    for found in found_rows:
        mine = ours.get(found["key"])
        pids = _pids(found["holder"])
        # A holder of another host (a sanlock host_id not ours) is never one of ours, even on a
        # lease one of ours holds too (shared).
        elsewhere = found["holder"].get("host_id", config.get("host_id")) != config.get("host_id")
        if mine is not None and not elsewhere and (not pids or pids <= mine):
            continue  # only this host's supervisors (and guests) hold it: named above
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


def describe_host(host: Mapping[str, Any]) -> str:
    """One line for a person: a host of the lockspace and its liveness."""
    since = ""
    if host.get("since"):
        import time

        since = " since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(host["since"]))
    return f"host {host['name']}  {host['state']}{since}  ({host.get('detail', '')})"


def main(
    driver: str,
    conf: Mapping[str, Any] | str | None,
    run_dir: str | None,
    as_json: bool,
    only_hosts: bool = False,
) -> int:
    """``lockfsm status``: print the survey -- the leases, then the lockspace's hosts with their
    liveness (``--hosts``: the hosts only); 2 on a bad configuration or a lock service that
    cannot be read (said on stderr)."""
    import json

    from lockfsm import backends
    from lockfsm.daemon import config

    try:
        module = backends.module(driver)
        keys = {**config.COMMON_KEYS, **module.BACKEND.config_keys}
        raw = dict(config.load(keys, conf)) if conf is not None else None
        settings = config.load(keys, {**(raw or {}), **({"run_dir": run_dir} if run_dir else {})})
        rows = [] if only_hosts else survey(driver, settings)
        hosts: list[dict[str, Any]] = module.hosts(settings)
    except (LockFSMError, OSError) as e:
        print(f"lockfsm status: {e}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(hosts if only_hosts else rows, indent=2, sort_keys=True))
        return 0
    if not only_hosts:
        if not rows:
            print(
                f"no lease is held in the {driver} lockspace (supervisors of {settings['run_dir']})"
            )
        for row in rows:
            print(describe(row))
    for host in hosts:
        print(describe_host(host))
    return 0
