"""The local API's wire format: newline-delimited, versioned JSON over a Unix
stream socket.  Shared by the daemon (``node/api.py``) and the client library
(``clusterfw/client.py``); pure, no I/O.

How this works
--------------
Every message is one JSON object on one line, at most ``MESSAGE_BYTES_MAX``
bytes including the newline, carrying ``"v": 1``.  Requests name an ``op``;
every request gets exactly one reply, ``{"v":1,"ok":true,"op":...}`` or
``{"v":1,"ok":false,"error":"..."}``.  The daemon may also *push* messages
that are not replies (``notify`` to a registered subsystem, ``progress`` and
``stopped`` to a client that asked to leave); they carry no ``ok`` key.

Requests (see docs/daemon.md for the full reference)::

    {"v":1,"op":"status"}
    {"v":1,"op":"leave"}
    {"v":1,"op":"register","level":25,"name":"app","barriers":[1,1,1]}
    {"v":1,"op":"ack","batch":7}
    {"v":1,"op":"lock","id":1,"name":"db","mode":"exclusive","timeout_ms":5000}
    {"v":1,"op":"unlock","id":1}
    {"v":1,"op":"locks"}

Invariant: ``parse_request`` either returns a checked ``Request`` or raises
``ProtocolError`` with a message that names the bad field and what is
allowed; it raises nothing else, whatever the bytes.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from clusterfw.core.dlm import NAME_MAX_BYTES as LOCK_NAME_BYTES_MAX
from clusterfw.core.model import BARRIERS_MAX, LEVEL_MAX, SUBSYSTEM_NAME_MAX

VERSION = 1
MESSAGE_BYTES_MAX = 64 * 1024
"""A message longer than this (newline included) is refused and the
connection closed: there is no way to find the start of the next one."""
DEFAULT_RUNTIME_DIR = "/run/clusterfw"
DEFAULT_SOCKET = DEFAULT_RUNTIME_DIR + "/clusterfw.sock"
OPS = ("status", "leave", "register", "ack", "lock", "unlock", "locks", "service")
SERVICE_ACTIONS = ("list", "why", "dump", "apply", "start", "stop", "remove", "move", "freeze", "unfreeze", "clear",
                   "maintenance-on", "maintenance-off")
PRIVILEGED_OPS = frozenset({"leave", "register", "ack", "lock", "unlock"})
LOCK_MODES = ("exclusive", "shared")
LOCK_TIMEOUT_MS_MAX = 365 * 24 * 3600 * 1000


class ProtocolError(Exception):
    """A message broke the wire format or an op's rules (the peer's fault)."""


@dataclass(frozen=True)
class Request:
    op: str
    level: int = -1
    name: str = ""
    barriers: tuple[int, int, int] = (1, 1, 1)
    batch: int = 0  # "ack": the batch; "lock"/"unlock": the client's request id
    mode: str = "exclusive"
    timeout_ms: int | None = None  # "lock": None waits for ever
    try_only: bool = False  # "lock": answer at once (timeout 0)
    args: dict[str, Any] | None = None  # "service": the action's arguments ("name", "to", "defs", "node")


def encode(message: dict[str, Any]) -> bytes:
    """One line of compact JSON (``"v"`` added).  Compact separators make
    ``"batch":7`` easy to find for a shell client."""
    out = {"v": VERSION, **message}
    data = json.dumps(out, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode() + b"\n"
    if len(data) > MESSAGE_BYTES_MAX:
        raise ValueError(f"message of {len(data)} bytes exceeds the {MESSAGE_BYTES_MAX}-byte bound")
    return data


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line (without its newline) into a JSON object with ``v`` 1."""
    if len(line) >= MESSAGE_BYTES_MAX:
        raise ProtocolError(f"message larger than {MESSAGE_BYTES_MAX} bytes")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("message is not valid UTF-8") from None
    try:
        message = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"message is not valid JSON ({_short(str(exc))})") from None
    if not isinstance(message, dict):
        raise ProtocolError("message must be a JSON object, e.g. {\"v\":1,\"op\":\"status\"}")
    version = message.get("v")
    if version != VERSION or isinstance(version, bool):
        raise ProtocolError(f"unsupported protocol version {_short(repr(version))}: send \"v\":{VERSION}")
    return message


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _int_field(message: dict[str, Any], key: str, low: int, high: int) -> int:
    value = message.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        else:
            raise ProtocolError(f"'{key}' must be an integer in {low}..{high}, got {_short(repr(value))}")
    if not low <= value <= high:
        raise ProtocolError(f"'{key}' must be in {low}..{high}, got {value}")
    return value


def parse_request(line: bytes) -> Request:
    """Decode and check one request line."""
    message = decode(line)
    op = message.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise ProtocolError(f"unknown op {_short(repr(op))}: use one of {', '.join(OPS)}")
    if op in ("status", "leave", "locks"):
        return Request(op)
    if op in ("lock", "unlock"):
        return _lock_request(op, message)
    if op == "ack":
        return Request(op, batch=_int_field(message, "batch", 1, 2**63 - 1))
    if op == "service":
        action = message.get("action")
        if action not in SERVICE_ACTIONS:
            raise ProtocolError(f"'action' must be one of {', '.join(SERVICE_ACTIONS)}, got {_short(repr(action))}")
        args = message.get("args", {})
        if not isinstance(args, dict):
            raise ProtocolError("'args' must be a JSON object")
        for key in ("name", "to", "node"):
            if key in args and not isinstance(args[key], str):
                raise ProtocolError(f"'args'.{key} must be a string")
        if "defs" in args and not (isinstance(args["defs"], list) and all(isinstance(d, dict) and isinstance(
                d.get("name"), str) for d in args["defs"])):
            raise ProtocolError("'args'.defs must be a list of definition objects with a 'name'")
        return Request(op, name=action, args=args)
    level = _int_field(message, "level", 0, LEVEL_MAX)
    name = message.get("name")
    if not isinstance(name, str) or not name or len(name.encode("utf-8", "surrogatepass")) > SUBSYSTEM_NAME_MAX \
            or not name.isprintable() or any(ord(c) > 0x10FFFF or 0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise ProtocolError(f"'name' must be 1..{SUBSYSTEM_NAME_MAX} bytes of printable UTF-8, "
                            f"got {_short(repr(name))}")
    barriers = message.get("barriers", [1, 1, 1])
    if not isinstance(barriers, list) or len(barriers) != 3:
        raise ProtocolError(f"'barriers' must be a list of 3 integers [join, leave, forced], each "
                            f"1..{BARRIERS_MAX}, got {_short(repr(barriers))}")
    checked = []
    for index, count in enumerate(barriers):
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= BARRIERS_MAX:
            raise ProtocolError(f"'barriers'[{index}] must be an integer in 1..{BARRIERS_MAX}, "
                                f"got {_short(repr(count))}")
        checked.append(count)
    return Request(op, level=level, name=name, barriers=(checked[0], checked[1], checked[2]))


def _lock_request(op: str, message: dict[str, Any]) -> Request:
    client_id = _int_field(message, "id", 0, 2**31 - 1)
    if op == "unlock":
        return Request(op, batch=client_id)
    name = message.get("name")
    if not isinstance(name, str) or not name or len(name.encode("utf-8", "surrogatepass")) > LOCK_NAME_BYTES_MAX \
            or any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise ProtocolError(f"'name' must be 1..{LOCK_NAME_BYTES_MAX} bytes of UTF-8, got {_short(repr(name))}")
    mode = message.get("mode", "exclusive")
    if mode not in LOCK_MODES:
        raise ProtocolError(f"'mode' must be one of {', '.join(LOCK_MODES)}, got {_short(repr(mode))}")
    timeout_ms: int | None = None
    if message.get("timeout_ms") is not None:
        timeout_ms = _int_field(message, "timeout_ms", 0, LOCK_TIMEOUT_MS_MAX)
    return Request(op, name=name, batch=client_id, mode=mode, timeout_ms=timeout_ms, try_only=timeout_ms == 0)


def error(message: str, op: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": False, "error": message}
    if op is not None:
        out["op"] = op
    return out
