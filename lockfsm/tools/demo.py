"""``lockfsm demo``: a guest's life on the fcntl backend, in a temporary lockspace shared by two
simulated hosts (each with its own run directory and its own driver, as two daemons would have).

Starts a guest with two disks, shows a second start of one of those disks refused, hot-plugs a
third disk, re-attaches after a simulated daemon restart, migrates the guest to the other host
once cancelled and once for real, and shuts it down, printing each step, each state move, and who
holds each lease after every step.  Needs no configuration.

The guest is a real QEMU (``qemu-system-x86_64``, TCG, no guest OS) driven over QMP by the
reference embedding :mod:`lockfsm.embed.host` when QEMU and ``qemu.qmp`` are installed, and a
stand-in process otherwise (or with ``--stand-in``); the demo says which it used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from typing import Any, TextIO

import lockfsm
from lockfsm import NewFlags, ResourceType
from lockfsm.embed import standin
from lockfsm.protocol import kernel
from lockfsm.tools import status, term

GUEST = ["sleep", "600"]
QEMU = "qemu-system-x86_64"
SLOW_LINK = 1000  # bytes/s: a migration this slow is still under way when it is cancelled


class _MoveLines(logging.Handler):
    """Prints each state move of a manager as one readable line."""

    def __init__(self, out: TextIO, lock: threading.Lock, colour: bool = False) -> None:
        super().__init__(logging.INFO)
        self.out = out
        self.out_lock = lock
        self.colour = colour

    def emit(self, record: logging.LogRecord) -> None:
        r: Any = record
        if getattr(r, "machine", None) != "domain":
            return
        arrow = f"--{r.event}-->"
        took = f"({r.duration * 1000:.1f} ms)"
        line = f"      {r.domain:<5} {r.source:>13} {arrow:<25} {r.dest:<13} {took}"
        with self.out_lock:  # not self.lock: that one is logging.Handler's own
            self.out.write((f"\033[2m{line}\033[0m" if self.colour else line) + "\n")


class Stage:
    """What both demos share: a temporary lockspace, three disk images, and the printing."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.pause = False
        # Colour and a live progress line only on a terminal (not with NO_COLOR or TERM=dumb).
        self.colour = term.colour(out)
        self.lock = threading.Lock()
        self.top = tempfile.mkdtemp(prefix="lfdemo")
        self.lockspace = os.path.join(self.top, "lockspace")
        self.disks = {}
        for name in ("a.img", "b.img", "c.img"):
            path = os.path.join(self.top, name)
            with open(path, "wb") as f:
                f.truncate(1 << 20)
            self.disks[name] = path
        self.uuid = str(uuidlib.uuid4())

    def say(self, text: str = "") -> None:
        if self.colour and text.lstrip().startswith(("refused", "UNEXPECTED")):
            text = f"\033[31m{text}\033[0m"
        with self.lock:
            self.out.write(text + "\n")
            self.out.flush()

    def step(self, n: int, text: str) -> None:
        self.say(f"\n\033[1m{n}. {text}\033[0m" if self.colour else f"\n{n}. {text}")

    def wait_for(self, worker: threading.Thread, what: str, limit: float = 60.0) -> None:
        """Join ``worker``; on a terminal, show a live line with the time waited so far."""
        started = time.monotonic()
        while worker.is_alive() and time.monotonic() - started < limit:
            worker.join(0.1)
            if self.colour and worker.is_alive():
                with self.lock:
                    self.out.write(f"\r   ... {what}: {time.monotonic() - started:.1f} s")
                    self.out.flush()
        if self.colour:
            with self.lock:
                self.out.write("\r\033[K")
                self.out.flush()

    def run_dirs(self) -> list[tuple[str, str]]:
        """(host name, run directory) of each simulated host."""
        raise NotImplementedError

    def run(self) -> int:
        """The seven steps; returns the exit status."""
        raise NotImplementedError

    def holders(self) -> None:
        rows = [
            (h, r)
            for h, run_dir in self.run_dirs()
            for r in status.leases(run_dir)
            if r["type"] == "disk"  # the guest's own lease (on its uuid) follows its disks'
        ]
        if not rows:
            self.say("   leases: none held")
        for host, row in sorted(rows, key=lambda x: (x[1]["resource"], x[0])):
            name = os.path.basename(row["resource"])
            self.say(
                f"   lease {name}: {row['held']} by {row['holder']['domain']} on {host} "
                f"({row['mode']}, supervisor pid {row['holder']['supervisor_pid']}, "
                f"guest pid {row['holder']['guest_pid']})"
            )

    def pause_here(self) -> None:
        """With --pause: write host-a's settings as a configuration file, say how to look at the
        lockspace with `lockfsm status`, and wait for a line on stdin."""
        if not self.pause:
            return
        conf = os.path.join(self.top, "host-a.toml")
        with open(conf, "w") as f:
            f.write(f'lockspace_dir = "{self.lockspace}"\nrun_dir = "{self.run_dirs()[0][1]}"\n')
        self.say("\n   paused: look at the lockspace from another terminal with")
        self.say(f"      lockfsm status --config {conf}")
        self.say("   then press Enter to go on")
        sys.stdin.readline()

    def cleanup(self) -> None:
        shutil.rmtree(self.top, ignore_errors=True)


class StandInDemo(Stage):
    """The guest is a stand-in process; the demo makes the daemon's lock-manager calls itself."""

    def __init__(self, out: TextIO, why: str) -> None:
        super().__init__(out)
        self.why = why
        self.a, self.b = (
            standin.Host(
                "fcntl",
                self.lockspace,
                run_dir=os.path.join(self.top, name),
                name=name,
                stderr=subprocess.DEVNULL,
            )
            for name in ("host-a", "host-b")
        )

    def run_dirs(self) -> list[tuple[str, str]]:
        return [(h.name, h.run_dir) for h in (self.a, self.b)]

    def manager(self, host: standin.Host, name: str, disks: list[str], flags: int = 0) -> Any:
        uuid = self.uuid if name == "vm-a" else None
        paths = [self.disks[d] for d in disks]
        return host.manager(name, uuid, paths, flags, id=1 if name == "vm-a" else 2)

    def launch(self, host: standin.Host, mgr: Any) -> subprocess.Popen[bytes]:
        return host.launch(mgr, GUEST)

    def run(self) -> int:
        say, step = self.say, self.step
        say("lockfsm demo: disk leases for a guest's whole life, on the fcntl backend")
        say(f"   two simulated hosts share the lockspace {self.lockspace}")
        say(f"   guest: a stand-in process ({' '.join(GUEST)}) run by lockfsm-supervisor")
        say(f"   (not QEMU: {self.why})")

        step(1, "host-a starts guest vm-a with disks a.img and b.img")
        mgr = self.manager(self.a, "vm-a", ["a.img", "b.img"])
        self.launch(self.a, mgr)
        pid = mgr.get_child(timeout=30)
        say(f"   vm-a runs, guest pid {pid}; state {mgr.state.value}")
        self.holders()

        step(2, "host-b starts guest vm-b with disk b.img, which vm-a holds")
        other = self.manager(self.b, "vm-b", ["b.img"])
        proc = self.launch(self.b, other)
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
        self.pause_here()

        step(4, "host-a's daemon restarts: its managers are gone, the guest and its leases stay")
        del mgr
        self.a.restart_daemon()
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
        self.wait_for(waiter, "host-b waits for the leases")
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
        self.launch(self.b, target)
        pid = target.get_child(timeout=30)
        self.say(f"   host-b's incoming guest exists (pid {pid}) and runs nothing until it holds")
        return target

    def cleanup(self) -> None:
        self.a.cleanup()
        self.b.cleanup()
        super().cleanup()


class QemuDemo(Stage):
    """The guest is a real QEMU; each simulated host's daemon is the reference embedding
    :class:`lockfsm.embed.host.Host`, which makes the lock-manager calls at the seed's points."""

    def __init__(self, out: TextIO) -> None:
        super().__init__(out)
        from lockfsm.embed import host

        self.host = host
        self.config = {"lockspace_dir": self.lockspace, "shutdown_grace": 2.0}
        self.a = self.daemon("host-a")
        self.b = self.daemon("host-b")

    def daemon(self, name: str) -> Any:
        return self.host.Host(name, os.path.join(self.top, name), "fcntl", self.config)

    def run_dirs(self) -> list[tuple[str, str]]:
        return [(h.name, h.run_dir) for h in (self.a, self.b)]

    def guest(self, name: str, disks: list[str]) -> Any:
        uuid = self.uuid if name == "vm-a" else str(uuidlib.uuid4())
        return self.host.Guest(
            name=name,
            uuid=uuid,
            id=1 if name == "vm-a" else 2,
            disks=[self.host.Disk(self.disks[d], format="raw") for d in disks],
            lock_failure="poweroff",
        )

    def run(self) -> int:
        say, step, a, b = self.say, self.step, self.a, self.b
        say("lockfsm demo: disk leases for a guest's whole life, on the fcntl backend")
        say(f"   two simulated hosts share the lockspace {self.lockspace}")
        say(f"   guest: a real QEMU ({QEMU}, TCG, no guest OS) run by lockfsm-supervisor;")
        say("   each host's daemon is lockfsm.embed.host, which drives QEMU over QMP")

        step(1, "host-a starts guest vm-a with disks a.img and b.img")
        pid = a.start(self.guest("vm-a", ["a.img", "b.img"]))
        state = a.domain("vm-a").mgr.state.value
        say(f"   vm-a runs, guest pid {pid} (QEMU, CPUs started by the daemon after the leases)")
        say(f"   QEMU: {a.status('vm-a')}; state {state}")
        self.holders()

        step(2, "host-b starts guest vm-b with disk b.img, which vm-a holds")
        other = self.guest("vm-b", ["b.img"])
        try:
            b.start(other)
            say("   UNEXPECTED: vm-b started")
            return 1
        except lockfsm.LeaseConflict as e:
            say(f"   refused: {e}")
            found = re.search(r"status (-?\d+)", " ".join(getattr(e, "__notes__", [])))
            code = found[1] if found else "unknown"
            say(f"   vm-b's supervisor exited by itself with status {code}, no guest run")
            say("   no QEMU ran for vm-b: QEMU's own image lock was never even reached")

        step(3, "host-a hot-plugs disk c.img into vm-a")
        placed = a.hotplug("vm-a", self.host.Disk(self.disks["c.img"], format="raw"))
        say(f"   the lease is held, then QEMU added SCSI disk {placed.device_id} (c.img)")
        self.holders()
        self.pause_here()

        step(4, "host-a's daemon restarts: its managers are gone, the guest and its leases stay")
        a.close()
        self.a = a = self.daemon("host-a")
        again = a.attach("vm-a")
        say(f"   re-attached: guest pid {again} ({'the same' if again == pid else 'CHANGED'})")
        say(f"   QEMU: {a.status('vm-a')}, reached again over QMP")
        say("   disks: " + ", ".join(os.path.basename(d.path) for d in a.guest("vm-a").disks))
        self.holders()

        step(5, "migrate vm-a to host-b, and call it off")
        uri = self.incoming()
        self.holders()
        a.migrate_perform("vm-a", uri, max_bandwidth=SLOW_LINK, wait=False)
        say(f"   QEMU migrates at {SLOW_LINK} bytes/s; host-a's daemon cancels it")
        say(f"   QEMU's migration: {a.migrate_abort('vm-a')}")
        b.migrate_finish("vm-a", cancel=True)
        say("   host-b calls it off: its incoming QEMU is gone (it ends when the stream breaks)")
        state = a.migrate_confirm("vm-a", cancel=True).value
        say(f"   cancelled: vm-a is {state} on host-a, still guest pid {pid}")
        say(f"   QEMU on host-a: {a.status('vm-a')}")
        self.holders()

        step(6, "migrate vm-a to host-b for real")
        uri = self.incoming()
        t = time.monotonic()
        a.migrate_perform("vm-a", uri)
        say(
            f"   QEMU sent the guest in {(time.monotonic() - t) * 1000:.0f} ms; host-b's QEMU waits"
        )
        say("   host-b completes first: its call waits until host-a gives the leases up")
        waiter = threading.Thread(target=b.migrate_finish, args=("vm-a",))
        t = time.monotonic()
        waiter.start()
        time.sleep(0.2)
        source = a.migrate_confirm("vm-a").value
        self.wait_for(waiter, "host-b waits for the leases")
        say(f"   handed over in {(time.monotonic() - t - 0.2) * 1000:.0f} ms after host-a's call")
        target = b.domain("vm-a").mgr.state.value
        child = b.pid("vm-a")
        say(f"   host-a: {source}; host-b: {target}, guest pid {child}, QEMU {b.status('vm-a')}")
        self.holders()

        step(7, "host-b hot-unplugs c.img, then shuts vm-a down")
        b.unplug("vm-a", self.disks["c.img"])
        say("   QEMU removed the disk and closed the image; then its lease was released")
        b.shutdown("vm-a")
        say(f"   vm-a stopped: QEMU pid {child} {'is gone' if not kernel.alive(child) else 'RUNS'}")
        self.holders()
        return 0

    def incoming(self) -> str:
        offer = self.a.migrate_begin("vm-a", "qemu+unix:///host-b")
        self.say(f"   host-a prepared: cookie of {len(offer['cookie'])} bytes for host-b")
        uri = self.b.migrate_prepare(offer)
        pid = self.b.pid("vm-a")
        self.say(f"   host-b's incoming QEMU (pid {pid}, -incoming) listens; its CPUs stay stopped")
        return str(uri)

    def cleanup(self) -> None:
        for h in (self.a, self.b):
            h.close()
            for rec in status.supervisors(h.run_dir):
                if rec["alive"]:  # a step failed: its guests must not outlive the demo
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(rec["pid"], signal.SIGKILL)
        super().cleanup()


def main(out: TextIO = sys.stdout, stand_in: bool = False, pause: bool = False) -> int:
    """Run the demo; real QEMU guests unless ``stand_in`` or QEMU is missing; with ``pause``,
    wait after the hot-plug for a line on stdin (time to run `lockfsm status`).  Returns the
    exit status."""
    why = "asked for" if stand_in else _without_qemu()
    demo: Stage = StandInDemo(out, why) if why else QemuDemo(out)
    demo.pause = pause
    logger = logging.getLogger("lockfsm.core")
    handler = _MoveLines(out, demo.lock, demo.colour)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        return demo.run()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        demo.cleanup()


def _without_qemu() -> str:
    """Why the demo cannot run QEMU guests here, or "" if it can."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed"
    try:
        import qemu.qmp  # noqa: F401
    except ImportError:
        return "the qemu.qmp library is not installed (pip install 'lockfsm[qemu]')"
    return ""
