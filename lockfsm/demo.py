"""``lockfsm demo``: one guest's life on the fcntl backend, in a temporary lockspace.

Starts a guest with two disks, shows a second start of one of those disks refused, hot-plugs a
third disk, re-attaches after a simulated daemon restart, and shuts down, printing each step,
each state move, and who holds each lease after every step.  Needs no configuration.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from typing import Any, TextIO

import lockfsm
from lockfsm import NewFlags, ResourceType, status

GUEST = ["sleep", "600"]


class _MoveLines(logging.Handler):
    """Prints each state move of a manager as one readable line."""

    def __init__(self, out: TextIO) -> None:
        super().__init__(logging.INFO)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        r: Any = record
        if getattr(r, "machine", None) != "domain":
            return
        arrow = f"--{r.event}-->"
        took = f"({r.duration * 1000:.1f} ms)"
        self.out.write(f"      {r.domain:<6} {r.source:>8} {arrow:<24} {r.dest:<8} {took}\n")


class Demo:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.top = tempfile.mkdtemp(prefix="lfdemo")
        self.config = {
            "lockspace_dir": os.path.join(self.top, "lockspace"),
            "run_dir": os.path.join(self.top, "run"),
        }
        self.disks = {}
        for name in ("a.img", "b.img", "c.img"):
            path = os.path.join(self.top, name)
            with open(path, "wb") as f:
                f.truncate(1 << 20)
            self.disks[name] = path
        self.procs: list[subprocess.Popen[bytes]] = []

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def step(self, n: int, text: str) -> None:
        self.say(f"\n{n}. {text}")

    def holders(self) -> None:
        rows = status.leases(self.config["run_dir"])
        if not rows:
            self.say("   leases: none held")
        for row in rows:
            name = os.path.basename(row["resource"])
            self.say(
                f"   lease {name}: held by {row['domain']} ({row['mode']}, "
                f"supervisor pid {row['supervisor_pid']}, guest pid {row['guest_pid']})"
            )

    def start(self, driver: lockfsm.LockDriver, name: str, disks: list[str]) -> Any:
        mgr = driver.new_manager()
        mgr.set_parameter("name", name)
        mgr.set_parameter("uuid", str(uuidlib.uuid4()))
        mgr.set_parameter("id", len(self.procs) + 1)
        for d in disks:
            mgr.register_resource(ResourceType.DISK, self.disks[d])
        proc = subprocess.Popen(
            [mgr.supervisor_path, *mgr.supervisor_args, "--", *GUEST],
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return mgr, proc

    def run(self) -> int:
        say, step = self.say, self.step
        say("lockfsm demo: disk leases for a guest's whole life, on the fcntl backend")
        say(f"   lockspace {self.config['lockspace_dir']}, run dir {self.config['run_dir']}")
        say(f"   guest: a stand-in process ({' '.join(GUEST)}) run by lockfsm-supervisor")
        driver = lockfsm.load_driver("fcntl", self.config)

        step(1, "start guest vm-a with disks a.img and b.img")
        mgr, _ = self.start(driver, "vm-a", ["a.img", "b.img"])
        pid = mgr.get_child(timeout=30)
        say(f"   vm-a runs, guest pid {pid}; state {mgr.state.value}")
        self.holders()

        step(2, "start guest vm-b with disk b.img, which vm-a holds")
        other, proc = self.start(driver, "vm-b", ["b.img"])
        try:
            other.get_child(timeout=30)
            say("   UNEXPECTED: vm-b started")
            return 1
        except lockfsm.LeaseConflict as e:
            say(f"   refused: {e}")
            say(f"   vm-b's supervisor exited by itself with status {proc.wait(30)}, no guest run")
        say(f"   vm-b's manager stays {other.state.value}; it is freed")
        other.free()

        step(3, "hot-plug disk c.img into vm-a")
        mgr.acquire_resource(ResourceType.DISK, self.disks["c.img"])
        say("   the lease is held: the daemon may now add the device to the guest")
        self.holders()

        step(4, "the daemon restarts: its managers are gone, the guest and its leases stay")
        uuid = mgr._params["uuid"]
        del mgr, driver
        driver = lockfsm.load_driver("fcntl", self.config)
        mgr = driver.new_manager(NewFlags.ATTACH)
        mgr.set_parameter("name", "vm-a")
        mgr.set_parameter("uuid", uuid)
        mgr.set_parameter("id", 1)
        again = mgr.get_child()
        say(f"   re-attached: guest pid {again} ({'the same' if again == pid else 'CHANGED'})")
        say("   disks: " + ", ".join(os.path.basename(r.path) for r in mgr.resources))
        self.holders()

        step(5, "hot-unplug c.img, then shut vm-a down")
        mgr.release_resource(ResourceType.DISK, self.disks["c.img"])
        t = time.monotonic()
        mgr.shutdown()
        say(f"   vm-a stopped in {(time.monotonic() - t) * 1000:.0f} ms; state {mgr.state.value}")
        mgr.free()
        self.holders()
        say("\nmoves of vm-a's last manager: " + ", ".join(h.event for h in mgr.history))
        return 0

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        shutil.rmtree(self.top, ignore_errors=True)


def main(out: TextIO = sys.stdout) -> int:
    logger = logging.getLogger("lockfsm.core")
    handler = _MoveLines(out)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    demo = Demo(out)
    try:
        return demo.run()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        demo.cleanup()
