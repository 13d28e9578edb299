#!/usr/bin/env python3
"""tunelab's loop against the two ways people usually train a LoRA classifier, in one run.

The same model (all-MiniLM-L6-v2 with mean pooling and a linear classifier), the same data and
split (rt-snippets, the first ``--train`` training examples, ``--max-length`` tokens), the same
LoRA (r=8, alpha=16 on query/key/value; the classifier trains too), the same optimizer and
schedule (AdamW lr 2e-3, 6 % linear warm-up, clipping at 1.0), batch and epochs, one after
another in this one process:

1. ``tunelab``: ``tunelab.loop`` as ``tunelab train`` runs it (its one validation at the end
   of the epoch is not counted in the step time);
2. ``peft loop``: a plain PyTorch loop over a PEFT-wrapped model, random batches;
3. ``hf trainer``: Hugging Face ``Trainer`` over the same PEFT-wrapped model, at its default
   random sampling;
4. ``hf trainer grouped``: the same ``Trainer`` with its own length grouping
   (``train_sampling_strategy="group_by_length"``; ``group_by_length=True`` before transformers
   5.24), the setting a user who cares about speed turns on: the strongest peer setting.

Each is timed over its training steps alone; tokens/s counts non-pad input tokens. All three
are then tested by the same function on the same test examples. Prints one table and the
ratios against tunelab (docs/RESULTS.md has a measured one):

    python benchmarks/lora_loops.py [--train 2000] [--test 2113] [--max-length 64] [--batch 32] [--epochs 1]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import (  # noqa: E402
    AutoModel,
    Trainer,
    TrainingArguments,
    get_linear_schedule_with_warmup,
    set_seed,
)

from tunelab import catalog  # noqa: E402
from tunelab.batching import SortedBatches, example_lengths  # noqa: E402
from tunelab.config import load_config  # noqa: E402
from tunelab.tasks.classification import SequenceClassifier  # noqa: E402

LR, WARMUP, CLIP, SEED = 2e-3, 0.06, 1.0, 0


def run_config(args, run_dir: Path) -> dict:
    return {"model": {"name": "minilm-l6"},
            "data": {"name": "rt-snippets", "max_train_examples": args.train, "max_validation_examples": 300,
                     "max_test_examples": args.test},
            "task": {"name": "classification", "max_length": args.max_length},
            "method": {"name": "lora", "r": 8, "alpha": 16, "target_modules": ["query", "key", "value"]},
            "train": {"epochs": args.epochs, "batch_size": args.batch, "lr": LR, "warmup_ratio": WARMUP,
                      "max_grad_norm": CLIP, "seed": SEED},
            "eval": {"batch_size": 128}, "output": {"dir": str(run_dir)}}


def run_tunelab(args, run_dir: Path):
    """tunelab's own loop; returns (row, the prepared run: its data serves the other two loops)."""
    from tunelab.build import prepare
    from tunelab.loop import train

    cfg = load_config(None, run_config(args, run_dir))
    prepared = prepare(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = train(cfg, prepared, run_dir)
    tokens = summary.tokens_per_second
    steps_seconds = sum(sum(len(x) for x in prepared.splits["train"]["input_ids"]) for _ in range(args.epochs)) / tokens
    return {"loop": "tunelab", "train_s": steps_seconds, "tokens_per_s": tokens,
            "test_accuracy": summary.test["accuracy"], "padding": summary.padding_fraction}, prepared


def peft_model(num_labels: int) -> torch.nn.Module:
    set_seed(SEED)
    body = AutoModel.from_pretrained(catalog.fetch("minilm-l6", quiet=True), dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "key", "value"],
                        modules_to_save=["classifier"])
    return get_peft_model(SequenceClassifier(body, num_labels), config)


def run_peft_loop(args, prepared) -> dict:
    model = peft_model(len(prepared.label_names)).train()
    loader = DataLoader(prepared.splits["train"], batch_size=args.batch, shuffle=True, collate_fn=prepared.collate,
                        generator=torch.Generator().manual_seed(SEED))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    total = args.epochs * len(loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(WARMUP * total), total)
    tokens, positions, seconds = 0, 0, 0.0
    for _ in range(args.epochs):
        for batch in loader:
            started = time.perf_counter()
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            F.cross_entropy(logits, batch["labels"]).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            seconds += time.perf_counter() - started
            tokens += int(batch["attention_mask"].sum())
            positions += batch["attention_mask"].numel()
    return {"loop": "peft loop", "train_s": seconds, "tokens_per_s": tokens / seconds,
            "test_accuracy": test_accuracy(model, prepared), "padding": 1 - tokens / positions}


class WithLoss(torch.nn.Module):
    """The classifier with the loss in its output, as ``Trainer`` expects."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels=None, token_type_ids=None):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def run_trainer(args, prepared, out_dir: Path, grouped: bool = False) -> dict:
    model = peft_model(len(prepared.label_names))
    total_steps = args.epochs * math.ceil(len(prepared.splits["train"]) / args.batch)
    train = prepared.splits["train"]
    sampling = {}
    if grouped:  # the Trainer's own length grouping reads each example's length from a column
        train = train.add_column("length", [len(x) for x in train["input_ids"]])
        sampling = {"train_sampling_strategy": "group_by_length", "length_column_name": "length"}
    training = TrainingArguments(output_dir=str(out_dir), per_device_train_batch_size=args.batch,
                                 num_train_epochs=args.epochs, learning_rate=LR,
                                 warmup_steps=round(WARMUP * total_steps), max_grad_norm=CLIP, weight_decay=0.0,
                                 lr_scheduler_type="linear", seed=SEED, logging_strategy="no", save_strategy="no",
                                 eval_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
                                 disable_tqdm=True, **sampling)
    collate = (lambda items: prepared.collate([{k: v for k, v in it.items() if k != "length"} for it in items])) \
        if grouped else prepared.collate
    trainer = Trainer(model=WithLoss(model), args=training, train_dataset=train, data_collator=collate)
    padded = []
    real_collate = trainer.data_collator

    def counting(items):  # the padding of the batches the Trainer actually made
        batch = real_collate(items)
        padded.append((int(batch["attention_mask"].sum()), batch["attention_mask"].numel()))
        return batch

    trainer.data_collator = counting
    seconds = trainer.train().metrics["train_runtime"]
    tokens = args.epochs * sum(len(x) for x in prepared.splits["train"]["input_ids"])
    padding = 1 - sum(t for t, _ in padded) / max(sum(n for _, n in padded), 1)
    return {"loop": "hf trainer grouped" if grouped else "hf trainer", "train_s": seconds,
            "tokens_per_s": tokens / seconds, "test_accuracy": test_accuracy(model, prepared), "padding": padding}


@torch.inference_mode()
def test_accuracy(model: torch.nn.Module, prepared) -> float:
    """The same evaluation for every loop: the test split, length-sorted batches of 128."""
    model.eval()
    test = prepared.splits["test"]
    right = 0
    for indices in SortedBatches(example_lengths(test, prepared.collate), 128):
        batch = prepared.collate([test[i] for i in indices])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        right += int((logits.argmax(-1) == batch["labels"]).sum())
    return right / len(test)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=2113)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory() as scratch:
        ours, prepared = run_tunelab(args, Path(scratch) / "tunelab")
        rows = [ours, run_peft_loop(args, prepared), run_trainer(args, prepared, Path(scratch) / "trainer"),
                run_trainer(args, prepared, Path(scratch) / "trainer-grouped", grouped=True)]
    print(f"\nminilm-l6 + LoRA r=8 (query, key, value), rt-snippets: {args.train} train examples, "
          f"{args.max_length} tokens, batch {args.batch}, {args.epochs} epoch(s), {len(prepared.splits['test'])} test "
          f"examples; torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| loop | train s (steps) | non-pad tokens/s | padding | test accuracy | tunelab's tokens/s is |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        ratio = ours["tokens_per_s"] / row["tokens_per_s"]
        print(f"| {row['loop']} | {row['train_s']:.1f} | {row['tokens_per_s']:,.0f} | {100 * row['padding']:.1f} % | "
              f"{row['test_accuracy']:.4f} | {ratio:.2f}x |")
    return 0 if all(math.isfinite(r["tokens_per_s"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
