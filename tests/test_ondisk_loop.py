"""Real block devices: loop devices with 512- and 4096-byte logical sectors
and direct I/O, driven through BlockDevice, ClusterDisk, format_disk and the
CLI.  Needs root and losetup; skipped otherwise.  Every loop device a test
creates is detached again, even when the test fails."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from clusterfw.core.model import Request, SlotRecord, Timing, ViewRecord
from clusterfw.ondisk.admin import format_disk, probe
from clusterfw.ondisk.blockdev import BlockDevice
from clusterfw.ondisk.clusterdisk import ClusterDisk, view_copy_to_write
from clusterfw.ondisk.errors import BlockSizeMismatch, FormatRefused, NotWritten, UnalignedIo
from clusterfw.ondisk.layout import MIB

REPO = Path(__file__).resolve().parents[1]
TIMING = Timing(100, 200, 1000, 2000, 5000, 20)
DISK_BYTES = 32 * MIB

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("losetup") is None or not os.path.exists("/dev/loop-control"),
    reason="needs root, losetup and loop devices")


@contextlib.contextmanager
def loop_device(backing: Path, sector_size: int) -> Iterator[str]:
    """Attach ``backing`` as a loop device with direct I/O; always detach it."""
    result = subprocess.run(
        ["losetup", "--find", "--show", "--direct-io=on", "--sector-size", str(sector_size), str(backing)],
        capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {result.stderr.strip()}")
    device = result.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, timeout=30)


def sparse_file(directory: Path, name: str = "disk.img", size_bytes: int = DISK_BYTES) -> Path:
    path = directory / name
    with open(path, "wb") as f:
        f.truncate(size_bytes)
    return path


@pytest.fixture(params=[512, 4096], ids=["512", "4096"])
def loop(request, tmp_path) -> Iterator[tuple[str, int]]:
    with loop_device(sparse_file(tmp_path), request.param) as device:
        yield device, request.param


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "clusterfw.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


def test_logical_block_size_and_size_are_read_from_the_device(loop):
    device, sector = loop
    with BlockDevice(device) as dev:
        assert dev.is_block_device
        assert dev.block_size_bytes == sector
        assert dev.size_bytes == DISK_BYTES
        dev.write(sector, b"\x5a" * sector)
        assert dev.read(0, 2 * sector) == bytes(sector) + b"\x5a" * sector
        if sector == 4096:
            with pytest.raises(UnalignedIo, match="4096-byte logical block size"):
                dev.read(512, 512)
            with pytest.raises(UnalignedIo, match="multiples of 4096"):
                dev.write(0, bytes(512))
        else:
            assert dev.read(512, 512) == b"\x5a" * 512


def test_the_kernel_itself_rejects_sub_sector_direct_io_on_4096(tmp_path):
    """Why the check matters: a 512-byte O_DIRECT read on a 4096-byte device
    fails in the kernel (EINVAL); our check turns it into a clear error
    before it gets there."""
    import mmap

    with loop_device(sparse_file(tmp_path), 4096) as device:
        fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
        try:
            buf = mmap.mmap(-1, 512)
            with pytest.raises(OSError):
                os.preadv(fd, [buf], 512)
        finally:
            os.close(fd)


def test_cluster_disk_on_a_loop_device(loop):
    device, sector = loop
    with BlockDevice(device, io_timeout_ms=5000) as dev:
        sb = format_disk(dev, "loop", 8, 100, 200)
        assert sb.block_size == sector
        disk = ClusterDisk.open(dev)
        assert all(isinstance(s, NotWritten) for s in disk.read_slots())
        for node_id in (1, 8):
            disk.write_slot(SlotRecord(node_id, 3, 1, TIMING, Request.JOIN))
        offset, data = disk.slot_bytes(SlotRecord(1, 3, 2, TIMING))
        assert len(data) == sector  # one single-sector write
        slots = disk.read_slots()
        assert slots[0].node_id == 1 and slots[7].node_id == 8 and isinstance(slots[3], NotWritten)
        view = ViewRecord(2, 3, 1, term=1, epoch=1)
        disk.write_view(view, view_copy_to_write(disk.read_view_copies(2)))
        assert disk.read_view(2) == view
    # Another open of the device (another host, in effect) sees the same.
    with BlockDevice(device, readonly=True) as dev:
        assert ClusterDisk.open(dev).read_view(2) == view
    assert probe(device)["cluster_name"] == "loop"


def test_cli_on_a_loop_device(loop):
    device, sector = loop
    init = cli("disk", "init", device, "--cluster", "lab", "--max-nodes", "8", "--heartbeat-ms", "50",
               "--io-timeout-ms", "250")
    assert init.returncode == 0, init.stderr
    for n in (1, 2, 3):
        added = cli("node", "add", device, "--name", f"n{n}")
        assert added.returncode == 0, added.stderr
        assert f"id {n}" in added.stdout
    assert cli("node", "add", device, "--name", "n2").returncode == 3
    assert cli("node", "add", device, "--name", "n9", "--id", "2").returncode == 3
    assert cli("node", "add", device, "--name", "N9").returncode == 2

    state = json.loads(cli("disk", "dump", device, "--json").stdout)
    assert state["superblock"]["block_size"] == sector
    assert state["superblock"]["heartbeat_interval_ms"] == 50
    assert state["superblock"]["io_timeout_ms"] == 250
    assert state["layout"]["slot_size_bytes"] == sector
    assert [n["record"]["name"] for n in state["nodes"][:3]] == ["n1", "n2", "n3"]
    assert len(state["slots"]) == 8

    probed = cli("probe", device)
    assert probed.returncode == 0
    lines = dict(line.split("=", 1) for line in probed.stdout.splitlines())
    assert lines["CLUSTERFW_CLUSTER"] == "lab"
    assert lines["CLUSTERFW_UUID"] == state["superblock"]["cluster_uuid"]
    assert lines["CLUSTERFW_BLOCK_SIZE"] == str(sector)

    refused = cli("disk", "init", device, "--cluster", "lab2", "--profile", "lab")
    assert refused.returncode == 3 and "clusterfw cluster 'lab'" in refused.stderr
    forced = cli("disk", "init", device, "--cluster", "lab2", "--profile", "lab", "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(cli("disk", "dump", device, "--json").stdout)["nodes"][0]["error"] == "not-written"


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4")
def test_an_ext4_filesystem_is_refused_unless_forced(loop):
    device, _sector = loop
    mkfs = subprocess.run(["mkfs.ext4", "-q", "-F", device], capture_output=True, text=True, timeout=120)
    assert mkfs.returncode == 0, mkfs.stderr
    with BlockDevice(device) as dev:
        with pytest.raises(FormatRefused) as info:
            format_disk(dev, "lab", 8, 100, 200)
        assert "ext4" in info.value.found
    refused = cli("disk", "init", device, "--cluster", "lab", "--profile", "lab")
    assert refused.returncode == 3
    assert "ext4" in refused.stderr and "--force" in refused.stderr
    assert probe(device) is None
    forced = cli("disk", "init", device, "--cluster", "lab", "--profile", "lab", "--force")
    assert forced.returncode == 0, forced.stderr
    assert probe(device)["cluster_name"] == "lab"
    if shutil.which("blkid"):  # no filesystem signature is left behind
        assert subprocess.run(["blkid", "-p", device], capture_output=True, timeout=30).returncode == 2


def test_a_disk_presented_with_another_sector_size_is_refused(tmp_path):
    backing = sparse_file(tmp_path)
    with loop_device(backing, 512) as device:
        assert cli("disk", "init", device, "--cluster", "lab", "--profile", "lab").returncode == 0
    with loop_device(backing, 4096) as device:
        with BlockDevice(device) as dev:
            with pytest.raises(BlockSizeMismatch, match="512-byte blocks"):
                ClusterDisk.open(dev)
        dumped = cli("disk", "dump", device)
        assert dumped.returncode == 1 and "512-byte" in dumped.stderr
