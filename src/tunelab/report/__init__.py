"""The comparison report: results.csv, runs.csv, report.md, report.html and PNG plots.

Every number comes from the runs themselves: ``summary.json`` for the table (the primary
metric and every test metric present, parameters, time, memory) and ``metrics.jsonl`` for the
validation curves. Runs of one method with several seeds (``<name>-seed<k>``) form one row with
the mean and the sample standard deviation. ``tunelab report DIR...`` rebuilds all of it from
run directories alone, also across several comparisons.

collect (run directories -> runs) -> rows (runs -> rows, columns, Pareto front, CSV) ->
plots and sections (-> one document) -> document (Markdown and HTML). Nothing here imports
torch or transformers, and matplotlib only once plots are drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.errors import UserError
from tunelab.files import atomic_write_bytes, atomic_write_text
from tunelab.report import sections
from tunelab.report.collect import collect
from tunelab.report.document import markdown_table, to_html, to_markdown
from tunelab.report.plots import make_plots
from tunelab.report.rows import pareto_front, results, write_csv, write_runs_csv
from tunelab.report.tuning import collect_trials

__all__ = ["write_report", "pareto_front"]


def write_report(dirs: list[Path], output: Path, failed: dict[str, str] | None = None,
                 elsewhere: list[str] | None = None) -> dict[str, Any]:
    """Read the runs under ``dirs`` and write the whole report into ``output``; returns the
    paths written and the results table as Markdown.

    ``failed``: run directory name -> why, for runs the comparison saw fail; ``elsewhere``: runs
    of the comparison that other workers (other machines on the same storage) ran or will run.
    """
    runs, unfinished, configs = collect([Path(d) for d in dirs])
    if not runs:
        raise UserError(f"no finished runs (directories with summary.json) in {', '.join(str(d) for d in dirs)}")
    found = results(runs)
    trials = collect_trials([Path(d) for d in dirs])
    plots = make_plots(found, trials)  # before anything is written: a plot that fails leaves no half report
    output.mkdir(parents=True, exist_ok=True)
    columns = found.columns + found.memory_columns
    write_csv(output / "results.csv", found.rows, columns)
    write_runs_csv(output / "runs.csv", runs, columns)
    for plot in plots:
        atomic_write_bytes(output / plot.file, plot.png)
    problems = sections.not_in_table(failed, unfinished)
    for name in elsewhere or []:
        problems.setdefault(name, "not here: another worker on the same --storage runs it; `tunelab report` with its "
                                  "directory too puts it in")
    doc = sections.build(runs, found, plots, dirs, problems, configs, trials)
    atomic_write_text(output / "report.md", to_markdown(doc))
    atomic_write_text(output / "report.html", to_html(doc))
    return {"markdown": output / "report.md", "html": output / "report.html", "csv": output / "results.csv",
            "table": markdown_table(sections.results_table(found))}
