"""Which methods the test set can tell apart from the best one.

Each row's first run is compared with the best row's first run on the same test examples
(predictions.jsonl, matched by ``id``) by the exact McNemar test: a difference of a point or two
of accuracy on a few hundred examples is often noise, and the report says which ones are.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.report.collect import PREDICTIONS_FILE, Run
from tunelab.report.document import listing
from tunelab.report.rows import EMPTY, Row
from tunelab.report.stats import discordant, mcnemar_exact

ALPHA = 0.05
"""Below this p-value a method counts as told apart from the best."""


@dataclass
class Paired:
    """One row against the best row."""
    name: str
    run: str
    """The run directory compared (the row's first run)."""
    runs: int = 1
    """How many runs (seeds) the row has."""
    examples: int = 0
    b: int = 0
    """Examples the best run gets right and this run wrong."""
    c: int = 0
    """Examples this run gets right and the best run wrong."""
    p: float | None = None
    """The exact McNemar p-value; None where no test was possible."""
    reason: str = ""
    """Why no test was possible."""

    @property
    def verdict(self) -> str:
        if self.p is None:
            return f"no test: {self.reason}"
        if self.p >= ALPHA:
            return "cannot tell apart"
        return "worse" if self.b > self.c else "better"


def best_row(rows: list[Row], metric: str, higher_is_better: bool) -> Row | None:
    """The row with the best mean test ``metric`` (the first of equals), whatever it costs."""
    scored = [row for row in rows if row.mean(f"test_{metric}") is not None]
    if not scored:
        return None
    return (max if higher_is_better else min)(scored, key=lambda row: row.mean(f"test_{metric}"))


def paired_tests(rows: list[Row], best: Row) -> list[Paired]:
    """Every other row against ``best``, first run against first run."""
    return [compare(best.runs[0], row) for row in rows if row is not best]


def compare(best: Run, row: Row) -> Paired:
    """The exact McNemar test of the row's first run against ``best``, or why there can be none."""
    run = row.runs[0]
    reason = no_test_reason(best, run)
    if reason:
        return Paired(row.name, run.path.name, len(row.runs), reason=reason)
    b, c = discordant(best.correct, run.correct)
    return Paired(row.name, run.path.name, len(row.runs), len(best.correct), b, c, mcnemar_exact(b, c))


def no_test_reason(best: Run, run: Run) -> str:
    """Empty where the two runs' predictions can be paired."""
    if run.correct is None:
        return f"no {PREDICTIONS_FILE} (runs made before it was written have none)"
    if best.correct is None:
        return f"the best run ({best.path.name}) has no {PREDICTIONS_FILE}"
    if any(v is None for v in [*best.correct.values(), *run.correct.values()]):
        return f"the {run.summary.task or best.summary.task} task has no right or wrong answer per example"
    if best.correct.keys() != run.correct.keys():
        return "different test example ids"
    if not best.correct:
        return f"empty {PREDICTIONS_FILE}"
    return ""


def p_words(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3g}"


def verdict(paired: list[Paired], best: Row) -> list[str]:
    """The sentences that say which methods the test examples tell apart from the best."""
    tested = [p for p in paired if p.p is not None]
    found = []
    if tested:
        groups = {kind: [p for p in tested if p.verdict == kind] for kind in ("cannot tell apart", "worse", "better")}
        parts = []
        if groups["cannot tell apart"]:
            parts.append(f"{listing([p.name for p in groups['cannot tell apart']])} cannot be told apart from "
                         f"{best.name} (exact McNemar test, p ≥ {ALPHA})")
        for kind in ("worse", "better"):
            if groups[kind]:
                verb = "is" if len(groups[kind]) == 1 else "are"
                words = kind if kind == "worse" else "better in the runs compared"  # possible with seeds: best by mean
                parts.append(f"{listing([f'{p.name} ({p_words(p.p)})' for p in groups[kind]])} {verb} {words}")
        found.append(f"On these {tested[0].examples:,} test examples, {'; '.join(parts)}.")
        if len(best.runs) > 1 or any(p.runs > 1 for p in tested):
            found.append(f"With several seeds per row, each row's first run is the one compared "
                         f"({best.runs[0].path.name} for {best.name}).")
    reasons: dict[str, list[str]] = {}
    for p in paired:
        if p.p is None:
            reasons.setdefault(p.reason, []).append(p.name)
    found += [f"No paired test was possible for {listing(rows)}: {reason}." for reason, rows in reasons.items()]
    return found


def paired_table(paired: list[Paired], best: Row) -> tuple[list[str], list[list[str]]]:
    """Headers and body of the table of b, c and p per row."""
    headers = ["method", "run compared", "examples", f"only {best.name} right (b)", "only this right (c)",
               "p (exact McNemar)", "verdict"]
    body = []
    for p in paired:
        numbers = [f"{p.examples:,}", f"{p.b:,}", f"{p.c:,}", f"{p.p:.4g}"] if p.p is not None else [EMPTY] * 4
        body.append([p.name, p.run, *numbers, p.verdict])
    return headers, body
