"""LoRA: identity at init, merge/unmerge, switching off, frozen base, exact counts, per-slice
fused projections, target errors, and equivalence with PEFT on the same A and B."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from conftest import tiny_bert, tiny_gpt2, tiny_llama
from tunelab.errors import UserError
from tunelab.methods import common, lora
from tunelab.methods.lora import LoRALayer
from tunelab.methods.options import LoRAMethod
from tunelab.models.families import FAMILIES as FAMILY_TABLE
from tunelab.tasks.classification import SequenceClassifier

BUILDERS = {"bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}
FAMILIES = list(BUILDERS)
R, ALPHA = 4, 8
VOCAB, D, N_LAYERS = 64, 16, 2  # the conftest models' sizes


def random_ids(seed: int = 0, shape=(2, 7)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, shape, generator=g)


def outputs(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits of a causal LM, last hidden state of a bare encoder."""
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def lora_layers(model) -> list[LoRALayer]:
    return [m for m in model.modules() if isinstance(m, LoRALayer)]


def perturb_b(model, seed: int = 1, std: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * std)


def param_total(model) -> int:
    return sum(p.numel() for p in model.parameters())


def snapshot(model, keep=lambda name: True) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if keep(n)}


def is_lora(name: str) -> bool:
    return ".lora_A" in name or ".lora_B" in name


# ---------------------------------------------------------------- identity at init


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_is_identity_at_init(family):
    model = BUILDERS[family]()
    ids = random_ids()
    base = outputs(model, ids)
    lora.apply(model, LoRAMethod(r=R, alpha=ALPHA), FAMILY_TABLE[family])
    layers = lora_layers(model)
    assert layers, "LoRA wrapped nothing"
    assert all(torch.count_nonzero(layer.lora_B) == 0 for layer in layers)
    assert all(torch.count_nonzero(layer.lora_A) > 0 for layer in layers)
    assert torch.equal(outputs(model, ids), base)


# ---------------------------------------------------------------- merge / unmerge


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_unmerge_round_trip(family):
    model = BUILDERS[family]()
    ids = random_ids()
    base_out = outputs(model, ids)
    lora.apply(model, LoRAMethod(r=R, alpha=ALPHA), FAMILY_TABLE[family])
    base_weights = snapshot(model, lambda n: not is_lora(n))
    perturb_b(model)
    layers = lora_layers(model)
    assert not any(layer.merged for layer in layers)

    lora_out = outputs(model, ids)
    assert not torch.allclose(lora_out, base_out, atol=1e-4), "perturbed LoRA should change the outputs"

    common.merge(model)
    assert all(layer.merged for layer in layers)
    wrapped = [n for n in base_weights if n.endswith(".base.weight")]
    assert wrapped and all(not torch.allclose(dict(model.named_parameters())[n], base_weights[n]) for n in wrapped), \
        "merge must fold the update into every wrapped weight"
    merged_out = outputs(model, ids)
    assert torch.allclose(merged_out, lora_out, atol=1e-5)

    once = snapshot(model)
    common.merge(model)  # a second merge does nothing
    twice = snapshot(model)
    assert all(torch.equal(once[n], twice[n]) for n in once)
    assert all(layer.merged for layer in layers)
    assert torch.equal(outputs(model, ids), merged_out)

    common.unmerge(model)
    assert not any(layer.merged for layer in layers)
    after = snapshot(model, lambda n: not is_lora(n))
    for name, weight in base_weights.items():
        assert torch.allclose(after[name], weight, atol=1e-6), name
    assert torch.allclose(outputs(model, ids), lora_out, atol=1e-5)

    common.unmerge(model)  # a second unmerge does nothing
    again = snapshot(model, lambda n: not is_lora(n))
    assert all(torch.equal(again[n], after[n]) for n in after)


def test_merged_delta_weight_matches_forward_on_one_layer():
    """Conv1D (weight in x out) and nn.Linear (out x in) both merge into the right orientation."""
    for family, path in [("gpt2", "transformer.h.0.attn.c_attn"), ("llama", "model.layers.0.self_attn.q_proj")]:
        model = BUILDERS[family]()
        lora.apply(model, LoRAMethod(r=R, alpha=ALPHA), FAMILY_TABLE[family])
        perturb_b(model)
        layer = model.get_submodule(path)
        x = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            unmerged = layer(x)
            layer.merge()
            merged = layer(x)
            assert torch.allclose(layer.base(x), unmerged, atol=1e-5)
        assert torch.allclose(merged, unmerged, atol=1e-5)


# ---------------------------------------------------------------- switching off


@pytest.mark.parametrize("family", FAMILIES)
def test_disable_adapters_gives_base_outputs_and_restores(family):
    model = BUILDERS[family]()
    ids = random_ids()
    base_out = outputs(model, ids)
    lora.apply(model, LoRAMethod(r=R, alpha=ALPHA), FAMILY_TABLE[family])
    perturb_b(model)
    lora_out = outputs(model, ids)
    assert not torch.allclose(lora_out, base_out, atol=1e-4)
    layers = lora_layers(model)
    with common.disable_adapters(model):
        assert not any(layer.enabled for layer in layers)
        assert torch.equal(outputs(model, ids), base_out)
    assert all(layer.enabled for layer in layers)
    assert torch.equal(outputs(model, ids), lora_out)


@pytest.mark.parametrize("family", FAMILIES)
def test_disable_adapters_on_a_merged_model_gives_base_outputs(family):
    model = BUILDERS[family]()
    ids = random_ids()
    base = outputs(model, ids)
    lora.apply(model, LoRAMethod(r=R, alpha=ALPHA), FAMILY_TABLE[family])
    perturb_b(model)
    adapted = outputs(model, ids)
    common.merge(model)
    with common.disable_adapters(model):
        torch.testing.assert_close(outputs(model, ids), base, atol=1e-5, rtol=0)
    assert all(layer.merged for layer in lora_layers(model)), "merged again on exit"
    torch.testing.assert_close(outputs(model, ids), adapted, atol=1e-5, rtol=0)


def test_disable_adapters_restores_even_after_an_exception():
    model = tiny_bert()
    lora.apply(model, LoRAMethod(r=R, alpha=ALPHA), FAMILY_TABLE["bert"])
    with pytest.raises(RuntimeError):
        with common.disable_adapters(model):
            raise RuntimeError("boom")
    assert all(layer.enabled for layer in lora_layers(model))


# ---------------------------------------------------------------- frozen base, gradients, optimizer


@pytest.mark.parametrize("family", FAMILIES)
def test_optimizer_steps_train_only_lora_and_head(family):
    model = BUILDERS[family]()
    lora.apply(model, LoRAMethod(r=R, alpha=ALPHA), FAMILY_TABLE[family])
    ids = random_ids(shape=(2, 6))
    weights = torch.randn(outputs(model, ids).shape, generator=torch.Generator().manual_seed(5))
    # Only LoRA's A and B train; a causal LM's lm_head (tied to the embeddings) stays frozen.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if is_lora(n)}

    frozen_before = snapshot(model, lambda n: n not in trainable)
    a0 = [layer.lora_A.detach().clone() for layer in lora_layers(model)]
    b0 = [layer.lora_B.detach().clone() for layer in lora_layers(model)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = (model(input_ids=ids)[0] * weights).sum()
        loss.backward()
        optimizer.step()

    loss = (model(input_ids=ids)[0] * weights).sum()
    loss.backward()
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    for layer in lora_layers(model):
        assert torch.count_nonzero(layer.lora_B.grad) > 0  # B gets a gradient at once
        assert torch.count_nonzero(layer.lora_A.grad) == 0  # A's gradient is B^T(...) = 0 while B = 0
    optimizer.step()

    layers = lora_layers(model)
    for layer, a, b in zip(layers, a0, b0):
        assert not torch.equal(layer.lora_B, b)
        assert torch.equal(layer.lora_A, a)
    step()
    for layer, a in zip(layers, a0):
        assert not torch.equal(layer.lora_A, a)
    frozen_after = snapshot(model, lambda n: n not in trainable)
    for name, p in frozen_before.items():
        assert torch.equal(frozen_after[name], p), name


# ---------------------------------------------------------------- exact parameter counts


@pytest.mark.parametrize("family, targets, per_layer", [
    # per layer: sum over targets of r * (in + out)
    ("bert", None, 3 * R * (D + D)),
    ("bert", ["query", "value"], 2 * R * (D + D)),
    ("bert", ["intermediate.dense"], R * (D + 2 * D)),  # 16 -> 32
    ("llama", None, 3 * R * (D + D)),
    ("llama", ["gate_proj", "down_proj"], R * (D + 2 * D) + R * (2 * D + D)),
    ("gpt2", None, 3 * R * (D + D)),                      # default c_attn:q,k,v
    ("gpt2", ["c_attn:q,v"], 2 * R * (D + D)),
    ("gpt2", ["c_attn:q,k,v"], 3 * R * (D + D)),
    ("gpt2", ["c_attn"], R * (D + 3 * D)),              # the whole fused matrix as one slice
    ("gpt2", ["c_attn:v", "c_fc"], R * (D + D) + R * (D + 4 * D)),
])
def test_trainable_counts_match_closed_form(family, targets, per_layer):
    model = BUILDERS[family]()
    base_total = param_total(model)
    lora.apply(model, LoRAMethod(r=R, alpha=ALPHA, target_modules=targets), FAMILY_TABLE[family])
    counts = common.count_parameters(model, base_total)
    lora_count = N_LAYERS * per_layer
    assert counts.trainable == lora_count
    assert counts.added == lora_count  # A and B only: nothing else is new
    assert counts.total == base_total + counts.added
    assert sum(p.numel() for n, p in model.named_parameters() if is_lora(n)) == lora_count


def test_lora_shapes_on_asymmetric_layers():
    model = tiny_llama()
    lora.apply(model, LoRAMethod(r=R, alpha=ALPHA, target_modules=["gate_proj", "down_proj"]), FAMILY_TABLE["llama"])
    gate = model.model.layers[0].mlp.gate_proj
    down = model.model.layers[0].mlp.down_proj
    assert gate.lora_A.shape == (1, R, D) and gate.lora_B.shape == (1, 2 * D, R)
    assert down.lora_A.shape == (1, R, 2 * D) and down.lora_B.shape == (1, D, R)
    assert gate.scaling == ALPHA / R


def test_count_with_classifier_head_on_top():
    backbone = tiny_bert()
    base_total = param_total(backbone)
    model = SequenceClassifier(backbone, num_labels=3).eval()
    lora.apply(model, LoRAMethod(r=R, alpha=ALPHA), FAMILY_TABLE["bert"])
    counts = common.count_parameters(model, base_total)
    lora_count = N_LAYERS * 3 * R * (D + D)
    assert counts.trainable == lora_count + (D * 3 + 3)
    assert counts.added == lora_count + (D * 3 + 3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert all(is_lora(n) or n.startswith("classifier.") for n in trainable)
    # The classifier is the head: trained in full, never wrapped by LoRA.
    assert type(model.classifier) is torch.nn.Linear


# ---------------------------------------------------------------- per-slice fused c_attn


def test_fused_slices_only_q_and_v_change():
    model = tiny_gpt2()
    lora.apply(model, LoRAMethod(r=R, alpha=ALPHA, target_modules=["c_attn:q,v"]), FAMILY_TABLE["gpt2"])
    layer = model.transformer.h[0].attn.c_attn
    assert layer.enabled_slices == (True, False, True)
    assert layer.lora_A.shape == (2, R, D) and layer.lora_B.shape == (2, D, R)
    perturb_b(model)
    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out, base = layer(x), layer.base(x)
    q, k, v = slice(0, D), slice(D, 2 * D), slice(2 * D, 3 * D)
    assert torch.equal(out[..., k], base[..., k])
    assert not torch.allclose(out[..., q], base[..., q], atol=1e-4)
    assert not torch.allclose(out[..., v], base[..., v], atol=1e-4)
    # delta_weight (out x in) is zero on the k rows too, so merging leaves k's weights alone.
    with torch.no_grad():
        dw = layer.delta_weight()
    assert dw.shape == (3 * D, D)
    assert torch.count_nonzero(dw[k]) == 0 and torch.count_nonzero(dw[q]) > 0 and torch.count_nonzero(dw[v]) > 0


def test_fused_slices_in_the_full_model():
    """Hooked c_attn output of the first block: the k columns equal the base model's."""
    ids = random_ids()
    captured = {}

    def hook(name):
        def fn(module, args, output):
            captured[name] = output.detach()
        return fn

    base = tiny_gpt2()
    base.transformer.h[0].attn.c_attn.register_forward_hook(hook("base"))
    outputs(base, ids)
    model = tiny_gpt2()
    lora.apply(model, LoRAMethod(r=R, alpha=ALPHA, target_modules=["c_attn:q,v"]), FAMILY_TABLE["gpt2"])
    perturb_b(model)
    model.transformer.h[0].attn.c_attn.register_forward_hook(hook("lora"))
    outputs(model, ids)
    assert torch.equal(captured["lora"][..., D:2 * D], captured["base"][..., D:2 * D])
    assert not torch.allclose(captured["lora"][..., :D], captured["base"][..., :D], atol=1e-4)
    assert not torch.allclose(captured["lora"][..., 2 * D:], captured["base"][..., 2 * D:], atol=1e-4)


# ---------------------------------------------------------------- target errors


def test_unknown_target_lists_the_linear_layers():
    model = tiny_bert()
    with pytest.raises(UserError) as err:
        lora.apply(model, LoRAMethod(r=R, alpha=ALPHA, target_modules=["nonexistent"]), FAMILY_TABLE["bert"])
    message = str(err.value)
    assert "nonexistent" in message
    for name in ("query", "key", "value", "dense"):
        assert name in message
    assert not lora_layers(model)


@pytest.mark.parametrize("target", ["c_attn:x", "c_attn:q,x", "c_attn:,"])
def test_unknown_slice_name_raises(target):
    with pytest.raises(UserError, match="slices must be among"):
        lora.apply(tiny_gpt2(), LoRAMethod(r=R, alpha=ALPHA, target_modules=[target]), FAMILY_TABLE["gpt2"])


def test_parse_target():
    assert lora.parse_target("query") == ("query", (True,))
    assert lora.parse_target("c_attn:q,v") == ("c_attn", (True, False, True))
    assert lora.parse_target("c_attn: v , k") == ("c_attn", (False, True, True))


def test_indivisible_slices_raise():
    layer = torch.nn.Linear(4, 5)
    with pytest.raises(UserError, match="equal slices"):
        LoRALayer(layer, r=2, alpha=4, enabled_slices=(True, False, True))


# ---------------------------------------------------------------- equivalence with PEFT


def peft_lora(model, name: str):
    """PEFT's LoRA layer that replaced ``name`` of the base model."""
    module = model.base_model.model.get_submodule(name)
    assert hasattr(module, "lora_A") and "default" in module.lora_A, f"PEFT did not wrap {name}"
    return module


def ours_and_peft(family: str, targets: list[str] | None, peft_targets: list[str], peft_r: int, peft_alpha: float):
    ours = BUILDERS[family]()
    lora.apply(ours, LoRAMethod(r=R, alpha=ALPHA, target_modules=targets), FAMILY_TABLE[family])
    perturb_b(ours)
    config = LoraConfig(r=peft_r, lora_alpha=peft_alpha, target_modules=peft_targets, lora_dropout=0.0,
                        init_lora_weights=True, fan_in_fan_out=(family == "gpt2"))
    theirs = get_peft_model(BUILDERS[family](), config).eval()
    wrapped = [n for n, m in ours.named_modules() if isinstance(m, LoRALayer)]
    peft_wrapped = sorted(n.removeprefix("base_model.model.") for n, m in theirs.named_modules()
                          if hasattr(m, "lora_A") and hasattr(m, "base_layer"))
    assert sorted(wrapped) == peft_wrapped
    return ours, theirs, wrapped


@pytest.mark.parametrize("family, targets", [
    ("bert", ["query", "key", "value"]),
    ("llama", ["q_proj", "k_proj", "v_proj"]),
    ("gpt2", ["c_attn"]),  # our whole-matrix mode is PEFT's LoRA on c_attn at the same rank
])
def test_matches_peft_on_plain_layers(family, targets):
    ours, theirs, wrapped = ours_and_peft(family, targets, targets, R, ALPHA)
    with torch.no_grad():
        for name in wrapped:
            mine, peft_layer = ours.get_submodule(name), peft_lora(theirs, name)
            assert mine.lora_A.shape[0] == 1
            peft_layer.lora_A["default"].weight.copy_(mine.lora_A[0])
            peft_layer.lora_B["default"].weight.copy_(mine.lora_B[0])
            assert peft_layer.scaling["default"] == mine.scaling
    ids = random_ids(seed=7)
    base_out = outputs(BUILDERS[family](), ids)
    ours_out, peft_out = outputs(ours, ids), outputs(theirs, ids)
    assert not torch.allclose(ours_out, base_out, atol=1e-4)
    assert torch.allclose(ours_out, peft_out, atol=1e-5)


@pytest.mark.parametrize("targets, slices", [
    (None, (0, 1, 2)),             # default c_attn:q,k,v
    (["c_attn:q,k,v"], (0, 1, 2)),
    (["c_attn:q,v"], (0, 2)),
])
def test_matches_peft_on_gpt2_per_slice(targets, slices):
    """k separate rank-r (A, B) pairs on slices of c_attn == one PEFT LoRA of rank k*r whose A stacks
    the A's and whose B is block diagonal (zero rows on the slices left out); alpha scales by k too,
    so alpha / r is unchanged."""
    k = len(slices)
    ours, theirs, wrapped = ours_and_peft("gpt2", targets, ["c_attn"], k * R, k * ALPHA)
    with torch.no_grad():
        for name in wrapped:
            mine, peft_layer = ours.get_submodule(name), peft_lora(theirs, name)
            assert mine.lora_A.shape == (k, R, D)
            a = torch.cat(list(mine.lora_A), dim=0)  # (k r, d)
            b = torch.zeros(3 * D, k * R)
            for j, s in enumerate(slices):
                b[s * D:(s + 1) * D, j * R:(j + 1) * R] = mine.lora_B[j]
            if k == 3:
                assert torch.equal(b, torch.block_diag(*mine.lora_B))
            peft_layer.lora_A["default"].weight.copy_(a)
            peft_layer.lora_B["default"].weight.copy_(b)
            assert peft_layer.scaling["default"] == mine.scaling
    ids = random_ids(seed=8)
    base_out = outputs(tiny_gpt2(), ids)
    ours_out, peft_out = outputs(ours, ids), outputs(theirs, ids)
    assert not torch.allclose(ours_out, base_out, atol=1e-4)
    assert torch.allclose(ours_out, peft_out, atol=1e-5)
