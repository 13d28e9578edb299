"""``method: {name: peft, type: ..., <options>}``: any tuner of the installed PEFT, in tunelab's loop.

The tuner is injected the way ``peft.inject_adapter_in_model`` does it, by PEFT's own tuner
class (``PEFT_TYPE_TO_TUNER_MAPPING[type](model, config)``), which replaces the targeted
layers of tunelab's model in place; there is no ``PeftModel`` wrapper, so the model, the
task head, the loss, the loop and the checkpoint are tunelab's, as for every other method. The
tuner object is kept (tuners with state shared across layers, VeRA's projections, keep it there;
AdaLoRA allocates ranks through it after every step, :func:`after_step`).

A :class:`PeftLayers` module added to the model stands for PEFT's layers towards tunelab's
generic machinery: switching off (PEFT's ``enable_adapters``), merging (PEFT's ``merge``) and
taking the method out for export (each layer's ``get_base_layer``).

What PEFT adds inside ``PeftModel.forward`` is not applied: AdaLoRA's orthogonal
regularisation of its P and Q (``orth_reg_weight``) is PEFT's loss term, not its layers'.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from tunelab.errors import UserError
from tunelab.methods.common import AdapterModule, freeze, replace_module, task_head, unfreeze
from tunelab.methods.options import PeftMethod
from tunelab.methods.peft_types import injectable_types
from tunelab.models.families import Family


def peft_config(cfg: PeftMethod):
    """The tuner's PEFT config; PEFT's own complaint about a value becomes one line."""
    config_class = injectable_types()[cfg.type][0]
    try:
        return config_class(**cfg.options)
    except (TypeError, ValueError) as exc:
        raise UserError(f"method: PEFT's {config_class.__name__} refuses these options: {exc}") from None


class PeftLayers(AdapterModule):
    """PEFT's injected layers, seen by tunelab as one of its method modules. It holds them and
    the tuner as plain attributes, not submodules: they already live in the model."""

    def __init__(self, tuner, names: list[str]):
        super().__init__()
        object.__setattr__(self, "tuner", tuner)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "_enabled", True)

    def layers(self) -> list[nn.Module]:
        return [self.tuner.model.get_submodule(name) for name in self.names]

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        object.__setattr__(self, "_enabled", value)
        for layer in self.layers():
            layer.enable_adapters(value)

    @property
    def merged(self) -> bool:
        return any(layer.merged for layer in self.layers())

    @torch.no_grad()
    def merge(self) -> None:
        for layer in self.layers():
            if not layer.merged:
                layer.merge()

    @torch.no_grad()
    def unmerge(self) -> None:
        for layer in self.layers():
            if layer.merged:
                layer.unmerge()

    def memory_site(self) -> None:
        """PEFT's tuners are PEFT's to describe: the planner counts their parameters only."""
        return None

    def take_out(self, model: nn.Module, name: str) -> None:
        """Each PEFT layer gives back the layer it wraps (merged or not), then this goes too."""
        prefix = name.rsplit(".", 1)[0] + "." if "." in name else ""
        for layer_name in self.names:
            replace_module(model, prefix + layer_name, lambda layer: layer.get_base_layer())
        super().take_out(model, name)


def apply(model: nn.Module, cfg: PeftMethod, family: Family | None, tokenizer=None) -> None:
    """Inject the tuner into ``model`` with PEFT's tuner class; train its tensors and the task head."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    heads = task_head(model)
    freeze(model)
    tuner_class = injectable_types()[cfg.type][1]
    try:
        tuner = tuner_class(model, peft_config(cfg), adapter_name="default")
    except ValueError as exc:  # e.g. target modules not found in this model
        raise UserError(f"method peft ({cfg.type}): {str(exc).splitlines()[0]}") from None
    names = [name for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    if not names:
        raise UserError(f"method peft ({cfg.type}) injected no layer into this model")
    model.add_module("peft_layers", PeftLayers(tuner, names))
    for attribute in ("peft_config", "_hf_peft_config_loaded"):  # PEFT's marks on the model: not ours to save
        if attribute in vars(model):
            delattr(model, attribute)
    unfreeze(heads)


def after_step(model: nn.Module, cfg: PeftMethod, step: int) -> None:
    """After every optimizer step, before the gradients are cleared: AdaLoRA's rank allocation
    (its ``update_and_allocate``, which reads the gradients) for tuners that have one."""
    layers = next((m for m in model.modules() if isinstance(m, PeftLayers)), None)
    if layers is not None and hasattr(layers.tuner, "update_and_allocate"):
        layers.tuner.update_and_allocate(step)


def peft_adapter(model: nn.Module, cfg: PeftMethod):
    """The tuner's own config and a copy of the trained tensors into the PEFT model's same-named
    ones (the layers sit at the same names: both are PEFT's)."""
    layers = next(m for m in model.modules() if isinstance(m, PeftLayers))
    config = dataclasses.replace(layers.tuner.peft_config["default"])
    heads = {id(p) for m in task_head(model) for p in m.parameters()}
    state = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad and id(p) not in heads}

    def fill(peft_model: nn.Module) -> None:
        base = peft_model.get_base_model()
        for name, tensor in state.items():
            base.get_parameter(name).copy_(tensor)

    return config, fill, {"peft_type": cfg.type, "options": cfg.options}
