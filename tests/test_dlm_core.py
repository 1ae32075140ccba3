"""The DLM's pure core, driven step by step against lock sectors on a
simulated disk (through the real codec): I/O counts, FIFO order, modes,
try-locks, timeouts, release, leave, recovery of a dead holder through the
view, tokens, restarts, and the rules a caller must follow."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from clusterfw.core import dlm as dlm_mod
from clusterfw.core.dlm import (
    DLM_LEVEL,
    Ack,
    Denied,
    DlmCore,
    DlmMisuse,
    DlmResult,
    EntryState,
    Granted,
    LockEntry,
    LockMode,
    Phase,
    ReadArea,
    ReadStripe,
    Recovered,
    Released,
    Revoked,
    WriteEntry,
    stripe_of,
)
from clusterfw.core.model import BatchEntry, Kind, MemberEntry, NodeState, ViewRecord
from clusterfw.core.node import Unreadable
from clusterfw.ondisk import dlm_codec
from clusterfw.ondisk.layout import Layout
from clusterfw.ondisk.simdisk import SimDisk

UUID = bytes(range(16))
EX, SH = LockMode.EXCLUSIVE, LockMode.SHARED


class Disk:
    """The DLM area of a simulated disk, read and written through the codec."""

    def __init__(self, nodes_max: int = 4) -> None:
        self.layout = Layout(512, nodes_max)
        self.disk = SimDisk(self.layout.total_bytes, 512)

    def write(self, entry: LockEntry) -> None:
        self.disk.write(*dlm_codec.entry_bytes(entry, UUID, self.layout))

    def stripe(self, stripe: int) -> dict:
        raw = self.disk.read(self.layout.dlm_stripe_offset(stripe), self.layout.dlm_stripe_bytes)
        return dlm_codec.decode_stripe(raw, stripe, cluster_uuid=UUID, layout=self.layout)

    def area(self) -> dict:
        raw = self.disk.read(self.layout.dlm_stripe_offset(0), self.layout.dlm_stripes_max * self.layout.dlm_stripe_bytes)
        return dlm_codec.decode_area(raw, cluster_uuid=UUID, layout=self.layout)

    def sector(self, stripe: int, node_id: int) -> LockEntry | Unreadable:
        return self.stripe(stripe)[node_id]

    def own_sectors(self, node_id: int) -> dict:
        return {s: e[node_id] for s, e in self.area().items() if not getattr(e[node_id], "never_written", False)}


@dataclass
class Node:
    """One node's DLM with a synchronous driver that counts its I/Os."""

    disk: Disk
    node_id: int
    incarnation: int = 0
    now: float = 0.0
    writable: bool = True
    fail_next: int = 0  # fail this many of the next ops
    stamp_ms: int = 0  # the wall clock its writes carry (0: none), as the daemon stamps them
    core: DlmCore = field(init=False)
    events: list = field(default_factory=list)
    writes: int = 0
    reads: int = 0
    batches: int = 0

    def __post_init__(self) -> None:
        self.incarnation = self.incarnation or 1000 + self.node_id
        self.core = DlmCore(node_id=self.node_id, incarnation=self.incarnation,
                            stripes_max=self.disk.layout.dlm_stripes_max, nodes_max=self.disk.layout.nodes_max,
                            now_ms=self.now, own_sectors=self.disk.own_sectors(self.node_id),
                            can_write=lambda now: self.writable, poll_min_ms=10, poll_max_ms=40)

    def perform(self, op) -> DlmResult:
        if self.fail_next:
            self.fail_next -= 1
            return DlmResult(op, False, self.now, self.now, None, "EIO")
        if isinstance(op, WriteEntry):
            assert self.writable, "a write issued while the node may not write"
            self.writes += 1
            self.disk.write(replace(op.entry, stamp_ms=self.stamp_ms) if self.stamp_ms else op.entry)
            return DlmResult(op, True, self.now, self.now)
        self.reads += 1
        value = self.disk.stripe(op.stripe) if isinstance(op, ReadStripe) else self.disk.area()
        return DlmResult(op, True, self.now, self.now, value)

    def step(self) -> bool:
        ops = self.core.poll(self.now)
        self.events += self.core.take_events()
        if not ops:
            return False
        self.batches += 1
        self.core.complete(self.now, [self.perform(op) for op in ops])
        self.events += self.core.take_events()
        return True

    def take(self, kind=None) -> list:
        self.events += self.core.take_events()
        out = [e for e in self.events if kind is None or isinstance(e, kind)]
        self.events = [e for e in self.events if e not in out]
        return out

    def counts(self) -> tuple[int, int]:
        return self.writes, self.reads


def member(node_id: int, incarnation: int | None = None, state=NodeState.JOINED, **kw) -> MemberEntry:
    return MemberEntry(node_id, incarnation or 1000 + node_id, state, **kw)


def view(epoch: int, *members: MemberEntry) -> ViewRecord:
    return ViewRecord(node_id=1, incarnation=1, seq=epoch, term=1, epoch=epoch, members=members)


class Cluster:
    def __init__(self, count: int = 3, nodes_max: int = 4) -> None:
        self.disk = Disk(nodes_max)
        self.nodes = {n: Node(self.disk, n) for n in range(1, count + 1)}
        self.epoch = 0
        self.now = 0.0
        self.batch = 0
        self.set_view(*(member(n) for n in self.nodes))
        self.batch += 1
        for node in self.nodes.values():  # everybody joins at the DLM level: reads the area, acks
            node.core.notify(self.batch, [BatchEntry(n, Kind.JOIN, 0) for n in self.nodes], self.now)
        self.settle()
        for node in self.nodes.values():
            assert node.take(Ack) == [Ack(self.batch)]
            assert node.core.may_request() is None
            node.writes = node.reads = node.batches = 0

    def set_view(self, *members: MemberEntry) -> None:
        self.epoch += 1
        self.view = view(self.epoch, *members)
        for node in self.nodes.values():
            node.core.on_view(self.view, self.now)

    def settle(self, max_rounds: int = 200) -> None:
        """Run every node's due ops at the current time until nobody moves."""
        for _ in range(max_rounds):
            moved = False
            for n in sorted(self.nodes):
                self.nodes[n].now = self.now
                moved = self.nodes[n].step() or moved
            if not moved:
                return
        raise AssertionError("did not settle")

    def run(self, until_ms: float, step_ms: float = 5.0) -> None:
        while self.now < until_ms:
            self.settle()
            self.now += step_ms
        self.settle()

    def __getitem__(self, n: int) -> Node:
        return self.nodes[n]


def granted(node: Node) -> list[tuple[int, str, LockMode, int]]:
    return [(e.req_id, e.name, e.mode, e.token) for e in node.take(Granted)]


# ------------------------------------------------------------------ basics
def test_uncontended_acquire_is_three_writes_and_two_reads_in_three_round_trips():
    c = Cluster()
    c[1].core.request(1, "vol-a", EX, c.now)
    c.settle()
    assert granted(c[1]) == [(1, "vol-a", EX, 1)]
    assert c[1].counts() == (3, 2) and c[1].batches == 3
    stripe = stripe_of("vol-a", c.disk.layout.dlm_stripes_max)
    held = c.disk.sector(stripe, 1)
    assert (held.state, held.name, held.mode, held.ticket, held.token) == (EntryState.HELD, "vol-a", EX, 1, 1)
    c[1].core.release(1, c.now)
    c.settle()
    assert c[1].take(Released) == [Released(1)]
    assert c[1].counts() == (4, 2)
    free = c.disk.sector(stripe, 1)
    assert (free.state, free.ticket, free.token, free.seq) == (EntryState.FREE, 1, 1, held.seq + 1)  # kept


def test_a_grant_is_reported_only_after_the_held_write_completed():
    c = Cluster()
    c[1].core.request(1, "vol-a", EX, c.now)
    for _ in range(2):
        c[1].step()
    ops = c[1].core.poll(c.now)
    assert [type(op) for op in ops] == [WriteEntry] and ops[0].entry.state is EntryState.HELD
    assert not c[1].take(Granted)
    c[1].core.complete(c.now, [DlmResult(ops[0], False, c.now, c.now, None, "EIO")])
    assert not c[1].core.take_events()  # failed: no grant, retried later
    c.run(50)
    assert granted(c[1]) == [(1, "vol-a", EX, 1)]


def test_three_contenders_are_granted_in_ticket_order():
    c = Cluster(count=4)
    c[1].core.request(1, "vol-a", EX, c.now)
    c.settle()
    assert granted(c[1])
    for n in (3, 2, 4):  # they draw tickets in this order
        c[n].core.request(10 + n, "vol-a", EX, c.now)
        c.settle()
    stripe = stripe_of("vol-a", c.disk.layout.dlm_stripes_max)
    tickets = {n: c.disk.sector(stripe, n).ticket for n in (3, 2, 4)}
    assert tickets[3] < tickets[2] < tickets[4]
    order = []
    holder = 1
    for _ in range(3):
        c[holder].core.release(10 + holder if holder != 1 else 1, c.now)
        c.run(c.now + 200)
        got = [n for n in (2, 3, 4) if c[n].take(Granted)]
        assert len(got) == 1, got
        holder = got[0]
        order.append(holder)
    assert order == [3, 2, 4]


def test_shared_holders_coexist_and_an_exclusive_waits_for_both():
    c = Cluster()
    c[1].core.request(1, "vol-a", SH, c.now)
    c[2].core.request(2, "vol-a", SH, c.now)
    c.settle()
    assert granted(c[1]) == [(1, "vol-a", SH, 0)] and granted(c[2]) == [(2, "vol-a", SH, 0)]
    c[3].core.request(3, "vol-a", EX, c.now)
    c.run(100)
    assert not c[3].take(Granted)
    c[1].core.release(1, c.now)
    c.run(c.now + 100)
    assert not c[3].take(Granted)
    c[2].core.release(2, c.now)
    c.run(c.now + 100)
    assert granted(c[3]) == [(3, "vol-a", EX, 1)]


def test_try_lock_is_denied_and_withdrawn():
    c = Cluster()
    c[1].core.request(1, "vol-a", EX, c.now)
    c.settle()
    c[2].core.request(2, "vol-a", SH, c.now, try_only=True)
    c.settle()
    assert c[2].take(Denied) == [Denied(2, "busy: n1")]
    stripe = stripe_of("vol-a", c.disk.layout.dlm_stripes_max)
    e = c.disk.sector(stripe, 2)
    assert e.state is EntryState.FREE and e.ticket == 2  # withdrawn, ticket kept
    assert not c[2].core.busy()
    c[2].core.request(3, "vol-b", EX, c.now, try_only=True)  # a free lock: granted at once
    c.settle()
    assert granted(c[2]) == [(3, "vol-b", EX, 1)]


def test_timeout_denies_at_the_deadline_and_withdraws():
    c = Cluster()
    c[1].core.request(1, "vol-a", EX, c.now)
    c.settle()
    c[2].core.request(2, "vol-a", EX, c.now, timeout_ms=100)
    c.run(95)
    assert not c[2].events
    c.run(130)
    assert c[2].take(Denied) == [Denied(2, "timeout after 0.1 s: held by n1")]
    stripe = stripe_of("vol-a", c.disk.layout.dlm_stripes_max)
    assert c.disk.sector(stripe, 2).state is EntryState.FREE
    c[1].core.release(1, c.now)
    c.run(c.now + 50)
    assert not c[2].take(Granted)


def test_release_before_the_grant_cancels():
    c = Cluster()
    c[1].core.request(1, "vol-a", EX, c.now)
    c.settle()
    c[2].core.request(2, "vol-a", EX, c.now)
    c.run(30)
    assert c[2].core.release(2, c.now) is True
    c.settle()
    assert c[2].take(Denied) == [Denied(2, "cancelled")]
    assert c[2].core.release(2, c.now) is False  # already over
    assert not c[2].core.busy()


def test_every_denial_says_its_kind_so_no_caller_matches_the_sentence():
    """busy, timeout, cancelled and the node's own state each carry a
    DenyKind; ``reason`` is only the sentence for people."""
    from clusterfw.core.dlm import DenyKind
    c = Cluster()
    c[1].core.request(1, "vol-a", EX, c.now)
    c.settle()
    c[2].core.request(2, "vol-a", SH, c.now, try_only=True)
    c.settle()
    c[2].core.request(3, "vol-a", EX, c.now, timeout_ms=50)
    c.run(c.now + 100)
    c[2].core.request(4, "vol-a", EX, c.now)
    c.run(c.now + 30)
    c[2].core.release(4, c.now)
    c.settle()
    c[1].core.request(5, "vol-a", SH, c.now, try_only=True)  # its own node holds it: busy at once
    c[2].core.stop("fenced")
    c[2].core.request(6, "vol-b", EX, c.now)
    kinds = {d.req_id: d.kind for d in c[2].take(Denied) + c[1].take(Denied)}
    assert kinds == {2: DenyKind.BUSY, 3: DenyKind.TIMEOUT, 4: DenyKind.CANCELLED, 5: DenyKind.BUSY,
                     6: DenyKind.UNAVAILABLE}


def test_failed_io_is_retried():
    c = Cluster()
    c[1].fail_next = 3
    c[1].core.request(1, "vol-a", EX, c.now)
    c.run(100)
    assert granted(c[1]) == [(1, "vol-a", EX, 1)]


# ------------------------------------------------------------ transitions
def test_own_graceful_leave_revokes_held_locks_denies_waiters_and_acks_after_withdrawing():
    c = Cluster()
    c[2].core.request(20, "vol-b", EX, c.now)
    c.settle()
    c[1].core.request(1, "vol-a", EX, c.now)
    c[1].core.request(2, "vol-b", EX, c.now)
    c.run(50)
    assert granted(c[1]) == [(1, "vol-a", EX, 1)]
    c.set_view(member(1, state=NodeState.LEAVING, kind=Kind.LEAVE, cursor=DLM_LEVEL), member(2), member(3))
    c[1].core.notify(7, [BatchEntry(1, Kind.LEAVE, 0)], c.now)
    assert c[1].take(Revoked) == [Revoked(1, "vol-a", "this node is leaving the cluster")]
    assert c[1].take(Denied) == [Denied(2, "this node is leaving the cluster")]
    assert not c[1].take(Ack)  # not before the sectors are withdrawn
    c.settle()
    assert c[1].take(Ack) == [Ack(7)]
    for name in ("vol-a", "vol-b"):
        assert c.disk.sector(stripe_of(name, c.disk.layout.dlm_stripes_max), 1).state is EntryState.FREE
    c[1].core.request(3, "vol-c", EX, c.now)
    assert c[1].take(Denied) == [Denied(3, "this node is leaving the cluster")]


def test_a_leave_whose_writes_failed_is_cleaned_up_when_the_same_incarnation_rejoins():
    c = Cluster()
    c[1].core.request(1, "vol-a", EX, c.now)
    c.settle()
    assert granted(c[1])
    c.set_view(member(1, state=NodeState.LEAVING, kind=Kind.LEAVE, cursor=DLM_LEVEL), member(2), member(3))
    c[1].fail_next = 10  # the disk refuses every FREE write: acked after LEAVE_RELEASE_ATTEMPTS anyway
    c[1].core.notify(7, [BatchEntry(1, Kind.LEAVE, 0)], c.now)
    c.run(c.now + 200)
    assert c[1].take(Ack) == [Ack(7)]
    stripe = stripe_of("vol-a", c.disk.layout.dlm_stripes_max)
    assert c.disk.sector(stripe, 1).state is EntryState.HELD  # left over, ignored once the view moves on
    c[1].fail_next = 0
    c.set_view(member(1, state=NodeState.JOINING, kind=Kind.JOIN, cursor=DLM_LEVEL), member(2), member(3))
    c[1].core.notify(8, [BatchEntry(1, Kind.JOIN, 0)], c.now)
    c.settle()
    assert c[1].take(Ack) == [Ack(8)]
    assert c.disk.sector(stripe, 1).state is EntryState.FREE  # withdrawn before the join was acked
    assert c[1].core.holdings() == []
    c.set_view(member(1), member(2), member(3))
    c[1].core.request(2, "vol-a", EX, c.now)
    c.settle()
    assert granted(c[1]) == [(2, "vol-a", EX, 2)]


def test_others_transitions_are_acked_at_once():
    c = Cluster()
    for kind in Kind:
        c[1].core.notify(40 + kind, [BatchEntry(3, kind, 0)], c.now)
        assert c[1].take(Ack) == [Ack(40 + kind)]


@pytest.mark.parametrize("joining_view,may", [
    (member(1, state=NodeState.JOINING, kind=Kind.JOIN, cursor=DLM_LEVEL), False),  # others have not acked yet
    (member(1, state=NodeState.JOINING, kind=Kind.JOIN, cursor=0), False),
    (member(1, state=NodeState.JOINING, kind=Kind.JOIN, cursor=20), True),  # level 10 done, 20 in progress
    (member(1, state=NodeState.LEAVING, kind=Kind.LEAVE, cursor=30), True),  # leaving above the DLM
    (member(1, state=NodeState.LEAVING, kind=Kind.LEAVE, cursor=0), False),
    (member(1, state=NodeState.FORCED_LEAVING, kind=Kind.FORCED), False),
    (member(1, incarnation=5), False),  # a previous incarnation of this node
])
def test_requests_only_while_joined_at_the_dlm_level(joining_view, may):
    c = Cluster()
    c.set_view(joining_view, member(2), member(3))
    c[1].core.request(1, "vol-a", EX, c.now)
    c.settle()
    assert bool(c[1].take(Granted)) is may
    if not may:
        [denied] = c[1].take(Denied)
        assert "not joined" in denied.reason


def test_a_new_node_must_read_the_area_before_it_acks_its_join():
    disk = Disk()
    node = Node(disk, 1)
    node.core.on_view(view(1, member(1, state=NodeState.JOINING, kind=Kind.JOIN, cursor=DLM_LEVEL)), 0)
    node.core.notify(3, [BatchEntry(1, Kind.JOIN, 0)], 0)
    assert not node.take(Ack)
    assert node.core.poll(0) == [ReadArea()]
    node.core.complete(0, [DlmResult(ReadArea(), False, 0, 0, None, "EIO")])
    assert not node.core.take_events() and node.core.poll(0) == []  # retried after a poll interval
    node.now = 10
    assert node.step() and node.take(Ack) == [Ack(3)]
    node.core.notify(4, [BatchEntry(1, Kind.JOIN, 1)], 0)  # its next barrier: nothing more to read
    assert node.take(Ack) == [Ack(4)]


# ----------------------------------------------------------------- recovery
def test_a_dead_holders_lock_stays_held_until_the_view_shows_it_recovered_at_the_dlm_level():
    c = Cluster()
    c[1].core.request(1, "vol-a", EX, c.now)
    c.settle()
    assert granted(c[1])
    c[2].core.request(2, "vol-a", EX, c.now)
    c.run(50)
    del c.nodes[1]  # n1 dies holding the lock
    forced = dict(state=NodeState.FORCED_LEAVING, kind=Kind.FORCED, top_level=40)
    for epoch_members in (
            member(1, **forced),  # forced out, not yet dead
            member(1, **forced, ready=True, cursor=0),  # dead: recovery starts at level 0
            member(1, **forced, ready=True, cursor=DLM_LEVEL)):  # the DLM's own forced-leave step
        c.set_view(epoch_members, member(2), member(3))
        c.run(c.now + 300)
        assert not c[2].take(Granted), epoch_members
        assert not c[2].take(Recovered)
    c[2].core.notify(9, [BatchEntry(1, Kind.FORCED, 0)], c.now)
    assert c[2].take(Ack) == [Ack(9)]
    c.run(c.now + 300)
    assert not c[2].take(Granted)  # acking is not enough: the view must say so
    c.set_view(member(1, **forced, ready=True, cursor=20), member(2), member(3))
    assert c[2].take(Recovered) == [Recovered("vol-a", 1, 2, incarnation=1001)]  # names the incarnation
    c.settle()
    assert granted(c[2]) == [(2, "vol-a", EX, 2)]  # token above the dead holder's


@pytest.mark.parametrize("gone", [
    member(1, state=NodeState.INACTIVE, forced=True),  # forced leave complete
    member(1, state=NodeState.FORCED_LEAVING, kind=Kind.FORCED, ready=True, cursor=20),  # past the DLM level
])
def test_a_recovered_or_replaced_incarnation_no_longer_counts(gone):
    c = Cluster()
    c[1].core.request(1, "vol-a", EX, c.now)
    c.settle()
    c[2].core.request(2, "vol-a", EX, c.now)
    c.run(50)
    del c.nodes[1]
    c.set_view(gone, member(2), member(3))
    c.settle()
    assert [e.from_node for e in c[2].take(Recovered)] == [1]
    assert granted(c[2]) == [(2, "vol-a", EX, 2)]


def test_an_unreadable_sector_blocks_only_while_its_node_counts():
    c = Cluster()
    stripe = stripe_of("vol-a", c.disk.layout.dlm_stripes_max)
    c.disk.disk.write(c.disk.layout.dlm_entry_offset(stripe, 3), b"garbage!" * 64)
    c[1].core.request(1, "vol-a", EX, c.now)
    c.run(100)
    assert not c[1].take(Granted)
    assert c[1].core.holdings()[0].state == "waiting"
    c.set_view(member(1), member(2), member(3, state=NodeState.INACTIVE))
    c.run(c.now + 100)
    assert granted(c[1])


# ------------------------------------------------------------------ tokens
def test_tokens_strictly_increase_across_exclusive_grants_and_shared_grants_carry_the_generation():
    c = Cluster()
    tokens = []
    for i, (n, mode) in enumerate([(1, EX), (2, EX), (3, SH), (1, SH), (3, EX), (2, SH)]):
        c[n].core.request(i, "vol-a", mode, c.now)
        c.run(c.now + 100)
        [(_, _, _, token)] = granted(c[n])
        tokens.append((mode, token))
        c[n].core.release(i, c.now)
        c.run(c.now + 50)
    assert tokens == [(EX, 1), (EX, 2), (SH, 2), (SH, 2), (EX, 3), (SH, 3)]


def test_a_restarted_node_continues_from_its_own_sectors():
    c = Cluster()
    for i in range(3):
        c[1].core.request(i, "vol-a", EX, c.now)
        c.settle()
        c[1].core.release(i, c.now)
        c.settle()
    stripe = stripe_of("vol-a", c.disk.layout.dlm_stripes_max)
    before = c.disk.sector(stripe, 1)
    assert (before.ticket, before.token, before.seq) == (3, 3, 12)
    restarted = Node(c.disk, 1, incarnation=4242)
    c.nodes[1] = restarted
    c.set_view(member(1, incarnation=4242), member(2), member(3))
    restarted.core.notify(50, [BatchEntry(1, Kind.JOIN, 0)], c.now)
    c.settle()
    restarted.core.request(9, "vol-a", EX, c.now)
    c.settle()
    after = c.disk.sector(stripe, 1)
    assert after.incarnation == 4242 and after.seq == before.seq + 3
    assert (after.ticket, after.token) == (4, 4)


def test_a_restart_that_could_not_read_its_sectors_learns_them_at_its_join():
    c = Cluster()
    c[1].core.request(1, "vol-a", EX, c.now)
    c.settle()
    stripe = stripe_of("vol-a", c.disk.layout.dlm_stripes_max)
    core = DlmCore(node_id=1, incarnation=4242, stripes_max=c.disk.layout.dlm_stripes_max, nodes_max=4, now_ms=0,
                   own_sectors=None)
    core.on_view(view(9, member(1, incarnation=4242), member(2), member(3)), 0)
    core.notify(1, [BatchEntry(1, Kind.JOIN, 0)], 0)
    [op] = core.poll(0)
    core.complete(0, [DlmResult(op, True, 0, 0, c.disk.area())])
    core.request(2, "vol-a", EX, 0)
    [cleanup] = core.poll(0)  # the previous incarnation's HELD entry is withdrawn first
    assert cleanup.entry.state is EntryState.FREE
    assert cleanup.entry.seq == c.disk.sector(stripe, 1).seq + 1 and cleanup.entry.token == 1
    core.complete(0, [DlmResult(cleanup, True, 0, 0)])
    first, _read = core.poll(0)
    assert first.entry.seq == cleanup.entry.seq + 1 and first.entry.token == 1


# ------------------------------------------------------- local queueing etc.
def _twin(name: str, stripes: int) -> str:
    target = stripe_of(name, stripes)
    return next(f"{name}-{i}" for i in range(10_000) if stripe_of(f"{name}-{i}", stripes) == target)


def test_local_requests_on_one_stripe_queue_fifo_while_other_nodes_are_not_blocked():
    c = Cluster()
    twin = _twin("vol-a", c.disk.layout.dlm_stripes_max)
    c[1].core.request(1, "vol-a", EX, c.now)
    c[1].core.request(2, twin, EX, c.now)
    c[2].core.request(3, twin, EX, c.now)  # another node, another name on the same stripe
    c.run(50)
    assert [g[0] for g in granted(c[1])] == [1]
    assert [h.state for h in c[1].core.holdings()] == ["held", "queued"]
    assert [g[:3] for g in granted(c[2])] == [(3, twin, EX)]  # names never conflict across nodes
    c[2].core.release(3, c.now)
    c[1].core.release(1, c.now)
    c.run(c.now + 100)
    assert [g[0] for g in granted(c[1])] == [2]


def test_a_try_lock_behind_a_local_request_is_denied_at_once():
    """A try-lock never queues behind a request of its own node (the holder
    of the same lock, or another lock on the same stripe): it is busy now,
    answered in the request call itself, with no I/O, naming the local pid."""
    c = Cluster()
    twin = _twin("vol-a", c.disk.layout.dlm_stripes_max)
    c[1].core.request(1, "vol-a", EX, c.now, owner=4242)
    c.settle()
    assert [g[0] for g in granted(c[1])] == [1]
    io = c[1].counts()
    c[1].core.request(2, "vol-a", EX, c.now, try_only=True, owner=4343)
    assert c[1].take(Denied) == [Denied(2, "busy: n1 (this node: pid 4242 holds it)")]
    c[1].core.request(3, "vol-a", SH, c.now, try_only=True)
    assert c[1].take(Denied) == [Denied(3, "busy: n1 (this node: pid 4242 holds it)")]
    c[1].core.request(4, twin, EX, c.now, try_only=True)  # another name, the same sector
    [denied] = c[1].take(Denied)
    assert denied.req_id == 4 and denied.reason.startswith("busy: n1 (this node's lock sector on stripe ")
    assert "in use by 'vol-a', pid 4242 holds it" in denied.reason
    c.settle()
    assert c[1].counts() == io  # nothing was written or read for them
    assert [h.req_id for h in c[1].core.holdings()] == [1]
    c[1].core.release(1, c.now)
    c.settle()
    c[1].core.request(5, "vol-a", EX, c.now, try_only=True)  # free again: granted
    c.settle()
    assert [g[0] for g in granted(c[1])] == [5]


def test_holdings_show_waiters_with_their_tickets():
    c = Cluster()
    c[1].core.request(1, "vol-a", EX, c.now)
    c.settle()
    c[2].core.request(2, "vol-a", SH, c.now)
    c.run(40)
    c[1].core.request(3, "vol-b", SH, c.now, timeout_ms=10_000)
    c.settle()
    [waiting] = c[2].core.holdings()
    assert (waiting.name, waiting.state, waiting.ticket) == ("vol-a", "waiting", 2)
    c[3].core.request(4, "vol-a", EX, c.now)
    c.run(c.now + 40)
    c[1].core.release(1, c.now)
    c.run(c.now + 100)
    held = c[2].core.holdings()[0]
    assert held.state == "held" and held.since_ms > 0 and held.waiters == ((3, 3, EX),)


def test_a_node_that_may_not_write_produces_no_ops_and_stop_ends_everything():
    c = Cluster()
    c[1].core.request(1, "vol-a", EX, c.now)
    c.settle()
    c[1].core.request(2, "vol-b", EX, c.now)
    c[1].writable = False
    assert c[1].core.poll(c.now) == []
    c[1].core.stop("fenced")
    assert c[1].take(Revoked) == [Revoked(1, "vol-a", "fenced")]
    assert c[1].take(Denied) == [Denied(2, "fenced")]
    c[1].writable = True
    assert c[1].core.poll(c.now) == [] and c[1].core.wakeup_ms() == float("inf")
    c[1].core.request(3, "vol-c", EX, c.now)
    assert "stopped" in c[1].take(Denied)[0].reason


def test_misuse_is_a_typed_error():
    c = Cluster()
    for bad in ("", "x" * 49, 7):
        with pytest.raises(DlmMisuse):
            c[1].core.request(1, bad, EX, c.now)  # type: ignore[arg-type]
    c[1].core.request(1, "vol-a", EX, c.now)
    with pytest.raises(DlmMisuse, match="already in use"):
        c[1].core.request(1, "vol-b", EX, c.now)
    with pytest.raises(DlmMisuse):
        c[1].core.request(2, "vol-b", EX, c.now, timeout_ms=-1)
    with pytest.raises(AssertionError):
        c[1].core.complete(c.now, [])  # nothing in flight


def test_requests_are_bounded(monkeypatch):
    monkeypatch.setattr(dlm_mod, "REQUESTS_MAX", 2)
    c = Cluster()
    for i in range(3):
        c[1].core.request(i, f"vol-{i}", EX, c.now)
    assert "too many" in c[1].take(Denied)[0].reason


def test_the_request_machine_refuses_illegal_moves():
    c = Cluster()
    c[1].core.request(1, "vol-a", EX, c.now)
    req = c[1].core._requests[1]
    assert req.phase is Phase.CHOOSING
    with pytest.raises(AssertionError, match="illegal move"):
        c[1].core._move(req, Phase.HELD)
    assert (Phase.GRANTING, Phase.HELD) in dlm_mod.TRANSITIONS


def test_views_never_go_back():
    c = Cluster()
    newest = c.view
    c[1].core.on_view(replace(newest, epoch=newest.epoch - 1, members=()), c.now)
    assert c[1].core.view is newest


def test_the_core_loads_nothing_that_touches_the_world():
    """Importing the DLM core (in a fresh interpreter without site hooks)
    loads no threads, sockets, processes, clocks or randomness, and not even
    the crc32c extension (whose package imports much more): the core computes
    CRC-32C itself."""
    probe = ("import json, sys\nsys.path.insert(0, sys.argv[1])\nbefore = set(sys.modules)\n"
             "import clusterfw.core.dlm\nprint(json.dumps(sorted(set(sys.modules) - before)))\n")
    repo = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-E", "-S", "-c", probe, repo], capture_output=True, text=True,
                         timeout=60, check=True)
    modules = json.loads(out.stdout)
    roots = {m.split(".")[0] for m in modules}
    assert not roots & {"threading", "socket", "subprocess", "time", "random", "crc32c", "asyncio", "select",
                        "mmap", "fcntl", "ctypes"}, sorted(roots)
    assert not [m for m in modules if m.startswith(("clusterfw.ondisk", "clusterfw.sim", "clusterfw.node"))]


def test_a_try_lock_denial_names_the_holder_by_its_node_name():
    c = Cluster()
    c[2].core.name_of = {1: "web1", 2: "web2", 3: "web3"}.__getitem__
    c[1].core.request(1, "vol-a", EX, c.now)
    c.settle()
    c[2].core.request(2, "vol-a", SH, c.now, try_only=True)
    c.settle()
    assert c[2].take(Denied) == [Denied(2, "busy: web1")]


# ------------------------------------------------- who a timeout waited for
def test_a_timeout_names_the_holder_its_pid_and_since_when():
    """The timeout's reason carries the blockers of the last stripe read:
    the holder's node, the pid that asked there and the stamp of its write
    (12:00:01 UTC here), while the kind stays TIMEOUT."""
    from clusterfw.core.dlm import DenyKind
    c = Cluster()
    c[1].stamp_ms = (12 * 3600 + 1) * 1000 + 250  # 1970-01-01 12:00:01.250 UTC
    c[1].core.request(1, "vol-a", EX, c.now, owner=321)
    c.settle()
    assert granted(c[1])
    c[3].core.request(7, "vol-a", SH, c.now, owner=55)  # waits behind n1 too, with a ticket before n2's
    c.run(c.now + 20)
    c[2].core.name_of = {1: "web1", 2: "web2", 3: "web3"}.__getitem__
    c[2].core.request(2, "vol-a", EX, c.now, timeout_ms=5000, owner=99)
    c.run(c.now + 5100)
    [denied] = c[2].take(Denied)
    assert denied.kind is DenyKind.TIMEOUT
    assert denied.reason == ("timeout after 5 s: held by pid 321 on web1 since 12:00:01 UTC; "
                             "asked for earlier by pid 55 on web3"), denied.reason
    assert [(b.node_id, b.why, b.owner, b.since_unix_ms) for b in denied.blockers] == [
        (1, "held", 321, c[1].stamp_ms), (3, "waiting", 55, 0)]
    c[2].core.time_of = lambda ms: f"<{ms}>"  # the daemon writes local time instead
    c[2].core.request(3, "vol-a", EX, c.now, timeout_ms=100)
    c.run(c.now + 200)
    [denied] = c[2].take(Denied)
    assert denied.reason.startswith(f"timeout after 0.1 s: held by pid 321 on web1 since <{c[1].stamp_ms}>")


def test_a_timeout_queued_behind_a_local_request_names_it():
    """A request that never reached the disk (queued behind its own node's
    holder of the same lock) names that local holder."""
    c = Cluster()
    c[1].core.request(1, "vol-a", EX, c.now, owner=4242)
    c.settle()
    c[1].core.request(2, "vol-a", EX, c.now, timeout_ms=50)
    c.run(c.now + 100)
    assert [d.reason for d in c[1].take(Denied)] == ["timeout after 0.05 s: n1 (this node: pid 4242 holds it)"]


def test_the_default_clock_text_is_utc_arithmetic():
    from clusterfw.core.dlm import utc_clock_text
    assert utc_clock_text(0) == "00:00:00 UTC"
    assert utc_clock_text(86_400_000 + (23 * 3600 + 59 * 60 + 58) * 1000 + 999) == "23:59:58 UTC"
