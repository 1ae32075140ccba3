"""The transition coordinator: what the master does with the view each cycle.

How this works
--------------
The view holds, per node, its state and a *cursor*: the level (and barrier)
its current transition is at.  Per level there is at most one outstanding
*batch*: the notification of every transition currently at that level, sent
to the level's *participants* (every live member registered at that level
that already counts as a member there, plus the transitional nodes
themselves).  Each cycle the master:

1. completes batches every required participant has acked, moving each entry
   to its next barrier or level (join: up; graceful leave: down; forced leave:
   up, and only to ``top_level``, the highest level notified of the node's
   interrupted transition);
2. forces out members that are dead (heartbeat evidence, see
   ``clusterfw.core.liveness``), restarted (another incarnation), or that did
   not ack a batch within ``transition_timeout_ms`` (the non-acker is the
   suspect) -- a forced-out node's recovery notifications start only once it
   is *dead*, i.e. ``dead_after`` since its last heartbeat, so it has fenced;
3. takes new requests: a join (refused with a reason when its barrier counts
   differ from the cluster's at some level, or while a previous incarnation is
   still being forced out), a leave (a joining node reverses to leaving only
   between levels, never inside one);
4. issues a batch at every level that has none outstanding and has entries,
   and re-notifies (supersedes the outstanding batch) when a forced leave
   reaches a level whose batch still carries that node's graceful transition
   (Table 1).  Levels without participants are passed at once.

Its log lines (``MasterLine``) are for people: one line per decision --
a join or a leave through all levels, a node forced out and its recovery
complete, a refused join -- naming the nodes and the reason; the steps in
between (each batch issued and acked, each level passed) are ``detail``,
which the daemon logs at debug and the simulator's transcripts show.

Invariants kept (and checked by the simulator): a node's transition never
moves past a step before every required participant acked it; join order is
bottom-up, graceful leave top-down, forced leave bottom-up; no forced-leave
notification before the node is dead; one outstanding batch per level.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from .liveness import Liveness
from .model import (REASON_MAX, Batch, BatchEntry, Kind, LEVELS_MAX, LevelSpec, MemberEntry, NodeState,
                    Registration, Rejection, SlotRecord, Timing, ViewRecord)
from .text import NameOf, node_id_name

LIVE = (NodeState.JOINING, NodeState.JOINED, NodeState.LEAVING)

# Every legal change of a member's state: anything else is a broken invariant
# and raises (``move``).  A node without a row counts as inactive.
MEMBER_TRANSITIONS: frozenset[tuple[NodeState, NodeState]] = frozenset({
    # a join request taken: joined at once when no level exists anywhere
    (NodeState.INACTIVE, NodeState.JOINING), (NodeState.INACTIVE, NodeState.JOINED),
    # the join passed its last level; reversed into a leave; or left before any level processed it
    (NodeState.JOINING, NodeState.JOINED), (NodeState.JOINING, NodeState.LEAVING),
    (NodeState.JOINING, NodeState.INACTIVE),
    # a leave request taken (inactive at once when no level exists)
    (NodeState.JOINED, NodeState.LEAVING), (NodeState.JOINED, NodeState.INACTIVE),
    # the leave passed its last level
    (NodeState.LEAVING, NodeState.INACTIVE),
    # forced out: dead, restarted or too slow to ack, from any live state
    (NodeState.JOINING, NodeState.FORCED_LEAVING), (NodeState.JOINED, NodeState.FORCED_LEAVING),
    (NodeState.LEAVING, NodeState.FORCED_LEAVING),
    # recovery complete, or no level to recover
    (NodeState.FORCED_LEAVING, NodeState.INACTIVE),
})


def check_move(node_id: int, old: NodeState, new: NodeState) -> None:
    if (old, new) not in MEMBER_TRANSITIONS:
        raise AssertionError(f"member {node_id}: illegal move {old.value} -> {new.value}")


def move(m: MemberEntry, to: NodeState, **changes: Any) -> MemberEntry:
    """``m`` moved to state ``to`` (and ``changes``): the one way a member's
    state changes.  A move not in ``MEMBER_TRANSITIONS`` raises."""
    check_move(m.node_id, m.state, to)
    return replace(m, state=to, **changes)


def level_state(m: MemberEntry, level: int) -> str:
    """How the subsystems at ``level`` see node ``m`` (Table 1 states)."""
    if m.state is NodeState.JOINED:
        return "joined"
    if m.state is NodeState.JOINING:
        if level < m.cursor:
            return "joined"
        return "joining" if level == m.cursor else "inactive"
    if m.state is NodeState.LEAVING:
        if level > m.cursor:
            return "inactive"
        return "leaving" if level == m.cursor else "joined"
    if m.state is NodeState.FORCED_LEAVING:
        if m.ready and level < m.cursor:
            return "inactive"
        return "forced-leaving"
    return "inactive"


TERM_SHIFT = 32
"""A batch id is ``(term << TERM_SHIFT) | n``: the term of the master that
issued it and a counter within that term, in the one u64 the records carry.
Acks are matched exactly, so an ack written for a batch of an older term can
never count for a batch a newer master issued."""


def batch_id_for(term: int, n: int) -> int:
    return (term << TERM_SHIFT) | n


def batch_label(batch_id: int) -> str:
    """``term.n`` for people (plain ``n`` for ids without a term)."""
    term, n = batch_id >> TERM_SHIFT, batch_id & ((1 << TERM_SHIFT) - 1)
    return f"{term}.{n}" if term else str(n)


def _bounded(reason: str) -> str:
    """A rejection reason cut to what a view can hold (REASON_MAX bytes of
    UTF-8): an over-long reason must never make the view unwritable."""
    data = reason.encode()[:REASON_MAX]
    return data.decode(errors="ignore")


@dataclass(frozen=True)
class MasterLine:
    """One line of the master's log: ``detail`` lines are the steps of a
    transition (the daemon's debug), the others its decisions (info)."""
    text: str
    detail: bool = False

    def __str__(self) -> str:
        return self.text


def seconds_text(ms: float) -> str:
    """1100 -> ``1.1 s``: durations in the master's lines for people."""
    return f"{ms / 1000:.1f} s"


def registered_levels(slot: SlotRecord | None) -> dict[int, Registration]:
    if slot is None:
        return {}
    return {r.level: r for r in slot.registrations}


@dataclass
class StepOutcome:
    changed: bool = False  # the view must be written
    self_forced: bool = False  # the master forced itself out: fence after writing
    log: list[MasterLine] = field(default_factory=list)  # why the view changed, for people


class Coordinator:
    """The master's working copy of the view and the rules that move it."""

    def __init__(self, view: ViewRecord, timing: Timing, now_ms: float,
                 min_batch_id: int = 1, name_of: NameOf = node_id_name) -> None:
        self.timing = timing
        self.name_of = name_of  # how the log lines name a node (only text for people; never in the view)
        self.term = view.term
        self.epoch = view.epoch
        # Ids of this term start above every id of an earlier term.
        self.next_batch_id = max(view.next_batch_id, min_batch_id, batch_id_for(self.term, 1))
        self.members: dict[int, MemberEntry] = {m.node_id: m for m in view.members}
        self.batches: dict[int, Batch] = {b.level: b for b in view.batches}
        self.levels: dict[int, LevelSpec] = {s.level: s for s in view.levels}
        self.rejections: dict[int, Rejection] = {r.node_id: r for r in view.rejections}
        # Volatile: when each outstanding batch was issued, on this master's clock.
        # Batches inherited from a previous master start their clock now.
        self.issued_ms: dict[int, float] = {b.batch_id: now_ms for b in view.batches}
        # Volatile, for the log lines only: why this master forced each node out.
        self.forced_why: dict[int, str] = {}

    # ------------------------------------------------------------------ view
    def view(self, node_id: int, incarnation: int, seq: int) -> ViewRecord:
        return ViewRecord(
            node_id=node_id, incarnation=incarnation, seq=seq, term=self.term, epoch=self.epoch,
            next_batch_id=self.next_batch_id,
            levels=tuple(self.levels[k] for k in sorted(self.levels)),
            members=tuple(self.members[k] for k in sorted(self.members)),
            batches=tuple(self.batches[k] for k in sorted(self.batches)),
            rejections=tuple(self.rejections[k] for k in sorted(self.rejections)),
        )

    # ------------------------------------------------------------------ step
    def step(self, now_ms: float, slots: Mapping[int, SlotRecord], liveness: Liveness,
             own_id: int, own_incarnation: int, own_acks: Mapping[int, int]) -> StepOutcome:
        out = StepOutcome()
        self._slots = slots
        self._own_id = own_id
        self._own_incarnation = own_incarnation
        self._own_acks = own_acks
        self._liveness = liveness
        self._out = out
        self._refresh_levels()
        self._complete_batches()
        self._detect_failures(now_ms, liveness)
        self._ready_forced(liveness)
        self._take_requests(liveness)
        self._reverse_joins()
        self._issue_batches(now_ms)
        self._collect_rejections()
        return out

    def _change(self, why: str, epoch: bool = True, detail: bool = False) -> None:
        self._out.changed = True
        if epoch:
            self.epoch += 1
        self._out.log.append(MasterLine(why, detail))

    def _why_forced(self, n: int) -> str:
        return self.forced_why.get(n, "by an earlier master")

    def _level_text(self, level: int) -> str:
        """``20 (vdm)``: a level with the name its subsystems registered."""
        for s in self._slots.values():
            for reg in s.registrations:
                if reg.level == level:
                    return f"{level} ({reg.name})"
        return str(level)

    def _is_me(self, m: MemberEntry) -> bool:
        return m.node_id == self._own_id and m.incarnation == self._own_incarnation

    def _slot_of(self, m: MemberEntry) -> SlotRecord | None:
        s = self._slots.get(m.node_id)
        return s if s is not None and s.incarnation == m.incarnation else None

    def _registered(self, m: MemberEntry, level: int) -> bool:
        return level in registered_levels(self._slot_of(m))

    def _acked(self, node_id: int, level: int, batch_id: int) -> bool:
        if self._is_me(self.members[node_id]):
            return self._own_acks.get(level, 0) == batch_id
        m = self.members[node_id]
        s = self._slot_of(m)
        return s is not None and s.ack_for(level) == batch_id

    # -- levels ---------------------------------------------------------------
    def _refresh_levels(self) -> None:
        """The agreed levels: the union of the live members' registrations.
        A level stays while any forced-leaving node may still need recovery
        there and some live node is registered at it."""
        levels: dict[int, LevelSpec] = {}
        names: dict[int, str] = {}
        for m in self.members.values():
            if m.state not in LIVE:
                continue
            for reg in registered_levels(self._slot_of(m)).values():
                levels.setdefault(reg.level, LevelSpec(reg.level, reg.barriers))
                names.setdefault(reg.level, reg.name)
        if set(levels) != set(self.levels) or any(levels[k] != self.levels.get(k) for k in levels):
            self.levels = dict(sorted(levels.items())[:LEVELS_MAX])
            shown = ", ".join(f"{k} ({names[k]})" for k in self.levels)
            self._change("levels now " + (shown or "none: no live member is registered at any level"),
                         epoch=False, detail=True)

    def _next_up(self, level: int, limit: int | None = None) -> int | None:
        for k in sorted(self.levels):
            if k > level and (limit is None or k <= limit):
                return k
        return None

    def _next_down(self, level: int) -> int | None:
        for k in sorted(self.levels, reverse=True):
            if k < level:
                return k
        return None

    def _barriers(self, level: int, kind: Kind) -> int:
        spec = self.levels.get(level)
        return 1 if spec is None else max(1, spec.barriers[int(kind) - 1])

    # -- completing batches ---------------------------------------------------
    def _required(self, batch: Batch) -> list[int]:
        return [p for p in batch.participants
                if p in self.members and self.members[p].state in LIVE]

    def _complete_batches(self) -> None:
        for level in sorted(self.batches):
            batch = self.batches[level]
            if all(self._acked(p, level, batch.batch_id) for p in self._required(batch)):
                del self.batches[level]
                self.issued_ms.pop(batch.batch_id, None)
                self._change(f"batch {batch_label(batch.batch_id)} at level {level} acked by all", epoch=False,
                             detail=True)
                for e in batch.entries:
                    m = self.members.get(e.node_id)
                    if m is None or m.kind is not e.kind or m.cursor != level or m.barrier != e.barrier:
                        continue  # superseded: the node's transition changed meanwhile
                    if m.kind is Kind.FORCED and not m.ready:
                        continue
                    self._advance(m, level)

    def _advance(self, m: MemberEntry, level: int) -> None:
        assert m.kind is not None
        n = m.node_id
        if m.barrier + 1 < self._barriers(level, m.kind):
            self.members[n] = replace(m, barrier=m.barrier + 1)
            self._change(f"{self.name_of(n)} {m.kind.notification} level {level} barrier {m.barrier} done",
                         epoch=False, detail=True)
            return
        if m.kind is Kind.JOIN:
            if m.leave_requested:
                self.members[n] = move(m, NodeState.LEAVING, kind=Kind.LEAVE, barrier=0,
                                       leave_requested=False)
                self._change(f"{self.name_of(n)} reverses its join into a leave after level {level}")
                return
            nxt = self._next_up(level)
            if nxt is None:
                self.members[n] = move(m, NodeState.JOINED, kind=None, cursor=-1, barrier=0)
                self._change(f"{self.name_of(n)} joins: all levels notified")
            else:
                self.members[n] = replace(m, cursor=nxt, barrier=0)
                self._change(f"{self.name_of(n)} joining: level {level} done, next {nxt}", epoch=False, detail=True)
        elif m.kind is Kind.LEAVE:
            nxt = self._next_down(level)
            if nxt is None:
                self.members[n] = move(m, NodeState.INACTIVE, kind=None, cursor=-1, barrier=0,
                                       top_level=-1, forced=False)
                self._change(f"{self.name_of(n)} leaves: all levels notified")
            else:
                self.members[n] = replace(m, cursor=nxt, barrier=0)
                self._change(f"{self.name_of(n)} leaving: level {level} done, next {nxt}", epoch=False, detail=True)
        else:
            nxt = self._next_up(level, limit=m.top_level)
            if nxt is None:
                self.members[n] = move(m, NodeState.INACTIVE, kind=None, cursor=-1, barrier=0,
                                       top_level=-1, forced=True, ready=False)
                self._change(f"{self.name_of(n)} forced out ({self._why_forced(n)}): recovery complete")
            else:
                self.members[n] = replace(m, cursor=nxt, barrier=0)
                self._change(f"{self.name_of(n)} forced-leaving: level {level} recovered, next {nxt}", epoch=False,
                             detail=True)

    # -- failures -------------------------------------------------------------
    def _force(self, m: MemberEntry, why: str) -> None:
        if m.state is NodeState.JOINED:
            top = max(max(self.levels, default=-1), m.top_level)
        else:
            # Joining: the highest level told of the join.  Leaving: the level
            # the leave started at (the top for a joined node's leave, the
            # highest level that processed the join for a reversed join).
            top = m.top_level
        self.members[m.node_id] = move(m, NodeState.FORCED_LEAVING, kind=Kind.FORCED,
                                       cursor=-1, barrier=0, top_level=top, ready=False,
                                       leave_requested=False)
        # The forced incarnation no longer takes part in outstanding batches;
        # removing it keeps a later incarnation of the same node from ever
        # being taken for a participant (the batch id, and so every ack, stays).
        for level, batch in list(self.batches.items()):
            if m.node_id in batch.participants:
                self.batches[level] = replace(
                    batch, participants=tuple(p for p in batch.participants if p != m.node_id))
        if self._is_me(m):
            self._out.self_forced = True
        self.forced_why[m.node_id] = why
        then = ("recovering its levels" if self._liveness.is_dead(m.node_id, m.incarnation)
                else "its levels are recovered once it is dead (fenced)")
        self._change(f"{self.name_of(m.node_id)} forced out ({why}): {then}")

    def _detect_failures(self, now_ms: float, liveness: Liveness) -> None:
        for n in sorted(self.members):
            m = self.members[n]
            if m.state not in LIVE or self._is_me(m):
                continue
            seen = liveness.incarnation(n)
            if seen is not None and seen != m.incarnation:
                self._force(m, f"restarted: incarnation {m.incarnation:x} -> {seen:x}")
            elif liveness.is_dead(n, m.incarnation):
                self._force(m, f"missed heartbeats for {seconds_text(liveness.age_ms(n, now_ms) or 0)}")
        for level in sorted(self.batches):
            batch = self.batches[level]
            issued = self.issued_ms.get(batch.batch_id, now_ms)
            if now_ms - issued < self.timing.transition_timeout_ms:
                continue
            for p in self._required(batch):
                if not self._acked(p, level, batch.batch_id):
                    self._force(self.members[p],
                                f"did not ack batch {batch_label(batch.batch_id)} at level {self._level_text(level)} "
                                f"within {seconds_text(self.timing.transition_timeout_ms)}")

    def _ready_forced(self, liveness: Liveness) -> None:
        for n in sorted(self.members):
            m = self.members[n]
            if m.state is not NodeState.FORCED_LEAVING or m.ready:
                continue
            if self._is_me(m) or not liveness.is_dead(n, m.incarnation):
                continue
            first = self._next_up(-1, limit=m.top_level)
            if first is None:
                self.members[n] = move(m, NodeState.INACTIVE, kind=None, cursor=-1,
                                       top_level=-1, forced=True)
                self._change(f"{self.name_of(n)} forced out ({self._why_forced(n)}): dead, no level to recover")
            else:
                self.members[n] = replace(m, ready=True, cursor=first, barrier=0)
                self._change(f"{self.name_of(n)} dead for its dead timeout: recovery starts at level {first}",
                             epoch=False, detail=True)

    # -- requests -------------------------------------------------------------
    def _take_requests(self, liveness: Liveness) -> None:
        from .model import Request  # local: keeps the import list short above
        for n in sorted(self._slots):
            s = self._slots[n]
            m = self.members.get(n)
            if s.request is Request.JOIN:
                if m is not None and m.incarnation == s.incarnation and m.state is not NodeState.INACTIVE:
                    continue  # already in progress or done
                if m is not None and m.state is not NodeState.INACTIVE:
                    continue  # a previous incarnation is still being forced out
                if m is not None and m.incarnation == s.incarnation and m.forced:
                    continue  # a forced-out incarnation never rejoins (its slot is stale)
                if not liveness.alive(n, s.incarnation) and n != self._own_id:
                    continue
                rej = self.rejections.get(n)
                if rej is not None and rej.incarnation == s.incarnation:
                    continue
                problem = self._check_registrations(s)
                if problem is not None:
                    level, reason = problem
                    self.rejections[n] = Rejection(n, s.incarnation, level, _bounded(reason))
                    self._change(f"{self.name_of(n)} join refused: {reason}")
                    continue
                first = min((r.level for r in s.registrations), default=None)
                first_cluster = self._next_up(-1)
                candidates = [x for x in (first, first_cluster) if x is not None]
                if not candidates:
                    entry = MemberEntry(n, s.incarnation, NodeState.JOINED)
                else:
                    entry = MemberEntry(n, s.incarnation, NodeState.JOINING, kind=Kind.JOIN,
                                        cursor=min(candidates))
                check_move(n, NodeState.INACTIVE if m is None else m.state, entry.state)
                self.members[n] = entry
                for reg in s.registrations:
                    self.levels.setdefault(reg.level, LevelSpec(reg.level, reg.barriers))
                self.levels = dict(sorted(self.levels.items()))
                self.forced_why.pop(n, None)
                if entry.state is NodeState.JOINED:
                    self._change(f"{self.name_of(n)} joins: no level to notify")
                else:
                    self._change(f"{self.name_of(n)} joining", detail=True)
            elif s.request is Request.LEAVE and m is not None and m.incarnation == s.incarnation:
                if m.state is NodeState.JOINED:
                    top = max(self.levels, default=None)
                    if top is None:
                        self.members[n] = move(m, NodeState.INACTIVE, forced=False)
                        self._change(f"{self.name_of(n)} leaves: no level to notify")
                    else:
                        self.members[n] = move(m, NodeState.LEAVING, kind=Kind.LEAVE,
                                               cursor=top, barrier=0, top_level=top)
                        self._change(f"{self.name_of(n)} leaving", detail=True)
                elif m.state is NodeState.JOINING and not m.leave_requested:
                    self.members[n] = replace(m, leave_requested=True)
                    self._change(f"{self.name_of(n)} asked to leave while joining", epoch=False, detail=True)

    def _check_registrations(self, s: SlotRecord) -> tuple[int, str] | None:
        seen: set[int] = set()
        for reg in s.registrations:
            if reg.level in seen:
                return reg.level, f"level {reg.level} registered twice"
            seen.add(reg.level)
            if any(b < 1 for b in reg.barriers):
                return reg.level, f"level {reg.level}: barrier counts must be >= 1"
            spec = self.levels.get(reg.level)
            if spec is not None and spec.barriers != reg.barriers:
                return reg.level, f"level {reg.level}: barriers {reg.barriers} != {spec.barriers}"
        if len(set(self.levels) | seen) > LEVELS_MAX:
            return max(seen), f"more than {LEVELS_MAX} levels cluster-wide"
        return None

    def _in_outstanding_batch(self, n: int) -> bool:
        return any(e.node_id == n for b in self.batches.values() for e in b.entries)

    def _reverse_joins(self) -> None:
        """A joining node asked to leave reverses between levels: when it is
        not inside an outstanding batch, its leave starts at the highest level
        that completed its join."""
        for n in sorted(self.members):
            m = self.members[n]
            if m.state is not NodeState.JOINING or not m.leave_requested or self._in_outstanding_batch(n):
                continue
            if m.barrier > 0:
                continue  # inside a level: it finishes the level first
            prev = self._next_down(m.cursor)
            if prev is None:
                self.members[n] = move(m, NodeState.INACTIVE, kind=None, cursor=-1, barrier=0,
                                       top_level=-1, forced=False, leave_requested=False)
                self._change(f"{self.name_of(n)} left before any level processed its join")
            else:
                self.members[n] = move(m, NodeState.LEAVING, kind=Kind.LEAVE, cursor=prev,
                                       barrier=0, leave_requested=False)
                self._change(f"{self.name_of(n)} reverses its join into a leave from level {prev}")

    # -- issuing --------------------------------------------------------------
    def _desired(self, level: int) -> tuple[BatchEntry, ...]:
        out = []
        for n in sorted(self.members):
            m = self.members[n]
            if m.kind is None or m.cursor != level:
                continue
            if m.kind is Kind.FORCED and not m.ready:
                continue
            out.append(BatchEntry(n, m.kind, m.barrier))
        return tuple(out)

    def _participants(self, level: int, entries: tuple[BatchEntry, ...]) -> tuple[int, ...]:
        graceful = {e.node_id for e in entries if e.kind is not Kind.FORCED}
        out = []
        for n in sorted(self.members):
            m = self.members[n]
            if m.state not in LIVE or not self._registered(m, level):
                continue
            if level_state(m, level) == "joined" or n in graceful:
                out.append(n)
        return tuple(out)

    def _issue_batches(self, now_ms: float) -> None:
        for _ in range(4 * LEVELS_MAX * 8 + 8):  # bounded: each pass moves something up or stops
            moved = False
            for level in sorted(set(self.levels) | {m.cursor for m in self.members.values() if m.cursor >= 0}):
                desired = self._desired(level)
                current = self.batches.get(level)
                if current is not None:
                    if not self._needs_renotify(current, desired):
                        continue
                    del self.batches[level]
                    self.issued_ms.pop(current.batch_id, None)
                    self._out.log.append(MasterLine(f"batch {batch_label(current.batch_id)} at level {level} "
                                                    f"superseded (re-notification)", detail=True))
                if not desired:
                    continue
                participants = self._participants(level, desired)
                if not participants:
                    for e in desired:
                        self._advance(self.members[e.node_id], level)
                    moved = True
                    continue
                batch = Batch(level, self.next_batch_id, desired, participants)
                self.next_batch_id += 1
                self.batches[level] = batch
                self.issued_ms[batch.batch_id] = now_ms
                for e in desired:
                    m = self.members[e.node_id]
                    if m.kind is Kind.JOIN and level > m.top_level:
                        self.members[e.node_id] = replace(m, top_level=level)
                self._change(f"batch {batch_label(batch.batch_id)} at level {level}: "
                             + ", ".join(f"{self.name_of(e.node_id)} {e.kind.notification}#{e.barrier}" for e in desired)
                             + f" to {','.join(self.name_of(p) for p in participants)}", epoch=False, detail=True)
            if not moved:
                return
        raise AssertionError("batch issuing did not settle")  # a broken invariant: crash

    def _needs_renotify(self, current: Batch, desired: tuple[BatchEntry, ...]) -> bool:
        """Table 1: a forced leave that reaches a level whose outstanding batch
        still carries the node's graceful transition re-notifies the level."""
        forced_here = {e.node_id for e in desired if e.kind is Kind.FORCED}
        return any(e.node_id in forced_here and e.kind is not Kind.FORCED for e in current.entries)

    def _collect_rejections(self) -> None:
        for n in list(self.rejections):
            s = self._slots.get(n)
            if s is None or s.incarnation != self.rejections[n].incarnation:
                del self.rejections[n]
                self._out.changed = True
