"""What the report says, section by section, as one document (see document.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.report import eval_sets, inference
from tunelab.report.budget import budget_differences, budget_line, budget_table
from tunelab.report.collect import PREDICTIONS_FILE, Run
from tunelab.report.document import Block, BulletList, Code, Document, Heading, Image, Paragraph, Table
from tunelab.report.paired import paired_note, paired_table, paired_tests, reference_row, verdict
from tunelab.report.per_example import metric_of
from tunelab.report.rows import FORMATS, Results, distinct, examples_tested, table_cells
from tunelab.report.tuning import Trials, untuned_note
from tunelab.report.tuning import section as tuning_section

MEMORY_NOTE = ("Counted for the first training batch of each run: weights (every parameter), gradients (one per "
               "trainable parameter), AdamW state (two moments per trainable parameter) and the activations "
               "autograd saves for backward; forward peak = weights + optimizer state + activations, backward "
               "peak adds the gradients.")


def build(runs: list[Run], results: Results, plots: list[Image], dirs: list[Path],
          problems: dict[str, str], configs: dict[str, str], trials: Trials | None = None) -> Document:
    """The whole report; ``problems`` are the runs not in the table (name -> why); ``trials``
    a tuned comparison's trials by method."""
    title = f"Comparison: {distinct([r.summary.model for r in runs])} on {distinct([r.summary.data for r in runs])}"
    intro = (f"{len(runs)} runs of {len(results.rows)} methods from {', '.join(f'`{d}`' for d in dirs)}. "
             f"Every number is read from the runs' `summary.json` (curves from `metrics.jsonl`, paired tests from "
             f"`{PREDICTIONS_FILE}`); a row with several seeds shows mean ± sample standard deviation.")
    differs = budget_differences(results.rows)
    untuned = untuned_note(configs)
    blocks = [Paragraph(intro), Paragraph(f"Budget: {budget_line(runs)}."), *([Paragraph(differs)] if differs else []),
              *results_section(results), *([Paragraph(untuned)] if untuned else []),
              *tuning_section(trials or {}, configs),
              Heading("Budget per method"), budget_table(results.rows)]
    if results.memory_columns:
        blocks += [Heading("Memory of one training step"),
                   Table(*table_cells(results.rows, results.memory_columns), "memory"), Paragraph(MEMORY_NOTE)]
    blocks += eval_sets.section(runs, results)
    blocks += inference.section(results.rows, results.inference_columns)
    blocks += [Heading("Plots"), *plots]
    if problems:
        blocks += [Heading("Runs not in the table"), BulletList([f"`{k}`: {v}" for k, v in problems.items()])]
    blocks += [Heading("Config"), Code(config_text(configs), "yaml"),
               Heading("Environment"), Table(["", "value"], [[k, v] for k, v in environment(runs)], "environment")]
    return Document(title, blocks)


def results_table(results: Results) -> Table:
    return Table(*table_cells(results.rows, results.columns), "results")


def results_section(results: Results) -> list[Block]:
    """The results table, the notes under it, and the paired tests against the reference."""
    pareto = results.pareto
    reference = reference_row(results.rows, validation_metrics(results))
    paired = paired_tests(results.rows, reference.row, pareto.metric, pareto.higher_is_better) if reference else []
    fmt = FORMATS["metric"]
    blocks: list[Block] = [Heading("Results"), results_table(results)]
    found = [interval_note(results), *notes(results)]
    if reference:
        found += verdict(paired, reference, pareto.metric, fmt)
    blocks += [Paragraph(n) for n in found if n]
    if any(p.p is not None for p in paired):
        blocks += [Heading(f"Paired tests against {reference.row.name}"), Paragraph(paired_note(reference.row.name)),
                   Table(*paired_table(paired, reference.row, fmt), "paired")]
    return blocks


def validation_metrics(results: Results) -> list[tuple[str, bool]]:
    """The validation metrics the reference may be chosen by, in order of preference: the primary
    metric, else the metric that picked each run's checkpoint."""
    first = results.rows[0].runs[0] if results.rows else None
    found = [(results.pareto.metric, results.pareto.higher_is_better)]
    if first is not None and first.summary.select_metric:
        declared = metric_of(first, first.summary.select_metric)
        found.append((first.summary.select_metric, declared is None or declared.higher_is_better is not False))
    return found


def interval_note(results: Results) -> str | None:
    """What the brackets in the results table are, where some cell has them."""
    shown = [c for c in results.columns if c.interval and any(row.interval(c.key) for row in results.rows)]
    if not shown:
        return None
    counts = distinct([FORMATS["int"](examples_tested(row.runs[0].summary)) for row in results.rows
                       if row.interval(shown[0].key)])
    seeds = (", at the seeds' mean for a row with several seeds" if any(len(row.runs) > 1 for row in results.rows)
             else "")
    wilson = [c.header for c in shown if interval_kind(results, c.key) == "proportion"]
    boot = [c.header for c in shown if interval_kind(results, c.key) != "proportion"]
    kinds = ([f"the Wilson score interval of each proportion ({', '.join(wilson)})"] if wilson else []) + \
            ([f"a percentile bootstrap over the test examples (2,000 replicates) for {', '.join(boot)}"]
             if boot else [])
    return f"In brackets: 95 % intervals over the {counts} test examples{seeds}: {' and '.join(kinds)}."


def interval_kind(results: Results, key: str) -> str | None:
    for row in results.rows:
        metric = metric_of(row.runs[0], key.removeprefix("test_"))
        if metric is not None:
            return metric.kind
    return None


def notes(results: Results) -> list[str]:
    """The lines under the results table: the highest test value and the Pareto front."""
    pareto, found = results.pareto, []
    scored = [row for row in results.rows if row.mean(f"test_{pareto.metric}") is not None]
    if scored:
        top = (max if pareto.higher_is_better else min)(scored, key=lambda row: row.mean(f"test_{pareto.metric}"))
        found.append(f"Best test {pareto.metric}: **{top.name}** "
                     f"({FORMATS['metric'](top.mean(f'test_{pareto.metric}'))}).")
    if pareto.front:
        found.append(f"Pareto front (test {pareto.metric} against trainable parameters, fewest first): "
                     f"{', '.join(pareto.front)}.")
    return found


def not_in_table(failed: dict[str, str] | None, unfinished: list[Path]) -> dict[str, str]:
    """Runs that failed (as the comparison saw them) and run directories without a summary."""
    found = dict(failed or {})
    for path in unfinished:
        found.setdefault(path.name, "not finished (no summary.json)")
    return found


def config_text(configs: dict[str, str]) -> str:
    """The comparisons' compare.yaml files, each under its directory where there are several."""
    text = "\n".join((f"# {label}\n" if len(configs) > 1 else "") + text for label, text in configs.items())
    return text or "# runs given directly; each run directory holds its own config.yaml\n"


def environment(runs: list[Run]) -> list[tuple[str, str]]:
    """Where the runs ran: device, how peak memory was measured, git hash, library versions."""
    items = [("device", distinct([r.summary.device for r in runs])),
             ("peak memory measured as", distinct([r.summary.peak_memory_kind for r in runs])),
             ("git hash", distinct([r.summary.git_hash for r in runs]))]
    versions: dict[str, list[Any]] = {}
    for run in runs:
        for name, version in (run.summary.versions or {}).items():
            versions.setdefault(name, []).append(version)
    return items + [(name, distinct(values)) for name, values in versions.items()]
