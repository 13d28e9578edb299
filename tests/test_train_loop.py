"""The one training loop: accumulation invariance, best checkpoint, resume after a crash."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import cli_args
from tunelab import cli, runs
from tunelab.tasks import classification


def run_train(cfg: dict) -> int:
    return cli.main(["train", *cli_args(cfg)])


def checkpoint(run_dir) -> dict[str, torch.Tensor]:
    return runs.load_tensors(run_dir / runs.CHECKPOINT / "model.safetensors")


def test_one_step_batch8_equals_batch2_times_accumulation4(tiny_bert_no_dropout_dir, sentiment_csv, tmp_path):
    """Gradient accumulation must not change the update: 8 x 1 == 2 x 4 on the same 8 examples."""
    results = {}
    for batch_size, accum in [(8, 1), (2, 4)]:
        cfg = {
            "model": {"name": str(tiny_bert_no_dropout_dir)},
            "data": {"name": str(sentiment_csv), "max_train_examples": 8},
            "task": {"classifier_dropout": 0.0, "max_length": 32},
            "method": {"name": "full"},
            "train": {"batch_size": batch_size, "grad_accum": accum, "max_steps": 1, "lr": 1e-2, "warmup_ratio": 0.0},
            "output": {"dir": str(tmp_path / f"b{batch_size}x{accum}")},
        }
        assert run_train(cfg) == 0
        results[(batch_size, accum)] = checkpoint(tmp_path / f"b{batch_size}x{accum}")
    big, small = results[(8, 1)], results[(2, 4)]
    assert big.keys() == small.keys()
    for name in big:
        torch.testing.assert_close(big[name], small[name], atol=2e-6, rtol=1e-5, msg=name)
    # and the step really moved the weights (otherwise equality would prove nothing)
    initial = runs.load_tensors(tiny_bert_no_dropout_dir / "model.safetensors")
    moved = [n for n in initial if not torch.equal(initial[n], big["backbone." + n])]
    assert moved, "one optimizer step with lr 1e-2 changed no weight"


def test_run_directory_contents_and_best_checkpoint(tiny_run_config, tmp_path):
    cfg = dict(tiny_run_config, train={**tiny_run_config["train"], "epochs": 3})
    assert run_train(cfg) == 0
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "accuracy" in summary["test"] and "loss" in summary["validation"]
    for key in ["trainable_params", "added_params", "total_params", "trainable_percent",
                "checkpoint_bytes", "wall_time_s", "tokens_per_second", "peak_memory_bytes", "versions", "git_hash"]:
        assert key in summary, key
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    validations = [r for r in records if r["split"] == "validation"]
    assert len(validations) == 3  # one per epoch
    best = max(validations, key=lambda r: r["accuracy"])  # first of the best: ties keep the earlier
    assert summary["best_step"] == best["step"]
    assert summary["validation"]["accuracy"] == pytest.approx(best["accuracy"])
    assert not (run_dir / runs.STATE).exists(), "a finished run keeps no resume snapshot"
    # the checkpoint holds only the trained tensors
    saved = checkpoint(run_dir)
    assert sum(t.numel() for t in saved.values()) == summary["trainable_params"]
    assert summary["checkpoint_bytes"] == (run_dir / "checkpoint" / "model.safetensors").stat().st_size
    # `tunelab eval` rebuilds base + checkpoint and reproduces the test accuracy
    assert cli.main(["eval", str(run_dir), "--json"]) == 0


def test_eval_reproduces_summary(tiny_run_config, tmp_path, capsys):
    assert run_train(tiny_run_config) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "run"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert result["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=1e-9)
    assert result["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-5)


def test_a_run_without_test_never_evaluates_the_test_split(tiny_run_config, tmp_path, monkeypatch):
    """``eval.test: false`` (a tuned comparison's trials): validation picks the checkpoint, and
    the test split is never scored, logged or predicted."""
    seen = []
    real = classification.evaluate
    monkeypatch.setattr(classification, "evaluate", lambda *a, **k: seen.append(k.get("split", a[4] if len(a) > 4 else
                                                                                        "validation")) or real(*a, **k))
    assert run_train({**tiny_run_config, "eval": {**tiny_run_config["eval"], "test": False}}) == 0
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert seen and set(seen) == {"validation"}
    assert summary["test"] == {} and "accuracy" in summary["validation"]
    assert not (run_dir / "predictions.jsonl").exists()
    assert all(json.loads(line)["split"] != "test" for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    # the metrics' declarations travel with the summary, for the report
    assert summary["metrics"]["accuracy"] == {"higher_is_better": True, "kind": "proportion", "field": "correct",
                                              "denominator": None, "exp": False, "in_results": False}


def test_early_stopping_stops_after_patience(tiny_run_config, tmp_path):
    # lr 0 never improves after the first evaluation: patience 2 stops after 3 evaluations.
    cfg = dict(tiny_run_config, train={**tiny_run_config["train"], "epochs": 10, "lr": 1e-12, "patience": 2,
                                       "select_metric": "loss"})
    assert run_train(cfg) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["stopped_early"] is True
    assert len([r for r in records if r["split"] == "validation"]) < 10


def test_killed_and_resumed_run_ends_with_same_weights(tiny_run_config, tmp_path, monkeypatch):
    cfg = dict(tiny_run_config)
    cfg["train"] = {**cfg["train"], "epochs": 3, "eval_every_steps": 2, "batch_size": 4}
    cfg["output"] = {"dir": str(tmp_path / "straight")}
    assert run_train(cfg) == 0
    straight = checkpoint(tmp_path / "straight")
    straight_summary = json.loads((tmp_path / "straight" / "summary.json").read_text())

    # Crash in the middle of the second epoch, between two snapshots.
    real = classification.per_example
    calls = {"n": 0}

    def crash_on_call_23(model, batch):
        calls["n"] += 1  # counts training and validation batches
        if calls["n"] == 23:
            raise KeyboardInterrupt  # what Ctrl-C or a kill looks like from inside the loop
        return real(model, batch)

    cfg["output"] = {"dir": str(tmp_path / "resumed")}
    monkeypatch.setattr(classification, "per_example", crash_on_call_23)
    assert run_train(cfg) == 130
    snapshot = json.loads((tmp_path / "resumed" / runs.STATE / "progress.json").read_text())
    assert snapshot["epoch"] == 1 and snapshot["batches_done"] > 0, "the crash should come mid-way through epoch 2"
    assert not (tmp_path / "resumed" / "summary.json").exists()
    monkeypatch.setattr(classification, "per_example", real)

    assert cli.main(["train", "--resume", str(tmp_path / "resumed")]) == 0
    resumed = checkpoint(tmp_path / "resumed")
    resumed_summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert resumed.keys() == straight.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=0, rtol=0, msg=name)
    assert resumed_summary["best_step"] == straight_summary["best_step"]
    assert resumed_summary["test"]["accuracy"] == straight_summary["test"]["accuracy"]
    assert resumed_summary["steps"] == straight_summary["steps"]


def test_refuses_to_overwrite_a_finished_run(tiny_run_config, tmp_path, capsys):
    assert run_train(tiny_run_config) == 0
    capsys.readouterr()
    assert run_train(tiny_run_config) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def test_default_run_directory_never_clobbers(tiny_run_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = {k: v for k, v in tiny_run_config.items() if k != "output"}
    assert run_train(cfg) == 0
    assert run_train(cfg) == 0
    made = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(made) == 2 and made[1] == made[0] + "-2"
    for name in made:
        saved = json.loads((tmp_path / "runs" / name / "summary.json").read_text())
        config = (tmp_path / "runs" / name / "config.yaml").read_text()
        assert f"dir: runs/{name}" in config and saved["method"] == "lora"


def test_virtual_tokens_beyond_the_context_are_refused(tiny_run_config, tmp_path, capsys):
    cfg = dict(tiny_run_config, method={"name": "prompt", "num_virtual_tokens": 20, "init": "random"},
               task={"max_length": 50})  # 50 + 20 > the tiny BERT's 64 positions
    assert run_train(cfg) == 2
    err = capsys.readouterr().err
    assert "exceeds the model's 64 positions" in err and "at most 44" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("warmup,total", [(0, 10), (3, 10), (10, 10), (2, 1), (0, 0)])
def test_the_schedule_is_transformers_linear_warmup_step_for_step(warmup, total):
    from transformers import get_linear_schedule_with_warmup

    from tunelab.schedule import linear_with_warmup

    ours, theirs = (torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1) for _ in range(2))
    ours_schedule, theirs_schedule = linear_with_warmup(ours, warmup, total), \
        get_linear_schedule_with_warmup(theirs, warmup, total)
    for _ in range(total + 3):
        assert ours_schedule.get_last_lr() == theirs_schedule.get_last_lr()
        ours.step(), theirs.step()
        ours_schedule.step(), theirs_schedule.step()
