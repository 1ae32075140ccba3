"""The DLM in real daemons on a real loop device: ``clusterfw lock`` and
``clusterfw locks`` against three ``clusterfw daemon`` processes (lab
timing).  Mutual exclusion and fencing tokens through real processes, the
flock-like exit codes, a lock that dies with its holder, a holder's daemon
killed or paused, a waiter told that a dead node's lock was recovered.

Only processes these tests started are signalled, by PID; the loop device
is detached even when a test fails."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Iterator

import pytest

from test_daemon_loop import NODES, REPO, Cluster, daemon_env, cli, formatted_cluster, wait_for

from clusterfw.client import Connection

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def dlm_cluster(lun_root) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root and loop devices")
    with formatted_cluster(lun_root, "dlm", "locks") as c:
        c.ensure_all_joined(timeout_s=30)
        yield c


def lock_cmd(c: Cluster, node: str, name: str, *cmd: str, opts: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "clusterfw.cli", "lock", name, "--socket", c.socket(node), *opts, "--", *cmd]


def run_lock(c: Cluster, node: str, name: str, *cmd: str, opts: tuple[str, ...] = (),
             timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(lock_cmd(c, node, name, *cmd, opts=opts), capture_output=True, text=True,
                          env=daemon_env(), cwd=REPO, timeout=timeout)


def start_lock(c: Cluster, node: str, name: str, *cmd: str, opts: tuple[str, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen(lock_cmd(c, node, name, *cmd, opts=opts), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=daemon_env(), cwd=REPO)


def locks_json(c: Cluster, node: str, *extra: str) -> dict:
    out = cli("locks", "--json", "--socket", c.socket(node), *extra)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_held(c: Cluster, name: str, node: str, observer: str = "n3", timeout_s: float = 10) -> dict:
    def held():
        rows = locks_json(c, observer)["locks"]
        return next((r for r in rows if r["name"] == name and r["state"] == "held" and r["node"] == node), None)
    return wait_for(f"{node} to hold {name}", held, timeout_s, 0.1)


# --------------------------------------------------------------------------
def test_lock_runs_the_command_with_a_growing_fencing_token(dlm_cluster):
    c = dlm_cluster
    out = run_lock(c, "n1", "alpha", "sh", "-c", 'echo "$CLUSTERFW_LOCK_NAME $CLUSTERFW_LOCK_MODE '
                                                 '$CLUSTERFW_LOCK_TOKEN $CLUSTERFW_LOCK_NODE"')
    assert out.returncode == 0, out.stderr
    name, mode, token, node = out.stdout.split()
    assert (name, mode, node) == ("alpha", "exclusive", "n1") and int(token) >= 1
    again = run_lock(c, "n2", "alpha", "sh", "-c", 'echo $CLUSTERFW_LOCK_TOKEN')
    assert again.returncode == 0, again.stderr
    assert int(again.stdout) > int(token)  # strictly increasing per lock, across nodes
    # released: nothing is held or asked for any more
    assert not [r for r in locks_json(c, "n3")["locks"] if r["name"] == "alpha"]


def test_flock_like_exit_codes(dlm_cluster, tmp_path):
    c = dlm_cluster
    assert run_lock(c, "n1", "codes", "sh", "-c", "exit 7").returncode == 7
    assert run_lock(c, "n1", "codes", "sh", "-c", "kill -9 $$").returncode == 128 + 9
    missing = run_lock(c, "n1", "codes", "/nonexistent/cmd")
    assert missing.returncode == 127 and "not found" in missing.stderr
    assert run_lock(c, "n1", "x" * 49, "true").returncode == 64
    nocmd = subprocess.run([sys.executable, "-m", "clusterfw.cli", "lock", "codes", "--socket", c.socket("n1")],
                           capture_output=True, text=True, env=daemon_env(), cwd=REPO, timeout=30)
    assert nocmd.returncode == 64 and "CMD" in nocmd.stderr
    nodaemon = run_lock(c, "n1", "codes", "true", opts=("--socket", str(tmp_path / "none.sock")))
    assert nodaemon.returncode == 69 and "daemon" in nodaemon.stderr
    # busy: another node holds it
    holder = start_lock(c, "n2", "codes", "sleep", "30")
    try:
        wait_held(c, "codes", "n2")
        busy = run_lock(c, "n1", "codes", "true", opts=("--timeout", "0"))
        assert busy.returncode == 1, busy.stderr
        assert run_lock(c, "n1", "codes", "true", opts=("--timeout", "0", "--conflict-exit-code", "9")).returncode == 9
        start = time.monotonic()
        timed = run_lock(c, "n3", "codes", "true", opts=("--timeout", "0.5"))
        waited = time.monotonic() - start
        assert timed.returncode == 1 and "timeout after 0.5 s: held by pid " in timed.stderr, timed.stderr
        assert " on n2 since " in timed.stderr, timed.stderr  # who holds it, and since when
        assert waited >= 0.5
    finally:
        holder.send_signal(signal.SIGTERM)  # forwarded to sleep; the lock is released
        assert holder.wait(15) == 128 + signal.SIGTERM
    assert run_lock(c, "n1", "codes", "true", opts=("--timeout", "0")).returncode == 0


def test_mutual_exclusion_and_token_order_across_nodes(dlm_cluster, tmp_path):
    c = dlm_cluster
    counter = tmp_path / "counter"
    counter.write_text("0\n")
    journal = tmp_path / "tokens"
    # read, pause, write back: without the lock updates get lost
    step = (f'n=$(cat {counter}); sleep 0.01; echo $((n+1)) > {counter}; '
            f'echo "$((n+1)) $CLUSTERFW_LOCK_TOKEN" >> {journal}')
    loop = f"for i in $(seq 15); do {sys.executable} -m clusterfw.cli lock shared-counter --socket $SOCK -- sh -c '{step}' || exit 1; done"
    procs = []
    for node in NODES:
        for _ in range(2):
            procs.append(subprocess.Popen(["sh", "-c", loop], env={**daemon_env(), "SOCK": c.socket(node)}, cwd=REPO,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert int(counter.read_text()) == 6 * 15
    rows = [tuple(map(int, line.split())) for line in journal.read_text().splitlines()]
    assert [value for value, _ in rows] == list(range(1, 91))
    tokens = [token for _, token in rows]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)  # strictly increasing


def test_shared_holders_coexist_and_exclusive_waits(dlm_cluster):
    c = dlm_cluster
    readers = [start_lock(c, node, "books", "sleep", "2", opts=("--shared",)) for node in ("n1", "n2")]
    try:
        def both():
            rows = [r for r in locks_json(c, "n3")["locks"] if r["name"] == "books" and r["state"] == "held"]
            return rows if {r["node"] for r in rows} == {"n1", "n2"} else None
        rows = wait_for("two shared holders", both, 10, 0.1)
        assert all(r["mode"] == "shared" for r in rows)
        busy = run_lock(c, "n3", "books", "true", opts=("--timeout", "0"))
        assert busy.returncode == 1
        assert run_lock(c, "n3", "books", "true", opts=("--timeout", "0", "--shared")).returncode == 0
        start = time.monotonic()
        writer = run_lock(c, "n3", "books", "true", opts=("--timeout", "20"))
        assert writer.returncode == 0, writer.stderr
        assert time.monotonic() - start > 0.3  # it had to wait for the readers
    finally:
        for r in readers:
            r.wait(15)


def test_locks_shows_holder_since_token_and_waiter(dlm_cluster):
    c = dlm_cluster
    holder = start_lock(c, "n1", "report", "sleep", "30")
    waiter = None
    try:
        row = wait_held(c, "report", "n1")
        waiter = start_lock(c, "n2", "report", "true")
        def waiting():
            rows = [r for r in locks_json(c, "n3")["locks"] if r["name"] == "report"]
            return rows if any(r["state"] == "waiting" and r["node"] == "n2" for r in rows) else None
        rows = wait_for("n2 waiting", waiting, 10, 0.1)
        held = next(r for r in rows if r["state"] == "held")
        assert held["node"] == "n1" and held["token"] == row["token"] and held["counts"]
        assert held["pid"] is not None and held["since_unix_ms"] <= time.time() * 1000
        local = locks_json(c, "n2")["local"]
        assert any(r["name"] == "report" and r["state"] == "waiting"
                   and {"node": "n1", "why": "held"} in r["waiting_for"] for r in local)
        text = cli("locks", "--socket", c.socket("n2"))
        assert text.returncode == 0
        assert "report" in text.stdout and "held" in text.stdout and "waiting" in text.stdout
        assert "waits for 'report' behind: n1 (held)" in text.stdout
        # the raw sectors, read from the disk by the admin tool
        dump = cli("disk", "dump", c.device)
        assert dump.returncode == 0, dump.stderr
        assert f"held 'report' exclusive ticket={held['ticket']} token={held['token']}" in dump.stdout
        assert "waiting 'report'" in dump.stdout
        raw = json.loads(cli("disk", "dump", c.device, "--json").stdout)["locks"]
        assert any(r["record"]["name"] == "report" and r["record"]["state"] == "held"
                   and r["record"]["owner"] == held["pid"] for r in raw)
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(15)
        if waiter is not None:
            assert waiter.wait(15) == 0


def test_a_lock_dies_with_its_last_holder(dlm_cluster):
    c = dlm_cluster
    wrapper = start_lock(c, "n1", "orphan", "sleep", "60")
    wait_held(c, "orphan", "n1")
    import psutil
    child = wait_for("the command", lambda: psutil.Process(wrapper.pid).children(), 5)[0]
    os.kill(wrapper.pid, signal.SIGKILL)  # the wrapper dies; the command keeps the connection (flock-like)
    wrapper.wait(5)
    time.sleep(0.5)
    assert run_lock(c, "n2", "orphan", "true", opts=("--timeout", "0")).returncode == 1
    child.kill()
    child.wait(5)
    assert run_lock(c, "n2", "orphan", "true", opts=("--timeout", "5")).returncode == 0


def test_holder_daemon_killed_command_killed_waiter_gets_lock_after_forced_leave(dlm_cluster):
    c = dlm_cluster
    c.ensure_all_joined()
    victim = next(n for n in NODES if n != c.master())
    other = next(n for n in NODES if n not in (victim,))
    holder = start_lock(c, victim, "victim-lock", "sleep", "60")
    wait_held(c, "victim-lock", victim, observer=other)
    waiter = start_lock(c, other, "victim-lock", "sh", "-c", "echo $CLUSTERFW_LOCK_TOKEN", opts=("--verbose",))
    wait_for("the waiter", lambda: any(r["state"] == "waiting" for r in locks_json(c, other)["locks"]
                                       if r["name"] == "victim-lock"), 10, 0.1)
    start = time.monotonic()
    c.signal(victim, signal.SIGKILL)
    assert holder.wait(5) == 75  # the daemon went away: the command was killed
    out, err = waiter.communicate(timeout=30)
    took = time.monotonic() - start
    print(f"\n[measure] holder's daemon killed -> waiter on another node granted: {took * 1000:.0f} ms")
    assert waiter.returncode == 0, err
    assert "recovered" in err and victim in err
    assert took >= 1.0  # never before the dead timeout
    c.wait_exit(victim, 5)


def test_paused_daemon_stops_its_lock_holder_before_others_get_the_lock(dlm_cluster, tmp_path):
    c = dlm_cluster
    c.ensure_all_joined()
    victim = next(n for n in NODES if n != c.master())
    other = next(n for n in NODES if n != victim)
    marker = tmp_path / "alive"
    holder = start_lock(c, victim, "pause-lock", "sh", "-c", f"while true; do date +%s.%N >> {marker}; sleep 0.02; done")
    wait_held(c, "pause-lock", victim, observer=other)
    c.signal(victim, signal.SIGSTOP)
    try:
        assert holder.wait(5) == 75
        _out, err = holder.communicate()
        assert "renew" in err
        # the last complete line: the holder may be killed in the middle of one
        killed_at = float([line for line in marker.read_text().split("\n")[:-1] if line][-1])
        got = run_lock(c, other, "pause-lock", "sh", "-c", "date +%s.%N", opts=("--timeout", "20"))
        assert got.returncode == 0, got.stderr
        assert float(got.stdout) > killed_at  # the old holder had stopped before the new one started
    finally:
        c.signal(victim, signal.SIGCONT)
    assert c.wait_exit(victim, 10) == 75  # it wakes up forced out and fences itself


def test_graceful_leave_revokes_held_locks_and_releases_them_at_once(dlm_cluster):
    c = dlm_cluster
    c.ensure_all_joined()
    victim = next(n for n in NODES if n != c.master())
    other = next(n for n in NODES if n != victim)
    holder = start_lock(c, victim, "leave-lock", "sleep", "60")
    wait_held(c, "leave-lock", victim, observer=other)
    waiter = start_lock(c, other, "leave-lock", "true")
    time.sleep(0.3)
    start = time.monotonic()
    c.signal(victim, signal.SIGTERM)  # a graceful leave: top-down, the DLM releases before it acks
    assert holder.wait(10) == 75
    assert "revoked" in holder.communicate()[1]
    assert waiter.wait(10) == 0
    took = time.monotonic() - start
    print(f"\n[measure] holder's node left gracefully -> waiter granted: {took * 1000:.0f} ms")
    assert c.wait_exit(victim, 15) == 0
    c.ensure_all_joined()


def test_a_try_lock_on_the_holders_own_node_is_denied_at_once(dlm_cluster, tmp_path):
    """--timeout 0 (timeout_ms 0 through the API) on the node that holds the
    lock for another client: busy at once, naming the holder; CMD never runs."""
    c = dlm_cluster
    c.ensure_all_joined()
    ran = tmp_path / "ran"
    holder = start_lock(c, "n1", "tl", "sleep", "30")
    try:
        wait_held(c, "tl", "n1")
        begun = time.monotonic()
        run_lock(c, "n1", "tl", "true", opts=("--socket", str(tmp_path / "none.sock")))
        startup = time.monotonic() - begun  # the same command up to its first request, answered at once
        begun = time.monotonic()
        busy = run_lock(c, "n1", "tl", "sh", "-c", f"echo x > {ran}",
                        opts=("--timeout", "0", "--conflict-exit-code", "9"), timeout=10)
        cli_s = time.monotonic() - begun
        assert busy.returncode == 9, busy.stderr
        assert "not acquired: busy: n1" in busy.stderr and f"pid {holder.pid} holds it" in busy.stderr, busy.stderr
        assert cli_s - startup < 0.5, (cli_s, startup)
        with Connection(c.socket("n1"), timeout_s=5) as conn:
            begun = time.monotonic()
            conn.send({"op": "lock", "id": 1, "name": "tl", "timeout_ms": 0})
            assert conn.receive()["op"] == "lock-queued"
            conn.settimeout(1.0)
            answer = conn.receive()
            api_s = time.monotonic() - begun
        assert answer["op"] == "denied" and answer["reason"].startswith("busy: n1"), answer
        assert f"pid {holder.pid}" in answer["reason"]
        assert api_s < 0.5, api_s
        print(f"\n[measure] try-lock on the holder's node: CLI {cli_s * 1000:.0f} ms "
              f"(start-up {startup * 1000:.0f} ms), API {api_s * 1000:.1f} ms")
        assert not ran.exists()
        assert holder.poll() is None  # the holder is untouched
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(15)
    assert run_lock(c, "n1", "tl", "true", opts=("--timeout", "0")).returncode == 0


def test_a_paused_daemon_lost_lock_leaves_nothing_of_cmd_running(dlm_cluster, tmp_path):
    """End to end: the holder's daemon is paused, the validity runs out, and
    CMD's group and the grandchild that left it are killed; nothing writes."""
    from test_dlm_cli import LOST_CMD, pid_alive, group_members

    c = dlm_cluster
    c.ensure_all_joined()
    victim = next(n for n in NODES if n != c.master())
    holder = subprocess.Popen(lock_cmd(c, victim, "lost-e2e", "sh", "-c", LOST_CMD), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=daemon_env(), cwd=tmp_path)
    try:
        pid = int(wait_for("CMD", lambda: (tmp_path / "started").exists() and (tmp_path / "started").read_text(),
                           10, 0.01))
        escaped = int(wait_for("the grandchild", lambda: (tmp_path / "escaped.pid").exists()
                               and (tmp_path / "escaped.pid").read_text(), 10, 0.01))
        c.signal(victim, signal.SIGSTOP)
        try:
            assert holder.wait(5) == 75
            assert group_members(pid) == [], "CMD's process group survived LOST"
            assert not pid_alive(escaped), "a grandchild in a session of its own survived LOST"
            time.sleep(3.0)
            assert not [p.name for p in tmp_path.iterdir() if p.name in ("next-statement", "grandchild", "escaped")]
            assert "renew" in holder.communicate()[1]
        finally:
            c.signal(victim, signal.SIGCONT)
        assert c.wait_exit(victim, 10) == 75  # it wakes up forced out and fences itself
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(5)
