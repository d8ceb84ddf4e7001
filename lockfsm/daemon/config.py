"""Driver configuration: a mapping, or the path of a TOML file, checked key by key.

Every backend reads the keys of :data:`COMMON_KEYS`; a backend adds its own (``config_keys``).
An unknown key, or a bad value, is an InvalidArgument that names the key (and the file).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from typing import Any

from lockfsm.backends import ConfigKey
from lockfsm.errors import InvalidArgument
from lockfsm.protocol import launch
from lockfsm.protocol.paths import default_run_dir, safe_dir

POLICIES = launch.POLICIES
_MAX_RUN_DIR = 107 - len("/0123456789abcdef.sock")


def _run_dir(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a path string, not {value!r}")
    if len(value.encode()) > _MAX_RUN_DIR:
        raise ValueError(f"{value!r} is longer than {_MAX_RUN_DIR} bytes (Unix socket paths)")
    return safe_dir(value, "run_dir", 0o700)


def check_policy(value: Any) -> str:
    """A lock-failure policy.  Raises ValueError naming the value."""
    if value == "restart":
        raise ValueError(
            "'restart' is refused: a supervisor cannot restart a guest whose lease was lost "
            "safely (another host may hold the lease by then); use poweroff and let the daemon "
            "start the guest again"
        )
    if value not in POLICIES:
        raise ValueError(f"{value!r} is not one of {', '.join(POLICIES)}")
    return str(value)


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise ValueError(f"{value!r} is not a number of seconds in (0, 3600]")
    return float(value)


def _supervisor_log(value: Any) -> str:
    if value not in ("errors", "moves"):
        raise ValueError(f"{value!r} is not errors or moves")
    return str(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def _optional_bool(value: Any) -> bool | None:
    return None if value is None else _bool(value)


COMMON_KEYS: Mapping[str, ConfigKey] = {
    "run_dir": ConfigKey(
        _run_dir, default_run_dir, "where supervisors' control sockets and records live"
    ),
    "lock_failure": ConfigKey(
        check_policy,
        lambda: "poweroff",
        "what to do to a guest whose lease is lost: " + "/".join(POLICIES),
    ),
    "handoff_timeout": ConfigKey(
        _seconds,
        lambda: 30.0,
        "seconds a migration target waits for the source to give its leases up",
    ),
    "shutdown_grace": ConfigKey(
        _seconds, lambda: 10.0, "seconds between SIGTERM and SIGKILL when shutdown() stops a guest"
    ),
    "supervisor_log": ConfigKey(
        _supervisor_log,
        lambda: "errors",
        "what a supervisor writes to its stderr: errors, or moves (one line per state move too)",
    ),
    "domain_lease": ConfigKey(
        _bool,
        lambda: True,
        "take an exclusive lease on the guest's uuid too: one host runs a guest, whatever disks",
    ),
    "auto_disk_leases": ConfigKey(
        _bool,
        lambda: True,
        "take a lease for every disk (false: only explicit ResourceType.LEASE resources)",
    ),
    "require_lease_for_disks": ConfigKey(
        _optional_bool,
        lambda: None,
        "refuse a guest with disks but no lease at all (default: when auto_disk_leases is off)",
    ),
}


def load_for(driver: str, conf: object) -> dict[str, Any]:
    """The checked configuration of ``driver`` without loading it (nothing is created or
    joined beyond what the keys' own checks do).  Raises InvalidArgument."""
    from lockfsm import backends

    return load({**COMMON_KEYS, **backends.module(driver).BACKEND.config_keys}, conf)


def example(driver: str) -> str:
    """A documented configuration file for ``driver`` (every key, its default commented out),
    in the manner of libvirt's qemu-lockd.conf.  Raises InvalidArgument for an unknown driver."""
    from lockfsm import backends

    cls = backends.module(driver).BACKEND
    return _example(driver, cls.config_keys)


def _example(driver: str, keys_of_driver: Mapping[str, ConfigKey]) -> str:
    lines = [
        f"# lockfsm: configuration of the {driver} driver",
        f'# lockfsm.load_driver("{driver}", "/etc/lockfsm/{driver}.toml")',
        "#",
        "# Every key is optional unless marked required; the value shown is the default (this file",
        "# was made as root: other users' default directories are per user).  An unknown key, or a",
        "# bad value, is refused with an error naming the key and this file.",
    ]
    for title, keys in (("common to every driver", COMMON_KEYS), (driver, keys_of_driver)):
        lines += ["", f"# -- {title} " + "-" * (80 - len(title)), ""]
        for key, spec in keys.items():
            lines.append(f"# {spec.doc}")
            try:
                value = spec.default()
            except ValueError:
                lines += [f"# {key} = ...    (required)", ""]
                continue
            shown = _toml(value) if value is not None else "<unset>"
            lines += [f"# {key} = {shown}", ""]
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def load(keys: Mapping[str, ConfigKey], config: object) -> dict[str, Any]:
    """The checked configuration, defaults filled in.  ``config`` is None, a mapping, or the path
    of a TOML file.  Raises InvalidArgument naming the key (and the file)."""
    where = ""
    if config is None:
        raw: Mapping[str, Any] = {}
    elif isinstance(config, str | os.PathLike):
        where = f" in {os.fspath(config)}"
        try:
            with open(config, "rb") as f:
                raw = tomllib.load(f)
        except OSError as e:
            raise InvalidArgument(f"config file {os.fspath(config)!r}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise InvalidArgument(f"config file {os.fspath(config)!r}: {e}") from None
    elif isinstance(config, Mapping):
        raw = config
    else:
        raise InvalidArgument(f"config must be a mapping or a TOML file path, not {config!r}")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise InvalidArgument(
            f"unknown configuration key {unknown[0]!r}{where} (known: {', '.join(sorted(keys))})"
        )
    checked = {}
    for key, spec in keys.items():
        try:
            checked[key] = spec.check(raw[key] if key in raw else spec.default())
        except ValueError as e:
            raise InvalidArgument(f"configuration key {key!r}{where}: {e}") from None
    return checked
