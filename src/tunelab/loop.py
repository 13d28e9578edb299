"""The one training loop, for every method and task, on Hugging Face Accelerate.

AdamW over the trainable parameters, linear warm-up and decay, gradient clipping, gradient
accumulation, validation every epoch (and optionally every N steps), the best-validation
checkpoint, early stopping, and a resumable snapshot at every validation. ``accelerate launch``
runs it unchanged on several GPUs or nodes.

It reads top to bottom: :func:`train` sets up (:func:`setup`), runs epochs of
:func:`train_step` with :func:`validate` in between, and :func:`finish` tests the best
checkpoint and writes the summary. Where the loop is lives in one :class:`TrainState`, saved
and restored whole. The task gives the batches, the loss and the metrics; nothing here knows
which task or method it runs.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tunelab import forgetting, inference, methods, profile, runs, sharding, tasks, tracking
from tunelab.batching import make_loaders
from tunelab.config import RunConfig
from tunelab.errors import UserError
from tunelab.launch import make_accelerator
from tunelab.methods.common import inference_state, load_trainable_state, trainable_state
from tunelab.schedule import linear_with_warmup
from tunelab.summary import Summary
from tunelab.tasks import Prepared
from tunelab.tasks.metrics import declarations

LOG_EVERY_STEPS = 10
COUNTS = ("examples", "tokens", "positions")
"""Entries of a task's loss metrics that count the batch (examples, non-pad tokens, padded
positions); every other entry is a per-example sum."""
PREDICTIONS = "predictions.jsonl"


@dataclass
class TrainState:
    """Where the loop is. Saved whole with every snapshot; ``--resume`` restores it."""

    epoch: int = 0
    batches_done: int = 0
    """Micro-batches of the current epoch already trained (on this process)."""
    step: int = 0
    """Optimizer steps taken."""
    best: float | None = None
    """The best validation value of the select metric so far."""
    best_step: int | None = None
    best_epoch: float | None = None
    best_validation: dict[str, Any] | None = None
    bad_evals: int = 0
    """Validations in a row without improvement (early stopping)."""
    last_eval_step: int = -1
    stopped_early: bool = False
    pruned: bool = False
    """A sweep's pruner stopped the run (tunelab.sweeps.pruning)."""
    train_tokens: int = 0
    train_positions: int = 0
    """Token positions of the training batches, padding included."""
    train_seconds: float = 0.0
    """Time inside training steps only: what tokens/s is measured against."""
    loop_seconds: float = 0.0
    """Time in the loop, validations included, up to the last snapshot."""
    epoch_sums: dict[str, float] = field(default_factory=dict)
    """The epoch's running sums: train loss times examples, examples, task metrics."""
    memory: dict[str, Any] | None = None
    """The first training step's memory breakdown (tunelab.profile)."""
    before: dict[str, Any] | None = None
    """What the task measured of the base model before training."""
    general_before: float | None = None  # the base model's perplexity on general text (tunelab.forgetting)


@dataclass
class Loop:
    """What the phases share: set up once, never saved (the state is)."""

    cfg: RunConfig
    prepared: Prepared
    run_dir: Path
    accelerator: Accelerator
    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: DataLoader
    valid_loader: DataLoader
    test_loader: DataLoader
    test_order: list[int]
    """The test split's example indices in the order its (length-sorted) loader yields them."""
    total_steps: int
    select_metric: str
    higher_is_better: bool
    clock: float = 0.0
    """perf_counter value the loop's time counts from (moved back by a resumed run's time)."""
    sinks: tracking.Sinks = field(default_factory=lambda: tracking.Sinks([]))
    """Where records go (tunelab.tracking): metrics.jsonl, a sweep trial's pruner, trackers."""
    bar: Any = None
    window: list[float] = field(default_factory=list)
    """Train losses since the last log line."""
    window_sums: dict[str, float] = field(default_factory=dict)
    """The task's per-example metric sums since the last log line, and their examples."""

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def setup(cfg: RunConfig, prepared: Prepared, run_dir: Path, accelerator: Accelerator) -> Loop:
    """Loaders, optimizer and schedule, all handed to Accelerate."""
    tc = cfg.train
    params = [p for p in prepared.model.parameters() if p.requires_grad]
    # Method `none` trains nothing: the loop is skipped and the base model is evaluated as is.
    groups = methods.parameter_groups(prepared.model, cfg.method, tc.lr, tc.weight_decay) if params else \
        [{"params": [torch.nn.Parameter(torch.zeros(1))]}]
    optimizer = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
    loaders = make_loaders(cfg, prepared, accelerator.num_processes)
    test_order = list(loaders[2].batch_sampler.order)
    sharding.before_prepare(accelerator, prepared.model)  # train.fsdp: its units, before the model is sharded
    model, optimizer, *loaders = accelerator.prepare(prepared.model, optimizer, *loaders)
    sharding.after_prepare(accelerator, model)
    params = [p for p in model.parameters() if p.requires_grad]  # FSDP puts sharded parameters in their place
    steps_per_epoch = math.ceil(len(loaders[0]) / tc.grad_accum)
    total_steps = min(tc.max_steps or math.inf, tc.epochs * steps_per_epoch) if params else 0
    # Not passed to accelerator.prepare: we step it once per optimizer step ourselves.
    scheduler = linear_with_warmup(optimizer, round(tc.warmup_ratio * total_steps), total_steps)
    select_metric, higher_is_better = tasks.select_metric(cfg)
    from tunelab.sweeps.pruning import pruner_from_env  # imports optuna only inside a sweep's trial

    sinks = tracking.sinks_for(cfg, run_dir, accelerator.is_main_process,
                               [f"validation/{select_metric}", f"test/{cfg.task.primary_metric}"], pruner_from_env())
    return Loop(cfg, prepared, run_dir, accelerator, model, params, optimizer, scheduler, *loaders, test_order,
                total_steps=total_steps, select_metric=select_metric, higher_is_better=higher_is_better, sinks=sinks)


def start_state(loop: Loop, resume: bool) -> TrainState:
    """A fresh state (with the base model's numbers, where the task measures them), or the
    snapshot's state with its tensors, optimizer, schedule and random generators."""
    if not resume:
        if not loop.cfg.eval.test:  # the base model's numbers are test numbers too
            return TrainState()
        with loop.accelerator.autocast():  # train.precision: evaluation under the training's autocast
            return TrainState(before=loop.prepared.task.before_training(loop.model, loop.accelerator, loop.prepared,
                                                                        loop.test_loader),
                              general_before=forgetting.base_perplexity(loop.accelerator.unwrap_model(loop.model),
                                                                        loop.prepared))
    tensors, saved = runs.load_state(loop.run_dir, loop.optimizer, loop.scheduler, loop.accelerator.process_index)
    load_trainable_state(loop.accelerator.unwrap_model(loop.model), tensors)
    return TrainState(**saved)


def train(cfg: RunConfig, prepared: Prepared, run_dir: Path, resume: bool = False,
          accelerator: Accelerator | None = None) -> Summary:
    """Train, keep the best-validation checkpoint, evaluate it on test, write summary.json."""
    started = time.perf_counter()
    loop = setup(cfg, prepared, run_dir, accelerator or make_accelerator(cfg))
    try:
        return train_loop(loop, start_state(loop, resume), started)
    finally:
        loop.sinks.close()


def train_loop(loop: Loop, state: TrainState, started: float) -> Summary:
    cfg = loop.cfg
    loop.bar = tqdm(total=loop.total_steps, initial=state.step, desc=cfg.method.name, unit="step",
                    disable=not loop.accelerator.is_local_main_process, dynamic_ncols=True)
    loop.model.train()
    stop = state.stopped_early or state.pruned or state.step >= loop.total_steps
    loop.clock = time.perf_counter() - state.loop_seconds
    if not loop.params:
        validate(loop, state)  # the untrained model's validation numbers stand as its "best"
    while not stop and state.epoch < cfg.train.epochs:
        stop = run_epoch(loop, state)
        if state.last_eval_step != state.step:
            stop = validate(loop, state) or stop
        state.stopped_early = bool(cfg.train.patience and state.bad_evals >= cfg.train.patience)
    loop.bar.close()
    state.loop_seconds = time.perf_counter() - loop.clock
    with loop.accelerator.autocast():  # the test under the training's precision (no backward here)
        return finish(loop, state, started)


def run_epoch(loop: Loop, state: TrainState) -> bool:
    """Train through the rest of the epoch; True when training should stop."""
    loop.train_loader.set_epoch(state.epoch)
    # Under several processes Accelerate's shard wraps our batch sampler and does not pass the
    # epoch on; without it every epoch would repeat the first one's order.
    inner = getattr(loop.train_loader.batch_sampler, "batch_sampler", None)
    if hasattr(inner, "set_epoch"):
        inner.set_epoch(state.epoch)
    batches, resumed_rng = loop.train_loader, None
    if state.batches_done:
        batches = loop.accelerator.skip_first_batches(loop.train_loader, state.batches_done)
        # Starting a loader draws a seed from the global RNG. The uninterrupted run drew it when
        # the epoch began, before the snapshot; put the snapshot's state back at the first
        # batch so dropout masks match.
        resumed_rng = torch.get_rng_state()
    loop.window, loop.window_sums, stop = [], {}, False
    for batch in batches:
        if resumed_rng is not None:
            torch.set_rng_state(resumed_rng)
            resumed_rng = None
        if state.memory is None:  # once per run, before the first step changes anything
            with loop.accelerator.autocast():
                state.memory = profile.measure_step(loop.model, batch, loop.prepared.task.loss)
        if train_step(loop, state, batch) and after_step(loop, state):  # False: an accumulation goes on
            stop = True
            break
    if state.batches_done >= len(loop.train_loader):  # the epoch ran to its end
        end_epoch(loop, state)
    return stop


def train_step(loop: Loop, state: TrainState, batch: tasks.Batch) -> bool:
    """Forward, backward and (once the accumulation is complete) an optimizer step; True when
    the optimizer stepped."""
    accelerator, started = loop.accelerator, time.perf_counter()
    with accelerator.accumulate(loop.model):
        with accelerator.autocast():  # train.precision: the task's forwards (it may call the body itself), not backward
            loss, metrics = loop.prepared.task.loss(loop.model, batch)
        value = loss.item()  # the step's one wait for the device: the check and the logs read it
        if not math.isfinite(value):
            raise UserError(f"the loss became {value} at step {state.step}; "
                            f"the last good checkpoint is kept in {loop.run_dir / runs.CHECKPOINT}")
        accelerator.backward(loss)
        if accelerator.sync_gradients and loop.cfg.train.max_grad_norm is not None:
            accelerator.clip_grad_norm_(loop.params, loop.cfg.train.max_grad_norm)
        loop.optimizer.step()
        if accelerator.sync_gradients:  # a method's work after each real step reads the gradients
            methods.after_step(accelerator.unwrap_model(loop.model), loop.cfg.method, state.step)
        loop.optimizer.zero_grad()
    state.batches_done += 1
    state.train_tokens += int(metrics["tokens"]) * accelerator.num_processes
    state.train_positions += int(metrics["positions"]) * accelerator.num_processes
    state.train_seconds += time.perf_counter() - started
    loop.window.append(value)
    # The epoch's (and the log window's) running train loss and task metrics: this process's batches.
    state.epoch_sums["loss"] = state.epoch_sums.get("loss", 0.0) + value * metrics["examples"]
    for sums in (state.epoch_sums, loop.window_sums):
        for key, amount in metrics.items():
            if key not in ("tokens", "positions"):
                sums[key] = sums.get(key, 0.0) + float(amount)
    return accelerator.sync_gradients


def after_step(loop: Loop, state: TrainState) -> bool:
    """Schedule, progress, the train log and step-wise validation; True when training should stop."""
    if not loop.accelerator.optimizer_step_was_skipped:  # fp16: the scaler skips a step that overflowed
        loop.scheduler.step()
    state.step += 1
    loop.bar.update(1)
    window_loss = sum(loop.window) / len(loop.window)
    tokens_per_s = state.train_tokens / max(state.train_seconds, 1e-9)
    loop.bar.set_postfix(epoch=state.epoch + 1, loss=f"{window_loss:.4f}", tok_s=f"{tokens_per_s:.0f}")
    if state.step % LOG_EVERY_STEPS == 0 and loop.main:
        n = max(loop.window_sums.get("examples", 0), 1)
        task_metrics = {k: v / n for k, v in loop.window_sums.items() if k not in COUNTS}  # e.g. DPO's rewards
        loop.sinks.log({"split": "train", "step": state.step, "loss": window_loss, **task_metrics,
                        "lr": loop.scheduler.get_last_lr()[0], "tokens_per_second": tokens_per_s})
        loop.window, loop.window_sums = [], {}
    stop = False
    if loop.cfg.train.eval_every_steps and state.step % loop.cfg.train.eval_every_steps == 0:
        stop = validate(loop, state)
    return stop or state.step >= loop.total_steps


def end_epoch(loop: Loop, state: TrainState) -> None:
    """Log the epoch's train loss and task metrics, and start the next epoch."""
    state.epoch += 1
    state.batches_done = 0
    sums = all_processes(loop, state.epoch_sums)
    n = max(sums.get("examples", 0), 1)
    record = {"split": "train_epoch", "step": state.step, "epoch": state.epoch,
              **{key: value / n for key, value in sums.items() if key not in COUNTS}}
    loop.sinks.log(record)  # no sinks but on the main process
    if loop.main:
        shown = "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in ("split", "step", "epoch"))
        loop.bar.write(f"epoch {record['epoch']} step {record['step']}: train {shown}", file=sys.stderr)
    state.epoch_sums = {}


def all_processes(loop: Loop, sums: dict[str, float]) -> dict[str, float]:
    """Per-example sums over every process's batches (each process keeps its own)."""
    if loop.accelerator.num_processes == 1:
        return sums
    keys = sorted(sums)  # the same keys on every process: one task, one loss
    values = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=loop.accelerator.device)
    return dict(zip(keys, loop.accelerator.reduce(values, reduction="sum").tolist()))


def validate(loop: Loop, state: TrainState) -> bool:
    """Evaluate on validation, keep the best checkpoint, snapshot; True means stop early."""
    state.loop_seconds = time.perf_counter() - loop.clock
    with loop.accelerator.autocast():
        metrics = loop.prepared.task.evaluate(loop.model, loop.valid_loader, loop.accelerator, loop.prepared,
                                              "validation")
    epoch = round(state.epoch + state.batches_done / max(len(loop.train_loader), 1), 4)
    score = metrics[loop.select_metric]
    improved = state.best is None or (score > state.best if loop.higher_is_better else score < state.best)
    unwrapped = loop.accelerator.unwrap_model(loop.model)
    loop.sinks.log({"split": "validation", "step": state.step, "epoch": epoch, **metrics})
    if loop.main:
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        loop.bar.write(f"epoch {epoch:.2f} step {state.step}: validation {shown}", file=sys.stderr)
    if improved:
        state.best, state.best_step, state.best_epoch, state.best_validation = score, state.step, epoch, metrics
        state.bad_evals = 0
        best = sharding.whole(inference_state(unwrapped), loop.main)  # every process: a sharded run gathers
        if loop.main:
            runs.save_checkpoint(loop.run_dir, best,
                                 {"method": loop.cfg.method.name, "step": state.step, "validation": metrics})
    else:
        state.bad_evals += 1
    state.last_eval_step = state.step
    process_rngs = gather_object([torch.get_rng_state()]) if loop.accelerator.num_processes > 1 else None
    tensors = sharding.whole(trainable_state(unwrapped), loop.main)
    optimizer_state = sharding.whole_optimizer_state(loop.optimizer, loop.main)
    if loop.main:
        runs.save_state(loop.run_dir, tensors, optimizer_state, loop.scheduler, asdict(state), process_rngs)
    loop.accelerator.wait_for_everyone()
    if agreed(loop, loop.sinks.should_stop):
        state.pruned = True
        loop.bar.write(f"step {state.step}: the sweep's pruner stops this trial", file=sys.stderr)
    return state.pruned or (loop.cfg.train.patience is not None and state.bad_evals >= loop.cfg.train.patience)


def agreed(loop: Loop, decide) -> bool:
    """The main process's ``decide()``, the same on every process (a sweep's pruner is asked once)."""
    decision = [bool(decide()) if loop.main else False]
    if loop.accelerator.num_processes > 1:
        broadcast_object_list(decision)
    return decision[0]


def finish(loop: Loop, state: TrainState, started: float) -> Summary:
    """Test the best-validation checkpoint (not the last weights); write samples and the summary."""
    cfg, prepared, run_dir, task = loop.cfg, loop.prepared, loop.run_dir, loop.prepared.task
    load_trainable_state(loop.accelerator.unwrap_model(loop.model),
                         runs.load_checked_tensors(run_dir, f"{runs.CHECKPOINT}/{runs.MODEL_FILE}"))
    test, predictions, after = {}, None, {}
    if cfg.eval.test:  # off for a tuned comparison's trials: only its final runs ever see test
        test = task.evaluate(loop.model, loop.test_loader, loop.accelerator, prepared, "test")
        predictions = test.pop("predictions", None)
        after = task.after_training(loop.model, loop.accelerator, prepared)
    unwrapped = loop.accelerator.unwrap_model(loop.model)  # measured on the main process alone: no collectives
    # A sharded model runs only with every process: its forgetting is measured by all, its
    # inference cost (timing gathers, not serving) by none.
    sharded = sharding.is_sharded(loop.accelerator)
    timed = inference.measure(unwrapped, prepared, cfg.eval.inference_examples,
                              cfg.eval.batch_size) if cfg.eval.test and loop.main and not sharded else None
    general = forgetting.result(unwrapped, prepared, state.general_before) if loop.main or sharded else None
    before = state.before or {}
    summary = Summary(
        method=cfg.method.name, model=cfg.model.name, data=cfg.data.name, task=cfg.task.name,
        primary_metric=cfg.task.primary_metric, higher_is_better=cfg.task.is_higher_better(),
        metrics=declarations((*cfg.task.metrics, *cfg.task.result_metrics)),
        select_metric=loop.select_metric, test=test, validation=state.best_validation, before=before.get("test"),
        best_step=state.best_step, best_epoch=state.best_epoch, steps=state.step, stopped_early=state.stopped_early,
        trainable_params=prepared.counts.trainable, added_params=prepared.counts.added,
        total_params=prepared.counts.total, trainable_percent=prepared.counts.trainable_percent,
        checkpoint_bytes=runs.checkpoint_bytes(run_dir), train_time_s=state.loop_seconds,
        wall_time_s=time.perf_counter() - started,
        tokens_per_second=state.train_tokens / max(state.train_seconds, 1e-9), train_steps_s=state.train_seconds,
        inference=timed, forgetting=general,
        padding_fraction=1 - state.train_tokens / state.train_positions if state.train_positions else None,
        pruned=state.pruned, task_results=after.get("results") or {}, checksums=runs.checksums(run_dir),
        dropped_examples=prepared.dropped,
        train_examples=len(prepared.splits["train"]), test_examples=len(prepared.splits["test"]),
        label_names=prepared.label_names, **profile.peak_memory(loop.accelerator.device), memory=state.memory,
        device=str(loop.accelerator.device), num_processes=loop.accelerator.num_processes,
        versions=runs.versions(), git_hash=runs.git_hash(), run_dir=run_dir)
    if loop.main:
        if before.get("samples") or after.get("samples"):
            runs.write_json(run_dir / "samples.json", {"before": before.get("samples"), "after": after.get("samples")})
        if cfg.eval.test:
            loop.sinks.log({"split": "test", "step": state.step, **test})
        if predictions is not None:
            write_predictions(run_dir / PREDICTIONS, predictions, loop.test_order)
        summary.write(run_dir)
        runs.remove_state(run_dir)
    return summary


def write_predictions(path: Path, predictions: list[dict[str, Any]], order: list[int]) -> None:
    """One line per test example, by its index in the test split (the loader ran length-sorted)."""
    by_id = sorted(zip(order, predictions), key=lambda pair: pair[0])
    runs.atomic_write_text(path, "".join(json.dumps({"id": i, **p}) + "\n" for i, p in by_id))
