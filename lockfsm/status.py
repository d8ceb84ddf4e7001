"""Who holds what: the leases of the guests whose supervisors run on this host.

Read from the supervisors' records in the run directory, each checked against the kernel (a
record whose supervisor is gone is reported as stale, not as a holder).
"""

from __future__ import annotations

import os
from typing import Any

from lockfsm import control

#: Supervisor states in which every lease is held, and those in which every lease is reserved.
HOLDING = frozenset({"holding", "running", "stopping", "migrating_out", "handing_off"})
RESERVING = frozenset({"reserved", "incoming", "cancelling"})


def supervisors(run_dir: str) -> list[dict[str, Any]]:
    """The records of the supervisors in ``run_dir``, each with ``alive`` set, by name."""
    found = []
    try:
        names = sorted(os.listdir(run_dir))
    except FileNotFoundError:
        return []
    for name in names:
        launch = name.removesuffix(".json")
        if not name.endswith(".json") or not control.LAUNCH.fullmatch(launch):
            continue
        record = control.read_record(run_dir, launch)
        if record is not None:
            record["alive"] = control.supervisor_alive(record, launch)
            found.append(record)
    return sorted(found, key=lambda r: (str(r.get("name")), str(r.get("launch"))))


def leases(run_dir: str) -> list[dict[str, Any]]:
    """One row per held resource: resource, mode, domain name and uuid, supervisor pid, since."""
    rows = []
    for rec in supervisors(run_dir):
        state = rec.get("state")
        if not rec["alive"] or state not in HOLDING | RESERVING:
            continue
        for res in rec.get("resources", []):
            rows.append(
                {
                    "resource": res["path"],
                    "type": res["type"],
                    "mode": "shared" if res["flags"] else "exclusive",
                    "held": "held" if state in HOLDING else "reserved",
                    "domain": rec.get("name"),
                    "uuid": rec.get("uuid"),
                    "supervisor_pid": rec.get("pid"),
                    "guest_pid": rec.get("guest_pid"),
                    "since": res.get("since"),
                }
            )
    return rows
