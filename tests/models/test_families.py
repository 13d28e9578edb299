"""The architecture table: every family the methods know, and a clear refusal of the rest."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, BertConfig, GPT2Config, LlamaConfig

from tunelab.errors import UserError
from tunelab.models.families import FAMILIES, family_of, is_causal_lm


@pytest.mark.parametrize("config, family", [(BertConfig(), "bert"), (LlamaConfig(), "llama"), (GPT2Config(), "gpt2"),
                                            (AutoConfig.for_model("roberta"), "bert"),
                                            (AutoConfig.for_model("distilbert"), "distilbert")])
def test_known_model_types_find_their_family(config, family):
    assert family_of(config).name == family
    assert family_of(config).causal == is_causal_lm(config) == (family in ("llama", "gpt2"))


def test_an_unknown_architecture_is_refused_naming_the_supported_families():
    with pytest.raises(UserError) as err:
        family_of(AutoConfig.for_model("t5"))
    message = str(err.value)
    assert "'t5'" in message and "\n" not in message
    assert all(f"{name} (" in message for name in FAMILIES)


def test_every_family_names_its_attention_inputs_once():
    for family in FAMILIES.values():
        assert (family.query_key_value is None) != (family.fused_qkv is None), family.name
