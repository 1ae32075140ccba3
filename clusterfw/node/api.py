"""The local API server: a Unix stream socket, one selector thread.

How this works
--------------
One thread runs a ``selectors`` loop over the listening socket, every
client connection and a wake-up pipe.  Requests are parsed
(``protocol.parse_request``) and handed to the daemon's ``handle``, which
returns the reply; it must not block (it may take the core lock for a
moment).  A request that needs slow work (``locks`` reads the lock area)
returns ``DEFERRED`` instead: the daemon answers it later from its own
thread with ``reply``, and the connection's next request is read only after
that answer (one request at a time per connection, so replies stay in
order).

Other threads *push* messages (lock grants and renewals, notifications)
with ``push``: the message is written to the connection's socket at once,
from the pushing thread, under a lock that guards only the output buffers
and is never held across a handler call -- a busy or flooded loop cannot
delay a lock renewal.  A push that arrives while the loop is handling a
request of the same connection waits until that request's reply is
queued, so a reply always comes before the pushes it caused (``lock-queued``
before ``granted``).  What a socket does not take at once stays in the
connection's buffer and the loop sends it when the socket is writable.
``broadcast`` (leave progress to watchers) goes through the loop.

Who may do what is decided from the peer's credentials (``SO_PEERCRED``):
anyone may ask for ``status`` and ``locks``; ``leave``, ``register``,
``ack``, ``lock`` and ``unlock`` need uid 0, the daemon's own uid, or
membership of the group ``clusterfw`` (when it exists).

Bounds: at most ``clients_max`` connections (``CLIENTS_MAX``), of which at
most ``UNPRIVILEGED_CLIENTS_MAX`` of unprivileged peers: the rest are kept
for root and the group, so no flood by another user can refuse their
``status``, ``locks``, ``leave`` or ``lock`` (the next connection over a
bound gets an error and is closed).  Unprivileged peers get at most
``UNPRIVILEGED_RATE_PER_S`` requests a second per uid (over all their
connections): the loop stops reading a connection of a uid over its rate
until the rate allows the next request, so a flood waits instead of taking
the loop's time.  A line that is not complete ``PARTIAL_LINE_TIMEOUT_S``
after its first byte gets an error and the connection is closed; so does a
connection idle for ``IDLE_TIMEOUT_S`` that has nothing outstanding: no
deferred reply, no role (subsystem, leave watcher) and nothing the handler
says it holds for it (``holds``: a lock request of ``clusterfw lock``).
A message (line) of at most ``MESSAGE_BYTES_MAX`` bytes (a longer one gets
an error and the connection is closed, as the stream cannot be
resynchronised); at most ``OUTPUT_BYTES_MAX`` bytes queued per connection
(a client that does not read is dropped).  Nothing a client sends can raise
out of the loop: every message gets a reply, ``{"ok":false,"error":...}``
when it is malformed, oversized, out of order or unauthorised.
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

CLIENTS_MAX = 128
UNPRIVILEGED_CLIENTS_MAX = 64  # of CLIENTS_MAX: the others are kept for privileged peers
UNPRIVILEGED_RATE_PER_S = 20.0  # requests a second per unprivileged uid (and a burst of as many)
PARTIAL_LINE_TIMEOUT_S = 5.0  # a line must be complete this long after its first byte
IDLE_TIMEOUT_S = 60.0  # a connection with nothing outstanding is closed after this long without a request
TIMER_S = 0.25  # the loop looks at the timeouts this often (while it has connections)
ACCEPTS_PER_TURN = 64  # a connect flood cannot keep the loop from its connections
PRIVILEGE_CACHE_S = 5.0  # is_privileged answers are reused this long per (uid, gid)
LISTEN_BACKLOG = 128  # connections the kernel queues while the loop is busy
OUTPUT_BYTES_MAX = 1 << 20
RECV_BYTES = 65536
ADMIN_GROUP = "clusterfw"


class Deferred:
    """What ``handle`` returns for a request it answers later (``reply``)."""


DEFERRED = Deferred()


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
    def handle(self, peer: Peer, request: protocol.Request) -> dict[str, Any] | Deferred: ...

    def disconnected(self, peer: Peer) -> None: ...

    def holds(self, peer: Peer) -> bool:
        """Whether something lives on this connection (a lock request), so
        that it must not be closed for being idle."""
        ...


@dataclass
class _Conn:
    peer: Peer
    sock: socket.socket
    active_at: float  # monotonic: accepted, or the last request read
    rbuf: bytearray = field(default_factory=bytearray)
    wbuf: bytearray = field(default_factory=bytearray)
    close_after_flush: bool = False
    closed: bool = False
    handling: bool = False  # the loop is inside handle() for it: pushes wait in held
    held: list[bytes] = field(default_factory=list)
    pending: bool = False  # a DEFERRED reply is outstanding: no further request is read
    paused_until: float = 0.0  # its uid is over the rate: not read until then
    partial_since: float | None = None  # monotonic: the first byte of an incomplete line
    doomed: str | None = None  # another thread found it broken: the loop drops it
    events: int = 0  # what it is registered for in the selector (0: not registered)


class _Bucket:
    """A token bucket: ``rate`` a second, at most ``rate`` saved up."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.at = now

    def take(self, now: float) -> float:
        """0.0 if a request may go now (and counts it), else the seconds
        until one may."""
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


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
                 clients_max: int = CLIENTS_MAX, unprivileged_max: int = UNPRIVILEGED_CLIENTS_MAX,
                 unprivileged_rate_per_s: float = UNPRIVILEGED_RATE_PER_S,
                 partial_line_timeout_s: float = PARTIAL_LINE_TIMEOUT_S,
                 idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.path = path
        self.handler = handler
        self._log = log
        self.clients_max = clients_max
        self.unprivileged_max = min(unprivileged_max, clients_max)
        self.unprivileged_rate_per_s = unprivileged_rate_per_s
        self.partial_line_timeout_s = partial_line_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._selector = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}
        self._next_id = 1
        self._pushes: deque[tuple[int | str | None, bytes]] = deque()
        self._push_lock = threading.Lock()
        # Guards every connection's wbuf/held/closed/pending and every send
        # and close of a connection's socket; never held across a handler call.
        self._out_lock = threading.Lock()
        self._dirty: set[int] = set()  # connections another thread changed: the loop looks at them
        self._buckets: dict[int, _Bucket] = {}  # unprivileged uid -> its rate
        self._privilege_cache: dict[tuple[int, int], tuple[bool, float]] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = False
        self._stopped = threading.Event()
        self._flush_deadline = 0.0
        self._next_timer = 0.0
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
        """Send ``message`` to one connection now (from the calling thread;
        what the socket does not take is sent by the loop); False if the
        connection is gone."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return False
        data = protocol.encode(message)
        with self._out_lock:
            if conn.closed or conn.close_after_flush:
                return False
            if conn.handling:
                conn.held.append(data)  # after the reply the loop is about to queue
                return True
            self._append(conn, data)
        self._wake_if_dirty()
        return True

    def reply(self, conn_id: int, message: dict[str, Any]) -> bool:
        """The answer to a request ``handle`` returned ``DEFERRED`` for; the
        connection's next request is read after it.  False if it is gone."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return False
        data = _encode_reply(message)
        with self._out_lock:
            if conn.closed:
                return False
            conn.pending = False
            self._append(conn, data)
            self._dirty.add(conn_id)  # the loop reads its next request
        self._wake()
        return True

    def broadcast(self, message: dict[str, Any], role: str) -> None:
        """Queue ``message`` for every connection with ``role`` (as of when
        the loop thread sends it)."""
        self._queue(role, protocol.encode(message))

    def _queue(self, target: int | str | None, data: bytes) -> bool:
        with self._push_lock:
            self._pushes.append((target, data))
        self._wake()
        return True

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the loop is already due to wake

    def _wake_if_dirty(self) -> None:
        if self._dirty and threading.current_thread() is not self._thread:
            self._wake()

    def _append(self, conn: _Conn, data: bytes) -> None:
        """Queue ``data`` and send what the socket takes; with _out_lock."""
        if conn.doomed is not None:
            return
        if len(conn.wbuf) + len(data) > OUTPUT_BYTES_MAX:
            conn.doomed = (f"client pid {conn.peer.pid} does not read its messages ({len(conn.wbuf)} bytes "
                           f"queued): dropped")
            self._dirty.add(conn.peer.conn_id)
            return
        conn.wbuf += data
        self._send_some(conn)

    def _send_some(self, conn: _Conn) -> None:
        """Send from wbuf until the socket would block; with _out_lock."""
        while conn.wbuf and conn.doomed is None:
            try:
                sent = conn.sock.send(conn.wbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                conn.doomed = ""  # the peer went away: dropped without a word
                break
            del conn.wbuf[:sent]
        if conn.wbuf or conn.doomed is not None or conn.close_after_flush:
            self._dirty.add(conn.peer.conn_id)

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
                for key, mask in self._selector.select(timeout=self._select_timeout()):
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
                self._timers()
                self._settle()
        finally:
            for conn_id in list(self._conns):
                self._drop(conn_id, notify=False)
            if self._listener is not None:
                self._listener.close()
            self._stopped.set()

    def _select_timeout(self) -> float:
        if self._stop:
            return 0.1
        if not self._conns:
            return 1.0
        now = time.monotonic()
        wake = self._next_timer
        for conn in self._conns.values():
            if conn.paused_until:
                wake = min(wake, conn.paused_until)
        return min(1.0, max(0.0, wake - now))

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._log("warning", f"api: accept failed: {exc}")
                return
            sock.setblocking(False)
            try:
                pid, uid, gid = peer_credentials(sock)
            except OSError:
                sock.close()
                continue
            privileged = self._is_privileged(uid, gid)
            refusal = None
            if len(self._conns) >= self.clients_max:
                refusal = f"too many clients ({self.clients_max}): try again later"
            elif not privileged and sum(1 for c in self._conns.values()
                                        if not c.peer.privileged) >= self.unprivileged_max:
                refusal = (f"too many clients ({self.unprivileged_max} connections of unprivileged users; the "
                           f"others are kept for root and group '{ADMIN_GROUP}'): try again later")
            if refusal is not None:
                try:
                    sock.send(protocol.encode(protocol.error(refusal)))
                except OSError:
                    pass
                sock.close()
                continue
            conn_id = self._next_id
            self._next_id += 1
            peer = Peer(conn_id, pid, uid, gid, privileged)
            conn = _Conn(peer, sock, time.monotonic())
            self._conns[conn_id] = conn
            self._update_events(conn)

    def _is_privileged(self, uid: int, gid: int) -> bool:
        now = time.monotonic()
        cached = self._privilege_cache.get((uid, gid))
        if cached is not None and cached[1] > now:
            return cached[0]
        answer = is_privileged(uid, gid)
        if len(self._privilege_cache) > 1024:
            self._privilege_cache.clear()
        self._privilege_cache[(uid, gid)] = (answer, now + PRIVILEGE_CACHE_S)
        return answer

    def _update_events(self, conn: _Conn) -> None:
        """Register what the connection waits for: reading unless it has a
        deferred reply outstanding, is over its rate or closes; writing while
        it has output queued."""
        reading = not (conn.pending or conn.paused_until or conn.close_after_flush)
        events = (selectors.EVENT_READ if reading else 0) | (selectors.EVENT_WRITE if conn.wbuf else 0)
        if events == conn.events:
            return
        try:
            if conn.events == 0:
                self._selector.register(conn.sock, events, conn.peer.conn_id)
            elif events == 0:
                self._selector.unregister(conn.sock)
            else:
                self._selector.modify(conn.sock, events, conn.peer.conn_id)
        except (KeyError, ValueError, OSError):
            pass
        conn.events = events

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
                with self._out_lock:
                    if not conn.closed and not conn.close_after_flush:
                        self._append(conn, data)

    def _settle(self) -> None:
        """Look at the connections other threads (or the loop) changed."""
        while True:
            with self._out_lock:
                dirty, self._dirty = self._dirty, set()
            if not dirty:
                return
            for conn_id in dirty:
                conn = self._conns.get(conn_id)
                if conn is None:
                    continue
                if conn.doomed is not None:
                    if conn.doomed:
                        self._log("warning", f"api: {conn.doomed}")
                    self._drop(conn_id)
                    continue
                if conn.close_after_flush and not conn.wbuf:
                    self._drop(conn_id)
                    continue
                if not conn.pending and not conn.paused_until and conn.rbuf:
                    self._lines(conn)  # requests read while it waited
                    if conn_id not in self._conns:
                        continue
                self._update_events(conn)

    def _timers(self) -> None:
        now = time.monotonic()
        resume = [c for c in self._conns.values() if c.paused_until and c.paused_until <= now]
        for conn in resume:
            conn.paused_until = 0.0
            with self._out_lock:
                self._dirty.add(conn.peer.conn_id)
        if now >= self._next_timer:
            self._next_timer = now + TIMER_S
            for conn in list(self._conns.values()):
                self._check_timeouts(conn, now)

    def _check_timeouts(self, conn: _Conn, now: float) -> None:
        if conn.close_after_flush or conn.pending or conn.paused_until:
            return
        if conn.partial_since is not None and now - conn.partial_since >= self.partial_line_timeout_s:
            self._reply_and_close(conn, protocol.error(
                f"no complete line (a JSON object and a newline) within {self.partial_line_timeout_s:g} s: "
                f"closing"))
            return
        if now - conn.active_at < self.idle_timeout_s or conn.wbuf or conn.rbuf:
            return
        if conn.peer.role != "client":
            return  # a subsystem or a leave watcher waits for pushes
        try:
            if self.handler.holds(conn.peer):
                return
        except Exception as exc:  # noqa: BLE001 - keep it rather than guess
            self._log("error", f"api: holds() failed: {type(exc).__name__}: {exc}")
            return
        self._reply_and_close(conn, protocol.error(
            f"idle for {self.idle_timeout_s:g} s with nothing outstanding: closing"))

    def _flush(self, conn: _Conn) -> None:
        with self._out_lock:
            self._send_some(conn)

    def _drop(self, conn_id: int, notify: bool = True) -> None:
        conn = self._conns.pop(conn_id, None)
        if conn is None:
            return
        if conn.events:
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.events = 0
        with self._out_lock:
            conn.closed = True
            conn.sock.close()  # under the lock: no other thread sends to a reused descriptor
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
        if not mask & selectors.EVENT_READ or conn.close_after_flush or conn.pending or conn.paused_until:
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
        self._lines(conn)
        if conn_id in self._conns:
            self._update_events(conn)

    def _lines(self, conn: _Conn) -> None:
        """Answer the complete lines in rbuf, one at a time, until one is
        deferred or the peer's uid is over its rate."""
        conn_id = conn.peer.conn_id
        while conn_id in self._conns and not conn.close_after_flush and not conn.pending:
            newline = conn.rbuf.find(b"\n")
            if newline < 0:
                if len(conn.rbuf) >= protocol.MESSAGE_BYTES_MAX:
                    self._reply_and_close(conn, protocol.error(
                        f"message larger than {protocol.MESSAGE_BYTES_MAX} bytes (or no newline): closing"))
                elif not conn.rbuf:
                    conn.partial_since = None
                elif conn.partial_since is None:
                    conn.partial_since = time.monotonic()  # the clock of PARTIAL_LINE_TIMEOUT_S starts
                return
            conn.partial_since = None  # a whole line is here (it may wait for the rate)
            if newline and conn.rbuf[:newline].strip() and not conn.peer.privileged:
                now = time.monotonic()
                bucket = self._buckets.get(conn.peer.uid)
                if bucket is None:
                    bucket = self._buckets[conn.peer.uid] = _Bucket(self.unprivileged_rate_per_s, now)
                wait = bucket.take(now)
                if wait > 0:
                    conn.paused_until = now + wait
                    return
            line = bytes(conn.rbuf[:newline])
            del conn.rbuf[:newline + 1]
            conn.active_at = time.monotonic()
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line.strip():
                continue
            with self._out_lock:
                conn.handling = True
            try:
                answer = self._answer(conn.peer, line)
            except BaseException:
                with self._out_lock:
                    conn.handling = False
                raise
            with self._out_lock:
                conn.handling = False
                held, conn.held = conn.held, []
                if not conn.closed:
                    if isinstance(answer, Deferred):
                        conn.pending = True
                    else:
                        self._append(conn, _encode_reply(answer))
                    for data in held:
                        self._append(conn, data)

    def _answer(self, peer: Peer, line: bytes) -> dict[str, Any] | Deferred:
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
        conn.partial_since = None
        with self._out_lock:
            conn.close_after_flush = True
            conn.wbuf += protocol.encode(message)  # over OUTPUT_BYTES_MAX if need be: it is the last
            self._send_some(conn)


def _encode_reply(message: dict[str, Any]) -> bytes:
    try:
        return protocol.encode(message)
    except ValueError as exc:  # a reply over the message bound
        return protocol.encode(protocol.error(f"the reply is too large to send: {exc}", message.get("op")))
