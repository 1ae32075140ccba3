"""`clusterfw lab ...`: N nodes on one machine sharing one real disk.

How this works: this module only parses arguments and prints results; the
work is done by ``clusterfw.lab.Lab`` (see clusterfw/lab/lab.py and
docs/lab.md).  Progress goes to stderr, results to stdout: sentences and
tables for a person, what ``Lab`` returned with ``--json``; errors become
``CliError`` with the CLI's exit codes.

It is also the one place where another command asks a lab node
(``ask_lab_node``): ``status``, ``locks`` and ``events`` on a host that runs
a lab and no daemon of its own, when nobody named a socket.  They then say
so and name the ``lab exec`` command that does the same.  Every command that
finds no daemon says so the same way (``no_daemon``), naming that command.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from clusterfw.cli.errors import EXIT_FAILED, EXIT_USAGE, CliError
from clusterfw.cli.options import add_json

NODE_HELP = "the lab node's name (n1..nN, as 'clusterfw lab status' lists them)"
ASKS_A_LAB_NODE = "without either, a host running 'clusterfw lab' and no daemon asks a lab node, and says so"


def _lab(args):
    from clusterfw.lab import Lab
    return Lab(args.dir, args.cache_dir)


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def _wrap(fn):
    def run(args):
        from clusterfw.lab import LabError
        try:
            return fn(args)
        except LabError as exc:
            raise CliError(str(exc), exc.exit_code) from None
        except PermissionError as exc:
            raise CliError(f"{exc} (clusterfw lab needs root)", EXIT_USAGE) from None
    return run


# --------------------------------------------------------------------------
# other commands asking a lab node

def _default_dir() -> str:
    from clusterfw.lab.lab import DEFAULT_DIR
    return os.environ.get("CLUSTERFW_LAB_DIR") or str(DEFAULT_DIR)


def lab_exec_command(node: str, argv: list[str]) -> str:
    """The ``clusterfw lab exec`` line that runs ``argv`` in ``node``."""
    return f"clusterfw lab exec {node} -- {' '.join(argv)}"


def lab_hint(argv: list[str]) -> str:
    """Advice for a command whose daemon does not answer: the lab command."""
    return f"On a host running 'clusterfw lab', ask a lab node: '{lab_exec_command('NODE', argv)}'"


def no_daemon(why: object, argv: list[str], chosen_by: str | None, also: str = "") -> str:
    """What every host-side command that finds no daemon says (``why``: the
    ``DaemonUnavailable``; ``chosen_by``: who named the socket, None for the
    default; ``also``: a sentence of the command's own, e.g. another way)."""
    if chosen_by is not None:
        head = f"{why}: check the socket given by {chosen_by} (is the daemon running? 'systemctl status clusterfw')."
    else:
        head = f"{why}: is the daemon running ('systemctl status clusterfw')?"
    return f"{head}{' ' + also.rstrip('.') + '.' if also else ''} {lab_hint(argv)}"


def asked_lab_node(why: object, node: str, argv: list[str]) -> str:
    """What a command that asked lab node ``node`` instead of its daemon says."""
    return (f"{why}: asked lab node {node} of the lab in {_default_dir()} instead, as "
            f"'{lab_exec_command(node, argv)}' does")


def ask_lab_node(argv: list[str], timeout: float, parse: Any = json.loads) -> tuple[str, Any] | None:
    """Run ``argv`` (a clusterfw command printing JSON) in the first running
    node of the default lab that answers: (node, its output as ``parse``
    reads it), or None without a lab (or not as root)."""
    from clusterfw.lab.lab import Lab, LabError

    lab = Lab(_default_dir())
    if lab.state is None or os.geteuid() != 0:
        return None
    try:
        for node in [n for n in lab.status()["nodes"] if n["state"] == "up"]:
            cp = lab.exec(node["name"], argv, timeout=timeout)
            if cp.returncode == 0:
                return node["name"], parse(cp.stdout)
    except (LabError, OSError, ValueError):
        return None
    return None


def cmd_up(args):
    from clusterfw.lab.lab import parse_size
    lab = _lab(args)
    st = lab.up(args.nodes, args.mode, disk_size=parse_size(args.disk_size),
                sector_size=args.sector_size, node_command=args.node_command,
                autostart=args.autostart, boot_timeout=args.boot_timeout,
                rebuild=args.rebuild_rootfs, wipe_disk=args.wipe_disk,
                keep_on_failure=args.keep_on_failure, setup_commands=args.setup_command,
                prepare_disk=args.prepare_disk, image_dir=args.image_dir)
    joined = _wait_joined(lab, args) if args.autostart and lab.state.get("units") else None
    if args.json:
        _print({**st, "cluster": joined})
    else:
        _print_status(st)
        if joined is not None:
            master = joined.get("master")
            print(f"cluster '{joined.get('cluster')}': "
                  + ", ".join(f"{n['name']} {n['state']}{'*' if n['name'] == master else ''}"
                              for n in joined["nodes"])
                  + "  (* master) -- `clusterfw status` shows more")
    return 0


def _wait_joined(lab, args, timeout: float = 60.0):
    """Wait until every node of the lab shows joined (as node n1 sees it)."""
    import time
    names = sorted(lab.state["nodes"], key=lambda n: int(n[1:]))
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        cp = lab.exec(names[0], ["clusterfw", "status", "--json"], timeout=15)
        try:
            last = json.loads(cp.stdout) if cp.returncode == 0 else last
        except ValueError:
            pass
        if last and last.get("master") and sum(n["state"] == "joined" for n in last["nodes"]) == len(names):
            return last
        time.sleep(0.3)
    print(f"lab: the cluster did not fully join within {timeout:.0f} s; see "
          f"'clusterfw lab exec n1 -- journalctl -u clusterfw'", file=sys.stderr)
    return last


def _print_status(st: dict) -> None:
    if not st.get("exists"):
        print(f"no lab in {st['dir']}")
        return
    print(f"lab {st['dir']}: {st['mode']} mode, {len(st['nodes'])} node(s), "
          f"prefix {st['prefix']}, disk {st['disk']['image']} "
          f"({st['disk'].get('size', 0) >> 20} MiB, {st['disk']['sector_size']} B sectors)")
    fmt = "{:<5} {:<8} {:<6} {:<13} {:<8} {:<8} {:<12} {}"
    print(fmt.format("NODE", "STATE", "DISK", "ADDRESS", "INIT", "FUSE", "LOOP", "PIDS"))
    for n in st["nodes"]:
        print(fmt.format(n["name"], n["state"], n["disk"]["mode"], n["address"],
                         n["init_pid"] or "-", n["fuse_pid"] or "-", n["disk"]["loop"] or "-",
                         len(n["pids"])))


def cmd_status(args):
    st = _lab(args).status()
    if args.json:
        _print(st)
    else:
        _print_status(st)
    return 0


def format_down(res: dict[str, Any]) -> str:
    """What ``lab down`` did, what it kept and how to delete that too."""
    text = f"lab {res['dir']}: down" + (" (nothing was up)" if not res["removed"] else
                                        f" in {res.get('seconds', 0):g} s")
    kept = res.get("kept") or []
    if res.get("purged"):
        return text + "; purged: the lab directory and its disk image are deleted"
    if not kept:
        return text + "; nothing kept"
    return (text + "; kept for the next 'clusterfw lab up' (it reuses the disk and its cluster): "
            + ", ".join(kept) + f". To delete them too: 'clusterfw lab down --purge"
            + (f" --dir {res['dir']}'" if res["dir"] != _default_dir() else "'"))


def cmd_down(args):
    res = _lab(args).down(purge=args.purge, timeout=args.timeout)
    if args.json:
        _print(res)
    else:
        print(format_down(res))
    return 0


# --------------------------------------------------------------------------
# faults: one short line each (what ``Lab`` returned with --json)

def _secs(value: Any) -> str:
    return "?" if value is None else f"{float(value):.2f}"


def format_crash(res: dict[str, Any]) -> str:
    """``n2 crashed (SIGKILL of init 14960) in 0.10 s``"""
    return f"{res['node']} crashed (SIGKILL of init {res['killed_pid']}) in {_secs(res.get('seconds'))} s"


def format_restart(res: dict[str, Any]) -> str:
    """``n2 restarted (init 15012) in 0.62 s``; a state other than up is said."""
    state = res.get("state")
    return (f"{res['name']} restarted (init {res.get('init_pid') or '-'}) in {_secs(res.get('seconds'))} s"
            + ("" if state == "up" else f", now {state}"))


def format_pause(res: dict[str, Any]) -> str:
    """``n1 paused for 1.00 s, running again`` or, in the background,
    ``n1 paused until 12:00:03 (a helper thaws it; 'clusterfw lab resume n1' now)``"""
    node = res["node"]
    if res.get("background"):
        frozen = "" if res.get("frozen") else ", not yet frozen"
        return (f"{node} paused until {_clock(res['until'])}{frozen} "
                f"(a helper thaws it; 'clusterfw lab resume {node}' now)")
    return (f"{node} paused for {_secs(res.get('seconds'))} s, running again"
            + ("" if res.get("frozen_while_paused") else " (it was not fully frozen)"))


def format_resume(res: dict[str, Any]) -> str:
    """``n1 resumed``, or ``n1 left as it is: pause superseded``"""
    if res.get("resumed"):
        return f"{res['node']} resumed"
    return f"{res['node']} left as it is: {res.get('reason')}"


def format_disk_mode(res: dict[str, Any]) -> str:
    """``n3 disk cut (eio: every I/O fails until ...)`` / ``n3 disk restored (...)``"""
    node, mode = res["node"], res["disk"]
    if mode == "pass":
        return f"{node} disk restored (I/O passes through)"
    what = "every I/O fails" if mode == "eio" else "every I/O stalls"
    return f"{node} disk cut ({mode}: {what} until 'clusterfw lab restore-disk {node}')"


def format_bench_disk(res: dict[str, Any]) -> str:
    via, direct = res["via_fuse"], res["direct_loop"]
    return (f"node {res['node']}: {res['count']} reads of {res['block']} B (O_DIRECT): median "
            f"{via['median_us']:g} us, p99 {via['p99_us']:g} us through the node's disk view; median "
            f"{direct['median_us']:g} us, p99 {direct['p99_us']:g} us through a plain loop device: the view adds "
            f"{res['added_median_us']:g} us (median)")


def _clock(unix_s: float) -> str:
    import time
    return time.strftime("%H:%M:%S", time.localtime(unix_s))


def _report(args, res: dict[str, Any], fmt) -> int:
    if args.json:
        _print(res)
    else:
        print(fmt(res))
    return 0


def cmd_crash(args):
    return _report(args, _lab(args).crash(args.node), format_crash)


def cmd_restart(args):
    return _report(args, _lab(args).restart(args.node, boot_timeout=args.boot_timeout), format_restart)


def cmd_pause(args):
    return _report(args, _lab(args).pause(args.node, args.seconds, background=args.background), format_pause)


def cmd_resume(args):
    return _report(args, _lab(args).resume(args.node, after=args.after, token=args.token), format_resume)


def cmd_cut_disk(args):
    return _report(args, _lab(args).cut_disk(args.node, args.mode), format_disk_mode)


def cmd_restore_disk(args):
    return _report(args, _lab(args).restore_disk(args.node), format_disk_mode)


def _split_exec(args) -> list[str]:
    """exec's argv: NODE [OPTIONS] -- CMD... (options may also come before NODE).

    argparse cannot mix options after a positional with a trailing command, so
    the words after NODE are split at the first ``--`` here; without ``--``
    everything after NODE is the command."""
    rest = list(args.rest)
    if "--" in rest:
        i = rest.index("--")
        head, cmd = rest[:i], rest[i + 1:]
    else:
        head, cmd = rest[:1], rest[1:]
    p = argparse.ArgumentParser(prog="clusterfw lab exec", add_help=False)
    p.add_argument("node", metavar="NODE", help=NODE_HELP)
    p.add_argument("--dir", default=args.dir)
    p.add_argument("--cache-dir", default=args.cache_dir)
    p.add_argument("--timeout", type=float, default=args.timeout)
    try:
        ns, extra = p.parse_known_args(head)
    except SystemExit:
        raise CliError("usage: clusterfw lab exec NODE [--dir DIR] [--timeout S] -- CMD...",
                       EXIT_USAGE) from None
    if extra or not cmd:
        raise CliError("usage: clusterfw lab exec NODE [--dir DIR] [--timeout S] -- CMD...",
                       EXIT_USAGE)
    args.node, args.dir, args.cache_dir, args.timeout = ns.node, ns.dir, ns.cache_dir, ns.timeout
    return cmd


def cmd_exec(args):
    cmd = _split_exec(args)
    try:
        cp = _lab(args).exec(args.node, cmd, timeout=args.timeout, capture=False)
    except subprocess.TimeoutExpired:
        raise CliError(f"command in {args.node} timed out after {args.timeout:g}s", EXIT_FAILED) from None
    return cp.returncode


def cmd_bench_disk(args):
    return _report(args, _lab(args).bench_disk(args.node, args.count), format_bench_disk)


def register(subparsers) -> None:
    from clusterfw.lab.lab import DEFAULT_CACHE, DEFAULT_DIR, DEFAULT_NODE_COMMAND

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", default=str(DEFAULT_DIR),
                        help="lab directory (default %(default)s; env CLUSTERFW_LAB_DIR)")
    common.add_argument("--cache-dir", default=str(DEFAULT_CACHE),
                        help="rootfs cache (default %(default)s; env CLUSTERFW_LAB_CACHE)")

    lab = subparsers.add_parser(
        "lab", help="N nodes on this machine sharing one real disk (needs root)",
        description="Run N cluster nodes on one machine, each with its own loop device "
                    "over one shared disk image, with fault injection. See docs/lab.md.")
    sub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND")
    sub.required = True

    def add(name, fn, help_):
        p = sub.add_parser(name, parents=[common], help=help_, description=help_)
        p.set_defaults(func=_wrap(fn))
        return p

    p = add("up", cmd_up, "create the lab and boot nodes n1..nN (idempotent)")
    p.add_argument("--nodes", type=int, required=True, metavar="N",
                   help="how many nodes: n1..nN, each in the node table of the shared disk")
    p.add_argument("--mode", choices=("nspawn", "process"), default="nspawn",
                   help="nspawn: systemd containers (default); process: namespaced processes")
    p.add_argument("--disk-size", default="256M", help="size of a new disk.img (default 256M)")
    p.add_argument("--sector-size", type=int, choices=(512, 4096), default=512,
                   help="logical sector size of the nodes' loop devices")
    p.add_argument("--wipe-disk", action="store_true", help="recreate disk.img (zeroed)")
    p.add_argument("--image-dir", metavar="DIR",
                   help="where a new lab puts disk.img (default: the lab directory if it is on a tmpfs, "
                        "else /dev/shm/clusterfw-lab-HASH); not a tmpfs: a warning, as O_DSYNC writes to an "
                        "image on the host's disk stall past the fence deadline when the host is busy")
    p.add_argument("--node-command", default=DEFAULT_NODE_COMMAND,
                   help="process mode: what each node runs, split like a shell line, "
                        "{node} and {disk} substituted (default %(default)r)")
    p.add_argument("--setup-command", action="append", default=[], metavar="CMD",
                   help="run CMD on the host once the disk views exist, before the nodes "
                        "boot (repeatable; {disk} = n1's loop device, {image}, {nodes}, "
                        "{dir}); e.g. 'clusterfw disk init {disk} --cluster lab --profile lab --force'")
    p.add_argument("--no-autostart", dest="autostart", action="store_false",
                   help="nspawn mode: do not enable clusterfw.service at boot (default: enabled, "
                        "so every node runs `systemctl start clusterfw` as it boots)")
    p.add_argument("--no-disk-setup", dest="prepare_disk", action="store_false",
                   help="leave the shared disk as it is (default: format a new disk for "
                        "cluster 'lab' and add nodes n1..nN)")
    p.add_argument("--boot-timeout", type=float, default=90, metavar="S",
                   help="give up if a node has not booted within S seconds (default %(default)s)")
    p.add_argument("--rebuild-rootfs", action="store_true", help="rebuild the cached rootfs")
    p.add_argument("--keep-on-failure", action="store_true",
                   help="leave a failed lab as it is for inspection (default: clean up)")
    add_json(p, "print what the lab reports as JSON")

    p = add("status", cmd_status, "show nodes, disk views, PIDs, addresses")
    add_json(p, "print what the lab reports as JSON")

    p = add("down", cmd_down, "stop every node and remove the lab's resources; keeps the disk image and "
                              "shared/ for the next 'up' unless --purge")
    p.add_argument("--purge", action="store_true",
                   help="also delete the lab directory (disk.img, shared/)")
    p.add_argument("--timeout", type=float, default=20, metavar="S",
                   help="graceful stop budget before SIGKILL (default 20 s)")
    add_json(p, "print what the lab reports as JSON (kept: the paths left for the next 'up')")

    p = add("crash", cmd_crash, "SIGKILL the node's init: the whole node dies at once")
    p.add_argument("node", metavar="NODE", help=NODE_HELP)
    add_json(p, "print what the lab reports as JSON")

    p = add("restart", cmd_restart, "boot the node again (stops it gracefully if it is up)")
    p.add_argument("node", metavar="NODE", help=NODE_HELP)
    p.add_argument("--boot-timeout", type=float, default=90, metavar="S",
                   help="give up if the node has not booted within S seconds (default %(default)s)")
    add_json(p, "print what the lab reports as JSON")

    p = add("pause", cmd_pause, "freeze the whole node for SECS seconds, then thaw it")
    p.add_argument("node", metavar="NODE", help=NODE_HELP)
    p.add_argument("seconds", type=float, metavar="SECS", help="how long the node stays frozen")
    p.add_argument("--background", action="store_true",
                   help="return at once; a helper thaws the node after SECS")
    add_json(p, "print what the lab reports as JSON")

    p = add("resume", cmd_resume, "thaw a paused node now")
    p.add_argument("node", metavar="NODE", help=NODE_HELP)
    p.add_argument("--after", type=float, default=0, help=argparse.SUPPRESS)
    p.add_argument("--token", default=None, help=argparse.SUPPRESS)
    add_json(p, "print what the lab reports as JSON")

    p = add("cut-disk", cmd_cut_disk, "cut the node's path to the shared disk")
    p.add_argument("node", metavar="NODE", help=NODE_HELP)
    p.add_argument("--mode", choices=("eio", "hang"), default="eio",
                   help="eio: every I/O fails; hang: every I/O stalls until restore")
    add_json(p, "print what the lab reports as JSON")

    p = add("restore-disk", cmd_restore_disk, "give the node its disk back")
    p.add_argument("node", metavar="NODE", help=NODE_HELP)
    add_json(p, "print what the lab reports as JSON")

    p = add("exec", cmd_exec, "run a command inside a node (argv, no shell); "
            "exit code and output are the command's")
    p.add_argument("--timeout", type=float, default=None,
                   help="kill the command after this many seconds")
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="NODE [OPTIONS] -- CMD ...",
                   help="node name, then the command after --")

    p = add("bench-disk", cmd_bench_disk,
            "4 KiB O_DIRECT read latency through a node's disk view vs a plain loop device")
    p.add_argument("node", metavar="NODE", help=NODE_HELP)
    p.add_argument("--count", type=int, default=2000, metavar="N",
                   help="how many reads to time on each path (default %(default)s)")
    add_json(p, "print what the lab reports as JSON")
