"""LoRA: Low-Rank Adaptation (Hu et al. 2021, arXiv:2106.09685), and its variants.

``h = W0 x + s B A x`` with ``A`` (r x in) kaiming-uniform and ``B`` (out x r) zero, so the
wrapped layer equals the base layer at init (section 4.1), and ``s = alpha / r``. ``W0`` is
frozen. The variants are options of the same layer:

- ``scaling: rslora``: ``s = alpha / sqrt(r)`` (Kalajdzievski 2023, arXiv:2312.03732), which
  keeps the update's scale stable as r grows;
- ``init: gaussian``: A normal with standard deviation 1 / r, B zero (as PEFT's "gaussian");
- ``init: pissa`` (Meng et al. 2024, arXiv:2404.02948): A and B start as the principal
  singular directions of W0 (``B A = U_r S_r V_r^T / s``) and the base keeps the residual
  ``W0 - s B A``, so the model is unchanged at init but training moves the principal part;
- ``init: olora`` (Büyükakyüz 2024, arXiv:2406.01775): the same with W0's QR decomposition
  (``B = Q_r``, ``A = R_r``);
- ``use_dora`` (Liu et al. 2024, arXiv:2402.09353): :class:`DoRALayer`, a learned magnitude per
  output times the direction of ``W0 + s B A``;
- ``lr_ratio`` (LoRA+, Hayou et al. 2024, arXiv:2402.12354): B learns at ``lr_ratio`` times
  A's learning rate (:func:`parameter_groups`).

PiSSA's and OLoRA's residual is computed again from the pretrained weights whenever the run is
rebuilt, and their initial A and B are kept (not saved: they follow from W0), so switching the
method off still gives the pretrained model and a PEFT export can describe the whole change.

A fused projection (GPT-2's ``c_attn`` computes q, k and v in one matrix) can be split into
equal output slices with a separate (A, B) pair per enabled slice, so q, k and v are adapted
separately and any subset can be chosen, as in loralib's ``MergedLinear``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from tunelab.errors import UserError
from tunelab.methods.common import (
    AdapterModule,
    freeze,
    module_ids,
    replace_module,
    task_head,
    trainable_parameters,
    unfreeze,
)
from tunelab.methods.memory_sites import LowRankSite
from tunelab.methods.options import LoRAMethod
from tunelab.models.families import FUSED_SLICES, Family


class LoRALayer(AdapterModule):
    """Wraps an ``nn.Linear`` or a Hugging Face ``Conv1D`` (weight stored as in x out)."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 enabled_slices: Sequence[bool] = (True,), init: str = "kaiming", rslora: bool = False):
        super().__init__()
        if not isinstance(base, (nn.Linear, Conv1D)):
            raise TypeError(f"LoRA wraps nn.Linear or Conv1D, not {type(base).__name__}")
        self.base = base
        self.is_conv1d = isinstance(base, Conv1D)
        in_features, out_features = (base.weight.shape if self.is_conv1d else base.weight.shape[::-1])
        if out_features % len(enabled_slices):
            raise UserError(f"cannot split {out_features} outputs into {len(enabled_slices)} equal slices")
        self.r, self.alpha, self.init = r, alpha, init
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        self.slice_size = out_features // len(enabled_slices)
        self.enabled_slices = tuple(bool(e) for e in enabled_slices)
        self.register_buffer("slice_index", torch.tensor([i for i, e in enumerate(self.enabled_slices) if e]),
                             persistent=False)
        k = len(self.slice_index)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(k, r, in_features, dtype=base.weight.dtype, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(k, self.slice_size, r, dtype=base.weight.dtype,
                                               device=base.weight.device))
        self.initialise(init)
        self.merged = False

    def base_weight(self) -> torch.Tensor:
        """The wrapped weight as (out x in), whatever the layer stores."""
        return self.base.weight.T if self.is_conv1d else self.base.weight

    @torch.no_grad()
    def initialise(self, init: str) -> None:
        """A and B as ``init`` says; PiSSA and OLoRA also leave the residual in the base weight."""
        if init in ("kaiming", "gaussian"):
            for a in self.lora_A:  # one (r x in) matrix per slice
                if init == "kaiming":  # like PEFT's default and nn.Linear's
                    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                else:
                    nn.init.normal_(a, std=1 / self.r)
            return
        weight = self.base_weight().float()
        if weight.is_meta:  # a weightless model (`tunelab params`): the shapes are all there is
            self.register_buffer("initial_A", self.lora_A.detach().clone(), persistent=False)
            self.register_buffer("initial_B", self.lora_B.detach().clone(), persistent=False)
            return
        if self.r > min(self.slice_size, weight.shape[1]):
            raise UserError(f"init {init} takes the top r directions of each weight; r={self.r} is more than a "
                            f"{self.slice_size} x {weight.shape[1]} weight has")
        for j, s in enumerate(self.slice_index.tolist()):
            block = weight[s * self.slice_size:(s + 1) * self.slice_size]  # (slice, in)
            if init == "pissa":
                u, singular, vh = torch.linalg.svd(block, full_matrices=False)
                root = torch.sqrt(singular[:self.r] / self.scaling)
                a, b = root[:, None] * vh[:self.r], u[:, :self.r] * root[None, :]
            elif init == "olora":
                q, upper = torch.linalg.qr(block)
                a, b = upper[:self.r], q[:, :self.r]
            else:
                raise ValueError(f"unknown LoRA init {init!r}")
            self.lora_A[j].copy_(a)
            self.lora_B[j].copy_(b)
        self.register_buffer("initial_A", self.lora_A.detach().clone(), persistent=False)
        self.register_buffer("initial_B", self.lora_B.detach().clone(), persistent=False)
        update = self.delta_weight(self.initial_A, self.initial_B)
        self.base.weight -= update.T if self.is_conv1d else update

    def delta(self, x: torch.Tensor, lora_A: torch.Tensor | None = None,
              lora_B: torch.Tensor | None = None) -> torch.Tensor:
        """s B A x for every output, zeros on disabled slices (dropout, if any, is the caller's)."""
        lora_A = self.lora_A if lora_A is None else lora_A
        lora_B = self.lora_B if lora_B is None else lora_B
        if len(self.enabled_slices) == 1:  # a plain (unfused) layer: two matmuls, the common case
            low = nn.functional.linear(x, lora_A[0])  # (..., r)
            return nn.functional.linear(low, lora_B[0]) * self.scaling  # (..., out)
        low = torch.einsum("...i,kri->...kr", x, lora_A)  # (..., k, r)
        update = torch.einsum("...kr,kor->...ko", low, lora_B) * self.scaling  # (..., k, slice)
        n_slices = len(self.enabled_slices)
        if len(self.slice_index) == n_slices:
            return update.flatten(-2)  # (..., out)
        full = update.new_zeros(*update.shape[:-2], n_slices, self.slice_size)
        full[..., self.slice_index, :] = update
        return full.flatten(-2)

    def switched_off(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The pretrained layer's output: the base's, plus what PiSSA or OLoRA took out of it."""
        if hasattr(self, "initial_A"):
            return out + self.delta(x, self.initial_A, self.initial_B)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:  # W0 already holds the update
            return out
        if not self.enabled:
            return self.switched_off(x, out)
        return out + self.delta(self.lora_dropout(x))

    def delta_weight(self, lora_A: torch.Tensor | None = None, lora_B: torch.Tensor | None = None) -> torch.Tensor:
        """The update as an (out x in) matrix: s B_s A_s stacked at each enabled slice s."""
        lora_A = self.lora_A if lora_A is None else lora_A
        lora_B = self.lora_B if lora_B is None else lora_B
        blocks = torch.einsum("kor,kri->koi", lora_B, lora_A) * self.scaling  # (k, slice, in)
        full = blocks.new_zeros(len(self.enabled_slices), self.slice_size, blocks.shape[-1])
        full[self.slice_index] = blocks
        return full.flatten(0, 1)

    def add_to_base(self, update: torch.Tensor) -> None:
        """W0 <- W0 + update, with ``update`` (out x in)."""
        self.base.weight += update.T if self.is_conv1d else update

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- W0 + delta, for inference without extra matmuls. A second call does nothing."""
        if not self.merged:
            self.add_to_base(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 <- W0 - delta, back to training form. Does nothing when not merged."""
        if self.merged:
            self.add_to_base(-self.delta_weight())
            self.merged = False

    def extra_repr(self) -> str:
        return (f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}, init={self.init}, "
                f"slices={self.enabled_slices}, merged={self.merged}")

    def memory_site(self) -> LowRankSite:
        """A low-rank update beside the wrapped projection, with :class:`DoRALayer`'s magnitude if it has one."""
        dropout = self.lora_dropout.p if isinstance(self.lora_dropout, nn.Dropout) else 0.0
        return LowRankSite(r=self.r, in_features=self.lora_A.shape[-1],
                           out_features=self.slice_size * len(self.enabled_slices), slices=self.enabled_slices,
                           dropout=dropout, magnitude=hasattr(self, "magnitude"))


class DoRALayer(LoRALayer):
    """DoRA: ``h = m * (W0 + s B A) x / ||W0 + s B A||`` with the norm taken per output over the
    inputs, and ``m`` (one per output) a trained magnitude that starts as that norm, so the layer
    equals the base at init. As the paper's section 4.3 advises, the norm is a constant to the
    gradient (detached): it follows the update but passes no gradient back."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            self.magnitude = nn.Parameter(self.weight_norm(self.delta_weight()))

    def weight_norm(self, update: torch.Tensor) -> torch.Tensor:
        """||W0 + update|| per output row, (out,)."""
        return torch.linalg.norm(self.base_weight() + update, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or not self.enabled:
            return super().forward(x)
        out = self.base(x)
        dropped = self.lora_dropout(x)
        if dropped is x:  # W0 x, as the base computed it
            plain = out if self.base.bias is None else out - self.base.bias
        else:  # the direction's W0 sees the same dropped-out input as B A
            plain = nn.functional.linear(dropped, self.base_weight())
        factor = self.magnitude / self.weight_norm(self.delta_weight().detach()).detach()
        return out + (factor - 1) * plain + factor * self.delta(dropped)

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- m (W0 + delta) / ||W0 + delta||; the norm is kept to undo it exactly."""
        if self.merged:
            return
        update = self.delta_weight()
        self.merged_norm = self.weight_norm(update)
        factor = (self.magnitude / self.merged_norm)[:, None]
        self.add_to_base(factor * (self.base_weight() + update) - self.base_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        factor = (self.merged_norm / self.magnitude)[:, None]
        self.add_to_base(factor * self.base_weight() - self.delta_weight() - self.base_weight())
        self.merged = False


def parse_target(target: str) -> tuple[str, tuple[bool, ...]]:
    """``"c_attn:q,v"`` -> (``"c_attn"``, (True, False, True)); ``"query"`` -> (``"query"``, (True,)).

    Slices may also be joined with ``+`` (``c_attn:q+v``), which survives a YAML flow list
    such as ``--method.target_modules [c_attn:q+v]`` where a comma would split the item.
    """
    name, _, slices = target.partition(":")
    if not slices:
        return name, (True,)
    chosen = [s.strip() for s in slices.replace("+", ",").split(",") if s.strip()]
    unknown = [s for s in chosen if s not in FUSED_SLICES]
    if unknown or not chosen:
        raise UserError(f"method.target_modules {target!r}: slices must be among {', '.join(FUSED_SLICES)}")
    return name, tuple(s in chosen for s in FUSED_SLICES)


def default_targets(family: Family) -> list[str]:
    """The attention's query, key and value projections (all three slices of a fused one)."""
    if family.fused_qkv is not None:
        return [f"{family.fused_qkv}:{','.join(FUSED_SLICES)}"]
    return list(family.query_key_value)


def linear_layer_names(model: nn.Module) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))})


def targeted_layers(model: nn.Module, cfg: LoRAMethod, family: Family | None) -> list[tuple[str, tuple[bool, ...]]]:
    """(module name, enabled slices) of every linear layer LoRA wraps. ``all-linear``: every one
    but the task head and a causal LM's output layer, as PEFT's ``all-linear``."""
    skip = module_ids(task_head(model))
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linear = [(name, m) for name, m in model.named_modules()
              if isinstance(m, (nn.Linear, Conv1D)) and id(m) not in skip and m is not output]
    if cfg.target_modules == "all-linear":
        return [(name, (True,)) for name, _ in linear]
    targets = [parse_target(t) for t in (cfg.target_modules or default_targets(family))]
    matches = []
    for name, _ in linear:
        for suffix, slices in targets:
            if name == suffix or name.endswith("." + suffix):
                matches.append((name, slices))
                break
    if not matches:
        wanted = ", ".join(t for t, _ in targets)
        raise UserError(f"LoRA target_modules ({wanted}) match no linear layer; "
                        f"linear layers in this model: {', '.join(linear_layer_names(model))}")
    return matches


def apply(model: nn.Module, cfg: LoRAMethod, family: Family | None, tokenizer=None) -> None:
    """Wrap the targeted layers, then train only LoRA's A and B, DoRA's magnitudes (and the task head)."""
    matches = targeted_layers(model, cfg, family)
    heads = task_head(model)
    freeze(model)
    layer_class = DoRALayer if cfg.use_dora else LoRALayer
    for name, slices in matches:
        layer = replace_module(model, name, lambda base, s=slices: layer_class(
            base, cfg.r, cfg.alpha, cfg.dropout, s, init=cfg.init, rslora=cfg.scaling == "rslora"))
        for parameter in layer.parameters(recurse=False):
            parameter.requires_grad_(True)
    unfreeze(heads)


def parameter_groups(model: nn.Module, cfg: LoRAMethod, lr: float, weight_decay: float) -> list[dict]:
    """The optimizer's parameter groups. LoRA+ (``lr_ratio``) groups as PEFT's
    ``create_loraplus_optimizer`` does: B and every 1-D tensor (biases, DoRA's magnitudes) at
    ``lr_ratio`` times the learning rate, biases without weight decay; the rest (A, the head's
    weight) at the learning rate."""
    params = trainable_parameters(model)
    if cfg.lr_ratio is None:
        return [{"params": [p for _, p in params], "lr": lr, "weight_decay": weight_decay}]
    groups = {"A": [], "B": [], "B_no_decay": []}
    for name, p in params:
        if name.rsplit(".", 1)[-1] == "lora_B" or p.ndim == 1:
            groups["B_no_decay" if "bias" in name else "B"].append(p)
        else:
            groups["A"].append(p)
    fast = lr * cfg.lr_ratio
    return [{"params": groups["A"], "lr": lr, "weight_decay": weight_decay},
            {"params": groups["B"], "lr": fast, "weight_decay": weight_decay},
            {"params": groups["B_no_decay"], "lr": fast, "weight_decay": 0.0}]


# --------------------------------------------------------------------------------------------
# PEFT's format (tunelab export --format peft)


def stacked_lora(layer: LoRALayer, lora_A: torch.Tensor | None = None,
                 lora_B: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One (A, B) pair for the whole layer, (k r, in) and (out, k r), with B A = the layer's
    update / scaling (of the layer's own A and B, or of those given, (k, r, in) and (k, slice, r)).

    Per-slice LoRA on a fused projection (GPT-2's ``c_attn``:q,v), which PEFT cannot slice, becomes
    one LoRA on the whole projection of rank k r: A stacks the k slices' A's, B is block-structured
    (slice s's rows hold B_s in s's own r columns, zeros elsewhere), so B A is exactly the per-slice
    update and the left-out slices get none.
    """
    lora_A = (layer.lora_A if lora_A is None else lora_A).detach()
    lora_B = (layer.lora_B if lora_B is None else lora_B).detach()
    k, r, _ = lora_A.shape
    a = lora_A.reshape(k * r, -1)
    b = lora_B.new_zeros(len(layer.enabled_slices) * layer.slice_size, k * r)
    for j, s in enumerate(layer.slice_index.tolist()):
        b[s * layer.slice_size:(s + 1) * layer.slice_size, j * r:(j + 1) * r] = lora_B[j]
    return a, b


def as_plain_lora(layer: LoRALayer) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of a LoRA on the pretrained weight that computes the layer's whole change. PiSSA
    and OLoRA moved s B0 A0 out of W0, so the change is s (B A - B0 A0): rank 2 r, A = [A; A0],
    B = [B, -B0] (as PEFT's own conversion of a PiSSA adapter to LoRA)."""
    if not hasattr(layer, "initial_A"):
        return stacked_lora(layer)
    return stacked_lora(layer, torch.cat([layer.lora_A, layer.initial_A], dim=1),
                        torch.cat([layer.lora_B, -layer.initial_B], dim=2))


def peft_adapter(model: nn.Module, cfg: LoRAMethod):
    """PEFT's LoraConfig for the run, a function that copies our tensors into PEFT's modules,
    and what export.json records. Ranks differ from the run's where a fused projection's slices
    are stacked or PiSSA/OLoRA's initial part is folded in, so lora_alpha is set to keep each
    layer's scaling s exactly (for rsLoRA too): lora_alpha = s r'."""
    from peft import LoraConfig

    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoRALayer)}
    pairs = {name: as_plain_lora(m) for name, m in layers.items()}
    scaling = next(iter(layers.values())).scaling
    ranks = {name: a.shape[0] for name, (a, _) in pairs.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    other = {re.escape(name): rank for name, rank in ranks.items() if rank != r}  # exact names, as PEFT's patterns
    config = LoraConfig(r=r, lora_alpha=scaling * r, target_modules=sorted(layers), lora_dropout=cfg.dropout,
                        fan_in_fan_out=any(m.is_conv1d for m in layers.values()), bias="none",
                        use_dora=cfg.use_dora, rank_pattern=other,
                        alpha_pattern={key: scaling * rank for key, rank in other.items()})

    def fill(peft_model: nn.Module) -> None:
        for name, (a, b) in pairs.items():
            target = peft_model.get_base_model().get_submodule(name)
            target.lora_A["default"].weight.copy_(a)
            target.lora_B["default"].weight.copy_(b)
            if cfg.use_dora:
                target.lora_magnitude_vector["default"].weight.copy_(layers[name].magnitude.detach())

    sliced = sorted(name for name, m in layers.items() if len(m.enabled_slices) > 1)
    detail = {"r": r, "lora_alpha": scaling * r, "scaling": scaling, "rank_pattern": other,
              "fused_projections_as_stacked_lora": sliced, "use_dora": cfg.use_dora}
    notes = []
    if sliced:
        notes.append("LoRA on slices of a fused q/k/v projection is stored as one LoRA on the whole projection: A "
                     "stacks the slices' A's, B is block-structured (zeros outside each slice's own rows and "
                     "columns), with lora_alpha scaled like r so that alpha / r is the run's. Further training in "
                     "PEFT would fill the zero blocks.")
    if cfg.init in ("pissa", "olora"):
        notes.append(f"The run's {cfg.init} initialisation took B0 A0 out of the pretrained weights; this adapter "
                     f"applies to the pretrained weights themselves, so it holds [A; A0] and [B, -B0] (rank 2r), "
                     f"which computes the same model.")
    if notes:
        detail["notes"] = notes
    return config, fill, detail
