"""``--format merged``: the method folded into the weights of the original architecture, saved
with ``save_pretrained`` (safetensors) and the run's tokenizer, for ``from_pretrained(DIR)``.

Every module a method injected folds itself into the weights it wraps (its ``merge()``: LoRA's
W0 + (alpha / r) B A, IA3's rescaled rows or columns); methods that trained the model's own
tensors (BitFit, full, head) are saved as they are.

A classification run's head is tunelab's (pooling over the real tokens, then one linear
layer), which no transformers ``...ForSequenceClassification`` computes (BERT's pools with an
extra dense + tanh, GPT-2's and Llama's classifiers have no bias), so the backbone is saved
alone and the head beside it: ``head.safetensors`` (weight, bias) and ``head.json`` (pooling,
labels); the export's README shows the few lines that apply it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
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
    body = model.backbone if is_classifier(model) else model
    declare_biases(body)
    body.save_pretrained(str(folder))
    prepared.tokenizer.save_pretrained(str(folder))
    if not is_classifier(model):
        return {"loader": "AutoModelForCausalLM"}
    head = model.classifier
    save_file({"weight": head.weight.detach().contiguous().clone(), "bias": head.bias.detach().contiguous().clone()},
              str(folder / "head.safetensors"))
    description = {"pooling": cfg.task.pooling, "num_labels": head.out_features, "hidden_size": head.in_features,
                   "labels": list(prepared.label_names), "dropout_in_training": cfg.task.classifier_dropout}
    (folder / "head.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return {"loader": "AutoModel", "head": description}


def load(folder: Path, classifier: bool) -> nn.Module:
    """What a user does: transformers' from_pretrained on the folder alone (plus the head file)."""
    from transformers import AutoModel, AutoModelForCausalLM

    loader = AutoModel if classifier else AutoModelForCausalLM
    model, info = loader.from_pretrained(str(folder), dtype=torch.float32, output_loading_info=True)
    lost = sorted(info.get("unexpected_keys", [])) + sorted(info.get("missing_keys", []))
    if lost:
        raise UserError(f"the merged model has tensors a {model.config.model_type} checkpoint cannot hold or lacks "
                        f"({', '.join(lost[:3])}); this run cannot be merged")
    if not classifier:
        return model.eval()
    from safetensors.torch import load_file

    from tunelab.tasks.classification import SequenceClassifier

    head = json.loads((folder / "head.json").read_text(encoding="utf-8"))
    wrapped = SequenceClassifier(model, head["num_labels"], head["pooling"])
    wrapped.classifier.load_state_dict(load_file(str(folder / "head.safetensors")))
    return wrapped.eval()
