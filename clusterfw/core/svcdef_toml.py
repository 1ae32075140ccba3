"""Service definitions in TOML: ``parse(text, filename)`` turns a file into
``{name: ServiceDef}`` in file order, or raises ``DefinitionError`` naming
the file, the line, the field and the fix (docs/services.md, "Definitions").

How this works
--------------
``tomllib`` reads the text; a syntax error becomes a ``DefinitionError`` at
the line tomllib names.  tomllib gives no line numbers for values, so
``key_lines`` reads the same (by then known to be valid) text once more
with a small scanner that skips over values and records, for every table
header and every ``key =``, the full dotted path and the line where it
starts (multi-line arrays and strings start on the key's line).  Any
spelling finds its line: ``[services.web]`` headers, quoted names
(``[services."web"]``), dotted keys under ``[services]``
(``web.start_command = [...]``) and inline tables.

Each ``[services.NAME]`` table is then checked key by key (unknown keys get
the closest known one; ``[services.NAME.events.EVENT]`` tables are events,
checked against their watcher's schema in ``clusterfw.core.events``), then as a whole (what to run, preferences inside
the allowable nodes), then across the file (parents defined, no cycles,
children without choosing factors of their own).  The first problem found
is raised.  Pure: ``tomllib`` and string handling only, no I/O.
"""
from __future__ import annotations

import bisect
import difflib
import enum
import json
import math
import re
import tomllib
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

from . import events as ev
from .events import EventDef
from .model import NODE_NAME_MAX, NODE_NAME_PATTERN
from .svcdef import (ALL_NODES, NAME_MAX, AutoRegister, DefinitionError, Placement, PreferenceOrder, ServiceDef,
                     TransferCost)
from .text import printable

KeyPath = tuple[str, ...]

DURATION_S_MAX = 30 * 24 * 3600.0
"""The longest duration a definition may give (30 days)."""
COUNT_MAX = 255
"""maturity_count and failure_threshold are 0..this."""
UNIT_NAME_MAX = 255
"""systemd's longest unit name."""
DEFINITION_BYTES_MAX = 16 * 1024
"""One definition in the registry's JSON form: it travels to the daemon in
one message and lives in the registry on the shared disk."""

QUOTE_CHARS = 60
"""A value quoted in a message is cut short after this many characters."""
ARGV_EXAMPLE = '["/usr/bin/foo", "--flag"]'
MINIMAL_EXAMPLE = ('[services.web] with start_command = ["/usr/bin/python3", "-m", "http.server", "8080"], '
                   'or unit = "nginx.service" instead of start_command')
NAME_CHARS = "letters, digits, '_', '.' and '-', not starting with '-' or '.'"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", re.ASCII)
_UNIT = re.compile(r"[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.service", re.ASCII)
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", re.ASCII)
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_SCALAR = re.compile(r"[^,\]}#\r\n]+")
_DECODE_AT = re.compile(r"\(at line ([0-9]+), column ([0-9]+)\)$")
_SHELL_CHARS = re.compile(r"""[|&;<>()$`\\"'*?~{}\[\]#]""")


# --------------------------------------------------------------- positions
class _Unscannable(Exception):
    """The scanner met something it does not expect (it only ever reads
    text that tomllib accepted); positions are then unknown."""


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.lines: dict[KeyPath, int] = {}

    def record(self, path: KeyPath, pos: int) -> None:
        line = bisect.bisect_left(self.newlines, pos) + 1
        for n in range(1, len(path) + 1):  # a dotted key defines its tables there too
            self.lines.setdefault(path[:n], line)

    def peek(self, n: int = 1) -> str:
        return self.s[self.i:self.i + n]

    def blank(self, newlines: bool) -> None:
        s, n = self.s, len(self.s)
        while self.i < n:
            c = s[self.i]
            if c in " \t" or (newlines and c in "\r\n"):
                self.i += 1
            elif c == "#" and newlines:
                end = s.find("\n", self.i)
                self.i = n if end < 0 else end
            else:
                break

    def expect(self, token: str) -> None:
        self.blank(False)
        if not self.s.startswith(token, self.i):
            raise _Unscannable(self.i)
        self.i += len(token)

    def basic_string(self) -> None:
        """From the opening quote of a one-line basic string to after its end."""
        s, j = self.s, self.i + 1
        while j < len(s) and s[j] != '"':
            j += 2 if s[j] == "\\" else 1
        if j >= len(s):
            raise _Unscannable(self.i)
        self.i = j + 1

    def literal_string(self) -> str:
        end = self.s.find("'", self.i + 1)
        if end < 0:
            raise _Unscannable(self.i)
        text = self.s[self.i + 1:end]
        self.i = end + 1
        return text

    def multiline_string(self, quote: str) -> None:
        s, j, close = self.s, self.i + 3, quote * 3
        while not s.startswith(close, j):
            if j >= len(s):
                raise _Unscannable(self.i)
            j += 2 if quote == '"' and s[j] == "\\" else 1
        j += 3
        for _ in range(2):  # up to two quotes right before the delimiter belong to the string
            if s.startswith(quote, j):
                j += 1
        self.i = j

    def key(self) -> KeyPath:
        parts: list[str] = []
        while True:
            self.blank(False)
            c, start = self.peek(), self.i
            if c == '"':
                self.basic_string()
                parts.append(str(tomllib.loads("k = " + self.s[start:self.i])["k"]))
            elif c == "'":
                parts.append(self.literal_string())
            else:
                m = _BARE_KEY.match(self.s, self.i)
                if m is None:
                    raise _Unscannable(self.i)
                parts.append(m.group())
                self.i = m.end()
            self.blank(False)
            if self.peek() != ".":
                return tuple(parts)
            self.i += 1

    def value(self, path: KeyPath | None) -> None:
        self.blank(False)
        c = self.peek()
        if self.peek(3) in ('"""', "'''"):
            self.multiline_string(c)
        elif c == '"':
            self.basic_string()
        elif c == "'":
            self.literal_string()
        elif c == "[":
            self.i += 1
            self.items("]", lambda: self.value(None), newlines=True)
        elif c == "{":
            self.i += 1
            self.items("}", lambda: self.pair(path), newlines=False)
        else:
            m = _SCALAR.match(self.s, self.i)
            if m is None:
                raise _Unscannable(self.i)
            self.i = m.end()

    def items(self, close: str, item: Callable[[], None], newlines: bool) -> None:
        while True:
            self.blank(newlines)
            if self.peek() == close:
                self.i += 1
                return
            before = self.i
            item()
            self.blank(newlines)
            if self.peek() == ",":
                self.i += 1
            if self.i == before:
                raise _Unscannable(self.i)

    def pair(self, table: KeyPath | None) -> None:
        start = self.i
        key = self.key()
        self.expect("=")
        path = None if table is None else table + key
        if path is not None:
            self.record(path, start)
        self.value(path)

    def document(self) -> dict[KeyPath, int]:
        table: KeyPath = ()
        while True:
            self.blank(True)
            if self.i >= len(self.s):
                return self.lines
            start = self.i
            if self.peek(2) == "[[":
                self.i += 2
                table = self.key()
                self.expect("]]")
                self.record(table, start)
            elif self.peek() == "[":
                self.i += 1
                table = self.key()
                self.expect("]")
                self.record(table, start)
            else:
                self.pair(table)
            if self.i == start:
                raise _Unscannable(self.i)


def key_lines(text: str) -> dict[KeyPath, int]:
    """For valid TOML ``text``: the line (from 1) where each table and key
    is first given, by full dotted path (``("services", "web",
    "start_command")``); tables a dotted key or a sub-table creates
    implicitly get that line.  Empty where the text cannot be scanned."""
    try:
        return _Scanner(text).document()
    except (_Unscannable, tomllib.TOMLDecodeError):
        return {}


# ------------------------------------------------------------------ errors
def _q(value: object) -> str:
    """A value as a message quotes it: strings in single quotes, escaped,
    and cut short past ``QUOTE_CHARS``."""
    text = printable(value)
    if len(text) > QUOTE_CHARS:
        text = text[:QUOTE_CHARS - 3] + "..."
    return f"'{text}'" if isinstance(value, str) else text


def _toml(value: str) -> str:
    """A string as TOML writes it (for the fixes)."""
    return printable(json.dumps(value, ensure_ascii=False))


def _header(name: str) -> str:
    """The table header of a service (its name in quotes where TOML needs them)."""
    return f"[services.{name}]" if _BARE_KEY.fullmatch(name) else f"[services.{_toml(name)}]"


def _toml_list(values: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(_toml(v) for v in values) + "]"


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value!r})"
    if isinstance(value, str):
        return f"a string ({_q(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return f"a date/time ({value})"


@dataclass
class _Where:
    filename: str
    lines: dict[KeyPath, int]

    def line(self, path: KeyPath) -> int:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return 0

    def fail(self, path: KeyPath, field_name: str, problem: str, fix: str) -> NoReturn:
        raise DefinitionError(self.filename, self.line(path), printable(field_name), problem, fix)


Convert = Callable[[_Where, KeyPath, Any], Any]


# -------------------------------------------------------------- one value
def _name_problem(name: str, limit: int) -> str:
    if not name:
        return "is empty"
    if len(name.encode("utf-8", "surrogatepass")) > limit:
        return f"is {len(name.encode('utf-8', 'surrogatepass'))} bytes long, more than {limit}"
    if name[0] in "-.":
        return f"starts with {_q(name[0])}"
    bad = next((c for c in name if _NAME.fullmatch("a" + c) is None), "")
    return f"has {_q(bad)}, which is not allowed" if bad else ""


def _node(w: _Where, path: KeyPath, value: Any) -> str:
    key = path[2]
    if not isinstance(value, str):
        example = f'{key} = "n1"' if key == "maturity_primary" else f'{key} = ["n1", "n2"]'
        w.fail(path, key, f"a node name must be a string, not {_kind(value)}", f"write names in quotes: {example}")
    if value == ALL_NODES:
        w.fail(path, key, f"'*' (every node) is not allowed in {key}",
               'only allowable_nodes may be "*", and only as its whole value: allowable_nodes = "*"')
    problem = _name_problem(value, NODE_NAME_MAX)
    if not problem and NODE_NAME_PATTERN.fullmatch(value) is None:
        problem = "is not a node name"
    if problem:
        w.fail(path, key, f"node name {_q(value)} {problem}",
               f"a node name is 1..{NODE_NAME_MAX} characters from a-z 0-9 and '-', starting with a letter or "
               "digit, as in the node table ('clusterfw node list' shows them)")
    return value


def _nodes(w: _Where, path: KeyPath, value: Any) -> tuple[str, ...]:
    key = path[2]
    if not isinstance(value, list):
        example = f"{key} = {_toml_list([value])}" if isinstance(value, str) and value != ALL_NODES \
            else f'{key} = ["n1", "n2"]'
        w.fail(path, key, f"must be a list of node names, not {_kind(value)}", f"write {example}")
    out = tuple(_node(w, path, v) for v in value)
    dup = next((n for i, n in enumerate(out) if n in out[:i]), None)
    if dup is not None:
        w.fail(path, key, f"node {_q(dup)} is listed twice", f"list each node once in {key}")
    return out


def _allowable(w: _Where, path: KeyPath, value: Any) -> tuple[str, ...] | str:
    if value == ALL_NODES:
        return ALL_NODES
    if isinstance(value, list) and ALL_NODES in value:
        w.fail(path, path[2], "'*' (every node) must be the whole value, not a list item",
               'write allowable_nodes = "*" for every node, or list the node names')
    nodes = _nodes(w, path, value)
    if not nodes:
        w.fail(path, path[2], "an empty list allows no node, so the service could never run",
               'list the nodes it may run on, or write allowable_nodes = "*" for every node')
    return nodes


def _primary(w: _Where, path: KeyPath, value: Any) -> str:
    return "" if value == "" else _node(w, path, value)


def _choice(w: _Where, path: KeyPath, value: Any, allowed: list[str]) -> str:
    """``value`` if it is one of ``allowed``; else the error, with the closest one."""
    if isinstance(value, str) and value in allowed:
        return value
    key = path[-1]
    choices = " or ".join(_toml(a) for a in allowed)
    near = difflib.get_close_matches(value.lower(), allowed, 1, 0.5) if isinstance(value, str) else []
    hint = f"did you mean {_toml(near[0])}? " if near else ""
    w.fail(path, key, f"{_kind(value)} is not one of {', '.join(map(_q, allowed))}", f"{hint}write {key} = {choices}")


def _enum(kind: type[enum.StrEnum]) -> Convert:
    allowed = [m.value for m in kind]

    def convert(w: _Where, path: KeyPath, value: Any) -> enum.StrEnum:
        return kind(_choice(w, path, value, allowed))
    return convert


def _count(w: _Where, path: KeyPath, value: Any) -> int:
    key = path[2]
    if isinstance(value, bool) or not isinstance(value, int):
        w.fail(path, key, f"must be a whole number, not {_kind(value)}", f"write {key} = 3, a number 0..{COUNT_MAX}")
    if not 0 <= value <= COUNT_MAX:
        w.fail(path, key, f"{value} is out of range", f"use 0..{COUNT_MAX}")
    return value


def _duration(w: _Where, path: KeyPath, value: Any) -> float:
    key = path[2]
    fix = f'write a duration such as {key} = "30s": "500ms", "30s", "5m", "1h", or a number of seconds'
    if isinstance(value, str):
        m = _DURATION.fullmatch(value.strip())
        if value.strip().startswith("-") and _DURATION.fullmatch(value.strip()[1:]):
            w.fail(path, key, f"a negative duration ({_q(value)})", "use 0 or more seconds")
        if m is None:
            bare = re.fullmatch(r"[0-9]+(\.[0-9]+)?", value.strip(), re.ASCII)
            w.fail(path, key, f"{_kind(value)} is not a duration",
                   f'a duration in a string needs its unit: {key} = "{value.strip()}s", or write the seconds '
                   f"as a number without quotes" if bare else fix)
        number, unit = float(m.group(1)), m.group(2)
        seconds = number / 1000 if unit == "ms" else number * _DURATION_UNITS[unit]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            w.fail(path, key, f"{_kind(value)} is not a duration", fix)
        seconds = float(value)
    else:
        w.fail(path, key, f"{_kind(value)} is not a duration", fix)
    if seconds < 0:
        w.fail(path, key, f"a negative duration ({value})", "use 0 or more seconds")
    if seconds > DURATION_S_MAX:
        w.fail(path, key, f"{_q(value) if isinstance(value, str) else value} is more than 30 days",
               'use at most 30 days, "720h"')
    return seconds


def _argv(w: _Where, path: KeyPath, value: Any) -> tuple[str, ...]:
    key = path[-1]
    if isinstance(value, str):
        words = value.split()
        example = _toml_list(words) if words and not _SHELL_CHARS.search(value) else ARGV_EXAMPLE
        w.fail(path, key, f"must be an argv list, not {_kind(value)}",
               f"write an argv list such as {key} = {example}; clusterfw never runs a shell string: "
               "put pipes and redirections in a script, and run the script")
    if not isinstance(value, list):
        w.fail(path, key, f"must be an argv list, not {_kind(value)}",
               f"write an argv list such as {key} = {ARGV_EXAMPLE}")
    if not value:
        w.fail(path, key, "is an empty argv list: there is no program to run",
               f"name the program and its arguments, such as {key} = {ARGV_EXAMPLE}, or leave {key} out")
    for i, arg in enumerate(value):
        if not isinstance(arg, str):
            w.fail(path, key, f"item {i + 1} is {_kind(arg)}: every argv item is a string",
                   f"put it in quotes, such as {key} = {ARGV_EXAMPLE}")
        if "\0" in arg:
            w.fail(path, key, f"item {i + 1} holds a NUL character, which no argument can", "remove it")
    if not value[0].strip():
        w.fail(path, key, "the program (the first item) is empty",
               f"the first item names the program: {key} = {ARGV_EXAMPLE}")
    return tuple(value)


def _unit(w: _Where, path: KeyPath, value: Any) -> str:
    unit = _unit_name(w, path, value)
    if unit.startswith("clusterfw"):
        w.fail(path, "unit", f"{_q(unit)} is one of the cluster's own units", _UNIT_FIX)
    return unit


_UNIT_FIX = 'name an installed systemd service unit: unit = "nginx.service"; systemctl list-unit-files lists them'


def _unit_name(w: _Where, path: KeyPath, value: Any) -> str:
    """A unit that can run (or be watched): NAME.service, no template."""
    fix = _UNIT_FIX
    if not isinstance(value, str):
        w.fail(path, "unit", f"must be a unit name, not {_kind(value)}", fix)
    if not value.endswith(".service"):
        w.fail(path, "unit", f"{_q(value)} is not a service unit (a name ending in '.service')",
               f'write unit = {_toml(value.rsplit(".", 1)[0] + ".service") if value else _toml("nginx.service")}')
    if "/" in value or _UNIT.fullmatch(value) is None or len(value.encode()) > UNIT_NAME_MAX:
        w.fail(path, "unit", f"{_q(value)} is not a plain unit name",
               "a unit name has no directory and no spaces, at most 255 characters: " + fix.split(": ", 1)[1])
    if value.endswith("@.service"):
        w.fail(path, "unit", f"{_q(value)} is a template, not a unit that can run",
               f'name an instance of it: unit = {_toml(value.replace("@.service", "@NAME.service"))}')
    return str(value)


def _service_name(w: _Where, path: KeyPath, value: Any, key: str = "parent") -> str:
    if not isinstance(value, str):
        w.fail(path, key, f"must be a service's name, not {_kind(value)}", f'write {key} = "db"')
    problem = _name_problem(value, NAME_MAX)
    if problem:
        w.fail(path, key, f"service name {_q(value)} {problem}",
               f"a service name is 1..{NAME_MAX} characters: {NAME_CHARS}")
    return value


# ---------------------------------------------------------------- events
EVENT_EXAMPLE = '[services.NAME.events.peer-down] with watch = "membership", transition = "forced-leave", ' \
                'action = ["/usr/local/bin/page", "${node}"]'
EVENT_KEYS = ("watch", "action")
"""The keys of every event table; the rest are its watcher's IN parameters."""


def _events(w: _Where, path: KeyPath, value: Any) -> tuple[EventDef, ...]:
    service = path[1]
    if not isinstance(value, dict):
        w.fail(path, "events", f"must be tables of events, not {_kind(value)}", f"write each event as {EVENT_EXAMPLE}")
    return tuple(_event(w, path + (name,), service, name, table) for name, table in value.items())


def _event(w: _Where, here: KeyPath, service: str, name: str, table: Any) -> EventDef:
    problem = ev.event_name_problem(name)
    if problem:
        w.fail(here, name, f"event name {_q(name)} {problem}",
               f"an event's name is 1..{ev.EVENT_NAME_MAX} characters: {ev.EVENT_NAME_CHARS}; its name in the "
               f"cluster is {_q(service)} + '.' + it")
    full = ev.event_name(service, name)
    if not isinstance(table, dict):
        w.fail(here, name, f"event {_q(full)} is {_kind(table)}, not a table",
               f"write [services.{service}.events.{name}] with watch = \"membership\" and action = {ARGV_EXAMPLE}")
    watchers = " or ".join(_toml(k) for k in ev.SCHEMAS)
    if "watch" not in table:
        w.fail(here, "watch", f"event {_q(full)} names no watcher", f"add watch = {watchers}")
    watch = table["watch"]
    if not isinstance(watch, str) or watch not in ev.SCHEMAS:
        near = difflib.get_close_matches(watch.lower(), list(ev.SCHEMAS), 1, 0.5) if isinstance(watch, str) else []
        hint = f"did you mean {_toml(near[0])}? " if near else ""
        w.fail(here + ("watch",), "watch", f"{_kind(watch)} is not a watcher", f"{hint}write watch = {watchers}")
    schema = ev.SCHEMAS[watch]
    given: dict[str, str] = {}
    for key, value in table.items():
        if key in EVENT_KEYS:
            continue
        param = schema.param(key)
        if param is None:
            _unknown_in_param(w, here + (key,), schema, key)
        given[key] = _in_value(w, here + (key,), param, value)
    in_params: dict[str, str] = {}
    for param in schema.in_params:
        value = given.get(param.name, param.default)
        if value is None:
            w.fail(here, param.name, f"event {_q(full)} has no {param.name}: the {watch} watcher needs {param.meaning}",
                   f'add {param.name} = "nginx.service": the unit to watch (under systemd a service with a '
                   f'start_command runs as {_toml("clusterfw-svc-" + service + ".service")})'
                   if param.kind == "unit" else f"add {param.name} = ...")
        in_params[param.name] = value
    if "action" not in table:
        w.fail(here, "action", f"event {_q(full)} has no action",
               f"add action = {ARGV_EXAMPLE}: the command run when the event occurs")
    action = _argv(w, here + ("action",), table["action"])
    bad = ev.action_problem(watch, action)
    if bad is not None:
        index, problem, fix = bad
        w.fail(here + ("action",), "action", f"item {index}: {problem}", fix)
    return EventDef(full, watch, in_params, action)


def _unknown_in_param(w: _Where, path: KeyPath, schema: ev.Schema, key: str) -> NoReturn:
    known = list(schema.in_names) + list(EVENT_KEYS)
    near = difflib.get_close_matches(key, known, 1)
    other = next((s.watcher for s in ev.SCHEMAS.values() if s is not schema and key in s.in_names), "")
    if other:
        fix = f"the {schema.watcher} watcher's IN parameters are {', '.join(schema.in_names)}; {key} is the " \
              f"{other} watcher's (watch = {_toml(other)})"
    elif near:
        fix = f"did you mean {_q(near[0])}?"
    else:
        fix = f"the keys of a {schema.watcher} event are {', '.join(known)}"
    w.fail(path, key, f"is not an IN parameter of the {schema.watcher} watcher", fix)


def _in_value(w: _Where, path: KeyPath, param: ev.InParam, value: Any) -> str:
    key = param.name
    if param.kind == "unit":
        return _unit_name(w, path, value)
    if param.kind == "node":
        if value == ev.ALL_NODES:
            return ev.ALL_NODES
        fix = (f'write {key} = "n2" for one node, or {key} = "*" for any; a node name is 1..{NODE_NAME_MAX} '
               "characters from a-z 0-9 and '-', starting with a letter or digit ('clusterfw node list')")
        if not isinstance(value, str):
            w.fail(path, key, f"must be a node name or \"*\", not {_kind(value)}", fix)
        problem = _name_problem(value, NODE_NAME_MAX)
        if problem or NODE_NAME_PATTERN.fullmatch(value) is None:
            w.fail(path, key, f"node name {_q(value)} {problem or 'is not a node name'}", fix)
        return value
    return _choice(w, path, value, list(param.choices))


@dataclass(frozen=True)
class Field:
    attr: str
    """The ServiceDef attribute."""
    convert: Convert
    choosing: bool = False
    """A choosing factor: a child takes its parent's, so it must not set it."""


FIELDS: dict[str, Field] = {
    "allowable_nodes": Field("allowable_nodes", _allowable, choosing=True),
    "disallowable_nodes": Field("disallowable_nodes", _nodes, choosing=True),
    "preferences": Field("preferences", _nodes, choosing=True),
    "preference_order": Field("preference_order", _enum(PreferenceOrder), choosing=True),
    "auto_register": Field("auto_register", _enum(AutoRegister), choosing=True),
    "placement_policy": Field("placement_policy", _enum(Placement), choosing=True),
    "maturity_count": Field("maturity_count", _count, choosing=True),
    "maturity_time": Field("maturity_time_s", _duration, choosing=True),
    "maturity_primary": Field("maturity_primary", _primary, choosing=True),
    "transfer_cost": Field("transfer_cost", _enum(TransferCost), choosing=True),
    "failback_delay": Field("failback_delay_s", _duration, choosing=True),
    "parent": Field("parent", lambda w, p, v: "" if v == "" else _service_name(w, p, v)),
    "unit": Field("unit", _unit),
    "start_command": Field("start_command", _argv),
    "stop_command": Field("stop_command", _argv),
    "notify_command": Field("notify_command", _argv),
    "recovery_command": Field("recovery_command", _argv),
    "failure_threshold": Field("failure_threshold", _count),
    "failure_timeout": Field("failure_timeout_s", _duration),
    "events": Field("events", _events),
}
"""Every key a ``[services.NAME]`` table may hold, in the order the docs list them."""


def _unknown_key(w: _Where, path: KeyPath, value: Any) -> NoReturn:
    key = path[2]
    if key == "type":
        what = f"resource type {_q(value)}" if isinstance(value, str) else "resource types"
        w.fail(path, key, f"{what} is not available in this version",
               "use start_command/stop_command or unit, and leave type out")
    if key.endswith("_s") and key[:-2] in FIELDS:
        given = value if isinstance(value, (int, float)) and not isinstance(value, bool) else '"30s"'
        w.fail(path, key, "is not a key: durations are written without '_s'",
               f"write {key[:-2]} = {given}: a duration such as \"500ms\", \"30s\", \"5m\", \"1h\", "
               "or a number of seconds")
    if key in ("name", "source_line"):
        w.fail(path, key, "is not a key: a service's name is its table's", "write [services.NAME] and leave it out")
    near = difflib.get_close_matches(key, list(FIELDS), 1)
    w.fail(path, key, "is not a key of a service definition",
           f"did you mean {_q(near[0])}?" if near else f"the keys are {', '.join(FIELDS)}")


# ------------------------------------------------------------ one service
def _service(w: _Where, name: str, table: Any) -> ServiceDef:
    here = ("services", name)
    _service_name(w, here, name, "name")
    if not isinstance(table, dict):
        form = "an array of tables ([[services.NAME]])" if isinstance(table, list) and table and all(
            isinstance(t, dict) for t in table) else _kind(table)
        w.fail(here, name, f"service {_q(name)} is {form}, not one table",
               f"write one {_header(name)} table with its keys below it")
    kw: dict[str, Any] = {}
    for key, value in table.items():
        spec = FIELDS.get(key)
        if spec is None:
            _unknown_key(w, here + (key,), value)
        kw[spec.attr] = spec.convert(w, here + (key,), value)
    d = ServiceDef(name, source_line=w.line(here), **kw)
    _check_whole(w, d, table)
    size = len(json.dumps(d.to_json()))
    if size > DEFINITION_BYTES_MAX:
        w.fail(here, name, f"service {_q(name)} is {size} bytes long as the registry stores it, more than "
               f"{DEFINITION_BYTES_MAX}", "shorten its commands: put long command lines in a script")
    return d


def _check_whole(w: _Where, d: ServiceDef, table: dict[str, Any]) -> None:
    here = ("services", d.name)
    if "unit" in table and "start_command" in table:
        later = max(("unit", "start_command"), key=lambda k: w.line(here + (k,)))
        w.fail(here + (later,), later, f"service {_q(d.name)} gives both unit and start_command",
               "keep one: unit runs an installed systemd unit, start_command an argv list; "
               "stop, notify and recovery commands may go with either")
    if not d.unit and not d.start_command:
        w.fail(here, "start_command", f"service {_q(d.name)} has nothing to run: neither start_command nor unit",
               f"add start_command = {ARGV_EXAMPLE}, an argv list, or unit = \"nginx.service\", "
               "an installed systemd unit")
    explicit = d.allowable_nodes != ALL_NODES
    if explicit and not set(d.allowable_nodes) - set(d.disallowable_nodes):
        w.fail(here + ("disallowable_nodes",), "disallowable_nodes",
               f"service {_q(d.name)}: every allowable node is disallowable, so it could never run",
               "disallow fewer nodes or allow more")
    picked = [("preferences", n) for n in d.preferences] + [("maturity_primary", d.maturity_primary)] * bool(
        d.maturity_primary)
    for key, node in picked:
        if node in d.disallowable_nodes:
            w.fail(here + (key,), key, f"service {_q(d.name)}: {key} names {_q(node)}, which is disallowable",
                   f"remove {_q(node)} from {key} or from disallowable_nodes")
        if explicit and node not in d.allowable_nodes:
            w.fail(here + (key,), key, f"service {_q(d.name)}: {key} names {_q(node)}, which is not allowable",
                   f"add {_q(node)} to allowable_nodes or remove it from {key}")


# ---------------------------------------------------------------- the file
def _syntax_error(exc: tomllib.TOMLDecodeError, text: str, filename: str) -> DefinitionError:
    message = str(exc)
    m = _DECODE_AT.search(message)
    line = int(m.group(1)) if m else max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
    problem = _DECODE_AT.sub("", message).replace("(at end of document)", "").strip()
    src = text.split("\n")[line - 1] if line <= text.count("\n") + 1 else ""
    key = re.match(r"\s*([A-Za-z0-9_.-]+)\s*=", src, re.ASCII)
    fixes = {
        "Invalid value": 'strings need quotes: preference_order = "ordered"; lists need brackets: '
                         'preferences = ["n1", "n2"]',
        "Cannot overwrite": "give each key once per table, and each [services.NAME] table once per file",
        "Cannot declare": "give each key once per table, and each [services.NAME] table once per file",
        "Unterminated string": "close the string with the quote that opened it",
        "Illegal character '\\n'": 'close the string with the quote that opened it, on the same line; '
                                    'a string over several lines is written in triple quotes',
        "Illegal character": "write a control character in a string as an escape, such as \\u0007",
        "Unclosed array": "close the list with ']'",
        "Expected '=' after a key": 'write key = value, such as unit = "nginx.service"',
    }
    fix = next((f for p, f in fixes.items() if problem.startswith(p)),
               'write TOML: a [services.NAME] line, then key = value lines, such as unit = "nginx.service"')
    return DefinitionError(filename, line, key.group(1) if key else "", f"not valid TOML: {problem}", fix)


def parse(text: str, filename: str) -> dict[str, ServiceDef]:
    """The services a TOML file defines, in file order; ``DefinitionError``
    (file, line, field, problem, fix) for the first thing wrong with it."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(exc, text, filename) from None
    w = _Where(filename, key_lines(text))
    for key in doc:
        if key != "services":
            near = difflib.get_close_matches(key, ["services"], 1)
            w.fail((key,), key, "is not a top-level key: a file holds [services.NAME] tables only",
                   "did you mean 'services'?" if near else f"define each service as {MINIMAL_EXAMPLE}")
    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        line = w.line(("services",)) or 1
        problem = "defines no service" if services is None or services == {} else \
            f"services is {_kind(services)}, not tables"
        raise DefinitionError(filename, line, "services", problem, f"define each service as {MINIMAL_EXAMPLE}")
    defs = {name: _service(w, name, table) for name, table in services.items()}
    _check_groups(w, defs, services)
    return defs


def _check_groups(w: _Where, defs: dict[str, ServiceDef], tables: dict[str, dict[str, Any]]) -> None:
    for name, d in defs.items():
        at = ("services", name, "parent")
        if d.parent == name:
            w.fail(at, "parent", f"service {_q(name)} is its own parent", 'leave parent out, or write parent = ""')
        if d.parent and d.parent not in defs:
            w.fail(at, "parent", f"service {_q(name)}: parent {_q(d.parent)} is not defined in this file",
                   f"define {_header(d.parent)} in the same file: a parent is applied with its children")
    for name in defs:
        chain, cur = [name], defs[name].parent
        while cur and cur not in chain:
            chain.append(cur)
            cur = defs[cur].parent
        if cur == name:
            w.fail(("services", name, "parent"), "parent",
                   f"parent cycle: {' -> '.join(chain + [name])}", "remove parent from one of them")
    for name, d in defs.items():
        if not d.parent:
            continue
        root = d.parent
        while defs[root].parent:
            root = defs[root].parent
        for key in tables[name]:
            if FIELDS[key].choosing:
                w.fail(("services", name, key), key,
                       f"service {_q(name)} has parent {_q(d.parent)}: children follow their parent's placement "
                       "and have no choosing factors of their own",
                       f"remove {key} here; set it on the root service {_q(root)}")


_KEY_OF = {spec.attr: key for key, spec in FIELDS.items()}


def from_registry(docs: Any, source: str) -> dict[str, ServiceDef]:
    """Definitions in the registry's JSON form (``ServiceDef.to_json``), as
    a client sends them to the daemon, checked by the same rules as a file,
    one definition at a time (the client checked the file as a whole):
    ``DefinitionError`` naming ``source``, the service and the field.  So a
    hand-made or damaged request never puts a definition into the registry
    that a file could not."""
    w = _Where(source, {})
    if not isinstance(docs, list):
        w.fail((), "defs", f"the definitions are {_kind(docs)}, not a list", "send a list of definitions")
    out: dict[str, ServiceDef] = {}
    for doc in docs:
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
            w.fail((), "name", "a definition is not a table with a name", "send ServiceDef.to_json() documents")
        table = {_KEY_OF.get(k, k): v for k, v in doc.items() if k != "name"}
        name = doc["name"]
        if isinstance(table.get("events"), list):  # the registry's form back to the file's
            table["events"] = {_event_key(w, name, e): _event_table(e) for e in table["events"]}
        if name in out:
            w.fail(("services", name), name, f"service {_q(name)} is defined twice", "send each service once")
        out[name] = _service(w, name, table)
    return out


def _event_key(w: _Where, service: str, doc: Any) -> str:
    if not isinstance(doc, dict) or not str(doc.get("name", "")).startswith(f"{service}."):
        w.fail(("services", service, "events"), "events", f"an event of {_q(service)} is not named "
               f"{_q(service + '.EVENT')}", "send ServiceDef.to_json() documents")
    return str(doc["name"])[len(service) + 1:]


def _event_table(doc: dict[str, Any]) -> Any:
    given = doc.get("in", {})
    return {"watch": doc.get("watch"), **(given if isinstance(given, dict) else {"in": given}),
            "action": doc.get("action")}
