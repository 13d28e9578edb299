"""`tunelab sweep` on a tiny model: the grid exactly, pruning, two workers, a kill and a re-run.

Every trial is a `tunelab train` process on the tiny BERT and the tiny CSV of conftest
(seconds each); the study is Optuna's journal file in the sweep directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import write_sentiment_csv
from tunelab import cli
from tunelab.study import process_alive
from tunelab.sweeps.study import JOURNAL, STUDY_NAME

GRID = {"method.r": [2, 4], "train.lr": [1.0e-2, 2.0e-2]}


def sweep_yaml(path: Path, tiny_run_config: dict, search: dict, **settings) -> Path:
    base = {k: v for k, v in tiny_run_config.items() if k != "output"}
    base["train"] = {**base["train"], "epochs": 1, "eval_every_steps": 2}
    path.write_text(yaml.safe_dump({**base, "search": search, "sampler": "grid",
                                    "objective": {"metric": "accuracy", "direction": "maximize"}, **settings}))
    return path


def load(directory: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(directory / JOURNAL)))
    return optuna.load_study(study_name=STUDY_NAME, storage=storage)


def finished(study: optuna.Study) -> dict[tuple, float]:
    return {(t.params["method.r"], t.params["train.lr"]): t.value
            for t in study.trials if t.state == TrialState.COMPLETE}


@pytest.fixture(scope="module")
def grid_config(tmp_path_factory, tiny_bert_dir):
    folder = tmp_path_factory.mktemp("sweep")
    run = {"model": {"name": str(tiny_bert_dir)}, "data": {"name": str(write_sentiment_csv(folder / "reviews.csv"))},
           "task": {"max_length": 32}, "method": {"name": "lora", "r": 4, "alpha": 8},
           "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2}, "eval": {"batch_size": 16}}
    return sweep_yaml(folder / "sweep.yaml", run, {**GRID, "method.alpha": "2 * method.r"})


@pytest.fixture(scope="module")
def straight(grid_config):
    """The grid swept once, uninterrupted: the reference the other tests compare with."""
    out = grid_config.parent / "straight"
    assert cli.main(["sweep", "--config", str(grid_config), "--output", str(out), "--no-progress"]) == 0
    return out


def test_a_grid_sweep_runs_exactly_the_grid_and_selects_on_validation(straight, tmp_path):
    out = straight
    study = load(out)
    assert len(study.trials) == 4 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert sorted(finished(study)) == sorted((r, lr) for r in GRID["method.r"] for lr in GRID["train.lr"])
    for trial in study.trials:  # every trial an ordinary run directory; alpha tied to r
        run = yaml.safe_load((Path(trial.user_attrs["run_dir"]) / "config.yaml").read_text())
        assert run["method"]["alpha"] == 2 * run["method"]["r"] == 2 * trial.params["method.r"]
        summary = json.loads((Path(trial.user_attrs["run_dir"]) / "summary.json").read_text())
        assert trial.value == summary["validation"]["accuracy"]
    best = max(study.trials, key=lambda t: t.value)
    assert study.best_trial.number == best.number
    assert f"Trial **{best.number}**" in (out / "sweep.md").read_text()
    assert cli.main(["report", str(out / f"trial-{best.number:03d}"), "--output", str(tmp_path / "r")]) == 0


def test_the_median_pruner_stops_a_trial_worse_at_its_first_validation(tmp_path, tiny_run_config):
    # The first trial barely moves (lr 1e-9); the second's lr 1.0 sends its validation loss from
    # 0.70 to about 7 at the first validation: worse than the median of the trials before it.
    config = sweep_yaml(tmp_path / "sweep.yaml", tiny_run_config, {"train.lr": [1.0e-9, 1.0]}, pruner="median",
                        pruner_startup_trials=1, objective={"metric": "loss", "direction": "minimize"})
    out = tmp_path / "pruned"
    assert cli.main(["sweep", "--config", str(config), "--output", str(out), "--no-progress"]) == 0
    study = load(out)
    states = {t.params["train.lr"]: t.state for t in study.trials}
    assert states == {1.0e-9: TrialState.COMPLETE, 1.0: TrialState.PRUNED}
    pruned = next(t for t in study.trials if t.state == TrialState.PRUNED)
    summary = json.loads((Path(pruned.user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["pruned"] is True and summary["steps"] == 2  # stopped at its first validation
    assert list(pruned.intermediate_values) == [2]


def test_runs_that_ended_before_the_study_heard_are_told_from_their_summaries(grid_config, straight, tmp_path):
    """A sweep killed after a trial's run wrote its summary, before the study was told: the run is
    not started again (it would refuse its finished directory); its summary gives the trial's value."""
    out = tmp_path / "ended"
    for run_dir in sorted(straight.glob("trial-*")):
        shutil.copytree(run_dir, out / run_dir.name)
    assert cli.main(["sweep", "--config", str(grid_config), "--output", str(out), "--no-progress"]) == 0
    assert finished(load(out)) == finished(load(straight))
    assert not list((out / "logs").glob("*.log")), "no run was started"


def test_a_killed_sweep_continues_on_two_workers_with_the_same_trials(grid_config, straight, tmp_path):
    """Killed while its second trial trains, then continued by two worker processes: the killed
    trial resumes in its own run directory, the two workers run disjoint trials whose union is the
    grid, and every point ends with the uninterrupted sweep's validation number."""
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "tunelab.cli", "sweep", "--config", str(grid_config), "--output", str(out),
               "--no-progress"]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, running = time.time() + 240, []
    while time.time() < deadline:  # kill once one trial is done and the next is training
        time.sleep(0.02)
        if (out / JOURNAL).exists():
            try:
                trials = load(out).trials
            except KeyError:  # the journal is there a moment before the study in it
                continue
            running = [Path(t.user_attrs["run_dir"]) for t in trials
                       if t.state == TrialState.RUNNING and "run_dir" in t.user_attrs]
            if any(t.state == TrialState.COMPLETE for t in trials) and running and \
                    (running[0] / "config.yaml").exists():
                break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert running, "no trial was seen training within 240 s"
    # its worker process may take a moment longer to end; while it lives its trial is not taken back
    workers = {t.user_attrs["worker"] for t in load(out).trials if t.state == TrialState.RUNNING}
    while any(process_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.02)
    done_before = {t.number for t in load(out).trials if t.state == TrialState.COMPLETE}
    # a tiny run may end between the look and the kill: then it is told from its summary, not run again
    ended_unheard = (running[0] / "summary.json").exists()
    assert cli.main(["sweep", "--config", str(grid_config), "--output", str(out), "--workers", "2",
                     "--no-progress"]) == 0
    study = load(out)
    # the interrupted trial is not failed and repeated: it went back to waiting and resumed its own run
    assert not any(t.state == TrialState.FAIL for t in study.trials) and len(study.trials) == 4
    points = [(t.params["method.r"], t.params["train.lr"]) for t in study.trials]
    assert len(set(points)) == 4 and all(t.state == TrialState.COMPLETE for t in study.trials)
    continued = {t.user_attrs["worker"] for t in study.trials if t.number not in done_before}
    assert len(continued) == 2, "both workers ran trials"
    logs = [p.read_text() for p in (out / "logs").glob("trial-*.log")]
    # started again in its own run directory, unless it had ended
    assert sorted(log.count("$ ") for log in logs) == ([1, 1, 1, 1] if ended_unheard else [1, 1, 1, 2])
    assert finished(study) == finished(load(straight))  # the same points, the same validation numbers


def test_a_second_sweep_with_another_config_is_refused(straight, tmp_path, tiny_run_config, capsys):
    other = sweep_yaml(tmp_path / "other.yaml", tiny_run_config, {"method.r": [2]})
    capsys.readouterr()
    assert cli.main(["sweep", "--config", str(other), "--output", str(straight), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: this sweep's study was made from another config") and err.count("\n") == 1
