"""Hypothesis strategies for every on-disk record, within the model's limits.

Reusable by any test (the simulator's included): every record these produce
is accepted by ``clusterfw.ondisk.codec``'s encoders.  The sizes of the big
lists are parameters so that a test can ask for views at the limits
(``view_records(members_max=NODES_MAX, ...)``) or for small, fast ones (the
defaults).
"""
from __future__ import annotations

from hypothesis import strategies as st

from clusterfw.core.model import (
    ACKS_MAX,
    BARRIERS_MAX,
    CLUSTER_NAME_MAX,
    LEVELS_MAX,
    NODE_NAME_MAX,
    NODES_MAX,
    REASON_MAX,
    REGISTRATIONS_MAX,
    SUBSYSTEM_NAME_MAX,
    Batch,
    BatchEntry,
    Kind,
    Lease,
    LevelSpec,
    MemberEntry,
    NodeConfig,
    NodeState,
    Registration,
    Rejection,
    Request,
    SlotRecord,
    SuperBlock,
    Timing,
    ViewRecord,
)
from clusterfw.ondisk.codec import LEVEL_MAX, U16_MAX, U32_MAX, U64_MAX, VIEW_REJECTIONS_MAX, AreaHeader
from clusterfw.ondisk.layout import AreaKind

u16 = st.integers(0, U16_MAX)
u32 = st.integers(0, U32_MAX)
u64 = st.integers(0, U64_MAX)
node_ids = st.integers(1, NODES_MAX)
levels = st.integers(0, LEVEL_MAX)
barrier_counts = st.tuples(*(st.integers(0, BARRIERS_MAX),) * 3)
cluster_uuids = st.binary(min_size=16, max_size=16)
block_sizes = st.sampled_from((512, 4096))


def utf8_text(max_bytes: int, min_bytes: int = 0) -> st.SearchStrategy[str]:
    """Text of ``min_bytes..max_bytes`` UTF-8 bytes (any code points but
    surrogates, which UTF-8 cannot encode)."""

    def clip(text: str) -> str:
        return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")

    return (st.text(st.characters(blacklist_categories=("Cs",)), min_size=min_bytes, max_size=max_bytes)
            .map(clip).filter(lambda text: len(text.encode("utf-8")) >= min_bytes))


timings = st.builds(Timing, u32, u32, u32, u32, u32, u32)

leases = st.builds(
    Lease, term=u64, mbal=u64, bal=u64, inp=st.integers(0, NODES_MAX), inp_incarnation=u64,
    committed_term=u64, master=st.integers(0, NODES_MAX), master_incarnation=u64, resigned=st.booleans())

registrations = st.builds(Registration, level=levels, name=utf8_text(SUBSYSTEM_NAME_MAX, 1),
                          barriers=barrier_counts)

acks = st.dictionaries(levels, u64, max_size=ACKS_MAX).map(lambda d: tuple(sorted(d.items())))


def slot_records(node_id: int | None = None) -> st.SearchStrategy[SlotRecord]:
    return st.builds(
        SlotRecord,
        node_id=node_ids if node_id is None else st.just(node_id),
        incarnation=u64, seq=u64, timing=timings, request=st.sampled_from(Request), lease=leases,
        registrations=st.lists(registrations, max_size=REGISTRATIONS_MAX).map(tuple),
        acks=acks, seen_epoch=u64)


level_specs = st.builds(LevelSpec, level=levels, barriers=barrier_counts)

member_entries = st.builds(
    MemberEntry, node_id=node_ids, incarnation=u64, state=st.sampled_from(NodeState),
    kind=st.none() | st.sampled_from(Kind), cursor=st.integers(-1, LEVEL_MAX),
    barrier=st.integers(0, BARRIERS_MAX), top_level=st.integers(-1, LEVEL_MAX), forced=st.booleans(),
    ready=st.booleans(), leave_requested=st.booleans())

batch_entries = st.builds(BatchEntry, node_id=node_ids, kind=st.sampled_from(Kind),
                          barrier=st.integers(0, BARRIERS_MAX))


def batches(nodes_max: int = 8) -> st.SearchStrategy[Batch]:
    return st.builds(
        Batch, level=levels, batch_id=u64,
        entries=st.lists(batch_entries, max_size=nodes_max).map(tuple),
        participants=st.lists(node_ids, max_size=nodes_max).map(tuple))


rejections = st.builds(Rejection, node_id=node_ids, incarnation=u64, level=levels,
                       reason=utf8_text(REASON_MAX))


def view_records(node_id: int | None = None, *, members_max: int = 12, batch_nodes_max: int = 8,
                 rejections_max: int = 4) -> st.SearchStrategy[ViewRecord]:
    """Views that fit their 16 KiB copy with the default sizes (and with
    any sizes within the model's limits where batches stay small)."""
    return st.builds(
        ViewRecord,
        node_id=node_ids if node_id is None else st.just(node_id),
        incarnation=u64, seq=u64, term=u64, epoch=u64, next_batch_id=u64,
        levels=st.lists(level_specs, max_size=LEVELS_MAX, unique_by=lambda s: s.level).map(tuple),
        members=st.lists(member_entries, max_size=members_max, unique_by=lambda m: m.node_id).map(tuple),
        batches=st.lists(batches(batch_nodes_max), max_size=LEVELS_MAX, unique_by=lambda b: b.level).map(tuple),
        rejections=st.lists(rejections, max_size=min(rejections_max, VIEW_REJECTIONS_MAX)).map(tuple))


superblocks = st.builds(
    SuperBlock, cluster_name=utf8_text(CLUSTER_NAME_MAX, 1), cluster_uuid=cluster_uuids,
    block_size=block_sizes, nodes_max=st.integers(1, NODES_MAX),
    heartbeat_interval_ms=st.integers(1, U32_MAX), io_timeout_ms=st.integers(1, U32_MAX), created_at_s=u64)


def node_configs(node_id: int | None = None) -> st.SearchStrategy[NodeConfig]:
    return st.builds(NodeConfig, node_id=node_ids if node_id is None else st.just(node_id),
                     name=utf8_text(NODE_NAME_MAX, 1), incarnation=u64)


area_headers = st.builds(AreaHeader, kind=st.sampled_from(AreaKind), area_version=u16, size_bytes=u64)
