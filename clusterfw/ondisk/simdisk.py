"""The device interface, and ``SimDisk``: an in-memory disk for tests and the
deterministic simulator.

How this works
--------------
A *device* (``Device``) is anything with ``block_size_bytes``,
``size_bytes``, ``read(offset, length) -> bytes`` and ``write(offset, data)``
where offsets and lengths are whole logical blocks.  ``BlockDevice`` (real
O_DIRECT I/O) and ``SimDisk`` both are one, and ``ClusterDisk`` works over
either.

``SimDisk`` models what a real disk guarantees and nothing more: a write of
one sector is atomic; a write of several sectors may be *torn* -- the
simulator says how many of the leading sectors land with
``write(offset, data, sectors=k)``.  A sector is never half-written.  There is
no randomness, no clock and no latency inside: the simulator decides faults
and timing and calls ``write`` when (and how much of) a write completes.

Invariants: ``read`` returns exactly what the completed sector writes left;
unaligned or out-of-range I/O raises ``UnalignedIo`` exactly as
``BlockDevice`` does.  Pure: no I/O, no clocks.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from .errors import UnalignedIo

SECTOR_SIZES_BYTES = (512, 4096)


@runtime_checkable
class Device(Protocol):
    """What ``ClusterDisk`` needs of a device."""

    block_size_bytes: int
    size_bytes: int

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...


def check_extent(offset: int, length: int, block_size_bytes: int, size_bytes: int, what: str) -> None:
    """Raise ``UnalignedIo`` unless [offset, offset+length) is a non-empty run
    of whole logical blocks inside the device."""
    if isinstance(offset, bool) or not isinstance(offset, int) or isinstance(length, bool) \
            or not isinstance(length, int):
        raise UnalignedIo(f"{what}: offset and length must be integers, got {offset!r}, {length!r}")
    if offset % block_size_bytes or length % block_size_bytes:
        raise UnalignedIo(
            f"{what} at offset {offset} of {length} bytes is not aligned to the device's "
            f"{block_size_bytes}-byte logical block size: offset and length must be multiples of "
            f"{block_size_bytes}")
    if length <= 0 or offset < 0 or offset + length > size_bytes:
        raise UnalignedIo(
            f"{what} at offset {offset} of {length} bytes is outside the device "
            f"(0..{size_bytes} bytes): use a non-empty range inside the device")


class SimDisk:
    """An in-memory disk with per-sector atomic writes."""

    def __init__(self, size_bytes: int, sector_size: int = 512):
        if sector_size not in SECTOR_SIZES_BYTES:
            raise ValueError(f"sector_size={sector_size!r}: must be 512 or 4096")
        if size_bytes <= 0 or size_bytes % sector_size:
            raise ValueError(f"size_bytes={size_bytes!r}: must be a positive multiple of {sector_size}")
        self.block_size_bytes = sector_size
        self.size_bytes = size_bytes
        self._data = bytearray(size_bytes)
        self.read_count = 0
        self.write_count = 0
        self.torn_write_count = 0

    @property
    def sector_size(self) -> int:
        return self.block_size_bytes

    def read(self, offset: int, length: int) -> bytes:
        check_extent(offset, length, self.block_size_bytes, self.size_bytes, "read")
        self.read_count += 1
        return bytes(self._data[offset:offset + length])

    def write(self, offset: int, data: bytes | bytearray | memoryview, sectors: int | None = None) -> None:
        """Write ``data`` at ``offset``.  ``sectors=k`` applies only the first
        ``k`` sectors of it (a torn write; 0 means nothing lands)."""
        data = bytes(data)
        check_extent(offset, len(data), self.block_size_bytes, self.size_bytes, "write")
        total_sectors = len(data) // self.block_size_bytes
        if sectors is None:
            sectors = total_sectors
        elif isinstance(sectors, bool) or not isinstance(sectors, int) or not 0 <= sectors <= total_sectors:
            raise ValueError(f"sectors={sectors!r}: must be 0..{total_sectors} for a write of "
                             f"{total_sectors} sectors")
        if sectors < total_sectors:
            self.torn_write_count += 1
        landed = sectors * self.block_size_bytes
        self._data[offset:offset + landed] = data[:landed]
        self.write_count += 1

    def snapshot(self) -> bytes:
        """A copy of the whole disk (for debugging and for comparing states)."""
        return bytes(self._data)

    def restore(self, image: bytes) -> None:
        """Replace the whole disk's contents with ``image`` (same size)."""
        if len(image) != self.size_bytes:
            raise ValueError(f"image of {len(image)} bytes, the disk has {self.size_bytes}")
        self._data[:] = image

    def __repr__(self) -> str:
        return f"SimDisk(size_bytes={self.size_bytes}, sector_size={self.block_size_bytes})"
