"""What adapting a causal LM costs the base model: its perplexity on general text, before and after.

A method that fits a task can make the model worse at everything else. For a causal LM the run
measures the perplexity of a general held-out text (``eval.general_text``: the embedded
wiki-slice by default, or any corpus tunelab reads) over its first ``eval.general_tokens`` tokens
in blocks, once before training with the method switched off (the base model: injected modules
pass through, virtual tokens are gone) and once after, with the best checkpoint. An encoder
classifier has no language-model head to score text with, so nothing is measured there.
"""

from __future__ import annotations

import math

import torch

BLOCK = 256
"""Tokens per scored block (each block's first token is context only)."""


def wanted(cfg) -> bool:
    return bool(cfg.eval.general_text) and cfg.eval.general_tokens > 0 and getattr(cfg.task, "causal", False)


def blocks(cfg, tokenizer) -> list[list[int]]:
    """The general text's test split, documents joined by the end-of-sequence token, cut into
    blocks, up to ``eval.general_tokens`` tokens."""
    from tunelab.config import DataConfig
    from tunelab.data.sources import load_splits

    texts = load_splits(DataConfig(name=cfg.eval.general_text))["test"]["text"]
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= cfg.eval.general_tokens:
            break
    ids = ids[:cfg.eval.general_tokens]
    return [ids[s:s + BLOCK] for s in range(0, len(ids) - 1, BLOCK) if len(ids[s:s + BLOCK]) > 1]


@torch.inference_mode()
def perplexity(model, token_blocks: list[list[int]], batch_size: int) -> float:
    """exp(mean negative log-likelihood per predicted token) of the model on the blocks."""
    from tunelab.tasks.causal import token_nll

    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(token_blocks), batch_size):
        part = token_blocks[start:start + batch_size]
        width = max(len(b) for b in part)
        ids = torch.tensor([b + [0] * (width - len(b)) for b in part], device=device)  # (B, T), right-padded
        mask = torch.tensor([[1] * len(b) + [0] * (width - len(b)) for b in part], device=device)
        labels = ids.masked_fill(mask == 0, -100)
        nll, n = token_nll(model, ids, mask, labels)
        total, count = total + float(nll.sum()), count + int(n.sum())
    return math.exp(total / max(count, 1))


def base_perplexity(model, prepared) -> float | None:
    """The general text's perplexity under the base model (the method switched off)."""
    from tunelab.methods.common import disable_adapters

    cfg = prepared.cfg
    if not wanted(cfg):
        return None
    was_training = model.training
    with disable_adapters(model):
        found = perplexity(model.eval(), blocks(cfg, prepared.tokenizer), cfg.eval.batch_size)
    model.train(was_training)
    return found


def result(model, prepared, before: float | None) -> dict | None:
    """Before and after (the model as it stands: the best checkpoint), for summary.json."""
    cfg = prepared.cfg
    if before is None or not wanted(cfg):
        return None
    token_blocks = blocks(cfg, prepared.tokenizer)
    was_training = model.training
    after = perplexity(model.eval(), token_blocks, cfg.eval.batch_size)
    model.train(was_training)
    return {"corpus": cfg.eval.general_text, "tokens": sum(len(b) for b in token_blocks), "before": before,
            "after": after, "increase": after / before - 1}
