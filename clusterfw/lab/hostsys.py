"""Small host-side helpers for the lab: commands, processes, cgroups, mounts.

How this works
--------------
Everything the lab does to the host goes through these helpers so that the
rules hold everywhere:

* commands run as argv lists (never a shell string), always with a timeout;
* a process is identified by (pid, start time), so a recycled PID is never
  signalled: we only end processes we started and recorded;
* a node's cgroup is one directory per hierarchy (``name=systemd`` v1 and the
  v2 ``unified`` tree on a hybrid host, or the root of a pure v2 host); its
  processes are listed recursively, frozen through ``cgroup.freeze`` (v2) and
  killed through ``cgroup.kill`` (v2, with a per-PID SIGKILL fallback);
* missing host tools are reported with the Debian package that provides them
  and the apt command that installs it.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")

# tool -> Debian package that ships it
HOST_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "zstd": "zstd",
    "tar": "tar",
    "fusermount3": "fuse3",
    "losetup": "util-linux",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "ip": "iproute2",
    "chroot": "coreutils",
}


class LabError(Exception):
    """An error to report to the user; ``exit_code`` follows the CLI's codes."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def log(msg: str) -> None:
    """Progress output: always stderr, so stdout stays machine-readable."""
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def require_tools(names: list[str]) -> None:
    """Fail with one message naming every missing tool and the apt fix."""
    missing = [n for n in names if shutil.which(n) is None]
    if not missing:
        return
    pkgs = sorted({HOST_TOOLS.get(n, n) for n in missing})
    raise LabError(
        f"missing host tools: {', '.join(missing)}; install them with: "
        f"apt-get install -y {' '.join(pkgs)}",
        exit_code=2,
    )


COMMON_TOOLS = ["losetup", "nsenter", "unshare", "ip", "mount", "umount", "fusermount3"]
NSPAWN_TOOLS = ["systemd-nspawn", "tar", "zstd"]


def missing_prerequisites(mode: str) -> str | None:
    """Why a lab of this mode cannot run here (with the fix), or None."""
    if os.geteuid() != 0:
        return "clusterfw lab needs root (loop devices, namespaces, mounts)"
    tools = COMMON_TOOLS + (NSPAWN_TOOLS if mode == "nspawn" else [])
    try:
        require_tools(tools)
    except LabError as exc:
        return str(exc)
    for dev, what in (("/dev/fuse", "the fuse kernel module"),
                      ("/dev/loop-control", "the loop kernel module")):
        if not os.path.exists(dev):
            return f"{dev} is missing: this host needs {what}"
    try:
        import mfusepy  # noqa: F401
    except ImportError:
        return "the lab's FUSE disk needs the Python package mfusepy: pip install mfusepy"
    except OSError as exc:  # libfuse not found
        return f"mfusepy cannot load libfuse ({exc}): apt-get install -y fuse3"
    return None


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("clusterfw lab needs root (loop devices, namespaces, mounts)", 2)


def run(argv: list[str], *, timeout: float = 60, check: bool = True,
        capture: bool = True, env: dict | None = None,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run argv with a timeout; raise LabError (with its stderr) on failure."""
    try:
        cp = subprocess.run(
            argv, timeout=timeout, env=env, input=input, text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {argv[0]} ({exc})", 2) from None
    except subprocess.TimeoutExpired:
        raise LabError(f"timed out after {timeout:g}s: {' '.join(argv)}") from None
    if check and cp.returncode != 0:
        err = (cp.stderr or "").strip() if capture else ""
        raise LabError(f"command failed ({cp.returncode}): {' '.join(argv)}"
                       + (f": {err}" if err else ""))
    return cp


# --------------------------------------------------------------------------
# processes

def proc_start_time(pid: int) -> int | None:
    """Start time of pid in clock ticks since boot (field 22), None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    rest = data[data.rindex(")") + 2:].split()
    return int(rest[19])


def proc_state(pid: int) -> str | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(")") + 2:].split()[0]


@dataclass(frozen=True)
class ProcRef:
    """A process we started: PID plus start time, safe against PID reuse."""
    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> "ProcRef | None":
        st = proc_start_time(pid)
        return None if st is None else cls(pid, st)

    @classmethod
    def from_json(cls, obj) -> "ProcRef | None":
        if not obj:
            return None
        return cls(int(obj["pid"]), int(obj["start"]))

    def to_json(self) -> dict:
        return {"pid": self.pid, "start": self.start}

    def alive(self) -> bool:
        """True while the very process we recorded exists (zombies count as gone)."""
        st = proc_start_time(self.pid)
        return st == self.start and proc_state(self.pid) not in (None, "Z", "X")

    def signal(self, sig: int) -> bool:
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
            return True
        except ProcessLookupError:
            return False

    def wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reap(self.pid)
            if not self.alive():
                return True
            time.sleep(0.05)
        reap(self.pid)
        return not self.alive()


def reap(pid: int) -> None:
    """Collect pid if it is our own child (no-op otherwise)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            txt = Path(f"/proc/{pid}/task/{tid}/children").read_text()
            out.extend(int(x) for x in txt.split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def terminate(ref: ProcRef | None, *, grace: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """Send sig, wait up to grace seconds, then SIGKILL and wait again."""
    if ref is None or not ref.alive():
        return
    ref.signal(sig)
    if not ref.wait_gone(grace):
        ref.signal(signal.SIGKILL)
        ref.wait_gone(5.0)


# --------------------------------------------------------------------------
# cgroups

def cgroup_hierarchies() -> dict[str, Path]:
    """The hierarchies a node gets a cgroup in.

    ``unified`` is always the v2 tree (freeze/kill/listing); ``systemd`` is the
    ``name=systemd`` v1 tree on a hybrid host (nspawn needs both)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():  # pure v2
        return {"unified": CGROUP_ROOT}
    out = {}
    if (CGROUP_ROOT / "unified" / "cgroup.controllers").exists():
        out["unified"] = CGROUP_ROOT / "unified"
    if (CGROUP_ROOT / "systemd" / "cgroup.procs").exists():
        out["systemd"] = CGROUP_ROOT / "systemd"
    if "unified" not in out:
        raise LabError("no cgroup v2 hierarchy found under /sys/fs/cgroup "
                       "(need cgroup.freeze / cgroup.kill)", 2)
    return out


def cgroup_paths(name: str) -> dict[str, Path]:
    return {h: root / name for h, root in cgroup_hierarchies().items()}


def cgroup_create(name: str) -> None:
    for p in cgroup_paths(name).values():
        p.mkdir(exist_ok=True)


def cgroup_enter(name: str, pid: int = 0) -> None:
    """Move pid (0 = the caller) into cgroup name in every hierarchy."""
    for p in cgroup_paths(name).values():
        p.mkdir(exist_ok=True)
        (p / "cgroup.procs").write_text(f"{pid or os.getpid()}\n")


def cgroup_pids(name: str) -> list[int]:
    """All PIDs in the node's v2 cgroup subtree."""
    root = cgroup_hierarchies()["unified"] / name
    pids: set[int] = set()
    if not root.is_dir():
        return []
    for dirpath, _dirs, _files in os.walk(root):
        try:
            txt = Path(dirpath, "cgroup.procs").read_text()
        except (FileNotFoundError, OSError):
            continue
        pids.update(int(x) for x in txt.split())
    return sorted(pids)


def cgroup_freeze(name: str, frozen: bool) -> None:
    p = cgroup_hierarchies()["unified"] / name / "cgroup.freeze"
    p.write_text("1\n" if frozen else "0\n")


def cgroup_frozen(name: str) -> bool:
    p = cgroup_hierarchies()["unified"] / name / "cgroup.events"
    try:
        for line in p.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == "frozen":
                return v.strip() == "1"
    except FileNotFoundError:
        pass
    return False


def cgroup_freeze_requested(name: str) -> bool:
    p = cgroup_hierarchies()["unified"] / name / "cgroup.freeze"
    try:
        return p.read_text().strip() == "1"
    except FileNotFoundError:
        return False


def cgroup_kill(name: str, timeout: float = 5.0) -> list[int]:
    """SIGKILL everything in the node's cgroup; return PIDs still present."""
    root = cgroup_hierarchies()["unified"] / name
    if not root.is_dir():
        return []
    deadline = time.monotonic() + timeout
    while True:
        pids = cgroup_pids(name)
        if not pids:
            return []
        kill_file = root / "cgroup.kill"
        if kill_file.exists():
            try:
                kill_file.write_text("1\n")
            except OSError:
                pass
        for pid in pids:  # fallback / belt and braces: these are in OUR cgroup
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            reap(pid)
        if time.monotonic() > deadline:
            return cgroup_pids(name)
        time.sleep(0.05)


def cgroup_remove(name: str) -> list[str]:
    """rmdir the node's cgroups depth-first; return paths that stayed."""
    left = []
    for p in cgroup_paths(name).values():
        if not p.exists():
            continue
        for dirpath, dirs, _files in sorted(os.walk(p, topdown=False),
                                            key=lambda t: -len(t[0])):
            for _ in range(20):
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        break
                    time.sleep(0.05)
        if p.exists():
            left.append(str(p))
    return left


# --------------------------------------------------------------------------
# mounts

def mountinfo() -> list[tuple[str, str]]:
    """(mount point, fs type) for every mount of this mount namespace."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        mp = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        out.append((mp, right.split()[0]))
    return out


def is_mounted(path: str | Path) -> bool:
    p = str(path)
    return any(mp == p for mp, _ in mountinfo())


def wait_for(pred, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


TMPFS_MAGIC = 0x01021994  # statfs(2) f_type of a tmpfs (linux/magic.h)


def fs_type(path: str | Path) -> int:
    """statfs(2) ``f_type`` of the filesystem holding ``path``."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type (a C long) comes first
    if libc.statfs(str(path).encode(), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def is_tmpfs(path: str | Path) -> bool:
    """Whether ``path`` -- or, while it does not exist yet, its nearest
    existing parent -- is on a tmpfs."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return fs_type(p) == TMPFS_MAGIC
    except OSError:
        return False
