"""The learning-rate schedule every run uses: linear warmup, then linear decay to zero."""

from __future__ import annotations

import torch


def linear_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """The rate rises linearly from 0 over ``warmup_steps`` optimizer steps, then falls linearly
    to 0 at ``total_steps``: transformers' ``get_linear_schedule_with_warmup``, step for step
    (tested). Written out because importing that one imports ``transformers.trainer_utils`` and
    with it all of PEFT: 1.8 s of every run's start, most of a short run's."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return float(step) / float(max(1, warmup_steps))
        return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
