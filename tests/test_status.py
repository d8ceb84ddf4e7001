"""``lockfsm status``: the leases of a lockspace, with their holders, for people and machines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from lockfsm import NewFlags
from lockfsm.embed.standin import Host, make_disks
from lockfsm.tools import cli

LOCKFSM = [sys.executable, "-m", "lockfsm"]


@pytest.fixture
def disks(workdir: str) -> list[str]:
    return make_disks(workdir, "a.img", "b.img", "c.img", "d.img")


def status(host: Host, workdir: str, *extra: str) -> subprocess.CompletedProcess[str]:
    conf = os.path.join(workdir, "status.toml")
    with open(conf, "w") as f:
        f.write(f'lockspace_dir = "{host.lockspace}"\nrun_dir = "{host.run_dir}"\n')
    return subprocess.run(
        [*LOCKFSM, "status", "--config", conf, *extra], capture_output=True, text=True, timeout=30
    )


def test_every_holder_is_named(
    hosts: Callable[..., Host], disks: list[str], workdir: str, lockspace: str
) -> None:
    """This host's guest by name and pids; a guest of another run dir by its supervisor's
    command line; a migration target's reservation; a foreign POSIX lock (virtlockd's kind) as
    another lock manager with its pid."""
    here, there = hosts(), hosts()
    g = here.start("vm-here", disks[:1])
    other = there.start("vm-there", disks[1:2])
    cookie = g.mgr.prepare_migrate("qemu://there/system")
    mgr = there.manager("vm-here", g.uuid, disks[:1], flags=NewFlags.MIGRATE)
    mgr.set_parameter("migration_cookie", cookie)
    there.launch(mgr)
    mgr.get_child(timeout=10)
    import hashlib

    foreign = os.path.join(lockspace, hashlib.sha256(disks[2].encode()).hexdigest())
    locker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({foreign!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
        out = status(here, workdir, "--json")
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)
        mine = [r for r in rows if r["resource"] == disks[0]]
        assert len(mine) == 1 and mine[0]["holder"]["domain"] == "vm-here"
        assert mine[0]["holder"]["supervisor_pid"] == g.supervisor_pid
        assert mine[0]["held"] == "held" and mine[0]["mode"] == "exclusive" and mine[0]["since"]
        by_manager = {(r["holder"]["manager"], r["held"], r["holder"].get("domain")) for r in rows}
        assert ("lockfsm", "held", "vm-there") in by_manager  # named from its command line
        assert ("lockfsm", "reserved", "vm-here") in by_manager  # the target's reservation
        posix = [r for r in rows if r["holder"]["manager"] == "another lock manager"]
        assert [r["holder"]["pid"] for r in posix] == [locker.pid]
        text = status(here, workdir).stdout
        assert f"{disks[0]}  exclusive  held by domain vm-here" in text
        assert f"another lock manager (pid {locker.pid})" in text
        assert "vm-there" in text and "reserved" in text
        assert other.pid is not None
    finally:
        locker.kill()
        locker.wait()


def test_nothing_held(host: Host, workdir: str) -> None:
    out = status(host, workdir)
    assert out.returncode == 0 and "no lease is held in the fcntl lockspace" in out.stdout


def test_a_bad_configuration_is_named(workdir: str) -> None:
    conf = os.path.join(workdir, "bad.toml")
    with open(conf, "w") as f:
        f.write("lockspace = 3\n")
    out = subprocess.run([*LOCKFSM, "status", "--config", conf], capture_output=True, text=True)
    assert out.returncode == 2 and "'lockspace'" in out.stderr and conf in out.stderr


def test_every_command_says_what_it_does_in_one_line() -> None:
    p = cli.parser()
    assert p.description and "\n" not in p.description
    actions = [a for a in p._actions if a.dest == "command"]
    choices = actions[0].choices  # type: ignore[union-attr]
    assert set(choices) >= {"demo", "spec", "diagrams", "status"}  # type: ignore[operator]
    for name, sub in choices.items():  # type: ignore[union-attr]
        helps = [c.help for c in actions[0]._choices_actions if c.dest == name]  # type: ignore[union-attr]
        assert helps and helps[0] and "\n" not in helps[0], name
        assert sub.format_help().startswith("usage: lockfsm " + name)
