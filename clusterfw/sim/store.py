"""The simulated shared disk: the daemon's ``ClusterDisk`` over an in-memory
``SimDisk``, initialised by ``disk init``'s ``format_disk`` and ``add_node``,
so that every record the simulator writes or reads goes through the same
encoder, placement and decoders as the daemon's.

How this works
--------------
The daemon writes a record with ``ClusterDisk.write_slot`` / ``write_view``:
``Placement.slot_bytes`` / ``view_bytes`` (encode, pad to whole logical
blocks, decode again and compare), then one device write.  In the simulator a
write takes time and may be torn, lost, reported failed yet landed, or land
late, so it splits the two halves: ``slot_write`` / ``view_write`` return
Placement's ``(offset, bytes)`` when the write is issued, and ``land`` puts
those bytes on the ``SimDisk`` when -- and as far as -- the write completes:
whole, only its first ``k`` sectors (a torn write), or not at all.  Damage is
injected with ``land`` too, at the byte and sector level: random bytes over a
sector, an old record's bytes written back, a lock sector overwritten.

Reads are the daemon's (``ondisk/diskio.py``, ``subsystems/dlm/service.py``), each a
snapshot at one instant: ``slots_value`` is ``ClusterDisk.read_slots`` (one
read of the slot area) with each block that does not decode given to the core
as ``Unreadable``; ``ClusterDisk.read_view`` reads both copies at once and
picks the best valid one; ``read_views`` reads a range of view pairs in one
read; lock stripes are decoded by ``dlm_codec`` and the whole lock area by
``ClusterDisk.read_lock_area``.

Decoding is pure, and most reads see blocks decoded before: the slot,
view-copy and registry decoders' results are cached by content (bounded), so large
simulated clusters stay fast; a cached result is exactly what decoding the
same bytes again returns.

Invariant: the simulator never encodes, places or decodes a record itself.
"""
from __future__ import annotations

import uuid as uuidlib
from typing import Callable, TypeVar

from ..core import timing as timing_mod
from ..core.dlm import LockEntry
from ..core.model import SlotRecord, ViewRecord
from ..core.node import Unreadable
from ..ondisk import admin, dlm_codec
from ..ondisk.clusterdisk import ClusterDisk
from ..ondisk.errors import BlockError, NotWritten
from ..ondisk.layout import Layout
from ..ondisk.registry_codec import Damaged, RegistryCopy, RegistryHead
from ..ondisk.simdisk import SimDisk

CLUSTER_NAME = "sim"


def node_name(node_id: int) -> str:
    """The simulated node's name in the node table (and in every trace)."""
    return f"n{node_id}"


class SimStore(ClusterDisk):
    """A formatted in-memory cluster disk; ``dev`` is its ``SimDisk``."""

    dev: SimDisk

    def __init__(self, nodes_max: int, sector_size: int = 512, seed: int = 0, node_ids: tuple[int, ...] = (),
                 profile: timing_mod.Profile = timing_mod.Profile()) -> None:
        dev = SimDisk(Layout(block_size_bytes=sector_size, nodes_max=nodes_max).total_bytes, sector_size=sector_size)
        sb = admin.format_disk(dev, CLUSTER_NAME, nodes_max, profile.heartbeat_interval_ms, profile.io_timeout_ms,
                               cluster_uuid=uuidlib.UUID(int=(seed * 0x9E3779B97F4A7C15) % (1 << 128)).bytes,
                               created_at_s=0)
        super().__init__(dev, Layout.from_superblock(sb), sb.cluster_uuid)
        self.superblock = sb
        for node_id in node_ids:
            admin.add_node(self, node_name(node_id), node_id)
        self.sector_size = sector_size
        self.nodes_max = nodes_max
        self._slots: dict[tuple[int, bytes], SlotRecord | BlockError] = {}
        self._views: dict[tuple[int, bytes], ViewRecord | BlockError] = {}
        self._registry_copies: dict[bytes, RegistryCopy | Damaged] = {}
        self._registry_heads: dict[bytes, RegistryHead | Damaged] = {}

    # -- writes -------------------------------------------------------------
    def slot_write(self, rec: SlotRecord) -> tuple[int, bytes]:
        """``(offset, bytes)`` of a slot write, as ``write_slot`` would write it."""
        return self.slot_bytes(rec)

    def view_write(self, rec: ViewRecord, copy: int) -> tuple[int, bytes]:
        """``(offset, bytes)`` of a view write, as ``write_view`` would write it."""
        return self.view_bytes(rec, copy)

    def entry_write(self, entry: LockEntry) -> tuple[int, bytes]:
        """``(offset, bytes)`` of a lock-entry write, as the daemon's DLM writes it."""
        return dlm_codec.entry_bytes(entry, self.cluster_uuid, self.layout)

    def land(self, offset: int, data: bytes, sectors: int | None = None) -> None:
        """Complete a write: all of ``data``, or only its first ``sectors``."""
        self.dev.write(offset, data, sectors=sectors)

    def sectors_of(self, data: bytes) -> int:
        return max(1, len(data) // self.sector_size)

    # -- reads, as the daemon hands them to its cores --------------------------
    def slots_value(self) -> dict[int, SlotRecord | Unreadable]:
        """Every slot from one read, as ``diskio.perform`` gives ``ReadSlots``
        (without a node table filter: damage in an unused slot reaches the
        core as it is)."""
        out: dict[int, SlotRecord | Unreadable] = {}
        for node_id, entry in enumerate(self.read_slots(), start=1):
            if isinstance(entry, SlotRecord):
                out[node_id] = entry
            elif isinstance(entry, NotWritten):
                out[node_id] = Unreadable("never written", never_written=True)
            else:
                out[node_id] = Unreadable(f"{type(entry).__name__}: {entry}")
        return out

    def view_value(self, node_id: int) -> ViewRecord | None:
        """The best valid view of ``node_id``'s pair, as for ``ReadView``."""
        view = self.read_view(node_id)
        return view if isinstance(view, ViewRecord) else None

    def read_views(self, first: int, count: int) -> dict[int, ViewRecord | None]:
        """The best valid view of pairs ``first`` .. ``first + count - 1`` in
        one read, as ``diskio.read_views`` (ids past the last are left out)."""
        count = max(0, min(count, self.layout.nodes_max - first + 1))
        if count == 0:
            return {}
        pair_offset, pair_bytes = self.view_pair_extent(first)
        raw = self.dev.read(pair_offset, count * pair_bytes)
        out: dict[int, ViewRecord | None] = {}
        for index in range(count):
            best = self.view_from_bytes(first + index, raw[index * pair_bytes:(index + 1) * pair_bytes])
            out[first + index] = best if isinstance(best, ViewRecord) else None
        return out

    def read_lock_stripe(self, stripe: int) -> dict[int, LockEntry | Unreadable]:
        """One stripe of the lock area from one read, as the daemon's DLM reads it."""
        raw = self.dev.read(self.layout.dlm_stripe_offset(stripe), self.layout.dlm_stripe_bytes)
        return dlm_codec.decode_stripe(raw, stripe, cluster_uuid=self.cluster_uuid, layout=self.layout)

    # -- the decoders, cached by content -----------------------------------------
    def slot_from_bytes(self, node_id: int, raw: bytes) -> SlotRecord | BlockError:
        return _cached(self._slots, (node_id, raw), lambda: super(SimStore, self).slot_from_bytes(node_id, raw),
                       8 * self.nodes_max + 64)

    def view_copy_from_bytes(self, node_id: int, raw: bytes) -> ViewRecord | BlockError:
        return _cached(self._views, (node_id, raw), lambda: super(SimStore, self).view_copy_from_bytes(node_id, raw),
                       4 * self.nodes_max + 64)

    def registry_head_from_bytes(self, raw: bytes) -> RegistryHead | Damaged:
        return _cached(self._registry_heads, raw, lambda: super(SimStore, self).registry_head_from_bytes(raw), 64)

    def registry_copy_from_bytes(self, raw: bytes) -> RegistryCopy | Damaged:
        return _cached(self._registry_copies, raw, lambda: super(SimStore, self).registry_copy_from_bytes(raw), 64)


K = TypeVar("K")
V = TypeVar("V")


def _cached(cache: dict[K, V], key: K, decode: Callable[[], V], limit: int) -> V:
    """``decode()``'s result for ``key`` (bytes read), from ``cache`` when
    the same bytes were decoded before; past ``limit`` entries it starts over."""
    hit = cache.get(key)
    if hit is None:
        hit = decode()
        if len(cache) > limit:
            cache.clear()
        cache[key] = hit
    return hit
