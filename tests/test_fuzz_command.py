"""``lockfsm fuzz``, as an operator runs it: the race machine against a deployment given by its
configuration file (an fcntl lockspace directory; a real etcd cluster), scratch keys and files
only.  It finds a planted protocol bug (tests/breakage) and prints the program and a command that
replays it; it finds nothing on the unbroken protocol; it refuses bad input before it makes
anything; and it leaves the deployment's own files and keys as they were."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lockfsm.backends.etcd.client import SyncEtcd, put
from tests.support import ROOT
from tests.support.etcd_cluster import Cluster
from tests.support.needs import require_sanlock

BREAKAGE_DIR = Path(ROOT) / "tests" / "breakage"
REPLAY = re.compile(r"^replay it \(hypothesis [^)]+\): (lockfsm fuzz .*)$", re.M)


def fuzz(*args: str, breakage: str | None = None, timeout: float = 600) -> tuple[int, str]:
    """``lockfsm fuzz ARGS`` (with ``breakage`` planted in every process it starts): its exit
    status and its output (stdout and stderr)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BREAKAGE_DIR), str(ROOT)])}
    env.pop("LOCKFSM_BREAK", None)
    if breakage is not None:
        env["LOCKFSM_BREAK"] = breakage
    proc = subprocess.run(
        [sys.executable, "-m", "lockfsm", "fuzz", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``directory``: (mtime in ns, content)."""
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def fcntl_conf(tmp_path: Path) -> tuple[Path, Path]:
    """An operator's fcntl configuration: a lockspace directory with a lease file of their own."""
    lockspace = tmp_path / "lockspace"
    lockspace.mkdir()
    (lockspace / "0123abcd").write_bytes(b"")  # someone's lease file
    conf = tmp_path / "fcntl.toml"
    conf.write_text(f'lockspace_dir = "{lockspace}"\n')
    return conf, lockspace


def test_a_clean_run_finds_nothing_and_touches_only_its_scratch_files(
    fcntl_conf: tuple[Path, Path],
) -> None:
    conf, lockspace = fcntl_conf
    before = snapshot(lockspace)
    code, out = fuzz("--driver", "fcntl", "--config", str(conf), "--minutes", "0.05", "--seed", "3")
    assert code == 0, out
    assert "seed 3 (this run again: lockfsm fuzz --driver fcntl" in out
    assert re.search(r"examples \d+, steps \d+, states covered: \d+ \(A, B\) pairs", out), out
    assert "violations 0" in out and "no violation found" in out
    assert snapshot(lockspace) == before, "the operator's lockspace changed"
    assert sorted(os.listdir(lockspace)) == ["0123abcd"], "a scratch file was left behind"


def test_a_planted_bug_is_found_with_its_program_and_a_replay_command(
    fcntl_conf: tuple[Path, Path],
) -> None:
    """A target that ignores conflicts (S3) is found on a seed measured to find it in its first
    round; the printed command replays the program and fails the same way, and passes on the
    unbroken protocol."""
    conf, lockspace = fcntl_conf
    args = ("--driver", "fcntl", "--config", str(conf), "--minutes", "2", "--no-shrink")
    found = None
    for seed in ("7", "1", "2"):
        code, out = fuzz(*args, "--seed", seed, breakage="target-ignores-conflicts")
        if code == 1:
            found = out
            break
        assert code == 0, out
    assert found is not None, "the planted bug was not found on any of its seeds"
    assert re.search(r"^violation: S3: ", found, re.M), found
    assert "state = FcntlRace()" in found and "state.teardown()" in found
    replay = REPLAY.search(found)
    assert replay is not None, found
    command = replay.group(1).split()
    assert command[:6] == ["lockfsm", "fuzz", "--driver", "fcntl", "--config", str(conf)]
    assert command[6] == "--replay"
    code, again = fuzz(*command[2:], breakage="target-ignores-conflicts")
    assert code == 1 and "violation: S3: " in again, again
    code, clean = fuzz(*command[2:])
    assert code == 0 and "did not fail this time" in clean, clean
    assert sorted(os.listdir(lockspace)) == ["0123abcd"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--minutes", "0"], "--minutes 0"),
        (["--minutes", "-1"], "--minutes -1"),
        (["--seed", "-4"], "--seed -4"),
        (["--replay", "not a blob!"], "--replay 'not a blob!'"),
    ],
)
def test_a_bad_value_is_refused_naming_it_and_nothing_is_made(
    fcntl_conf: tuple[Path, Path], args: list[str], named: str
) -> None:
    conf, lockspace = fcntl_conf
    code, out = fuzz("--driver", "fcntl", "--config", str(conf), *args, timeout=60)
    assert code == 2, out
    assert named in out and len(out.strip().splitlines()) == 1, out
    assert sorted(os.listdir(lockspace)) == ["0123abcd"]


def test_a_bad_deployment_is_refused_naming_it(tmp_path: Path) -> None:
    code, out = fuzz("--driver", "fcntl", "--config", str(tmp_path / "none.toml"), timeout=60)
    assert code == 2 and "none.toml" in out, out
    conf = tmp_path / "fcntl.toml"
    conf.write_text(f'lockspace_dir = "{tmp_path / "missing"}"\n')
    code, out = fuzz("--driver", "fcntl", "--config", str(conf), timeout=60)
    assert code == 2 and "missing" in out and "no such directory" in out, out
    assert not (tmp_path / "missing").exists(), "the missing lockspace_dir was made"
    conf.write_text('lockspace_dir = "/tmp"\nbogus = 1\n')
    code, out = fuzz("--driver", "fcntl", "--config", str(conf), timeout=60)
    assert code == 2 and "bogus" in out, out
    code, out = fuzz("--driver", "nfs", timeout=60)
    assert code == 2 and "nfs" in out, out
    code, out = fuzz(timeout=60)
    assert code == 2 and "--driver" in out, out


def etcd_conf(tmp_path: Path, cluster: Cluster) -> Path:
    conf = tmp_path / "etcd.toml"
    endpoints = ", ".join(f'"{e}"' for e in cluster.endpoints)
    conf.write_text(f'endpoints = [{endpoints}]\nprefix = "/prod/"\nhost_name = "real"\n')
    return conf


def everything(db: SyncEtcd) -> dict[bytes, tuple[bytes, int]]:
    """Every key under the operator's prefix (the scratch prefix is under it too)."""
    return {kv.key: (kv.value, kv.mod) for kv in db.prefix(b"/prod/")}


def found_planted(
    driver: str, conf: Path, breakage: str, seeds: tuple[str, ...], machine: str
) -> None:
    """``lockfsm fuzz --driver DRIVER`` with ``breakage`` planted finds it (2 minutes a seed,
    the next seed tried if one finds nothing): a violation of an invariant, the program of
    ``machine`` and the command that replays it."""
    found = None
    for seed in seeds:
        code, out = fuzz(
            *("--driver", driver, "--config", str(conf), "--minutes", "2"),
            *("--no-shrink", "--seed", seed),
            breakage=breakage,
        )
        if code == 1:
            found = out
            break
        assert code == 0, out
    assert found is not None, f"{breakage} was not found on any of the seeds {seeds}"
    assert re.search(r"^violation: (S\d|L\d)", found, re.M), found
    assert f"state = {machine}()" in found and REPLAY.search(found), found


def test_etcd_a_planted_bug_is_found_and_only_scratch_keys_are_used(
    etcd1: Cluster, tmp_path: Path
) -> None:
    """On a real etcd holding an operator's keys: a clean run finds nothing, a take-over that
    skips the handoff check (planted in the scratch agents) is found, and afterwards the
    operator's keys are as they were and no scratch key is left."""
    conf = etcd_conf(tmp_path, etcd1)
    db = etcd1.client()
    try:
        db.txn([], [put(b"/prod/L/abc/x", b'{"pid": 1}'), put(b"/prod/H/real", b"{}")])
        before = everything(db)
        code, out = fuzz("--driver", "etcd", "--config", str(conf), "--minutes", "0.05")
        assert code == 0, out
        assert "scratch prefix '/prod/fuzz-" in out and "no violation found" in out
        assert everything(db) == before
        found_planted("etcd", conf, "etcd-takeover-skips-handoff", ("2", "3", "4"), "EtcdRace")
        assert everything(db) == before, "keys outside the scratch prefix changed or remain"
    finally:
        db.close()


def test_sanlock_a_planted_bug_is_found_and_only_scratch_files_are_used(tmp_path: Path) -> None:
    """On sanlock: three private daemons on a scratch lockspace in the configuration's lease
    directory.  A clean run finds nothing; a take-over without its lease version (planted in the
    supervisors) is found; the operator's lease files are as they were, no scratch file is left,
    and no scratch daemon lives on."""
    require_sanlock()
    lease_dir = tmp_path / "leases"
    lease_dir.mkdir()
    (lease_dir / "lockspace").write_bytes(b"\0" * 4096)  # the operator's own lockspace file
    conf = tmp_path / "sanlock.toml"
    conf.write_text(f'host_id = 1\nlease_dir = "{lease_dir}"\n')
    before = snapshot(lease_dir)
    daemons = sanlock_daemons()
    code, out = fuzz("--driver", "sanlock", "--config", str(conf), "--minutes", "0.05")
    assert code == 0, out
    assert "three private daemons" in out and "no violation found" in out, out
    assert snapshot(lease_dir) == before and sorted(os.listdir(lease_dir)) == ["lockspace"]
    found_planted(
        "sanlock", conf, "sanlock-takeover-ignores-version", ("1", "2", "3"), "SanlockRace"
    )
    assert snapshot(lease_dir) == before and sorted(os.listdir(lease_dir)) == ["lockspace"]
    assert sanlock_daemons() == daemons, "scratch sanlock daemons live on"


def sanlock_daemons() -> set[int]:
    """The pids of the sanlock daemons running now."""
    found = subprocess.run(["pgrep", "-x", "sanlock"], capture_output=True, text=True)
    return {int(pid) for pid in found.stdout.split()}
