"""Sequence classification on an encoder: single text or text pair -> label.

The model is the pretrained backbone plus a fresh head (``task.head``): tunelab's own, pooling
(mean over non-pad tokens, the first or the last real token), dropout and a linear classifier;
or the architecture's own transformers classifier (:mod:`tunelab.tasks.auto_head`). Both show
the methods the same interface: ``backbone``, ``head_modules()``, logits from ``forward``, and
``as_transformers`` for the merged export. Batches are padded dynamically. The LSTM baseline
(:mod:`tunelab.methods.lstm`) brings its own model and batches and is scored here too.
"""

from __future__ import annotations

import copy
import sys
from typing import ClassVar

import datasets
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from torch import nn
from transformers import AutoModel, DataCollatorWithPadding, PreTrainedTokenizerBase

from tunelab.config import DataConfig
from tunelab.data.labels import LabelSet, check_columns, label_set
from tunelab.errors import UserError
from tunelab.methods.common import count_parameters
from tunelab.models.families import family_of
from tunelab.models.loading import check_context_length, load_encoder, load_tokenizer
from tunelab.tasks import SERVED_INPUTS, Prepared, auto_head, batch_counts, features
from tunelab.tasks.options import ClassificationTask
from tunelab.tasks.pooled_head import TunelabForSequenceClassification, pool


class SequenceClassifier(nn.Module):
    """backbone -> pooled hidden state -> dropout -> classifier.

    ``forward`` also takes the pooled ``features`` themselves (precomputed once for a frozen
    body, see :mod:`tunelab.tasks.features`), and ``body_in_eval_mode`` keeps a frozen body's
    dropout off while the head trains, so that those features are exactly what it computes.
    """

    features_cacheable: ClassVar[bool] = True
    """A frozen body's pooled vectors are all the head reads (tunelab.tasks.features)."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(backbone.config.hidden_size, num_labels)
        self.body_in_eval_mode = False

    def head_modules(self) -> list[nn.Module]:
        """Modules that are new for this task and always train."""
        return [self.classifier]

    def train(self, mode: bool = True) -> "SequenceClassifier":
        super().train(mode)
        if self.body_in_eval_mode:
            self.backbone.eval()
        return self

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                features: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        pooled = self.pool(input_ids, attention_mask, **kwargs) if features is None else features  # (B, H)
        return self.classifier(self.dropout(pooled))  # (B, num_labels)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        """The body's output pooled to one vector per example, (B, H)."""
        # the last hidden states, (B, T, H)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)

    def as_transformers(self, label_names: list[str]) -> TunelabForSequenceClassification:
        """This classifier as a transformers model, sharing its modules, for ``save_pretrained``:
        the backbone's config plus the pooling and the labels, and the code of
        :mod:`tunelab.tasks.pooled_head` named in its ``auto_map`` (copied beside the weights)."""
        config = copy.deepcopy(self.backbone.config)
        config.tunelab_pooling, config.tunelab_classifier_dropout = self.pooling, self.dropout.p
        config.id2label = dict(enumerate(label_names))
        config.label2id = {name: i for i, name in enumerate(label_names)}
        with torch.device("meta"):  # shapes only: its body and head are replaced by ours
            model = TunelabForSequenceClassification(config)
        setattr(model, model.base_model_prefix, self.backbone)
        model.tunelab_classifier = self.classifier
        return model


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
    """Cross-entropy of every example, shape (B,), and the logits, (B, num_labels)."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "lengths")}
    logits = model(**inputs)  # (B, num_labels)
    return F.cross_entropy(logits, batch["labels"], reduction="none"), logits


def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy; the number right, for the epoch's train accuracy."""
    losses, logits = per_example(model, batch)
    return losses.mean(), {**batch_counts(batch), "accuracy": (logits.argmax(-1) == batch["labels"]).sum()}


@torch.inference_mode()
def evaluate(model, loader, accelerator, prepared=None, split: str = "validation") -> dict:
    """Mean per-example loss and accuracy, gathered across processes without duplicates; on
    test also every example's gold and predicted label and the predicted label's probability."""
    was_training = model.training
    model.eval()
    losses, gold, predicted, probability = [], [], [], []
    for batch in loader:
        losses_b, logits = per_example(model, batch)
        probs = logits.float().softmax(-1)  # (B, num_labels)
        gathered = accelerator.gather_for_metrics((losses_b, batch["labels"], probs.argmax(-1), probs.max(-1).values))
        for store, values in zip((losses, gold, predicted, probability), gathered):
            store.append(values.cpu())
    model.train(was_training)
    loss, gold, predicted, probability = (torch.cat(x) for x in (losses, gold, predicted, probability))
    correct = predicted == gold
    metrics = {"loss": loss.mean().item(), "accuracy": correct.float().mean().item(), "examples": loss.numel()}
    if split == "test":
        names = (prepared.label_names if prepared is not None else None) or [str(i) for i in range(int(gold.max()) + 1)]
        metrics["predictions"] = [{"gold": names[g], "predicted": names[p], "score": s, "correct": c, "loss": x}
                                  for g, p, s, c, x in zip(gold.tolist(), predicted.tolist(), probability.tolist(),
                                                           correct.tolist(), loss.tolist())]
    return metrics


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
    model, base_total = new_classifier(cfg, labels.names, tokenizer)
    apply_method(model, cfg.method, family_of(model.backbone), tokenizer)
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    prepared = Prepared(model, tokenizer, splits, collate, labels.names, count_parameters(model, base_total),
                        task=sys.modules[__name__], cfg=cfg,
                        encode_texts=lambda texts: encode_texts(tokenizer, texts, cfg.task.max_length))
    model.body_in_eval_mode = cfg.method.body_frozen  # a frozen body's dropout would only add noise
    if cfg.method.precompute_features and model.features_cacheable:
        use_cached_features(prepared)
    return prepared


def new_classifier(cfg, label_names: list[str], tokenizer) -> tuple[nn.Module, int]:
    """The pretrained body with a new head of the configured kind (``task.head``), before the
    method; and the pretrained part's parameter count."""
    if cfg.task.head == "auto":
        set_seed(cfg.train.seed)  # the head is created while loading: the same seed, the same init
        model = auto_head.pretrained(cfg.model, label_names, tokenizer.pad_token_id)
        check_context_length(cfg, model.config)
        return model, pretrained_count(model)
    backbone = load_encoder(cfg.model)
    check_context_length(cfg, backbone.config)
    set_seed(cfg.train.seed)  # before the head and any adapter are created: the same seed, the same init
    model = SequenceClassifier(backbone, len(label_names), cfg.task.pooling, cfg.task.classifier_dropout)
    return model, pretrained_count(model)


def classifier_from_config(hf_config, num_labels: int, head: str = "pooled") -> tuple[nn.Module, int]:
    """A classifier with random weights from the model's config alone, and the count of its
    pretrained part (what ``params`` and ``profile`` measure)."""
    if head == "auto":
        model = auto_head.from_config(hf_config, num_labels)
    else:
        model = SequenceClassifier(AutoModel.from_config(hf_config, dtype=torch.float32), num_labels)
    return model, pretrained_count(model)


def pretrained_count(model: nn.Module) -> int:
    """Parameters of a classifier before the method, but for its new head."""
    head = sum(p.numel() for m in model.head_modules() for p in m.parameters())
    return count_parameters(model, 0).total - head


def use_cached_features(prepared: Prepared) -> None:
    """Replace the tokenized splits by the frozen body's pooled features (tunelab.tasks.features)."""
    model, collate, cfg = prepared.model, prepared.collate, prepared.cfg
    if torch.cuda.is_available() and not cfg.train.cpu:
        model.cuda()
    # A served model gets tokens, not cached features: what its inference cost is timed on.
    prepared.extras[SERVED_INPUTS] = (prepared.splits["test"], collate)
    prepared.splits, prepared.lengths = features.feature_splits(model, prepared.splits, collate, cfg.eval.batch_size)
    prepared.collate = features.collate_features
    encode = prepared.encode_texts
    prepared.encode_texts = lambda texts: [
        {"features": f, "length": torch.tensor(n)}
        for f, n in zip(*features.pooled_features(model, encode(texts), collate, cfg.eval.batch_size))]


def before_training(model, accelerator, prepared, test_loader) -> dict:
    return {}


def after_training(model, accelerator, prepared) -> dict:
    return {}
