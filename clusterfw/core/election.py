"""Master election: Disk Paxos (Gafni & Lamport) on the lease part of each
node's slot, one consensus instance per *term*.

How this works
--------------
Every node owns one block (the ``Lease`` inside its slot) and only ever reads
the others'.  A heartbeat cycle is "write my slot, then read all slots", so one
Disk Paxos phase costs one cycle:

1. **Phase 1.**  Pick ballot ``b`` above every ballot seen for ``term``
   (``b = round * 256 + node_id``, unique per node), write ``mbal = b``, read
   all blocks.  Abort if any block has a higher ``mbal`` for ``term``, a later
   ``term``, or already knows ``term`` decided.  Otherwise adopt the value of
   the highest ``bal`` seen for ``term`` -- or propose ourselves if none.
2. **Phase 2.**  Write ``bal = b, inp = value``; read all blocks; abort on a
   higher ``mbal``/``term`` as before.  Otherwise the value is *decided*.
3. **Commit.**  Write the decision into the knowledge part
   (``committed_term``/``master``).  Every reader learns it, and copies the
   highest decision it has read into its own block, so it is never lost.

Safety (one master per term) is Disk Paxos' with a single disk: if ``v`` is
decided with ballot ``b`` by p, any proposer q with ballot ``b' > b`` either
read p's phase-2 block (and so adopted ``v``) or wrote ``mbal = b'`` before p's
phase-2 read, which then saw it and aborted -- contradiction.  A block that
cannot be decoded (other than never-written) makes a phase abort while its
owner is alive: we never guess what an unreadable block holds.  A dead
owner's unreadable block is passed over: its owner has fenced and will never
finish a phase, so it must not stop elections for good.  The term proposed
stays ``committed + 1``.  (Skipping a term per such block was tried: two
proposers that skipped differently proposed different terms, neither saw the
other as a conflict, and both decided -- the simulator found two masters.)
What the dead block may hide is a decision nobody learned; only its dead
owner could have acted on that, unless the value it decided learned it
first, and then that node's own block carries the decision.

A new term is started only when the master of the highest decided term is
judged dead on the proposer's clock, restarted (another incarnation), or
resigned.  "One master at a time" then follows from the timing rule in
``clusterfw.core.timing``: the old master stopped acting before anyone could
judge it dead.  To keep duels rare, a node waits in proportion to its rank
among live nodes before proposing, and stands back while a lower-numbered live
node is already proposing in the same term.

Pure: randomness comes in as an argument, time as milliseconds.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Callable, Mapping

from .model import Lease

BALLOT_STRIDE = 256  # > NODES_MAX, so ballots of different nodes never collide


class Phase(enum.Enum):
    IDLE = "idle"
    """Not proposing."""
    PHASE1 = "phase1"
    """Wrote mbal; the read that follows decides whether to continue."""
    PHASE2 = "phase2"
    """Wrote bal/inp; the read that follows decides the value."""


@dataclass(frozen=True)
class Decision:
    term: int
    master: int
    master_incarnation: int
    resigned: bool = False


def highest_decision(leases: Mapping[int, Lease]) -> Decision | None:
    """The highest decided term visible in ``leases`` (node id -> lease) and
    whether its master has resigned (only the master's own block says so)."""
    best: Lease | None = None
    for lease in leases.values():
        if lease.committed_term and (best is None or lease.committed_term > best.committed_term):
            best = lease
    if best is None:
        return None
    master_block = leases.get(best.master)
    resigned = bool(master_block is not None and master_block.resigned
                    and master_block.committed_term == best.committed_term
                    and master_block.master == best.master)
    return Decision(best.committed_term, best.master, best.master_incarnation, resigned)


class Election:
    """One node's proposer/acceptor state."""

    def __init__(self, node_id: int, incarnation: int, lease: Lease | None = None) -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        # A restarted node keeps its old block: lowering mbal for a term it
        # already voted in would break Disk Paxos.  It drops ``resigned`` and
        # never claims its previous incarnation's mastership.
        self.lease = replace(lease or Lease(), resigned=False)
        self.phase = Phase.IDLE
        self.not_before_ms = 0.0
        self.written_lease: Lease | None = None  # the lease in the write that completed this cycle
        self.aborts = 0
        self.decided: Decision | None = None

    # -- the cycle ---------------------------------------------------------
    def lease_to_write(self) -> Lease:
        return self.lease

    def on_cycle(self, *, now_ms: float, wrote: Lease | None, leases: Mapping[int, Lease],
                 unreadable: frozenset[int], want_master: bool, rank: int,
                 lower_proposing: bool, fast_poll_ms: int, rng: Callable[[], float]) -> None:
        """Advance after this cycle's write (``wrote``: the lease it carried,
        None if the write failed) and read (``leases``: every decodable block
        including ours, ``unreadable``: ids of *live* nodes whose block
        failed to decode -- these abort a phase; the caller leaves out dead
        nodes' unreadable blocks).
        """
        leases = dict(leases)
        leases[self.node_id] = self.lease
        known = highest_decision(leases)
        if known and known.term > self.lease.committed_term:
            # Learn, and carry the decision in our own block from now on.
            self.lease = replace(self.lease, committed_term=known.term, master=known.master,
                                 master_incarnation=known.master_incarnation)
        if self.phase is not Phase.IDLE:
            self._advance(wrote, leases, unreadable, now_ms, fast_poll_ms, rng)
            return
        if not want_master or now_ms < self.not_before_ms or lower_proposing:
            return
        self._start(leases, now_ms, rank, fast_poll_ms, rng)

    def _start(self, leases: Mapping[int, Lease], now_ms: float, rank: int, fast_poll_ms: int,
               rng: Callable[[], float]) -> None:
        term = self.lease.committed_term + 1
        top = max((l.mbal for l in leases.values() if l.term == term), default=0)
        ballot = (top // BALLOT_STRIDE + 1) * BALLOT_STRIDE + self.node_id
        if self.lease.term == term:
            self.lease = replace(self.lease, mbal=ballot)
        else:
            self.lease = replace(self.lease, term=term, mbal=ballot, bal=0, inp=0, inp_incarnation=0)
        self.phase = Phase.PHASE1
        del rank, rng, now_ms, fast_poll_ms

    def _conflict(self, leases: Mapping[int, Lease], unreadable: frozenset[int]) -> bool:
        if unreadable:
            return True
        me = self.lease
        for node_id, other in leases.items():
            if node_id == self.node_id:
                continue
            if other.term > me.term or other.committed_term >= me.term:
                return True
            if other.term == me.term and other.mbal > me.mbal:
                return True
        return False

    def _advance(self, wrote: Lease | None, leases: Mapping[int, Lease], unreadable: frozenset[int],
                 now_ms: float, fast_poll_ms: int, rng: Callable[[], float]) -> None:
        if self.lease.committed_term >= self.lease.term:
            self.phase = Phase.IDLE  # decided meanwhile (perhaps by us, perhaps not)
            return
        if wrote != self.lease:
            return  # this phase's write did not complete: write it again next cycle
        if self._conflict(leases, unreadable):
            self.phase = Phase.IDLE
            self.aborts += 1
            self.not_before_ms = now_ms + fast_poll_ms * (1 + 3 * rng())
            return
        if self.phase is Phase.PHASE1:
            best = max((l for l in leases.values() if l.term == self.lease.term and l.bal > 0),
                       key=lambda l: l.bal, default=None)
            if best is None:
                value = (self.node_id, self.incarnation)
            else:
                value = (best.inp, best.inp_incarnation)
            self.lease = replace(self.lease, bal=self.lease.mbal, inp=value[0], inp_incarnation=value[1])
            self.phase = Phase.PHASE2
            return
        # Phase 2 succeeded: the value is decided.
        # A node that resigned an earlier term (a halted takeover) does not
        # resign this one: only a win clears the flag, never a new proposal,
        # or the resigned term would read as ours again.
        self.lease = replace(self.lease, committed_term=self.lease.term, master=self.lease.inp,
                             master_incarnation=self.lease.inp_incarnation, resigned=False)
        self.decided = Decision(self.lease.term, self.lease.inp, self.lease.inp_incarnation)
        self.phase = Phase.IDLE

    def resign(self) -> None:
        """Hand the master role over (the caller is the master and has stopped
        acting).  Takes effect with the next slot write."""
        self.lease = replace(self.lease, resigned=True)

    @property
    def proposing(self) -> bool:
        return self.phase is not Phase.IDLE

    def schedule(self, now_ms: float, rank: int, fast_poll_ms: int, rng: Callable[[], float]) -> None:
        """Called when a node first finds the cluster without a live master:
        wait in proportion to rank so the lowest live node usually goes alone."""
        self.not_before_ms = max(self.not_before_ms,
                                 now_ms + rank * 2 * fast_poll_ms + rng() * fast_poll_ms)
