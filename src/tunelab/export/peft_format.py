"""``--format peft``: the run's adapter as PEFT saves its own (adapter_config.json +
adapter_model.safetensors), for ``peft.PeftModel.from_pretrained(base, DIR)``.

tunelab's modules are taken out of the rebuilt model, PEFT's are injected with ``get_peft_model``
on the same config, tunelab's trained tensors are copied in, and PEFT's ``save_pretrained``
writes them: key names and the config are PEFT's own, not re-implemented here.

Per-slice LoRA on a fused projection (GPT-2's ``c_attn``:q,v), which PEFT cannot slice, becomes
one LoRA on the whole projection of rank k r: A stacks the k slices' A's, B is block-structured
(slice s's rows hold B_s in s's own r columns, zeros elsewhere), so B A is exactly the per-slice
update and the left-out slices get none. lora_alpha is scaled by k as well, keeping alpha / r.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from tunelab.export.common import is_classifier, strip_adapters
from tunelab.methods.ia3 import IA3Layer
from tunelab.methods.lora import LoRALayer
from tunelab.methods.prefix import KeyValuePrefix
from tunelab.methods.prompt import SoftPrompt
from tunelab.models.loading import load_causal_lm, load_encoder, resolve

Fill = Callable[[nn.Module], None]
"""Copies tunelab's trained tensors into the PEFT model's own."""


def stacked_lora(layer: LoRALayer) -> tuple[torch.Tensor, torch.Tensor]:
    """One (A, B) pair for the whole layer, (k r, in) and (out, k r), with B A = the layer's update / scaling."""
    k, r, _ = layer.lora_A.shape
    a = layer.lora_A.detach().reshape(k * r, -1)
    b = layer.lora_B.new_zeros(len(layer.enabled_slices) * layer.slice_size, k * r)
    for j, s in enumerate(layer.slice_index.tolist()):
        b[s * layer.slice_size:(s + 1) * layer.slice_size, j * r:(j + 1) * r] = layer.lora_B[j].detach()
    return a, b


def lora_adapter(model: nn.Module, cfg) -> tuple[object, Fill, dict]:
    from peft import LoraConfig

    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoRALayer)}
    pairs = {name: stacked_lora(m) for name, m in layers.items()}
    scaling = cfg.alpha / cfg.r
    ranks = {name: a.shape[0] for name, (a, _) in pairs.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    other = {re.escape(name): rank for name, rank in ranks.items() if rank != r}  # exact names, as PEFT's patterns
    config = LoraConfig(r=r, lora_alpha=scaling * r, target_modules=sorted(layers), lora_dropout=cfg.dropout,
                        fan_in_fan_out=any(m.is_conv1d for m in layers.values()), bias="none",
                        rank_pattern=other, alpha_pattern={key: scaling * rank for key, rank in other.items()})

    def fill(peft_model: nn.Module) -> None:
        for name, (a, b) in pairs.items():
            target = peft_model.get_base_model().get_submodule(name)
            target.lora_A["default"].weight.copy_(a)
            target.lora_B["default"].weight.copy_(b)

    sliced = sorted(name for name, m in layers.items() if len(m.enabled_slices) > 1)
    detail = {"r": r, "lora_alpha": scaling * r, "scaling": scaling, "rank_pattern": other,
              "fused_projections_as_stacked_lora": sliced}
    return config, fill, detail


def ia3_adapter(model: nn.Module, cfg) -> tuple[object, Fill, dict]:
    """PEFT scales a fused projection's whole output; tunelab's q slice keeps scale 1, so ones there."""
    from peft import IA3Config

    layers = {name: m for name, m in model.named_modules() if isinstance(m, IA3Layer)}
    scales = {name: m.scale().detach() for name, m in layers.items()}
    feedforward = sorted(name for name, m in layers.items() if m.scale_input)
    conv1d = any(not isinstance(m.base, nn.Linear) for m in layers.values())
    config = IA3Config(target_modules=sorted(layers), feedforward_modules=feedforward, fan_in_fan_out=conv1d)

    def fill(peft_model: nn.Module) -> None:
        for name, scale in scales.items():
            target = peft_model.get_base_model().get_submodule(name).ia3_l["default"]
            target.copy_(scale.view_as(target))  # (out, 1), or (1, in) on a feed-forward input

    return config, fill, {"target_modules": sorted(layers), "feedforward_modules": feedforward}


def prompt_adapter(model: nn.Module, cfg) -> tuple[object, Fill, dict]:
    from peft import PromptTuningConfig, PromptTuningInit

    prompt = next(m for m in model.modules() if isinstance(m, SoftPrompt)).prompt.detach()  # (n, H)
    # RANDOM: loading must not need the init text's tokenizer; the saved embeddings replace it anyway.
    config = PromptTuningConfig(num_virtual_tokens=prompt.shape[0], token_dim=prompt.shape[1],
                                prompt_tuning_init=PromptTuningInit.RANDOM)

    def fill(peft_model: nn.Module) -> None:
        peft_model.prompt_encoder["default"].embedding.weight.copy_(prompt)

    return config, fill, {"virtual_positions_in_outputs": prompt.shape[0]}


def prefix_adapter(model: nn.Module, cfg) -> tuple[object, Fill, dict]:
    """PEFT's prefix embedding without projection is (n, L * 2 * kv_heads * head_dim), laid out
    (token, layer, key/value, head, dim); a reparameterised run's MLP is already folded away."""
    from peft import PrefixTuningConfig

    prefix = next(m for m in model.modules() if isinstance(m, KeyValuePrefix))
    keys, values = (t.detach() for t in prefix.keys_values())  # each (L, kv_heads, n, head_dim)
    n = prefix.num_virtual_tokens
    embedding = torch.stack([keys, values], 1).permute(3, 0, 1, 2, 4).reshape(n, -1)
    config = PrefixTuningConfig(num_virtual_tokens=n, prefix_projection=False)

    def fill(peft_model: nn.Module) -> None:
        peft_model.prompt_encoder["default"].embedding.weight.copy_(embedding)

    return config, fill, {}


ADAPTERS = {"lora": lora_adapter, "ia3": ia3_adapter, "prompt": prompt_adapter, "prefix": prefix_adapter}


def write(cfg, prepared, folder: Path) -> dict:
    """Save the run's adapter in PEFT's format into ``folder``; the model is consumed. Returns
    what export.json records of it."""
    from peft import TaskType, get_peft_model

    model = prepared.model
    config, fill, detail = ADAPTERS[cfg.method.name](model, cfg.method)
    if is_classifier(model):  # tunelab's own model class: PEFT's generic model, the head saved whole
        heads = {id(m) for m in model.head_modules()}
        config.modules_to_save = [name for name, m in model.named_children() if id(m) in heads]
    else:
        config.task_type = TaskType.CAUSAL_LM
    strip_adapters(model)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        fill(peft_model)
    saved = peft_model.peft_config["default"]
    saved.base_model_name_or_path, saved.revision = resolve(cfg.model), cfg.model.revision
    peft_model.save_pretrained(str(folder), save_embedding_layers=False)
    return {"peft_type": str(saved.peft_type.value), "task_type": saved.task_type and str(saved.task_type.value),
            "modules_to_save": list(config.modules_to_save or []), **detail}


def load(cfg, folder: Path, num_labels: int) -> nn.Module:
    """What a user does: the base model loaded afresh, the exported adapter put on it by PEFT."""
    from peft import PeftModel

    if cfg.task.causal:
        base = load_causal_lm(cfg.model)
    else:
        from tunelab.tasks.classification import SequenceClassifier

        base = SequenceClassifier(load_encoder(cfg.model), num_labels, cfg.task.pooling, cfg.task.classifier_dropout)
    return PeftModel.from_pretrained(base, str(folder)).eval()
