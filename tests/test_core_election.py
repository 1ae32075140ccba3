"""Master election: Disk Paxos on each node's lease block.

Table-driven phase tests walk one ``Election`` through phase 1, phase 2 and
the decision, and through every reason to abort or to repeat a phase.  Then
an interleaving test: N elections share a dict of blocks (the disk); a
schedule drawn by Hypothesis interleaves their write-then-read cycles block by
block, with failed writes (that may or may not have landed), unreadable
blocks, restarts (a new incarnation that keeps its block) and random wishes to
be master; every decision ever made or recorded anywhere must agree per term.
A deliberately broken election is run through the same harness to show it has
teeth.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterfw.core.election import BALLOT_STRIDE, Decision, Election, Phase, highest_decision
from clusterfw.core.model import Lease

FAST_POLL = 20
ME = 3
MY_INC = 0x33


def zero() -> float:
    return 0.0


def cycle(e: Election, others: Mapping[int, Lease] | None = None, *, write_ok: bool = True,
          unreadable: frozenset[int] = frozenset(), want: bool = True, now: float = 0.0,
          lower_proposing: bool = False, rng: Callable[[], float] = zero) -> Lease:
    """One heartbeat cycle: write ``lease_to_write()``, read ``others`` (plus
    our own block, which the election supplies itself), advance.  Returns the
    lease the next cycle will write."""
    written = e.lease_to_write()
    e.on_cycle(now_ms=now, wrote=written if write_ok else None, leases=dict(others or {}),
               unreadable=unreadable, want_master=want, rank=0, lower_proposing=lower_proposing,
               fast_poll_ms=FAST_POLL, rng=rng)
    return e.lease_to_write()


def in_phase(phase: Phase, others: Mapping[int, Lease] | None = None) -> Election:
    e = Election(ME, MY_INC)
    cycle(e, others)  # IDLE -> PHASE1 (mbal written next cycle)
    if phase is Phase.PHASE2:
        cycle(e, others)
    assert e.phase is phase
    return e


# ------------------------------------------------------------------ phases
def test_idle_node_that_does_not_want_master_stays_idle() -> None:
    e = Election(ME, MY_INC)
    cycle(e, want=False)
    assert e.phase is Phase.IDLE and e.lease == Lease() and not e.proposing


def test_phase1_then_phase2_then_decided() -> None:
    e = Election(ME, MY_INC)
    l1 = cycle(e)
    assert e.phase is Phase.PHASE1
    assert (l1.term, l1.mbal, l1.bal, l1.inp) == (1, BALLOT_STRIDE + ME, 0, 0)
    l2 = cycle(e)
    assert e.phase is Phase.PHASE2 and e.decided is None
    assert (l2.bal, l2.inp, l2.inp_incarnation) == (l1.mbal, ME, MY_INC)
    assert l2.committed_term == 0  # not decided before the phase-2 read
    l3 = cycle(e)
    assert e.phase is Phase.IDLE
    assert e.decided == Decision(1, ME, MY_INC)
    assert (l3.committed_term, l3.master, l3.master_incarnation) == (1, ME, MY_INC)
    assert highest_decision({ME: l3}) == Decision(1, ME, MY_INC)


def test_ballot_is_above_every_ballot_seen_for_the_term_and_unique_per_node() -> None:
    others = {5: Lease(term=1, mbal=4 * BALLOT_STRIDE + 5), 7: Lease(term=2, mbal=9 * BALLOT_STRIDE + 7)}
    e = Election(ME, MY_INC)
    lease = cycle(e, others)
    assert lease.term == 1
    assert lease.mbal == 5 * BALLOT_STRIDE + ME  # the other term's ballot does not count
    assert lease.mbal % BALLOT_STRIDE == ME


def test_next_term_follows_the_highest_known_decision() -> None:
    known = Lease(term=4, mbal=300, bal=300, inp=9, inp_incarnation=1, committed_term=4, master=9,
                  master_incarnation=1)
    e = Election(ME, MY_INC)
    lease = cycle(e, {9: known})
    assert lease.committed_term == 4 and lease.term == 5 and e.phase is Phase.PHASE1
    assert (lease.bal, lease.inp) == (0, 0)  # a new instance starts empty


ABORTS = {
    "higher mbal in the same term": ({9: Lease(term=1, mbal=50 * BALLOT_STRIDE + 9)}, frozenset()),
    "a later term": ({9: Lease(term=2, mbal=1)}, frozenset()),
    "an unreadable block": ({}, frozenset({9})),
}


@pytest.mark.parametrize("phase", [Phase.PHASE1, Phase.PHASE2])
@pytest.mark.parametrize("why", list(ABORTS))
def test_conflict_aborts_the_phase(phase: Phase, why: str) -> None:
    e = in_phase(phase)
    before = e.lease
    others, unreadable = ABORTS[why]
    after = cycle(e, others, unreadable=unreadable, now=1000.0, rng=lambda: 0.5)
    assert e.phase is Phase.IDLE and e.aborts == 1 and e.decided is None
    assert after == before  # neither phase 2's value nor a decision was written
    assert e.not_before_ms == 1000.0 + FAST_POLL * (1 + 3 * 0.5)
    cycle(e, now=e.not_before_ms - 1)
    assert e.phase is Phase.IDLE  # backs off
    cycle(e, now=e.not_before_ms)
    assert e.phase is Phase.PHASE1


@pytest.mark.parametrize("phase", [Phase.PHASE1, Phase.PHASE2])
def test_already_decided_term_stops_the_phase_and_is_learned(phase: Phase) -> None:
    e = in_phase(phase)
    decider = Lease(term=1, mbal=9, bal=9, inp=9, inp_incarnation=99, committed_term=1, master=9,
                    master_incarnation=99)
    lease = cycle(e, {9: decider})
    assert e.phase is Phase.IDLE and e.decided is None
    assert (lease.committed_term, lease.master, lease.master_incarnation) == (1, 9, 99)


@pytest.mark.parametrize("phase", [Phase.PHASE1, Phase.PHASE2])
@pytest.mark.parametrize("other", [
    Lease(term=1, mbal=1),  # lower ballot, same term
    Lease(term=0, mbal=90 * BALLOT_STRIDE),  # an older term's ballots do not compete
], ids=["lower-mbal", "older-term"])
def test_no_conflict_proceeds(phase: Phase, other: Lease) -> None:
    e = in_phase(phase)
    cycle(e, {9: other})
    assert e.phase is (Phase.PHASE2 if phase is Phase.PHASE1 else Phase.IDLE)
    assert e.aborts == 0
    if phase is Phase.PHASE2:
        assert e.decided == Decision(1, ME, MY_INC)


def test_phase1_adopts_the_value_of_the_highest_accepted_ballot() -> None:
    others = {
        5: Lease(term=1, mbal=2 * BALLOT_STRIDE + 5, bal=2 * BALLOT_STRIDE + 5, inp=5, inp_incarnation=55),
        7: Lease(term=1, mbal=3 * BALLOT_STRIDE + 7, bal=3 * BALLOT_STRIDE + 7, inp=7, inp_incarnation=77),
        8: Lease(term=1, mbal=1 * BALLOT_STRIDE + 8, bal=1 * BALLOT_STRIDE + 8, inp=8, inp_incarnation=88),
        # a higher bal in another term is irrelevant
        9: Lease(term=0, mbal=9 * BALLOT_STRIDE + 9, bal=9 * BALLOT_STRIDE + 9, inp=9, inp_incarnation=99),
    }
    e = Election(ME, MY_INC)
    l1 = cycle(e, others)
    assert l1.mbal > 3 * BALLOT_STRIDE + 7
    l2 = cycle(e, others)
    assert (l2.inp, l2.inp_incarnation, l2.bal) == (7, 77, l1.mbal)
    cycle(e, others)
    assert e.decided == Decision(1, 7, 77)


def test_phase1_adopts_its_own_earlier_accepted_value() -> None:
    """A node that accepted (bal, inp) in a term keeps proposing that value
    when it starts a higher ballot in the same term."""
    mine = Lease(term=1, mbal=BALLOT_STRIDE + ME, bal=BALLOT_STRIDE + ME, inp=5, inp_incarnation=55)
    e = Election(ME, MY_INC, mine)
    l1 = cycle(e)
    assert (l1.bal, l1.inp, l1.inp_incarnation) == (mine.bal, 5, 55)
    assert l1.mbal == 2 * BALLOT_STRIDE + ME
    cycle(e)
    cycle(e)
    assert e.decided == Decision(1, 5, 55)


@pytest.mark.parametrize("phase", [Phase.PHASE1, Phase.PHASE2])
def test_failed_write_repeats_the_phase(phase: Phase) -> None:
    e = in_phase(phase)
    before = e.lease
    # Even a conflicting read is no reason to act: the phase's write did not land.
    after = cycle(e, {9: Lease(term=1, mbal=99 * BALLOT_STRIDE + 9)}, write_ok=False)
    assert e.phase is phase and after == before and e.aborts == 0
    after = cycle(e, write_ok=False)
    assert e.phase is phase and after == before
    cycle(e)  # the repeated write lands: the phase goes on
    assert e.phase is (Phase.PHASE2 if phase is Phase.PHASE1 else Phase.IDLE)


def test_a_write_of_an_older_lease_does_not_count() -> None:
    """``wrote`` must be this phase's lease: a write that carried the lease
    of the phase before does not complete this one."""
    e = in_phase(Phase.PHASE1)
    phase1_lease = e.lease
    cycle(e)
    assert e.phase is Phase.PHASE2
    e.on_cycle(now_ms=0, wrote=phase1_lease, leases={}, unreadable=frozenset(), want_master=True,
               rank=0, lower_proposing=False, fast_poll_ms=FAST_POLL, rng=zero)
    assert e.phase is Phase.PHASE2 and e.decided is None


def test_learning_copies_the_highest_committed_decision() -> None:
    others = {
        5: Lease(committed_term=3, master=5, master_incarnation=55),
        7: Lease(committed_term=6, master=7, master_incarnation=77),
        8: Lease(committed_term=4, master=8, master_incarnation=88),
    }
    e = Election(ME, MY_INC, Lease(term=2, mbal=700, committed_term=2, master=1, master_incarnation=1))
    lease = cycle(e, others, want=False)
    assert (lease.committed_term, lease.master, lease.master_incarnation) == (6, 7, 77)
    assert (lease.term, lease.mbal) == (2, 700)  # the instance part is untouched
    # A lower decision never overwrites a higher one.
    lease = cycle(e, {5: Lease(committed_term=5, master=5, master_incarnation=55)}, want=False)
    assert (lease.committed_term, lease.master) == (6, 7)


def test_resign_and_who_may_say_so() -> None:
    e = Election(ME, MY_INC)
    for _ in range(3):
        cycle(e)
    assert e.decided == Decision(1, ME, MY_INC)
    e.resign()
    mine = e.lease_to_write()
    assert mine.resigned and mine.committed_term == 1 and mine.master == ME
    follower = Lease(committed_term=1, master=ME, master_incarnation=MY_INC)
    assert highest_decision({ME: mine, 9: follower}) == Decision(1, ME, MY_INC, resigned=True)
    # Only the master's own block can resign it ...
    decision = highest_decision({ME: replace(mine, resigned=False), 9: replace(follower, resigned=True)})
    assert decision is not None and not decision.resigned
    # ... and only for the term it is master of.
    newer = Lease(committed_term=2, master=ME, master_incarnation=MY_INC)
    decision = highest_decision({ME: replace(mine, committed_term=1), 9: newer})
    assert decision == Decision(2, ME, MY_INC, resigned=False)


def test_restarted_node_keeps_its_ballots_but_not_its_resignation() -> None:
    old = Lease(term=3, mbal=7 * BALLOT_STRIDE + ME, bal=6 * BALLOT_STRIDE + ME, inp=ME,
                inp_incarnation=MY_INC, committed_term=2, master=ME, master_incarnation=MY_INC,
                resigned=True)
    e = Election(ME, MY_INC + 1, old)
    assert e.lease == replace(old, resigned=False) and e.phase is Phase.IDLE
    lease = cycle(e)  # wants term 3 again: its new ballot must exceed the one it already started
    assert lease.term == 3 and lease.mbal == 8 * BALLOT_STRIDE + ME
    assert (lease.bal, lease.inp, lease.inp_incarnation) == (old.bal, ME, MY_INC)


def test_waiting_rules() -> None:
    e = Election(ME, MY_INC)
    e.schedule(now_ms=100, rank=2, fast_poll_ms=FAST_POLL, rng=lambda: 0.5)
    assert e.not_before_ms == 100 + 2 * 2 * FAST_POLL + 0.5 * FAST_POLL
    cycle(e, now=e.not_before_ms - 0.1)
    assert e.phase is Phase.IDLE
    cycle(e, now=e.not_before_ms, lower_proposing=True)
    assert e.phase is Phase.IDLE  # stands back for a lower-numbered live proposer
    cycle(e, now=e.not_before_ms)
    assert e.phase is Phase.PHASE1


def test_highest_decision_of_nothing() -> None:
    assert highest_decision({}) is None
    assert highest_decision({1: Lease(term=4, mbal=9)}) is None


# ------------------------------------------------------- interleavings
@dataclass
class Proc:
    """One node of the interleaving harness: a cycle is write, then read the
    blocks one at a time (others may write in between), then on_cycle."""

    node_id: int
    incarnation: int
    election: Election
    reading: bool = False
    wrote: Lease | None = None
    to_read: list[int] = field(default_factory=list)
    seen: dict[int, Lease] = field(default_factory=dict)
    unreadable: set[int] = field(default_factory=set)


class Violation(AssertionError):
    pass


class Harness:
    def __init__(self, node_ids: list[int], election_cls: type[Election] = Election) -> None:
        self.cls = election_cls
        self.disk: dict[int, Lease] = {}  # absent: never written
        self.procs = [Proc(n, 1, election_cls(n, 1)) for n in node_ids]
        self.now = 0.0
        self.chosen: dict[int, tuple[int, int]] = {}  # term -> (master, incarnation)
        self.decisions = 0

    def record(self, term: int, value: tuple[int, int], where: str) -> None:
        if term == 0:
            return
        if self.chosen.setdefault(term, value) != value:
            raise Violation(f"term {term}: {self.chosen[term]} and {value} ({where})")

    def check(self) -> None:
        for p in self.procs:
            lease = p.election.lease
            self.record(lease.committed_term, (lease.master, lease.master_incarnation), f"n{p.node_id} memory")
            d = p.election.decided
            if d is not None:
                self.record(d.term, (d.master, d.master_incarnation), f"n{p.node_id} decided")
        for n, block in self.disk.items():
            self.record(block.committed_term, (block.master, block.master_incarnation), f"n{n} block")

    def step(self, who: int, a: int, b: int, c: int) -> None:
        """Advance process ``who``; a, b, c are schedule bytes (0..255)."""
        self.now += 1 + (a & 3)
        p = self.procs[who % len(self.procs)]
        if a >= 250:  # restart: a new incarnation resumes from its block on disk
            p.incarnation += 1
            fresh = self.cls(p.node_id, p.incarnation, self.disk.get(p.node_id))
            self.procs[self.procs.index(p)] = Proc(p.node_id, p.incarnation, fresh)
            return
        e = p.election
        if not p.reading:
            lease = e.lease_to_write()
            # Zero bytes (what shrinking tends to) mean the ordinary path.
            outcome = b % 8  # 7: fails, not landed; 6: fails but landed; else: ok
            if outcome != 7:
                self.disk[p.node_id] = lease
            p.wrote = lease if outcome < 6 else None
            p.reading = True
            order = [q.node_id for q in self.procs]
            random.Random(c).shuffle(order)
            p.to_read, p.seen, p.unreadable = order, {}, set()
            return
        for _ in range(1 + b % len(self.procs)):  # read one or more blocks
            if not p.to_read:
                break
            n = p.to_read.pop()
            if n in self.disk:
                if c >= 252:
                    p.unreadable.add(n)
                else:
                    p.seen[n] = self.disk[n]
        if p.to_read:
            return
        p.reading = False
        ids = sorted(q.node_id for q in self.procs)
        rng_values = iter([((a * 7 + b * 13 + c) % 256) / 256.0] * 2)
        e.on_cycle(now_ms=self.now, wrote=p.wrote, leases=p.seen, unreadable=frozenset(p.unreadable),
                   want_master=(c % 4 != 3), rank=ids.index(p.node_id), lower_proposing=(c % 16 == 14),
                   fast_poll_ms=FAST_POLL, rng=lambda: next(rng_values, 0.5))
        if e.decided is not None:
            self.decisions += 1
        self.check()

    def run(self, schedule: bytes) -> None:
        for i in range(0, len(schedule) - 3, 4):
            self.step(schedule[i], schedule[i + 1], schedule[i + 2], schedule[i + 3])


node_sets = st.integers(2, 5).flatmap(
    lambda n: st.lists(st.integers(1, 255), min_size=n, max_size=n, unique=True))


@settings(max_examples=2500, deadline=None, derandomize=True)
@given(node_sets, st.binary(min_size=800, max_size=2400))
def test_no_two_decisions_for_a_term_name_different_masters(node_ids: list[int], schedule: bytes) -> None:
    Harness(node_ids).run(schedule)


def _random_schedules(count: int, length: int, seed: int) -> list[tuple[list[int], bytes]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        ids = rng.sample(range(1, 256), rng.randint(2, 5))
        out.append((ids, bytes(rng.randrange(256) for _ in range(length))))
    return out


def test_harness_reaches_decisions_and_contention() -> None:
    """The interleavings must actually decide terms, several of them, under
    contention -- or the safety test above checks nothing."""
    terms, aborts = 0, 0
    for ids, schedule in _random_schedules(60, 2000, seed=7):
        h = Harness(ids)
        h.run(schedule)
        terms += len(h.chosen)
        aborts += sum(p.election.aborts for p in h.procs)
    assert terms >= 120 and aborts >= 60, (terms, aborts)


class NoAdoptElection(Election):
    """Broken on purpose: phase 1 ignores accepted values and proposes itself."""

    def _advance(self, wrote, leases, unreadable, now_ms, fast_poll_ms, rng):  # type: ignore[override]
        if self.phase is Phase.PHASE1 and self.lease.committed_term < self.lease.term \
                and wrote == self.lease and not self._conflict(leases, unreadable):
            leases = {n: replace(lease, bal=0) for n, lease in leases.items()}
        return super()._advance(wrote, leases, unreadable, now_ms, fast_poll_ms, rng)


class NoPhase2CheckElection(Election):
    """Broken on purpose: phase 2 decides without looking for higher ballots."""

    def _conflict(self, leases, unreadable):  # type: ignore[override]
        if self.phase is Phase.PHASE2:
            return False
        return super()._conflict(leases, unreadable)


class AmnesiacElection(Election):
    """Broken on purpose: a restarted node forgets its block (mbal, bal, inp)."""

    def __init__(self, node_id: int, incarnation: int, lease: Lease | None = None) -> None:
        super().__init__(node_id, incarnation, None)


@pytest.mark.parametrize("broken", [NoAdoptElection, NoPhase2CheckElection, AmnesiacElection])
def test_harness_catches_a_broken_election(broken: type[Election]) -> None:
    for ids, schedule in _random_schedules(400, 1200, seed=11):
        try:
            Harness(ids, broken).run(schedule)
        except Violation:
            return
    pytest.fail(f"{broken.__name__} survived the harness")
