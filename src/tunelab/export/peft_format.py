"""``--format peft``: the run's adapter as PEFT saves its own (adapter_config.json +
adapter_model.safetensors), for ``peft.PeftModel.from_pretrained(base, DIR)``.

The method's module says what PEFT config its run is and how its trained tensors map onto PEFT's
(``peft_adapter(model, cfg) -> (config, fill, detail)``). tunelab's modules are taken out of the
rebuilt model, PEFT's are injected with ``get_peft_model`` on that config, ``fill`` copies
tunelab's trained tensors in, and PEFT's ``save_pretrained`` writes them: key names and the
config are PEFT's own, not re-implemented here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tunelab.export.common import is_classifier, strip_adapters
from tunelab.methods import METHODS
from tunelab.models.loading import load_causal_lm, load_encoder, resolve


def write(cfg, prepared, folder: Path) -> dict:
    """Save the run's adapter in PEFT's format into ``folder``; the model is consumed. Returns
    what export.json records of it."""
    from peft import TaskType, get_peft_model

    model = prepared.model
    config, fill, detail = METHODS.load(cfg.method.name).peft_adapter(model, cfg.method)
    if is_classifier(model):  # tunelab's own model class: PEFT's generic model, the head saved whole
        heads = {id(m) for m in model.head_modules()}
        config.modules_to_save = [name for name, m in model.named_children() if id(m) in heads]
    else:
        config.task_type = TaskType.CAUSAL_LM
    strip_adapters(model)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        fill(peft_model)
    saved = peft_model.peft_config["default"]
    saved.base_model_name_or_path, saved.revision = resolve(cfg.model), cfg.model.revision
    peft_model.save_pretrained(str(folder), save_embedding_layers=False)
    return {"peft_type": str(saved.peft_type.value), "task_type": saved.task_type and str(saved.task_type.value),
            "modules_to_save": list(config.modules_to_save or []), **detail}


def load(cfg, folder: Path, num_labels: int) -> nn.Module:
    """What a user does: the base model loaded afresh, the exported adapter put on it by PEFT."""
    from peft import PeftModel

    if cfg.task.causal:
        base = load_causal_lm(cfg.model)
    else:
        from tunelab.tasks.classification import SequenceClassifier

        base = SequenceClassifier(load_encoder(cfg.model), num_labels, cfg.task.pooling, cfg.task.classifier_dropout)
    return PeftModel.from_pretrained(base, str(folder)).eval()
