"""A merged export of a classification run is a folder ``pipeline("text-classification")``
loads in one line: the run's label names, and every label's probability equal to what
``tunelab predict`` gives for the same texts (1e-5). With ``task.head: auto`` it is
transformers' own classifier for the architecture; tunelab's pooled head comes with its code
(``trust_remote_code=True``). Tiny BERT and tiny Llama runs, trained for one epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, pipeline

from conftest import cli_args, write_sentiment_csv
from tunelab.cli import main
from tunelab.evaluate import predict_run

TEXTS = ["the movie was very good", "a dull and boring plot", "great fun but the story was weak", "the film"]
LABELS = ["negative", "positive"]
LORA = {"name": "lora", "r": 4, "alpha": 8}
AUTO_LORA = {**LORA, "target_modules": "all-linear"}
"""all-linear: the tiny random BERT's first token, which BERT's head reads, barely depends on the text
until every layer adapts."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir, tiny_causal_dir):
    """``trained(model, task, method)``: a run directory, trained once per module for each set-up."""
    folder = tmp_path_factory.mktemp("pipeline-runs")
    data = write_sentiment_csv(folder / "reviews.csv")
    made: dict[str, Path] = {}

    def train(model: str, task: dict, method: dict) -> Path:
        key = json.dumps([model, task, method], sort_keys=True)
        if key not in made:
            run_dir = folder / f"run-{len(made)}"
            cfg = {"model": {"name": str(tiny_bert_dir if model == "bert" else tiny_causal_dir)},
                   "data": {"name": str(data)}, "task": {"max_length": 32, **task}, "method": method,
                   "train": {"epochs": 3, "batch_size": 8, "lr": 3e-2}, "eval": {"batch_size": 16},
                   "output": {"dir": str(run_dir)}}
            assert main(["train", *cli_args(cfg)]) == 0
            made[key] = run_dir
        return made[key]

    return train


def export_merged(run_dir: Path, capsys) -> Path:
    output = run_dir.parent / f"{run_dir.name}-merged-{len(list(run_dir.parent.iterdir()))}"
    capsys.readouterr()
    rc = main(["export", str(run_dir), "--format", "merged", "--output", str(output)])
    assert rc == 0, capsys.readouterr().err
    return output


def pipeline_probabilities(output: Path, trust_remote_code: bool) -> list[dict[str, float]]:
    classify = pipeline("text-classification", model=str(output), top_k=None, trust_remote_code=trust_remote_code)
    return [{d["label"]: d["score"] for d in row} for row in classify(TEXTS)]


def tunelab_probabilities(run_dir: Path) -> list[dict[str, float]]:
    return [row["probabilities"] for row in predict_run(run_dir, TEXTS)]


def as_tensor(rows: list[dict[str, float]]) -> torch.Tensor:
    return torch.tensor([[row[label] for label in LABELS] for row in rows], dtype=torch.float64)


@pytest.mark.parametrize("model, task, method", [
    ("bert", {"head": "auto"}, AUTO_LORA),
    ("bert", {"head": "auto"}, {"name": "full"}),
    ("bert", {}, LORA),
    ("bert", {"pooling": "cls"}, {"name": "head"}),
    ("llama", {"head": "auto"}, LORA),
    ("llama", {"pooling": "last"}, {"name": "bitfit"}),
], ids=lambda v: v if isinstance(v, str) else "-".join(str(x) for x in v.values()) or "pooled")
def test_pipeline_on_the_merged_export_gives_the_runs_labels_and_probabilities(trained, capsys, model, task,
                                                                                method):
    run_dir = trained(model, task, method)
    output = export_merged(run_dir, capsys)
    remote = task.get("head", "pooled") == "pooled"
    assert (output / "pooled_head.py").is_file() == remote  # the pooled head's code comes with it
    theirs, ours = pipeline_probabilities(output, remote), tunelab_probabilities(run_dir)
    assert all(sorted(row) == LABELS for row in theirs)  # the run's names, not LABEL_0 / LABEL_1
    assert (as_tensor(ours).diff(dim=0).abs() > 1e-4).any()  # the texts get different probabilities
    torch.testing.assert_close(as_tensor(theirs), as_tensor(ours), atol=1e-5, rtol=0)


def test_an_auto_head_export_is_the_architectures_own_classifier(trained, capsys):
    output = export_merged(trained("bert", {"head": "auto"}, AUTO_LORA), capsys)
    config = json.loads((output / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and "auto_map" not in config
    assert config["id2label"] == {"0": "negative", "1": "positive"} and config["label2id"] == {"negative": 0,
                                                                                            "positive": 1}
    assert not list(output.glob("*.py"))
    assert "trust_remote_code" not in (output / "README.md").read_text()


def test_the_pooled_head_without_its_code_is_a_new_head_never_its_weights_under_another_pooling(trained, capsys):
    """Without trust_remote_code transformers builds BERT's own classifier: its classifier must
    be missing from the folder (new, and warned about), not filled with the pooled head's weights."""
    output = export_merged(trained("bert", {}, LORA), capsys)
    config = json.loads((output / "config.json").read_text())
    assert config["auto_map"] == {"AutoModelForSequenceClassification": "pooled_head.TunelabForSequenceClassification"}
    assert config["tunelab_pooling"] == "mean" and config["id2label"] == {"0": "negative", "1": "positive"}
    native, info = AutoModelForSequenceClassification.from_pretrained(output, output_loading_info=True)
    assert type(native).__name__ == "BertForSequenceClassification"
    assert {"classifier.weight", "classifier.bias"} <= set(info["missing_keys"])
    assert "trust_remote_code=True" in (output / "README.md").read_text()


def test_peft_export_of_an_auto_head_run_is_refused_in_one_line(trained, capsys):
    run_dir = trained("bert", {"head": "auto"}, AUTO_LORA)
    capsys.readouterr()
    rc = main(["export", str(run_dir), "--format", "peft", "--output", str(run_dir.parent / "refused")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--format merged" in err
    assert not (run_dir.parent / "refused").exists()
