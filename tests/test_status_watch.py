"""`clusterfw status` for a person: the legend (epoch, term, placeholder
levels) and `--watch [SECS]`, which redraws until Ctrl-C like crm_mon.

How this works: the table is checked from a status object that
``clusterfw.node.status.render`` builds from real records; the watch runs
the real command in a subprocess against a socket that answers each
``status`` request as the daemon's API does (one JSON line in, one out),
with the epoch counting the requests so every redraw can be told apart.
After the second redraw the test sends SIGINT, as Ctrl-C does: exit 0.  The
screen is cleared only on a terminal (a pty), never into a pipe.
"""
from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clusterfw import cli
from clusterfw.cli.node import CLEAR_SCREEN, format_status
from clusterfw.core import timing
from clusterfw.core.election import Decision
from clusterfw.core.model import LevelSpec, MemberEntry, NodeState, Registration, SlotRecord, ViewRecord
from clusterfw.node.status import render

REPO = Path(__file__).resolve().parents[1]
TIMING = timing.derive(timing.LAB)
REGS = (Registration(0, "mm"), Registration(10, "dlm"), Registration(20, "vdm"), Registration(30, "sfs"))
BIG = (1 << 62) + 99


def status_object(epoch: int = 7) -> dict:
    slots = {n: SlotRecord(node_id=n, incarnation=BIG + n, seq=5, timing=TIMING, registrations=REGS)
             for n in (1, 2)}
    view = ViewRecord(node_id=1, incarnation=BIG + 1, seq=9, term=2, epoch=epoch,
                      levels=tuple(LevelSpec(r.level, r.barriers) for r in REGS),
                      members=(MemberEntry(1, BIG + 1, NodeState.JOINED), MemberEntry(2, BIG + 2, NodeState.JOINED)))
    out = render(cluster="lab", names={1: "n1", 2: "n2"}, view=view, slots=slots,
                 decision=Decision(2, 1, BIG + 1), ages_ms={1: 10.0, 2: 30.0}, placeholders={20, 30})
    out.update({"source": "daemon", "node": "n1", "phase": "running", "fenced": None,
                "subsystems": [{"level": r.level, "name": r.name, "placeholder": r.level in (20, 30)}
                               for r in REGS]})
    return out


def test_the_table_has_a_legend_and_marks_the_placeholder_levels():
    text = format_status(status_object())
    lines = text.splitlines()
    assert lines[0].startswith("cluster lab  master n1  epoch 7  term 2")
    assert "* master   epoch: membership changes so far   term: master elections so far" in lines
    marked = [line for line in lines if line.startswith("placeholder: ")]
    assert marked == ["placeholder: VDM, SFS are stand-ins that ack at once; no real subsystem runs there yet"]
    row = next(line for line in lines if line.startswith("n2 "))
    assert row.split()[3:7] == ["joined", "joined", "placeholder", "placeholder"]


def test_without_placeholders_no_placeholder_line():
    st = status_object()
    st["subsystems"] = [{**sub, "placeholder": False} for sub in st["subsystems"]]
    for node in st["nodes"]:
        node["levels"] = {name: "joined" for name in node["levels"]}
    assert not any(line.startswith("placeholder") for line in format_status(st).splitlines())


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e9", "3601", "0.05", "soon"])
def test_absurd_watch_intervals_are_refused_naming_the_value_and_the_range(value, capsys):
    assert cli.main(["status", "--watch", value, "--socket", "/nonexistent/clusterfw.sock"]) == 2
    err = capsys.readouterr().err
    assert f"--watch {value}: use a number of seconds from 0.1 to 3600 (default 2)" in err, err


class FakeApi:
    """A socket answering ``status`` as the daemon's API does; counts requests."""

    def __init__(self, path: str) -> None:
        self.requests = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as lines:
                request = json.loads(lines.readline())
                assert request == {"v": 1, "op": "status"}, request
                self.requests += 1
                reply = {"v": 1, "ok": True, "op": "status", "status": status_object(epoch=100 + self.requests)}
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def api(tmp_path):
    server = FakeApi(str(tmp_path / "clusterfw.sock"))
    yield server
    server.close()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CLUSTERFW_SOCKET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


def _watch(api: FakeApi, tmp_path: Path, *extra: str, stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clusterfw.cli", "status", "--socket",
                             str(tmp_path / "clusterfw.sock"), "--watch", "0.2", *extra],
                            stdout=stdout, stderr=subprocess.PIPE, env=_env(), cwd=REPO)


def _after_two_redraws(api: FakeApi, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while api.requests < 3:  # the third request comes after the second redraw was printed
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the watch did not redraw twice in 30 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)


def test_watch_redraws_until_ctrl_c_and_exits_0_without_clearing_a_pipe(api, tmp_path):
    proc = _watch(api, tmp_path)
    _after_two_redraws(api, proc)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err.decode() and CLEAR_SCREEN not in out.decode()
    heads = [line for line in out.decode().splitlines() if line.startswith("cluster lab")]
    assert len(heads) >= 2 and heads[0] != heads[1], heads  # fresh readings: the epoch moved
    assert [int(h.split("epoch ")[1].split()[0]) for h in heads] == list(range(101, 101 + len(heads)))
    assert out.decode().count("every 0.2 s, ") == len(heads)


def test_watch_with_json_prints_one_object_a_line(api, tmp_path):
    proc = _watch(api, tmp_path, "--json")
    _after_two_redraws(api, proc)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    objects = [json.loads(line) for line in out.decode().splitlines()]
    assert len(objects) >= 2 and [o["epoch"] for o in objects] == list(range(101, 101 + len(objects)))
    assert all(isinstance(n["incarnation"], str) for o in objects for n in o["nodes"])


def test_watch_clears_the_screen_on_a_terminal(api, tmp_path):
    master, slave = pty.openpty()
    proc = _watch(api, tmp_path, stdout=slave)
    os.close(slave)
    out = b""
    try:
        _after_two_redraws(api, proc)
        deadline = time.monotonic() + 30
        while proc.poll() is None or select.select([master], [], [], 0)[0]:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    out += os.read(master, 65536)
                except OSError:  # the other end closed
                    break
            assert time.monotonic() < deadline
    finally:
        os.close(master)
    assert proc.wait(timeout=30) == 0, proc.stderr.read()
    assert out.count(CLEAR_SCREEN.encode()) >= 2, out[:300]
