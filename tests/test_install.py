"""What an installed clusterfw looks like, checked without installing it:
``clusterfw --version``, and the files scripts/setup.sh puts in place (units
and the udev rule name the command by its absolute path, the one setup.sh
links; the rule's autostart line is commented).  The real install, on a
pristine Debian 12, is tests/lab/test_setup_sh.py."""
from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import clusterfw
from clusterfw import cli

REPO = Path(__file__).resolve().parents[1]
COMMAND = "/usr/local/bin/clusterfw"  # what scripts/setup.sh links into the venv


def _declared_version() -> str:
    try:
        return metadata.version("clusterfw")
    except metadata.PackageNotFoundError:
        return clusterfw.__version__


def test_version_prints_the_package_version_and_exits_0(capsys):
    assert cli.main(["--version"]) == 0
    out, err = capsys.readouterr()
    assert out == f"clusterfw {_declared_version()}\n" and err == ""
    assert re.fullmatch(r"clusterfw \d+\.\d+\.\d+\S*\n", out), out


def test_version_as_an_option_of_the_full_parser(capsys):
    """``--version`` is also an option of the parser (so --help lists it),
    and it wins over a command given after it, like any --version."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version", "sim"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"clusterfw {_declared_version()}\n"
    assert "--version" in cli.build_parser().format_help()


def test_version_falls_back_to_dunder_version(monkeypatch, capsys):
    def missing(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(metadata, "version", missing)
    monkeypatch.setattr(clusterfw, "__version__", "9.8.7", raising=False)
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == "clusterfw 9.8.7\n"


def test_version_without_metadata_or_dunder_version_says_so(monkeypatch, capsys):
    def missing(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(metadata, "version", missing)
    monkeypatch.delattr(clusterfw, "__version__")
    assert cli.main(["--version"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("clusterfw: cannot tell the version: no 'clusterfw' package metadata")
    assert "scripts/setup.sh" in err


def test_version_of_the_command_itself():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "clusterfw", "--version"], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"clusterfw {_declared_version()}\n"


def test_the_package_version_is_single_sourced():
    """setup.cfg takes its version from clusterfw.__version__, so the
    metadata --version prints and the source tree cannot disagree."""
    cp = configparser.ConfigParser()
    cp.read(REPO / "setup.cfg")
    assert cp.get("metadata", "version") == "attr: clusterfw.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+", clusterfw.__version__)


@pytest.mark.parametrize("unit", sorted(p.name for p in (REPO / "systemd").glob("*.service")))
def test_units_run_the_command_by_its_absolute_path(unit):
    """systemd's default PATH need not hold the command: every Exec*= line
    names /usr/local/bin/clusterfw (or another absolute path), never
    /usr/bin/env or a bare name."""
    text = (REPO / "systemd" / unit).read_text()
    execs = re.findall(r"^\s*(Exec\w+)\s*=\s*(.*)$", text, re.M)
    assert any(key == "ExecStart" for key, _ in execs), f"{unit} has no ExecStart="
    for key, value in execs:
        program = value.lstrip("@-:+!").split()[0]
        assert program.startswith("/"), f"{unit}: {key}={value}: not an absolute path"
        assert program != "/usr/bin/env", f"{unit}: {key}={value}: depends on PATH"
        if "clusterfw" in program:
            assert program == COMMAND, f"{unit}: {key} runs {program}, setup.sh links {COMMAND}"


def test_udev_rule_runs_the_command_by_its_absolute_path_and_does_not_autostart():
    text = (REPO / "udev" / "60-clusterfw.rules").read_text()
    programs = re.findall(r'^\s*IMPORT\{program\}="([^"]*)"', text, re.M)
    assert programs and all(p.split()[0] == COMMAND for p in programs), programs
    wants = [line for line in text.splitlines() if "SYSTEMD_WANTS" in line]
    assert wants and all(line.lstrip().startswith("#") for line in wants), wants


def test_setup_sh_links_the_path_the_units_name():
    script = (REPO / "scripts" / "setup.sh").read_text()
    assert re.search(r"^VENV=/opt/clusterfw$", script, re.M)
    assert re.search(r"^BIN_DIR=" + re.escape(os.path.dirname(COMMAND)) + "$", script, re.M)
    out = subprocess.run(["bash", "-n", str(REPO / "scripts" / "setup.sh")], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
