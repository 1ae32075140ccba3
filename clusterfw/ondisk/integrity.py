"""Which areas of the shared disk this node found damaged, logged once per
occurrence.

How this works
--------------
``IntegrityTracker`` is fed everything the daemon reads: every ``OpResult``
of the io thread (``observe_result``: slots, view pairs, views) and the
periodic re-check of the areas no cycle reads (``observe_superblock``,
``observe_node_table``, ``observe_view_copies``).  It keeps one entry per
*area* that is damaged now -- the superblock, a node-table entry, a node's
slot, a node's view copy -- and

* logs when an area *becomes* damaged (node name and id, the area, the
  decode error) and when it is readable again ("repaired after N s"), never
  every cycle;
* counts the occurrences per kind of area since the daemon started;
* notices a slot whose ``seq`` goes backwards within one incarnation (an
  old record written back over a newer one: a replay) and logs it once,
  and again when the slot has moved past the replayed record.

Rules:

* a block that was never written (all zeros) is not damage;
* slots and view areas of node ids that are not in the node table are
  ignored: never reported, never counted;
* a read that failed (I/O error, timeout) is no evidence either way;
* a view copy can span several sectors and the master may be writing it
  while we read it: a copy is declared damaged only when two reads at
  least ``confirm_ms`` apart both reject it (``suspects()`` says which
  pairs the re-check should read again).  Slots, the superblock and the
  node table are single writes or admin-only and are declared at once.

Log lines are queued by the observing thread and written by ``flush()``
(the daemon calls it off the io thread), so tracking never waits for the
log on the heartbeat path.  Thread-safe.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from clusterfw.core.model import NodeConfig, SlotRecord, SuperBlock, ViewRecord
from clusterfw.core.node import Op, OpResult, ReadSlots, ReadView, ReadViews, WriteSlot, WriteView
from clusterfw.core.text import printable  # the one escaping helper (clusterfw.core.text)
from clusterfw.ondisk.errors import BlockError, NotWritten

SUPERBLOCK = "superblock"
NODE_TABLE = "node-table"
SLOT = "slot"
VIEW = "view"
SLOT_REPLAY = "slot-replay"
KINDS = (SUPERBLOCK, NODE_TABLE, SLOT, VIEW, SLOT_REPLAY)
LOCK_SECTOR = "lock-sector"
"""DLM lock sectors, key (LOCK_SECTOR, node id, stripe): tracked by the DLM's
own tracker (``observe_lock_sectors``), counted only once seen."""
COPY_NAMES = ("A", "B")

LogFn = Callable[..., None]


def error_text(value: object) -> str | None:
    """The decode error a read returned, as text; ``None`` if the value is
    a record or a block that was never written (neither is damage)."""
    if isinstance(value, NotWritten):
        return None
    if isinstance(value, BlockError):
        return printable(f"{type(value).__name__}: {value}")
    if getattr(value, "never_written", None) is True:
        return None
    reason = getattr(value, "reason", None)  # core.node.Unreadable
    if isinstance(reason, str) and hasattr(value, "never_written"):
        return printable(reason)
    return None


def is_unreadable(value: object) -> bool:
    return isinstance(value, BlockError) or (hasattr(value, "never_written") and hasattr(value, "reason"))


@dataclass
class Damage:
    kind: str
    node_id: int  # 0: the superblock
    copy: int | None  # a view copy (0 = A, 1 = B); None: the slot, or a view whose copy is not known
    error: str
    since_ms: float
    detail: str = ""  # replays: "seq 812 -> 640 in incarnation 5f3a"


def area_label(kind: str, node_id: int, copy: int | None) -> str:
    if kind == SUPERBLOCK:
        return "superblock"
    if kind == NODE_TABLE:
        return f"node table entry {node_id}"
    if kind == SLOT:
        return "slot"
    if kind == SLOT_REPLAY:
        return "slot (replayed)"
    if kind == LOCK_SECTOR:
        return f"lock sector on stripe {copy}"
    if copy is None:
        return "view"
    return f"view copy {copy} ({COPY_NAMES[copy]})"


class IntegrityTracker:
    def __init__(self, *, log: LogFn, names: Callable[[], Mapping[int, str]], clock: Callable[[], float],
                 confirm_ms: float = 200.0) -> None:
        self._log_fn = log
        self._names = names
        self._clock = clock
        self.confirm_ms = confirm_ms
        self._lock = threading.Lock()
        self._damaged: dict[tuple[str, int, int | None], Damage] = {}
        self._suspect: dict[tuple[str, int, int | None], float] = {}
        self._counts = {kind: 0 for kind in KINDS}
        self._repaired = {kind: 0 for kind in KINDS}
        self._table: dict[int, str] = {}  # valid node-table entries of the last re-check
        self._slot_high: dict[int, tuple[int, int]] = {}  # node -> (incarnation, highest seq seen)
        self._pending: list[tuple[str, str, dict[str, Any]]] = []
        self.last_check_ms: float | None = None
        self._check_running = False
        self._next_check_ms = float("-inf")
        self._round_robin = -1

    # ------------------------------------------------------------ helpers
    def configured(self) -> dict[int, str]:
        names = dict(self._table)
        try:
            names.update(self._names())
        except Exception:  # noqa: BLE001 - a names source that fails must not stop tracking
            pass
        return names

    def _who(self, node_id: int, names: Mapping[int, str]) -> str:
        return f"node {printable(names.get(node_id, f'node{node_id}'))} (id {node_id})"

    def _describe(self, kind: str, node_id: int, copy: int | None, names: Mapping[int, str]) -> str:
        if kind == SUPERBLOCK:
            return "the superblock"
        if kind == NODE_TABLE:
            known = names.get(node_id)
            return f"node table entry {node_id}" + (f" (node {printable(known)})" if known else "")
        return f"{area_label(kind, node_id, copy)} of {self._who(node_id, names)}"

    def _queue(self, priority: str, text: str, **fields: Any) -> None:
        self._pending.append((priority, text, fields))

    def _fields(self, kind: str, node_id: int, copy: int | None, names: Mapping[int, str],
                state: str) -> dict[str, Any]:
        fields: dict[str, Any] = {"AREA": area_label(kind, node_id, copy), "INTEGRITY": state}
        if kind not in (SUPERBLOCK,):
            fields["AREA_NODE_ID"] = node_id
            if node_id in names:
                fields["AREA_NODE"] = printable(names[node_id])
        return fields

    # ----------------------------------------------- damaged / readable again
    def _bad(self, key: tuple[str, int, int | None], error: str, now: float, names: Mapping[int, str],
             confirm: bool) -> None:
        if key in self._damaged:
            self._damaged[key].error = error  # still damaged: the same occurrence
            return
        since = now
        if confirm:
            first = self._suspect.get(key)
            if first is None:
                self._suspect[key] = now
                return
            if now - first < self.confirm_ms:
                return
            since = first
        self._suspect.pop(key, None)
        kind, node_id, copy = key
        self._damaged[key] = Damage(kind, node_id, copy, error, since)
        self._counts[kind] = self._counts.get(kind, 0) + 1
        what = self._describe(kind, node_id, copy, names)
        hint = {
            SUPERBLOCK: "the disk was overwritten or re-initialised; check it with 'clusterfw disk dump' "
                        "from a host that has no daemon running",
            NODE_TABLE: "only 'clusterfw node add' writes the node table; check it with 'clusterfw disk dump'",
            SLOT: "if its node's daemon runs, its next heartbeat rewrites it; if it stays damaged, stop that "
                  "daemon and reset the slot with 'clusterfw disk reset-slot DEVICE "
                  f"{printable(names.get(node_id, node_id))}'",
            VIEW: "the master rewrites its copies at the next membership change; the other copy, if valid, "
                  "holds the previous view",
            LOCK_SECTOR: "while its node counts, locks on that stripe wait for it; its node's DLM rewrites "
                         "it at its next write there or its next read of the lock area",
        }[kind]
        priority = "error" if kind in (SUPERBLOCK, NODE_TABLE) else "warning"
        self._queue(priority, f"DAMAGED: {what} does not decode: {error} ({hint})",
                    **self._fields(kind, node_id, copy, names, "damaged"))

    def _good(self, key: tuple[str, int, int | None], now: float, names: Mapping[int, str]) -> None:
        self._suspect.pop(key, None)
        damage = self._damaged.pop(key, None)
        if damage is None:
            return
        kind, node_id, copy = key
        self._repaired[kind] = self._repaired.get(kind, 0) + 1
        self._queue("notice", f"repaired: {self._describe(kind, node_id, copy, names)} is readable again "
                              f"after {(now - damage.since_ms) / 1000.0:.1f} s",
                    **self._fields(kind, node_id, copy, names, "repaired"))

    def _forget_unconfigured(self, names: Mapping[int, str]) -> None:
        for key in [k for k in self._damaged if k[0] in (SLOT, VIEW, SLOT_REPLAY) and k[1] not in names]:
            del self._damaged[key]
        for key in [k for k in self._suspect if k[0] in (SLOT, VIEW) and k[1] not in names]:
            del self._suspect[key]

    # -------------------------------------------------------------- inputs
    def observe_result(self, result: OpResult[Op]) -> None:
        """One io-thread ``OpResult``: slot reads (a dict of node id ->
        record or Unreadable) and view reads (``ReadView``: a record;
        ``ReadViews``: a dict of node id -> record, Unreadable or a pair of
        copies).  Writes and failed reads carry no evidence."""
        op, value = result.op, result.value
        if not result.ok or value is None or isinstance(op, (WriteSlot, WriteView)):
            return
        name = type(op).__name__
        try:
            if isinstance(op, ReadSlots):
                if isinstance(value, Mapping):
                    self.observe_slots(value)
            elif isinstance(op, (ReadView, ReadViews)):
                self._observe_views_value(value, op.node_id if isinstance(op, ReadView) else None)
        except Exception as exc:  # noqa: BLE001 - tracking must never break the io thread
            with self._lock:
                self._queue("warning", f"integrity tracking skipped a {name} result: {type(exc).__name__}: {exc}")

    def _observe_views_value(self, value: object, node_id: int | None) -> None:
        if isinstance(value, ViewRecord):
            self.observe_view(value.node_id, value)
        elif isinstance(value, Mapping):
            for nid, entry in value.items():
                if isinstance(entry, (tuple, list)):
                    self.observe_view_copies(int(nid), entry)
                else:
                    self.observe_view(int(nid), entry)
        elif isinstance(value, (tuple, list)):
            pair = node_id is not None and len(value) == 2 and all(
                (isinstance(v, ViewRecord) and v.node_id == node_id) or is_unreadable(v) for v in value)
            if pair:
                assert node_id is not None
                self.observe_view_copies(node_id, value)
                return
            for entry in value:
                if isinstance(entry, ViewRecord):
                    self.observe_view(entry.node_id, entry)
        elif node_id is not None and is_unreadable(value):
            self.observe_view(node_id, value)

    def observe_slots(self, slots: Mapping[int, object] | Sequence[object]) -> None:
        """Slots by node id (a mapping), or a list whose entry ``i`` is node
        id ``i + 1`` (``ClusterDisk.read_slots``)."""
        items: Iterable[tuple[int, object]]
        items = slots.items() if isinstance(slots, Mapping) else enumerate(slots, start=1)
        now = self._clock()
        names = self.configured()
        with self._lock:
            self._forget_unconfigured(names)
            for node_id, rec in items:
                if node_id not in names:
                    continue  # slots of ids nobody added are nobody's business
                key = (SLOT, node_id, None)
                if isinstance(rec, SlotRecord):
                    self._good(key, now, names)
                    self._check_replay(node_id, rec, now, names)
                    continue
                error = error_text(rec)
                if error is None:
                    if is_unreadable(rec):  # never written: not damage, and no longer damaged
                        self._good(key, now, names)
                    continue
                self._bad(key, error, now, names, confirm=False)

    def _check_replay(self, node_id: int, rec: SlotRecord, now: float, names: Mapping[int, str]) -> None:
        key = (SLOT_REPLAY, node_id, None)
        high = self._slot_high.get(node_id)
        if high is None or high[0] != rec.incarnation:
            self._slot_high[node_id] = (rec.incarnation, rec.seq)
            damage = self._damaged.pop(key, None)
            if damage is not None:
                self._repaired[SLOT_REPLAY] += 1
                self._queue("notice", f"repaired: slot of {self._who(node_id, names)} holds a new incarnation "
                                      f"({rec.incarnation:x}): the replay is over after "
                                      f"{(now - damage.since_ms) / 1000.0:.1f} s",
                            **self._fields(SLOT_REPLAY, node_id, None, names, "repaired"))
            return
        if rec.seq < high[1]:
            if key not in self._damaged:
                detail = f"seq {high[1]} -> {rec.seq} within incarnation {rec.incarnation:x}"
                self._damaged[key] = Damage(SLOT_REPLAY, node_id, None,
                                            f"sequence went back from {high[1]} to {rec.seq}", now, detail)
                self._counts[SLOT_REPLAY] += 1
                self._queue("warning",
                            f"REPLAYED: slot of {self._who(node_id, names)} went back from seq {high[1]} to "
                            f"{rec.seq} within incarnation {rec.incarnation:x}: an old record was written "
                            f"over a newer one (a storage snapshot or cache replayed, or a stray writer); "
                            f"its node's next heartbeat moves past it",
                            **self._fields(SLOT_REPLAY, node_id, None, names, "replayed"))
            return
        if rec.seq > high[1]:
            self._slot_high[node_id] = (rec.incarnation, rec.seq)
            damage = self._damaged.pop(key, None)
            if damage is not None:
                self._repaired[SLOT_REPLAY] += 1
                self._queue("notice", f"repaired: slot of {self._who(node_id, names)} moved past the replayed "
                                      f"record (seq {rec.seq}) after {(now - damage.since_ms) / 1000.0:.1f} s",
                            **self._fields(SLOT_REPLAY, node_id, None, names, "repaired"))

    def observe_lock_sectors(self, stripes: Mapping[int, Mapping[int, object]]) -> None:
        """A read of whole lock stripes: stripe -> (node id -> ``LockEntry``
        | ``Unreadable``).  Each sector that does not decode is damaged (and
        logged) once, until a read shows it readable again."""
        now = self._clock()
        names = self.configured()
        with self._lock:
            for stripe, sectors in stripes.items():
                if not isinstance(sectors, Mapping):
                    continue
                for node_id, value in sectors.items():
                    key = (LOCK_SECTOR, node_id, stripe)
                    error = error_text(value) if is_unreadable(value) else None
                    if error is not None:
                        self._bad(key, error, now, names, confirm=False)
                    elif key in self._damaged or key in self._suspect:
                        self._good(key, now, names)

    def observe_view(self, node_id: int, value: object) -> None:
        """A node's view when only the best copy is known: a record says
        nothing about the other copy; an error means both were rejected."""
        now = self._clock()
        names = self.configured()
        with self._lock:
            if node_id not in names:
                return
            key = (VIEW, node_id, None)
            if isinstance(value, ViewRecord):
                self._good(key, now, names)
                return
            error = error_text(value)
            if error is None:
                if is_unreadable(value):
                    self._good(key, now, names)
                return
            self._bad(key, f"both copies rejected: {error}", now, names, confirm=True)

    def observe_view_copies(self, node_id: int, copies: Sequence[object]) -> None:
        """Both copies of a node's view area (``ClusterDisk.read_view_copies``
        or a view-pair read's entry)."""
        now = self._clock()
        names = self.configured()
        with self._lock:
            if node_id not in names:
                return
            if any(error_text(value) is None for value in copies[:2]):
                self._good((VIEW, node_id, None), now, names)  # a copy is readable: not "both rejected"
            for copy, value in enumerate(copies[:2]):
                key = (VIEW, node_id, copy)
                error = error_text(value)
                if error is None:
                    self._good(key, now, names)
                else:
                    self._bad(key, error, now, names, confirm=True)

    def observe_superblock(self, value: SuperBlock | BlockError) -> None:
        now = self._clock()
        names = self.configured()
        with self._lock:
            key = (SUPERBLOCK, 0, None)
            if isinstance(value, BlockError):
                self._bad(key, printable(f"{type(value).__name__}: {value}"), now, names, confirm=False)
            else:
                self._good(key, now, names)

    def observe_node_table(self, entries: Sequence[object]) -> None:
        """The node table (entry ``i`` is node id ``i + 1``).  Valid entries
        also become configured names (a node added while we run)."""
        now = self._clock()
        with self._lock:
            for node_id, entry in enumerate(entries, start=1):
                if isinstance(entry, NodeConfig):
                    self._table[node_id] = entry.name
        names = self.configured()
        with self._lock:
            for node_id, entry in enumerate(entries, start=1):
                key = (NODE_TABLE, node_id, None)
                error = None if isinstance(entry, NodeConfig) else error_text(entry)
                if error is None:
                    self._good(key, now, names)
                else:
                    self._bad(key, error, now, names, confirm=False)

    # ----------------------------------------------------- the re-check
    def start_check(self, interval_ms: float, confirm_ms: float) -> bool:
        """True if the periodic re-check is due now (every ``interval_ms``,
        sooner when a view copy awaits its confirming read) and none runs;
        the caller then runs it and calls ``checked()``."""
        now = self._clock()
        with self._lock:
            self.confirm_ms = confirm_ms
            if self._check_running:
                return False
            due = self._next_check_ms
            if self._suspect:
                due = min(due, min(self._suspect.values()) + confirm_ms)
            if now < due:
                return False
            self._check_running = True
            self._next_check_ms = now + interval_ms
            return True

    def view_nodes_to_check(self, master_id: int | None, own_id: int) -> list[int]:
        """Whose view pairs the re-check reads: the master's, our own, those
        awaiting a confirming read, and one more configured node in turn."""
        names = self.configured()
        with self._lock:
            want = {own_id, *(n for kind, n, _ in self._suspect if kind == VIEW)}
            if master_id:
                want.add(master_id)
            others = sorted(n for n in names if n not in want)
            if others:
                self._round_robin = (self._round_robin + 1) % len(others)
                want.add(others[self._round_robin])
        return sorted(n for n in want if n in names)

    def checked(self) -> None:
        """The periodic re-check ended (for ``snapshot`` and the next one)."""
        with self._lock:
            self.last_check_ms = self._clock()
            self._check_running = False

    # ------------------------------------------------------------- outputs
    def suspects(self) -> list[int]:
        """Node ids whose view copies were rejected once and must be read
        again (after ``confirm_ms``) before they count as damaged."""
        with self._lock:
            return sorted({node_id for kind, node_id, _ in self._suspect if kind == VIEW})

    def view_unreadable(self, node_id: int) -> str | None:
        """Why node ``node_id``'s view cannot be read (both copies damaged),
        or ``None``."""
        with self._lock:
            both = self._damaged.get((VIEW, node_id, None))
            if both is not None:
                return both.error
            copies = [self._damaged.get((VIEW, node_id, c)) for c in (0, 1)]
            if all(copies):
                return "; ".join(f"copy {COPY_NAMES[c]}: {d.error}" for c, d in enumerate(copies) if d)
        return None

    def flush(self) -> None:
        """Write the queued log lines (call it off the io thread)."""
        with self._lock:
            pending, self._pending = self._pending, []
        for priority, text, fields in pending:
            self._log_fn(priority, text, **fields)

    def snapshot(self) -> dict[str, Any]:
        """``{"damaged": [...], "counts": {...}, "repaired": {...}}`` for
        ``status --json``: the areas damaged now, and per kind of area how
        many times one became damaged (and readable again) since start."""
        now = self._clock()
        names = self.configured()
        with self._lock:
            damaged = sorted(self._damaged.values(), key=lambda d: ((KINDS + (LOCK_SECTOR,)).index(d.kind), d.node_id,
                                                                    d.copy or 0))
            counts = dict(self._counts)
            repaired = dict(self._repaired)
            last = self.last_check_ms
        return {
            "damaged": [damage_json(d, names, now) for d in damaged],
            "counts": counts,
            "repaired": repaired,
            "last_check_ms_ago": None if last is None else round(now - last),
        }


def damage_json(d: Damage, names: Mapping[int, str], now_ms: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": d.kind,
        "area": area_label(d.kind, d.node_id, d.copy),
        "node": None if d.kind == SUPERBLOCK else printable(names.get(d.node_id, f"node{d.node_id}")),
        "node_id": None if d.kind == SUPERBLOCK else d.node_id,
        "copy": d.copy,
        "error": d.error,
    }
    if d.detail:
        out["detail"] = d.detail
    if now_ms is not None:
        out["for_ms"] = round(now_ms - d.since_ms)
    return out


def warning_lines(integrity: Mapping[str, Any] | None, history: bool = True) -> list[str]:
    """The human warnings of a status object's ``integrity`` part (with
    ``history``, also what was damaged since the daemon started)."""
    if not integrity:
        return []
    lines = []
    for d in integrity.get("damaged", []):
        if d.get("kind") == SUPERBLOCK:
            what = "the superblock"
        elif d.get("kind") == NODE_TABLE:
            what = f"node table entry {d.get('node_id')}"
        else:
            what = f"{d.get('area')} of node {printable(d.get('node'))} (id {d.get('node_id')})"
        since = d.get("for_ms")
        age = f" for {since / 1000.0:.1f} s" if isinstance(since, (int, float)) else ""
        hint = {
            SLOT: f" -- if it stays damaged, stop node {printable(d.get('node'))}'s daemon and run "
                  f"'clusterfw disk reset-slot DEVICE {printable(d.get('node'))}'",
            SLOT_REPLAY: " -- an old record was written back; the node's next heartbeat moves past it",
            VIEW: " -- the master rewrites its copies at its next membership change",
        }.get(d.get("kind"), " -- check the disk: 'clusterfw disk dump DEVICE'")
        lines.append(f"WARNING: {what} is damaged{age}: {printable(d.get('error'))}{hint}")
    counts = {k: v for k, v in (integrity.get("counts") or {}).items() if v}
    if counts and history:
        seen = ", ".join(f"{kind} {n}" for kind, n in counts.items())
        lines.append(f"damage seen since the daemon started: {seen}")
    return lines
