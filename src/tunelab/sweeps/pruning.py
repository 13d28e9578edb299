"""Reporting a trial's validations to its Optuna study, from inside ``tunelab train``.

A sweep starts each trial's training with ``TUNELAB_TRIAL`` in the environment: where the study
is and which trial this run is. The run's pruner, one of its sinks (tunelab.tracking), then
reports every validation's objective to the trial, and the loop stops cleanly when the study's
pruner says so (the run directory's summary.json then says ``pruned: true``). Without the
variable nothing here is imported.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tunelab.tracking import Sink

ENV = "TUNELAB_TRIAL"


class Pruner(Sink):
    """The trial's sink: each validation's objective goes to the study, whose pruner may end the run."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric, self.prune = trial, metric, False

    def log(self, record: dict[str, Any]) -> None:
        if record["split"] == "validation":
            self.trial.report(float(record[self.metric]), record["step"])
            self.prune = self.trial.should_prune()

    def should_stop(self) -> bool:
        return self.prune


def pruner_from_env() -> Pruner | None:
    """A sweep trial's pruner (one of the run's sinks, tunelab.tracking); None for a plain run."""
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
    return Pruner(optuna.Trial(study, where["trial_id"]), where["metric"])
