"""The simulator: many seeds with every fault, replay, and proof that it
catches deliberately broken rules."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from clusterfw.core.model import NodeState, ViewRecord
from clusterfw.core.node import Role
from clusterfw.sim.runner import parse_faults, run_many, run_seed
from clusterfw.sim.store import SimStore
from clusterfw.sim.world import FAULTS, SimConfig, World

CI_SEEDS = int(os.environ.get("CLUSTERFW_SIM_SEEDS", "300"))


def test_many_seeds_with_every_fault() -> None:
    """The CI seed run: every fault enabled, no invariant violated, every
    run converges in the liveness phase."""
    outcomes = run_many(range(1, CI_SEEDS + 1), 5, frozenset(FAULTS))
    bad = [o for o in outcomes if not o.ok]
    assert not bad, "\n\n".join(f"seed {o.seed}: {o.violation}\n" + "\n".join(o.trace[-30:]) for o in bad[:3])
    totals: dict[str, int] = {}
    for o in outcomes:
        for k, v in o.stats.items():
            totals[k] = totals.get(k, 0) + v
    # The faults really happened (a simulator that injects nothing proves nothing).
    for kind in ("crashes", "pauses", "cuts", "outages", "leaves", "hangs", "lost_writes", "watchdog_resets",
                 "forced_out"):
        assert totals.get(kind, 0) > 0, f"no {kind} in {CI_SEEDS} seeds"


def test_seven_node_seeds() -> None:
    outcomes = run_many(range(5001, 5041), 7, frozenset(FAULTS))
    assert all(o.ok for o in outcomes), [o.violation for o in outcomes if not o.ok][:3]


@pytest.mark.parametrize("mutation,invariants", [
    ("skip-ack-wait", {"ack-before-next-step"}),
    ("dead-too-soon", {"fence-before-recovery", "one-master", "view-order"}),
    ("leave-bottom-up", {"step-order"}),
])
def test_a_broken_rule_is_caught_and_replays_identically(mutation: str, invariants: set[str]) -> None:
    outcomes = run_many(range(1, 31), 5, frozenset(FAULTS), mutation=mutation)
    failed = [o for o in outcomes if not o.ok]
    assert failed, f"mutation {mutation} went unnoticed in 30 seeds"
    assert {o.invariant for o in failed} & invariants, {o.invariant for o in failed}
    first = failed[0]
    again = run_seed(first.seed, 5, frozenset(FAULTS), mutation=mutation)
    assert (again.ok, again.violation, again.digest, again.events) == \
        (first.ok, first.violation, first.digest, first.events)


# Each protocol-safety fix has a mutation that undoes it, and a seed (with
# the faults that expose it) on which the checker catches the mutated rule
# while the real one passes the very same seed.
CAUGHT = [
    # (mutation, nodes, faults, seed, invariant)
    ("resume-from-any-view", 5, "corrupt,crash", 4, "view-rollback"),
    ("election-blocks-on-unreadable", 5, "corrupt,crash", 2, "liveness"),
    ("takeover-reads-all-at-once", 5, "badsector,crash", 2, "liveness"),
    ("skip-startup-cleanup", 5, "daemoncrash", 1, "fence-before-recovery"),
    ("watchdog-late", 5, "pause", 1, "fence-on-disk-loss"),
    ("behind-may-propose", 7, "all", 1322, "liveness"),
]


@pytest.mark.parametrize("mutation,nodes,faults,seed,invariant", CAUGHT, ids=[c[0] for c in CAUGHT])
def test_each_safety_fix_has_a_seed_that_catches_its_undoing(mutation: str, nodes: int, faults: str, seed: int,
                                                             invariant: str) -> None:
    broken = run_seed(seed, nodes, parse_faults(faults), mutation=mutation)
    assert not broken.ok and broken.invariant == invariant, (broken.invariant, broken.violation)
    fixed = run_seed(seed, nodes, parse_faults(faults))
    assert fixed.ok, fixed.violation


def test_the_new_faults_happen() -> None:
    """Damage, replays, bad sectors, late and landed-but-failed writes and
    daemon-only crashes are really injected (and survived)."""
    outcomes = run_many(range(1, 9), 5, frozenset(FAULTS))
    assert all(o.ok for o in outcomes), [o.violation for o in outcomes if not o.ok][:2]
    totals: dict[str, int] = {}
    for o in outcomes:
        for k, v in o.stats.items():
            totals[k] = totals.get(k, 0) + v
    for kind in ("corruptions", "replays", "bad_sectors", "late_writes", "landed_failures", "daemon_crashes"):
        assert totals.get(kind, 0) > 0, f"no {kind} in 8 seeds"


def test_a_seed_replays_exactly() -> None:
    a = run_seed(77, 5, frozenset(FAULTS))
    b = run_seed(77, 5, frozenset(FAULTS))
    assert a.ok and (a.digest, a.events, a.stats) == (b.digest, b.events, b.stats)
    c = run_seed(78, 5, frozenset(FAULTS))
    assert c.digest != a.digest


def test_torn_view_write_resumes_from_the_previous_copy() -> None:
    """With 20 nodes a view spans two 512-byte sectors.  Crash the master in
    the middle of its view writes until one tears; the torn copy is rejected
    and a new master resumes from the intact one; everyone converges."""
    torn_seen = 0
    for seed in range(1, 6):
        w = World(SimConfig(nodes=20, seed=seed, faults=frozenset({"torn"}), fault_phase_ms=0))
        for n in w.nodes.values():
            w.at(w.rng.uniform(0, 50), "start", n.node_id)
        assert w.run_until(lambda: w.convergence_problem() is None, 20_000), w.convergence_problem()
        master = next(n for n in w.nodes.values() if n.core is not None and n.core.role is Role.MASTER)
        victim = next(n for n in w.nodes.values() if n is not master)
        master.crash_on_write = True
        w._crash(victim)  # a forced leave: the master writes views
        w.run_until(lambda: not master.up, w.t + 5000)
        torn_seen += w.stats["torn_writes"]
        for n in (master, victim):
            w.at(w.t + 100, "start", n.node_id)
        assert w.run_until(lambda: w.convergence_problem() is None, w.t + 20_000), w.convergence_problem()
    assert torn_seen > 0


def test_store_prefers_the_intact_view_copy() -> None:
    store = SimStore(nodes_max=40, sector_size=512)
    from clusterfw.core.model import MemberEntry
    members = tuple(MemberEntry(i, 1000 + i, NodeState.JOINED) for i in range(1, 41))
    v5 = ViewRecord(node_id=1, incarnation=9, seq=10, term=2, epoch=5, members=members)
    v6 = ViewRecord(node_id=1, incarnation=9, seq=11, term=2, epoch=6, members=members)
    store.land(*store.view_write(v5, 0))
    offset, data = store.view_write(v6, 1)
    assert len(data) > 512
    store.land(offset, data, sectors=1)  # torn
    assert store.read_view(1).epoch == 5
    store.land(offset, data)
    assert store.read_view(1).epoch == 6


def test_parse_faults_names_the_bad_fault() -> None:
    with pytest.raises(ValueError, match="unknown fault.*bogus"):
        parse_faults("crash,bogus")
    assert parse_faults("none") == frozenset()
    assert parse_faults("all") == frozenset(FAULTS)


def test_cli_exit_codes() -> None:
    ok = subprocess.run([sys.executable, "-m", "clusterfw.cli", "sim", "--seeds", "3", "--nodes", "3"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "violations: 0" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "clusterfw.cli", "sim", "--seeds", "3", "--nodes", "3",
                          "--mutation", "skip-ack-wait"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert "ack-before-next-step" in bad.stdout and "replay: clusterfw sim --seed" in bad.stdout
    usage = subprocess.run([sys.executable, "-m", "clusterfw.cli", "sim", "--faults", "nope"],
                           capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "--faults" in usage.stderr


def test_cli_mutations_join_with_plus_and_a_bad_name_is_named() -> None:
    bad = subprocess.run([sys.executable, "-m", "clusterfw.cli", "sim", "--mutation", "skip-ack-wait+nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown mutation 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    both = subprocess.run([sys.executable, "-m", "clusterfw.cli", "sim", "--seeds", "3", "--nodes", "3",
                           "--mutation", "skip-ack-wait+leave-bottom-up"], capture_output=True, text=True,
                          timeout=300)
    assert both.returncode == 1 and "mutation: skip-ack-wait+leave-bottom-up" in both.stdout, both.stdout


def test_the_simulated_disk_is_one_the_daemons_code_can_open() -> None:
    """The simulator writes through the daemon's encoder and placement: the
    daemon's ``ClusterDisk.open`` reads the superblock, node table, slots and
    views a run left on the simulated disk."""
    from clusterfw.ondisk.clusterdisk import ClusterDisk
    w = World(SimConfig(nodes=3, seed=2, faults=frozenset(), fault_phase_ms=2000))
    assert w.run().ok
    disk = ClusterDisk.open(w.store.dev)
    assert disk.layout == w.store.layout and disk.cluster_uuid == w.store.cluster_uuid
    assert [getattr(e, "name", None) for e in disk.read_node_table()[:4]] == ["n1", "n2", "n3", None]
    slots = disk.read_slots()
    master = next(n for n in w.nodes.values() if n.core is not None and n.core.role is Role.MASTER)
    for n in w.nodes.values():
        assert n.core is not None and slots[n.node_id - 1].incarnation == n.core.incarnation
    view = disk.read_view(master.node_id)
    assert master.core is not None and master.core.view is not None
    assert (view.term, view.epoch) == (master.core.view.term, master.core.view.epoch)


def test_a_feature_plugs_in_without_changing_the_world(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new subsystem's simulation is a Feature: listed in FEATURE_TYPES and
    asked for by name, it gets its hooks, its own events and its counters,
    and the membership run stays exactly what it was without it."""
    from clusterfw.sim import world as world_mod
    from clusterfw.sim.feature import Feature

    class Probe(Feature):
        name = "probe"
        counters = ("probe_starts", "probe_views", "probe_lands", "probe_ticks")

        def on_start(self, node) -> None:  # type: ignore[no-untyped-def]
            self.w.stats["probe_starts"] += 1
            self.w.at(self.w.t + 50, "probe-tick", node.node_id, node.gen)

        def on_view(self, node) -> None:  # type: ignore[no-untyped-def]
            self.w.stats["probe_views"] += 1

        def on_land(self, node, rec) -> None:  # type: ignore[no-untyped-def]
            self.w.stats["probe_lands"] += 1

        def dispatch(self, node, kind, payload) -> None:  # type: ignore[no-untyped-def]
            assert kind == "probe-tick"
            self.w.stats["probe_ticks"] += 1

    plain = run_seed(3, 4, frozenset(FAULTS), fault_phase_ms=4000)
    monkeypatch.setattr(world_mod, "FEATURE_TYPES", world_mod.FEATURE_TYPES + (Probe,))
    probed = run_seed(3, 4, frozenset(FAULTS) | {"probe"}, fault_phase_ms=4000)
    assert probed.ok and probed.digest == plain.digest
    assert all(probed.stats[k] > 0 for k in Probe.counters), probed.stats
    assert probed.stats["probe_ticks"] <= probed.stats["probe_starts"]
    assert {k: v for k, v in probed.stats.items() if not k.startswith("probe")} == plain.stats
