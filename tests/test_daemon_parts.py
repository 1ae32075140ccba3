"""The node daemon's parts without a disk: the wire protocol, the subsystem
hub's rules, the socket server against hostile input, sd_notify, the fence
helpers and the status rendering."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from clusterfw.client import Client, Connection, DaemonUnavailable, RequestFailed
from clusterfw.core.election import Decision
from clusterfw.core.model import Kind, LevelSpec, MemberEntry, NodeState, Registration, SlotRecord, Timing, ViewRecord
from clusterfw.host.notify import Notifier
from clusterfw.host.watchdog import Watchdog
from clusterfw.node import api, fencing, protocol
from clusterfw.node.hub import Hub, RegistrationError
from clusterfw.node.status import render
from clusterfw.subsystems.base import Entry, LocalSubsystem, Notification, Transition
from clusterfw.subsystems.placeholders import PlaceholderSubsystem, default_subsystems

REPO = Path(__file__).resolve().parents[1]
TIMING = Timing(100, 200, 600, 1017, 30000, 20)


# ------------------------------------------------------------------ protocol
@pytest.mark.parametrize("line, error", [
    (b"", "not valid JSON"),
    (b"\xff\xfe", "not valid UTF-8"),
    (b"[1,2]", "must be a JSON object"),
    (b'{"op":"status"}', "unsupported protocol version"),
    (b'{"v":2,"op":"status"}', "unsupported protocol version"),
    (b'{"v":true,"op":"status"}', "unsupported protocol version"),
    (b'{"v":1,"op":"dance"}', "unknown op"),
    (b'{"v":1}', "unknown op"),
    (b'{"v":1,"op":"ack"}', "'batch' must be an integer"),
    (b'{"v":1,"op":"ack","batch":0}', "'batch' must be in"),
    (b'{"v":1,"op":"ack","batch":"7"}', "'batch' must be an integer"),
    (b'{"v":1,"op":"register","level":-1,"name":"x"}', "'level' must be in"),
    (b'{"v":1,"op":"register","level":40000,"name":"x"}', "'level' must be in"),
    (b'{"v":1,"op":"register","level":25,"name":""}', "'name' must be"),
    (b'{"v":1,"op":"register","level":25,"name":"twelve-bytes"}', "'name' must be"),
    (b'{"v":1,"op":"register","level":25,"name":"a","barriers":[1,1]}', "'barriers' must be a list"),
    (b'{"v":1,"op":"register","level":25,"name":"a","barriers":[1,0,1]}', "'barriers'[1]"),
    (b'{"v":1,"op":"register","level":25,"name":"a","barriers":[1,9,1]}', "'barriers'[1]"),
    (b'{"v":1,"op":"status","x":NaN}', "not valid JSON"),
    (b"[" * 100000, "larger than"),
])
def test_malformed_requests_are_refused_with_a_reason(line, error):
    with pytest.raises(protocol.ProtocolError, match=error.replace("[", r"\[").replace("]", r"\]")):
        protocol.parse_request(line)


def test_requests_parse():
    assert protocol.parse_request(b'{"v":1,"op":"status"}') == protocol.Request("status")
    assert protocol.parse_request(b'{"v":1,"op":"ack","batch":12}').batch == 12
    req = protocol.parse_request(b'{"v":1,"op":"register","level":25,"name":"app","barriers":[2,1,3]}')
    assert (req.level, req.name, req.barriers) == (25, "app", (2, 1, 3))


def test_random_bytes_never_raise_anything_but_protocol_error():
    rng = random.Random(7)
    for _ in range(3000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        try:
            protocol.parse_request(data)
        except protocol.ProtocolError:
            pass


def test_notification_round_trips_as_json():
    note = Notification(25, 7, 3, (Entry(2, "n2", "joining", 0),), ((1, "n1", "joined"),))
    wire = protocol.encode(note.to_json())
    assert b'"batch":7' in wire and wire.endswith(b"\n")
    assert Notification.from_json(protocol.decode(wire[:-1])) == note


# ----------------------------------------------------------------------- hub
class _Sent:
    def __init__(self) -> None:
        self.sent: list[tuple[int, Notification]] = []
        self.acked: list[tuple[int, int]] = []
        self.logs: list[str] = []

    def hub(self) -> Hub:
        return Hub(ack_core=lambda level, batch: self.acked.append((level, batch)),
                   send=lambda conn, note: self.sent.append((conn, note)) or True,
                   log=lambda _p, text: self.logs.append(text))


def _note(level: int, batch: int) -> Notification:
    return Notification(level, batch, 1, (Entry(1, "n1", "joining", 0),), ())


class _Recorder(LocalSubsystem):
    """An in-process subsystem that records what reaches its one door."""

    def __init__(self, level: int) -> None:
        self.level, self.name = level, "rec"
        self.got: list[tuple[ViewRecord | None, Notification | None]] = []

    def start(self, ack, log) -> None:
        self.ack = ack

    def deliver(self, view, notification=None) -> None:
        self.got.append((view, notification))

    def stop(self) -> None:
        pass


def test_an_in_process_subsystem_gets_typed_batches_and_the_view_through_one_door():
    s = _Sent()
    hub = s.hub()
    rec = _Recorder(25)
    hub.add_local(rec)
    hub.freeze()
    view = ViewRecord(node_id=1, incarnation=1, seq=4, term=1, epoch=4,
                      members=(MemberEntry(node_id=1, incarnation=1, state=NodeState.JOINED),))
    hub.view_adopted(view)
    note = Notification(25, 9, 4, (Entry(2, "n2", Kind.FORCED, 0),), ((1, "n1", "joined"),), view=view)
    assert note.entries[0].kind is Transition.FORCED_LEAVING and note.entries[0].kind.core_kind is Kind.FORCED
    hub.deliver(note)
    assert rec.got == [(view, None), (view, note)]
    [entry] = rec.got[1][1].entries
    assert entry.kind is Transition.FORCED_LEAVING and (entry.node_id, entry.node) == (2, "n2")
    # The wire names exist only at the socket's edge, both ways, and the view stays in-process.
    wire = note.to_json()
    assert wire["entries"][0]["kind"] == "forced-leaving" and "view" not in wire
    back = Notification.from_json(wire)
    assert back == note and back.entries[0].kind is Transition.FORCED_LEAVING and back.view is None
    assert back.entries[0].kind == "forced-leaving"  # socket clients compare it with the wire name, as ever
    with pytest.raises(ValueError, match="unknown transition kind 'exploding'"):
        Notification.from_json(dict(wire, entries=[dict(wire["entries"][0], kind="exploding")]))
    rec.ack(9)
    assert s.acked == [(25, 9)]


def test_hub_registration_rules():
    s = _Sent()
    hub = s.hub()
    hub.add_external(1, Registration(25, "app", (1, 1, 1)))
    with pytest.raises(RegistrationError, match="already registered by 'app'"):
        hub.add_external(2, Registration(25, "other"))
    with pytest.raises(RegistrationError, match="named 'app' is already registered"):
        hub.add_external(2, Registration(26, "app"))
    with pytest.raises(RegistrationError, match="this connection already registered"):
        hub.add_external(1, Registration(27, "more"))
    for level in range(30, 37):
        hub.add_external(100 + level, Registration(level, f"s{level}"))
    with pytest.raises(RegistrationError, match="at most 8 subsystems"):
        hub.add_external(99, Registration(50, "ninth"))
    # before the join a client that goes away takes its registration with it
    hub.detach(1)
    assert "app" not in hub.registered_names()
    regs = hub.freeze()
    assert [r.level for r in regs] == list(range(30, 37))
    with pytest.raises(RegistrationError, match="--wait-for-subsystem late"):
        hub.add_external(5, Registration(60, "late"))


def test_hub_acks_must_name_the_outstanding_batch_and_reattach_resends():
    s = _Sent()
    hub = s.hub()
    reg = Registration(25, "app", (1, 1, 1))
    hub.add_external(1, reg)
    hub.freeze()
    assert hub.external_ack(1, 3) == "batch 3 was never delivered at level 25: nothing is outstanding"
    assert "has not registered" in hub.external_ack(2, 3)
    hub.deliver(_note(25, 4))
    hub.deliver(_note(25, 5))  # supersedes 4
    assert "superseded by batch 5" in hub.external_ack(1, 4)
    assert "never delivered" in hub.external_ack(1, 6)
    assert s.acked == []
    # the client goes away holding batch 5: hung; it re-attaches and gets 5 again
    hub.detach(1)
    assert any("hung" in line for line in s.logs)
    with pytest.raises(RegistrationError):
        hub.add_external(2, Registration(25, "app", (2, 1, 1)))  # not the same registration
    assert hub.add_external(2, reg) is True
    assert s.sent[-1] == (2, _note(25, 5))
    assert hub.external_ack(2, 5) is None
    assert s.acked == [(25, 5)]
    assert "already acked" in hub.external_ack(2, 5)


def test_placeholder_subsystem_acks_every_batch():
    s = _Sent()
    hub = s.hub()
    hub.add_local(PlaceholderSubsystem(10, "dlm"))
    hub.freeze()
    for batch in (1, 2, 3):
        hub.deliver(_note(10, batch))
        deadline = time.monotonic() + 2
        while (10, batch) not in s.acked and time.monotonic() < deadline:
            time.sleep(0.005)
    assert s.acked == [(10, 1), (10, 2), (10, 3)]
    hub.stop()


# -------------------------------------------------------------------- server
class _EchoHandler:
    """Answers like the daemon would, without a daemon."""

    def __init__(self) -> None:
        self.disconnects = 0
        self.holding: set[int] = set()  # connections that hold something (as a lock request)

    def handle(self, peer: api.Peer, request: protocol.Request) -> dict:
        if request.op == "status":
            return {"ok": True, "op": "status", "status": {"uid": peer.uid, "privileged": peer.privileged}}
        if request.op == "register":
            peer.role = "subsystem"
            return {"ok": True, "op": "registered"}
        if request.op == "ack" and request.batch == 13:
            raise RuntimeError("a bug in the handler")
        if request.op == "lock":
            self.holding.add(peer.conn_id)
        return {"ok": True, "op": request.op}

    def disconnected(self, peer: api.Peer) -> None:
        self.disconnects += 1

    def holds(self, peer: api.Peer) -> bool:
        return peer.conn_id in self.holding


@pytest.fixture
def server(tmp_path):
    handler = _EchoHandler()
    logs: list[str] = []
    srv = api.ApiServer(str(tmp_path / "api.sock"), handler, lambda _p, text: logs.append(text), clients_max=8)
    srv.start()
    yield srv, handler, logs
    srv.close(0.2)


def _raw(path: str, data: bytes, read: bool = True) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(data)
        if not read:
            return b""
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass  # closed by the server with our unread input still queued
        return out


def test_server_answers_every_line_and_survives_garbage(server):
    srv, handler, _ = server
    out = _raw(srv.path, b'{"v":1,"op":"status"}\nnot json\n{"v":1,"op":"ack","batch":13}\n\n'
                         b'{"v":1,"op":"status"}\r\n')
    replies = [json.loads(line) for line in out.splitlines()]
    assert [r["ok"] for r in replies] == [True, False, False, True]
    assert "not valid JSON" in replies[1]["error"]
    assert "internal error" in replies[2]["error"]
    rng = random.Random(3)
    for _ in range(60):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))
        _raw(srv.path, junk + b"\n")
    assert Client(srv.path).status()["privileged"] is True


def test_server_refuses_oversized_messages_and_closes(server):
    srv, _, _ = server
    out = _raw(srv.path, b"x" * (protocol.MESSAGE_BYTES_MAX + 10))
    reply = json.loads(out.splitlines()[0])
    assert reply["ok"] is False and "larger than" in reply["error"]
    long_line = b'{"v":1,"op":"status","pad":"' + b"y" * protocol.MESSAGE_BYTES_MAX + b'"}\n'
    assert b"larger than" in _raw(srv.path, long_line)
    assert Client(srv.path).status()


def test_server_bounds_the_number_of_clients(server):
    srv, handler, _ = server  # noqa: RUF059
    held = [Connection(srv.path) for _ in range(8)]
    try:
        for conn in held:  # make sure every one was accepted
            conn.send({"op": "status"})
            assert conn.receive()["ok"]
        extra = Connection(srv.path)
        reply = extra.receive()
        assert reply is not None and reply["ok"] is False and "too many clients" in reply["error"]
        extra.close()
    finally:
        for conn in held:
            conn.close()
    deadline = time.monotonic() + 5
    while handler.disconnects < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert Client(srv.path).status()


def test_partial_lines_and_idle_connections_are_closed_but_holders_and_subscribers_are_kept(tmp_path):
    handler = _EchoHandler()
    srv = api.ApiServer(str(tmp_path / "api.sock"), handler, lambda *_: None, partial_line_timeout_s=0.5,
                        idle_timeout_s=1.0)
    srv.start()
    conns: list[Connection] = []
    try:
        partial, idle, holder, subscriber = (Connection(srv.path) for _ in range(4))
        conns += [partial, idle, holder, subscriber]
        partial._sock.sendall(b'{"v":1,"op":"sta')
        idle.send({"op": "status"})
        holder.send({"op": "lock", "id": 1, "name": "x"})
        subscriber.send({"op": "register", "level": 25, "name": "x"})
        for conn in (idle, holder, subscriber):
            assert conn.receive()["ok"]
        started = time.monotonic()
        reply = partial.receive()
        assert reply is not None and "no complete line" in reply["error"] and partial.receive() is None
        assert 0.4 <= time.monotonic() - started < 1.0
        reply = idle.receive()
        assert reply is not None and "idle for 1 s" in reply["error"] and idle.receive() is None
        assert 0.8 <= time.monotonic() - started < 2.0
        time.sleep(1.0)  # holder and subscriber stay, idle or not
        for conn in (holder, subscriber):
            conn.send({"op": "status"})
            assert conn.receive()["ok"]
    finally:
        for conn in conns:
            conn.close()
        srv.close(0.2)


def test_unprivileged_peers_may_only_ask_for_status():
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    directory = tempfile.mkdtemp(prefix="clusterfw-api-")
    os.chmod(directory, 0o755)  # reachable by uid 65534
    srv = api.ApiServer(os.path.join(directory, "api.sock"), _EchoHandler(), lambda *_: None)
    srv.start()
    code = ("import os, sys, json, socket\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "s.sendall(b'{\"v\":1,\"op\":\"status\"}\\n{\"v\":1,\"op\":\"leave\"}\\n'); s.shutdown(socket.SHUT_WR)\n"
            "print(s.makefile().read())\n")
    try:
        out = subprocess.run([sys.executable, "-c", code, srv.path], capture_output=True, text=True, timeout=30)
    finally:
        srv.close(0.2)
        shutil.rmtree(directory, ignore_errors=True)
    assert out.returncode == 0, out.stderr
    status, leave = [json.loads(line) for line in out.stdout.split("\n") if line.strip()]
    assert status["ok"] and status["status"]["privileged"] is False
    assert leave["ok"] is False and "permission denied" in leave["error"] and "clusterfw" in leave["error"]


def test_unprivileged_peers_cannot_take_the_slots_of_root_and_wait_for_their_rate():
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    directory = tempfile.mkdtemp(prefix="clusterfw-api-")
    os.chmod(directory, 0o755)  # reachable by uid 65534
    srv = api.ApiServer(os.path.join(directory, "api.sock"), _EchoHandler(), lambda *_: None, clients_max=8,
                        unprivileged_max=4, unprivileged_rate_per_s=20)
    srv.start()
    code = ("import os, sys, json, socket, time\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "held = []\n"
            "for _ in range(6):\n"
            "    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(5); held.append(s)\n"
            "refused = []\n"
            "for s in held:\n"
            "    s.settimeout(0.5)\n"
            "    try:\n"
            "        refused.append(b'too many clients' in s.recv(4096))\n"
            "    except TimeoutError:\n"
            "        refused.append(False)\n"
            "    s.settimeout(5)\n"
            "t0 = time.monotonic()\n"
            "held[0].sendall(b'{\"v\":1,\"op\":\"status\"}\\n' * 30)\n"
            "f = held[0].makefile('rb')\n"
            "replies = [json.loads(f.readline()) for _ in range(30)]\n"
            "print(json.dumps({'refused': refused, 'took': time.monotonic() - t0,\n"
            "                  'ok': all(r['ok'] for r in replies)}))\n"
            "sys.stdout.flush(); time.sleep(3)\n")
    child = subprocess.Popen([sys.executable, "-c", code, srv.path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    roots: list[Connection] = []
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        result = json.loads(line) if line else {"stderr": child.stderr.read() if child.stderr else ""}
        assert result.get("refused") == [False] * 4 + [True] * 2, result
        assert result["ok"] and result["took"] >= 0.4, result  # 30 requests at 20 a second after the first 4
        for _ in range(4):  # the four slots kept for privileged peers, while the four others are taken
            roots.append(Connection(srv.path))
            roots[-1].send({"op": "status"})
            assert roots[-1].receive()["ok"]
    finally:
        for conn in roots:
            conn.close()
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        srv.close(0.2)
        shutil.rmtree(directory, ignore_errors=True)


def test_pushes_reach_their_connection_in_order(server):
    srv, _, _ = server
    conn = Connection(srv.path)
    conn.send({"op": "register", "level": 25, "name": "x"})
    assert conn.receive()["op"] == "registered"
    conn_id = max(srv._conns)
    for batch in range(1, 50):
        srv.push(conn_id, _note(25, batch).to_json())
    got = [conn.receive()["batch"] for _ in range(49)]
    assert got == list(range(1, 50))
    srv.broadcast({"op": "progress"}, "subsystem")
    assert conn.receive()["op"] == "progress"
    conn.close()


def test_a_live_socket_is_not_taken_over(server, tmp_path):
    srv, _, _ = server
    with pytest.raises(api.SocketInUse, match="another daemon is listening"):
        api.ApiServer(srv.path, _EchoHandler(), lambda *_: None).start()
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on: removed and reused
    other = api.ApiServer(str(stale), _EchoHandler(), lambda *_: None)
    other.start()
    assert Client(str(stale)).status()
    other.close(0.2)
    assert not stale.exists()


def test_client_errors_name_the_socket(tmp_path):
    with pytest.raises(DaemonUnavailable, match="no clusterfw daemon answers on"):
        Client(str(tmp_path / "nothing.sock")).status()


def test_client_raises_request_failed(server):
    srv, _, _ = server
    with pytest.raises(RequestFailed, match="internal error"):
        Client(srv.path).request("ack", batch=13)


# ----------------------------------------------------------------- sd_notify
def test_notify_fallback_sends_datagrams_to_path_and_abstract_sockets(tmp_path):
    path = str(tmp_path / "notify.sock")
    abstract = f"clusterfw-test-{os.getpid()}"
    for address, bind in ((path, path), ("@" + abstract, "\0" + abstract)):
        rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        rx.bind(bind)
        rx.settimeout(2)
        notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000"})
        notifier.ready("joining")
        notifier.watchdog()
        first = rx.recv(4096).decode().split("\n")
        assert "READY=1" in first and "STATUS=joining" in first
        assert rx.recv(4096) == b"WATCHDOG=1"
        assert notifier.watchdog_usec == 30_000_000
        rx.close()
    Notifier({}).ready("nothing happens without NOTIFY_SOCKET")


# ------------------------------------------------------------------- fencing
def test_managed_units_file(tmp_path):
    assert fencing.read_managed_units(str(tmp_path)) == []
    (tmp_path / "managed-units").write_text("web.service\n\n# comment\n--force\nbad/unit\ndb.service\n")
    assert fencing.read_managed_units(str(tmp_path)) == ["web.service", "db.service"]


def test_kill_namespace_refuses_in_the_hosts_pid_namespace():
    if os.stat("/proc/self/ns/pid").st_ino != fencing.INIT_PID_NAMESPACE_INODE:
        pytest.skip("this test runs inside a PID namespace of its own")
    assert "host's PID namespace" in fencing.pid_namespace_check()


def test_fence_hooks_get_the_reason_and_are_bounded(tmp_path):
    out = tmp_path / "hook.out"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\necho \"$CLUSTERFW_NODE $CLUSTERFW_FENCE_REASON\" > {out}\n")
    hook.chmod(0o755)
    slow = tmp_path / "slow.sh"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    logs: list[str] = []
    fencer = fencing.Fencer(node="n1", action="none", hooks=(str(hook), str(slow)), runtime_dir=str(tmp_path),
                            log=lambda _p, text: logs.append(text))
    old = fencing.HOOK_TIMEOUT_S
    fencing.HOOK_TIMEOUT_S = 0.5
    try:
        start = time.monotonic()
        fencer.kill_units("disk lost")
        assert time.monotonic() - start < 3
    finally:
        fencing.HOOK_TIMEOUT_S = old
    assert out.read_text() == "n1 disk lost\n"
    assert any("did not finish" in line for line in logs)


def test_watchdog_is_fed_until_fenced_and_never_disarmed_after(tmp_path):
    dev = tmp_path / "watchdog"
    dev.write_bytes(b"")
    wd = Watchdog(str(dev), lambda *_: None)
    wd.feed()
    wd.feed()
    wd.fence()
    wd.feed()
    wd.close_gracefully()
    assert dev.read_bytes() == b"\0\0"
    dev.write_bytes(b"")
    wd = Watchdog(str(dev), lambda *_: None)
    wd.feed()
    wd.close_gracefully()
    assert dev.read_bytes() == b"\0V"


# -------------------------------------------------------------------- status
def test_status_renders_states_per_level_and_the_master():
    regs = (Registration(0, "mm"), Registration(10, "dlm"), Registration(30, "sfs"))
    slots = {n: SlotRecord(node_id=n, incarnation=n, seq=5, timing=TIMING, registrations=regs) for n in (1, 2, 3)}
    view = ViewRecord(node_id=1, incarnation=1, seq=9, term=2, epoch=7,
                      levels=tuple(LevelSpec(r.level, r.barriers) for r in regs),
                      members=(MemberEntry(1, 1, NodeState.JOINED),
                               MemberEntry(2, 2, NodeState.JOINING, kind=Kind.JOIN, cursor=10),
                               MemberEntry(3, 3, NodeState.INACTIVE, forced=True)))
    out = render(cluster="lab", names={1: "n1", 2: "n2", 3: "n3", 4: "n4"}, view=view, slots=slots,
                 decision=Decision(2, 1, 1), ages_ms={1: 12.4, 2: 40.0})
    assert (out["cluster"], out["master"], out["epoch"], out["term"], out["services"]) == ("lab", "n1", 7, 2, [])
    n1, n2, n3, n4 = out["nodes"]
    assert n1["master"] and n1["heartbeat_age_ms"] == 12 and n1["levels"] == {"mm": "joined", "dlm": "joined",
                                                                               "sfs": "joined"}
    assert n2["state"] == "joining" and n2["levels"] == {"mm": "joined", "dlm": "joining", "sfs": "inactive"}
    assert n3["state"] == "inactive" and n3["forced"] and n3["heartbeat_age_ms"] is None
    assert n4["name"] == "n4" and n4["state"] == "inactive" and n4["incarnation"] is None


def test_status_gives_incarnations_as_hex_strings_that_survive_a_double():
    """A 63-bit incarnation as a JSON number is rounded by jq (a double holds
    53 bits); status gives the same hex string as locks and the log lines."""
    big = (1 << 62) + 12345
    slots = {1: SlotRecord(node_id=1, incarnation=big, seq=5, timing=TIMING),
             2: SlotRecord(node_id=2, incarnation=0xBEEF, seq=5, timing=TIMING)}
    view = ViewRecord(node_id=1, incarnation=big, seq=9, term=2, epoch=7,
                      members=(MemberEntry(1, big, NodeState.JOINED),))
    out = json.loads(json.dumps(render(cluster="lab", names={1: "n1", 2: "n2"}, view=view, slots=slots,
                                       decision=Decision(2, 1, big), ages_ms={})))
    n1, n2 = out["nodes"]
    assert n1["incarnation"] == "4000000000003039" and int(n1["incarnation"], 16) == big
    assert n2["incarnation"] == "beef"  # not in the view: its slot's
    assert float(big) != big  # what a JSON number would have lost


def test_disk_dump_json_gives_every_incarnation_as_a_hex_string():
    """`disk dump --json`: the slot's, its lease's and the view's members'
    incarnations are hex strings too; other numbers stay numbers."""
    from clusterfw.cli.disk import jsonable
    from clusterfw.core.model import Lease

    big = (1 << 62) + 7
    rec = SlotRecord(node_id=1, incarnation=big, seq=5, timing=TIMING,
                     lease=Lease(term=3, inp_incarnation=big, master=1, master_incarnation=0xABC))
    out = json.loads(json.dumps(jsonable(rec)))
    assert (out["incarnation"], out["lease"]["inp_incarnation"], out["lease"]["master_incarnation"]) == (
        f"{big:x}", f"{big:x}", "abc")
    assert out["seq"] == 5 and out["lease"]["term"] == 3
    view = jsonable(ViewRecord(node_id=1, incarnation=big, seq=9, term=2, epoch=7,
                               members=(MemberEntry(1, 0xBEEF, NodeState.JOINED),)))
    assert view["incarnation"] == f"{big:x}" and view["members"][0]["incarnation"] == "beef"


def test_status_shows_placeholder_levels_as_placeholder_never_joined():
    hub = _Sent().hub()
    for sub in default_subsystems():
        hub.add_local(sub)
    try:
        assert hub.placeholder_levels() == {20, 30}
        assert [(s["name"], s["placeholder"]) for s in hub.describe()] == [("mm", False), ("vdm", True),
                                                                          ("sfs", True)]
        regs = (Registration(0, "mm"), Registration(10, "dlm"), Registration(20, "vdm"), Registration(30, "sfs"))
        slots = {n: SlotRecord(node_id=n, incarnation=n, seq=5, timing=TIMING, registrations=regs) for n in (1, 2)}
        view = ViewRecord(node_id=1, incarnation=1, seq=9, term=2, epoch=7,
                          levels=tuple(LevelSpec(r.level, r.barriers) for r in regs),
                          members=(MemberEntry(1, 1, NodeState.JOINED),
                                   MemberEntry(2, 2, NodeState.JOINING, kind=Kind.JOIN, cursor=20)))
        out = render(cluster="lab", names={1: "n1", 2: "n2"}, view=view, slots=slots, decision=Decision(2, 1, 1),
                     ages_ms={}, placeholders=hub.placeholder_levels())
        n1, n2 = out["nodes"]
        assert n1["levels"] == {"mm": "joined", "dlm": "joined", "vdm": "placeholder", "sfs": "placeholder"}
        assert n2["levels"] == {"mm": "joined", "dlm": "joined", "vdm": "joining", "sfs": "inactive"}
    finally:
        hub.stop()


def test_cli_status_formats_a_table():
    from clusterfw.cli.node import format_status
    text = format_status({"cluster": "lab", "master": "n1", "epoch": 3, "term": 1, "source": "daemon",
                          "node": "n2", "phase": "running", "fenced": None,
                          "nodes": [{"name": "n1", "id": 1, "state": "joined", "levels": {"mm": "joined"},
                                     "heartbeat_age_ms": 20, "master": True},
                                    {"name": "n2", "id": 2, "state": "inactive", "levels": {"mm": "inactive"},
                                     "heartbeat_age_ms": None, "forced": True}]})
    lines = text.splitlines()
    assert "master n1" in lines[0] and "epoch 3" in lines[0]
    assert lines[2].split() == ["NODE", "ID", "STATE", "MM", "HEARTBEAT"]
    assert lines[3].split()[:3] == ["n1*", "1", "joined"] and lines[3].endswith("20 ms ago")
    assert "inactive (forced)" in lines[4] and lines[4].endswith("?")


def test_threads_are_not_leaked_by_the_parts():
    before = threading.active_count()
    hub = _Sent().hub()
    hub.add_local(PlaceholderSubsystem(0, "mm"))
    hub.stop()
    deadline = time.monotonic() + 2
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before


# ------------------------------------------------------------------- journal
def test_journal_native_protocol_carries_the_fields(tmp_path, monkeypatch):
    from clusterfw.host import journal as journal_mod
    path = str(tmp_path / "journal.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(2)
    monkeypatch.setattr(journal_mod, "JOURNAL_SOCKET", path)
    j = journal_mod.Journal("n1", use_journal=False)
    j._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # the native sink, as without systemd-python
    j.notice("state joining -> joined", EPOCH=7, TERM=2, TRANSITION="joining->joined", LEVEL=None)
    j.error("two\nlines")
    first = rx.recv(65536).decode().splitlines()
    assert {"MESSAGE=state joining -> joined", "PRIORITY=5", "NODE=n1", "EPOCH=7", "TERM=2",
            "TRANSITION=joining->joined", "SYSLOG_IDENTIFIER=clusterfw"} <= set(first)
    assert not any(line.startswith("LEVEL=") for line in first)
    second = rx.recv(65536)
    assert b"MESSAGE=two\\nlines\n" in second  # escaped: one line, also in `journalctl -o cat`


def test_journal_falls_back_to_stderr_lines(capsys):
    from clusterfw.host.journal import Journal
    Journal("n2", use_journal=False).warning("disk slow", EPOCH=3)
    err = capsys.readouterr().err
    assert "clusterfw[n2] warning: disk slow (EPOCH=3)" in err


def test_journal_keeps_every_entry_on_one_line_with_control_characters_escaped(capsys):
    """A lock name (from any local client) with a newline and an ANSI escape
    cannot split an entry or reach the reader's terminal."""
    from clusterfw.host.journal import Journal
    Journal("n2", use_journal=False).info("dlm: lock 'db\nfake entry \x1b[31mred\x7f\x9b' released", LOCK="a\nb")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "\x7f" not in err and "\x9b" not in err
    assert "lock 'db\\nfake entry \\x1b[31mred\\x7f\\x9b' released (LOCK=a\\nb)" in err
