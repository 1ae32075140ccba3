"""The TOML service definitions parser (``clusterfw.core.svcdef_toml``).

A full file parses to the expected ``ServiceDef`` values, which survive the
registry's JSON form.  Every validation rule has a row in ``BAD``: the
exact line, the field, and a piece of the fix the message must hold.
Hypothesis: any text at all raises nothing but ``DefinitionError``; any
valid set of definitions, rendered to TOML in any of the spellings (header
tables, quoted names, dotted keys, inline tables), parses back equal, each
at its line.  ``clusterfw service apply --check`` is run as a subprocess on
a valid file, a bad one and a missing one.  The "Definitions" section of
docs/services.md is checked against the code: its example parses, its field
table lists every key, and its sample error is what the command prints.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterfw.core.model import NODE_NAME_MAX
from clusterfw.core.svcdef import (ALL_NODES, NAME_MAX, AutoRegister, DefinitionError, Placement, PreferenceOrder,
                                   ServiceDef, TransferCost)
from clusterfw.core.svcdef_toml import COUNT_MAX, DURATION_S_MAX, FIELDS, key_lines, parse

REPO = Path(__file__).resolve().parents[1]
FILE = "defs.toml"

FULL = """\
# Two services and a child.
[services.web]
allowable_nodes = ["n1", "n2", "n3"]
disallowable_nodes = []
preferences = ["n2", "n3"]
preference_order = "ordered"
auto_register = "auto"
placement_policy = "one"
maturity_count = 2
maturity_time = "30s"
maturity_primary = "n2"
transfer_cost = "free"
parent = ""
start_command = ["python3", "-m", "http.server", "8080"]
stop_command = [
    "/usr/bin/pkill",   # a comment inside the list
    "-f", "http.server",
]
notify_command = ["/usr/local/bin/tell", "web moved"]
recovery_command = ['/usr/local/bin/fsck-web', '--yes']
failure_threshold = 3
failure_timeout = "10m"
failback_delay = "10s"

[services."db"]
unit = "postgresql@15-main.service"
allowable_nodes = "*"
disallowable_nodes = ["n4"]
preference_order = "unordered"
preferences = ["n1"]
auto_register = "manual"
placement_policy = "every"
maturity_time = 90
failure_threshold = 0
failure_timeout = 0
failback_delay = 2.5
stop_command = ["/usr/bin/true"]

[services.web-log]
parent = "web"
start_command = ["/usr/bin/tail", "-F", "/var/log/web.log"]
failure_threshold = 5
failure_timeout = "1h"
"""

FULL_DEFS = {
    "web": ServiceDef(
        "web", allowable_nodes=("n1", "n2", "n3"), disallowable_nodes=(), preferences=("n2", "n3"),
        preference_order=PreferenceOrder.ORDERED, auto_register=AutoRegister.AUTO, placement_policy=Placement.ONE,
        maturity_count=2, maturity_time_s=30.0, maturity_primary="n2", transfer_cost=TransferCost.FREE, parent="",
        start_command=("python3", "-m", "http.server", "8080"), stop_command=("/usr/bin/pkill", "-f", "http.server"),
        notify_command=("/usr/local/bin/tell", "web moved"), recovery_command=("/usr/local/bin/fsck-web", "--yes"),
        failure_threshold=3, failure_timeout_s=600.0, failback_delay_s=10.0),
    "db": ServiceDef(
        "db", unit="postgresql@15-main.service", allowable_nodes=ALL_NODES, disallowable_nodes=("n4",),
        preference_order=PreferenceOrder.UNORDERED, preferences=("n1",), auto_register=AutoRegister.MANUAL,
        placement_policy=Placement.EVERY, maturity_time_s=90.0, failure_threshold=0, failure_timeout_s=0.0,
        failback_delay_s=2.5, stop_command=("/usr/bin/true",)),
    "web-log": ServiceDef("web-log", parent="web", start_command=("/usr/bin/tail", "-F", "/var/log/web.log"),
                          failure_threshold=5, failure_timeout_s=3600.0),
}


def error(text: str) -> DefinitionError:
    with pytest.raises(DefinitionError) as info:
        parse(text, FILE)
    return info.value


# ------------------------------------------------------------ valid files
def test_a_full_file_parses_to_the_expected_definitions_in_file_order() -> None:
    defs = parse(FULL, FILE)
    assert list(defs) == ["web", "db", "web-log"]
    assert defs == FULL_DEFS
    assert {n: d.source_line for n, d in defs.items()} == {"web": 2, "db": 25, "web-log": 39}


def test_parsed_definitions_survive_the_registrys_json_form() -> None:
    for d in parse(FULL, FILE).values():
        doc = json.loads(json.dumps(d.to_json()))
        assert ServiceDef.from_json(doc) == d


@pytest.mark.parametrize("written, seconds", [
    ('"500ms"', 0.5), ('"30s"', 30.0), ('"5m"', 300.0), ('"1h"', 3600.0), ('"1.5s"', 1.5), ('"0s"', 0.0),
    ('"720h"', DURATION_S_MAX), ("30", 30.0), ("1.25", 1.25), ("0", 0.0), ('"2592000000ms"', DURATION_S_MAX),
])
def test_durations(written: str, seconds: float) -> None:
    d = parse(f"[services.a]\nunit = 'a.service'\nmaturity_time = {written}\n", FILE)["a"]
    assert d.maturity_time_s == seconds and isinstance(d.maturity_time_s, float)


@pytest.mark.parametrize("count", [0, 1, COUNT_MAX])
def test_counts_at_their_limits(count: int) -> None:
    d = parse(f"[services.a]\nunit = 'a.service'\nmaturity_count = {count}\nfailure_threshold = {count}\n", FILE)
    assert d["a"].maturity_count == d["a"].failure_threshold == count


@pytest.mark.parametrize("text", [
    "[services.web]\nunit = 'nginx.service'\n",
    "[services]\nweb.unit = 'nginx.service'\n",
    "services.web.unit = 'nginx.service'\n",
    "[services]\nweb = { unit = 'nginx.service' }\n",
    "[services.'web']\nunit = 'nginx.service'\n",
    "[ services . \"web\" ]  # spaces and a comment\nunit = 'nginx.service'\n",
])
def test_every_toml_spelling_of_a_table(text: str) -> None:
    assert parse(text, FILE) == {"web": ServiceDef("web", unit="nginx.service")}
    assert parse(text, FILE)["web"].source_line == 1 + text.startswith("[services]\n")


def test_what_is_allowed_together() -> None:
    text = """\
[services.db]
unit = "db.service"
stop_command = ["/usr/bin/db-stop"]
notify_command = ["/usr/bin/db-notify"]
recovery_command = ["/usr/bin/db-recover"]
allowable_nodes = ["n1", "n2"]
disallowable_nodes = ["n2", "n3"]
maturity_primary = ""
[services.child]
parent = "db"
start_command = ["/bin/child", ""]
failure_threshold = 1
failure_timeout = "1s"
[services.grandchild]
parent = "child"
unit = "grandchild.service"
"""
    defs = parse(text, FILE)
    assert defs["db"].stop_command == ("/usr/bin/db-stop",) and defs["db"].allowable(()) == {"n1"}
    assert defs["child"].start_command == ("/bin/child", "") and defs["grandchild"].parent == "child"


def test_a_parent_may_come_after_its_children() -> None:
    text = "[services.child]\nparent = 'root'\nunit = 'c.service'\n[services.root]\nunit = 'r.service'\n"
    assert list(parse(text, FILE)) == ["child", "root"]


def test_names_at_their_length_limits() -> None:
    name, node = "s" * NAME_MAX, "n" * NODE_NAME_MAX
    d = parse(f"[services.{name}]\nunit = 'a.service'\npreferences = ['{node}']\n", FILE)[name]
    assert d.preferences == (node,)


# ----------------------------------------------------------- every rule
@dataclass(frozen=True)
class Bad:
    id: str
    text: str
    line: int
    field: str
    fix: str


U = "unit = 'a.service'\n"
S = "[services.web]\n"
E = "[services.web.events.down]\n"
M = "watch = 'membership'\n"
A = "action = ['/bin/x']\n"


def bad_value(id: str, line: str, fix: str) -> Bad:
    """A bad ``key = value`` on line 3, after a header and a valid unit: the field is the key."""
    return Bad(id, S + U + line + "\n", 3, line.split("=")[0].strip(), fix)

BAD = [
    # the file as a whole
    Bad("empty", "", 1, "services", "[services.web] with start_command = ["),
    Bad("only-comments", "# nothing yet\n\n", 1, "services", 'unit = "nginx.service"'),
    Bad("empty-services-table", "# x\n[services]\n", 2, "services", "[services.web] with start_command"),
    Bad("services-not-a-table", "services = 3\n", 1, "services", "[services.web] with"),
    Bad("top-level-typo", "[service.web]\n" + U, 1, "service", "did you mean 'services'?"),
    Bad("top-level-key", S + U + "[other]\nx = 1\n", 3, "other", "[services.web] with"),
    bad_value("syntax-unquoted-string", "preference_order = ordered",
        'strings need quotes: preference_order = "ordered"'),
    Bad("syntax-missing-equals", S + "unit\n", 2, "", "key = value"),
    Bad("syntax-unterminated-string", S + 'unit = "a.service\n', 2, "unit", "close the string"),
    Bad("syntax-duplicate-key", S + U + U, 3, "unit", "each key once per table"),
    Bad("syntax-duplicate-table", S + U + "\n" + S, 4, "", "each [services.NAME] table once per file"),
    # a service's table and name
    Bad("service-not-a-table", "[services]\nweb = 3\n", 2, "web", "write one [services.web] table"),
    Bad("service-array-of-tables", "[[services.web]]\n" + U, 1, "web", "write one [services.web] table"),
    Bad("name-empty", '[services.""]\n' + U, 1, "name", f"1..{NAME_MAX} characters"),
    Bad("name-too-long", f"[services.{'x' * (NAME_MAX + 1)}]\n" + U, 1, "name", f"1..{NAME_MAX} characters"),
    Bad("name-bad-character", '\n[services."web app"]\n' + U, 2, "name", "letters, digits, '_', '.' and '-'"),
    Bad("name-starts-with-dash", "[services.-web]\n" + U, 1, "name", "not starting with '-' or '.'"),
    Bad("name-starts-with-dot", '[services.".web"]\n' + U, 1, "name", "not starting with '-' or '.'"),
    Bad("name-non-ascii", '[services."wéb"]\n' + U, 1, "name", "letters, digits"),
    # keys
    bad_value("unknown-key-close", "preferencs = ['n1']", "did you mean 'preferences'?"),
    bad_value("unknown-key-far", "colour = 'blue'", "the keys are allowable_nodes, "),
    Bad("unknown-sub-table", S + U + "[services.web.env]\nA = '1'\n", 3, "env", "the keys are"),
    bad_value("type-mount", "type = 'mount'", "use start_command/stop_command or unit"),
    Bad("type-vdisk", S + "type = 'vdisk'\n" + U, 2, "type", "use start_command/stop_command or unit"),
    bad_value("type-ip", "type = 'ip'", "use start_command/stop_command or unit"),
    bad_value("maturity_time_s", "maturity_time_s = 30", "write maturity_time = 30"),
    bad_value("failure_timeout_s", "failure_timeout_s = '5m'", 'write failure_timeout = "30s"'),
    bad_value("failback_delay_s", "failback_delay_s = 10", "write failback_delay = 10"),
    Bad("name-key", S + "name = 'web'\n" + U, 2, "name", "write [services.NAME] and leave it out"),
    # commands
    Bad("argv-string", S + "start_command = 'python3 -m http.server 8080'\n", 2, "start_command",
        'start_command = ["python3", "-m", "http.server", "8080"]; clusterfw never runs a shell string'),
    Bad("argv-shell-string", S + "start_command = 'cd /srv && ./run > log'\n", 2, "start_command",
        'an argv list such as start_command = ["/usr/bin/foo", "--flag"]; clusterfw never runs a shell string'),
    bad_value("argv-string-stop", "stop_command = '/bin/stop'", "never runs a shell string"),
    Bad("argv-not-a-list", S + "start_command = 5\n", 2, "start_command", 'start_command = ["/usr/bin/foo", "--flag"]'),
    Bad("argv-empty", S + "start_command = []\n", 2, "start_command", "name the program and its arguments"),
    bad_value("argv-empty-notify", "notify_command = []", "or leave notify_command out"),
    Bad("argv-item-not-a-string", S + "start_command = [\n  '/bin/x',\n  8080,\n]\n", 2, "start_command",
        "put it in quotes"),
    Bad("argv-empty-program", S + "start_command = ['', 'x']\n", 2, "start_command",
        "the first item names the program"),
    Bad("argv-nul", S + 'start_command = ["/bin/x", "a\\u0000b"]\n', 2, "start_command", "remove it"),
    bad_value("recovery-not-a-list", "recovery_command = {a = 1}", "an argv list"),
    # what to run
    bad_value("unit-and-start", "start_command = ['/bin/x']", "keep one"),
    Bad("start-and-unit", S + "start_command = ['/bin/x']\n\n" + U, 4, "unit", "keep one"),
    Bad("nothing-to-run", "\n" + S + "stop_command = ['/bin/x']\n", 2, "start_command",
        'add start_command = ["/usr/bin/foo", "--flag"], an argv list, or unit = "nginx.service"'),
    Bad("nothing-to-run-child", S + U + "[services.c]\nparent = 'web'\n", 3, "start_command", "or unit ="),
    Bad("unit-not-service", S + "unit = 'nginx'\n", 2, "unit", 'write unit = "nginx.service"'),
    Bad("unit-timer", S + "unit = 'backup.timer'\n", 2, "unit", 'write unit = "backup.service"'),
    Bad("unit-path", S + "unit = '/etc/systemd/system/nginx.service'\n", 2, "unit", "no directory"),
    Bad("unit-space", S + "unit = 'my app.service'\n", 2, "unit", "no spaces"),
    Bad("unit-too-long", S + f"unit = '{'u' * 250}.service'\n", 2, "unit", "at most 255 characters"),
    Bad("unit-template", S + "unit = 'getty@.service'\n", 2, "unit", 'unit = "getty@NAME.service"'),
    Bad("unit-clusterfw", S + "unit = 'clusterfw.service'\n", 2, "unit", "an installed systemd service unit"),
    Bad("unit-not-a-string", S + "unit = ['a.service']\n", 2, "unit", 'unit = "nginx.service"'),
    # enums
    bad_value("preference_order", "preference_order = 'random'", 'preference_order = "ordered" or "unordered"'),
    bad_value("preference_order-case", "preference_order = 'Ordered'", 'did you mean "ordered"?'),
    bad_value("auto_register", "auto_register = true", 'auto_register = "auto" or "manual"'),
    bad_value("placement_policy", "placement_policy = 'all'", 'placement_policy = "one" or "every"'),
    bad_value("transfer_cost", "transfer_cost = 0", 'transfer_cost = "free" or "costly"'),
    # node names and lists
    bad_value("node-bad-character", "allowable_nodes = ['n1', 'n 2']", "from a-z 0-9 and '-'"),
    bad_value("node-upper-case", "allowable_nodes = ['N1']", "as in the node table"),
    bad_value("node-starts-with-dash", "preferences = ['-n1']", "starting with a letter or digit"),
    bad_value("node-too-long", f"disallowable_nodes = ['{'n' * (NODE_NAME_MAX + 1)}']",
        f"1..{NODE_NAME_MAX} characters"),
    bad_value("node-empty", "preferences = ['']", f"1..{NODE_NAME_MAX} characters"),
    bad_value("node-not-a-string", "allowable_nodes = [1, 2]", 'allowable_nodes = ["n1", "n2"]'),
    bad_value("primary-bad", "maturity_primary = 'n/1'", "from a-z 0-9 and '-'"),
    bad_value("primary-not-a-string", "maturity_primary = ['n1']", "in quotes"),
    bad_value("star-in-allowable-list", "allowable_nodes = ['n1', '*']", 'allowable_nodes = "*" for every node'),
    bad_value("star-in-disallowable", "disallowable_nodes = ['*']", 'only allowable_nodes may be "*"'),
    bad_value("star-disallowable-string", "disallowable_nodes = '*'", 'disallowable_nodes = ["n1", "n2"]'),
    bad_value("star-in-preferences", "preferences = ['*']", 'only allowable_nodes may be "*"'),
    bad_value("star-primary", "maturity_primary = '*'", 'only allowable_nodes may be "*"'),
    bad_value("allowable-string", "allowable_nodes = 'n1'", 'allowable_nodes = ["n1"]'),
    bad_value("allowable-empty", "allowable_nodes = []", 'allowable_nodes = "*"'),
    bad_value("allowable-duplicate", "allowable_nodes = ['n1', 'n2', 'n1']", "list each node once"),
    bad_value("disallowable-duplicate", "disallowable_nodes = ['n1', 'n1']", "list each node once"),
    bad_value("preferences-duplicate", "preferences = [\n 'n2',\n 'n2']", "list each node once"),
    Bad("preference-disallowable", S + U + "disallowable_nodes = ['n3']\npreferences = ['n1', 'n3']\n", 4,
        "preferences", "remove 'n3' from preferences or from disallowable_nodes"),
    bad_value("preference-not-allowable", "preferences = ['n4']\nallowable_nodes = ['n1', 'n2']",
        "add 'n4' to allowable_nodes or remove it from preferences"),
    bad_value("primary-disallowable", "maturity_primary = 'n2'\ndisallowable_nodes = ['n2']",
        "remove 'n2' from maturity_primary or from disallowable_nodes"),
    Bad("primary-not-allowable", S + U + "allowable_nodes = ['n1']\nmaturity_primary = 'n2'\n", 4,
        "maturity_primary", "add 'n2' to allowable_nodes"),
    Bad("all-disallowed", S + U + "allowable_nodes = ['n1', 'n2']\ndisallowable_nodes = ['n2', 'n1']\n", 4,
        "disallowable_nodes", "disallow fewer nodes or allow more"),
    # durations
    bad_value("duration-negative", "maturity_time = -1", "use 0 or more seconds"),
    bad_value("duration-negative-string", "failback_delay = '-5s'", "0 or more seconds"),
    bad_value("duration-absurd", "failure_timeout = 2592001", "at most 30 days"),
    bad_value("duration-absurd-string", "failure_timeout = '721h'", "at most 30 days"),
    bad_value("duration-nan", "maturity_time = nan", 'maturity_time = "30s"'),
    bad_value("duration-inf", "maturity_time = inf", "a number of seconds"),
    bad_value("duration-unit", "maturity_time = '2d'", '"500ms", "30s", "5m", "1h"'),
    bad_value("duration-no-unit", "maturity_time = '30'", 'maturity_time = "30s"'),
    bad_value("duration-bool", "failback_delay = false", 'failback_delay = "30s"'),
    bad_value("duration-list", "failure_timeout = [1]", "a number of seconds"),
    # counts
    bad_value("count-negative", "maturity_count = -1", f"use 0..{COUNT_MAX}"),
    bad_value("count-too-big", "failure_threshold = 256", f"use 0..{COUNT_MAX}"),
    bad_value("count-float", "maturity_count = 2.0", "maturity_count = 3"),
    bad_value("count-bool", "failure_threshold = true", "a number 0..255"),
    bad_value("count-string", "failure_threshold = '3'", "failure_threshold = 3"),
    # parents
    bad_value("parent-undefined", "parent = 'db'", "define [services.db] in the same file"),
    bad_value("parent-self", "parent = 'web'", 'leave parent out'),
    bad_value("parent-cycle", "parent = 'db'\n[services.db]\nunit = 'db.service'\nparent = 'web'",
        "remove parent from one of them"),
    bad_value("parent-bad-name", "parent = 'd b'", "a service name is"),
    bad_value("parent-not-a-string", "parent = 1", 'parent = "db"'),
    Bad("child-prefers", "[services.db]\n" + U + S + U + "parent = 'db'\npreferences = ['n1']\n", 6,
        "preferences", "remove preferences here; set it on the root service 'db'"),
    Bad("grandchild-allowable", "[services.db]\n" + U + "[services.mid]\n" + U + "parent = 'db'\n" + S + U
        + "allowable_nodes = '*'\nparent = 'mid'\n", 8, "allowable_nodes", "set it on the root service 'db'"),
    # size
    Bad("too-large", S + "start_command = ['/bin/x'" + ", 'argument'" * 2000 + "]\n", 1, "web",
        "put long command lines in a script"),
    # other spellings point at their lines too
    Bad("dotted-style", "[services]\nweb.unit = 'a.service'\n\nweb.preferencs = []\n", 4, "preferencs",
        "did you mean 'preferences'?"),
    Bad("top-level-dotted", "services.web.unit = 'a.service'\nservices.web.maturity_count = -3\n", 2,
        "maturity_count", "use 0..255"),
    Bad("inline-table", "[services]\n\nweb = { unit = 'a.service', type = 'ip' }\n", 3, "type",
        "use start_command/stop_command or unit"),
    Bad("quoted-header", "[services.ok]\n" + U + "\n[services.'web']\n" + U + "maturity_time_s = 1\n", 6,
        "maturity_time_s", "write maturity_time = 1"),
    Bad("header-in-a-string-is-not-a-header", "[services.a]\n" + U + "notify_command = ['''x\n[services.b]\n''']\n"
        + "typo = 1\n", 6, "typo", "the keys are"),
    # events: [services.web.events.down] on line 3, its keys from line 4
    *[Bad(f"event-{id}", S + U + E + body, line, field, fix) for id, body, line, field, fix in [
        ("no-watch", "action = ['/bin/x']\n", 3, "watch", 'add watch = "membership" or "unit"'),
        ("unknown-watcher", "watch = 'membrship'\n" + A, 4, "watch", 'did you mean "membership"?'),
        ("watcher-not-a-string", "watch = 1\n" + A, 4, "watch", 'write watch = "membership" or "unit"'),
        ("unknown-in-close", M + "transiton = 'join'\n" + A, 5, "transiton", "did you mean 'transition'?"),
        ("unknown-in-far", M + "colour = 'red'\n" + A, 5, "colour",
         "the keys of a membership event are node, transition, watch, action"),
        ("in-of-the-other-watcher", M + "unit = 'db.service'\n" + A, 5, "unit",
         "unit is the unit watcher's (watch = \"unit\")"),
        ("transition", M + "transition = 'forced'\n" + A, 5, "transition",
         'did you mean "forced-leave"? write transition = "join" or "leave" or "forced-leave" or "any"'),
        ("node-bad", M + "node = 'N1'\n" + A, 5, "node", 'write node = "n2" for one node, or node = "*" for any'),
        ("node-not-a-string", M + "node = ['n1']\n" + A, 5, "node", 'node = "*" for any'),
        ("unit-missing", "watch = 'unit'\nstate = 'failed'\n" + A, 3, "unit", '"clusterfw-svc-web.service"'),
        ("unit-not-service", "watch = 'unit'\nunit = 'web'\n" + A, 5, "unit", 'write unit = "web.service"'),
        ("unit-template", "watch = 'unit'\nunit = 'getty@.service'\n" + A, 5, "unit", 'unit = "getty@NAME.service"'),
        ("unit-path", "watch = 'unit'\nunit = '/etc/a.service'\n" + A, 5, "unit", "no directory"),
        ("state", "watch = 'unit'\nunit = 'a.service'\nstate = 'fail'\n" + A, 6, "state", 'did you mean "failed"?'),
        ("no-action", M, 3, "action", "add action = [\"/usr/bin/foo\", \"--flag\"]"),
        ("action-string", M + "action = '/bin/page ${node}'\n", 5, "action", "clusterfw never runs a shell string"),
        ("action-empty", M + "action = []\n", 5, "action", "name the program and its arguments"),
        ("action-not-strings", M + "action = ['/bin/x', 3]\n", 5, "action", "put it in quotes"),
        ("action-unknown-param", M + "action = ['/bin/x',\n  '${nod}']\n", 5, "action", "did you mean ${node}?"),
        ("action-param-of-the-other-watcher", M + "action = ['/bin/x', '${unit}']\n", 5, "action",
         "it has ${node}, ${transition}, ${epoch}, ${incarnation}, ${time}"),
        ("action-bare-dollar", M + "action = ['/bin/x', '$node']\n", 5, "action",
         "write ${node} for the parameter, or $$node"),
        ("action-lone-dollar", "watch = 'unit'\nunit = 'a.service'\naction = ['/bin/x', '5$']\n", 6, "action",
         "write $$ for a literal '$'"),
        ("action-unclosed", M + "action = ['/bin/x', '${node']\n", 5, "action", "close it: ${name}"),
    ]],
    Bad("event-name-with-a-dot", S + U + '[services.web.events."a.b"]\n' + M + A, 3, "a.b",
        "an event's name is 1..32 characters: letters, digits, '_' and '-'"),
    Bad("event-name-too-long", S + U + f"[services.web.events.{'e' * 33}]\n" + M + A, 3, "e" * 33,
        "1..32 characters"),
    Bad("events-not-tables", S + U + "events = 3\n", 3, "events", "[services.NAME.events.peer-down] with watch ="),
    Bad("event-not-a-table", S + U + "[services.web.events]\ndown = 3\n", 4, "down",
        "write [services.web.events.down] with watch"),
    Bad("event-typo-of-events", S + U + "[services.web.event.down]\n" + M + A, 3, "event", "did you mean 'events'?"),
    Bad("event-dotted", "[services]\nweb.unit = 'a.service'\n\nweb.events.down.watch = 'unit'\n"
        "web.events.down.unit = 'a.service'\nweb.events.down.action = ['/bin/x', '${sub}']\n", 6, "action",
        "did you mean ${sub_state}?"),
    Bad("event-inline", "[services.web]\n" + U + "events = { down = { watch = 'membership', node = 'x y', "
        "action = ['/bin/x'] } }\n", 3, "node", 'node = "*" for any'),
]


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_every_rule_names_the_line_the_field_and_the_fix(case: Bad) -> None:
    e = error(case.text)
    assert (e.filename, e.line, e.field) == (FILE, case.line, case.field), str(e)
    assert case.fix in e.fix, str(e)
    prefix = f"{FILE}:{case.line}: {case.field}: " if case.field else f"{FILE}:{case.line}: "
    assert str(e).startswith(prefix) and str(e).endswith(f"({e.fix})"), str(e)
    assert e.problem and "\n" not in str(e)


def test_the_cycle_is_named() -> None:
    text = ("[services.a]\nunit = 'a.service'\nparent = 'b'\n[services.b]\nunit = 'b.service'\nparent = 'c'\n"
            "[services.c]\nunit = 'c.service'\nparent = 'a'\n")
    e = error(text)
    assert (e.line, e.field) == (3, "parent") and "a -> b -> c -> a" in e.problem


def test_a_resource_type_is_named() -> None:
    assert "resource type 'mount' is not available in this version" in error(S + "type = 'mount'\n").problem


def test_a_string_argv_says_so() -> None:
    e = error(S + "start_command = '/usr/bin/foo --flag'\n")
    assert 'an argv list such as start_command = ["/usr/bin/foo", "--flag"]; clusterfw never runs a shell string' \
        in e.fix


@pytest.mark.parametrize("key", sorted(k for k, f in FIELDS.items() if f.choosing))
def test_a_child_sets_no_choosing_factor(key: str) -> None:
    value = {"allowable_nodes": "'*'", "disallowable_nodes": "[]", "preferences": "[]",
             "preference_order": "'ordered'", "auto_register": "'auto'", "placement_policy": "'one'",
             "maturity_count": "0", "maturity_time": "0", "maturity_primary": "''", "transfer_cost": "'costly'",
             "failback_delay": "'10s'"}[key]
    e = error("[services.db]\nunit = 'db.service'\n[services.web]\nparent = 'db'\n" + U + f"{key} = {value}\n")
    assert (e.line, e.field) == (6, key) and "children follow their parent's placement" in e.problem


def test_control_characters_in_a_name_are_escaped_in_the_message() -> None:
    e = error('[services."a\\u001b[2Jb"]\n' + U)
    assert "\x1b" not in str(e) and "\\x1b" in str(e)
    e = error(S + U + '"key\\u001b]0;x\\u0007" = 1\n')
    assert (e.line, e.field) == (3, "key\\x1b]0;x\\x07") and "\x1b" not in str(e)


def test_a_long_value_is_cut_short_in_the_message() -> None:
    e = error(S + U + f"preference_order = '{'x' * 5000}'\n")
    assert len(str(e)) < 300 and "xxx...'" in e.problem


# -------------------------------------------------------------- positions
def test_key_lines_skips_over_every_kind_of_value() -> None:
    text = (
        '[services.a]\n'                          # 1
        's1 = """\n[services.fake]\nx = 1\n"""\n'  # 2-5
        "s2 = '''\n[[also.fake]]'''\n"            # 6-7
        's3 = "a # not a comment \\" ["\n'        # 8
        "s4 = 'c:\\x'  # comment [x]\n"           # 9
        "arr = [\n  1, # c\n  [2, 3],\n  { i = 1 },\n]\n"  # 10-14
        "t = { x.y = 1, 'z' = [1, 2] }\n"         # 15
        "d = 1979-05-27 07:32:00Z\n"              # 16
        '"q.k" = 1\n'                             # 17
        's5 = """a""""\n'                         # 18
        '[[arr.of]]\n'                            # 19
        'k = 1\n'                                 # 20
    )
    tomllib.loads(text)
    lines = key_lines(text)
    assert lines[("services", "a")] == 1 and ("services", "fake") not in lines and ("also",) not in lines
    assert [lines[("services", "a", k)] for k in ("s1", "s2", "s3", "s4", "arr", "t", "d", "q.k", "s5")] == \
        [2, 6, 8, 9, 10, 15, 16, 17, 18]
    assert lines[("services", "a", "t", "x", "y")] == 15 and lines[("services", "a", "t", "z")] == 15
    assert lines[("arr", "of")] == 19 and lines[("arr", "of", "k")] == 20


# -------------------------------------------------------------- hypothesis
@settings(max_examples=400, deadline=None)
@given(st.text())
def test_any_text_raises_only_definition_errors(text: str) -> None:
    try:
        parse(text, FILE)
    except DefinitionError as e:
        assert e.filename == FILE and e.fix


FRAGMENTS = st.sampled_from([
    "[services.web]", "[services]", "[[services.web]]", '[services."a b"]', "[services.db]", "web.unit = 'a.service'",
    'unit = "x.service"', 'start_command = ["a",\n "b" ]', 'start_command = "a b"', 'parent = "db"',
    'parent = "web"', 'preferences = ["n1"]', 'allowable_nodes = "*"', "disallowable_nodes = ['n1']",
    "maturity_time = 1e400", "maturity_time = nan", "maturity_count = -1", "failure_threshold = 3", "type = 1",
    "x = {a = 1, b = [1, {c = 2}]}", "s = '''\n[services.z]\n'''", 's = """a\\""""""', "# c", "", "\r", "\t",
    "web = { unit = 'a.service' }", "dt = 1979-05-27T07:32:00Z", '"quoted.key" = 1', "'lit' = 2", 'a."b".c = 3',
])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(FRAGMENTS, st.text(max_size=8)), max_size=12))
def test_toml_like_text_raises_only_definition_errors(parts: list[str]) -> None:
    text = "\n".join(parts)
    try:
        defs = parse(text, FILE)
    except DefinitionError:
        return
    assert all(d.source_line >= 1 for d in defs.values())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(FRAGMENTS, max_size=12))
def test_key_lines_finds_every_key_of_valid_toml(parts: list[str]) -> None:
    text = "\n".join(parts)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return
    lines = key_lines(text)
    for key, value in doc.items():
        assert (key,) in lines
        for sub in value if isinstance(value, dict) else ():
            assert (key, sub) in lines


NAMES = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,15}", fullmatch=True)
NODES = st.lists(st.from_regex(r"[a-z0-9][a-z0-9-]{0,6}", fullmatch=True), min_size=1, max_size=6, unique=True)
ARGV = st.lists(st.text(st.characters(blacklist_characters="\0"), max_size=12), min_size=1, max_size=4).filter(
    lambda a: bool(a[0].strip())).map(tuple)
UNITS = st.from_regex(r"[a-z][A-Za-z0-9:_.-]{0,20}(@[a-z0-9]{1,5})?\.service", fullmatch=True).filter(
    lambda u: not u.startswith("clusterfw"))


@st.composite
def duration(draw: st.DrawFn) -> tuple[str, float]:
    """(how it is written, the seconds it means)."""
    kind = draw(st.sampled_from(["float", "int", "ms", "s", "m", "h"]))
    if kind == "float":
        v = draw(st.floats(0, DURATION_S_MAX))
        return repr(v), v
    scale = {"int": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600}[kind]
    n = draw(st.integers(0, int(DURATION_S_MAX / scale)))
    if kind == "int":
        return str(n), float(n)
    return f'"{n}{kind}"', n / 1000 if kind == "ms" else float(n * scale)


@st.composite
def definitions(draw: st.DrawFn) -> list[tuple[ServiceDef, dict[str, str]]]:
    """Valid definitions, each with its TOML keys and values as written."""
    out: list[tuple[ServiceDef, dict[str, str]]] = []
    for name in draw(st.lists(NAMES, min_size=1, max_size=4, unique=True)):
        d, keys = ServiceDef(name), {}
        parent = draw(st.sampled_from([""] + [p.name for p, _ in out]))
        if parent:
            d, keys["parent"] = replace(d, parent=parent), toml_str(parent)
        else:
            nodes = draw(NODES)
            if draw(st.booleans()):
                allow: tuple[str, ...] | str = tuple(nodes)
                dis = tuple(draw(st.lists(st.sampled_from(nodes), unique=True, max_size=len(nodes) - 1)))
                ok = [n for n in nodes if n not in dis]
                keys["allowable_nodes"] = toml_list(nodes)
            else:
                allow, dis = ALL_NODES, tuple(draw(st.lists(st.sampled_from(nodes), unique=True)))
                ok = [n for n in nodes if n not in dis]
                keys["allowable_nodes"] = '"*"'
            prefs = tuple(draw(st.lists(st.sampled_from(ok), unique=True))) if ok else ()
            primary = draw(st.sampled_from([""] + ok))
            d = replace(d, allowable_nodes=allow, disallowable_nodes=dis, preferences=prefs, maturity_primary=primary)
            keys |= {"disallowable_nodes": toml_list(dis), "preferences": toml_list(prefs),
                     "maturity_primary": toml_str(primary)}
            for key, kind in (("preference_order", PreferenceOrder), ("auto_register", AutoRegister),
                              ("placement_policy", Placement), ("transfer_cost", TransferCost)):
                value = draw(st.sampled_from(list(kind)))
                d, keys[key] = replace(d, **{key: value}), toml_str(value.value)
            count = draw(st.integers(0, COUNT_MAX))
            d, keys["maturity_count"] = replace(d, maturity_count=count), str(count)
            for key in ("maturity_time", "failback_delay"):
                written, seconds = draw(duration())
                d, keys[key] = replace(d, **{f"{key}_s": seconds}), written
        if draw(st.booleans()):
            unit = draw(UNITS)
            d, keys["unit"] = replace(d, unit=unit), toml_str(unit)
        else:
            argv = draw(ARGV)
            d, keys["start_command"] = replace(d, start_command=argv), toml_list(argv)
        for key in ("stop_command", "notify_command", "recovery_command"):
            if draw(st.booleans()):
                argv = draw(ARGV)
                d, keys[key] = replace(d, **{key: argv}), toml_list(argv)
        threshold = draw(st.integers(0, COUNT_MAX))
        written, seconds = draw(duration())
        d = replace(d, failure_threshold=threshold, failure_timeout_s=seconds)
        keys |= {"failure_threshold": str(threshold), "failure_timeout": written}
        dropped = draw(st.sets(st.sampled_from(sorted(keys))))  # a key left out takes its default
        for key in dropped - {"unit", "start_command", "parent"}:
            del keys[key]
            attr = FIELDS[key].attr
            d = replace(d, **{attr: next(f.default for f in fields(ServiceDef) if f.name == attr)})
        out.append((d, keys))
    return out


def toml_str(s: str) -> str:
    """A TOML basic string, escaping what TOML does not allow raw."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(toml_str(i) for i in items) + "]"


def render(defs: list[tuple[ServiceDef, dict[str, str]]], styles: list[str]) -> tuple[str, list[str], dict[str, int]]:
    """The file, the names in the order tomllib reads them, and the line each starts on."""
    loose: list[str] = ["[services]"]  # dotted and inline services, under one [services] table
    tables: list[tuple[str, list[str]]] = []
    for (d, keys), style in zip(defs, styles):
        key = d.name if re.fullmatch(r"[A-Za-z0-9_-]+", d.name) and style != "quoted" else toml_str(d.name)
        pairs = [f"{k} = {v}" for k, v in keys.items()]
        if style == "dotted":
            loose += [f"{key}.{p}" for p in pairs]
        elif style == "inline":
            loose.append(f"{key} = {{ {', '.join(pairs)} }}")
        else:
            tables.append((d.name, [f"[services.{key}]"] + pairs))
    lines, order, starts = [], [], {}
    if len(loose) > 1:
        lines = loose
        for (d, _), style in zip(defs, styles):
            if style in ("dotted", "inline"):
                order.append(d.name)
                starts[d.name] = next(i + 1 for i, ln in enumerate(loose)
                                      if ln.startswith((d.name + ".", d.name + " =", toml_str(d.name))))
    for name, table in tables:
        lines.append("")
        order.append(name)
        starts[name] = len(lines) + 1
        lines += table
    return "\n".join(lines) + "\n", order, starts


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_valid_definitions_rendered_to_toml_parse_back_equal(data: st.DataObject) -> None:
    defs = data.draw(definitions())
    styles = data.draw(st.lists(st.sampled_from(["header", "quoted", "dotted", "inline"]),
                                min_size=len(defs), max_size=len(defs)))
    text, order, starts = render(defs, styles)
    parsed = parse(text, FILE)
    assert list(parsed) == order
    assert parsed == {d.name: d for d, _ in defs}
    assert {n: d.source_line for n, d in parsed.items()} == starts
    for d in parsed.values():
        assert ServiceDef.from_json(json.loads(json.dumps(d.to_json()))) == d


# --------------------------------------------------------------- the command
def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CLUSTERFW_SOCKET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "clusterfw.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=60, stdin=subprocess.DEVNULL)


def test_apply_check_on_a_valid_file(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_text(FULL)
    out = cli("service", "apply", "--check", "web.toml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "web.toml: 3 service(s) valid: web, db, web-log" and out.stderr == ""
    out = cli("service", "apply", "--check", "--json", "web.toml", cwd=tmp_path)
    doc = json.loads(out.stdout)
    assert doc["ok"] is True and doc["services"] == ["db", "web", "web-log"]
    assert [ServiceDef.from_json(d) for d in doc["definitions"]] == list(FULL_DEFS.values())


@pytest.mark.parametrize("text, where", [
    (S + U + "preferencs = ['n1']\n", "bad.toml:3: preferencs: "),
    (S + "start_command = '/bin/x --y'\n", "bad.toml:2: start_command: "),
    (S + U + "preference_order = ordered\n", "bad.toml:3: preference_order: not valid TOML"),
    ("", "bad.toml:1: services: "),
])
def test_apply_check_on_a_bad_file(tmp_path: Path, text: str, where: str) -> None:
    (tmp_path / "bad.toml").write_text(text)
    out = cli("service", "apply", "--check", "bad.toml", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith(f"clusterfw: {where}") and out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


@pytest.mark.parametrize("make, says", [
    (lambda p: None, "bad.toml: no such file"),
    (lambda p: p.mkdir(), "bad.toml: cannot be read"),
    (lambda p: p.write_bytes(b"[services.web]\nunit = '\xff'\n"), "bad.toml: cannot be read"),
])
def test_apply_check_on_a_file_that_cannot_be_read(tmp_path: Path, make, says: str) -> None:
    make(tmp_path / "bad.toml")
    out = cli("service", "apply", "--check", "bad.toml", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith(f"clusterfw: {says}"), out.stderr
    assert "Traceback" not in out.stderr


# ------------------------------------------------------------------ the docs
def definitions_section() -> str:
    text = (REPO / "docs" / "services.md").read_text()
    return text.split("\n## Definitions\n", 1)[1].split("\n## ", 1)[0]


def test_the_docs_example_parses() -> None:
    example = re.findall(r"```toml\n(.*?)```", definitions_section(), re.S)[0]
    defs = parse(example, "services.toml")
    assert len(defs) >= 2 and any(d.parent for d in defs.values()) and any(d.unit for d in defs.values())


def test_the_docs_list_every_key() -> None:
    rows = re.findall(r"^\| `([a-z_]+)` \|", definitions_section(), re.M)
    assert rows == list(FIELDS)


def test_the_docs_sample_error_is_what_the_command_prints(tmp_path: Path) -> None:
    section = definitions_section()
    m = re.search(r"```toml\n# web\.toml\n(.*?)```\n+```\n\$ (clusterfw service apply --check web\.toml)\n(.*?)\n```",
                  section, re.S)
    assert m, "the sample error is missing"
    (tmp_path / "web.toml").write_text("# web.toml\n" + m.group(1))
    out = cli(*m.group(2).split()[1:], cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == m.group(3)


def test_the_daemon_checks_definitions_sent_as_json_by_the_same_rules():
    from clusterfw.core.svcdef import ServiceDef
    from clusterfw.core.svcdef_toml import from_registry
    good = ServiceDef("web", preferences=("n1",), maturity_time_s=5, start_command=("a",))
    assert from_registry([good.to_json()], "req") == {"web": good}
    with_events = parse(EVENTS_FILE, FILE)
    assert from_registry([d.to_json() for d in with_events.values()], "req") == with_events
    for bad, field in (([{"name": "w/x", "start_command": ["a"]}], "name"),
                       ([{"name": "w", "preferences": 5, "start_command": ["a"]}], "preferences"),
                       ([{"name": "w", "start_command": "sleep 10"}], "start_command"),
                       ([{"name": "w", "bogus": 1, "start_command": ["a"]}], "bogus"),
                       ([{"name": "w", "start_command": ["a"]}] * 2, "w"),
                       ("not a list", "defs"), ([42], "name")):
        with pytest.raises(DefinitionError) as e:
            from_registry(bad, "the apply request")
        assert e.value.filename == "the apply request" and e.value.field == field, str(e.value)


# ------------------------------------------------------------------ events
EVENTS_FILE = """\
[services.web]
start_command = ["/usr/bin/web"]

[services.web.events.peer-down]        # line 4
watch = "membership"
transition = "forced-leave"
action = ["/usr/local/bin/page", "${node} left (${transition}, epoch ${epoch})", "$$HOME", "${in.node}"]

[services.web.events.any-change]
watch = "membership"
node = "n2"
action = ["/bin/true"]

[services.web.events.unit_failed]
watch = "unit"
unit = "clusterfw-svc-web.service"
state = "failed"
action = ["/usr/local/bin/collect", "${unit}", "${result}"]

[services.log]
parent = "web"
unit = "log.service"
events.restarted = { watch = "unit", unit = "log.service", state = "active", action = ["/bin/echo", "${sub_state}"] }
"""


def test_events_parse_with_their_defaults_filled_in() -> None:
    from clusterfw.core.events import MEMBERSHIP, UNIT, EventDef

    defs = parse(EVENTS_FILE, FILE)
    assert defs["web"].events == (
        EventDef("web.peer-down", MEMBERSHIP, {"node": "*", "transition": "forced-leave"},
                 ("/usr/local/bin/page", "${node} left (${transition}, epoch ${epoch})", "$$HOME", "${in.node}")),
        EventDef("web.any-change", MEMBERSHIP, {"node": "n2", "transition": "any"}, ("/bin/true",)),
        EventDef("web.unit_failed", UNIT, {"unit": "clusterfw-svc-web.service", "state": "failed"},
                 ("/usr/local/bin/collect", "${unit}", "${result}")),
    )
    assert defs["log"].events == (  # a child may have events: they are not choosing factors
        EventDef("log.restarted", UNIT, {"unit": "log.service", "state": "active"}, ("/bin/echo", "${sub_state}")),)
    for d in defs.values():
        assert ServiceDef.from_json(json.loads(json.dumps(d.to_json()))) == d
    assert key_lines(EVENTS_FILE)[("services", "web", "events", "peer-down")] == 4


def test_an_event_name_is_unique_in_the_cluster() -> None:
    """SERVICE.EVENT: an event's own part has no '.', so no two services' events can share a name."""
    text = "[services.\"a.b\"]\n" + U + "[services.\"a.b\".events.c]\n" + M + A + "[services.a]\n" + U
    defs = parse(text, FILE)
    assert [e.name for e in defs["a.b"].events] == ["a.b.c"]
    assert "has '.'" in error("[services.a]\n" + U + "[services.a.events.\"b.c\"]\n" + M + A).problem


def test_the_events_docs_example_parses() -> None:
    text = (REPO / "docs" / "events.md").read_text()
    examples = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert examples, "docs/events.md has no TOML example"
    for example in examples:
        defs = parse(example, "events.toml")
        assert any(d.events for d in defs.values())


def test_the_events_docs_sample_error_is_what_the_command_prints(tmp_path: Path) -> None:
    """docs/events.md shows the error for its example with ${node} misspelt ${nod}."""
    text = (REPO / "docs" / "events.md").read_text()
    example = re.findall(r"```toml\n(# web\.toml\n.*?)```", text, re.S)[0]
    m = re.search(r"```\n\$ (clusterfw service apply --check web\.toml)\n(clusterfw: web\.toml:.*?)\n```", text, re.S)
    assert m, "the sample error is missing"
    (tmp_path / "web.toml").write_text(example.replace("${node} ${transition}", "${nod} ${transition}", 1))
    out = cli(*m.group(1).split()[1:], cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == m.group(2)
