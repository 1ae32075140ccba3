"""Fixtures for the lab infrastructure tests (real namespaces, loop devices, FUSE).

How this works: each lab fixture brings up a lab in a fresh directory and
ALWAYS calls ``down`` afterwards, failing the run if anything is left behind
(``Lab.leftovers``: loop devices, mounts, netns, cgroups, processes).  The
nspawn lab is session-scoped so the cached rootfs (/var/cache/clusterfw-lab,
built once per machine in about a minute) is extracted and booted once per
run.  Missing prerequisites skip these tests, unless CLUSTERFW_LAB_REQUIRE=1
(CI) turns the skip into a failure.
"""
from __future__ import annotations

import os
import shutil

import pytest
from lunfs import lun_dir

from clusterfw.lab import Lab
from clusterfw.lab.hostsys import missing_prerequisites

REQUIRE = os.environ.get("CLUSTERFW_LAB_REQUIRE") == "1"

HEARTBEAT = r'''
import os, sys, time
node = sys.argv[1]
path = f"/lab/shared/hb-{node}"
n = 0
while True:
    n += 1
    with open(path + ".tmp", "w") as f:
        f.write(f"{n} {os.getpid()}\n")
    os.replace(path + ".tmp", path)
    time.sleep(0.1)
'''


@pytest.fixture(scope="session")
def lab_need():
    """lab_need(mode): skip (or fail under CLUSTERFW_LAB_REQUIRE=1) without prerequisites."""
    def need(mode: str) -> None:
        why = missing_prerequisites(mode)
        if why is None and mode == "nspawn" and shutil.which("debootstrap") is None:
            why = "missing debootstrap (apt-get install -y debootstrap)"
        if why:
            if REQUIRE:
                pytest.fail(f"lab prerequisites missing: {why}")
            pytest.skip(why)
    return need


def bring_down(lab: Lab) -> None:
    lab.down(timeout=10, purge=True)  # purge: also the extracted rootfs
    left = lab.leftovers()
    assert not left, f"down left: {left}"


@pytest.fixture(scope="session")
def nspawn_lab(lun_root, lab_need):
    lab_need("nspawn")
    lab = Lab(lun_dir(lun_root, "nspawn-lab"))
    try:
        # Infrastructure only: raw blocks on an unformatted disk, no daemon.
        lab.up(3, "nspawn", disk_size=64 << 20, autostart=False, prepare_disk=False)
        yield lab
    finally:
        bring_down(lab)


@pytest.fixture(scope="module")
def process_lab(lun_root, lab_need):
    lab_need("process")
    lab = Lab(lun_dir(lun_root, "process-lab"))
    (lab.dir / "shared").mkdir(parents=True, exist_ok=True)
    (lab.dir / "shared" / "heartbeat.py").write_text(HEARTBEAT)
    try:
        lab.up(3, "process", disk_size=64 << 20, prepare_disk=False,
               node_command="python3 /lab/shared/heartbeat.py {node}")
        yield lab
    finally:
        bring_down(lab)
