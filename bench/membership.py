#!/usr/bin/env python3
"""Membership benchmarks on the deterministic simulator (simulated disk
timing: 0.2-2 ms per I/O, heartbeat 100 ms, lab io_timeout 200 ms).

    python bench/membership.py [--repeat 3] [--json]

Measures, in simulated time (what a real cluster with that disk would see)
and wall time (what the simulation cost here):

  join-64      one node joins a 64-node cluster through 5 levels
  boot-128     128 nodes boot at once until all are Joined
  master-crash the master crashes mid-transition (a node's join is at DLM)
               until that transition completes under the new master

Targets: join-64 <= 1 s, boot-128 <= 10 s simulated.
Not a test: prints JSON and a table, asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clusterfw.core.model import NodeState  # noqa: E402
from clusterfw.core.node import Role  # noqa: E402
from clusterfw.sim.world import SimConfig, World  # noqa: E402


def _world(nodes: int, seed: int) -> World:
    w = World(SimConfig(nodes=nodes, seed=seed, faults=frozenset(), fault_phase_ms=0))
    return w


def _joined(w: World, ids) -> bool:  # noqa: ANN001
    return all(w.nodes[i].up and w.nodes[i].core is not None and w.nodes[i].core.state is NodeState.JOINED
               for i in ids)


def _settled(w: World) -> bool:
    return w.convergence_problem() is None


def join_into(cluster: int, seed: int) -> dict:
    w = _world(cluster + 1, seed)
    for i in range(1, cluster + 1):
        w.at(w.rng.uniform(0, 100), "start", i)
    assert w.run_until(lambda: _joined(w, range(1, cluster + 1)) and not any(
        n.core.view.batches for n in w.nodes.values() if n.core and n.core.view), 120_000)
    w.run_until(lambda: False, w.t + 500)
    new = cluster + 1
    t0_sim, t0_wall = w.t, time.perf_counter()
    w.at(w.t, "start", new)
    assert w.run_until(lambda: _joined(w, [new]), w.t + 60_000), "join did not finish"
    return {"simulated_ms": w.t - t0_sim, "wall_s": time.perf_counter() - t0_wall}


def boot_all(nodes: int, seed: int) -> dict:
    w = _world(nodes, seed)
    t0_wall = time.perf_counter()
    for i in range(1, nodes + 1):
        w.at(0.0, "start", i)
    assert w.run_until(lambda: _settled(w), 120_000), w.convergence_problem()
    return {"simulated_ms": w.t, "wall_s": time.perf_counter() - t0_wall}


def master_crash(nodes: int, seed: int) -> dict:
    w = _world(nodes, seed)
    for i in range(1, nodes):
        w.at(w.rng.uniform(0, 100), "start", i)
    assert w.run_until(lambda: _joined(w, range(1, nodes)) and not any(
        n.core.view.batches for n in w.nodes.values() if n.core and n.core.view), 60_000)
    joiner = nodes
    w.at(w.t, "start", joiner)
    dlm = 10

    def at_dlm() -> bool:
        return any(n.core is not None and n.core.view is not None and n.core.view.batch(dlm) is not None
                   and any(e.node_id == joiner for e in n.core.view.batch(dlm).entries) for n in w.nodes.values())
    assert w.run_until(at_dlm, w.t + 10_000)
    master = next(n for n in w.nodes.values() if n.core is not None and n.core.role is Role.MASTER)
    master.restart_pending = True
    t0_sim, t0_wall = w.t, time.perf_counter()
    w._crash(master)
    assert w.run_until(lambda: _joined(w, [joiner]), w.t + 60_000)
    t_join = w.t - t0_sim

    def old_master_out() -> bool:
        for n in w.nodes.values():
            if n.core is not None and n.core.role is Role.MASTER and n.core.view is not None:
                m = n.core.view.member(master.node_id)
                return m is not None and m.state is NodeState.INACTIVE
        return False
    assert w.run_until(old_master_out, w.t + 60_000)
    return {"simulated_ms": t_join, "old_master_out_ms": w.t - t0_sim, "wall_s": time.perf_counter() - t0_wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="seeds per benchmark (default 3)")
    ap.add_argument("--json", action="store_true", help="print only JSON")
    args = ap.parse_args()
    benches = {
        "join-64": (lambda s: join_into(64, s), 1000),
        "boot-128": (lambda s: boot_all(128, s), 10_000),
        "master-crash": (lambda s: master_crash(7, s), None),
    }
    report = {}
    for name, (fn, target) in benches.items():
        runs = []
        for seed in range(1, args.repeat + 1):
            runs.append(fn(seed))
            if not args.json:
                print(f"  {name} seed {seed}: {runs[-1]['simulated_ms']:.0f} ms simulated, "
                      f"{runs[-1]['wall_s']:.1f} s wall", file=sys.stderr)
        sims = [r["simulated_ms"] for r in runs]
        report[name] = {
            "runs": runs,
            "simulated_ms": {"median": statistics.median(sims), "min": min(sims), "max": max(sims)},
            "wall_s_median": statistics.median(r["wall_s"] for r in runs),
            "target_ms": target,
            "meets_target": None if target is None else max(sims) <= target,
        }
    print(json.dumps(report, indent=2))
    if not args.json:
        print(f"\n{'benchmark':<14}{'sim median':>12}{'sim min':>10}{'sim max':>10}{'wall':>9}{'target':>9}  ok")
        for name, r in report.items():
            s = r["simulated_ms"]
            tgt = "-" if r["target_ms"] is None else f"{r['target_ms']}"
            ok = "-" if r["meets_target"] is None else ("yes" if r["meets_target"] else "NO")
            print(f"{name:<14}{s['median']:>10.0f}ms{s['min']:>8.0f}ms{s['max']:>8.0f}ms"
                  f"{r['wall_s_median']:>8.1f}s{tgt:>9}  {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
