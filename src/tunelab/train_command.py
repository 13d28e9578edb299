"""``tunelab train``: the run's directory, its checks, its lock, and the training, on one process
or on each of the processes a launcher started (only the main one writes)."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from pathlib import Path

from tunelab.errors import UserError


def format_metrics(metrics: dict, split: str) -> str:
    """``test accuracy 0.8360  loss 0.3921 ...``: every number of a split on one line."""
    shown = [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
             if k != "split" and isinstance(v, (int, float))]
    return f"{split} " + "  ".join(shown)


def train_target(args: argparse.Namespace, extra: list[str]):
    """The run's config, its directory, and whether it resumes; every refusal before any write."""
    from tunelab import runs
    from tunelab.config import deep_merge, load_config, parse_overrides
    from tunelab.tracking import parse_track

    overrides = parse_overrides(extra)
    if getattr(args, "track", None):
        overrides = deep_merge(overrides, {"output": {"track": parse_track(args.track)}})
    if args.resume:
        run_dir = Path(args.resume)
        if overrides or args.config:
            raise UserError("--resume continues a run exactly as configured; drop --config and the overrides")
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"cannot resume {run_dir}: it has no config.yaml")
        if (run_dir / "summary.json").is_file():
            raise UserError(f"{run_dir} already finished (summary.json exists); nothing to resume")
        return load_config(run_dir / "config.yaml"), run_dir, runs.has_snapshot(run_dir)
    return place(load_config(args.config, overrides)) + (False,)


def place(cfg) -> tuple:
    """A new run's config (its default directory name made unique) and its directory, refused
    before anything is written if that directory cannot take it."""
    from tunelab.tracking import check_trackers

    check_trackers(cfg.output.track)
    run_dir = cfg.run_dir()
    check_writable(run_dir)
    if cfg.output.dir is None:  # a default name never clobbers: runs/x, runs/x-2, runs/x-3 ...
        stem, n = run_dir, 1
        while run_dir.exists() and any(run_dir.iterdir()):
            n += 1
            run_dir = stem.with_name(f"{stem.name}-{n}")
        cfg.output.dir = str(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not cfg.output.overwrite:
        finished = (run_dir / "summary.json").is_file()
        hint = "pick another --output.dir or add --output.overwrite true" if finished else \
            f"continue it with tunelab train --resume {run_dir}, or add --output.overwrite true"
        raise UserError(f"{run_dir} already holds a {'finished' if finished else 'started'} run; {hint}")
    return cfg, run_dir


def check_writable(run_dir: Path) -> None:
    """A run directory that can be made and written: not a file, not under one, not read-only."""
    import os

    for path in (run_dir, *run_dir.parents):
        if path.exists():
            if not path.is_dir():
                what = "is" if path == run_dir else f"is under {path}, which is"
                raise UserError(f"--output.dir {run_dir} {what} a file, not a directory; give a directory")
            if not os.access(path, os.W_OK | os.X_OK):
                raise UserError(f"--output.dir {run_dir}: cannot write in {path} (permission denied); "
                                f"give a directory you can write")
            return


def train_from_cli(args: argparse.Namespace, extra: list[str]) -> int:
    from tunelab.launch import die_with_parent, started_by_launcher

    if started_by_launcher():
        die_with_parent()  # a rank never outlives its launcher (torchrun gives each its own session)
    cfg, run_dir, resume = train_target(args, extra)
    summary, main = run_training(cfg, run_dir, resume, resuming=bool(args.resume))
    if main:
        print(f"{format_metrics(summary.test, 'test')}  train time {summary.train_time_s:.0f}s  "
              f"-> {run_dir / 'summary.json'}")
    return 0


def run_training(cfg, run_dir: Path, resume: bool = False, resuming: bool = False) -> tuple:
    """Train in ``run_dir`` (``resume``: from its snapshot; ``resuming``: a run started before,
    whose files are read back); the summary, and whether this is the main process."""
    from tunelab import checkpointing
    from tunelab.build import prepare
    from tunelab.launch import make_accelerator
    from tunelab.loop import train

    # Every process has made its checks before the main one writes anything (several processes:
    # torchrun or accelerate launch); only the main process writes the run directory.
    accelerator = make_accelerator(cfg)
    accelerator.wait_for_everyone()
    # Every check on the input happens before anything is written. A resumed run reads back
    # the files it saved (the LSTM's vocabulary).
    prepared = prepare(cfg, run_dir if resuming else None)
    checkpointing.enable(prepared)  # train.gradient_checkpointing, refused (the LSTM) before any write
    with run_directory_lock(run_dir, accelerator.is_main_process):
        if accelerator.is_main_process:
            start_run_directory(cfg, run_dir, prepared, fresh=not resuming)
        accelerator.wait_for_everyone()
        summary = train(cfg, prepared, run_dir, resume=resume, accelerator=accelerator)
    return summary, accelerator.is_main_process


@contextlib.contextmanager
def run_directory_lock(run_dir: Path, main: bool):
    """The main process holds the run directory's lock while the run trains."""
    from filelock import FileLock, Timeout

    if not main:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(str(run_dir / ".lock"), timeout=0)
        lock.acquire()
    except Timeout:
        raise UserError(f"another tunelab process is writing {run_dir}; "
                        "wait for it or pick another --output.dir") from None
    try:
        yield
    finally:
        lock.release()


def start_run_directory(cfg, run_dir: Path, prepared, fresh: bool) -> None:
    """A fresh run's config and files (a resumed one keeps its own); the run's size on stderr."""
    from tunelab import runs
    from tunelab.config import to_yaml

    if fresh:
        for name in ("metrics.jsonl", "summary.json", runs.CHECKPOINT, runs.STATE, runs.PREVIOUS_STATE, runs.CHECKSUMS):
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        runs.atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
        for name, text in prepared.files.items():
            runs.atomic_write_text(run_dir / name, text)
            runs.record_checksum(run_dir, name)
    counts = prepared.counts
    print(f"{cfg.method.name} on {cfg.model.name}: {counts.trainable:,} trainable of {counts.total:,} "
          f"parameters ({counts.trainable_percent:.3f}%), run directory {run_dir}", file=sys.stderr)
