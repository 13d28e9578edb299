"""The LSTM baseline through the CLI on tiny local data: the run directory keeps the vocabulary
(and rebuilding agrees with it), eval reproduces the test score, `tunelab predict` prints the
model's softmax for LSTM and encoder runs, and bad input is one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import cli_args, rerecord_checksums
from test_cli_bad_input import assert_one_line_error
from tunelab import cli, runs
from tunelab.build import prepare
from tunelab.config import load_config
from tunelab.data.vocab import VOCAB_FILE, Vocabulary, collate, item
from tunelab.evaluate import rebuild_run
from tunelab.tasks import classification

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture
def lstm_args(sentiment_csv, tmp_path) -> dict:
    return {"data": {"name": str(sentiment_csv)}, "task": {"max_length": 16},
            "method": {"name": "lstm", "embedding_dim": 8, "hidden_size": 8, "min_freq": 2},
            "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2}, "output": {"dir": str(tmp_path / "run")}}


@pytest.fixture
def lstm_run(lstm_args, capsys) -> Path:
    assert cli.main(["train", *cli_args(lstm_args)]) == 0
    capsys.readouterr()
    return Path(lstm_args["output"]["dir"])


def test_run_keeps_the_vocabulary_and_rebuilding_agrees(lstm_run):
    saved = Vocabulary.from_json((lstm_run / VOCAB_FILE).read_text(encoding="utf-8"))
    cfg = load_config(lstm_run / "config.yaml")
    assert cfg.model.name == "lstm" and cfg.method.name == "lstm"
    rebuilt = prepare(cfg)  # from the deterministic train split, not from the file
    assert rebuilt.tokenizer == saved
    assert len(saved) > 2


def test_summary_counts_every_parameter_and_the_checkpoint_holds_them_all(lstm_run):
    summary = json.loads((lstm_run / "summary.json").read_text())
    _, prepared = rebuild_run(lstm_run)
    total = sum(p.numel() for p in prepared.model.parameters())
    assert summary["trainable_params"] == summary["total_params"] == summary["added_params"] == total
    assert summary["trainable_percent"] == 100.0 and summary["model"] == "lstm"
    tensors = runs.load_tensors(lstm_run / "checkpoint" / "model.safetensors")
    assert set(tensors) == {name for name, _ in prepared.model.named_parameters()}
    assert summary["label_names"] == ["negative", "positive"]


def test_eval_reproduces_the_test_accuracy(lstm_run, capsys):
    summary = json.loads((lstm_run / "summary.json").read_text())
    assert cli.main(["eval", str(lstm_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=1e-9)
    assert result["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-6)


def test_eval_reads_the_saved_vocabulary(lstm_run):
    """A rebuilt run encodes with the vocabulary in its directory, not with a fresh one."""
    saved = Vocabulary.from_json((lstm_run / VOCAB_FILE).read_text(encoding="utf-8"))
    reordered = Vocabulary(saved.itos[:2] + saved.itos[:1:-1], saved.stop_words)  # same words, other ids
    (lstm_run / VOCAB_FILE).write_text(reordered.to_json(), encoding="utf-8")
    rerecord_checksums(lstm_run)  # changed on purpose: not a damaged file
    _, prepared = rebuild_run(lstm_run)
    assert prepared.tokenizer == reordered


def test_train_epoch_records(lstm_run):
    records = [json.loads(line) for line in (lstm_run / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["split"] for r in records if r["split"] in ("train_epoch", "validation")]
    assert kinds == ["train_epoch", "validation", "train_epoch", "validation"]


def _softmax_of(run_dir: Path, text: str) -> tuple[list[str], torch.Tensor]:
    """The model's own probabilities for `text`, computed here without predict's code."""
    cfg, prepared = rebuild_run(run_dir)
    model = prepared.model.eval()
    if isinstance(prepared.tokenizer, Vocabulary):
        batch = collate([item(prepared.tokenizer, text, cfg.task.max_length)])
    else:
        batch = prepared.tokenizer([text], truncation=True, max_length=cfg.task.max_length, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return prepared.label_names, torch.softmax(logits[0], -1)


def _check_predict(run_dir: Path, capsys) -> None:
    texts = ["a great and fun film", "the plot was dull, boring and awful"]
    assert cli.main(["predict", str(run_dir), *texts]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert cli.main(["predict", str(run_dir), "--json", *texts]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    for text, line, result in zip(texts, lines, results):
        names, probs = _softmax_of(run_dir, text)
        best = int(probs.argmax())
        label, probability, shown = line.split("\t")
        assert label == result["label"] == names[best]
        assert float(probability) == pytest.approx(probs[best].item(), abs=5e-5)
        assert result["probability"] == pytest.approx(probs[best].item(), abs=1e-6)
        assert result["probabilities"] == pytest.approx(dict(zip(names, probs.tolist())), abs=1e-6)
        assert shown == text and result["text"] == text


def test_predict_prints_the_label_and_its_softmax_probability_lstm(lstm_run, capsys):
    _check_predict(lstm_run, capsys)


def test_predict_on_an_encoder_run(tiny_run_config, capsys):
    assert cli.main(["train", *cli_args(tiny_run_config), "--train.epochs", "1"]) == 0
    capsys.readouterr()
    _check_predict(Path(tiny_run_config["output"]["dir"]), capsys)


def test_killed_and_resumed_lstm_run_ends_with_the_same_weights(lstm_args, tmp_path, monkeypatch):
    """Crash mid-way through epoch 2, resume: same weights, same per-epoch records."""
    args = {**lstm_args, "train": {**lstm_args["train"], "eval_every_steps": 2}}
    args["output"] = {"dir": str(tmp_path / "straight")}
    assert cli.main(["train", *cli_args(args)]) == 0
    real = classification.per_example
    calls = {"n": 0}

    def crash_on_call_14(model, batch):
        # Counts training and validation batches: the memory measurement on the first batch, then
        # an epoch of 6 steps + 3 validations (one batch each), so call 14 is step 9, just after
        # the snapshot at step 8.
        calls["n"] += 1
        if calls["n"] == 14:
            raise KeyboardInterrupt
        return real(model, batch)

    args["output"] = {"dir": str(tmp_path / "resumed")}
    monkeypatch.setattr(classification, "per_example", crash_on_call_14)
    assert cli.main(["train", *cli_args(args)]) == 130
    snapshot = json.loads((tmp_path / "resumed" / runs.STATE / "progress.json").read_text())
    assert snapshot["epoch"] == 1 and snapshot["batches_done"] == 2 and snapshot["epoch_sums"]["examples"] == 16
    monkeypatch.setattr(classification, "per_example", real)
    assert cli.main(["train", "--resume", str(tmp_path / "resumed")]) == 0

    def outcome(name):
        folder = tmp_path / name
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return (runs.load_tensors(folder / "checkpoint" / "model.safetensors"),
                [r for r in records if r["split"] == "train_epoch"])

    (straight, straight_epochs), (resumed, resumed_epochs) = outcome("straight"), outcome("resumed")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=0, rtol=0, msg=name)
    assert resumed_epochs == straight_epochs


# --------------------------------------------------------------------------------------------
# bad input: one line, exit code 2, nothing written


@pytest.fixture
def lstm_cli(run_cli, lstm_args):
    def run(*extra: str):
        result = run_cli(["train", *cli_args(lstm_args), *extra])
        assert not Path(lstm_args["output"]["dir"]).exists()
        return result

    return run


def test_min_freq_below_one(lstm_cli):
    assert_one_line_error(*lstm_cli("--method.min_freq", "0"), "method.min_freq", "greater than or equal to 1")


def test_max_length_below_one(lstm_cli):
    assert_one_line_error(*lstm_cli("--task.max_length", "0"), "task.max_length", "greater than or equal to")


def test_empty_vocabulary_from_min_freq(lstm_cli):
    assert_one_line_error(*lstm_cli("--method.min_freq", "1000"), "vocabulary is empty", "method.min_freq=1000",
                          "lower method.min_freq")


def test_empty_vocabulary_from_stop_words(lstm_cli, isolated):
    only_stop_words = isolated / "stop.csv"
    only_stop_words.write_text("text,label\n"
                               + "".join(f"the a {i % 2 and 'and' or 'of'},{i % 2}\n" for i in range(20)))
    assert_one_line_error(*lstm_cli("--data.name", str(only_stop_words)), "vocabulary is empty",
                          "method.stop_words english")


def test_text_pairs_are_refused(lstm_cli):
    assert_one_line_error(*lstm_cli("--data.text_pair_column", "text"), "method lstm reads one text",
                          "data.text_pair_column")


def test_unknown_lstm_option_lists_the_allowed(lstm_cli):
    assert_one_line_error(*lstm_cli("--method.r", "8"), "method.r", "min_freq", "hidden_size")


def test_model_lstm_goes_with_method_lstm(run_cli):
    assert_one_line_error(*run_cli(["train", "--model.name", "lstm", "--method.name", "lora"]),
                          "model.name lstm", "method.name lstm")


def test_params_explains_the_lstm_has_no_size_before_its_vocabulary(run_cli):
    assert_one_line_error(*run_cli(["params", "--method", "lstm"]), "vocabulary", "summary.json")


@pytest.mark.parametrize("argv, phrases", [
    (["predict", "nowhere-run"], ("give the texts to label, or --file FILE",)),
    (["predict", "nowhere-run", "a fine film"], ("nowhere-run is not a run directory",)),
])
def test_predict_bad_input(run_cli, argv, phrases):
    assert_one_line_error(*run_cli(argv), *phrases)


def test_hub_imdb_shape_works_with_the_same_config(monkeypatch):
    """The hub `imdb` set (train/test/unsupervised, ClassLabel neg/pos) through the same LSTM
    config: nothing assumes the embedded data. The hub is offline here, so its loader is faked."""
    import datasets

    from tunelab.data import sources

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})

    def split(prefix, n):
        return datasets.Dataset.from_dict({"text": [f"{prefix}{i % 4} a {'superb' if i % 2 else 'awful'} film<br />"
                                                    for i in range(n)], "label": [i % 2 for i in range(n)]},
                                          features=features)

    unsupervised = datasets.Dataset.from_dict({"text": ["unlabelled review"] * 4, "label": [-1] * 4},
                                              features=datasets.Features({"text": datasets.Value("string"),
                                                                          "label": datasets.Value("int64")}))
    fake = datasets.DatasetDict({"train": split("trainword", 40), "test": split("testword", 20),
                                 "unsupervised": unsupervised})
    monkeypatch.setattr(sources.datasets, "load_dataset", lambda name, subset=None: fake)
    cfg = load_config(CONFIGS / "lstm" / "movie-reviews.yaml", {"data": {"name": "imdb"}, "method": {"min_freq": 1}})
    prepared = prepare(cfg)
    assert {k: len(v) for k, v in prepared.splits.items()} == {"train": 35, "validation": 5, "test": 20}
    assert prepared.label_names == ["neg", "pos"]
    assert not any(w.startswith("testword") for w in prepared.tokenizer.itos)
    assert {"trainword0", "superb", "awful", "film"} <= set(prepared.tokenizer.itos)


def test_an_lstm_run_records_model_lstm_whatever_the_shared_config_says():
    """A comparison runs `lstm` beside encoder methods from one shared config naming a model."""
    cfg = load_config(None, {"model": {"name": "minilm-l6", "revision": "main"}, "method": {"name": "lstm"}})
    assert cfg.model.name == "lstm" and cfg.model.revision is None
    assert cfg.run_dir().name == "lstm-rt-snippets-lstm"
    assert load_config(None, {"method": {"name": "lora"}}).model.name == "minilm-l6"
