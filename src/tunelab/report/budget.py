"""The training budget: one line for all runs, a table of each row's budget, and in words where
a row's budget differs from the others' (a comparison is only fair on the same budget, and a
reader should not have to find the one row that trained five times longer)."""

from __future__ import annotations

from typing import Any, Callable

from tunelab.report.collect import Run
from tunelab.report.document import Table, listing
from tunelab.report.rows import Row, distinct


def setting(run: Run, section: str, key: str) -> Any:
    """One value of the run's config.yaml (None where it has none)."""
    return (run.config.get(section) or {}).get(key)


def budget_line(runs: list[Run]) -> str:
    """Data and training budget, from the runs' own configs and summaries."""
    parts = [("train examples", [r.summary.train_examples for r in runs]),
             ("test examples", [r.summary.test_examples for r in runs]),
             ("validation examples at most", [setting(r, "data", "max_eval_examples") for r in runs]),
             ("max length", [setting(r, "task", "max_length") for r in runs]),
             ("epochs", [setting(r, "train", "epochs") for r in runs]),
             ("max steps", [setting(r, "train", "max_steps") for r in runs]),
             ("batch size", [setting(r, "train", "batch_size") for r in runs]),
             ("validation every N steps", [setting(r, "train", "eval_every_steps") for r in runs])]
    return "; ".join(f"{label} {distinct(values)}" for label, values in parts if any(v is not None for v in values))


def _count(value: Any, one: str, many: str) -> str:
    return f"{value:,} {one if value == 1 else many}" if isinstance(value, int) else f"{value} {many}"


BudgetField = tuple[str, Callable[[Run], Any], Callable[[Any], str]]
FIELDS: list[BudgetField] = [
    ("epochs", lambda run: setting(run, "train", "epochs"),
     lambda v: "with no epoch count recorded" if v is None else "for " + _count(v, "epoch", "epochs")),
    ("max steps", lambda run: setting(run, "train", "max_steps"),
     lambda v: "with no step limit" if v is None else "for at most " + _count(v, "step", "steps")),
    ("train examples", lambda run: run.summary.train_examples,
     lambda v: ("with no train-example count recorded" if v is None
                else "on " + _count(v, "train example", "train examples"))),
]
"""What a row's budget is made of: (header, the value of a run, the value in words after "trains")."""


def budget_table(rows: list[Row]) -> Table:
    """Per row: its learning rate, configured epochs and step limit, the steps it took, the
    examples it trained on."""
    headers = ["method", "lr", "epochs", "max steps", "steps taken", "train examples"]
    body = []
    for row in rows:
        values = [distinct([get(run) for run in row.runs]) for _, get, _ in FIELDS]
        steps = distinct([run.summary.steps for run in row.runs])
        if any(run.summary.stopped_early for run in row.runs):
            steps += " (stopped early)"
        lr = distinct([f"{v:.3g}" if isinstance(v, float) else v
                       for v in (setting(r, "train", "lr") for r in row.runs)])
        body.append([row.name, lr, values[0], values[1], steps, values[2]])
    return Table(headers, body, "budget")


def budget_differences(rows: list[Row]) -> str | None:
    """A sentence naming the rows whose budget (each row's first run) differs from the most
    common one, field by field; None where every row has the same budget."""
    clauses = []
    for _, get, words in FIELDS:
        groups: dict[Any, list[str]] = {}
        for row in rows:
            groups.setdefault(get(row.runs[0]), []).append(row.name)
        if len(groups) < 2:
            continue
        common = max(groups, key=lambda value: len(groups[value]))  # the first of equals
        for value, names in groups.items():
            if value != common:
                verb = "trains" if len(names) == 1 else "train"
                clauses.append(f"{listing(names)} {verb} {words(value)}")
        others = groups[common]
        clauses[-1] += f", {'the others' if len(others) > 1 else others[0]} {words(common)}"
    return f"Budgets differ: {'; '.join(clauses)}." if clauses else None
