"""Bottleneck adapters (Houlsby et al. 2019, arXiv:1902.00751; Pfeiffer et al. 2021, arXiv:2005.00247).

``h + up(act(down(h)))`` applied to the output ``h`` of a sub-layer's output projection, before
the residual connection. ``up`` starts at zero, so every adapter is the identity at init.
Houlsby places one after the attention output projection and one after the feed-forward output
of every layer; Pfeiffer only the feed-forward one.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from tunelab.errors import UserError
from tunelab.methods.common import AdapterModule, freeze, module_ids, replace_module, task_head, unfreeze
from tunelab.methods.memory_sites import BottleneckSite
from tunelab.methods.options import AdapterMethod
from tunelab.models.families import Family

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}


class BottleneckAdapter(AdapterModule):
    """Wraps an output projection: ``h = base(x); h + up(act(down(h)))``."""

    def __init__(self, base: nn.Module, size: int, activation: str = "gelu"):
        super().__init__()
        self.base = base
        hidden = base.weight.shape[1] if isinstance(base, Conv1D) else base.weight.shape[0]
        factory = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.adapter_down = nn.Linear(hidden, size, **factory)
        self.act = ACTIVATIONS[activation]()
        self.adapter_up = nn.Linear(size, hidden, **factory)
        nn.init.zeros_(self.adapter_up.weight)  # identity at init (Houlsby et al., section 2.1)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        if not self.enabled:
            return h
        return h + self.adapter_up(self.act(self.adapter_down(h)))

    def memory_site(self) -> BottleneckSite:
        """A bottleneck on the wrapped projection's output."""
        return BottleneckSite(hidden=self.adapter_down.in_features, size=self.adapter_down.out_features)


def bottleneck_size(cfg: AdapterMethod, hidden: int) -> int:
    size = cfg.size if cfg.size is not None else max(1, round(hidden / cfg.reduction_factor))
    if size > hidden:
        raise UserError(f"method.size {size} is larger than the hidden size {hidden}; "
                        f"a bottleneck must be at most {hidden}")
    return size


def apply(model: nn.Module, cfg: AdapterMethod, family: Family | None, tokenizer=None) -> None:
    heads = task_head(model)
    freeze(model)
    # The output projections of the attention and the feed-forward sub-layers (models.families).
    feed_forward = family.feed_forward_output
    patterns = [feed_forward] if cfg.placement == "pfeiffer" else [family.attention_output, feed_forward]
    skip = module_ids(heads)
    matches = [name for name, m in model.named_modules()
               if id(m) not in skip and isinstance(m, (nn.Linear, Conv1D))
               and any(re.search(p, name) for p in patterns)]
    if not matches:
        raise UserError("found no attention/feed-forward output projections to put adapters after "
                        f"in this {family.name} model")
    hidden = model.config.hidden_size
    size = bottleneck_size(cfg, hidden)
    for name in matches:
        adapter = replace_module(model, name, lambda base: BottleneckAdapter(base, size, cfg.activation))
        unfreeze([adapter.adapter_down, adapter.adapter_up])
    unfreeze(heads)
