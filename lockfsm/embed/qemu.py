"""A guest as a real QEMU runs it: its definition, its command line, and its QMP monitor.

The definition (:class:`Guest`, :class:`Disk`) is what a virt daemon keeps of a domain: identity,
disks and the lock-failure policy.  Every disk sits on one virtio-scsi controller at a fixed SCSI
id (its *slot*), because a SCSI disk leaves at once on ``device_del`` while a PCI disk waits for a
guest OS that a bare TCG guest does not have; the slot also names the disk's block nodes and
device, so a migration target started from the live definition has the same devices as its
source.

:class:`Monitor` is a QMP connection through the ``qemu.qmp`` library (the ``qemu`` extra), run on
a private asyncio loop so that synchronous daemon code can call it from any thread.  Importing
this module does not need ``qemu.qmp``; opening a monitor does.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from lockfsm.daemon.config import POLICIES
from lockfsm.daemon.flags import ResourceFlags
from lockfsm.daemon.values import check_id, check_name, check_uuid
from lockfsm.errors import InvalidArgument

if TYPE_CHECKING:
    from qemu.qmp import QMPClient

log = logging.getLogger("lockfsm.qemu")

T = TypeVar("T")

FORMATS = ("qcow2", "raw")
MAX_SLOT = 255  # SCSI ids on one virtio-scsi bus
QMP_COMMAND_TIMEOUT = 10.0


class HypervisorError(RuntimeError):
    """QEMU failed: it did not start, refused a QMP command, or its monitor is gone."""


# -- the definition ---------------------------------------------------------------------------


def _absolute(inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not os.path.isabs(value) or "\0" in value:
        raise InvalidArgument(f"disk path {value!r} must be an absolute path")


def _format(inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if value not in FORMATS:
        raise InvalidArgument(f"disk format {value!r} is not one of {', '.join(FORMATS)}")


def _slot(inst: object, attr: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SLOT
    ):
        raise InvalidArgument(f"disk slot {value!r} is not a SCSI id 0..{MAX_SLOT}")


@attrs.frozen
class Disk:
    """One disk image: ``shared`` takes a shared lease (QEMU ``share-rw``), ``readonly`` opens it
    read-only; ``slot`` is its SCSI id, given by :class:`Guest` when left out."""

    path: str = attrs.field(validator=_absolute)
    format: str = attrs.field(default="qcow2", validator=_format)
    shared: bool = False
    readonly: bool = False
    slot: int | None = attrs.field(default=None, validator=_slot)

    @property
    def flags(self) -> ResourceFlags:
        """The lock manager's resource flags for this disk."""
        flags = ResourceFlags(0)
        if self.shared:
            flags |= ResourceFlags.SHARED
        if self.readonly:
            flags |= ResourceFlags.READONLY
        return flags

    @property
    def device_id(self) -> str:
        return f"disk{self.slot}"

    def blockdevs(self) -> list[dict[str, Any]]:
        """The block nodes (protocol, then format) QEMU opens for this disk."""
        ro = {"read-only": True} if self.readonly else {}
        return [
            {"driver": "file", "filename": self.path, "node-name": f"f{self.slot}", **ro},
            {"driver": self.format, "file": f"f{self.slot}", "node-name": f"d{self.slot}", **ro},
        ]

    def device(self) -> dict[str, Any]:
        """The guest's SCSI disk on the controller ``scsi0``."""
        dev: dict[str, Any] = {
            "driver": "scsi-hd",
            "bus": "scsi0.0",
            "scsi-id": self.slot,
            "lun": 0,
            "drive": f"d{self.slot}",
            "id": self.device_id,
        }
        if self.shared:
            dev["share-rw"] = True
        return dev


def _placed(disks: Iterable[Disk | Mapping[str, Any]]) -> tuple[Disk, ...]:
    """The disks, each with a distinct slot (the lowest free one where none was given)."""
    given = [d if isinstance(d, Disk) else Disk(**d) for d in disks]
    used = [d.slot for d in given if d.slot is not None]
    if len(used) != len(set(used)):
        raise InvalidArgument(f"two disks share a slot: {sorted(used)}")
    free = iter(s for s in range(MAX_SLOT + 1) if s not in used)
    try:
        placed = tuple(d if d.slot is not None else attrs.evolve(d, slot=next(free)) for d in given)
    except StopIteration:
        raise InvalidArgument(f"more than {MAX_SLOT + 1} disks") from None
    paths = [d.path for d in placed]
    if len(paths) != len(set(paths)):
        raise InvalidArgument(f"a disk is listed twice: {sorted(paths)}")
    return placed


def _policy(inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if value not in POLICIES:
        raise InvalidArgument(f"lock_failure {value!r} is not one of {', '.join(POLICIES)}")


def _memory(inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 16 <= value <= 65536:
        raise InvalidArgument(f"memory_mb {value!r} is not 16..65536")


@attrs.frozen
class Guest:
    """A domain definition: identity, disks (the live set: hot-plugged disks are added to it),
    the lock-failure policy (``poweroff``, ``pause``, ``ignore``) and the guest's memory."""

    name: str = attrs.field(converter=check_name)
    uuid: str = attrs.field(converter=check_uuid)
    id: int = attrs.field(converter=check_id)
    disks: tuple[Disk, ...] = attrs.field(default=(), converter=_placed)
    lock_failure: str = attrs.field(default="poweroff", validator=_policy)
    memory_mb: int = attrs.field(default=32, validator=_memory)

    def disk(self, path: str) -> Disk:
        """The disk at ``path``.  Raises InvalidArgument if the guest has none there."""
        for d in self.disks:
            if d.path == path:
                return d
        raise InvalidArgument(f"guest {self.name!r} has no disk {path!r}")

    def with_disk(self, disk: Disk) -> Guest:
        """This definition plus ``disk`` (placed at the lowest free slot if it has none).

        Raises InvalidArgument if the path is already a disk of the guest or no slot is free.
        """
        return attrs.evolve(self, disks=(*self.disks, disk))

    def without_disk(self, path: str) -> Guest:
        """This definition less the disk at ``path``.  Raises InvalidArgument if there is none."""
        gone = self.disk(path)
        return attrs.evolve(self, disks=tuple(d for d in self.disks if d is not gone))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready), which :meth:`from_dict` reads back."""
        data = attrs.asdict(self)
        data["disks"] = [attrs.asdict(d) for d in self.disks]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Guest:
        """Raises InvalidArgument for a bad field, TypeError for a missing or unknown one."""
        return cls(**data)

    def argv(self, qemu: str, qmp_socket: str, incoming: bool = False) -> list[str]:
        """QEMU's command line: TCG, no default devices, CPUs stopped (``-S``) until the daemon
        sends ``cont``; with ``incoming``, waiting for ``migrate-incoming`` (``-incoming defer``).

        Raises InvalidArgument for a monitor path QEMU's option syntax cannot carry (a comma).
        """
        if "," in qmp_socket:
            raise InvalidArgument(f"QMP socket path {qmp_socket!r} contains a comma")
        args = [
            *(qemu, "-accel", "tcg", "-machine", "pc", "-m", str(self.memory_mb), "-smp", "1"),
            *("-nodefaults", "-no-user-config", "-display", "none"),
            *("-name", self.name.replace(",", ",,"), "-uuid", self.uuid),
            *("-qmp", f"unix:{qmp_socket},server=on,wait=off"),
            *("-device", json.dumps({"driver": "virtio-scsi-pci", "id": "scsi0", "addr": "0x3"})),
        ]
        for d in self.disks:
            for node in d.blockdevs():
                args += ["-blockdev", json.dumps(node)]
            args += ["-device", json.dumps(d.device())]
        args.append("-S")
        if incoming:
            args += ["-incoming", "defer"]
        return args


# -- the monitor ------------------------------------------------------------------------------


class EventLoop:
    """One asyncio loop in a daemon thread, shared by a host's monitors.  A loop still open
    when the interpreter exits closes its monitors first."""

    def __init__(self) -> None:
        self.monitors: weakref.WeakSet[Monitor] = weakref.WeakSet()
        self.loop = asyncio.new_event_loop()
        # A QEMU that dies under an open monitor leaves a reader task failed with EOFError: that
        # is news for the daemon's own calls, not for asyncio's default handler to print.
        self.loop.set_exception_handler(lambda _loop, ctx: log.debug("qmp: %s", ctx["message"]))
        self.thread = threading.Thread(target=self.loop.run_forever, name="qmp", daemon=True)
        self.thread.start()
        _OPEN.add(self)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop; raises what it raises, or TimeoutError after ``timeout``."""
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout), self.loop)
        return future.result()

    def close(self) -> None:
        """Close every monitor of the loop, then the loop.  Never raises."""
        if self.loop.is_closed():
            return
        for monitor in list(self.monitors):
            monitor.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


_OPEN: weakref.WeakSet[EventLoop] = weakref.WeakSet()


@atexit.register
def _close_open_loops() -> None:
    for loop in list(_OPEN):
        loop.close()


class Monitor:
    """A QMP connection to one QEMU, used from synchronous code.

    Every call raises HypervisorError when QEMU refuses a command, the monitor is gone, or QEMU
    does not answer within the call's timeout.
    """

    def __init__(self, loop: EventLoop, path: str, name: str) -> None:
        self.loop = loop
        self.path = path
        self.name = name
        self.client: QMPClient | None = None
        loop.monitors.add(self)

    def connect(self, timeout: float = 10.0, alive: Callable[[], bool] | None = None) -> None:
        """Connect, retrying while the socket is not there yet (QEMU creates it early in its
        start).  ``alive`` tells whether QEMU still runs: once it does not, stop trying.

        Raises HypervisorError if no connection is made within ``timeout`` or QEMU is gone.
        """
        from qemu.qmp import QMPClient, QMPError

        deadline = time.monotonic() + timeout
        while True:
            client = QMPClient(self.name)
            try:
                self.loop.run(client.connect(self.path), max(0.1, deadline - time.monotonic()))
                self.client = client
                return
            except (QMPError, OSError, TimeoutError) as e:
                reason = f"{type(e).__name__}: {e}"
            if alive is not None and not alive():
                raise HypervisorError(f"QEMU of {self.name!r} exited before its monitor answered")
            if time.monotonic() >= deadline:
                raise HypervisorError(f"no QMP monitor of {self.name!r} at {self.path} ({reason})")
            time.sleep(0.01)

    def _live(self) -> QMPClient:
        if self.client is None:
            raise HypervisorError(f"the monitor of {self.name!r} is not connected")
        return self.client

    def execute(
        self, command: str, args: Mapping[str, object] | None = None, timeout: float | None = None
    ) -> Any:
        """Run one QMP command and return its ``return`` value."""
        client = self._live()
        with self._errors(command, f"did not answer {command}"):
            return self.loop.run(
                client.execute(command, dict(args) if args else None),
                QMP_COMMAND_TIMEOUT if timeout is None else timeout,
            )

    @contextlib.contextmanager
    def _errors(self, command: str, timed_out: str) -> Iterator[None]:
        """QMP's and the loop's errors as HypervisorError, naming the guest and the command."""
        from qemu.qmp import ExecuteError, QMPError

        try:
            yield
        except ExecuteError as e:
            raise HypervisorError(f"QEMU of {self.name!r} refused {command}: {e}") from None
        except TimeoutError:
            raise HypervisorError(f"QEMU of {self.name!r} {timed_out}") from None
        except (QMPError, OSError, EOFError) as e:
            raise HypervisorError(f"the monitor of {self.name!r} is gone ({e!r})") from None

    def status(self) -> str:
        """QEMU's run state: ``running``, ``paused``, ``inmigrate``, ``postmigrate``..."""
        return str(self.execute("query-status")["status"])

    def device_del(self, device: str, timeout: float = 10.0) -> None:
        """Remove a device and return once QEMU reports it gone (``DEVICE_DELETED``)."""
        from qemu.qmp import EventListener

        client = self._live()
        listener = EventListener(("DEVICE_DELETED",))

        async def removed() -> None:
            with client.listen(listener):
                await client.execute("device_del", {"id": device})
                async for event in listener:
                    data = event["data"]
                    if isinstance(data, dict) and data.get("device") == device:
                        return

        with self._errors("device_del", f"did not remove {device}"):
            self.loop.run(removed(), timeout)

    def close(self) -> None:
        """Disconnect; a monitor whose QEMU died is closed all the same.  Never raises."""
        client, self.client = self.client, None
        if client is None:
            return
        try:
            self.loop.run(client.disconnect(), 5.0)
        except Exception as e:  # the connection is dropped either way
            log.debug("closing the monitor of %s: %r", self.name, e)
