"""The supervisor's control server: its socket, its connections, bounded messages, replies that
never stall it.

It lives in the supervisor's one selector loop.  Each whole line a peer sends is handed to the
supervisor's request handler, which returns the reply, or None to answer later (a take-over, a
shutdown that waits for the guest).  No peer can stall or kill the supervisor: connections are
bounded (:data:`MAX_CONNECTIONS`; more wait in the listen backlog), a message over
:data:`~lockfsm.protocol.wire.MAX_MESSAGE` is refused, a peer that does not take its reply within
:data:`REPLY_TIMEOUT` is dropped, and running out of file descriptors pauses accepting for a
moment instead of failing.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from lockfsm.errors import BackendError, InvalidArgument
from lockfsm.protocol import sockets, wire

MAX_CONNECTIONS = 256  # open control connections at once; more wait in the listen backlog
REPLY_TIMEOUT = 0.5  # a peer that does not take its reply for this long is dropped (a daemon
# reads its reply at once, and the kernel buffers ~200 KB of replies before a send blocks)
ACCEPT_PAUSE = 0.1  # out of descriptors: try accepting again after this long

Handler = Callable[[socket.socket, bytes], "Mapping[str, Any] | None"]


class ControlServer:
    """The listening socket at ``path`` and its connections, in ``sel``.  ``handle(conn, line)``
    answers one request; ``on_drop(conn)`` is told when a connection goes (its pending request
    is then nobody's)."""

    def __init__(
        self,
        path: str,
        sel: selectors.BaseSelector,
        handle: Handler,
        on_drop: Callable[[socket.socket], None],
    ) -> None:
        self.path = path
        self.sel = sel
        self.handle = handle
        self.on_drop = on_drop
        self.listener = sockets.listen_unix(path, MAX_CONNECTIONS)
        self.buffers: dict[socket.socket, bytes] = {}
        self.accepting = False
        self.accept_at: float | None = None  # out of descriptors: try accepting again then

    def start(self) -> None:
        """Begin serving (the listener joins the selector)."""
        self._resume()

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.listener.close()

    def timer(self) -> float | None:
        """The monotonic instant the server wants :meth:`tick` called, or None."""
        return self.accept_at

    def tick(self) -> None:
        if self.accept_at is not None and time.monotonic() >= self.accept_at:
            self.accept_at = None
            self._resume()

    def owns(self, conn: object) -> bool:
        return conn in self.buffers

    def accept(self) -> None:
        """Accept what waits; refuse a peer of another uid with one error reply."""
        while True:
            if len(self.buffers) >= MAX_CONNECTIONS:
                self._pause()  # until one of them closes
                return
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors (EMFILE, ENFILE...): the guest goes on
                print(f"lockfsm-supervisor: accept: {e.strerror}", file=sys.stderr)
                self._pause()
                self.accept_at = time.monotonic() + ACCEPT_PAUSE
                return
            why = sockets.refusal(sockets.peer(conn)[1])
            if why is not None:
                conn.settimeout(1.0)
                self.reply(conn, wire.error_reply(PermissionError(why)))
                conn.close()
                continue
            conn.setblocking(False)
            self.buffers[conn] = b""
            self.sel.register(conn, selectors.EVENT_READ, "conn")
            self.readable(conn)  # a daemon sends its request right after connecting: no wait

    def readable(self, conn: socket.socket) -> None:
        """Read what ``conn`` sent; answer each whole line."""
        try:
            chunk = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            left = self.buffers.get(conn, b"")
            if left:  # the peer stopped mid-message: say so (it may still read)
                why = f"truncated message: {len(left)} bytes without a newline"
                self.reply(conn, wire.error_reply(InvalidArgument(why)))
            if conn in self.buffers:
                self.drop(conn)
            return
        buf = self.buffers[conn] + chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            reply = self.handle(conn, line)
            if reply is not None:
                self.reply(conn, reply)
            if conn not in self.buffers:
                return  # dropped while answering (it did not read its reply)
        if len(buf) > wire.MAX_MESSAGE:
            self.reply(conn, wire.error_reply(InvalidArgument("message over the size limit")))
            self.drop(conn)
            return
        if conn in self.buffers:
            self.buffers[conn] = buf

    def reply(self, conn: socket.socket, reply: Mapping[str, Any]) -> None:
        """Send one reply; a peer that does not take it within REPLY_TIMEOUT (or is gone) is
        dropped, so no peer can stall the supervisor."""
        try:
            data = wire.encode(reply)
        except InvalidArgument as e:  # a reply over the limit: say so rather than die
            data = wire.encode(wire.error_reply(BackendError(f"reply not sent: {e}")))
        try:
            conn.setblocking(True)
            conn.settimeout(REPLY_TIMEOUT)
            conn.sendall(data)
            conn.setblocking(False)
        except OSError:
            if conn in self.buffers:
                self.drop(conn)

    def drop(self, conn: socket.socket) -> None:
        """Close a connection (its pending request, if any, is dropped too)."""
        self.on_drop(conn)
        if conn in self.buffers:
            self.sel.unregister(conn)
            del self.buffers[conn]
        conn.close()
        if self.accept_at is None:
            self._resume()

    def _pause(self) -> None:
        if self.accepting:
            self.sel.unregister(self.listener)
            self.accepting = False

    def _resume(self) -> None:
        if not self.accepting:
            self.sel.register(self.listener, selectors.EVENT_READ, "accept")
            self.accepting = True
