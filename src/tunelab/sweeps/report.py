"""The sweep's report: trials.csv, sweep.md, sweep.html and PNG plots in the sweep directory.

Numbers come from the study (states, searched values, the validation objective) and from each
trial's run directory (``summary.json``: test number, train time; ``metrics.jsonl``: the
validation curve). The selected trial is the best complete one on the validation objective in
the study's direction; its test number is shown, never used to choose: the best of N test
numbers overstates what the chosen configuration does on unseen data. The page is built with
the comparison report's document model (:mod:`tunelab.report.document`).
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab import files
from tunelab.files import atomic_write_bytes, atomic_write_text
from tunelab.report.document import BulletList, Code, Document, Heading, Image, Paragraph, Table, to_html, to_markdown
from tunelab.report.plots import png, pyplot
from tunelab.summary import FILE as SUMMARY_FILE
from tunelab.summary import Summary
from tunelab.sweeps.space import Space, evaluate
from tunelab.sweeps.study import encode

STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
PLOT_FILES = ("objective.png", "heatmap.png", "importances.png", "curves.png")
MIN_IMPORTANCE_TRIALS = 11
"""PED-ANOVA (target_quantile 0.1) compares the top 10 % of the complete trials with all; under
11 trials that top is one trial, and the numbers would only say how rare its values are."""


@dataclass
class TrialRow:
    number: int
    state: str
    params: dict[str, Any]  # searched keys (decoded: a list is a list again) and tied keys
    value: float | None  # validation objective: the best checkpoint's (complete), the last reported (pruned)
    test: float | None  # the task's primary test metric from summary.json
    train_time_s: float | None
    wall_time_s: float | None
    run_dir: str
    curve: list[tuple[int, float]]  # (step, validation objective) at every validation
    error: str | None = None


@dataclass
class Sweep:
    rows: list[TrialRow]
    metric: str  # the objective: a validation metric of the task
    primary: str  # the task's primary test metric
    maximize: bool
    keys: list[str]  # searched keys, then tied keys: the params columns
    selected: TrialRow | None

    def count(self, state: str) -> int:
        return sum(row.state == state for row in self.rows)


def write_sweep_report(directory: Path, study, space: Space) -> dict[str, Any]:
    """Write trials.csv, sweep.md, sweep.html and the plots into ``directory``; returns their
    paths and a one-line summary of the selected trial."""
    directory = Path(directory)
    sweep = collect(study, space)
    importances, why_not = param_importances(study, space, sweep.count("complete"))
    drawn = [("objective.png", f"Validation {sweep.metric} per trial", objective_plot(sweep)),
             ("heatmap.png", f"Validation {sweep.metric} per grid cell", heatmap_plot(sweep, space)),
             ("importances.png", "Parameter importances (PED-ANOVA)", importance_plot(importances)),
             ("curves.png", f"Validation {sweep.metric} against step", curves_plot(sweep))]
    plots = [Image(file, title, png) for file, title, png in drawn if png is not None]
    directory.mkdir(parents=True, exist_ok=True)  # drawn first: a plot that fails leaves no half report
    write_trials_csv(directory / "trials.csv", sweep)
    for file in PLOT_FILES:  # a plot drawn by an earlier report and not now must not look current
        (directory / file).unlink(missing_ok=True)
    for plot in plots:
        atomic_write_bytes(directory / plot.file, plot.png)
    doc = build_document(sweep, space, plots, why_not, config_text(directory, study))
    atomic_write_text(directory / "sweep.md", to_markdown(doc))
    atomic_write_text(directory / "sweep.html", to_html(doc))
    return {"markdown": directory / "sweep.md", "html": directory / "sweep.html", "csv": directory / "trials.csv",
            "summary": summary_line(sweep, space)}


# The trials


def collect(study, space: Space) -> Sweep:
    """Each trial of the study as a row, and the trial selected on validation."""
    metric = study.user_attrs.get("objective", space.settings.objective.metric)
    summaries = {t.number: read_summary(t.user_attrs.get("run_dir")) for t in study.trials}
    rows = [trial_row(t, space, metric, summaries[t.number]) for t in study.trials]
    primary = next((s.primary_metric for s in summaries.values() if s and s.primary_metric), metric)
    maximize = study.direction.name == "MAXIMIZE"
    return Sweep(rows=rows, metric=metric, primary=primary, maximize=maximize,
                 keys=[*space.grid, *space.ranges, *space.tied], selected=select(rows, maximize))


def trial_row(trial, space: Space, metric: str, summary: Summary | None) -> TrialRow:
    # A waiting grid point has no params yet; the point it will run is in its fixed params.
    raw = trial.params or trial.system_attrs.get("fixed_params", {})
    params = {key: decode(space, key, value) for key, value in raw.items()}
    for key, expr in space.tied.items():
        params[key] = tied_value(expr, params)
    started, ended = trial.datetime_start, trial.datetime_complete
    run_dir = trial.user_attrs.get("run_dir", "")
    curve = read_curve(Path(run_dir), metric) if run_dir else []
    return TrialRow(number=trial.number, state=STATES.get(trial.state.name, trial.state.name.lower()), params=params,
                    value=trial.value, test=summary.metric("test", summary.primary_metric) if summary else None,
                    train_time_s=summary.train_time_s if summary else None,
                    wall_time_s=(ended - started).total_seconds() if started and ended else None, run_dir=run_dir,
                    curve=curve or sorted(trial.intermediate_values.items()), error=trial.user_attrs.get("error"))


def decode(space: Space, key: str, raw: Any) -> Any:
    """The grid value as the sweep config gives it; Optuna holds a list value as JSON text."""
    return next((value for value in space.grid.get(key, []) if encode({key: value})[key] == raw), raw)


def tied_value(expr: str, params: dict[str, Any]) -> Any:
    try:
        return evaluate(expr, params)
    except (KeyError, ArithmeticError, TypeError):  # a trial without its params (failed early) has no tied value
        return None


def read_summary(run_dir: str | None) -> Summary | None:
    """None for a trial killed mid-way or not started (no summary.json yet)."""
    found = bool(run_dir) and (Path(run_dir) / SUMMARY_FILE).is_file()
    return Summary.read(Path(run_dir)) if found else None


def read_curve(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(step, metric) of every validation record in the run's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    points = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the last line of a killed run may be cut
        if record.get("split") == "validation" and "step" in record and record.get(metric) is not None:
            points.append((int(record["step"]), float(record[metric])))
    return points


def select(rows: list[TrialRow], maximize: bool) -> TrialRow | None:
    """The best complete trial on the validation objective (the lowest number among equals)."""
    scored = [r for r in rows if r.state == "complete" and r.value is not None and not math.isnan(r.value)]
    sign = 1.0 if maximize else -1.0
    return max(scored, key=lambda r: (sign * r.value, -r.number), default=None)


def write_trials_csv(path: Path, sweep: Sweep) -> None:
    """One row per trial, every state; values at full precision, empty where there is none."""
    header = ["number", "state", *sweep.keys, f"validation_{sweep.metric}", f"test_{sweep.primary}",
              "train_time_s", "wall_time_s", "run_dir"]
    rows = [[r.number, r.state, *map(raw_cell, [*(r.params.get(k) for k in sweep.keys), r.value, r.test,
                                                 r.train_time_s, r.wall_time_s]), r.run_dir] for r in sweep.rows]
    files.write_csv(path, header, rows)


def raw_cell(value: Any) -> Any:
    # A float's str() is its shortest exact repr: the CSV reads back to the same number.
    return "" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else value


def shown(value: Any) -> str:
    """A searched value for reading: 0.002, 8, ["query", "value"]."""
    return f"{value:g}" if isinstance(value, float) else str(raw_cell(value))


def number(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


# Parameter importances


def param_importances(study, space: Space, complete: int) -> tuple[dict[str, float] | None, str | None]:
    """PED-ANOVA importances of the searched keys, or None and the one sentence saying why not."""
    searched = [*space.grid, *space.ranges]
    if len(searched) < 2:
        return None, None  # one key: nothing to rank it against
    if complete < MIN_IMPORTANCE_TRIALS:
        return None, (f"Parameter importances need at least {MIN_IMPORTANCE_TRIALS} complete trials "
                      f"(this sweep has {complete}).")
    import optuna

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except Exception as exc:  # noqa: BLE001 - any failure of optuna's estimate only costs this one plot
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return None, f"Parameter importances could not be computed ({type(exc).__name__}: {first})."
    equal = [str(w.message) for w in caught if "will be equal" in str(w.message)]
    if equal:  # optuna's own word that the numbers would mean nothing
        return None, f"Parameter importances were not drawn: optuna says \"{equal[0].splitlines()[0]}\""
    return found, None


# Plots (matplotlib imported on first use, Agg backend)


def objective_plot(sweep: Sweep) -> bytes | None:
    """The objective per trial number; pruned trials at their last validation (their value in Optuna)."""
    complete = [(r.number, r.value) for r in sweep.rows if r.state == "complete" and r.value is not None]
    pruned = [(r.number, r.value) for r in sweep.rows if r.state == "pruned" and r.value is not None]
    if not complete and not pruned:
        return None
    fig, ax = pyplot().subplots(figsize=(7.5, 4.5))
    if complete:
        ax.scatter(*zip(*complete), marker="o", color="tab:blue", label="complete", zorder=3)
        ax.step(*zip(*running_best(complete, sweep.maximize)), where="post", color="gray", label="best so far")
    if pruned:
        ax.scatter(*zip(*pruned), marker="x", color="tab:red", label="pruned (at its last validation)", zorder=3)
    if sweep.selected:
        ax.scatter([sweep.selected.number], [sweep.selected.value], marker="*", s=220, color="gold",
                   edgecolor="black", label=f"selected: trial {sweep.selected.number}", zorder=4)
    ax.xaxis.get_major_locator().set_params(integer=True)  # trial numbers: no 2.5
    ax.set(xlabel="trial number", ylabel=f"validation {sweep.metric}",
           title=f"Validation {sweep.metric} per trial ({'higher' if sweep.maximize else 'lower'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


def running_best(points: list[tuple[int, float]], maximize: bool) -> list[tuple[int, float]]:
    best, line = None, []
    for trial, value in sorted(points):
        best = value if best is None else (max if maximize else min)(best, value)
        line.append((trial, best))
    return line


def heatmap_plot(sweep: Sweep, space: Space) -> bytes | None:
    """For a sweep of exactly two grid keys: the validation objective of each cell (mean of repeats)."""
    if len(space.grid) != 2 or space.ranges:
        return None
    (x_key, xs), (y_key, ys) = space.grid.items()
    cells = cell_means(sweep.rows, (x_key, xs), (y_key, ys))
    if all(v is None for line in cells for v in line):
        return None
    import numpy as np

    grid = np.array([[np.nan if v is None else v for v in line] for line in cells])
    fig, ax = pyplot().subplots(figsize=(max(4.5, 1.3 * len(xs) + 2.5), max(3.0, 0.8 * len(ys) + 1.5)))
    image = ax.imshow(grid, cmap="viridis" if sweep.maximize else "viridis_r", aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            red, green, blue, _ = image.cmap(image.norm(value))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # the number stays readable on its cell
            ax.text(j, i, f"{value:.4f}", ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xticks(range(len(xs)), [shown(v) for v in xs])
    ax.set_yticks(range(len(ys)), [shown(v) for v in ys])
    ax.set(xlabel=x_key, ylabel=y_key, title=f"Validation {sweep.metric} per grid cell (mean of repeats)")
    fig.colorbar(image, ax=ax, label=f"validation {sweep.metric}")
    return png(fig)


def cell_means(rows: list[TrialRow], x: tuple[str, list], y: tuple[str, list]) -> list[list[float | None]]:
    """[y index][x index] -> the mean objective of the complete trials at that point (None: none)."""
    (x_key, xs), (y_key, ys) = x, y
    found: dict[tuple[int, int], list[float]] = {}
    for row in rows:
        if row.state == "complete" and row.value is not None and row.params.get(x_key) in xs \
                and row.params.get(y_key) in ys:
            found.setdefault((ys.index(row.params[y_key]), xs.index(row.params[x_key])), []).append(row.value)
    return [[statistics.fmean(found[i, j]) if (i, j) in found else None for j in range(len(xs))]
            for i in range(len(ys))]


def importance_plot(importances: dict[str, float] | None) -> bytes | None:
    """The searched keys' importances as horizontal bars, the largest on top."""
    if not importances:
        return None
    keys = sorted(importances, key=importances.get, reverse=True)
    fig, ax = pyplot().subplots(figsize=(7.0, 0.5 * len(keys) + 1.5))
    ax.barh(keys, [importances[k] for k in keys], color="tab:blue")
    ax.invert_yaxis()
    ax.set(xlabel="importance (PED-ANOVA, sums to 1)", title="Parameter importances")
    ax.grid(alpha=0.3, axis="x")
    return png(fig)


def curves_plot(sweep: Sweep) -> bytes | None:
    """The validation objective against step, one line per trial (pruned ones dashed)."""
    curved = [r for r in sweep.rows if r.curve]
    if not curved:
        return None
    fig, ax = pyplot().subplots(figsize=(7.5, 4.5))
    colors = pyplot().get_cmap("tab10")
    for i, row in enumerate(curved):
        selected = row is sweep.selected
        label = f"trial {row.number}" + (" (selected)" if selected else " (pruned)" if row.state == "pruned" else "")
        ax.plot(*zip(*row.curve), marker="o", markersize=3, color=colors(i % 10),
                linestyle="--" if row.state == "pruned" else "-", linewidth=2.5 if selected else 1.0,
                alpha=1.0 if selected else 0.7, label=label if selected or len(curved) <= 12 else None)
    ax.set(xlabel="optimizer step", ylabel=f"validation {sweep.metric}", title=f"Validation {sweep.metric} per trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return png(fig)


# The document


def build_document(sweep: Sweep, space: Space, plots: list[Image], why_not: str | None, config: str | None) -> Document:
    names = [space.base.get(section, {}).get("name") for section in ("model", "data", "method")]
    blocks = [Paragraph(sweep_line(sweep, space)), Heading("Selected trial"), *selected_blocks(sweep),
              Heading("Trials"), trials_table(sweep)]
    failed = [r for r in sweep.rows if r.state == "failed"]
    if failed:
        blocks += [Heading("Failed trials"),
                   BulletList([f"trial {r.number}: {r.error or 'no error recorded'}" for r in failed])]
    blocks += [Heading("Plots"), *plots] + ([Paragraph(why_not)] if why_not else [])
    blocks += [Heading("Sweep config"), Code(config, "yaml") if config else Paragraph("No sweep.yaml was found.")]
    return Document("Sweep: " + " · ".join(str(n) for n in names if n) if any(names) else "Sweep", blocks)


def sweep_line(sweep: Sweep, space: Space) -> str:
    s = space.settings
    started = len(sweep.rows) - sweep.count("waiting")
    extra = "".join(f", {sweep.count(state)} {state}" for state in ("running", "waiting") if sweep.count(state))
    tied = "".join(f" `{key}` is tied: `{expr}`." for key, expr in space.tied.items())
    return (f"Sampler `{s.sampler}`, objective validation `{sweep.metric}` "
            f"({'maximize' if sweep.maximize else 'minimize'}), pruner `{s.pruner}`: {started} trials run of the "
            f"planned {space.size}; {counts(sweep)}{extra}.{tied}")


def counts(sweep: Sweep) -> str:
    return f"{sweep.count('complete')} complete, {sweep.count('pruned')} pruned, {sweep.count('failed')} failed"


def selected_blocks(sweep: Sweep) -> list[Paragraph]:
    chosen = sweep.selected
    if chosen is None:
        return [Paragraph("No complete trial: there is nothing to select.")]
    params = ", ".join(f"`{k}` = {shown(chosen.params.get(k))}" for k in sweep.keys)
    test = f"**{number(chosen.test)}**" if chosen.test is not None else "none (the run has no summary.json)"
    return [Paragraph(f"Trial **{chosen.number}** ({params}): validation {sweep.metric} **{number(chosen.value)}**, "
                      f"test {sweep.primary} {test}. Run directory: `{chosen.run_dir}`."),
            Paragraph(f"The trial was selected on the validation objective alone (the "
                      f"{'highest' if sweep.maximize else 'lowest'} validation {sweep.metric} of the complete "
                      f"trials); the test numbers took no part, so its test {sweep.primary} is an estimate for unseen "
                      f"data, not the best of {sweep.count('complete')} test numbers.")]


def trials_table(sweep: Sweep) -> Table:
    headers = ["trial", "state", *sweep.keys, f"val. {sweep.metric}", f"test {sweep.primary}", "train time (s)",
               "wall time (s)", "run"]
    body = [[f"{r.number}" + (" (selected)" if r is sweep.selected else ""), r.state,
             *(shown(r.params.get(k)) for k in sweep.keys), number(r.value), number(r.test),
             number(r.train_time_s, 1), number(r.wall_time_s, 1), Path(r.run_dir).name if r.run_dir else ""]
            for r in sweep.rows]
    return Table(headers, body, "trials")


def config_text(directory: Path, study) -> str | None:
    """The sweep config as the command wrote it; else as the study keeps it."""
    path = directory / "sweep.yaml"
    return path.read_text(encoding="utf-8") if path.is_file() else study.user_attrs.get("config")


def summary_line(sweep: Sweep, space: Space) -> str:
    """One line for the terminal: the selected trial's searched values, validation and test."""
    tail = f"{counts(sweep)} of {space.size}"
    chosen = sweep.selected
    if chosen is None:
        return f"no complete trial; {tail}"
    params = ", ".join(f"{k}={shown(chosen.params.get(k))}" for k in [*space.grid, *space.ranges])
    test = number(chosen.test) if chosen.test is not None else "n/a"
    return (f"selected trial {chosen.number} ({params}): validation {sweep.metric} {number(chosen.value)}, "
            f"test {sweep.primary} {test}; {tail}")
