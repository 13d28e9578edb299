"""The Optuna study of a sweep: how its trials are made, handed out and run.

The storage, claiming, recovery after a kill and the trial's link to its training process
are the machinery a comparison uses too (:mod:`tunelab.study`). A grid is put into the study
once, as waiting trials with fixed parameters; TPE and random trials are asked of the sampler.
Each trial is an ordinary run directory (``trial-NNN``) trained by its own ``tunelab train``
process, which reports every validation to the trial so a pruner can stop it.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from tunelab import warm
from tunelab.errors import UserError
from tunelab.study import (
    JOURNAL,
    claim,
    encode,
    own,
    pruner_named,
    recover,
    release,
    sampler_named,
    storage_for,
    trial_environment,
)
from tunelab.sweeps.space import Space

__all__ = ["JOURNAL", "STUDY_NAME", "encode", "open_study", "recover", "storage_for", "work"]

STUDY_NAME = "tunelab-sweep"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
"""Trials that take a place in the sweep; a failed one leaves its place to a retry."""


def sampler_for(space: Space) -> optuna.samplers.BaseSampler:
    return sampler_named(space.settings.sampler, space.settings.seed)


def pruner_for(space: Space) -> optuna.pruners.BasePruner:
    return pruner_named(space.settings.pruner, space.settings.pruner_startup_trials)


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


def next_trial(study: optuna.Study, space: Space) -> optuna.Trial | None:
    """A waiting trial claimed by this worker (a grid point, or a trial a dead worker left), or
    (tpe / random) a new one; None when the sweep has all its trials."""
    trial = claim(study, study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    if trial is not None or space.settings.sampler == "grid":
        return trial
    if len(study.get_trials(deepcopy=False, states=COUNTED)) >= space.size:
        return None
    return own(study.ask())


def run_trial(study: optuna.Study, trial: optuna.Trial, space: Space, directory: Path, storage_url: str | None) -> str:
    """Train the trial's run in its own process and tell the study how it ended."""
    from tunelab import comparison as compare
    from tunelab import runs
    from tunelab.config import to_yaml
    from tunelab.summary import Summary

    params = space.suggest(trial)
    run_dir = directory / f"trial-{trial.number:03d}"
    cfg = space.run_config(params, run_dir)
    trial.set_user_attr("run_dir", str(run_dir))
    (directory / "configs").mkdir(exist_ok=True)
    config_file = directory / "configs" / f"{run_dir.name}.yaml"
    runs.atomic_write_text(config_file, to_yaml(cfg))
    planned = compare.PlannedRun(run_dir.name, cfg.train.seed, run_dir, cfg)
    state = compare.run_state(planned)
    code = 0  # done: the sweep was killed after the run ended, before the study heard; its summary says how
    if state != "done":
        env = trial_environment(study, trial, study.user_attrs["objective"], space.settings.pruner,
                                space.settings.pruner_startup_trials, storage_url, directory)
        code = compare.run_child(compare.train_command(planned, state, config_file, space.settings.launcher),
                                 directory / "logs" / f"{run_dir.name}.log", env=env)
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
    with warm.kept():  # its trials fork from one server that imported the libraries once
        while (trial := next_trial(study, space)) is not None:
            try:
                run_trial(study, trial, space, directory, storage_url)
            except BaseException:  # an error or an interrupt: the trial goes back for the next command
                release(trial)
                raise
