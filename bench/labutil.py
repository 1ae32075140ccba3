"""Helpers the lab benchmarks share: a node's status, waiting for a healthy
cluster."""
from __future__ import annotations

import argparse
import json
import statistics
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


def summary(values: list[float]) -> dict:
    """Median, min and max (s) of repeated measurements, and every run."""
    return {"median_s": round(statistics.median(values), 3), "min_s": round(min(values), 3),
            "max_s": round(max(values), 3), "runs": [round(v, 3) for v in values]}


def arguments(doc: str | None, nodes: int) -> argparse.ArgumentParser:
    """The options every lab benchmark takes: --repeat, --nodes, --json."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=10, help="repetitions of each timed case (default 10)")
    ap.add_argument("--nodes", type=int, default=nodes, help=f"lab nodes (default {nodes})")
    ap.add_argument("--json", action="store_true", help="print only JSON")
    return ap
