"""The DLM inside the node daemon: the in-process subsystem at level 10 that
drives ``core.dlm.DlmCore`` against the real disk and serves lock requests
of local clients (``clusterfw lock``) over the daemon's socket.

How this works
--------------
* **Its own I/O pipeline.**  One thread ("dlm") and one device handle of its
  own (a ``GuardedBlockDevice`` with the daemon's write guard): a lock
  request never waits behind a heartbeat and a slow lock stripe never delays
  one.  The thread loops ``poll`` -> perform the ops in order -> ``complete``
  and sleeps until ``wakeup_ms`` or a kick.  Before every write it asks the
  guard again (the device asks it once more right before the system call),
  so nothing is written once the node may not write (fence deadline, fenced,
  exiting); such a write is reported to the core as failed.
* **Membership.**  The hub hands over every adopted view and every
  level-10 notification through the one door of a subsystem,
  ``deliver(view, notification)`` (subsystems/base.py).  The core
  answers a notification with ``Ack`` once its work is done (the join's read
  of the lock area, the leave's releases); the thread passes that to the
  hub.  Core events are only ever taken on the DLM thread, so nothing the
  hub calls here (under its lock) calls back into the hub.
* **Clients.**  A request names a client-chosen id, unique per connection;
  the service maps it to a core request id and remembers (connection, id,
  pid).  Events go back as pushes on that connection: ``granted`` (with the
  fencing token), ``denied``, ``released``, ``revoked``, ``recovered``.  When
  a connection closes, every request it made is released or cancelled --
  a lock dies with its holder, like flock(2).
* **Validity.**  A grant and then, every heartbeat interval, a ``valid``
  push tell the holder for how long the lock is vouched for: until the
  node's fence deadline (its last completed heartbeat write + fence_after).
  The renewals come from a thread of their own ("dlm-renew"), not from the
  DLM's I/O loop, and a push goes straight to the holder's socket (node/
  api.py), so neither a slow lock-area operation nor anything a client
  asks of the API can postpone them.
  Other nodes recover the lock only after the dead timeout, which is later
  by the watchdog margin; ``clusterfw lock`` kills its command when the
  validity runs out unrenewed -- a paused, hung or fenced daemon stops its
  lock holders in time even where no watchdog resets the host.
* **Stamps.**  Each write carries the wall clock (``stamp_ms``) and the
  client's pid (``owner``): informational fields that make ``clusterfw
  locks`` able to say who holds what since when on *every* node.

Invariants: no core event is dispatched while the service lock is held;
a client sees exactly one final event (granted-then-released/revoked, or
denied) per request; at most ``CLIENT_REQUESTS_MAX`` requests per
connection.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from clusterfw.core import dlm as dlm_core
from clusterfw.core.coordinator import level_state
from clusterfw.core.dlm import (
    DLM_LEVEL,
    Ack,
    Denied,
    DlmCore,
    DlmMisuse,
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
)
from clusterfw.core.model import BatchEntry, Registration, Timing, ViewRecord
from clusterfw.core.text import incarnation_text, printable
from clusterfw.ondisk import diskio, dlm_codec
from clusterfw.ondisk.blockdev import BlockDevice
from clusterfw.ondisk.clusterdisk import ClusterDisk
from clusterfw.ondisk.errors import DeviceError
from clusterfw.ondisk.integrity import IntegrityTracker, error_text, is_unreadable
from clusterfw.ondisk.layout import Layout
from clusterfw.subsystems.base import LocalSubsystem, Notification

CLIENT_REQUESTS_MAX = 64
"""Outstanding lock requests per socket connection."""
AREA_READ_BYTES_MAX = 1 << 20
"""The own-join read of the lock area goes in reads of whole stripes of at
most this many bytes."""
WAIT_MAX_S = 1.0
@dataclass
class _ClientRequest:
    conn_id: int
    client_id: int
    pid: int
    name: str
    mode: LockMode
    requested_unix_ms: int
    granted_unix_ms: int = 0
    token: int = 0


class DlmService(LocalSubsystem):
    """The real DLM at level 10 (replaces the placeholder of the same name)."""

    level = DLM_LEVEL
    name = "dlm"
    barriers = (1, 1, 1)

    def __init__(self, *, path: str, layout: Layout, cluster_uuid: bytes, node_id: int, incarnation: int,
                 timing: Timing, guard: Callable[[], str | None], push: Callable[[int, dict[str, Any]], bool],
                 node_name: Callable[[int], str],
                 log: Callable[[str, str], None], deadline_of: Callable[[], float] | None = None) -> None:
        self.path = path
        self.layout = layout
        self.cluster_uuid = cluster_uuid
        self.node_id = node_id
        self.incarnation = incarnation
        self.timing = timing
        self._guard = guard
        self._push = push
        self._node_name = node_name
        self._logf = log
        self._deadline_of = deadline_of or (lambda: float("inf"))
        self._lock = threading.Lock()
        # Held around each request's pushes (granted, valid, the final one)
        # so that no renewal goes out before the grant or after the end.
        self._order = threading.Lock()
        self.core = DlmCore(node_id=node_id, incarnation=incarnation, stripes_max=layout.dlm_stripes_max,
                            nodes_max=layout.nodes_max, now_ms=diskio.clock_ms(),
                            can_write=lambda _now: guard() is None,
                            poll_min_ms=float(timing.fast_poll_ms), poll_max_ms=float(timing.heartbeat_interval_ms),
                            name_of=lambda n: printable(node_name(n)), time_of=_local_clock_text)
        self._requests: dict[int, _ClientRequest] = {}  # core request id -> client
        self._by_client: dict[tuple[int, int], int] = {}  # (conn id, client id) -> core request id
        self._next_req = 1
        self._kick = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew_thread: threading.Thread | None = None
        self._dev: BlockDevice | None = None
        self._ack: Callable[[int], None] | None = None
        self.stats = {"reads": 0, "writes": 0, "failed": 0, "grants": 0}
        # Damaged lock sectors, logged once per occurrence (and their repair).
        self.integrity = IntegrityTracker(log=lambda priority, text, **_fields: self._logf(priority, f"dlm: {text}"),
                                          names=self._names, clock=diskio.clock_ms)

    # ------------------------------------------------------ LocalSubsystem
    def registration(self) -> Registration:
        return Registration(self.level, self.name, self.barriers)

    def start(self, ack: Callable[[int], None], log: Callable[[str], None]) -> None:
        self._ack = ack
        self._dev = diskio.GuardedBlockDevice(self.path, guard=self._guard, io_timeout_ms=self.timing.io_timeout_ms)
        self._thread = threading.Thread(target=self._run, name="dlm", daemon=True)
        self._thread.start()
        self._renew_thread = threading.Thread(target=self._renew_loop, name="dlm-renew", daemon=True)
        self._renew_thread.start()

    def deliver(self, view: ViewRecord | None, notification: Notification | None = None) -> None:
        """The adopted view, with a level-10 batch when there is one (called
        by the hub, under its lock)."""
        now = diskio.clock_ms()
        with self._lock:
            if view is not None:
                self.core.on_view(view, now)
            if notification is not None:
                entries = [BatchEntry(e.node_id, e.kind.core_kind, e.barrier) for e in notification.entries]
                self.core.notify(notification.batch, entries, now)
        self._kick.set()

    def stop(self, reason: str = "the daemon is exiting") -> None:
        """End every request (holders are told ``revoked``) and the thread."""
        with self._lock:
            self.core.stop(reason)
            events = self.core.take_events()
        self._dispatch(events)
        self._stopping.set()
        self._kick.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.timing.io_timeout_ms / 1000.0 * 4 + 1.0)
        renew = self._renew_thread
        if renew is not None and renew is not threading.current_thread():
            renew.join(1.0)
        if self._dev is not None and (thread is None or not thread.is_alive()):
            self._dev.close()

    def _names(self) -> dict[int, str]:
        return {n: self._node_name(n) for n in range(1, self.layout.nodes_max + 1)}

    # ------------------------------------------------------------- daemon
    # ------------------------------------------------------------- clients
    def lock(self, conn_id: int, pid: int, client_id: int, name: str, mode: LockMode, timeout_ms: float | None,
             try_only: bool) -> str | None:
        """Queue a request; None, or why it cannot even be queued (the
        answer comes later as a push: granted or denied)."""
        try:
            dlm_core.check_name(name)
        except DlmMisuse as exc:
            return f"{exc}; use 1..{dlm_core.NAME_MAX_BYTES} bytes of UTF-8"
        now = diskio.clock_ms()
        with self._lock:
            why = self.core.may_request()
            if why is not None:
                return f"{why}: wait until 'clusterfw status' shows this node joined"
            if (conn_id, client_id) in self._by_client:
                return f"request id {client_id} is already in use on this connection: pick another"
            mine = sum(1 for r in self._requests.values() if r.conn_id == conn_id)
            if mine >= CLIENT_REQUESTS_MAX:
                return f"this connection has {mine} outstanding lock requests (at most {CLIENT_REQUESTS_MAX})"
            req_id = self._next_req
            self._next_req += 1
            self._requests[req_id] = _ClientRequest(conn_id, client_id, pid, name, mode, _unix_ms())
            self._by_client[(conn_id, client_id)] = req_id
            self.core.request(req_id, name, mode, now, timeout_ms=timeout_ms, try_only=try_only,
                              owner=pid if 0 <= pid <= 0xFFFFFFFF else 0)
        self._kick.set()
        return None

    def unlock(self, conn_id: int, client_id: int) -> str | None:
        with self._lock:
            req_id = self._by_client.get((conn_id, client_id))
            if req_id is None:
                return f"no lock request {client_id} on this connection (already released or denied?)"
            if not self.core.release(req_id, diskio.clock_ms()):
                return f"lock request {client_id} has already ended"
        self._kick.set()
        return None

    def disconnected(self, conn_id: int) -> None:
        """The client's connection closed: its locks go (like flock)."""
        released = []
        with self._lock:
            now = diskio.clock_ms()
            for req_id, req in list(self._requests.items()):
                if req.conn_id == conn_id and self.core.release(req_id, now):
                    released.append(req)
        for req in released:
            what = "held" if req.granted_unix_ms else "requested"
            self._logf("info", f"dlm: client pid {req.pid} went away: lock '{printable(req.name)}' ({what}) released")
        if released:
            self._kick.set()

    def has_requests(self, conn_id: int) -> bool:
        """Whether the connection has a lock request (waiting or held)."""
        with self._lock:
            return any(r.conn_id == conn_id for r in self._requests.values())

    def local_requests(self) -> list[dict[str, Any]]:
        """This node's requests as the core sees them, with their clients."""
        with self._lock:
            holdings = self.core.holdings()
            clients = dict(self._requests)
        out = []
        for h in holdings:
            client = clients.get(h.req_id)
            out.append({
                "name": h.name, "mode": h.mode.name.lower(), "state": h.state, "ticket": h.ticket,
                "token": h.token if h.state == "held" else None,
                "pid": client.pid if client else None,
                "since_unix_ms": (client.granted_unix_ms or client.requested_unix_ms) if client else None,
                "waiting_for": [{"node": self._node_name(b.node_id), "why": b.why,
                                 **({"stripe": b.stripe, "error": printable(b.detail)} if b.why == "damaged" else {})}
                                for b in h.blockers],
            })
        return out

    def busy(self) -> bool:
        with self._lock:
            return self.core.busy()

    def counts(self, node_id: int, incarnation: int) -> bool:
        """Whether this node's DLM counts entries of (node id, incarnation)
        now -- the rule ``clusterfw locks`` should show (``describe_area``'s
        ``counted``)."""
        with self._lock:
            return self.core.counts(node_id, incarnation)

    def describe_area(self, area: dict[int, dict[int, Any]], view: ViewRecord | None) -> list[dict[str, Any]]:
        """``describe_area`` with this DLM's counting rule."""
        return describe_area(area, view, self._node_name, counted=self.counts)

    # -------------------------------------------------------- the I/O loop
    def _run(self) -> None:
        core = self.core
        while not self._stopping.is_set():
            self._kick.clear()
            now = diskio.clock_ms()
            with self._lock:
                ops = core.poll(now)
                events = core.take_events()
                wake = core.wakeup_ms()
            self._dispatch(events)
            self.integrity.flush()
            if not ops:
                self._kick.wait(min(max(0.0, (wake - now) / 1000.0), WAIT_MAX_S))
                continue
            results = []
            for op in ops:
                if self._stopping.is_set():
                    break  # the core treats the rest as failed
                results.append(self._perform(op))
            with self._lock:
                if core.stopped is None:
                    core.complete(diskio.clock_ms(), results)
                events = core.take_events()
            self._dispatch(events)

    def valid_for_ms(self, now: float) -> int:
        """How long this node's locks are vouched for from ``now``: until
        the fence deadline (a node that has not completed a heartbeat write
        by then stops all cluster-managed work); 0 if it may not write or the
        adopted view no longer shows it joined at the DLM level (its holders
        are revoked then: the others may recover its entries)."""
        if self._guard() is not None or not self.core.joined_here:
            return 0
        return int(max(0.0, min(self._deadline_of() - now, 3_600_000.0)))

    def no_validity_reason(self) -> str:
        """Why :meth:`valid_for_ms` is 0, in words for the holder."""
        refused = self._guard()
        if refused is not None:
            return refused
        return "this node is no longer joined at the DLM level (leaving or forced out)"

    def _renew_loop(self) -> None:
        """Every heartbeat interval, tell each holder how long its lock is
        still vouched for; ``clusterfw lock`` kills its command when that
        runs out without a renewal (a paused or fenced daemon stops them)."""
        interval_s = self.timing.heartbeat_interval_ms / 1000.0
        due = time.monotonic()
        while not self._stopping.wait(max(0.0, due - time.monotonic())):
            due = max(due + interval_s, time.monotonic())
            try:
                self._renew(diskio.clock_ms())
            except Exception as exc:  # noqa: BLE001 - holders then time out, which is safe
                self._logf("error", f"dlm: renewing failed: {type(exc).__name__}: {exc}")

    def _renew(self, now: float) -> None:
        with self._order:
            holders = [r for r in list(self._requests.values()) if r.granted_unix_ms]
            if not holders:
                return
            valid = self.valid_for_ms(now)
            message: dict[str, Any] = {"op": "valid", "for_ms": valid, "until_boot_ms": now + valid}
            if valid == 0:
                # The revocation itself may still be on its way (a graceful
                # leave revokes once its batch reaches the DLM); say why now.
                message["reason"] = self.no_validity_reason()
            for req in holders:
                self._push(req.conn_id, dict(message, id=req.client_id))

    def _perform(self, op: Any) -> DlmResult:
        start = diskio.clock_ms()
        dev = self._dev
        assert dev is not None
        try:
            if isinstance(op, WriteEntry):
                refused = self._guard()
                if refused is not None:
                    self.stats["failed"] += 1
                    return DlmResult(op, False, start, diskio.clock_ms(), None, f"not written: {refused}")
                entry = dataclasses.replace(op.entry, stamp_ms=_unix_ms())
                offset, data = dlm_codec.entry_bytes(entry, self.cluster_uuid, self.layout)
                dev.write(offset, data)
                self.stats["writes"] += 1
                return DlmResult(op, True, start, diskio.clock_ms())
            if isinstance(op, ReadStripe):
                raw = dev.read(self.layout.dlm_stripe_offset(op.stripe), self.layout.dlm_stripe_bytes)
                self.stats["reads"] += 1
                value = dlm_codec.decode_stripe(raw, op.stripe, cluster_uuid=self.cluster_uuid, layout=self.layout)
                self.integrity.observe_lock_sectors({op.stripe: value})
                return DlmResult(op, True, start, diskio.clock_ms(), value)
            if isinstance(op, ReadArea):
                area = ClusterDisk(dev, self.layout, self.cluster_uuid).read_lock_area(AREA_READ_BYTES_MAX)
                self.stats["reads"] += 1
                self.integrity.observe_lock_sectors(area)  # type: ignore[arg-type]
                return DlmResult(op, True, start, diskio.clock_ms(), area)
        except DeviceError as exc:
            self.stats["failed"] += 1
            return DlmResult(op, False, start, diskio.clock_ms(), None, str(exc))
        raise AssertionError(f"unknown DLM op {op!r}")

    # -------------------------------------------------------------- events
    def _dispatch(self, events: list[Any]) -> None:
        for ev in events:
            if isinstance(ev, Ack):
                if self._ack is not None:
                    self._ack(ev.batch_id)
                continue
            req = self._requests.get(ev.req_id)
            if req is None:
                continue  # an internal withdrawal, or a request of a closed connection
            if isinstance(ev, Granted):
                with self._order:
                    req.granted_unix_ms, req.token = _unix_ms(), ev.token
                    self.stats["grants"] += 1
                    now = diskio.clock_ms()
                    valid = self.valid_for_ms(now)
                    self._push(req.conn_id, {"op": "granted", "id": req.client_id, "name": ev.name,
                                             "mode": ev.mode.name.lower(), "token": ev.token,
                                             "valid_ms": valid, "until_boot_ms": now + valid})
            elif isinstance(ev, Recovered):
                who = self._node_name(ev.from_node)
                self._logf("notice", f"dlm: lock '{printable(ev.name)}' of {printable(who)} incarnation {ev.incarnation:x} recovered "
                                     f"(that incarnation is out at the DLM level); waiter pid {req.pid} goes on")
                self._push(req.conn_id, {"op": "recovered", "id": req.client_id, "name": ev.name, "from": who,
                                         "incarnation": incarnation_text(ev.incarnation)})
            else:
                final: dict[str, Any]
                if isinstance(ev, Denied):
                    final = {"op": "denied", "id": req.client_id, "name": req.name, "reason": ev.reason,
                             "kind": ev.kind.value}
                    if ev.blockers:
                        final["blockers"] = [{"node": printable(self._node_name(b.node_id)), "why": b.why,
                                              "pid": b.owner or None, "since_unix_ms": b.since_unix_ms or None}
                                             for b in ev.blockers]
                elif isinstance(ev, Released):
                    final = {"op": "released", "id": req.client_id, "name": req.name}
                elif isinstance(ev, Revoked):
                    self._logf("warning", f"dlm: lock '{printable(ev.name)}' of pid {req.pid} revoked: {ev.reason}")
                    final = {"op": "revoked", "id": req.client_id, "name": req.name, "reason": ev.reason}
                else:
                    continue
                with self._order:
                    with self._lock:
                        self._requests.pop(ev.req_id, None)
                        self._by_client.pop((req.conn_id, req.client_id), None)
                    self._push(req.conn_id, final)


def _local_clock_text(unix_ms: int) -> str:
    """A lock writer's stamp in denials: the host's local time."""
    return time.strftime("%H:%M:%S", time.localtime(unix_ms / 1000))


def _unix_ms() -> int:
    return int(time.time() * 1000)


def describe_area(area: dict[int, dict[int, Any]], view: ViewRecord | None,
                  node_name: Callable[[int], str],
                  counted: Callable[[int, int], bool] | None = None) -> list[dict[str, Any]]:
    """The lock table as ``clusterfw locks`` shows it: every sector that asks
    for or holds a lock, whether it counts (a dead or departed incarnation's
    leftover does not; ``counted``, the DLM's own rule, else the view's), and
    every sector that does not decode (state "damaged": it blocks its stripe
    while its node counts), sorted by name and ticket."""
    members = {m.node_id: m for m in view.members} if view is not None else {}

    def node_counts(node_id: int) -> bool:
        m = members.get(node_id)
        return m is not None and level_state(m, DLM_LEVEL) != "inactive"

    rows: list[dict[str, Any]] = []
    for stripe, sectors in area.items():
        for node_id, entry in sectors.items():
            if is_unreadable(entry):
                error = error_text(entry)
                if error is None:
                    continue  # never written
                rows.append({
                    "name": "?", "mode": "-", "state": "damaged", "node": node_name(node_id), "node_id": node_id,
                    "pid": None, "ticket": 0, "token": None, "since_unix_ms": None, "stripe": stripe,
                    "counts": node_counts(node_id), "incarnation": None, "damaged": True, "error": error,
                })
                continue
            if not isinstance(entry, LockEntry) or entry.state is EntryState.FREE:
                continue
            m = members.get(node_id)
            if counted is not None:
                counts = counted(node_id, entry.incarnation)
            else:
                counts = (m is not None and m.incarnation == entry.incarnation
                          and level_state(m, DLM_LEVEL) != "inactive")
            rows.append({
                "name": entry.name, "mode": entry.mode.name.lower(), "state": entry.state.name.lower(),
                "node": node_name(node_id), "node_id": node_id, "pid": entry.owner or None,
                "ticket": entry.ticket, "token": entry.token if entry.state is EntryState.HELD else None,
                "since_unix_ms": entry.stamp_ms or None, "stripe": stripe,
                "counts": counts, "incarnation": incarnation_text(entry.incarnation),
            })
    order = {"held": 0, "waiting": 1, "choosing": 2, "damaged": 4}
    rows.sort(key=lambda r: (r["name"], order.get(r["state"], 3), r["ticket"], r["node_id"]))
    return rows
