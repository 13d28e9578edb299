"""Head-only and full tuning, the method registry, and saving/loading the trained state."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_bert, tiny_gpt2, tiny_llama
from tunelab.errors import UserError
from tunelab.methods import METHODS, apply_method, common, full, head, lora
from tunelab.methods.lora import LoRALayer
from tunelab.methods.options import FullMethod, HeadMethod, LoRAMethod
from tunelab.models.families import FAMILIES as FAMILY_TABLE
from tunelab.tasks.classification import SequenceClassifier

VOCAB, D = 64, 16


def param_total(model) -> int:
    return sum(p.numel() for p in model.parameters())


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def classifier(num_labels: int = 2, seed: int = 0) -> SequenceClassifier:
    return SequenceClassifier(tiny_bert(seed), num_labels=num_labels).eval()


def batch(seed: int = 0, shape=(3, 6)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, shape, generator=g)
    mask = torch.ones(shape, dtype=torch.long)
    mask[0, -2:] = 0  # some padding, so mean pooling sees a mask
    return ids, mask


# ---------------------------------------------------------------- head


def test_head_trains_only_the_classifier():
    model = classifier(2)
    base_total = param_total(model.backbone)
    head.apply(model, HeadMethod(), FAMILY_TABLE["bert"])
    assert trainable_names(model) == {"classifier.weight", "classifier.bias"}
    counts = common.count_parameters(model, base_total)
    assert counts.trainable == D * 2 + 2
    assert counts.added == D * 2 + 2
    assert counts.total == base_total + D * 2 + 2


def test_head_with_last_layer_also_trains_the_last_block():
    model = classifier(2)
    head.apply(model, HeadMethod(last_n_layers=1), FAMILY_TABLE["bert"])
    last = model.backbone.encoder.layer[-1]
    last_ids = {id(p) for p in last.parameters()}
    expected = D * 2 + 2 + sum(p.numel() for p in last.parameters())
    assert common.count_parameters(model, 0).trainable == expected
    for name, p in model.named_parameters():
        should_train = name.startswith("classifier.") or id(p) in last_ids
        assert p.requires_grad == should_train, name
    assert all(p.requires_grad for p in last.parameters())
    assert not any(p.requires_grad for p in model.backbone.encoder.layer[0].parameters())


def test_head_with_two_layers_trains_both_blocks():
    model = classifier(2)
    head.apply(model, HeadMethod(last_n_layers=2), FAMILY_TABLE["bert"])
    layers = model.backbone.encoder.layer
    expected = D * 2 + 2 + sum(p.numel() for p in layers.parameters())
    assert common.count_parameters(model, 0).trainable == expected
    assert not any(p.requires_grad for p in model.backbone.embeddings.parameters())


def test_head_last_n_layers_too_large_raises():
    with pytest.raises(UserError, match="last_n_layers"):
        head.apply(classifier(2), HeadMethod(last_n_layers=3), FAMILY_TABLE["bert"])


def test_head_on_tied_causal_lm_unties_and_trains_lm_head():
    model, reference = tiny_llama(), tiny_llama()
    embed = model.model.embed_tokens
    assert model.lm_head.weight is embed.weight  # precondition: the tiny Llama is tied
    base_total = param_total(model)
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))

    head.apply(model, HeadMethod(), FAMILY_TABLE["llama"])
    assert model.lm_head.weight is not embed.weight
    assert model.lm_head.weight.data_ptr() != embed.weight.data_ptr()
    assert torch.equal(model.lm_head.weight, embed.weight)  # the untied copy equals the original
    assert model.config.tie_word_embeddings is False
    assert model.lm_head.weight.requires_grad and not embed.weight.requires_grad
    assert trainable_names(model) == {"lm_head.weight"}
    counts = common.count_parameters(model, base_total)
    assert counts.trainable == VOCAB * D
    assert counts.added == VOCAB * D  # the untied copy is a new tensor
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lm_head_before = model.lm_head.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert embed.weight.grad is None and model.lm_head.weight.grad is not None
    optimizer.step()
    assert torch.equal(embed.weight, reference.model.embed_tokens.weight)
    assert not torch.equal(model.lm_head.weight, lm_head_before)
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name


def test_head_on_gpt2_last_block():
    model = tiny_gpt2()
    head.apply(model, HeadMethod(last_n_layers=1), FAMILY_TABLE["gpt2"])
    last = model.transformer.h[-1]
    expected = VOCAB * D + sum(p.numel() for p in last.parameters())
    assert common.count_parameters(model, 0).trainable == expected
    assert not model.transformer.wte.weight.requires_grad


# ---------------------------------------------------------------- full


@pytest.mark.parametrize("build", [lambda: classifier(2), tiny_llama, tiny_gpt2])
def test_full_trains_every_parameter(build):
    model = build()
    common.freeze(model)  # start from a frozen model, so `full` has to switch everything on
    assert common.count_parameters(model, 0).trainable == 0
    full.apply(model, FullMethod(), FAMILY_TABLE["bert"])
    assert all(p.requires_grad for p in model.parameters())
    counts = common.count_parameters(model, param_total(model))
    assert counts.trainable == counts.total == param_total(model)
    assert counts.added == 0


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("cfg, module", [(FullMethod(), full), (HeadMethod(), head), (LoRAMethod(r=2, alpha=4), lora)])
def test_registry_dispatches_on_name(cfg, module):
    assert METHODS.load(cfg.name) is module
    model = classifier(2)
    apply_method(model, cfg, "bert")
    n_lora = sum(isinstance(m, LoRALayer) for m in model.modules())
    assert (n_lora > 0) == (module is lora)
    expected = {full: param_total(model), head: D * 2 + 2, lora: 2 * 3 * 2 * (D + D) + D * 2 + 2}[module]
    assert common.count_parameters(model, 0).trainable == expected


# ---------------------------------------------------------------- trainable state round trip


def perturbed_lora_classifier(lora_seed: int) -> SequenceClassifier:
    model = classifier(3)
    torch.manual_seed(lora_seed)
    lora.apply(model, LoRAMethod(r=4, alpha=8), FAMILY_TABLE["bert"])
    return model


def test_trainable_state_round_trip():
    ids, mask = batch()
    model = perturbed_lora_classifier(lora_seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALayer):
                m.lora_B.normal_(0.0, 0.1, generator=g)
        model.classifier.weight.add_(torch.randn(model.classifier.weight.shape, generator=g))
    state = {k: v.clone() for k, v in common.trainable_state(model).items()}
    assert set(state) == trainable_names(model)
    assert all(".lora_A" in k or ".lora_B" in k or k.startswith("classifier.") for k in state)
    assert not any(k.endswith(".base.weight") or "embeddings" in k for k in state)
    with torch.no_grad():
        expected = model(ids, mask)

    fresh = perturbed_lora_classifier(lora_seed=123)
    first = "backbone.encoder.layer.0.attention.self.query.lora_A"
    assert not torch.equal(dict(fresh.named_parameters())[first], state[first])  # A differs before loading
    with torch.no_grad():
        assert not torch.allclose(fresh(ids, mask), expected, atol=1e-4)
    common.load_trainable_state(fresh, state)
    with torch.no_grad():
        assert torch.equal(fresh(ids, mask), expected)
    loaded = common.trainable_state(fresh)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_load_trainable_state_rejects_missing_and_unexpected_keys():
    model = perturbed_lora_classifier(lora_seed=1)
    state = {k: v.clone() for k, v in common.trainable_state(model).items()}
    before = {k: v.clone() for k, v in state.items()}

    missing = dict(state)
    missing.pop("classifier.bias")
    with pytest.raises(UserError, match="missing"):
        common.load_trainable_state(model, missing)

    extra = dict(state, **{"backbone.embeddings.word_embeddings.weight": torch.zeros(VOCAB, D)})
    with pytest.raises(UserError, match="unexpected"):
        common.load_trainable_state(model, extra)

    # A rejected checkpoint changes nothing.
    now = common.trainable_state(model)
    assert all(torch.equal(now[k], before[k]) for k in before)


def test_trainable_state_of_head_method_is_the_head_only():
    model = tiny_llama()
    head.apply(model, HeadMethod(), FAMILY_TABLE["llama"])
    state = common.trainable_state(model)
    assert set(state) == {"lm_head.weight"}
    assert state["lm_head.weight"].shape == (VOCAB, D)
