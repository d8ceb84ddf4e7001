"""Run the benchmarks: ``python -m bench [--quick] [--only core,fcntl,...] [--json PATH]``.

Each group is one item of issue 8; a group that fails leaves a row saying why and the others
still run.  The table is printed at the end and the JSON written (``bench/results/latest.json``
unless ``--json`` says otherwise; a run of a subset, or a ``--quick`` one, writes
``bench/results/<groups>[-quick].json`` instead, so that latest.json is always a full run).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import REPO, Context
from bench.report import Row, revision, table, write_json

#: group name -> (module, what it measures); run in this order.
GROUPS = {
    "core": ("bench.core", "1. core overhead: a manager call, memory per manager"),
    "fcntl": ("bench.lease", "2. fcntl lease acquire+release through the backend"),
    "start": ("bench.start", "3. guest start with 4 disks, the supervisor's memory"),
    "hotplug": ("bench.hotplug", "4. hot-plug round trip over the control socket"),
    "handoff": ("bench.handoff", "5. migration handoff latency: fcntl, etcd, sanlock"),
    "scale": ("bench.scale", "6. 500-guest start storm on fcntl; etcd hosts x guests"),
    "check": ("bench.checking", "7. protocol checking: hypothesis steps/s, spin states/s"),
    "fleet": ("bench.fleet", "8. a fleet of hosts on one 3-member etcd cluster"),
    "libvirt": ("bench.libvirt", "9. side by side with libvirt: start, hot-plug, stop"),
}

RESULTS = os.path.join(REPO, "bench", "results")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--only",
        help=f"comma-separated groups to run (default: all): {', '.join(GROUPS)}",
    )
    p.add_argument("--quick", action="store_true", help="fewer repetitions, smaller storms")
    p.add_argument(
        "--spin-hosts",
        default="2",
        help="models of `lockfsm spec check` to time (default 2; the 3-host one takes minutes)",
    )
    p.add_argument(
        "--etcd-scale",
        metavar="HOSTSxGUESTS[xWINDOW]",
        help="the etcd storm's size: simulated hosts, guests on each, migrations at a time "
        "(default 8x100x50; with --quick 8x8x8)",
    )
    p.add_argument("--json", help="where to write the JSON (default: see above)")
    p.add_argument("--list", action="store_true", help="list the groups and exit")
    args = p.parse_args(argv)
    args.groups = list(GROUPS) if not args.only else args.only.split(",")
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        p.error(f"unknown group(s) {', '.join(unknown)}: known are {', '.join(GROUPS)}")
    args.etcd = None
    if args.etcd_scale:
        try:
            sizes = [int(n) for n in args.etcd_scale.lower().split("x")]
        except ValueError:
            sizes = []
        if len(sizes) not in (2, 3) or min(sizes) < 1 or sizes[0] < 2:
            p.error(f"--etcd-scale {args.etcd_scale}: give HOSTSxGUESTS[xWINDOW], 2+ hosts")
        args.etcd = (
            sizes[0],
            sizes[1],
            sizes[2] if len(sizes) == 3 else min(50, sizes[0] * sizes[1]),
        )
    return args


def run_group(name: str, ctx: Context) -> list[Row]:
    """The rows of one group; if it fails, one row saying so."""
    module = importlib.import_module(GROUPS[name][0])
    try:
        rows: list[Row] = module.run(ctx)
        return rows
    except Exception as e:  # report it, go on with the next group
        traceback.print_exc()
        return [Row(f"{name}", GROUPS[name][1], unavailable=f"failed: {type(e).__name__}: {e}")]
    finally:
        ctx.cleanup()


def default_json(args: argparse.Namespace) -> str:
    if args.json:
        return str(args.json)
    if args.groups == list(GROUPS) and not args.quick:
        return os.path.join(RESULTS, "latest.json")
    name = "-".join(args.groups) + ("-quick" if args.quick else "")
    return os.path.join(RESULTS, f"{name}.json")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        for name, (_, what) in GROUPS.items():
            print(f"{name:8s} {what}")
        return 0
    ctx = Context(
        quick=args.quick,
        spin_hosts=tuple(int(h) for h in args.spin_hosts.split(",")),
        etcd_scale=args.etcd,
    )
    rows: list[Row] = []
    started = time.monotonic()
    for name in args.groups:
        print(f"== {name}: {GROUPS[name][1]}", file=sys.stderr, flush=True)
        t = time.monotonic()
        got = run_group(name, ctx)
        rows += got
        print(f"   {len(got)} row(s) in {time.monotonic() - t:.1f} s", file=sys.stderr, flush=True)
    seconds = time.monotonic() - started
    print(table(rows))
    path = default_json(args)
    meta = {
        "command": "python -m bench" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
        "groups": args.groups,
        "quick": args.quick,
        "seconds": round(seconds, 1),
        "revision": revision(REPO),
    }
    write_json(path, rows, meta)
    print(f"\n{len(rows)} rows in {seconds:.0f} s; written to {os.path.relpath(path, REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
