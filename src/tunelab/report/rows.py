"""From runs to rows: one row per method (mean ± std over its seeds), the columns any row has,
the cells as shown, the Pareto front, and results.csv / runs.csv with the raw values."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from tunelab import files
from tunelab.report.collect import Run
from tunelab.report.per_example import examples, metric_of
from tunelab.report.stats import bootstrap_interval, wilson_interval
from tunelab.summary import Summary

COUNTS = {"examples"}
"""The entry of a split's metrics that counts what was evaluated (every task reports it): no
column. Which metric means what is the task's to say (summary.json ``metrics``)."""


@dataclass
class Column:
    key: str
    """The results.csv column; the same keys for every summary format."""
    header: str
    kind: str
    """How the Markdown/HTML cell shows it: a key of FORMATS."""
    interval: bool = False
    """A test metric with an interval over the test examples (Wilson for a proportion, a
    bootstrap otherwise): the cell shows it, and results.csv has ``<key>_ci_low``, ``_ci_high``."""


@dataclass
class Row:
    name: str
    runs: list[Run]
    values: dict[str, list[Any]] = field(default_factory=dict)
    """Column key -> the value of every run (None where a run lacks it)."""
    intervals: dict[str, tuple[float, float] | None] = field(default_factory=dict, repr=False)
    """Intervals worked out so far (a bootstrap is worth doing once)."""

    def mean(self, key: str) -> float | int | None:
        found = [v for v in self.values.get(key, []) if v is not None]
        if not found:
            return None
        return found[0] if len(found) == 1 else statistics.fmean(found)

    def std(self, key: str) -> float | None:
        found = [v for v in self.values.get(key, []) if v is not None]
        return statistics.stdev(found) if len(found) > 1 else None

    def interval(self, key: str) -> tuple[float, float] | None:
        """The 95 % interval of a test metric (``test_<metric>``) over the row's test examples, at
        the mean over seeds: Wilson's for a proportion, else a bootstrap over the examples'
        values in predictions.jsonl; None for other columns or without the values it needs."""
        if key not in self.intervals:
            self.intervals[key] = self._interval(key)
        return self.intervals[key]

    def _interval(self, key: str) -> tuple[float, float] | None:
        metric = metric_of(self.runs[0], key.removeprefix("test_")) if key.startswith("test_") else None
        value = self.mean(key)
        if metric is None or not metric.has_interval or value is None:
            return None
        if metric.kind == "proportion":
            n = examples_tested(self.runs[0].summary)
            return wilson_interval(value, n) if n else None
        found = examples(self.runs, metric.name)
        return bootstrap_interval(found.samples) if found.samples is not None else None


SUMMARY_COLUMNS = [
    Column("trainable_params", "trainable", "int"),
    Column("added_params", "added", "int"),
    Column("total_params", "total", "int"),
    Column("trainable_percent", "trainable %", "percent"),
    Column("checkpoint_bytes", "checkpoint (MB)", "mb"),
    Column("train_time_s", "train time (s)", "seconds"),
    Column("wall_time_s", "wall time (s)", "seconds"),
    Column("tokens_per_second", "tokens/s", "rate"),
    Column("peak_memory_bytes", "peak memory (MB)", "mb"),
    Column("best_epoch", "best epoch", "epoch"),
    Column("best_step", "best step", "int"),
    Column("steps", "steps", "int"),
]
"""Columns read straight from a Summary field of the same name."""

MEMORY_COLUMNS = [
    Column("memory_weights_bytes", "weights (MB)", "mb"),
    Column("memory_gradients_bytes", "gradients (MB)", "mb"),
    Column("memory_optimizer_bytes", "optimizer state (MB)", "mb"),
    Column("memory_activations_bytes", "activations (MB)", "mb"),
    Column("memory_forward_peak_bytes", "forward peak (MB)", "mb"),
    Column("memory_backward_peak_bytes", "backward peak (MB)", "mb"),
    Column("memory_cuda_forward_peak_bytes", "CUDA after forward (MB)", "mb"),
    Column("memory_cuda_backward_peak_bytes", "CUDA after backward (MB)", "mb"),
]
"""Columns of the summary's ``memory`` mapping (``memory_<key>``)."""

FORGETTING_COLUMNS = [
    Column("forgetting_before", "general ppl before", "metric"),
    Column("forgetting_after", "general ppl after", "metric"),
    Column("forgetting_increase", "general ppl change", "percent_change"),
]
"""A causal LM's perplexity on general text before and after training (summary ``forgetting``)."""

INFERENCE_COLUMNS = [
    Column("inference_batch1_ms", "ms / example, batch 1", "ms"),
    Column("inference_merged_batch1_ms", "merged: ms / example, batch 1", "ms"),
    Column("inference_batch_ms", "ms / example, eval batch", "ms"),
    Column("inference_merged_batch_ms", "merged: ms / example, eval batch", "ms"),
    Column("inference_examples_per_s", "examples/s", "rate"),
    Column("inference_token_ms", "ms / generated token", "ms"),
    Column("inference_merged_token_ms", "merged: ms / generated token", "ms"),
]
"""Columns of the summary's ``inference`` mapping: ``inference_<key>``, ``inference_merged_<key>``."""


def inference_values(inference: dict[str, Any] | None) -> dict[str, Any]:
    """A run's inference numbers under their column keys."""
    found = {"inference": inference or {}, "inference_merged": (inference or {}).get("merged") or {}}
    out = {}
    for column in INFERENCE_COLUMNS:
        source = "inference_merged" if column.key.startswith("inference_merged_") else "inference"
        out[column.key] = found[source].get(column.key.removeprefix(source + "_"))
    return out


def scores(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The numbers of one split's metrics that score the run (no counts, no flags)."""
    return {k: v for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in COUNTS}


def examples_tested(summary: Summary) -> int | None:
    """How many test examples the test metrics are over (the summary's split count first)."""
    count = (summary.test or {}).get("examples")
    return int(count) if isinstance(count, (int, float)) and count else summary.test_examples


def primary_metric(summary: Summary) -> tuple[str, bool]:
    """The metric a run is judged by and whether higher is better (accuracy for older runs)."""
    metric = summary.primary_metric or "accuracy"
    higher = summary.higher_is_better
    if higher is None:  # a summary older than the field: the direction of the task that reports the metric
        from tunelab.tasks import TASKS

        declared = summary.metric_declarations().get(metric) or next(
            (m for name in TASKS.names() for m in TASKS.options(name).metrics if m.name == metric), None)
        higher = declared is None or declared.higher_is_better is not False
    return metric, bool(higher)


def run_values(run: Run) -> dict[str, Any]:
    """Everything the report shows for one run, flat, under its results.csv column keys.

    The summary holds each number once, a split's metrics together; the keys here are the ones
    results.csv has always had, so that a table of the same runs does not change.
    """
    s = run.summary
    metric, _ = primary_metric(s)
    values: dict[str, Any] = {f"test_{k}": v for k, v in scores(s.test).items()}
    values.update({f"test_{k}_before": v for k, v in scores(s.before).items()})
    values[f"validation_{metric}"] = s.metric("validation", metric)
    values["eval_loss"] = s.metric("validation", "loss")
    values.update({m.name: s.task_result(m.field) for m in s.metric_declarations().values() if m.in_results})
    values.update({c.key: getattr(s, c.key) for c in SUMMARY_COLUMNS})
    memory = s.memory or {}
    values.update({c.key: memory.get(c.key.removeprefix("memory_")) for c in MEMORY_COLUMNS})
    values.update(inference_values(s.inference))
    values.update({c.key: (s.forgetting or {}).get(c.key.removeprefix("forgetting_")) for c in FORGETTING_COLUMNS})
    return values


def make_rows(runs: list[Run]) -> list[Row]:
    """One row per run name, in the order the runs come."""
    rows: dict[str, Row] = {}
    for run in runs:
        rows.setdefault(run.name, Row(run.name, [])).runs.append(run)
    for row in rows.values():
        per_run = [run_values(r) for r in row.runs]
        keys = dict.fromkeys(k for values in per_run for k in values)
        row.values = {k: [values.get(k) for values in per_run] for k in keys}
    return list(rows.values())


def report_metric(runs: list[Run]) -> tuple[str, bool]:
    """The primary metric most runs share (the Pareto plot's axis)."""
    found = [primary_metric(r.summary) for r in runs]
    return max(set(found), key=found.count) if found else ("accuracy", True)


def main_columns(rows: list[Row], metric: str) -> list[Column]:
    """The results table: every test metric (the primary one first), the validation metric,
    then parameters, time and memory; only columns some row has a value for."""
    declared = declared_metrics(rows)
    tests = {k.removeprefix("test_") for row in rows for k in row.values if k.startswith("test_")}
    ordered = [metric] if metric in tests else []
    ordered += [m for m in declared if m in tests and m not in ordered]  # the task's own order
    ordered += sorted(tests - set(ordered))
    columns = [Column(f"test_{m}", f"test {m}", "metric", interval=m in declared and declared[m].has_interval)
               for m in ordered]
    columns += [Column(f"validation_{metric}", f"val. {metric}", "metric"), Column("eval_loss", "eval loss", "metric")]
    columns += [Column(m.name, m.name.replace("_", " "), "metric") for m in declared.values() if m.in_results]
    return present(columns + FORGETTING_COLUMNS + SUMMARY_COLUMNS, rows)


def declared_metrics(rows: list[Row]) -> dict:
    """Every metric the rows' tasks declare (tunelab.tasks.metrics.Metric by name), in order."""
    found: dict = {}
    for row in rows:
        for name, metric in row.runs[0].summary.metric_declarations().items():
            found.setdefault(name, metric)
    return found


def present(columns: list[Column], rows: list[Row]) -> list[Column]:
    """Columns that at least one row has a value for; the others are dropped."""
    return [c for c in columns if any(row.mean(c.key) is not None for row in rows)]


# --------------------------------------------------------------------------------------------
# The Pareto front: computed once, for the plot and for the notes under the table


def pareto_front(points: list[tuple[str, float, float]], higher_is_better: bool) -> list[str]:
    """Names of the points no other point beats on both fewer trainable parameters and a
    better metric; ``points`` are (name, trainable parameters, metric)."""
    sign = 1 if higher_is_better else -1
    front = []
    for name, params, score in points:
        dominated = any(p2 <= params and sign * s2 >= sign * score and (p2 < params or sign * s2 > sign * score)
                        for n2, p2, s2 in points if n2 != name)
        if not dominated:
            front.append(name)
    return front


@dataclass
class Pareto:
    """The primary test metric against trainable parameters, one point per row."""
    metric: str
    higher_is_better: bool
    points: list[tuple[str, float, float]]
    """(row name, trainable parameters, test metric) of every row that has both."""
    front: list[str]
    """Names of the rows on the Pareto front, fewest trainable parameters first."""

    @classmethod
    def of(cls, rows: list[Row], metric: str, higher_is_better: bool) -> "Pareto":
        points = [(row.name, row.mean("trainable_params"), row.mean(f"test_{metric}")) for row in rows]
        points = [p for p in points if p[1] is not None and p[2] is not None]
        on_front = set(pareto_front(points, higher_is_better))
        front = [name for name, _, _ in sorted(points, key=lambda p: p[1]) if name in on_front]
        return cls(metric, higher_is_better, points, front)


@dataclass
class Results:
    """What the tables, plots and notes of a report show."""
    rows: list[Row]
    columns: list[Column]
    """The results table's columns."""
    memory_columns: list[Column]
    """The memory table's columns (none where no run profiled its memory)."""
    pareto: Pareto
    inference_columns: list[Column] = field(default_factory=list)
    """The inference table's columns (none where no run timed its inference)."""


def results(runs: list[Run]) -> Results:
    """Rows, columns and the Pareto front of the runs, each worked out once for the whole report."""
    rows = make_rows(runs)
    metric, higher = report_metric(runs)
    return Results(rows, main_columns(rows, metric), present(MEMORY_COLUMNS, rows), Pareto.of(rows, metric, higher),
                   present(INFERENCE_COLUMNS, rows))


# --------------------------------------------------------------------------------------------
# Cells as shown in Markdown and HTML


def _mb(value: float) -> str:
    megabytes = value / 1e6
    if megabytes == 0:
        return "0"
    decimals = max(0, 2 - math.floor(math.log10(abs(megabytes))))  # three significant digits, no exponent
    return f"{megabytes:.{decimals}f}"


FORMATS: dict[str, Callable[[float], str]] = {
    "metric": lambda v: f"{v:.4f}",
    "int": lambda v: f"{v:,.0f}",
    "percent": lambda v: f"{v:.4g}" if abs(v) >= 1e-4 else f"{v:.6f}",
    "mb": _mb,
    "seconds": lambda v: f"{v:.1f}",
    "percent_change": lambda v: f"{100 * v:+.1f} %",
    "ms": lambda v: _mb(v * 1e6),  # milliseconds, to three significant digits like megabytes
    "rate": lambda v: f"{v:,.0f}",
    "epoch": lambda v: f"{v:.2f}",
}
EMPTY = "–"


def distinct(values: list[Any]) -> str:
    """The different values, comma-separated in the order met; EMPTY where none is known."""
    found = list(dict.fromkeys(json.dumps(v) if isinstance(v, (dict, list)) else str(v)
                               for v in values if v is not None))
    return ", ".join(found) if found else EMPTY


def cell(row: Row, column: Column) -> str:
    """The shown value: the run's value, or mean ± std over seeds where they differ."""
    mean = row.mean(column.key)
    if mean is None:
        return EMPTY
    text = FORMATS[column.kind](mean)
    std = row.std(column.key)
    text = f"{text} ± {FORMATS[column.kind](std)}" if std else text
    interval = row.interval(column.key) if column.interval else None
    return f"{text} [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else text


def table_cells(rows: list[Row], columns: list[Column]) -> tuple[list[str], list[list[str]]]:
    """Headers and body of a table; a ``runs`` column only where some method has several seeds."""
    seeds = any(len(row.runs) > 1 for row in rows)
    headers = ["method"] + (["runs"] if seeds else []) + [c.header for c in columns]
    body = [[row.name] + ([str(len(row.runs))] if seeds else []) + [cell(row, c) for c in columns] for row in rows]
    return headers, body


# --------------------------------------------------------------------------------------------
# CSV: raw values, full precision


def write_csv(path: Path, rows: list[Row], columns: list[Column]) -> None:
    """One row per method: each value as the run has it (mean over seeds, plus `<key>_std`),
    then the 95 % Wilson bounds of every proportion column (appended: the columns before keep
    their order)."""
    seeds = any(len(row.runs) > 1 for row in rows)
    keys = [c.key for c in columns]
    intervals = [c.key for c in columns if c.interval and any(row.interval(c.key) for row in rows)]
    header = ["method", "model", "data", "task", "primary_metric", "runs", "seeds"]
    header += [k for key in keys for k in ([key, f"{key}_std"] if seeds else [key])]
    header += [f"{key}_ci_{end}" for key in intervals for end in ("low", "high")]
    lines = []
    for row in rows:
        first = row.runs[0].summary
        line = [row.name, first.model, first.data, first.task, primary_metric(first)[0], len(row.runs),
                ";".join(str(r.seed) for r in row.runs)]
        for key in keys:
            line += [_raw(row.mean(key)), _raw(row.std(key))] if seeds else [_raw(row.mean(key))]
        for key in intervals:
            line += list(row.interval(key) or ("", ""))
        lines.append(line)
    _write(path, header, lines)


def write_runs_csv(path: Path, runs: list[Run], columns: list[Column]) -> None:
    """One row per run, for anyone who wants the seeds apart."""
    lines = []
    for run in runs:
        values = run_values(run)
        lines.append([run.name, str(run.path), run.seed] + [_raw(values.get(c.key)) for c in columns])
    _write(path, ["method", "run_dir", "seed"] + [c.key for c in columns], lines)


def _write(path: Path, header: list[str], lines: Iterable[list[Any]]) -> None:
    files.write_csv(path, header, lines)


def _raw(value: Any) -> Any:
    # str() of a float is its shortest exact repr, so the CSV reads back to the same number.
    return "" if value is None else value
