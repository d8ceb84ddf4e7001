"""The main job and the README's promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_every_step() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lockfsm.cli", "demo"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
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


def test_readme_starts_with_the_two_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    assert blocks[:2] == [
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/lockfsm demo",
        "bash tests/run",
    ]
    assert readme.index("```sh") < readme.index("lockfsm keeps")
    assert "bash tests/run" in (ROOT / ".ci/run").read_text()
