"""lockfsm installed as a daemon author's CI or an operator installs it: a wheel built from the
project's tracked files, installed (not editable) into a fresh virtualenv, every command run from a
directory that is not the source tree.  What a source checkout can do, the wheel can do."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockfsm.embed.standin import short_tmpdir
from tests.support.helpers import copy_tracked
from tests.support.needs import require

ROOT = Path(__file__).resolve().parent.parent


class Installed:
    """A fresh virtualenv with the wheel installed, and an empty working directory."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.venv = top / "venv"
        self.cwd = top / "elsewhere"
        self.cwd.mkdir()
        self.wheel: Path | None = None

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        return subprocess.run(
            list(argv), cwd=self.cwd, capture_output=True, text=True, timeout=timeout, env=env
        )


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    top = Path(short_tmpdir("lfwhl"))
    src = top / "src"
    copy_tracked(str(src))
    inst = Installed(top)
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(top / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    shutil.rmtree(src)  # nothing of the source tree is left to lean on
    (inst.wheel,) = (top / "dist").glob("lockfsm-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(inst.venv)], check=True, timeout=120)
    pip = subprocess.run(
        [inst.bin("pip"), "install", "-q", f"{inst.wheel}[diagrams,etcd]"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    yield inst
    shutil.rmtree(top, ignore_errors=True)


def test_the_package_copy_is_the_source_tables() -> None:
    """specs/ is where people read and edit the tables; lockfsm/tools/data is what installs."""
    from lockfsm.tools import generate

    pairs = generate.package_data(ROOT)
    assert len(pairs) >= 9, pairs
    for copy, source in pairs.items():
        assert copy.is_file(), f"{copy} is missing: run `lockfsm spec gen`"
        assert copy.read_bytes() == source.read_bytes(), f"{copy} is stale: run `lockfsm spec gen`"
    extra = set((ROOT / "lockfsm/tools/data").rglob("*.*")) - set(pairs)
    assert not extra, f"{sorted(extra)} copy nothing in the source tree"


def test_the_wheel_carries_the_tables_and_the_models(installed: Installed) -> None:
    import zipfile

    assert installed.wheel is not None
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for table in sorted((ROOT / "specs").glob("*.toml")):
        assert f"lockfsm/tools/data/specs/{table.name}" in names, table.name
    for backend in ("fcntl", "sanlock", "etcd"):
        assert f"lockfsm/tools/data/run-{backend}.json" in names, backend
    assert not any(n.startswith(("specs/", "tests/", "bench/")) for n in names), sorted(names)


def test_one_version_everywhere(installed: Installed) -> None:
    from importlib.metadata import version

    expected = version("lockfsm")
    for prog in ("lockfsm", "lockfsm-supervisor", "lockfsm-etcd-agent"):
        out = installed.run(installed.bin(prog), "--version")
        assert out.returncode == 0, (prog, out.stdout, out.stderr)
        assert out.stdout.strip() == f"{prog} {expected}", (prog, out.stdout)


def test_the_demo_runs_from_the_wheel(installed: Installed) -> None:
    out = installed.run(installed.bin("lockfsm"), "demo", "--stand-in")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "leases: none held" in out.stdout


def test_spec_check_runs_from_the_wheel(installed: Installed) -> None:
    require("spin")
    require("gcc")
    out = installed.run(installed.bin("lockfsm"), "spec", "check", "--hosts", "2", "--json")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    verdict = json.loads(out.stdout)
    assert verdict["ok"] and verdict["models"], verdict
    assert all(m["ok"] and not m["stale"] for m in verdict["models"]), verdict
    assert verdict["models"][0]["states"] > 100_000, verdict


def test_spec_gen_refuses_to_write_into_the_installed_package(installed: Installed) -> None:
    data = installed.venv.glob("lib/python*/site-packages/lockfsm/tools/data/specs/domain.toml")
    (table,) = data
    before = table.read_bytes()
    out = installed.run(installed.bin("lockfsm"), "spec", "gen")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "source checkout" in out.stderr, out.stderr
    assert table.read_bytes() == before


def test_diagrams_from_the_wheel_go_where_they_are_told(installed: Installed) -> None:
    require("dot")
    out = installed.run(installed.bin("lockfsm"), "diagrams")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "--out" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (installed.cwd / "diagrams").exists()
    dest = installed.top / "pictures"
    out = installed.run(installed.bin("lockfsm"), "diagrams", "--out", str(dest))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    drawn = {p.name for p in dest.glob("*.svg")}
    assert {"domain.svg", "supervisor.svg", "sequence-fcntl-migration.svg"} <= drawn, drawn
    assert (dest / "step-through.html").is_file()


def test_user_errors_are_one_line_without_a_traceback(installed: Installed) -> None:
    cases = [
        ("lockfsm", "status", "--config", "/nonexistent/lockfsm.toml"),
        ("lockfsm", "config", "fcntl", "--check", "/nonexistent/lockfsm.toml"),
        ("lockfsm", "spec", "check", "--specs", "/nonexistent/specs"),
        ("lockfsm", "status", "--json", "--driver", "nosuch"),
        ("lockfsm-etcd-agent", "--check", "/nonexistent/etcd.toml"),
    ]
    for prog, *argv in cases:
        out = installed.run(installed.bin(prog), *argv)
        assert out.returncode == 2, (argv, out.returncode, out.stdout, out.stderr)
        assert out.stdout == "", (argv, out.stdout)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in out.stderr, (argv, out.stderr)
        assert "/nonexistent" in lines[0] or "nosuch" in lines[0], (argv, lines)


def test_status_and_config_from_the_wheel(installed: Installed) -> None:
    conf = installed.top / "fcntl.toml"
    example = installed.run(installed.bin("lockfsm"), "config", "fcntl")
    assert example.returncode == 0, example.stderr
    lockspace = installed.top / "lockspace"
    text = re.sub(
        r"(?m)^#?\s*lockspace_dir\s*=.*$", f'lockspace_dir = "{lockspace}"', example.stdout
    )
    text = re.sub(r"(?m)^#?\s*run_dir\s*=.*$", f'run_dir = "{installed.top / "run"}"', text)
    conf.write_text(text)
    checked = installed.run(installed.bin("lockfsm"), "config", "fcntl", "--check", str(conf))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    out = installed.run(installed.bin("lockfsm"), "status", "--config", str(conf), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    json.loads(out.stdout)


def test_the_readme_embedding_example_runs_on_the_wheel(installed: Installed) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Embedding lockfsm in a daemon", 1)[1]
    example = re.findall(r"```python\n(.*?)\n```", section, re.S)[0]
    out = installed.run(installed.bin("python"), "-c", example, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith("vm1 ran under its leases and is stopped")


def test_fuzz_from_the_wheel_needs_its_extra_then_runs(installed: Installed) -> None:
    """``lockfsm fuzz`` without hypothesis says which extra to install, in one line; with
    ``lockfsm[fuzz]`` it runs the race machine from the installed package."""
    lockspace = installed.top / "fuzz-lockspace"
    lockspace.mkdir()
    conf = installed.top / "fuzz.toml"
    conf.write_text(f'lockspace_dir = "{lockspace}"\n')
    argv = ("fuzz", "--driver", "fcntl", "--config", str(conf), "--minutes", "0.05")
    out = installed.run(installed.bin("lockfsm"), *argv)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [
        "lockfsm fuzz: lockfsm fuzz needs hypothesis: pip install 'lockfsm[fuzz]'"
    ]
    pip = installed.run(installed.bin("pip"), "install", "-q", f"{installed.wheel}[fuzz]")
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    out = installed.run(installed.bin("lockfsm"), *argv)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "no violation found" in out.stdout
    assert os.listdir(lockspace) == [], "a scratch directory was left behind"
