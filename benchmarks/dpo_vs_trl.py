#!/usr/bin/env python3
"""tunelab's DPO against TRL's ``DPOTrainer``, the tool people use for it, at equal settings, in one run.

The same model (SmolLM2-135M-Instruct, fp32 on the CPU), the same preference pairs, the same LoRA
(r=16, alpha=32 on q/k/v projections, no dropout), the same DPO (sigmoid loss, beta 0.1, the
reference being the model with its adapters switched off), the same optimizer and schedule (AdamW,
lr 1e-3, 10 % linear warm-up, clipping at 1.0), batch, lengths and number of steps:

1. ``tunelab``: the one loop, as ``tunelab train`` runs it (``task.name: preference``);
2. ``trl defaults``: ``DPOTrainer`` at its defaults (among them gradient checkpointing on);
3. ``trl no checkpointing``: the same with gradient checkpointing off, the setting that matches
   tunelab's (which does not recompute activations).

The pairs: the embedded rt-snippets reviews, each positive review's first words as the prompt, its
remaining words the chosen response and a negative review's remaining words the rejected one — a
preference for positive continuations that reward accuracy on held-out pairs shows being learned.

Each loop is timed over its training steps alone (steps/s). All are then evaluated on the same
held-out pairs by their own evaluation (TRL's ``evaluate``, tunelab's test): the DPO loss and the
reward accuracy. TRL is an optional benchmark dependency, not one of tunelab's:

    pip install -c requirements.lock trl
    python benchmarks/dpo_vs_trl.py [--steps 30] [--batch 8] [--pairs 400] [--prompt-words 6]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import torch  # noqa: E402

from tunelab import catalog  # noqa: E402
from tunelab.config import load_config  # noqa: E402

LR, WARMUP, CLIP, BETA, SEED = 1e-3, 0.1, 1.0, 0.1, 0
R, ALPHA, TARGETS = 16, 32, ["q_proj", "k_proj", "v_proj"]
MAX_PROMPT, MAX_LENGTH = 16, 64


def make_pairs(count: int, prompt_words: int, folder: Path) -> dict[str, list[dict]]:
    """Preference pairs from the embedded reviews, positive continuations preferred (see above),
    written as train/validation/test.jsonl (8:1:1) in ``folder`` for tunelab; returns the splits."""
    from tunelab.config import DataConfig
    from tunelab.data.sources import load_splits

    rows = load_splits(DataConfig(name="rt-snippets"))["train"]  # tunelab's own reader of the embedded file
    positive = [r["text"].split() for r in rows if r["label"] == 1]
    negative = [r["text"].split() for r in rows if r["label"] == 0]
    pairs = []
    for good, bad in zip(positive, negative):
        if len(good) > prompt_words + 3 and len(bad) > prompt_words + 3:
            pairs.append({"prompt": " ".join(good[:prompt_words]), "chosen": " " + " ".join(good[prompt_words:]),
                          "rejected": " " + " ".join(bad[prompt_words:])})
        if len(pairs) == count:
            break
    n = len(pairs)
    splits = {"train": pairs[:n * 8 // 10], "validation": pairs[n * 8 // 10:n * 9 // 10], "test": pairs[n * 9 // 10:]}
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in part))
    return splits


def run_tunelab(args, pairs: Path, run_dir: Path) -> dict:
    from tunelab.build import prepare
    from tunelab.loop import train

    cfg = load_config(None, {
        "model": {"name": "smollm2-135m"}, "data": {"name": str(pairs)},
        "task": {"name": "preference", "max_prompt_length": MAX_PROMPT, "max_length": MAX_LENGTH,
                 "objective": {"name": "dpo", "beta": BETA}},
        "method": {"name": "lora", "r": R, "alpha": ALPHA, "target_modules": TARGETS},
        "train": {"epochs": 1, "max_steps": args.steps, "batch_size": args.batch, "lr": LR, "warmup_ratio": WARMUP,
                  "max_grad_norm": CLIP, "seed": SEED},
        "eval": {"batch_size": 16}, "output": {"dir": str(run_dir)}})
    prepared = prepare(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = train(cfg, prepared, run_dir)
    return {"loop": "tunelab", "steps": summary.steps, "steps_s": summary.train_steps_s,
            "loss": summary.test["loss"], "reward_accuracy": summary.test["reward_accuracy"]}


def run_trl(args, train_rows: list[dict], test_rows: list[dict], out_dir: Path, checkpointing: bool) -> dict:
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    set_seed(SEED)
    path = catalog.fetch("smollm2-135m", quiet=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    total = min(args.steps, math.ceil(len(train_rows) / args.batch))
    config = DPOConfig(output_dir=str(out_dir), per_device_train_batch_size=args.batch, per_device_eval_batch_size=16,
                       max_steps=total, learning_rate=LR, lr_scheduler_type="linear",
                       warmup_steps=round(WARMUP * total),
                       max_grad_norm=CLIP, weight_decay=0.0, beta=BETA, loss_type=["sigmoid"], max_length=MAX_LENGTH,
                       gradient_checkpointing=checkpointing, bf16=False, fp16=False, use_cpu=True, seed=SEED,
                       report_to=[], logging_strategy="no", save_strategy="no", eval_strategy="no",
                       dataloader_num_workers=0, disable_tqdm=True)
    lora = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(train_rows),
                         eval_dataset=datasets.Dataset.from_list(test_rows), processing_class=tokenizer,
                         peft_config=lora)
    started = time.perf_counter()
    seconds = trainer.train().metrics.get("train_runtime", time.perf_counter() - started)
    evaluated = trainer.evaluate()
    return {"loop": "trl defaults" if checkpointing else "trl no checkpointing", "steps": total, "steps_s": seconds,
            "loss": evaluated["eval_loss"], "reward_accuracy": evaluated["eval_rewards/accuracies"]}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--prompt-words", type=int, default=6)
    args = parser.parse_args(argv)
    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory() as scratch:
        splits = make_pairs(args.pairs, args.prompt_words, Path(scratch) / "pairs")
        train_rows, test_rows = splits["train"], splits["test"]
        ours = run_tunelab(args, Path(scratch) / "pairs", Path(scratch) / "tunelab")
        rows = [ours, run_trl(args, train_rows, test_rows, Path(scratch) / "trl", checkpointing=False),
                run_trl(args, train_rows, test_rows, Path(scratch) / "trl-gc", checkpointing=True)]
    import trl

    print(f"\nsmollm2-135m + LoRA r={R} ({', '.join(TARGETS)}), DPO beta {BETA}: {len(train_rows)} train pairs, "
          f"{len(test_rows)} test pairs, batch {args.batch}, {args.steps} steps, prompt <= {MAX_PROMPT} and "
          f"prompt + response <= {MAX_LENGTH} tokens; torch {torch.__version__}, trl {trl.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| loop | train s (steps) | steps/s | test DPO loss | test reward accuracy | tunelab's steps/s is |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        rate = row["steps"] / row["steps_s"]
        print(f"| {row['loop']} | {row['steps_s']:.1f} | {rate:.3f} | {row['loss']:.4f} | "
              f"{row['reward_accuracy']:.3f} | {ours['steps'] / ours['steps_s'] / rate:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
