"""The one machinery under sweeps and comparisons: runs as the trials of Optuna studies.

A study lives in the run directory in Optuna's journal file (several local processes may
share one file; Optuna's FAQ advises against SQLite for that), or at a storage URL Optuna
accepts (PostgreSQL, MySQL), which several machines share. Work is put into a study as
waiting trials; a worker claims one with the storage's atomic waiting-to-running update, so
two workers never run the same trial, and records who it is (host and process) on it.

A worker that dies leaves its trial running. :func:`recover` puts such a trial back to
waiting, with its parameters and its run directory, so the next worker resumes its run from
the last snapshot: killed and run again, a sweep or a comparison ends with the same trials. Only
trials of this host are judged (a process of another machine cannot be seen from here); a
machine that died is recovered by running the same command on it again.

Each trial's training is its own ``tunelab train`` process, which reports every validation to
the trial (:mod:`tunelab.sweeps.pruning`) when the study prunes.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

import optuna
from filelock import FileLock, Timeout
from optuna.trial import FrozenTrial, TrialState

from tunelab.errors import UserError

JOURNAL = "study.journal"
CLAIM_SECONDS = 60
"""A running trial that names no worker this long after it started was left by a worker that
died while claiming it."""


def storage_for(url: str | None, directory: Path | None) -> optuna.storages.BaseStorage:
    """The journal file in ``directory``, or the given URL (refused in one line if it cannot be opened)."""
    if url is None:
        directory.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(directory / JOURNAL))
        return optuna.storages.JournalStorage(backend)
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as exc:  # noqa: BLE001 - any driver or connection error is the user's URL
            # Two workers opening a new database at once both create Optuna's tables; the loser
            # sees the winner's (a unique violation) and succeeds when it tries again.
            if "duplicate key" in str(exc) or "already exists" in str(exc):
                time.sleep(0.5 * (attempt + 1))
                continue
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"--storage {url!r} cannot be opened: {first}") from None
    return optuna.storages.RDBStorage(url)


def sampler_named(name: str, seed: int, startup_trials: int = 10) -> optuna.samplers.BaseSampler:
    """TPE or random; a grid's trials carry fixed parameters, so nothing is sampled for them."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    return optuna.samplers.RandomSampler(seed=seed)


def pruner_named(name: str, startup_trials: int) -> optuna.pruners.BasePruner:
    """A study keeps no pruner: every process that asks ``should_prune`` builds the same one."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials)
    return optuna.pruners.HyperbandPruner() if name == "hyperband" else optuna.pruners.NopPruner()


def encode(params: dict[str, Any]) -> dict[str, Any]:
    """Optuna stores scalars; a list or mapping value (target_modules) is stored as JSON text."""
    return {k: v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v) for k, v in params.items()}


def waiting(study: optuna.Study, keep: Callable[[FrozenTrial], bool] = lambda t: True,
            order: Callable[[FrozenTrial], Any] = lambda t: t.number) -> list[FrozenTrial]:
    return sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) if keep(t)), key=order)


def claim(study: optuna.Study, candidates: Iterable[FrozenTrial]) -> optuna.Trial | None:
    """The first of ``candidates`` (waiting trials) this worker wins, marked as its own; None
    where every one was taken by another worker first."""
    for frozen in candidates:
        if study._storage.set_trial_state_values(frozen._trial_id, TrialState.RUNNING):  # atomic: one worker wins
            return own(optuna.Trial(study, frozen._trial_id))
    return None


def own(trial: optuna.Trial) -> optuna.Trial:
    """Record this worker (host and process) on a trial it runs, so a later command can tell a
    trial whose worker died (:func:`recover`)."""
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("worker", os.getpid())
    return trial


def is_stale(frozen: FrozenTrial) -> bool:
    """A running trial whose worker is gone: it ran on this host and its process has ended (or,
    for trials that recorded no worker, its run directory is not locked by a training)."""
    if not {"host", "worker"} & frozen.user_attrs.keys():  # claimed a moment ago, its owner not yet recorded?
        started = frozen.datetime_start
        return started is None or (datetime.now() - started).total_seconds() > CLAIM_SECONDS
    if frozen.user_attrs.get("host", socket.gethostname()) != socket.gethostname():
        return False
    pid = frozen.user_attrs.get("worker")
    if pid is not None:
        return not process_alive(int(pid))
    run_dir = frozen.user_attrs.get("run_dir")
    return run_dir is None or not Path(run_dir).exists() or not is_locked(Path(run_dir))


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # alive, but someone else's
    return _not_a_zombie(pid)


def _not_a_zombie(pid: int) -> bool:
    """A killed child its parent has not reaped yet still answers kill(0); /proc knows better."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    return fields[0] != "Z"


def is_locked(run_dir: Path) -> bool:
    try:
        with FileLock(str(run_dir / ".lock"), timeout=0):
            return False
    except Timeout:
        return True


def release(trial: optuna.Trial) -> None:
    """Put a trial this worker cannot finish (an error, an interrupt) back to waiting, as
    :func:`recover` would once the worker is gone; a trial already ended stays as it is."""
    try:
        trial.study._storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
    except Exception:  # noqa: BLE001 - it ended meanwhile (told), or the storage is gone: nothing to put back
        pass


def recover(study: optuna.Study) -> list[int]:
    """Trials left running by a worker of this host that has died go back to waiting, with
    their parameters and run directory: the next worker resumes them. Their numbers."""
    recovered = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_stale(frozen):
            study._storage.set_trial_state_values(frozen._trial_id, TrialState.WAITING)
            recovered.append(frozen.number)
    return recovered


def trial_environment(study: optuna.Study, trial: optuna.Trial, metric: str, pruner: str, startup_trials: int,
                      storage_url: str | None, directory: Path) -> dict[str, str]:
    """What a trial's training process needs to report its validations to the trial
    (:func:`tunelab.sweeps.pruning.pruner_from_env`)."""
    where = {"storage": storage_url, "journal": None if storage_url else str(directory / JOURNAL),
             "study": study.study_name, "trial_id": trial._trial_id, "metric": metric,
             "pruner": pruner, "pruner_startup_trials": startup_trials}
    return {**os.environ, "TUNELAB_TRIAL": json.dumps(where), "PYTHONUNBUFFERED": "1"}


def worker_main(prog: str, argv: list[str], work: Callable[[Path, str | None, str | None], None]) -> int:
    """The command line of a worker process, a sweep's or a comparison's: ``DIR [--storage URL]
    [--launcher L]``; ``work(directory, storage, launcher)`` runs trials until none is left. Bad
    input is one error line and exit 2, as everywhere."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("directory")
    parser.add_argument("--storage")
    parser.add_argument("--launcher")
    args = parser.parse_args(argv)
    try:
        work(Path(args.directory), args.storage, args.launcher)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
