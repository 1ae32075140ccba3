"""The simulator's plain data: its configuration, a simulated node, a test
subsystem, and ``WorldState`` -- what the checker may read of the world.

How this works
--------------
These types sit at the bottom of ``clusterfw/sim`` so that everything above
(the disk, the checker, the features, the world) can name them without
importing the world: the world imports its parts, never the other way round
(an import-linter ``layers`` contract in setup.cfg keeps it so).
``WorldState`` is a ``Protocol``: ``World`` satisfies it without naming it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core import timing as timing_mod
from ..core.model import Registration, Timing
from ..core.node import NodeCore

FAULTS = ("crash", "pause", "cut", "outage", "torn", "lost", "slowio", "eio", "drift", "hang",
          "slowsub", "leave", "corrupt", "replay", "badsector", "late", "landed", "daemoncrash")


@dataclass
class SimConfig:
    nodes: int = 5
    seed: int = 1
    faults: frozenset[str] = frozenset(FAULTS)
    fault_phase_ms: float = 20_000
    profile: timing_mod.Profile = field(default_factory=lambda: timing_mod.Profile(transition_timeout_ms=0))
    sector_size: int = 512
    io_latency_ms: tuple[float, float] = (0.2, 2.0)
    fault_rate_per_s: float = 0.6  # mean faults started per simulated second
    trace_lines: int = 4000
    registrations: tuple[Registration, ...] | None = None  # default: random barriers per seed
    restart_delay_ms: tuple[float, float] = (300, 2500)
    max_events: int = 3_000_000
    dlm: bool = False  # run the DLM and lock clients on every node (dlm_sim.py)
    services: bool = False  # run the registration & launch service on every node (services_sim.py; needs the DLM)


@dataclass
class SubsystemSim:
    level: int
    name: str
    delay_ms: tuple[float, float] = (0.0, 3.0)
    hung: bool = False
    pending: int = 0  # batch id being processed


@dataclass
class SimNode:
    node_id: int
    rate: float = 1.0
    offset_ms: float = 0.0
    gen: int = 0
    core: NodeCore | None = None
    up: bool = False
    crashed: bool = False
    fenced_done: bool = True  # services are down (true while no daemon has started them)
    paused_until: float = 0.0
    cut: str | None = None  # None | "eio" | "hang"
    ops: list = field(default_factory=list)
    results: list = field(default_factory=list)
    inflight_write: tuple[int, bytes, Any] | None = None  # (offset, data, record)
    deferred: list = field(default_factory=list)
    subsystems: dict[int, SubsystemSim] = field(default_factory=dict)
    wake_token: int = 0
    watchdog_token: int = 0
    watchdog_local_ms: float = -1.0
    fence_timer_local_ms: float = -1.0
    restart_pending: bool = False
    crash_on_write: bool = False
    want_down: bool = False  # left gracefully: restart later only if the leave fault plans it
    orphan: int | None = None  # incarnation whose services outlived its daemon (daemoncrash)
    orphan_token: int = 0

    def local(self, t: float) -> float:
        return self.offset_ms + self.rate * t

    def real(self, local_ms: float) -> float:
        return (local_ms - self.offset_ms) / self.rate


class WorldState(Protocol):
    """What the checker reads of the world (``World`` has all of it)."""

    @property
    def cfg(self) -> SimConfig: ...

    @property
    def t(self) -> float: ...  # simulated real time, in ms

    @property
    def timing(self) -> Timing: ...

    @property
    def nodes(self) -> dict[int, SimNode]: ...
