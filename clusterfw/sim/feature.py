"""Simulator features: a subsystem's simulation, plugged into the world.

How this works
--------------
The world (world.py) simulates the membership: nodes, the disk, clocks,
faults and the membership invariants.  Everything a subsystem adds -- the
DLM today (dlm_sim.py) -- is a ``Feature``: the world holds a list of them
and calls each one at fixed points of a run, in the order they are listed.
Every hook does nothing by default; a feature overrides what it needs:

| hook                         | called when                                          |
|------------------------------|------------------------------------------------------|
| ``on_start(node)``           | a daemon started (a new incarnation: also a restart) |
| ``on_pause(node, until)``    | the host's processes stop until simulated ``until``  |
| ``on_crash(node)``           | the host dies; its write in flight lands or not     |
| ``on_daemon_crash(node)``    | the daemon alone dies; its services keep running     |
| ``on_exit(node)``            | the daemon is gone (after any of the above, a fence, |
|                              | a watchdog reset or a graceful stop)                 |
| ``on_notify(node, ev)``      | a batch is delivered at the feature's ``level``      |
| ``on_fence(node, ev)``       | the node fences (``Fenced``)                         |
| ``on_view(node)``            | the node adopted a view (``node.core.view``)         |
| ``on_land(node, rec)``       | a membership record landed on the disk               |
| ``on_heal()``                | the faults stop (default: records ``heal_ms``)       |
| ``dispatch(node, kind, p)``  | an event ``<name>-...`` the feature queued           |
| ``after_event()``            | after every event: the feature's invariants          |
| ``liveness_extra_ms()``      | the time it adds to the liveness bound               |
| ``quiescence_problem()``     | liveness: None once it has settled after the heal    |

A feature that sets ``level`` owns the notifications at that level: the
world does not ack them for it; the feature acks by queuing the world's
``"ack"`` event with ``(level, batch_id)`` (or never, when its subsystem
hangs).  Its own timers, I/O completions and clients are events whose kind
starts with its ``name`` and a dash (``world.at(t, "dlm-wake", ...)``); the
world hands them to ``dispatch`` only while the node's daemon of that
generation runs, and defers them while the node is paused when the feature
puts them in ``node.deferred``.  ``counters`` are the keys it adds to the
run summary's ``stats`` (set to 0 when the run starts).

Invariants: a feature draws its randomness from its own ``random.Random``
(seeded from the run's seed), never from the world's, so a run without it
replays exactly as before; it reads and writes the disk only through
``world.store`` (the daemon's encoder and placement) and raises
``Violation`` (checker.py) for a broken invariant.

``FeatureWorld`` is what a feature may use of the world; ``World``
satisfies it, so features never import world.py (setup.cfg's ``layers``
contract keeps the simulator free of import cycles).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .checker import Checker, Violation
from .model import SimConfig, SimNode, WorldState
from .store import SimStore

if TYPE_CHECKING:
    from ..core.node import Fenced, Notify


class FeatureWorld(WorldState, Protocol):
    """What a feature may use of the world, beyond ``WorldState``."""

    @property
    def store(self) -> SimStore: ...

    @property
    def checker(self) -> Checker: ...

    @property
    def stats(self) -> dict[str, int]: ...

    @property
    def healed(self) -> bool: ...

    @property
    def outage_until(self) -> float: ...  # every node's disk fails until then

    @property
    def eio_until(self) -> float: ...  # random EIO until then

    @property
    def slow_io_until(self) -> float: ...  # slow I/O until then

    def at(self, t: float, kind: str, node_id: int = 0, gen: int = 0, payload: Any = None) -> None: ...

    def log(self, msg: str) -> None: ...

    def liveness_bound(self) -> float: ...

    def convergence_problem(self, features: bool = True) -> str | None: ...


class Feature:
    """One subsystem's simulation; see the module doc for the hooks."""

    name: ClassVar[str] = ""
    """Switches the feature on (``clusterfw sim --<name>``) and prefixes its events."""
    counters: ClassVar[tuple[str, ...]] = ()
    level: int | None = None
    """The level whose notifications it handles (and acks), if any."""
    requires: ClassVar[tuple[str, ...]] = ()
    """Features it needs: on whenever this one is (the services need the DLM)."""
    adds_level: ClassVar[int | None] = None
    """A level registered on every node only in runs with this feature
    (the services' 50), so that runs without it stay what they were."""

    def __init__(self, world: FeatureWorld) -> None:
        self.w = world
        self.heal_ms: float | None = None  # when the faults stopped (``on_heal``)

    @classmethod
    def wanted(cls, cfg: SimConfig) -> bool:
        """Whether a run with ``cfg`` simulates this feature."""
        return cls.name in cfg.faults

    # -- a node's daemon --------------------------------------------------------
    def on_start(self, node: SimNode) -> None:
        pass

    def on_pause(self, node: SimNode, until_ms: float) -> None:
        pass

    def on_crash(self, node: SimNode) -> None:
        pass

    def on_daemon_crash(self, node: SimNode) -> None:
        pass

    def on_exit(self, node: SimNode) -> None:
        pass

    # -- the membership's events --------------------------------------------------
    def on_notify(self, node: SimNode, ev: "Notify") -> None:
        pass

    def on_fence(self, node: SimNode, ev: "Fenced") -> None:
        pass

    def on_view(self, node: SimNode) -> None:
        pass

    def on_land(self, node: SimNode, rec: Any) -> None:
        pass

    def on_heal(self) -> None:
        self.heal_ms = self.w.t

    def dispatch(self, node: SimNode, kind: str, payload: Any) -> None:
        raise AssertionError(f"{type(self).__name__} queued event {kind!r} but does not handle it")

    # -- checks ------------------------------------------------------------------
    def after_event(self) -> None:
        pass

    def liveness_extra_ms(self) -> float:
        return 0.0

    def quiescence_problem(self) -> str | None:
        return None

    def check_settled(self, invariant: str, margin_ms: float) -> None:
        """For ``after_event``: once the liveness bound less ``margin_ms``
        (a part of ``liveness_extra_ms``, so this fires just before the
        world's own deadline) has passed since the heal, with the membership
        converged, raise ``invariant`` if the feature has not settled."""
        heal = self.heal_ms
        if heal is None:
            return
        bound = heal + getattr(self.w, "liveness_bound_ms", self.w.liveness_bound()) - margin_ms
        if self.w.t < bound:
            return
        if self.w.convergence_problem(features=False) is not None:
            return  # the membership did not converge: the world reports that
        problem = self.quiescence_problem()
        if problem is not None:
            raise Violation(invariant, f"{self.w.t - heal:.0f} ms after faults stopped "
                            f"(bound {bound - heal:.0f} ms): {problem}")
