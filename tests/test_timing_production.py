"""Production timing: ``disk init``'s required choice and what it says, the
profile a daemon derives from the disk, the hardware watchdog's timeout
against the fence margin, ``status``'s failover time, and docs/production.md
checked against ``core.timing.derive``.

The watchdog is faked below the seam of host/watchdog.py (``WatchdogDevice``):
a real watchdog that is not fed resets the host, so none is ever armed here.
The real ``DeviceFile`` is exercised on a regular file and on /dev/null (a
character device that is no watchdog: its ioctls fail)."""
from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_daemon_safety import in_process

from clusterfw.cli.node import format_status
from clusterfw.core import timing
from clusterfw.exitcodes import EXIT_CONFIG, EXIT_USAGE
from clusterfw.host import watchdog as wd_mod
from clusterfw.host.watchdog import Watchdog, timeout_problem
from clusterfw.node.daemon import StartupError, choose_profile
from clusterfw.node.status import from_disk
from clusterfw.ondisk.admin import add_node, format_disk
from clusterfw.ondisk.blockdev import BlockDevice
from clusterfw.ondisk.clusterdisk import ClusterDisk
from clusterfw.ondisk.layout import MIB

REPO = Path(__file__).resolve().parents[1]
LAB_T = timing.derive(timing.LAB)
SAN_T = timing.derive(timing.SAN)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "CLUSTERFW_SOCKET")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "clusterfw", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=60, stdin=subprocess.DEVNULL)


def make_disk(path: Path, heartbeat_ms: int, io_timeout_ms: int, nodes: tuple[str, ...] = ("a",)) -> str:
    with open(path, "wb") as f:
        f.truncate(16 * MIB)
    with BlockDevice(str(path)) as dev:
        format_disk(dev, "t", 8, heartbeat_ms, io_timeout_ms)
        disk = ClusterDisk.open(dev)
        for name in nodes:
            add_node(disk, name)
    return str(path)


# ------------------------------------------------------------------ core.timing
def test_the_disk_profile_is_derived_from_the_io_timeout():
    assert timing.disk_profile(100, 200) == ("lab", timing.LAB)
    assert timing.disk_profile(1000, 10_000) == ("san", timing.SAN)
    name, profile = timing.disk_profile(50, timing.SAN_IO_TIMEOUT_MIN_MS)
    assert name == "san" and profile.fence_margin_ms == timing.SAN.fence_margin_ms
    assert (profile.heartbeat_interval_ms, profile.io_timeout_ms) == (50, timing.SAN_IO_TIMEOUT_MIN_MS)
    assert timing.disk_profile(50, timing.SAN_IO_TIMEOUT_MIN_MS - 1)[0] == "lab"
    # disk init's profiles land on their own side
    for name, shipped in timing.PROFILES_BY_NAME.items():
        assert timing.disk_profile(shipped.heartbeat_interval_ms, shipped.io_timeout_ms) == (name, shipped)


def test_failover_is_dead_after_plus_two_heartbeats_and_the_summary_carries_it():
    for name, profile in timing.PROFILES_BY_NAME.items():
        t = timing.derive(profile)
        assert timing.failover_ms(t) == t.dead_after_ms + 2 * t.heartbeat_interval_ms
        summary = timing.summary(name, profile)
        assert summary["profile"] == name and summary["failover_ms"] == timing.failover_ms(t)
        assert summary["dead_after_ms"] == t.dead_after_ms and summary["fence_margin_ms"] == profile.fence_margin_ms


def test_watchdog_bound_is_the_fence_margin_in_whole_seconds():
    assert timing.watchdog_timeout_max_s(timing.SAN.fence_margin_ms) == timing.SAN.fence_margin_ms // 1000 == 10
    assert timing.watchdog_timeout_max_s(timing.LAB.fence_margin_ms) == 0  # 200 ms: no whole second fits
    assert timing.watchdog_timeout_max_s(1999) == 1


# ------------------------------------------------------------------ the pure watchdog decision
def test_timeout_problem_accepts_a_timeout_within_the_bound_only():
    assert timeout_problem("/dev/watchdog", 10, 10, 10_000) is None
    assert timeout_problem("/dev/watchdog", 3, 10, 10_000) is None
    too_long = timeout_problem("/dev/watchdog", 60, 10, 10_000, asked_s=10, set_error="EINVAL: Invalid argument")
    assert too_long is not None
    for needle in ("/dev/watchdog", "timeout is 60 s", "at most 10 s", "fence margin (10000 ms)",
                   "setting it to 10 s failed (EINVAL", "Fix:", "soft_margin=10"):
        assert needle in too_long, (needle, too_long)
    kept = timeout_problem("/dev/watchdog1", 30, 10, 10_000, asked_s=10)
    assert kept is not None and "the driver kept 30 s" in kept and "/dev/watchdog1" in kept
    unknown = timeout_problem("/dev/null", None, 10, 10_000, asked_s=10, get_error="ENOTTY: not a tty")
    assert unknown is not None and "cannot be read" in unknown and "ENOTTY" in unknown
    lab = timeout_problem("/dev/watchdog", 1, 0, 200)
    assert lab is not None and "200 ms" in lab and "--profile san" in lab and "without --watchdog" in lab


class FakeWatchdogDevice:
    """Below host/watchdog.py's seam: a driver with a timeout that may or may
    not be settable.  Nothing here touches a real watchdog."""

    def __init__(self, path: str, timeout_s: int, settable: bool, keeps: int | None = None) -> None:
        self.path = path
        self.stand_in = False
        self.timeout_s = timeout_s
        self.settable = settable
        self.keeps = keeps  # a driver that answers a set but keeps this timeout
        self.asked: list[int] = []
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_timeout(self) -> int:
        return self.timeout_s

    def set_timeout(self, seconds: int) -> int:
        self.asked.append(seconds)
        if not self.settable:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        self.timeout_s = seconds if self.keeps is None else self.keeps
        return self.timeout_s

    def close(self) -> None:
        self.closed = True


def test_apply_timeout_sets_the_bound_where_the_driver_lets_it():
    fake = FakeWatchdogDevice("/dev/watchdog", 60, settable=True)
    wd = Watchdog("/dev/watchdog", lambda *_: None, opener=lambda path: fake)
    assert wd.apply_timeout(10, 10_000) is None
    assert fake.asked == [10] and fake.timeout_s == 10 and wd.timeout_s == 10


def test_apply_timeout_refuses_a_driver_that_cannot_be_set_or_keeps_its_own():
    fixed = FakeWatchdogDevice("/dev/watchdog", 60, settable=False)
    wd = Watchdog("/dev/watchdog", lambda *_: None, opener=lambda path: fixed)
    problem = wd.apply_timeout(10, 10_000)
    assert problem is not None and "timeout is 60 s" in problem and "Operation not supported" in problem
    rounding = FakeWatchdogDevice("/dev/watchdog", 60, settable=True, keeps=16)
    wd = Watchdog("/dev/watchdog", lambda *_: None, opener=lambda path: rounding)
    problem = wd.apply_timeout(10, 10_000)
    assert problem is not None and "kept 16 s" in problem


def test_the_ioctl_numbers_are_the_kernels():
    def iowr(direction: int, nr: int) -> int:  # linux/ioctl.h: dir << 30 | size << 16 | type << 8 | nr
        return direction << 30 | 4 << 16 | ord("W") << 8 | nr
    assert wd_mod.WDIOC_SETTIMEOUT == iowr(3, 6) == 0xC0045706
    assert wd_mod.WDIOC_GETTIMEOUT == iowr(2, 7) == 0x80045707


def test_the_real_device_file_on_a_file_and_on_a_character_device_that_is_no_watchdog(tmp_path):
    stand_in = tmp_path / "watchdog"
    stand_in.write_bytes(b"")
    wd = Watchdog(str(stand_in), lambda *_: None)
    assert wd.stand_in and wd.apply_timeout(10, 10_000) is None  # a file has no timeout to check
    wd.close_gracefully()
    null = Watchdog("/dev/null", lambda *_: None)  # WDIOC_* on /dev/null: ENOTTY
    problem = null.apply_timeout(10, 10_000)
    null.close_gracefully()
    assert not null.stand_in and problem is not None and "cannot be read" in problem and "ENOTTY" in problem


# ------------------------------------------------------------------ the daemon's decisions
def test_choose_profile_derives_from_the_disk_and_refuses_a_contradiction():
    assert choose_profile("auto", "/d", 100, 200) == ("lab", timing.LAB)
    assert choose_profile("san", "/d", 1000, 10_000) == ("san", timing.SAN)
    with pytest.raises(StartupError) as info:
        choose_profile("lab", "/dev/sdb", 1000, 10_000)
    assert info.value.exit_code == EXIT_CONFIG
    for needle in ("--profile lab contradicts the disk /dev/sdb", "10000 ms", "'san' disk",
                   "disk init --profile lab"):
        assert needle in str(info.value), (needle, str(info.value))


class OnFile:
    """in_process's cluster: a disk file (no loop device needed)."""

    def __init__(self, device: str) -> None:
        self.device = device


def _daemon(tmp_path: Path, disk: str, watchdog: str | None) -> Any:
    return in_process(OnFile(disk), tmp_path, "a", watchdog=watchdog)  # type: ignore[arg-type]


def test_daemon_refuses_a_watchdog_whose_timeout_exceeds_the_margin_and_cannot_be_set(tmp_path):
    disk = make_disk(tmp_path / "san.img", timing.SAN.heartbeat_interval_ms, timing.SAN.io_timeout_ms)
    path = str(tmp_path / "watchdog")
    Path(path).write_bytes(b"")  # startup's access check; every ioctl goes to the fake
    fake = FakeWatchdogDevice(path, 60, settable=False)
    with _daemon(tmp_path, disk, path) as (d, _journal):
        d.watchdog_opener = lambda p: fake
        assert d.startup() is None and d.profile_name == "san"
        d._start_protocol()
        assert d._done.is_set() and d._exit_code == EXIT_CONFIG
        for needle in (path, "timeout is 60 s", "at most 10 s", "fence margin (10000 ms)", "Fix:"):
            assert needle in d._exit_reason, (needle, d._exit_reason)
        assert d.core is None and not d._threads  # no heartbeat, no I/O thread
        assert fake.asked == [10] and fake.writes == [b"V"] and fake.closed  # disarmed by the magic close


def test_daemon_sets_a_settable_watchdog_to_the_margin(tmp_path):
    disk = make_disk(tmp_path / "san.img", timing.SAN.heartbeat_interval_ms, timing.SAN.io_timeout_ms)
    path = str(tmp_path / "watchdog")
    Path(path).write_bytes(b"")
    fake = FakeWatchdogDevice(path, 60, settable=True)
    with _daemon(tmp_path, disk, path) as (d, journal):
        d.watchdog_opener = lambda p: fake
        assert d.startup() is None
        d.watchdog = d._open_watchdog()
        assert fake.asked == [timing.watchdog_timeout_max_s(timing.SAN.fence_margin_ms)] == [10]
        assert d.watchdog.timeout_s == 10 and not fake.closed
        assert "timeout 10 s" in journal.text()
        assert d.status()["cluster_timing"] == timing.summary("san", timing.SAN)


def test_daemon_on_a_lab_disk_refuses_a_watchdog_device_before_opening_it(tmp_path):
    disk = make_disk(tmp_path / "lab.img", timing.LAB.heartbeat_interval_ms, timing.LAB.io_timeout_ms)

    def never(path: str) -> FakeWatchdogDevice:
        raise AssertionError("opened")
    # /dev/null is a character device: taken for a watchdog, and never opened
    with _daemon(tmp_path, disk, "/dev/null") as (d, journal):
        d.watchdog_opener = never
        assert d.startup() == EXIT_CONFIG
        assert "--watchdog /dev/null" in journal.text() and "200 ms" in journal.text()
        assert "--profile san" in journal.text()


# ------------------------------------------------------------------ disk init and status
def test_disk_init_states_the_profile_and_its_failover_time(tmp_path):
    image = tmp_path / "d.img"
    with open(image, "wb") as f:
        f.truncate(16 * MIB)
    out = cli("disk", "init", str(image), "--cluster", "t", "--profile", "lab")
    assert out.returncode == 0, out.stderr
    assert (f"profile lab; fence after {LAB_T.fence_after_ms} ms, dead after {LAB_T.dead_after_ms} ms: a crashed "
            f"node's services restart elsewhere after about {timing.ms_text(timing.failover_ms(LAB_T))}") in out.stdout
    js = cli("disk", "init", str(image), "--cluster", "t", "--profile", "san", "--force", "--json")
    assert js.returncode == 0, js.stderr
    doc = json.loads(js.stdout)
    assert doc["timing"] == timing.summary("san", timing.SAN) and doc["cluster"] == "t"
    with BlockDevice(str(image), readonly=True) as dev:
        sb = ClusterDisk.open(dev).superblock
        assert sb is not None and (sb.heartbeat_interval_ms, sb.io_timeout_ms) == (1000, 10_000)
    custom = cli("disk", "init", str(image), "--cluster", "t", "--heartbeat-ms", "50", "--io-timeout-ms", "2000",
                 "--force", "--json")
    assert custom.returncode == 0, custom.stderr
    name, profile = timing.disk_profile(50, 2000)
    assert json.loads(custom.stdout)["timing"] == timing.summary(name, profile) and name == "san"
    missing = cli("disk", "init", str(image), "--cluster", "t", "--force")
    assert missing.returncode == EXIT_USAGE and "choose a timing" in missing.stderr


def test_status_from_the_disk_shows_dead_after_and_the_failover_time(tmp_path):
    disk = make_disk(tmp_path / "d.img", timing.SAN.heartbeat_interval_ms, timing.SAN.io_timeout_ms)
    with BlockDevice(disk, readonly=True) as dev:
        status = from_disk(ClusterDisk.open(dev))
    assert status["cluster_timing"] == timing.summary("san", timing.SAN)
    text = format_status(status)
    assert (f"timing: profile san (heartbeat 1000 ms, io timeout 10000 ms), dead after {SAN_T.dead_after_ms} ms: "
            f"a crashed node's services restart elsewhere after about "
            f"{timing.ms_text(timing.failover_ms(SAN_T))}") in text
    js = cli("status", "--disk", disk, "--socket", str(tmp_path / "none.sock"), "--json")
    assert js.returncode == 0, js.stderr
    assert json.loads(js.stdout)["cluster_timing"]["failover_ms"] == timing.failover_ms(SAN_T)
    human = cli("status", "--disk", disk, "--socket", str(tmp_path / "none.sock"))
    assert f"dead after {SAN_T.dead_after_ms} ms" in human.stdout, human.stdout + human.stderr


# ------------------------------------------------------------------ docs/production.md
def _table(text: str, header: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _ms(cell: str) -> int:
    match = re.fullmatch(r"(\d+) ms", cell)
    assert match, cell
    return int(match.group(1))


def test_the_production_doc_matches_derive():
    doc = (REPO / "docs" / "production.md").read_text()
    rows = _table(doc, "| profile | heartbeat |")
    assert [row[0] for row in rows] == list(timing.PROFILES_BY_NAME)
    for name, hb, io, margin, fence_after, dead_after, failover in rows:
        profile = timing.PROFILES_BY_NAME[name]
        t = timing.derive(profile)
        assert [_ms(c) for c in (hb, io, margin, fence_after, dead_after, failover)] == [
            t.heartbeat_interval_ms, t.io_timeout_ms, profile.fence_margin_ms, t.fence_after_ms, t.dead_after_ms,
            timing.failover_ms(t)], name
    wd_rows = _table(doc, "| profile | fence margin | longest watchdog timeout |")
    assert [row[0] for row in wd_rows] == list(timing.PROFILES_BY_NAME)
    for name, margin, longest in wd_rows:
        profile = timing.PROFILES_BY_NAME[name]
        max_s = timing.watchdog_timeout_max_s(profile.fence_margin_ms)
        assert _ms(margin) == profile.fence_margin_ms
        assert longest == (f"{max_s} s" if max_s else "none"), name
    assert f"`fence_after - io_timeout` ({LAB_T.fence_after_ms - LAB_T.io_timeout_ms} ms)" in doc
    assert f"({(SAN_T.fence_after_ms - SAN_T.io_timeout_ms) // 1000} s with san)" in doc
    assert f"from {timing.SAN_IO_TIMEOUT_MIN_MS} ms on" in doc
