"""Launchers: how the registration & launch service starts, stops, notifies,
recovers and -- when the node is fenced -- kills the client services of
this node.

How this works
--------------
The registration & launch service decides *what* happens to service S on
this node; a ``Launcher`` does it.  It is handed a ``Job`` (the service's
name, the action, the command or unit, ``CLUSTERFW_*`` environment
variables and a timeout) and a ``done`` callback, returns at once, and
calls ``done(Outcome)`` exactly once when the action is over: ``ok`` and a
``detail`` sentence ("exited 3", "start timed out after 60 s", "unit
clusterfw-svc-web.service entered failed (exit-code, exited 1)").  A service
that was started and then dies by itself is reported to every
``on_failure`` callback as ``(service, reason)``; one that is stopped, or
killed by ``kill_all``, is not.  Callbacks run one at a time, in order, on a
thread of the launcher's (never inside the call that caused them, never on
the launcher's internal threads), so they may call the launcher again.

``kill_all()`` is the fence: it SIGKILLs everything the launcher started and
has not yet seen stopped -- services and the commands it runs -- and returns
their names.  It is synchronous, takes no lock for longer than a few
milliseconds and finishes well under 100 ms; it returns once the signals are
sent (a process in uninterruptible sleep dies when it leaves it).

Two launchers, chosen with ``make_launcher(kind, **options)``:

* ``process`` (this module): a service is the long-running process of its
  ``start_command``, run with ``subprocess.Popen(argv,
  start_new_session=True)`` so that each service (and each command) is a
  process group of its own, its children included.  A start succeeds when
  the process was executed and is still alive after ``settle_s`` (0.05 s);
  one that exits sooner failed ("exited 0" included: a service does not
  daemonise).  A watcher thread per process waits for it; when it dies the
  rest of its group is SIGKILLed and, unless it was being stopped, the
  failure callbacks get "exited N" or "killed by SIGX".  ``stop`` runs the
  ``stop_command`` when the job has one, then (or else) sends SIGTERM to
  the group (after the stop_command ended, once the service had
  ``STOP_COMMAND_GRACE_S`` to exit by itself, as systemd does after
  ``ExecStop=``), SIGKILL after ``job.timeout_s``, and is done once no process of
  the group is left.  ``run`` (notify, recovery) runs a command in its own
  group to completion; exit 0 is ok, and after ``job.timeout_s`` the group
  is killed.  Services get the launcher's environment without systemd's
  per-unit variables (``NOTIFY_SOCKET``, ``WATCHDOG_*``, ``LISTEN_*``) and
  without inherited ``CLUSTERFW_*`` variables, plus the job's ``env``;
  working directory ``/``; standard input ``/dev/null``, output inherited
  (the daemon's journal under systemd).  Under ``clusterfw.service`` they
  also inherit the daemon's sandbox (``ProtectSystem=strict``,
  ``PrivateTmp=``, ...): a service that needs more uses the systemd launcher.

* ``systemd`` (``systemd_launcher.py``): transient units in
  ``clusterfw-services.slice``, or the installed unit a job names, over
  systemd's D-Bus API; ``kill_all`` is ``cgroup.kill`` of the slice.

**The guardian (process launcher).**  When the process hosting the launcher
dies -- even by SIGKILL -- everything it started must die too, before the
cluster restarts the service elsewhere (about a second later).  A process
group does not die with its parent, and ``PR_SET_PDEATHSIG`` would reach
only direct children (and needs a ``preexec_fn``, which is unsafe in a
threaded daemon), so the launcher starts a *guardian*
(``guardian.py``): a tiny process in its own session reading a pipe whose
only write end the launcher holds (close-on-exec).  The launcher writes
each new process group's id to it (``+PGID``) and each finished one
(``-PGID``); on end of file -- the launcher's process died, however -- the
guardian SIGKILLs every recorded group and exits; ``close()`` tells it to do
the same (``K``).  A guardian that died is restarted and told every group
again.  The group is registered right after ``Popen`` returns: a launcher
killed in those microseconds leaves that one service running.  A process
that leaves its group (``setsid()``, a daemonising double fork) escapes
both the guardian and ``kill_all``; the systemd launcher's cgroups do not
have that hole.  A bare ``os.fork()`` of the daemon (without exec) would
keep the pipe open and delay the guardian until that child exits too.
"""
from __future__ import annotations

import abc
import functools
import inspect
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import psutil

from clusterfw.core.svcdef import NAME_MAX

ACTIONS = ("start", "stop", "notify", "recovery")
SERVICE_NAME = re.compile(rf"[A-Za-z0-9_.@-]{{1,{NAME_MAX}}}")
ENV_NAME = re.compile(r"CLUSTERFW_[A-Za-z0-9_]+")
STRIPPED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                "LISTEN_FDNAMES")
KILL_WAIT_S = 2.0
"""How long a group may take to vanish after SIGKILL before a stop reports it stuck."""
SPAWN_LOCK_WAIT_S = 0.05
"""The longest ``kill_all`` waits for a start that is executing its process."""

Log = Callable[[str, str], None]
Done = Callable[["Outcome"], None]
Finish = Callable[[bool, str], None]


STOP_COMMAND_GRACE_S = 1.0
"""How long a service may take to exit after its stop_command ended, before SIGTERM."""

class LauncherError(Exception):
    """A launcher cannot be made or cannot do what was asked; ``str()`` is a sentence."""


@dataclass(frozen=True)
class Job:
    service: str
    """The service's name, ``[A-Za-z0-9_.@-]{1,48}``."""
    action: str
    """``start`` | ``stop`` | ``notify`` | ``recovery``."""
    argv: tuple[str, ...] = ()
    """The command of a command-defined service (never a shell string): the
    start_command for ``start``, the stop_command (or nothing) for ``stop``,
    the notify/recovery command for ``notify``/``recovery``."""
    unit: str = ""
    """An installed unit instead of a command (systemd launcher only)."""
    env: dict[str, str] = field(default_factory=dict, hash=False)
    """``CLUSTERFW_*`` variables for the command."""
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.service, str) or not SERVICE_NAME.fullmatch(self.service):
            raise ValueError(f"service name {self.service!r} is not 1 to {NAME_MAX} of A-Z a-z 0-9 _ . @ -")
        if self.action not in ACTIONS:
            raise ValueError(f"action {self.action!r} is not one of {', '.join(ACTIONS)}")
        if isinstance(self.argv, str):
            raise ValueError("argv is a sequence of words, never a shell string")
        argv = tuple(self.argv)
        if any(not isinstance(word, str) or "\0" in word for word in argv) or (argv and not argv[0]):
            raise ValueError(f"argv {argv!r}: every word is a string without NUL, the first one not empty")
        object.__setattr__(self, "argv", argv)
        for key, value in self.env.items():
            if not ENV_NAME.fullmatch(key) or not isinstance(value, str) or "\0" in value:
                raise ValueError(f"environment variable {key!r}: only CLUSTERFW_* names with string values "
                                 "without NUL are passed to a service")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {self.timeout_s!r}")


@dataclass(frozen=True)
class Outcome:
    service: str
    action: str
    ok: bool
    detail: str
    """A sentence: "exited 3", "start timed out after 60 s", "unit ... entered failed (exit-code, exited 1)"."""
    elapsed_s: float


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_exit(returncode: int) -> str:
    """A Popen return code as a sentence: ``exited 3``, ``killed by SIGTERM``."""
    return f"exited {returncode}" if returncode >= 0 else f"killed by {signal_name(-returncode)}"


class CallbackThread:
    """Runs callbacks one at a time, in the order posted, on one thread."""

    def __init__(self, name: str, log: Log) -> None:
        self._name = name
        self._log = log
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def post(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
        self._queue.put(fn)

    def _loop(self) -> None:
        while True:
            fn = self._queue.get()
            if fn is None:
                return
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - a callback's bug must not stop the others
                self._log("error", f"launcher callback raised {exc.__class__.__name__}: {exc}")

    def close(self, timeout: float = 5.0) -> None:
        """Run what is queued, then stop."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        if thread is not threading.current_thread():
            thread.join(timeout)


class Launcher(abc.ABC):
    """Starts, stops, notifies and kills the client services of this node."""

    name: str = ""

    def __init__(self, log: Log | None = None) -> None:
        self._log: Log = log or (lambda _priority, _text: None)
        self._failure_callbacks: list[Callable[[str, str], None]] = []
        self._callbacks = CallbackThread(f"{self.name}-launcher-callbacks", self._log)
        self._failed: dict[str, str] = {}
        self._closed = False

    @abc.abstractmethod
    def start(self, job: Job, done: Done) -> None:
        """Start the service (asynchronous): ``done(outcome)`` once."""

    @abc.abstractmethod
    def stop(self, job: Job, done: Done) -> None:
        """Run ``job.argv`` (the stop_command) if there is one, then make sure
        what ``start`` started is gone; ``done`` once it is."""

    @abc.abstractmethod
    def run(self, job: Job, done: Done) -> None:
        """notify/recovery: run ``job.argv`` to completion (exit 0 is ok)."""

    @abc.abstractmethod
    def active(self, service: str) -> bool:
        """Whether what ``start`` started for ``service`` runs now (the real state, read now)."""

    def on_failure(self, callback: Callable[[str, str], None]) -> None:
        """``callback(service, reason)`` whenever a started service dies by itself."""
        self._failure_callbacks.append(callback)

    @abc.abstractmethod
    def kill_all(self) -> list[str]:
        """The fence: SIGKILL everything started and not yet stopped; returns what was killed."""

    def failed(self, service: str) -> str | None:
        """Why ``service`` last failed by itself (after it had started), until ``reset_failed``."""
        return self._failed.get(service)

    def reset_failed(self, service: str) -> None:
        """Forget the service's failure."""
        self._failed.pop(service, None)

    @abc.abstractmethod
    def close(self) -> None:
        """Release the launcher (see each launcher for what happens to running services)."""

    # -- for the implementations -------------------------------------------------
    def _check(self, job: Job, *actions: str) -> None:
        if not isinstance(job, Job):
            raise TypeError(f"a Job is needed, not {type(job).__name__}")
        if job.action not in actions:
            raise ValueError(f"a {job.action!r} job cannot be given to {'/'.join(actions)}")
        if self._closed:
            raise LauncherError(f"the {self.name} launcher is closed")

    def _once(self, job: Job, done: Done) -> Finish:
        """``finish(ok, detail)``: builds the Outcome (elapsed since now) and
        posts ``done`` -- the first time only."""
        lock = threading.Lock()
        called = False
        t0 = time.monotonic()

        def finish(ok: bool, detail: str) -> None:
            nonlocal called
            with lock:
                if called:
                    return
                called = True
            outcome = Outcome(job.service, job.action, ok, detail, round(time.monotonic() - t0, 6))
            self._log("info" if ok else "warning", f"service {job.service}: {job.action} "
                      f"{'ok' if ok else 'failed'}: {detail}")
            self._callbacks.post(lambda: done(outcome))

        return finish

    def _report_failure(self, service: str, reason: str) -> None:
        self._failed[service] = reason
        self._log("warning", f"service {service} failed: {reason}")
        for callback in list(self._failure_callbacks):
            self._callbacks.post(functools.partial(callback, service, reason))


# ----------------------------------------------------------------------------
# the process launcher


class _GuardianLink:
    """The launcher's end of the guardian's pipe (see the module docstring)."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        with self._lock:
            self._spawn()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _spawn(self) -> None:
        import clusterfw
        root = str(Path(clusterfw.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen([sys.executable, "-m", "clusterfw.subsystems.services.guardian"],
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd="/", env=env,
                                      start_new_session=True, close_fds=True)

    def _write(self, data: bytes) -> None:
        """Under the lock.  A dead guardian is replaced and told every group again."""
        if self._closed:
            return
        for _attempt in range(2):
            proc = self._proc
            if proc is not None and proc.poll() is None and proc.stdin is not None:
                try:
                    os.write(proc.stdin.fileno(), data)
                    return
                except (OSError, ValueError):  # ValueError: its pipe was closed here
                    pass
            if self._closed:
                return
            old = proc.pid if proc is not None else None
            self._log("error", f"the launcher's guardian (pid {old}) is gone; starting a new one")
            if proc is not None:
                self._discard(proc)
            self._spawn()
            data = b"".join(f"+{g}\n".encode() for g in sorted(self._groups))
            if not data:
                return

    @staticmethod
    def _discard(proc: subprocess.Popen[bytes]) -> None:
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=0)
        except subprocess.TimeoutExpired:
            pass

    def add(self, pgid: int) -> None:
        with self._lock:
            self._groups.add(pgid)
            self._write(f"+{pgid}\n".encode())

    def remove(self, pgid: int) -> None:
        with self._lock:
            if pgid in self._groups:
                self._groups.discard(pgid)
                self._write(f"-{pgid}\n".encode())

    def close(self) -> None:
        """Tell the guardian to kill what is still recorded, and wait for it to exit."""
        with self._lock:
            if self._closed:
                return
            self._write(b"K\n")
            self._closed = True
            proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(eq=False)
class _Group:
    service: str
    action: str
    popen: subprocess.Popen[bytes]
    process: psutil.Process | None
    phase: str
    """``settling`` -> ``running`` -> ``stopping`` (a service); ``command``
    (a run or a stop_command); ``killed`` (kill_all); ``done``."""
    returncode: int | None = None
    fenced: bool = False
    """SIGKILLed by kill_all."""
    exited: threading.Event = field(default_factory=threading.Event)

    @property
    def pgid(self) -> int:
        return self.popen.pid


def group_members(pgid: int) -> list[int]:
    """PIDs of the live (not zombie) processes of process group ``pgid``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            found.append(int(entry.name))
    return found


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return not group_members(pgid)


def _killpg(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class ProcessLauncher(Launcher):
    """Services as process groups of this process (see the module docstring).

    ``close()`` kills every service and command still running (through the
    guardian): a service must not outlive the launcher that answers for it.
    Stop them first for a graceful end."""

    name = "process"

    def __init__(self, *, settle_s: float = 0.05, env: Mapping[str, str] | None = None, cwd: str = "/",
                 log: Log | None = None) -> None:
        super().__init__(log)
        self.settle_s = settle_s
        base = dict(os.environ if env is None else env)
        self._base_env = {k: v for k, v in base.items()
                          if k not in STRIPPED_ENV and not k.startswith("CLUSTERFW_")}
        self._cwd = cwd
        self._lock = threading.RLock()  # a start checks and spawns under it
        self._generation = 0
        self._groups: dict[int, _Group] = {}
        self._services: dict[str, _Group] = {}
        self._guardian = _GuardianLink(self._log)

    @property
    def guardian_pid(self) -> int | None:
        return self._guardian.pid

    # -- the interface ----------------------------------------------------------------
    def start(self, job: Job, done: Done) -> None:
        self._check(job, "start")
        self._in_thread(f"start-{job.service}", self._start, job, self._once(job, done))

    def stop(self, job: Job, done: Done) -> None:
        self._check(job, "stop")
        self._in_thread(f"stop-{job.service}", self._stop, job, self._once(job, done))

    def run(self, job: Job, done: Done) -> None:
        self._check(job, "notify", "recovery")
        self._in_thread(f"{job.action}-{job.service}", self._run, job, self._once(job, done))

    def active(self, service: str) -> bool:
        with self._lock:
            group = self._services.get(service)
        if group is None or group.returncode is not None or group.process is None:
            return False
        try:
            return bool(group.process.is_running() and group.process.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    def kill_all(self) -> list[str]:
        self._generation += 1  # a start executing its process now kills it itself (see _spawn)
        locked = self._lock.acquire(timeout=SPAWN_LOCK_WAIT_S)
        try:
            groups = [g for g in list(self._groups.values()) if g.phase != "done"]
            for group in groups:
                group.phase, group.fenced = "killed", True
                if self._services.get(group.service) is group:
                    del self._services[group.service]
        finally:
            if locked:
                self._lock.release()
        killed = []
        for group in groups:
            if _killpg(group.pgid, signal.SIGKILL):
                killed.append(group.service if group.action == "start" else f"{group.service} ({group.action})")
        if killed:
            self._log("warning", f"kill_all: SIGKILL to {', '.join(killed)}")
        return killed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.kill_all()
        self._guardian.close()
        self._callbacks.close()

    # -- workers --------------------------------------------------------------------------
    def _in_thread(self, name: str, target: Callable[[Job, Finish, int], None], job: Job, finish: Finish) -> None:
        generation = self._generation  # what is asked before a kill_all never runs after it

        def body() -> None:
            try:
                target(job, finish, generation)
            except Exception as exc:  # noqa: BLE001 - reported as the outcome, never lost
                self._log("error", f"service {job.service}: {job.action} raised {exc.__class__.__name__}: {exc}")
                finish(False, f"internal error: {exc.__class__.__name__}: {exc}")

        threading.Thread(target=body, name=f"svc-{name}", daemon=True).start()

    def _spawn(self, job: Job, phase: str, generation: int) -> tuple[_Group | None, str]:
        """Execute job.argv as a new process group, registered everywhere;
        (group, '') or (None, why not).  ``generation``: kill_all's count
        when the action was asked for."""
        env = {**self._base_env, **job.env}
        with self._lock:
            if generation != self._generation:
                return None, "not run: kill_all came first"
            try:
                popen = subprocess.Popen(list(job.argv), env=env, cwd=self._cwd, stdin=subprocess.DEVNULL,
                                         start_new_session=True, close_fds=True)
            except FileNotFoundError:
                return None, f"cannot run {job.argv[0]!r}: no such file or directory"
            except PermissionError:
                return None, f"cannot run {job.argv[0]!r}: permission denied"
            except OSError as exc:
                return None, f"cannot run {job.argv[0]!r}: {exc.strerror or exc}"
            try:
                process: psutil.Process | None = psutil.Process(popen.pid)
            except psutil.Error:
                process = None
            group = _Group(job.service, job.action, popen, process, phase)
            self._groups[group.pgid] = group
            if job.action == "start":
                self._services[job.service] = group
            self._guardian.add(group.pgid)
        if self._generation != generation:  # kill_all ran while it was being executed
            group.phase, group.fenced = "killed", True
            _killpg(group.pgid, signal.SIGKILL)
        threading.Thread(target=self._watch, args=(group,), name=f"svc-watch-{job.service}", daemon=True).start()
        return group, ""

    def _watch(self, group: _Group) -> None:
        """Wait for the group's process; clean up after it; report a failure."""
        returncode = group.popen.wait()
        with self._lock:
            group.returncode = returncode
            phase = group.phase
            failed = phase == "running" and self._services.get(group.service) is group
            if failed:
                del self._services[group.service]
        group.exited.set()
        if phase != "stopping":  # the stop in progress takes care of the rest of its group
            self._finish_group(group, signal.SIGKILL)
        if failed:
            self._report_failure(group.service, describe_exit(returncode))

    def _finish_group(self, group: _Group, sig: int, wait_s: float = KILL_WAIT_S) -> bool:
        """Signal what is left of the group, wait until it is gone, forget it; gone?"""
        if not _group_gone(group.pgid):
            _killpg(group.pgid, sig)
        deadline = time.monotonic() + wait_s
        while not _group_gone(group.pgid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        with self._lock:
            group.phase = "done"
            self._groups.pop(group.pgid, None)
        self._guardian.remove(group.pgid)
        return True

    def _start(self, job: Job, finish: Finish, generation: int) -> None:
        if not job.argv:
            if job.unit:
                finish(False, f"the process launcher runs commands and cannot start the unit {job.unit} "
                              "(use the systemd launcher)")
            else:
                finish(False, "nothing to start: the job has no start command")
            return
        with self._lock:
            current = self._services.get(job.service)
            if current is None or current.returncode is not None:
                group, why = self._spawn(job, "settling", generation)
        if current is not None and current.returncode is None:
            if current.phase == "running":
                finish(True, f"already running (pid {current.pgid})")
            else:
                finish(False, f"a {'start' if current.phase == 'settling' else 'stop'} of this service is "
                              "in progress")
            return
        if group is None:
            finish(False, why)
            return
        group.exited.wait(self.settle_s)
        with self._lock:
            running = group.returncode is None and group.phase == "settling"
            if running:
                group.phase = "running"
            elif self._services.get(job.service) is group:
                del self._services[job.service]
        if running:
            self._failed.pop(job.service, None)
            finish(True, f"running (pid {group.pgid})")
            return
        group.exited.wait(KILL_WAIT_S)
        if group.fenced:
            finish(False, "killed by kill_all while it started")
        elif group.returncode is None:
            finish(False, "stopped while it started")
        else:
            finish(False, describe_exit(group.returncode)
                   + (" (a service is the long-running process of its start command)"
                      if group.returncode == 0 else ""))

    def _run_command(self, job: Job, deadline: float, generation: int) -> tuple[int | None, str]:
        """Run job.argv in a group of its own until it exits or the deadline:
        (return code or None, sentence)."""
        group, why = self._spawn(job, "command", generation)
        if group is None:
            return None, why
        if group.exited.wait(max(0.0, deadline - time.monotonic())):
            assert group.returncode is not None
            return group.returncode, describe_exit(group.returncode) + (" (kill_all)" if group.fenced else "")
        self._finish_group(group, signal.SIGKILL)
        return None, f"timed out after {job.timeout_s:g} s (killed)"

    def _run(self, job: Job, finish: Finish, generation: int) -> None:
        if not job.argv:
            finish(False, f"nothing to run: the job has no {job.action} command")
            return
        returncode, detail = self._run_command(job, time.monotonic() + job.timeout_s, generation)
        finish(returncode == 0, detail)

    def _stop(self, job: Job, finish: Finish, generation: int) -> None:
        with self._lock:
            group = self._services.get(job.service)
            if group is not None and group.returncode is None and group.phase in ("settling", "running"):
                group.phase = "stopping"
            else:
                group = None
        said = []
        if job.argv:
            deadline = time.monotonic() + job.timeout_s
            returncode, detail = self._run_command(job, deadline, generation)
            said.append(f"stop_command {detail}")
            if group is None:
                finish(returncode == 0, f"stop_command {detail}; the service was not running")
                return
            # As systemd does after ExecStop=: what is left once the stop_command ended
            # is stopped with SIGTERM -- after a short grace for a service that exits by itself.
            group.exited.wait(max(0.0, min(STOP_COMMAND_GRACE_S, deadline - time.monotonic())))
        elif group is None:
            finish(True, "not running")
            return
        how = "by stop_command" if group.exited.is_set() else "by SIGTERM"
        grace = time.monotonic() + job.timeout_s
        if not _group_gone(group.pgid):  # the service, or what is left of its group
            _killpg(group.pgid, signal.SIGTERM)
        group.exited.wait(max(0.0, grace - time.monotonic()))
        while group.exited.is_set() and not _group_gone(group.pgid) and time.monotonic() < grace:
            time.sleep(0.02)
        if not (group.exited.is_set() and _group_gone(group.pgid)):
            how = f"by SIGKILL {job.timeout_s:g} s after SIGTERM"
        gone = self._finish_group(group, signal.SIGKILL)
        with self._lock:
            if self._services.get(job.service) is group:
                del self._services[job.service]
        if gone:
            group.exited.wait(KILL_WAIT_S)
        exit_said = f" (the process {describe_exit(group.returncode)})" if group.returncode is not None else ""
        said.append(f"stopped {how}{exit_said}" if gone else f"still running {KILL_WAIT_S:g} s after SIGKILL")
        finish(gone, "; ".join(said))


# ----------------------------------------------------------------------------


def make_launcher(kind: str, **options: Any) -> Launcher:
    """``make_launcher("process", settle_s=0.05)`` or ``make_launcher("systemd",
    bind_to="clusterfw.service")``; ``LauncherError`` for anything else."""
    cls: type[Launcher]
    if kind == "process":
        cls = ProcessLauncher
    elif kind == "systemd":
        try:
            from clusterfw.subsystems.services.systemd_launcher import SystemdLauncher
        except ImportError as exc:
            raise LauncherError(f"the systemd launcher needs dbus-fast (pip install 'dbus-fast>=1.84', or "
                                f"apt-get install python3-dbus-fast): {exc}") from None
        cls = SystemdLauncher
    else:
        raise LauncherError(f"unknown launcher {kind!r}: it is 'process' or 'systemd'")
    accepted = [name for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.kind == inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise LauncherError(f"the {kind} launcher has no option {', '.join(map(repr, unknown))} "
                            f"(its options: {', '.join(accepted)})")
    return cls(**options)
