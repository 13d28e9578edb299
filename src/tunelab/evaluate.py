"""Rebuilding a run for ``tunelab eval``: base weights + the run's checkpoint, then the task's
evaluation of a split (the same function training used)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def rebuild_run(run_dir: Path):
    """The run's config and its prepared model with the checkpoint's tensors loaded (an LSTM
    run's vocabulary is read back from the run directory)."""
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

    cfg, prepared = rebuild_run(run_dir)
    accelerator = make_accelerator(cfg)
    loader = DataLoader(prepared.splits[split], batch_size=cfg.eval.batch_size, collate_fn=prepared.collate)
    model, loader = accelerator.prepare(prepared.model, loader)
    return {"split": split, **prepared.task.evaluate(model, loader, accelerator, prepared, split)}


@torch.no_grad()
def predict_run(run_dir: Path, texts: list[str]) -> list[dict[str, Any]]:
    """The predicted label of each text with its softmax probability (and every label's), for a
    classification run (an encoder with a head, or the LSTM)."""
    from tunelab.errors import UserError

    if not texts:
        raise UserError("give at least one text to classify, e.g. tunelab predict RUN_DIR \"a gripping film\"")
    cfg, prepared = rebuild_run(run_dir)
    if prepared.encode_texts is None:
        raise UserError(f"predict needs a classification run; {run_dir} is a {cfg.task.name} run")
    if cfg.data.text_pair_column:
        raise UserError(f"{run_dir} classifies text pairs ({cfg.data.text_column}, {cfg.data.text_pair_column}); "
                        "predict takes single texts")
    model = prepared.model.eval()
    features = prepared.encode_texts(texts)
    results = []
    for start in range(0, len(features), cfg.eval.batch_size):
        batch = prepared.collate(features[start:start + cfg.eval.batch_size])
        probs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).softmax(-1)  # (B, labels)
        for row in probs:
            best = int(row.argmax())
            results.append({"label": prepared.label_names[best], "probability": row[best].item(),
                            "probabilities": dict(zip(prepared.label_names, row.tolist()))})
    return [{"text": text, **result} for text, result in zip(texts, results)]
