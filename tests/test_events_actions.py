"""Events and their actions with real processes: three node daemons on a
real loop device (lab timing, the process launcher), each with its own
event manager (``clusterfw event-manager``, the daemons started with
``--wait-for-subsystem events``, as in tests/test_events.py).  A service
preferring n2 defines membership events; its actions append what they were
given to a file, with the node they ran on.

* SIGKILL of n3's daemon: only n2's event manager runs the action (the
  service is registered on n2 alone, so only n2's event group is enabled),
  with the right OUT values (node, transition, epoch, incarnation), in the
  argv and in ``CLUSTERFW_OUT_*``; n1 records the forced leave but runs
  nothing.  n3's return is a join, and runs the action on n2 again.
* An event whose IN parameters do not match (another node) never runs; a
  failing action's exit status is recorded; ``clusterfw events`` shows the
  occurrences, ``--json`` with their OUT parameters.
* ``service move`` to n1: the group is disabled on n2 and enabled on n1;
  the next crash runs the action on n1 only.

Only processes these tests started are signalled, by PID; the loop device is
detached even when a test fails."""
from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_daemon_loop import HAVE_LOOP, Cluster, cli, formatted_cluster, wait_for
from test_events import read_log, start_manager

pytestmark = [pytest.mark.lab, pytest.mark.skipif(not HAVE_LOOP, reason="needs root, losetup and loop devices")]

TAG = secrets.token_hex(3)
WEB = f"evweb{TAG}"
NODES = ("n1", "n2", "n3")
APPEND = ("import os, sys\n"
          "with open(sys.argv[1], 'a') as f:\n"
          "    f.write(' '.join([os.environ['CLUSTERFW_NODE'], *sys.argv[2:], os.environ['CLUSTERFW_EVENT'],\n"
          "                      os.environ['CLUSTERFW_OUT_EPOCH'], os.environ['CLUSTERFW_OUT_INCARNATION']]) + '\\n')\n")


class EventCluster:
    """The daemons (``Cluster``) and one event manager per node."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.managers: dict[str, subprocess.Popen] = {}

    def log(self, node: str) -> Path:
        return self.c.work / f"events-{node}.jsonl"

    def out(self, node: str) -> Path:
        return self.c.work / f"em-{node}.out"

    def start_daemon(self, node: str) -> None:
        self.c.start(node, "--launcher", "process", "--wait-for-subsystem", "events", "--wait-timeout", "60")

    def start_manager(self, node: str) -> None:
        self.managers[node] = start_manager(self.c.socket(node), self.log(node), out=self.out(node))

    def records(self, node: str) -> list[dict[str, Any]]:
        return read_log(self.log(node)) if self.log(node).exists() else []

    def occurrences(self, node: str) -> list[dict[str, Any]]:
        return [r for r in self.records(node) if r.get("type") == "occurrence"]

    def membership(self, node: str) -> list[tuple[str, str]]:
        return [(r["node"], r["event"]) for r in self.records(node) if "type" not in r]

    def all_joined(self) -> bool:
        return all(self.c.joined_view(n) for n in NODES)

    def stop(self) -> None:
        for proc in self.managers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.c.stop_all()


@pytest.fixture(scope="module")
def ec(lun_root) -> Iterator[EventCluster]:
    with formatted_cluster(lun_root, "evactions", "evact") as c:
        e = EventCluster(c)
        try:
            for node in NODES:
                e.start_daemon(node)
            for node in NODES:
                wait_for(f"{node}'s socket", lambda n=node: (s := c.status(n)) and s["phase"] ==
                         "waiting-for-subsystems", 15)
                e.start_manager(node)
            wait_for("all joined", e.all_joined, 30, 0.1)
            yield e
        finally:
            e.stop()


def lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def registered_on(c: Cluster, owners: list[str]) -> bool:
    out = cli("service", "list", "--json", "--socket", c.socket("n1"))
    if out.returncode != 0:
        return False
    s = next((s for s in json.loads(out.stdout)["services"] if s["name"] == WEB), None)
    return bool(s) and s["state"] == "registered" and s["owners"] == owners


def enabled_on(e: EventCluster, node: str, times: int = 1) -> bool:
    return e.out(node).read_text().count(f"event groups enabled on this node (the service is registered here): "
                                         f"{WEB}") >= times


def incarnation(c: Cluster, node: str) -> str:
    status = c.status("n1")
    assert status is not None
    return str(c.node(status, node)["incarnation"])


def crash_and_return(e: EventCluster, victim: str) -> str:
    """SIGKILL of ``victim``'s daemon, wait for its forced leave, restart it; returns its old incarnation."""
    old = incarnation(e.c, victim)
    e.c.signal(victim, signal.SIGKILL)
    e.c.wait_exit(victim, 10)
    wait_for(f"{victim} forced out", lambda: (s := e.c.status("n1")) and e.c.node(s, victim)["state"] == "inactive",
             15)
    e.start_daemon(victim)  # its event manager registers again with the new daemon
    wait_for("all joined again", e.all_joined, 30, 0.1)
    return old


def apply_web(c: Cluster, tmp_path: Path, peer: str = "", more: str = "") -> tuple[Path, str]:
    """Apply the service with its event ``peer`` (``peer``: more IN parameters) and ``more``; returns the
    file the actions append to and what ``service apply`` printed."""
    seen = tmp_path / "actions.txt"
    defs = tmp_path / "web.toml"
    defs.write_text(f"""\
[services.{WEB}]
allowable_nodes = ["n1", "n2", "n3"]
preferences = ["n2"]
start_command = ["sleep", "100000"]

[services.{WEB}.events.peer]
watch = "membership"
{peer}
action = ["{sys.executable}", "-c", {json.dumps(APPEND)}, "{seen}", "${{node}}", "${{transition}}"]
{more.replace("SEEN", str(seen))}""")
    applied = cli("service", "apply", str(defs), "--socket", c.socket("n1"))
    assert applied.returncode == 0, applied.stderr + applied.stdout
    return seen, applied.stdout


def test_only_the_owners_event_manager_runs_the_action_with_the_out_values(ec: EventCluster, tmp_path) -> None:
    c = ec.c
    seen, _ = apply_web(c, tmp_path, more=f"""
[services.{WEB}.events.n1-only]
watch = "membership"
node = "n1"
action = ["{sys.executable}", "-c", {json.dumps(APPEND)}, "SEEN", "n1-only", "${{node}}"]

[services.{WEB}.events.fails]
watch = "membership"
transition = "forced-leave"
action = ["{sys.executable}", "-c", "import sys; sys.exit(3)"]
""")
    wait_for(f"{WEB} on n2", lambda: registered_on(c, ["n2"]), 15)
    wait_for("the group enabled on n2", lambda: enabled_on(ec, "n2"), 10)
    assert not enabled_on(ec, "n1") and not enabled_on(ec, "n3")
    assert lines(seen) == []  # the joins before the service existed ran nothing

    old = crash_and_return(ec, "n3")
    new = incarnation(c, "n3")
    assert new != old
    wait_for("the join's action", lambda: len(lines(seen)) >= 2, 10)
    forced = next(r for r in ec.records("n2") if "type" not in r and r["node"] == "n3"
                  and r["event"] == "forced-leave")
    joined = [r for r in ec.records("n2") if "type" not in r and r["node"] == "n3" and r["event"] == "join"][-1]
    assert lines(seen) == [
        ["n2", "n3", "forced-leave", f"{WEB}.peer", str(forced["epoch"]), old],
        ["n2", "n3", "join", f"{WEB}.peer", str(joined["epoch"]), new],
    ]

    # the occurrences in n2's log: OUT parameters, the argv as run, the exit status
    wait_for("the failing action recorded", lambda: any(r["event"] == f"{WEB}.fails" for r in ec.occurrences("n2")), 10)
    by_event = {}
    for r in ec.occurrences("n2"):
        by_event.setdefault(r["event"], []).append(r)
    down, up = by_event[f"{WEB}.peer"]
    assert down["out"] == {"node": "n3", "transition": "forced-leave", "epoch": str(forced["epoch"]),
                           "incarnation": old, "time": forced["time"]}
    assert (down["observer"], down["node"], down["service"], down["watcher"]) == ("n2", "n3", WEB, "membership")
    assert down["action"][-2:] == ["n3", "forced-leave"] and down["exit"] == 0 and down["status"] == "exit 0"
    assert up["out"]["transition"] == "join" and up["out"]["incarnation"] == new
    [fails] = by_event[f"{WEB}.fails"]
    assert fails["exit"] == 3 and fails["status"] == "exit 3" and fails["out"]["node"] == "n3"
    assert f"{WEB}.n1-only" not in by_event  # its IN parameters name another node

    # n1 and n3 were notified too, and recorded the membership events, but ran nothing
    assert ("n3", "forced-leave") in ec.membership("n1")
    assert ec.occurrences("n1") == [] and ec.occurrences("n3") == []

    # clusterfw events: the table shows the occurrences with their outcome, --json the records
    table = cli("events", "--log", str(ec.log("n2")))
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()]
    assert rows[0][-1] == "ACTION"
    assert [r[3:] for r in rows if r[3] == f"{WEB}.fails"] == [[f"{WEB}.fails", str(forced["epoch"]), "n2", "exit", "3"]]
    as_json = [json.loads(x) for x in cli("events", "--json", "--log", str(ec.log("n2"))).stdout.splitlines()]
    assert [r for r in as_json if r.get("type") == "occurrence"] == ec.occurrences("n2")


def test_a_move_disables_the_group_on_the_old_owner_and_enables_it_on_the_new(ec: EventCluster, tmp_path) -> None:
    c = ec.c
    seen, applied = apply_web(c, tmp_path, peer='transition = "forced-leave"')
    assert "definition changed: events" in applied and "restarts" not in applied
    assert registered_on(c, ["n2"])  # a change of events never restarts the service
    wait_for("the changed group on n2", lambda: "event groups changed" in ec.out("n2").read_text(), 10)

    moved = cli("service", "move", WEB, "--to", "n1", "--socket", c.socket("n3"))
    assert moved.returncode == 0, moved.stderr
    wait_for(f"{WEB} on n1", lambda: registered_on(c, ["n1"]), 15)
    wait_for("the group enabled on n1", lambda: enabled_on(ec, "n1"), 10)
    wait_for("the group disabled on n2", lambda: f"event groups disabled on this node (the service is no longer "
             f"registered here): {WEB}" in ec.out("n2").read_text(), 10)

    old = crash_and_return(ec, "n3")
    wait_for("the action", lambda: lines(seen), 10)
    forced = [r for r in ec.records("n1") if "type" not in r and r["node"] == "n3"
              and r["event"] == "forced-leave"][-1]
    assert lines(seen) == [["n1", "n3", "forced-leave", f"{WEB}.peer", str(forced["epoch"]), old]]
    assert not any(r["out"]["epoch"] == str(forced["epoch"]) for r in ec.occurrences("n2"))
