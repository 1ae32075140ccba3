"""The registry store the services subsystem uses: the poll answers from
memory while the heads are unchanged, a write alternates copies and never
reuses a generation (a torn copy's neither), a writer whose token is older
than one on the disk is refused and writes nothing, and on a real loop
device the daemon's write guard refuses a write in the system call."""
from __future__ import annotations

import errno

import pytest

from clusterfw.ondisk.admin import format_disk
from clusterfw.ondisk.clusterdisk import ClusterDisk
from clusterfw.ondisk.errors import IoError
from clusterfw.ondisk.layout import MIB
from clusterfw.subsystems.services.store import DiskRegistryStore, StaleWriter
from lunfs import lun_dir
from test_ondisk_loop import loop_device, sparse_file
from test_ondisk_loop import pytestmark as needs_loop
from test_registry_codec import UUID, RecordingDisk

blocks = pytest.mark.parametrize("block_size", (512, 4096))


def store_on(dev, node_id: int = 1, **kw) -> DiskRegistryStore:
    disk = ClusterDisk.open(dev)
    return DiskRegistryStore(layout=disk.layout, cluster_uuid=disk.cluster_uuid, node_id=node_id,
                             incarnation=0x77, device=dev, **kw)


def formatted(block_size: int = 512) -> RecordingDisk:
    dev = RecordingDisk(16 * MIB, block_size)
    format_disk(dev, "lab", 8, 100, 200, cluster_uuid=UUID, created_at_s=1)
    return dev


@blocks
def test_empty_then_written_then_read_by_another_node(block_size):
    dev = formatted(block_size)
    one, two = store_on(dev, 1), store_on(dev, 2)
    assert one.read() == (None, 0, 0) and one.generation() == 0
    assert one.write({"services": {"a": 1}}, 1, token=5) == 1
    assert two.generation() == 1
    assert two.read() == ({"services": {"a": 1}}, 1, 5)
    assert two.write({"services": {"a": 2}}, 2, token=6) == 2
    assert one.read() == ({"services": {"a": 2}}, 2, 6)
    head = ClusterDisk.open(dev).read_registry_heads()
    assert [(h.generation, h.writer, h.incarnation) for h in head] == [(1, 1, 0x77), (2, 2, 0x77)]


def test_the_poll_reads_only_the_heads_while_nothing_changed():
    dev = formatted()
    store = store_on(dev)
    store.write({"x": 1}, 1, token=1)
    assert store.generation() == 1  # the first poll after a write reads the copy
    dev.ios.clear()
    for _ in range(5):
        assert store.generation() == 1
    head_reads = [io for io in dev.ios if io[0] == "read"]
    assert len(head_reads) == 10 and all(length == 512 for _op, _off, length in head_reads)
    assert not [io for io in dev.ios if io[0] == "write"]
    # Another node writes: the next poll sees it and reads the new copy.
    store_on(dev, 2).write({"x": 2}, 2, token=2)
    assert store.generation() == 2 and store.read()[0] == {"x": 2}


def test_a_torn_copy_is_never_the_answer_and_its_generation_is_not_reused():
    dev = formatted()
    store = store_on(dev)
    store.write({"x": 1}, 1, token=1)  # copy A
    store.write({"x": 2}, 2, token=1)  # copy B
    disk = ClusterDisk.open(dev)
    # A crashed writer's generation 3 into A: only its first block (the head) landed.
    offset, data = disk.registry_bytes({"x": 3, "pad": "y" * 4000}, 0, generation=3, token=2, writer=2,
                                       incarnation=9, stamp_ms=0)
    dev.write(offset, data[:512])
    reader = store_on(dev, 3)
    assert reader.generation() == 2 and reader.read() == ({"x": 2}, 2, 1)
    assert reader.seen_generation == 3
    # The next writer (with a newer token) skips generation 3 and writes A again.
    assert reader.write({"x": 4}, 3, token=3) == 4
    assert store.read() == ({"x": 4}, 4, 3)
    assert [h.generation for h in disk.read_registry_heads()] == [4, 2]


def test_a_writer_with_an_older_token_is_refused_and_writes_nothing():
    dev = formatted()
    old, new = store_on(dev, 1), store_on(dev, 2)
    old.write({"by": "old"}, 1, token=4)
    new.write({"by": "new"}, 2, token=9)  # the lock went to node 2 later
    dev.ios.clear()
    with pytest.raises(StaleWriter, match="token 9, newer than this node's 4"):
        old.write({"by": "old again"}, 3, token=4)
    assert not [io for io in dev.ios if io[0] == "write"]
    assert new.read() == ({"by": "new"}, 2, 9)
    assert old.stats["refused"] == 1
    # A torn copy with a newer token refuses the old writer too.
    disk = ClusterDisk.open(dev)
    offset, data = disk.registry_bytes({"t": "x" * 3000}, 0, generation=3, token=11, writer=3, incarnation=1,
                                       stamp_ms=0)
    dev.write(offset, data[:512])
    with pytest.raises(StaleWriter, match="token 11"):
        new.write({"by": "new again"}, 3, token=9)


@needs_loop
def test_the_write_guard_refuses_in_the_system_call_on_a_loop_device(lun_root):
    from clusterfw.ondisk.blockdev import BlockDevice

    with loop_device(sparse_file(lun_dir(lun_root, "regstore")), 4096) as device:
        with BlockDevice(device, io_timeout_ms=5000) as dev:
            format_disk(dev, "loop", 8, 100, 200)
            layout, uuid = ClusterDisk.open(dev).layout, ClusterDisk.open(dev).cluster_uuid
        refusal: list[str | None] = [None]
        store = DiskRegistryStore(path=device, layout=layout, cluster_uuid=uuid, node_id=1, incarnation=1,
                                  guard=lambda: refusal[0], io_timeout_ms=5000)
        try:
            assert store.write({"g": 1}, 1, token=1) == 1
            refusal[0] = "fenced: the disk was lost"
            with pytest.raises(IoError) as refused:
                store.write({"g": 2}, 2, token=1)
            assert refused.value.errno == errno.ECANCELED
            assert store.read() == ({"g": 1}, 1, 1)
            refusal[0] = None
            assert store.write({"g": 2}, 2, token=2) == 2
        finally:
            store.close()
        with BlockDevice(device, readonly=True) as dev:
            best, _which = ClusterDisk.open(dev).read_registry()
            assert best is not None and best.doc == {"g": 2}
