"""Resolve a model name (catalog, local directory, hub id) and load backbone + tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from tunelab import catalog
from tunelab.config import ModelConfig
from tunelab.errors import UserError
from tunelab.models.families import context_limit


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


def load_sequence_classifier(cfg: ModelConfig, labels: list[str]) -> tuple[nn.Module, dict]:
    """The architecture's own classifier (``task.head: auto``) with a new head for ``labels``,
    and transformers' loading info (which tensors it initialised: the head). A checkpoint that
    is already a classifier of another size gets a new head of the right one."""
    return _load(AutoModelForSequenceClassification, cfg, dtype=torch.float32, num_labels=len(labels),
                 id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
                 ignore_mismatched_sizes=True, output_loading_info=True)


def load_config(cfg: ModelConfig):
    return _load(AutoConfig, cfg)


def check_context_length(cfg, model_config, length: int | None = None, key: str = "task.max_length") -> None:
    """Inputs plus the method's virtual tokens must fit the model's positions, or training
    crashes mid-way; ``cfg`` is the run config."""
    limit = context_limit(model_config)
    length = cfg.task.max_length if length is None else length
    virtual = cfg.method.virtual_tokens
    if limit is not None and length + virtual > limit:
        extra = f" + method.num_virtual_tokens {virtual}" if virtual else ""
        raise UserError(f"{key} {length}{extra} exceeds the model's {limit} positions; "
                        f"lower {key} to at most {limit - virtual}")
