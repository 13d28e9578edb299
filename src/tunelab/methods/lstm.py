"""The LSTM baseline as a method: nothing is pretrained, so it builds its own model and every
parameter trains.

``prepare`` makes the classification task's inputs the lab's way: a word vocabulary from the
train split (or the one a run directory saved), items ``{ids, length, label}`` and an
:class:`~tunelab.models.lstm.LSTMClassifier`; the classification task then scores and
evaluates it like any classifier.
"""

from __future__ import annotations

from pathlib import Path

import datasets
from accelerate.utils import set_seed
from torch import nn

from tunelab.data import vocab as word_vocab
from tunelab.data.labels import check_columns, label_set
from tunelab.errors import UserError
from tunelab.methods.common import count_parameters
from tunelab.methods.options import LSTMMethod
from tunelab.models.families import Family
from tunelab.models.lstm import LSTMClassifier
from tunelab.tasks import TASKS, Prepared


def apply(model: nn.Module, cfg: LSTMMethod, family: Family | None, tokenizer=None) -> None:
    for p in model.parameters():
        p.requires_grad_(True)


def prepare(cfg, raw: datasets.DatasetDict, run_dir: Path | None = None) -> Prepared:
    """The vocabulary (built from train, or read back from ``run_dir``), lab-style items and a
    freshly initialised LSTM classifier."""
    method, data = cfg.method, cfg.data
    if cfg.task.name != "classification":
        raise UserError(f"method lstm classifies texts: use task.name classification (got {cfg.task.name})")
    if data.text_pair_column:
        raise UserError("method lstm reads one text per example; drop data.text_pair_column or pick another method")
    check_columns(raw, data)
    labels = label_set(raw, data)
    saved = run_dir / word_vocab.VOCAB_FILE if run_dir is not None else None
    if saved is not None and saved.is_file():
        vocab = word_vocab.Vocabulary.from_json(saved.read_text(encoding="utf-8"))
    else:
        vocab = word_vocab.Vocabulary.build(raw["train"][data.text_column], method.min_freq, method.stop_words)
    splits = word_vocab.encode_splits(raw, vocab, data.text_column, data.label_column, cfg.task.max_length,
                                      labels.encode)
    set_seed(cfg.train.seed)  # the same seed gives the same initial weights
    model = LSTMClassifier(len(vocab), len(labels.names), method.embedding_dim, method.hidden_size, method.n_layers,
                           method.bidirectional, method.dropout)
    apply(model, method, None)
    max_length = cfg.task.max_length
    return Prepared(model, vocab, splits, word_vocab.collate, labels.names, count_parameters(model, base_total=0),
                    task=TASKS.load("classification"), cfg=cfg, files={word_vocab.VOCAB_FILE: vocab.to_json()},
                    encode_texts=lambda texts: [word_vocab.item(vocab, text, max_length) for text in texts])
