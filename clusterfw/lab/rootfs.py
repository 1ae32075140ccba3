"""The node root filesystem for nspawn mode, and the project code that goes in it.

How this works
--------------
*Base rootfs (slow, cached).*  ``debootstrap --variant=minbase`` builds a
Debian bookworm tree with systemd and python3; it is then prepared once in a
chroot (empty ``/etc/machine-id``, no ``/etc/hostname``, root without password,
a venv at ``/opt/clusterfw`` holding the project's PyPI dependencies from
``setup.cfg``, a ``/usr/local/bin/clusterfw`` launcher, empty mount points) and
packed as ``rootfs-<key>.tar.zst`` in the cache directory
(``/var/cache/clusterfw-lab`` by default).  ``<key>`` hashes the suite, the
package list, the dependency list and ``FORMAT``, so changing any of them builds
a new base and an unchanged one is reused.  Dependency wheels are fetched with
the host's own pip (its configuration applies) for CPython 3.11 / manylinux and
installed in the chroot with ``--no-index``.  The tarball is extracted once
beside itself (``rootfs-<key>.d``); every node of every lab boots from that
tree read-only (``--volatile=overlay``: a tmpfs upper layer per boot).  A lock
file in the cache serialises concurrent builds.

*Project code (fast, every ``up``).*  A wheel of the repository the command runs
from is built (in a scratch copy, so the work tree is not touched; cached in
``CACHE/wheels`` by a digest of the sources, so it is rebuilt only after a
change) and unpacked into ``DIR/app/<digest>/``; nodes get it bind-mounted read-only at
``/opt/clusterfw-app``, which a ``.pth`` file in the base venv puts on
``sys.path``.  Unit files from the repository's ``systemd/`` directory (only if
it has ``clusterfw.service``) are copied to ``DIR/units/`` and bind-mounted at
``/usr/local/lib/systemd/system`` (a unit search path), with
``multi-user.target.wants`` links only when autostart is asked for (and
``clusterfw.service.wants`` links, for the units it wants, always).  So code
changes show up on the next ``up``/``restart`` without touching the base.
"""
from __future__ import annotations

import configparser
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from .hostsys import LabError, log, require_tools, run

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "iproute2",
    "iputils-ping", "udev", "util-linux", "kmod", "procps", "python3-dbus-fast",
)
FORMAT = 2  # bump when the preparation below changes
ROOTFS_PYTHON = "3.11"  # bookworm's python3

VENV = "/opt/clusterfw"
APP_MOUNT = "/opt/clusterfw-app"
UNITS_MOUNT = "/usr/local/lib/systemd/system"
NODE_CONF_DIR = "/etc/clusterfw"
DEFAULT_CACHE = Path("/var/cache/clusterfw-lab")
QUIET_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
               "fstrim.timer", "dpkg-db-backup.timer", "e2scrub_reap.service")

CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
}

LAUNCHER = f"""#!{VENV}/bin/python3
# clusterfw launcher installed by `clusterfw lab`; the code itself is
# bind-mounted at {APP_MOUNT} (see {VENV}/lib/python*/site-packages/clusterfw-lab.pth)
import sys
from clusterfw.cli import main
sys.exit(main())
"""


# --------------------------------------------------------------------------
# the project

def project_root() -> Path | None:
    """The source tree of the running clusterfw package, if it is one."""
    import clusterfw
    root = Path(clusterfw.__file__).resolve().parent.parent
    if (root / "setup.cfg").exists() or (root / "pyproject.toml").exists():
        return root
    return None


def install_requires(root: Path | None) -> list[str]:
    """The project's PyPI dependencies (setup.cfg [options] install_requires)."""
    if root is None or not (root / "setup.cfg").exists():
        return []
    cp = configparser.ConfigParser()
    cp.read(root / "setup.cfg")
    raw = cp.get("options", "install_requires", fallback="")
    return [x.strip() for x in raw.splitlines() if x.strip() and not x.strip().startswith("#")]


def cache_key(deps: list[str]) -> str:
    blob = json.dumps({"suite": SUITE, "variant": VARIANT, "packages": sorted(PACKAGES),
                       "deps": sorted(deps), "format": FORMAT,
                       "arch": platform.machine()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tarball_path(cache_dir: Path, deps: list[str]) -> Path:
    return cache_dir / f"rootfs-{cache_key(deps)}.tar.zst"


# --------------------------------------------------------------------------
# base rootfs

def apt_mirror() -> str:
    """The Debian mirror this host's apt uses for SUITE/main (or the override)."""
    env = os.environ.get("CLUSTERFW_LAB_MIRROR")
    if env:
        return env
    try:
        out = run(["apt-cache", "policy"], timeout=60).stdout
    except LabError:
        out = ""
    pat = re.compile(rf"^\s*\d+\s+(\S+)\s+{SUITE}/main\s+\S+\s+Packages\s*$")
    for line in out.splitlines():
        m = pat.match(line)
        if m:
            return m.group(1)
    raise LabError(
        f"cannot tell which Debian mirror to debootstrap {SUITE} from: this host's "
        f"apt has no '{SUITE}/main' source; set CLUSTERFW_LAB_MIRROR=URL "
        "(run 'apt-get update' first if the host is Debian 12)", 2)


def _stream(argv: list[str], *, timeout: float, prefix: str, env=None, cwd=None) -> None:
    """Run argv, copying its output line by line to stderr (progress)."""
    log(f"$ {' '.join(argv)}")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, env=env, cwd=cwd,
                            bufsize=1)
    deadline = time.monotonic() + timeout
    tail: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-20:]
            print(f"  {prefix}| {line}", file=sys.stderr, flush=True)
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(argv, timeout)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise LabError(f"timed out after {timeout:g}s: {' '.join(argv)}") from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        raise LabError(f"{argv[0]} failed with exit code {proc.returncode}; last output:\n"
                       + "\n".join(tail))


def _chroot(root: Path, argv: list[str], timeout: float = 300, stream: bool = False) -> None:
    full = ["chroot", str(root), *argv]
    if stream:
        _stream(full, timeout=timeout, prefix="chroot", env=CHROOT_ENV)
    else:
        run(full, timeout=timeout, env=CHROOT_ENV)


def _download_wheels(deps: list[str], dest: Path) -> None:
    """Wheels of deps for the rootfs python (CPython 3.11, glibc x86_64 or host arch)."""
    if not deps:
        return
    arch = platform.machine()
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
            "--dest", str(dest), "--only-binary=:all:",
            "--python-version", ROOTFS_PYTHON, "--implementation", "cp"]
    for plat in (f"manylinux2014_{arch}", f"manylinux_2_28_{arch}",
                 f"manylinux_2_31_{arch}", f"manylinux_2_34_{arch}",
                 f"manylinux_2_35_{arch}", f"manylinux_2_36_{arch}"):
        argv += ["--platform", plat]
    _stream(argv + deps, timeout=600, prefix="pip")


def build_tarball(cache_dir: Path, deps: list[str]) -> Path:
    """debootstrap + prepare + pack; returns the tarball. Slow (about a minute)."""
    require_tools(["debootstrap", "zstd", "tar", "chroot"])
    out = tarball_path(cache_dir, deps)
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"build-{cache_key(deps)}-", dir=cache_dir))
    root = work / "rootfs"
    t0 = time.monotonic()
    try:
        mirror = apt_mirror()
        log(f"building node rootfs ({SUITE} {VARIANT}: {', '.join(PACKAGES)}) "
            f"from {mirror}; this takes about a minute")
        _stream(["debootstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}",
                 SUITE, str(root), mirror], timeout=1800, prefix="debootstrap")
        log("preparing rootfs")
        (root / "etc/machine-id").write_text("")
        for p in ("etc/hostname",):
            (root / p).unlink(missing_ok=True)
        _chroot(root, ["passwd", "-d", "root"])
        # no periodic maintenance jobs in lab nodes
        _chroot(root, ["systemctl", "mask", *QUIET_UNITS])
        # first boot (empty machine-id) applies presets, whose default is
        # "enable": keep the project's units off unless the lab enables them
        preset = root / "etc/systemd/system-preset"
        preset.mkdir(parents=True, exist_ok=True)
        (preset / "10-clusterfw-lab.preset").write_text("disable clusterfw*\n")
        for d in ("lab/shared", NODE_CONF_DIR.lstrip("/"), APP_MOUNT.lstrip("/"),
                  UNITS_MOUNT.lstrip("/")):
            (root / d).mkdir(parents=True, exist_ok=True)
        log(f"creating venv {VENV} with {', '.join(deps) or 'no dependencies'}")
        _chroot(root, ["python3", "-m", "venv", VENV], timeout=300)
        wheels = root / "tmp/clusterfw-wheels"
        wheels.mkdir(parents=True)
        _download_wheels(deps, wheels)
        if deps:
            _chroot(root, [f"{VENV}/bin/python3", "-m", "pip", "install", "--isolated",
                           "--no-index", "--no-cache-dir", "--disable-pip-version-check",
                           "--find-links", "/tmp/clusterfw-wheels", *deps],
                    timeout=600, stream=True)
        shutil.rmtree(wheels)
        site = sorted((root / VENV.lstrip("/")).glob("lib/python3*/site-packages"))
        if not site:
            raise LabError("venv in the rootfs has no site-packages directory")
        (site[0] / "clusterfw-lab.pth").write_text(APP_MOUNT + "\n")
        launcher = root / "usr/local/bin/clusterfw"
        launcher.write_text(LAUNCHER)
        launcher.chmod(0o755)
        _chroot(root, ["apt-get", "clean"])
        for listed in (root / "var/lib/apt/lists").glob("*"):
            if listed.is_file():
                listed.unlink()
        (root / "etc/clusterfw-lab-rootfs").write_text(
            json.dumps({"key": cache_key(deps), "packages": list(PACKAGES),
                        "deps": deps, "format": FORMAT}) + "\n")
        log(f"packing {out}")
        tmp_out = out.with_name(out.name + ".tmp")
        run(["tar", "--zstd", "--numeric-owner", "--xattrs", "-C", str(root),
             "-cf", str(tmp_out), "."], timeout=600)
        os.replace(tmp_out, out)
        log(f"rootfs built in {time.monotonic() - t0:.0f}s: {out} "
            f"({out.stat().st_size / 1e6:.0f} MB)")
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for partial in cache_dir.glob("*.tar.zst.tmp"):
            partial.unlink(missing_ok=True)


@contextlib.contextmanager
def cache_lock(cache_dir: Path, timeout: float = 1800):
    """Serialise builds/extractions of concurrent `up`s sharing one cache."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"{cache_dir}/.lock held for {timeout:g}s") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


def rootfs_in_use(tree: Path) -> list[int]:
    """PIDs of systemd-nspawn processes booted from tree (any lab)."""
    needle = str(tree).encode()
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"systemd-nspawn") and needle in argv:
            pids.append(int(pid))
    return pids


def ensure_rootfs(cache_dir: Path, rebuild: bool = False) -> Path:
    """The extracted, read-only node rootfs (building/extracting as needed).

    The tree lives beside its tarball (``rootfs-<key>.d``) and is shared by
    every lab on the machine; nodes never write it (``--volatile=overlay``)."""
    deps = install_requires(project_root())
    with cache_lock(cache_dir):
        tarball = tarball_path(cache_dir, deps)
        tree = tarball.with_name(tarball.name.removesuffix(".tar.zst") + ".d")
        if rebuild or not tarball.exists():
            if rebuild and rootfs_in_use(tree):
                raise LabError(f"cannot rebuild: {tree} is in use by running nodes "
                               f"(nspawn PIDs {rootfs_in_use(tree)}); take their labs down")
            build_tarball(cache_dir, deps)
        ensure_extracted(tarball, tree)
        return tree


def ensure_extracted(tarball: Path, dest: Path) -> None:
    """Unpack tarball at dest unless dest already holds that very tarball."""
    marker = dest.with_name(dest.name + ".id")
    st = tarball.stat()
    ident = f"{tarball.name} {st.st_size} {st.st_mtime_ns}"
    if dest.is_dir() and marker.exists() and marker.read_text().strip() == ident:
        return
    if dest.exists() and rootfs_in_use(dest):
        raise LabError(f"{dest} is stale but in use by running nodes; take their labs down")
    log(f"extracting {tarball.name} into {dest}")
    t0 = time.monotonic()
    marker.unlink(missing_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    run(["tar", "--zstd", "--numeric-owner", "--xattrs", "-C", str(tmp), "-xf",
         str(tarball)], timeout=600)
    os.replace(tmp, dest)
    marker.write_text(ident + "\n")
    log(f"extracted in {time.monotonic() - t0:.1f}s")


# --------------------------------------------------------------------------
# project code, every `up`

def _wheel_tools_present() -> bool:
    try:
        import setuptools  # noqa: F401
        import wheel  # noqa: F401
        return True
    except ImportError:
        try:
            import setuptools
            return tuple(int(x) for x in setuptools.__version__.split(".")[:2]) >= (70, 1)
        except (ImportError, ValueError):
            return False


BUILD_FILES = ("setup.cfg", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
WHEELS_KEPT = 8


def _source_files(root: Path) -> list[Path]:
    """What the wheel is built from: packaging files and the clusterfw package."""
    files = [root / f for f in BUILD_FILES if (root / f).is_file()]
    files += sorted(p for p in (root / "clusterfw").rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts
                    and p.suffix not in (".pyc", ".pyo"))
    return files


def _source_digest(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def project_wheel(cache_dir: Path) -> Path:
    """A wheel of the running source tree, cached by a digest of its sources."""
    root = project_root()
    assert root is not None
    files = _source_files(root)
    digest = _source_digest(root, files)
    wheels = cache_dir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    cached = wheels / f"clusterfw-src-{digest}.whl"
    if cached.exists():
        return cached
    with tempfile.TemporaryDirectory(prefix="wheel-", dir=cache_dir) as tmpd:
        tmp = Path(tmpd)
        src = tmp / "src"
        for f in files:
            dst = src / f.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst)
        if not (src / "README.md").exists():  # setup.cfg's long_description
            (src / "README.md").write_text("clusterfw\n")
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                "--disable-pip-version-check", "-w", str(tmp / "out"), str(src)]
        if _wheel_tools_present():
            argv.insert(argv.index("--no-deps"), "--no-build-isolation")
        log("building the project wheel")
        run(argv, timeout=300)
        whl = next((tmp / "out").glob("clusterfw-*.whl"), None)
        if whl is None:
            raise LabError("pip wheel produced no clusterfw wheel")
        shutil.copy2(whl, cached.with_suffix(".tmp"))
        os.replace(cached.with_suffix(".tmp"), cached)
    old = sorted(wheels.glob("clusterfw-src-*.whl"), key=lambda p: p.stat().st_mtime)
    for p in old[:-WHEELS_KEPT]:
        p.unlink(missing_ok=True)
    return cached


def build_app(lab_dir: Path, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Unpack a wheel of the running project into DIR/app/<digest>/; returns it.

    The wheel is rebuilt only when the sources changed (cached in the cache
    directory by source digest), so an unchanged tree costs well under a second."""
    root = project_root()
    apps = lab_dir / "app"
    apps.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if root is not None:
        whl = project_wheel(cache_dir)
        digest = whl.stem.removeprefix("clusterfw-src-")[:12]
        dest = apps / digest
        if not dest.exists():
            stage = apps / f".{digest}.tmp"
            shutil.rmtree(stage, ignore_errors=True)
            with zipfile.ZipFile(whl) as zf:
                zf.extractall(stage)
            os.replace(stage, dest)
    else:  # an installed package without sources: copy it as it is
        import clusterfw
        pkg = Path(clusterfw.__file__).resolve().parent
        files = sorted(p for p in pkg.rglob("*.py"))
        digest = _source_digest(pkg, files)[:12]
        dest = apps / digest
        if not dest.exists():
            stage = apps / f".{digest}.tmp"
            shutil.rmtree(stage, ignore_errors=True)
            shutil.copytree(pkg, stage / "clusterfw",
                            ignore=shutil.ignore_patterns("__pycache__"))
            os.replace(stage, dest)
    log(f"project code ready in {time.monotonic() - t0:.1f}s: {dest}")
    return dest


def build_units(lab_dir: Path, autostart: bool) -> Path | None:
    """Copy the repo's systemd units (if clusterfw.service exists) for the nodes."""
    root = project_root()
    src = root / "systemd" if root else None
    dest = lab_dir / "units"
    if dest.exists():
        shutil.rmtree(dest)
    if src is None or not (src / "clusterfw.service").exists():
        return None
    dest.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.suffix not in (".service", ".socket", ".target", ".timer",
                                               ".path"):
            continue
        shutil.copy2(f, dest / f.name)
        text = f.read_text(errors="replace")
        # What `systemctl enable` would link: WantedBy=multi-user.target only
        # with autostart; WantedBy= another unit (clusterfw-events.service is
        # wanted by clusterfw.service) always, so it starts whenever that does.
        for line in re.findall(r"^\s*WantedBy\s*=(.*)$", text, re.M):
            for target in line.split():
                if target == "multi-user.target" and not autostart:
                    continue
                wants = dest / f"{target}.wants"
                wants.mkdir(exist_ok=True)
                (wants / f.name).symlink_to(f"../{f.name}")
    return dest
