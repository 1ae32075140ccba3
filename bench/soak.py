#!/usr/bin/env python3
"""Soak: a lab cluster left alone under a CPU hog and an I/O hog on the same
machine; nothing should ever be forced out.

    sudo python bench/soak.py [--minutes 30] [--nodes 3] [--json]

Every 0.5 s it asks a node for `clusterfw status --json` and records the
largest heartbeat age it reports for any node (how late a heartbeat was seen
by the master's reader); at the end it counts forced-out decisions and fences
in every node's journal.  Pass: zero forced-outs, zero fences, every node
joined in every sample, status answered.  Prints JSON and a table; never a
timed assertion in the test suite.

Where things live, and why: the lab's shared disk is a file on the host, and
a cluster's LUN is a device of its own.  By default the lab (with its disk
image) is put on a tmpfs and the I/O hog writes to the host's local disk
(/var/tmp), as a real host's local I/O does not go through the SAN.  With
both on one ext4 filesystem, the hog's 256 MiB fsyncs hold up the image's
fdatasync (one journal) for more than the 400 ms a lab node may go without
a completed heartbeat write, and every node fences: a real disk stall, which
the nodes are right to fence for, not a false forced-out.  To see that:
--lab-parent /tmp --scratch /tmp.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clusterfw.lab.lab import Lab  # noqa: E402


def start_hogs(scratch: Path) -> list[subprocess.Popen]:
    hogs = []
    cpus = os.cpu_count() or 2
    for _ in range(cpus):  # one busy loop per core
        hogs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True))
    io_script = (
        "import os, sys, time\n"
        "path = sys.argv[1]; block = os.urandom(1 << 20)\n"
        "while True:\n"
        "    with open(path, 'wb') as f:\n"
        "        for _ in range(256):\n"
        "            f.write(block)\n"
        "        f.flush(); os.fsync(f.fileno())\n"
        "    os.unlink(path)\n")
    hogs.append(subprocess.Popen([sys.executable, "-c", io_script, str(scratch / "hog.bin")],
                                 start_new_session=True))
    return hogs


def stop_hogs(hogs: list[subprocess.Popen]) -> None:
    for p in hogs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--lab-parent", default="/dev/shm",
                    help="where the lab (and its shared disk image) lives; default a tmpfs, see below")
    ap.add_argument("--scratch", default="/var/tmp",
                    help="where the I/O hog writes: the host's local disk")
    args = ap.parse_args()
    names = [f"n{k}" for k in range(1, args.nodes + 1)]
    report: dict = {"minutes": args.minutes, "nodes": args.nodes}
    with tempfile.TemporaryDirectory(prefix="clusterfw-soak-", dir=args.lab_parent) as d, \
            tempfile.TemporaryDirectory(prefix="clusterfw-soak-hog-", dir=args.scratch) as scratch:
        lab = Lab(Path(d) / "lab")
        hogs: list[subprocess.Popen] = []
        try:
            lab.up(args.nodes, "nspawn", disk_size=64 << 20)
            time.sleep(3)
            hogs = start_hogs(Path(scratch))
            worst: dict[str, int] = {n: 0 for n in names}
            samples = failures = 0
            not_joined = 0
            end = time.monotonic() + args.minutes * 60
            last_print = time.monotonic()
            while time.monotonic() < end:
                via = names[samples % len(names)]
                cp = lab.exec(via, ["clusterfw", "status", "--json"], timeout=20)
                samples += 1
                try:
                    st = json.loads(cp.stdout)
                except json.JSONDecodeError:
                    failures += 1
                    st = {"nodes": []}
                for n in st["nodes"]:
                    worst[n["name"]] = max(worst[n["name"]], int(n.get("heartbeat_age_ms") or 0))
                    if n["state"] != "joined":
                        not_joined += 1
                if not args.json and time.monotonic() - last_print > 60:
                    last_print = time.monotonic()
                    left = (end - time.monotonic()) / 60
                    print(f"soak: {left:.0f} min left, worst heartbeat age so far "
                          f"{max(worst.values())} ms, status failures {failures}/{samples}, "
                          f"not-joined samples {not_joined}", file=sys.stderr)
                time.sleep(0.5)
            stop_hogs(hogs)
            forced = fences = 0
            for n in names:
                text = lab.exec(n, ["journalctl", "-u", "clusterfw", "--no-pager", "-o", "cat"],
                                timeout=60).stdout
                lines = text.splitlines()
                forced += sum(1 for l in lines if "forced out" in l)
                fences += sum(1 for l in lines if "fencing" in l.lower() or "fenced" in l.lower())
            report.update({"samples": samples, "status_failures": failures,
                           "worst_heartbeat_age_ms": worst, "not_joined_samples": not_joined,
                           "forced_out_decisions": forced, "fence_lines": fences,
                           "pass": forced == 0 and not_joined == 0 and fences == 0
                           and failures <= samples // 100})
        finally:
            stop_hogs(hogs)
            lab.down(timeout=10, purge=True)
    print(json.dumps(report, indent=2))
    if not args.json:
        print(f"\nsoak {args.minutes} min, {args.nodes} nodes under CPU+I/O hogs: "
              f"forced-outs {report['forced_out_decisions']}, worst heartbeat age "
              f"{max(report['worst_heartbeat_age_ms'].values())} ms -> {'PASS' if report['pass'] else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
