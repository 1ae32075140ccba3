"""Self-fencing (the fence rule: docs/protocol.md §2): what the daemon does when NodeCore says Fenced.

How this works
--------------
Fencing escalates, and every step is bounded in time:

1. **Kill cluster-managed units.**  Run every configured fence hook (argv
   only, never a shell string; environment ``CLUSTERFW_NODE``,
   ``CLUSTERFW_FENCE_REASON``), and ``systemctl kill --signal=SIGKILL`` every
   unit listed in ``<runtime dir>/managed-units`` (one unit name a line,
   written by the registration & launch service) when that file exists.
   Hooks and systemctl run concurrently, all bounded by the fence margin
   the daemon runs with (the profile's ``fence_margin_ms``, at most
   ``HOOK_TIMEOUT_S``, at least ``FENCE_STEP_MIN_S``): a hook still running
   then is killed, and that is logged.  ``systemctl kill`` only sends the
   signal, so the fence then waits, within what is left of the same margin,
   until the units have no process left (``units.wait_dead``), and logs the
   units that still run when it gives up.
2. **Stop feeding the watchdog.**  The daemon calls ``Watchdog.fence()`` (host/watchdog.py)
   first of all (before step 1, it costs nothing): from then on ``feed()``
   writes nothing, and the device is never closed with the magic 'V', so
   the hardware resets the host when its timeout expires.  The daemon opens
   the device (which arms it) only right before its first heartbeat.
3. **The fence action**: ``exit`` (exit code 75, so systemd sees a failure),
   ``kill-namespace`` (lab: end every process of our own PID namespace,
   init included, after checking that it is not the host's), ``kill-units`` (stay up,
   fenced, answering ``status``, until stopped), or ``none`` (tests: skip
   step 1 as well; stay up, fenced).

A watchdog device is fed one byte only after a cycle whose heartbeat (slot)
write succeeded, and only while the node can still write (``can_write``;
see ``should_feed``).  A graceful stop writes the magic 'V' before closing,
which disarms a watchdog without ``nowayout``.

**Start-up clean-up** (``Fencer.startup_cleanup``): a daemon that was
SIGKILLed, OOM-killed or crashed never reached step 1, so the next daemon,
before anything else, runs the hooks (``CLUSTERFW_FENCE_REASON`` says it is
the start-up clean-up after an unclean exit), then kills the managed units
and waits until they are dead, at most ``STARTUP_KILL_WAIT_S``.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from typing import Callable

from clusterfw.exitcodes import EXIT_FENCED

from . import units as units_mod

FENCE_ACTIONS = ("exit", "kill-units", "kill-namespace", "none")
HOOK_TIMEOUT_S = 5.0  # the most any fence step may take, whatever the margin
FENCE_STEP_MIN_S = 0.05  # the least: a margin this small would kill every hook at once
STARTUP_KILL_WAIT_S = 10.0  # start-up clean-up: units not dead by then -> refuse to join
MANAGED_UNITS_FILE = "managed-units"
MANAGED_UNITS_MAX = 4096
INIT_PID_NAMESPACE_INODE = 0xEFFFFFFC  # PROC_PID_INIT_INO: the host's PID namespace
RB_POWER_OFF = 0x4321FEDC  # reboot(2) inside a PID namespace: its init is killed


def read_managed_units(runtime_dir: str) -> list[str]:
    """The unit names in ``<runtime_dir>/managed-units`` (missing: none)."""
    path = os.path.join(runtime_dir, MANAGED_UNITS_FILE)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read(1 << 20).splitlines()
    except FileNotFoundError:
        return []
    units = []
    for line in lines[:MANAGED_UNITS_MAX]:
        name = line.strip()
        if name and not name.startswith("#") and not name.startswith("-") and "/" not in name:
            units.append(name)
    return units


def _names(units: list[str]) -> str:
    return ", ".join(units[:10]) + (" ..." if len(units) > 10 else "")


def pid_namespace_check() -> str | None:
    """``None`` if this process is in a PID namespace of its own (not the
    host's), else why ``kill-namespace`` must not be used here.

    The namespace's inode number identifies it: the host's (initial) PID
    namespace always has ``PROC_PID_INIT_INO``.  (``NSpid`` in
    /proc/self/status cannot tell: with the namespace's own procfs mounted it
    shows a single level.)"""
    try:
        inode = os.stat("/proc/self/ns/pid").st_ino
    except OSError as exc:
        return f"cannot read /proc/self/ns/pid ({exc.strerror})"
    if inode == INIT_PID_NAMESPACE_INODE:
        return "this process is in the host's PID namespace"
    return None


def should_feed(healthy: bool, fenced: bool, last_ok_before_ms: float, last_ok_after_ms: float) -> bool:
    """Feed the hardware watchdog after a cycle only if the node can still
    write, has not fenced, and the cycle's heartbeat write succeeded: the
    core's ``last_ok_ms`` moves only on a successful slot write, so it must
    have advanced during the cycle.  A cycle whose slot write failed leaves
    the watchdog counting down."""
    return healthy and not fenced and last_ok_after_ms > last_ok_before_ms


def run_bounded(commands: list[list[str]], env: dict[str, str], timeout_s: float,
                log: Callable[[str, str], None], bound: str = "") -> None:
    """Start every command at once, wait for all at most ``timeout_s``, kill
    those still running (and say so, naming ``bound``)."""
    procs = []
    for argv in commands:
        try:
            procs.append((argv, subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                                 close_fds=True, start_new_session=True)))
        except OSError as exc:
            log("error", f"fence: cannot run {argv[0]}: {exc}")
    deadline = time.monotonic() + timeout_s
    for argv, proc in procs:
        try:
            _, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            log("error", f"fence: {argv[0]} did not finish within {timeout_s * 1000:.0f} ms"
                         f"{' (' + bound + ')' if bound else ''}: killed")
            continue
        if proc.returncode != 0:
            log("error", f"fence: {' '.join(argv)} exited {proc.returncode}: "
                         f"{err.decode(errors='replace').strip()[:300]}")


class Fencer:
    def __init__(self, *, node: str, action: str, hooks: tuple[str, ...], runtime_dir: str,
                 log: Callable[[str, str], None], margin_ms: int | None = None) -> None:
        if action not in FENCE_ACTIONS:
            raise ValueError(f"fence action {action!r}: use one of {', '.join(FENCE_ACTIONS)}")
        self.node = node
        self.action = action
        self.hooks = hooks
        self.runtime_dir = runtime_dir
        self._log = log
        self.margin_ms = margin_ms
        """The profile's fence margin: every fence step together must end
        within it.  None (not known yet): ``HOOK_TIMEOUT_S``."""

    def budget_s(self) -> float:
        """How long the whole of step 1 (hooks, kill, wait) may take."""
        if self.margin_ms is None:
            return HOOK_TIMEOUT_S
        return max(FENCE_STEP_MIN_S, min(HOOK_TIMEOUT_S, self.margin_ms / 1000.0))

    def _bound_name(self) -> str:
        return "the fence margin" if self.margin_ms is not None else "the hook timeout"

    def _systemctl(self, units: list[str]) -> str | None:
        systemctl = shutil.which("systemctl")
        if systemctl is None and units:
            self._log("error", f"fence: {len(units)} managed units listed but systemctl is missing")
        return systemctl

    def kill_units(self, reason: str) -> dict[str, str]:
        """Step 1 of a fence: hooks and ``systemctl kill`` at once, then wait
        until the units are dead; all within ``budget_s()``.  Returns the
        units still alive when the budget ran out (empty: all dead)."""
        start = time.monotonic()
        budget = self.budget_s()
        env = dict(os.environ, CLUSTERFW_NODE=self.node, CLUSTERFW_FENCE_REASON=reason)
        commands = [[hook] for hook in self.hooks]
        units = read_managed_units(self.runtime_dir)
        systemctl = self._systemctl(units)
        if units and systemctl is not None:
            commands.append([systemctl, "kill", "--signal=SIGKILL", "--", *units])
        if commands:
            run_bounded(commands, env, budget, self._log, self._bound_name())
        if not units or systemctl is None:
            return {}
        self._log("notice", f"fence: SIGKILL sent to {len(units)} managed units: {_names(units)}")
        left = units_mod.wait_dead(systemctl, units, max(FENCE_STEP_MIN_S, start + budget - time.monotonic()))
        took = (time.monotonic() - start) * 1000
        if left:
            self._log("critical", f"fence: {len(left)} managed units still run {took:.0f} ms after the fence "
                                  f"began ({self._bound_name()} is {budget * 1000:.0f} ms): "
                                  + "; ".join(f"{u}: {why}" for u, why in list(left.items())[:10]))
        else:
            self._log("notice", f"fence: every managed unit is dead, {took:.0f} ms after the fence began")
        return left

    def startup_cleanup(self, reason: str | None, wait_s: float | None = None) -> dict[str, str]:
        """Before a join: stop what a previous daemon of this node left
        running.  The hooks run first (``reason`` in CLUSTERFW_FENCE_REASON;
        skipped when ``reason`` is None), each at most ``HOOK_TIMEOUT_S``;
        then the managed units are killed and waited for, at most
        ``wait_s`` (default ``STARTUP_KILL_WAIT_S``).  Returns the units
        still alive then."""
        if reason is not None and self.hooks:
            env = dict(os.environ, CLUSTERFW_NODE=self.node, CLUSTERFW_FENCE_REASON=reason)
            start = time.monotonic()
            run_bounded([[hook] for hook in self.hooks], env, HOOK_TIMEOUT_S, self._log, "the hook timeout")
            self._log("notice", f"start-up clean-up: ran {len(self.hooks)} fence hooks in "
                                f"{(time.monotonic() - start) * 1000:.0f} ms")
        units = read_managed_units(self.runtime_dir)
        systemctl = self._systemctl(units)
        if not units:
            return {}
        if systemctl is None:
            return {u: "state not known (systemctl is missing)" for u in units}
        wait = STARTUP_KILL_WAIT_S if wait_s is None else wait_s
        start = time.monotonic()
        run_bounded([[systemctl, "kill", "--signal=SIGKILL", "--", *units]], dict(os.environ), HOOK_TIMEOUT_S,
                    self._log, "the hook timeout")
        left = units_mod.wait_dead(systemctl, units, max(0.0, start + wait - time.monotonic()))
        if not left:
            self._log("notice", f"start-up clean-up: SIGKILL sent to {len(units)} managed units "
                                f"({_names(units)}); all of them were dead "
                                f"{(time.monotonic() - start) * 1000:.0f} ms later")
        return left

    def kill_namespace(self) -> None:
        """End every process of our PID namespace at once (the lab's
        watchdog).  reboot(2) called inside a PID namespace other than the
        host's kills that namespace's init, and with it every process in it
        -- even a systemd init, which could not be killed from inside by a
        signal.  Without CAP_SYS_BOOT: SIGKILL every process we may signal
        (kill(-1) spares init and ourselves), then ourselves; an init such as
        the lab's process-mode one exits when its only child died."""
        problem = pid_namespace_check()
        if problem is not None:
            self._log("critical", f"fence: kill-namespace refused ({problem}); exiting instead")
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.reboot(RB_POWER_OFF) != 0:
            self._log("error", f"fence: reboot of the PID namespace failed "
                               f"({os.strerror(ctypes.get_errno())}); killing its processes instead")
        if os.getpid() == 1:
            os._exit(EXIT_FENCED)  # init's exit takes the whole namespace with it
        try:
            os.kill(-1, signal.SIGKILL)  # Linux: every process we may signal but init and ourselves
        except OSError as exc:
            self._log("error", f"fence: kill(-1, SIGKILL) failed: {exc}")
        os.kill(os.getpid(), signal.SIGKILL)
