"""The ``clusterfw`` command.

Each command group lives in its own module with a ``register(subparsers)``
function; this file only wires them together and maps errors to exit codes.

Exit codes:
  0  success
  1  the operation failed (the message says why)
  2  bad usage or bad input (the message names it and the fix)
  3  a safety check refused the operation (e.g. the device holds data)
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules that contribute subcommands.  A module that is missing is skipped so
# that a partial install still gives a useful --help.
COMMAND_MODULES = (
    "clusterfw.cli_disk",
    "clusterfw.cli_sim",
    "clusterfw.cli_lab",
    "clusterfw.cli_node",
    "clusterfw.cli_lock",
    "clusterfw.cli_events",
)

# Commands run often from scripts (a lock per loop iteration) build only
# their own module's parser: importing every command group costs ~0.3 s.
FAST_COMMANDS = {"lock": "clusterfw.cli_lock", "locks": "clusterfw.cli_lock"}

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


class CliError(Exception):
    """An error to show the user: what was wrong and how to fix it."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.exit_code = exit_code


SOCKET_ENV = "CLUSTERFW_SOCKET"


def client_socket(given: str | None, default: str) -> tuple[str, str | None]:
    """The daemon socket a client command uses: ``--socket``, else
    ``$CLUSTERFW_SOCKET``, else ``default``; and who chose it (None for the
    default).  A command may look elsewhere (a lab node) only when nobody
    chose the socket: a socket someone named that does not answer is an
    error, never a reason to ask another daemon."""
    if given:
        return given, "--socket"
    from_env = os.environ.get(SOCKET_ENV)
    if from_env:
        return from_env, f"${SOCKET_ENV}"
    return default, None


def build_parser(modules: tuple[str, ...] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clusterfw",
        description="High availability for hosts that share a block device.",
        epilog="Exit codes: 0 ok, 1 failed, 2 bad usage or input, 3 refused by a safety check.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    fast = FAST_COMMANDS.get(words[0]) if words else None
    parser = build_parser((fast,) if fast else COMMAND_MODULES)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"clusterfw: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("clusterfw: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run the importable module's main so that subcommand modules and this
    # file share one CliError class.
    sys.exit(importlib.import_module("clusterfw.cli").main())
