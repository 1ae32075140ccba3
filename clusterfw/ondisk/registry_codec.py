"""The service registry on disk: a JSON document in two copies, each either
whole or rejected.

How this works
--------------
The registry is one JSON object (a dict) that the node holding the DLM lock
``clusterfw.registry`` (EXCLUSIVE, with a fencing token) rewrites as a
whole.  Unlike a slot it is not written by a fixed node but by whichever node
holds that lock.  The area (``Layout.reserved_area(SERVICE_REGISTRY)``, 1 MiB)
is its 4096-byte area header followed by two copies, A and B, each
``REGISTRY_COPY_BYTES`` at ``Layout.registry_copy_offset(copy)``.  A copy is
a *head* in its first 512 bytes -- so in the first logical block on either
block size -- and the *body* right after it, at offset 512 of the copy::

    copy + 0     head: the common 64-byte record header (``codec``: magic
                 ``CFRG``, format version, cluster UUID, node id = the
                 writer, incarnation = the writer's, seq = the generation,
                 crc32c over the head) followed by this payload:

                 off size field
                   0    8 token        u64, the writer's fencing token
                   8    8 stamp_ms     u64, the writer's wall clock (Unix ms);
                                       informational
                  16    4 body_bytes   u32, the body's length
                  20    4 body_crc32c  u32, crc32c of the body
                  24    4 json_bytes   u32, the JSON text's length
                  28    1 encoding     u8, 1: zlib of compact UTF-8 JSON
                  29    3 reserved     zero

    copy + 512   body: ``zlib.compress`` of the document as compact JSON
                 (sorted keys, no whitespace, UTF-8), ``body_bytes`` long

A write of a copy is the head and the body padded to whole logical blocks
(``encode_copy``), issued as one write; the rest of the copy is left as it
was and is never read.

Choosing and writing (the two-copy rule): the reader takes the valid copy
with the highest ``(generation, token)`` (``newest``; copy A on a tie); the
writer writes generation ``g + 1`` -- ``g`` the highest generation any
readable head shows, or that the writer ever saw -- into the copy that does
*not* hold the newest valid one (``next_copy``).  A write that is torn
(some of its blocks landed, others not) or corrupted later fails the head's
or the body's crc32c, so that copy is rejected and the other one, untouched
by the write, still holds the previous generation: a change is on the disk
whole or not at all.  A copy from the past written again (a replay) has a
lower generation than the copy the writer last wrote, so it never wins
over it.  An area never written (both copies all zeros) is "no registry
yet": generation 0.

Decoding checks, in order: everything ``codec.read_header`` checks on the
head (never written, magic, version, cluster, length, head checksum), then
the head's payload (reserved bytes, encoding, writer id, generation >= 1,
lengths within their limits), then that the bytes read hold the whole body,
the body's checksum, the decompression (exactly ``json_bytes``, nothing
left over), UTF-8, JSON and that the document is an object.  Decoding never
raises: any rejection is a ``Damaged`` value naming it (``code`` as the
``BlockError`` codes: ``not-written``, ``bad-checksum``, ...).

Invariants: ``decode_copy(encode_copy(doc, ...)).doc == doc`` for every doc
``encode_copy`` accepts (it checks this before it returns: a document that
does not survive JSON unchanged -- a tuple, a non-string key, a NaN -- is
refused with ``ValueError``); a document that does not fit raises
``RegistryTooLarge`` naming its size and the limit.  Pure: no I/O, no
clocks.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any, TypeAlias

import crc32c as crc32c_module

from clusterfw.core.model import NODES_MAX, U64_MAX

from . import codec
from .errors import BadChecksum, BadLength, BadPayload, BlockError, NotWritten
from .layout import BLOCK_SIZES_BYTES, MIB, REGISTRY_COPY_BYTES, round_up

# on-disk format: the registry copy.
REGISTRY_HEAD_BYTES = 512  # the head's room; the body starts right after it
REGISTRY_HEAD = codec.RecordKind("registry-copy", b"CFRG", REGISTRY_HEAD_BYTES)
assert all(REGISTRY_HEAD.magic != k.magic for k in codec.RECORD_KINDS) and REGISTRY_HEAD.magic != b"CFLK"
# token u64, stamp_ms u64, body_bytes u32, body_crc32c u32, json_bytes u32,
# encoding u8, reserved 3 bytes.
REGISTRY_HEAD_FIXED = struct.Struct("<QQIIIB3s")
REGISTRY_HEAD_RECORD_BYTES = codec.HEADER_BYTES + REGISTRY_HEAD_FIXED.size
assert REGISTRY_HEAD_RECORD_BYTES <= REGISTRY_HEAD_BYTES <= min(BLOCK_SIZES_BYTES)
ENCODING_ZLIB_JSON = 1
REGISTRY_BODY_MAX_BYTES = REGISTRY_COPY_BYTES - REGISTRY_HEAD_BYTES
"""The most bytes a compressed document may take (519680)."""
REGISTRY_JSON_MAX_BYTES = 16 * MIB
"""The most bytes the JSON text may take, however well it compresses (a
bound on what a reader ever decompresses)."""
ZLIB_LEVEL = 6


class RegistryTooLarge(ValueError):
    """The document does not fit a registry copy."""

    def __init__(self, message: str, *, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(message)
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


@dataclass(frozen=True)
class RegistryHead:
    """A decoded head: who wrote the copy, which generation it holds and
    how long its body is."""

    cluster_uuid: bytes
    writer: int
    """The node id of the writer (1..255)."""
    incarnation: int
    generation: int
    """>= 1 on the disk; 0 means "no registry yet" and is never written."""
    token: int
    """The fencing token of the writer's ``clusterfw.registry`` lock."""
    stamp_ms: int
    body_bytes: int
    body_crc32c: int
    json_bytes: int

    @property
    def key(self) -> tuple[int, int]:
        """The order of copies: newest is highest."""
        return (self.generation, self.token)

    def copy_bytes(self, block_size_bytes: int) -> int:
        """How many bytes of the copy hold head and body: whole logical blocks."""
        return round_up(REGISTRY_HEAD_BYTES + self.body_bytes, block_size_bytes)


@dataclass(frozen=True)
class RegistryCopy:
    """A valid copy: its head and the document."""

    head: RegistryHead
    doc: dict[str, Any]

    @property
    def generation(self) -> int:
        return self.head.generation

    @property
    def token(self) -> int:
        return self.head.token


@dataclass(frozen=True)
class Damaged:
    """A copy (or head) that was rejected.  ``code`` is the rejection's kind
    (the ``BlockError`` codes: ``not-written``, ``bad-magic``,
    ``foreign-cluster``, ``bad-length``, ``bad-checksum``, ``bad-payload``,
    ...), ``reason`` says what exactly; ``head`` is the head when only the
    body was rejected (a torn write shows its generation there)."""

    code: str
    reason: str
    head: RegistryHead | None = None

    @property
    def never_written(self) -> bool:
        return self.code == NotWritten.code


Copy: TypeAlias = RegistryCopy | Damaged | None
"""What a reader has of one copy (``None``: not read)."""


# --------------------------------------------------------------------------
# encoding

def check_head(head: Any) -> None:
    """The encoder's checks of the head's fields (the decoder runs them on
    what it decoded)."""
    if not isinstance(head, RegistryHead):
        raise ValueError(f"expected a RegistryHead, got {type(head).__name__}")
    codec.check_uuid(head.cluster_uuid)
    codec.check_int(head.writer, 1, NODES_MAX, "writer")
    codec.check_int(head.incarnation, 0, U64_MAX, "incarnation")
    codec.check_int(head.generation, 1, U64_MAX, "generation")
    codec.check_int(head.token, 0, U64_MAX, "token")
    codec.check_int(head.stamp_ms, 0, U64_MAX, "stamp_ms")
    codec.check_int(head.body_bytes, 0, REGISTRY_BODY_MAX_BYTES, "body_bytes")
    codec.check_int(head.body_crc32c, 0, codec.U32_MAX, "body_crc32c")
    codec.check_int(head.json_bytes, 0, REGISTRY_JSON_MAX_BYTES, "json_bytes")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_loads(text: bytes) -> Any:
    return json.loads(text.decode("utf-8"), parse_constant=_refuse_constant)


def json_text(doc: Any) -> bytes:
    """The document as the body holds it before compression: compact UTF-8
    JSON with sorted keys.  Raises ``ValueError`` for what is not JSON and
    ``RegistryTooLarge`` past ``REGISTRY_JSON_MAX_BYTES``."""
    if not isinstance(doc, dict):
        raise ValueError(f"the registry document must be a dict (a JSON object), got {type(doc).__name__}")
    try:
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)
        raw = text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"the registry document is not JSON: {exc}") from None
    if len(raw) > REGISTRY_JSON_MAX_BYTES:
        raise RegistryTooLarge(
            f"the registry document is {len(raw)} bytes of JSON but a registry copy takes at most "
            f"{REGISTRY_JSON_MAX_BYTES}: remove services or shorten their definitions",
            size_bytes=len(raw), limit_bytes=REGISTRY_JSON_MAX_BYTES)
    return raw


def encode_copy(doc: dict[str, Any], *, generation: int, token: int, writer: int, incarnation: int,
                cluster_uuid: bytes, block_size: int, stamp_ms: int) -> bytes:
    """The bytes of one registry copy holding ``doc``: head and body padded to
    whole ``block_size`` blocks, to be written at the copy's offset in one
    write.  Checked before it is returned: the bytes decode to ``doc``."""
    if block_size not in BLOCK_SIZES_BYTES:
        raise ValueError(f"block_size={block_size!r}: must be 512 or 4096")
    cluster_uuid = codec.check_uuid(cluster_uuid)
    text = json_text(doc)
    body = zlib.compress(text, ZLIB_LEVEL)
    if len(body) > REGISTRY_BODY_MAX_BYTES:
        raise RegistryTooLarge(
            f"the registry document takes {len(body)} bytes compressed ({len(text)} bytes of JSON) but a "
            f"registry copy holds {REGISTRY_BODY_MAX_BYTES}: remove services or shorten their definitions",
            size_bytes=len(body), limit_bytes=REGISTRY_BODY_MAX_BYTES)
    head = RegistryHead(cluster_uuid=cluster_uuid, writer=writer, incarnation=incarnation, generation=generation,
                        token=token, stamp_ms=stamp_ms, body_bytes=len(body),
                        body_crc32c=crc32c_module.crc32c(body), json_bytes=len(text))
    check_head(head)
    payload = REGISTRY_HEAD_FIXED.pack(token, stamp_ms, head.body_bytes, head.body_crc32c, head.json_bytes,
                                       ENCODING_ZLIB_JSON, bytes(3))
    record = codec.seal(REGISTRY_HEAD, cluster_uuid, writer, incarnation, generation, payload)
    data = codec.pad_to(codec.pad_to(record, REGISTRY_HEAD_BYTES) + body, block_size)
    decoded = decode_copy(data, cluster_uuid=cluster_uuid)
    if not isinstance(decoded, RegistryCopy) or decoded.head != head:
        raise AssertionError(f"an encoded registry copy does not decode to itself: {decoded!r}")
    if decoded.doc != doc:
        raise ValueError("the registry document does not survive JSON unchanged (a tuple, a key that is not "
                         "a str, a float that is not finite, ...): use only dicts with str keys, lists, str, "
                         "int, finite float, bool and None")
    return data


# --------------------------------------------------------------------------
# decoding

def _damaged(exc: BlockError, head: RegistryHead | None = None) -> Damaged:
    return Damaged(exc.code, exc.message, head)


def _read_head(block: bytes, cluster_uuid: bytes | None) -> RegistryHead:
    """Decode a head or raise its ``BlockError``."""
    header, payload = codec.read_header(REGISTRY_HEAD, block, cluster_uuid=cluster_uuid)

    def build() -> RegistryHead:
        reader = codec.Reader(payload, REGISTRY_HEAD.name)
        token, stamp_ms, body_bytes, body_crc, json_bytes, encoding, reserved = reader.take(
            REGISTRY_HEAD_FIXED, "fixed fields")
        reader.finish()
        if reserved != bytes(3):
            raise ValueError(f"reserved bytes are {reserved.hex()}, must be zero")
        if encoding != ENCODING_ZLIB_JSON:
            raise ValueError(f"body encoding {encoding}, this code reads {ENCODING_ZLIB_JSON} (zlib of JSON)")
        return RegistryHead(cluster_uuid=header.cluster_uuid, writer=header.node_id,
                            incarnation=header.incarnation, generation=header.seq, token=token,
                            stamp_ms=stamp_ms, body_bytes=body_bytes, body_crc32c=body_crc, json_bytes=json_bytes)

    decoded: RegistryHead = codec.decoded(REGISTRY_HEAD, build, check_head)  # the check takes anything
    return decoded


def decode_head(block: bytes | bytearray | memoryview, *, cluster_uuid: bytes | None) -> RegistryHead | Damaged:
    """The head in the first 512 bytes of ``block`` (a copy's first logical
    block, or more), or ``Damaged``.  ``cluster_uuid``: the cluster the copy
    must belong to (``None``: any).  Never raises."""
    try:
        return _read_head(bytes(block[:REGISTRY_HEAD_BYTES]), cluster_uuid)
    except BlockError as exc:
        return _damaged(exc)


def decode_copy(raw: bytes | bytearray | memoryview, *, cluster_uuid: bytes | None) -> RegistryCopy | Damaged:
    """A whole copy from bytes read at its offset (at least
    ``head.copy_bytes()`` of them; more are ignored), or ``Damaged``.  Never
    raises."""
    head = decode_head(raw, cluster_uuid=cluster_uuid)
    if isinstance(head, Damaged):
        return head
    what = REGISTRY_HEAD.name
    end = REGISTRY_HEAD_BYTES + head.body_bytes
    if len(raw) < end:
        return _damaged(BadLength(f"{what}: the body of {head.body_bytes} bytes runs past the {len(raw)} bytes "
                                  f"read (a short read, or the copy was rewritten since its head was read)", what), head)
    body = bytes(raw[REGISTRY_HEAD_BYTES:end])
    actual = crc32c_module.crc32c(body)
    if actual != head.body_crc32c:
        return _damaged(BadChecksum(f"{what}: body crc32c {actual:#010x} does not match the head's "
                                    f"{head.body_crc32c:#010x} (torn or corrupt write)", what), head)
    doc = _inflate(body, head.json_bytes)
    if isinstance(doc, str):
        return _damaged(BadPayload(f"{what}: {doc}", what), head)
    return RegistryCopy(head, doc)


def _inflate(body: bytes, json_bytes: int) -> dict[str, Any] | str:
    """The document in a body whose checksum matched, or what is wrong."""
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(body, json_bytes + 1)
        left = len(inflater.unused_data) + len(inflater.unconsumed_tail)
        if len(text) != json_bytes or not inflater.eof or left:
            return (f"the body inflates to {len(text)}{'' if inflater.eof else '+'} bytes with {left} bytes "
                    f"left over, the head says {json_bytes}")
        doc = _json_loads(text)
    except (zlib.error, ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError too
        kind = f"zlib.{type(exc).__name__}" if isinstance(exc, zlib.error) else type(exc).__name__
        return f"the body does not decode: {kind}: {exc}"
    if not isinstance(doc, dict):
        return f"the document is a JSON {type(doc).__name__}, not an object"
    return doc


# --------------------------------------------------------------------------
# the two-copy rule

def newest(a: Copy, b: Copy) -> tuple[RegistryCopy | None, int | None]:
    """The valid copy with the highest ``(generation, token)`` and which one
    it is (0 = A, 1 = B; A on a tie), or ``(None, None)``: no valid copy
    (never written -- "no registry yet", generation 0 -- or damaged; the
    values passed say which)."""
    best: RegistryCopy | None = None
    which: int | None = None
    for index, copy in enumerate((a, b)):
        if isinstance(copy, RegistryCopy) and (best is None or copy.head.key > best.head.key):
            best, which = copy, index
    return best, which


def generation_of(a: Copy, b: Copy) -> int:
    """The generation of the newest valid copy; 0 if there is none."""
    best, _which = newest(a, b)
    return 0 if best is None else best.generation


def next_copy(a: Copy, b: Copy, *, seen_generation: int = 0) -> tuple[int, int]:
    """``(copy, generation)`` of the next write: the copy that does NOT hold
    the newest valid one (A if neither is valid), and one more than the
    highest generation of any head that decodes -- a torn copy's too -- or
    ``seen_generation`` (the highest the writer ever read), so that no
    generation is ever written twice with different contents."""
    _best, which = newest(a, b)
    known = [codec.check_int(seen_generation, 0, U64_MAX, "seen_generation")]
    for copy in (a, b):
        head = copy.head if isinstance(copy, (RegistryCopy, Damaged)) else None
        if head is not None:
            known.append(head.generation)
    generation = max(known) + 1
    if generation > U64_MAX:
        raise ValueError(f"generation {generation}: past the u64 range")
    return (0 if which is None else 1 - which), generation
