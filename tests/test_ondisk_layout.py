"""The disk layout: alignment, no overlaps, one-I/O reads, single-sector slots,
and the pinned offsets of the default cluster."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterfw.core.model import NODES_MAX, SuperBlock
from clusterfw.ondisk.errors import DeviceTooSmall
from clusterfw.ondisk.layout import (
    AREA_HEADER_BYTES,
    MIB,
    REGISTRY_COPY_BYTES,
    SERVICE_AREA_BYTES,
    VDISK_AREA_BYTES,
    AreaKind,
    Layout,
)

layouts = st.builds(Layout, st.sampled_from((512, 4096)), st.integers(1, NODES_MAX))


@given(layouts)
def test_areas_are_4096_aligned_contiguous_and_in_order(layout):
    areas = layout.areas()
    assert [a.name for a in areas] == ["superblock", "node-table", "slots", "views", "dlm-locks",
                                       "virtual-disks", "service-registry"]
    assert areas[0].offset == 0
    for area in areas:
        assert area.offset % 4096 == 0 and area.size_bytes % 4096 == 0
    for before, after in zip(areas, areas[1:]):
        assert before.end == after.offset
    assert layout.total_bytes % MIB == 0 and layout.total_bytes >= areas[-1].end
    assert layout.data_offset == layout.total_bytes


@given(layouts, st.data())
def test_every_slot_is_one_block_inside_the_slot_area(layout, data):
    node_id = data.draw(st.integers(1, layout.nodes_max))
    offset = layout.slot_offset(node_id)
    assert layout.slot_size_bytes == layout.block_size_bytes
    assert offset % layout.block_size_bytes == 0
    assert layout.slots_offset <= offset
    assert offset + layout.slot_size_bytes <= layout.slots_offset + layout.slots_read_bytes
    assert layout.slots_read_bytes <= layout.slots_bytes
    if node_id > 1:
        assert layout.slot_offset(node_id - 1) + layout.slot_size_bytes == offset  # contiguous


@given(layouts, st.data())
def test_view_copies_are_adjacent_16k_and_do_not_overlap(layout, data):
    node_id = data.draw(st.integers(1, layout.nodes_max))
    a, b = layout.view_offset(node_id, 0), layout.view_offset(node_id, 1)
    assert b == a + 16384 == a + layout.view_copy_bytes
    assert a == layout.view_pair_offset(node_id)
    assert layout.views_offset <= a and b + 16384 <= layout.views_offset + layout.views_bytes
    if node_id < layout.nodes_max:
        assert layout.view_offset(node_id + 1, 0) == b + 16384


@given(layouts, st.data())
def test_node_records_are_512_bytes_inside_the_table(layout, data):
    node_id = data.draw(st.integers(1, layout.nodes_max))
    offset = layout.node_record_offset(node_id)
    assert offset == layout.node_table_offset + (node_id - 1) * 512
    assert offset + 512 <= layout.node_table_offset + layout.node_table_read_bytes
    assert layout.node_table_read_bytes <= layout.node_table_bytes
    assert layout.node_table_read_bytes % layout.block_size_bytes == 0


@pytest.mark.parametrize("kind,size", [(AreaKind.DLM_LOCKS, 4096 + 128 * 16 * 512),
                                       (AreaKind.VIRTUAL_DISKS, VDISK_AREA_BYTES),
                                       (AreaKind.SERVICE_REGISTRY, SERVICE_AREA_BYTES)])
def test_reserved_areas(kind, size):
    area = Layout(512, 16).reserved_area(kind)
    assert area.size_bytes == size
    assert size in (4096 + (1 << 20), 1 << 20, 256 << 10)  # DLM: header + 128 stripes of 16 x 512


# Pinned: changing any of these changes the on-disk format.
@pytest.mark.parametrize("block_size,nodes_max,expected", [
    (512, 16, dict(node_table_offset=4096, slots_offset=12288, slots_bytes=8192, views_offset=20480,
                   views_bytes=524288, dlm_offset=544768, dlm_bytes=1052672, dlm_stripes_max=128,
                   vdisk_offset=1597440, service_offset=1859584, total_bytes=3 * MIB)),
    (4096, 16, dict(node_table_offset=4096, slots_offset=12288, slots_bytes=65536, views_offset=77824,
                    views_bytes=524288, dlm_offset=602112, dlm_bytes=8392704, dlm_stripes_max=128,
                    vdisk_offset=8994816, service_offset=9256960, total_bytes=10 * MIB)),
    (512, 255, dict(node_table_offset=4096, slots_offset=135168, slots_bytes=131072, views_offset=266240,
                    views_bytes=8355840, dlm_offset=8622080, dlm_bytes=16715776, total_bytes=26 * MIB)),
    (4096, 255, dict(slots_offset=135168, slots_bytes=1044480, views_offset=1179648, dlm_offset=9535488,
                     dlm_bytes=133697536, total_bytes=138 * MIB)),
    (512, 5, dict(dlm_offset=176128, dlm_bytes=1048576, dlm_stripes_max=408, total_bytes=3 * MIB)),
])
def test_pinned_offsets(block_size, nodes_max, expected):
    layout = Layout(block_size, nodes_max)
    assert {name: getattr(layout, name) for name in expected} == expected


@given(layouts)
def test_registry_copies_follow_the_service_area_header_without_overlap(layout):
    area = layout.reserved_area(AreaKind.SERVICE_REGISTRY)
    a, b = layout.registry_copy_offset(0), layout.registry_copy_offset(1)
    assert layout.registry_copy_bytes == REGISTRY_COPY_BYTES == 520192  # (1 MiB - 4096) // 2, down to 4096
    assert a == area.offset + AREA_HEADER_BYTES and b == a + layout.registry_copy_bytes
    assert b + layout.registry_copy_bytes <= area.end
    assert a % 4096 == 0 and b % 4096 == 0  # whole blocks of either size


@pytest.mark.parametrize("block_size,nodes_max,copy_a", [(512, 16, 1863680), (4096, 16, 9261056),
                                                         (512, 255, 25604096), (4096, 255, 143499264)])
def test_pinned_registry_copy_offsets(block_size, nodes_max, copy_a):
    layout = Layout(block_size, nodes_max)
    assert (layout.registry_copy_offset(0), layout.registry_copy_offset(1)) == (copy_a, copy_a + 520192)
    for bad in (2, -1, True):
        with pytest.raises(ValueError, match="copy"):
            layout.registry_copy_offset(bad)


def test_from_superblock():
    sb = SuperBlock("lab", bytes(16), 4096, 8, 100, 200)
    assert Layout.from_superblock(sb) == Layout(4096, 8)


@pytest.mark.parametrize("block_size,nodes_max", [(1024, 16), (0, 16), (512, 0), (512, NODES_MAX + 1)])
def test_invalid_parameters(block_size, nodes_max):
    with pytest.raises(ValueError):
        Layout(block_size, nodes_max)


def test_invalid_positions():
    layout = Layout(512, 4)
    for bad in (0, 5):
        with pytest.raises(ValueError, match="1..4"):
            layout.slot_offset(bad)
        with pytest.raises(ValueError, match="1..4"):
            layout.view_offset(bad, 0)
    with pytest.raises(ValueError, match="copy"):
        layout.view_offset(1, 2)


def test_device_too_small_names_sizes_and_fix():
    layout = Layout(512, 16)
    layout.check_device_size(layout.total_bytes)
    with pytest.raises(DeviceTooSmall) as info:
        layout.check_device_size(layout.total_bytes - 512, what="/dev/x")
    assert info.value.needed_bytes == layout.total_bytes
    assert "/dev/x" in str(info.value) and "larger device" in str(info.value)
