"""Writing files so that nothing half-written is ever read as complete.

Every file tunelab writes goes to a temporary name beside its place and is renamed over it
(a rename is atomic on one filesystem): a kill or a full disk halfway leaves the previous file
as it was, or no file. A log that grows (metrics.jsonl) is appended to, and cut back to where it
was when an append fails. The standard library only: the report and the comparison's own
process use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no stray half file either
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def append_line(path: Path, line: str) -> None:
    """One line at the end of a log; on a failed write the log is cut back to its last whole line."""
    with open(path, "ab") as fh:
        end = fh.tell()
        try:
            fh.write(line.encode("utf-8") + b"\n")
            fh.flush()
        except OSError:
            fh.truncate(end)
            raise


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log; a last line cut short (a writer killed mid-line) is not a record."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise
    return records


def write_csv(path: Path, header: list[str], rows) -> None:
    """A CSV file written whole, or not at all."""
    import csv
    import io

    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
