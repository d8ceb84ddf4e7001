"""The daemon's side of a supervisor's control socket: one request, one reply, logged.

A :class:`SupervisorClient` serves one manager.  It knows the run directory's conventions
(sockets, records, the ``dom-<uuid>`` pointer) and what it means when no supervisor answers:
still starting, exited (its record says how), or killed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from lockfsm.errors import BackendError, LeaseLost
from lockfsm.protocol import rundir, tables, trace, wire

log_control = logging.getLogger("lockfsm.control")  # one line per request to a supervisor

#: First and longest wait between attempts to reach a supervisor that is starting (a start takes
#: ~70 ms: a longer wait would be noticed late).
POLL = (0.001, 0.004)
#: How long a supervisor that has ended (its record says so) may take to exit once its control
#: socket is closed: it only writes its last record and returns.
EXITING = 5.0
#: A request that reached no supervisor (one still starting, or gone): not a message of the
#: protocol, so not recorded.
UNREACHED = ("FileNotFoundError", "ConnectionRefusedError", "ConnectionResetError")


class SupervisorClient:
    """Requests to the supervisors of one manager, in ``run_dir``; ``label()`` names the guest
    in errors and log lines."""

    def __init__(self, run_dir: str, label: Callable[[], str]) -> None:
        self.run_dir = run_dir
        self.label = label

    def send(self, launch: str, request: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        """:func:`wire.call` to this launch's supervisor, logged (one line per request).
        Raises what wire.call raises."""
        started = time.monotonic()
        outcome = "ok"
        sent = time.monotonic_ns()
        reply: dict[str, Any] = {}
        try:
            reply = wire.call(rundir.socket_path(self.run_dir, launch), request, timeout)
            return reply
        except BaseException as e:
            outcome = type(e).__name__
            raise
        finally:
            if trace.on() and outcome not in UNREACHED:
                self._trace(launch, request, reply, outcome, sent)
            log_control.debug(
                "request domain=%s op=%s launch=%s result=%s duration_ms=%.3f",
                self.label(),
                request.get("op"),
                launch,
                outcome,
                (time.monotonic() - started) * 1000,
            )

    def _trace(
        self,
        launch: str,
        request: Mapping[str, Any],
        reply: Mapping[str, Any],
        outcome: str,
        sent: int,
    ) -> None:
        carries = ""
        if "resource" in request:
            carries = str(request["resource"]["path"])
        elif "migration" in request:
            carries = f"migration={request['migration']}"
        elif "timeout" in request:
            carries = f"timeout={request['timeout']:g}s"
        answer = outcome
        if outcome == "ok" and reply.get("state"):
            answer = f"ok ({reply['state']})"
        trace.emit(
            "control",
            run_dir=self.run_dir,
            launch=launch,
            op=request.get("op"),
            carries=carries,
            sent=sent,
            outcome=answer,
        )

    def call(self, launch: str, request: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        """One request to a supervisor that must be running.  Raises the reply's error;
        LeaseLost if it is gone after losing a lease; BackendError if it is gone otherwise or
        does not answer in time."""
        try:
            return self.send(launch, request, timeout)
        except (FileNotFoundError, ConnectionError) as e:
            record = rundir.read_record(self.run_dir, launch)
            if record is not None and record.get("failure"):
                raise LeaseLost(wire.lost_message(record)) from None
            raise BackendError(f"the supervisor of {self.label()!r} is gone ({e})") from None
        except TimeoutError:
            raise BackendError(f"the supervisor of {self.label()!r} did not answer") from None

    def reach(self, launch: str, request: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        """Ask the supervisor of ``launch``, waiting up to ``timeout`` for it to come up.  If it
        has exited, raise what its record says (its refusal, or that the guest exited); if it
        was killed, or never came, BackendError."""
        deadline = time.monotonic() + timeout
        delay = POLL[0]
        while True:
            try:
                return self.send(launch, request, timeout)
            except (FileNotFoundError, ConnectionError, TimeoutError):
                record = rundir.read_record(self.run_dir, launch)
                if record and record.get("state") in tables.SUPERVISOR.terminal:
                    rundir.forget(self.run_dir, launch, record.get("uuid"))
                    self._raise_ended(record)
                if record and not rundir.supervisor_alive(record, launch):
                    raise BackendError(
                        f"the supervisor of {self.label()!r} (pid {record.get('pid')}) is gone: "
                        "killed, its guest died with it and its leases are free"
                    ) from None
                if time.monotonic() >= deadline:
                    raise BackendError(
                        f"no supervisor of {self.label()!r} answered within {timeout:g} s (was "
                        f"it run as [supervisor_path, *supervisor_args, '--', guest...]?)"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, POLL[1])

    def _raise_ended(self, record: Mapping[str, Any]) -> None:
        error = record.get("error")
        if error:
            wire.raise_reply(error)
        raise BackendError(
            f"the guest of {self.label()!r} has exited (status {record.get('status')}); "
            "its leases are released"
        )

    def find(self, uuid: str, timeout: float) -> dict[str, Any]:
        """The hello of the supervisor ``dom-<uuid>`` names (ATTACH).  Raises BackendError if
        none is known or none answers."""
        launch = rundir.pointed(self.run_dir, uuid)
        if launch is None:
            raise BackendError(f"no supervisor of uuid {uuid} is known in {self.run_dir}")
        return self.reach(launch, {"op": "hello"}, min(timeout, 5.0))

    def health(self, launch: str) -> dict[str, Any] | None:
        """The lease loss the supervisor reports (from its record once it has exited), or None.
        Raises BackendError if it is gone without a loss."""
        try:
            info = self.call(launch, {"op": "hello"}, 5.0)
        except (BackendError, LeaseLost):
            record = rundir.read_record(self.run_dir, launch)
            if record is None or not record.get("failure"):
                raise
            info = record
        failure: dict[str, Any] | None = info.get("failure")
        return failure

    def shutdown(self, launch: str, gen: int, grace: float, uuid: str | None) -> None:
        """Ask the supervisor to stop the guest and wait until it has released everything.
        Succeeds when it is gone already (the kernel or the supervisor released every lease),
        or is exiting (its record says it ended: a lease lost under ``poweroff``, a refusal).
        Raises BackendError if it runs but does not answer, or does not stop in time."""
        request = {"op": "shutdown", "gen": gen, "grace": grace}
        try:
            self.send(launch, request, grace + 30.0)
        except (FileNotFoundError, ConnectionError):
            record = rundir.read_record(self.run_dir, launch)
            if record is not None and not self._gone(record, launch, EXITING):
                raise BackendError(
                    f"the supervisor of {self.label()!r} (pid {record['pid']}) runs but does not "
                    "answer on its control socket"
                ) from None
        except TimeoutError:
            raise BackendError(f"the supervisor of {self.label()!r} did not stop in time") from None
        self.forget(launch, uuid)

    def _gone(self, record: Mapping[str, Any], launch: str, wait: float) -> bool:
        """Whether the supervisor of ``record`` is gone, or goes within ``wait`` s because it
        has ended already (its socket closes before the process exits)."""
        deadline = time.monotonic() + wait
        delay = POLL[0]
        while rundir.supervisor_alive(record, launch):
            if record.get("state") not in tables.SUPERVISOR.terminal:
                return False
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, POLL[1])
            record = rundir.read_record(self.run_dir, launch) or record
        return True

    def exited(self, launch: str) -> bool:
        """Whether the supervisor of ``launch`` ran and is gone (its record is left)."""
        record = rundir.read_record(self.run_dir, launch)
        return record is not None and not rundir.supervisor_alive(record, launch)

    def forget(self, launch: str, uuid: str | None) -> None:
        """Remove a finished launch's files."""
        rundir.forget(self.run_dir, launch, uuid)
