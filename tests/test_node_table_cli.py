"""`clusterfw node list` and `clusterfw node remove` on a file-backed
cluster disk with a real daemon: the list shows the view state and the
heartbeat; removal is refused while the node is joined (naming the state,
the epoch and the heartbeat), refused for a node that is joined in the view
but dead, and succeeds once the node left gracefully.  Every daemon started
is killed by PID at the end."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from test_cli_bad_inputs import REPO, cli_env, clusterfw, make_disk
from test_daemon_loop import wait_for


def _daemon(tmp_path, image: str, node: str) -> tuple[subprocess.Popen, str]:
    run = tmp_path / f"run-{node}"
    log = open(tmp_path / f"{node}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "clusterfw.cli", "daemon", "--disk", image, "--node", node,
                             "--fence-action", "none", "--runtime-dir", str(run)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=cli_env(), cwd=REPO)
    log.close()
    sock = str(run / "clusterfw.sock")

    def joined():
        st = clusterfw("status", "--json", "--socket", sock, timeout=10)
        return st.returncode == 0 and json.loads(st.stdout).get("state") == "joined"

    try:
        wait_for(f"{node} to join", joined, 30)
    except AssertionError:
        _kill(proc)
        raise
    return proc, sock


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _listed(image: str) -> dict:
    out = clusterfw("node", "list", image, "--json", timeout=30)
    assert out.returncode == 0, out.stderr
    return {n["name"]: n for n in json.loads(out.stdout)["nodes"]}


def test_remove_is_refused_while_joined_and_done_once_the_node_left(tmp_path):
    image = make_disk(tmp_path / "disk.img", {1: "n1", 2: "n2", 3: "n3"})
    proc, sock = _daemon(tmp_path, image, "n2")
    try:
        nodes = _listed(image)
        assert nodes["n2"]["state"] == "joined" and nodes["n2"]["heartbeating"], nodes
        assert 0 <= nodes["n2"]["heartbeat_age_ms"] < 1000 and nodes["n2"]["master"]
        assert nodes["n1"]["state"] == "inactive" and not nodes["n1"]["heartbeating"]
        table = clusterfw("node", "list", image, timeout=30)
        assert table.returncode == 0 and "n2*" in table.stdout and " s ago" in table.stdout, table.stdout

        epoch = json.loads(clusterfw("status", "--json", "--socket", sock).stdout)["epoch"]
        refused = clusterfw("node", "remove", image, "n2", timeout=30)
        assert refused.returncode == 3, refused.stderr
        assert f"n2 is joined in epoch {epoch} (heartbeat " in refused.stderr, refused.stderr
        assert "s ago): stop its daemon first ('clusterfw leave' on n2)" in refused.stderr, refused.stderr
        assert "n2" in _listed(image)  # nothing was removed

        assert clusterfw("node", "remove", image, "n1", timeout=30).returncode == 0  # never started: inactive
        left = clusterfw("leave", "--socket", sock, "--quiet", timeout=60)
        assert left.returncode == 0, left.stderr
        assert proc.wait(30) == 0
        nodes = _listed(image)
        assert nodes["n2"]["state"] == "inactive" and not nodes["n2"]["heartbeating"], nodes
        removed = clusterfw("node", "remove", image, "n2", timeout=30)
        assert removed.returncode == 0, removed.stderr
        assert "removed node 'n2' (id 2)" in removed.stdout
        assert set(_listed(image)) == {"n3"}
        again = clusterfw("node", "remove", image, "n2", timeout=30)
        assert again.returncode == 2 and "no node named 'n2'" in again.stderr
    finally:
        _kill(proc)


def test_remove_is_refused_for_a_dead_node_the_view_still_counts(tmp_path, monkeypatch):
    image = make_disk(tmp_path / "disk.img", {1: "n1"})
    proc, _sock = _daemon(tmp_path, image, "n1")
    _kill(proc)  # SIGKILL: the view still shows n1 joined, and nobody is left to force it out
    refused = clusterfw("node", "remove", image, "n1", timeout=30)
    assert refused.returncode == 3, refused.stderr
    assert "n1 is joined in epoch" in refused.stderr and "no heartbeat in 0.3 s" in refused.stderr
    assert "its daemon is not running, but the view still counts it" in refused.stderr, refused.stderr
    # the configured disk, as clusterfw.service names it
    env_list = subprocess.run([sys.executable, "-m", "clusterfw.cli", "node", "list", "--json"], capture_output=True,
                              text=True, env={**cli_env(), "CLUSTERFW_DISK": image}, cwd=REPO, timeout=30)
    assert env_list.returncode == 0, env_list.stderr
    assert [n["name"] for n in json.loads(env_list.stdout)["nodes"]] == ["n1"]


@pytest.mark.skipif(os.path.exists("/etc/clusterfw/clusterfw.conf"), reason="this host has a configured disk")
def test_no_device_and_no_configured_disk_is_a_usage_error(tmp_path):
    env = {k: v for k, v in cli_env().items() if k != "CLUSTERFW_DISK"}
    out = subprocess.run([sys.executable, "-m", "clusterfw.cli", "node", "list"], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=30)
    assert out.returncode == 2 and "no DEVICE given" in out.stderr and "CLUSTERFW_DISK" in out.stderr
