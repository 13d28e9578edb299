"""Runs forked from the warm server (tunelab.warm) are the runs a cold process would make: the
same numbers, the request's environment, directory and output, its exit code, and a signal that
kills one leaves the server serving. (That the server and its runs die with a SIGKILLed
comparison is tests/test_compare.py's killed comparison, whose run releases its lock.)"""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from conftest import cli_args
from tunelab import comparison as compare
from tunelab import warm

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the warm server forks on Linux only")

COLD = [sys.executable, "-m", "tunelab.cli"]


def test_a_forked_run_trains_to_the_numbers_of_a_cold_run(tiny_run_config, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_WARM_START", "1")
    summaries = {}
    for kind in ("cold", "warm"):
        config = {**tiny_run_config, "output": {"dir": str(tmp_path / kind)}}
        log = tmp_path / f"{kind}.log"
        if kind == "warm":
            with warm.kept():
                assert compare.run_child([*COLD, "train", *cli_args(config)], log) == 0
                assert warm.server() is not None
        else:
            assert warm.server() is None, "no server outside kept(): the run starts cold"
            assert compare.run_child([*COLD, "train", *cli_args(config)], log) == 0
        summaries[kind] = json.loads((tmp_path / kind / "summary.json").read_text())
        assert "step/s" in log.read_text(), "the run's progress is in its log"
    for split in ("validation", "test"):
        assert summaries["warm"][split]["loss"] == summaries["cold"][split]["loss"]
        assert summaries["warm"][split]["accuracy"] == summaries["cold"][split]["accuracy"]
    assert summaries["warm"]["steps"] == summaries["cold"]["steps"]


def test_a_forked_run_has_the_requests_environment_directory_and_output(tmp_path, monkeypatch):
    """A plugin module in the request's directory, named by the request's environment, prints
    what it sees when the run imports it; the unknown command then ends it with exit code 2."""
    here = tmp_path / "here"
    here.mkdir()
    (here / "probe_plugin.py").write_text(
        "import os, sys\nprint('probe', os.getcwd(), os.environ['PROBE'], sys.argv[1:], flush=True)\n")
    started_in = tmp_path / "elsewhere"
    started_in.mkdir()
    monkeypatch.chdir(started_in)
    with warm.kept():
        server = warm.server()  # started in another directory, without the variables
        monkeypatch.chdir(here)
        env = {**os.environ, "TUNELAB_PLUGINS": "probe_plugin", "PROBE": "seen"}
        log = tmp_path / "probe.log"
        assert compare.run_child([*COLD, "no-such-command"], log, env=env) == 2
        assert warm.server() is server, "the same server served it"
    lines = log.read_text().splitlines()
    assert lines[0].startswith("$ ") and lines[0].endswith("-m tunelab.cli no-such-command")
    assert lines[1] == f"probe {here} seen ['no-such-command']"
    assert lines[2].startswith("error: ") and "no-such-command" in lines[2] and len(lines) == 3


def test_a_killed_forked_run_ends_with_its_signal_and_the_server_serves_on(tiny_run_config, tmp_path):
    config = {**tiny_run_config, "train": {**tiny_run_config["train"], "epochs": 500}}
    with warm.kept():
        server = warm.server()
        pid = server.start(["train", *cli_args(config)], dict(os.environ), tmp_path / "killed.log")
        assert server.ended(timeout=3) is None, "still training"
        os.kill(pid, signal.SIGKILL)
        assert server.ended(timeout=30) == -signal.SIGKILL
        pid = server.start(["no-such-command"], dict(os.environ), tmp_path / "next.log")
        assert server.ended(timeout=30) == 2
        assert warm.server() is server


def test_the_server_starts_again_when_the_environment_changed(monkeypatch):
    """Libraries read some variables once, at import: a server imported under others is not reused."""
    with warm.kept():
        first = warm.server()
        assert warm.server() is first
        monkeypatch.setenv("HF_HUB_OFFLINE", "1" if os.environ.get("HF_HUB_OFFLINE") != "1" else "0")
        second = warm.server()
        assert second is not first and first.proc.poll() is not None, "the old server ended"
    assert second.proc.poll() is not None, "kept() ends the server it started"
    assert warm.server() is None


def test_warm_start_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("TUNELAB_WARM_START", "0")
    with warm.kept():
        assert warm.server() is None


def test_a_dead_server_runs_nothing_and_the_next_run_gets_a_new_one(tmp_path):
    """warm.run answers None for a server that cannot start the run: run_child then starts it cold."""
    with warm.kept():
        server = warm.server()
        server.proc.kill()
        server.proc.wait()
        assert warm.run(server, ["no-such-command"], dict(os.environ), tmp_path / "a.log", print) is None
        log = tmp_path / "b.log"
        assert compare.run_child([*COLD, "no-such-command"], log) == 2
        assert warm.server() is not server
    assert log.read_text().splitlines()[-1].startswith("error: ")
