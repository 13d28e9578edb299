"""``task.head: auto``: the classifier transformers has for the architecture.

``AutoModelForSequenceClassification`` puts the architecture's own head on the pretrained body
(BERT: its pooler, dropout and a linear layer; RoBERTa: dense + tanh + linear over the first
token; GPT-2 and Llama: a bias-free score of the last real token), sized for the run's labels,
whose names go into its config (``id2label``, ``label2id``). Saved as it is, it is a plain
transformers classifier: ``pipeline("text-classification", model=DIR)`` loads it.

:class:`AutoHeadClassifier` shows it to tunelab as :class:`tunelab.tasks.classification.
SequenceClassifier` is shown: ``backbone`` (the body, where prompt and prefix tuning hook in),
``head_modules()`` (what is new for the task, so every method trains it) and a forward that
returns the logits. The methods see no difference between the two.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from tunelab.config import ModelConfig
from tunelab.models.loading import load_sequence_classifier


class AutoHeadClassifier(nn.Module):
    """transformers' ``...ForSequenceClassification`` of the architecture, as ``model``."""

    features_cacheable: ClassVar[bool] = False
    """Each architecture's head reads the hidden states its own way (BERT's pretrained pooler of
    the first token, GPT-2's score of the last real one): there is no one pooled vector to compute
    once, so head-only tuning runs the frozen body at every step (in eval mode, no dropout)."""

    def __init__(self, model: PreTrainedModel, new: list[str]):
        super().__init__()
        self.model = model
        self.config = model.config
        self.new = list(new)  # names (in ``model``) of the modules new for the task
        self.body_in_eval_mode = False

    @property
    def backbone(self) -> nn.Module:
        """The transformer body (BERT's ``bert``, GPT-2's ``transformer``...)."""
        return self.model.base_model

    def head_modules(self) -> list[nn.Module]:
        """Modules that are new for this task and always train."""
        return [self.model.get_submodule(name) for name in self.new]

    def train(self, mode: bool = True) -> "AutoHeadClassifier":
        super().train(mode)
        if self.body_in_eval_mode:
            self.backbone.eval()
        return self

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits  # (B, num_labels)

    def as_transformers(self, label_names: list[str]) -> PreTrainedModel:
        """The model to save: transformers' own, whose config already names the labels."""
        return self.model


def new_modules(model: PreTrainedModel, fresh: set[str]) -> list[str]:
    """Names of the modules new for the task: each child beside the body that has parameters
    (the classifier), and in the body each outermost module all of whose parameters are in
    ``fresh``, the newly initialised ones (BERT's pooler, when the checkpoint has none)."""
    body, prefix = model.base_model, model.base_model_prefix
    names = [name for name, child in model.named_children()
             if child is not body and next(child.parameters(), None) is not None]
    for name, module in body.named_modules(prefix=prefix):
        params = {f"{name}.{p}" for p, _ in module.named_parameters()}
        if name != prefix and params and params <= fresh and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    return names


def pretrained(model_cfg: ModelConfig, label_names: list[str], pad_token_id: int | None) -> AutoHeadClassifier:
    """The pretrained body with the architecture's head for ``label_names``, new (a checkpoint's own
    head of another size is replaced). ``pad_token_id``: the tokenizer's, which decoders' heads
    need to find the last real token."""
    model, info = load_sequence_classifier(model_cfg, label_names)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    fresh = {k if isinstance(k, str) else k[0] for k in (*info["missing_keys"], *info.get("mismatched_keys", ()))}
    return AutoHeadClassifier(model, new_modules(model, fresh))


def from_config(hf_config, num_labels: int) -> AutoHeadClassifier:
    """Random weights from a config alone (what ``params`` and ``profile`` measure)."""
    config = copy.deepcopy(hf_config)
    config.num_labels = num_labels
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    return AutoHeadClassifier(model, new_modules(model, set()))
