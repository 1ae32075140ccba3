"""The DLM's lock sectors on disk: the area's size and layout, the entry
codec's round trips, its pinned bytes, its rejections, and that no input makes
it raise anything but a BlockError."""
from __future__ import annotations

import struct

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterfw.core.dlm import (
    NAME_MAX_BYTES,
    EntryState,
    LockEntry,
    LockMode,
    stripe_of,
)
from clusterfw.core.dlm import crc32c as core_crc32c
from clusterfw.core.model import NODES_MAX
from clusterfw.core.node import Unreadable
from clusterfw.ondisk import codec, dlm_codec
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
from clusterfw.ondisk.layout import (
    MIB,
    AreaKind,
    Layout,
    dlm_area_bytes_for,
    dlm_stripes_for,
)

UUID = bytes(range(16))
OTHER_UUID = bytes(range(16, 32))
ENTRY = LockEntry(3, 0x1122334455667788, 9, 17, "vol-a", EntryState.HELD, LockMode.EXCLUSIVE, 42, 7,
                  owner=4242, stamp_ms=1_700_000_000_123)
GOLDEN_ENTRY = bytes.fromhex(
    "43464c4b01000000000102030405060708090a0b0c0d0e0f030000002a000000"
    "8877665544332211090000000000000000000000000000000000000022b56a1e"
    "11000000030200002a0000000000000007000000000000007b68e5cf8b010000"
    "9210000005766f6c2d61")

layouts = st.builds(Layout, st.sampled_from((512, 4096)), st.integers(1, NODES_MAX))
names = st.text(min_size=1, max_size=NAME_MAX_BYTES).filter(lambda s: len(s.encode("utf-8")) <= NAME_MAX_BYTES)


@st.composite
def entries(draw, node_id=None, stripe=None):
    state = draw(st.sampled_from(list(EntryState)))
    name = draw(names) if state is not EntryState.FREE else draw(st.one_of(st.just(""), names))
    return LockEntry(
        node_id=node_id if node_id is not None else draw(st.integers(1, NODES_MAX)),
        incarnation=draw(st.integers(0, codec.U64_MAX)), seq=draw(st.integers(0, codec.U64_MAX)),
        stripe=stripe if stripe is not None else draw(st.integers(0, 1 << 20)),
        name=name, state=state, mode=draw(st.sampled_from(list(LockMode))),
        ticket=draw(st.integers(0, codec.U64_MAX)), token=draw(st.integers(0, codec.U64_MAX)),
        owner=draw(st.integers(0, codec.U32_MAX)), stamp_ms=draw(st.integers(0, codec.U64_MAX)))


# ------------------------------------------------------------------ layout
def test_sixteen_nodes_at_512_bytes_get_128_stripes():
    layout = Layout(512, 16)
    assert layout.dlm_stripes_max == 128
    assert layout.dlm_stripe_bytes == 16 * 512
    assert layout.dlm_bytes == 4096 + 128 * 16 * 512 == layout.reserved_area(AreaKind.DLM_LOCKS).size_bytes


@pytest.mark.parametrize("block_size,nodes_max,stripes,area_bytes", [
    (512, 16, 128, 4096 + MIB),
    (4096, 16, 128, 4096 + 8 * MIB),
    (512, 4, 510, MIB),  # small stripes: as many as fit 1 MiB
    (512, 5, 408, MIB),
    (512, 255, 128, 16715776),
    (4096, 255, 128, 133697536),
])
def test_dlm_area_formula_is_pinned(block_size, nodes_max, stripes, area_bytes):
    assert dlm_stripes_for(block_size, nodes_max) == stripes
    assert dlm_area_bytes_for(block_size, nodes_max) == area_bytes
    layout = Layout(block_size, nodes_max)
    assert (layout.dlm_stripes_max, layout.dlm_bytes) == (stripes, area_bytes)


@given(layouts, st.data())
def test_lock_sectors_are_stripe_major_single_sectors_inside_the_area(layout, data):
    stripe = data.draw(st.integers(0, layout.dlm_stripes_max - 1))
    node_id = data.draw(st.integers(1, layout.nodes_max))
    assert layout.dlm_stripes_max >= 128
    offset = layout.dlm_entry_offset(stripe, node_id)
    start = layout.dlm_stripe_offset(stripe)
    assert offset == start + (node_id - 1) * layout.block_size_bytes  # one read of a stripe returns every node's
    assert offset % layout.block_size_bytes == 0
    assert layout.dlm_offset + 4096 <= start  # the area header stays the admin tools'
    assert start + layout.dlm_stripe_bytes <= layout.dlm_offset + layout.dlm_bytes
    if stripe + 1 < layout.dlm_stripes_max:
        assert layout.dlm_stripe_offset(stripe + 1) == start + layout.dlm_stripe_bytes


def test_positions_out_of_range_are_refused():
    layout = Layout(512, 4)
    with pytest.raises(ValueError, match="stripe"):
        layout.dlm_stripe_offset(layout.dlm_stripes_max)
    with pytest.raises(ValueError, match="1..4"):
        layout.dlm_entry_offset(0, 5)


def test_stripe_of_uses_crc32c():
    for name in ("vol-a", "svc-web", "ü" * 24):
        assert core_crc32c(name.encode()) == crc32c.crc32c(name.encode())
        assert stripe_of(name, 128) == crc32c.crc32c(name.encode()) % 128


# ------------------------------------------------------------------- codec
def test_golden_bytes_and_field_offsets():
    data = dlm_codec.encode_lock_entry(ENTRY, UUID)
    assert data == GOLDEN_ENTRY
    assert data[:4] == b"CFLK" and struct.unpack_from("<H", data, 24)[0] == 3
    assert struct.unpack_from("<QQ", data, 32) == (ENTRY.incarnation, 9)
    assert struct.unpack_from("<IBBHQQQIB", data, 64) == (17, 3, 2, 0, 42, 7, 1_700_000_000_123, 4242, 5)
    assert data[101:] == b"vol-a"
    assert struct.unpack_from("<I", data, 60)[0] == crc32c.crc32c(data[:60] + data[64:])


def test_worst_case_fits_the_smallest_sector():
    worst = LockEntry(NODES_MAX, codec.U64_MAX, codec.U64_MAX, dlm_codec.STRIPE_MAX, "x" * NAME_MAX_BYTES,
                      EntryState.WAITING, LockMode.SHARED, codec.U64_MAX, codec.U64_MAX, codec.U32_MAX, codec.U64_MAX)
    assert len(dlm_codec.encode_lock_entry(worst, UUID)) == dlm_codec.LOCK_ENTRY_WORST_BYTES <= 512


@given(entries())
def test_round_trip(entry):
    data = dlm_codec.encode_lock_entry(entry, UUID)
    assert dlm_codec.decode_lock_entry(data, cluster_uuid=UUID, node_id=entry.node_id,
                                       stripe=entry.stripe) == entry
    assert dlm_codec.decode_lock_entry(data + bytes(100)) == entry  # padding is ignored


@given(entries(node_id=2, stripe=5))
def test_round_trip_through_a_simulated_sector(entry):
    layout = Layout(512, 4)
    offset, data = dlm_codec.entry_bytes(entry, UUID, layout)
    assert offset == layout.dlm_entry_offset(5, 2) and len(data) == 512
    raw = bytes(512) + data + bytes(1024)  # stripe 5 as read: nodes 1..4
    decoded = dlm_codec.decode_stripe(raw, 5, cluster_uuid=UUID, layout=layout)
    assert decoded[2] == entry
    assert all(decoded[n] == Unreadable("never written", never_written=True) for n in (1, 3, 4))


@pytest.mark.parametrize("entry,field", [
    (LockEntry(0, 1, 1, 0, "a", EntryState.HELD), "node_id"),
    (LockEntry(1, -1, 1, 0, "a", EntryState.HELD), "incarnation"),
    (LockEntry(1, 1, 1, -1, "a", EntryState.HELD), "stripe"),
    (LockEntry(1, 1, 1, 0, "", EntryState.HELD), "name"),
    (LockEntry(1, 1, 1, 0, "x" * (NAME_MAX_BYTES + 1), EntryState.FREE), "name"),
    (LockEntry(1, 1, 1, 0, "a", 7), "state"),  # type: ignore[arg-type]
    (LockEntry(1, 1, 1, 0, "a", EntryState.HELD, 3), "mode"),  # type: ignore[arg-type]
    (LockEntry(1, 1, 1, 0, "a", EntryState.HELD, LockMode.SHARED, 1 << 64), "ticket"),
    (LockEntry(1, 1, 1, 0, "a", EntryState.HELD, LockMode.SHARED, 0, -1), "token"),
])
def test_encoder_names_the_bad_field(entry, field):
    with pytest.raises(ValueError, match=field):
        dlm_codec.encode_lock_entry(entry, UUID)


def _resealed(payload: bytes, node_id: int = 3) -> bytes:
    return codec.seal(dlm_codec.LOCK_ENTRY, UUID, node_id, 1, 1, payload)


GOOD_PAYLOAD = GOLDEN_ENTRY[64:]


@pytest.mark.parametrize("what,data,kwargs,error", [
    ("zeros", bytes(512), {}, NotWritten),
    ("a slot record", codec.pad_to(b"CFSL" + GOLDEN_ENTRY[4:], 512), {}, BadMagic),
    ("short", GOLDEN_ENTRY[:40], {}, BadLength),
    ("version 2", GOLDEN_ENTRY[:4] + b"\x02\x00" + GOLDEN_ENTRY[6:], {}, BadVersion),
    ("other cluster", GOLDEN_ENTRY, {"cluster_uuid": OTHER_UUID}, ForeignCluster),
    ("other node's position", GOLDEN_ENTRY, {"node_id": 4}, WrongNode),
    ("bit flip", GOLDEN_ENTRY[:-1] + b"b", {}, BadChecksum),
    ("unknown state", _resealed(GOOD_PAYLOAD[:4] + b"\x09" + GOOD_PAYLOAD[5:]), {}, BadPayload),
    ("unknown mode", _resealed(GOOD_PAYLOAD[:5] + b"\x00" + GOOD_PAYLOAD[6:]), {}, BadPayload),
    ("reserved bytes", _resealed(GOOD_PAYLOAD[:6] + b"\x01\x00" + GOOD_PAYLOAD[8:]), {}, BadPayload),
    ("trailing bytes", _resealed(GOOD_PAYLOAD + b"\x00"), {}, BadPayload),
    ("name cut short", _resealed(GOOD_PAYLOAD[:-1]), {}, BadPayload),
    ("held without a name", _resealed(GOOD_PAYLOAD[:24] + b"\x00"), {}, BadPayload),
    ("misplaced stripe", GOLDEN_ENTRY, {"stripe": 18}, BadPayload),
])
def test_each_rejection_has_its_error(what, data, kwargs, error):
    with pytest.raises(error):
        dlm_codec.decode_lock_entry(data, **kwargs)


def test_decode_sector_returns_rejections_as_values():
    assert dlm_codec.decode_sector(GOLDEN_ENTRY, cluster_uuid=UUID, node_id=3, stripe=17) == ENTRY
    assert dlm_codec.decode_sector(GOLDEN_ENTRY, cluster_uuid=UUID, node_id=2, stripe=17) == Unreadable("WrongNode")
    assert dlm_codec.decode_sector(bytes(512), cluster_uuid=UUID, node_id=2, stripe=17).never_written


@given(st.binary(max_size=600))
@settings(max_examples=300)
def test_arbitrary_bytes_raise_only_block_errors(data):
    try:
        dlm_codec.decode_lock_entry(data, cluster_uuid=UUID, node_id=3, stripe=17)
    except BlockError:
        pass


@given(st.binary(max_size=120))
@settings(max_examples=300)
def test_arbitrary_payloads_behind_a_valid_header_raise_only_block_errors(payload):
    try:
        entry = dlm_codec.decode_lock_entry(_resealed(payload))
    except BlockError:
        return
    dlm_codec.check_lock_entry(entry)  # whatever decodes, the encoder accepts
    assert dlm_codec.decode_lock_entry(dlm_codec.encode_lock_entry(entry, UUID)) == entry


@given(entries(), st.integers(0, 200), st.integers(0, 7))
def test_any_bit_flip_is_rejected(entry, position, bit):
    data = bytearray(dlm_codec.encode_lock_entry(entry, UUID))
    position %= len(data)
    data[position] ^= 1 << bit
    try:
        decoded = dlm_codec.decode_lock_entry(bytes(data))
    except BlockError:
        return
    # crc32c detects every single-bit error, in the header, the payload or itself.
    raise AssertionError(f"flip at byte {position} bit {bit} decoded as {decoded}")
