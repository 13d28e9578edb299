"""Sequence classification on an encoder: single text or text pair -> label.

The model is the pretrained backbone plus a fresh head: pooling (mean over non-pad tokens, or
the first token), dropout and a linear classifier. Batches are padded dynamically.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import datasets
import torch
import torch.nn.functional as F
from torch import nn
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from tunelab.config import ClassificationTask, DataConfig
from tunelab.data import vocab as word_vocab
from tunelab.errors import UserError

PRIMARY_METRIC, HIGHER_IS_BETTER, SELECT_METRIC = "accuracy", True, "accuracy"


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
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        # Prompt tuning adds leading virtual positions; pool over the real tokens only.
        hidden = hidden[:, -input_ids.shape[1]:]  # (B, T, H)
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


@dataclass
class LabelSet:
    """Label names in id order, and how raw label values in the data map to ids."""

    names: list[str]
    ids: dict[str, int]

    def encode(self, value, split: str) -> int:
        key = str(value)
        if key not in self.ids:
            raise UserError(f"label {value!r} in the {split} split is not in the label set: {', '.join(self.ids)}")
        return self.ids[key]


def label_set(splits: datasets.DatasetDict, data: DataConfig) -> LabelSet:
    """Labels come from the train split (or the ClassLabel feature, which keeps their names)."""
    feature = splits["train"].features[data.label_column]
    if isinstance(feature, datasets.ClassLabel):
        return LabelSet(list(feature.names), {str(i): i for i in range(feature.num_classes)})
    values = sorted({str(v) for v in splits["train"][data.label_column]})
    if len(values) < 2:
        raise UserError(f"the train split has {len(values)} distinct label(s) in {data.label_column!r}; need at least 2")
    return LabelSet(values, {v: i for i, v in enumerate(values)})


def check_columns(splits: datasets.DatasetDict, data: DataConfig) -> None:
    wanted = [("data.text_column", data.text_column), ("data.label_column", data.label_column)]
    if data.text_pair_column:
        wanted.append(("data.text_pair_column", data.text_pair_column))
    for split_name, split in splits.items():
        for key, column in wanted:
            if column not in split.column_names:
                raise UserError(f"{key} {column!r} is not in the {split_name} split; columns: {', '.join(split.column_names)}")


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


def encode_texts(tokenizer: PreTrainedTokenizerBase | word_vocab.Vocabulary, texts: list[str],
                 max_length: int) -> list[dict]:
    """Unlabelled texts as the collator's items, encoded exactly as the training data was."""
    if isinstance(tokenizer, word_vocab.Vocabulary):
        return [word_vocab.item(tokenizer, text, max_length) for text in texts]
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    return [{key: encoded[key][i] for key in encoded} for i in range(len(texts))]


def collator(prepared):
    """Dynamic padding into ``input_ids``, ``attention_mask`` and ``labels``, for a Hugging Face
    tokenizer's encodings or the LSTM vocabulary's ``{ids, length, label}`` items."""
    if isinstance(prepared.tokenizer, word_vocab.Vocabulary):
        return word_vocab.collate
    return DataCollatorWithPadding(prepared.tokenizer, return_tensors="pt")


def per_example(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every example and whether its prediction is right, both shape (B,)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs)  # (B, num_labels)
    labels = batch["labels"]
    return F.cross_entropy(logits, labels, reduction="none"), logits.argmax(-1) == labels


def training_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    losses, _ = per_example(model, batch)
    return losses.mean()


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


def prepare(cfg, raw: datasets.DatasetDict):
    """Tokenize text (pairs), build backbone + fresh classifier, apply the method."""
    from tunelab.build import Prepared, check_context_length, with_method
    from tunelab.models.loading import load_encoder, load_tokenizer

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
    # Seed before the head and any adapter are created: the same seed gives the same init.
    from accelerate.utils import set_seed

    set_seed(cfg.train.seed)
    model = SequenceClassifier(backbone, len(labels.names), cfg.task.pooling, cfg.task.classifier_dropout)
    counts, arch = with_method(cfg, model, backbone, tokenizer, base_total)
    return Prepared(model, tokenizer, splits, labels.names, counts, arch, task=sys.modules[__name__], cfg=cfg)
