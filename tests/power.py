"""The fuzzing's power, measured: each planted breakage (tests/breakage/sitecustomize.py) under N
independent hypothesis seeds at a profile (``ci`` by default), and the coverage of (state of A,
state of B, call) triples each run reached.

    nice -n 19 .venv/bin/python -m tests.power --seeds 20            # every breakage, and none
    nice -n 19 .venv/bin/python -m tests.power --seeds 5 --only target-ignores-conflicts none

Each run is ``pytest <the breakage's stateful test> --hypothesis-seed=SEED`` in a subprocess with
the breakage switched on (as tests/test_bites.py does), the generate phase only (no shrinking:
the question is whether and when a run fails, not the shrunk program) and no example database,
stopping at the first failure.  Per breakage it reports how many runs failed on an invariant
(a failure that names none counts as a miss and is shown), and the examples each needed (the
machines built up to and including the failing one).  ``none`` runs the unbroken protocol: it must
never fail (a failure there is a false alarm) and gives the coverage of a whole run.

Coverage: the triples a run started a step from (lockfsm/fuzz/machine.py records them) against
every reachable one of A's and B's calls (tests/support/reach.py explores the machine's model
exhaustively), for the (A, B) state pairs and for the triples.  The plugin half of this module
(``-p tests.power``) is what the subprocess loads.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CAUGHT_BY = re.compile(r"AssertionError: (S\d|L\d|model|kernel)\b")
FALSIFYING = re.compile(r"^E?\s*(AssertionError: .*)$", re.M)

# -- the plugin half (loaded in the subprocess with -p tests.power) -----------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Generate only, no database, stop at the first failure."""
    from hypothesis import Phase, settings

    for item in items:
        cls = getattr(item, "cls", None)
        if cls is not None and isinstance(getattr(cls, "settings", None), settings):
            cls.settings = settings(
                cls.settings, phases=[Phase.generate], database=None, report_multiple_bugs=False
            )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = os.environ.get("LOCKFSM_POWER_OUT")
    if not out:
        return
    from lockfsm.fuzz import machine as two_hosts

    record = {"examples": two_hosts.EXAMPLES[0], "reached": sorted(two_hosts.REACHED)}
    Path(out).write_text(json.dumps(record))


# -- the runner half ----------------------------------------------------------------------------

STATEFUL = {
    "": "tests/test_stateful_migration.py",
    "etcd-": "tests/test_stateful_etcd.py",
    "sanlock-": "tests/test_stateful_sanlock.py",
}


def stateful_of(breakage: str) -> str:
    """The stateful test that a breakage is for (by its name's prefix)."""
    for prefix, path in sorted(STATEFUL.items(), reverse=True):
        if prefix and breakage.startswith(prefix):
            return path
    return STATEFUL[""]


def run_one(breakage: str, seed: int, profile: str, timeout: float) -> dict[str, Any]:
    """One run: whether it failed, on what, after how many examples, what it covered."""
    with tempfile.TemporaryDirectory(prefix="lfpow") as tmp:
        out = os.path.join(tmp, "out.json")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "breakage"), str(ROOT)]),
            "LOCKFSM_HYPOTHESIS_PROFILE": profile,
            "LOCKFSM_POWER_OUT": out,
            # The seed must count, in CI too (where hypothesis derandomizes by default).
            "LOCKFSM_HYPOTHESIS_DERANDOMIZE": "0",
        }
        env.pop("LOCKFSM_BREAK", None)
        if breakage != "none":
            env["LOCKFSM_BREAK"] = breakage
        command = [sys.executable, "-m", "pytest", stateful_of(breakage), "-q", "-x"]
        command += ["-p", "no:cacheprovider", "-p", "tests.power", f"--hypothesis-seed={seed}"]
        began = time.monotonic()
        run = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # on a timeout the run's whole group goes
        )
        try:
            output, _ = run.communicate(timeout=timeout)
            code = run.returncode
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.communicate()
            code, output = -1, f"timed out after {timeout} s"
        seconds = time.monotonic() - began
        record = json.loads(Path(out).read_text()) if os.path.exists(out) else {}
    caught = list(dict.fromkeys(CAUGHT_BY.findall(output)))
    first = FALSIFYING.search(output)
    return {
        "breakage": breakage,
        "seed": seed,
        "code": code,
        "failed": code == 1,
        "caught_by": caught,
        "why": first.group(1)[:200] if first else output[-300:],
        "examples": record.get("examples"),
        "reached": [tuple(t) for t in record.get("reached", [])],
        "seconds": round(seconds, 1),
        "skipped": code == 0 and " skipped" in output and " passed" not in output,
    }


def coverage(reached: Sequence[tuple[str, str, str]]) -> tuple[float, float, int]:
    """(pairs %, triples %, triples outside the reachable set) of one run, A's and B's calls."""
    reachable = reachable_triples()
    mine = {(a, b, c) for a, b, c in reached if not c.startswith("C:")}
    pairs = {(a, b) for a, b, _ in reachable}
    got_pairs = {(a, b) for a, b, _ in mine} & pairs
    return (
        100 * len(got_pairs) / len(pairs),
        100 * len(mine & reachable) / len(reachable),
        len(mine - reachable),
    )


@functools.cache
def reachable_triples() -> frozenset[tuple[str, str, str]]:
    """tests/support/reach.py's exploration, made once (about a second)."""
    from tests.support.reach import explore

    return frozenset(explore()[1])


def summary(results: list[dict[str, Any]]) -> list[str]:
    """The README's table: one row per breakage."""
    rows = [
        "| breakage | caught | examples to catch (min / median / max) | by | pairs % | "
        "triples % | s per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["breakage"] for r in results):
        runs = [r for r in results if r["breakage"] == name]
        caught = [r for r in runs if r["failed"] and r["caught_by"]]
        needed = sorted(r["examples"] for r in caught if r["examples"])
        spread = f"{needed[0]} / {statistics.median(needed):g} / {needed[-1]}" if needed else "-"
        by = sorted({c for r in caught for c in r["caught_by"][:1]})
        covs = [coverage(r["reached"]) for r in runs]
        pairs = statistics.mean(c[0] for c in covs)
        triples = statistics.mean(c[1] for c in covs)
        secs = statistics.mean(r["seconds"] for r in runs)
        verdict = f"{len(caught)}/{len(runs)}"
        if name == "none":
            verdict = f"{len(runs) - len([r for r in runs if r['failed']])}/{len(runs)} clean"
        rows.append(
            f"| {name} | {verdict} | {spread} | {', '.join(by) or '-'} | {pairs:.1f} | "
            f"{triples:.2f} | {secs:.0f} |"
        )
    return rows


def breakages() -> list[str]:
    """The names of tests/breakage/sitecustomize.py's breakages (loaded without applying one)."""
    import importlib.util

    path = ROOT / "tests" / "breakage" / "sitecustomize.py"
    spec = importlib.util.spec_from_file_location("lockfsm_breakages", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = os.environ.pop("LOCKFSM_BREAK", None)
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is not None:
            os.environ["LOCKFSM_BREAK"] = saved
    return list(module.BREAKAGES)


def main(argv: Sequence[str] | None = None) -> int:
    names = ["none", *breakages()]
    parser = argparse.ArgumentParser(prog="python -m tests.power", description=__doc__)
    parser.add_argument("--seeds", type=int, default=20, help="runs per breakage (default 20)")
    parser.add_argument("--first-seed", type=int, default=1, help="seeds are first..first+N-1")
    parser.add_argument("--only", nargs="+", choices=names, help="these breakages (default all)")
    parser.add_argument("--profile", default="ci", help="the hypothesis profile (default ci)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--json", help="also write every run's record here")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1:
        parser.error(f"--seeds and --jobs must be at least 1, not {args.seeds}, {args.jobs}")
    wanted = [
        (b, s)
        for b in args.only or names
        for s in range(args.first_seed, args.first_seed + args.seeds)
    ]
    results: list[dict[str, Any]] = []

    def one(job: tuple[str, int]) -> dict[str, Any]:
        r = run_one(job[0], job[1], args.profile, args.timeout)
        pairs, triples, outside = coverage(r["reached"])
        state = (
            "FAILED " + (",".join(r["caught_by"]) or "(no invariant)")
            if r["failed"]
            else ("passed" if r["code"] == 0 else f"exit {r['code']}")
        )
        print(
            f"{r['breakage']} seed {r['seed']}: {state} after {r['examples']} example(s), "
            f"{r['seconds']} s, pairs {pairs:.1f}%, triples {triples:.2f}%"
            + (f", {outside} outside the reachable set" if outside else ""),
            flush=True,
        )
        if r["failed"] and (r["breakage"] == "none" or not r["caught_by"]):
            print(f"    {r['why']}", flush=True)
        return r

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, wanted))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print("\n".join(summary(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
