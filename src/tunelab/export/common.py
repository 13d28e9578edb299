"""What both export formats share: taking tunelab's modules out of a model, a probe input, the
model's outputs on it, and the check that what was written computes what the run computes."""

from __future__ import annotations

import torch
from torch import nn

from tunelab.errors import UserError
from tunelab.methods.common import AdapterModule

PROBE_SHAPE = (2, 8)
"""Two rows of eight tokens, the second right-padded by three: padding and pooling are checked too."""
RELATIVE_TOLERANCE = 1e-4
"""Allowed difference, relative to the largest output: float32 rounding of a merged weight, not a bug."""


def is_classifier(model: nn.Module) -> bool:
    """A classification run's model: tunelab's backbone + head (tunelab.tasks.classification)."""
    return hasattr(model, "backbone")


def strip_adapters(model: nn.Module) -> None:
    """Take tunelab's injected modules out of ``model``, each as it knows how (its ``take_out``)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, AdapterModule):
            module.take_out(model, name)


def probe(vocab_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask to compare the run and the export on, (2, 8) each."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, PROBE_SHAPE, generator=generator)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    return ids, mask


@torch.no_grad()
def outputs(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, skip: int = 0) -> torch.Tensor:
    """A classifier's logits (B, labels) or a causal LM's (B, T, vocab); ``skip``: leading
    positions to drop (PEFT's prompt tuning returns its virtual positions too)."""
    result = model(input_ids=ids, attention_mask=mask)
    logits = result if isinstance(result, torch.Tensor) else result.logits
    return logits[:, skip:] if skip else logits


def check_same(reference: torch.Tensor, exported: torch.Tensor, what: str) -> dict[str, float]:
    """Refuse an export whose outputs are not the run's; returns the difference for export.json."""
    if reference.shape != exported.shape:
        raise UserError(f"the exported {what} gives outputs of shape {tuple(exported.shape)}, the run "
                        f"{tuple(reference.shape)}; nothing was written")
    tolerance = RELATIVE_TOLERANCE * max(1.0, reference.abs().max().item())
    difference = (reference - exported).abs().max().item()
    if not difference <= tolerance:  # also refuses NaN
        raise UserError(f"the exported {what} does not reproduce the run: outputs differ by up to {difference:.3g} "
                        f"(tolerance {tolerance:.3g}), so this setting cannot be represented; nothing was written")
    return {"max_abs_difference": difference, "tolerance": tolerance}
