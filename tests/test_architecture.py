"""The architecture is checked, not hoped for: the import contracts in
setup.cfg (``[importlinter:contract:*]``: the pure core imports nothing that
touches the world; the on-disk format and the simulator stay below the
daemon, the lab and the commands) and mypy over the whole package."""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_import_contracts_are_kept() -> None:
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports is missing: install the test extra (pip install -e '.[test]')")
    out = _run(lint, "--config", "setup.cfg")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_mypy_finds_no_type_errors() -> None:
    out = _run(sys.executable, "-m", "mypy", "--config-file", "setup.cfg")
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
