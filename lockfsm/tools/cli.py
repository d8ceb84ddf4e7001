"""``lockfsm``: the command line (demo, spec, status)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from lockfsm.tools import demo

    return demo.main(stand_in=args.stand_in, pause=args.pause)


def _spec_gen(args: argparse.Namespace) -> int:
    from lockfsm.tools import generate

    for path in generate.write_generated(Path(args.specs) if args.specs else None):
        print(f"wrote {path}")
    return 0


def _spec_check(args: argparse.Namespace) -> int:
    from lockfsm.tools import model, modelcheck, spec

    specs_dir = Path(args.specs) if args.specs else spec.default_specs_dir()
    specs = spec.load_all(specs_dir)
    failed = False
    for hosts in args.hosts or modelcheck.HOSTS:
        text = model.generate(specs, hosts)
        committed = modelcheck.model_path(specs_dir, hosts)
        if not committed.exists() or committed.read_text() != text:
            print(f"{committed} is stale: run `lockfsm spec gen` (checking the tables' model)")
            failed = True
        verdict = modelcheck.check(text, hosts)
        print(verdict.report())
        failed |= not verdict.ok
    return 1 if failed else 0


def _diagrams(args: argparse.Namespace) -> int:
    from lockfsm.tools import diagrams

    return diagrams.main(args.out, args.record)


def _status(args: argparse.Namespace) -> int:
    from lockfsm.tools import status

    return status.main(args.driver, args.config, args.run_dir, args.json)


def _config(args: argparse.Namespace) -> int:
    from lockfsm.daemon import config
    from lockfsm.errors import LockFSMError

    try:
        if args.check:
            config.load_for(args.driver, args.check)
            print(f"{args.check}: a valid configuration of the {args.driver} driver")
        else:
            print(config.example(args.driver))
    except LockFSMError as e:
        print(f"lockfsm config: {e}", file=sys.stderr)
        return 2
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lockfsm", description="Disk leases for virtual machines, as explicit state machines."
    )
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run one guest's life on the fcntl backend, step by step")
    d.add_argument(
        "--stand-in",
        action="store_true",
        help="run stand-in guest processes even where QEMU is installed",
    )
    d.add_argument(
        "--pause",
        action="store_true",
        help="stop after the hot-plug until Enter, to look at the lockspace with `lockfsm status`",
    )
    d.set_defaults(func=_demo)
    s = sub.add_parser("spec", help="work with the protocol tables in specs/")
    ssub = s.add_subparsers(dest="spec_command", required=True)
    g = ssub.add_parser("gen", help="regenerate lockfsm/_tables.py and the models from specs/")
    g.add_argument("--specs", help="the specs directory (default: the source tree's)")
    g.set_defaults(func=_spec_gen)
    c = ssub.add_parser(
        "check", help="model-check the tables with spin (S1, S3, L1 for 2 and 3 hosts)"
    )
    c.add_argument("--specs", help="the specs directory (default: the source tree's)")
    c.add_argument("--hosts", type=int, action="append", help="only this many hosts (repeatable)")
    c.set_defaults(func=_spec_check)
    dg = sub.add_parser("diagrams", help="draw every table and a recorded migration into diagrams/")
    dg.add_argument("--out", help="the output directory (default: the source tree's diagrams/)")
    dg.add_argument("--record", action="store_true", help="record a new migration run first")
    dg.set_defaults(func=_diagrams)
    cf = sub.add_parser(
        "config", help="print a driver's documented configuration file, or check one"
    )
    cf.add_argument("driver", help="fcntl, sanlock, etcd or nop")
    cf.add_argument("--check", metavar="FILE", help="check FILE instead of printing the example")
    cf.set_defaults(func=_config)
    st = sub.add_parser(
        "status", help="list the leases of a lockspace: resource, mode, holder, since"
    )
    st.add_argument(
        "--driver", default="fcntl", help="the backend: fcntl (default), sanlock, etcd, nop"
    )
    st.add_argument("--config", help="the driver's configuration file (TOML)")
    st.add_argument(
        "--run-dir", help="this host's supervisors' run directory (default: the driver's)"
    )
    st.add_argument("--json", action="store_true", help="print JSON for machines")
    st.set_defaults(func=_status)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
