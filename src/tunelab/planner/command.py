"""The ``tunelab plan`` command line: its options, the run, and the table it prints. Light to
import: the parser is built for every command, the planner (torch, transformers) only for this one."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tunelab.errors import UserError


def add_plan_arguments(sub, method_help: str) -> argparse.ArgumentParser:
    p = sub.add_parser("plan", help="estimate one training step's memory from a model's config alone, and the "
                                    "largest batch that fits a device")
    p.add_argument("--model", help="catalog name, local directory or hub id (only its config is read)")
    p.add_argument("--method", help=method_help)
    p.add_argument("--config", help="take model, method, batch size and max length from a YAML config")
    p.add_argument("--labels", type=int, default=2, help="classifier outputs, for encoders (default 2)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="fp32 (as tunelab trains), or frozen weights in bf16/fp16 with autocast and float32 "
                        "trained parameters (default fp32)")
    p.add_argument("--batch-size", type=int, help="examples per device (default: the config's train.batch_size)")
    p.add_argument("--seq-len", type=int, help="tokens per example (default: the config's task.max_length or "
                                               "block_size)")
    p.add_argument("--device-memory", metavar="SIZE", help="also find the largest batch that fits, e.g. 24GB or "
                                                           "80GiB")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="keep block inputs only and recompute each block in backward")
    p.add_argument("--devices", type=int, default=1, help="FSDP over N devices (weights, gradients and optimizer "
                                                          "state sharded; default 1)")
    p.add_argument("--target", choices=["cuda", "cpu"], default="cuda",
                   help="where the step runs: dropout masks and attention kernels differ (default cuda)")
    p.add_argument("--attention", choices=["sdpa", "eager"], help="attention implementation (default: the "
                                                                  "model config's, else sdpa)")
    p.add_argument("--json", action="store_true")
    return p


def settings_from(args: argparse.Namespace, cfg):
    """The step's :class:`~tunelab.planner.Settings` from the options and the run config's defaults."""
    from tunelab.planner.activations import Settings

    batch_size = cfg.train.batch_size if args.batch_size is None else args.batch_size
    seq_len = cfg.task.input_length if args.seq_len is None else args.seq_len
    if batch_size < 1 or seq_len < 2:
        raise UserError(f"--batch-size must be at least 1 and --seq-len at least 2 (got {batch_size} and {seq_len})")
    if args.devices < 1:
        raise UserError(f"--devices must be at least 1 (got {args.devices})")
    return Settings(precision=args.precision, batch_size=batch_size, seq_len=seq_len,
                    checkpointing=args.gradient_checkpointing, devices=args.devices, target=args.target,
                    attention=args.attention)


def run_plan(args: argparse.Namespace, cfg) -> int:
    """``tunelab plan`` for a run config made of --model/--method/--config and overrides."""
    from tunelab.planner.anatomy import anatomy_for
    from tunelab.planner.estimate import parse_memory, plan

    memory = parse_memory(args.device_memory) if args.device_memory is not None else None
    settings = settings_from(args, cfg)
    from tunelab.models.loading import check_context_length, load_config

    check_context_length(cfg, load_config(cfg.model), settings.seq_len, key="--seq-len")
    result = plan(anatomy_for(cfg, args.labels), settings, memory)
    result["model"], result["method"] = cfg.model.name, cfg.method.model_dump()
    if memory is not None:
        result["device_memory"] = args.device_memory
    print(json.dumps(result) if args.json else format_plan(result))
    return 0


def size(n: int | float) -> str:
    """Bytes in GB (10^9) from 1 GB up, else MB (10^6)."""
    return f"{n / 1e9:9.2f} GB" if n >= 1e9 else f"{n / 1e6:9.2f} MB"


def format_plan(result: dict[str, Any]) -> str:
    """The components as a table, then the largest batch when a device size was given."""
    s, weights = result["settings"], result["weights_detail"]
    options = ", ".join(f"{k}={v}" for k, v in result["method"].items() if k != "name" and v is not None)
    sharded = f", FSDP over {s['devices']} devices (per device)" if s["devices"] > 1 else ""
    whole = f"1/{s['devices']} of {size(sum(weights.values())).strip()}: " if s["devices"] > 1 else ""
    lines = [
        f"model            {result['model']}, method {result['method']['name']}" + (f" ({options})" if options else ""),
        f"step             batch {s['batch_size']} x {s['seq_len']} tokens, {s['precision']}, {s['target']}, "
        f"gradient checkpointing {'on' if s['checkpointing'] else 'off'}{sharded}",
        f"weights          {size(result['weights_bytes'])}  ({whole}{result['frozen_params']:,} frozen at "
        f"{size(weights['frozen']).strip()}, {result['trainable_params']:,} trained in float32"
        + (f", {size(weights['half copies']).strip()} autocast copies" if weights["half copies"] else "") + ")",
        f"gradients        {size(result['gradients_bytes'])}  (float32, trained parameters)",
        f"optimizer state  {size(result['optimizer_bytes'])}  (AdamW: 2 float32 moments per trained parameter)",
        f"activations      {size(result['activations_bytes'])}  (saved for backward: "
        + ", ".join(f"{k} {size(v).strip()}" for k, v in result["activations_detail"].items() if v) + ")",
        f"total            {size(result['total_bytes'])}  (weights + gradients + optimizer + activations: what "
        "tunelab profile measures)",
        f"workspace        {size(result['workspace_bytes'])}  (transient in backward: loss buffers or one block's "
        "gradients" + (", gathered FSDP blocks" if s["devices"] > 1 else "") + ")",
        f"peak             {size(result['peak_bytes'])}  (total + workspace; not counted: CUDA context, "
        "allocator slack)",
    ]
    if "largest_batch" in result:
        memory = f"{result['device_memory']} ({size(result['device_memory_bytes']).strip()})"
        best = result["largest_batch"]
        lines.append(f"largest batch    {best} x {s['seq_len']} tokens per device fits {memory}" if best else
                     f"largest batch    none: batch 1 x {s['seq_len']} tokens needs more than {memory}")
    return "\n".join(lines)
