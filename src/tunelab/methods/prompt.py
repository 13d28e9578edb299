"""Prompt tuning (Lester et al. 2021, arXiv:2104.08691): ``num_virtual_tokens`` trainable
embeddings prepended to the input embeddings; the model itself stays frozen.

Initialisation (section 3): the embeddings of a text such as "Summarize the following
article:", repeated or truncated to length; embeddings of sampled vocabulary tokens; or random.
The body's hidden states of the virtual positions are dropped on the way out (a forward hook),
so every caller sees exactly one position per real token, as without the method.
"""

from __future__ import annotations

import torch
from torch import nn

from tunelab.errors import UserError
from tunelab.methods.common import AdapterModule, freeze, task_head, unfreeze
from tunelab.methods.memory_sites import VirtualTokensSite
from tunelab.methods.options import PromptMethod
from tunelab.methods.virtual_tokens import (
    account_for_virtual_tokens,
    cache_in_use,
    require_argument,
    take_cache,
    take_input,
)
from tunelab.models.families import Family, cache_argument, transformer_body


class SoftPrompt(AdapterModule):
    def __init__(self, init: torch.Tensor, cache_argument: str | None = None):
        super().__init__()
        self.prompt = nn.Parameter(init.clone())  # (n, H)
        self.cache_argument = cache_argument  # the body's key/value cache argument; None: it has no cache
        self.prepended = False  # whether the running call got the prompt (a cached step does not)

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt.shape[0]

    def memory_site(self) -> VirtualTokensSite:
        """Learned positions before the input embeddings: the whole body sees them."""
        return VirtualTokensSite(self.num_virtual_tokens, where="input")

    def prepend(self, body: nn.Module, args: tuple, kwargs: dict):
        """Forward pre-hook of the body: [prompt; input embeddings], mask and token types extended."""
        self.prepended = False
        if not self.enabled:
            return None
        args, kwargs, embeds = take_input(body, args, kwargs)
        batch, n = embeds.shape[0], self.num_virtual_tokens
        if not cache_in_use(take_cache(kwargs, self.cache_argument)):  # later generation steps find the prompt there
            self.prepended = True
            prompt = self.prompt.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)  # (B, n, H)
            embeds = torch.cat([prompt, embeds], dim=1)  # (B, n + T, H)
            if kwargs.get("token_type_ids") is not None:
                types = kwargs["token_type_ids"]
                kwargs["token_type_ids"] = torch.cat([types.new_zeros(batch, n), types], dim=1)
        kwargs["inputs_embeds"] = embeds
        account_for_virtual_tokens(kwargs, batch, n, embeds.device)
        return args, kwargs

    def drop_virtual_positions(self, body: nn.Module, args: tuple, output):
        """Forward hook of the body: the hidden states of the real tokens only, (B, T, H)."""
        if self.prepended and getattr(output, "last_hidden_state", None) is not None:
            output.last_hidden_state = output.last_hidden_state[:, self.num_virtual_tokens:]
        return output


def initial_prompt(embedding: nn.Embedding, cfg: PromptMethod, tokenizer) -> torch.Tensor:
    n = cfg.num_virtual_tokens
    weight = embedding.weight.detach()
    if cfg.init == "random":
        return torch.randn(n, weight.shape[1], dtype=weight.dtype, device=weight.device) * weight.std()
    if cfg.init == "vocab":
        ids = torch.randint(0, weight.shape[0], (n,), device=weight.device)
        return weight[ids].clone()
    if tokenizer is None:
        raise UserError("method.init text needs the model's tokenizer")
    ids = tokenizer(cfg.init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserError(f"method.init_text {cfg.init_text!r} tokenizes to nothing; give a non-empty text")
    ids = (ids * (n // len(ids) + 1))[:n]  # repeat, then truncate to length
    return weight[torch.tensor(ids, device=weight.device)].clone()


def apply(model: nn.Module, cfg: PromptMethod, family: Family | None, tokenizer=None) -> None:
    heads = task_head(model)
    freeze(model)
    body = transformer_body(model)
    require_argument(body, "inputs_embeds", "prompt", "inputs_embeds")
    soft_prompt = SoftPrompt(initial_prompt(body.get_input_embeddings(), cfg, tokenizer), cache_argument(body))
    body.add_module("soft_prompt", soft_prompt)
    body.register_forward_pre_hook(soft_prompt.prepend, with_kwargs=True)
    body.register_forward_hook(soft_prompt.drop_virtual_positions)
    unfreeze([soft_prompt, *heads])


def peft_adapter(model: nn.Module, cfg: PromptMethod):
    """PEFT's PromptTuningConfig for the run and the copy of our prompt into PEFT's embedding.
    PEFT's prompt tuning returns logits for the virtual positions too; export skips them."""
    from peft import PromptTuningConfig, PromptTuningInit

    prompt = next(m for m in model.modules() if isinstance(m, SoftPrompt)).prompt.detach()  # (n, H)
    # RANDOM: loading must not need the init text's tokenizer; the saved embeddings replace it anyway.
    config = PromptTuningConfig(num_virtual_tokens=prompt.shape[0], token_dim=prompt.shape[1],
                                prompt_tuning_init=PromptTuningInit.RANDOM)

    def fill(peft_model: nn.Module) -> None:
        peft_model.prompt_encoder["default"].embedding.weight.copy_(prompt)

    return config, fill, {"virtual_positions_in_outputs": prompt.shape[0]}
