"""A trained run on other data: ``tunelab eval RUN --data.name FILE`` (the run's labels mapped by
name, every row by default), ``tunelab predict RUN --file F --output P`` (a CSV of labels and
probabilities), and ``data.drop_missing`` through ``tunelab train``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import _snapshot, cli_args, write_sentiment_csv
from test_cli_bad_input import assert_one_line_error
from tunelab import cli
from tunelab.build import prepare
from tunelab.config import load_config
from tunelab.data.sources import load_splits
from tunelab.evaluate import predict_run


def run_overrides(model_dir: Path, data: Path, out: Path, **data_options) -> dict:
    return {"model": {"name": str(model_dir)}, "data": {"name": str(data), **data_options},
            "task": {"max_length": 32}, "method": {"name": "lora", "r": 4, "alpha": 8},
            "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2}, "eval": {"batch_size": 16},
            "output": {"dir": str(out)}}


@pytest.fixture(scope="module")
def trained(tiny_bert_dir, tmp_path_factory) -> Path:
    """One tiny sentiment run (seconds), shared by the tests of this module; none writes into it."""
    root = tmp_path_factory.mktemp("trained")
    data = write_sentiment_csv(root / "reviews.csv", n=80)
    run_dir = root / "run"
    assert cli.main(["train", *cli_args(run_overrides(tiny_bert_dir, data, run_dir))]) == 0
    return run_dir


def eval_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert cli.main(["eval", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def rename(path: Path, out: Path, **columns: str) -> Path:
    frame = pd.read_csv(path).rename(columns=columns)
    frame.to_parquet(out) if out.suffix == ".parquet" else frame.to_csv(out, index=False)
    return out


# --------------------------------------------------------------------------------------------
# eval on other data


def test_the_test_rows_as_other_data_give_the_runs_test_accuracy(trained, tmp_path, capsys):
    summary = json.loads((trained / "summary.json").read_text())
    test_rows = load_splits(load_config(trained / "config.yaml").data)["test"]
    other = tmp_path / "test-rows.csv"
    test_rows.to_pandas().to_csv(other, index=False)
    on_other = eval_json(capsys, str(trained), "--data.name", str(other))
    on_own = eval_json(capsys, str(trained), "--split", "test")
    assert on_other["split"] == "all" and on_other["examples"] == len(test_rows) == summary["test_examples"]
    assert on_other["accuracy"] == pytest.approx(on_own["accuracy"], abs=1e-9)
    assert on_other["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=1e-9)
    assert on_other["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-5)


def test_a_copy_of_the_training_file_split_as_in_training(trained, tmp_path, capsys):
    copy = tmp_path / "elsewhere.csv"
    shutil.copy(load_config(trained / "config.yaml").data.name, copy)
    on_copy = eval_json(capsys, str(trained), "--data.name", str(copy), "--split", "test")
    on_own = eval_json(capsys, str(trained), "--split", "test")
    assert on_copy == {**on_own}
    everything = eval_json(capsys, str(trained), "--data.name", str(copy))
    assert everything["examples"] == 80  # all of it: train, validation and test rows


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_eval_on_other_data_is_the_accuracy_of_its_predictions(trained, tmp_path, capsys, suffix):
    """Other columns, one label only, a new format: accuracy = share of predict's labels that
    are the gold labels, computed here from predict (softmax argmax), not from eval."""
    source = write_sentiment_csv(tmp_path / "source.csv", n=30, seed=7)
    frame = pd.read_csv(source)
    frame = frame[frame["label"] == "positive"]  # a subset of the run's labels maps by name
    frame.to_csv(source, index=False)
    other = rename(source, tmp_path / f"tweets{suffix}", text="tweet", label="sentiment")
    result = eval_json(capsys, str(trained), "--data.name", str(other), "--data.text_column", "tweet",
                       "--data.label_column", "sentiment")
    predicted = [p["label"] for p in predict_run(trained, list(frame["text"]))]
    expected = sum(p == g for p, g in zip(predicted, frame["label"])) / len(frame)
    assert result["examples"] == len(frame) == 15
    assert result["accuracy"] == pytest.approx(expected, abs=1e-9)


def test_other_data_keeps_the_runs_label_set(trained, tmp_path):
    """The rebuilt config carries the run's labels as data.labels, in id order."""
    from tunelab.evaluate import with_other_data

    cfg = load_config(trained / "config.yaml")
    other = with_other_data(cfg, trained, {"name": str(tmp_path / "x.csv"), "max_eval_examples": 5})
    assert other.data.labels == json.loads((trained / "summary.json").read_text())["label_names"]
    assert other.data.max_eval_examples == 5 and other.data.name.endswith("x.csv")
    assert other.data.text_column == cfg.data.text_column and other.model == cfg.model and other.method == cfg.method


@pytest.fixture
def frozen_run(trained):
    """Checks that the command left the run directory as it was."""
    before = {p: p.stat().st_mtime_ns for p in _snapshot(trained)}
    yield trained
    assert {p: p.stat().st_mtime_ns for p in _snapshot(trained)} == before


def test_eval_with_a_label_the_run_does_not_know(run_cli, frozen_run, isolated):
    other = isolated / "three-way.csv"
    other.write_text("text,label\ngood film,positive\nok film,neutral\nbad film,negative\n", encoding="utf-8")
    line = assert_one_line_error(*run_cli(["eval", str(frozen_run), "--data.name", str(other)]),
                                 str(other), "'neutral'", "line 3", "negative, positive")
    assert "model's labels" in line


def test_eval_with_a_missing_column_lists_the_files_columns(run_cli, frozen_run, isolated):
    other = isolated / "reviews.csv"
    other.write_text("review,stars\ngood film,5\nbad film,1\n", encoding="utf-8")
    assert_one_line_error(*run_cli(["eval", str(frozen_run), "--data.name", str(other)]),
                          "data.text_column 'text'", str(other), "columns: review, stars")


@pytest.mark.parametrize("argv, phrases", [
    (["--train.lr", "0.1"], ["--data.KEY", "--train"]),
    (["--data.labels", "[a,b]"], ["data.labels"]),
    (["--data.name", "missing.csv"], ["not found", "missing.csv"]),
    (["--data.max_test_examples", "0"], ["data.max_test_examples"]),
])
def test_eval_bad_overrides(run_cli, frozen_run, argv, phrases):
    assert_one_line_error(*run_cli(["eval", str(frozen_run), *argv]), *phrases)


@pytest.mark.parametrize("shots", [0, 2])
def test_an_instruct_run_on_other_data(tiny_causal_dir, tmp_path, capsys, shots):
    """The label words answer the run's labels, mapped by name; demonstrations drawn from the
    data's train split would be evaluated too, so --split all refuses them."""
    rows = [{"text": f"the movie {w}", "label": "positive" if w in ("good", "fun") else "negative"}
            for w in ("good", "bad", "fun", "dull") * 5]
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run_dir = tmp_path / "run"
    assert cli.main(["train", *cli_args({
        "model": {"name": str(tiny_causal_dir)}, "data": {"name": str(data)}, "method": {"name": "none"},
        "task": {"name": "instruct", "template": "Review : {text} Sentiment :", "max_length": 64, "shots": shots},
        "output": {"dir": str(run_dir)}})]) == 0
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": "the plot fun", "label": "positive"}) + "\n" for _ in range(6)))
    capsys.readouterr()
    if shots:
        assert cli.main(["eval", str(run_dir), "--data.name", str(other)]) == 2
        assert "--split test" in capsys.readouterr().err
        return
    result = eval_json(capsys, str(run_dir), "--data.name", str(other))
    assert result["split"] == "all" and result["examples"] == 6 and "invalid_rate" in result
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "the plot", "label": "meh"}) + "\n")
    assert cli.main(["eval", str(run_dir), "--data.name", str(tmp_path / "bad.jsonl")]) == 2
    assert ("label 'meh' (line 1) is not one of the model's labels (data.labels): negative, positive"
            in capsys.readouterr().err)


# --------------------------------------------------------------------------------------------
# predict --file


def test_predict_file_writes_one_row_per_text(trained, tmp_path, capsys):
    texts = ["a great and fun film", "the plot was dull , boring and awful", "the film", "superb, superb"]
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"id": i, "review": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    output = tmp_path / "out" / "predictions.csv"
    output.parent.mkdir()
    capsys.readouterr()
    assert cli.main(["predict", str(trained), "--file", str(source), "--column", "review",
                     "--output", str(output)]) == 0
    assert str(output) in capsys.readouterr().out
    with open(output, newline="", encoding="utf-8") as fh:
        written = list(csv.DictReader(fh))
    assert list(written[0]) == ["review", "label", "probability", "probability_negative", "probability_positive"]
    expected = predict_run(trained, texts)
    assert [row["review"] for row in written] == texts
    for row, want in zip(written, expected):
        assert row["label"] == want["label"]
        assert float(row["probability"]) == pytest.approx(want["probability"], abs=1e-7)
        for name, p in want["probabilities"].items():
            assert float(row[f"probability_{name}"]) == pytest.approx(p, abs=1e-7)
        probs = [float(row["probability_negative"]), float(row["probability_positive"])]
        assert sum(probs) == pytest.approx(1.0, abs=1e-6) and float(row["probability"]) == max(probs)


def test_predict_file_reads_the_runs_text_column_and_prints_without_output(trained, tmp_path, capsys):
    source = tmp_path / "texts.csv"
    source.write_text("text,extra\ngood fun film,1\nawful dull plot,2\n", encoding="utf-8")
    capsys.readouterr()
    assert cli.main(["predict", str(trained), "--file", str(source), "--json"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["text"] for r in results] == ["good fun film", "awful dull plot"]
    assert results == predict_run(trained, ["good fun film", "awful dull plot"])  # JSON keeps every float exactly


@pytest.mark.parametrize("make, extra, phrases", [
    (None, [], ["not found", "nowhere.csv"]),
    (lambda d: (d / "t.csv").write_text("review,id\ngood,1\n") and d / "t.csv", [], ["'text'", "columns: review, id",
                                                                                "--column"]),
    (lambda d: (d / "t.csv").write_text("text\ngood\n") and d / "t.csv", ["--column", "body"],
     ["'body'", "columns: text"]),
    (lambda d: (d / "t.csv").write_bytes(b"text\ncaf\xe9\n") and d / "t.csv", [], ["UTF-8", "line 2"]),
    (lambda d: (d / "t.csv").write_text("text\ngood\n\"\"\nbad\n") and d / "t.csv", [],
     ["1 row has no text", "line 3"]),
    (lambda d: (d / "t.csv").write_text("text\ngood\n") and d / "t.csv", ["--output", "no/such/dir/p.csv"],
     ["does not exist"]),
    (lambda d: (d / "t.csv").write_text("text\ngood\n") and d / "t.csv", ["a text too"], ["one of them"]),
])
def test_predict_file_bad_input(run_cli, frozen_run, isolated, make, extra, phrases):
    source = isolated / "nowhere.csv" if make is None else make(isolated)
    assert_one_line_error(*run_cli(["predict", str(frozen_run), "--file", str(source), *extra]), *phrases)


def test_predict_needs_texts_or_a_file(run_cli, frozen_run):
    assert_one_line_error(*run_cli(["predict", str(frozen_run)]), "--file")


# --------------------------------------------------------------------------------------------
# data.drop_missing through tunelab train


def write_with_holes(path: Path, n: int = 60) -> tuple[Path, int]:
    """The tiny sentiment data with 3 labels and 2 texts missing (one row both): 4 rows unusable."""
    frame = pd.read_csv(write_sentiment_csv(path.with_suffix(".source.csv"), n=n)).astype(object)
    frame.loc[[4, 17, 30], "label"] = [None, "", " "]
    frame.loc[[17, 41], "text"] = ["", None]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")), encoding="utf-8")
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path, 4


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_drop_missing_trains_the_labels_there_are_and_counts_the_dropped(tiny_bert_dir, tmp_path, suffix, capsys):
    data, unusable = write_with_holes(tmp_path / f"holes{suffix}")
    overrides = run_overrides(tiny_bert_dir, data, tmp_path / "run", drop_missing=True)
    prepared = prepare(load_config(None, overrides))
    assert prepared.dropped == unusable and prepared.label_names == ["negative", "positive"]
    assert sum(len(prepared.splits[s]) for s in ("train", "validation", "test")) == 60 - unusable
    assert cli.main(["train", *cli_args(overrides)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["label_names"] == ["negative", "positive"]
    assert summary["dropped_examples"] == unusable
