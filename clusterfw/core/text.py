"""Names as people read them: the one escaping rule for everything printed or
logged, and how the core names a node.

How this works
--------------
Lock names come from any local client, node names and reasons from the
shared disk: any of them may hold a newline (which would split a log line
into two, the second looking like an entry of its own), an ESC sequence
(which a terminal obeys: colours, cursor moves, a cleared screen) or other
control characters.  ``printable`` escapes every character Python does not
call printable -- C0 controls (newline as ``\\n``, ESC as ``\\x1b``), DEL,
C1 controls, line and paragraph separators, unassigned code points -- and
leaves every other character, so the text stays on one line and means the
same.  Text that is already escaped comes out unchanged (the backslash is
printable), so escaping twice is harmless.

The core names nodes in the lines it writes for people (the master's
reasons, a try-lock's denial) through a ``NameOf`` function it is given:
the daemon passes one that reads the node table, the simulator keeps the
default ``n<id>``.

An incarnation (a random 63-bit number) is written as lowercase hex, in
log lines and in every JSON output alike (``incarnation_text``): as a JSON
number it would exceed what a double holds exactly, and ``jq`` would round
it.  Pure: no I/O.
"""
from __future__ import annotations

from typing import Callable

NameOf = Callable[[int], str]


def incarnation_text(incarnation: int) -> str:
    """``52e979a6baa9455``: an incarnation as every JSON output and log line shows it."""
    return f"{incarnation:x}"


def incarnation_json(incarnation: int | None) -> str | None:
    """An incarnation for JSON: its hex string, or null when there is none."""
    return None if incarnation is None else incarnation_text(incarnation)


def printable(text: object) -> str:
    """``text`` with control and other non-printable characters escaped
    (``\\x1b``, ``\\n``): anything taken from a client or the disk, before
    it is printed or logged."""
    out = []
    for ch in str(text):
        if ch.isprintable():
            out.append(ch)
        elif ch in "\n\r\t":
            out.append(repr(ch)[1:-1])
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def node_id_name(node_id: int) -> str:
    """The default ``NameOf``: ``n<id>`` (what the simulator's nodes are
    called)."""
    return f"n{node_id}"


def name_of_table(names: Callable[[], "dict[int, str]"], missing: NameOf = node_id_name) -> NameOf:
    """A ``NameOf`` that looks ``node_id`` up in ``names()`` (read at every
    call: the table may be replaced) and escapes it; ``missing(node_id)``
    for ids the table lacks."""
    def name_of(node_id: int) -> str:
        name = names().get(node_id)
        return printable(name) if name else missing(node_id)
    return name_of
