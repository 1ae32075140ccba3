"""The transition coordinator, driven by hand.

A ``Bench`` holds the master's ``Coordinator``, every node's ``SlotRecord``
(built by hand) and a real ``Liveness`` fed one area read per step, so a node
is "crashed" simply by no longer bumping its heartbeat.  Acks are written into
the slots (or the master's own ack map) by the bench; a ``hold`` predicate
keeps chosen acks back.  Every batch the coordinator issues is logged in issue
order, and the tests compare those logs with the order the rules demand:
join bottom-up through levels and barriers, leave top-down, forced leave
bottom-up and only up to ``top_level``, re-notification with a new batch id.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import pytest

from clusterfw.core import timing
from clusterfw.core.coordinator import MEMBER_TRANSITIONS, Coordinator, StepOutcome, level_state, move
from clusterfw.core.liveness import Liveness
from clusterfw.core.model import (Batch, BatchEntry, Kind, LevelSpec, MemberEntry, NodeState, Registration,
                                  Request, SlotRecord, Timing, ViewRecord)

LEVELS = (0, 10, 20, 30, 40)
TIMING = replace(timing.derive(timing.LAB), transition_timeout_ms=30_000)
DA = TIMING.dead_after_ms
STEP_MS = 20
J, L, F = Kind.JOIN, Kind.LEAVE, Kind.FORCED
S = NodeState


def inc(node_id: int) -> int:
    return 100 + node_id


def regs(levels: Iterable[int] = LEVELS, **barriers: tuple[int, int, int]) -> tuple[Registration, ...]:
    """Registrations at ``levels``; ``l10=(2, 1, 1)`` sets level 10's barriers."""
    return tuple(Registration(lv, f"sub{lv}", barriers.get(f"l{lv}", (1, 1, 1))) for lv in levels)


def slot(node_id: int, request: Request = Request.NONE, registrations: tuple[Registration, ...] | None = None,
         incarnation: int | None = None) -> SlotRecord:
    return SlotRecord(node_id=node_id, incarnation=inc(node_id) if incarnation is None else incarnation,
                      seq=1, timing=TIMING, request=request,
                      registrations=regs() if registrations is None else registrations)


def joined(node_id: int) -> MemberEntry:
    return MemberEntry(node_id, inc(node_id), S.JOINED)


@dataclass(frozen=True)
class Issued:
    level: int
    batch_id: int
    entries: tuple[tuple[int, Kind, int], ...]
    participants: tuple[int, ...]


Hold = Callable[[int, Batch], bool]


def hold_nothing(node_id: int, batch: Batch) -> bool:
    return False


def hold_at(*pairs: tuple[int, int]) -> Hold:
    """Keep back the acks of node n at level lv for every (n, lv) given."""
    return lambda n, b: (n, b.level) in pairs


class Bench:
    def __init__(self, members: Iterable[MemberEntry], slots: Iterable[SlotRecord], *, master: int = 1,
                 batches: Iterable[Batch] = (), next_batch_id: int = 1, timing_: Timing = TIMING,
                 now: float = 1000.0) -> None:
        self.slots = {s.node_id: s for s in slots}
        self.master = master
        self.master_inc = self.slots[master].incarnation
        self.own_acks: dict[int, int] = {}
        self.liveness = Liveness(timing_.dead_after_ms)
        self.now = now
        self.stopped: set[int] = set()  # nodes whose heartbeat no longer changes
        self.issued: list[Issued] = []
        self._read()
        members = tuple(sorted(members, key=lambda m: m.node_id))
        levels = sorted({r.level: r for m in members if m.state is not S.INACTIVE
                         for r in self.slots[m.node_id].registrations}.values(), key=lambda r: r.level)
        view = ViewRecord(node_id=master, incarnation=self.master_inc, seq=1, term=1, epoch=1,
                          next_batch_id=next_batch_id,
                          levels=tuple(LevelSpec(r.level, r.barriers) for r in levels),
                          members=members, batches=tuple(batches))
        self.co = Coordinator(view, timing_, now)
        self._known_batches = {b.batch_id for b in view.batches}

    # ------------------------------------------------------------- world
    def _read(self) -> None:
        self.liveness.note_area_read(self.now, self.now)
        for s in self.slots.values():
            self.liveness.observe(s, self.now, self.now)

    def crash(self, node_id: int) -> None:
        self.stopped.add(node_id)

    def restart(self, node_id: int, new_incarnation: int, request: Request = Request.JOIN) -> None:
        old = self.slots[node_id]
        # A restarted daemon continues the sequence of the slot it found.
        self.slots[node_id] = replace(old, incarnation=new_incarnation, seq=old.seq + 1, request=request, acks=())
        self.stopped.discard(node_id)

    def request(self, node_id: int, request: Request) -> None:
        self.slots[node_id] = replace(self.slots[node_id], request=request)

    def ack(self, node_id: int, level: int, batch_id: int | None = None) -> None:
        if batch_id is None:
            batch_id = self.co.batches[level].batch_id
        if node_id == self.master:
            self.own_acks[level] = batch_id
            return
        s = self.slots[node_id]
        acks = dict(s.acks)
        acks[level] = batch_id
        self.slots[node_id] = replace(s, acks=tuple(sorted(acks.items())))

    def ack_all(self, hold: Hold = hold_nothing) -> None:
        for batch in list(self.co.batches.values()):
            for p in batch.participants:
                if p not in self.stopped and not hold(p, batch):
                    self.ack(p, batch.level, batch.batch_id)

    # ------------------------------------------------------------- steps
    def step(self, ms: float = STEP_MS) -> StepOutcome:
        self.now += ms
        for n, s in list(self.slots.items()):
            if n not in self.stopped:
                self.slots[n] = replace(s, seq=s.seq + 1)
        self._read()
        out = self.co.step(self.now, self.slots, self.liveness, self.master, self.master_inc,
                           dict(self.own_acks))
        for level in sorted(self.co.batches, key=lambda lv: self.co.batches[lv].batch_id):
            b = self.co.batches[level]
            if b.batch_id not in self._known_batches:
                self._known_batches.add(b.batch_id)
                self.issued.append(Issued(level, b.batch_id,
                                          tuple((e.node_id, e.kind, e.barrier) for e in b.entries),
                                          b.participants))
        return out

    def settle(self, hold: Hold = hold_nothing, steps: int = 60) -> None:
        """Ack everything not held and step, ``steps`` times."""
        for _ in range(steps):
            self.ack_all(hold)
            self.step()

    def step_until(self, cond: Callable[[], bool], hold: Hold = hold_nothing, limit_ms: float = 10 * DA) -> None:
        start = self.now
        while not cond():
            assert self.now - start < limit_ms, "condition never became true"
            self.ack_all(hold)
            self.step()

    # ------------------------------------------------------------- views
    def m(self, node_id: int) -> MemberEntry:
        """The node's row; a placeholder (incarnation 0, inactive) before it has one."""
        return self.co.members.get(node_id) or MemberEntry(node_id, 0, S.INACTIVE)

    def view(self) -> ViewRecord:
        return self.co.view(self.master, self.master_inc, 0)

    def log(self, node_id: int | None = None, kind: Kind | None = None) -> list[tuple[int, int]]:
        """(level, barrier) of every issued batch entry for node_id/kind."""
        return [(i.level, e[2]) for i in self.issued for e in i.entries
                if (node_id is None or e[0] == node_id) and (kind is None or e[1] is kind)]


def two_nodes_joining(**barriers: tuple[int, int, int]) -> Bench:
    """n1 (master) joined; n2 asks to join; both registered at every level."""
    r = regs(**barriers)
    return Bench([joined(1)], [slot(1, registrations=r), slot(2, Request.JOIN, r)])


# ====================================================================== join
def test_join_goes_bottom_up_through_levels_and_barriers() -> None:
    b = two_nodes_joining(l10=(2, 1, 1), l30=(3, 1, 1))
    b.settle()
    assert [(i.level, i.entries) for i in b.issued] == [
        (0, ((2, J, 0),)),
        (10, ((2, J, 0),)), (10, ((2, J, 1),)),
        (20, ((2, J, 0),)),
        (30, ((2, J, 0),)), (30, ((2, J, 1),)), (30, ((2, J, 2),)),
        (40, ((2, J, 0),)),
    ]
    assert all(i.participants == (1, 2) for i in b.issued)
    ids = [i.batch_id for i in b.issued]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert b.m(2) == replace(b.m(2), state=S.JOINED, kind=None, cursor=-1, barrier=0)
    assert b.co.batches == {}


def test_each_join_step_waits_for_all_acks_and_only_one_batch_per_level() -> None:
    b = two_nodes_joining(l10=(2, 1, 1))
    b.step()
    while b.m(2).state is S.JOINING:
        assert len(b.co.batches) == 1  # one node, one step at a time
        (level, batch), = b.co.batches.items()
        cursor = (b.m(2).cursor, b.m(2).barrier)
        b.ack(1, level)
        b.step()
        assert (b.m(2).cursor, b.m(2).barrier) == cursor and b.co.batches[level] == batch  # n2 has not acked
        b.ack(2, level)
        b.step()
        assert b.m(2).state is S.JOINED or (b.m(2).cursor, b.m(2).barrier) != cursor


@pytest.mark.parametrize("cluster_levels, joiner_levels", [
    ((0, 10, 20), (10, 20)),  # the cluster has a lower level than the joiner
    ((10, 20), (0, 10, 20)),  # the joiner brings a lower level
])
def test_join_starts_at_the_lowest_level_of_cluster_and_joiner(cluster_levels: tuple[int, ...],
                                                                 joiner_levels: tuple[int, ...]) -> None:
    b = Bench([joined(1)], [slot(1, registrations=regs(cluster_levels)),
                            slot(2, Request.JOIN, regs(joiner_levels))])
    b.settle()
    assert b.log(2, J) == [(0, 0), (10, 0), (20, 0)]


def test_master_joins_itself_into_an_empty_view() -> None:
    b = Bench([], [slot(1, Request.JOIN)])
    b.settle()
    assert b.log(1, J) == [(lv, 0) for lv in LEVELS]
    assert all(i.participants == (1,) for i in b.issued)
    assert b.m(1).state is S.JOINED


def test_join_with_no_levels_anywhere_is_immediate() -> None:
    b = Bench([], [slot(1, Request.JOIN, registrations=())])
    b.step()
    assert b.m(1).state is S.JOINED and b.issued == []


# ===================================================================== leave
def test_leave_goes_top_down_through_levels_and_barriers() -> None:
    r = regs(l30=(1, 2, 1))
    b = Bench([joined(1), joined(2)], [slot(1, registrations=r), slot(2, Request.LEAVE, r)])
    b.settle()
    assert [(i.level, i.entries) for i in b.issued] == [
        (40, ((2, L, 0),)), (30, ((2, L, 0),)), (30, ((2, L, 1),)), (20, ((2, L, 0),)),
        (10, ((2, L, 0),)), (0, ((2, L, 0),)),
    ]
    assert all(i.participants == (1, 2) for i in b.issued)
    assert b.m(2).state is S.INACTIVE and not b.m(2).forced


# ====================================================== blocking and acks
@pytest.mark.parametrize("withholder", [1, 2, 3], ids=["master", "joiner", "other-member"])
def test_a_node_not_acking_blocks_the_level(withholder: int) -> None:
    b = Bench([joined(1), joined(3)], [slot(1), slot(2, Request.JOIN), slot(3)])
    b.step_until(lambda: b.m(2).cursor == 10)
    batch = b.co.batches[10]
    assert batch.participants == (1, 2, 3)
    b.settle(hold_at((withholder, 10)), steps=40)
    assert b.co.batches[10] == batch and b.m(2).cursor == 10 and 20 not in b.co.batches
    assert b.m(withholder).state in (S.JOINED, S.JOINING)  # well within the transition timeout
    b.settle()
    assert b.m(2).state is S.JOINED


def test_an_ack_of_an_older_batch_does_not_count() -> None:
    b = two_nodes_joining()
    b.step()
    current = b.co.batches[0]
    b.ack(1, 0)
    b.ack(2, 0, current.batch_id - 1)
    b.step()
    assert b.co.batches[0] == current


def test_an_ack_above_the_batch_does_not_count() -> None:
    """Acks match exactly: a follower that acked a higher id -- from a view a
    deposed master wrote late -- has not processed this batch.  (With ``>=``
    that ack satisfied batches it never saw.)"""
    b = two_nodes_joining()
    b.step()
    current = b.co.batches[0]
    b.ack(1, 0)
    b.ack(2, 0, current.batch_id + 7)
    b.step()
    assert b.co.batches[0] == current


def test_batch_ids_carry_the_term() -> None:
    """A new master's batch ids are above every id of an older term, however
    many batches that term issued, so no old ack can ever equal a new id."""
    from clusterfw.core.coordinator import TERM_SHIFT, batch_id_for, batch_label
    assert batch_id_for(2, 1) > batch_id_for(1, (1 << TERM_SHIFT) - 1)
    assert batch_label(batch_id_for(3, 17)) == "3.17"
    view = ViewRecord(node_id=1, incarnation=inc(1), seq=1, term=3, epoch=9, next_batch_id=batch_id_for(1, 40),
                      levels=tuple(LevelSpec(lv, (1, 1, 1)) for lv in LEVELS), members=(joined(1),))
    co = Coordinator(view, TIMING, 0.0)
    assert co.next_batch_id == batch_id_for(3, 1)


# ========================================================== forced leaves
def test_member_dead_by_heartbeat_is_forced_and_recovered_bottom_up() -> None:
    b = Bench([joined(1), joined(2), joined(3)], [slot(1), slot(2), slot(3)])
    b.step()
    last_heartbeat_seen = b.now
    b.crash(3)
    while b.now + STEP_MS - last_heartbeat_seen < DA:
        b.step()
        assert b.m(3).state is S.JOINED
    b.step()
    m = b.m(3)
    assert (m.state, m.kind, m.top_level, m.ready, m.cursor) == (S.FORCED_LEAVING, F, 40, True, 0)
    assert b.issued[-1] == Issued(0, b.issued[-1].batch_id, ((3, F, 0),), (1, 2))
    b.settle()
    assert b.log(3, F) == [(lv, 0) for lv in LEVELS]
    assert all(3 not in i.participants for i in b.issued)
    assert (b.m(3).state, b.m(3).forced) == (S.INACTIVE, True)


def test_forced_leave_barriers() -> None:
    r = regs(l20=(1, 1, 2))
    b = Bench([joined(1), joined(2)], [slot(1, registrations=r), slot(2, registrations=r)])
    b.crash(2)
    b.settle(steps=120)
    assert b.log(2, F) == [(0, 0), (10, 0), (20, 0), (20, 1), (30, 0), (40, 0)]


def test_forced_by_timeout_recovery_waits_until_the_node_is_dead() -> None:
    t = replace(TIMING, transition_timeout_ms=2000)
    b = Bench([joined(1), joined(3)], [slot(1), slot(2, Request.JOIN), slot(3)], timing_=t)
    b.step_until(lambda: 10 in b.co.batches)
    issued_at = b.now
    hung = hold_at((3, 10))
    b.step_until(lambda: b.m(3).state is not S.JOINED, hold=hung)
    assert b.now - issued_at >= 2000
    assert (b.m(3).state, b.m(3).ready) == (S.FORCED_LEAVING, False)
    # n3 still heartbeats: no recovery notification for it, however long.
    b.settle(hung, steps=int(3 * DA / STEP_MS))
    assert b.log(3, F) == [] and not b.m(3).ready
    assert b.m(2).state is S.JOINED  # the others went on without n3
    # n3 reads the view and fences: its heartbeat stops; recovery starts DA later.
    b.crash(3)
    stopped_at = b.now
    b.step_until(lambda: b.m(3).ready)
    assert b.now - stopped_at >= DA
    b.settle()
    assert b.log(3, F) == [(lv, 0) for lv in LEVELS]


def test_restarted_node_old_incarnation_forced_and_new_join_waits_for_recovery() -> None:
    b = Bench([joined(1), joined(2)], [slot(1), slot(2)])
    b.step()
    b.restart(2, new_incarnation=999)
    first_seen = b.now + STEP_MS
    b.step()
    m = b.m(2)
    assert (m.incarnation, m.state, m.ready) == (inc(2), S.FORCED_LEAVING, False)
    b.step_until(lambda: bool(b.log(2, F)))
    # Recovery only once the old incarnation is dead: DA after the new one was first seen.
    assert b.now - first_seen >= DA
    assert b.now - first_seen < DA + 2 * STEP_MS
    b.step_until(lambda: b.m(2).incarnation == 999)
    # Admitted in the step that completed the old incarnation's recovery, not before.
    assert b.log(2, F) == [(lv, 0) for lv in LEVELS]
    assert all(e.kind is not F for batch in b.co.batches.values() for e in batch.entries)
    assert [k for i in b.issued for (n, k, _) in i.entries if n == 2] == [F] * 5 + [J]
    b.settle()
    assert (b.m(2).incarnation, b.m(2).state) == (999, S.JOINED)


def test_forced_out_incarnation_never_rejoins_from_its_stale_slot() -> None:
    b = Bench([joined(1), MemberEntry(2, inc(2), S.INACTIVE, forced=True)], [slot(1), slot(2, Request.JOIN)])
    b.settle(steps=20)
    assert (b.m(2).state, b.m(2).incarnation) == (S.INACTIVE, inc(2)) and b.issued == []


def test_a_node_that_left_gracefully_may_join_again() -> None:
    """The control for the test above: only ``forced`` keeps the slot out."""
    b = Bench([joined(1), MemberEntry(2, inc(2), S.INACTIVE, forced=False)], [slot(1), slot(2, Request.JOIN)])
    b.settle()
    assert b.m(2).state is S.JOINED


def test_forced_node_is_removed_from_outstanding_batches() -> None:
    b = Bench([joined(1), joined(3)], [slot(1), slot(2, Request.JOIN), slot(3)])
    b.step_until(lambda: 10 in b.co.batches)
    batch = b.co.batches[10]
    b.crash(3)
    b.step_until(lambda: b.m(3).state is not S.JOINED, hold=hold_at((3, 10), (1, 10), (2, 10)))
    after = b.co.batches[10]
    assert after.batch_id == batch.batch_id and after.entries == batch.entries
    assert after.participants == (1, 2)
    b.ack(1, 10)
    b.ack(2, 10)
    b.step()
    assert 10 not in b.co.batches or b.co.batches[10].batch_id != batch.batch_id
    assert b.m(2).cursor in (20, -1) or b.m(2).state is S.JOINED


# =========================================== Figs. 13-15 and re-notification
def test_figs_13_to_15_forced_leave_of_a_hung_join_recovers_only_notified_levels() -> None:
    """N0 (n2) joins; levels 0..20 process it; both SFS subsystems (level 30)
    never ack; N0 fails.  Forced leave: bottom-up through 0, 10, 20 and 30,
    where the outstanding join is superseded by a forced-leaving
    re-notification; never level 40."""
    b = two_nodes_joining()
    sfs_hung = hold_at((1, 30), (2, 30))
    b.step_until(lambda: 30 in b.co.batches)
    join_at_30 = b.co.batches[30]
    b.settle(sfs_hung, steps=10)
    b.crash(2)
    b.step_until(lambda: b.m(2).state is S.FORCED_LEAVING, hold=sfs_hung)
    assert b.m(2).top_level == 30
    b.step_until(lambda: b.log(2, F)[-1:] == [(30, 0)], hold=sfs_hung)
    renotified = b.co.batches[30]
    assert renotified.batch_id > join_at_30.batch_id
    assert renotified.entries == (BatchEntry(2, F, 0),) and renotified.participants == (1,)
    # N1's SFS aborts the join and acks the forced leave.
    b.ack(1, 30)
    b.settle(steps=20)
    assert b.log(2, F) == [(0, 0), (10, 0), (20, 0), (30, 0)]
    assert all(i.level != 40 for i in b.issued)
    assert (b.m(2).state, b.m(2).forced) == (S.INACTIVE, True)


def test_renotification_supersedes_a_batch_carrying_a_graceful_leave() -> None:
    b = Bench([joined(1), joined(2), joined(3)], [slot(1), slot(2, Request.LEAVE), slot(3)])
    held = hold_at((1, 20), (3, 20))  # level 20 on n1 and n3 is still processing n2's leave
    b.step_until(lambda: 20 in b.co.batches, hold=held)
    leave_batch = b.co.batches[20]
    assert leave_batch.entries == (BatchEntry(2, L, 0),)
    b.crash(2)
    b.step_until(lambda: b.log(2, F)[-1:] == [(20, 0)], hold=held)
    new = b.co.batches[20]
    assert new.batch_id > leave_batch.batch_id and new.entries == (BatchEntry(2, F, 0),)
    assert new.participants == (1, 3)
    # Acks of the superseded batch do not complete the new one.
    b.ack(1, 20, leave_batch.batch_id)
    b.ack(3, 20, leave_batch.batch_id)
    b.step()
    assert b.co.batches[20] == new
    b.settle()
    assert b.log(2, F) == [(lv, 0) for lv in LEVELS]


def test_no_renotification_for_another_nodes_batch() -> None:
    """A forced leave reaching a level whose batch carries only other nodes'
    transitions waits for it rather than superseding it."""
    b = Bench([joined(1), joined(2)], [slot(1), slot(2), slot(3, Request.JOIN)])
    b.step_until(lambda: 10 in b.co.batches, hold=hold_at((1, 10)))
    join3 = b.co.batches[10]
    b.crash(2)
    b.step_until(lambda: b.m(2).state is S.FORCED_LEAVING, hold=hold_at((1, 10)))
    b.settle(hold_at((1, 10)), steps=60)
    assert b.co.batches[10].batch_id == join3.batch_id
    assert b.log(2, F) == [(0, 0)]
    b.settle(steps=80)
    assert b.log(2, F) == [(lv, 0) for lv in LEVELS]


# ============================================================== requests
def test_mismatched_barriers_are_rejected_naming_the_level_and_both_counts() -> None:
    b = Bench([joined(1)], [slot(1, registrations=regs(l10=(2, 1, 1))), slot(2, Request.JOIN, regs())])
    out = b.step()
    assert out.changed and 2 not in b.co.members
    (rej,) = b.view().rejections
    assert (rej.node_id, rej.incarnation, rej.level) == (2, inc(2), 10)
    assert "level 10" in rej.reason and "(1, 1, 1)" in rej.reason and "(2, 1, 1)" in rej.reason
    epoch = b.co.epoch
    assert not b.step().changed and b.co.epoch == epoch  # refused once, not again every cycle
    b.settle(steps=5)
    assert b.view().rejections == (rej,) and 2 not in b.co.members
    # A restart with the right counts clears the rejection and joins.
    b.slots[2] = replace(b.slots[2], incarnation=777, registrations=regs(l10=(2, 1, 1)))
    b.settle()
    assert b.view().rejections == () and b.m(2).state is S.JOINED


@pytest.mark.parametrize("bad, level", [
    (regs(l40=(1, 1, 2)), 40),  # forced-leave barriers differ
    (regs(l0=(1, 3, 1)), 0),  # leave barriers differ
    (regs() + (Registration(20, "again"),), 20),  # a level registered twice
    (regs() + (Registration(50, "new", (1, 0, 1)),), 50),  # a barrier count below one, at a new level
])
def test_other_bad_registrations_are_rejected(bad: tuple[Registration, ...], level: int) -> None:
    b = Bench([joined(1)], [slot(1), slot(2, Request.JOIN, bad)])
    b.step()
    (rej,) = b.view().rejections
    assert rej.level == level and 2 not in b.co.members


@pytest.mark.parametrize("heartbeating", [True, False])
def test_join_request_in_a_dead_slot_is_ignored(heartbeating: bool) -> None:
    """A slot still asking to join whose heartbeat has not changed for its
    dead_after (the node died before it was admitted) is not admitted."""
    b = Bench([joined(1)], [slot(1), slot(2, Request.JOIN)])
    if not heartbeating:
        b.crash(2)
    b.step(DA)  # the master's first step comes DA after its first read
    assert (b.m(2).state is S.JOINING) is heartbeating


def test_joining_node_asked_to_leave_finishes_the_level_then_reverses() -> None:
    b = two_nodes_joining()
    b.step_until(lambda: 10 in b.co.batches)
    batch = b.co.batches[10]
    b.request(2, Request.LEAVE)
    b.settle(hold_at((1, 10), (2, 10)), steps=5)
    assert b.co.batches[10] == batch  # not superseded, not reversed inside the level
    assert (b.m(2).state, b.m(2).kind, b.m(2).leave_requested) == (S.JOINING, J, True)
    b.settle()
    assert b.log(2) == [(0, 0), (10, 0), (10, 0), (0, 0)]
    assert [k for i in b.issued for (_, k, _) in i.entries] == [J, J, L, L]
    assert (b.m(2).state, b.m(2).forced) == (S.INACTIVE, False)


def test_joining_node_asked_to_leave_does_not_reverse_between_barriers() -> None:
    b = two_nodes_joining(l10=(3, 1, 1))
    b.step_until(lambda: 10 in b.co.batches)
    b.request(2, Request.LEAVE)
    b.settle()
    assert b.log(2) == [(0, 0), (10, 0), (10, 1), (10, 2), (10, 0), (0, 0)]
    assert [k for i in b.issued for (_, k, _) in i.entries] == [J, J, J, J, L, L]


def test_joining_node_waiting_for_a_level_reverses_from_the_level_below() -> None:
    """n2 has done level 0 and waits at level 10 behind n3's batch: it is
    between levels, so its leave starts at once, from level 0."""
    b = Bench([joined(1)], [slot(1), slot(2), slot(3, Request.JOIN)])
    b.step_until(lambda: 10 in b.co.batches, hold=hold_at((1, 10)))  # n3's join stuck at 10
    b.request(2, Request.JOIN)
    b.step_until(lambda: b.m(2).cursor == 10, hold=hold_at((1, 10)))
    assert all(e.node_id != 2 for e in b.co.batches[10].entries)
    b.request(2, Request.LEAVE)
    b.step()
    assert (b.m(2).state, b.m(2).kind, b.m(2).cursor) == (S.LEAVING, L, 0)
    b.settle(hold_at((1, 10)), steps=10)
    assert b.log(2) == [(0, 0), (0, 0)] and b.m(2).state is S.INACTIVE


def test_joining_node_that_no_level_processed_leaves_at_once() -> None:
    b = Bench([joined(1)], [slot(1), slot(2), slot(3, Request.JOIN)])
    b.step_until(lambda: 0 in b.co.batches, hold=hold_at((1, 0)))  # n3's join stuck at level 0
    b.request(2, Request.JOIN)
    b.step()
    assert (b.m(2).state, b.m(2).cursor) == (S.JOINING, 0)
    b.request(2, Request.LEAVE)
    b.step()
    assert b.m(2).state is S.INACTIVE and b.log(2) == []


def test_a_leave_still_being_processed_blocks_a_join() -> None:
    """The same incarnation asks to join again mid-leave: the leave runs to
    the bottom first, then the join starts from the bottom."""
    b = Bench([joined(1), joined(2)], [slot(1), slot(2, Request.LEAVE)])
    b.step_until(lambda: 30 in b.co.batches)
    b.request(2, Request.JOIN)
    b.settle(steps=40)
    assert [(lv, k) for i in b.issued for (n, k, _) in i.entries for lv in [i.level] if n == 2] == \
        [(lv, L) for lv in reversed(LEVELS)] + [(lv, J) for lv in LEVELS]
    assert b.m(2).state is S.JOINED


def test_previous_incarnation_being_forced_blocks_the_new_join() -> None:
    forced = MemberEntry(2, inc(2), S.FORCED_LEAVING, kind=F, top_level=40)
    b = Bench([joined(1), forced], [slot(1), slot(2, Request.JOIN, incarnation=555)])
    b.step()
    assert b.m(2).incarnation == inc(2)  # the new incarnation is not admitted
    b.settle(steps=int(2 * DA / STEP_MS))
    # Every recovery step of the old incarnation comes before the new one's first join step.
    assert [(lv, k) for i in b.issued for (n, k, _) in i.entries for lv in [i.level] if n == 2] == \
        [(lv, F) for lv in LEVELS] + [(lv, J) for lv in LEVELS]
    assert b.m(2).incarnation == 555 and b.m(2).state is S.JOINED


def test_level_without_participants_is_passed_at_once() -> None:
    """n2 (registered only at 0) reaches level 10, where the only registered
    node, n3, has not joined yet (its join sits at level 0): nobody to tell."""
    r0, r010 = regs((0,)), regs((0, 10))
    n3_batch = Batch(0, 5, (BatchEntry(3, J, 0),), (1, 3))
    members = [joined(1), MemberEntry(2, inc(2), S.JOINING, J, cursor=10, top_level=0),
               MemberEntry(3, inc(3), S.JOINING, J, cursor=0, top_level=0)]
    b = Bench(members, [slot(1, registrations=r0), slot(2, Request.JOIN, r0), slot(3, Request.JOIN, r010)],
              batches=[n3_batch], next_batch_id=6)
    b.step()
    assert b.m(2).state is S.JOINED and 10 not in b.co.batches and b.issued == []
    assert b.co.batches[0] == n3_batch


# =============================================================== timeouts
@pytest.mark.parametrize("non_acker, self_forced", [(1, True), (2, False)], ids=["master", "joiner"])
def test_transition_timeout_forces_the_non_acker(non_acker: int, self_forced: bool) -> None:
    t = replace(TIMING, transition_timeout_ms=2000)
    b = Bench([joined(1)], [slot(1), slot(2, Request.JOIN)], timing_=t)
    b.step()
    issued_at = b.now
    b.ack(3 - non_acker, 0)
    b.step(2000 - STEP_MS - 1)
    out = b.step(STEP_MS)  # 1999 ms after the batch was issued
    assert not out.self_forced and b.m(non_acker).state in (S.JOINED, S.JOINING)
    out = b.step(1)
    assert b.now - issued_at == 2000
    assert b.m(non_acker).state is S.FORCED_LEAVING
    assert out.self_forced is self_forced and out.changed
    other = 3 - non_acker
    assert b.m(other).state in (S.JOINED, S.JOINING)


def test_inherited_batches_start_their_timeout_when_the_master_takes_over() -> None:
    t = replace(TIMING, transition_timeout_ms=2000)
    old = Batch(0, 9, (BatchEntry(2, J, 0),), (1, 2))
    members = [joined(1), MemberEntry(2, inc(2), S.JOINING, J, cursor=0, top_level=0)]
    b = Bench(members, [slot(1), slot(2, Request.JOIN)], batches=[old], next_batch_id=10, timing_=t,
              now=50_000)
    b.step(1999)
    assert b.m(2).state is S.JOINING
    b.step(1)
    assert b.m(2).state is S.FORCED_LEAVING


# ============================================================ level_state
@pytest.mark.parametrize("entry, expected", [
    (MemberEntry(2, 1, S.JOINED), {0: "joined", 20: "joined", 40: "joined"}),
    (MemberEntry(2, 1, S.INACTIVE), {0: "inactive", 40: "inactive"}),
    (MemberEntry(2, 1, S.JOINING, J, cursor=20), {10: "joined", 20: "joining", 30: "inactive"}),
    (MemberEntry(2, 1, S.LEAVING, L, cursor=20), {10: "joined", 20: "leaving", 30: "inactive"}),
    (MemberEntry(2, 1, S.FORCED_LEAVING, F, cursor=-1), {0: "forced-leaving", 40: "forced-leaving"}),
    (MemberEntry(2, 1, S.FORCED_LEAVING, F, cursor=20, ready=True),
     {10: "inactive", 20: "forced-leaving", 30: "forced-leaving"}),
])
def test_level_state_table(entry: MemberEntry, expected: dict[int, str]) -> None:
    assert {lv: level_state(entry, lv) for lv in expected} == expected


# ===================================================================== bugs
def test_forced_leave_of_a_reversed_join_stops_at_the_highest_notified_level() -> None:
    b = two_nodes_joining()
    b.step_until(lambda: 10 in b.co.batches)
    b.request(2, Request.LEAVE)  # reverses after level 10; levels 20..40 never hear of n2
    b.step_until(lambda: b.m(2).state is S.LEAVING)
    assert b.m(2).top_level == 10 and b.co.batches[10].entries == (BatchEntry(2, L, 0),)
    b.crash(2)
    b.step_until(lambda: b.m(2).state is S.INACTIVE, hold=hold_at((2, 10)))
    assert b.log(2, F) == [(0, 0), (10, 0)]


def test_master_log_lines_name_nodes_by_their_node_table_name() -> None:
    """The master's reasons are for people: a node called web2 is web2 there,
    not n2 (the daemon passes its node table's names in)."""
    b = two_nodes_joining()
    b.co.name_of = {1: "db1", 2: "web2"}.__getitem__
    lines: list[str] = []
    for _ in range(60):
        b.ack_all(hold_nothing)
        lines += [line.text for line in b.step().log]
    assert "web2 joining" in lines and "web2 joins: all levels notified" in lines
    assert any(line.startswith("batch ") and "web2 joining#0 to db1,web2" in line for line in lines), lines
    assert not any("n1" in line or "n2" in line for line in lines), lines


# ============================================================ state machine
def test_an_illegal_membership_move_raises() -> None:
    """A member's state changes only by the moves in MEMBER_TRANSITIONS: a
    forced-out node never becomes a member again without a new join."""
    forced = MemberEntry(2, inc(2), S.FORCED_LEAVING, kind=F, ready=True)
    assert (S.FORCED_LEAVING, S.JOINED) not in MEMBER_TRANSITIONS
    with pytest.raises(AssertionError, match="member 2: illegal move forced-leaving -> joined"):
        move(forced, S.JOINED)
    assert move(forced, S.INACTIVE, kind=None, forced=True) == replace(forced, state=S.INACTIVE, kind=None,
                                                                        forced=True)


def test_the_coordinator_raises_instead_of_making_an_illegal_move() -> None:
    """A corrupt row (being forced out, yet with a join under way) is carried
    through the levels, but the coordinator refuses to make it joined."""
    b = Bench([joined(1), MemberEntry(2, inc(2), S.FORCED_LEAVING, kind=J, cursor=0)], [slot(1), slot(2)])
    with pytest.raises(AssertionError, match="member 2: illegal move forced-leaving -> joined"):
        b.settle()


# ============================================================ the master's log lines
def _lines(b: Bench, steps: int = 60, hold: Hold = hold_nothing) -> list:
    out = []
    for _ in range(steps):
        b.ack_all(hold)
        out += b.step().log
    return out


def test_one_decision_line_per_join_and_two_for_a_crash_the_steps_are_detail() -> None:
    """A person reads one line per decision (the daemon logs them at info):
    a join through every level is one line, a crash is the force (with its
    reason) and the end of the recovery (with the same reason); every batch
    issued and acked is ``detail`` (debug)."""
    b = two_nodes_joining()
    lines = _lines(b)
    assert [line.text for line in lines if not line.detail] == ["n2 joins: all levels notified"]
    detail = [line.text for line in lines if line.detail]
    assert len(detail) >= 3 * len(LEVELS) and "n2 joining" in detail
    assert all(line.startswith(("batch ", "n2 joining")) for line in detail), detail

    b.crash(2)
    lines = _lines(b, steps=120)
    decisions = [line.text for line in lines if not line.detail]
    assert len(decisions) == 2, decisions
    forced, done = decisions
    reason = re.fullmatch(r"n2 forced out \((missed heartbeats for \d+\.\d s)\): recovering its levels", forced)
    assert reason, forced
    assert done == f"n2 forced out ({reason.group(1)}): recovery complete"
    assert (b.m(2).state, b.m(2).forced) == (S.INACTIVE, True)
    assert any(line.detail and "forced-leaving" in line.text for line in lines)


def test_a_forced_out_node_that_is_alive_is_recovered_once_dead_and_the_line_says_why() -> None:
    """Not acking within the transition timeout forces the node out; the
    line names the batch and the level with its subsystem's name, and says
    the recovery waits until the node is dead (it fences itself)."""
    b = two_nodes_joining()
    b.step_until(lambda: 20 in b.co.batches)
    hung = hold_at((2, 20))
    lines = _lines(b, steps=int(TIMING.transition_timeout_ms / STEP_MS) + 5, hold=hung)
    forced = [line.text for line in lines if not line.detail]
    assert len(forced) == 1, forced
    assert re.fullmatch(r"n2 forced out \(did not ack batch 1\.\d+ at level 20 \(sub20\) within \d+\.\d s\): "
                        r"its levels are recovered once it is dead \(fenced\)", forced[0]), forced


def test_levels_now_names_the_levels_and_never_ends_empty() -> None:
    """The levels line (detail) names each level; when no live member is
    registered at any level any more it says so instead of ending empty."""
    b = two_nodes_joining()
    lines = [line.text for line in _lines(b, steps=3)]
    b2 = Bench([joined(1), MemberEntry(2, inc(2), S.FORCED_LEAVING, kind=F, top_level=40)],
               [slot(1, registrations=()), slot(2)], master=1)
    b2.crash(2)
    lines2 = [line for line in _lines(b2, steps=3)]
    levels_lines = [line for line in lines2 if line.text.startswith("levels now")]
    assert levels_lines and all(line.detail for line in levels_lines)
    assert levels_lines[0].text == "levels now none: no live member is registered at any level"
    assert not any(line.rstrip() == "levels now" for line in lines)
