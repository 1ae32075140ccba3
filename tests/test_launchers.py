"""The process launcher on this host, with real processes: start, stop
(SIGTERM, SIGKILL after the timeout, the stop_command), the failure
callback, start failures as sentences, notify/recovery exit codes and
environment, kill_all (a whole process group, grandchild included, well
under 100 ms) and the guardian (a launcher's process SIGKILLed: its
services and their children die within 0.5 s).  Plus the Job's validation
and make_launcher's errors.

Every process a test starts is recorded and, if still alive at the end
(a failed test), SIGKILLed by PID (start time checked); each launcher is
closed, which kills what it still runs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from clusterfw.subsystems.services.launchers import Job, LauncherError, Outcome, ProcessLauncher, make_launcher

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable

# A service whose process forks a grandchild (same process group), then
# writes "PID GRANDCHILD_PID" to argv[1] and sleeps.
WITH_CHILD = r"""
import os, sys, time
child = os.fork()
if child == 0:
    time.sleep(300)
    os._exit(0)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {child}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
"""


class Calls:
    """Outcomes and failures as the callbacks deliver them, with waits."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.outcomes: list[Outcome] = []
        self.failures: list[tuple[str, str]] = []
        self.threads: set[str] = set()

    def done(self, outcome: Outcome) -> None:
        with self.cond:
            self.threads.add(threading.current_thread().name)
            self.outcomes.append(outcome)
            self.cond.notify_all()

    def failed(self, service: str, reason: str) -> None:
        with self.cond:
            self.failures.append((service, reason))
            self.cond.notify_all()

    def outcome(self, count: int, timeout: float = 10.0) -> Outcome:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.outcomes) >= count, timeout), self.outcomes
            return self.outcomes[count - 1]

    def failure(self, count: int, timeout: float = 5.0) -> tuple[str, str] | None:
        with self.cond:
            self.cond.wait_for(lambda: len(self.failures) >= count, timeout)
            return self.failures[count - 1] if len(self.failures) >= count else None


class Harness:
    def __init__(self, launcher: ProcessLauncher) -> None:
        self.launcher = launcher
        self.calls = Calls()
        launcher.on_failure(self.calls.failed)
        self.pids: list[psutil.Process] = []

    def do(self, method: str, job: Job, timeout: float = 10.0) -> Outcome:
        with self.calls.cond:
            count = len(self.calls.outcomes) + 1
        getattr(self.launcher, method)(job, self.calls.done)
        return self.calls.outcome(count, timeout)

    def track(self, *pids: int) -> None:
        for pid in pids:
            try:
                self.pids.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass

    def cleanup(self) -> None:
        self.launcher.close()
        kill_survivors(self.pids)


def kill_survivors(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            if proc.is_running():  # is_running checks the start time: never a recycled PID
                proc.kill()
        except psutil.Error:
            pass


def dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_dead(pids: list[int], timeout: float) -> float | None:
    """Seconds until every pid is dead (zombies count as dead), or None."""
    t0 = time.perf_counter()
    while not all(dead(p) for p in pids):
        if time.perf_counter() - t0 > timeout:
            return None
        time.sleep(0.001)
    return time.perf_counter() - t0


def read_pids(path: Path, timeout: float = 10.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.01)
    first, second = path.read_text().split()
    return int(first), int(second)


@pytest.fixture
def h():
    harness = Harness(ProcessLauncher())
    try:
        yield harness
    finally:
        harness.cleanup()


# -- Job and make_launcher -------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"service": "a b", "action": "start"}, "service name 'a b'"),
    ({"service": "x" * 49, "action": "start"}, "is not 1 to 48"),
    ({"service": "web", "action": "restart"}, "action 'restart' is not one of"),
    ({"service": "web", "action": "start", "argv": "sleep 10"}, "never a shell string"),
    ({"service": "web", "action": "start", "argv": ("", "x")}, "the first one not empty"),
    ({"service": "web", "action": "start", "argv": ("sleep",), "env": {"PATH": "/x"}}, "only CLUSTERFW_*"),
    ({"service": "web", "action": "start", "timeout_s": 0}, "timeout_s must be positive"),
])
def test_a_bad_job_is_refused_with_a_sentence(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("(", r"\(")):
        Job(**kwargs)


def test_a_job_takes_a_list_as_its_argv_and_names_with_at_dot_dash():
    job = Job("db@node-1.x_y", "start", ["sleep", "1"], env={"CLUSTERFW_SERVICE": "db"})
    assert job.argv == ("sleep", "1") and hash(job)


def test_make_launcher_refuses_unknown_kinds_and_options():
    with pytest.raises(LauncherError, match=r"unknown launcher 'docker': it is 'process' or 'systemd'"):
        make_launcher("docker")
    with pytest.raises(LauncherError, match=r"the process launcher has no option 'bind_to' \(its options: "
                                            r"settle_s, env, cwd, log\)"):
        make_launcher("process", bind_to="clusterfw.service")


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="systemd runs here")
def test_the_systemd_launcher_without_systemd_says_so():
    with pytest.raises(LauncherError, match=r"the systemd launcher cannot reach systemd: .*needs systemd as PID 1"):
        make_launcher("systemd", timeout_s=3)


# -- start, stop, failure ----------------------------------------------------------------

def test_start_runs_the_service_as_its_own_process_group_and_stop_ends_it(h):
    out = h.do("start", Job("web", "start", ("sleep", "300")))
    assert out.ok and out.detail.startswith("running (pid ") and out.action == "start", out
    assert out.elapsed_s < 1.0
    print(f"\nprocess launcher: start -> active {out.elapsed_s * 1000:.0f} ms (settle 50 ms)")
    pid = int(out.detail.split("pid ")[1].rstrip(")"))
    h.track(pid)
    assert h.launcher.active("web")
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # a group and a session of its own
    assert h.calls.threads and threading.current_thread().name not in h.calls.threads
    again = h.do("start", Job("web", "start", ("sleep", "300")))
    assert again.ok and again.detail == f"already running (pid {pid})"
    stopped = h.do("stop", Job("web", "stop", timeout_s=5))
    assert stopped.ok and stopped.detail == "stopped by SIGTERM (the process killed by SIGTERM)", stopped
    assert not h.launcher.active("web") and dead(pid)
    assert h.do("stop", Job("web", "stop")).detail == "not running"
    assert h.calls.failures == []  # a stop is not a failure


def test_stop_sends_sigkill_after_the_timeout_to_the_whole_group(h, tmp_path):
    ignore = ("import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "exec(open(sys.argv[2]).read())")
    (tmp_path / "child.py").write_text(WITH_CHILD.replace("time.sleep(300)\n    os._exit",
                                                          "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                                          "    time.sleep(300)\n    os._exit"))
    path = tmp_path / "pids"
    assert h.do("start", Job("stubborn", "start", (PY, "-c", ignore, str(path), str(tmp_path / "child.py")))).ok
    pid, child = read_pids(path)
    h.track(pid, child)
    t0 = time.monotonic()
    out = h.do("stop", Job("stubborn", "stop", timeout_s=0.3))
    assert out.ok and out.detail == "stopped by SIGKILL 0.3 s after SIGTERM (the process killed by SIGKILL)", out
    assert 0.3 <= time.monotonic() - t0 < 3
    assert dead(pid) and dead(child)


@pytest.mark.parametrize("argv, detail", [
    (("sh", "-c", "exit 3"), "exited 3"),
    (("true",), "exited 0 (a service is the long-running process of its start command)"),
    (("sh", "-c", "kill -KILL $$"), "killed by SIGKILL"),
    (("/nonexistent/bin/service",), "cannot run '/nonexistent/bin/service': no such file or directory"),
    (("no-such-command-anywhere",), "cannot run 'no-such-command-anywhere': no such file or directory"),
    (("{tmp}/not-executable",), "cannot run '{tmp}/not-executable': permission denied"),
])
def test_a_start_that_fails_says_why_in_a_sentence(h, tmp_path, argv, detail):
    (tmp_path / "not-executable").write_text("#!/bin/sh\n")
    (tmp_path / "not-executable").chmod(0o644)
    argv = tuple(word.format(tmp=tmp_path) for word in argv)
    detail = detail.format(tmp=tmp_path)
    out = h.do("start", Job("broken", "start", argv))
    assert not out.ok and out.detail == detail, out
    assert not h.launcher.active("broken")
    assert h.calls.failures == []  # reported by the start's outcome, not as a failure


def test_nothing_to_start(h):
    assert h.do("start", Job("u", "start", unit="web.service")).detail == (
        "the process launcher runs commands and cannot start the unit web.service (use the systemd launcher)")
    assert h.do("start", Job("u", "start")).detail == "nothing to start: the job has no start command"
    with pytest.raises(ValueError, match="a 'stop' job cannot be given to start"):
        h.launcher.start(Job("u", "stop"), lambda _o: None)


def test_a_service_that_dies_by_itself_is_reported_once(h):
    assert h.do("start", Job("flaky", "start", ("sh", "-c", "sleep 0.3; exit 5"))).ok
    assert h.calls.failure(1) == ("flaky", "exited 5")
    assert h.launcher.failed("flaky") == "exited 5"
    assert not h.launcher.active("flaky")
    h.launcher.reset_failed("flaky")
    assert h.launcher.failed("flaky") is None
    assert h.do("start", Job("suicide", "start", (PY, "-c", "import os, time; time.sleep(0.3); "
                                                           "os.kill(os.getpid(), 9)"))).ok
    assert h.calls.failure(2) == ("suicide", "killed by SIGKILL")
    time.sleep(0.2)
    assert len(h.calls.failures) == 2


def test_the_rest_of_a_dead_services_group_is_killed(h, tmp_path):
    path = tmp_path / "pids"
    script = WITH_CHILD[:WITH_CHILD.rindex("time.sleep(300)")] + "time.sleep(0.5)\n"  # the parent exits 0
    assert h.do("start", Job("parent", "start", (PY, "-c", script, str(path)))).ok
    pid, child = read_pids(path)
    h.track(pid, child)
    assert h.calls.failure(1) == ("parent", "exited 0")
    assert wait_dead([child], 2.0) is not None


# -- kill_all ---------------------------------------------------------------------------------

def test_kill_all_kills_every_group_grandchildren_included_well_under_100_ms(h, tmp_path):
    pids = []
    for name in ("a", "b", "c"):
        path = tmp_path / f"{name}.pids"
        assert h.do("start", Job(name, "start", (PY, "-c", WITH_CHILD, str(path)))).ok
        pids += read_pids(path)
    h.track(*pids)
    h.launcher.run(Job("a", "recovery", ("sleep", "300")), h.calls.done)
    time.sleep(0.1)
    t0 = time.perf_counter()
    killed = h.launcher.kill_all()
    call_s = time.perf_counter() - t0
    gone_s = wait_dead(pids, 1.0)
    print(f"\nprocess launcher: kill_all returned in {call_s * 1000:.2f} ms; "
          f"6 processes (3 groups with a grandchild each) dead {gone_s and gone_s * 1000:.2f} ms later")
    assert sorted(killed) == ["a", "a (recovery)", "b", "c"]
    assert call_s < 0.1
    assert gone_s is not None and gone_s < 0.5, [p for p in pids if not dead(p)]
    recovery = h.calls.outcome(4)
    assert not recovery.ok and recovery.detail == "killed by SIGKILL (kill_all)", recovery
    assert [h.launcher.active(s) for s in "abc"] == [False, False, False]
    time.sleep(0.2)
    assert h.calls.failures == []  # the fence is not a failure
    assert h.launcher.kill_all() == []
    out = h.do("start", Job("a", "start", ("sleep", "300")))  # the launcher works on after a fence
    assert out.ok and h.launcher.active("a")


# -- stop_command, notify, recovery ----------------------------------------------------------

def test_stop_command_stops_the_service(h, tmp_path):
    pidfile = tmp_path / "pid"
    assert h.do("start", Job("db", "start", ("sh", "-c", f"echo $$ > {pidfile}; exec sleep 300"))).ok
    deadline = time.monotonic() + 5
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pid = int(pidfile.read_text())
    h.track(pid)
    out = h.do("stop", Job("db", "stop", ("sh", "-c", f"kill -TERM $(cat {pidfile})"), timeout_s=5))
    assert out.ok and out.detail == ("stop_command exited 0; stopped by stop_command "
                                     "(the process killed by SIGTERM)"), out
    assert dead(pid) and not h.launcher.active("db")
    out = h.do("stop", Job("db", "stop", ("sh", "-c", "exit 0")))
    assert out.ok and out.detail == "stop_command exited 0; the service was not running"


def test_a_stop_command_that_does_not_stop_it_is_followed_by_sigterm(h):
    assert h.do("start", Job("db", "start", ("sleep", "300"))).ok
    out = h.do("stop", Job("db", "stop", ("sh", "-c", "exit 2"), timeout_s=0.2))
    assert out.ok and out.detail == "stop_command exited 2; stopped by SIGTERM (the process killed by SIGTERM)"


def test_notify_and_recovery_report_the_exit_code_and_get_the_environment(tmp_path):
    launcher = ProcessLauncher(env={**os.environ, "CLUSTERFW_INHERITED": "no", "NOTIFY_SOCKET": "/x"})
    h = Harness(launcher)
    try:
        assert h.do("run", Job("svc", "notify", ("true",))) .detail == "exited 0"
        out = h.do("run", Job("svc", "recovery", ("sh", "-c", "exit 3")))
        assert not out.ok and out.detail == "exited 3" and out.action == "recovery"
        check = ('test "$CLUSTERFW_EVENT" = "joined n2 \\$x" && test -z "$CLUSTERFW_INHERITED" '
                 '&& test -z "$NOTIFY_SOCKET" && test "$(pwd)" = /')
        out = h.do("run", Job("svc", "notify", ("sh", "-c", check), env={"CLUSTERFW_EVENT": "joined n2 $x"}))
        assert out.ok, out
        t0 = time.monotonic()
        out = h.do("run", Job("svc", "recovery", ("sh", "-c", "sleep 300 & sleep 300"), timeout_s=0.3))
        assert not out.ok and out.detail == "timed out after 0.3 s (killed)", out
        assert time.monotonic() - t0 < 3
        out = h.do("run", Job("svc", "notify", ("/nonexistent",)))
        assert not out.ok and out.detail == "cannot run '/nonexistent': no such file or directory"
        with pytest.raises(ValueError, match="a 'start' job cannot be given to notify/recovery"):
            launcher.run(Job("svc", "start", ("true",)), lambda _o: None)
    finally:
        h.cleanup()


def test_a_callback_that_raises_does_not_stop_the_others(h):
    seen = []

    def bad(_outcome):
        raise RuntimeError("a bug in the caller")

    h.launcher.run(Job("x", "notify", ("true",)), bad)
    h.launcher.run(Job("x", "notify", ("true",)), seen.append)
    deadline = time.monotonic() + 5
    while not seen:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert seen[0].ok


# -- the guardian ------------------------------------------------------------------------------

HELPER = r"""
import json, sys, threading
from clusterfw.subsystems.services.launchers import Job, ProcessLauncher
launcher = ProcessLauncher()
done = threading.Event()
launcher.start(Job("guarded", "start", (sys.executable, "-c", sys.argv[1], sys.argv[2])), lambda o: done.set())
done.wait(10)
print(json.dumps({"guardian": launcher.guardian_pid}), flush=True)
threading.Event().wait()
"""


def test_the_guardian_kills_the_services_of_a_launcher_that_was_sigkilled(tmp_path):
    path = tmp_path / "pids"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    helper = subprocess.Popen([PY, "-c", HELPER, WITH_CHILD, str(path)], stdout=subprocess.PIPE, text=True,
                              env=env)
    procs = [psutil.Process(helper.pid)]
    try:
        line = helper.stdout.readline()
        guardian = json.loads(line)["guardian"]
        procs.append(psutil.Process(guardian))
        service, grandchild = read_pids(path)
        procs += [psutil.Process(service), psutil.Process(grandchild)]
        assert os.getpgid(grandchild) == service and psutil.Process(service).ppid() == helper.pid
        t0 = time.perf_counter()
        os.kill(helper.pid, signal.SIGKILL)
        gone_s = wait_dead([service, grandchild], 0.5)
        print(f"\nguardian: service and grandchild dead {gone_s and gone_s * 1000:.1f} ms after the "
              "launcher's process was SIGKILLed")
        assert gone_s is not None, "the service or its child survived the launcher by 0.5 s"
        helper.wait(5)
        assert wait_dead([guardian], 2.0) is not None, "the guardian did not exit"
        assert time.perf_counter() - t0 < 3
    finally:
        helper.stdout.close()
        kill_survivors(procs)
        helper.wait(5)


def test_close_kills_what_runs_and_ends_the_guardian(tmp_path):
    h = Harness(ProcessLauncher())
    guardian = h.launcher.guardian_pid
    h.track(guardian)
    path = tmp_path / "pids"
    try:
        assert h.do("start", Job("x", "start", (PY, "-c", WITH_CHILD, str(path)))).ok
        pids = read_pids(path)
        h.track(*pids)
        h.launcher.close()
        assert wait_dead([*pids, guardian], 2.0) is not None
        with pytest.raises(LauncherError, match="the process launcher is closed"):
            h.launcher.start(Job("x", "start", ("true",)), lambda _o: None)
    finally:
        h.cleanup()


def test_a_dead_guardian_is_replaced_and_told_every_group(tmp_path):
    h = Harness(ProcessLauncher())
    try:
        first = h.launcher.guardian_pid
        h.track(first)
        path = tmp_path / "pids"
        assert h.do("start", Job("x", "start", (PY, "-c", WITH_CHILD, str(path)))).ok
        pids = read_pids(path)
        h.track(*pids)
        os.kill(first, signal.SIGKILL)  # a guardian this test's launcher started
        assert wait_dead([first], 2.0) is not None
        assert h.do("start", Job("y", "start", ("sleep", "300"))).ok  # the next registration notices
        second = h.launcher.guardian_pid
        assert second != first
        h.track(second)
        guardian = psutil.Process(second)
        assert guardian.is_running() and all(not dead(p) for p in pids)
        h.launcher._guardian.close()  # K: the new guardian kills every group, the first service's too
        assert wait_dead(list(pids), 2.0) is not None
    finally:
        h.cleanup()
