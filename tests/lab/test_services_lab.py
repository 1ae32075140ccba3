"""Services in a real lab: three nspawn nodes, each with its own systemd
running clusterfw.service (the systemd launcher: every service is a
transient unit ``clusterfw-svc-NAME.service``), as a new user would walk
through it: a ten-line TOML file puts a service on its preferred node;
``lab crash`` of that node brings it up on the next one; the preferred node
back, a free service moves back; ``service why`` explains each step.  Then
the owner's disk is cut, and then only its daemon is killed with SIGKILL:
each time the service is dead on the old owner before the survivor starts
it.

The service is the lab's probe (clusterfw/lab/probe.py): each copy records
when it lived, from inside its node, so "never two copies at once" is
checked on real processes over the whole module, and failover times are
measured from a crash to the new copy's first breath.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from clusterfw.lab import probe
from clusterfw.lab.lab import Lab
from test_lab_cluster import NODES, heal, running_cluster, systemctl, wait_for, wait_healthy

pytestmark = pytest.mark.lab
WEB = "web"
UNIT = f"clusterfw-svc-{WEB}.service"


@pytest.fixture(scope="module")
def cluster(lun_root, lab_need):
    lab_need("nspawn")
    with running_cluster(lun_root, "services-lab") as lab:
        yield lab


@pytest.fixture(scope="module")
def shared(cluster: Lab):
    return cluster.dir / "shared"


def readme_toml() -> str:
    """The service file the README's walk-through shows (its toml block)."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("### Make a service highly available", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    assert f"[services.{WEB}]" in block and "http.server" in block, block
    return block


def svc(lab: Lab, node: str, *args: str) -> str:
    cp = lab.exec(node, ["clusterfw", "service", *args], timeout=60)
    assert cp.returncode == 0, f"service {' '.join(args)} on {node}: {cp.stderr}{cp.stdout}"
    return cp.stdout


def listed(lab: Lab, via: str = "n1") -> dict:
    cp = lab.exec(via, ["clusterfw", "service", "list", "--json"], timeout=15)
    if cp.returncode != 0:
        return {}
    return {s["name"]: s for s in json.loads(cp.stdout)["services"]}


def on(lab: Lab, owner: str, via: str) -> bool:
    s = listed(lab, via).get(WEB)
    return bool(s) and s["state"] == "registered" and s["owners"] == [owner]


def new_copy(shared, node: str, since: float, timeout: float = 20) -> probe.Life:
    life = wait_for(lambda: probe.started_after(shared, WEB, since, node), timeout, 0.02)
    assert life, f"no new copy of {WEB} on {node} within {timeout} s: {probe.lives(shared, WEB)}"
    return life


def test_walk_through_toml_crash_failback_why(cluster: Lab, shared) -> None:
    path = probe.install(shared)
    (shared / "web.toml").write_text(readme_toml().replace(
        'start_command = ["python3", "-m", "http.server", "8080"]', f'start_command = ["python3", "{path}"]'))
    t0 = time.time()
    out = svc(cluster, "n1", "apply", "/lab/shared/web.toml")
    assert f"{WEB}: defined" in out
    first = new_copy(shared, "n2", t0)
    assert wait_for(lambda: on(cluster, "n2", "n1"), 15), listed(cluster)
    assert systemctl(cluster, "n2", "is-active", UNIT).stdout.strip() == "active"
    print(f"apply -> running on n2: {first.start - t0:.2f} s")

    crash_at = time.time()
    cluster.crash("n2")
    moved = new_copy(shared, "n3", crash_at)
    assert wait_for(lambda: on(cluster, "n3", "n1"), 15), listed(cluster)
    assert probe.overlaps(probe.lives(shared, WEB)) == []
    print(f"lab crash n2 -> running on n3: {moved.start - crash_at:.2f} s")
    assert moved.start - crash_at < 5

    back_at = time.time()
    cluster.restart("n2")
    wait_healthy(cluster, 90)
    back = new_copy(shared, "n2", back_at, timeout=60)
    assert wait_for(lambda: on(cluster, "n2", "n3"), 15), listed(cluster, "n3")
    assert probe.overlaps(probe.lives(shared, WEB)) == []
    print(f"n2 restarted -> back on n2: {back.start - back_at:.2f} s")

    why = svc(cluster, "n1", "why", WEB)
    print(why)
    assert f"{WEB} is registered on n2" in why
    for step in ("starting on n2: its most preferred candidate",
                 "starting on n3",
                 "stopping on n3: transfer_cost is free and n2 is more preferred",
                 "registered on n2"):
        assert step in why, (step, why)


def owner_dies_first(cluster: Lab, shared, fault: str) -> None:
    wait_healthy(cluster, 60)
    assert wait_for(lambda: on(cluster, "n2", "n1"), 30), listed(cluster)
    [old] = [x for x in probe.lives(shared, WEB) if x.node == "n2" and x.last > time.time() - 1]
    at = time.time()
    if fault == "cut-disk":
        cluster.cut_disk("n2", "eio")
    else:
        assert systemctl(cluster, "n2", "kill", "--signal=SIGKILL", "clusterfw").returncode == 0
    try:
        moved = new_copy(shared, "n3", at)
        dead = next(x for x in probe.lives(shared, WEB) if x.pid == old.pid and x.node == "n2")
        assert dead.last < moved.start, f"{fault}: the old copy lived until {dead.last}, the new started {moved.start}"
        assert probe.overlaps(probe.lives(shared, WEB)) == []
        print(f"{fault} of n2: old copy's last sign of life {dead.last - at:+.2f} s, "
              f"new copy on n3 at {moved.start - at:+.2f} s")
    finally:
        if fault == "cut-disk":
            cluster.restore_disk("n2")
        heal(cluster)
    # n2 comes back (systemd restarts its daemon) and the free service follows.
    assert wait_for(lambda: on(cluster, "n2", "n1"), 60), listed(cluster)


def test_cut_disk_of_the_owner_kills_the_service_before_the_survivor_starts_it(cluster: Lab, shared) -> None:
    owner_dies_first(cluster, shared, "cut-disk")


def test_sigkill_of_the_owners_daemon_kills_the_service_before_the_survivor_starts_it(cluster: Lab, shared) -> None:
    owner_dies_first(cluster, shared, "daemon-sigkill")


def test_never_two_copies_at_once_over_the_whole_module(cluster: Lab, shared) -> None:
    found = probe.lives(shared, WEB)
    assert len({x.pid for x in found}) >= 5, found  # the walk-through and both faults ran
    assert probe.overlaps(found) == []
    assert sorted(NODES) == ["n1", "n2", "n3"]
