"""The record codecs: round trips, the pinned byte format, the order of the
decoder's checks, and that no input makes a decoder raise anything but a
BlockError."""
from __future__ import annotations

import dataclasses
import struct

import crc32c
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from clusterfw.core.model import (
    ACKS_MAX,
    BARRIERS_MAX,
    LEVELS_MAX,
    NODES_MAX,
    REGISTRATIONS_MAX,
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
from clusterfw.ondisk import codec
from clusterfw.ondisk.errors import (
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
from clusterfw.ondisk.layout import AreaKind

try:
    import strategies as cst
except ImportError:  # tests/ imported as a package
    from tests import strategies as cst

UUID = bytes(range(16))
OTHER_UUID = bytes(range(16, 32))
TIMING = Timing(100, 200, 1000, 2000, 5000, 20)
SLOT = SlotRecord(
    3, 7, 42, TIMING, Request.JOIN,
    Lease(term=2, mbal=5, bal=5, inp=3, inp_incarnation=7, committed_term=1, master=1, master_incarnation=9),
    (Registration(10, "dlm", (1, 2, 1)),), ((10, 4),), 5)
VIEW = ViewRecord(
    1, 7, 9, term=2, epoch=4, next_batch_id=3,
    levels=(LevelSpec(0, (1, 1, 1)), LevelSpec(10, (2, 1, 1))),
    members=(MemberEntry(1, 7, NodeState.JOINED), MemberEntry(2, 3, NodeState.JOINING, Kind.JOIN, 10, 1, 10)),
    batches=(Batch(10, 2, (BatchEntry(2, Kind.JOIN, 1),), (1, 2)),),
    rejections=(Rejection(4, 1, 10, "barrier counts differ"),))
SUPER = SuperBlock("lab", UUID, 512, 16, 100, 200, 1700000000)


# Each kind: (encode(record, uuid), decode(buf, uuid, node), example, its node id)
def _enc_sb(rec, uuid):
    return codec.encode_superblock(dataclasses.replace(rec, cluster_uuid=uuid))


CODECS = {
    "superblock": (_enc_sb, lambda b, u, n: codec.decode_superblock(b, cluster_uuid=u), SUPER, 0),
    "node-config": (codec.encode_node_config,
                    lambda b, u, n: codec.decode_node_config(b, cluster_uuid=u, node_id=n),
                    NodeConfig(5, "n5"), 5),
    "slot": (codec.encode_slot, lambda b, u, n: codec.decode_slot(b, cluster_uuid=u, node_id=n), SLOT, 3),
    "view": (codec.encode_view, lambda b, u, n: codec.decode_view(b, cluster_uuid=u, node_id=n), VIEW, 1),
    "area-header": (codec.encode_area_header,
                    lambda b, u, n: codec.decode_area_header(b, cluster_uuid=u),
                    codec.AreaHeader(AreaKind.DLM_LOCKS, 1, 1 << 20), 0),
}
DECODERS = [codec.decode_superblock, codec.decode_node_config, codec.decode_slot, codec.decode_view,
            codec.decode_area_header]


def reseal(record: bytes) -> bytes:
    """Recompute the checksum of a (modified) record."""
    payload_bytes = struct.unpack_from("<I", record, 28)[0]
    crc = codec.crc_of(record, payload_bytes)
    return record[:60] + struct.pack("<I", crc) + record[64:]


# --------------------------------------------------------------------------
# round trips

@given(cst.slot_records(), cst.cluster_uuids)
def test_slot_round_trip(rec, uuid):
    data = codec.encode_slot(rec, uuid)
    assert len(data) <= codec.SLOT_RECORD_MAX_BYTES
    assert codec.decode_slot(data, cluster_uuid=uuid, node_id=rec.node_id) == rec
    assert codec.decode_slot(data + bytes(512 - len(data))) == rec  # padding is ignored


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(cst.view_records(), cst.cluster_uuids)
def test_view_round_trip(rec, uuid):
    data = codec.encode_view(rec, uuid)
    assert codec.decode_view(data, cluster_uuid=uuid, node_id=rec.node_id) == rec


@given(cst.superblocks)
def test_superblock_round_trip(sb):
    assert codec.decode_superblock(codec.encode_superblock(sb), cluster_uuid=sb.cluster_uuid) == sb


@given(cst.node_configs(), cst.cluster_uuids)
def test_node_config_round_trip(cfg, uuid):
    assert codec.decode_node_config(codec.encode_node_config(cfg, uuid), cluster_uuid=uuid,
                                    node_id=cfg.node_id) == cfg


@given(cst.area_headers, cst.cluster_uuids)
def test_area_header_round_trip(header, uuid):
    data = codec.encode_area_header(header, uuid)
    assert codec.decode_area_header(data, cluster_uuid=uuid, kind=header.kind) == header


def test_worst_case_slot_fits_one_512_byte_sector():
    rec = SlotRecord(
        NODES_MAX, 2**64 - 1, 2**64 - 1, Timing(*(2**32 - 1,) * 6), Request.LEAVE,
        Lease(*(2**64 - 1,) * 3, NODES_MAX, 2**64 - 1, 2**64 - 1, NODES_MAX, 2**64 - 1, True),
        tuple(Registration(level, "x" * 11, (8, 8, 8)) for level in range(REGISTRATIONS_MAX)),
        tuple((level, 2**64 - 1) for level in range(ACKS_MAX)), 2**64 - 1)
    data = codec.encode_slot(rec, UUID)
    assert len(data) == codec.SLOT_RECORD_WORST_BYTES <= 512
    assert codec.decode_slot(data) == rec


def test_view_at_the_model_limits_fits_its_copy():
    """Every node a member, every level a batch naming every node as a
    participant, each node in one batch entry, the most rejections."""
    members = tuple(MemberEntry(n, 2**64 - 1, NodeState.JOINING, Kind.JOIN, 100, 8, 100, True, True, True)
                    for n in range(1, NODES_MAX + 1))
    node_ids = list(range(1, NODES_MAX + 1))
    batches = tuple(
        Batch(level, 2**64 - 1,
              tuple(BatchEntry(n, Kind.FORCED, 8) for n in node_ids[level::LEVELS_MAX]), tuple(node_ids))
        for level in range(LEVELS_MAX))
    rec = ViewRecord(NODES_MAX, 1, 1, 1, 1, 1, tuple(LevelSpec(level, (8, 8, 8)) for level in range(LEVELS_MAX)),
                     members, batches,
                     tuple(Rejection(1, 1, 1, "r" * 48) for _ in range(codec.VIEW_REJECTIONS_MAX)))
    data = codec.encode_view(rec, UUID)
    assert len(data) == codec.VIEW_RECORD_WORST_BYTES <= 16384
    assert codec.decode_view(data) == rec


# --------------------------------------------------------------------------
# the pinned format: these bytes must never change without a version bump

GOLDEN_SLOT = bytes.fromhex(
    "4346534c01000000000102030405060708090a0b0c0d0e0f030000006b00000007000000000000002a000000"
    "000000000000000000000000000000001262953564000000c8000000e8030000d00700008813000014000000"
    "010200000000000000050000000000000005000000000000000300070000000000000001000000000000000100"
    "090000000000000000050000000000000001010a0001020103646c6d0a000400000000000000")
GOLDEN_SUPERBLOCK = bytes.fromhex(
    "4346534201000000000102030405060708090a0b0c0d0e0f0000000024000000000000000000000001000000"
    "0000000000000000000000000000000011a5101d000200001000000064000000c800000000f153650000000000"
    "00300000000000036c6162")


def test_golden_bytes():
    assert codec.encode_slot(SLOT, UUID) == GOLDEN_SLOT
    assert codec.encode_superblock(SUPER) == GOLDEN_SUPERBLOCK
    assert codec.FORMAT_VERSION == 1


@pytest.mark.parametrize("kind", sorted(CODECS))
def test_common_header_fields_sit_where_the_docs_say(kind):
    encode, _decode, example, node_id = CODECS[kind]
    data = encode(example, UUID)
    magic = {k.name: k.magic for k in codec.RECORD_KINDS}[kind]
    assert data[0:4] == magic
    assert struct.unpack_from("<H", data, 4)[0] == codec.FORMAT_VERSION
    assert data[6:8] == b"\0\0" and data[26:28] == b"\0\0" and data[48:60] == bytes(12)
    assert data[8:24] == UUID
    assert struct.unpack_from("<H", data, 24)[0] == node_id
    payload_bytes = struct.unpack_from("<I", data, 28)[0]
    assert len(data) == 64 + payload_bytes
    crc = struct.unpack_from("<I", data, 60)[0]
    assert crc == crc32c.crc32c(data[:60] + data[64:])


def test_magics_are_distinct_ascii():
    magics = [k.magic for k in codec.RECORD_KINDS]
    assert len(set(magics)) == len(magics)
    assert all(m.isascii() and len(m) == 4 for m in magics)


# --------------------------------------------------------------------------
# the decoder's checks, each with its own error, in order

def _with(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def _slot_with_payload(payload: bytes) -> bytes:
    """A slot record for node 3 with an arbitrary payload and a valid crc."""
    head = codec.HEADER.pack(b"CFSL", codec.FORMAT_VERSION, 0, UUID, 3, 0, len(payload), 7, 42, bytes(12), 0)
    return reseal(head + payload)


GOOD = codec.encode_slot(SLOT, UUID)
GOOD_PAYLOAD = GOOD[64:]

REJECTIONS = [
    ("all zero", bytes(512), NotWritten),
    ("empty", b"", NotWritten),
    ("other magic", _with(GOOD, 0, b"XXXX"), BadMagic),
    ("a view where a slot belongs", codec.encode_view(VIEW, UUID), BadMagic),
    ("zero magic, rest written", _with(GOOD, 0, bytes(4)), BadMagic),
    ("truncated header", GOOD[:40], BadLength),
    ("future version", reseal(_with(GOOD, 4, b"\x02\x00")), BadVersion),
    ("version wins over uuid", reseal(_with(_with(GOOD, 4, b"\x02\x00"), 8, OTHER_UUID)), BadVersion),
    ("foreign cluster", reseal(_with(GOOD, 8, OTHER_UUID)), ForeignCluster),
    ("uuid wins over node", reseal(_with(_with(GOOD, 8, OTHER_UUID), 24, b"\x04\x00")), ForeignCluster),
    ("wrong node", reseal(_with(GOOD, 24, b"\x04\x00")), WrongNode),
    ("node wins over checksum", _with(GOOD, 24, b"\x04\x00"), WrongNode),
    ("payload over capacity", reseal(_with(GOOD, 28, struct.pack("<I", 449))), BadLength),
    ("payload past the buffer", GOOD[:-1], BadLength),
    ("length wins over checksum", _with(GOOD, 28, struct.pack("<I", 5000)), BadLength),
    ("flipped payload bit", _with(GOOD, 100, bytes([GOOD[100] ^ 1])), BadChecksum),
    ("flipped seq bit", _with(GOOD, 40, bytes([GOOD[40] ^ 0x80])), BadChecksum),
    ("flipped crc bit", _with(GOOD, 61, bytes([GOOD[61] ^ 4])), BadChecksum),
    ("unknown request", _slot_with_payload(_with(GOOD_PAYLOAD, 24, b"\x09")), BadPayload),
    ("unknown lease flag", _slot_with_payload(_with(GOOD_PAYLOAD, 25 + 8 * 6 + 2 * 2, b"\x02")), BadPayload),
    ("trailing payload byte", _slot_with_payload(GOOD_PAYLOAD + b"\0"), BadPayload),
    ("payload cut short", _slot_with_payload(GOOD_PAYLOAD[:-3]), BadPayload),
    ("registration count over limit", _slot_with_payload(_with(GOOD_PAYLOAD, 86, b"\x09")), BadPayload),
    ("invalid utf-8 name", _slot_with_payload(GOOD_PAYLOAD.replace(b"dlm", b"d\xffm")), BadPayload),
    ("barrier count over limit", _slot_with_payload(_with(GOOD_PAYLOAD, 90, b"\x09")), BadPayload),
]


@pytest.mark.parametrize("name,data,error", REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_decoder_rejects_in_order(name, data, error):
    with pytest.raises(error) as info:
        codec.decode_slot(data, cluster_uuid=UUID, node_id=3)
    assert isinstance(info.value, BlockError)
    assert str(info.value)


def test_checks_that_need_an_expectation_only_run_with_one():
    foreign = reseal(_with(GOOD, 8, OTHER_UUID))
    assert codec.decode_slot(foreign, node_id=3).node_id == 3
    assert codec.decode_slot(GOOD, cluster_uuid=UUID).node_id == 3


def test_torn_multi_sector_view_is_a_bad_checksum():
    def view(seq: int) -> bytes:
        members = tuple(MemberEntry(n, n + seq, NodeState.JOINED) for n in range(1, 100))
        return codec.pad_to(codec.encode_view(dataclasses.replace(VIEW, seq=seq, members=members), UUID), 512)

    old, new = view(1), view(2)
    assert len(new) == len(old) > 512
    for torn in (new[:512] + old[512:], old[:512] + new[512:]):
        with pytest.raises(BadChecksum):
            codec.decode_view(torn, cluster_uuid=UUID, node_id=1)


def test_area_header_of_the_wrong_kind_is_rejected():
    data = codec.encode_area_header(codec.AreaHeader(AreaKind.DLM_LOCKS, 1, 4096), UUID)
    with pytest.raises(BadPayload, match="DLM_LOCKS"):
        codec.decode_area_header(data, kind=AreaKind.SERVICE_REGISTRY)


def test_superblock_whose_layout_disagrees_is_rejected():
    payload = bytearray(GOLDEN_SUPERBLOCK[64:])
    struct.pack_into("<Q", payload, 24, 12345)  # layout_total_bytes
    data = reseal(GOLDEN_SUPERBLOCK[:64] + bytes(payload))
    with pytest.raises(BadPayload, match="layout_total_bytes"):
        codec.decode_superblock(data)


# --------------------------------------------------------------------------
# nothing but BlockError, whatever the bytes

@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: d.__name__)
@given(data=st.binary(max_size=2048), uuid=st.none() | cst.cluster_uuids)
def test_random_bytes_only_raise_block_errors(decode, data, uuid):
    try:
        decode(data, cluster_uuid=uuid)
    except BlockError:
        pass


@pytest.mark.parametrize("magic", [k.magic for k in codec.RECORD_KINDS])
@given(payload=st.binary(max_size=600), node_id=st.integers(0, 300))
def test_random_payload_with_valid_header_and_crc_only_raises_block_errors(magic, payload, node_id):
    """Get past every header check so the payload parsers see arbitrary
    bytes; whatever decodes must re-encode to the same record."""
    head = codec.HEADER.pack(magic, codec.FORMAT_VERSION, 0, UUID, node_id, 0, len(payload), 1, 2, bytes(12), 0)
    data = reseal(head + payload)
    for decode in DECODERS:
        try:
            rec = decode(data, cluster_uuid=UUID)
        except BlockError:
            continue
        encode, again, _example, _node = CODECS[KIND_OF_TYPE[type(rec)]]
        assert again(encode(rec, UUID), UUID, None) == rec


KIND_OF_TYPE = {SuperBlock: "superblock", NodeConfig: "node-config", SlotRecord: "slot", ViewRecord: "view",
                codec.AreaHeader: "area-header"}


def _valid_records():
    return st.one_of(
        cst.slot_records().map(lambda r: ("slot", r)),
        cst.view_records(members_max=4, batch_nodes_max=3).map(lambda r: ("view", r)),
        cst.superblocks.map(lambda r: ("superblock", r)),
        cst.node_configs().map(lambda r: ("node-config", r)),
        cst.area_headers.map(lambda r: ("area-header", r)),
    )


def _node_of(kind, rec):
    return 0 if kind in ("superblock", "area-header") else rec.node_id


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(case=_valid_records(), data=st.data())
def test_bit_flips_are_detected(case, data):
    kind, rec = case
    encode, decode, _example, _node = CODECS[kind]
    uuid = rec.cluster_uuid if kind == "superblock" else UUID
    clean = codec.pad_to(encode(rec, uuid), 512)
    covered = 64 + struct.unpack_from("<I", clean, 28)[0]
    bits = data.draw(st.lists(st.integers(0, len(clean) * 8 - 1), min_size=1, max_size=3, unique=True))
    flipped = bytearray(clean)
    for bit in bits:
        flipped[bit // 8] ^= 1 << (bit % 8)
    try:
        result = decode(bytes(flipped), uuid, _node_of(kind, rec))
    except BlockError:
        return
    # Only flips in the padding after the record may go unnoticed.
    assert all(bit // 8 >= covered for bit in bits), bits
    assert result == rec


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(case=_valid_records(), data=st.data())
def test_truncations_are_detected(case, data):
    kind, rec = case
    encode, decode, _example, _node = CODECS[kind]
    uuid = rec.cluster_uuid if kind == "superblock" else UUID
    clean = encode(rec, uuid)
    cut = data.draw(st.integers(0, len(clean) - 1))
    with pytest.raises(BlockError):
        decode(clean[:cut], uuid, _node_of(kind, rec))


@given(rec=cst.slot_records(), data=st.data())
def test_overwritten_spans_are_detected(rec, data):
    clean = codec.encode_slot(rec, UUID)
    start = data.draw(st.integers(0, len(clean) - 1))
    junk = data.draw(st.binary(min_size=1, max_size=len(clean) - start))
    assume(junk != clean[start:start + len(junk)])
    dirty = clean[:start] + junk + clean[start + len(junk):]
    with pytest.raises(BlockError):
        codec.decode_slot(dirty, cluster_uuid=UUID, node_id=rec.node_id)


# --------------------------------------------------------------------------
# encoding refuses what breaks a limit, naming the field

TOO_MUCH = [
    ("SlotRecord.node_id", lambda: dataclasses.replace(SLOT, node_id=0)),
    ("SlotRecord.node_id", lambda: dataclasses.replace(SLOT, node_id=NODES_MAX + 1)),
    ("SlotRecord.seq", lambda: dataclasses.replace(SLOT, seq=-1)),
    ("SlotRecord.incarnation", lambda: dataclasses.replace(SLOT, incarnation=2**64)),
    ("SlotRecord.timing.fence_after_ms", lambda: dataclasses.replace(
        SLOT, timing=dataclasses.replace(TIMING, fence_after_ms=2**32))),
    ("SlotRecord.request", lambda: dataclasses.replace(SLOT, request=7)),
    ("SlotRecord.lease.inp", lambda: dataclasses.replace(SLOT, lease=Lease(inp=NODES_MAX + 1))),
    ("SlotRecord.lease.master", lambda: dataclasses.replace(SLOT, lease=Lease(master=-1))),
    ("SlotRecord.lease.resigned", lambda: dataclasses.replace(SLOT, lease=Lease(resigned=1))),
    ("REGISTRATIONS_MAX", lambda: dataclasses.replace(
        SLOT, registrations=tuple(Registration(i, "s") for i in range(REGISTRATIONS_MAX + 1)))),
    ("SlotRecord.registrations[0].name", lambda: dataclasses.replace(
        SLOT, registrations=(Registration(1, "x" * 12),))),
    ("SlotRecord.registrations[0].name", lambda: dataclasses.replace(
        SLOT, registrations=(Registration(1, ""),))),
    ("SlotRecord.registrations[0].name", lambda: dataclasses.replace(
        SLOT, registrations=(Registration(1, "\ud800"),))),
    ("SlotRecord.registrations[0].barriers[1]", lambda: dataclasses.replace(
        SLOT, registrations=(Registration(1, "dlm", (1, BARRIERS_MAX + 1, 1)),))),
    ("SlotRecord.registrations[0].level", lambda: dataclasses.replace(
        SLOT, registrations=(Registration(codec.LEVEL_MAX + 1, "dlm"),))),
    ("ACKS_MAX", lambda: dataclasses.replace(SLOT, acks=tuple((i, 1) for i in range(ACKS_MAX + 1)))),
    ("SlotRecord.acks[1].level", lambda: dataclasses.replace(SLOT, acks=((10, 1), (5, 1)))),
    ("SlotRecord.acks[1].level", lambda: dataclasses.replace(SLOT, acks=((10, 1), (10, 2)))),
    ("ViewRecord.term", lambda: dataclasses.replace(VIEW, term=-5)),
    ("LEVELS_MAX", lambda: dataclasses.replace(
        VIEW, levels=tuple(LevelSpec(i, (1, 1, 1)) for i in range(LEVELS_MAX + 1)))),
    ("ViewRecord.levels", lambda: dataclasses.replace(VIEW, levels=(LevelSpec(1, (1, 1, 1)),) * 2)),
    ("ViewRecord.members", lambda: dataclasses.replace(VIEW, members=(MemberEntry(1, 1, NodeState.JOINED),) * 2)),
    ("ViewRecord.members[0].state", lambda: dataclasses.replace(VIEW, members=(MemberEntry(1, 1, "joined"),))),
    ("ViewRecord.members[0].kind", lambda: dataclasses.replace(
        VIEW, members=(MemberEntry(1, 1, NodeState.JOINED, kind=9),))),
    ("ViewRecord.members[0].cursor", lambda: dataclasses.replace(
        VIEW, members=(MemberEntry(1, 1, NodeState.JOINED, cursor=-2),))),
    ("ViewRecord.batches[0].participants[0]", lambda: dataclasses.replace(
        VIEW, batches=(Batch(1, 1, (), (0,)),))),
    ("ViewRecord.rejections[0].reason", lambda: dataclasses.replace(
        VIEW, rejections=(Rejection(1, 1, 1, "r" * 49),))),
    ("VIEW_REJECTIONS_MAX", lambda: dataclasses.replace(
        VIEW, rejections=(Rejection(1, 1, 1, ""),) * (codec.VIEW_REJECTIONS_MAX + 1))),
    ("holds 16384", lambda: dataclasses.replace(VIEW, batches=tuple(
        Batch(level, 1, tuple(BatchEntry(n, Kind.JOIN, 0) for n in range(1, 256)), tuple(range(1, 256)))
        for level in range(LEVELS_MAX)))),
]


@pytest.mark.parametrize("field,make", TOO_MUCH, ids=[f"{i}-{t[0]}" for i, t in enumerate(TOO_MUCH)])
def test_encoding_refuses_records_over_a_limit(field, make):
    rec = make()
    encode = codec.encode_slot if isinstance(rec, SlotRecord) else codec.encode_view
    with pytest.raises(ValueError) as info:
        encode(rec, UUID)
    assert field in str(info.value)


@pytest.mark.parametrize("field,sb", [
    ("SuperBlock.cluster_name", dataclasses.replace(SUPER, cluster_name="")),
    ("SuperBlock.cluster_name", dataclasses.replace(SUPER, cluster_name="c" * 33)),
    ("SuperBlock.cluster_uuid", dataclasses.replace(SUPER, cluster_uuid=b"short")),
    ("SuperBlock.block_size", dataclasses.replace(SUPER, block_size=1024)),
    ("SuperBlock.nodes_max", dataclasses.replace(SUPER, nodes_max=256)),
    ("SuperBlock.io_timeout_ms", dataclasses.replace(SUPER, io_timeout_ms=0)),
])
def test_encoding_refuses_bad_superblocks(field, sb):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        codec.encode_superblock(sb)


def test_encoding_refuses_bad_uuid_and_node_names():
    with pytest.raises(ValueError, match="cluster_uuid"):
        codec.encode_slot(SLOT, b"\0" * 15)
    with pytest.raises(ValueError, match="NodeConfig.name"):
        codec.encode_node_config(NodeConfig(1, "n" * 33), UUID)
    with pytest.raises(ValueError, match="NodeConfig.node_id"):
        codec.encode_node_config(NodeConfig(0, "n1"), UUID)


# --------------------------------------------------------------------------
# the model and the codec move together

ENCODED_FIELDS = {
    SuperBlock: {"cluster_name", "cluster_uuid", "block_size", "nodes_max", "heartbeat_interval_ms",
                 "io_timeout_ms", "created_at_s"},
    NodeConfig: {"node_id", "name", "incarnation"},
    SlotRecord: {"node_id", "incarnation", "seq", "timing", "request", "lease", "registrations", "acks",
                 "seen_epoch"},
    Timing: {"heartbeat_interval_ms", "io_timeout_ms", "fence_after_ms", "dead_after_ms",
             "transition_timeout_ms", "fast_poll_ms"},
    Lease: {"term", "mbal", "bal", "inp", "inp_incarnation", "committed_term", "master", "master_incarnation",
            "resigned"},
    Registration: {"level", "name", "barriers"},
    ViewRecord: {"node_id", "incarnation", "seq", "term", "epoch", "next_batch_id", "levels", "members",
                 "batches", "rejections"},
    LevelSpec: {"level", "barriers"},
    MemberEntry: {"node_id", "incarnation", "state", "kind", "cursor", "barrier", "top_level", "forced", "ready",
                  "leave_requested"},
    Batch: {"level", "batch_id", "entries", "participants"},
    BatchEntry: {"node_id", "kind", "barrier"},
    Rejection: {"node_id", "incarnation", "level", "reason"},
}


@pytest.mark.parametrize("cls", list(ENCODED_FIELDS), ids=lambda c: c.__name__)
def test_every_model_field_is_encoded(cls):
    """A field added to the model would otherwise round-trip silently as its
    default: the codec, docs/ondisk.md and FORMAT_VERSION must follow it."""
    assert {f.name for f in dataclasses.fields(cls)} == ENCODED_FIELDS[cls], (
        f"{cls.__name__} changed: update clusterfw/ondisk/codec.py, docs/ondisk.md, tests/strategies.py "
        f"and this list (and bump FORMAT_VERSION once the format has shipped)")
