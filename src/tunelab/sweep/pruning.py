"""Reporting a trial's validations to its Optuna study, from inside ``tunelab train``.

A sweep starts each trial's training with ``TUNELAB_TRIAL`` in the environment: where the study
is and which trial this run is. The loop then reports every validation's objective to the
trial and stops cleanly when the study's pruner says so (the run directory's summary.json
then says ``pruned: true``). Without the variable nothing here is imported.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

ENV = "TUNELAB_TRIAL"


def reporter_from_env() -> Callable[[int, dict[str, Any]], bool] | None:
    """``report(step, validation_metrics) -> prune?`` for a sweep's trial; None for a plain run."""
    where = os.environ.get(ENV)
    if not where:
        return None
    import optuna

    from tunelab.study import pruner_named, storage_for

    where = json.loads(where)
    storage = storage_for(where["storage"], None) if where["storage"] else optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(where["journal"]))
    study = optuna.load_study(study_name=where["study"], storage=storage,
                              pruner=pruner_named(where["pruner"], where["pruner_startup_trials"]))
    trial = optuna.Trial(study, where["trial_id"])

    def report(step: int, metrics: dict[str, Any]) -> bool:
        trial.report(float(metrics[where["metric"]]), step)
        return trial.should_prune()

    return report
