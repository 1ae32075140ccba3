"""``clusterfw event-manager`` and ``clusterfw events``.

How this works
--------------
``event-manager`` runs ``clusterfw.events.manager`` in the foreground (what
clusterfw-events.service runs): it registers with the node daemon at level
40, records every membership transition in the event log, and runs the
actions of the events defined by the services registered on its node
(recording each occurrence with its action's outcome).  ``events``
reads that log (``clusterfw.events.eventlog.Follower``) and prints it as a
table or as JSON lines; ``--follow`` keeps printing new events, across
rotations of the log.  docs/events.md has the details.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Any

from clusterfw.cli import lab as lab_cli
from clusterfw.cli.errors import EXIT_USAGE, CliError
from clusterfw.cli.options import add_json, add_socket, client_socket, socket_path
from clusterfw.events.eventlog import DEFAULT_LOG, DEFAULT_MAX_BYTES, MIN_MAX_BYTES, Follower, rotated_path

MANAGER_EXIT_CODES = """\
exit codes:
  0   stopped by SIGTERM or SIGINT (with --leave-on-stop: after the node left the cluster)
  1   failed: the event log cannot be opened for writing
  2   bad usage
  78  the node daemon refused the registration (it already requested its join without waiting
      for 'events': start it with --wait-for-subsystem events; or another event manager is
      attached); a restart cannot help (clusterfw-events.service: RestartPreventExitStatus=78)"""

EVENTS_EXIT_CODES = """\
exit codes:
  0   success (also when the log holds no event yet; --follow: ended with Ctrl-C)
  1   the event log cannot be read: it does not exist (the event manager has not run on
      this host; without a daemon here either, a host running 'clusterfw lab' asks a lab
      node, and says so) or is not readable
  2   bad usage"""

EVENTS_LOG = os.environ.get("CLUSTERFW_EVENTS_LOG") or DEFAULT_LOG
FOLLOW_DEFAULT_LINES = 10
FOLLOW_POLL_S = 0.25
HOW_TO_START = ("to start it, set CLUSTERFW_OPTIONS=\"--wait-for-subsystem events\" in "
                "/etc/clusterfw/clusterfw.conf, then 'systemctl enable clusterfw-events' and 'systemctl "
                "restart clusterfw' (without systemd: run 'clusterfw event-manager' while the daemon waits "
                "for it; docs/events.md)")


def _size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)(?:i?[bB])?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: give bytes, or a number with K, M or G")
    value = int(match.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[match.group(2).lower()]
    if value < MIN_MAX_BYTES:
        raise argparse.ArgumentTypeError(f"{text}: at least {MIN_MAX_BYTES} bytes")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: give how many of the newest events to "
                                         f"show") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: give 0 or more")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    m = subparsers.add_parser(
        "event-manager", help="run the event manager (what clusterfw-events.service runs)",
        formatter_class=fmt,
        description="Register with the node daemon as the event manager (level 40, 'events') and record "
                    "every join, leave and forced leave this node is notified of in the event log "
                    "(JSON lines, fsync-ed before each ack; rotated to FILE.1 at --max-bytes).  For the "
                    "services registered on this node, watch for the events they define ([services.NAME."
                    "events.EVENT] in their TOML), run each occurrence's action and record it with the "
                    "action's exit status.  The daemon must wait for it: 'clusterfw daemon ... "
                    "--wait-for-subsystem events'.",
        epilog=MANAGER_EXIT_CODES)
    add_socket(m)
    m.add_argument("--log", default=EVENTS_LOG, metavar="FILE",
                   help=f"the event log (default $CLUSTERFW_EVENTS_LOG or {DEFAULT_LOG})")
    m.add_argument("--max-bytes", type=_size, default=DEFAULT_MAX_BYTES, metavar="SIZE",
                   help="rotate the log to FILE.1 when it would grow over SIZE (default 1M)")
    m.add_argument("--leave-on-stop", action="store_true",
                   help="on SIGTERM, first make this node leave the cluster gracefully (acking the leave's "
                        "notifications), then exit: a node must not stay joined without its level 40")
    m.set_defaults(func=cmd_event_manager)

    e = subparsers.add_parser(
        "events", help="show the recorded events (joins, leaves, forced leaves, and defined events' actions)",
        formatter_class=fmt,
        description="Show the events this host's event manager recorded, oldest first: the membership "
                    "transitions, and each occurrence of a defined event with its action's outcome.  A "
                    "table (TIME, NODE, EVENT, EPOCH, BATCH, SEEN ON, ACTION) or, with --json, the records "
                    "as JSON lines.",
        epilog=EVENTS_EXIT_CODES)
    e.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new events as they are recorded (Ctrl-C ends)")
    add_json(e, "one JSON object per event and line")
    e.add_argument("--log", default=EVENTS_LOG, metavar="FILE",
                   help=f"the event log (default $CLUSTERFW_EVENTS_LOG or {DEFAULT_LOG}); FILE.1 is read too")
    e.add_argument("-n", "--lines", type=_count, default=None, metavar="N",
                   help=f"only the newest N events (default: all; with --follow {FOLLOW_DEFAULT_LINES})")
    add_socket(e, "asked only when there is no event log here: " + lab_cli.ASKS_A_LAB_NODE)
    e.set_defaults(func=cmd_events)


# --------------------------------------------------------------------------
# event-manager

def cmd_event_manager(args: argparse.Namespace) -> int:
    from clusterfw.events.manager import run_event_manager

    if os.path.isdir(args.log):
        raise CliError(f"--log {args.log} is a directory: give the event log's file name, e.g. "
                       f"{os.path.join(args.log, 'events.jsonl')}", EXIT_USAGE)
    return run_event_manager(socket_path(args.socket), args.log, args.max_bytes, args.leave_on_stop)


# --------------------------------------------------------------------------
# events

def _events_argv(args: argparse.Namespace) -> list[str]:
    """The ``events`` command line a person ran (without --log and --socket)."""
    return ["clusterfw", "events", *(["--follow"] if args.follow else []), *(["--json"] if args.json else []),
            *([f"-n {args.lines}"] if args.lines is not None else [])]


def _no_log(args: argparse.Namespace, message: str) -> int | None:
    """No event log here: if no daemon runs here either, say so as every
    host-side command does, after asking a lab node when nobody named a
    socket (not for --follow, which a lab node runs itself); None if a
    daemon answers (then ``message``, how to start the manager, applies)."""
    from clusterfw.client import Client, ClientError, DaemonUnavailable

    path, chosen_by = client_socket(args.socket)
    try:
        Client(path, timeout_s=5).status()
        return None
    except DaemonUnavailable as exc:
        why: object = exc
    except ClientError:
        return None
    if chosen_by is None and not args.follow:
        argv = ["clusterfw", "events", "--json", *(["-n", str(args.lines)] if args.lines is not None else [])]
        found = lab_cli.ask_lab_node(argv, timeout=15, parse=_json_lines)
        if found is not None:
            node, records = found
            print(lab_cli.asked_lab_node(why, node, _events_argv(args)), file=sys.stderr if args.json else sys.stdout)
            _show(args, records)
            return 0
    raise CliError(lab_cli.no_daemon(why, _events_argv(args), chosen_by,
                                     f"No event log at {args.log} either: the event manager writes it "
                                     f"on a node that runs the daemon; {HOW_TO_START}"))


def _json_lines(text: str) -> list[dict[str, Any]]:
    import json
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _open(path: str) -> Follower:
    if os.path.isdir(path):
        raise CliError(f"--log {path} is a directory: give the event log's file name, e.g. "
                       f"{os.path.join(path, 'events.jsonl')}", EXIT_USAGE)
    try:
        follower = Follower(path)
    except PermissionError:
        raise CliError(f"cannot read the event log {path}: permission denied; run as root") from None
    except OSError as exc:
        raise CliError(f"cannot read the event log {path}: {exc.strerror}") from None
    if not follower.exists():
        raise CliError(f"no event log at {path}: the event manager has not recorded anything on this host "
                       f"(is it running? 'systemctl status clusterfw-events'); {HOW_TO_START}. For "
                       f"another file use --log FILE")
    return follower


def _print(line: str) -> None:
    print(line, flush=True)


def _warn_bad(follower: Follower, path: str, reported: int) -> int:
    if follower.bad_lines > reported:
        print(f"clusterfw: skipped {follower.bad_lines} line(s) of {path} (or {rotated_path(path)}) that are "
              f"not event records", file=sys.stderr)
    return follower.bad_lines


def cmd_events(args: argparse.Namespace) -> int:
    try:
        follower = _open(args.log)
    except CliError as exc:
        if os.path.exists(args.log) or exc.exit_code == EXIT_USAGE:
            raise
        answered = _no_log(args, str(exc))
        if answered is None:
            raise
        return answered
    try:
        try:
            records = follower.history()
        except OSError as exc:
            raise CliError(f"cannot read the event log {args.log}: {exc.strerror or exc}") from None
        limit = args.lines if args.lines is not None else (FOLLOW_DEFAULT_LINES if args.follow else None)
        if limit is not None:
            records = records[-limit:] if limit else []
        try:
            if args.follow:
                return _follow(args, follower, records)
            _show(args, records)
        except BrokenPipeError:
            _quiet_stdout()
            return 0
        _warn_bad(follower, args.log, 0)
        return 0
    finally:
        follower.close()


def _show(args: argparse.Namespace, records: list[dict[str, Any]]) -> None:
    from clusterfw.events.render import format_table, json_line

    if args.json:
        for r in records:
            _print(json_line(r))
        return
    _print(format_table(records))
    if not records:
        print(f"(no events recorded in {args.log} yet)", file=sys.stderr)


def _follow(args: argparse.Namespace, follower: Follower, records: list[dict[str, Any]]) -> int:
    from clusterfw.events.render import format_header, format_row, json_line

    def show(r: dict[str, Any]) -> None:
        _print(json_line(r) if args.json else format_row(r))

    if not args.json:
        _print(format_header())
    for r in records:
        show(r)
    reported = _warn_bad(follower, args.log, 0)
    try:
        while True:
            time.sleep(FOLLOW_POLL_S)
            try:
                new = follower.poll()
            except OSError as exc:
                raise CliError(f"reading the event log {args.log} failed: {exc.strerror or exc}") from None
            for r in new:
                show(r)
            reported = _warn_bad(follower, args.log, reported)
    except KeyboardInterrupt:
        return 0


def _quiet_stdout() -> None:
    """After EPIPE (`clusterfw events | head`): no second error when Python flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass
