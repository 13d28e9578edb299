"""What tunelab knows of each architecture family, in one table.

Every method, ``params`` and ``profile`` read the module names here: which projections compute
the attention's query, key and value (or the fused projection that computes all three), which
are the attention's and the feed-forward's output projections. A model whose ``model_type`` is
in no family is refused with the list of the supported ones, never guessed.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn

from tunelab.errors import UserError


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    """Hugging Face ``config.model_type`` values that share these module names."""
    causal: bool
    """A decoder (causal LM) rather than an encoder."""
    query_key_value: tuple[str, str, str] | None
    """Module-name suffixes of the separate q, k and v projections (None when fused)."""
    fused_qkv: str | None
    """Module-name suffix of one projection whose output is [q; k; v] (GPT-2's ``c_attn``)."""
    attention_output: str
    """Regular expression matching the attention output projection's module name."""
    feed_forward_output: str
    """Regular expression matching the feed-forward output projection's module name."""


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("bert", ("bert", "roberta", "xlm-roberta", "camembert", "electra"), causal=False,
           query_key_value=("query", "key", "value"), fused_qkv=None,
           attention_output=r"attention\.output\.dense$", feed_forward_output=r"(?<!attention)\.output\.dense$"),
    Family("distilbert", ("distilbert",), causal=False,
           query_key_value=("q_lin", "k_lin", "v_lin"), fused_qkv=None,
           attention_output=r"attention\.out_lin$", feed_forward_output=r"ffn\.lin2$"),
    # MPNet's attention has no key/value cache argument: prefix tuning is refused on it.
    Family("mpnet", ("mpnet",), causal=False,
           query_key_value=("attn.q", "attn.k", "attn.v"), fused_qkv=None,
           attention_output=r"attention\.attn\.o$", feed_forward_output=r"layer\.\d+\.output\.dense$"),
    Family("llama", ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "smollm3"), causal=True,
           query_key_value=("q_proj", "k_proj", "v_proj"), fused_qkv=None,
           attention_output=r"self_attn\.o_proj$", feed_forward_output=r"mlp\.down_proj$"),
    Family("gpt2", ("gpt2",), causal=True, query_key_value=None, fused_qkv="c_attn",
           attention_output=r"attn\.c_proj$", feed_forward_output=r"mlp\.c_proj$"),
]}
FUSED_SLICES = ("q", "k", "v")
"""The slices of a fused projection's output, in order."""


def family_of(config) -> Family:
    """The family of a Hugging Face config (or of a model, through its ``config``)."""
    config = getattr(config, "config", config)
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    supported = "; ".join(f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES.values())
    raise UserError(f"model type {model_type!r} is not in a family tunelab knows the modules of; "
                    f"supported: {supported}")


def is_causal_lm(config) -> bool:
    """Whether a Hugging Face config names a causal-LM architecture; a config that names none
    is judged by its family (and an unknown one is left to the loader to accept or refuse)."""
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    family = next((f for f in FAMILIES.values() if getattr(config, "model_type", None) in f.model_types), None)
    return family.causal if family is not None else True


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside a wrapper for several processes (DistributedDataParallel), else itself."""
    return getattr(model, "module", model)


def transformer_body(model: nn.Module) -> nn.Module:
    """The transformer without task head: what takes input ids and returns hidden states. Called
    on its own it bypasses a DDP wrapper, so no gradient of it is averaged: inference only, or
    see :func:`tunelab.tasks.causal.last_hidden`."""
    model = unwrapped(model)
    if hasattr(model, "backbone"):  # a task model of ours (tunelab.tasks.classification)
        return model.backbone
    return model.base_model  # Hugging Face: the body of e.g. LlamaForCausalLM (itself for a bare model)


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of transformer layers, whatever the architecture calls it."""
    for module in model.modules():
        for attr in ("layer", "layers", "h"):
            blocks = getattr(module, attr, None)
            if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
                return blocks
    raise UserError(f"cannot find the transformer layers of {type(model).__name__}")


def context_limit(config) -> int | None:
    """Positions the model can attend over (None when it does not say)."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def key_value_shape(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a Hugging Face config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


CACHE_ARGUMENT_NAMES = ("cache", "past_key_values")
"""What a body's forward may call its key/value cache. transformers 5.24 renamed
``past_key_values`` to ``cache`` in every model (keeping the old name as a deprecated alias
that callers may still pass), so the supported releases differ; the transformers >= 5.24 name
comes first."""


def forward_arguments(body: nn.Module) -> set[str]:
    return set(inspect.signature(body.forward).parameters)


def cache_argument(body: nn.Module) -> str | None:
    """The name under which this body's forward takes a key/value cache, read off its
    signature; None if it takes none (DistilBERT)."""
    accepted = forward_arguments(body)
    return next((name for name in CACHE_ARGUMENT_NAMES if name in accepted), None)
