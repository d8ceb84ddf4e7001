"""The main job and the README's promises."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.needs import IN_CI

ROOT = Path(__file__).resolve().parent.parent


def qemu_here() -> bool:
    if shutil.which("qemu-system-x86_64") is None:
        return False
    try:
        import qemu.qmp  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("guests", ["default", "stand-in"])
def test_demo_runs_every_step(guests: str) -> None:
    """The same seven steps with either kind of guest; by default real QEMU guests wherever
    QEMU is installed (always in CI), and the demo says which kind it ran."""
    flags = ["--stand-in"] if guests == "stand-in" else []
    out = subprocess.run(
        [sys.executable, "-m", "lockfsm", "demo", *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "\033[" not in text, "colour only on a terminal"
    qemu = guests == "default" and (IN_CI or qemu_here())
    if qemu:
        assert "guest: a real QEMU (qemu-system-x86_64, TCG" in text.split("\n1. ")[0]
    else:
        assert "guest: a stand-in process (sleep 600)" in text.split("\n1. ")[0]
        reason = "asked for" if guests == "stand-in" else "is not installed"
        assert re.search(rf"\(not QEMU: .*{reason}", text), text
    steps = dict(re.findall(r"\n(\d)\. (.*?)(?=\n\d\. |\Z)", text, re.S))
    assert sorted(steps) == list("1234567"), text
    assert "lease b.img: held by vm-a on host-a" in steps["1"]
    assert re.search(
        r"refused: disk \S+/b\.img is locked by another lockfsm supervisor", steps["2"]
    )
    assert "supervisor exited by itself with status 75" in steps["2"]
    assert "lease c.img: held by vm-a on host-a" in steps["3"]
    assert "(the same)" in steps["4"]
    assert "lease a.img: reserved by vm-a on host-b" in steps["5"]
    assert "cancelled: vm-a is started on host-a" in steps["5"]
    assert "on host-b" not in steps["5"].split("cancelled: vm-a")[1]
    assert "migrating_in --complete_migrate_in-->  started" in steps["6"]
    assert "lease a.img: held by vm-a on host-b" in steps["6"]
    assert "on host-a" not in steps["6"].split("host-a: done")[1]
    assert steps["7"].rstrip().endswith("leases: none held")
    if qemu:  # what QEMU itself said at each step
        assert "QEMU: running; state started" in steps["1"]
        assert "QEMU added SCSI disk disk2 (c.img)" in steps["3"]
        assert "QEMU: running, reached again over QMP" in steps["4"]
        assert "QEMU's migration: cancelled" in steps["5"]
        assert "QEMU on host-a: running" in steps["5"]
        assert re.search(r"host-b: started, guest pid \d+, QEMU running", steps["6"])
        assert re.search(r"QEMU pid \d+ is gone", steps["7"])


def test_readme_starts_with_the_two_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    assert blocks[:2] == [
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/lockfsm demo",
        "bash tests/run",
    ]
    assert readme.index("```sh") < readme.index("lockfsm keeps")
    assert "bash tests/run" in (ROOT / ".ci/run").read_text()


@pytest.mark.parametrize("no_color", [False, True])
def test_on_a_terminal_the_demo_is_in_colour(no_color: bool) -> None:
    """On a terminal: bold step headings, dim move lines, a red refusal (not with NO_COLOR)."""
    import os
    import pty

    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    if no_color:
        env["NO_COLOR"] = "1"
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lockfsm", "demo", "--stand-in"],
        stdout=follower,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the demo closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(120) == 0
    text = b"".join(chunks).decode()
    if no_color:
        assert "\033[" not in text
    else:
        assert "\033[1m1. host-a starts guest vm-a" in text
        assert re.search(r"\033\[2m +vm-a +idle --set_parameter-->", text)
        assert "\033[31m   refused: disk " in text
