"""LoRA: Low-Rank Adaptation (Hu et al. 2021, arXiv:2106.09685).

``h = W0 x + (alpha / r) * B A x`` with ``A`` (r x in) kaiming-uniform and ``B`` (out x r)
zero, so the wrapped layer equals the base layer at init (section 4.1). ``W0`` is frozen.

A fused projection (GPT-2's ``c_attn`` computes q, k and v in one matrix) can be split into
equal output slices with a separate (A, B) pair per enabled slice, so q, k and v are adapted
separately and any subset can be chosen, as in loralib's ``MergedLinear``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from tunelab.errors import UserError
from tunelab.methods.common import AdapterModule, freeze, module_ids, replace_module, task_head, unfreeze
from tunelab.methods.options import LoRAMethod
from tunelab.models.families import FUSED_SLICES, Family


class LoRALayer(AdapterModule):
    """Wraps an ``nn.Linear`` or a Hugging Face ``Conv1D`` (weight stored as in x out)."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 enabled_slices: Sequence[bool] = (True,)):
        super().__init__()
        if not isinstance(base, (nn.Linear, Conv1D)):
            raise TypeError(f"LoRA wraps nn.Linear or Conv1D, not {type(base).__name__}")
        self.base = base
        self.is_conv1d = isinstance(base, Conv1D)
        in_features, out_features = (base.weight.shape if self.is_conv1d else base.weight.shape[::-1])
        if out_features % len(enabled_slices):
            raise UserError(f"cannot split {out_features} outputs into {len(enabled_slices)} equal slices")
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.slice_size = out_features // len(enabled_slices)
        self.enabled_slices = tuple(bool(e) for e in enabled_slices)
        self.register_buffer("slice_index", torch.tensor([i for i, e in enumerate(self.enabled_slices) if e]),
                             persistent=False)
        k = len(self.slice_index)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(k, r, in_features, dtype=base.weight.dtype, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(k, self.slice_size, r, dtype=base.weight.dtype, device=base.weight.device))
        for a in self.lora_A:  # one (r x in) matrix per slice, initialised like PEFT / nn.Linear
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.merged = False

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """(alpha / r) B A x for every output, zeros on disabled slices."""
        if len(self.enabled_slices) == 1:  # a plain (unfused) layer: two matmuls, the common case
            low = nn.functional.linear(self.lora_dropout(x), self.lora_A[0])  # (..., r)
            return nn.functional.linear(low, self.lora_B[0]) * self.scaling  # (..., out)
        low = torch.einsum("...i,kri->...kr", self.lora_dropout(x), self.lora_A)  # (..., k, r)
        update = torch.einsum("...kr,kor->...ko", low, self.lora_B) * self.scaling  # (..., k, slice)
        n_slices = len(self.enabled_slices)
        if len(self.slice_index) == n_slices:
            return update.flatten(-2)  # (..., out)
        full = update.new_zeros(*update.shape[:-2], n_slices, self.slice_size)
        full[..., self.slice_index, :] = update
        return full.flatten(-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not self.enabled or self.merged:  # merged: W0 already holds the update
            return out
        return out + self.delta(x)

    def delta_weight(self) -> torch.Tensor:
        """The update as an (out x in) matrix: B_s A_s stacked at each enabled slice s."""
        blocks = torch.einsum("kor,kri->koi", self.lora_B, self.lora_A) * self.scaling  # (k, slice, in)
        full = blocks.new_zeros(len(self.enabled_slices), self.slice_size, blocks.shape[-1])
        full[self.slice_index] = blocks
        return full.flatten(0, 1)

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- W0 + delta, for inference without extra matmuls. A second call does nothing."""
        if self.merged:
            return
        update = self.delta_weight()
        self.base.weight += update.T if self.is_conv1d else update
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 <- W0 - delta, back to training form. Does nothing when not merged."""
        if not self.merged:
            return
        update = self.delta_weight()
        self.base.weight -= update.T if self.is_conv1d else update
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, slices={self.enabled_slices}, merged={self.merged}"


def parse_target(target: str) -> tuple[str, tuple[bool, ...]]:
    """``"c_attn:q,v"`` -> (``"c_attn"``, (True, False, True)); ``"query"`` -> (``"query"``, (True,)).

    Slices may also be joined with ``+`` (``c_attn:q+v``), which survives a YAML flow list
    such as ``--method.target_modules [c_attn:q+v]`` where a comma would split the item.
    """
    name, _, slices = target.partition(":")
    if not slices:
        return name, (True,)
    chosen = [s.strip() for s in slices.replace("+", ",").split(",") if s.strip()]
    unknown = [s for s in chosen if s not in FUSED_SLICES]
    if unknown or not chosen:
        raise UserError(f"method.target_modules {target!r}: slices must be among {', '.join(FUSED_SLICES)}")
    return name, tuple(s in chosen for s in FUSED_SLICES)


def default_targets(family: Family) -> list[str]:
    """The attention's query, key and value projections (all three slices of a fused one)."""
    if family.fused_qkv is not None:
        return [f"{family.fused_qkv}:{','.join(FUSED_SLICES)}"]
    return list(family.query_key_value)


def linear_layer_names(model: nn.Module) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))})


def apply(model: nn.Module, cfg: LoRAMethod, family: Family | None, tokenizer=None) -> None:
    """Wrap the targeted layers, then train only LoRA's A and B (and the task head)."""
    heads = task_head(model)
    freeze(model)
    targets = [parse_target(t) for t in (cfg.target_modules or default_targets(family))]
    skip = module_ids(heads)
    matches = []
    for name, module in model.named_modules():
        if id(module) in skip or not isinstance(module, (nn.Linear, Conv1D)):
            continue
        for suffix, slices in targets:
            if name == suffix or name.endswith("." + suffix):
                matches.append((name, slices))
                break
    if not matches:
        wanted = ", ".join(t for t, _ in targets)
        raise UserError(f"LoRA target_modules ({wanted}) match no linear layer; "
                        f"linear layers in this model: {', '.join(linear_layer_names(model))}")
    for name, slices in matches:
        layer = replace_module(model, name, lambda base, s=slices: LoRALayer(base, cfg.r, cfg.alpha, cfg.dropout, s))
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    unfreeze(heads)
