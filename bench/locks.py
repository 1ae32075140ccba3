#!/usr/bin/env python3
"""Cluster locks on a real lab cluster: nspawn nodes, each with its own
systemd running clusterfw.service (the DLM at level 10) on one shared
loop-backed disk (lab profile: heartbeat 100 ms, io_timeout 200 ms).

    sudo python bench/locks.py [--iterations 200] [--seconds 10] [--repeat 5] [--json]

  uncontended   one client on n1: acquire + release of a free lock over the
                daemon socket (lock -> granted -> unlock -> released, i.e.
                until the FREE write is on the disk); median, p99, min, max
  acquire       the acquire alone (lock -> granted)
  contended     one client per node on one lock for --seconds: grants per
                second, cluster-wide and per node
  crash         a holder's node is SIGKILLed while a waiter on another node
                waits: time from the crash to the waiter's grant (never
                before the dead timeout, ~1 s in the lab profile)
  cli           `clusterfw lock NAME -- true` end to end (process start-up
                included), median

Target (the DLM issue): uncontended median <= 10 ms on the lab disk.
Prints JSON and a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clusterfw.lab.lab import Lab  # noqa: E402

from labutil import status, wait_healthy  # noqa: E402,F401

# Runs inside a node with the node's own Python (clusterfw importable).
CLIENT = r'''
import json, sys, time
from clusterfw.client import Connection

def wait(conn, ops, ident):
    while True:
        m = conn.receive()
        if m is None:
            raise SystemExit("daemon closed the connection")
        if m.get("ok") is False:
            raise SystemExit(f"refused: {m.get('error')}")
        if m.get("op") in ops and m.get("id") == ident:
            return m
        if m.get("op") == "denied":
            raise SystemExit(f"denied: {m.get('reason')}")

def cycle(conn, name, ident):
    t0 = time.perf_counter()
    conn.send({"op": "lock", "id": ident, "name": name})
    wait(conn, ("granted",), ident)
    t1 = time.perf_counter()
    conn.send({"op": "unlock", "id": ident})
    wait(conn, ("released",), ident)
    return t1 - t0, time.perf_counter() - t0

mode, name = sys.argv[1], sys.argv[2]
conn = Connection()
conn.settimeout(60)
if mode == "uncontended":
    n = int(sys.argv[3])
    for i in range(5):
        cycle(conn, name, i + 1)  # warm-up
    out = [cycle(conn, name, 100 + i) for i in range(n)]
    print(json.dumps({"acquire": [a for a, _ in out], "cycle": [c for _, c in out]}))
elif mode == "contended":
    begin, until = float(sys.argv[3]), float(sys.argv[4])
    while time.time() < begin:
        time.sleep(0.005)
    start, count, ident = time.time(), 0, 1
    while time.time() < until:
        cycle(conn, name, ident)
        ident += 1
        count += 1
    print(json.dumps({"count": count, "seconds": time.time() - start}))
elif mode == "hold":
    conn.send({"op": "lock", "id": 1, "name": name})
    wait(conn, ("granted",), 1)
    open(sys.argv[3], "w").write("held\n")
    time.sleep(3600)
elif mode == "wait":
    conn.send({"op": "lock", "id": 1, "name": name})
    conn.settimeout(120)
    m = conn.receive()
    open(sys.argv[3], "w").write("waiting\n")
    wait(conn, ("granted",), 1)
    print(json.dumps({"granted_at": time.time()}))
'''
PY = "/opt/clusterfw/bin/python3"


def client(lab: Lab, node: str, *args: str, timeout: float = 600) -> dict:
    cp = lab.exec(node, [PY, "/lab/shared/lockbench.py", *args], timeout=timeout)
    if cp.returncode != 0:
        raise SystemExit(f"lock client on {node} failed: {cp.stderr.strip()[-500:]}")
    return json.loads(cp.stdout)


def ms_summary(values: list[float]) -> dict:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"median_ms": round(statistics.median(values) * 1000, 2), "p99_ms": round(p99 * 1000, 2),
            "min_ms": round(ordered[0] * 1000, 2), "max_ms": round(ordered[-1] * 1000, 2), "n": len(values)}


def contended(lab: Lab, names: list[str], seconds: float) -> dict:
    begin = time.time() + 10  # every client starts at the same wall-clock time
    until = begin + seconds
    results: dict[str, dict] = {}

    def run(node: str) -> None:
        results[node] = client(lab, node, "contended", "hot", str(begin), str(until))

    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(r["count"] for r in results.values())
    return {"grants_per_s": round(total / seconds, 1), "per_node": {n: r["count"] for n, r in results.items()},
            "seconds": seconds}


def crash_once(lab: Lab, names: list[str], shared: Path, i: int) -> float:
    st = wait_healthy(lab, names, level="dlm")
    holder = next(n["name"] for n in st["nodes"] if not n["master"])
    waiter = next(n for n in names if n != holder)
    held, waiting = shared / f"held-{i}", shared / f"waiting-{i}"
    name = f"crash-{i}"
    hold_thread = threading.Thread(target=lambda: lab.exec(holder, [PY, "/lab/shared/lockbench.py", "hold", name,
                                                                  f"/lab/shared/{held.name}"], timeout=600),
                                   daemon=True)
    hold_thread.start()
    deadline = time.monotonic() + 30
    while not held.exists():
        if time.monotonic() > deadline:
            raise SystemExit("the holder did not get the lock")
        time.sleep(0.05)
    got: dict = {}

    def wait_run() -> None:
        got.update(client(lab, waiter, "wait", name, f"/lab/shared/{waiting.name}", timeout=120))

    wait_thread = threading.Thread(target=wait_run)
    wait_thread.start()
    while not waiting.exists():
        time.sleep(0.05)
    time.sleep(0.3)
    t0 = time.time()
    lab.crash(holder)
    wait_thread.join(120)
    took = got["granted_at"] - t0
    lab.restart(holder)
    hold_thread.join(30)
    wait_healthy(lab, names, level="dlm")
    return took


def cli_cycle(lab: Lab, node: str, n: int) -> dict:
    script = ("import subprocess, time, json\nout = []\n"
              f"for i in range({n}):\n"
              "    t = time.perf_counter()\n"
              "    subprocess.run(['clusterfw', 'lock', 'cli', '--', 'true'], check=True)\n"
              "    out.append(time.perf_counter() - t)\n"
              "print(json.dumps(out))\n")
    cp = lab.exec(node, [PY, "-c", script], timeout=600)
    if cp.returncode != 0:
        raise SystemExit(f"clusterfw lock failed on {node}: {cp.stderr[-500:]}")
    return ms_summary(json.loads(cp.stdout))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=200, help="uncontended cycles")
    ap.add_argument("--seconds", type=float, default=10, help="length of the contended run")
    ap.add_argument("--repeat", type=int, default=5, help="holder crashes")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print only JSON")
    args = ap.parse_args()
    names = [f"n{k}" for k in range(1, args.nodes + 1)]
    say = (lambda text: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    with tempfile.TemporaryDirectory(prefix="clusterfw-bench-") as d:
        lab = Lab(Path(d) / "lab")
        try:
            lab.up(args.nodes, "nspawn", disk_size=64 << 20)
            shared = lab.dir / "shared"
            (shared / "lockbench.py").write_text(CLIENT)
            wait_healthy(lab, names, level="dlm")
            say("uncontended ...")
            raw = client(lab, "n1", "uncontended", "solo", str(args.iterations))
            report: dict = {"uncontended": ms_summary(raw["cycle"]), "acquire": ms_summary(raw["acquire"])}
            say("contended ...")
            report["contended"] = contended(lab, names, args.seconds)
            say("clusterfw lock CLI ...")
            report["cli"] = cli_cycle(lab, "n1", 30)
            runs = []
            for i in range(args.repeat):
                runs.append(crash_once(lab, names, shared, i))
                say(f"  holder crash {i + 1}/{args.repeat}: waiter granted after {runs[-1]:.3f} s")
            report["crash"] = {"median_s": round(statistics.median(runs), 3), "min_s": round(min(runs), 3),
                               "max_s": round(max(runs), 3), "runs": [round(r, 3) for r in runs]}
        finally:
            lab.down(timeout=10, purge=True)
    report["target_uncontended_median_ms"] = 10.0
    print(json.dumps(report, indent=2))
    if not args.json:
        u, a, c = report["uncontended"], report["acquire"], report["cli"]
        print(f"\n{'benchmark':<34}{'median':>10}{'p99':>10}{'min':>10}{'max':>10}")
        for label, r in (("uncontended acquire+release", u), ("acquire only", a),
                         ("clusterfw lock -- true (CLI)", c)):
            print(f"{label:<34}{r['median_ms']:>8.2f}ms{r['p99_ms']:>8.2f}ms{r['min_ms']:>8.2f}ms{r['max_ms']:>8.2f}ms")
        k = report["crash"]
        print(f"{'holder crash -> waiter granted':<34}{k['median_s'] * 1000:>8.0f}ms{'':>10}"
              f"{k['min_s'] * 1000:>8.0f}ms{k['max_s'] * 1000:>8.0f}ms")
        cont = report["contended"]
        print(f"\ncontended, {len(names)} nodes: {cont['grants_per_s']} grants/s "
              f"({', '.join(f'{n}: {v}' for n, v in cont['per_node'].items())} in {cont['seconds']:.0f} s)")
        print(f"target: uncontended median <= 10 ms -> {'ok' if u['median_ms'] <= 10 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
