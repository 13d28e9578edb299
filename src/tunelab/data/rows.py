"""Rows a task cannot use: a missing column, a missing label, an empty text, a label outside
``data.labels``.

The loader checks the data as it comes, before any split, so a bad row is named where the user
finds it: the line of their file (csv, tsv, jsonl, txt), or the row of a parquet file or of a
hub split, counting from 1. Which columns a task reads is its options' ``required_columns``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tunelab.config import DataConfig
from tunelab.data.labels import label_name
from tunelab.errors import UserError

if TYPE_CHECKING:
    from tunelab.tasks.options import TaskOptions

LABEL_KEY = "data.label_column"
BLANK = r"^[\s\p{Z}]*$"  # empty, or only (unicode) white space


def check_rows(raw: datasets.DatasetDict, files: dict[str, Path], data: DataConfig,
               task: TaskOptions) -> tuple[datasets.DatasetDict, int]:
    """Each split checked against the task's columns; rows with a missing label or text are
    refused (one line: how many, and the first) or, with ``data.drop_missing``, dropped.
    Returns the splits and the number of rows dropped."""
    required = task.required_columns(data)
    kept, dropped = {}, 0
    for name, split in raw.items():
        path = files.get(name)
        where = str(path) if path is not None else f"the {name} split of {data.name!r}"
        require_columns(split, required, where)
        bad = np.zeros(len(split), dtype=bool)
        notes = []
        for column, key in required.items():
            is_label = key == LABEL_KEY
            if not (is_label or task.refuse_empty_text):
                continue
            missing = missing_rows(split, column, is_label)
            if missing.any():
                bad |= missing
                count, first = int(missing.sum()), int(missing.argmax())
                notes.append(f"{count} {'row has' if count == 1 else 'rows have'} no {'label' if is_label else 'text'} "
                             f"in {column!r} (the first is {place(path, first)})")
            if is_label and data.labels is not None:
                check_known_labels(split, column, missing, data.labels, where, path)
        if notes and not data.drop_missing:
            raise UserError(f"{where}: {' and '.join(notes)}; fill them in, "
                            "or set data.drop_missing: true to drop them")
        kept[name] = split.select(np.flatnonzero(~bad)) if bad.any() else split
        dropped += int(bad.sum())
    return datasets.DatasetDict(kept), dropped


def require_columns(split: datasets.Dataset, required: dict[str, str], where: str) -> None:
    for column, key in required.items():
        if column in split.column_names:
            continue
        if key == "task.template":
            raise UserError(f"task.template names field {{{column}}} that {where} lacks; "
                            f"fields there: {', '.join(split.column_names)}")
        raise UserError(f"{key} {column!r} is not a column of {where}; columns: {', '.join(split.column_names)}")


def missing_rows(split: datasets.Dataset, column: str, is_label: bool) -> np.ndarray:
    """(rows,) True where the value is missing: null, NaN, empty or blank text, and for a
    ClassLabel label a negative id (the hub's "no label")."""
    values = split.with_format("arrow")[column]
    missing = pc.is_null(values, nan_is_null=True)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        missing = pc.or_(missing, pc.match_substring_regex(values, BLANK).fill_null(False))
    if is_label and isinstance(split.features[column], datasets.ClassLabel):
        missing = pc.or_(missing, pc.less(values, 0).fill_null(False))
    return np.asarray(missing.to_numpy(zero_copy_only=False), dtype=bool)


def check_known_labels(split: datasets.Dataset, column: str, missing: np.ndarray, labels: list[str], where: str,
                       path: Path | None) -> None:
    """Every label (missing ones aside) is one of ``labels``, compared by name."""
    values = split.with_format("arrow")[column]
    feature, known = split.features[column], set(labels)
    unknown = []  # (first row, name, count)
    for value in pc.unique(values).to_pylist():
        first = pc.index(values, value).as_py() if value is not None else -1
        if first < 0 or missing[first] or label_name(value, feature) in known:
            continue
        unknown.append((first, label_name(value, feature), pc.sum(pc.equal(values, value)).as_py()))
    if unknown:
        unknown.sort()
        first, name, count = unknown[0]
        more = f"; nor are {', '.join(repr(n) for _, n, _ in unknown[1:])}" if len(unknown) > 1 else ""
        rows_text = place(path, first) if count == 1 else f"{count} rows, the first is {place(path, first)}"
        raise UserError(f"{where}: label {name!r} ({rows_text}) is not one of the model's labels (data.labels): "
                        f"{', '.join(labels)}{more}")


def refuse_missing(split: datasets.Dataset, column: str, path: Path, what: str) -> None:
    """One line if any value of ``column`` is missing or blank (the texts ``predict`` labels)."""
    missing = missing_rows(split, column, is_label=False)
    if missing.any():
        count = int(missing.sum())
        raise UserError(f"{path}: {count} {'row has' if count == 1 else 'rows have'} no text in {column!r} "
                        f"(the first is {place(path, int(missing.argmax()))}); {what}")


# --------------------------------------------------------------------------------------------
# Where a row is in its file


def place(path: Path | None, index: int) -> str:
    """Row ``index`` (from 0) as the user finds it: ``line N`` of a text file, else ``row N``."""
    suffix = path.suffix.lower() if path is not None else ""
    line = None
    if suffix in (".csv", ".tsv"):
        line = _csv_line(path, index, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".jsonl" or (suffix == ".json" and not _is_json_array(path)):
        line = _nonblank_line(path, index)
    elif suffix == ".txt":
        line = index + 1
    return f"line {line}" if line is not None else f"row {index + 1}, counting from 1"


def _csv_line(path: Path, index: int, delimiter: str) -> int | None:
    """The line record ``index`` starts on: after the header, blank lines skipped (as the
    reader does), a quoted field may span lines."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        record, previous = -1, 0  # record -1 is the header
        for row in reader:
            start, previous = previous + 1, reader.line_num
            if not row:
                continue
            if record == index:
                return start
            record += 1
    return None


def _nonblank_line(path: Path, index: int) -> int | None:
    with open(path, encoding="utf-8") as fh:
        seen = -1
        for number, line in enumerate(fh, start=1):
            if line.strip():
                seen += 1
                if seen == index:
                    return number
    return None


def _is_json_array(path: Path) -> bool:
    with open(path, encoding="utf-8") as fh:
        return fh.read(4096).lstrip().startswith("[")
