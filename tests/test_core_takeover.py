"""Taking over when the view area is damaged, unreadable or stale, and
writing a view when the disk reports a write failed.

Driven by hand with the fake disk of ``test_core_node`` (every op instant,
faults chosen per op).  Each test names the defect it guards against: a new
master must never resume from a view older than what a live node saw, a
persistent read error must not make every new master fence in turn, and a
view write reported failed must be read back before the next one goes to
the same copy.
"""
from __future__ import annotations

from clusterfw.core.model import NodeState, ViewRecord
from clusterfw.core.node import VIEW_READ_TRIES, Fenced, Op, OpResult, ReadViews, Role, WriteSlot, WriteView
from test_core_node import TIMING, Driver, Host, row, slot_writes

S = NodeState


def three_joined() -> tuple[Driver, Host, Host, Host]:
    d = Driver()
    h1 = d.start(1)
    d.run(lambda: h1.core.state is S.JOINED)
    h2, h3 = d.start(2), d.start(3)
    d.run(lambda: h2.core.state is S.JOINED and h3.core.state is S.JOINED
          and h1.core.view is not None and not h1.core.view.batches
          and all(h.core.view is not None and h.core.view.epoch == h1.core.view.epoch for h in (h2, h3)))
    return d, h1, h2, h3


def epoch_of(h: Host) -> int:
    assert h.core.view is not None
    return h.core.view.epoch


def takeover_cycles(h: Host) -> list[list[Op]]:
    """The ops of each takeover cycle (those that read views)."""
    cycles: dict[float, list[Op]] = {}
    for t, op in h.ops:
        cycles.setdefault(t, []).append(op)
    return [ops for ops in cycles.values() if any(isinstance(op, ReadViews) for op in ops)]


def test_the_takeover_heartbeats_between_view_reads_and_gives_up_on_a_bad_pair() -> None:
    """Defect: a takeover wrote no heartbeat and retried a failing read of the
    whole view area at once, so one persistent read error fenced every new
    master in turn.  Now each takeover cycle writes the slot, a failing chunk
    is split into pairs, a pair that keeps failing is given up on (no live
    node saw a newer epoch), and nobody fences."""
    d, h1, h2, h3 = three_joined()
    seen = epoch_of(h2)

    def bad_pair_4(node_id: int, op: Op, now: float) -> bool:
        return isinstance(op, ReadViews) and op.first <= 4 < op.first + op.count
    d.disk.fail = bad_pair_4
    del d.hosts[1]
    d.run(lambda: h2.core.role is Role.MASTER)
    cycles = takeover_cycles(h2)
    assert cycles and all(isinstance(ops[0], WriteSlot) for ops in cycles)
    reads = [op for ops in cycles for op in ops if isinstance(op, ReadViews)]
    assert reads[0].count > 1  # the whole area in one chunk first
    # the failed chunk counts as the first try of each of its pairs
    assert [op for op in reads if op == ReadViews(4, 1)] == [ReadViews(4, 1)] * (VIEW_READ_TRIES - 1)
    assert any("unreadable view areas: n4" in line for line in h2.core.view_log)
    d.run(lambda: row(h2, 1).state is S.INACTIVE)
    assert epoch_of(h2) > seen
    assert h2.of(Fenced) == [] and h3.of(Fenced) == []


def test_a_new_master_resumes_from_the_view_it_holds_when_the_masters_views_are_lost() -> None:
    """Defect 1: both copies of the master's view were overwritten and the
    new master resumed from an older view of another node (a rollback).  The
    newest view any live node saw is in that node's memory: a new master
    holding it resumes from it."""
    d, h1, h2, h3 = three_joined()
    seen = epoch_of(h2)
    stale = ViewRecord(node_id=3, incarnation=0x999, seq=1, term=0, epoch=1)
    d.disk.views[(3, 0)] = stale  # an old master's leftover
    for copy in (0, 1):
        d.disk.views.pop((1, copy), None)
    del d.hosts[1]
    d.run(lambda: h2.core.role is Role.MASTER)
    assert any(f"resuming from epoch {seen} " in line for line in h2.core.view_log), h2.core.view_log
    d.run(lambda: row(h2, 1).state is S.INACTIVE)
    assert epoch_of(h2) > seen and row(h2, 3).state is S.JOINED


def _lose_the_masters_views_and_make_n2_stale(d: Driver, h2: Host) -> None:
    for copy in (0, 1):
        d.disk.views.pop((1, copy), None)
    assert h2.core.view is not None
    h2.core.view = ViewRecord(node_id=1, incarnation=h2.core.view.incarnation, seq=1, term=1, epoch=1)


def test_a_node_behind_the_newest_view_leaves_the_election_to_one_that_holds_it() -> None:
    """The simulator found nodes without the newest view winning, halting
    and resigning in turn while the nodes that held it, with higher ids,
    never got to propose (seed 1322, 7 nodes).  A node that sees a live node
    with a newer epoch does not propose."""
    d, h1, h2, h3 = three_joined()
    seen = epoch_of(h3)
    _lose_the_masters_views_and_make_n2_stale(d, h2)
    del d.hosts[1]
    d.run(lambda: h3.core.role is Role.MASTER, limit_ms=20 * TIMING.dead_after_ms)
    assert not any(rec.lease.mbal for _, rec in slot_writes(h2)[-5:])  # n2 did not propose
    assert not any("cannot resume" in line for line in h2.core.view_log)
    assert any(f"resuming from epoch {seen} " in line for line in h3.core.view_log)
    d.run(lambda: row(h3, 1).state is S.INACTIVE and row(h3, 2).state is S.JOINED)
    assert h2.of(Fenced) == [] and h3.of(Fenced) == []


def test_a_new_master_without_the_newest_view_halts_resigns_and_a_node_holding_it_takes_over() -> None:
    """The newest view is nowhere on the disk and this node, already taking
    over, holds an older one: it must not guess.  It says why, resigns, stays
    out of elections, and the node that saw the newest view becomes master
    and resumes from it."""
    d, h1, h2, h3 = three_joined()
    seen = epoch_of(h3)
    del d.hosts[1]
    d.run(lambda: h2.core.role is Role.TAKING_OVER)
    _lose_the_masters_views_and_make_n2_stale(d, h2)
    d.run(lambda: h3.core.role is Role.MASTER, limit_ms=20 * TIMING.dead_after_ms)
    halted = [line for line in h2.core.view_log if "cannot resume" in line]
    assert halted and f"n3 saw epoch {seen}" in halted[0] and "resigns" in halted[0]
    assert any(rec.lease.resigned for _, rec in slot_writes(h2))
    assert any(f"resuming from epoch {seen} " in line for line in h3.core.view_log)
    d.run(lambda: row(h3, 1).state is S.INACTIVE and row(h3, 2).state is S.JOINED)
    assert epoch_of(h3) > seen
    assert h2.of(Fenced) == [] and h3.of(Fenced) == []


def _fail_first_view_write(d: Driver, land: bool) -> list[WriteView]:
    """The master's next view write is reported failed; ``land``: it landed anyway."""
    failed: list[WriteView] = []
    perform = d.disk.perform

    def fake(node_id: int, op: Op, now: float) -> OpResult:
        if isinstance(op, WriteView) and not failed:
            failed.append(op)
            if land:
                perform(node_id, op, now)
            return OpResult(op, False, now, now, None, "EIO")
        return perform(node_id, op, now)
    d.disk.perform = fake  # type: ignore[method-assign]
    return failed


def view_writes(h: Host) -> list[WriteView]:
    return [op for _, op in h.ops if isinstance(op, WriteView)]


def _two_view_writes_after_a_failed_one(land: bool) -> tuple[Host, WriteView, WriteView]:
    """n3 leaves; the master's first view write for it is reported failed
    (``land``: it landed anyway); returns that write and the next one."""
    d, h1, h2, h3 = three_joined()
    failed = _fail_first_view_write(d, land=land)
    before = len(view_writes(h1))
    h3.core.leave(d.now)
    d.run(lambda: len(view_writes(h1)) > before + 1)
    first, second = view_writes(h1)[before:before + 2]
    assert failed == [first]
    d.run(lambda: h3.core.stopped is not None)  # the leave completes either way
    return h1, first, second


def test_a_view_write_reported_failed_that_landed_is_read_back_and_the_next_goes_to_the_other_copy() -> None:
    """Defect 8: after a failed view write the master wrote the same copy
    again, blind.  If the failed write had landed (followers may have acted
    on it) and the retry tore, only the view before it was left.  Now the
    master reads its views back first; the write it finds there counts."""
    h1, first, second = _two_view_writes_after_a_failed_one(land=True)
    assert second.copy != first.copy  # the read-back found it: alternate
    assert h1.core.view is not None and h1.core.view.seq >= first.record.seq


def test_a_view_write_reported_failed_that_did_not_land_is_written_again_to_the_same_copy() -> None:
    _, first, second = _two_view_writes_after_a_failed_one(land=False)
    assert second.copy == first.copy  # the other copy still holds the last view that landed
