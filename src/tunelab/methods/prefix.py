"""Prefix tuning (Li & Liang 2021, arXiv:2101.00190): trainable key/value prefixes of length
``num_virtual_tokens`` in every layer, seen by every real token's attention.

They reach the model the way cached keys/values of earlier tokens do (the body's cache argument), so
attention, masks and position ids follow the architecture's own cache path: the attention
mask gets ``num_virtual_tokens`` leading ones and the real tokens' positions start after them.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from tunelab.errors import UserError
from tunelab.methods.common import AdapterModule, freeze, task_head, unfreeze
from tunelab.methods.memory_sites import VirtualTokensSite
from tunelab.methods.options import PrefixMethod
from tunelab.methods.virtual_tokens import account_for_virtual_tokens, cache_in_use, require_argument, take_cache
from tunelab.models.families import CACHE_ARGUMENT_NAMES, Family, cache_argument, key_value_shape, transformer_body


class PrefixMLP(nn.Module):
    """Reparameterisation (Li & Liang 2021, section 4.3): the prefixes are an MLP of a small
    embedding during training, which the paper found more stable than optimising them directly."""

    def __init__(self, shape: tuple[int, int, int, int], embed_dim: int, hidden_size: int, dtype=None, device=None):
        super().__init__()
        layers, kv_heads, n, head_dim = shape
        self.shape = shape
        factory = {"dtype": dtype, "device": device}
        self.embedding = nn.Parameter(torch.randn(n, embed_dim, **factory) * 0.02)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden_size, **factory), nn.Tanh(),
                                 nn.Linear(hidden_size, layers * 2 * kv_heads * head_dim, **factory))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        layers, kv_heads, n, head_dim = self.shape
        flat = self.mlp(self.embedding)  # (n, L * 2 * kv_heads * head_dim)
        kv = flat.view(n, layers, 2, kv_heads, head_dim).permute(2, 1, 3, 0, 4)  # (2, L, kv_heads, n, head_dim)
        return kv[0], kv[1]


class FixedPrefixCache(DynamicCache):
    """The prefixes and nothing more: a layer's ``update`` returns [prefix; its keys] and keeps
    nothing. Under activation checkpointing each layer runs twice (forward, then again in
    backward); a DynamicCache grows on the first run and would give the second [prefix; keys; keys]."""

    def hold(self, keys: torch.Tensor, values: torch.Tensor, layer: int) -> None:
        super().update(keys, values, layer)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        held = self.layers[layer_idx]
        return torch.cat([held.keys, key_states], dim=-2), torch.cat([held.values, value_states], dim=-2)


class KeyValuePrefix(AdapterModule):
    def __init__(self, layers: int, kv_heads: int, head_dim: int, n: int, dtype=torch.float32, device=None,
                 reparameterize: bool = False, embed_dim: int = 0, hidden_size: int = 512,
                 cache_argument: str = "cache"):
        super().__init__()
        shape = (layers, kv_heads, n, head_dim)
        self.n = n
        self.cache_argument = cache_argument  # what the body's forward calls its key/value cache
        self.checkpointed = False  # the body's layers run again in backward (before_checkpointing)
        if reparameterize:
            self.reparam = PrefixMLP(shape, embed_dim, hidden_size, dtype=dtype, device=device)
        else:
            # Small values: at init the prefix barely moves the model's attention outputs.
            self.prefix_keys = nn.Parameter(torch.randn(shape, dtype=dtype, device=device) * 0.02)
            self.prefix_values = nn.Parameter(torch.randn(shape, dtype=dtype, device=device) * 0.02)

    @property
    def num_virtual_tokens(self) -> int:
        return self.n

    def memory_site(self) -> VirtualTokensSite:
        """Learned key/value positions in every block's attention."""
        return VirtualTokensSite(self.n, where="keys")

    def keys_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each (L, kv_heads, n, head_dim)."""
        if hasattr(self, "reparam"):
            return self.reparam()
        return self.prefix_keys, self.prefix_values

    def folded_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps: the prefixes themselves, never the MLP that made them."""
        keys, values = self.keys_values()
        return {"prefix_keys": keys.detach(), "prefix_values": values.detach()}

    def before_loading(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        """A checkpoint holds the prefixes, never the MLP: fold before they are put back."""
        if f"{prefix}prefix_keys" in state:
            self.fold()

    def fold(self) -> None:
        """Replace the MLP by the prefixes it produces (for inference, or to load a checkpoint)."""
        if not hasattr(self, "reparam"):
            return
        folded = self.folded_state()
        del self.reparam
        self.prefix_keys = nn.Parameter(folded["prefix_keys"].clone())
        self.prefix_values = nn.Parameter(folded["prefix_values"].clone())

    def seed_cache(self, body: nn.Module, args: tuple, kwargs: dict):
        """Forward pre-hook of the body: a fresh cache holding the prefixes, mask extended."""
        if not self.enabled:
            return None
        reference = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else (
            args[0] if args else kwargs["inputs_embeds"])
        batch = reference.shape[0]
        cache = take_cache(kwargs, self.cache_argument)
        if not cache_in_use(cache):  # later generation steps find the prefixes in the cache
            # A caller's empty cache (generate) is filled in place so it carries the prefixes on.
            replayed = self.checkpointed and body.training and torch.is_grad_enabled()  # as the layers decide
            cache = cache if cache is not None else FixedPrefixCache() if replayed else DynamicCache()
            hold = cache.hold if isinstance(cache, FixedPrefixCache) else cache.update
            for layer, (keys, values) in enumerate(zip(*self.keys_values())):
                hold(keys.unsqueeze(0).expand(batch, -1, -1, -1), values.unsqueeze(0).expand(batch, -1, -1, -1), layer)
            kwargs[self.cache_argument] = cache
        account_for_virtual_tokens(kwargs, batch, self.num_virtual_tokens, reference.device)
        return args, kwargs


def apply(model: nn.Module, cfg: PrefixMethod, family: Family | None, tokenizer=None) -> None:
    heads = task_head(model)
    freeze(model)
    body = transformer_body(model)
    argument = cache_argument(body)
    require_argument(body, argument, "prefix", f"a key/value cache ({' or '.join(CACHE_ARGUMENT_NAMES)})")
    weight = body.get_input_embeddings().weight
    prefix = KeyValuePrefix(*key_value_shape(body.config), cfg.num_virtual_tokens, dtype=weight.dtype,
                            device=weight.device, reparameterize=cfg.reparameterize, embed_dim=weight.shape[1],
                            hidden_size=cfg.hidden_size, cache_argument=argument)
    body.add_module("kv_prefix", prefix)
    body.register_forward_pre_hook(prefix.seed_cache, with_kwargs=True)
    unfreeze([prefix, *heads])


def before_checkpointing(model: nn.Module, cfg: PrefixMethod) -> None:
    """A checkpointed layer drops the cache it is given (it would write it twice) unless told it
    only reads it: under checkpointing the prefixes come in a :class:`FixedPrefixCache`, which
    never grows, so every layer of the body is told so. The layers checkpoint themselves; a
    flag of the body's own only withholds the cache from them (GPT-2 passes None while it is
    set), so it is lowered."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    body = transformer_body(model)
    layers = [m for m in body.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers or not all(hasattr(m, "_can_checkpoint_with_cache") for m in layers):
        raise UserError("train.gradient_checkpointing with prefix tuning: this transformers' checkpointed layers drop "
                        "the key/value cache that carries the prefixes; set it false or upgrade transformers")
    for module in body.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module._can_checkpoint_with_cache = True
        elif isinstance(module, KeyValuePrefix):
            module.checkpointed = True
        elif getattr(module, "gradient_checkpointing", False):
            module.gradient_checkpointing = False


def peft_adapter(model: nn.Module, cfg: PrefixMethod):
    """PEFT's PrefixTuningConfig and the copy of our prefixes: PEFT's embedding without projection
    is (n, L * 2 * kv_heads * head_dim), laid out (token, layer, key/value, head, dim); a
    reparameterised run's MLP is already folded away."""
    from peft import PrefixTuningConfig

    prefix = next(m for m in model.modules() if isinstance(m, KeyValuePrefix))
    keys, values = (t.detach() for t in prefix.keys_values())  # each (L, kv_heads, n, head_dim)
    n = prefix.num_virtual_tokens
    embedding = torch.stack([keys, values], 1).permute(3, 0, 1, 2, 4).reshape(n, -1)
    config = PrefixTuningConfig(num_virtual_tokens=n, prefix_projection=False)

    def fill(peft_model: nn.Module) -> None:
        peft_model.prompt_encoder["default"].embedding.weight.copy_(embedding)

    return config, fill, {}
