"""Real daemons on a real loop device: three ``clusterfw daemon`` processes
share one disk (lab timing: heartbeat 100 ms, io timeout 200 ms) and are
joined, stopped, killed, paused and restarted.

The tests run in file order on one cluster (module fixture); each begins by
bringing every node back to joined.  Only processes these tests started are
signalled, by PID; the loop device is detached even when a test fails.
Needs root, losetup and loop devices; skipped otherwise.  Measured times are
printed (pytest -s shows them)."""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from lunfs import lun_dir

from clusterfw.client import Client, ClientError, Connection, Subsystem
from clusterfw.core.model import SlotRecord
from clusterfw.lab.hostsys import proc_state
from clusterfw.ondisk.blockdev import BlockDevice
from clusterfw.ondisk.clusterdisk import ClusterDisk

REPO = Path(__file__).resolve().parents[1]
NODES = ("n1", "n2", "n3")
DISK_BYTES = 16 << 20
DEAD_AFTER_S = 1.017  # lab timing: core.timing.derive(LAB).dead_after_ms

HAVE_LOOP = (os.geteuid() == 0 and shutil.which("losetup") is not None
             and os.path.exists("/dev/loop-control"))
needs_loop = pytest.mark.skipif(not HAVE_LOOP, reason="needs root, losetup and loop devices")
pytestmark = [pytest.mark.lab, needs_loop]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clusterfw.cli", *args], capture_output=True, text=True,
                          env=daemon_env(), cwd=REPO, timeout=timeout)


def daemon_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


def wait_for(what: str, predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class Cluster:
    """The loop device, the daemons this test module started, and helpers."""

    def __init__(self, device: str, work: Path) -> None:
        self.device = device
        self.work = work
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.starts: dict[str, int] = {}
        self.watchdogs: dict[str, Path] = {}  # the watchdog file of each node's current daemon
        self.socket_dir: Path | None = None  # set: every daemon's socket is socket_dir/NAME.sock

    # -- processes ------------------------------------------------------------
    def runtime_dir(self, name: str) -> Path:
        return self.work / f"run-{name}"

    def socket(self, name: str) -> str:
        if self.socket_dir is not None:
            return str(self.socket_dir / f"{name}.sock")
        return str(self.runtime_dir(name) / "clusterfw.sock")

    def start(self, name: str, *extra: str, env: dict[str, str] | None = None,
              runtime_dir: Path | None = None) -> subprocess.Popen:
        self.starts[name] = self.starts.get(name, 0) + 1
        log = self.work / f"{name}.{self.starts[name]}.log"
        watchdog = self.work / f"{name}.{self.starts[name]}.watchdog"  # a file stands in for /dev/watchdog
        watchdog.write_bytes(b"")
        args = [sys.executable, "-m", "clusterfw.cli", "daemon", "--disk", self.device, "--node", name,
                "--fence-action", "exit", "--runtime-dir", str(runtime_dir or self.runtime_dir(name)),
                "--watchdog", str(watchdog), *extra]
        if self.socket_dir is not None and runtime_dir is None:
            args += ["--socket", self.socket(name)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env={**daemon_env(), **(env or {})}, cwd=REPO)
        if runtime_dir is None:
            self.procs[name] = proc
            self.logs[name] = log
            self.watchdogs[name] = watchdog
        return proc

    def running(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def signal(self, name: str, signum: int) -> None:
        proc = self.procs[name]
        assert proc.poll() is None, f"{name} is not running"
        os.kill(proc.pid, signum)

    def wait_exit(self, name: str, timeout_s: float) -> int:
        try:
            return self.procs[name].wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} did not exit within {timeout_s} s; log:\n{self.log(name)}") from None

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")[-4000:]

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)

    # -- observing ------------------------------------------------------------
    def status(self, name: str) -> dict[str, Any] | None:
        try:
            return Client(self.socket(name), timeout_s=2.0).status()
        except ClientError:
            return None

    def node(self, status: dict[str, Any], name: str) -> dict[str, Any]:
        return next(n for n in status["nodes"] if n["name"] == name)

    def joined_view(self, observer: str, names: tuple[str, ...] = NODES) -> dict[str, Any] | None:
        """The observer's status if every node in ``names`` is joined there and
        there is a master."""
        status = self.status(observer)
        if status is None or status["master"] is None:
            return None
        if all(self.node(status, n)["state"] == "joined" for n in names):
            return status
        return None

    def master(self) -> str:
        for name in NODES:
            status = self.status(name) if self.running(name) else None
            if status is not None and status["master"] is not None:
                return status["master"]  # type: ignore[no-any-return]
        raise AssertionError("no running node knows a master")

    def ensure_all_joined(self, timeout_s: float = 15) -> None:
        """Bring every node back (start what exited, even while we wait: a
        node a test left stopped or forced out may exit only now) until each
        sees all nodes joined."""
        def healed() -> bool:
            for name in NODES:
                if not self.running(name):
                    self.start(name)
                elif proc_state(self.procs[name].pid) == "T":
                    os.kill(self.procs[name].pid, signal.SIGCONT)
            return all(self.joined_view(name) for name in NODES)

        try:
            wait_for("all nodes to see all nodes joined", healed, timeout_s, 0.1)
        except AssertionError as exc:
            logs = "\n".join(f"--- {n}:\n{self.log(n)[-1500:]}" for n in NODES if n in self.logs)
            raise AssertionError(f"{exc}; views: {[self.status(n) and _states(self.status(n)) for n in NODES]}"
                                 f"\n{logs}") from None

    def read_slot(self, name: str) -> SlotRecord:
        with BlockDevice(self.device, readonly=True) as dev:
            disk = ClusterDisk.open(dev)
            node_id = next(cfg.node_id for cfg in disk.read_node_table() if getattr(cfg, "name", None) == name)
            rec = disk.read_slot(node_id)
        assert isinstance(rec, SlotRecord), rec
        return rec


def _states(status: dict[str, Any]) -> dict[str, str]:
    return {n["name"]: n["state"] for n in status["nodes"]}


@contextlib.contextmanager
def loop_device(backing: Path) -> Iterator[str]:
    result = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", str(backing)],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {result.stderr.strip()}")
    device = result.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, timeout=30)


@contextlib.contextmanager
def formatted_cluster(root: Path, prefix: str, name: str) -> Iterator[Cluster]:
    """A loop device formatted for cluster ``name`` (lab timing) with the
    nodes n1..n3 added; every daemon started on it is killed at the end.
    The image lives under root (lun_root: a tmpfs, see conftest.py)."""
    work = lun_dir(root, prefix)
    backing = work / "disk.img"
    with open(backing, "wb") as f:
        f.truncate(DISK_BYTES)
    with loop_device(backing) as device:
        c = Cluster(device, work)
        try:
            init = cli("disk", "init", device, "--cluster", name, "--max-nodes", "8",
                       "--heartbeat-ms", "100", "--io-timeout-ms", "200")
            assert init.returncode == 0, init.stderr
            for node in NODES:
                added = cli("node", "add", device, "--name", node)
                assert added.returncode == 0, added.stderr
            yield c
        finally:
            c.stop_all()


@pytest.fixture(scope="module")
def cluster(lun_root) -> Iterator[Cluster]:
    with formatted_cluster(lun_root, "daemons", "lab") as c:
        yield c


# --------------------------------------------------------------------------
def test_three_daemons_join_with_one_master(cluster):
    notify_path = str(cluster.work / "notify.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(notify_path)
    rx.setblocking(False)
    start = time.monotonic()
    cluster.start("n1", env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "2000000"})
    cluster.start("n2")
    cluster.start("n3")
    status = wait_for("3 joined nodes", lambda: cluster.joined_view("n1"), 15)
    elapsed = time.monotonic() - start
    print(f"\n[measure] 3 daemons started -> all joined (seen by n1): {elapsed * 1000:.0f} ms")
    assert [n["name"] for n in status["nodes"]] == list(NODES)
    assert sum(1 for n in status["nodes"] if n["master"]) == 1
    assert status["cluster"] == "lab" and status["epoch"] > 0 and status["services"] == []
    assert all(n["levels"] == {"mm": "joined", "dlm": "joined", "vdm": "placeholder", "sfs": "placeholder",
                            "services": "joined"}
               for n in status["nodes"])
    assert all(0 <= n["heartbeat_age_ms"] < 1000 for n in status["nodes"])
    # every node agrees on the master
    for name in NODES:
        seen = wait_for(f"{name} joined", lambda name=name: cluster.joined_view(name), 10)
        assert seen["master"] == status["master"]
    # the CLI prints the same thing
    out = cli("status", "--json", "--socket", cluster.socket("n2"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["master"] == status["master"]
    table = cli("status", "--socket", cluster.socket("n2"))
    assert table.returncode == 0 and f"{status['master']}*" in table.stdout
    # sd_notify: READY=1, then STATUS= and WATCHDOG=1
    messages = []
    with contextlib.suppress(BlockingIOError):
        while True:
            messages.append(rx.recv(4096).decode())
    rx.close()
    assert any("READY=1" in m for m in messages), messages
    assert any(m.startswith("STATUS=joined") for m in messages), messages
    assert "WATCHDOG=1" in messages
    # the watchdog files are being fed
    assert cluster.watchdogs["n2"].stat().st_size > 0


def test_sigterm_is_a_graceful_leave(cluster):
    cluster.ensure_all_joined()
    master = cluster.master()
    victim = next(n for n in NODES if n != master)
    observer = master
    start = time.monotonic()
    cluster.signal(victim, signal.SIGTERM)
    assert cluster.wait_exit(victim, 15) == 0, cluster.log(victim)
    print(f"\n[measure] SIGTERM -> {victim} left and exited 0: {(time.monotonic() - start) * 1000:.0f} ms")
    status = wait_for(f"{victim} inactive", lambda: (s := cluster.status(observer)) and
                      cluster.node(s, victim)["state"] == "inactive" and s, 5)
    assert cluster.node(status, victim)["forced"] is False
    assert "left the cluster gracefully" in cluster.log(victim)
    # a graceful stop disarms the watchdog with the magic close
    assert cluster.watchdogs[victim].read_bytes().endswith(b"V")


def _forced_out(cluster: Cluster, observer: str, victim: str) -> dict[str, Any] | None:
    status = cluster.status(observer)
    if status is None:
        return None
    node = cluster.node(status, victim)
    return status if node["state"] == "inactive" and node["forced"] and status["master"] != victim else None


def test_kill9_member_is_forced_out_and_rejoins(cluster):
    times = []
    for _ in range(3):
        cluster.ensure_all_joined()
        master = cluster.master()
        victim = next(n for n in reversed(NODES) if n != master)
        start = time.monotonic()
        cluster.signal(victim, signal.SIGKILL)
        cluster.wait_exit(victim, 5)
        wait_for(f"{victim} forced out", lambda m=master, v=victim: _forced_out(cluster, m, v), 8, 0.02)
        times.append(time.monotonic() - start)
        # its restart (a new incarnation) rejoins
        start = time.monotonic()
        cluster.start(victim)
        wait_for(f"{victim} rejoined", lambda m=master: cluster.joined_view(m), 15)
        rejoin = time.monotonic() - start
    print(f"\n[measure] kill -9 member -> forced out (inactive, forced) at the master: "
          f"{', '.join(f'{t * 1000:.0f}' for t in times)} ms, median {statistics.median(times) * 1000:.0f} ms; "
          f"restart -> rejoined {rejoin * 1000:.0f} ms")
    assert statistics.median(times) < 5.0


def test_kill9_master_elects_a_new_master_and_forces_the_old_one_out(cluster):
    cluster.ensure_all_joined()
    old = cluster.master()
    observer = next(n for n in NODES if n != old)
    start = time.monotonic()
    cluster.signal(old, signal.SIGKILL)
    cluster.wait_exit(old, 5)
    status = wait_for("a new master and the old one forced out", lambda: _forced_out(cluster, observer, old), 10,
                      0.02)
    elapsed = time.monotonic() - start
    print(f"\n[measure] kill -9 master -> new master {status['master']} and {old} forced out: "
          f"{elapsed * 1000:.0f} ms")
    assert status["master"] not in (None, old)
    others = [n for n in NODES if n != old]
    assert all(cluster.node(status, n)["state"] == "joined" for n in others)
    for name in others:
        wait_for(f"{name} to agree", lambda name=name: (s := cluster.status(name)) and s["master"] == status["master"]
                 and cluster.node(s, old)["state"] == "inactive", 5)


def test_a_paused_daemon_fences_itself_when_it_wakes_and_writes_nothing_after(cluster):
    cluster.ensure_all_joined()
    master = cluster.master()
    victim = next(n for n in NODES if n != master)
    cluster.signal(victim, signal.SIGSTOP)
    try:
        time.sleep(0.3)  # an I/O in flight at the pause has landed by now
        seq_paused = cluster.read_slot(victim).seq
        size_paused = cluster.watchdogs[victim].stat().st_size
        wait_for(f"{victim} forced out while paused", lambda: _forced_out(cluster, master, victim), 10)
        time.sleep(max(0.0, 2 * DEAD_AFTER_S - 0.3))
    finally:
        cluster.signal(victim, signal.SIGCONT)
    assert cluster.wait_exit(victim, 5) == 75, cluster.log(victim)
    log = cluster.log(victim)
    assert "FENCED" in log and "no heartbeat write completed" in log
    # the log says why: the whole process stood still (the fence was noticed
    # long after its deadline), not a slow disk
    late = re.search(r"noticed (\d+) ms after the deadline", log)
    assert late and int(late.group(1)) >= 1000, log
    assert cluster.read_slot(victim).seq == seq_paused, "the fenced daemon wrote its slot after waking"
    watchdog = cluster.watchdogs[victim].read_bytes()
    assert len(watchdog) == size_paused and not watchdog.endswith(b"V"), "watchdog fed or disarmed after fencing"


def test_a_fenced_daemon_with_fence_action_none_stays_silent(cluster):
    cluster.ensure_all_joined()
    master = cluster.master()
    victim = next(n for n in NODES if n != master)
    cluster.signal(victim, signal.SIGTERM)
    assert cluster.wait_exit(victim, 15) == 0
    cluster.start(victim, "--fence-action", "none")
    wait_for(f"{victim} joined", lambda: cluster.joined_view(master), 15)
    cluster.signal(victim, signal.SIGSTOP)
    time.sleep(0.3)
    seq_paused = cluster.read_slot(victim).seq
    time.sleep(1.5)
    cluster.signal(victim, signal.SIGCONT)
    status = wait_for(f"{victim} reports fenced", lambda: (s := cluster.status(victim)) and s["fenced"] and s, 5)
    assert status["phase"] == "fenced"
    time.sleep(1.0)
    assert cluster.read_slot(victim).seq == seq_paused
    assert cluster.running(victim)
    # a leave is refused; SIGTERM ends it with the fenced exit code
    conn = Connection(cluster.socket(victim))
    conn.send({"op": "leave"})
    reply = conn.receive()
    conn.close()
    assert reply is not None and reply["ok"] is False and "fenced" in reply["error"]
    cluster.signal(victim, signal.SIGTERM)
    assert cluster.wait_exit(victim, 5) == 75


def test_kill_namespace_fence_ends_the_whole_pid_namespace(cluster):
    """The lab's watchdog: a node in its own PID namespace whose init ignores
    signals (as systemd would) and runs a 'service'; fencing with
    kill-namespace ends all of it at once."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare")
    psutil = pytest.importorskip("psutil")
    cluster.ensure_all_joined()
    master = cluster.master()
    victim = next(n for n in NODES if n != master)
    cluster.signal(victim, signal.SIGTERM)
    assert cluster.wait_exit(victim, 15) == 0
    daemon = [sys.executable, "-m", "clusterfw.cli", "daemon", "--disk", cluster.device, "--node", victim,
              "--fence-action", "kill-namespace", "--runtime-dir", str(cluster.runtime_dir(victim))]
    script = ('trap "" INT HUP TERM; sleep 1000 & "$@"; echo "the daemon returned $?"; sleep 1000')
    log = cluster.work / f"{victim}.namespace.log"
    with open(log, "wb") as out:
        node = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c", script,
                                 "init", *daemon], stdout=out, stderr=subprocess.STDOUT, env=daemon_env(), cwd=REPO)
    try:
        wait_for(f"{victim} joined from its namespace", lambda: cluster.joined_view(master), 15)
        tree = psutil.Process(node.pid).children(recursive=True)
        target = next(p for p in tree if p.cmdline()[1:4] == ["-m", "clusterfw.cli", "daemon"])
        service = next(p for p in tree if p.cmdline()[:2] == ["sleep", "1000"])
        os.kill(target.pid, signal.SIGSTOP)
        time.sleep(1.5)
        os.kill(target.pid, signal.SIGCONT)
        node.wait(10)
        assert not service.is_running(), "a process of the fenced namespace survived"
        text = log.read_text()
        assert "FENCED" in text and "the daemon returned" not in text, text
    finally:
        if node.poll() is None:
            node.kill()  # --kill-child: the namespace goes with it
            node.wait(10)
    cluster.ensure_all_joined()


def test_a_second_daemon_for_the_same_node_is_refused(cluster):
    cluster.ensure_all_joined()
    # on this host: the lock file
    twin = cluster.start("n1", runtime_dir=cluster.runtime_dir("n1"))
    assert twin.wait(15) == 78
    out = (cluster.work / f"n1.{cluster.starts['n1']}.log").read_text()
    assert f"PID {cluster.procs['n1'].pid}" in out and "already runs node 'n1'" in out
    # "another host": another lock directory, same disk -> its slot is seen changing
    other = cluster.start("n1", runtime_dir=cluster.work / "other-host")
    assert other.wait(15) == 78
    out = (cluster.work / f"n1.{cluster.starts['n1']}.log").read_text()
    assert "being written by another daemon" in out
    assert cluster.running("n1") and cluster.joined_view("n1")


def test_two_hosts_starting_one_node_at_once_are_caught_while_running(cluster):
    cluster.ensure_all_joined()
    victim = next(n for n in reversed(NODES) if n != cluster.master())
    cluster.signal(victim, signal.SIGTERM)
    assert cluster.wait_exit(victim, 15) == 0
    # two "hosts" (separate lock directories) start the same node together: both
    # pass the start-up check (the slot is still), then see each other's writes
    first = cluster.start(victim, runtime_dir=cluster.work / "host-a")
    second = cluster.start(victim, runtime_dir=cluster.work / "host-b")
    logs = [cluster.work / f"{victim}.{cluster.starts[victim] - 1}.log",
            cluster.work / f"{victim}.{cluster.starts[victim]}.log"]
    try:
        wait_for("one of them to fence", lambda: first.poll() is not None or second.poll() is not None, 15)
        time.sleep(1.0)
        codes = [first.poll(), second.poll()]
        texts = [log.read_text() for log in logs]
        caught = [i for i in (0, 1) if codes[i] is not None]
        assert caught and all(codes[i] in (75, 78) for i in caught), (codes, texts)
        assert any("another host is writing node" in texts[i] or "being written by another daemon" in texts[i]
                   for i in caught), texts
        print(f"\n[measure] two daemons for {victim}: exit codes {codes}")
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(20)
    cluster.ensure_all_joined(timeout_s=20)


def test_unknown_node_and_bad_disk_are_refused_with_the_fix(cluster):
    out = cli("daemon", "--disk", cluster.device, "--node", "n9", "--runtime-dir", str(cluster.work / "run-n9"),
              "--socket", str(cluster.work / "n9.sock"))
    assert out.returncode == 78
    assert "node 'n9' is not in the node table" in out.stderr and f"clusterfw node add {cluster.device} --name n9" \
        in out.stderr
    blank = cluster.work / "blank.img"
    with open(blank, "wb") as f:
        f.truncate(8 << 20)
    out = cli("daemon", "--disk", str(blank), "--node", "n1", "--runtime-dir", str(cluster.work / "run-blank"))
    assert out.returncode == 78 and "is not a clusterfw disk" in out.stderr and "clusterfw disk init" in out.stderr
    out = cli("daemon", "--disk", str(cluster.work / "missing"), "--node", "n1",
              "--runtime-dir", str(cluster.work / "run-missing"))
    assert out.returncode == 1 and "cannot open the shared disk" in out.stderr


def test_malformed_socket_input_never_hurts_the_daemon(cluster):
    cluster.ensure_all_joined()
    path = cluster.socket("n2")
    rng = random.Random(11)
    for _ in range(150):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000)))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)  # blocking: waits while the daemon's accept queue is full
            s.settimeout(5)
            with contextlib.suppress(OSError):
                s.sendall(junk + (b"\n" if rng.random() < 0.7 else b""))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # oversized: refused and closed
        s.connect(path)
        s.settimeout(5)
        with contextlib.suppress(OSError):
            s.sendall(b"{" * (70 * 1024))
        with contextlib.suppress(ConnectionResetError):
            assert b"larger than" in s.recv(65536)
    conn = Connection(path)
    for message, error in (
            ({"op": "ack", "batch": 5}, "has not registered"),
            ({"op": "register", "level": 25, "name": "late"}, "--wait-for-subsystem late"),
            ({"op": "register", "level": 10, "name": "x"}, "already registered by 'dlm'"),
            ({"op": "register", "level": 26, "name": "x", "barriers": [0, 1, 1]}, "barriers"),
            ({"op": "nope"}, "unknown op")):
        conn.send(message)
        reply = conn.receive()
        assert reply is not None and reply["ok"] is False and error in reply["error"], (message, reply)
    conn.close()
    assert cluster.joined_view("n2") and cluster.running("n2")


def test_external_shell_subsystem_joins_and_leaves_through_its_level(cluster):
    if shutil.which("socat") is None:
        pytest.skip("examples/external-subsystem.sh needs socat")
    cluster.ensure_all_joined()
    master = cluster.master()
    node = next(n for n in reversed(NODES) if n != master)
    cluster.signal(node, signal.SIGTERM)
    assert cluster.wait_exit(node, 15) == 0
    cluster.start(node, "--wait-for-subsystem", "ext", "--wait-timeout", "30")
    wait_for("the daemon's socket", lambda: (s := cluster.status(node)) and s["phase"] == "waiting-for-subsystems",
             10)
    script_log = cluster.work / "ext.log"
    with open(script_log, "wb") as out:
        script = subprocess.Popen(["bash", str(REPO / "examples" / "external-subsystem.sh"), cluster.socket(node),
                                   "25", "ext"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        status = wait_for(f"{node} joined through level 25",
                          lambda: (s := cluster.status(node)) and s["state"] == "joined" and s, 15)
        me = cluster.node(status, node)
        assert me["levels"]["ext"] == "joined"
        assert list(me["levels"]) == ["mm", "dlm", "vdm", "ext", "sfs", "services"]
        ext = next(s for s in status["subsystems"] if s["name"] == "ext")
        assert ext["kind"] == "external" and ext["attached"] and ext["level"] == 25
        # leave with the CLI: progress top-down, through level 25, then exit 0
        out = cli("leave", "--socket", cluster.socket(node), timeout=30)
        assert out.returncode == 0, out.stderr
        assert "ext leaving" in out.stdout and "left the cluster" in out.stdout
        assert cluster.wait_exit(node, 10) == 0
        assert script.wait(10) == 0
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()
    text = script_log.read_text()
    assert "registered at level 25" in text
    assert '"kind":"joining"' in text and '"kind":"leaving"' in text
    assert text.count('"op":"acked"') >= 2
    cluster.ensure_all_joined()


def test_python_subsystem_client_with_two_join_barriers(cluster):
    cluster.ensure_all_joined()
    master = cluster.master()
    node = next(n for n in reversed(NODES) if n != master)
    cluster.signal(node, signal.SIGTERM)
    assert cluster.wait_exit(node, 15) == 0
    cluster.start(node, "--wait-for-subsystem", "py", "--wait-timeout", "30")
    wait_for("the daemon's socket", lambda: (s := cluster.status(node)) and s["phase"] == "waiting-for-subsystems",
             10)
    seen: list[tuple[str, str, int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with Subsystem(27, "py", barriers=(2, 1, 1), socket_path=cluster.socket(node)) as sub:
                assert sub.registration is not None and sub.registration["reattached"] is False
                for note in sub:
                    seen.extend((e.node, e.kind, e.barrier) for e in note.entries)
                    sub.ack(note.batch)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_for(f"{node} joined", lambda: (s := cluster.status(node)) and s["state"] == "joined", 15)
    except AssertionError:
        raise AssertionError(f"{node} did not join; the subsystem client's errors: {errors!r}") from None
    assert (node, "joining", 0) in seen and (node, "joining", 1) in seen
    # `clusterfw join` on a running daemon says so and succeeds
    out = cli("join", "--socket", cluster.socket(node), "--timeout", "10")
    assert out.returncode == 0 and "is running" in out.stdout, out.stderr
    cluster.signal(node, signal.SIGTERM)
    assert cluster.wait_exit(node, 15) == 0
    thread.join(10)
    assert not errors, errors
    assert (node, "leaving", 0) in seen
    cluster.ensure_all_joined()


def test_join_without_a_daemon_or_systemd_explains(cluster):
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd manages this host: join would start the unit")
    out = cli("join", "--socket", str(cluster.work / "none.sock"))
    assert out.returncode == 1 and "clusterfw daemon --disk DEVICE --node NAME" in out.stderr


def test_status_reads_the_disk_when_no_daemon_runs(cluster):
    out = cli("status", "--socket", str(cluster.work / "none.sock"))
    assert out.returncode == 1 and "no clusterfw daemon answers" in out.stderr and "--disk" in out.stderr
    out = cli("status", "--json", "--socket", str(cluster.work / "none.sock"), "--disk", cluster.device)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["source"] == "disk" and status["cluster"] == "lab"
    assert [n["name"] for n in status["nodes"]] == list(NODES)
    assert all(n["heartbeat_age_ms"] is None for n in status["nodes"])
    out = cli("status", "--socket", str(cluster.work / "none.sock"), "--disk", cluster.device)
    assert out.returncode == 0 and "read " + cluster.device + " directly" in out.stdout


# Last in the file: a rejected join must leave the cluster running.
def test_a_join_with_other_barrier_counts_is_rejected_with_exit_78(cluster):
    cluster.ensure_all_joined()
    master = cluster.master()
    node = next(n for n in reversed(NODES) if n != master)
    cluster.signal(node, signal.SIGTERM)
    assert cluster.wait_exit(node, 15) == 0
    # level 10 is the cluster's dlm with barriers (1, 1, 1); this node brings (2, 1, 1)
    cluster.start(node, "--no-placeholder-subsystems", "--wait-for-subsystem", "dlm", "--wait-timeout", "30")
    wait_for("the daemon's socket", lambda: (s := cluster.status(node)) and s["phase"] == "waiting-for-subsystems",
             10)
    with Subsystem(10, "dlm", barriers=(2, 1, 1), socket_path=cluster.socket(node)):
        assert cluster.wait_exit(node, 15) == 78
    log = cluster.log(node)
    assert "the join was rejected at level 10" in log, log
    cluster.ensure_all_joined()


def three_joins_and_a_crash(c: Cluster) -> tuple[str, str]:
    """n1, n2, n3 join one after the other, then a member is killed (-9) and
    forced out: (the master's name, the master's whole log)."""
    for i, name in enumerate(NODES):
        c.start(name)
        wait_for(f"{name} joined", lambda names=NODES[:i + 1]: c.joined_view("n1", names), 20)
    master = c.master()
    victim = next(n for n in reversed(NODES) if n != master)
    c.signal(victim, signal.SIGKILL)
    c.wait_exit(victim, 5)
    wait_for(f"{victim} forced out", lambda: _forced_out(c, master, victim), 10, 0.02)
    wait_for("the end of the recovery in the master's log",
             lambda: "recovery complete" in c.logs[master].read_text(errors="replace"), 10)
    return master, c.logs[master].read_text(errors="replace")


def test_the_master_logs_one_info_line_per_decision(lun_root):
    """3 joins and 1 crash: the master's journal has one info line per
    decision -- its takeover, each join through all levels, the crashed
    node forced out with the reason and its recovery complete with the same
    reason -- and no per-batch line (those are debug, not written without
    --debug), and never an empty ``levels now``."""
    with formatted_cluster(lun_root, "journal", "journal") as c:
        master, log = three_joins_and_a_crash(c)
    lines = [re.sub(r" \(EPOCH=\d+ TERM=\d+\)$", "", line.split(" info: [master] ", 1)[1])
             for line in log.splitlines() if " info: [master] " in line]
    victim = next(n for n in reversed(NODES) if n != master)
    print(f"\n[measure] 3 joins + 1 crash: {len(lines)} info lines by the master {master}:\n  " + "\n  ".join(lines))
    assert "[master]" not in "".join(line for line in log.splitlines() if " info: " not in line)
    joins = [line for line in lines if line.endswith(" joins: all levels notified")]
    assert sorted(joins) == sorted(f"{n} joins: all levels notified" for n in NODES), lines
    forced = [line for line in lines if line.startswith(f"{victim} forced out (missed heartbeats for ")]
    assert len(forced) == 2 and forced[0].endswith("): recovering its levels"), lines
    assert forced[1] == forced[0].replace("recovering its levels", "recovery complete"), lines
    assert any(re.fullmatch(rf"{master} master of term \d+, resuming from epoch \d+ of term \d+", line)
               for line in lines), lines
    assert not any("batch" in line or line.startswith("levels now") for line in lines), lines
    assert len(lines) <= len(NODES) + 2 + 2, lines  # joins, the crash's two, at most two takeovers
