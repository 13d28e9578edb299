"""``tunelab params``: parameter accounting for a model + method, without weights or training.

The model is built from its config alone on PyTorch's meta device (shapes, no memory), the
method is applied exactly as in training, and the counts come from the same function the run
summary uses. This answers "what percentage of parameters does LoRA r=128 train?" for
gpt2-medium in a second, with nothing downloaded but config.json.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModel, AutoModelForCausalLM

from tunelab.config import ModelConfig
from tunelab.errors import UserError
from tunelab.methods import apply_method
from tunelab.methods.common import count_parameters
from tunelab.models.loading import family, load_config
from tunelab.tasks.classification import SequenceClassifier


def is_causal_lm(hf_config) -> bool:
    architectures = getattr(hf_config, "architectures", None) or []
    return any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in architectures) or \
        hf_config.model_type in ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")


def count_for(model_cfg: ModelConfig, method_cfg, num_labels: int = 2) -> dict[str, Any]:
    if method_cfg.name == "lstm":
        raise UserError("the LSTM's size depends on the vocabulary built from its training data; train it "
                        "(tunelab train --config configs/lstm/...) and read trainable_params in summary.json")
    hf_config = load_config(model_cfg)
    causal = is_causal_lm(hf_config)
    with torch.device("meta"):
        if causal:
            model = AutoModelForCausalLM.from_config(hf_config)
        else:
            model = AutoModel.from_config(hf_config)  # as `tunelab train` loads it
        base_total = sum(p.numel() for p in model.parameters())
        arch = family(model)
        if not causal:
            model = SequenceClassifier(model, num_labels)
        if getattr(method_cfg, "init", None) == "text":
            # The soft prompt's values do not change its size; skip loading a tokenizer.
            method_cfg = method_cfg.model_copy(update={"init": "random"})
        apply_method(model, method_cfg, arch)
    counts = count_parameters(model, base_total)
    trainable_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return {"model": model_cfg.name, "family": arch, "task": "causal LM" if causal else f"classification ({num_labels} labels)",
            "method": method_cfg.model_dump(), **counts.as_dict(), "base_params": base_total,
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
