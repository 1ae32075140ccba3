"""The pure core touches nothing in the world: effects live at the edges (the
daemon and the simulator do all I/O).

Every module under ``clusterfw/core/`` is parsed with ``ast``; an import of a
module that does I/O, keeps time, spawns threads or draws randomness -- at any
depth, in any spelling (``import x``, ``import x.y``, ``from x import y``,
``from x.y import z``, a function-local import, a relative import that climbs
out of the package) -- fails the test, and so does an import of the layers
that sit on top of the core (``clusterfw.ondisk``, ``.node``, ``.lab``,
``.sim``).  The checker itself is tested on snippets, so that a checker that
silently matches nothing cannot pass.

A second test imports ``clusterfw.core.node`` in a fresh interpreter (without
``site``, whose hooks may preload modules) and compares ``sys.modules`` with
a baseline interpreter started the same way.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CORE_DIR = REPO_ROOT / "clusterfw" / "core"
CORE_PACKAGE = "clusterfw.core"

WORLD_MODULES = frozenset({
    "os", "time", "socket", "subprocess", "asyncio", "threading", "select", "signal", "random",
    "mmap", "fcntl", "ctypes",
})
UPPER_LAYERS = ("clusterfw.ondisk", "clusterfw.node", "clusterfw.lab", "clusterfw.sim")


def _resolve(module: str | None, level: int, package: str) -> str:
    """The absolute name of ``from <.. level> module import ...`` seen in ``package``."""
    if level == 0:
        return module or ""
    parts = package.split(".")
    if level - 1 > len(parts):
        return "<beyond top-level package>"
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imported_names(source: str, package: str = CORE_PACKAGE) -> list[str]:
    """Every absolute module name an import statement in ``source`` may load.

    ``from a.b import c`` yields both ``a.b`` and ``a.b.c`` (``c`` may be a
    submodule); calls to ``__import__``/``importlib.import_module`` with a
    constant argument are imports too (and ``importlib`` itself is refused,
    so that no import can hide from this check).
    """
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, package)
            names.append(base)
            names.extend(f"{base}.{alias.name}" if base else alias.name for alias in node.names)
        elif isinstance(node, ast.Call):
            func = node.func
            dynamic = (isinstance(func, ast.Name) and func.id == "__import__") or (
                isinstance(func, ast.Attribute) and func.attr == "import_module")
            if dynamic:
                arg = node.args[0] if node.args else None
                names.append(arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                             else "<dynamic import>")
    return names


def violations(source: str, package: str = CORE_PACKAGE) -> list[str]:
    bad = []
    for name in imported_names(source, package):
        root = name.split(".")[0]
        if root in WORLD_MODULES or root == "importlib" or name.startswith("<"):
            bad.append(name)
        elif any(name == layer or name.startswith(layer + ".") for layer in UPPER_LAYERS):
            bad.append(name)
    return bad


def core_modules() -> list[Path]:
    return sorted(CORE_DIR.rglob("*.py"))


# --------------------------------------------------------------- the checker
@pytest.mark.parametrize("snippet, expected", [
    ("import os", "os"),
    ("import os.path", "os.path"),
    ("import time as t", "time"),
    ("from os import path", "os"),
    ("from os.path import join", "os.path"),
    ("import json, socket", "socket"),
    ("def f():\n    import subprocess\n", "subprocess"),
    ("class C:\n    def m(self):\n        from threading import Lock\n", "threading"),
    ("if True:\n    import random\n", "random"),
    ("try:\n    import fcntl\nexcept ImportError:\n    pass\n", "fcntl"),
    ("import asyncio.tasks", "asyncio.tasks"),
    ("from select import poll", "select"),
    ("import signal, mmap, ctypes", "signal"),
    ("from .. import ondisk", "clusterfw.ondisk"),
    ("from ..ondisk import codec", "clusterfw.ondisk"),
    ("from ..ondisk.codec import encode_slot", "clusterfw.ondisk.codec"),
    ("from ..sim.world import World", "clusterfw.sim.world"),
    ("from .. import lab", "clusterfw.lab"),
    ("import clusterfw.node", "clusterfw.node"),
    ("import clusterfw.lab.lab", "clusterfw.lab.lab"),
    ("from clusterfw.sim import world", "clusterfw.sim"),
    ("from clusterfw import node", "clusterfw.node"),
    ("m = __import__('os')", "os"),
    ("import importlib\nm = importlib.import_module('time')", "importlib"),
])
def test_checker_catches(snippet: str, expected: str) -> None:
    assert expected in violations(snippet), (snippet, violations(snippet))


@pytest.mark.parametrize("snippet", [
    "from __future__ import annotations",
    "import enum, math",
    "from dataclasses import dataclass, replace",
    "from typing import Callable, Mapping",
    "from .model import Lease",
    "from . import model",
    "from .liveness import Liveness",
    "import clusterfw.core.model",
    "import osmosis",  # a name that merely starts like a banned one
    "import timeit_free_name",
    "from clusterfw.nodes_extra import x",  # not clusterfw.node
])
def test_checker_allows(snippet: str) -> None:
    assert violations(snippet) == []


# ------------------------------------------------------------------ the core
def test_core_package_has_the_expected_modules() -> None:
    names = {p.stem for p in core_modules()}
    assert {"model", "timing", "liveness", "election", "coordinator", "node"} <= names


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.name)
def test_core_module_imports_nothing_that_touches_the_world(path: Path) -> None:
    rel = path.relative_to(REPO_ROOT).with_suffix("")
    package = ".".join(rel.parts[:-1])  # the package a relative import starts from
    bad = violations(path.read_text(), package)
    assert bad == [], f"{path.name} imports {bad}"


# ------------------------------------------------------------ at run time
_PROBE = (
    "import json, sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "if sys.argv[2]:\n"
    "    __import__(sys.argv[2])\n"
    "print(json.dumps(sorted(sys.modules)))\n"
)


def _modules_after(import_name: str) -> set[str]:
    # -S: no site hooks (they may preload threading); -E: no PYTHON* variables.
    proc = subprocess.run([sys.executable, "-E", "-S", "-c", _PROBE, str(REPO_ROOT), import_name],
                          capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(proc.stdout))


def test_importing_the_core_loads_no_threads_sockets_or_processes() -> None:
    baseline = _modules_after("")
    loaded = _modules_after("clusterfw.core.node")
    assert "clusterfw.core.node" in loaded and "clusterfw.core.coordinator" in loaded
    watched = {"threading", "socket", "subprocess"}
    # The comparison only means something if the baseline does not preload them.
    assert not watched & baseline, f"baseline interpreter already loads {watched & baseline}"
    new = loaded - baseline
    assert not watched & new, f"importing clusterfw.core.node loads {sorted(watched & new)}"
    assert not {m for m in new if m.split(".")[0] in {"asyncio", "select", "mmap", "fcntl", "ctypes"}}
    assert not {m for m in new if any(m == layer or m.startswith(layer + ".") for layer in UPPER_LAYERS)}
