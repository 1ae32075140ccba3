"""The process launcher's guardian: when the launcher's process dies, so does
everything it started.

How this works
--------------
``ProcessLauncher`` starts this module once (``python3 -m
clusterfw.subsystems.services.guardian``) in a session of its own, with a
pipe as its standard input; the launcher keeps the only write end (close-on-
exec, so no service inherits it).  It writes one line per event:

* ``+PGID`` -- a new process group (a service, or a command it runs);
* ``-PGID`` -- that group is gone, forget it;
* ``K``     -- SIGKILL every recorded group and exit (the launcher closes).

When the pipe reaches end of file -- the launcher's process died, however
(SIGKILL, a crash, an exit), the kernel closes its end -- the guardian
SIGKILLs every recorded group and exits.  So the processes a dead daemon
started are killed within milliseconds, grandchildren included (they are in
their service's process group), before the cluster can start the service
elsewhere.  SIGTERM does the same (whoever stops the guardian stops what it
guards); SIGINT and SIGHUP are ignored (they belong to a terminal's process
group, and the guardian has none).

Only the standard library is imported, so it starts quickly and never fails
on a missing package.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn


def kill_groups(groups: set[int]) -> None:
    for pgid in sorted(groups):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def serve(fd: int) -> int:
    groups: set[int] = set()
    own = os.getpgrp()

    def on_term(_signum: int, _frame: object) -> NoReturn:
        kill_groups(groups)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    for ignored in (signal.SIGINT, signal.SIGHUP):
        signal.signal(ignored, signal.SIG_IGN)
    pending = b""
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:  # the launcher is gone
            kill_groups(groups)
            return 0
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            line = line.strip()
            if line == b"K":
                kill_groups(groups)
                return 0
            if len(line) > 1 and line[:1] in (b"+", b"-") and line[1:].isdigit():
                pgid = int(line[1:])
                if pgid <= 1 or pgid == own:
                    continue  # never init's group, never its own
                if line[:1] == b"+":
                    groups.add(pgid)
                else:
                    groups.discard(pgid)


def main() -> int:
    return serve(sys.stdin.fileno())


if __name__ == "__main__":
    sys.exit(main())
