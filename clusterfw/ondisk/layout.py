"""Where everything lives on the shared disk: a pure function of
(block_size_bytes, nodes_max).

How this works
--------------
The disk starts with a fixed sequence of areas (all offsets in bytes)::

    superblock        4096                      written by `disk init`
    node table        nodes_max x 512, to 4096  written by admin tools
    slots             nodes_max x block_size, to 4096
    views             nodes_max x 2 x 16 KiB    copies A and B per node
    DLM lock table    4096 area header + dlm_stripes_max stripes of
                      nodes_max x block_size (one sector per node), to 4096
    virtual disks     256 KiB (idem)
    service registry  1 MiB   (idem)
    -- total_bytes: the end of the last area rounded up to 1 MiB; everything
       after it is free for virtual disks.

Every record is written by exactly one node (docs/protocol.md §1): slot *i* and view
area *i* by node *i*, the superblock, node table and area headers by the
administrator's tools only.

Invariants (checked in ``__post_init__``, tested):

* every area starts on a 4096-byte boundary, so the layout suits devices with
  512- and 4096-byte logical blocks alike, and areas never overlap;
* a slot is exactly one logical block, so a slot write is a single-sector
  write and therefore atomic; the encoded slot record fits 512 bytes
  (asserted in ``codec``) so it fits either block size;
* the slots are contiguous: one read of ``slots_read_bytes`` returns every
  node's slot;
* the two view copies of a node are adjacent: one read returns both;
* DLM lock stripes are stripe-major: stripe *s* is ``nodes_max`` adjacent
  sectors, sector (s, n) written only by node *n*; one read of
  ``dlm_stripe_bytes`` returns a whole stripe.  There are
  ``max(128, (1 MiB - 4096) // dlm_stripe_bytes)`` stripes (at least 128; a
  small cluster gets more within 1 MiB) -- see ``dlm_stripes_for``;
* the service registry's two copies A and B follow its area header, each
  ``REGISTRY_COPY_BYTES`` ((1 MiB - 4096) // 2 rounded down to 4096) and
  starting on a 4096-byte boundary, so each is whole logical blocks of either
  size and a write of one never touches the other (``registry_codec``).

Changing anything here changes the on-disk format (bump
``codec.FORMAT_VERSION``).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from clusterfw.core.model import NODES_MAX, SuperBlock

from .errors import DeviceTooSmall

KIB = 1024
MIB = 1024 * KIB

# on-disk format: sizes of the areas (bytes).  Changing one changes the format.
ALIGN_BYTES = 4096
BLOCK_SIZES_BYTES = (512, 4096)
SUPERBLOCK_AREA_BYTES = 4096
NODE_RECORD_BYTES = 512
SLOT_RECORD_MAX_BYTES = 512  # an encoded SlotRecord fits the smallest sector
VIEW_COPY_BYTES = 16 * KIB
VIEW_COPIES = 2
AREA_HEADER_BYTES = 4096
# The DLM area (docs/dlm.md): at least DLM_STRIPES_MIN stripes, and as many
# more as fit DLM_AREA_MIN_BYTES when a stripe is small.
DLM_STRIPES_MIN = 128
DLM_AREA_MIN_BYTES = 1 * MIB
VDISK_AREA_BYTES = 256 * KIB
SERVICE_AREA_BYTES = 1 * MIB
DATA_ALIGN_BYTES = 1 * MIB
# The service registry area (docs/ondisk.md §9): two copies after its header.
REGISTRY_COPIES = 2
REGISTRY_COPY_BYTES = (SERVICE_AREA_BYTES - AREA_HEADER_BYTES) // REGISTRY_COPIES // ALIGN_BYTES * ALIGN_BYTES


class AreaKind(enum.IntEnum):
    """The reserved areas for later subsystems (on-disk format: the value is
    stored in the area header)."""

    DLM_LOCKS = 1
    VIRTUAL_DISKS = 2
    SERVICE_REGISTRY = 3


AREA_NAMES: dict[AreaKind, str] = {
    AreaKind.DLM_LOCKS: "dlm-locks",
    AreaKind.VIRTUAL_DISKS: "virtual-disks",
    AreaKind.SERVICE_REGISTRY: "service-registry",
}


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def dlm_stripes_for(block_size_bytes: int, nodes_max: int) -> int:
    """How many lock stripes the DLM area holds (on-disk format): at least
    ``DLM_STRIPES_MIN``, more when they fit ``DLM_AREA_MIN_BYTES``."""
    stripe_bytes = nodes_max * block_size_bytes
    return max(DLM_STRIPES_MIN, (DLM_AREA_MIN_BYTES - AREA_HEADER_BYTES) // stripe_bytes)


def dlm_area_bytes_for(block_size_bytes: int, nodes_max: int) -> int:
    """The DLM area's size: its header, then every stripe, to 4096."""
    stripes = dlm_stripes_for(block_size_bytes, nodes_max)
    return round_up(AREA_HEADER_BYTES + stripes * nodes_max * block_size_bytes, ALIGN_BYTES)


@dataclass(frozen=True)
class Area:
    """A named byte range of the disk."""

    name: str
    offset: int
    size_bytes: int

    @property
    def end(self) -> int:
        return self.offset + self.size_bytes


@dataclass(frozen=True)
class Layout:
    """The byte offsets of every area for a given block size and node count.

    ``Layout(512, 16)``; all ``*_offset`` values are byte offsets from the
    start of the device, all ``*_bytes`` values sizes in bytes.
    """

    block_size_bytes: int
    nodes_max: int

    superblock_offset: int = field(init=False)
    node_table_offset: int = field(init=False)
    node_table_bytes: int = field(init=False)
    slots_offset: int = field(init=False)
    slot_size_bytes: int = field(init=False)
    slots_bytes: int = field(init=False)
    views_offset: int = field(init=False)
    view_copy_bytes: int = field(init=False)
    views_bytes: int = field(init=False)
    dlm_offset: int = field(init=False)
    dlm_bytes: int = field(init=False)
    dlm_stripes_max: int = field(init=False)
    dlm_stripe_bytes: int = field(init=False)
    vdisk_offset: int = field(init=False)
    service_offset: int = field(init=False)
    registry_copy_bytes: int = field(init=False)
    metadata_end: int = field(init=False)
    total_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        if self.block_size_bytes not in BLOCK_SIZES_BYTES:
            raise ValueError(
                f"block_size_bytes={self.block_size_bytes}: the logical block size must be 512 or 4096")
        if not 1 <= self.nodes_max <= NODES_MAX:
            raise ValueError(f"nodes_max={self.nodes_max}: must be 1..{NODES_MAX}")
        def put(name: str, value: int) -> None:
            object.__setattr__(self, name, value)  # frozen
        offset = 0
        put("superblock_offset", offset)
        offset += SUPERBLOCK_AREA_BYTES
        put("node_table_offset", offset)
        put("node_table_bytes", round_up(self.nodes_max * NODE_RECORD_BYTES, ALIGN_BYTES))
        offset += self.node_table_bytes
        put("slots_offset", offset)
        put("slot_size_bytes", self.block_size_bytes)
        put("slots_bytes", round_up(self.nodes_max * self.slot_size_bytes, ALIGN_BYTES))
        offset += self.slots_bytes
        put("views_offset", offset)
        put("view_copy_bytes", VIEW_COPY_BYTES)
        put("views_bytes", self.nodes_max * VIEW_COPIES * VIEW_COPY_BYTES)
        offset += self.views_bytes
        put("dlm_offset", offset)
        put("dlm_stripes_max", dlm_stripes_for(self.block_size_bytes, self.nodes_max))
        put("dlm_stripe_bytes", self.nodes_max * self.block_size_bytes)
        put("dlm_bytes", dlm_area_bytes_for(self.block_size_bytes, self.nodes_max))
        offset += self.dlm_bytes
        put("vdisk_offset", offset)
        offset += VDISK_AREA_BYTES
        put("service_offset", offset)
        put("registry_copy_bytes", REGISTRY_COPY_BYTES)
        offset += SERVICE_AREA_BYTES
        put("metadata_end", offset)
        put("total_bytes", round_up(offset, DATA_ALIGN_BYTES))
        self._check()

    def _check(self) -> None:
        areas = self.areas()
        for area in areas:
            assert area.offset % ALIGN_BYTES == 0, area
            assert area.size_bytes % ALIGN_BYTES == 0, area
        for before, after in zip(areas, areas[1:]):
            assert before.end == after.offset, (before, after)
        assert SLOT_RECORD_MAX_BYTES <= self.slot_size_bytes
        assert self.slots_read_bytes <= self.slots_bytes
        assert self.total_bytes >= self.metadata_end
        assert self.dlm_stripes_max >= DLM_STRIPES_MIN
        assert AREA_HEADER_BYTES + self.dlm_stripes_max * self.dlm_stripe_bytes <= self.dlm_bytes
        registry_a, registry_b = (self.registry_copy_offset(copy) for copy in range(REGISTRY_COPIES))
        assert registry_a == self.service_offset + AREA_HEADER_BYTES
        assert registry_b == registry_a + self.registry_copy_bytes
        assert registry_a % ALIGN_BYTES == 0 and self.registry_copy_bytes % ALIGN_BYTES == 0
        assert registry_b + self.registry_copy_bytes <= self.service_offset + SERVICE_AREA_BYTES

    # -- derived values -------------------------------------------------

    @classmethod
    def from_superblock(cls, sb: SuperBlock) -> "Layout":
        return cls(sb.block_size, sb.nodes_max)

    @property
    def slots_read_bytes(self) -> int:
        """Length of the single read that returns every slot."""
        return self.nodes_max * self.slot_size_bytes

    @property
    def node_table_read_bytes(self) -> int:
        """Length of the single read that returns every node-table record
        (whole logical blocks)."""
        return round_up(self.nodes_max * NODE_RECORD_BYTES, self.block_size_bytes)

    @property
    def data_offset(self) -> int:
        """The first byte after the metadata: free for virtual disks."""
        return self.total_bytes

    def _check_node_id(self, node_id: int) -> None:
        if not 1 <= node_id <= self.nodes_max:
            raise ValueError(f"node_id={node_id}: must be 1..{self.nodes_max} (nodes_max of this disk)")

    def node_record_offset(self, node_id: int) -> int:
        self._check_node_id(node_id)
        return self.node_table_offset + (node_id - 1) * NODE_RECORD_BYTES

    def slot_offset(self, node_id: int) -> int:
        self._check_node_id(node_id)
        return self.slots_offset + (node_id - 1) * self.slot_size_bytes

    def view_pair_offset(self, node_id: int) -> int:
        """Offset of node ``node_id``'s copy A; copy B follows it."""
        self._check_node_id(node_id)
        return self.views_offset + (node_id - 1) * VIEW_COPIES * VIEW_COPY_BYTES

    def view_offset(self, node_id: int, copy: int) -> int:
        if copy not in (0, 1):
            raise ValueError(f"copy={copy!r}: a view copy is 0 (A) or 1 (B)")
        return self.view_pair_offset(node_id) + copy * VIEW_COPY_BYTES

    def dlm_stripe_offset(self, stripe: int) -> int:
        """Offset of DLM stripe ``stripe``: its ``nodes_max`` sectors follow."""
        if not 0 <= stripe < self.dlm_stripes_max:
            raise ValueError(f"stripe={stripe}: must be 0..{self.dlm_stripes_max - 1}")
        return self.dlm_offset + AREA_HEADER_BYTES + stripe * self.dlm_stripe_bytes

    def dlm_entry_offset(self, stripe: int, node_id: int) -> int:
        """Offset of the lock sector (stripe, node): written only by ``node_id``."""
        self._check_node_id(node_id)
        return self.dlm_stripe_offset(stripe) + (node_id - 1) * self.block_size_bytes

    def registry_copy_offset(self, copy: int) -> int:
        """Offset of service-registry copy ``copy`` (0 = A, 1 = B): after the
        area header, A then B, each ``registry_copy_bytes``."""
        if isinstance(copy, bool) or copy not in (0, 1):
            raise ValueError(f"copy={copy!r}: a registry copy is 0 (A) or 1 (B)")
        return self.service_offset + AREA_HEADER_BYTES + copy * self.registry_copy_bytes

    def reserved_area(self, kind: AreaKind) -> Area:
        kind = AreaKind(kind)
        offset, size = {
            AreaKind.DLM_LOCKS: (self.dlm_offset, self.dlm_bytes),
            AreaKind.VIRTUAL_DISKS: (self.vdisk_offset, VDISK_AREA_BYTES),
            AreaKind.SERVICE_REGISTRY: (self.service_offset, SERVICE_AREA_BYTES),
        }[kind]
        return Area(AREA_NAMES[kind], offset, size)

    def areas(self) -> tuple[Area, ...]:
        """Every area in disk order."""
        return (
            Area("superblock", self.superblock_offset, SUPERBLOCK_AREA_BYTES),
            Area("node-table", self.node_table_offset, self.node_table_bytes),
            Area("slots", self.slots_offset, self.slots_bytes),
            Area("views", self.views_offset, self.views_bytes),
            *(self.reserved_area(kind) for kind in AreaKind),
        )

    def check_device_size(self, size_bytes: int, what: str = "the device") -> None:
        """Raise ``DeviceTooSmall`` unless a device of ``size_bytes`` holds
        this layout."""
        if size_bytes < self.total_bytes:
            raise DeviceTooSmall(
                f"{what} has {size_bytes} bytes but a cluster of {self.nodes_max} nodes with "
                f"{self.block_size_bytes}-byte blocks needs at least {self.total_bytes} bytes "
                f"({self.total_bytes / MIB:.1f} MiB): use a larger device or fewer nodes",
                size_bytes=size_bytes, needed_bytes=self.total_bytes)

    def describe(self) -> dict[str, Any]:
        """A plain dict for ``disk dump``."""
        return {
            "block_size_bytes": self.block_size_bytes,
            "nodes_max": self.nodes_max,
            "slot_size_bytes": self.slot_size_bytes,
            "view_copy_bytes": self.view_copy_bytes,
            "total_bytes": self.total_bytes,
            "areas": [{"name": a.name, "offset": a.offset, "size_bytes": a.size_bytes} for a in self.areas()],
        }
