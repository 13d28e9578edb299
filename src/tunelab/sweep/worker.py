"""A sweep's worker process: ``python -m tunelab.sweep.worker SWEEP_DIR [--storage URL]``.

Reads the sweep as its command wrote it (``SWEEP_DIR/sweep.yaml``) and runs trials until the
sweep has them all. ``tunelab sweep --workers K`` starts K of them on one study.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from tunelab.errors import UserError


def main(argv: list[str]) -> int:
    from tunelab.sweep import SWEEP_FILE
    from tunelab.sweep.space import SweepSettings, build_space
    from tunelab.sweep.study import work

    parser = argparse.ArgumentParser(prog="python -m tunelab.sweep.worker")
    parser.add_argument("directory")
    parser.add_argument("--storage")
    parser.add_argument("--launcher")
    args = parser.parse_args(argv)
    directory = Path(args.directory)
    raw = yaml.safe_load((directory / SWEEP_FILE).read_text(encoding="utf-8"))
    settings = SweepSettings.model_validate({k: raw.pop(k) for k in list(raw) if k in SweepSettings.model_fields})
    settings.launcher = args.launcher
    try:
        work(build_space(raw, settings), directory, args.storage)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
