"""The client library of the node daemon's local API.

How this works
--------------
The daemon listens on a Unix socket (default ``/run/clusterfw/clusterfw.sock``)
and speaks newline-delimited JSON, one object a line, each with ``"v": 1``
(``clusterfw/node/protocol.py``; docs/daemon.md has the reference).

``Client`` asks one-shot questions::

    from clusterfw.client import Client
    status = Client().status()          # the dict of `clusterfw status --json`
    final = Client().leave(progress=print)   # blocks until the daemon left

``Subsystem`` is an external subsystem: it registers a level and then
receives notifications, acknowledging each when its work is done::

    with Subsystem(25, "myapp", barriers=(1, 1, 1)) as sub:
        for note in sub:                 # blocks; a Notification each
            do_the_work(note)
            sub.ack(note.batch)

It must register *before* the daemon requests its join: start the daemon
with ``--wait-for-subsystem myapp``.  A subsystem that disconnects while a
notification is unacknowledged is treated as hung; it may reconnect with the
same (level, name, barriers) and gets that notification again.

A ``Subsystem`` is for one thread: ``ack`` reads the daemon's reply, and
notifications that arrive meanwhile are kept for the iterator.
"""
from __future__ import annotations

import socket
import time
from collections import deque
from typing import Any, Callable, Iterator

from clusterfw.node import protocol
from clusterfw.subsystems.base import Notification

DEFAULT_SOCKET = protocol.DEFAULT_SOCKET
DEFAULT_TIMEOUT_S = 10.0


class ClientError(Exception):
    """The daemon could not be asked, or answered with an error."""


class DaemonUnavailable(ClientError):
    """No daemon answers on the socket."""


class RequestFailed(ClientError):
    """The daemon answered ``{"ok": false, "error": ...}``."""


class Connection:
    """One connection: send objects, receive objects (bounded lines)."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(timeout_s)
        try:
            self._connect(socket_path, timeout_s)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self._sock.close()
            raise DaemonUnavailable(f"no clusterfw daemon answers on {socket_path} ({exc.strerror})") from None
        except OSError as exc:
            self._sock.close()
            raise ClientError(f"cannot connect to {socket_path}: {exc}") from None
        self._buf = bytearray()

    def _connect(self, socket_path: str, timeout_s: float | None) -> None:
        """connect(), retried while the daemon's accept queue is full (a
        Unix socket with a timeout fails with EAGAIN instead of waiting)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                self._sock.connect(socket_path)
                return
            except BlockingIOError:
                if deadline is not None and time.monotonic() > deadline:
                    raise ClientError(f"the daemon on {socket_path} accepts no connection (its queue is "
                                      f"full)") from None
                time.sleep(0.005)

    def settimeout(self, timeout_s: float | None) -> None:
        self._sock.settimeout(timeout_s)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self._sock.sendall(protocol.encode(message))
        except OSError as exc:
            raise ClientError(f"cannot send to {self.socket_path}: {exc}") from None

    def receive(self) -> dict[str, Any] | None:
        """The next message, or None when the daemon closed the connection."""
        while True:
            newline = self._buf.find(b"\n")
            if newline >= 0:
                line = bytes(self._buf[:newline])
                del self._buf[:newline + 1]
                try:
                    return protocol.decode(line)
                except protocol.ProtocolError as exc:
                    raise ClientError(f"the daemon sent a bad message: {exc}") from None
            if len(self._buf) > protocol.MESSAGE_BYTES_MAX:
                raise ClientError("the daemon sent a message over the size bound")
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                raise ClientError(f"no answer from the daemon on {self.socket_path} in time") from None
            except OSError as exc:
                raise ClientError(f"connection to {self.socket_path} failed: {exc}") from None
            if not data:
                return None
            self._buf += data

    def fileno(self) -> int:
        return self._sock.fileno()

    def has_buffered(self) -> bool:
        """A whole message was received already (select() will not tell)."""
        return b"\n" in self._buf

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check(reply: dict[str, Any] | None, op: str) -> dict[str, Any]:
    if reply is None:
        raise ClientError(f"the daemon closed the connection without answering '{op}'")
    if not reply.get("ok", False):
        raise RequestFailed(str(reply.get("error", f"'{op}' failed")))
    return reply


class Client:
    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        with Connection(self.socket_path, self.timeout_s) as conn:
            conn.send({"op": op, **fields})
            return _check(conn.receive(), op)

    def status(self) -> dict[str, Any]:
        return self.request("status")["status"]  # type: ignore[no-any-return]

    def leave(self, progress: Callable[[dict[str, Any]], None] | None = None,
              timeout_s: float | None = None) -> dict[str, Any]:
        """Ask the daemon to leave the cluster gracefully and wait until it
        did: returns the final message (``{"op": "stopped", "exit": 0, ...}``,
        or ``{"op": "fenced", ...}``).  ``progress`` gets the first reply and
        every progress message."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with Connection(self.socket_path, self.timeout_s) as conn:
            conn.send({"op": "leave"})
            first = _check(conn.receive(), "leave")
            if progress is not None:
                progress(first)
            while True:
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise ClientError(f"the node did not finish leaving within {timeout_s:.0f} s")
                    conn.settimeout(remaining)
                else:
                    conn.settimeout(None)
                message = conn.receive()
                if message is None:
                    return {"op": "closed", "reason": "the daemon closed the connection"}
                if message.get("op") == "progress":
                    if progress is not None:
                        progress(message)
                elif message.get("op") in ("stopped", "fenced"):
                    return message


class Subsystem:
    """An external subsystem registered over the socket."""

    def __init__(self, level: int, name: str, barriers: tuple[int, int, int] = (1, 1, 1),
                 socket_path: str = DEFAULT_SOCKET) -> None:
        self.level = level
        self.name = name
        self.barriers = barriers
        self.socket_path = socket_path
        self._conn: Connection | None = None
        self._inbox: deque[Notification] = deque()
        self.registration: dict[str, Any] | None = None

    def register(self) -> dict[str, Any]:
        if self._conn is None:
            self._conn = Connection(self.socket_path, DEFAULT_TIMEOUT_S)
            self._conn.send({"op": "register", "level": self.level, "name": self.name,
                             "barriers": list(self.barriers)})
            reply = self._reply("register")
            self.registration = reply
            self._conn.settimeout(None)
        assert self.registration is not None
        return self.registration

    def _reply(self, op: str) -> dict[str, Any]:
        """Read until the reply to ``op`` arrives, keeping notifications."""
        assert self._conn is not None
        while True:
            message = self._conn.receive()
            if message is None:
                raise ClientError(f"the daemon closed the connection before answering '{op}'")
            if message.get("op") == "notify" and "ok" not in message:
                self._inbox.append(Notification.from_json(message))
                continue
            return _check(message, op)

    def __iter__(self) -> Iterator[Notification]:
        self.register()
        assert self._conn is not None
        while True:
            while self._inbox:
                yield self._inbox.popleft()
            message = self._conn.receive()
            if message is None:
                return  # the daemon went away
            if message.get("op") == "notify" and "ok" not in message:
                yield Notification.from_json(message)
            elif not message.get("ok", True):
                raise RequestFailed(str(message.get("error")))

    def ack(self, batch: int) -> None:
        assert self._conn is not None, "register first"
        self._conn.settimeout(DEFAULT_TIMEOUT_S)
        self._conn.send({"op": "ack", "batch": batch})
        try:
            self._reply("ack")
        finally:
            self._conn.settimeout(None)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Subsystem:
        self.register()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Client", "ClientError", "Connection", "DaemonUnavailable", "Notification", "RequestFailed",
           "Subsystem"]
