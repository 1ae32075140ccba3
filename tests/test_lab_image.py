"""Where the lab puts its shared disk image (no root, no lab needed): on a
tmpfs by default, and a warning for a directory that is not one.  An image
on the host's ext4 made every O_DSYNC heartbeat write wait for the journal
and the local disk's cache flush, and on a busy host all nodes fenced at
once (docs/lab.md)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from clusterfw.lab import lab as lab_mod
from clusterfw.lab.hostsys import TMPFS_MAGIC, fs_type, is_tmpfs


def _statfs_type(path: Path) -> int:
    """f_type as coreutils' stat(1) reads it with statfs(2): a check that does
    not use the code under test."""
    out = subprocess.run(["stat", "--file-system", "--format=%t", str(path)], capture_output=True, text=True,
                         check=True, timeout=10)
    return int(out.stdout.strip(), 16)


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


@pytest.fixture
def shm() -> Path:
    if not Path("/dev/shm").is_dir() or _statfs_type(Path("/dev/shm")) != TMPFS_MAGIC:
        pytest.fail("/dev/shm is not a tmpfs on this host: the lab's default image directory needs one")
    return Path("/dev/shm")


def test_fs_type_is_statfs_f_type(tmp_path, shm):
    assert fs_type(shm) == _statfs_type(shm) == TMPFS_MAGIC
    assert fs_type(tmp_path) == _statfs_type(tmp_path)


@pytest.mark.parametrize("lab_dir", ["default", "tmp"])
def test_the_default_image_directory_is_on_a_tmpfs(tmp_path, shm, lab_dir):
    directory = lab_mod.DEFAULT_DIR if lab_dir == "default" else tmp_path / "lab"
    image_dir = lab_mod.Lab(directory).default_image_dir()
    assert _statfs_type(_existing(image_dir)) == TMPFS_MAGIC, image_dir
    if _statfs_type(_existing(directory)) != TMPFS_MAGIC:  # not DIR itself: a directory of its own
        assert image_dir.parent == shm and image_dir.name.startswith("clusterfw-lab-")
        assert image_dir != lab_mod.Lab(tmp_path / "other").default_image_dir()  # one per lab


def test_a_lab_directory_on_a_tmpfs_keeps_its_image(shm):
    directory = shm / "clusterfw-test-lab-dir"  # not created: its parent decides
    assert lab_mod.Lab(directory).default_image_dir() == directory


def test_an_image_directory_that_is_not_a_tmpfs_is_warned_about(tmp_path, shm):
    if _statfs_type(tmp_path) == TMPFS_MAGIC:
        pytest.skip("the test's temporary directory is itself on a tmpfs")
    warning = lab_mod.image_dir_warning(tmp_path)
    assert warning is not None and str(tmp_path) in warning and "not on a tmpfs" in warning
    assert "O_DSYNC" in warning and "fence" in warning and "--image-dir" in warning
    assert lab_mod.image_dir_warning(shm) is None
    assert is_tmpfs(shm / "not-yet" / "created") and not is_tmpfs(tmp_path / "not-yet")
