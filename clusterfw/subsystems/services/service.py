"""The registration & launch service inside the node daemon: the in-process
subsystem at level 50 that keeps the service registry on the shared disk and
starts, stops, notifies and recovers client services through a launcher.

How this works
--------------
* **The registry** is a document on the disk (``ondisk/registry_codec.py``:
  two copies, the newer generation wins, a torn write only ever damages the
  older copy).  Every change is a *round*: take the cluster lock
  ``clusterfw.registry`` (EXCLUSIVE, through the in-process DLM), read the
  newest copy, apply this node's launcher reports and the administrator's
  commands, run ``core.services.decide``, check the registry's rules, write
  the next generation with the lock's fencing token, release.  A round that
  changes nothing writes nothing.
* **Polling.**  Each node reads the two registry heads (one block each)
  every ``poll_idle_s`` -- the daemon's heartbeat interval -- and every
  ``POLL_FAST_S`` for a few seconds after any change it saw or made, or
  while its launcher works; it reads a copy only when a head changed.
* **Who runs rounds.**  A node with something to report or a command runs
  one.  Otherwise the lowest-id node that is up runs one whenever
  ``decide`` on the registry it last read would change something (every
  node computes the same thing; the lock lets one write it); any other node
  does so when that has stayed undone for ``TAKEOVER_S``.
* **The executor.**  After every read, ``core.services.local_work`` says
  what this node must do; each job goes to the launcher once (``_inflight``)
  and its outcome comes back as a report for the next round.  A service
  that dies by itself is reported ``failed``; the registry decides to
  restart it in place or move it.
* **Membership.**  The hub hands over the view and the level-50 batches.  A
  join or another node's leave is acked at once (after the first registry
  read); a forced leave is acked at once too, and from then on the node is
  *gone* for the choosing (the membership forces a node out only after its
  fence deadline and the watchdog margin).  This node's own graceful leave
  is acked once it runs nothing any more: the rounds transfer its services
  (flag T) first.
* **The fence** calls ``fence()``: the launcher SIGKILLs everything it
  started, synchronously, before anything else of the fence.

Invariants: one round at a time per node; a job is handed to the launcher at
most once per registry state; nothing is written without the lock and
within its validity.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from clusterfw.core import services as core
from clusterfw.core.model import NodeState, ViewRecord
from clusterfw.subsystems.base import LocalSubsystem, Notification, Transition

REGISTRY_LOCK = "clusterfw.registry"
LOCK_CONN_ID = -50
"""The connection id the service's own lock requests use with the DLM."""
POLL_FAST_S = 0.02
POLL_IDLE_S = 0.25
"""The idle poll of the registry heads when the daemon does not say (it
passes its heartbeat interval: 0.1 s with the lab profile)."""
FAST_AFTER_CHANGE_S = 3.0
TAKEOVER_S = 2.0
LOCK_TIMEOUT_MS = 5000
RECONCILE_S = 1.0
RECHECK_S = 1.0
"""With nothing new (no registry change, view, report or command), the
choosing and the executor are looked at only this often: for what time
alone changes (maturity_time, failback_delay, failures expiring, a takeover)."""


class RegistryStore(Protocol):
    def generation(self) -> int:
        """The newest valid generation on the disk (a cheap read)."""

    def read(self) -> tuple[dict[str, Any] | None, int, int]:
        """(document, generation, token) of the newest valid copy."""

    def write(self, doc: dict[str, Any], generation: int, token: int) -> int:
        """Write at least ``generation`` into the copy that does not hold the
        newest; refuse if the disk carries a newer token.  Returns the
        generation written."""


class RoundFailed(Exception):
    pass


@dataclass
class _Pending:
    op: str
    args: dict[str, Any]
    reply: Callable[[dict[str, Any]], None]


class _LockClient:
    """The registry lock, taken through the in-process DLM."""

    def __init__(self, dlm: Any) -> None:
        self.dlm = dlm
        self._cond = threading.Condition()
        self._msgs: dict[int, dict[str, Any]] = {}
        self._next = 1
        self.valid_until_ms = 0.0

    def on_push(self, msg: dict[str, Any]) -> bool:
        with self._cond:
            cid = int(msg.get("id", 0))
            if msg.get("op") == "valid":
                self.valid_until_ms = time.monotonic() * 1000 + float(msg.get("for_ms", 0))
            else:
                self._msgs[cid] = msg
            self._cond.notify_all()
        return True

    def acquire(self, timeout_ms: int) -> tuple[int, int]:
        with self._cond:
            cid = self._next
            self._next += 1
        from clusterfw.core.dlm import LockMode
        why = self.dlm.lock(LOCK_CONN_ID, os.getpid(), cid, REGISTRY_LOCK, LockMode.EXCLUSIVE, timeout_ms, False)
        if why is not None:
            raise RoundFailed(f"the registry lock cannot be asked for: {why}")
        deadline = time.monotonic() + timeout_ms / 1000 + 2
        with self._cond:
            while cid not in self._msgs:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            msg = self._msgs.pop(cid, None)
        if msg is None or msg.get("op") != "granted":
            if msg is None:
                self.dlm.unlock(LOCK_CONN_ID, cid)
            raise RoundFailed(f"the registry lock was not granted: {(msg or {}).get('reason', 'no answer')}")
        self.valid_until_ms = time.monotonic() * 1000 + float(msg.get("valid_ms", 0))
        return cid, int(msg["token"])

    def release(self, cid: int) -> None:
        self.dlm.unlock(LOCK_CONN_ID, cid)
        with self._cond:
            self._msgs.pop(cid, None)


class ServicesService(LocalSubsystem):
    level = core.SERVICES_LEVEL
    name = "services"
    barriers = (1, 1, 1)

    def __init__(self, *, node: str, store: RegistryStore, dlm: Any, launcher: Any,
                 names: Callable[[], dict[int, str]], io_timeout_ms: int,
                 log: Callable[[str, str], None], cluster: str = "", incarnation: int | None = None,
                 poll_idle_s: float = POLL_IDLE_S) -> None:
        self.node = node
        self.incarnation = incarnation
        """This daemon's: a view member of this node with another incarnation is not this daemon's."""
        self.store = store
        self.lock = _LockClient(dlm)
        self.launcher = launcher
        self._names = names
        self.io_timeout_ms = io_timeout_ms
        self._logf = log
        self.cluster_name = cluster
        self.poll_idle_s = max(POLL_FAST_S, poll_idle_s)
        self._mu = threading.Lock()
        self._kick = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._ack: Callable[[int], None] | None = None
        self._view: ViewRecord | None = None
        self._gone: set[str] = set()
        self._acks: list[int] = []
        self._leave_batch = 0
        self._reg = core.Registry()
        self._gen = -1
        self._read_once = False
        self._reports: list[tuple[str, core.Outcome, int]] = []
        self._pending: list[_Pending] = []
        self._inflight: dict[str, core.Action] = {}
        self._fast_until = 0.0
        self._dirty = True
        self._last_look = 0.0
        self._undecided_since = 0.0
        self._last_reconcile = 0.0
        self._was_frozen: set[str] = set()
        self.fenced = False
        self.stats = {"rounds": 0, "writes": 0, "lock_waits_ms": 0}
        launcher.on_failure(self._on_failure)

    # ---------------------------------------------------------- subsystem door
    def start(self, ack: Callable[[int], None], log: Callable[[str], None]) -> None:
        self._ack = ack
        self._thread = threading.Thread(target=self._run, name="services", daemon=True)
        self._thread.start()

    def deliver(self, view: ViewRecord | None, notification: Notification | None = None) -> None:
        with self._mu:
            if view is not None:
                self._view = view
                names = self._names()
                forced = {names.get(m.node_id, "") for m in view.members if m.state is NodeState.FORCED_LEAVING}
                self._gone &= forced
            if notification is not None:
                mine = False
                for e in notification.entries:
                    if e.kind is Transition.FORCED_LEAVING:
                        self._gone.add(e.node)
                    if e.kind is Transition.LEAVING and e.node == self.node:
                        mine = True
                if mine:
                    self._leave_batch = notification.batch
                else:
                    self._acks.append(notification.batch)
        self._fast_until = time.monotonic() + FAST_AFTER_CHANGE_S
        self._dirty = True
        self._kick.set()

    def stop(self) -> None:
        self._stopping.set()
        self._kick.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def fence(self, reason: str) -> list[str]:
        """Kill everything the launcher started (the fence's first step)."""
        self.fenced = True
        self._stopping.set()
        killed: list[str] = self.launcher.kill_all()
        if killed:
            self._logf("critical", f"services: fence ({reason}): SIGKILL of {', '.join(killed)}")
        return killed

    # ---------------------------------------------------------- the API
    def submit(self, op: str, args: dict[str, Any], reply: Callable[[dict[str, Any]], None]) -> None:
        """A command from the CLI; ``reply`` is called from the services thread."""
        if op in ("list", "why", "dump"):
            reply(self.answer(op, args))
            return
        with self._mu:
            self._pending.append(_Pending(op, args, reply))
        self._dirty = True
        self._kick.set()

    def answer(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        with self._mu:
            reg = self._reg.copy()
            cl = self._cluster_locked()
        if op == "why":
            name = str(args.get("name", ""))
            if name not in reg.services:
                return {"ok": False, "error": f"no service named {name!r} (defined: "
                                              f"{', '.join(sorted(reg.services)) or 'none'})"}
            return {"ok": True, "lines": core.why(reg, name, cl),
                    "summary": core.summary(reg, reg.services[name], cl),
                    "history": [[t, text] for t, text in reg.services[name].history]}
        if op == "dump":
            doc = reg.to_json()
            node = args.get("node")
            if isinstance(node, str) and node:  # only the services with an entry there (the event manager)
                doc["services"] = {n: svc for n, svc in doc["services"].items() if node in svc["nodes"]}
            return {"ok": True, "registry": doc, "generation": self._gen}
        return {"ok": True, "services": self.summaries(reg, cl), "maintenance": sorted(reg.maintenance),
                "generation": self._gen}

    def summaries(self, reg: core.Registry | None = None, cl: core.Cluster | None = None) -> list[dict[str, Any]]:
        if reg is None or cl is None:
            with self._mu:
                reg, cl = self._reg.copy(), self._cluster_locked()
        return [core.summary(reg, rec, cl) for rec in reg.services.values()]

    # ---------------------------------------------------------- the loop
    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._cycle()
            except Exception as exc:  # noqa: BLE001 - the loop must go on; the next cycle retries
                self._logf("error", f"services: {type(exc).__name__}: {exc}")
                time.sleep(0.2)
            fast = time.monotonic() < self._fast_until or bool(self._inflight) or bool(self._reports)
            self._kick.wait(POLL_FAST_S if fast else self.poll_idle_s)
            self._kick.clear()

    def _cycle(self) -> None:
        gen = self.store.generation()
        if gen != self._gen or not self._read_once:
            doc, gen, _token = self.store.read()
            with self._mu:
                self._reg = core.Registry.from_json(doc)
                self._gen = gen
            self._read_once = True
            self._fast_until = time.monotonic() + FAST_AFTER_CHANGE_S
            self._dirty = True
        with self._mu:
            acks, self._acks = self._acks, []
        for batch in acks:
            if self._ack is not None:
                self._ack(batch)
        now = time.monotonic()
        if not (self._dirty or self._inflight or self._reports or self._pending) \
                and now - self._last_look < RECHECK_S:
            return  # nothing new: only the heads were read
        self._dirty = False
        self._last_look = now
        self._execute()
        if self._need_round():
            self._round()
        self._maybe_ack_leave()

    def _cluster_locked(self) -> core.Cluster:
        me = (self.node, self.incarnation) if self.incarnation is not None else None
        return core.cluster_from_view(self._view, self._names(), self._gone, _wall_ms(), me)

    def _need_round(self) -> bool:
        with self._mu:
            if self._reports or self._pending:
                return True
            reg = self._reg  # replaced whole, never changed in place; round_wanted decides on a copy
            cl = self._cluster_locked()
        if not core.round_wanted(reg, cl):
            self._undecided_since = 0.0
            return False
        now = time.monotonic()
        if not self._undecided_since:
            self._undecided_since = now
        first = core.round_maker(cl, {v: k for k, v in self._names().items()}, self.node)
        return first == self.node or now - self._undecided_since >= TAKEOVER_S

    def _round(self) -> None:
        if self.fenced:
            return
        start = time.monotonic()
        cid, token = self.lock.acquire(LOCK_TIMEOUT_MS)
        self.stats["lock_waits_ms"] += int((time.monotonic() - start) * 1000)
        try:
            doc, gen, old_token = self.store.read()
            if old_token > token:
                raise RoundFailed(f"the registry carries token {old_token}, newer than this node's {token}")
            reg = core.Registry.from_json(doc)
            with self._mu:
                reports, self._reports = self._reports, []
                pending, self._pending = self._pending, []
                cl = self._cluster_locked()
            lines: list[str] = []
            for service, outcome, at in reports:
                lines += core.report(reg, self.node, service, outcome, at)
            answers: list[tuple[_Pending, dict[str, Any]]] = []
            for p in pending:
                answers.append((p, self._command(reg, p, cl, lines)))
            lines += core.decide(reg, cl)
            core.check(reg, cl.known)
            load = _load()
            if load is not None and abs(reg.loads.get(self.node, -1.0) - load) > 0.05:
                reg.loads[self.node] = load
            new_doc = reg.to_json()
            self.stats["rounds"] += 1
            if new_doc != (doc or core.Registry().to_json()) or gen == 0:
                if time.monotonic() * 1000 + self.io_timeout_ms >= self.lock.valid_until_ms:
                    raise RoundFailed("the registry lock's validity ran out before the write")
                written = self.store.write(new_doc, gen + 1, token)
                self.stats["writes"] += 1
                with self._mu:
                    self._reg, self._gen = reg, written
                self._fast_until = time.monotonic() + FAST_AFTER_CHANGE_S
                self._dirty = True  # this node's own executor acts on what it wrote
            for line in lines:
                self._logf("info", f"services: {line}")
            for p, ans in answers:
                p.reply(ans)
        except Exception as exc:
            with self._mu:  # nothing is lost: the reports go again in the next round
                self._reports = reports + self._reports if "reports" in locals() else self._reports
                if "pending" in locals():
                    for p in pending:
                        p.reply({"ok": False, "error": f"the registry was not changed: {exc}"})
            raise
        finally:
            self.lock.release(cid)

    def _command(self, reg: core.Registry, p: _Pending, cl: core.Cluster, lines: list[str]) -> dict[str, Any]:
        answer, said = core.run_command(reg, p.op, p.args, cl)
        lines += said
        return answer

    # ---------------------------------------------------------- the executor
    def _execute(self) -> None:
        with self._mu:
            reg = self._reg
            cl = self._cluster_locked()
            if self.node not in cl.present:
                return
            work = core.local_work(reg, self.node, cl)
            reported = {(s, o.action) for s, o, _ in self._reports}
        for w in work:
            if w.service in self._inflight or (w.service, w.action) in reported:
                continue
            if self.node in reg.maintenance and w.action in (core.Action.START, core.Action.STOP):
                pass  # a decision taken before the maintenance still completes
            self._launch(reg, w, cl)
        self._reconcile(reg, cl)

    def _launch(self, reg: core.Registry, w: core.Work, cl: core.Cluster) -> None:
        from .launchers import Job
        rec = reg.services[w.service]
        d = rec.definition
        argv: tuple[str, ...] = ()
        if w.action is core.Action.START:
            argv = d.start_command
        elif w.action is core.Action.STOP:
            argv = d.stop_command
        elif w.action is core.Action.NOTIFY:
            argv = d.notify_command
        elif w.action is core.Action.RECOVERY:
            argv = d.recovery_command
        summ = core.summary(reg, rec, cl)
        env = {"CLUSTERFW_SERVICE": rec.name, "CLUSTERFW_NODE": self.node, "CLUSTERFW_ACTION": w.action.value,
               "CLUSTERFW_STATE": summ["state"], "CLUSTERFW_FLAGS": "".join(summ["flags"]),
               "CLUSTERFW_NODE_STATE": summ["nodes"].get(self.node, {}).get("state", ""),
               "CLUSTERFW_OWNERS": " ".join(summ["owners"]), "CLUSTERFW_CLUSTER": self.cluster_name}
        if w.failed_node:
            env["CLUSTERFW_FAILED_NODE"] = w.failed_node
        job = Job(service=rec.name, action=w.action.value, argv=argv, unit=d.unit, env=env)
        self._inflight[rec.name] = w.action
        self._logf("info", f"services: {w.action.value} {rec.name} on {self.node}")

        def done(outcome: Any) -> None:
            self._inflight.pop(rec.name, None)
            with self._mu:
                self._reports.append((rec.name, core.Outcome(w.action, bool(outcome.ok), str(outcome.detail)),
                                      _wall_ms()))
            self._dirty = True
            self._kick.set()
        if w.action is core.Action.START:
            self.launcher.start(job, done)
        elif w.action is core.Action.STOP:
            self.launcher.stop(job, done)
        else:
            self.launcher.run(job, done)

    def _on_failure(self, service: str, reason: str) -> None:
        if self.fenced:
            return
        with self._mu:
            self._reports.append((service, core.Outcome(core.Action.FAILED, False, reason), _wall_ms()))
        self._dirty = True
        self._kick.set()

    def _reconcile(self, reg: core.Registry, cl: core.Cluster) -> None:
        """What really runs here against what the registry says: a registered
        service that is not running is reported gone; after an unfreeze, a
        service found running is adopted; a stray copy is stopped."""
        now = time.monotonic()
        frozen = {n for n, r in reg.services.items() if r.frozen}
        thawed = self._was_frozen - frozen
        self._was_frozen = frozen
        if now - self._last_reconcile < RECONCILE_S and not thawed:
            return
        self._last_reconcile = now
        with self._mu:
            reported = {s for s, _, _ in self._reports}
        for name, action in core.reconcile(reg, self.node, self.launcher.active, set(self._inflight) | reported,
                                           thawed):
            if action is core.Action.STOP:
                from .launchers import Job
                self._inflight[name] = core.Action.STOP
                self._logf("warning", f"services: {name} runs here but the registry does not place it here: "
                                      "stopping this copy")
                self.launcher.stop(Job(service=name, action="stop", unit=reg.services[name].definition.unit),
                                   lambda _o, n=name: self._inflight.pop(n, None))
            else:
                ok = action is core.Action.FOUND
                with self._mu:
                    self._reports.append((name, core.Outcome(action, ok, "" if ok else "not running"), _wall_ms()))

    def _maybe_ack_leave(self) -> None:
        if not self._leave_batch:
            return
        with self._mu:
            mine = [n for n, r in self._reg.services.items() if self.node in r.nodes]
        if mine or self._inflight:
            return
        batch, self._leave_batch = self._leave_batch, 0
        self._logf("info", f"services: nothing runs here any more: the leave goes on (batch {batch})")
        if self._ack is not None:
            self._ack(batch)


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _load() -> float | None:
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return None
