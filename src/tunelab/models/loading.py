"""Resolve a model name (catalog, local directory, hub id) and load backbone + tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from tunelab import catalog
from tunelab.config import ModelConfig
from tunelab.errors import UserError


def resolve(cfg: ModelConfig) -> str:
    """The path or hub id that `from_pretrained` should read."""
    if cfg.name in catalog.CATALOG:
        if catalog.CATALOG[cfg.name].kind != "model":
            raise UserError(f"{cfg.name!r} is a dataset, not a model; models: {', '.join(catalog.names('model'))}")
        return str(catalog.fetch(cfg.name))
    local = Path(cfg.name).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise UserError(f"model directory {local} has no config.json")
        return str(local)
    return cfg.name  # a hub id; users with a network get it from the hub


def _load(loader, cfg: ModelConfig, **kwargs):
    source = resolve(cfg)
    try:
        return loader.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, **kwargs)
    except OSError as exc:
        known = ", ".join(catalog.names("model"))
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"unknown model {cfg.name!r}: not embedded ({known}), not a local directory, "
                        f"and loading it from the hub failed: {first}") from None


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    tokenizer = _load(AutoTokenizer, cfg)
    if tokenizer.pad_token is None:  # decoders (GPT-2, Llama) ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_encoder(cfg: ModelConfig) -> nn.Module:
    """The bare transformer (no task head), in float32 so training is stable on any device."""
    return _load(AutoModel, cfg, dtype=torch.float32)


def load_causal_lm(cfg: ModelConfig) -> nn.Module:
    return _load(AutoModelForCausalLM, cfg, dtype=torch.float32)


def load_config(cfg: ModelConfig):
    return _load(AutoConfig, cfg)


def family(model: nn.Module) -> str:
    """The architecture family, which picks per-architecture defaults (e.g. LoRA targets)."""
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if model_type in ("gpt2",):
        return "gpt2"
    if model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "smollm3"):
        return "llama"
    if model_type in ("distilbert",):
        return "distilbert"
    return "bert"


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of transformer layers, whatever the architecture calls it."""
    for module in model.modules():
        for attr in ("layer", "layers", "h"):
            blocks = getattr(module, attr, None)
            if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
                return blocks
    raise UserError(f"cannot find the transformer layers of {type(model).__name__}")
