"""Head-only training on features computed once equals training through the frozen body."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import cli_args
from tunelab import cli, runs
from tunelab.build import prepare
from tunelab.config import load_config


def head_config(tiny_run_config, tmp_path, cache: bool) -> dict:
    return {**tiny_run_config, "method": {"name": "head", "cache_features": cache},
            "train": {**tiny_run_config["train"], "epochs": 3, "eval_every_steps": 2},
            "output": {"dir": str(tmp_path / f"cache-{cache}")}}


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_cached_features_give_the_losses_of_the_uncached_path(tiny_run_config, tmp_path):
    for cache in (True, False):
        assert cli.main(["train", *cli_args(head_config(tiny_run_config, tmp_path, cache))]) == 0
    cached, uncached = records(tmp_path / "cache-True"), records(tmp_path / "cache-False")
    assert [(r["split"], r["step"]) for r in cached] == [(r["split"], r["step"]) for r in uncached]
    assert sum(r["split"] == "train_epoch" for r in cached) == 3 and sum(r["split"] == "validation" for r in cached) > 3
    for a, b in zip(cached, uncached):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), (a, b)
    heads = [runs.load_tensors(tmp_path / f"cache-{c}" / runs.CHECKPOINT / "model.safetensors") for c in (True, False)]
    assert heads[0].keys() == heads[1].keys() == {"classifier.weight", "classifier.bias"}
    for name in heads[0]:
        torch.testing.assert_close(heads[0][name], heads[1][name], atol=1e-5, rtol=0)
    # and the cached run's checkpoint rebuilds into a model that scores test as the run did
    summary = json.loads((tmp_path / "cache-True" / "summary.json").read_text())
    assert summary["padding_fraction"] == 0.0  # features have nothing to pad


def test_a_frozen_body_stays_in_eval_mode_while_the_head_trains(tiny_run_config, tmp_path):
    prepared = prepare(load_config(None, head_config(tiny_run_config, tmp_path, cache=False)))
    model = prepared.model.train()
    assert model.training and model.classifier.training and model.dropout.training
    assert not any(m.training for m in model.backbone.modules())
    assert prepared.splits["train"].column_names[:2] == ["input_ids", "token_type_ids"]


def test_cached_splits_hold_one_feature_vector_per_example(tiny_run_config, tmp_path):
    prepared = prepare(load_config(None, head_config(tiny_run_config, tmp_path, cache=True)))
    train = prepared.splits["train"]
    assert train[0]["features"].shape == (16,) and len(prepared.lengths["train"]) == len(train)
    with torch.no_grad():
        example = prepare(load_config(None, head_config(tiny_run_config, tmp_path, cache=False))).splits["train"][0]
        ids = torch.tensor([example["input_ids"]])
        direct = prepared.model.eval().pool(ids, torch.ones_like(ids))[0]
    torch.testing.assert_close(train[0]["features"], direct, atol=1e-5, rtol=0)


def test_eval_and_predict_rebuild_a_cached_run(tiny_run_config, tmp_path, capsys):
    for cache in (True, False):
        assert cli.main(["train", *cli_args(head_config(tiny_run_config, tmp_path, cache))]) == 0
    summary = json.loads((tmp_path / "cache-True" / "summary.json").read_text())
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "cache-True"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=1e-9)
    texts = ["a great fun movie", "the plot was dull and boring"]
    answers = []
    for cache in (True, False):
        assert cli.main(["predict", str(tmp_path / f"cache-{cache}"), *texts, "--json"]) == 0
        answers.append([json.loads(line) for line in capsys.readouterr().out.strip().splitlines()])
    for cached, plain in zip(*answers):
        assert (cached["label"] == plain["label"]
                and cached["probability"] == pytest.approx(plain["probability"], abs=1e-5))
