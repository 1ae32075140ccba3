#!/usr/bin/env python3
"""Services on a real lab cluster: nspawn nodes with their own systemd
running clusterfw.service (the systemd launcher: each service is a
transient unit), one shared loop-backed disk, the lab profile (heartbeat
100 ms, io_timeout 200 ms, dead_after 1017 ms).

    sudo python bench/services.py [--repeat 10] [--nodes 5] [--services 200] [--json]

  crash    SIGKILL of the node that runs service "probe" -> the probe's new
           copy on another node takes its first breath (the probe records
           that time itself, clusterfw/lab/probe.py)
  move     'clusterfw service move probe --to NODE' -> the new copy's first
           breath on NODE; also from the moment the registry recorded the
           move (the command's own start-up left out)
  mass     N services spread over the nodes by their preferences; SIGKILL
           of one node -> every service registered again ('service list')
  idle     per node, over 10 s with the N services defined: CPU % and
           memory of clusterfw.service and of clusterfw-events.service

Targets: crash median <= 1.5 s, move <= 150 ms.  Prints JSON and a table;
asserts nothing.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clusterfw.lab import probe  # noqa: E402
from clusterfw.lab.lab import Lab  # noqa: E402

from labutil import arguments, summary, wait_healthy  # noqa: E402

TARGETS = {"crash": 1.5, "move": 0.150}


def listing(lab: Lab, via: str) -> dict:
    cp = lab.exec(via, ["clusterfw", "service", "list", "--json"], timeout=30)
    return {s["name"]: s for s in json.loads(cp.stdout)["services"]} if cp.returncode == 0 else {}


def owner(lab: Lab, names: list[str], service: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for via in names:
            s = listing(lab, via).get(service)
            if s and s["state"] == "registered" and len(s["owners"]) == 1:
                return str(s["owners"][0])
        time.sleep(0.2)
    raise SystemExit(f"{service} is not registered within {timeout} s")


def first_breath(shared: Path, service: str, since: float, node: str | None = None, timeout: float = 30) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        life = probe.started_after(shared, service, since, node)
        if life is not None:
            return life.start
        time.sleep(0.01)
    raise SystemExit(f"no new copy of {service} within {timeout} s")


def apply(lab: Lab, shared: Path, name: str, text: str) -> None:
    (shared / f"{name}.toml").write_text(text)
    cp = lab.exec("n1", ["clusterfw", "service", "apply", f"/lab/shared/{name}.toml"], timeout=120)
    if cp.returncode != 0:
        raise SystemExit(f"apply {name}: {cp.stderr}")


def crash_once(lab: Lab, names: list[str], shared: Path) -> float:
    wait_healthy(lab, names)
    victim = owner(lab, names, "probe")
    t0 = time.time()
    lab.crash(victim)
    t1 = first_breath(shared, "probe", t0)
    lab.restart(victim)
    wait_healthy(lab, names)
    return t1 - t0


def asked_at(lab: Lab, via: str, service: str, text: str, since: float) -> float:
    """When the registry recorded ``text`` for ``service`` (its history, ms)."""
    cp = lab.exec(via, ["clusterfw", "service", "why", service, "--json"], timeout=30)
    history = json.loads(cp.stdout).get("history", [])  # [[ms since the epoch, what], ...]
    times = [t / 1000 for t, line in history if text in line and t / 1000 >= since - 1]
    if not times:
        raise SystemExit(f"no {text!r} in the history of {service}: {history[-5:]}")
    return times[-1]


MOVE_FROM_DAEMON: list[float] = []


def move_once(lab: Lab, names: list[str], shared: Path) -> float:
    now = owner(lab, names, "probe")
    to = names[(names.index(now) + 1) % len(names)]
    t0 = time.time()
    cp = lab.exec(now, ["clusterfw", "service", "move", "probe", "--to", to], timeout=30)
    if cp.returncode != 0:
        raise SystemExit(f"move: {cp.stderr}")
    t1 = first_breath(shared, "probe", t0, to)
    owner(lab, names, "probe")
    MOVE_FROM_DAEMON.append(t1 - asked_at(lab, now, "probe", f"move to {to} asked", t0))
    return t1 - t0


def mass(lab: Lab, names: list[str], shared: Path, count: int) -> dict:
    lines = []
    for i in range(count):
        lines += [f"[services.m{i:03d}]", f'preferences = ["{names[i % len(names)]}"]',
                  'start_command = ["sleep", "infinity"]', ""]
    t0 = time.monotonic()
    apply(lab, shared, "mass", "\n".join(lines))

    def all_registered(via: str, gone: str = "") -> bool:
        got = listing(lab, via)
        return sum(1 for n, s in got.items() if n.startswith("m") and s["state"] == "registered"
                   and gone not in s["owners"]) == count
    while not all_registered("n1"):
        time.sleep(0.2)
    placed_s = time.monotonic() - t0
    wait_healthy(lab, names)
    victim = names[-1]
    via = names[0]
    t0 = time.monotonic()
    lab.crash(victim)
    while not all_registered(via, gone=victim):  # registered again, none on the crashed node
        time.sleep(0.1)
    recovered_s = time.monotonic() - t0
    lab.restart(victim)
    wait_healthy(lab, names)
    return {"services": count, "nodes": len(names), "apply_to_all_registered_s": round(placed_s, 2),
            "crash_to_all_registered_s": round(recovered_s, 2), "moved": count // len(names)}


def idle(lab: Lab, names: list[str], seconds: float = 10) -> dict:
    """CPU % (utime + stime of the main process) and resident memory of
    clusterfw.service and clusterfw-events.service on every node."""
    def sample() -> dict:
        out = {}
        for n in names:
            row = {}
            for unit in ("clusterfw", "clusterfw-events"):
                pid = lab.exec(n, ["systemctl", "show", "-p", "MainPID", "--value", unit], timeout=10).stdout.strip()
                stat = lab.exec(n, ["cat", f"/proc/{pid}/stat", f"/proc/{pid}/status"], timeout=10).stdout
                fields = stat.split(")", 1)[1].split()
                rss = next((int(line.split()[1]) for line in stat.splitlines() if line.startswith("VmRSS:")), 0)
                row[unit] = (int(fields[11]) + int(fields[12]), rss)
            out[n] = (row, time.monotonic())
        return out
    a = sample()
    time.sleep(seconds)
    b = sample()
    hz = 100  # USER_HZ
    report = {}
    for n in names:
        (ra, ta), (rb, tb) = a[n], b[n]
        report[n] = {unit: {"cpu_percent": round(100 * (rb[unit][0] - ra[unit][0]) / hz / (tb - ta), 2),
                            "memory_mib": round(rb[unit][1] / 1024, 1)} for unit in ra}
    return report


def main() -> int:
    ap = arguments(__doc__, 5)
    ap.add_argument("--services", type=int, default=200, help="services for the mass case (default 200; 0: skip it)")
    args = ap.parse_args()
    names = [f"n{k}" for k in range(1, args.nodes + 1)]
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="clusterfw-bench-", dir="/dev/shm") as d:
        lab = Lab(Path(d) / "lab")
        try:
            lab.up(args.nodes, "nspawn", disk_size=64 << 20)
            wait_healthy(lab, names)
            shared = lab.dir / "shared"
            path = probe.install(shared)
            apply(lab, shared, "probe", f'[services.probe]\nstart_command = ["python3", "{path}"]\n')
            owner(lab, names, "probe")
            for name, fn in (("crash", crash_once), ("move", move_once)):
                runs = []
                for i in range(args.repeat):
                    runs.append(fn(lab, names, shared))
                    if not args.json:
                        print(f"  {name} {i + 1}/{args.repeat}: {runs[-1]:.3f} s", file=sys.stderr)
                report[name] = summary(runs)
            report["move_from_the_daemon"] = summary(MOVE_FROM_DAEMON)
            report["never_two_copies"] = probe.overlaps(probe.lives(shared, "probe")) == []
            if args.services:
                report["mass"] = mass(lab, names, shared, args.services)
                print(f"  mass: {report['mass']}", file=sys.stderr)
            report["idle"] = idle(lab, names)
        finally:
            lab.down(timeout=10, purge=True)
    report["targets_s"] = TARGETS
    print(json.dumps(report, indent=2))
    if not args.json:
        print(f"\n{'benchmark':<22}{'median':>9}{'min':>9}{'max':>9}   target")
        for name, target in (("crash", "crash"), ("move", "move"), ("move_from_the_daemon", "move")):
            r = report[name]
            print(f"{name:<22}{r['median_s']:>8.3f}s{r['min_s']:>8.3f}s{r['max_s']:>8.3f}s   "
                  f"{TARGETS[target]} s {'ok' if r['median_s'] <= TARGETS[target] else 'MISSED'}")
        if "mass" in report:
            m = report["mass"]
            print(f"\n{m['services']} services on {m['nodes']} nodes: all registered {m['apply_to_all_registered_s']}"
                  f" s after apply; {m['crash_to_all_registered_s']} s after a node crash ({m['moved']} moved)")
        print(f"\n{'node':<6}{'daemon CPU %':>13}{'daemon MiB':>11}{'events CPU %':>13}{'events MiB':>11}")
        for n, v in report["idle"].items():
            dm, ev = v["clusterfw"], v["clusterfw-events"]
            print(f"{n:<6}{dm['cpu_percent']:>13}{dm['memory_mib']:>11}{ev['cpu_percent']:>13}{ev['memory_mib']:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
