"""The architecture is checked, not hoped for: the import contracts in
setup.cfg (``[importlinter:contract:*]``: the pure core imports nothing that
touches the world; the on-disk format and the simulator stay below the
daemon, the lab and the commands; host/ stays below the daemon and the event
manager) and mypy over the whole package, strict on core/, ondisk/ and
host/.  Each check is also shown to fail on a copy of the tree that breaks
it."""
from __future__ import annotations

import ast
import collections
import configparser
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def _run(*argv: str, cwd: pathlib.Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # the tree checked is the one imported
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def _lint_imports() -> str:
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports is missing: install the test extra (pip install -e '.[test]')")
    return lint


def _copy_of_the_tree(tmp_path: pathlib.Path, **appended: str) -> pathlib.Path:
    """The package and setup.cfg under tmp_path, with ``appended`` (path
    inside clusterfw/ -> source) added to the end of those modules."""
    root = tmp_path / "tree"
    shutil.copytree(REPO / "clusterfw", root / "clusterfw", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.cfg", root / "setup.cfg")
    for module, source in appended.items():
        path = root / "clusterfw" / module
        path.write_text(path.read_text() + "\n" + source + "\n")
    return root


def test_import_contracts_are_kept() -> None:
    out = _run(_lint_imports(), "--config", "setup.cfg")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_mypy_finds_no_type_errors() -> None:
    out = _run(sys.executable, "-m", "mypy", "--config-file", "setup.cfg")
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]


@pytest.mark.parametrize("module, forbidden, contract", [
    ("core/text.py", "clusterfw.node.daemon", "pure-core"),
    ("ondisk/layout.py", "clusterfw.cli", "ondisk-below-the-node"),
    ("host/journal.py", "clusterfw.node.daemon", "host-below-node-and-events"),
    ("host/clocks.py", "clusterfw.events.manager", "host-below-node-and-events"),
    ("host/systemd_bus.py", "clusterfw.subsystems.services.launchers", "host-below-node-and-events"),
    ("subsystems/services/launchers.py", "clusterfw.node.daemon", "subsystems-beside-the-daemon"),
])
def test_a_forbidden_import_breaks_its_contract(tmp_path: pathlib.Path, module: str, forbidden: str,
                                                contract: str) -> None:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    name = config[f"importlinter:contract:{contract}"]["name"]
    root = _copy_of_the_tree(tmp_path, **{module: f"import {forbidden}  # noqa: E402"})
    out = _run(_lint_imports(), "--config", "setup.cfg", cwd=root)
    report = " ".join(out.stdout.split())  # long contract names wrap
    source = "clusterfw." + module.removesuffix(".py").replace("/", ".")
    assert out.returncode != 0, out.stdout[-4000:]
    assert f"{name} BROKEN" in report, out.stdout[-4000:]
    assert f"{source} -> {forbidden}" in report, out.stdout[-4000:]


def test_mypy_is_strict_on_the_lower_layers_only(tmp_path: pathlib.Path) -> None:
    """An unannotated function fails in core/, ondisk/ and host/, and is
    still allowed elsewhere (per-module strictness does not leak)."""
    untyped = "def untyped_helper(value):\n    return value"
    root = _copy_of_the_tree(tmp_path, **{"core/text.py": untyped, "ondisk/layout.py": untyped,
                                          "host/notify.py": untyped, "sim/runner.py": untyped})
    out = _run(sys.executable, "-m", "mypy", "--config-file", "setup.cfg", "--cache-dir", str(tmp_path / "cache"),
               cwd=root)
    assert out.returncode == 1, out.stdout[-6000:] + out.stderr[-2000:]
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    failing = sorted({line.split(":")[0] for line in errors})
    assert failing == ["clusterfw/core/text.py", "clusterfw/host/notify.py", "clusterfw/ondisk/layout.py"], errors
    assert all("[no-untyped-def]" in line for line in errors), errors


def test_the_package_ships_its_type_annotations() -> None:
    """PEP 561: clusterfw/py.typed exists and setup.cfg installs it."""
    from setuptools.config.setupcfg import read_configuration

    assert (REPO / "clusterfw" / "py.typed").is_file()
    options = read_configuration(str(REPO / "setup.cfg"))["options"]
    assert "py.typed" in options["package_data"]["clusterfw"]


def _modules(*tops: str) -> dict[str, ast.Module]:
    return {str(path.relative_to(REPO)): ast.parse(path.read_text(), str(path))
            for top in tops for path in sorted((REPO / top).rglob("*.py"))}


def test_no_private_name_is_imported_from_another_module() -> None:
    """``from x import _y`` across modules means ``_y`` is not private: give
    it a public name (the package and the tests alike)."""
    found = [f"{path}:{node.lineno}: from {node.module} import {alias.name}"
             for path, tree in _modules("clusterfw", "tests").items() for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) for alias in node.names
             if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert found == []


def test_each_limit_is_defined_once() -> None:
    """A ``*_MAX`` (or ``*_MAX_BYTES``) limit has one definition; every other
    module imports it."""
    defined = collections.defaultdict(list)
    for path, tree in _modules("clusterfw").items():
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, ast.AnnAssign) and node.value is not None else []
            for target in targets:
                if isinstance(target, ast.Name) and target.id.endswith(("_MAX", "_MAX_BYTES")):
                    defined[target.id].append(path)
    assert {name: paths for name, paths in defined.items() if len(paths) > 1} == {}
    assert defined["LEVEL_MAX"] == ["clusterfw/core/model.py"]
    assert defined["U64_MAX"] == ["clusterfw/core/model.py"]
    assert defined["NAME_MAX_BYTES"] == ["clusterfw/core/dlm.py"]
    assert "LOCK_NAME_BYTES_MAX" not in defined  # node/protocol.py imports the DLM's limit under this name
