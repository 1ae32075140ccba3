"""What a subsystem sees of the transition framework (docs/protocol.md §4), in-process
or over the local socket alike.

How this works
--------------
A subsystem registers a *level* and, per transition kind, a number of
*barriers*.  The daemon hands it ``Notification``s: one batch describing one
or more nodes' transitions at this level (each with its kind and barrier),
with the other members' states at this level as context (the patent's
Table 1).  The subsystem does its work and acknowledges the batch; the next
level (or barrier) is notified only after every member node's subsystem at
this level acknowledged.  A newer batch at the same level supersedes an
unacknowledged older one (a forced leave interrupting a graceful
transition): the subsystem must drop the older work promptly and ack only
the newest batch.

An in-process subsystem subclasses ``LocalSubsystem`` and is told
everything through one method, ``deliver(view, notification)``: the view the
core adopted, with this level's batch when the core notified one (typed:
kinds are ``Transition`` members, node ids come with names).  It is called from
the daemon's event dispatch and must not block (queue the work);
``ack(batch)`` may be called from any thread.  An external subsystem speaks
the same thing as JSON over the socket (``Notification.to_json``): the wire
format exists only at that edge.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable

from clusterfw.core.model import Kind, Registration, ViewRecord

class Transition(enum.StrEnum):
    """What a notification entry says happens to its node.  A ``str`` enum:
    it equals, prints and serialises as its wire name, so socket clients
    see the same strings as ever; in-process code compares members."""

    JOINING = "joining"
    LEAVING = "leaving"
    FORCED_LEAVING = "forced-leaving"

    @classmethod
    def of(cls, kind: Kind | str) -> Transition:
        """The transition of a core ``Kind`` or of a wire name (ValueError
        names the known ones)."""
        if isinstance(kind, Kind):
            return cls(kind.notification)
        try:
            return cls(kind)
        except ValueError:
            raise ValueError(f"unknown transition kind {kind!r} (known: {', '.join(t.value for t in cls)})") from None

    @property
    def core_kind(self) -> Kind:
        return _CORE_KIND[self]


_CORE_KIND = {Transition.of(kind): kind for kind in Kind}


@dataclass(frozen=True)
class Entry:
    node_id: int
    node: str  # the node's name
    kind: Transition  # a core Kind or a wire name is accepted too, and converted
    barrier: int

    def __post_init__(self) -> None:
        if not isinstance(self.kind, Transition):
            object.__setattr__(self, "kind", Transition.of(self.kind))


@dataclass(frozen=True)
class Notification:
    level: int
    batch: int
    epoch: int
    entries: tuple[Entry, ...]
    context: tuple[tuple[int, str, str], ...]  # (node id, name, state at this level) of the other members
    view: ViewRecord | None = field(default=None, compare=False)
    """The view the core adopted with this batch (in-process only; not on the wire)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "op": "notify", "level": self.level, "batch": self.batch, "epoch": self.epoch,
            "entries": [{"node": e.node, "id": e.node_id, "kind": e.kind.value, "barrier": e.barrier}
                        for e in self.entries],
            "context": [{"node": name, "id": node_id, "state": state} for node_id, name, state in self.context],
        }

    @classmethod
    def from_json(cls, message: dict[str, Any]) -> Notification:
        """The inverse of ``to_json`` (raises KeyError/TypeError/ValueError on a bad message)."""
        return cls(
            level=int(message["level"]), batch=int(message["batch"]), epoch=int(message["epoch"]),
            entries=tuple(Entry(int(e["id"]), str(e["node"]), Transition.of(str(e["kind"])), int(e["barrier"]))
                          for e in message["entries"]),
            context=tuple((int(c["id"]), str(c["node"]), str(c["state"])) for c in message["context"]))

    def describe(self) -> str:
        what = ", ".join(f"{e.node} {e.kind.value}#{e.barrier}" for e in self.entries) or "nothing"
        return f"batch {self.batch} (epoch {self.epoch}): {what}"


class LocalSubsystem:
    """Base of the in-process subsystems.  The daemon calls ``start`` with
    its ack function before the first ``deliver`` and ``stop`` at exit."""

    level: int = -1
    name: str = ""
    barriers: tuple[int, int, int] = (1, 1, 1)
    placeholder: bool = False
    """True for a stand-in that only acks (``clusterfw status`` shows ``placeholder``)."""

    def registration(self) -> Registration:
        return Registration(self.level, self.name, self.barriers)

    def start(self, ack: Callable[[int], None], log: Callable[[str], None]) -> None:
        raise NotImplementedError

    def deliver(self, view: ViewRecord | None, notification: Notification | None = None) -> None:
        """The one door in: ``view`` is the view the core adopted (None
        before the first); ``notification`` is this level's batch when the
        core notified one with it, else None (a view alone).  Must not
        block; ack the batch with the function given to ``start``."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError
