"""``clusterfw disk init|dump|reset-slot``, ``clusterfw node add`` and ``clusterfw probe``
(``node list`` and ``node remove`` are in nodetable.py).

How this works
--------------
Thin wrappers over ``clusterfw.ondisk``: parse and check the arguments, open
the device with O_DIRECT, call the admin operation, print the result.  Every
user error becomes a ``CliError`` that names the bad input and the fix:

* exit 2 (usage): a bad name, an id or count out of range, a device that
  does not exist or is too small;
* exit 3 (refused): the device holds data (``disk init`` without
  ``--force``), a duplicate node name or id;
* exit 1 (failed): I/O errors, a device that is not a clusterfw disk
  (``dump``, ``node add``, ``probe``; a superblock that does not decode is
  explained by ``admin.unreadable_superblock_advice``: initialise a device
  that holds no clusterfw record, but never advise a plain ``disk init`` for
  a damaged one).

``probe`` prints udev-style ``KEY=VALUE`` lines, for an
``IMPORT{program}`` rule.
"""
from __future__ import annotations

import argparse
import datetime
import enum
import errno
import json
import re
import sys
from dataclasses import fields, is_dataclass
from typing import Any, Iterable

from clusterfw.cli.errors import EXIT_FAILED, EXIT_REFUSED, EXIT_USAGE, CliError
from clusterfw.cli.options import add_json
from clusterfw.core import timing
from clusterfw.core.model import NODES_MAX, NodeConfig, SlotRecord, ViewRecord
from clusterfw.core.text import incarnation_text
from clusterfw.ondisk import admin, codec
from clusterfw.ondisk.blockdev import BlockDevice
from clusterfw.ondisk.clusterdisk import ClusterDisk, best_view_copy, read_superblock_from
from clusterfw.ondisk.errors import (
    BlockError,
    BlockSizeMismatch,
    DeviceError,
    DeviceTooSmall,
    FormatRefused,
    IoError,
    NodeTableError,
    NotWritten,
)
from clusterfw.ondisk.layout import AreaKind, Layout

ADMIN_IO_TIMEOUT_MS = 30_000  # admin tools wait longer than the daemon does
DEFAULT_MAX_NODES = 16
COPY_NAMES = ("A", "B")
TIMING_OPTIONS = {"heartbeat_interval_ms": "--heartbeat-ms", "io_timeout_ms": "--io-timeout-ms"}


def register(subparsers: argparse._SubParsersAction) -> None:
    disk = subparsers.add_parser("disk", help="initialise or inspect the shared disk",
                                 description="Initialise or inspect the shared disk.")
    disk_sub = disk.add_subparsers(dest="disk_command", metavar="SUBCOMMAND")
    disk_sub.required = True

    init = disk_sub.add_parser(
        "init", help="initialise DEVICE for a new cluster",
        description="Initialise DEVICE for a new cluster: zero the metadata areas and write the "
                    "superblock.  Refuses a device holding a filesystem, a partition table or another "
                    "cluster unless --force.")
    init.add_argument("device", metavar="DEVICE", help="the shared block device (or a file, for tests)")
    init.add_argument("--cluster", required=True, metavar="NAME", help="the cluster's name")
    init.add_argument("--max-nodes", type=int, default=DEFAULT_MAX_NODES, metavar="N",
                      help=f"node ids the disk has room for, 1..{NODES_MAX} (default {DEFAULT_MAX_NODES})")
    init.add_argument("--profile", choices=tuple(timing.PROFILES_BY_NAME), metavar="lab|san",
                      help=profile_help())
    init.add_argument("--heartbeat-ms", type=int, metavar="MS",
                      help=f"heartbeat interval, at least {timing.HEARTBEAT_MIN_MS} (with --io-timeout-ms, "
                           f"instead of --profile)")
    init.add_argument("--io-timeout-ms", type=int, metavar="MS",
                      help=f"disk I/O timeout all other timeouts derive from, at least {timing.IO_TIMEOUT_MIN_MS} "
                           f"(with --heartbeat-ms, instead of --profile); the daemons run with the san profile's "
                           f"fence margin and transition timeout from {timing.SAN_IO_TIMEOUT_MIN_MS} ms on, "
                           f"else the lab profile's")
    init.add_argument("--force", action="store_true", help="destroy whatever the device holds")
    add_json(init, "print one JSON object: the disk and its timing (profile, derived timeouts, failover time)")
    init.set_defaults(func=cmd_disk_init)

    dump = disk_sub.add_parser("dump", help="show everything on DEVICE",
                               description="Show the superblock, layout, node table, every slot and "
                                           "every view copy (decoded, or why it was rejected).")
    dump.add_argument("device", metavar="DEVICE", help="the shared block device (or a file, for tests)")
    add_json(dump)
    dump.set_defaults(func=cmd_disk_dump)

    reset = disk_sub.add_parser(
        "reset-slot", help="reset a damaged slot to the never-written state",
        description="Reset NODE's slot on DEVICE to the never-written (all-zero) state, so that the node's "
                    "daemon can start again (it refuses to start on a damaged slot).  Refuses unless the "
                    "slot is damaged -- it does not decode -- and stays unchanged while it is watched for "
                    "three heartbeat intervals: a valid slot holds the node's Disk Paxos ballot state and "
                    "is never reset, and a slot being written has a running daemon.  Stop NODE's daemon "
                    "(on every host) first.",
        epilog="exit codes: 0 reset; 1 failed (I/O); 2 bad usage (unknown node, not a device); "
               "3 refused (the slot is valid, never written, or being written)")
    reset.add_argument("device", metavar="DEVICE", help="the shared block device (or a file, for tests)")
    reset.add_argument("node", metavar="NODE", help="the node's name in the node table, or its node id")
    add_json(reset, "print one JSON object (also when refused)")
    reset.set_defaults(func=cmd_disk_reset_slot)

    node = subparsers.add_parser("node", help="manage the node table",
                                 description="Manage the node table on the shared disk.")
    node_sub = node.add_subparsers(dest="node_command", metavar="SUBCOMMAND")
    node_sub.required = True
    add = node_sub.add_parser("add", help="add a node to the node table",
                              description="Add a node to the node table (names: a-z 0-9 '-').")
    add.add_argument("device", metavar="DEVICE", help="the shared block device (or a file, for tests)")
    add.add_argument("--name", required=True, metavar="NAME", help="the node's name, e.g. n1")
    add.add_argument("--id", type=int, dest="node_id", metavar="N", help="its node id (default: lowest free)")
    add.set_defaults(func=cmd_node_add)
    from clusterfw.cli import nodetable  # list, remove: they import this module's helpers
    nodetable.register(node_sub)

    probe = subparsers.add_parser(
        "probe", help="is DEVICE a clusterfw disk? (udev KEY=VALUE output)",
        description="Print CLUSTERFW_CLUSTER=..., CLUSTERFW_UUID=... if DEVICE is a clusterfw disk; "
                    "exit 1 if it is not.")
    probe.add_argument("device", metavar="DEVICE", help="the block device to look at (udev passes $devnode)")
    probe.set_defaults(func=cmd_probe)


# --------------------------------------------------------------------------
# helpers

def open_device(path: str, readonly: bool) -> BlockDevice:
    try:
        return BlockDevice(path, readonly=readonly, io_timeout_ms=ADMIN_IO_TIMEOUT_MS)
    except IoError as exc:
        usage = exc.errno in (errno.ENOENT, errno.ENOTBLK, errno.EINVAL, errno.ENXIO)
        raise CliError(str(exc), EXIT_USAGE if usage else EXIT_FAILED) from None


def open_cluster(dev: BlockDevice) -> ClusterDisk:
    try:
        return ClusterDisk.open(dev)
    except BlockError as exc:
        raise CliError(admin.unreadable_superblock_advice(dev, exc)) from None
    except DeviceTooSmall as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except BlockSizeMismatch as exc:
        raise CliError(f"{dev.path}: {exc}") from None


def device_error(dev: BlockDevice | None, exc: DeviceError) -> CliError:
    where = dev.path if dev is not None else "the device"
    return CliError(f"I/O on {where} failed: {exc}; check the device and its connection", EXIT_FAILED)


def jsonable(value: Any) -> Any:
    """Records (and errors) as plain JSON values."""
    if isinstance(value, BlockError):
        return {"error": value.code, "message": str(value)}
    if isinstance(value, enum.Enum):
        return value.value if isinstance(value.value, str) else value.name.lower()
    if is_dataclass(value) and not isinstance(value, type):
        # incarnations (also a lease's inp_incarnation, master_incarnation) as hex strings, as everywhere
        return {f.name: (incarnation_text(getattr(value, f.name)) if f.name.endswith("incarnation")
                         and isinstance(getattr(value, f.name), int) else jsonable(getattr(value, f.name)))
                for f in fields(value)}
    if isinstance(value, (bytes, bytearray)):
        return codec.uuid_text(bytes(value)) if len(value) == codec.UUID_BYTES else bytes(value).hex()
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    return value


def _runs(entries: list[Any]) -> Iterable[tuple[int, int, Any]]:
    """Group consecutive ``NotWritten`` entries: yields (first_id, last_id,
    entry) with node ids starting at 1."""
    index = 0
    while index < len(entries):
        entry = entries[index]
        end = index
        if isinstance(entry, NotWritten):
            while end + 1 < len(entries) and isinstance(entries[end + 1], NotWritten):
                end += 1
        yield index + 1, end + 1, entry
        index = end + 1


def _ids(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def _error_text(exc: BlockError) -> str:
    return "not written" if isinstance(exc, NotWritten) else f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------
# disk init

def _profile_consequence(name: str) -> str:
    """``heartbeat 100 ms, io timeout 200 ms: a crashed node is forced out
    after about 1.2 s``, computed from the profile."""
    profile = timing.PROFILES_BY_NAME[name]
    t = timing.derive(profile)
    return (f"heartbeat {timing.ms_text(t.heartbeat_interval_ms)}, io timeout {timing.ms_text(t.io_timeout_ms)}: "
            f"a crashed node is forced out after about {timing.ms_text(timing.failover_ms(t))}")


def profile_help() -> str:
    return "; ".join(f"{name}: {_profile_consequence(name)}" for name in timing.PROFILES_BY_NAME) + \
        " (or give --heartbeat-ms and --io-timeout-ms)"


def timing_choice_hint() -> str:
    """What ``disk init`` says when no timing was chosen."""
    san = timing.derive(timing.SAN)
    return (f"choose a timing: --profile lab ({_profile_consequence('lab')}; for a lab or a local disk) or "
            f"--profile san (heartbeat {timing.ms_text(san.heartbeat_interval_ms)}, io timeout "
            f"{timing.ms_text(san.io_timeout_ms)}: about {timing.ms_text(timing.failover_ms(san))}; for a SAN "
            f"or multipath disk, whose I/O may take seconds), or --heartbeat-ms and --io-timeout-ms")


def chosen_settings(args: argparse.Namespace) -> tuple[int, int]:
    """(heartbeat, io timeout) from --profile or both explicit options;
    a CliError (usage) naming the choices otherwise."""
    explicit = {"--heartbeat-ms": args.heartbeat_ms, "--io-timeout-ms": args.io_timeout_ms}
    given = [option for option, value in explicit.items() if value is not None]
    if args.profile is not None:
        if given:
            raise CliError(f"--profile {args.profile} sets the heartbeat and the io timeout: give either "
                           f"--profile or both --heartbeat-ms and --io-timeout-ms, not {' and '.join(given)} too",
                           EXIT_USAGE)
        profile = timing.PROFILES_BY_NAME[args.profile]
        return profile.heartbeat_interval_ms, profile.io_timeout_ms
    if not given:
        raise CliError(timing_choice_hint(), EXIT_USAGE)
    if len(given) == 1:
        missing = "--io-timeout-ms" if given == ["--heartbeat-ms"] else "--heartbeat-ms"
        raise CliError(f"{given[0]} needs {missing} too (or use --profile lab|san instead of both): "
                       f"{timing_choice_hint()}", EXIT_USAGE)
    return args.heartbeat_ms, args.io_timeout_ms


def cmd_disk_init(args: argparse.Namespace) -> int:
    try:
        admin.check_cluster_name(args.cluster)
    except ValueError as exc:
        raise CliError(f"--cluster: {exc}", EXIT_USAGE) from None
    if not 1 <= args.max_nodes <= NODES_MAX:
        raise CliError(f"--max-nodes {args.max_nodes} is out of range: use 1..{NODES_MAX}", EXIT_USAGE)
    heartbeat_ms, io_timeout_ms = chosen_settings(args)
    try:
        timing.check_settings(heartbeat_ms, io_timeout_ms)
    except timing.SettingOutOfRange as exc:
        option = TIMING_OPTIONS[exc.setting]
        lab = timing.LAB
        raise CliError(f"{option} {exc.value} is out of range: use {exc.low}..{exc.high} ms ({exc.why}); or "
                       f"choose a profile: --profile lab is --heartbeat-ms {lab.heartbeat_interval_ms} "
                       f"--io-timeout-ms {lab.io_timeout_ms}", EXIT_USAGE) from None
    dev = open_device(args.device, readonly=False)
    try:
        sb = admin.format_disk(dev, args.cluster, args.max_nodes, heartbeat_ms, io_timeout_ms,
                               force=args.force)
        layout_total = Layout(sb.block_size, sb.nodes_max).total_bytes
    except FormatRefused as exc:
        raise CliError(str(exc), EXIT_REFUSED) from None
    except DeviceTooSmall as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except DeviceError as exc:
        raise device_error(dev, exc) from None
    finally:
        dev.close()
    name, profile = timing.disk_profile(sb.heartbeat_interval_ms, sb.io_timeout_ms)
    summary = timing.summary(name, profile)
    if args.json:
        json.dump({"device": args.device, "cluster": sb.cluster_name, "uuid": codec.uuid_text(sb.cluster_uuid),
                   "nodes_max": sb.nodes_max, "block_size": sb.block_size, "metadata_bytes": layout_total,
                   "timing": summary}, sys.stdout)
        print()
        return 0
    print(f"initialised {args.device}: cluster '{sb.cluster_name}' uuid {codec.uuid_text(sb.cluster_uuid)}, "
          f"{sb.nodes_max} node ids, {sb.block_size}-byte blocks, heartbeat {sb.heartbeat_interval_ms} ms, "
          f"io timeout {sb.io_timeout_ms} ms; metadata uses the first {layout_total} bytes")
    print(timing_sentence(summary, chosen=args.profile))
    print(f"next: clusterfw node add {args.device} --name n1")
    return 0


def timing_sentence(summary: dict[str, Any], chosen: str | None = None) -> str:
    """``profile lab: dead after 1017 ms; a crashed node's services restart
    elsewhere after about 1.2 s``."""
    name = summary["profile"]
    how = (f"profile {name}" if chosen else
           f"profile {name} (derived from the io timeout: san from {timing.SAN_IO_TIMEOUT_MIN_MS} ms, else lab; "
           f"its fence margin {summary['fence_margin_ms']} ms and transition timeout apply)")
    return (f"timing: {how}; fence after {summary['fence_after_ms']} ms, dead after {summary['dead_after_ms']} ms: "
            f"a crashed node's services restart elsewhere after about {timing.ms_text(summary['failover_ms'])}")


# --------------------------------------------------------------------------
# disk dump

def collect_dump(disk: ClusterDisk) -> dict[str, Any]:
    """Everything on the disk, as records or errors (not yet JSON)."""
    layout = disk.layout
    areas: dict[str, Any] = {}
    for kind in AreaKind:
        try:
            areas[layout.reserved_area(kind).name] = disk.read_area_header(kind)
        except BlockError as exc:
            areas[layout.reserved_area(kind).name] = exc
    return {
        "superblock": disk.superblock,
        "layout": layout,
        "areas": areas,
        "nodes": disk.read_node_table(),
        "slots": disk.read_slots(),
        "views": [disk.read_view_copies(node_id) for node_id in range(1, layout.nodes_max + 1)],
        "locks": _lock_entries(disk.read_lock_area()),
    }


def _lock_entries(area: dict[int, dict[int, Any]]) -> list[tuple[int, int, Any]]:
    """(stripe, node id, entry) of every lock sector that holds or asks for a
    lock, or is damaged (never-written and FREE sectors are left out)."""
    from clusterfw.core.dlm import EntryState, LockEntry
    from clusterfw.core.node import Unreadable

    out: list[tuple[int, int, Any]] = []
    for stripe, sectors in sorted(area.items()):
        for node_id, entry in sorted(sectors.items()):
            if isinstance(entry, LockEntry) and entry.state is not EntryState.FREE:
                out.append((stripe, node_id, entry))
            elif isinstance(entry, Unreadable) and not entry.never_written:
                out.append((stripe, node_id, entry))
    return out


def dump_json(dump: dict[str, Any]) -> dict[str, Any]:
    sb = dump["superblock"]
    out: dict[str, Any] = {
        "format_version": codec.FORMAT_VERSION,
        "superblock": jsonable(sb),
        "layout": dump["layout"].describe(),
        "areas": {name: jsonable(header) for name, header in dump["areas"].items()},
        "nodes": [], "slots": [], "views": [],
        "locks": [{"stripe": stripe, "node_id": node_id,
                   **({"record": jsonable(e)} if hasattr(e, "ticket") else {"error": e.reason})}
                  for stripe, node_id, e in dump["locks"]],
    }
    for node_id, entry in enumerate(dump["nodes"], start=1):
        out["nodes"].append({"id": node_id, **({"record": jsonable(entry)} if isinstance(entry, NodeConfig)
                                                else jsonable(entry))})
    for node_id, entry in enumerate(dump["slots"], start=1):
        out["slots"].append({"id": node_id, **({"record": jsonable(entry)} if isinstance(entry, SlotRecord)
                                                else jsonable(entry))})
    for node_id, copies in enumerate(dump["views"], start=1):
        best = best_view_copy(copies)
        out["views"].append({
            "id": node_id,
            "best": None if best is None else COPY_NAMES[best],
            "copies": [{"copy": COPY_NAMES[i], **({"record": jsonable(c)} if isinstance(c, ViewRecord)
                                                   else jsonable(c))} for i, c in enumerate(copies)],
        })
    return out


def _slot_line(rec: SlotRecord) -> str:
    lease = rec.lease
    regs = ",".join(f"{r.name}@{r.level}({'/'.join(map(str, r.barriers))})" for r in rec.registrations) or "-"
    acks = ",".join(f"{level}:{batch}" for level, batch in rec.acks) or "-"
    return (f"inc={rec.incarnation} seq={rec.seq} request={rec.request.name.lower()} "
            f"lease[term={lease.term} mbal={lease.mbal} bal={lease.bal} inp={lease.inp}/{lease.inp_incarnation} "
            f"committed={lease.committed_term} master={lease.master}/{lease.master_incarnation}"
            f"{' resigned' if lease.resigned else ''}] "
            f"timing[hb={rec.timing.heartbeat_interval_ms} io={rec.timing.io_timeout_ms} "
            f"fence={rec.timing.fence_after_ms} dead={rec.timing.dead_after_ms}] "
            f"regs={regs} acks={acks} seen_epoch={rec.seen_epoch}")


def _view_lines(rec: ViewRecord) -> list[str]:
    lines = [f"term={rec.term} epoch={rec.epoch} seq={rec.seq} inc={rec.incarnation} "
             f"next_batch={rec.next_batch_id} levels="
             + (",".join(f"{s.level}({'/'.join(map(str, s.barriers))})" for s in rec.levels) or "-")]
    for m in rec.members:
        extra = [flag for flag in ("forced", "ready", "leave_requested") if getattr(m, flag)]
        lines.append(f"  member {m.node_id}: {m.state.value} inc={m.incarnation}"
                     f"{' kind=' + m.kind.name.lower() if m.kind else ''} cursor={m.cursor} "
                     f"barrier={m.barrier} top_level={m.top_level}{' ' + ' '.join(extra) if extra else ''}")
    for b in rec.batches:
        entries = ",".join(f"{e.node_id}:{e.kind.name.lower()}#{e.barrier}" for e in b.entries)
        lines.append(f"  batch level={b.level} id={b.batch_id} entries={entries or '-'} "
                     f"participants={','.join(map(str, b.participants)) or '-'}")
    for r in rec.rejections:
        lines.append(f"  rejected node {r.node_id} inc={r.incarnation} level={r.level}: {r.reason}")
    return lines


def dump_text(dump: dict[str, Any]) -> str:
    sb, layout = dump["superblock"], dump["layout"]
    created = datetime.datetime.fromtimestamp(sb.created_at_s, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    out = [
        "superblock",
        f"  cluster        {sb.cluster_name}",
        f"  uuid           {codec.uuid_text(sb.cluster_uuid)}",
        f"  format         version {codec.FORMAT_VERSION}, {sb.block_size}-byte blocks, {sb.nodes_max} node ids",
        f"  timing         heartbeat {sb.heartbeat_interval_ms} ms, io timeout {sb.io_timeout_ms} ms",
        f"  created        {created}",
        "",
        "layout (bytes)",
        f"  {'area':<18} {'offset':>10} {'size':>10}",
    ]
    for area in layout.areas():
        out.append(f"  {area.name:<18} {area.offset:>10} {area.size_bytes:>10}")
    out.append(f"  {'(data)':<18} {layout.data_offset:>10}")
    for name, header in dump["areas"].items():
        state = (f"area version {header.area_version}" if isinstance(header, codec.AreaHeader)
                 else _error_text(header))
        out.append(f"  header of {name}: {state}")
    out += ["", "nodes"]
    for first, last, entry in _runs(dump["nodes"]):
        text = entry.name if isinstance(entry, NodeConfig) else _error_text(entry)
        out.append(f"  {_ids(first, last):>7}  {text}")
    out += ["", "slots"]
    for first, last, entry in _runs(dump["slots"]):
        text = _slot_line(entry) if isinstance(entry, SlotRecord) else _error_text(entry)
        out.append(f"  {_ids(first, last):>7}  {text}")
    out += ["", "views"]
    flat = []
    for copies in dump["views"]:
        flat.append(copies if any(not isinstance(c, NotWritten) for c in copies) else NotWritten(""))
    for first, last, entry in _runs(flat):
        if isinstance(entry, NotWritten):
            out.append(f"  {_ids(first, last):>7}  not written")
            continue
        best = best_view_copy(entry)
        for index, copy in enumerate(entry):
            marker = "*" if best == index else " "
            label = f"{first}{COPY_NAMES[index]}{marker}"
            if isinstance(copy, ViewRecord):
                lines = _view_lines(copy)
                out.append(f"  {label:>7}  {lines[0]}")
                out.extend(f"           {line}" for line in lines[1:])
            else:
                out.append(f"  {label:>7}  {_error_text(copy)}")
    out.append("  (* = the copy a reader uses)")
    out += ["", "locks (sectors that hold or ask for a lock; 'clusterfw locks' says which still count)"]
    if not dump["locks"]:
        out.append("  none")
    for stripe, node_id, e in dump["locks"]:
        if not hasattr(e, "ticket"):
            out.append(f"  stripe {stripe} node {node_id}: damaged ({e.reason})")
            continue
        when = (datetime.datetime.fromtimestamp(e.stamp_ms / 1000, datetime.timezone.utc).strftime("%H:%M:%S UTC")
                if e.stamp_ms else "-")
        out.append(f"  stripe {stripe} node {node_id}: {e.state.name.lower()} '{e.name}' {e.mode.name.lower()} "
                   f"ticket={e.ticket} token={e.token} inc={e.incarnation:x} pid={e.owner or '-'} at {when}")
    return "\n".join(out)


def cmd_disk_dump(args: argparse.Namespace) -> int:
    dev = open_device(args.device, readonly=True)
    try:
        disk = open_cluster(dev)
        dump = collect_dump(disk)
    except DeviceError as exc:
        raise device_error(dev, exc) from None
    finally:
        dev.close()
    if args.json:
        json.dump(dump_json(dump), sys.stdout, indent=2)
        print()
    else:
        print(dump_text(dump))
    return 0


# --------------------------------------------------------------------------
# disk reset-slot

RESET_WATCH_INTERVALS = 3  # a slot must stay unchanged this many heartbeat intervals before a reset


def resolve_node(disk: ClusterDisk, text: str) -> tuple[int, str | None]:
    """NODE as (node id, name or None): a name from the node table, or an id."""
    from clusterfw.core.text import printable

    table = disk.read_node_table()
    names = {cfg.node_id: cfg.name for cfg in table if isinstance(cfg, NodeConfig)}
    for node_id, name in names.items():
        if name == text:
            return node_id, name
    nodes_max = disk.layout.nodes_max
    if text.isdigit():
        node_id = int(text)
        if 1 <= node_id <= nodes_max:
            return node_id, names.get(node_id)
        raise CliError(f"node id {node_id} is out of range: this disk holds node ids 1..{nodes_max}", EXIT_USAGE)
    known = ", ".join(f"{printable(n)} (id {i})" for i, n in sorted(names.items())) or "none"
    raise CliError(f"no node named '{printable(text)}' in the node table (nodes: {known}): give a node's name "
                   f"or its id 1..{nodes_max}", EXIT_USAGE)


def _reset_refused(args: argparse.Namespace, out: dict[str, Any], reason: str, message: str) -> CliError:
    if args.json:
        json.dump({**out, "reset": False, "refused": reason, "message": message}, sys.stdout)
        print()
    return CliError(message, EXIT_REFUSED)


def cmd_disk_reset_slot(args: argparse.Namespace) -> int:
    import time

    from clusterfw.core.text import printable

    dev = open_device(args.device, readonly=False)
    try:
        disk = open_cluster(dev)
        assert disk.superblock is not None
        node_id, name = resolve_node(disk, args.node)
        who = f"node {printable(name)} (id {node_id})" if name else f"node id {node_id} (not in the node table)"
        offset, length = disk.slot_extent(node_id)
        out: dict[str, Any] = {"device": args.device, "cluster": disk.superblock.cluster_name,
                               "node": name, "node_id": node_id}
        before = bytes(disk.dev.read(offset, length))
        rec = disk.slot_from_bytes(node_id, before)
        if isinstance(rec, SlotRecord):
            raise _reset_refused(
                args, out, "valid",
                f"the slot of {who} is valid (incarnation {rec.incarnation:x}, seq {rec.seq}): a valid slot is "
                f"never reset -- it holds the node's Disk Paxos ballot state, which must carry over. Nothing "
                f"to do here; if the node's daemon does not start, its log says why "
                f"('journalctl -u clusterfw'); 'clusterfw disk dump {args.device}' shows the disk")
        if isinstance(rec, NotWritten):
            raise _reset_refused(
                args, out, "not-written",
                f"the slot of {who} is already in the never-written state: nothing to reset; the node's "
                f"daemon can start")
        error = printable(f"{type(rec).__name__}: {rec}")
        out["was"] = {"error": rec.code, "message": printable(str(rec))}
        watch_ms = RESET_WATCH_INTERVALS * disk.superblock.heartbeat_interval_ms
        time.sleep(watch_ms / 1000.0)
        again = bytes(disk.dev.read(offset, length))
        out["watched_ms"] = watch_ms
        if again != before:
            now = disk.slot_from_bytes(node_id, again)
            state = (f"it is valid now (incarnation {now.incarnation:x}, seq {now.seq})"
                     if isinstance(now, SlotRecord) else "its bytes changed")
            raise _reset_refused(
                args, out, "being-written",
                f"the slot of {who} was damaged ({error}) but changed within {watch_ms} ms: {state} -- a "
                f"daemon is writing it, and a running node repairs its own slot with its next heartbeat. "
                f"Nothing reset; if it stays damaged, stop that node's daemon on every host and try again")
        disk.dev.write(offset, bytes(length))
        after = disk.slot_from_bytes(node_id, bytes(disk.dev.read(offset, length)))
        if not isinstance(after, NotWritten):
            raise CliError(f"the slot of {who} was written with zeros but reads back as {type(after).__name__}: "
                           f"{printable(str(after))}; the device does not keep what is written: check it",
                           EXIT_FAILED)
    except DeviceError as exc:
        raise device_error(dev, exc) from None
    finally:
        dev.close()
    out["reset"] = True
    if args.json:
        json.dump(out, sys.stdout)
        print()
    else:
        print(f"reset the slot of {who} on {args.device}: it was damaged ({error}) and unchanged for "
              f"{watch_ms} ms; it is now never written")
        if name:
            print(f"next: start node {printable(name)}'s daemon; it starts a new ballot state and joins as a "
                  f"new incarnation")
    return 0


# --------------------------------------------------------------------------
# node add

def cmd_node_add(args: argparse.Namespace) -> int:
    try:
        admin.check_node_name(args.name)
    except ValueError as exc:
        raise CliError(f"--name: {exc}", EXIT_USAGE) from None
    dev = open_device(args.device, readonly=False)
    try:
        disk = open_cluster(dev)
        nodes_max = disk.layout.nodes_max
        if args.node_id is not None and not 1 <= args.node_id <= nodes_max:
            raise CliError(f"--id {args.node_id} is out of range: this disk holds node ids 1..{nodes_max} "
                           f"(set by 'disk init --max-nodes'); pick an id in that range or omit --id", EXIT_USAGE)
        cfg = admin.add_node(disk, args.name, args.node_id)
    except NodeTableError as exc:
        raise CliError(str(exc), EXIT_REFUSED) from None
    except DeviceError as exc:
        raise device_error(dev, exc) from None
    finally:
        dev.close()
    assert disk.superblock is not None
    print(f"added node '{cfg.name}' with id {cfg.node_id} to cluster '{disk.superblock.cluster_name}'")
    return 0


# --------------------------------------------------------------------------
# probe

_UDEV_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def cmd_probe(args: argparse.Namespace) -> int:
    try:
        found = admin.probe(args.device)
        if found is None:
            with BlockDevice(args.device, readonly=True, io_timeout_ms=admin.PROBE_IO_TIMEOUT_MS) as dev:
                try:
                    read_superblock_from(dev)
                    advice = f"{args.device} changed while it was probed: probe it again"
                except BlockError as exc:
                    # udev runs this on every device: judge by the superblock's bytes alone, no scan
                    advice = admin.unreadable_superblock_advice(dev, exc, scan=False)
            raise CliError(advice, EXIT_FAILED)
    except DeviceTooSmall as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    except DeviceError as exc:
        raise CliError(f"cannot probe {args.device}: {exc}", EXIT_FAILED) from None
    print(f"CLUSTERFW_CLUSTER={_UDEV_UNSAFE.sub('_', found['cluster_name'])}")
    print(f"CLUSTERFW_UUID={found['cluster_uuid']}")
    print(f"CLUSTERFW_FORMAT_VERSION={found['format_version']}")
    print(f"CLUSTERFW_BLOCK_SIZE={found['block_size_bytes']}")
    print(f"CLUSTERFW_NODES_MAX={found['nodes_max']}")
    return 0
