"""The DLM's local API and CLI without daemons: the wire format of lock
requests, `clusterfw lock` argument splitting, the lock table as `clusterfw
locks` renders it (who counts under the view, who is stale)."""
from __future__ import annotations

import argparse
import json
import socket as socketlib
import subprocess
import time

import pytest

from clusterfw import cli_lock
from clusterfw.client import Connection
from clusterfw.core.dlm import EntryState, LockEntry, LockMode
from clusterfw.core.model import MemberEntry, NodeState, ViewRecord
from clusterfw.node import protocol
from clusterfw.node.dlm_service import describe_area


def req(**fields):
    return protocol.parse_request(json.dumps({"v": 1, **fields}).encode())


# ----------------------------------------------------------------- protocol
def test_lock_requests_parse():
    r = req(op="lock", id=3, name="db", mode="shared", timeout_ms=2500)
    assert (r.op, r.batch, r.name, r.mode, r.timeout_ms, r.try_only) == ("lock", 3, "db", "shared", 2500, False)
    r = req(op="lock", id=1, name="db", timeout_ms=0)
    assert r.mode == "exclusive" and r.try_only
    assert req(op="lock", id=1, name="db").timeout_ms is None
    assert req(op="unlock", id=9).batch == 9
    assert req(op="locks").op == "locks"
    assert {"lock", "unlock"} <= protocol.PRIVILEGED_OPS and "locks" not in protocol.PRIVILEGED_OPS


@pytest.mark.parametrize("fields,complaint", [
    ({"op": "lock", "name": "db"}, "'id'"),
    ({"op": "lock", "id": -1, "name": "db"}, "'id'"),
    ({"op": "lock", "id": 1}, "'name'"),
    ({"op": "lock", "id": 1, "name": ""}, "'name'"),
    ({"op": "lock", "id": 1, "name": "x" * 49}, "'name'"),
    ({"op": "lock", "id": 1, "name": "db", "mode": "write"}, "'mode'"),
    ({"op": "lock", "id": 1, "name": "db", "timeout_ms": -5}, "'timeout_ms'"),
    ({"op": "lock", "id": 1, "name": "db", "timeout_ms": "soon"}, "'timeout_ms'"),
    ({"op": "unlock"}, "'id'"),
])
def test_bad_lock_requests_name_the_field(fields, complaint):
    with pytest.raises(protocol.ProtocolError, match=complaint):
        req(**fields)


# ---------------------------------------------------------- lock arguments
def split(*words: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli_lock.register(sub)
    return cli_lock._split_lock(parser.parse_args(["lock", *words]))


def test_lock_arguments_split_at_the_double_dash():
    ns = split("db", "--timeout", "2", "--shared", "--", "sh", "-c", "echo --shared")
    assert ns.name == "db" and ns.timeout == 2.0 and ns.shared and ns.command == ["sh", "-c", "echo --shared"]
    ns = split("--socket", "/s", "db", "-v", "--", "true")
    assert ns.socket == "/s" and ns.verbose and ns.command == ["true"]


def test_without_double_dash_the_first_other_word_starts_the_command():
    ns = split("db", "--timeout=0", "make", "-j4", "--shared")
    assert ns.name == "db" and ns.timeout == 0 and not ns.shared and ns.command == ["make", "-j4", "--shared"]


def test_lock_usage_errors_exit_64(capsys):
    parser = argparse.ArgumentParser()
    cli_lock.register(parser.add_subparsers())
    assert cli_lock.cmd_lock(parser.parse_args(["lock", "db"])) == cli_lock.EXIT_USAGE
    assert "CMD" in capsys.readouterr().err
    assert cli_lock.cmd_lock(parser.parse_args(["lock", "db", "--bogus", "1", "--", "true"])) == cli_lock.EXIT_USAGE
    assert cli_lock.cmd_lock(parser.parse_args(["lock", "é" * 25, "--", "true"])) == cli_lock.EXIT_USAGE
    assert "1..48" in capsys.readouterr().err


# --------------------------------------------------------------- the table
def test_describe_area_marks_entries_of_departed_incarnations_stale():
    held = LockEntry(1, 0xA1, 4, 7, "db", EntryState.HELD, LockMode.EXCLUSIVE, 5, 12, owner=321,
                     stamp_ms=1_000)
    waiting = LockEntry(2, 0xB2, 2, 7, "db", EntryState.WAITING, LockMode.EXCLUSIVE, 6, 11, owner=654,
                        stamp_ms=2_000)
    stale = LockEntry(3, 0xC3, 9, 8, "old", EntryState.HELD, LockMode.SHARED, 3, 4)
    free = LockEntry(3, 0xC3, 10, 9, "gone", EntryState.FREE, LockMode.SHARED, 3, 4)
    area = {7: {1: held, 2: waiting}, 8: {3: stale}, 9: {3: free}}
    view = _view({1: 0xA1, 2: 0xB2, 3: 0xC4})  # node 3 restarted: a new incarnation
    rows = describe_area(area, view, lambda n: f"n{n}")
    assert [(r["name"], r["state"], r["node"], r["counts"]) for r in rows] == [
        ("db", "held", "n1", True), ("db", "waiting", "n2", True), ("old", "held", "n3", False)]
    assert rows[0]["token"] == 12 and rows[0]["pid"] == 321 and rows[0]["since_unix_ms"] == 1_000
    assert rows[1]["token"] is None  # a waiter has no token yet
    text = cli_lock.format_locks({"cluster": "c", "node": "n1", "read_unix_ms": 5_000, "locks": rows,
                                  "local": [{"name": "db", "pid": 654, "waiting_for": [
                                      {"node": "n1", "why": "held"}]}]})
    assert "db" in text and "n1" in text and "321" in text and "old" not in text
    assert "1 stale entry of departed nodes hidden" in text
    assert "pid 654 on n1 waits for 'db' behind: n1 (held)" in text
    assert "old" in cli_lock.format_locks({"locks": rows, "read_unix_ms": 5_000}, show_all=True)


def _view(incarnations: dict[int, int]) -> ViewRecord:
    """A committed view in which every node is joined."""
    members = tuple(MemberEntry(node_id=n, incarnation=inc, state=NodeState.JOINED)
                    for n, inc in sorted(incarnations.items()))
    return ViewRecord(node_id=1, incarnation=1, seq=3, term=1, epoch=3, members=members)


# ------------------------------------------------- validity while CMD runs
@pytest.fixture
def daemon_pair(tmp_path):
    """A Connection to a stand-in daemon socket and the daemon's end."""
    path = str(tmp_path / "d.sock")
    server = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    conn = Connection(path)
    peer, _ = server.accept()
    yield conn, peer
    peer.close()
    conn.close()
    server.close()


def boot_ms() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME) * 1000.0


def send(peer, **message) -> None:
    peer.sendall(protocol.encode(message))


def test_a_renewal_sent_in_time_counts_even_when_read_late(daemon_pair):
    """The grant's validity has already run out by the time the wrapper
    looks (it was not scheduled), but the daemon's renewal is waiting in the
    socket: it is read before the verdict, and CMD runs to its end."""
    conn, peer = daemon_pair
    send(peer, op="valid", id=1, for_ms=2000, until_boot_ms=boot_ms() + 2000)
    time.sleep(0.05)
    child = subprocess.Popen(["sleep", "0.3"])
    status, lost = cli_lock._supervise(conn, child, time.monotonic() - 1.0)
    assert (status, lost) == (0, None)


def test_a_renewal_ends_when_the_daemon_says_not_when_it_is_read(daemon_pair):
    """A renewal read late must not stretch the validity: its end is the
    daemon's absolute deadline, not receipt + for_ms."""
    conn, peer = daemon_pair
    send(peer, op="valid", id=1, for_ms=5000, until_boot_ms=boot_ms() - 10)
    child = subprocess.Popen(["sleep", "30"])
    started = time.monotonic()
    status, lost = cli_lock._supervise(conn, child, time.monotonic() + 0.2)
    assert lost and "did not renew" in lost
    assert time.monotonic() - started < 2.0
    assert child.returncode is not None  # CMD was killed


def test_no_renewal_loses_the_lock_and_kills_cmd(daemon_pair):
    conn, _peer = daemon_pair
    child = subprocess.Popen(["sleep", "30"])
    started = time.monotonic()
    _status, lost = cli_lock._supervise(conn, child, time.monotonic() + 0.3)
    took = time.monotonic() - started
    assert lost and "did not renew" in lost
    assert 0.25 < took < 2.0
    assert child.returncode == -9


def test_revoked_loses_the_lock_at_once(daemon_pair):
    conn, peer = daemon_pair
    child = subprocess.Popen(["sleep", "30"])
    send(peer, op="revoked", id=1, reason="node fenced")
    _status, lost = cli_lock._supervise(conn, child, time.monotonic() + 30)
    assert lost == "revoked: node fenced"


def test_locks_table_escapes_control_characters_in_lock_and_node_names():
    held = LockEntry(7, 0xA1, 5, 12, "db\n\x1b[2Jx", EntryState.HELD, LockMode.EXCLUSIVE, 1_000, 321)
    rows = describe_area({7: {1: held}}, _view({1: 0xA1}), lambda n: "web\x1b[31m1")
    text = cli_lock.format_locks({"cluster": "c", "node": "web\x1b[31m1", "read_unix_ms": 5_000, "locks": rows,
                                  "local": [{"name": "db\n\x1b[2Jx", "pid": 654,
                                             "waiting_for": [{"node": "web\x1b[31m1", "why": "held"}]}]})
    assert "\x1b" not in text
    assert all(not line.startswith("x") for line in text.splitlines())  # the newline did not split a row
    assert "db\\n\\x1b[2Jx" in text and "web\\x1b[31m1" in text
