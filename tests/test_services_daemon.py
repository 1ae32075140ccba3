"""The registration & launch service in three real daemons on a real loop
device (lab timing, the process launcher): a ten-line TOML file applied with
``clusterfw service apply`` places a service on its preferred node; SIGKILL
of that node's daemon moves it to the next one (its old process dead
first); the node's return pulls a free service back; a failed start falls
over and marks the node; ``move`` and a graceful leave transfer it; a frozen
service is left alone; applying the same file twice changes nothing.

Throughout, a watcher samples every service process on this host (by the
``CLUSTERFW_SERVICE`` variable the launcher sets) every 10 ms and records
the most copies of one service it ever saw at once: the one-owner
invariant, checked on real processes.

Only processes these tests started are signalled, by PID; the daemons'
guardians kill the services when a daemon dies; the loop device is
detached even when a test fails."""
from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_daemon_loop import Cluster, cli, formatted_cluster, wait_for

pytestmark = pytest.mark.lab

TAG = secrets.token_hex(3)
WEB = f"web{TAG}"
PICKY = f"picky{TAG}"


def service_processes(prefix: str) -> dict[int, tuple[str, str]]:
    """pid -> (service, node) of every running start process whose service
    name starts with ``prefix``."""
    out: dict[int, tuple[str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
            with open(f"/proc/{entry}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
        except OSError:
            continue
        name = env.get(b"CLUSTERFW_SERVICE", b"").decode()
        if name.startswith(prefix) and env.get(b"CLUSTERFW_ACTION") == b"start":
            out[int(entry)] = (name, env.get(b"CLUSTERFW_NODE", b"?").decode())
    return out


class Watcher:
    """Samples the service processes; ``most`` is the highest number of
    live copies of one service seen at once, ``where`` the nodes then."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.most: dict[str, int] = {}
        self.where: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            per: dict[str, list[str]] = {}
            for name, node in service_processes(self.prefix).values():
                per.setdefault(name, []).append(node)
            for name, nodes in per.items():
                if len(nodes) > self.most.get(name, 0):
                    self.most[name], self.where[name] = len(nodes), sorted(nodes)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture(scope="module")
def svc_cluster(lun_root) -> Iterator[tuple[Cluster, Watcher]]:
    if os.geteuid() != 0:
        pytest.skip("needs root and loop devices")
    watcher = Watcher(f"web{TAG}")
    with formatted_cluster(lun_root, "svc", "svc") as c:
        for node in ("n1", "n2", "n3"):
            c.start(node, "--launcher", "process")
        c.ensure_all_joined(timeout_s=30)
        try:
            yield c, watcher
        finally:
            watcher.close()
            left = service_processes(f"web{TAG}") | service_processes(f"picky{TAG}")
            c.stop_all()  # the guardians kill what the daemons started
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def service(c: Cluster, node: str, *args: str, ok: bool = True) -> Any:
    out = cli("service", *args, "--socket", c.socket(node))
    if ok:
        assert out.returncode == 0, out.stderr + out.stdout
    return out


def listing(c: Cluster, node: str = "n1") -> dict[str, dict[str, Any]]:
    out = cli("service", "list", "--json", "--socket", c.socket(node))
    if out.returncode != 0:
        return {}
    return {s["name"]: s for s in json.loads(out.stdout)["services"]}


def registered_on(c: Cluster, name: str, owners: list[str], observer: str = "n1") -> bool:
    s = listing(c, observer).get(name)
    return bool(s) and s["state"] == "registered" and s["owners"] == owners


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def web_toml(tmp: Path, extra: str = "") -> Path:
    return write(tmp / "web.toml", f"""\
# a web server, preferably on n2, then n3; free to move back
[services.{WEB}]
allowable_nodes = ["n1", "n2", "n3"]
preferences = ["n2", "n3"]
transfer_cost = "free"
failback_delay = "1s"
start_command = ["sleep", "100000"]
{extra}""")


def test_apply_places_crash_moves_return_pulls_back(svc_cluster, tmp_path):
    c, watcher = svc_cluster
    applied = service(c, "n1", "apply", str(web_toml(tmp_path)))
    assert f"{WEB}: defined" in applied.stdout
    wait_for(f"{WEB} on n2", lambda: registered_on(c, WEB, ["n2"]), 10)
    [(old_pid, (_name, node))] = service_processes(WEB).items()
    assert node == "n2"
    status = json.loads(cli("status", "--json", "--socket", c.socket("n3")).stdout)
    assert {"name": WEB, "state": "registered", "owners": ["n2"]}.items() <= \
        next(s for s in status["services"] if s["name"] == WEB).items()

    killed_at = time.monotonic()
    c.signal("n2", signal.SIGKILL)  # the daemon only: its guardian kills the service
    wait_for(f"{WEB} on n3", lambda: registered_on(c, WEB, ["n3"]), 15, 0.02)
    failover_s = time.monotonic() - killed_at
    assert not os.path.exists(f"/proc/{old_pid}") or old_pid not in service_processes(WEB)
    assert failover_s < 5, failover_s
    assert watcher.most[WEB] == 1, watcher.where
    print(f"failover after SIGKILL of the owner's daemon: {failover_s:.2f} s")

    c.start("n2", "--launcher", "process")
    wait_for(f"{WEB} back on n2", lambda: registered_on(c, WEB, ["n2"]), 30, 0.05)
    why = service(c, "n3", "why", WEB).stdout
    assert f"{WEB} is registered on n2" in why
    assert "transfer_cost is free and n2 is more preferred" in why
    assert watcher.most[WEB] == 1, watcher.where


def test_applying_the_same_file_twice_changes_nothing_and_a_change_says_what(svc_cluster, tmp_path):
    c, _watcher = svc_cluster
    path = web_toml(tmp_path)
    service(c, "n1", "apply", str(path))
    wait_for(f"{WEB} registered", lambda: listing(c).get(WEB, {}).get("state") == "registered", 15)
    pid = list(service_processes(WEB))
    again = service(c, "n2", "apply", str(path))
    assert "nothing changed" in again.stdout
    changed = service(c, "n2", "apply", str(web_toml(tmp_path, "failure_threshold = 5\n")))
    assert "failure_threshold" in changed.stdout, changed.stdout
    time.sleep(1.5)
    assert list(service_processes(WEB)) == pid  # a change that needs no restart stops nothing


def test_a_failed_start_falls_over_and_marks_the_node(svc_cluster, tmp_path):
    c, _watcher = svc_cluster
    path = write(tmp_path / "picky.toml", f"""\
[services.{PICKY}]
preferences = ["n1", "n2"]
start_command = ["sh", "-c", "test \\"$CLUSTERFW_NODE\\" != n1 && exec sleep 100000"]
""")
    service(c, "n3", "apply", str(path))
    wait_for(f"{PICKY} on n2", lambda: registered_on(c, PICKY, ["n2"]), 15)
    s = listing(c)[PICKY]
    assert "F" in s["nodes"]["n1"]["flags"]
    why = service(c, "n1", "why", PICKY).stdout
    assert "n1: start failed" in why and f"clusterfw service clear {PICKY}" in why
    service(c, "n1", "clear", PICKY)
    wait_for("the mark cleared", lambda: "F" not in listing(c)[PICKY]["nodes"]["n1"]["flags"], 10)
    service(c, "n1", "remove", PICKY)
    wait_for(f"{PICKY} removed", lambda: PICKY not in listing(c) and not service_processes(PICKY), 15)


def test_move_then_a_graceful_leave_transfers_it(svc_cluster, tmp_path):
    c, watcher = svc_cluster
    service(c, "n1", "apply", str(web_toml(tmp_path)))
    wait_for(f"{WEB} registered", lambda: listing(c).get(WEB, {}).get("state") == "registered", 15)
    moved = service(c, "n3", "move", WEB, "--to", "n1")
    assert f"{WEB} is moving to n1" in moved.stdout
    wait_for(f"{WEB} on n1", lambda: registered_on(c, WEB, ["n1"]), 15)
    time.sleep(2.5)  # longer than failback_delay: the move left no constraint, nothing pulls it back
    assert registered_on(c, WEB, ["n1"])
    left = cli("leave", "--socket", c.socket("n1"), timeout=60)
    assert left.returncode == 0, left.stderr
    assert registered_on(c, WEB, ["n2"], observer="n3")  # the leave completed only after the transfer
    assert [node for _n, node in service_processes(WEB).values()] == ["n2"]
    assert watcher.most[WEB] == 1, watcher.where
    c.wait_exit("n1", 10)
    c.start("n1", "--launcher", "process")
    c.ensure_all_joined(timeout_s=30)


def test_a_frozen_service_is_left_alone_until_unfreeze(svc_cluster, tmp_path):
    c, _watcher = svc_cluster
    service(c, "n1", "apply", str(web_toml(tmp_path)))
    wait_for(f"{WEB} registered", lambda: listing(c).get(WEB, {}).get("state") == "registered", 15)
    service(c, "n2", "freeze", WEB)
    wait_for("frozen", lambda: listing(c).get(WEB, {}).get("frozen"), 10)
    [(pid, (_name, owner))] = service_processes(WEB).items()
    os.kill(pid, signal.SIGKILL)  # a process this test's daemon started
    time.sleep(2.5)
    assert not service_processes(WEB)  # frozen: not restarted, not moved
    assert listing(c)[WEB]["owners"] == [owner]
    service(c, "n2", "unfreeze", WEB)
    wait_for(f"{WEB} running again", lambda: len(service_processes(WEB)) == 1
             and listing(c)[WEB]["state"] == "registered", 15)


def test_bad_input_is_named_and_changes_nothing(svc_cluster, tmp_path):
    c, _watcher = svc_cluster
    service(c, "n1", "apply", str(web_toml(tmp_path)))
    before = listing(c)
    bad = write(tmp_path / "bad.toml", f"[services.{WEB}]\nstart_command = \"sleep 10\"\n")
    out = service(c, "n1", "apply", str(bad), ok=False)
    assert out.returncode == 2 and "bad.toml:2" in out.stderr and "start_command" in out.stderr
    assert "Traceback" not in out.stderr
    out = service(c, "n1", "why", "nosuch", ok=False)
    assert out.returncode != 0 and "no service named 'nosuch'" in out.stderr
    out = service(c, "n1", "move", WEB, "--to", "n9", ok=False)
    assert out.returncode != 0 and "n9" in out.stderr and "Traceback" not in out.stderr
    from clusterfw.client import Client, RequestFailed  # a hand-made request is checked, not trusted
    with pytest.raises(RequestFailed, match="the apply request: start_command: .*argv list"):
        Client(c.socket("n2"), timeout_s=30).request(
            "service", action="apply", args={"defs": [{"name": WEB, "start_command": "sleep 10"}]})
    assert {n: s["owners"] for n, s in listing(c).items()} == {n: s["owners"] for n, s in before.items()}


# ------------------------------------------------------------------ groups, recovery, every, notify, freeze

def journal_lines(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1] if path.exists() else []


def recorder(trace: Path, what: str) -> str:
    """A shell fragment that appends 'WHAT SERVICE NODE [FAILED_NODE]' to ``trace``."""
    return f'echo {what} "$CLUSTERFW_SERVICE" "$CLUSTERFW_NODE" $CLUSTERFW_FAILED_NODE >> {trace}'


def crash_and_return(c: Cluster, node: str) -> None:
    c.signal(node, signal.SIGKILL)
    c.wait_exit(node, 10)
    c.start(node, "--launcher", "process")
    c.ensure_all_joined(timeout_s=30)


def test_a_three_generation_group_starts_top_down_and_stops_bottom_up(svc_cluster, tmp_path):
    c, _watcher = svc_cluster
    trace = tmp_path / "trace"
    g = [f"{WEB}g{i}" for i in (1, 2, 3)]
    text = ""
    for i, name in enumerate(g):
        text += f"[services.{name}]\n"
        text += 'preferences = ["n3", "n1"]\n' if i == 0 else f'parent = "{g[i - 1]}"\n'
        text += f'start_command = ["sh", "-c", {json.dumps(recorder(trace, "start") + "; exec sleep 100000")}]\n'
        text += f'stop_command = ["sh", "-c", {json.dumps(recorder(trace, "stop"))}]\n\n'
    service(c, "n1", "apply", str(write(tmp_path / "group.toml", text)))
    wait_for("the group on n3", lambda: all(registered_on(c, name, ["n3"]) for name in g), 20)
    assert journal_lines(trace) == [f"start {name} n3" for name in g]
    service(c, "n2", "move", g[0], "--to", "n1")
    try:
        wait_for("the group on n1", lambda: all(registered_on(c, name, ["n1"]) for name in g), 20)
    except AssertionError:  # say where it stuck
        print(journal_lines(trace), *(service(c, "n1", "why", name).stdout for name in g), sep="\n")
        raise
    assert journal_lines(trace)[3:] == [f"stop {name} n3" for name in reversed(g)] + \
        [f"start {name} n1" for name in g]
    listed = cli("service", "list", "--socket", c.socket("n2")).stdout
    assert f"\n  {g[1]}" in listed and f"\n    {g[2]}" in listed  # the tree, indented
    service(c, "n1", "remove", g[0])
    wait_for("the group removed", lambda: not set(g) & set(listing(c)), 20)
    assert journal_lines(trace)[-3:] == [f"stop {name} n1" for name in reversed(g)]


def test_recovery_runs_on_a_survivor_after_the_owner_is_forced_out(svc_cluster, tmp_path):
    c, _watcher = svc_cluster
    trace = tmp_path / "trace"
    name = f"{WEB}rec"
    service(c, "n1", "apply", str(write(tmp_path / "rec.toml", f"""\
[services.{name}]
preferences = ["n2", "n3"]
start_command = ["sh", "-c", {json.dumps(recorder(trace, "start") + "; exec sleep 100000")}]
recovery_command = ["sh", "-c", {json.dumps(recorder(trace, "recovery"))}]
""")))
    wait_for(f"{name} on n2", lambda: registered_on(c, name, ["n2"]), 15)
    crash_and_return(c, "n2")
    wait_for(f"{name} on n3", lambda: registered_on(c, name, ["n3"]), 15)
    assert journal_lines(trace) == [f"start {name} n2", f"recovery {name} n3 n2", f"start {name} n3"]
    why = service(c, "n1", "why", name).stdout
    assert "recover" in why, why
    service(c, "n1", "remove", name)


def test_placement_every_and_notify_on_a_late_joiner(svc_cluster, tmp_path):
    c, _watcher = svc_cluster
    trace = tmp_path / "trace"
    every, told = f"{WEB}all", f"{WEB}ntf"
    service(c, "n1", "apply", str(write(tmp_path / "every.toml", f"""\
[services.{every}]
placement_policy = "every"
start_command = ["sleep", "100000"]

[services.{told}]
preferences = ["n1"]
start_command = ["sleep", "100000"]
notify_command = ["sh", "-c", {json.dumps(recorder(trace, "notify"))}]
""")))
    wait_for(f"{every} everywhere", lambda: registered_on(c, every, ["n1", "n2", "n3"]), 20)
    wait_for("two notifies", lambda: len(journal_lines(trace)) == 2, 15)
    assert sorted(journal_lines(trace)) == [f"notify {told} n2", f"notify {told} n3"]
    assert "N" in listing(c)[told]["flags"]
    crash_and_return(c, "n3")  # n3 leaves (forced) and joins again
    wait_for(f"{every} everywhere again", lambda: registered_on(c, every, ["n1", "n2", "n3"]), 20)
    wait_for("n3 notified again", lambda: journal_lines(trace).count(f"notify {told} n3") == 2, 15)
    assert journal_lines(trace).count(f"notify {told} n2") == 1  # a node already told is not told again
    for name in (every, told):
        service(c, "n1", "remove", name)


def test_freeze_is_on_the_disk_and_survives_the_owners_daemon_restart(svc_cluster, tmp_path):
    c, _watcher = svc_cluster
    name = f"{WEB}frz"
    service(c, "n1", "apply", str(write(tmp_path / "frz.toml", f"""\
[services.{name}]
preferences = ["n2"]
start_command = ["sleep", "100000"]
""")))
    wait_for(f"{name} on n2", lambda: registered_on(c, name, ["n2"]), 15)
    service(c, "n1", "freeze", name)
    wait_for("frozen everywhere", lambda: all(listing(c, n).get(name, {}).get("frozen") for n in ("n1", "n2", "n3")),
             10)
    crash_and_return(c, "n2")  # its process dies with the daemon (the guardian)
    time.sleep(2)
    for n in ("n1", "n2", "n3"):  # every daemon, the restarted one too, reads it frozen from the disk
        s = listing(c, n)[name]
        assert s["frozen"] and not service_processes(name), s
    assert "frozen" in service(c, "n3", "why", name).stdout
    service(c, "n3", "unfreeze", name)
    wait_for(f"{name} running after unfreeze", lambda: registered_on(c, name, ["n2"])
             and len(service_processes(name)) == 1, 20)
    service(c, "n1", "remove", name)


def test_failing_everywhere_is_blocked_and_clear_always_tries_again(svc_cluster, tmp_path):
    c, _watcher = svc_cluster
    trace = tmp_path / "trace"
    name = f"{WEB}blk"
    service(c, "n1", "apply", str(write(tmp_path / "blk.toml", f"""\
[services.{name}]
start_command = ["sh", "-c", {json.dumps(recorder(trace, "start") + "; exit 3")}]
""")))
    wait_for("blocked", lambda: listing(c).get(name, {}).get("blocked"), 20)
    assert sorted(journal_lines(trace)) == [f"start {name} {n}" for n in ("n1", "n2", "n3")]
    s = listing(c, "n2")[name]
    assert s["blocked"].startswith("blocked: it failed on every allowable node that is up")
    assert all("F" in v["flags"] for v in s["nodes"].values())
    listed = cli("service", "list", "--socket", c.socket("n2")).stdout
    assert f"clusterfw service clear {name}" in listed
    why = service(c, "n3", "why", name).stdout
    assert "blocked" in why and "exited 3" in why
    cleared = service(c, "n3", "clear", name).stdout
    assert "3 failure record(s) cleared" in cleared
    wait_for("tried again on every node", lambda: len(journal_lines(trace)) == 6
             and listing(c).get(name, {}).get("blocked"), 20)
    service(c, "n1", "remove", name)


def test_an_unprivileged_user_cannot_change_services(svc_cluster, tmp_path):
    import shutil
    import subprocess
    import sys
    from test_daemon_loop import REPO, daemon_env
    c, _watcher = svc_cluster
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    service(c, "n1", "apply", str(web_toml(tmp_path)))
    before = {n: s["owners"] for n, s in listing(c).items()}
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                          "clusterfw.cli", "service", "stop", WEB, "--socket", c.socket("n1")],
                         capture_output=True, text=True, env=daemon_env(), cwd=REPO, timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert "root" in out.stderr or "ermission" in out.stderr or "no clusterfw daemon" in out.stderr, out.stderr
    time.sleep(1)
    assert {n: s["owners"] for n, s in listing(c).items()} == before
