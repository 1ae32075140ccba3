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
from dataclasses import dataclass, replace
from typing import Callable

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


FAST_POLL_MIN_MS = 10
"""No node polls faster than this, however short its heartbeat."""


LAB = Profile()
SAN = Profile(heartbeat_interval_ms=1000, io_timeout_ms=10_000, fence_margin_ms=10_000,
              transition_timeout_ms=120_000)
PROFILES_BY_NAME: dict[str, Profile] = {"lab": LAB, "san": SAN}
"""The shipped profiles by the name ``disk init --profile`` takes."""
SAN_IO_TIMEOUT_MIN_MS = 1000
"""A disk's profile is derived from its io timeout (the superblock has no
field for it, and adding one would change the on-disk format): ``san`` when
the io timeout is at least this, else ``lab``.  ``disk init --profile lab``
(200 ms) and ``--profile san`` (10 s) land on their own side."""


def profile_name(io_timeout_ms: int) -> str:
    """The name of the profile a disk with this io timeout runs with."""
    return "san" if io_timeout_ms >= SAN_IO_TIMEOUT_MIN_MS else "lab"


def disk_profile(heartbeat_interval_ms: int, io_timeout_ms: int) -> tuple[str, Profile]:
    """The profile every node of a disk runs with: the named profile's fence
    margin and transition timeout with the disk's own two settings."""
    name = profile_name(io_timeout_ms)
    return name, replace(PROFILES_BY_NAME[name], heartbeat_interval_ms=heartbeat_interval_ms,
                         io_timeout_ms=io_timeout_ms)


def failover_ms(t: Timing) -> int:
    """About how long after a node crashes the others force it out, and its
    services restart elsewhere.  The crash leaves its last heartbeat on the
    disk; the master first reads that value within one heartbeat interval,
    judges the node dead ``dead_after`` after that read, and sees so on the
    first read it starts after then, within another heartbeat interval.  The
    forced leave's notifications then take a few fast polls (tens of
    milliseconds): the lab's measurements match it within those
    (docs/daemon.md, "Measured")."""
    return t.dead_after_ms + 2 * t.heartbeat_interval_ms


def summary(name: str, profile: Profile) -> dict[str, int | str]:
    """What ``disk init --json`` and ``status --json`` say about a cluster's
    timing: the profile, everything derived from it and the failover time."""
    t = derive(profile)
    return {"profile": name, "heartbeat_interval_ms": t.heartbeat_interval_ms,
            "io_timeout_ms": t.io_timeout_ms, "fence_margin_ms": profile.fence_margin_ms,
            "fence_after_ms": t.fence_after_ms, "dead_after_ms": t.dead_after_ms,
            "transition_timeout_ms": t.transition_timeout_ms, "fast_poll_ms": t.fast_poll_ms,
            "failover_ms": failover_ms(t)}


def ms_text(ms: int) -> str:
    """``100 ms``, ``1 s``, ``1.2 s``: a duration as people read it."""
    if ms < 1000:
        return f"{ms} ms"
    return f"{ms // 1000} s" if ms % 1000 == 0 else f"{ms / 1000:.1f} s"


def watchdog_timeout_max_s(fence_margin_ms: int) -> int:
    """The longest hardware watchdog timeout (whole seconds: what
    ``WDIOC_SETTIMEOUT`` takes) that keeps the rule, 0 if none does.

    Fencing must complete within ``fence_margin`` of the fence deadline, and
    in production the watchdog's reset is what completes it.  The watchdog
    is fed only after a cycle whose heartbeat write succeeded and only while
    the node can still write, i.e. before its fence deadline; it resets the
    host at most its timeout after the last feed, so ``timeout <=
    fence_margin`` puts the reset before the deadline plus the margin.  (The
    node's own fence deadline is ``io_timeout`` before ``last_ok +
    fence_after``: that slack covers the moment between the last check and
    the feed, and the watchdog's clock being off by the drift bound.)"""
    return max(0, fence_margin_ms // 1000)


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
    fast_poll = max(FAST_POLL_MIN_MS, hb // 5)
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


# ----------------------------------------------------------------------------
# The two settings a disk carries (``disk init --heartbeat-ms/--io-timeout-ms``)
# and the ranges a node can run them in.

HEARTBEAT_MIN_MS = FAST_POLL_MIN_MS
"""A node polls at ``fast_poll_ms`` (at least ``FAST_POLL_MIN_MS``) while a
transition runs and at the heartbeat interval otherwise, and the DLM polls
between the two: a heartbeat shorter than the fastest poll has no such
range (the DLM refuses to start)."""
IO_TIMEOUT_MIN_MS = 50
"""The rule assumes every I/O completes within ``io_timeout``.  The longest
a node makes are its DLM's 1 MiB reads of the lock area at the join and
O_DSYNC writes; below 50 ms they time out even on an idle disk, the DLM never
acks the join, and the master forces the node out after the transition
timeout."""
TIMING_MS_MAX = 0xFFFF_FFFF
"""Every derived timeout is written into the node's slot as a u32 of
milliseconds (docs/ondisk.md): one that does not fit cannot be written, and
the node cannot heartbeat."""
PROFILES = (LAB, SAN)


class SettingOutOfRange(ValueError):
    """``setting`` (``heartbeat_interval_ms`` or ``io_timeout_ms``) is
    ``value``; allowed, with the other setting as given: ``low..high``."""

    def __init__(self, setting: str, value: int, low: int, high: int, why: str) -> None:
        super().__init__(f"{setting}={value} is out of range: use {low}..{high} ms ({why})")
        self.setting = setting
        self.value = value
        self.low = low
        self.high = high
        self.why = why


def _runs(heartbeat_interval_ms: int, io_timeout_ms: int, profiles: tuple[Profile, ...]) -> bool:
    """Every timeout derived from the two settings, under each profile, fits
    its u32 and keeps the rule."""
    for profile in profiles:
        t = derive(replace(profile, heartbeat_interval_ms=heartbeat_interval_ms, io_timeout_ms=io_timeout_ms))
        if max(t.heartbeat_interval_ms, t.io_timeout_ms, t.fence_after_ms, t.dead_after_ms,
               t.transition_timeout_ms, t.fast_poll_ms) > TIMING_MS_MAX:
            return False
        check(t, profile.fence_margin_ms)
    return True


def _largest(low: int, fits: Callable[[int], bool]) -> int:
    """The largest value in low..TIMING_MS_MAX for which ``fits`` holds
    (``fits`` is monotone: true up to some value, false beyond); ``low - 1``
    if none."""
    if not fits(low):
        return low - 1
    good, bad = low, TIMING_MS_MAX + 1
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def heartbeat_range(io_timeout_ms: int, profiles: tuple[Profile, ...] = PROFILES) -> tuple[int, int]:
    """The heartbeat intervals a node can run with ``io_timeout_ms``."""
    io = max(io_timeout_ms, 1)
    return HEARTBEAT_MIN_MS, _largest(HEARTBEAT_MIN_MS, lambda hb: _runs(hb, io, profiles))


def io_timeout_range(heartbeat_interval_ms: int, profiles: tuple[Profile, ...] = PROFILES) -> tuple[int, int]:
    """The I/O timeouts a node can run with ``heartbeat_interval_ms``."""
    hb = max(heartbeat_interval_ms, HEARTBEAT_MIN_MS)
    return IO_TIMEOUT_MIN_MS, _largest(IO_TIMEOUT_MIN_MS, lambda io: _runs(hb, io, profiles))


def check_settings(heartbeat_interval_ms: int, io_timeout_ms: int,
                   profiles: tuple[Profile, ...] = PROFILES) -> None:
    """Raise ``SettingOutOfRange`` unless a node can run with these two
    settings under every profile in ``profiles`` (``disk init`` checks both
    shipped profiles: the daemon picks one at start)."""
    hb, io = heartbeat_interval_ms, io_timeout_ms
    if hb < HEARTBEAT_MIN_MS:
        raise SettingOutOfRange("heartbeat_interval_ms", hb, *heartbeat_range(io, profiles),
                                f"no node polls faster than {FAST_POLL_MIN_MS} ms")
    if io < IO_TIMEOUT_MIN_MS:
        raise SettingOutOfRange("io_timeout_ms", io, *io_timeout_range(hb, profiles),
                                "shorter I/O timeouts fail the disk's own I/O")
    if _runs(hb, io, profiles):
        return
    why = (f"every timeout derived from the heartbeat and the I/O timeout, up to the transition timeout of "
           f"4 x dead_after, must fit the slot's 32-bit field of milliseconds")
    hb_low, hb_high = heartbeat_range(io, profiles)
    if hb_high >= hb_low:  # some heartbeat runs with this I/O timeout: this one is too long
        raise SettingOutOfRange("heartbeat_interval_ms", hb, hb_low, hb_high, f"with an I/O timeout of {io} ms {why}")
    io_low, io_high = io_timeout_range(hb, profiles)
    if io_high >= io_low:
        raise SettingOutOfRange("io_timeout_ms", io, io_low, io_high, f"with a heartbeat of {hb} ms {why}")
    raise SettingOutOfRange("io_timeout_ms", io, *io_timeout_range(HEARTBEAT_MIN_MS, profiles), why)
