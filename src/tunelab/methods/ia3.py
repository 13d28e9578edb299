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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base(x)
        if self.scale_input:
            return self.base(x * self.scale())
        return self.base(x) * self.scale()


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
