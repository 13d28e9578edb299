"""What the report says, section by section, as one document (see document.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.report.budget import budget_differences, budget_line, budget_table
from tunelab.report.collect import PREDICTIONS_FILE, Run
from tunelab.report.document import Block, BulletList, Code, Document, Heading, Image, Paragraph, Table
from tunelab.report.paired import Paired, best_row, paired_table, paired_tests, verdict
from tunelab.report.rows import FORMATS, Results, Row, distinct, examples_tested, table_cells

MEMORY_NOTE = ("Counted for the first training batch of each run: weights (every parameter), gradients (one per "
               "trainable parameter), AdamW state (two moments per trainable parameter) and the activations "
               "autograd saves for backward; forward peak = weights + optimizer state + activations, backward "
               "peak adds the gradients.")


def build(runs: list[Run], results: Results, plots: list[Image], dirs: list[Path],
          problems: dict[str, str], configs: dict[str, str]) -> Document:
    """The whole report; ``problems`` are the runs not in the table (name -> why)."""
    title = f"Comparison: {distinct([r.summary.model for r in runs])} on {distinct([r.summary.data for r in runs])}"
    intro = (f"{len(runs)} runs of {len(results.rows)} methods from {', '.join(f'`{d}`' for d in dirs)}. "
             f"Every number is read from the runs' `summary.json` (curves from `metrics.jsonl`, paired tests from "
             f"`{PREDICTIONS_FILE}`); a row with several seeds shows mean ± sample standard deviation.")
    differs = budget_differences(results.rows)
    blocks = [Paragraph(intro), Paragraph(f"Budget: {budget_line(runs)}."), *([Paragraph(differs)] if differs else []),
              *results_section(results),
              Heading("Budget per method"), budget_table(results.rows)]
    if results.memory_columns:
        blocks += [Heading("Memory of one training step"),
                   Table(*table_cells(results.rows, results.memory_columns), "memory"), Paragraph(MEMORY_NOTE)]
    blocks += [Heading("Plots"), *plots]
    if problems:
        blocks += [Heading("Runs not in the table"), BulletList([f"`{k}`: {v}" for k, v in problems.items()])]
    blocks += [Heading("Config"), Code(config_text(configs), "yaml"),
               Heading("Environment"), Table(["", "value"], [[k, v] for k, v in environment(runs)], "environment")]
    return Document(title, blocks)


def results_table(results: Results) -> Table:
    return Table(*table_cells(results.rows, results.columns), "results")


def results_section(results: Results) -> list[Block]:
    """The results table, the notes under it, and the paired tests against the best row."""
    pareto = results.pareto
    best = best_row(results.rows, pareto.metric, pareto.higher_is_better)
    paired = paired_tests(results.rows, best) if best else []
    blocks: list[Block] = [Heading("Results"), results_table(results)]
    blocks += [Paragraph(n) for n in [interval_note(results), *notes(results, best, paired)] if n]
    if any(p.p is not None for p in paired):
        blocks += [Heading(f"Paired tests against {best.name}"), Paragraph(paired_note(best.name)),
                   Table(*paired_table(paired, best), "paired")]
    return blocks


def paired_note(best: str) -> str:
    return (f"Each method's first run against {best}'s first run on the same test examples (matched by `id` in "
            f"`{PREDICTIONS_FILE}`): b counts the examples only {best} gets right, c those only the other method "
            "gets right. Exact McNemar test: p = min(1, 2 · P(X ≤ min(b, c))) with X ~ Binomial(b + c, 1/2); "
            "p ≥ 0.05 means these examples cannot tell the two apart.")


def interval_note(results: Results) -> str | None:
    """What the brackets in the results table are, where some cell has them."""
    shown = [c for c in results.columns if c.interval and any(row.interval(c.key) for row in results.rows)]
    if not shown:
        return None
    counts = distinct([FORMATS["int"](examples_tested(row.runs[0].summary)) for row in results.rows
                       if row.interval(shown[0].key)])
    seeds = ", at the seeds' mean for a row with several seeds" if any(len(row.runs) > 1 for row in results.rows) else ""
    return (f"In brackets: the 95 % Wilson score interval of each proportion ({', '.join(c.header for c in shown)}) "
            f"over the {counts} test examples{seeds}.")


def notes(results: Results, best: Row | None, paired: list[Paired]) -> list[str]:
    """The lines under the results table: the best row, which rows the test examples cannot
    tell apart from it, and the Pareto front."""
    pareto, found = results.pareto, []
    if best:
        found.append(f"Best test {pareto.metric}: **{best.name}** "
                     f"({FORMATS['metric'](best.mean(f'test_{pareto.metric}'))}).")
        found += verdict(paired, best)
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
