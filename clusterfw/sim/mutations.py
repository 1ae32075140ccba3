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


MUTATIONS: dict[str, Callable[[], Callable[[], None]]] = {
    "skip-ack-wait": _skip_ack_wait,
    "dead-too-soon": _dead_too_soon,
    "leave-bottom-up": _leave_bottom_up,
    "dlm-ignore-choosing": _dlm_ignore_choosing,
}


@contextlib.contextmanager
def mutated(name: str | None) -> Iterator[None]:
    if not name:
        yield
        return
    if name not in MUTATIONS:
        raise ValueError(f"unknown mutation {name!r}: choose from {', '.join(MUTATIONS)}")
    undo = MUTATIONS[name]()
    try:
        yield
    finally:
        undo()
