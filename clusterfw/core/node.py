"""One node's membership manager as a pure state machine.

How this works
--------------
The driver (the daemon with a real disk, or the simulator) owns all I/O and
clocks.  It asks ``poll(now)`` for the operations of the next cycle, performs
them *in order* (each with its own timeout), and hands the results back to
``complete(now, results)``.  Events to act on -- notifications for local
subsystems, fencing, role and state changes -- are taken with
``take_events()``.  Local subsystems acknowledge with ``ack(level, batch)``.

A cycle is::

    write my slot (heartbeat + request + lease + acks)  -> fence clock renewed
    read every slot                                     -> liveness, election
    read the master's view (followers)                  -> my state, notifications
    [master] read every view once on taking over; write the view when it changed

The fence deadline is ``last_ok + fence_after - io_timeout`` (``last_ok``: when
the newest slot write that completed was issued): past it a write might land
after ``fence_after``, so the node fences instead of writing.  The driver arms
a timer for ``wakeup_ms()`` and calls ``tick(now)`` so the deadline is kept
even while an I/O hangs.  After fencing the core never produces another op.

Invariants: ops are produced only while not fenced, not stopped and before
the fence deadline; at most one cycle is in flight; a notification batch is
delivered to a level at most once (a re-notification has a new batch id).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Callable, Generic, Mapping, Sequence, TypeVar, cast

from .coordinator import Coordinator, MasterLine, level_state
from .election import Decision, Election, highest_decision
from .liveness import Liveness, Observed
from .model import (BatchEntry, Lease, NodeState, Registration, Request, SlotRecord, Timing,
                    ViewRecord, ACKS_MAX, REGISTRATIONS_MAX)
from .text import NameOf, node_id_name


VIEWS_PER_READ = 16
"""View pairs per takeover read (with 32 KiB pairs: 512 KiB per I/O)."""
VIEW_READ_TRIES = 4
"""A view pair that fails this many reads in one takeover is given up on."""

# --------------------------------------------------------------------- ops
@dataclass(frozen=True)
class WriteSlot:
    record: SlotRecord


@dataclass(frozen=True)
class ReadSlots:
    pass


@dataclass(frozen=True)
class ReadView:
    node_id: int


@dataclass(frozen=True)
class ReadViews:
    """The view pairs of nodes ``first`` .. ``first + count - 1`` (one I/O).
    A takeover reads the view area as several of these, one per cycle, so
    a heartbeat is written between them and a bad sector fails one chunk."""

    first: int
    count: int


@dataclass(frozen=True)
class WriteView:
    record: ViewRecord
    copy: int  # 0 or 1: views ping-pong so a torn write never loses the previous one


Op = WriteSlot | ReadSlots | ReadView | ReadViews | WriteView


@dataclass(frozen=True)
class Unreadable:
    """A block that did not decode."""

    reason: str
    never_written: bool = False


OpT = TypeVar("OpT")


@dataclass(frozen=True)
class OpResult(Generic[OpT]):
    """What performing one op gave: the one result type of the core's ops
    (``OpResult[Op]``) and of the DLM's (``DlmResult``, core/dlm.py)."""

    op: OpT
    ok: bool
    start_ms: float
    end_ms: float
    value: object = None
    """ReadSlots: dict node_id -> SlotRecord | Unreadable; ReadView: ViewRecord
    or None; ReadViews: dict node_id -> ViewRecord | None (None: neither copy
    decodes)."""
    error: str = ""


# ------------------------------------------------------------------ events
@dataclass(frozen=True)
class Notify:
    """Deliver to the local subsystem at ``level``; it answers with ack()."""

    level: int
    batch_id: int
    entries: tuple[BatchEntry, ...]
    context: tuple[tuple[int, str], ...]  # (node id, state at this level) of the other nodes
    epoch: int


class FenceCause(enum.Enum):
    """Why a node fenced.  Each value is the text of the reason people read,
    a template that ``text`` fills in."""

    HEARTBEAT_MISSED = "no heartbeat write completed for {ms} ms (disk lost or node stalled)"
    """The fence deadline passed without a completed heartbeat write."""
    FOREIGN_WRITER = "another host is writing node {node}'s slot (incarnation {incarnation:x})"
    DEPOSED = "deposed: term {term} was decided for {master}"
    """A later term was decided while this node was master."""
    FORCED_BY_ITSELF = "forced out by itself: a local subsystem did not ack in time"
    """The master forced itself out (its own subsystem was the non-acker)."""
    FORCED_BY_MASTER = "forced out by the master (epoch {epoch})"
    LEAVE_OVERRAN = "graceful leave did not complete within {seconds:.0f} s"
    """The daemon's stop timeout passed during a graceful leave."""
    INTERNAL_ERROR = "internal error in thread {thread}: {error}"
    """A daemon thread crashed (a broken invariant)."""
    SUSPENDED = ("the host was suspended for {gap:.0f} ms (CLOCK_BOOTTIME ran {gap:.0f} ms ahead of "
                 "CLOCK_MONOTONIC): its services were frozen and resumed with it, and the other nodes may "
                 "have declared this node dead meanwhile")

    @property
    def forced_out(self) -> bool:
        """The cluster (its master) forced this node out."""
        return self in (FenceCause.FORCED_BY_ITSELF, FenceCause.FORCED_BY_MASTER)

    def text(self, **fields: object) -> str:
        return str(self.value).format(**fields)


class StopReason(enum.StrEnum):
    """Why the protocol stopped without a fence (the value is the text)."""

    LEFT = "left"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Fenced:
    reason: str
    """For people: ``cause``'s text, filled in."""
    cause: FenceCause

    @classmethod
    def because(cls, cause: FenceCause, **fields: object) -> Fenced:
        return cls(cause.text(**fields), cause)


@dataclass(frozen=True)
class MasterChanged:
    term: int
    master: int
    me: bool


@dataclass(frozen=True)
class StateChanged:
    old: NodeState
    new: NodeState


@dataclass(frozen=True)
class Rejected:
    level: int
    reason: str


@dataclass(frozen=True)
class Stopped:
    reason: StopReason


@dataclass(frozen=True)
class ViewAdopted:
    term: int
    epoch: int
    log: tuple[MasterLine, ...] = ()  # the master's reasons for this view (its own node only)


Event = Notify | Fenced | MasterChanged | StateChanged | Rejected | Stopped | ViewAdopted


class Role(enum.Enum):
    FOLLOWER = "follower"
    """Heartbeats, reads the master's view, delivers notifications."""
    TAKING_OVER = "taking-over"
    """Won the election; reads every view to resume from the newest."""
    MASTER = "master"
    """Runs the coordinator and writes the view."""


@dataclass
class _Cycle:
    ops: list[Op] = field(default_factory=list)
    kind: str = "cycle"  # "cycle" | "views" | "view-write" | "final"


class NodeCore:
    def __init__(self, *, node_id: int, incarnation: int, timing: Timing,
                 registrations: Sequence[Registration], rng: Callable[[], float], now_ms: float,
                 previous_slot: SlotRecord | None = None, name_of: NameOf = node_id_name) -> None:
        if len(registrations) > REGISTRATIONS_MAX:
            raise ValueError(f"at most {REGISTRATIONS_MAX} registrations per node")
        self.node_id = node_id
        self.incarnation = incarnation
        self.timing = timing
        self.name_of = name_of  # how lines for people name a node (the daemon: its node-table name)
        self.registrations = tuple(sorted(registrations, key=lambda r: r.level))
        self.rng = rng
        self.seq = (previous_slot.seq if previous_slot else 0)
        self.election = Election(node_id, incarnation, previous_slot.lease if previous_slot else None)
        self.liveness = Liveness(timing.dead_after_ms)
        self.desire = Request.JOIN
        self.acks: dict[int, int] = {}
        self.delivered: dict[int, int] = {}
        self.view: ViewRecord | None = None
        self.state = NodeState.INACTIVE
        self.role = Role.FOLLOWER
        self.coordinator: Coordinator | None = None
        self.decision: Decision | None = None
        self.fenced: str | None = None
        self.stopped: StopReason | None = None
        self.started_ms = now_ms
        self.last_ok_ms = now_ms  # a node that never completes a write fences after fence_after
        self.next_cycle_ms = now_ms
        self.in_flight: _Cycle | None = None
        self.pending_view_write: ViewRecord | None = None
        self.view_copy = 0
        self.force_self_after_write = False
        self.final_write = False
        self.slots: dict[int, SlotRecord] = {}
        self._events: list[Event] = []
        self._no_master_since: float | None = None
        self._view_dirty = False
        self._hurry = False  # run the next cycle as soon as this one completes
        self._pending_log: tuple[MasterLine, ...] = ()
        self.final_write_reason: StopReason | None = None
        self.view_log: list[str] = []
        self._takeover_failures = 0
        self._halted = ""  # the last reason a takeover halted (logged once)
        self._slot_ids: tuple[int, ...] = ()  # every slot id of the last slot-area read
        self._views_todo: list[tuple[int, int, int]] = []  # takeover: (first, count, tries) to read
        self._views_read: dict[int, ViewRecord | None] = {}
        self._views_lost: set[int] = set()  # pairs whose reads kept failing in this takeover
        self._hold_off_until = float("-inf")  # a halted takeover stays out of elections until then
        self.verify_view: WriteView | None = None  # a view write reported failed: read it back first
        self._undelivered: ViewRecord | None = None  # adopted; delivered once our slot shows its epoch
        self._view_failing_since: float | None = None  # the master's view writes fail since then
        self.resumed_from: tuple[int, int] | None = None  # (term, epoch) of the view a takeover resumed from

    # ----------------------------------------------------------- public API
    def fence_deadline_ms(self) -> float:
        return self.last_ok_ms + self.timing.fence_after_ms - self.timing.io_timeout_ms

    def can_write(self, now_ms: float) -> bool:
        return self.fenced is None and self.stopped is None and now_ms < self.fence_deadline_ms()

    def is_acting_master(self, now_ms: float) -> bool:
        return self.role is Role.MASTER and self.can_write(now_ms)

    def wakeup_ms(self) -> float:
        if self.fenced or self.stopped:
            return float("inf")
        if self.pending_view_write is not None and self.verify_view is None:
            return min(self.next_cycle_ms, self.started_ms)  # due now
        return min(self.next_cycle_ms, self.fence_deadline_ms())

    def take_events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def leave(self, now_ms: float) -> None:
        """Ask for a graceful leave (SIGTERM).  Completes with Stopped(StopReason.LEFT)."""
        if self.fenced or self.stopped:
            return
        self.desire = Request.LEAVE
        if self.state is NodeState.INACTIVE and not self._in_view():
            self._finish(StopReason.LEFT, now_ms)
        self._hurry_up(now_ms)

    def ack(self, level: int, batch_id: int, now_ms: float) -> None:
        if batch_id != self.acks.get(level, 0):
            self.acks[level] = batch_id
            self._hurry_up(now_ms)  # tell the master soon

    def fence(self, cause: FenceCause, **fields: object) -> None:
        """Fence for a reason the driver found (another host writing this
        node's slot, a stop that overran its bound, a crashed thread)."""
        self._fence(Fenced.because(cause, **fields))

    def tick(self, now_ms: float) -> None:
        """Timer: fence if the deadline has passed."""
        if self.fenced is None and self.stopped is None and now_ms >= self.fence_deadline_ms():
            self._fence(Fenced.because(FenceCause.HEARTBEAT_MISSED,
                                       ms=self.timing.fence_after_ms - self.timing.io_timeout_ms))

    def poll(self, now_ms: float) -> list[Op]:
        """The ops to perform now ([] if nothing is due)."""
        self.tick(now_ms)
        if self.fenced or self.stopped or self.in_flight is not None:
            return []
        if self.pending_view_write is not None and self.verify_view is None:
            rec = replace(self.pending_view_write, seq=self._next_seq())
            self.in_flight = _Cycle([WriteView(rec, self.view_copy)], "view-write")
            return list(self.in_flight.ops)
        if now_ms < self.next_cycle_ms:
            return []
        if self.role is Role.TAKING_OVER:
            # The takeover keeps heartbeating: it reads one chunk of the view
            # area per cycle, between a slot write and a slot read.
            if not self._views_todo and not self._views_read and not self._views_lost:
                self._plan_view_reads()
            ops_t: list[Op] = [WriteSlot(self._slot_record())]
            if self._views_todo:
                first, count, _ = self._views_todo[0]
                ops_t.append(ReadViews(first, count))
            ops_t.append(ReadSlots())
            self.in_flight = _Cycle(ops_t, "views")
            return list(ops_t)
        self._hurry = False
        ops: list[Op] = [WriteSlot(self._slot_record()), ReadSlots()]
        if self.verify_view is not None:
            ops.append(ReadView(self.node_id))  # did the write reported failed land?
        elif self.role is Role.FOLLOWER and self.decision is not None and not self.final_write:
            ops.append(ReadView(self.decision.master))
        self.in_flight = _Cycle(ops, "final" if self.final_write else "cycle")
        return list(ops)

    def complete(self, now_ms: float, results: Sequence[OpResult[Op]]) -> None:
        cycle, self.in_flight = self.in_flight, None
        if self.fenced or self.stopped:
            return  # results of I/O issued before fencing are of no use now
        if cycle is None:
            raise AssertionError("complete() without a cycle in flight")
        self.tick(now_ms)
        if self.fenced or self.stopped:
            return
        if cycle.kind == "view-write":
            self._complete_view_write(now_ms, results[0])
        elif cycle.kind == "views":
            self._complete_takeover(now_ms, results)
        else:
            self._complete_cycle(now_ms, cycle, results)

    # ------------------------------------------------------------ internals
    def _hurry_up(self, now_ms: float) -> None:
        self._hurry = True
        if self.in_flight is None:
            self.next_cycle_ms = min(self.next_cycle_ms, now_ms)

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _slot_record(self) -> SlotRecord:
        acks = tuple(sorted((lv, b) for lv, b in self.acks.items()
                            if any(r.level == lv for r in self.registrations)))[:ACKS_MAX]
        return SlotRecord(
            node_id=self.node_id, incarnation=self.incarnation, seq=self._next_seq(),
            timing=self.timing, request=Request.NONE if self.final_write else self.desire,
            lease=self.election.lease_to_write(), registrations=self.registrations, acks=acks,
            seen_epoch=seen.epoch if (seen := self._seen()) is not None else 0)

    def _seen(self) -> ViewRecord | None:
        """The newest view this node read (adopted, or waiting to be)."""
        return self._undelivered or self.view

    def _in_view(self) -> bool:
        if self.view is None:
            return False
        m = self.view.member(self.node_id)
        return m is not None and m.incarnation == self.incarnation and m.state is not NodeState.INACTIVE

    def _fence(self, fence: Fenced) -> None:
        if self.fenced is None:
            self.fenced = fence.reason
            self.in_flight = None
            self._events.append(fence)

    def _stop(self, reason: StopReason, now_ms: float) -> None:
        if self.stopped is None:
            self.stopped = reason
            self._events.append(Stopped(reason))

    def _written_back(self, written: SlotRecord, slots_result: OpResult[Op] | None) -> bool:
        """A heartbeat write counts as completed only if this cycle's read of
        the slot area shows it intact (or that read failed: no evidence
        against it).  A slot that reads back damaged or as another record is
        a write the others cannot see: the fence clock is not renewed by it,
        so a node whose slot stays unreadable fences at its deadline (and its
        unreadable slot can then be taken as a stopped heartbeat)."""
        if slots_result is None or not slots_result.ok:
            return True
        rec = cast(Mapping[int, object], slots_result.value).get(self.node_id)
        if not isinstance(rec, SlotRecord):
            return False
        return rec.incarnation != self.incarnation or rec.seq == written.seq

    def _complete_cycle(self, now_ms: float, cycle: _Cycle, results: Sequence[OpResult[Op]]) -> None:
        wrote: Lease | None = None
        slots_result: OpResult[Op] | None = None
        view_result: OpResult[Op] | None = None
        write_result: OpResult[Op] | None = None
        for r in results:
            if isinstance(r.op, WriteSlot):
                write_result = r
            elif isinstance(r.op, ReadSlots):
                slots_result = r
            elif isinstance(r.op, ReadView):
                view_result = r
        if write_result is not None and write_result.ok:
            assert isinstance(write_result.op, WriteSlot)
            if self._written_back(write_result.op.record, slots_result):
                self.last_ok_ms = max(self.last_ok_ms, write_result.start_ms)
                wrote = write_result.op.record.lease
                self._deliver_seen(write_result.op.record, now_ms)
                if self.fenced or self.stopped:
                    return
        if cycle.kind == "final":
            if wrote is not None:
                assert self.final_write_reason is not None
                self._stop(self.final_write_reason, now_ms)
            else:
                self.next_cycle_ms = now_ms + self.timing.fast_poll_ms
            return
        if slots_result is not None and slots_result.ok:
            self._read_slots(now_ms, slots_result, wrote)
        if self.fenced or self.role is Role.TAKING_OVER:
            self.next_cycle_ms = now_ms
            return
        if self.verify_view is not None:
            since = self._view_failing_since
            if self.role is Role.MASTER and view_result is not None and view_result.ok:
                self._verified_view(view_result.value, now_ms)
            elif self.role is not Role.MASTER:
                self.verify_view = None
            elif since is not None and now_ms - since >= self.timing.dead_after_ms:
                self._resign_for_views("its own views have been unreadable",
                                       view_result.error if view_result is not None else "no read", now_ms)
                return
        if self.role is Role.MASTER and slots_result is not None and slots_result.ok:
            self._master_step(now_ms)
        elif self.role is Role.FOLLOWER and view_result is not None and view_result.ok:
            view = view_result.value
            if isinstance(view, ViewRecord):
                self._maybe_adopt(view, now_ms)
        self._schedule(now_ms)

    def _deliver_seen(self, written: SlotRecord, now_ms: float) -> None:
        """A follower acts on a view (state, notifications) only once a slot
        write naming its epoch has completed: from then on any new master
        that reads our slot knows the view existed, and never resumes from
        an older one while we are alive."""
        pending = self._undelivered
        if pending is not None and written.seen_epoch >= pending.epoch:
            self._undelivered = None
            self._adopt(pending, now_ms, ())

    def _read_slots(self, now_ms: float, slots_result: OpResult[Op], wrote: Lease | None) -> None:
        """Liveness and the election step from one read of the slot area.

        A slot that does not decode (other than never written), or that is
        a replay of an older record, is no heartbeat: its last good record
        stays in ``self.slots`` (so a member is never dropped from a batch
        because one read of its slot failed).  For the election it blocks a
        phase only while its owner is not dead: a dead owner fenced and
        writes nothing more, and ``Election`` then moves past its block."""
        self.liveness.note_area_read(slots_result.start_ms, slots_result.end_ms)
        slots: dict[int, SlotRecord] = {}
        leases: dict[int, Lease] = {}
        unreadable: set[int] = set()
        for node_id, rec in cast(Mapping[int, object], slots_result.value).items():
            if (node_id == self.node_id and isinstance(rec, SlotRecord)
                    and rec.incarnation != self.incarnation and wrote is not None):
                # We wrote our slot this cycle, yet it shows another
                # incarnation: another host runs this node.  Both fence.
                self._fence(Fenced.because(FenceCause.FOREIGN_WRITER, node=self.name_of(self.node_id),
                                           incarnation=rec.incarnation))
                return
            if isinstance(rec, SlotRecord):
                seen = self.liveness.observe(rec, slots_result.start_ms, slots_result.end_ms)
                if seen is not Observed.REPLAYED:
                    slots[node_id] = rec
                    leases[node_id] = rec.lease
                    continue
            elif not isinstance(rec, Unreadable) or rec.never_written:
                continue
            self.liveness.observe_unreadable(node_id, slots_result.start_ms, slots_result.end_ms)
            if node_id in self.slots:
                slots[node_id] = self.slots[node_id]
            if node_id != self.node_id:
                unreadable.add(node_id)
        self.slots = slots
        self._slot_ids = tuple(sorted(cast(Mapping[int, object], slots_result.value)))
        dead = frozenset(n for n in unreadable if self.liveness.is_dead(n))
        self._election_step(now_ms, wrote, leases, frozenset(unreadable) - dead, dead)

    def _schedule(self, now_ms: float) -> None:
        busy = (self._undelivered is not None or self.verify_view is not None or self.election.proposing or self.decision is None or self._master_unusable()
                or (self.view is not None and bool(self.view.batches))
                or self.state in (NodeState.JOINING, NodeState.LEAVING)
                or self.pending_view_write is not None
                or (self.desire is Request.JOIN and self.state is NodeState.INACTIVE)
                or self.desire is Request.LEAVE)
        interval = self.timing.fast_poll_ms if busy else self.timing.heartbeat_interval_ms
        if self._hurry:
            self._hurry = False
            interval = 0
        self.next_cycle_ms = now_ms + interval

    def _master_unusable(self) -> bool:
        d = self.decision
        if d is None or d.resigned:
            return True
        if d.master == self.node_id:
            return d.master_incarnation != self.incarnation
        seen = self.liveness.incarnation(d.master)
        if seen is not None and seen != d.master_incarnation:
            return True
        return self.liveness.is_dead(d.master, d.master_incarnation)

    def _election_step(self, now_ms: float, wrote: Lease | None, leases: dict[int, Lease],
                       unreadable: frozenset[int], dead_unreadable: frozenset[int] = frozenset()) -> None:
        before = self.decision
        all_leases = dict(leases)
        all_leases[self.node_id] = self.election.lease
        self.decision = highest_decision(all_leases)
        want = (self._master_unusable() and self.stopped is None and not self.final_write
                and now_ms >= self._hold_off_until and not self._behind())
        if want and self._no_master_since is None:
            self._no_master_since = now_ms
            alive_lower = sum(1 for n in self.slots if n < self.node_id and self.liveness.alive(n))
            self.election.schedule(now_ms, alive_lower, self.timing.fast_poll_ms, self.rng)
        if not want:
            self._no_master_since = None
        target = self.election.lease.committed_term + 1
        lower_proposing = any(
            n < self.node_id and l.term == target and l.mbal > 0 and l.committed_term < target
            and self.liveness.alive(n)
            for n, l in leases.items() if n != self.node_id)
        rank = sum(1 for n in self.slots if n < self.node_id and self.liveness.alive(n))
        self.election.on_cycle(now_ms=now_ms, wrote=wrote, leases=leases, unreadable=unreadable,
                               want_master=want, rank=rank, lower_proposing=lower_proposing,
                               fast_poll_ms=self.timing.fast_poll_ms, rng=self.rng)
        all_leases[self.node_id] = self.election.lease
        self.decision = highest_decision(all_leases)
        d = self.decision
        if d is None:
            return
        if before is None or (before.term, before.master) != (d.term, d.master):
            self._events.append(MasterChanged(d.term, d.master, d.master == self.node_id))
        mine = d.master == self.node_id and d.master_incarnation == self.incarnation and not d.resigned
        if mine and self.role is Role.FOLLOWER:
            self.role = Role.TAKING_OVER
            self._reset_view_reads()
        elif not mine and self.role is not Role.FOLLOWER:
            # A later term was decided while we were master: someone judged us
            # dead, so by the timing rule we must already have stopped.
            self.role = Role.FOLLOWER
            self.coordinator = None
            self._fence(Fenced.because(FenceCause.DEPOSED, term=d.term, master=self.name_of(d.master)))

    def _reset_view_reads(self) -> None:
        self._views_todo, self._views_read, self._views_lost = [], {}, set()

    def _plan_view_reads(self) -> None:
        """Read the view pair of every slot id, ``VIEWS_PER_READ`` at a time."""
        top = max(self._slot_ids or (self.node_id,))
        self._views_todo = [(first, min(VIEWS_PER_READ, top - first + 1), 0)
                            for first in range(1, top + 1, VIEWS_PER_READ)]

    def _note_views(self, r: OpResult[Op]) -> None:
        """One chunk of the takeover's view read came back.  A failed chunk
        is split into single pairs, and a pair that keeps failing is given up
        on: it is only a problem if the evidence says it held the newest view."""
        assert isinstance(r.op, ReadViews)
        first, count, tries = self._views_todo.pop(0)
        if r.ok:
            for node_id, view in cast(Mapping[int, object], r.value).items():
                self._views_read[node_id] = view if isinstance(view, ViewRecord) else None
        elif count > 1:
            self._views_todo[:0] = [(n, 1, 1) for n in range(first, first + count)]
        elif tries + 1 >= VIEW_READ_TRIES:
            self._views_lost.add(first)
        else:
            self._views_todo.append((first, 1, tries + 1))

    def _complete_takeover(self, now_ms: float, results: Sequence[OpResult[Op]]) -> None:
        write_r = next((r for r in results if isinstance(r.op, WriteSlot)), None)
        views_r = next((r for r in results if isinstance(r.op, ReadViews)), None)
        slots_r = next(r for r in results if isinstance(r.op, ReadSlots))
        wrote: Lease | None = None
        if write_r is not None and write_r.ok and self._written_back(cast(WriteSlot, write_r.op).record, slots_r):
            self.last_ok_ms = max(self.last_ok_ms, write_r.start_ms)
            wrote = cast(WriteSlot, write_r.op).record.lease
        if slots_r.ok:
            self._read_slots(now_ms, slots_r, wrote)
        if self.fenced or self.role is not Role.TAKING_OVER:
            self._reset_view_reads()
            self._schedule(now_ms)
            return
        if views_r is not None:
            self._note_views(views_r)
        if not slots_r.ok or (views_r is not None and not views_r.ok):
            self._takeover_failures += 1
            backoff = self.timing.fast_poll_ms * min(2 ** self._takeover_failures, 16)
            self.next_cycle_ms = now_ms + min(backoff, self.timing.heartbeat_interval_ms)
            return
        self._takeover_failures = 0
        if self._views_todo:
            self.next_cycle_ms = now_ms  # the next chunk at once
            return
        assert self.decision is not None
        views = [v for v in self._views_read.values() if v is not None]
        # What this node itself read from the disk is a view that landed too.
        views += [v for v in (self.view, self._undelivered) if v is not None]
        best = max(views, key=lambda v: (v.term, v.epoch, v.seq), default=None)
        lost = sorted(self._views_lost)
        self._reset_view_reads()
        slots = self.slots
        # Evidence: the newest epoch any node that is not dead has seen (its
        # slot's seen_epoch).  A view older than that was superseded by one
        # that is lost or unreadable: resuming from it would roll the
        # cluster back under nodes that acted on the newer one.
        evidence = self._seen_epochs()
        newest_seen = max(evidence.values(), default=0)
        have = best.epoch if best is not None else 0
        if newest_seen > have:
            saw = sorted(n for n, e in evidence.items() if e > have)
            why = (f"{self.name_of(self.node_id)} won term {self.decision.term} but cannot resume: the newest view "
                   f"it can read is epoch {have}, and " + ", ".join(self.name_of(n) for n in saw)
                   + f" saw epoch {newest_seen}"
                   + (f" (unreadable view areas: {', '.join(self.name_of(n) for n in lost)})" if lost else "")
                   + "; it resigns so that a node holding that view takes over")
            self._halt(why, now_ms)
            return
        self._halted = ""
        min_batch = 1 + max((b for s in slots.values() for _, b in s.acks), default=0)
        if best is None:
            best = ViewRecord(node_id=self.node_id, incarnation=self.incarnation, seq=0,
                              term=self.decision.term, epoch=0)
        self.resumed_from = (best.term, best.epoch)
        base = replace(best, term=self.decision.term, epoch=best.epoch + 1)
        self.coordinator = Coordinator(base, self.timing, now_ms, min_batch_id=min_batch, name_of=self.name_of)
        self.role = Role.MASTER
        self._undelivered = None
        resumed = (f"{self.name_of(self.node_id)} master of term {self.decision.term}, "
                   f"resuming from epoch {best.epoch} of term {best.term}"
                   + (f" (unreadable view areas: {', '.join(self.name_of(n) for n in lost)}; "
                      f"no live node saw a newer epoch)" if lost else ""))
        self.view_log.append(resumed)
        self._pending_log += (MasterLine(resumed),)  # logged with the first view it writes
        self._master_step(now_ms, force_write=True)
        self._schedule(now_ms)

    def _resign_for_views(self, what: str, error: str, now_ms: float) -> None:
        """Our view area keeps failing: hand over rather than hold the
        cluster still (another master writes its own area)."""
        self._view_failing_since = None
        self._halt(f"{self.name_of(self.node_id)} resigns as master of term {self.election.lease.committed_term}: "
                   f"{what} for {self.timing.dead_after_ms} ms ({error})", now_ms)

    def _behind(self) -> bool:
        """A live node has seen a newer view than we have: leave the election
        to the nodes that hold it (a master must resume from it)."""
        seen = self._seen()
        return max(self._seen_epochs().values(), default=0) > (seen.epoch if seen is not None else 0)

    def _seen_epochs(self) -> dict[int, int]:
        """The epoch each other node that is not dead says it has seen."""
        return {n: s.seen_epoch for n, s in self.slots.items()
                if n != self.node_id and not self.liveness.is_dead(n, s.incarnation)}

    def _halt(self, why: str, now_ms: float) -> None:
        """A won takeover that cannot resume safely: say why (once), resign,
        and stay out of elections for a dead timeout so that another node --
        one holding the newer view -- can win."""
        if why != self._halted:
            self._halted = why
            self.view_log.append(why)
            self._events.append(ViewAdopted(self.view.term if self.view else 0,
                                            self.view.epoch if self.view else 0, (MasterLine(why),)))
        self.election.resign()
        self.role = Role.FOLLOWER
        self.coordinator = None
        self.pending_view_write = self.verify_view = None
        self._hold_off_until = now_ms + self.timing.dead_after_ms
        self._schedule(now_ms)

    def _master_step(self, now_ms: float, force_write: bool = False) -> None:
        assert self.coordinator is not None
        out = self.coordinator.step(now_ms, self.slots, self.liveness, self.node_id, self.incarnation,
                                     self.acks)
        self.view_log.extend(line.text for line in out.log)
        if out.changed or force_write or self._view_dirty:
            self._view_dirty = False
            self.pending_view_write = self.coordinator.view(self.node_id, self.incarnation, 0)
            self.force_self_after_write = self.force_self_after_write or out.self_forced
            self._pending_log = self._pending_log + tuple(out.log)

    def _complete_view_write(self, now_ms: float, r: OpResult[Op]) -> None:
        assert isinstance(r.op, WriteView)
        self.pending_view_write = None
        if not r.ok:
            if self._view_failing_since is None:
                self._view_failing_since = now_ms
            elif now_ms - self._view_failing_since >= self.timing.dead_after_ms:
                self._resign_for_views("its view writes have failed", r.error, now_ms)
                return
            # A write reported failed may still have landed (and followers
            # may act on it).  Rewriting the same copy blind could tear it
            # and leave only the view before it; so read our views back
            # first, and only then decide (``_verified_view``).
            self.verify_view = r.op
            self._view_dirty = True
            self.next_cycle_ms = now_ms + self.timing.fast_poll_ms
            return
        self._view_landed(r.op.record, now_ms)
        self._schedule(now_ms)

    def _verified_view(self, newest: object, now_ms: float) -> None:
        """The read-back after a failed view write: if it shows the record we
        wrote, the write landed (the next goes to the other copy); if it shows
        an older view, it did not, and the same copy is written again -- the
        other copy still holds the last view that landed."""
        pending, self.verify_view = self.verify_view, None
        assert pending is not None
        if isinstance(newest, ViewRecord) and (newest.incarnation, newest.seq) == (
                pending.record.incarnation, pending.record.seq):
            self._view_landed(pending.record, now_ms)

    def _view_landed(self, record: ViewRecord, now_ms: float) -> None:
        self._view_failing_since = None
        self.view_copy ^= 1
        log, self._pending_log = self._pending_log, ()
        self._adopt(record, now_ms, log)
        if self.force_self_after_write and not self.fenced:
            self._fence(Fenced.because(FenceCause.FORCED_BY_ITSELF))

    def _maybe_adopt(self, view: ViewRecord, now_ms: float) -> None:
        """A newer view of our master: it is acted on once our slot says we
        saw it (``_deliver_seen``); the next cycle runs at once."""
        d = self.decision
        if d is None or view.node_id != d.master or view.term != d.term:
            return
        seen = self._seen()
        if seen is not None and (seen.term, seen.epoch, seen.seq) >= (view.term, view.epoch, view.seq):
            return
        me = view.member(self.node_id)
        if me is not None and me.incarnation == self.incarnation and (
                me.state is NodeState.FORCED_LEAVING or (me.state is NodeState.INACTIVE and me.forced)):
            self._adopt(view, now_ms, ())  # forced out: fence at once (stopping is always safe)
            return
        self._undelivered = view
        self._hurry = True

    def _adopt(self, view: ViewRecord, now_ms: float, log: tuple[MasterLine, ...]) -> None:
        self.view = view
        self._events.append(ViewAdopted(view.term, view.epoch, log))
        me = view.member(self.node_id)
        for rej in view.rejections:
            if rej.node_id == self.node_id and rej.incarnation == self.incarnation:
                self._events.append(Rejected(rej.level, rej.reason))
                self._finish(StopReason.REJECTED, now_ms)
                return
        new_state = NodeState.INACTIVE
        if me is not None and me.incarnation == self.incarnation:
            new_state = me.state
            if me.state is NodeState.FORCED_LEAVING or (me.state is NodeState.INACTIVE and me.forced):
                if not (self.role is Role.MASTER and self.force_self_after_write):
                    self._set_state(me.state)
                    self._fence(Fenced.because(FenceCause.FORCED_BY_MASTER, epoch=view.epoch))
                    return
        self._set_state(new_state)
        if (self.desire is Request.LEAVE and new_state is NodeState.INACTIVE
                and me is not None and me.incarnation == self.incarnation and not me.forced):
            self._finish(StopReason.LEFT, now_ms)
            return
        for batch in view.batches:
            if self.node_id not in batch.participants:
                continue
            if self.delivered.get(batch.level) == batch.batch_id or self.acks.get(batch.level, 0) == batch.batch_id:
                continue
            self.delivered[batch.level] = batch.batch_id
            in_batch = {e.node_id for e in batch.entries}
            context = tuple((m.node_id, level_state(m, batch.level)) for m in view.members
                            if m.node_id not in in_batch and m.state is not NodeState.INACTIVE)
            self._events.append(Notify(batch.level, batch.batch_id, batch.entries, context, view.epoch))

    def _set_state(self, new: NodeState) -> None:
        if new is not self.state:
            self._events.append(StateChanged(self.state, new))
            self.state = new

    def _finish(self, reason: StopReason, now_ms: float) -> None:
        """Leave the protocol: a master first resigns with one last slot write."""
        if self.role is not Role.FOLLOWER:
            self.election.resign()
            self.role = Role.FOLLOWER
            self.coordinator = None
        self.final_write = True
        self.final_write_reason = reason
        self._hurry_up(now_ms)
