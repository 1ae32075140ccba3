"""`clusterfw lab`: N nodes on one machine sharing one real disk.

How this works
--------------
A lab lives in a directory DIR (default ``/var/lib/clusterfw-lab``):

    DIR/lab.json        the state file: every resource, recorded BEFORE it is made
    DIR/lab.lock        flock taken by every command that changes the lab
    IMAGE/disk.img      the shared disk image (sparse), on a tmpfs: IMAGE is DIR
                        when DIR is on a tmpfs, else /dev/shm/clusterfw-lab-<hash>
                        (``--image-dir`` chooses another; not a tmpfs: a warning)
    DIR/shared/         seen by every node at /lab/shared
    DIR/hosts           /etc/hosts of the nodes (n1..nN -> 198.18.0.k)
    DIR/app/<sha>/      nspawn mode: the project wheel, unpacked
    DIR/units/          nspawn mode: the repository's unit files
    DIR/fuse/nK/disk    node K's view of disk.img (FUSE, see fusedisk.py)
    DIR/run/nK-disk.sock  control socket of that view
    DIR/nodes/nK/       logs, node.conf, process-mode ready file

Per node ``nK`` (K = 1..N) the lab makes, in this order, each step idempotent:
a network namespace with a veth into the bridge namespace (netns.py), a FUSE
view of the image, a loop device over that view (``losetup --direct-io=on``),
a cgroup (v2 ``unified`` tree, plus ``name=systemd`` on hybrid hosts), and the
node itself:

* ``nspawn`` mode: ``systemd-nspawn -b`` of the cached rootfs (rootfs.py) with
  ``--volatile=overlay`` and ``--register=no --keep-unit``, launched from
  inside the node's cgroup so
  each container has its own (nspawn splits it into ``supervisor`` and
  ``payload``).  The container's systemd is the node's init.
* ``process`` mode: ``nsenter --net`` + ``unshare`` (mount, UTS, IPC, PID) run
  procinit.py as PID 1, which builds the node's root and runs the node command.

The image is on a tmpfs because the nodes' O_DSYNC heartbeat writes reach it
(through the FUSE view) as ``fdatasync`` of the image file: on the host's
ext4 each one waits for that filesystem's journal and the local disk's cache
flush, which on a busy host stall past the fence deadline -- every node
fences at once, with no fault injected.  A SAN's latency does not depend on
the host's local disk; a tmpfs image's does not either.

Names are ``<prefix>-nK`` / ``<prefix>-sw`` (netns, machine) and
``clusterfw-lab-<hash>-nK`` (cgroups), where prefix/hash come from DIR's path,
so labs in different directories never collide.  Processes are recorded as
(PID, start time) and only those, or processes inside the lab's own cgroups,
are ever signalled.  ``down`` walks the state file backwards and removes only
what it records; loop devices are also matched by their backing file (a path
inside DIR) so one made just before an interruption is not missed.

Faults: ``crash`` SIGKILLs the node's init (the kernel then kills its whole
PID namespace; stalled disk I/O is failed as a dead host's would be), then
checks that the node's cgroup is empty.  ``pause`` freezes the node's cgroup
(v2 ``cgroup.freeze``).  ``cut-disk`` switches the node's FUSE view to EIO or
hang; the other nodes' views are untouched.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mmap
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from . import fusedisk, netns, rootfs
from .hostsys import (LabError, ProcRef, cgroup_create, cgroup_hierarchies,
                      missing_prerequisites, cgroup_enter, cgroup_freeze,
                      cgroup_freeze_requested, cgroup_frozen, cgroup_kill, cgroup_pids,
                      cgroup_remove, children, is_mounted, is_tmpfs, log, mountinfo, reap,
                      require_root, run, wait_for)

DEFAULT_DIR = Path(os.environ.get("CLUSTERFW_LAB_DIR", "/var/lib/clusterfw-lab"))
DEFAULT_CACHE = Path(os.environ.get("CLUSTERFW_LAB_CACHE", str(rootfs.DEFAULT_CACHE)))
IMAGE_TMPFS = Path("/dev/shm")  # where the disk image goes when DIR is not on a tmpfs
MODES = ("nspawn", "process")
DISK_IN_NODE = "/dev/clusterfw-disk"
DEFAULT_NODE_COMMAND = "clusterfw daemon --disk {disk} --node {node}"
DEFAULT_DISK_SIZE = 256 << 20
STATE_VERSION = 1
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NSPAWN_RUN = Path("/run/systemd/nspawn")
RUNTIME_DIRS = ("nodes", "fuse", "run", "app", "units")
# `clusterfw ...` run by this interpreter (whatever `clusterfw` is on the PATH)
CLI_ARGV = [sys.executable, "-c",
            "import sys; from clusterfw.cli import main; sys.exit(main(sys.argv[1:]))"]


def _now() -> float:
    return time.time()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        data = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(data[-lines:])


def parse_size(text: str) -> int:
    """'256M', '1G', '4096' -> bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    for suf, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if t.endswith(suf):
            t, mult = t[:-1], m
            break
    try:
        return int(float(t) * mult)
    except ValueError:
        raise LabError(f"bad size {text!r} (e.g. 256M, 1G)", 2) from None


def _subst(word: str, values: dict) -> str:
    """Replace {key} placeholders; other braces are left alone (not str.format)."""
    for k, v in values.items():
        word = word.replace("{" + k + "}", v)
    return word


def _project_pythonpath() -> str:
    root = rootfs.project_root()
    parts = [str(root)] if root else []
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def _host_env() -> dict:
    """Environment for the helper processes the lab starts on the host."""
    env = {"PATH": os.environ.get("PATH", NODE_PATH), "LANG": "C.UTF-8"}
    pp = _project_pythonpath()
    if pp:
        env["PYTHONPATH"] = pp
    return env


def _process_path() -> str:
    """PATH in process-mode nodes: the lab's clusterfw, its interpreter, the system."""
    from .procinit import CLI_DIR
    return f"{CLI_DIR}:{os.path.dirname(sys.executable)}:{NODE_PATH}"


def _node_env(mode: str = "nspawn") -> dict:
    """Environment for commands run inside a node (exec)."""
    env = {"PATH": NODE_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
    if mode == "process":
        env["PATH"] = _process_path()
        pp = _project_pythonpath()
        if pp:
            env["PYTHONPATH"] = pp
    if os.environ.get("TERM"):
        env["TERM"] = os.environ["TERM"]
    return env


def _disk_priority() -> None:
    """The disk views stand in for a SAN, which the hosts' CPU load cannot
    slow down: serve them ahead of ordinary processes (nice -15), so a CPU
    hog on the lab machine tests the daemons, not the emulated disk."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -15)
    except OSError:
        pass


def _kill_tree(pid: int) -> None:
    """SIGKILL pid (our child) and all its descendants, children first found."""
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(children(p))
    for p in seen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def loop_devices() -> list[dict]:
    out = run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE,DIO,LOG-SEC"],
              timeout=10, check=False).stdout or "{}"
    try:
        return json.loads(out).get("loopdevices", [])
    except json.JSONDecodeError:
        return []


def image_dir_warning(directory: str | Path) -> str | None:
    """The warning ``up`` prints when the disk image's directory is not on a
    tmpfs (see the module docstring); ``None`` when it is."""
    if is_tmpfs(directory):
        return None
    return (f"warning: the lab's disk image directory {directory} is not on a tmpfs: every O_DSYNC heartbeat "
            f"write of the nodes then waits for that filesystem's journal and the local disk's cache flush, "
            f"which on a busy host stall past the fence deadline and fence every node at once; create the "
            f"lab with an image directory on a tmpfs ('clusterfw lab up --image-dir /dev/shm/NAME', the "
            f"default when {IMAGE_TMPFS} is a tmpfs)")


class Lab:
    """One lab directory and everything its state file records."""

    def __init__(self, directory: Path | str = DEFAULT_DIR, cache_dir: Path | str = DEFAULT_CACHE):
        self.dir = Path(os.path.abspath(directory))
        self.cache_dir = Path(cache_dir)
        h = hashlib.sha256(str(self.dir).encode()).hexdigest()[:6]
        self.hash = h
        self.prefix = f"cfl-{h}"
        self.state_path = self.dir / "lab.json"
        self.state: dict | None = self._load()

    def default_image_dir(self) -> Path:
        """Where a new lab puts disk.img: on a tmpfs (see the module
        docstring) -- DIR itself if it is on one, else a directory of its own
        under /dev/shm; DIR when no tmpfs is there (``up`` then warns)."""
        if is_tmpfs(self.dir) or not is_tmpfs(IMAGE_TMPFS):
            return self.dir
        return IMAGE_TMPFS / f"clusterfw-lab-{self.hash}"

    def _image_dirs(self) -> list[str]:
        """Path prefixes that hold this lab's files: DIR, and the image's
        directory when that lies elsewhere."""
        dirs = [str(self.dir) + "/"]
        image = ((self.state or {}).get("disk") or {}).get("image")
        if image and not str(image).startswith(dirs[0]):
            dirs.append(str(Path(image).parent) + "/")
        return dirs

    # ------------------------------------------------------------------ state
    def _load(self) -> dict | None:
        try:
            st = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:
            raise LabError(f"corrupt state file {self.state_path}: {exc}") from None
        if st.get("version") != STATE_VERSION:
            raise LabError(f"state file {self.state_path} has version {st.get('version')}, "
                           f"this clusterfw understands {STATE_VERSION}")
        return st

    def _st(self) -> dict:
        """The lab's state, where an operation needs a lab that is up."""
        if self.state is None:
            raise LabError(f"no lab is up in {self.dir}: start one with 'clusterfw lab up'")
        return self.state

    def _save(self) -> None:
        assert self.state is not None
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.state, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    @contextlib.contextmanager
    def locked(self, timeout: float = 120):
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "lab.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LabError(f"another clusterfw lab command holds {self.dir}/lab.lock")
                    time.sleep(0.1)
            self.state = self._load()
            yield
        finally:
            os.close(fd)

    def _need_state(self) -> dict:
        if self.state is None:
            raise LabError(f"no lab in {self.dir} (run: clusterfw lab up --dir {self.dir})", 2)
        return self.state

    def _node(self, name: str) -> dict:
        st = self._need_state()
        if name not in st["nodes"]:
            raise LabError(f"no node {name!r} in this lab (nodes: "
                           f"{', '.join(st['nodes'])})", 2)
        return st["nodes"][name]

    @staticmethod
    def _ref(rec: dict | None, key: str) -> ProcRef | None:
        return ProcRef.from_json(rec.get(key)) if rec else None

    def _cgroup(self, name: str) -> str:
        return f"clusterfw-lab-{self.hash}-{name}"

    def _node_dir(self, name: str) -> Path:
        return self.dir / "nodes" / name

    # -------------------------------------------------------------- preflight
    def _preflight(self, mode: str) -> None:
        why = missing_prerequisites(mode)
        if why:
            raise LabError(why, 2)

    # --------------------------------------------------------------------- up
    def up(self, nodes: int, mode: str = "nspawn", *, disk_size: int = DEFAULT_DISK_SIZE,
           sector_size: int = 512, node_command: str = DEFAULT_NODE_COMMAND,
           autostart: bool = True, boot_timeout: float = 90, rebuild: bool = False,
           wipe_disk: bool = False, keep_on_failure: bool = False,
           setup_commands: list[str] | None = None, prepare_disk: bool = True,
           image_dir: str | Path | None = None) -> dict:
        if mode not in MODES:
            raise LabError(f"unknown mode {mode!r} (nspawn or process)", 2)
        if not 1 <= nodes <= 250:
            raise LabError("--nodes must be 1..250", 2)
        if sector_size not in (512, 4096):
            raise LabError("--sector-size must be 512 or 4096", 2)
        cmd = shlex.split(node_command)
        if not cmd:
            raise LabError("--node-command is empty", 2)
        setups = [shlex.split(c) for c in (setup_commands or [])]
        if any(not c for c in setups):
            raise LabError("--setup-command is empty", 2)
        self._preflight(mode)
        t0 = time.monotonic()
        self._created = False
        try:
            with self.locked():
                self._up_locked(nodes, mode, disk_size, sector_size, cmd, autostart,
                                boot_timeout, rebuild, wipe_disk, setups, prepare_disk, image_dir)
        except BaseException as exc:
            # only undo a lab this very `up` created; never tear down an existing one
            if keep_on_failure or self.state is None or not self._created:
                raise
            log(f"up failed ({exc.__class__.__name__}: {exc}); cleaning up "
                "(use --keep-on-failure to inspect instead)")
            try:
                self.down()
            except Exception as exc2:  # report both
                log(f"cleanup after failed up also failed: {exc2}")
            raise
        with self.locked():
            self._st()["up_seconds"] = round(time.monotonic() - t0, 2)
            self._save()
        log(f"lab up: {nodes} {mode} node(s) in {time.monotonic() - t0:.1f}s")
        return self.status()

    def _up_locked(self, nodes, mode, disk_size, sector_size, cmd, autostart,
                   boot_timeout, rebuild, wipe_disk, setups, prepare_disk, image_dir=None) -> None:
        names = [f"n{k}" for k in range(1, nodes + 1)]
        st = self.state
        if st is not None:
            if st["mode"] != mode or sorted(st["nodes"]) != sorted(names):
                raise LabError(
                    f"a lab with {len(st['nodes'])} {st['mode']} node(s) already exists in "
                    f"{self.dir}; run 'clusterfw lab down --dir {self.dir}' first", 2)
            if image_dir is not None and Path(image_dir) != Path(st["disk"]["image"]).parent:
                raise LabError(f"this lab's disk image is {st['disk']['image']}; --image-dir applies only "
                               f"when the lab is created ('clusterfw lab down --dir {self.dir}' first)", 2)
        else:
            chosen = Path(image_dir) if image_dir is not None else self.default_image_dir()
            st = self.state = {
                "version": STATE_VERSION, "dir": str(self.dir), "prefix": self.prefix,
                "mode": mode, "created": _now(), "switch_netns": None,
                "disk": {"image": str(chosen / "disk.img"), "sector_size": sector_size,
                         # removed by `down --purge` when the lab made it (not a directory it was given)
                         "image_dir_owned": image_dir is None and chosen != self.dir and not chosen.exists()},
                "rootfs": None, "app": None, "units": None, "node_command": cmd,
                "autostart": autostart, "nodes": {},
            }
            for k, name in enumerate(names, 1):
                st["nodes"][name] = {
                    "name": name, "index": k, "address": netns.node_address(k),
                    "netns": None, "cgroup": None, "machine": f"{self.prefix}-{name}",
                    "fuse": None, "loop": None, "launcher": None, "init": None,
                    "disk_mode": "pass", "pause": None, "started": None,
                }
            self._save()
            self._created = True
        st["node_command"] = cmd
        st["autostart"] = autostart

        # files
        for d in ("shared", "nodes", "fuse", "run"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        img = Path(st["disk"]["image"])
        img.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        warning = image_dir_warning(img.parent)
        if warning:
            log(warning)
        size = (disk_size + (1 << 20) - 1) & ~((1 << 20) - 1)
        if wipe_disk and img.exists():
            if self._any_node_up():
                log("warning: --wipe-disk ignored: nodes of this lab are up")
            else:  # in place: running disk views keep their file open
                log(f"wiping shared disk {img} ({size >> 20} MiB)")
                with open(img, "r+b") as f:
                    f.truncate(0)
                    f.truncate(size)
        if not img.exists():
            log(f"creating shared disk {img} ({size >> 20} MiB, sparse)")
            with open(img, "wb") as f:
                f.truncate(size)
        st["disk"]["size"] = img.stat().st_size
        hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        hosts += [f"{r['address']}\t{n}" for n, r in st["nodes"].items()]
        (self.dir / "hosts").write_text("\n".join(hosts) + "\n")

        # nspawn: root filesystem and project code
        if mode == "nspawn":
            st["rootfs"] = str(rootfs.ensure_rootfs(self.cache_dir, rebuild=rebuild))
            self._save()
            st["app"] = str(rootfs.build_app(self.dir, self.cache_dir))
            units = rootfs.build_units(self.dir, autostart)
            st["units"] = str(units) if units else None
            if units is None:
                log("no systemd/clusterfw.service in the repository yet: nodes get no units")
            self._save()

        # network
        if st["switch_netns"] is None:
            st["switch_netns"] = f"{self.prefix}-sw"
            self._save()
        netns.ensure_switch(st["switch_netns"])

        for name, rec in st["nodes"].items():
            self._ensure_node_resources(name, rec)

        if prepare_disk:
            self._prepare_cluster_disk()
        for argv in setups:
            self._run_setup(argv)

        # boot
        to_wait = []
        for name, rec in st["nodes"].items():
            if self._node_running(rec):
                continue
            self._start_node(name, rec)
            to_wait.append(name)
        self._wait_ready(to_wait, boot_timeout)

    def _ensure_node_resources(self, name: str, rec: dict) -> None:
        st = self._st()
        ndir = self._node_dir(name)
        ndir.mkdir(parents=True, exist_ok=True)
        conf_dir = ndir / "etc-clusterfw"
        conf_dir.mkdir(exist_ok=True)
        (conf_dir / "node.conf").write_text(self._node_conf(rec))
        (conf_dir / "clusterfw.conf").write_text(self._daemon_conf(rec))
        if rec["netns"] is None:
            rec["netns"] = f"{self.prefix}-{name}"
            self._save()
        netns.ensure_node(st["switch_netns"], rec["netns"], rec["index"])
        if rec["cgroup"] is None:
            rec["cgroup"] = self._cgroup(name)
            self._save()
        cgroup_create(rec["cgroup"])
        if self._ensure_fuse(name, rec) and rec["loop"]:
            # a new disk view: the old loop device points at the dead one
            if self._node_running(rec):
                log(f"warning: {name} runs on a dead disk view; restart it")
            else:
                self._detach_loop(rec)
        self._ensure_loop(name, rec)

    def _run_setup(self, argv: list[str]) -> None:
        """A --setup-command: on the host, after the disk views exist, before boot."""
        first = self._st()["nodes"]["n1"]
        subst = {"disk": first["loop"], "image": self._st()["disk"]["image"],
                 "nodes": str(len(self._st()["nodes"])), "dir": str(self.dir)}
        argv = [_subst(a, subst) for a in argv]
        if argv[0] == "clusterfw":
            argv = [*CLI_ARGV, *argv[1:]]
        log(f"setup: {' '.join(argv)}")
        cp = subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=300, env=_host_env(),
                            stdout=sys.stderr)
        if cp.returncode != 0:
            raise LabError(f"setup command failed with exit code {cp.returncode}: "
                           f"{' '.join(argv)}")

    def _daemon_conf(self, rec: dict) -> str:
        """What clusterfw.service reads (EnvironmentFile=): the node's disk
        view and its name.  Lab nodes fence by exiting; systemd restarts them
        as a new incarnation (docs/daemon.md).  With the event manager's unit
        among the nodes' units (it starts with clusterfw.service) the daemon
        waits for it to register before the join (docs/events.md)."""
        units = self._st().get("units")
        events = bool(units) and (Path(str(units)) / "clusterfw-events.service").exists()
        return ("# written by `clusterfw lab up` for clusterfw.service; see docs/daemon.md\n"
                f"CLUSTERFW_DISK={DISK_IN_NODE}\nCLUSTERFW_NODE={rec['name']}\n"
                + ('CLUSTERFW_OPTIONS="--wait-for-subsystem events"\n' if events else "CLUSTERFW_OPTIONS=\n"))

    def _prepare_cluster_disk(self) -> None:
        """A new (or foreign) shared disk becomes a clusterfw disk for cluster
        'lab' with nodes n1..nN; an existing lab disk only gains missing nodes."""
        from ..core.timing import LAB
        from ..ondisk import admin
        from ..ondisk.blockdev import BlockDevice
        from ..ondisk.clusterdisk import ClusterDisk
        from ..ondisk.errors import NodeTableError

        first = self._st()["nodes"]["n1"]["loop"]
        names = sorted(self._st()["nodes"], key=lambda n: int(n[1:]))
        if admin.probe(first) is None:
            log(f"formatting the shared disk for cluster 'lab' ({len(names)} nodes, the lab profile)")
            with BlockDevice(first) as dev:
                admin.format_disk(dev, "lab", max(16, len(names)), LAB.heartbeat_interval_ms, LAB.io_timeout_ms,
                                  force=True)
        with BlockDevice(first) as dev:
            disk = ClusterDisk.open(dev)
            have = {e.name for e in disk.read_node_table() if hasattr(e, "name")}
            for name in names:
                if name not in have:
                    try:
                        admin.add_node(disk, name, int(name[1:]))
                    except (NodeTableError, ValueError) as exc:
                        raise LabError(f"cannot add {name} to the lab disk: {exc}; "
                                       "recreate it with 'clusterfw lab up --wipe-disk'") from None

    def _node_conf(self, rec: dict) -> str:
        return ("# written by `clusterfw lab up`: KEY=VALUE lines for systemd's\n"
                "# EnvironmentFile= and for POSIX sh.  See docs/lab.md.\n"
                f"DISK={DISK_IN_NODE}\nNODE={rec['name']}\nNODE_ID={rec['index']}\n"
                f"ADDRESS={rec['address']}\nLAB_MODE={self._st()['mode']}\n")

    # ------------------------------------------------------------------- disk
    def _ensure_fuse(self, name: str, rec: dict) -> bool:
        """Make sure the node's disk view is served; True if a new server started."""
        if rec["fuse"] is None:
            rec["fuse"] = {"mount": str(self.dir / "fuse" / name),
                           "control": str(self.dir / "run" / f"{name}-disk.sock"),
                           "proc": None}
            self._save()
        fz = rec["fuse"]
        proc = ProcRef.from_json(fz["proc"])
        mounted = is_mounted(fz["mount"])
        if proc and proc.alive() and mounted:
            return False
        if mounted:  # stale mount of a dead server
            self._unmount_fuse(fz["mount"])
        Path(fz["mount"]).mkdir(parents=True, exist_ok=True)
        logf = self._node_dir(name) / "fuse.log"
        with open(logf, "ab") as lf:
            p = subprocess.Popen(
                [sys.executable, "-m", "clusterfw.lab.fusedisk",
                 "--image", self._st()["disk"]["image"], "--mount", fz["mount"],
                 "--control", fz["control"], "--mode", rec.get("disk_mode", "pass"),
                 "--name", f"{self.hash}-{name}"],
                stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                start_new_session=True, env=_host_env(), preexec_fn=_disk_priority)
        ref = ProcRef.of(p.pid)
        fz["proc"] = ref.to_json() if ref else {"pid": p.pid, "start": 0}
        self._save()
        ok = wait_for(lambda: p.poll() is not None or (
            is_mounted(fz["mount"]) and os.path.exists(fz["control"])), 15)
        if p.poll() is not None or not ok:
            raise LabError(f"FUSE disk view of {name} did not come up; log "
                           f"{logf}:\n{_tail(logf)}")
        return True

    def _unmount_fuse(self, mount: str) -> None:
        for argv in (["fusermount3", "-u", "-z", mount], ["umount", "-l", mount]):
            if not is_mounted(mount):
                return
            run(argv, timeout=10, check=False)

    def _backing(self, rec: dict) -> str | None:
        return str(Path(rec["fuse"]["mount"]) / fusedisk.DISK_NAME) if rec["fuse"] else None

    def _ensure_loop(self, name: str, rec: dict) -> None:
        backing = self._backing(rec)
        if backing is None:
            raise LabError(f"node {name} has no FUSE-backed disk to attach a loop device to")
        mine = [d for d in loop_devices() if (d.get("back-file") or "").startswith(backing)]
        if rec["loop"] and any(d["name"] == rec["loop"] for d in mine):
            return
        if mine:  # made just before an interruption
            rec["loop"] = mine[0]["name"]
            self._save()
            return
        dev = run(["losetup", "--direct-io=on", "--sector-size",
                   str(self._st()["disk"]["sector_size"]), "--show", "-f", backing],
                  timeout=30).stdout.strip()
        rec["loop"] = dev
        self._save()
        dio = Path(f"/sys/block/{os.path.basename(dev)}/loop/dio")
        if dio.exists() and dio.read_text().strip() != "1":
            log(f"warning: {dev} did not enable direct I/O")

    def _disk_control(self, rec: dict, request: str) -> str:
        if not rec["fuse"]:
            raise LabError(f"node {rec['name']} has no disk view")
        try:
            return fusedisk.control(rec["fuse"]["control"], request)
        except (OSError, RuntimeError) as exc:
            raise LabError(f"disk view of {rec['name']} did not answer {request!r}: {exc}")

    # ------------------------------------------------------------------ nodes
    def _node_running(self, rec: dict) -> bool:
        init = self._ref(rec, "init")
        return bool(init and init.alive())

    def _any_node_up(self) -> bool:
        return any(self._node_running(r) for r in (self.state or {}).get("nodes", {}).values())

    def _start_node(self, name: str, rec: dict) -> None:
        cg = rec["cgroup"]
        left = cgroup_pids(cg)
        if left:
            raise LabError(f"node {name}'s cgroup still has processes {left}; "
                           f"run 'clusterfw lab crash {name}' or 'down' first")
        cgroup_create(cg)
        cgroup_freeze(cg, False)
        ndir = self._node_dir(name)
        logf = ndir / "console.log"
        if self._st()["mode"] == "nspawn":
            argv = self._nspawn_argv(name, rec)
            env = dict(os.environ, SYSTEMD_COLORS="0")
        else:
            argv = self._process_argv(name, rec)
            env = _host_env()
            (ndir / "ready").unlink(missing_ok=True)
        with open(logf, "ab") as lf:
            lf.write(f"\n=== {time.strftime('%F %T')} starting {name}\n".encode())
            lf.flush()
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=lf,
                                 stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                 preexec_fn=lambda: cgroup_enter(cg))
        ref = ProcRef.of(p.pid)
        rec["launcher"] = ref.to_json() if ref else None
        rec["init"] = None
        rec["started"] = _now()
        rec["ready_seconds"] = None
        self._save()

    def _nspawn_argv(self, name: str, rec: dict) -> list[str]:
        st = self._st()
        node_uuid = uuid.UUID(hashlib.sha256(f"{self.prefix}-{name}".encode()).hexdigest()[:32])
        argv = ["systemd-nspawn", "--quiet", "-D", st["rootfs"], "-b",
                "--register=no", "--keep-unit", "-M", rec["machine"],
                f"--hostname={name}", f"--uuid={node_uuid}", "--volatile=overlay",
                f"--network-namespace-path={netns.NETNS_DIR / rec['netns']}",
                "--capability=CAP_NET_ADMIN", "--console=read-only", "--link-journal=no",
                "--resolv-conf=off", "--timezone=off",
                f"--bind={rec['loop']}:{DISK_IN_NODE}",
                f"--bind={self.dir / 'shared'}:/lab/shared",
                f"--bind-ro={self._node_dir(name) / 'etc-clusterfw'}:{rootfs.NODE_CONF_DIR}",
                f"--bind-ro={self.dir / 'hosts'}:/etc/hosts",
                f"--bind-ro={st['app']}:{rootfs.APP_MOUNT}",
                f"--setenv=CLUSTERFW_LAB_NODE={name}"]
        if st.get("units"):
            argv.append(f"--bind-ro={st['units']}:{rootfs.UNITS_MOUNT}")
        return argv

    def _node_command(self, name: str) -> list[str]:
        cmd = [_subst(a, {"disk": DISK_IN_NODE, "node": name})
               for a in self._st()["node_command"]]
        if cmd[0] == "clusterfw":  # this very clusterfw, with this interpreter
            cmd = [*CLI_ARGV, *cmd[1:]]
        return cmd

    def _process_argv(self, name: str, rec: dict) -> list[str]:
        ndir = self._node_dir(name)
        pp = _project_pythonpath()
        root = rootfs.project_root()
        argv = ["nsenter", f"--net={netns.NETNS_DIR / rec['netns']}", "--",
                "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child",
                "--propagation", "private", "--",
                sys.executable, "-m", "clusterfw.lab.procinit",
                "--hostname", name, "--disk", rec["loop"],
                "--shared", str(self.dir / "shared"), "--hosts", str(self.dir / "hosts"),
                "--node-conf", self._node_conf(rec), "--ready", str(ndir / "ready"),
                "--cli-python", sys.executable, "--cli-path", str(root) if root else "",
                "--env", f"PATH={_process_path()}",
                "--env", f"CLUSTERFW_LAB_NODE={name}",
                "--env", f"CLUSTERFW_LAB_DISK={DISK_IN_NODE}"]
        if pp:
            argv += ["--env", f"PYTHONPATH={pp}"]
        return argv + ["--", *self._node_command(name)]

    def _find_init(self, name: str, rec: dict, any_child: bool = False) -> ProcRef | None:
        """The node's init: the launcher's child, once it runs as init
        (nspawn: has become systemd; process: wrote its ready file)."""
        launcher = self._ref(rec, "launcher")
        if not launcher or not launcher.alive():
            return None
        for pid in children(launcher.pid):
            if any_child:
                pass
            elif self._st()["mode"] == "nspawn":
                try:
                    if Path(f"/proc/{pid}/comm").read_text().strip() != "systemd":
                        continue
                except OSError:  # gone meanwhile (ENOENT, or ESRCH mid-read): a short-lived helper
                    continue
            else:
                ready = self._node_dir(name) / "ready"
                if not (ready.exists() and ready.read_text().strip()):
                    return None
            return ProcRef.of(pid)
        return None

    def _boot_state(self, init: ProcRef) -> str:
        cp = subprocess.run(["nsenter", "-t", str(init.pid), "-a", "--",
                             "systemctl", "is-system-running"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            timeout=10, env=_node_env(), stdin=subprocess.DEVNULL)
        return cp.stdout.strip()

    def _wait_ready(self, names: list[str], timeout: float) -> None:
        pending = list(names)
        deadline = time.monotonic() + timeout
        while pending:
            for name in list(pending):
                rec = self._st()["nodes"][name]
                launcher = self._ref(rec, "launcher")
                if launcher is None or not launcher.alive():
                    if launcher:
                        reap(launcher.pid)
                    logf = self._node_dir(name) / "console.log"
                    raise LabError(f"node {name} exited while starting; log {logf}:\n"
                                   f"{_tail(logf)}")
                init = self._ref(rec, "init")
                if init is None:
                    init = self._find_init(name, rec)
                    if init is None:
                        continue
                    rec["init"] = init.to_json()
                    self._save()
                if self._st()["mode"] == "nspawn":
                    try:
                        state = self._boot_state(init)
                    except subprocess.TimeoutExpired:
                        continue
                    if state not in ("running", "degraded"):
                        continue
                    rec["boot_state"] = state
                rec["ready_seconds"] = round(_now() - rec["started"], 2)
                self._save()
                pending.remove(name)
            if pending:
                if time.monotonic() > deadline:
                    raise LabError(f"node(s) {', '.join(pending)} not up after {timeout:g}s; "
                                   f"logs in {self.dir}/nodes/<node>/console.log")
                time.sleep(0.1)

    def _stop_nodes(self, names: list[str], graceful: bool, timeout: float) -> dict:
        """Stop nodes (graceful first if asked); returns {node: surviving PIDs}."""
        nodes = self._st()["nodes"]
        for name in names:
            rec = nodes[name]
            self._cancel_pause(rec)
            if rec["cgroup"]:
                with contextlib.suppress(OSError):
                    cgroup_freeze(rec["cgroup"], False)
        graceful_names: list[str] = []
        if graceful:
            for name in names:
                rec = nodes[name]
                init = self._ref(rec, "init")
                if not (init and init.alive()):
                    # never finished booting (e.g. interrupted up): killed below
                    continue
                graceful_names.append(name)
                if self._st()["mode"] == "nspawn":
                    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                        subprocess.run(["nsenter", "-t", str(init.pid), "-a", "--",
                                        "systemctl", "poweroff", "--no-block"],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, timeout=10, env=_node_env())
                else:
                    init.signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout

            def all_gone():
                for name in graceful_names:
                    rec = nodes[name]
                    for key in ("init", "launcher"):
                        ref = self._ref(rec, key)
                        if ref:
                            reap(ref.pid)
                            if ref.alive():
                                return False
                return True
            wait_for(all_gone, max(0.0, deadline - time.monotonic()), 0.1)
        return {name: self._kill_node(name) for name in names}

    def _kill_node(self, name: str) -> list[int]:
        """SIGKILL what is left of a node; returns PIDs that survived."""
        rec = self._st()["nodes"][name]
        hung = rec.get("disk_mode") == "hang"
        init = self._ref(rec, "init") or self._find_init(name, rec, any_child=True)
        if init:  # the kernel then SIGKILLs the whole PID namespace
            init.signal(signal.SIGKILL)
        if hung:  # a dead host's in-flight I/O never completes: fail it
            with contextlib.suppress(LabError):
                self._disk_control(rec, "fail-stalled")
        if rec["cgroup"]:  # frozen tasks die of SIGKILL; nspawn must run to exit
            with contextlib.suppress(OSError):
                cgroup_freeze(rec["cgroup"], False)
        launcher = self._ref(rec, "launcher")
        # nspawn/unshare exit by themselves once their init is gone
        if launcher and not launcher.wait_gone(10 if init else 0.5):
            launcher.signal(signal.SIGKILL)
            launcher.wait_gone(5)
        survivors: list[int] = []
        if rec["cgroup"]:
            deadline = time.monotonic() + 10
            while True:
                if hung:
                    with contextlib.suppress(LabError):
                        self._disk_control(rec, "fail-stalled")
                survivors = cgroup_kill(rec["cgroup"], timeout=1)
                if not survivors or time.monotonic() > deadline:
                    break
            with contextlib.suppress(OSError):
                cgroup_freeze(rec["cgroup"], False)
        if init:
            reap(init.pid)
        self._nspawn_leftovers(rec)
        rec["init"] = None
        rec["launcher"] = None
        self._cancel_pause(rec)  # a background resume of a crashed node must not outlive it
        self._save()
        return survivors

    def _nspawn_leftovers(self, rec: dict) -> None:
        """Files nspawn leaves in /run when its container is killed."""
        if self._st()["mode"] != "nspawn":
            return
        prop = NSPAWN_RUN / "propagate" / rec["machine"]
        if prop.is_dir() and not is_mounted(prop):
            shutil.rmtree(prop, ignore_errors=True)

    def _nspawn_lock_cleanup(self) -> None:
        """nspawn's lock file on the rootfs, if a killed nspawn left it."""
        tree = self._st().get("rootfs")
        if tree and os.path.isdir(tree) and not rootfs.rootfs_in_use(Path(tree)):
            s = os.stat(tree)
            (NSPAWN_RUN / "locks" / f"inode-{s.st_dev}:{s.st_ino}").unlink(missing_ok=True)
        for d in (NSPAWN_RUN / "propagate", NSPAWN_RUN / "locks", NSPAWN_RUN):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty

    # ----------------------------------------------------------------- faults
    def crash(self, name: str) -> dict:
        with self.locked():
            rec = self._node(name)
            if not self._node_running(rec):
                raise LabError(f"node {name} is not running")
            init = self._ref(rec, "init")
            assert init is not None  # _node_running checked it
            t0 = time.monotonic()
            init.signal(signal.SIGKILL)
            survivors = self._kill_node(name)
            if survivors:
                raise LabError(f"node {name}: processes {survivors} survived SIGKILL "
                               "(stuck in uninterruptible I/O?)")
            return {"node": name, "crashed": True, "killed_pid": init.pid,
                    "seconds": round(time.monotonic() - t0, 3)}

    def restart(self, name: str, boot_timeout: float = 90, stop_timeout: float = 20) -> dict:
        """The node's status, and ``seconds``: the whole restart (stop, boot, ready)."""
        with self.locked():
            t0 = time.monotonic()
            rec = self._node(name)
            if self._node_running(rec) or self._ref(rec, "launcher"):
                survivors = self._stop_nodes([name], graceful=True, timeout=stop_timeout)[name]
                if survivors:
                    raise LabError(f"node {name}: processes {survivors} survived the stop")
            self._ensure_node_resources(name, rec)
            self._start_node(name, rec)
            self._wait_ready([name], boot_timeout)
            return {**self._node_status(name, rec), "seconds": round(time.monotonic() - t0, 3)}

    def pause(self, name: str, seconds: float, background: bool = False) -> dict:
        if seconds <= 0:
            raise LabError("pause needs a positive number of seconds", 2)
        with self.locked():
            rec = self._node(name)
            if not self._node_running(rec):
                raise LabError(f"node {name} is not running")
            self._cancel_pause(rec)
            token = uuid.uuid4().hex
            until = _now() + seconds
            rec["pause"] = {"token": token, "until": until, "helper": None}
            self._save()
            cgroup_freeze(rec["cgroup"], True)
            frozen = wait_for(lambda: cgroup_frozen(rec["cgroup"]), min(5.0, seconds))
            if background:
                logf = self._node_dir(name) / "pause.log"
                with open(logf, "ab") as lf:
                    p = subprocess.Popen(
                        [*CLI_ARGV, "lab", "resume", name,
                         "--dir", str(self.dir), "--after", str(seconds), "--token", token],
                        stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                        start_new_session=True, env=_host_env())
                ref = ProcRef.of(p.pid)
                rec["pause"]["helper"] = ref.to_json() if ref else None
                self._save()
                return {"node": name, "paused": True, "frozen": frozen,
                        "until": until, "background": True}
        try:
            time.sleep(max(0.0, until - _now()))
        finally:
            self.resume(name, token=token)
        return {"node": name, "paused": False, "frozen_while_paused": frozen,
                "seconds": seconds}

    def resume(self, name: str, after: float = 0, token: str | None = None) -> dict:
        if after > 0:
            time.sleep(after)
        with self.locked():
            rec = self._node(name)
            if token and (rec.get("pause") or {}).get("token") != token:
                return {"node": name, "resumed": False, "reason": "pause superseded"}
            if rec.get("pause") and rec["pause"].get("helper") and not token:
                self._cancel_pause(rec)
            rec["pause"] = None
            self._save()
            if rec["cgroup"]:
                cgroup_freeze(rec["cgroup"], False)
                wait_for(lambda: not cgroup_frozen(rec["cgroup"]), 5)
            return {"node": name, "resumed": True}

    def _cancel_pause(self, rec: dict) -> None:
        pz = rec.get("pause")
        if pz and pz.get("helper"):
            helper = ProcRef.from_json(pz["helper"])
            if helper and helper.pid != os.getpid():
                helper.signal(signal.SIGKILL)
                helper.wait_gone(2)
        rec["pause"] = None

    def cut_disk(self, name: str, mode: str = "eio") -> dict:
        if mode not in ("eio", "hang"):
            raise LabError("cut-disk mode must be eio or hang", 2)
        with self.locked():
            rec = self._node(name)
            rec["disk_mode"] = mode
            self._save()
            self._disk_control(rec, f"mode {mode}")
            return {"node": name, "disk": mode}

    def restore_disk(self, name: str) -> dict:
        with self.locked():
            rec = self._node(name)
            rec["disk_mode"] = "pass"
            self._save()
            self._disk_control(rec, "mode pass")
            return {"node": name, "disk": "pass"}

    # ------------------------------------------------------------------- exec
    def exec_argv(self, name: str) -> tuple[list[str], dict, str]:
        """nsenter argv prefix, environment and cgroup for running in a node."""
        rec = self._node(name)
        init = self._ref(rec, "init")
        if not (init and init.alive()):
            raise LabError(f"node {name} is not running")
        if cgroup_freeze_requested(rec["cgroup"]):
            # joining a frozen cgroup would freeze us before the command starts
            raise LabError(f"node {name} is paused; it runs nothing until it is thawed "
                           f"(clusterfw lab resume {name})")
        return (["nsenter", "-t", str(init.pid), "-a", "-r", "-w", "--"],
                _node_env(self._st()["mode"]),
                f"{rec['cgroup']}/exec")

    def exec(self, name: str, argv: list[str], *, timeout: float | None = None,
             capture: bool = True, input: str | bytes | None = None,
             text: bool = True) -> subprocess.CompletedProcess:
        """Run argv inside node name (all its namespaces, its cgroup).

        With capture, stdout/stderr are returned; otherwise they are inherited.
        On timeout (or interrupt) the command and everything it started are
        SIGKILLed and subprocess.TimeoutExpired is raised."""
        if not argv:
            raise LabError("exec needs a command", 2)
        prefix, env, cg = self.exec_argv(name)
        kw: dict = {}
        if capture:
            kw.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if input is not None:
            kw["stdin"] = subprocess.PIPE
        elif capture:
            kw["stdin"] = subprocess.DEVNULL
        p = subprocess.Popen(prefix + list(argv), env=env, text=text,
                             preexec_fn=lambda: cgroup_enter(cg), **kw)
        try:
            out, err = p.communicate(input=input, timeout=timeout)
        except BaseException:
            _kill_tree(p.pid)
            try:  # a surviving grandchild may still hold the pipes open
                p.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                for f in (p.stdout, p.stderr, p.stdin):
                    if f:
                        f.close()
                p.wait(timeout=5)
            raise
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    # ----------------------------------------------------------------- status
    def _node_status(self, name: str, rec: dict) -> dict:
        init = self._ref(rec, "init")
        launcher = self._ref(rec, "launcher")
        fuse_proc = ProcRef.from_json((rec.get("fuse") or {}).get("proc"))
        running = bool(init and init.alive())
        state = "down"
        if running:
            state = "paused" if rec["cgroup"] and (cgroup_freeze_requested(rec["cgroup"])
                                                   or cgroup_frozen(rec["cgroup"])) else "up"
        elif launcher and launcher.alive():
            state = "starting"
        disk = {"mode": rec.get("disk_mode", "pass"), "loop": rec.get("loop"),
                "path_in_node": DISK_IN_NODE}
        if fuse_proc and fuse_proc.alive() and rec["fuse"]:
            try:
                disk.update(json.loads(fusedisk.control(rec["fuse"]["control"], "status", 2)))
            except (OSError, RuntimeError, ValueError):
                disk["view"] = "not answering"
        else:
            disk["view"] = "down"
        out = {"name": name, "id": rec["index"], "state": state, "address": rec["address"],
               "disk": disk, "init_pid": init.pid if init is not None and running else None,
               "launcher_pid": launcher.pid if launcher and launcher.alive() else None,
               "fuse_pid": fuse_proc.pid if fuse_proc and fuse_proc.alive() else None,
               "netns": rec["netns"], "cgroup": rec["cgroup"],
               "pids": cgroup_pids(rec["cgroup"]) if rec["cgroup"] else [],
               "ready_seconds": rec.get("ready_seconds")}
        if rec.get("pause"):
            out["paused_until"] = rec["pause"].get("until")
        return out

    def status(self) -> dict:
        st = self.state
        if st is None:
            return {"dir": str(self.dir), "exists": False, "nodes": []}
        return {"dir": str(self.dir), "exists": True, "mode": st["mode"],
                "prefix": st["prefix"], "disk": st["disk"],
                "switch_netns": st["switch_netns"], "up_seconds": st.get("up_seconds"),
                "nodes": [self._node_status(n, r) for n, r in st["nodes"].items()]}

    # ------------------------------------------------------------------- down
    def down(self, *, purge: bool = False, timeout: float = 20) -> dict:
        require_root()
        with self.locked():
            if self.state is None:
                if purge and self.dir.exists():
                    shutil.rmtree(self.dir, ignore_errors=True)
                if purge:  # the image directory a lab of this DIR would have made
                    shutil.rmtree(IMAGE_TMPFS / f"clusterfw-lab-{self.hash}", ignore_errors=True)
                return {"dir": str(self.dir), "removed": False, "leftovers": [], "purged": purge,
                        "kept": self._kept(None)}
            t0 = time.monotonic()
            problems: list[str] = []
            st = self._st()
            names = list(st["nodes"])

            def step(what, fn, *a):
                try:
                    return fn(*a)
                except Exception as exc:
                    problems.append(f"{what}: {exc}")
                    return None

            # let hung I/O finish so nodes can stop
            for name in names:
                rec = st["nodes"][name]
                fz = rec.get("fuse") or {}
                proc = ProcRef.from_json(fz.get("proc"))
                if proc and proc.alive():
                    with contextlib.suppress(LabError):
                        self._disk_control(rec, "mode pass")
            survivors = step("stopping nodes", self._stop_nodes, names, True, timeout) or {}
            for name, pids in survivors.items():
                if pids:
                    problems.append(f"{name}: processes {pids} survived")
            for name in names:
                rec = st["nodes"][name]
                step(f"{name} loop device", self._detach_loop, rec)
            for name in names:
                rec = st["nodes"][name]
                step(f"{name} disk view", self._stop_fuse, rec)
            for name in names:
                rec = st["nodes"][name]
                if rec["netns"]:
                    step(f"{name} netns", netns.delete, rec["netns"])
                    if not netns.exists(rec["netns"]):
                        rec["netns"] = None
                if rec["cgroup"]:
                    left = step(f"{name} cgroup", cgroup_remove, rec["cgroup"])
                    if left:
                        problems.append(f"{name}: cgroup dirs left: {left}")
                    else:
                        rec["cgroup"] = None
                self._save()
            if st["switch_netns"]:
                step("switch netns", netns.delete, st["switch_netns"])
                if not netns.exists(st["switch_netns"]):
                    st["switch_netns"] = None
            self._save()
            # loops over disk.img (bench) and anything inside DIR
            step("loop devices", self._detach_loops_under_dir)
            if st["mode"] == "nspawn":
                step("nspawn runtime files", self._nspawn_lock_cleanup)
            leftovers = self.leftovers()
            problems += leftovers
            if not problems:
                for d in RUNTIME_DIRS:
                    shutil.rmtree(self.dir / d, ignore_errors=True)
                for f in ("hosts", "lab.json.tmp"):
                    (self.dir / f).unlink(missing_ok=True)
                self.state_path.unlink(missing_ok=True)
                self.state = None
                if purge:
                    shutil.rmtree(self.dir, ignore_errors=True)
                    self._purge_image(st["disk"])
            else:
                self._save()
            result = {"dir": str(self.dir), "removed": not problems, "leftovers": problems,
                      "seconds": round(time.monotonic() - t0, 2), "purged": purge and not problems,
                      "kept": self._kept(st["disk"]) if not problems else []}
        if problems:
            raise LabError("down left resources behind (state kept, re-run down):\n  "
                           + "\n  ".join(problems))
        return result

    def _detach_loop(self, rec: dict) -> None:
        backing = self._backing(rec)
        devs = {d["name"] for d in loop_devices()
                if backing and (d.get("back-file") or "").startswith(backing)}
        if rec.get("loop"):
            devs.add(rec["loop"])
        for dev in devs:
            if any(d["name"] == dev for d in loop_devices()):
                run(["losetup", "-d", dev], timeout=15, check=False)
        ok = wait_for(lambda: not any(d["name"] in devs for d in loop_devices()), 10, 0.1)
        if not ok:
            raise LabError(f"loop device(s) {sorted(devs)} still attached")
        rec["loop"] = None
        self._save()

    def _kept(self, disk: dict | None) -> list[str]:
        """What ``down`` leaves for the next ``up`` (``--purge`` deletes it):
        the shared disk image and what is left in DIR (shared/ and any file
        of the user's), the lock file aside."""
        images = [Path(disk["image"])] if disk else [self.dir / "disk.img",
                                                     IMAGE_TMPFS / f"clusterfw-lab-{self.hash}" / "disk.img"]
        kept = [str(image) for image in images if image.exists()]
        if self.dir.is_dir():
            kept += [str(path) + ("/" if path.is_dir() else "") for path in sorted(self.dir.iterdir())
                     if path.name != "lab.lock" and str(path) not in kept]
        return kept

    def _purge_image(self, disk: dict) -> None:
        """``down --purge``: the disk image, and its directory if the lab made it."""
        image = Path(disk["image"])
        if str(image).startswith(str(self.dir) + "/"):
            return  # went with DIR
        if disk.get("image_dir_owned"):
            shutil.rmtree(image.parent, ignore_errors=True)
        else:
            image.unlink(missing_ok=True)

    def _detach_loops_under_dir(self) -> None:
        prefixes = tuple(self._image_dirs())
        for d in loop_devices():
            if (d.get("back-file") or "").startswith(prefixes):
                run(["losetup", "-d", d["name"]], timeout=15, check=False)
        wait_for(lambda: not any((d.get("back-file") or "").startswith(prefixes)
                                 for d in loop_devices()), 10, 0.1)

    def _stop_fuse(self, rec: dict) -> None:
        fz = rec.get("fuse")
        if not fz:
            return
        proc = ProcRef.from_json(fz.get("proc"))
        if proc and proc.alive():
            with contextlib.suppress(LabError):
                self._disk_control(rec, "mode pass")
            proc.signal(signal.SIGTERM)
            if not proc.wait_gone(5):
                self._unmount_fuse(fz["mount"])
                if not proc.wait_gone(3):
                    proc.signal(signal.SIGKILL)
                    proc.wait_gone(3)
        self._unmount_fuse(fz["mount"])
        if is_mounted(fz["mount"]):
            raise LabError(f"{fz['mount']} still mounted")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fz["control"])
        rec["fuse"] = None
        self._save()

    def leftovers(self) -> list[str]:
        """Host resources of this lab that still exist (empty after a clean down)."""
        out = []
        prefix = str(self.dir) + "/"
        for d in loop_devices():
            if (d.get("back-file") or "").startswith(tuple(self._image_dirs())):
                out.append(f"loop device {d['name']} -> {d['back-file']}")
        for mp, fstype in mountinfo():
            if mp.startswith(prefix):
                out.append(f"mount {mp} ({fstype})")
        if netns.NETNS_DIR.is_dir():
            for ns in os.listdir(netns.NETNS_DIR):
                if ns.startswith(self.prefix + "-"):
                    out.append(f"netns {ns}")
        for h, root in cgroup_hierarchies().items():
            for n in os.listdir(root):
                if n.startswith(f"clusterfw-lab-{self.hash}-"):
                    out.append(f"cgroup {root / n}")
        # a path inside DIR, or DIR itself as one argument (`lab resume --dir DIR`)
        needles = (prefix.encode(), b"\0" + str(self.dir).encode() + b"\0")
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if any(n in cmd for n in needles):
                shown = cmd.replace(b"\0", b" ").decode(errors="replace")[:100]
                out.append(f"process {pid}: {shown}")
        return out

    # ------------------------------------------------------------------ bench
    def bench_disk(self, name: str, count: int = 2000) -> dict:
        """Median/p99 4 KiB O_DIRECT read latency: node's loop (via FUSE) vs a direct loop."""
        rec = self._node(name)
        if not rec.get("loop"):
            raise LabError(f"node {name} has no loop device")
        st = self._st()

        def measure(dev: str) -> dict:
            fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
            buf = mmap.mmap(-1, 4096)
            nblocks = max(1, min(st["disk"]["size"] // 4096, 4096))
            ts = []
            try:
                for i in range(count):
                    t = time.perf_counter_ns()
                    os.preadv(fd, [buf], (i % nblocks) * 4096)
                    ts.append(time.perf_counter_ns() - t)
            finally:
                os.close(fd)
            ts.sort()
            return {"median_us": round(statistics.median(ts) / 1000, 1),
                    "p99_us": round(ts[int(len(ts) * 0.99) - 1] / 1000, 1)}

        via_fuse = measure(rec["loop"])
        direct_dev = run(["losetup", "--direct-io=on", "--read-only", "--show", "-f",
                          st["disk"]["image"]], timeout=30).stdout.strip()
        try:
            direct = measure(direct_dev)
        finally:
            run(["losetup", "-d", direct_dev], timeout=15, check=False)
        return {"node": name, "count": count, "block": 4096, "via_fuse": via_fuse,
                "direct_loop": direct,
                "added_median_us": round(via_fuse["median_us"] - direct["median_us"], 1)}
