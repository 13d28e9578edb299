"""The ``tunelab sweep`` command line (parsed here, run by :func:`tunelab.sweeps.run_sweep`)."""

from __future__ import annotations

import argparse

from tunelab.errors import UserError


def add_sweep_command(sub) -> None:
    p = sub.add_parser("sweep", help="hyper-parameter search on Optuna: grid, TPE or random, with pruning")
    p.add_argument("--config", required=True, help="sweep YAML: a run config plus search, sampler, objective, ...")
    p.add_argument("--trials", type=int, help="trials to run (tpe / random; at most the grid's size for a grid)")
    p.add_argument("--storage", help="an Optuna RDB storage URL shared by several machines "
                                     "(default: a journal file in the sweep directory)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes on the one study (default 1)")
    p.add_argument("--output", help="sweep directory (default: the config's output.dir, or runs/sweep-...)")
    p.add_argument("--launcher", help="start each trial with this launcher, e.g. \"torchrun --nproc_per_node 2\" "
                                      "(see the README, 'Several processes')")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace, extra: list[str]) -> int:
    from tunelab.sweeps import run_sweep

    if extra:
        raise UserError(f"unexpected arguments: {' '.join(extra)}; a sweep takes its options from --config")
    written = run_sweep(args.config, trials=args.trials, storage=args.storage, workers=args.workers,
                        output=args.output, progress=not args.no_progress, launcher=args.launcher)
    print(written["summary"])
    print(f"report: {written['html']} (and sweep.md, trials.csv, plots)")
    return 0
