"""The administrator's operations on the shared disk: ``format_disk``,
``add_node``, ``remove_node``, ``probe``.

How this works
--------------
``format_disk`` first looks for anything worth keeping on the device and
refuses (``FormatRefused``, naming what it found) unless ``force``:

1. our own superblock magic at offset 0 (another -- or this -- clusterfw
   cluster, valid or damaged), then any clusterfw record magic anywhere in
   the metadata (``scan_records``: node table, slots, views, area headers,
   lock sectors, registry copies), so that a disk whose superblock was damaged or zeroed --
   a live cluster's disk, perhaps -- is never wiped without ``force``;
2. ``blkid -p`` (low-level probing, util-linux) when the device has a path
   and the program exists: any filesystem, RAID member, crypto volume or
   partition table it reports;
3. only when ``blkid`` cannot be used (a ``SimDisk``, or no util-linux): a
   short built-in list of well-known signatures (ext2/3/4, xfs, btrfs, swap,
   LUKS, LVM, ISO 9660, GPT, DOS boot sector).

Then it zeroes every metadata area (so every slot, view and node-table
record reads as ``NotWritten``), writes the reserved areas' headers, and
writes the superblock *last*: a device on which formatting was interrupted
has no superblock and is not mistaken for a cluster.  With ``force`` and a
signature found, the last MiB of the device is zeroed as well, so trailing
signatures (a GPT backup header, an md 1.0 superblock) do not survive.
Finally it reads everything back and checks it.

``add_node`` and ``remove_node`` are read-modify-writes of the node table.  It is for the
administrator's tools only and must not run concurrently with itself (the
node table is not a single-writer block; nothing else writes it).

``probe`` says whether a device is a clusterfw disk and which cluster it
belongs to, reading with O_DIRECT (another host may have just written it).

When the superblock does not decode, ``unreadable_superblock_advice`` says
what that means and what to do: a device without clusterfw records may be
initialised; a damaged superblock (or records behind a missing one) is
damage, and there is no safe repair -- the superblock has no second copy and
nothing rebuilds it -- so it says what ``disk init --force`` destroys and
that every node must be stopped first.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid as uuid_module
from typing import Any

from clusterfw.core import timing
from clusterfw.core.model import CLUSTER_NAME_MAX, NODE_NAME_MAX, NODE_NAME_PATTERN, NODES_MAX, NodeConfig, SuperBlock

from . import codec, registry_codec
from .clusterdisk import ClusterDisk, read_superblock_from
from .errors import BadVersion, BlockError, FormatRefused, NodeTableError, NotWritten
from .layout import MIB, NODE_RECORD_BYTES, SUPERBLOCK_AREA_BYTES, AreaKind, Layout
from .simdisk import Device

CLUSTER_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
ZERO_CHUNK_BYTES = 1 * MIB
TAIL_WIPE_BYTES = 1 * MIB
SIGNATURE_SCAN_BYTES = 128 * 1024
BLKID_TIMEOUT_S = 30
PROBE_IO_TIMEOUT_MS = 10_000

# (offset, bytes, description): used only when blkid cannot be run.
BUILTIN_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (1080, b"\x53\xef", "an ext2/ext3/ext4 filesystem"),
    (0, b"XFSB", "an xfs filesystem"),
    (65536 + 64, b"_BHRfS_M", "a btrfs filesystem"),
    (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
    (512, b"LABELONE", "an LVM physical volume"),
    (4096 - 10, b"SWAPSPACE2", "a swap area"),
    (32768 + 1, b"CD001", "an ISO 9660 filesystem"),
    (512, b"EFI PART", "a GPT partition table"),
    (4096, b"EFI PART", "a GPT partition table"),
    (510, b"\x55\xaa", "a DOS partition table or boot sector"),
)


def check_cluster_name(name: str) -> None:
    """Raise ``ValueError`` (naming the input and the rule) unless ``name``
    is a valid cluster name."""
    if not isinstance(name, str) or CLUSTER_NAME_PATTERN.fullmatch(name) is None \
            or len(name.encode()) > CLUSTER_NAME_MAX:
        raise ValueError(
            f"cluster name {name!r} is not valid: use 1..{CLUSTER_NAME_MAX} characters from "
            f"A-Z a-z 0-9 . _ - starting with a letter or digit (e.g. 'prod-db')")


def check_node_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a valid node name."""
    if not isinstance(name, str) or NODE_NAME_PATTERN.fullmatch(name) is None \
            or len(name) > NODE_NAME_MAX:
        raise ValueError(
            f"node name {name!r} is not valid: use 1..{NODE_NAME_MAX} characters from a-z 0-9 and '-', "
            f"starting with a letter or digit (lab nodes are n1..nN)")


# --------------------------------------------------------------------------
# What is on the device?

def _describe_superblock(raw: bytes) -> str | None:
    if raw[:4] != codec.SUPERBLOCK.magic:
        return None
    try:
        sb = codec.decode_superblock(raw)
    except BlockError as exc:
        return f"a damaged clusterfw superblock ({type(exc).__name__}: {exc})"
    return f"clusterfw cluster '{sb.cluster_name}' (uuid {codec.uuid_text(sb.cluster_uuid)})"


def _blkid_path() -> str | None:
    found = shutil.which("blkid")
    if found:
        return found
    for candidate in ("/usr/sbin/blkid", "/sbin/blkid"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def blkid_probe(path: str) -> tuple[bool, str | None]:
    """Run ``blkid -p`` on ``path``.  Returns (ran, description): ``ran`` is
    False if blkid could not be used; ``description`` names what it found,
    ``None`` if nothing."""
    exe = _blkid_path()
    if exe is None:
        return False, None
    try:
        proc = subprocess.run([exe, "-p", "-o", "export", path], capture_output=True, text=True,
                              timeout=BLKID_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False, None
    if proc.returncode == 2:
        return True, None
    if proc.returncode == 8:
        return True, "several conflicting signatures (blkid: ambivalent result)"
    if proc.returncode != 0:
        return False, None
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    found = []
    if "TYPE" in values:
        usage = values.get("USAGE", "filesystem")
        label = f" labelled '{values['LABEL']}'" if values.get("LABEL") else ""
        ident = f" UUID {values['UUID']}" if values.get("UUID") else ""
        found.append(f"a {values['TYPE']} {'filesystem' if usage == 'filesystem' else usage + ' signature'}"
                     f"{label}{ident}")
    if "PTTYPE" in values:
        found.append(f"a {values['PTTYPE']} partition table")
    if not found:
        found.append("a signature blkid recognises (" + ", ".join(f"{k}={v}" for k, v in values.items()) + ")")
    return True, " and ".join(found)


def builtin_signature(dev: Device) -> str | None:
    """Look for a few well-known signatures in the first 128 KiB."""
    length = min(SIGNATURE_SCAN_BYTES, dev.size_bytes - dev.size_bytes % dev.block_size_bytes)
    if length <= 0:
        return None
    head = dev.read(0, length)
    for offset, magic, description in BUILTIN_SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return description
    return None


# Every clusterfw record starts on a 512-byte boundary (a logical block, a
# node-table record, a view copy); its first four bytes are its magic.
RECORD_MAGICS: dict[bytes, str] = {
    codec.SUPERBLOCK.magic: "superblock",
    codec.NODE_CONFIG.magic: "node-table entry",
    codec.SLOT.magic: "slot",
    codec.VIEW.magic: "view copy",
    codec.AREA_HEADER.magic: "area header",
    b"CFLK": "lock sector",  # dlm_codec.LOCK_ENTRY (not imported: it needs the DLM core)
    registry_codec.REGISTRY_HEAD.magic: "registry copy",
}
SCAN_STEP_BYTES = NODE_RECORD_BYTES


def metadata_scan_bytes(dev: Device) -> int:
    """How much of the device any clusterfw layout on it can use for
    metadata: the largest layout for its block size, within the device."""
    size = dev.size_bytes - dev.size_bytes % dev.block_size_bytes
    return min(size, Layout(dev.block_size_bytes, NODES_MAX).total_bytes)


def scan_records(dev: Device, limit_bytes: int | None = None) -> dict[str, list[int]]:
    """Every clusterfw record magic after the superblock, in the first
    ``limit_bytes`` (default ``metadata_scan_bytes``): record kind -> the
    offsets where it was found.  Only magics are looked at, so damaged and
    foreign-cluster records count too."""
    end = metadata_scan_bytes(dev) if limit_bytes is None else min(limit_bytes, metadata_scan_bytes(dev))
    found: dict[str, list[int]] = {}
    for start in range(SUPERBLOCK_AREA_BYTES, end, ZERO_CHUNK_BYTES):
        chunk = dev.read(start, min(ZERO_CHUNK_BYTES, end - start))
        for magic, kind in RECORD_MAGICS.items():
            at = chunk.find(magic)
            while at >= 0:
                if at % SCAN_STEP_BYTES == 0:
                    found.setdefault(kind, []).append(start + at)
                at = chunk.find(magic, at + 1)
    return found


def describe_records(found: dict[str, list[int]]) -> str:
    """``3 slots, 1 node-table entry (first at offset 4096)`` for people."""
    parts = []
    for kind in RECORD_MAGICS.values():
        offsets = found.get(kind)
        if offsets:
            plural = kind if len(offsets) == 1 else (kind[:-1] + "ies" if kind.endswith("y") else kind + "s")
            parts.append(f"{len(offsets)} {plural}")
    first = min(offset for offsets in found.values() for offset in offsets)
    return f"clusterfw records ({', '.join(parts)}; the first at offset {first})"


def clusterfw_content(dev: Device) -> str | None:
    """Describe the clusterfw superblock and records on the device, or
    ``None`` if it holds none."""
    ours = _describe_superblock(dev.read(0, SUPERBLOCK_AREA_BYTES))
    records = scan_records(dev)
    if ours is not None:
        return ours + (f" and {describe_records(records)}" if records else "")
    if records:
        return (f"{describe_records(records)} without a clusterfw superblock at offset 0: the superblock "
                f"was damaged or overwritten, and these may be a running cluster's slots, views and locks")
    return None


def existing_content(dev: Device) -> str | None:
    """Describe what the device holds that ``format_disk`` would destroy, or
    ``None`` if nothing was found."""
    ours = clusterfw_content(dev)
    return ours if ours is not None else foreign_content(dev)


def foreign_content(dev: Device) -> str | None:
    """Another format's signature on the device (blkid, or the built-in
    list), or ``None``."""
    path = getattr(dev, "path", None)
    if path is not None:
        ran, found = blkid_probe(path)
        if ran:
            return found
    return builtin_signature(dev)


# --------------------------------------------------------------------------
# format

def format_disk(dev: Device, cluster_name: str, nodes_max: int, heartbeat_interval_ms: int,
                io_timeout_ms: int, force: bool = False, *, cluster_uuid: bytes | None = None,
                created_at_s: int | None = None) -> SuperBlock:
    """Initialise ``dev`` as a new cluster's disk and return its superblock.

    Raises ``ValueError`` for bad arguments (``timing.SettingOutOfRange``
    for a heartbeat or I/O timeout no node can run), ``DeviceTooSmall``,
    ``FormatRefused`` (unless ``force``), and ``DeviceError`` on I/O failure.
    """
    check_cluster_name(cluster_name)
    timing.check_settings(heartbeat_interval_ms, io_timeout_ms)  # SettingOutOfRange: a ValueError
    layout = Layout(dev.block_size_bytes, nodes_max)
    sb = SuperBlock(
        cluster_name=cluster_name,
        cluster_uuid=uuid_module.uuid4().bytes if cluster_uuid is None else bytes(cluster_uuid),
        block_size=dev.block_size_bytes,
        nodes_max=nodes_max,
        heartbeat_interval_ms=heartbeat_interval_ms,
        io_timeout_ms=io_timeout_ms,
        created_at_s=int(time.time()) if created_at_s is None else created_at_s,
    )
    codec.check_superblock(sb)
    where = getattr(dev, "path", "the device")
    layout.check_device_size(dev.size_bytes, what=str(where))
    ours = clusterfw_content(dev)
    found = ours if ours is not None else foreign_content(dev)
    if found is not None and not force:
        if ours is not None:
            raise FormatRefused(
                f"refusing to initialise {where}: it holds {found}. --force destroys all of it -- the node "
                f"table, every node's slot and view, every cluster lock: use it only after stopping the daemon "
                f"on every node that uses this disk, and add the nodes again afterwards", found=found)
        raise FormatRefused(f"refusing to initialise {where}: it holds {found}; if that data may be "
                            f"destroyed, run again with --force", found=found)

    placement = ClusterDisk(dev, layout, sb.cluster_uuid)
    for offset in range(0, layout.total_bytes, ZERO_CHUNK_BYTES):
        length = min(ZERO_CHUNK_BYTES, layout.total_bytes - offset)
        dev.write(offset, bytes(length))
    if found is not None:
        tail_start = max(layout.total_bytes, dev.size_bytes - TAIL_WIPE_BYTES)
        tail_start -= tail_start % dev.block_size_bytes
        tail_end = dev.size_bytes - dev.size_bytes % dev.block_size_bytes
        if tail_end > tail_start:
            dev.write(tail_start, bytes(tail_end - tail_start))
    for kind in AreaKind:
        dev.write(*placement.area_header_bytes(kind))
    dev.write(*placement.superblock_bytes(sb))

    # Check after writing: everything reads back as intended.
    written = ClusterDisk.open(dev)
    if written.superblock != sb:
        raise AssertionError(f"superblock read back as {written.superblock!r}, wrote {sb!r}")
    for kind in AreaKind:
        header = written.read_area_header(kind)
        assert header.kind == kind and header.size_bytes == layout.reserved_area(kind).size_bytes, header
    return sb


# --------------------------------------------------------------------------
# node table

def add_node(disk: ClusterDisk, name: str, node_id: int | None = None) -> NodeConfig:
    """Add node ``name`` to the node table (with id ``node_id``, or the lowest
    free id) and return its record.  Raises ``ValueError`` for a bad name or
    id, ``NodeTableError`` for a duplicate, a full table or a damaged entry."""
    check_node_name(name)
    nodes_max = disk.layout.nodes_max
    if node_id is not None and (isinstance(node_id, bool) or not isinstance(node_id, int)
                                or not 1 <= node_id <= nodes_max):
        raise ValueError(f"node id {node_id!r} is out of range: this disk holds node ids 1..{nodes_max} "
                         f"(set by 'disk init --max-nodes'); pick an id in that range or omit --id")
    table = disk.read_node_table()
    for index, entry in enumerate(table, start=1):
        if isinstance(entry, NodeConfig) and entry.name == name:
            raise NodeTableError(f"node name '{name}' is already used by node id {index}: pick another name")
    if node_id is None:
        free = [index for index, entry in enumerate(table, start=1) if isinstance(entry, NotWritten)]
        if not free:
            raise NodeTableError(f"all {nodes_max} node ids are in use (or damaged): this disk was initialised "
                                 f"with --max-nodes {nodes_max}")
        node_id = free[0]
    else:
        entry = table[node_id - 1]
        if isinstance(entry, NodeConfig):
            raise NodeTableError(f"node id {node_id} is already used by '{entry.name}': pick a free id or "
                                 f"omit --id")
        if not isinstance(entry, NotWritten):
            raise NodeTableError(f"node-table entry {node_id} is damaged ({type(entry).__name__}: {entry}); "
                                 f"refusing to overwrite it: pick another id")
    cfg = NodeConfig(node_id=node_id, name=name)
    disk.write_node_config(cfg)
    read_back = disk.read_node_table()[node_id - 1]
    if read_back != cfg:
        raise AssertionError(f"node-table entry {node_id} read back as {read_back!r}, wrote {cfg!r}")
    return cfg


def remove_node(disk: ClusterDisk, node_id: int) -> NodeConfig:
    """Remove node ``node_id`` from the node table and return the record it
    had.  Only the node-table entry goes: the node's slot (its Disk Paxos
    ballot state) and view copies stay, so a node added later with this id
    continues from them.  The caller checks that the node is inactive
    (``clusterfw node remove``).  Raises ``NodeTableError`` if the entry is
    not a valid record (never written, or damaged)."""
    table = disk.read_node_table()
    if not 1 <= node_id <= len(table):
        raise ValueError(f"node id {node_id!r} is out of range: this disk holds node ids 1..{len(table)}")
    entry = table[node_id - 1]
    if isinstance(entry, NotWritten):
        raise NodeTableError(f"node id {node_id} is not in the node table: nothing to remove")
    if not isinstance(entry, NodeConfig):
        raise NodeTableError(f"node-table entry {node_id} is damaged ({type(entry).__name__}: {entry}); "
                             f"refusing to remove what cannot be read")
    disk.clear_node_config(node_id)
    read_back = disk.read_node_table()[node_id - 1]
    if not isinstance(read_back, NotWritten):
        raise AssertionError(f"node-table entry {node_id} read back as {read_back!r} after it was cleared")
    return entry


# --------------------------------------------------------------------------
# opening a disk: its superblock, and what to do when it does not decode

def unreadable_superblock_advice(dev: Device, exc: BlockError, scan: bool = True) -> str:
    """Why ``dev``'s superblock did not decode (``exc``) and what to do,
    as one message.  With ``scan`` the metadata is searched for clusterfw
    records (``scan_records``); without, only the superblock's own bytes
    decide (``probe``, which udev runs on every device)."""
    where = getattr(dev, "path", "the device")
    error = f"{type(exc).__name__}: {exc}"
    magic_found = bytes(dev.read(0, SUPERBLOCK_AREA_BYTES))[:4] == codec.SUPERBLOCK.magic
    if isinstance(exc, BadVersion):
        return (f"{where} holds a clusterfw superblock of another format version ({error}): it was written by "
                f"another clusterfw release; use that release, do not initialise it")
    records = scan_records(dev) if scan else {}
    if not magic_found and not records:
        if scan:
            return (f"{where} is not a clusterfw disk ({error}) and holds no clusterfw record: initialise it "
                    f"with 'clusterfw disk init {where} --cluster NAME --profile lab|san'")
        return (f"{where} is not a clusterfw disk ({error}); if it should be one, 'clusterfw disk dump {where}' "
                f"looks for clusterfw records in its metadata before you initialise it")
    damage = (f"the clusterfw superblock of {where} is damaged ({error})" if magic_found
              else f"{where} has no clusterfw superblock ({error}) but holds {describe_records(records)}: its "
                   f"superblock was damaged or overwritten")
    return (f"{damage}. No command can repair it: it has no second copy and is not rebuilt from the other "
            f"records, and 'clusterfw disk init' refuses this disk. The only way on is to stop the daemon on "
            f"every node that uses {where} and run 'clusterfw disk init {where} --cluster NAME --profile lab|san --force' "
            f"knowingly: that destroys the node table, every node's slot and view and every cluster lock "
            f"(the cluster starts anew; add the nodes again with 'clusterfw node add')")


# --------------------------------------------------------------------------
# probe

def probe(path: str) -> dict[str, Any] | None:
    """If ``path`` holds a valid clusterfw superblock, describe it::

        {"cluster_name": ..., "cluster_uuid": "<canonical uuid>",
         "format_version": 1, "block_size_bytes": ..., "nodes_max": ...,
         "heartbeat_interval_ms": ..., "io_timeout_ms": ...,
         "device_block_size_bytes": ...}

    Returns ``None`` for anything else (never written, another format, a
    damaged superblock).  Raises ``DeviceError`` if the device cannot be
    opened or read.
    """
    from .blockdev import BlockDevice

    with BlockDevice(path, readonly=True, io_timeout_ms=PROBE_IO_TIMEOUT_MS) as dev:
        try:
            sb = read_superblock_from(dev)
        except BlockError:
            return None
        return {
            "cluster_name": sb.cluster_name,
            "cluster_uuid": codec.uuid_text(sb.cluster_uuid),
            "format_version": codec.FORMAT_VERSION,
            "block_size_bytes": sb.block_size,
            "nodes_max": sb.nodes_max,
            "heartbeat_interval_ms": sb.heartbeat_interval_ms,
            "io_timeout_ms": sb.io_timeout_ms,
            "device_block_size_bytes": dev.block_size_bytes,
        }
