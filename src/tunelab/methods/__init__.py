"""The method registry: ``method.name`` in a config -> the module that applies it.

Every method module has ``apply(model, cfg, family)``: inject the method's tensors and freeze
everything it does not train. Saving, loading, counting and switching off are generic
(:mod:`tunelab.methods.common`).
"""

from __future__ import annotations

from torch import nn

from tunelab.methods import adapter, bitfit, full, head, ia3, lora, lstm, none, prefix, prompt

REGISTRY = {"none": none, "full": full, "head": head, "bitfit": bitfit, "adapter": adapter, "lora": lora, "ia3": ia3,
            "prompt": prompt, "prefix": prefix, "lstm": lstm}


def apply_method(model: nn.Module, cfg, family: str, tokenizer=None) -> None:
    REGISTRY[cfg.name].apply(model, cfg, family, tokenizer)
