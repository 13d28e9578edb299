"""The one training loop, for every method, on Hugging Face Accelerate.

AdamW over the trainable parameters, linear warm-up and decay, gradient clipping, gradient
accumulation, validation every epoch (and optionally every N steps), the best-validation
checkpoint, early stopping, and a resumable snapshot at every validation. ``accelerate launch``
runs it unchanged on several GPUs or nodes.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from tunelab import profile, runs, tasks
from tunelab.build import Prepared
from tunelab.config import RunConfig
from tunelab.errors import UserError
from tunelab.methods.common import inference_state, load_trainable_state, trainable_state

LOG_EVERY_STEPS = 10


def make_accelerator(cfg: RunConfig) -> Accelerator:
    # The seedable sampler reshuffles from (seed + epoch), so a resumed run sees the same order.
    loader_cfg = DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.train.seed)
    return Accelerator(gradient_accumulation_steps=cfg.train.grad_accum, cpu=cfg.train.cpu, dataloader_config=loader_cfg)


def peak_memory(accelerator: Accelerator) -> dict[str, Any]:
    if accelerator.device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(accelerator.device), "peak_memory_kind": "cuda_max_allocated"}
    # ru_maxrss is in kilobytes on Linux: the process's peak resident set size.
    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_memory_kind": "cpu_peak_rss"}


def train(cfg: RunConfig, prepared: Prepared, run_dir: Path, resume: bool = False,
          accelerator: Accelerator | None = None) -> dict[str, Any]:
    """Train, keep the best-validation checkpoint, evaluate it on test, write summary.json."""
    started = time.perf_counter()
    accelerator = accelerator or make_accelerator(cfg)
    tc = cfg.train
    task = prepared.task
    collate = task.collator(prepared)
    train_loader = DataLoader(prepared.splits["train"], batch_size=tc.batch_size, shuffle=True, collate_fn=collate)
    valid_loader = DataLoader(prepared.splits["validation"], batch_size=cfg.eval.batch_size, collate_fn=collate)
    test_loader = DataLoader(prepared.splits["test"], batch_size=cfg.eval.batch_size, collate_fn=collate)
    params = [p for p in prepared.model.parameters() if p.requires_grad]
    # Method `none` trains nothing: the loop is skipped and the base model is evaluated as is.
    optimizer = torch.optim.AdamW(params or [torch.nn.Parameter(torch.zeros(1))], lr=tc.lr, weight_decay=tc.weight_decay)
    model, optimizer, train_loader, valid_loader, test_loader = accelerator.prepare(
        prepared.model, optimizer, train_loader, valid_loader, test_loader)

    steps_per_epoch = math.ceil(len(train_loader) / tc.grad_accum)
    total_steps = min(tc.max_steps or math.inf, tc.epochs * steps_per_epoch) if params else 0
    # Not passed to accelerator.prepare: we step it once per optimizer step ourselves.
    scheduler = get_linear_schedule_with_warmup(optimizer, round(tc.warmup_ratio * total_steps), total_steps)

    progress: dict[str, Any] = {"epoch": 0, "batches_done": 0, "step": 0, "best": None, "best_step": None,
                                "best_epoch": None, "bad_evals": 0, "train_tokens": 0, "train_seconds": 0.0,
                                "loop_seconds": 0.0, "last_eval_step": -1, "stopped_early": False,
                                "epoch_loss_sum": 0.0, "epoch_hits": 0, "epoch_examples": 0}
    if resume:
        tensors, saved = runs.load_state(run_dir, optimizer, scheduler)
        progress.update(saved)
        load_trainable_state(accelerator.unwrap_model(model), tensors)
    elif hasattr(task, "before_training"):  # e.g. the base model's perplexity, kept for the summary
        progress["before"] = task.before_training(model, accelerator, prepared, test_loader)

    select_metric, higher_is_better = tasks.select_metric(cfg)
    hits_counted = hasattr(task, "per_example")  # tasks whose examples are right or wrong

    def validate() -> bool:
        """Evaluate on validation, keep the best checkpoint, snapshot; True means stop early."""
        metrics = task.evaluate(model, valid_loader, accelerator, prepared, "validation")
        epoch_float = progress["epoch"] + progress["batches_done"] / max(len(train_loader), 1)
        record = {"split": "validation", "step": progress["step"], "epoch": round(epoch_float, 4), **metrics}
        score = metrics[select_metric]
        best = progress["best"]
        improved = best is None or (score > best if higher_is_better else score < best)
        if accelerator.is_main_process:
            runs.append_metrics(run_dir, record)
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            bar.write(f"epoch {epoch_float:.2f} step {progress['step']}: validation {shown}", file=sys.stderr)
        if improved:
            progress.update(best=score, best_step=progress["step"], best_epoch=round(epoch_float, 4), bad_evals=0,
                            best_validation=metrics)
            if accelerator.is_main_process:
                runs.save_checkpoint(run_dir, inference_state(accelerator.unwrap_model(model)),
                                     {"method": cfg.method.name, "step": progress["step"], "validation": metrics})
        else:
            progress["bad_evals"] += 1
        progress["last_eval_step"] = progress["step"]
        if accelerator.is_main_process:
            runs.save_state(run_dir, trainable_state(accelerator.unwrap_model(model)), optimizer, scheduler, progress)
        accelerator.wait_for_everyone()
        return tc.patience is not None and progress["bad_evals"] >= tc.patience

    bar = tqdm(total=total_steps, initial=progress["step"], desc=cfg.method.name, unit="step",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    model.train()
    stop = progress["stopped_early"] or progress["step"] >= total_steps
    if not params:
        validate()  # the untrained model's validation numbers stand as its "best"
    loop_start = time.perf_counter() - progress["loop_seconds"]
    while not stop and progress["epoch"] < tc.epochs:
        train_loader.set_epoch(progress["epoch"])
        epoch_loader = train_loader
        resumed_rng = None
        if progress["batches_done"]:
            epoch_loader = accelerator.skip_first_batches(train_loader, progress["batches_done"])
            # Starting a loader draws a seed from the global RNG. The uninterrupted run drew it when
            # the epoch began, before the snapshot; put the snapshot's state back at the first
            # batch so dropout masks match.
            resumed_rng = torch.get_rng_state()
        window_loss, window_batches = 0.0, 0
        for batch in epoch_loader:
            if resumed_rng is not None:
                torch.set_rng_state(resumed_rng)
                resumed_rng = None
            if progress.get("memory") is None:  # once per run, before the first step changes anything
                progress["memory"] = profile.measure_step(model, batch, task.training_loss)
            step_start = time.perf_counter()
            with accelerator.accumulate(model):
                if hits_counted:  # classification: also count right answers, for the epoch's train accuracy
                    losses, correct = task.per_example(model, batch)
                    loss = losses.mean()
                else:
                    loss, correct = task.training_loss(model, batch), None
                if not torch.isfinite(loss):
                    raise UserError(f"the loss became {loss.item()} at step {progress['step']}; "
                                    f"the last good checkpoint is kept in {run_dir / runs.CHECKPOINT}")
                accelerator.backward(loss)
                if accelerator.sync_gradients and tc.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(params, tc.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            progress["batches_done"] += 1
            progress["train_tokens"] += int(batch["attention_mask"].sum().item()) * accelerator.num_processes
            progress["train_seconds"] += time.perf_counter() - step_start
            window_loss += loss.item()
            window_batches += 1
            # Running train loss (and accuracy) of the epoch: this process's batches, dropout on.
            rows = batch["input_ids"].shape[0]
            progress["epoch_loss_sum"] += loss.item() * rows
            progress["epoch_examples"] += rows
            if correct is not None:
                progress["epoch_hits"] += int(correct.sum().item())
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            progress["step"] += 1
            bar.update(1)
            tokens_per_s = progress["train_tokens"] / max(progress["train_seconds"], 1e-9)
            bar.set_postfix(epoch=progress["epoch"] + 1, loss=f"{window_loss / window_batches:.4f}", tok_s=f"{tokens_per_s:.0f}")
            if progress["step"] % LOG_EVERY_STEPS == 0 and accelerator.is_main_process:
                runs.append_metrics(run_dir, {"split": "train", "step": progress["step"], "loss": window_loss / window_batches,
                                              "lr": scheduler.get_last_lr()[0], "tokens_per_second": tokens_per_s})
                window_loss, window_batches = 0.0, 0
            if tc.eval_every_steps and progress["step"] % tc.eval_every_steps == 0:
                progress["loop_seconds"] = time.perf_counter() - loop_start
                stop = validate()
            if progress["step"] >= total_steps:
                stop = True
            if stop:
                break
        if progress["batches_done"] >= len(train_loader):  # the epoch ran to its end
            progress["epoch"] += 1
            progress["batches_done"] = 0
            n = max(progress["epoch_examples"], 1)
            record = {"split": "train_epoch", "step": progress["step"], "epoch": progress["epoch"],
                      "loss": progress["epoch_loss_sum"] / n}
            if hits_counted:
                record["accuracy"] = progress["epoch_hits"] / n
            if accelerator.is_main_process:
                runs.append_metrics(run_dir, record)
                bar.write(f"epoch {record['epoch']} step {record['step']}: train "
                          + "  ".join(f"{k} {record[k]:.4f}" for k in ("loss", "accuracy") if k in record), file=sys.stderr)
            progress.update(epoch_loss_sum=0.0, epoch_hits=0, epoch_examples=0)
        if progress["last_eval_step"] != progress["step"]:
            progress["loop_seconds"] = time.perf_counter() - loop_start
            stop = validate() or stop
        progress["stopped_early"] = bool(tc.patience and progress["bad_evals"] >= tc.patience)
    bar.close()
    loop_seconds = time.perf_counter() - loop_start

    # Test the best-validation checkpoint, not the last weights.
    unwrapped = accelerator.unwrap_model(model)
    load_trainable_state(unwrapped, runs.load_tensors(run_dir / runs.CHECKPOINT / "model.safetensors"))
    test = task.evaluate(model, test_loader, accelerator, prepared, "test")
    after = task.after_training(model, accelerator, prepared) if hasattr(task, "after_training") else {}
    best_validation = progress["best_validation"]
    summary = {
        "method": cfg.method.name, "model": cfg.model.name, "data": cfg.data.name, "task": cfg.task.name,
        "primary_metric": task.PRIMARY_METRIC, "higher_is_better": task.HIGHER_IS_BETTER,
        **{f"test_{k}": v for k, v in test.items()}, "test": test, "validation": best_validation,
        "eval_loss": best_validation["loss"],
        **{f"validation_{k}": v for k, v in best_validation.items() if k != "loss"},
        "select_metric": select_metric, "best_step": progress["best_step"], "best_epoch": progress["best_epoch"],
        "steps": progress["step"],
        "stopped_early": progress["stopped_early"],
        **prepared.counts.as_dict(),
        "checkpoint_bytes": runs.checkpoint_bytes(run_dir),
        "train_time_s": loop_seconds, "wall_time_s": time.perf_counter() - started,
        "tokens_per_second": progress["train_tokens"] / max(progress["train_seconds"], 1e-9),
        "train_examples": len(prepared.splits["train"]), "test_examples": len(prepared.splits["test"]),
        "label_names": prepared.label_names,
        **peak_memory(accelerator), "memory": progress.get("memory"),
        "device": str(accelerator.device), "num_processes": accelerator.num_processes,
        "versions": runs.versions(), "git_hash": runs.git_hash(),
    }
    before = progress.get("before") or {}
    if before.get("test"):
        summary["before"] = before["test"]
        summary.update({f"test_{k}_before": v for k, v in before["test"].items()})
    if accelerator.is_main_process and (before.get("samples") or after.get("samples")):
        runs.write_json(run_dir / "samples.json", {"before": before.get("samples"), "after": after.get("samples")})
    if accelerator.is_main_process:
        runs.append_metrics(run_dir, {"split": "test", "step": progress["step"], **test})
        runs.write_json(run_dir / "summary.json", summary)
        runs.remove_state(run_dir)
    return summary
