"""``clusterfw node list`` and ``clusterfw node remove``: the node table as
the shared disk shows it, and taking an inactive node out of it.

How this works
--------------
Both read the disk directly (DEVICE, else the configured disk:
``$CLUSTERFW_DISK`` or ``CLUSTERFW_DISK=`` in /etc/clusterfw/clusterfw.conf,
what clusterfw.service runs with), never a daemon: they work on a host where
no daemon runs.

One read of a slot cannot tell a live node from a dead one, so the slots are
*watched*: read every ``WATCH_STEP_MS`` for ``WATCH_INTERVALS`` heartbeat
intervals (the superblock's).  A slot whose bytes change is being written by
a daemon: it is heartbeating, and the last change seen dates its last
heartbeat.  The view state of each node (joined, joining, leaving,
forced-leaving, inactive) comes from the view the disk shows
(``clusterfw.node.status.from_disk``, as ``status --disk`` does).

``node remove NAME`` refuses (exit 3) unless the node is **inactive**: the
view does not show it joined, joining, leaving or being forced out, and its
slot is not heartbeating.  The refusal names the state, the epoch and the
heartbeat, and what to do.  Only the node-table entry is cleared
(``admin.remove_node``): the slot keeps the node's Disk Paxos ballot state.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from clusterfw.cli.disk import device_error, open_cluster, open_device
from clusterfw.cli.errors import EXIT_REFUSED, EXIT_USAGE, CliError
from clusterfw.cli.options import add_json
from clusterfw.core.model import NodeConfig, NodeState, SlotRecord
from clusterfw.core.text import incarnation_text
from clusterfw.ondisk import admin
from clusterfw.ondisk.clusterdisk import ClusterDisk
from clusterfw.ondisk.errors import BlockError, DeviceError, NodeTableError, NotWritten

CONF_FILE = "/etc/clusterfw/clusterfw.conf"
DISK_ENV = "CLUSTERFW_DISK"
WATCH_INTERVALS = 3  # slots are watched this many heartbeat intervals
WATCH_STEP_MS = 20
ACTIVE_STATES = (NodeState.JOINED.value, NodeState.JOINING.value, NodeState.LEAVING.value,
                 NodeState.FORCED_LEAVING.value)
DEVICE_HELP = (f"the shared block device (default: ${DISK_ENV}, else CLUSTERFW_DISK in {CONF_FILE}, the disk "
               f"clusterfw.service uses)")


def register(node_sub: argparse._SubParsersAction) -> None:
    """``list`` and ``remove`` under ``clusterfw node`` (``add`` is in disk.py)."""
    ls = node_sub.add_parser(
        "list", help="the nodes of the node table, with their view state and heartbeat",
        description="List the nodes of the node table on the shared disk: name, id, the state the disk's view "
                    "gives each, its slot (incarnation, sequence, request) and its last heartbeat, seen by "
                    f"watching the slots for {WATCH_INTERVALS} heartbeat intervals.  Reads the disk directly; "
                    "no daemon is needed.")
    ls.add_argument("device", metavar="DEVICE", nargs="?", help=DEVICE_HELP)
    add_json(ls, "print one JSON object (for scripts)")
    ls.set_defaults(func=cmd_node_list)

    rm = node_sub.add_parser(
        "remove", help="remove an inactive node from the node table",
        description="Remove node NAME from the node table.  Refused unless it is inactive: the disk's view "
                    "does not show it joined, joining, leaving or being forced out, and its slot is not "
                    "heartbeating (watched for "
                    f"{WATCH_INTERVALS} heartbeat intervals).  Its slot is kept (it holds the node's ballot "
                    "state); a node added again with this id continues from it.",
        epilog="exit codes: 0 removed; 1 failed (I/O, not a clusterfw disk); 2 bad usage (unknown node, no "
               "device); 3 refused (the node is active, or its state cannot be read)")
    rm.add_argument("device", metavar="DEVICE", nargs="?", help=DEVICE_HELP)
    rm.add_argument("name", metavar="NAME", help="the node's name in the node table (or its node id)")
    rm.set_defaults(func=cmd_node_remove)

    mt = node_sub.add_parser(
        "maintenance", help="keep a node out of service placement, or let it back in",
        description="Maintenance of node NAME, kept in the service registry on the shared disk (it survives "
                    "restarts of every daemon): 'on' places nothing new on the node and leaves what runs there "
                    "alone (not stopped, not moved, not restarted); 'off' ends it.")
    mt.add_argument("switch", choices=("on", "off"), help="on: start maintenance; off: end it")
    mt.add_argument("name", metavar="NAME", help="the node's name")
    from clusterfw.cli.options import add_socket
    from clusterfw.cli import service as service_cli
    add_socket(mt)
    add_json(mt)
    mt.set_defaults(func=service_cli.cmd_maintenance)


# --------------------------------------------------------------------------
# which device

def _conf_value(path: str, key: str) -> str | None:
    """``KEY=VALUE`` from a systemd EnvironmentFile (quotes stripped)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        line = line.strip()
        if line.startswith("#") or "=" not in line:
            continue
        name, value = line.split("=", 1)
        if name.strip() == key:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            return value or None
    return None


def configured_disk(given: str | None, command: str) -> str:
    """DEVICE, else the configured disk; a usage error naming both if none."""
    if given:
        return given
    found = os.environ.get(DISK_ENV) or _conf_value(CONF_FILE, DISK_ENV)
    if found:
        return found
    raise CliError(f"no DEVICE given, and neither ${DISK_ENV} nor {DISK_ENV}= in {CONF_FILE} names the shared "
                   f"disk: give it, e.g. 'clusterfw node {command} /dev/disk/by-cluster/NAME'", EXIT_USAGE)


# --------------------------------------------------------------------------
# watching the slots

@dataclass
class SlotSeen:
    """One slot over the watch: its last decoded state, and when (ms before
    the watch ended) its bytes last changed, or None if they never did."""

    record: SlotRecord | BlockError
    changed_ago_ms: float | None


def watch_slots(disk: ClusterDisk, watch_ms: float, step_ms: float = WATCH_STEP_MS) -> dict[int, SlotSeen]:
    """Read every slot every ``step_ms`` for ``watch_ms``; node id -> SlotSeen."""
    offset, length = disk.slots_extent()
    block = disk.layout.slot_size_bytes

    def read() -> list[bytes]:
        raw = bytes(disk.dev.read(offset, length))
        return [raw[i:i + block] for i in range(0, disk.layout.nodes_max * block, block)]

    start = time.monotonic()
    last = read()
    changed_at: dict[int, float] = {}
    while time.monotonic() - start < watch_ms / 1000.0:
        time.sleep(step_ms / 1000.0)
        now_read = read()
        stamp = time.monotonic()
        for index, (before, after) in enumerate(zip(last, now_read)):
            if before != after:
                changed_at[index + 1] = stamp
        last = now_read
    end = time.monotonic()
    return {node_id: SlotSeen(disk.slot_from_bytes(node_id, last[node_id - 1]),
                              None if node_id not in changed_at else (end - changed_at[node_id]) * 1000.0)
            for node_id in range(1, disk.layout.nodes_max + 1)}


# --------------------------------------------------------------------------
# what the disk says of every node

def survey(disk: ClusterDisk, watch_ms: float | None = None) -> dict[str, Any]:
    """The node table with each node's view state and slot, as one dict
    (what ``node list --json`` prints)."""
    from clusterfw.node.status import from_disk

    assert disk.superblock is not None
    if watch_ms is None:
        watch_ms = WATCH_INTERVALS * disk.superblock.heartbeat_interval_ms
    seen = watch_slots(disk, watch_ms)
    status = from_disk(disk)  # after the watch: the view as of now
    in_view = {n["id"]: n for n in status["nodes"]}
    nodes: list[dict[str, Any]] = []
    for node_id, entry in enumerate(disk.read_node_table(), start=1):
        if isinstance(entry, NotWritten):
            continue
        if not isinstance(entry, NodeConfig):
            nodes.append({"id": node_id, "name": None, "error": entry.code, "message": str(entry)})
            continue
        row = in_view.get(node_id, {})
        slot = seen[node_id]
        rec = slot.record
        if isinstance(rec, SlotRecord):
            slot_json: dict[str, Any] = {"incarnation": incarnation_text(rec.incarnation), "seq": rec.seq,
                                         "request": rec.request.name.lower(), "seen_epoch": rec.seen_epoch}
        elif isinstance(rec, NotWritten):
            slot_json = {"error": "not-written", "message": "never written"}
        else:
            slot_json = {"error": rec.code, "message": str(rec)}
        nodes.append({
            "id": node_id, "name": entry.name,
            "state": row.get("state", NodeState.INACTIVE.value),
            "forced": bool(row.get("forced")),
            "master": bool(row.get("master")),
            "slot": slot_json,
            "heartbeating": slot.changed_ago_ms is not None,
            "heartbeat_age_ms": None if slot.changed_ago_ms is None else round(slot.changed_ago_ms),
        })
    return {"cluster": disk.superblock.cluster_name, "epoch": status.get("epoch"),
            "master": status.get("master"), "view_error": status.get("view_error"),
            "watched_ms": round(watch_ms), "nodes": nodes}


def _heartbeat_text(node: dict[str, Any], watched_ms: int) -> str:
    if node["heartbeating"]:
        return f"{node['heartbeat_age_ms'] / 1000:.1f} s ago"
    if node["slot"].get("error") == "not-written":
        return "never"
    return f"none in {watched_ms / 1000:g} s"


def _slot_text(slot: dict[str, Any]) -> str:
    if "error" in slot:
        return slot["message"] if slot["error"] == "not-written" else f"damaged ({slot['error']})"
    return f"inc {slot['incarnation']} seq {slot['seq']}"


def format_node_list(out: dict[str, Any], device: str) -> str:
    from clusterfw.core.text import printable

    epoch = out.get("epoch")
    lines = [f"cluster {printable(out['cluster'])} on {device}: epoch {'?' if epoch is None else epoch}, "
             f"master {printable(out.get('master') or '-')}; slots watched for {out['watched_ms']} ms"]
    if out.get("view_error"):
        lines.append(f"WARNING: {printable(out['view_error'])}")
    if not out["nodes"]:
        lines.append(f"the node table is empty: add nodes with 'clusterfw node add {device} --name NAME'")
        return "\n".join(lines)
    rows = [["NODE", "ID", "STATE", "SLOT", "HEARTBEAT"]]
    for node in out["nodes"]:
        if node.get("name") is None:
            rows.append(["?", str(node["id"]), f"damaged entry ({node['error']})", "-", "-"])
            continue
        state = node["state"] + (" (forced)" if node["forced"] and node["state"] == "inactive" else "")
        rows.append([printable(node["name"]) + ("*" if node["master"] else ""), str(node["id"]), state,
                     _slot_text(node["slot"]), _heartbeat_text(node, out["watched_ms"])])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines.append("")
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines += ["", "* master"]
    return "\n".join(lines)


def cmd_node_list(args: argparse.Namespace) -> int:
    device = configured_disk(args.device, "list")
    dev = open_device(device, readonly=True)
    try:
        out = survey(open_cluster(dev))
    except DeviceError as exc:
        raise device_error(dev, exc) from None
    finally:
        dev.close()
    if args.json:
        json.dump({"device": device, **out}, sys.stdout)
        print()
    else:
        print(format_node_list(out, device))
    return 0


# --------------------------------------------------------------------------
# node remove

def why_active(node: dict[str, Any], epoch: int | None, watched_ms: int) -> str | None:
    """Why ``node`` (a ``survey`` row) is not inactive, or None if it is."""
    from clusterfw.core.text import printable

    name = printable(node["name"])
    where = f"in epoch {epoch}" if epoch is not None else "in the disk's view"
    beat = (f"heartbeat {node['heartbeat_age_ms'] / 1000:.1f} s ago" if node["heartbeating"]
            else f"no heartbeat in {watched_ms / 1000:g} s")
    state = node["state"]
    if state == NodeState.FORCED_LEAVING.value:
        return (f"{name} is being forced out {where} ({beat}): wait until its forced leave completed "
                f"('clusterfw status' shows it inactive), then remove it")
    if state in ACTIVE_STATES:
        if node["heartbeating"]:
            return f"{name} is {state} {where} ({beat}): stop its daemon first ('clusterfw leave' on {name})"
        return (f"{name} is {state} {where} ({beat}): its daemon is not running, but the view still counts it; "
                f"once a master runs it forces {name} out ('clusterfw status' then shows it inactive), then "
                f"remove it")
    if node["heartbeating"]:
        return (f"{name} is {state} {where}, but its slot is being written ({beat}): a daemon runs for it; "
                f"stop it first ('systemctl stop clusterfw' on {name})")
    return None


def cmd_node_remove(args: argparse.Namespace) -> int:
    from clusterfw.cli.disk import resolve_node
    from clusterfw.core.text import printable

    device = configured_disk(args.device, "remove")
    dev = open_device(device, readonly=False)
    try:
        disk = open_cluster(dev)
        assert disk.superblock is not None
        node_id, name = resolve_node(disk, args.name)
        if name is None:
            raise CliError(f"node id {node_id} is not in the node table: nothing to remove ('clusterfw node list "
                           f"{device}' shows the nodes)", EXIT_USAGE)
        out = survey(disk)
        if out.get("view_error"):
            raise CliError(f"cannot tell whether {printable(name)} is active: {out['view_error']}", EXIT_REFUSED)
        [node] = [n for n in out["nodes"] if n["id"] == node_id]
        why = why_active(node, out["epoch"], out["watched_ms"])
        if why is not None:
            raise CliError(f"not removed: {why}", EXIT_REFUSED)
        admin.remove_node(disk, node_id)
    except NodeTableError as exc:
        raise CliError(str(exc), EXIT_REFUSED) from None
    except DeviceError as exc:
        raise device_error(dev, exc) from None
    finally:
        dev.close()
    print(f"removed node '{printable(name)}' (id {node_id}) from cluster '{printable(out['cluster'])}' on "
          f"{device}: it was inactive in epoch {out['epoch']} with no heartbeat in {out['watched_ms']} ms; its "
          f"slot is kept ('clusterfw node add {device} --name NAME --id {node_id}' reuses the id)")
    return 0


__all__ = ["configured_disk", "format_node_list", "survey", "watch_slots", "why_active"]
