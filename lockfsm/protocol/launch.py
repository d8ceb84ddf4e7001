"""The launch spec: what a daemon tells the supervisor it runs, and the one schema both ends use.

The daemon makes a :class:`LaunchSpec` (``LockManager.supervisor_args``) and runs
``[supervisor_path, *spec.argv(), "--", *guest_argv]``; the supervisor reads it back with
:meth:`LaunchSpec.parse_argv`.  The spec travels as one JSON word after ``--launch`` (the words
``--name`` and ``--uuid`` before it are there for ``ps`` readers and for the lock services'
holder descriptions).  Light: no attrs, the supervisor imports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from lockfsm.errors import show
from lockfsm.protocol import wire

#: Lock-failure policies (specs/lock_failure.toml).
POLICIES = ("poweroff", "pause", "ignore")
#: Launch modes: a fresh start, or the target of an incoming migration.
MODES = ("start", "incoming")

#: How a supervisor's command line names its program: the console script or the module.
SUPERVISOR_NAMES = ("lockfsm-supervisor", "lockfsm.supervisor")

USAGE = "usage: lockfsm-supervisor --launch JSON [--name N --uuid U] -- GUEST..."


class LaunchSpec:
    """One launch of a supervisor: its driver and configuration, the guest's identity, the mode,
    the resources (each with the leases the daemon named for it) and, for a migration target,
    the migration."""

    __slots__ = (
        "config",
        "driver",
        "id",
        "launch",
        "lock_failure",
        "migration",
        "mode",
        "name",
        "resources",
        "uuid",
    )

    def __init__(
        self,
        *,
        driver: str,
        config: Mapping[str, Any],
        launch: str,
        uuid: str | None,
        name: str | None,
        id: int | None,
        mode: str = "start",
        lock_failure: str | None = None,
        migration: Mapping[str, Any] | None = None,
        resources: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.driver = driver
        self.config = dict(config)
        self.launch = launch
        self.uuid = uuid
        self.name = name
        self.id = id
        self.mode = mode
        self.lock_failure = lock_failure
        self.migration = dict(migration) if migration is not None else None
        self.resources = [dict(r) for r in resources]
        self._check()

    def _check(self) -> None:
        """Raise ValueError naming the first field that is wrong."""
        if not wire.LAUNCH.fullmatch(str(self.launch)):
            raise ValueError(f"launch id {show(self.launch)} is malformed")
        if not isinstance(self.driver, str) or not isinstance(self.config, dict):
            raise ValueError("a launch needs a driver name and its configuration")
        if self.mode not in MODES:
            raise ValueError(f"launch mode {show(self.mode)} is unknown")
        if self.lock_failure is not None and self.lock_failure not in POLICIES:
            raise ValueError(f"lock-failure policy {show(self.lock_failure)} is unknown")
        if (self.mode == "incoming") != (self.migration is not None):
            raise ValueError("an incoming launch, and only one, names its migration")
        for res in self.resources:
            wire.check_resource(res)

    def policy(self) -> str:
        """The domain's lock-failure policy: its own, or the driver's default."""
        return str(self.lock_failure or self.config["lock_failure"])

    def to_json(self) -> dict[str, Any]:
        return {
            "v": wire.PROTOCOL,
            "driver": self.driver,
            "config": self.config,
            "launch": self.launch,
            "uuid": self.uuid,
            "name": self.name,
            "id": self.id,
            "mode": self.mode,
            "lock_failure": self.lock_failure,
            "migration": self.migration,
            "resources": self.resources,
        }

    @classmethod
    def from_json(cls, raw: Any) -> LaunchSpec:
        """The spec a ``--launch`` word carries.  Raises ValueError."""
        if not isinstance(raw, dict) or raw.get("v") != wire.PROTOCOL:
            raise ValueError("--launch is not a launch of this lockfsm version")
        try:
            return cls(**{k: v for k, v in raw.items() if k != "v"})
        except TypeError as e:
            raise ValueError(f"--launch has unknown or missing fields: {e}") from None

    def argv(self) -> list[str]:
        """The supervisor's arguments before ``--``."""
        return [
            *("--name", str(self.name), "--uuid", str(self.uuid)),
            *("--launch", json.dumps(self.to_json())),
        ]

    @classmethod
    def parse_argv(cls, argv: Sequence[str]) -> tuple[LaunchSpec, list[str]]:
        """``--launch <json> [--name N --uuid U] -- guest...`` -> (spec, guest argv).
        Raises ValueError (InvalidArgument, a ValueError, for a bad resource)."""
        if "--" not in argv:
            raise ValueError(USAGE)
        cut = list(argv).index("--")
        opts, guest = list(argv[:cut]), list(argv[cut + 1 :])
        if not guest:
            raise ValueError("no guest command after '--'")
        if len(opts) % 2 or "--launch" not in opts[::2]:
            raise ValueError("options must be '--key value' pairs and include --launch")
        try:
            raw = json.loads(opts[opts.index("--launch") + 1])
        except ValueError:
            raise ValueError("--launch is not JSON text") from None
        return cls.from_json(raw), guest

    @classmethod
    def of_process(cls, argv: Sequence[str]) -> LaunchSpec | None:
        """The spec in a supervisor's command line (``/proc/<pid>/cmdline``, or this process's
        ``sys.argv``), or None if it has none or it does not parse."""
        try:
            return cls.parse_argv(argv)[0]
        except ValueError:
            return None
