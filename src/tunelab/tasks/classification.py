"""Sequence classification on an encoder: single text or text pair -> label.

The model is the pretrained backbone plus a fresh head: pooling (mean over non-pad tokens, or
the first token), dropout and a linear classifier. Batches are padded dynamically. The LSTM
baseline (:mod:`tunelab.methods.lstm`) brings its own model and batches and is scored here too.
"""

from __future__ import annotations

import sys

import datasets
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from torch import nn
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from tunelab.config import DataConfig
from tunelab.data.labels import LabelSet, check_columns, label_set
from tunelab.errors import UserError
from tunelab.methods.common import count_parameters
from tunelab.models.families import family_of
from tunelab.models.loading import check_context_length, load_encoder, load_tokenizer
from tunelab.tasks import Prepared, batch_counts
from tunelab.tasks.options import ClassificationTask


class SequenceClassifier(nn.Module):
    """backbone -> pooled hidden state -> dropout -> classifier."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(backbone.config.hidden_size, num_labels)

    def head_modules(self) -> list[nn.Module]:
        """Modules that are new for this task and always train."""
        return [self.classifier]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state  # (B, T, H)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "last":  # works for left and right padding alike
            positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
            last = (attention_mask * positions).argmax(1)  # (B,)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
        return self.classifier(self.dropout(pooled))  # (B, num_labels)


def tokenize_splits(splits: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, data: DataConfig,
                    task: ClassificationTask, labels: LabelSet) -> datasets.DatasetDict:
    """Token ids and label ids for every split; padding is left to the collator."""

    def encode(batch, split_name):
        pair = batch[data.text_pair_column] if data.text_pair_column else None
        out = tokenizer(batch[data.text_column], pair, truncation=True, max_length=task.max_length)
        out["labels"] = [labels.encode(v, split_name) for v in batch[data.label_column]]
        return out

    return datasets.DatasetDict({
        name: split.map(encode, batched=True, fn_kwargs={"split_name": name}, remove_columns=split.column_names,
                        keep_in_memory=True)
        for name, split in splits.items()
    })


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> list[dict]:
    """Unlabelled texts as the collator's items, encoded exactly as the training data was."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    return [{key: encoded[key][i] for key in encoded} for i in range(len(texts))]


def per_example(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every example and whether its prediction is right, both shape (B,)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs)  # (B, num_labels)
    labels = batch["labels"]
    return F.cross_entropy(logits, labels, reduction="none"), logits.argmax(-1) == labels


def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy; the number right, for the epoch's train accuracy."""
    losses, correct = per_example(model, batch)
    return losses.mean(), {**batch_counts(batch), "accuracy": correct.sum()}


@torch.no_grad()
def evaluate(model, loader, accelerator, prepared=None, split: str = "validation") -> dict[str, float]:
    """Mean per-example loss and accuracy; gathered across processes without duplicates."""
    was_training = model.training
    model.eval()
    losses, hits = [], []
    for batch in loader:
        losses_b, correct = per_example(model, batch)
        losses_b, correct = accelerator.gather_for_metrics((losses_b, correct))
        losses.append(losses_b.float().cpu())
        hits.append(correct.float().cpu())
    model.train(was_training)
    loss, acc = torch.cat(losses), torch.cat(hits)
    return {"loss": loss.mean().item(), "accuracy": acc.mean().item(), "examples": loss.numel()}


def prepare(cfg, raw: datasets.DatasetDict) -> Prepared:
    """Tokenize text (pairs), build backbone + fresh classifier, apply the method."""
    from tunelab.methods import apply_method

    if cfg.method.name == "none":
        raise UserError("method none (zero-/few-shot prompting) needs a causal-LM task: task.name instruct, lm or "
                        "summarization; a classifier head must be trained")
    check_columns(raw, cfg.data)
    labels = label_set(raw, cfg.data)
    tokenizer = load_tokenizer(cfg.model)
    splits = tokenize_splits(raw, tokenizer, cfg.data, cfg.task, labels)
    backbone = load_encoder(cfg.model)
    check_context_length(cfg, backbone.config)
    base_total = sum(p.numel() for p in backbone.parameters())
    set_seed(cfg.train.seed)  # before the head and any adapter are created: the same seed, the same init
    model = SequenceClassifier(backbone, len(labels.names), cfg.task.pooling, cfg.task.classifier_dropout)
    apply_method(model, cfg.method, family_of(backbone), tokenizer)
    return Prepared(model, tokenizer, splits, DataCollatorWithPadding(tokenizer, return_tensors="pt"), labels.names,
                    count_parameters(model, base_total), task=sys.modules[__name__], cfg=cfg,
                    encode_texts=lambda texts: encode_texts(tokenizer, texts, cfg.task.max_length))


def before_training(model, accelerator, prepared, test_loader) -> dict:
    return {}


def after_training(model, accelerator, prepared) -> dict:
    return {}
