"""The DLM in the simulator: every node runs a ``DlmCore`` against the
simulated disk's DLM area, with lock clients, and a checker holds the DLM's
invariants.  Switched on by ``SimConfig(dlm=True)`` or ``dlm`` in the fault
list (``clusterfw sim --dlm``); off by default, and then nothing here runs.

How this works
--------------
``DlmSim`` is the simulator's first ``Feature`` (feature.py): the world calls
its hooks at fixed points of a run, as it calls every feature's.  Per node,
the DLM's I/O runs in its own pipeline beside the membership manager's,
exactly as a daemon's DLM would: ``poll`` -> ops performed one after another
against the ``SimStore`` (lock sectors encoded, placed and decoded by the
daemon's ``dlm_codec`` and ``ClusterDisk``, one sector per entry) ->
``complete``.  Latency and faults follow the
world's fault model (a cut node's disk, whole-disk outages, EIO windows,
slow I/O, crashes that land or lose the write in flight), and a DLM write
issued when the node may no longer write fails without touching the disk,
as the daemon's driver does.  Notifications at level 10 go to the DLM core,
whose ``Ack`` is then acked through the world's usual path (so a "hung" DLM
still does its work but does not ack).

Each node runs ``CLIENTS_PER_NODE`` lock clients that repeatedly ask for a
random name from a small set (one pair of names shares a stripe), in both
modes, some as try-locks, some with a timeout, hold it for a random time and
release it.  They stop asking when the faults stop; the liveness phase then
requires every request to be answered and every lock released.

All randomness comes from ``random.Random(seed ^ DLM_RNG_SALT)``: the world's
own random stream is untouched, so membership runs without the DLM replay
exactly as before.

Invariants (``DlmChecker``), each named:

| name                     | what it means                                             |
|--------------------------|-----------------------------------------------------------|
| dlm-exclusive            | never two holders of one lock when either holds it        |
|                          | EXCLUSIVE; a holder counts until it releases, its lock is |
|                          | revoked on a graceful leave, or its host is down (crashed,|
|                          | fenced *and* done fencing, reset, stopped)                |
| dlm-token-order          | an EXCLUSIVE grant's token exceeds every earlier grant's  |
|                          | token of that lock; a SHARED grant's token is >= the last |
|                          | EXCLUSIVE token                                           |
| dlm-no-grant-to-outsider | grants go only to running, unfenced nodes whose own view  |
|                          | shows them joined at level 10 and whom the newest landed  |
|                          | view still counts at level 10                             |
| dlm-liveness             | after faults stop, every request is answered and every    |
|                          | lock released within the membership bound plus            |
|                          | ``DlmSim.liveness_extra_ms()``, and no counted node's     |
|                          | sector is left anything but FREE                          |
| no-write-after-fence     | the DLM core produces no write when the node may not write|

With the "torn" or "corrupt" fault, random bytes are also written into lock sectors now
and then (``_corrupt``): a sector of a live node (one of its sectors on a
stripe the lock names use, while no local request owns it) or one no lock
uses.  Every node treats a damaged sector of a counted node as blocking; its
owner rewrites it at its next area read (``SCRUB_MS``), and the liveness
check also requires that no counted node's sector is left damaged.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..core.coordinator import level_state
from ..core.dlm import (
    DLM_LEVEL,
    Ack,
    Denied,
    DenyKind,
    DlmCore,
    DlmResult,
    EntryState,
    Granted,
    LockEntry,
    LockMode,
    ReadArea,
    ReadStripe,
    Recovered,
    Released,
    Revoked,
    WriteEntry,
    stripe_of,
)
from ..core.model import ViewRecord
from ..core.node import Unreadable
from ..ondisk import dlm_codec
from .checker import Violation
from .feature import Feature, FeatureWorld
from .model import SimConfig, SimNode

if TYPE_CHECKING:
    from ..core.node import Fenced, Notify

DLM_RNG_SALT = 0x0D1A_5EED_0D1A_5EED
CLIENTS_PER_NODE = 2
IDLE_MS = (10.0, 300.0)
NOT_MEMBER_IDLE_MS = (200.0, 800.0)  # after a denial because the node may not ask now
HOLD_MS = (2.0, 200.0)
TIMEOUT_MS = (20.0, 600.0)
TRY_PROBABILITY = 0.15
TIMEOUT_PROBABILITY = 0.3
SHARED_PROBABILITY = 0.4
LIVENESS_MARGIN_MS = 200.0
CRASH_IN_WRITE_PROBABILITY = 0.002
# Periodic jobs: some requests start on a shared 100 ms beat (within 1.5 ms),
# so several nodes draw tickets at once -- the bakery's hardest case.
BEAT_PROBABILITY = 0.5
BEAT_MS = 100.0
BEAT_JITTER_MS = 1.5  # per DLM write while faults run: a crash with that write in flight
SCRUB_MS = 1000.0  # the DLM's periodic area read (DlmCore scrub_ms): repairs a damaged own sector
CORRUPT_PROBABILITY = 0.004  # per client request while faults run ("torn"): random bytes into a lock sector


@dataclass
class _Client:
    index: int
    state: str = "idle"  # idle | waiting | holding
    req_id: int = 0
    name: str = ""
    mode: LockMode = LockMode.EXCLUSIVE
    token: int = 0  # the timer token of its next action


@dataclass
class _DlmNode:
    node_id: int
    gen: int
    incarnation: int
    core: DlmCore
    clients: list[_Client] = field(default_factory=list)
    by_req: dict[int, _Client] = field(default_factory=dict)
    issued_ms: dict[int, float] = field(default_factory=dict)  # req id -> real ms (outstanding)
    ops: list = field(default_factory=list)
    results: list = field(default_factory=list)
    inflight_write: tuple[int, bytes, LockEntry] | None = None
    wake_token: int = 0
    next_req: int = 1
    external: dict[int, Callable[[Any], None]] = field(default_factory=dict)
    """Requests another feature made (``request_lock``): req id -> where its events go."""


class DlmSim(Feature):
    name = "dlm"
    counters = ("dlm_requests", "dlm_grants", "dlm_denied", "dlm_timeouts", "dlm_busy", "dlm_revoked",
                "dlm_recovered", "dlm_ios", "dlm_lost_writes", "dlm_corrupted")

    def __init__(self, world: FeatureWorld) -> None:
        super().__init__(world)
        self.level = DLM_LEVEL
        self.rng = random.Random(world.cfg.seed ^ DLM_RNG_SALT)
        self.layout = world.store.layout
        self.uuid = world.store.cluster_uuid
        self.nodes: dict[int, _DlmNode] = {}
        self.names = self._names()
        self.checker = DlmChecker(world)
        self._decoded: dict[tuple[int, int], tuple[bytes, LockEntry | Unreadable]] = {}
        tm = world.timing
        self.poll_min_ms = float(tm.fast_poll_ms)
        self.poll_max_ms = float(tm.heartbeat_interval_ms)
        clients = CLIENTS_PER_NODE * world.cfg.nodes
        # After the faults stop: every request ahead in a FIFO is held at most
        # HOLD_MS[1], released with one write, and noticed by the next waiter
        # within poll_max plus a read and a write; a timed request ends at its
        # deadline.  (Recovering a dead holder is part of the membership bound.)
        io_max = world.cfg.io_latency_ms[1]
        # A sector damaged just before the faults stop is rewritten by its
        # owner within one scrub interval (and an area read).
        self.quiet_ms = (clients * (HOLD_MS[1] + self.poll_max_ms + self.poll_min_ms + 6 * io_max)
                         + TIMEOUT_MS[1] + 1000 + SCRUB_MS + io_max)

    @classmethod
    def wanted(cls, cfg: SimConfig) -> bool:
        return cfg.dlm or cls.name in cfg.faults

    # ------------------------------------------------------------ set-up
    def _names(self) -> list[str]:
        names = ["vol-a", "vol-b", "svc-web"]
        target = stripe_of("vol-a", self.layout.dlm_stripes_max)
        for i in range(100_000):  # a name on vol-a's stripe: exercises different names on one stripe
            candidate = f"vol-a-twin-{i}"
            if stripe_of(candidate, self.layout.dlm_stripes_max) == target:
                names.append(candidate)
                break
        return names

    def _own_sectors(self, node_id: int) -> dict[int, LockEntry | Unreadable]:
        out = {}
        for stripe in range(self.layout.dlm_stripes_max):
            raw = self.w.store.dev.read(self.layout.dlm_entry_offset(stripe, node_id), self.layout.block_size_bytes)
            if raw.count(0) != len(raw):
                out[stripe] = self._decode(stripe, node_id, raw)
        return out

    # ------------------------------------------------------------ hooks
    def on_start(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        dlm = DlmCore(node_id=node.node_id, incarnation=core.incarnation, stripes_max=self.layout.dlm_stripes_max,
                      nodes_max=self.layout.nodes_max, now_ms=node.local(self.w.t),
                      own_sectors=self._own_sectors(node.node_id), can_write=core.can_write,
                      poll_min_ms=self.poll_min_ms, poll_max_ms=self.poll_max_ms, scrub_ms=SCRUB_MS)
        dn = _DlmNode(node.node_id, node.gen, core.incarnation, dlm)
        dn.clients = [_Client(i) for i in range(CLIENTS_PER_NODE)]
        self.nodes[node.node_id] = dn
        for client in dn.clients:
            self._schedule_client(dn, client, self.rng.uniform(200, 1500))

    def on_exit(self, node: SimNode) -> None:
        dn = self.nodes.pop(node.node_id, None)
        if dn is not None:
            dn.core.stop("daemon exit")
            dn.core.take_events()  # the clients died with the daemon

    def on_crash(self, node: SimNode) -> None:
        dn = self._dn(node)
        if dn is None or dn.inflight_write is None:
            return
        offset, data, entry = dn.inflight_write
        dn.inflight_write = None
        if "lost" in self.w.cfg.faults and self.rng.random() < 0.4:
            self.w.stats["dlm_lost_writes"] += 1
            self.w.log(f"n{node.node_id} dlm: in-flight write of stripe {entry.stripe} lost")
        else:
            self._land(offset, data, entry)

    def on_view(self, node: SimNode) -> None:
        dn = self._dn(node)
        if dn is None or node.core is None or node.core.view is None:
            return
        dn.core.on_view(node.core.view, node.local(self.w.t))
        self._after(node, dn)

    def on_notify(self, node: SimNode, ev: "Notify") -> None:
        dn = self._dn(node)
        if dn is None:
            return
        dn.core.notify(ev.batch_id, ev.entries, node.local(self.w.t))
        self._after(node, dn)

    def on_fence(self, node: SimNode, ev: "Fenced") -> None:
        dn = self._dn(node)
        if dn is None:
            return
        dn.core.stop(f"fenced: {ev.reason}")
        self._handle_events(node, dn, fenced=True)

    def on_land(self, node: SimNode, rec: Any) -> None:
        if isinstance(rec, ViewRecord):  # the newest landed view decides who counts
            self.checker.on_view(rec)

    def liveness_extra_ms(self) -> float:
        return self.quiet_ms + LIVENESS_MARGIN_MS

    def dispatch(self, node: SimNode, kind: str, payload: Any) -> None:
        """A ``dlm-*`` event for a running daemon of the right generation."""
        dn = self._dn(node)
        if dn is None:
            return
        if kind == "dlm-opdone":
            payload = self._io_effect(node, dn, payload)
            if node.paused_until > self.w.t:
                node.deferred.append(("dlm-completion", payload))
            else:
                self._op_done(node, dn, payload)
            return
        if node.paused_until > self.w.t:
            node.deferred.append((kind, payload))
            return
        if kind == "dlm-completion":
            self._op_done(node, dn, payload)
        elif kind == "dlm-wake":
            if payload == dn.wake_token:
                self._kick(node, dn)
        elif kind == "dlm-client":
            self._client_action(node, dn, payload)
        else:
            raise AssertionError(kind)

    def after_event(self) -> None:
        self.checker.prune()
        self.check_settled("dlm-liveness", LIVENESS_MARGIN_MS)

    def quiescence_problem(self) -> str | None:
        """None when every request was answered, every lock released and the
        disk shows no counted node's sector other than FREE."""
        for dn in self.nodes.values():
            if dn.issued_ms:
                req_id, since = min(dn.issued_ms.items(), key=lambda kv: kv[1])
                return f"n{dn.node_id} request {req_id} outstanding since {since:.0f} ms"
            if any(c.state != "idle" for c in dn.clients):
                return f"n{dn.node_id} has a client holding a lock"
            if dn.core.busy():
                return f"n{dn.node_id}'s DLM is still busy"
        view = max((n.core.view for n in self.w.nodes.values() if n.core is not None and n.core.view is not None),
                   key=lambda v: (v.term, v.epoch, v.seq), default=None)
        if view is None:
            return None
        members = {m.node_id: m for m in view.members}
        area = self._read_area()
        for stripe, entries in area.items():
            for node_id, e in entries.items():
                m = members.get(node_id)
                if isinstance(e, Unreadable) and not e.never_written and m is not None \
                        and level_state(m, DLM_LEVEL) != "inactive":
                    return f"n{node_id}'s lock sector on stripe {stripe} is still damaged ({e.reason})"
                if not isinstance(e, LockEntry) or e.state is EntryState.FREE:
                    continue
                if m is not None and m.incarnation == e.incarnation and level_state(m, DLM_LEVEL) != "inactive":
                    return f"n{node_id}'s sector on stripe {stripe} still shows {e.state.name} {e.name!r}"
        return None

    # ------------------------------------------------------------ other features' locks
    def request_lock(self, node: SimNode, name: str, mode: LockMode, timeout_ms: float | None,
                     on_event: Callable[[Any], None]) -> int | None:
        """Ask ``node``'s DLM for ``name`` on behalf of another feature (the
        services' registry lock).  Its ``Granted``/``Denied``/``Revoked``/
        ``Released`` events go to ``on_event`` (called from inside the DLM's
        event handling: queue an event rather than calling back in); the
        DLM's invariants hold for it as for the clients.  None when the
        node's DLM does not run."""
        dn = self._dn(node)
        if dn is None:
            return None
        req_id = dn.next_req
        dn.next_req += 1
        dn.external[req_id] = on_event
        dn.issued_ms[req_id] = self.w.t
        self.w.stats["dlm_requests"] += 1
        dn.core.request(req_id, name, mode, node.local(self.w.t), timeout_ms)
        self._after(node, dn)
        return req_id

    def release_lock(self, node: SimNode, req_id: int) -> None:
        """Release (or cancel) a request made with ``request_lock``."""
        dn = self._dn(node)
        if dn is None or req_id not in dn.external:
            return
        self.checker.on_end(dn.node_id, dn.incarnation, req_id)
        dn.issued_ms.pop(req_id, None)
        dn.core.release(req_id, node.local(self.w.t))
        self._after(node, dn)

    def joined_here(self, node: SimNode) -> bool:
        """Whether ``node``'s DLM counts itself joined at the DLM level (its
        locks are vouched for: the daemon's ``valid_for_ms`` > 0)."""
        dn = self._dn(node)
        return dn is not None and dn.core.joined_here

    # ------------------------------------------------------------ clients
    def _schedule_client(self, dn: _DlmNode, client: _Client, delay_ms: float, action: str = "request") -> None:
        client.token += 1
        at = self.w.t + delay_ms
        if action == "request" and self.rng.random() < BEAT_PROBABILITY:
            at = (at // BEAT_MS + 1) * BEAT_MS + self.rng.uniform(0.0, BEAT_JITTER_MS)
        self.w.at(at, "dlm-client", dn.node_id, dn.gen, (client.index, client.token, action))

    def _client_action(self, node: SimNode, dn: _DlmNode, payload: Any) -> None:
        index, token, action = payload
        client = dn.clients[index]
        if token != client.token:
            return
        now = node.local(self.w.t)
        if action == "release":
            if client.state != "holding":
                return
            self.checker.on_end(dn.node_id, dn.incarnation, client.req_id)
            dn.by_req.pop(client.req_id, None)
            dn.issued_ms.pop(client.req_id, None)
            client.state = "idle"
            dn.core.release(client.req_id, now)
            self._schedule_client(dn, client, self.rng.uniform(*IDLE_MS))
        elif action == "request":
            if client.state != "idle" or self.heal_ms is not None:
                return  # after the faults stop, clients only finish what they started
            if ({"torn", "corrupt"} & self.w.cfg.faults) and not self.w.healed \
                    and self.rng.random() < CORRUPT_PROBABILITY:
                self._corrupt()
            client.req_id = dn.next_req
            dn.next_req += 1
            client.name = self.rng.choice(self.names)
            client.mode = LockMode.SHARED if self.rng.random() < SHARED_PROBABILITY else LockMode.EXCLUSIVE
            try_only = self.rng.random() < TRY_PROBABILITY
            timeout = self.rng.uniform(*TIMEOUT_MS) if not try_only and self.rng.random() < TIMEOUT_PROBABILITY \
                else None
            client.state = "waiting"
            dn.by_req[client.req_id] = client
            dn.issued_ms[client.req_id] = self.w.t
            self.w.stats["dlm_requests"] += 1
            dn.core.request(client.req_id, client.name, client.mode, now, timeout, try_only)
        self._after(node, dn)

    def _corrupt(self) -> None:
        """Random bytes into one lock sector: a live node's (on a stripe the
        lock names use, while none of its local requests owns the sector)
        or one no lock uses."""
        layout = self.layout
        used = sorted({stripe_of(name, layout.dlm_stripes_max) for name in self.names})
        if self.nodes and self.rng.random() < 0.7:
            node_id = self.rng.choice(sorted(self.nodes))
            stripe = self.rng.choice(used)
            dn = self.nodes[node_id]
            node = self.w.nodes.get(node_id)
            if node is None or self._dn(node) is not dn or node.crashed or not dn.core.joined_here:
                return  # only a running node's DLM, joined at the DLM level, repairs its sector
            busy = dn.core.stripe_active(stripe) or (dn.inflight_write is not None
                                                     and dn.inflight_write[2].stripe == stripe)
            if busy:
                return
            what = "a live node's"
        else:
            node_id = self.rng.randint(1, layout.nodes_max)
            unused = [s for s in range(layout.dlm_stripes_max) if s not in used]
            stripe = self.rng.choice(unused)
            what = "an unused"
        data = bytes(self.rng.getrandbits(8) for _ in range(layout.block_size_bytes))
        self.w.store.land(layout.dlm_entry_offset(stripe, node_id), data)
        self.w.stats["dlm_corrupted"] += 1
        self.w.log(f"FAULT: random bytes into {what} lock sector: n{node_id}, stripe {stripe}")

    # ------------------------------------------------------------ events
    def _after(self, node: SimNode, dn: _DlmNode) -> None:
        self._handle_events(node, dn)
        if self.nodes.get(node.node_id) is dn:
            self._kick(node, dn)

    def _handle_events(self, node: SimNode, dn: _DlmNode, fenced: bool = False) -> None:
        for ev in dn.core.take_events():
            if isinstance(ev, Ack):
                self.w.at(self.w.t + self.rng.uniform(0.0, 1.0), "ack", node.node_id, node.gen,
                          (DLM_LEVEL, ev.batch_id))
                continue
            if isinstance(ev, Recovered):
                self.w.stats["dlm_recovered"] += 1
                self.w.log(f"n{node.node_id} dlm: {ev.name!r} of n{ev.from_node} incarnation {ev.incarnation:x} "
                           f"recovered (request {ev.req_id})")
                continue
            self._account(node, dn, ev, fenced)
            external = dn.external.get(ev.req_id)
            if external is not None:  # another feature's request (``request_lock``)
                if isinstance(ev, (Denied, Revoked, Released)):
                    del dn.external[ev.req_id]
                external(ev)
                continue
            client = dn.by_req.get(ev.req_id)
            if isinstance(ev, Granted):
                assert client is not None and client.state == "waiting", ev
                client.state = "holding"
                client.token += 1
                self._schedule_client(dn, client, self.rng.uniform(*HOLD_MS), "release")
            elif isinstance(ev, Denied):
                if client is not None and client.req_id == ev.req_id and client.state == "waiting":
                    dn.by_req.pop(ev.req_id, None)
                    client.state = "idle"
                    idle = IDLE_MS if dn.core.may_request() is None else NOT_MEMBER_IDLE_MS
                    self._schedule_client(dn, client, self.rng.uniform(*idle))
            elif isinstance(ev, Revoked):
                if client is not None and client.req_id == ev.req_id and client.state != "idle":
                    dn.by_req.pop(ev.req_id, None)
                    client.state = "idle"
                    self._schedule_client(dn, client, self.rng.uniform(*IDLE_MS))

    def _account(self, node: SimNode, dn: _DlmNode, ev: Any, fenced: bool) -> None:
        """A request's event, whoever made it: the counters, the trace, the
        checker and the outstanding requests."""
        if isinstance(ev, Granted):
            self.w.stats["dlm_grants"] += 1
            self.w.log(f"n{node.node_id} dlm: granted {ev.name!r} {ev.mode.name} token {ev.token} "
                       f"(request {ev.req_id})")
            self.checker.on_grant(node, dn.incarnation, ev)
            dn.issued_ms.pop(ev.req_id, None)
        elif isinstance(ev, Denied):
            self.w.stats["dlm_denied"] += 1
            if ev.kind is DenyKind.TIMEOUT:
                self.w.stats["dlm_timeouts"] += 1
            elif ev.kind is DenyKind.BUSY:
                self.w.stats["dlm_busy"] += 1
            self.w.log(f"n{node.node_id} dlm: request {ev.req_id} denied: {ev.reason}")
            dn.issued_ms.pop(ev.req_id, None)
        elif isinstance(ev, Revoked):
            self.w.stats["dlm_revoked"] += 1
            self.w.log(f"n{node.node_id} dlm: {ev.name!r} revoked (request {ev.req_id}): {ev.reason}")
            if not fenced:
                # A graceful leave: the client is told and stops at once.  A
                # fenced host's services may run until fencing completes, so
                # the checker keeps that hold until the host is down.
                self.checker.on_end(node.node_id, dn.incarnation, ev.req_id)
            dn.issued_ms.pop(ev.req_id, None)
        elif isinstance(ev, Released):
            self.w.log(f"n{node.node_id} dlm: request {ev.req_id} released")

    # ------------------------------------------------------------ I/O
    def _dn(self, node: SimNode) -> _DlmNode | None:
        dn = self.nodes.get(node.node_id)
        return dn if dn is not None and dn.gen == node.gen and node.up else None

    def _kick(self, node: SimNode, dn: _DlmNode) -> None:
        if dn.ops or node.core is None or node.paused_until > self.w.t:
            return
        now = node.local(self.w.t)
        ops = dn.core.poll(now)
        self._handle_events(node, dn)
        if ops:
            if any(isinstance(op, WriteEntry) for op in ops) and not node.core.can_write(now):
                raise Violation("no-write-after-fence", f"n{node.node_id}'s DLM produced a write it may not issue")
            dn.ops, dn.results = list(ops), []
            self._issue(node, dn)
            return
        wake = dn.core.wakeup_ms()
        if wake != float("inf"):
            dn.wake_token += 1
            self.w.at(max(self.w.t, node.real(wake)) + 0.001, "dlm-wake", node.node_id, node.gen, dn.wake_token)

    def _issue(self, node: SimNode, dn: _DlmNode) -> None:
        w = self.w
        op = dn.ops[len(dn.results)]
        w.stats["dlm_ios"] += 1
        start_local = node.local(w.t)
        io_timeout = w.timing.io_timeout_ms

        def done(after_ms: float, ok: bool, error: str = "") -> None:
            w.at(w.t + after_ms, "dlm-opdone", node.node_id, node.gen, (op, ok, start_local, None, error))

        if isinstance(op, WriteEntry) and (node.core is None or not node.core.can_write(start_local)):
            done(0.0, False, "may not write (fence deadline)")  # the driver's check at issue time
            return
        if node.cut == "hang" or w.outage_until > w.t:
            done(io_timeout, False, "timeout")
            return
        if node.cut == "eio" or (w.eio_until > w.t and self.rng.random() < 0.05):
            done(self.rng.uniform(0.05, 1.0), False, "EIO")
            return
        lo, hi = w.cfg.io_latency_ms
        lat = self.rng.uniform(lo, 1.5 * io_timeout) if w.slow_io_until > w.t else self.rng.uniform(lo, hi)
        if lat > io_timeout:
            done(io_timeout, False, "timeout")  # an I/O that times out never lands later
            return
        if isinstance(op, WriteEntry):
            assert op.entry.node_id == node.node_id and op.stripe == op.entry.stripe
            offset, data = self.w.store.entry_write(op.entry)
            dn.inflight_write = (offset, data, op.entry)
            if "crash" in w.cfg.faults and not w.healed and self.rng.random() < CRASH_IN_WRITE_PROBABILITY:
                w.at(w.t + lat * self.rng.random(), "fault", 0, 0, ("crash-now", node.node_id))
        done(lat, True)

    def _io_effect(self, node: SimNode, dn: _DlmNode, payload: Any) -> Any:
        op, ok, start_local, value, error = payload
        if ok:
            if isinstance(op, WriteEntry):
                assert dn.inflight_write is not None
                offset, data, entry = dn.inflight_write
                dn.inflight_write = None
                self._land(offset, data, entry)
            elif isinstance(op, ReadStripe):
                value = self._read_stripe(op.stripe)
            elif isinstance(op, ReadArea):
                value = self._read_area()
        return (op, ok, start_local, value, error)

    def _op_done(self, node: SimNode, dn: _DlmNode, payload: Any) -> None:
        op, ok, start_local, value, error = payload
        dn.results.append(DlmResult(op, ok, start_local, node.local(self.w.t), value, error))
        if len(dn.results) < len(dn.ops):
            self._issue(node, dn)
            return
        results, dn.ops, dn.results = dn.results, [], []
        dn.core.complete(node.local(self.w.t), results)
        self._after(node, dn)

    def _land(self, offset: int, data: bytes, entry: LockEntry) -> None:
        self.w.store.land(offset, data)

    def _decode(self, stripe: int, node_id: int, block: bytes) -> LockEntry | Unreadable:
        hit = self._decoded.get((stripe, node_id))
        if hit is not None and hit[0] == block:
            return hit[1]
        value = dlm_codec.decode_sector(block, cluster_uuid=self.uuid, node_id=node_id, stripe=stripe)
        self._decoded[(stripe, node_id)] = (block, value)
        return value

    def _read_stripe(self, stripe: int) -> dict[int, LockEntry | Unreadable]:
        return self.w.store.read_lock_stripe(stripe)

    def _read_area(self) -> dict[int, dict[int, LockEntry | Unreadable]]:
        return self.w.store.read_lock_area()


@dataclass
class _Hold:
    name: str
    mode: LockMode
    token: int


class DlmChecker:
    """The DLM's invariants, with global knowledge (see the module doc)."""

    def __init__(self, world: FeatureWorld) -> None:
        self.w = world
        self.holds: dict[tuple[int, int, int], _Hold] = {}  # (node, incarnation, request) -> hold
        self.max_token: dict[str, int] = {}
        self.last_exclusive: dict[str, int] = {}
        self.latest_view: ViewRecord | None = None
        self.grants = 0

    def fail(self, name: str, msg: str) -> None:
        raise Violation(name, msg)

    def on_view(self, view: ViewRecord) -> None:
        if self.latest_view is None or (view.term, view.epoch, view.seq) > \
                (self.latest_view.term, self.latest_view.epoch, self.latest_view.seq):
            self.latest_view = view

    def prune(self) -> None:
        status = self.w.checker.status
        for key in [k for k in self.holds if status.get((k[0], k[1]), "down") == "down"]:
            del self.holds[key]

    def on_end(self, node_id: int, incarnation: int, req_id: int) -> None:
        self.holds.pop((node_id, incarnation, req_id), None)

    def on_grant(self, node: SimNode, incarnation: int, ev: Granted) -> None:
        self.grants += 1
        n = node.node_id
        where = f"n{n} granted {ev.name!r} {ev.mode.name} token {ev.token} (request {ev.req_id})"
        status = self.w.checker.status.get((n, incarnation), "down")
        core = node.core
        if status != "running" or core is None or core.fenced is not None or core.stopped is not None:
            self.fail("dlm-no-grant-to-outsider", f"{where} while that incarnation is {status}")
        assert core is not None
        own = core.view.member(n) if core.view is not None else None
        if own is None or own.incarnation != incarnation or level_state(own, DLM_LEVEL) != "joined":
            self.fail("dlm-no-grant-to-outsider", f"{where}: its own view does not show it joined at level 10")
        latest = self.latest_view.member(n) if self.latest_view is not None else None
        if latest is None or latest.incarnation != incarnation or level_state(latest, DLM_LEVEL) == "inactive":
            self.fail("dlm-no-grant-to-outsider", f"{where}: the newest view on the disk does not count it "
                      "at level 10")
        self.prune()
        for (other, other_inc, other_req), hold in self.holds.items():
            if hold.name != ev.name:
                continue
            if hold.mode is LockMode.EXCLUSIVE or ev.mode is LockMode.EXCLUSIVE:
                self.fail("dlm-exclusive", f"{where} while n{other} holds it {hold.mode.name} "
                          f"(request {other_req}, token {hold.token})")
        if ev.mode is LockMode.EXCLUSIVE:
            if ev.token <= self.max_token.get(ev.name, 0):
                self.fail("dlm-token-order", f"{where}: an earlier grant had token {self.max_token[ev.name]}")
            self.last_exclusive[ev.name] = ev.token
        elif ev.token < self.last_exclusive.get(ev.name, 0):
            self.fail("dlm-token-order", f"{where}: below the last exclusive token {self.last_exclusive[ev.name]}")
        self.max_token[ev.name] = max(self.max_token.get(ev.name, 0), ev.token)
        self.holds[(n, incarnation, ev.req_id)] = _Hold(ev.name, ev.mode, ev.token)
