"""From a validated config to data, tokenizer and a model with its method applied.

Everything that can reject bad input (files, columns, labels, names, targets) runs here,
before a run directory is created, so bad input leaves nothing behind. The task module
(:mod:`tunelab.tasks`) decides what the data becomes and which model it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import datasets
from accelerate.utils import set_seed
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab import tasks
from tunelab.config import RunConfig
from tunelab.data import vocab as word_vocab
from tunelab.data.sources import load_splits
from tunelab.errors import UserError
from tunelab.methods import apply_method
from tunelab.methods.common import ParameterCounts, count_parameters
from tunelab.models.loading import family
from tunelab.models.lstm import LSTMClassifier
from tunelab.tasks import classification


@dataclass
class Prepared:
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase | word_vocab.Vocabulary
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


def prepare(cfg: RunConfig, run_dir: Path | None = None) -> Prepared:
    """Data, tokenizer and model with its method applied. ``run_dir``: rebuilding a trained
    run, whose saved files (the LSTM's vocabulary) are read back instead of built anew."""
    raw = load_splits(cfg.data)
    if cfg.method.name == "lstm":  # the non-pretrained baseline: its own vocabulary, no tokenizer or model to load
        return prepare_lstm(cfg, raw, run_dir)
    return tasks.get(cfg.task.name).prepare(cfg, raw)


def prepare_lstm(cfg: RunConfig, raw: datasets.DatasetDict, run_dir: Path | None = None) -> Prepared:
    """The LSTM baseline (a classification task): a word vocabulary from the train split (or
    the one saved in ``run_dir``), lab-style items, and an LSTM classifier that trains whole."""
    method, data = cfg.method, cfg.data
    if cfg.task.name != "classification":
        raise UserError(f"method lstm classifies texts: use task.name classification (got {cfg.task.name})")
    if data.text_pair_column:
        raise UserError("method lstm reads one text per example; drop data.text_pair_column or pick another method")
    classification.check_columns(raw, data)
    labels = classification.label_set(raw, data)
    saved = run_dir / word_vocab.VOCAB_FILE if run_dir is not None else None
    if saved is not None and saved.is_file():
        vocab = word_vocab.Vocabulary.from_json(saved.read_text(encoding="utf-8"))
    else:
        vocab = word_vocab.Vocabulary.build(raw["train"][data.text_column], method.min_freq, method.stop_words)
    splits = word_vocab.encode_splits(raw, vocab, data.text_column, data.label_column, cfg.task.max_length, labels.encode)
    set_seed(cfg.train.seed)  # the same seed gives the same initial weights
    model = LSTMClassifier(len(vocab), len(labels.names), method.embedding_dim, method.hidden_size, method.n_layers,
                           method.bidirectional, method.dropout)
    apply_method(model, method, "lstm")
    return Prepared(model, vocab, splits, labels.names, count_parameters(model, base_total=0), "lstm",
                    task=classification, cfg=cfg, files={word_vocab.VOCAB_FILE: vocab.to_json()})
