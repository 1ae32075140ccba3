"""Run many seeds (in parallel processes), summarise, and replay one seed.

A seed fully determines a run, so a violation is reported as its seed, the
invariant's name, a message, and the trace of the last events; re-running
that seed with ``--seed`` replays it exactly (the tests prove it).
"""
from __future__ import annotations

import hashlib
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

from .mutations import MUTATIONS, mutated
from .world import FAULTS, SimConfig, World


@dataclass
class SeedOutcome:
    seed: int
    ok: bool
    violation: str = ""
    invariant: str = ""
    trace: list[str] = field(default_factory=list)
    converge_ms: float | None = None
    events: int = 0
    stats: dict = field(default_factory=dict)
    digest: str = ""  # hash of the full trace: equal digests = identical runs


def parse_faults(text: str | None) -> frozenset[str]:
    if text is None or text == "all":
        return frozenset(FAULTS)
    if text in ("", "none"):
        return frozenset()
    chosen = {f.strip() for f in text.split(",") if f.strip()}
    unknown = chosen - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown fault(s) {', '.join(sorted(unknown))}: choose from {', '.join(FAULTS)}, "
                         "'all' or 'none'")
    return frozenset(chosen)


def run_seed(seed: int, nodes: int, faults: frozenset[str], mutation: str | None = None,
             fault_phase_ms: float = 20_000, keep_trace: bool = False) -> SeedOutcome:
    cfg = SimConfig(nodes=nodes, seed=seed, faults=faults, fault_phase_ms=fault_phase_ms)
    with mutated(mutation):
        world = World(cfg)
        world.full_trace = [] if keep_trace else None
        digest = hashlib.sha256()
        world.trace_sink = digest.update
        result = world.run()
    out = SeedOutcome(seed=seed, ok=result.ok, converge_ms=result.converge_after_heal_ms,
                      events=result.events, stats=dict(result.stats), digest=digest.hexdigest()[:16])
    if not result.ok:
        assert result.violation is not None
        out.violation = str(result.violation)
        out.invariant = result.violation.name
        out.trace = result.violation.trace[-200:]
    if keep_trace and world.full_trace is not None:
        out.trace = world.full_trace
    return out


def _run_one(args: tuple) -> SeedOutcome:
    return run_seed(*args)


def run_many(seeds: Iterable[int], nodes: int, faults: frozenset[str], mutation: str | None = None,
             fault_phase_ms: float = 20_000, workers: int | None = None,
             progress=None) -> list[SeedOutcome]:
    seeds = list(seeds)
    workers = workers or max(1, min(len(seeds), os.cpu_count() or 1))
    jobs = [(s, nodes, faults, mutation, fault_phase_ms) for s in seeds]
    out: list[SeedOutcome] = []
    if workers == 1:
        for job in jobs:
            out.append(_run_one(job))
            if progress:
                progress(len(out), len(jobs), out[-1])
        return out
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for res in pool.map(_run_one, jobs, chunksize=max(1, min(8, len(jobs) // (4 * workers) or 1))):
            out.append(res)
            if progress:
                progress(len(out), len(jobs), res)
    return out


def summarize(outcomes: list[SeedOutcome], nodes: int, faults: frozenset[str], wall_s: float) -> dict:
    bad = [o for o in outcomes if not o.ok]
    conv = [o.converge_ms for o in outcomes if o.converge_ms is not None]
    totals: dict[str, int] = {}
    for o in outcomes:
        for k, v in o.stats.items():
            totals[k] = totals.get(k, 0) + v
    return {
        "seeds": len(outcomes),
        "nodes": nodes,
        "faults": sorted(faults),
        "violations": len(bad),
        "failed_seeds": [{"seed": o.seed, "invariant": o.invariant, "message": o.violation} for o in bad],
        "converge_after_heal_ms": {
            "median": statistics.median(conv) if conv else None,
            "max": max(conv) if conv else None,
        },
        "events": sum(o.events for o in outcomes),
        "fault_totals": totals,
        "wall_s": round(wall_s, 2),
    }


__all__ = ["MUTATIONS", "SeedOutcome", "parse_faults", "run_seed", "run_many", "summarize", "time"]
