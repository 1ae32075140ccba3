#!/usr/bin/env python3
"""Failover on a real lab cluster: nspawn nodes with their own systemd
running clusterfw.service on one shared loop-backed disk (lab profile:
heartbeat 100 ms, io_timeout 200 ms, dead_after 1017 ms).

    sudo python bench/failover.py [--repeat 10] [--nodes 3] [--json]

  member-crash  SIGKILL a whole member node -> the master's journal says it
                forced the node out (journal timestamp - crash time)
  master-crash  SIGKILL the master node -> a new master's journal says it
                forced the old master out
  idle          per node: disk I/Os per second (counted by the node's disk
                view) and daemon CPU % over 10 s of an idle joined cluster

Target: a crashed node forced out in a median
<= 2 s.  Prints JSON and a table; asserts nothing.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clusterfw.lab.lab import Lab  # noqa: E402

from labutil import arguments, status, summary, wait_healthy  # noqa: E402,F401


def forced_out_at(lab: Lab, watchers: list[str], victim: str, since: float, timeout: float = 30) -> float:
    """Realtime (s) of the first '[master] VICTIM forced out' journal entry."""
    deadline = time.monotonic() + timeout
    needle = f"[master] {victim} forced out"
    while time.monotonic() < deadline:
        for node in watchers:
            cp = lab.exec(node, ["journalctl", "-u", "clusterfw", "-o", "json", "--no-pager",
                                 f"--since=@{since - 1:.6f}"], timeout=15)
            for line in cp.stdout.splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                msg = entry.get("MESSAGE")
                if isinstance(msg, str) and msg.startswith(needle):
                    t = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
                    if t >= since:
                        return t
        time.sleep(0.2)
    raise SystemExit(f"{victim} was not forced out within {timeout}s")


def crash_once(lab: Lab, names: list[str], master: bool) -> float:
    st = wait_healthy(lab, names)
    victim = st["master"] if master else next(n["name"] for n in st["nodes"] if not n["master"])
    watchers = [n for n in names if n != victim]
    t0 = time.time()
    lab.crash(victim)
    t1 = forced_out_at(lab, watchers, victim, t0)
    lab.restart(victim)
    wait_healthy(lab, names)
    return t1 - t0


def idle_load(lab: Lab, names: list[str], seconds: float = 10) -> dict:
    wait_healthy(lab, names)

    def sample() -> dict:
        out = {}
        for n in names:
            rec = lab.state["nodes"][n]
            ctl = json.loads(lab._disk_control(rec, "status"))
            pid = lab.exec(n, ["systemctl", "show", "-p", "MainPID", "--value", "clusterfw"],
                           timeout=10).stdout.strip()
            stat = lab.exec(n, ["cat", f"/proc/{pid}/stat"], timeout=10).stdout.split()
            ticks = int(stat[13]) + int(stat[14])
            out[n] = (ctl["reads"] + ctl["writes"], ticks, time.monotonic())
        return out
    a = sample()
    time.sleep(seconds)
    b = sample()
    hz = 100  # USER_HZ
    return {n: {"ios_per_s": round((b[n][0] - a[n][0]) / (b[n][2] - a[n][2]), 1),
                "cpu_percent": round(100 * (b[n][1] - a[n][1]) / hz / (b[n][2] - a[n][2]), 2)}
            for n in names}


def main() -> int:
    ap = arguments(__doc__, 3)
    args = ap.parse_args()
    names = [f"n{k}" for k in range(1, args.nodes + 1)]
    with tempfile.TemporaryDirectory(prefix="clusterfw-bench-") as d:
        lab = Lab(Path(d) / "lab")
        try:
            lab.up(args.nodes, "nspawn", disk_size=64 << 20)
            report = {"idle": idle_load(lab, names)}
            for name, master in (("member-crash", False), ("master-crash", True)):
                runs = []
                for i in range(args.repeat):
                    runs.append(crash_once(lab, names, master))
                    if not args.json:
                        print(f"  {name} {i + 1}/{args.repeat}: {runs[-1]:.3f} s", file=sys.stderr)
                report[name] = summary(runs)
        finally:
            lab.down(timeout=10, purge=True)
    report["target_median_s"] = 2.0
    print(json.dumps(report, indent=2))
    if not args.json:
        print(f"\n{'benchmark':<14}{'median':>9}{'min':>9}{'max':>9}   target 2.0 s")
        for name in ("member-crash", "master-crash"):
            r = report[name]
            print(f"{name:<14}{r['median_s']:>8.3f}s{r['min_s']:>8.3f}s{r['max_s']:>8.3f}s   "
                  f"{'ok' if r['median_s'] <= 2.0 else 'MISSED'}")
        print(f"\n{'node':<6}{'disk I/Os/s':>12}{'daemon CPU %':>14}")
        for n, v in report["idle"].items():
            print(f"{n:<6}{v['ios_per_s']:>12}{v['cpu_percent']:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
