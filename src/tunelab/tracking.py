"""Where a run's records go: one list of sinks on the training loop.

Every record the loop makes (the train loss every few steps, each epoch's train numbers, each
validation, the test) goes through :class:`Sinks` to each destination: the run's
``metrics.jsonl`` always, a sweep trial's pruner inside a sweep (tunelab.sweeps.pruning), and the
trackers ``output.track`` names. A tracker gets the run's resolved config as hyper-parameters
and the numbers of each record as ``<split>/<name>`` at the record's optimizer step; the runs of
a comparison or sweep share a group (``output.group``, the name of its directory).

Trackers write offline by default, so nothing needs a network: TensorBoard's event files in
``<run>/tensorboard``; MLflow's database ``mlflow.db`` in the comparison's or sweep's directory
(else beside the run directory), one experiment per group; W&B in offline mode under
``<run>/wandb`` (``wandb sync`` uploads it); trackio's local database. The libraries' own
environment variables (``MLFLOW_TRACKING_URI``, ``WANDB_MODE``, ``WANDB_PROJECT``, ``TRACKIO_DIR``)
point them elsewhere. Each is an optional extra; none is imported unless a run names it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from tunelab import runs
from tunelab.errors import UserError

TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "trackio": "trackio", "wandb": "wandb"}
"""Tracker name -> the module it needs (each an extra: ``pip install 'tunelab[mlflow]'``)."""
PROJECT = "tunelab"
"""The experiment (MLflow), project (W&B, trackio) of a run outside any comparison or sweep."""
IDS = "trackers.json"
"""A run's tracker run ids, so a resumed run goes on logging into the same tracked run."""


class Sink:
    """A destination for the loop's records. ``should_stop``: whether the sink asks the run to end
    (a sweep's pruner does)."""

    def log(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def should_stop(self) -> bool:
        return False

    def close(self) -> None:
        pass


class Sinks(Sink):
    """Every sink of a run, as one."""

    def __init__(self, sinks: list[Sink]):
        self.sinks = sinks

    def log(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(record)

    def should_stop(self) -> bool:
        return any(sink.should_stop() for sink in self.sinks)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class MetricsFile(Sink):
    """``metrics.jsonl``: one JSON line per record, appended (and flushed) as it comes."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def log(self, record: dict[str, Any]) -> None:
        runs.append_metrics(self.run_dir, record)


def parse_track(text: str) -> list[str]:
    """``--track tensorboard,mlflow`` -> the names, each one tunelab knows."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown or not names:
        raise UserError(f"--track {text!r}: unknown tracker {unknown[0] if unknown else ''!r}; "
                        f"choose from {', '.join(TRACKERS)} (comma-separated)")
    return names


def check_trackers(names: list[str]) -> None:
    """One line for a tracker whose library is not installed, before anything is trained."""
    for name in names:
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise UserError(f"output.track {name}: the {TRACKERS[name]} package is not installed; "
                            f"pip install 'tunelab[{name}]'")


def sinks_for(cfg, run_dir: Path, main: bool, metrics: list[str], pruner: Sink | None = None) -> Sinks:
    """The run's sinks: none on a process that is not the main one (only the main one writes),
    else metrics.jsonl, a sweep trial's ``pruner``, and each tracker asked for. ``metrics``: the
    numbers trackers show against the hyper-parameters (TensorBoard's HParams)."""
    if not main:
        return Sinks([])
    check_trackers(cfg.output.track)
    run = TrackedRun(run_dir, cfg.output.group or PROJECT, run_dir.name, flat_config(cfg), metrics)
    trackers = {"tensorboard": TensorBoard, "mlflow": MLflow, "trackio": Trackio, "wandb": WandB}
    return Sinks([MetricsFile(run_dir), *([pruner] if pruner else []),
                  *(trackers[name](run) for name in cfg.output.track)])


class TrackedRun:
    """What every tracker is told about the run."""

    def __init__(self, run_dir: Path, group: str, name: str, params: dict[str, Any], metrics: list[str]):
        self.dir, self.group, self.name, self.params, self.metrics = run_dir, group, name, params, metrics

    @property
    def home(self) -> Path:
        """The comparison's or sweep's directory (the run's parent named as its group), else the
        run directory's parent: where MLflow's local database goes."""
        return next((d for d in self.dir.resolve().parents if d.name == self.group), self.dir.resolve().parent)

    def remembered_id(self, tracker: str, make) -> str:
        """The tracker's id for this run: made once, kept in the run directory for a resume."""
        known = runs.read_json(self.dir / IDS) or {}
        if tracker not in known:
            known[tracker] = make()
            runs.write_json(self.dir / IDS, known)
        return known[tracker]


def flat_config(cfg) -> dict[str, Any]:
    """The resolved config as ``section.key`` -> value, lists and None as text (what trackers take)."""
    out: dict[str, Any] = {}

    def walk(tree: dict[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)

    walk(cfg.model_dump(mode="json", exclude={"output"}), "")
    return out


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers as ``<split>/<name>``; its split and step say where they go."""
    return {f"{record['split']}/{key}": float(value) for key, value in record.items()
            if key not in ("split", "step") and isinstance(value, (int, float)) and not isinstance(value, bool)}


class TensorBoard(Sink):
    """Event files in ``<run>/tensorboard`` (``tensorboard --logdir`` a comparison shows every run);
    the config as HParams, so runs can be set against each other by hyper-parameter."""

    def __init__(self, run: TrackedRun):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(log_dir=str(run.dir / "tensorboard"))
        experiment, start, end = hparams(run.params, {name: 0.0 for name in run.metrics})
        for summary in (experiment, start, end):
            self.writer.file_writer.add_summary(summary)

    def log(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])
        self.writer.flush()  # a crash loses no record

    def close(self) -> None:
        self.writer.close()


class MLflow(Sink):
    """One MLflow run per run, in the experiment of its comparison or sweep. MLflow 3 refuses its
    old file store; the local default is its SQLite database ``mlflow.db`` (:attr:`TrackedRun.home`)."""

    def __init__(self, run: TrackedRun):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its database set-up lines
        database = run.home / "mlflow.db"
        self.client = MlflowClient(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{database}")
        self.run_id = run.remembered_id("mlflow", lambda: self.client.create_run(
            self.experiment(run.group), run_name=run.name).info.run_id)
        # A resumed run logs the same values again, which MLflow accepts.
        params = [Param(key, str(value)[:6000]) for key, value in run.params.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another worker of the comparison made it first
            return self.client.get_experiment_by_name(name).experiment_id

    def log(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, record["step"]) for key, value in scalars(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandB(Sink):
    """A W&B run in the run's group, offline unless ``WANDB_MODE`` says otherwise."""

    def __init__(self, run: TrackedRun):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), group=run.group, name=run.name,
                              id=run.remembered_id("wandb", lambda: uuid.uuid4().hex[:8]), resume="allow",
                              dir=str(run.dir), config=run.params, mode=os.environ.get("WANDB_MODE", "offline"))

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


class Trackio(Sink):
    """A trackio run (local by default: its database under ``TRACKIO_DIR``), project = the group."""

    def __init__(self, run: TrackedRun):
        import trackio

        self.run = trackio.init(project=run.group, name=run.name, config=run.params, resume="allow",
                                auto_log_gpu=False, auto_log_cpu=False)

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()
