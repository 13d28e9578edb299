"""``train.gradient_checkpointing``: activation checkpointing of the pretrained body's layers.

Each transformer layer keeps only its inputs from the forward pass and runs again in backward
to rebuild what its backward needs (Chen et al. 2016, arXiv:1604.06174): the activations kept
fall from every tensor each layer saves to the layers' inputs (plus one layer's, rebuilt at a
time), for about one more forward pass of compute. transformers' own switch does it, on the
body, non-reentrant (``use_reentrant=False``), for every method and task that has a body.

Non-reentrant checkpointing records the layer's graph in the forward pass as usual and only
drops the saved tensors, so gradients reach trainable tensors inside a layer whether or not the
layer's inputs require a gradient. transformers' ``enable_input_require_grads`` (which makes the
embeddings' output require a gradient, for reentrant checkpointing behind frozen embeddings)
is therefore switched off again: it would only add a backward through the first layer's input
(tests/test_precision_checkpointing.py compares every gradient with and without checkpointing).
"""

from __future__ import annotations

import sys

from torch import nn

from tunelab.errors import UserError
from tunelab.methods import before_checkpointing
from tunelab.models.families import transformer_body
from tunelab.tasks import Prepared, features

CHECKPOINT_KWARGS = {"use_reentrant": False}


def enable(prepared: Prepared) -> None:
    """Checkpoint the layers of a prepared run's body if its config asks; a method without a
    body is refused in one line, before anything is written."""
    cfg = prepared.cfg
    if not cfg.train.gradient_checkpointing:
        return
    if not cfg.method.pretrained:
        raise UserError(f"train.gradient_checkpointing: method {cfg.method.name} builds its own small recurrent model, "
                        "which has no transformer layers to checkpoint; set it false")
    if prepared.collate is features.collate_features:
        # Not refused: a comparison shares one train section, and here the setting already holds
        # at no cost. Head-only training on cached features never runs the body while it trains
        # (tunelab.tasks.features), so no activation of it is kept to be dropped.
        print("note: train.gradient_checkpointing changes nothing here: head-only tuning trains on the frozen "
              "body's cached features, so the body keeps no activations while it trains", file=sys.stderr)
        return
    enable_on(prepared.model, cfg.method)


def enable_on(model: nn.Module, method) -> None:
    """Checkpoint every layer of ``model``'s body (``method``: its method's options, which may
    have to prepare for its layers running twice)."""
    body = transformer_body(model)
    if not getattr(body, "supports_gradient_checkpointing", False):
        raise UserError(f"train.gradient_checkpointing: {type(body).__name__} does not support activation "
                        "checkpointing in transformers; set it false")
    if hasattr(body, "activation_checkpointing_enable"):  # transformers >= 5.24 (the old name warns)
        body.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
    else:
        body.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
    body.disable_input_require_grads()  # not needed when non-reentrant (module docstring)
    before_checkpointing(model, method)
