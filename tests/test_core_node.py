"""NodeCore, driven by a tiny in-test disk: a dict of slots and one of views,
instant I/O, and a driver loop that calls ``poll``/``complete`` itself.

The driver keeps every op and event per node so that tests can read the
story back: which levels were notified in which order, what the last slot
write carried, when fencing happened and that nothing followed it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import pytest

from clusterfw.core import timing
from clusterfw.core.model import (BatchEntry, Kind, Lease, LevelSpec, MemberEntry, NodeState, Registration,
                                  Request, SlotRecord, ViewRecord)
from clusterfw.core.dlm import DlmResult, ReadArea
from clusterfw.core.node import (Event, FenceCause, Fenced, MasterChanged, NodeCore, Notify, Op, OpResult, ReadViews,
                                 ReadSlots, ReadView, Rejected, Role, StateChanged, Stopped, StopReason, Unreadable,
                                 WriteSlot, WriteView)

TIMING = timing.derive(timing.LAB)
FENCE_WAIT_MS = TIMING.fence_after_ms - TIMING.io_timeout_ms  # 400
LEVELS = (0, 10, 20, 30, 40)
NODES = 4
S = NodeState


def zero() -> float:
    return 0.0


def regs(levels: tuple[int, ...] = LEVELS, **barriers: tuple[int, int, int]) -> tuple[Registration, ...]:
    return tuple(Registration(lv, f"sub{lv}", barriers.get(f"l{lv}", (1, 1, 1))) for lv in levels)


class FakeDisk:
    """Slots and views in dicts; every op is instant and lands whole."""

    def __init__(self) -> None:
        self.slots: dict[int, SlotRecord] = {}
        self.views: dict[tuple[int, int], ViewRecord] = {}
        self.fail: Callable[[int, Op, float], bool] = lambda node_id, op, now: False

    def newest_view(self, node_id: int) -> ViewRecord | None:
        copies = [v for (n, _), v in self.views.items() if n == node_id]
        return max(copies, key=lambda v: (v.term, v.epoch, v.seq), default=None)

    def perform(self, node_id: int, op: Op, now: float) -> OpResult:
        if self.fail(node_id, op, now):
            return OpResult(op, False, now, now, None, "EIO")
        value: object = None
        if isinstance(op, WriteSlot):
            assert op.record.node_id == node_id
            self.slots[node_id] = op.record
        elif isinstance(op, WriteView):
            assert op.record.node_id == node_id
            self.views[(node_id, op.copy)] = op.record
        elif isinstance(op, ReadSlots):
            value = {n: self.slots.get(n, Unreadable("never written", never_written=True))
                     for n in range(1, NODES + 1)}
        elif isinstance(op, ReadView):
            value = self.newest_view(op.node_id)
        elif isinstance(op, ReadViews):
            value = {n: self.newest_view(n) for n in range(op.first, min(op.first + op.count, NODES + 1))}
        return OpResult(op, True, now, now, value)


@dataclass
class Host:
    core: NodeCore
    ops: list[tuple[float, Op]] = field(default_factory=list)
    events: list[tuple[float, Event]] = field(default_factory=list)
    auto_ack: bool = True
    ack_delay_ms: float = 0.0  # a subsystem that takes this long to process a notification
    pending_acks: list[tuple[float, int, int]] = field(default_factory=list)

    def of(self, kind: type) -> list:
        return [e for _, e in self.events if isinstance(e, kind)]


class Driver:
    def __init__(self) -> None:
        self.disk = FakeDisk()
        self.hosts: dict[int, Host] = {}
        self.now = 0.0

    def start(self, node_id: int, registrations: tuple[Registration, ...] = regs(),
              incarnation: int | None = None) -> Host:
        core = NodeCore(node_id=node_id, incarnation=incarnation or 0x100 + node_id, timing=TIMING,
                        registrations=registrations, rng=zero, now_ms=self.now,
                        previous_slot=self.disk.slots.get(node_id))
        host = self.hosts[node_id] = Host(core)
        return host

    def cycle(self, host: Host) -> list[Op]:
        """One poll at ``now``; performs and completes whatever it returned."""
        core = host.core
        ops = core.poll(self.now)
        if ops:
            host.ops.extend((self.now, op) for op in ops)
            results = [self.disk.perform(core.node_id, op, self.now) for op in ops]
            core.complete(self.now, results)
        self._events(host)
        return ops

    def _events(self, host: Host) -> None:
        for ev in host.core.take_events():
            host.events.append((self.now, ev))
            if isinstance(ev, Notify) and host.auto_ack:
                if host.ack_delay_ms:
                    host.pending_acks.append((self.now + host.ack_delay_ms, ev.level, ev.batch_id))
                else:
                    host.core.ack(ev.level, ev.batch_id, self.now)

    def run(self, until: Callable[[], bool], limit_ms: float = 20_000) -> None:
        deadline = self.now + limit_ms
        while not until():
            assert self.now < deadline, "condition not reached"
            live = [h for h in self.hosts.values() if h.core.fenced is None and h.core.stopped is None]
            assert live, "every node stopped before the condition was reached"
            acks = [(a[0], i, h) for i, h in enumerate(live) for a in h.pending_acks]
            if acks and min(acks, key=lambda a: a[:2])[0] <= min(h.core.wakeup_ms() for h in live):
                at, _, host = min(acks, key=lambda a: a[:2])
                self.now = max(self.now, at)
                _, level, batch_id = host.pending_acks.pop(0)
                host.core.ack(level, batch_id, self.now)
                continue
            host = min(live, key=lambda h: h.core.wakeup_ms())
            self.now = max(self.now, host.core.wakeup_ms())
            host.core.tick(self.now)
            if not self.cycle(host) and host.core.wakeup_ms() <= self.now:
                self.now += 1  # due but nothing to do: let time pass


def view_of(host: Host) -> ViewRecord:
    assert host.core.view is not None
    return host.core.view


def row(host: Host, node_id: int) -> MemberEntry:
    """node_id's row in the view host has adopted."""
    m = view_of(host).member(node_id)
    assert m is not None
    return m


def slot_writes(host: Host) -> list[tuple[float, SlotRecord]]:
    return [(t, op.record) for t, op in host.ops if isinstance(op, WriteSlot)]


def notified(host: Host) -> list[tuple[int, tuple[BatchEntry, ...]]]:
    return [(n.level, n.entries) for n in host.of(Notify)]


def formed_cluster(**barriers: tuple[int, int, int]) -> tuple[Driver, Host]:
    d = Driver()
    h = d.start(1, regs(**barriers))
    d.run(lambda: h.core.state is S.JOINED)
    return d, h


# ================================================================= forming
def test_single_node_forms_a_cluster() -> None:
    d, h = formed_cluster()
    core = h.core
    assert core.role is Role.MASTER and core.is_acting_master(d.now)
    assert h.of(MasterChanged) == [MasterChanged(1, 1, True)]
    assert notified(h) == [(lv, (BatchEntry(1, Kind.JOIN, 0),)) for lv in LEVELS]
    batch_ids = [n.batch_id for n in h.of(Notify)]
    assert batch_ids == sorted(set(batch_ids))  # each batch delivered once, in order
    assert h.of(StateChanged) == [StateChanged(S.INACTIVE, S.JOINING), StateChanged(S.JOINING, S.JOINED)]
    assert h.of(Fenced) == [] and h.of(Stopped) == []
    # The election went through both Disk Paxos phases in the slot before deciding.
    leases = [rec.lease for _, rec in slot_writes(h)]
    phase1 = next(i for i, lease in enumerate(leases) if lease.mbal)
    assert leases[phase1].bal == 0 and leases[phase1].committed_term == 0
    assert leases[phase1 + 1].bal == leases[phase1].mbal and leases[phase1 + 1].committed_term == 0
    assert (leases[-1].committed_term, leases[-1].master, leases[-1].master_incarnation) == (1, 1, 0x101)
    # The master read every view once before taking over, then wrote its own.
    first_view_write = next(i for i, (_, op) in enumerate(h.ops) if isinstance(op, WriteView))
    assert any(isinstance(op, ReadViews) for _, op in h.ops[:first_view_write])
    view = d.disk.newest_view(1)
    assert view is not None and view.batches == ()
    assert view.member(1) == MemberEntry(1, 0x101, S.JOINED, top_level=40)


def test_single_node_join_with_barriers() -> None:
    _, h = formed_cluster(l10=(2, 1, 1))
    assert [(lv, tuple(e.barrier for e in es)) for lv, es in notified(h)] == [
        (0, (0,)), (10, (0,)), (10, (1,)), (20, (0,)), (30, (0,)), (40, (0,))]


def test_join_waits_for_the_local_ack() -> None:
    d = Driver()
    h = d.start(1)
    h.auto_ack = False
    d.run(lambda: bool(h.of(Notify)))
    first = h.of(Notify)[0]
    d.run(lambda: d.now > 2000 + h.events[-1][0], limit_ms=5000)
    assert h.of(Notify) == [first] and h.core.state is S.JOINING
    h.core.ack(first.level, first.batch_id, d.now)
    d.run(lambda: len(h.of(Notify)) == 2)
    assert h.of(Notify)[1].level == 10


def test_second_node_joins_and_both_are_notified_in_order() -> None:
    d, h1 = formed_cluster()
    h2 = d.start(2)
    d.run(lambda: h2.core.state is S.JOINED)
    join2 = [(lv, es) for lv, es in notified(h1) if es == (BatchEntry(2, Kind.JOIN, 0),)]
    assert [lv for lv, _ in join2] == list(LEVELS)
    assert [lv for lv, _ in notified(h2)] == list(LEVELS)
    context = h2.of(Notify)[0].context
    assert context == ((1, "joined"),)  # the other node's state travels with the batch
    assert h2.core.role is Role.FOLLOWER and h2.core.decision is not None and h2.core.decision.master == 1


def test_a_node_is_notified_only_at_levels_it_registered() -> None:
    d, h1 = formed_cluster()
    h1.ack_delay_ms = 3 * TIMING.fast_poll_ms  # so that n2 reads every batch while it is outstanding
    h2 = d.start(2, regs((0, 10)))
    d.run(lambda: h2.core.state is S.JOINED)
    assert [lv for lv, es in notified(h1) if es == (BatchEntry(2, Kind.JOIN, 0),)] == list(LEVELS)
    assert [lv for lv, _ in notified(h2)] == [0, 10]


def test_a_batch_is_delivered_once_even_when_the_view_changes_under_it() -> None:
    d, h1 = formed_cluster()
    h1.auto_ack = False
    h2 = d.start(2)
    d.run(lambda: any(n.entries == (BatchEntry(2, Kind.JOIN, 0),) for n in h1.of(Notify)))
    pending = [n for n in h1.of(Notify) if n.entries == (BatchEntry(2, Kind.JOIN, 0),)][0]
    d.run(lambda: any(n.batch_id == pending.batch_id for n in h2.of(Notify)))
    h3 = d.start(3)  # the view changes while n1 has not acked
    epoch = view_of(h1).epoch
    d.run(lambda: view_of(h1).member(3) is not None and view_of(h2).epoch > epoch)
    assert [n.batch_id for n in h1.of(Notify)].count(pending.batch_id) == 1  # not acked yet
    assert [n.batch_id for n in h2.of(Notify)].count(pending.batch_id) == 1  # acked already
    h1.auto_ack = True
    h1.core.ack(pending.level, pending.batch_id, d.now)
    d.run(lambda: all(h.core.state is S.JOINED for h in (h1, h2, h3)))
    for h in (h1, h2, h3):
        keys = [(n.level, n.batch_id) for n in h.of(Notify)]
        assert len(keys) == len(set(keys))


# ================================================================= fencing
def test_fences_when_no_write_completes_for_fence_after_minus_io_timeout() -> None:
    d = Driver()
    h = d.start(1)
    d.disk.fail = lambda node_id, op, now: True  # the disk is gone
    d.cycle(h)
    assert h.core.wakeup_ms() <= FENCE_WAIT_MS  # the driver's timer will fire in time
    h.core.tick(FENCE_WAIT_MS - 0.001)
    assert h.core.fenced is None and h.core.take_events() == []
    h.core.tick(FENCE_WAIT_MS)
    (ev,) = h.core.take_events()
    assert isinstance(ev, Fenced) and h.core.fenced is not None
    assert h.core.wakeup_ms() == float("inf")
    h.core.leave(FENCE_WAIT_MS + 1)
    h.core.ack(0, 99, FENCE_WAIT_MS + 2)
    for t in (FENCE_WAIT_MS, FENCE_WAIT_MS + 1, 10_000, 1e9):
        assert h.core.poll(t) == [] and not h.core.can_write(t)
    assert h.core.take_events() == []  # fenced once, silent after


def test_fence_clock_counts_from_the_issue_of_the_last_completed_write() -> None:
    d = Driver()
    h = d.start(1)
    d.now = 100.0
    ops = h.core.poll(d.now)
    assert isinstance(ops[0], WriteSlot)
    # The write was issued at 100 and completed at 350: the clock restarts at 100.
    # (The write lands on the disk, so the same cycle's slot read shows it.)
    results = [replace(d.disk.perform(1, ops[0], 350.0), start_ms=100.0, end_ms=350.0)] + [
        replace(d.disk.perform(1, op, 350.0), start_ms=100.0) for op in ops[1:]]
    h.core.complete(350.0, results)
    assert h.core.fence_deadline_ms() == 100 + FENCE_WAIT_MS
    assert h.core.can_write(100 + FENCE_WAIT_MS - 0.001)
    h.core.tick(100 + FENCE_WAIT_MS - 0.001)
    assert h.core.fenced is None
    assert h.core.poll(100 + FENCE_WAIT_MS) == [] and h.core.fenced is not None


def test_a_node_whose_writes_succeed_never_fences() -> None:
    d, h = formed_cluster()
    d.run(lambda: d.now > 15_000)
    assert h.core.fenced is None and h.of(Fenced) == []
    # and its writes came often enough: no gap near the fence deadline
    writes = [t for t, _ in slot_writes(h)]
    assert max(b - a for a, b in zip(writes, writes[1:])) <= TIMING.heartbeat_interval_ms


def test_ops_are_only_produced_before_the_fence_deadline() -> None:
    d = Driver()
    h = d.start(1)
    d.disk.fail = lambda node_id, op, now: isinstance(op, WriteSlot)
    d.run(lambda: h.core.fenced is not None, limit_ms=2000)
    assert h.ops and all(t < FENCE_WAIT_MS for t, _ in h.ops)
    assert h.of(Fenced)


def _cluster_with_master_view(member_of_2: MemberEntry | None) -> tuple[Driver, Host]:
    """n1 is master of term 1 (its slot and view on disk, hand-made); n2 starts."""
    d = Driver()
    lease = Lease(term=1, mbal=257, bal=257, inp=1, inp_incarnation=0x101, committed_term=1, master=1,
                  master_incarnation=0x101)
    d.disk.slots[1] = SlotRecord(node_id=1, incarnation=0x101, seq=5, timing=TIMING, lease=lease,
                                 registrations=regs())
    members = (MemberEntry(1, 0x101, S.JOINED),) + ((member_of_2,) if member_of_2 else ())
    d.disk.views[(1, 0)] = ViewRecord(node_id=1, incarnation=0x101, seq=6, term=1, epoch=3,
                                      levels=tuple(LevelSpec(lv, (1, 1, 1)) for lv in LEVELS),
                                      members=members)
    return d, d.start(2)


@pytest.mark.parametrize("entry", [
    MemberEntry(2, 0x102, S.FORCED_LEAVING, Kind.FORCED, top_level=40),
    MemberEntry(2, 0x102, S.INACTIVE, forced=True),
], ids=["forced-leaving", "forced-out"])
def test_reading_itself_forced_out_in_the_view_fences_at_once(entry: MemberEntry) -> None:
    d, h = _cluster_with_master_view(entry)
    d.cycle(h)  # learns the master from the slots
    assert h.of(MasterChanged) == [MasterChanged(1, 1, False)]
    d.now = h.core.wakeup_ms()
    ops = d.cycle(h)  # reads the master's view
    assert ReadView(1) in ops
    assert h.of(Fenced) and "forced out" in h.of(Fenced)[0].reason
    assert h.core.state is entry.state
    for t in (d.now, d.now + 100, d.now + 10_000):
        assert h.core.poll(t) == []


def test_reading_itself_forced_out_under_an_old_incarnation_does_not_fence() -> None:
    """The control: a forced row of a previous incarnation is not about us."""
    d, h = _cluster_with_master_view(MemberEntry(2, 0x999, S.FORCED_LEAVING, Kind.FORCED, top_level=40))
    d.cycle(h)
    d.now = h.core.wakeup_ms()
    assert ReadView(1) in d.cycle(h)
    d.cycle(h)  # acted on once its slot names the epoch (see the next test)
    assert view_of(h).epoch == 3  # it did read and adopt the view
    assert h.core.fenced is None and h.core.poll(h.core.wakeup_ms())


def test_a_follower_acts_on_a_view_only_after_its_slot_names_the_epoch() -> None:
    """Otherwise a new master could read our slot before it says we saw the
    view, resume from an older one, and roll back what we acted on."""
    d, h = _cluster_with_master_view(MemberEntry(2, 0x102, S.JOINED))
    d.cycle(h)
    d.now = h.core.wakeup_ms()
    assert ReadView(1) in d.cycle(h)
    assert h.core.view is None and h.core.state is S.INACTIVE  # read, not yet acted on
    assert h.core.wakeup_ms() <= d.now  # the next cycle runs at once
    d.disk.fail = lambda node_id, op, now: isinstance(op, WriteSlot)
    d.cycle(h)
    assert h.core.view is None  # that slot write failed: still not acted on
    d.disk.fail = lambda node_id, op, now: False
    d.now = h.core.wakeup_ms()
    d.cycle(h)
    assert d.disk.slots[2].seen_epoch == 3
    assert view_of(h).epoch == 3 and h.core.state is S.JOINED


# ============================================================== takeover
def test_master_crash_takeover_waits_for_dead_after_then_recovers() -> None:
    d, h1 = formed_cluster()
    h2 = d.start(2)
    d.run(lambda: h2.core.state is S.JOINED)
    last_write = max(t for t, _ in slot_writes(h1))
    del d.hosts[1]  # n1 crashes: nothing of it runs any more
    d.run(lambda: h2.core.role is Role.MASTER)
    took_over = next(t for t, e in h2.events if isinstance(e, MasterChanged) and e.me)
    assert took_over - last_write >= TIMING.dead_after_ms
    assert h2.of(MasterChanged)[-1] == MasterChanged(2, 2, True)
    d.run(lambda: row(h2, 1).state is S.INACTIVE)
    assert row(h2, 1).forced
    recovery = [lv for lv, es in notified(h2) if es == (BatchEntry(1, Kind.FORCED, 0),)]
    assert recovery == list(LEVELS)
    assert h2.core.state is S.JOINED and h2.of(Fenced) == []


def test_resigned_master_is_replaced_without_waiting_for_dead_after() -> None:
    d, h1 = formed_cluster()
    h2 = d.start(2)
    d.run(lambda: h2.core.state is S.JOINED)
    h1.core.leave(d.now)
    d.run(lambda: h1.core.stopped is not None)
    stopped_at = d.now
    d.run(lambda: h2.core.role is Role.MASTER)
    assert d.now - stopped_at < TIMING.dead_after_ms / 2
    d.run(lambda: h2.core.view is not None and h2.core.view.term == 2)
    assert row(h2, 1).state is S.INACTIVE and not row(h2, 1).forced
    assert h2.core.state is S.JOINED


# ================================================================ leaving
def test_graceful_leave_of_the_master_resigns_in_a_final_slot_write() -> None:
    d, h = formed_cluster()
    before = len(h.of(Notify))
    h.core.leave(d.now)
    d.run(lambda: h.core.stopped is not None)
    leave_notes = notified(h)[before:]
    assert leave_notes == [(lv, (BatchEntry(1, Kind.LEAVE, 0),)) for lv in reversed(LEVELS)]
    assert h.of(StateChanged)[-2:] == [StateChanged(S.JOINED, S.LEAVING), StateChanged(S.LEAVING, S.INACTIVE)]
    assert h.events[-1][1] == Stopped("left")
    last_time, last_write = slot_writes(h)[-1]
    assert last_write.lease.resigned and last_write.request is Request.NONE
    assert (last_write.lease.committed_term, last_write.lease.master) == (1, 1)
    assert not any(isinstance(op, (WriteSlot, WriteView)) for t, op in h.ops if t > last_time)
    assert h.core.role is Role.FOLLOWER and h.core.poll(d.now + 1e6) == []
    assert h.of(Fenced) == []
    assert d.disk.slots[1].lease.resigned  # on disk: the next node may take over at once


def test_stopped_only_once_the_final_write_completed() -> None:
    d, h = formed_cluster()
    h.core.leave(d.now)
    d.run(lambda: h.core.final_write)
    failed: list[float] = []

    def fail_first_final_write(node_id: int, op: Op, now: float) -> bool:
        if isinstance(op, WriteSlot) and op.record.lease.resigned and not failed:
            failed.append(now)
            return True
        return False

    d.disk.fail = fail_first_final_write
    d.run(lambda: bool(failed))
    assert h.core.stopped is None and not d.disk.slots[1].lease.resigned
    d.run(lambda: h.core.stopped is not None, limit_ms=1000)
    assert d.disk.slots[1].lease.resigned and h.events[-1][1] == Stopped("left")


def test_graceful_leave_of_a_follower() -> None:
    d, h1 = formed_cluster()
    h2 = d.start(2)
    d.run(lambda: h2.core.state is S.JOINED)
    before = len(h1.of(Notify))
    h2.core.leave(d.now)
    d.run(lambda: h2.core.stopped is not None)
    assert [lv for lv, es in notified(h1)[before:] if es == (BatchEntry(2, Kind.LEAVE, 0),)] == list(reversed(LEVELS))
    assert h2.of(Stopped) == [Stopped("left")] and h2.of(Fenced) == []
    assert not d.disk.slots[2].lease.resigned  # only a master resigns
    d.run(lambda: d.now > h2.events[-1][0] + 3 * TIMING.dead_after_ms)
    assert h1.core.role is Role.MASTER and row(h1, 2).state is S.INACTIVE and not row(h1, 2).forced


def test_leave_before_ever_joining_stops_after_one_write() -> None:
    d = Driver()
    h = d.start(1)
    h.core.leave(0)
    d.run(lambda: h.core.stopped is not None, limit_ms=1000)
    assert h.events[-1][1] == Stopped("left") and h.of(Notify) == []
    assert [type(op) for _, op in h.ops] == [WriteSlot, ReadSlots]
    assert slot_writes(h)[0][1].request is Request.NONE


def test_rejected_join_yields_rejected_then_stopped() -> None:
    d, h1 = formed_cluster(l10=(2, 1, 1))
    h2 = d.start(2, regs())  # level 10 with one join barrier: a mismatch
    d.run(lambda: h2.core.stopped is not None)
    kinds = [type(e) for _, e in h2.events]
    assert kinds.index(Rejected) < kinds.index(Stopped) == len(kinds) - 1
    (rej,) = h2.of(Rejected)
    assert rej.level == 10 and "(1, 1, 1)" in rej.reason and "(2, 1, 1)" in rej.reason
    assert h2.of(Stopped) == [Stopped("rejected")]
    assert h2.of(StateChanged) == [] and h2.of(Notify) == [] and h2.of(Fenced) == []
    assert slot_writes(h2)[-1][1].request is Request.NONE
    assert h2.core.poll(d.now + 1e6) == []
    assert h1.core.state is S.JOINED and h1.core.role is Role.MASTER


# ================================================================== types
def test_a_fence_names_its_cause_and_the_reason_keeps_its_text() -> None:
    d = Driver()
    h = d.start(1)
    d.disk.fail = lambda node_id, op, now: True  # the disk is gone
    d.cycle(h)
    h.core.tick(FENCE_WAIT_MS)
    (ev,) = h.core.take_events()
    assert ev == Fenced(f"no heartbeat write completed for {FENCE_WAIT_MS} ms (disk lost or node stalled)",
                        FenceCause.HEARTBEAT_MISSED)
    assert h.core.fenced == ev.reason and not ev.cause.forced_out


def test_a_node_forced_out_by_the_master_says_so_by_its_cause() -> None:
    d, h = _cluster_with_master_view(MemberEntry(2, 0x102, S.FORCED_LEAVING, Kind.FORCED, top_level=40))
    d.cycle(h)
    d.now = h.core.wakeup_ms()
    d.cycle(h)
    assert h.of(Fenced) == [Fenced("forced out by the master (epoch 3)", FenceCause.FORCED_BY_MASTER)]
    assert h.of(Fenced)[0].cause.forced_out
    assert [c for c in FenceCause if c.forced_out] == [FenceCause.FORCED_BY_ITSELF, FenceCause.FORCED_BY_MASTER]


def test_a_graceful_leave_stops_with_the_left_reason() -> None:
    d, h = formed_cluster()
    h.core.leave(d.now)
    d.run(lambda: h.core.stopped is not None)
    assert h.of(Stopped) == [Stopped(StopReason.LEFT)]
    assert h.of(Stopped)[0].reason is StopReason.LEFT is h.core.stopped
    assert f"{StopReason.LEFT}" == "left"  # the text in every log line


def test_the_core_and_the_dlm_share_one_result_type() -> None:
    result = DlmResult(ReadArea(), True, 1.0, 2.0, {})
    assert type(result) is OpResult
    assert result == OpResult(ReadArea(), True, 1.0, 2.0, {})
