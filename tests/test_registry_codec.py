"""The service registry on disk: two copies, each whole or rejected.  Round
trips, the pinned bytes of the head, torn writes (any blocks of a copy
landed), corruption of any byte, replays of old copies, documents too large,
both block sizes, and a real loop device with O_DIRECT through ClusterDisk
(plain and guarded)."""
from __future__ import annotations

import errno
import json
import random
import struct
import zlib
from typing import Any

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterfw.core.svcdef import ServiceDef
from clusterfw.ondisk import codec, registry_codec
from clusterfw.ondisk.admin import format_disk
from clusterfw.ondisk.clusterdisk import ClusterDisk
from clusterfw.ondisk.errors import IoError
from clusterfw.ondisk.layout import MIB, REGISTRY_COPY_BYTES
from clusterfw.ondisk.registry_codec import (
    REGISTRY_BODY_MAX_BYTES,
    REGISTRY_HEAD_BYTES,
    REGISTRY_JSON_MAX_BYTES,
    Damaged,
    RegistryCopy,
    RegistryHead,
    RegistryTooLarge,
    decode_copy,
    decode_head,
    encode_copy,
    generation_of,
    newest,
    next_copy,
)
from clusterfw.ondisk.simdisk import SimDisk
from lunfs import lun_dir
from test_ondisk_loop import loop_device, sparse_file
from test_ondisk_loop import pytestmark as needs_loop

UUID = bytes(range(16))
OTHER_UUID = bytes(range(16, 32))
BLOCK_SIZES = (512, 4096)
blocks = pytest.mark.parametrize("block_size", BLOCK_SIZES)


def encode(doc: dict[str, Any], generation: int = 1, *, token: int = 7, writer: int = 2, block_size: int = 512,
           cluster_uuid: bytes = UUID) -> bytes:
    return encode_copy(doc, generation=generation, token=token, writer=writer, incarnation=0x1234,
                       cluster_uuid=cluster_uuid, block_size=block_size, stamp_ms=1_700_000_000_000)


def decode(raw: bytes) -> RegistryCopy | Damaged:
    return decode_copy(raw, cluster_uuid=UUID)


def services_doc(count: int, seed: int = 0, command_bytes: int = 720) -> dict[str, Any]:
    """A registry of ``count`` services, each about 1 KiB of JSON."""
    rnd = random.Random(seed)
    services = {}
    for index in range(count):
        name = f"svc-{index:03d}"
        words = " ".join(f"{rnd.getrandbits(40):x}" for _ in range(command_bytes // 11))
        sdef = ServiceDef(name=name, allowable_nodes=tuple(f"n{n}" for n in range(1, 9)),
                          preferences=(f"n{1 + index % 8}", f"n{1 + (index + 3) % 8}"),
                          start_command=("/usr/local/bin/run", name, "--args", words[:command_bytes]),
                          stop_command=("/usr/local/bin/stop", name), failure_threshold=5, parent="")
        services[name] = {"def": sdef.to_json(), "state": "running", "node": f"n{1 + index % 8}",
                          "since_ms": 1_700_000_000_000 + index}
    return {"version": 1, "services": services}


SMALL = {"version": 1, "services": {"web": {"def": {"name": "web", "unit": "nginx.service"}, "node": "n1"}}}
MEDIUM = services_doc(12, seed=1)  # several blocks of either size


def copy_write(doc: dict[str, Any], generation: int, block_size: int, *, token: int = 7) -> bytes:
    data = encode(doc, generation, token=token, block_size=block_size)
    assert len(data) % block_size == 0
    return data


def on_copy(previous: bytes, data: bytes) -> bytes:
    """The copy after ``data`` was written over ``previous`` (the rest of the
    copy keeps what it had)."""
    return data + previous[len(data):]


EMPTY_COPY = bytes(REGISTRY_COPY_BYTES)


# --------------------------------------------------------------------------
# round trips and the pinned format

json_scalars = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=6)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=6), max_leaves=40)
json_docs = st.dictionaries(st.text(max_size=12), json_values, max_size=10)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=json_docs, block_size=st.sampled_from(BLOCK_SIZES), generation=st.integers(1, 2 ** 64 - 1),
       token=st.integers(0, 2 ** 64 - 1), writer=st.integers(1, 255), incarnation=st.integers(0, 2 ** 64 - 1),
       stamp_ms=st.integers(0, 2 ** 64 - 1))
def test_round_trip(doc, block_size, generation, token, writer, incarnation, stamp_ms):
    data = encode_copy(doc, generation=generation, token=token, writer=writer, incarnation=incarnation,
                       cluster_uuid=UUID, block_size=block_size, stamp_ms=stamp_ms)
    assert len(data) % block_size == 0 and len(data) <= REGISTRY_COPY_BYTES
    copy = decode(data)
    assert isinstance(copy, RegistryCopy) and copy.doc == doc
    head = copy.head
    assert (head.generation, head.token, head.writer, head.incarnation, head.stamp_ms, head.cluster_uuid) == (
        generation, token, writer, incarnation, stamp_ms, UUID)
    assert decode_head(data[:block_size], cluster_uuid=UUID) == head  # the poll: the first block is enough
    assert head.copy_bytes(block_size) == len(data)
    assert decode(on_copy(b"\xa5" * REGISTRY_COPY_BYTES, data)) == copy  # what follows is never read


@blocks
def test_head_fields_sit_where_the_docs_say(block_size):
    data = encode(MEDIUM, 9, token=0x0102030405060708, writer=3, block_size=block_size)
    text = json.dumps(MEDIUM, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
    body = zlib.compress(text, 6)
    assert data[0:4] == b"CFRG"
    assert struct.unpack_from("<H", data, 4)[0] == codec.FORMAT_VERSION
    assert data[6:8] == b"\0\0" and data[26:28] == b"\0\0" and data[48:60] == bytes(12)
    assert data[8:24] == UUID
    assert struct.unpack_from("<H", data, 24)[0] == 3  # the writer
    assert struct.unpack_from("<I", data, 28)[0] == 32  # the head's payload
    assert struct.unpack_from("<QQ", data, 32) == (0x1234, 9)  # incarnation, seq = generation
    assert struct.unpack_from("<I", data, 60)[0] == crc32c.crc32c(data[:60] + data[64:96])
    assert struct.unpack_from("<QQIIIB", data, 64) == (0x0102030405060708, 1_700_000_000_000, len(body),
                                                       crc32c.crc32c(body), len(text), 1)
    assert data[93:REGISTRY_HEAD_BYTES] == bytes(REGISTRY_HEAD_BYTES - 93)
    assert data[512:512 + len(body)] == body
    assert data[512 + len(body):] == bytes(len(data) - 512 - len(body))


def test_golden_head():
    """Pinned: changing these bytes changes the on-disk format."""
    data = encode({"a": 1}, 5, token=6, writer=2, block_size=512)
    assert data[:96].hex() == (
        "43465247010000000001020304050607"
        "08090a0b0c0d0e0f0200000020000000"
        "34120000000000000500000000000000"
        "00000000000000000000000018c8ccee"
        "06000000000000000068e5cf8b010000"
        "0f0000009dd6f5920700000001000000")
    assert data[512:527] == zlib.compress(b'{"a":1}', 6)
    assert len(data) == 1024


@blocks
def test_a_small_registry_is_one_write_of_few_blocks(block_size):
    data = encode(SMALL, block_size=block_size)
    assert len(data) == {512: 1024, 4096: 4096}[block_size]


def test_the_same_document_is_the_same_bytes():
    reordered = {"services": SMALL["services"], "version": 1}
    assert encode(reordered) == encode(SMALL)


# --------------------------------------------------------------------------
# what the encoder refuses

@pytest.mark.parametrize("doc, match", [
    ([1, 2], "must be a dict"),
    ({"a": (1, 2)}, "does not survive JSON"),
    ({1: "a"}, "does not survive JSON"),
    ({"a": float("nan")}, "not JSON"),
    ({"a": float("inf")}, "not JSON"),
    ({"a": {1, 2}}, "not JSON"),
    ({"a": object()}, "not JSON"),
    ({"a": "\ud800"}, "not JSON"),
    ({"a": 1, 2: "b"}, "not JSON"),
])
def test_documents_that_are_not_json_are_refused(doc, match):
    with pytest.raises(ValueError, match=match):
        encode(doc)


@pytest.mark.parametrize("field, value", [("generation", 0), ("generation", 2 ** 64), ("token", -1),
                                          ("writer", 0), ("writer", 256), ("incarnation", -1),
                                          ("stamp_ms", 2 ** 64), ("block_size", 1024),
                                          ("cluster_uuid", b"short")])
def test_bad_head_fields_are_refused(field, value):
    args: dict[str, Any] = dict(generation=1, token=1, writer=1, incarnation=1, cluster_uuid=UUID,
                                block_size=512, stamp_ms=0)
    args[field] = value
    with pytest.raises(ValueError, match=field):
        encode_copy(SMALL, **args)


@blocks
def test_too_large_names_the_size_and_the_limit(block_size):
    rnd = random.Random(5)
    doc = {"blob": "".join(rnd.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(900_000))}
    with pytest.raises(RegistryTooLarge) as info:
        encode(doc, block_size=block_size)
    assert info.value.limit_bytes == REGISTRY_BODY_MAX_BYTES == 519680
    assert info.value.size_bytes > info.value.limit_bytes
    message = str(info.value)
    assert f"{info.value.size_bytes} bytes compressed" in message and "holds 519680" in message
    assert "remove services" in message


def test_too_large_json_however_well_it_compresses():
    with pytest.raises(RegistryTooLarge) as info:
        encode({"blob": "a" * REGISTRY_JSON_MAX_BYTES})
    assert info.value.limit_bytes == REGISTRY_JSON_MAX_BYTES
    assert f"{info.value.size_bytes} bytes of JSON" in str(info.value)
    assert str(REGISTRY_JSON_MAX_BYTES) in str(info.value)


def test_too_large_through_clusterdisk_writes_nothing():
    dev, disk = formatted(512)
    before = dev.snapshot()
    rnd = random.Random(6)
    with pytest.raises(RegistryTooLarge):
        disk.write_registry_copy({"blob": rnd.randbytes(600_000).hex()}, 0, generation=1, token=1, writer=1,
                                 incarnation=1, stamp_ms=0)
    assert dev.snapshot() == before


def test_a_document_of_hundreds_of_kib_fits():
    rnd = random.Random(8)
    doc = {"blob": rnd.randbytes(REGISTRY_BODY_MAX_BYTES * 3 // 4 // 2).hex()}  # hex: about 2:1 compressed
    data = encode(doc, block_size=4096)
    assert len(data) <= REGISTRY_COPY_BYTES
    assert decode(data).doc == doc


# --------------------------------------------------------------------------
# the decoder: never raises, says what is wrong

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_garbage_is_damaged_never_an_exception(raw):
    assert isinstance(decode(raw), Damaged)
    assert isinstance(decode_head(raw, cluster_uuid=UUID), Damaged)
    assert isinstance(decode(b"CFRG" + raw), Damaged)


def reseal_head(data: bytes, **payload_fields: Any) -> bytes:
    """``data`` with fields of the head's payload replaced and the head's
    checksum made valid again."""
    names = ("token", "stamp_ms", "body_bytes", "body_crc32c", "json_bytes", "encoding", "reserved")
    values = dict(zip(names, registry_codec.REGISTRY_HEAD_FIXED.unpack_from(data, 64)))
    values.update(payload_fields)
    payload = registry_codec.REGISTRY_HEAD_FIXED.pack(*(values[name] for name in names))
    head = data[:64] + payload
    crc = crc32c.crc32c(head[:60] + head[64:])
    return head[:60] + struct.pack("<I", crc) + head[64:] + data[96:]


def with_body(data: bytes, body: bytes, json_bytes: int) -> bytes:
    """A copy whose head and body checksums are both valid but whose body is ``body``."""
    raw = data[:512] + body + bytes(1024)
    return reseal_head(raw, body_bytes=len(body), body_crc32c=crc32c.crc32c(body), json_bytes=json_bytes)


def z(text: bytes) -> tuple[bytes, int]:
    return zlib.compress(text), len(text)


@pytest.mark.parametrize("body, json_bytes, why", [
    (*z(b"[1,2]"), "not an object"),
    (*z(b'{"a":NaN}'), "NaN is not JSON"),
    (*z(b'{"a":1'), "does not decode"),
    (*z(b'{"a":"\xff"}'), "UnicodeDecodeError"),
    (zlib.compress(b'{"a":1}'), 6, "the head says 6"),
    (zlib.compress(b'{"a":1}'), 8, "the head says 8"),
    (zlib.compress(b'{"a":1}') + b"x", 7, "1 bytes left over"),
    (zlib.compress(b'{"a":1}')[:-2], 7, "the head says 7"),
    (b"not zlib", 7, "zlib"),
    (*z(b"[" * 100_000 + b"]" * 100_000), "RecursionError"),
    (zlib.compress(bytes(10 * MIB)), 10, "left over"),  # a bomb: inflated no further than the head says
])
def test_a_body_with_valid_checksums_that_does_not_decode(body, json_bytes, why):
    found = decode(with_body(encode(SMALL), body, json_bytes))
    assert isinstance(found, Damaged) and found.code == "bad-payload", found
    assert why in found.reason and found.head is not None


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(min_size=32, max_size=32), body=st.binary(max_size=600), seal_body=st.booleans())
def test_any_head_behind_a_valid_checksum_is_decoded_or_damaged(payload, body, seal_body):
    """Random head fields (and a random body, its checksum made valid or
    not) behind a valid head checksum: a value, never an exception."""
    data = encode(SMALL)
    raw = data[:64] + payload + data[96:512] + body
    if seal_body:
        raw = raw[:64] + payload[:16] + struct.pack("<II", len(body), crc32c.crc32c(body)) + payload[24:] + raw[96:]
    raw = raw[:60] + struct.pack("<I", crc32c.crc32c(raw[:60] + raw[64:96])) + raw[64:]
    found = decode(raw)
    assert isinstance(found, (Damaged, RegistryCopy))
    if isinstance(found, RegistryCopy):
        assert isinstance(found.doc, dict)


@pytest.mark.parametrize("fields, why", [
    (dict(encoding=2), "encoding 2"), (dict(reserved=b"\0\0\1"), "reserved"),
    (dict(body_bytes=REGISTRY_BODY_MAX_BYTES + 1), "body_bytes"),
    (dict(json_bytes=REGISTRY_JSON_MAX_BYTES + 1), "json_bytes"),
])
def test_a_head_with_a_valid_checksum_but_bad_fields(fields, why):
    found = decode(reseal_head(encode(SMALL), **fields))
    assert isinstance(found, Damaged) and found.code == "bad-payload" and why in found.reason, found
    assert found.head is None


def test_each_rejection_says_what_is_wrong():
    data = encode(SMALL, 3)
    cases = {
        "not-written": bytes(4096),
        "bad-magic": b"XXXX" + data[4:],
        "bad-version": data[:4] + struct.pack("<H", 2) + data[6:],
        "bad-checksum": data[:70] + bytes([data[70] ^ 1]) + data[71:],
        "bad-length": data[:520],
    }
    for code, raw in cases.items():
        found = decode(raw)
        assert isinstance(found, Damaged) and found.code == code, (code, found)
    assert decode(bytes(4096)).never_written
    foreign = decode(encode(SMALL, cluster_uuid=OTHER_UUID))
    assert isinstance(foreign, Damaged) and foreign.code == "foreign-cluster"
    assert isinstance(decode_copy(encode(SMALL, cluster_uuid=OTHER_UUID), cluster_uuid=None), RegistryCopy)
    torn = decode(data[:520] + bytes([data[520] ^ 1]) + data[521:])
    assert isinstance(torn, Damaged) and torn.code == "bad-checksum" and "body crc32c" in torn.reason
    assert torn.head is not None and torn.head.generation == 3  # the head of a torn copy still tells its generation


# --------------------------------------------------------------------------
# the two-copy rule

def test_an_empty_area_is_no_registry_yet():
    a = b = decode(EMPTY_COPY)
    assert isinstance(a, Damaged) and a.never_written
    assert newest(a, b) == (None, None) and generation_of(a, b) == 0
    assert next_copy(a, b) == (0, 1)
    assert newest(None, None) == (None, None) and next_copy(None, None) == (0, 1)


def test_one_copy_written_is_the_registry():
    a, b = decode(encode(SMALL, 1)), decode(EMPTY_COPY)
    assert newest(a, b) == (a, 0) and generation_of(a, b) == 1
    assert next_copy(a, b) == (1, 2)
    assert newest(b, a) == (a, 1) and next_copy(b, a) == (0, 2)
    assert newest(a, None) == (a, 0)


def test_newest_is_the_highest_generation_then_the_highest_token():
    g4, g5 = decode(encode({"g": 4}, 4, token=9)), decode(encode({"g": 5}, 5, token=1))
    assert newest(g4, g5) == (g5, 1) and newest(g5, g4) == (g5, 0)
    low, high = decode(encode({"t": 1}, 5, token=1)), decode(encode({"t": 2}, 5, token=2))
    assert newest(low, high) == (high, 1) and newest(high, low) == (high, 0)
    assert newest(low, low) == (low, 0)


def test_the_writer_alternates_and_never_reuses_a_generation():
    copies: list[RegistryCopy | Damaged] = [decode(EMPTY_COPY), decode(EMPTY_COPY)]
    for step in range(1, 7):
        copy, generation = next_copy(*copies)
        assert (copy, generation) == ((step - 1) % 2, step)
        copies[copy] = decode(encode({"step": step}, generation))
        assert newest(*copies)[0].doc == {"step": step}
    # a torn copy's head counts: its generation is not written again
    copies[0] = decode(reseal_head(encode({"step": 7}, 7), body_crc32c=0))
    assert isinstance(copies[0], Damaged) and copies[0].head.generation == 7
    assert newest(*copies)[0].doc == {"step": 6}
    assert next_copy(*copies) == (0, 8)
    assert next_copy(*copies, seen_generation=20) == (0, 21)


def write_history(block_size: int, count: int) -> tuple[list[tuple[int, bytes, dict[str, Any]]], list[bytes]]:
    """``count`` writes by the two-copy rule from an empty area: each write's
    (copy, bytes, doc) and the two copies after the last."""
    area = [EMPTY_COPY, EMPTY_COPY]
    history = []
    for step in range(1, count + 1):
        copy, generation = next_copy(decode(area[0]), decode(area[1]))
        doc = services_doc(3, seed=step, command_bytes=200 + 50 * step)
        data = copy_write(doc, generation, block_size)
        area[copy] = on_copy(area[copy], data)
        history.append((copy, data, doc))
    return history, area


@blocks
def test_a_torn_write_leaves_the_previous_generation(block_size):
    """Only some blocks of the new copy landed -- the first k, the last k, or
    every other one, for every k: the previous generation is still the
    newest valid copy, and the next write does not reuse the torn
    generation."""
    history, area = write_history(block_size, 4)
    copy, generation = next_copy(decode(area[0]), decode(area[1]))
    assert (copy, generation) == (0, 5)
    new_doc = services_doc(40, seed=99)
    data = copy_write(new_doc, generation, block_size)
    nblocks = len(data) // block_size
    assert nblocks >= 3
    old = area[copy]

    def landed(which: set[int]) -> bytes:
        parts = [data[i * block_size:(i + 1) * block_size] if i in which else old[i * block_size:(i + 1) * block_size]
                 for i in range(nblocks)]
        return b"".join(parts) + old[len(data):]

    patterns = []
    for k in range(nblocks):
        patterns += [set(range(k)), set(range(nblocks - k, nblocks)), set(range(k % 2, nblocks, 2))]
    for pattern in patterns:
        if len(pattern) == nblocks:
            continue
        copies = [decode(landed(pattern)), decode(area[1])]
        best, which = newest(*copies)
        assert which == 1 and best.generation == 4 and best.doc == history[-1][2], sorted(pattern)
        assert next_copy(*copies)[0] == 0
        assert next_copy(*copies)[1] in (5, 6)  # 6 when the torn copy's new head landed
    complete = [decode(landed(set(range(nblocks)))), decode(area[1])]
    assert newest(*complete)[0].doc == new_doc


@blocks
def test_a_torn_write_on_the_simulated_disk(block_size):
    """The same through ClusterDisk on a SimDisk, whose torn writes land the
    first k sectors."""
    dev, disk = formatted(block_size)
    for generation in (1, 2):
        copy, gen = next_copy(*disk.read_registry_copies())
        disk.write_registry_copy(services_doc(5, seed=generation), copy, generation=gen, token=3, writer=1,
                                 incarnation=1, stamp_ms=0)
    before = dev.snapshot()
    copy, gen = next_copy(*disk.read_registry_copies())
    assert (copy, gen) == (0, 3)
    offset, data = disk.registry_bytes(services_doc(30, seed=3), copy, generation=gen, token=3, writer=1,
                                       incarnation=1, stamp_ms=0)
    for k in range(len(data) // block_size):
        dev.restore(before)
        dev.write(offset, data, sectors=k)
        best, which = disk.read_registry()
        assert which == 1 and best.generation == 2 and best.doc == services_doc(5, seed=2), k
        assert next_copy(*disk.read_registry_copies())[0] == 0
    dev.write(offset, data)
    best, which = disk.read_registry()
    assert (which, best.generation, best.doc) == (0, 3, services_doc(30, seed=3))


@blocks
def test_no_single_corrupt_byte_yields_a_wrong_document(block_size):
    """Every byte of both copies (as far as either was written, and a block
    beyond), overwritten in turn: the reader gets the intact copy's document
    or the corrupted copy's own (a byte it never reads), never another; a
    corrupted copy decodes to its own document or is Damaged."""
    history, area = write_history(block_size, 2)
    docs = {1: history[0][2], 2: history[1][2]}
    extent = max(len(history[0][1]), len(history[1][1])) + block_size
    rnd = random.Random(block_size)
    intact = [decode(area[0]), decode(area[1])]
    for index in range(2):
        original = area[index]
        own_doc = docs[index + 1]
        for position in range(extent):
            for flip in (0xFF, rnd.randrange(1, 256)):
                corrupt = original[:position] + bytes([original[position] ^ flip]) + original[position + 1:]
                found = decode(corrupt)
                assert isinstance(found, Damaged) or found.doc == own_doc, (index, position)
                copies = list(intact)
                copies[index] = found
                best, _which = newest(*copies)
                assert best is not None and best.doc in (docs[1], docs[2]), (index, position)
                if isinstance(found, Damaged):
                    assert best.doc == docs[2 - index]  # the other copy


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_random_damage_to_the_newest_copy_never_yields_a_wrong_document(data):
    """Spans of random bytes, zeroed spans and truncations anywhere in a copy."""
    block_size = data.draw(st.sampled_from(BLOCK_SIZES))
    raw = on_copy(b"\x5a" * 16384, copy_write(MEDIUM, 3, block_size))
    start = data.draw(st.integers(0, len(raw) - 1))
    span = data.draw(st.binary(min_size=1, max_size=64))
    kind = data.draw(st.sampled_from(["overwrite", "zero", "truncate"]))
    if kind == "overwrite":
        damaged = raw[:start] + span + raw[start + len(span):]
    elif kind == "zero":
        damaged = raw[:start] + bytes(len(span)) + raw[start + len(span):]
    else:
        damaged = raw[:start]
    found = decode(damaged)
    assert isinstance(found, Damaged) or found.doc == MEDIUM


@blocks
def test_a_replayed_old_copy_never_wins(block_size):
    """Any copy written before, written again over either copy (a late or
    replayed write): the reader never takes it while the other copy is
    newer, and a writer that remembers the generation it saw never writes
    that generation again."""
    history, area = write_history(block_size, 6)
    for replayed_generation, (_copy, data, doc) in enumerate(history[:-1], start=1):
        for position in (0, 1):
            copies = [area[0], area[1]]
            copies[position] = on_copy(copies[position], data)
            decoded = [decode(copies[0]), decode(copies[1])]
            best, which = newest(*decoded)
            other = decode(area[1 - position])
            if replayed_generation < other.generation:
                assert which == 1 - position and best == other
            else:  # the replay is a byte-for-byte copy of the other copy's generation
                assert best.generation == replayed_generation == other.generation and best.doc == other.doc
            assert best.generation >= 5
            assert next_copy(*decoded, seen_generation=6)[1] == 7


def test_a_copy_of_another_cluster_never_wins():
    mine = decode(encode({"mine": 1}, 1))
    foreign = decode(encode({"theirs": 1}, 99, cluster_uuid=OTHER_UUID))
    assert isinstance(foreign, Damaged) and foreign.code == "foreign-cluster"
    assert newest(foreign, mine) == (mine, 1)


# --------------------------------------------------------------------------
# ClusterDisk over the simulated disk

class RecordingDisk(SimDisk):
    """A SimDisk that records every I/O as (op, offset, length)."""

    def __init__(self, size_bytes: int, sector_size: int) -> None:
        super().__init__(size_bytes, sector_size)
        self.ios: list[tuple[str, int, int]] = []

    def read(self, offset: int, length: int) -> bytes:
        self.ios.append(("read", offset, length))
        return super().read(offset, length)

    def write(self, offset: int, data: Any, sectors: int | None = None) -> None:
        self.ios.append(("write", offset, len(data)))
        super().write(offset, data, sectors)


def formatted(block_size: int) -> tuple[RecordingDisk, ClusterDisk]:
    dev = RecordingDisk(16 * MIB, block_size)
    format_disk(dev, "lab", 8, 100, 200, cluster_uuid=UUID, created_at_s=1)
    return dev, ClusterDisk.open(dev)


@blocks
def test_clusterdisk_io_is_one_block_per_head_and_one_io_per_copy(block_size):
    dev, disk = formatted(block_size)
    layout = disk.layout
    a, b = layout.registry_copy_offset(0), layout.registry_copy_offset(1)
    dev.ios.clear()
    assert disk.read_registry() == (None, None)
    assert dev.ios == [("read", a, block_size), ("read", b, block_size)]  # nothing to read after the heads
    heads = disk.read_registry_heads()
    assert all(isinstance(h, Damaged) and h.never_written for h in heads)
    doc = services_doc(20, seed=4)
    offset, data = disk.registry_bytes(doc, 1, generation=1, token=5, writer=3, incarnation=8, stamp_ms=2)
    dev.ios.clear()
    disk.write_registry_copy(doc, 1, generation=1, token=5, writer=3, incarnation=8, stamp_ms=2)
    assert dev.ios == [("write", b, len(data))] and offset == b  # one write of the whole copy
    dev.ios.clear()
    heads = disk.read_registry_heads()
    assert dev.ios == [("read", a, block_size), ("read", b, block_size)]  # the poll: two single-block reads
    assert isinstance(heads[1], RegistryHead) and heads[1].generation == 1 and heads[1].writer == 3
    dev.ios.clear()
    best, which = disk.read_registry()
    assert which == 1 and best.doc == doc and best.token == 5
    assert dev.ios == [("read", a, block_size), ("read", b, block_size), ("read", b, len(data))]
    dev.ios.clear()
    assert disk.read_registry_copy(1, heads[1]) == best
    assert dev.ios == [("read", b, len(data))]
    whole = disk.read_registry_copy(1)
    assert whole == best and dev.ios[-1] == ("read", b, REGISTRY_COPY_BYTES)
    assert disk.read_registry_heads() == heads  # unchanged: nothing more to read


@blocks
def test_reading_a_copy_rewritten_since_the_poll(block_size):
    """The head from the poll said a short body; the copy now holds a longer
    one: it is read again at its new length, never decoded half-read."""
    dev, disk = formatted(block_size)
    disk.write_registry_copy(SMALL, 0, generation=1, token=1, writer=1, incarnation=1, stamp_ms=0)
    old_head = disk.read_registry_heads()[0]
    big = services_doc(30, seed=7)
    disk.write_registry_copy(big, 0, generation=3, token=2, writer=2, incarnation=1, stamp_ms=0)
    dev.ios.clear()
    found = disk.read_registry_copy(0, old_head)
    assert isinstance(found, RegistryCopy) and found.doc == big and found.generation == 3
    assert [io[2] for io in dev.ios] == [old_head.copy_bytes(block_size), found.head.copy_bytes(block_size)]


@blocks
def test_read_registry_falls_back_to_the_other_copy(block_size):
    dev, disk = formatted(block_size)
    for generation, copy in ((1, 0), (2, 1)):
        disk.write_registry_copy({"g": generation}, copy, generation=generation, token=1, writer=1,
                                 incarnation=1, stamp_ms=0)
    offset = disk.layout.registry_copy_offset(1)
    length = {512: 1024, 4096: 4096}[block_size]
    raw = bytearray(dev.read(offset, length))
    raw[REGISTRY_HEAD_BYTES - 1] ^= 0xFF  # after the head, before the body: never read
    dev.write(offset, bytes(raw))
    assert disk.read_registry()[0].doc == {"g": 2}
    raw[REGISTRY_HEAD_BYTES + 3] ^= 0xFF  # in the body
    dev.write(offset, bytes(raw))
    best, which = disk.read_registry()
    assert (which, best.doc) == (0, {"g": 1})
    copies = disk.read_registry_copies()
    assert isinstance(copies[1], Damaged) and copies[1].code == "bad-checksum"
    assert next_copy(*copies) == (1, 3)


def test_a_foreign_or_misplaced_area_reads_as_damaged():
    dev, disk = formatted(512)
    other = ClusterDisk(dev, disk.layout, OTHER_UUID)
    other.write_registry_copy({"x": 1}, 0, generation=1, token=1, writer=1, incarnation=1, stamp_ms=0)
    copies = disk.read_registry_copies()
    assert isinstance(copies[0], Damaged) and copies[0].code == "foreign-cluster"
    assert disk.read_registry() == (None, None)


# --------------------------------------------------------------------------
# a real block device


@needs_loop
@blocks
def test_both_copies_on_a_loop_device_with_direct_io(block_size, lun_root):
    from clusterfw.ondisk.blockdev import BlockDevice
    from clusterfw.ondisk.diskio import GuardedBlockDevice

    doc = services_doc(200)
    assert 150_000 < len(json.dumps(doc)) < 300_000  # about 1 KiB per service
    with loop_device(sparse_file(lun_dir(lun_root, "registry")), block_size) as device:
        with BlockDevice(device, io_timeout_ms=5000) as dev:
            assert dev.is_block_device and dev.block_size_bytes == block_size
            format_disk(dev, "loop", 8, 100, 200)
            disk = ClusterDisk.open(dev)
            assert disk.read_registry() == (None, None)
            small = dict(SMALL)
            for generation, content in ((1, small), (2, doc), (3, {**small, "version": 3})):
                copy, gen = next_copy(*disk.read_registry_copies())
                assert (copy, gen) == ((generation - 1) % 2, generation)
                disk.write_registry_copy(content, copy, generation=gen, token=10 + gen, writer=2, incarnation=5,
                                         stamp_ms=gen)
            a, b = disk.read_registry_copies()
            assert isinstance(a, RegistryCopy) and (a.generation, a.doc) == (3, {**small, "version": 3})
            assert isinstance(b, RegistryCopy) and (b.generation, b.doc, b.token) == (2, doc, 12)
            # the large one again, now into A
            disk.write_registry_copy(doc, 1, generation=4, token=14, writer=2, incarnation=5, stamp_ms=4)
        # Another open of the device (another host, in effect) sees the same.
        with BlockDevice(device, readonly=True) as dev:
            disk = ClusterDisk.open(dev)
            heads = disk.read_registry_heads()
            assert [h.generation for h in heads] == [3, 4]
            best, which = disk.read_registry()
            assert which == 1 and best.doc == doc and best.generation == 4
            assert disk.read_registry_copy(0).doc == {**small, "version": 3}
        # The guarded device: a refused write never reaches the disk.
        refusal: list[str | None] = ["fenced"]
        with GuardedBlockDevice(device, guard=lambda: refusal[0], io_timeout_ms=5000) as dev:
            disk = ClusterDisk.open(dev)
            with pytest.raises(IoError) as refused:
                disk.write_registry_copy(SMALL, 0, generation=5, token=15, writer=1, incarnation=6, stamp_ms=5)
            assert refused.value.errno == errno.ECANCELED
            assert disk.read_registry_heads() == heads
            refusal[0] = None
            disk.write_registry_copy(SMALL, 0, generation=5, token=15, writer=1, incarnation=6, stamp_ms=5)
            assert disk.read_registry()[0].doc == SMALL
        with BlockDevice(device, readonly=True) as dev, pytest.raises(IoError, match="read-only"):
            ClusterDisk.open(dev).write_registry_copy(SMALL, 1, generation=6, token=16, writer=1, incarnation=6,
                                                      stamp_ms=6)
