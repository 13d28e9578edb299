"""The comparison report: results.csv, runs.csv, report.md, report.html and PNG plots.

Every number comes from the runs themselves: ``summary.json`` for the table (the primary
metric and every test metric present, parameters, time, memory) and ``metrics.jsonl`` for the
validation curves. Runs of one method with several seeds (``<name>-seed<k>``) form one row with
the mean and the sample standard deviation. ``tunelab report DIR...`` rebuilds all of it from
run directories alone, also across several comparisons.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from tunelab.errors import UserError

SEED_SUFFIX = re.compile(r"-seed\d+$")
LOWER_IS_BETTER = {"loss", "perplexity", "invalid_rate"}
METRIC_ORDER = ["accuracy", "score_accuracy", "invalid_rate", "perplexity", "rouge1", "rouge2", "rougeL", "loss"]
"""Test metrics in this order (after the primary one); others follow alphabetically."""


@dataclass
class Run:
    name: str
    """The row it belongs to: the run directory's name without ``-seed<k>``."""
    path: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    validation: list[dict[str, Any]]
    """Validation records of metrics.jsonl, in order."""


@dataclass
class Column:
    key: str
    header: str
    kind: str
    """How the Markdown/HTML cell shows it: metric, int, percent, mb, seconds, rate, epoch."""


@dataclass
class Row:
    name: str
    runs: list[Run]
    values: dict[str, list[Any]] = field(default_factory=dict)
    """Column key -> the value of every run (None where a run lacks it)."""

    def mean(self, key: str) -> float | int | None:
        found = [v for v in self.values.get(key, []) if v is not None]
        if not found:
            return None
        return found[0] if len(found) == 1 else statistics.fmean(found)

    def std(self, key: str) -> float | None:
        found = [v for v in self.values.get(key, []) if v is not None]
        return statistics.stdev(found) if len(found) > 1 else None


# --------------------------------------------------------------------------------------------
# Reading runs


def read_run(path: Path, name: str) -> Run | None:
    """A finished run directory (summary.json present), else None."""
    summary_file = path / "summary.json"
    if not summary_file.is_file():
        return None
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    config_file = path / "config.yaml"
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    validation = []
    metrics_file = path / "metrics.jsonl"
    if metrics_file.is_file():
        for line in metrics_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                if record.get("split") == "validation":
                    validation.append(record)
    return Run(name, path, summary, config or {}, validation)


def _is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / "summary.json").is_file()


def collect(dirs: list[Path]) -> tuple[list[Run], list[Path], dict[str, str]]:
    """Finished runs, unfinished run directories, and the comparison configs (label -> YAML).

    Each of ``dirs`` is a comparison directory (its run directories are read) or a run
    directory itself. With several comparisons, row names get the comparison's name in front.
    """
    finished: list[Run] = []
    unfinished: list[Path] = []
    configs: dict[str, str] = {}
    comparisons = [d for d in dirs if not _is_run_dir(d)]
    for directory in dirs:
        if not directory.is_dir():
            raise UserError(f"{directory} is not a directory; give comparison or run directories")
        if _is_run_dir(directory):
            candidates, prefix = [directory], ""
        else:
            candidates = sorted(p for p in directory.iterdir() if p.is_dir() and _is_run_dir(p))
            prefix = f"{directory.name}/" if len(comparisons) > 1 else ""
            compare_file = directory / "compare.yaml"
            if compare_file.is_file():
                configs[str(directory)] = compare_file.read_text(encoding="utf-8")
                order = list((yaml.safe_load(configs[str(directory)]) or {}).get("methods") or {})
                rank = {name: i for i, name in enumerate(order)}
                candidates.sort(key=lambda p: (rank.get(SEED_SUFFIX.sub("", p.name), len(rank)), p.name))
        for path in candidates:
            run = read_run(path, prefix + SEED_SUFFIX.sub("", path.name))
            if run is None:
                unfinished.append(path)
            else:
                finished.append(run)
    return finished, unfinished, configs


# --------------------------------------------------------------------------------------------
# From runs to rows


def test_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Every test metric: the `test` dict where the run has one, else the flat `test_<metric>` keys."""
    flat = {k.removeprefix("test_"): v for k, v in summary.items()
            if k.startswith("test_") and k != "test_examples" and isinstance(v, (int, float))}
    nested = summary.get("test") if isinstance(summary.get("test"), dict) else {}
    merged = {**flat, **{k: v for k, v in nested.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}
    merged.pop("examples", None)
    return merged


def primary_metric(summary: dict[str, Any]) -> tuple[str, bool]:
    """The metric a run is judged by and whether higher is better (accuracy for older runs)."""
    metric = summary.get("primary_metric") or "accuracy"
    return metric, bool(summary.get("higher_is_better", metric not in LOWER_IS_BETTER))


def run_values(run: Run) -> dict[str, Any]:
    """Everything the report shows for one run, flat, straight from its summary."""
    s = run.summary
    metric, _ = primary_metric(s)
    values: dict[str, Any] = {f"test_{k}": v for k, v in test_metrics(s).items()}
    validation = s.get("validation") if isinstance(s.get("validation"), dict) else {}
    values[f"validation_{metric}"] = validation.get(metric, s.get(f"validation_{metric}"))
    for key in ("eval_loss", "trainable_params", "added_params", "total_params", "trainable_percent",
                "checkpoint_bytes", "train_time_s", "wall_time_s", "tokens_per_second", "peak_memory_bytes",
                "best_epoch", "best_step", "steps"):
        values[key] = s.get(key)
    memory = s.get("memory") if isinstance(s.get("memory"), dict) else {}
    for key in ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes", "forward_peak_bytes",
                "backward_peak_bytes", "cuda_forward_peak_bytes", "cuda_backward_peak_bytes"):
        values[f"memory_{key}"] = memory.get(key)
    return values


def make_rows(runs: list[Run]) -> list[Row]:
    rows: dict[str, Row] = {}
    for run in runs:
        row = rows.setdefault(run.name, Row(run.name, []))
        row.runs.append(run)
    for row in rows.values():
        per_run = [run_values(r) for r in row.runs]
        keys = list(dict.fromkeys(k for values in per_run for k in values))
        row.values = {k: [values.get(k) for values in per_run] for k in keys}
    return list(rows.values())


def report_metric(runs: list[Run]) -> tuple[str, bool]:
    """The primary metric most runs share (the Pareto plot's axis)."""
    found = [primary_metric(r.summary) for r in runs]
    return max(set(found), key=found.count) if found else ("accuracy", True)


def main_columns(rows: list[Row], metric: str) -> list[Column]:
    tests = {k.removeprefix("test_") for row in rows for k in row.values if k.startswith("test_")}
    ordered = [metric] if metric in tests else []
    ordered += [m for m in METRIC_ORDER if m in tests and m not in ordered]
    ordered += sorted(tests - set(ordered))
    columns = [Column(f"test_{m}", f"test {m}", "metric") for m in ordered]
    columns += [
        Column(f"validation_{metric}", f"val. {metric}", "metric"),
        Column("eval_loss", "eval loss", "metric"),
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
    return _present(columns, rows)


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


def _present(columns: list[Column], rows: list[Row]) -> list[Column]:
    """Columns that at least one row has a value for; the others are dropped."""
    return [c for c in columns if any(row.mean(c.key) is not None for row in rows)]


# --------------------------------------------------------------------------------------------
# Formatting


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
    "rate": lambda v: f"{v:,.0f}",
    "epoch": lambda v: f"{v:.2f}",
}
EMPTY = "–"


def cell(row: Row, column: Column) -> str:
    """The shown value: the run's value, or mean ± std over seeds where they differ."""
    mean = row.mean(column.key)
    if mean is None:
        return EMPTY
    text = FORMATS[column.kind](mean)
    std = row.std(column.key)
    return f"{text} ± {FORMATS[column.kind](std)}" if std else text


def table_cells(rows: list[Row], columns: list[Column]) -> tuple[list[str], list[list[str]]]:
    seeds = any(len(row.runs) > 1 for row in rows)
    headers = ["method"] + (["runs"] if seeds else []) + [c.header for c in columns]
    body = [[row.name] + ([str(len(row.runs))] if seeds else []) + [cell(row, c) for c in columns] for row in rows]
    return headers, body


def markdown_table(headers: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
    return "\n".join(lines)


def html_table(headers: list[str], body: list[list[str]], css_class: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


# --------------------------------------------------------------------------------------------
# CSV: raw values, full precision


def write_csv(path: Path, rows: list[Row], columns: list[Column]) -> None:
    """One row per method: each value as the run has it (mean over seeds, plus `<key>_std`)."""
    seeds = any(len(row.runs) > 1 for row in rows)
    meta = ["method", "model", "data", "task", "primary_metric", "runs", "seeds"]
    keys = [c.key for c in columns]
    header = meta + [k for key in keys for k in ([key, f"{key}_std"] if seeds else [key])]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            first = row.runs[0].summary
            seed_list = [str((r.config.get("train") or {}).get("seed", "")) for r in row.runs]
            line: list[Any] = [row.name, first.get("model"), first.get("data"), first.get("task"),
                               primary_metric(first)[0], len(row.runs), ";".join(seed_list)]
            for key in keys:
                line.append(_raw(row.mean(key)))
                if seeds:
                    line.append(_raw(row.std(key)))
            writer.writerow(line)


def write_runs_csv(path: Path, runs: list[Run], columns: list[Column]) -> None:
    """One row per run, for anyone who wants the seeds apart."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "run_dir", "seed"] + [c.key for c in columns])
        for run in runs:
            values = run_values(run)
            writer.writerow([run.name, str(run.path), (run.config.get("train") or {}).get("seed", "")]
                            + [_raw(values.get(c.key)) for c in columns])


def _raw(value: Any) -> Any:
    # str() of a float is its shortest exact repr, so the CSV reads back to the same number.
    return "" if value is None else value


# --------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg: no display needed)


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


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def make_plots(rows: list[Row], metric: str, higher_is_better: bool) -> list[tuple[str, str, bytes]]:
    """(file name, title, PNG bytes) for every plot the runs have data for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = {row.name: plt.get_cmap("tab10")(i % 10) for i, row in enumerate(rows)}
    plots = []

    # Validation loss against optimizer steps, every run of every method in one figure.
    curved = [row for row in rows if any(r.validation for r in row.runs)]
    if curved:
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for row in curved:
            for i, run in enumerate(row.runs):
                steps = [rec["step"] for rec in run.validation if "loss" in rec]
                losses = [rec["loss"] for rec in run.validation if "loss" in rec]
                ax.plot(steps, losses, marker="o", color=colors[row.name], label=row.name if i == 0 else None,
                        alpha=1.0 if len(row.runs) == 1 else 0.6)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation loss")
        ax.set_title("Validation loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        plots.append(("validation_loss.png", "Validation loss per method", _figure_png(fig)))

    # Primary metric against trainable parameters (log x), Pareto front marked.
    points = [(row.name, row.mean("trainable_params"), row.mean(f"test_{metric}")) for row in rows]
    points = [(n, p, s) for n, p, s in points if p is not None and s is not None]
    if points:
        front = pareto_front(points, higher_is_better)
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for name, params, score in points:
            row = next(r for r in rows if r.name == name)
            x = max(params, 1)  # zero-shot rows train nothing; log axes start at 1
            ax.errorbar(x, score, yerr=row.std(f"test_{metric}") or 0, fmt="*" if name in front else "o",
                        markersize=13 if name in front else 7, color=colors[name], capsize=3)
            ax.annotate(name + (" (0 trained)" if params == 0 else ""), (x, score), textcoords="offset points",
                        xytext=(6, 4), fontsize=8)
        ordered = sorted((p for p in points if p[0] in front), key=lambda p: p[1])
        ax.step([max(p[1], 1) for p in ordered], [p[2] for p in ordered], where="post", color="gray",
                linestyle="--", linewidth=1, label="Pareto front")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: labels stay readable
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"Test {metric} against trainable parameters (stars: Pareto front)")
        ax.grid(alpha=0.3, which="both")
        ax.margins(x=0.12, y=0.1)  # room for the labels of the outermost points
        ax.legend(fontsize=8, loc="best")
        plots.append(("pareto.png", f"Test {metric} against trainable parameters", _figure_png(fig)))

    # Train time and peak memory bars.
    timed = [row for row in rows if row.mean("train_time_s") is not None or row.mean("peak_memory_bytes") is not None]
    if timed:
        fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(timed) + 1.5))
        for ax, key, label, scale in [(axes[0], "train_time_s", "train time (s)", 1.0),
                                      (axes[1], "peak_memory_bytes", "peak memory (MB)", 1e6)]:
            labels = [row.name for row in timed]
            values = [(row.mean(key) or 0) / scale for row in timed]
            errors = [(row.std(key) or 0) / scale for row in timed]
            ax.barh(labels, values, xerr=errors, color=[colors[n] for n in labels], capsize=3)
            ax.invert_yaxis()
            ax.set_xlabel(label)
            ax.grid(alpha=0.3, axis="x")
        axes[1].set_yticklabels([])
        fig.suptitle("Train time and peak memory")
        plots.append(("time_memory.png", "Train time and peak memory", _figure_png(fig)))

    # Memory of one step: weights, optimizer state, activations (+ gradients in backward).
    profiled = [row for row in rows if row.mean("memory_weights_bytes") is not None]
    if profiled:
        parts = [("memory_weights_bytes", "weights", "#4c72b0"), ("memory_optimizer_bytes", "optimizer state", "#dd8452"),
                 ("memory_activations_bytes", "activations", "#55a868"), ("memory_gradients_bytes", "gradients", "#c44e52")]
        labels, stacks = [], []
        for row in profiled:
            for phase in ("forward", "backward"):
                labels.append(f"{row.name} · {phase}")
                stacks.append([(row.mean(k) or 0) / 1e6 if (phase == "backward" or k != "memory_gradients_bytes") else 0
                               for k, _, _ in parts])
        fig, ax = plt.subplots(figsize=(8, 0.32 * len(labels) + 1.5))
        left = [0.0] * len(labels)
        for j, (_, part, color) in enumerate(parts):
            widths = [stack[j] for stack in stacks]
            ax.barh(labels, widths, left=left, color=color, label=part)
            left = [a + b for a, b in zip(left, widths)]
        ax.invert_yaxis()
        ax.set_xlabel("MB (one training step, counted bytes)")
        ax.set_title("Memory breakdown: forward and backward peak per method")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3, axis="x")
        plots.append(("memory_breakdown.png", "Memory breakdown per method", _figure_png(fig)))
    return plots


# --------------------------------------------------------------------------------------------
# The report


def _distinct(values: list[Any]) -> str:
    found = list(dict.fromkeys(json.dumps(v) if isinstance(v, (dict, list)) else str(v) for v in values if v is not None))
    return ", ".join(found) if found else EMPTY


def budget_line(runs: list[Run]) -> str:
    """Data and training budget, from the runs' own configs and summaries."""
    def get(run: Run, section: str, key: str):
        return (run.config.get(section) or {}).get(key)

    parts = [("train examples", [r.summary.get("train_examples") for r in runs]),
             ("test examples", [r.summary.get("test_examples") for r in runs]),
             ("validation examples at most", [get(r, "data", "max_eval_examples") for r in runs]),
             ("max length", [get(r, "task", "max_length") for r in runs]),
             ("epochs", [get(r, "train", "epochs") for r in runs]),
             ("max steps", [get(r, "train", "max_steps") for r in runs]),
             ("batch size", [get(r, "train", "batch_size") for r in runs]),
             ("validation every N steps", [get(r, "train", "eval_every_steps") for r in runs])]
    return "; ".join(f"{label} {_distinct(values)}" for label, values in parts if any(v is not None for v in values))


def environment(runs: list[Run]) -> list[tuple[str, str]]:
    items = [("device", _distinct([r.summary.get("device") for r in runs])),
             ("peak memory measured as", _distinct([r.summary.get("peak_memory_kind") for r in runs])),
             ("git hash", _distinct([r.summary.get("git_hash") for r in runs]))]
    versions: dict[str, list[Any]] = {}
    for run in runs:
        for name, version in (run.summary.get("versions") or {}).items():
            versions.setdefault(name, []).append(version)
    items += [(name, _distinct(values)) for name, values in versions.items()]
    return items


def write_report(dirs: list[Path], output: Path, failed: dict[str, str] | None = None) -> dict[str, Any]:
    """Read the runs under ``dirs`` and write the whole report into ``output``; returns the
    paths written and the results table as Markdown."""
    runs, unfinished, configs = collect([Path(d) for d in dirs])
    if not runs:
        raise UserError(f"no finished runs (directories with summary.json) in {', '.join(str(d) for d in dirs)}")
    rows = make_rows(runs)
    metric, higher = report_metric(runs)
    columns = main_columns(rows, metric)
    memory_columns = _present(MEMORY_COLUMNS, rows)
    plots = make_plots(rows, metric, higher)
    output.mkdir(parents=True, exist_ok=True)

    write_csv(output / "results.csv", rows, columns + memory_columns)
    write_runs_csv(output / "runs.csv", runs, columns + memory_columns)
    for name, _, png in plots:
        (output / name).write_bytes(png)

    headers, body = table_cells(rows, columns)
    memory_table = table_cells(rows, memory_columns) if memory_columns else None
    points = [(r.name, r.mean("trainable_params"), r.mean(f"test_{metric}")) for r in rows]
    points = [p for p in points if p[1] is not None and p[2] is not None]
    front = [name for name, _, _ in sorted(points, key=lambda p: p[1]) if name in pareto_front(points, higher)]
    best = (max if higher else min)(points, key=lambda p: p[2]) if points else None
    title = f"Comparison: {_distinct([r.summary.get('model') for r in runs])} on {_distinct([r.summary.get('data') for r in runs])}"
    notes = []
    if best:
        notes.append(f"Best test {metric}: **{best[0]}** ({FORMATS['metric'](best[2])}).")
    if front:
        notes.append(f"Pareto front (test {metric} against trainable parameters, fewest first): {', '.join(front)}.")
    problems = dict(failed or {})
    for path in unfinished:
        problems.setdefault(path.name, "not finished (no summary.json)")
    intro = (f"{len(runs)} runs of {len(rows)} methods from {', '.join(f'`{d}`' for d in dirs)}. "
             f"Every number is read from the runs' `summary.json` (curves from `metrics.jsonl`); a row with several "
             f"seeds shows mean ± sample standard deviation.")
    budget = budget_line(runs)
    memory_note = ("Counted for the first training batch of each run: weights (every parameter), gradients (one per "
                   "trainable parameter), AdamW state (two moments per trainable parameter) and the activations "
                   "autograd saves for backward; forward peak = weights + optimizer state + activations, backward "
                   "peak adds the gradients.")
    env = environment(runs)
    config_text = "\n".join((f"# {label}\n" if len(configs) > 1 else "") + text for label, text in configs.items()) \
        or "# runs given directly; each run directory holds its own config.yaml\n"

    md = [f"# {title}", "", intro, "", f"Budget: {budget}.", "", "## Results", "", markdown_table(headers, body), "",
          *[n + "\n" for n in notes]]
    if memory_table:
        md += ["## Memory of one training step", "", markdown_table(*memory_table), "", memory_note, ""]
    md += ["## Plots", ""] + [f"![{t}]({n})\n" for n, t, _ in plots]
    if problems:
        md += ["## Runs not in the table", ""] + [f"- `{k}`: {v}" for k, v in problems.items()] + [""]
    md += ["## Config", "", "```yaml", config_text.rstrip(), "```", "", "## Environment", "",
           markdown_table(["", "value"], [[k, v] for k, v in env]), ""]
    (output / "report.md").write_text("\n".join(md), encoding="utf-8")

    images = "".join(f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                     f"<figcaption>{html.escape(t)}</figcaption></figure>" for _, t, png in plots)
    page = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
            f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>", f"<p>{_inline(intro)}</p>",
            f"<p>Budget: {html.escape(budget)}.</p>", "<h2>Results</h2>", html_table(headers, body, "results"),
            *[f"<p>{_inline(n)}</p>" for n in notes]]
    if memory_table:
        page += ["<h2>Memory of one training step</h2>", html_table(*memory_table, "memory"),
                 f"<p>{html.escape(memory_note)}</p>"]
    page += ["<h2>Plots</h2>", images]
    if problems:
        page += ["<h2>Runs not in the table</h2><ul>"] + \
            [f"<li><code>{html.escape(k)}</code>: {_inline(v)}</li>" for k, v in problems.items()] + ["</ul>"]
    page += ["<h2>Config</h2>", f"<pre>{html.escape(config_text)}</pre>", "<h2>Environment</h2>",
             html_table(["", "value"], [[k, v] for k, v in env], "environment"), "</body></html>"]
    (output / "report.html").write_text("\n".join(page), encoding="utf-8")
    return {"markdown": output / "report.md", "html": output / "report.html", "csv": output / "results.csv",
            "table": markdown_table(headers, body)}


def _inline(text: str) -> str:
    """The little Markdown the notes use (`code`, **bold**) as HTML."""
    escaped = re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text, quote=False))
    return re.sub(r"\*\*([^*]*)\*\*", r"<strong>\1</strong>", escaped)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead { background: #f2f2f2; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
"""
