"""tunelab's pooled classification head as a transformers model class, in a file of its own.

This file imports torch and transformers only: a merged export of a classification run ships a
copy of it beside the weights and names it in config.json's ``auto_map``, so that
``AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)`` and
``pipeline("text-classification", model=DIR, trust_remote_code=True)`` compute what the run
computed, without tunelab. tunelab's own classifier (:mod:`tunelab.tasks.classification`) pools
with :func:`pool` from here, so the export runs the very code the run did.

config.json is the backbone's own (its ``model_type``), plus ``tunelab_pooling``,
``tunelab_classifier_dropout``, ``id2label`` and ``label2id``. The backbone's weights sit under its
``base_model_prefix`` (``bert.``, ``model.``...), so ``AutoModel.from_pretrained(DIR)`` loads the
body alone. The head is called ``tunelab_classifier``, a name no transformers class uses: loading
the folder with transformers' own classifier (no ``trust_remote_code``) gives a warned-about new
head, never this head's weights under a different pooling.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

POOLINGS = ("mean", "cls", "last")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, H) hidden states to (B, H): the mean over the real tokens (``mean``), the first
    token's (``cls``, encoders), or the last real token's (``last``, decoders: only it has seen
    the whole text; left and right padding alike)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask * positions).argmax(1)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)


class TunelabForSequenceClassification(PreTrainedModel):
    """backbone -> pooled hidden state -> dropout -> one linear layer, for any backbone
    ``AutoModel`` builds from the config."""

    config_class = PretrainedConfig
    # Attention is the backbone's: its own class accepts or refuses the implementation asked for.
    _supports_sdpa = _supports_flash_attn = _supports_flex_attn = True

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        backbone = AutoModel.from_config(config)
        self.base_model_prefix = backbone.base_model_prefix  # the body's weights keep its own prefix
        self.add_module(self.base_model_prefix, backbone)
        self.dropout = nn.Dropout(getattr(config, "tunelab_classifier_dropout", 0.0))
        self.tunelab_classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs.pop("return_dict", None)
        hidden = self.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        pooled = pool(hidden, attention_mask, self.config.tunelab_pooling)  # (B, H)
        logits = self.tunelab_classifier(self.dropout(pooled))  # (B, num_labels)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


TunelabForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
