"""The DLM's local API and CLI without daemons: the wire format of lock
requests, `clusterfw lock` argument splitting, the lock table as `clusterfw
locks` renders it (who counts under the view, who is stale)."""
from __future__ import annotations

import argparse
import json
import os
import socket as socketlib
import subprocess
import sys
import time

import pytest
from test_daemon_loop import daemon_env

from clusterfw.cli import lock as cli_lock
from clusterfw.client import Connection
from clusterfw.core.dlm import EntryState, LockEntry, LockMode
from clusterfw.core.model import MemberEntry, NodeState, ViewRecord
from clusterfw.node import protocol
from clusterfw.subsystems.dlm.service import describe_area


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


# ------------------------------------------------- a socket that was named
def test_a_named_socket_that_does_not_answer_fails_and_never_asks_a_lab(tmp_path, monkeypatch, capsys):
    from clusterfw import cli
    from clusterfw.cli import lab as cli_lab

    asked: list[list[str]] = []

    def lab_node(argv, timeout):
        asked.append(argv)
        return None  # no lab answers: the command fails the old way

    monkeypatch.setattr(cli_lab, "ask_lab_node", lab_node)
    monkeypatch.setattr(protocol, "DEFAULT_SOCKET", str(tmp_path / "default.sock"))
    monkeypatch.delenv("CLUSTERFW_SOCKET", raising=False)
    stale = tmp_path / "stale.sock"  # a socket file nobody listens on
    s = socketlib.socket(socketlib.AF_UNIX)
    s.bind(str(stale))
    s.close()
    missing = str(tmp_path / "missing.sock")
    for command in ("status", "locks"):
        for path in (missing, str(stale)):
            assert cli.main([command, "--socket", path]) == 1
            err = capsys.readouterr().err
            assert f"no clusterfw daemon answers on {path}" in err and "--socket" in err, err
            assert "Traceback" not in err
        monkeypatch.setenv("CLUSTERFW_SOCKET", missing)
        assert cli.main([command]) == 1
        assert "$CLUSTERFW_SOCKET" in capsys.readouterr().err
        monkeypatch.delenv("CLUSTERFW_SOCKET")
        assert asked == []
        assert cli.main([command]) == 1  # nobody named a socket: the default may fall back to a lab
        assert len(asked) == 1
        asked.clear()
        capsys.readouterr()


def test_lock_reads_the_socket_from_the_environment(tmp_path, monkeypatch, capsys):
    """`lock` uses $CLUSTERFW_SOCKET like every other client command (it
    used to ignore it and always ask the default socket)."""
    from clusterfw import cli

    monkeypatch.setattr(protocol, "DEFAULT_SOCKET", str(tmp_path / "default.sock"))
    env_socket = str(tmp_path / "env.sock")
    monkeypatch.setenv("CLUSTERFW_SOCKET", env_socket)
    assert cli.main(["lock", "db", "--", "true"]) == cli_lock.EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert f"no clusterfw daemon answers on {env_socket}" in err and "$CLUSTERFW_SOCKET" in err, err
    given = str(tmp_path / "given.sock")  # --socket still wins over the environment
    assert cli.main(["lock", "db", "--socket", given, "--", "true"]) == cli_lock.EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert f"answers on {given}" in err and "--socket" in err, err


@pytest.mark.parametrize("command,reply", [
    ("status", {"cluster": "c", "master": "n2", "epoch": 4, "term": 1, "source": "daemon", "node": "n2",
                "phase": "joined", "nodes": [{"name": "n2", "id": 2, "state": "joined", "master": True,
                                              "levels": {"mm": "joined"}, "heartbeat_age_ms": 40}]}),
    ("locks", {"cluster": "c", "node": "n2", "read_unix_ms": 5_000, "locks": [], "local": []}),
])
def test_asking_a_lab_node_is_never_silent(tmp_path, monkeypatch, capsys, command, reply):
    """With no daemon on the default socket and a lab that answers, `status`
    and `locks` say that they asked a lab node and name the `lab exec`
    command that does the same -- with --json too, on stderr, so that
    stdout stays the JSON a script reads; without a lab the error names
    that command."""
    from clusterfw import cli
    from clusterfw.cli import lab as cli_lab

    monkeypatch.setattr(protocol, "DEFAULT_SOCKET", str(tmp_path / "default.sock"))
    monkeypatch.delenv("CLUSTERFW_SOCKET", raising=False)
    monkeypatch.setattr(cli_lab, "ask_lab_node", lambda argv, timeout: ("n2", json.loads(json.dumps(reply))))
    assert cli.main([command, "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["node"] == "n2"
    assert "no clusterfw daemon answers on" in err and "asked lab node n2" in err, err
    assert f"'clusterfw lab exec n2 -- clusterfw {command} --json'" in err, err
    assert cli.main([command]) == 0
    out, err = capsys.readouterr()
    first, rest = out.split("\n", 1)
    assert "asked lab node n2" in first and f"'clusterfw lab exec n2 -- clusterfw {command}'" in first, out
    assert "cluster c" in rest and not err
    monkeypatch.setattr(cli_lab, "ask_lab_node", lambda argv, timeout: None)
    assert cli.main([command]) == 1
    err = capsys.readouterr().err
    assert "no clusterfw daemon answers on" in err and f"'clusterfw lab exec NODE -- clusterfw {command}'" in err


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


def test_a_zero_validity_with_a_reason_is_a_revocation(daemon_pair):
    """The daemon stops vouching (a graceful leave began) before its
    revocation arrives: CMD is killed at once and the reason is named, not
    reported as a missed renewal."""
    conn, peer = daemon_pair
    child = subprocess.Popen(["sleep", "30"])
    send(peer, op="valid", id=1, for_ms=0, until_boot_ms=boot_ms(), reason="the node is leaving")
    started = time.monotonic()
    _status, lost = cli_lock._supervise(conn, child, time.monotonic() + 30)
    assert lost == "revoked: the node is leaving"
    assert time.monotonic() - started < 2.0 and child.returncode == -9


# ------------------------------------------- LOST: nothing of CMD survives
LOST_REPEATS = 50
# The case (the statement after the killed sleep), a grandchild in
# CMD's group, and one that left it for a session of its own and whose
# parent exited (a daemon's double fork): none of them may write.
LOST_CMD = ('echo $$ > started; (sleep 1; echo x > grandchild) & '
            '(setsid sh -c "echo \\$\\$ > escaped.pid; sleep 1; echo x > escaped" &); '
            'sleep 30; echo x > next-statement')


def pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies."""
    import psutil

    out = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc.pid)
        except (OSError, psutil.Error):
            pass
    return out


def _wait_file(path, timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.005)
    raise AssertionError(f"{path} was not written within {timeout_s} s")


def _grant_then_revoke(server, run_dir) -> tuple[int, int]:
    """Serve one `clusterfw lock` as its daemon would: queue, grant, and once
    CMD and its escaped grandchild run, revoke.  Returns (CMD's pid, the
    escaped grandchild's pid)."""
    peer, _ = server.accept()
    with peer:
        peer.settimeout(10)
        line = b""
        while not line.endswith(b"\n"):
            chunk = peer.recv(4096)
            assert chunk, "the lock command closed the connection before asking"
            line += chunk
        ask = json.loads(line)
        assert ask["op"] == "lock" and ask["name"] == "lost"
        send(peer, ok=True, op="lock-queued", id=ask["id"], name="lost", node="n1")
        send(peer, op="granted", id=ask["id"], name="lost", mode="exclusive", token=7, valid_ms=60_000,
             until_boot_ms=boot_ms() + 60_000)
        pid = int(_wait_file(run_dir / "started"))
        escaped = int(_wait_file(run_dir / "escaped.pid"))
        send(peer, op="revoked", id=ask["id"], name="lost", reason="node fenced")
        return pid, escaped


def test_a_lost_lock_kills_everything_cmd_started_50_times(tmp_path):
    """LOST kills CMD's process group at once and every descendant that left
    it: the shell runs no next statement, no grandchild writes -- checked
    right after LOST and again 3 s after the last of 50 runs."""
    path = str(tmp_path / "d.sock")
    server = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(15)
    started: list[int] = []
    procs: list[subprocess.Popen] = []
    try:
        begun = time.monotonic()
        for i in range(LOST_REPEATS):
            run_dir = tmp_path / f"run{i}"
            run_dir.mkdir()
            proc = subprocess.Popen([sys.executable, "-m", "clusterfw.cli", "lock", "lost", "--socket", path,
                                     "--", "sh", "-c", LOST_CMD], cwd=run_dir, env=daemon_env(),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(proc)
            pid, escaped = _grant_then_revoke(server, run_dir)
            started += [pid, escaped]
            _out, err = proc.communicate(timeout=15)
            assert proc.returncode == cli_lock.EXIT_LOST, err
            assert "LOST" in err and f"process group {pid}" in err, err
            # the moment `clusterfw lock` reports LOST, nothing of CMD runs
            assert group_members(pid) == [], f"run {i}: CMD's group survived LOST"
            assert not pid_alive(escaped), f"run {i}: a grandchild in a session of its own survived LOST"
            assert not list(run_dir.glob("next-statement")), f"run {i}: the shell ran its next statement"
        took = time.monotonic() - begun
        time.sleep(3.0)  # the grandchildren would have written 1 s after they started
        written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("run*/*")
                         if p.name in ("next-statement", "grandchild", "escaped"))
        assert written == [], f"written after LOST: {written}"
        print(f"\n[measure] {LOST_REPEATS} LOST runs (grant, CMD started, revoked, all killed): {took:.1f} s")
    finally:
        server.close()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        import psutil
        for pid in started:
            if pid_alive(pid):
                psutil.Process(pid).kill()


# ------------------------------------------ an interactive CMD, job control
def _serve_one_lock(server, seen: dict) -> None:
    """A stand-in daemon for one `clusterfw lock`: grant (valid for a
    minute), answer the unlock, note the client's pid."""
    try:
        peer, _ = server.accept()
    except OSError:
        return
    with peer:
        creds = peer.getsockopt(socketlib.SOL_SOCKET, socketlib.SO_PEERCRED, 12)
        seen["pid"] = int.from_bytes(creds[:4], sys.byteorder)
        stream = peer.makefile("rb")
        for line in stream:
            ask = json.loads(line)
            if ask["op"] == "lock":
                send(peer, ok=True, op="lock-queued", id=ask["id"], name=ask["name"], node="n1")
                send(peer, op="granted", id=ask["id"], name=ask["name"], mode="exclusive", token=3,
                     valid_ms=60_000, until_boot_ms=boot_ms() + 60_000)
            elif ask["op"] == "unlock":
                send(peer, ok=True, op="unlocking", id=ask["id"])
                send(peer, op="released", id=ask["id"], name="tty")
                seen["released"] = True


def _expect(fd: int, text: str, seen: bytearray, timeout_s: float = 10.0) -> None:
    import select

    deadline = time.monotonic() + timeout_s
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the terminal never showed {text!r}; it showed:\n{seen.decode(errors='replace')}")
        if select.select([fd], [], [], left)[0]:
            try:
                seen += os.read(fd, 4096)
            except OSError:  # the terminal closed
                raise AssertionError(f"the terminal closed before {text!r}:\n{seen.decode(errors='replace')}")


def test_an_interactive_cmd_gets_the_terminal_and_ctrl_z_stops_the_job(tmp_path):
    """In an interactive shell, CMD (in its own process group) reads the
    terminal, Ctrl-Z stops the job as a whole, `fg` continues it, and Ctrl-C
    reaches CMD: the lock command exits with CMD's status, 130."""
    import pty
    import threading

    import psutil

    path = str(tmp_path / "d.sock")
    server = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    seen: dict = {}
    thread = threading.Thread(target=_serve_one_lock, args=(server, seen), daemon=True)
    thread.start()
    env = {**daemon_env(), "PS1": "$ ", "TERM": "dumb"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: an interactive shell with job control on the terminal
        try:
            os.execve("/bin/bash", ["bash", "--norc", "--noprofile", "-i"], env)
        finally:
            os._exit(127)
    out = bytearray()
    try:
        _expect(fd, "$ ", out)
        os.write(fd, f"{sys.executable} -m clusterfw.cli lock tty --socket {path} -- "
                     f"sh -c 'echo rea''dy; read l; echo got-$l; sleep 30'\n".encode())
        _expect(fd, "ready", out)
        time.sleep(0.3)  # CMD waits in read, with the terminal
        os.write(fd, b"\x1a")  # Ctrl-Z
        _expect(fd, "Stopped", out)
        assert psutil.Process(seen["pid"]).status() == psutil.STATUS_STOPPED  # the lock command stopped too
        os.write(fd, b"fg\n")
        time.sleep(0.3)
        os.write(fd, b"hello\n")
        _expect(fd, "got-hello", out)
        time.sleep(0.2)
        os.write(fd, b"\x03")  # Ctrl-C: to CMD's group, which has the terminal
        os.write(fd, b"echo rc=$?\n")
        _expect(fd, "rc=130", out)
        assert seen.get("released")
    finally:
        server.close()
        for proc in psutil.Process(pid).children(recursive=True) if psutil.pid_exists(pid) else []:
            try:
                proc.kill()
            except psutil.Error:
                pass
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
def test_locks_table_escapes_control_characters_in_lock_and_node_names():
    held = LockEntry(7, 0xA1, 5, 12, "db\n\x1b[2Jx", EntryState.HELD, LockMode.EXCLUSIVE, 1_000, 321)
    rows = describe_area({7: {1: held}}, _view({1: 0xA1}), lambda n: "web\x1b[31m1")
    text = cli_lock.format_locks({"cluster": "c", "node": "web\x1b[31m1", "read_unix_ms": 5_000, "locks": rows,
                                  "local": [{"name": "db\n\x1b[2Jx", "pid": 654,
                                             "waiting_for": [{"node": "web\x1b[31m1", "why": "held"}]}]})
    assert "\x1b" not in text
    assert all(not line.startswith("x") for line in text.splitlines())  # the newline did not split a row
    assert "db\\n\\x1b[2Jx" in text and "web\\x1b[31m1" in text


# ----------------------------------------------- a timeout names the holder
def test_lock_timeout_prints_who_holds_the_lock_and_exits_with_the_conflict_code(tmp_path, capsys):
    """The daemon's denial (kind timeout) names the holder; `clusterfw lock`
    prints that reason, not a bare "timeout", and exits with the conflict
    code; the command never runs."""
    import threading

    from clusterfw import cli

    path = str(tmp_path / "d.sock")
    server = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    reason = "timeout after 0.2 s: held by pid 321 on n1 since 12:00:01"
    asked: dict = {}

    def serve() -> None:
        peer, _ = server.accept()
        with peer:
            ask = json.loads(peer.makefile("rb").readline())
            asked.update(ask)
            send(peer, ok=True, op="lock-queued", id=ask["id"], name=ask["name"], node="n2")
            send(peer, op="denied", id=ask["id"], name=ask["name"], kind="timeout", reason=reason,
                 blockers=[{"node": "n1", "why": "held", "pid": 321, "since_unix_ms": 1}])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ran = tmp_path / "ran"
    code = cli.main(["lock", "db", "--timeout", "0.2", "--conflict-exit-code", "9", "--socket", path, "--",
                     "touch", str(ran)])
    thread.join(5)
    server.close()
    assert asked["timeout_ms"] == 200
    assert code == 9
    assert f"'db' not acquired: {reason}" in capsys.readouterr().err
    assert not ran.exists()
