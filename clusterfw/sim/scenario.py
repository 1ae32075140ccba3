"""Scenario transcripts: the patent's figures as small scripts with golden
output, run by the simulator with fixed latencies (like etcd-io/raft's
``testdata/``).

A scenario file holds comments (``#``), commands, and after each command the
lines it produced, prefixed with ``> ``.  Running a file regenerates those
lines; the test compares the result with the file (set
``CLUSTERFW_REWRITE=1`` to rewrite the files after an intended change, then
read the diff).

Commands::

    cluster nodes=N [levels=mm:0,dlm:10:2/1/1,...]   level NAME:LEVEL[:JOIN/LEAVE/FORCED barriers]
    start nX [nY ...]          start daemons (graceful join)
    leave nX                   graceful leave (SIGTERM)
    crash nX | crash master    kill -9 the whole node
    power-off                  crash every node at once
    hang nX LEVELNAME          that subsystem never acks again
    slow nX LEVELNAME MS       that subsystem takes MS to ack
    run MS                     let MS simulated milliseconds pass
    run-until COND [max=MS]    COND: nX joined|joining|leaving|inactive|stopped|fenced,
                               all joined (every running node), master nX, batch nX LEVELNAME
    show                       the agreed view: master, epoch, each node's state
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.coordinator import batch_label
from ..core.model import NodeState, Registration
from ..core.node import Role
from .world import LEVELS, SimConfig, World


class ScenarioError(Exception):
    pass


def parse_levels(text: str) -> tuple[Registration, ...]:
    regs = []
    for item in text.split(","):
        parts = item.split(":")
        name, level = parts[0], int(parts[1])
        barriers = (1, 1, 1)
        if len(parts) > 2:
            b = tuple(int(x) for x in parts[2].split("/"))
            barriers = (b + (1, 1, 1))[:3]  # type: ignore[assignment]
        regs.append(Registration(level, name, barriers))  # type: ignore[arg-type]
    return tuple(regs)


DEFAULT_LEVELS = ",".join(f"{name}:{level}" for level, name in LEVELS)


@dataclass
class _State:
    world: World | None = None
    emitted: int = 0


def _node_id(token: str) -> int:
    m = re.fullmatch(r"n(\d+)", token)
    if not m:
        raise ScenarioError(f"expected a node name like n1, got {token!r}")
    return int(m.group(1))


def _fmt(line: str) -> str:
    t, _, rest = line.strip().partition(" ")
    return f"{float(t):7.0f}ms {rest}"


def run_script(text: str) -> str:
    """Run every command in ``text`` and return the regenerated transcript."""
    st = _State()
    out: list[str] = []
    for raw in text.splitlines():
        if raw.startswith("> "):
            continue
        out.append(raw)
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        for produced in _command(st, line):
            out.append("> " + produced)
    return "\n".join(out).rstrip("\n") + "\n"


def _new_lines(st: _State) -> list[str]:
    assert st.world is not None and st.world.full_trace is not None
    lines = st.world.full_trace[st.emitted:]
    st.emitted = len(st.world.full_trace)
    return [_fmt(l) for l in lines]


def _command(st: _State, line: str) -> list[str]:
    words = line.split()
    cmd, args = words[0], words[1:]
    opts = dict(a.split("=", 1) for a in args if "=" in a)
    plain = [a for a in args if "=" not in a]
    if cmd == "cluster":
        regs = parse_levels(opts.get("levels", DEFAULT_LEVELS))
        cfg = SimConfig(nodes=int(opts["nodes"]), seed=int(opts.get("seed", 0)), faults=frozenset(),
                        io_latency_ms=(1.0, 1.0), registrations=regs, restart_delay_ms=(10_000, 10_000))
        w = World(cfg)
        w.full_trace = []
        for n in w.nodes.values():
            n.rate, n.offset_ms = 1.0, 0.0
        w.scripted = True  # type: ignore[attr-defined]
        st.world, st.emitted = w, 0
        return [f"{len(w.nodes)} nodes; levels " + ", ".join(
            f"{r.name}={r.level} barriers(join,leave,forced)={r.barriers}" for r in regs)]
    if st.world is None:
        raise ScenarioError("the first command must be 'cluster'")
    w = st.world
    if cmd == "start":
        for tok in plain:
            w.at(w.t, "start", _node_id(tok))
        w.run_until(lambda: all(w.nodes[_node_id(t)].up for t in plain), w.t + 1000)
    elif cmd == "leave":
        node = w.nodes[_node_id(plain[0])]
        w.log(f"n{node.node_id} graceful LEAVE requested")
        assert node.core is not None
        node.core.leave(node.local(w.t))
        w._handle_events(node)
        w._kick(node)
    elif cmd == "crash":
        targets = [_master(w)] if plain[0] == "master" else [_node_id(plain[0])]
        for nid in targets:
            node = w.nodes[nid]
            node.restart_pending = True  # scenarios restart nodes explicitly
            w._crash(node)
    elif cmd == "power-off":
        w.log("POWER FAILURE: every node goes down")
        for node in w.nodes.values():
            node.restart_pending = True
            w._crash(node)
    elif cmd in ("hang", "slow"):
        node = w.nodes[_node_id(plain[0])]
        subs = {s.name: s for s in node.subsystems.values()}
        if plain[1] not in subs:
            raise ScenarioError(f"n{node.node_id} has no subsystem {plain[1]!r}")
        sub = subs[plain[1]]
        if cmd == "hang":
            sub.hung = True
            w.log(f"n{node.node_id} {sub.name} hangs (will never ack)")
        else:
            sub.delay_ms = (float(plain[2]), float(plain[2]))
            w.log(f"n{node.node_id} {sub.name} acks after {plain[2]} ms")
    elif cmd == "run":
        w.run_until(lambda: False, w.t + float(plain[0]))
    elif cmd == "run-until":
        limit = w.t + float(opts.get("max", 30_000))
        pred = _condition(w, plain)
        if not w.run_until(pred, limit):
            raise ScenarioError(f"'{line}' did not happen within {opts.get('max', 30000)} ms")
    elif cmd == "show":
        return _new_lines(st) + _show(w)
    else:
        raise ScenarioError(f"unknown command {cmd!r}")
    return _new_lines(st)


def _master(w: World) -> int:
    for n in w.nodes.values():
        if n.up and n.core is not None and n.core.role is Role.MASTER:
            return n.node_id
    raise ScenarioError("no master to crash")


def _condition(w: World, words: list[str]):  # noqa: ANN202
    if words == ["all", "joined"]:
        def all_joined() -> bool:
            running = [n for n in w.nodes.values() if n.up]
            return bool(running) and all(
                n.core is not None and n.core.state is NodeState.JOINED and n.core.view is not None
                and not n.core.view.batches for n in running)
        return all_joined
    if words[0] == "master":
        nid = _node_id(words[1])
        return lambda: (core := w.nodes[nid].core) is not None and core.role is Role.MASTER
    if words[0] == "batch":
        nid, level_name = _node_id(words[1]), words[2]
        levels = {r.name: r.level for r in w.registrations}
        level = levels[level_name]

        def has_batch() -> bool:
            for n in w.nodes.values():
                if n.core is not None and n.core.view is not None:
                    b = n.core.view.batch(level)
                    if b is not None and any(e.node_id == nid for e in b.entries):
                        return True
            return False
        return has_batch
    nid, what = _node_id(words[0]), words[1]
    node = w.nodes[nid]
    if what == "stopped":
        return lambda: not node.up
    if what == "fenced":
        return lambda: node.core is not None and node.core.fenced is not None or node.fenced_done and not node.up
    state = NodeState(what)
    if state is NodeState.INACTIVE:
        # As the master's view says (the node itself may be down).
        def inactive() -> bool:
            for n in w.nodes.values():
                if n.core is not None and n.core.role is Role.MASTER and n.core.view is not None:
                    m = n.core.view.member(nid)
                    return m is None or m.state is NodeState.INACTIVE
            return False
        return inactive
    return lambda: node.up and node.core is not None and node.core.state is state


def _show(w: World) -> list[str]:
    lines = []
    for n in w.nodes.values():
        if n.core is not None and n.core.role is Role.MASTER and n.core.view is not None:
            v = n.core.view
            lines.append(f"view: master n{n.node_id}, term {v.term}, epoch {v.epoch}")
            for m in v.members:
                extra = f" kind={m.kind.notification} level={m.cursor} barrier={m.barrier}" if m.kind else ""
                forced = " (forced out)" if m.state is NodeState.INACTIVE and m.forced else ""
                lines.append(f"  n{m.node_id}: {m.state.value}{forced}{extra}")
            for b in v.batches:
                lines.append(f"  batch {batch_label(b.batch_id)} at level {b.level} outstanding, waiting for "
                             + ",".join(f"n{p}" for p in b.participants))
            return lines
    return ["view: no master"]
