"""A new user's path, as the README tells it: in a fresh copy of the project, the README's first
command (a new virtualenv, the package, the demo), then `lockfsm status` on the demo's lockspace
while the demo waits, then the embedding example, each exactly as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockfsm.embed.standin import short_tmpdir
from tests.support.helpers import copy_tracked

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fresh() -> Iterator[Path]:
    """The project's files as git knows them, copied from the work tree, without any venv, then
    the README's first command run in it."""
    top = Path(short_tmpdir("lfnew"))
    copy_tracked(str(top))
    readme = (top / "README.md").read_text()
    first = re.findall(r"```sh\n(.*?)\n```", readme, re.S)[0]
    out = subprocess.run(
        ["bash", "-c", first], cwd=top, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "7. " in out.stdout and "leases: none held" in out.stdout, out.stdout
    yield top
    shutil.rmtree(top, ignore_errors=True)


def test_status_during_the_demo(fresh: Path) -> None:
    demo = subprocess.Popen(
        [str(fresh / ".venv/bin/lockfsm"), "demo", "--pause"],
        cwd=fresh,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert demo.stdin is not None and demo.stdout is not None
    try:
        command = None
        for line in demo.stdout:
            if line.strip().startswith("lockfsm status --config "):
                command = line.split()
                break
        assert command is not None, "the demo did not pause"
        out = subprocess.run(
            [str(fresh / ".venv/bin/lockfsm"), *command[1:]],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        for disk in ("a.img", "b.img", "c.img"):
            assert re.search(rf"/{disk}  exclusive  held by domain vm-a ", out.stdout), out.stdout
        demo.stdin.write("\n")
        demo.stdin.flush()
        rest = demo.stdout.read()
        assert demo.wait(120) == 0 and "leases: none held" in rest
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def test_the_embedding_example_runs_as_written(fresh: Path) -> None:
    readme = (fresh / "README.md").read_text()
    section = readme.split("## Embedding lockfsm in a daemon", 1)[1]
    example = re.findall(r"```python\n(.*?)\n```", section, re.S)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run(
        [str(fresh / ".venv/bin/python"), "-c", example],
        cwd=fresh,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith("vm1 ran under its leases and is stopped")
