"""Prompt and prefix tuning find a body's key/value cache argument by what its forward accepts.

transformers 5.24 renamed ``past_key_values`` to ``cache`` in every model's forward. The two
tiny bodies here are identical but for that name, and written in the test so they do not
depend on which transformers release is installed: a method that looked the argument up by a
fixed name would be refused on one of them, or would silently miss the cache on it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast

from tunelab.methods import apply_method, common
from tunelab.methods.options import PrefixMethod, PromptMethod
from tunelab.models.families import cache_argument

VOCAB, HIDDEN, HEADS, N = 32, 8, 2, 3


class _TinyCausalBody(nn.Module):
    """One causal self-attention layer with learned positions and a key/value cache."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.config = SimpleNamespace(hidden_size=HIDDEN, num_attention_heads=HEADS, num_hidden_layers=1)
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.positions = nn.Embedding(16, HIDDEN)
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def attend(self, input_ids=None, attention_mask=None, inputs_embeds=None, cache=None):
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        batch, length, _ = x.shape
        past = cache.get_seq_length() if cache is not None else 0
        x = x + self.positions(torch.arange(past, past + length))
        q, k, v = self.qkv(x).view(batch, length, 3, HEADS, HIDDEN // HEADS).permute(2, 0, 3, 1, 4)  # (B, h, T, d)
        if cache is not None:
            k, v = cache.update(k, v, 0)  # (B, h, past + T, d)
        keys = torch.arange(past + length)
        allowed = keys[None, :] <= past + torch.arange(length)[:, None]  # (T, past + T) causal
        if attention_mask is not None:
            allowed = allowed[None] & attention_mask.bool()[:, None, :]  # (B, T, past + T)
        scores = (q @ k.transpose(-1, -2)).masked_fill(~allowed.unsqueeze(-3), float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, HIDDEN)
        return BaseModelOutputWithPast(last_hidden_state=out, past_key_values=cache)


class BodyTakingCache(_TinyCausalBody):
    """The transformers >= 5.24 spelling."""

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, cache=None, **kwargs):
        return self.attend(input_ids, attention_mask, inputs_embeds, cache)


class BodyTakingPastKeyValues(_TinyCausalBody):
    """The transformers <= 5.23 spelling."""

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, past_key_values=None, **kwargs):
        return self.attend(input_ids, attention_mask, inputs_embeds, past_key_values)


class _Model(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.base_model = body

    def forward(self, **kwargs):
        return self.base_model(**kwargs)


BODIES = [BodyTakingCache, BodyTakingPastKeyValues]
METHODS = [PromptMethod(init="random", num_virtual_tokens=N), PrefixMethod(num_virtual_tokens=N)]


def test_the_argument_is_read_off_the_forward_signature():
    assert cache_argument(BodyTakingCache()) == "cache"
    assert cache_argument(BodyTakingPastKeyValues()) == "past_key_values"


def _trained_model(body_class, cfg) -> _Model:
    model = _Model(body_class())
    apply_method(model, cfg, "llama")
    with torch.no_grad():  # move the method off its near-identity init so that it shows
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 1.0)
    return model


@pytest.mark.parametrize("body_class", BODIES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("cfg", METHODS, ids=["prompt", "prefix"])
def test_the_method_acts_through_either_name(body_class, cfg):
    model = _trained_model(body_class, cfg)
    ids = torch.randint(0, VOCAB, (2, 4))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        tuned = model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -4:]
        with common.disable_adapters(model):
            base = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert not torch.allclose(tuned, base, atol=1e-3)


@pytest.mark.parametrize("body_class", BODIES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("cfg", METHODS, ids=["prompt", "prefix"])
@pytest.mark.parametrize("caller_name", ["cache", "past_key_values"])
def test_a_cached_step_equals_the_full_recomputation(body_class, cfg, caller_name):
    """Generation's second step passes the filled cache back (under either name: 5.24 still takes
    ``past_key_values`` as a deprecated alias); the virtual tokens must then not be added again."""
    model = _trained_model(body_class, cfg)
    ids = torch.randint(0, VOCAB, (2, 5))
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[:, -1]
        cache = DynamicCache()
        model(input_ids=ids[:, :4], attention_mask=torch.ones(2, 4, dtype=torch.long), **{caller_name: cache})
        assert cache.get_seq_length() == N + 4  # virtual tokens and the four real ones
        step = model(input_ids=ids[:, 4:], attention_mask=torch.ones(2, 5, dtype=torch.long), **{caller_name: cache})
    assert cache.get_seq_length() == N + 5
    torch.testing.assert_close(step.last_hidden_state[:, -1], full, atol=1e-5, rtol=0)
