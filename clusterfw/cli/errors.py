"""What a command reports when it fails, and with which exit code.

A command raises ``CliError`` with one sentence for a person (what was wrong
and how to fix it); ``clusterfw.cli.main`` prints it as ``clusterfw:
MESSAGE`` and exits with its code.  The codes are the one table in
``clusterfw.exitcodes`` (shared with the daemon and the event manager):

  0   success
  1   the operation failed (the message says why)
  2   bad usage or bad input (the message names it and the fix)
  3   a safety check refused the operation (e.g. the device holds data)
  75  the daemon: the node fenced itself
  78  the daemon, the event manager: refused by the configuration
  130 interrupted (Ctrl-C)

Deliberate exception: ``clusterfw lock`` uses flock(1)'s codes (64, 69, 75,
77, 126, 127: the ``LOCK_*`` names in ``clusterfw.exitcodes``), as scripts
that replace flock(1) with it expect.
"""
from __future__ import annotations

from clusterfw.exitcodes import (EXIT_CONFIG, EXIT_FAILED, EXIT_FENCED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED,
                                 EXIT_USAGE)

__all__ = ["CliError", "EXIT_CONFIG", "EXIT_FAILED", "EXIT_FENCED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_REFUSED",
           "EXIT_USAGE", "EPILOG"]

EPILOG = "Exit codes: 0 ok, 1 failed, 2 bad usage or input, 3 refused by a safety check."


class CliError(Exception):
    """An error to show the user: what was wrong and how to fix it."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.exit_code = exit_code
