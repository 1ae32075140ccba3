"""The lab's fault commands as a person runs them: one line each, and with
``--json`` the object ``Lab`` returned.

How this works: one test on the module's 3-node process-mode lab (its node
command writes a heartbeat file, see conftest.py) runs the real
``clusterfw lab`` commands in sequence -- cut the disk, restore it, pause in
the foreground and the background, resume, crash, restart -- and checks each
output's shape: exactly one line that starts with the node's name, or one
JSON object with the keys the scripts read.  The lab's own state is checked
after each fault too, so a line cannot claim what did not happen.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from clusterfw.lab import Lab

pytestmark = pytest.mark.lab

CLI = [sys.executable, "-c",
       "import sys; from clusterfw.cli import main; sys.exit(main(sys.argv[1:]))", "lab"]


def run(lab: Lab, *args: str, timeout: float = 60) -> str:
    cp = subprocess.run([*CLI, *args[:1], "--dir", str(lab.dir), *args[1:]],
                        capture_output=True, text=True, timeout=timeout)
    assert cp.returncode == 0, (args, cp.stdout, cp.stderr)
    return cp.stdout


def one_line(out: str, pattern: str) -> str:
    assert out.count("\n") == 1 and out.endswith("\n"), repr(out)
    line = out.rstrip("\n")
    assert len(line) <= 100, f"too long for a person: {line!r}"
    assert re.fullmatch(pattern, line), (pattern, line)
    return line


def state(lab: Lab, node: str) -> dict:
    """The node as the lab's state file says now (the commands ran in other processes)."""
    return next(n for n in Lab(lab.dir).status()["nodes"] if n["name"] == node)


def test_every_fault_command_prints_one_line_or_its_json(process_lab):
    lab = process_lab
    n = "n2"
    one_line(run(lab, "cut-disk", n, "--mode", "eio"),
             rf"{n} disk cut \(eio: every I/O fails until 'clusterfw lab restore-disk {n}'\)")
    assert state(lab, n)["disk"]["mode"] == "eio"
    restored = json.loads(run(lab, "restore-disk", n, "--json"))
    assert restored == {"node": n, "disk": "pass"} and state(lab, n)["disk"]["mode"] == "pass"
    one_line(run(lab, "cut-disk", n, "--mode", "hang"), rf"{n} disk cut \(hang: every I/O stalls until .*\)")
    one_line(run(lab, "restore-disk", n), rf"{n} disk restored \(I/O passes through\)")

    one_line(run(lab, "pause", n, "0.3"), rf"{n} paused for 0\.30 s, running again")
    paused = json.loads(run(lab, "pause", n, "30", "--background", "--json"))
    assert paused["node"] == n and paused["background"] is True and paused["until"] > 0
    assert state(lab, n)["state"] == "paused"
    one_line(run(lab, "resume", n), rf"{n} resumed")
    assert state(lab, n)["state"] == "up"
    one_line(run(lab, "pause", n, "30", "--background"),
             rf"{n} paused until \d\d:\d\d:\d\d(, not yet frozen)? \(a helper thaws it; "
             rf"'clusterfw lab resume {n}' now\)")
    assert json.loads(run(lab, "resume", n, "--json")) == {"node": n, "resumed": True}

    init = state(lab, n)["init_pid"]
    one_line(run(lab, "crash", n), rf"{n} crashed \(SIGKILL of init {init}\) in \d+\.\d\d s")
    assert state(lab, n)["state"] == "down"
    line = one_line(run(lab, "restart", n), rf"{n} restarted \(init \d+\) in \d+\.\d\d s")
    assert state(lab, n)["state"] == "up" and f"init {state(lab, n)['init_pid']})" in line

    crashed = json.loads(run(lab, "crash", n, "--json"))
    assert crashed["node"] == n and crashed["crashed"] is True and crashed["seconds"] >= 0
    restarted = json.loads(run(lab, "restart", n, "--json"))
    assert restarted["name"] == n and restarted["state"] == "up" and restarted["seconds"] > 0
    assert restarted["init_pid"] == state(lab, n)["init_pid"]
