"""scripts/setup.sh on a pristine Debian 12: one command, twice.

How this works: the lab's cached node rootfs (clusterfw/lab/rootfs.py, a
Debian 12 minbase with systemd and python3; built once per machine) is copied
to a scratch directory on a tmpfs (/dev/shm, as the lab's images: see
tests/lunfs.py), and everything the lab added to it is taken out again: its
venv /opt/clusterfw, the /usr/local/bin/clusterfw launcher, its mount points
and marker files, and the python3-venv package (a stock Debian 12 does not
have it).  The cache itself is only read.  This checkout is copied in at
/usr/local/src/clusterfw, and every step runs in ``systemd-nspawn
--directory=COPY`` (not booted; it shares the host's network, which apt and
pip need; the host's pip CA bundle is passed in, see host_pip_trust):
setup.sh, then the checks, then setup.sh again over a hand-edited
config and udev rule, which it must keep.  Finally ``clusterfw --version``
and ``clusterfw sim --seeds 5 --nodes 3`` run there with systemd's default
PATH.  The copy is removed even when a step fails.

Like every nspawn test, run it under ``flock /tmp/clusterfw-nspawn.lock``.
It needs the network (deb.debian.org and PyPI); without it setup.sh's
apt-get update fails and so does this test.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import clusterfw
from clusterfw.lab import rootfs

pytestmark = [pytest.mark.lab, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SRC_IN = "/usr/local/src/clusterfw"
# systemd's default PATH for services (what the units get), not the host's
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NSPAWN_RUN = Path("/run/systemd/nspawn")
# what rootfs.build_tarball adds to the debootstrapped tree
LAB_ADDITIONS = ("opt/clusterfw", "opt/clusterfw-app", "usr/local/bin/clusterfw", "etc/clusterfw",
                 "lab", "etc/clusterfw-lab-rootfs", "etc/systemd/system-preset/10-clusterfw-lab.preset",
                 "usr/local/lib/systemd/system")
STEP_TIMEOUT = 900
HOST_CA = "/run/host-pip-ca.pem"
COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache",
                                     ".mypy_cache", ".hypothesis", "build", "dist")


def host_pip_trust() -> list[str]:
    """nspawn options giving the container the CA bundle the host's pip is
    told to trust (PIP_CERT, else SSL_CERT_FILE or REQUESTS_CA_BUNDLE), if
    any: on a network whose HTTPS proxy re-signs certificates, pip inside
    fails without it, as a real host there would without its admin's
    pip.conf.  Like --resolv-conf=copy-host, it is the host's network
    setup, not part of the system under test."""
    for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        path = os.environ.get(var)
        if path and os.path.isfile(path):
            return [f"--bind-ro={path}:{HOST_CA}", f"--setenv=PIP_CERT={HOST_CA}"]
    return []


class Container:
    """A copy of the cached rootfs; ``run`` executes a shell script in it."""

    def __init__(self, root: Path):
        self.root = root
        self.machine = f"cfw-setup-{os.getpid()}"
        self.steps: list[tuple[str, float]] = []
        self.extra = host_pip_trust()

    def run(self, what: str, script: str, timeout: float = STEP_TIMEOUT,
            check: bool = True) -> subprocess.CompletedProcess:
        argv = ["systemd-nspawn", "--quiet", f"--directory={self.root}", "--register=no", "--keep-unit",
                f"--machine={self.machine}", "--console=pipe", "--resolv-conf=copy-host",
                "--timezone=off", "--link-journal=no", "--setenv=LANG=C.UTF-8",
                f"--setenv=PATH={SYSTEMD_PATH}", "--chdir=/", *self.extra, "--",
                "/bin/bash", "-euo", "pipefail", "-c", script]
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()  # nspawn takes its container down with it
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            pytest.fail(f"{what}: timed out after {timeout:g}s; output:\n{out}\n{err}")
        took = time.monotonic() - t0
        self.steps.append((what, took))
        print(f"\n[measure] {what}: {took:.1f} s (exit {proc.returncode})")
        cp = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        if check and cp.returncode != 0:
            pytest.fail(f"{what}: exit {cp.returncode}\n--- stdout\n{out}\n--- stderr\n{err}")
        return cp

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(prefix)]


def _nspawn_leftovers(machine: str, tree: Path) -> None:
    """What nspawn leaves in /run for its container (see Lab._nspawn_lock_cleanup)."""
    shutil.rmtree(NSPAWN_RUN / "propagate" / machine, ignore_errors=True)
    with contextlib.suppress(OSError):
        s = os.stat(tree)
        (NSPAWN_RUN / "locks" / f"inode-{s.st_dev}:{s.st_ino}").unlink(missing_ok=True)
    for d in (NSPAWN_RUN / "propagate", NSPAWN_RUN / "locks", NSPAWN_RUN):
        with contextlib.suppress(OSError):
            d.rmdir()  # only if empty


@pytest.fixture
def pristine(lab_need, lun_root):
    """A Container on a fresh copy of the cached Debian 12 rootfs, minus the lab's additions."""
    lab_need("nspawn")
    cache = Path(os.environ.get("CLUSTERFW_LAB_CACHE", str(rootfs.DEFAULT_CACHE)))
    tree = rootfs.ensure_rootfs(cache)  # builds the cache once per machine, else only reads it
    work = Path(tempfile.mkdtemp(prefix="setup-sh-", dir=lun_root))  # a tmpfs: see tests/lunfs.py
    box = Container(work / "rootfs")
    try:
        t0 = time.monotonic()
        with rootfs.cache_lock(cache):  # no extraction under our feet
            subprocess.run(["cp", "-a", "--reflink=auto", str(tree), str(box.root)], check=True, timeout=300)
        for rel in LAB_ADDITIONS:
            p = box.root / rel
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        shutil.copytree(REPO, box.path(SRC_IN), ignore=COPY_IGNORE, symlinks=True)
        print(f"\n[measure] rootfs copy ({tree.name}) and checkout copy: {time.monotonic() - t0:.1f} s")
        yield box
    finally:
        left = _mounts_under(work)
        if left:  # never recurse into a mount
            pytest.fail(f"{work} kept: still mounted under it: {left}")
        shutil.rmtree(work, ignore_errors=True)
        _nspawn_leftovers(box.machine, box.root)
        assert not work.exists(), f"{work} could not be removed"


def _wants_links(root: Path) -> list[str]:
    """clusterfw units enabled anywhere (a link in some *.wants/ or *.requires/)."""
    found = []
    for base in ("etc/systemd/system", "usr/local/lib/systemd/system", "lib/systemd/system"):
        d = root / base
        if d.is_dir():
            found += [str(p.relative_to(root)) for p in d.glob("*.*/clusterfw*")
                      if p.parent.name.endswith((".wants", ".requires"))]
    return found


def test_setup_sh_installs_clusterfw_on_a_pristine_debian_12(pristine: Container) -> None:
    box = pristine
    t_all = time.monotonic()

    # A stock Debian 12: no venv module, no clusterfw, and pip refuses the system Python.
    box.run("remove python3-venv (a stock Debian 12 has none)",
            "dpkg --purge python3-venv python3.11-venv >/dev/null\n"
            "if python3 -m venv /tmp/probe-venv >/dev/null 2>&1; then echo 'venv still works' >&2; exit 1; fi\n"
            "if command -v clusterfw || test -e /opt/clusterfw; then echo 'not pristine' >&2; exit 1; fi")
    assert (box.root / "usr/lib/python3.11/EXTERNALLY-MANAGED").exists()

    first = box.run("setup.sh, first run", f"cd {SRC_IN} && bash scripts/setup.sh")
    log1 = first.stderr
    for expected in ("installing apt packages", "creating the virtual environment /opt/clusterfw",
                     "linking /usr/local/bin/clusterfw -> /opt/clusterfw/bin/clusterfw",
                     "installing the unit /usr/local/lib/systemd/system/clusterfw.service",
                     "installing the udev rule /etc/udev/rules.d/60-clusterfw.rules",
                     "no /etc/clusterfw/clusterfw.conf yet",
                     "not running systemctl daemon-reload: systemd is not PID 1 here",
                     f"installed: clusterfw {clusterfw.__version__}"):
        assert expected in log1, f"setup.sh did not say {expected!r}:\n{log1}"

    # What it put in place.
    link = box.path("/usr/local/bin/clusterfw")
    assert link.is_symlink() and os.readlink(link) == "/opt/clusterfw/bin/clusterfw"
    cfg = box.path("/opt/clusterfw/pyvenv.cfg").read_text()
    assert re.search(r"^include-system-site-packages = true$", cfg, re.M), cfg
    for unit in sorted((REPO / "systemd").glob("*.service")):
        assert box.path(f"/usr/local/lib/systemd/system/{unit.name}").read_text() == unit.read_text()
    rule = box.path("/etc/udev/rules.d/60-clusterfw.rules")
    assert rule.read_text() == (REPO / "udev/60-clusterfw.rules").read_text()
    assert box.path("/etc/clusterfw/clusterfw.conf.example").read_text() == \
        (REPO / "systemd/clusterfw.conf.example").read_text()
    assert not box.path("/etc/clusterfw/clusterfw.conf").exists()
    assert _wants_links(box.root) == [], "setup.sh enabled a unit"

    checks = box.run("the installed command", "\n".join([
        "cd /",
        # editable: the venv imports the checkout, and the units' command exists
        "/opt/clusterfw/bin/python3 -I -c 'import clusterfw; print(clusterfw.__file__)'",
        "command -v clusterfw",
        "clusterfw --version",
        "/opt/clusterfw/bin/python3 -I -c 'import pytest, hypothesis, systemd.daemon, mfusepy, crc32c'",
        # exits 1 on an ExecStart= program that is not there ("is not executable")
        "for unit in /usr/local/lib/systemd/system/clusterfw*.service; do systemd-analyze verify \"$unit\"; done",
    ]))
    lines = checks.stdout.splitlines()
    assert lines[0] == f"{SRC_IN}/clusterfw/__init__.py", checks.stdout
    assert lines[1] == "/usr/local/bin/clusterfw", checks.stdout
    assert lines[2] == f"clusterfw {clusterfw.__version__}", checks.stdout
    assert "not executable" not in checks.stderr, checks.stderr

    # CI's path: the checkout's tests with the venv's Python (scripts/test picks it).
    tested = box.run("scripts/test in the checkout (test_install, import contracts)",
                     f"cd {SRC_IN} && scripts/test -p no:cacheprovider tests/test_install.py "
                     "tests/test_architecture.py::test_import_contracts_are_kept")
    assert re.search(r"^\d+ passed", tested.stdout.splitlines()[-1]), tested.stdout
    assert "skipped" not in tested.stdout and "failed" not in tested.stdout, tested.stdout

    # Idempotent, and what a person changed by hand is kept.
    box.path("/etc/clusterfw/clusterfw.conf").write_text("CLUSTERFW_DISK=/dev/mine\nCLUSTERFW_NODE=mine\n")
    edited = rule.read_text().replace('#TAG+="systemd"', 'TAG+="systemd"')
    assert edited != rule.read_text()
    rule.write_text(edited)
    second = box.run("setup.sh, second run", f"cd {SRC_IN} && bash scripts/setup.sh")
    log2 = second.stderr
    for expected in ("reusing the virtual environment /opt/clusterfw",
                     "/usr/local/bin/clusterfw -> /opt/clusterfw/bin/clusterfw (already there)",
                     "keeping the existing /etc/clusterfw/clusterfw.conf",
                     "keeping /etc/udev/rules.d/60-clusterfw.rules"):
        assert expected in log2, f"second run did not say {expected!r}:\n{log2}"
    assert box.path("/etc/clusterfw/clusterfw.conf").read_text().endswith("CLUSTERFW_NODE=mine\n")
    assert rule.read_text() == edited
    assert _wants_links(box.root) == [], "setup.sh enabled a unit"

    # The commands, with systemd's default PATH and nothing of the checkout's cwd.
    ran = box.run("clusterfw --version and sim --seeds 5 --nodes 3",
                  f"cd / && env -i PATH={SYSTEMD_PATH} clusterfw --version && "
                  f"env -i PATH={SYSTEMD_PATH} clusterfw sim --seeds 5 --nodes 3")
    assert ran.stdout.splitlines()[0] == f"clusterfw {clusterfw.__version__}", ran.stdout
    assert re.search(r"^violations: 0$", ran.stdout, re.M), ran.stdout
    assert "5 seeds x 3 nodes" in ran.stdout, ran.stdout

    print(f"\n[measure] whole test (without the copies): {time.monotonic() - t_all:.1f} s: "
          + ", ".join(f"{w} {s:.0f} s" for w, s in box.steps))
