"""The method registry: ``method.name`` in a config -> the module that applies it.

Every method module has ``apply(model, cfg, family)``: inject the method's tensors and freeze
everything it does not train. Saving, loading, counting and switching off are generic
(:mod:`tunelab.methods.common`).
"""

from __future__ import annotations

from torch import nn

from tunelab.methods import full, head, lora

REGISTRY = {"full": full, "head": head, "lora": lora}


def apply_method(model: nn.Module, cfg, family: str) -> None:
    REGISTRY[cfg.name].apply(model, cfg, family)
