"""Liveness: "the heartbeat changed", judged on the observer's monotonic clock.

How this works
--------------
After every successful read of the slot area the observer feeds each slot's
``(incarnation, seq)`` with the read's start and completion times.  A change
records ``changed_ms`` = the completion time of the read that first showed the
new value.  A node is *dead* once a later successful read that *started* at
least the node's own ``dead_after_ms`` after ``changed_ms`` still shows the
same value (see ``clusterfw.core.timing`` for why that is evidence).  Failed or
corrupt reads are no evidence either way: they never make a node look dead.

An incarnation change means the previous incarnation has stopped (one daemon
per node, held by a lock), but its services may still be running, so the
*previous* incarnation counts as dead only ``dead_after_ms`` after the new one
was first seen -- its last heartbeat was older than that.

A node whose slot has never decoded (never written, or corrupt) is judged with
the observer's own ``dead_after_ms``, counted from the observer's first
successful read of the slot area: it is dead once it has shown nothing valid
for that long.

A slot that decoded before and now does not (damaged sectors), or shows a
replay, counts as "unchanged" (``observe_unreadable``) -- except the first
such read after a good one, which counts as a change: the damage may have
destroyed a heartbeat this observer never read, one that renewed its
writer's fence clock, so the clock starts again after the damage.  This is
safe because a node counts a heartbeat write as completed only when its own
read of the slot area shows that record intact (``clusterfw.core.node``): a
node whose slot stays unreadable misses its fence deadline and fences, so a
damaged slot makes a dead node look dead one read later, never a running
node look dead.  A one-off damage is repaired by the owner's next write.

A *replayed* record -- an older sequence number of the current incarnation,
or an incarnation that was already replaced -- is no heartbeat either
(``Observed.REPLAYED``): the caller treats it like a damaged block.  A
restarted daemon continues the sequence of the slot it found, so a new
incarnation shows a higher sequence number than its predecessor.  A record of
an unknown incarnation with a sequence number no higher than the current
one's is therefore most likely a replay of an incarnation this observer never
saw: it is taken as new only once a later read shows it moving (a real
daemon that could not read its old slot heartbeats; a replayed record does
not).

Invariant: ``changed_ms`` and ``last_read_start_ms`` never go backwards.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .model import SlotRecord

RETIRED_MAX = 8  # replaced incarnations remembered per node (to recognise replays)


class Observed(enum.Enum):
    NEW = "new"
    """First record seen of this node, or a new incarnation."""
    CHANGED = "changed"
    """The heartbeat moved on."""
    SAME = "same"
    """The same record as before."""
    REPLAYED = "replayed"
    """An older record than one already seen: no evidence of anything."""


@dataclass
class Observation:
    incarnation: int
    seq: int
    dead_after_ms: int
    changed_ms: float  # completion time of the read that first showed (incarnation, seq)
    incarnation_since_ms: float  # completion time of the read that first showed this incarnation
    last_read_start_ms: float  # start time of the newest successful read of this slot
    retired: list[int] = field(default_factory=list)  # replaced incarnations, newest last
    pending: tuple[int, int] | None = None  # (incarnation, seq): another incarnation with a lower seq
    hidden: bool = False  # the slot reads damaged or replayed since the last good read


class Liveness:
    """Per-observer table of what each node's heartbeat has done."""

    def __init__(self, own_dead_after_ms: int) -> None:
        self._obs: dict[int, Observation] = {}
        self._own_dead_after_ms = own_dead_after_ms
        self._first_area_read_end_ms: float | None = None
        self._last_area_read_start_ms: float | None = None

    def note_area_read(self, read_start_ms: float, read_end_ms: float) -> None:
        """Record one successful read of the whole slot area."""
        if self._first_area_read_end_ms is None:
            self._first_area_read_end_ms = read_end_ms
        self._last_area_read_start_ms = read_start_ms

    def observe(self, slot: SlotRecord, read_start_ms: float, read_end_ms: float) -> Observed:
        """Feed one successfully decoded slot."""
        o = self._obs.get(slot.node_id)
        if o is None:
            self._obs[slot.node_id] = Observation(
                slot.incarnation, slot.seq, slot.timing.dead_after_ms,
                changed_ms=read_end_ms, incarnation_since_ms=read_end_ms,
                last_read_start_ms=read_start_ms)
            return Observed.NEW
        if slot.incarnation in o.retired or (slot.incarnation == o.incarnation and slot.seq < o.seq):
            return Observed.REPLAYED
        if slot.incarnation != o.incarnation and slot.seq <= o.seq:
            moved = o.pending is not None and o.pending[0] == slot.incarnation and slot.seq > o.pending[1]
            if not moved:
                o.pending = (slot.incarnation, slot.seq)
                return Observed.REPLAYED
        o.hidden = False
        o.last_read_start_ms = max(o.last_read_start_ms, read_start_ms)
        o.dead_after_ms = slot.timing.dead_after_ms
        if slot.incarnation != o.incarnation:
            o.pending = None
            o.retired = (o.retired + [o.incarnation])[-RETIRED_MAX:]
            o.incarnation, o.seq = slot.incarnation, slot.seq
            o.changed_ms = o.incarnation_since_ms = read_end_ms
            return Observed.NEW
        if slot.seq != o.seq:
            o.seq = slot.seq
            o.changed_ms = read_end_ms
            return Observed.CHANGED
        return Observed.SAME

    def observe_unreadable(self, node_id: int, read_start_ms: float, read_end_ms: float) -> None:
        """A successful read of the slot area in which ``node_id``'s slot did
        not decode (or was a replay): its heartbeat did not move -- but the
        first such read after a good one may hide a write, so it restarts
        the clock (see the module docstring)."""
        o = self._obs.get(node_id)
        if o is None:
            return
        if not o.hidden:
            o.hidden = True
            o.changed_ms = max(o.changed_ms, read_end_ms)
        o.last_read_start_ms = max(o.last_read_start_ms, read_start_ms)

    def known(self, node_id: int) -> bool:
        return node_id in self._obs

    def incarnation(self, node_id: int) -> int | None:
        o = self._obs.get(node_id)
        return None if o is None else o.incarnation

    def age_ms(self, node_id: int, now_ms: float) -> float | None:
        """How long ago (observer's clock) the heartbeat last changed."""
        o = self._obs.get(node_id)
        return None if o is None else max(0.0, now_ms - o.changed_ms)

    def is_dead(self, node_id: int, incarnation: int | None = None) -> bool:
        """True when there is evidence that ``node_id`` (in ``incarnation``,
        default: the one currently on disk) has stopped for ``dead_after``."""
        o = self._obs.get(node_id)
        if o is None:
            if self._first_area_read_end_ms is None or self._last_area_read_start_ms is None:
                return False
            return (self._last_area_read_start_ms - self._first_area_read_end_ms
                    >= self._own_dead_after_ms)
        if incarnation is not None and incarnation != o.incarnation:
            # The asked-about incarnation was replaced; it last wrote before
            # the new one was first seen.
            return o.last_read_start_ms - o.incarnation_since_ms >= o.dead_after_ms
        return o.last_read_start_ms - o.changed_ms >= o.dead_after_ms

    def alive(self, node_id: int, incarnation: int | None = None) -> bool:
        """Seen, in that incarnation, and not dead."""
        o = self._obs.get(node_id)
        if o is None:
            return False
        if incarnation is not None and incarnation != o.incarnation:
            return False
        return not self.is_dead(node_id)
