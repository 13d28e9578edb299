"""Direct Preference Optimization's loss (Rafailov et al. 2023, arXiv:2305.18290) and variants.

Inputs are summed log-probabilities of each response given its prompt, under the policy being
trained and under the frozen reference, for the chosen (w) and the rejected (l) response of
every pair, each shape (B,). With the log-ratios ``r_w = log pi(w) - log ref(w)`` and
``r_l = log pi(l) - log ref(l)`` and ``h = r_w - r_l``:

- ``sigmoid`` (DPO, eq. 7): ``-log sigmoid(beta h)``; with label smoothing eps (the preference
  label flipped with probability eps, "conservative DPO"):
  ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``;
- ``ipo`` (Azar et al. 2023, arXiv:2310.12036, eq. 17): ``(h - 1 / (2 beta))^2``;
- ``hinge`` (SLiC, Zhao et al. 2023, arXiv:2305.10425): ``max(0, 1 - beta h)``.

The implicit rewards (DPO, section 5) are ``beta r_w`` and ``beta r_l``: with the policy equal to
the reference they are 0 and the sigmoid loss is log 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Variant = Literal["sigmoid", "ipo", "hinge"]


@dataclass
class PreferenceLoss:
    loss: torch.Tensor
    """(B,) per pair; the training loss is its mean."""
    chosen_rewards: torch.Tensor
    """(B,) beta times the chosen response's log-ratio, detached."""
    rejected_rewards: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracies(self) -> torch.Tensor:
        """1 where the chosen response gets the higher reward."""
        return (self.chosen_rewards > self.rejected_rewards).float()


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                    reference_rejected: torch.Tensor, beta: float, variant: Variant = "sigmoid",
                    label_smoothing: float = 0.0) -> PreferenceLoss:
    """The per-pair loss and the implicit rewards, from summed response log-probabilities (B,)."""
    chosen_ratio = policy_chosen - reference_chosen  # (B,)
    rejected_ratio = policy_rejected - reference_rejected  # (B,)
    h = chosen_ratio - rejected_ratio  # (B,)
    if variant == "sigmoid":
        loss = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif variant == "ipo":
        loss = (h - 1 / (2 * beta)) ** 2
    elif variant == "hinge":
        loss = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown preference loss {variant!r}; known: sigmoid, ipo, hinge")
    return PreferenceLoss(loss, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach())
