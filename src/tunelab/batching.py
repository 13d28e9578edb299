"""Which examples go into which batch: by length, so that batches carry little padding.

A batch is padded to its longest example, and padding costs as much compute as real tokens.
For training, :class:`LengthGroupedBatches` shuffles the examples, cuts the shuffled order
into groups of ``group`` batches, sorts each group by length and cuts it into batches, then
shuffles the batches (a short last batch stays last, as with plain shuffling, so every other
batch is full): every example once per epoch, batches of similar lengths, still a random order
(the grouping of Hugging Face's ``group_by_length``, Megatron's buckets). The order is a
function of (seed, epoch) alone, so a resumed run sees the same batches.
For evaluation the order does not matter: :class:`SortedBatches` sorts the whole split.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from tunelab.config import RunConfig
    from tunelab.tasks import Prepared


def example_lengths(split, collate: Callable[[list[dict]], dict]) -> list[int]:
    """Each example's length as its batch would have it alone: the width of its attention mask."""
    return [int(collate([split[i]])["attention_mask"].shape[1]) for i in range(len(split))]


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of padded positions in the given batches (indices into ``lengths``)."""
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return 1.0 - sum(lengths[i] for batch in batches for i in batch) / max(padded, 1)


class LengthGroupedBatches:
    """A batch sampler: random batches of similar length, every example once per epoch.

    ``lengths`` may be a function that gives them (with ``size``, the number of examples): they
    are then computed when the first epoch starts, not for a run that never trains."""

    def __init__(self, lengths: list[int] | Callable[[], list[int]], batch_size: int, seed: int, group: int = 50,
                 size: int | None = None):
        self._lengths, self.batch_size, self.seed, self.group = lengths, batch_size, seed, group
        self.size = len(lengths) if size is None else size
        self.epoch = 0

    @property
    def lengths(self) -> list[int]:
        if callable(self._lengths):
            self._lengths = self._lengths()
        return self._lengths

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        span = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), span):
            # Longest first within a group; ties keep the shuffled order (sorted is stable).
            group = sorted(order[start:start + span], key=lambda i: -self.lengths[i])
            batches += [group[i:i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        short = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffled] + short

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return math.ceil(self.size / self.batch_size)


class SortedBatches:
    """A batch sampler for evaluation: the split sorted by length, longest first (so the
    largest batch comes first and memory peaks at once). ``order`` is the iteration order."""

    def __init__(self, lengths: list[int], batch_size: int):
        self.order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        return iter([self.order[i:i + self.batch_size] for i in range(0, len(self.order), self.batch_size)])

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)


def make_loaders(cfg: RunConfig, prepared: Prepared, processes: int = 1) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train batches grouped by length (or plainly shuffled); evaluation sorted by length,
    which changes no metric, only how much padding is computed. The batches are global: each
    of the ``processes`` gets its slice of them."""
    collate, splits = prepared.collate, prepared.splits
    train_batch, eval_batch = cfg.train.batch_size * processes, cfg.eval.batch_size * processes
    known = prepared.lengths or {}

    def lengths(name: str) -> list[int]:
        return known[name] if name in known else example_lengths(splits[name], collate)

    def sorted_loader(name: str) -> DataLoader:
        return DataLoader(splits[name], batch_sampler=SortedBatches(lengths(name), eval_batch), collate_fn=collate)

    if cfg.train.group_by_length:
        batches = LengthGroupedBatches(lambda: lengths("train"), train_batch, cfg.train.seed,
                                       size=len(splits["train"]))
        train = DataLoader(splits["train"], batch_sampler=batches, collate_fn=collate)
    else:
        train = DataLoader(splits["train"], batch_size=train_batch, shuffle=True, collate_fn=collate)
    return train, sorted_loader("validation"), sorted_loader("test")
