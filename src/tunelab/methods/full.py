"""Full fine-tuning: every parameter trains. The baseline every method is measured against."""

from __future__ import annotations

from torch import nn

from tunelab.config import FullMethod


def apply(model: nn.Module, cfg: FullMethod, family: str, tokenizer=None) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
