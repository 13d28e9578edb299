#!/usr/bin/env python3
"""How far tunelab's LoRA training step is from this machine's limit, and where the rest goes.

In one run, on the benchmark of ``benchmarks/lora_loops.py`` (minilm-l6 + mean-pooled classifier,
LoRA r=8 on query/key/value, rt-snippets: the first 2,000 training examples, 64 tokens, batch 32):

1. the machine's fp32 GEMM rate: ``torch.mm`` of two 2048 x 2048 matrices (GFLOP/s);
2. the FLOPs of one training step per non-pad token, counted by ``torch.utils.flop_counter`` on a
   real batch (forward and backward; padding's FLOPs are not useful work and are not counted);
3. tunelab's loop as ``tunelab train`` runs it: non-pad tokens per second of training steps, as
   a rate of useful FLOP/s and a fraction of the GEMM rate;
4. the ideal step: the same model, loss and optimizer on one fixed batch with no padding (32
   examples of the mean length), eager, repeated: the same fraction;
5. where tunelab's step time goes, per phase (getting the batch, forward, backward, clipping,
   optimizer, the rest: schedule, logs, progress), timed over a full epoch with the loop's own
   objects, against the ideal step's.

    python benchmarks/loop_overhead.py [--train 2000] [--max-length 64] [--batch 32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from tunelab.config import load_config  # noqa: E402

SEED, LR = 0, 2e-3


def gemm_rate(n: int = 2048, repeats: int = 20) -> float:
    """GFLOP/s of an fp32 n x n matrix product (2 n^3 FLOPs), median of ``repeats``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def config(args, run_dir: Path):
    return load_config(None, {
        "model": {"name": "minilm-l6"},
        "data": {"name": "rt-snippets", "max_train_examples": args.train, "max_validation_examples": 100,
                 "max_test_examples": 100},
        "task": {"name": "classification", "max_length": args.max_length},
        "method": {"name": "lora", "r": 8, "alpha": 16, "target_modules": ["query", "key", "value"]},
        "train": {"epochs": 1, "batch_size": args.batch, "lr": LR, "seed": SEED},
        "eval": {"batch_size": 128, "inference_examples": 0}, "output": {"dir": str(run_dir)}})


def flops_per_token(prepared, batch) -> float:
    """Forward + backward FLOPs of one step on ``batch``, per non-pad token (padding removed:
    the batch's examples are counted one at a time, unpadded)."""
    model = prepared.model
    total, tokens = 0, 0
    for i in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][i].sum())
        single = {"input_ids": batch["input_ids"][i:i + 1, :n], "attention_mask": batch["attention_mask"][i:i + 1, :n],
                  "labels": batch["labels"][i:i + 1]}
        with FlopCounterMode(display=False) as counter:
            loss, _ = prepared.task.loss(model, single)
            loss.backward()
        model.zero_grad(set_to_none=True)
        total, tokens = total + counter.get_total_flops(), tokens + n
    return total / tokens


def ideal_step_seconds(prepared, length: int, batch_size: int, steps: int = 20) -> dict[str, float]:
    """The step on one fixed, unpadded batch, eager: median seconds of each phase."""
    model = prepared.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    ids = torch.randint(1000, 20000, (batch_size, length))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (batch_size,))}
    phases = {"forward": [], "backward": [], "clip": [], "optimizer": []}
    for step in range(steps + 2):
        marks = [time.perf_counter()]
        loss, _ = prepared.task.loss(model, batch)
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad()
        marks.append(time.perf_counter())
        if step >= 2:  # two warm-up steps
            for (name, times), start, end in zip(phases.items(), marks, marks[1:]):
                times.append(end - start)
    return {name: statistics.median(times) for name, times in phases.items()}


def loop_phases(cfg, prepared, run_dir: Path) -> tuple[dict[str, float], float, float, int]:
    """tunelab's loop over one epoch, the loop's own functions wrapped with timers: seconds per
    phase, the epoch's seconds (everything the loop does in it: batches, steps, logs, the first
    step's memory measurement), the steps' seconds (what the loop's tokens/s divides by) and the
    non-pad tokens trained."""
    from tunelab import loop as loop_module

    spent = {"forward": 0.0, "backward": 0.0, "after step (schedule, logs, progress)": 0.0, "epoch": 0.0}
    originals = (prepared.task.loss, loop_module.after_step, loop_module.run_epoch, torch.Tensor.backward)

    def timer(key, call):
        def timed(*a, **k):
            started = time.perf_counter()
            out = call(*a, **k)
            spent[key] += time.perf_counter() - started
            return out
        return timed

    prepared.task.loss = timer("forward", originals[0])
    loop_module.after_step = timer("after step (schedule, logs, progress)", originals[1])
    loop_module.run_epoch = timer("epoch", originals[2])
    torch.Tensor.backward = timer("backward", originals[3])
    try:
        summary = loop_module.train(cfg, prepared, run_dir)
    finally:
        prepared.task.loss, loop_module.after_step, loop_module.run_epoch, torch.Tensor.backward = originals
    epoch = spent.pop("epoch")
    spent["batches, clipping, optimizer, memory probe"] = epoch - sum(spent.values())
    tokens = round(summary.tokens_per_second * summary.train_steps_s)
    return spent, epoch, summary.train_steps_s, tokens


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    from tunelab.build import prepare

    torch.manual_seed(SEED)
    gemm = gemm_rate()
    with tempfile.TemporaryDirectory() as scratch:
        cfg = config(args, Path(scratch) / "run")
        prepared = prepare(cfg)
        train = prepared.splits["train"]
        sample = prepared.collate([train[i] for i in range(args.batch)])
        per_token = flops_per_token(prepared, sample)
        mean_length = round(statistics.mean(len(x) for x in train["input_ids"]))
        ideal = ideal_step_seconds(prepare(cfg), mean_length, args.batch)
        Path(scratch, "run").mkdir()
        spent, epoch, steps_seconds, tokens = loop_phases(cfg, prepared, Path(scratch) / "run")
    steps = -(-len(train) // args.batch)
    ideal_rate = per_token * args.batch * mean_length / sum(ideal.values()) / 1e9
    print(f"\nminilm-l6 + LoRA r=8 (query, key, value): {len(train)} examples, <= {args.max_length} tokens (mean "
          f"{mean_length}), batch {args.batch}; torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(f"fp32 GEMM (2048 x 2048): {gemm:.1f} GFLOP/s; one step's forward + backward: "
          f"{per_token / 1e6:.1f} MFLOP per non-pad token\n")
    print("| step | useful GFLOP/s | of the GEMM rate |\n|---|---:|---:|")
    for label, rate in [(f"tunelab, the epoch ({steps} steps, {epoch:.1f} s)", per_token * tokens / epoch / 1e9),
                        (f"tunelab, its steps alone ({steps_seconds:.1f} s)", per_token * tokens / steps_seconds / 1e9),
                        ("ideal: one fixed unpadded batch, eager", ideal_rate)]:
        print(f"| {label} | {rate:.1f} | {100 * rate / gemm:.0f} % |")
    print("\n| phase | tunelab, ms per step | ideal, ms per step |\n|---|---:|---:|")
    ideal_ms = {"forward": ideal["forward"], "backward": ideal["backward"],
                "batches, clipping, optimizer, memory probe": ideal["clip"] + ideal["optimizer"]}
    for name, total in spent.items():
        print(f"| {name} | {1000 * total / steps:.1f} | {1000 * ideal_ms[name]:.1f} |" if name in ideal_ms
              else f"| {name} | {1000 * total / steps:.1f} | 0 |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
