"""The administrator's operations on the shared disk: ``format_disk``,
``add_node``, ``probe``.

How this works
--------------
``format_disk`` first looks for anything worth keeping on the device and
refuses (``FormatRefused``, naming what it found) unless ``force``:

1. our own superblock magic at offset 0 (another -- or this -- clusterfw
   cluster, valid or damaged);
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

``add_node`` is a read-modify-write of the node table.  It is for the
administrator's tools only and must not run concurrently with itself (the
node table is not a single-writer block; nothing else writes it).

``probe`` says whether a device is a clusterfw disk and which cluster it
belongs to, reading with O_DIRECT (another host may have just written it).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid as uuid_module
from typing import Any

from clusterfw.core.model import CLUSTER_NAME_MAX, NODE_NAME_MAX, NodeConfig, SuperBlock

from . import codec
from .clusterdisk import ClusterDisk, read_superblock_from
from .errors import BlockError, FormatRefused, NodeTableError, NotWritten
from .layout import MIB, SUPERBLOCK_AREA_BYTES, AreaKind, Layout
from .simdisk import Device

NODE_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]*")
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


def existing_content(dev: Device) -> str | None:
    """Describe what the device holds that ``format_disk`` would destroy, or
    ``None`` if nothing was found."""
    ours = _describe_superblock(dev.read(0, SUPERBLOCK_AREA_BYTES))
    if ours is not None:
        return ours
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

    Raises ``ValueError`` for bad arguments, ``DeviceTooSmall``,
    ``FormatRefused`` (unless ``force``), and ``DeviceError`` on I/O failure.
    """
    check_cluster_name(cluster_name)
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
    found = existing_content(dev)
    if found is not None and not force:
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
