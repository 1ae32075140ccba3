"""The registration & launch service's pure core: the patent's Tables 2 and 3
row by row, grouping, actions, failures, maintenance, and placement cases
translated from Pacemaker's scheduler regression suite (final placement only)."""
from __future__ import annotations

import pytest

from clusterfw.core import services as svc
from clusterfw.core.services import Action, Cluster, Outcome, Registry, SvcState
from clusterfw.core.svcdef import Placement, PreferenceOrder, ServiceDef, TransferCost

N3 = ("n0", "n1", "n2")


class Lab:
    """A registry driven to quiescence by executors that do what local_work says."""

    def __init__(self, defs: list[ServiceDef], known: tuple[str, ...] = N3) -> None:
        self.known = known
        self.reg = Registry()
        self.now = 0
        self.fail_start: set[tuple[str, str]] = set()
        self.log: list[tuple[str, str, str]] = []  # (node, action, service), in order
        svc.apply(self.reg, {d.name: d for d in defs}, self.now)

    def cluster(self, up: set[str], present: set[str] | None = None) -> Cluster:
        return Cluster(self.known, frozenset(up if present is None else present | up), frozenset(up), self.now)

    def settle(self, up: set[str], present: set[str] | None = None, at: int | None = None,
               execute: bool = True) -> None:
        if at is not None:
            self.now = at
        for _ in range(60):
            cl = self.cluster(up, present)
            changed = svc.decide(self.reg, cl)
            svc.check(self.reg, self.known)
            did = False
            if execute:
                for node in sorted(cl.present):
                    for w in svc.local_work(self.reg, node, cl):
                        ok = not (w.action is Action.START and (w.service, node) in self.fail_start)
                        self.log.append((node, w.action.value, w.service))
                        svc.report(self.reg, node, w.service, Outcome(w.action, ok, "" if ok else "exited 1"),
                                   self.now)
                        svc.check(self.reg, self.known)
                        did = True
            if not changed and not did:
                return
        raise AssertionError("no quiescence")

    def step(self, up: set[str], present: set[str] | None = None) -> None:
        """One decision round only (to look at an intermediate state)."""
        svc.decide(self.reg, self.cluster(up, present))
        svc.check(self.reg, self.known)

    def run_one(self, up: set[str], node: str, present: set[str] | None = None) -> None:
        cl = self.cluster(up, present)
        for w in svc.local_work(self.reg, node, cl):
            self.log.append((node, w.action.value, w.service))
            svc.report(self.reg, node, w.service, Outcome(w.action, True), self.now)

    def row(self, name: str, up: set[str], present: set[str] | None = None) -> tuple:
        s = svc.summary(self.reg, self.reg.services[name], self.cluster(up, present))
        return (s["state"], "".join(s["flags"]),
                tuple((n, v["state"], "".join(v["flags"])) for n, v in s["nodes"].items()))

    def owners(self, name: str) -> list[str]:
        return self.reg.services[name].owners()


def test_table_2_maturity_graceful_leave_and_transfer_row_by_row():
    """Allowable N0, N1; maturity_count 2, maturity_time 5 (minutes in the
    patent; seconds here); auto_register auto."""
    lab = Lab([ServiceDef("svc", allowable_nodes=("n0", "n1"), maturity_count=2, maturity_time_s=5)])
    lab.settle(set(), at=0)
    assert lab.row("svc", set()) == ("de-registered", "", (("n0", "down", "I"), ("n1", "down", "I"),
                                                             ("n2", "down", "")))
    lab.settle({"n2"}, at=1000)  # t1: N2 boots: not allowable, no change
    assert lab.row("svc", {"n2"})[0] == "de-registered" and lab.owners("svc") == []
    lab.settle({"n2", "n0"}, at=2000)  # t2: N0 boots: awaiting maturity (1 of 2 up, 2 s of 5)
    assert lab.row("svc", {"n0", "n2"}) == ("de-registered", "M", (("n0", "up", "I"), ("n1", "down", "I"),
                                                                   ("n2", "up", "")))
    lab.settle({"n0", "n2"}, at=5999)  # the cluster formed at t1 (n2 up): 4.999 s of 5
    assert lab.owners("svc") == []
    lab.now = 6000  # t3: maturity time elapses -> starting on N0
    lab.step({"n0", "n2"})
    assert lab.row("svc", {"n0", "n2"}) == ("starting", "", (("n0", "starting", "I"), ("n1", "down", "I"),
                                                             ("n2", "up", "")))
    lab.settle({"n0", "n2"})  # t4: start completes
    assert lab.row("svc", {"n0", "n2"})[:2] == ("registered", "") and lab.owners("svc") == ["n0"]
    lab.settle({"n0", "n1", "n2"}, at=6000)  # t5: N1 boots: no action
    assert lab.owners("svc") == ["n0"]
    lab.settle({"n0", "n1"}, at=7000)  # t6: N2 leaves gracefully: no influence
    assert lab.owners("svc") == ["n0"]
    # t7: N0 begins a graceful leave: present, not up -> stopping with T
    lab.now = 8000
    lab.step({"n1"}, present={"n0"})
    assert lab.row("svc", {"n1"}, {"n0"})[:2] == ("stopping", "T")
    assert lab.reg.services["svc"].nodes["n0"].state is SvcState.STOPPING
    lab.run_one({"n1"}, "n0", present={"n0"})  # t8: stop completes -> de-registered, T
    assert lab.row("svc", {"n1"}, {"n0"})[:2] == ("de-registered", "T")
    lab.step({"n1"}, present={"n0"})  # t9: starting on N1, T
    assert lab.row("svc", {"n1"}, {"n0"})[:2] == ("starting", "T")
    assert lab.reg.services["svc"].nodes["n1"].state is SvcState.STARTING
    lab.run_one({"n1"}, "n1", present={"n0"})  # t10: registered on N1, T cleared
    assert lab.row("svc", {"n1"}, {"n0"})[:2] == ("registered", "")
    lab.settle({"n1"}, at=9000)  # t11: N0 completes the leave: no change
    assert lab.owners("svc") == ["n1"]
    lab.now = 10000  # t12: N1 begins a graceful leave: stopping, T
    lab.step(set(), present={"n1"})
    assert lab.row("svc", set(), {"n1"})[:2] == ("stopping", "T")
    lab.run_one(set(), "n1", present={"n1"})
    lab.step(set(), present={"n1"})  # t13: stop completes: de-registered, T cleared (nowhere to go)
    assert lab.row("svc", set(), {"n1"})[:2] == ("de-registered", "")


def test_table_3_preferred_node_notify_and_free_failback_row_by_row():
    """N0 preferred, the others allowable; maturity_count 2; transfer free; a notify command."""
    lab = Lab([ServiceDef("svc", preferences=("n0",), maturity_count=2, transfer_cost=TransferCost.FREE,
                          notify_command=("true",), failback_delay_s=0)])
    assert lab.row("svc", set())[:2] == ("de-registered", "N")
    lab.now = 1000  # t1: N0 boots: the preferred node is the primary -> starting at once
    lab.step({"n0"})
    assert lab.row("svc", {"n0"})[:2] == ("starting", "N")
    lab.settle({"n0"})  # t2: registered
    assert lab.row("svc", {"n0"})[:2] == ("registered", "N")
    lab.settle({"n0", "n1"}, at=2000)  # t3: N1 boots and is notified
    assert ("n1", "notify", "svc") in lab.log
    assert dict((n, s) for n, s, _ in lab.row("svc", {"n0", "n1"})[2])["n1"] == "notified"
    lab.settle({"n1"}, at=3000)  # t4-t7: N0 leaves (forced): registered on N1
    assert lab.owners("svc") == ["n1"]
    lab.settle({"n1", "n2"}, at=4000)  # t8: N2 boots, notified
    assert ("n2", "notify", "svc") in lab.log
    # t9-t13: N0 boots, notified; takeover: stopping on N1 with T, then starting on N0, registered
    lab.now = 5000
    lab.step({"n0", "n1", "n2"})
    assert lab.row("svc", {"n0", "n1", "n2"})[:2] == ("stopping", "TN")
    lab.run_one({"n0", "n1", "n2"}, "n1")
    assert lab.row("svc", {"n0", "n1", "n2"})[:2] == ("de-registered", "TN")
    lab.step({"n0", "n1", "n2"})
    assert lab.row("svc", {"n0", "n1", "n2"})[:2] == ("starting", "TN")
    lab.settle({"n0", "n1", "n2"})
    assert lab.row("svc", {"n0", "n1", "n2"})[:2] == ("registered", "N") and lab.owners("svc") == ["n0"]
    nodes = dict((n, s) for n, s, _ in lab.row("svc", {"n0", "n1", "n2"})[2])
    assert nodes == {"n0": "registered", "n1": "notified", "n2": "notified"}


def test_a_three_generation_group_starts_parents_first_and_stops_children_first():
    defs = [ServiceDef("root", preferences=("n0", "n1"), transfer_cost=TransferCost.FREE, failback_delay_s=0,
                       start_command=("true",)),
            ServiceDef("child", parent="root", start_command=("true",)),
            ServiceDef("grandchild", parent="child", start_command=("true",))]
    lab = Lab(defs)
    lab.settle({"n1"}, at=1000)
    assert [l for l in lab.log if l[1] == "start"] == [("n1", "start", "root"), ("n1", "start", "child"),
                                                       ("n1", "start", "grandchild")]
    lab.log.clear()
    lab.settle({"n0", "n1"}, at=2000)  # the preferred node joins: the whole group moves
    assert [l for l in lab.log if l[1] in ("start", "stop")] == [
        ("n1", "stop", "grandchild"), ("n1", "stop", "child"), ("n1", "stop", "root"),
        ("n0", "start", "root"), ("n0", "start", "child"), ("n0", "start", "grandchild")]
    assert all(lab.owners(n) == ["n0"] for n in ("root", "child", "grandchild"))


def test_a_forced_out_owner_is_recovered_elsewhere_then_started_on_a_survivor():
    lab = Lab([ServiceDef("db", preferences=("n0", "n1"), start_command=("db",), recovery_command=("fsck",))])
    lab.settle({"n0", "n1", "n2"}, at=1000)
    assert lab.owners("db") == ["n0"]
    lab.log.clear()
    lab.step({"n1", "n2"})  # n0 is gone (forced out): recovery first
    assert lab.reg.services["db"].nodes == {"n1": svc.Entry(SvcState.RECOVERING, 1000, "n0")}
    assert lab.row("db", {"n1", "n2"})[0] == "recovering"
    lab.settle({"n1", "n2"})
    assert lab.log == [("n1", "recovery", "db"), ("n1", "start", "db")]
    assert lab.owners("db") == ["n1"]


def test_a_node_still_present_keeps_its_service_until_it_is_gone():
    """ONE-OWNER: a forced-leaving node that is still present (not yet fenced
    at the services level) keeps its entry; nothing starts elsewhere."""
    lab = Lab([ServiceDef("db", start_command=("db",))])
    lab.settle({"n0", "n1"}, at=1000)
    owner = lab.owners("db")[0]
    other = ({"n0", "n1"} - {owner}).pop()
    lab.settle({other}, present={owner}, execute=False)
    assert lab.owners("db") == [owner] and other not in lab.reg.services["db"].nodes


def test_a_failed_start_falls_over_to_the_next_node_and_marks_the_node_failed():
    lab = Lab([ServiceDef("web", preferences=("n0", "n1", "n2"), start_command=("web",))])
    lab.fail_start = {("web", "n0")}
    lab.settle({"n0", "n1", "n2"}, at=1000)
    assert lab.owners("web") == ["n1"]
    assert lab.reg.services["web"].failures["n0"].marked
    why = "\n".join(svc.why(lab.reg, "web", lab.cluster({"n0", "n1", "n2"})))
    assert "n0: start failed at" in why and "clusterfw service clear web" in why


def test_failed_everywhere_is_blocked_and_says_so_until_cleared():
    lab = Lab([ServiceDef("web", allowable_nodes=("n0", "n1"), start_command=("web",))])
    lab.fail_start = {("web", "n0"), ("web", "n1")}
    lab.settle({"n0", "n1"}, at=1000)
    s = svc.summary(lab.reg, lab.reg.services["web"], lab.cluster({"n0", "n1"}))
    assert s["state"] == "de-registered" and s["blocked"].startswith("blocked: it failed on every allowable node")
    lab.fail_start = set()
    svc.command(lab.reg, "clear", "web", lab.now, lab.cluster({"n0", "n1"}))
    lab.settle({"n0", "n1"})
    assert lab.owners("web") == ["n0"]


def test_failures_expire_after_failure_timeout():
    lab = Lab([ServiceDef("web", allowable_nodes=("n0",), start_command=("web",), failure_timeout_s=60)])
    lab.fail_start = {("web", "n0")}
    lab.settle({"n0"}, at=1000)
    assert lab.owners("web") == []
    lab.fail_start = set()
    lab.settle({"n0"}, at=60_999)
    assert lab.owners("web") == []
    lab.settle({"n0"}, at=61_000)
    assert lab.owners("web") == ["n0"]


def test_placement_every_starts_on_every_allowable_node_that_is_up():
    lab = Lab([ServiceDef("agent", placement_policy=Placement.EVERY, disallowable_nodes=("n2",),
                          start_command=("agent",))])
    lab.settle({"n0", "n1", "n2"}, at=1000)
    assert lab.owners("agent") == ["n0", "n1"]
    lab.settle({"n0", "n2"}, present={"n1"}, at=2000)  # n1 leaving: stopped there only
    assert lab.owners("agent") == ["n0"]


def test_notify_runs_on_a_late_joiner_and_again_after_it_rejoins():
    lab = Lab([ServiceDef("lic", allowable_nodes=("n0", "n1"), preferences=("n0",), start_command=("lic",),
                          notify_command=("note",))])
    lab.settle({"n0"}, at=1000)
    assert [l for l in lab.log if l[1] == "notify"] == []
    lab.settle({"n0", "n1"}, at=2000)
    assert [l for l in lab.log if l[1] == "notify"] == [("n1", "notify", "lic")]
    lab.settle({"n0"}, at=3000)
    lab.settle({"n0", "n1"}, at=4000)
    assert [l for l in lab.log if l[1] == "notify"] == [("n1", "notify", "lic")] * 2


def test_freeze_starts_stops_and_moves_nothing_and_survives_in_the_registry():
    lab = Lab([ServiceDef("web", preferences=("n0",), start_command=("web",))])
    lab.settle({"n0", "n1"}, at=1000)
    svc.command(lab.reg, "freeze", "web", lab.now, lab.cluster({"n0", "n1"}))
    reg = Registry.from_json(lab.reg.to_json())  # what a restarted daemon reads back
    assert reg.services["web"].frozen
    lab.reg = reg
    lab.log.clear()
    lab.settle({"n1"}, present={"n0"}, at=2000)  # n0 leaving: frozen -> not moved
    assert lab.owners("web") == ["n0"] and lab.log == []
    svc.command(lab.reg, "unfreeze", "web", lab.now, lab.cluster({"n1"}, {"n0"}))
    lab.settle({"n1"}, present={"n0"})
    assert lab.owners("web") == ["n1"]


def test_maintenance_places_nothing_new_and_leaves_what_runs_alone():
    lab = Lab([ServiceDef("web", preferences=("n0", "n1"), transfer_cost=TransferCost.FREE, failback_delay_s=0,
                          start_command=("web",))])
    lab.settle({"n1"}, at=1000)
    svc.command(lab.reg, "maintenance-on", "n0", lab.now, lab.cluster({"n1"}))
    lab.settle({"n0", "n1"}, at=2000)
    assert lab.owners("web") == ["n1"]
    assert any("in maintenance" in line for line in svc.why(lab.reg, "web", lab.cluster({"n0", "n1"})))
    svc.command(lab.reg, "maintenance-off", "n0", lab.now, lab.cluster({"n0", "n1"}))
    lab.settle({"n0", "n1"})
    assert lab.owners("web") == ["n0"]


def test_move_transfers_now_and_leaves_no_constraint_behind():
    lab = Lab([ServiceDef("web", preferences=("n0", "n1"), start_command=("web",))])
    lab.settle({"n0", "n1", "n2"}, at=1000)
    assert svc.command(lab.reg, "move", "web", lab.now, lab.cluster({"n0", "n1", "n2"}), to="n2") == \
        "web is moving to n2"
    lab.settle({"n0", "n1", "n2"})
    rec = lab.reg.services["web"]
    assert lab.owners("web") == ["n2"] and rec.target == "" and not rec.transfer
    # a failed move leaves nothing either: it lands on the best candidate, no target kept
    svc.command(lab.reg, "move", "web", lab.now, lab.cluster({"n0", "n1", "n2"}), to="n1")
    lab.fail_start = {("web", "n1")}
    lab.settle({"n0", "n1", "n2"})
    assert lab.owners("web") == ["n0"] and rec.target == ""


@pytest.mark.parametrize("to, error", [("n9", "no node named 'n9'"), ("n2", "n2 is not allowable")])
def test_move_refuses_with_a_reason(to, error):
    lab = Lab([ServiceDef("web", allowable_nodes=("n0", "n1"), start_command=("web",))])
    lab.settle({"n0", "n1", "n2"}, at=1000)
    with pytest.raises(svc.CommandError, match=error):
        svc.command(lab.reg, "move", "web", lab.now, lab.cluster({"n0", "n1", "n2"}), to=to)


def test_failback_waits_for_the_damping_delay_so_a_flapping_node_never_pulls():
    lab = Lab([ServiceDef("web", preferences=("n0", "n1"), transfer_cost=TransferCost.FREE, failback_delay_s=10,
                          start_command=("web",))])
    lab.settle({"n1"}, at=0)
    for t in range(1000, 60_000, 6000):  # n0 up 5 s, down 1 s, again and again
        lab.settle({"n0", "n1"}, at=t)
        assert lab.owners("web") == ["n1"]
        lab.settle({"n0", "n1"}, at=t + 5000)
        assert lab.owners("web") == ["n1"]
        lab.settle({"n1"}, at=t + 5500)
    lab.settle({"n0", "n1"}, at=100_000)
    lab.settle({"n0", "n1"}, at=110_000)
    assert lab.owners("web") == ["n0"]


def test_a_definition_change_restarts_only_when_it_must():
    d = ServiceDef("web", start_command=("web", "1"))
    lab = Lab([d])
    lab.settle({"n0"}, at=1000)
    lab.log.clear()
    svc.apply(lab.reg, {"web": ServiceDef("web", start_command=("web", "1"), failure_threshold=5)}, lab.now)
    lab.settle({"n0"})
    assert lab.log == []
    svc.apply(lab.reg, {"web": ServiceDef("web", start_command=("web", "2"))}, lab.now)
    lab.settle({"n0"})
    assert lab.log == [("n0", "stop", "web"), ("n0", "start", "web")] and lab.owners("web") == ["n0"]
    assert svc.apply(lab.reg, {"web": ServiceDef("web", start_command=("web", "2"))}, lab.now) == []


def test_manual_auto_register_waits_for_service_start():
    lab = Lab([ServiceDef("batch", auto_register=svc.AutoRegister.MANUAL, start_command=("b",))])
    lab.settle({"n0"}, at=1000)
    assert lab.owners("batch") == []
    svc.command(lab.reg, "start", "batch", lab.now, lab.cluster({"n0"}))
    lab.settle({"n0"})
    assert lab.owners("batch") == ["n0"]
    svc.command(lab.reg, "stop", "batch", lab.now, lab.cluster({"n0"}))
    lab.settle({"n0"})
    assert lab.owners("batch") == [] and lab.log[-1] == ("n0", "stop", "batch")


def test_unordered_preferences_place_by_load_but_never_move_for_it():
    lab = Lab([ServiceDef("w", preferences=("n0", "n1", "n2"), preference_order=PreferenceOrder.UNORDERED,
                          transfer_cost=TransferCost.FREE, failback_delay_s=0, start_command=("w",))])
    lab.reg.loads = {"n0": 0.9, "n1": 0.1, "n2": 0.5}
    lab.settle({"n0", "n1", "n2"}, at=1000)
    assert lab.owners("w") == ["n1"]
    lab.reg.loads = {"n0": 0.0, "n1": 0.9, "n2": 0.0}
    lab.settle({"n0", "n1", "n2"}, at=2000)
    assert lab.owners("w") == ["n1"]


def test_the_registry_round_trips_through_json():
    lab = Lab([ServiceDef("a", start_command=("a",), notify_command=("n",)),
               ServiceDef("b", parent="a", start_command=("b",))])
    lab.fail_start = {("a", "n0")}
    lab.settle({"n0", "n1"}, at=1000)
    again = Registry.from_json(lab.reg.to_json())
    assert again.to_json() == lab.reg.to_json()


def test_illegal_node_moves_raise():
    rec = svc.ServiceRec(ServiceDef("x", start_command=("x",)), wanted=True)
    with pytest.raises(svc.IllegalMove):
        svc._move(rec, "n0", SvcState.STOPPING, 0)


def test_check_catches_two_owners_and_a_child_without_its_parent():
    reg = Registry()
    svc.apply(reg, {"a": ServiceDef("a", start_command=("a",)), "b": ServiceDef("b", parent="a",
                                                                              start_command=("b",))}, 0)
    reg.services["a"].nodes = {"n0": svc.Entry(SvcState.REGISTERED, 0), "n1": svc.Entry(SvcState.STARTING, 0)}
    with pytest.raises(svc.RuleBroken, match="one-owner"):
        svc.check(reg, N3)
    reg.services["a"].nodes = {"n0": svc.Entry(SvcState.REGISTERED, 0)}
    reg.services["b"].nodes = {"n1": svc.Entry(SvcState.STARTING, 0)}
    with pytest.raises(svc.RuleBroken, match="with-parent"):
        svc.check(reg, N3)


# ---------------------------------------------------------------- Pacemaker's scheduler cases, translated
def test_pacemaker_simple8_an_idle_node_does_not_pull_a_sticky_service():
    """simple8: a resource with stickiness stays where it runs when another
    (idle) node comes up.  Here: transfer_cost costly (the default)."""
    lab = Lab([ServiceDef("rsc1", start_command=("r",))])
    lab.settle({"n1"}, at=1000)
    lab.reg.loads = {"n0": 0.0, "n1": 0.9}
    lab.settle({"n0", "n1"}, at=2000)
    assert lab.owners("rsc1") == ["n1"]


def test_pacemaker_group5_a_free_transfer_moves_the_whole_group_children_first():
    """group5: the group's preferred node comes back; every member moves,
    stopped in reverse order and started in order."""
    defs = [ServiceDef("rsc1", preferences=("n0",), transfer_cost=TransferCost.FREE, failback_delay_s=0,
                       start_command=("r1",)),
            ServiceDef("rsc2", parent="rsc1", start_command=("r2",)),
            ServiceDef("rsc3", parent="rsc2", start_command=("r3",))]
    lab = Lab(defs)
    lab.settle({"n1"}, at=1000)
    lab.log.clear()
    lab.settle({"n0", "n1"}, at=2000)
    assert [s for _, a, s in lab.log if a == "stop"] == ["rsc3", "rsc2", "rsc1"]
    assert [s for _, a, s in lab.log if a == "start"] == ["rsc1", "rsc2", "rsc3"]
    assert {tuple(lab.owners(n)) for n in ("rsc1", "rsc2", "rsc3")} == {("n0",)}


@pytest.mark.parametrize("threshold, expect", [(1, "n1"), (0, "n0")], ids=["rec-rsc-1", "rec-rsc-2"])
def test_pacemaker_rec_rsc_a_failure_threshold_of_1_moves_no_threshold_restarts_in_place(threshold, expect):
    """rec-rsc-1: migration-threshold 1: the failed resource moves.
    rec-rsc-2: no threshold: it is restarted where it failed."""
    lab = Lab([ServiceDef("rsc1", preferences=("n0", "n1"), start_command=("r",), failure_threshold=threshold)])
    lab.settle({"n0", "n1"}, at=1000)
    assert lab.owners("rsc1") == ["n0"]
    svc.report(lab.reg, "n0", "rsc1", Outcome(Action.FAILED, False, "exited 1"), 2000)
    lab.settle({"n0", "n1"}, at=2000)
    assert lab.owners("rsc1") == [expect]


def test_pacemaker_failed_sticky_group_a_member_failure_moves_the_whole_group():
    """failed-sticky-group: a sticky group whose member failed past its
    threshold moves as a whole; the failed node is avoided."""
    defs = [ServiceDef("grp", preferences=("n0", "n1"), start_command=("g",), failure_threshold=1),
            ServiceDef("member", parent="grp", start_command=("m",), failure_threshold=1)]
    lab = Lab(defs)
    lab.settle({"n0", "n1"}, at=1000)
    assert lab.owners("grp") == ["n0"] and lab.owners("member") == ["n0"]
    svc.report(lab.reg, "n0", "member", Outcome(Action.FAILED, False, "exited 1"), 2000)
    lab.log.clear()
    lab.settle({"n0", "n1"}, at=2000)
    assert lab.owners("grp") == ["n1"] and lab.owners("member") == ["n1"]
    assert lab.log[0] == ("n0", "stop", "grp") and lab.log[-1] == ("n1", "start", "member")


def test_a_free_service_moved_away_stays_until_the_preferred_node_joins_again():
    """`service move` leaves no constraint behind, and a free failback
    happens "when that node joins": a more preferred node that was up all
    along does not pull the service back; once it leaves and joins again,
    it does (after the damping delay)."""
    lab = Lab([ServiceDef("web", preferences=("n0", "n1"), transfer_cost=TransferCost.FREE, failback_delay_s=2,
                          start_command=("web",))])
    lab.settle({"n0", "n1", "n2"}, at=1000)
    assert lab.owners("web") == ["n0"]
    svc.command(lab.reg, "move", "web", lab.now, lab.cluster({"n0", "n1", "n2"}), to="n2")
    lab.settle({"n0", "n1", "n2"})
    for t in (10_000, 60_000, 600_000):
        lab.settle({"n0", "n1", "n2"}, at=t)
        assert lab.owners("web") == ["n2"]
    why = "\n".join(svc.why(lab.reg, "web", lab.cluster({"n0", "n1", "n2"})))
    assert "n0: more preferred, but it was already up when web was placed on n2" in why
    lab.settle({"n1", "n2"}, at=601_000)  # n0 leaves and joins again
    lab.settle({"n0", "n1", "n2"}, at=602_000)
    assert lab.owners("web") == ["n2"]  # not yet: the damping delay
    lab.settle({"n0", "n1", "n2"}, at=605_000)
    assert lab.owners("web") == ["n0"]


def test_maturity_time_counts_from_the_formation_with_real_incarnations():
    """The daemon's view carries incarnations: the formation is the first
    round in which none of the incarnations up was up before, not every
    round (the maturity time would never elapse)."""
    known = ("n1", "n2", "n3")
    incs = {"n1": 0x2A5F, "n2": 0x77, "n3": 0x41D5}
    reg = Registry()
    svc.apply(reg, {"t": ServiceDef("t", allowable_nodes=("n1", "n2"), maturity_count=2, maturity_time_s=8,
                                    start_command=("x",))}, 0)

    def at(up: set[str], now: int) -> list[str]:
        cl = Cluster(known, frozenset(up), frozenset(up), now, tuple((n, incs[n]) for n in sorted(up)))
        lines = svc.decide(reg, cl)
        svc.check(reg, known)
        return lines

    assert at({"n3"}, 1000) == [] and reg.formed_ms == 1000
    assert at({"n1", "n3"}, 2000) == [] and reg.formed_ms == 1000
    assert at({"n1", "n3"}, 8999) == []
    assert at({"n1", "n3"}, 9000) == ["t: starting on n1: its most preferred candidate"]
    assert reg.formed_ms == 1000
    incs["n3"] = 0x9999  # n3 restarted while n1 stayed: the same formation
    at({"n1"}, 9500)
    at({"n1", "n3"}, 9600)
    assert reg.formed_ms == 1000


def test_the_history_says_forced_out_not_leaving_for_a_crashed_owner():
    lab = Lab([ServiceDef("web", preferences=("n0",), start_command=("web",))])
    lab.settle({"n0", "n1"}, at=1000)
    cl = Cluster(lab.known, frozenset({"n0", "n1"}), frozenset({"n1"}), 2000, forced=frozenset({"n0"}))
    svc.decide(lab.reg, cl)
    assert lab.reg.services["web"].history[-1][1] == "stopping on n0: n0 is being forced out of the cluster"
    lab.settle({"n1"}, at=3000)  # out of the view: the entry is dropped and web starts on n1
    assert lab.owners("web") == ["n1"]


# ------------------------------------------------------------------ found by the simulator
# (tests/test_services_sim.py; each was a failing seed there)

def _with_incarnations(lab: Lab, up: set[str], incs: dict[str, int]) -> Cluster:
    cl = lab.cluster(up)
    return Cluster(cl.known, cl.present, cl.up, cl.now_ms, tuple(sorted(incs.items())))


def test_maturity_time_elapses_when_the_cluster_knows_incarnations() -> None:
    """``decide`` compared the up keys (``name@incarnation``) with the bare
    names, so every round with incarnations looked like a newly formed
    cluster: ``formed`` moved to now each time and a service waiting for
    ``maturity_time`` alone never matured."""
    lab = Lab([ServiceDef("db", maturity_time_s=3.0, start_command=("db",))])
    incs = {"n0": 0xA, "n1": 0xB, "n2": 0xC}
    assert svc.decide(lab.reg, _with_incarnations(lab, {"n0", "n1", "n2"}, incs)) == []
    formed = lab.reg.formed_ms
    lab.now = 1000
    svc.decide(lab.reg, _with_incarnations(lab, {"n0", "n1", "n2"}, incs))
    assert lab.reg.formed_ms == formed  # the same incarnations: the same formation
    lab.now = 3500
    lines = svc.decide(lab.reg, _with_incarnations(lab, {"n0", "n1", "n2"}, incs))
    assert any("starting on" in line for line in lines), lines
    lab.now = 4000  # every incarnation new: the cluster formed anew
    svc.decide(lab.reg, _with_incarnations(lab, {"n0", "n1", "n2"}, {"n0": 0xD, "n1": 0xE, "n2": 0xF}))
    assert lab.reg.formed_ms == 4000


def _group(lab_defs_extra: tuple[ServiceDef, ...] = ()) -> Lab:
    return Lab([ServiceDef("fs", preferences=("n0",), start_command=("fs",)),
                ServiceDef("db", parent="fs", start_command=("db",)),
                ServiceDef("web", parent="db", start_command=("web",)), *lab_defs_extra])


def test_a_child_that_is_gone_where_its_parent_restarts_waits_for_the_parent() -> None:
    """After a restart of every daemon the executor reports the whole group
    gone, parent first: the parent restarts in place, and the child's
    restart in place used to make it ``starting`` where its parent was not
    registered (WITH-PARENT, RuleBroken).  Now the child loses its entry
    and starts there once its parent registered."""
    lab = _group()
    lab.settle({"n0", "n1", "n2"})
    assert {n: lab.reg.services[n].owners() for n in ("fs", "db", "web")} == {"fs": ["n0"], "db": ["n0"], "web": ["n0"]}
    for name in ("fs", "db", "web"):
        svc.report(lab.reg, "n0", name, Outcome(Action.GONE, False, "not running"), lab.now)
        svc.check(lab.reg, lab.known)
    assert "n0" not in lab.reg.services["db"].nodes and "n0" not in lab.reg.services["web"].nodes
    lab.settle({"n0", "n1", "n2"})
    assert {n: lab.reg.services[n].owners() for n in ("fs", "db", "web")} == {"fs": ["n0"], "db": ["n0"], "web": ["n0"]}


def test_a_parent_that_fails_under_its_children_restarts_with_its_group() -> None:
    """The other order: the parent reported gone while a child's start is
    under way there.  The parent's restart in place left that child
    ``starting`` on top of a parent that was not registered.  Now the
    parent loses its entry, the child's start is dropped, its registered
    children stop first, and the group starts again."""
    lab = _group()
    lab.settle({"n0", "n1", "n2"})
    lab.reg.services["web"].nodes["n0"] = svc.Entry(SvcState.STARTING, lab.now)  # web's start under way
    svc.report(lab.reg, "n0", "db", Outcome(Action.GONE, False, "not running"), lab.now)
    svc.check(lab.reg, lab.known)
    assert "n0" not in lab.reg.services["db"].nodes and "n0" not in lab.reg.services["web"].nodes
    lab.settle({"n0", "n1", "n2"})
    assert {n: lab.reg.services[n].owners() for n in ("fs", "db", "web")} == {"fs": ["n0"], "db": ["n0"], "web": ["n0"]}


def test_a_restarted_daemon_does_not_act_for_its_old_incarnation() -> None:
    """A restarted daemon adopts views that still show its node's previous
    incarnation (forced leaving, not yet past the services level).  It took
    that member for itself and ran the old incarnation's starts, while the
    other nodes were about to start the same services elsewhere."""
    from clusterfw.core.model import MemberEntry, NodeState, ViewRecord
    names = {1: "n1", 2: "n2"}
    old = MemberEntry(2, 0xA, NodeState.FORCED_LEAVING, cursor=20, ready=True)
    view = ViewRecord(node_id=1, incarnation=0x1, seq=5, term=1, epoch=4,
                      members=(MemberEntry(1, 0x1, NodeState.JOINED), old))
    assert "n2" in svc.cluster_from_view(view, names, (), 0).present  # as the other nodes see it
    assert "n2" in svc.cluster_from_view(view, names, (), 0, ("n2", 0xA)).present
    mine = svc.cluster_from_view(view, names, (), 0, ("n2", 0xB))  # the new incarnation asks
    assert "n2" not in mine.present and "n2" not in mine.up and "n1" in mine.up


def test_a_restarted_node_s_entries_are_dropped_like_a_forced_out_one_s() -> None:
    """The whole cluster went down and came back: no forced leave was ever
    notified, and the registry still placed services on a node that is
    back with a new incarnation.  Its old services died with the old
    incarnation, so the entries go (a recovery runs, as for a forced-out
    node) and the choosing places the services again."""
    lab = Lab([ServiceDef("db", preferences=("n1",), start_command=("db",), recovery_command=("rec",))])
    up = {"n0", "n1", "n2"}
    incs = {"n0": 0xA, "n1": 0xB, "n2": 0xC}
    svc.decide(lab.reg, _with_incarnations(lab, up, incs))
    svc.report(lab.reg, "n1", "db", Outcome(Action.START, True), lab.now)
    assert lab.reg.services["db"].owners() == ["n1"]
    assert svc.decide(lab.reg, _with_incarnations(lab, up, incs)) == []  # the same incarnations: nothing
    lines = svc.decide(lab.reg, _with_incarnations(lab, up, {**incs, "n1": 0xD}))
    assert any("n1 restarted" in line for line in lines), lines
    assert lab.reg.services["db"].nodes["n1"].state is SvcState.RECOVERING
    assert lab.reg.incarnations["n1"] == 0xD
    assert svc.Registry.from_json(lab.reg.to_json()).incarnations == lab.reg.incarnations
