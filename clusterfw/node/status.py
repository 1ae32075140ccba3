"""``clusterfw status``: the cluster as one JSON object (docs/daemon.md §8).

How this works
--------------
``render`` turns what a node knows -- the node table's names, the agreed
view (membership and transition table), the slots (registrations, leases)
and the heartbeat ages its liveness tracker measured -- into the public
status object::

    {"cluster": "lab", "master": "n1", "epoch": 7, "term": 2,
     "nodes": [{"name": "n1", "id": 1, "state": "joined",
                "levels": {"mm": "joined", "dlm": "joined", ...},
                "heartbeat_age_ms": 40, "incarnation": "52e979a6baa9455",
                "forced": false,
                "master": true}, ...],
     "services": []}

Both add ``cluster_timing`` (``core.timing.summary``): the disk's profile
(derived from its io timeout), every timeout derived from it, ``dead_after_ms``
and ``failover_ms`` -- about how long after a node crashes its services
restart elsewhere.  The daemon adds its own keys (node, role, incarnation,
its own ``timing``, ...).
``from_disk`` builds the same object from one read of the disk, for when no
daemon runs on this host: the view and the master are what the disk says,
but a single read cannot tell a live heartbeat from a dead one, so every
``heartbeat_age_ms`` is null.

Both add ``integrity`` (ondisk/integrity.py): ``{"damaged": [...], "counts":
{...}}`` -- the areas that do not decode (superblock, node-table entries,
slots and view copies of configured nodes) and, from the daemon, how many
times each kind of area became damaged since it started.  When the
master's view cannot be read (both copies rejected) and there is no view to
show, ``epoch`` is null, every node's state is ``unknown`` and
``view_error`` says why -- never a made-up "epoch 0, all inactive".

Pure apart from ``from_disk``'s reads.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Collection, Mapping

from clusterfw.core.coordinator import level_state
from clusterfw.core.election import Decision, highest_decision
from clusterfw.core import levels as default_levels
from clusterfw.core import timing as timing_mod
from clusterfw.core.text import incarnation_json
from clusterfw.core.model import MemberEntry, NodeConfig, SlotRecord, Timing, ViewRecord
from clusterfw.ondisk.clusterdisk import ClusterDisk, best_view
from clusterfw.ondisk.errors import NotWritten
from clusterfw.subsystems.placeholders import PLACEHOLDER_LEVELS

from clusterfw.ondisk.integrity import COPY_NAMES, KINDS, NODE_TABLE, SLOT, VIEW, Damage, IntegrityTracker, damage_json, error_text

UNKNOWN = "unknown"
PLACEHOLDER = "placeholder"


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
           ages_ms: Mapping[int, float | None], placeholders: Collection[int] = ()) -> dict[str, Any]:
    """``placeholders``: levels whose subsystem only stands in (it acks at
    once); a node joined there is shown ``placeholder``, never ``joined``."""
    levels = level_names(slots, view)

    def shown(member: MemberEntry | None, level: int) -> str:
        if member is None:
            return "inactive"
        state = level_state(member, level)
        return PLACEHOLDER if state == "joined" and level in placeholders else state

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
            "levels": {levels.get(lv, f"level{lv}"): shown(member, lv) for lv in view_levels},
            "heartbeat_age_ms": None if age is None else round(age),
            "incarnation": incarnation_json(member.incarnation if member is not None
                                            else (slot.incarnation if slot else None)),
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


def mark_view_unknown(out: dict[str, Any], error: str) -> None:
    """No view can be shown: say why instead of "epoch 0, all inactive"."""
    out["epoch"] = None
    out["view_error"] = error
    for node in out["nodes"]:
        node["state"] = UNKNOWN
        node["levels"] = {name: UNKNOWN for name in node["levels"]}


def _name(names: Mapping[int, str], node_id: int) -> str:
    return names.get(node_id, f"node{node_id}")


def master_view_error(names: Mapping[int, str], master_id: int, reason: str) -> str:
    return (f"the view of the master {_name(names, master_id)} (id {master_id}) cannot be read ({reason}): "
            f"no node can adopt a view until the master rewrites it (at its next membership change)")


def add_integrity(out: dict[str, Any], tracker: IntegrityTracker, names: Mapping[int, str],
                  decision: Decision | None, view: ViewRecord | None) -> None:
    """The daemon's status: the tracker's counts and damaged areas, and the
    master's view marked unreadable when both its copies are damaged."""
    out["integrity"] = tracker.snapshot()
    if decision is None or decision.resigned:
        return
    reason = tracker.view_unreadable(decision.master)
    if reason is None:
        return
    if view is None:
        mark_view_unknown(out, master_view_error(names, decision.master, reason) + "; membership unknown")
    else:
        out["view_error"] = (master_view_error(names, decision.master, reason)
                             + f"; shown: the last view this node has (epoch {view.epoch} of term {view.term})")


def from_disk(disk: ClusterDisk) -> dict[str, Any]:
    """The status as the disk shows it (no liveness judgement)."""
    assert disk.superblock is not None
    table = disk.read_node_table()
    names = {cfg.node_id: cfg.name for cfg in table if isinstance(cfg, NodeConfig)}
    raw_slots = disk.read_slots()
    slots = {rec.node_id: rec for rec in raw_slots if isinstance(rec, SlotRecord)}
    decision = highest_decision({n: s.lease for n, s in slots.items()})
    damaged: list[Damage] = []
    for node_id, entry in enumerate(table, start=1):
        error = error_text(entry)
        if error is not None:
            damaged.append(Damage(NODE_TABLE, node_id, None, error, 0.0))
    for node_id, slot_entry in enumerate(raw_slots, start=1):
        error = error_text(slot_entry)
        if error is not None and node_id in names:  # slots of ids nobody added are ignored
            damaged.append(Damage(SLOT, node_id, None, error, 0.0))
    views: list[ViewRecord] = []
    copies_of = {}
    for node_id in range(1, disk.layout.nodes_max + 1):
        if node_id in slots or node_id in names:
            copies = disk.read_view_copies(node_id)
            copies_of[node_id] = copies
            view = best_view(copies)
            if isinstance(view, ViewRecord):
                views.append(view)
            if node_id in names:
                for copy, value in enumerate(copies):
                    error = error_text(value)
                    if error is not None:
                        damaged.append(Damage(VIEW, node_id, copy, error, 0.0))
    chosen: ViewRecord | None = None
    view_error: str | None = None
    if decision is not None and not decision.resigned:
        copies = copies_of.get(decision.master) or disk.read_view_copies(decision.master)
        best = best_view(copies)
        if isinstance(best, ViewRecord):
            if best.term == decision.term:
                chosen = best
        elif not isinstance(best, NotWritten):
            reason = "; ".join(f"copy {COPY_NAMES[c]}: {error_text(v) or 'never written'}"
                               for c, v in enumerate(copies))
            view_error = master_view_error(names, decision.master, reason) + "; membership unknown"
    if chosen is None and view_error is None:
        chosen = max(views, key=lambda v: (v.term, v.epoch, v.seq), default=None)
    # No daemon to ask: a default placeholder level registered under its default name is one.
    registered = level_names(slots, None)
    placeholders = {lv for lv in PLACEHOLDER_LEVELS if registered.get(lv) == default_levels.NAMES[lv]}
    out = render(cluster=disk.superblock.cluster_name, names=names, view=None if view_error else chosen,
                 slots=slots, decision=decision, ages_ms={}, placeholders=placeholders)
    if view_error is not None:
        mark_view_unknown(out, view_error)
    counts = {kind: 0 for kind in KINDS}
    for d in damaged:
        counts[d.kind] += 1
    out["integrity"] = {"damaged": [damage_json(d, names) for d in damaged], "counts": counts}
    out["cluster_timing"] = cluster_timing(disk.superblock.heartbeat_interval_ms, disk.superblock.io_timeout_ms)
    out["source"] = "disk"
    return out


def cluster_timing(heartbeat_interval_ms: int, io_timeout_ms: int) -> dict[str, int | str]:
    """The ``cluster_timing`` of a disk with these two settings."""
    return timing_mod.summary(*timing_mod.disk_profile(heartbeat_interval_ms, io_timeout_ms))
