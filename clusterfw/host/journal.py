"""The daemon's log: structured journal entries, or plain lines on stderr.

How this works
--------------
Every entry is a message plus optional fields: ``NODE``, ``EPOCH``,
``TERM``, ``LEVEL``, ``TRANSITION`` (and ``REASON``).  Three sinks, chosen
once at start:

1. ``systemd.journal.send`` when systemd-python is importable and stderr is
   connected to the journal (``$JOURNAL_STREAM``);
2. the journal's native datagram protocol on ``/run/systemd/journal/socket``
   under the same condition, when systemd-python is missing;
3. otherwise one line on stderr: ``clusterfw[n1] warning: message
   (EPOCH=3 TERM=1)``.

Every message and field value is escaped first (``printable``: a newline
becomes ``\\n``, ESC ``\\x1b``, ...): a lock name, a node name or a reason
taken from a client or the disk can neither split an entry into two nor
send a terminal escape sequence to whoever reads the log.

Nothing here may be called while holding the daemon's core lock (writing a
log line can block).  Calls are serialised by a lock of their own.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any

from clusterfw.core.text import printable

JOURNAL_SOCKET = "/run/systemd/journal/socket"
PRIORITIES = {"critical": 2, "error": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}


def _journal_send() -> Any:
    try:
        from systemd import journal  # type: ignore[import-not-found,attr-defined,unused-ignore]
    except ImportError:
        return None
    return journal.send


def stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream or ":" not in stream:
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    device, _, inode = stream.partition(":")
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


class Journal:
    def __init__(self, node: str, *, debug: bool = False, use_journal: bool | None = None,
                 identifier: str = "clusterfw") -> None:
        self.node = node
        self.identifier = identifier  # SYSLOG_IDENTIFIER, and the name on stderr lines
        self.debug_enabled = debug
        self._lock = threading.Lock()
        self._send = None
        self._socket: socket.socket | None = None
        if use_journal is None:
            use_journal = stderr_is_journal()
        if use_journal:
            self._send = _journal_send()
            if self._send is None and os.path.exists(JOURNAL_SOCKET):
                try:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                except OSError:
                    self._socket = None

    def log(self, priority: str, message: str, **fields: Any) -> None:
        if priority == "debug" and not self.debug_enabled:
            return
        message = printable(message)
        fields = {k: printable(v) for k, v in fields.items() if v is not None}
        with self._lock:
            if self._send is not None:
                try:
                    self._send(message, PRIORITY=str(PRIORITIES[priority]), SYSLOG_IDENTIFIER=self.identifier,
                               NODE=self.node, **{k: str(v) for k, v in fields.items()})
                    return
                except Exception:  # noqa: BLE001 - fall back to stderr
                    pass
            if self._socket is not None and self._native(priority, message, fields):
                return
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            stamp = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
            line = f"{stamp} {self.identifier}[{self.node}] {priority}: {message}" + (f" ({extra})" if extra else "")
            try:
                print(line, file=sys.stderr, flush=True)
            except (OSError, ValueError):
                pass

    def _native(self, priority: str, message: str, fields: dict[str, Any]) -> bool:
        entries = {"MESSAGE": message, "PRIORITY": str(PRIORITIES[priority]), "SYSLOG_IDENTIFIER": self.identifier,
                   "NODE": self.node, **{k: str(v) for k, v in fields.items()}}
        data = bytearray()
        for key, value in entries.items():
            raw = str(value).encode("utf-8", "replace")
            if b"\n" in raw:
                data += key.encode() + b"\n" + len(raw).to_bytes(8, "little") + raw + b"\n"
            else:
                data += key.encode() + b"=" + raw + b"\n"
        try:
            assert self._socket is not None
            self._socket.sendto(bytes(data), JOURNAL_SOCKET)
            return True
        except OSError:
            return False

    def critical(self, message: str, **fields: Any) -> None:
        self.log("critical", message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self.log("error", message, **fields)

    def warning(self, message: str, **fields: Any) -> None:
        self.log("warning", message, **fields)

    def notice(self, message: str, **fields: Any) -> None:
        self.log("notice", message, **fields)

    def info(self, message: str, **fields: Any) -> None:
        self.log("info", message, **fields)

    def debug(self, message: str, **fields: Any) -> None:
        self.log("debug", message, **fields)
