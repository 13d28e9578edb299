"""LoRA's variants against PEFT on the same weights: DoRA (outputs, gradients, an optimizer step,
merged and unmerged), rsLoRA's scaling, PiSSA's and OLoRA's initial A, B and residual, LoRA+'s
parameter groups; and what each variant must keep of LoRA (identity at init, merge round trip)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer

from conftest import tiny_bert, tiny_gpt2, tiny_llama
from tunelab.errors import UserError
from tunelab.methods import common, lora, parameter_groups
from tunelab.methods.lora import DoRALayer, LoRALayer
from tunelab.methods.options import LoRAMethod
from tunelab.models.families import FAMILIES as FAMILY_TABLE
from tunelab.tasks.classification import SequenceClassifier

BUILDERS = {"bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}
TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}
R, ALPHA = 4, 8


def ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(seed))


def logits(model, batch: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def pair(family: str, **options):
    """Our LoRA variant and PEFT's on two copies of one tiny model, our trained tensors (made
    non-trivial) copied into PEFT's. Returns ours, theirs and the wrapped layers' names."""
    cfg = LoRAMethod(r=R, alpha=ALPHA, target_modules=TARGETS[family], **options)
    ours = BUILDERS[family]()
    lora.apply(ours, cfg, FAMILY_TABLE[family])
    config = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS[family], fan_in_fan_out=family == "gpt2",
                        use_dora=cfg.use_dora, use_rslora=cfg.scaling == "rslora")
    theirs = get_peft_model(BUILDERS[family](), config)
    names = [n for n, m in ours.named_modules() if isinstance(m, LoRALayer)]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in names:
            mine, peft_layer = ours.get_submodule(name), theirs.base_model.model.get_submodule(name)
            mine.lora_B.normal_(0, 0.2, generator=g)
            peft_layer.lora_A["default"].weight.copy_(mine.lora_A[0])
            peft_layer.lora_B["default"].weight.copy_(mine.lora_B[0])
            if cfg.use_dora:
                mine.magnitude.mul_(1 + 0.1 * torch.randn(mine.magnitude.shape, generator=g))
                peft_layer.lora_magnitude_vector["default"].weight.copy_(mine.magnitude)
    return ours, theirs, names


def our_gradients(model, names) -> dict[str, torch.Tensor]:
    """Our gradients under PEFT's layout (one slice: the first of our stacked A and B)."""
    found = {}
    for name in names:
        layer = model.get_submodule(name)
        found[f"{name}.lora_A"], found[f"{name}.lora_B"] = layer.lora_A.grad[0], layer.lora_B.grad[0]
        if isinstance(layer, DoRALayer):
            found[f"{name}.magnitude"] = layer.magnitude.grad
    return found


def peft_gradients(model, names) -> dict[str, torch.Tensor]:
    found = {}
    for name in names:
        layer = model.base_model.model.get_submodule(name)
        found[f"{name}.lora_A"] = layer.lora_A["default"].weight.grad
        found[f"{name}.lora_B"] = layer.lora_B["default"].weight.grad
        if layer.lora_magnitude_vector:
            found[f"{name}.magnitude"] = layer.lora_magnitude_vector["default"].weight.grad
    return found


# ---------------------------------------------------------------- DoRA


@pytest.mark.parametrize("family", list(BUILDERS))
def test_dora_matches_peft_in_outputs_gradients_a_step_and_merging(family):
    ours, theirs, names = pair(family, use_dora=True)
    assert all(isinstance(ours.get_submodule(n), DoRALayer) for n in names)
    batch, base = ids(), logits(BUILDERS[family](), ids())
    for model in (ours, theirs):
        model.eval()  # the model's own dropout off (GPT-2 has some): the same function on both sides
        logits(model, batch).pow(2).mean().backward()
    mine, peft = our_gradients(ours, names), peft_gradients(theirs, names)
    assert mine.keys() == peft.keys() and any(k.endswith("magnitude") for k in mine)
    for key in mine:
        assert torch.count_nonzero(mine[key]) > 0, key
        torch.testing.assert_close(mine[key], peft[key], atol=1e-6, rtol=1e-4, msg=key)
    # one SGD step each, from the same tensors and gradients (SGD: a step in proportion to the
    # gradient; Adam's first step is lr * sign(g), which float noise on a near-zero g can flip)
    for model, params in ((ours, [p for p in ours.parameters() if p.requires_grad]),
                          (theirs, [p for p in theirs.parameters() if p.requires_grad])):
        torch.optim.SGD(params, lr=0.5).step()
    with torch.no_grad():
        after = logits(ours, batch)
        assert not torch.allclose(after, base, atol=1e-3)
        torch.testing.assert_close(after, logits(theirs, batch), atol=1e-5, rtol=1e-4)
        common.merge(ours)
        theirs.merge_adapter()
        torch.testing.assert_close(logits(ours, batch), after, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(logits(theirs, batch), after, atol=1e-5, rtol=1e-4)
        common.unmerge(ours)
        torch.testing.assert_close(logits(ours, batch), after, atol=1e-5, rtol=1e-4)


def test_dora_norm_passes_no_gradient():
    """Section 4.3: ||W0 + s B A|| is a constant to the gradient; only m and B A's direction term learn."""
    layer = DoRALayer(torch.nn.Linear(6, 5), r=2, alpha=4)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 6)
    layer(x).sum().backward()
    by_hand_b = layer.lora_B.grad.clone()
    layer.zero_grad()
    # the same, with the norm computed outside autograd by hand: gradients must agree
    norm = torch.linalg.norm(layer.base.weight + layer.delta_weight().detach(), dim=1)
    factor = layer.magnitude / norm
    out = layer.base(x) + (factor - 1) * (x @ layer.base.weight.T) + factor * layer.delta(x)
    out.sum().backward()
    torch.testing.assert_close(layer.lora_B.grad, by_hand_b)


# ---------------------------------------------------------------- rsLoRA


@pytest.mark.parametrize("family", list(BUILDERS))
def test_rslora_scaling_and_outputs_match_peft(family):
    ours, theirs, names = pair(family, scaling="rslora")
    for name in names:
        assert ours.get_submodule(name).scaling == theirs.base_model.model.get_submodule(name).scaling["default"]
        assert ours.get_submodule(name).scaling == pytest.approx(ALPHA / R ** 0.5)
    with torch.no_grad():
        torch.testing.assert_close(logits(ours.eval(), ids(5)), logits(theirs.eval(), ids(5)), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- PiSSA, OLoRA


@pytest.mark.parametrize("init, family", [("pissa", "bert"), ("pissa", "llama"), ("pissa", "gpt2"),
                                          ("olora", "bert"), ("olora", "llama")])
def test_pissa_and_olora_start_as_peft_does(init, family):
    """The same A, B and residual base weight as PEFT's init_lora_weights=pissa/olora, and the
    model unchanged at init. (PEFT's OLoRA does not transpose a Conv1D weight, so GPT-2 is left out.)"""
    cfg = LoRAMethod(r=R, alpha=ALPHA, target_modules=TARGETS[family], init=init)
    model = BUILDERS[family]()
    base = logits(model, ids())
    lora.apply(model, cfg, FAMILY_TABLE[family])
    config = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS[family], fan_in_fan_out=family == "gpt2",
                        init_lora_weights=init)
    theirs = get_peft_model(BUILDERS[family](), config)
    for name in [n for n, m in model.named_modules() if isinstance(m, LoRALayer)]:
        mine, peft_layer = model.get_submodule(name), theirs.base_model.model.get_submodule(name)
        torch.testing.assert_close(mine.lora_A[0], peft_layer.lora_A["default"].weight, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(mine.lora_B[0], peft_layer.lora_B["default"].weight, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(mine.base.weight, peft_layer.base_layer.weight, atol=1e-5, rtol=1e-4)
        assert torch.count_nonzero(mine.lora_B) > 0  # not LoRA's zero B: the principal part moves
    with torch.no_grad():
        torch.testing.assert_close(logits(model, ids()), base, atol=1e-5, rtol=1e-4)


def test_pissa_rank_beyond_the_weight_is_one_line():
    with pytest.raises(UserError, match="r=9 is more than"):
        LoRALayer(torch.nn.Linear(8, 8), r=9, alpha=9, init="pissa")


# ---------------------------------------------------------------- LoRA+


def test_loraplus_groups_and_learning_rates_match_peft():
    """Our groups = PEFT's create_loraplus_optimizer on the same classifier (DoRA's magnitudes
    and the head's bias are 1-D: they go with B), compared by the shapes each group holds."""
    lr, ratio, decay = 1e-3, 16.0, 0.01
    cfg = LoRAMethod(r=R, alpha=ALPHA, target_modules=TARGETS["bert"], use_dora=True, lr_ratio=ratio)
    ours = SequenceClassifier(tiny_bert(), num_labels=2)
    lora.apply(ours, cfg, FAMILY_TABLE["bert"])
    config = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS["bert"], use_dora=True,
                        modules_to_save=["classifier"])
    theirs = get_peft_model(SequenceClassifier(tiny_bert(), num_labels=2), config)
    optimizer = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=ratio,
                                          loraplus_weight_decay=decay)

    def described(groups) -> list[tuple[float, float, list[int]]]:  # sizes: our A and B have a slice axis
        return sorted((g["lr"], g["weight_decay"], sorted(p.numel() for p in g["params"]))
                      for g in groups if g["params"])

    mine = described(parameter_groups(ours, cfg, lr, decay))
    assert mine == described(optimizer.param_groups)
    assert {lr, lr * ratio} == {g[0] for g in mine} and any(g[1] == 0.0 for g in mine)


def test_without_a_ratio_every_tensor_learns_at_the_learning_rate():
    cfg = LoRAMethod(r=R, alpha=ALPHA)
    model = tiny_bert()
    lora.apply(model, cfg, FAMILY_TABLE["bert"])
    (group,) = parameter_groups(model, cfg, 1e-3, 0.0)
    assert group["lr"] == 1e-3 and len(group["params"]) == sum(p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------- all-linear


@pytest.mark.parametrize("family", list(BUILDERS))
def test_all_linear_wraps_what_peft_wraps(family):
    model = BUILDERS[family]()
    lora.apply(model, LoRAMethod(r=R, alpha=ALPHA, target_modules="all-linear"), FAMILY_TABLE[family])
    theirs = get_peft_model(BUILDERS[family](), LoraConfig(r=R, lora_alpha=ALPHA, target_modules="all-linear",
                                                           fan_in_fan_out=family == "gpt2"))
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, LoRALayer))
    peft_wrapped = sorted(n.removeprefix("base_model.model.") for n, m in theirs.named_modules()
                          if hasattr(m, "lora_A") and hasattr(m, "base_layer"))
    assert wrapped == peft_wrapped and len(wrapped) > len(TARGETS[family]) * 2


# ---------------------------------------------------------------- what every variant keeps of LoRA


@pytest.mark.parametrize("options", [{"use_dora": True}, {"scaling": "rslora"}, {"init": "gaussian"},
                                     {"init": "pissa"}, {"init": "olora", "use_dora": True}],
                         ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("family", list(BUILDERS))
def test_every_variant_starts_as_the_base_and_merges_exactly(family, options):
    if family == "gpt2" and options.get("init") == "olora":
        options = {**options, "init": "pissa"}
    model = BUILDERS[family]()
    batch = ids(2)
    base = logits(model, batch)
    lora.apply(model, LoRAMethod(r=R, alpha=ALPHA, **options), FAMILY_TABLE[family])
    with torch.no_grad():
        torch.testing.assert_close(logits(model, batch), base, atol=1e-5, rtol=1e-4)
        for layer in [m for m in model.modules() if isinstance(m, LoRALayer)]:
            layer.lora_B.add_(0.1)
        trained = logits(model, batch)
        assert not torch.allclose(trained, base, atol=1e-3)
        common.merge(model)
        torch.testing.assert_close(logits(model, batch), trained, atol=1e-5, rtol=1e-4)
        common.unmerge(model)
        torch.testing.assert_close(logits(model, batch), trained, atol=1e-6, rtol=1e-5)


def test_params_counts_a_pissa_or_dora_lora_without_weights(tiny_bert_dir, capsys):
    """`tunelab params` builds the model without weights: PiSSA has nothing to decompose there and
    must still count; DoRA adds one magnitude per output of every wrapped layer."""
    import json

    from tunelab import cli

    def trainable(*options: str) -> int:
        assert cli.main(["params", "--model", str(tiny_bert_dir), "--method", "lora", *options, "--json"]) == 0
        return json.loads(capsys.readouterr().out)["trainable_params"]

    plain = trainable()
    assert trainable("--method.init", "pissa") == plain
    wrapped_outputs = 2 * 3 * 16  # 2 layers x query, key, value x 16 outputs
    assert trainable("--method.use_dora", "true") == plain + wrapped_outputs


def test_a_loraplus_run_trains_with_its_own_groups(tiny_run_config, tmp_path, monkeypatch):
    """`tunelab train` asks the method for its optimizer groups: B at lr_ratio x the learning rate."""
    from conftest import cli_args
    from tunelab import cli

    made = []

    class Recorded(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", Recorded)
    method = {"name": "lora", "r": 4, "alpha": 8, "lr_ratio": 16}
    cfg = {**tiny_run_config, "method": method, "train": {**tiny_run_config["train"], "max_steps": 2}}
    assert cli.main(["train", *cli_args(cfg)]) == 0
    lr = tiny_run_config["train"]["lr"]
    assert sorted({group["initial_lr"] for group in made[0].param_groups}) == [lr, pytest.approx(16 * lr)]
