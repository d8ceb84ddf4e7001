"""The etcd storm's judge (bench/etcd_storm.py): a process of its own that samples etcd's key
space for the whole storm and counts the instants at which two hosts hold one disk.

Its own process, so that neither slows the other through one interpreter lock: the storm's
daemon threads tell it, on its stdin, who each guest's sides are (JSON lines: a side's
supervisor as soon as it is run, before it can hold anything; its guest once ``get_child``
returned; the instant a target's completion returned, on CLOCK_MONOTONIC, which every process
of the machine shares).  ``python -m bench.etcd_judge PREFIX ENDPOINT...``; at the line
``{"e": "stop"}`` it prints what it found as JSON and exits.

A supervisor holds a disk exclusively when etcd's ``x`` key names it, and also, by its own
account, when it is the source and its guest is alive (it has not handed off yet) or the target
and its completion has returned (it resumes the guest).  A sample (one range read: one
revision) counts as violations:

* ``x`` naming the target while the source's guest is alive (checked after the read returned:
  a guest alive then was alive at the read), which is S1 in etcd's terms;
* ``x`` naming the source in a read that began after the target's completion returned;
* ``x`` naming a supervisor that is neither side of the guest, a key of no guest, or a shared
  key (every disk of the storm is exclusive).

What the storm told it is read again after each read and before judging it: a side the storm
ran before etcd could show it holding anything is known by then.  It pauses as long as its last
sample took (at most about half a core, beside the storm), and takes one last sample after the
storm said stop: the settled key space.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

from bench import REPO
from lockfsm.fuzz.procs import stat_fields


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None if it is gone or a zombie."""
    fields = stat_fields(pid)
    return None if not fields or fields[0] in ("Z", "X") else int(fields[19])


class Judge:
    """The judge's state: what the storm said, what the samples found."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.root = f"{prefix}L/".encode()
        self.sides: dict[tuple[str, str], dict[str, Any]] = {}  # (uuid, role) -> side
        self.done: dict[str, float] = {}  # uuid -> instant its target's completion returned
        self.inbox: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.parsed: dict[bytes, tuple[int, Any]] = {}  # key -> (mod revision, its value)
        self.samples = self.failed = self.in_flight = self.keys_seen = 0
        self.gaps: list[float] = []
        self.violations: list[str] = []

    # -- what the storm says ------------------------------------------------------------------

    def listen(self) -> None:
        """Read the storm's lines until it says stop (a thread: the storm never waits)."""
        for line in sys.stdin:
            event = json.loads(line)
            if event["e"] == "stop":
                break
            with self.lock:
                self.inbox.append(event)
        self.stopping.set()

    def _learn(self) -> None:
        with self.lock:
            events, self.inbox = self.inbox, []
        for ev in events:
            if ev["e"] == "side":
                self.sides[ev["uuid"], ev["role"]] = {"host": ev["host"], "sup": ev["sup"]}
            elif ev["e"] == "up":
                self.sides[ev["uuid"], ev["role"]].update(guest=ev["guest"], since=ev["since"])
            elif ev["e"] == "done":
                self.done[ev["uuid"]] = ev["at"]

    def _guest_alive(self, side: dict[str, Any]) -> bool:
        """Whether the side's guest runs; True while it is not known yet (it may run)."""
        if "guest" not in side:
            return True
        return side["since"] is not None and start_time(side["guest"]) == side["since"]

    # -- the samples --------------------------------------------------------------------------

    def _value(self, kv: Any) -> Any:
        """The key's value as JSON, parsed once per revision of the key."""
        cached = self.parsed.get(kv.key)
        if cached is not None and cached[0] == kv.mod:
            return cached[1]
        value = json.loads(kv.value)
        self.parsed[kv.key] = (kv.mod, value)
        return value

    def sample(self) -> None:
        self._learn()
        began = time.monotonic()
        rows = self.client.prefix(self.root)
        self._learn()
        by_target: list[tuple[str, str]] = []
        busy = False
        for kv in rows:
            lease_key, _, kind = kv.key[len(self.root) :].decode().partition("/")
            if kind == "r":
                busy = True
                continue
            if kind != "x":
                self.violations.append(f"{lease_key}: a {kind!r} key on an exclusive disk")
                continue
            value = self._value(kv)
            if "handed_off_to" in value:
                busy = True
                continue
            uuid = str(value.get("uuid"))
            holder = {"host": value.get("host"), "sup": value.get("pid")}
            src, tgt = self.sides.get((uuid, "source")), self.sides.get((uuid, "target"))
            if src is not None and holder == {"host": src["host"], "sup": src["sup"]}:
                if self.done.get(uuid, began) < began:
                    self.violations.append(f"{uuid}: etcd names the source, the target resumed")
            elif tgt is not None and holder == {"host": tgt["host"], "sup": tgt["sup"]}:
                by_target.append((lease_key, uuid))
            else:
                self.violations.append(f"{uuid}: {lease_key} held by {holder}, not its sides")
        for lease_key, uuid in by_target:  # after the read: alive now, alive then
            source = self.sides.get((uuid, "source"))
            if source is not None and self._guest_alive(source):
                self.violations.append(f"{uuid}: {lease_key} is the target's, the source runs")
        self.samples += 1
        self.in_flight += busy
        self.keys_seen = max(self.keys_seen, len(rows))

    def run(self) -> dict[str, Any]:
        last = None
        while not self.stopping.is_set():
            began = time.monotonic()
            if last is not None:
                self.gaps.append(began - last)
            last = began
            try:
                self.sample()
            except Exception as e:  # a read that timed out under the storm: counted
                self.failed += 1
                if self.failed == 1:
                    print(f"etcd_judge: a sample failed: {e}", file=sys.stderr)
            # At most about half a core: the storm it judges needs the machine too.
            self.stopping.wait(max(0.02, time.monotonic() - began))
        try:
            self.sample()  # the settled key space the storm left
        except Exception as e:
            self.failed += 1
            print(f"etcd_judge: the last sample failed: {e}", file=sys.stderr)
        gaps = sorted(self.gaps) or [0.0]
        return {
            "samples": self.samples,
            "samples_in_flight": self.in_flight,
            "samples_failed": self.failed,
            "keys_max": self.keys_seen,
            "gap_p50_s": gaps[len(gaps) // 2],
            "gap_max_s": gaps[-1],
            "violations": len(self.violations),
            "violations_sampled": self.violations[:20],
        }


class JudgeProcess:
    """The storm's end of the judge: start it, tell it about sides, stop it for its findings."""

    def __init__(self, prefix: str, endpoints: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.etcd_judge", prefix, *endpoints],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.lock = threading.Lock()

    def tell(self, **event: Any) -> None:
        line = (json.dumps(event) + "\n").encode()
        assert self.proc.stdin is not None
        with self.lock:
            self.proc.stdin.write(line)
            self.proc.stdin.flush()

    def side(self, uuid: str, role: str, host: str, sup: int) -> None:
        self.tell(e="side", uuid=uuid, role=role, host=host, sup=sup)

    def up(self, uuid: str, role: str, guest: int) -> None:
        self.tell(e="up", uuid=uuid, role=role, guest=guest, since=start_time(guest))

    def done(self, uuid: str) -> None:
        self.tell(e="done", uuid=uuid, at=time.monotonic())

    def finish(self) -> dict[str, Any]:
        """Stop it after its current sample; what it found."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"the judge exited early ({self.proc.returncode})")
        self.tell(e="stop")
        out, _ = self.proc.communicate(timeout=120)
        found: dict[str, Any] = json.loads(out)
        return found

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def main(argv: list[str]) -> int:
    from lockfsm.backends.etcd import parse_endpoint
    from lockfsm.backends.etcd.client import SyncEtcd

    prefix, endpoints = argv[0], argv[1:]
    with SyncEtcd([parse_endpoint(e) for e in endpoints], 2.0) as client:
        judge = Judge(client, prefix)
        threading.Thread(target=judge.listen, daemon=True).start()
        print(json.dumps(judge.run()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
