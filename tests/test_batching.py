"""Length-grouped training batches and length-sorted evaluation batches."""

from __future__ import annotations

import random

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from tunelab.batching import LengthGroupedBatches, SortedBatches, padding_fraction

_RNG = random.Random(0)
LENGTHS = [_RNG.randint(3, 64) for _ in range(1003)]


def test_every_example_once_per_epoch_in_full_batches_but_the_last():
    sampler = LengthGroupedBatches(LENGTHS, batch_size=32, seed=0, group=8)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 32  # ceil(1003 / 32)
        assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
        assert all(len(b) == 32 for b in batches[:-1]) and len(batches[-1]) == 1003 - 31 * 32


def test_the_order_is_a_function_of_seed_and_epoch():
    a, b = LengthGroupedBatches(LENGTHS, 32, seed=5), LengthGroupedBatches(LENGTHS, 32, seed=5)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert list(LengthGroupedBatches(LENGTHS, 32, seed=6)) != list(LengthGroupedBatches(LENGTHS, 32, seed=5))


def test_grouping_cuts_the_padding_of_random_batches():
    grouped = LengthGroupedBatches(LENGTHS, 32, seed=0)
    order = torch.randperm(len(LENGTHS), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = [order[i:i + 32] for i in range(0, len(order), 32)]
    assert padding_fraction(LENGTHS, list(grouped)) < 0.1 < 0.4 < padding_fraction(LENGTHS, shuffled)


def test_a_resumed_epoch_continues_with_the_same_batches():
    """What `tunelab train --resume` does: the same epoch's sampler, its first batches skipped."""
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(list(range(len(LENGTHS))), collate_fn=list,
                                            batch_sampler=LengthGroupedBatches(LENGTHS, 32, seed=1)))
    loader.set_epoch(4)
    whole = list(loader)
    rest = list(accelerator.skip_first_batches(loader, 10))
    assert rest == whole[10:]


def test_evaluation_batches_are_sorted_and_cover_the_split():
    sampler = SortedBatches(LENGTHS, batch_size=100)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert flat == sampler.order and sorted(flat) == list(range(len(LENGTHS)))
    assert [LENGTHS[i] for i in flat] == sorted(LENGTHS, reverse=True)
