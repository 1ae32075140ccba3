"""The deterministic simulator: many nodes, one simulated disk, simulated
clocks and faults, driven by one seed.

How this works
--------------
An event queue in *real* (simulated) milliseconds drives every node's
``NodeCore`` exactly as the daemon does: poll for ops, perform them one after
another against the ``SimStore`` (the daemon's ``ClusterDisk`` over an
in-memory disk: the same encoder, placement and decoders) with sampled
latencies and faults, hand the results back, act on the events (notifications go to test subsystems that ack
after a delay, fencing kills the node's "services", a stopped daemon is
restarted later with a new incarnation).  Each node sees time through its own
clock, ``local = offset + rate * real``, with ``rate`` within the drift bound.

Faults (each can be switched off by name): crash, pause, cut (one node's disk
fails with EIO or hangs), outage (every node's disk at once), torn (a crash
tears an in-flight view write), lost (a crash loses in-flight writes), slowio,
eio, drift, hang (a subsystem never acks), slowsub, leave (graceful leaves and
rejoins), corrupt (random bytes in a sector: a node's slot, an unused slot,
one view copy, or both copies of the master's views), replay (an old, valid
record of a node written back), badsector (a slot or view pair whose reads
and writes fail until the heal), late (a slot write that timed out lands
later, within the bound docs/protocol.md states), landed (a write reported
failed that landed), daemoncrash (the daemon dies, its services keep running
until the next daemon cleans up or the watchdog resets the host).  The disk
has two slots more than nodes, never used, so damage there is exercised.  After the fault phase everything heals and the liveness phase
requires every node to be Joined in one agreed view within a stated bound.

The ``Checker`` (checker.py) is called on every landing write, delivery and
fence and after every event; the first violated invariant stops the run.
Everything random comes from ``random.Random(seed)``: a seed replays exactly.

A subsystem's simulation is a ``Feature`` (feature.py): the world calls the
hooks of every feature the run asks for at fixed points (a daemon starts,
crashes or exits, a batch is delivered, a view adopted or landed, a fence,
the heal, after every event, the liveness check) and hands it the events it
queued.  The first is the DLM with its lock clients (``dlm_sim.py``), on with
``SimConfig(dlm=True)`` or ``dlm`` among the faults.  A feature draws from
its own random stream, so runs without it are unchanged.
"""
from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from ..core import levels
from ..core import timing as timing_mod
from ..core.coordinator import batch_label
from ..core.model import NodeState, Registration, SlotRecord
from ..core.node import (Fenced, MasterChanged, NodeCore, Notify, OpResult, ReadSlots, ReadViews,
                         ReadView, Rejected, Role, StateChanged, Stopped, ViewAdopted,
                         WriteSlot, WriteView)
from .checker import Checker, Violation
from .dlm_sim import DlmSim
from .feature import Feature
from .model import FAULTS, SimConfig, SimNode, SubsystemSim
from .services_sim import ServicesSim
from .store import SimStore

__all__ = ["FAULTS", "FEATURES", "FEATURE_TYPES", "RunResult", "SimConfig", "SimNode", "SubsystemSim", "World"]

UNUSED_SLOTS = 2  # slots past the last node: never written, but damage there must not matter

WATCHDOG_FIRE_FRACTION = 0.9
"""The watchdog resets a host this fraction of ``fence_margin`` after the
fence deadline it last saw (the daemon's check: timeout <= margin)."""

FEATURE_TYPES: tuple[type[Feature], ...] = (DlmSim, ServicesSim)  # in the order the world calls them
FEATURES = tuple(f.name for f in FEATURE_TYPES)  # not faults: on by name (``clusterfw sim --dlm``), never by "all"

# The level table (core/levels.py), except that the simulator's traces and golden
# transcripts have always called level 40 "evm": renaming it there would change
# every trace digest and five transcripts under tests/scenarios/.
ALL_LEVELS = tuple((level, "evm" if level == levels.EVENTS else name) for level, name in levels.LEVELS)
LEVELS = tuple((level, name) for level, name in ALL_LEVELS
               if level != levels.SERVICES)  # the services level only with its feature (sim/services_sim.py)


def wanted_features(cfg: SimConfig) -> tuple[type[Feature], ...]:
    """The features a run with ``cfg`` simulates: those it asks for and
    those they require (the services need the DLM's lock), in
    ``FEATURE_TYPES`` order."""
    names = {f.name for f in FEATURE_TYPES if f.wanted(cfg)}
    for f in FEATURE_TYPES:
        if f.name in names:
            names |= set(f.requires)
    return tuple(f for f in FEATURE_TYPES if f.name in names)


def levels_of(features: tuple[type[Feature], ...]) -> tuple[tuple[int, str], ...]:
    """The levels registered on every node: ``LEVELS``, plus the level of
    a feature that adds its own (the services' 50)."""
    extra = {f.adds_level for f in features if f.adds_level is not None}
    return tuple((level, name) for level, name in ALL_LEVELS if (level, name) in LEVELS or level in extra)


class World:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.t = 0.0
        self._q: list[tuple[float, int, str, int, int, Any]] = []
        self._seq = 0
        self.timing = timing_mod.derive(cfg.profile) if cfg.profile.transition_timeout_ms else \
            timing_mod.derive(timing_mod.Profile(cfg.profile.heartbeat_interval_ms, cfg.profile.io_timeout_ms,
                                                 cfg.profile.fence_margin_ms, transition_timeout_ms=1))
        self.store = SimStore(nodes_max=max(cfg.nodes, 1) + UNUSED_SLOTS, sector_size=cfg.sector_size,
                              seed=cfg.seed, node_ids=tuple(range(1, cfg.nodes + 1)), profile=cfg.profile)
        self.bad: list[tuple[int, int]] = []  # (offset, length) whose I/O fails until the heal
        self.bad_forever: list[tuple[int, int]] = []  # unused view pairs: they stay bad after the heal
        self.history: dict[int, list[tuple[float, int, bytes]]] = {}  # node -> landed slot writes (for replay)
        self.trace: deque[str] = deque(maxlen=cfg.trace_lines)
        self.full_trace: list[str] | None = None
        self.trace_sink: Callable[[bytes], object] | None = None  # called with every trace line (run digests)
        feature_types = wanted_features(cfg)
        self.levels = levels_of(feature_types)
        self.registrations = cfg.registrations or self._random_registrations()
        self.nodes = {i: SimNode(i) for i in range(1, cfg.nodes + 1)}
        drift = "drift" in cfg.faults
        for n in self.nodes.values():
            n.rate = 1.0 + (self.rng.uniform(-0.009, 0.009) if drift else 0.0)
            n.offset_ms = self.rng.uniform(0, 1e6)
        self.checker = Checker(self)
        self.slow_io_until = 0.0
        self.eio_until = 0.0
        self.outage_until = 0.0
        self.healed = False
        self.events_processed = 0
        self.stats = {"crashes": 0, "pauses": 0, "cuts": 0, "outages": 0, "leaves": 0, "fences": 0,
                      "torn_writes": 0, "lost_writes": 0, "hangs": 0, "forced_out": 0, "masters": 0,
                      "ios": 0, "corruptions": 0, "replays": 0, "bad_sectors": 0, "late_writes": 0,
                      "landed_failures": 0, "daemon_crashes": 0}
        self.features: list[Feature] = []  # the subsystems' simulations this run asks for
        for feature_type in feature_types:
            feature = feature_type(self)
            self.features.append(feature)
            for key in feature.counters:
                self.stats[key] = 0
        self.checker.features = {f.name: f for f in self.features}
        self._event_owners = {f.name: f for f in self.features}  # "<name>-..." events
        self._level_owners = {f.level: f for f in self.features if f.level is not None}  # notifications

    @property
    def dlm(self) -> DlmSim | None:
        """The DLM feature when this run simulates it, else None."""
        feature = self._event_owners.get(DlmSim.name)
        return feature if isinstance(feature, DlmSim) else None

    @property
    def services(self) -> ServicesSim | None:
        """The services feature when this run simulates it, else None."""
        feature = self._event_owners.get(ServicesSim.name)
        return feature if isinstance(feature, ServicesSim) else None

    # ------------------------------------------------------------ utilities
    def _random_registrations(self) -> tuple[Registration, ...]:
        regs = []
        for level, name in self.levels:
            if level in (10, 30):
                barriers = (self.rng.randint(1, 3), self.rng.randint(1, 2), self.rng.randint(1, 2))
            else:
                barriers = (1, 1, 1)
            regs.append(Registration(level, name, barriers))
        return tuple(regs)

    def log(self, msg: str) -> None:
        line = f"{self.t:10.1f} {msg}"
        self.trace.append(line)
        if self.trace_sink is not None:
            self.trace_sink(line.encode() + b"\n")
        if self.full_trace is not None:
            self.full_trace.append(line)

    def at(self, t: float, kind: str, node_id: int = 0, gen: int = 0, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._q, (max(t, self.t), self._seq, kind, node_id, gen, payload))

    # ------------------------------------------------------------- running
    def step(self) -> bool:
        """Process one event; False when nothing is queued."""
        if not self._q:
            return False
        t, _, kind, node_id, gen, payload = heapq.heappop(self._q)
        self.t = t
        self.events_processed += 1
        if self.events_processed > self.cfg.max_events:
            raise Violation("bounded-run", f"more than {self.cfg.max_events} events: livelock?")
        self._dispatch(kind, node_id, gen, payload)
        self.checker.after_event()
        for feature in self.features:
            feature.after_event()
        return True

    def next_event_ms(self) -> float:
        return self._q[0][0] if self._q else float("inf")

    def run_until(self, predicate, limit_ms: float) -> bool:
        """Step until ``predicate()`` holds (checked after every event) or
        simulated time passes ``limit_ms``; True if it held."""
        while not predicate():
            if self.next_event_ms() > limit_ms:
                self.t = max(self.t, limit_ms)
                return predicate()
            self.step()
        return True

    def run(self) -> "RunResult":
        cfg = self.cfg
        for n in self.nodes.values():
            self.at(self.rng.uniform(0, 300), "start", n.node_id)
        self._plan_faults()
        heal_t = cfg.fault_phase_ms
        self.at(heal_t, "heal")
        self.liveness_bound_ms = self.liveness_bound()
        deadline = heal_t + self.liveness_bound_ms
        converged_at = None
        try:
            self.run_until(lambda: self.t >= heal_t, heal_t)
            while converged_at is None:
                if self.convergence_problem() is None:
                    converged_at = self.t
                    break
                if not self.run_until(lambda: False, min(deadline, self.t + 50)) and self.t >= deadline:
                    break
            if converged_at is None:
                raise Violation("liveness", f"not converged {self.liveness_bound_ms:.0f} ms after faults "
                                f"stopped: {self.convergence_problem()}")
        except Violation as v:
            v.seed = cfg.seed
            v.trace = list(self.trace)
            return RunResult(cfg.seed, False, v, self.t, converged_at, heal_t, self.stats, self.events_processed)
        return RunResult(cfg.seed, True, None, self.t, converged_at, heal_t, self.stats, self.events_processed)

    def liveness_bound(self) -> float:
        """After faults stop, every node is Joined within this (simulated ms).

        A node may still be in its restart delay, then need a fence deadline to
        pass, a dead timeout for its previous incarnation, an election, the
        transition timeout of a batch a hung subsystem blocked, and a join
        through every level and barrier.
        """
        tm = self.timing
        steps = sum(sum(r.barriers) for r in self.registrations)
        bound = (self.cfg.restart_delay_ms[1] + tm.fence_after_ms + 2 * tm.dead_after_ms
                 + tm.transition_timeout_ms + 20 * tm.fast_poll_ms
                 + steps * 6 * tm.fast_poll_ms * max(1, self.cfg.nodes // 8) + 2000)
        for feature in self.features:  # and each feature settles: e.g. every lock request answered
            bound += feature.liveness_extra_ms()
        return bound

    def _dispatch(self, kind: str, node_id: int, gen: int, payload: Any) -> None:
        node = self.nodes.get(node_id)
        if kind == "start":
            self._start(node)
        elif kind == "heal":
            self._heal()
        elif kind == "fault":
            self._fault(payload)
        elif kind == "lateland":
            offset, data, rec, writer = payload
            self.stats["late_writes"] += 1
            self.log(f"n{writer} late write lands (it timed out)")
            self.store.land(offset, data)
            self._landed(self.nodes[writer], rec)
        elif kind == "orphan-watchdog":
            assert node is not None
            if node.orphan is not None and payload == node.orphan_token:
                self.log(f"n{node_id} WATCHDOG fires (its daemon died): host reset")
                self.stats["watchdog_resets"] = self.stats.get("watchdog_resets", 0) + 1
                self.checker.on_orphan_gone(node, node.orphan)
                node.orphan = None
                if node.up:
                    self._crash(node)
        elif node is None or gen != node.gen or not node.up:
            return  # an event for a daemon that has gone
        elif kind == "watchdog":
            # The hardware watchdog is not paused with the host's processes.
            if payload == node.watchdog_token and not node.fenced_done:
                self.log(f"n{node.node_id} WATCHDOG fires: host reset")
                self.stats["watchdog_resets"] = self.stats.get("watchdog_resets", 0) + 1
                node.fenced_done = True
                self.checker.on_fenced(node)
                self._daemon_exit(node, restart=True)
        elif kind == "opdone":
            # The disk does its part on time even while the process is paused;
            # only the process sees the completion late.
            payload = self._io_effect(node, payload)
            if node.paused_until > self.t:
                node.deferred.append(("completion", payload))
            else:
                self._op_done(node, payload)
        elif self._event_owners and kind.partition("-")[0] in self._event_owners:
            self._event_owners[kind.partition("-")[0]].dispatch(node, kind, payload)  # a feature's event
        elif node.paused_until > self.t:
            node.deferred.append((kind, payload))
        elif kind == "completion":
            self._op_done(node, payload)
        elif kind == "fence_timer":
            if node.core is not None and payload == node.fence_timer_local_ms:
                node.core.tick(node.local(self.t))
                self._handle_events(node)
        elif kind == "wake":
            if payload == node.wake_token:
                self._kick(node)
        elif kind == "ack":
            self._ack(node, payload)
        elif kind == "fence_done":
            node.fenced_done = True
            self.checker.on_fenced(node)
            self.log(f"n{node.node_id} fence complete: services stopped")
            self._daemon_exit(node, restart=True)
        elif kind == "resume":
            self._resume(node)
        elif kind == "unhang":
            for s in node.subsystems.values():
                s.hung = False
        else:
            raise AssertionError(kind)

    # ------------------------------------------------------------- lifecycle
    def _start(self, node: SimNode | None) -> None:
        assert node is not None
        node.restart_pending = False
        if node.up:
            return
        if node.cut is not None or self.outage_until > self.t:
            self.at(self.t + 200, "start", node.node_id)  # the daemon cannot read its slot yet
            return
        node.gen += 1
        if node.orphan is not None:
            self._startup_cleanup(node)
        node.up, node.crashed, node.fenced_done = True, False, False
        node.paused_until, node.deferred, node.ops, node.results = 0.0, [], [], []
        node.inflight_write, node.want_down, node.crash_on_write = None, False, False
        incarnation = self.rng.getrandbits(63) | 1
        prev = self.store.read_slot(node.node_id)
        prev_slot = prev if isinstance(prev, SlotRecord) else None
        node.core = NodeCore(node_id=node.node_id, incarnation=incarnation, timing=self.timing,
                             registrations=self.registrations, rng=self.rng.random,
                             now_ms=node.local(self.t), previous_slot=prev_slot)
        node.subsystems = {}
        for reg in self.registrations:
            delay = (0.0, 3.0)
            if "slowsub" in self.cfg.faults and not self.healed and self.rng.random() < 0.15:
                delay = (50.0, 600.0)
            node.subsystems[reg.level] = SubsystemSim(reg.level, reg.name, delay)
        if "hang" in self.cfg.faults and not self.healed and self.rng.random() < 0.08:
            victim = self.rng.choice(list(node.subsystems.values()))
            victim.hung = True
            self.stats["hangs"] += 1
            self.log(f"n{node.node_id} subsystem {victim.name} will hang")
        self.log(f"n{node.node_id} daemon starts, incarnation {incarnation:x}")
        self.checker.on_start(node)
        for feature in self.features:
            feature.on_start(node)
        self._kick(node)

    def _startup_cleanup(self, node: SimNode) -> None:
        """A daemon starting after its predecessor died stops what that one
        managed -- before its first heartbeat and before it opens the
        watchdog (which restarts the countdown)."""
        assert node.orphan is not None
        self.log(f"n{node.node_id} start-up: stops the services of incarnation {node.orphan:x}")
        self.checker.on_orphan_gone(node, node.orphan)
        node.orphan = None

    def _daemon_crash(self, node: SimNode) -> None:
        """The daemon alone dies (SIGKILL, OOM, segfault): its services run
        on, the watchdog is no longer fed and resets the host when it fires."""
        if not node.up or node.core is None or node.core.fenced is not None or node.core.stopped is not None:
            return
        self.stats["daemon_crashes"] += 1
        self.log(f"n{node.node_id} DAEMON CRASH (services keep running)")
        if node.inflight_write is not None:
            offset, data, rec = node.inflight_write
            self._land(node, offset, data, rec)
        node.orphan = node.core.incarnation
        fire_local = node.watchdog_local_ms
        self.checker.on_daemon_crash(node)
        for feature in self.features:
            feature.on_daemon_crash(node)
        self._daemon_exit(node, restart=True)
        node.orphan_token += 1
        self.at(node.real(fire_local), "orphan-watchdog", node.node_id, 0, node.orphan_token)

    def _daemon_exit(self, node: SimNode, restart: bool) -> None:
        for feature in self.features:
            feature.on_exit(node)
        node.up = False
        node.core = None
        node.gen += 1
        if restart and not node.restart_pending:
            node.restart_pending = True
            lo, hi = self.cfg.restart_delay_ms
            self.at(self.t + self.rng.uniform(lo, hi), "start", node.node_id)

    def _crash(self, node: SimNode) -> None:
        if not node.up:
            return
        self.stats["crashes"] += 1
        self.log(f"n{node.node_id} CRASH")
        if node.inflight_write is not None:
            offset, data, rec = node.inflight_write
            sectors = self.store.sectors_of(data)
            r = self.rng.random()
            if r < 0.4 and "lost" in self.cfg.faults:
                self.stats["lost_writes"] += 1
                self.log(f"n{node.node_id} in-flight write lost")
            elif r < 0.7 and sectors > 1 and "torn" in self.cfg.faults:
                k = self.rng.randint(1, sectors - 1)
                self.store.land(offset, data, sectors=k)
                self.stats["torn_writes"] += 1
                self.log(f"n{node.node_id} in-flight write torn after {k}/{sectors} sectors")
            else:
                self._land(node, offset, data, rec)
        for feature in self.features:  # e.g. the DLM's write in flight lands or is lost
            feature.on_crash(node)
        node.crashed = True
        node.fenced_done = True  # the whole host died: its services with it
        self.checker.on_crash(node)
        self._daemon_exit(node, restart=True)

    # ------------------------------------------------------------------ I/O
    def _arm_watchdog(self, node: SimNode) -> None:
        """The daemon feeds the watchdog only while it may still write; the
        watchdog fires ``fence_margin`` after the fence deadline it last saw."""
        core = node.core
        if core is None or core.fenced is not None or core.stopped is not None:
            return
        deadline = core.fence_deadline_ms()
        if deadline != node.fence_timer_local_ms:
            # The daemon's fence timer runs even while an I/O hangs.
            node.fence_timer_local_ms = deadline
            self.at(node.real(deadline) + 0.001, "fence_timer", node.node_id, node.gen, deadline)
        fire_local = deadline + WATCHDOG_FIRE_FRACTION * self.cfg.profile.fence_margin_ms
        if fire_local != node.watchdog_local_ms:
            node.watchdog_local_ms = fire_local
            node.watchdog_token += 1
            self.at(node.real(fire_local), "watchdog", node.node_id, node.gen, node.watchdog_token)

    def _kick(self, node: SimNode) -> None:
        core = node.core
        if core is None:
            return
        self._arm_watchdog(node)
        if node.ops:
            return
        now = node.local(self.t)
        ops = core.poll(now)
        self._handle_events(node)
        if not node.up or node.core is None:
            return
        if ops:
            if core.fenced is not None:
                raise Violation("no-write-after-fence", f"n{node.node_id} produced ops after fencing")
            node.ops, node.results = list(ops), []
            self._issue(node)
            return
        wake = core.wakeup_ms()
        if wake != float("inf"):
            node.wake_token += 1
            self.at(max(self.t, node.real(wake)) + 0.001, "wake", node.node_id, node.gen, node.wake_token)

    def _latency(self) -> float:
        lo, hi = self.cfg.io_latency_ms
        lat = self.rng.uniform(lo, hi)
        if self.slow_io_until > self.t:
            lat = self.rng.uniform(lo, 1.5 * self.timing.io_timeout_ms)
        return lat

    def _issue(self, node: SimNode) -> None:
        op = node.ops[len(node.results)]
        self.stats["ios"] += 1
        start_local = node.local(self.t)
        io_timeout = self.timing.io_timeout_ms
        if node.cut == "hang" or self.outage_until > self.t:
            self.at(self.t + io_timeout, "opdone", node.node_id, node.gen, (op, False, start_local, None, "timeout"))
            return
        if self._on_bad_sector(op):
            self.at(self.t + self.rng.uniform(0.05, 1.0), "opdone", node.node_id, node.gen,
                    (op, False, start_local, None, "EIO (bad sector)"))
            return
        if node.cut == "eio" or (self.eio_until > self.t and self.rng.random() < 0.05):
            if ("landed" in self.cfg.faults and not self.healed and isinstance(op, (WriteSlot, WriteView))
                    and node.core is not None and node.core.can_write(start_local) and self.rng.random() < 0.3):
                # The error came back, yet the write reached the disk.
                offset, data = self._encode(op)
                self.stats["landed_failures"] += 1
                self.log(f"n{node.node_id} write reported failed has landed")
                self._land(node, offset, data, op.record)
            self.at(self.t + self.rng.uniform(0.05, 1.0), "opdone", node.node_id, node.gen,
                    (op, False, start_local, None, "EIO"))
            return
        lat = self._latency()
        if lat > io_timeout:
            if ("late" in self.cfg.faults and not self.healed and isinstance(op, WriteSlot)
                    and node.core is not None and node.core.can_write(start_local) and self.rng.random() < 0.5):
                # Beyond the stated assumption, within the bound the timing
                # rule leaves: io_timeout + fence_margin past the timeout.
                offset, data = self._encode(op)
                slack = io_timeout + self.cfg.profile.fence_margin_ms
                late = self.t + io_timeout + self.rng.uniform(0, 0.9 * slack)
                self.at(late, "lateland", 0, 0, (offset, data, op.record, node.node_id))
            # Our stated assumption: an I/O that times out never lands later.
            self.at(self.t + io_timeout, "opdone", node.node_id, node.gen, (op, False, start_local, None, "timeout"))
            return
        if isinstance(op, (WriteSlot, WriteView)):
            if node.core is None or not node.core.can_write(start_local):
                raise Violation("no-write-after-fence", f"n{node.node_id} issues a write past its fence deadline")
            offset, data = self._encode(op)
            node.inflight_write = (offset, data, op.record)
            if node.crash_on_write and (isinstance(op, WriteView) or node.core is None
                                        or node.core.role is not Role.MASTER):
                node.crash_on_write = False
                self.at(self.t + lat * self.rng.random(), "fault", 0, 0, ("crash-now", node.node_id))
        self.at(self.t + lat, "opdone", node.node_id, node.gen, (op, True, start_local, None, ""))

    def _encode(self, op: WriteSlot | WriteView) -> tuple[int, bytes]:
        if isinstance(op, WriteSlot):
            return self.store.slot_write(op.record)
        return self.store.view_write(op.record, op.copy)

    def _extent(self, op: Any) -> tuple[int, int]:
        lay = self.store.layout
        if isinstance(op, WriteSlot):
            return lay.slot_offset(op.record.node_id), lay.slot_size_bytes
        if isinstance(op, WriteView):
            return lay.view_offset(op.record.node_id, op.copy), lay.view_copy_bytes
        if isinstance(op, ReadSlots):
            return lay.slots_offset, lay.slots_read_bytes
        if isinstance(op, ReadView):
            return lay.view_pair_offset(op.node_id), 2 * lay.view_copy_bytes
        if isinstance(op, ReadViews):
            last = min(op.first + op.count - 1, self.store.nodes_max)
            return lay.view_pair_offset(op.first), (last - op.first + 1) * 2 * lay.view_copy_bytes
        raise AssertionError(op)

    def _on_bad_sector(self, op: Any) -> bool:
        if not self.bad:
            return False
        offset, length = self._extent(op)
        return any(offset < b_off + b_len and b_off < offset + length for b_off, b_len in self.bad)

    def _land(self, node: SimNode, offset: int, data: bytes, rec: Any) -> None:
        self.store.land(offset, data)
        if isinstance(rec, SlotRecord) and "replay" in self.cfg.faults:
            h = self.history.setdefault(rec.node_id, [])
            if not h or self.t - h[-1][0] > 200:
                h.append((self.t, offset, data))
                del h[:-6]
        self._landed(node, rec)

    def _landed(self, node: SimNode, rec: Any) -> None:
        self.checker.on_land(node, rec)
        for feature in self.features:
            feature.on_land(node, rec)

    def _io_effect(self, node: SimNode, payload: Any) -> Any:
        op, ok, start_local, value, error = payload
        if ok:
            if isinstance(op, (WriteSlot, WriteView)):
                assert node.inflight_write is not None
                offset, data, rec = node.inflight_write
                node.inflight_write = None
                self._land(node, offset, data, rec)
            elif isinstance(op, ReadSlots):
                value = self.store.slots_value()
            elif isinstance(op, ReadView):
                value = self.store.view_value(op.node_id)
            elif isinstance(op, ReadViews):
                value = self.store.read_views(op.first, op.count)
        return (op, ok, start_local, value, error)

    def _op_done(self, node: SimNode, payload: Any) -> None:
        op, ok, start_local, value, error = payload
        node.results.append(OpResult(op, ok, start_local, node.local(self.t), value, error))
        if len(node.results) < len(node.ops):
            self._issue(node)
            return
        results, node.ops, node.results = node.results, [], []
        assert node.core is not None
        renewed_before = node.core.last_ok_ms
        node.core.complete(node.local(self.t), results)
        if node.core.last_ok_ms > renewed_before:
            for r in results:
                if isinstance(r.op, WriteSlot) and r.ok:
                    self.checker.on_renewed(node.node_id, r.op.record.incarnation, r.op.record.seq)
        self._handle_events(node)
        if node.up:
            self._kick(node)

    # --------------------------------------------------------------- events
    def _handle_events(self, node: SimNode) -> None:
        core = node.core
        if core is None:
            return
        for ev in core.take_events():
            if isinstance(ev, Notify):
                self.checker.on_deliver(node, ev)
                sub = node.subsystems.get(ev.level)
                if sub is None:
                    raise Violation("notify-unregistered", f"n{node.node_id} notified at level {ev.level}")
                sub.pending = ev.batch_id
                self.log(f"n{node.node_id} {sub.name} notified batch {batch_label(ev.batch_id)}: "
                         + ", ".join(f"n{e.node_id} {e.kind.notification}#{e.barrier}" for e in ev.entries))
                owner = self._level_owners.get(ev.level)
                if owner is not None:  # a feature's subsystem: it acks (unless hung)
                    owner.on_notify(node, ev)
                elif not sub.hung:
                    self.at(self.t + self.rng.uniform(*sub.delay_ms), "ack", node.node_id, node.gen,
                            (ev.level, ev.batch_id))
            elif isinstance(ev, Fenced):
                self.stats["fences"] += 1
                if ev.cause.forced_out:
                    self.stats["forced_out"] += 1
                self.log(f"n{node.node_id} FENCE: {ev.reason}")
                self.checker.on_fence_start(node, ev)
                for feature in self.features:
                    feature.on_fence(node, ev)
                self.at(self.t + self.rng.uniform(0, self.cfg.profile.fence_margin_ms * 0.9), "fence_done",
                        node.node_id, node.gen)
            elif isinstance(ev, MasterChanged):
                self.log(f"n{node.node_id} sees master n{ev.master} of term {ev.term}")
            elif isinstance(ev, StateChanged):
                self.log(f"n{node.node_id} state {ev.old.value} -> {ev.new.value}")
            elif isinstance(ev, ViewAdopted):
                for line in ev.log:  # every line, the steps too: the transcripts show each batch
                    self.log(f"n{node.node_id} [master] {line.text}")
                self.checker.on_adopt(node)
                for feature in self.features:  # e.g. the view decides whose lock entries count
                    feature.on_view(node)
            elif isinstance(ev, Rejected):
                raise Violation("unexpected-rejection", f"n{node.node_id}: {ev.reason}")
            elif isinstance(ev, Stopped):
                self.log(f"n{node.node_id} daemon stops: {ev.reason}")
                node.fenced_done = True  # graceful: everything was stopped top-down
                self.checker.on_stopped(node)
                self._daemon_exit(node, restart=not node.want_down or self.healed)
        if core.role is Role.MASTER and not getattr(node, "_was_master", False):
            self.stats["masters"] += 1
            if core.resumed_from is not None:
                self.checker.on_resume(node, core.resumed_from[1])
        node._was_master = core.role is Role.MASTER  # type: ignore[attr-defined]

    def _ack(self, node: SimNode, payload: Any) -> None:
        level, batch_id = payload
        sub = node.subsystems.get(level)
        if sub is None or sub.hung or sub.pending != batch_id or node.core is None:
            return
        self.checker.on_ack(node, level, batch_id)
        node.core.ack(level, batch_id, node.local(self.t))
        self._kick(node)

    def _resume(self, node: SimNode) -> None:
        if node.paused_until > self.t:
            return
        self.log(f"n{node.node_id} resumes")
        deferred, node.deferred = node.deferred, []
        if node.core is not None:
            node.core.tick(node.local(self.t))
            self._handle_events(node)
        for kind, payload in deferred:
            self.at(self.t, kind, node.node_id, node.gen, payload)
        self._kick(node)

    # --------------------------------------------------------------- faults
    def _plan_faults(self) -> None:
        kinds = [k for k in ("crash", "pause", "cut", "outage", "slowio", "eio", "leave", "corrupt", "replay",
                             "badsector", "daemoncrash") if k in self.cfg.faults]
        if not kinds:
            return
        t = 1000.0
        while True:
            t += self.rng.expovariate(self.cfg.fault_rate_per_s / 1000.0)
            if t >= self.cfg.fault_phase_ms:
                break
            kind = self.rng.choice(kinds)
            if kind == "outage" and self.rng.random() < 0.6:
                continue  # rarer than the rest
            self.at(t, "fault", 0, 0, (kind, self.rng.randint(1, self.cfg.nodes)))

    def _fault(self, payload: Any) -> None:
        if self.healed:
            return
        kind, node_id = payload
        node = self.nodes[node_id]
        if kind == "crash":
            if node.up and self.rng.random() < 0.5 and ("torn" in self.cfg.faults or "lost" in self.cfg.faults):
                node.crash_on_write = True  # crash in the middle of its next write
            else:
                self._crash(node)
        elif kind == "crash-now":
            self._crash(node)
        elif kind == "pause" and node.up and node.paused_until <= self.t:
            long = self.rng.random() < 0.5
            dur = self.rng.uniform(self.timing.dead_after_ms * 1.2, self.timing.dead_after_ms * 3) if long \
                else self.rng.uniform(10, self.timing.fence_after_ms * 0.5)
            node.paused_until = self.t + dur
            self.stats["pauses"] += 1
            self.log(f"n{node_id} PAUSE for {dur:.0f} ms")
            for feature in self.features:
                feature.on_pause(node, node.paused_until)
            self.at(node.paused_until, "resume", node_id, node.gen)
        elif kind == "cut" and node.cut is None:
            node.cut = self.rng.choice(("eio", "hang"))
            dur = self.rng.uniform(100, 4000)
            self.stats["cuts"] += 1
            self.log(f"n{node_id} DISK CUT ({node.cut}) for {dur:.0f} ms")
            self.at(self.t + dur, "fault", 0, 0, ("restore", node_id))
        elif kind == "restore":
            if node.cut is not None:
                self.log(f"n{node_id} disk restored")
            node.cut = None
        elif kind == "outage":
            dur = self.rng.uniform(100, 3000)
            self.outage_until = max(self.outage_until, self.t + dur)
            self.stats["outages"] += 1
            self.log(f"WHOLE-DISK OUTAGE for {dur:.0f} ms")
        elif kind == "slowio":
            self.slow_io_until = max(self.slow_io_until, self.t + self.rng.uniform(200, 2000))
            self.log("slow I/O window")
        elif kind == "eio":
            self.eio_until = max(self.eio_until, self.t + self.rng.uniform(200, 2000))
            self.log("random EIO window")
        elif kind == "corrupt":
            self._corrupt(node_id)
        elif kind == "replay":
            self._replay(node_id)
        elif kind == "badsector" and len(self.bad) < 3:
            self._bad_sector(node_id)
        elif kind == "daemoncrash":
            self._daemon_crash(node)
        elif kind == "leave" and node.up and node.core is not None and node.core.fenced is None:
            self.stats["leaves"] += 1
            self.log(f"n{node_id} graceful LEAVE requested")
            node.want_down = self.rng.random() < 0.5
            node.core.leave(node.local(self.t))
            self._handle_events(node)
            self._kick(node)

    def _master(self) -> SimNode | None:
        for n in self.nodes.values():
            if n.up and n.core is not None and n.core.role is Role.MASTER:
                return n
        return None

    def _junk(self, length: int) -> bytes:
        return bytes(self.rng.getrandbits(8) for _ in range(length))

    def _corrupt(self, node_id: int) -> None:
        """Random bytes over one sector (or over both view copies of the master)."""
        lay = self.store.layout
        self.stats["corruptions"] += 1
        what = self.rng.choice(("slot", "unused-slot", "view", "master-views"))
        sector = self.store.sector_size
        if what == "master-views":
            master = self._master()
            if master is not None:
                node_id = master.node_id
            for copy in (0, 1):
                self.store.land(lay.view_offset(node_id, copy), self._junk(sector))
            self.log(f"CORRUPT: both view copies of n{node_id}")
            return
        if what == "unused-slot":
            node_id = self.cfg.nodes + self.rng.randint(1, UNUSED_SLOTS)
        if what == "view":
            copy = self.rng.randint(0, 1)
            self.store.land(lay.view_offset(node_id, copy), self._junk(sector))
            self.log(f"CORRUPT: view copy {copy} of n{node_id}")
            return
        self.store.land(lay.slot_offset(node_id), self._junk(lay.slot_size_bytes))
        self.log(f"CORRUPT: slot of n{node_id}")

    def _replay(self, node_id: int) -> None:
        """An old, valid record of the node written back (a stale cache, a
        restored snapshot)."""
        old = [h for h in self.history.get(node_id, []) if self.t - h[0] > 300]
        if not old:
            return
        t0, offset, data = self.rng.choice(old)
        self.stats["replays"] += 1
        self.log(f"REPLAY: n{node_id}'s slot as it was at {t0:.1f}")
        self.store.land(offset, data)

    def _bad_sector(self, node_id: int) -> None:
        """A region whose reads and writes fail until the heal: a slot (used
        or not) or a view pair (perhaps the master's)."""
        lay = self.store.layout
        what = self.rng.choice(("slot", "unused-slot", "view-pair", "unused-view-pair", "master-view-pair"))
        if what.startswith("unused"):
            node_id = self.cfg.nodes + self.rng.randint(1, UNUSED_SLOTS)
        elif what == "master-view-pair":
            master = self._master()
            node_id = master.node_id if master is not None else node_id
        if what.endswith("slot"):
            extent = (lay.slot_offset(node_id), lay.slot_size_bytes)
        else:
            extent = (lay.view_pair_offset(node_id), 2 * lay.view_copy_bytes)
        self.bad.append(extent)
        self.stats["bad_sectors"] += 1
        forever = what == "unused-view-pair"
        if forever:
            # Nobody ever writes there, so nothing remaps it: it stays bad,
            # and the cluster must converge (and take over) around it.
            self.bad_forever.append(extent)
        self.log(f"BAD SECTOR: {what.replace('-', ' ')} of n{node_id} fails every I/O "
                 + ("for good" if forever else "until the heal"))

    def _heal(self) -> None:
        self.healed = True
        self.bad = list(self.bad_forever)
        self.log("HEAL: faults stop; liveness phase")
        for feature in self.features:
            feature.on_heal()
        self.outage_until = self.slow_io_until = self.eio_until = 0.0
        for node in self.nodes.values():
            node.cut = None
            if node.up:
                for s in node.subsystems.values():
                    s.delay_ms = (0.0, 3.0)
                    if s.hung:
                        s.hung = False
                        if s.pending:
                            self.at(self.t, "ack", node.node_id, node.gen, (s.level, s.pending))
            if node.paused_until > self.t:
                node.paused_until = self.t
                self._resume(node)  # in this step: the checker runs right after it
            if not node.up and not node.restart_pending:
                node.restart_pending = True
                self.at(self.t + self.rng.uniform(*self.cfg.restart_delay_ms), "start", node.node_id)

    # ------------------------------------------------------------ liveness
    def convergence_problem(self, features: bool = True) -> str | None:
        """None when every node is Joined in one view with one acting master
        and (with ``features``) every feature has settled; else the first
        problem found."""
        views = set()
        masters = 0
        for node in self.nodes.values():
            core = node.core
            if not node.up or core is None:
                return f"n{node.node_id} is not running"
            if core.state is not NodeState.JOINED:
                return f"n{node.node_id} is {core.state.value}"
            if core.view is None:
                return f"n{node.node_id} has no view"
            if core.view.batches:
                return f"n{node.node_id}'s view has batches outstanding"
            views.add((core.view.term, core.view.epoch))
            if core.is_acting_master(node.local(self.t)):
                masters += 1
        if len(views) != 1:
            return f"nodes hold different views {sorted(views)}"
        if masters != 1:
            return f"{masters} acting masters"
        for feature in self.features if features else ():
            problem = feature.quiescence_problem()
            if problem is not None:
                return problem
        return None


@dataclass
class RunResult:
    seed: int
    ok: bool
    violation: Violation | None
    end_ms: float
    converged_ms: float | None
    heal_ms: float
    stats: dict
    events: int

    @property
    def converge_after_heal_ms(self) -> float | None:
        return None if self.converged_ms is None else self.converged_ms - self.heal_ms
