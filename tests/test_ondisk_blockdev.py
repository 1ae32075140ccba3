"""BlockDevice on regular files (no root needed): aligned O_DIRECT I/O, the
per-I/O timeout with abandoned workers, errno mapping; plus ClusterDisk,
format_disk, probe and the CLI on a file."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clusterfw.core.model import Request, SlotRecord, Timing
from clusterfw.ondisk.admin import format_disk, probe
from clusterfw.ondisk.blockdev import BlockDevice
from clusterfw.ondisk.clusterdisk import ClusterDisk
from clusterfw.ondisk.errors import DeviceError, IoError, IoTimeout, UnalignedIo
from clusterfw.ondisk.layout import MIB

REPO = Path(__file__).resolve().parents[1]
TIMING = Timing(100, 200, 1000, 2000, 5000, 20)


def make_file(directory: Path, size_bytes: int = 4 * MIB) -> str:
    path = directory / "disk.img"
    with open(path, "wb") as f:
        f.truncate(size_bytes)
    return str(path)


@pytest.fixture
def image(tmp_path):
    path = make_file(tmp_path)
    try:
        BlockDevice(path).close()
    except IoError as exc:
        if exc.errno == errno.EINVAL:
            pytest.skip("the test directory's filesystem does not support O_DIRECT")
        raise
    return path


class GatedDevice(BlockDevice):
    """A BlockDevice whose I/Os block while a gate is closed (a stuck disk)."""

    def __init__(self, *args, **kwargs):
        self.gate = threading.Event()
        self.gate.set()
        self.fail_with: int | None = None
        super().__init__(*args, **kwargs)

    def _pread(self, buf, offset):
        self.gate.wait()
        if self.fail_with is not None:
            raise OSError(self.fail_with, os.strerror(self.fail_with))
        return super()._pread(buf, offset)

    def _pwrite(self, buf, offset):
        self.gate.wait()
        return super()._pwrite(buf, offset)


def wait_until(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


# --------------------------------------------------------------------------
# geometry and alignment

def test_file_geometry_and_round_trip(image):
    with BlockDevice(image) as dev:
        assert dev.block_size_bytes == 4096 and not dev.is_block_device
        assert dev.size_bytes == 4 * MIB
        dev.write(8192, b"\xab" * 4096)
        assert dev.read(8192, 4096) == b"\xab" * 4096
        assert dev.read(4096, 12288)[4096:8192] == b"\xab" * 4096
    with open(image, "rb") as f:  # it really reached the file
        f.seek(8192)
        assert f.read(4096) == b"\xab" * 4096


def test_unaligned_io_is_refused_with_a_clear_error(image):
    with BlockDevice(image) as dev:
        with pytest.raises(UnalignedIo, match="4096-byte logical block size"):
            dev.read(512, 512)
        with pytest.raises(UnalignedIo, match="multiples of 4096"):
            dev.write(0, bytes(100))
        with pytest.raises(UnalignedIo, match="outside the device"):
            dev.read(4 * MIB, 4096)
    with BlockDevice(image, file_block_size_bytes=512) as dev:
        assert dev.block_size_bytes == 512
        dev.write(512, b"\x01" * 512)
        assert dev.read(512, 512) == b"\x01" * 512


def test_open_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(IoError) as info:
        BlockDevice(str(tmp_path / "missing"))
    assert info.value.errno == errno.ENOENT and "check the path" in str(info.value)
    with pytest.raises(IoError) as info:
        BlockDevice(str(tmp_path))
    assert info.value.errno in (errno.EISDIR, errno.ENOTBLK, errno.EINVAL)


def test_readonly_device_refuses_writes(image):
    with BlockDevice(image, readonly=True) as dev:
        with pytest.raises(IoError) as info:
            dev.write(0, bytes(4096))
        assert info.value.errno == errno.EBADF


def test_io_errors_carry_errno(image):
    with GatedDevice(image) as dev:
        dev.fail_with = errno.EIO
        with pytest.raises(IoError) as info:
            dev.read(0, 4096)
        assert info.value.errno == errno.EIO and info.value.offset == 0
        assert isinstance(info.value, DeviceError)
        dev.fail_with = None
        assert dev.read(0, 4096) == bytes(4096)


# --------------------------------------------------------------------------
# timeouts

def test_a_stuck_read_times_out_and_later_io_still_works(image):
    with GatedDevice(image, io_timeout_ms=150) as dev:
        dev.write(0, b"\x11" * 4096)
        dev.gate.clear()
        started = time.monotonic()
        with pytest.raises(IoTimeout) as info:
            dev.read(0, 4096)
        elapsed = time.monotonic() - started
        assert 0.14 <= elapsed < 1.0
        assert info.value.timeout_ms == 150 and "150 ms" in str(info.value)
        assert dev.abandoned_workers == 1
        dev.gate.set()  # the stuck read returns; its worker exits
        wait_until(lambda: dev.abandoned_workers == 0)
        assert dev.read(0, 4096) == b"\x11" * 4096


def test_a_fresh_worker_serves_io_while_the_old_one_is_stuck(image):
    class StuckOnce(BlockDevice):
        release = threading.Event()
        stuck = False

        def _pread(self, buf, offset):
            if not StuckOnce.stuck:
                StuckOnce.stuck = True
                self.release.wait()
            return super()._pread(buf, offset)

    with StuckOnce(image, io_timeout_ms=100) as dev:
        with pytest.raises(IoTimeout):
            dev.read(0, 4096)
        assert dev.read(4096, 4096) == bytes(4096)  # served while the first is stuck
        assert dev.abandoned_workers == 1
        StuckOnce.release.set()
        wait_until(lambda: dev.abandoned_workers == 0)


def test_too_many_stuck_ios_fail_at_once(image):
    with GatedDevice(image, io_timeout_ms=100, abandoned_workers_max=2) as dev:
        dev.gate.clear()
        for _ in range(2):
            with pytest.raises(IoTimeout):
                dev.read(0, 4096)
        threads_before = threading.active_count()
        started = time.monotonic()
        with pytest.raises(IoTimeout, match="still stuck"):
            dev.read(0, 4096)
        assert time.monotonic() - started < 0.05
        assert threading.active_count() == threads_before  # no thread started
        dev.gate.set()
        wait_until(lambda: dev.abandoned_workers == 0)
        assert dev.read(0, 4096) == bytes(4096)


def test_a_write_never_overtakes_a_stuck_write_to_the_same_blocks(image):
    with GatedDevice(image, io_timeout_ms=100) as dev:
        dev.gate.clear()
        with pytest.raises(IoTimeout):
            dev.write(0, b"\x01" * 8192)
        started = time.monotonic()
        with pytest.raises(IoTimeout, match="must not overtake"):
            dev.write(4096, b"\x02" * 4096)  # overlaps the stuck write
        assert time.monotonic() - started < 0.05
        dev.gate.set()
        wait_until(lambda: dev.abandoned_workers == 0)
        dev.write(4096, b"\x02" * 4096)  # allowed once the old write is done
        assert dev.read(0, 8192) == b"\x01" * 4096 + b"\x02" * 4096


def test_writes_elsewhere_and_reads_proceed_past_a_stuck_write(image):
    class StuckWrite(BlockDevice):
        release = threading.Event()

        def _pwrite(self, buf, offset):
            if offset == 0:
                self.release.wait()
            return super()._pwrite(buf, offset)

    with StuckWrite(image, io_timeout_ms=1000) as dev:
        with pytest.raises(IoTimeout):
            dev.write(0, b"\x01" * 4096)
        dev.write(4096, b"\x02" * 4096)
        assert dev.read(0, 8192)[4096:] == b"\x02" * 4096
        StuckWrite.release.set()
        wait_until(lambda: dev.abandoned_workers == 0)


def test_close_waits_for_a_stuck_io_before_closing_the_descriptor(image):
    dev = GatedDevice(image, io_timeout_ms=100)
    dev.gate.clear()
    with pytest.raises(IoTimeout):
        dev.read(0, 4096)
    fd = dev._fd
    dev.close()
    os.fstat(fd)  # still open: the stuck read may still use it
    dev.gate.set()
    wait_until(lambda: dev._fd == -1)
    with pytest.raises(IoError, match="closed"):
        dev.read(0, 4096)


# --------------------------------------------------------------------------
# the facade, format and probe on a file

def test_cluster_disk_on_a_file(image):
    with BlockDevice(image) as dev:
        sb = format_disk(dev, "files", 4, 100, 200)
        disk = ClusterDisk.open(dev)
        rec = SlotRecord(2, 5, 1, TIMING, Request.JOIN)
        disk.write_slot(rec)
        assert disk.read_slots()[1] == rec
    found = probe(image)
    assert found["cluster_name"] == "files" and found["block_size_bytes"] == 4096
    assert found["cluster_uuid"] == str(__import__("uuid").UUID(bytes=sb.cluster_uuid))


def test_probe_of_an_empty_file_is_none(image):
    assert probe(image) is None


# --------------------------------------------------------------------------
# the CLI on a file

def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "clusterfw.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60)


def test_cli_on_a_file(image):
    result = cli("disk", "init", image, "--cluster", "lab", "--profile", "lab", "--max-nodes", "4")
    assert result.returncode == 0, result.stderr
    assert "cluster 'lab'" in result.stdout
    assert cli("node", "add", image, "--name", "n1").returncode == 0
    assert cli("node", "add", image, "--name", "n2", "--id", "3").returncode == 0
    duplicate = cli("node", "add", image, "--name", "n1")
    assert duplicate.returncode == 3 and "already used" in duplicate.stderr
    bad = cli("node", "add", image, "--name", "Bad_Name")
    assert bad.returncode == 2 and "a-z 0-9" in bad.stderr
    out_of_range = cli("node", "add", image, "--name", "n9", "--id", "9")
    assert out_of_range.returncode == 2 and "1..4" in out_of_range.stderr
    # 16 node ids would not fit 4 MiB
    again = cli("disk", "init", image, "--cluster", "lab", "--profile", "lab", "--max-nodes", "4")
    assert again.returncode == 3 and "--force" in again.stderr

    dumped = cli("disk", "dump", image, "--json")
    assert dumped.returncode == 0, dumped.stderr
    state = json.loads(dumped.stdout)
    assert state["superblock"]["cluster_name"] == "lab"
    assert [n.get("record", {}).get("name") for n in state["nodes"]] == ["n1", None, "n2", None]
    assert [s["error"] for s in state["slots"]] == ["not-written"] * 4
    assert len(state["views"]) == 4 and state["views"][0]["best"] is None
    text = cli("disk", "dump", image)
    assert text.returncode == 0 and "n2" in text.stdout and "not written" in text.stdout

    probed = cli("probe", image)
    assert probed.returncode == 0
    keys = dict(line.split("=", 1) for line in probed.stdout.splitlines())
    assert keys["CLUSTERFW_CLUSTER"] == "lab" and keys["CLUSTERFW_UUID"] == state["superblock"]["cluster_uuid"]


def test_cli_errors_name_the_input(tmp_path, image):
    missing = cli("disk", "init", str(tmp_path / "nope"), "--cluster", "lab", "--profile", "lab")
    assert missing.returncode == 2 and "nope" in missing.stderr
    assert cli("disk", "init", image, "--cluster", "bad name", "--profile", "lab").returncode == 2
    assert "--max-nodes 0" in cli("disk", "init", image, "--cluster", "lab", "--profile", "lab",
                                  "--max-nodes", "0").stderr
    not_ours = cli("disk", "dump", image)
    assert not_ours.returncode == 1 and "disk init" in not_ours.stderr
    assert cli("probe", image).returncode == 1
    (tmp_path / "small").mkdir()
    small = cli("disk", "init", make_file(tmp_path / "small", 1 * MIB), "--cluster", "lab", "--profile", "lab")
    assert small.returncode == 2 and "needs at least" in small.stderr


def test_a_dropped_device_closes_its_descriptor_and_stops_its_worker(image):
    import gc

    threads_before = threading.active_count()
    dev = BlockDevice(image)
    dev.read(0, 4096)
    fd = dev._fd
    del dev
    gc.collect()
    wait_until(lambda: threading.active_count() == threads_before)
    with pytest.raises(OSError):
        os.fstat(fd)
