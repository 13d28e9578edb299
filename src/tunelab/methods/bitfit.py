"""BitFit (Ben Zaken et al. 2021, arXiv:2106.10199): only the bias terms train (plus the task head).

Llama-style models have no biases in their linear layers; those layers get a zero-initialised
bias, so the model computes exactly the same function at init. The task summary counts them as
added parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from tunelab.config import BitFitMethod
from tunelab.methods.common import freeze, module_ids, task_head, unfreeze


def apply(model: nn.Module, cfg: BitFitMethod, family: str, tokenizer=None) -> None:
    heads = task_head(model)
    freeze(model)
    skip = module_ids(heads)
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
    unfreeze(heads)
