"""Every timeout of the protocol, derived from ``io_timeout`` and the heartbeat
interval, with the reasoning beside it.  Nothing else in clusterfw invents a
timeout for the disk protocol.

The rule that makes failover safe
---------------------------------
A node X must stop every cluster-managed service before any other node starts
recovering X's locks and services.  X cannot be asked (it may be hung, cut
off or paused), so both sides follow a clock rule instead:

* X keeps ``last_ok``: the local time at which it *issued* its most recent
  heartbeat write that then completed.  It issues a write only while the write
  would land before ``last_ok + fence_after`` even if it took the full
  ``io_timeout``.  When ``fence_after`` has passed since ``last_ok`` it fences
  itself: kills its cluster-managed units, stops feeding the watchdog, and
  writes nothing more.  Fencing completes within ``fence_margin``.
* An observer Y judges X dead only from evidence: a successful read of X's
  slot that *started* at least ``dead_after`` (on Y's clock) after the
  completion of the read in which Y first saw X's current heartbeat value.
  Every write X completed before that later read started would have been
  visible to it, so X completed no heartbeat write in that window.

Timeline (real time; both clocks may drift by up to ``clock_drift``)::

    X (observed)                               Y (observer)
    issues hb write #k at t0 (last_ok)
    write #k lands <= t0 + io_timeout          read sees #k, completes at t1 >= t0
    no further write completes ...
    fence deadline: X's clock shows
      fence_after since t0, real <= t0 + fence_after/(1-d)
    fenced by       t0 + fence_after/(1-d) + fence_margin
                                               read starts at t2, Y's clock shows
                                                 t2 - t1 >= dead_after, real
                                                 t2 - t1 >= dead_after/(1+d)
                                               X declared dead at t2

Y's verdict is safe when ``dead_after/(1+d) >= fence_after/(1-d) +
fence_margin`` (t1 >= t0); we add one ``io_timeout`` of slack for a write of X
that was in flight when the window opened.  The same rule protects the master
role: a master acts only while it could still issue a write, so by the time a
new master is elected (after the old one was judged dead) the old one has
stopped acting and all its writes have landed.

Assumptions (stated, and exercised by the simulator): monotonic clocks whose
rates differ from real time by at most ``clock_drift``; a disk that completes
or fails every I/O within ``io_timeout`` (an I/O that times out never lands
later -- configure multipath ``no_path_retry`` accordingly); single-sector
writes are atomic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .model import Timing

CLOCK_DRIFT_MAX = 0.01
"""Assumed bound on how far a host's monotonic clock rate may differ from real
time (1%: NTP slews at most 0.05%, so this is very conservative)."""


@dataclass(frozen=True)
class Profile:
    """The two knobs an administrator sets; everything else is derived."""

    heartbeat_interval_ms: int = 100
    io_timeout_ms: int = 200
    fence_margin_ms: int = 200
    """How long fencing may take to complete once it starts: killing units in
    the lab; the hardware watchdog's timeout in production."""
    transition_timeout_ms: int = 30_000
    """A member that does not ack a notification within this is forced out."""


LAB = Profile()
SAN = Profile(heartbeat_interval_ms=1000, io_timeout_ms=10_000, fence_margin_ms=10_000,
              transition_timeout_ms=120_000)


def derive(profile: Profile = LAB, clock_drift: float = CLOCK_DRIFT_MAX) -> Timing:
    """The timing a node runs with and writes into its slot."""
    hb = profile.heartbeat_interval_ms
    io = profile.io_timeout_ms
    if hb <= 0 or io <= 0:
        raise ValueError("heartbeat_interval_ms and io_timeout_ms must be positive")
    # A node survives two heartbeat writes that each take the full io_timeout
    # plus two missed intervals before it fences.
    fence_after = 2 * io + 2 * hb
    dead_after = math.ceil(((fence_after / (1 - clock_drift)) + profile.fence_margin_ms + io)
                           * (1 + clock_drift))
    # While a transition or an election is in flight, nodes poll faster so a
    # level costs a few tens of milliseconds instead of a few heartbeats.
    fast_poll = max(10, hb // 5)
    return Timing(
        heartbeat_interval_ms=hb,
        io_timeout_ms=io,
        fence_after_ms=fence_after,
        dead_after_ms=dead_after,
        transition_timeout_ms=max(profile.transition_timeout_ms, 4 * dead_after),
        fast_poll_ms=fast_poll,
    )


def check(timing: Timing, fence_margin_ms: int, clock_drift: float = CLOCK_DRIFT_MAX) -> None:
    """Raise ValueError if a (possibly hand-edited) timing breaks the rule."""
    need = (timing.fence_after_ms / (1 - clock_drift) + fence_margin_ms + timing.io_timeout_ms) \
        * (1 + clock_drift)
    if timing.dead_after_ms < need:
        raise ValueError(
            f"dead_after_ms={timing.dead_after_ms} is unsafe: it must be at least {math.ceil(need)} "
            f"(fence_after_ms={timing.fence_after_ms}, fence_margin_ms={fence_margin_ms}, "
            f"io_timeout_ms={timing.io_timeout_ms}, clock drift {clock_drift:.1%})")
    if timing.fence_after_ms <= timing.io_timeout_ms:
        raise ValueError("fence_after_ms must exceed io_timeout_ms, or no write could ever be issued")
