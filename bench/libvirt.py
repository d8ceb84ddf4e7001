"""Item 9 (issue 18): lockfsm side by side with libvirt, in the same run, on the same TCG guest
(32 MiB, no OS: its firmware idles) and the same qcow2 disks.

Three real libvirtds (tests/support/libvirt_fixture.py, each in its own private mount namespace):
no lock manager, ``lockd`` (virtlockd) and ``sanlock`` (the ``libvirt-sanlock`` plugin and its
sanlock daemon, host_id 1, io_timeout 1); three lockfsm hosts (``lockfsm.embed.host.Host``, real
QEMUs under ``lockfsm-supervisor``): ``nop``, ``fcntl`` and ``sanlock`` (``libvirt_disk_leases``
on the sanlock libvirtd's ``disk_lease_dir``, a sanlock daemon of its own, host_id 2).  Each round
runs, on each of the six, one cycle: start to running (``virsh create`` / ``Host.start``),
hot-plug of a second disk (``virsh attach-disk --live`` / ``Host.hotplug``) and stop (``virsh
destroy`` / ``Host.shutdown``); the six run in turn, their order rotated each round.  Each row's
baseline is the same side without a lock manager (libvirt: ``lock_manager`` unset; lockfsm:
``nop``): what the lock manager adds is the lease cost users compare.  Medians.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

from bench import Context
from bench.measure import median, spread
from bench.report import Row, collect, unavailable

OPS = ("start", "hotplug", "stop")
WHAT = {
    "start": "guest start to running",
    "hotplug": "hot-plug of a disk",
    "stop": "guest stop (leases released)",
}
PAIRS = (("lockd", "fcntl"), ("sanlock", "sanlock"))
SCSI = "<controller type='scsi' index='0' model='virtio-scsi'/>"


def _missing() -> str | None:
    from lockfsm.fuzz import sanlock_daemons
    from tests.support.libvirt_fixture import PROGRAMS, SANLOCK_PLUGIN

    for program in (*PROGRAMS, "sanlock"):
        if shutil.which(program) is None and not os.path.exists(program):
            return f"{program} is not installed"
    if not os.path.exists(SANLOCK_PLUGIN):
        return "libvirt-sanlock (libvirt's sanlock lock driver) is not installed"
    why = sanlock_daemons.missing()
    if why:
        return f"{why} is not installed"
    if os.geteuid() != 0:
        return "libvirtd runs here as root only"
    return None


def settle(run_dir: str, disks: list[str]) -> None:
    """Until the sanlock daemon of ``run_dir`` holds none of the disks' leases any more (it
    releases a dead holder's asynchronously), so that the next cycle does not meet them."""
    from lockfsm.backends.sanlock import LIBVIRT_LOCKSPACE, local_owners
    from tests.support.libvirt_fixture import sanlock_lease

    keys = {os.path.basename(sanlock_lease("", d)) for d in disks}
    deadline = time.monotonic() + 10
    while keys & set(local_owners(run_dir, LIBVIRT_LOCKSPACE)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"sanlock of {run_dir} still holds a stopped guest's lease")
        time.sleep(0.01)


class LibvirtSide:
    """One libvirtd: a cycle is virsh create, attach-disk, destroy."""

    def __init__(self, manager: str | None) -> None:
        from tests.support.libvirt_fixture import Libvirt

        self.lv = Libvirt(manager)
        self.lv.start()

    def cycle(self, n: int, disk: str, plugged: str) -> dict[str, float]:
        from tests.support.libvirt_fixture import domain_xml

        name = f"b{n}"
        xml = os.path.join(self.lv.images, f"{name}.xml")
        with open(xml, "w") as f:  # SCSI disks, as lockfsm.embed.qemu's (pc has no PCI hot-plug)
            f.write(
                domain_xml(name, disk)
                .replace("<target dev='vda' bus='virtio'/>", "<target dev='sda' bus='scsi'/>")
                .replace("<controller type='usb'", SCSI + "\n    <controller type='usb'")
            )
        t0 = time.perf_counter()
        self.lv.virsh("create", xml)
        t1 = time.perf_counter()
        self.lv.virsh(
            *("attach-disk", name, plugged, "sdb", "--targetbus", "scsi"),
            *("--driver", "qemu", "--subdriver", "qcow2", "--live"),
        )
        t2 = time.perf_counter()
        self.lv.virsh("destroy", name)
        t3 = time.perf_counter()
        return {"start": t1 - t0, "hotplug": t2 - t1, "stop": t3 - t2}

    def settle(self, disks: list[str]) -> None:
        if self.lv.lock_manager == "sanlock":
            settle(self.lv.sanlock_run_dir, disks)

    def close(self) -> None:
        self.lv.stop()


class LockfsmSide:
    """One lockfsm host: a cycle is Host.start, Host.hotplug, Host.shutdown."""

    def __init__(self, top: str, backend: str, config: dict[str, Any]) -> None:
        from lockfsm.embed.host import Host

        self.host = Host(backend, os.path.join(top, backend), backend, config)
        self.sanlock_run_dir = config.get("sanlock_run_dir")

    def cycle(self, n: int, disk: str, plugged: str) -> dict[str, float]:
        from lockfsm.embed.qemu import Disk, Guest

        name = f"b{n}"
        guest = Guest(name=name, uuid=str(uuidlib.uuid4()), id=1, disks=(Disk(disk),))
        t0 = time.perf_counter()
        self.host.start(guest)
        t1 = time.perf_counter()
        self.host.hotplug(name, Disk(plugged))
        t2 = time.perf_counter()
        self.host.shutdown(name)
        t3 = time.perf_counter()
        return {"start": t1 - t0, "hotplug": t2 - t1, "stop": t3 - t2}

    def settle(self, disks: list[str]) -> None:
        if self.sanlock_run_dir:
            settle(self.sanlock_run_dir, disks)

    def close(self) -> None:
        self.host.close()


def side_by_side(ctx: Context) -> list[Row]:
    """lockfsm and libvirt side by side: start, hot-plug, stop; each lease cost over none."""
    why = _missing()
    if why:
        return [
            unavailable(f"9.{op}.{m}", f"{WHAT[op]}: {side} {m}", why)
            for op in OPS
            for pair in PAIRS
            for side, m in zip(("libvirt", "lockfsm"), pair, strict=True)
        ]
    from lockfsm.embed.standin import short_tmpdir
    from lockfsm.fuzz import sanlock_daemons

    top = short_tmpdir("lfbv")
    ctx.dirs.append(top)
    sides: dict[str, LibvirtSide | LockfsmSide] = {}
    daemons: list[Any] = []
    try:
        for manager in (None, "lockd", "sanlock"):
            sides[f"libvirt {manager or 'none'}"] = LibvirtSide(manager)
        lv_sanlock = sides["libvirt sanlock"]
        assert isinstance(lv_sanlock, LibvirtSide)
        daemons = sanlock_daemons.start_daemons(top, 2, 1)
        sides["lockfsm nop"] = LockfsmSide(top, "nop", {})
        sides["lockfsm fcntl"] = LockfsmSide(top, "fcntl", {"lockspace_dir": f"{top}/lockspace"})
        sides["lockfsm sanlock"] = LockfsmSide(
            top,
            "sanlock",
            {
                "lease_dir": lv_sanlock.lv.lease_dir,
                "host_id": daemons[0].host_id,
                "io_timeout": 1,
                "sanlock_run_dir": daemons[0].run_dir,
                "libvirt_disk_leases": True,
            },
        )
        images = os.path.join(top, "img")
        os.mkdir(images)
        disk, plugged = (os.path.join(images, f"{n}.qcow2") for n in ("d0", "d1"))
        for path in (disk, plugged):
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "16M"], check=True)
        times: dict[str, dict[str, list[float]]] = {s: {op: [] for op in OPS} for s in sides}
        names = list(sides)
        rounds = ctx.pick(full=12, quick=3)
        for r in range(rounds + 1):  # round 0 warms up, unrecorded
            order = names[r % len(names) :] + names[: r % len(names)]
            for s in order:
                got = sides[s].cycle(r, disk, plugged)
                sides[s].settle([disk, plugged])
                if r:
                    for op in OPS:
                        times[s][op].append(got[op])
        return _rows(times, rounds)
    finally:
        for side in sides.values():
            side.close()
        sanlock_daemons.stop_all(daemons)


def _rows(times: dict[str, dict[str, list[float]]], rounds: int) -> list[Row]:
    rows = []
    for op in OPS:
        for pair in PAIRS:
            for side, manager in zip(("libvirt", "lockfsm"), pair, strict=True):
                base = "none" if side == "libvirt" else "nop"
                value, baseline = times[f"{side} {manager}"][op], times[f"{side} {base}"][op]
                cost = (median(value) - median(baseline)) * 1e3
                how = {
                    "libvirt": {
                        "start": "virsh create",
                        "hotplug": "virsh attach-disk --live",
                        "stop": "virsh destroy",
                    },
                    "lockfsm": {
                        "start": "lockfsm.embed.host start",
                        "hotplug": "Host.hotplug",
                        "stop": "Host.shutdown",
                    },
                }[side][op]
                rows.append(
                    Row(
                        f"9.{op}.{side}-{manager}",
                        f"{WHAT[op]}: {side} {manager} ({how})",
                        median(value) * 1e3,
                        "ms",
                        median(baseline) * 1e3,
                        f"{side} with no lock manager"
                        + (" (lock_manager unset)" if side == "libvirt" else " (nop)"),
                        note=f"lease cost {cost:+.1f} ms; {rounds} rounds; "
                        + spread(value, 1e3, "ms"),
                        extra={"lease_cost_ms": round(cost, 2)},
                    )
                )
    return rows


def run(ctx: Context) -> list[Row]:
    figures: list[Callable[[Context], list[Row]]] = [side_by_side]
    return collect(ctx, figures)
