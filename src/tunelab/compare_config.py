"""The config of a comparison (``tunelab compare``): the shared run sections, the methods to
run on them, seeds, and the tuning every method gets before its final runs.

Validated once, at the edge, like a run's config (:mod:`tunelab.config`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializeAsAny, field_validator

from tunelab.config import DataConfig, EvalConfig, ModelConfig, Tracker, TrainConfig
from tunelab.schema import Strict
from tunelab.tasks import TASKS
from tunelab.tasks.options import ClassificationTask, TaskOptions


class CompareOutput(Strict):
    dir: str | None = None
    """Comparison directory (one run directory per method and seed, plus the report).
    None: runs/compare-<model>-<data>, with -quick added under --quick."""
    track: list[Tracker] = []
    """Trackers every run logs to (``--track``), grouped by the comparison directory's name."""


class TuneConfig(Strict):
    """Equal tuning before a comparison: every method gets the same number of trials of a search on
    validation, then its chosen configuration runs with ``seeds`` seeds; only those final runs see test."""

    trials: int = Field(5, ge=1, le=1000)
    """Trials of every method's search: the same number for each (completed or pruned)."""
    lr_factor: float = Field(10.0, gt=1)
    """The default search: ``train.lr`` on a log scale over [lr / lr_factor, lr x lr_factor] around
    the learning rate each method's entry gives."""
    search: dict[str, Any] = {}
    """More keys for every method (or a wider ``train.lr``), as a sweep's ``search`` writes them; a
    method's entry adds its own under ``methods.<name>.tune.search`` (``method.r: [4, 8, 16]``)."""
    sampler: Literal["grid", "random", "tpe"] = "grid"
    """grid: one searched range is cut into ``trials`` evenly spaced values (log-spaced on a log
    range: with an odd count the entry's own value is one of them), or lists whose product has
    ``trials`` points; random: the same seeded draws for every method; tpe: Optuna's TPE, each trial
    seeded by its index so that a resumed comparison asks the same trials."""
    pruner: Literal["none", "median", "hyperband"] = "none"
    """none: every trial runs its whole budget. median: stop a trial whose validation objective
    is worse than the median of the method's finished trials at the same step (a pruned trial
    counts as one of the method's trials). Measured on the default comparison, median pruning at
    the first validation stopped BitFit's best learning rate, which starts slowly (docs/RESULTS.md):
    with a few trials, pruning saves little time and can cost the method its best value."""
    pruner_startup_trials: int = Field(2, ge=0)
    metric: str | None = None
    """The validation metric the search optimises; None: the metric that picks each run's
    checkpoint (accuracy for classification, loss for lm). Its direction is the task's."""
    seed: int = 0
    """Seed of the random and TPE samplers."""

    @field_validator("search")
    @classmethod
    def _dotted(cls, search: dict[str, Any]) -> dict[str, Any]:
        for key in search:
            if key.count(".") != 1:
                raise ValueError(f"search key {key!r} must be section.key, e.g. train.lr")
        return search


class CompareConfig(Strict):
    """Every method runs with these sections; `methods` says which methods and what differs."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    task: SerializeAsAny[TaskOptions] = ClassificationTask()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    methods: dict[str, dict[str, Any] | None] | None = None
    """Run name -> overrides of the sections above for that method's runs, in the sections'
    own shape: `lora: {method: {r: 16}, train: {lr: 2.0e-3}}`. The method is the run name
    unless `method.name` names another (`lora-r64: {method: {name: lora, r: 64}}`); an empty
    entry (`ia3: {}`) runs the method with its defaults. None: every registered method."""
    seeds: int = Field(1, ge=1, le=100)
    """Run every method with seeds train.seed, train.seed + 1, ...; the report gives mean ± std."""
    tune: TuneConfig | None = None
    """Tune every method with the same budget on validation before its final runs (``--tune``).
    None: each method runs at the learning rate its entry gives."""
    eval_sets: list[str] = []
    """Other data every final run is also evaluated on, all of its rows unless ``data`` caps the
    test split (``max_test_examples``, else ``max_eval_examples``: the same cap; an embedded name or a
    file, as ``tunelab eval --data.name`` takes it; labels mapped onto the run's by name): the
    report shows each set's numbers, intervals and paired tests, and whether the ranking holds."""
    launcher: str | None = None
    """Start each run's training with this launcher, e.g. ``torchrun --nproc_per_node 2`` or
    ``accelerate launch --num_processes 2``; None: one process."""
    output: CompareOutput = CompareOutput()

    _task = field_validator("task", mode="before")(lambda cls, value: TASKS.parse(value))
