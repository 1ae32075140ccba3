"""``clusterfw status``: the cluster as one JSON object (DESIGN §7).

How this works
--------------
``render`` turns what a node knows -- the node table's names, the agreed
view (membership and transition table), the slots (registrations, leases)
and the heartbeat ages its liveness tracker measured -- into the public
status object::

    {"cluster": "lab", "master": "n1", "epoch": 7, "term": 2,
     "nodes": [{"name": "n1", "id": 1, "state": "joined",
                "levels": {"mm": "joined", "dlm": "joined", ...},
                "heartbeat_age_ms": 40, "incarnation": ..., "forced": false,
                "master": true}, ...],
     "services": []}

The daemon adds its own keys (node, role, incarnation, timing, ...).
``from_disk`` builds the same object from one read of the disk, for when no
daemon runs on this host: the view and the master are what the disk says,
but a single read cannot tell a live heartbeat from a dead one, so every
``heartbeat_age_ms`` is null.

Pure apart from ``from_disk``'s reads.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

from clusterfw.core.coordinator import level_state
from clusterfw.core.election import Decision, highest_decision
from clusterfw.core.model import NodeConfig, SlotRecord, Timing, ViewRecord
from clusterfw.ondisk.clusterdisk import ClusterDisk


def level_names(slots: Mapping[int, SlotRecord], view: ViewRecord | None) -> dict[int, str]:
    """Level -> subsystem name, from the registrations in the slots (every
    node registers the same levels; names come from whoever registered)."""
    names: dict[int, str] = {}
    for node_id in sorted(slots):
        for reg in slots[node_id].registrations:
            names.setdefault(reg.level, reg.name)
    if view is not None:
        for spec in view.levels:
            names.setdefault(spec.level, f"level{spec.level}")
    return dict(sorted(names.items()))


def render(*, cluster: str, names: Mapping[int, str], view: ViewRecord | None,
           slots: Mapping[int, SlotRecord], decision: Decision | None,
           ages_ms: Mapping[int, float | None]) -> dict[str, Any]:
    levels = level_names(slots, view)
    if view is not None:
        view_levels = [spec.level for spec in view.levels]
    else:
        view_levels = list(levels)
    master_id = decision.master if decision is not None and not decision.resigned else None
    ids = sorted(set(names) | set(slots) | ({m.node_id for m in view.members} if view else set()))
    nodes = []
    for node_id in ids:
        member = view.member(node_id) if view is not None else None
        slot = slots.get(node_id)
        age = ages_ms.get(node_id)
        nodes.append({
            "name": names.get(node_id, f"node{node_id}"),
            "id": node_id,
            "state": member.state.value if member is not None else "inactive",
            "levels": {levels.get(lv, f"level{lv}"): (level_state(member, lv) if member is not None
                                                       else "inactive") for lv in view_levels},
            "heartbeat_age_ms": None if age is None else round(age),
            "incarnation": member.incarnation if member is not None else (slot.incarnation if slot else None),
            "forced": bool(member is not None and member.forced),
            "master": node_id == master_id,
        })
    return {
        "cluster": cluster,
        "master": None if master_id is None else names.get(master_id, f"node{master_id}"),
        "epoch": view.epoch if view is not None else 0,
        "term": decision.term if decision is not None else 0,
        "nodes": nodes,
        "services": [],
    }


def timing_json(timing: Timing) -> dict[str, int]:
    return asdict(timing)


def from_disk(disk: ClusterDisk) -> dict[str, Any]:
    """The status as the disk shows it (no liveness judgement)."""
    assert disk.superblock is not None
    names = {cfg.node_id: cfg.name for cfg in disk.read_node_table() if isinstance(cfg, NodeConfig)}
    slots = {rec.node_id: rec for rec in disk.read_slots() if isinstance(rec, SlotRecord)}
    decision = highest_decision({n: s.lease for n, s in slots.items()})
    views: list[ViewRecord] = []
    for node_id in range(1, disk.layout.nodes_max + 1):
        if node_id in slots or node_id in names:
            view = disk.read_view(node_id)
            if isinstance(view, ViewRecord):
                views.append(view)
    chosen: ViewRecord | None = None
    if decision is not None:
        chosen = next((v for v in views if v.node_id == decision.master and v.term == decision.term), None)
    if chosen is None:
        chosen = max(views, key=lambda v: (v.term, v.epoch, v.seq), default=None)
    out = render(cluster=disk.superblock.cluster_name, names=names, view=chosen, slots=slots,
                 decision=decision, ages_ms={})
    out["source"] = "disk"
    return out
