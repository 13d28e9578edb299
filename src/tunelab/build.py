"""From a validated config to data, tokenizer and a model with its method applied.

Everything that can reject bad input (files, columns, labels, names, targets) runs here,
before a run directory is created, so bad input leaves nothing behind. The task module
(:mod:`tunelab.tasks`) decides what the data becomes and which model it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import datasets
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab import tasks
from tunelab.config import RunConfig
from tunelab.data.sources import load_splits
from tunelab.errors import UserError
from tunelab.methods import apply_method
from tunelab.methods.common import ParameterCounts, count_parameters
from tunelab.models.loading import family


@dataclass
class Prepared:
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    splits: datasets.DatasetDict
    """Tokenized train/validation/test."""
    label_names: list[str]
    counts: ParameterCounts
    family: str
    task: ModuleType
    """The task module (tunelab.tasks.*) that batches, scores and evaluates."""
    cfg: RunConfig
    extras: dict[str, Any] = field(default_factory=dict)
    """Task-specific values computed once (label-word token ids, demonstrations, ...)."""
    files: dict[str, str] = field(default_factory=dict)
    """Text files to write into the run directory (name -> content)."""


def context_limit(model_config) -> int | None:
    return getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)


def check_context_length(cfg: RunConfig, model_config, length: int | None = None, key: str = "task.max_length") -> None:
    """Inputs plus virtual tokens must fit the model's positions, or training crashes mid-way."""
    limit = context_limit(model_config)
    length = cfg.task.max_length if length is None else length
    virtual = getattr(cfg.method, "num_virtual_tokens", 0)
    if limit is not None and length + virtual > limit:
        extra = f" + method.num_virtual_tokens {virtual}" if virtual else ""
        raise UserError(f"{key} {length}{extra} exceeds the model's {limit} positions; "
                        f"lower {key} to at most {limit - virtual}")


def with_method(cfg: RunConfig, model: nn.Module, body: nn.Module, tokenizer, base_total: int) -> tuple[ParameterCounts, str]:
    """Apply the configured method to ``model`` (whose transformer is ``body``); count parameters.

    Callers set the seed before anything random is created (a task head, then the method's
    tensors), so the same config gives the same initialisation.
    """
    arch = family(body)
    apply_method(model, cfg.method, arch, tokenizer)
    return count_parameters(model, base_total), arch


def prepare(cfg: RunConfig) -> Prepared:
    raw = load_splits(cfg.data)
    return tasks.get(cfg.task.name).prepare(cfg, raw)
