"""How ``clusterfw events`` shows records: a table or JSON lines.

How this works
--------------
``format_table`` lays out a header and one row per record::

    TIME                     NODE  EVENT          EPOCH  BATCH  SEEN ON  ACTION
    2025-01-01 12:00:01.234  n2    join           3      2      n1
    2025-01-01 12:00:07.901  n2    forced-leave   5      4      n1
    2025-01-01 12:00:07.950  n2    web.peer-down  5             n1       exit 0

(the time in this host's local time zone; SEEN ON is the node whose event
manager recorded it).  A membership record has no ACTION; an occurrence of
a defined event (its EVENT is its name, ``SERVICE.EVENT``) has no BATCH,
an EPOCH only when the membership watcher saw it, and its action's outcome
(``exit 0``, ``killed by SIGKILL``, ``timed out after 30 s (killed)``,
``could not run ...``) as ACTION.  ``format_row`` formats one record with fixed column
widths, for ``--follow``, where later rows are not known when the first is
printed.  Every cell is escaped (``printable``): a node name or event taken
from the log cannot break the table or reach the terminal as an escape
sequence.  ``json_line`` is the record itself, one compact object a line
(JSON escapes C0 controls itself; DEL, C1 controls and other non-printable
characters are written as ``\\u`` escapes too).
"""
from __future__ import annotations

import json
import time
from typing import Any

from clusterfw.core.text import printable

HEADER = ("TIME", "NODE", "EVENT", "EPOCH", "BATCH", "SEEN ON", "ACTION")
FOLLOW_WIDTHS = (23, 8, 16, 6, 6, 8, 0)


def local_time(ts: float) -> str:
    ms = int(round(ts * 1000))
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms // 1000)) + f".{ms % 1000:03d}"


def cells(record: dict[str, Any]) -> tuple[str, ...]:
    event = str(record.get("event", "?"))
    occurrence = record.get("type") == "occurrence"
    if record.get("barrier"):
        event += f"#{record['barrier']}"
    return (local_time(float(record.get("ts", 0))), printable(record.get("node", "?")), printable(event),
            printable(record.get("epoch", "" if occurrence else "?")),
            printable(record.get("batch", "" if occurrence else "?")),
            printable(record.get("observer", "?")), printable(record.get("status", "")) if occurrence else "")


def _join(row: tuple[str, ...], widths: tuple[int, ...]) -> str:
    return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()


def format_table(records: list[dict[str, Any]]) -> str:
    rows = [HEADER, *(cells(r) for r in records)]
    widths = tuple(max(len(row[i]) for row in rows) for i in range(len(HEADER)))
    return "\n".join(_join(row, widths) for row in rows)


def format_header() -> str:
    return _join(HEADER, FOLLOW_WIDTHS)


def format_row(record: dict[str, Any]) -> str:
    return _join(cells(record), FOLLOW_WIDTHS)


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def json_line(record: dict[str, Any]) -> str:
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    # Outside strings JSON is printable ASCII: every non-printable character is inside one.
    return "".join(ch if ch.isprintable() else _json_escape(ch) for ch in text)
