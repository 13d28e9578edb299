"""Language modeling: perplexity by hand, padding/batch invariance, sliding windows, the CLI."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import CAUSAL_VOCAB, cli_args
from tunelab import cli
from tunelab.tasks import causal, lm

TEXT = ("the cat sat on the mat . the dog ran . good film but dull plot . the actor was superb and the story fun . "
        "a weak movie is boring . the mat was very poor and the cat was not fun")


@pytest.fixture
def model(tiny_causal_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_causal_dir).eval()


@pytest.fixture
def ids(tiny_causal_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    return lm.token_stream([TEXT, TEXT[:40]], tokenizer, "eos")


def perplexity(model, windows, batch_size, tiny_causal_dir) -> dict:
    rows = [{"input_ids": w, "labels": lab} for w, lab in windows]
    pad_id = AutoTokenizer.from_pretrained(tiny_causal_dir).pad_token_id
    loader = DataLoader(rows, batch_size=batch_size, collate_fn=lm.collator(pad_id))
    return lm.evaluate(model, loader, Accelerator(cpu=True))


def hand_nll(model, ids: list[int]) -> tuple[float, int]:
    """Sum of -log p(token t | tokens < t) for t >= 1, straight from the model's full logits."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]  # (T, V)
    logp = F.log_softmax(logits[:-1].double(), dim=-1)
    return -logp.gather(1, torch.tensor(ids[1:])[:, None]).sum().item(), len(ids) - 1


def test_stream_joins_documents_with_eos(ids, tiny_causal_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    assert ids.count(tokenizer.eos_token_id) == 2 and ids[-1] == tokenizer.eos_token_id
    assert lm.token_stream([TEXT], tokenizer, "none").count(tokenizer.eos_token_id) == 0


def test_perplexity_equals_hand_computation_from_logits(model, ids, tiny_causal_dir):
    windows = lm.sliding_windows(ids, block_size=len(ids), stride=len(ids))  # one window: the whole text
    result = perplexity(model, windows, 1, tiny_causal_dir)
    nll, count = hand_nll(model, ids)
    assert result["tokens"] == count == len(ids) - 1
    assert result["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_token_nll_matches_transformers_loss(model, ids):
    batch = torch.tensor([ids[:20]])
    nll, count = causal.token_nll(model, batch, torch.ones_like(batch), batch)
    with torch.no_grad():
        reference = model(batch, labels=batch).loss
    assert count.item() == 19
    assert (nll / count).item() == pytest.approx(reference.item(), rel=1e-5)


def test_stride_equal_to_block_is_the_plain_block_computation(model, ids, tiny_causal_dir):
    block = 16
    result = perplexity(model, lm.sliding_windows(ids, block, block), 4, tiny_causal_dir)
    total, count = 0.0, 0
    for start in range(0, len(ids), block):  # each block on its own; its first token has no context
        piece = ids[start:start + block]
        if len(piece) > 1:
            nll, n = hand_nll(model, piece)
            total, count = total + nll, count + n
    assert result["tokens"] == count
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("block,stride", [(16, 4), (16, 7), (10, 10), (12, 1)])
def test_sliding_windows_predict_every_token_once(ids, block, stride):
    windows = lm.sliding_windows(ids, block, stride)
    assert all(len(w) <= block for w, _ in windows)
    predicted = []
    for index, (window, labels) in enumerate(windows):
        begin = index * stride
        assert window == ids[begin:begin + block]
        predicted += [begin + i for i, label in enumerate(labels) if label != causal.IGNORE and i > 0]
    if stride < block:
        assert predicted == list(range(1, len(ids))), "each token after the first, once, in order"
    else:  # plain blocks: a block's first token has no context inside its block
        assert predicted == [t for t in range(1, len(ids)) if t % block], "all but each block's first, once"


def test_overlapping_windows_give_context_and_lower_perplexity_on_a_repeating_text(model, tiny_causal_dir, ids):
    # Overlap changes only the context a token is predicted from; the count stays n - 1.
    plain = perplexity(model, lm.sliding_windows(ids, 12, 12), 2, tiny_causal_dir)
    overlapped = perplexity(model, lm.sliding_windows(ids, 12, 4), 2, tiny_causal_dir)
    assert overlapped["tokens"] == len(ids) - 1 > plain["tokens"]


def test_padding_and_batch_size_do_not_change_perplexity(model, ids, tiny_causal_dir):
    windows = lm.sliding_windows(ids, 12, 5)
    random.Random(0).shuffle(windows)  # mixed lengths in one batch: the short last window gets padded
    results = [perplexity(model, windows, b, tiny_causal_dir) for b in (1, 3, len(windows))]
    assert {r["tokens"] for r in results} == {len(ids) - 1}
    for r in results[1:]:
        assert r["loss"] == pytest.approx(results[0]["loss"], rel=1e-6)


def test_blocks_drop_the_remainder():
    assert lm.blocks(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def lm_run_config(tiny_causal_dir, tmp_path, **task):
    data = tmp_path / "corpus"
    data.mkdir(exist_ok=True)
    words = [w for w in CAUSAL_VOCAB[3:] if w.isalpha()]
    rng = random.Random(0)
    for split, n in (("train", 30), ("validation", 4), ("test", 4)):
        rows = [{"text": " ".join(rng.choice(words) for _ in range(rng.randint(8, 30)))} for _ in range(n)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model": {"name": str(tiny_causal_dir)}, "data": {"name": str(data)},
            "task": {"name": "lm", "block_size": 16, "sample_max_new_tokens": 4, **task},
            "method": {"name": "lora", "r": 2, "alpha": 4}, "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2},
            "output": {"dir": str(tmp_path / "run")}}


def test_lm_run_reports_perplexity_before_and_after_with_samples(tiny_causal_dir, tmp_path):
    cfg = lm_run_config(tiny_causal_dir, tmp_path, stride=8)
    assert cli.main(["train", *cli_args(cfg)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["primary_metric"] == "perplexity" and summary["higher_is_better"] is False
    assert summary["test"]["perplexity"] == pytest.approx(math.exp(summary["test"]["loss"]))
    assert summary["test"]["tokens"] == summary["before"]["tokens"] > 0
    assert summary["before"]["perplexity"] != summary["test"]["perplexity"]
    samples = json.loads((tmp_path / "run" / "samples.json").read_text())
    assert len(samples["before"]) == len(samples["after"]) == 3
    assert all(s.startswith(p) for s, p in zip(samples["after"], ["The history of the city", "In mathematics, a",
                                                                   "The film was released"]))


def test_block_size_beyond_the_context_is_refused(tiny_causal_dir, tmp_path, capsys):
    cfg = lm_run_config(tiny_causal_dir, tmp_path, block_size=4096)
    assert cli.main(["train", *cli_args(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "task.block_size 4096 exceeds the model's 128 positions" in err
    assert not (tmp_path / "run").exists()


def test_stride_larger_than_block_is_refused(tiny_causal_dir, tmp_path, capsys):
    cfg = lm_run_config(tiny_causal_dir, tmp_path, stride=32)
    assert cli.main(["train", *cli_args(cfg)]) == 2
    assert "stride 32 is larger than block_size 16" in capsys.readouterr().err
