"""Named safety invariants, checked with global knowledge on every landing
write, delivery, ack and fence, and after every simulator event.

| name                    | what it means                                                  |
|-------------------------|----------------------------------------------------------------|
| one-master              | never two nodes acting as master (able to write a view) at once|
| one-value-per-term      | every block that knows a term decided names the same master    |
| view-order              | views land in (term, epoch) order: no deposed master writes    |
| step-order              | join bottom-up, leave top-down, forced leave bottom-up, within |
|                         | a level barriers in order; forced leave only up to top_level   |
| ack-before-next-step    | a transition's next level/barrier is issued only after every   |
|                         | live participant's subsystem acked the previous one            |
| fence-before-recovery   | a forced-leave notification about a node is issued only when   |
|                         | that node is down (crashed/fenced) and its last heartbeat      |
|                         | (the newest its writer counted as completed) landed at least   |
|                         | dead_after (slowest clock) before                              |
| deliver-after-commit    | a node delivers only batches that landed on the disk           |
| no-write-after-fence    | a fenced node issues no write (checked where writes are issued)|
| fence-on-disk-loss      | a running node past its fence deadline has fenced (its timer), |
|                         | a paused one has been reset by its watchdog by deadline+margin |
| view-rollback           | no view lands with an epoch below one that a running node has  |
|                         | acted on (a new master resumed from a lost or stale view)      |
| fence-before-recovery   | also covers a daemon-only crash: the old incarnation counts as |
|  (daemon crash)         | running until the next daemon stopped its services or the      |
|                         | watchdog reset the host                                        |
| liveness                | after faults stop, all nodes Joined in one view (world.py)     |

A simulator feature (feature.py) checks its own invariants, e.g. the DLM's
dlm-exclusive, dlm-token-order, dlm-no-grant-to-outsider and dlm-liveness
(dlm_sim.py); the world calls them next to these.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.model import Kind, NodeState, SlotRecord, ViewRecord
from ..core.timing import CLOCK_DRIFT_MAX
from .model import SimNode, WorldState

if TYPE_CHECKING:
    from ..core.node import Fenced, Notify

LIVE = (NodeState.JOINING, NodeState.JOINED, NodeState.LEAVING)


class Violation(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message
        self.seed: int | None = None
        self.trace: list[str] = []


@dataclass
class _Step:
    level: int
    barrier: int
    batch_id: int
    epoch: int = 0  # of the view in which this step first landed


class Checker:
    def __init__(self, world: WorldState) -> None:
        self.w = world
        self.decided: dict[int, tuple[int, int]] = {}
        self.max_view: tuple[int, int] = (0, 0)
        self.batches: dict[int, Any] = {}
        self.batch_incarnations: dict[int, dict[int, int]] = {}  # batch -> participant -> incarnation
        self.last_step: dict[tuple[int, int, Kind], _Step] = {}
        self.acked: dict[tuple[int, int, int], int] = {}  # (node, incarnation, level) -> batch id
        self.last_hb: dict[tuple[int, int], float] = {}  # (node, incarnation) -> real ms
        self.last_hb_seq: dict[tuple[int, int], int] = {}  # the seq of that heartbeat
        self.landed: dict[tuple[int, int], dict[int, float]] = {}  # recent seqs landed -> real ms
        self.status: dict[tuple[int, int], str] = {}  # running | fencing | down
        self.deliveries = 0
        self.adopted: dict[tuple[int, int], int] = {}  # (node, incarnation) -> highest epoch acted on
        self.checks = 0
        self.features: dict[str, Any] = {}  # the running simulator features by name (the world sets it)

    @property
    def dlm(self) -> Any:
        """The DLM feature when it runs, else None."""
        return self.features.get("dlm")

    def fail(self, name: str, msg: str) -> None:
        raise Violation(name, msg)

    # ------------------------------------------------------------ lifecycle
    def _inc(self, node: SimNode) -> int:
        assert node.core is not None
        return node.core.incarnation

    def on_start(self, node: SimNode) -> None:
        self.status[(node.node_id, self._inc(node))] = "running"

    def on_fence_start(self, node: SimNode, ev: "Fenced") -> None:
        self.status[(node.node_id, self._inc(node))] = "fencing"

    def on_fenced(self, node: SimNode) -> None:
        self.status[(node.node_id, self._inc(node))] = "down"

    def on_crash(self, node: SimNode) -> None:
        self.status[(node.node_id, self._inc(node))] = "down"

    def on_stopped(self, node: SimNode) -> None:
        self.status[(node.node_id, self._inc(node))] = "down"

    def on_daemon_crash(self, node: SimNode) -> None:
        """The daemon died; its services did not: still running."""
        self.status[(node.node_id, self._inc(node))] = "running (daemon crashed)"

    def on_orphan_gone(self, node: SimNode, incarnation: int) -> None:
        self.status[(node.node_id, incarnation)] = "down"

    def on_adopt(self, node: SimNode) -> None:
        core = node.core
        if core is not None and core.view is not None:
            key = (node.node_id, core.incarnation)
            self.adopted[key] = max(self.adopted.get(key, 0), core.view.epoch)

    def on_resume(self, node: SimNode, epoch: int) -> None:
        """A new master resumed from a view of ``epoch``.  Anything that
        landed above it was abandoned; view-rollback proves no running node
        acted on it (every node that did is down), so the steps of that
        history no longer bind the order of what is issued now."""
        self.last_step = {k: st for k, st in self.last_step.items() if st.epoch <= epoch}

    def on_ack(self, node: SimNode, level: int, batch_id: int) -> None:
        key = (node.node_id, self._inc(node), level)
        self.acked[key] = max(self.acked.get(key, 0), batch_id)

    # ---------------------------------------------------------------- disk
    def on_land(self, node: SimNode, rec: Any) -> None:
        self.checks += 1
        if isinstance(rec, SlotRecord):
            recent = self.landed.setdefault((rec.node_id, rec.incarnation), {})
            recent[rec.seq] = self.w.t
            if len(recent) > 16:
                del recent[min(recent)]
            lease = rec.lease
            if lease.committed_term:
                value = (lease.master, lease.master_incarnation)
                known = self.decided.setdefault(lease.committed_term, value)
                if known != value:
                    self.fail("one-value-per-term",
                              f"term {lease.committed_term} decided for n{known[0]} and for n{value[0]}")
        elif isinstance(rec, ViewRecord):
            self._on_view(rec)

    def on_renewed(self, node_id: int, incarnation: int, seq: int) -> None:
        """The writer counted its heartbeat ``seq`` as completed (its fence
        clock moved).  The timing rule runs from the last such write: a write
        that landed but that its writer did not count (reported failed, or
        not read back intact) does not extend when the writer fences."""
        landed = self.landed.get((node_id, incarnation), {}).get(seq)
        key = (node_id, incarnation)
        if landed is not None and seq > self.last_hb_seq.get(key, -1):
            self.last_hb_seq[key] = seq
            self.last_hb[key] = landed

    def _on_view(self, view: ViewRecord) -> None:
        acted = [(epoch, n) for (n, inc), epoch in self.adopted.items()
                 if self.status.get((n, inc)) != "down"]
        if acted and view.epoch < max(acted)[0]:
            epoch, n = max(acted)
            self.fail("view-rollback", f"n{view.node_id} wrote a view of term {view.term} at epoch {view.epoch}, "
                      f"below epoch {epoch} that running n{n} acted on")
        key = (view.term, view.epoch)
        if key < self.max_view:
            self.fail("view-order", f"n{view.node_id} wrote view term {view.term} epoch {view.epoch} after "
                      f"term {self.max_view[0]} epoch {self.max_view[1]} had landed (a deposed master wrote)")
        self.max_view = key
        decided = self.decided.get(view.term)
        if decided is not None and decided[0] != view.node_id:
            self.fail("one-master", f"n{view.node_id} wrote a view for term {view.term}, decided for n{decided[0]}")
        members = {m.node_id: m for m in view.members}
        for batch in view.batches:
            if batch.batch_id in self.batches:
                continue
            self.batches[batch.batch_id] = batch
            self.batch_incarnations[batch.batch_id] = {
                p: members[p].incarnation for p in batch.participants if p in members}
            for e in batch.entries:
                m = members.get(e.node_id)
                if m is None:
                    self.fail("step-order", f"batch {batch.batch_id} names n{e.node_id}, absent from the view")
                self._check_step(view, members, batch, e, m)

    def _check_step(self, view: ViewRecord, members: dict, batch: Any, e: Any, m: Any) -> None:
        level, kind = batch.level, e.kind
        key = (e.node_id, m.incarnation, kind)
        prev = self.last_step.get(key)
        where = f"batch {batch.batch_id}: n{e.node_id} {kind.notification} level {level} barrier {e.barrier}"
        if kind is Kind.FORCED:
            self._check_fenced(e.node_id, m.incarnation, where)
            if level > m.top_level:
                self.fail("step-order", f"{where} is above top_level {m.top_level}")
        if prev is not None and (prev.level, prev.barrier) != (level, e.barrier):
            order_ok = {
                Kind.JOIN: (level, e.barrier) > (prev.level, prev.barrier),
                Kind.FORCED: (level, e.barrier) > (prev.level, prev.barrier),
                Kind.LEAVE: level < prev.level or (level == prev.level and e.barrier > prev.barrier),
            }[kind]
            if not order_ok:
                self.fail("step-order", f"{where} after level {prev.level} barrier {prev.barrier}")
            pb = self.batches[prev.batch_id]
            for p, inc in self.batch_incarnations[prev.batch_id].items():
                pm = members.get(p)
                if pm is None or pm.state not in LIVE or pm.incarnation != inc:
                    continue
                if self.acked.get((p, pm.incarnation, pb.level), 0) < pb.batch_id:
                    self.fail("ack-before-next-step",
                              f"{where} issued before n{p} acked batch {pb.batch_id} at level {pb.level}")
        self.last_step[key] = _Step(level, e.barrier, batch.batch_id, view.epoch)

    def _check_fenced(self, node_id: int, incarnation: int, where: str) -> None:
        status = self.status.get((node_id, incarnation), "down")
        if status != "down":
            self.fail("fence-before-recovery", f"{where} while that incarnation is {status}")
        last = self.last_hb.get((node_id, incarnation))
        need = self.w.timing.dead_after_ms / (1 + CLOCK_DRIFT_MAX)
        if last is not None and self.w.t - last < need:
            self.fail("fence-before-recovery",
                      f"{where} only {self.w.t - last:.0f} ms after its last heartbeat landed (< {need:.0f})")

    # ---------------------------------------------------------- deliveries
    def on_deliver(self, node: SimNode, ev: "Notify") -> None:
        self.deliveries += 1
        if ev.batch_id not in self.batches:
            self.fail("deliver-after-commit", f"n{node.node_id} delivered batch {ev.batch_id} that never landed")

    # ---------------------------------------------------------------- step
    def after_event(self) -> None:
        margin = self.w.cfg.profile.fence_margin_ms
        for n in self.w.nodes.values():
            core = n.core
            if not n.up or core is None or core.fenced is not None or core.stopped is not None:
                continue
            late = n.local(self.w.t) - core.fence_deadline_ms()
            # >=: a node whose pause ends now (heal) resumes in an event at this instant
            allowed = margin if n.paused_until >= self.w.t else 1.0
            if late > allowed:
                self.fail("fence-on-disk-loss", f"n{n.node_id} is {late:.0f} ms past its fence deadline "
                          "and has not fenced")
        acting = [n.node_id for n in self.w.nodes.values()
                  if n.up and n.core is not None and n.core.is_acting_master(n.local(self.w.t))]
        if len(acting) > 1:
            self.fail("one-master", "acting masters at once: " + ", ".join(f"n{a}" for a in acting))
