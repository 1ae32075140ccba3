"""The DLM in the deterministic simulator: hundreds of seeds with every fault
and lock clients on every node, no DLM invariant violated; a broken bakery
is caught and its seed replays identically; the DLM stays out of runs that
do not ask for it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from clusterfw.sim.runner import run_many, run_seed
from clusterfw.sim.world import FAULTS, SimConfig, World

DLM = frozenset(FAULTS) | {"dlm"}
SEEDS = int(os.environ.get("CLUSTERFW_DLM_SIM_SEEDS", "300"))
NODES = 4
FAULT_PHASE_MS = 8000  # short fault phases, many seeds: about 90 s on two cores


def test_many_seeds_with_every_fault_and_the_dlm():
    outcomes = run_many(range(1, SEEDS + 1), NODES, DLM, fault_phase_ms=FAULT_PHASE_MS)
    bad = [o for o in outcomes if not o.ok]
    assert not bad, "\n\n".join(f"seed {o.seed}: {o.violation}\n" + "\n".join(o.trace[-40:]) for o in bad[:3])
    totals: dict[str, int] = {}
    for o in outcomes:
        for k, v in o.stats.items():
            totals[k] = totals.get(k, 0) + v
    # The interesting things really happened.
    for kind in ("dlm_grants", "dlm_timeouts", "dlm_busy", "dlm_recovered", "dlm_revoked", "dlm_lost_writes",
                 "dlm_corrupted", "crashes", "pauses", "cuts", "outages", "leaves", "hangs", "forced_out"):
        assert totals.get(kind, 0) > 0, f"no {kind} in {SEEDS} seeds"


@pytest.fixture(scope="module")
def broken_bakery_outcomes():
    return run_many(range(1, 31), NODES, DLM, mutation="dlm-ignore-choosing", fault_phase_ms=FAULT_PHASE_MS)


def test_a_broken_bakery_is_caught_and_replays_identically(broken_bakery_outcomes):
    failed = [o for o in broken_bakery_outcomes if not o.ok]
    assert failed, "dlm-ignore-choosing went unnoticed in 30 seeds"
    assert {o.invariant for o in failed} == {"dlm-exclusive"}, {o.violation for o in failed}
    first = failed[0]
    again = run_seed(first.seed, NODES, DLM, mutation="dlm-ignore-choosing", fault_phase_ms=FAULT_PHASE_MS)
    assert (again.ok, again.violation, again.digest, again.events) == \
        (first.ok, first.violation, first.digest, first.events)


RESTART_SEEDS = range(1, 7)


def test_recovery_by_node_id_alone_is_caught_as_a_double_holder():
    """``dlm-recover-any-incarnation`` recovers the locks of a live restarted
    incarnation because an earlier incarnation of the same node id was
    forced out: two holders.  The unmutated DLM passes the same seeds."""
    bad = run_many(RESTART_SEEDS, NODES, DLM, mutation="dlm-recover-any-incarnation",
                   fault_phase_ms=FAULT_PHASE_MS)
    failed = [o for o in bad if not o.ok]
    assert failed, "dlm-recover-any-incarnation went unnoticed"
    assert {o.invariant for o in failed} == {"dlm-exclusive"}, {o.violation for o in failed}
    good = run_many([o.seed for o in failed], NODES, DLM, fault_phase_ms=FAULT_PHASE_MS)
    assert all(o.ok for o in good), [o.violation for o in good if not o.ok]


def test_damaged_lock_sectors_are_injected_and_repaired_without_violations():
    outcomes = run_many(range(1, 9), NODES, DLM, fault_phase_ms=FAULT_PHASE_MS)
    assert all(o.ok for o in outcomes), [o.violation for o in outcomes if not o.ok]
    assert sum(o.stats.get("dlm_corrupted", 0) for o in outcomes) > 0


def test_a_dlm_seed_replays_exactly():
    a = run_seed(11, NODES, DLM, fault_phase_ms=FAULT_PHASE_MS)
    b = run_seed(11, NODES, DLM, fault_phase_ms=FAULT_PHASE_MS)
    assert a.ok and (a.digest, a.events, a.stats) == (b.digest, b.events, b.stats)
    assert a.stats["dlm_grants"] > 0


def test_without_the_dlm_nothing_of_it_runs():
    world = World(SimConfig(nodes=3, seed=5, fault_phase_ms=3000))
    assert world.dlm is None and world.checker.dlm is None
    result = world.run()
    assert result.ok and not any(k.startswith("dlm") for k in result.stats)
    assert not any(" dlm: " in line for line in world.trace)


def test_4096_byte_sectors():
    for seed in range(1, 6):
        world = World(SimConfig(nodes=4, seed=seed, faults=DLM, fault_phase_ms=4000, sector_size=4096))
        result = world.run()
        assert result.ok, result.violation
        assert world.store.layout.dlm_stripes_max == 128 and result.stats["dlm_grants"] > 0


def test_cli_runs_the_dlm_and_names_it_in_the_replay_line(broken_bakery_outcomes):
    ok = subprocess.run([sys.executable, "-m", "clusterfw.cli", "sim", "--seeds", "2", "--nodes", "3", "--dlm",
                         "--fault-ms", "3000"], capture_output=True, text=True, timeout=300, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "violations: 0" in ok.stdout and "dlm_grants" in ok.stdout
    seed = next(o.seed for o in broken_bakery_outcomes if not o.ok)
    bad = subprocess.run([sys.executable, "-m", "clusterfw.cli", "sim", "--seed", str(seed), "--nodes", str(NODES),
                          "--dlm", "--fault-ms", str(FAULT_PHASE_MS), "--mutation", "dlm-ignore-choosing"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 1
    assert "dlm-exclusive" in bad.stderr and "--dlm --trace" in bad.stderr
