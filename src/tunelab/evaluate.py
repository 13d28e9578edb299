"""Rebuilding a run for ``tunelab eval``: base weights + the run's checkpoint, then the task's
evaluation of a split (the same function training used)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def rebuild_run(run_dir: Path):
    """The run's config and its prepared model with the checkpoint's tensors loaded."""
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
    prepared = prepare(cfg)
    load_trainable_state(prepared.model, runs.load_tensors(checkpoint))
    return cfg, prepared


def evaluate_run(run_dir: Path, split: str = "test") -> dict[str, Any]:
    """Rebuild the model from the base weights plus the run's checkpoint and evaluate it."""
    from torch.utils.data import DataLoader

    from tunelab.train import make_accelerator

    cfg, prepared = rebuild_run(run_dir)
    accelerator = make_accelerator(cfg)
    loader = DataLoader(prepared.splits[split], batch_size=cfg.eval.batch_size, collate_fn=prepared.task.collator(prepared))
    model, loader = accelerator.prepare(prepared.model, loader)
    return {"split": split, **prepared.task.evaluate(model, loader, accelerator, prepared, split)}
