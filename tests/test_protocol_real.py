"""The protocol-safety defects, reproduced as they were found: real
``clusterfw daemon`` processes (lab timing) on a real loop device on a tmpfs,
sectors overwritten with random bytes through O_DIRECT, daemons SIGKILLed.

* A damaged slot that nobody owns, or that belongs to a dead node, no longer
  stops elections: before, ``election._conflict`` aborted every phase while
  any slot was unreadable, and no master was ever elected again.
* A new master whose predecessor's views were both destroyed no longer
  resumes from an older node's stale view: before, it took a live node's
  newer incarnation for a restart, forced it out, and the DLM gave its lock
  to a second holder.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import time
from typing import Iterator

import pytest
from test_daemon_loop import HAVE_LOOP, needs_loop, NODES, Cluster, formatted_cluster, wait_for
from test_dlm_daemon import locks_json, start_lock, wait_held
from test_integrity import dd_random, layout, lines

pytestmark = pytest.mark.lab
UNUSED_ID = 6  # the disk has 8 ids and 3 nodes



@pytest.fixture
def cluster(lun_root) -> Iterator[Cluster]:
    """A fresh disk per test: these tests leave damage and stale views behind."""
    if not HAVE_LOOP:
        pytest.skip("needs root, losetup and loop devices")
    with formatted_cluster(lun_root, "protocol", "lab") as c:
        yield c


def node_id(cluster: Cluster, name: str) -> int:
    status = cluster.status(name) or cluster.status(next(n for n in NODES if cluster.running(n)))
    assert status is not None
    return int(next(n["id"] for n in status["nodes"] if n["name"] == name))


def all_joined(cluster: Cluster, names: tuple[str, ...], timeout_s: float = 20) -> None:
    wait_for(f"{', '.join(names)} joined", lambda: all(cluster.joined_view(n, names) for n in names), timeout_s, 0.1)


def three_joined(cluster: Cluster) -> str:
    """Start n1..n3, wait until all are joined; returns the master."""
    for name in NODES:
        cluster.start(name)
    all_joined(cluster, NODES)
    return cluster.master()


def new_master(cluster: Cluster, survivors: tuple[str, ...], old: str, timeout_s: float = 10) -> str:
    def found() -> str | None:
        status = cluster.status(survivors[0])
        if status is None or status["master"] in (None, old):
            return None
        gone = cluster.node(status, old)["state"] == "inactive"
        return status["master"] if gone and all(cluster.joined_view(n, survivors) for n in survivors) else None
    return wait_for(f"a new master that forced {old} out", found, timeout_s, 0.05)  # type: ignore[no-any-return]


@needs_loop
def test_a_damaged_slot_nobody_owns_does_not_stop_the_election(cluster):
    master = three_joined(cluster)
    off, size = layout(cluster.device).slot_extent(UNUSED_ID)
    dd_random(cluster.device, off, size)
    time.sleep(0.3)
    cluster.signal(master, signal.SIGKILL)
    cluster.wait_exit(master, 5)
    killed = time.monotonic()
    survivors = tuple(n for n in NODES if n != master)
    elected = new_master(cluster, survivors, master)
    print(f"\n[measure] master killed with slot {UNUSED_ID} damaged -> {elected} master, {master} forced out: "
          f"{(time.monotonic() - killed) * 1000:.0f} ms")


@needs_loop
def test_a_dead_nodes_damaged_slot_is_passed_over(cluster):
    master = three_joined(cluster)
    follower, survivor = [n for n in NODES if n != master]
    cluster.signal(follower, signal.SIGKILL)
    cluster.wait_exit(follower, 5)
    wait_for(f"{follower} forced out", lambda: (s := cluster.status(survivor)) is not None
             and cluster.node(s, follower)["state"] == "inactive", 10, 0.05)
    term = cluster.status(survivor)["term"]
    off, size = layout(cluster.device).slot_extent(node_id(cluster, follower))
    dd_random(cluster.device, off, size)
    wait_for("the damage to be logged", lambda: lines(cluster, survivor, f"DAMAGED: slot of node {follower}"), 5)
    cluster.signal(master, signal.SIGKILL)
    cluster.wait_exit(master, 5)
    assert new_master(cluster, (survivor,), master) == survivor
    status = cluster.status(survivor)
    # the unreadable block of a dead node was passed over: the next term was decided
    assert status["term"] == term + 1, (term, status["term"])


@needs_loop
def test_a_new_master_never_resumes_from_a_stale_view_and_a_lock_keeps_one_holder(cluster):
    """The reproduction of the critical defect: n2 was master once (its old
    view copies stay on the disk), restarted, and n1 or n3 is master now.
    n2 holds lock ``mx``; another node waits.  Both copies of the master's
    view are overwritten, then the master is SIGKILLed."""
    cluster.start("n2")
    all_joined(cluster, ("n2",))
    assert cluster.master() == "n2"
    cluster.start("n1")
    cluster.start("n3")
    all_joined(cluster, NODES)
    cluster.signal("n2", signal.SIGKILL)
    cluster.wait_exit("n2", 5)
    master = new_master(cluster, ("n1", "n3"), "n2")
    cluster.start("n2")
    all_joined(cluster, NODES)
    assert cluster.master() == master
    waiter_node = next(n for n in NODES if n not in (master, "n2"))
    holder = start_lock(cluster, "n2", "mx", "sleep", "60")
    waiter = None
    try:
        wait_held(cluster, "mx", "n2", observer=waiter_node)
        waiter = start_lock(cluster, waiter_node, "mx", "true")
        wait_for("the waiter", lambda: any(r["state"] == "waiting" for r in locks_json(cluster, waiter_node)["locks"]
                                           if r["name"] == "mx"), 10, 0.1)
        epoch_before = cluster.status(waiter_node)["epoch"]
        disk = layout(cluster.device)
        master_id = node_id(cluster, master)
        for copy in (0, 1):
            dd_random(cluster.device, disk.layout.view_offset(master_id, copy), 4096)
        cluster.signal(master, signal.SIGKILL)
        cluster.wait_exit(master, 5)
        survivors = tuple(n for n in NODES if n != master)
        elected = new_master(cluster, survivors, master)
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:  # the lock keeps exactly one holder, n2
            for observer in survivors:
                held = [r for r in locks_json(cluster, observer)["locks"] if r["name"] == "mx" and r["state"] == "held"]
                assert [r["node"] for r in held] == ["n2"], held
            time.sleep(0.1)
        assert holder.poll() is None, "n2's holder was killed: its lock was taken from a live node"
        assert waiter.poll() is None, "the waiter was granted mx while n2 still held it (two holders)"
        status = cluster.status(elected)
        assert status["epoch"] > epoch_before
        assert all(cluster.node(status, n)["state"] == "joined" for n in survivors)
        log = cluster.logs[elected].read_text(errors="replace")
        assert not re.search(r"n2 forced out \(restarted: ", log)
        resumed = re.findall(r"resuming from epoch (\d+)", log)
        assert resumed and int(resumed[-1]) >= epoch_before, resumed
    finally:
        for proc in (holder, waiter):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(5)
