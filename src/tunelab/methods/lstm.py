"""The LSTM baseline as a method: nothing is pretrained, so every parameter trains.

The model itself (:mod:`tunelab.models.lstm`) and its vocabulary (:mod:`tunelab.data.vocab`)
are built by ``build.prepare``; registering the method here lets every list of methods (a
comparison, ``tunelab params``) know it.
"""

from __future__ import annotations

from torch import nn

from tunelab.config import LSTMMethod


def apply(model: nn.Module, cfg: LSTMMethod, family: str, tokenizer=None) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
