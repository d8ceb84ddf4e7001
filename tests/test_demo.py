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
    assert re.search(r"refused: disk \S+/b\.img is held by domain 'vm-a'", text)
    assert "supervisor exited by itself with status 75" in text
    assert "lease c.img: held by vm-a" in text
    assert "(the same)" in text
    assert "idle --get_child-->" in text and "started --shutdown-->" in text
    assert "leases: none held" in text.split("shut vm-a down", 1)[1]


def test_readme_starts_with_the_two_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    assert blocks[:2] == [
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/lockfsm demo",
        "bash tests/run",
    ]
    assert readme.index("```sh") < readme.index("lockfsm keeps")
    assert "bash tests/run" in (ROOT / ".ci/run").read_text()
