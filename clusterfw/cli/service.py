"""``clusterfw service ...``: the registration & launch service's commands.

``apply FILE.toml`` parses and validates the file here (every error names the
file, line, field and fix) and sends the definitions to the local daemon,
which changes the registry on the shared disk in one round per batch.
``list``, ``why`` read the registry the daemon last read; ``move``,
``start``, ``stop``, ``remove``, ``freeze``, ``unfreeze`` and ``clear``
change it.  Each prints sentences or a table; ``--json`` prints one object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from clusterfw.cli.errors import EXIT_FAILED, EXIT_USAGE, CliError
from clusterfw.cli.options import add_json, add_socket, client_socket
from clusterfw.client import Client, ClientError, DaemonUnavailable, RequestFailed

APPLY_BATCH_BYTES = 40 * 1024
"""Definitions go to the daemon in messages of at most this many bytes."""
NAME_HELP = "the service's name (its [services.NAME] table)"


def register(sub: Any) -> None:
    p = sub.add_parser("service", help="place, move and explain client services",
                       description="The registration & launch service: services defined in TOML, placed on "
                                   "nodes by their choosing factors, moved when nodes come and go.")
    ssub = p.add_subparsers(dest="service_command", metavar="ACTION")
    ssub.required = True

    a = ssub.add_parser("apply", help="add or change the services defined in a TOML file")
    a.add_argument("file", metavar="FILE.toml", help="the definitions: one [services.NAME] table per service")
    a.add_argument("--check", action="store_true", help="only validate the file; change nothing")
    add_socket(a)
    add_json(a)
    a.set_defaults(func=cmd_apply)

    ls = ssub.add_parser("list", help="every service: state, owners, flags, what it waits for")
    add_socket(ls)
    add_json(ls)
    ls.set_defaults(func=cmd_list)

    w = ssub.add_parser("why", help="why a service is where it is, and what keeps it off every other node")
    w.add_argument("name", help=NAME_HELP)
    add_socket(w)
    add_json(w)
    w.set_defaults(func=cmd_why)

    m = ssub.add_parser("move", help="transfer a service to a node now (leaves no constraint behind)")
    m.add_argument("name", help=NAME_HELP)
    m.add_argument("--to", required=True, metavar="NODE", help="the node to move it to")
    add_socket(m)
    add_json(m)
    m.set_defaults(func=cmd_change, action="move")

    for action, text in (("start", "register a service (auto_register = \"manual\", or after stop)"),
                         ("stop", "stop and de-register a service; it stays defined"),
                         ("remove", "stop a service (and its children) and remove its definition"),
                         ("freeze", "start, stop or move nothing of a service until unfreeze"),
                         ("unfreeze", "manage a frozen service again (what runs is checked first)"),
                         ("clear", "forget a service's failures, so that failed nodes are tried again")):
        c = ssub.add_parser(action, help=text)
        c.add_argument("name", help=NAME_HELP)
        add_socket(c)
        add_json(c)
        c.set_defaults(func=cmd_change, action=action)


def _ask(args: argparse.Namespace, action: str, argv: list[str], timeout_s: float = 30.0,
         **fields: Any) -> dict[str, Any]:
    path, chosen_by = client_socket(args.socket)
    try:
        return Client(path, timeout_s=timeout_s).request("service", action=action, args=fields)
    except DaemonUnavailable as exc:
        from clusterfw.cli import lab as lab_cli  # only when no daemon answers: it is slow to import
        raise CliError(lab_cli.no_daemon(exc, argv, chosen_by)) from None
    except RequestFailed as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    except ClientError as exc:
        raise CliError(f"{exc}; 'clusterfw service list' shows what the registry holds now") from None


def _out(args: argparse.Namespace, obj: dict[str, Any], lines: list[str]) -> int:
    if args.json:
        print(json.dumps(obj, sort_keys=True))
    else:
        for line in lines:
            print(line)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"{args.file}: no such file", EXIT_USAGE) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{args.file}: cannot be read: {exc}", EXIT_USAGE) from None
    from clusterfw.core import svcdef_toml  # only here: the parser is the slowest import of this group
    from clusterfw.core.svcdef import DefinitionError
    try:
        defs = svcdef_toml.parse(text, args.file)
    except DefinitionError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if args.check:
        return _out(args, {"ok": True, "services": sorted(defs), "definitions": [d.to_json() for d in defs.values()]},
                    [f"{args.file}: {len(defs)} service(s) valid: {', '.join(defs)}"])
    batches: list[list[dict[str, Any]]] = [[]]
    size = 0
    for d in defs.values():
        doc = d.to_json()
        n = len(json.dumps(doc))
        if batches[-1] and size + n > APPLY_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(doc)
        size += n
    changes: list[str] = []
    for batch in batches:
        reply = _ask(args, "apply", ["clusterfw", "service", "apply", args.file], defs=batch)
        changes += reply.get("changes", [])
    lines = changes or [f"{args.file}: nothing changed ({len(defs)} service(s) as defined already)"]
    return _out(args, {"ok": True, "changes": changes, "services": sorted(defs)}, lines)


def _flags(s: dict[str, Any]) -> str:
    return "".join(s.get("flags", [])) or "-"


def cmd_list(args: argparse.Namespace) -> int:
    reply = _ask(args, "list", ["clusterfw", "service", "list"])
    services = reply.get("services", [])
    if args.json:
        print(json.dumps({"services": services, "maintenance": reply.get("maintenance", []),
                          "generation": reply.get("generation")}, sort_keys=True))
        return 0
    if not services:
        print("no services are defined: 'clusterfw service apply FILE.toml'")
        return 0
    rows = [("SERVICE", "STATE", "OWNERS", "FLAGS", "NODES", "NOTE")]
    for s in services:
        nodes = " ".join(f"{n}={v['state']}" for n, v in s["nodes"].items() if v["state"] not in ("down", "up"))
        note = s.get("blocked") or s.get("waiting") or ""
        if s.get("frozen"):
            note = "frozen" + (f"; {note}" if note and not note.startswith("frozen") else "")
        name = ("  " * _depth(s, services)) + s["name"]
        rows.append((name, s["state"], ",".join(s["owners"]) or "-", _flags(s), nodes or "-", note))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:5])) + ("  " + r[5] if r[5] else ""))
    if reply.get("maintenance"):
        print(f"nodes in maintenance: {', '.join(reply['maintenance'])}")
    print("flags: T transfer intent, M awaiting maturity, N has a notify command")
    return 0


def _depth(s: dict[str, Any], services: list[dict[str, Any]]) -> int:
    by = {x["name"]: x for x in services}
    depth, seen = 0, set()
    while s.get("parent") and s["parent"] in by and s["name"] not in seen:
        seen.add(s["name"])
        s = by[s["parent"]]
        depth += 1
    return depth


def cmd_why(args: argparse.Namespace) -> int:
    reply = _ask(args, "why", ["clusterfw", "service", "why", args.name], name=args.name)
    return _out(args, {"lines": reply["lines"], "summary": reply["summary"], "history": reply.get("history", [])},
                reply["lines"])


def cmd_change(args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {"name": args.name}
    argv = ["clusterfw", "service", args.action, args.name]
    if args.action == "move":
        fields["to"] = args.to
        argv += ["--to", args.to]
    reply = _ask(args, args.action, argv, **fields)
    return _out(args, {"ok": True, "message": reply.get("message", "")}, [reply.get("message", "")])


def cmd_maintenance(args: argparse.Namespace) -> int:
    action = f"maintenance-{args.switch}"
    reply = _ask(args, action, ["clusterfw", "node", "maintenance", args.switch, args.name], name=args.name)
    return _out(args, {"ok": True, "message": reply.get("message", "")}, [reply.get("message", "")])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(2)
