"""A probe service for the lab: a process that records when it lived, so
that a test or a benchmark can tell, from real processes on real nodes,
when a service started on its new node and whether two copies of it were
ever alive at the same time.

How this works
--------------
``PROBE_SCRIPT`` is written to the lab's shared directory (``/lab/shared``
inside every node) and run as a service's ``start_command``: ``python3
/lab/shared/probe.py``.  Each copy writes a file ``lives/SERVICE@NODE@PID``
holding ``START LAST``: the wall-clock time it started and the last time it
was seen alive, rewritten every ``PERIOD_S`` with an atomic rename.  All
nodes share the host's kernel clock, so the times compare across nodes.

A copy's *life* is ``[START, LAST]``: it was certainly alive then (it may
have lived up to one period longer; a SIGKILL leaves no trace).  ``overlaps``
finds two lives of one service on different nodes that intersect: if it
finds one, two copies were certainly alive at once.  Pure file reading: no
process is signalled here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PERIOD_S = 0.01

PROBE_SCRIPT = f'''\
import os, sys, time
here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lives")
os.makedirs(here, exist_ok=True)
name = "@".join((os.environ.get("CLUSTERFW_SERVICE", "probe"), os.environ.get("CLUSTERFW_NODE", "?"),
                 str(os.getpid())))
path = os.path.join(here, name)
start = time.time()
while True:
    with open(path + ".tmp", "w") as f:
        f.write(f"{{start:.6f}} {{time.time():.6f}}\\n")
    os.replace(path + ".tmp", path)
    time.sleep({PERIOD_S})
'''


@dataclass(frozen=True)
class Life:
    service: str
    node: str
    pid: int
    start: float
    last: float


def install(shared: Path) -> str:
    """Write the probe into the lab's shared directory; return its path
    as the nodes see it."""
    (shared / "lives").mkdir(parents=True, exist_ok=True)
    (shared / "probe.py").write_text(PROBE_SCRIPT)
    return "/lab/shared/probe.py"


def lives(shared: Path, service: str | None = None) -> list[Life]:
    out: list[Life] = []
    for path in sorted((shared / "lives").glob("*@*@*")):
        if path.name.endswith(".tmp"):
            continue
        name, node, pid = path.name.split("@")
        if service is not None and name != service:
            continue
        try:
            start, last = (float(x) for x in path.read_text().split())
        except (OSError, ValueError):
            continue  # being replaced right now: the next read sees it
        out.append(Life(name, node, int(pid), start, last))
    return out


def started_after(shared: Path, service: str, t: float, node: str | None = None) -> Life | None:
    """The first copy of ``service`` (on ``node``) that started after ``t``."""
    found = [x for x in lives(shared, service) if x.start > t and (node is None or x.node == node)]
    return min(found, key=lambda x: x.start) if found else None


def overlaps(found: list[Life]) -> list[tuple[Life, Life]]:
    """Pairs of lives of one service on different nodes that intersect."""
    out: list[tuple[Life, Life]] = []
    by: dict[str, list[Life]] = {}
    for life in found:
        by.setdefault(life.service, []).append(life)
    for group in by.values():
        group.sort(key=lambda x: x.start)
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if b.start > a.last:
                    break
                if b.node != a.node:
                    out.append((a, b))
    return out
