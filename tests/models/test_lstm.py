"""The LSTM classifier: the lab's initialisation, packing (padding never changes a text's
output), and the course's sanity check (a 10-example subset is memorised by the one loop)."""

from __future__ import annotations

import csv
import json
import math
import random

import pytest
import torch

from tunelab import cli
from tunelab.data.vocab import PAD_ID, collate
from tunelab.models.lstm import LSTMClassifier

SHAPES = [dict(n_layers=1, bidirectional=False), dict(n_layers=2, bidirectional=True)]


def model(seed: int = 0, **kwargs) -> LSTMClassifier:
    torch.manual_seed(seed)
    return LSTMClassifier(vocab_size=50, num_labels=3, embedding_dim=8, hidden_size=6, **kwargs).eval()


@pytest.mark.parametrize("shape", SHAPES)
def test_init_xavier_orthogonal_zero_biases_zero_padding_row(shape):
    torch.manual_seed(0)
    big = LSTMClassifier(vocab_size=4000, num_labels=2, embedding_dim=64, hidden_size=16, **shape)
    emb = big.embedding.weight.detach()
    assert torch.count_nonzero(emb[PAD_ID]) == 0
    # Xavier normal: std = sqrt(2 / (fan_in + fan_out)) with fans (64, 4000) for a (4000, 64) weight
    assert emb[1:].std().item() == pytest.approx(math.sqrt(2 / (4000 + 64)), rel=0.05)
    assert torch.count_nonzero(big.classifier.bias) == 0
    for name, param in big.lstm.named_parameters():
        if name.startswith("bias"):
            assert torch.count_nonzero(param) == 0, name
        else:  # (4H, in): orthonormal columns
            gram = param.detach().T @ param.detach()
            assert torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-5), name


def test_padding_row_gets_no_gradient():
    m = model().train()
    batch = collate([{"ids": [3, 4, 5], "length": 3, "label": 0}, {"ids": [6], "length": 1, "label": 1}])
    m(batch["input_ids"], batch["attention_mask"]).sum().backward()
    assert torch.count_nonzero(m.embedding.weight.grad[PAD_ID]) == 0
    assert torch.count_nonzero(m.embedding.weight.grad[3]) > 0


@pytest.mark.parametrize("shape", SHAPES)
def test_a_review_alone_equals_the_review_in_a_batch_with_a_much_longer_one(shape):
    m = model(**shape)
    review = [7, 12, 3, 9]
    longer = [random.Random(1).randrange(2, 50) for _ in range(60)]
    alone = collate([{"ids": review, "length": 4, "label": 0}])
    together = collate([{"ids": longer, "length": 60, "label": 0}, {"ids": review, "length": 4, "label": 0}])
    assert together["input_ids"].shape == (2, 60)
    with torch.no_grad():
        logits_alone = m(alone["input_ids"], alone["attention_mask"])[0]
        logits_together = m(together["input_ids"], together["attention_mask"])
        # whatever sits in the padded positions, packing never reads it
        garbage = together["input_ids"].clone()
        garbage[1, 4:] = torch.randint(2, 50, (56,))
        logits_garbage = m(garbage, together["attention_mask"])
        # control: the same padded row read as if all 60 steps were words does change the output
        unpacked = m(together["input_ids"], torch.ones_like(together["attention_mask"]))
    assert torch.allclose(logits_together[1], logits_alone, atol=1e-6)
    assert torch.allclose(logits_garbage[1], logits_alone, atol=1e-6)
    assert not torch.allclose(unpacked[1], logits_alone, atol=1e-3)


def test_output_shape_and_order_follow_the_batch_not_the_lengths():
    m = model(n_layers=2, bidirectional=True)
    items = [{"ids": list(range(2, 2 + n)), "length": n, "label": 0} for n in (3, 9, 1, 5)]
    with torch.no_grad():
        batch = collate(items)
        logits = m(batch["input_ids"], batch["attention_mask"])
        one_by_one = [m(single["input_ids"], single["attention_mask"])[0]
                      for single in map(collate, ([it] for it in items))]
    assert logits.shape == (4, 3)
    assert torch.allclose(logits, torch.stack(one_by_one), atol=1e-6)


def test_ten_examples_are_memorised_within_a_few_dozen_steps(tmp_path, capsys):
    """The course's sanity check, through `tunelab train`: ten reviews with RANDOM labels (so only
    memorising fits them), used as train and validation; 100 % within 40 optimizer steps."""
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(30)]
    rows = [(" ".join(rng.choices(vocabulary, k=rng.randint(4, 12))), rng.choice(["neg", "pos"])) for _ in range(10)]
    assert {label for _, label in rows} == {"neg", "pos"}
    for split in ("train", "validation", "test"):
        with open(tmp_path / f"{split}.csv", "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([("text", "label"), *rows])
    run_dir = tmp_path / "run"
    rc = cli.main(["train", "--data.name", str(tmp_path), "--method.name", "lstm", "--method.min_freq", "1",
                   "--method.dropout", "0", "--train.batch_size", "5", "--train.epochs", "20", "--train.lr", "1e-2",
                   "--train.warmup_ratio", "0", "--output.dir", str(run_dir)])
    assert rc == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] <= 40
    assert summary["validation"]["accuracy"] == 1.0 and summary["test"]["accuracy"] == 1.0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first_full = next(r for r in records if r["split"] == "validation" and r["accuracy"] == 1.0)
    assert first_full["step"] <= 40
    # every epoch logs its train loss and accuracy, then its validation
    epochs = [r for r in records if r["split"] == "train_epoch"]
    assert [r["epoch"] for r in epochs] == list(range(1, 21)) and all(0 <= r["accuracy"] <= 1 for r in epochs)
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert "train loss" in capsys.readouterr().err
