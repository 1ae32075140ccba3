"""Liveness: "the heartbeat changed", judged on the observer's clock.

Each case is a script of successful reads (start, end, what each slot showed)
and verdicts to expect.  Times are chosen on both sides of every boundary the
rule names: the clock starts at the *completion* of the read that first showed
the value and stops at the *start* of the later read; the node's own
``dead_after_ms`` (from its slot) is the threshold; an incarnation change
kills the old incarnation only ``dead_after`` after the new one was first
seen; a never-decodable slot uses the observer's ``dead_after`` from its first
area read.  A Hypothesis test compares the verdict with a direct reading of
the rule over random read histories.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterfw.core import timing
from clusterfw.core.liveness import Liveness, Observed
from clusterfw.core.model import SlotRecord

LAB = timing.derive(timing.LAB)
DA = LAB.dead_after_ms  # 1017
OWN_DA = 5000  # the observer's own dead_after: deliberately different from DA


def slot(node_id: int, incarnation: int, seq: int, dead_after_ms: int = DA) -> SlotRecord:
    return SlotRecord(node_id=node_id, incarnation=incarnation, seq=seq,
                      timing=replace(LAB, dead_after_ms=dead_after_ms))


def read(start: float, end: float, **slots: tuple[int, ...]) -> tuple[Any, ...]:
    """A successful area read; ``n2=(incarnation, seq[, dead_after])``."""
    return ("read", start, end, {int(k[1:]): v for k, v in slots.items()})


def dead(node_id: int, incarnation: int | None = None) -> tuple[Any, ...]:
    return ("expect", node_id, incarnation, True)


def not_dead(node_id: int, incarnation: int | None = None) -> tuple[Any, ...]:
    return ("expect", node_id, incarnation, False)


def run(script: list[tuple[Any, ...]], own_dead_after_ms: int = OWN_DA) -> Liveness:
    lv = Liveness(own_dead_after_ms)
    for step in script:
        if step[0] == "read":
            _, start, end, shown = step
            lv.note_area_read(start, end)
            for node_id, value in shown.items():
                lv.observe(slot(node_id, *value), start, end)
        else:
            _, node_id, incarnation, expected = step
            assert lv.is_dead(node_id, incarnation) is expected, step
    return lv


CASES: dict[str, list[tuple[Any, ...]]] = {
    "first observation is not dead": [
        read(0, 10, n2=(1, 1)), not_dead(2),
    ],
    "first observation long after the area was first read is not dead": [
        read(0, 10), read(20_000, 20_010, n2=(1, 7)), not_dead(2),
    ],
    "unchanged for just under dead_after: alive": [
        read(0, 10, n2=(1, 1)), read(10 + DA - 1, 10 + DA + 40, n2=(1, 1)), not_dead(2),
    ],
    "unchanged for exactly dead_after: dead": [
        read(0, 10, n2=(1, 1)), read(10 + DA, 10 + DA + 1, n2=(1, 1)), dead(2),
    ],
    "clock starts at the completion of the read that saw the change": [
        # Counting from that read's *start* (0) would say dead at DA.
        read(0, 10, n2=(1, 1)), read(DA + 9, DA + 9.5, n2=(1, 1)), not_dead(2),
        read(DA + 10, DA + 11, n2=(1, 1)), dead(2),
    ],
    "clock stops at the start of the later read": [
        # That read ends well past the threshold; only its start counts.
        read(0, 10, n2=(1, 1)), read(10 + DA - 1, 10 + 3 * DA, n2=(1, 1)), not_dead(2),
    ],
    "a change restarts the clock": [
        read(0, 10, n2=(1, 1)), read(500, 510, n2=(1, 2)),
        read(10 + DA, 11 + DA, n2=(1, 2)), not_dead(2),
        read(510 + DA - 1, 511 + DA, n2=(1, 2)), not_dead(2),
        read(510 + DA, 511 + DA, n2=(1, 2)), dead(2),
    ],
    "the clock starts at the first read showing the value, not the newest": [
        read(0, 10, n2=(1, 1)), read(600, 610, n2=(1, 1)), read(10 + DA, 11 + DA, n2=(1, 1)), dead(2),
    ],
    "a heartbeat after a dead verdict makes the node alive again": [
        read(0, 10, n2=(1, 1)), read(10 + DA, 11 + DA, n2=(1, 1)), dead(2),
        read(2 * DA, 2 * DA + 1, n2=(1, 2)), not_dead(2),
    ],
    "the observed node's own dead_after is the threshold, not the observer's": [
        read(0, 10, n2=(1, 1, 300)), read(309, 310, n2=(1, 1, 300)), not_dead(2),
        read(310, 311, n2=(1, 1, 300)), dead(2),
    ],
    "a long dead_after in the slot is honoured even when the observer's is shorter": [
        read(0, 10, n2=(1, 1, 9000)), read(8000, 8001, n2=(1, 1, 9000)), not_dead(2),
        read(9010, 9011, n2=(1, 1, 9000)), dead(2),
    ],
    "no successful read, no evidence: time alone never kills": [
        # Failed reads are never fed; nothing happens between these two steps.
        read(0, 10, n2=(1, 1)), not_dead(2),
    ],
    "a read in which the slot did not decode is no evidence": [
        # Later area reads succeed but node 2's slot is corrupt in them.
        read(0, 10, n2=(1, 1)), read(5000, 5010), read(50_000, 50_010), not_dead(2),
    ],
    "other nodes' reads do not advance a node's clock": [
        read(0, 10, n2=(1, 1), n3=(1, 1)), read(10 + DA, 11 + DA, n3=(1, 1)), not_dead(2), dead(3),
    ],
    "new incarnation: the old one is dead only dead_after after the new one was first seen": [
        read(0, 10, n2=(1, 5)),
        read(100, 110, n2=(2, 6)),  # restarted (the sequence goes on); its old heartbeat last changed at 10
        read(10 + DA, 11 + DA, n2=(2, 7)), not_dead(2, 1),  # DA after the *old* heartbeat: not yet
        read(110 + DA - 1, 110 + DA, n2=(2, 8)), not_dead(2, 1),
        read(110 + DA, 111 + DA, n2=(2, 9)), dead(2, 1), not_dead(2, 2), not_dead(2),
    ],
    "new incarnation seen unchanged: the new one dies by its own heartbeat": [
        read(0, 10, n2=(1, 5)), read(100, 110, n2=(2, 6)),
        read(110 + DA, 111 + DA, n2=(2, 6)), dead(2, 1), dead(2, 2), dead(2),
    ],
    "never-decodable slot: dead after the observer's dead_after from its first area read": [
        not_dead(7),  # no area read yet
        read(0, 10), read(10 + OWN_DA - 1, 10 + OWN_DA + 100), not_dead(7),
        read(10 + OWN_DA, 11 + OWN_DA), dead(7),
    ],
    "never-decodable slot: counted from the first area read's completion": [
        read(0, 10), read(OWN_DA, OWN_DA + 1), not_dead(7),
    ],
    "never-decodable slot: the slot's neighbours' dead_after does not matter": [
        read(0, 10, n2=(1, 1, 100)), read(500, 501, n2=(1, 2, 100)), not_dead(7),
    ],
}


@pytest.mark.parametrize("name", list(CASES))
def test_liveness_table(name: str) -> None:
    run(CASES[name])


def test_alive_needs_the_asked_incarnation_and_no_dead_verdict() -> None:
    lv = run([read(0, 10, n2=(1, 1)), read(100, 110, n2=(2, 2))])
    assert lv.alive(2) and lv.alive(2, 2)
    assert not lv.alive(2, 1)  # replaced
    assert not lv.alive(9)  # never seen
    assert lv.incarnation(2) == 2 and lv.incarnation(9) is None
    lv.observe(slot(2, 2, 2), 110 + DA, 111 + DA)
    assert not lv.alive(2)


def test_known_and_age() -> None:
    lv = run([read(0, 10, n2=(1, 1)), read(300, 310, n2=(1, 2))])
    assert lv.known(2) and not lv.known(3)
    assert lv.age_ms(2, 400) == 90  # since the completion of the read that saw seq 2
    assert lv.age_ms(2, 0) == 0  # never negative
    assert lv.age_ms(3, 400) is None


def test_observe_reports_changes() -> None:
    lv = Liveness(OWN_DA)
    assert lv.observe(slot(2, 1, 1), 0, 1) is Observed.NEW  # first sight
    assert lv.observe(slot(2, 1, 1), 5, 6) is Observed.SAME
    assert lv.observe(slot(2, 1, 2), 10, 11) is Observed.CHANGED
    assert lv.observe(slot(2, 2, 3), 20, 21) is Observed.NEW  # a new incarnation (the sequence goes on)


def test_a_replayed_record_is_no_heartbeat() -> None:
    """An older seq of the same incarnation, or a record of a replaced
    incarnation, written back onto the disk (a stale cache, a restored image)
    must not keep a dead node alive: it is REPLAYED and moves no clock."""
    lv = Liveness(OWN_DA)
    lv.note_area_read(0, 1)
    lv.observe(slot(2, 1, 5), 0, 1)
    assert lv.observe(slot(2, 1, 4), 10, 11) is Observed.REPLAYED
    assert lv.observe(slot(2, 2, 6), 20, 21) is Observed.NEW  # a restart continues the sequence
    # the old incarnation's newest record comes back: still a replay
    assert lv.observe(slot(2, 1, 9), 30, 31) is Observed.REPLAYED
    assert lv.incarnation(2) == 2
    # the replay read at 30 counts once (it may hide a write), never again
    lv.note_area_read(30, 31)
    lv.observe_unreadable(2, 30, 31)
    lv.note_area_read(31 + DA, 32 + DA)
    lv.observe_unreadable(2, 31 + DA, 32 + DA)
    assert lv.is_dead(2, 2)


def test_an_unknown_incarnation_with_a_lower_seq_counts_only_once_it_moves() -> None:
    """The simulator found this (seed 106, 5 nodes): an observer that only
    ever saw a node's new incarnation read a replay of its *old* one, took it
    for a restart, retired the real incarnation and never admitted it again.
    A restarted daemon continues its predecessor's sequence, so a lower seq
    under an unknown incarnation is taken as new only once it moves."""
    lv = Liveness(OWN_DA)
    lv.note_area_read(0, 1)
    lv.observe(slot(2, 7, 100), 0, 1)
    assert lv.observe(slot(2, 3, 40), 10, 11) is Observed.REPLAYED  # the old incarnation, replayed
    assert lv.observe(slot(2, 7, 101), 20, 21) is Observed.CHANGED  # the real one writes on
    assert lv.incarnation(2) == 7
    assert lv.observe(slot(2, 3, 40), 30, 31) is Observed.REPLAYED  # the same replay again: no move
    # a daemon that could not read its old slot starts low, but heartbeats
    assert lv.observe(slot(2, 9, 1), 40, 41) is Observed.REPLAYED
    assert lv.observe(slot(2, 9, 2), 50, 51) is Observed.NEW
    assert lv.incarnation(2) == 9


def test_an_unreadable_slot_counts_as_unchanged() -> None:
    """A slot that decoded once and is now damaged is "no new heartbeat":
    the node is dead dead_after after the first damaged read (which may hide
    a write nobody read), exactly as if the record had stayed the same from
    then on.  (Before: a damaged slot was skipped, so its last read time
    never moved and the node never became dead.)  The simulator found why
    the first damaged read must count: seed 1812, 7 nodes."""
    lv = Liveness(OWN_DA)
    lv.note_area_read(0, 10)
    lv.observe(slot(2, 1, 1), 0, 10)
    for t in range(100, int(101 + DA), 100):
        lv.note_area_read(t, t + 1)
        lv.observe_unreadable(2, t, t + 1)
    assert not lv.is_dead(2)
    lv.note_area_read(101 + DA, 102 + DA)
    lv.observe_unreadable(2, 101 + DA, 102 + DA)
    assert lv.is_dead(2, 1)
    # a repaired slot with a new seq is alive again
    lv.observe(slot(2, 1, 2), 20 + DA, 21 + DA)
    assert not lv.is_dead(2)


# ---------------------------------------------------------------- property
@st.composite
def histories(draw: st.DrawFn) -> tuple[int, list[tuple[float, float, tuple[int, int] | None]]]:
    """(dead_after, reads): each read is (start, end, value shown or None for
    a read in which the slot did not decode), in time order."""
    dead_after = draw(st.sampled_from([50, 300, 1017]))
    reads = []
    t = 0.0
    incarnation, seq = 1, 1
    for _ in range(draw(st.integers(1, 25))):
        t += draw(st.sampled_from([0, 1, 5, 20, 49, 50, 51, 150, 299, 300, 301, 1000, 1017, 1100]))
        duration = draw(st.sampled_from([0, 1, 10, 60, 400]))
        what = draw(st.sampled_from(["same", "same", "same", "seq", "restart", "corrupt"]))
        if what == "seq":
            seq += 1
        elif what == "restart":
            incarnation, seq = incarnation + 1, seq + 1  # a restart continues the sequence
        reads.append((t, t + duration, None if what == "corrupt" else (incarnation, seq)))
        t += duration
    return dead_after, reads


def reference_dead(dead_after: int, reads: list[tuple[float, float, tuple[int, int] | None]]) -> bool:
    """The rule, read straight off the history: the newest decoded value was
    first shown by a read completing at t1, and a read showing that same value
    started at t2 >= t1 + dead_after."""
    shown = [(s, e, v) for s, e, v in reads if v is not None]
    if not shown:
        return False
    current = shown[-1][2]
    first = len(shown) - 1
    while first > 0 and shown[first - 1][2] == current:
        first -= 1
    t1 = shown[first][1]
    return any(s - t1 >= dead_after for s, _, v in shown[first:])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(histories())
def test_verdict_matches_the_rule(history: tuple[int, list[tuple[float, float, tuple[int, int] | None]]]) -> None:
    dead_after, reads = history
    lv = Liveness(OWN_DA)
    for i, (start, end, value) in enumerate(reads):
        lv.note_area_read(start, end)
        if value is not None:
            lv.observe(slot(2, value[0], value[1], dead_after), start, end)
        assert lv.is_dead(2) is reference_dead(dead_after, reads[: i + 1]), reads[: i + 1]
