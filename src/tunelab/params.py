"""``tunelab params``: parameter accounting for a model + method, without weights or training.

The model is built from its config alone on PyTorch's meta device (shapes, no memory), the
method is applied exactly as in training, and the counts come from the same function the run
summary uses. This answers "what percentage of parameters does LoRA r=128 train?" for
gpt2-medium in a second, with nothing downloaded but config.json.
"""

from __future__ import annotations

from typing import Any

from tunelab.build import model_from_config, refuse_self_built
from tunelab.config import RunConfig
from tunelab.methods.common import count_parameters
from tunelab.models.families import family_of, is_causal_lm
from tunelab.models.loading import load_config


def count_for(cfg: RunConfig, num_labels: int = 2) -> dict[str, Any]:
    """Counts for the config's model and method: a causal LM as it is, an encoder with a
    classifier of ``num_labels``."""
    refuse_self_built(cfg)
    hf_config = load_config(cfg.model)
    causal = is_causal_lm(hf_config)
    model, base_total = model_from_config(cfg, hf_config, causal, num_labels, device="meta")
    counts = count_parameters(model, base_total)
    trainable_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return {"model": cfg.model.name, "family": family_of(hf_config).name,
            "task": "causal LM" if causal else f"classification ({num_labels} labels)",
            "method": cfg.method.model_dump(), **counts.as_dict(), "base_params": base_total,
            "checkpoint_bytes": trainable_bytes}


def format_counts(result: dict[str, Any]) -> str:
    options = ", ".join(f"{k}={v}" for k, v in result["method"].items() if k != "name" and v is not None)
    lines = [
        f"model       {result['model']} ({result['family']}, {result['task']})",
        f"method      {result['method']['name']}" + (f" ({options})" if options else ""),
        f"trainable   {result['trainable_params']:,}",
        f"added       {result['added_params']:,}",
        f"total       {result['total_params']:,}  (pretrained {result['base_params']:,})",
        f"trainable%  {result['trainable_percent']:.4f} %",
        f"checkpoint  {result['checkpoint_bytes'] / 1e6:.2f} MB of trained tensors (plus a small safetensors header)",
    ]
    return "\n".join(lines)
