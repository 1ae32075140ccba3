"""Events, their watchers' parameters, actions and event groups: pure, no I/O
(docs/events.md, "Events").

How this works
--------------
An **event** (``EventDef``) has a name unique within the cluster
(``SERVICE.EVENT``: a service's name is unique in the registry, and an
event's own part has no ``.``), the **watcher** that detects it, its **IN
parameters** (a fixed set of name-value pairs that define it; the watcher
compares them with what it sees) and an **action**: an argv list run when it
occurs.  What the watcher saw is an ``Occurrence``: the watcher's name and
its **OUT parameters** (name-value pairs, all strings).

Each watcher has a ``Schema``: its IN parameters -- each compared with one
OUT parameter, with a wildcard value that matches anything and a default
where the parameter may be left out -- and the names of its OUT parameters.
``matches(event, occurrence)`` is true when the occurrence comes from the
event's watcher and every IN parameter is its wildcard or equals its OUT
parameter.

An action's argv items may name parameters: ``${name}`` is the OUT value
when the watcher has an OUT parameter of that name, else the IN value;
``${in.name}`` is always the IN value; ``$$`` is one ``$``.  Any other ``$``
is an error, and so is a name the watcher does not have: ``action_problem``
finds both when the event is defined (naming the item and the name), so
``expand`` never meets one at run time.  Expansion is per argv item and
never goes through a shell: a value with spaces or quotes stays one
argument.

An **event group** (``EventGroup``) is a service's events.  It is enabled
on a node exactly while the service is registered there (its per-node state
is ``registered``), and disabled otherwise (``group_enabled``,
``enabled_groups``).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from .services import Registry

MEMBERSHIP = "membership"
UNIT = "unit"
ALL_NODES = "*"
ANY = "any"
ENABLED_STATE = "registered"
"""A group is enabled on a node while its service has this state there."""
EVENT_NAME_MAX = 32
"""The event's own part of its name (bytes)."""
EVENT_NAME_CHARS = "letters, digits, '_' and '-', not starting with '-'"
_EVENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*", re.ASCII)
_REF = re.compile(r"\$\{([^{}$]*)\}")
_PARAM_NAME = re.compile(r"(in\.)?([a-z][a-z0-9_]*)", re.ASCII)
IN_PREFIX = "in."
TRANSITIONS = ("join", "leave", "forced-leave")
UNIT_STATES = ("failed", "active", "inactive")


@dataclass(frozen=True)
class InParam:
    name: str
    kind: str
    """How a definition writes it: ``node`` (a node name or ``*``), ``unit``
    (a systemd service unit's name), ``choice`` (one of ``choices``)."""
    out: str
    """The OUT parameter it is compared with."""
    wildcard: str | None
    """The value that matches every occurrence (None: none)."""
    default: str | None
    """The value when a definition leaves it out (None: it must be given)."""
    choices: tuple[str, ...] = ()
    meaning: str = ""


@dataclass(frozen=True)
class Schema:
    watcher: str
    in_params: tuple[InParam, ...]
    out_params: tuple[str, ...]
    meaning: str

    def param(self, name: str) -> InParam | None:
        return next((p for p in self.in_params if p.name == name), None)

    @property
    def in_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.in_params)

    def refs(self) -> tuple[str, ...]:
        """Every name an action may use: ``${OUT}``, ``${IN}``, ``${in.IN}``."""
        plain = list(self.out_params) + [n for n in self.in_names if n not in self.out_params]
        return tuple(plain + [IN_PREFIX + n for n in self.in_names])


def one_of(name: str, out: str, choices: tuple[str, ...], meaning: str) -> InParam:
    """An IN parameter that is one of ``choices``, or ``any`` (its default)."""
    return InParam(name, "choice", out, ANY, ANY, choices + (ANY,), meaning=meaning)


SCHEMAS: dict[str, Schema] = {s.watcher: s for s in (
    Schema(MEMBERSHIP,
           (InParam("node", "node", "node", ALL_NODES, ALL_NODES, meaning="the node in transition, or * for any"),
            one_of("transition", "transition", TRANSITIONS, "join, leave, forced-leave, or any")),
           ("node", "transition", "epoch", "incarnation", "time"),
           "the joins, leaves and forced leaves this node's event manager is notified of (level 40)"),
    Schema(UNIT,
           (InParam("unit", "unit", "unit", None, None, meaning="a systemd service unit, NAME.service"),
            one_of("state", "active_state", UNIT_STATES, "the active state the unit enters: failed, active, "
                   "inactive, or any")),
           ("unit", "active_state", "sub_state", "result", "time"),
           "a systemd unit on this node entering an active state (systemd's D-Bus signals)"),
)}
"""The watchers, by the name a definition's ``watch`` gives."""


@dataclass(frozen=True)
class EventDef:
    name: str
    """``SERVICE.EVENT``: unique within the cluster."""
    watcher: str
    in_params: dict[str, str] = field(hash=False)
    """Every IN parameter of the watcher (defaults filled in)."""
    action: tuple[str, ...]

    @property
    def service(self) -> str:
        return self.name.rsplit(".", 1)[0]

    @property
    def short_name(self) -> str:
        return self.name.rsplit(".", 1)[1]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "watch": self.watcher, "in": dict(self.in_params), "action": list(self.action)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> EventDef:
        return cls(str(doc["name"]), str(doc["watch"]), {str(k): str(v) for k, v in doc.get("in", {}).items()},
                   tuple(str(a) for a in doc.get("action", [])))


@dataclass(frozen=True)
class EventGroup:
    service: str
    events: tuple[EventDef, ...]


@dataclass(frozen=True)
class Occurrence:
    watcher: str
    out: dict[str, str] = field(hash=False)
    """Every OUT parameter of the watcher."""


def event_name(service: str, event: str) -> str:
    return f"{service}.{event}"


def event_name_problem(name: str) -> str:
    """'' if ``name`` may be an event's own part, else what is wrong."""
    if not name:
        return "is empty"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > EVENT_NAME_MAX:
        return f"is {size} bytes long, more than {EVENT_NAME_MAX}"
    if name[0] == "-":
        return "starts with '-'"
    bad = next((c for c in name if _EVENT_NAME.fullmatch("a" + c) is None), "")
    return f"has {bad!r}, which is not allowed" if bad else ""


# ------------------------------------------------------------------ matching
def matches(event: EventDef, occurrence: Occurrence) -> bool:
    """The occurrence is one of ``event``: same watcher, and every IN
    parameter is its wildcard or equals the OUT parameter it is compared with."""
    schema = SCHEMAS.get(event.watcher)
    if schema is None or occurrence.watcher != event.watcher:
        return False
    for p in schema.in_params:
        want = event.in_params.get(p.name, p.default)
        if want is None:
            return False
        if want != p.wildcard and occurrence.out.get(p.out) != want:
            return False
    return True


# ---------------------------------------------------------------- actions
class TemplateError(ValueError):
    """An argv item with a ``$`` that is neither ``$$`` nor ``${name}``."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def parse_template(item: str) -> list[str | tuple[str]]:
    """The item as literal text and ``(name,)`` references, in order."""
    parts: list[str | tuple[str]] = []
    text: list[str] = []
    i = 0
    while i < len(item):
        c = item[i]
        if c != "$":
            text.append(c)
            i += 1
            continue
        if item.startswith("$$", i):
            text.append("$")
            i += 2
            continue
        m = _REF.match(item, i)
        if m is None:
            rest = item[i + 1:i + 2]
            word = re.match(r"[A-Za-z_][A-Za-z0-9_.]*", item[i + 1:])
            if rest == "{":
                raise TemplateError(f"'${{' at character {i + 1} is not closed",
                                    "close it: ${name}, or write $${ for a literal '${'")
            if word:
                raise TemplateError(f"'${word.group()}' is not a parameter reference",
                                    f"write ${{{word.group()}}} for the parameter, or $${word.group()} for the "
                                    f"literal text '${word.group()}'")
            raise TemplateError(f"a lone '$' at character {i + 1}", "write $$ for a literal '$'")
        if text:
            parts.append("".join(text))
            text = []
        parts.append((m.group(1),))
        i = m.end()
    if text:
        parts.append("".join(text))
    return parts


def action_problem(watcher: str, action: tuple[str, ...] | list[str]) -> tuple[int, str, str] | None:
    """(item number from 1, problem, fix) for the first argv item that
    cannot be expanded for ``watcher``'s events; None when all can."""
    schema = SCHEMAS[watcher]
    known = schema.refs()
    for index, item in enumerate(action, 1):
        try:
            parts = parse_template(item)
        except TemplateError as exc:
            return index, exc.problem, exc.fix
        for part in parts:
            if isinstance(part, str):
                continue
            name = part[0]
            if name in known:
                continue
            near = [k for k in known if name and k.startswith(name)][:1] or difflib.get_close_matches(name, known, 1)
            hint = f"did you mean ${{{near[0]}}}? " if near else ""
            return (index, f"'${{{name}}}' is not a parameter of the {watcher} watcher",
                    f"{hint}it has {', '.join('${' + k + '}' for k in known)}; write $$ for a literal '$'")
    return None


def expand(action: tuple[str, ...] | list[str], in_params: Mapping[str, str],
           out_params: Mapping[str, str]) -> tuple[str, ...]:
    """The argv to run: each item with its references replaced (see the
    module doc).  Raises ``KeyError`` for a name neither set has (a
    definition that ``action_problem`` accepted never does that)."""
    out: list[str] = []
    for item in action:
        pieces: list[str] = []
        for part in parse_template(item):
            if isinstance(part, str):
                pieces.append(part)
                continue
            m = _PARAM_NAME.fullmatch(part[0])
            if m is None:
                raise KeyError(part[0])
            name = m.group(2)
            if m.group(1):
                pieces.append(in_params[name])
            elif name in out_params:
                pieces.append(out_params[name])
            else:
                pieces.append(in_params[name])
        out.append("".join(pieces))
    return tuple(out)


def action_env(event: EventDef, out_params: Mapping[str, str]) -> dict[str, str]:
    """The variables an action gets on top of the event manager's:
    ``CLUSTERFW_EVENT``, ``CLUSTERFW_SERVICE``, ``CLUSTERFW_OUT_<NAME>``."""
    env = {"CLUSTERFW_EVENT": event.name, "CLUSTERFW_SERVICE": event.service}
    env.update({f"CLUSTERFW_OUT_{k.upper()}": v for k, v in out_params.items()})
    return env


# ------------------------------------------------------------------ groups
def group_enabled(state_on_node: str | None) -> bool:
    """A service's group is enabled on a node exactly while the service is
    registered there (``state_on_node``: its per-node state, None: no entry)."""
    return state_on_node == ENABLED_STATE


def enabled_groups(reg: Registry, node: str) -> list[EventGroup]:
    """The groups enabled on ``node``: the services registered there that
    define events, in the registry's order."""
    out = []
    for rec in reg.services.values():
        entry = rec.nodes.get(node)
        if rec.definition.events and group_enabled(None if entry is None else str(entry.state)):
            out.append(EventGroup(rec.name, rec.definition.events))
    return out


def watched(groups: list[EventGroup], watcher: str) -> list[EventDef]:
    """The enabled events of one watcher."""
    return [e for g in groups for e in g.events if e.watcher == watcher]
