"""Reading run directories: which runs there are, and what each one wrote."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import UserError
from tunelab.files import read_json_lines
from tunelab.summary import FILE as SUMMARY_FILE
from tunelab.summary import Summary

SEED_SUFFIX = re.compile(r"-seed\d+$")
PREDICTIONS_FILE = "predictions.jsonl"
"""One record per test example (``id``, ``gold``, ``predicted``, ``score``, ``correct``);
runs made before it existed have none."""


@dataclass
class Run:
    name: str
    """The row it belongs to: the run directory's name without ``-seed<k>``."""
    path: Path
    summary: Summary
    config: dict[str, Any]
    validation: list[dict[str, Any]]
    """Validation records of metrics.jsonl, in order."""
    records: dict[int, dict[str, Any]] | None = None
    """Test example id -> its predictions.jsonl record (the numbers and flags of it: the
    per-example values of the task's metrics); None where the run has no predictions.jsonl."""

    @property
    def seed(self) -> Any:
        """The seed of the run's config, or "" where it has none (shown as an empty cell)."""
        return (self.config.get("train") or {}).get("seed", "")


def read_run(path: Path, name: str) -> Run | None:
    """A finished run directory (summary.json present), else None."""
    if not (path / SUMMARY_FILE).is_file():
        return None
    # Summary keeps keys it does not know in .extra, so summaries of older versions read too.
    summary = Summary.read(path)
    config_file = path / "config.yaml"
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    return Run(name, path, summary, config or {}, _validation_records(path / "metrics.jsonl"),
               _records_by_id(path / PREDICTIONS_FILE))


def _validation_records(metrics_file: Path) -> list[dict[str, Any]]:
    if not metrics_file.is_file():
        return []
    return [record for record in read_json_lines(metrics_file) if record.get("split") == "validation"]


def _records_by_id(predictions_file: Path) -> dict[int, dict[str, Any]] | None:
    """Every prediction's numbers and flags by its ``id``; its texts (gold, predicted, the
    generated output) are not needed by the report and not kept."""
    if not predictions_file.is_file():
        return None
    found: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(predictions_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            found[int(record["id"])] = {k: v for k, v in record.items()
                                        if k != "id" and (v is None or isinstance(v, (bool, int, float)))}
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"{predictions_file}:{number}: not a prediction record with an integer id "
                            f"({error.__class__.__name__}: {error})") from None
    return found


def _is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / SUMMARY_FILE).is_file()


def collect(dirs: list[Path]) -> tuple[list[Run], list[Path], dict[str, str]]:
    """Finished runs, unfinished run directories, and the comparison configs (label -> YAML).

    Each of ``dirs`` is a comparison directory (its run directories are read) or a run
    directory itself. With several comparisons, row names get the comparison's name in front;
    directories of one comparison (the same compare.yaml: its runs split over machines that
    shared a --storage) are one comparison, and a run found in several is read once.
    """
    finished: list[Run] = []
    unfinished: list[Path] = []
    configs: dict[str, str] = {}
    comparisons = [d for d in dirs if d.is_dir() and not _is_run_dir(d)]
    several = len({_identity(d) for d in comparisons}) > 1
    seen: set[str] = set()
    for directory in dirs:
        if not directory.is_dir():
            raise UserError(f"{directory} is not a directory; give comparison or run directories")
        if _is_run_dir(directory):
            candidates, prefix = [directory], ""
        else:
            candidates = _comparison_runs(directory, configs)
            prefix = f"{directory.name}/" if several else ""
        for path in candidates:
            if prefix + path.name in seen:
                continue
            seen.add(prefix + path.name)
            run = read_run(path, prefix + SEED_SUFFIX.sub("", path.name))
            if run is None:
                unfinished.append(path)
            else:
                finished.append(run)
    return finished, unfinished, configs


def _identity(directory: Path) -> str:
    """What makes directories one comparison: the same compare.yaml but for its output directory
    (each machine sharing a --storage writes its own); a directory without one is its own."""
    compare_file = directory / "compare.yaml"
    if not compare_file.is_file():
        return str(directory)
    config = yaml.safe_load(compare_file.read_text(encoding="utf-8")) or {}
    return yaml.safe_dump({k: v for k, v in config.items() if k != "output"}, sort_keys=True)


def _comparison_runs(directory: Path, configs: dict[str, str]) -> list[Path]:
    """The run directories of one comparison, in the order its compare.yaml lists the methods
    (by name where there is none); records that compare.yaml in ``configs``."""
    candidates = sorted(p for p in directory.iterdir() if p.is_dir() and _is_run_dir(p))
    compare_file = directory / "compare.yaml"
    if compare_file.is_file():
        if all(_identity(Path(label)) != _identity(directory) for label in configs):  # one comparison: once
            configs[str(directory)] = compare_file.read_text(encoding="utf-8")
        order = list((yaml.safe_load(compare_file.read_text(encoding="utf-8")) or {}).get("methods") or {})
        rank = {name: i for i, name in enumerate(order)}
        candidates.sort(key=lambda p: (rank.get(SEED_SUFFIX.sub("", p.name), len(rank)), p.name))
    return candidates
