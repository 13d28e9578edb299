"""Classification by a causal LM: answer masks, scored and generated labels, few-shot, BoolQ."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import cli_args, write_jsonl
from tunelab import cli
from tunelab.build import prepare
from tunelab.config import load_config
from tunelab.tasks import causal, decoding, instruct

POS, NEG = ["good", "great", "fun", "superb"], ["bad", "awful", "dull", "boring"]


def reviews(n: int, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        filler = rng.sample(["the", "movie", "plot", "was", "very", "film", "story"], rng.randint(1, 5))
        rows.append({"text": " ".join([*filler, rng.choice(POS if label else NEG)]),
                     "label": "positive" if label else "negative"})
    return rows


@pytest.fixture
def review_dir(tmp_path):
    folder = tmp_path / "reviews"
    folder.mkdir()
    for split, n, seed in (("train", 24, 0), ("validation", 8, 1), ("test", 10, 2)):
        write_jsonl(folder / f"{split}.jsonl", reviews(n, seed))
    return folder


def instruct_config(model_dir, data_dir, tmp_path, method=None, **task):
    return {"model": {"name": str(model_dir)}, "data": {"name": str(data_dir)},
            "task": {"name": "instruct", "template": "Review : {text} Sentiment :", "max_length": 64, **task},
            "method": method or {"name": "lora", "r": 2, "alpha": 4},
            "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2}, "eval": {"batch_size": 4},
            "output": {"dir": str(tmp_path / "run")}}


@pytest.fixture
def prepared(tiny_causal_dir, review_dir, tmp_path):
    return prepare(load_config(None, instruct_config(tiny_causal_dir, review_dir, tmp_path)))


def loader(prepared, split, batch_size):
    return DataLoader(prepared.splits[split], batch_size=batch_size, collate_fn=prepared.collate)


def test_loss_mask_covers_exactly_the_answer_tokens(prepared):
    batch = next(iter(loader(prepared, "train", 4)))
    answers = prepared.extras["answers"]
    for row in range(4):
        prompt_len = len(batch["prompt_ids"][row])
        answer = answers[batch["label"][row]]
        labelled = (batch["labels"][row] != causal.IGNORE).nonzero().flatten().tolist()
        assert labelled == list(range(prompt_len, prompt_len + len(answer)))
        assert batch["labels"][row, labelled].tolist() == answer == batch["input_ids"][row, labelled].tolist()
        assert batch["attention_mask"][row].sum() == prompt_len + len(answer)


def test_loss_on_sequence_labels_every_real_token(tiny_causal_dir, sentiment_csv, tmp_path):
    # a CSV with text labels (positive / negative), as users write them
    p = prepare(load_config(None, instruct_config(tiny_causal_dir, sentiment_csv, tmp_path, loss_on="sequence")))
    batch = next(iter(loader(p, "train", 4)))
    assert torch.equal(batch["labels"] != causal.IGNORE, batch["attention_mask"].bool())


@pytest.mark.parametrize("output,expected", [(" positive", 1), ("Negative.", 0), ("\n  POSITIVE review", 1),
                                             ("neutral", None), ("", None), ("pos", None), ("I think positive", None)])
def test_generated_text_maps_to_a_label_only_when_it_starts_with_a_label_word(output, expected):
    assert instruct.parse_label(output, ["negative", "positive"]) == expected


def test_longest_label_word_wins():
    assert instruct.parse_label("not good at all", ["not", "not good"]) == 1


def test_output_that_is_not_a_label_counts_as_wrong_and_invalid(prepared, monkeypatch):
    n = len(prepared.splits["test"])
    gold = prepared.splits["test"]["label_id"]
    answers = iter(["positive" if g else "negative" for g in gold[:4]] + ["maybe"] * (n - 4))
    def fake_decoding(model, tok, prompts, k, share_prefix=True):
        return [next(answers) for _ in prompts], None  # None: scoring makes its own pass

    monkeypatch.setattr(decoding, "greedy_texts", fake_decoding)
    metrics = instruct.evaluate(prepared.model, loader(prepared, "test", 3), Accelerator(cpu=True), prepared, "test")
    assert metrics["generate_accuracy"] == pytest.approx(4 / n)
    assert metrics["invalid_rate"] == pytest.approx((n - 4) / n)
    assert metrics["accuracy"] == metrics["generate_accuracy"]


@pytest.mark.parametrize("words", [None, ["very bad", "very good"]], ids=["one-token", "two-token"])
def test_score_accuracy_picks_the_most_likely_label_and_ignores_batching(tiny_causal_dir, review_dir, tmp_path, words):
    prepared = prepare(load_config(None, instruct_config(tiny_causal_dir, review_dir, tmp_path, label_words=words)))
    assert {len(a) for a in prepared.extras["answers"]} == ({1} if words is None else {2})
    results = [instruct.evaluate(prepared.model, loader(prepared, "validation", b), Accelerator(cpu=True), prepared)
               for b in (1, 3, 8)]
    assert len({r["score_accuracy"] for r in results}) == 1
    assert results[0]["loss"] == pytest.approx(results[2]["loss"], rel=1e-5)
    # by hand: the summed log-likelihood of each label word after each prompt, one example at a time
    model, answers = prepared.model, prepared.extras["answers"]
    hits = 0
    for example in prepared.splits["validation"]:
        scores = []
        for answer in answers:
            ids = torch.tensor([example["prompt_ids"] + answer])
            with torch.no_grad():
                logp = model(ids).logits[0].log_softmax(-1)
            start = len(example["prompt_ids"])
            scores.append(sum(logp[start - 1 + i, tok].item() for i, tok in enumerate(answer)))
        hits += int(max(range(len(scores)), key=scores.__getitem__) == example["label_id"])
    assert results[0]["score_accuracy"] == pytest.approx(hits / len(prepared.splits["validation"]))


def test_left_padded_batched_generation_equals_one_by_one(tiny_causal_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    prompts = [tokenizer(t)["input_ids"] for t in ["the movie", "a very dull and boring plot was", "good"]]
    batched = causal.generate(model, tokenizer, prompts, max_new_tokens=6)
    alone = [causal.generate(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == alone
    assert any(alone), "the tiny model should generate something"


def test_demonstrations_come_from_train_by_seed_with_every_label(tiny_causal_dir, review_dir, tmp_path):
    def preamble(seed):
        cfg = instruct_config(tiny_causal_dir, review_dir, tmp_path, shots=4, shots_seed=seed, max_length=128)
        return prepare(load_config(None, cfg)).extras["preamble"]

    first, again, other = preamble(0), preamble(0), preamble(1)
    assert first == again != other
    assert first.count("Sentiment :") == 4 and "positive" in first and "negative" in first
    train_texts = {r["text"] for r in reviews(24, 0)}
    shown = [chunk.split(" Sentiment :")[0].removeprefix("Review : ") for chunk in first.strip().split("\n\n")]
    assert len(shown) == 4 and set(shown) <= train_texts


def test_zero_and_few_shot_runs_train_nothing_and_report_both_accuracies(tiny_causal_dir, review_dir, tmp_path):
    for shots in (0, 2):
        cfg = instruct_config(tiny_causal_dir, review_dir, tmp_path, method={"name": "none"}, shots=shots,
                              max_length=128)
        cfg["output"] = {"dir": str(tmp_path / f"shots{shots}")}
        assert cli.main(["train", *cli_args(cfg)]) == 0
        summary = json.loads((tmp_path / f"shots{shots}" / "summary.json").read_text())
        assert summary["trainable_params"] == 0 and summary["steps"] == 0
        assert {"accuracy", "score_accuracy", "invalid_rate", "generate_accuracy"} <= summary["test"].keys()
        assert 0 <= summary["test"]["accuracy"] <= 1 - summary["test"]["invalid_rate"] + 1e-9


def test_lora_instruct_run_trains_and_eval_reproduces_it(tiny_causal_dir, review_dir, tmp_path, capsys):
    cfg = instruct_config(tiny_causal_dir, review_dir, tmp_path)
    assert cli.main(["train", *cli_args(cfg)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["primary_metric"] == "accuracy" and summary["steps"] == 6
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "run"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["score_accuracy"] == pytest.approx(summary["test"]["score_accuracy"])
    assert result["accuracy"] == pytest.approx(summary["test"]["accuracy"])


def test_prompt_tuning_instruct_run(tiny_causal_dir, review_dir, tmp_path):
    cfg = instruct_config(tiny_causal_dir, review_dir, tmp_path,
                          method={"name": "prompt", "num_virtual_tokens": 4, "init_text": "good bad"})
    assert cli.main(["train", *cli_args(cfg)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["trainable_params"] == 4 * 16


def test_template_naming_a_missing_field_is_refused_with_the_fields(tiny_causal_dir, review_dir, tmp_path, capsys):
    cfg = instruct_config(tiny_causal_dir, review_dir, tmp_path, template="Review : {review} Sentiment :")
    assert cli.main(["train", *cli_args(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "{review}" in err and "fields there: text, label" in err


def test_label_word_that_tokenizes_to_nothing_is_refused(tiny_causal_dir, review_dir, tmp_path, capsys):
    cfg = instruct_config(tiny_causal_dir, review_dir, tmp_path, answer_prefix="")
    cfg["task"]["label_words"] = {"negative": "", "positive": "good"}
    assert cli.main(["train", *cli_args(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "tokenizes to nothing" in err and "'negative'" in err


def test_boolq_as_instruct_on_a_causal_lm(tiny_causal_dir, tmp_path):
    folder = tmp_path / "boolq"
    folder.mkdir()
    rows = [{"passage": f"the {w} film was {a}", "question": f"was the film {a}", "answer": i % 2 == 0}
            for i, (w, a) in enumerate([("good", "fun"), ("bad", "dull")] * 6)]
    write_jsonl(folder / "train.jsonl", rows[:8])
    write_jsonl(folder / "validation.jsonl", rows[8:])
    cfg = {"model": {"name": str(tiny_causal_dir)}, "data": {"name": str(folder), "label_column": "answer"},
           "task": {"name": "instruct", "template": "{passage}\nQuestion: {question}?\nAnswer:",
                    "label_words": {"True": "yes", "False": "no"}, "max_length": 64},
           "method": {"name": "lora", "r": 2}, "train": {"epochs": 1, "batch_size": 4},
           "output": {"dir": str(tmp_path / "run")}}
    assert cli.main(["train", *cli_args(cfg)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["label_names"] == ["False", "True"] and 0 <= summary["test"]["score_accuracy"] <= 1
    p = prepare(load_config(tmp_path / "run" / "config.yaml"))
    assert p.extras["words"] == ["no", "yes"]


def test_boolq_as_pair_classification_on_an_encoder(tiny_bert_dir, tmp_path):
    folder = tmp_path / "boolq"
    folder.mkdir()
    rows = [{"passage": f"the {w} film", "question": f"was it {w}", "answer": i % 2 == 0}
            for i, w in enumerate(["good", "bad", "fun", "dull"] * 4)]
    write_jsonl(folder / "train.jsonl", rows[:10])
    write_jsonl(folder / "validation.jsonl", rows[10:])
    cfg = {"model": {"name": str(tiny_bert_dir)},
           "data": {"name": str(folder), "text_column": "passage", "text_pair_column": "question",
                    "label_column": "answer"},
           "task": {"max_length": 32}, "method": {"name": "full"}, "train": {"epochs": 1, "batch_size": 4},
           "output": {"dir": str(tmp_path / "run")}}
    assert cli.main(["train", *cli_args(cfg)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["label_names"] == ["False", "True"] and summary["task"] == "classification"
