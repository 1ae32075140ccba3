"""`clusterfw lab down` says what it kept for the next `up` and how to
delete it: the formatter on the results `Lab.down` returns, and `Lab.down`
itself on a lab directory that holds a disk image and shared/ but no
running lab (no boot needed; root, as every `lab` command)."""
from __future__ import annotations

import os

import pytest

from clusterfw.cli import lab as cli_lab


def test_down_names_what_it_kept_and_the_purge_command():
    text = cli_lab.format_down({"dir": "/tmp/l", "removed": True, "seconds": 3.2, "purged": False,
                                "kept": ["/dev/shm/clusterfw-lab-1/disk.img", "/tmp/l/shared/"]})
    assert text.startswith("lab /tmp/l: down in 3.2 s; kept for the next 'clusterfw lab up'")
    assert "/dev/shm/clusterfw-lab-1/disk.img, /tmp/l/shared/" in text
    assert "'clusterfw lab down --purge --dir /tmp/l'" in text
    purged = cli_lab.format_down({"dir": "/tmp/l", "removed": True, "seconds": 1, "purged": True, "kept": []})
    assert "purged" in purged and "kept" not in purged
    nothing = cli_lab.format_down({"dir": "/tmp/l", "removed": False, "purged": False, "kept": []})
    assert nothing == "lab /tmp/l: down (nothing was up); nothing kept"


@pytest.mark.skipif(os.geteuid() != 0, reason="clusterfw lab needs root")
def test_lab_down_reports_the_disk_image_and_shared_it_keeps(tmp_path):
    from clusterfw.lab import Lab

    lab_dir = tmp_path / "lab"
    (lab_dir / "shared").mkdir(parents=True)
    (lab_dir / "disk.img").write_bytes(b"\0" * 4096)
    res = Lab(str(lab_dir), str(tmp_path / "cache")).down()
    assert res["removed"] is False and res["purged"] is False
    assert str(lab_dir / "disk.img") in res["kept"] and str(lab_dir / "shared") + "/" in res["kept"]
    assert (lab_dir / "disk.img").exists()
    text = cli_lab.format_down(res)
    assert str(lab_dir / "disk.img") in text and "--purge" in text
    res = Lab(str(lab_dir), str(tmp_path / "cache")).down(purge=True)
    assert res["purged"] is True and not lab_dir.exists()
