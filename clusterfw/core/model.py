"""The protocol's data model: what lives in the sectors of the shared disk.

How this works
--------------
Three kinds of record carry the whole protocol, and each is written by exactly
one node (single writer per block, docs/protocol.md §1):

* ``SlotRecord`` -- one per node, written only by that node every heartbeat
  cycle.  It carries the heartbeat (``incarnation``, ``seq``), the node's own
  timing, what the node asks for (join / leave), its Disk Paxos block for the
  master election (``lease``), the subsystems it registered (level + barrier
  counts) and its acknowledgements of notification batches.  It is small
  enough to fit one 512-byte sector, so a write of it is atomic.
* ``ViewRecord`` -- one area per node, written by that node only while it is
  the master.  It is the agreed, epoch-numbered membership view plus the
  transition table: per node its state and transition cursor, per level the
  outstanding notification batch.  A new master resumes from the newest valid
  view on disk.
* ``SuperBlock`` / ``NodeConfig`` -- written by the administrator's tools
  (``disk init``, ``node add``), never by a running daemon.

Everything here is a frozen dataclass of plain values; ``clusterfw.ondisk``
turns them into bytes and back.  No I/O, no clocks.
"""
from __future__ import annotations

import re

import enum
from dataclasses import dataclass, field


class NodeState(enum.Enum):
    """A node's cluster state (patent: active membership state 42)."""

    INACTIVE = "inactive"
    """Not configured, or not an active member of the cluster."""
    JOINING = "joining"
    """Asked to join; not every level on every member has processed the join yet."""
    JOINED = "joined"
    """Every registered level on every member accepted the node."""
    LEAVING = "leaving"
    """Asked to leave gracefully; the levels are processing it top-down."""
    FORCED_LEAVING = "forced-leaving"
    """Being forced out; recovery runs bottom-up after the dead timeout."""


STATE_CODES: dict[NodeState, int] = {
    NodeState.INACTIVE: 0,
    NodeState.JOINING: 1,
    NodeState.JOINED: 2,
    NodeState.LEAVING: 3,
    NodeState.FORCED_LEAVING: 4,
}
STATE_BY_CODE: dict[int, NodeState] = {v: k for k, v in STATE_CODES.items()}


class Kind(enum.IntEnum):
    """The kind of a node's transition, as a notification names it (Table 1)."""

    JOIN = 1
    LEAVE = 2
    FORCED = 3

    @property
    def notification(self) -> str:
        return {Kind.JOIN: "joining", Kind.LEAVE: "leaving", Kind.FORCED: "forced-leaving"}[self]


class Request(enum.IntEnum):
    """What a node asks of the cluster in its slot.  Level-triggered: the node
    keeps asking until the view shows it done."""

    NONE = 0
    JOIN = 1
    LEAVE = 2


# Limits (bound everything).  Changing one changes the on-disk format.
NODES_MAX = 255
REGISTRATIONS_MAX = 8
ACKS_MAX = 8
LEVELS_MAX = 16
LEVEL_MAX = 0x7FFF  # a level is u16 on disk but must fit the i16 cursor/top_level
SUBSYSTEM_NAME_MAX = 11  # bytes, UTF-8
BARRIERS_MAX = 8
CLUSTER_NAME_MAX = 32
NODE_NAME_MAX = 32
NODE_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]*", re.ASCII)
"""A node name: lowercase letters, digits and '-', starting with a letter or digit."""
REASON_MAX = 48
U64_MAX = (1 << 64) - 1  # every counter, id and time stamp in a record is a u64


@dataclass(frozen=True)
class Timing:
    """The timing a node runs with; written into its slot so that every other
    node computes *its* deadlines (see ``clusterfw.core.timing``)."""

    heartbeat_interval_ms: int
    io_timeout_ms: int
    fence_after_ms: int
    dead_after_ms: int
    transition_timeout_ms: int
    fast_poll_ms: int


@dataclass(frozen=True)
class Registration:
    """A subsystem registered at a level, with its barrier counts per
    transition kind: (join, leave, forced)."""

    level: int
    name: str
    barriers: tuple[int, int, int] = (1, 1, 1)

    def barriers_for(self, kind: Kind) -> int:
        return self.barriers[int(kind) - 1]


@dataclass(frozen=True)
class Lease:
    """This node's Disk Paxos block for the master election.

    Two parts.  The *instance* part is this node's ballot state for the
    election of ``term``: ``mbal`` the highest ballot it started, ``bal`` and
    (``inp``, ``inp_incarnation``) the ballot and value it last accepted.  A
    value is a node id together with that node's incarnation, so a restarted
    node is never mistaken for the master its previous incarnation was.

    The *knowledge* part is the highest term this node knows to be decided and
    its master (``committed_term``, ``master``, ``master_incarnation``).  It only
    ever grows, and every node copies the highest one it reads, so a decision
    is never forgotten when nodes move on to the next term.  ``resigned`` is
    set by the master of ``committed_term`` when it hands over gracefully.
    See docs/protocol.md.
    """

    term: int = 0
    mbal: int = 0
    bal: int = 0
    inp: int = 0
    inp_incarnation: int = 0
    committed_term: int = 0
    master: int = 0
    master_incarnation: int = 0
    resigned: bool = False


@dataclass(frozen=True)
class SlotRecord:
    """A node's slot: heartbeat, request, lease, registrations, acks."""

    node_id: int
    incarnation: int
    seq: int
    timing: Timing
    request: Request = Request.NONE
    lease: Lease = field(default_factory=Lease)
    registrations: tuple[Registration, ...] = ()
    acks: tuple[tuple[int, int], ...] = ()  # (level, batch_id), sorted by level
    seen_epoch: int = 0  # newest view epoch this node has read (diagnostics)

    def ack_for(self, level: int) -> int:
        for lv, batch_id in self.acks:
            if lv == level:
                return batch_id
        return 0


@dataclass(frozen=True)
class MemberEntry:
    """One node's row in the view's transition table.

    ``cursor`` is the level the node's transition is at (-1: none), ``barrier``
    the barrier index at that level; ``top_level`` the highest level that has
    been notified of this incarnation's transitions (-1: none) -- a forced
    leave runs only up to it.  ``forced`` on an inactive row says the node was
    forced out rather than having left.  ``ready`` on a forced-leaving row says
    the dead timeout has passed and recovery notifications may start.
    """

    node_id: int
    incarnation: int
    state: NodeState
    kind: Kind | None = None
    cursor: int = -1
    barrier: int = 0
    top_level: int = -1
    forced: bool = False
    ready: bool = False
    leave_requested: bool = False


@dataclass(frozen=True)
class BatchEntry:
    node_id: int
    kind: Kind
    barrier: int


@dataclass(frozen=True)
class Batch:
    """The one outstanding notification at a level: several nodes'
    transitions, to be acked by every participant before any of them moves
    on."""

    level: int
    batch_id: int
    entries: tuple[BatchEntry, ...]
    participants: tuple[int, ...]


@dataclass(frozen=True)
class LevelSpec:
    """The cluster-wide agreed barrier counts of a level."""

    level: int
    barriers: tuple[int, int, int]


@dataclass(frozen=True)
class Rejection:
    node_id: int
    incarnation: int
    level: int
    reason: str


@dataclass(frozen=True)
class ViewRecord:
    """The master's agreed view: membership and the transition table."""

    node_id: int  # the writer, i.e. the master of ``term``
    incarnation: int
    seq: int
    term: int
    epoch: int
    next_batch_id: int = 1
    levels: tuple[LevelSpec, ...] = ()
    members: tuple[MemberEntry, ...] = ()
    batches: tuple[Batch, ...] = ()
    rejections: tuple[Rejection, ...] = ()

    def member(self, node_id: int) -> MemberEntry | None:
        for m in self.members:
            if m.node_id == node_id:
                return m
        return None

    def batch(self, level: int) -> Batch | None:
        for b in self.batches:
            if b.level == level:
                return b
        return None


@dataclass(frozen=True)
class SuperBlock:
    """Block 0 of the shared disk (written by ``clusterfw disk init``)."""

    cluster_name: str
    cluster_uuid: bytes  # 16 bytes
    block_size: int  # the device's logical block size at init
    nodes_max: int
    heartbeat_interval_ms: int
    io_timeout_ms: int
    created_at_s: int = 0  # wall clock, informational only


@dataclass(frozen=True)
class NodeConfig:
    """The persistent node table entry (patent: node configuration 40)."""

    node_id: int
    name: str
    incarnation: int = 0  # unused: the table is written by admin tools
