"""The registration & launch service in the deterministic simulator: many
seeds with every fault, the services' invariants never violated and every
wanted service running after the heal; each deliberately broken rule is
caught on a named seed that the real rule passes; a seed replays exactly;
runs without the feature are exactly what they were before it existed."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from clusterfw.sim.runner import run_many, run_seed, summarize
from clusterfw.sim.world import FAULTS, SimConfig, World

SERVICES = frozenset(FAULTS) | {"services"}
SEEDS = int(os.environ.get("CLUSTERFW_SERVICES_SIM_SEEDS", "200"))
NODES = 4
FAULT_PHASE_MS = 8000  # short fault phases, many seeds


def test_many_seeds_with_every_fault_and_the_services() -> None:
    summary = summarize(run_many(range(1, SEEDS + 1), NODES, SERVICES, fault_phase_ms=FAULT_PHASE_MS), NODES,
                        SERVICES, 0.0)
    assert summary["violations"] == 0, summary["failed_seeds"][:3]
    totals = summary["fault_totals"]
    # The interesting things really happened.
    for kind in ("svc_writes", "svc_round_failures", "svc_start_failures", "svc_runtime_failures", "svc_killed",
                 "svc_orphans_killed", "svc_recoveries", "svc_notifies", "svc_commands", "svc_torn_writes",
                 "svc_lost_writes", "svc_corrupted", "svc_replays", "dlm_grants", "daemon_crashes", "forced_out",
                 "leaves"):
        assert totals.get(kind, 0) > 0, f"no {kind} in {SEEDS} seeds"


# Each rule the services depend on has a mutation that breaks it, and a seed
# on which the checker catches the broken rule while the real one passes.
CAUGHT = [
    # (mutation, seed, invariant)
    ("services-no-lock", 4, "registry-generation"),
    ("services-leaving-is-gone", 7, "one-owner"),
    ("services-any-incarnation", 1, "one-owner"),
]


@pytest.mark.parametrize("mutation,seed,invariant", CAUGHT, ids=[c[0] for c in CAUGHT])
def test_a_broken_rule_is_caught_and_the_real_one_passes_the_seed(mutation: str, seed: int, invariant: str) -> None:
    broken = run_seed(seed, NODES, SERVICES, mutation=mutation, fault_phase_ms=FAULT_PHASE_MS)
    assert not broken.ok and broken.invariant == invariant, (broken.invariant, broken.violation)
    again = run_seed(seed, NODES, SERVICES, mutation=mutation, fault_phase_ms=FAULT_PHASE_MS)
    assert (again.violation, again.digest, again.events) == (broken.violation, broken.digest, broken.events)
    fixed = run_seed(seed, NODES, SERVICES, fault_phase_ms=FAULT_PHASE_MS)
    assert fixed.ok, fixed.violation


def test_a_services_seed_replays_exactly() -> None:
    a = run_seed(11, NODES, SERVICES, fault_phase_ms=FAULT_PHASE_MS)
    b = run_seed(11, NODES, SERVICES, fault_phase_ms=FAULT_PHASE_MS)
    assert a.ok and (a.digest, a.events, a.stats) == (b.digest, b.events, b.stats)
    assert a.stats["svc_writes"] > 0 and a.stats["dlm_grants"] > 0
    c = run_seed(12, NODES, SERVICES, fault_phase_ms=FAULT_PHASE_MS)
    assert c.digest != a.digest


# Trace digests and event counts of runs without the services feature, as
# the simulator produced them before the feature existed (4 nodes, every
# fault, a 6 s fault phase): the feature must leave them exactly so.
GOLDEN = [
    # (seed, with the DLM, digest, events)
    (1, False, "3faee341880bbdf6", 5126),
    (1, True, "5d06c8c325bab43e", 5509),
    (2, False, "f7a0535e4de7f2cb", 3161),
    (2, True, "1f087897287cd586", 5677),
]


@pytest.mark.parametrize("seed,dlm,digest,events", GOLDEN)
def test_runs_without_the_services_are_unchanged(seed: int, dlm: bool, digest: str, events: int) -> None:
    out = run_seed(seed, 4, frozenset(FAULTS) | ({"dlm"} if dlm else set()), fault_phase_ms=6000)
    assert out.ok and (out.digest, out.events) == (digest, events)
    assert not any(k.startswith("svc_") for k in out.stats)


def test_without_the_services_nothing_of_them_runs() -> None:
    world = World(SimConfig(nodes=3, seed=5, fault_phase_ms=3000))
    assert world.services is None and 50 not in {r.level for r in world.registrations}
    with_it = World(SimConfig(nodes=3, seed=5, fault_phase_ms=3000, services=True))
    assert with_it.services is not None and with_it.dlm is not None  # the services need the DLM's lock
    assert 50 in {r.level for r in with_it.registrations}
    result = with_it.run()
    assert result.ok, result.violation
    assert result.stats["svc_writes"] > 0


def test_the_registry_a_run_leaves_is_one_the_daemons_code_reads() -> None:
    """The registry copies go through the daemon's encoder and placement:
    ``ClusterDisk.open`` and ``read_registry`` on the simulated disk find
    the newest generation, and it places every wanted service."""
    from clusterfw.core import services as core
    from clusterfw.ondisk.clusterdisk import ClusterDisk
    world = World(SimConfig(nodes=3, seed=3, faults=frozenset({"services"}), fault_phase_ms=3000))
    assert world.run().ok
    disk = ClusterDisk.open(world.store.dev)
    best, _which = disk.read_registry()
    assert best is not None and best.generation > 1
    reg = core.Registry.from_json(best.doc)
    assert set(reg.services) >= {"web", "db", "app", "app-cfg", "agent", "flaky", "report"}
    assert all(rec.nodes for rec in reg.services.values() if rec.wanted and rec.name != "flaky")


def test_cli_runs_the_services_and_names_them_in_the_replay_line() -> None:
    ok = subprocess.run([sys.executable, "-m", "clusterfw.cli", "sim", "--seeds", "2", "--nodes", "3", "--services",
                         "--fault-ms", "3000", "--jobs", "1"], capture_output=True, text=True, timeout=300,
                        check=False)
    assert ok.returncode == 0, ok.stderr
    assert "violations: 0" in ok.stdout and "svc_writes" in ok.stdout and "dlm_grants" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "clusterfw.cli", "sim", "--seed", "7", "--nodes", str(NODES),
                          "--services", "--fault-ms", str(FAULT_PHASE_MS), "--mutation", "services-leaving-is-gone"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 1
    assert "one-owner" in bad.stderr and "--services --trace" in bad.stderr
