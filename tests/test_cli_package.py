"""The ``clusterfw`` command as a package (``clusterfw/cli/``): both ways of
running it catch the one ``CliError``, the exit codes are one table that the
daemon, the event manager and fencing share without importing the CLI, and
the lab's fault commands print sentences for a person, JSON only with
``--json`` (from recorded ``Lab`` replies: no lab is needed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clusterfw import cli, exitcodes
from clusterfw.cli import errors
from clusterfw.cli import lab as cli_lab

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CLUSTERFW_SOCKET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize("module", ["clusterfw", "clusterfw.cli"])
def test_python_m_catches_the_one_cli_error(module):
    """A command module's CliError is the class main() catches, also when
    the command runs as ``python3 -m``: exit 2 and one sentence, no
    traceback (as __main__, a second copy of the CLI module had its own
    CliError, which main() did not catch)."""
    out = subprocess.run([sys.executable, "-m", module, "sim", "--nodes", "0"], capture_output=True, text=True,
                         env=_env(), cwd=REPO, timeout=120)
    assert out.returncode == exitcodes.EXIT_USAGE, out.stderr
    assert out.stderr.strip() == "clusterfw: --nodes 0: use 1..255"
    assert "Traceback" not in out.stderr


def test_one_exit_code_table_with_todays_numbers():
    """Every program's codes come from clusterfw.exitcodes, with the values
    they always had; `lock` keeps flock(1)'s."""
    from clusterfw.cli import lock
    from clusterfw.events import manager
    from clusterfw.node import daemon, fencing

    assert (exitcodes.EXIT_OK, exitcodes.EXIT_FAILED, exitcodes.EXIT_USAGE, exitcodes.EXIT_REFUSED,
            exitcodes.EXIT_FENCED, exitcodes.EXIT_CONFIG, exitcodes.EXIT_INTERRUPTED) == (0, 1, 2, 3, 75, 78, 130)
    assert (lock.EXIT_CONFLICT, lock.EXIT_USAGE, lock.EXIT_UNAVAILABLE, lock.EXIT_LOST, lock.EXIT_NOPERM,
            lock.EXIT_CANNOT_EXEC, lock.EXIT_NOT_FOUND) == (1, 64, 69, 75, 77, 126, 127)
    for module in (daemon, manager, errors):
        assert (module.EXIT_OK, module.EXIT_FAILED, module.EXIT_USAGE, module.EXIT_CONFIG) == (0, 1, 2, 78)
    assert daemon.EXIT_FENCED == fencing.EXIT_FENCED == errors.EXIT_FENCED == 75
    assert errors.CliError("x").exit_code == exitcodes.EXIT_FAILED and cli.CliError is errors.CliError


# Replies of clusterfw.lab.Lab, as recorded from a 3-node nspawn lab.
RECORDED = {
    "crash": {"node": "n2", "crashed": True, "killed_pid": 41234, "seconds": 0.087},
    "restart": {"name": "n2", "id": 2, "state": "up", "address": "10.231.0.2",
                "disk": {"mode": "pass", "loop": "/dev/loop7", "path_in_node": "/dev/clusterfw-disk",
                         "view": "pass"},
                "init_pid": 41377, "launcher_pid": 41370, "fuse_pid": 40021, "netns": "cfwlab-n2",
                "cgroup": "/sys/fs/cgroup/machine.slice/machine-cfwlab\\x2dn2.scope",
                "pids": [41377, 41402, 41433], "ready_seconds": 2.41, "seconds": 2.634},
    "cut-disk": {"node": "n3", "disk": "hang"},
    "restore-disk": {"node": "n3", "disk": "pass"},
    "pause": {"node": "n1", "paused": False, "frozen_while_paused": True, "seconds": 1.0},
    "resume": {"node": "n1", "resumed": True},
    "bench-disk": {"node": "n2", "count": 2000, "block": 4096, "via_fuse": {"median_us": 61.3, "p99_us": 140.2},
                   "direct_loop": {"median_us": 18.9, "p99_us": 40.7}, "added_median_us": 42.4},
}
CALLS = {"crash": "crash", "restart": "restart", "cut-disk": "cut_disk", "restore-disk": "restore_disk",
         "pause": "pause", "resume": "resume", "bench-disk": "bench_disk"}
ARGS = {"pause": ["1"], "cut-disk": ["--mode", "hang"]}
SAYS = {  # the whole line a person sees, exactly
    "crash": ["n2 crashed (SIGKILL of init 41234) in 0.09 s"],
    "restart": ["n2 restarted (init 41377) in 2.63 s"],
    "cut-disk": ["n3 disk cut (hang: every I/O stalls until 'clusterfw lab restore-disk n3')"],
    "restore-disk": ["n3 disk restored (I/O passes through)"],
    "pause": ["n1 paused for 1.00 s, running again"],
    "resume": ["n1 resumed"],
    "bench-disk": ["node n2: 2000 reads of 4096 B", "61.3 us", "18.9 us", "adds 42.4 us"],
}
WHOLE_LINE = {"crash", "restart", "cut-disk", "restore-disk", "pause", "resume"}


class RecordedLab:
    """Stands in for clusterfw.lab.Lab: every fault returns its recording."""

    def __getattr__(self, name):
        for command, method in CALLS.items():
            if method == name:
                return lambda *args, **kwargs: json.loads(json.dumps(RECORDED[command]))
        raise AttributeError(name)


@pytest.mark.parametrize("command", sorted(RECORDED))
def test_lab_faults_print_a_sentence_and_json_only_when_asked(command, monkeypatch, capsys):
    monkeypatch.setattr(cli_lab, "_lab", lambda args: RecordedLab())
    node = RECORDED[command].get("node") or RECORDED[command]["name"]
    assert cli.main(["lab", command, node, *ARGS.get(command, [])]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and not out.lstrip().startswith("{"), out
    if command in WHOLE_LINE:
        assert out == SAYS[command][0] + "\n"
    for words in SAYS[command]:
        assert words in out, (words, out)
    assert cli.main(["lab", command, node, *ARGS.get(command, []), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == RECORDED[command]


def test_a_background_pause_says_when_the_node_thaws():
    until = 1_700_000_000.0
    clock = time.strftime("%H:%M:%S", time.localtime(until))
    text = cli_lab.format_pause({"node": "n1", "paused": True, "frozen": True, "until": until, "background": True})
    assert text == f"n1 paused until {clock} (a helper thaws it; 'clusterfw lab resume n1' now)"
    text = cli_lab.format_pause({"node": "n1", "paused": True, "frozen": False, "until": until, "background": True})
    assert text == f"n1 paused until {clock}, not yet frozen (a helper thaws it; 'clusterfw lab resume n1' now)"
    assert cli_lab.format_resume({"node": "n1", "resumed": False, "reason": "pause superseded"}) \
        == "n1 left as it is: pause superseded"


def test_the_fault_lines_say_what_went_wrong_in_a_node():
    """A restart that left the node in another state than up says so; an EIO
    cut says every I/O fails; a pause that could not freeze the node says so."""
    restart = {**RECORDED["restart"], "state": "starting", "init_pid": None}
    assert cli_lab.format_restart(restart) == "n2 restarted (init -) in 2.63 s, now starting"
    assert cli_lab.format_disk_mode({"node": "n3", "disk": "eio"}) \
        == "n3 disk cut (eio: every I/O fails until 'clusterfw lab restore-disk n3')"
    assert cli_lab.format_pause({**RECORDED["pause"], "frozen_while_paused": False}) \
        == "n1 paused for 1.00 s, running again (it was not fully frozen)"
