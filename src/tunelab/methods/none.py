"""No method: nothing trains. The pretrained model answers as it is (zero-/few-shot prompting,
with demonstrations from ``task.shots``), evaluated exactly like the trained methods."""

from __future__ import annotations

from torch import nn

from tunelab.methods.common import freeze
from tunelab.methods.options import NoMethod
from tunelab.models.families import Family


def apply(model: nn.Module, cfg: NoMethod, family: Family | None, tokenizer=None) -> None:
    freeze(model)
