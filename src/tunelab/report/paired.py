"""Which methods the test set can tell apart from the reference, with corrected p-values.

The reference is the row that is best on **validation** (the mean over its seeds), not on test:
picking the winner on test and then testing it on the same test examples favours it (the
winner's curse). Every other row is compared with it on the same test examples (matched by
``id`` in predictions.jsonl), on the primary metric:

- one run each and a proportion (accuracy): the exact McNemar test on the discordant examples;
- otherwise a paired bootstrap: over the examples, and with several seeds over each side's seeds
  too, so that a row whose seeds disagree is not judged by its first seed alone;
- Holm's correction over all the comparisons of the report; the verdict uses the corrected p;
- for each, the smallest difference the test could have detected (80 % power at the strictest
  corrected level), so "cannot be told apart" is read as "no difference larger than this".
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.report.collect import PREDICTIONS_FILE, Run
from tunelab.report.document import listing
from tunelab.report.per_example import examples, metric_of
from tunelab.report.rows import EMPTY, Row
from tunelab.report.stats import (
    detectable_difference,
    discordant,
    holm,
    mcnemar_exact,
    mcnemar_standard_error,
    paired_bootstrap,
)

ALPHA = 0.05
"""Below this corrected p-value a method counts as told apart from the reference."""
MCNEMAR = "exact McNemar"
BOOTSTRAP_EXAMPLES = "paired bootstrap over examples"
BOOTSTRAP_SEEDS = "paired bootstrap over seeds and examples"


@dataclass
class Paired:
    """One row against the reference row."""
    name: str
    runs: int = 1
    """How many runs (seeds) the row has."""
    test: str = ""
    """Which test: MCNEMAR, BOOTSTRAP_EXAMPLES or BOOTSTRAP_SEEDS."""
    examples: int = 0
    difference: float | None = None
    """The row's metric minus the reference's (means over seeds)."""
    b: int | None = None
    """McNemar: examples the reference gets right and this row wrong."""
    c: int | None = None
    """McNemar: examples this row gets right and the reference wrong."""
    p: float | None = None
    """The test's own p-value; None where no test was possible."""
    p_holm: float | None = None
    """Corrected over every comparison of the report (Holm)."""
    detectable: float | None = None
    """The smallest difference this test could have found (80 % power, corrected level)."""
    standard_error: float | None = None
    reason: str = ""
    """Why no test was possible."""
    higher_is_better: bool = True

    @property
    def verdict(self) -> str:
        if self.p_holm is None:
            return f"no test: {self.reason}"
        if self.p_holm >= ALPHA:
            return "cannot be told apart"
        ahead = (self.difference or 0) > 0 if self.higher_is_better else (self.difference or 0) < 0
        return "better" if ahead else "worse"


@dataclass
class Reference:
    row: Row
    metric: str
    """The validation metric it was chosen by."""
    value: float


def reference_row(rows: list[Row], metrics: list[tuple[str, bool]]) -> Reference | None:
    """The row best on validation, by the first of ``metrics`` (name, higher is better) that every
    row has; the first of equals. None where no validation metric is shared."""
    for metric, higher in metrics:
        scored = [(row, mean_validation(row, metric)) for row in rows]
        if scored and all(value is not None for _, value in scored):
            row, value = (max if higher else min)(scored, key=lambda pair: pair[1])
            return Reference(row, metric, value)
    return None


def mean_validation(row: Row, metric: str) -> float | None:
    values = [run.summary.metric("validation", metric) for run in row.runs]
    values = [v for v in values if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else None


def paired_tests(rows: list[Row], reference: Row, metric: str, higher_is_better: bool) -> list[Paired]:
    """Every other row against ``reference`` on the test ``metric``, Holm-corrected together."""
    found = [compare(reference, row, metric, higher_is_better) for row in rows if row is not reference]
    tested = [p for p in found if p.p is not None]
    for paired, adjusted in zip(tested, holm([p.p for p in tested])):
        paired.p_holm = adjusted
        if paired.standard_error:  # 0: the two runs never differ on an example; nothing to scale a difference by
            paired.detectable = detectable_difference(paired.standard_error, alpha=ALPHA / len(tested))
    return found


def compare(reference: Row, row: Row, metric: str, higher_is_better: bool) -> Paired:
    """The test of ``row`` against ``reference`` that their runs allow, or why there is none."""
    paired = Paired(row.name, len(row.runs), higher_is_better=higher_is_better)
    mine, theirs = examples(row.runs, metric), examples(reference.runs, metric)
    reason = mine.reason or (f"the reference ({reference.name}): {theirs.reason}" if theirs.reason else "")
    if not reason and mine.ids != theirs.ids:
        reason = "different test example ids"
    if reason:
        paired.reason = reason
        return paired
    paired.examples = len(mine.ids)
    declared = metric_of(row.runs[0], metric)
    if declared.kind == "proportion" and len(row.runs) == len(reference.runs) == 1:
        return mcnemar(paired, reference.runs[0], row.runs[0], declared.field, mine.ids)
    several = len(row.runs) > 1 or len(reference.runs) > 1
    result = paired_bootstrap(mine.samples, theirs.samples, resample_seeds=several)
    paired.test = BOOTSTRAP_SEEDS if several else BOOTSTRAP_EXAMPLES
    paired.difference, paired.p, paired.standard_error = result.difference, result.p, result.standard_error
    return paired


def mcnemar(paired: Paired, reference: Run, run: Run, field: str, ids: tuple[int, ...]) -> Paired:
    right = {i: bool(run.records[i][field]) for i in ids}
    reference_right = {i: bool(reference.records[i][field]) for i in ids}
    b, c = discordant(reference_right, right)
    n = len(ids)
    paired.test, paired.b, paired.c, paired.p = MCNEMAR, b, c, mcnemar_exact(b, c)
    paired.difference = (c - b) / n
    paired.standard_error = mcnemar_standard_error(b, c, n)
    return paired


def p_words(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3g}"


def verdict(paired: list[Paired], reference: Reference, metric: str, fmt) -> list[str]:
    """The sentences that say which methods the test examples tell apart from the reference."""
    found = [f"Reference: **{reference.row.name}**, the best on validation {reference.metric} "
             f"({fmt(reference.value)}); the test set is not used to pick it."]
    tested = [p for p in paired if p.p_holm is not None]
    if tested:
        groups = {kind: [p for p in tested if p.verdict == kind]
                  for kind in ("cannot be told apart", "worse", "better")}
        parts = []
        if groups["cannot be told apart"]:
            names = listing([p.name for p in groups["cannot be told apart"]])
            parts.append(f"{names} cannot be told apart from {reference.row.name}")
        for kind in ("worse", "better"):
            if groups[kind]:
                verb = "is" if len(groups[kind]) == 1 else "are"
                parts.append(f"{listing([f'{p.name} ({p_words(p.p_holm)})' for p in groups[kind]])} {verb} {kind}")
        tests = listing(sorted({p.test for p in tested}))
        comparisons = f"{len(tested)} comparison{'s' if len(tested) > 1 else ''}"
        found.append(f"On test {metric} over these {tested[0].examples:,} examples ({tests}; p-values corrected by "
                     f"Holm's method over the {comparisons}): {'; '.join(parts)}.")
        undecided = [p for p in groups["cannot be told apart"] if p.detectable is not None]
        if undecided:
            largest = max(p.detectable for p in undecided)
            found.append(f"\"Cannot be told apart\" is not \"equal\": differences smaller than about {fmt(largest)} "
                         f"in test {metric} could not have been detected here (80 % power; per method in the table).")
    reasons: dict[str, list[str]] = {}
    for p in paired:
        if p.p is None:
            reasons.setdefault(p.reason, []).append(p.name)
    found += [f"No paired test was possible for {listing(rows)}: {reason}." for reason, rows in reasons.items()]
    return found


def paired_table(paired: list[Paired], reference: Row, fmt) -> tuple[list[str], list[list[str]]]:
    """Headers and body of the table of the tests against the reference."""
    mcnemar_rows = any(p.b is not None for p in paired)
    headers = ["method", "runs", "test", "examples", "difference"]
    headers += [f"only {reference.name} right (b)", "only this right (c)"] if mcnemar_rows else []
    headers += ["p", "p (Holm)", "detectable difference", "verdict"]
    body = []
    for p in paired:
        if p.p is None:
            body.append([p.name, str(p.runs)] + [EMPTY] * (len(headers) - 3) + [p.verdict])
            continue
        cells = [p.name, str(p.runs), p.test, f"{p.examples:,}", f"{p.difference:+.4f}"]
        if mcnemar_rows:
            cells += [f"{p.b:,}", f"{p.c:,}"] if p.b is not None else [EMPTY, EMPTY]
        cells += [f"{p.p:.4g}", f"{p.p_holm:.4g}", fmt(p.detectable) if p.detectable is not None else EMPTY, p.verdict]
        body.append(cells)
    return headers, body


def paired_note(reference: str) -> str:
    return (f"Each method against {reference} on the same test examples (matched by `id` in `{PREDICTIONS_FILE}`). "
            "Exact McNemar (one run each, a proportion): b counts the examples only the reference gets right, c those "
            "only the other method gets right, p = min(1, 2 · P(X ≤ min(b, c))) with X ~ Binomial(b + c, 1/2). "
            "Paired bootstrap (2,000 replicates): the test examples are drawn with replacement, the same for both "
            "methods, and with several seeds each method's seeds are drawn too; p is twice the smaller share of "
            "differences on either side of zero. p (Holm): corrected for all the comparisons in this table; the "
            "verdict reads it at 0.05. Detectable difference: the true difference this test would find with 80 % "
            "power at the strictest corrected level, (z + z_0.8) × its standard error.")
