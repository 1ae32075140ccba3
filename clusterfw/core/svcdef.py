"""Service definitions: what an administrator writes in TOML and what the
registry stores (docs/services.md).

How this works
--------------
A ``ServiceDef`` is one ``[services.NAME]`` table, validated.  The field
names follow the registration & launch service's choosing parameters:
``allowable_nodes``, ``disallowable_nodes``, ``preferences`` with
``preference_order``, ``auto_register``, ``placement_policy``, the three
maturity fields, ``transfer_cost`` and ``parent``; then what to run: either
``unit`` (an installed systemd unit) or ``start_command`` (an argv, never a
shell string) with optional ``stop_command``, ``notify_command`` and
``recovery_command``; then the failure policy; then the service's events
(``events``: ``clusterfw.core.events.EventDef``, its event group, enabled on
a node while the service is registered there).

``parse(text, filename)`` (in ``svcdef_toml``) turns a file into
definitions or raises ``DefinitionError`` naming file, line, field and fix.
``to_json``/``from_json`` are the registry's form.  Pure: no I/O.
"""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .events import EventDef

NAME_MAX = 48
"""A service name's length limit (bytes of UTF-8); names are also DLM-safe."""


class PreferenceOrder(enum.StrEnum):
    ORDERED = "ordered"
    UNORDERED = "unordered"


class AutoRegister(enum.StrEnum):
    AUTO = "auto"
    MANUAL = "manual"


class Placement(enum.StrEnum):
    ONE = "one"
    EVERY = "every"


class TransferCost(enum.StrEnum):
    FREE = "free"
    COSTLY = "costly"


ALL_NODES = "*"


@dataclass(frozen=True)
class ServiceDef:
    name: str
    allowable_nodes: tuple[str, ...] | str = ALL_NODES
    """Node names, or ``"*"``: every node of the cluster's node table."""
    disallowable_nodes: tuple[str, ...] = ()
    preferences: tuple[str, ...] = ()
    preference_order: PreferenceOrder = PreferenceOrder.ORDERED
    auto_register: AutoRegister = AutoRegister.AUTO
    placement_policy: Placement = Placement.ONE
    maturity_count: int = 0
    """0: the count alone never makes the cluster mature for this service."""
    maturity_time_s: float = 0.0
    """0: time alone never does."""
    maturity_primary: str = ""
    """'': no primary node."""
    transfer_cost: TransferCost = TransferCost.COSTLY
    parent: str = ""
    unit: str = ""
    start_command: tuple[str, ...] = ()
    stop_command: tuple[str, ...] = ()
    notify_command: tuple[str, ...] = ()
    recovery_command: tuple[str, ...] = ()
    failure_threshold: int = 3
    """Runtime failures on one node (within ``failure_timeout_s``) after
    which the service moves away; 0: never move, always restart in place."""
    failure_timeout_s: float = 600.0
    """A failure (and a node's failed mark) expires after this; 0: never."""
    failback_delay_s: float = 10.0
    """A free transfer back to a more preferred node waits until that node
    has been up this long (the damping against a flapping node)."""
    events: tuple[EventDef, ...] = ()
    """The service's event group (docs/events.md); changing it never restarts the service."""
    source_line: int = field(default=0, compare=False)
    """Where the table starts in the file it came from (0: unknown)."""

    # -- derived -------------------------------------------------------------
    @property
    def has_notify(self) -> bool:
        return bool(self.notify_command)

    @property
    def has_recovery(self) -> bool:
        return bool(self.recovery_command)

    @property
    def maturity_applies(self) -> bool:
        return bool(self.maturity_count or self.maturity_time_s or self.maturity_primary)

    def allowable(self, known: tuple[str, ...] | frozenset[str]) -> frozenset[str]:
        """The nodes this service may ever run on: allowable minus disallowable
        (``known``: every node of the cluster's node table)."""
        base = set(known) if self.allowable_nodes == ALL_NODES else set(self.allowable_nodes)
        return frozenset(base - set(self.disallowable_nodes))

    # -- the registry's form ---------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "source_line":
                continue
            value = getattr(self, f.name)
            if value == f.default:
                continue
            if f.name == "events":
                out[f.name] = [e.to_json() for e in value]
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else (
                value.value if isinstance(value, enum.Enum) else value)
        out["name"] = self.name
        return out

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ServiceDef:
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in doc or f.name == "source_line":
                continue
            value = doc[f.name]
            if f.name == "allowable_nodes":
                value = ALL_NODES if value == ALL_NODES else tuple(value)
            elif f.name == "events":
                value = tuple(EventDef.from_json(e) for e in value)
            elif isinstance(value, list):
                value = tuple(value)
            kw[f.name] = value
        for name, enum_type in _ENUMS.items():
            if name in kw:
                kw[name] = enum_type(kw[name])
        return cls(**kw)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_ENUMS: dict[str, type[enum.StrEnum]] = {
    "preference_order": PreferenceOrder, "auto_register": AutoRegister,
    "placement_policy": Placement, "transfer_cost": TransferCost,
}

RESTART_FIELDS = frozenset({"unit", "start_command", "parent"})
"""Changing one of these on a running service restarts it (stop, then start
with the new definition); any other change -- ``events`` among them --
takes effect without a stop."""


class DefinitionError(ValueError):
    """A definition file is wrong: names the file, the line, the field and the fix."""

    def __init__(self, filename: str, line: int, field_name: str, problem: str, fix: str) -> None:
        self.filename, self.line, self.field, self.problem, self.fix = filename, line, field_name, problem, fix
        where = f"{filename}:{line}" if line else filename
        what = f" {field_name}:" if field_name else ""
        super().__init__(f"{where}:{what} {problem}" + (f" ({fix})" if fix else ""))
