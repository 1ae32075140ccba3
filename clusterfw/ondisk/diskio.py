"""A node's disk I/O: NodeCore's ops carried out on the real device (the
daemon's and its in-process subsystems', which is why it lives here and not
in node/).

How this works
--------------
``perform`` carries out one op of a cycle against a ``ClusterDisk`` and
returns the ``OpResult`` NodeCore expects, with start and end times on the
daemon's clock.  A ``DeviceError`` (EIO, timeout) becomes ``ok=False``: a
failed renewal, never an exception.  Decoding failures come back per block
as ``Unreadable`` (``never_written`` for an all-zero block), as the
simulator's store reports them.

``GuardedBlockDevice`` is a ``BlockDevice`` whose every write asks a guard,
on the I/O worker thread, immediately before the ``pwritev`` system call,
whether it may still be issued.  The daemon's guard says no once the node
has fenced or its fence deadline has passed.  This closes the window between
"the core produced a write" and "the write is issued": a daemon that was
paused (SIGSTOP, a stalled VM) right after NodeCore produced a write finds
the deadline passed when it resumes and the write is refused.  What no user
space code can close is the last few instructions before the system call;
the timing rule and the watchdog cover that (docs/daemon.md).

Invariant: no write reaches the device while the guard refuses it.
"""
from __future__ import annotations

from typing import Collection

import errno
import mmap
from typing import Callable

from clusterfw.core.model import SlotRecord, ViewRecord
from clusterfw.core.node import Op, OpResult, ReadSlots, ReadView, ReadViews, Unreadable, WriteSlot, WriteView
from clusterfw.host.clocks import clock_ms as clock_ms  # the daemon's clock, re-exported for the I/O callers
from clusterfw.ondisk.blockdev import BlockDevice
from clusterfw.ondisk.clusterdisk import ClusterDisk
from clusterfw.ondisk.errors import DeviceError, NotWritten
from clusterfw.ondisk.layout import VIEW_COPIES, VIEW_COPY_BYTES


class WriteRefused(OSError):
    pass


class GuardedBlockDevice(BlockDevice):
    """A BlockDevice that asks ``guard()`` before every write system call;
    ``guard`` returns ``None`` to allow it or the reason to refuse."""

    def __init__(self, path: str, *, guard: Callable[[], str | None], **kwargs: object) -> None:
        self.guard = guard
        super().__init__(path, **kwargs)  # type: ignore[arg-type]

    def _pwrite(self, buf: mmap.mmap, offset: int) -> int:
        refusal = self.guard()
        if refusal is not None:
            raise WriteRefused(errno.ECANCELED, f"write refused: {refusal}")
        return super()._pwrite(buf, offset)


def _slots_value(disk: ClusterDisk, configured: Collection[int] | None = None) -> dict[int, SlotRecord | Unreadable]:
    """Every slot; a slot of an id that is not in the node table
    (``configured``) and does not decode counts as never written: damage
    in a slot nobody owns must never block an election."""
    out: dict[int, SlotRecord | Unreadable] = {}
    for node_id, entry in enumerate(disk.read_slots(), start=1):
        if isinstance(entry, SlotRecord):
            out[node_id] = entry
        elif isinstance(entry, NotWritten) or (configured is not None and node_id not in configured):
            out[node_id] = Unreadable("never written", never_written=True)
        else:
            out[node_id] = Unreadable(f"{type(entry).__name__}: {entry}")
    return out


def read_views(disk: ClusterDisk, first: int, count: int) -> dict[int, ViewRecord | None]:
    """The best valid view of the view pairs of nodes ``first`` ..
    ``first + count - 1`` (ids past the layout's last are left out), in one
    I/O: None for a pair in which neither copy decodes."""
    layout = disk.layout
    count = max(0, min(count, layout.nodes_max - first + 1))
    if count == 0:
        return {}
    pair_bytes = VIEW_COPIES * VIEW_COPY_BYTES
    raw = disk.dev.read(layout.view_pair_offset(first), count * pair_bytes)
    out: dict[int, ViewRecord | None] = {}
    for index in range(count):
        best = disk.view_from_bytes(first + index, raw[index * pair_bytes:(index + 1) * pair_bytes])
        out[first + index] = best if isinstance(best, ViewRecord) else None
    return out


def perform(disk: ClusterDisk, op: Op, configured: Collection[int] | None = None) -> OpResult[Op]:
    """Carry out one op; never raises for a failed or timed-out I/O.
    ``configured``: the node ids of the node table (see ``_slots_value``)."""
    start = clock_ms()
    value: object = None
    try:
        if isinstance(op, WriteSlot):
            disk.write_slot(op.record)
        elif isinstance(op, ReadSlots):
            value = _slots_value(disk, configured)
        elif isinstance(op, ReadView):
            view = disk.read_view(op.node_id)
            value = view if isinstance(view, ViewRecord) else None
        elif isinstance(op, ReadViews):
            value = read_views(disk, op.first, op.count)
        elif isinstance(op, WriteView):
            disk.write_view(op.record, op.copy)
        else:
            raise AssertionError(f"unknown op {op!r}")
    except DeviceError as exc:
        return OpResult(op, False, start, clock_ms(), None, str(exc))
    return OpResult(op, True, start, clock_ms(), value)


def read_own_slot(disk: ClusterDisk, node_id: int) -> dict[int, SlotRecord] | None:
    """Our own slot, as ``{node_id: record}`` (None if it cannot be read or
    decoded: no evidence either way)."""
    try:
        rec = disk.read_slot(node_id)
    except DeviceError:
        return None
    return {node_id: rec} if isinstance(rec, SlotRecord) else None


def own_slot_problem(value: object, node_id: int, incarnation: int,
                     previous: SlotRecord | None) -> SlotRecord | None:
    """If the slot area just read shows ``node_id``'s slot written by another
    incarnation than ours -- and not the record that was there when we
    started -- return that record: another host is writing this node's slot."""
    if not isinstance(value, dict):
        return None
    rec = value.get(node_id)
    if not isinstance(rec, SlotRecord) or rec.incarnation == incarnation:
        return None
    if previous is not None and (rec.incarnation, rec.seq) == (previous.incarnation, previous.seq):
        return None  # our first write has not landed (or failed): still the old record
    return rec


