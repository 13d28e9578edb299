"""What prompt and prefix tuning share: a forward pre-hook on the transformer body.

The hook rewrites the body's keyword arguments before it runs (prepend embeddings, extend the
attention mask, seed a key/value cache), so no model class is subclassed or copied and any
architecture whose body takes ``inputs_embeds`` and a key/value cache works.

The cache argument's name is read off the body's ``forward``
(:func:`tunelab.models.families.cache_argument`): it differs between the transformers releases
tunelab supports.
"""

from __future__ import annotations

import torch
from torch import nn

from tunelab.errors import UserError
from tunelab.models.families import CACHE_ARGUMENT_NAMES, forward_arguments


def take_cache(kwargs: dict, argument: str | None):
    """The cache the caller passed (under the body's name or a known alias), moved to the
    body's own name so the model sees one cache; None when there is none."""
    cache = None
    for name in CACHE_ARGUMENT_NAMES:
        given = kwargs.pop(name, None) if name != argument else kwargs.get(name)
        cache = given if given is not None else cache
    if argument is not None and cache is not None:
        kwargs[argument] = cache
    return cache


def take_input(body: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict, torch.Tensor]:
    """Pull the input embeddings out of the call (GPT-2 passes input_ids positionally)."""
    input_ids = kwargs.pop("input_ids", None)
    if args:
        input_ids, args = args[0], args[1:]
    embeds = kwargs.pop("inputs_embeds", None)
    if embeds is None:
        embeds = body.get_input_embeddings()(input_ids)  # (B, T, H)
    return args, kwargs, embeds


def extend_mask(kwargs: dict, batch: int, n: int, device) -> None:
    """Virtual positions are always attended to: prepend ones to the attention mask."""
    mask = kwargs.get("attention_mask")
    if mask is None:
        return
    kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, n), mask], dim=1)


def cache_in_use(cache) -> bool:
    """True on later generation steps: the virtual tokens are already in the cache."""
    return cache is not None and cache.get_seq_length() > 0


def account_for_virtual_tokens(kwargs: dict, batch: int, n: int, device) -> None:
    """Every call sees n more key positions than the caller knows of: extend its mask, and let
    the model derive positions from the cache instead of the caller's (which count T only)."""
    extend_mask(kwargs, batch, n, device)
    for stale in ("position_ids", "cache_position"):
        kwargs.pop(stale, None)


def require_argument(body: nn.Module, argument: str | None, method: str, what: str) -> None:
    """Refuse, in one line, a body whose forward lacks what the method feeds it."""
    if argument is None or argument not in forward_arguments(body):
        raise UserError(f"{method} tuning needs a model whose forward takes {what}; {type(body).__name__} does not")
