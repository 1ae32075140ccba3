"""The pure model of events (``clusterfw.core.events``): matching an
occurrence against an event's IN parameters, expanding an action's
``${param}`` references (``$$``, unknown names, no shell), the enable rule
of event groups, and the JSON form a definition takes in the registry.
Table-driven: each row is one case."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterfw.core import events as ev
from clusterfw.core.events import EventDef, EventGroup, Occurrence
from clusterfw.core.services import Entry, Registry, ServiceRec, SvcState
from clusterfw.core.svcdef import ServiceDef
from clusterfw.events.record import EVENTS


def membership(node: str = "*", transition: str = "any") -> EventDef:
    return EventDef("web.m", ev.MEMBERSHIP, {"node": node, "transition": transition}, ("/bin/true",))


def unit(name: str = "db.service", state: str = "any") -> EventDef:
    return EventDef("web.u", ev.UNIT, {"unit": name, "state": state}, ("/bin/true",))


def seen_membership(node: str, transition: str) -> Occurrence:
    return Occurrence(ev.MEMBERSHIP, {"node": node, "transition": transition, "epoch": "7",
                                      "incarnation": "1f", "time": "2025-01-01T00:00:00.000Z"})


def seen_unit(name: str, active: str, sub: str = "dead", result: str = "success") -> Occurrence:
    return Occurrence(ev.UNIT, {"unit": name, "active_state": active, "sub_state": sub, "result": result,
                                "time": "2025-01-01T00:00:00.000Z"})


# ------------------------------------------------------------------ matching
MATCHING = [
    # (case, event, occurrence, matches)
    ("any node, any transition", membership(), seen_membership("n2", "join"), True),
    ("any node, forced-leave only: a forced leave", membership(transition="forced-leave"),
     seen_membership("n3", "forced-leave"), True),
    ("any node, forced-leave only: a graceful leave", membership(transition="forced-leave"),
     seen_membership("n3", "leave"), False),
    ("one node: that node", membership("n2"), seen_membership("n2", "leave"), True),
    ("one node: another node", membership("n2"), seen_membership("n3", "leave"), False),
    ("one node and one transition: both", membership("n2", "join"), seen_membership("n2", "join"), True),
    ("one node and one transition: node only", membership("n2", "join"), seen_membership("n2", "leave"), False),
    ("'*' is no node name in an occurrence", membership("n2"), seen_membership("*", "join"), False),
    ("membership event, unit occurrence", membership(), seen_unit("db.service", "failed"), False),
    ("unit, any state: failed", unit(), seen_unit("db.service", "failed"), True),
    ("unit, any state: active", unit(), seen_unit("db.service", "active", "running"), True),
    ("unit, failed only: failed", unit(state="failed"), seen_unit("db.service", "failed", "failed", "exit-code"),
     True),
    ("unit, failed only: inactive", unit(state="failed"), seen_unit("db.service", "inactive"), False),
    ("unit, active only: active", unit(state="active"), seen_unit("db.service", "active", "running"), True),
    ("unit, inactive only: inactive", unit(state="inactive"), seen_unit("db.service", "inactive"), True),
    ("another unit", unit(), seen_unit("web.service", "failed"), False),
    ("unit event, membership occurrence", unit(), seen_membership("n2", "join"), False),
    ("an unknown watcher never matches", EventDef("web.x", "process", {}, ("/bin/true",)),
     Occurrence("process", {}), False),
    ("an IN parameter missing without a default", EventDef("web.u", ev.UNIT, {"state": "any"}, ("/bin/true",)),
     seen_unit("db.service", "failed"), False),
    ("an IN parameter missing takes its default", EventDef("web.m", ev.MEMBERSHIP, {}, ("/bin/true",)),
     seen_membership("n2", "join"), True),
]


@pytest.mark.parametrize("case, event, occurrence, expected", MATCHING, ids=[m[0] for m in MATCHING])
def test_matching(case: str, event: EventDef, occurrence: Occurrence, expected: bool) -> None:
    assert ev.matches(event, occurrence) is expected


def test_every_in_parameter_is_compared_with_an_out_parameter_of_its_watcher() -> None:
    for schema in ev.SCHEMAS.values():
        for p in schema.in_params:
            assert p.out in schema.out_params, (schema.watcher, p.name)
            assert p.default is None or p.kind != "choice" or p.default in p.choices
        assert "time" in schema.out_params
    assert ev.TRANSITIONS == EVENTS  # the membership watcher's words are the log's


# ---------------------------------------------------------------- expansion
IN = {"node": "*", "transition": "forced-leave"}
OUT = {"node": "n3", "transition": "forced-leave", "epoch": "8", "incarnation": "1f3a", "time": "T"}

EXPANSION = [
    # (case, action, expanded)
    ("no reference", ["/bin/echo", "hello"], ("/bin/echo", "hello")),
    ("an OUT value", ["/bin/echo", "${node}"], ("/bin/echo", "n3")),
    ("several in one item", ["/bin/echo", "${node} ${transition} at epoch ${epoch}"],
     ("/bin/echo", "n3 forced-leave at epoch 8")),
    ("an OUT value wins over the IN one of the same name", ["${node}"], ("n3",)),
    ("in. is the IN value", ["${in.node}", "${in.transition}"], ("*", "forced-leave")),
    ("$$ is one $", ["/bin/echo", "$$HOME costs $$5", "$$${node}"], ("/bin/echo", "$HOME costs $5", "$n3")),
    ("$$ before a brace is no reference", ["$${node}"], ("${node}",)),
    ("the program may be a reference", ["${incarnation}"], ("1f3a",)),
    ("an empty item stays", ["/bin/echo", ""], ("/bin/echo", "")),
]


@pytest.mark.parametrize("case, action, expanded", EXPANSION, ids=[e[0] for e in EXPANSION])
def test_expansion(case: str, action: list[str], expanded: tuple[str, ...]) -> None:
    assert ev.action_problem(ev.MEMBERSHIP, action) is None
    assert ev.expand(action, IN, OUT) == expanded


def test_a_value_with_spaces_quotes_and_dollars_stays_one_item_as_it_is() -> None:
    nasty = "n 3'\"; rm -rf / $HOME ${node} `id`"
    assert ev.expand(["/bin/echo", "${node}", "x${node}x"], IN, {**OUT, "node": nasty}) == (
        "/bin/echo", nasty, f"x{nasty}x")


BAD_ACTIONS = [
    # (case, watcher, action, item, problem piece, fix piece)
    ("an unknown name", ev.MEMBERSHIP, ["/bin/echo", "${nod}"], 2, "'${nod}' is not a parameter",
     "did you mean ${node}?"),
    ("a unit parameter in a membership event", ev.MEMBERSHIP, ["/bin/echo", "${unit}"], 2, "'${unit}'",
     "it has ${node}, ${transition}, ${epoch}, ${incarnation}, ${time}, ${in.node}, ${in.transition}"),
    ("a membership parameter in a unit event", ev.UNIT, ["/bin/echo", "${epoch}"], 2, "'${epoch}'", "${result}"),
    ("in. of an OUT-only name", ev.MEMBERSHIP, ["${in.epoch}"], 1, "'${in.epoch}'", "did you mean ${epoch}?"),
    ("an empty name", ev.UNIT, ["/bin/x", "a", "${}"], 3, "'${}'", "write $$ for a literal '$'"),
    ("$name without braces", ev.MEMBERSHIP, ["/bin/x", "$node"], 2, "'$node' is not a parameter reference",
     "write ${node} for the parameter, or $$node for the literal text '$node'"),
    ("a lone $ at the end", ev.MEMBERSHIP, ["/bin/x", "costs 5$"], 2, "a lone '$' at character 8",
     "write $$ for a literal '$'"),
    ("a $ before a digit", ev.MEMBERSHIP, ["/bin/x", "$5"], 2, "a lone '$'", "$$"),
    ("an unclosed brace", ev.UNIT, ["/bin/x", "${unit"], 2, "'${' at character 1 is not closed", "${name}"),
    ("a nested brace", ev.UNIT, ["/bin/x", "${a{b}}"], 2, "not closed", "close it"),
]


@pytest.mark.parametrize("case, watcher, action, item, problem, fix", BAD_ACTIONS, ids=[b[0] for b in BAD_ACTIONS])
def test_an_action_that_cannot_be_expanded_is_found_at_definition_time(case: str, watcher: str, action: list[str],
                                                                       item: int, problem: str, fix: str) -> None:
    found = ev.action_problem(watcher, action)
    assert found is not None
    assert found[0] == item and problem in found[1] and fix in found[2], found


@given(st.lists(st.text(), min_size=1, max_size=4))
def test_expansion_never_fails_on_an_accepted_action(action: list[str]) -> None:
    if ev.action_problem(ev.UNIT, action) is not None:
        return
    out = {"unit": "u.service", "active_state": "failed", "sub_state": "failed", "result": "signal", "time": "T"}
    expanded = ev.expand(action, {"unit": "u.service", "state": "failed"}, out)
    assert len(expanded) == len(action)
    for before, after in zip(action, expanded):
        if "$" not in before:
            assert after == before


def test_the_environment_of_an_action() -> None:
    event = EventDef("web.peer-down", ev.MEMBERSHIP, IN, ("/bin/true",))
    assert ev.action_env(event, OUT) == {
        "CLUSTERFW_EVENT": "web.peer-down", "CLUSTERFW_SERVICE": "web", "CLUSTERFW_OUT_NODE": "n3",
        "CLUSTERFW_OUT_TRANSITION": "forced-leave", "CLUSTERFW_OUT_EPOCH": "8",
        "CLUSTERFW_OUT_INCARNATION": "1f3a", "CLUSTERFW_OUT_TIME": "T"}
    unit_event = EventDef("db.v2.failed", ev.UNIT, {"unit": "db.service", "state": "failed"}, ("/bin/true",))
    assert (unit_event.service, unit_event.short_name) == ("db.v2", "failed")  # a service name may hold '.'
    assert ev.action_env(unit_event, {"active_state": "failed"})["CLUSTERFW_OUT_ACTIVE_STATE"] == "failed"


# ------------------------------------------------------------------ names
@pytest.mark.parametrize("name, problem", [
    ("peer-down", ""), ("a", ""), ("_x", ""), ("A1_b-2", ""), ("x" * ev.EVENT_NAME_MAX, ""),
    ("", "is empty"), ("-x", "starts with '-'"), ("a.b", "has '.'"), ("a b", "has ' '"),
    ("x" * (ev.EVENT_NAME_MAX + 1), f"more than {ev.EVENT_NAME_MAX}"), ("é", "has 'é'"),
])
def test_event_names(name: str, problem: str) -> None:
    found = ev.event_name_problem(name)
    assert (problem in found) if problem else found == "", found


# ------------------------------------------------------------------ groups
def test_the_enable_rule_per_node_state() -> None:
    for state in SvcState:
        assert ev.group_enabled(state.value) is (state is SvcState.REGISTERED)
        assert ev.group_enabled(state) is (state is SvcState.REGISTERED)  # the enum itself, too
    assert ev.group_enabled(None) is False  # de-registered there: no entry


PEER_DOWN = EventDef("web.peer-down", ev.MEMBERSHIP, {"node": "*", "transition": "forced-leave"}, ("/bin/true",))
FAILED = EventDef("db.failed", ev.UNIT, {"unit": "db.service", "state": "failed"}, ("/bin/true",))


def registry(**states: dict[str, SvcState]) -> Registry:
    """Services web (with a membership event), db (a unit event) and plain (none), in these per-node states."""
    defs = {"web": ServiceDef("web", start_command=("/bin/web",), events=(PEER_DOWN,)),
            "db": ServiceDef("db", unit="db.service", events=(FAILED,)),
            "plain": ServiceDef("plain", start_command=("/bin/plain",))}
    reg = Registry()
    for name, d in defs.items():
        reg.services[name] = ServiceRec(d, wanted=True, nodes={n: Entry(s, 0) for n, s in states.get(name, {}).items()})
    return reg


R, S, T, V = SvcState.REGISTERED, SvcState.STARTING, SvcState.STOPPING, SvcState.RECOVERING
GROUPS = [
    # (case, per-node states, node, enabled services)
    ("nothing registered anywhere", {}, "n1", []),
    ("registered here", {"web": {"n1": R}}, "n1", ["web"]),
    ("registered elsewhere only", {"web": {"n2": R}}, "n1", []),
    ("starting here: not yet", {"web": {"n1": S}}, "n1", []),
    ("stopping here: no longer", {"web": {"n1": T}}, "n1", []),
    ("recovering here: not registered", {"web": {"n1": V}}, "n1", []),
    ("placement every: on each node where registered", {"web": {"n1": R, "n2": R, "n3": S}}, "n2", ["web"]),
    ("two services here, registry order", {"web": {"n1": R}, "db": {"n1": R}}, "n1", ["web", "db"]),
    ("a service without events has no group", {"plain": {"n1": R}, "db": {"n1": R}}, "n1", ["db"]),
]


@pytest.mark.parametrize("case, states, node, expected", GROUPS, ids=[g[0] for g in GROUPS])
def test_enabled_groups(case: str, states: dict[str, dict[str, SvcState]], node: str, expected: list[str]) -> None:
    groups = ev.enabled_groups(registry(**states), node)
    assert [g.service for g in groups] == expected
    for g in groups:
        assert g == EventGroup(g.service, {"web": (PEER_DOWN,), "db": (FAILED,)}[g.service])


def test_watched_splits_the_enabled_events_by_watcher() -> None:
    groups = ev.enabled_groups(registry(web={"n1": R}, db={"n1": R}), "n1")
    assert ev.watched(groups, ev.MEMBERSHIP) == [PEER_DOWN]
    assert ev.watched(groups, ev.UNIT) == [FAILED]
    assert ev.watched(groups, "process") == []


def test_the_registry_round_trips_a_service_with_events() -> None:
    reg = registry(web={"n1": R})
    again = Registry.from_json(reg.to_json())
    assert again.services["web"].definition.events == (PEER_DOWN,)
    assert ev.enabled_groups(again, "n1") == ev.enabled_groups(reg, "n1")
    assert EventDef.from_json(PEER_DOWN.to_json()) == PEER_DOWN
    assert ServiceDef("x", unit="x.service").to_json().get("events") is None  # no events: no key


def test_changing_events_does_not_restart_a_running_service() -> None:
    from clusterfw.core.services import apply
    from clusterfw.core.svcdef import RESTART_FIELDS

    assert "events" not in RESTART_FIELDS
    reg = registry(web={"n1": R})
    old = reg.services["web"].definition
    other = EventDef("web.other", ev.MEMBERSHIP, {"node": "n2", "transition": "join"}, ("/bin/echo", "${node}"))
    for events in ((PEER_DOWN, other), (), (PEER_DOWN,)):
        new = ServiceDef("web", start_command=old.start_command, events=events)
        said = apply(reg, {"web": new}, now_ms=1000)
        rec = reg.services["web"]
        assert said == ["web: definition changed: events"]  # no "(restarts it)"
        assert rec.definition == new and rec.nodes["n1"].state is R and not rec.transfer
