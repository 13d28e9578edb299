"""Summarization: ROUGE against the reference implementation, the summary-only loss, the CLI."""

from __future__ import annotations

import json

import pytest
from rouge_score import rouge_scorer

from conftest import cli_args, write_jsonl
from tunelab import cli
from tunelab.build import prepare
from tunelab.config import load_config
from tunelab.tasks import causal, summarization


def test_rouge_of_known_strings():
    # "the cat sat" against "the cat sat on the mat": unigram P = 3/3, R = 3/6, F = 2/3;
    # bigrams P = 2/2, R = 2/5, F = 4/7; the longest common subsequence is 3 tokens, like ROUGE-1.
    scores = summarization.rouge(["the cat sat"], ["the cat sat on the mat"])
    assert scores["rouge1"] == pytest.approx(2 / 3)
    assert scores["rouge2"] == pytest.approx(4 / 7)
    assert scores["rougeL"] == pytest.approx(2 / 3)
    assert summarization.rouge(["dogs ran"], ["the cat sat"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_rouge_equals_the_rouge_score_package_averaged_over_pairs():
    predictions = ["The police arrested two men on Tuesday.", "Stocks fell sharply", "a new study finds coffee helps"]
    references = ["Two men were arrested by police on Tuesday night.", "Stocks rose slightly on Friday",
                  "Coffee may help, according to a new study"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    expected = {k: sum(scorer.score(r, p)[k].fmeasure for p, r in zip(predictions, references)) / 3
                for k in ("rouge1", "rouge2", "rougeL")}
    assert summarization.rouge(predictions, references) == pytest.approx(expected)


@pytest.fixture
def news_dir(tmp_path):
    folder = tmp_path / "news"
    folder.mkdir()
    words = "the cat sat on the mat and the dog ran very fun but dull plot".split()
    rows = [{"article": " ".join(words[i % 5:] + words[:i % 5]) * 3, "highlights": " ".join(words[i % 7:i % 7 + 4])}
            for i in range(14)]
    write_jsonl(folder / "train.jsonl", rows[:8])
    write_jsonl(folder / "validation.jsonl", rows[8:11])
    write_jsonl(folder / "test.jsonl", rows[11:])
    return folder


def summarization_config(model_dir, data_dir, tmp_path, method=None):
    return {"model": {"name": str(model_dir)}, "data": {"name": str(data_dir)},
            "task": {"name": "summarization", "template": "{article} TL ; DR :", "summary_column": "highlights",
                     "max_length": 48, "max_summary_tokens": 6, "max_new_tokens": 5},
            "method": method or {"name": "lora", "r": 2}, "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2},
            "output": {"dir": str(tmp_path / "run")}}


def test_articles_are_truncated_to_fit_and_the_loss_is_on_the_summary(tiny_causal_dir, news_dir, tmp_path):
    p = prepare(load_config(None, summarization_config(tiny_causal_dir, news_dir, tmp_path)))
    batch = p.collate([p.splits["train"][i] for i in range(4)])
    for row in range(4):
        prompt, summary = p.splits["train"][row]["prompt_ids"], p.splits["train"][row]["summary_ids"]
        assert len(prompt) + len(summary) <= 48 and summary[-1] == p.tokenizer.eos_token_id
        assert p.tokenizer.decode(prompt).endswith("TL ; DR :"), "the cue after the article survives truncation"
        labelled = (batch["labels"][row] != causal.IGNORE).nonzero().flatten().tolist()
        assert labelled == list(range(len(prompt), len(prompt) + len(summary)))


@pytest.mark.parametrize("method", [{"name": "lora", "r": 2},
                                    {"name": "prompt", "num_virtual_tokens": 3, "init_text": "the"},
                                    {"name": "head"}])
def test_summarization_runs_end_to_end_with_rouge(tiny_causal_dir, news_dir, tmp_path, method):
    cfg = summarization_config(tiny_causal_dir, news_dir, tmp_path, method)
    assert cli.main(["train", *cli_args(cfg)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["primary_metric"] == "rougeL" and summary["select_metric"] == "loss"
    assert {"rouge1", "rouge2", "rougeL", "loss"} <= summary["test"].keys() and "loss" in summary["validation"]
    assert 0 <= summary["test"]["rouge2"] <= summary["test"]["rouge1"] <= 1
    samples = json.loads((tmp_path / "run" / "samples.json").read_text())["after"]
    assert len(samples) == 3 and {"generated", "reference"} == set(samples[0])


def test_missing_summary_column_lists_the_columns(tiny_causal_dir, news_dir, tmp_path, capsys):
    cfg = summarization_config(tiny_causal_dir, news_dir, tmp_path)
    cfg["task"]["summary_column"] = "summary"
    assert cli.main(["train", *cli_args(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'summary'" in err and "article, highlights" in err
