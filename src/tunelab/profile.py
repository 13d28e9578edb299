"""The memory of one training step, broken down: weights, gradients, optimizer state, activations.

Counted in bytes, so it works on the CPU as well as on a GPU:

- weights: every parameter (a tied tensor counted once);
- gradients: one per trainable parameter, so the trainable parameters' bytes;
- optimizer state: AdamW keeps two moments (``exp_avg``, ``exp_avg_sq``) per trainable parameter;
- activations: the tensors autograd saves for backward during the forward pass, seen through
  ``torch.autograd.graph.saved_tensors_hooks`` and counted once per storage; parameters saved
  for backward are weights and are not counted again. A checkpointed layer
  (``train.gradient_checkpointing``) saves nothing but keeps its inputs: those are counted
  instead; the one layer's activations its replay in backward rebuilds at a time are not.

The forward peak is weights + optimizer state (kept from the previous step) + activations; the
backward peak adds the gradients. Both are upper bounds of what the tensors themselves need:
backward frees activations while gradients appear, and temporary buffers are not counted. On
CUDA the caching allocator's own peaks after forward and after backward are recorded too.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

ADAMW_MOMENTS = 2
"""AdamW keeps a first and a second moment for every trainable parameter."""


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):  # a sharded parameter (train.fsdp): this process's slice is its storage
        tensor = tensor.to_local()
    storage = tensor.untyped_storage()
    return str(tensor.device), storage.data_ptr()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters, tied ones once (``parameters()`` lists a shared tensor once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def trainable_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """The run's peak memory: the CUDA allocator's on a GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device), "peak_memory_kind": "cuda_max_allocated"}
    import resource

    # ru_maxrss is in kilobytes on Linux: the process's peak resident set size.
    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_memory_kind": "cpu_peak_rss"}


def measure_step(model: nn.Module, batch: dict[str, torch.Tensor],
                 loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, Any]]) -> dict[str, Any]:
    """Run one forward and backward of a task's loss (``loss_fn(model, batch)``, which returns
    the loss and the batch's counts) and return the breakdown in bytes.

    The step leaves no trace: the random number generators are restored (dropout draws the
    same masks in the real step that follows) and the gradients are put back as they were, so
    calling this before a training step does not change the run.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    old_grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    result: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[device] if cuda else []):
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        with kept_for_backward(model) as saved:
            loss, _ = loss_fn(model, batch)
        if cuda:
            result["cuda_forward_peak_bytes"] = torch.cuda.max_memory_allocated(device)
        if loss.requires_grad:  # nothing to train (zero-shot) means no backward
            loss.backward()
        if cuda:
            result["cuda_backward_peak_bytes"] = torch.cuda.max_memory_allocated(device)
        del loss
    for p, grad in zip(params, old_grads):
        p.grad = grad

    weights = weight_bytes(model)
    gradients = trainable_bytes(model)
    optimizer = ADAMW_MOMENTS * gradients
    activations = sum(saved.values())
    input_ids = batch.get("input_ids")
    return {
        "batch_shape": list(input_ids.shape) if input_ids is not None else None,
        "weights_bytes": weights,
        "gradients_bytes": gradients,
        "optimizer_bytes": optimizer,
        "activations_bytes": activations,
        "forward_peak_bytes": weights + optimizer + activations,
        "backward_peak_bytes": weights + optimizer + activations + gradients,
        "autocast": autocast_dtype(device),
        "checkpointed_layers": len(checkpointed_layers(model)),
        "device": str(device),
        **result,
    }


@contextlib.contextmanager
def kept_for_backward(model: nn.Module) -> Iterator[dict[tuple[str, int], int]]:
    """Bytes by storage of what a forward pass inside keeps for backward: the tensors autograd
    saves (parameters aside: they are weights) and, for a checkpointed layer, which saves
    nothing, its inputs (what its replay in backward starts from)."""
    param_keys = {_storage_key(p) for p in model.parameters()}
    saved: dict[tuple[str, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in param_keys and tensor.device.type != "meta":
            saved[key] = max(saved.get(key, 0), tensor.untyped_storage().nbytes())
        return tensor

    def keep_inputs(layer: nn.Module, args: tuple, kwargs: dict) -> None:
        if layer.training and torch.is_grad_enabled():  # when the layer checkpoints (transformers' test)
            for tensor in _tensors((args, kwargs)):
                pack(tensor)

    hooks = [layer.register_forward_pre_hook(keep_inputs, with_kwargs=True) for layer in checkpointed_layers(model)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield saved
    finally:
        for hook in hooks:
            hook.remove()


def checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    """The layers activation checkpointing runs again in backward (tunelab.checkpointing)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]


def autocast_dtype(device: torch.device) -> str | None:
    """The dtype autocast runs the forward in on this device now (``train.precision``); None: off."""
    try:
        on, dtype = torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type)
    except TypeError:  # torch before 2.4: one function per device kind
        cuda = device.type == "cuda"
        on = torch.is_autocast_enabled() if cuda else torch.is_autocast_cpu_enabled()
        dtype = torch.get_autocast_gpu_dtype() if cuda else torch.get_autocast_cpu_dtype()
    return str(dtype).removeprefix("torch.") if on else None


def _tensors(value) -> list[torch.Tensor]:
    """The tensors in nested tuples, lists and dicts (a layer's arguments)."""
    if isinstance(value, torch.Tensor):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else ()
    return [tensor for item in items for tensor in _tensors(item)]


# --------------------------------------------------------------------------------------------
# `tunelab profile`: the breakdown for a model + method and one batch shape, without training


def profile_model(cfg, batch_size: int, seq_len: int, num_labels: int = 2, cpu: bool = False) -> dict[str, Any]:
    """Build the model of a run config from its model config alone (random weights: memory does
    not depend on the values), apply the method as training does, and measure one step of the
    task's loss on random tokens: a classifier for `classification`, the causal LM with every
    token predicted for the causal tasks (instruct, lm, summarization). The config's
    ``train.gradient_checkpointing`` and ``train.precision`` apply as in training."""
    from tunelab import checkpointing
    from tunelab.build import model_from_config, refuse_self_built
    from tunelab.launch import check_precision
    from tunelab.models.loading import check_context_length, load_config
    from tunelab.tasks import TASKS

    refuse_self_built(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")
    check_precision(cfg.train.precision, device.type == "cpu")
    hf_config = load_config(cfg.model)
    check_context_length(cfg, hf_config, seq_len, key="--seq-len")
    model, _ = model_from_config(cfg, hf_config, cfg.task.causal, num_labels)
    if cfg.train.gradient_checkpointing:
        checkpointing.enable_on(model, cfg.method)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, hf_config.vocab_size, (batch_size, seq_len), generator=generator)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if cfg.task.causal:
        batch["labels"] = input_ids.clone()  # every token predicted, as in language modeling
        loss_fn = TASKS.load("lm").loss
    else:
        batch["labels"] = torch.randint(0, num_labels, (batch_size,), generator=generator)
        loss_fn = TASKS.load("classification").loss
    model.to(device).train()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):  # as Accelerate's mixed precision
        result = measure_step(model, {k: v.to(device) for k, v in batch.items()}, loss_fn)
    counts = {"trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "total_params": sum(p.numel() for p in model.parameters())}
    return {"model": cfg.model.name, "method": cfg.method.name, "task": cfg.task.name, **counts, **result}


def format_profile(result: dict[str, Any]) -> str:
    """A small table in megabytes (10^6 bytes)."""
    mb = lambda n: f"{n / 1e6:10.2f} MB"  # noqa: E731
    batch, tokens = result["batch_shape"]
    kept = "saved by autograd for backward"
    if result.get("checkpointed_layers"):
        kept += f"; {result['checkpointed_layers']} checkpointed layers keep their inputs, backward rebuilds one"
    if result.get("autocast"):
        kept += f"; forward under {result['autocast']} autocast"
    lines = [
        f"model            {result['model']}, method {result['method']}, task {result['task']}, "
        f"batch {batch} x {tokens} tokens, {result['device']}",
        f"weights          {mb(result['weights_bytes'])}  ({result['total_params']:,} parameters)",
        f"gradients        {mb(result['gradients_bytes'])}  ({result['trainable_params']:,} trainable)",
        f"optimizer state  {mb(result['optimizer_bytes'])}  (AdamW: {ADAMW_MOMENTS} moments per trainable parameter)",
        f"activations      {mb(result['activations_bytes'])}  ({kept})",
        f"forward peak     {mb(result['forward_peak_bytes'])}  (weights + optimizer state + activations)",
        f"backward peak    {mb(result['backward_peak_bytes'])}  (forward peak + gradients)",
    ]
    if "cuda_forward_peak_bytes" in result:
        lines.append(f"CUDA allocator   {mb(result['cuda_forward_peak_bytes'])} after forward, "
                     f"{mb(result['cuda_backward_peak_bytes'])} after backward (max allocated)")
    return "\n".join(lines)
