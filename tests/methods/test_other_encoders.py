"""Every method on the other encoder families users bring: DistilBERT, RoBERTa and MPNet."""

from __future__ import annotations

import pytest
import torch
from transformers import DistilBertConfig, DistilBertModel, MPNetConfig, MPNetModel, RobertaConfig, RobertaModel

from tunelab.errors import UserError
from tunelab.methods import apply_method, common
from tunelab.methods.options import (
    AdapterMethod,
    BitFitMethod,
    FullMethod,
    HeadMethod,
    IA3Method,
    LoRAMethod,
    PrefixMethod,
    PromptMethod,
)
from tunelab.models.families import family_of
from tunelab.tasks.classification import SequenceClassifier

H, LAYERS, FF, R, M, N = 16, 2, 32, 2, 4, 3


def distilbert():
    return DistilBertModel(DistilBertConfig(vocab_size=64, dim=H, n_layers=LAYERS, n_heads=2, hidden_dim=FF,
                                            max_position_embeddings=64))


def roberta():
    return RobertaModel(RobertaConfig(vocab_size=64, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=2,
                                      intermediate_size=FF, max_position_embeddings=80))


def mpnet():
    return MPNetModel(MPNetConfig(vocab_size=64, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=2,
                                  intermediate_size=FF, max_position_embeddings=80))


CLASSIFIER = H * 2 + 2
# Closed forms of the method's own tensors on these two shapes (the classifier comes on top).
EXPECTED = {
    "lora": LAYERS * 3 * R * (H + H),
    "adapter": LAYERS * 2 * (H * M + M + M * H + H),
    "ia3": LAYERS * (H + H + FF),
    "prompt": N * H,
}


@pytest.mark.parametrize("build, expected_family", [(distilbert, "distilbert"), (roberta, "bert"), (mpnet, "mpnet")])
@pytest.mark.parametrize("cfg", [FullMethod(), HeadMethod(), LoRAMethod(r=R), BitFitMethod(), AdapterMethod(size=M),
                                 IA3Method(), PromptMethod(init="random", num_virtual_tokens=N)], ids=lambda c: c.name)
def test_method_runs_and_counts(build, expected_family, cfg):
    torch.manual_seed(0)
    backbone = build().eval()
    assert family_of(backbone).name == expected_family
    base_total = sum(p.numel() for p in backbone.parameters())
    model = SequenceClassifier(backbone, 2).eval()
    ids = torch.randint(3, 60, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        before = model(ids, mask)
    apply_method(model, cfg, expected_family)
    with torch.no_grad():
        after = model(ids, mask)
    counts = common.count_parameters(model, base_total)
    if cfg.name in EXPECTED:
        assert counts.trainable == EXPECTED[cfg.name] + CLASSIFIER
    if cfg.name in ("lora", "bitfit", "adapter", "ia3", "head", "full"):
        torch.testing.assert_close(after, before, atol=1e-6, rtol=0)  # unchanged at init
    assert after.shape == (2, 2)


@pytest.mark.parametrize("build, family", [(distilbert, "distilbert"), (mpnet, "mpnet")])
def test_prefix_on_an_encoder_without_a_cache_is_refused_in_one_line(build, family):
    model = SequenceClassifier(build(), 2)
    with pytest.raises(UserError, match=r"prefix tuning needs a model whose forward takes a key/value cache "
                                        r"\(cache or past_key_values\)"):
        apply_method(model, PrefixMethod(num_virtual_tokens=N), family)


def test_prefix_on_roberta_counts():
    model = SequenceClassifier(roberta(), 2)
    apply_method(model, PrefixMethod(num_virtual_tokens=N), "bert")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == LAYERS * 2 * H * N + CLASSIFIER
