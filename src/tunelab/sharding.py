"""Fully sharded data parallelism (``train.fsdp``): PyTorch's FSDP2 through Accelerate's plugin,
for models whose weights, gradients and AdamW state do not fit one device.

Each of N processes keeps 1/N of every parameter, of its gradient and of its AdamW moments; a
layer's weights are gathered whole only while the layer computes (Zhao et al. 2023, "PyTorch
FSDP", and ZeRO: Rajbhandari et al. 2020). The unit gathered at once is one transformer layer,
found in the model itself (:func:`layer_classes`), so every architecture tunelab loads shards
the same way; frozen and trainable parameters share a unit (FSDP2 keeps the original
parameters), so LoRA shards as full fine-tuning does.

What a run writes does not change: the trainable tensors whole (gathered one at a time, kept
by the main process only) and AdamW's state whole, keyed as an unsharded run keys it. A
sharded run's checkpoint is evaluated and exported like any other, and its snapshot resumes
sharded (each process takes its slice back) or not.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from tunelab.errors import UserError

RESHARD_AFTER_FORWARD = {"full_shard": True, "shard_grad_op": False}
"""FSDP2's one switch between the strategies: free a layer's gathered weights after its forward
(full_shard, ZeRO-3) or keep them for its backward (shard_grad_op, ZeRO-2's memory)."""


def fsdp_plugin(cfg, processes: int, on_cpu: bool):
    """Accelerate's FSDP2 plugin for ``train.fsdp``; None when it is off, or when one process
    runs (nothing to shard across: said once on stderr)."""
    fsdp = cfg.train.fsdp
    if fsdp.strategy == "none":
        return None
    check(cfg, on_cpu)
    if processes == 1:
        print(f"note: train.fsdp.strategy {fsdp.strategy} with one process: nothing to shard across, the run "
              f"trains unsharded (start it with torchrun or accelerate launch)", file=sys.stderr)
        return None
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision)
    # Every field tunelab decides is given: Accelerate would otherwise read it from the FSDP_*
    # variables `accelerate launch --use_fsdp` sets, and the config decides here.
    return FullyShardedDataParallelPlugin(
        fsdp_version=2, reshard_after_forward=RESHARD_AFTER_FORWARD[fsdp.strategy],
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=fsdp.layer_classes,  # None: the model's layers (before_prepare)
        cpu_offload=fsdp.cpu_offload, activation_checkpointing=False, cpu_ram_efficient_loading=False,
        state_dict_type="FULL_STATE_DICT",
        # Under train.precision the layers compute in bf16/fp16 from float32 shards, and gradients
        # are reduced in float32 (Accelerate's default would reduce them in the low precision).
        mixed_precision_policy=MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
        if compute is not None else None)


def check(cfg, on_cpu: bool) -> None:
    """Refuse, in one line, what sharding cannot do or would not help."""
    strategy, method = cfg.train.fsdp.strategy, cfg.method
    why = "it trains nothing" if not method.trains else "it builds its own small model" if not method.pretrained \
        else None
    if why:
        raise UserError(f"train.fsdp.strategy {strategy} with method {method.name}: {why}; "
                        f"use train.fsdp.strategy none")
    if on_cpu and cfg.train.fsdp.cpu_offload:
        raise UserError("train.fsdp.cpu_offload on the CPU: the shards are in CPU memory already; set it false")


def shard_on_cpu(accelerator, plugin) -> None:
    """Accelerate (1.15) turns its FSDP plugin on only for GPU-like process groups: on CPUs
    (gloo) its state stays MULTI_CPU and the model would be wrapped by DDP, whole in every
    process, without a word. FSDP2 itself runs on CPUs over gloo, so the state is switched to
    FSDP here, before anything is prepared, as Accelerate does for GPUs: in its shared state and
    in the processes' (PartialState), which every later AcceleratorState copies."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if plugin is not None and accelerator.distributed_type == DistributedType.MULTI_CPU:
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def is_sharded(accelerator) -> bool:
    """Whether this run's model is sharded over its processes (FSDP), not copied to each."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def layer_classes(model: nn.Module) -> list[str]:
    """The class names of the model's transformer layers: each layer becomes one unit of FSDP,
    gathered whole for its forward and backward, and sharded again after."""
    from tunelab.models.families import transformer_blocks

    return sorted({type(block).__name__ for block in transformer_blocks(model)})


def before_prepare(accelerator, model: nn.Module) -> None:
    """Before ``accelerator.prepare``: tell a sharded run's plugin which layers are its units
    (``train.fsdp.layer_classes``, else the model's transformer layers; Accelerate's own default,
    ``_no_split_modules``, is missing on a model that wraps its transformer, as a classifier does),
    and transformers' ``generate`` that the model is sharded, so that every process keeps stepping
    until all are done (``synced_gpus``: it recognises only a model transformers sharded itself)."""
    plugin = accelerator.state.fsdp_plugin if is_sharded(accelerator) else None
    if plugin is None:
        return
    model._is_fsdp_managed_module = True
    if plugin.transformer_cls_names_to_wrap is None:
        plugin.transformer_cls_names_to_wrap = layer_classes(model)
    unknown = [name for name in plugin.transformer_cls_names_to_wrap
               if name not in {type(m).__name__ for m in model.modules()}]
    if unknown:
        raise UserError(f"train.fsdp.layer_classes: no module of class {unknown[0]} in the model; its transformer "
                        f"layers are {', '.join(layer_classes(model))}")


def after_prepare(accelerator, model: nn.Module) -> None:
    """Two things FSDP2 decides at a model's first forward, decided now whatever runs first.
    The root is the first sharded module to run forward, and causal tasks call the transformer
    body and the output head on their own (greedy decoding). A unit's gathered weights are
    created at its first gathering and reused after; created under ``torch.inference_mode`` (an
    evaluation before training) they would be inference tensors, which it cannot gather into
    again: each unit is gathered once here, one at a time, outside it."""
    if not sharded_module(model):
        return
    from torch.distributed.fsdp import FSDPModule

    model._get_fsdp_state()._lazy_init()  # what the root's first forward would do
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.unshard()
                module.reshard()
    if accelerator.is_main_process:
        say_units(accelerator, model)


def say_units(accelerator, model: nn.Module) -> None:
    """One line on stderr: the strategy and the units the model was sharded in."""
    from torch.distributed.fsdp import FSDPModule

    plugin = accelerator.state.fsdp_plugin
    names = plugin.transformer_cls_names_to_wrap
    units = len({id(m._get_fsdp_state()) for m in model.modules() if isinstance(m, FSDPModule)})
    layers = sum(any(c.__name__ in names for c in type(m).__mro__) for m in model.modules())  # FSDP2 subclasses
    strategy = next(k for k, v in RESHARD_AFTER_FORWARD.items() if v == plugin.reshard_after_forward)
    print(f"train.fsdp {strategy}: {units} units sharded over {accelerator.num_processes} processes, one per "
          f"{' or '.join(names)} ({layers}) and {units - layers} for the rest", file=sys.stderr)


def sharded_module(model: nn.Module) -> bool:
    """Whether ``model`` is sharded (FSDP2 makes the class of a sharded module an FSDPModule)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def output_head(model: nn.Module):
    """The model's output embeddings (``lm_head``) as a function of hidden states, for a task that
    applies them itself after the model's forward. A sharded model's head is applied as the
    linear map of its weights, which are still gathered then (Accelerate's unit of the final norm
    and the head is not resharded after forward): calling that unit a second time makes FSDP2's
    backward crash (torch 2.13 on the CPU: a segmentation fault). A method's wrapper around the
    head is called as it is."""
    from tunelab.models.families import unwrapped

    head = unwrapped(model).get_output_embeddings()
    if not (sharded_module(unwrapped(model)) and isinstance(head, nn.Linear)):
        return head
    return lambda hidden: torch.nn.functional.linear(hidden, head.weight, head.bias)


def all_processes_done(done: bool, model: nn.Module) -> bool:
    """``done`` in every process, where the model is sharded: its forward passes gather weights
    from every process, so a process may stop calling it only when all stop."""
    if not sharded_module(model):
        return done
    import torch.distributed as dist

    running = torch.tensor(0 if done else 1, device=next(model.parameters()).device)
    dist.all_reduce(running)
    return running.item() == 0


def whole(state: dict[str, torch.Tensor], main: bool) -> dict[str, torch.Tensor]:
    """A state with every sharded tensor (DTensor) gathered whole, one tensor at a time and kept
    on the CPU by the main process only, so no process ever holds more than one whole tensor on
    its device. Every process must call it, with the same keys in the same order. A state with
    nothing sharded comes back as it is."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(t, DTensor) for t in state.values()):
        return state
    gathered = {}
    for name, tensor in state.items():
        full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor  # a collective
        if main:
            gathered[name] = full.detach().to("cpu")
    return gathered


def whole_optimizer_state(optimizer, main: bool) -> dict[str, Any]:
    """The optimizer's ``state_dict()`` with every moment whole (:func:`whole`): keyed by
    parameter index as an unsharded run's is, so either kind of run resumes from it."""
    saved = optimizer.state_dict()
    return {**saved, "state": {index: whole(entries, main) for index, entries in saved["state"].items()}}


def local_optimizer_state(optimizer, saved: dict[str, Any]) -> dict[str, Any]:
    """A whole optimizer state cut to this process's slices of its sharded parameters (the
    inverse of :func:`whole_optimizer_state`); unchanged for an unsharded optimizer."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {**saved, "state": {index: {key: local_part(value, params[int(index)]) for key, value in entries.items()}
                               for index, entries in saved["state"].items()}}


def local_part(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``tensor`` (whole, in every process) as this process's slice of the sharded ``like``;
    anything else unchanged (an unsharded parameter, AdamW's scalar step count). Each process
    cuts its own slice: nothing is sent (``src_data_rank=None``)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor) or isinstance(tensor, DTensor) or tensor.shape != like.shape:
        return tensor
    return distribute_tensor(tensor.to(like.device, like.dtype), like.device_mesh, like.placements,
                             src_data_rank=None)
