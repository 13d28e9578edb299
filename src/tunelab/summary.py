"""``summary.json``: what a finished run reports, each number once.

Written by the training loop at the end of a run and read as it is by ``tunelab report``,
``compare`` and anyone scripting over run directories. The metrics of a split stay together
in one mapping (``test``, ``validation``, ``before``), named as the task names them.
Importing this module needs no torch: the comparison's own process reads summaries.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

FILE = "summary.json"


@dataclass
class Summary:
    method: str
    model: str
    data: str
    task: str
    primary_metric: str
    """The headline test number of the task (accuracy, perplexity, rougeL)."""
    higher_is_better: bool
    """Of the primary metric."""
    select_metric: str
    """The validation metric that picked the best checkpoint."""
    test: dict[str, Any]
    """Test metrics of the best-validation checkpoint (always with ``loss``)."""
    validation: dict[str, Any]
    """Validation metrics of that checkpoint."""
    best_step: int | None
    best_epoch: float | None
    steps: int
    """Optimizer steps taken."""
    stopped_early: bool
    trainable_params: int
    added_params: int
    """Parameters the task head and the method add to the pretrained model."""
    total_params: int
    trainable_percent: float
    checkpoint_bytes: int
    train_time_s: float
    """The training loop's wall time, validations included."""
    wall_time_s: float
    """Set-up, training, test and writing together."""
    tokens_per_second: float
    """Non-pad training tokens per second of training steps."""
    train_examples: int
    test_examples: int
    label_names: list[str]
    peak_memory_bytes: int
    peak_memory_kind: str
    """``cpu_peak_rss`` (the process's peak resident set) or ``cuda_max_allocated``."""
    memory: dict[str, Any] | None
    """Bytes of the first training step: weights, gradients, optimizer state, activations."""
    device: str
    num_processes: int
    versions: dict[str, str]
    git_hash: str | None
    before: dict[str, Any] | None = None
    """Test metrics of the base model before training, where the task measures them (lm)."""
    forgetting: dict[str, Any] | None = None
    """A causal LM's perplexity on general text (``eval.general_text``) before and after training
    (tunelab.forgetting): ``corpus``, ``tokens``, ``before``, ``after``, ``increase``."""
    inference: dict[str, Any] | None = None
    """The best checkpoint's inference cost (tunelab.inference): ms per example at batch 1 and
    at the evaluation batch, examples/s, ms per generated token; ``merged`` the same, merged."""
    train_steps_s: float | None = None
    """Time inside training steps alone (no validation, no test): what tokens/s and steps/s divide by."""
    padding_fraction: float | None = None
    """Of the tokens in the training batches, the share that was padding."""
    dropped_examples: int = 0
    """Examples dropped for a missing label or text (``data.drop_missing``), and preference pairs
    left out because their chosen and rejected responses are the same."""
    metrics: dict[str, dict[str, Any]] | None = None
    """Every metric of the task with its declaration: direction, kind and the predictions.jsonl
    fields of its per-example values (tunelab.tasks.metrics); the report reads them here."""
    task_results: dict[str, Any] = field(default_factory=dict)
    """What only this run's task reports (preference: ``generation``, ``reference``), written
    to summary.json under the task's name rather than as fields of every summary."""
    pruned: bool = False
    """A sweep's pruner stopped this trial at a validation (tunelab.sweeps)."""
    checksums: dict[str, str] | None = None
    """sha256 of the files a later command trusts (the checkpoint's tensors, an LSTM's vocab.json),
    by their path in the run directory; eval, predict, generate, export check them first."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys of a summary written by another tunelab version that this one does not know."""
    run_dir: Path | None = field(default=None, compare=False)
    """Where the run is (not written: a run directory can be moved); ``tunelab.load`` takes it."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("run_dir")
        data.update(data.pop("extra"))
        results = data.pop("task_results")
        if results:
            data[self.task] = results
        return data

    def write(self, run_dir: Path) -> None:
        from tunelab.runs import write_json

        write_json(run_dir / FILE, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Summary":
        known = {f.name for f in fields(cls)} - {"extra", "task_results", "run_dir"}
        values = {k: v for k, v in data.items() if k in known}
        results = data.get(data.get("task"))
        values["task_results"] = results if isinstance(results, dict) else {}
        known.add(data.get("task"))
        for f in fields(cls):  # an older or partial summary: an absent value is unknown, not an error
            if f.name in known and f.name not in values and f.default is MISSING and f.default_factory is MISSING:
                values[f.name] = None
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def metric_declarations(self) -> dict[str, Any]:
        """The task's metric declarations (tunelab.tasks.metrics.Metric by name): those the run
        wrote, or for a run written before summaries carried them, the task's own."""
        from tunelab.tasks import TASKS
        from tunelab.tasks.metrics import Metric, from_declarations

        if self.metrics:
            return from_declarations(self.metrics)
        options = TASKS.options(self.task) if self.task in TASKS.names() else None
        declared: tuple[Metric, ...] = (*options.metrics, *options.result_metrics) if options else ()
        return {m.name: m for m in declared}

    def task_result(self, path: str) -> Any:
        """A value of the task's own results by its dotted path (``generation.reward``)."""
        node: Any = self.task_results
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    @classmethod
    def read(cls, run_dir: Path) -> "Summary":
        summary = cls.from_dict(json.loads((run_dir / FILE).read_text(encoding="utf-8")))
        summary.run_dir = Path(run_dir)
        return summary

    def metric(self, split: str, name: str) -> Any:
        """One metric of ``test``, ``validation`` or ``before`` (None when absent)."""
        return (getattr(self, split) or {}).get(name)
