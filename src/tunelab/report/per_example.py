"""Each test example's share of a metric, read from the runs' predictions.jsonl.

The task's declaration of a metric (:class:`tunelab.tasks.metrics.Metric`) names the fields;
the runs of one row (its seeds) are lined up by example id, so that intervals and paired
tests see the same examples in every run.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.report.collect import PREDICTIONS_FILE, Run
from tunelab.report.stats import Samples
from tunelab.tasks.metrics import Metric


@dataclass
class Examples:
    """A metric's per-example values over a row's runs, or why there are none."""
    ids: tuple[int, ...] = ()
    samples: Samples | None = None
    reason: str = ""
    """Why there are no values ("" where there are)."""


def metric_of(run: Run, name: str) -> Metric | None:
    """The declaration of ``name`` in the run's summary (or its task's, for older runs)."""
    return run.summary.metric_declarations().get(name)


def examples(runs: list[Run], name: str) -> Examples:
    """The values of metric ``name`` on every test example of every run, lined up by id."""
    metric = metric_of(runs[0], name)
    if metric is None or not metric.tested:
        return Examples(reason=f"the {runs[0].summary.task} task has no per-example values of {name}")
    missing = [run for run in runs if run.records is None]
    if missing:
        return Examples(reason=f"no {PREDICTIONS_FILE} (runs made before it was written have none)")
    ids = tuple(sorted(runs[0].records))
    if not ids:
        return Examples(reason=f"empty {PREDICTIONS_FILE}")
    if any(tuple(sorted(run.records)) != ids for run in runs[1:]):
        return Examples(reason="the seeds' runs have different test example ids")
    numerators, denominators = [], []
    for run in runs:
        values = [metric.per_example(run.records[i]) for i in ids]
        if any(v is None for v in values):
            return Examples(reason=f"{PREDICTIONS_FILE} of {run.path.name} has no {metric.field} for every example "
                                   f"(written by an older version)")
        numerators.append([v[0] for v in values])
        denominators.append([v[1] for v in values])
    return Examples(ids, Samples.of(numerators, denominators, exp=metric.exp))
