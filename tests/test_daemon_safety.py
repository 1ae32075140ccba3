"""The daemon's safety rules around the fence (docs/daemon.md §3, §12):

* a daemon that starts after an unclean exit (SIGKILL, OOM kill, crash)
  first stops what the previous one managed -- fence hooks, then the managed
  units, waited for until dead -- before its first heartbeat, and refuses
  to join if they do not die;
* the hardware watchdog is fed only after a cycle whose heartbeat write
  succeeded; the fence hooks are bounded by the fence margin; a fence waits
  until the killed units are dead;
* the block layer's own I/O timeout for the disk must not outlive
  io_timeout (fake sysfs trees, and the daemon's refusal);
* a suspend (CLOCK_BOOTTIME running ahead of CLOCK_MONOTONIC) fences at once.

systemd is not PID 1 on the test host, so the real ``systemctl`` cannot
work here: the tests put a small stand-in first on PATH (``FAKE_SYSTEMCTL``)
that kills *real* processes, by the PID recorded in
``$FAKE_SYSTEMD_DIR/UNIT.pid``, a little after ``kill`` returned, as systemd
does; ``show`` reports a unit alive while that process lives.  So the tests
check that real processes really die.

Daemons run as real processes (the crash test) or in this process on a real
loop device, driven through ``Daemon.startup`` and ``_start_protocol``.
Every process, daemon thread, loop device and directory a test creates is
removed even when it fails.  Needs root and loop devices for most tests.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from test_daemon_loop import HAVE_LOOP, needs_loop, Cluster, formatted_cluster, wait_for

from clusterfw.core.model import SlotRecord
from clusterfw.core.node import OpResult, WriteSlot
from clusterfw.node import blockcheck, fencing, units
from clusterfw.ondisk import diskio
from clusterfw.node.daemon import EXIT_CONFIG, EXIT_FAILED, Daemon, DaemonOptions
from clusterfw.host.journal import Journal
from clusterfw.host.clocks import SuspendDetector, clock_pair, suspended_ms
from clusterfw.ondisk.blockdev import BlockDevice
from clusterfw.ondisk.clusterdisk import ClusterDisk


FAKE_SYSTEMCTL = r"""#!/bin/sh
# A stand-in for systemctl: systemd is not PID 1 on the test host.  Units are
# real processes whose PIDs are in $FAKE_SYSTEMD_DIR/UNIT.pid.
d="${FAKE_SYSTEMD_DIR:?}"
cmd="$1"; shift
units=""
for a in "$@"; do
  case "$a" in -*) ;; *) units="$units $a" ;; esac
done
echo "$cmd$units" >> "$d/calls"
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1)" != Z ]; }
case "$cmd" in
kill)
  [ -e "$d/ignore-kill" ] && exit 0
  for u in $units; do
    pid=$(cat "$d/$u.pid" 2>/dev/null) || continue
    # like systemd: the signal reaches the processes after the call returned
    (sleep 0.05; kill -9 "$pid") </dev/null >/dev/null 2>&1 &
  done ;;
show)
  for u in $units; do
    pid=$(cat "$d/$u.pid" 2>/dev/null || echo 0)
    echo "Id=$u"
    if [ "$pid" != 0 ] && alive "$pid"; then echo "ActiveState=active"; echo "MainPID=$pid"
    else echo "ActiveState=failed"; echo "MainPID=0"; fi
    echo "ControlPID=0"; echo "ControlGroup="; echo
  done ;;
*) echo "fake systemctl: '$cmd' is not supported" >&2; exit 1 ;;
esac
"""


class FakeSystemd:
    """The fake systemctl on PATH and the 'units' (real processes) it manages."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "systemd"
        self.bin = root / "bin"
        self.dir.mkdir()
        self.bin.mkdir()
        script = self.bin / "systemctl"
        script.write_text(FAKE_SYSTEMCTL)
        script.chmod(0o755)
        self.procs: dict[str, subprocess.Popen] = {}

    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_SYSTEMD_DIR": str(self.dir)}

    def start_unit(self, unit: str) -> subprocess.Popen:
        proc = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[unit] = proc
        (self.dir / f"{unit}.pid").write_text(f"{proc.pid}\n")
        return proc

    def ignore_kill(self) -> None:
        (self.dir / "ignore-kill").write_text("")

    def calls(self) -> list[str]:
        path = self.dir / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def cleanup(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def fake_systemd(tmp_path, monkeypatch) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path)
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    try:
        yield fake
    finally:
        fake.cleanup()


class CaptureJournal(Journal):
    def __init__(self, node: str) -> None:
        super().__init__(node, debug=True, use_journal=False)
        self.lines: list[tuple[str, str]] = []

    def log(self, priority: str, message: str, **fields: Any) -> None:
        self.lines.append((priority, message))
        super().log(priority, message, **fields)

    def text(self) -> str:
        return "\n".join(f"{p}: {m}" for p, m in self.lines)


def _hook(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.fixture(scope="module")
def disk(lun_root) -> Iterator[Cluster]:
    """A formatted loop device (lab timing, nodes n1..n3) for the in-process daemons."""
    if not HAVE_LOOP:
        pytest.skip("needs root, losetup and loop devices")
    with formatted_cluster(lun_root, "safety", "safety") as c:
        yield c


@contextlib.contextmanager
def in_process(c: Cluster, tmp: Path, node: str = "n1", **opts: Any) -> Iterator[tuple[Daemon, CaptureJournal]]:
    """A Daemon in this process (no signals, no main loop); stopped and its
    threads, device, lock and socket released at the end."""
    run = tmp / f"run-{node}"
    run.mkdir(exist_ok=True)
    journal = CaptureJournal(node)
    options = dict(disk=c.device, node=node, fence_action="none", socket_path=str(run / "clusterfw.sock"),
                   runtime_dir=str(run), placeholders=False)
    options.update(opts)
    d = Daemon(DaemonOptions(**options), journal)  # type: ignore[arg-type]
    try:
        yield d, journal
    finally:
        d._finish(0, "the test is over")
        for thread in d._threads:
            thread.join(5)
        d._shutdown()
        if d.dev is not None:
            d.dev.close()
        if d._interprocess_lock is not None:
            d._interprocess_lock.release()
        os.close(d._wake_r)
        os.close(d._wake_w)


def _watchdog(tmp: Path) -> Path:
    wd = tmp / "watchdog"  # a file stands in for /dev/watchdog
    wd.write_bytes(b"")
    return wd


# ============================================================ defect 5: crash
@needs_loop
def test_a_restarted_daemon_kills_what_the_crashed_one_managed_before_its_first_heartbeat(lun_root, fake_systemd,
                                                                                        tmp_path):
    """SIGKILL the daemon while a managed unit (a real process) runs; the
    restarted daemon must run the fence hooks and have the unit's process
    dead before its first heartbeat (a new incarnation in its slot) lands."""
    reasons = tmp_path / "hook.out"
    hook = _hook(tmp_path / "hook.sh", f'echo "$CLUSTERFW_FENCE_REASON" >> {reasons}\n')
    with formatted_cluster(lun_root, "crash", "crash") as c:
        run = c.runtime_dir("n1")
        c.start("n1", "--fence-hook", hook, env=fake_systemd.env())
        status = wait_for("n1 joined", lambda: c.joined_view("n1", ("n1",)), 15)
        old = int(status["incarnation"], 16)  # a hex string, as in every JSON output
        # the launch service started a unit for the cluster and listed it
        service = fake_systemd.start_unit("web.service")
        (run / "managed-units").write_text("web.service\n")
        assert (run / "n1.running").exists()
        c.signal("n1", signal.SIGKILL)
        c.wait_exit("n1", 10)
        assert service.poll() is None  # the crash stopped nothing
        assert not reasons.exists()

        seen: dict[str, float] = {}
        stop = threading.Event()

        def watch() -> None:
            with BlockDevice(c.device, readonly=True) as dev:
                cdisk = ClusterDisk.open(dev)
                while not stop.is_set():
                    now = time.monotonic()
                    if "dead" not in seen and service.poll() is not None:
                        seen["dead"] = now
                    rec = cdisk.read_slot(1)
                    if "heartbeat" not in seen and isinstance(rec, SlotRecord) and rec.incarnation != old:
                        seen["heartbeat"] = now
                        seen["dead_at_heartbeat"] = float(service.poll() is not None)
                    time.sleep(0.002)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            c.start("n1", "--fence-hook", hook, env=fake_systemd.env())
            wait_for("the new incarnation's first heartbeat", lambda: "heartbeat" in seen, 15)
        finally:
            stop.set()
            watcher.join(5)
        log = c.log("n1")
        assert seen.get("dead_at_heartbeat") == 1.0, f"the service still ran at the first heartbeat:\n{log}"
        assert seen["dead"] <= seen["heartbeat"]
        assert "start-up cleanup after an unclean exit" in reasons.read_text()
        assert f"pid {c.procs['n1'].pid}" not in reasons.read_text()  # it names the previous daemon
        assert "did not exit cleanly" in log
        assert log.index("all of them were dead") < log.index("joining with"), log
        assert any(call.startswith("kill web.service") for call in fake_systemd.calls())
        # a graceful leave is a clean exit: the next start has nothing to clean up
        wait_for("n1 joined again", lambda: c.joined_view("n1", ("n1",)), 15)
        c.signal("n1", signal.SIGTERM)
        assert c.wait_exit("n1", 15) == 0, c.log("n1")
        assert not (run / "n1.running").exists()


@needs_loop
def test_start_up_refuses_to_join_when_the_managed_units_do_not_die(disk, fake_systemd, tmp_path, monkeypatch):
    service = fake_systemd.start_unit("db.service")
    fake_systemd.ignore_kill()
    monkeypatch.setattr(fencing, "STARTUP_KILL_WAIT_S", 0.3)
    run = tmp_path / "run-n2"
    run.mkdir()
    (run / "managed-units").write_text("db.service\n")
    (run / "n2.running").write_text("pid 4242 incarnation 1f\n")  # the previous daemon did not exit cleanly
    with in_process(disk, tmp_path, "n2", fence_action="exit") as (d, journal):
        start = time.monotonic()
        assert d.startup() == EXIT_FAILED
        assert time.monotonic() - start < 3
        assert d.dev is None  # refused before it even opened the disk
    text = journal.text()
    assert "refusing to join: 1 managed units of the previous daemon still run 0.3 s after SIGKILL" in text
    assert "db.service: active, MainPID" in text
    assert service.poll() is None


@needs_loop
def test_listed_units_are_killed_at_start_even_after_a_clean_exit_but_hooks_are_not_run(disk, fake_systemd,
                                                                                      tmp_path):
    reasons = tmp_path / "hook.out"
    hook = _hook(tmp_path / "hook.sh", f'echo "$CLUSTERFW_FENCE_REASON" >> {reasons}\n')
    service = fake_systemd.start_unit("app.service")
    run = tmp_path / "run-n3"
    run.mkdir()
    (run / "managed-units").write_text("app.service\n")
    with in_process(disk, tmp_path, "n3", fence_action="exit", fence_hooks=(hook,)) as (d, journal):
        assert d.startup() is None, journal.text()
        assert service.poll() is not None  # dead by the time startup() returned
    assert not reasons.exists()


# ================================================ defect 6: the fence margin
def test_the_dlm_runs_without_the_placeholder_subsystems(disk, tmp_path):
    with in_process(disk, tmp_path) as (d, journal):  # placeholders=False: --no-placeholder-subsystems
        assert d.startup() is None, journal.text()
        assert d.dlm is not None
        assert [(s["level"], s["name"]) for s in d.hub.describe()] == [(10, "dlm"), (50, "services")]


def test_feed_rule():
    assert fencing.should_feed(True, False, 100.0, 200.0)
    assert not fencing.should_feed(True, False, 200.0, 200.0)  # the slot write failed
    assert not fencing.should_feed(False, False, 100.0, 200.0)  # past the deadline
    assert not fencing.should_feed(True, True, 100.0, 200.0)  # fenced


@needs_loop
def test_watchdog_is_not_fed_after_a_cycle_whose_heartbeat_write_failed(disk, tmp_path, monkeypatch):
    wd = _watchdog(tmp_path)
    real_perform = diskio.perform
    failing = threading.Event()
    fed_at_first_failure: list[int] = []

    def perform(cdisk: ClusterDisk, op: Any, configured: Any = None) -> OpResult:
        if failing.is_set() and isinstance(op, WriteSlot):
            if not fed_at_first_failure:
                fed_at_first_failure.append(wd.stat().st_size)
            start = diskio.clock_ms()
            return OpResult(op, False, start, diskio.clock_ms(), None, "injected: EIO")
        return real_perform(cdisk, op, configured)

    monkeypatch.setattr(diskio, "perform", perform)
    with in_process(disk, tmp_path, "n1", watchdog=str(wd)) as (d, journal):
        assert d.startup() is None, journal.text()
        d._start_protocol()
        wait_for("the watchdog fed by healthy cycles", lambda: wd.stat().st_size >= 3, 5)
        failing.set()
        wait_for("the fence for missed heartbeats", lambda: d._fence_reason, 5)
        assert "no heartbeat write completed" in d._fence_reason
        # cycles ran between the first failed write and the fence, the node could still write
        # in them, yet none of them fed the watchdog
        assert fed_at_first_failure and wd.stat().st_size == fed_at_first_failure[0], journal.text()


@needs_loop
def test_fence_hooks_are_bounded_by_the_profiles_fence_margin(disk, tmp_path):
    slow = _hook(tmp_path / "slow.sh", "exec sleep 30\n")
    with in_process(disk, tmp_path, "n1", fence_action="kill-units", fence_hooks=(slow,)) as (d, journal):
        assert d.startup() is None, journal.text()
        assert d.fencer is not None and d.fencer.margin_ms == 200  # lab profile
        start = time.monotonic()
        d._fence("test: a fence with a hook that hangs")
        took = time.monotonic() - start
    assert took < 1.0, f"the fence took {took:.2f} s with a 200 ms margin"
    assert "fence: " + slow + " did not finish within 200 ms (the fence margin): killed" in journal.text()


def _fence_one_unit(disk, fake_systemd, tmp_path, unit):  # type: ignore[no-untyped-def]
    """An in-process daemon (kill-units) managing one running fake unit
    fences; returns the unit's process, how long the fence took, the journal."""
    with in_process(disk, tmp_path, "n1", fence_action="kill-units") as (d, journal):
        assert d.startup() is None, journal.text()
        service = fake_systemd.start_unit(unit)
        (tmp_path / "run-n1" / "managed-units").write_text(unit + "\n")
        start = time.monotonic()
        d._fence(f"test: fence with {unit} running")
        took = time.monotonic() - start
    return service, took, journal


@needs_loop
def test_a_fence_waits_until_the_killed_units_are_dead(disk, fake_systemd, tmp_path):
    service, took, journal = _fence_one_unit(disk, fake_systemd, tmp_path, "web.service")
    # systemctl kill returned before the process died; the fence waited for it
    assert service.poll() is not None, journal.text()
    assert took < 0.5
    assert "fence: every managed unit is dead" in journal.text()


@needs_loop
def test_a_fence_logs_the_units_that_outlive_the_margin(disk, fake_systemd, tmp_path):
    fake_systemd.ignore_kill()
    service, took, journal = _fence_one_unit(disk, fake_systemd, tmp_path, "stuck.service")
    assert took < 0.6
    assert service.poll() is None
    assert any(p == "critical" and "1 managed units still run" in m and "stuck.service: active" in m
               and "the fence margin is 200 ms" in m for p, m in journal.lines), journal.text()


def test_units_parse_systemctl_show_blocks():
    text = ("Id=a.service\nActiveState=active\nMainPID=12\n\n"
            "Id=b.service\nActiveState=inactive\nMainPID=0\nControlGroup=\n")
    assert units.parse_show(text) == [{"Id": "a.service", "ActiveState": "active", "MainPID": "12"},
                                      {"Id": "b.service", "ActiveState": "inactive", "MainPID": "0",
                                       "ControlGroup": ""}]


# ======================================== defect 9b: the block layer's timeout
def _node(root: Path, devpath: str, devnum: str | None = None, **files: str) -> Path:
    d = root / "devices" / devpath
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        f = d / name.replace("__", "/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text + "\n")
    if devnum is not None:
        link = root / "dev" / "block" / devnum
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(d, link.parent))
    return d


def _slave(dm: Path, target: Path) -> None:
    (dm / "slaves").mkdir(exist_ok=True)
    (dm / "slaves" / target.name).symlink_to(os.path.relpath(target, dm / "slaves"))


def _refusals(findings: list[blockcheck.Finding]) -> list[str]:
    return [f.message for f in findings if f.refuse]


@pytest.fixture
def sysfs(tmp_path) -> Path:
    root = tmp_path / "sys"
    pci = "pci0000:00/0000:00:10.0/host0/target0:0:0/0:0:0:0/block"
    _node(root, f"{pci}/sda", "8:0", device__timeout="30")
    _node(root, f"{pci}/sda/sda1", "8:1", partition="1")
    _node(root, f"{pci}/sda/sda2", "8:2", partition="2")
    _node(root, f"{pci}/sdb", "8:16", device__timeout="5")
    _node(root, f"{pci}/sdc", "8:32", device__timeout="5")
    nvme = "pci0000:00/0000:00:11.0/nvme/nvme0"
    _node(root, f"{nvme}/nvme0n1", "259:0")
    _node(root, f"{nvme}/nvme0n1/nvme0n1p2", "259:2", partition="2")
    _node(root, "virtual/block/loop3", "7:3")
    _node(root, "pci0000:00/0000:00:12.0/virtio2/block/vda", "253:0")
    mp = _node(root, "virtual/block/dm-3", "254:3", dm__name="mpatha", dm__uuid="mpath-3600a0b80")
    _slave(mp, root / "devices" / pci / "sdb")
    _slave(mp, root / "devices" / pci / "sdc")
    lv = _node(root, "virtual/block/dm-0", "254:0", dm__name="vg-lv", dm__uuid="LVM-abc")
    _slave(lv, root / "devices" / pci / "sda" / "sda2")
    params = root / "module" / "nvme_core" / "parameters"
    params.mkdir(parents=True)
    (params / "io_timeout").write_text("30\n")
    return root


MP_QUEUE = ["0 2097152 multipath 1 queue_if_no_path 1 alua 1 1 service-time 0 2 1 8:16 1 8:32 1"]
MP_FAIL = ["0 2097152 multipath 0 1 alua 1 1 service-time 0 2 1 8:16 1 8:32 1"]


def test_scsi_partition_resolves_to_its_disk_and_its_timeout_is_checked(sysfs):
    found = blockcheck.check_devnum(8, 1, 200, label="/dev/sda1", sysfs=str(sysfs))
    [message] = _refusals(found)
    assert "/dev/sda1 (disk sda)" in message and "30000 ms" in message and "200 ms" in message
    assert "/sys/block/sda/device/timeout = 30 s" in message
    assert "whole seconds" in message and "--io-timeout-ms 30000" in message
    assert any("partition sda1 of disk sda" in f.message for f in found)
    assert not _refusals(blockcheck.check_devnum(8, 1, 30_000, sysfs=str(sysfs)))
    [message] = _refusals(blockcheck.check_devnum(8, 1, 10_000, sysfs=str(sysfs)))
    assert "with N at most 10" in message and 'ATTR{device/timeout}="N"' in message


def test_nvme_uses_the_nvme_core_io_timeout(sysfs):
    [message] = _refusals(blockcheck.check_devnum(259, 2, 10_000, label="/dev/nvme0n1p2", sysfs=str(sysfs)))
    assert "disk nvme0n1" in message and "nvme_core/parameters/io_timeout = 30 s" in message
    assert "nvme_core.io_timeout=N" in message
    (sysfs / "module" / "nvme_core" / "parameters" / "io_timeout").write_text("4\n")
    assert not _refusals(blockcheck.check_devnum(259, 2, 10_000, sysfs=str(sysfs)))


def test_multipath_queue_if_no_path_is_refused_and_every_path_is_checked(sysfs):
    [message] = _refusals(blockcheck.check_devnum(254, 3, 10_000, label="/dev/mapper/mpatha", sysfs=str(sysfs),
                                                  table=lambda name: MP_QUEUE if name == "mpatha" else None))
    assert "mpatha (dm-3)" in message and "queue_if_no_path" in message and "no_path_retry fail" in message
    found = blockcheck.check_devnum(254, 3, 10_000, sysfs=str(sysfs), table=lambda name: MP_FAIL)
    assert not _refusals(found)
    assert sum("SCSI disk sd" in f.message for f in found) == 2  # both paths, 5 s each
    (sysfs / "devices/pci0000:00/0000:00:10.0/host0/target0:0:0/0:0:0:0/block/sdc/device/timeout").write_text("30")
    [message] = _refusals(blockcheck.check_devnum(254, 3, 10_000, label="/dev/mapper/mpatha", sysfs=str(sysfs),
                                                  table=lambda name: MP_FAIL))
    assert "path sdc of mpatha" in message and "30000 ms" in message
    unreadable = blockcheck.check_devnum(254, 3, 40_000, sysfs=str(sysfs), table=lambda name: None)
    assert not _refusals(unreadable)
    assert any(f.level == "warning" and "table cannot be read" in f.message for f in unreadable)


def test_dm_on_a_partition_checks_the_partitions_disk(sysfs):
    [message] = _refusals(blockcheck.check_devnum(254, 0, 10_000, sysfs=str(sysfs)))
    assert "path sda2 of vg-lv" in message and "disk sda" in message


def test_loop_unknown_and_missing_devices_are_not_refused(sysfs):
    [loop] = blockcheck.check_devnum(7, 3, 200, sysfs=str(sysfs))
    assert loop.level == "info" and "no block-layer I/O timeout" in loop.message and not loop.refuse
    [vda] = blockcheck.check_devnum(253, 0, 200, sysfs=str(sysfs))
    assert vda.level == "warning" and not vda.refuse
    [missing] = blockcheck.check_devnum(9, 9, 200, sysfs=str(sysfs))
    assert missing.level == "warning" and not missing.refuse


def test_multipath_features_parse():
    assert blockcheck.multipath_features(MP_QUEUE) == ["queue_if_no_path"]
    assert blockcheck.multipath_features(["0 8 multipath 3 queue_if_no_path pg_init_retries 50 0 1 1"]) \
        == ["queue_if_no_path", "pg_init_retries", "50"]
    assert blockcheck.multipath_features(["0 8 linear 8:0 0"]) == []


@needs_loop
def test_the_daemon_refuses_a_disk_whose_block_timeout_outlives_io_timeout(disk, tmp_path, monkeypatch):
    st = os.stat(disk.device)
    root = tmp_path / "sys"
    _node(root, "pci0000:00/host0/block/sdq", f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}",
          device__timeout="30")
    monkeypatch.setattr(blockcheck, "SYSFS", str(root))
    with in_process(disk, tmp_path, "n1", fence_action="exit") as (d, journal):
        assert d.startup() == EXIT_CONFIG
    [error] = [m for p, m in journal.lines if p == "error"]
    assert error.startswith(f"{disk.device}: the block layer may keep an I/O to {disk.device} (disk sdq)")
    assert "30000 ms" in error and "io_timeout of 200 ms" in error and "Fix:" in error


@needs_loop
def test_a_loop_device_is_said_to_have_no_block_timeout(disk, tmp_path):
    with in_process(disk, tmp_path, "n1") as (d, journal):
        assert d.startup() is None, journal.text()
    assert any(p == "info" and "is the loop device loop" in m and "no block-layer I/O timeout" in m
               for p, m in journal.lines), journal.text()


# ============================================================ defect 10: sleep
class FakeClocks:
    def __init__(self) -> None:
        self.boot = 1000.0
        self.mono = 500.0

    def __call__(self) -> tuple[float, float]:
        return self.boot, self.mono

    def run(self, ms: float) -> None:
        self.boot += ms
        self.mono += ms

    def suspend(self, ms: float) -> None:
        self.boot += ms


def test_suspend_detector_with_a_fake_clock_pair():
    clocks = FakeClocks()
    det = SuspendDetector(20.0, clocks)
    assert det.check() is None
    clocks.run(150)
    assert det.check() is None
    clocks.run(100)
    clocks.suspend(15)  # below the threshold: noise
    assert det.check() is None
    clocks.run(10)
    clocks.suspend(5000)
    clocks.run(3)
    assert det.check() == 5000
    assert det.check() is None  # each suspend is reported once
    assert det.total_ms == 5015
    assert suspended_ms((0.0, 0.0), (120.0, 100.0)) == 20.0


def test_real_clocks_show_no_suspend():
    b1, m1 = clock_pair()
    det = SuspendDetector()
    time.sleep(0.05)
    assert det.check() is None
    b2, m2 = clock_pair()
    assert abs(suspended_ms((b1, m1), (b2, m2))) < 5


@needs_loop
def test_a_suspend_fences_the_daemon_at_once(disk, tmp_path):
    offset = [0.0]

    def clocks() -> tuple[float, float]:
        boot, mono = clock_pair()
        return boot + offset[0], mono

    with in_process(disk, tmp_path, "n1") as (d, journal):
        assert d.startup() is None, journal.text()
        d.suspend_clock = clocks
        d._start_protocol()
        wait_for("a heartbeat or two", lambda: d._last_write is not None, 5)
        assert d._fence_reason is None
        offset[0] = 5000.0  # BOOTTIME ran 5 s ahead of MONOTONIC: the host slept
        start = time.monotonic()
        wait_for("the fence on resume", lambda: d._fence_reason, 2, 0.001)
        took = time.monotonic() - start
        assert "the host was suspended for 5000 ms" in d._fence_reason
    assert took < 0.2, f"noticed {took * 1000:.0f} ms after the resume"


def test_locks_counts_entries_by_the_dlms_rule_not_only_the_view(disk, tmp_path):
    """`clusterfw locks` asks the running DLM whether an entry counts: a live
    later incarnation shows as counted under a view that still names the old
    one; with no DLM the view decides."""
    from clusterfw.core.dlm import EntryState, LockEntry, LockMode
    from clusterfw.subsystems.dlm.service import describe_area
    from clusterfw.ondisk import dlm_codec

    class Dlm:
        """The DLM's counting rule (core.counts) stands in for a running DLM."""
        asked: list[tuple[int, int]] = []

        def describe_area(self, area: Any, view: Any) -> list[dict[str, Any]]:
            def counts(node_id: int, incarnation: int) -> bool:
                self.asked.append((node_id, incarnation))
                return (node_id, incarnation) == (2, 0xBEEF)
            return describe_area(area, view, lambda n: f"n{n}", counted=counts)

    with in_process(disk, tmp_path, "n1") as (d, journal):
        assert d.startup() is None, journal.text()
        assert d.disk is not None
        entry = LockEntry(2, 0xBEEF, 1, 3, "mx", EntryState.HELD, LockMode.EXCLUSIVE, 1, 7, 4242)
        offset, data = dlm_codec.entry_bytes(entry, d.disk.cluster_uuid, d.disk.layout)
        with BlockDevice(disk.device) as dev:
            try:
                dev.write(offset, data)
                without = [r for r in d._read_lock_table()["locks"] if r["name"] == "mx"]
                d.dlm = Dlm()  # type: ignore[assignment]
                try:
                    with_dlm = [r for r in d._read_lock_table()["locks"] if r["name"] == "mx"]
                finally:
                    d.dlm = None
            finally:
                dev.write(offset, dlm_codec.entry_bytes(LockEntry(2, 0xBEEF, 2, 3), d.disk.cluster_uuid,
                                                        d.disk.layout)[1])
    assert [r["counts"] for r in without] == [False]  # the view does not name incarnation beef
    assert [r["counts"] for r in with_dlm] == [True]
    assert (2, 0xBEEF) in Dlm.asked
