"""Every option and positional of every ``clusterfw`` command says what it
is: the argparse tree that ``clusterfw.cli.build_parser`` builds is walked,
and any action without help (other than -h) fails, naming the command and
the option.  ``argparse.SUPPRESS`` counts as help: it hides an internal
option on purpose."""
from __future__ import annotations

import argparse

from clusterfw.cli import build_parser


def missing_help(parser: argparse.ArgumentParser, prog: str = "clusterfw") -> list[str]:
    """``prog OPTION`` for every action of ``parser`` and its subcommands
    that has no help."""
    out: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions if choice.help}
            for name, sub in action.choices.items():
                if name not in helped:
                    out.append(f"{prog} {name} (the command itself)")
                out += missing_help(sub, f"{prog} {name}")
            continue
        if not (action.help or "").strip():
            out.append(f"{prog} {'/'.join(action.option_strings) or action.metavar or action.dest}")
    return out


def test_every_option_and_positional_of_every_command_has_help():
    missing = missing_help(build_parser())
    assert not missing, "no help text for:\n  " + "\n  ".join(missing)


def test_the_walk_finds_what_has_no_help():
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--ok", help="fine")
    sub = parser.add_subparsers()
    child = sub.add_parser("child", help="a command")
    child.add_argument("--bare")
    child.add_argument("thing")
    sub.add_parser("quiet")
    hidden = sub.add_parser("hidden", help="has an internal option")
    hidden.add_argument("--internal", help=argparse.SUPPRESS)
    assert missing_help(parser, "x") == ["x child --bare", "x child thing", "x quiet (the command itself)"]


def test_every_command_is_walked():
    """The walk reaches the nested commands (lab up, node add, disk init)."""
    seen: list[str] = []

    def walk(parser: argparse.ArgumentParser, prog: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    seen.append(f"{prog} {name}")
                    walk(sub, f"{prog} {name}")

    walk(build_parser(), "clusterfw")
    assert {"clusterfw lab up", "clusterfw node add", "clusterfw node list", "clusterfw node remove",
            "clusterfw disk init", "clusterfw lock", "clusterfw events"} <= set(seen)
