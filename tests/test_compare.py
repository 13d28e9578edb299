"""`tunelab compare`: the plan, bad input, one writer per directory, and resume after SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from filelock import FileLock

from tunelab import cli, runs
from tunelab import comparison as compare
from tunelab.methods import METHODS

CONFIGS = Path(__file__).parents[1] / "configs"
NOT_FOR_ENCODER_CLASSIFICATION = {"none"}
"""Zero-/few-shot prompting needs a causal LM; it has its own comparison config."""
BRIDGES = {"peft"}
"""A door to PEFT's tuners, not one method: each needs its type (configs/minilm-l6/compare-zoo.yaml)."""


def tiny_compare_yaml(folder: Path, model: Path, data: Path, methods: dict, **train) -> Path:
    path = folder / "compare.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": str(model)}, "data": {"name": str(data)}, "task": {"max_length": 32},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2, **train}, "eval": {"batch_size": 16},
        "methods": methods}))
    return path


def test_the_methods_a_comparison_knows_are_the_registry():
    assert compare.registered_methods() == METHODS.names()


def test_default_comparison_runs_every_method_on_the_same_budget():
    plan = compare.plan(compare.load_compare_config(None))
    names = [run.name for run in plan.runs]
    assert set(METHODS.names()) - NOT_FOR_ENCODER_CLASSIFICATION - BRIDGES <= set(names)
    assert plan.directory == Path("runs/compare-minilm-l6-rt-snippets")
    # the LSTM baseline has no pretrained model and its own budget in epochs; everything else is shared
    exclude = {"method": True, "output": True, "train": {"lr"}}
    lstm_exclude = {**exclude, "model": True, "train": {"lr", "epochs", "eval_every_steps"}}
    shared = {run.name: run.config.model_dump(exclude=lstm_exclude if run.name == "lstm" else exclude)
              for run in plan.runs}
    for name, cfg in shared.items():  # data, task, epochs, batch, seed: the keys each run shares
        lora = shared["lora"]
        assert cfg == {k: {kk: lora[k][kk] for kk in v} if isinstance(v, dict) else lora[k]
                       for k, v in cfg.items()}, name
    for run in plan.runs:  # the learning rates of the single-method configs
        single_file = CONFIGS / "lstm" / "rt-snippets.yaml" if run.name == "lstm" else \
            CONFIGS / "minilm-l6" / f"rt-snippets-{run.name}.yaml"
        single = yaml.safe_load(single_file.read_text())
        assert run.config.train.lr == pytest.approx(float(single["train"]["lr"])), run.name
        if run.name == "lstm":  # the course default, since one epoch of a model learned from scratch means little
            assert run.config.train.epochs == single["train"]["epochs"] == 5
        assert run.config.method.name == run.name and run.run_dir == plan.directory / run.name


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("**/*.yaml")
                                        if "methods" in yaml.safe_load(p.read_text())), ids=lambda p: p.name)
def test_every_shipped_comparison_config_plans(path):
    plan = compare.plan(compare.load_compare_config(path))
    assert plan.runs and all(run.run_dir.parent == plan.directory for run in plan.runs)


def test_quick_seeds_and_methods_pick_the_runs():
    cfg = compare.load_compare_config(None, quick=True)
    plan = compare.plan(cfg, methods="prompt,lora", seeds=2, quick=True)
    assert plan.directory == Path("runs/compare-minilm-l6-rt-snippets-quick")
    assert [(r.name, r.seed, r.run_dir.name) for r in plan.runs] == [
        ("prompt", 0, "prompt-seed0"), ("prompt", 1, "prompt-seed1"),
        ("lora", 0, "lora-seed0"), ("lora", 1, "lora-seed1")]
    assert all(r.config.train.max_steps == compare.QUICK["train"]["max_steps"] for r in plan.runs)
    # a few examples everywhere, whatever split limits the comparison's own config sets
    assert all(r.config.data.max_validation_examples == r.config.data.max_test_examples == 96 for r in plan.runs)
    assert plan.runs[2].config.method.r == 8 and plan.runs[2].config.train.lr == pytest.approx(2e-3)
    assert list(plan.config.methods) == ["prompt", "lora"]  # compare.yaml says what ran


def test_named_variants_and_registered_methods_without_an_entry(tmp_path, tiny_bert_dir, sentiment_csv):
    path = tiny_compare_yaml(tmp_path, tiny_bert_dir, sentiment_csv,
                             {"lora": {}, "lora-r2": {"method": {"name": "lora", "r": 2}}})
    plan = compare.plan(compare.load_compare_config(path, {"train": {"epochs": 1}}), methods="lora-r2,ia3")
    assert [(r.name, r.config.method.name) for r in plan.runs] == [("lora-r2", "lora"), ("ia3", "ia3")]
    assert plan.runs[0].config.method.r == 2 and plan.runs[0].config.train.epochs == 1


@pytest.mark.parametrize("methods, args, message", [
    ({"lora": {}}, ["--methods", "lora,nope"], "unknown method 'nope' in --methods; known: lora, none, full, head"),
    ({"lora": {}}, ["--methods", ","], "--methods is empty; name one or more of: lora"),
    ({}, [], "`methods` in"),
    ({"lora": {"trian": {"lr": 1}}}, [], "unknown key 'trian' in methods.lora; allowed keys here: model, data"),
    ({"lora": {"method": {"r": 0}}}, [], "methods.lora: method.r: Input should be greater than 0"),
    ({"foo": {}}, [], "methods.foo: unknown method 'foo'; known: none, full, head"),
    ({"lora": {}}, ["--seeds", "0"], "--seeds must be between 1 and 100"),
    ({"lora": {}}, ["--train.nope", "1"], "unknown config key 'train.nope'"),
    ({"lora": {}}, ["--method.r", "4"],
     "unknown config key 'method'; allowed keys here: data, eval, eval_sets, launcher, methods"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_bert_dir, sentiment_csv, capsys, methods, args,
                                                  message):
    path = tiny_compare_yaml(tmp_path, tiny_bert_dir, sentiment_csv, methods)
    assert cli.main(["compare", "--config", str(path), "--output", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_a_run_made_with_another_config_is_refused(tmp_path, tiny_bert_dir, sentiment_csv, capsys):
    path = tiny_compare_yaml(tmp_path, tiny_bert_dir, sentiment_csv, {"lora": {"train": {"lr": 2e-3}}})
    plan = compare.plan(compare.load_compare_config(path), output=str(tmp_path / "out"))
    other = plan.runs[0].config.model_copy(deep=True)
    other.train.lr = 1e-3
    plan.runs[0].run_dir.mkdir(parents=True)
    (plan.runs[0].run_dir / "config.yaml").write_text(yaml.safe_dump(other.model_dump(mode="json")))
    assert cli.main(["compare", "--config", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "holds a run made with train.lr 0.001, this comparison asks for 0.002" in err


def test_a_failing_run_is_reported_and_the_others_go_on(tmp_path, tiny_bert_dir, sentiment_csv, capsys, monkeypatch):
    path = tiny_compare_yaml(tmp_path, tiny_bert_dir, sentiment_csv,
                             {"broken": {"method": {"name": "ia3"}}, "head": {}}, max_steps=2)
    out = tmp_path / "out"
    real = compare.train_command

    def command(run, state, config_file, launcher=None):  # the `broken` run's process dies with an error of its own
        if run.name == "broken":
            return [sys.executable, "-c", "import sys; print('error: something broke'); sys.exit(1)"]
        return real(run, state, config_file, launcher)

    monkeypatch.setattr(compare, "train_command", command)
    assert cli.main(["compare", "--config", str(path), "--output", str(out), "--no-progress"]) == 1
    assert "1 run(s) failed: broken" in capsys.readouterr().err
    assert (out / "head" / "summary.json").is_file()
    md = (out / "report.md").read_text()
    assert "| head |" in md and "`broken`: failed: error: something broke" in md
    # run again: the finished run is skipped (no new process), the failed one is tried again
    mtime = (out / "head" / "summary.json").stat().st_mtime_ns
    monkeypatch.setattr(compare, "train_command",
                        lambda run, state, config_file, launcher=None: command(run, state, config_file)
                        if run.name == "broken" else pytest.fail("a finished run was started again"))
    assert cli.main(["compare", "--config", str(path), "--output", str(out), "--no-progress"]) == 1
    assert (out / "head" / "summary.json").stat().st_mtime_ns == mtime


def read_results(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {row["method"]: row for row in csv.DictReader(fh)}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_sigkilled_comparison_resumes_to_the_uninterrupted_results(tmp_path, tiny_bert_dir, sentiment_csv, capsys):
    path = tiny_compare_yaml(tmp_path, tiny_bert_dir, sentiment_csv, {"lora": {"method": {"r": 2, "alpha": 4}}},
                             epochs=2, batch_size=4, eval_every_steps=3)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tunelab.cli", "compare", "--config", str(path), "--output", str(out),
               "--no-progress"]
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (out / "compare.yaml").exists() or parent.poll() is not None, 120, "the comparison to start")
        # a second comparison on the same directory, while the first one writes it
        assert cli.main(["compare", "--config", str(path), "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"another tunelab compare is writing {out}" in err and err.count("\n") == 1
        # kill it in the middle of the run: lora has a snapshot and is training
        wait_for(lambda: (out / "lora" / runs.STATE).is_dir() or parent.poll() is not None, 240,
                 "lora's first snapshot")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
    finally:
        if parent.poll() is None:
            parent.kill()
    # the training process dies with the comparison (it would otherwise keep the run's lock)
    with FileLock(str(out / "lora" / ".lock"), timeout=30):
        pass
    assert not (out / "lora" / "summary.json").exists(), "the kill must come while lora is training"

    assert cli.main(["compare", "--config", str(path), "--output", str(out), "--no-progress"]) == 0
    log = (out / "logs" / "lora.log").read_text()
    assert log.count("$ ") == 2 and "--resume" in log.split("$ ")[2]

    # the same run without interruption, from the comparison's resolved config
    reference = tmp_path / "reference"
    assert cli.main(["train", "--config", str(out / "configs" / "lora.yaml"), "--output.dir", str(reference)]) == 0
    resumed, straight = (json.loads((d / "summary.json").read_text()) for d in (out / "lora", reference))
    timing = {"train_time_s", "wall_time_s", "tokens_per_second", "train_steps_s", "inference", "peak_memory_bytes",
              "versions", "git_hash"}
    assert {"test", "validation", "trainable_params", "best_step", "steps", "memory",
            "checkpoint_bytes"} <= set(straight)
    assert {"accuracy", "loss"} <= straight["test"].keys() and {"accuracy", "loss"} <= straight["validation"].keys()
    assert ({k: v for k, v in resumed.items() if k not in timing}
            == {k: v for k, v in straight.items() if k not in timing})
    assert resumed["steps"] == 2 * 11  # 42 training examples in batches of 4, 2 epochs
    a = runs.load_tensors(out / "lora" / runs.CHECKPOINT / "model.safetensors")
    b = runs.load_tensors(reference / runs.CHECKPOINT / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and the report shows the resumed run's numbers
    row = read_results(out / "results.csv")["lora"]
    assert float(row["test_accuracy"]) == straight["test"]["accuracy"] and int(row["steps"]) == straight["steps"]
