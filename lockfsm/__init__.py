"""lockfsm: disk leases for virtual machines, the libvirt lock-manager protocol as state machines.

The public API (names fixed by DESIGN.md's contract)::

    driver = lockfsm.load_driver("fcntl")
    mgr = driver.new_manager()
    mgr.set_parameter("uuid", ...); mgr.set_parameter("name", ...); mgr.set_parameter("id", 1)
    mgr.register_resource(lockfsm.ResourceType.DISK, "/var/lib/images/a.qcow2")
    subprocess.Popen([mgr.supervisor_path, *mgr.supervisor_args, "--", *guest_argv])
    pid = mgr.get_child()

Importing the package is cheap: the API's modules load on first use, so that the supervisor
(``lockfsm.supervisor``), which runs once per guest, pays only for what it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lockfsm.daemon.flags import NewFlags, ResourceFlags, ResourceType
from lockfsm.errors import (
    BackendError,
    IllegalTransition,
    InvalidArgument,
    LeaseConflict,
    LeaseLost,
    LockFSMError,
    Unsupported,
)

if TYPE_CHECKING:
    from lockfsm.daemon.driver import LockDriver as LockDriver
    from lockfsm.daemon.driver import load_driver as load_driver
    from lockfsm.daemon.manager import LockManager as LockManager
    from lockfsm.daemon.values import HistoryEntry as HistoryEntry
    from lockfsm.daemon.values import HostStatus as HostStatus
    from lockfsm.daemon.values import Liveness as Liveness
    from lockfsm.daemon.values import Resource as Resource
    from lockfsm.protocol.states import DomainState as DomainState

_LAZY = {
    "load_driver": "lockfsm.daemon.driver",
    "LockDriver": "lockfsm.daemon.driver",
    "LockManager": "lockfsm.daemon.manager",
    "DomainState": "lockfsm.protocol.states",
    "HistoryEntry": "lockfsm.daemon.values",
    "HostStatus": "lockfsm.daemon.values",
    "Liveness": "lockfsm.daemon.values",
    "Resource": "lockfsm.daemon.values",
}

__all__ = [
    "BackendError",
    "DomainState",
    "HistoryEntry",
    "HostStatus",
    "IllegalTransition",
    "InvalidArgument",
    "LeaseConflict",
    "LeaseLost",
    "Liveness",
    "LockDriver",
    "LockFSMError",
    "LockManager",
    "NewFlags",
    "Resource",
    "ResourceFlags",
    "ResourceType",
    "Unsupported",
    "load_driver",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":  # the package's metadata: pyproject.toml's version, one place
        from importlib.metadata import version

        return version("lockfsm")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lockfsm' has no attribute {name!r}")
