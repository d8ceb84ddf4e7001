"""The Unix sockets lockfsm serves (a supervisor's control socket, the etcd lease agent's):
how they are made and who may talk to them.  One place for both servers.

A socket file is born mode 0600 (bound under umask 0177, then chmod'ed, whatever the caller's
umask), and each peer's credentials are read from the kernel (``SO_PEERCRED``): only the
server's own uid and root may send requests.  A peer of another uid gets one error reply and
the connection is closed.
"""

from __future__ import annotations

import os
import socket
import struct

_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def listen_unix(path: str, backlog: int) -> socket.socket:
    """A listening, non-blocking Unix stream socket at ``path``, mode 0600.

    A socket file already there is another server's if something answers on it (raises
    OSError with EADDRINUSE), and a stale one of a server that died otherwise (it is removed).
    Raises OSError when the path cannot be bound."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody answers: a stale socket file
        else:
            raise OSError(98, f"another server listens on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket file is born 0600
    try:
        sock.bind(path)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def peer(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket, as the kernel says."""
    pid, uid, _ = _CREDS.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
    return pid, uid


def refusal(uid: int) -> str | None:
    """Why a peer of ``uid`` may not send requests, or None: only this process's uid and root
    may."""
    if uid in (os.geteuid(), 0):
        return None
    return f"uid {uid} may not control this process (only uid {os.geteuid()} and root)"
