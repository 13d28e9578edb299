"""Evaluation's greedy decoding with a shared prompt prefix equals Hugging Face's, row by row."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_gpt2, tiny_llama
from tunelab.methods import apply_method
from tunelab.methods.options import LoRAMethod, PrefixMethod, PromptMethod
from tunelab.tasks import causal, decoding

SHARED = [5, 9, 12, 7, 3, 22]


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [SHARED + torch.randint(3, 60, (n,), generator=g).tolist() for n in (4, 1, 7, 3)]


def hf_greedy(model, batch: list[list[int]], new: int) -> list[list[int]]:
    ids = causal.pad(batch, 0, left=True)
    mask = causal.pad([[1] * len(p) for p in batch], 0, left=True)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0,
                         eos_token_id=None, temperature=None, top_p=None, top_k=None)
    return out[:, ids.shape[1]:].tolist()


def perturbed(build, method=None):
    model = build()
    if method is not None:
        apply_method(model, method)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.5)
    return model.eval()


def test_the_shared_prefix_leaves_each_prompt_a_token_of_its_own():
    assert decoding.shared_prefix_length(prompts()) == len(SHARED)
    assert decoding.shared_prefix_length([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]) == 4
    assert decoding.shared_prefix_length([[1, 2, 3], [1, 2, 4]]) == 0  # too short to be worth a pass


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("share", [True, False], ids=["shared", "plain"])
@pytest.mark.parametrize("method", [None, LoRAMethod(r=2, alpha=4)], ids=["base", "lora"])
def test_greedy_equals_hugging_face_generate(build, share, method):
    model, batch = perturbed(build, method), prompts()
    tokens, first = decoding.greedy(model, batch, 5, pad_id=0, eos_id=None, share_prefix=share)
    assert tokens == hf_greedy(model, batch, 5)
    # and the first step is the distribution a separate scoring pass reads (right padding)
    scored = causal.lm_batch(batch, batch, 0)
    expected = causal.next_token_logprobs(model, scored["input_ids"], scored["attention_mask"])
    torch.testing.assert_close(first, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("method", [PromptMethod(init="random", num_virtual_tokens=3),
                                    PrefixMethod(num_virtual_tokens=3)], ids=["prompt", "prefix"])
def test_virtual_tokens_decode_as_hugging_face_does_without_sharing(build, method):
    model, batch = perturbed(build, method), prompts()
    tokens, _ = decoding.greedy(model, batch, 4, pad_id=0, eos_id=None, share_prefix=False)
    assert tokens == hf_greedy(model, batch, 4)


def test_generation_stops_after_the_end_of_sequence_token():
    model, batch = perturbed(tiny_llama), prompts()
    free, _ = decoding.greedy(model, batch, 6, pad_id=0, eos_id=None)
    eos = free[0][0]  # the first row's first token: make it the end of sequence
    tokens, _ = decoding.greedy(model, batch, 6, pad_id=0, eos_id=eos)
    assert tokens[0] == [eos] and any(len(row) == 6 for row in tokens)  # the others go on
    for row, full in zip(tokens, free):
        assert row == (full[:full.index(eos) + 1] if eos in full else full)
