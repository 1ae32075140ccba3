"""SimDisk's per-sector atomicity and tearing, and ClusterDisk / format_disk /
add_node over it (no root, no real device)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterfw.core.model import MemberEntry, NodeConfig, NodeState, Request, SlotRecord, Timing, ViewRecord
from clusterfw.ondisk import codec
from clusterfw.ondisk.admin import add_node, format_disk
from clusterfw.ondisk.clusterdisk import ClusterDisk, Placement, best_view, view_copy_to_write
from clusterfw.ondisk.errors import (
    BadChecksum,
    BadMagic,
    BlockSizeMismatch,
    DeviceTooSmall,
    ForeignCluster,
    FormatRefused,
    NodeTableError,
    NotWritten,
    UnalignedIo,
    WrongNode,
)
from clusterfw.ondisk.layout import MIB, AreaKind, Layout
from clusterfw.ondisk.simdisk import Device, SimDisk

try:
    import strategies as cst
except ImportError:  # tests/ imported as a package
    from tests import strategies as cst

TIMING = Timing(100, 200, 1000, 2000, 5000, 20)
UUID = bytes(range(16))


def slot(node_id: int, seq: int) -> SlotRecord:
    return SlotRecord(node_id, 11, seq, TIMING, Request.JOIN)


def view(node_id: int, seq: int, *, term: int = 1, epoch: int = 1, members: int = 1) -> ViewRecord:
    return ViewRecord(node_id, 11, seq, term, epoch,
                      members=tuple(MemberEntry(n, seq, NodeState.JOINED) for n in range(1, members + 1)))


def formatted(sector_size: int = 512, nodes_max: int = 8) -> tuple[SimDisk, ClusterDisk]:
    disk = SimDisk(16 * MIB, sector_size)  # 4096-byte sectors, 16 nodes: 10 MiB of metadata (DLM stripes)
    format_disk(disk, "lab", nodes_max, 100, 200, cluster_uuid=UUID, created_at_s=1)
    return disk, ClusterDisk.open(disk)


# --------------------------------------------------------------------------
# SimDisk

@pytest.mark.parametrize("sector", [512, 4096])
def test_simdisk_reads_what_was_written_and_checks_alignment(sector):
    disk = SimDisk(64 * sector, sector)
    assert isinstance(disk, Device)
    assert disk.read(0, 2 * sector) == bytes(2 * sector)
    disk.write(sector, b"\x01" * sector)
    assert disk.read(sector, sector) == b"\x01" * sector
    for offset, length in ((1, sector), (0, sector + 1), (sector // 2, sector)):
        with pytest.raises(UnalignedIo, match=f"{sector}-byte"):
            disk.read(offset, length)
        with pytest.raises(UnalignedIo):
            disk.write(offset, bytes(length))
    with pytest.raises(UnalignedIo, match="outside"):
        disk.read(63 * sector, 2 * sector)
    with pytest.raises(UnalignedIo, match="outside"):
        disk.read(0, 0)


@pytest.mark.parametrize("sector", [512, 4096])
@given(data=st.data())
def test_torn_write_lands_exactly_the_first_k_sectors(sector, data):
    disk = SimDisk(16 * sector, sector)
    old = bytes([0xAA]) * (4 * sector)
    disk.write(2 * sector, old)
    new = bytes([0x55]) * (4 * sector)
    k = data.draw(st.integers(0, 4))
    disk.write(2 * sector, new, sectors=k)
    got = disk.read(2 * sector, 4 * sector)
    assert got == new[:k * sector] + old[k * sector:]
    assert disk.torn_write_count == (1 if k < 4 else 0)
    assert disk.read(0, 2 * sector) == bytes(2 * sector)  # neighbours untouched


def test_torn_write_argument_checks_and_snapshot():
    disk = SimDisk(8 * 512)
    with pytest.raises(ValueError, match="0..2"):
        disk.write(0, bytes(1024), sectors=3)
    with pytest.raises(ValueError):
        disk.write(0, bytes(1024), sectors=-1)
    disk.write(0, b"\x07" * 512)
    image = disk.snapshot()
    disk.write(0, bytes(512))
    disk.restore(image)
    assert disk.read(0, 512) == b"\x07" * 512
    assert disk.read_count == 1 and disk.write_count == 2
    with pytest.raises(ValueError):
        SimDisk(1000, 512)
    with pytest.raises(ValueError):
        SimDisk(4096, 1024)


# --------------------------------------------------------------------------
# ClusterDisk over SimDisk

@pytest.mark.parametrize("sector", [512, 4096])
def test_fresh_disk_reads_as_never_written(sector):
    _disk, cdisk = formatted(sector)
    assert cdisk.superblock.block_size == sector
    assert all(isinstance(s, NotWritten) for s in cdisk.read_slots())
    assert all(isinstance(n, NotWritten) for n in cdisk.read_node_table())
    assert isinstance(cdisk.read_view(1), NotWritten)
    for kind in AreaKind:
        assert cdisk.read_area_header(kind).kind == kind


@pytest.mark.parametrize("sector", [512, 4096])
def test_slots_are_single_sector_writes_and_read_in_one_io(sector):
    disk, cdisk = formatted(sector)
    offset, data = cdisk.slot_bytes(slot(3, 1))
    assert len(data) == sector and offset == cdisk.layout.slot_offset(3)
    writes_before = disk.write_count
    cdisk.write_slot(slot(3, 1))
    cdisk.write_slot(slot(8, 5))
    assert disk.write_count == writes_before + 2
    reads_before = disk.read_count
    slots = cdisk.read_slots()
    assert disk.read_count == reads_before + 1
    assert len(slots) == 8
    assert slots[2] == slot(3, 1) and slots[7] == slot(8, 5)
    assert all(isinstance(s, NotWritten) for i, s in enumerate(slots) if i not in (2, 7))
    assert cdisk.read_slot(3) == slot(3, 1)


def test_a_slot_in_the_wrong_place_or_of_another_cluster_is_rejected():
    disk, cdisk = formatted()
    _offset, data = cdisk.slot_bytes(slot(2, 1))
    disk.write(cdisk.layout.slot_offset(4), data)
    assert isinstance(cdisk.read_slots()[3], WrongNode)
    foreign = Placement(cdisk.layout, bytes(16))
    disk.write(*foreign.slot_bytes(slot(5, 1)))
    assert isinstance(cdisk.read_slot(5), ForeignCluster)


def test_slot_write_for_a_node_beyond_the_disk_is_refused():
    _disk, cdisk = formatted(nodes_max=4)
    with pytest.raises(ValueError, match="1..4"):
        cdisk.write_slot(slot(5, 1))


def test_view_ping_pong_survives_a_torn_write():
    disk, cdisk = formatted()
    first = view(1, 1, members=60)
    second = view(1, 2, members=60)
    assert view_copy_to_write(cdisk.read_view_copies(1)) == 0
    cdisk.write_view(first, 0)
    assert view_copy_to_write(cdisk.read_view_copies(1)) == 1
    cdisk.write_view(second, 1)
    assert cdisk.read_view(1) == second
    assert view_copy_to_write(cdisk.read_view_copies(1)) == 0
    third = view(1, 3, members=60)
    offset, data = cdisk.view_bytes(third, 0)
    assert len(data) > 512 and len(data) % 512 == 0
    disk.write(offset, data, sectors=1)  # only the header sector lands
    copies = cdisk.read_view_copies(1)
    assert isinstance(copies[0], BadChecksum) and copies[1] == second
    assert cdisk.read_view(1) == second
    assert view_copy_to_write(copies) == 0  # overwrite the torn copy, keep the good one


def test_best_view_orders_by_term_then_epoch_then_seq():
    a = view(1, seq=9, term=1, epoch=5)
    b = view(1, seq=1, term=2, epoch=1)
    assert best_view((a, b)) == b and best_view((b, a)) == b
    c = view(1, seq=2, term=2, epoch=1)
    assert best_view((c, b)) == c
    assert isinstance(best_view((NotWritten("x"), BadMagic("y"))), BadMagic)
    assert isinstance(best_view((NotWritten("x"), NotWritten("y"))), NotWritten)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.booleans(), st.integers(0, 100)), min_size=1, max_size=12))
def test_reader_always_finds_the_newest_fully_written_view(writes):
    """Whatever tears, the reader gets the newest view whose write landed
    whole and was not overwritten since -- never a mix, never nothing if a
    complete view exists."""
    disk, cdisk = formatted()
    holding: list[ViewRecord | None] = [None, None]  # what each copy validly holds (model)
    for seq, (size, tear, fraction) in enumerate(writes, start=1):
        rec = view(2, seq, members=size * 30)
        copy = view_copy_to_write(cdisk.read_view_copies(2))
        offset, data = cdisk.view_bytes(rec, copy)
        total = len(data) // 512
        sectors = min(total, fraction * total // 100) if tear else total
        disk.write(offset, data, sectors=sectors)
        if sectors == total:
            holding[copy] = rec
        elif sectors > 0:
            holding[copy] = None
        valid = [h for h in holding if h is not None]
        got = cdisk.read_view(2)
        if valid:
            assert got == max(valid, key=lambda v: (v.term, v.epoch, v.seq))
        else:
            assert not isinstance(got, ViewRecord)


@pytest.mark.parametrize("sector", [512, 4096])
def test_node_table_read_modify_write_keeps_neighbours(sector):
    _disk, cdisk = formatted(sector, nodes_max=16)
    for node_id in (1, 2, 3, 8, 9, 16):
        cdisk.write_node_config(NodeConfig(node_id, f"n{node_id}"))
    table = cdisk.read_node_table()
    assert [t.name for t in table if isinstance(t, NodeConfig)] == ["n1", "n2", "n3", "n8", "n9", "n16"]


@given(rec=cst.slot_records(node_id=2), view_rec=cst.view_records(node_id=2))
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_placement_round_trips_random_records(rec, view_rec):
    placement = Placement(Layout(512, 4), UUID)
    offset, data = placement.slot_bytes(rec)
    assert offset == placement.layout.slot_offset(2) and len(data) == 512
    assert placement.slot_from_bytes(2, data) == rec
    offset, data = placement.view_bytes(view_rec, 1)
    assert offset == placement.layout.view_offset(2, 1)
    raw = bytes(16384) + data + bytes(16384 - len(data))
    assert placement.view_from_bytes(2, raw) == view_rec


# --------------------------------------------------------------------------
# format_disk and add_node

def test_format_refuses_an_existing_cluster_unless_forced():
    disk, cdisk = formatted()
    with pytest.raises(FormatRefused) as info:
        format_disk(disk, "other", 8, 100, 200)
    assert "clusterfw cluster 'lab'" in str(info.value) and "--force" in str(info.value)
    cdisk.write_slot(slot(1, 1))
    sb = format_disk(disk, "other", 4, 100, 200, force=True)
    fresh = ClusterDisk.open(disk)
    assert fresh.superblock == sb and sb.cluster_uuid != UUID
    assert all(isinstance(s, NotWritten) for s in fresh.read_slots())


def test_format_refuses_a_damaged_clusterfw_superblock():
    disk, _cdisk = formatted()
    raw = bytearray(disk.read(0, 512))
    raw[70] ^= 0xFF
    disk.write(0, bytes(raw))
    with pytest.raises(FormatRefused, match="damaged clusterfw superblock"):
        format_disk(disk, "lab", 8, 100, 200)


@pytest.mark.parametrize("offset,magic,what", [
    (1080, b"\x53\xef", "ext2/ext3/ext4"),
    (0, b"XFSB", "xfs"),
    (512, b"EFI PART", "GPT"),
    (510, b"\x55\xaa", "DOS partition table"),
    (4086, b"SWAPSPACE2", "swap"),
])
def test_format_refuses_known_signatures_without_blkid(offset, magic, what):
    disk = SimDisk(4 * MIB)
    block = offset - offset % 512
    raw = bytearray(disk.read(block, 1024))
    raw[offset - block:offset - block + len(magic)] = magic
    disk.write(block, bytes(raw))
    with pytest.raises(FormatRefused) as info:
        format_disk(disk, "lab", 8, 100, 200)
    assert what in info.value.found
    format_disk(disk, "lab", 8, 100, 200, force=True)
    assert disk.read(block, 1024)[offset - block:offset - block + len(magic)] != magic


def test_format_checks_its_arguments_and_the_size():
    with pytest.raises(DeviceTooSmall, match="needs at least"):
        format_disk(SimDisk(2 * MIB), "lab", 8, 100, 200)
    for name in ("", "has space", "x" * 33, "-lead"):
        with pytest.raises(ValueError, match="cluster name"):
            format_disk(SimDisk(4 * MIB), name, 8, 100, 200)
    with pytest.raises(ValueError, match="nodes_max"):
        format_disk(SimDisk(4 * MIB), "lab", 0, 100, 200)
    with pytest.raises(ValueError, match="io_timeout_ms"):
        format_disk(SimDisk(4 * MIB), "lab", 8, 100, 0)


def test_a_disk_seen_with_another_block_size_is_refused():
    disk, _cdisk = formatted(512)
    other = SimDisk(disk.size_bytes, 4096)
    other.restore(disk.snapshot())
    with pytest.raises(BlockSizeMismatch, match="512-byte"):
        ClusterDisk.open(other)


def test_add_node_picks_the_lowest_free_id_and_refuses_conflicts():
    _disk, cdisk = formatted(nodes_max=3)
    assert add_node(cdisk, "n1") == NodeConfig(1, "n1")
    assert add_node(cdisk, "n3", 3) == NodeConfig(3, "n3")
    with pytest.raises(NodeTableError, match="already used by node id 1"):
        add_node(cdisk, "n1")
    with pytest.raises(NodeTableError, match="id 3 is already used by 'n3'"):
        add_node(cdisk, "x", 3)
    for bad in (0, 4):
        with pytest.raises(ValueError, match="1..3"):
            add_node(cdisk, "x", bad)
    for bad in ("N1", "n_1", "", "-n", "n" * 33, "ü"):
        with pytest.raises(ValueError, match="node name"):
            add_node(cdisk, bad)
    assert add_node(cdisk, "db-2").node_id == 2
    with pytest.raises(NodeTableError, match="all 3 node ids"):
        add_node(cdisk, "n4")


def test_add_node_refuses_to_overwrite_a_damaged_entry():
    disk, cdisk = formatted(nodes_max=3)
    offset = cdisk.layout.node_record_offset(2)
    disk.write(offset, b"junk" + bytes(508))
    assert isinstance(cdisk.read_node_table()[1], BadMagic)
    with pytest.raises(NodeTableError, match="damaged"):
        add_node(cdisk, "n2", 2)
    assert add_node(cdisk, "n2").node_id == 1  # skips the damaged id


def test_clusterdisk_notices_a_reinitialised_disk():
    disk, cdisk = formatted()
    format_disk(disk, "lab", 8, 100, 200, force=True)
    with pytest.raises(ForeignCluster):
        cdisk.read_superblock()
    assert isinstance(cdisk.read_slot(1), NotWritten)  # records are zeroed, not foreign


def test_codec_pad_to():
    assert codec.pad_to(b"", 512) == bytes(512)
    assert len(codec.pad_to(b"x" * 513, 512)) == 1024


def _place(kind: str, disk: SimDisk) -> int:
    """Write one record of ``kind`` where a cluster of 8 nodes keeps it (another
    layout than the one formatted below) and nothing else; its offset."""
    from clusterfw.core.dlm import EntryState, LockEntry, LockMode
    from clusterfw.ondisk import dlm_codec

    layout = Layout(disk.block_size_bytes, 8)
    placement = Placement(layout, UUID)
    if kind == "node-table entry":
        record_offset, _ = placement.node_record_bytes(NodeConfig(3, "web2"))
        block = record_offset - record_offset % disk.block_size_bytes
        offset, data = placement.node_block_bytes(NodeConfig(3, "web2"), disk.read(block, disk.block_size_bytes))
        disk.write(offset, data)
        return record_offset
    elif kind == "slot":
        offset, data = placement.slot_bytes(slot(2, 7))
    elif kind == "view copy":
        offset, data = placement.view_bytes(view(4, 3), 1)
    elif kind == "area header":
        offset, data = placement.area_header_bytes(AreaKind.SERVICE_REGISTRY)
    elif kind == "registry copy":
        offset, data = placement.registry_bytes({"services": {}}, 1, generation=1, token=1, writer=2,
                                                incarnation=1, stamp_ms=0)
    else:
        entry = LockEntry(5, 11, 1, 1, "db", EntryState.HELD, LockMode.EXCLUSIVE, 0, 0)
        offset = layout.dlm_entry_offset(100, 5)
        data = codec.pad_to(dlm_codec.encode_lock_entry(entry, UUID), disk.block_size_bytes)
    disk.write(offset, codec.pad_to(data, disk.block_size_bytes))
    return offset


@pytest.mark.parametrize("sector", [512, 4096])
@pytest.mark.parametrize("kind", ["node-table entry", "slot", "view copy", "area header", "lock sector",
                                  "registry copy"])
def test_format_refuses_any_clusterfw_record_even_without_a_superblock(kind, sector):
    """A disk whose superblock was zeroed or overwritten may be a running
    cluster's: one record of any kind anywhere in the metadata is enough to
    refuse, named with its offset; --force still formats it."""
    disk = SimDisk(16 * MIB, sector)
    offset = _place(kind, disk)
    before = disk.snapshot()
    with pytest.raises(FormatRefused) as info:
        format_disk(disk, "lab", 16, 100, 200)
    message = str(info.value)
    assert f"1 {kind}" in message and f"offset {offset}" in message
    assert "--force destroys" in message and "stop" in message
    assert disk.snapshot() == before  # nothing was written
    format_disk(disk, "lab", 16, 100, 200, force=True)


def test_format_refuses_a_damaged_superblock_and_counts_the_live_records():
    disk, cdisk = formatted()
    add_node(cdisk, "web2")
    cdisk.write_slot(slot(1, 5))
    cdisk.write_view(view(1, 2), 0)
    raw = bytearray(disk.read(0, 512))
    raw[70] ^= 0xFF
    disk.write(0, bytes(raw))
    before = disk.snapshot()
    with pytest.raises(FormatRefused) as info:
        format_disk(disk, "lab", 8, 100, 200)
    assert "damaged clusterfw superblock" in str(info.value)
    assert "1 node-table entry, 1 slot, 1 view copy, 3 area headers" in str(info.value)
    assert disk.snapshot() == before


@pytest.mark.parametrize("hb,io,setting", [(1, 200, "heartbeat_interval_ms"), (0xFFFF_FFFF, 200, "heartbeat_interval_ms"),
                                          (1000, 1, "io_timeout_ms")])
def test_format_refuses_timings_no_node_can_run(hb, io, setting):
    from clusterfw.core.timing import SettingOutOfRange

    disk = SimDisk(16 * MIB)
    with pytest.raises(SettingOutOfRange, match=setting):
        format_disk(disk, "lab", 8, hb, io)
    assert disk.snapshot() == SimDisk(16 * MIB).snapshot()
