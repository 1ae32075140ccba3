"""Where the tests put the emulated shared LUN: ``lun_root`` (a session
fixture, registered by tests/conftest.py) and ``lun_dir``.

``lun_root``: where the tests put the emulated shared LUN (the disk images
behind loop devices, and whole labs, whose FUSE views serve the image).

How this works: a directory on a tmpfs (``/dev/shm``) for the whole session,
removed at its end.  A SAN's latency does not depend on the load of the
host's local disk; an image file on the host's ext4 does: its ``fdatasync``
(every O_DSYNC heartbeat write) waits for the ext4 journal and the local
disk's cache flush, which stall for 200-400 ms at times while other tests
write.  With the lab's 200 ms io_timeout such a stall fences a node -- a
correct fence on a disk that slow, but a fault of the test machine, not of
the code under test.  Tests that want a slow or failing disk inject it
(``clusterfw lab cut-disk``, the simulator's disk faults).  Without a
usable tmpfs (too little space) the session's temporary directory is used.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

TMPFS = "/dev/shm"
TMPFS_FREE_MIN = 4 << 30  # labs extract a rootfs (~0.4 GiB) next to their image


def _usable_tmpfs() -> bool:
    try:
        st = os.statvfs(TMPFS)
    except OSError:
        return False
    if st.f_bavail * st.f_frsize < TMPFS_FREE_MIN:
        return False
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == TMPFS and line.split()[2] == "tmpfs" for line in f)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(prefix)]


@pytest.fixture(scope="session")
def lun_root(tmp_path_factory):
    if not _usable_tmpfs():
        yield tmp_path_factory.mktemp("lun")
        return
    root = Path(tempfile.mkdtemp(prefix="clusterfw-tests-", dir=TMPFS))
    try:
        yield root
    finally:
        left = _mounts_under(root)
        if left:  # never recurse into a mount a failed teardown left behind
            print(f"\nwarning: {root} kept: still mounted under it: {left}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def lun_dir(root: Path, prefix: str) -> Path:
    """A fresh directory under lun_root."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=root))
