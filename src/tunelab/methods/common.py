"""What every method shares: freezing, the task head, the trained state, switching off.

A method is a module with ``apply(model, cfg)`` that injects its tensors and freezes what it
does not train. Everything else is generic and lives here:

- the tensors to save are exactly the parameters with ``requires_grad`` (found by flag, not
  by name), so a checkpoint holds only what training changed;
- modules a method adds subclass :class:`AdapterModule`, which gives ``disable_adapters``
  one switch for all of them (the frozen base is then DPO's reference model for free), and
  carries what others ask of it without knowing its class (``merge``, ``take_out`` for export,
  ``before_loading``, ``memory_site`` for the memory planner);
- the task head (a classifier, or ``lm_head`` for causal LMs) always trains.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

from tunelab.errors import UserError
from tunelab.sharding import local_part

if TYPE_CHECKING:
    from tunelab.methods.memory_sites import MemorySite


class AdapterModule(nn.Module):
    """Base class of every module a method injects; ``enabled`` switches it off."""

    enabled: bool = True

    def merge(self) -> None:  # pragma: no cover - methods without a merge keep the default
        """Fold the adapter into the base weights, where the method allows it."""

    def unmerge(self) -> None:  # pragma: no cover
        """Undo ``merge``."""

    def before_loading(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        """Take the form the checkpoint ``state`` was saved in (its keys of this module start
        with ``prefix``) before the saved tensors are put back."""

    def memory_site(self) -> MemorySite | None:
        """What this module adds to a training step's memory besides its parameters, for the
        memory planner (:mod:`tunelab.methods.memory_sites`); None: nothing it must know of."""
        return None

    def switch_off_bytes(self) -> int:
        """Memory this module keeps only so that switching it off gives the base model back
        (a DPO reference taken from the switched-off model costs this, no copy of the model).
        0 for a module that passes its input through when off."""
        return 0

    def take_out(self, model: nn.Module, name: str) -> None:
        """Leave ``model`` (where this module is called ``name``) as the architecture was before
        the method: a wrapper gives back the layer it wraps (as it stands: merged or not); a
        module of its own (soft prompt, key/value prefix, BitFit's copy of the pretrained biases)
        is removed with the hooks it put on its parent."""
        if isinstance(getattr(self, "base", None), nn.Module):
            replace_module(model, name, lambda wrapper: wrapper.base)
            return
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        delattr(parent, child)
        remove_hooks_of(parent, self)


def remove_hooks_of(parent: nn.Module, module: nn.Module) -> None:
    """Drop the forward (pre-)hooks that are bound methods of ``module`` from ``parent``."""
    tables = ((parent._forward_pre_hooks, parent._forward_pre_hooks_with_kwargs),
              (parent._forward_hooks, parent._forward_hooks_with_kwargs, parent._forward_hooks_always_called))
    for hooks, *flags in tables:
        for key in [k for k, hook in hooks.items() if getattr(hook, "__self__", None) is module]:
            del hooks[key]
            for flag in flags:
                flag.pop(key, None)


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def task_head(model: nn.Module) -> list[nn.Module]:
    """Modules new for the task (a classifier): they start random, so every method trains them."""
    return list(model.head_modules()) if hasattr(model, "head_modules") else []


def output_head(model: nn.Module) -> list[nn.Module]:
    """What head-only tuning trains: the task head, else a causal LM's ``lm_head``.

    A causal LM's ``lm_head`` is often tied to the input embeddings; training it would then
    train the embeddings too, so it is untied first (a copy of the weight, and the config says
    the embeddings are no longer tied).
    """
    heads = task_head(model)
    if heads or not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        return heads
    untie_output_embeddings(model)
    return [model.get_output_embeddings()]


def untie_output_embeddings(model: nn.Module) -> None:
    output, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    if output is not None and inputs is not None and output.weight is inputs.weight:
        output.weight = nn.Parameter(inputs.weight.detach().clone())
        model.config.tie_word_embeddings = False
        if hasattr(model, "_tied_weights_keys"):
            model._tied_weights_keys = None


def module_ids(modules: list[nn.Module]) -> set[int]:
    """Identities of the given modules and everything inside them (to skip the task head)."""
    return {id(m) for top in modules for m in top.modules()}


def replace_module(model: nn.Module, name: str, wrap) -> nn.Module:
    """Swap the submodule called ``name`` for ``wrap(old)``; returns the new module."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    new = wrap(getattr(parent, child))
    setattr(parent, child, new)
    return new


def unfreeze(modules: list[nn.Module]) -> None:
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(True)


@dataclass
class ParameterCounts:
    trainable: int
    added: int
    total: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def as_dict(self) -> dict[str, float]:
        return {"trainable_params": self.trainable, "added_params": self.added, "total_params": self.total,
                "trainable_percent": self.trainable_percent}


def count_parameters(model: nn.Module, base_total: int) -> ParameterCounts:
    """``base_total`` is the pretrained model's count before the task head and the method."""
    params = list(model.parameters())  # shared (tied) tensors are listed once
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return ParameterCounts(trainable=trainable, added=total - base_total, total=total)


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of everything that trains, in the model's order."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Exactly the tensors training changes; what a checkpoint holds."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def inference_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors as a checkpoint keeps them: modules with a training-only
    parameterisation (prefix tuning's MLP) contribute what they produce, not how."""
    state = trainable_state(model)
    for name, module in model.named_modules():
        if hasattr(module, "folded_state"):
            prefix = f"{name}." if name else ""
            state = {k: v for k, v in state.items() if not k.startswith(prefix)}
            state.update({prefix + k: v for k, v in module.folded_state().items()})
    return state


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put saved tensors back; every saved tensor must find its parameter and every trainable
    parameter must be in the checkpoint, else the checkpoint belongs to another set-up."""
    unmerge(model)  # new adapter tensors must not meet base weights that hold the old update
    for name, module in model.named_modules():
        if isinstance(module, AdapterModule):
            module.before_loading(state, f"{name}." if name else "")
    expected = set(trainable_state(model))
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        detail = f"missing {sorted(missing)[:3]}" if missing else f"unexpected {sorted(unexpected)[:3]}"
        raise UserError(f"checkpoint does not match the model and method in config.yaml ({detail})")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(local_part(tensor, params[name]))  # a sharded parameter takes its slice


def adapters(model: nn.Module) -> list[AdapterModule]:
    return [m for m in model.modules() if isinstance(m, AdapterModule)]


def merge(model: nn.Module) -> None:
    for module in adapters(model):
        module.merge()


def unmerge(model: nn.Module) -> None:
    for module in adapters(model):
        module.unmerge()


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[None]:
    """Run the model as its base: every injected module passes its input through unchanged.

    Merged adapters are unmerged for the duration (their update lives in the base weights)
    and merged again afterwards.
    """
    modules = adapters(model)
    previous = [(m.enabled, getattr(m, "merged", False)) for m in modules]
    for m in modules:
        m.unmerge()
        m.enabled = False
    try:
        yield
    finally:
        for m, (was_enabled, was_merged) in zip(modules, previous):
            m.enabled = was_enabled
            if was_merged:
                m.merge()
