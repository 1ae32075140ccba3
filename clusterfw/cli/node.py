"""``clusterfw daemon | join | leave | status``: the node daemon and the
commands that talk to it over the local socket.

How this works
--------------
``daemon`` runs ``clusterfw.node.daemon`` in the foreground (what
clusterfw.service runs) and returns its exit code.  ``join``, ``leave`` and
``status`` are clients of the daemon's socket (``clusterfw.client``);
``status --disk DEVICE`` reads the shared disk directly when no daemon runs
on this host.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from clusterfw.cli import lab as lab_cli
from clusterfw.cli.errors import EXIT_USAGE, CliError
from clusterfw.cli.options import add_json, add_socket, client_socket, socket_path
from clusterfw.client import Client, ClientError, DaemonUnavailable, RequestFailed
from clusterfw.node import protocol
from clusterfw.node.fencing import FENCE_ACTIONS

DAEMON_EXIT_CODES = """\
exit codes:
  0   left the cluster gracefully (SIGTERM, SIGINT or 'clusterfw leave')
  1   failed: the disk is missing or could not be read (it may come back), or a wait timed out
  2   bad usage
  75  fenced: the node stopped its services and wrote nothing more (systemd restarts it;
      the new incarnation can rejoin once the cluster has forced the old one out)
  78  refused (configuration): the node is not in the node table, the disk path is not a
      device, the device is too small or not a clusterfw disk, its timings cannot be run,
      --profile contradicts the disk's, the runtime directory, socket or watchdog cannot be
      used (or its timeout cannot be kept within the fence margin), another daemon or host
      runs this node, or the join was rejected; the message names the path; a restart
      cannot help (clusterfw.service: RestartPreventExitStatus=78)"""

CLIENT_EXIT_CODES = """\
exit codes:
  0   success
  1   failed (no daemon answers, the daemon refused, a timeout)
  2   bad usage"""

DEFAULT_UNIT = "clusterfw.service"
DISK_READ_TIMEOUT_MS = 30_000
WATCH_DEFAULT_S = 2.0
WATCH_RANGE_S = (0.1, 3600.0)
CLEAR_SCREEN = "\x1b[H\x1b[2J"


def register(subparsers: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    d = subparsers.add_parser(
        "daemon", help="run the node daemon (what clusterfw.service runs)", formatter_class=fmt,
        description="Run this host's membership manager for node NAME on the shared DEVICE: heartbeat, "
                    "master election, transitions, the local API socket, self-fencing.  Starting it is "
                    "a graceful join; SIGTERM is a graceful leave.",
        epilog=DAEMON_EXIT_CODES)
    d.add_argument("--disk", required=True, metavar="DEVICE", help="the shared block device")
    d.add_argument("--node", required=True, metavar="NAME", help="this host's node name (in the node table)")
    d.add_argument("--fence-action", choices=FENCE_ACTIONS, default="exit",
                   help="after killing the cluster-managed units: exit (code 75, default), kill-namespace "
                        "(lab: end our whole PID namespace, init included), kill-units (stay up, fenced), none (tests: "
                        "kill nothing, stay up, fenced)")
    d.add_argument("--socket", default=None, metavar="PATH",
                   help=f"local API socket (default {protocol.DEFAULT_SOCKET}, or RUNTIME_DIR/clusterfw.sock)")
    d.add_argument("--runtime-dir", default=protocol.DEFAULT_RUNTIME_DIR, metavar="DIR",
                   help=f"lock files and the managed-units list (default {protocol.DEFAULT_RUNTIME_DIR})")
    d.add_argument("--profile", choices=("auto", "lab", "san"), default="auto",
                   help="the timing profile comes from the disk (san when its io timeout is >= 1000 ms, else "
                        "lab; set by 'clusterfw disk init --profile'): auto (default) uses it; lab or san only "
                        "checks it and refuses (exit 78) when the disk says otherwise")
    d.add_argument("--watchdog", metavar="DEVICE",
                   help="a watchdog device (/dev/watchdog) fed while the node may write; never disarmed "
                        "once fenced")
    d.add_argument("--fence-hook", action="append", default=[], metavar="PATH",
                   help="an executable run when the node fences (repeatable; env CLUSTERFW_NODE, "
                        "CLUSTERFW_FENCE_REASON)")
    d.add_argument("--wait-for-subsystem", action="append", default=[], metavar="NAME",
                   help="delay the join until external subsystem NAME registered over the socket "
                        "(repeatable): registrations are fixed once the join is requested")
    d.add_argument("--wait-timeout", type=float, default=300.0, metavar="S",
                   help="give up (exit 1) if those subsystems did not register within S seconds (default 300)")
    d.add_argument("--stop-timeout", type=float, default=60.0, metavar="S",
                   help="a graceful leave that takes longer fences the node and exits 75 (default 60)")
    d.add_argument("--launcher", choices=("auto", "systemd", "process"), default="auto",
                   help="how client services are started: systemd units (where systemd runs), or supervised "
                        "processes in their own process groups (default auto: systemd when it is the init)")
    d.add_argument("--no-services", action="store_true",
                   help="run without the registration & launch service (level 50): this node then never runs "
                        "client services, and 'clusterfw service' commands sent to it are refused")
    d.add_argument("--no-placeholder-subsystems", action="store_true",
                   help="do not register the ack-only in-process subsystems mm/vdm/sfs (levels 0, 20, 30); "
                        "the DLM still runs")
    d.add_argument("--debug", action="store_true", help="log every view the node adopts")
    d.set_defaults(func=cmd_daemon)

    j = subparsers.add_parser(
        "join", help="(re)join this host's node: start the daemon", formatter_class=fmt,
        description="Join the cluster: if a daemon runs, wait until it is joined; otherwise start "
                    f"{DEFAULT_UNIT} with systemctl (when systemd manages this host) and wait.",
        epilog=CLIENT_EXIT_CODES)
    add_socket(j)
    j.add_argument("--unit", default=DEFAULT_UNIT, metavar="UNIT", help=f"the unit to start (default {DEFAULT_UNIT})")
    j.add_argument("--timeout", type=float, default=120.0, metavar="S", help="wait at most S seconds (default 120)")
    j.add_argument("--no-wait", action="store_true", help="do not wait until the node is joined")
    j.set_defaults(func=cmd_join)

    lv = subparsers.add_parser(
        "leave", help="leave the cluster gracefully (the daemon exits when done)", formatter_class=fmt,
        description="Ask the local daemon to leave the cluster gracefully, show its progress through the "
                    "levels (top-down) and wait until it left; the daemon then exits 0.",
        epilog=CLIENT_EXIT_CODES)
    add_socket(lv)
    lv.add_argument("--timeout", type=float, default=120.0, metavar="S", help="wait at most S seconds (default 120)")
    lv.add_argument("--quiet", action="store_true", help="print nothing but errors")
    lv.set_defaults(func=cmd_leave)

    st = subparsers.add_parser(
        "status", help="show the cluster: nodes, states per level, master, epoch", formatter_class=fmt,
        description="Ask the local daemon for the cluster's status.  With --disk DEVICE and no daemon "
                    "running here, read the shared disk directly (heartbeat ages are then unknown).",
        epilog=CLIENT_EXIT_CODES)
    add_json(st)
    add_socket(st, lab_cli.ASKS_A_LAB_NODE)
    st.add_argument("--disk", metavar="DEVICE", help="read DEVICE directly when no daemon answers")
    st.add_argument("--watch", nargs="?", const=str(WATCH_DEFAULT_S), default=None, metavar="SECS",
                    help=f"redraw every SECS seconds (default {WATCH_DEFAULT_S:g}) until Ctrl-C, like crm_mon; "
                         f"the screen is cleared only on a terminal; with --json one object a line")
    st.set_defaults(func=cmd_status)


# --------------------------------------------------------------------------
# daemon

def cmd_daemon(args: argparse.Namespace) -> int:
    from clusterfw.node.daemon import DaemonOptions, run_daemon

    for option, value in (("--wait-timeout", args.wait_timeout), ("--stop-timeout", args.stop_timeout)):
        if not value > 0:
            raise CliError(f"{option} {value}: use a positive number of seconds", EXIT_USAGE)
    for hook in args.fence_hook:
        if not (os.path.isfile(hook) and os.access(hook, os.X_OK)):
            raise CliError(f"--fence-hook {hook}: not an executable file; give the path of a program "
                           f"(it is run without a shell)", EXIT_USAGE)
    listen = args.socket or (protocol.DEFAULT_SOCKET if args.runtime_dir == protocol.DEFAULT_RUNTIME_DIR
                                  else os.path.join(args.runtime_dir, "clusterfw.sock"))
    opts = DaemonOptions(
        disk=args.disk, node=args.node, fence_action=args.fence_action, socket_path=listen,
        runtime_dir=args.runtime_dir, profile=args.profile, watchdog=args.watchdog,
        fence_hooks=tuple(args.fence_hook), wait_for=tuple(dict.fromkeys(args.wait_for_subsystem)),
        wait_timeout_s=args.wait_timeout, stop_timeout_s=args.stop_timeout,
        placeholders=not args.no_placeholder_subsystems, debug=args.debug,
        services=not args.no_services, launcher=args.launcher)
    return run_daemon(opts)


# --------------------------------------------------------------------------
# status

def _levels_order(nodes: list[dict[str, Any]]) -> list[str]:
    order: list[str] = []
    for node in nodes:
        for name in node.get("levels", {}):
            if name not in order:
                order.append(name)
    return order


def _placeholder_levels(status: dict[str, Any], levels: list[str]) -> list[str]:
    """The level names held by a placeholder: the daemon's subsystems say so;
    from the disk, a node shown ``placeholder`` there does."""
    marked = {sub.get("name") for sub in status.get("subsystems") or [] if sub.get("placeholder")}
    marked |= {name for node in status.get("nodes", []) for name, value in node.get("levels", {}).items()
               if value == "placeholder"}
    return [name for name in levels if name in marked]


def format_status(status: dict[str, Any]) -> str:
    from clusterfw.core.text import printable
    from clusterfw.ondisk.integrity import warning_lines

    nodes = status.get("nodes", [])
    levels = _levels_order(nodes)
    epoch = status.get("epoch")
    head = (f"cluster {printable(status.get('cluster'))}  master {printable(status.get('master') or '-')}  "
            f"epoch {'?' if epoch is None else epoch}  term {status.get('term')}")
    if status.get("source") == "daemon":
        head += f"  (asked node {printable(status.get('node'))}: {status.get('phase')}"
        if status.get("fenced"):
            head += f", FENCED: {printable(status.get('fenced'))}"
        head += ")"
    rows = [["NODE", "ID", "STATE", *[printable(name).upper() for name in levels], "HEARTBEAT"]]
    for node in nodes:
        age = node.get("heartbeat_age_ms")
        rows.append([
            printable(node["name"]) + ("*" if node.get("master") else ""),
            str(node["id"]),
            node["state"] + (" (forced)" if node.get("forced") and node["state"] == "inactive" else ""),
            *[node.get("levels", {}).get(name, "-") for name in levels],
            "?" if age is None else f"{age} ms ago",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [head, ""]
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.append("")
    lines.append("* master   epoch: membership changes so far   term: master elections so far")
    held = _placeholder_levels(status, levels)
    if held:
        shown = ", ".join(printable(name).upper() for name in held)
        lines.append(f"placeholder: {shown} {'is a stand-in' if len(held) == 1 else 'are stand-ins'} that "
                     f"ack at once; no real subsystem runs there yet")
    timing = status.get("cluster_timing")
    if isinstance(timing, dict) and isinstance(timing.get("failover_ms"), int):
        lines.append(timing_line(timing))
    services = status.get("services")
    if isinstance(services, list) and services:
        lines.append("")
        srows = [["SERVICE", "STATE", "OWNERS", "FLAGS", "NOTE"]]
        for svc in services:
            note = svc.get("blocked") or svc.get("waiting") or ""
            srows.append([printable(svc.get("name")), str(svc.get("state")), ",".join(svc.get("owners") or []) or "-",
                          "".join(svc.get("flags") or []) or "-", printable(note)])
        swidths = [max(len(row[i]) for row in srows) for i in range(5)]
        lines += ["  ".join(cell.ljust(swidths[i]) for i, cell in enumerate(row)).rstrip() for row in srows]
        lines.append("flags: T transfer intent, M awaiting maturity, N has a notify command "
                     "('clusterfw service why NAME' explains)")
    warnings = []
    if status.get("view_error"):
        warnings.append(f"WARNING: {printable(status['view_error'])}")
    warnings += warning_lines(status.get("integrity"), history=status.get("source") == "daemon")
    if warnings:
        lines.append("")
        lines += warnings
    return "\n".join(lines)


def timing_line(timing: dict[str, Any]) -> str:
    """``timing: profile lab (heartbeat 100 ms, io timeout 200 ms), dead after
    1017 ms: a crashed node's services restart elsewhere after about 1.2 s``."""
    from clusterfw.core.timing import ms_text

    return (f"timing: profile {timing.get('profile')} (heartbeat {timing.get('heartbeat_interval_ms')} ms, io timeout "
            f"{timing.get('io_timeout_ms')} ms), dead after {timing.get('dead_after_ms')} ms: a crashed node's "
            f"services restart elsewhere after about {ms_text(timing['failover_ms'])}")


def watch_seconds(text: str) -> float:
    """``--watch SECS``: a finite number of seconds in WATCH_RANGE_S, or a
    usage error naming the bad value and the range."""
    low, high = WATCH_RANGE_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # also refuses nan and inf
        raise CliError(f"--watch {text}: use a number of seconds from {low:g} to {high:g} "
                       f"(default {WATCH_DEFAULT_S:g})", EXIT_USAGE)
    return value


def _fetch_status(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """The status object and, when it did not come from this host's daemon,
    the sentence that says where it came from."""
    path, chosen_by = client_socket(args.socket)
    try:
        return Client(path).status(), None
    except DaemonUnavailable as exc:
        command = ["clusterfw", "status", *(["--json"] if args.json else [])]
        direct = "To read the shared disk directly, add --disk DEVICE"
        if not args.disk and chosen_by is not None:
            raise CliError(lab_cli.no_daemon(exc, command, chosen_by, direct)) from None
        if not args.disk:
            found = lab_cli.ask_lab_node(["clusterfw", "status", "--json"], timeout=15)
            if found is None:
                raise CliError(lab_cli.no_daemon(exc, command, None, direct)) from None
            via, status = found
            return status, lab_cli.asked_lab_node(exc, via, command)
        return _status_from_disk(args.disk), (
            f"no local daemon answers on {path}: read {args.disk} directly "
            f"(heartbeat ages unknown: one read cannot tell a live node from a dead one)")
    except ClientError as exc:
        raise CliError(str(exc)) from None


def _show_status(args: argparse.Namespace, status: dict[str, Any], note: str | None) -> None:
    if args.json:
        if note:
            print(note, file=sys.stderr)
        json.dump(status, sys.stdout)
        print(flush=True)
    else:
        if note:
            print(note)
        print(format_status(status), flush=True)


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch is None:
        _show_status(args, *_fetch_status(args))
        return 0
    return _watch_status(args, watch_seconds(args.watch))


def _watch_status(args: argparse.Namespace, every_s: float) -> int:
    """Redraw every ``every_s`` until Ctrl-C (exit 0).  The first reading
    must work (its error is the command's); a later failure is shown in the
    redraw and the watch goes on, as the daemon may come back."""
    clear = not args.json and sys.stdout.isatty()
    first = True
    try:
        while True:
            started = time.monotonic()
            try:
                status, note = _fetch_status(args)
                error = None
            except CliError as exc:
                if first:
                    raise
                status, note, error = None, None, str(exc)
            if clear:
                sys.stdout.write(CLEAR_SCREEN)
            if not args.json:
                print(f"every {every_s:g} s, {time.strftime('%H:%M:%S')}; Ctrl-C to stop")
            if status is not None:
                _show_status(args, status, note if (first or not args.json) else None)
            else:
                print(f"clusterfw: {error}; trying again in {every_s:g} s", file=sys.stderr, flush=True)
            first = False
            time.sleep(max(0.0, every_s - (time.monotonic() - started)))
    except KeyboardInterrupt:
        if not args.json:
            print()
        return 0


def _status_from_disk(path: str) -> dict[str, Any]:
    from clusterfw.node.status import from_disk
    from clusterfw.ondisk.blockdev import BlockDevice
    from clusterfw.ondisk.clusterdisk import ClusterDisk
    from clusterfw.ondisk import admin
    from clusterfw.ondisk.errors import BlockError, DeviceError, DeviceTooSmall, SetupError

    try:
        dev = BlockDevice(path, readonly=True, io_timeout_ms=DISK_READ_TIMEOUT_MS)
    except DeviceError as exc:
        raise CliError(f"--disk {path}: {exc}", EXIT_USAGE) from None
    try:
        return from_disk(ClusterDisk.open(dev))
    except BlockError as exc:
        raise CliError(f"--disk: {admin.unreadable_superblock_advice(dev, exc)}") from None
    except DeviceTooSmall as exc:
        raise CliError(f"--disk: {exc}", EXIT_USAGE) from None
    except (DeviceError, SetupError) as exc:
        raise CliError(f"reading {path} failed: {exc}; check the device and its connection") from None
    finally:
        dev.close()


# --------------------------------------------------------------------------
# leave

def _progress_printer(quiet: bool) -> Any:
    last: list[str] = []

    def show(message: dict[str, Any]) -> None:
        if quiet:
            return
        levels = message.get("levels", {})
        text = f"{message.get('state')}: " + (", ".join(f"{k} {v}" for k, v in levels.items()) or "-")
        if not last or last[-1] != text:
            last.append(text)
            print(text, flush=True)

    return show


def cmd_leave(args: argparse.Namespace) -> int:
    try:
        final = Client(socket_path(args.socket)).leave(progress=_progress_printer(args.quiet), timeout_s=args.timeout)
    except DaemonUnavailable as exc:
        raise CliError(lab_cli.no_daemon(exc, ["clusterfw", "leave"], client_socket(args.socket)[1],
                                         "Nothing to leave")) from None
    except RequestFailed as exc:
        raise CliError(f"the daemon refused to leave: {exc}") from None
    except ClientError as exc:
        raise CliError(f"{exc}; the daemon goes on leaving in the background ('clusterfw status')") from None
    if final.get("op") == "fenced":
        raise CliError(f"the node fenced itself while leaving: {final.get('reason')}")
    if final.get("op") == "closed":
        raise CliError("the daemon closed the connection before saying it left: check its log "
                       "('journalctl -u clusterfw')")
    if final.get("exit", 0) != 0:
        raise CliError(f"the daemon stopped: {final.get('reason')} (exit {final.get('exit')})")
    if not args.quiet:
        print(f"left the cluster: {final.get('reason')}")
    return 0


# --------------------------------------------------------------------------
# join

def _under_systemd() -> bool:
    return os.path.isdir("/run/systemd/system") and shutil.which("systemctl") is not None


def _wait_joined(socket_path: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        try:
            status = Client(socket_path, timeout_s=2.0).status()
        except ClientError:
            status = None
        if status is not None:
            line = f"{status.get('state')} ({status.get('phase')})"
            if line != last:
                print(line, flush=True)
                last = line
            if status.get("fenced"):
                raise CliError(f"the node fenced itself: {status.get('fenced')}")
            if status.get("state") == "joined":
                return status
        if time.monotonic() > deadline:
            raise CliError(f"the node did not join within {timeout_s:.0f} s: see 'clusterfw status' and the "
                           f"daemon's log ('journalctl -u clusterfw')")
        time.sleep(0.2)


def cmd_join(args: argparse.Namespace) -> int:
    path = socket_path(args.socket)
    try:
        status = Client(path, timeout_s=2.0).status()
    except DaemonUnavailable:
        status = None
    except ClientError as exc:
        raise CliError(str(exc)) from None
    if status is not None:
        print(f"the daemon for node {status.get('node')} is running: {status.get('state')}")
        if status.get("phase") == "leaving":
            raise CliError("it is leaving; wait until it exited ('clusterfw status'), then run 'clusterfw join' "
                           "again")
    else:
        if not _under_systemd():
            raise CliError(lab_cli.no_daemon(f"no clusterfw daemon answers on {path}", ["clusterfw", "join"],
                                             client_socket(args.socket)[1],
                                             "systemd does not manage this host: start one with 'clusterfw "
                                             "daemon --disk DEVICE --node NAME'"))
        proc = subprocess.run(["systemctl", "start", "--no-block", args.unit], capture_output=True, text=True,
                              timeout=60)
        if proc.returncode != 0:
            raise CliError(f"'systemctl start {args.unit}' failed: {proc.stderr.strip()}; check "
                           f"/etc/clusterfw/clusterfw.conf and 'systemctl status {args.unit}'")
        print(f"started {args.unit}")
    if args.no_wait:
        return 0
    _wait_joined(path, args.timeout)
    print("joined")
    return 0

