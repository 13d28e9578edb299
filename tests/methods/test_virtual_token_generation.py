"""Prompt and prefix tuning under Hugging Face `generate`: the cached steps must see exactly what
a full recomputation sees (virtual tokens in the cache, masks and positions extended)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_gpt2, tiny_llama
from tunelab.methods import apply_method, common
from tunelab.methods.options import PrefixMethod, PromptMethod


@pytest.mark.parametrize("family, build", [("llama", tiny_llama), ("gpt2", tiny_gpt2)])
@pytest.mark.parametrize("cfg", [PromptMethod(init="random", num_virtual_tokens=3), PrefixMethod(num_virtual_tokens=3)],
                         ids=["prompt", "prefix"])
def test_cached_generation_equals_full_recomputation(family, build, cfg):
    torch.manual_seed(0)
    ids = torch.randint(1, 60, (2, 5))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding on the second row
    model = build()
    apply_method(model, cfg, family)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 1.0)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0,
                         output_logits=True, return_dict_in_generate=True)
    assert len(out.logits) == 4
    for step, logits in enumerate(out.logits):
        prefix_ids = out.sequences[:, :5 + step]
        prefix_mask = torch.cat([mask, torch.ones(2, step, dtype=mask.dtype)], dim=1)
        with torch.no_grad():
            full = model(input_ids=prefix_ids, attention_mask=prefix_mask, use_cache=False).logits[:, -1]
        torch.testing.assert_close(logits, full, atol=1e-5, rtol=0)
    # and the method really acts on generation
    with torch.no_grad(), common.disable_adapters(model):
        base = model(input_ids=ids, attention_mask=mask).logits[:, -1]
    assert not torch.allclose(base, out.logits[0], atol=1e-4)
