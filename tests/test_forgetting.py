"""Forgetting: a causal LM's perplexity on general text before training (the base model, the
method switched off) and after (the best checkpoint)."""

from __future__ import annotations

import random

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import tunelab
from conftest import CAUSAL_VOCAB, write_jsonl
from tunelab import forgetting


@pytest.fixture
def general_text(tmp_path):
    rng = random.Random(0)
    words = [w for w in CAUSAL_VOCAB if w.isalpha()]
    return write_jsonl(tmp_path / "general.jsonl", [{"text": " ".join(rng.choice(words) for _ in range(60))}
                                                    for _ in range(40)])


def instruct_run(model_dir, tmp_path, general, method: dict) -> dict:
    rows = [{"text": "good movie fun", "label": "positive"}, {"text": "bad plot dull", "label": "negative"}] * 15
    return {"model.name": str(model_dir), "data.name": str(write_jsonl(tmp_path / "d.jsonl", rows)),
            "task": {"name": "instruct", "template": "Review: {text} Sentiment:",
                     "label_words": ["negative", "positive"], "max_length": 32},
            "method": method, "train.epochs": 2, "train.batch_size": 4, "train.lr": 0.05,
            "eval.general_text": str(general), "eval.general_tokens": 300, "output.dir": str(tmp_path / method["name"])}


@pytest.mark.parametrize("method", [{"name": "lora", "r": 2}, {"name": "prompt", "num_virtual_tokens": 4},
                                    {"name": "full"}])
def test_before_is_the_base_model_and_after_the_trained_one(tiny_causal_dir, tmp_path, general_text, method):
    summary = tunelab.train(None, instruct_run(tiny_causal_dir, tmp_path, general_text, method))
    found = summary.forgetting
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_dir).eval()
    cfg = tunelab.Config.from_yaml(None, {"eval.general_text": str(general_text), "eval.general_tokens": 300})
    token_blocks = forgetting.blocks(cfg, AutoTokenizer.from_pretrained(tiny_causal_dir))
    assert found["tokens"] == sum(len(b) for b in token_blocks) > 250
    assert found["before"] == pytest.approx(forgetting.perplexity(base, token_blocks, 8), rel=1e-5)
    trained = tunelab.load(summary.run_dir).model
    assert found["after"] == pytest.approx(forgetting.perplexity(trained, token_blocks, 8), rel=1e-5)
    assert found["after"] != pytest.approx(found["before"], rel=1e-4)  # training moved it
    assert found["increase"] == pytest.approx(found["after"] / found["before"] - 1)


def test_an_encoder_or_no_general_text_measures_nothing(tiny_run_config, tiny_causal_dir, tmp_path, general_text):
    encoder = tunelab.train(None, {**tiny_run_config, "train": {"epochs": 1, "batch_size": 8},
                                   "eval": {"general_text": str(general_text)}})
    assert encoder.forgetting is None
    run = instruct_run(tiny_causal_dir, tmp_path, general_text, {"name": "lora", "r": 2})
    assert tunelab.train(None, {**run, "eval.general_text": None}).forgetting is None
