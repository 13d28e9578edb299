"""A comparison's out-of-domain sets (``eval_sets``): every final run's best checkpoint evaluated
on other data, all of its rows (or as many as the comparison tests in domain), by ``tunelab
eval --save`` in a process of its own (the comparison's process stays free of torch); the
report reads the saved results (tunelab.report.eval_sets)."""

from __future__ import annotations

import sys
from pathlib import Path

from tunelab import comparison as compare
from tunelab.launch import tunelab_command

EVAL_DIR = "eval"
"""``RUN_DIR/eval/<name>/``: a saved evaluation on other data (``tunelab eval --save NAME``): its
``metrics.json`` and ``predictions.jsonl``."""


def set_folder(name: str) -> str:
    """The folder name an out-of-domain set's results get in a run directory (eval/<folder>)."""
    return Path(name).stem if Path(name).suffix else Path(name).name


def test_cap(data) -> list[str]:
    """The comparison's cap on its test split (``data.max_test_examples``, else
    ``max_eval_examples``; ``--quick`` sets one), as the ``tunelab eval`` override that puts
    it on an out-of-domain set too; none when the comparison tests every row."""
    cap = data.max_test_examples or data.max_eval_examples
    return ["--data.max_test_examples", str(cap)] if cap else []


def evaluate(plan) -> None:
    """Each finished final run's checkpoint on each of the comparison's ``eval_sets`` (one
    ``tunelab eval --save`` process each, skipped where already saved); a failure is told and
    the set left out of the report."""
    for run in plan.runs:
        for data in plan.config.eval_sets:
            folder = set_folder(data)
            done = (run.run_dir / EVAL_DIR / folder / "metrics.json").is_file()
            if done or not (run.run_dir / "summary.json").is_file():
                continue
            log = plan.directory / "logs" / f"{run.run_dir.name}-eval-{folder}.log"
            command = [*tunelab_command(None), "eval", str(run.run_dir), "--data.name", data, "--save", folder,
                       *test_cap(plan.config.data)]
            if compare.run_child(command, log) != 0:
                print(f"{run.run_dir.name} on {data}: evaluation failed: {compare.last_error_line(log)}",
                      file=sys.stderr)
