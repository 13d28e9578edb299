#!/usr/bin/env python3
"""What LoRA costs at inference, unmerged and merged, against the base model, in one process.

For each embedded model the same test inputs go through three models built by tunelab: the
base model with no injected module (``method: head`` for the encoder, ``none`` for the decoder),
LoRA r=8 on q/k/v with its B matrices random (so merging changes the weights), and that LoRA
merged into the base weights (``tunelab.methods.common.merge``). Each is timed by
``tunelab.inference.measure_forward`` (per-example latency at batch 1 and at the batch size,
medians over the calls); the three are timed in turn, ``--rounds`` times, and each figure is the
median over the rounds, so a slow moment of the machine falls on all three alike. Prints a
markdown table with each variant's ratio to the base model, and checks that merged and unmerged
give the same outputs.

    python benchmarks/merged_inference.py [--examples 64] [--rounds 5] [--json merged.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from tunelab.build import prepare  # noqa: E402
from tunelab.config import load_config  # noqa: E402
from tunelab.inference import measure_forward  # noqa: E402
from tunelab.methods.common import adapters, merge  # noqa: E402

MODELS = {
    "minilm-l6": {"task": {"name": "classification", "max_length": 64}, "base_method": "head",
                  "targets": ["query", "key", "value"], "batch": 32},
    "smollm2-135m": {"task": {"name": "instruct", "label_words": ["negative", "positive"], "max_length": 64},
                     "base_method": "none", "targets": ["q_proj", "k_proj", "v_proj"], "batch": 16},
}


def build(model: str, method: dict, examples: int):
    spec = MODELS[model]
    cfg = load_config(None, {"model": {"name": model}, "data": {"name": "rt-snippets", "max_test_examples": examples},
                             "task": spec["task"], "method": method, "train": {"cpu": True}})
    prepared = prepare(cfg)
    return prepared.model.eval(), [prepared.splits["test"][i] for i in range(examples)], prepared.collate


def variants(model: str, examples: int) -> dict:
    spec = MODELS[model]
    base, _, _ = build(model, {"name": spec["base_method"]}, examples)
    # The LoRA run's test inputs are tokens (a head-only run's would be its cached features).
    lora, inputs, collate = build(model, {"name": "lora", "r": 8, "alpha": 16, "target_modules": spec["targets"]},
                                  examples)
    torch.manual_seed(0)
    with torch.no_grad():
        for module in adapters(lora):
            module.lora_B.normal_(std=0.02)  # trained-looking: merging now changes the weights
    merged, _, _ = build(model, {"name": "lora", "r": 8, "alpha": 16, "target_modules": spec["targets"]}, examples)
    merged.load_state_dict(lora.state_dict())
    merge(merged)
    return {"base": base, "lora unmerged": lora, "lora merged": merged}, inputs, collate


@torch.inference_mode()
def same_outputs(models: dict, inputs: list, collate) -> float:
    batch = collate(inputs[:8])
    outs = [m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]) for m in
            (models["lora unmerged"], models["lora merged"])]
    logits = [o.logits if hasattr(o, "logits") else o for o in outs]
    return (logits[0] - logits[1]).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    results = {}
    for model, spec in MODELS.items():
        models, inputs, collate = variants(model, args.examples)
        difference = same_outputs(models, inputs, collate)
        rounds = {name: [] for name in models}
        causal = model.startswith("smollm2")
        for _ in range(args.rounds):
            for name, m in models.items():
                rounds[name].append(measure_forward(m, inputs, collate, spec["batch"], causal=causal))
        results[model] = {"max_abs_difference": difference, "batch": spec["batch"], **{
            name: {key: statistics.median(r[key] for r in found) for key in ("batch1_ms", "batch_ms")}
            for name, found in rounds.items()}}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.examples} rt-snippets test inputs "
          f"(64 tokens at most), median of {args.rounds} rounds\n")
    print("| model | variant | batch 1 (ms/example) | ratio to base | batch N (ms/example) | ratio to base |")
    print("|---|---|---:|---:|---:|---:|")
    for model, found in results.items():
        base = found["base"]
        for name in ("base", "lora unmerged", "lora merged"):
            row = found[name]
            print(f"| {model} | {name} | {row['batch1_ms']:.2f} | {row['batch1_ms'] / base['batch1_ms']:.3f} | "
                  f"{row['batch_ms']:.2f} (N={found['batch']}) | {row['batch_ms'] / base['batch_ms']:.3f} |")
    for model, found in results.items():
        print(f"\n{model}: merged vs unmerged outputs differ by at most {found['max_abs_difference']:.2e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
