"""Absurd input to the real ``clusterfw`` command: a table of bad inputs, each
run as a subprocess, must end with the intended exit code, a message that
names the input, and never a Python traceback.  Plus the two defects that
need a disk in a given state: ``disk init`` on a live disk whose superblock
is damaged, and a daemon whose node table names its nodes (names, not ids,
in the master's log lines; control characters in lock names escaped).

Everything runs on regular files in the test's temporary directory (no root
needed for the table); every daemon started is killed by PID at the end."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from test_daemon_loop import wait_for

from clusterfw.core import timing
from clusterfw.core.model import Request, SlotRecord, Timing
from clusterfw.ondisk.admin import add_node, format_disk
from clusterfw.ondisk.blockdev import BlockDevice
from clusterfw.ondisk.clusterdisk import ClusterDisk
from clusterfw.ondisk.layout import MIB

REPO = Path(__file__).resolve().parents[1]
EX_USAGE_LOCK = 64  # `clusterfw lock` follows flock(1): EX_USAGE
EX_CONFIG = 78
LAB_FAILOVER = f"forced out after about {timing.ms_text(timing.failover_ms(timing.derive(timing.LAB)))}"
SAN_FAILOVER = f"about {timing.ms_text(timing.failover_ms(timing.derive(timing.SAN)))}"


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM", "CLUSTERFW_SOCKET")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


def clusterfw(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The installed console script, running this checkout's code."""
    exe = shutil.which("clusterfw")
    if exe is None:
        pytest.fail("the clusterfw command is not installed (pip install -e .)")
    return subprocess.run([exe, *args], capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def make_disk(path: Path, nodes: dict[int, str] = {1: "a"}, heartbeat_ms: int = 100, io_timeout_ms: int = 200) -> str:
    """A 16 MiB clusterfw disk file with ``nodes``; timings other than those
    ``disk init`` accepts are written into the superblock directly (a disk of
    an older release, or edited by hand)."""
    with open(path, "wb") as f:
        f.truncate(16 * MIB)
    with BlockDevice(str(path)) as dev:
        format_disk(dev, "t", 8, 100, 200)
        disk = ClusterDisk.open(dev)
        for node_id, name in nodes.items():
            add_node(disk, name, node_id)
        assert disk.superblock is not None
        if (heartbeat_ms, io_timeout_ms) != (100, 200):
            sb = replace(disk.superblock, heartbeat_interval_ms=heartbeat_ms, io_timeout_ms=io_timeout_ms)
            dev.write(*disk.superblock_bytes(sb))
    return str(path)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "small.img").write_bytes(b"\0" * 2048)
    make_disk(root / "ok.img")
    make_disk(root / "hb1.img", heartbeat_ms=1)
    make_disk(root / "hbmax.img", heartbeat_ms=0xFFFF_FFFF)
    make_disk(root / "io1.img", heartbeat_ms=1000, io_timeout_ms=1)
    (root / "plainfile").write_text("not a directory\n")
    with open(root / "fresh.img", "wb") as f:
        f.truncate(16 * MIB)
    return root


def daemon(work: Path, disk: str, *extra: str, run: str = "run") -> list[str]:
    return ["daemon", "--disk", disk, "--node", "a", "--fence-action", "none",
            "--runtime-dir", str(work / run), *extra]


# (id, argv given the work directory, exit code, strings the message must contain; {work}: that directory)
CASES = [
    ("daemon-small-disk", lambda w: daemon(w, str(w / "small.img")), EX_CONFIG,
     ["small.img", "2048 bytes", "at least 4096 bytes"]),
    ("probe-small-disk", lambda w: ["probe", str(w / "small.img")], 1, ["small.img", "2048 bytes", "4096"]),
    ("dump-small-disk", lambda w: ["disk", "dump", str(w / "small.img")], 2, ["small.img", "2048 bytes", "4096"]),
    ("status-disk-small", lambda w: ["status", "--disk", str(w / "small.img"), "--socket", str(w / "none.sock")], 2,
     ["small.img", "2048 bytes", "4096"]),
    ("node-add-small-disk", lambda w: ["node", "add", str(w / "small.img"), "--name", "a"], 2,
     ["small.img", "2048 bytes", "4096"]),
    ("init-heartbeat-1", lambda w: ["disk", "init", str(w / "fresh.img"), "--cluster", "t", "--heartbeat-ms", "1",
                                    "--io-timeout-ms", "200"],
     2, ["--heartbeat-ms 1 ", "use 10.."]),
    ("init-heartbeat-u32max",
     lambda w: ["disk", "init", str(w / "fresh.img"), "--cluster", "t", "--heartbeat-ms", "4294967295",
                "--io-timeout-ms", "200"],
     2, ["--heartbeat-ms 4294967295", "use 10.."]),
    ("init-no-timing", lambda w: ["disk", "init", str(w / "fresh.img"), "--cluster", "t"], 2,
     ["choose a timing", "--profile lab (heartbeat 100 ms, io timeout 200 ms", LAB_FAILOVER, "--profile san",
      SAN_FAILOVER, "--heartbeat-ms and --io-timeout-ms"]),
    ("init-heartbeat-only", lambda w: ["disk", "init", str(w / "fresh.img"), "--cluster", "t", "--heartbeat-ms",
                                       "100"], 2, ["--heartbeat-ms needs --io-timeout-ms too", "--profile lab"]),
    ("init-io-timeout-only", lambda w: ["disk", "init", str(w / "fresh.img"), "--cluster", "t", "--io-timeout-ms",
                                        "200"], 2, ["--io-timeout-ms needs --heartbeat-ms too"]),
    ("init-profile-and-heartbeat", lambda w: ["disk", "init", str(w / "fresh.img"), "--cluster", "t", "--profile",
                                              "san", "--heartbeat-ms", "100"], 2,
     ["--profile san sets the heartbeat", "not --heartbeat-ms too"]),
    ("daemon-profile-contradicts-the-disk", lambda w: daemon(w, str(w / "ok.img"), "--profile", "san",
                                                             run="run-profile"), EX_CONFIG,
     ["--profile san contradicts the disk", "ok.img", "io timeout of 200 ms", "'lab' disk", "--profile san --force"]),
    ("init-io-timeout-1",
     lambda w: ["disk", "init", str(w / "fresh.img"), "--cluster", "t", "--heartbeat-ms", "1000",
                "--io-timeout-ms", "1"], 2, ["--io-timeout-ms 1 ", "use 50.."]),
    ("daemon-heartbeat-1", lambda w: daemon(w, str(w / "hb1.img")), EX_CONFIG,
     ["hb1.img", "heartbeat_interval_ms to 1 ms", "use 10.."]),
    ("daemon-heartbeat-u32max", lambda w: daemon(w, str(w / "hbmax.img")), EX_CONFIG,
     ["hbmax.img", "heartbeat_interval_ms to 4294967295 ms"]),
    ("daemon-io-timeout-1", lambda w: daemon(w, str(w / "io1.img")), EX_CONFIG,
     ["io1.img", "io_timeout_ms to 1 ms", "use 50.."]),
    ("sim-jobs-negative", lambda w: ["sim", "--jobs", "-3", "--seeds", "1"], 2, ["--jobs -3"]),
    ("lock-conflict-exit-code-300", lambda w: ["lock", "x", "--conflict-exit-code", "300", "--socket",
                                               str(w / "none.sock"), "--", "true"], EX_USAGE_LOCK,
     ["--conflict-exit-code 300", "0..255"]),
    ("daemon-runtime-dir-under-a-file", lambda w: daemon(w, str(w / "ok.img"), run="plainfile/run"), EX_CONFIG,
     ["plainfile/run", "runtime directory"]),
    ("daemon-disk-is-a-directory", lambda w: daemon(w, str(w)), EX_CONFIG, ["cannot open the shared disk {work}:"]),
    ("daemon-watchdog-missing", lambda w: daemon(w, str(w / "ok.img"), "--watchdog", str(w / "no-watchdog"),
                                                 run="run-wd"), EX_CONFIG, ["no-watchdog"]),
    ("daemon-socket-path-too-long", lambda w: daemon(w, str(w / "ok.img"), "--socket", str(w / ("s" * 120)),
                                                     run="run-sock"), EX_CONFIG, ["API socket", "s" * 120]),
]


@pytest.mark.parametrize("argv,code,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_its_exit_code_and_a_message_naming_it(work, argv, code, needles):
    out = clusterfw(*argv(work))
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text
    assert out.returncode == code, text
    for needle in needles:
        assert needle.replace("{work}", str(work)) in text, (needle, text)
    assert len([line for line in out.stderr.splitlines() if line.strip()]) <= 2, out.stderr  # a sentence, no dump


# ------------------------------------------------------------------ disk init on a damaged live disk
@pytest.mark.parametrize("damage", ["checksum", "zeroed"])
def test_disk_init_refuses_a_live_disk_whose_superblock_is_damaged(tmp_path, damage):
    image = tmp_path / "live.img"
    make_disk(image, {1: "web1", 2: "web2"})
    with BlockDevice(str(image)) as dev:
        disk = ClusterDisk.open(dev)
        disk.write_slot(SlotRecord(1, 7, 3, Timing(100, 200, 600, 1017, 30000, 20), Request.JOIN))
    raw = bytearray(image.read_bytes()[:4096])
    if damage == "checksum":
        raw[70] ^= 0xFF
    else:
        raw[:] = bytes(4096)
    with open(image, "r+b") as f:
        f.write(raw)
    before = image.read_bytes()

    advice = clusterfw("disk", "dump", str(image))
    assert advice.returncode == 1 and "Traceback" not in advice.stderr
    assert ("superblock of" in advice.stderr and "is damaged" in advice.stderr) if damage == "checksum" \
        else "has no clusterfw superblock" in advice.stderr
    assert "--force" in advice.stderr and "stop the daemon on every node" in advice.stderr
    assert "destroys the node table" in advice.stderr
    assert "initialise it with" not in advice.stderr  # the old advice that wiped a live disk

    refused = clusterfw("disk", "init", str(image), "--cluster", "t", "--profile", "lab")
    assert refused.returncode == 3, refused.stderr
    assert "refusing to initialise" in refused.stderr and "slot" in refused.stderr
    assert image.read_bytes() == before  # not one byte written

    forced = clusterfw("disk", "init", str(image), "--cluster", "t", "--profile", "lab", "--force")
    assert forced.returncode == 0, forced.stderr


# ------------------------------------------------------------------ names in a daemon's lines
def test_daemon_names_nodes_and_escapes_lock_names(tmp_path):
    """A node named web2 (id 2) is web2 in the master's log lines; a lock name
    with a newline and an ANSI escape is logged on one line and printed
    escaped by `clusterfw locks`."""
    from clusterfw.client import Connection

    image = make_disk(tmp_path / "disk.img", {2: "web2"})
    sock = str(tmp_path / "run" / "clusterfw.sock")
    log = tmp_path / "web2.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "clusterfw.cli", "daemon", "--disk", image, "--node", "web2",
                                 "--fence-action", "none", "--runtime-dir", str(tmp_path / "run")],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=cli_env(), cwd=REPO)
    try:
        def joined():
            st = clusterfw("status", "--json", "--socket", sock, timeout=10)
            return st.returncode == 0 and json.loads(st.stdout).get("state") == "joined"

        wait_for("web2 to join", joined, 30)
        # the master's decision lines (info; the per-batch steps are debug, not logged without --debug)
        wait_for("the master's line for web2's join",
                 lambda: "[master] web2 joins: all levels notified" in log.read_text(errors="replace"), 10)
        text = log.read_text(errors="replace")
        master = [line for line in text.splitlines() if "[master]" in line]
        assert any("[master] web2 master of term" in line for line in master), text
        assert not any("n2" in line or "batch" in line or "levels now" in line for line in master), text

        name = "db\nfake\x1b[31mred"
        conn = Connection(sock)
        try:
            conn.send({"op": "lock", "id": 1, "name": name, "mode": "exclusive"})
            assert conn.receive().get("ok")
            wait_for("the grant", lambda: conn.receive().get("op") == "granted", 20)
            locks = clusterfw("locks", "--socket", sock)
            assert locks.returncode == 0, locks.stderr
            assert "\x1b" not in locks.stdout and "db\\nfake\\x1b[31mred" in locks.stdout, locks.stdout
            assert not any(line.startswith("fake") for line in locks.stdout.splitlines())
        finally:
            conn.close()
        released = wait_for("the release to be logged",
                         lambda: [line for line in log.read_text(errors="replace").splitlines()
                                  if "went away" in line], 20)
        assert "lock 'db\\nfake\\x1b[31mred' (held) released" in released[0], released
        assert "\x1b" not in log.read_text(errors="replace")
        assert not any(line.startswith("fake") for line in log.read_text(errors="replace").splitlines())
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
