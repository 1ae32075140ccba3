"""The distributed lock manager (DLM) as a pure state machine: Lamport's
bakery on single-writer lock sectors of the shared disk.

How this works
--------------
The DLM area of the disk is an array of *stripes*; stripe ``s`` has one
sector per node id, and sector ``(s, n)`` is written only by node ``n``
(single writer per block, docs/protocol.md §1).  A lock name lives on stripe
``crc32c(name) % stripes_max``.  A node's sector on a stripe holds a
``LockEntry``: the name it asks for or holds, its state (FREE, CHOOSING,
WAITING, HELD), its mode (SHARED, EXCLUSIVE), its bakery ``ticket`` and the
lock's fencing ``token``.  Sectors are never cleared: a FREE entry keeps its
last ticket and token, so the maxima over a stripe only grow.

Acquiring a lock (``request``) is the bakery algorithm (the patent names
Dekker's algorithm for mutual exclusion on shared storage; the bakery is its
N-process generalisation, and needs nothing but single-writer registers)::

    1. write CHOOSING(name, mode)                 } one batch: write, then read
    2. read the stripe: ticket = 1 + max ticket   }
    3. write WAITING(ticket)                      } one batch
    4. read the stripe; blocked while a counted   }
       conflicting entry is CHOOSING, or WAITING or HELD with a smaller
       (ticket, node id); re-read (backing off) until not blocked
    5. token = 1 + max token of the stripe (EXCLUSIVE) or the max (SHARED);
       write HELD(token); report the grant only once that write completed

Release writes FREE.  An uncontended acquire + release is 4 writes and 2
reads in 4 round trips.  Two entries *conflict* when they name the same lock
and are not both SHARED.  Entries for different names on one stripe never
conflict across nodes (docs/dlm.md: the bakery's safety argument is
pairwise, so each pair of requests may use its own conflict relation); on
one node, one request per stripe is active at a time (the node has one
sector there) and further local requests on that stripe wait FIFO in memory;
a try-lock that would have to wait there is denied at once instead.

Which entries count comes from the agreed membership view, never from local
memory: an entry counts iff its writer (node id, incarnation) is in the view
with that incarnation and ``level_state(member, DLM_LEVEL)`` is not
"inactive".  A dead node's locks therefore stay held until its forced leave
has passed the DLM level on every node (after the dead timeout, so it has
fenced); then every node ignores them ("recovered").  A node may request
locks only while the view shows *itself* "joined" at the DLM level -- i.e.
every DLM already acked its join, so every node that could conflict counts
its entries.

Races, as two-column timelines (node i < node j, same name, EXCLUSIVE)::

    i                                   j
    write CHOOSING                      write CHOOSING
    read: max ticket 4                  read: max ticket 4
    write WAITING(5)                    write WAITING(5)
    read: j WAITING(5), (5,j) > (5,i)   read: i WAITING(5), (5,i) < (5,j)
      -> not blocked: write HELD          -> blocked by i, re-read later

    i                                   j
    write WAITING(5) lands              write CHOOSING lands
    read: j CHOOSING -> blocked         read: i WAITING(5) -> ticket 6
    re-read: j WAITING(6) -> clear      write WAITING(6); read: blocked by i

Why i must wait for j's CHOOSING: j may have read the stripe before i's
WAITING landed and so drawn ticket 5 as well; had j checked while i was
still CHOOSING, and had neither waited for the other's CHOOSING, both would
pass (the simulator's ``dlm-ignore-choosing`` mutation; docs/dlm.md §2).

The core never does I/O: ``poll(now)`` returns the ops due (``WriteEntry``,
``ReadStripe``, ``ReadArea``), the driver performs them *in order* and hands
the results to ``complete(now, results)``; ``take_events()`` returns what
happened (``Granted``, ``Denied``, ``Released``, ``Revoked``, ``Recovered``,
``Ack``).  At most one batch of ops is in flight.

Invariants: a write is produced only while ``can_write(now)`` holds and never
after ``stop``; the own sector's ticket and token never decrease (every write
carries at least the largest values this node ever wrote or read there); a
grant is reported only after its HELD write completed and only while the
node is joined at the DLM level; requests, names and batches are bounded.
"""
from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from . import levels
from .coordinator import level_state
from .model import U64_MAX, BatchEntry, Kind, MemberEntry, NodeState, ViewRecord
from .node import OpResult, Unreadable
from .text import NameOf, node_id_name, printable

DLM_LEVEL = levels.DLM
"""The DLM registers at level 10 (docs/protocol.md §9)."""
NAME_MAX_BYTES = 48
"""A lock name is 1..48 bytes of UTF-8 (on-disk format)."""
REQUESTS_MAX = 1024
"""Outstanding local requests per node (queued, waiting or held)."""
TRY_CHOOSING_REREADS = 3
"""A try-lock blocked only by other nodes' CHOOSING entries re-reads this many
times before it gives up (choosing is one write and one read long)."""
LEAVE_RELEASE_ATTEMPTS = 3
"""On the node's own graceful leave each FREE write is tried this often; the
view makes a leftover entry irrelevant anyway once the leave passed the DLM."""
SCRUB_MS = 5000.0
"""While joined, the DLM re-reads the whole lock area this often: a damaged
own sector (or a leftover of a previous incarnation) is rewritten FREE, so a
damaged sector never blocks a stripe for longer than about this."""
DEPARTED_PER_NODE = 16
"""Departed incarnations remembered per node id (bounded memory)."""


class EntryState(enum.IntEnum):
    """The state of a lock sector (on-disk format: the value is stored)."""

    FREE = 0
    """Not asking for anything; ticket and token of the last use are kept."""
    CHOOSING = 1
    """Drawing a ticket: others that conflict wait until it is WAITING."""
    WAITING = 2
    """Has a ticket; waits for every conflicting smaller (ticket, node id)."""
    HELD = 3
    """Granted, with the token written here."""


class LockMode(enum.IntEnum):
    """How a lock is held (on-disk format: the value is stored)."""

    SHARED = 1
    """Compatible with other SHARED holders of the same name."""
    EXCLUSIVE = 2
    """Compatible with nobody."""


@dataclass(frozen=True)
class LockEntry:
    """One lock sector (stripe, node_id), written only by ``node_id``."""

    node_id: int
    incarnation: int
    seq: int
    stripe: int
    name: str = ""
    state: EntryState = EntryState.FREE
    mode: LockMode = LockMode.EXCLUSIVE
    ticket: int = 0
    token: int = 0
    owner: int = 0
    """Informational: the process id of the local client that asked (0:
    none).  Shown by ``clusterfw locks``; the protocol never reads it."""
    stamp_ms: int = 0
    """Informational: the writer's wall clock (Unix ms) when it wrote the
    sector, set by the driver, not the core.  ``clusterfw locks`` shows it as
    "since"; the protocol never reads it (clocks are not synchronised)."""


# ------------------------------------------------------------ name -> stripe
def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the same function the on-disk checksums use;
    written out here so that the core imports no extension module."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class DlmMisuse(ValueError):
    """The caller broke the DLM's rules (bad name, unknown or duplicate
    request id): a local error, not a cluster condition."""


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise DlmMisuse(f"lock name {name!r}: must be a str")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise DlmMisuse(f"lock name {name!r}: not encodable as UTF-8") from None
    if not 1 <= len(raw) <= NAME_MAX_BYTES:
        raise DlmMisuse(f"lock name {name!r}: {len(raw)} UTF-8 bytes, must be 1..{NAME_MAX_BYTES}")
    return name


def stripe_of(name: str, stripes_max: int) -> int:
    """The stripe a lock name lives on."""
    return crc32c(check_name(name).encode("utf-8")) % stripes_max


def conflicts(name_a: str, mode_a: LockMode, name_b: str, mode_b: LockMode) -> bool:
    """Two requests conflict when they name the same lock and are not both
    SHARED."""
    return name_a == name_b and not (mode_a is LockMode.SHARED and mode_b is LockMode.SHARED)


def busy_reason(blockers: Sequence["Blocker"], name_of: NameOf = node_id_name) -> str:
    """A try-lock's denial: who holds or asks for the lock (nodes named by
    ``name_of``), and which lock sectors are damaged (a damaged sector of a
    counted node blocks its stripe until its node rewrites it)."""
    held = [name_of(n) for n in sorted({b.node_id for b in blockers if b.why != "damaged"})]
    damaged = sorted({(b.node_id, b.stripe, b.detail) for b in blockers if b.why == "damaged"})
    parts = held + [f"{name_of(n)}'s lock sector on stripe {s} is damaged ({printable(d) if d else 'does not decode'}): "
                    f"{name_of(n)} rewrites it" for n, s, d in damaged]
    return "busy: " + ", ".join(parts)


TimeOf = Callable[[int], str]
"""How a denial writes a wall-clock stamp (Unix ms) for people."""


def utc_clock_text(unix_ms: int) -> str:
    """``12:00:01 UTC``: the default ``TimeOf`` (pure arithmetic, no clock:
    the daemon passes one that writes the host's local time)."""
    seconds = (unix_ms // 1000) % 86400
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d} UTC"


_BLOCKER_VERBS = {"held": "held by", "waiting": "asked for earlier by", "choosing": "being asked for by"}


def blocker_text(b: "Blocker", name_of: NameOf = node_id_name, time_of: TimeOf = utc_clock_text) -> str:
    """``held by pid 321 on n1 since 12:00:01``: one blocker for people (the
    pid and the stamp are what its node wrote: informational)."""
    node = name_of(b.node_id)
    if b.why == "damaged":
        return (f"{node}'s lock sector on stripe {b.stripe} is damaged "
                f"({printable(b.detail) if b.detail else 'does not decode'}): {node} rewrites it")
    who = f"pid {b.owner} on {node}" if b.owner else node
    since = f" since {time_of(b.since_unix_ms)}" if b.since_unix_ms else ""
    return f"{_BLOCKER_VERBS.get(b.why, b.why + ' by')} {who}{since}"


def timeout_reason(timeout_ms: float, blockers: Sequence["Blocker"], name_of: NameOf = node_id_name,
                   time_of: TimeOf = utc_clock_text, local: str = "") -> str:
    """A timeout's denial: how long it waited and whom it waited for as of
    the last read of the lock's stripe (``local``: the local requests it
    queued behind, when it never reached the disk)."""
    head = f"timeout after {timeout_ms / 1000:g} s"
    if blockers:
        return f"{head}: " + "; ".join(blocker_text(b, name_of, time_of) for b in blockers)
    if local:
        return f"{head}: {local}"
    return f"{head} (no other node was seen holding or asking for it: the lock area's reads did not complete in time)"


# --------------------------------------------------------------------- ops
@dataclass(frozen=True)
class WriteEntry:
    """Write ``entry`` to sector (stripe, own node).  The driver must check
    ``can_write`` again when it issues the write (ops of one batch are issued
    one after another) and fail the op instead if it no longer holds."""

    stripe: int
    entry: LockEntry


@dataclass(frozen=True)
class ReadStripe:
    """Read every sector of ``stripe`` (one I/O).  Value: a mapping node id ->
    ``LockEntry`` | ``Unreadable``."""

    stripe: int


@dataclass(frozen=True)
class ReadArea:
    """Read every stripe (on the node's own join).  Value: a mapping stripe ->
    (node id -> ``LockEntry`` | ``Unreadable``).  The driver may split it into
    several reads of whole stripes."""


DlmOp = WriteEntry | ReadStripe | ReadArea


DlmResult = OpResult[DlmOp]
"""The result of a DLM op: the core's one result type (core/node.py)."""


# ------------------------------------------------------------------ events
@dataclass(frozen=True)
class Granted:
    req_id: int
    name: str
    mode: LockMode
    token: int


class DenyKind(enum.Enum):
    """Why a request ended without a grant, for callers that act on it
    (``reason`` is the sentence for people)."""

    BUSY = "busy"  # a try-lock found a holder, a waiter or a damaged sector in its way
    TIMEOUT = "timeout"  # its timeout passed before the grant
    CANCELLED = "cancelled"  # released before it was granted
    UNAVAILABLE = "unavailable"  # this node cannot grant now: not a member, leaving, fencing, stopped, too many requests


@dataclass(frozen=True)
class Denied:
    """The request ended without a grant: try-lock busy, timeout, cancelled,
    not a member at the DLM level, node leaving, fenced."""

    req_id: int
    reason: str
    kind: DenyKind = field(default=DenyKind.UNAVAILABLE, compare=False)
    # BUSY and TIMEOUT: whom the request found in its way (TIMEOUT: as of the
    # last read of its stripe); ``reason`` names them for people.
    blockers: tuple["Blocker", ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Released:
    """A ``release`` completed: the FREE write landed."""

    req_id: int


@dataclass(frozen=True)
class Revoked:
    """A held lock was taken away without ``release``: the node is leaving or
    stopped.  Whoever holds it must stop using the protected resource."""

    req_id: int
    name: str
    reason: str


@dataclass(frozen=True)
class Recovered:
    """A dead (or departed) incarnation's entry that blocked ``req_id`` no
    longer counts: the view shows *that incarnation* inactive at the DLM
    level (or names a newer one of the node after it left).  A live later
    incarnation of the same node id is never recovered with it."""

    name: str
    from_node: int
    req_id: int
    incarnation: int = 0


@dataclass(frozen=True)
class Ack:
    """The DLM finished its work for notification ``batch_id``: the driver
    acks it to the membership manager."""

    batch_id: int


DlmEvent = Granted | Denied | Released | Revoked | Recovered | Ack


# ---------------------------------------------------------- request phases
class Phase(enum.Enum):
    """Where a local request is.  One request per stripe is *active*."""

    QUEUED = "queued"
    """Behind another local request on the same stripe."""
    CHOOSING = "choosing"
    """Next: write CHOOSING, read the stripe, draw the ticket."""
    ANNOUNCING = "announcing"
    """Next: write WAITING(ticket), read the stripe, check."""
    BLOCKED = "blocked"
    """Next, after a (backing-off) poll interval: read the stripe, check."""
    GRANTING = "granting"
    """Next: write HELD(token); then report the grant."""
    HELD = "held"
    """Granted; nothing to do until ``release``."""
    RELEASING = "releasing"
    """Next: write FREE; then report ``Released``."""
    WITHDRAWING = "withdrawing"
    """Ended without a grant (already reported); next: write FREE."""


# Every legal move of a request (h11 style): anything else is a broken
# invariant and raises.  "done" means the request is gone.
TRANSITIONS: frozenset[tuple[Phase, Phase | str]] = frozenset({
    (Phase.QUEUED, Phase.CHOOSING), (Phase.QUEUED, "done"),
    (Phase.CHOOSING, Phase.CHOOSING), (Phase.CHOOSING, Phase.ANNOUNCING),
    (Phase.CHOOSING, Phase.WITHDRAWING), (Phase.CHOOSING, "done"),
    (Phase.ANNOUNCING, Phase.ANNOUNCING), (Phase.ANNOUNCING, Phase.BLOCKED),
    (Phase.ANNOUNCING, Phase.GRANTING), (Phase.ANNOUNCING, Phase.WITHDRAWING),
    (Phase.BLOCKED, Phase.BLOCKED), (Phase.BLOCKED, Phase.GRANTING), (Phase.BLOCKED, Phase.WITHDRAWING),
    (Phase.GRANTING, Phase.GRANTING), (Phase.GRANTING, Phase.HELD), (Phase.GRANTING, Phase.WITHDRAWING),
    (Phase.HELD, Phase.RELEASING), (Phase.HELD, Phase.WITHDRAWING),
    (Phase.RELEASING, Phase.RELEASING), (Phase.RELEASING, "done"),
    (Phase.WITHDRAWING, Phase.WITHDRAWING), (Phase.WITHDRAWING, "done"),
})

_STEPS: dict[Phase, tuple[EntryState | None, bool]] = {
    # phase: (state to write or None, read the stripe after it)
    Phase.CHOOSING: (EntryState.CHOOSING, True),
    Phase.ANNOUNCING: (EntryState.WAITING, True),
    Phase.BLOCKED: (None, True),
    Phase.GRANTING: (EntryState.HELD, False),
    Phase.RELEASING: (EntryState.FREE, False),
    Phase.WITHDRAWING: (EntryState.FREE, False),
}
_WAITING_PHASES = (Phase.CHOOSING, Phase.ANNOUNCING, Phase.BLOCKED, Phase.GRANTING)


@dataclass(frozen=True)
class Blocker:
    node_id: int
    incarnation: int  # 0: the sector was unreadable
    name: str
    why: str  # "choosing" | "held" | "waiting" | "damaged" (the sector did not decode)
    stripe: int = 0
    detail: str = ""  # "damaged": the decode error
    # Informational, as its node wrote them (for people; never compared):
    owner: int = field(default=0, compare=False)  # the pid of the client that asked
    since_unix_ms: int = field(default=0, compare=False)  # the writer's wall clock at that write


@dataclass(frozen=True)
class Holding:
    """One local request, for ``clusterfw locks``."""

    req_id: int
    name: str
    mode: LockMode
    state: str  # "held" | "waiting" | "queued" | "releasing" | "withdrawing"
    ticket: int
    token: int
    since_ms: float  # granted at (held) or requested at (otherwise)
    waiters: tuple[tuple[int, int, LockMode], ...]  # (node id, ticket, mode), as of the last stripe read
    blockers: tuple[Blocker, ...] = ()  # whom a waiting request waits for, as of the last stripe read


@dataclass(eq=False)  # identity: a request is itself, whatever its fields say
class _Request:
    req_id: int
    name: str
    mode: LockMode
    stripe: int
    try_only: bool
    deadline_ms: float | None
    requested_ms: float
    phase: Phase = Phase.QUEUED
    ticket: int = 0
    token: int = 0
    granted_ms: float = 0.0
    next_ms: float = 0.0
    backoff_ms: float = 0.0
    blockers: tuple[Blocker, ...] = ()
    choosing_rereads: int = TRY_CHOOSING_REREADS
    abandon: str | None = None  # deny/revoke decided while an op was in flight
    attempts_left: int | None = None  # FREE writes left (own leave); None: unbounded
    waiters: tuple[tuple[int, int, LockMode], ...] = ()
    owner: int = 0  # informational: the client's process id


@dataclass
class _Sector:
    """What this node knows of its own sector on one stripe."""

    seq: int = 0
    ticket: int = 0
    token: int = 0
    name: str = ""
    mode: LockMode = LockMode.EXCLUSIVE
    maybe_busy: bool = False  # a non-FREE write was tried since the last FREE write completed


_SCRUB = "scrub"
"""The owner of a periodic area read (``_InFlight.owners``)."""


@dataclass
class _InFlight:
    ops: list[DlmOp] = field(default_factory=list)
    # (request | None: the own-join area read | _SCRUB: a periodic area read, op count)
    owners: list[tuple[_Request | str | None, int]] = field(default_factory=list)


def _departure_reached_dlm(m: MemberEntry) -> bool:
    """``m``'s leave or forced leave has reached (or passed) the DLM level:
    that incarnation is on its way out for good."""
    if m.state is NodeState.INACTIVE:
        return True
    if m.state is NodeState.LEAVING:  # top-down
        return m.cursor <= DLM_LEVEL
    if m.state is NodeState.FORCED_LEAVING:  # bottom-up, once the dead timeout passed
        return m.ready and m.cursor >= DLM_LEVEL
    return False


def _own_row_problem(me: MemberEntry | None, incarnation: int) -> str | None:
    """None if the view shows this incarnation joined at the DLM level, else
    what it shows instead."""
    if me is None:
        return "the view does not list this node"
    if me.incarnation != incarnation:
        return f"the view names incarnation {me.incarnation:x}, not this one ({incarnation:x})"
    state = level_state(me, DLM_LEVEL)
    if state == "joined":
        return None
    return f"the view shows this node {state} at the DLM level ({me.state.value})"


class DlmCore:
    """One node's DLM.  Drive it like ``NodeCore``: ``poll`` -> perform ops in
    order -> ``complete``; feed it every adopted view (``on_view``) and every
    notification at ``DLM_LEVEL`` (``notify``); take events."""

    def __init__(self, *, node_id: int, incarnation: int, stripes_max: int, nodes_max: int, now_ms: float,
                 own_sectors: Mapping[int, LockEntry | Unreadable] | None = None,
                 can_write: Callable[[float], bool] | None = None,
                 poll_min_ms: float = 20.0, poll_max_ms: float = 100.0,
                 scrub_ms: float | None = SCRUB_MS, name_of: NameOf = node_id_name,
                 time_of: TimeOf = utc_clock_text) -> None:
        if not 1 <= node_id <= nodes_max:
            raise DlmMisuse(f"node_id={node_id}: must be 1..{nodes_max}")
        if stripes_max < 1:
            raise DlmMisuse(f"stripes_max={stripes_max}: must be >= 1")
        if not 0 < poll_min_ms <= poll_max_ms:
            raise DlmMisuse("poll intervals: need 0 < poll_min_ms <= poll_max_ms")
        if scrub_ms is not None and scrub_ms <= 0:
            raise DlmMisuse("scrub_ms: must be > 0 or None")
        self.node_id = node_id
        self.incarnation = incarnation
        self.name_of = name_of  # how a denial names the nodes that hold or ask for the lock
        self.time_of = time_of  # how a denial writes when they did (the writers' stamps)
        self.stripes_max = stripes_max
        self.nodes_max = nodes_max
        self.poll_min_ms = poll_min_ms
        self.poll_max_ms = poll_max_ms
        self.can_write: Callable[[float], bool] = can_write or (lambda now_ms: True)
        self.started_ms = now_ms
        self.view: ViewRecord | None = None
        self.stopped: str | None = None
        self.area_read = False  # the own-join read of every stripe completed
        self.scrub_ms = scrub_ms
        self._scrub_next_ms = now_ms + (scrub_ms or 0.0)
        self._members: dict[int, MemberEntry] = {}
        # Incarnations of other nodes that some adopted view counted at the
        # DLM level and whose departure no adopted view has shown yet: their
        # entries keep counting even if a later view names another (older)
        # incarnation of the node -- a view that went back must never
        # recover a live holder.
        self._live: dict[int, set[int]] = {}
        # Incarnations an adopted view showed inactive at the DLM level
        # (left or forced out): recovered, unless a view names them again.
        self._departed: dict[int, deque[int]] = {}
        self._joined_here = False  # the view shows this incarnation "joined" at DLM_LEVEL
        self._was_joined = False  # ... and did so in some earlier view
        self._leaving = False  # this node's graceful leave reached the DLM
        self._want_area = False
        self._area_next_ms = now_ms
        self._pending_ack: tuple[int, str] | None = None  # (batch id, "join" | "leave")
        self._sectors: dict[int, _Sector] = {}
        # The highest token this node ever read on each stripe: a later
        # exclusive grant stays above it even if the sector that showed it
        # became damaged meanwhile (its node may be gone and not repair it).
        self._stripe_token: dict[int, int] = {}
        self._stripes: dict[int, deque[_Request]] = {}  # stripe -> requests, [0] is active
        self._requests: dict[int, _Request] = {}
        self._in_flight: _InFlight | None = None
        self._events: list[DlmEvent] = []
        for stripe, entry in (own_sectors or {}).items():
            self._learn_own(stripe, entry, {})

    # ---------------------------------------------------------- public API
    def take_events(self) -> list[DlmEvent]:
        out, self._events = self._events, []
        return out

    def may_request(self) -> str | None:
        """None if this node may request locks now, else why not."""
        if self.stopped is not None:
            return f"the DLM stopped: {self.stopped}"
        if self._leaving:
            return "this node is leaving the cluster"
        if not self._joined_here or not self.area_read:
            return "this node has not joined the cluster at the DLM level"
        return None

    def request(self, req_id: int, name: str, mode: LockMode, now_ms: float, timeout_ms: float | None = None,
                try_only: bool = False, owner: int = 0) -> None:
        """Ask for lock ``name``.  Answered by ``Granted`` or ``Denied``.
        ``owner`` (a process id) is only written along, for ``clusterfw locks``."""
        check_name(name)
        mode = LockMode(mode)
        if isinstance(req_id, bool) or not isinstance(req_id, int) or req_id < 0:
            raise DlmMisuse(f"request id {req_id!r}: must be an integer >= 0")
        if req_id in self._requests:
            raise DlmMisuse(f"request id {req_id} is already in use")
        if timeout_ms is not None and timeout_ms < 0:
            raise DlmMisuse(f"timeout_ms={timeout_ms}: must be >= 0 or None")
        why = self.may_request()
        if why is not None:
            self._events.append(Denied(req_id, why, DenyKind.UNAVAILABLE))
            return
        if len(self._requests) >= REQUESTS_MAX:
            self._events.append(Denied(req_id, f"too many outstanding requests (REQUESTS_MAX={REQUESTS_MAX})", DenyKind.UNAVAILABLE))
            return
        stripe = stripe_of(name, self.stripes_max)
        if isinstance(owner, bool) or not isinstance(owner, int) or not 0 <= owner <= 0xFFFFFFFF:
            raise DlmMisuse(f"owner {owner!r}: must be a process id (0..2**32-1)")
        queue = self._stripes.setdefault(stripe, deque())
        if try_only and queue:
            # Another local request owns this node's sector on the stripe: a
            # try-lock would have to wait for it to end, so it is busy now.
            self._events.append(Denied(req_id, self._local_busy_reason(name, mode, queue), DenyKind.BUSY))
            return
        req = _Request(req_id, name, mode, stripe, try_only,
                       None if timeout_ms is None else now_ms + timeout_ms, now_ms, next_ms=now_ms, owner=owner)
        self._requests[req_id] = req
        queue.append(req)
        if len(queue) == 1:
            self._move(req, Phase.CHOOSING)

    def release(self, req_id: int, now_ms: float) -> bool:
        """Release a held lock (``Released`` once the FREE write landed), or
        cancel a request that is not granted yet (``Denied("cancelled")``).
        False if the request had already ended (a denial or revocation may
        race with the caller's release; its event says which)."""
        req = self._requests.get(req_id)
        if req is None or req.abandon is not None or req.phase in (Phase.RELEASING, Phase.WITHDRAWING):
            return False
        if req.phase is Phase.HELD:
            self._move(req, Phase.RELEASING)
            req.next_ms = now_ms
        else:
            self._abandon(req, "cancelled", now_ms, DenyKind.CANCELLED)
        return True

    def on_view(self, view: ViewRecord, now_ms: float) -> None:
        """Adopt an agreed view: it decides whose entries count."""
        if self.view is not None and (view.term, view.epoch, view.seq) < (self.view.term, self.view.epoch, self.view.seq):
            return
        self.view = view
        self._members = {m.node_id: m for m in view.members}
        self._remember(view)
        me = self._members.get(self.node_id)
        problem = _own_row_problem(me, self.incarnation)
        self._joined_here = problem is None
        if self._joined_here:
            self._was_joined = True
        elif self._was_joined and self.stopped is None:
            self._lost_membership(me, problem or "", now_ms)
        for req in self._requests.values():
            if req.phase not in _WAITING_PHASES or not req.blockers:
                continue
            gone = [b for b in req.blockers if b.incarnation and not self._counted(b.node_id, b.incarnation)]
            for b in gone:
                self._events.append(Recovered(b.name, b.node_id, req.req_id, b.incarnation))
            req.blockers = tuple(b for b in req.blockers if b not in gone)  # reported once
            if gone and req.phase is Phase.BLOCKED:
                req.next_ms = now_ms  # re-check at once
                req.backoff_ms = 0.0

    def notify(self, batch_id: int, entries: Sequence[BatchEntry], now_ms: float) -> None:
        """A notification at ``DLM_LEVEL`` (call ``on_view`` with its view
        first).  Answered by ``Ack(batch_id)`` when the work is done; a newer
        batch supersedes an unanswered older one."""
        if self.stopped is not None:
            return
        own = [e for e in entries if e.node_id == self.node_id]
        for req in self._requests.values():  # others' transitions: re-check waiters soon
            if req.phase is Phase.BLOCKED:
                req.next_ms = min(req.next_ms, now_ms)
        kinds = {e.kind for e in own}
        if Kind.LEAVE in kinds:
            self._pending_ack = (batch_id, "leave")
            self._leave(now_ms)
        elif Kind.JOIN in kinds:
            self._pending_ack = (batch_id, "join")
            if not self.area_read or any(e.kind is Kind.JOIN and e.barrier == 0 for e in own):
                # (Re)joining: read every stripe before acking -- our own
                # sectors' seq, tickets and tokens, and leftovers to withdraw.
                self._leaving = False
                self.area_read = False
                self._want_area = True
                self._area_next_ms = now_ms
        else:
            # Others' join/leave/forced leave: nothing to do here; recovery of a
            # forced node is the view rule, applied in on_view.
            self._pending_ack = None
            self._events.append(Ack(batch_id))
            return
        self._maybe_ack()

    def stop(self, reason: str) -> None:
        """The node fenced or the daemon is exiting: every request ends now
        and no op is produced any more."""
        if self.stopped is not None:
            return
        self.stopped = reason
        for queue in self._stripes.values():
            for req in queue:
                if req.phase in (Phase.HELD, Phase.RELEASING) and req.abandon is None:
                    self._events.append(Revoked(req.req_id, req.name, reason))
                elif req.phase is not Phase.WITHDRAWING and req.abandon is None:
                    self._events.append(Denied(req.req_id, reason, DenyKind.UNAVAILABLE))
        self._stripes.clear()
        self._requests.clear()
        self._in_flight = None
        self._pending_ack = None

    def wakeup_ms(self) -> float:
        """When ``poll`` next has something to do (inf: nothing scheduled)."""
        if self.stopped is not None or self._in_flight is not None:
            return float("inf")
        due = [self._area_next_ms] if self._want_area else []
        if self._scrub_wanted():
            due.append(self._scrub_next_ms)
        for queue in self._stripes.values():
            active = queue[0]
            if active.phase in _STEPS:
                due.append(active.next_ms)
            due.extend(r.deadline_ms for r in queue if r.deadline_ms is not None and r.phase in
                       (Phase.QUEUED, *_WAITING_PHASES) and r.abandon is None)
        return min(due, default=float("inf"))

    def stripe_active(self, stripe: int) -> bool:
        """A local request (or withdrawal) owns this node's sector on
        ``stripe`` now: its next write rewrites the sector."""
        return stripe in self._stripes

    @property
    def joined_here(self) -> bool:
        """The adopted view shows this incarnation joined at the DLM level."""
        return self._joined_here and self.stopped is None

    def busy(self) -> bool:
        """Anything outstanding: requests, an op in flight, a pending ack."""
        return bool(self._requests) or self._in_flight is not None or self._pending_ack is not None \
            or self._want_area

    def poll(self, now_ms: float) -> list[DlmOp]:
        """The ops to perform now, in order ([] if nothing is due)."""
        if self.stopped is not None or self._in_flight is not None:
            return []
        self._expire(now_ms)
        if not self.can_write(now_ms):
            return []  # a node that may not write does nothing at all (it is fencing)
        batch = _InFlight()
        if self._want_area and self._area_next_ms <= now_ms:
            batch.ops.append(ReadArea())
            batch.owners.append((None, 1))
        elif self._scrub_due(now_ms):
            batch.ops.append(ReadArea())
            batch.owners.append((_SCRUB, 1))
        for stripe in sorted(self._stripes):
            req = self._stripes[stripe][0]
            step = _STEPS.get(req.phase)
            if step is None or req.next_ms > now_ms:
                continue
            state, read = step
            count = 0
            if state is not None:
                batch.ops.append(WriteEntry(stripe, self._entry_for(req, state)))
                count += 1
            if read:
                batch.ops.append(ReadStripe(stripe))
                count += 1
            batch.owners.append((req, count))
        if not batch.ops:
            return []
        self._in_flight = batch
        return list(batch.ops)

    def complete(self, now_ms: float, results: Sequence[DlmResult]) -> None:
        """The results of the ops ``poll`` returned, in the same order."""
        batch, self._in_flight = self._in_flight, None
        if self.stopped is not None:
            return
        if batch is None:
            raise AssertionError("complete() without a batch in flight")
        results = list(results)
        index = 0
        for owner, count in batch.owners:
            mine = results[index:index + count]
            index += count
            if len(mine) < count:  # the driver gave up early: the rest failed
                mine += [DlmResult(op, False, now_ms, now_ms, None, "not performed")
                         for op in batch.ops[index - count + len(mine):index]]
            if owner is None:
                self._complete_area(mine[0], now_ms)
            elif isinstance(owner, str):
                self._complete_scrub(mine[0], now_ms)
            else:
                self._complete_step(owner, mine, now_ms)
        self._expire(now_ms)
        self._maybe_ack()

    def holdings(self) -> list[Holding]:
        """Every local request, for ``clusterfw locks``."""
        out = []
        for queue in self._stripes.values():
            for req in queue:
                if req.req_id < 0:
                    continue  # an internal withdrawal
                state = {Phase.HELD: "held", Phase.QUEUED: "queued", Phase.RELEASING: "releasing",
                         Phase.WITHDRAWING: "withdrawing"}.get(req.phase, "waiting")
                since = req.granted_ms if req.phase is Phase.HELD else req.requested_ms
                out.append(Holding(req.req_id, req.name, req.mode, state, req.ticket, req.token, since, req.waiters,
                                   req.blockers if state == "waiting" else ()))
        return sorted(out, key=lambda h: h.req_id)

    # ------------------------------------------------------------ internals
    def _move(self, req: _Request, to: Phase | str) -> None:
        if (req.phase, to) not in TRANSITIONS:
            raise AssertionError(f"DLM request {req.req_id}: illegal move {req.phase.value} -> {to}")
        if to == "done":
            self._finish(req)
            return
        assert isinstance(to, Phase)
        req.phase = to

    def _finish(self, req: _Request) -> None:
        self._requests.pop(req.req_id, None)
        queue = self._stripes.get(req.stripe)
        if queue is None:
            return
        if req in queue:
            head = queue[0] is req
            queue.remove(req)
            if head and queue:
                nxt = queue[0]
                self._move(nxt, Phase.CHOOSING)
                nxt.next_ms = min(nxt.next_ms, req.next_ms)
        if not queue:
            del self._stripes[req.stripe]

    def _sector(self, stripe: int) -> _Sector:
        return self._sectors.setdefault(stripe, _Sector())

    def _entry_for(self, req: _Request, state: EntryState) -> LockEntry:
        """The next write of this node's sector on ``req``'s stripe.  Ticket
        and token never go below what the sector ever held."""
        sector = self._sector(req.stripe)
        if state in (EntryState.WAITING, EntryState.HELD):
            # Exactly the ticket the check used: a HELD entry whose ticket were
            # raised above it (by what a damaged own sector made us assume)
            # could look "behind" a waiter with a smaller ticket.
            assert req.ticket > 0, req.ticket
            ticket = req.ticket
        else:
            ticket = sector.ticket
        token = max(sector.token, req.token) if state is EntryState.HELD else sector.token
        sector.seq += 1
        entry = LockEntry(self.node_id, self.incarnation, sector.seq, req.stripe, req.name, state, req.mode,
                          min(ticket, U64_MAX), min(token, U64_MAX), owner=req.owner)
        # Whatever we attempt may land: from now on the sector may hold it.
        sector.ticket, sector.token = max(sector.ticket, entry.ticket), max(sector.token, entry.token)
        sector.name, sector.mode = entry.name, entry.mode
        if state is not EntryState.FREE:
            sector.maybe_busy = True
        return entry

    def _learn_own(self, stripe: int, entry: object, stripe_entries: Mapping[int, object]) -> None:
        """Fold what a read showed of our own sector (and the stripe's
        highest token) into what we know."""
        top = max((e.token for e in stripe_entries.values() if isinstance(e, LockEntry)), default=0)
        if top > self._stripe_token.get(stripe, 0):
            self._stripe_token[stripe] = top
        sector = self._sector(stripe)
        if isinstance(entry, LockEntry):
            sector.seq = max(sector.seq, entry.seq)
            sector.ticket = max(sector.ticket, entry.ticket)
            sector.token = max(sector.token, entry.token)
            # A previous incarnation's non-FREE entry is withdrawn by the
            # own-join (and every scrub) area read: ``_repair_own``.
        elif isinstance(entry, Unreadable) and not entry.never_written:
            # Our own sector is damaged: we cannot know what it held, so we
            # continue from the largest values on the stripe.
            for other in stripe_entries.values():
                if isinstance(other, LockEntry):
                    sector.ticket = max(sector.ticket, other.ticket)
                    sector.token = max(sector.token, other.token)

    def _remember(self, view: ViewRecord) -> None:
        """Fold an adopted view into what this DLM knows of each (node id,
        incarnation): counted at the DLM level, or departed.  Keyed by the
        incarnation the view's row names -- never by the node id alone."""
        for m in view.members:
            if m.node_id == self.node_id:
                continue
            live = self._live.setdefault(m.node_id, set())
            if _departure_reached_dlm(m):
                live.discard(m.incarnation)
                if level_state(m, DLM_LEVEL) == "inactive":
                    departed = self._departed.setdefault(m.node_id, deque(maxlen=DEPARTED_PER_NODE))
                    if m.incarnation not in departed:
                        departed.append(m.incarnation)
            elif level_state(m, DLM_LEVEL) != "inactive":
                live.add(m.incarnation)
                earlier = self._departed.get(m.node_id)
                if earlier is not None and m.incarnation in earlier:
                    earlier.remove(m.incarnation)  # named again: the view decides
            if not live:
                del self._live[m.node_id]

    def _is_departed(self, node_id: int, incarnation: int) -> bool:
        """An adopted view showed *this incarnation* of ``node_id`` inactive
        at the DLM level."""
        return incarnation in self._departed.get(node_id, ())

    def counts(self, node_id: int, incarnation: int) -> bool:
        """Whether an entry written by (node id, incarnation) counts now."""
        return self._counted(node_id, incarnation)

    def _counted(self, node_id: int, incarnation: int) -> bool:
        m = self._members.get(node_id)
        if m is not None and m.incarnation == incarnation:
            return level_state(m, DLM_LEVEL) != "inactive"  # the view names it: the view decides
        if self._is_departed(node_id, incarnation):
            return False
        # The view names another incarnation of the node (or none): an
        # incarnation this DLM saw counted, and never saw depart, still
        # counts -- the view may be older than it.
        return incarnation in self._live.get(node_id, ())

    def _node_counted(self, node_id: int) -> bool:
        m = self._members.get(node_id)
        return (m is not None and level_state(m, DLM_LEVEL) != "inactive") or bool(self._live.get(node_id))

    def _lost_membership(self, me: MemberEntry | None, problem: str, now_ms: float) -> None:
        """The adopted view stopped showing this incarnation joined at the
        DLM level: a graceful leave reaching the DLM is handled as such;
        anything else (absent, another incarnation, forced-leaving, inactive)
        revokes every held lock and denies every waiter at once -- the
        others may recover this node's entries from now on."""
        if (me is not None and me.incarnation == self.incarnation and me.state is NodeState.LEAVING
                and level_state(me, DLM_LEVEL) == "leaving"):
            self._leave(now_ms)
            return
        reason = f"this node is no longer a member at the DLM level: {problem}"
        for queue in list(self._stripes.values()):
            for req in list(queue):
                if req.req_id < 0 or req.phase in (Phase.RELEASING, Phase.WITHDRAWING):
                    continue
                self._abandon(req, reason, now_ms)

    def _local_busy_reason(self, name: str, mode: LockMode, queue: deque[_Request]) -> str:
        """A try-lock's denial when local requests own the sector it needs:
        the local holders (or askers) of the same lock that conflict with it,
        else the local request that occupies the stripe (one sector per stripe
        per node: local requests on one stripe take turns, docs/dlm.md §2)."""
        def who(req: _Request) -> str:
            state = {Phase.HELD: "holds it", Phase.QUEUED: "queued", Phase.RELEASING: "releasing it",
                     Phase.WITHDRAWING: "withdrawing"}.get(req.phase, "waiting for it")
            return f"pid {req.owner} {state}" if req.owner else state

        mine = [r for r in queue if r.req_id >= 0 and r.abandon is None]
        rivals = [r for r in mine if conflicts(r.name, r.mode, name, mode)]
        if rivals:
            return f"busy: {self.name_of(self.node_id)} (this node: {', '.join(who(r) for r in rivals)})"
        active = queue[0]
        if active.req_id < 0:
            return (f"busy: {self.name_of(self.node_id)} (this node is rewriting its lock sector on stripe "
                    f"{active.stripe})")
        return (f"busy: {self.name_of(self.node_id)} (this node's lock sector on stripe {active.stripe} is in use by "
                f"'{printable(active.name)}', {who(active)}: local requests on one stripe take turns)")

    def _blockers(self, req: _Request, entries: Mapping[int, object]) -> tuple[Blocker, ...]:
        out = []
        for node_id in sorted(entries):
            if node_id == self.node_id:
                continue
            e = entries[node_id]
            if isinstance(e, Unreadable):
                if not e.never_written and self._node_counted(node_id):
                    out.append(Blocker(node_id, 0, "?", "damaged", req.stripe, e.reason))
                continue
            if not isinstance(e, LockEntry) or e.state is EntryState.FREE:
                continue
            if not self._counted(e.node_id, e.incarnation):
                continue
            if not conflicts(e.name, e.mode, req.name, req.mode):
                continue
            if e.state is EntryState.CHOOSING:
                out.append(Blocker(node_id, e.incarnation, e.name, "choosing", owner=e.owner,
                                   since_unix_ms=e.stamp_ms))
            elif (e.ticket, e.node_id) < (req.ticket, self.node_id):
                # WAITING or HELD with a smaller ticket.  (A conflicting HELD
                # entry always has the smaller ticket: its holder read this
                # node CHOOSING or WAITING before it was granted otherwise --
                # docs/dlm.md §3.)
                out.append(Blocker(node_id, e.incarnation, e.name, "held" if e.state is EntryState.HELD
                                   else "waiting", owner=e.owner, since_unix_ms=e.stamp_ms))
        return tuple(out)

    def _waiters(self, req: _Request, entries: Mapping[int, object]) -> tuple[tuple[int, int, LockMode], ...]:
        return tuple((e.node_id, e.ticket, e.mode) for n, e in sorted(entries.items())
                     if n != self.node_id and isinstance(e, LockEntry) and e.name == req.name
                     and e.state in (EntryState.CHOOSING, EntryState.WAITING)
                     and self._counted(e.node_id, e.incarnation))

    def _abandon(self, req: _Request, reason: str, now_ms: float,
                 kind: DenyKind = DenyKind.UNAVAILABLE, blockers: tuple[Blocker, ...] = ()) -> None:
        """End a request that is not granted (or is revoked): report it now,
        withdraw its sector if anything may be on the disk."""
        if req.abandon is not None:
            return
        if req.phase is Phase.HELD:
            self._events.append(Revoked(req.req_id, req.name, reason))
        elif req.phase not in (Phase.RELEASING, Phase.WITHDRAWING):
            self._events.append(Denied(req.req_id, reason, kind, blockers))
        req.abandon = reason
        if self._in_flight is not None and any(owner is req for owner, _ in self._in_flight.owners):
            return  # decided when its op completes
        self._withdraw(req, now_ms)

    def _withdraw(self, req: _Request, now_ms: float) -> None:
        if req.phase is Phase.QUEUED:
            self._move(req, "done")
            return
        if req.phase is Phase.RELEASING:
            return  # already writing FREE
        if req.phase is Phase.CHOOSING and not self._sector(req.stripe).maybe_busy:
            self._move(req, "done")  # nothing of it can be on the disk
            return
        if req.phase is not Phase.WITHDRAWING:
            self._move(req, Phase.WITHDRAWING)
            req.next_ms = now_ms

    def _expire(self, now_ms: float) -> None:
        for req in list(self._requests.values()):
            if req.deadline_ms is None or now_ms < req.deadline_ms or req.abandon is not None:
                continue
            if req.phase in (Phase.QUEUED, *_WAITING_PHASES):
                self._time_out(req, now_ms)

    def _time_out(self, req: _Request, now_ms: float) -> None:
        """Deny ``req`` at its deadline, naming whom it waited for."""
        assert req.deadline_ms is not None
        local = ""
        if req.phase is Phase.QUEUED:
            queue = self._stripes.get(req.stripe, deque())
            ahead = deque(r for r in queue if r is not req)
            if ahead:
                local = self._local_busy_reason(req.name, req.mode, ahead).removeprefix("busy: ")
        reason = timeout_reason(req.deadline_ms - req.requested_ms, req.blockers, self.name_of, self.time_of, local)
        self._abandon(req, reason, now_ms, DenyKind.TIMEOUT, req.blockers)

    def _retry(self, req: _Request, now_ms: float) -> None:
        req.next_ms = now_ms + self.poll_min_ms

    def _complete_area(self, result: DlmResult, now_ms: float) -> None:
        if not result.ok or not isinstance(result.value, Mapping):
            self._area_next_ms = now_ms + self.poll_min_ms  # _want_area stays: retried
            return
        self._repair_own(result.value, now_ms)
        self._want_area = False
        self.area_read = True
        self._scrub_next_ms = now_ms + (self.scrub_ms or 0.0)

    def _scrub_wanted(self) -> bool:
        return (self.scrub_ms is not None and self._joined_here and self.area_read and not self._leaving
                and not self._want_area)

    def _scrub_due(self, now_ms: float) -> bool:
        return self._scrub_wanted() and self._scrub_next_ms <= now_ms

    def _complete_scrub(self, result: DlmResult, now_ms: float) -> None:
        self._scrub_next_ms = now_ms + (self.scrub_ms or 0.0)
        if result.ok and isinstance(result.value, Mapping) and self._joined_here:
            self._repair_own(result.value, now_ms)

    def _repair_own(self, area: Mapping[object, object], now_ms: float) -> None:
        """Learn our own sectors from an area read, and rewrite (FREE) every
        own sector with no local request that does not show this node's
        FREE: one left behind by this incarnation (a leave whose FREE writes
        failed, then a rejoin), by a previous incarnation, or one that does
        not decode (damaged) -- the others cannot know what a damaged sector
        says and are blocked by it while this node counts."""
        for stripe, entries in area.items():
            if not isinstance(stripe, int) or not isinstance(entries, Mapping) or self.node_id not in entries:
                continue
            own = entries[self.node_id]
            self._learn_own(stripe, own, entries)
            if stripe in self._stripes:
                continue  # a local request owns the sector: its next write rewrites it
            if isinstance(own, LockEntry) and own.state is not EntryState.FREE:
                self._cleanup(stripe, own.name, own.mode, now_ms)
            elif isinstance(own, Unreadable) and not own.never_written:
                self._cleanup(stripe, "", LockMode.EXCLUSIVE, now_ms)

    def _cleanup(self, stripe: int, name: str, mode: LockMode, now_ms: float) -> None:
        """Withdraw what our own sector on ``stripe`` shows (see
        ``_repair_own``); on the own join this happens before the ack, or the
        entry would count again.  Internal requests have negative ids and
        report nothing."""
        req = _Request(-(stripe + 1), name, mode, stripe, False, None, now_ms,
                       phase=Phase.WITHDRAWING, abandon="cleanup", next_ms=now_ms)
        self._sector(stripe).maybe_busy = True
        self._requests[req.req_id] = req
        self._stripes.setdefault(stripe, deque()).append(req)

    def _complete_step(self, req: _Request, results: list[DlmResult], now_ms: float) -> None:
        phase = req.phase
        state, read = _STEPS[phase]
        ok = all(r.ok for r in results)
        if state is not None and results[0].ok and state is EntryState.FREE:
            self._sector(req.stripe).maybe_busy = False
        entries: Mapping[int, object] | None = None
        if read and results[-1].ok and isinstance(results[-1].value, Mapping):
            entries = results[-1].value
            self._learn_own(req.stripe, entries.get(self.node_id), entries)
        if req.abandon is not None and phase is not Phase.RELEASING:
            # Denied or revoked while the op was in flight.
            if phase is Phase.WITHDRAWING:
                self._after_free(req, ok, now_ms)
            else:
                self._withdraw(req, now_ms)
            return
        if not ok or (read and entries is None):
            if phase in (Phase.RELEASING, Phase.WITHDRAWING):
                self._after_free(req, False, now_ms)
            else:
                self._retry(req, now_ms)
            return
        if phase is Phase.CHOOSING:
            assert entries is not None
            top = max((e.ticket for e in entries.values() if isinstance(e, LockEntry)), default=0)
            req.ticket = 1 + max(top, self._sector(req.stripe).ticket)
            if req.ticket > U64_MAX:
                raise AssertionError(f"stripe {req.stripe}: bakery tickets exhausted")
            self._move(req, Phase.ANNOUNCING)
            req.next_ms = now_ms
        elif phase in (Phase.ANNOUNCING, Phase.BLOCKED):
            assert entries is not None
            self._check(req, entries, now_ms)
        elif phase is Phase.GRANTING and not self._joined_here:
            # The view no longer shows this node joined at the DLM level (it
            # is being forced out): never report a grant now.
            self._abandon(req, "this node is no longer a member at the DLM level", now_ms)
        elif phase is Phase.GRANTING and not self.can_write(now_ms):
            self._abandon(req, "this node can no longer write to the disk (fencing)", now_ms)
        elif phase is Phase.GRANTING and req.deadline_ms is not None and now_ms >= req.deadline_ms:
            self._time_out(req, now_ms)  # the HELD write completed too late
        elif phase is Phase.GRANTING:
            self._move(req, Phase.HELD)
            req.granted_ms = now_ms
            self._events.append(Granted(req.req_id, req.name, req.mode, req.token))
        else:
            self._after_free(req, True, now_ms)

    def _after_free(self, req: _Request, ok: bool, now_ms: float) -> None:
        if ok:
            if req.phase is Phase.RELEASING:
                self._events.append(Released(req.req_id))
            self._move(req, "done")
            return
        if req.attempts_left is not None:
            req.attempts_left -= 1
            if req.attempts_left <= 0:
                self._move(req, "done")  # own leave: the view makes the leftover entry irrelevant
                return
        self._retry(req, now_ms)

    def _check(self, req: _Request, entries: Mapping[int, object], now_ms: float) -> None:
        blockers = self._blockers(req, entries)
        req.waiters = self._waiters(req, entries)
        if not blockers:
            req.blockers = ()
            top = max((e.token for e in entries.values() if isinstance(e, LockEntry)), default=0)
            top = max(top, self._sector(req.stripe).token, self._stripe_token.get(req.stripe, 0))
            req.token = top + 1 if req.mode is LockMode.EXCLUSIVE else top
            if req.token > U64_MAX:
                raise AssertionError(f"stripe {req.stripe}: fencing tokens exhausted")
            self._move(req, Phase.GRANTING)
            req.next_ms = now_ms
            return
        if req.try_only:
            only_choosing = all(b.why == "choosing" for b in blockers)
            if not only_choosing or req.choosing_rereads <= 0:
                self._abandon(req, busy_reason(blockers, self.name_of), now_ms, DenyKind.BUSY, blockers)
                return
            req.choosing_rereads -= 1
        if blockers != req.blockers:
            req.backoff_ms = self.poll_min_ms
        else:
            req.backoff_ms = min(self.poll_max_ms, max(self.poll_min_ms, 2 * req.backoff_ms))
        req.blockers = blockers
        self._move(req, Phase.BLOCKED)
        req.next_ms = now_ms + req.backoff_ms

    def _leave(self, now_ms: float) -> None:
        """This node's graceful leave reached the DLM: every held lock is
        revoked, every waiter denied, and every sector that may show anything
        but FREE is withdrawn, before the ack."""
        if self._leaving:
            return
        self._leaving = True
        reason = "this node is leaving the cluster"
        for queue in list(self._stripes.values()):
            for req in list(queue):
                if req.phase is Phase.RELEASING:
                    req.attempts_left = LEAVE_RELEASE_ATTEMPTS
                    continue
                self._abandon(req, reason, now_ms)
                if req.req_id in self._requests:
                    req.attempts_left = LEAVE_RELEASE_ATTEMPTS

    def _maybe_ack(self) -> None:
        if self._pending_ack is None:
            return
        batch_id, why = self._pending_ack
        if why == "join" and (not self.area_read or any(r < 0 for r in self._requests)):
            return
        if why == "leave" and (self._requests or self._in_flight is not None):
            return
        self._pending_ack = None
        self._events.append(Ack(batch_id))
