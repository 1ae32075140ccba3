"""Are the cluster-managed units dead yet?

How this works
--------------
``systemctl kill`` only *sends* the signal; the processes die a little
later.  Fencing, and the start-up clean-up after an unclean exit, must know
that they are gone, so ``wait_dead`` polls

    systemctl show --property=Id,ActiveState,MainPID,ControlPID,ControlGroup -- UNIT...

and, for every unit with a control group, its ``cgroup.procs`` (cgroup v2,
under ``/sys/fs/cgroup``): a unit is dead when it has no main and no control
process and its control group (if any) holds no process.  The answer of a
``systemctl show`` that fails or times out is "not known", which is never
"dead".
"""
from __future__ import annotations

import os
import subprocess
import time

CGROUP_ROOT = "/sys/fs/cgroup"
POLL_S = 0.01
SHOW_PROPERTIES = "Id,ActiveState,MainPID,ControlPID,ControlGroup"
SHOW_MIN_S = 0.05  # the least time a systemctl show is given
UNKNOWN = "state not known"


def parse_show(text: str) -> list[dict[str, str]]:
    """``systemctl show`` output for several units: one dict per unit (the
    blocks are separated by empty lines)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def _cgroup_procs(cgroup: str, root: str) -> int | None:
    """How many processes the control group holds (None: unreadable)."""
    path = os.path.join(root, cgroup.lstrip("/"), "cgroup.procs")
    try:
        with open(path, encoding="ascii") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return None


def alive(systemctl: str, units: list[str], timeout_s: float,
          cgroup_root: str = CGROUP_ROOT) -> dict[str, str]:
    """The units that still run (or whose state is not known), each with
    what is left of it, in words."""
    try:
        out = subprocess.run([systemctl, "show", f"--property={SHOW_PROPERTIES}", "--", *units],
                             capture_output=True, text=True, timeout=max(timeout_s, 0.01),
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {u: f"{UNKNOWN} (systemctl show timed out)" for u in units}
    except OSError as exc:
        return {u: f"{UNKNOWN} (cannot run systemctl: {exc})" for u in units}
    if out.returncode != 0:
        why = out.stderr.strip()[:200] or f"exit {out.returncode}"
        return {u: f"{UNKNOWN} (systemctl show: {why})" for u in units}
    by_id = {b.get("Id", ""): b for b in parse_show(out.stdout)}
    left: dict[str, str] = {}
    for unit in units:
        props = by_id.get(unit)
        if props is None:
            left[unit] = f"{UNKNOWN} (not in systemctl show's answer)"
            continue
        parts = []
        for key in ("MainPID", "ControlPID"):
            if props.get(key, "0") not in ("", "0"):
                parts.append(f"{key} {props[key]}")
        cgroup = props.get("ControlGroup", "")
        if cgroup:
            count = _cgroup_procs(cgroup, cgroup_root)
            if count:
                parts.append(f"{count} processes in {cgroup}")
        if parts:
            left[unit] = f"{props.get('ActiveState', '?')}, " + ", ".join(parts)
    return left


def wait_dead(systemctl: str, units: list[str], timeout_s: float, poll_s: float = POLL_S,
              cgroup_root: str = CGROUP_ROOT) -> dict[str, str]:
    """Poll until every unit is dead or ``timeout_s`` passed; returns what
    is still alive (empty: all dead)."""
    deadline = time.monotonic() + timeout_s
    known: dict[str, str] = {}
    while True:
        left = alive(systemctl, units, max(SHOW_MIN_S, deadline - time.monotonic()), cgroup_root)
        if not left:
            return left
        known.update({u: why for u, why in left.items() if not why.startswith(UNKNOWN)})
        if time.monotonic() >= deadline:
            # a last answer cut short says less than an earlier one
            return {u: known.get(u, why) if why.startswith(UNKNOWN) else why for u, why in left.items()}
        units = [u for u in units if u in left]
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
