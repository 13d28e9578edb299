"""One step's memory by component, sharded over FSDP devices, and the largest batch that fits."""

from __future__ import annotations

import re
from dataclasses import asdict, replace
from typing import Any

from tunelab.errors import UserError
from tunelab.planner.activations import FLOAT32, Settings, activation_parts, loss_workspace
from tunelab.planner.anatomy import Anatomy
from tunelab.profile import ADAMW_MOMENTS

HALF = 2
BATCH_LIMIT = 1 << 20
"""The batch search stops here (a model this small needs no planner)."""


def storage_bytes(s: Settings) -> int:
    """Bytes per frozen parameter: float32, or the half precision the weights are kept in."""
    return FLOAT32 if s.precision == "fp32" else HALF


def estimate(anatomy: Anatomy, s: Settings) -> dict[str, Any]:
    """The memory of one training step on one device, in bytes.

    ``total_bytes`` is what ``tunelab profile`` measures as its backward peak (weights, optimizer
    state, activations, gradients); ``peak_bytes`` adds the transient ``workspace_bytes`` (the
    loss's gradient buffers or one block's activation gradients, and FSDP's gathered blocks).
    """
    shard = lambda n: -(-n // s.devices)  # noqa: E731  (FSDP: each device holds 1/N, rounded up)
    weights = {"frozen": anatomy.frozen * storage_bytes(s), "trainable": anatomy.trainable * FLOAT32,
               "half copies": anatomy.trainable_matrices * HALF if s.mixed else 0}
    gradients = anatomy.trainable * FLOAT32
    optimizer = ADAMW_MOMENTS * anatomy.trainable * FLOAT32
    parts, largest = activation_parts(anatomy, s)
    activations = {name: s.batch_size * value for name, value in parts.items()}
    # FSDP unshards one block to run it while it prefetches the next one.
    gather = 2 * max(b.params for b in anatomy.blocks) * storage_bytes(s) if s.devices > 1 else 0
    workspace = s.batch_size * max(loss_workspace(anatomy, s.seq_len), largest) + gather
    result = {
        "weights_bytes": shard(sum(weights.values())),
        "gradients_bytes": shard(gradients),
        "optimizer_bytes": shard(optimizer),
        "activations_bytes": sum(activations.values()),
        "workspace_bytes": workspace,
        "weights_detail": weights,
        "activations_detail": activations,
    }
    result["total_bytes"] = sum(result[k] for k in ("weights_bytes", "gradients_bytes", "optimizer_bytes",
                                                    "activations_bytes"))
    result["peak_bytes"] = result["total_bytes"] + workspace
    return result


def plan(anatomy: Anatomy, settings: Settings, memory: int | None = None) -> dict[str, Any]:
    """The estimate for ``settings`` with the parameter counts, and with ``memory`` (bytes) the
    largest batch that fits."""
    result = {"settings": asdict(settings), **estimate(anatomy, settings)}
    result["trainable_params"], result["frozen_params"] = anatomy.trainable, anatomy.frozen
    if memory is not None:
        result["device_memory_bytes"] = memory
        result["largest_batch"] = largest_batch(anatomy, settings, memory)
    return result


def fits(anatomy: Anatomy, s: Settings, batch_size: int, memory: int) -> bool:
    return estimate(anatomy, replace(s, batch_size=batch_size))["peak_bytes"] <= memory


def largest_batch(anatomy: Anatomy, s: Settings, memory: int) -> int:
    """The largest batch per device whose peak fits ``memory`` bytes (0: not even one example).
    The peak grows with the batch, so a doubling search and a bisection find it."""
    if not fits(anatomy, s, 1, memory):
        return 0
    low = 1
    while low < BATCH_LIMIT and fits(anatomy, s, 2 * low, memory):
        low *= 2
    high = 2 * low  # low fits, high does not (or is past the limit)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(anatomy, s, middle, memory) else (low, middle)
    return min(low, BATCH_LIMIT)


UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_memory(text: str) -> int:
    """``24GB`` (10^9 bytes), ``80GiB`` (2^30 bytes), ``1.5TB``... in bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*", text)
    unit = match and match.group(2).upper()
    if not match or unit not in UNITS or float(match.group(1)) <= 0:
        raise UserError(f"--device-memory {text!r} is not a size: give a positive number and a unit, e.g. 24GB "
                        "or 80GiB (GB = 10^9 bytes, GiB = 2^30; a '24 GB' card holds 24 GiB)")
    return int(float(match.group(1)) * UNITS[unit])
