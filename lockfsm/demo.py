"""``lockfsm demo``: a guest's life on the fcntl backend, in a temporary lockspace shared by two
simulated hosts (each with its own run directory and its own driver, as two daemons would have).

Starts a guest with two disks, shows a second start of one of those disks refused, hot-plugs a
third disk, re-attaches after a simulated daemon restart, migrates the guest to the other host
once cancelled and once for real, and shuts it down, printing each step, each state move, and who
holds each lease after every step.  Needs no configuration.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from typing import Any, TextIO

import lockfsm
from lockfsm import NewFlags, ResourceType, status

GUEST = ["sleep", "600"]


class _MoveLines(logging.Handler):
    """Prints each state move of a manager as one readable line."""

    def __init__(self, out: TextIO, lock: threading.Lock) -> None:
        super().__init__(logging.INFO)
        self.out = out
        self.out_lock = lock

    def emit(self, record: logging.LogRecord) -> None:
        r: Any = record
        if getattr(r, "machine", None) != "domain":
            return
        arrow = f"--{r.event}-->"
        took = f"({r.duration * 1000:.1f} ms)"
        with self.out_lock:  # not self.lock: that one is logging.Handler's own
            self.out.write(f"      {r.domain:<5} {r.source:>13} {arrow:<25} {r.dest:<13} {took}\n")


class Host:
    """One simulated host: a run directory and a driver, on the shared lockspace."""

    def __init__(self, name: str, top: str, lockspace: str) -> None:
        self.name = name
        self.config = {"lockspace_dir": lockspace, "run_dir": os.path.join(top, name)}
        self.driver = lockfsm.load_driver("fcntl", self.config)

    def restart(self) -> None:
        self.driver = lockfsm.load_driver("fcntl", self.config)


class Demo:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.top = tempfile.mkdtemp(prefix="lfdemo")
        lockspace = os.path.join(self.top, "lockspace")
        self.a = Host("host-a", self.top, lockspace)
        self.b = Host("host-b", self.top, lockspace)
        self.lockspace = lockspace
        self.disks = {}
        for name in ("a.img", "b.img", "c.img"):
            path = os.path.join(self.top, name)
            with open(path, "wb") as f:
                f.truncate(1 << 20)
            self.disks[name] = path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.uuid = str(uuidlib.uuid4())

    def say(self, text: str = "") -> None:
        with self.lock:
            self.out.write(text + "\n")
            self.out.flush()

    def step(self, n: int, text: str) -> None:
        self.say(f"\n{n}. {text}")

    def holders(self) -> None:
        rows = [(h.name, r) for h in (self.a, self.b) for r in status.leases(h.config["run_dir"])]
        if not rows:
            self.say("   leases: none held")
        for host, row in sorted(rows, key=lambda x: (x[1]["resource"], x[0])):
            name = os.path.basename(row["resource"])
            self.say(
                f"   lease {name}: {row['held']} by {row['domain']} on {host} ({row['mode']}, "
                f"supervisor pid {row['supervisor_pid']}, guest pid {row['guest_pid']})"
            )

    def manager(self, host: Host, name: str, disks: list[str], flags: int = 0) -> Any:
        mgr = host.driver.new_manager(NewFlags(flags))
        mgr.set_parameter("name", name)
        mgr.set_parameter("uuid", self.uuid if name == "vm-a" else str(uuidlib.uuid4()))
        mgr.set_parameter("id", 1 if name == "vm-a" else 2)
        for d in disks:
            mgr.register_resource(ResourceType.DISK, self.disks[d])
        return mgr

    def launch(self, mgr: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [mgr.supervisor_path, *mgr.supervisor_args, "--", *GUEST],
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def run(self) -> int:
        say, step = self.say, self.step
        say("lockfsm demo: disk leases for a guest's whole life, on the fcntl backend")
        say(f"   two simulated hosts share the lockspace {self.lockspace}")
        say(f"   guest: a stand-in process ({' '.join(GUEST)}) run by lockfsm-supervisor")

        step(1, "host-a starts guest vm-a with disks a.img and b.img")
        mgr = self.manager(self.a, "vm-a", ["a.img", "b.img"])
        self.launch(mgr)
        pid = mgr.get_child(timeout=30)
        say(f"   vm-a runs, guest pid {pid}; state {mgr.state.value}")
        self.holders()

        step(2, "host-b starts guest vm-b with disk b.img, which vm-a holds")
        other = self.manager(self.b, "vm-b", ["b.img"])
        proc = self.launch(other)
        try:
            other.get_child(timeout=30)
            say("   UNEXPECTED: vm-b started")
            return 1
        except lockfsm.LeaseConflict as e:
            say(f"   refused: {e}")
            say(f"   vm-b's supervisor exited by itself with status {proc.wait(30)}, no guest run")
        other.free()

        step(3, "host-a hot-plugs disk c.img into vm-a")
        mgr.acquire_resource(ResourceType.DISK, self.disks["c.img"])
        say("   the lease is held: the daemon may now add the device to the guest")
        self.holders()

        step(4, "host-a's daemon restarts: its managers are gone, the guest and its leases stay")
        del mgr
        self.a.restart()
        mgr = self.manager(self.a, "vm-a", [], NewFlags.ATTACH)
        again = mgr.get_child()
        say(f"   re-attached: guest pid {again} ({'the same' if again == pid else 'CHANGED'})")
        say("   disks: " + ", ".join(os.path.basename(r.path) for r in mgr.resources))
        self.holders()

        step(5, "migrate vm-a to host-b, and call it off")
        target = self.incoming(mgr)
        self.holders()
        target.complete_migrate_in(cancel=True)
        mgr.complete_migrate_in(cancel=True)
        target.shutdown()
        target.free()
        say(f"   cancelled: vm-a is {mgr.state.value} on host-a, still guest pid {pid}")
        self.holders()

        step(6, "migrate vm-a to host-b for real")
        target = self.incoming(mgr)
        say("   host-b completes first: its call waits until host-a gives the leases up")
        waiter = threading.Thread(target=target.complete_migrate_in)
        t = time.monotonic()
        waiter.start()
        time.sleep(0.2)
        mgr.complete_migrate_in()
        waiter.join(60)
        say(f"   handed over in {(time.monotonic() - t - 0.2) * 1000:.0f} ms after host-a's call")
        child = target.get_child()
        say(f"   host-a: {mgr.state.value}; host-b: {target.state.value}, guest pid {child}")
        self.holders()
        mgr.shutdown()
        mgr.free()

        step(7, "host-b hot-unplugs c.img, then shuts vm-a down")
        target.release_resource(ResourceType.DISK, self.disks["c.img"])
        target.shutdown()
        say(f"   vm-a {target.state.value}")
        target.free()
        self.holders()
        return 0

    def incoming(self, source: Any) -> Any:
        cookie = source.prepare_migrate("qemu+tcp://host-b/system")
        self.say(f"   host-a prepared: cookie of {len(cookie)} bytes for host-b")
        target = self.manager(self.b, "vm-a", [], NewFlags.MIGRATE)
        for res in source.resources:
            target.register_resource(res.type, res.path, res.flags)
        target.set_parameter("migration_cookie", cookie)
        self.launch(target)
        pid = target.get_child(timeout=30)
        self.say(f"   host-b's incoming guest exists (pid {pid}) and runs nothing until it holds")
        return target

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        shutil.rmtree(self.top, ignore_errors=True)


def main(out: TextIO = sys.stdout) -> int:
    demo = Demo(out)
    logger = logging.getLogger("lockfsm.core")
    handler = _MoveLines(out, demo.lock)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        return demo.run()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        demo.cleanup()
