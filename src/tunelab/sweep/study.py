"""The Optuna study of a sweep: where it lives, how trials are handed out, and one trial's run.

The study is stored in the sweep directory in Optuna's journal file storage (several local
processes may share one file; Optuna's FAQ advises against SQLite for that), or at any
storage URL Optuna accepts (PostgreSQL, MySQL: several machines on one study). A grid is put
into the study once, as waiting trials; a worker claims one with the storage's atomic
waiting-to-running update, so two workers never run the same point. TPE and random trials
are asked of the sampler. Each trial is an ordinary run directory trained by its own
``tunelab train`` process, which reports every validation to the trial so a pruner can stop
it (:mod:`tunelab.sweep.pruning`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock, Timeout
from optuna.trial import TrialState

from tunelab.errors import UserError
from tunelab.launch import tunelab_command
from tunelab.sweep.space import Space, cast

STUDY_NAME = "tunelab-sweep"
JOURNAL = "study.journal"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
"""Trials that take a place in the sweep; a failed one leaves its place to a retry."""


def storage_for(url: str | None, directory: Path) -> optuna.storages.BaseStorage:
    """The journal file in the sweep directory, or the given URL (refused in one line if it
    cannot be opened)."""
    if url is None:
        directory.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(directory / JOURNAL))
        return optuna.storages.JournalStorage(backend)
    try:
        return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    except Exception as exc:  # noqa: BLE001 - any driver or connection error is the user's URL
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"--storage {url!r} cannot be opened: {first}") from None


def sampler_for(space: Space) -> optuna.samplers.BaseSampler:
    seed = space.settings.seed
    if space.settings.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # grid trials carry fixed params: nothing is sampled


def pruner_for(space: Space) -> optuna.pruners.BasePruner:
    return pruner_named(space.settings.pruner, space.settings.pruner_startup_trials)


def pruner_named(name: str, startup_trials: int) -> optuna.pruners.BasePruner:
    """A study keeps no pruner: every process that asks ``should_prune`` builds the same one."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials)
    return optuna.pruners.HyperbandPruner() if name == "hyperband" else optuna.pruners.NopPruner()


def open_study(space: Space, storage: optuna.storages.BaseStorage, config_text: str) -> optuna.Study:
    """Create the study (a grid is enqueued then) or load it; a study made from another
    config is refused."""
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, load_if_exists=True,
                                direction=space.settings.objective.direction, sampler=sampler_for(space),
                                pruner=pruner_for(space))
    made_from = study.user_attrs.get("config")
    if made_from is None:
        study.set_user_attr("config", config_text)
        study.set_user_attr("objective", space.settings.objective.metric)
        if space.settings.sampler == "grid":
            for point in space.points()[:space.size]:
                study.enqueue_trial(encode(point))
    elif made_from != config_text:
        raise UserError("this sweep's study was made from another config; give another --output (or --storage), "
                        "or run the same config to continue it")
    return study


def encode(params: dict[str, Any]) -> dict[str, Any]:
    """Optuna stores scalars; a list or mapping value (target_modules) is stored as JSON text."""
    return {k: v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v) for k, v in params.items()}


def suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """The trial's values of the searched keys (fixed ones for an enqueued grid point)."""
    params = {}
    for key, values in space.grid.items():
        chosen = trial.suggest_categorical(key, [encode({key: v})[key] for v in values])
        params[key] = next(v for v in values if encode({key: v})[key] == chosen)
    for key, rng in space.ranges.items():
        if rng.integer:
            params[key] = trial.suggest_int(key, int(rng.low), int(rng.high), log=rng.log)
        else:
            params[key] = cast(rng, trial.suggest_float(key, rng.low, rng.high, log=rng.log))
    return params


def next_trial(study: optuna.Study, space: Space) -> optuna.Trial | None:
    """A waiting trial claimed by this worker, or (tpe / random) a new one; None when the
    sweep has all its trials."""
    storage = study._storage
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if storage.set_trial_state_values(frozen._trial_id, TrialState.RUNNING):  # atomic: one worker wins
            return optuna.Trial(study, frozen._trial_id)
    if space.settings.sampler == "grid":
        return None
    if len(study.get_trials(deepcopy=False, states=COUNTED)) >= space.size:
        return None
    return study.ask()


def recover(study: optuna.Study, directory: Path) -> list[int]:
    """Trials left running by a killed worker (their run directory is not locked by a live
    training) are marked failed, and a grid point is put back to run again."""
    recovered = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_dir = Path(frozen.user_attrs.get("run_dir", directory / f"trial-{frozen.number:03d}"))
        if run_dir.exists() and is_locked(run_dir):
            continue
        study.tell(frozen.number, state=TrialState.FAIL)
        if "fixed_params" in frozen.system_attrs:
            study.enqueue_trial(frozen.system_attrs["fixed_params"])
        recovered.append(frozen.number)
    return recovered


def is_locked(run_dir: Path) -> bool:
    try:
        with FileLock(str(run_dir / ".lock"), timeout=0):
            return False
    except Timeout:
        return True


def trial_environment(study: optuna.Study, trial: optuna.Trial, space: Space, storage_url: str | None,
                      directory: Path) -> dict:
    """What the trial's training process needs to report its validations to this trial."""
    where = {"storage": storage_url, "journal": None if storage_url else str(directory / JOURNAL),
             "study": STUDY_NAME, "trial_id": trial._trial_id, "metric": study.user_attrs["objective"],
             "pruner": space.settings.pruner, "pruner_startup_trials": space.settings.pruner_startup_trials}
    return {**os.environ, "TUNELAB_TRIAL": json.dumps(where), "PYTHONUNBUFFERED": "1"}


def run_trial(study: optuna.Study, trial: optuna.Trial, space: Space, directory: Path, storage_url: str | None) -> str:
    """Train the trial's run in its own process and tell the study how it ended."""
    from tunelab import compare, runs
    from tunelab.config import to_yaml
    from tunelab.summary import Summary

    params = suggest(trial, space)
    run_dir = directory / f"trial-{trial.number:03d}"
    cfg = space.run_config(params, run_dir)
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", os.getpid())
    (directory / "configs").mkdir(exist_ok=True)
    config_file = directory / "configs" / f"{run_dir.name}.yaml"
    runs.atomic_write_text(config_file, to_yaml(cfg))
    command = [*tunelab_command(space.settings.launcher), "train", "--config", str(config_file), "--output.overwrite", "true"]
    code = compare.run_child(command, directory / "logs" / f"{run_dir.name}.log",
                             env=trial_environment(study, trial, space, storage_url, directory))
    if code == 130:
        raise KeyboardInterrupt
    if code != 0 or not (run_dir / "summary.json").is_file():
        trial.set_user_attr("error", compare.last_error_line(directory / "logs" / f"{run_dir.name}.log"))
        study.tell(trial, state=TrialState.FAIL)
        return "failed"
    summary = Summary.read(run_dir)
    if summary.pruned:
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned"
    study.tell(trial, summary.validation[study.user_attrs["objective"]])
    return "complete"


def work(space: Space, directory: Path, storage_url: str | None) -> None:
    """One worker: claim or ask trials and run them until the sweep has all of them."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage_for(storage_url, directory),
                              sampler=sampler_for(space), pruner=pruner_for(space))
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    while (trial := next_trial(study, space)) is not None:
        run_trial(study, trial, space, directory, storage_url)
