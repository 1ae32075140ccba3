"""The systemd launcher: client services as systemd units, over systemd's D-Bus API.

How this works
--------------
One ``SystemdBus`` (``clusterfw.host.systemd_bus``: dbus-fast on a thread of
its own with its own asyncio loop, subscribed to systemd's signals) carries
everything; the public methods are thread-safe: they hand a coroutine to
that loop and return (``start``, ``stop``, ``run``) or wait for it
(``active``, ``reset_failed``).  Outcomes and failures are reported on the
launcher's callback thread, never on the bus loop.

* **Command-defined services** (``job.argv``) become the transient unit
  ``clusterfw-svc-<service>.service`` (``StartTransientUnit``, mode
  ``replace``; an ``@`` in the name is written ``\\x40``): ``ExecStart`` is
  the argv as it is -- no shell, and ``ExecStartEx`` with the
  ``no-env-expand`` flag, so systemd does not expand ``$VAR`` in it (a
  systemd older than 243 gets ``ExecStart`` with ``$`` written ``$$``); a
  relative ``argv[0]`` is looked up in ``PATH`` here, systemd wants a path --
  ``Type=exec`` (the start job is done once the command was executed),
  ``Slice=clusterfw-services.slice``, ``KillMode=control-group``,
  ``Environment=`` the job's ``CLUSTERFW_*`` variables,
  ``CollectMode=inactive-or-failed`` (a stopped or failed one is unloaded,
  so the name is free for the next start), ``TimeoutStartSec=`` and
  ``TimeoutStopSec=`` the job's timeout.  With ``bind_to`` (default
  ``clusterfw.service``: the daemon's unit) and only while that unit is
  active, also ``BindsTo=`` and ``After=`` it, so that systemd stops the
  services when the daemon's unit stops or dies.  Only while it is
  *active*: ``After=`` a unit that is still starting would make the service's
  start job wait for the daemon's, which may be waiting for this start.
* **Installed units** (``job.unit``) are started and stopped with
  ``StartUnit``/``StopUnit`` (mode ``replace``).  A unit found ``failed``
  (its start limit hit, say) gets ``ResetFailedUnit`` first.
* A start is over when its job's ``JobRemoved`` comes (``done``, ``failed``,
  ``timeout``, ``canceled``, ``dependency``, ...) and, after ``done``, the
  unit is still ``active`` ``settle_s`` later (a command that exits at once
  failed to start, as with the process launcher).  Past the job's timeout
  the start job is cancelled and the unit stopped: "start timed out after
  60 s".
* The unit's ``PropertiesChanged`` signals are watched from before the start:
  a started unit that turns ``failed`` or ``inactive`` by itself is reported
  to the failure callbacks ("unit clusterfw-svc-web.service entered failed
  (exit-code, exited 1)"; the ``Result`` and exit status come with the
  signals of the ``Service`` interface, which systemd sends before the
  ``Unit`` ones, so they are known even when the transient unit has been
  unloaded at once).  A unit that systemd restarts by itself (``Restart=``
  of an installed unit) is reported only when it stays down.
* ``stop`` runs the stop_command (if the job has one) as a transient
  ``Type=oneshot`` unit in the slice, then ``StopUnit`` in any case; it is
  done when the stop job is (systemd has then killed the unit's whole
  cgroup).  A stop job that outlives the timeout is answered with
  ``KillUnit(SIGKILL)``.  ``run`` (notify, recovery) runs its command the
  same way as the stop_command and reports the exit status.
* ``kill_all`` (the fence) writes ``1`` to the ``cgroup.kill`` file (cgroup
  v2, Linux 5.14) of the slice's cgroup and of each installed unit it
  started -- one write, no D-Bus round trip, so it works even while the bus
  thread is stuck.  The slice is started when the launcher is made, so its
  ``ControlGroup`` is known from then on.  Where that file cannot be
  written (no cgroup v2, or a read-only /sys/fs/cgroup: the daemon's unit
  has ``ProtectControlGroups=yes``) it falls back to ``KillUnit(unit,
  "all", SIGKILL)`` over the bus, with a deadline of 80 ms.  What was asked
  before a ``kill_all`` never runs after it: a start or command not yet
  begun is refused, and a unit whose start job was already queued is
  killed again (``KillUnit``) as soon as it comes up.
* ``close()`` disconnects and leaves the units as they are: systemd owns
  them (``BindsTo=`` ends them with the daemon's unit).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Coroutine

from dbus_fast import Variant

from clusterfw.host.systemd_bus import NO_SUCH_UNIT, SERVICE, BusError, JobTimeout, SystemdBus, UnitState, \
    UnitWatch, unit_object_path
from clusterfw.subsystems.services.launchers import Done, Finish, Job, Launcher, LauncherError, Log, \
    signal_name

SLICE = "clusterfw-services.slice"
TRANSIENT_PREFIX = "clusterfw-svc-"
RUN_PREFIX = "clusterfw-run-"
SLICE_INTERFACE = "org.freedesktop.systemd1.Slice"
JOB_MARGIN_S = 5.0
"""How much longer than systemd's own timeout the launcher waits for a job."""
KILL_BUS_DEADLINE_S = 0.08
CGROUP_INTERFACES = {kind: f"org.freedesktop.systemd1.{kind.capitalize()}"
                     for kind in ("service", "socket", "mount", "swap", "scope", "slice")}
"""The interface that has the ControlGroup property, per unit type."""
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
EXIT_HINTS = {
    200: "could not change to the working directory",
    203: "could not execute the command",
    217: "could not switch to the service's user",
    226: "could not set up the service's namespace",
}
"""systemd's own exit statuses (systemd.exec(5)) that a service cannot mean."""

JOB_RESULTS = {
    "failed": "the start job failed",
    "timeout": "the job timed out",
    "canceled": "the job was canceled (another job replaced it)",
    "dependency": "a unit it depends on failed",
    "skipped": "the job was skipped",
    "invalid": "the job was invalid for the unit's state",
    "unsupported": "the unit type does not support the job",
}


def unit_escape(service: str) -> str:
    """A service name as a piece of a unit name: ``@`` (an instance
    separator in unit names) becomes ``\\x40``; the rest is kept."""
    return service.replace("@", "\\x40")


def transient_unit(service: str) -> str:
    return f"{TRANSIENT_PREFIX}{unit_escape(service)}.service"


def cgroup2_mounts() -> list[str]:
    """Mount points of the cgroup v2 hierarchy, /sys/fs/cgroup first."""
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    found.append(left.split()[4])
    except OSError:
        return []
    return sorted(found, key=lambda m: (m != "/sys/fs/cgroup", m))


def cgroup_kill_file(control_group: str) -> str | None:
    """The writable ``cgroup.kill`` of a unit's ControlGroup, if there is one."""
    if not control_group:
        return None
    for mount in cgroup2_mounts():
        path = os.path.join(mount, control_group.lstrip("/"), "cgroup.kill")
        if os.path.isfile(path) and os.access(path, os.W_OK):
            return path
    return None


def _usec(seconds: float) -> int:
    return max(1, int(seconds * 1_000_000))


@dataclass(eq=False)
class _Unit:
    service: str
    unit: str
    transient: bool
    phase: str
    """``starting`` -> ``running`` -> ``stopping`` (a service); ``running``
    (a command); ``killed`` (kill_all: killed again if it comes up)."""
    action: str = "start"
    kill_file: str | None = None


class SystemdLauncher(Launcher):
    name = "systemd"

    def __init__(self, *, bind_to: str | None = "clusterfw.service", slice: str = SLICE,  # noqa: A002
                 settle_s: float = 0.05, address: str | None = None, timeout_s: float = 10.0,
                 log: Log | None = None) -> None:
        super().__init__(log)
        self.bind_to = bind_to
        self.slice = slice
        self.settle_s = settle_s
        self._lock = threading.Lock()
        self._units: dict[str, _Unit] = {}  # service -> its unit, from its start on (kill_all reads it)
        self._commands: dict[str, _Unit] = {}  # unit -> a command running (stop_command, notify, recovery)
        self._unit_names: dict[str, str] = {}  # service -> the unit its last start used
        self._generation = 0  # kill_all's count: what was asked before one never starts after it
        self._slice_kill: str | None = None
        self._exec_ex = True  # ExecStartEx (systemd >= 243) until systemd says it does not know it
        self._runs = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._bus = SystemdBus(address=address, timeout_s=timeout_s, thread_name="systemd-launcher")
        try:
            self._bus.open()
            self._bus.run_sync(self._prepare_slice())
        except BusError as exc:
            self._bus.close()
            raise LauncherError(f"the systemd launcher cannot reach systemd: {exc} (it needs systemd as "
                                "PID 1 and the system bus)") from None

    # -- the interface ------------------------------------------------------------------------
    def start(self, job: Job, done: Done) -> None:
        self._check(job, "start")
        self._submit(self._start(job, self._generation), self._once(job, done))

    def stop(self, job: Job, done: Done) -> None:
        self._check(job, "stop")
        self._submit(self._stop(job, self._generation), self._once(job, done))

    def run(self, job: Job, done: Done) -> None:
        self._check(job, "notify", "recovery")
        if not job.argv:
            self._once(job, done)(False, f"nothing to run: the job has no {job.action} command")
            return
        self._submit(self._run_command(job, job.action, self._generation), self._once(job, done))

    def active(self, service: str) -> bool:
        return self.unit_state(service).running

    def unit_state(self, service: str) -> UnitState:
        """The service's unit as systemd sees it now."""
        try:
            return self._bus.unit_state_sync(self._unit_of(service))
        except BusError as exc:
            raise LauncherError(f"cannot read the state of service {service}: {exc}") from None

    @property
    def kill_mechanism(self) -> str:
        """How ``kill_all`` reaches the slice: ``cgroup.kill`` or ``KillUnit`` (over D-Bus)."""
        return "cgroup.kill" if self._slice_kill is not None else "KillUnit"

    def kill_all(self) -> list[str]:
        self._generation += 1
        locked = self._lock.acquire(timeout=0.02)
        try:
            services = list(self._units.values())
            commands = list(self._commands.values())
            for record in services + commands:
                record.phase = "killed"
        finally:
            if locked:
                self._lock.release()
        deadline = time.monotonic() + KILL_BUS_DEADLINE_S
        via_bus = []
        if not self._write_kill(self._slice_kill):
            via_bus.append(self.slice)
        installed = [r.unit for r in services if not r.transient]
        for record in services:
            if not record.transient and not self._write_kill(record.kill_file):
                via_bus.append(record.unit)
        if via_bus:
            try:
                self._bus.run_sync(self._kill_units(via_bus), max(0.001, deadline - time.monotonic()))
            except (BusError, RuntimeError) as exc:
                self._log("error", f"kill_all: KillUnit of {', '.join(via_bus)} did not complete: {exc}")
        self._log("warning", f"kill_all: SIGKILL to {self.slice}"
                  + (f" and {', '.join(installed)}" if installed else "")
                  + (f" (over D-Bus: {', '.join(via_bus)})" if via_bus else ""))
        return [r.service for r in services] + [f"{r.service} ({r.action})" for r in commands]

    def reset_failed(self, service: str) -> None:
        super().reset_failed(service)
        try:
            self._bus.run_sync(self._reset_failed(self._unit_of(service)))
        except BusError as exc:
            raise LauncherError(f"cannot reset the failed state of service {service}: {exc}") from None

    def close(self) -> None:
        """Disconnect; the units stay as they are (systemd owns them)."""
        if self._closed:
            return
        self._closed = True
        self._bus.close()
        self._callbacks.close()

    # -- plumbing ----------------------------------------------------------------------------------
    def _submit(self, coro: Coroutine[Any, Any, tuple[bool, str]], finish: Finish) -> None:
        async def body() -> None:
            try:
                ok, detail = await coro
            except (BusError, LauncherError) as exc:
                ok, detail = False, str(exc)
            except Exception as exc:  # noqa: BLE001 - reported as the outcome, never lost
                ok, detail = False, f"internal error: {exc.__class__.__name__}: {exc}"
            finish(ok, detail)

        try:
            self._bus.submit(body())
        except BusError as exc:
            finish(False, str(exc))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """On the loop: run coro, keeping a reference until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _unit_of(self, service: str) -> str:
        with self._lock:
            return self._unit_names.get(service) or transient_unit(service)

    @staticmethod
    def _write_kill(path: str | None) -> bool:
        if path is None:
            return False
        try:
            with open(path, "w", encoding="ascii") as f:
                f.write("1")
            return True
        except OSError:
            return False

    async def _kill_units(self, units: list[str]) -> None:
        for unit in units:
            try:
                await self._bus.call("KillUnit", "ssi", [unit, "all", int(signal.SIGKILL)])
            except BusError as exc:
                if exc.name != NO_SUCH_UNIT:
                    raise

    async def _kill_quietly(self, unit: str) -> None:
        try:
            await self._kill_units([unit])
        except BusError as exc:
            self._log("error", f"cannot kill {unit} after kill_all: {exc}")

    async def _prepare_slice(self) -> None:
        """Start the slice (so it has a cgroup) and find its cgroup.kill."""
        result = await self._bus.run_job("StartUnit", "ss", [self.slice, "replace"], self._bus.timeout_s)
        if result != "done":
            raise BusError(f"cannot start {self.slice}: the job's result is {result}")
        control_group = await self._bus.get_property(unit_object_path(self.slice), SLICE_INTERFACE, "ControlGroup")
        self._slice_kill = cgroup_kill_file(str(control_group or ""))
        if self._slice_kill is None:
            self._log("warning", f"no writable cgroup.kill for {self.slice} (cgroup {control_group!r}); "
                      "kill_all will use KillUnit over D-Bus")

    async def _reset_failed(self, unit: str) -> None:
        try:
            await self._bus.call("ResetFailedUnit", "s", [unit])
        except BusError as exc:
            if exc.name != NO_SUCH_UNIT:
                raise

    async def _kill_file(self, unit: str) -> str | None:
        interface = CGROUP_INTERFACES.get(unit.rsplit(".", 1)[-1])
        if interface is None:
            return None
        try:
            cg = await self._bus.get_property(unit_object_path(unit), interface, "ControlGroup")
        except BusError:
            return None
        return cgroup_kill_file(str(cg or ""))

    @staticmethod
    def _exit_said(watch: UnitWatch) -> str:
        code = watch.property(SERVICE, "ExecMainCode", 0)
        status = int(watch.property(SERVICE, "ExecMainStatus", 0) or 0)
        if code == CLD_EXITED:
            hint = EXIT_HINTS.get(status)
            return f"exited {status}" + (f": {hint}" if hint else "")
        if code in (CLD_KILLED, CLD_DUMPED):
            return f"killed by {signal_name(status)}" + (" (core dumped)" if code == CLD_DUMPED else "")
        return ""

    def _why(self, watch: UnitWatch, state: UnitState) -> str:
        """Why a unit is no longer running, as a sentence."""
        result = str(watch.property(SERVICE, "Result", "") or "")
        how = self._exit_said(watch)
        if state.active_state == "failed":
            return f"unit {watch.unit} entered failed ({', '.join(x for x in (result, how) if x) or 'no reason given'})"
        return f"unit {watch.unit} became {state.active_state or 'inactive'}" + (f" ({how})" if how else "")

    def _on_state(self, state: UnitState) -> None:
        """A watched unit changed state (on the bus loop)."""
        with self._lock:
            record = next((r for r in self._units.values() if r.unit == state.unit), None)
            command = record is None
            if record is None:
                record = self._commands.get(state.unit)
            if record is None:
                return
            phase = record.phase
            if state.gone and not command and phase in ("running", "killed"):
                del self._units[record.service]
        if phase == "killed" and not state.gone:
            self._background(self._kill_quietly(state.unit))  # it came up after kill_all
        elif phase == "running" and state.gone and not command:
            watch = self._bus.watched(state.unit)
            reason = self._why(watch, state) if watch is not None else f"unit {state.unit} is {state.active_state}"
            self._report_failure(record.service, reason)

    def _exec_property(self, path: str, argv: tuple[str, ...]) -> list[Any]:
        if self._exec_ex:  # the argv exactly as it is: no $VARIABLE expansion by systemd
            return ["ExecStartEx", Variant("a(sasas)", [[path, list(argv), ["no-env-expand"]]])]
        return ["ExecStart", Variant("a(sasb)", [[path, [w.replace("$", "$$") for w in argv], False]])]

    def _transient_properties(self, job: Job, kind: str, bind: bool) -> list[list[Any]]:
        argv = job.argv
        path = argv[0] if argv[0].startswith("/") else shutil.which(argv[0], path=os.environ.get("PATH",
                                                                                                 DEFAULT_PATH))
        if path is None:
            raise LauncherError(f"cannot run {argv[0]!r}: not found in PATH")
        props: list[list[Any]] = [
            ["Description", Variant("s", f"clusterfw service {job.service}"
                                    + ("" if job.action == "start" else f" ({job.action})"))],
            ["Type", Variant("s", kind)],
            self._exec_property(path, argv),
            ["Slice", Variant("s", self.slice)],
            ["KillMode", Variant("s", "control-group")],
            ["CollectMode", Variant("s", "inactive-or-failed")],
            ["Environment", Variant("as", [f"{k}={v}" for k, v in sorted(job.env.items())])],
            ["TimeoutStartUSec", Variant("t", _usec(job.timeout_s))],
            ["TimeoutStopUSec", Variant("t", _usec(job.timeout_s))],
        ]
        if bind and self.bind_to:
            props += [["BindsTo", Variant("as", [self.bind_to])], ["After", Variant("as", [self.bind_to])]]
        return props

    async def _start_transient(self, job: Job, unit: str, kind: str, bind: bool) -> str:
        """StartTransientUnit and wait for its job; the job's result."""
        for _attempt in range(2):
            props = self._transient_properties(job, kind, bind)
            try:
                return await self._bus.run_job("StartTransientUnit", "ssa(sv)a(sa(sv))",
                                               [unit, "replace", props, []], job.timeout_s + JOB_MARGIN_S)
            except BusError as exc:
                if not (self._exec_ex and "ExecStartEx" in str(exc)) or isinstance(exc, JobTimeout):
                    raise
                self._exec_ex = False  # an older systemd: ExecStart with $ escaped as $$
                self._log("info", "systemd does not know ExecStartEx; using ExecStart with $ written as $$")
        raise AssertionError("unreachable")

    async def _bind_now(self) -> bool:
        if not self.bind_to:
            return False
        return (await self._bus.unit_state(self.bind_to)).running

    async def _wait_gone(self, unit: str, timeout_s: float) -> UnitState:
        """Wait (polling the real state) until the unit is inactive or failed."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = await self._bus.unit_state(unit)
            if state.gone or time.monotonic() > deadline:
                return state
            await asyncio.sleep(0.05)

    # -- the actions (on the bus loop) ----------------------------------------------------------------------
    async def _start(self, job: Job, generation: int) -> tuple[bool, str]:
        if not job.unit and not job.argv:
            return False, "nothing to start: the job has neither a command nor a unit"
        transient = not job.unit
        unit = transient_unit(job.service) if transient else job.unit
        with self._lock:
            current = self._units.get(job.service)
            if current is None:
                self._unit_names[job.service] = unit
        if current is not None and current.phase in ("starting", "stopping"):
            return False, f"a {'start' if current.phase == 'starting' else 'stop'} of this service is in progress"
        if generation != self._generation:
            return False, "not started: kill_all came first"
        watch = await self._bus.watch(unit, self._on_state)
        state = await self._bus.unit_state(unit)
        if state.running:  # started before (by an earlier launcher, say): it is ours now
            kill_file = None if transient else await self._kill_file(unit)
            with self._lock:
                self._units[job.service] = _Unit(job.service, unit, transient, "running", kill_file=kill_file)
            return True, f"unit {unit} is already {state.active_state}"
        if state.active_state == "deactivating":
            state = await self._wait_gone(unit, job.timeout_s)
        if state.active_state == "failed":
            await self._reset_failed(unit)
        watch.properties.pop(SERVICE, None)  # what an earlier run said
        record = _Unit(job.service, unit, transient, "starting")
        with self._lock:
            self._units[job.service] = record
            if generation != self._generation:
                record.phase = "killed"
        if record.phase == "killed":
            with self._lock:
                if self._units.get(job.service) is record:
                    del self._units[job.service]
            return False, "not started: kill_all came first"
        try:
            ok, detail = await self._start_job(job, unit, transient, watch)
        except BaseException:
            with self._lock:
                if self._units.get(job.service) is record:
                    del self._units[job.service]
            raise
        kill_file = await self._kill_file(unit) if ok and not transient else None
        with self._lock:
            killed = record.phase == "killed"
            record.kill_file = kill_file
            if ok and not killed:
                record.phase = "running"
            elif self._units.get(job.service) is record:
                del self._units[job.service]
        if killed:
            await self._kill_quietly(unit)
            return False, "killed by kill_all while it started"
        if ok:
            self._failed.pop(job.service, None)
        return ok, detail

    async def _start_job(self, job: Job, unit: str, transient: bool, watch: UnitWatch) -> tuple[bool, str]:
        try:
            if transient:
                result = await self._start_transient(job, unit, "exec", await self._bind_now())
            else:
                result = await self._bus.run_job("StartUnit", "ss", [unit, "replace"], job.timeout_s)
        except JobTimeout as exc:
            await self._cancel(exc.job, unit)
            return False, f"start timed out after {job.timeout_s:g} s"
        except LauncherError as exc:
            return False, str(exc)
        except BusError as exc:
            return False, f"systemd refused to start {unit}: {exc}"
        if result == "timeout" or watch.property(SERVICE, "Result") == "timeout":
            return False, f"start timed out after {job.timeout_s:g} s"
        if result != "done":
            state = await self._bus.unit_state(unit)
            shown = watch.state if watch.state.gone else state
            why = self._why(watch, shown) if shown.gone and watch.property(SERVICE, "Result") else ""
            return False, f"{JOB_RESULTS.get(result, f'the start job ended with {result}')}" + (
                f": {why}" if why else "")
        await asyncio.sleep(self.settle_s)
        state = await self._bus.unit_state(unit)
        if not state.running:  # the signals saw "failed" even when the unit is unloaded already
            return False, self._why(watch, watch.state if watch.state.gone else state)
        return True, f"unit {unit} is {state.active_state} ({state.sub_state})"

    async def _cancel(self, job_path: str, unit: str) -> None:
        try:
            await self._bus.call("Cancel", path=job_path, interface="org.freedesktop.systemd1.Job")
        except BusError:
            pass
        try:
            await self._bus.call("StopUnit", "ss", [unit, "replace"])
        except BusError:
            pass

    async def _stop(self, job: Job, generation: int) -> tuple[bool, str]:
        unit = job.unit or self._unit_of(job.service)
        with self._lock:
            record = self._units.get(job.service)
            if record is not None and record.phase != "killed":
                record.phase = "stopping"
        said = []
        try:
            if job.argv:
                _ok, detail = await self._run_command(job, "stop", generation)
                said.append(f"stop_command {detail}")
            watch = await self._bus.watch(unit)
            before = await self._bus.unit_state(unit)
            if not before.load_state or before.gone:
                said.append("not running" if record is None else f"unit {unit} is {before.active_state}")
                return True, "; ".join(said)
            try:
                result = await self._bus.run_job("StopUnit", "ss", [unit, "replace"], job.timeout_s + JOB_MARGIN_S)
            except JobTimeout:
                await self._kill_units([unit])
                state = await self._wait_gone(unit, 2.0)
                said.append(f"stop timed out after {job.timeout_s:g} s; killed (SIGKILL)"
                            + ("" if state.gone else f", still {state.active_state}"))
                return state.gone, "; ".join(said)
            except BusError as exc:
                if exc.name == NO_SUCH_UNIT:
                    said.append("not running")
                    return True, "; ".join(said)
                raise
            state = await self._bus.unit_state(unit)
            how = self._exit_said(watch)
            if result == "done" and state.gone:
                said.append(f"stopped unit {unit}" + (f" (its process {how})" if how else ""))
                return True, "; ".join(said)
            said.append(f"stopping unit {unit}: {JOB_RESULTS.get(result, result)}; it is {state.active_state}")
            return state.gone, "; ".join(said)
        finally:
            with self._lock:
                if record is not None and self._units.get(job.service) is record:
                    del self._units[job.service]
            await self._bus.unwatch(unit)

    async def _run_command(self, job: Job, label: str, generation: int) -> tuple[bool, str]:
        """job.argv as a transient Type=oneshot unit in the slice, to completion."""
        self._runs += 1
        unit = f"{RUN_PREFIX}{unit_escape(job.service)}-{label}-{os.getpid()}-{self._runs}.service"
        record = _Unit(job.service, unit, True, "running", action=label)
        with self._lock:
            self._commands[unit] = record
            if generation != self._generation:
                record.phase = "killed"
        try:
            if record.phase == "killed":
                return False, "not run: kill_all came first"
            watch = await self._bus.watch(unit, self._on_state)
            try:
                result = await self._start_transient(job, unit, "oneshot", False)
            except JobTimeout as exc:
                await self._cancel(exc.job, unit)
                return False, f"timed out after {job.timeout_s:g} s (killed)"
            except LauncherError as exc:
                return False, str(exc)
            fenced = " (kill_all)" if record.phase == "killed" else ""
            if result == "timeout" or watch.property(SERVICE, "Result") == "timeout":
                return False, f"timed out after {job.timeout_s:g} s (killed)" + fenced
            how = self._exit_said(watch)
            if result == "done":
                return True, (how or "exited 0") + fenced
            return False, (how or f"{JOB_RESULTS.get(result, result)} "
                                  f"({watch.property(SERVICE, 'Result', 'no result')})") + fenced
        finally:
            with self._lock:
                self._commands.pop(unit, None)
            await self._bus.unwatch(unit)
