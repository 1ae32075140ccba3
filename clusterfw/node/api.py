"""The local API server: a Unix stream socket, one selector thread.

How this works
--------------
One thread runs a ``selectors`` loop over the listening socket, every
client connection and a wake-up pipe.  Requests are parsed
(``protocol.parse_request``) and handed to the daemon's ``handle``, which
returns the reply; it must not block (it may take the core lock for a
moment).  Other threads *push* messages (notifications, leave progress) with
``push``: they are queued under a small lock and the pipe wakes the loop,
which appends them to the connection's output buffer.

Who may do what is decided from the peer's credentials (``SO_PEERCRED``):
anyone may ask for ``status``; ``leave``, ``register`` and ``ack`` need uid
0, the daemon's own uid, or membership of the group ``clusterfw`` (when it
exists).

Bounds: at most ``CLIENTS_MAX`` connections (the next one gets an error and
is closed); a message (line) of at most ``MESSAGE_BYTES_MAX`` bytes (a longer
one gets an error and the connection is closed, as the stream cannot be
resynchronised); at most ``OUTPUT_BYTES_MAX`` bytes queued per connection (a
client that does not read is dropped).  Nothing a client sends can raise out
of the loop: every message gets a reply, ``{"ok":false,"error":...}`` when it
is malformed, oversized, out of order or unauthorised.
"""
from __future__ import annotations

import errno
import grp
import os
import pwd
import selectors
import socket
import stat
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from . import protocol

CLIENTS_MAX = 64
LISTEN_BACKLOG = 128  # connections the kernel queues while the loop is busy
OUTPUT_BYTES_MAX = 1 << 20
RECV_BYTES = 65536
ADMIN_GROUP = "clusterfw"


@dataclass
class Peer:
    """One connection as the handler sees it."""

    conn_id: int
    pid: int
    uid: int
    gid: int
    privileged: bool
    role: str = "client"  # "client" | "subsystem" | "watcher"


class Handler(Protocol):
    def handle(self, peer: Peer, request: protocol.Request) -> dict[str, Any]: ...

    def disconnected(self, peer: Peer) -> None: ...


@dataclass
class _Conn:
    peer: Peer
    sock: socket.socket
    rbuf: bytearray = field(default_factory=bytearray)
    wbuf: bytearray = field(default_factory=bytearray)
    close_after_flush: bool = False


def is_privileged(uid: int, gid: int) -> bool:
    if uid == 0 or uid == os.geteuid():
        return True
    try:
        group = grp.getgrnam(ADMIN_GROUP)
    except KeyError:
        return False
    if gid == group.gr_gid:
        return True
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    if user.pw_name in group.gr_mem:
        return True
    try:
        return group.gr_gid in os.getgrouplist(user.pw_name, user.pw_gid)
    except OSError:
        return False


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


class SocketInUse(Exception):
    pass


class ApiServer:
    def __init__(self, path: str, handler: Handler, log: Callable[[str, str], None],
                 clients_max: int = CLIENTS_MAX) -> None:
        self.path = path
        self.handler = handler
        self._log = log
        self.clients_max = clients_max
        self._selector = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}
        self._next_id = 1
        self._pushes: deque[tuple[int | str | None, bytes]] = deque()
        self._push_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = False
        self._stopped = threading.Event()
        self._flush_deadline = 0.0
        self._inode: tuple[int, int] | None = None

    # ---------------------------------------------------------------- set-up
    def start(self) -> None:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        self._remove_stale()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o111)  # srw-rw-rw-: anyone may connect (and ask for status)
        try:
            listener.bind(self.path)
        finally:
            os.umask(old_umask)
        listener.listen(LISTEN_BACKLOG)
        listener.setblocking(False)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, "listen")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name="api", daemon=True)
        self._thread.start()

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketInUse(f"{self.path} exists and is not a socket: remove it or choose another --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                os.unlink(self.path)  # nobody listens: left behind by a dead daemon
                return
            raise SocketInUse(f"cannot check {self.path}: {exc}") from None
        finally:
            probe.close()
        raise SocketInUse(f"another daemon is listening on {self.path}: stop it, or give this one "
                          f"another --socket")

    # ------------------------------------------------------------ other threads
    def push(self, conn_id: int, message: dict[str, Any]) -> bool:
        """Queue ``message`` for one connection; False if it is gone."""
        if conn_id not in self._conns:
            return False
        return self._queue(conn_id, protocol.encode(message))

    def broadcast(self, message: dict[str, Any], role: str) -> None:
        """Queue ``message`` for every connection with ``role`` (as of when
        the loop thread sends it)."""
        self._queue(role, protocol.encode(message))

    def _queue(self, target: int | str | None, data: bytes) -> bool:
        with self._push_lock:
            self._pushes.append((target, data))
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the loop is already due to wake
        return True

    def close(self, flush_timeout_s: float = 1.0) -> None:
        """Flush what is queued (bounded), close every connection, remove the
        socket file (only if it is still ours)."""
        self._flush_deadline = time.monotonic() + flush_timeout_s
        self._stop = True
        self._queue(None, b"")
        if self._thread is not None:
            self._thread.join(flush_timeout_s + 1.0)
        self.unlink()

    def unlink(self) -> None:
        try:
            st = os.lstat(self.path)
            if self._inode == (st.st_dev, st.st_ino):
                os.unlink(self.path)
        except OSError:
            pass

    # ----------------------------------------------------------------- loop
    def _run(self) -> None:
        try:
            while True:
                if self._stop and (not any(c.wbuf for c in self._conns.values())
                                   or time.monotonic() >= self._flush_deadline):
                    break
                for key, mask in self._selector.select(timeout=0.1 if self._stop else 1.0):
                    try:
                        if key.data == "listen":
                            self._accept()
                        elif key.data == "wake":
                            self._drain_wake()
                        else:
                            self._service(key.data, mask)
                    except Exception as exc:  # noqa: BLE001 - a bug must not kill the API
                        self._log("error", f"api: internal error: {type(exc).__name__}: {exc}")
                        if isinstance(key.data, int):
                            self._drop(key.data)
                self._drain_wake()
        finally:
            for conn_id in list(self._conns):
                self._drop(conn_id, notify=False)
            if self._listener is not None:
                self._listener.close()
            self._stopped.set()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._log("warning", f"api: accept failed: {exc}")
                return
            sock.setblocking(False)
            if len(self._conns) >= self.clients_max:
                try:
                    sock.send(protocol.encode(protocol.error(
                        f"too many clients ({self.clients_max}): try again later")))
                except OSError:
                    pass
                sock.close()
                continue
            try:
                pid, uid, gid = peer_credentials(sock)
            except OSError:
                sock.close()
                continue
            conn_id = self._next_id
            self._next_id += 1
            peer = Peer(conn_id, pid, uid, gid, is_privileged(uid, gid))
            self._conns[conn_id] = _Conn(peer, sock)
            self._selector.register(sock, selectors.EVENT_READ, conn_id)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._push_lock:
            pushes, self._pushes = self._pushes, deque()
        for target, data in pushes:
            if target is None or not data:
                continue
            if isinstance(target, str):
                conns = [c for c in self._conns.values() if c.peer.role == target]
            else:
                conns = [self._conns[target]] if target in self._conns else []
            for conn in conns:
                if conn.peer.conn_id in self._conns and not conn.close_after_flush:
                    self._send(conn, data)

    def _send(self, conn: _Conn, data: bytes) -> None:
        if len(conn.wbuf) + len(data) > OUTPUT_BYTES_MAX:
            self._log("warning", f"api: client pid {conn.peer.pid} does not read its messages "
                                 f"({len(conn.wbuf)} bytes queued): dropped")
            self._drop(conn.peer.conn_id)
            return
        conn.wbuf += data
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        while conn.wbuf:
            try:
                sent = conn.sock.send(conn.wbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(conn.peer.conn_id)
                return
            del conn.wbuf[:sent]
        if not conn.wbuf and conn.close_after_flush:
            self._drop(conn.peer.conn_id)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.wbuf else 0)
        if conn.close_after_flush:
            events = selectors.EVENT_WRITE
        try:
            self._selector.modify(conn.sock, events, conn.peer.conn_id)
        except (KeyError, ValueError):
            pass

    def _drop(self, conn_id: int, notify: bool = True) -> None:
        conn = self._conns.pop(conn_id, None)
        if conn is None:
            return
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        if notify:
            try:
                self.handler.disconnected(conn.peer)
            except Exception as exc:  # noqa: BLE001
                self._log("error", f"api: disconnect handler failed: {type(exc).__name__}: {exc}")

    def _service(self, conn_id: int, mask: int) -> None:
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
            if conn_id not in self._conns:
                return
        if not mask & selectors.EVENT_READ or conn.close_after_flush:
            return
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn_id)
            return
        if not data:
            self._drop(conn_id)
            return
        conn.rbuf += data
        while conn_id in self._conns and not conn.close_after_flush:
            newline = conn.rbuf.find(b"\n")
            if newline < 0:
                if len(conn.rbuf) >= protocol.MESSAGE_BYTES_MAX:
                    self._reply_and_close(conn, protocol.error(
                        f"message larger than {protocol.MESSAGE_BYTES_MAX} bytes (or no newline): closing"))
                return
            line = bytes(conn.rbuf[:newline])
            del conn.rbuf[:newline + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line.strip():
                continue
            self._send(conn, protocol.encode(self._answer(conn.peer, line)))

    def _answer(self, peer: Peer, line: bytes) -> dict[str, Any]:
        if len(line) + 1 > protocol.MESSAGE_BYTES_MAX:
            return protocol.error(f"message larger than {protocol.MESSAGE_BYTES_MAX} bytes")
        try:
            request = protocol.parse_request(line)
        except protocol.ProtocolError as exc:
            return protocol.error(str(exc))
        if request.op in protocol.PRIVILEGED_OPS and not peer.privileged:
            return protocol.error(f"permission denied: '{request.op}' needs root or membership of group "
                                  f"'{ADMIN_GROUP}' (your uid is {peer.uid})", request.op)
        try:
            return self.handler.handle(peer, request)
        except Exception as exc:  # noqa: BLE001 - never crash on a request
            self._log("error", f"api: handling '{request.op}' failed: {type(exc).__name__}: {exc}")
            return protocol.error(f"internal error handling '{request.op}': {type(exc).__name__}", request.op)

    def _reply_and_close(self, conn: _Conn, message: dict[str, Any]) -> None:
        conn.rbuf.clear()
        conn.wbuf += protocol.encode(message)
        conn.close_after_flush = True
        self._flush(conn)
