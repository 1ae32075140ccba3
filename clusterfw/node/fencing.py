"""Self-fencing (DESIGN §3): what the daemon does when NodeCore says Fenced.

How this works
--------------
Fencing escalates, and every step is bounded in time:

1. **Kill cluster-managed units.**  Run every configured fence hook (argv
   only, never a shell string; environment ``CLUSTERFW_NODE``,
   ``CLUSTERFW_FENCE_REASON``), and ``systemctl kill --signal=SIGKILL`` every
   unit listed in ``<runtime dir>/managed-units`` (one unit name a line,
   written by the registration & launch service) when that file exists.
   Hooks and systemctl run concurrently; each is waited for at most
   ``HOOK_TIMEOUT_S`` and killed if it takes longer.
2. **Stop feeding the watchdog.**  The daemon calls ``Watchdog.fence()``
   first of all (before step 1, it costs nothing): from then on ``feed()``
   writes nothing, and the device is never closed with the magic 'V', so
   the hardware resets the host when its timeout expires.  The daemon opens
   the device (which arms it) only right before its first heartbeat.
3. **The fence action**: ``exit`` (exit code 75, so systemd sees a failure),
   ``kill-namespace`` (lab: end every process of our own PID namespace,
   init included, after checking that it is not the host's), ``kill-units`` (stay up,
   fenced, answering ``status``, until stopped), or ``none`` (tests: skip
   step 1 as well; stay up, fenced).

A watchdog device is fed one byte per healthy cycle and only while the node
can still write (``can_write``).  A graceful stop writes the magic 'V'
before closing, which disarms a watchdog without ``nowayout``.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import struct
import subprocess
import time
from typing import Callable

FENCE_ACTIONS = ("exit", "kill-units", "kill-namespace", "none")
EXIT_FENCED = 75  # EX_TEMPFAIL
HOOK_TIMEOUT_S = 5.0
MANAGED_UNITS_FILE = "managed-units"
MANAGED_UNITS_MAX = 4096
WDIOC_GETTIMEOUT = 0x80045707
INIT_PID_NAMESPACE_INODE = 0xEFFFFFFC  # PROC_PID_INIT_INO: the host's PID namespace
RB_POWER_OFF = 0x4321FEDC  # reboot(2) inside a PID namespace: its init is killed


class Watchdog:
    """A watchdog device (``/dev/watchdog``) fed while the node is healthy."""

    def __init__(self, path: str | None, log: Callable[[str, str], None]) -> None:
        self.path = path
        self._log = log
        self._fd: int | None = None
        self._fenced = False
        self.timeout_s: int | None = None
        if path is not None:
            self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                raw = fcntl.ioctl(self._fd, WDIOC_GETTIMEOUT, struct.pack("i", 0))
                self.timeout_s = struct.unpack("i", raw)[0]
            except OSError:
                self.timeout_s = None  # not a watchdog driver (a file in tests)

    def feed(self) -> None:
        if self._fd is None or self._fenced:
            return
        try:
            os.write(self._fd, b"\0")
        except OSError as exc:
            self._log("error", f"cannot feed the watchdog {self.path}: {exc}")

    def fence(self) -> None:
        """Stop feeding for good; never disarm."""
        self._fenced = True

    def close_gracefully(self) -> None:
        """A graceful stop: disarm with the magic close (unless fenced)."""
        if self._fd is None:
            return
        if not self._fenced:
            try:
                os.write(self._fd, b"V")
            except OSError:
                pass
        os.close(self._fd)
        self._fd = None


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


def run_bounded(commands: list[list[str]], env: dict[str, str], timeout_s: float,
                log: Callable[[str, str], None]) -> None:
    """Start every command at once, wait for all at most ``timeout_s``, kill
    those still running."""
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
            log("error", f"fence: {argv[0]} did not finish within {timeout_s:.0f} s: killed")
            continue
        if proc.returncode != 0:
            log("error", f"fence: {' '.join(argv)} exited {proc.returncode}: "
                         f"{err.decode(errors='replace').strip()[:300]}")


class Fencer:
    def __init__(self, *, node: str, action: str, hooks: tuple[str, ...], runtime_dir: str,
                 log: Callable[[str, str], None]) -> None:
        if action not in FENCE_ACTIONS:
            raise ValueError(f"fence action {action!r}: use one of {', '.join(FENCE_ACTIONS)}")
        self.node = node
        self.action = action
        self.hooks = hooks
        self.runtime_dir = runtime_dir
        self._log = log

    def kill_units(self, reason: str) -> None:
        env = dict(os.environ, CLUSTERFW_NODE=self.node, CLUSTERFW_FENCE_REASON=reason)
        commands = [[hook] for hook in self.hooks]
        units = read_managed_units(self.runtime_dir)
        if units:
            systemctl = shutil.which("systemctl")
            if systemctl is None:
                self._log("error", f"fence: {len(units)} managed units listed but systemctl is missing")
            else:
                commands.append([systemctl, "kill", "--signal=SIGKILL", "--", *units])
        if commands:
            run_bounded(commands, env, HOOK_TIMEOUT_S, self._log)
        if units:
            self._log("notice", f"fence: SIGKILL sent to {len(units)} managed units: {', '.join(units[:10])}"
                      + (" ..." if len(units) > 10 else ""))

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
