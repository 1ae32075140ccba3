"""Runs INSIDE a lab node (nspawn: its own systemd as PID 1) for
tests/lab/test_systemd_launcher.py: ``python3 systemd_launcher_node.py
CHECK`` exercises the systemd launcher against that systemd and prints one
JSON object -- what it saw -- which the test asserts on (so a failure shows
everything that was seen).  It cleans up the units and files it made, also
when a check fails half-way."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from clusterfw.subsystems.services.launchers import Job, Outcome, make_launcher

RUN_UNITS = Path("/run/systemd/system")
SLICE_CGROUP = "clusterfw.slice/clusterfw-services.slice"


class Recorder:
    """done callbacks and failure callbacks, waited for."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.outcomes: list[Outcome] = []
        self.failures: list[tuple[str, str]] = []

    def done(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)
            self.lock.notify_all()

    def failed(self, service: str, reason: str) -> None:
        with self.lock:
            self.failures.append((service, reason))
            self.lock.notify_all()

    def wait(self, count: int, timeout: float = 30.0) -> Outcome:
        with self.lock:
            if not self.lock.wait_for(lambda: len(self.outcomes) >= count, timeout):
                raise AssertionError(f"no outcome #{count} within {timeout} s: {self.outcomes}")
            return self.outcomes[count - 1]

    def wait_failure(self, count: int, timeout: float = 10.0) -> tuple[str, str] | None:
        with self.lock:
            self.lock.wait_for(lambda: len(self.failures) >= count, timeout)
            return self.failures[count - 1] if len(self.failures) >= count else None


def call(launcher, method: str, job: Job, rec: Recorder) -> dict:
    with rec.lock:
        count = len(rec.outcomes) + 1
    getattr(launcher, method)(job, rec.done)
    out = rec.wait(count)
    return {"ok": out.ok, "detail": out.detail, "elapsed_s": out.elapsed_s}


def show(unit: str, *props: str) -> dict[str, str]:
    cp = subprocess.run(["systemctl", "show", unit, *(f"-p{p}" for p in props)], capture_output=True,
                        text=True, timeout=10)
    return dict(line.split("=", 1) for line in cp.stdout.splitlines() if "=" in line)


def systemctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=30)


def slice_pids() -> list[int]:
    pids: list[int] = []
    for mount in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        root = Path(mount) / SLICE_CGROUP
        if root.is_dir():
            for procs in root.rglob("cgroup.procs"):
                pids += [int(x) for x in procs.read_text().split()]
            return pids
    raise AssertionError("the slice has no cgroup v2 directory")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for(predicate, timeout: float, interval: float = 0.001) -> float | None:
    """Seconds until predicate() held, or None."""
    t0 = time.perf_counter()
    while True:
        if predicate():
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            return None
        time.sleep(interval)


# -- the checks ------------------------------------------------------------------

def check_transient(launcher, rec: Recorder) -> dict:
    """A transient sleep: started, active, its properties; then stopped."""
    out: dict = {}
    t0 = time.perf_counter()
    out["start"] = call(launcher, "start", Job("sleeper", "start", ("sleep", "300"),
                                               env={"CLUSTERFW_SERVICE": "sleeper", "CLUSTERFW_NODE": "n1"}), rec)
    out["active"] = launcher.active("sleeper")
    out["start_to_active_s"] = time.perf_counter() - t0
    out["props"] = show("clusterfw-svc-sleeper.service", "Type", "Slice", "KillMode", "Environment",
                        "CollectMode", "BindsTo", "After", "ExecStart", "MainPID", "ActiveState")
    out["pid_alive"] = alive(int(out["props"].get("MainPID", "0") or 0))
    out["again"] = call(launcher, "start", Job("sleeper", "start", ("sleep", "300")), rec)
    out["stop"] = call(launcher, "stop", Job("sleeper", "stop", timeout_s=10), rec)
    out["active_after_stop"] = launcher.active("sleeper")
    out["pid_alive_after_stop"] = alive(int(out["props"].get("MainPID", "0") or 0))
    out["stop_again"] = call(launcher, "stop", Job("sleeper", "stop"), rec)
    out["missing"] = call(launcher, "start", Job("nope", "start", ("no-such-command-here",)), rec)
    out["missing_abs"] = call(launcher, "start", Job("nope", "start", ("/no/such/file",)), rec)
    out["failures"] = rec.failures
    return out


def check_failure(launcher, rec: Recorder) -> dict:
    """A command that exits 1 at once (start failed), one that exits 1 later
    (failure callback), and reset_failed."""
    out: dict = {}
    out["exit_at_once"] = call(launcher, "start", Job("exit1", "start", ("sh", "-c", "exit 1")), rec)
    out["exit_later"] = call(launcher, "start", Job("late", "start", ("sh", "-c", "sleep 0.5; exit 1")), rec)
    out["failure"] = rec.wait_failure(1)
    out["failed"] = launcher.failed("late")
    out["active"] = launcher.active("late")
    launcher.reset_failed("late")
    out["failed_after_reset"] = launcher.failed("late")
    out["restart"] = call(launcher, "start", Job("late", "start", ("sleep", "300")), rec)
    out["stop"] = call(launcher, "stop", Job("late", "stop"), rec)
    out["killed_by_signal"] = call(launcher, "start", Job("sig", "start", ("sh", "-c", "sleep 0.3; kill -9 $$")),
                                   rec)
    out["failure2"] = rec.wait_failure(2)
    out["failures"] = rec.failures
    return out


def check_kill_all(launcher, rec: Recorder) -> dict:
    """Three services (one with a child), and a notify command running:
    kill_all, then every process of the slice is gone; no failure is reported."""
    out: dict = {"mechanism": launcher.kill_mechanism}
    out["starts"] = [call(launcher, "start", Job(name, "start", argv), rec) for name, argv in (
        ("k1", ("sleep", "300")), ("k2", ("sh", "-c", "sleep 300 & sleep 300")), ("k3", ("sleep", "301")))]
    launcher.run(Job("k1", "notify", ("sleep", "300"), timeout_s=60), rec.done)
    wait_for(lambda: len(slice_pids()) >= 6, 5, 0.01)  # k1, k2's sh and two sleeps, k3, the notify
    pids = slice_pids()
    out["pids_before"] = len(pids)
    t0 = time.perf_counter()
    out["killed"] = sorted(launcher.kill_all())
    out["kill_all_call_s"] = time.perf_counter() - t0
    out["all_gone_s"] = wait_for(lambda: not any(alive(p) for p in pids), 2.0)
    out["survivors"] = [p for p in pids if alive(p)]
    out["notify"] = {"ok": (n := rec.wait(4)).ok, "detail": n.detail}
    time.sleep(0.3)
    out["active"] = [launcher.active(s) for s in ("k1", "k2", "k3")]
    out["failures"] = rec.failures
    out["after"] = call(launcher, "start", Job("k1", "start", ("sleep", "300")), rec)
    out["after_stop"] = call(launcher, "stop", Job("k1", "stop"), rec)
    return out


INSTALLED = """[Unit]
Description=clusterfw launcher test unit that fails until /run/cfwtest-ok exists
StartLimitIntervalSec=300
StartLimitBurst=1

[Service]
Type=exec
ExecStart=/bin/sh -c 'test -e /run/cfwtest-ok || exit 7; sleep 300 & exec sleep 300'
"""


def check_installed(launcher, rec: Recorder) -> dict:
    """An installed unit: start failed (exit 7), its start limit (1) is hit,
    the launcher resets it and starts it; kill_all kills it; reset_failed; stop."""
    out: dict = {}
    unit = "cfwtest-flaky.service"
    (RUN_UNITS / unit).write_text(INSTALLED)
    Path("/run/cfwtest-ok").unlink(missing_ok=True)
    systemctl("daemon-reload")
    try:
        out["first"] = call(launcher, "start", Job("flaky", "start", unit=unit), rec)
        out["state_after_first"] = show(unit, "ActiveState", "Result")
        cp = systemctl("start", unit)  # what a plain start does now: refused, start limit hit
        out["plain_start_rc"] = cp.returncode
        out["state_after_plain"] = show(unit, "ActiveState", "Result")
        Path("/run/cfwtest-ok").write_text("")
        out["second"] = call(launcher, "start", Job("flaky", "start", unit=unit), rec)
        out["active"] = launcher.active("flaky")
        pid = int(show(unit, "MainPID")["MainPID"])
        out["main_pid_alive"] = alive(pid)
        t0 = time.perf_counter()
        out["killed"] = launcher.kill_all()
        out["kill_all_call_s"] = time.perf_counter() - t0
        out["gone_s"] = wait_for(lambda: not alive(pid), 2.0)
        wait_for(lambda: show(unit, "ActiveState")["ActiveState"] in ("failed", "inactive"), 5, 0.02)
        out["state_after_kill"] = show(unit, "ActiveState", "Result")
        launcher.reset_failed("flaky")
        out["state_after_reset"] = show(unit, "ActiveState", "Result")
        out["third"] = call(launcher, "start", Job("flaky", "start", unit=unit), rec)
        out["stop"] = call(launcher, "stop", Job("flaky", "stop", unit=unit), rec)
        out["state_after_stop"] = show(unit, "ActiveState")
        out["failures"] = rec.failures
    finally:
        systemctl("stop", unit)
        systemctl("reset-failed", unit)
        (RUN_UNITS / unit).unlink(missing_ok=True)
        Path("/run/cfwtest-ok").unlink(missing_ok=True)
        systemctl("daemon-reload")
    return out


def check_commands(launcher, rec: Recorder) -> dict:
    """notify/recovery exit codes, the environment, a timeout, stop_command."""
    out: dict = {}
    out["notify_ok"] = call(launcher, "run", Job("cmd", "notify", ("true",)), rec)
    out["recovery_3"] = call(launcher, "run", Job("cmd", "recovery", ("sh", "-c", "exit 3")), rec)
    out["env"] = call(launcher, "run", Job("cmd", "notify", (  # systemd must not expand $ in the argv
        "sh", "-c", """test "$CLUSTERFW_EVENT" = 'joined n2 $x' && test -z "$PYTHONPATH" """),
        env={"CLUSTERFW_EVENT": "joined n2 $x"}), rec)
    out["timeout"] = call(launcher, "run", Job("cmd", "recovery", ("sleep", "30"), timeout_s=0.5), rec)
    out["start"] = call(launcher, "start", Job("stoppable", "start", (
        "sh", "-c", "echo $$ > /run/cfwtest-stoppable.pid; exec sleep 300")), rec)
    out["stop_command"] = call(launcher, "stop", Job("stoppable", "stop", (
        "sh", "-c", "kill $(cat /run/cfwtest-stoppable.pid)")), rec)
    out["active_after_stop"] = launcher.active("stoppable")
    out["failures"] = rec.failures
    Path("/run/cfwtest-stoppable.pid").unlink(missing_ok=True)
    return out


HOST_UNIT = """[Unit]
Description=stands in for the daemon's unit (clusterfw launcher test)

[Service]
Type=exec
ExecStart=/bin/sleep 300
"""


def check_bind(launcher, rec: Recorder) -> dict:
    """bind_to: no BindsTo while that unit is inactive; BindsTo/After while
    it is active, and stopping it stops the service."""
    out: dict = {}
    host = "cfwtest-host.service"
    (RUN_UNITS / host).write_text(HOST_UNIT)
    systemctl("daemon-reload")
    try:
        out["unbound"] = call(launcher, "start", Job("b1", "start", ("sleep", "300")), rec)
        out["unbound_props"] = show("clusterfw-svc-b1.service", "BindsTo", "After")
        out["unbound_stop"] = call(launcher, "stop", Job("b1", "stop"), rec)
        systemctl("start", host)
        out["bound"] = call(launcher, "start", Job("b2", "start", ("sleep", "300")), rec)
        out["bound_props"] = show("clusterfw-svc-b2.service", "BindsTo", "After")
        systemctl("stop", host)
        out["after_host_stop_s"] = wait_for(lambda: not launcher.active("b2"), 5, 0.02)
        out["failure"] = rec.wait_failure(1, 5)
    finally:
        systemctl("stop", host, "clusterfw-svc-b1.service", "clusterfw-svc-b2.service")
        (RUN_UNITS / host).unlink(missing_ok=True)
        systemctl("daemon-reload")
    return out


CHECKS = {"transient": check_transient, "failure": check_failure, "kill_all": check_kill_all,
          "installed": check_installed, "commands": check_commands, "bind": check_bind}
OPTIONS = {"bind": {"bind_to": "cfwtest-host.service"}}


def main() -> int:
    name = sys.argv[1]
    options = OPTIONS.get(name, {})
    rec = Recorder()
    launcher = make_launcher("systemd", **options)
    launcher.on_failure(rec.failed)
    result: dict = {"check": name}
    try:
        result.update(CHECKS[name](launcher, rec))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        result["error"] = "".join(traceback.format_exception(exc))
    finally:
        leftovers = [u for u in systemctl("list-units", "--all", "--plain", "--no-legend", "clusterfw-svc-*",
                                          "clusterfw-run-*").stdout.split("\n") if u.strip()]
        for line in leftovers:
            systemctl("stop", line.split()[0])
        result["leftover_units"] = leftovers
        launcher.close()
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    os.environ.pop("PYTHONPATH", None)
    sys.exit(main())
