"""``ClusterDisk``: typed records at their places on a device.

How this works
--------------
``Placement`` is the pure half: given the ``Layout`` and the cluster UUID it
turns a record into ``(offset, bytes)`` -- padded to whole logical blocks, so
it can be written as is -- and raw bytes read from an area back into records
(or the ``BlockError`` that rejected them).  The simulator's disk
(``sim/store.py``) is a ``ClusterDisk`` over a ``SimDisk``: it takes these
bytes when a write is issued and lands them (whole, torn or not at all) when
it completes, and reads through the readers below.

``ClusterDisk`` adds the I/O over any ``Device`` (``BlockDevice`` or
``SimDisk``): ``write_slot``, ``read_slots`` (one read for every slot),
``write_view`` / ``read_view`` (both copies in one read), the node table,
the superblock, the DLM lock area and the service registry
(``read_registry_heads``: the cheap poll, one logical block per copy;
``read_registry_copy`` / ``read_registry``: one read per copy;
``write_registry_copy``: one write of a whole copy).

Readers return a ``BlockError`` *as a value* per block, so one bad block
never hides the others; device failures (``DeviceError``) are raised.

Invariants:

* every record is checked before it is written: encoded, decoded again and
  compared (a mismatch is a bug and raises ``AssertionError``), and checked
  again after it is read (the decoder validates everything);
* a slot write is one logical block (atomic); a view write covers whole
  blocks of one copy only, so the other copy always survives a torn write;
* a reader picks the valid view copy with the highest (term, epoch, seq);
  the writer alternates: it writes the copy that does *not* hold the best
  valid view (``view_copy_to_write``); the service registry follows the
  same rule with (generation, token) (``registry_codec.newest`` and
  ``next_copy``);
* records are read with the cluster UUID and the node id of their position,
  so a record of another cluster or in the wrong place is rejected.

Pure apart from the calls to the device it is given.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from clusterfw.core.model import NodeConfig, SlotRecord, SuperBlock, ViewRecord

from . import codec, registry_codec
from .errors import BlockError, BlockSizeMismatch, DeviceTooSmall, NotWritten
from .layout import (
    AREA_HEADER_BYTES,
    NODE_RECORD_BYTES,
    REGISTRY_COPIES,
    SUPERBLOCK_AREA_BYTES,
    VIEW_COPIES,
    AreaKind,
    Layout,
)
from .registry_codec import Damaged, RegistryCopy, RegistryHead
from .simdisk import Device

if TYPE_CHECKING:
    from clusterfw.core.dlm import LockEntry
    from clusterfw.core.node import Unreadable

AREA_VERSION = 1  # the reserved areas' contents version written by `disk init`


def view_key(rec: ViewRecord) -> tuple[int, int, int]:
    """The order in which view copies are compared: newest is highest."""
    return (rec.term, rec.epoch, rec.seq)


def best_view_copy(copies: Sequence[ViewRecord | BlockError]) -> int | None:
    """The index of the valid copy with the highest (term, epoch, seq), the
    lower index on a tie; ``None`` if no copy is valid."""
    best: int | None = None
    for index, copy in enumerate(copies):
        if isinstance(copy, ViewRecord):
            if best is None or view_key(copy) > view_key(copies[best]):  # type: ignore[arg-type]
                best = index
    return best


def best_view(copies: Sequence[ViewRecord | BlockError]) -> ViewRecord | BlockError:
    """The best valid copy; if none is valid, the most telling error (the
    first that is not ``NotWritten``, else ``NotWritten``)."""
    index = best_view_copy(copies)
    if index is not None:
        return copies[index]
    for copy in copies:
        if not isinstance(copy, NotWritten):
            return copy
    return copies[0]


def view_copy_to_write(copies: Sequence[ViewRecord | BlockError]) -> int:
    """The copy a writer should overwrite next: the one not holding the best
    valid view (copy 0 if neither is valid)."""
    index = best_view_copy(copies)
    return 0 if index is None else 1 - index


class Placement:
    """Where each record goes and what bytes it becomes (pure)."""

    def __init__(self, layout: Layout, cluster_uuid: bytes):
        if not isinstance(cluster_uuid, (bytes, bytearray)) or len(cluster_uuid) != codec.UUID_BYTES:
            raise ValueError(f"cluster_uuid={cluster_uuid!r}: must be 16 raw bytes")
        self.layout = layout
        self.cluster_uuid = bytes(cluster_uuid)

    @property
    def block_size_bytes(self) -> int:
        return self.layout.block_size_bytes

    def _pad(self, data: bytes) -> bytes:
        return codec.pad_to(data, self.layout.block_size_bytes)

    # -- extents (offset, length) of the reads --------------------------------

    def slots_extent(self) -> tuple[int, int]:
        return self.layout.slots_offset, self.layout.slots_read_bytes

    def slot_extent(self, node_id: int) -> tuple[int, int]:
        return self.layout.slot_offset(node_id), self.layout.slot_size_bytes

    def view_pair_extent(self, node_id: int) -> tuple[int, int]:
        return self.layout.view_pair_offset(node_id), VIEW_COPIES * self.layout.view_copy_bytes

    def node_table_extent(self) -> tuple[int, int]:
        return self.layout.node_table_offset, self.layout.node_table_read_bytes

    def registry_head_extent(self, copy: int) -> tuple[int, int]:
        """The first logical block of registry copy ``copy``: its head."""
        return self.layout.registry_copy_offset(copy), self.layout.block_size_bytes

    def registry_copy_extent(self, copy: int, head: RegistryHead | None = None) -> tuple[int, int]:
        """Registry copy ``copy``: the blocks ``head`` says hold head and body,
        or (without a head) the whole copy."""
        offset = self.layout.registry_copy_offset(copy)
        if head is None:
            return offset, self.layout.registry_copy_bytes
        return offset, min(head.copy_bytes(self.layout.block_size_bytes), self.layout.registry_copy_bytes)

    # -- records to bytes -----------------------------------------------------

    def slot_bytes(self, rec: SlotRecord) -> tuple[int, bytes]:
        """``(offset, data)`` of ``rec``'s slot: exactly one logical block."""
        offset = self.layout.slot_offset(rec.node_id)
        data = self._pad(codec.encode_slot(rec, self.cluster_uuid))
        assert len(data) == self.layout.slot_size_bytes
        _verify(rec, codec.decode_slot(data, cluster_uuid=self.cluster_uuid, node_id=rec.node_id))
        return offset, data

    def view_bytes(self, rec: ViewRecord, copy: int) -> tuple[int, bytes]:
        """``(offset, data)`` for writing ``rec`` into copy ``copy`` (0 = A,
        1 = B) of its writer's view area: the record padded to whole logical
        blocks, never past the copy."""
        offset = self.layout.view_offset(rec.node_id, copy)
        data = self._pad(codec.encode_view(rec, self.cluster_uuid))
        assert len(data) <= self.layout.view_copy_bytes
        _verify(rec, codec.decode_view(data, cluster_uuid=self.cluster_uuid, node_id=rec.node_id))
        return offset, data

    def node_record_bytes(self, cfg: NodeConfig) -> tuple[int, bytes]:
        """``(offset, data)`` of ``cfg``'s 512-byte node-table record.  On a
        4096-byte device this is part of a block: see ``node_block_bytes``."""
        offset = self.layout.node_record_offset(cfg.node_id)
        data = codec.pad_to(codec.encode_node_config(cfg, self.cluster_uuid), NODE_RECORD_BYTES)
        _verify(cfg, codec.decode_node_config(data, cluster_uuid=self.cluster_uuid, node_id=cfg.node_id))
        return offset, data

    def node_block_bytes(self, cfg: NodeConfig, current_block: bytes) -> tuple[int, bytes]:
        """``(offset, data)`` of the logical block holding ``cfg``'s record,
        with the record replaced in ``current_block`` (read-modify-write; for
        admin tools only)."""
        record_offset, record = self.node_record_bytes(cfg)
        block_size = self.layout.block_size_bytes
        block_offset = record_offset - record_offset % block_size
        if len(current_block) != block_size:
            raise ValueError(f"current_block has {len(current_block)} bytes, a block has {block_size}")
        start = record_offset - block_offset
        block = bytes(current_block[:start]) + record + bytes(current_block[start + NODE_RECORD_BYTES:])
        return block_offset, block

    def superblock_bytes(self, sb: SuperBlock) -> tuple[int, bytes]:
        if bytes(sb.cluster_uuid) != self.cluster_uuid:
            raise ValueError("SuperBlock.cluster_uuid differs from this disk's cluster UUID")
        data = codec.pad_to(codec.encode_superblock(sb), SUPERBLOCK_AREA_BYTES)
        _verify(sb, codec.decode_superblock(data, cluster_uuid=self.cluster_uuid))
        return self.layout.superblock_offset, data

    def registry_bytes(self, doc: dict[str, Any], copy: int, *, generation: int, token: int, writer: int,
                       incarnation: int, stamp_ms: int) -> tuple[int, bytes]:
        """``(offset, data)`` for writing ``doc`` into registry copy ``copy``
        (0 = A, 1 = B; pick it with ``registry_codec.next_copy``): head and
        body padded to whole logical blocks, never past the copy.  Raises
        ``RegistryTooLarge`` when the document does not fit."""
        offset = self.layout.registry_copy_offset(copy)
        data = registry_codec.encode_copy(doc, generation=generation, token=token, writer=writer,
                                          incarnation=incarnation, cluster_uuid=self.cluster_uuid,
                                          block_size=self.layout.block_size_bytes, stamp_ms=stamp_ms)
        assert len(data) <= self.layout.registry_copy_bytes
        return offset, data

    def area_header_bytes(self, kind: AreaKind) -> tuple[int, bytes]:
        area = self.layout.reserved_area(kind)
        header = codec.AreaHeader(kind=AreaKind(kind), area_version=AREA_VERSION, size_bytes=area.size_bytes)
        data = codec.pad_to(codec.encode_area_header(header, self.cluster_uuid), AREA_HEADER_BYTES)
        return area.offset, data

    # -- bytes to records -----------------------------------------------------

    def slot_from_bytes(self, node_id: int, raw: bytes) -> SlotRecord | BlockError:
        """Decode node ``node_id``'s slot block."""
        try:
            return codec.decode_slot(raw, cluster_uuid=self.cluster_uuid, node_id=node_id)
        except BlockError as exc:
            return exc

    def slots_from_bytes(self, raw: bytes) -> list[SlotRecord | BlockError]:
        """Decode the whole slot area (``slots_extent()`` bytes): one entry per
        node id 1..nodes_max."""
        size = self.layout.slot_size_bytes
        if len(raw) != self.layout.slots_read_bytes:
            raise ValueError(f"slot area of {len(raw)} bytes, expected {self.layout.slots_read_bytes}")
        return [self.slot_from_bytes(node_id, raw[(node_id - 1) * size:node_id * size])
                for node_id in range(1, self.layout.nodes_max + 1)]

    def view_copy_from_bytes(self, node_id: int, raw: bytes) -> ViewRecord | BlockError:
        try:
            return codec.decode_view(raw, cluster_uuid=self.cluster_uuid, node_id=node_id)
        except BlockError as exc:
            return exc

    def view_copies_from_bytes(self, node_id: int, raw: bytes) -> tuple[ViewRecord | BlockError,
                                                                          ViewRecord | BlockError]:
        """Decode both copies from ``view_pair_extent(node_id)`` bytes."""
        size = self.layout.view_copy_bytes
        if len(raw) != VIEW_COPIES * size:
            raise ValueError(f"view pair of {len(raw)} bytes, expected {VIEW_COPIES * size}")
        return (self.view_copy_from_bytes(node_id, raw[:size]), self.view_copy_from_bytes(node_id, raw[size:]))

    def view_from_bytes(self, node_id: int, raw: bytes) -> ViewRecord | BlockError:
        """The best valid view in ``view_pair_extent(node_id)`` bytes."""
        return best_view(self.view_copies_from_bytes(node_id, raw))

    def registry_head_from_bytes(self, raw: bytes) -> RegistryHead | Damaged:
        """Decode a registry head from the first block of its copy."""
        return registry_codec.decode_head(raw, cluster_uuid=self.cluster_uuid)

    def registry_copy_from_bytes(self, raw: bytes) -> RegistryCopy | Damaged:
        """Decode a registry copy from bytes read at its offset."""
        return registry_codec.decode_copy(raw, cluster_uuid=self.cluster_uuid)

    def node_table_from_bytes(self, raw: bytes) -> list[NodeConfig | BlockError]:
        """Decode the node table (``node_table_extent()`` bytes): one entry per
        node id 1..nodes_max."""
        if len(raw) != self.layout.node_table_read_bytes:
            raise ValueError(f"node table of {len(raw)} bytes, expected {self.layout.node_table_read_bytes}")
        entries: list[NodeConfig | BlockError] = []
        for node_id in range(1, self.layout.nodes_max + 1):
            start = (node_id - 1) * NODE_RECORD_BYTES
            try:
                entries.append(codec.decode_node_config(raw[start:start + NODE_RECORD_BYTES],
                                                        cluster_uuid=self.cluster_uuid, node_id=node_id))
            except BlockError as exc:
                entries.append(exc)
        return entries


def _verify(record: object, decoded: object) -> None:
    """Check-before-write: what we are about to write must read back as the
    record we meant (a mismatch is a codec bug)."""
    if decoded != record:
        raise AssertionError(f"encoded record does not decode to itself: {record!r} -> {decoded!r}")


class ClusterDisk(Placement):
    """The typed facade over a device holding a clusterfw cluster."""

    def __init__(self, dev: Device, layout: Layout, cluster_uuid: bytes):
        super().__init__(layout, cluster_uuid)
        if dev.block_size_bytes != layout.block_size_bytes:
            raise BlockSizeMismatch(
                f"the device has {dev.block_size_bytes}-byte logical blocks but the cluster was "
                f"initialised with {layout.block_size_bytes}-byte blocks: slot writes would not be "
                f"single-sector writes; present the disk with {layout.block_size_bytes}-byte sectors "
                f"or re-initialise it")
        layout.check_device_size(dev.size_bytes, what=str(getattr(dev, "path", "the device")))
        self.dev = dev
        self.superblock: SuperBlock | None = None

    @classmethod
    def open(cls, dev: Device) -> "ClusterDisk":
        """Read the superblock (raises its ``BlockError`` if it is not a valid
        clusterfw superblock, ``DeviceTooSmall`` if the device cannot hold
        one) and build the facade it describes."""
        sb = read_superblock_from(dev)
        disk = cls(dev, Layout.from_superblock(sb), sb.cluster_uuid)
        disk.superblock = sb
        return disk

    # -- superblock / area headers ----------------------------------------------

    def read_superblock(self) -> SuperBlock:
        """The superblock; raises its ``BlockError`` (``ForeignCluster`` if the
        disk was re-initialised under us)."""
        raw = self.dev.read(self.layout.superblock_offset, SUPERBLOCK_AREA_BYTES)
        return codec.decode_superblock(raw, cluster_uuid=self.cluster_uuid)

    def read_area_header(self, kind: AreaKind) -> codec.AreaHeader:
        area = self.layout.reserved_area(kind)
        raw = self.dev.read(area.offset, AREA_HEADER_BYTES)
        return codec.decode_area_header(raw, cluster_uuid=self.cluster_uuid, kind=kind)

    # -- slots ---------------------------------------------------------------

    def write_slot(self, rec: SlotRecord) -> None:
        """Write ``rec`` to its node's slot: one single-sector write."""
        offset, data = self.slot_bytes(rec)
        self.dev.write(offset, data)

    def read_slots(self) -> list[SlotRecord | BlockError]:
        """Every slot, from ONE read; entry ``i`` is node id ``i + 1``."""
        offset, length = self.slots_extent()
        return self.slots_from_bytes(self.dev.read(offset, length))

    def read_slot(self, node_id: int) -> SlotRecord | BlockError:
        offset, length = self.slot_extent(node_id)
        return self.slot_from_bytes(node_id, self.dev.read(offset, length))

    # -- views ---------------------------------------------------------------

    def write_view(self, rec: ViewRecord, copy: int) -> None:
        """Write ``rec`` into copy ``copy`` (0 or 1) of its writer's view area.
        Use ``view_copy_to_write(read_view_copies(...))`` to pick the copy."""
        offset, data = self.view_bytes(rec, copy)
        self.dev.write(offset, data)

    def read_view_copies(self, node_id: int) -> tuple[ViewRecord | BlockError, ViewRecord | BlockError]:
        """Both copies of node ``node_id``'s view area, from one read."""
        offset, length = self.view_pair_extent(node_id)
        return self.view_copies_from_bytes(node_id, self.dev.read(offset, length))

    def read_view(self, node_id: int) -> ViewRecord | BlockError:
        """The valid copy with the highest (term, epoch, seq), or an error."""
        return best_view(self.read_view_copies(node_id))

    # -- node table (admin tools) -------------------------------------------------

    def read_node_table(self) -> list[NodeConfig | BlockError]:
        """Every node-table record, from one read; entry ``i`` is node id
        ``i + 1`` (``NotWritten`` for ids nobody added)."""
        offset, length = self.node_table_extent()
        return self.node_table_from_bytes(self.dev.read(offset, length))

    def read_lock_area(self, read_bytes_max: int = 1 << 20) -> dict[int, dict[int, LockEntry | Unreadable]]:
        """Every stripe of the DLM lock area, decoded: stripe -> (node id ->
        ``LockEntry`` | ``Unreadable``), in reads of whole stripes of at most
        ``read_bytes_max`` bytes."""
        from . import dlm_codec

        layout = self.layout
        per_read = max(1, read_bytes_max // layout.dlm_stripe_bytes)
        out: dict[int, dict[int, LockEntry | Unreadable]] = {}
        stripe = 0
        while stripe < layout.dlm_stripes_max:
            count = min(per_read, layout.dlm_stripes_max - stripe)
            raw = self.dev.read(layout.dlm_stripe_offset(stripe), count * layout.dlm_stripe_bytes)
            out.update(dlm_codec.decode_area(raw, cluster_uuid=self.cluster_uuid, layout=layout,
                                             first_stripe=stripe))
            stripe += count
        return out

    # -- the service registry -------------------------------------------------

    def read_registry_heads(self) -> tuple[RegistryHead | Damaged, RegistryHead | Damaged]:
        """Both registry heads, from one single-block read each: the poll
        that tells whether the registry changed (compare with the heads read
        before; read the copies only then)."""
        heads = [self.registry_head_from_bytes(self.dev.read(*self.registry_head_extent(copy)))
                 for copy in range(REGISTRY_COPIES)]
        return heads[0], heads[1]

    def read_registry_copy(self, copy: int, head: RegistryHead | None = None) -> RegistryCopy | Damaged:
        """Registry copy ``copy`` from one read: of the blocks ``head`` (the
        copy's head from the poll) says it takes, else of the whole copy.
        If the copy was rewritten with a longer body since ``head`` was read,
        it is read once more at its new length."""
        offset, length = self.registry_copy_extent(copy, head)
        found = self.registry_copy_from_bytes(self.dev.read(offset, length))
        if isinstance(found, Damaged) and found.head is not None and found.head != head:
            _offset, needed = self.registry_copy_extent(copy, found.head)
            if needed > length:
                found = self.registry_copy_from_bytes(self.dev.read(offset, needed))
        return found

    def read_registry_copies(self) -> tuple[RegistryCopy | Damaged, RegistryCopy | Damaged]:
        """Both registry copies, decoded (what a writer needs for
        ``registry_codec.next_copy``): the heads, then one read of each copy
        whose head decodes."""
        copies: list[RegistryCopy | Damaged] = []
        for copy, head in enumerate(self.read_registry_heads()):
            copies.append(head if isinstance(head, Damaged) else self.read_registry_copy(copy, head))
        return copies[0], copies[1]

    def read_registry(self) -> tuple[RegistryCopy | None, int | None]:
        """The newest valid registry copy and which copy it is (0 = A,
        1 = B), or ``(None, None)`` if neither copy is valid (an area never
        written: no registry yet).  Reads both heads, then the copy whose
        head is newest, and the other only if that one is damaged."""
        heads = self.read_registry_heads()
        readable = [(head.key, -copy, copy, head) for copy, head in enumerate(heads) if isinstance(head, RegistryHead)]
        found: list[RegistryCopy | Damaged | None] = [None] * REGISTRY_COPIES
        for _key, _tie, copy, head in sorted(readable, reverse=True):
            found[copy] = self.read_registry_copy(copy, head)
            if isinstance(found[copy], RegistryCopy):
                break
        return registry_codec.newest(found[0], found[1])

    def write_registry_copy(self, doc: dict[str, Any], copy: int, *, generation: int, token: int, writer: int,
                            incarnation: int, stamp_ms: int) -> None:
        """Write ``doc`` as generation ``generation`` into registry copy
        ``copy``: one write of the whole encoded copy.  Pick copy and
        generation with ``registry_codec.next_copy(*read_registry_copies())``
        while holding the ``clusterfw.registry`` lock whose token this is."""
        offset, data = self.registry_bytes(doc, copy, generation=generation, token=token, writer=writer,
                                           incarnation=incarnation, stamp_ms=stamp_ms)
        self.dev.write(offset, data)

    def write_node_config(self, cfg: NodeConfig) -> None:
        """Write ``cfg``'s node-table record (read-modify-write of its block:
        admin tools only, never concurrently)."""
        record_offset = self.layout.node_record_offset(cfg.node_id)
        block_size = self.layout.block_size_bytes
        block_offset = record_offset - record_offset % block_size
        current = self.dev.read(block_offset, block_size)
        offset, data = self.node_block_bytes(cfg, current)
        self.dev.write(offset, data)

    def clear_node_config(self, node_id: int) -> None:
        """Zero node ``node_id``'s node-table record, so that it reads as
        ``NotWritten`` (read-modify-write of its block: admin tools only)."""
        record_offset = self.layout.node_record_offset(node_id)
        block_size = self.layout.block_size_bytes
        block_offset = record_offset - record_offset % block_size
        current = bytes(self.dev.read(block_offset, block_size))
        start = record_offset - block_offset
        self.dev.write(block_offset, current[:start] + bytes(NODE_RECORD_BYTES) + current[start + NODE_RECORD_BYTES:])


def read_superblock_from(dev: Device) -> SuperBlock:
    """Read and decode the superblock of any device (no UUID expected).
    Raises ``DeviceTooSmall`` (naming the device, its size and the minimum)
    for a device that cannot even hold a superblock, else the superblock's
    ``BlockError`` if it does not decode."""
    if dev.size_bytes < SUPERBLOCK_AREA_BYTES:
        size = getattr(dev, "file_size_bytes", None) or dev.size_bytes
        blocks = (f" ({dev.size_bytes} in whole {dev.block_size_bytes}-byte blocks)"
                  if size != dev.size_bytes else "")
        raise DeviceTooSmall(
            f"{getattr(dev, 'path', 'the device')} has {size} bytes{blocks}: a clusterfw disk needs at least "
            f"{SUPERBLOCK_AREA_BYTES} bytes for its superblock, and {Layout(dev.block_size_bytes, 1).total_bytes} "
            f"bytes for a cluster of one node: use a larger device", size_bytes=size,
            needed_bytes=SUPERBLOCK_AREA_BYTES)
    return codec.decode_superblock(dev.read(0, SUPERBLOCK_AREA_BYTES))
