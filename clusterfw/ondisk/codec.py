"""Explicit little-endian encodings of every on-disk record.

How this works
--------------
Every record is a 64-byte common header followed by a payload::

    off size field
      0    4 magic            4 ASCII bytes, distinct per record kind
      4    2 format_version   u16, FORMAT_VERSION
      6    2 reserved         zero
      8   16 cluster_uuid     the cluster's UUID (raw 16 bytes)
     24    2 node_id          u16, the writer's node id (0: admin records)
     26    2 reserved         zero
     28    4 payload_bytes    u32, length of the payload after the header
     32    8 incarnation      u64, new at every daemon start
     40    8 seq              u64, +1 at every write of this block
     48   12 reserved         zero
     60    4 crc32c           u32, over bytes [0, 60) ++ [64, 64 + payload_bytes)

The payload layouts are in the ``# on-disk format`` blocks below and in
docs/ondisk.md.  Integers are little-endian; strings are a u8 byte length
followed by that many UTF-8 bytes; sequences are a count followed by the
entries.  Bytes after the payload (up to the end of the sector or area) are
not covered by the checksum and are ignored.

Decoding checks, in this order, and raises the first failure (all
``BlockError``): all-zero buffer (NotWritten), magic (BadMagic), truncated
header (BadLength), version (BadVersion), cluster UUID (ForeignCluster, only
when the caller says which UUID it expects), node id (WrongNode, only when the
caller says which node the position belongs to), payload length against the
kind's capacity and the buffer (BadLength), checksum (BadChecksum), and then
the payload itself (BadPayload).

Invariants:

* ``decode_x(encode_x(r)) == r`` for every record ``encode_x`` accepts, and a
  decoded record always satisfies the same checks the encoder makes (so the
  decoder never hands out a record the encoder would refuse).
* Decoding arbitrary bytes raises nothing but a ``BlockError``.
* Encoding a record that breaks a model limit or does not fit its area raises
  ``ValueError`` naming the field.
* The worst-case slot record fits 512 bytes (asserted at import), so a slot
  write is a single-sector write on any device.

This module is pure: no I/O, no clocks.
"""
from __future__ import annotations

import struct
import uuid as uuid_module
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import crc32c as crc32c_module

from clusterfw.core.model import (
    ACKS_MAX,
    BARRIERS_MAX,
    CLUSTER_NAME_MAX,
    LEVEL_MAX,
    LEVELS_MAX,
    NODE_NAME_MAX,
    NODES_MAX,
    REASON_MAX,
    REGISTRATIONS_MAX,
    STATE_BY_CODE,
    STATE_CODES,
    SUBSYSTEM_NAME_MAX,
    U64_MAX,
    Batch,
    BatchEntry,
    Kind,
    Lease,
    LevelSpec,
    MemberEntry,
    NodeConfig,
    NodeState,
    Registration,
    Rejection,
    Request,
    SlotRecord,
    SuperBlock,
    Timing,
    ViewRecord,
)

from .errors import (
    BadChecksum,
    BadLength,
    BadMagic,
    BadPayload,
    BadVersion,
    BlockError,
    ForeignCluster,
    NotWritten,
    WrongNode,
)
from .layout import (
    AREA_HEADER_BYTES,
    BLOCK_SIZES_BYTES,
    NODE_RECORD_BYTES,
    SLOT_RECORD_MAX_BYTES,
    SUPERBLOCK_AREA_BYTES,
    VIEW_COPY_BYTES,
    AreaKind,
    Layout,
)

FORMAT_VERSION = 1  # on-disk format: bump on any change to this module or layout.py

U8_MAX = 0xFF
U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
VIEW_REJECTIONS_MAX = 32  # not (yet) a model limit; bounds the view's rejection list
UUID_BYTES = 16

# on-disk format: the common header (see the module docstring).
HEADER = struct.Struct("<4sHH16sHHIQQ12sI")
HEADER_BYTES = HEADER.size
CRC_OFFSET = 60
assert HEADER_BYTES == 64 and CRC_OFFSET == HEADER_BYTES - 4


@dataclass(frozen=True)
class RecordKind:
    """A record kind: its magic and the most bytes (header + payload) one
    record of it may take."""

    name: str
    magic: bytes
    capacity_bytes: int

    @property
    def payload_max_bytes(self) -> int:
        return self.capacity_bytes - HEADER_BYTES


# on-disk format: magics and capacities.
SUPERBLOCK = RecordKind("superblock", b"CFSB", SUPERBLOCK_AREA_BYTES)
NODE_CONFIG = RecordKind("node-config", b"CFND", NODE_RECORD_BYTES)
SLOT = RecordKind("slot", b"CFSL", SLOT_RECORD_MAX_BYTES)
VIEW = RecordKind("view", b"CFVW", VIEW_COPY_BYTES)
AREA_HEADER = RecordKind("area-header", b"CFAR", AREA_HEADER_BYTES)
RECORD_KINDS = (SUPERBLOCK, NODE_CONFIG, SLOT, VIEW, AREA_HEADER)
assert len({k.magic for k in RECORD_KINDS}) == len(RECORD_KINDS)


@dataclass(frozen=True)
class AreaHeader:
    """The first record of a reserved area (written by ``disk init``).
    ``area_version`` is the version of the area's own contents, owned by the
    subsystem that will use it; ``size_bytes`` the area's size."""

    kind: AreaKind
    area_version: int
    size_bytes: int


@dataclass(frozen=True)
class RecordHeader:
    """The decoded common header (what every record carries)."""

    magic: bytes
    format_version: int
    cluster_uuid: bytes
    node_id: int
    payload_bytes: int
    incarnation: int
    seq: int
    crc32c: int


# --------------------------------------------------------------------------
# on-disk format: payload layouts.  Field by field in docs/ondisk.md.

# SuperBlock: block_size u32, nodes_max u16, reserved u16, heartbeat_interval_ms
# u32, io_timeout_ms u32, created_at_s u64, layout_total_bytes u64; then
# cluster_name (u8 length + UTF-8).
SUPERBLOCK_FIXED = struct.Struct("<IHHIIQQ")

# NodeConfig: name (u8 length + UTF-8).  node_id and incarnation are in the header.

# SlotRecord: timing 6 x u32 (heartbeat_interval_ms, io_timeout_ms,
# fence_after_ms, dead_after_ms, transition_timeout_ms, fast_poll_ms),
# request u8; lease: term u64, mbal u64, bal u64, inp u16, inp_incarnation u64,
# committed_term u64, master u16, master_incarnation u64, flags u8 (bit 0
# resigned); seen_epoch u64, registration count u8, ack count u8; then the
# registrations, then the acks.
SLOT_FIXED = struct.Struct("<6IBQQQHQQHQBQBB")
# Registration: level u16, barriers (join, leave, forced) 3 x u8; name (u8 length + UTF-8).
REGISTRATION = struct.Struct("<H3B")
# Ack: level u16, batch_id u64.
ACK = struct.Struct("<HQ")

# ViewRecord: term u64, epoch u64, next_batch_id u64, level count u8, member
# count u16, batch count u8, rejection count u8; then levels, members,
# batches, rejections.
VIEW_FIXED = struct.Struct("<QQQBHBB")
# LevelSpec: level u16, barriers 3 x u8.
LEVEL_SPEC = struct.Struct("<H3B")
# MemberEntry: node_id u16, incarnation u64, state u8, kind u8 (0: none),
# cursor i16, barrier u8, top_level i16, flags u8 (bit 0 forced, bit 1 ready,
# bit 2 leave_requested).
MEMBER = struct.Struct("<HQBBhBhB")
# Batch: level u16, batch_id u64, entry count u16, participant count u16; then
# entries (node_id u16, kind u8, barrier u8), then participants (u16 each).
BATCH = struct.Struct("<HQHH")
BATCH_ENTRY = struct.Struct("<HBB")
PARTICIPANT = struct.Struct("<H")
# Rejection: node_id u16, incarnation u64, level u16; reason (u8 length + UTF-8).
REJECTION = struct.Struct("<HQH")

# AreaHeader: area kind u16, area version u16, size_bytes u64.
AREA_FIXED = struct.Struct("<HHQ")

STRING_LENGTH = struct.Struct("<B")

LEASE_RESIGNED = 0x01
MEMBER_FORCED = 0x01
MEMBER_READY = 0x02
MEMBER_LEAVE_REQUESTED = 0x04

# Worst cases within the model's limits (asserted to fit their areas).
SLOT_RECORD_WORST_BYTES = (
    HEADER_BYTES + SLOT_FIXED.size
    + REGISTRATIONS_MAX * (REGISTRATION.size + STRING_LENGTH.size + SUBSYSTEM_NAME_MAX)
    + ACKS_MAX * ACK.size)
assert SLOT_RECORD_WORST_BYTES <= SLOT_RECORD_MAX_BYTES <= min(BLOCK_SIZES_BYTES), SLOT_RECORD_WORST_BYTES
SUPERBLOCK_WORST_BYTES = HEADER_BYTES + SUPERBLOCK_FIXED.size + 1 + CLUSTER_NAME_MAX
assert SUPERBLOCK_WORST_BYTES <= 512
NODE_CONFIG_WORST_BYTES = HEADER_BYTES + 1 + NODE_NAME_MAX
assert NODE_CONFIG_WORST_BYTES <= NODE_RECORD_BYTES
# A view at the model's limits in which every node is in at most one batch
# entry (a node's transition is at one level at a time) and every batch has
# every node as a participant.  Larger views are refused by the encoder.
VIEW_RECORD_WORST_BYTES = (
    HEADER_BYTES + VIEW_FIXED.size
    + LEVELS_MAX * LEVEL_SPEC.size
    + NODES_MAX * MEMBER.size
    + LEVELS_MAX * BATCH.size + NODES_MAX * BATCH_ENTRY.size
    + LEVELS_MAX * NODES_MAX * PARTICIPANT.size
    + VIEW_REJECTIONS_MAX * (REJECTION.size + STRING_LENGTH.size + REASON_MAX))
assert VIEW_RECORD_WORST_BYTES <= VIEW_COPY_BYTES, VIEW_RECORD_WORST_BYTES


def crc_of(record: bytes | bytearray | memoryview, payload_bytes: int) -> int:
    """The checksum of a record: crc32c over bytes [0, 60) and
    [64, 64 + payload_bytes)."""
    head = crc32c_module.crc32c(record[:CRC_OFFSET])
    return crc32c_module.crc32c(record[HEADER_BYTES:HEADER_BYTES + payload_bytes], head)


def uuid_text(raw: bytes) -> str:
    """The canonical text form of a raw 16-byte UUID."""
    return str(uuid_module.UUID(bytes=bytes(raw)))


# --------------------------------------------------------------------------
# Encode-side checks.  Each raises ValueError naming the field; the decoder
# runs the same checks on what it decoded.

def check_int(value: Any, low: int, high: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r}: must be an integer in {low}..{high}")
    if not low <= value <= high:
        raise ValueError(f"{name}={value}: out of range, must be {low}..{high}")
    return value


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: must be True or False")
    return value


def _check_count(items: Sequence[Any], limit: int, name: str, limit_name: str) -> None:
    if len(items) > limit:
        raise ValueError(f"{name}: {len(items)} entries, the limit is {limit_name}={limit}")


def encode_text(value: Any, name: str, max_bytes: int, min_bytes: int) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{name}={value!r}: must be a str")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name}={value!r}: not encodable as UTF-8 ({exc.reason})") from None
    if not min_bytes <= len(raw) <= max_bytes:
        raise ValueError(f"{name}={value!r}: {len(raw)} UTF-8 bytes, must be {min_bytes}..{max_bytes}")
    return STRING_LENGTH.pack(len(raw)) + raw


def check_uuid(value: Any, name: str = "cluster_uuid") -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != UUID_BYTES:
        raise ValueError(f"{name}={value!r}: must be {UUID_BYTES} raw bytes (uuid.UUID(...).bytes)")
    return bytes(value)


def _check_barriers(value: Any, name: str) -> tuple[int, int, int]:
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise ValueError(f"{name}={value!r}: must be a tuple of 3 barrier counts (join, leave, forced)")
    for index, count in enumerate(value):
        check_int(count, 0, BARRIERS_MAX, f"{name}[{index}]")
    return (value[0], value[1], value[2])


def _check_kind(value: Any, name: str) -> int:
    try:
        return int(Kind(value))
    except (ValueError, TypeError):
        raise ValueError(f"{name}={value!r}: must be a Kind (JOIN, LEAVE, FORCED)") from None


def _check_unique(keys: Sequence[Any], name: str, key_name: str) -> None:
    seen: set[Any] = set()
    for key in keys:
        if key in seen:
            raise ValueError(f"{name}: {key_name} {key!r} appears twice; each may appear once")
        seen.add(key)


def check_superblock(sb: SuperBlock) -> None:
    if not isinstance(sb, SuperBlock):
        raise ValueError(f"expected a SuperBlock, got {type(sb).__name__}")
    encode_text(sb.cluster_name, "SuperBlock.cluster_name", CLUSTER_NAME_MAX, 1)
    check_uuid(sb.cluster_uuid, "SuperBlock.cluster_uuid")
    if sb.block_size not in BLOCK_SIZES_BYTES:
        raise ValueError(f"SuperBlock.block_size={sb.block_size!r}: must be 512 or 4096")
    check_int(sb.nodes_max, 1, NODES_MAX, "SuperBlock.nodes_max")
    check_int(sb.heartbeat_interval_ms, 1, U32_MAX, "SuperBlock.heartbeat_interval_ms")
    check_int(sb.io_timeout_ms, 1, U32_MAX, "SuperBlock.io_timeout_ms")
    check_int(sb.created_at_s, 0, U64_MAX, "SuperBlock.created_at_s")


def check_node_config(cfg: NodeConfig) -> None:
    if not isinstance(cfg, NodeConfig):
        raise ValueError(f"expected a NodeConfig, got {type(cfg).__name__}")
    check_int(cfg.node_id, 1, NODES_MAX, "NodeConfig.node_id")
    encode_text(cfg.name, "NodeConfig.name", NODE_NAME_MAX, 1)
    check_int(cfg.incarnation, 0, U64_MAX, "NodeConfig.incarnation")


def check_slot(rec: SlotRecord) -> None:
    if not isinstance(rec, SlotRecord):
        raise ValueError(f"expected a SlotRecord, got {type(rec).__name__}")
    check_int(rec.node_id, 1, NODES_MAX, "SlotRecord.node_id")
    check_int(rec.incarnation, 0, U64_MAX, "SlotRecord.incarnation")
    check_int(rec.seq, 0, U64_MAX, "SlotRecord.seq")
    if not isinstance(rec.timing, Timing):
        raise ValueError(f"SlotRecord.timing={rec.timing!r}: must be a Timing")
    for name in _TIMING_FIELDS:
        check_int(getattr(rec.timing, name), 0, U32_MAX, f"SlotRecord.timing.{name}")
    try:
        Request(rec.request)
    except (ValueError, TypeError):
        raise ValueError(f"SlotRecord.request={rec.request!r}: must be a Request (NONE, JOIN, LEAVE)") from None
    lease = rec.lease
    if not isinstance(lease, Lease):
        raise ValueError(f"SlotRecord.lease={lease!r}: must be a Lease")
    check_int(lease.term, 0, U64_MAX, "SlotRecord.lease.term")
    check_int(lease.mbal, 0, U64_MAX, "SlotRecord.lease.mbal")
    check_int(lease.bal, 0, U64_MAX, "SlotRecord.lease.bal")
    check_int(lease.inp, 0, NODES_MAX, "SlotRecord.lease.inp")
    check_int(lease.inp_incarnation, 0, U64_MAX, "SlotRecord.lease.inp_incarnation")
    check_int(lease.committed_term, 0, U64_MAX, "SlotRecord.lease.committed_term")
    check_int(lease.master, 0, NODES_MAX, "SlotRecord.lease.master")
    check_int(lease.master_incarnation, 0, U64_MAX, "SlotRecord.lease.master_incarnation")
    _check_bool(lease.resigned, "SlotRecord.lease.resigned")
    _check_count(rec.registrations, REGISTRATIONS_MAX, "SlotRecord.registrations", "REGISTRATIONS_MAX")
    for index, reg in enumerate(rec.registrations):
        name = f"SlotRecord.registrations[{index}]"
        if not isinstance(reg, Registration):
            raise ValueError(f"{name}={reg!r}: must be a Registration")
        check_int(reg.level, 0, LEVEL_MAX, f"{name}.level")
        encode_text(reg.name, f"{name}.name", SUBSYSTEM_NAME_MAX, 1)
        _check_barriers(reg.barriers, f"{name}.barriers")
    _check_count(rec.acks, ACKS_MAX, "SlotRecord.acks", "ACKS_MAX")
    previous_level = -1
    for index, ack in enumerate(rec.acks):
        name = f"SlotRecord.acks[{index}]"
        if not isinstance(ack, (tuple, list)) or len(ack) != 2:
            raise ValueError(f"{name}={ack!r}: must be a (level, batch_id) pair")
        level = check_int(ack[0], 0, LEVEL_MAX, f"{name}.level")
        check_int(ack[1], 0, U64_MAX, f"{name}.batch_id")
        if level <= previous_level:
            raise ValueError(f"{name}.level={level}: acks must be sorted by level, one per level")
        previous_level = level
    check_int(rec.seen_epoch, 0, U64_MAX, "SlotRecord.seen_epoch")


def check_view(rec: ViewRecord) -> None:
    if not isinstance(rec, ViewRecord):
        raise ValueError(f"expected a ViewRecord, got {type(rec).__name__}")
    check_int(rec.node_id, 1, NODES_MAX, "ViewRecord.node_id")
    for name in ("incarnation", "seq", "term", "epoch", "next_batch_id"):
        check_int(getattr(rec, name), 0, U64_MAX, f"ViewRecord.{name}")
    _check_count(rec.levels, LEVELS_MAX, "ViewRecord.levels", "LEVELS_MAX")
    for index, spec in enumerate(rec.levels):
        name = f"ViewRecord.levels[{index}]"
        if not isinstance(spec, LevelSpec):
            raise ValueError(f"{name}={spec!r}: must be a LevelSpec")
        check_int(spec.level, 0, LEVEL_MAX, f"{name}.level")
        _check_barriers(spec.barriers, f"{name}.barriers")
    _check_unique([s.level for s in rec.levels], "ViewRecord.levels", "level")
    _check_count(rec.members, NODES_MAX, "ViewRecord.members", "NODES_MAX")
    for index, member in enumerate(rec.members):
        name = f"ViewRecord.members[{index}]"
        if not isinstance(member, MemberEntry):
            raise ValueError(f"{name}={member!r}: must be a MemberEntry")
        check_int(member.node_id, 1, NODES_MAX, f"{name}.node_id")
        check_int(member.incarnation, 0, U64_MAX, f"{name}.incarnation")
        if not isinstance(member.state, NodeState):
            raise ValueError(f"{name}.state={member.state!r}: must be a NodeState")
        if member.kind is not None:
            _check_kind(member.kind, f"{name}.kind")
        check_int(member.cursor, -1, LEVEL_MAX, f"{name}.cursor")
        check_int(member.barrier, 0, BARRIERS_MAX, f"{name}.barrier")
        check_int(member.top_level, -1, LEVEL_MAX, f"{name}.top_level")
        _check_bool(member.forced, f"{name}.forced")
        _check_bool(member.ready, f"{name}.ready")
        _check_bool(member.leave_requested, f"{name}.leave_requested")
    _check_unique([m.node_id for m in rec.members], "ViewRecord.members", "node_id")
    _check_count(rec.batches, LEVELS_MAX, "ViewRecord.batches", "LEVELS_MAX")
    for index, batch in enumerate(rec.batches):
        name = f"ViewRecord.batches[{index}]"
        if not isinstance(batch, Batch):
            raise ValueError(f"{name}={batch!r}: must be a Batch")
        check_int(batch.level, 0, LEVEL_MAX, f"{name}.level")
        check_int(batch.batch_id, 0, U64_MAX, f"{name}.batch_id")
        _check_count(batch.entries, NODES_MAX, f"{name}.entries", "NODES_MAX")
        for entry_index, entry in enumerate(batch.entries):
            entry_name = f"{name}.entries[{entry_index}]"
            if not isinstance(entry, BatchEntry):
                raise ValueError(f"{entry_name}={entry!r}: must be a BatchEntry")
            check_int(entry.node_id, 1, NODES_MAX, f"{entry_name}.node_id")
            _check_kind(entry.kind, f"{entry_name}.kind")
            check_int(entry.barrier, 0, BARRIERS_MAX, f"{entry_name}.barrier")
        _check_count(batch.participants, NODES_MAX, f"{name}.participants", "NODES_MAX")
        for participant_index, node_id in enumerate(batch.participants):
            check_int(node_id, 1, NODES_MAX, f"{name}.participants[{participant_index}]")
    _check_unique([b.level for b in rec.batches], "ViewRecord.batches", "level")
    _check_count(rec.rejections, VIEW_REJECTIONS_MAX, "ViewRecord.rejections", "VIEW_REJECTIONS_MAX")
    for index, rejection in enumerate(rec.rejections):
        name = f"ViewRecord.rejections[{index}]"
        if not isinstance(rejection, Rejection):
            raise ValueError(f"{name}={rejection!r}: must be a Rejection")
        check_int(rejection.node_id, 1, NODES_MAX, f"{name}.node_id")
        check_int(rejection.incarnation, 0, U64_MAX, f"{name}.incarnation")
        check_int(rejection.level, 0, LEVEL_MAX, f"{name}.level")
        encode_text(rejection.reason, f"{name}.reason", REASON_MAX, 0)


def check_area_header(header: AreaHeader) -> None:
    if not isinstance(header, AreaHeader):
        raise ValueError(f"expected an AreaHeader, got {type(header).__name__}")
    try:
        AreaKind(header.kind)
    except (ValueError, TypeError):
        raise ValueError(f"AreaHeader.kind={header.kind!r}: must be an AreaKind") from None
    check_int(header.area_version, 0, U16_MAX, "AreaHeader.area_version")
    check_int(header.size_bytes, 0, U64_MAX, "AreaHeader.size_bytes")


_TIMING_FIELDS = ("heartbeat_interval_ms", "io_timeout_ms", "fence_after_ms", "dead_after_ms",
                  "transition_timeout_ms", "fast_poll_ms")


# --------------------------------------------------------------------------
# The common header.

def seal(kind: RecordKind, cluster_uuid: bytes, node_id: int, incarnation: int, seq: int,
          payload: bytes) -> bytes:
    """Prefix ``payload`` with the common header and its checksum."""
    total = HEADER_BYTES + len(payload)
    if total > kind.capacity_bytes:
        raise ValueError(
            f"{kind.name} record needs {total} bytes but its area holds {kind.capacity_bytes}: "
            f"shrink the record's lists")
    head = HEADER.pack(kind.magic, FORMAT_VERSION, 0, cluster_uuid, node_id, 0, len(payload),
                       incarnation, seq, bytes(12), 0)
    crc = crc32c_module.crc32c(payload, crc32c_module.crc32c(head[:CRC_OFFSET]))
    return head[:CRC_OFFSET] + struct.pack("<I", crc) + payload


def read_header(kind: RecordKind, buf: bytes | bytearray | memoryview, *,
                cluster_uuid: bytes | None = None, node_id: int | None = None) -> tuple[RecordHeader, bytes]:
    """Validate everything up to and including the checksum; return the
    header and the payload bytes.  Raises a ``BlockError``."""
    if not isinstance(buf, bytes):
        buf = bytes(buf)
    what = kind.name
    if buf[:4] != kind.magic:
        if buf.count(0) == len(buf):
            raise NotWritten(f"{what}: never written (all {len(buf)} bytes are zero)", what)
        raise BadMagic(f"{what}: magic {buf[:4]!r} is not {kind.magic!r}", what)
    if len(buf) < HEADER_BYTES:
        raise BadLength(f"{what}: {len(buf)} bytes is shorter than the {HEADER_BYTES}-byte header", what)
    (magic, version, _reserved1, record_uuid, record_node, _reserved2, payload_bytes,
     incarnation, seq, _reserved3, crc) = HEADER.unpack_from(buf)
    if version != FORMAT_VERSION:
        raise BadVersion(f"{what}: format version {version}, this code reads version {FORMAT_VERSION}", what)
    if cluster_uuid is not None and record_uuid != cluster_uuid:
        raise ForeignCluster(
            f"{what}: belongs to cluster {uuid_text(record_uuid)}, expected {uuid_text(cluster_uuid)}", what)
    if node_id is not None and record_node != node_id:
        raise WrongNode(f"{what}: written by node {record_node} in the position of node {node_id}", what)
    if payload_bytes > kind.payload_max_bytes:
        raise BadLength(f"{what}: payload of {payload_bytes} bytes exceeds the kind's "
                        f"{kind.payload_max_bytes}-byte capacity", what)
    if HEADER_BYTES + payload_bytes > len(buf):
        raise BadLength(f"{what}: payload of {payload_bytes} bytes runs past the "
                        f"{len(buf)} bytes read", what)
    actual = crc_of(buf, payload_bytes)
    if actual != crc:
        raise BadChecksum(f"{what}: crc32c {actual:#010x} does not match the stored {crc:#010x} "
                          f"(torn or corrupt write)", what)
    header = RecordHeader(magic, version, record_uuid, record_node, payload_bytes, incarnation, seq, crc)
    return header, buf[HEADER_BYTES:HEADER_BYTES + payload_bytes]


class Reader:
    """Bounds-checked sequential reads from a payload; overruns raise
    ``BadPayload``."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: bytes, what: str):
        self.buf = buf
        self.pos = 0
        self.what = what

    def take(self, layout: struct.Struct, field_name: str) -> tuple[Any, ...]:
        end = self.pos + layout.size
        if end > len(self.buf):
            raise BadPayload(f"{self.what}: payload ends inside {field_name}", self.what)
        values = layout.unpack_from(self.buf, self.pos)
        self.pos = end
        return values

    def text(self, field_name: str) -> str:
        (length,) = self.take(STRING_LENGTH, field_name)
        end = self.pos + length
        if end > len(self.buf):
            raise BadPayload(f"{self.what}: payload ends inside {field_name}", self.what)
        raw = self.buf[self.pos:end]
        self.pos = end
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadPayload(f"{self.what}: {field_name} is not valid UTF-8", self.what) from None

    def finish(self) -> None:
        if self.pos != len(self.buf):
            raise BadPayload(f"{self.what}: {len(self.buf) - self.pos} unexpected bytes after the payload",
                             self.what)


RecordT = TypeVar("RecordT")

def decoded(kind: RecordKind, build: Callable[[], RecordT], check: Callable[[RecordT], None]) -> RecordT:
    """Run ``build`` (payload parsing) and ``check`` (the encoder's checks) and
    turn any ValueError into ``BadPayload``."""
    try:
        record = build()
        check(record)
    except BlockError:
        raise
    except (ValueError, KeyError) as exc:
        raise BadPayload(f"{kind.name}: {exc}", kind.name) from None
    return record


def _flags(value: int, known: int, name: str) -> int:
    if value & ~known:
        raise ValueError(f"{name}: unknown flag bits {value & ~known:#04x}")
    return value


# --------------------------------------------------------------------------
# SuperBlock

def encode_superblock(sb: SuperBlock) -> bytes:
    check_superblock(sb)
    layout = Layout(sb.block_size, sb.nodes_max)
    payload = SUPERBLOCK_FIXED.pack(sb.block_size, sb.nodes_max, 0, sb.heartbeat_interval_ms,
                                    sb.io_timeout_ms, sb.created_at_s, layout.total_bytes)
    payload += encode_text(sb.cluster_name, "SuperBlock.cluster_name", CLUSTER_NAME_MAX, 1)
    return seal(SUPERBLOCK, bytes(sb.cluster_uuid), 0, 0, 1, payload)


def decode_superblock(buf: bytes | bytearray | memoryview, *, cluster_uuid: bytes | None = None) -> SuperBlock:
    header, payload = read_header(SUPERBLOCK, buf, cluster_uuid=cluster_uuid, node_id=0)

    def build() -> SuperBlock:
        reader = Reader(payload, SUPERBLOCK.name)
        (block_size, nodes_max, _reserved, heartbeat_interval_ms, io_timeout_ms, created_at_s,
         layout_total_bytes) = reader.take(SUPERBLOCK_FIXED, "fixed fields")
        name = reader.text("cluster_name")
        reader.finish()
        sb = SuperBlock(cluster_name=name, cluster_uuid=header.cluster_uuid, block_size=block_size,
                        nodes_max=nodes_max, heartbeat_interval_ms=heartbeat_interval_ms,
                        io_timeout_ms=io_timeout_ms, created_at_s=created_at_s)
        check_superblock(sb)
        expected_total = Layout(block_size, nodes_max).total_bytes
        if layout_total_bytes != expected_total:
            raise ValueError(f"layout_total_bytes={layout_total_bytes} but this code's layout for "
                             f"{block_size}-byte blocks and {nodes_max} nodes has {expected_total}")
        return sb

    return decoded(SUPERBLOCK, build, check_superblock)


# --------------------------------------------------------------------------
# NodeConfig

def encode_node_config(cfg: NodeConfig, cluster_uuid: bytes) -> bytes:
    check_node_config(cfg)
    cluster_uuid = check_uuid(cluster_uuid)
    payload = encode_text(cfg.name, "NodeConfig.name", NODE_NAME_MAX, 1)
    return seal(NODE_CONFIG, cluster_uuid, cfg.node_id, cfg.incarnation, 1, payload)


def decode_node_config(buf: bytes | bytearray | memoryview, *, cluster_uuid: bytes | None = None,
                       node_id: int | None = None) -> NodeConfig:
    header, payload = read_header(NODE_CONFIG, buf, cluster_uuid=cluster_uuid, node_id=node_id)

    def build() -> NodeConfig:
        reader = Reader(payload, NODE_CONFIG.name)
        name = reader.text("name")
        reader.finish()
        return NodeConfig(node_id=header.node_id, name=name, incarnation=header.incarnation)

    return decoded(NODE_CONFIG, build, check_node_config)


# --------------------------------------------------------------------------
# SlotRecord

def encode_slot(rec: SlotRecord, cluster_uuid: bytes) -> bytes:
    check_slot(rec)
    cluster_uuid = check_uuid(cluster_uuid)
    timing, lease = rec.timing, rec.lease
    lease_flags = LEASE_RESIGNED if lease.resigned else 0
    parts = [SLOT_FIXED.pack(
        timing.heartbeat_interval_ms, timing.io_timeout_ms, timing.fence_after_ms, timing.dead_after_ms,
        timing.transition_timeout_ms, timing.fast_poll_ms,
        int(rec.request), lease.term, lease.mbal, lease.bal, lease.inp, lease.inp_incarnation,
        lease.committed_term, lease.master, lease.master_incarnation, lease_flags, rec.seen_epoch,
        len(rec.registrations), len(rec.acks))]
    for index, reg in enumerate(rec.registrations):
        parts.append(REGISTRATION.pack(reg.level, *reg.barriers))
        parts.append(encode_text(reg.name, f"SlotRecord.registrations[{index}].name", SUBSYSTEM_NAME_MAX, 1))
    for level, batch_id in rec.acks:
        parts.append(ACK.pack(level, batch_id))
    return seal(SLOT, cluster_uuid, rec.node_id, rec.incarnation, rec.seq, b"".join(parts))


def decode_slot(buf: bytes | bytearray | memoryview, *, cluster_uuid: bytes | None = None,
                node_id: int | None = None) -> SlotRecord:
    header, payload = read_header(SLOT, buf, cluster_uuid=cluster_uuid, node_id=node_id)

    def build() -> SlotRecord:
        reader = Reader(payload, SLOT.name)
        (heartbeat_interval_ms, io_timeout_ms, fence_after_ms, dead_after_ms, transition_timeout_ms,
         fast_poll_ms, request, term, mbal, bal, inp, inp_incarnation, committed_term, master,
         master_incarnation, lease_flags, seen_epoch, registration_count,
         ack_count) = reader.take(SLOT_FIXED, "fixed fields")
        _flags(lease_flags, LEASE_RESIGNED, "lease flags")
        if registration_count > REGISTRATIONS_MAX:
            raise ValueError(f"{registration_count} registrations, the limit is REGISTRATIONS_MAX={REGISTRATIONS_MAX}")
        if ack_count > ACKS_MAX:
            raise ValueError(f"{ack_count} acks, the limit is ACKS_MAX={ACKS_MAX}")
        registrations = []
        for index in range(registration_count):
            level, join, leave, forced = reader.take(REGISTRATION, f"registrations[{index}]")
            name = reader.text(f"registrations[{index}].name")
            registrations.append(Registration(level=level, name=name, barriers=(join, leave, forced)))
        acks = tuple(reader.take(ACK, f"acks[{index}]") for index in range(ack_count))
        reader.finish()
        return SlotRecord(
            node_id=header.node_id, incarnation=header.incarnation, seq=header.seq,
            timing=Timing(heartbeat_interval_ms, io_timeout_ms, fence_after_ms, dead_after_ms,
                          transition_timeout_ms, fast_poll_ms),
            request=Request(request),
            lease=Lease(term=term, mbal=mbal, bal=bal, inp=inp, inp_incarnation=inp_incarnation,
                        committed_term=committed_term, master=master, master_incarnation=master_incarnation,
                        resigned=bool(lease_flags & LEASE_RESIGNED)),
            registrations=tuple(registrations), acks=acks, seen_epoch=seen_epoch)

    return decoded(SLOT, build, check_slot)


# --------------------------------------------------------------------------
# ViewRecord

def encode_view(rec: ViewRecord, cluster_uuid: bytes) -> bytes:
    check_view(rec)
    cluster_uuid = check_uuid(cluster_uuid)
    parts = [VIEW_FIXED.pack(rec.term, rec.epoch, rec.next_batch_id, len(rec.levels), len(rec.members),
                             len(rec.batches), len(rec.rejections))]
    for spec in rec.levels:
        parts.append(LEVEL_SPEC.pack(spec.level, *spec.barriers))
    for m in rec.members:
        flags = ((MEMBER_FORCED if m.forced else 0) | (MEMBER_READY if m.ready else 0)
                 | (MEMBER_LEAVE_REQUESTED if m.leave_requested else 0))
        kind_code = 0 if m.kind is None else int(Kind(m.kind))
        parts.append(MEMBER.pack(m.node_id, m.incarnation, STATE_CODES[m.state], kind_code, m.cursor,
                                 m.barrier, m.top_level, flags))
    for batch in rec.batches:
        parts.append(BATCH.pack(batch.level, batch.batch_id, len(batch.entries), len(batch.participants)))
        for entry in batch.entries:
            parts.append(BATCH_ENTRY.pack(entry.node_id, int(Kind(entry.kind)), entry.barrier))
        parts.append(struct.pack(f"<{len(batch.participants)}H", *batch.participants))
    for index, rejection in enumerate(rec.rejections):
        parts.append(REJECTION.pack(rejection.node_id, rejection.incarnation, rejection.level))
        parts.append(encode_text(rejection.reason, f"ViewRecord.rejections[{index}].reason", REASON_MAX, 0))
    return seal(VIEW, cluster_uuid, rec.node_id, rec.incarnation, rec.seq, b"".join(parts))


def _kind_or_none(code: int) -> Kind | None:
    return None if code == 0 else Kind(code)


def decode_view(buf: bytes | bytearray | memoryview, *, cluster_uuid: bytes | None = None,
                node_id: int | None = None) -> ViewRecord:
    header, payload = read_header(VIEW, buf, cluster_uuid=cluster_uuid, node_id=node_id)

    def build() -> ViewRecord:
        reader = Reader(payload, VIEW.name)
        (term, epoch, next_batch_id, level_count, member_count, batch_count,
         rejection_count) = reader.take(VIEW_FIXED, "fixed fields")
        for count, limit, name in ((level_count, LEVELS_MAX, "levels"), (member_count, NODES_MAX, "members"),
                                   (batch_count, LEVELS_MAX, "batches"),
                                   (rejection_count, VIEW_REJECTIONS_MAX, "rejections")):
            if count > limit:
                raise ValueError(f"{count} {name}, the limit is {limit}")
        levels = []
        for index in range(level_count):
            level, join, leave, forced = reader.take(LEVEL_SPEC, f"levels[{index}]")
            levels.append(LevelSpec(level=level, barriers=(join, leave, forced)))
        members = []
        for index in range(member_count):
            (member_node, incarnation, state, kind, cursor, barrier, top_level,
             flags) = reader.take(MEMBER, f"members[{index}]")
            _flags(flags, MEMBER_FORCED | MEMBER_READY | MEMBER_LEAVE_REQUESTED, f"members[{index}].flags")
            if state not in STATE_BY_CODE:
                raise ValueError(f"members[{index}].state: unknown state code {state}")
            members.append(MemberEntry(
                node_id=member_node, incarnation=incarnation, state=STATE_BY_CODE[state],
                kind=_kind_or_none(kind), cursor=cursor, barrier=barrier, top_level=top_level,
                forced=bool(flags & MEMBER_FORCED), ready=bool(flags & MEMBER_READY),
                leave_requested=bool(flags & MEMBER_LEAVE_REQUESTED)))
        batches = []
        for index in range(batch_count):
            level, batch_id, entry_count, participant_count = reader.take(BATCH, f"batches[{index}]")
            if entry_count > NODES_MAX or participant_count > NODES_MAX:
                raise ValueError(f"batches[{index}]: {entry_count} entries / {participant_count} "
                                 f"participants, the limit is NODES_MAX={NODES_MAX}")
            entries = []
            for entry_index in range(entry_count):
                entry_node, kind, barrier = reader.take(BATCH_ENTRY, f"batches[{index}].entries[{entry_index}]")
                entries.append(BatchEntry(node_id=entry_node, kind=Kind(kind), barrier=barrier))
            participants = reader.take(struct.Struct(f"<{participant_count}H"), f"batches[{index}].participants")
            batches.append(Batch(level=level, batch_id=batch_id, entries=tuple(entries),
                                 participants=tuple(participants)))
        rejections = []
        for index in range(rejection_count):
            rejected_node, incarnation, level = reader.take(REJECTION, f"rejections[{index}]")
            reason = reader.text(f"rejections[{index}].reason")
            rejections.append(Rejection(node_id=rejected_node, incarnation=incarnation, level=level, reason=reason))
        reader.finish()
        return ViewRecord(node_id=header.node_id, incarnation=header.incarnation, seq=header.seq, term=term,
                          epoch=epoch, next_batch_id=next_batch_id, levels=tuple(levels), members=tuple(members),
                          batches=tuple(batches), rejections=tuple(rejections))

    return decoded(VIEW, build, check_view)


# --------------------------------------------------------------------------
# AreaHeader

def encode_area_header(header: AreaHeader, cluster_uuid: bytes) -> bytes:
    check_area_header(header)
    cluster_uuid = check_uuid(cluster_uuid)
    payload = AREA_FIXED.pack(int(header.kind), header.area_version, header.size_bytes)
    return seal(AREA_HEADER, cluster_uuid, 0, 0, 1, payload)


def decode_area_header(buf: bytes | bytearray | memoryview, *, cluster_uuid: bytes | None = None,
                       kind: AreaKind | None = None) -> AreaHeader:
    _header, payload = read_header(AREA_HEADER, buf, cluster_uuid=cluster_uuid, node_id=0)

    def build() -> AreaHeader:
        reader = Reader(payload, AREA_HEADER.name)
        kind_code, area_version, size_bytes = reader.take(AREA_FIXED, "fixed fields")
        reader.finish()
        found = AreaKind(kind_code)
        if kind is not None and found != kind:
            raise ValueError(f"the area at this position holds kind {found.name}, expected {AreaKind(kind).name}")
        return AreaHeader(kind=found, area_version=area_version, size_bytes=size_bytes)

    return decoded(AREA_HEADER, build, check_area_header)


def pad_to(data: bytes, multiple: int) -> bytes:
    """``data`` zero-padded to a multiple of ``multiple`` bytes (at least one)."""
    length = max(multiple, -(-len(data) // multiple) * multiple)
    return data + bytes(length - len(data))
