"""The hardware watchdog (``/dev/watchdog``): opening the device arms it, a
byte written feeds it, and the magic 'V' written before closing disarms it
(without ``nowayout``).  When to feed and when to stop for good is the
daemon's rule (node/fencing.py: ``should_feed``, the fence steps)."""
from __future__ import annotations

import fcntl
import os
import struct
from typing import Callable

WDIOC_GETTIMEOUT = 0x80045707


class Watchdog:
    """A watchdog device (``/dev/watchdog``) fed while the node is healthy."""

    def __init__(self, path: str | None, log: Callable[[str, str], None]) -> None:
        self.path = path
        self._log = log
        self._fd: int | None = None
        self._fenced = False
        self.timeout_s: int | None = None
        if path is not None:
            self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                raw = fcntl.ioctl(self._fd, WDIOC_GETTIMEOUT, struct.pack("i", 0))
                self.timeout_s = struct.unpack("i", raw)[0]
            except OSError:
                self.timeout_s = None  # not a watchdog driver (a file in tests)

    def feed(self) -> None:
        if self._fd is None or self._fenced:
            return
        try:
            os.write(self._fd, b"\0")
        except OSError as exc:
            self._log("error", f"cannot feed the watchdog {self.path}: {exc}")

    def fence(self) -> None:
        """Stop feeding for good; never disarm."""
        self._fenced = True

    def close_gracefully(self) -> None:
        """A graceful stop: disarm with the magic close (unless fenced)."""
        if self._fd is None:
            return
        if not self._fenced:
            try:
                os.write(self._fd, b"V")
            except OSError:
                pass
        os.close(self._fd)
        self._fd = None
