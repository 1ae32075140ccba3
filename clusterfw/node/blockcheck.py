"""Does the block layer bound every I/O to the shared disk by io_timeout?

How this works
--------------
The timing rule (core/timing.py) assumes that an I/O the daemon gave up on
never lands later: every I/O completes or fails within ``io_timeout``.  The
daemon's own per-I/O timeout only stops *waiting*; the request stays in the
kernel until the block layer's own timeout (or a multipath map's queueing)
ends it.  If that is longer than ``io_timeout``, a heartbeat the daemon
abandoned could land after the other nodes declared the node dead.

``check_device(path, io_timeout_ms)`` finds the disk behind ``path``
(``/sys/dev/block/MAJ:MIN``; a partition is resolved to its parent disk) and
reads its bound:

* SCSI (``sd*`` and anything with ``device/timeout``):
  ``/sys/block/DISK/device/timeout``, in seconds;
* NVMe: ``/sys/module/nvme_core/parameters/io_timeout``, in seconds;
* device-mapper (``dm-*``): every device under ``slaves/`` is checked the
  same way; a multipath map (``dm/uuid`` starting with ``mpath-``) whose
  table has the feature ``queue_if_no_path`` queues I/O while no path is
  left, for ever or for ``no_path_retry`` polling intervals, so it is
  refused.  The table comes from ``dmsetup table NAME`` (sysfs does not
  show it); when it cannot be read that is said, not refused;
* loop devices have no block-layer timeout at all (the I/O goes to the
  backing file): said in an info line, not refused;
* anything else (virtio-blk, md, ...): a warning that no bound is known.

The result is a list of ``Finding``; one with ``refuse=True`` makes the
daemon exit 78 (EX_CONFIG) with its message, which names the device, the
block layer's number, the configured io_timeout and the fix.  Every function
takes the sysfs root, so tests point it at a temporary tree.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from typing import Callable

SYSFS = "/sys"
DMSETUP_TIMEOUT_S = 5.0
SLAVE_DEPTH_MAX = 8  # dm on dm on ... (LVM on multipath on partitions)


@dataclass(frozen=True)
class Finding:
    level: str  # "debug", "info", "warning" or "error"
    message: str
    refuse: bool = False


DmTable = Callable[[str], "list[str] | None"]


def dmsetup_table(name: str) -> list[str] | None:
    """The table lines of device-mapper device ``name`` (None: unreadable)."""
    dmsetup = shutil.which("dmsetup")
    if dmsetup is None:
        return None
    try:
        out = subprocess.run([dmsetup, "table", "--", name], capture_output=True, text=True,
                             timeout=DMSETUP_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [line for line in out.stdout.splitlines() if line.strip()]


def multipath_features(table: list[str]) -> list[str]:
    """The feature words of every ``multipath`` target in a dm table
    (``START LEN multipath NFEAT FEAT... NHW ...``)."""
    features: list[str] = []
    for line in table:
        words = line.split()
        if len(words) < 4 or words[2] != "multipath":
            continue
        try:
            count = int(words[3])
        except ValueError:
            continue
        features.extend(words[4:4 + count])
    return features


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(4096).strip()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def disk_dir(sysfs: str, node_dir: str) -> str:
    """The sysfs directory of the whole disk of ``node_dir`` (a partition's
    parent, or ``node_dir`` itself)."""
    if os.path.exists(os.path.join(node_dir, "partition")):
        return os.path.dirname(node_dir)
    return node_dir


def resolve(sysfs: str, major: int, minor: int) -> str | None:
    """The sysfs directory of block device MAJ:MIN, or None."""
    link = os.path.join(sysfs, "dev", "block", f"{major}:{minor}")
    if not os.path.exists(link):
        return None
    return os.path.realpath(link)


def _too_long(label: str, name: str, bound_ms: int, where: str, io_timeout_ms: int, fix: str) -> Finding:
    return Finding("error", (
        f"the block layer may keep an I/O to {label} (disk {name}) in flight for up to {bound_ms} ms "
        f"({where}), longer than the cluster's io_timeout of {io_timeout_ms} ms: an I/O this daemon gave "
        f"up on could still land after the other nodes declared this node dead. Fix: {fix}"), refuse=True)


def _seconds_fix(io_timeout_ms: int, seconds: int, how: str) -> str:
    """The fix for a block-layer timeout of whole ``seconds`` above io_timeout."""
    larger = (f"give the cluster an io_timeout of at least {seconds * 1000} ms ('clusterfw disk init ... "
              f"--heartbeat-ms MS --io-timeout-ms {seconds * 1000}')")
    if io_timeout_ms < 1000:
        return f"this timeout is whole seconds (at least 1 s), so {larger}"
    return f"{how} with N at most {io_timeout_ms // 1000}, or {larger}"


def _check_disk(sysfs: str, ddir: str, label: str, io_timeout_ms: int, table: DmTable, depth: int,
                out: list[Finding]) -> None:
    name = os.path.basename(ddir)
    if depth > SLAVE_DEPTH_MAX:
        out.append(Finding("warning", f"{label}: device stack deeper than {SLAVE_DEPTH_MAX} levels at {name}: "
                                      f"not checked further"))
        return
    if name.startswith("loop"):
        out.append(Finding("info", f"{label} is the loop device {name}: it has no block-layer I/O timeout "
                                   f"(its I/O goes to the backing file); nothing to check against io_timeout "
                                   f"{io_timeout_ms} ms"))
        return
    if os.path.isdir(os.path.join(ddir, "dm")):
        dm_name = _read(os.path.join(ddir, "dm", "name")) or name
        uuid = _read(os.path.join(ddir, "dm", "uuid")) or ""
        if uuid.startswith("mpath-"):
            lines = table(dm_name)
            if lines is None:
                out.append(Finding("warning", (
                    f"{label} is the multipath map {dm_name} ({name}): its table cannot be read (dmsetup "
                    f"table {dm_name}); make sure it does not queue I/O when all paths fail "
                    f"(multipath.conf: no_path_retry fail), or an I/O could outlive io_timeout "
                    f"{io_timeout_ms} ms")))
            elif "queue_if_no_path" in multipath_features(lines):
                out.append(Finding("error", (
                    f"the multipath map {dm_name} ({name}) behind {label} queues I/O while no path is left "
                    f"(feature queue_if_no_path: no_path_retry is 'queue' or a count of polling intervals), "
                    f"so an I/O can stay in flight far longer than the cluster's io_timeout of "
                    f"{io_timeout_ms} ms and land after the other nodes declared this node dead. Fix: set "
                    f"'no_path_retry fail' for this map in /etc/multipath.conf and reload multipathd "
                    f"(multipathd reconfigure); check with 'dmsetup table {dm_name}'"), refuse=True))
            else:
                out.append(Finding("info", f"{label} is the multipath map {dm_name} ({name}): it does not "
                                           f"queue I/O without a path (no queue_if_no_path)"))
        slaves_dir = os.path.join(ddir, "slaves")
        try:
            slaves = sorted(os.listdir(slaves_dir))
        except OSError:
            slaves = []
        if not slaves:
            out.append(Finding("warning", f"{label} is the device-mapper device {dm_name} ({name}) with no "
                                          f"device under it in sysfs: its I/O timeout is not known"))
        for slave in slaves:
            sdir = disk_dir(sysfs, os.path.realpath(os.path.join(slaves_dir, slave)))
            _check_disk(sysfs, sdir, f"{label} (path {slave} of {dm_name})", io_timeout_ms, table, depth + 1, out)
        return
    if name.startswith("nvme"):
        param = os.path.join(sysfs, "module", "nvme_core", "parameters", "io_timeout")
        seconds = _read_int(param)
        if seconds is None:
            out.append(Finding("warning", f"{label} is the NVMe disk {name} but {param} cannot be read: its "
                                          f"I/O timeout is not known"))
        elif seconds * 1000 > io_timeout_ms:
            out.append(_too_long(label, name, seconds * 1000, f"NVMe: {param} = {seconds} s", io_timeout_ms,
                                 _seconds_fix(io_timeout_ms, seconds,
                                              "set the NVMe I/O timeout to N (nvme_core.io_timeout=N on the "
                                              "kernel command line, or 'options nvme_core io_timeout=N' in "
                                              "/etc/modprobe.d/)")))
        else:
            out.append(Finding("info", f"{label}: NVMe disk {name}, block-layer I/O timeout {seconds} s "
                                       f"({param}) within io_timeout {io_timeout_ms} ms"))
        return
    timeout_file = os.path.join(ddir, "device", "timeout")
    seconds = _read_int(timeout_file)
    if seconds is not None:
        shown = f"/sys/block/{name}/device/timeout"
        if seconds * 1000 > io_timeout_ms:
            out.append(_too_long(label, name, seconds * 1000, f"SCSI: {shown} = {seconds} s", io_timeout_ms,
                                 _seconds_fix(io_timeout_ms, seconds,
                                              f"set it to N (echo N > {shown}, kept across reboots by a udev "
                                              f"rule: ACTION==\"add|change\", KERNEL==\"{name}\", "
                                              f"ATTR{{device/timeout}}=\"N\")")))
        else:
            out.append(Finding("info", f"{label}: SCSI disk {name}, block-layer I/O timeout {seconds} s "
                                       f"({shown}) within io_timeout {io_timeout_ms} ms"))
        return
    out.append(Finding("warning", (
        f"{label} is the disk {name}, whose driver has no block-layer I/O timeout this daemon knows how to "
        f"read: the timing rule assumes every I/O completes or fails within io_timeout {io_timeout_ms} ms; "
        f"make sure the storage path guarantees that")))


def check_devnum(major: int, minor: int, io_timeout_ms: int, *, label: str | None = None,
                 sysfs: str | None = None, table: DmTable = dmsetup_table) -> list[Finding]:
    """What the block layer says about device MAJ:MIN (see the module text)."""
    root = sysfs or SYSFS
    label = label or f"device {major}:{minor}"
    node_dir = resolve(root, major, minor)
    if node_dir is None:
        return [Finding("warning", f"{label} ({major}:{minor}) is not in {root}/dev/block: its block-layer "
                                   f"I/O timeout cannot be checked")]
    out: list[Finding] = []
    ddir = disk_dir(root, node_dir)
    if ddir != node_dir:
        out.append(Finding("debug", f"{label} is partition {os.path.basename(node_dir)} of disk "
                                    f"{os.path.basename(ddir)}"))
    _check_disk(root, ddir, label, io_timeout_ms, table, 0, out)
    return out


def check_device(path: str, io_timeout_ms: int, *, sysfs: str | None = None,
                 table: DmTable = dmsetup_table) -> list[Finding]:
    """What the block layer says about the device at ``path``."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return [Finding("warning", f"cannot stat {path} ({exc.strerror}): its block-layer I/O timeout is not "
                                   f"checked")]
    if not stat.S_ISBLK(st.st_mode):
        return [Finding("info", f"{path} is not a block device: no block-layer I/O timeout to check")]
    return check_devnum(os.major(st.st_rdev), os.minor(st.st_rdev), io_timeout_ms, label=path, sysfs=sysfs,
                        table=table)
