"""The ``tunelab export`` command line (parsed here, run by :func:`tunelab.export.export_run`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tunelab.errors import UserError
from tunelab.export.support import FORMATS


def add_export_command(sub) -> None:
    formats = "; ".join(f"{name}: {what}" for name, what in FORMATS.items())
    p = sub.add_parser("export", help="write a trained run in PEFT's format or as a merged transformers checkpoint")
    p.add_argument("run_dir", help="a run directory with a checkpoint")
    p.add_argument("--format", required=True, metavar="FORMAT", help=formats)
    p.add_argument("--output", required=True, metavar="DIR", help="a new or empty directory for the export")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace, extra: list[str]) -> int:
    from tunelab.export import export_run

    if extra:
        raise UserError(f"unexpected arguments: {' '.join(extra)}")
    record = export_run(Path(args.run_dir), args.format, Path(args.output))
    print(f"{record['method']} run exported as {record['format']} -> {args.output} (outputs match the run's to "
          f"{record['check']['max_abs_difference']:.2g}; see README.md there)")
    return 0
