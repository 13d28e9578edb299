"""Experiment tracking through the loop's one sink list: every record of metrics.jsonl reaches each
tracker, read back with the tracker's own reader; a run without trackers is as it was."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import cli_args
from tunelab import cli
from tunelab import comparison as compare

TRACKER_MODULES = ("tensorboard", "mlflow", "wandb", "trackio")


def records(run_dir, split: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


@pytest.fixture
def tracked_config(tiny_run_config, tmp_path):
    """Three validations (every 4 steps, and at the end) so a point in the wrong place shows."""
    return {**tiny_run_config, "train": {**tiny_run_config["train"], "eval_every_steps": 4},
            "output": {"dir": str(tmp_path / "study" / "run")}}


def test_tensorboard_and_mlflow_hold_every_validation_point(tracked_config, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["train", *cli_args(tracked_config), "--track", "tensorboard,mlflow"]) == 0
    run_dir = tmp_path / "study" / "run"
    validations = records(run_dir, "validation")
    assert len(validations) >= 3 and len({r["step"] for r in validations}) == len(validations)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for name in ("accuracy", "loss"):
        seen = [(e.step, e.value) for e in events.Scalars(f"validation/{name}")]
        assert seen == [(r["step"], pytest.approx(r[name], rel=1e-6)) for r in validations]
    test = records(run_dir, "test")[0]
    assert events.Scalars("test/accuracy")[-1].value == pytest.approx(test["accuracy"], rel=1e-6)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'study' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tunelab")  # a run outside a comparison: the default group
    (tracked,) = client.search_runs([experiment.experiment_id])
    assert tracked.info.run_name == "run" and tracked.info.status == "FINISHED"
    assert tracked.data.params["method.r"] == "4" and tracked.data.params["train.lr"] == "0.01"
    history = client.get_metric_history(tracked.info.run_id, "validation/accuracy")
    expected = [(r["step"], pytest.approx(r["accuracy"])) for r in validations]
    assert sorted((m.step, m.value) for m in history) == expected
    trains = records(run_dir, "train")
    assert [m.step for m in client.get_metric_history(tracked.info.run_id, "train/loss")] == [r["step"] for r in trains]


def test_wandb_offline_and_trackio_get_the_run(tracked_config, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is tunelab's default
    tracked_config["output"]["group"] = "my-study"
    assert cli.main(["train", *cli_args(tracked_config), "--track", "wandb,trackio"]) == 0
    run_dir = tmp_path / "study" / "run"
    validations = records(run_dir, "validation")

    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert json.loads((run_dir / "trackers.json").read_text())["wandb"] in offline.name
    history = wandb_history(next(offline.glob("run-*.wandb")))
    tracked = [(int(h["_step"]), float(h["validation/accuracy"])) for h in history if "validation/accuracy" in h]
    assert tracked == [(r["step"], pytest.approx(r["accuracy"])) for r in validations]
    assert float(history[-1]["test/accuracy"]) == pytest.approx(records(run_dir, "test")[0]["accuracy"])

    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs(project="my-study", run="run")
    tracked = [(log["step"], log["validation/accuracy"]) for log in logs if "validation/accuracy" in log]
    assert tracked == [(r["step"], pytest.approx(r["accuracy"])) for r in validations]


def wandb_history(path) -> list[dict[str, str]]:
    """The history rows of an offline W&B run file, read with W&B's own record type. The file is
    a LevelDB-style log (W&B ships no Python reader since its Go core): a 7-byte file header, then
    32 KiB blocks of chunks, each with a 7-byte header (crc32, length, kind: 1 whole record,
    2 first, 3 middle, 4 last piece)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, pieces, rows = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        pieces = (b"" if kind in (1, 2) else pieces) + data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record.FromString(pieces)
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    return rows


def test_no_tracker_writes_what_it_always_wrote_and_imports_none(tiny_run_config, tmp_path):
    """In a fresh process (this one has imported the trackers): the run directory's files, and
    no tracker library loaded."""
    script = (f"import sys, json; from tunelab import cli; rc = cli.main(['train', *{cli_args(tiny_run_config)!r}]); "
              f"print(json.dumps([rc, sorted(m for m in {TRACKER_MODULES!r} if m in sys.modules)]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    rc, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert rc == 0 and loaded == []
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "checkpoint", "config.yaml", "metrics.jsonl",
                                                         "predictions.jsonl", "summary.json"]


def test_an_unknown_or_missing_tracker_is_one_line(run_cli, tiny_run_config, monkeypatch):
    rc, _, err = run_cli(["train", *cli_args(tiny_run_config), "--track", "tensorboard,neptune"])
    assert rc == 2 and "unknown tracker 'neptune'" in err and "tensorboard, mlflow, trackio, wandb" in err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    rc, _, err = run_cli(["train", *cli_args(tiny_run_config), "--track", "mlflow"])
    assert rc == 2 and "pip install 'tunelab[mlflow]'" in err and len(err.strip().splitlines()) == 1


def test_a_comparison_and_its_tuning_trials_track_as_one_group(tmp_path):
    from tunelab.compare_config import TuneConfig
    from tunelab.tuning import tuning_for

    cfg = compare.load_compare_config(None, {"output": {"track": ["mlflow", "tensorboard"]}})
    cfg.tune = TuneConfig(trials=2)
    plan = compare.plan(cfg, methods="lora,ia3", output=str(tmp_path / "my-comparison"))
    assert {(tuple(r.config.output.track), r.config.output.group) for r in plan.runs} == \
        {(("mlflow", "tensorboard"), "my-comparison")}
    tuning = tuning_for(plan.config, "lora", plan.runs[0].config)
    trial = tuning.trial_config({"train.lr": 1e-3}, plan.directory / "tuning" / "lora" / "t0")
    assert trial.output.group == "my-comparison" and trial.output.track == ["mlflow", "tensorboard"]
    # Tracking is where records go, not what a run is: a comparison continued with other trackers
    # is the same comparison.
    assert compare._differences(plan.runs[0].config, compare.plan(compare.load_compare_config(None),
                                                                 methods="lora").runs[0].config) is None
