"""PID 1 of a process-mode lab node: builds the node's view of the host, runs its command.

How this works
--------------
The lab starts a process-mode node as::

    nsenter --net=/run/netns/<ns> -- unshare --mount --uts --ipc --pid --fork
        --kill-child --propagation private -- python -m clusterfw.lab.procinit ...

so this program runs as PID 1 of a fresh PID namespace, in a private mount
namespace, inside the node's network namespace.  It then

1. sets the hostname (``n1`` ...);
2. builds a new root on a tmpfs: every top-level directory of the host is
   bind-mounted (recursively) except ``/dev``, ``/proc``, ``/sys``, ``/run``,
   ``/tmp``, which are made private to the node:

   * ``/dev``  tmpfs with null, zero, full, random, urandom, tty, a private
     devpts, ``/dev/shm``, and the node's loop device bound at
     ``/dev/clusterfw-disk``;
   * ``/proc`` a procfs of the new PID namespace; ``/sys`` a sysfs of the
     node's network namespace (host cgroupfs bound under it);
   * ``/run`` and ``/tmp`` empty tmpfs (so per-node sockets never collide),
     with a ``clusterfw`` launcher in ``/run/clusterfw-lab/bin`` that runs the
     lab's own clusterfw with the lab's interpreter;
   * ``/etc`` an overlay of the host's ``/etc`` whose upper layer (tmpfs) adds
     ``/etc/clusterfw/node.conf`` and the lab's ``/etc/hosts``;
   * ``/lab/shared`` the lab's shared directory;

3. chroots into it, starts the node command (argv, no shell) with a small
   clean environment, reaps every orphan, forwards SIGTERM/SIGINT to the
   command, and exits with the command's status.  When PID 1 exits the
   kernel kills everything left in the namespace, so a process-mode node is
   "down" exactly when its command has ended (or its init was killed).
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import signal
import socket
import sys
import time

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]

PRIVATE_TOP = {"dev", "proc", "sys", "run", "tmp", "lab", "etc", "lost+found"}
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLI_DIR = "/run/clusterfw-lab/bin"  # holds the node's `clusterfw` launcher


def mount(src: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    enc = (lambda s: None if s is None else s.encode())
    if _libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {src} on {target} ({fstype}): {os.strerror(e)}")


def bind(src: str, target: str, recursive: bool = True, readonly: bool = False) -> None:
    if os.path.isdir(src):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "a").close()
    mount(src, target, None, MS_BIND | (MS_REC if recursive else 0))
    if readonly:
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def build_root(args) -> str:
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")  # staging
    root = "/run/.lab-root"
    os.makedirs(root)
    mount("tmpfs", root, "tmpfs", 0, "mode=755")

    for name in sorted(os.listdir("/")):
        if name in PRIVATE_TOP:
            continue
        src, dst = "/" + name, f"{root}/{name}"
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            bind(src, dst)

    # /etc: host's, plus this node's files, without touching the host
    up = "/run/.lab-etc"
    os.makedirs(f"{up}/upper/clusterfw")
    os.makedirs(f"{up}/work")
    with open(f"{up}/upper/clusterfw/node.conf", "w") as f:
        f.write(args.node_conf)
    if args.hosts:
        with open(args.hosts) as hosts_in, open(f"{up}/upper/hosts", "w") as hosts_out:
            hosts_out.write(hosts_in.read())
    with open(f"{up}/upper/hostname", "w") as f:
        f.write(args.hostname + "\n")
    os.makedirs(f"{root}/etc")
    mount("overlay", f"{root}/etc", "overlay", 0,
          f"lowerdir=/etc,upperdir={up}/upper,workdir={up}/work")

    # /dev
    dev = f"{root}/dev"
    os.makedirs(dev)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755")
    for n in DEV_NODES:
        if os.path.exists(f"/dev/{n}"):
            bind(f"/dev/{n}", f"{dev}/{n}", recursive=False)
    os.makedirs(f"{dev}/pts")
    mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC,
          "newinstance,ptmxmode=0666,mode=620")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.makedirs(f"{dev}/shm")
    mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    bind(args.disk, f"{dev}/clusterfw-disk", recursive=False)

    # /proc, /sys, /run, /tmp
    os.makedirs(f"{root}/proc")
    mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(f"{root}/sys")
    mount("sysfs", f"{root}/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if os.path.isdir("/sys/fs/cgroup"):
        bind("/sys/fs/cgroup", f"{root}/sys/fs/cgroup")
    os.makedirs(f"{root}/run")
    mount("tmpfs", f"{root}/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    os.makedirs(f"{root}/run/lock")
    if args.cli_python:  # `clusterfw` in the node = the lab's clusterfw
        os.makedirs(f"{root}{CLI_DIR}")
        lines = [f"#!{args.cli_python}", "import sys"]
        if args.cli_path:
            lines.append(f"sys.path.insert(0, {args.cli_path!r})")
        lines += ["from clusterfw.cli import main", "sys.exit(main())", ""]
        with open(f"{root}{CLI_DIR}/clusterfw", "w") as f:
            f.write("\n".join(lines))
            os.fchmod(f.fileno(), 0o755)
    os.makedirs(f"{root}/tmp")
    mount("tmpfs", f"{root}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    # A source checkout under a directory made private here (e.g. a clone in
    # /tmp) stays visible at its own path, read-only: the node runs that code.
    if args.cli_path and args.cli_path.split("/")[1:2] and args.cli_path.split("/")[1] in ("tmp", "run") \
            and os.path.isdir(args.cli_path):
        bind(args.cli_path, f"{root}{args.cli_path}", readonly=True)

    os.makedirs(f"{root}/lab")
    bind(args.shared, f"{root}/lab/shared")
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clusterfw.lab.procinit")
    ap.add_argument("--hostname", required=True)
    ap.add_argument("--disk", required=True, help="host block device for /dev/clusterfw-disk")
    ap.add_argument("--shared", required=True)
    ap.add_argument("--hosts", default="")
    ap.add_argument("--node-conf", required=True, help="content of /etc/clusterfw/node.conf")
    ap.add_argument("--ready", required=True, help="host file to write once running")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the command")
    ap.add_argument("--cli-python", default="", help="interpreter for the node's clusterfw")
    ap.add_argument("--cli-path", default="", help="sys.path entry for the node's clusterfw")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no node command")
    if os.getpid() != 1:
        print("procinit: not PID 1 of a new PID namespace", file=sys.stderr)
        return 2

    socket.sethostname(args.hostname)
    ready = os.open(args.ready, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    root = build_root(args)
    os.chroot(root)
    os.chdir("/")

    env = {"PATH": NODE_PATH, "HOME": "/root", "LANG": "C.UTF-8",
           "HOSTNAME": args.hostname}
    for kv in args.env:
        k, _, v = kv.partition("=")
        env[k] = v

    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(s, signal.SIG_DFL)
            os.execvpe(cmd[0], cmd, env)
        except OSError as exc:
            print(f"procinit: cannot run {cmd[0]}: {exc}", file=sys.stderr, flush=True)
        os._exit(127)

    os.write(ready, f"{child}\n".encode())
    os.close(ready)
    stopping = {"at": 0.0}

    def on_term(signum, _frame):
        stopping["at"] = stopping["at"] or time.monotonic()
        try:
            os.kill(child, signal.SIGTERM)
        except ProcessLookupError:
            pass

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_term)

    status = 0
    while True:
        try:
            pid, st = os.wait()
        except ChildProcessError:
            break
        if pid == child:
            status = os.waitstatus_to_exitcode(st)
            if status < 0:
                status = 128 - status
            break
    print(f"procinit: node command exited with status {status}", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
