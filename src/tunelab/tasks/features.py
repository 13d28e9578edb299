"""A frozen body's features, computed once: head-only training trains the classifier on them.

When the method leaves the whole pretrained body frozen (``method.body_frozen``: head-only
tuning), every epoch would push each example through the same body again and get the same
pooled vector, as long as the body runs in eval mode (no dropout). So the body runs once over
every split, length-sorted and under ``torch.inference_mode``, and the splits become those
vectors: training and every evaluation then cost a linear layer. The classifier keeps its
parameter names, so checkpoints, ``tunelab eval`` and ``predict`` work as without the cache.
"""

from __future__ import annotations

import datasets
import torch
from torch import nn

from tunelab.batching import SortedBatches, example_lengths


@torch.inference_mode()
def pooled_features(model: nn.Module, examples, collate, batch_size: int) -> tuple[torch.Tensor, list[int]]:
    """(N, H) pooled body outputs of the examples, in their order, and their token lengths."""
    device = next(model.parameters()).device
    lengths = example_lengths(examples, collate)
    features: list[torch.Tensor | None] = [None] * len(lengths)
    for indices in SortedBatches(lengths, batch_size):
        batch = collate([examples[i] for i in indices])
        pooled = model.pool(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu()  # (B, H)
        for i, vector in zip(indices, pooled):
            features[i] = vector
    return torch.stack(features), lengths


def feature_splits(model: nn.Module, splits: datasets.DatasetDict, collate,
                   batch_size: int) -> tuple[datasets.DatasetDict, dict[str, list[int]]]:
    """Every split as ``{features, labels, length}`` rows, the body in eval mode; and the lengths."""
    model.backbone.eval()
    out, lengths = {}, {}
    for name, split in splits.items():
        features, lengths[name] = pooled_features(model, split, collate, batch_size)
        out[name] = datasets.Dataset.from_dict({"features": features.numpy(), "labels": split["labels"],
                                                "length": lengths[name]}).with_format("torch")
    return datasets.DatasetDict(out), lengths


def collate_features(examples: list[dict]) -> dict[str, torch.Tensor]:
    """A batch of cached features: nothing to pad."""
    batch = {"features": torch.stack([e["features"] for e in examples]),  # (B, H)
             "lengths": torch.stack([e["length"] for e in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.stack([e["labels"] for e in examples])
    return batch
