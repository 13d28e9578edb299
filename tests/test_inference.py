"""The inference cost a run records: what is timed, on which inputs, merged where a method folds
into the weights, and the model left exactly as it was."""

from __future__ import annotations

import pytest
import torch

import tunelab
from tunelab import inference
from tunelab.build import prepare
from tunelab.config import load_config

KEYS = {"batch1_ms", "batch_ms", "examples_per_s", "batch"}


def prepared_for(overrides: dict):
    cfg = load_config(None, overrides)
    return prepare(cfg)


@pytest.fixture
def bert_run(tiny_run_config):
    return {k: v for k, v in tiny_run_config.items() if k != "output"}


@pytest.mark.parametrize("method, folds", [("lora", True), ("ia3", True), ("adapter", False), ("prompt", False),
                                           ("prefix", False), ("bitfit", False), ("full", False)])
def test_only_methods_that_fold_into_the_weights_are_timed_merged(bert_run, method, folds):
    prepared = prepared_for({**bert_run, "method": {"name": method}})
    assert inference.mergeable(prepared.model) is folds
    result = inference.measure(prepared.model, prepared, count=6, batch_size=4)
    assert KEYS <= set(result) and ("merged" in result) is folds
    assert all(result[k] > 0 for k in ("batch1_ms", "batch_ms", "examples_per_s"))
    assert result["batch"] == 4


def test_timing_leaves_the_model_as_it_was(bert_run):
    prepared = prepared_for({**bert_run, "method": {"name": "lora", "r": 4, "init": "gaussian"}})
    model = prepared.model.train()
    batch = prepared.collate([prepared.splits["test"][i] for i in range(4)])
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        before = model.eval()(**inputs)
    model.train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    inference.measure(model, prepared, count=4, batch_size=2)
    assert model.training  # the mode it came in
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**inputs), before, rtol=0, atol=1e-6)
    for name, value in model.state_dict().items():  # merged and unmerged again
        torch.testing.assert_close(value, weights[name], rtol=0, atol=1e-6, msg=name)


def test_a_head_only_run_is_timed_on_tokens_through_its_body(bert_run, monkeypatch):
    """Head-only training caches the body's features; serving runs the body, so that is timed."""
    prepared = prepared_for({**bert_run, "method": {"name": "head"}})
    assert "features" in prepared.splits["test"].column_names  # the cache is on
    seen = []
    prepared.model.backbone.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs["input_ids"]),
                                                  with_kwargs=True)
    inference.measure(prepared.model, prepared, count=3, batch_size=2)
    assert len(seen) == (1 + 3) + (1 + 2)  # the body ran in every call: a warm-up, 3 examples; a warm-up, 2 batches


@pytest.mark.parametrize("method", ["lora", "prefix", "prompt"])
def test_a_causal_lm_gets_its_time_per_generated_token(tiny_causal_dir, tmp_path, method):
    from conftest import write_jsonl

    rows = [{"text": "good movie fun", "label": "positive"}, {"text": "bad plot dull", "label": "negative"}] * 10
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    prepared = prepared_for({"model": {"name": str(tiny_causal_dir)}, "data": {"name": str(data)},
                             "task": {"name": "instruct", "template": "Review: {text} Sentiment:",
                                      "label_words": ["negative", "positive"], "max_length": 32},
                             "method": {"name": method}})
    result = inference.measure(prepared.model, prepared, count=4, batch_size=2)
    assert result["token_ms"] > 0 and ("merged" in result) is (method == "lora")


def test_a_run_records_its_inference_cost_unless_told_not_to(tiny_run_config, tmp_path):
    summary = tunelab.train(None, {**tiny_run_config, "train": {**tiny_run_config["train"], "epochs": 1}})
    assert KEYS <= set(summary.inference) and KEYS <= set(summary.inference["merged"])
    assert summary.inference["batch"] == min(tiny_run_config["eval"]["batch_size"], summary.test_examples)
    off = tunelab.train(None, {**tiny_run_config, "train": {**tiny_run_config["train"], "epochs": 1},
                               "eval": {"inference_examples": 0}, "output": {"dir": str(tmp_path / "off")}})
    assert off.inference is None
