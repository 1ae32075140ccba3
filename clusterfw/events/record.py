"""One recorded membership event: what the event manager writes for every
entry of every notification it receives.

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
"""
from __future__ import annotations

import time
from typing import Any

from clusterfw.subsystems.base import Notification

RECORD_VERSION = 1
EVENT_OF_KIND = {"joining": "join", "leaving": "leave", "forced-leaving": "forced-leave"}
EVENTS = tuple(EVENT_OF_KIND.values())


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


def valid(record: object) -> bool:
    """A line of the log that ``clusterfw events`` can show."""
    return (isinstance(record, dict) and isinstance(record.get("node"), str)
            and isinstance(record.get("event"), str) and isinstance(record.get("ts"), (int, float))
            and isinstance(record.get("epoch"), int) and isinstance(record.get("batch"), int))
