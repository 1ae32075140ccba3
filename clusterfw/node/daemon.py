"""The membership manager daemon: NodeCore driven with a real disk and clock.

How this works
--------------
Start-up (``Daemon.run``), each step refusing with a clear message:

1. take ``<runtime dir>/NODE.lock`` (one daemon per node per host); then,
   if ``<runtime dir>/NODE.running`` says the previous daemon did not exit
   cleanly (SIGKILL, OOM kill, crash, fence), run the fence hooks, kill the
   managed units and wait until they are dead -- refuse (exit 1) if they do
   not die (``_startup_cleanup``; units listed are killed even after a clean
   exit, without the hooks);
2. open the disk, read the superblock and the node table, find NODE;
   refuse (78) if the block layer may keep an I/O in flight longer than
   io_timeout (node/blockcheck.py);
3. read NODE's own slot (NodeCore's ``previous_slot``: sequence and Disk
   Paxos block continue from it) -- refuse if it cannot be read;
4. read it again three of its heartbeat intervals later: if it changed,
   another host is running NODE now -- refuse;
5. derive the timing from the superblock's heartbeat and io_timeout
   (``core.timing.derive`` with the disk's profile, ``disk_profile``;
   ``--profile lab|san`` only checks it, 78 on a contradiction); refuse (78)
   a watchdog device when the fence margin leaves no whole-second timeout;
   pick a new random 63-bit incarnation;
6. open the local API socket and tell systemd READY=1;
7. wait until every ``--wait-for-subsystem`` name registered, then write
   the ``NODE.running`` marker (removed only after a graceful leave), open
   the watchdog -- set its timeout within the fence margin, read it back,
   refuse (78) if it does not fit -- and create NodeCore with every registration (the join
   request goes out with the first heartbeat).

Threads, and the one lock (``_lock``) that guards NodeCore:

* **io** runs the cycle: ``poll`` -> perform the ops one after another on
  the disk, each with the BlockDevice timeout -> ``complete``; feeds the
  hardware watchdog only after a cycle whose heartbeat write succeeded
  (NodeCore's ``last_ok_ms`` advanced) and that left the node able to
  write (``fencing.should_feed``).  The lock is
  held only around NodeCore calls, never across I/O, logging or sockets.
* **fence-timer** calls ``tick`` at ``fence_deadline_ms()`` even while an
  I/O hangs, so the node fences on time whatever the disk does.
* **suspend-watch** fences at once when the host was suspended (CLOCK_BOOTTIME
  ran ahead of CLOCK_MONOTONIC, host/clocks.py); the io and fence-timer
  threads look too, every turn.
* **api** serves the socket (node/api.py) and never waits for the disk:
  the ``locks`` request is answered by the **lock-table** thread
  (node/slowreads.py); lock grants and validity renewals are pushed by the
  DLM's own threads straight to the holder's socket (subsystems/dlm/service.py).
  **subsystem** threads run the in-process subsystems; the **main** thread
  waits for signals (SIGTERM, SIGINT: graceful leave) and for the end.

Every write is guarded twice: NodeCore produces writes only while the node
can still write, and the device asks the daemon again right before the
system call (diskio.GuardedBlockDevice), so a daemon that was paused in
between writes nothing once it resumes past its deadline.

Exit codes: 0 left gracefully; 1 failed (disk missing or unreadable, which
may come back; ...); 2 bad usage; 75 fenced; 78 refused by configuration
(node unknown, rejected join, another daemon or host runs this node, a disk
path that is no device, a device too small or not a clusterfw disk, timings
no node can run, an unusable runtime directory, socket or watchdog; every
message names the path) -- systemd must not restart it.
"""
from __future__ import annotations

import errno
import os
import random
import secrets
import select
import signal
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import fasteners

from clusterfw.core import timing as timing_mod
from clusterfw.core.coordinator import level_state
from clusterfw.core.dlm import LockMode
from clusterfw.core.model import NodeConfig, NodeState, Registration, SlotRecord, ViewRecord
from clusterfw.core.node import (
    Event,
    FenceCause,
    Fenced,
    MasterChanged,
    NodeCore,
    Notify,
    ReadViews,
    ReadSlots,
    ReadView,
    Rejected,
    StateChanged,
    Stopped,
    StopReason,
    ViewAdopted,
    WriteSlot,
    WriteView,
)
from clusterfw.core.text import incarnation_text, printable
from clusterfw.exitcodes import EXIT_CONFIG, EXIT_FAILED, EXIT_FENCED, EXIT_OK, EXIT_USAGE
from clusterfw.host.clocks import SUSPEND_THRESHOLD_MS, SuspendDetector, clock_pair
from clusterfw.host.journal import Journal
from clusterfw.host.notify import Notifier
from clusterfw.host.watchdog import DeviceFile, Watchdog, WatchdogDevice, is_device, timeout_problem
from clusterfw.ondisk import admin, diskio
from clusterfw.ondisk.blockdev import BlockDevice
from clusterfw.ondisk.clusterdisk import ClusterDisk
from clusterfw.ondisk.errors import BlockError, BlockSizeMismatch, DeviceError, DeviceTooSmall, IoError, NotWritten
from clusterfw.ondisk.integrity import IntegrityTracker
from clusterfw.subsystems.base import Entry, Notification, Transition
from clusterfw.subsystems.dlm.service import AREA_READ_BYTES_MAX, DlmService, describe_area
from clusterfw.subsystems.placeholders import default_subsystems
from clusterfw.subsystems.services import service as services_mod

from . import api, blockcheck, fencing, protocol
from .fencing import FENCE_ACTIONS, Fencer, read_managed_units, should_feed
from .hub import Hub, RegistrationError
from .slowreads import LockTableReader
from .status import add_integrity, render, timing_json

STARTUP_IO_TIMEOUT_MS = 10_000
# Opening the disk failed with one of these: it may come back (udev, a SAN path), so exit 1 and let systemd retry.
DISK_MAY_RETURN_ERRNOS = frozenset({errno.ENOENT, errno.ENXIO, errno.ENODEV, errno.EIO, errno.ETIMEDOUT,
                                    errno.ENOMEDIUM, errno.EBUSY})
OTHER_HOST_CHECK_INTERVALS = 3
PROFILES = timing_mod.PROFILES_BY_NAME
PROFILE_FROM_DISK = "auto"  # --profile's default: the disk's profile (core.timing.disk_profile)
WAIT_MAX_S = 1.0  # no thread sleeps longer than this without looking around
WATCHDOG_NOTIFY_MIN_S = 1.0
NAMES_REFRESH_MIN_S = 5.0
LEAVE_FLUSH_S = 1.0
RUNNING_MARKER_SUFFIX = ".running"  # RUNTIME_DIR/NODE.running: this node's daemon runs (or did not exit cleanly)
SUSPEND_POLL_S = 0.02  # the suspend-watch thread looks this often (a resumed host fences within it)


class StartupError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class DaemonOptions:
    disk: str
    node: str
    fence_action: str = "exit"
    socket_path: str = protocol.DEFAULT_SOCKET
    runtime_dir: str = protocol.DEFAULT_RUNTIME_DIR
    profile: str = "auto"
    watchdog: str | None = None
    fence_hooks: tuple[str, ...] = ()
    wait_for: tuple[str, ...] = ()
    wait_timeout_s: float = 300.0
    stop_timeout_s: float = 60.0
    placeholders: bool = True
    debug: bool = False
    services: bool = True  # the registration & launch service at level 50 (--no-services: without it)
    launcher: str = "auto"


def lock_holder_pid(path: str) -> int | None:
    """The PID holding a POSIX (lockf/fcntl) lock on ``path``, if any."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        import fcntl
        flock = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        out = fcntl.fcntl(fd, fcntl.F_GETLK, flock)
        l_type, _, _, _, pid = struct.unpack("hhqqi4x", out)
        return pid if l_type != fcntl.F_UNLCK else None
    except OSError:
        return None
    finally:
        os.close(fd)


def choose_profile(name: str, path: str, heartbeat_interval_ms: int, io_timeout_ms: int) -> tuple[str, timing_mod.Profile]:
    """The disk's profile (``core.timing.disk_profile``: the superblock has no
    field for it, so it is derived from the io timeout, as every node does).
    ``--profile lab|san`` only checks it: a contradiction refuses (78)."""
    derived, profile = timing_mod.disk_profile(heartbeat_interval_ms, io_timeout_ms)
    if name not in (PROFILE_FROM_DISK, derived):
        raise StartupError(
            f"--profile {name} contradicts the disk {path}: its io timeout of {io_timeout_ms} ms makes it a "
            f"'{derived}' disk (san from {timing_mod.SAN_IO_TIMEOUT_MIN_MS} ms, else lab), and every node runs "
            f"with the disk's profile. Drop --profile (or give --profile {derived}); to run the {name} profile, "
            f"stop every node and re-create the disk with 'clusterfw disk init --profile {name} --force' "
            f"(that destroys its node table, slots, views and locks)", EXIT_CONFIG)
    return derived, profile


_OP_NAMES = {WriteSlot: "writing its heartbeat slot", ReadSlots: "reading all slots",
             ReadView: "reading the master's view", ReadViews: "reading views (taking over)",
             WriteView: "writing the view"}


class Daemon:
    def __init__(self, opts: DaemonOptions, journal: Journal | None = None) -> None:
        if opts.fence_action not in FENCE_ACTIONS:
            raise ValueError(f"fence action {opts.fence_action!r}")
        self.opts = opts
        self.log = journal or Journal(opts.node, debug=opts.debug)
        self.notifier = Notifier()
        self._lock = threading.Lock()  # guards self.core; held only around NodeCore calls
        self.core: NodeCore | None = None
        self.disk: ClusterDisk | None = None
        self.dev: diskio.GuardedBlockDevice | None = None
        self.names: dict[int, str] = {}
        self.node_id = 0
        self.incarnation = 0
        self.timing = timing_mod.derive()
        self.cluster = ""
        self.previous_slot: SlotRecord | None = None
        self._interprocess_lock: fasteners.InterProcessLock | None = None
        self._fence_reason: str | None = None
        self._fence_lock = threading.Lock()
        self._write_deadline_ms = float("-inf")  # the guard's copy of core.fence_deadline_ms()
        self._done = threading.Event()
        self._exit_code = EXIT_OK
        self._exit_reason = ""
        self._kick = threading.Event()
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._leave_deadline: float | None = None
        self._rejected: str | None = None
        self._threads: list[threading.Thread] = []
        self._last_watchdog_notify = 0.0
        self._names_refresh_at = 0.0
        self._names_refreshing = False
        self._started_ms = diskio.clock_ms()
        self._joined_once = False
        self._status_line = ""
        # What the io thread is doing and since when (clock_ms): read by the
        # fence path to say *why* no heartbeat write completed in time.
        self._io_phase: tuple[str, float] = ("starting", self._started_ms)
        self._last_write: tuple[float, float] | None = None  # (issued, completed) of the last slot write
        self.hub = Hub(ack_core=self._ack_core, send=self._send_notification, log=self._log)
        self.server = api.ApiServer(opts.socket_path, self, self._log)
        self.lock_table = LockTableReader(self._read_lock_table, self._finish_lock_table, self.server.reply,
                                          self._log)
        self.watchdog: Watchdog | None = None
        self.fencer: Fencer | None = None
        self.services: services_mod.ServicesService | None = None
        self.dlm: DlmService | None = None
        self.suspend: SuspendDetector | None = None
        self.suspend_clock = clock_pair  # (CLOCK_BOOTTIME, CLOCK_MONOTONIC) in ms; tests inject a fake
        self.profile = PROFILES["lab"]
        self.profile_name = "lab"
        # Opens the watchdog device (arming it): tests put a fake device below this seam.
        self.watchdog_opener: Callable[[str], WatchdogDevice] = DeviceFile
        self.integrity = IntegrityTracker(log=self.log.log, names=lambda: self.names, clock=diskio.clock_ms)

    # ------------------------------------------------------------------ logging
    def _log(self, priority: str, text: str) -> None:
        self.log.log(priority, text)

    # ---------------------------------------------------------------- start-up
    def _take_host_lock(self) -> None:
        path = os.path.join(self.opts.runtime_dir, f"{self.opts.node}.lock")
        lock = fasteners.InterProcessLock(path)
        try:
            os.makedirs(self.opts.runtime_dir, mode=0o755, exist_ok=True)
            acquired = lock.acquire(blocking=False)
        except OSError as exc:
            raise StartupError(
                f"cannot use the runtime directory {self.opts.runtime_dir} (lock file {path}): "
                f"{exc.strerror or exc}; give a writable directory with --runtime-dir", EXIT_CONFIG) from None
        if not acquired:
            pid = lock_holder_pid(path)
            holder = f"PID {pid}" if pid else "another process"
            raise StartupError(
                f"another clusterfw daemon ({holder}) already runs node '{self.opts.node}' on this host "
                f"(lock {path}): stop it first (systemctl stop clusterfw), or start this one for another node",
                EXIT_CONFIG)
        self._interprocess_lock = lock
        try:
            assert lock.lockfile is not None
            lock.lockfile.truncate(0)
            lock.lockfile.write(f"{os.getpid()}\n")
            lock.lockfile.flush()
        except (OSError, AttributeError):
            pass

    def _marker_path(self) -> str:
        return os.path.join(self.opts.runtime_dir, f"{self.opts.node}{RUNNING_MARKER_SUFFIX}")

    def _write_marker(self) -> None:
        """Written right before the first heartbeat, removed only after a
        graceful leave: found at start, it says the previous daemon did not
        exit cleanly (SIGKILL, OOM kill, crash, fence)."""
        path = self._marker_path()
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"pid {os.getpid()} incarnation {self.incarnation:x} started "
                    f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _startup_cleanup(self) -> None:
        """Before anything touches the disk or the watchdog: stop whatever a
        previous daemon of this node left running.  A daemon that was
        SIGKILLed, OOM-killed or crashed never ran its fence, while the
        other nodes declare its incarnation dead and recover its services
        elsewhere.  Needs the host lock (a second daemon must not kill the
        first one's units)."""
        assert self.fencer is not None
        marker = self._marker_path()
        try:
            with open(marker, encoding="ascii", errors="replace") as f:
                previous: str | None = f.read(200).strip() or "unknown"
        except FileNotFoundError:
            previous = None
        units = read_managed_units(self.opts.runtime_dir)
        if previous is None and not units:
            self.log.debug("start-up clean-up: the previous daemon exited cleanly and no managed unit is listed")
            return
        if self.opts.fence_action == "none":
            self.log.warning("start-up clean-up skipped (--fence-action none): "
                             + (f"the previous daemon ({previous}) did not exit cleanly; " if previous else "")
                             + f"managed units listed: {', '.join(units) or 'none'}")
            return
        reason = None
        if previous is not None:
            reason = (f"start-up cleanup after an unclean exit of the previous daemon of node {self.opts.node} "
                      f"({previous})")
            self.log.warning(f"the previous daemon of node {self.opts.node} ({previous}) did not exit cleanly "
                             f"(killed, crashed or fenced): running the fence hooks and killing its "
                             f"{len(units)} managed units before anything else", NODE=self.opts.node)
        else:
            self.log.notice(f"{len(units)} managed units are listed in {self.opts.runtime_dir}: making sure "
                            f"none of them runs before the join")
        wait_s = fencing.STARTUP_KILL_WAIT_S  # read at call time: an operator or test may change it
        left = self.fencer.startup_cleanup(reason, wait_s)
        if left:
            raise StartupError(
                f"refusing to join: {len(left)} managed units of the previous daemon still run "
                f"{wait_s:g} s after SIGKILL ("
                + "; ".join(f"{u}: {why}" for u, why in list(left.items())[:10])
                + "); the cluster may be recovering their services on other nodes. Stop them "
                  "(systemctl kill --signal=SIGKILL UNIT; check 'systemctl status UNIT'), then start the daemon "
                  "again", EXIT_FAILED)
        self.log.notice("start-up clean-up done: nothing the previous daemon managed runs any more"
                        if units or previous else "start-up clean-up done")

    def _check_block_layer(self, io_timeout_ms: int) -> None:
        """Refuse (exit 78) when the block layer may keep an I/O in flight
        longer than io_timeout (see node/blockcheck.py)."""
        for finding in blockcheck.check_device(self.opts.disk, io_timeout_ms, sysfs=blockcheck.SYSFS):
            if finding.refuse:
                raise StartupError(f"{self.opts.disk}: {finding.message}", EXIT_CONFIG)
            self.log.log(finding.level, f"block layer: {finding.message}")

    def _open_disk(self) -> None:
        path = self.opts.disk
        try:
            dev = diskio.GuardedBlockDevice(path, guard=self._write_guard, io_timeout_ms=STARTUP_IO_TIMEOUT_MS)
        except IoError as exc:
            # A disk that is missing or failing may come back (udev, a SAN path): exit 1, systemd retries.
            # Anything else (not a device, no direct I/O, no permission) is the configuration: exit 78.
            code = EXIT_FAILED if exc.errno in DISK_MAY_RETURN_ERRNOS else EXIT_CONFIG
            raise StartupError(f"cannot open the shared disk {path}: {exc}", code) from None
        except DeviceError as exc:
            raise StartupError(f"cannot open the shared disk {path}: {exc}") from None
        try:
            disk = ClusterDisk.open(dev)
        except BlockError as exc:
            try:
                advice = admin.unreadable_superblock_advice(dev, exc)
            except DeviceError as read_exc:
                advice = f"the superblock of {path} does not decode ({type(exc).__name__}: {exc}), and: {read_exc}"
            dev.close()
            raise StartupError(advice, EXIT_CONFIG) from None
        except DeviceTooSmall as exc:
            dev.close()
            raise StartupError(str(exc), EXIT_CONFIG) from None
        except BlockSizeMismatch as exc:
            dev.close()
            raise StartupError(f"{path}: {exc}", EXIT_CONFIG) from None
        except DeviceError as exc:
            dev.close()
            raise StartupError(f"cannot read the superblock of {path}: {exc}") from None
        assert disk.superblock is not None
        self.disk = disk
        self.dev = dev
        self.cluster = disk.superblock.cluster_name
        try:
            table = disk.read_node_table()
        except DeviceError as exc:
            raise StartupError(f"cannot read the node table of {path}: {exc}") from None
        self.names = {cfg.node_id: cfg.name for cfg in table if isinstance(cfg, NodeConfig)}
        found = [node_id for node_id, name in self.names.items() if name == self.opts.node]
        if not found:
            known = ", ".join(sorted(self.names.values())) or "none yet"
            raise StartupError(
                f"node '{self.opts.node}' is not in the node table of {path} (cluster '{self.cluster}'; "
                f"nodes: {known}): add it with 'clusterfw node add {path} --name {self.opts.node}'",
                EXIT_CONFIG)
        self.node_id = found[0]
        sb = disk.superblock
        name, profile = choose_profile(self.opts.profile, path, sb.heartbeat_interval_ms, sb.io_timeout_ms)
        try:
            timing_mod.check_settings(sb.heartbeat_interval_ms, sb.io_timeout_ms, (profile,))
        except timing_mod.SettingOutOfRange as exc:
            raise StartupError(
                f"the superblock of {path} sets {exc.setting} to {exc.value} ms, which this daemon cannot run: "
                f"use {exc.low}..{exc.high} ms ({exc.why}). Only 'clusterfw disk init' sets it: stop every node "
                f"and re-create the disk with timings in range (--force: that destroys its node table, slots, "
                f"views and locks)", EXIT_CONFIG) from None
        self._check_block_layer(sb.io_timeout_ms)
        self.profile = profile
        self.profile_name = name
        self.timing = timing_mod.derive(profile)

    def _read_own_slot(self) -> SlotRecord | None:
        assert self.disk is not None
        try:
            rec = self.disk.read_slot(self.node_id)
        except DeviceError as exc:
            raise StartupError(f"cannot read node '{self.opts.node}''s slot on {self.opts.disk}: {exc}; "
                               f"refusing to start without it (its ballot state must carry over)") from None
        if isinstance(rec, SlotRecord):
            return rec
        if isinstance(rec, NotWritten):
            return None
        raise StartupError(
            f"node '{self.opts.node}''s slot on {self.opts.disk} is damaged ({type(rec).__name__}: {rec}); "
            f"refusing to start: its Disk Paxos ballot state would be lost. Check the disk "
            f"('clusterfw disk dump {self.opts.disk}')")

    def _check_other_host(self) -> None:
        """Refuse if NODE's slot is being written right now (another host)."""
        first = self.previous_slot
        if first is None:
            return
        wait_ms = OTHER_HOST_CHECK_INTERVALS * max(first.timing.heartbeat_interval_ms,
                                                   self.timing.heartbeat_interval_ms)
        time.sleep(wait_ms / 1000.0)
        second = self._read_own_slot()
        if second is not None and (second.incarnation, second.seq) != (first.incarnation, first.seq):
            raise StartupError(
                f"node '{self.opts.node}''s slot on {self.opts.disk} is being written by another daemon "
                f"(incarnation {second.incarnation:x}, seq {first.seq} -> {second.seq} in {wait_ms} ms), "
                f"probably on another host: node names must be unique; stop that daemon or start this "
                f"one for another node", EXIT_CONFIG)
        self.previous_slot = second

    def _check_watchdog_path(self) -> None:
        """Before READY (and without opening it, which would arm it): the
        watchdog can be written, and this disk's fence margin leaves room for
        a whole-second watchdog timeout at all."""
        path = self.opts.watchdog
        if path is None:
            return
        if not os.access(path, os.W_OK):
            raise StartupError(f"--watchdog {path}: no such device, or not writable", EXIT_CONFIG)
        max_s = timing_mod.watchdog_timeout_max_s(self.profile.fence_margin_ms)
        if is_device(path) and max_s < 1:
            problem = timeout_problem(path, None, max_s, self.profile.fence_margin_ms)
            raise StartupError(f"--watchdog {path}: {problem}", EXIT_CONFIG)

    def _open_watchdog(self) -> Watchdog:
        """Open (arm) the watchdog, set its timeout to the longest that keeps
        the rule and read it back: StartupError (78) when it does not keep
        it -- the device is then closed with the magic 'V'."""
        path = self.opts.watchdog
        try:
            wd = Watchdog(path, self._log, opener=self.watchdog_opener)
        except OSError as exc:
            raise StartupError(f"cannot open the watchdog {path}: {exc}") from None
        if path is None:
            return wd
        margin = self.profile.fence_margin_ms
        max_s = timing_mod.watchdog_timeout_max_s(margin)
        problem = wd.apply_timeout(max_s, margin)
        if problem is not None:
            wd.close_gracefully()
            raise StartupError(f"--watchdog {path}: {problem}", EXIT_CONFIG)
        if wd.stand_in:
            self.log.warning(f"--watchdog {path} is a regular file, not a watchdog device: fed, but it resets "
                             f"nothing and its timeout is not checked")
        else:
            self.log.notice(f"watchdog {path}: timeout {wd.timeout_s} s (the fence margin {margin} ms allows at "
                            f"most {max_s} s)")
        return wd

    def run(self) -> int:
        """Run until left, fenced or refused; returns the exit code."""
        code = self.startup()
        if code is not None:
            return code
        return self._main_loop()

    def startup(self) -> int | None:
        """Every start-up step up to READY=1: None when the daemon may go on
        (to the main loop), else the exit code."""
        try:
            self._take_host_lock()
            self.fencer = Fencer(node=self.opts.node, action=self.opts.fence_action, hooks=self.opts.fence_hooks,
                                 runtime_dir=self.opts.runtime_dir, log=self._log)
            self._startup_cleanup()
            self._open_disk()
            self.fencer.margin_ms = self.profile.fence_margin_ms
            self.previous_slot = self._read_own_slot()
            self._check_other_host()
            self._check_watchdog_path()
            prev = self.previous_slot.incarnation if self.previous_slot else 0
            while self.incarnation in (0, prev):
                self.incarnation = secrets.randbits(63)
            # An in-process subsystem named with --wait-for-subsystem steps aside: the join
            # waits for an external subsystem of that name instead.
            if DlmService.name not in self.opts.wait_for:
                self.dlm = self._make_dlm()
                self.hub.add_local(self.dlm)
                if self.opts.services and "services" not in self.opts.wait_for:
                    self.services = self._make_services()
                    self.hub.add_local(self.services)
            if self.opts.placeholders:
                for sub in default_subsystems():
                    if sub.name not in self.opts.wait_for:
                        self.hub.add_local(sub)
            try:
                self.server.start()
            except OSError as exc:
                raise StartupError(f"cannot open the API socket {self.opts.socket_path}: {exc.strerror or exc}; "
                                   f"give a usable path with --socket (a Unix socket path has at most 107 bytes)",
                                   EXIT_CONFIG) from None
            self.lock_table.start()
        except StartupError as exc:
            self.log.error(str(exc), NODE=self.opts.node)
            return exc.exit_code
        except api.SocketInUse as exc:
            self.log.error(str(exc))
            return EXIT_CONFIG
        except OSError as exc:
            self.log.error(f"start-up failed: {exc}")
            return EXIT_FAILED
        self._install_signals()
        assert self.disk is not None
        self.log.notice(
            f"node {self.opts.node} (id {self.node_id}) of cluster '{self.cluster}' on {self.opts.disk}: "
            f"incarnation {self.incarnation:x}; heartbeat {self.timing.heartbeat_interval_ms} ms, io timeout "
            f"{self.timing.io_timeout_ms} ms, fence after {self.timing.fence_after_ms} ms, dead after "
            f"{self.timing.dead_after_ms} ms (profile {self.profile_name}, fence margin {self.profile.fence_margin_ms} "
            f"ms: a crashed node's services restart elsewhere after about "
            f"{timing_mod.ms_text(timing_mod.failover_ms(self.timing))}); socket {self.opts.socket_path}; "
            f"fence action {self.opts.fence_action}")
        waiting = self._missing_subsystems()
        self.notifier.ready(f"waiting for subsystems: {', '.join(waiting)}" if waiting else "joining")
        if waiting:
            self.log.notice(f"waiting for subsystems to register before the join: {', '.join(waiting)}")
        return None

    def _make_dlm(self) -> DlmService:
        assert self.disk is not None
        return DlmService(path=self.opts.disk, layout=self.disk.layout, cluster_uuid=self.disk.cluster_uuid,
                          node_id=self.node_id, incarnation=self.incarnation, timing=self.timing,
                          guard=self._write_guard, push=self._push,
                          node_name=self._node_name, log=self._log, deadline_of=lambda: self._write_deadline_ms)

    def _push(self, conn_id: int, message: dict[str, Any]) -> bool:
        """The DLM's pushes: to a socket client, or to the services' own lock client."""
        if conn_id == services_mod.LOCK_CONN_ID:
            return self.services.lock.on_push(message) if self.services is not None else False
        return self.server.push(conn_id, message)

    def _make_services(self) -> services_mod.ServicesService:
        assert self.disk is not None
        from clusterfw.subsystems.services.launchers import make_launcher
        from clusterfw.subsystems.services.store import DiskRegistryStore
        kind = self.opts.launcher
        if kind == "auto":
            kind = "systemd" if os.path.isdir("/run/systemd/system") else "process"
        options: dict[str, Any] = {}
        if kind == "systemd":
            options["bind_to"] = "clusterfw.service" if os.environ.get("INVOCATION_ID") else None
        launcher = make_launcher(kind, **options)
        store = DiskRegistryStore(path=self.opts.disk, layout=self.disk.layout, cluster_uuid=self.disk.cluster_uuid,
                                  node_id=self.node_id, incarnation=self.incarnation, guard=self._write_guard,
                                  io_timeout_ms=self.timing.io_timeout_ms)
        self.log.debug(f"services: registration & launch service at level {services_mod.core.SERVICES_LEVEL} "
                        f"with the {launcher.name} launcher")
        return services_mod.ServicesService(
            node=self.opts.node, store=store, dlm=self.dlm, launcher=launcher,
            names=lambda: dict(self.names), io_timeout_ms=self.timing.io_timeout_ms, log=self._log,
            cluster=self.cluster, incarnation=self.incarnation,
            poll_idle_s=self.timing.heartbeat_interval_ms / 1000)

    def _current_view(self) -> ViewRecord | None:
        with self._lock:
            return self.core.view if self.core is not None else None

    def _node_name(self, node_id: int) -> str:
        return self.names.get(node_id, f"node{node_id}")

    def _missing_subsystems(self) -> list[str]:
        have = self.hub.registered_names()
        return [name for name in self.opts.wait_for if name not in have]

    # ----------------------------------------------------------------- signals
    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)  # handled by the main loop; nothing else is safe here

    def _wake_main(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass

    # --------------------------------------------------------------- main loop
    def _main_loop(self) -> int:
        wait_deadline = time.monotonic() + self.opts.wait_timeout_s
        while not self._done.is_set():
            select.select([self._wake_r], [], [], 0.2)
            try:
                while os.read(self._wake_r, 256):
                    pass
            except BlockingIOError:
                pass
            while self._signals:
                self._handle_signal(self._signals.pop(0))
            self._integrity_tick()
            if self._done.is_set():
                break
            if self.core is None:
                self._notify_watchdog()  # alive while waiting: no cycles run yet
                missing = self._missing_subsystems()
                if not missing:
                    self._start_protocol()
                elif time.monotonic() > wait_deadline:
                    self._finish(EXIT_FAILED, f"subsystems {', '.join(missing)} did not register within "
                                              f"{self.opts.wait_timeout_s:.0f} s (--wait-for-subsystem); "
                                              f"start them, or drop the option")
            elif self._leave_deadline is not None and time.monotonic() > self._leave_deadline \
                    and self._fence_reason is None:
                self._fence_because(FenceCause.LEAVE_OVERRAN, exit_anyway=True, seconds=self.opts.stop_timeout_s)
        return self._shutdown()

    def _handle_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._fence_reason is not None:
            self._finish(EXIT_FENCED, f"{name} while fenced ({self._fence_reason})")
            return
        if self.core is None:
            self._finish(EXIT_OK, f"{name} before the join was requested: nothing to leave")
            return
        if self._leave_deadline is not None:
            self.log.notice(f"{name}: the graceful leave is already under way")
            return
        self.log.notice(f"{name}: leaving the cluster gracefully (at most {self.opts.stop_timeout_s:.0f} s)")
        self.request_leave()

    def _start_protocol(self) -> None:
        # Opening a watchdog device arms it: only now, right before the
        # first heartbeat, never while waiting for subsystems.
        try:
            self._write_marker()
        except OSError as exc:
            self._finish(EXIT_FAILED, f"cannot write {self._marker_path()}: {exc}")
            return
        try:
            self.watchdog = self._open_watchdog()
        except StartupError as exc:
            self._finish(exc.exit_code, str(exc))  # logged by _shutdown
            return
        registrations = self.hub.freeze()
        self.suspend = SuspendDetector(SUSPEND_THRESHOLD_MS, self.suspend_clock)
        now = diskio.clock_ms()
        rng = random.Random(secrets.randbits(64))
        core = NodeCore(node_id=self.node_id, incarnation=self.incarnation, timing=self.timing,
                        registrations=registrations, rng=rng.random, now_ms=now,
                        previous_slot=self.previous_slot, name_of=lambda n: printable(self._node_name(n)))
        with self._lock:
            self.core = core
            self._write_deadline_ms = core.fence_deadline_ms()
        assert self.dev is not None
        self.dev.io_timeout_ms = self.timing.io_timeout_ms
        self.log.notice("joining with " + ", ".join(f"{r.name}@{r.level}" for r in registrations),
                        NODE=self.opts.node, TRANSITION="join-requested")
        self.notifier.status(f"joining; cluster {self.cluster}")
        for target, name in ((self._io_loop, "io"), (self._fence_timer_loop, "fence-timer"),
                             (self._suspend_loop, "suspend-watch")):
            thread = threading.Thread(target=self._guarded(target), name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def _guarded(self, target: Any) -> Any:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # a broken invariant: fence, then crash the daemon
                self.log.critical(f"thread {threading.current_thread().name} crashed: {type(exc).__name__}: "
                                  f"{exc}")
                self._fence_because(FenceCause.INTERNAL_ERROR, exit_anyway=True,
                                    thread=threading.current_thread().name, error=f"{type(exc).__name__}: {exc}")
        return run

    def _finish(self, code: int, reason: str) -> None:
        if self._done.is_set():
            return
        self._exit_code = code
        self._exit_reason = reason
        self._done.set()
        self._kick.set()
        self._wake_main()

    def _shutdown(self) -> int:
        code, reason = self._exit_code, self._exit_reason
        priority = "notice" if code == EXIT_OK else "error"
        self.log.log(priority, f"exiting ({code}): {reason}", NODE=self.opts.node)
        self.notifier.stopping(f"exiting: {reason}")
        final = {"op": "stopped", "reason": reason, "exit": code}
        if self._fence_reason is not None:
            final = {"op": "fenced", "reason": self._fence_reason, "exit": code}
        if self.services is not None:
            self.services.stop()
        if self.dlm is not None:
            self.dlm.stop(self._fence_reason and f"fenced: {self._fence_reason}" or f"the daemon exits: {reason}")
        self.lock_table.stop(f"the daemon exits: {reason}")
        self.server.broadcast(final, "watcher")
        self.server.close(LEAVE_FLUSH_S)
        self.hub.stop()
        if self.watchdog is not None:
            self.watchdog.close_gracefully()  # no magic close once fenced
        if code == EXIT_OK and self._fence_reason is None:
            try:
                os.unlink(self._marker_path())  # a clean stop: nothing to clean up at the next start
            except FileNotFoundError:
                pass
            except OSError as exc:
                self.log.warning(f"cannot remove {self._marker_path()}: {exc}")
        if self.dev is not None and code == EXIT_OK:
            self.dev.close()
        return code

    # -------------------------------------------------------------- the guard
    def _write_guard(self) -> str | None:
        """Asked on the I/O worker right before every write system call."""
        if self._fence_reason is not None:
            return f"fenced ({self._fence_reason})"
        if self._done.is_set():
            return "the daemon is exiting"
        if diskio.clock_ms() >= self._write_deadline_ms:
            return "the fence deadline has passed"
        return None

    # --------------------------------------------------------------- io thread
    def _io_loop(self) -> None:
        core = self.core
        disk = self.disk
        assert core is not None and disk is not None
        while not self._done.is_set() and self._fence_reason is None:
            self._kick.clear()
            if self._check_suspend():
                return
            now = diskio.clock_ms()
            self._io_phase = ("polling the core", now)
            with self._lock:
                ops = core.poll(now)
                events = core.take_events()
                wake = core.wakeup_ms()
                self._write_deadline_ms = core.fence_deadline_ms()
            self._io_phase = ("handling events", diskio.clock_ms())
            self._dispatch(events)
            if not ops:
                if core.stopped is not None or core.fenced is not None:
                    return
                self._io_phase = ("waiting for the next cycle", diskio.clock_ms())
                self._kick.wait(min(max(0.0, (wake - now) / 1000.0), WAIT_MAX_S))
                continue
            results = []
            for op in ops:
                if self._fence_reason is not None or self._done.is_set():
                    return
                if isinstance(op, WriteSlot):
                    self._io_phase = ("reading its own slot before the heartbeat write", diskio.clock_ms())
                    if self._slot_taken(diskio.read_own_slot(disk, self.node_id)):
                        return
                self._io_phase = (f"I/O {_OP_NAMES[type(op)]}", diskio.clock_ms())
                result = diskio.perform(disk, op, configured=self.names)
                self.integrity.observe_result(result)
                if isinstance(op, WriteSlot) and result.ok:
                    self._last_write = (result.start_ms, result.end_ms)
                results.append(result)
            if any(isinstance(r.op, ReadSlots) and r.ok and self._slot_taken(r.value) for r in results):
                return
            now = diskio.clock_ms()
            self._io_phase = ("completing the cycle", now)
            with self._lock:
                last_ok_before = core.last_ok_ms
                core.complete(now, results)
                last_ok_after = core.last_ok_ms
                events = core.take_events()
                healthy = core.can_write(now)
                self._write_deadline_ms = core.fence_deadline_ms()
                slots = core.slots
            self._dispatch(events)
            if self._check_suspend():
                return
            if should_feed(healthy, self._fence_reason is not None, last_ok_before, last_ok_after):
                self._feed_watchdogs()
            elif healthy and self._fence_reason is None:
                self._notify_watchdog()  # systemd's watchdog: the process is alive and not fenced
            if any(node_id not in self.names for node_id in slots):
                self._refresh_names()

    def _slot_taken(self, slots: object) -> bool:
        """Fence (and return True) if our slot shows another incarnation than
        ours that is not the record we found at start: another host runs
        this node.  Checked right before every heartbeat write (so a write of
        the other host since our last one is seen) and in every slot read."""
        foreign = diskio.own_slot_problem(slots, self.node_id, self.incarnation, self.previous_slot)
        if foreign is None:
            return False
        self.log.critical(
            f"ANOTHER HOST IS WRITING NODE {self.opts.node}'S SLOT (incarnation {foreign.incarnation:x}, "
            f"seq {foreign.seq}; ours is {self.incarnation:x}): two daemons run node "
            f"'{self.opts.node}'; node names must be unique per host", NODE=self.opts.node)
        self._fence_because(FenceCause.FOREIGN_WRITER, exit_anyway=True, node=self.opts.node,
                            incarnation=foreign.incarnation)
        return True

    def _feed_watchdogs(self) -> None:
        if self.watchdog is not None:
            self.watchdog.feed()
        self._notify_watchdog()

    def _notify_watchdog(self) -> None:
        """WATCHDOG=1 to systemd, at most once a second (or a quarter of
        WatchdogSec)."""
        now = time.monotonic()
        interval = WATCHDOG_NOTIFY_MIN_S
        if self.notifier.watchdog_usec:
            interval = min(interval, self.notifier.watchdog_usec / 4e6)
        if now - self._last_watchdog_notify >= interval:
            self._last_watchdog_notify = now
            self.notifier.watchdog()

    def _integrity_tick(self) -> None:
        """The periodic re-check of what no cycle reads (superblock, node
        table, the view copies of the master and of every node in turn), and
        the integrity log lines.  Called by the main loop; never waits: the
        reads run on a thread and a device of their own, so the heartbeat
        never waits for them."""
        self.integrity.flush()
        hb = self.timing.heartbeat_interval_ms
        if self.disk is None or not self.integrity.start_check(min(max(10 * hb, 1000), 30_000), 2 * hb):
            return
        threading.Thread(target=self._integrity_check, name="integrity", daemon=True).start()

    def _integrity_check(self) -> None:
        tracker = self.integrity
        try:
            assert self.disk is not None
            with self._lock:
                decision = self.core.decision if self.core is not None else None
            master = decision.master if decision is not None and not decision.resigned else None
            timeout_ms = max(self.timing.io_timeout_ms, 1000)
            with BlockDevice(self.opts.disk, readonly=True, io_timeout_ms=timeout_ms) as dev:
                disk = ClusterDisk(dev, self.disk.layout, self.disk.cluster_uuid)
                try:
                    tracker.observe_superblock(disk.read_superblock())
                except BlockError as exc:
                    tracker.observe_superblock(exc)
                tracker.observe_node_table(disk.read_node_table())
                for node_id in tracker.view_nodes_to_check(master, self.node_id):
                    tracker.observe_view_copies(node_id, disk.read_view_copies(node_id))
        except Exception as exc:  # noqa: BLE001 - a failed re-check is no evidence; the next one retries
            self._log("debug", f"integrity re-check failed: {type(exc).__name__}: {exc}")
        finally:
            tracker.checked()
            tracker.flush()

    def _refresh_names(self) -> None:
        """Re-read the node table (a node was added while we run), on a
        thread and a device of its own so the heartbeat never waits for it."""
        now = time.monotonic()
        if self._names_refreshing or now < self._names_refresh_at:
            return
        self._names_refreshing = True
        self._names_refresh_at = now + NAMES_REFRESH_MIN_S

        def refresh() -> None:
            try:
                from clusterfw.ondisk.blockdev import BlockDevice
                with BlockDevice(self.opts.disk, readonly=True, io_timeout_ms=STARTUP_IO_TIMEOUT_MS) as dev:
                    assert self.disk is not None
                    disk = ClusterDisk(dev, self.disk.layout, self.disk.cluster_uuid)
                    table = disk.read_node_table()
                names = {cfg.node_id: cfg.name for cfg in table if isinstance(cfg, NodeConfig)}
                names.update({k: v for k, v in self.names.items() if k not in names})
                self.names = names
            except (OSError, DeviceError, BlockError) as exc:
                self._log("warning", f"cannot re-read the node table: {exc}")
            finally:
                self._names_refreshing = False

        threading.Thread(target=refresh, name="node-table", daemon=True).start()

    # ------------------------------------------------------ fence-timer thread
    def _fence_timer_loop(self) -> None:
        core = self.core
        assert core is not None
        while not self._done.is_set() and self._fence_reason is None:
            if self._check_suspend():
                return
            with self._lock:
                if core.fenced is not None or core.stopped is not None:
                    return
                deadline = core.fence_deadline_ms()
            now = diskio.clock_ms()
            if now >= deadline:
                with self._lock:
                    core.tick(now)
                    events = core.take_events()
                self._dispatch(events)
                continue
            self._done.wait(min((deadline - now) / 1000.0 + 0.001, WAIT_MAX_S / 2))

    def _check_suspend(self) -> bool:
        """Fence at once (and return True) if the host was suspended since
        the last look: its services resumed with it, and the others may
        have declared this node dead meanwhile (host/clocks.py)."""
        detector = self.suspend
        if detector is None or self._fence_reason is not None:
            return self._fence_reason is not None
        gap = detector.check()
        if gap is None:
            return False
        self._fence_because(FenceCause.SUSPENDED, gap=gap)
        return True

    def _suspend_loop(self) -> None:
        """Looks for a suspend every SUSPEND_POLL_S, so that a resumed host
        fences within that, whatever the other threads wait for."""
        while not self._done.is_set() and self._fence_reason is None:
            if self._check_suspend():
                return
            self._done.wait(SUSPEND_POLL_S)

    def _io_diagnosis(self, now: float, deadline: float) -> str:
        """Why the deadline passed, in words an admin can act on: what the io
        thread was doing and for how long, how the last heartbeat write went,
        and how late the deadline was noticed (late means the whole process
        was not scheduled: CPU starvation or a pause, not the disk)."""
        phase, since = self._io_phase
        parts = [f"io thread {phase} for {now - since:.0f} ms"]
        if self._last_write is not None:
            issued, done = self._last_write
            parts.append(f"last heartbeat write issued {now - issued:.0f} ms ago, took {done - issued:.0f} ms")
        else:
            parts.append("no heartbeat write completed since start")
        parts.append(f"noticed {now - deadline:.0f} ms after the deadline")
        return "; ".join(parts)

    # ----------------------------------------------------------------- events
    def _dispatch(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, Notify):
                self.hub.deliver(self._notification(ev))
            elif isinstance(ev, Fenced):
                self._fence(ev.reason, cause=ev.cause)
            elif isinstance(ev, MasterChanged):
                who = "this node" if ev.me else self.names.get(ev.master, f"node{ev.master}")
                self.log.notice(f"master is {who} (term {ev.term})", TERM=ev.term)
                self._update_status()
            elif isinstance(ev, StateChanged):
                term, epoch = self._term_epoch()
                self.log.notice(f"state {ev.old.value} -> {ev.new.value}", EPOCH=epoch, TERM=term,
                                TRANSITION=f"{ev.old.value}->{ev.new.value}")
                if ev.new is NodeState.JOINED and not self._joined_once:
                    self._joined_once = True
                    self.log.notice(f"joined {diskio.clock_ms() - self._started_ms:.0f} ms after start")
                self._update_status()
                self._progress()
            elif isinstance(ev, ViewAdopted):
                view = self._current_view()
                if view is not None:
                    self.hub.view_adopted(view)
                for line in ev.log:  # decisions at info, the steps of each transition at debug
                    self.log.log("debug" if line.detail else "info", f"[master] {line.text}",
                                 EPOCH=ev.epoch, TERM=ev.term)
                self.log.debug(f"view epoch {ev.epoch} of term {ev.term}", EPOCH=ev.epoch, TERM=ev.term)
                self._progress()
            elif isinstance(ev, Rejected):
                self._rejected = f"level {ev.level}: {ev.reason}"
                self.log.error(f"the join was rejected at level {ev.level}: {ev.reason}", LEVEL=ev.level)
            elif isinstance(ev, Stopped):
                if ev.reason is StopReason.LEFT:
                    self._finish(EXIT_OK, "left the cluster gracefully")
                else:
                    self._finish(EXIT_CONFIG, f"join rejected ({self._rejected or ev.reason}): fix the "
                                              f"subsystem registrations so they match the cluster's")

    def _term_epoch(self) -> tuple[int, int]:
        with self._lock:
            core = self.core
            if core is None or core.view is None:
                return 0, 0
            return core.view.term, core.view.epoch

    def _notification(self, ev: Notify) -> Notification:
        names = self.names
        return Notification(
            level=ev.level, batch=ev.batch_id, epoch=ev.epoch,
            entries=tuple(Entry(e.node_id, names.get(e.node_id, f"node{e.node_id}"), Transition.of(e.kind), e.barrier)
                          for e in ev.entries),
            context=tuple((node_id, names.get(node_id, f"node{node_id}"), state) for node_id, state in ev.context),
            view=self._current_view())

    def _update_status(self) -> None:
        with self._lock:
            core = self.core
            if core is None:
                return
            state = core.state.value
            decision = core.decision
            epoch = core.view.epoch if core.view is not None else 0
        master = "none"
        if decision is not None and not decision.resigned:
            master = self.names.get(decision.master, f"node{decision.master}")
        line = f"{state}; master {master}; epoch {epoch}"
        if line != self._status_line:
            self._status_line = line
            self.notifier.status(line)

    def _my_levels(self) -> tuple[str, dict[str, str], int]:
        with self._lock:
            core = self.core
            assert core is not None
            view, state, slots = core.view, core.state, core.slots
        member = view.member(self.node_id) if view is not None else None
        names = {r.level: r.name for s in slots.values() for r in s.registrations}
        levels = {}
        if view is not None:
            for spec in view.levels:
                name = names.get(spec.level, f"level{spec.level}")
                ok = member is not None and member.incarnation == self.incarnation
                levels[name] = level_state(member, spec.level) if ok and member is not None else "inactive"
        return state.value, levels, view.epoch if view is not None else 0

    def _progress(self) -> None:
        if self._leave_deadline is None:
            return
        state, levels, epoch = self._my_levels()
        self.server.broadcast({"op": "progress", "state": state, "levels": levels, "epoch": epoch}, "watcher")

    # ------------------------------------------------------------------ fence
    def _fence_because(self, cause: FenceCause, *, exit_anyway: bool = False, **fields: object) -> None:
        self._fence(cause.text(**fields), exit_anyway, cause)

    def _fence(self, reason: str, exit_anyway: bool = False, cause: FenceCause | None = None) -> None:
        with self._fence_lock:
            if self._fence_reason is not None:
                return
            self._fence_reason = reason  # from here on the write guard refuses every write
        assert self.fencer is not None
        if self.watchdog is not None:
            self.watchdog.fence()
        self._kick.set()
        detail = ""
        if cause is FenceCause.HEARTBEAT_MISSED and self.core is not None:
            detail = f" ({self._io_diagnosis(diskio.clock_ms(), self.core.fence_deadline_ms())})"
        self.log.critical(f"FENCED: {reason}{detail}", NODE=self.opts.node, TRANSITION="fenced")
        if self.services is not None:
            try:
                self.services.fence(reason)  # everything the launcher started dies first
            except Exception as exc:  # noqa: BLE001 - the rest of the fence must still happen
                self.log.critical(f"fence: killing the services failed: {type(exc).__name__}: {exc}")
        if self.dlm is not None:
            self.dlm.stop(f"fenced: {reason}")  # lock holders are told 'revoked' and must stop
        self.notifier.status(f"fenced: {reason}")
        action = self.opts.fence_action
        if action != "none":
            try:
                self.fencer.kill_units(reason)
            except Exception as exc:  # noqa: BLE001 - the rest of the fence must still happen
                self.log.critical(f"fence: killing units failed: {type(exc).__name__}: {exc}")
        if action == "kill-namespace":
            self.fencer.kill_namespace()  # returns only if it refused
        if action in ("exit", "kill-namespace") or exit_anyway:
            self._finish(EXIT_FENCED, f"fenced: {reason}")
        else:
            self.server.broadcast({"op": "fenced", "reason": reason}, "watcher")

    # ------------------------------------------------------------ api handler
    def handle(self, peer: api.Peer, request: protocol.Request) -> dict[str, Any] | api.Deferred:
        if request.op == "status":
            return {"ok": True, "op": "status", "status": self.status()}
        if request.op == "leave":
            error = self.request_leave()
            if error is not None:
                return protocol.error(error, "leave")
            peer.role = "watcher"
            state, levels, epoch = self._my_levels() if self.core is not None else ("inactive", {}, 0)
            return {"ok": True, "op": "leave", "state": state, "levels": levels, "epoch": epoch}
        if request.op == "register":
            reg = Registration(request.level, request.name, request.barriers)
            try:
                reattached = self.hub.add_external(peer.conn_id, reg)
            except RegistrationError as exc:
                return protocol.error(str(exc), "register")
            peer.role = "subsystem"
            self.log.notice(f"external subsystem {reg.name} registered at level {reg.level} "
                            f"(pid {peer.pid}){' (re-attached)' if reattached else ''}", LEVEL=reg.level)
            self._wake_main()
            return {"ok": True, "op": "registered", "level": reg.level, "name": reg.name,
                    "barriers": list(reg.barriers), "reattached": reattached,
                    # a new registration is always taken before the join request (it is
                    # refused after it); only a re-attached one finds the join requested
                    "join": "requested" if reattached else "waiting"}
        if request.op in ("lock", "unlock", "locks"):
            return self._handle_lock(peer, request)
        if request.op == "service":
            return self._handle_service(peer, request)
        if request.op == "ack":
            error = self.hub.external_ack(peer.conn_id, request.batch)
            if error is not None:
                return protocol.error(error, "ack")
            return {"ok": True, "op": "acked", "batch": request.batch}
        return protocol.error(f"unknown op {request.op!r}")

    def _handle_service(self, peer: api.Peer, request: protocol.Request) -> dict[str, Any] | api.Deferred:
        if self.services is None:
            return protocol.error("this daemon runs without its registration & launch service (no DLM, or "
                                  "--no-services): start it without those options to manage services", "service")
        action, args = request.name, dict(request.args or {})
        if action in ("list", "why", "dump"):
            return {"op": "service", **self.services.answer(action, args)}
        if not peer.privileged:
            return protocol.error(f"'service {action}' changes the cluster: run it as root", "service")
        conn = peer.conn_id
        def reply(answer: dict[str, Any]) -> None:
            self.server.reply(conn, {"op": "service", **answer})
        self.services.submit(action, args, reply)
        return api.DEFERRED

    def holds(self, peer: api.Peer) -> bool:
        return self.dlm is not None and self.dlm.has_requests(peer.conn_id)

    def disconnected(self, peer: api.Peer) -> None:
        if peer.role == "subsystem":
            self.hub.detach(peer.conn_id)
        if self.dlm is not None:
            self.dlm.disconnected(peer.conn_id)

    def _handle_lock(self, peer: api.Peer, request: protocol.Request) -> dict[str, Any] | api.Deferred:
        if request.op == "locks":
            self.lock_table.submit(peer.conn_id, peer.privileged)  # read off the API thread
            return api.DEFERRED
        if self.dlm is None:
            return protocol.error("this daemon runs without its DLM (--wait-for-subsystem dlm hands level 10 "
                                  "to an external subsystem): start it without that option to use cluster locks",
                                  request.op)
        if request.op == "lock":
            mode = LockMode.SHARED if request.mode == "shared" else LockMode.EXCLUSIVE
            error = self.dlm.lock(peer.conn_id, peer.pid, request.batch, request.name, mode,
                                  None if request.try_only else request.timeout_ms, request.try_only)
            if error is not None:
                return protocol.error(error, "lock")
            return {"ok": True, "op": "lock-queued", "id": request.batch, "name": request.name,
                    "node": self.opts.node}
        error = self.dlm.unlock(peer.conn_id, request.batch)
        if error is not None:
            return protocol.error(error, "unlock")
        return {"ok": True, "op": "unlocking", "id": request.batch}

    def locks(self) -> dict[str, Any]:
        """The lock table of the whole cluster, read from the disk now, and
        this node's requests with their local clients."""
        return self._finish_lock_table(self._read_lock_table())

    def _read_lock_table(self) -> dict[str, Any]:
        """The part of ``locks`` read from the disk (on the lock-table thread,
        never the API thread; slowreads.py)."""
        assert self.disk is not None
        out: dict[str, Any] = {"read_unix_ms": int(time.time() * 1000)}
        try:
            with BlockDevice(self.opts.disk, readonly=True, io_timeout_ms=max(self.timing.io_timeout_ms, 1000)) as dev:
                area = ClusterDisk(dev, self.disk.layout, self.disk.cluster_uuid).read_lock_area(AREA_READ_BYTES_MAX)
            view = self._current_view()
            dlm = self.dlm
            # The DLM's own counting rule when it runs: a live later incarnation
            # counts even under a view that went back.
            out["locks"] = (dlm.describe_area(area, view) if dlm is not None
                            else describe_area(area, view, self._node_name))
            out["error"] = None
        except (OSError, DeviceError) as exc:
            out["locks"] = []
            out["error"] = f"cannot read the lock area of {self.opts.disk}: {exc}"
        return out

    def _finish_lock_table(self, part: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"cluster": self.cluster, "node": self.opts.node, **part}
        out["local"] = self.dlm.local_requests() if self.dlm is not None else []
        out["dlm"] = "running" if self.dlm is not None else "not running (--wait-for-subsystem dlm)"
        return out

    def _send_notification(self, conn_id: int, notification: Notification) -> bool:
        return self.server.push(conn_id, notification.to_json())

    def _ack_core(self, level: int, batch: int) -> None:
        now = diskio.clock_ms()
        with self._lock:
            if self.core is not None:
                self.core.ack(level, batch, now)
        self._kick.set()

    def request_leave(self) -> str | None:
        """Start the graceful leave; returns an error text if it cannot."""
        if self._fence_reason is not None:
            return f"the node is fenced ({self._fence_reason}): nothing to leave; stop the daemon"
        if self.core is None:
            self._finish(EXIT_OK, "asked to leave before the join was requested: nothing to leave")
            return None
        if self._leave_deadline is None:
            self._leave_deadline = time.monotonic() + self.opts.stop_timeout_s
        now = diskio.clock_ms()
        with self._lock:
            self.core.leave(now)
            events = self.core.take_events()
        self._dispatch(events)
        self._kick.set()
        return None

    # ----------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        now = diskio.clock_ms()
        with self._lock:
            core = self.core
            if core is not None:
                view, slots, decision = core.view, core.slots, core.decision
                ages = {n: core.liveness.age_ms(n, now) for n in set(slots) | set(self.names)}
                state, role = core.state.value, core.role.value
                acting_master = core.is_acting_master(now)
                fenced, stopped = core.fenced, core.stopped
            else:
                view, slots, decision, ages = None, {}, None, {}
                state, role, acting_master, fenced, stopped = "inactive", "follower", False, None, None
        out = render(cluster=self.cluster, names=self.names, view=view, slots=slots, decision=decision,
                     ages_ms=ages, placeholders=self.hub.placeholder_levels())
        fenced = self._fence_reason or fenced
        if fenced:
            phase = "fenced"
        elif self._done.is_set() or stopped:
            phase = "stopped"
        elif core is None:
            phase = "waiting-for-subsystems"
        elif self._leave_deadline is not None:
            phase = "leaving"
        else:
            phase = "running"
        out.update({
            "source": "daemon", "node": self.opts.node, "node_id": self.node_id, "state": state,
            "phase": phase, "role": role, "acting_master": acting_master,
            "incarnation": incarnation_text(self.incarnation), "fenced": fenced, "pid": os.getpid(),
            "disk": self.opts.disk, "timing": timing_json(self.timing),
            "cluster_timing": timing_mod.summary(self.profile_name, self.profile),
            "fence_action": self.opts.fence_action,
            "subsystems": self.hub.describe(), "waiting_for": self._missing_subsystems() if core is None else [],
            "uptime_ms": int(now - self._started_ms),
        })
        add_integrity(out, self.integrity, self.names, decision, view)
        if self.services is not None:
            out["services"] = [{k: s[k] for k in ("name", "state", "owners", "flags", "nodes", "waiting", "blocked",
                                                   "frozen", "parent")} for s in self.services.summaries()]
        return out


def run_daemon(opts: DaemonOptions) -> int:
    try:
        admin.check_node_name(opts.node)
    except ValueError as exc:
        Journal(opts.node or "?").error(f"--node: {exc}")
        return EXIT_USAGE
    return Daemon(opts).run()
