"""Greedy decoding for evaluation, with the prompts' shared beginning computed once.

Classification by a causal LM reads, for every prompt, the distribution after it (scoring the
label words) and a few greedily generated tokens (the answer). The prompts of a batch often
begin with the same tokens: the instruction of the template, and in few-shot prompting every
demonstration. Those keys and values are the same for every row, so they are computed once
for the batch (batch size 1) and shared, as inference servers' prefix caching does; the rest
of each prompt follows them, padded in the middle (``[shared][pads][rest]``) so that every
row ends where generation starts. Positions follow the attention mask, so each row sees
exactly what it would see alone.

A method that puts virtual tokens in front of the input (prompt, prefix tuning) finds them in
the cache on later steps; sharing a prefix would hide them, so ``share_prefix`` is off there.
The first step's log-probabilities equal those of a separate scoring pass; greedy decoding
equals Hugging Face ``generate`` without sampling (both tested).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from tunelab.models.families import cache_argument, transformer_body
from tunelab.sharding import all_processes_done, output_head, sharded_module

MIN_SHARED = 4
"""Shorter shared beginnings are not worth a pass of their own."""


def shared_prefix_length(prompts: list[list[int]]) -> int:
    """Leading tokens every prompt has, leaving each at least one token of its own."""
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n if n >= MIN_SHARED else 0


def padded_rest(rests: list[list[int]], shared: int, pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """Each prompt's own tokens, left-padded, (B, T); the mask over shared + own tokens,
    (B, shared + T); and the own tokens' positions, (B, T)."""
    width = max(len(r) for r in rests)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rests], device=device)
    own = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rests], device=device)
    mask = torch.cat([own.new_ones(len(rests), shared), own], dim=1)
    positions = (mask.cumsum(1) - 1).clamp(min=0)[:, shared:]
    return ids, mask, positions


@torch.inference_mode()
def greedy(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, pad_id: int, eos_id: int | None,
           share_prefix: bool = True) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy continuations (new token ids per prompt, cut after an end-of-sequence token) and
    the (B, V) log-probabilities of the token after each prompt. ``max_new_tokens=0`` only scores."""
    device = next(model.parameters()).device
    body, head = transformer_body(model), output_head(model)
    cache, argument = DynamicCache(), cache_argument(body)
    # A sharded model's forwards are collective: every process must make as many (no pass of a
    # prefix only some processes' prompts share, no stop before every process is done).
    shared = shared_prefix_length(prompts) if share_prefix and not sharded_module(model) else 0
    if shared:
        body(input_ids=torch.tensor([prompts[0][:shared]], device=device), use_cache=True, **{argument: cache})
        cache.batch_repeat_interleave(len(prompts))
    ids, mask, positions = padded_rest([p[shared:] for p in prompts], shared, pad_id, device)

    def next_logits(ids: torch.Tensor) -> torch.Tensor:
        hidden = body(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                      **{argument: cache}).last_hidden_state  # (B, T, H)
        return head(hidden[:, -1]).float()  # (B, V)

    logits = next_logits(ids)
    first = logits.log_softmax(-1)
    new: list[torch.Tensor] = []
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        token = logits.argmax(-1).masked_fill(done, pad_id)  # (B,)
        new.append(token)
        done |= token == eos_id
        if all_processes_done(bool(done.all()), model) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
        positions = positions[:, -1:] + 1
        logits = next_logits(token[:, None])
    tokens = torch.stack(new, dim=1).tolist() if new else [[] for _ in prompts]
    return [row[:row.index(eos_id) + 1] if eos_id in row else row for row in tokens], first


def greedy_texts(model: nn.Module, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                 share_prefix: bool = True) -> tuple[list[str], torch.Tensor]:
    """:func:`greedy`, the new tokens decoded (special tokens dropped)."""
    tokens, first = greedy(model, prompts, max_new_tokens, tokenizer.pad_token_id, tokenizer.eos_token_id,
                           share_prefix)
    return tokenizer.batch_decode(tokens, skip_special_tokens=True), first
