"""The systemd launcher against a real systemd: a one-node nspawn lab (its
own systemd as PID 1, the project installed from this tree) runs
``systemd_launcher_node.py CHECK`` inside the node, which drives the launcher
and prints what it saw as JSON; the assertions are here.

Checks: a transient start of a sleep (active, the unit's properties, stop);
a command that exits 1 at once (start failed) and one that exits later (the
failure callback), reset_failed; kill_all of the slice -- every process
gone in under 100 ms -- through cgroup.kill, and through KillUnit when
/sys/fs/cgroup is read-only (the launcher run in a unit with
ProtectControlGroups=yes, as clusterfw.service has); an installed unit in
/run/systemd/system (a failed start, its start limit reset, kill_all,
reset_failed, stop); notify/recovery/stop_command; bind_to.  Run them under
``flock /tmp/clusterfw-nspawn.lock`` on a shared machine.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from lunfs import lun_dir

from clusterfw.lab import Lab

pytestmark = pytest.mark.lab
HERE = Path(__file__).resolve().parent
NODE_SCRIPT = "systemd_launcher_node.py"
PYTHON = "/opt/clusterfw/bin/python3"


@pytest.fixture(scope="module")
def node(lun_root, lab_need):
    lab_need("nspawn")
    lab = Lab(lun_dir(lun_root, "launcher-lab"))
    try:
        lab.up(1, "nspawn", disk_size=64 << 20, autostart=False, prepare_disk=False)
        shutil.copy(HERE / NODE_SCRIPT, lab.dir / "shared" / NODE_SCRIPT)
        yield lab
    finally:
        lab.down(timeout=10, purge=True)
        assert not lab.leftovers(), lab.leftovers()


def check(lab: Lab, name: str, *prefix: str) -> dict:
    cp = lab.exec("n1", [*prefix, PYTHON, f"/lab/shared/{NODE_SCRIPT}", name], timeout=180)
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    out = json.loads(cp.stdout.strip().splitlines()[-1])
    assert "error" not in out, out["error"]
    assert out["leftover_units"] == [], out
    return out


def test_a_transient_service_starts_runs_and_stops(node):
    out = check(node, "transient")
    assert out["start"]["ok"] and out["start"]["detail"] == "unit clusterfw-svc-sleeper.service is active (running)"
    assert out["active"] and out["pid_alive"]
    print(f"\nsystemd launcher: start -> active {out['start_to_active_s'] * 1000:.0f} ms "
          f"(outcome after {out['start']['elapsed_s'] * 1000:.0f} ms, settle 50 ms)")
    assert out["start_to_active_s"] < 2
    props = out["props"]
    assert props["Type"] == "exec" and props["Slice"] == "clusterfw-services.slice"
    assert props["KillMode"] == "control-group" and props["CollectMode"] == "inactive-or-failed"
    assert props["Environment"] == "CLUSTERFW_NODE=n1 CLUSTERFW_SERVICE=sleeper"
    assert "argv[]=sleep 300" in props["ExecStart"] and "path=/usr/bin/sleep" in props["ExecStart"]
    assert props["BindsTo"] == ""  # clusterfw.service is not active in this node
    assert out["again"] == {**out["again"], "ok": True,
                            "detail": "unit clusterfw-svc-sleeper.service is already active"}
    assert out["stop"]["ok"] and out["stop"]["detail"].startswith("stopped unit clusterfw-svc-sleeper.service")
    assert not out["active_after_stop"] and not out["pid_alive_after_stop"]
    assert out["stop_again"]["ok"] and out["stop_again"]["detail"] == "not running"
    assert out["missing"] == {**out["missing"], "ok": False,
                              "detail": "cannot run 'no-such-command-here': not found in PATH"}
    assert not out["missing_abs"]["ok"]
    assert out["missing_abs"]["detail"] == ("the start job failed: unit clusterfw-svc-nope.service entered "
                                            "failed (exit-code, exited 203: could not execute the command)")
    assert out["failures"] == []


def test_a_command_that_exits_1_fails_its_start_or_is_reported_as_a_failure(node):
    out = check(node, "failure")
    assert not out["exit_at_once"]["ok"]
    assert "unit clusterfw-svc-exit1.service entered failed (exit-code, exited 1)" in out["exit_at_once"]["detail"]
    assert out["exit_later"]["ok"]
    assert out["failure"] == ["late", "unit clusterfw-svc-late.service entered failed (exit-code, exited 1)"]
    assert out["failed"] == out["failure"][1] and not out["active"]
    assert out["failed_after_reset"] is None
    assert out["restart"]["ok"] and out["stop"]["ok"]
    assert out["killed_by_signal"]["ok"]
    assert out["failure2"] == ["sig", "unit clusterfw-svc-sig.service entered failed (signal, killed by SIGKILL)"]
    assert len(out["failures"]) == 2  # the stops were not failures


def _assert_kill_all(out: dict, mechanism: str) -> None:
    assert out["mechanism"] == mechanism
    assert all(s["ok"] for s in out["starts"]), out["starts"]
    assert out["pids_before"] == 6
    assert out["killed"] == ["k1", "k1 (notify)", "k2", "k3"]
    assert out["survivors"] == [] and out["all_gone_s"] is not None
    total = out["kill_all_call_s"] + out["all_gone_s"]
    print(f"\nsystemd launcher kill_all via {mechanism}: returned in {out['kill_all_call_s'] * 1000:.2f} ms, "
          f"all 6 processes of the slice dead {total * 1000:.2f} ms after the call")
    assert out["kill_all_call_s"] < 0.1 and total < 0.1
    assert out["notify"] == {"ok": False, "detail": "killed by SIGKILL (kill_all)"}
    assert out["active"] == [False, False, False]
    assert out["failures"] == []  # the fence is not a failure
    assert out["after"]["ok"] and out["after_stop"]["ok"]  # and the launcher works on


def test_kill_all_kills_the_whole_slice_in_under_100_ms_through_cgroup_kill(node):
    _assert_kill_all(check(node, "kill_all"), "cgroup.kill")


def test_kill_all_falls_back_to_killunit_when_the_cgroup_tree_is_read_only(node):
    """As under clusterfw.service (ProtectControlGroups=yes)."""
    out = check(node, "kill_all", "systemd-run", "--quiet", "--wait", "--pipe", "--collect",
                "-p", "ProtectControlGroups=yes")
    _assert_kill_all(out, "KillUnit")


def test_an_installed_unit_start_limit_kill_all_reset_failed_and_stop(node):
    out = check(node, "installed")
    assert out["first"] == {**out["first"], "ok": False,
                            "detail": "unit cfwtest-flaky.service entered failed (exit-code, exited 7)"}
    assert out["state_after_first"] == {"ActiveState": "failed", "Result": "exit-code"}
    assert out["plain_start_rc"] != 0  # StartLimitBurst=1: a plain start is refused now
    assert out["second"]["ok"], out["second"]  # the launcher reset it first
    assert out["active"] and out["main_pid_alive"]
    assert out["killed"] == ["flaky"] and out["kill_all_call_s"] < 0.1
    assert out["gone_s"] is not None and out["kill_all_call_s"] + out["gone_s"] < 0.1
    assert out["state_after_kill"] == {"ActiveState": "failed", "Result": "signal"}
    assert out["state_after_reset"] == {"ActiveState": "inactive", "Result": "success"}
    assert out["third"]["ok"] and out["stop"]["ok"]
    assert out["state_after_stop"] == {"ActiveState": "inactive"}
    assert out["failures"] == []


def test_notify_recovery_and_stop_command(node):
    out = check(node, "commands")
    assert out["notify_ok"] == {**out["notify_ok"], "ok": True, "detail": "exited 0"}
    assert out["recovery_3"] == {**out["recovery_3"], "ok": False, "detail": "exited 3"}
    assert out["env"]["ok"], out["env"]  # CLUSTERFW_* passed, $ not expanded by systemd, no PYTHONPATH
    assert out["timeout"] == {**out["timeout"], "ok": False, "detail": "timed out after 0.5 s (killed)"}
    assert out["start"]["ok"]
    assert out["stop_command"]["ok"]
    assert out["stop_command"]["detail"].startswith("stop_command exited 0; ")
    assert not out["active_after_stop"] and out["failures"] == []


def test_bind_to_only_while_that_unit_is_active_and_its_stop_stops_the_service(node):
    out = check(node, "bind")
    assert out["unbound"]["ok"] and out["unbound_props"]["BindsTo"] == ""
    assert "cfwtest-host.service" not in out["unbound_props"]["After"]
    assert out["bound"]["ok"] and out["bound_props"]["BindsTo"] == "cfwtest-host.service"
    assert "cfwtest-host.service" in out["bound_props"]["After"].split()
    assert out["after_host_stop_s"] is not None
    assert out["failure"][0] == "b2"
