"""The daemon's clock (``clock_ms``), and noticing that the host was
suspended (and resumed).

How this works
--------------
The daemon's clock is CLOCK_BOOTTIME, which counts the time the host spent
suspended; CLOCK_MONOTONIC, which every timed wait in the daemon and every
block-layer timeout use, does not.  The two advance together except while
the host is suspended, so ``BOOTTIME - MONOTONIC`` grows by exactly the
time of each suspend and by nothing else.

``SuspendDetector.check()`` reads both clocks (MONOTONIC, BOOTTIME,
MONOTONIC again, so a preemption between the reads cannot pass for a
suspend: the BOOTTIME reading is compared with the midpoint of the two
MONOTONIC ones) and returns how many milliseconds the host was suspended
since the previous call when that exceeds ``threshold_ms``, else None.

Why the daemon fences on any suspend above a small threshold (default
``SUSPEND_THRESHOLD_MS``, 20 ms): every cluster-managed service was frozen
with the host and resumes with it, the hardware watchdog was stopped by the
suspend, and the other nodes may have declared this node dead meanwhile; a
resumed node cannot tell without reading the disk, and by then its services
run.  The threshold is far above the jitter of reading two clocks (a few
microseconds; a read pair that took longer than ``READ_SPREAD_MAX_MS`` is
read again) and far below any real suspend, which takes hundreds of
milliseconds at least.  It does not depend on the fence margin: a suspend
shorter than the margin still stopped the watchdog.

``clock`` can be injected (a callable returning ``(boottime_ms,
monotonic_ms)``) so tests can simulate a suspend.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

SUSPEND_THRESHOLD_MS = 20.0
READ_SPREAD_MAX_MS = 1.0
READ_TRIES = 5

Clock = Callable[[], "tuple[float, float]"]


def clock_ms() -> float:
    """The daemon's clock, in milliseconds.

    CLOCK_BOOTTIME rather than CLOCK_MONOTONIC: both never jump, but only
    BOOTTIME keeps counting while the host is suspended.  A host that was
    suspended for a minute must see that a minute passed, or it would write a
    heartbeat after the others declared it dead.
    """
    return time.clock_gettime(time.CLOCK_BOOTTIME) * 1000.0


def clock_pair() -> tuple[float, float]:
    """(CLOCK_BOOTTIME, CLOCK_MONOTONIC) in ms, read as close together as
    possible: the BOOTTIME reading against the midpoint of two MONOTONIC
    ones, retried when a preemption spread the reads."""
    best: tuple[float, float, float] | None = None
    for _ in range(READ_TRIES):
        m1 = time.clock_gettime(time.CLOCK_MONOTONIC)
        b = time.clock_gettime(time.CLOCK_BOOTTIME)
        m2 = time.clock_gettime(time.CLOCK_MONOTONIC)
        spread = (m2 - m1) * 1000.0
        if best is None or spread < best[2]:
            best = (b * 1000.0, (m1 + m2) * 500.0, spread)
        if spread <= READ_SPREAD_MAX_MS:
            break
    assert best is not None
    return best[0], best[1]


def suspended_ms(previous: tuple[float, float], now: tuple[float, float]) -> float:
    """How much more BOOTTIME than MONOTONIC advanced from ``previous`` to
    ``now`` (each ``(boottime_ms, monotonic_ms)``): the time suspended."""
    return (now[0] - previous[0]) - (now[1] - previous[1])


class SuspendDetector:
    """Thread-safe; every ``check()`` compares with the previous one."""

    def __init__(self, threshold_ms: float = SUSPEND_THRESHOLD_MS, clock: Clock = clock_pair) -> None:
        self.threshold_ms = threshold_ms
        self._clock = clock
        self._lock = threading.Lock()
        self._last = clock()
        self.total_ms = 0.0  # every suspend seen, below the threshold too

    def check(self) -> float | None:
        with self._lock:
            now = self._clock()
            gap = suspended_ms(self._last, now)
            self._last = now
            if gap > 0:
                self.total_ms += gap
            return gap if gap > self.threshold_ms else None
