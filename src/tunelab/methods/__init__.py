"""The method protocol and the registry of methods: the one place that lists their names.

A method is a module with ``apply(model, cfg, family, tokenizer)`` that injects the method's
tensors and freezes everything it does not train; saving, loading, counting and switching off
are generic (:mod:`tunelab.methods.common`). Its options are a class in
:mod:`tunelab.methods.options`. The config's ``method`` section, the CLI, ``compare``,
``params`` and the report all take the method names from :data:`METHODS`.

Adding a method: its module, its options class, and one ``METHODS.register`` line below (or,
from outside tunelab, in a plugin module named by ``TUNELAB_PLUGINS``; see
:mod:`tunelab.plugins`). Modules are imported when a method is applied, so listing methods or
reading a config never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from tunelab.methods import options as opts
from tunelab.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from tunelab.models.families import Family


class Method(Protocol):
    """What a method module provides. Optionally also ``parameter_groups(model, cfg, lr,
    weight_decay)``, the optimizer's groups when the method's tensors learn at different rates
    (LoRA+); ``after_step(model, cfg, step)``, work after every optimizer step, before the
    gradients are cleared (AdaLoRA's rank allocation); ``before_checkpointing(model, cfg)``, when
    its tensors must survive each layer running again in backward (prefix tuning's key/value
    cache; tunelab.checkpointing); and ``peft_adapter(model, cfg)`` when its options list the
    ``peft`` export format."""

    def apply(self, model: nn.Module, cfg: opts.MethodOptions, family: Family | None, tokenizer=None) -> None:
        """Inject the method's modules into ``model`` and leave exactly its tensors trainable
        (and the task head's: a new classifier starts random, so every method trains it).
        ``family`` is the pretrained model's (None for a method that builds its own model,
        whose module then also provides ``prepare(cfg, raw, run_dir)``)."""


METHODS: Registry[opts.MethodOptions] = Registry(kind="method", package="tunelab.methods", default="lora")
for _options in (opts.NoMethod, opts.FullMethod, opts.HeadMethod, opts.BitFitMethod, opts.AdapterMethod,
                 opts.LoRAMethod, opts.IA3Method, opts.PromptMethod, opts.PrefixMethod, opts.LSTMMethod):
    METHODS.register(_options)
METHODS.register(opts.PeftMethod, module="tunelab.methods.peft_bridge")


def apply_method(model: nn.Module, cfg: opts.MethodOptions, family: Family | str | None = None,
                 tokenizer=None) -> None:
    """Apply the configured method. ``family``: the model's architecture family, a family name,
    or None to read it off the model (a model the method builds itself has none)."""
    from tunelab.models import families

    if isinstance(family, str):
        family = families.FAMILIES.get(family)  # None for the LSTM's "lstm"
    elif family is None and cfg.pretrained:
        family = families.family_of(families.transformer_body(model))
    METHODS.load(cfg.name).apply(model, cfg, family, tokenizer)


def parameter_groups(model: nn.Module, cfg: opts.MethodOptions, lr: float, weight_decay: float) -> list[dict]:
    """The optimizer's parameter groups: the method's own, else every trainable tensor in one."""
    module = METHODS.load(cfg.name)
    if hasattr(module, "parameter_groups"):
        return [group for group in module.parameter_groups(model, cfg, lr, weight_decay) if group["params"]]
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr, "weight_decay": weight_decay}]


def after_step(model: nn.Module, cfg: opts.MethodOptions, step: int) -> None:
    """The method's work after optimizer step ``step``, if it has any."""
    hook = getattr(METHODS.load(cfg.name), "after_step", None)
    if hook is not None:
        hook(model, cfg, step)


def before_checkpointing(model: nn.Module, cfg: opts.MethodOptions) -> None:
    """The method's preparation for activation checkpointing of the body's layers, if it needs one."""
    hook = getattr(METHODS.load(cfg.name), "before_checkpointing", None)
    if hook is not None:
        hook(model, cfg)
