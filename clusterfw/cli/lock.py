"""``clusterfw lock`` (a cluster-wide flock(1)) and ``clusterfw locks``.

How this works
--------------
``lock`` connects to the node daemon's socket, asks for the lock and waits
for the grant.  Then it runs CMD with the lock's fencing token in its
environment and the daemon connection inherited, like flock(1) hands its
file descriptor to the command: the lock lives as long as that connection,
so it stays held while CMD (or anything CMD left running with the
descriptor) lives, even if this process is killed; it is released when the
last holder of the connection exits.  When CMD exits, ``lock`` releases the
lock, waits (bounded) until the release is on the disk, and exits with
CMD's status.

If the node loses the lock while CMD runs -- the daemon reports
``revoked`` (the node is fenced or leaving), the daemon connection breaks,
or the daemon does not renew the lock's validity in time (the grant and a
``valid`` message every heartbeat interval say for how long the node's
fence deadline vouches for it: a paused or hung daemon stops renewing)
-- the lock can no longer be vouched for: CMD and everything it started
are killed (SIGKILL, at once: another node may be granted the lock once
this node is forced out) and ``lock`` exits 75.

CMD runs in a process group of its own, so that one ``killpg`` stops all
of it at once: killing process by process, children first, let a shell run
its next statement after LOST.  ``lock`` is also a child subreaper
(PR_SET_CHILD_SUBREAPER): whatever CMD started stays below ``lock`` even if
its parent exits, so a descendant that moved to a process group or session
of its own (``setsid``, a daemon's double fork) is found and killed too, in
rounds until no descendant is left.  Only processes started outside CMD's
tree on its behalf (``systemd-run``, ``at``, ``ssh``) escape; they would
escape a cgroup of ``lock``'s as well.

The terminal: CMD keeps the session (and so its controlling terminal).  When
``lock`` runs in the terminal's foreground, it hands the foreground to CMD's
group while CMD runs, as a shell does, so an interactive CMD reads the
terminal and gets its interrupt and quit keys directly; when CMD stops
(Ctrl-Z), ``lock`` takes the terminal back and stops itself, and on
``fg``/``bg`` it continues CMD (after checking that the lock is still
valid).  Signals sent
to ``lock`` itself (SIGINT, SIGTERM, SIGHUP, SIGQUIT) go to CMD's whole
group.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from typing import Any

from clusterfw.cli import lab as lab_cli
from clusterfw.cli.errors import CliError
from clusterfw.cli.options import add_json, add_socket, client_socket
from clusterfw.client import Client, ClientError, Connection, DaemonUnavailable, RequestFailed
from clusterfw.node import protocol

# Exit codes of `clusterfw lock` (besides CMD's own status): flock(1)'s, the
# deliberate exception to the CLI's table (clusterfw.exitcodes).
from clusterfw.exitcodes import LOCK_CANNOT_EXEC as EXIT_CANNOT_EXEC
from clusterfw.exitcodes import LOCK_CONFLICT as EXIT_CONFLICT
from clusterfw.exitcodes import LOCK_LOST as EXIT_LOST
from clusterfw.exitcodes import LOCK_NOPERM as EXIT_NOPERM
from clusterfw.exitcodes import LOCK_NOT_FOUND as EXIT_NOT_FOUND
from clusterfw.exitcodes import LOCK_UNAVAILABLE as EXIT_UNAVAILABLE
from clusterfw.exitcodes import LOCK_USAGE as EXIT_USAGE

RELEASE_WAIT_S = 5.0
KILL_WAIT_S = 2.0
"""On LOST, how long ``lock`` keeps killing descendants that appear (forks
racing with the kill) before it gives up and reports the survivors."""
_PR_SET_CHILD_SUBREAPER = 36
LOCK_EXIT_HELP = f"""exit codes:
  CMD's exit status, or 128+N if CMD died of signal N
  {EXIT_CONFLICT}    the lock was not acquired: it is busy (--timeout 0) or the timeout
       expired (choose another code with --conflict-exit-code)
  {EXIT_USAGE}   bad usage (no CMD, bad lock name)
  {EXIT_UNAVAILABLE}   no daemon on this host, this node is not joined at the DLM level,
       or the request was refused (the message says why)
  {EXIT_LOST}   the lock was lost while CMD ran (node fenced or leaving, daemon gone):
       CMD and everything it started were killed
  {EXIT_NOPERM}   permission denied: locks need root or the 'clusterfw' group
  {EXIT_CANNOT_EXEC}  CMD cannot be executed;  {EXIT_NOT_FOUND}  CMD not found

CMD's environment: CLUSTERFW_LOCK_NAME, CLUSTERFW_LOCK_MODE, CLUSTERFW_LOCK_TOKEN
(the fencing token: strictly increasing per lock; whatever CMD writes should
carry it and refuse an older one), CLUSTERFW_LOCK_NODE."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "lock", help="run a command under a cluster-wide lock (a cluster flock(1))",
        usage="clusterfw lock NAME [--shared] [--timeout S] [--conflict-exit-code N] [-v] [--socket PATH] "
              "-- CMD [ARG...]",
        description="Take the cluster-wide lock NAME on this node, run CMD while it is held, release it.",
        epilog=LOCK_EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _lock_options(p)
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="NAME [OPTIONS] -- CMD [ARG...]",
                   help="the lock's name (1..48 bytes of UTF-8), then the command after '--'")
    p.set_defaults(func=cmd_lock)

    q = subparsers.add_parser(
        "locks", help="who holds which cluster lock, since when, with which token; who waits",
        description="Read the lock area of the shared disk through this node's daemon and show every "
                    "lock held or asked for, on every node.",
        epilog="exit codes: 0 ok, 1 the daemon (or the disk) could not be asked")
    add_json(q, "one JSON object")
    q.add_argument("--all", action="store_true",
                   help="also show entries that no longer count (left behind by a node that was forced out "
                        "or restarted: the protocol ignores them)")
    add_socket(q, lab_cli.ASKS_A_LAB_NODE)
    q.set_defaults(func=cmd_locks)


# ------------------------------------------------------------------- lock
def _lock_options(p: argparse.ArgumentParser, defaults: argparse.Namespace | None = None) -> None:
    d = (lambda key, value: getattr(defaults, key) if defaults is not None else value)
    p.add_argument("--shared", action="store_true", default=d("shared", False),
                   help="take it shared (readers); default exclusive")
    p.add_argument("--timeout", type=float, default=d("timeout", None), metavar="S",
                   help="give up after S seconds (0: try once, do not wait); default: wait for ever")
    p.add_argument("--conflict-exit-code", type=int, default=d("conflict_exit_code", EXIT_CONFLICT), metavar="N",
                   help=f"exit code when the lock is busy or the timeout expires (default {EXIT_CONFLICT})")
    p.add_argument("--verbose", "-v", action="store_true", default=d("verbose", False),
                   help="report waiting, grant and release on stderr")
    add_socket(p, default=d("socket", None))


class _UsageError(Exception):
    pass


_FLAGS = ("--shared", "--verbose", "-v")
_VALUED = ("--timeout", "--conflict-exit-code", "--socket")


def _split_lock(args: argparse.Namespace) -> argparse.Namespace:
    """NAME [OPTIONS] -- CMD...: argparse cannot mix options after a
    positional with a trailing command, so split at the first '--'."""
    rest = list(args.rest)
    if "--" in rest:
        i = rest.index("--")
        head, command = rest[:i], rest[i + 1:]
    else:  # NAME, then our options, then the first word that is not one starts CMD
        i = 1
        while i < len(rest):
            word = rest[i]
            if word in _FLAGS or word.split("=", 1)[0] in _VALUED and "=" in word:
                i += 1
            elif word in _VALUED:
                i += 2
            else:
                break
        head, command = rest[:i], rest[i:]
    p = argparse.ArgumentParser(prog="clusterfw lock", add_help=False)
    p.add_argument("name")
    _lock_options(p, args)

    def fail(message: str) -> None:
        raise _UsageError(message)

    p.error = fail  # type: ignore[method-assign,assignment]
    ns, extra = p.parse_known_args(head)
    if extra:
        raise _UsageError(f"unexpected {' '.join(extra)} before '--'")
    ns.command = command
    return ns


def _say(text: str) -> None:
    print(f"clusterfw lock: {text}", file=sys.stderr, flush=True)


def cmd_lock(args: argparse.Namespace) -> int:
    try:
        args = _split_lock(args)
    except _UsageError as exc:
        _say(f"{exc}; usage: clusterfw lock NAME [--shared] [--timeout S] -- CMD [ARG...]")
        return EXIT_USAGE
    command = args.command
    if not command:
        _say("give the command to run under the lock: clusterfw lock NAME -- CMD [ARG...]")
        return EXIT_USAGE
    size = len(args.name.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= protocol.LOCK_NAME_BYTES_MAX:
        _say(f"lock name {args.name!r}: {size} bytes of UTF-8, must be 1..{protocol.LOCK_NAME_BYTES_MAX}")
        return EXIT_USAGE
    if not 0 <= args.conflict_exit_code <= 255:
        _say(f"--conflict-exit-code {args.conflict_exit_code}: an exit code is 0..255")
        return EXIT_USAGE
    if args.timeout is not None and not 0 <= args.timeout <= protocol.LOCK_TIMEOUT_MS_MAX / 1000:
        _say(f"--timeout {args.timeout}: must be 0 or more seconds")
        return EXIT_USAGE
    path, chosen_by = client_socket(args.socket)
    try:
        conn = Connection(path)
    except DaemonUnavailable as exc:
        _say(lab_cli.no_daemon(exc, ["clusterfw", "lock", args.name, "--", *command], chosen_by))
        return EXIT_UNAVAILABLE
    except ClientError as exc:
        _say(str(exc))
        return EXIT_UNAVAILABLE
    with conn:
        return _locked_run(conn, args, command)


def _locked_run(conn: Connection, args: argparse.Namespace, command: list[str]) -> int:
    mode = "shared" if args.shared else "exclusive"
    request: dict[str, Any] = {"op": "lock", "id": 1, "name": args.name, "mode": mode}
    if args.timeout is not None:
        request["timeout_ms"] = int(round(args.timeout * 1000))
    started = time.monotonic()
    try:
        conn.send(request)
        reply = conn.receive()
    except ClientError as exc:
        _say(str(exc))
        return EXIT_UNAVAILABLE
    if reply is None:
        _say("the daemon closed the connection without answering")
        return EXIT_UNAVAILABLE
    if not reply.get("ok"):
        error = str(reply.get("error"))
        _say(f"lock '{args.name}' refused: {error}")
        return EXIT_NOPERM if error.startswith("permission denied") else EXIT_UNAVAILABLE
    node = str(reply.get("node", ""))
    if args.verbose:
        _say(f"waiting for '{args.name}' ({mode}) on node {node}")
    conn.settimeout(None)
    while True:
        try:
            message = conn.receive()
            received = time.monotonic()
        except ClientError as exc:
            _say(f"{exc} while waiting for '{args.name}'")
            return EXIT_UNAVAILABLE
        if message is None:
            _say(f"the daemon went away while we waited for '{args.name}'")
            return EXIT_UNAVAILABLE
        op = message.get("op")
        if op == "granted":
            break
        if op == "recovered":
            _say(f"'{args.name}': the lock of {message.get('from')} (forced out of the cluster) was recovered")
        elif op == "denied":
            reason = str(message.get("reason"))
            if message.get("kind") in ("busy", "timeout"):  # DenyKind's values on the wire
                _say(f"'{args.name}' not acquired: {reason}")
                return args.conflict_exit_code
            _say(f"'{args.name}' not acquired: {reason}")
            return EXIT_UNAVAILABLE
    token = int(message["token"])
    if args.verbose:
        _say(f"'{args.name}' granted ({mode}, token {token}) after {time.monotonic() - started:.3f} s")
    env = dict(os.environ, CLUSTERFW_LOCK_NAME=args.name, CLUSTERFW_LOCK_MODE=mode,
               CLUSTERFW_LOCK_TOKEN=str(token), CLUSTERFW_LOCK_NODE=node)
    sock_fd = conn.fileno()
    orphans = _become_subreaper()
    try:
        # A process group of its own: on LOST one killpg reaches all of it.
        child = subprocess.Popen(command, env=env, pass_fds=(sock_fd,), process_group=0)
    except FileNotFoundError:
        _say(f"{command[0]}: command not found")
        return EXIT_NOT_FOUND
    except PermissionError:
        _say(f"{command[0]}: permission denied (not executable?)")
        return EXIT_CANNOT_EXEC
    except OSError as exc:
        _say(f"{command[0]}: cannot run it: {exc}")
        return EXIT_CANNOT_EXEC
    status, lost = _supervise(conn, child, _valid_until(message, "valid_ms", received), orphans=orphans)
    if lost is not None:
        _say(f"'{args.name}' LOST while the command ran ({lost}): killed it and everything it started "
             f"(pid {child.pid}, process group {child.pid})")
        return EXIT_LOST
    _release(conn, args)
    return status


def _valid_until(message: dict[str, Any], key: str, received: float) -> float:
    """When (on this process's monotonic clock) the validity in a grant or
    ``valid`` message ends.  The daemon states the end on the host's
    CLOCK_BOOTTIME, so a message read late (this process was not scheduled)
    still ends exactly when the daemon meant; ``received + for`` bounds it
    in case the two clocks are not comparable (a time namespace)."""
    by_receipt = received + float(message.get(key, 0)) / 1000.0
    until_boot = message.get("until_boot_ms")
    if until_boot is None:
        return by_receipt
    now_mono = time.monotonic()
    by_clock = now_mono + (float(until_boot) - time.clock_gettime(time.CLOCK_BOOTTIME) * 1000.0) / 1000.0
    return min(by_receipt, by_clock)


def _become_subreaper() -> bool:
    """Make this process the child subreaper of what it starts (Linux): an
    orphaned descendant of CMD is re-parented here, not to init, so LOST
    finds it however it changed its process group or session."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _supervise(conn: Connection, child: subprocess.Popen, valid_until: float,
               orphans: bool = False) -> tuple[int, str | None]:
    """Wait for CMD; returns (its status, None) or (-, why the lock was lost).
    The lock is lost when the daemon says so, goes away, or does not renew
    the lock's validity in time.  Validity is judged only after everything
    the daemon already sent has been read: a renewal that arrived in time
    counts even if this process was not scheduled to read it at once.

    CMD leads its own process group (``process_group=0``).  ``orphans``:
    this process is a child subreaper, so every other child it has is an
    orphaned descendant of CMD: reaped while CMD runs, killed on LOST."""
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    job = _Job(child, orphans)

    def forward(signum: int, _frame: object) -> None:
        job.signal(signum)

    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def child_changed(_signum: int, _frame: object) -> None:
        try:
            os.write(wake_w, b"c")
        except OSError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in forwarded}
    previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, child_changed)
    pidfd = os.pidfd_open(child.pid)
    selector = selectors.DefaultSelector()
    until = [valid_until]

    def lose(why: str) -> tuple[int, str | None]:
        survivors = job.kill_all()
        if survivors:  # e.g. stuck in uninterruptible I/O: SIGKILL is pending on them
            why += (f"; still alive {KILL_WAIT_S:g} s after SIGKILL: pid "
                    f"{', '.join(str(pid) for pid in survivors)}")
        return 0, why

    def drain() -> str | None:
        """Read what is buffered; the reason if the lock is lost."""
        while conn.has_buffered():
            lost = _read_daemon(conn, until)
            if lost is not None:
                return lost
        return None

    def catch_up() -> str | None:
        """Read everything the daemon sent while we were stopped."""
        lost = drain()
        while lost is None and _readable(conn.fileno()):
            lost = _read_daemon(conn, until) or drain()
        return lost

    try:
        job.to_foreground()
        selector.register(pidfd, selectors.EVENT_READ, "child")
        selector.register(conn.fileno(), selectors.EVENT_READ, "daemon")
        selector.register(wake_r, selectors.EVENT_READ, "sigchld")
        lost = drain()
        if lost is not None:
            return lose(lost)
        while True:
            left = until[0] - time.monotonic()
            ready = selector.select(max(left, 0.0))
            if any(key.data == "child" for key, _mask in ready):
                return _status(child.wait()), None
            daemon = any(key.data == "daemon" for key, _mask in ready)
            if any(key.data == "sigchld" for key, _mask in ready):
                _drain_pipe(wake_r)
                job.reap_orphans()
                if job.stopped():
                    # Ctrl-Z stopped CMD: stop with it, as a shell job; once
                    # continued, check the lock, then continue CMD.
                    job.suspend_self()
                    lost = catch_up()
                    if lost is None and until[0] - time.monotonic() <= 0:
                        lost = "the daemon did not renew the lock in time: node paused, hung or fenced"
                    if lost is not None:
                        return lose(lost)
                    job.resume()
                    continue
            if daemon:  # the daemon sent something (a renewal, a revocation, EOF)
                lost = _read_daemon(conn, until) or drain()
                if lost is not None:
                    return lose(lost)
                continue
            if ready:
                continue
            if until[0] - time.monotonic() <= 0:
                if child.poll() is not None:
                    return _status(child.returncode), None
                return lose("the daemon did not renew the lock in time: node paused, hung or fenced")
    finally:
        job.take_terminal()
        selector.close()
        os.close(pidfd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake_r)
        os.close(wake_w)


def _readable(fd: int) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(0))


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


class _Job:
    """CMD's process group, and the terminal it may have: the job control a
    shell would do for it."""

    def __init__(self, child: subprocess.Popen, orphans: bool) -> None:
        self.child = child
        self.pgid = child.pid  # process_group=0: CMD leads its own group
        try:
            self.group = os.getpgid(child.pid) == child.pid
        except ProcessLookupError:
            self.group = True  # already gone: nothing left to signal anyway
        self.orphans = orphans
        self.tty: int | None = None  # a descriptor of our controlling terminal
        self.handed = False  # CMD's group has the terminal's foreground from us
        for fd in (0, 1, 2):
            try:
                os.tcgetpgrp(fd)  # fails unless fd is our controlling terminal
            except OSError:
                continue
            self.tty = fd
            break

    def signal(self, signum: int) -> None:
        """To CMD's whole group (to CMD alone if it shares our group)."""
        try:
            if self.group:
                os.killpg(self.pgid, signum)
            elif self.child.returncode is None:
                os.kill(self.child.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def _set_foreground(self, pgid: int) -> None:
        assert self.tty is not None
        # Blocked SIGTTOU: a background process may set the foreground group.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
        try:
            os.tcsetpgrp(self.tty, pgid)
        except OSError:
            pass
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def to_foreground(self) -> None:
        """Give CMD the terminal if we have it; continue CMD in case it read
        the terminal before it had it (SIGTTIN stopped it)."""
        if self.tty is None or not self.group:
            return
        try:
            if os.tcgetpgrp(self.tty) != os.getpgrp():
                return  # we were moved to the background: so is CMD
        except OSError:
            return
        self._set_foreground(self.pgid)
        self.handed = True
        self.signal(signal.SIGCONT)
        self.stopped()  # a stop before the hand-over is over

    def take_terminal(self) -> None:
        """Take the terminal's foreground back if CMD's group has it from us."""
        if self.handed:
            self._set_foreground(os.getpgrp())
            self.handed = False

    def stopped(self) -> bool:
        """CMD was stopped by job control (Ctrl-Z, or it used the terminal
        from the background); the stop is consumed, an exit is left for
        wait.  Without a terminal, or for SIGSTOP, whoever stopped CMD
        continues it."""
        if self.tty is None:
            return False
        try:
            info = os.waitid(os.P_PID, self.child.pid, os.WSTOPPED | os.WNOHANG)
        except ChildProcessError:
            return False
        return (info is not None and info.si_code == os.CLD_STOPPED
                and info.si_status in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU))

    def suspend_self(self) -> None:
        self.take_terminal()
        os.kill(os.getpid(), signal.SIGTSTP)  # returns once we are continued (fg or bg)

    def resume(self) -> None:
        self.to_foreground()
        self.signal(signal.SIGCONT)

    def reap_orphans(self) -> None:
        """Reap exited orphans re-parented here (never CMD: Popen waits for it)."""
        if not self.orphans:
            return
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == self.child.pid:
                return
            try:
                os.waitpid(info.si_pid, 0)
            except ChildProcessError:
                pass

    def kill_all(self) -> list[int]:
        """SIGKILL CMD's whole group at once, then every other descendant (a
        process that left the group), in rounds until none is left; reap.
        Returns the pids that still lived after ``KILL_WAIT_S``."""
        import psutil

        try:  # before the group dies: below a dead process nothing can be found
            stray = psutil.Process(self.child.pid).children(recursive=True)
        except psutil.Error:
            stray = []
        self.signal(signal.SIGKILL)
        self.take_terminal()
        me = psutil.Process()
        deadline = time.monotonic() + KILL_WAIT_S
        while True:
            if self.orphans:
                try:
                    stray += me.children(recursive=True)
                except psutil.Error:
                    pass
            alive = []
            for proc in stray:
                try:
                    if proc.status() != psutil.STATUS_ZOMBIE:
                        proc.kill()
                        alive.append(proc)
                except psutil.Error:
                    pass
            self.child.poll()
            self.reap_orphans()
            if not alive or time.monotonic() > deadline:
                break
            stray = alive if not self.orphans else []
            time.sleep(0.005)
        self.child.wait()
        self.reap_orphans()
        return [proc.pid for proc in alive]


def _read_daemon(conn: Connection, valid_until: list[float]) -> str | None:
    """Consume one message the daemon sent while CMD runs; the reason if
    the lock is lost."""
    conn.settimeout(0.5)
    try:
        message = conn.receive()
        received = time.monotonic()
    except ClientError as exc:
        return f"daemon connection failed: {exc}"
    finally:
        conn.settimeout(None)
    if message is None:
        return "the daemon went away"
    if message.get("op") == "revoked":
        return f"revoked: {message.get('reason')}"
    if message.get("op") == "valid":
        if float(message.get("for_ms", 0)) <= 0 and message.get("reason"):
            return f"revoked: {message.get('reason')}"  # the daemon no longer vouches for it, and says why
        valid_until[0] = _valid_until(message, "for_ms", received)
    return None


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def _release(conn: Connection, args: argparse.Namespace) -> None:
    """Ask for the release and wait (bounded) until it is on the disk."""
    deadline = time.monotonic() + RELEASE_WAIT_S
    try:
        conn.send({"op": "unlock", "id": 1})
        while time.monotonic() < deadline:
            conn.settimeout(max(0.01, deadline - time.monotonic()))
            message = conn.receive()
            if message is None:
                return
            if message.get("op") in ("released", "revoked", "denied"):
                if args.verbose:
                    _say(f"'{args.name}' {message['op']}")
                return
            if "ok" in message and not message["ok"]:
                return  # already ended (e.g. revoked just now)
    except ClientError:
        return  # closing the connection releases it anyway


# ------------------------------------------------------------------ locks
def cmd_locks(args: argparse.Namespace) -> int:
    path, chosen_by = client_socket(args.socket)
    try:
        reply = Client(path, timeout_s=15).request("locks")
    except DaemonUnavailable as exc:
        if chosen_by is not None:
            raise CliError(lab_cli.no_daemon(exc, _locks_argv(args), chosen_by)) from None
        lab = _locks_from_lab(args, exc)
        if lab is None:
            raise CliError(lab_cli.no_daemon(exc, _locks_argv(args), None)) from None
        reply = lab
    except RequestFailed as exc:
        raise CliError(str(exc)) from None
    except ClientError as exc:
        raise CliError(str(exc)) from None
    reply.pop("ok", None)
    reply.pop("v", None)
    reply["damaged_sectors"] = sum(1 for r in reply.get("locks", []) if r.get("state") == "damaged")
    if args.json:
        if not args.all:
            hidden = [r for r in reply.get("locks", []) if not _shown(r)]
            reply["locks"] = [r for r in reply.get("locks", []) if _shown(r)]
            reply["stale_hidden"] = len(hidden)
        json.dump(reply, sys.stdout)
        print()
    else:
        print(format_locks(reply, show_all=args.all))
    return 1 if reply.get("error") else 0


def _locks_argv(args: argparse.Namespace) -> list[str]:
    """The ``locks`` command line a person ran (without the socket)."""
    return ["clusterfw", "locks", *(["--all"] if args.all else []), *(["--json"] if args.json else [])]


def _locks_from_lab(args: argparse.Namespace, why: DaemonUnavailable) -> dict[str, Any] | None:
    """On a host running `clusterfw lab` without a daemon of its own: ask a
    running lab node's daemon, and say so."""
    found = lab_cli.ask_lab_node(["clusterfw", "locks", "--json", "--all"], timeout=20)
    if found is None:
        return None
    node, out = found
    out.pop("stale_hidden", None)
    print(lab_cli.asked_lab_node(why, node, _locks_argv(args)), file=sys.stderr if args.json else sys.stdout)
    return out


def _ago(unix_ms: int | None, now_ms: int) -> str:
    if not unix_ms:
        return "-"
    stamp = time.strftime("%H:%M:%S", time.localtime(unix_ms / 1000))
    return f"{stamp} ({max(0, now_ms - unix_ms) / 1000:.1f} s ago)"


def _shown(row: dict[str, Any]) -> bool:
    """Shown without --all: entries that count, and every damaged sector."""
    return bool(row.get("counts")) or row.get("state") == "damaged"


def _state_text(r: dict[str, Any]) -> str:
    if r.get("state") == "damaged":
        return f"DAMAGED ({'blocks its stripe' if r.get('counts') else 'ignored: node not counted'})"
    return r["state"] if r.get("counts") else f"{r['state']} (stale: ignored)"


def format_locks(reply: dict[str, Any], show_all: bool = False) -> str:
    from clusterfw.core.text import printable  # lock and node names: control characters escaped

    now = int(reply.get("read_unix_ms") or time.time() * 1000)
    rows = [r for r in reply.get("locks", []) if show_all or _shown(r)]
    stale = sum(1 for r in reply.get("locks", []) if not _shown(r))
    damaged = [r for r in reply.get("locks", []) if r.get("state") == "damaged"]
    lines = [f"cluster {printable(reply.get('cluster'))}: lock table read by node {printable(reply.get('node'))} "
             f"at {time.strftime('%H:%M:%S', time.localtime(now / 1000))}"]
    if reply.get("error"):
        lines.append(f"ERROR: {printable(reply['error'])}")
    if not rows:
        lines.append("no lock is held or asked for")
    else:
        table = [["LOCK", "MODE", "STATE", "NODE", "PID", "TOKEN", "TICKET", "SINCE"]]
        for r in rows:
            state = _state_text(r)
            table.append([printable(r["name"]), r["mode"], state, printable(r["node"]), str(r.get("pid") or "-"),
                          "-" if r.get("token") is None else str(r["token"]), str(r["ticket"]),
                          _ago(r.get("since_unix_ms"), now)])
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in table]
    if stale and not show_all:
        lines.append(f"({stale} stale entr{'y' if stale == 1 else 'ies'} of departed nodes hidden: --all)")
    if damaged:
        lines.append(f"{len(damaged)} damaged lock sector{'' if len(damaged) == 1 else 's'} (does not decode; its "
                     "node's DLM rewrites it):")
        for r in damaged:
            lines.append(f"  node {printable(r.get('node'))} (id {r.get('node_id')}), stripe {r.get('stripe')}: "
                         f"{printable(r.get('error'))}")
    waiting = [r for r in reply.get("local", []) if r.get("waiting_for")]
    for r in waiting:
        whom = ", ".join(f"{printable(w['node'])} ({w['why']}" + (f": its lock sector on stripe {w.get('stripe')} "
                                                                "does not decode" if w.get("why") == "damaged" else "")
                         + ")" for w in r["waiting_for"])
        lines.append(f"pid {r.get('pid')} on {printable(reply.get('node'))} waits for '{printable(r['name'])}' "
                     f"behind: {whom}")
    return "\n".join(lines)
