"""The unit watcher against a real systemd: a one-node nspawn lab (its own
systemd as PID 1 running clusterfw.service with the systemd launcher, and
clusterfw-events.service, hardened as shipped).  A service defines unit
events on its own transient unit (``clusterfw-svc-NAME.service``); their
actions append what they were given to a file in /var/lib/clusterfw (one of
the few places the event manager's sandbox may write).

SIGKILL of the service's process (``systemctl kill``): the unit enters
``failed`` (result ``signal``) and the ``failed`` event's action runs with
those OUT values, and so does the ``any`` event's; the services subsystem
restarts the service in place.  ``clusterfw events --json`` on the node
shows the occurrences with exit 0.  Removing the
service disables its group: the watcher lets go of the unit.  Run under
``flock /tmp/clusterfw-nspawn.lock`` on a shared machine.
"""
from __future__ import annotations

import json
import time

import pytest
from lunfs import lun_dir

from clusterfw.lab.lab import Lab
from test_lab_cluster import wait_for

pytestmark = pytest.mark.lab
SVC = "unitev"
UNIT = f"clusterfw-svc-{SVC}.service"
PYTHON = "/opt/clusterfw/bin/python3"
SEEN = "/var/lib/clusterfw/unit-events.txt"
APPEND = ("import os, sys\n"
          "with open(sys.argv[1], 'a') as f:\n"
          "    f.write(' '.join([os.environ['CLUSTERFW_EVENT'], *sys.argv[2:]]) + '\\n')\n")


@pytest.fixture(scope="module")
def lab(lun_root, lab_need):
    lab_need("nspawn")
    lab = Lab(lun_dir(lun_root, "events-lab"))
    try:
        lab.up(1, "nspawn", disk_size=64 << 20)
        assert wait_for(lambda: joined(lab), 90), lab.exec("n1", ["clusterfw", "status"], timeout=30).stdout
        yield lab
    finally:
        lab.down(timeout=10, purge=True)
        assert not lab.leftovers(), lab.leftovers()


def joined(lab: Lab) -> bool:
    cp = lab.exec("n1", ["clusterfw", "status", "--json"], timeout=15)
    return cp.returncode == 0 and all(n["state"] == "joined" for n in json.loads(cp.stdout)["nodes"])


def run(lab: Lab, *argv: str, ok: bool = True) -> str:
    cp = lab.exec("n1", list(argv), timeout=60)
    assert cp.returncode == 0 or not ok, f"{' '.join(argv)}: {cp.stderr}{cp.stdout}"
    return cp.stdout


def seen(lab: Lab) -> list[list[str]]:
    cp = lab.exec("n1", ["cat", SEEN], timeout=15)
    return [line.split() for line in cp.stdout.splitlines()] if cp.returncode == 0 else []


def events_log(lab: Lab) -> str:
    return run(lab, "journalctl", "-u", "clusterfw-events", "--no-pager", "-o", "cat")


def registered(lab: Lab) -> bool:
    services = json.loads(run(lab, "clusterfw", "service", "list", "--json"))["services"]
    return any(s["name"] == SVC and s["state"] == "registered" and s["owners"] == ["n1"] for s in services)


def test_a_unit_entering_failed_runs_the_action_with_the_units_out_values(lab: Lab) -> None:
    (lab.dir / "shared" / "unitev.toml").write_text(f"""\
[services.{SVC}]
start_command = ["sleep", "100000"]
failure_threshold = 0                  # always restart in place

[services.{SVC}.events.failed]
watch = "unit"
unit = "{UNIT}"
state = "failed"
action = ["{PYTHON}", "-c", {json.dumps(APPEND)}, "{SEEN}", "${{unit}}", "${{active_state}}", "${{sub_state}}",
          "${{result}}", "${{in.state}}"]

[services.{SVC}.events.changed]
watch = "unit"
unit = "{UNIT}"
action = ["{PYTHON}", "-c", {json.dumps(APPEND)}, "{SEEN}", "${{active_state}}"]
""")
    run(lab, "clusterfw", "service", "apply", "/lab/shared/unitev.toml")
    assert wait_for(lambda: registered(lab), 30), run(lab, "clusterfw", "service", "list")
    assert wait_for(lambda: f"watching unit {UNIT} (active)" in events_log(lab), 15), events_log(lab)
    assert seen(lab) == []  # the state a unit has when it is first watched is no occurrence

    run(lab, "systemctl", "kill", "--signal=SIGKILL", UNIT)
    failed_line = [f"{SVC}.failed", UNIT, "failed", "failed", "signal", "failed"]
    assert wait_for(lambda: failed_line in seen(lab), 30), (seen(lab), events_log(lab))
    assert wait_for(lambda: [f"{SVC}.changed", "failed"] in seen(lab), 10), seen(lab)
    # restarted in place; while it is starting its group is disabled, so what the unit does then is not
    # an occurrence of its events (docs/events.md, "Event groups")
    assert wait_for(lambda: registered(lab), 30)

    records = [json.loads(line) for line in run(lab, "clusterfw", "events", "--json").splitlines()]
    occurrences = [r for r in records if r.get("type") == "occurrence"]
    failed = next(r for r in occurrences if r["event"] == f"{SVC}.failed")
    assert failed["watcher"] == "unit" and failed["exit"] == 0 and failed["observer"] == "n1"
    assert {k: failed["out"][k] for k in ("unit", "active_state", "sub_state", "result")} == {
        "unit": UNIT, "active_state": "failed", "sub_state": "failed", "result": "signal"}
    assert "epoch" not in failed and failed["node"] == "n1"
    table = run(lab, "clusterfw", "events")
    assert f"{SVC}.failed" in table and "exit 0" in table

    # removed: de-registered, the group disabled, the unit no longer watched
    run(lab, "clusterfw", "service", "remove", SVC)
    assert wait_for(lambda: f"event groups disabled on this node (the service is no longer registered here): {SVC}"
                    in events_log(lab), 30), events_log(lab)
    before = seen(lab)
    run(lab, "systemd-run", f"--unit={UNIT}", "--service-type=exec", "sleep", "1000")  # same name, not ours
    run(lab, "systemctl", "kill", "--signal=SIGKILL", UNIT, ok=False)
    time.sleep(2)
    assert seen(lab) == before
    run(lab, "systemctl", "reset-failed", UNIT, ok=False)
