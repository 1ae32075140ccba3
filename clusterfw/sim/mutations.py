"""Deliberately broken rules, to prove the simulator catches them.

Each mutation patches one rule of the protocol for the duration of a run
(``with mutated(name): ...``).  They exist only so tests can show that every
invariant has teeth: a simulator that cannot fail proves nothing.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from ..core import coordinator, liveness


def _skip_ack_wait() -> Callable[[], None]:
    """The master advances a transition without waiting for every ack."""
    original = coordinator.Coordinator._acked
    coordinator.Coordinator._acked = lambda self, node_id, level, batch_id: True  # type: ignore[method-assign]
    return lambda: setattr(coordinator.Coordinator, "_acked", original)


def _dead_too_soon() -> Callable[[], None]:
    """Observers judge a node dead after a quarter of its dead timeout."""
    original = liveness.Liveness.is_dead

    def is_dead(self, node_id, incarnation=None):  # type: ignore[no-untyped-def]
        o = self._obs.get(node_id)
        if o is None:
            return original(self, node_id, incarnation)
        since = o.incarnation_since_ms if (incarnation is not None and incarnation != o.incarnation) else o.changed_ms
        return o.last_read_start_ms - since >= o.dead_after_ms / 4

    liveness.Liveness.is_dead = is_dead  # type: ignore[method-assign]
    return lambda: setattr(liveness.Liveness, "is_dead", original)


def _leave_bottom_up() -> Callable[[], None]:
    """Graceful leaves run bottom-up instead of top-down."""
    c = coordinator.Coordinator
    orig_down, orig_take = c._next_down, c._take_requests

    def next_down(self, level):  # type: ignore[no-untyped-def]
        return self._next_up(level)

    def take_requests(self, live):  # type: ignore[no-untyped-def]
        orig_take(self, live)
        from ..core.model import Kind
        for n, m in list(self.members.items()):
            if m.kind is Kind.LEAVE and m.cursor == max(self.levels, default=-1) and m.barrier == 0 \
                    and not self._in_outstanding_batch(n):
                from dataclasses import replace
                self.members[n] = replace(m, cursor=min(self.levels))

    c._next_down, c._take_requests = next_down, take_requests  # type: ignore[method-assign]

    def undo() -> None:
        c._next_down, c._take_requests = orig_down, orig_take  # type: ignore[method-assign]
    return undo


def _dlm_ignore_choosing() -> Callable[[], None]:
    """The DLM's bakery does not wait for other nodes' CHOOSING entries (run
    with the DLM on: ``clusterfw sim --dlm``)."""
    from ..core import dlm
    original = dlm.DlmCore._blockers

    def blockers(self, req, entries):  # type: ignore[no-untyped-def]
        return tuple(b for b in original(self, req, entries) if b.why != "choosing")

    dlm.DlmCore._blockers = blockers  # type: ignore[method-assign]
    return lambda: setattr(dlm.DlmCore, "_blockers", original)


def _patch(owner: object, name: str, value: object) -> Callable[[], None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    return lambda: setattr(owner, name, original)


def _undo_all(*undos: Callable[[], None]) -> Callable[[], None]:
    def undo() -> None:
        for one in reversed(undos):
            one()
    return undo


def _watchdog_late() -> Callable[[], None]:
    """The watchdog resets a host three fence margins after the deadline
    instead of within one (a watchdog timeout longer than the margin)."""
    from . import world
    return _patch(world, "WATCHDOG_FIRE_FRACTION", 3.0)


def _skip_startup_cleanup() -> Callable[[], None]:
    """A daemon restarted after a crash does not stop what its predecessor
    managed; opening the watchdog restarts its countdown."""
    from . import world

    def cleanup(self, node):  # type: ignore[no-untyped-def]
        node.orphan_token += 1  # the reopened watchdog forgets the old countdown
    return _patch(world.World, "_startup_cleanup", cleanup)


def _resume_from_any_view() -> Callable[[], None]:
    """A new master resumes from the newest view it can read, ignoring the
    epochs the slots say live nodes have seen (and its own memory)."""
    from ..core import node

    original = node.NodeCore._complete_takeover

    def complete_takeover(self, now_ms, results):  # type: ignore[no-untyped-def]
        saved = self.view, self._undelivered
        if not self._views_todo:
            self.view = self._undelivered = None
        try:
            original(self, now_ms, results)
        finally:
            if self.role is not node.Role.MASTER:
                self.view, self._undelivered = saved
    undo_seen = _patch(node.NodeCore, "_seen_epochs", lambda self: {})
    undo = _patch(node.NodeCore, "_complete_takeover", complete_takeover)
    return _undo_all(undo_seen, undo)


def _blind_view_retry() -> Callable[[], None]:
    """After a view write reported failed, the master writes the same copy
    again without reading back whether the failed write landed."""
    from ..core import node

    def complete_view_write(self, now_ms, r):  # type: ignore[no-untyped-def]
        self.pending_view_write = None
        if not r.ok:
            self._view_dirty = True
            self.next_cycle_ms = now_ms + self.timing.fast_poll_ms
            return
        self._view_landed(r.op.record, now_ms)
        self._schedule(now_ms)
    return _patch(node.NodeCore, "_complete_view_write", complete_view_write)


def _election_blocks_on_unreadable() -> Callable[[], None]:
    """Any unreadable slot aborts an election phase, even a dead node's or
    an unused one's."""
    from ..core import node
    original = node.NodeCore._election_step

    def election_step(self, now_ms, wrote, leases, unreadable, dead_unreadable=frozenset()):  # type: ignore[no-untyped-def]
        return original(self, now_ms, wrote, leases, unreadable | dead_unreadable, frozenset())
    return _patch(node.NodeCore, "_election_step", election_step)


def _takeover_reads_all_at_once() -> Callable[[], None]:
    """A node taking over writes no heartbeat, and retries a failed read of
    the view area until it succeeds as a whole (never gives a pair up)."""
    from ..core import node

    def note_views(self, r):  # type: ignore[no-untyped-def]
        first, count, tries = self._views_todo[0]
        if r.ok:
            self._views_todo.pop(0)
            for node_id, view in r.value.items():
                self._views_read[node_id] = view if isinstance(view, node.ViewRecord) else None
    undo_notes = _patch(node.NodeCore, "_note_views", note_views)
    undo_poll = _no_takeover_heartbeat()
    return _undo_all(undo_notes, undo_poll)


def _behind_may_propose() -> Callable[[], None]:
    """A node that has not seen the newest view a live node saw still
    proposes itself as master."""
    from ..core import node
    return _patch(node.NodeCore, "_behind", lambda self: False)


def _no_takeover_heartbeat() -> Callable[[], None]:
    """A node taking over reads views without writing its slot."""
    from ..core import node
    original = node.NodeCore.poll

    def poll(self, now_ms):  # type: ignore[no-untyped-def]
        ops = original(self, now_ms)
        if self.role is node.Role.TAKING_OVER and ops and isinstance(ops[0], node.WriteSlot):
            self.seq -= 1
            ops = ops[1:]
            assert self.in_flight is not None
            self.in_flight.ops = list(ops)
        return ops
    return _patch(node.NodeCore, "poll", poll)


def _ack_at_least() -> Callable[[], None]:
    """A slot's ack counts for every batch id up to it (``>=``), not just
    for the batch it names."""
    c = coordinator.Coordinator

    def acked(self, node_id, level, batch_id):  # type: ignore[no-untyped-def]
        if self._is_me(self.members[node_id]):
            return self._own_acks.get(level, 0) >= batch_id
        s = self._slot_of(self.members[node_id])
        return s is not None and s.ack_for(level) >= batch_id
    return _patch(c, "_acked", acked)


def _dlm_recover_any_incarnation() -> Callable[[], None]:
    """The DLM recovers by node id alone: once any incarnation of a node was
    shown gone at the DLM level, no entry of that node id counts any more --
    not even those of its live later incarnation (run with ``--dlm``)."""
    from ..core import dlm
    original = dlm.DlmCore._counted

    def counted(self, node_id, incarnation):  # type: ignore[no-untyped-def]
        if self._departed.get(node_id):
            return False
        return original(self, node_id, incarnation)

    dlm.DlmCore._counted = counted  # type: ignore[method-assign]
    return lambda: setattr(dlm.DlmCore, "_counted", original)


def _services_no_lock() -> Callable[[], None]:
    """A services round reads and writes the registry without taking the
    DLM lock ``clusterfw.registry`` (run with ``--services``)."""
    from . import services_sim

    def take_lock(self, node, d):  # type: ignore[no-untyped-def]
        d.revoked, d.lock_req, d.token = False, -1, d.token + 1
        self._granted(node, d)
        return True
    return _patch(services_sim.ServicesSim, "_take_lock", take_lock)


def _services_leaving_is_gone() -> Callable[[], None]:
    """A node leaving gracefully counts as gone at once: its services are
    started elsewhere while it still stops them (run with ``--services``)."""
    from ..core import services
    from ..core.model import NodeState
    original = services.cluster_from_view

    def cluster_from_view(view, names, gone, now_ms, me=None):  # type: ignore[no-untyped-def]
        leaving = {names.get(m.node_id, "") for m in view.members if m.state is NodeState.LEAVING} \
            if view is not None else set()
        return original(view, names, set(gone) | leaving, now_ms, me)
    return _patch(services, "cluster_from_view", cluster_from_view)


def _services_any_incarnation() -> Callable[[], None]:
    """A restarted daemon takes the view's member of its node for itself
    whatever its incarnation, and the registry keeps a restarted node's
    entries: the new daemon acts on what the registry gave the old one
    (run with ``--services``)."""
    from ..core import services
    original = services.cluster_from_view

    def cluster_from_view(view, names, gone, now_ms, me=None):  # type: ignore[no-untyped-def]
        out = original(view, names, gone, now_ms)
        return services.Cluster(out.known, out.present, out.up, out.now_ms)  # no incarnations either
    return _patch(services, "cluster_from_view", cluster_from_view)


MUTATIONS: dict[str, Callable[[], Callable[[], None]]] = {
    "skip-ack-wait": _skip_ack_wait,
    "dead-too-soon": _dead_too_soon,
    "leave-bottom-up": _leave_bottom_up,
    "dlm-ignore-choosing": _dlm_ignore_choosing,
    "dlm-recover-any-incarnation": _dlm_recover_any_incarnation,
    "watchdog-late": _watchdog_late,
    "skip-startup-cleanup": _skip_startup_cleanup,
    "resume-from-any-view": _resume_from_any_view,
    "blind-view-retry": _blind_view_retry,
    "election-blocks-on-unreadable": _election_blocks_on_unreadable,
    "no-takeover-heartbeat": _no_takeover_heartbeat,
    "behind-may-propose": _behind_may_propose,
    "takeover-reads-all-at-once": _takeover_reads_all_at_once,
    "ack-at-least": _ack_at_least,
    "services-no-lock": _services_no_lock,
    "services-leaving-is-gone": _services_leaving_is_gone,
    "services-any-incarnation": _services_any_incarnation,
}


@contextlib.contextmanager
def mutated(name: str | None) -> Iterator[None]:
    """Apply one mutation, or several joined by ``+`` (a rule that only
    matters when another one is broken too)."""
    if not name:
        yield
        return
    names = name.split("+")
    for one in names:
        if one not in MUTATIONS:
            raise ValueError(f"unknown mutation {one!r}: choose from {', '.join(MUTATIONS)}")
    undos = [MUTATIONS[one]() for one in names]
    try:
        yield
    finally:
        for undo in reversed(undos):
            undo()
