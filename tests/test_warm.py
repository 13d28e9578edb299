"""Runs forked from the warm server (tunelab.warm) are the runs a cold process would make: the
same numbers, the request's environment, directory and output, its exit code, and a signal that
kills one leaves the server serving. (That the server and its runs die with a SIGKILLed
comparison is tests/test_compare.py's killed comparison, whose run releases its lock.)"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import pytest

from conftest import cli_args
from tunelab import comparison as compare
from tunelab import warm

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the warm server forks on Linux only")

COLD = [sys.executable, "-m", "tunelab.cli"]


@pytest.fixture(autouse=True)
def warm_start_on(monkeypatch):
    monkeypatch.setenv("TUNELAB_WARM_START", "1")


def cold_fails(*args):
    pytest.fail("the run was started cold")


def test_a_forked_run_trains_to_the_numbers_of_a_cold_run(tiny_run_config, tmp_path, monkeypatch):
    summaries, progress = {}, {}
    for kind in ("cold", "warm"):
        config = {**tiny_run_config, "output": {"dir": str(tmp_path / kind)}}
        log, steps = tmp_path / f"{kind}.log", []
        if kind == "warm":
            with warm.kept(), monkeypatch.context() as patch:
                patch.setattr(compare, "run_cold", cold_fails)
                assert compare.run_child([*COLD, "train", *cli_args(config)], log, lambda *s: steps.append(s)) == 0
        else:
            assert warm.server() is None, "no server outside kept(): the run starts cold"
            assert compare.run_child([*COLD, "train", *cli_args(config)], log, lambda *s: steps.append(s)) == 0
        summaries[kind] = json.loads((tmp_path / kind / "summary.json").read_text())
        progress[kind] = steps[-1]
    for split in ("validation", "test"):
        assert summaries["warm"][split]["loss"] == summaries["cold"][split]["loss"]
        assert summaries["warm"][split]["accuracy"] == summaries["cold"][split]["accuracy"]
    steps = summaries["cold"]["steps"]
    assert summaries["warm"]["steps"] == steps and progress == {"cold": (steps, steps), "warm": (steps, steps)}


def test_a_forked_run_has_the_requests_environment_directory_and_output(tmp_path, monkeypatch):
    """A plugin module in the request's directory prints what it sees when the run imports it: the
    request's directory and a variable only the request has (one read when a run starts, so the
    server is not started again for it); the unknown command then ends the run with exit code 2."""
    here = tmp_path / "here"
    here.mkdir()
    (here / "probe_plugin.py").write_text(
        "import os, sys\nprint('probe', os.getcwd(), os.environ['TUNELAB_TRIAL'], sys.argv[1:], flush=True)\n")
    started_in = tmp_path / "elsewhere"
    started_in.mkdir()
    monkeypatch.chdir(started_in)
    monkeypatch.setenv("TUNELAB_PLUGINS", "probe_plugin")
    monkeypatch.delenv("TUNELAB_TRIAL", raising=False)
    with warm.kept():
        server = warm.server()  # started in another directory, without the variable
        monkeypatch.chdir(here)
        log = tmp_path / "probe.log"
        monkeypatch.setattr(compare, "run_cold", cold_fails)
        assert compare.run_child([*COLD, "no-such-command"], log, env={**os.environ, "TUNELAB_TRIAL": "seen"}) == 2
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


def test_an_interrupted_wait_ends_the_run_and_the_server_serves_on(tiny_run_config, tmp_path, monkeypatch):
    """Ctrl-C in the comparison while a forked run trains: the run is killed, the server stays."""
    config = {**tiny_run_config, "train": {**tiny_run_config["train"], "epochs": 500}}

    def interrupt(step, total):
        raise KeyboardInterrupt

    with warm.kept():
        server = warm.server()
        with pytest.raises(KeyboardInterrupt):
            compare.run_child([*COLD, "train", *cli_args(config)], tmp_path / "run.log", interrupt)
        assert not (tmp_path / "run" / "summary.json").exists()
        monkeypatch.setattr(compare, "run_cold", cold_fails)
        assert compare.run_child([*COLD, "no-such-command"], tmp_path / "next.log") == 2
        assert warm.server() is server


def test_an_error_once_the_run_ended_is_raised_without_waiting_for_another_end(tmp_path, monkeypatch):
    """The output handler fails on output read after the server told the run's end: the error is
    raised at once (no kill of a pid that may be another process's now, no wait for an end that
    never comes), and the server serves on. The run prints a line, waits 1 s, then fails; the
    handler takes 2 s over that first line, so the end is told before the rest is read."""
    (tmp_path / "slow_plugin.py").write_text("import time\nprint('first', flush=True)\ntime.sleep(1)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNELAB_PLUGINS", "slow_plugin")
    chunks, raised = [], []

    def slow_then_broken(chunk):
        chunks.append(chunk)
        if len(chunks) == 1:
            time.sleep(2)
        else:
            raise RuntimeError("the progress display broke")

    def run_broken(server):
        try:
            warm.run(server, ["no-such-command"], dict(os.environ), tmp_path / "b.log", slow_then_broken)
        except RuntimeError:
            raised.append(True)

    with warm.kept():
        server = warm.server()
        waiting = threading.Thread(target=run_broken, args=(server,), daemon=True)
        waiting.start()
        waiting.join(timeout=60)
        assert not waiting.is_alive() and raised == [True]
        assert chunks[0] == b"first\n" and b"error: " in chunks[1]
        assert warm.run(server, ["no-such-command"], dict(os.environ), tmp_path / "c.log", len) == 2


def test_a_server_that_dies_during_a_run_fails_that_run_and_the_next_run_gets_a_new_one(tiny_run_config, tmp_path):
    config = {**tiny_run_config, "train": {**tiny_run_config["train"], "epochs": 500}}
    with warm.kept():
        server = warm.server()
        log = tmp_path / "run.log"
        assert compare.run_child([*COLD, "train", *cli_args(config)], log, lambda *s: server.proc.kill()) == 1
        assert log.read_text().splitlines()[-1].startswith("error: the warm server of this run ended")
        assert compare.run_child([*COLD, "no-such-command"], tmp_path / "next.log") == 2
        assert warm.server() is not server


def test_the_server_starts_again_when_the_environment_changed(monkeypatch):
    """Libraries read some variables once, at import: a server imported under others is not reused."""
    with warm.kept():
        first = warm.server()
        assert warm.server() is first
        assert warm.server({**os.environ, "TUNELAB_TRIAL": "{}"}) is first, "read when a run starts, not at import"
        monkeypatch.setenv("HF_HUB_OFFLINE", "1" if os.environ.get("HF_HUB_OFFLINE") != "1" else "0")
        second = warm.server()
        assert second is not first and first.proc.poll() is not None, "the old server ended"
    assert second.proc.poll() is not None, "kept() ends the server it started"
    assert warm.server() is None


def test_warm_start_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("TUNELAB_WARM_START", "0")
    with warm.kept():
        assert warm.server() is None


def test_after_a_server_that_cannot_start_a_run_the_runs_start_cold(tmp_path):
    """warm.run answers None for a server that cannot start the run: run_child then starts it
    cold, and so every run after it (a server whose imports fail would fail for each)."""
    with warm.kept():
        server = warm.server()
        server.proc.kill()
        server.proc.wait()
        assert warm.run(server, ["no-such-command"], dict(os.environ), tmp_path / "a.log", print) is None
        assert warm.server() is None
        log = tmp_path / "b.log"
        assert compare.run_child([*COLD, "no-such-command"], log) == 2
    assert log.read_text().splitlines()[-1].startswith("error: ")
