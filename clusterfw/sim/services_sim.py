"""The registration & launch service in the simulator: on every node a
model of the daemon's services subsystem (``subsystems/services/service.py``)
runs the pure core (``core/services.py``) against the simulated disk, the
simulated DLM's lock and a simulated launcher, and a checker holds the
services' invariants on what *actually* runs.  Switched on by
``SimConfig(services=True)`` or ``services`` in the fault list (``clusterfw
sim --services``); it needs the DLM, which is then on too.  Off by default,
and then nothing here runs and no level 50 is registered.

How this works
--------------
``ServicesSim`` is a ``Feature`` (feature.py) at level 50.  Per run it draws
a handful of service definitions from its own random stream (``_definitions``:
ordered and unordered preferences, free and costly transfer, a parent/child
group of depth 2 or 3, ``placement_policy = "every"``, maturity, notify and
recovery commands, a manual service, a service whose start always fails on
one node); an administrator (``_Admin``) applies them and, while the faults
run, moves, stops and starts, freezes and unfreezes services and puts nodes
in maintenance and out again, retrying each command until a round took it.

Each daemon (``_Daemon``) does what ``ServicesService`` does, with the same
pure functions for every decision (``cluster_from_view``, ``local_work``,
``round_wanted``, ``round_maker``, ``run_command``, ``reconcile``):

* a *cycle* every ``POLL_FAST_S`` / ``POLL_IDLE_S``: read the newest registry
  copy (one simulated I/O), ack the level-50 batches it holds, hand its own
  entries to the launcher, compare what runs with the registry once a
  second, and run a round if it has a report or a command, or if it is the
  lowest-id node that is up and ``decide`` would change something (any node
  after ``TAKEOVER_S``);
* a *round*: the DLM lock ``clusterfw.registry`` EXCLUSIVE through the
  simulated DLM (``DlmSim.request_lock``: the real ``DlmCore`` and its
  bakery on the simulated lock area, checked by the DLM's own invariants),
  a read of both copies, the token check, reports, commands, ``decide``,
  ``check``, the validity check (the lock is vouched for until the node's
  fence deadline, as the daemon's DLM says) and one write of the next
  generation into the copy ``registry_codec.next_copy`` names, through
  ``ClusterDisk.registry_bytes``; then the release;
* its own graceful leave is acked only when nothing runs there any more;
  joins, other leaves and forced leaves are acked after the next read.

The registry's I/O sees the world's faults: a cut node's disk, whole-disk
outages, EIO and slow-I/O windows; a crash (``crash``) or daemon crash
(``daemoncrash``) in the middle of a registry write lands it whole, only its
first sectors (``torn``) or not at all (``lost``); a write reported failed
may have landed (``landed``); a write that timed out may land later
(``late``, within ``io_timeout + fence_margin`` past the timeout, the bound
the world uses for slot writes); random bytes over a sector of the copy
that does not hold the newest generation (``corrupt``) and an old copy's
bytes written back there (``replay``).  Damage to the copy holding the
newest generation is not injected: the two-copy rule does not claim to
survive it.  A late landing happens at the first event at or after its
time (``after_event``), since a feature's events belong to one daemon.

The launcher (``_Launcher``) is per host and outlives its daemon: a start,
stop, notify or recovery takes simulated time; a start fails on the node
the definitions name and now and then at random while the faults run; a
started service may die by itself (never a parent).  A fence kills
everything at its instant (the launcher's ``kill_all`` is the fence's first
step), so does a host crash, a watchdog reset and the daemon's exit; a
daemon-only crash leaves everything running (jobs in flight finish on
their own, unreported), until the world says that incarnation is down:
the next daemon's start-up clean-up or the watchdog reset kills it then.

Invariants (checked after every event; ``Violation`` names):

| name                  | what it means                                              |
|-----------------------|------------------------------------------------------------|
| one-owner             | a ``one`` service never has live processes on two nodes    |
|                       | (starting, running or stopping), all of them on nodes whose|
|                       | daemon runs                                                |
| fence-before-recovery | a service is never started (or recovered) on a node while  |
|                       | a node that was forced out, fenced or whose daemon crashed |
|                       | still runs it: it counts as running until its kill instant |
| allowed               | never a live process on a node outside allowable minus     |
|                       | disallowable (children: their root's)                      |
| with-parent           | never a child's process where its parent's does not run    |
| registry-generation   | no generation lands twice with different contents          |
| registry-whole        | every copy a reader accepts is exactly a document a writer |
|                       | wrote whole with that generation and token                 |
| registry-rollback     | the newest valid generation on the disk never goes below   |
|                       | one that landed whole                                      |
| registry-rules        | a round's registry passes ``core.services.check`` and its  |
|                       | ``report``/``decide`` make only legal moves                |
| services-liveness     | after the faults stop, within the bound: every command     |
|                       | done, every daemon read the newest generation, nothing in  |
|                       | flight, no round would change anything, every wanted       |
|                       | service with a candidate node registered and actually      |
|                       | running where the registry says, and nothing else running  |

All randomness comes from ``random.Random(seed ^ SERVICES_RNG_SALT)``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..core import services as core
from ..core.dlm import Denied, Granted, LockMode, Revoked
from ..core.model import Kind, NodeState
from ..core.svcdef import AutoRegister, Placement, PreferenceOrder, ServiceDef, TransferCost
from ..ondisk import registry_codec
from ..ondisk.registry_codec import Damaged, RegistryCopy
from ..subsystems.services import service as daemon
from .checker import Violation
from .dlm_sim import DlmSim
from .feature import Feature, FeatureWorld
from .model import SimConfig, SimNode
from .store import node_name

if TYPE_CHECKING:
    from ..core.node import Fenced, Notify

SERVICES_RNG_SALT = 0x5E41_CE55_5E41_CE55
LEVEL = core.SERVICES_LEVEL
POLL_FAST_MS = daemon.POLL_FAST_S * 1000
POLL_IDLE_MS = daemon.POLL_IDLE_S * 1000
FAST_AFTER_CHANGE_MS = daemon.FAST_AFTER_CHANGE_S * 1000
TAKEOVER_MS = daemon.TAKEOVER_S * 1000
RECONCILE_MS = daemon.RECONCILE_S * 1000
CYCLE_ERROR_MS = 200.0  # the daemon's loop sleeps this long after a failed cycle
START_MS = (5.0, 250.0)
STOP_MS = (5.0, 200.0)
COMMAND_MS = (2.0, 120.0)  # notify, recovery
START_FAIL_PROBABILITY = 0.03  # a start fails at random (while the faults run)
RUNTIME_FAIL_PROBABILITY = 0.08  # a started service dies by itself later (while the faults run)
RUNTIME_FAIL_AFTER_MS = (300.0, 5000.0)
CRASH_IN_WRITE_PROBABILITY = 0.03  # per registry write: the host (or the daemon alone) dies during it
DAMAGE_PROBABILITY = 0.01  # per cycle read: damage to the copy that does not hold the newest
FAILURE_TIMEOUT_S = 6.0  # the failure_timeout of most services: marks expire within the run
MATURITY_TIME_S = 3.0
FAILBACK_DELAY_S = (1.0, 3.0)
WALL_EPOCH_MS = 1_750_000_000_000  # the nodes' wall clocks (NTP-disciplined: a small skew each)
WALL_SKEW_MS = 25.0
ADMIN_RESEND_MS = 3000.0  # a command without a reply is given to a daemon again
ADMIN_RETRY_MS = 300.0
ADMIN_PAUSE_MS = (1000.0, 4000.0)  # between a command and its undoing (start after stop, ...)
LIVENESS_MARGIN_MS = 200.0


def _definitions(rng: random.Random, names: list[str]) -> tuple[dict[str, ServiceDef], set[tuple[str, str]]]:
    """A run's services, and the (service, node) pairs whose start always fails."""
    k = len(names)
    order = list(names)
    rng.shuffle(order)

    def p(i: int) -> str:
        return order[i % k]

    defs: list[ServiceDef] = [
        ServiceDef("web", preferences=(p(0), p(1)), transfer_cost=TransferCost.FREE,
                   failback_delay_s=round(rng.uniform(*FAILBACK_DELAY_S), 1), start_command=("web",),
                   notify_command=("web-notify",), failure_threshold=2, failure_timeout_s=FAILURE_TIMEOUT_S),
        ServiceDef("db", preferences=(p(1), p(2)), preference_order=PreferenceOrder.UNORDERED,
                   disallowable_nodes=(p(k - 1),) if k >= 4 else (),
                   maturity_count=min(2, k) if rng.random() < 0.5 else 0, maturity_time_s=MATURITY_TIME_S,
                   start_command=("db",), recovery_command=("db-recover",), failure_timeout_s=FAILURE_TIMEOUT_S),
        ServiceDef("app", preferences=(p(2),), start_command=("app",), failure_timeout_s=FAILURE_TIMEOUT_S),
        ServiceDef("app-cfg", parent="app", start_command=("app-cfg",), failure_timeout_s=FAILURE_TIMEOUT_S),
        ServiceDef("agent", placement_policy=Placement.EVERY,
                   allowable_nodes=tuple(sorted(rng.sample(names, max(2, k - 1)))), start_command=("agent",),
                   failure_timeout_s=FAILURE_TIMEOUT_S),
        ServiceDef("flaky", preferences=(p(0), p(1)), start_command=("flaky",)),
        ServiceDef("report", auto_register=AutoRegister.MANUAL, allowable_nodes=tuple(sorted({p(1), p(2)})),
                   start_command=("report",), failure_timeout_s=FAILURE_TIMEOUT_S),
    ]
    if rng.random() < 0.6:  # a group of depth 3
        defs.append(ServiceDef("app-worker", parent="app-cfg", start_command=("app-worker",),
                               failure_timeout_s=FAILURE_TIMEOUT_S))
    failing = {("flaky", p(0))}
    if k >= 3 and rng.random() < 0.5:
        failing.add(("app-cfg", p(3)))  # a child that cannot start there: the group moves
    return {d.name: d for d in defs}, failing


@dataclass
class _Proc:
    service: str
    state: str  # starting | running | stopping
    since_ms: float
    token: int


@dataclass
class _Job:
    job_id: int
    service: str
    action: core.Action
    ok: bool
    detail: str
    stray: bool = False  # a stray copy's stop (reconcile): nothing is reported


@dataclass
class _Launcher:
    """One host's launcher: what runs there, whichever daemon started it."""

    node_id: int
    procs: dict[str, _Proc] = field(default_factory=dict)
    commands: dict[str, core.Action] = field(default_factory=dict)  # notify/recovery running
    jobs: dict[int, _Job] = field(default_factory=dict)
    orphan: int | None = None  # the incarnation whose daemon crashed, its services still running

    def active(self, service: str) -> bool:
        return service in self.procs


@dataclass
class _Pending:
    op: str
    args: dict[str, Any]
    reply: Callable[[dict[str, Any]], None]


@dataclass
class _Io:
    kind: str  # read | round-read | write
    seq: int
    write: tuple[int, bytes, int, int, bytes] | None = None  # offset, data, generation, token, JSON text


@dataclass
class _Round:
    reports: list[tuple[str, core.Outcome, int]]
    pending: list[_Pending]
    reg: core.Registry | None = None
    generation: int = 0
    answers: list[tuple[_Pending, dict[str, Any]]] = field(default_factory=list)


@dataclass
class _Daemon:
    node_id: int
    name: str
    gen: int
    incarnation: int
    view: Any = None
    gone: set[str] = field(default_factory=set)
    acks: list[int] = field(default_factory=list)
    leave_batch: int = 0
    reg: core.Registry = field(default_factory=core.Registry)
    gen_seen: int = -1
    max_gen_seen: int = 0
    read_once: bool = False
    reports: list[tuple[str, core.Outcome, int]] = field(default_factory=list)
    pending: list[_Pending] = field(default_factory=list)
    inflight: dict[str, core.Action] = field(default_factory=dict)
    fast_until: float = 0.0
    undecided_since: float | None = None
    last_reconcile: float = float("-inf")
    was_frozen: set[str] = field(default_factory=set)
    fenced: bool = False
    busy: bool = False  # a cycle is under way
    kicked: bool = False
    cycle_token: int = 0
    io: _Io | None = None
    io_seq: int = 0
    lock_req: int | None = None
    token: int = 0
    revoked: bool = False
    round: _Round | None = None


@dataclass
class _AdminCmd:
    op: str
    name: str
    due: float
    to: str = ""
    then: str = ""  # the command that undoes this one, issued after it was taken
    optional: bool = False  # dropped when refused (a move to a node that is not a candidate)
    sent: tuple[int, int] | None = None  # (node, daemon generation) it was given to
    sent_t: float = 0.0
    done: bool = False


class ServicesSim(Feature):
    name = "services"
    requires = (DlmSim.name,)
    adds_level = LEVEL
    counters = ("svc_rounds", "svc_writes", "svc_round_failures", "svc_starts", "svc_start_failures", "svc_stops",
                "svc_notifies", "svc_recoveries", "svc_runtime_failures", "svc_killed", "svc_orphans_killed",
                "svc_gone", "svc_strays_stopped", "svc_commands", "svc_ios", "svc_torn_writes", "svc_lost_writes",
                "svc_late_writes", "svc_landed_failures", "svc_corrupted", "svc_replays")

    def __init__(self, world: FeatureWorld) -> None:
        super().__init__(world)
        self.level = LEVEL
        self.rng = random.Random(world.cfg.seed ^ SERVICES_RNG_SALT)
        ids = sorted(world.nodes)
        self.names = {i: node_name(i) for i in ids}
        self.ids = {name: i for i, name in self.names.items()}
        self.defs, self.failing = _definitions(self.rng, [self.names[i] for i in ids])
        self.skew = {i: self.rng.uniform(-WALL_SKEW_MS, WALL_SKEW_MS) for i in ids}
        self.loads = {self.names[i]: round(self.rng.uniform(0.0, 1.5), 3) for i in ids}
        self.parents = {d.parent for d in self.defs.values() if d.parent}
        self.launchers = {i: _Launcher(i) for i in ids}
        self.daemons: dict[int, _Daemon] = {}
        self.admin = _Admin(self)
        self.dirty = False  # what runs changed: check the invariants
        self.next_job = 1
        self.next_token = 1
        self.landed_gen: dict[int, tuple[int, bytes]] = {}  # generation -> (token, JSON text) that landed
        self.max_whole_gen = 0
        self.late: list[tuple[float, tuple[int, bytes, int, int, bytes], int]] = []
        self.history: list[tuple[int, bytes, int]] = []  # (offset, bytes, generation) of whole writes, for replay
        self._verified: dict[int, RegistryCopy] = {}
        io_max = world.cfg.io_latency_ms[1]
        depth = 1 + max(self._depth(n) for n in self.defs)
        # After the membership converged: the commands left (each resent at
        # most once), a failure mark expiring, maturity, the failback delay,
        # the takeover of an idle round, and a few transfers of the deepest
        # group, each a stop and a start per level with a cycle and a round.
        step = START_MS[1] + STOP_MS[1] + 2 * POLL_IDLE_MS + 4 * io_max + COMMAND_MS[1]
        self.quiet_ms = (2 * ADMIN_RESEND_MS + ADMIN_PAUSE_MS[1] + FAILURE_TIMEOUT_S * 1000 + MATURITY_TIME_S * 1000
                         + FAILBACK_DELAY_S[1] * 1000 + TAKEOVER_MS + RECONCILE_MS + 4 * depth * step + 2000)

    @classmethod
    def wanted(cls, cfg: SimConfig) -> bool:
        return cfg.services or cls.name in cfg.faults

    @property
    def dlm(self) -> DlmSim:
        feature = self.w.checker.features.get(DlmSim.name)
        assert isinstance(feature, DlmSim), "the services feature runs with the DLM's"
        return feature

    def _depth(self, name: str) -> int:
        d = self.defs[name]
        return 0 if not d.parent else 1 + self._depth(d.parent)

    def _root(self, name: str) -> ServiceDef:
        d = self.defs[name]
        while d.parent:
            d = self.defs[d.parent]
        return d

    def _wall(self, node_id: int) -> int:
        return int(WALL_EPOCH_MS + self.w.t + self.skew[node_id])

    def _daemon(self, node: SimNode) -> _Daemon | None:
        d = self.daemons.get(node.node_id)
        return d if d is not None and d.gen == node.gen and node.up else None

    def _cluster(self, d: _Daemon) -> core.Cluster:
        return core.cluster_from_view(d.view, self.names, d.gone, self._wall(d.node_id), (d.name, d.incarnation))

    # ------------------------------------------------------------ hooks
    def on_start(self, node: SimNode) -> None:
        self._reap_orphans()
        core_ = node.core
        assert core_ is not None
        d = _Daemon(node.node_id, self.names[node.node_id], node.gen, core_.incarnation)
        self.daemons[node.node_id] = d
        self._schedule_cycle(node, d, self.rng.uniform(1.0, 20.0))

    def on_daemon_crash(self, node: SimNode) -> None:
        d = self._daemon(node)
        launcher = self.launchers[node.node_id]
        if d is not None and d.io is not None and d.io.write is not None:
            self._land(d.io.write, node.node_id)  # the daemon died; the kernel completes its write
            d.io = None
        for job in list(launcher.jobs.values()):  # they finish on their own, and nobody hears of it
            self._finish_job(launcher, job, orphaned=True)
        launcher.jobs.clear()
        if d is not None and (launcher.procs or launcher.commands):
            launcher.orphan = d.incarnation
            self.w.log(f"n{node.node_id} services: the daemon died; still running: "
                       + ", ".join(sorted(launcher.procs) + [f"{a.value} {s}" for s, a in launcher.commands.items()]))

    def on_crash(self, node: SimNode) -> None:
        d = self._daemon(node)
        if d is not None and d.io is not None and d.io.write is not None:
            write, d.io = d.io.write, None
            offset, data = write[0], write[1]
            sectors = self.w.store.sectors_of(data)
            r = self.rng.random()
            if r < 0.4 and "lost" in self.w.cfg.faults:
                self.w.stats["svc_lost_writes"] += 1
                self.w.log(f"n{node.node_id} services: registry write of generation {write[2]} lost in the crash")
            elif r < 0.8 and sectors > 1 and "torn" in self.w.cfg.faults:
                k = self.rng.randint(1, sectors - 1)
                self.w.stats["svc_torn_writes"] += 1
                self.w.log(f"n{node.node_id} services: registry write of generation {write[2]} torn after "
                           f"{k}/{sectors} sectors")
                self._land(write, node.node_id, sectors=k)
            else:
                self._land(write, node.node_id)
        self._kill_all(node.node_id, "the host crashed")

    def on_fence(self, node: SimNode, ev: "Fenced") -> None:
        d = self._daemon(node)
        if d is not None:
            d.fenced = True
        self._kill_all(node.node_id, f"fence ({ev.reason}): SIGKILL")

    def on_exit(self, node: SimNode) -> None:
        self.daemons.pop(node.node_id, None)
        if self.launchers[node.node_id].orphan is None:
            self._kill_all(node.node_id, "the daemon is gone (host reset, fence done or stopped)")

    def on_view(self, node: SimNode) -> None:
        d = self._daemon(node)
        if d is None or node.core is None or node.core.view is None:
            return
        d.view = view = node.core.view
        forced = {self.names.get(m.node_id, "") for m in view.members if m.state is NodeState.FORCED_LEAVING}
        d.gone &= forced
        self._changed(node, d)

    def on_notify(self, node: SimNode, ev: "Notify") -> None:
        d = self._daemon(node)
        if d is None:
            return
        d.gone |= {self.names.get(e.node_id, "") for e in ev.entries if e.kind is Kind.FORCED}
        if any(e.kind is Kind.LEAVE and e.node_id == node.node_id for e in ev.entries):
            d.leave_batch = ev.batch_id  # acked once nothing runs here any more
        else:
            d.acks.append(ev.batch_id)
        self._changed(node, d)

    def liveness_extra_ms(self) -> float:
        return self.quiet_ms + LIVENESS_MARGIN_MS

    def dispatch(self, node: SimNode, kind: str, payload: Any) -> None:
        d = self._daemon(node)
        if d is None:
            return
        if kind == "services-io":
            payload = self._io_effect(node, d, payload)  # the disk does its part on time
            kind = "services-iodone"
        if node.paused_until > self.w.t:
            node.deferred.append((kind, payload))
            return
        if kind == "services-iodone":
            self._io_done(node, d, payload)
        elif kind == "services-cycle":
            if payload == d.cycle_token and not d.busy:
                self._cycle(node, d)
        elif kind == "services-lock":
            self._lock_event(node, d, payload)
        elif kind == "services-job":
            self._job_done(node, d, payload)
        elif kind == "services-die":
            self._dies(node, d, payload)
        else:
            raise AssertionError(kind)

    def after_event(self) -> None:
        self._reap_orphans()
        while self.late and self.late[0][0] <= self.w.t:
            _due, write, writer = self.late.pop(0)
            self.w.stats["svc_late_writes"] += 1
            self.w.log(f"n{writer} services: registry write of generation {write[2]} lands late (it timed out)")
            self._land(write, writer)
        if self.dirty:
            self.dirty = False
            self._check_actual()
        self.check_settled("services-liveness", LIVENESS_MARGIN_MS)

    # ------------------------------------------------------------ the daemon's loop
    def _schedule_cycle(self, node: SimNode, d: _Daemon, delay_ms: float) -> None:
        d.cycle_token += 1
        self.w.at(self.w.t + delay_ms, "services-cycle", node.node_id, node.gen, d.cycle_token)

    def _changed(self, node: SimNode, d: _Daemon) -> None:
        """A view or a batch came in: the daemon's loop wakes up."""
        d.fast_until = node.local(self.w.t) + FAST_AFTER_CHANGE_MS
        self._kick(node, d)

    def _kick(self, node: SimNode, d: _Daemon) -> None:
        if d.busy:
            d.kicked = True
        elif not d.fenced:
            self._schedule_cycle(node, d, 0.05)

    def _end_cycle(self, node: SimNode, d: _Daemon, failed: str = "") -> None:
        d.busy = False
        if d.fenced:
            return
        if failed:
            self.w.stats["svc_round_failures"] += 1
            self.w.log(f"n{node.node_id} services: {failed}")
        fast = node.local(self.w.t) < d.fast_until or bool(d.inflight) or bool(d.reports)
        delay = 0.05 if d.kicked else (POLL_FAST_MS if fast else POLL_IDLE_MS)
        d.kicked = False
        self._schedule_cycle(node, d, delay + (CYCLE_ERROR_MS if failed else 0.0))

    def _cycle(self, node: SimNode, d: _Daemon) -> None:
        d.busy, d.kicked = True, False
        self.admin.hand_to(node, d)
        if "corrupt" in self.w.cfg.faults or "replay" in self.w.cfg.faults:
            if not self.w.healed and self.rng.random() < DAMAGE_PROBABILITY:
                self._damage()
        self._issue(node, d, "read")

    def _after_read(self, node: SimNode, d: _Daemon, best: RegistryCopy | None) -> None:
        gen = best.generation if best is not None else 0
        if gen != d.gen_seen or not d.read_once:
            d.reg = core.Registry.from_json(best.doc if best is not None else None)
            d.gen_seen, d.read_once = gen, True
            d.fast_until = node.local(self.w.t) + FAST_AFTER_CHANGE_MS
        d.max_gen_seen = max(d.max_gen_seen, gen)
        acks, d.acks = d.acks, []
        for batch in acks:
            self._ack(node, batch)
        self._execute(node, d)
        if self._need_round(node, d):
            self._start_round(node, d)
            return
        self._maybe_ack_leave(node, d)
        self._end_cycle(node, d)

    def _ack(self, node: SimNode, batch: int) -> None:
        sub = node.subsystems.get(LEVEL)
        delay = self.rng.uniform(*sub.delay_ms) if sub is not None else 0.0
        self.w.at(self.w.t + delay, "ack", node.node_id, node.gen, (LEVEL, batch))

    def _need_round(self, node: SimNode, d: _Daemon) -> bool:
        if d.reports or d.pending:
            return True
        cl = self._cluster(d)
        if not core.round_wanted(d.reg, cl):
            d.undecided_since = None
            return False
        now = node.local(self.w.t)
        if d.undecided_since is None:
            d.undecided_since = now
        return core.round_maker(cl, self.ids, d.name) == d.name or now - d.undecided_since >= TAKEOVER_MS

    def _maybe_ack_leave(self, node: SimNode, d: _Daemon) -> None:
        if not d.leave_batch:
            return
        if any(d.name in r.nodes for r in d.reg.services.values()) or d.inflight:
            return
        batch, d.leave_batch = d.leave_batch, 0
        self.w.log(f"n{node.node_id} services: nothing runs here any more: the leave goes on")
        self._ack(node, batch)

    # ------------------------------------------------------------ the executor
    def _execute(self, node: SimNode, d: _Daemon) -> None:
        cl = self._cluster(d)
        if d.name not in cl.present:
            return
        reported = {(s, o.action) for s, o, _ in d.reports}
        for work in core.local_work(d.reg, d.name, cl):
            if work.service in d.inflight or (work.service, work.action) in reported:
                continue
            d.inflight[work.service] = work.action
            self._launch(node, work.service, work.action, failed_node=work.failed_node)
        self._reconcile(node, d)

    def _reconcile(self, node: SimNode, d: _Daemon) -> None:
        now = node.local(self.w.t)
        frozen = {n for n, r in d.reg.services.items() if r.frozen}
        thawed, d.was_frozen = d.was_frozen - frozen, frozen
        if now - d.last_reconcile < RECONCILE_MS and not thawed:
            return
        d.last_reconcile = now
        launcher = self.launchers[node.node_id]
        reported = {s for s, _, _ in d.reports}
        for name, action in core.reconcile(d.reg, d.name, launcher.active, set(d.inflight) | reported, thawed):
            if action is core.Action.STOP:
                self.w.stats["svc_strays_stopped"] += 1
                self.w.log(f"n{node.node_id} services: {name} runs here but the registry does not place it "
                           "here: stopping this copy")
                d.inflight[name] = core.Action.STOP
                self._launch(node, name, core.Action.STOP, stray=True)
            else:
                ok = action is core.Action.FOUND
                self.w.stats["svc_gone"] += 0 if ok else 1
                d.reports.append((name, core.Outcome(action, ok, "" if ok else "not running"),
                                  self._wall(node.node_id)))

    # ------------------------------------------------------------ the launcher
    def _launch(self, node: SimNode, service: str, action: core.Action, failed_node: str = "",
                stray: bool = False) -> None:
        launcher = self.launchers[node.node_id]
        name = self.names[node.node_id]
        ok, detail = True, ""
        if action is core.Action.START:
            self.w.stats["svc_starts"] += 1
            if service not in launcher.procs:
                self._check_start(node.node_id, service, "started")
                launcher.procs[service] = _Proc(service, "starting", self.w.t, self._token())
                self.dirty = True
            ok = (service, name) not in self.failing and not (
                not self.w.healed and self.rng.random() < START_FAIL_PROBABILITY)
            detail = "" if ok else "exited 1"
            duration = self.rng.uniform(*START_MS)
        elif action is core.Action.STOP:
            self.w.stats["svc_stops"] += 1
            proc = launcher.procs.get(service)
            if proc is not None:
                proc.state = "stopping"
            duration = self.rng.uniform(*STOP_MS)
        else:
            if action is core.Action.RECOVERY:
                self.w.stats["svc_recoveries"] += 1
                self._check_recovery(node.node_id, service, failed_node)
            else:
                self.w.stats["svc_notifies"] += 1
            launcher.commands[service] = action
            duration = self.rng.uniform(*COMMAND_MS)
        job = _Job(self.next_job, service, action, ok, detail, stray)
        self.next_job += 1
        launcher.jobs[job.job_id] = job
        self.w.log(f"n{node.node_id} services: {action.value} {service}"
                   + (f" (for {failed_node})" if failed_node else ""))
        self.w.at(self.w.t + duration, "services-job", node.node_id, node.gen, job.job_id)

    def _token(self) -> int:
        self.next_token += 1
        return self.next_token

    def _finish_job(self, launcher: _Launcher, job: _Job, orphaned: bool = False) -> None:
        """What a job leaves on its host when it ends."""
        proc = launcher.procs.get(job.service)
        if job.action is core.Action.START and proc is not None:
            if job.ok:
                proc.state = "running"
                if (not self.w.healed and job.service not in self.parents and not orphaned
                        and self.rng.random() < RUNTIME_FAIL_PROBABILITY):
                    self.w.at(self.w.t + self.rng.uniform(*RUNTIME_FAIL_AFTER_MS), "services-die", launcher.node_id,
                              self.w.nodes[launcher.node_id].gen, (job.service, proc.token))
            else:
                del launcher.procs[job.service]
        elif job.action is core.Action.STOP and proc is not None and not orphaned:
            del launcher.procs[job.service]  # orphaned: it is still stopping when the kill comes
        elif job.action in (core.Action.NOTIFY, core.Action.RECOVERY):
            launcher.commands.pop(job.service, None)
        self.dirty = True

    def _job_done(self, node: SimNode, d: _Daemon, job_id: int) -> None:
        launcher = self.launchers[node.node_id]
        job = launcher.jobs.pop(job_id, None)
        if job is None:
            return  # killed
        self._finish_job(launcher, job)
        d.inflight.pop(job.service, None)
        if job.stray or d.fenced:
            return
        if job.action is core.Action.START and not job.ok:
            self.w.stats["svc_start_failures"] += 1
        self.w.log(f"n{node.node_id} services: {job.action.value} {job.service} "
                   + ("succeeded" if job.ok else f"failed: {job.detail}"))
        d.reports.append((job.service, core.Outcome(job.action, job.ok, job.detail), self._wall(node.node_id)))
        self._kick(node, d)

    def _dies(self, node: SimNode, d: _Daemon, payload: tuple[str, int]) -> None:
        service, token = payload
        launcher = self.launchers[node.node_id]
        proc = launcher.procs.get(service)
        if self.w.healed or proc is None or proc.token != token or proc.state != "running":
            return
        del launcher.procs[service]
        self.dirty = True
        self.w.stats["svc_runtime_failures"] += 1
        self.w.log(f"n{node.node_id} services: {service} died by itself")
        if not d.fenced:
            d.reports.append((service, core.Outcome(core.Action.FAILED, False, "exited 1"), self._wall(node.node_id)))
            self._kick(node, d)

    def _kill_all(self, node_id: int, why: str) -> None:
        launcher = self.launchers[node_id]
        if launcher.procs or launcher.commands:
            self.w.stats["svc_killed"] += len(launcher.procs)
            self.w.log(f"n{node_id} services: {why} kills " + ", ".join(
                sorted(launcher.procs) + [f"{a.value} {s}" for s, a in sorted(launcher.commands.items())]))
        launcher.procs.clear()
        launcher.commands.clear()
        launcher.jobs.clear()
        launcher.orphan = None
        self.dirty = True

    def _reap_orphans(self) -> None:
        """A crashed daemon's services die when the world says its
        incarnation is down: the next daemon's start-up clean-up, or the
        watchdog's reset of the host."""
        for node_id, launcher in self.launchers.items():
            if launcher.orphan is not None and self.w.checker.status.get((node_id, launcher.orphan)) == "down":
                self.w.stats["svc_orphans_killed"] += len(launcher.procs)
                self._kill_all(node_id, f"incarnation {launcher.orphan:x} is down (start-up clean-up or reset):")

    # ------------------------------------------------------------ rounds
    def _start_round(self, node: SimNode, d: _Daemon) -> None:
        if d.fenced:
            self._end_cycle(node, d)
            return
        self.w.stats["svc_rounds"] += 1
        if not self._take_lock(node, d):
            self._end_cycle(node, d, "the registry lock cannot be asked for: the DLM does not run")

    def _take_lock(self, node: SimNode, d: _Daemon) -> bool:
        gen = node.gen
        node_id = node.node_id

        def on_event(ev: Any) -> None:
            self.w.at(self.w.t, "services-lock", node_id, gen, ev)
        d.revoked = False
        d.lock_req = self.dlm.request_lock(node, daemon.REGISTRY_LOCK, LockMode.EXCLUSIVE, daemon.LOCK_TIMEOUT_MS,
                                           on_event)
        return d.lock_req is not None

    def _release_lock(self, node: SimNode, d: _Daemon) -> None:
        if d.lock_req is not None and d.lock_req > 0:
            self.dlm.release_lock(node, d.lock_req)
        d.lock_req = None

    def _lock_event(self, node: SimNode, d: _Daemon, ev: Any) -> None:
        if d.lock_req is None or getattr(ev, "req_id", None) != d.lock_req or d.fenced:
            return
        if isinstance(ev, Granted):
            d.token = ev.token
            self._granted(node, d)
        elif isinstance(ev, Denied):
            d.lock_req = None
            self._end_cycle(node, d, f"the registry lock was not granted: {ev.reason}")
        elif isinstance(ev, Revoked):
            d.revoked = True  # its validity is 0 from now on

    def _granted(self, node: SimNode, d: _Daemon) -> None:
        self._issue(node, d, "round-read")

    def _lock_valid(self, node: SimNode, d: _Daemon, until_local: float) -> bool:
        """The daemon's check before it writes: the lock is vouched for
        beyond ``until_local``.  Its validity ends at the node's fence
        deadline (0 when it may not write or its DLM no longer counts it
        joined); the current deadline is the most a renewal ever said."""
        core_ = node.core
        return (not d.revoked and core_ is not None and self.dlm.joined_here(node)
                and core_.can_write(node.local(self.w.t)) and until_local < core_.fence_deadline_ms())

    def _round_read(self, node: SimNode, d: _Daemon, copies: tuple[Any, Any]) -> None:
        a, b = copies
        best, _which = registry_codec.newest(a, b)
        for c in (a, b):
            head = c.head if isinstance(c, (RegistryCopy, Damaged)) else None
            if head is not None:
                d.max_gen_seen = max(d.max_gen_seen, head.generation)
        doc = best.doc if best is not None else None
        gen = best.generation if best is not None else 0
        old_token = best.token if best is not None else 0
        if old_token > d.token:
            self._round_failed(node, d, f"the registry carries token {old_token}, newer than this node's {d.token}")
            return
        reg = core.Registry.from_json(doc)
        r = _Round(d.reports, d.pending)
        d.reports, d.pending, d.round = [], [], r
        cl = self._cluster(d)
        lines: list[str] = []
        try:
            for service, outcome, at in r.reports:
                lines += core.report(reg, d.name, service, outcome, at)
            for p in r.pending:
                answer, said = core.run_command(reg, p.op, p.args, cl)
                lines += said
                r.answers.append((p, answer))
            lines += core.decide(reg, cl)
            core.check(reg, cl.known)
        except (core.RuleBroken, core.IllegalMove) as exc:
            raise Violation("registry-rules", f"n{node.node_id}'s round on generation {gen}: "
                            f"{type(exc).__name__}: {exc}") from None
        load = self.loads[d.name]
        if abs(reg.loads.get(d.name, -1.0) - load) > 0.05:
            reg.loads[d.name] = load
        for line in lines:
            self.w.log(f"n{node.node_id} services: {line}")
        new_doc = reg.to_json()
        if new_doc == (doc or core.Registry().to_json()) and gen != 0:
            d.reg, d.gen_seen = reg, gen
            self._round_done(node, d)
            return
        if not self._lock_valid(node, d, node.local(self.w.t) + self.w.timing.io_timeout_ms):
            self._round_failed(node, d, "the registry lock's validity ran out before the write")
            return
        copy, generation = registry_codec.next_copy(a, b, seen_generation=d.max_gen_seen)
        offset, data = self.w.store.registry_bytes(new_doc, copy, generation=generation, token=d.token,
                                                   writer=node.node_id, incarnation=d.incarnation,
                                                   stamp_ms=self._wall(node.node_id))
        r.reg, r.generation = reg, generation
        d.max_gen_seen = max(d.max_gen_seen, generation)
        self._issue(node, d, "write", (offset, data, generation, d.token, registry_codec.json_text(new_doc)))

    def _written(self, node: SimNode, d: _Daemon) -> None:
        r = d.round
        assert r is not None and r.reg is not None
        self.w.stats["svc_writes"] += 1
        d.reg, d.gen_seen = r.reg, r.generation
        d.fast_until = node.local(self.w.t) + FAST_AFTER_CHANGE_MS
        self._round_done(node, d)

    def _round_done(self, node: SimNode, d: _Daemon) -> None:
        r, d.round = d.round, None
        self._release_lock(node, d)
        if r is not None:
            for p, answer in r.answers:
                p.reply(answer)
        self._maybe_ack_leave(node, d)
        self._end_cycle(node, d)

    def _round_failed(self, node: SimNode, d: _Daemon, why: str) -> None:
        r, d.round = d.round, None
        if r is not None:  # nothing is lost: the reports go again in the next round
            d.reports = r.reports + d.reports
            for p in r.pending:
                p.reply({"ok": False, "error": f"the registry was not changed: {why}"})
        self._release_lock(node, d)
        self._end_cycle(node, d, why)

    # ------------------------------------------------------------ registry I/O
    def _issue(self, node: SimNode, d: _Daemon, kind: str,
               write: tuple[int, bytes, int, int, bytes] | None = None) -> None:
        w = self.w
        w.stats["svc_ios"] += 1
        d.io_seq += 1
        d.io = io = _Io(kind, d.io_seq, write)
        io_timeout = w.timing.io_timeout_ms
        faults = w.cfg.faults

        def done(after_ms: float, ok: bool, error: str = "") -> None:
            w.at(w.t + after_ms, "services-io", node.node_id, node.gen, (io.seq, ok, error, None))

        if write is not None and (node.core is None or not node.core.can_write(node.local(w.t))):
            done(0.0, False, "may not write (fence deadline)")  # the write guard, right before the write
            return
        if node.cut == "hang" or w.outage_until > w.t:
            self._maybe_late(node, write)
            done(io_timeout, False, "timeout")
            return
        if node.cut == "eio" or (w.eio_until > w.t and self.rng.random() < 0.05):
            if write is not None and "landed" in faults and not w.healed and self.rng.random() < 0.3:
                w.stats["svc_landed_failures"] += 1
                w.log(f"n{node.node_id} services: registry write reported failed has landed")
                self._land(write, node.node_id)
            done(self.rng.uniform(0.05, 1.0), False, "EIO")
            return
        lo, hi = w.cfg.io_latency_ms
        lat = self.rng.uniform(lo, 1.5 * io_timeout) if w.slow_io_until > w.t else self.rng.uniform(lo, hi)
        if lat > io_timeout:
            self._maybe_late(node, write)
            done(io_timeout, False, "timeout")
            return
        if write is not None and not w.healed and self.rng.random() < CRASH_IN_WRITE_PROBABILITY:
            kinds = [k for k in ("crash", "daemoncrash") if k in faults]
            if kinds:
                kind_ = self.rng.choice(kinds)
                w.at(w.t + lat * self.rng.random(), "fault", 0, 0,
                     ("crash-now" if kind_ == "crash" else kind_, node.node_id))
        done(lat, True)

    def _maybe_late(self, node: SimNode, write: tuple[int, bytes, int, int, bytes] | None) -> None:
        """A write that times out lands later now and then ("late"): within
        ``io_timeout + fence_margin`` past the timeout, the world's bound."""
        w = self.w
        if write is not None and "late" in w.cfg.faults and not w.healed and self.rng.random() < 0.5:
            slack = w.timing.io_timeout_ms + w.cfg.profile.fence_margin_ms
            self.late.append((w.t + w.timing.io_timeout_ms + self.rng.uniform(0, 0.9 * slack), write, node.node_id))
            self.late.sort(key=lambda x: x[0])

    def _io_effect(self, node: SimNode, d: _Daemon, payload: Any) -> Any:
        seq, ok, error, value = payload
        io = d.io
        if not ok or io is None or io.seq != seq:
            return payload
        if io.write is not None:
            self._land(io.write, node.node_id)
        elif io.kind == "read":
            value = self._checked(self.w.store.read_registry()[0])
        else:
            a, b = self.w.store.read_registry_copies()
            self._checked(registry_codec.newest(a, b)[0])
            value = (a, b)
        return (seq, ok, error, value)

    def _io_done(self, node: SimNode, d: _Daemon, payload: Any) -> None:
        seq, ok, error, value = payload
        io = d.io
        if io is None or io.seq != seq:
            return
        d.io = None
        if d.fenced:
            d.busy = False
            return
        if io.kind == "read":
            if ok:
                self._after_read(node, d, value)
            else:
                self._end_cycle(node, d, f"the registry read failed: {error}")
        elif not ok:
            self._round_failed(node, d, f"the registry {'read' if io.kind == 'round-read' else 'write'} "
                               f"failed: {error}")
        elif io.kind == "round-read":
            self._round_read(node, d, value)
        else:
            self._written(node, d)

    def _land(self, write: tuple[int, bytes, int, int, bytes], writer: int, sectors: int | None = None) -> None:
        offset, data, generation, token, text = write
        self.w.store.land(offset, data, sectors=sectors)
        if sectors is None:  # a torn copy never decodes: no reader can take it for its generation
            known = self.landed_gen.setdefault(generation, (token, text))
            if known != (token, text):
                raise Violation("registry-generation", f"generation {generation} landed whole with token {token} "
                                f"from n{writer} after a different document of that generation (token {known[0]}) "
                                "had landed whole")
            self.max_whole_gen = max(self.max_whole_gen, generation)
            self.history.append((offset, data, generation))
            del self.history[:-6]
        self._check_rollback(f"after n{writer}'s write of generation {generation}")

    def _check_rollback(self, when: str) -> None:
        best = self.w.store.read_registry()[0]
        newest = best.generation if best is not None else 0
        if newest < self.max_whole_gen:
            raise Violation("registry-rollback", f"{when}: the newest valid copy holds generation {newest}, "
                            f"but generation {self.max_whole_gen} had landed whole")

    def _checked(self, best: RegistryCopy | None) -> RegistryCopy | None:
        """A copy a reader accepted: exactly what a writer wrote whole."""
        if best is None or id(best) in self._verified:
            return best
        known = self.landed_gen.get(best.generation)
        if known is None or known[0] != best.token or known[1] != registry_codec.json_text(best.doc):
            raise Violation("registry-whole", f"a reader accepted generation {best.generation} (token {best.token}), "
                            "which is not a document any writer wrote with that generation")
        if len(self._verified) > 256:
            self._verified.clear()
        self._verified[id(best)] = best
        return best

    def _damage(self) -> None:
        """Random bytes over a sector of the copy that does not hold the
        newest generation, or an old copy's bytes written back there --
        unless a write to that copy is in flight."""
        store = self.w.store
        _best, which = store.read_registry()
        target = 1 - which if which is not None else self.rng.randint(0, 1)
        offset = store.layout.registry_copy_offset(target)
        busy = [x for x in self.daemons.values() if x.io is not None and x.io.write is not None
                and x.io.write[0] == offset] + [x for x in self.late if x[1][0] == offset]
        if busy:
            return
        old = [h for h in self.history if h[0] == offset]
        if "replay" in self.w.cfg.faults and old and self.rng.random() < 0.5:
            _off, data, generation = self.rng.choice(old)
            store.land(offset, data)
            self.w.stats["svc_replays"] += 1
            self.w.log(f"REPLAY: registry copy {'AB'[target]} as it was at generation {generation}")
        elif "corrupt" in self.w.cfg.faults:
            sector = store.sector_size
            at = offset + sector * self.rng.randint(0, 3)
            store.land(at, bytes(self.rng.getrandbits(8) for _ in range(sector)))
            self.w.stats["svc_corrupted"] += 1
            self.w.log(f"CORRUPT: a sector of registry copy {'AB'[target]} (not the newest)")
        self._check_rollback("after damage to the older registry copy")

    # ------------------------------------------------------------ invariants
    def _holder_state(self, node_id: int) -> str:
        """'running' when the node's daemon runs unfenced; else what it is."""
        launcher = self.launchers[node_id]
        if launcher.orphan is not None:
            return f"down (its daemon crashed; incarnation {launcher.orphan:x} is not down yet)"
        d = self.daemons.get(node_id)
        node = self.w.nodes[node_id]
        if d is None or not node.up or node.core is None:
            return "down"
        if d.fenced or node.core.fenced is not None:
            return "fencing"
        return "running"

    def _check_start(self, node_id: int, service: str, what: str) -> None:
        """A service's process starts on ``node_id``: no node that is not
        running any more may still run it."""
        if self._root(service).placement_policy is not Placement.ONE:
            return
        for other, launcher in self.launchers.items():
            if other != node_id and service in launcher.procs:
                state = self._holder_state(other)
                if state != "running":
                    raise Violation("fence-before-recovery", f"{service} {what} on n{node_id} while n{other}, "
                                    f"which is {state}, still runs it")

    def _check_recovery(self, node_id: int, service: str, failed_node: str) -> None:
        other = self.ids.get(failed_node)
        if other is not None and service in self.launchers[other].procs:
            raise Violation("fence-before-recovery", f"{service}'s recovery for {failed_node} starts on n{node_id} "
                            f"while {failed_node} still runs it ({self._holder_state(other)})")
        self._check_start(node_id, service, "recovered")

    def _check_actual(self) -> None:
        for name, d in self.defs.items():
            where = sorted(i for i, launcher in self.launchers.items() if name in launcher.procs)
            if not where:
                continue
            root = self._root(name)
            if root.placement_policy is Placement.ONE and len(where) > 1:
                states = {i: self._holder_state(i) for i in where}
                stale = [i for i in where if states[i] != "running"]
                running = ", ".join(f"n{i} ({self.launchers[i].procs[name].state}, {states[i]})" for i in where)
                raise Violation("fence-before-recovery" if stale else "one-owner",
                                f"{name} (placement one) runs on {running}")
            allowable = root.allowable(tuple(self.names.values()))
            for i in where:
                if self.names[i] not in allowable:
                    raise Violation("allowed", f"{name} runs on n{i}, outside its allowable nodes {sorted(allowable)}")
                if d.parent and d.parent not in self.launchers[i].procs:
                    raise Violation("with-parent", f"{name} runs on n{i}, where its parent {d.parent} does not")

    # ------------------------------------------------------------ liveness
    def quiescence_problem(self) -> str | None:
        problem = self.admin.outstanding()
        if problem is not None:
            return problem
        best = self.w.store.read_registry()[0]
        if best is None:
            return "no registry on the disk yet"
        reg = core.Registry.from_json(best.doc)
        if not self.daemons:
            return "no daemon runs"
        for d in self.daemons.values():
            if d.gen_seen != best.generation:
                return f"{d.name} has read generation {d.gen_seen}, the newest is {best.generation}"
            if d.reports or d.pending or d.inflight or d.lock_req is not None or d.round is not None:
                return f"{d.name} has work outstanding: reports {len(d.reports)}, jobs {sorted(d.inflight)}"
        first = self.daemons[min(self.daemons)]
        cl = self._cluster(first)
        if core.round_wanted(reg, cl):
            return f"a round would still change the registry (generation {best.generation})"
        for rec in reg.services.values():
            if rec.frozen:
                return f"{rec.name} is still frozen"
            for n, e in sorted(rec.nodes.items()):
                if e.state is not core.SvcState.REGISTERED:
                    return f"{rec.name} is {e.state.value} on {n}"
                proc = self.launchers[self.ids[n]].procs.get(rec.name)
                if proc is None or proc.state != "running":
                    return f"{rec.name} is registered on {n} but does not run there"
            root = reg.root(rec.name)
            if (root is rec and rec.wanted and not rec.removing and not rec.nodes
                    and core.candidates(reg, rec, cl)):
                return (f"{rec.name} is wanted and its candidates {core.candidates(reg, rec, cl)} are up, "
                        f"but it is registered nowhere (waiting for: {core.waiting_for(reg, rec, cl)}; "
                        f"history: {rec.history[-3:]})")
        for node_id, launcher in self.launchers.items():
            for service in launcher.procs:
                placed = reg.services.get(service)
                if placed is None or self.names[node_id] not in placed.nodes:
                    return f"{service} runs on n{node_id}, where the registry does not place it"
        return None


class _Admin:
    """The administrator: applies the definitions, then (while the faults
    run) moves, stops and starts, freezes and unfreezes services and puts
    nodes in maintenance and out again.  Each command goes to a joined
    node's daemon with its next cycle and is given again until a round took
    it; a command's undoing follows once it was taken."""

    def __init__(self, sim: ServicesSim) -> None:
        self.sim = sim
        rng = sim.rng
        self.cmds: list[_AdminCmd] = [_AdminCmd("apply", "", 0.0),
                                      _AdminCmd("start", "report", rng.uniform(2000.0, 5000.0))]
        names = list(sim.names.values())
        one = [n for n, d in sim.defs.items() if not d.parent and d.placement_policy is Placement.ONE]
        t = 3000.0
        phase = sim.w.cfg.fault_phase_ms
        while True:
            t += rng.uniform(1500.0, 5000.0)
            if t >= phase - 1000:
                break
            kind = rng.choice(("move", "stop", "freeze", "maintenance"))
            if kind == "move":
                self.cmds.append(_AdminCmd("move", rng.choice(one), t, to=rng.choice(names), optional=True))
            elif kind == "stop":
                self.cmds.append(_AdminCmd("stop", rng.choice(sorted(sim.defs)), t, then="start"))
            elif kind == "freeze":
                self.cmds.append(_AdminCmd("freeze", rng.choice(sorted(sim.defs)), t, then="unfreeze"))
            else:
                self.cmds.append(_AdminCmd("maintenance-on", rng.choice(names), t, then="maintenance-off"))

    def hand_to(self, node: SimNode, d: _Daemon) -> None:
        w = self.sim.w
        if node.core is None or node.core.state is not NodeState.JOINED:
            return
        for c in self.cmds:
            if c.done or c.due > w.t:
                continue
            if c.sent is not None:
                target = self.sim.daemons.get(c.sent[0])
                if target is not None and target.gen == c.sent[1] and w.t - c.sent_t < ADMIN_RESEND_MS:
                    continue
            c.sent, c.sent_t = (node.node_id, d.gen), w.t
            args: dict[str, Any] = {"name": c.name, "to": c.to}
            if c.op == "apply":
                args = {"defs": [x.to_json() for x in self.sim.defs.values()]}
            w.stats["svc_commands"] += 1
            w.log(f"admin: {c.op} {c.name}{' --to ' + c.to if c.to else ''} (to n{node.node_id})")
            d.pending.append(_Pending(c.op, args, self._replier(c, c.sent)))

    def _replier(self, c: _AdminCmd, sent: tuple[int, int]) -> Callable[[dict[str, Any]], None]:
        return lambda answer: self._reply(c, sent, answer)

    def _reply(self, c: _AdminCmd, sent: tuple[int, int], answer: dict[str, Any]) -> None:
        w = self.sim.w
        if c.done or c.sent != sent:
            return
        if answer.get("ok"):
            c.done = True
            if c.then:
                self.cmds.append(_AdminCmd(c.then, c.name, w.t + self.sim.rng.uniform(*ADMIN_PAUSE_MS)))
            return
        error = str(answer.get("error", ""))
        w.log(f"admin: {c.op} {c.name}: {error}")
        if c.optional and not error.startswith("the registry was not changed"):
            c.done = True  # a move that cannot happen now
            return
        c.sent, c.due = None, w.t + ADMIN_RETRY_MS

    def outstanding(self) -> str | None:
        for c in self.cmds:
            if not c.done:
                return f"the administrator's {c.op} {c.name} is not done yet"
        return None
