"""Evaluation: loss and accuracy over a split, and rebuilding a run for ``tunelab eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from tunelab.tasks import classification


@torch.no_grad()
def evaluate(model, loader, accelerator: Accelerator) -> dict[str, float]:
    """Mean per-example loss and accuracy; gathered across processes without duplicates."""
    was_training = model.training
    model.eval()
    losses, hits = [], []
    for batch in loader:
        per_example, correct = classification.per_example(model, batch)
        per_example, correct = accelerator.gather_for_metrics((per_example, correct))
        losses.append(per_example.float().cpu())
        hits.append(correct.float().cpu())
    model.train(was_training)
    loss, acc = torch.cat(losses), torch.cat(hits)
    return {"loss": loss.mean().item(), "accuracy": acc.mean().item(), "examples": loss.numel()}


def load_run(run_dir: Path):
    """Rebuild a run's model from the base weights (or the saved vocabulary) plus its
    checkpoint; returns the config and the ``Prepared`` bundle with the trained tensors in."""
    from tunelab import runs
    from tunelab.build import prepare
    from tunelab.config import load_config
    from tunelab.errors import UserError
    from tunelab.methods.common import load_trainable_state

    checkpoint = run_dir / runs.CHECKPOINT / "model.safetensors"
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    if not checkpoint.is_file():
        raise UserError(f"{run_dir} has no checkpoint yet ({checkpoint} is missing)")
    cfg = load_config(run_dir / "config.yaml")
    prepared = prepare(cfg, run_dir)
    load_trainable_state(prepared.model, runs.load_tensors(checkpoint))
    return cfg, prepared


def evaluate_run(run_dir: Path, split: str = "test") -> dict[str, Any]:
    """Rebuild the model from the base weights plus the run's checkpoint and evaluate it."""
    from torch.utils.data import DataLoader

    from tunelab.train import make_accelerator

    cfg, prepared = load_run(run_dir)
    accelerator = make_accelerator(cfg)
    loader = DataLoader(prepared.splits[split], batch_size=cfg.eval.batch_size,
                        collate_fn=classification.collator(prepared.tokenizer))
    model, loader = accelerator.prepare(prepared.model, loader)
    return {"split": split, **evaluate(model, loader, accelerator)}


@torch.no_grad()
def predict_run(run_dir: Path, texts: list[str]) -> list[dict[str, Any]]:
    """The predicted label of each text with its softmax probability (and every label's)."""
    from tunelab.errors import UserError

    if not texts:
        raise UserError("give at least one text to classify, e.g. tunelab predict RUN_DIR \"a gripping film\"")
    cfg, prepared = load_run(run_dir)
    if cfg.data.text_pair_column:
        raise UserError(f"{run_dir} classifies text pairs ({cfg.data.text_column}, {cfg.data.text_pair_column}); "
                        "predict takes single texts")
    model = prepared.model.eval()
    features = classification.encode_texts(prepared.tokenizer, texts, cfg.task.max_length)
    results = []
    for start in range(0, len(features), cfg.eval.batch_size):
        batch = classification.collator(prepared.tokenizer)(features[start:start + cfg.eval.batch_size])
        probs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).softmax(-1)  # (B, labels)
        for row in probs:
            best = int(row.argmax())
            results.append({"label": prepared.label_names[best], "probability": row[best].item(),
                            "probabilities": dict(zip(prepared.label_names, row.tolist()))})
    return [{"text": text, **result} for text, result in zip(texts, results)]
