"""The DLM's lock sectors: explicit little-endian encoding of ``LockEntry``
and where each sector lives.

How this works
--------------
A lock entry is the common 64-byte record header (``codec``: magic ``CFLK``,
format version, cluster UUID, writer node id, incarnation, seq, crc32c)
followed by this payload::

    off size field
      0    4 stripe        u32, the stripe this sector belongs to
      4    1 state         u8: 0 FREE, 1 CHOOSING, 2 WAITING, 3 HELD
      5    1 mode          u8: 1 SHARED, 2 EXCLUSIVE
      6    2 reserved      zero
      8    8 ticket        u64, the bakery ticket (kept while FREE)
     16    8 token         u64, the fencing token (kept while FREE)
     24    8 stamp_ms      u64, the writer's wall clock (Unix ms) at the write;
                           informational ("since" in `clusterfw locks`)
     32    4 owner         u32, the local client's process id (0: none);
                           informational
     36  1+n name          u8 length + UTF-8, 0..48 bytes (>= 1 unless FREE)

At most 64 + 36 + 1 + 48 = 149 bytes: one entry is one sector on any device,
so a write of it is atomic.  Sector (stripe, node) is at
``Layout.dlm_entry_offset(stripe, node)``; a stripe's sectors are adjacent
and one read of ``Layout.dlm_stripe_bytes`` returns them all.

Decoding checks, in order: everything ``codec.read_header`` checks (never
written, magic, version, cluster, writer node against the position, length,
checksum), then the payload (unknown state or mode, non-zero reserved bytes,
a name too long or invalid UTF-8, an empty name on a non-FREE entry, bytes
left over) and finally that the entry's stripe is the position's
(``BadPayload``: a misplaced sector).  Decoding arbitrary bytes raises
nothing but a ``BlockError``.  Pure: no I/O, no clocks.
"""
from __future__ import annotations

import struct
from typing import Any, Mapping

from clusterfw.core.dlm import NAME_MAX_BYTES, EntryState, LockEntry, LockMode
from clusterfw.core.model import NODES_MAX, U64_MAX
from clusterfw.core.node import Unreadable

from . import codec
from .errors import BlockError, NotWritten
from .layout import Layout

# on-disk format: the lock entry record.
LOCK_ENTRY_MAX_BYTES = 512  # fits the smallest sector
LOCK_ENTRY = codec.RecordKind("lock-entry", b"CFLK", LOCK_ENTRY_MAX_BYTES)
assert all(LOCK_ENTRY.magic != k.magic for k in codec.RECORD_KINDS)
# stripe u32, state u8, mode u8, reserved u16, ticket u64, token u64,
# stamp_ms u64, owner u32; then name.
LOCK_ENTRY_FIXED = struct.Struct("<IBBHQQQI")
LOCK_ENTRY_WORST_BYTES = codec.HEADER_BYTES + LOCK_ENTRY_FIXED.size + 1 + NAME_MAX_BYTES
assert LOCK_ENTRY_WORST_BYTES <= LOCK_ENTRY_MAX_BYTES, LOCK_ENTRY_WORST_BYTES
STRIPE_MAX = codec.U32_MAX


def check_lock_entry(entry: Any) -> None:
    """The encoder's checks (the decoder runs them on what it decoded)."""
    if not isinstance(entry, LockEntry):
        raise ValueError(f"expected a LockEntry, got {type(entry).__name__}")
    codec.check_int(entry.node_id, 1, NODES_MAX, "LockEntry.node_id")
    codec.check_int(entry.incarnation, 0, U64_MAX, "LockEntry.incarnation")
    codec.check_int(entry.seq, 0, U64_MAX, "LockEntry.seq")
    codec.check_int(entry.stripe, 0, STRIPE_MAX, "LockEntry.stripe")
    if not isinstance(entry.state, EntryState):
        raise ValueError(f"LockEntry.state={entry.state!r}: must be an EntryState")
    if not isinstance(entry.mode, LockMode):
        raise ValueError(f"LockEntry.mode={entry.mode!r}: must be a LockMode")
    codec.check_int(entry.ticket, 0, U64_MAX, "LockEntry.ticket")
    codec.check_int(entry.token, 0, U64_MAX, "LockEntry.token")
    codec.check_int(entry.stamp_ms, 0, U64_MAX, "LockEntry.stamp_ms")
    codec.check_int(entry.owner, 0, codec.U32_MAX, "LockEntry.owner")
    minimum = 0 if entry.state is EntryState.FREE else 1
    codec.encode_text(entry.name, "LockEntry.name", NAME_MAX_BYTES, minimum)


def encode_lock_entry(entry: LockEntry, cluster_uuid: bytes) -> bytes:
    check_lock_entry(entry)
    cluster_uuid = codec.check_uuid(cluster_uuid)
    payload = LOCK_ENTRY_FIXED.pack(entry.stripe, int(entry.state), int(entry.mode), 0, entry.ticket, entry.token,
                                    entry.stamp_ms, entry.owner)
    payload += codec.encode_text(entry.name, "LockEntry.name", NAME_MAX_BYTES, 0)
    return codec.seal(LOCK_ENTRY, cluster_uuid, entry.node_id, entry.incarnation, entry.seq, payload)


def decode_lock_entry(buf: bytes | bytearray | memoryview, *, cluster_uuid: bytes | None = None,
                      node_id: int | None = None, stripe: int | None = None) -> LockEntry:
    """Decode one lock sector; ``node_id`` and ``stripe`` (when given) are
    the position's and must match the record's."""
    header, payload = codec.read_header(LOCK_ENTRY, buf, cluster_uuid=cluster_uuid, node_id=node_id)

    def build() -> LockEntry:
        reader = codec.Reader(payload, LOCK_ENTRY.name)
        record_stripe, state, mode, reserved, ticket, token, stamp_ms, owner = reader.take(LOCK_ENTRY_FIXED,
                                                                                          "fixed fields")
        name = reader.text("name")
        reader.finish()
        if reserved:
            raise ValueError(f"reserved bytes are {reserved:#06x}, must be zero")
        entry = LockEntry(node_id=header.node_id, incarnation=header.incarnation, seq=header.seq,
                          stripe=record_stripe, name=name, state=EntryState(state), mode=LockMode(mode),
                          ticket=ticket, token=token, stamp_ms=stamp_ms, owner=owner)
        if stripe is not None and record_stripe != stripe:
            raise ValueError(f"entry of stripe {record_stripe} in the position of stripe {stripe} (misplaced)")
        return entry

    decoded: LockEntry = codec.decoded(LOCK_ENTRY, build, check_lock_entry)  # the check takes anything
    return decoded


def entry_bytes(entry: LockEntry, cluster_uuid: bytes, layout: Layout) -> tuple[int, bytes]:
    """(offset, one padded sector) for writing ``entry`` to its own sector."""
    if entry.stripe >= layout.dlm_stripes_max:
        raise ValueError(f"LockEntry.stripe={entry.stripe}: this disk has {layout.dlm_stripes_max} stripes")
    data = codec.pad_to(encode_lock_entry(entry, cluster_uuid), layout.block_size_bytes)
    assert len(data) == layout.block_size_bytes, "a lock entry must fit one sector"
    return layout.dlm_entry_offset(entry.stripe, entry.node_id), data


def decode_sector(block: bytes, *, cluster_uuid: bytes, node_id: int, stripe: int) -> LockEntry | Unreadable:
    """One sector of a stripe read, as the DLM core wants it: the entry, or
    ``Unreadable`` naming the rejection (``never_written`` for zeros)."""
    try:
        return decode_lock_entry(block, cluster_uuid=cluster_uuid, node_id=node_id, stripe=stripe)
    except NotWritten:
        return Unreadable("never written", never_written=True)
    except BlockError as exc:
        return Unreadable(type(exc).__name__)


def decode_stripe(raw: bytes, stripe: int, *, cluster_uuid: bytes, layout: Layout) -> dict[int, LockEntry | Unreadable]:
    """Split one stripe read (``layout.dlm_stripe_bytes``) into its sectors."""
    size = layout.block_size_bytes
    if len(raw) != layout.dlm_stripe_bytes:
        raise ValueError(f"a stripe read is {layout.dlm_stripe_bytes} bytes, got {len(raw)}")
    return {node_id: decode_sector(raw[(node_id - 1) * size:node_id * size], cluster_uuid=cluster_uuid,
                                   node_id=node_id, stripe=stripe)
            for node_id in range(1, layout.nodes_max + 1)}


def decode_area(raw: bytes, *, cluster_uuid: bytes, layout: Layout,
                first_stripe: int = 0) -> Mapping[int, dict[int, LockEntry | Unreadable]]:
    """Split a read of whole stripes starting at ``first_stripe``."""
    step = layout.dlm_stripe_bytes
    if len(raw) % step:
        raise ValueError(f"an area read is a whole number of {step}-byte stripes, got {len(raw)} bytes")
    return {first_stripe + i: decode_stripe(raw[i * step:(i + 1) * step], first_stripe + i,
                                            cluster_uuid=cluster_uuid, layout=layout)
            for i in range(len(raw) // step)}
