"""A sweep's worker process: ``python -m tunelab.sweeps.worker SWEEP_DIR [--storage URL]``.

Reads the sweep as its command wrote it (``SWEEP_DIR/sweep.yaml``) and runs trials until the
sweep has them all. ``tunelab sweep --workers K`` starts K of them on one study.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def work_in(directory: Path, storage: str | None, launcher: str | None) -> None:
    """A worker of the sweep in ``directory`` (its sweep.yaml says what it is)."""
    from tunelab.sweeps import SWEEP_FILE
    from tunelab.sweeps.space import SweepSettings, build_space
    from tunelab.sweeps.study import work

    raw = yaml.safe_load((directory / SWEEP_FILE).read_text(encoding="utf-8"))
    settings = SweepSettings.model_validate({k: raw.pop(k) for k in list(raw) if k in SweepSettings.model_fields})
    settings.launcher = launcher
    work(build_space(raw, settings), directory, storage)


def main(argv: list[str]) -> int:
    from tunelab.study import worker_main

    return worker_main("python -m tunelab.sweeps.worker", argv, work_in)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
