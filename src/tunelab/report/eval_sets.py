"""Out-of-domain sets in the report: each set a section with the methods' numbers, their
intervals, the paired tests against the same reference as in domain, and whether the ranking
holds.

A run's result on a set (``RUN_DIR/eval/<set>/``, written by ``tunelab eval --save``) is read as a
run of its own whose test split is the set: the rows, intervals, paired tests and verdict are
then the in-domain report's own functions, with nothing written twice.
"""

from __future__ import annotations

import dataclasses
import json

from tunelab.eval_sets import EVAL_DIR
from tunelab.files import read_json_lines
from tunelab.report.collect import Run
from tunelab.report.document import Block, Heading, Paragraph, Table
from tunelab.report.paired import paired_tests, reference_row, verdict
from tunelab.report.rows import FORMATS, Results, Row, results, table_cells


def set_names(runs: list[Run]) -> list[str]:
    """The sets some run was evaluated on, in name order."""
    return sorted({p.parent.name for run in runs for p in (run.path / EVAL_DIR).glob("*/metrics.json")})


def on_set(run: Run, name: str) -> Run | None:
    """The run as if the set were its test split; None where the run has no result there."""
    folder = run.path / EVAL_DIR / name
    if not (folder / "metrics.json").is_file():
        return None
    metrics = {k: v for k, v in json.loads((folder / "metrics.json").read_text()).items()
               if k not in ("split", "dropped_examples")}
    records = {r["id"]: r for r in read_json_lines(folder / "predictions.jsonl")} \
        if (folder / "predictions.jsonl").is_file() else None
    summary = dataclasses.replace(run.summary, test=metrics, test_examples=metrics.get("examples"), inference=None)
    return dataclasses.replace(run, summary=summary, records=records)


def ranking(rows: list[Row], metric: str, higher: bool) -> list[str]:
    scored = [row for row in rows if row.mean(f"test_{metric}") is not None]
    return [row.name for row in sorted(scored, key=lambda r: r.mean(f"test_{metric}"), reverse=higher)]


def ranking_sentence(in_domain: list[str], here: list[str], name: str) -> str | None:
    """Whether the in-domain order of the methods holds on the set: the best one, and the pairs."""
    common = [n for n in in_domain if n in here]
    if len(common) < 2:
        return None
    position = {n: here.index(n) for n in common}
    pairs = [(a, b) for i, a in enumerate(common) for b in common[i + 1:]]
    kept = sum(position[a] < position[b] for a, b in pairs)
    best = ("the best method in domain, " + common[0] + ", is the best here too" if here[0] == common[0]
            else f"the best method in domain, {common[0]}, is not the best here ({here[0]} is)")
    return (f"Ranking on {name} (best first): {', '.join(here)}; in domain: {', '.join(common)}. "
            f"{best[0].upper()}{best[1:]}; {kept} of {len(pairs)} pairs of methods keep their in-domain order "
            f"(differences within the intervals can swap by chance).")


def section(runs: list[Run], in_domain: Results) -> list[Block]:
    """One section per out-of-domain set."""
    blocks: list[Block] = []
    metric, higher = in_domain.pareto.metric, in_domain.pareto.higher_is_better
    for name in set_names(runs):
        moved = [found for run in runs if (found := on_set(run, name)) is not None]
        found = results(moved)
        columns = [c for c in found.columns if c.key.startswith("test_")]
        examples = {run.summary.test_examples for run in moved}
        blocks += [Heading(f"Out of domain: {name}"),
                   Paragraph(f"Every method's best checkpoint (the one tested in domain) on all "
                             f"{', '.join(FORMATS['int'](n) for n in examples if n)} examples of `{name}`, its labels "
                             f"mapped onto the runs' by name (`tunelab eval RUN_DIR --data.name {name}`)."),
                   Table(*table_cells(found.rows, columns), "results")]
        reference = reference_row(found.rows, [(f"{metric}", higher)])
        if reference is not None:  # the reference is chosen on validation, as in domain
            paired = paired_tests(found.rows, reference.row, metric, higher)
            blocks += [Paragraph(line) for line in verdict(paired, reference, metric, FORMATS["metric"])]
        order = ranking_sentence(ranking(in_domain.rows, metric, higher), ranking(found.rows, metric, higher), name)
        blocks += [Paragraph(order)] if order else []
    return blocks
