"""Scenario transcripts (tests/scenarios/*.txt): the patent's figures as
scripts with golden output.  Set CLUSTERFW_REWRITE=1 to regenerate them after
an intended protocol change, then review the diff."""
from __future__ import annotations

import os
import pathlib
import re

import pytest

from clusterfw.sim.scenario import ScenarioError, run_script

SCENARIOS = sorted((pathlib.Path(__file__).parent / "scenarios").glob("*.txt"))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_transcript(path: pathlib.Path) -> None:
    expected = path.read_text()
    got = run_script(expected)
    if os.environ.get("CLUSTERFW_REWRITE") == "1":
        path.write_text(got)
        return
    assert got == expected, f"{path.name} changed; rerun with CLUSTERFW_REWRITE=1 and review the diff"


def _out(path: str) -> list[str]:
    text = (pathlib.Path(__file__).parent / "scenarios" / path).read_text()
    return [l[2:] for l in text.splitlines() if l.startswith("> ")]


def test_scenarios_cover_the_figures() -> None:
    names = {p.stem for p in SCENARIOS}
    for needed in ("fig03-10-two-nodes-join", "fig11-12-graceful-leave", "fig13-15-forced-leave-hung-join",
                   "two-barriers-at-dlm", "power-failure-five-nodes-boot", "master-crash-mid-barrier",
                   "joining-node-asked-to-leave"):
        assert needed in names


def _notified_levels(lines: list[str], node: str, subject: str, kind: str) -> list[str]:
    """Levels (names) at which ``node`` was notified of ``subject``'s ``kind``."""
    out = []
    for l in lines:
        m = re.search(rf" {node} (\w+) notified batch [\d.]+: .*\b{subject} {kind}#", l)
        if m:
            out.append(m.group(1))
    return out


def test_join_is_bottom_up_and_leave_top_down() -> None:
    lines = _out("fig11-12-graceful-leave.txt")
    assert _notified_levels(lines, "n2", "n2", "joining") == ["mm", "dlm", "vdm", "sfs", "evm"]
    assert _notified_levels(lines, "n2", "n1", "leaving") == ["evm", "sfs", "vdm", "dlm", "mm"]


def test_forced_leave_stops_at_the_highest_level_notified() -> None:
    lines = _out("fig13-15-forced-leave-hung-join.txt")
    assert _notified_levels(lines, "n2", "n1", "forced-leaving") == ["mm", "dlm", "vdm", "sfs"]
    fence = next(i for i, l in enumerate(lines) if "n1 FENCE" in l)
    first_recovery = next(i for i, l in enumerate(lines) if "forced-leaving#0" in l and "notified" in l)
    assert fence < first_recovery


def test_reversed_join_never_reaches_the_levels_above() -> None:
    lines = _out("joining-node-asked-to-leave.txt")
    assert _notified_levels(lines, "n1", "n2", "leaving") == ["vdm", "dlm", "mm"]
    assert "sfs" not in _notified_levels(lines, "n1", "n2", "joining")


def test_unknown_command_is_a_clear_error() -> None:
    with pytest.raises(ScenarioError, match="unknown command 'frobnicate'"):
        run_script("cluster nodes=1\nfrobnicate n1\n")
