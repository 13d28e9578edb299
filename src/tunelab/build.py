"""From a validated config to what a run needs: data, tokenizer and a model with its method.

Everything that can reject bad input (files, columns, labels, names, targets) runs here,
before a run directory is created, so bad input leaves nothing behind. The task decides what
the data becomes and which model it needs; a method that builds its own model (the LSTM
baseline) prepares it instead.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch import nn
from transformers import AutoModelForCausalLM

from tunelab.config import RunConfig
from tunelab.data.sources import load_data
from tunelab.errors import UserError
from tunelab.methods import METHODS, apply_method
from tunelab.models.families import family_of
from tunelab.tasks import TASKS, Prepared
from tunelab.tasks.classification import classifier_from_config


def prepare(cfg: RunConfig, run_dir: Path | None = None, whole_data: bool = False) -> Prepared:
    """Data, tokenizer and model with its method applied. ``run_dir``: rebuilding a trained
    run, whose saved files (the LSTM's vocabulary) are read back instead of built anew.
    ``whole_data``: every row of the data in each split, unsplit (``tunelab eval --split all``).

    The data's rows are checked against the columns the task reads before anything else
    (:func:`tunelab.data.sources.load_data`); the rows ``data.drop_missing`` drops are counted
    in ``Prepared.dropped``."""
    loaded = load_data(cfg.data, cfg.task, whole=whole_data)
    if not cfg.method.pretrained:
        prepared = METHODS.load(cfg.method.name).prepare(cfg, loaded.splits, run_dir)
    else:
        prepared = TASKS.load(cfg.task.name).prepare(cfg, loaded.splits)
    prepared.dropped += loaded.dropped  # the task may have left out examples of its own (identical pairs)
    return prepared


def model_from_config(cfg: RunConfig, hf_config, causal: bool, num_labels: int = 2,
                      device: torch.device | str = "cpu") -> tuple[nn.Module, int]:
    """The run's model built from the model's config.json alone with random weights (on the
    ``meta`` device: shapes without memory), and the method applied as training applies it: a
    causal LM, or an encoder with a classifier of ``num_labels``. Returns the model and the
    pretrained part's parameter count. What ``params`` and ``profile`` measure."""
    refuse_self_built(cfg)
    method = cfg.method
    if getattr(method, "init", None) == "text":
        # A soft prompt's initial values change neither its size nor its memory; no tokenizer needed.
        method = method.model_copy(update={"init": "random"})
    set_seed(0)
    with torch.device(device):
        if causal:
            model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
            base_total = sum(p.numel() for p in model.parameters())
        else:  # as `tunelab train` builds it, with the task's head
            model, base_total = classifier_from_config(hf_config, num_labels, getattr(cfg.task, "head", "pooled"))
        apply_method(model, method, family_of(hf_config))
    return model, base_total


def refuse_self_built(cfg: RunConfig) -> None:
    if not cfg.method.pretrained:
        raise UserError(f"method {cfg.method.name} builds its model from the training data (its size depends on "
                        f"the vocabulary it builds there), so its size is known only then: train it "
                        f"(tunelab train --config configs/{cfg.method.name}/...) and read "
                        "trainable_params in summary.json")
