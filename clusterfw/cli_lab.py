"""`clusterfw lab ...`: N nodes on one machine sharing one real disk.

How this works: this module only parses arguments and prints results; the
work is done by ``clusterfw.lab.Lab`` (see clusterfw/lab/lab.py and
docs/lab.md).  Progress goes to stderr, results to stdout (``--json`` where
offered), errors become ``CliError`` with the CLI's exit codes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys


def _lab(args):
    from clusterfw.lab import Lab
    return Lab(args.dir, args.cache_dir)


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def _wrap(fn):
    def run(args):
        from clusterfw.cli import CliError
        from clusterfw.lab import LabError
        try:
            return fn(args)
        except LabError as exc:
            raise CliError(str(exc), exc.exit_code) from None
        except PermissionError as exc:
            raise CliError(f"{exc} (clusterfw lab needs root)", 2) from None
    return run


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


def cmd_down(args):
    res = _lab(args).down(purge=args.purge, timeout=args.timeout)
    print(f"lab {res['dir']}: down" + (" (nothing was up)" if not res["removed"] else
                                       f" in {res.get('seconds', 0)}s"), file=sys.stderr)
    return 0


def cmd_crash(args):
    _print(_lab(args).crash(args.node))
    return 0


def cmd_restart(args):
    _print(_lab(args).restart(args.node, boot_timeout=args.boot_timeout))
    return 0


def cmd_pause(args):
    _print(_lab(args).pause(args.node, args.seconds, background=args.background))
    return 0


def cmd_resume(args):
    _print(_lab(args).resume(args.node, after=args.after, token=args.token))
    return 0


def cmd_cut_disk(args):
    _print(_lab(args).cut_disk(args.node, args.mode))
    return 0


def cmd_restore_disk(args):
    _print(_lab(args).restore_disk(args.node))
    return 0


def _split_exec(args) -> list[str]:
    """exec's argv: NODE [OPTIONS] -- CMD... (options may also come before NODE).

    argparse cannot mix options after a positional with a trailing command, so
    the words after NODE are split at the first ``--`` here; without ``--``
    everything after NODE is the command."""
    from clusterfw.cli import CliError
    rest = list(args.rest)
    if "--" in rest:
        i = rest.index("--")
        head, cmd = rest[:i], rest[i + 1:]
    else:
        head, cmd = rest[:1], rest[1:]
    p = argparse.ArgumentParser(prog="clusterfw lab exec", add_help=False)
    p.add_argument("node")
    p.add_argument("--dir", default=args.dir)
    p.add_argument("--cache-dir", default=args.cache_dir)
    p.add_argument("--timeout", type=float, default=args.timeout)
    try:
        ns, extra = p.parse_known_args(head)
    except SystemExit:
        raise CliError("usage: clusterfw lab exec NODE [--dir DIR] [--timeout S] -- CMD...",
                       2) from None
    if extra or not cmd:
        raise CliError("usage: clusterfw lab exec NODE [--dir DIR] [--timeout S] -- CMD...",
                       2)
    args.node, args.dir, args.cache_dir, args.timeout = ns.node, ns.dir, ns.cache_dir, ns.timeout
    return cmd


def cmd_exec(args):
    from clusterfw.cli import CliError
    cmd = _split_exec(args)
    try:
        cp = _lab(args).exec(args.node, cmd, timeout=args.timeout, capture=False)
    except subprocess.TimeoutExpired:
        raise CliError(f"command in {args.node} timed out after {args.timeout:g}s", 1) from None
    return cp.returncode


def cmd_bench_disk(args):
    _print(_lab(args).bench_disk(args.node, args.count))
    return 0


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
    p.add_argument("--nodes", type=int, required=True)
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
                        "{dir}); e.g. 'clusterfw disk init {disk} --cluster lab --force'")
    p.add_argument("--no-autostart", dest="autostart", action="store_false",
                   help="nspawn mode: do not enable clusterfw.service at boot (default: enabled, "
                        "so every node runs `systemctl start clusterfw` as it boots)")
    p.add_argument("--no-disk-setup", dest="prepare_disk", action="store_false",
                   help="leave the shared disk as it is (default: format a new disk for "
                        "cluster 'lab' and add nodes n1..nN)")
    p.add_argument("--boot-timeout", type=float, default=90)
    p.add_argument("--rebuild-rootfs", action="store_true", help="rebuild the cached rootfs")
    p.add_argument("--keep-on-failure", action="store_true",
                   help="leave a failed lab as it is for inspection (default: clean up)")
    p.add_argument("--json", action="store_true")

    p = add("status", cmd_status, "show nodes, disk views, PIDs, addresses")
    p.add_argument("--json", action="store_true")

    p = add("down", cmd_down, "stop everything and remove every resource of the lab")
    p.add_argument("--purge", action="store_true",
                   help="also delete the lab directory (disk.img, shared/)")
    p.add_argument("--timeout", type=float, default=20,
                   help="graceful stop budget before SIGKILL (default 20 s)")

    p = add("crash", cmd_crash, "SIGKILL the node's init: the whole node dies at once")
    p.add_argument("node")

    p = add("restart", cmd_restart, "boot the node again (stops it gracefully if it is up)")
    p.add_argument("node")
    p.add_argument("--boot-timeout", type=float, default=90)

    p = add("pause", cmd_pause, "freeze the whole node for SECS seconds, then thaw it")
    p.add_argument("node")
    p.add_argument("seconds", type=float)
    p.add_argument("--background", action="store_true",
                   help="return at once; a helper thaws the node after SECS")

    p = add("resume", cmd_resume, "thaw a paused node now")
    p.add_argument("node")
    p.add_argument("--after", type=float, default=0, help=argparse.SUPPRESS)
    p.add_argument("--token", default=None, help=argparse.SUPPRESS)

    p = add("cut-disk", cmd_cut_disk, "cut the node's path to the shared disk")
    p.add_argument("node")
    p.add_argument("--mode", choices=("eio", "hang"), default="eio",
                   help="eio: every I/O fails; hang: every I/O stalls until restore")

    p = add("restore-disk", cmd_restore_disk, "give the node its disk back")
    p.add_argument("node")

    p = add("exec", cmd_exec, "run a command inside a node (argv, no shell); "
            "exit code and output are the command's")
    p.add_argument("--timeout", type=float, default=None,
                   help="kill the command after this many seconds")
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="NODE [OPTIONS] -- CMD ...",
                   help="node name, then the command after --")

    p = add("bench-disk", cmd_bench_disk,
            "4 KiB O_DIRECT read latency through a node's disk view vs a plain loop device")
    p.add_argument("node")
    p.add_argument("--count", type=int, default=2000)
