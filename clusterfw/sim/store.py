"""The simulated shared disk as the simulator sees it: records in, records out,
through the real on-disk codecs, on an in-memory disk with per-sector
atomicity.

A write "lands" at one instant, whole, torn (only its first k sectors), or not
at all; a read is a snapshot at one instant.  Decoding failures come back as
``Unreadable`` exactly as the daemon would see them.
"""
from __future__ import annotations

import uuid as uuidlib

from ..core.model import SlotRecord, ViewRecord
from ..core.node import Unreadable
from ..ondisk import codec, errors
from ..ondisk.layout import Layout
from ..ondisk.simdisk import SimDisk


class SimStore:
    def __init__(self, nodes_max: int, sector_size: int = 512, seed: int = 0) -> None:
        self.layout = Layout(block_size_bytes=sector_size, nodes_max=nodes_max)
        self.cluster_uuid = uuidlib.UUID(int=(seed * 0x9E3779B97F4A7C15) % (1 << 128)).bytes
        self.disk = SimDisk(self.layout.total_bytes, sector_size=sector_size)
        self.sector_size = sector_size
        self.nodes_max = nodes_max
        # Decoding is pure, and most reads see blocks decoded before: cache
        # by content (bounded) so large simulated clusters stay fast.
        self._decoded: dict[tuple[int, bytes], SlotRecord | Unreadable] = {}
        self._views: dict[tuple[int, bytes], ViewRecord | None] = {}

    # -- writes -------------------------------------------------------------
    def slot_write(self, rec: SlotRecord) -> tuple[int, bytes]:
        data = codec.pad_to(codec.encode_slot(rec, self.cluster_uuid), self.layout.slot_size_bytes)
        if len(data) != self.layout.slot_size_bytes:
            raise AssertionError("a slot record must fit one sector")
        return self.layout.slot_offset(rec.node_id), data

    def view_write(self, rec: ViewRecord, copy: int) -> tuple[int, bytes]:
        data = codec.pad_to(codec.encode_view(rec, self.cluster_uuid), self.sector_size)
        return self.layout.view_offset(rec.node_id, copy), data

    def land(self, offset: int, data: bytes, sectors: int | None = None) -> None:
        self.disk.write(offset, data, sectors=sectors)

    def sectors_of(self, data: bytes) -> int:
        return max(1, len(data) // self.sector_size)

    # -- reads --------------------------------------------------------------
    def read_slots(self) -> dict[int, SlotRecord | Unreadable]:
        size = self.layout.slot_size_bytes
        raw = self.disk.read(self.layout.slots_offset, self.layout.slots_bytes)
        out: dict[int, SlotRecord | Unreadable] = {}
        for i in range(self.nodes_max):
            node_id = i + 1
            block = raw[i * size:(i + 1) * size]
            key = (node_id, block)
            hit = self._decoded.get(key)
            if hit is None:
                hit = self._decode_slot(node_id, block)
                if len(self._decoded) > 8 * self.nodes_max + 64:
                    self._decoded.clear()
                self._decoded[key] = hit
            out[node_id] = hit
        return out

    def _decode_slot(self, node_id: int, block: bytes) -> SlotRecord | Unreadable:
        try:
            return codec.decode_slot(block, cluster_uuid=self.cluster_uuid, node_id=node_id)
        except errors.NotWritten:
            return Unreadable("never written", never_written=True)
        except errors.BlockError as exc:
            return Unreadable(type(exc).__name__)

    def _read_view_copy(self, node_id: int, copy: int) -> ViewRecord | None:
        block = self.disk.read(self.layout.view_offset(node_id, copy), self.layout.view_copy_bytes)
        key = (node_id, block)
        if key in self._views:
            return self._views[key]
        try:
            view: ViewRecord | None = codec.decode_view(block, cluster_uuid=self.cluster_uuid, node_id=node_id)
        except errors.BlockError:
            view = None
        if len(self._views) > 4 * self.nodes_max + 64:
            self._views.clear()
        self._views[key] = view
        return view

    def read_view(self, node_id: int) -> ViewRecord | None:
        views = [v for v in (self._read_view_copy(node_id, c) for c in (0, 1)) if v is not None]
        return max(views, key=lambda v: (v.term, v.epoch, v.seq), default=None)

    def read_views(self, first: int, count: int) -> dict[int, ViewRecord | None]:
        return {n: self.read_view(n) for n in range(first, min(first + count, self.nodes_max + 1))}
