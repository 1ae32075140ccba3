"""Every host-side command that finds no daemon says so the same way: the
socket it tried and who chose it, how to check the daemon, and the `lab
exec` line that runs the same command on a lab node.  Run in-process with a
socket path nobody listens on; no lab answers (``ask_lab_node`` is
replaced), so nothing is asked of a real lab."""
from __future__ import annotations

import pytest

from clusterfw import cli
from clusterfw.cli import lab as cli_lab
from clusterfw.node import protocol

COMMANDS = [
    (["status"], 1, "clusterfw status"),
    (["locks"], 1, "clusterfw locks"),
    (["events"], 1, "clusterfw events"),
    (["leave"], 1, "clusterfw leave"),
    (["lock", "db", "--", "true"], 69, "clusterfw lock db -- true"),
]


@pytest.fixture
def no_lab(monkeypatch, tmp_path):
    asked: list[list[str]] = []

    def lab_node(argv, timeout, parse=None):
        asked.append(argv)
        return None

    monkeypatch.setattr(cli_lab, "ask_lab_node", lab_node)
    monkeypatch.setattr(protocol, "DEFAULT_SOCKET", str(tmp_path / "default.sock"))
    monkeypatch.delenv("CLUSTERFW_SOCKET", raising=False)
    monkeypatch.setenv("CLUSTERFW_EVENTS_LOG", str(tmp_path / "no-events.jsonl"))
    return asked


def _argv(words: list[str], *extra: str, log: str) -> list[str]:
    if words[0] == "lock":
        return [*words[:2], *extra, *words[2:]]
    return [*words, *extra, *(["--log", log] if words[0] == "events" else [])]


@pytest.mark.parametrize("words,code,lab_command", COMMANDS, ids=[c[0][0] for c in COMMANDS])
def test_a_named_socket_without_a_daemon(no_lab, tmp_path, capsys, words, code, lab_command):
    path = str(tmp_path / "unused.sock")
    assert cli.main(_argv(words, "--socket", path, log=str(tmp_path / "no-events.jsonl"))) == code
    err = capsys.readouterr().err
    assert f"no clusterfw daemon answers on {path}" in err, err
    assert "check the socket given by --socket (is the daemon running? 'systemctl status clusterfw')." in err, err
    assert f"On a host running 'clusterfw lab', ask a lab node: 'clusterfw lab exec NODE -- {lab_command}'" in err
    assert "Traceback" not in err
    assert no_lab == []  # a socket someone named is never a reason to ask another daemon


@pytest.mark.parametrize("words,code,lab_command", COMMANDS, ids=[c[0][0] for c in COMMANDS])
def test_the_default_socket_without_a_daemon(no_lab, tmp_path, capsys, words, code, lab_command):
    assert cli.main(_argv(words, log=str(tmp_path / "no-events.jsonl"))) == code
    err = capsys.readouterr().err
    assert f"no clusterfw daemon answers on {tmp_path / 'default.sock'}" in err, err
    assert "is the daemon running ('systemctl status clusterfw')?" in err, err
    assert f"'clusterfw lab exec NODE -- {lab_command}'" in err, err
    if words[0] in ("status", "locks", "events"):
        assert len(no_lab) == 1  # these ask a lab node first, when nobody named a socket


def test_events_with_a_daemon_but_no_log_says_how_to_start_the_event_manager(tmp_path, capsys, monkeypatch):
    """A daemon answers: the log is missing because no event manager runs."""
    from clusterfw.cli import events as cli_events

    class Answering:
        def __init__(self, *a, **k):
            pass

        def status(self):
            return {"state": "joined"}

    monkeypatch.setattr("clusterfw.client.Client", Answering)
    assert cli.main(["events", "--log", str(tmp_path / "none.jsonl"), "--socket", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "no event log at" in err and cli_events.HOW_TO_START in err, err
