"""``lockfsm fuzz``: the two-host race machines run against an operator's own deployment.

Three stand-in hosts (A, B and a rogue C) drive one stand-in guest, on scratch disks, through
every daemon call in any order, crashes and restarts, on the operator's lock service; after every
step the invariants of DESIGN.md (S1-S5, L1) are judged from what the service itself says.  The
machines are those of the test suite (:mod:`lockfsm.fuzz.machine`, :mod:`lockfsm.fuzz.etcd`,
:mod:`lockfsm.fuzz.sanlock`).

What it touches, and nothing else:

* fcntl: a new directory ``lockfsm-fuzz-*`` in the configuration's ``lockspace_dir`` (the shared
  file system), holding the examples' lease files and disks; removed at the end;
* etcd: three lease agents of its own (hosts ``fuzz-<tag>-A/B/C``, run dirs under /tmp) on the
  configuration's cluster and credentials, with the lockspace prefix ``<prefix>fuzz-<tag>/``,
  which must be empty; the agents' leases are revoked and every key under that prefix deleted
  at the end.  The operator's own agent, run dir and keys are never used;
* sanlock: three private sanlock daemons of its own (host_ids 1-3, unprivileged, no watchdog,
  run dirs under /tmp) on a scratch lockspace in a new directory ``lockfsm-fuzz-*`` of the
  configuration's ``lease_dir``; stopped and removed at the end.  The host's own sanlock daemon
  and lockspaces are never used;
* the supervisors' run dirs and control sockets under /tmp.

Hypothesis runs in rounds of :data:`ROUND` examples, round ``r`` with seed ``seed + r``, until
``--minutes`` have passed (the round under way finishes).  Exit status: 0 no violation found, 1 a
violation (or another failure of the machine) found, printed with its shrunk program and the
command that replays it, 2 a usage or set-up error (one line on stderr), 130 interrupted.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from lockfsm.errors import BackendError, InvalidArgument, LockFSMError

EXIT_CLEAN, EXIT_FOUND, EXIT_USAGE = 0, 1, 2
DRIVERS = ("fcntl", "etcd", "sanlock")
DIRECTORY = {"fcntl": "lockspace_dir", "sanlock": "lease_dir"}  # where the scratch directory goes
ROUND = 10  # examples a hypothesis run (one seed); the time limit is checked between rounds
STEPS = 20  # steps an example at most (the test suite's ci profile)
AGENT_TTL = 4  # the scratch agents' lease TTL, seconds
BLOB = re.compile(r"@reproduce_failure\('([^']+)', b'([^']+)'\)")
INVARIANT = re.compile(r"^(S\d|L\d|model|kernel)\b")


@dataclass
class Progress:
    """What the run has done so far, printed a line per example."""

    out: TextIO
    started: float = field(default_factory=time.monotonic)
    examples: int = 0
    steps: int = 0
    violations: int = 0
    rounds: int = 0

    def line(self) -> str:
        from lockfsm.fuzz import machine

        pairs = {(a, b) for a, b, _ in machine.REACHED}
        elapsed = int(time.monotonic() - self.started)
        return (
            f"[{elapsed // 60}:{elapsed % 60:02d}] examples {self.examples}, steps {self.steps}, "
            f"states covered: {len(pairs)} (A, B) pairs, {len(machine.REACHED)} (A, B, call) "
            f"triples; violations {self.violations}"
        )

    def show(self) -> None:
        print(self.line(), file=self.out, flush=True)


class Scratch:
    """The operator's deployment, seen through scratch names only: the machine class to run
    (its world set), what it uses (for the first line), and how to clean up."""

    machine: type[Any]
    what: str

    def close(self) -> None:
        raise NotImplementedError


class FcntlScratch(Scratch):
    """A new directory in the configuration's lockspace_dir; every example's lockspace and
    disks are made in it."""

    def __init__(self, conf: dict[str, Any]) -> None:
        from lockfsm.fuzz.machine import TwoHosts

        self.dir = _scratch_dir(conf["lockspace_dir"], "lockspace_dir")
        self.machine = type("FcntlRace", (TwoHosts,), {"SCRATCH": self.dir})
        self.what = f"fcntl, scratch directory {self.dir}"

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class EtcdScratch(Scratch):
    """Three lease agents of its own on the configuration's cluster, under a fresh prefix."""

    def __init__(self, conf: dict[str, Any]) -> None:
        from lockfsm.backends.etcd import credentials, parse_endpoint
        from lockfsm.backends.etcd.client import SyncEtcd
        from lockfsm.fuzz.etcd import Agent, EtcdTwoHosts
        from lockfsm.fuzz.machine import HANDOFF_TIMEOUT

        tag = secrets.token_hex(4)
        self.prefix = f"{conf['prefix']}fuzz-{tag}/"
        self.dir = tempfile.mkdtemp(prefix="lfz", dir="/tmp")
        self.agents: list[Any] = []
        self.configs: dict[str, dict[str, Any]] = {}
        keys = ("endpoints", "ca_file", "cert_file", "key_file", "user", "password_file")
        service = {k: conf[k] for k in keys if conf.get(k)}
        self.db = SyncEtcd([parse_endpoint(e) for e in conf["endpoints"]], 2.0, credentials(conf))
        try:
            try:
                found = self.db.prefix(self.prefix.encode())
            except Exception as e:
                raise BackendError(f"etcd at {', '.join(conf['endpoints'])}: {e}") from e
            if found:  # a fresh random tag: never, unless someone else uses the name
                raise InvalidArgument(f"the scratch prefix {self.prefix!r} is not empty: refused")
            for name in "ABC":
                run_dir = os.path.join(self.dir, name)
                config = {
                    **service,
                    "ttl": AGENT_TTL,
                    "host_name": f"fuzz-{tag}-{name}",
                    "prefix": self.prefix,
                    "agent_socket": os.path.join(run_dir, "agent.sock"),
                }
                try:
                    self.agents.append(Agent({"run_dir": run_dir, **config}))
                except AssertionError as e:
                    raise BackendError(f"a scratch lease agent did not start: {e}") from e
                self.configs[name] = {"run_dir": run_dir, **config}
        except BaseException:
            self.close()
            raise
        handoff = HANDOFF_TIMEOUT
        world = self

        class World:
            prefix = world.prefix
            db = world.db

            @staticmethod
            def host(name: str) -> Any:
                from lockfsm.embed.standin import Host

                config = dict(world.configs[name])
                run_dir = config.pop("run_dir")
                return Host("etcd", run_dir, handoff_timeout=handoff, **config)

        self.machine = type("EtcdRace", (EtcdTwoHosts,), {"WORLD": World()})
        self.what = f"etcd at {', '.join(conf['endpoints'])}, scratch prefix {self.prefix!r}"

    def close(self) -> None:
        from lockfsm.backends.etcd.client import delete

        for agent in self.agents:
            agent.release()
        try:
            for kv in self.db.prefix(self.prefix.encode()):  # only the scratch prefix's keys
                self.db.txn([], [delete(kv.key)])
        except Exception as e:
            print(
                f"lockfsm fuzz: could not delete the keys under {self.prefix!r}: {e}",
                file=sys.stderr,
            )
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class SanlockScratch(Scratch):
    """Three private sanlock daemons of its own (host_ids 1-3, unprivileged, no watchdog, run
    dirs under /tmp) on a scratch lockspace in a new directory of the configuration's lease_dir:
    two simulated hosts need two host_ids, so two daemons; the host's own daemon and lockspace
    are never used."""

    def __init__(self, conf: dict[str, Any]) -> None:
        from lockfsm.fuzz import sanlock_daemons
        from lockfsm.fuzz.sanlock import SanlockTwoHosts

        missing = sanlock_daemons.missing()
        if missing is not None:
            raise InvalidArgument(f"lockfsm fuzz --driver sanlock needs {missing} installed")
        self.dir = _scratch_dir(conf["lease_dir"], "lease_dir")
        try:
            self.cluster = sanlock_daemons.new_cluster(3, lease_dir=self.dir)
        except (RuntimeError, OSError, LockFSMError) as e:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise BackendError(f"the scratch sanlock daemons did not start: {e}") from e
        self.machine = type("SanlockRace", (SanlockTwoHosts,), {"CLUSTER": self.cluster})
        self.what = (
            f"sanlock, three private daemons (host_ids 1-3) on a scratch lockspace in {self.dir}"
        )

    def close(self) -> None:
        from lockfsm.fuzz import sanlock_daemons

        sanlock_daemons.close(self.cluster)
        shutil.rmtree(self.dir, ignore_errors=True)


def _scratch_dir(parent: str, key: str) -> str:
    """A new ``lockfsm-fuzz-*`` directory in ``parent`` (the configuration's ``key``).  Raises
    InvalidArgument naming it if it cannot be made."""
    if not os.path.isdir(parent):
        raise InvalidArgument(f"{key} {parent!r}: no such directory")
    try:
        return tempfile.mkdtemp(prefix="lockfsm-fuzz-", dir=parent)
    except OSError as e:
        raise InvalidArgument(
            f"{key} {parent!r}: cannot make a scratch directory in it: {e.strerror}"
        ) from e


def scratch_for(driver: str, config: str | None) -> Scratch:
    """The scratch world of ``driver`` from its configuration file (the driver's defaults if
    None).  Raises InvalidArgument (a bad configuration, a scratch place that cannot be made)
    and BackendError (the lock service does not answer)."""
    from lockfsm.daemon import config as configuration

    if driver not in DRIVERS:
        raise InvalidArgument(f"--driver {driver!r}: lockfsm fuzz runs on {', '.join(DRIVERS)}")
    if config is not None and not os.path.isfile(config):
        raise InvalidArgument(f"--config {config!r}: no such file")
    if driver == "sanlock" and config is None:  # host_id is required, and not needed here
        conf = {"lease_dir": _directory_given(None, "sanlock", "lease_dir")}
    else:
        if driver in DIRECTORY:  # the configuration's check would make a missing directory
            _directory_given(config, driver, DIRECTORY[driver])
        conf = configuration.load_for(driver, config if config is not None else {})
    if driver == "fcntl":
        return FcntlScratch(conf)
    return EtcdScratch(conf) if driver == "etcd" else SanlockScratch(conf)


def _directory_given(config: str | None, driver: str, key: str) -> str:
    """The directory ``config``'s ``key`` names (or the driver's default), which must exist.
    Raises InvalidArgument naming it if not (or if the file is not TOML)."""
    import tomllib

    from lockfsm import backends

    given: object = None
    if config is not None:
        try:
            with open(config, "rb") as f:
                given = tomllib.load(f).get(key)
        except tomllib.TOMLDecodeError as e:
            raise InvalidArgument(f"--config {config!r}: not TOML: {e}") from e
    if given is None:
        given = backends.module(driver).BACKEND.config_keys[key].default()
    if not isinstance(given, str) or not os.path.isdir(given):
        raise InvalidArgument(f"{key} {given!r}: no such directory")
    return given


def counted(machine: type[Any], progress: Progress) -> type[Any]:
    """``machine`` counting its examples and daemon calls into ``progress``."""

    def record(self: Any, call: str, side: Any) -> None:
        progress.steps += 1
        machine.record(self, call, side)

    def teardown(self: Any) -> None:
        try:
            machine.teardown(self)
        finally:
            progress.examples += 1
            progress.show()

    return type(machine.__name__, (machine,), {"record": record, "teardown": teardown})


def run_round(machine: type[Any], seed: int | None, replay: str | None, shrink: bool) -> None:
    """One hypothesis run of ``machine``: :data:`ROUND` examples from ``seed``, or the one
    program of ``replay`` (a reproduce_failure blob)."""
    import hypothesis
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis.stateful import run_state_machine_as_test

    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]
    if replay is not None:
        machine = hypothesis.reproduce_failure(hypothesis.__version__, replay.encode())(machine)
    elif seed is not None:
        machine = hypothesis.seed(seed)(machine)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=ROUND,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            derandomize=False,
            print_blob=True,
            phases=phases,
            report_multiple_bugs=False,
            suppress_health_check=list(HealthCheck),
        ),
    )


def report(
    error: BaseException, command: Callable[[str], str], replay: str | None, out: TextIO
) -> None:
    """A failure of the machine: what failed, the program, and the command that replays it."""
    notes = [str(n) for n in getattr(error, "__notes__", [])]
    message = str(error).strip() or type(error).__name__
    kind = "violation" if INVARIANT.match(message) else f"failure ({type(error).__name__})"
    print(f"\n{kind}: {message}", file=out)
    program = [n for n in notes if not n.lstrip().startswith("You can reproduce")]
    if program:
        print("the program (shrunk unless --no-shrink):", file=out)
        for line in program:
            print(f"    {line}", file=out)
    blob = next((m for n in notes if (m := BLOB.search(n))), None)
    if blob is not None:
        print(f"replay it (hypothesis {blob.group(1)}): {command(blob.group(2))}", file=out)
    elif replay is not None:
        print(f"the program is the one replayed (above): {command(replay)}", file=out)
    else:
        print("no replay blob: hypothesis did not give one for this failure", file=out)
    out.flush()


def fuzz(
    driver: str,
    config: str | None = None,
    minutes: float = 5.0,
    seed: int | None = None,
    replay: str | None = None,
    shrink: bool = True,
    out: TextIO = sys.stdout,
) -> int:
    """Run the race machine of ``driver`` against the deployment ``config`` describes for
    ``minutes`` (or replay one program); the exit status (module docstring).  Raises
    InvalidArgument (a bad value or configuration, hypothesis missing) and BackendError (the
    lock service cannot be used); nothing is made before the arguments are checked."""
    if not minutes > 0:
        raise InvalidArgument(f"--minutes {minutes}: must be more than 0")
    if seed is not None and seed < 0:
        raise InvalidArgument(f"--seed {seed}: must be 0 or more")
    if replay is not None and not re.fullmatch(r"[A-Za-z0-9+/=]+", replay):
        raise InvalidArgument(f"--replay {replay!r}: not a reproduce_failure blob")
    try:
        import hypothesis  # noqa: F401
    except ImportError as e:
        raise InvalidArgument("lockfsm fuzz needs hypothesis: pip install 'lockfsm[fuzz]'") from e
    from hypothesis.errors import FlakyStrategyDefinition

    base_seed = random.randrange(1 << 32) if seed is None else seed
    scratch = scratch_for(driver, config)
    progress = Progress(out)
    given = f" --config {shlex.quote(config)}" if config is not None else ""

    def command(blob: str) -> str:
        return f"lockfsm fuzz --driver {driver}{given} --replay {blob}"

    try:
        machine = counted(scratch.machine, progress)
        print(f"lockfsm fuzz: {scratch.what}", file=out)
        if replay is not None:
            print("replaying one program", file=out, flush=True)
        else:
            print(
                f"seed {base_seed} (this run again: lockfsm fuzz --driver {driver}{given} "
                f"--minutes {minutes:g} --seed {base_seed}); {ROUND} examples a round, "
                f"round r on seed {base_seed}+r",
                file=out,
                flush=True,
            )
        deadline = progress.started + minutes * 60
        while True:
            try:
                run_round(machine, base_seed + progress.rounds, replay, shrink)
            except FlakyStrategyDefinition as e:
                # The machine's draws depend on what real processes did: a replay of an example
                # drew differently.  Not a finding; the round ends.
                print(
                    f"round {progress.rounds}: hypothesis could not replay an example ({e}); "
                    "next round",
                    file=out,
                )
            except AssertionError as e:
                progress.violations += 1
                report(e, command, replay, out)
                return EXIT_FOUND
            except Exception as e:  # a daemon call raised what no rule expects: a finding too
                if replay is not None and type(e).__name__ == "DidNotReproduce":
                    print(
                        f"the program did not fail this time (it went another way: {e})", file=out
                    )
                    return EXIT_CLEAN
                report(e, command, replay, out)
                return EXIT_FOUND
            progress.rounds += 1
            if replay is not None:
                print("the program passed this time (real processes' timing differs)", file=out)
                return EXIT_CLEAN
            if time.monotonic() >= deadline:
                break
        progress.show()
        print(
            f"no violation found in {progress.examples} examples ({progress.rounds} rounds)",
            file=out,
        )
        return EXIT_CLEAN
    finally:
        scratch.close()


def add_arguments(parser: Any) -> None:
    """The options of ``lockfsm fuzz`` (argparse)."""
    parser.add_argument("--driver", required=True, choices=DRIVERS, help="the lock service to fuzz")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the driver's configuration file (the deployment: etcd endpoints "
        "and credentials, fcntl lockspace_dir); the driver's defaults if "
        "not given",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=5.0,
        help="how long to run (default 5; the round under way finishes)",
    )
    parser.add_argument(
        "--seed", type=int, help="the first round's hypothesis seed (default: random, printed)"
    )
    parser.add_argument(
        "--replay",
        metavar="BLOB",
        help="run only the program of a violation (its blob, as printed)",
    )
    parser.add_argument(
        "--no-shrink",
        dest="shrink",
        action="store_false",
        help="print a failing program as found, without shrinking it (faster)",
    )
