"""From a validated config to data, tokenizer and a model with its method applied.

Everything that can reject bad input (files, columns, labels, names, targets) runs here,
before a run directory is created, so bad input leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import datasets
from accelerate.utils import set_seed
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.config import RunConfig
from tunelab.data import vocab as word_vocab
from tunelab.data.sources import load_splits
from tunelab.errors import UserError
from tunelab.methods import apply_method
from tunelab.methods.common import ParameterCounts, count_parameters
from tunelab.models.loading import family, load_encoder, load_tokenizer
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
    files: dict[str, str] = field(default_factory=dict)
    """Text files the run directory keeps so the run can be rebuilt (name -> content)."""


def check_context_length(cfg: RunConfig, model_config) -> None:
    """Inputs plus virtual tokens must fit the model's positions, or training crashes mid-way."""
    limit = getattr(model_config, "max_position_embeddings", None)
    virtual = getattr(cfg.method, "num_virtual_tokens", 0)
    if limit is not None and cfg.task.max_length + virtual > limit:
        extra = f" + method.num_virtual_tokens {virtual}" if virtual else ""
        raise UserError(f"task.max_length {cfg.task.max_length}{extra} exceeds the model's {limit} positions; "
                        f"lower task.max_length to at most {limit - virtual}")


def prepare(cfg: RunConfig, run_dir: Path | None = None) -> Prepared:
    """Data, tokenizer and model with its method applied. ``run_dir``: rebuilding a trained
    run, whose saved files (the LSTM's vocabulary) are read back instead of built anew."""
    raw = load_splits(cfg.data)
    classification.check_columns(raw, cfg.data)
    labels = classification.label_set(raw, cfg.data)
    if cfg.method.name == "lstm":
        return prepare_lstm(cfg, raw, labels, run_dir)
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


def prepare_lstm(cfg: RunConfig, raw: datasets.DatasetDict, labels: classification.LabelSet,
                 run_dir: Path | None = None) -> Prepared:
    """The LSTM baseline: no pretrained model or tokenizer; a word vocabulary from the train split."""
    method, data = cfg.method, cfg.data
    if data.text_pair_column:
        raise UserError("method lstm reads one text per example; drop data.text_pair_column or pick another method")
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
                    files={word_vocab.VOCAB_FILE: vocab.to_json()})
