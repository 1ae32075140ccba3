"""The event manager (level 40) and `clusterfw events`.

Four parts:

* the record, the bounded log (fsync, rotation, torn tails), the follower
  across rotations and the rendering, in-process;
* the event manager as a real process against a fake node daemon (a Unix
  socket speaking the daemon's protocol, scripted by the test): READY=1
  once registered, re-registration after the daemon drops the connection,
  no duplicate record for a notification delivered again, exit 78 on a
  refusal, exit 0 on SIGTERM;
* the event manager with real node daemons on a real loop device (like
  tests/test_daemon_loop.py; needs root and losetup): it registers at level
  40, records the join of its own node and of a second node, whose join
  completes only because it acks, survives being killed (re-attach) and the
  daemon being killed (re-register), and `clusterfw events --json` shows it
  all;
* events (docs/events.md, "Events"): the membership watcher's occurrences,
  occurrence records beside old membership records, actions (no shell,
  their environment, exit, signal, timeout of the whole session, a program
  that cannot run), the unit watcher on a host without a system bus, and
  the event manager running the action of a group enabled on its node
  against the fake daemon.

Only processes these tests started are signalled, by PID.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from clusterfw.client import Client, ClientError
from clusterfw.core import events as core_events
from clusterfw.core.events import EventDef, Occurrence
from clusterfw.events import actions, eventlog, record, render, watchers
from clusterfw.core.services import Entry as RegEntry
from clusterfw.core.services import Registry, ServiceRec, SvcState
from clusterfw.core.svcdef import ServiceDef
from clusterfw.events.manager import EventManager
from clusterfw.host.journal import Journal
from clusterfw.host.notify import Notifier
from clusterfw.node.protocol import decode, encode
from clusterfw.subsystems.base import Entry, Notification
from test_daemon_loop import loop_device, wait_for  # noqa: E402  (helpers of the real-daemon tests)

REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM", "CLUSTERFW_EVENTS_LOG",
                        "CLUSTERFW_SOCKET")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env.update(extra)
    return env


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clusterfw.cli", *args], capture_output=True, text=True,
                          env=_env(), cwd=REPO, timeout=timeout)


def note(batch: int, *entries: tuple[int, str, str], epoch: int = 3, level: int = 40,
         context: tuple[tuple[int, str, str], ...] = ((1, "n1", "joined"),)) -> Notification:
    return Notification(level=level, batch=batch, epoch=epoch,
                        entries=tuple(Entry(node_id, name, kind, 0) for node_id, name, kind in entries),
                        context=context)


def read_log(path: Path) -> list[dict[str, Any]]:
    with eventlog.Follower(str(path)) as f:
        return f.history()


# --------------------------------------------------------------------------
# records, log, follower, rendering

def test_one_record_per_entry_with_every_field() -> None:
    n = note(7, (2, "n2", "forced-leaving"), (3, "n3", "joining"), epoch=12)
    recs = record.records_from(n, "n1", now=1735732801.2345)
    assert [(r["node"], r["event"], r["kind"]) for r in recs] == [
        ("n2", "forced-leave", "forced-leaving"), ("n3", "join", "joining")]
    first = recs[0]
    assert first == {"v": 1, "time": "2025-01-01T12:00:01.234Z", "ts": 1735732801.234, "observer": "n1",
                     "node": "n2", "id": 2, "event": "forced-leave", "kind": "forced-leaving", "barrier": 0,
                     "level": 40, "epoch": 12, "batch": 7,
                     "context": [{"node": "n1", "id": 1, "state": "joined"}]}
    assert record.describe(first) == "n2 forced-leave (epoch 12, batch 7, level 40)"
    assert all(record.valid(r) for r in recs)
    assert record.records_from(note(8, (1, "n1", "leaving")), "n1")[0]["event"] == "leave"


def test_the_log_appends_whole_lines_with_fsync_and_rotates_at_its_bound(tmp_path, monkeypatch) -> None:
    path = tmp_path / "sub" / "events.jsonl"  # the directory is created
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(eventlog.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    log = eventlog.EventLog(str(path), max_bytes=4096)
    log.open()
    written = []
    for batch in range(1, 80):
        recs = record.records_from(note(batch, (2, "n2", "joining")), "n1")
        before = len(synced)
        log.append(recs)
        assert len(synced) > before, "every append is fsync-ed"
        written.extend(recs)
    log.close()
    assert log.rotations >= 2
    old = Path(eventlog.rotated_path(str(path)))
    assert path.stat().st_size <= 4096 and old.stat().st_size <= 4096
    kept = read_log(path)
    # the newest records, in order, without a gap; the oldest were rotated away
    assert [r["batch"] for r in kept] == [r["batch"] for r in written[-len(kept):]]
    assert len(kept) < len(written)
    for line in path.read_bytes().splitlines() + old.read_bytes().splitlines():
        assert record.valid(json.loads(line))
    with pytest.raises(ValueError):
        eventlog.EventLog(str(path), max_bytes=100)


def test_a_torn_last_line_is_ended_and_skipped(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    good = eventlog.encode(record.records_from(note(1, (1, "n1", "joining")), "n1")[0])
    path.write_bytes(good + b'{"v":1,"time":"2025-01-01T')  # a crash in the middle of a write
    with eventlog.EventLog(str(path)) as log:
        log.append(record.records_from(note(2, (2, "n2", "joining")), "n1"))
    with eventlog.Follower(str(path)) as f:
        recs = f.history()
        assert [r["batch"] for r in recs] == [1, 2]
        assert f.bad_lines == 1


def test_last_key_finds_the_last_notification(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    n = note(9, (2, "n2", "forced-leaving"), (3, "n3", "forced-leaving"))
    with eventlog.EventLog(str(path)) as log:
        assert log.last_key() is None
        log.append(record.records_from(note(8, (2, "n2", "joining")), "n1"))
        log.append(record.records_from(n, "n1"))
        assert log.last_key() == record.note_key(n)


def test_the_follower_loses_nothing_across_rotations(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    log = eventlog.EventLog(str(path), max_bytes=4096)
    log.open()
    log.append(record.records_from(note(1, (2, "n2", "joining")), "n1"))
    follower = eventlog.Follower(str(path))
    seen = [r["batch"] for r in follower.history()]
    assert seen == [1]
    for batch in range(2, 120):
        log.append(record.records_from(note(batch, (2, "n2", "joining")), "n1"))
        if batch % 7 == 0:  # several rotations happen between some polls, never two
            seen += [r["batch"] for r in follower.poll()]
    seen += [r["batch"] for r in follower.poll()]
    assert log.rotations >= 3
    assert seen == list(range(1, 120))
    assert follower.poll() == []
    follower.close()
    log.close()


def test_the_table_and_the_json_lines() -> None:
    recs = record.records_from(note(4, (2, "n2", "joining"), (3, "n3", "forced-leaving"), epoch=5), "n1",
                               now=1735732801.0)
    table = render.format_table(recs).splitlines()
    assert table[0].split() == ["TIME", "NODE", "EVENT", "EPOCH", "BATCH", "SEEN", "ON", "ACTION"]
    assert table[1].split()[2:] == ["n2", "join", "5", "4", "n1"]
    assert table[2].split()[2:] == ["n3", "forced-leave", "5", "4", "n1"]
    assert render.format_row(recs[1]).split()[2:] == ["n3", "forced-leave", "5", "4", "n1"]
    assert json.loads(render.json_line(recs[0])) == recs[0]


def test_a_notification_delivered_again_is_recorded_once(tmp_path) -> None:
    log = eventlog.EventLog(str(tmp_path / "events.jsonl"))
    log.open()
    manager = EventManager("/nonexistent.sock", log, journal=Journal("n1", use_journal=False),
                           notifier=Notifier(environ={}), echo=False)
    n = note(5, (2, "n2", "joining"))
    assert len(manager.record(n)) == 1
    assert manager.record(n) == []  # re-attached: the daemon sends the unacked batch again
    assert len(manager.record(note(6, (2, "n2", "leaving")))) == 1
    log.close()
    # a new process over the same log knows the last batch too
    log2 = eventlog.EventLog(str(tmp_path / "events.jsonl"))
    log2.open()
    again = EventManager("/nonexistent.sock", log2, journal=Journal("n1", use_journal=False),
                         notifier=Notifier(environ={}), echo=False)
    again._last_key = log2.last_key()
    assert again.record(note(6, (2, "n2", "leaving"))) == []
    log2.close()
    assert [r["batch"] for r in read_log(tmp_path / "events.jsonl")] == [5, 6]


def test_events_command_shows_the_log(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    with eventlog.EventLog(str(path)) as log:
        for batch, kind in ((1, "joining"), (2, "joining"), (3, "forced-leaving")):
            log.append(record.records_from(note(batch, (2, "n2", kind), epoch=batch + 1), "n1"))
    out = cli("events", "--log", str(path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("TIME") and len(lines) == 4
    assert lines[3].split()[2:4] == ["n2", "forced-leave"]
    out = cli("events", "--json", "-n", "2", "--log", str(path))
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["batch"] for line in out.stdout.splitlines()] == [2, 3]
    out = cli("events", "--json", "-n", "0", "--log", str(path))
    assert out.returncode == 0 and out.stdout == ""


def test_events_command_errors_name_the_input_and_the_fix(tmp_path) -> None:
    missing = tmp_path / "none.jsonl"
    out = cli("events", "--log", str(missing))
    assert out.returncode == 1
    assert str(missing) in out.stderr and "event manager" in out.stderr
    assert "--wait-for-subsystem events" in out.stderr and "clusterfw-events" in out.stderr
    out = cli("events", "-n", "-1", "--log", str(missing))
    assert out.returncode == 2 and "-n/--lines" in out.stderr
    out = cli("events", "--log", str(tmp_path))
    assert out.returncode == 2 and "is a directory" in out.stderr
    out = cli("event-manager", "--max-bytes", "12", "--log", str(missing))
    assert out.returncode == 2 and "--max-bytes" in out.stderr
    out = cli("events", "--help")
    assert out.returncode == 0 and "exit codes" in out.stdout


def test_events_follow_prints_new_events_across_a_rotation(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    log = eventlog.EventLog(str(path), max_bytes=4096)
    log.open()
    log.append(record.records_from(note(1, (2, "n2", "joining")), "n1"))
    proc = subprocess.Popen([sys.executable, "-m", "clusterfw.cli", "events", "--follow", "--json",
                             "--log", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), cwd=REPO)
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["batch"] == 1
        for batch in range(2, 40):  # about 20 records a file: rotations, never two between polls
            log.append(record.records_from(note(batch, (2, "n2", "joining")), "n1"))
            time.sleep(0.02)
        assert log.rotations >= 1
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        log.close()
    assert proc.returncode == 0, err
    assert [json.loads(line)["batch"] for line in out.splitlines()] == list(range(2, 40))


# --------------------------------------------------------------------------
# the event manager process against a fake node daemon

class FakeDaemon:
    """A Unix socket that speaks the daemon's protocol, one connection at a
    time.  ``script(conn_no, op, message)`` returns the messages to send."""

    def __init__(self, path: str, script: Callable[[int, str, dict[str, Any]], list[dict[str, Any]] | None]):
        self.path = path
        self.script = script
        self.received: list[tuple[int, dict[str, Any]]] = []
        self.connections = 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen(8)
        self._server.settimeout(0.2)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while not self._stop:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    message = decode(line)
                    op = message["op"]
                    if op == "register":
                        self.connections += 1
                    self.received.append((self.connections, message))
                    replies = self.script(self.connections, op, message)
                    if replies is None:
                        return  # close the connection
                    for reply in replies:
                        conn.sendall(encode(reply))

    def acks(self) -> list[int]:
        return [m["batch"] for _, m in self.received if m["op"] == "ack"]

    def close(self) -> None:
        self._stop = True
        self._server.close()
        self._thread.join(5)


@contextlib.contextmanager
def notify_socket(path: Path) -> Iterator[Callable[[], list[str]]]:
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(path))
    rx.setblocking(False)
    messages: list[str] = []

    def drain() -> list[str]:
        with contextlib.suppress(BlockingIOError):
            while True:
                messages.append(rx.recv(4096).decode())
        return messages

    try:
        yield drain
    finally:
        rx.close()


def start_manager(sock: str, log: Path, *extra: str, notify: Path | None = None,
                  out: Path | None = None) -> subprocess.Popen:
    env = _env(**({"NOTIFY_SOCKET": str(notify)} if notify else {}))
    stream = open(out, "wb") if out else subprocess.DEVNULL  # noqa: SIM115 - closed by the child's exit
    return subprocess.Popen([sys.executable, "-m", "clusterfw.cli", "event-manager", "--socket", sock,
                             "--log", str(log), *extra], stdin=subprocess.DEVNULL, stdout=stream,
                            stderr=subprocess.STDOUT, env=env, cwd=REPO)


def notify_message(batch: int, kind: str, node: str = "n8", node_id: int = 8, epoch: int = 4) -> dict[str, Any]:
    return note(batch, (node_id, node, kind), epoch=epoch).to_json()


def test_manager_registers_records_acks_and_registers_again_after_a_drop(tmp_path) -> None:
    def script(conn: int, op: str, message: dict[str, Any]) -> list[dict[str, Any]] | None:
        if op == "status":
            return [{"ok": True, "op": "status", "status": {"node": "n9"}}]
        if op == "register":
            assert (message["level"], message["name"], message["barriers"]) == (40, "events", [1, 1, 1])
            reply = {"ok": True, "op": "registered", "level": 40, "name": "events", "barriers": [1, 1, 1],
                     "reattached": conn > 1, "join": "requested" if conn > 1 else "waiting"}
            if conn == 1:
                return [reply, notify_message(5, "joining", "n9", 9)]
            # re-attached: batch 6 again (as for an unacked one), then a forced leave
            return [notify_message(6, "joining"), reply, notify_message(7, "forced-leaving")]
        if op == "ack":
            if conn == 1 and message["batch"] == 5:
                return [{"ok": True, "op": "acked", "batch": 5}, notify_message(6, "joining")]
            if conn == 1 and message["batch"] == 6:
                return None  # the daemon goes away before answering
            return [{"ok": True, "op": "acked", "batch": message["batch"]}]
        return [{"ok": False, "error": f"unknown op {op}"}]

    sock = str(tmp_path / "fake.sock")
    log = tmp_path / "events.jsonl"
    out = tmp_path / "manager.out"
    with notify_socket(tmp_path / "notify.sock") as drain:
        proc = start_manager(sock, log, notify=tmp_path / "notify.sock", out=out)
        try:
            time.sleep(0.7)  # no daemon yet: it waits
            assert proc.poll() is None
            assert not any("READY=1" in m for m in drain())
            daemon = FakeDaemon(sock, script)
            try:
                wait_for("batch 7 acked", lambda: 7 in daemon.acks(), 15)
                assert daemon.connections == 2
                assert daemon.acks() == [5, 6, 6, 7]  # 6: once before the drop, once re-sent
                wait_for("READY=1", lambda: any("READY=1" in m for m in drain()), 5)
                assert sum("READY=1" in m for m in drain()) == 1
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(10) == 0, out.read_text()
            finally:
                daemon.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    recs = read_log(log)
    assert [(r["batch"], r["node"], r["event"], r["observer"]) for r in recs] == [
        (5, "n9", "join", "n9"), (6, "n8", "join", "n9"), (7, "n8", "forced-leave", "n9")]
    text = out.read_text()
    assert "registered at level 40" in text and "re-attached" in text and "registering again" in text
    assert "n8 forced-leave (epoch 4, batch 7, level 40)" in text


def test_manager_exits_78_when_the_daemon_refuses(tmp_path) -> None:
    refusal = ("the daemon already requested its join with its registrations fixed; level 40 ('events') "
               "cannot be added now: restart the daemon with --wait-for-subsystem events")

    def script(conn: int, op: str, message: dict[str, Any]) -> list[dict[str, Any]] | None:
        return [{"ok": False, "error": refusal}]

    sock = str(tmp_path / "fake.sock")
    daemon = FakeDaemon(sock, script)
    out = tmp_path / "manager.out"
    try:
        proc = start_manager(sock, tmp_path / "events.jsonl", out=out)
        assert proc.wait(15) == 78
    finally:
        daemon.close()
    assert "--wait-for-subsystem events" in out.read_text()


# --------------------------------------------------------------------------
# real daemons on a real loop device

needs_loop = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("losetup") is None
                                or not os.path.exists("/dev/loop-control"),
                                reason="needs root, losetup and loop devices")


class Node:
    """One node's daemon process (restartable), its socket and logs."""

    def __init__(self, name: str, device: str, work: Path) -> None:
        self.name, self.device, self.work = name, device, work
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def socket(self) -> str:
        return str(self.work / f"run-{self.name}" / "clusterfw.sock")

    def start(self, *extra: str) -> None:
        self.starts += 1
        log = self.work / f"{self.name}.{self.starts}.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "clusterfw.cli", "daemon", "--disk", self.device, "--node", self.name,
                 "--fence-action", "exit", "--runtime-dir", str(self.work / f"run-{self.name}"), *extra],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)

    def status(self) -> dict[str, Any] | None:
        try:
            return Client(self.socket, timeout_s=2.0).status()
        except ClientError:
            return None

    def sees(self, name: str, state: str) -> dict[str, Any] | None:
        st = self.status()
        if st is None:
            return None
        node = next((n for n in st["nodes"] if n["name"] == name), None)
        return st if node is not None and node["state"] == state else None

    def kill(self, signum: int = signal.SIGKILL, timeout: float = 15) -> int:
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, signum)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def events_json(log: Path) -> list[dict[str, Any]]:
    out = cli("events", "--json", "--log", str(log))
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def seen(log: Path) -> list[tuple[str, str]]:
    return [(r["node"], r["event"]) for r in read_log(log)] if log.exists() else []


@needs_loop
@pytest.mark.lab
def test_event_manager_with_real_daemons(tmp_path) -> None:
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as f:
        f.truncate(16 << 20)
    with loop_device(backing) as device:
        assert cli("disk", "init", device, "--cluster", "lab", "--max-nodes", "8", "--heartbeat-ms", "100",
                   "--io-timeout-ms", "200").returncode == 0
        for name in ("n1", "n2"):
            assert cli("node", "add", device, "--name", name).returncode == 0
        n1, n2 = Node("n1", device, tmp_path), Node("n2", device, tmp_path)
        log = tmp_path / "events.jsonl"
        managers: list[subprocess.Popen] = []
        try:
            # n1 waits for the event manager; the event manager waits for nothing but the socket
            n1.start("--wait-for-subsystem", "events", "--wait-timeout", "60")
            wait_for("n1's socket", lambda: (s := n1.status()) and s["phase"] == "waiting-for-subsystems", 15)
            with notify_socket(tmp_path / "notify.sock") as drain:
                em = start_manager(n1.socket, log, "--leave-on-stop", notify=tmp_path / "notify.sock",
                                   out=tmp_path / "em.1.out")
                managers.append(em)
                wait_for("READY=1", lambda: any("READY=1" in m for m in drain()), 15)
            st = wait_for("n1 joined", lambda: n1.sees("n1", "joined"), 15)
            sub = next(s for s in st["subsystems"] if s["level"] == 40)
            assert (sub["name"], sub["kind"], sub["attached"]) == ("events", "external", True)
            wait_for("n1's join recorded", lambda: ("n1", "join") in seen(log), 5)

            # a second node (no event manager of its own) joins through level 40: n1's event
            # manager must ack for the join to complete
            n2.start()
            wait_for("n2 joined", lambda: n1.sees("n2", "joined"), 20)
            assert ("n2", "join") in seen(log)

            # the event manager crashes; a new one re-attaches and acks n2's graceful leave
            em.kill()
            em.wait(10)
            em = start_manager(n1.socket, log, "--leave-on-stop", out=tmp_path / "em.2.out")
            managers.append(em)
            wait_for("re-attached", lambda: "re-attached" in (tmp_path / "em.2.out").read_text(), 15)
            assert n2.kill(signal.SIGTERM) == 0, "n2's leave needs n1's level 40 to ack"
            wait_for("n2's leave recorded", lambda: ("n2", "leave") in seen(log), 5)

            # a crash of n2 is a forced leave
            n2.start()
            wait_for("n2 joined again", lambda: n1.sees("n2", "joined"), 20)
            n2.kill()
            wait_for("n2 forced out", lambda: n1.sees("n2", "inactive"), 15)
            wait_for("n2's forced leave recorded", lambda: ("n2", "forced-leave") in seen(log), 5)

            # the daemon dies: the event manager stays and registers with the next daemon
            n1.kill()
            time.sleep(0.5)
            assert em.poll() is None
            n1.start("--wait-for-subsystem", "events", "--wait-timeout", "60")
            wait_for("n1 joined again", lambda: n1.sees("n1", "joined"), 20)
            wait_for("n1's second join recorded", lambda: seen(log).count(("n1", "join")) == 2, 5)

            # SIGTERM with --leave-on-stop: the node leaves (recorded), then both exit 0
            em.send_signal(signal.SIGTERM)
            assert em.wait(30) == 0, (tmp_path / "em.2.out").read_text()
            assert n1.proc is not None and n1.proc.wait(15) == 0
            assert seen(log)[-1] == ("n1", "leave")

            recs = events_json(log)
            assert [(r["node"], r["event"]) for r in recs] == [
                ("n1", "join"), ("n2", "join"), ("n2", "leave"), ("n2", "join"), ("n2", "forced-leave"),
                ("n1", "join"), ("n1", "leave")]
            assert all(r["observer"] == "n1" and r["level"] == 40 for r in recs)
            epochs = [r["epoch"] for r in recs]
            assert epochs == sorted(epochs)
            forced = next(r for r in recs if r["event"] == "forced-leave")
            assert {"node": "n1", "id": 1, "state": "joined"} in forced["context"]
            table = cli("events", "--log", str(log))
            assert table.returncode == 0 and "forced-leave" in table.stdout
        finally:
            for proc in managers:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            n1.stop()
            n2.stop()


# --------------------------------------------------------------------------
# events: occurrence records, actions, the unit watcher without a bus, the
# manager's groups and actions against the fake daemon


PEER = EventDef("web.peer", core_events.MEMBERSHIP, {"node": "*", "transition": "any"},
                (sys.executable, "-c", "pass", "${node}"))


def occurrence_of(n: Notification) -> list[Occurrence]:
    got: list[Occurrence] = []
    w = watchers.MembershipWatcher()
    w.start(got.append)
    w.notified(record.records_from(n, "n1", now=1735732801.0), {"n2": "2a"})
    return got


def test_the_membership_watcher_makes_one_occurrence_per_entry() -> None:
    got = occurrence_of(note(7, (2, "n2", "forced-leaving"), (3, "n3", "joining"), epoch=12))
    assert got == [
        Occurrence("membership", {"node": "n2", "transition": "forced-leave", "epoch": "12", "incarnation": "2a",
                                  "time": "2025-01-01T12:00:01.000Z"}),
        Occurrence("membership", {"node": "n3", "transition": "join", "epoch": "12", "incarnation": "",
                                  "time": "2025-01-01T12:00:01.000Z"})]
    assert set(got[0].out) == set(core_events.SCHEMAS["membership"].out_params)


def test_occurrence_records_read_back_beside_old_membership_records(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    old = record.records_from(note(5, (2, "n2", "forced-leaving"), epoch=9), "n1", now=1735732801.0)
    path.write_bytes(b"".join(eventlog.encode(r) for r in old))  # a log as the first version wrote it
    [occ] = occurrence_of(note(5, (2, "n2", "forced-leaving"), epoch=9))
    occ_rec = record.occurrence_record(PEER, occ, "n1", (sys.executable, "n2"), 0, "exit 0", 0.01, now=1735732801.5)
    assert occ_rec["epoch"] == 9 and occ_rec["node"] == "n2" and record.valid(occ_rec)
    with eventlog.EventLog(str(path)) as log:
        log.append([occ_rec])
        assert log.last_key() == record.note_key(note(5, (2, "n2", "forced-leaving"), epoch=9))  # occurrences skipped
    with path.open("ab") as f:  # neither a membership record nor a whole occurrence: skipped
        f.write(eventlog.encode({**occ_rec, "out": None}) + eventlog.encode({**old[0], "type": "other"}))
    with eventlog.Follower(str(path)) as f:
        recs = f.history()
        assert recs == old + [occ_rec] and f.bad_lines == 2
    table = render.format_table(recs).splitlines()
    assert table[2].split()[2:] == ["n2", "web.peer", "9", "n1", "exit", "0"]
    assert table[1].split()[2:] == ["n2", "forced-leave", "9", "5", "n1"]
    assert record.describe_occurrence(occ_rec) == \
        "web.peer (membership: node=n2 transition=forced-leave epoch=9 incarnation=2a): action exit 0"


def test_an_action_runs_without_a_shell_with_its_environment(tmp_path) -> None:
    out = tmp_path / "out.json"
    script = ("import json, os, sys; json.dump({'argv': sys.argv[1:], 'env': {k: v for k, v in os.environ.items() "
              "if k.startswith(('CLUSTERFW_', 'NOTIFY'))}}, open(sys.argv[1], 'w'))")
    event = EventDef("web.peer", "membership", {"node": "*", "transition": "any"},
                     (sys.executable, "-c", script, str(out), "${node}", "$$HOME ${transition}"))
    occ = Occurrence("membership", {"node": "n2; rm -rf /", "transition": "join", "epoch": "3", "incarnation": "",
                                    "time": "T"})
    argv = core_events.expand(event.action, event.in_params, occ.out)
    env = actions.action_environment(event, occ.out, "n1", base={"PATH": os.environ["PATH"], "NOTIFY_SOCKET": "/x"})
    done = actions.run_action(argv, env)
    assert (done.exit, done.status, done.ok) == (0, "exit 0", True)
    got = json.loads(out.read_text())
    assert got["argv"] == [str(out), "n2; rm -rf /", "$HOME join"]
    assert got["env"] == {"CLUSTERFW_NODE": "n1", "CLUSTERFW_EVENT": "web.peer", "CLUSTERFW_SERVICE": "web",
                          "CLUSTERFW_OUT_NODE": "n2; rm -rf /", "CLUSTERFW_OUT_TRANSITION": "join",
                          "CLUSTERFW_OUT_EPOCH": "3", "CLUSTERFW_OUT_INCARNATION": "", "CLUSTERFW_OUT_TIME": "T"}


def test_an_actions_outcomes(tmp_path) -> None:
    env = {"PATH": os.environ["PATH"]}
    assert actions.run_action((sys.executable, "-c", "raise SystemExit(3)"), env).status == "exit 3"
    killed = actions.run_action((sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"),
                                env)
    assert (killed.exit, killed.status) == (None, "killed by SIGTERM")
    missing = actions.run_action((str(tmp_path / "nope"), "x"), env)
    assert missing.exit is None and missing.status.startswith(f"could not run {tmp_path / 'nope'}: ")
    # past its timeout the whole session goes: the action and what it started
    pidfile = tmp_path / "child.pid"
    slow = actions.run_action((sys.executable, "-c", "import subprocess, sys, time; p = subprocess.Popen(['sleep', "
                               f"'60']); open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)"), env,
                              timeout_s=1.0)
    assert (slow.exit, slow.status) == (None, "timed out after 1 s (killed)") and slow.elapsed_s < 5
    child = int(pidfile.read_text())
    wait_for("the action's child killed", lambda: not os.path.exists(f"/proc/{child}") or
             open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0] == "Z", 5)


class Recorded(Journal):
    def __init__(self) -> None:
        super().__init__("n1", use_journal=False)
        self.lines: list[tuple[str, str]] = []

    def log(self, priority: str, message: str, **fields: Any) -> None:
        self.lines.append((priority, message))


@pytest.mark.skipif(os.path.exists("/run/dbus/system_bus_socket"), reason="this host has a system bus")
def test_the_unit_watcher_without_a_system_bus_says_so_once_and_tries_again_later() -> None:
    journal = Recorded()
    w = watchers.UnitWatcher(journal, retry_s=0.2)
    got: list[Occurrence] = []
    w.start(got.append)
    failed = EventDef("db.failed", "unit", {"unit": "db.service", "state": "failed"}, ("/bin/true",))
    for _ in range(3):
        w.update([failed])
    notices = [m for p, m in journal.lines if p == "notice"]
    assert len(notices) == 1 and notices[0].startswith("unit events are not watched on this node: no system bus")
    assert not w.connected and w.watching() == [] and got == []
    time.sleep(0.3)
    w.update([failed])  # tried again: the same reason is not logged again
    assert len([m for p, m in journal.lines if p == "notice"]) == 1
    w.update([])
    w.stop()


def test_manager_runs_the_actions_of_the_groups_enabled_here(tmp_path) -> None:
    """Against the fake daemon: the service is registered on n1 (this node), its event's action runs for the
    forced leave of n8 with the incarnation from the status, and is recorded; another service registered only
    elsewhere runs nothing."""
    seen = tmp_path / "seen.txt"
    append = f"import sys; open({str(seen)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')"
    peer = EventDef("web.peer", "membership", {"node": "*", "transition": "forced-leave"},
                    (sys.executable, "-c", append, "${node}", "${transition}", "${incarnation}", "${epoch}"))
    other = EventDef("db.peer", "membership", {"node": "*", "transition": "any"}, (sys.executable, "-c", append, "db"))
    reg = Registry(services={
        "web": ServiceRec(ServiceDef("web", start_command=("/bin/web",), events=(peer,)), True,
                          {"n1": RegEntry(SvcState.REGISTERED, 0)}),
        "db": ServiceRec(ServiceDef("db", start_command=("/bin/db",), events=(other,)), True,
                         {"n2": RegEntry(SvcState.REGISTERED, 0)})})

    def script(conn: int, op: str, message: dict[str, Any]) -> list[dict[str, Any]] | None:
        if op == "status":
            return [{"ok": True, "op": "status", "status": {"node": "n1", "nodes": [
                {"name": "n1", "incarnation": "11"}, {"name": "n8", "incarnation": "8e"}]}}]
        if op == "service":
            assert (message["action"], message["args"]) == ("dump", {"node": "n1"})
            return [{"ok": True, "op": "service", "registry": reg.to_json(), "generation": 3}]
        if op == "register":
            return [{"ok": True, "op": "registered", "level": 40, "name": "events", "barriers": [1, 1, 1],
                     "reattached": False, "join": "waiting"}, notify_message(5, "joining", "n1", 1)]
        if op == "ack":
            follow = [notify_message(6, "forced-leaving", epoch=7)] if message["batch"] == 5 else []
            return [{"ok": True, "op": "acked", "batch": message["batch"]}, *follow]
        return [{"ok": False, "error": f"unknown op {op}"}]

    sock = str(tmp_path / "fake.sock")
    log = tmp_path / "events.jsonl"
    out = tmp_path / "manager.out"
    daemon = FakeDaemon(sock, script)
    proc = start_manager(sock, log, out=out)
    try:
        wait_for("the action recorded", lambda: any(r.get("type") == "occurrence" for r in read_log(log))
                 if log.exists() else False, 15)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        daemon.close()
    assert seen.read_text() == "n8 forced-leave 8e 7\n"
    [occ] = [r for r in read_log(log) if r.get("type") == "occurrence"]
    assert (occ["event"], occ["exit"], occ["out"]["incarnation"], occ["epoch"]) == ("web.peer", 0, "8e", 7)
    text = out.read_text()
    assert "event groups enabled on this node (the service is registered here): web (1 event)" in text
    assert "web.peer (membership: node=n8 transition=forced-leave epoch=7 incarnation=8e): action exit 0" in text
