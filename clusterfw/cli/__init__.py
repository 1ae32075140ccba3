"""The ``clusterfw`` command.

Each command group is a module of this package with a
``register(subparsers)`` function: ``disk`` (disk and node table), ``sim``,
``lab``, ``node`` (daemon, join, leave, status), ``lock`` (lock, locks) and
``events`` (event-manager, events) and ``service`` (the registration & launch service).  ``errors`` holds ``CliError`` and the
exit codes (the table is ``clusterfw.exitcodes``), ``options`` the options
the client commands share (``--socket``, ``--json``).  This module only
wires the groups together, answers ``--version`` (the installed package's
version) and maps errors to exit codes.

Exit codes:
  0  success
  1  the operation failed (the message says why)
  2  bad usage or bad input (the message names it and the fix)
  3  a safety check refused the operation (e.g. the device holds data)
``clusterfw lock`` uses flock(1)'s codes instead (``clusterfw lock --help``).
"""
from __future__ import annotations

import argparse
import sys
from types import ModuleType

from clusterfw.cli.errors import EPILOG, EXIT_FAILED, EXIT_INTERRUPTED, CliError

__all__ = ["CliError", "build_parser", "main", "package_version"]

# Commands run often from scripts (a lock per loop iteration) or on the way
# to a failover (``service move``) build only their own group's parser:
# importing every command group costs ~0.2 s, more than a planned move.
FAST_COMMANDS = ("lock", "locks", "service")


def command_groups(command: str | None = None) -> tuple[ModuleType, ...]:
    """The command groups whose parsers ``command`` needs (all of them for
    None or any other command)."""
    if command in ("lock", "locks"):
        from clusterfw.cli import lock
        return (lock,)
    if command == "service":
        from clusterfw.cli import service
        return (service,)
    from clusterfw.cli import disk, events, lab, lock, node, service, sim
    return (disk, sim, lab, node, lock, events, service)


def package_version() -> str:
    """The installed package's version (its metadata: what pip installed),
    else ``clusterfw.__version__`` (a source tree that is not installed).
    Raises CliError when neither is there."""
    from importlib import metadata
    try:
        return metadata.version("clusterfw")
    except metadata.PackageNotFoundError:
        pass
    import clusterfw
    found = getattr(clusterfw, "__version__", None)
    if isinstance(found, str) and found:
        return found
    raise CliError(f"cannot tell the version: no 'clusterfw' package metadata is installed and "
                   f"{clusterfw.__file__} has no __version__; install clusterfw with scripts/setup.sh",
                   EXIT_FAILED)


class _VersionAction(argparse.Action):
    """``--version``: print ``clusterfw X.Y.Z`` and exit 0 (looked up only
    when asked for, not at every parser build)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="print the installed version (clusterfw X.Y.Z) and exit"):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            line = f"clusterfw {package_version()}"
        except CliError as exc:
            parser.exit(exc.exit_code, f"clusterfw: {exc}\n")
        print(line)  # stdout, like argparse's own version action
        parser.exit(0)


def build_parser(groups: tuple[ModuleType, ...] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clusterfw",
        description="High availability for hosts that share a block device.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in command_groups() if groups is None else groups:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words == ["--version"]:  # without importing every command group
        try:
            print(f"clusterfw {package_version()}")
        except CliError as exc:
            print(f"clusterfw: {exc}", file=sys.stderr)
            return exc.exit_code
        return 0
    parser = build_parser(command_groups(words[0] if words else None))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"clusterfw: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("clusterfw: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
