"""(IA)^3 (Liu et al. 2022, arXiv:2205.05638, section 3.3): learned vectors that rescale the
keys, the values and the feed-forward intermediate activations, initialised to ones so the
model is unchanged at init.

Keys and values are rescaled at the output of their projections (bias included, as in PEFT);
the intermediate activations at the input of the feed-forward output projection. On GPT-2's
fused ``c_attn`` only the k and v slices are rescaled; q keeps scale 1.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from tunelab.errors import UserError
from tunelab.methods.common import AdapterModule, freeze, module_ids, replace_module, task_head, unfreeze
from tunelab.methods.memory_sites import ScaleSite
from tunelab.methods.options import IA3Method
from tunelab.models.families import Family


def targets(family: Family) -> list[tuple[str, str | tuple[bool, ...]]]:
    """(module-name pattern, where): "output" and "input" rescale a projection's output or
    input, a slice mask the output slices of a fused q/k/v projection (only k and v)."""
    if family.fused_qkv is not None:
        keys_values = [(rf"\.{family.fused_qkv}$", (False, True, True))]
    else:
        _, key, value = family.query_key_value
        keys_values = [(rf"\.{key}$", "output"), (rf"\.{value}$", "output")]
    return keys_values + [(family.feed_forward_output, "input")]


class IA3Layer(AdapterModule):
    """Rescales a projection's input (``base(x * l)``) or output (``base(x) * l``) elementwise."""

    def __init__(self, base: nn.Module, where="output"):
        super().__init__()
        self.base = base
        in_features, out_features = base.weight.shape if isinstance(base, Conv1D) else base.weight.shape[::-1]
        self.scale_input = where == "input"
        slices = (True,) if where in ("input", "output") else tuple(where)
        self.enabled_slices = slices
        size = in_features if self.scale_input else out_features // len(slices)
        factory = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.ia3_l = nn.Parameter(torch.ones(sum(slices), size, **factory))  # (enabled slices, features)

    def scale(self) -> torch.Tensor:
        """The full scaling vector: ones on slices that are not adapted."""
        if all(self.enabled_slices):
            return self.ia3_l.flatten()
        full = self.ia3_l.new_ones(len(self.enabled_slices), self.ia3_l.shape[-1])
        full[[i for i, e in enumerate(self.enabled_slices) if e]] = self.ia3_l
        return full.flatten()

    merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.merged:  # merged: the base weights hold the scales
            return self.base(x)
        if self.scale_input:
            return self.base(x * self.scale())
        return self.base(x) * self.scale()

    @torch.no_grad()
    def rescale_base(self, factor: torch.Tensor) -> None:
        """Scale the wrapped layer's weights so that it computes what scaling by ``factor`` did:
        ``base(x * l)`` is a layer with its weight's columns scaled, ``base(x) * l`` one with its
        rows and bias scaled (Conv1D stores the weight as (in, out), nn.Linear as (out, in))."""
        rows_are_inputs = isinstance(self.base, Conv1D)
        if self.scale_input:
            self.base.weight.mul_(factor[:, None] if rows_are_inputs else factor[None, :])
            return
        self.base.weight.mul_(factor[None, :] if rows_are_inputs else factor[:, None])
        if self.base.bias is not None:
            self.base.bias.mul_(factor)

    def merge(self) -> None:
        """Fold the scales into the wrapped layer's weights. A second call does nothing."""
        if not self.merged:
            self.rescale_base(self.scale().detach())
            self.merged = True

    def unmerge(self) -> None:
        """Divide the scales back out. Does nothing when not merged."""
        if self.merged:
            self.rescale_base(1 / self.scale().detach())
            self.merged = False

    def memory_site(self) -> ScaleSite:
        """A vector scaling the projection's input, or its output (all of it: slices not
        adapted are multiplied by ones)."""
        return ScaleSite(features=self.ia3_l.shape[-1] * len(self.enabled_slices), slices=self.enabled_slices)


def apply(model: nn.Module, cfg: IA3Method, family: Family | None, tokenizer=None) -> None:
    heads = task_head(model)
    freeze(model)
    patterns = targets(family)
    skip = module_ids(heads)
    found = []
    for name, module in model.named_modules():
        if id(module) in skip or not isinstance(module, (nn.Linear, Conv1D)):
            continue
        where = next((w for pattern, w in patterns if re.search(pattern, name)), None)
        if where is not None:
            found.append((name, where))
    if not found:
        raise UserError(f"found no key/value/feed-forward layers for IA3 in this {family.name} model")
    for name, where in found:
        layer = replace_module(model, name, lambda base, w=where: IA3Layer(base, w))
        layer.ia3_l.requires_grad_(True)
    unfreeze(heads)


def peft_adapter(model: nn.Module, cfg: IA3Method):
    """PEFT's IA3Config for the run, the copy of our scales into PEFT's, and what export.json
    records. PEFT scales a fused projection's whole output; our q slice keeps scale 1, so ones there."""
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

    detail = {"target_modules": sorted(layers), "feedforward_modules": feedforward}
    if any(not all(m.enabled_slices) for m in layers.values()):
        detail["notes"] = ["PEFT scales the whole output of a fused q/k/v projection; the run scaled only k and v, "
                           "so q's scales are saved as ones."]
    return config, fill, detail
