"""Head-only tuning: the pretrained body is frozen and only the task head trains.

The head is the classifier of an encoder task model, or ``lm_head`` of a causal LM (untied
from the input embeddings, which stay frozen). ``last_n_layers`` also trains the last N
transformer blocks, the classic "train the top of the network" middle ground.
"""

from __future__ import annotations

from torch import nn

from tunelab.errors import UserError
from tunelab.methods.common import freeze, output_head, unfreeze
from tunelab.methods.options import HeadMethod
from tunelab.models.families import Family, transformer_blocks


def apply(model: nn.Module, cfg: HeadMethod, family: Family | None, tokenizer=None) -> None:
    heads = output_head(model)
    freeze(model)
    unfreeze(heads)
    if cfg.last_n_layers:
        blocks = transformer_blocks(model)
        if cfg.last_n_layers > len(blocks):
            raise UserError(f"method.last_n_layers is {cfg.last_n_layers} but the model has {len(blocks)} layers")
        unfreeze(list(blocks)[-cfg.last_n_layers:])
