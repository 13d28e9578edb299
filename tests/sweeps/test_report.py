"""The sweep report on a study built in the test (no training): every trial in trials.csv with
its decoded and tied values, the selection on validation, which plots are drawn, one page.

Each trial is an Optuna FrozenTrial added to an in-memory study, with a fake run directory
(summary.json and metrics.jsonl) where the trial got that far.
"""

from __future__ import annotations

import csv
import datetime
import json
import warnings
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from tunelab.summary import Summary
from tunelab.sweeps.report import cell_means, collect, param_importances, read_curve, write_sweep_report
from tunelab.sweeps.space import SweepSettings, build_space
from tunelab.sweeps.study import encode

BASE = {"model": {"name": "minilm-l6"}, "data": {"name": "rt-snippets"},
        "task": {"name": "classification", "max_length": 64}, "method": {"name": "lora"}}
GRID = {"method.r": [4, 8], "train.lr": [1e-3, 2e-3]}
SEARCH = {**GRID, "method.alpha": "2 * method.r"}
START = datetime.datetime(2025, 1, 1, 12, 0, 0)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_space(search=SEARCH, **settings):
    return build_space(BASE, SweepSettings(search=search, **settings))


def make_study(direction="maximize", objective="accuracy"):
    study = optuna.create_study(direction=direction)
    study.set_user_attr("objective", objective)
    return study


def fake_run(run_dir: Path, validation: dict, test: dict, curve: list[tuple[int, float]], pruned=False,
             metric="accuracy") -> None:
    """A run directory as `tunelab train` leaves it, with only what the report reads filled in."""
    run_dir.mkdir(parents=True)
    Summary(method="lora", model="minilm-l6", data="rt-snippets", task="classification", primary_metric="accuracy",
            higher_is_better=True, select_metric=metric, test=test, validation=validation, best_step=curve[-1][0],
            best_epoch=1.0, steps=curve[-1][0], stopped_early=False, trainable_params=10, added_params=10,
            total_params=100, trainable_percent=10.0, checkpoint_bytes=1, train_time_s=12.5, wall_time_s=20.0,
            tokens_per_second=1.0, train_examples=8, test_examples=8, label_names=["neg", "pos"],
            peak_memory_bytes=1, peak_memory_kind="cpu_peak_rss", memory=None, device="cpu", num_processes=1,
            versions={}, git_hash=None, pruned=pruned).write(run_dir)
    records = [{"split": "train", "step": 1, "epoch": 0.5, "loss": 0.7}]
    records += [{"split": "validation", "step": s, "epoch": s / 4, "loss": 1 - v, metric: v} for s, v in curve]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def add_trial(study, space, directory: Path, params: dict, state=TrialState.COMPLETE, value=None, test=None,
              curve=(), run=True, error=None) -> None:
    """One trial of ``state`` at ``params``; a run directory with summary.json when ``run`` and
    the trial is complete or pruned."""
    number = len(study.trials)
    run_dir = directory / f"trial-{number:03d}"
    metric = study.user_attrs["objective"]
    curve = list(curve) or ([(4, value)] if value is not None else [])
    if run and state in (TrialState.COMPLETE, TrialState.PRUNED):
        fake_run(run_dir, {metric: value}, {"accuracy": test, "loss": 0.5}, curve, state == TrialState.PRUNED, metric)
    encoded = encode(params)
    distributions = {k: CategoricalDistribution([encode({k: v})[k] for v in space.grid[k]]) for k in params}
    ended = state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    waiting = state == TrialState.WAITING  # an enqueued grid point: its values in fixed_params, nothing run
    study.add_trial(FrozenTrial(
        number=number, trial_id=number, state=state, value=trial_value(state, value, curve),
        datetime_start=None if waiting else START,
        datetime_complete=START + datetime.timedelta(seconds=90) if ended else None,
        params={} if waiting else encoded, distributions={} if waiting else distributions,
        user_attrs={"run_dir": str(run_dir), **({"error": error} if error else {})},
        system_attrs={"fixed_params": encoded} if waiting else {},
        intermediate_values={} if waiting else dict(curve)))


def trial_value(state, value, curve):
    """As Optuna keeps it: a pruned trial's value is its last reported one."""
    if state == TrialState.PRUNED:
        return curve[-1][1] if curve else None
    return value if state == TrialState.COMPLETE else None


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def md_table_row(markdown: str, first_cell: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {first_cell} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_trials_csv_has_every_trial_its_decoded_and_tied_values_and_its_state(tmp_path):
    space, study = make_space(), make_study()
    add_trial(study, space, tmp_path, {"method.r": 4, "train.lr": 1e-3}, value=0.8123456789012345, test=0.79)
    add_trial(study, space, tmp_path, {"method.r": 8, "train.lr": 1e-3}, TrialState.PRUNED, curve=[(4, 0.5)])
    add_trial(study, space, tmp_path, {"method.r": 4, "train.lr": 2e-3}, TrialState.FAIL, error="CUDA out of memory")
    add_trial(study, space, tmp_path, {"method.r": 8, "train.lr": 2e-3}, TrialState.RUNNING, run=False)
    written = write_sweep_report(tmp_path, study, space)
    rows = read_csv(written["csv"])
    assert list(rows[0]) == ["number", "state", "method.r", "train.lr", "method.alpha", "validation_accuracy",
                             "test_accuracy", "train_time_s", "wall_time_s", "run_dir"]
    assert [r["state"] for r in rows] == ["complete", "pruned", "failed", "running"]
    assert [(int(r["method.r"]), float(r["train.lr"])) for r in rows] == [(4, 1e-3), (8, 1e-3), (4, 2e-3), (8, 2e-3)]
    assert all(int(r["method.alpha"]) == 2 * int(r["method.r"]) for r in rows)
    assert float(rows[0]["validation_accuracy"]) == 0.8123456789012345  # full precision, read back exactly
    assert rows[0]["test_accuracy"] == "0.79" and rows[0]["train_time_s"] == "12.5"
    assert float(rows[0]["wall_time_s"]) == 90.0 and rows[3]["wall_time_s"] == ""  # still running: no end
    assert [r["validation_accuracy"] for r in rows[1:]] == ["0.5", "", ""]  # pruned: its last validation
    assert rows[2]["test_accuracy"] == "" and rows[2]["run_dir"] == str(tmp_path / "trial-002")
    markdown = written["markdown"].read_text()
    assert "CUDA out of memory" in markdown and "1 running" in markdown


def test_a_list_value_reads_back_as_the_list_and_a_waiting_trial_shows_its_point(tmp_path):
    search = {**SEARCH, "method.target_modules": [["query"], ["query", "value"]]}
    space, study = make_space(search), make_study()
    add_trial(study, space, tmp_path, {"method.r": 4, "train.lr": 1e-3, "method.target_modules": ["query", "value"]},
              value=0.7, test=0.7)
    add_trial(study, space, tmp_path, {"method.r": 8, "train.lr": 2e-3, "method.target_modules": ["query"]},
              TrialState.WAITING, run=False)
    rows = read_csv(write_sweep_report(tmp_path, study, space)["csv"])
    assert [json.loads(r["method.target_modules"]) for r in rows] == [["query", "value"], ["query"]]
    assert rows[1]["state"] == "waiting" and rows[1]["method.alpha"] == "16"


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_the_selected_trial_is_the_best_on_validation_even_when_another_is_better_on_test(tmp_path, direction):
    space = make_space(objective={"metric": "accuracy", "direction": direction})
    study = make_study(direction)
    best, other = (0.85, 0.80) if direction == "maximize" else (0.80, 0.85)
    add_trial(study, space, tmp_path, {"method.r": 4, "train.lr": 1e-3}, value=other, test=0.95)  # best on test
    add_trial(study, space, tmp_path, {"method.r": 8, "train.lr": 2e-3}, value=best, test=0.70)
    written = write_sweep_report(tmp_path, study, space)
    assert written["summary"] == (f"selected trial 1 (method.r=8, train.lr=0.002): validation accuracy {best:.4f}, "
                                  "test accuracy 0.7000; 2 complete, 0 pruned, 0 failed of 4")
    markdown = written["markdown"].read_text()
    assert "Trial **1** (`method.r` = 8, `train.lr` = 0.002, `method.alpha` = 16)" in markdown
    assert "test accuracy **0.7000**" in markdown and "selected on the validation objective alone" in markdown
    assert md_table_row(markdown, "1 (selected)")[1] == "complete"


def test_a_two_key_grid_gets_a_heatmap_of_cell_means_and_three_keys_none(tmp_path):
    space, study = make_space(), make_study()
    for r, lr, value in [(4, 1e-3, 0.6), (4, 1e-3, 0.7), (8, 1e-3, 0.8), (8, 2e-3, 0.9)]:
        add_trial(study, space, tmp_path / "two", {"method.r": r, "train.lr": lr}, value=value, test=value)
    write_sweep_report(tmp_path / "two", study, space)
    assert (tmp_path / "two" / "heatmap.png").read_bytes().startswith(b"\x89PNG")
    assert "![Validation accuracy per grid cell](heatmap.png)" in (tmp_path / "two" / "sweep.md").read_text()
    means = cell_means(collect(study, space).rows, ("method.r", [4, 8]), ("train.lr", [1e-3, 2e-3]))
    assert means == [[pytest.approx(0.65), 0.8], [None, 0.9]]  # repeats averaged; a cell never run is empty

    three = make_space({**GRID, "train.epochs": [1, 2]})
    study3 = make_study()
    add_trial(study3, three, tmp_path / "three", {"method.r": 4, "train.lr": 1e-3, "train.epochs": 1}, value=0.6)
    (tmp_path / "three" / "heatmap.png").write_bytes(b"from an earlier report")
    write_sweep_report(tmp_path / "three", study3, three)
    assert not (tmp_path / "three" / "heatmap.png").exists()
    assert (tmp_path / "three" / "objective.png").exists() and (tmp_path / "three" / "curves.png").exists()


def test_a_pruned_trial_shows_as_pruned(tmp_path):
    space, study = make_space(pruner="median"), make_study()
    add_trial(study, space, tmp_path, {"method.r": 4, "train.lr": 1e-3}, value=0.8, test=0.8,
              curve=[(2, 0.7), (4, 0.8)])
    add_trial(study, space, tmp_path, {"method.r": 8, "train.lr": 1e-3}, TrialState.PRUNED, curve=[(2, 0.4)])
    written = write_sweep_report(tmp_path, study, space)
    assert [r["state"] for r in read_csv(written["csv"])] == ["complete", "pruned"]
    markdown = written["markdown"].read_text()
    assert md_table_row(markdown, "1")[1] == "pruned" and "pruner `median`" in markdown
    assert written["summary"].endswith("1 complete, 1 pruned, 0 failed of 4")
    assert (tmp_path / "curves.png").exists() and (tmp_path / "objective.png").exists()


def test_a_study_without_a_complete_trial_says_so(tmp_path):
    space, study = make_space(), make_study()
    add_trial(study, space, tmp_path, {"method.r": 4, "train.lr": 1e-3}, TrialState.PRUNED, curve=[(2, 0.4)])
    add_trial(study, space, tmp_path, {"method.r": 8, "train.lr": 1e-3}, TrialState.FAIL)
    written = write_sweep_report(tmp_path, study, space)
    assert written["summary"] == "no complete trial; 0 complete, 1 pruned, 1 failed of 4"
    markdown = written["markdown"].read_text()
    assert "No complete trial" in markdown and "(selected)" not in markdown
    assert not (tmp_path / "heatmap.png").exists() and "no error recorded" in markdown


def test_importances_are_drawn_with_enough_trials_and_a_failure_is_one_sentence(tmp_path, monkeypatch):
    space, study = make_space(), make_study()
    for i in range(12):  # three repeats of the grid: the top 10 % holds two trials, both with r = 8
        r, lr = GRID["method.r"][i % 2], GRID["train.lr"][i // 2 % 2]
        value = 0.5 + 0.1 * (r == 8) + 0.001 * i
        add_trial(study, space, tmp_path / "ok", {"method.r": r, "train.lr": lr}, value=value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # optuna computes them without a complaint
        importances, why_not = param_importances(study, space, 12)
    assert why_not is None and importances["method.r"] > importances["train.lr"]
    write_sweep_report(tmp_path / "ok", study, space)
    assert (tmp_path / "ok" / "importances.png").exists()

    def broken(*args, **kwargs):
        raise RuntimeError("no variance\nsecond line")

    monkeypatch.setattr(optuna.importance, "get_param_importances", broken)
    written = write_sweep_report(tmp_path / "ok", study, space)
    assert "Parameter importances could not be computed (RuntimeError: no variance)." in written["markdown"].read_text()
    assert not (tmp_path / "ok" / "importances.png").exists()


def test_too_few_complete_trials_for_importances_is_said(tmp_path):
    space, study = make_space(), make_study()
    add_trial(study, space, tmp_path, {"method.r": 4, "train.lr": 1e-3}, value=0.5)
    markdown = write_sweep_report(tmp_path, study, space)["markdown"].read_text()
    assert "Parameter importances need at least 11 complete trials (this sweep has 1)." in markdown


def test_the_curve_is_read_from_the_validation_records_of_metrics_jsonl(tmp_path):
    fake_run(tmp_path / "run", {"accuracy": 0.8}, {"accuracy": 0.8}, [(2, 0.6), (4, 0.8)])
    with open(tmp_path / "run" / "metrics.jsonl", "a") as fh:
        fh.write('{"split": "validation", "step": 6, "accu')  # a line cut by a kill
    assert read_curve(tmp_path / "run", "accuracy") == [(2, 0.6), (4, 0.8)]
    assert read_curve(tmp_path / "missing", "accuracy") == []


class Sources(HTMLParser):
    """Every URL the page would fetch (src, href) and every tag."""

    def __init__(self):
        super().__init__()
        self.urls, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [value for name, value in attrs if name in ("src", "href")]


def test_sweep_html_is_one_self_contained_page_with_the_config(tmp_path):
    space, study = make_space(), make_study()
    for r, lr, value in [(4, 1e-3, 0.6), (8, 1e-3, 0.8), (4, 2e-3, 0.7), (8, 2e-3, 0.9)]:
        add_trial(study, space, tmp_path, {"method.r": r, "train.lr": lr}, value=value, test=value)
    (tmp_path / "sweep.yaml").write_text("sampler: grid\nsearch:\n  method.r: [4, 8]\n")
    written = write_sweep_report(tmp_path, study, space)
    page = Sources()
    page.feed(written["html"].read_text())
    assert page.urls and all(url.startswith("data:image/png;base64,") for url in page.urls)
    assert "script" not in page.tags and "link" not in page.tags
    assert len(page.urls) == len(list(tmp_path.glob("*.png"))) == 3  # objective, heatmap, curves
    assert "```yaml\nsampler: grid\nsearch:\n  method.r: [4, 8]\n```" in written["markdown"].read_text()
