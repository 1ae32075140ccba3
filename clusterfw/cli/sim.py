"""``clusterfw sim``: the deterministic simulator from the command line.

    clusterfw sim --seeds 300 --nodes 7            many seeds, every fault
    clusterfw sim --seed 1234 --nodes 7 --trace    replay one seed, full trace
    clusterfw sim --seeds 50 --faults crash,pause  only some faults
    clusterfw sim --seeds 300 --nodes 4 --dlm      also run the DLM with lock clients
    clusterfw sim --seeds 200 --nodes 4 --services also run the registration & launch service (and the DLM)

Exits 0 when no invariant was violated, 1 otherwise (each failing seed is
printed with the invariant, the message and the end of its trace).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from clusterfw.cli.errors import EXIT_FAILED, EXIT_USAGE, CliError
from clusterfw.cli.options import add_json
from clusterfw.sim.runner import MUTATIONS, parse_faults, run_many, run_seed, summarize
from clusterfw.sim.world import FAULTS, FEATURES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sim", help="run the deterministic cluster simulator",
        description="Run the membership protocol with simulated nodes, disk, clocks and faults. "
                    "A seed reproduces a run exactly; any invariant violation exits 1 with its seed.",
        epilog="Faults: " + ", ".join(FAULTS) + ". Features: " + ", ".join(FEATURES)
               + " (--dlm, --services). Exit codes: 0 no violation, 1 violation, 2 bad usage.")
    p.add_argument("--seeds", type=int, default=100, metavar="N", help="number of seeds to run (default 100)")
    p.add_argument("--nodes", type=int, default=5, metavar="K", help="nodes per run (default 5)")
    p.add_argument("--seed", type=int, metavar="S",
                   help="run only seed S (with --seeds N: seeds S..S+N-1); alone, prints its trace")
    p.add_argument("--faults", default="all", metavar="LIST",
                   help="comma-separated faults to inject, 'all' (default) or 'none'")
    p.add_argument("--fault-ms", type=float, default=20_000, metavar="MS",
                   help="simulated length of the fault phase (default 20000)")
    p.add_argument("--dlm", action="store_true",
                   help="also run the DLM on every node with lock clients, and check its invariants")
    p.add_argument("--services", action="store_true",
                   help="also run the registration & launch service on every node (with the DLM, whose lock it "
                        "takes), a launcher per host and an administrator, and check the services' invariants")
    p.add_argument("--mutation", type=_mutation, metavar="NAME[+NAME]",
                   help="deliberately break one rule, or several joined by '+', to see the simulator "
                        "catch it: " + ", ".join(sorted(MUTATIONS)))
    p.add_argument("--trace", action="store_true", help="print the full trace of a single seed")
    p.add_argument("--jobs", type=int, default=0, metavar="J", help="worker processes (default: one per core)")
    add_json(p, "print the summary as JSON")
    p.set_defaults(func=cmd_sim)


def _mutation(text: str) -> str:
    unknown = [n for n in text.split("+") if n not in MUTATIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown mutation {', '.join(map(repr, unknown))}: choose from "
                                         + ", ".join(sorted(MUTATIONS)) + " (join several with '+')")
    return text


def cmd_sim(args: argparse.Namespace) -> int:
    try:
        faults = parse_faults(args.faults)
    except ValueError as exc:
        raise CliError(f"--faults: {exc}", EXIT_USAGE) from None
    if args.dlm:
        faults = faults | {"dlm"}
    if args.services:
        faults = faults | {"services"}
    replay_flags = f"--faults {args.faults}" + (" --dlm" if args.dlm else "") + (" --services" if args.services else "")
    if not 1 <= args.nodes <= 255:
        raise CliError(f"--nodes {args.nodes}: use 1..255", EXIT_USAGE)
    if args.seeds < 1:
        raise CliError(f"--seeds {args.seeds}: use at least 1", EXIT_USAGE)
    if args.jobs < 0:
        raise CliError(f"--jobs {args.jobs}: use a number of worker processes of at least 1 (0 or no --jobs: "
                       f"one per core)", EXIT_USAGE)
    single = args.seed is not None and (args.trace or "--seeds" not in sys.argv)
    if single:
        out = run_seed(args.seed, args.nodes, faults, args.mutation, args.fault_ms, keep_trace=True)
        if args.trace or not out.ok:
            lines = out.trace if args.trace else out.trace[-80:]
            print("\n".join(lines))
        if args.json:
            print(json.dumps({"seed": out.seed, "ok": out.ok, "violation": out.violation,
                              "converge_after_heal_ms": out.converge_ms, "events": out.events,
                              "stats": out.stats, "digest": out.digest}, indent=2))
        elif out.ok:
            print(f"seed {out.seed}: ok, {args.nodes} nodes, converged {out.converge_ms:.0f} ms after faults "
                  f"stopped, {out.events} events, trace digest {out.digest}")
        else:
            print(f"seed {out.seed}: VIOLATION {out.violation}\n"
                  f"replay: clusterfw sim --seed {out.seed} --nodes {args.nodes} {replay_flags} --trace",
                  file=sys.stderr)
        return 0 if out.ok else EXIT_FAILED

    first = args.seed if args.seed is not None else 1
    seeds = range(first, first + args.seeds)
    started = time.monotonic()
    interactive = sys.stderr.isatty() and not args.json

    def progress(done: int, total: int, outcome) -> None:  # noqa: ANN001
        if not outcome.ok:
            print(f"\nseed {outcome.seed}: VIOLATION {outcome.violation}", file=sys.stderr)
        if interactive or done == total or done % max(1, total // 10) == 0:
            end = "\n" if done == total or not interactive else "\r"
            print(f"sim: {done}/{total} seeds", end=end, file=sys.stderr, flush=True)

    outcomes = run_many(seeds, args.nodes, faults, args.mutation, args.fault_ms, args.jobs or None, progress)
    summary = summarize(outcomes, args.nodes, faults, time.monotonic() - started)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        conv = summary["converge_after_heal_ms"]
        print(f"{summary['seeds']} seeds x {args.nodes} nodes, faults: {','.join(summary['faults']) or 'none'}"
              + (f", mutation: {args.mutation}" if args.mutation else ""))
        print(f"violations: {summary['violations']}")
        if conv["median"] is not None:
            print(f"converged after faults stopped: median {conv['median']:.0f} ms, max {conv['max']:.0f} ms")
        totals = summary["fault_totals"]
        print("injected: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items()) if k != "ios")
              + f"; {totals.get('ios', 0)} disk I/Os, {summary['events']} events, {summary['wall_s']} s")
        for bad in [o for o in outcomes if not o.ok][:5]:
            print(f"\nseed {bad.seed}: {bad.violation}\n  last events:")
            print("\n".join("  " + line for line in bad.trace[-25:]))
            print(f"  replay: clusterfw sim --seed {bad.seed} --nodes {args.nodes} {replay_flags} --trace")
    return 0 if summary["violations"] == 0 else EXIT_FAILED
