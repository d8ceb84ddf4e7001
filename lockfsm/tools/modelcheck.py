"""Run spin on a generated model: ``spin -a``, compile ``pan`` (breadth-first, so that a
counterexample is a shortest one), run it, and on a violation replay the trail as protocol steps.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lockfsm.errors import BackendError

#: The committed protocol models, by number of hosts.
HOSTS = (2, 3)
#: Every committed model: the protocol's for 2 and 3 hosts, and the timing model.
MODELS = ("2hosts", "3hosts", "timing")


def model_path(specs_dir: Path, hosts: int | str) -> Path:
    """The committed model of ``hosts`` hosts (2, 3) or of that name ("timing")."""
    name = f"{hosts}hosts" if isinstance(hosts, int) else hosts
    return specs_dir / f"model-{name}.pml"


@dataclass
class Verdict:
    """What spin found for one model."""

    hosts: int
    states: int
    transitions: int
    depth: int
    seconds: float
    violation: str | None = None
    steps: list[str] = field(default_factory=list)
    label: str = ""  # what was checked, when not the protocol of ``hosts`` hosts
    properties: tuple[str, ...] = ("S1", "S3", "L1")

    @property
    def ok(self) -> bool:
        return self.violation is None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def report(self) -> str:
        rate = self.states / self.seconds if self.seconds else 0.0
        head = (
            f"{self.label or f'{self.hosts} hosts'}: {self.states} states, "
            f"{self.transitions} transitions, depth {self.depth}, {self.seconds:.1f} s "
            f"({rate:,.0f} states/s): "
        )
        if self.ok:
            return head + f"no violation of {', '.join(self.properties)}"
        lines = [head + f"VIOLATION of {self.violation}; shortest counterexample:"]
        lines += [f"  {i + 1:>3}. {s}" for i, s in enumerate(self.steps)]
        return "\n".join(lines)


#: What each program is, and where it comes from, for the error when it is missing.
_INSTALL = {
    "spin": "spin, the model checker, is not installed (Debian: apt-get install spin)",
    "gcc": "gcc, which compiles spin's verifier, is not installed (Debian: apt-get install gcc)",
}

#: Progress: (stage, detail) -- stages "generating", "compiling", "exploring" (detail: the
#: states so far), "replaying", "done" (detail: the verdict's report).
Progress = Callable[[str, str], None]


def _quiet(stage: str, detail: str) -> None:
    pass


def _run(cmd: list[str], cwd: str, timeout: float) -> str:
    try:
        done = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise BackendError(_INSTALL.get(cmd[0], f"{cmd[0]} is not installed")) from None
    if done.returncode != 0 and cmd[0] != "./pan":
        raise BackendError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.stdout[-500:]}")
    return done.stdout


def _number(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    return int(float(m.group(1))) if m else 0


def _explore(work: str, timeout: float, progress: Progress) -> str:
    """Run ``pan``, telling ``progress`` the states explored as pan reports them."""
    proc = subprocess.Popen(
        ["./pan", "-m100000"], cwd=work, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"States=\s*([\d.e+]+)", line)
        if m:
            progress("exploring", f"{int(float(m.group(1))):,} states")
        if time.monotonic() > deadline:
            proc.kill()
            raise BackendError(f"spin's verifier took over {timeout:g} s")
    proc.wait()
    return "".join(lines)


def check(
    text: str,
    hosts: int,
    timeout: float = 900.0,
    progress: Progress = _quiet,
    label: str = "",
    properties: tuple[str, ...] = ("S1", "S3", "L1"),
) -> Verdict:
    """Model-check the Promela ``text``, telling ``progress`` what it does.  Raises
    BackendError if spin or gcc is missing (saying how to install it) or fails."""
    work = tempfile.mkdtemp(prefix="lfspin")
    try:
        Path(work, "model.pml").write_text(text)
        progress("compiling", f"spin -a, gcc ({label or f'{hosts} hosts'})")
        _run(["spin", "-a", "model.pml"], work, timeout)
        # gcc's optimiser costs more than it saves on small models (measured here: 2 hosts,
        # -O2 47 s to compile and 1 s to run, -O0 2.6 s and 0.9 s; 3 hosts, -O2 47 + 24 s,
        # -O1 19 + 26 s, -O0 4 + 55 s).
        opt = "-O0" if hosts <= 2 else "-O1"
        _run(["gcc", opt, "-w", "-DSAFETY", "-DBFS", "-o", "pan", "pan.c"], work, timeout)
        started = time.monotonic()
        progress("exploring", "0 states")
        out = _explore(work, timeout, progress)
        seconds = time.monotonic() - started
        verdict = Verdict(
            hosts=hosts,
            states=_number(r"([\d.e+]+) states, stored", out),
            transitions=_number(r"([\d.e+]+) transitions", out),
            depth=_number(r"depth reached (\d+)", out),
            seconds=seconds,
            label=label,
            properties=properties,
        )
        if _number(r"errors: (\d+)", out) or "assertion violated" in out:
            progress("replaying", "the shortest counterexample")
            trail = _run(["spin", "-t", "model.pml"], work, timeout)
            found = re.findall(r"VIOLATION (\w+)", trail)
            verdict.violation = " and ".join(dict.fromkeys(found)) or "an assertion"
            verdict.steps = [m.strip() for m in re.findall(r"STEP (.*)", trail)]
        progress("done", verdict.report())
        return verdict
    finally:
        shutil.rmtree(work, ignore_errors=True)
