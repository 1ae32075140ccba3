"""The records of the event log: one per membership transition the event
manager is notified of, and one per occurrence of a defined event whose
action ran.

How this works
--------------
The daemon notifies the event manager's level (40) with a batch
(``clusterfw.subsystems.base.Notification``): one or more nodes'
transitions, each with its kind and barrier, plus the other members' states
at this level.  ``records_from`` turns a batch into one JSON-ready dict per
entry::

    {"v": 1, "time": "2025-01-01T12:00:01.234Z", "ts": 1735732801.234,
     "observer": "n1", "node": "n2", "id": 2, "event": "forced-leave",
     "kind": "forced-leaving", "barrier": 0, "level": 40, "epoch": 12,
     "batch": 7, "context": [{"node": "n1", "id": 1, "state": "joined"}]}

``event`` is ``join``, ``leave`` or ``forced-leave`` (the transition the
node is going through), ``kind`` the daemon's word for it, ``observer`` the
node whose event manager recorded it, ``time``/``ts`` this host's wall clock
when the notification arrived (UTC; wall-clock times of different hosts are
only as comparable as their clocks).  ``batch_key`` identifies a
notification, so that one delivered again after a re-attach is not recorded
twice.

An **occurrence** of a defined event (docs/events.md, "Events") is recorded
once its action ended (``occurrence_record``)::

    {"v": 1, "type": "occurrence", "time": "...", "ts": 1735732816.26,
     "observer": "n2", "node": "n3", "event": "web.peer-down", "service": "web",
     "watcher": "membership", "out": {"node": "n3", "transition": "forced-leave",
     "epoch": "8", "incarnation": "1f3a...", "time": "..."},
     "action": ["/usr/local/bin/page", "n3"], "exit": 0, "status": "exit 0",
     "elapsed_s": 0.012, "epoch": 8}

``node`` is the OUT ``node`` (membership) or the observer (a unit on this
node); ``epoch`` only for membership events; ``exit`` is the action's exit
status, or null when it did not exit by itself (killed by a signal, timed
out, could not be started), and ``status`` says which in words.  Records
without ``type`` (every record older versions wrote) are membership
records, so an old log reads as before.
"""
from __future__ import annotations

import time
from typing import Any

from clusterfw.core.events import EventDef, Occurrence
from clusterfw.subsystems.base import Notification

RECORD_VERSION = 1
EVENT_OF_KIND = {"joining": "join", "leaving": "leave", "forced-leaving": "forced-leave"}
EVENTS = tuple(EVENT_OF_KIND.values())
OCCURRENCE = "occurrence"


def iso_utc(ts: float) -> str:
    """``2025-01-01T12:00:01.234Z``"""
    ms = int(round(ts * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def records_from(note: Notification, observer: str, now: float | None = None) -> list[dict[str, Any]]:
    """One record per entry of ``note``, stamped with the wall clock."""
    ts = time.time() if now is None else now
    context = [{"node": name, "id": node_id, "state": state} for node_id, name, state in note.context]
    return [{
        "v": RECORD_VERSION, "time": iso_utc(ts), "ts": round(ts, 3), "observer": observer,
        "node": e.node, "id": e.node_id, "event": EVENT_OF_KIND[e.kind], "kind": e.kind.value,
        "barrier": e.barrier, "level": note.level, "epoch": note.epoch, "batch": note.batch,
        "context": context,
    } for e in note.entries]


def batch_key(level: int, epoch: int, batch: int, entries: list[tuple[int, str, int]]) -> tuple[Any, ...]:
    return (level, epoch, batch, tuple(sorted(entries)))


def note_key(note: Notification) -> tuple[Any, ...]:
    return batch_key(note.level, note.epoch, note.batch, [(e.node_id, e.kind.value, e.barrier) for e in note.entries])


def describe(record: dict[str, Any]) -> str:
    """``n2 forced-leave (epoch 12, batch 7, level 40)`` for logs."""
    barrier = f", barrier {record['barrier']}" if record.get("barrier") else ""
    return (f"{record.get('node')} {record.get('event')} (epoch {record.get('epoch')}, batch {record.get('batch')}, "
            f"level {record.get('level')}{barrier})")


def occurrence_record(event: EventDef, occurrence: Occurrence, observer: str, argv: tuple[str, ...],
                      exit_status: int | None, status: str, elapsed_s: float, now: float | None = None) -> dict[str, Any]:
    """The record of one occurrence of ``event`` and its action's outcome."""
    ts = time.time() if now is None else now
    out = dict(occurrence.out)
    record: dict[str, Any] = {
        "v": RECORD_VERSION, "type": OCCURRENCE, "time": iso_utc(ts), "ts": round(ts, 3), "observer": observer,
        "node": out.get("node", observer), "event": event.name, "service": event.service,
        "watcher": occurrence.watcher, "out": out, "action": list(argv), "exit": exit_status, "status": status,
        "elapsed_s": round(elapsed_s, 3),
    }
    if out.get("epoch", "").isdigit():
        record["epoch"] = int(out["epoch"])
    return record


def is_occurrence(record: dict[str, Any]) -> bool:
    return record.get("type") == OCCURRENCE


def describe_occurrence(record: dict[str, Any]) -> str:
    """``web.peer-down (membership: node=n3 transition=forced-leave ...): action exit 0`` for logs."""
    out = record.get("out") or {}
    params = " ".join(f"{k}={v}" for k, v in out.items() if k != "time")
    return f"{record.get('event')} ({record.get('watcher')}: {params}): action {record.get('status')}"


def valid(record: object) -> bool:
    """A line of the log that ``clusterfw events`` can show."""
    if not (isinstance(record, dict) and isinstance(record.get("node"), str)
            and isinstance(record.get("event"), str) and isinstance(record.get("ts"), (int, float))):
        return False
    if record.get("type") == OCCURRENCE:
        return isinstance(record.get("out"), dict) and isinstance(record.get("status"), str)
    return "type" not in record and isinstance(record.get("epoch"), int) and isinstance(record.get("batch"), int)
