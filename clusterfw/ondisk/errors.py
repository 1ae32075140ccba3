"""The typed errors of the on-disk layer.

How this works
--------------
Three families, because they are handled in three different ways:

* ``BlockError`` -- a block was read but its contents were rejected (never
  written, foreign, torn, corrupt).  This is an *operating* condition: the
  protocol treats the block as "no information" and carries on.  Readers such
  as ``ClusterDisk.read_slots()`` return these as values, one per block, so a
  single bad slot never hides the others.  The decoder checks in a fixed order
  and raises the first that applies::

      NotWritten -> BadMagic -> BadVersion -> ForeignCluster -> WrongNode
                 -> BadLength -> BadChecksum -> BadPayload

* ``DeviceError`` -- the I/O itself failed: ``IoError`` (the kernel returned
  an errno) or ``IoTimeout`` (the I/O did not complete in time).  For the
  daemon this is a failed renewal, not a rejected block.

* ``SetupError`` -- the administrator's tools refuse an operation:
  formatting a device that holds data, a device too small for the layout, a
  device whose logical block size differs from the one it was formatted with,
  a bad node-table change.

Programming errors (encoding a record that breaks a limit, an unaligned I/O)
are ``ValueError`` subclasses: the caller broke a rule, and the message names
the field or the offset and says what is allowed.

Invariant: decoding bytes from the disk raises nothing but a ``BlockError``.
"""
from __future__ import annotations


class BlockError(Exception):
    """A block's contents were rejected.  ``record`` names the record kind
    ("slot", "view", ...) the reader expected."""

    code = "block-error"

    def __init__(self, message: str, record: str = ""):
        super().__init__(message)
        self.message = message
        self.record = record

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class NotWritten(BlockError):
    """The block is all zeros: nobody has written it since ``disk init``."""

    code = "not-written"


class BadMagic(BlockError):
    """The first bytes are not this record kind's magic: not a clusterfw
    record, or a record of another kind."""

    code = "bad-magic"


class BadVersion(BlockError):
    """A clusterfw record in a format version this code does not read."""

    code = "bad-version"


class ForeignCluster(BlockError):
    """A valid-looking record that belongs to another cluster (another UUID):
    the disk was re-initialised, or a foreign disk is attached."""

    code = "foreign-cluster"


class WrongNode(BlockError):
    """The record names a node id other than the one its position belongs to."""

    code = "wrong-node"


class BadLength(BlockError):
    """The header is truncated, or its payload length does not fit the record
    kind's area or the bytes that were read."""

    code = "bad-length"


class BadChecksum(BlockError):
    """The crc32c does not match.  This is also what a torn write looks like
    (some sectors new, some old)."""

    code = "bad-checksum"


class BadPayload(BlockError):
    """The checksum matched but the payload breaks the format (an unknown
    enum code, a count over its limit, trailing bytes).  Only a buggy or
    incompatible writer produces this."""

    code = "bad-payload"


class DeviceError(Exception):
    """The I/O to the device failed (as opposed to a block being rejected)."""


class IoError(DeviceError):
    """The kernel returned an error for an I/O; ``errno`` says which."""

    def __init__(self, errno: int, message: str, *, offset: int | None = None, length: int | None = None):
        super().__init__(message)
        self.errno = errno
        self.offset = offset
        self.length = length


class IoTimeout(DeviceError):
    """An I/O did not complete within its timeout (or could not even be
    started because too many earlier I/Os are still stuck)."""

    def __init__(self, message: str, *, offset: int | None = None, length: int | None = None,
                 timeout_ms: int | None = None):
        super().__init__(message)
        self.offset = offset
        self.length = length
        self.timeout_ms = timeout_ms


class UnalignedIo(ValueError):
    """An offset or length is not a multiple of the device's logical block
    size (or lies outside the device).  A programming error."""


class SetupError(Exception):
    """An administrative operation was refused; the message says why and how
    to fix it."""


class FormatRefused(SetupError):
    """``format_disk`` found data on the device (a filesystem, a partition
    table, another cluster) and ``force`` was not given.  ``found`` describes
    it."""

    def __init__(self, message: str, found: str):
        super().__init__(message)
        self.found = found


class DeviceTooSmall(SetupError):
    """The device is smaller than the layout needs."""

    def __init__(self, message: str, *, size_bytes: int, needed_bytes: int):
        super().__init__(message)
        self.size_bytes = size_bytes
        self.needed_bytes = needed_bytes


class BlockSizeMismatch(SetupError):
    """The device's logical block size differs from the one recorded in the
    superblock: slot writes would no longer be single-sector writes."""


class NodeTableError(SetupError):
    """A node-table change was refused (duplicate name or id, id out of
    range, bad name, damaged entry)."""
