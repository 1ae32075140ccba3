"""The state-transition examples of the registration & launch service (its
Tables 2 and 3) played on a real lab: three nspawn nodes with their own
systemd, the systemd launcher, nodes booted, stopped gracefully and crashed
for real, times scaled down (maturity_time 5 s for the table's 5 minutes).

N0, N1, N2 of the tables are n1, n2, n3.  The service is an installed unit
(``Type=oneshot``, ``RemainAfterExit=yes``) whose start and stop each take
1.5 s, so that ``starting`` and ``stopping`` last long enough to be seen.
A watcher on one node polls ``clusterfw service list --json`` and keeps
every distinct row (summary state, summary flags, per-node state and
flags); each table's rows must appear in that order.  A row the tables show
between a stop completing and the next start (de-registered with T) lasts
no time at all here: both happen in one registry round, so it is never on
the disk to be seen, and the tables' rows for it are left out.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from clusterfw.lab.lab import Lab
from test_lab_cluster import running_cluster, wait_for

pytestmark = pytest.mark.lab
UNIT = "tables-example.service"
UNIT_TEXT = """\
[Unit]
Description=the tables' example service: start and stop take 1.5 s
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sleep 1.5
ExecStop=/bin/sleep 1.5
"""
Row = tuple[str, str, tuple[tuple[str, str, str], ...]]


@pytest.fixture(scope="module")
def idle_lab(lun_root, lab_need):
    """Three booted nodes whose clusterfw.service is not started yet."""
    lab_need("nspawn")
    with running_cluster(lun_root, "tables-lab", autostart=False) as lab:
        yield lab


def boot(lab: Lab, node: str) -> None:
    """The node 'boots': the example unit installed, clusterfw started."""
    cp = lab.exec(node, ["sh", "-c", f"cat > /run/systemd/system/{UNIT} && systemctl daemon-reload"],
                  input=UNIT_TEXT, timeout=30)
    assert cp.returncode == 0, cp.stderr
    cp = lab.exec(node, ["systemctl", "start", "clusterfw"], timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert wait_for(lambda: joined(lab, node), 30), f"{node} did not join"


def joined(lab: Lab, node: str) -> bool:
    cp = lab.exec(node, ["clusterfw", "status", "--json"], timeout=10)
    if cp.returncode != 0:
        return False
    me = next((n for n in json.loads(cp.stdout)["nodes"] if n["name"] == node), None)
    return bool(me) and me["state"] == "joined" and me["levels"].get("services") == "joined"


def leave(lab: Lab, node: str) -> None:
    cp = lab.exec(node, ["clusterfw", "leave"], timeout=90)
    assert cp.returncode == 0, cp.stderr


class Rows:
    """Every distinct row of ``service`` seen from the observer node(s)."""

    def __init__(self, lab: Lab, service: str) -> None:
        self.lab, self.service = lab, service
        self.observers = ["n3"]
        self.seen: list[Row] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for via in list(self.observers):
                cp = self.lab.exec(via, ["clusterfw", "service", "list", "--json"], timeout=10)
                if cp.returncode != 0:
                    continue
                s = {x["name"]: x for x in json.loads(cp.stdout)["services"]}.get(self.service)
                if s is None:
                    continue
                row = (s["state"], "".join(s["flags"]),
                       tuple((n, v["state"], "".join(v["flags"])) for n, v in sorted(s["nodes"].items())))
                if not self.seen or self.seen[-1] != row:
                    self.seen.append(row)
                break
            time.sleep(0.05)

    def close(self) -> list[Row]:
        self._stop.set()
        self._thread.join(15)
        return self.seen


def matches(want: tuple, row: Row) -> bool:
    """A row as the table gives it: a node's state may be a set of
    alternatives where the table's order of two independent steps (a
    notify, the end of a leave) is not fixed."""
    state, flags, per_node = want
    return (state, flags) == row[:2] and len(per_node) == len(row[2]) and all(
        n == m and fl == mfl and (st == mst if isinstance(st, str) else mst in st)
        for (n, st, fl), (m, mst, mfl) in zip(per_node, row[2]))


def in_order(expected: list[tuple], seen: list[Row]) -> None:
    """Each expected row appears in ``seen`` at or after the row matched
    before it."""
    at = 0
    for want in expected:
        while at < len(seen) and not matches(want, seen[at]):
            at += 1
        assert at < len(seen), f"row {want} not seen after the ones before it; seen:\n" + \
            "\n".join(map(str, seen))


def nodes(*states: tuple[Any, str]) -> tuple[tuple[str, Any, str], ...]:
    return tuple((f"n{i + 1}", st, fl) for i, (st, fl) in enumerate(states))


def apply(lab: Lab, via: str, name: str, body: str) -> None:
    path = lab.dir / "shared" / f"{name}.toml"
    path.write_text(f"[services.{name}]\nunit = \"{UNIT}\"\n{body}")
    cp = lab.exec(via, ["clusterfw", "service", "apply", f"/lab/shared/{name}.toml"], timeout=60)
    assert cp.returncode == 0, cp.stderr


def test_table_2_maturity_graceful_leaves_and_transfer(idle_lab: Lab) -> None:
    lab = idle_lab
    boot(lab, "n3")  # t1: N2 boots (not allowable)
    apply(lab, "n3", "t2svc", 'allowable_nodes = ["n1", "n2"]\nmaturity_count = 2\nmaturity_time = "8s"\n')
    rows = Rows(lab, "t2svc")
    try:
        time.sleep(0.5)
        boot(lab, "n1")  # t2: N0 boots: M (1 of 2 allowable up, 5 s not elapsed)
        assert wait_for(lambda: lab_state(lab, "t2svc") == "registered", 20)  # t3, t4
        boot(lab, "n2")  # t5: N1 boots: no change
        rows.observers = ["n2"]
        leave(lab, "n3")  # t6: N2 leaves gracefully: no influence
        boot(lab, "n3")
        rows.observers = ["n3"]
        leave(lab, "n1")  # t7..t11: N0 leaves: stopping T, then starting T on N1, registered
        assert wait_for(lambda: node_state(lab, "t2svc", "n2", "n3") == "registered", 20)
        leave(lab, "n2")  # t12, t13: N1 leaves: stopping T, then de-registered, nowhere to go
        time.sleep(1)
    finally:
        seen = rows.close()
    cp = lab.exec("n3", ["clusterfw", "service", "remove", "t2svc"], timeout=60)
    assert cp.returncode == 0, cp.stderr
    I, none, gone = "I", "", ("up", "down")  # gone: leaving, or left already
    in_order([
        ("de-registered", "", nodes(("down", I), ("down", I), ("up", none))),                    # t1
        ("de-registered", "M", nodes(("up", I), ("down", I), ("up", none))),                     # t2
        ("starting", "", nodes(("starting", I), ("down", I), ("up", none))),                     # t3
        ("registered", "", nodes(("registered", I), ("down", I), ("up", none))),                 # t4
        ("registered", "", nodes(("registered", I), ("up", I), ("up", none))),                   # t5
        ("registered", "", nodes(("registered", I), ("up", I), ("down", none))),                 # t6
        ("registered", "", nodes(("registered", I), ("up", I), ("up", none))),                   # N2 back
        ("stopping", "T", nodes(("stopping", I), ("up", I), ("up", none))),                      # t7
        ("starting", "T", nodes((gone, I), ("starting", I), ("up", none))),                      # t9
        ("registered", "", nodes((gone, I), ("registered", I), ("up", none))),                   # t10
        ("registered", "", nodes(("down", I), ("registered", I), ("up", none))),                 # t11
        ("stopping", "T", nodes(("down", I), ("stopping", I), ("up", none))),                    # t12
        ("de-registered", "", nodes(("down", I), (gone, I), ("up", none))),                      # t13
    ], seen)


def lab_state(lab: Lab, service: str, via: str = "n1") -> str:
    cp = lab.exec(via, ["clusterfw", "service", "list", "--json"], timeout=10)
    if cp.returncode != 0:
        return ""
    return next((s["state"] for s in json.loads(cp.stdout)["services"] if s["name"] == service), "")


def test_table_3_preferred_node_notify_and_free_transfer_back(idle_lab: Lab) -> None:
    lab = idle_lab
    for node in ("n1", "n2", "n3"):  # the table starts with every node down
        cp = lab.exec(node, ["systemctl", "stop", "clusterfw"], timeout=90)
        assert cp.returncode == 0, cp.stderr
    boot(lab, "n3")
    apply(lab, "n3", "t3svc", 'preferences = ["n1"]\nmaturity_count = 2\ntransfer_cost = "free"\n'
                              'failback_delay = "0s"\nnotify_command = ["true"]\n')
    leave(lab, "n3")
    boot(lab, "n1")  # t1, t2: N0 boots: it is the primary -> starting at once, registered
    rows = Rows(lab, "t3svc")
    rows.observers = ["n1"]
    try:
        assert wait_for(lambda: lab_state(lab, "t3svc") == "registered", 20)
        boot(lab, "n2")  # t3: N1 boots and is notified
        rows.observers = ["n2"]
        assert wait_for(lambda: node_state(lab, "t3svc", "n2", "n2") == "notified", 20)
        lab.crash("n1")  # t4..t7: N0 is forced out: starting on N1, registered
        assert wait_for(lambda: lab_state(lab, "t3svc", "n2") == "registered"
                        and node_state(lab, "t3svc", "n2", "n2") == "registered", 30)
        boot(lab, "n3")  # t8: N2 boots, notified
        assert wait_for(lambda: node_state(lab, "t3svc", "n3", "n2") == "notified", 20)
        lab.restart("n1")  # t9..t13: N0 boots: notified; transfer: stopping T on N1, starting T on N0
        boot(lab, "n1")
        assert wait_for(lambda: node_state(lab, "t3svc", "n1", "n2") == "registered", 30)
        time.sleep(0.5)
    finally:
        seen = rows.close()
    I, N, told = "I", "N", ("up", "notified")  # told: notified, or about to be
    in_order([
        ("starting", N, nodes(("starting", I), ("down", I), ("down", I))),                       # t1
        ("registered", N, nodes(("registered", I), ("down", I), ("down", I))),                   # t2
        ("registered", N, nodes(("registered", I), ("notified", I), ("down", I))),               # t3
        ("registered", N, nodes(("down", I), ("registered", I), ("down", I))),                   # t4-t7
        ("registered", N, nodes(("down", I), ("registered", I), ("notified", I))),               # t8
        ("stopping", "TN", nodes((told, I), ("stopping", I), ("notified", I))),         # t10
        ("starting", "TN", nodes(("starting", I), ("up", I), (told, I))),                        # t12
        ("registered", N, nodes(("registered", I), ("notified", I), ("notified", I))),           # t13
    ], seen)


def node_state(lab: Lab, service: str, node: str, via: str) -> str:
    cp = lab.exec(via, ["clusterfw", "service", "list", "--json"], timeout=10)
    if cp.returncode != 0:
        return ""
    s: dict[str, Any] = next((x for x in json.loads(cp.stdout)["services"] if x["name"] == service), {})
    return str(s.get("nodes", {}).get(node, {}).get("state", ""))
