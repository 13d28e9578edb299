"""Full fine-tuning: every parameter trains. The baseline every method is measured against."""

from __future__ import annotations

from torch import nn

from tunelab.methods.options import FullMethod
from tunelab.models.families import Family


def apply(model: nn.Module, cfg: FullMethod, family: Family | None, tokenizer=None) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
