"""From a validated config to data, tokenizer and a model with its method applied.

Everything that can reject bad input (files, columns, labels, names, targets) runs here,
before a run directory is created, so bad input leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
from accelerate.utils import set_seed
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.config import RunConfig
from tunelab.data.sources import load_splits
from tunelab.errors import UserError
from tunelab.methods import apply_method
from tunelab.methods.common import ParameterCounts, count_parameters
from tunelab.models.loading import family, load_encoder, load_tokenizer
from tunelab.tasks import classification


@dataclass
class Prepared:
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    splits: datasets.DatasetDict
    """Tokenized train/validation/test."""
    label_names: list[str]
    counts: ParameterCounts
    family: str


def check_context_length(cfg: RunConfig, model_config) -> None:
    """Inputs plus virtual tokens must fit the model's positions, or training crashes mid-way."""
    limit = getattr(model_config, "max_position_embeddings", None)
    virtual = getattr(cfg.method, "num_virtual_tokens", 0)
    if limit is not None and cfg.task.max_length + virtual > limit:
        extra = f" + method.num_virtual_tokens {virtual}" if virtual else ""
        raise UserError(f"task.max_length {cfg.task.max_length}{extra} exceeds the model's {limit} positions; "
                        f"lower task.max_length to at most {limit - virtual}")


def prepare(cfg: RunConfig) -> Prepared:
    raw = load_splits(cfg.data)
    classification.check_columns(raw, cfg.data)
    labels = classification.label_set(raw, cfg.data)
    tokenizer = load_tokenizer(cfg.model)
    splits = classification.tokenize_splits(raw, tokenizer, cfg.data, cfg.task, labels)
    backbone = load_encoder(cfg.model)
    check_context_length(cfg, backbone.config)
    base_total = sum(p.numel() for p in backbone.parameters())
    # Seed before the head and any adapter are created: the same seed gives the same init.
    set_seed(cfg.train.seed)
    model = classification.SequenceClassifier(backbone, len(labels.names), cfg.task.pooling, cfg.task.classifier_dropout)
    arch = family(backbone)
    apply_method(model, cfg.method, arch, tokenizer)
    return Prepared(model, tokenizer, splits, labels.names, count_parameters(model, base_total), arch)
