"""What the report says, section by section, as one document (see document.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.report.collect import Run
from tunelab.report.document import BulletList, Code, Document, Heading, Image, Paragraph, Table
from tunelab.report.rows import EMPTY, FORMATS, Results, table_cells

MEMORY_NOTE = ("Counted for the first training batch of each run: weights (every parameter), gradients (one per "
               "trainable parameter), AdamW state (two moments per trainable parameter) and the activations "
               "autograd saves for backward; forward peak = weights + optimizer state + activations, backward "
               "peak adds the gradients.")


def build(runs: list[Run], results: Results, plots: list[Image], dirs: list[Path],
          problems: dict[str, str], configs: dict[str, str]) -> Document:
    """The whole report; ``problems`` are the runs not in the table (name -> why)."""
    title = f"Comparison: {_distinct([r.summary.model for r in runs])} on {_distinct([r.summary.data for r in runs])}"
    intro = (f"{len(runs)} runs of {len(results.rows)} methods from {', '.join(f'`{d}`' for d in dirs)}. "
             f"Every number is read from the runs' `summary.json` (curves from `metrics.jsonl`); a row with several "
             f"seeds shows mean ± sample standard deviation.")
    blocks = [Paragraph(intro), Paragraph(f"Budget: {budget_line(runs)}."),
              Heading("Results"), results_table(results), *[Paragraph(n) for n in notes(results)]]
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


def notes(results: Results) -> list[str]:
    """The lines under the results table: the best row and the Pareto front."""
    pareto, found = results.pareto, []
    best = pareto.best()
    if best:
        found.append(f"Best test {pareto.metric}: **{best[0]}** ({FORMATS['metric'](best[2])}).")
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


def _distinct(values: list[Any]) -> str:
    found = list(dict.fromkeys(json.dumps(v) if isinstance(v, (dict, list)) else str(v) for v in values if v is not None))
    return ", ".join(found) if found else EMPTY


def budget_line(runs: list[Run]) -> str:
    """Data and training budget, from the runs' own configs and summaries."""
    def get(run: Run, section: str, key: str):
        return (run.config.get(section) or {}).get(key)

    parts = [("train examples", [r.summary.train_examples for r in runs]),
             ("test examples", [r.summary.test_examples for r in runs]),
             ("validation examples at most", [get(r, "data", "max_eval_examples") for r in runs]),
             ("max length", [get(r, "task", "max_length") for r in runs]),
             ("epochs", [get(r, "train", "epochs") for r in runs]),
             ("max steps", [get(r, "train", "max_steps") for r in runs]),
             ("batch size", [get(r, "train", "batch_size") for r in runs]),
             ("validation every N steps", [get(r, "train", "eval_every_steps") for r in runs])]
    return "; ".join(f"{label} {_distinct(values)}" for label, values in parts if any(v is not None for v in values))


def environment(runs: list[Run]) -> list[tuple[str, str]]:
    """Where the runs ran: device, how peak memory was measured, git hash, library versions."""
    items = [("device", _distinct([r.summary.device for r in runs])),
             ("peak memory measured as", _distinct([r.summary.peak_memory_kind for r in runs])),
             ("git hash", _distinct([r.summary.git_hash for r in runs]))]
    versions: dict[str, list[Any]] = {}
    for run in runs:
        for name, version in (run.summary.versions or {}).items():
            versions.setdefault(name, []).append(version)
    return items + [(name, _distinct(values)) for name, values in versions.items()]
