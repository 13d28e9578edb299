"""The task protocol and the registry of tasks: the one place that lists their names.

A task turns data into batches, a loss and metrics; the one training loop runs every task the
same way. A task is a module (:class:`Task`) plus its options class in
:mod:`tunelab.tasks.options`, registered below; what is known of a task without loading it (its
metrics, whether it needs a causal LM) is on the options class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Protocol

from tunelab.registry import Registry
from tunelab.tasks import options as opts
from tunelab.tasks.preference_options import PreferenceTask

if TYPE_CHECKING:
    import datasets
    import torch
    from accelerate import Accelerator
    from torch import nn

    from tunelab.config import RunConfig
    from tunelab.methods.common import ParameterCounts

Batch = dict[str, Any]
SERVED_INPUTS = "served_inputs"
"""``Prepared.extras`` key of ``(test examples, collate)`` as a served model gets them, where the
splits hold something else (a head-only run's cached features); tunelab.inference times them."""


@dataclass
class Prepared:
    """What a task's ``prepare`` makes of a config: everything the loop needs, checked."""

    model: nn.Module
    tokenizer: Any
    """A Hugging Face tokenizer, or the LSTM's word vocabulary."""
    splits: datasets.DatasetDict
    """Tokenized train/validation/test."""
    collate: Callable[[list[dict]], Batch]
    """Pads a list of examples of ``splits`` into a batch."""
    label_names: list[str]
    counts: ParameterCounts
    task: ModuleType
    """The task module that scores and evaluates the batches."""
    cfg: RunConfig
    extras: dict[str, Any] = field(default_factory=dict)
    """Task-specific values computed once (label-word token ids, demonstrations, ...)."""
    files: dict[str, str] = field(default_factory=dict)
    """Text files to write into the run directory (name -> content)."""
    encode_texts: Callable[[list[str]], list[dict]] | None = None
    """Unlabelled texts as examples for ``collate`` (``tunelab predict``); None where the task
    does not label raw texts."""
    dropped: int = 0
    """Examples the data lost to a missing label or text (``data.drop_missing``)."""
    lengths: dict[str, list[int]] | None = None
    """Each split's example lengths in tokens, where the task knows them better than the
    batches show (cached features have none); else the loop reads them off the batches."""


class Task(Protocol):
    """What a task module provides."""

    def prepare(self, cfg: RunConfig, raw: datasets.DatasetDict) -> Prepared:
        """Tokenizer, tokenized splits, the model with the method applied. Every check on the
        input happens here, before a run directory exists."""

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        """The scalar the loop minimises, and the batch's counts: ``examples``, ``tokens``
        (non-pad input tokens) and ``positions`` (padding included), plus per-example sums (e.g.
        ``accuracy``: the number right) whose mean over the epoch the loop logs."""

    def evaluate(self, model: nn.Module, loader, accelerator: Accelerator, prepared: Prepared,
                 split: str) -> dict[str, Any]:
        """Metrics of a split, always with ``loss`` and the primary metric; on test also
        ``predictions``, one record per example in the loader's order (gold, predicted, score,
        correct), which the loop writes to predictions.jsonl."""

    def before_training(self, model: nn.Module, accelerator: Accelerator, prepared: Prepared,
                        test_loader) -> dict[str, Any]:
        """The base model's numbers (``test``) and ``samples``, before anything trains; {} if none."""

    def after_training(self, model: nn.Module, accelerator: Accelerator, prepared: Prepared) -> dict[str, Any]:
        """``samples`` to read beside the numbers, and ``results`` that only this task reports
        (summary.json keeps them under the task's name); {} if none."""


TASKS: Registry[opts.TaskOptions] = Registry(kind="task", package="tunelab.tasks", default="classification")
for _options in (opts.ClassificationTask, opts.InstructTask, opts.AnswerTask, opts.LMTask, opts.SummarizationTask,
                 PreferenceTask):
    TASKS.register(_options)


def select_metric(cfg: RunConfig) -> tuple[str, bool]:
    """The validation metric that picks the best checkpoint, and whether higher is better."""
    name = cfg.train.select_metric
    if name == "auto":
        name = cfg.task.select_metric
    return name, cfg.task.is_higher_better(name)


def causal_tasks() -> list[str]:
    """The tasks that run on a causal LM (whose runs can generate)."""
    return [name for name in TASKS.names() if TASKS.options(name).causal]


def batch_counts(batch: Batch) -> dict[str, Any]:
    """``examples``, non-pad ``tokens`` and padded ``positions`` of a batch with an
    ``attention_mask`` (or, for precomputed features, the ``lengths`` of the inputs they stand for)."""
    if "attention_mask" not in batch:
        return {"examples": len(batch["lengths"]), "tokens": batch["lengths"].sum(),
                "positions": batch["lengths"].sum()}
    mask = batch["attention_mask"]
    return {"examples": mask.shape[0], "tokens": mask.sum(), "positions": mask.numel()}


def gather_objects(accelerator, items: list, count: int) -> list:
    """One batch's per-example Python objects (generated texts) from every process, in the order
    ``gather_for_metrics`` puts their tensors; ``count``, the gathered tensors' length, drops the
    examples that fill up a last batch."""
    if accelerator.num_processes == 1:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)[:count]
