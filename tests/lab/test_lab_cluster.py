"""A real cluster: three nspawn nodes, each with its own systemd as PID 1
running clusterfw.service on one shared loop-backed disk, and real faults
(SIGKILL of a whole node, a frozen node, a cut disk path, a killed daemon).

Each test starts from (and leaves) a healthy cluster of three joined nodes.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from lunfs import lun_dir

from clusterfw.lab.lab import Lab, LabError

pytestmark = pytest.mark.lab
NODES = ("n1", "n2", "n3")
REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def running_cluster(lun_root: Path, name: str, nodes: int = 3, autostart: bool = True) -> Iterator[Lab]:
    """An nspawn lab of ``nodes`` nodes running clusterfw.service, healthy
    (every node joined, a master) before it is handed out -- or, without
    ``autostart``, booted with clusterfw.service not started; always brought
    down, and nothing may be left behind."""
    lab = Lab(lun_dir(lun_root, name))  # on a tmpfs: see tests/lunfs.py
    try:
        lab.up(nodes, "nspawn", disk_size=64 << 20, autostart=autostart)
        if autostart:
            wait_healthy(lab, timeout=60)
        yield lab
    finally:
        lab.down(timeout=10, purge=True)
        assert not lab.leftovers(), lab.leftovers()


@pytest.fixture(scope="module")
def cluster(lun_root, lab_need):
    lab_need("nspawn")
    with running_cluster(lun_root, "cluster-lab") as lab:
        yield lab


@pytest.fixture(autouse=True)
def healed(request):
    """Each test starts from a healthy cluster even when the one before it
    failed half-way (a node left crashed, paused, cut off or stopped): a
    failure is reported once, by the test that failed, not by every test
    after it."""
    if "cluster" not in request.fixturenames:
        yield
        return
    lab = request.getfixturevalue("cluster")
    heal(lab)
    yield


def heal(lab: Lab) -> None:
    for node in NODES:
        if any(healthy(lab, via) for via in NODES):
            return
        rec = lab.status()["nodes"]
        info = next(n for n in rec if n["name"] == node)
        if info["disk"].get("mode") != "pass":
            lab.restore_disk(node)
        if info["state"] == "paused":
            lab.resume(node)
        elif info["state"] != "up":
            lab.restart(node)
            continue
        for unit in ("clusterfw", "clusterfw-events"):
            lab.exec(node, ["systemctl", "start", unit], timeout=60)
    ok = wait_for(lambda: any(healthy(lab, via) for via in NODES), 90, 0.5)
    assert ok, f"the lab could not be healed: {[states(status(lab, n)) for n in NODES]}"


def status(lab: Lab, node: str) -> dict | None:
    try:
        cp = lab.exec(node, ["clusterfw", "status", "--json"], timeout=10)
    except (LabError, subprocess.TimeoutExpired):
        return None
    if cp.returncode != 0:
        return None
    try:
        return json.loads(cp.stdout)
    except json.JSONDecodeError:
        return None


def states(st: dict | None) -> dict[str, str]:
    return {} if st is None else {n["name"]: n["state"] for n in st["nodes"]}


def wait_for(fn, timeout: float, step: float = 0.1):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(step)
    return fn()


def healthy(lab: Lab, via: str = "n1") -> dict | None:
    st = status(lab, via)
    if st is None or st.get("master") is None:
        return None
    if states(st) != {n: "joined" for n in NODES}:
        return None
    return st


def wait_healthy(lab: Lab, timeout: float = 60, via: str = "n1") -> dict:
    st = wait_for(lambda: healthy(lab, via), timeout, 0.3)
    assert st, f"cluster not healthy after {timeout}s: {states(status(lab, via))}"
    return st


def systemctl(lab: Lab, node: str, *args: str) -> subprocess.CompletedProcess:
    return lab.exec(node, ["systemctl", *args], timeout=30)


def unit_prop(lab: Lab, node: str, prop: str) -> str:
    return systemctl(lab, node, "show", "-p", prop, "--value", "clusterfw").stdout.strip()


def journal(lab: Lab, node: str) -> str:
    return lab.exec(node, ["journalctl", "-u", "clusterfw", "--no-pager", "-o", "cat"], timeout=30).stdout


def slot(lab: Lab, node_id: int) -> tuple[int, int] | None:
    """(incarnation, seq) of a node's slot, read from the disk by the host."""
    from clusterfw.ondisk.blockdev import BlockDevice
    from clusterfw.ondisk.clusterdisk import ClusterDisk
    with BlockDevice(lab.state["disk"]["image"], readonly=True,
                     file_block_size_bytes=lab.state["disk"]["sector_size"]) as dev:
        rec = ClusterDisk.open(dev).read_slot(node_id)
    return None if isinstance(rec, Exception) else (rec.incarnation, rec.seq)


def other(node: str) -> str:
    return "n1" if node != "n1" else "n2"


def test_three_nodes_join_with_one_master(cluster: Lab) -> None:
    st = wait_healthy(cluster)
    assert sum(1 for n in st["nodes"] if n["master"]) == 1
    for n in st["nodes"]:
        levels = n["levels"]
        assert {name for name, state in levels.items() if state == "placeholder"} == {"vdm", "sfs"}
        assert all(state == "joined" for name, state in levels.items() if name not in ("vdm", "sfs")), levels
        assert n["heartbeat_age_ms"] < 1000
    for node in NODES:  # every node agrees on master and epoch
        s = wait_for(lambda: healthy(cluster, node), 10)
        assert s and s["master"] == st["master"]
    assert "READY" not in unit_prop(cluster, "n1", "StatusText")
    assert unit_prop(cluster, "n1", "ActiveState") == "active"


def test_graceful_leave_and_rejoin(cluster: Lab) -> None:
    wait_healthy(cluster)
    assert systemctl(cluster, "n3", "stop", "clusterfw").returncode == 0
    st = wait_for(lambda: (s := status(cluster, "n1")) and states(s)["n3"] == "inactive" and s, 30)
    assert st, states(status(cluster, "n1"))
    n3 = next(n for n in st["nodes"] if n["name"] == "n3")
    assert n3["forced"] is False  # left, not forced out
    assert unit_prop(cluster, "n3", "ExecMainStatus") == "0"
    assert systemctl(cluster, "n3", "start", "clusterfw").returncode == 0
    wait_healthy(cluster, 30)


def _crash_and_check(cluster: Lab, victim: str, timeout: float = 20) -> dict:
    watcher = other(victim)
    before = states(status(cluster, watcher))
    assert before == {n: "joined" for n in NODES}
    t0 = time.monotonic()
    cluster.crash(victim)
    st = wait_for(lambda: (s := status(cluster, watcher)) and states(s).get(victim) == "inactive"
                  and s["master"] not in (None, victim) and s, timeout, 0.1)
    assert st, f"{victim} not forced out: {states(status(cluster, watcher))}"
    gone = next(n for n in st["nodes"] if n["name"] == victim)
    assert gone["forced"] is True
    assert all(states(st)[n] == "joined" for n in NODES if n != victim)
    st["forced_out_after_s"] = time.monotonic() - t0
    return st


def test_crash_of_a_member(cluster: Lab) -> None:
    st = wait_healthy(cluster)
    victim = next(n for n in NODES if n != st["master"])
    _crash_and_check(cluster, victim)
    time.sleep(2)  # it stays out while it is down
    assert states(status(cluster, other(victim)))[victim] == "inactive"
    cluster.restart(victim)
    wait_healthy(cluster, 60, via=other(victim))


def test_crash_of_the_master(cluster: Lab) -> None:
    st = wait_healthy(cluster)
    old = st["master"]
    after = _crash_and_check(cluster, old)
    assert after["master"] != old and after["term"] > st["term"]
    cluster.restart(old)
    wait_healthy(cluster, 60, via=other(old))


def test_pause_longer_than_the_dead_timeout_fences_the_node(cluster: Lab) -> None:
    st = wait_healthy(cluster)
    victim = next(n for n in NODES if n != st["master"])
    vid = int(victim[1:])
    pid_before = unit_prop(cluster, victim, "MainPID")
    cluster.pause(victim, 3.0, background=True)  # dead_after is ~1 s in the lab profile
    time.sleep(0.3)
    frozen = slot(cluster, vid)
    forced = wait_for(lambda: states(status(cluster, other(victim))).get(victim) == "inactive", 10)
    assert forced, "the others did not force the paused node out"
    wait_for(lambda: cluster._node_status(victim, cluster.state["nodes"][victim]).get("state") != "paused", 10)
    time.sleep(1.5)  # awake; its daemon must fence at once and write nothing
    now = slot(cluster, vid)
    assert now is not None and frozen is not None
    assert now == frozen or now[0] != frozen[0], \
        f"the paused incarnation wrote after waking: {frozen} -> {now}"
    assert "fence" in journal(cluster, victim).lower()
    # systemd restarts the fenced daemon as a new incarnation, which rejoins
    wait_healthy(cluster, 60, via=other(victim))
    assert unit_prop(cluster, victim, "MainPID") != pid_before


def test_cut_disk_fences_that_node_and_the_others_carry_on(cluster: Lab) -> None:
    st = wait_healthy(cluster)
    victim = next(n for n in NODES if n != st["master"])
    cluster.cut_disk(victim, "eio")
    try:
        fenced = wait_for(lambda: "fence" in journal(cluster, victim).lower()
                          and unit_prop(cluster, victim, "ActiveState") != "active", 10)
        assert fenced, "the node kept running without its disk"
        fence = [line for line in journal(cluster, victim).splitlines() if line.startswith("FENCED")][-1]
        # the journal says why: the disk, not a stalled process
        assert "no heartbeat write completed" in fence and "last heartbeat write issued" in fence, fence
        st2 = wait_for(lambda: (s := status(cluster, other(victim))) and states(s).get(victim) == "inactive"
                       and s, 15)
        assert st2 and all(states(st2)[n] == "joined" for n in NODES if n != victim)
    finally:
        cluster.restore_disk(victim)
    wait_healthy(cluster, 60, via=other(victim))


def test_daemon_alone_restarted_by_systemd(cluster: Lab) -> None:
    st = wait_healthy(cluster)
    victim = next(n for n in NODES if n != st["master"])
    pid = unit_prop(cluster, victim, "MainPID")
    inc = next(n["incarnation"] for n in st["nodes"] if n["name"] == victim)
    assert systemctl(cluster, victim, "kill", "--signal=SIGKILL", "clusterfw").returncode == 0
    st2 = wait_for(lambda: (s := healthy(cluster, other(victim))) and
                   next(n["incarnation"] for n in s["nodes"] if n["name"] == victim) != inc and s, 60, 0.3)
    assert st2, f"the daemon was not restarted and rejoined: {states(status(cluster, other(victim)))}"
    assert unit_prop(cluster, victim, "MainPID") not in ("0", pid)


# ---------------------------------------------------------------- the DLM
LOCKER = r'''#!/bin/sh
# locker.sh NODE PROC CYCLES: CYCLES read-increment-write cycles on the shared
# counter, each under the cluster lock "counter".  The counter is an
# append-only file; its last line holds the value.  A cycle appends
# "VALUE TOKEN NODE PROC": one line per completed cycle, so a lost update
# shows up as a repeated value.
node=$1; proc=$2; cycles=$3; i=0
while [ "$i" -lt "$cycles" ]; do
  clusterfw lock counter -- sh -c 'n=$(tail -n 1 /lab/shared/counter | cut -d" " -f1); echo "$((n+1)) $CLUSTERFW_LOCK_TOKEN '"$node $proc"'" >> /lab/shared/counter' 2>"/lab/shared/err-$node-$proc"
  rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "cycle $i: clusterfw lock exited $rc at $(date +%T.%N): $(cat "/lab/shared/err-$node-$proc")" >&2
    exit "$rc"
  fi
  i=$((i+1))
done
echo "$cycles" > "/lab/shared/done-$node-$proc"
'''


def test_dlm_counter_under_lock_loses_no_update_through_a_crash(cluster: Lab) -> None:
    """3 nodes x 4 processes x CYCLES cycles under `clusterfw lock`; a node
    is crashed in the middle.  Every completed cycle is one line of the
    counter; values run 1..N without a repeat or a gap; fencing tokens grow."""
    import threading
    cycles, procs = 200, 4
    st = wait_healthy(cluster)
    victim = next(n for n in NODES if n != st["master"])
    shared = cluster.dir / "shared"
    (shared / "locker.sh").write_text(LOCKER)
    counter = shared / "counter"
    counter.write_text("0 0 init 0\n")
    for old in shared.glob("done-*"):
        old.unlink()
    results: dict[tuple[str, int], int] = {}
    errors: dict[tuple[str, int], str] = {}

    def work(node: str, proc: int) -> None:
        try:
            cp = cluster.exec(node, ["sh", "/lab/shared/locker.sh", node, str(proc), str(cycles)], timeout=900)
            results[(node, proc)] = cp.returncode
            errors[(node, proc)] = cp.stderr.strip()
        except (LabError, subprocess.TimeoutExpired) as exc:
            results[(node, proc)] = -1
            errors[(node, proc)] = str(exc)

    threads = [threading.Thread(target=work, args=(n, p)) for n in NODES for p in range(procs)]
    start = time.monotonic()
    for t in threads:
        t.start()
    total = len(NODES) * procs * cycles
    assert wait_for(lambda: len(counter.read_text().splitlines()) > total // 3, 600, 0.2), "no progress"
    crashed_at = len(counter.read_text().splitlines()) - 1
    crash_clock = time.strftime("%T")
    cluster.crash(victim)
    try:
        for t in threads:
            t.join(900)
    finally:
        cluster.restart(victim)
    took = time.monotonic() - start
    rows = [line.split() for line in counter.read_text().splitlines()[1:]]
    print(f"\n[measure] {len(rows)} locked cycles in {took:.1f} s ({len(rows) / took:.1f}/s), "
          f"{victim} crashed after {crashed_at} at {crash_clock}")
    values = [int(r[0]) for r in rows]
    assert values == list(range(1, len(rows) + 1)), "a lost or repeated update"
    tokens = [int(r[1]) for r in rows]
    assert all(a < b for a, b in zip(tokens, tokens[1:])), "fencing tokens must strictly increase"
    survivors = [n for n in NODES if n != victim]
    failed = {f"{n}/{p}": (results[(n, p)], errors[(n, p)]) for n in survivors for p in range(procs)
              if results[(n, p)] != 0}
    if failed:
        for node in survivors:
            log = cluster.exec(node, ["journalctl", "-u", "clusterfw", "--no-pager", "-o", "short-precise",
                                      "-n", "80"], timeout=30).stdout
            print(f"--- journal of {node}:\n{log}")
    assert not failed, f"survivor workers failed: {failed}"
    for node in survivors:
        for p in range(procs):
            assert (shared / f"done-{node}-{p}").read_text().strip() == str(cycles)
    by_survivors = sum(1 for r in rows if r[2] in survivors)
    assert by_survivors == len(survivors) * procs * cycles
    assert sum(1 for r in rows if r[2] == victim) >= 1
    # the table shows nothing held any more (the victim's entries are stale)
    locks = json.loads(cluster.exec(survivors[0], ["clusterfw", "locks", "--json"], timeout=30).stdout)
    assert [r for r in locks["locks"] if r["name"] == "counter"] == []
    wait_healthy(cluster, 60, via=survivors[0])


# ------------------------------------------------------ the event manager
# Every node also runs clusterfw-events.service (level 40; the lab's
# clusterfw.conf makes the daemon wait for "events"): a member's crash is
# recorded as its forced leave, `systemctl stop clusterfw` stays a graceful
# leave, and the event manager comes back with a restarted daemon.

def run(lab: Lab, node: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return lab.exec(node, list(argv), timeout=timeout)


def unit_of(lab: Lab, node: str, unit: str, prop: str) -> str:
    return run(lab, node, "systemctl", "show", "-p", prop, "--value", unit).stdout.strip()


def events(lab: Lab, node: str) -> list[dict[str, Any]]:
    cp = run(lab, node, "clusterfw", "events", "--json")
    assert cp.returncode == 0, cp.stderr
    return [json.loads(line) for line in cp.stdout.splitlines()]


def test_every_node_runs_the_event_manager_at_level_40(cluster: Lab) -> None:
    wait_healthy(cluster)
    for node in NODES:
        assert unit_of(cluster, node, "clusterfw-events", "ActiveState") == "active"
        st = wait_for(lambda node=node: healthy(cluster, node), 10)
        sub = next(s for s in st["subsystems"] if s["level"] == 40)
        assert (sub["name"], sub["kind"], sub["attached"]) == ("events", "external", True)
        assert all(n["levels"].get("events") == "joined" for n in st["nodes"])
        assert "registered at level 40" in unit_of(cluster, node, "clusterfw-events", "StatusText")
    # Each node records what its level 40 is notified of from its own join on (a node
    # that joined earlier shows only in the context): its own join, and together every join.
    logs = {node: events(cluster, node) for node in NODES}
    for node, recs in logs.items():
        assert (node, "join") in [(r["node"], r["event"]) for r in recs], (node, recs)
        assert all(r["observer"] == node and r["level"] == 40 for r in recs)
    assert {r["node"] for recs in logs.values() for r in recs if r["event"] == "join"} == set(NODES)
    table = run(cluster, "n1", "clusterfw", "events")
    assert table.returncode == 0 and table.stdout.startswith("TIME") and " join " in table.stdout


def test_a_member_crash_is_recorded_as_its_forced_leave(cluster: Lab) -> None:
    st = wait_healthy(cluster)
    victim = next(n for n in NODES if n != st["master"] and n != "n1")
    before = len(events(cluster, "n1"))
    t0 = time.monotonic()
    cluster.crash(victim)
    forced = wait_for(lambda: [r for r in events(cluster, "n1")[before:]
                               if r["node"] == victim and r["event"] == "forced-leave"], 20, 0.3)
    assert forced, f"no forced leave of {victim} recorded: {events(cluster, 'n1')[before:]}"
    print(f"\n[measure] crash of {victim} -> its forced leave in n1's event log: {time.monotonic() - t0:.2f} s")
    rec = forced[0]
    assert rec["observer"] == "n1" and rec["level"] == 40
    assert {"node": "n1", "id": 1, "state": "joined"} in rec["context"]
    # the same through the CLI on the lab host, as a user would ask
    cp = subprocess.run([sys.executable, "-m", "clusterfw.cli", "lab", "exec", "--dir", str(cluster.dir), "n1",
                         "--", "clusterfw", "events", "--json"], capture_output=True, text=True, timeout=60,
                        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert cp.returncode == 0, cp.stderr
    shown = [json.loads(line) for line in cp.stdout.splitlines()]
    assert any(r["node"] == victim and r["event"] == "forced-leave" for r in shown)
    cluster.restart(victim)
    wait_healthy(cluster, 60)
    assert wait_for(lambda: [r for r in events(cluster, "n1")[before:]
                             if r["node"] == victim and r["event"] == "join"], 10)


def test_stopping_clusterfw_is_still_a_graceful_leave(cluster: Lab) -> None:
    st = wait_healthy(cluster)
    node = next(n for n in NODES if n != st["master"] and n != "n1")
    before = len(events(cluster, "n1"))
    assert run(cluster, node, "systemctl", "stop", "clusterfw", timeout=120).returncode == 0
    st2 = wait_for(lambda: (s := status(cluster, "n1")) and states(s)[node] == "inactive" and s, 30)
    assert st2, states(status(cluster, "n1"))
    assert next(n for n in st2["nodes"] if n["name"] == node)["forced"] is False
    assert unit_of(cluster, node, "clusterfw", "ExecMainStatus") == "0"
    assert unit_of(cluster, node, "clusterfw-events", "ActiveState") == "inactive"
    assert unit_of(cluster, node, "clusterfw-events", "ExecMainStatus") == "0"
    new = events(cluster, "n1")[before:]
    assert [(r["node"], r["event"]) for r in new] == [(node, "leave")]
    mine = events(cluster, node)
    assert (mine[-1]["node"], mine[-1]["event"]) == (node, "leave")  # its own leave, recorded on the way out
    # starting the daemon starts the event manager (clusterfw.service.wants)
    assert run(cluster, node, "systemctl", "start", "clusterfw", timeout=120).returncode == 0
    wait_healthy(cluster, 30)
    assert unit_of(cluster, node, "clusterfw-events", "ActiveState") == "active"


def test_a_killed_daemon_comes_back_with_its_event_manager(cluster: Lab) -> None:
    st = wait_healthy(cluster)
    node = next(n for n in NODES if n != st["master"] and n != "n1")
    inc = next(n["incarnation"] for n in st["nodes"] if n["name"] == node)
    em_pid = unit_of(cluster, node, "clusterfw-events", "MainPID")
    assert run(cluster, node, "systemctl", "kill", "--signal=SIGKILL", "clusterfw").returncode == 0
    st2 = wait_for(lambda: (s := healthy(cluster)) and
                   next(n["incarnation"] for n in s["nodes"] if n["name"] == node) != inc and s, 60, 0.3)
    assert st2, f"{node} did not rejoin: {states(status(cluster, 'n1'))}"
    assert unit_of(cluster, node, "clusterfw-events", "ActiveState") == "active"
    assert unit_of(cluster, node, "clusterfw-events", "MainPID") != em_pid  # restarted with the daemon
    own = events(cluster, node)
    assert (own[-1]["node"], own[-1]["event"]) == (node, "join")


def test_a_killed_event_manager_is_restarted_and_reattaches(cluster: Lab) -> None:
    st = wait_healthy(cluster)
    node = next(n for n in NODES if n != st["master"] and n != "n1")
    pid = unit_of(cluster, node, "clusterfw-events", "MainPID")
    daemon_pid = unit_of(cluster, node, "clusterfw", "MainPID")
    assert run(cluster, node, "systemctl", "kill", "--signal=SIGKILL", "clusterfw-events").returncode == 0
    assert wait_for(lambda: unit_of(cluster, node, "clusterfw-events", "MainPID") not in ("0", pid)
                    and unit_of(cluster, node, "clusterfw-events", "ActiveState") == "active", 20)
    journal = run(cluster, node, "journalctl", "-u", "clusterfw-events", "--no-pager", "-o", "cat").stdout
    assert "re-attached" in journal
    # the node stayed joined, with the same daemon, and its level 40 still acks: a crash elsewhere
    assert unit_of(cluster, node, "clusterfw", "MainPID") == daemon_pid
    wait_healthy(cluster, 10)
