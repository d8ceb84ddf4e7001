"""``lockfsm``: the command line (demo, spec, diagrams, config, status, fuzz).

Exit status: 0 done; 1 the command ran and found a problem (a model-check violation, a stale
model, the demo going wrong); 2 a user error (a bad argument, path or configuration, a missing
program such as spin or gcc), said in one line on stderr; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_FOUND = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def version() -> str:
    """lockfsm's version, from the package's metadata (pyproject.toml's, the one place)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("lockfsm")
    except PackageNotFoundError:  # pragma: no cover - run from a tree that was never installed
        return "unknown"


def _demo(args: argparse.Namespace) -> int:
    from lockfsm.tools import demo

    return demo.main(stand_in=args.stand_in, pause=args.pause)


def _specs_arg(args: argparse.Namespace) -> Path | None:
    """``--specs``, which must name a directory (checked before any work or progress)."""
    from lockfsm.errors import InvalidArgument

    if args.specs is None:
        return None
    path = Path(args.specs)
    if not path.is_dir():
        raise InvalidArgument(f"--specs {args.specs}: no such directory")
    return path


def _spec_gen(args: argparse.Namespace) -> int:
    from lockfsm.tools import generate

    for path in generate.write_generated(_specs_arg(args)):
        print(f"wrote {path}")
    return 0


def _spec_check(args: argparse.Namespace) -> int:
    from lockfsm.tools import model, modelcheck, spec, term, timing

    specs_dir = _specs_arg(args) or spec.default_specs_dir()
    status = term.Status(sys.stderr)
    quiet = args.json and not status.live

    def show(stage: str, detail: str) -> None:
        if not quiet and stage != "done":  # the verdict is printed below
            status.show(stage, detail)

    show("generating", f"the models from {specs_dir}")
    specs = spec.load_all(specs_dir)
    wanted = args.model or ([f"{h}hosts" for h in args.hosts] if args.hosts else modelcheck.MODELS)
    failed = False
    results = []
    for name in wanted:
        show("generating", f"the {name} model")
        committed = modelcheck.model_path(specs_dir, name)
        if name == "timing":
            text = timing.generate(specs, timing.defaults())
            verdict = timing.check(specs, timing.defaults(), progress=show)
        else:
            hosts = int(name.removesuffix("hosts"))
            text = model.generate(specs, hosts)
            verdict = modelcheck.check(text, hosts, progress=show)
        status.done()
        stale = not committed.exists() or committed.read_text() != text
        failed |= stale or not verdict.ok
        results.append({**verdict.to_json(), "stale": stale, "model": str(committed)})
        if not args.json:
            if stale:
                print(f"{committed} is stale: run `lockfsm spec gen` (checking the tables' model)")
            print(verdict.report())
    if args.json:
        print(json.dumps({"ok": not failed, "models": results}, indent=2))
    return EXIT_FOUND if failed else 0


def _diagrams(args: argparse.Namespace) -> int:
    from lockfsm.tools import diagrams

    return diagrams.main(args.out, args.record)


def _status(args: argparse.Namespace) -> int:
    from lockfsm.tools import status

    return status.main(args.driver, args.config, args.run_dir, args.json, args.hosts)


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
        prog="lockfsm",
        description="Disk leases for virtual machines, as explicit state machines.",
        epilog="Exit status: 0 done; 1 a problem found (a model-check violation, a stale "
        "model); 2 a user error (said in one line); 130 interrupted.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
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
    g = ssub.add_parser(
        "gen",
        help="regenerate lockfsm/protocol/, the models and the package's copy from specs/ "
        "(a source checkout only)",
    )
    g.add_argument("--specs", help="the specs directory (default: the source tree's)")
    g.set_defaults(func=_spec_gen)
    c = ssub.add_parser(
        "check",
        help="model-check the tables with spin (S1, S3, L1 for 2 and 3 hosts; S1 of the timing "
        "model: lease loss and self-fencing on a clock)",
    )
    c.add_argument("--specs", help="the specs directory (default: the source tree's)")
    c.add_argument(
        "--hosts",
        type=int,
        action="append",
        choices=[2, 3],
        help="only the protocol model of this many hosts (repeatable)",
    )
    c.add_argument(
        "--model",
        action="append",
        choices=["2hosts", "3hosts", "timing"],
        help="only this model (repeatable; default: all three)",
    )
    c.add_argument("--json", action="store_true", help="print the verdicts as JSON (for CI)")
    c.set_defaults(func=_spec_check)
    dg = sub.add_parser(
        "diagrams",
        help="draw every table, the recorded runs' sequence charts and the step-through page "
        "into diagrams/",
    )
    dg.add_argument(
        "--out",
        help="the output directory (default: diagrams/ of a source checkout; required when "
        "lockfsm is installed)",
    )
    dg.add_argument("--record", action="store_true", help="record the fcntl run again first")
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
    st.add_argument(
        "--hosts",
        action="store_true",
        help="only the lockspace's hosts and whether each is alive, dead or unknown",
    )
    st.add_argument("--json", action="store_true", help="print JSON for machines")
    st.set_defaults(func=_status)
    fz = sub.add_parser(
        "fuzz",
        help="race-fuzz the migration protocol against this deployment's lock service (scratch "
        "keys and files only; needs lockfsm[fuzz]); exit 1 if a violation is found",
    )
    from lockfsm.fuzz import run as fuzz

    fuzz.add_arguments(fz)
    fz.set_defaults(func=_fuzz)
    return p


def _fuzz(args: argparse.Namespace) -> int:
    from lockfsm.fuzz import run

    return run.fuzz(args.driver, args.config, args.minutes, args.seed, args.replay, args.shrink)


def _name(args: argparse.Namespace) -> str:
    return " ".join(
        ["lockfsm", args.command, *([args.spec_command] if args.command == "spec" else [])]
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lockfsm``: see the exit statuses above."""
    from lockfsm.errors import LockFSMError

    try:
        args = parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        result: int = args.func(args)
    except (LockFSMError, OSError) as e:
        print(f"{_name(args)}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{_name(args)}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return result


if __name__ == "__main__":
    sys.exit(main())
