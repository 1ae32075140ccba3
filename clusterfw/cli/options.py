"""The options every client command shares, defined once.

``--socket PATH``: the node daemon's socket.  Without it, ``$CLUSTERFW_SOCKET``,
else the default ``/run/clusterfw/clusterfw.sock``.  ``client_socket`` also
says who chose the socket: a command may look elsewhere (a lab node) only
when nobody did, for a socket someone named that does not answer is an error,
never a reason to ask another daemon.  (``clusterfw daemon --socket`` is not
this option: it is the socket the daemon serves, derived from
``--runtime-dir``, and ignores the environment.)

``--json``: print what scripts read (one JSON object, or one a line) instead
of sentences and tables for a person.
"""
from __future__ import annotations

import argparse
import os

from clusterfw.node import protocol

SOCKET_ENV = "CLUSTERFW_SOCKET"
SOCKET_HELP = f"the node daemon's socket (default ${SOCKET_ENV} or {protocol.DEFAULT_SOCKET})"


def add_socket(parser: argparse.ArgumentParser, also: str = "", default: str | None = None) -> None:
    """``--socket PATH``; ``also`` is appended to its help.  Read it with
    ``client_socket(args.socket)`` (``default`` is for a parser that
    re-parses words with the values already parsed, as ``lock`` does)."""
    parser.add_argument("--socket", default=default, metavar="PATH",
                        help=SOCKET_HELP + (f"; {also}" if also else ""))


def add_json(parser: argparse.ArgumentParser, help: str = "print one JSON object") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def client_socket(given: str | None) -> tuple[str, str | None]:
    """The daemon socket a client command uses: ``--socket``, else
    ``$CLUSTERFW_SOCKET``, else the default; and who chose it (None for the
    default)."""
    if given:
        return given, "--socket"
    from_env = os.environ.get(SOCKET_ENV)
    if from_env:
        return from_env, f"${SOCKET_ENV}"
    return protocol.DEFAULT_SOCKET, None


def socket_path(given: str | None) -> str:
    """Just the path of ``client_socket``."""
    return client_socket(given)[0]
