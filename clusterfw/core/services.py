"""The registration & launch service's decisions: pure, no I/O, no clock.

How this works
--------------
The **registry** (``Registry``) is the one source of truth, kept on the
shared disk and rewritten only by a node that holds the cluster lock
``clusterfw.registry``.  Per service it holds the definition, whether the
service is wanted (``auto_register``, ``service start|stop``), and a state
*per node* -- ``starting``, ``registered``, ``stopping``, ``recovering`` or
no entry (de-registered there) -- with the flags of the patent's Tables 2-3:
T (transfer intent), M (awaiting maturity), N (has a notify command) and,
per node, I (the node is in the service's available set).

Three pure functions change it; each appends the reason of every change to
the service's history, which is what ``clusterfw service why`` reads:

* ``decide(reg, cluster)``: the choosing.  Given who is present and up at
  the services level, it moves per-node states forward: forced-out owners'
  services go to recovery, services wait for maturity, get an owner, are
  transferred (a graceful leave, ``service move``, a free failback, a node
  marked failed), children follow their parents.  It is deterministic, so
  every node computes the same next step; the lock makes one node write it.
* ``report(reg, node, service, outcome)``: what a node's launcher did
  (start succeeded or failed, stop ended, recovery ended, notify ran, the
  service failed at run time, it was found running).
* ``command(reg, ...)``: what an administrator asked (apply, start, stop,
  remove, move, freeze, unfreeze, clear, node maintenance).

``local_work(reg, node, cluster)`` tells one node's executor what to do now.

Safety rules (``check``; the simulator checks them after every step):

* ONE-OWNER: a ``one`` service has entries on at most one node; a new entry
  (``starting``) is created only when no node has one.  An entry on a node
  is dropped only by that node's own report or once the node is *gone*: out
  of the view, or forced out with the forced leave notified at the services
  level (so fenced: the membership starts a forced leave only after the
  node's fence deadline and the watchdog margin).
* ALLOWED: no entry is created on a node outside the service's allowable
  set minus its disallowable set (children: their root's).
* WITH-PARENT: a child gets ``starting`` on a node only where its parent is
  ``registered``; a parent goes ``stopping`` only when none of its children
  has an entry there.
* Per-node moves go through ``NODE_MOVES``; anything else raises.

Failback damping: a ``free`` service is transferred to a more preferred node
only when that node joined after the service was placed where it is, and
has been up for ``failback_delay_s`` without a break,
and never to a node marked failed for it; a node that flaps never stays up
long enough to pull it.  Unordered preferences rank by load only when a
service is placed, never to move a running one.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from . import levels
from .coordinator import level_state
from .model import NodeState, ViewRecord
from . import svcdef_toml
from .svcdef import ALL_NODES, RESTART_FIELDS, AutoRegister, DefinitionError, Placement, ServiceDef, TransferCost

SERVICES_LEVEL = levels.SERVICES
HISTORY_MAX = 12
"""Decisions kept per service (for ``why``)."""


class SvcState(enum.StrEnum):
    STARTING = "starting"
    REGISTERED = "registered"
    STOPPING = "stopping"
    RECOVERING = "recovering"
    DEREGISTERED = "de-registered"  # the summary only: per node, no entry


NODE_MOVES: dict[SvcState | None, frozenset[SvcState | None]] = {
    None: frozenset({SvcState.STARTING, SvcState.RECOVERING, SvcState.REGISTERED}),  # REGISTERED: found running
    SvcState.STARTING: frozenset({SvcState.REGISTERED, None}),
    SvcState.REGISTERED: frozenset({SvcState.STOPPING, SvcState.STARTING, None}),
    SvcState.STOPPING: frozenset({None}),
    SvcState.RECOVERING: frozenset({None}),
}
RUNNING = frozenset({SvcState.STARTING, SvcState.REGISTERED, SvcState.STOPPING})


class IllegalMove(ValueError):
    pass


class Action(enum.StrEnum):
    START = "start"
    STOP = "stop"
    NOTIFY = "notify"
    RECOVERY = "recovery"
    FAILED = "failed"  # a started service died by itself
    FOUND = "found"  # the launcher found it running (after a freeze, a restart)
    GONE = "gone"  # the launcher found it not running where the registry says it is


@dataclass
class Entry:
    state: SvcState
    since_ms: int
    recovering_for: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state.value, "since": self.since_ms}
        if self.recovering_for:
            out["for"] = self.recovering_for
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Entry:
        return cls(SvcState(d["state"]), int(d["since"]), str(d.get("for", "")))


@dataclass
class Failure:
    count: int
    last_ms: int
    reason: str
    marked: bool = False
    """True: the node is excluded for this service until it expires or is cleared."""

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "last": self.last_ms, "reason": self.reason, "marked": self.marked}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Failure:
        return cls(int(d["count"]), int(d["last"]), str(d["reason"]), bool(d["marked"]))


@dataclass
class ServiceRec:
    definition: ServiceDef
    wanted: bool
    nodes: dict[str, Entry] = field(default_factory=dict)
    transfer: bool = False
    target: str = ""
    target_why: str = ""
    matured: bool = False
    frozen: bool = False
    removing: bool = False
    failures: dict[str, Failure] = field(default_factory=dict)
    serial: int = 0
    """Counts registrations; a node's notify ran for ``notified[node]``."""
    notified: dict[str, int] = field(default_factory=dict)
    history: list[tuple[int, str]] = field(default_factory=list)
    placed_ms: int = 0
    """When the root was last placed (its start decided) on a node: a free
    failback goes only to a more preferred node that joined after this."""

    @property
    def name(self) -> str:
        return self.definition.name

    def owners(self) -> list[str]:
        return sorted(n for n, e in self.nodes.items() if e.state in RUNNING)

    def to_json(self) -> dict[str, Any]:
        return {
            "def": self.definition.to_json(), "wanted": self.wanted,
            "nodes": {n: e.to_json() for n, e in sorted(self.nodes.items())},
            "T": self.transfer, "target": self.target, "target_why": self.target_why, "matured": self.matured, "frozen": self.frozen,
            "removing": self.removing, "failures": {n: f.to_json() for n, f in sorted(self.failures.items())},
            "serial": self.serial, "notified": dict(sorted(self.notified.items())),
            "history": [[t, s] for t, s in self.history], "placed": self.placed_ms,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ServiceRec:
        return cls(
            definition=ServiceDef.from_json(d["def"]), wanted=bool(d["wanted"]),
            nodes={n: Entry.from_json(e) for n, e in d.get("nodes", {}).items()},
            transfer=bool(d.get("T", False)), target=str(d.get("target", "")),
            target_why=str(d.get("target_why", "")),
            matured=bool(d.get("matured", False)), frozen=bool(d.get("frozen", False)),
            removing=bool(d.get("removing", False)),
            failures={n: Failure.from_json(f) for n, f in d.get("failures", {}).items()},
            serial=int(d.get("serial", 0)), notified={n: int(v) for n, v in d.get("notified", {}).items()},
            history=[(int(t), str(s)) for t, s in d.get("history", [])], placed_ms=int(d.get("placed", 0)))


@dataclass
class Registry:
    services: dict[str, ServiceRec] = field(default_factory=dict)
    maintenance: set[str] = field(default_factory=set)
    formed_ms: int = 0
    up: list[str] = field(default_factory=list)
    """Who was up at the services level in the last decision round
    (``name@incarnation``)."""
    up_since: dict[str, int] = field(default_factory=dict)
    loads: dict[str, float] = field(default_factory=dict)
    incarnations: dict[str, int] = field(default_factory=dict)
    """The incarnation of each node as the last round that saw it present
    saw it: the entries on a node belong to that incarnation."""

    def to_json(self) -> dict[str, Any]:
        return {"services": {n: s.to_json() for n, s in self.services.items()},
                "maintenance": sorted(self.maintenance), "formed": self.formed_ms, "up": sorted(self.up),
                "up_since": dict(sorted(self.up_since.items())),
                "loads": {n: round(v, 3) for n, v in sorted(self.loads.items())},
                "incarnations": dict(sorted(self.incarnations.items()))}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Registry:
        if not d:
            return cls()
        return cls(services={n: ServiceRec.from_json(s) for n, s in d.get("services", {}).items()},
                   maintenance=set(d.get("maintenance", [])), formed_ms=int(d.get("formed", 0)),
                   up=list(d.get("up", [])), up_since={n: int(v) for n, v in d.get("up_since", {}).items()},
                   loads={n: float(v) for n, v in d.get("loads", {}).items()},
                   incarnations={n: int(v) for n, v in d.get("incarnations", {}).items()})

    def copy(self) -> Registry:
        return Registry.from_json(self.to_json())

    # -- groups -----------------------------------------------------------------
    def children(self, name: str) -> list[ServiceRec]:
        return [s for s in self.services.values() if s.definition.parent == name]

    def root(self, name: str) -> ServiceRec:
        rec = self.services[name]
        seen = {name}
        while rec.definition.parent and rec.definition.parent in self.services:
            rec = self.services[rec.definition.parent]
            if rec.name in seen:
                break
            seen.add(rec.name)
        return rec

    def group(self, root: str) -> list[ServiceRec]:
        """The root and its descendants, parents before children."""
        out = [self.services[root]]
        i = 0
        while i < len(out):
            out.extend(self.children(out[i].name))
            i += 1
        return out


@dataclass(frozen=True)
class Cluster:
    """What the membership says, as the services level sees it."""

    known: tuple[str, ...]
    """Every node of the node table, in id order."""
    present: frozenset[str]
    """In the view and not gone: may still run what it started."""
    up: frozenset[str]
    """Joined at the services level: may be given new work."""
    now_ms: int
    incarnations: tuple[tuple[str, int], ...] = ()
    """(name, incarnation) of the members, where known: a node that
    restarted is a new incarnation (maturity, failback damping)."""
    forced: frozenset[str] = frozenset()
    """Present nodes that are being forced out (only what ``why`` and the
    history say differs: such a node is not up either)."""

    def up_keys(self) -> dict[str, str]:
        inc = dict(self.incarnations)
        return {n: f"{n}@{inc[n]:x}" if n in inc else n for n in sorted(self.up)}


def cluster_from_view(view: ViewRecord | None, names: Mapping[int, str], gone: Iterable[str],
                      now_ms: int, me: tuple[str, int] | None = None) -> Cluster:
    """The ``Cluster`` a node's services level sees in ``view`` (the daemon's
    and the simulator's one mapping).  ``names``: node id -> name, the node
    table; ``gone``: the names whose forced leave was notified at the
    services level.  A member is *present* unless it is inactive at the
    services level, gone, or forced out with its forced leave already past
    the services level; it is *up* when joined there.

    ``me``: the asking daemon's (name, incarnation).  A member with its name
    but another incarnation is an earlier incarnation of its node -- a
    restarted daemon adopts views that still show the one that crashed or
    was fenced, until that one's forced leave is over.  It is not present
    for this daemon: what it started died with it, and acting on its
    entries would start services that the other nodes are about to start
    elsewhere once the forced leave reaches the services level."""
    known = tuple(names[i] for i in sorted(names))
    gone = frozenset(gone)
    present: set[str] = set()
    up: set[str] = set()
    forced: set[str] = set()
    incs: list[tuple[str, int]] = []
    for m in view.members if view is not None else ():
        name = names.get(m.node_id)
        if name is None:
            continue
        st = level_state(m, SERVICES_LEVEL)
        if st == "inactive" or name in gone:
            continue
        if me is not None and name == me[0] and m.incarnation != me[1]:
            continue  # an earlier incarnation of this node
        if m.state is NodeState.FORCED_LEAVING and m.ready and m.cursor >= SERVICES_LEVEL:
            continue
        present.add(name)
        incs.append((name, m.incarnation))
        if m.state is NodeState.FORCED_LEAVING:
            forced.add(name)
        if st == "joined":
            up.add(name)
    return Cluster(known, frozenset(present), frozenset(up), now_ms, tuple(incs), frozenset(forced))


@dataclass(frozen=True)
class Work:
    service: str
    action: Action
    failed_node: str = ""  # recovery: the node that was forced out


@dataclass(frozen=True)
class Outcome:
    action: Action
    ok: bool = True
    detail: str = ""


# ------------------------------------------------------------------ helpers
def _move(rec: ServiceRec, node: str, to: SvcState | None, now_ms: int, recovering_for: str = "") -> None:
    entry = rec.nodes.get(node)
    frm = entry.state if entry else None
    if to not in NODE_MOVES[frm]:
        raise IllegalMove(f"{rec.name} on {node}: {frm or 'none'} -> {to or 'none'} is not a legal move")
    if to is None:
        rec.nodes.pop(node, None)
    else:
        rec.nodes[node] = Entry(to, now_ms, recovering_for)


def _note(rec: ServiceRec, now_ms: int, text: str, out: list[str] | None = None) -> None:
    rec.history.append((now_ms, text))
    del rec.history[:-HISTORY_MAX]
    if out is not None:
        out.append(f"{rec.name}: {text}")


def _failed(rec: ServiceRec, node: str) -> Failure | None:
    f = rec.failures.get(node)
    return f if f and f.marked else None


def available(reg: Registry, root: ServiceRec, known: Iterable[str]) -> frozenset[str]:
    return root.definition.allowable(tuple(known))


def ranking(reg: Registry, root: ServiceRec, nodes: Iterable[str], known: tuple[str, ...]) -> list[str]:
    """``nodes`` best first: ordered preferences by rank; unordered ones by
    the load each node published; then the other nodes (by load when
    unordered, else in node-table order)."""
    d = root.definition
    order = {n: i for i, n in enumerate(known)}
    prefs = list(d.preferences)
    unordered = d.preference_order == "unordered"

    def key(n: str) -> tuple[int, float, int]:
        tier = 0 if n in prefs else 1
        within = reg.loads.get(n, 0.0) if unordered else (prefs.index(n) if n in prefs else 0)
        return (tier, within, order.get(n, len(order)))
    return sorted(nodes, key=key)


def _pref_tier(root: ServiceRec, node: str) -> tuple[int, int]:
    """How preferred a node is for failback: the ordered rank, or in/out of
    an unordered preference list (never the load)."""
    prefs = list(root.definition.preferences)
    if node not in prefs:
        return (1, 0)
    return (0, prefs.index(node) if root.definition.preference_order == "ordered" else 0)


def candidates(reg: Registry, root: ServiceRec, cluster: Cluster) -> list[str]:
    ok = available(reg, root, cluster.known)
    return ranking(reg, root, [n for n in cluster.up if n in ok and n not in reg.maintenance
                               and not _failed(root, n)], cluster.known)


def primary_of(d: ServiceDef) -> str:
    """The primary node for maturity: ``maturity_primary``, else the first
    ordered preference."""
    if d.maturity_primary:
        return d.maturity_primary
    return d.preferences[0] if d.preferences and d.preference_order == "ordered" else ""


def maturity(reg: Registry, root: ServiceRec, cluster: Cluster) -> str | None:
    """None when the cluster is mature for this service, else what it waits for."""
    d = root.definition
    if root.matured or not d.maturity_applies:
        return None
    ok = available(reg, root, cluster.known)
    up_ok = sorted(n for n in cluster.up if n in ok)
    if not up_ok:
        return "no allowable node is up"
    primary = primary_of(d)
    if primary and primary in cluster.up:
        return None
    if d.maturity_count and len(up_ok) >= d.maturity_count:
        return None
    elapsed = (cluster.now_ms - reg.formed_ms) / 1000.0
    if d.maturity_time_s and elapsed >= d.maturity_time_s:
        return None
    parts = []
    if primary:
        parts.append(f"the primary {primary} to be up")
    if d.maturity_count:
        parts.append(f"{d.maturity_count} allowable nodes up ({len(up_ok)} are)")
    if d.maturity_time_s:
        parts.append(f"{d.maturity_time_s:g} s since the cluster formed ({max(0.0, elapsed):.0f} s so far)")
    return "awaiting maturity: " + " or ".join(parts)


# ------------------------------------------------------------------ decide
def decide(reg: Registry, cluster: Cluster) -> list[str]:
    """One decision round (mutates ``reg``); returns the decisions made, as
    sentences (empty: nothing to do)."""
    now = cluster.now_ms
    out: list[str] = []
    present = cluster.present | cluster.up
    # A cluster that went down completely and came back has formed anew: none
    # of the node incarnations up now was up in the last round.
    ups = cluster.up_keys()
    if ups and not (set(reg.up) & set(ups.values())):
        reg.formed_ms = now
        for rec in reg.services.values():
            rec.matured = False
    before = {k.split("@")[0]: k for k in reg.up}
    for n in list(reg.up_since):
        if n not in cluster.up or before.get(n) not in (None, ups.get(n)):
            del reg.up_since[n]
            for rec in reg.services.values():  # a node that left is told again when it joins again
                rec.notified.pop(n, None)
    for n in cluster.up:
        reg.up_since.setdefault(n, now)
    reg.up = sorted(ups.values())
    # A node present with another incarnation than the registry last saw
    # there restarted: its entries were the old incarnation's, whose services
    # died with it (a fence, a crash, or the new daemon's start-up clean-up,
    # which runs before its first heartbeat) -- as if it had been forced out.
    incs = dict(cluster.incarnations)
    restarted = {n for n in present if n in incs and reg.incarnations.get(n, incs[n]) != incs[n]}
    for n in present:
        if n in incs:
            reg.incarnations[n] = incs[n]

    for rec in reg.services.values():
        d = rec.definition
        # failures expire
        for n, f in list(rec.failures.items()):
            if d.failure_timeout_s and now - f.last_ms >= d.failure_timeout_s * 1000:
                del rec.failures[n]
                _note(rec, now, f"the failure on {n} expired ({f.reason})", out)
        # entries on nodes that are gone: forced out (a graceful leave stops them first)
        for n, e in list(rec.nodes.items()):
            if n in present and n not in restarted:
                continue
            gone_how = "restarted (a new incarnation)" if n in restarted else "was forced out"
            if e.state is SvcState.RECOVERING:
                _move(rec, n, None, now)
                _note(rec, now, f"{n}, which was recovering it, {'restarted' if n in restarted else 'is gone'}", out)
                continue
            _move(rec, n, None, now)
            _note(rec, now, f"{n} {gone_how} while it was {e.state.value} there", out)
            if d.has_recovery and not rec.frozen:
                root = reg.root(rec.name)
                where = candidates(reg, root, cluster)
                if where:
                    _move(rec, where[0], SvcState.RECOVERING, now, recovering_for=n)
                    _note(rec, now, f"recovering on {where[0]} after {n} was forced out", out)

    for root in [r for r in reg.services.values() if not r.definition.parent or r.definition.parent not in reg.services]:
        group = reg.group(root.name)
        if any(s.frozen for s in group):
            continue
        if root.definition.placement_policy is Placement.EVERY:
            _decide_every(reg, root, group, cluster, out)
        else:
            _decide_one(reg, root, group, cluster, out)
        _children(reg, group, cluster, out)
    for name in [n for n, s in reg.services.items() if s.removing and not s.nodes and not reg.children(n)]:
        del reg.services[name]
        out.append(f"{name}: removed from the registry")
    return out


def _stop_group_on(reg: Registry, rec: ServiceRec, node: str, now: int, why: str, out: list[str]) -> None:
    """Stop ``rec`` on ``node``, children first: a child with an entry there
    is stopped (recursively) and ``rec`` waits for a later round."""
    waiting = False
    for child in reg.children(rec.name):
        if node in child.nodes:
            waiting = True
            _stop_group_on(reg, child, node, now, why, out)
    if waiting:
        return
    e = rec.nodes.get(node)
    if e and e.state is SvcState.REGISTERED:
        _move(rec, node, SvcState.STOPPING, now)
        _note(rec, now, f"stopping on {node}: {why}", out)


def _joined_after_placement(reg: Registry, root: ServiceRec, node: str) -> bool:
    """A free failback goes to a more preferred node only when that node
    joined (this up period began) after the service was placed where it is:
    "when that node joins".  A node that was up all along -- the service was
    moved off it by the administrator, or it failed there and was cleared --
    does not pull the service back."""
    return reg.up_since.get(node, 0) > root.placed_ms


def _decide_one(reg: Registry, root: ServiceRec, group: list[ServiceRec], cluster: Cluster, out: list[str]) -> None:
    now = cluster.now_ms
    d = root.definition
    owners = [n for n, e in root.nodes.items() if e.state in RUNNING]
    if any(e.state is SvcState.RECOVERING for s in group for e in s.nodes.values()):
        return  # recovery first
    if owners:
        owner = owners[0]
        e = root.nodes[owner]
        if e.state is not SvcState.REGISTERED or any(
                s.nodes.get(owner) and s.nodes[owner].state is SvcState.STARTING for s in group):
            return  # a start or stop is underway
        why = ""
        if not root.wanted or root.removing:
            why = "it was stopped" if not root.removing else "it is being removed"
            root.transfer = False
        elif owner not in cluster.up:
            why = (f"{owner} is being forced out of the cluster" if owner in cluster.forced
                   else f"{owner} is leaving the cluster")
        elif owner in reg.maintenance:
            return  # left alone on a node in maintenance
        elif _failed(root, owner):
            why = f"it failed on {owner} ({root.failures[owner].reason})"
        elif root.target and root.target != owner:
            if root.target in candidates(reg, root, cluster):
                why = f"moved to {root.target} by the administrator"
            else:
                _note(root, now, f"the move to {root.target} was dropped: {root.target} is no longer a candidate", out)
                root.target = ""
                return
        elif root.target == owner and root.transfer:
            why = "its definition changed (restart)"
        elif d.transfer_cost is TransferCost.FREE:
            best = next((n for n in candidates(reg, root, cluster)
                         if _pref_tier(root, n) < _pref_tier(root, owner) and _joined_after_placement(reg, root, n)),
                        None)
            if best is not None and now - reg.up_since.get(best, now) >= d.failback_delay_s * 1000:
                why = f"transfer_cost is free and {best} is more preferred"
                root.target, root.target_why = best, why
        if not why:
            return
        if root.wanted and not root.removing:
            root.transfer = True
        _stop_group_on(reg, root, owner, now, why, out)
        return
    # no owner: whatever of the group still runs somewhere is stopped first (children of a failed root)
    if any(s.nodes for s in group):
        return
    if not root.wanted or root.removing:
        if root.transfer:
            root.transfer = False
        return
    if maturity(reg, root, cluster) is not None:
        return
    root.matured = True
    where = candidates(reg, root, cluster)
    if not where:
        if root.transfer:
            root.transfer, root.target, root.target_why = False, "", ""
            _note(root, now, "de-registered: no candidate node is up to take it", out)
        return
    if root.target and root.target not in where:
        _note(root, now, f"the move to {root.target} was dropped: {root.target} is not a candidate", out)
        root.target = ""
    dest = root.target if root.target in where else where[0]
    _move(root, dest, SvcState.STARTING, now)
    root.placed_ms = now
    reason = (root.target_why or "moved there") if root.target == dest and root.target else (
        "its most preferred candidate" if dest == where[0] else "")
    _note(root, now, f"starting on {dest}: {reason or 'chosen'}"
          + (f" (next: {', '.join(where[1:4])})" if len(where) > 1 else ""), out)


def _decide_every(reg: Registry, root: ServiceRec, group: list[ServiceRec], cluster: Cluster,
                  out: list[str]) -> None:
    now = cluster.now_ms
    if any(e.state is SvcState.RECOVERING for s in group for e in s.nodes.values()):
        return
    want = set(candidates(reg, root, cluster)) if root.wanted and not root.removing else set()
    if want and maturity(reg, root, cluster) is not None:
        want = set()
        if not root.nodes:
            return
    elif want:
        root.matured = True
    for n, e in list(root.nodes.items()):
        if e.state is SvcState.REGISTERED and n not in want and n not in reg.maintenance:
            why = ("it was stopped" if not root.wanted else "it is being removed" if root.removing
                   else f"{n} is leaving the cluster" if n not in cluster.up else f"it failed on {n}")
            _stop_group_on(reg, root, n, now, why, out)
    for n in sorted(want - set(root.nodes)):
        _move(root, n, SvcState.STARTING, now)
        _note(root, now, f"starting on {n}: placement_policy is every", out)


def _children(reg: Registry, group: list[ServiceRec], cluster: Cluster, out: list[str]) -> None:
    now = cluster.now_ms
    root = group[0]
    for child in group[1:]:
        parent = reg.services[child.definition.parent]
        for n, pe in parent.nodes.items():
            if (pe.state is SvcState.REGISTERED and n not in child.nodes and child.wanted and not child.removing
                    and not child.frozen and not root.transfer and not _failed(child, n)):
                _move(child, n, SvcState.STARTING, now)
                _note(child, now, f"starting on {n}: its parent {parent.name} is registered there", out)
        # a child whose own start failed or which was stopped, with the parent still up: nothing more
        for n, ce in list(child.nodes.items()):
            pe2 = parent.nodes.get(n)
            if ce.state is SvcState.REGISTERED and (not child.wanted or child.removing) and not child.frozen:
                _stop_group_on(reg, child, n, now, "it was stopped" if not child.removing else "it is being removed",
                               out)
            elif ce.state is SvcState.REGISTERED and pe2 is None and n in cluster.present:
                _stop_group_on(reg, child, n, now, f"its parent {parent.name} is not there", out)


# ------------------------------------------------------------------ reports
def report(reg: Registry, node: str, service: str, outcome: Outcome, now_ms: int) -> list[str]:
    """Apply what ``node``'s launcher did for ``service``."""
    out: list[str] = []
    rec = reg.services.get(service)
    if rec is None:
        return out
    e = rec.nodes.get(node)
    a = outcome.action
    detail = f": {outcome.detail}" if outcome.detail else ""
    if a is Action.START and e and e.state is SvcState.STARTING:
        if outcome.ok:
            _move(rec, node, SvcState.REGISTERED, now_ms)
            rec.serial += 1
            if not rec.definition.parent or rec is reg.root(service):
                rec.transfer = False
                rec.target = rec.target_why = ""
            _note(rec, now_ms, f"registered on {node} (start succeeded{detail})", out)
        else:
            _move(rec, node, None, now_ms)
            _mark_failed(reg, rec, node, f"start failed at {_clock(now_ms)}{detail}", now_ms, out, start=True)
    elif a is Action.STOP and e and e.state is SvcState.STOPPING:
        _move(rec, node, None, now_ms)
        _note(rec, now_ms, f"de-registered on {node} (stop ended{detail})", out)
    elif a is Action.RECOVERY and e and e.state is SvcState.RECOVERING:
        _move(rec, node, None, now_ms)
        _note(rec, now_ms, f"recovery on {node} ended{detail}", out)
    elif a is Action.NOTIFY:
        rec.notified[node] = rec.serial
    elif a in (Action.FAILED, Action.GONE) and e and e.state is SvcState.REGISTERED:
        f = rec.failures.get(node) or Failure(0, now_ms, "")
        f.count += 1
        f.last_ms = now_ms
        f.reason = f"failed at {_clock(now_ms)}{detail}"
        rec.failures[node] = f
        thr = rec.definition.failure_threshold
        if rec.frozen:
            _note(rec, now_ms, f"failed on {node}{detail} while frozen: left as it is", out)
        elif thr and f.count >= thr:
            _move(rec, node, None, now_ms)
            _drop_starting_children(reg, rec, node, now_ms, out)
            _mark_failed(reg, rec, node, f.reason + f" ({f.count} of {thr} failures)", now_ms, out)
        else:
            count = f"{f.count}" + (f" of {thr}" if thr else "") + " failures"
            parent = reg.services.get(rec.definition.parent) if rec.definition.parent else None
            pe = parent.nodes.get(node) if parent is not None else None
            if parent is not None and (pe is None or pe.state is not SvcState.REGISTERED):
                # WITH-PARENT: a child starts only where its parent is registered
                _move(rec, node, None, now_ms)
                _note(rec, now_ms, f"failed on {node}{detail}; it starts there again once its parent "
                      f"{parent.name} is registered there ({count})", out)
            elif any(node in c.nodes for c in reg.children(rec.name)):
                # its children there run on top of it: they stop first, then the group starts again
                _move(rec, node, None, now_ms)
                _drop_starting_children(reg, rec, node, now_ms, out)
                _note(rec, now_ms, f"failed on {node}{detail}; its children there stop first, then the group "
                      f"starts again ({count})", out)
            else:
                _move(rec, node, SvcState.STARTING, now_ms)
                _note(rec, now_ms, f"failed on {node}{detail}; restarting it there ({count})", out)
    elif a is Action.FOUND and e is None:
        root = reg.root(service)
        others = [n for n, x in rec.nodes.items() if n != node]
        if rec.definition.placement_policy is Placement.ONE and not rec.definition.parent and others:
            return out  # the executor stops the stray copy
        if node in root.definition.allowable(tuple(reg.up) + (node,)):
            _move(rec, node, SvcState.REGISTERED, now_ms)
            rec.serial += 1
            _note(rec, now_ms, f"found running on {node}: registered there without a restart", out)
    return out


def _drop_starting_children(reg: Registry, rec: ServiceRec, node: str, now_ms: int, out: list[str]) -> None:
    """``rec`` is no longer registered on ``node``: a child whose start there
    is under way loses its entry (WITH-PARENT); the executor stops what that
    start leaves running, and the child starts again after its parent."""
    for child in reg.children(rec.name):
        ce = child.nodes.get(node)
        if ce is not None and ce.state is SvcState.STARTING:
            _move(child, node, None, now_ms)
            _note(child, now_ms, f"its start on {node} is dropped: its parent {rec.name} is no longer "
                  "registered there", out)


def _mark_failed(reg: Registry, rec: ServiceRec, node: str, reason: str, now_ms: int, out: list[str],
                 start: bool = False) -> None:
    root = reg.root(rec.name)
    for target in {rec.name, root.name}:
        r = reg.services[target]
        f = r.failures.get(node) or Failure(0, now_ms, reason)
        f.count = max(f.count, 1)
        f.last_ms, f.reason, f.marked = now_ms, reason, True
        r.failures[node] = f
    _note(rec, now_ms, f"{node} is marked failed for it: {reason}", out)
    if root is not rec:
        _note(root, now_ms, f"{node} is marked failed for the group: {rec.name} {reason}", out)
        if root.wanted:
            root.transfer = True


def _clock(ms: int) -> str:
    s = ms // 1000
    return f"{(s // 3600) % 24:02d}:{(s // 60) % 60:02d}:{s % 60:02d} UTC"


# ------------------------------------------------------------------ commands
class CommandError(ValueError):
    """A command that cannot be carried out; the message says why and the fix."""


def apply(reg: Registry, defs: dict[str, ServiceDef], now_ms: int) -> list[str]:
    """Add or change the given definitions (others are left alone)."""
    out: list[str] = []
    for name, d in defs.items():
        rec = reg.services.get(name)
        if rec is None:
            reg.services[name] = rec = ServiceRec(d, wanted=d.auto_register is AutoRegister.AUTO or bool(d.parent))
            _note(rec, now_ms, "defined" + ("" if rec.wanted else " (auto_register is manual: `clusterfw service start`)"),
                  out)
            continue
        if rec.definition == d and not rec.removing:
            continue
        old = rec.definition
        changed = sorted(k for k in d.to_json().keys() | old.to_json().keys()
                         if d.to_json().get(k) != old.to_json().get(k))
        rec.definition = d
        rec.removing = False
        restart = bool(set(changed) & RESTART_FIELDS) and bool(rec.owners())
        if restart and d.placement_policy is Placement.ONE and not d.parent:
            rec.transfer, rec.target = True, rec.owners()[0]
        _note(rec, now_ms, f"definition changed: {', '.join(changed) or 'nothing'}"
              + (" (restarts it)" if restart else ""), out)
    return out


def command(reg: Registry, op: str, name: str, now_ms: int, cluster: Cluster, to: str = "") -> str:
    """An administrator's command; returns the sentence to print."""
    if op in ("maintenance-on", "maintenance-off"):
        if name not in cluster.known:
            raise CommandError(f"no node named {name!r} (known: {', '.join(cluster.known)})")
        if op == "maintenance-on":
            reg.maintenance.add(name)
            return f"{name} is in maintenance: nothing new is placed there and what runs there is left alone"
        reg.maintenance.discard(name)
        return f"{name} left maintenance"
    rec = reg.services.get(name)
    if rec is None:
        raise CommandError(f"no service named {name!r} in the registry (defined: "
                           f"{', '.join(sorted(reg.services)) or 'none'}; `clusterfw service apply FILE.toml`)")
    root = reg.root(name)
    if op == "start":
        rec.wanted = True
        _note(rec, now_ms, "start asked by the administrator")
        return f"{name} will be registered (`clusterfw service why {name}` says where)"
    if op == "stop":
        rec.wanted = False
        _note(rec, now_ms, "stop asked by the administrator")
        return f"{name} will be stopped and de-registered"
    if op == "remove":
        for s in reg.group(name):
            s.wanted, s.removing = False, True
        _note(rec, now_ms, "removal asked by the administrator")
        return f"{name} will be stopped and removed" + (
            f" with its children {', '.join(s.name for s in reg.group(name)[1:])}" if reg.children(name) else "")
    if op == "freeze":
        rec.frozen = True
        _note(rec, now_ms, "frozen by the administrator: nothing is started, stopped or moved")
        return f"{name} is frozen: nothing is started, stopped or moved until `clusterfw service unfreeze {name}`"
    if op == "unfreeze":
        rec.frozen = False
        _note(rec, now_ms, "unfrozen by the administrator")
        return f"{name} is unfrozen: each node checks what really runs before anything is started"
    if op == "clear":
        n = len(rec.failures) + (len(root.failures) if root is not rec else 0)
        rec.failures.clear()
        root.failures.clear()
        _note(rec, now_ms, "failures cleared by the administrator")
        return f"{name}: {n} failure record(s) cleared"
    if op == "move":
        if rec is not root:
            raise CommandError(f"{name} is a child of {root.name}: move the group with "
                               f"`clusterfw service move {root.name} --to {to}`")
        if root.definition.placement_policy is Placement.EVERY:
            raise CommandError(f"{name} runs on every allowable node (placement_policy = \"every\"): there is "
                               "nothing to move")
        ok = available(reg, root, cluster.known)
        if to not in cluster.known:
            raise CommandError(f"no node named {to!r} (known: {', '.join(cluster.known)})")
        if to not in ok:
            raise CommandError(f"{to} is not allowable for {name} (allowable_nodes/disallowable_nodes)")
        if to not in cluster.up:
            raise CommandError(f"{to} is not up at the services level; it must be joined to take {name}")
        if to in reg.maintenance:
            raise CommandError(f"{to} is in maintenance: `clusterfw node maintenance off {to}` first")
        if _failed(root, to):
            raise CommandError(f"{name} is marked failed on {to} ({root.failures[to].reason}): "
                               f"`clusterfw service clear {name}` first")
        if to in root.owners():
            return f"{name} already runs on {to}"
        root.target, root.target_why = to, "moved there by the administrator"
        _note(root, now_ms, f"move to {to} asked by the administrator")
        return f"{name} is moving to {to}"
    raise CommandError(f"unknown service command {op!r}")


def run_command(reg: Registry, op: str, args: Mapping[str, Any], cluster: Cluster) -> tuple[dict[str, Any], list[str]]:
    """An administrator's request from the API (``apply`` with ``defs``, or
    a ``command``), applied to ``reg`` in a round: the reply and the
    sentences to log."""
    try:
        if op == "apply":  # checked by the file's rules: a request is not trusted
            defs = svcdef_toml.from_registry(args.get("defs", []), "the apply request")
            changes = apply(reg, defs, cluster.now_ms)
            return {"ok": True, "changes": changes, "services": sorted(defs)}, changes
        text = command(reg, op, str(args.get("name", "")), cluster.now_ms, cluster, to=str(args.get("to", "")))
        return {"ok": True, "message": text}, [text]
    except (CommandError, DefinitionError) as exc:
        return {"ok": False, "error": str(exc)}, []


def round_wanted(reg: Registry, cluster: Cluster) -> bool:
    """Whether a decision round would change ``reg`` now (``decide`` on a
    copy makes a decision, or who is up at the services level changed)."""
    if not cluster.up and not cluster.present or not reg.services:
        return False
    return bool(decide(reg.copy(), cluster)) or sorted(cluster.up_keys().values()) != sorted(reg.up)


def round_maker(cluster: Cluster, ids: Mapping[str, int], me: str) -> str:
    """Who runs a round nobody has a report for: the lowest-id node that is
    up at the services level (``me`` when none is)."""
    return min(cluster.up, key=lambda n: ids.get(n, 999)) if cluster.up else me


def reconcile(reg: Registry, node: str, active: Callable[[str], bool], busy: Iterable[str],
              thawed: Iterable[str]) -> list[tuple[str, Action]]:
    """What really runs on ``node`` against what the registry says, for
    the services that are not ``busy`` (a job or a report outstanding) nor
    frozen: ``GONE`` (to report: registered here, not running), ``FOUND``
    (to report: runs here, just unfrozen: adopted) or ``STOP`` (a stray copy
    the registry does not place here: to stop).  Nothing on a node in
    maintenance."""
    if node in reg.maintenance:
        return []
    busy, thawed = frozenset(busy), frozenset(thawed)
    out: list[tuple[str, Action]] = []
    for name, rec in reg.services.items():
        if rec.frozen or name in busy:
            continue
        e = rec.nodes.get(node)
        running = active(name)
        if e is not None and e.state is SvcState.REGISTERED and not running:
            out.append((name, Action.GONE))
        elif e is None and running:
            out.append((name, Action.FOUND if name in thawed else Action.STOP))
    return out


# ------------------------------------------------------------------ local work
def local_work(reg: Registry, node: str, cluster: Cluster) -> list[Work]:
    """What ``node``'s executor must do now, parents before children."""
    out: list[Work] = []
    for rec in reg.services.values():
        if rec.frozen:
            continue
        e = rec.nodes.get(node)
        if e is not None:
            if e.state is SvcState.STARTING:
                out.append(Work(rec.name, Action.START))
            elif e.state is SvcState.STOPPING:
                out.append(Work(rec.name, Action.STOP))
            elif e.state is SvcState.RECOVERING:
                out.append(Work(rec.name, Action.RECOVERY, e.recovering_for))
            continue
        root = reg.root(rec.name)
        if (rec.definition.has_notify and node in cluster.up and node in available(reg, root, cluster.known)
                and any(x.state is SvcState.REGISTERED for x in rec.nodes.values())
                and rec.notified.get(node) != rec.serial):
            out.append(Work(rec.name, Action.NOTIFY))
    return out


# ------------------------------------------------------------------ views for people
def summary(reg: Registry, rec: ServiceRec, cluster: Cluster) -> dict[str, Any]:
    """The summary state, flags and per-node states (Tables 2-3)."""
    states = [e.state for e in rec.nodes.values()]
    state = SvcState.DEREGISTERED
    for s in (SvcState.RECOVERING, SvcState.STOPPING, SvcState.STARTING, SvcState.REGISTERED):
        if s in states:
            state = s
            break
    root = reg.root(rec.name)
    flags = []
    if root.transfer:
        flags.append("T")
    if (not root.nodes and root.wanted and maturity(reg, root, cluster) is not None
            and any(n in cluster.up for n in available(reg, root, cluster.known))):
        flags.append("M")
    if rec.definition.has_notify:
        flags.append("N")
    ok = available(reg, root, cluster.known)
    per_node = {}
    for n in cluster.known:
        e = rec.nodes.get(n)
        st = e.state.value if e else ("up" if n in cluster.present else "down")
        nflags = ["I"] if n in ok else []
        if _failed(root, n):
            nflags.append("F")
        if e is None and rec.notified.get(n) == rec.serial and rec.serial and n in cluster.present:
            st = "notified"
        per_node[n] = {"state": st, "flags": nflags}
    blocked = blocked_reason(reg, rec, cluster)
    return {"name": rec.name, "state": state.value, "owners": rec.owners(), "flags": flags,
            "nodes": per_node, "frozen": rec.frozen, "wanted": rec.wanted, "parent": rec.definition.parent,
            "waiting": waiting_for(reg, rec, cluster), "blocked": blocked}


def blocked_reason(reg: Registry, rec: ServiceRec, cluster: Cluster) -> str:
    root = reg.root(rec.name)
    if root.nodes or not root.wanted or root.frozen:
        return ""
    ok = [n for n in available(reg, root, cluster.known) if n in cluster.up and n not in reg.maintenance]
    failed = [n for n in ok if _failed(root, n)]
    if ok and len(failed) == len(ok):
        marks = "; ".join(f"{n}: {root.failures[n].reason}" for n in sorted(failed))
        return (f"blocked: it failed on every allowable node that is up ({marks}); "
                f"`clusterfw service clear {root.name}` to try again")
    return ""


def waiting_for(reg: Registry, rec: ServiceRec, cluster: Cluster) -> str:
    root = reg.root(rec.name)
    if rec.frozen or root.frozen:
        return "frozen: `clusterfw service unfreeze " + (rec.name if rec.frozen else root.name) + "`"
    if not rec.wanted:
        return "" if not rec.nodes else "its stop"
    if any(e.state is SvcState.RECOVERING for s in reg.group(root.name) for e in s.nodes.values()):
        return "the recovery of the forced-out node"
    if rec is not root:
        parent = reg.services[rec.definition.parent]
        if not any(e.state is SvcState.REGISTERED for e in parent.nodes.values()) and not rec.nodes:
            return f"its parent {parent.name} to be registered"
    if rec.nodes:
        e = next(iter(rec.nodes.values()))
        if e.state in (SvcState.STARTING, SvcState.STOPPING):
            return f"its {'start' if e.state is SvcState.STARTING else 'stop'} on {next(iter(rec.nodes))} to end"
        return ""
    m = maturity(reg, root, cluster)
    if m:
        return m
    b = blocked_reason(reg, rec, cluster)
    if b:
        return b
    if not candidates(reg, root, cluster):
        return "an allowable node to be up (none is up, or all are in maintenance)"
    return "the next decision round"


def why(reg: Registry, name: str, cluster: Cluster) -> list[str]:
    """``clusterfw service why``: where and why, every other node's rule, what it waits for, its history."""
    rec = reg.services[name]
    root = reg.root(name)
    d = root.definition
    lines: list[str] = []
    owners = rec.owners()
    if owners:
        last = next((t for _, t in reversed(rec.history) if t.startswith(("registered on", "starting on",
                                                                          "found running"))), "")
        lines.append(f"{name} is {rec.nodes[owners[0]].state.value} on {', '.join(owners)}"
                     + (f": {last}" if last else ""))
    else:
        lines.append(f"{name} is de-registered")
    if rec is not root:
        lines.append(f"it is a child of {rec.definition.parent}: it is placed with {root.name}, "
                     f"whose choosing factors apply")
    ok = available(reg, root, cluster.known)
    cands = candidates(reg, root, cluster)
    for n in cluster.known:
        if n in owners:
            continue
        if n in d.disallowable_nodes:
            r = "disallowed (disallowable_nodes)"
        elif n not in ok:
            r = "not allowable (allowable_nodes)"
        elif n not in cluster.up:
            r = "not up" if n not in cluster.present else "up but not joined at the services level"
        elif n in reg.maintenance:
            r = "in maintenance (`clusterfw node maintenance off " + n + "`)"
        elif _failed(root, n):
            r = f"{root.failures[n].reason} (marked failed: `clusterfw service clear {root.name}`)"
        elif d.placement_policy is Placement.EVERY:
            r = "a candidate: it will be started there"
        elif owners and n in cands:
            pos = cands.index(n) + 1
            if _pref_tier(root, n) < _pref_tier(root, owners[0]):
                if d.transfer_cost is TransferCost.COSTLY:
                    r = f"more preferred, but transfer_cost is costly: it stays on {owners[0]} while that runs"
                elif not _joined_after_placement(reg, root, n):
                    r = (f"more preferred, but it was already up when {root.name} was placed on {owners[0]}: "
                         "a free failback happens when a more preferred node joins")
                else:
                    up_s = (cluster.now_ms - reg.up_since.get(n, cluster.now_ms)) / 1000
                    r = (f"more preferred: it moves there once {n} has been up {d.failback_delay_s:g} s "
                         f"(up {up_s:.0f} s)")
            else:
                r = f"lower preference (candidate {pos} of {len(cands)})"
        elif not owners and n in cands:
            r = f"candidate {cands.index(n) + 1} of {len(cands)}"
        else:
            r = "not a candidate"
        lines.append(f"  {n}: {r}")
    w = waiting_for(reg, rec, cluster)
    if w:
        lines.append(f"waiting for: {w}")
    if rec.history:
        lines.append("history:")
        lines.extend(f"  {_clock(t)}  {text}" for t, text in rec.history)
    return lines


# ------------------------------------------------------------------ checks
class RuleBroken(AssertionError):
    pass


def check(reg: Registry, known: tuple[str, ...]) -> None:
    """The registry's own safety rules (ONE-OWNER, ALLOWED, WITH-PARENT)."""
    for rec in reg.services.values():
        root = reg.root(rec.name)
        if root.definition.placement_policy is Placement.ONE and len(rec.nodes) > 1:
            raise RuleBroken(f"one-owner: {rec.name} has entries on {sorted(rec.nodes)}")
        ok = root.definition.allowable(known) if root.definition.allowable_nodes != ALL_NODES else frozenset(known)
        for n, e in rec.nodes.items():
            if n not in ok and e.state is not SvcState.RECOVERING:
                raise RuleBroken(f"allowed: {rec.name} is {e.state.value} on {n}, which is not allowable")
        if rec is not root:
            parent = reg.services[rec.definition.parent]
            for n, e in rec.nodes.items():
                if e.state is SvcState.STARTING and (n not in parent.nodes
                                                     or parent.nodes[n].state is not SvcState.REGISTERED):
                    raise RuleBroken(f"with-parent: {rec.name} starts on {n} where {parent.name} is not registered")
