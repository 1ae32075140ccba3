"""Helpers the lab benchmarks share: a node's status, waiting for a healthy
cluster."""
from __future__ import annotations

import json
import time

from clusterfw.lab.lab import Lab


def status(lab: Lab, node: str) -> dict | None:
    cp = lab.exec(node, ["clusterfw", "status", "--json"], timeout=10)
    try:
        return json.loads(cp.stdout) if cp.returncode == 0 else None
    except json.JSONDecodeError:
        return None


def wait_healthy(lab: Lab, names: list[str], timeout: float = 90, level: str | None = None) -> dict:
    """The status once every node in ``names`` is joined and there is a
    master (and, with ``level``, every node is joined at that level)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for via in names:
            st = status(lab, via)
            if st and st.get("master") and all(n["state"] == "joined" for n in st["nodes"]) \
                    and {n["name"] for n in st["nodes"]} >= set(names) \
                    and (level is None or all(n["levels"].get(level) == "joined" for n in st["nodes"])):
                return st
        time.sleep(0.3)
    raise SystemExit(f"cluster not healthy within {timeout}s")
