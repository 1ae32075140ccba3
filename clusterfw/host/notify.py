"""systemd service notifications (``sd_notify``): READY=1, STATUS=, WATCHDOG=1.

How this works
--------------
With systemd-python installed, ``systemd.daemon.notify`` is used.  Without
it, a tiny fallback sends the same datagram to ``$NOTIFY_SOCKET`` (a path,
or an abstract socket when it starts with ``@``).  Without ``$NOTIFY_SOCKET``
(not started by systemd with Type=notify) every call is a no-op.  Sending
never blocks and never raises: a notification that cannot be sent is
dropped (systemd's own watchdog is the backstop for a daemon that cannot
reach it).
"""
from __future__ import annotations

import os
import socket
from typing import Callable


def _systemd_python() -> Callable[[str], object] | None:
    try:
        from systemd import daemon as systemd_daemon  # type: ignore[import-not-found,attr-defined,unused-ignore]
    except ImportError:
        return None
    return systemd_daemon.notify  # type: ignore[no-any-return]


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        self._native = _systemd_python() if environ is None else None
        self._socket: socket.socket | None = None
        self.watchdog_usec = int(env.get("WATCHDOG_USEC", "0") or 0)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> None:
        """``send(READY="1", STATUS="joined")``: one datagram of KEY=VALUE lines."""
        if not self.enabled:
            return
        text = "\n".join(f"{key}={value}" for key, value in fields.items())
        if self._native is not None:
            try:
                self._native(text)
            except Exception:  # noqa: BLE001 - best effort by contract
                pass
            return
        assert self.address is not None
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(text.encode("utf-8", "replace"), address)
        except OSError:
            pass

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status, MAINPID=str(os.getpid()))

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")

    def stopping(self, status: str) -> None:
        self.send(STOPPING="1", STATUS=status)
