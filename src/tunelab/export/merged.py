"""``--format merged``: the method folded into the weights of the original architecture, saved
with ``save_pretrained`` (safetensors) and the run's tokenizer, for ``from_pretrained(DIR)``.

Every module a method injected folds itself into the weights it wraps (its ``merge()``: LoRA's
W0 + (alpha / r) B A, IA3's rescaled rows or columns); methods that trained the model's own
tensors (BitFit, full, head) are saved as they are.

A classification run is saved as the transformers classifier its model says it is (its
``as_transformers``), with the label names in config.json, for
``pipeline("text-classification", model=DIR)``: with ``task.head: auto`` the architecture's own
``...ForSequenceClassification``; with tunelab's pooled head, which no transformers class
computes (BERT's pools with an extra dense + tanh, GPT-2's and Llama's classifiers have no
bias), :class:`tunelab.tasks.pooled_head.TunelabForSequenceClassification`, whose code is
copied beside the weights and named in ``auto_map``: loading it takes ``trust_remote_code=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tunelab.errors import UserError
from tunelab.export.common import is_classifier, strip_adapters
from tunelab.methods.common import adapters

BIAS_FLAGS = {"attention_bias": "self_attn", "mlp_bias": "mlp"}
"""Config flags that give bias-free architectures (Llama) biases, and the module each covers."""


def fold(model: nn.Module) -> None:
    """Every method module into the weights it wraps; BitFit's pretrained copies are left to strip."""
    for module in adapters(model):
        module.merge()


def declare_biases(model: nn.Module) -> None:
    """BitFit gives bias-free linear layers a bias; a config flag (Llama's attention_bias,
    mlp_bias) must say so, or from_pretrained would build the layers without and drop them.
    An architecture without such a flag is caught when the export is loaded back."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.bias is not None:
            for flag, part in BIAS_FLAGS.items():
                if part in name.split(".") and getattr(model.config, flag, None) is False:
                    setattr(model.config, flag, True)


def write(cfg, prepared, folder: Path) -> dict:
    """Save the run's model, merged, into ``folder``; the model is consumed."""
    model = prepared.model
    fold(model)
    strip_adapters(model)
    classifier = is_classifier(model)
    saved = model.as_transformers(list(prepared.label_names)) if classifier else model
    declare_biases(saved)
    saved.save_pretrained(str(folder))
    prepared.tokenizer.save_pretrained(str(folder))
    if not classifier:
        return {"loader": "AutoModelForCausalLM"}
    return {"loader": "AutoModelForSequenceClassification", "class": type(saved).__name__,
            "trust_remote_code": bool(getattr(saved.config, "auto_map", None))}


def load(folder: Path, classifier: bool) -> nn.Module:
    """What a user does: transformers' from_pretrained on the folder alone (a pooled head's code
    is in the folder, written by this export: trusting it trusts ourselves)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    loader = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    model, info = loader.from_pretrained(str(folder), dtype=torch.float32, output_loading_info=True,
                                         trust_remote_code=classifier)
    lost = sorted(info.get("unexpected_keys", [])) + sorted(info.get("missing_keys", []))
    if lost:
        raise UserError(f"the merged model has tensors a {model.config.model_type} checkpoint cannot hold or lacks "
                        f"({', '.join(lost[:3])}); this run cannot be merged")
    return model.eval()
