"""Damaged areas of the shared disk are logged once per occurrence, shown by
``clusterfw status`` and counted in ``status --json``; ``clusterfw disk
reset-slot`` resets a damaged slot and nothing else.

The tracker's own rules are checked on the op results the io thread feeds
it.  Everything else runs real ``clusterfw daemon`` processes (lab timing)
on a real loop device on a tmpfs, corrupted with O_DIRECT writes of random
bytes (``dd oflag=direct``) and restored with the bytes saved before."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from typing import Any, Iterator

import pytest
from test_daemon_loop import HAVE_LOOP, needs_loop, Cluster, cli, formatted_cluster, wait_for

from clusterfw.core.model import SlotRecord
from clusterfw.core.node import OpResult, ReadSlots, ReadView, ReadViews, Unreadable
from clusterfw.core.text import printable
from clusterfw.core.timing import derive
from clusterfw.ondisk.blockdev import BlockDevice
from clusterfw.ondisk.clusterdisk import ClusterDisk
from clusterfw.ondisk.errors import NotWritten
from clusterfw.ondisk.integrity import IntegrityTracker

RUNNING = ("n1", "n2")  # the cluster of these tests; n3 is configured but mostly not running
UNUSED_ID = 6  # a slot no node-table entry names (the disk has 8 ids, 3 nodes)



# --------------------------------------------------------------------------
# the tracker, fed op results as the io thread feeds it

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _tracker(names: dict[int, str] | None = None) -> tuple[IntegrityTracker, Clock, list[tuple[str, str]]]:
    lines: list[tuple[str, str]] = []
    clock = Clock()
    tracker = IntegrityTracker(log=lambda priority, text, **fields: lines.append((priority, text)),
                               names=lambda: names or {1: "n1", 2: "n2", 3: "n3"}, clock=clock, confirm_ms=200)
    return tracker, clock, lines


def _slot(node_id: int, seq: int, incarnation: int = 0x77) -> SlotRecord:
    return SlotRecord(node_id=node_id, incarnation=incarnation, seq=seq, timing=derive())


def _slots_result(value: dict[int, object]) -> OpResult:
    return OpResult(ReadSlots(), True, 0.0, 1.0, value)


def test_tracker_logs_a_damaged_slot_once_and_its_repair_and_ignores_unconfigured_ids():
    tracker, clock, lines = _tracker()
    bad = Unreadable("BadChecksum: slot: crc32c 0x1 does not match\x07")
    for seq in range(1, 6):  # five cycles, each reading the same damage
        clock.now += 100
        tracker.observe_result(_slots_result({1: _slot(1, seq), 2: bad, 3: Unreadable("never written", True),
                                              UNUSED_ID: Unreadable("BadMagic: slot: garbage")}))
    tracker.observe_result(OpResult(ReadSlots(), False, 0.0, 1.0, None, "EIO"))  # a failed read: no evidence
    tracker.flush()
    assert [p for p, _ in lines] == ["warning"]
    assert "DAMAGED: slot of node n2 (id 2) does not decode: BadChecksum" in lines[0][1]
    assert "\\x07" in lines[0][1] and "\x07" not in lines[0][1]  # control characters from the disk escaped
    snap = tracker.snapshot()
    assert snap["counts"]["slot"] == 1
    assert [(d["kind"], d["node"], d["node_id"]) for d in snap["damaged"]] == [("slot", "n2", 2)]
    clock.now += 2500
    tracker.observe_result(_slots_result({1: _slot(1, 9), 2: _slot(2, 4)}))
    tracker.observe_result(_slots_result({1: _slot(1, 10), 2: _slot(2, 5)}))
    tracker.flush()
    assert len(lines) == 2 and lines[1][0] == "notice"
    assert "repaired: slot of node n2 (id 2) is readable again after 2.9 s" in lines[1][1]
    assert tracker.snapshot()["damaged"] == [] and tracker.snapshot()["counts"]["slot"] == 1
    assert not any(f"id {UNUSED_ID}" in text for _, text in lines)


def test_tracker_reports_a_slot_seq_going_back_in_one_incarnation_as_a_replay_once():
    tracker, clock, lines = _tracker()
    for seq in (10, 11, 12):
        tracker.observe_result(_slots_result({2: _slot(2, seq)}))
    for _ in range(3):  # the old record stays there for three cycles
        clock.now += 100
        tracker.observe_result(_slots_result({2: _slot(2, 7)}))
    tracker.flush()
    assert len(lines) == 1 and lines[0][0] == "warning"
    assert "REPLAYED: slot of node n2 (id 2) went back from seq 12 to 7 within incarnation 77" in lines[0][1]
    assert tracker.snapshot()["counts"]["slot-replay"] == 1
    tracker.observe_result(_slots_result({2: _slot(2, 13)}))
    tracker.flush()
    assert len(lines) == 2 and "moved past the replayed record (seq 13)" in lines[1][1]
    # a new incarnation continuing from a lower seq is a restart, not a replay
    tracker.observe_result(_slots_result({2: _slot(2, 3, incarnation=0x99)}))
    tracker.flush()
    assert len(lines) == 2


def test_tracker_needs_two_reads_to_call_a_view_copy_damaged_and_reads_pair_results():
    tracker, clock, lines = _tracker()
    bad = Unreadable("BadChecksum: view: crc32c mismatch")
    blank = Unreadable("never written", never_written=True)
    pair_op = ReadViews(1, 3)
    tracker.observe_result(OpResult(pair_op, True, 0.0, 1.0, {1: (bad, blank), 2: (blank, blank),
                                                                UNUSED_ID: (bad, bad)}))
    tracker.flush()
    assert lines == [] and tracker.suspects() == [1]  # one rejection may be a read racing the master's write
    clock.now += 50
    tracker.observe_result(OpResult(pair_op, True, 0.0, 1.0, {1: (bad, blank)}))
    tracker.flush()
    assert lines == []  # not confirm_ms apart yet
    clock.now += 200
    tracker.observe_result(OpResult(pair_op, True, 0.0, 1.0, {1: (bad, blank)}))
    tracker.flush()
    assert len(lines) == 1 and "DAMAGED: view copy 0 (A) of node n1 (id 1) does not decode" in lines[0][1]
    assert tracker.snapshot()["counts"]["view"] == 1
    # a view read that returns only the best copy says nothing about copy A
    tracker.observe_result(OpResult(ReadView(1), True, 0.0, 1.0, None))
    tracker.flush()
    assert len(lines) == 1
    tracker.observe_view_copies(1, (blank, blank))
    tracker.flush()
    assert len(lines) == 2 and lines[1][1].startswith("repaired: view copy 0 (A) of node n1 (id 1)")


# --------------------------------------------------------------------------
# real daemons on a real disk

def dd_random(device: str, offset: int, length: int) -> None:
    """Random bytes into [offset, offset + length) with O_DIRECT."""
    assert offset % 512 == 0 and length % 512 == 0
    out = subprocess.run(["dd", "if=/dev/urandom", f"of={device}", "bs=512", f"seek={offset // 512}",
                          f"count={length // 512}", "oflag=direct", "conv=notrunc", "status=none"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def read_bytes(device: str, offset: int, length: int) -> bytes:
    with BlockDevice(device, readonly=True) as dev:
        return bytes(dev.read(offset, length))


def write_bytes(device: str, offset: int, data: bytes) -> None:
    with BlockDevice(device) as dev:
        dev.write(offset, data)


def layout(device: str) -> ClusterDisk:
    with BlockDevice(device, readonly=True) as dev:
        return ClusterDisk.open(dev)  # only its placement is used once the device is closed


def lines(cluster: Cluster, name: str, text: str) -> list[str]:
    return [line for line in cluster.logs[name].read_text(errors="replace").splitlines() if text in line]


def logged_once_on_each(cluster: Cluster, text: str, settle_s: float) -> dict[str, str]:
    """Wait until every running node logged ``text``, give them ``settle_s``
    more, and check each logged it exactly once; returns each node's line."""
    for name in RUNNING:
        wait_for(f"{name} to log {text!r}", lambda name=name: lines(cluster, name, text), 5)
    time.sleep(settle_s)
    out = {}
    for name in RUNNING:
        found = lines(cluster, name, text)
        assert len(found) == 1, found
        out[name] = found[0]
    return out


def status_json(cluster: Cluster, name: str) -> dict[str, Any]:
    out = cli("status", "--json", "--socket", cluster.socket(name))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def cluster(lun_root) -> Iterator[Cluster]:
    if not HAVE_LOOP:
        pytest.skip("needs root, losetup and loop devices")
    with formatted_cluster(lun_root, "integrity", "lab") as c:
        yield c


def two_joined(cluster: Cluster) -> str:
    """n1 and n2 running and joined; returns the master."""
    for name in RUNNING:
        if not cluster.running(name):
            cluster.start(name)
    wait_for("n1 and n2 joined", lambda: all(cluster.joined_view(n, RUNNING) for n in RUNNING), 20, 0.1)
    return cluster.master()


@needs_loop
def test_a_damaged_slot_of_a_configured_node_is_logged_once_shown_counted_and_repaired(cluster):
    two_joined(cluster)
    disk = layout(cluster.device)
    off3, size = disk.slot_extent(3)
    off_unused, _ = disk.slot_extent(UNUSED_ID)
    saved3 = read_bytes(cluster.device, off3, size)
    dd_random(cluster.device, off_unused, size)
    dd_random(cluster.device, off3, size)
    for name in RUNNING:
        wait_for(f"{name} to log the damaged slot", lambda name=name: lines(cluster, name, "DAMAGED: slot"), 5)
    time.sleep(1.5)  # fifteen more cycles, each reading the same damage
    for name in RUNNING:
        damaged = lines(cluster, name, "DAMAGED: slot")
        assert len(damaged) == 1, damaged
        assert "slot of node n3 (id 3) does not decode: BadMagic" in damaged[0]
        assert "reset-slot" in damaged[0]
        assert not lines(cluster, name, f"(id {UNUSED_ID})"), "a slot of an id nobody added was reported"
        status = status_json(cluster, name)
        assert status["integrity"]["counts"]["slot"] == 1
        assert [(d["kind"], d["node"], d["node_id"]) for d in status["integrity"]["damaged"]] == [("slot", "n3", 3)]
    text = cli("status", "--socket", cluster.socket("n1"))
    assert text.returncode == 0, text.stderr
    assert "WARNING: slot of node n3 (id 3) is damaged for" in text.stdout
    assert "damage seen since the daemon started: slot 1" in text.stdout
    # restored: readable again, said once
    write_bytes(cluster.device, off3, saved3)
    logged_once_on_each(cluster, "repaired: slot of node n3 (id 3) is readable again after", settle_s=0.5)
    for name in RUNNING:
        status = status_json(cluster, name)
        assert status["integrity"]["damaged"] == [] and status["integrity"]["counts"]["slot"] == 1
    write_bytes(cluster.device, off_unused, bytes(size))


@needs_loop
def test_both_view_copies_of_the_master_unreadable_are_logged_and_status_says_so(cluster):
    master = two_joined(cluster)
    follower = next(n for n in RUNNING if n != master)
    disk = layout(cluster.device)
    master_id = next(n["id"] for n in status_json(cluster, follower)["nodes"] if n["name"] == master)
    offsets = [disk.layout.view_offset(master_id, copy) for copy in (0, 1)]
    saved = [read_bytes(cluster.device, off, 512) for off in offsets]
    for off in offsets:
        dd_random(cluster.device, off, 512)
    wait_for("the follower to log both copies",
             lambda: len(lines(cluster, follower, f"DAMAGED: view copy")) == 2, 8)
    time.sleep(1.5)
    damaged = lines(cluster, follower, "DAMAGED: view copy")
    assert len(damaged) == 2, damaged
    assert f"view copy 0 (A) of node {master} (id {master_id}) does not decode" in damaged[0]
    assert f"view copy 1 (B) of node {master} (id {master_id}) does not decode" in damaged[1]
    status = status_json(cluster, follower)
    assert status["integrity"]["counts"]["view"] == 2
    assert f"the view of the master {master} (id {master_id}) cannot be read" in status["view_error"]
    text = cli("status", "--socket", cluster.socket(follower)).stdout
    assert f"WARNING: the view of the master {master} (id {master_id}) cannot be read" in text
    # read straight from the disk: no "epoch 0, everyone inactive"
    out = cli("status", "--json", "--socket", str(cluster.work / "none.sock"), "--disk", cluster.device)
    assert out.returncode == 0, out.stderr
    from_disk = json.loads(out.stdout)
    assert from_disk["source"] == "disk" and from_disk["epoch"] is None
    assert f"the view of the master {master} (id {master_id}) cannot be read" in from_disk["view_error"]
    assert {n["state"] for n in from_disk["nodes"]} == {"unknown"}
    assert sorted((d["node_id"], d["copy"]) for d in from_disk["integrity"]["damaged"]) == [
        (master_id, 0), (master_id, 1)]
    out = cli("status", "--socket", str(cluster.work / "none.sock"), "--disk", cluster.device)
    assert out.returncode == 0, out.stderr
    assert "epoch ?" in out.stdout and "epoch 0" not in out.stdout
    assert f"WARNING: the view of the master {master} (id {master_id}) cannot be read" in out.stdout
    for off, data in zip(offsets, saved):
        write_bytes(cluster.device, off, data)
    wait_for("the follower to log the repairs",
             lambda: len(lines(cluster, follower, "repaired: view copy")) == 2, 8)
    status = status_json(cluster, follower)
    assert status["integrity"]["damaged"] == [] and "view_error" not in status


@needs_loop
def test_a_damaged_superblock_and_node_table_entry_are_logged_once_and_repaired(cluster):
    two_joined(cluster)
    disk = layout(cluster.device)
    entry3 = disk.layout.node_record_offset(3)
    saved_sb = read_bytes(cluster.device, 0, 512)
    saved_entry = read_bytes(cluster.device, entry3, 512)
    dd_random(cluster.device, 0, 512)
    dd_random(cluster.device, entry3, 512)
    for name in RUNNING:
        wait_for(f"{name} to log both", lambda name=name: lines(cluster, name, "DAMAGED: node table entry 3")
                 and lines(cluster, name, "DAMAGED: the superblock"), 5)
    time.sleep(2.5)  # two more re-checks
    for name in RUNNING:
        assert len(lines(cluster, name, "DAMAGED: the superblock does not decode: BadMagic")) == 1
        assert len(lines(cluster, name, "DAMAGED: node table entry 3 (node n3) does not decode")) == 1
        counts = status_json(cluster, name)["integrity"]["counts"]
        assert counts["superblock"] == 1 and counts["node-table"] == 1
    text = cli("status", "--socket", cluster.socket("n2")).stdout
    assert "WARNING: the superblock is damaged" in text and "WARNING: node table entry 3 is damaged" in text
    write_bytes(cluster.device, 0, saved_sb)
    write_bytes(cluster.device, entry3, saved_entry)
    for name in RUNNING:
        wait_for(f"{name} to log both repairs", lambda name=name: lines(cluster, name, "repaired: the superblock")
                 and lines(cluster, name, "repaired: node table entry 3"), 5)
        assert status_json(cluster, name)["integrity"]["damaged"] == []
    assert all(cluster.running(n) for n in RUNNING)


@needs_loop
def test_a_slot_seq_going_back_is_logged_as_a_replay_once(cluster):
    two_joined(cluster)
    cluster.start("n3")
    wait_for("n3 joined", lambda: cluster.joined_view("n1", ("n1", "n2", "n3")), 20, 0.1)
    disk = layout(cluster.device)
    off3, size = disk.slot_extent(3)
    old = read_bytes(cluster.device, off3, size)
    time.sleep(0.5)  # n3 writes a few more heartbeats
    cluster.signal("n3", signal.SIGKILL)
    cluster.wait_exit("n3", 5)
    newest = disk.slot_from_bytes(3, read_bytes(cluster.device, off3, size))
    replayed = disk.slot_from_bytes(3, old)
    assert isinstance(newest, SlotRecord) and isinstance(replayed, SlotRecord) and replayed.seq < newest.seq
    write_bytes(cluster.device, off3, old)
    found = logged_once_on_each(cluster, "REPLAYED: slot of node n3 (id 3)", settle_s=1.0)
    for name in RUNNING:
        seen = re.search(r"went back from seq (\d+) to (\d+) within incarnation ([0-9a-f]+)", found[name])
        assert seen is not None, found  # the highest seq this observer read: newest, unless it missed the last
        assert replayed.seq < int(seen[1]) <= newest.seq and int(seen[2]) == replayed.seq
        assert seen[3] == f"{newest.incarnation:x}"
        status = status_json(cluster, name)
        assert status["integrity"]["counts"]["slot-replay"] == 1
        assert [d["kind"] for d in status["integrity"]["damaged"]] == ["slot-replay"]
    # a restart is a new incarnation: the replay is over
    cluster.start("n3")
    for name in RUNNING:
        wait_for(f"{name} to see the replay end", lambda name=name: lines(cluster, name, "the replay is over"), 10)
    cluster.signal("n3", signal.SIGTERM)
    assert cluster.wait_exit("n3", 15) == 0


@needs_loop
def test_reset_slot_refuses_a_valid_or_never_written_slot_and_resets_a_damaged_one(cluster):
    two_joined(cluster)
    disk = layout(cluster.device)
    off1, size = disk.slot_extent(1)
    before = read_bytes(cluster.device, off1, size)
    out = cli("disk", "reset-slot", cluster.device, "n1", "--json")
    assert out.returncode == 3, out.stderr
    assert "is valid" in out.stderr and "never reset" in out.stderr and "Traceback" not in out.stderr
    assert json.loads(out.stdout)["reset"] is False and json.loads(out.stdout)["refused"] == "valid"
    assert isinstance(disk.slot_from_bytes(1, read_bytes(cluster.device, off1, size)), SlotRecord)
    assert disk.slot_from_bytes(1, before).incarnation == disk.slot_from_bytes(
        1, read_bytes(cluster.device, off1, size)).incarnation  # still n1's own record, untouched
    out = cli("disk", "reset-slot", cluster.device, str(UNUSED_ID))
    assert out.returncode == 3 and "already in the never-written state" in out.stderr
    out = cli("disk", "reset-slot", cluster.device, "nosuchnode")
    assert out.returncode == 2 and "no node named 'nosuchnode'" in out.stderr and "n1 (id 1)" in out.stderr

    # damaged, but something keeps writing it: refused
    off5, _ = disk.slot_extent(5)
    stop = threading.Event()

    def scribble() -> None:
        while not stop.is_set():
            write_bytes(cluster.device, off5, os.urandom(size))
            time.sleep(0.02)

    writer = threading.Thread(target=scribble)
    writer.start()
    try:
        out = cli("disk", "reset-slot", cluster.device, "5", "--json")
    finally:
        stop.set()
        writer.join()
    assert out.returncode == 3 and "changed within 300 ms" in out.stderr, out.stderr
    assert json.loads(out.stdout)["refused"] == "being-written"
    write_bytes(cluster.device, off5, bytes(size))

    # n3 not running, its slot damaged: its daemon refuses to start; reset, then it starts and joins
    off3, _ = disk.slot_extent(3)
    repaired = {name: len(lines(cluster, name, "repaired: slot of node n3")) for name in RUNNING}
    dd_random(cluster.device, off3, size)
    refused = cluster.start("n3")
    assert refused.wait(15) == 1 and "is damaged" in cluster.log("n3")
    out = cli("disk", "reset-slot", cluster.device, "n3", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["reset"] is True and result["node"] == "n3" and result["node_id"] == 3
    assert result["was"]["error"] in ("bad-magic", "bad-version", "bad-length", "bad-checksum")
    assert isinstance(disk.slot_from_bytes(3, read_bytes(cluster.device, off3, size)), NotWritten)
    for name in RUNNING:
        wait_for(f"{name} to see n3's slot readable",
                 lambda name=name: len(lines(cluster, name, "repaired: slot of node n3")) == repaired[name] + 1, 5)
    cluster.start("n3")
    wait_for("n3 joined", lambda: cluster.joined_view("n1", ("n1", "n2", "n3")), 20, 0.1)
    cluster.signal("n3", signal.SIGTERM)
    assert cluster.wait_exit("n3", 15) == 0


@needs_loop
def test_reset_slot_text_output_names_what_it_did(cluster):
    disk = layout(cluster.device)
    off7, size = disk.slot_extent(7)
    dd_random(cluster.device, off7, size)
    out = cli("disk", "reset-slot", cluster.device, "7")
    assert out.returncode == 0, out.stderr
    assert f"reset the slot of node id 7 (not in the node table) on {cluster.device}: it was damaged" in out.stdout
    assert "it is now never written" in out.stdout
    assert isinstance(disk.slot_from_bytes(7, read_bytes(cluster.device, off7, size)), NotWritten)


def test_printable_escapes_control_characters():
    assert printable("n1\x1b[31m\x00\n") == "n1\\x1b[31m\\x00\\n"
    assert printable("ok-ümlaut") == "ok-ümlaut"
