"""Every exit code of every ``clusterfw`` program, in one table.

It sits low in the package (it imports nothing) so that the node daemon,
the event manager and fencing use the same numbers as the commands without
importing the CLI.  The commands' own table, with ``CliError``, is
``clusterfw.cli.errors``; each command's ``--help`` lists the codes it uses.

Commands, the daemon and the event manager:

====  ==================  ====================================================
0     ``EXIT_OK``         success; the daemon: left the cluster gracefully
1     ``EXIT_FAILED``     the operation failed (the message says why); may be
                          retried (the disk may come back)
2     ``EXIT_USAGE``      bad usage or bad input (the message names it and the
                          fix)
3     ``EXIT_REFUSED``    a safety check refused the operation (e.g. the device
                          holds data): ``disk`` commands
75    ``EXIT_FENCED``     the node fenced itself (EX_TEMPFAIL): systemd restarts
                          it and the new incarnation rejoins
78    ``EXIT_CONFIG``     refused by the configuration (EX_CONFIG): a restart
                          cannot help (``RestartPreventExitStatus=78``)
130   ``EXIT_INTERRUPTED``  interrupted by Ctrl-C (128 + SIGINT)
====  ==================  ====================================================

Deliberate exception: ``clusterfw lock`` is a cluster-wide flock(1), so it
uses flock(1)'s codes (sysexits.h) and otherwise exits with its command's
status, which may be any number; its own codes are the ``LOCK_*`` ones:

====  ======================  ================================================
1     ``LOCK_CONFLICT``       busy (``--timeout 0``) or timed out: the default
                              of ``--conflict-exit-code``
64    ``LOCK_USAGE``          EX_USAGE: bad usage (no command, bad lock name)
69    ``LOCK_UNAVAILABLE``    EX_UNAVAILABLE: no daemon, node not joined,
                              request refused
75    ``LOCK_LOST``           EX_TEMPFAIL: the lock was lost while the command
                              ran (the node fenced or is leaving, the daemon
                              went away)
77    ``LOCK_NOPERM``         EX_NOPERM: permission denied
126   ``LOCK_CANNOT_EXEC``    the command cannot be executed (as a shell)
127   ``LOCK_NOT_FOUND``      the command was not found (as a shell)
====  ======================  ================================================
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_FENCED = 75  # EX_TEMPFAIL
EXIT_CONFIG = 78  # EX_CONFIG: a restart cannot help
EXIT_INTERRUPTED = 130  # 128 + SIGINT

# `clusterfw lock`: flock(1)'s codes (sysexits.h), besides the command's own status.
LOCK_CONFLICT = 1
LOCK_USAGE = 64  # EX_USAGE
LOCK_UNAVAILABLE = 69  # EX_UNAVAILABLE
LOCK_LOST = 75  # EX_TEMPFAIL, as EXIT_FENCED
LOCK_NOPERM = 77  # EX_NOPERM
LOCK_CANNOT_EXEC = 126
LOCK_NOT_FOUND = 127
