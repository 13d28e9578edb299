"""BitFit (Ben Zaken et al. 2021, arXiv:2106.10199): only the bias terms train (plus the task head).

Llama-style models have no biases in their linear layers; those layers get a zero-initialised
bias, so the model computes exactly the same function at init. The task summary counts them as
added parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from tunelab.methods.common import AdapterModule, freeze, module_ids, task_head, unfreeze
from tunelab.methods.options import BitFitMethod
from tunelab.models.families import Family


class PretrainedBiases(AdapterModule):
    """Keeps a frozen copy of the pretrained biases, so BitFit, which trains the model's own
    biases in place, can still be switched off: disabling swaps the copies in, enabling swaps
    the trained values back. Buffers, not parameters: nothing here is counted or saved."""

    def __init__(self, biases: list[nn.Parameter]):
        super().__init__()
        self.biases = biases  # a plain list: the parameters stay owned by their layers
        for i, bias in enumerate(biases):
            self.register_buffer(f"pretrained_{i}", bias.detach().clone(), persistent=False)
        self._enabled = True

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        if value != self._enabled:
            with torch.no_grad():
                for i, bias in enumerate(self.biases):
                    stored = getattr(self, f"pretrained_{i}")
                    current = bias.detach().clone()
                    bias.copy_(stored)
                    stored.copy_(current)
        self._enabled = value

    def memory_site(self) -> None:
        """Nothing of its own: the biases that train are the model's, seen as any parameter."""
        return None

    def switch_off_bytes(self) -> int:
        """The kept pretrained biases: what switching BitFit off swaps back in."""
        return sum(b.numel() * b.element_size() for b in self.buffers())


def apply(model: nn.Module, cfg: BitFitMethod, family: Family | None, tokenizer=None) -> None:
    heads = task_head(model)
    freeze(model)
    skip = module_ids(heads)
    biases: list[nn.Parameter] = []
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:
        skip.add(id(output))  # lm_head is the vocabulary projection, not a layer to bias
    for module in model.modules():
        if id(module) in skip:
            continue
        if cfg.add_missing_biases and isinstance(module, nn.Linear) and module.bias is None:
            weight = module.weight
            module.bias = nn.Parameter(torch.zeros(module.out_features, dtype=weight.dtype, device=weight.device))
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter):
            bias.requires_grad_(True)
            biases.append(bias)
    model.add_module("bitfit_pretrained_biases", PretrainedBiases(biases))
    unfreeze(heads)
