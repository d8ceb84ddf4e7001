"""The guest process: forked with ``PR_SET_PDEATHSIG``, signalled, reaped through a pidfd.

The guest is forked from the supervisor's main thread, since ``PR_SET_PDEATHSIG`` fires when the
parent *thread* exits.  ``ctypes`` (for ``prctl``) is imported in the child only: the supervisor
itself never needs it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1
#: The child's status when the supervisor died before PR_SET_PDEATHSIG took effect.
EXIT_ORPHANED = 75
#: The child's status when the guest's command cannot be run (as a shell says it).
EXIT_CANNOT_RUN = 127


class GuestProcess:
    """One guest, once spawned: its pid, a pidfd that becomes readable when it exits, and its
    exit status once reaped."""

    __slots__ = ("pid", "pidfd", "status")

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.status: int | None = None

    @classmethod
    def spawn(cls, argv: Sequence[str], inherit: Sequence[int]) -> GuestProcess:
        """Fork and exec ``argv`` with PR_SET_PDEATHSIG (SIGKILL), letting it inherit the file
        descriptors ``inherit`` (and only those of the supervisor's).  Raises OSError when the
        fork or the pidfd fails; a guest that cannot be exec'ed exits 127."""
        for fd in inherit:
            os.set_inheritable(fd, True)
        parent = os.getpid()
        try:
            pid = os.fork()
            if pid == 0:  # the guest-to-be: never returns
                _become_guest(list(argv), parent)
        finally:
            for fd in inherit:
                os.set_inheritable(fd, False)
        return cls(pid, os.pidfd_open(pid))

    @property
    def exists(self) -> bool:
        """Whether the guest has not been reaped yet."""
        return self.status is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the guest, unless it has been reaped already."""
        if self.status is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass  # exited, not reaped yet: the pidfd will tell

    def kill(self) -> None:
        """SIGKILL: a killed guest executes no more."""
        self.signal(signal.SIGKILL)

    def reap(self) -> int:
        """Wait for the exited guest (its pidfd is readable) and return its status: the exit
        code, or 128 + the signal that killed it."""
        _, wait_status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(wait_status)
        os.close(self.pidfd)
        self.status = code if code >= 0 else 128 - code
        return self.status


def _become_guest(argv: list[str], parent: int) -> None:
    try:
        import ctypes  # here only: the supervisor itself never needs it

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(EXIT_ORPHANED)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        os.execvp(argv[0], argv)
    except BaseException as e:
        try:
            os.write(2, f"lockfsm-supervisor: cannot run guest: {e}\n".encode())
        finally:
            os._exit(EXIT_CANNOT_RUN)
