"""End-to-end: the shipped offline configs of seeds 003 (summarization) and 004 (yes/no over a
passage) train on the real embedded models and ACLSum data, cut to a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab import cli

pytestmark = pytest.mark.e2e
CONFIGS = Path(__file__).parents[1] / "configs"


def test_summarization_config_trains_and_scores_rouge(tmp_path):
    run_dir = tmp_path / "lora"
    rc = cli.main(["train", "--config", str(CONFIGS / "smollm2-135m" / "aclsum-lora.yaml"),
                   "--train.max_steps", "1", "--train.grad_accum", "1", "--data.max_train_examples", "2",
                   "--data.max_validation_examples", "2", "--data.max_test_examples", "2",
                   "--task.max_new_tokens", "8", "--eval.inference_examples", "0", "--output.dir", str(run_dir)])
    assert rc == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["data"] == "aclsum" and summary["steps"] == 1
    assert {"loss", "rouge1", "rouge2", "rougeL"} <= set(summary["test"])
    assert 0 < summary["test"]["loss"] < 10


def test_yes_no_overfit_config_reads_passage_and_claim_pairs(tmp_path):
    run_dir = tmp_path / "overfit"
    rc = cli.main(["train", "--config", str(CONFIGS / "minilm-l6" / "aclsum-yesno-overfit.yaml"),
                   "--train.epochs", "2", "--data.max_eval_examples", "8", "--output.dir", str(run_dir)])
    assert rc == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["data"] == "aclsum-yesno" and summary["steps"] == 2
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["split"] == "train_epoch"] == [1, 2]
    assert all("accuracy" in r for r in records if r["split"] == "train_epoch"), "the overfit check reads it"
