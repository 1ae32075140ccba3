"""Timing: every deadline derives from io_timeout and the heartbeat, and the
derived numbers keep the failover rule of ``clusterfw.core.timing``:

    dead_after / (1 + d)  >=  fence_after / (1 - d) + fence_margin + io_timeout

checked here in exact rational arithmetic (so float rounding in ``derive``
cannot hide a shortfall of a millisecond), for the shipped profiles and for
every profile Hypothesis draws.
"""
from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterfw.core import timing
from clusterfw.core.model import Timing

DRIFT = Fraction(str(timing.CLOCK_DRIFT_MAX))  # exactly 1/100, not the binary float


def rule_holds(t: Timing, fence_margin_ms: int, drift: Fraction = DRIFT) -> bool:
    lhs = Fraction(t.dead_after_ms) / (1 + drift)
    rhs = Fraction(t.fence_after_ms) / (1 - drift) + fence_margin_ms + t.io_timeout_ms
    return lhs >= rhs


# ----------------------------------------------------------- pinned numbers
@pytest.mark.parametrize("field, expected", [
    ("heartbeat_interval_ms", 100),
    ("io_timeout_ms", 200),
    ("fence_after_ms", 600),  # 2 * io_timeout + 2 * heartbeat
    ("dead_after_ms", 1017),  # ceil((600 / 0.99 + 200 + 200) * 1.01)
    ("transition_timeout_ms", 30_000),
    ("fast_poll_ms", 20),  # heartbeat / 5
])
def test_lab_profile_numbers(field: str, expected: int) -> None:
    assert getattr(timing.derive(timing.LAB), field) == expected


@pytest.mark.parametrize("field, expected", [
    ("heartbeat_interval_ms", 1000),
    ("io_timeout_ms", 10_000),
    ("fence_after_ms", 22_000),
    ("dead_after_ms", 42_645),
    ("transition_timeout_ms", 170_580),  # 4 * dead_after beats the profile's 120 s
    ("fast_poll_ms", 200),
])
def test_san_profile_numbers(field: str, expected: int) -> None:
    assert getattr(timing.derive(timing.SAN), field) == expected


def test_derive_defaults_to_the_lab_profile() -> None:
    assert timing.derive() == timing.derive(timing.LAB)


@pytest.mark.parametrize("profile", [timing.LAB, timing.SAN], ids=["lab", "san"])
def test_shipped_profiles_pass_check_and_the_rule(profile: timing.Profile) -> None:
    t = timing.derive(profile)
    timing.check(t, profile.fence_margin_ms)  # raises if unsafe
    assert rule_holds(t, profile.fence_margin_ms)
    assert t.fence_after_ms > t.io_timeout_ms
    assert t.fence_after_ms > t.heartbeat_interval_ms


def test_lab_dead_after_is_the_smallest_safe_value() -> None:
    """1017 is tight: one millisecond less breaks the rule (so the pin above
    is the derivation, not an arbitrary safe number)."""
    t = timing.derive(timing.LAB)
    assert rule_holds(t, timing.LAB.fence_margin_ms)
    assert not rule_holds(replace(t, dead_after_ms=t.dead_after_ms - 1), timing.LAB.fence_margin_ms)


def test_fast_poll_has_a_floor() -> None:
    assert timing.derive(timing.Profile(heartbeat_interval_ms=10)).fast_poll_ms == 10


@pytest.mark.parametrize("hb, io", [(0, 200), (100, 0), (-1, 200), (100, -5)])
def test_derive_refuses_non_positive_inputs(hb: int, io: int) -> None:
    with pytest.raises(ValueError):
        timing.derive(timing.Profile(heartbeat_interval_ms=hb, io_timeout_ms=io))


# ---------------------------------------------------------------- property
profiles = st.builds(
    timing.Profile,
    heartbeat_interval_ms=st.integers(10, 5000),
    io_timeout_ms=st.integers(10, 30_000),
    fence_margin_ms=st.integers(0, 30_000),
    transition_timeout_ms=st.integers(0, 300_000),
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(profiles)
def test_derived_timing_keeps_the_failover_rule(profile: timing.Profile) -> None:
    t = timing.derive(profile)
    assert rule_holds(t, profile.fence_margin_ms), t
    timing.check(t, profile.fence_margin_ms)
    # A node must be able to issue a write before its fence deadline.
    assert t.fence_after_ms - t.io_timeout_ms >= t.heartbeat_interval_ms
    # Nobody is forced out for slowness before it could have been judged dead.
    assert t.transition_timeout_ms >= max(profile.transition_timeout_ms, t.dead_after_ms)
    assert 10 <= t.fast_poll_ms <= max(10, t.heartbeat_interval_ms)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(profiles, st.sampled_from(["0", "0.001", "0.01", "0.05", "0.1"]))
def test_rule_holds_for_other_drift_bounds(profile: timing.Profile, drift: str) -> None:
    t = timing.derive(profile, clock_drift=float(drift))
    assert rule_holds(t, profile.fence_margin_ms, Fraction(drift)), t
    timing.check(t, profile.fence_margin_ms, clock_drift=float(drift))


# ------------------------------------------------------------------ check()
def _lab_with(**changes: int) -> Timing:
    return replace(timing.derive(timing.LAB), **changes)


def test_check_rejects_short_dead_after_naming_the_numbers() -> None:
    unsafe = _lab_with(dead_after_ms=900)
    with pytest.raises(ValueError) as exc:
        timing.check(unsafe, fence_margin_ms=200)
    message = str(exc.value)
    for needle in ("dead_after_ms=900", "1017", "fence_after_ms=600", "fence_margin_ms=200",
                   "io_timeout_ms=200"):
        assert needle in message, (needle, message)


def test_check_boundary_is_exactly_the_rule() -> None:
    timing.check(_lab_with(dead_after_ms=1017), fence_margin_ms=200)
    with pytest.raises(ValueError, match="dead_after_ms=1016"):
        timing.check(_lab_with(dead_after_ms=1016), fence_margin_ms=200)


def test_check_accounts_for_the_fence_margin() -> None:
    """A timing safe with a 200 ms margin is unsafe when fencing may take 2 s."""
    t = timing.derive(timing.LAB)
    timing.check(t, fence_margin_ms=200)
    with pytest.raises(ValueError, match="fence_margin_ms=2000"):
        timing.check(t, fence_margin_ms=2000)


def test_check_accounts_for_io_timeout() -> None:
    """Raising io_timeout alone (a hand edit) leaves dead_after too short."""
    with pytest.raises(ValueError, match="io_timeout_ms=300"):
        timing.check(_lab_with(io_timeout_ms=300), fence_margin_ms=200)


def test_check_rejects_fence_after_not_above_io_timeout() -> None:
    hand_made = Timing(heartbeat_interval_ms=100, io_timeout_ms=500, fence_after_ms=500,
                       dead_after_ms=100_000, transition_timeout_ms=400_000, fast_poll_ms=20)
    with pytest.raises(ValueError, match="fence_after_ms must exceed io_timeout_ms"):
        timing.check(hand_made, fence_margin_ms=200)
