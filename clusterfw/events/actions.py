"""Running an event's action: an argv, never a shell.

How this works
--------------
``run_action(argv, env, timeout_s)`` starts the program with ``subprocess``
(no shell: the argv items, already expanded by
``clusterfw.core.events.expand``, are the program's arguments as they are),
stdin from /dev/null, stdout and stderr the event manager's own (the
journal under systemd), in a session of its own, and waits at most
``timeout_s`` (30 s).  Past that the whole session (the action and whatever
it started) is killed with SIGKILL.  The outcome says how it ended: ``exit
N``, ``killed by SIGNAME``, ``timed out after 30 s (killed)`` or ``could not
run PROGRAM: REASON``.

``action_environment`` is the event manager's environment without the
variables that belong to it alone (``NOTIFY_SOCKET``, ``WATCHDOG_*``,
``LISTEN_*``), plus ``CLUSTERFW_NODE`` (this node) and the event's own
(``clusterfw.core.events.action_env``: ``CLUSTERFW_EVENT``,
``CLUSTERFW_SERVICE``, ``CLUSTERFW_OUT_<NAME>`` for every OUT parameter).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Mapping

from clusterfw.core.events import EventDef, action_env
from clusterfw.subsystems.services.launchers import signal_name

ACTION_TIMEOUT_S = 30.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PRIVATE = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


@dataclass(frozen=True)
class Outcome:
    exit: int | None
    """The exit status; None when the action did not exit by itself."""
    status: str
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.exit == 0


def action_environment(event: EventDef, out_params: Mapping[str, str], node: str,
                       base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _PRIVATE}
    env.setdefault("PATH", DEFAULT_PATH)
    env["CLUSTERFW_NODE"] = node
    env.update(action_env(event, out_params))
    return env


def run_action(argv: tuple[str, ...], env: Mapping[str, str], timeout_s: float = ACTION_TIMEOUT_S) -> Outcome:
    started = time.monotonic()
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, env=dict(env), start_new_session=True,
                                close_fds=True)
    except OSError as exc:
        return Outcome(None, f"could not run {argv[0]}: {exc.strerror or exc}", time.monotonic() - started)
    try:
        code = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        return Outcome(None, f"timed out after {timeout_s:g} s (killed)", time.monotonic() - started)
    elapsed = time.monotonic() - started
    if code < 0:
        return Outcome(None, f"killed by {signal_name(-code)}", elapsed)
    return Outcome(code, f"exit {code}", elapsed)


__all__ = ["ACTION_TIMEOUT_S", "Outcome", "action_environment", "run_action"]
