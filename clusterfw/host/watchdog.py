"""The hardware watchdog (``/dev/watchdog``): opening the device arms it, a
byte written feeds it, and the magic 'V' written before closing disarms it
(without ``nowayout``).  When to feed and when to stop for good is the
daemon's rule (node/fencing.py: ``should_feed``, the fence steps).

Its timeout is part of the safety rule: the watchdog must reset a fenced
host within the fence margin (core/timing.py: ``watchdog_timeout_max_s``).
``Watchdog.apply_timeout`` sets it with ``WDIOC_SETTIMEOUT`` and reads it
back with ``WDIOC_GETTIMEOUT``; ``timeout_problem`` (pure) says whether what
was read back keeps the rule.  Every system call on the device goes through
a ``WatchdogDevice`` (``DeviceFile`` is the real one), the seam below which
tests put a fake: a real watchdog that is not fed resets the host.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from typing import Callable, Protocol

WDIOC_SETTIMEOUT = 0xC0045706  # _IOWR('W', 6, int)
WDIOC_GETTIMEOUT = 0x80045707  # _IOR('W', 7, int)


class WatchdogDevice(Protocol):
    """What the daemon does with a watchdog device, one method a system call."""

    path: str
    stand_in: bool
    """A regular file standing in for the device (tests, the lab): it has no
    timeout to set or check."""

    def write(self, data: bytes) -> None: ...

    def get_timeout(self) -> int:
        """WDIOC_GETTIMEOUT, in seconds; raises OSError."""
        ...

    def set_timeout(self, seconds: int) -> int:
        """WDIOC_SETTIMEOUT; returns what the driver says it set (it may
        round); raises OSError when the driver refuses."""
        ...

    def close(self) -> None: ...


class DeviceFile:
    """The real device: ``os.open`` (which arms it) and ``ioctl``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        self.stand_in = stat.S_ISREG(os.fstat(self._fd).st_mode)

    def write(self, data: bytes) -> None:
        os.write(self._fd, data)

    def get_timeout(self) -> int:
        raw = fcntl.ioctl(self._fd, WDIOC_GETTIMEOUT, struct.pack("i", 0))
        value: int = struct.unpack("i", raw)[0]
        return value

    def set_timeout(self, seconds: int) -> int:
        raw = fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, struct.pack("i", seconds))
        value: int = struct.unpack("i", raw)[0]
        return value

    def close(self) -> None:
        os.close(self._fd)


def is_device(path: str) -> bool:
    """``path`` is a character device (a real watchdog, not a stand-in file)."""
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def _error(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"{name}: {exc.strerror or exc}"


def timeout_problem(path: str, timeout_s: int | None, max_s: int, fence_margin_ms: int,
                    asked_s: int | None = None, set_error: str | None = None,
                    get_error: str | None = None) -> str | None:
    """``None`` when a watchdog whose timeout reads back as ``timeout_s``
    keeps the rule (``timeout_s <= max_s``, the longest whole-second timeout
    within ``fence_margin_ms``), else why not and the fix, naming the device.
    ``asked_s``/``set_error``: what WDIOC_SETTIMEOUT was asked and how it
    failed; ``get_error``: how WDIOC_GETTIMEOUT failed (timeout unknown)."""
    rule = (f"the safety rule needs the watchdog {path} to reset a fenced host within the fence margin "
            f"({fence_margin_ms} ms), before another node may recover its work")
    if max_s < 1:
        return (f"{rule}, but watchdog timeouts are whole seconds and no timeout of 1 s or more fits: this "
                f"disk's profile has a fence margin of {fence_margin_ms} ms (the lab profile). Use a hardware "
                f"watchdog only with a disk initialised with 'clusterfw disk init --profile san', or run "
                f"without --watchdog")
    if timeout_s is None or timeout_s <= 0:
        why = f"WDIOC_GETTIMEOUT failed ({get_error})" if get_error else f"it reads back as {timeout_s}"
        return (f"{rule}, and its timeout cannot be read ({why}): is {path} a watchdog device? Give the "
                f"watchdog's device (/dev/watchdog or /dev/watchdogN), or run without --watchdog")
    if timeout_s <= max_s:
        return None
    if set_error is not None:
        tried = f"setting it to {asked_s} s failed ({set_error})"
    elif asked_s is not None:
        tried = f"asked for {asked_s} s, the driver kept {timeout_s} s"
    else:
        tried = "it was not changed"
    return (f"{rule}: its timeout is {timeout_s} s, at most {max_s} s is allowed, and {tried}. Fix: configure "
            f"the driver's timeout to at most {max_s} s (its module option, e.g. 'softdog soft_margin={max_s}', "
            f"or the firmware's setting) or use a watchdog whose timeout can be set")


class Watchdog:
    """A watchdog device (``/dev/watchdog``) fed while the node is healthy."""

    def __init__(self, path: str | None, log: Callable[[str, str], None],
                 opener: Callable[[str], WatchdogDevice] = DeviceFile) -> None:
        self.path = path
        self._log = log
        self._dev: WatchdogDevice | None = None
        self._fenced = False
        self.timeout_s: int | None = None
        if path is not None:
            self._dev = opener(path)

    @property
    def stand_in(self) -> bool:
        return self._dev is not None and self._dev.stand_in

    def apply_timeout(self, max_s: int, fence_margin_ms: int) -> str | None:
        """Set the timeout to ``max_s`` (the longest that keeps the rule)
        where the driver lets us, read it back into ``timeout_s``: ``None``
        when it keeps the rule (or there is no device, or a stand-in file),
        else the refusal (``timeout_problem``)."""
        dev = self._dev
        if dev is None or dev.stand_in:
            return None
        asked: int | None = None
        set_error: str | None = None
        if max_s >= 1:
            asked = max_s
            try:
                dev.set_timeout(max_s)
            except OSError as exc:
                set_error = _error(exc)
        get_error: str | None = None
        try:
            self.timeout_s = dev.get_timeout()
        except OSError as exc:
            self.timeout_s = None
            get_error = _error(exc)
        return timeout_problem(dev.path, self.timeout_s, max_s, fence_margin_ms, asked, set_error, get_error)

    def feed(self) -> None:
        if self._dev is None or self._fenced:
            return
        try:
            self._dev.write(b"\0")
        except OSError as exc:
            self._log("error", f"cannot feed the watchdog {self.path}: {exc}")

    def fence(self) -> None:
        """Stop feeding for good; never disarm."""
        self._fenced = True

    def close_gracefully(self) -> None:
        """A graceful stop: disarm with the magic close (unless fenced)."""
        if self._dev is None:
            return
        if not self._fenced:
            try:
                self._dev.write(b"V")
            except OSError:
                pass
        self._dev.close()
        self._dev = None
