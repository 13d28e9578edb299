"""Rebuilding a run for ``tunelab eval`` and ``predict``: base weights + the run's checkpoint,
then the task's evaluation of a split (the same function training used), on the run's data or
on any other (its labels mapped by name onto the run's), or labels for a file of texts."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import torch

CAPS = ("max_train_examples", "max_eval_examples", "max_validation_examples", "max_test_examples")
"""The run's caps on its data, which other data does not inherit: all of it is evaluated."""


def run_config(run_dir: Path):
    """The config of a run that has a checkpoint; one error line for anything else."""
    from tunelab import runs
    from tunelab.config import load_config
    from tunelab.errors import UserError

    checkpoint = run_dir / runs.CHECKPOINT / runs.MODEL_FILE
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    if not checkpoint.is_file():
        raise UserError(f"{run_dir} has no checkpoint yet ({checkpoint} is missing)")
    for name in runs.checksums(run_dir):  # every file the run will be rebuilt from, before it is trusted
        runs.verify(run_dir, name)
    return load_config(run_dir / "config.yaml")


def rebuild_run(run_dir: Path, data: dict[str, Any] | None = None, whole_data: bool = False):
    """The run's config and its prepared model with the checkpoint's tensors loaded (an LSTM
    run's vocabulary is read back from the run directory). ``data``: overrides of the data
    section (``{"name": "tweets.csv"}``), the run's label set kept; ``whole_data``: every row
    of the data in each split, unsplit."""
    from tunelab import runs
    from tunelab.build import prepare
    from tunelab.errors import UserError
    from tunelab.methods.common import load_trainable_state

    cfg = run_config(run_dir)
    if data:
        cfg = with_other_data(cfg, run_dir, data)
    if whole_data and getattr(cfg.task, "shots", 0):
        raise UserError(f"{run_dir} prompts with {cfg.task.shots} demonstrations drawn from the data's train split, "
                        "which --split all would evaluate too; use --split test")
    prepared = prepare(cfg, run_dir, whole_data)
    load_trainable_state(prepared.model, runs.load_checked_tensors(run_dir, f"{runs.CHECKPOINT}/{runs.MODEL_FILE}"))
    return cfg, prepared


def with_other_data(cfg, run_dir: Path, overrides: dict[str, Any]):
    """The run's config with its data section overridden: other data keeps the run's columns,
    split fractions and seed unless given, but not its caps or hub subset, and never its label
    set, which becomes ``data.labels`` so the new data's labels map onto the model's by name."""
    from tunelab.config import deep_merge, validate_config
    from tunelab.errors import UserError

    if "labels" in overrides:
        raise UserError("data.labels of a trained run are the labels its model was trained on; "
                        "eval maps the data's labels onto them by name, so drop --data.labels")
    raw = cfg.model_dump(mode="json")
    section = raw["data"]
    if "name" in overrides:
        section.update(dict.fromkeys(CAPS), subset=None)
    section = deep_merge(section, overrides)
    section["labels"] = run_labels(cfg, run_dir)
    return validate_config({**raw, "data": section})


def run_labels(cfg, run_dir: Path) -> list[str] | None:
    """The run's label names in id order (``summary.json``, else its own data's train split);
    None for a task without labels."""
    from tunelab.data.labels import label_set
    from tunelab.data.rows import LABEL_KEY
    from tunelab.data.sources import load_splits

    if LABEL_KEY not in cfg.task.required_columns(cfg.data).values():
        return None
    summary = run_dir / "summary.json"
    if summary.is_file():
        names = json.loads(summary.read_text(encoding="utf-8")).get("label_names")
        if names:
            return list(names)
    return label_set(load_splits(cfg.data, cfg.task), cfg.data).names


def save_evaluation(run_dir: Path, name: str, result: dict[str, Any]) -> Path:
    """Write an evaluation's numbers and per-example records under ``RUN_DIR/eval/<name>/``."""
    from tunelab import runs
    from tunelab.eval_sets import EVAL_DIR

    folder = run_dir / EVAL_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    predictions = result.get("predictions") or []
    runs.atomic_write_text(folder / "predictions.jsonl",
                           "".join(json.dumps({"id": i, **p}) + "\n" for i, p in enumerate(predictions)))
    runs.write_json(folder / "metrics.json", {k: v for k, v in result.items() if k != "predictions"})
    return folder


def evaluate_run(run_dir: Path, split: str | None = "test", data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rebuild the model from the base weights plus the run's checkpoint and evaluate a split
    (``all``: every row of the data). ``data``: overrides of the data section; split None
    means ``all`` when they name other data, else ``test``."""
    from torch.utils.data import DataLoader

    from tunelab.launch import make_accelerator

    if split is None:
        split = "all" if data and "name" in data else "test"
    cfg, prepared = rebuild_run(run_dir, data, whole_data=split == "all")
    # All of the data is evaluated as a test split is (instruct generates there).
    task_split = "test" if split == "all" else split
    accelerator = make_accelerator(cfg, shard=False)  # a sharded run's checkpoint is whole
    loader = DataLoader(prepared.splits[task_split], batch_size=cfg.eval.batch_size, collate_fn=prepared.collate)
    model, loader = accelerator.prepare(prepared.model, loader)
    with accelerator.autocast():  # the run's train.precision, as its own evaluations ran
        result = {"split": split, **prepared.task.evaluate(model, loader, accelerator, prepared, task_split)}
    if prepared.dropped:
        result["dropped_examples"] = prepared.dropped
    return result


@torch.no_grad()
def predict_run(run_dir: Path, texts: list[str]) -> list[dict[str, Any]]:
    """The predicted label of each text with its softmax probability (and every label's), for a
    classification run (an encoder with a head, or the LSTM)."""
    from tunelab.errors import UserError

    if not texts:
        raise UserError("give at least one text to classify, e.g. tunelab predict RUN_DIR \"a gripping film\"")
    return predict(*rebuild_run(run_dir), texts)


@torch.no_grad()
def predict(cfg, prepared, texts: list[str]) -> list[dict[str, Any]]:
    """:func:`predict_run` on a rebuilt run (``tunelab.load(...).predict``)."""
    from tunelab.errors import UserError

    if prepared.encode_texts is None:
        raise UserError(f"predict needs a classification run; this is a {cfg.task.name} run")
    if cfg.data.text_pair_column:
        raise UserError(f"the run classifies text pairs ({cfg.data.text_column}, {cfg.data.text_pair_column}); "
                        "predict takes single texts")
    model = prepared.model.eval()
    features = prepared.encode_texts(texts)
    results = []
    for start in range(0, len(features), cfg.eval.batch_size):
        batch = prepared.collate(features[start:start + cfg.eval.batch_size])
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "lengths")}  # tokens, or cached features
        probs = model(**inputs).softmax(-1)  # (B, labels)
        for row in probs:
            best = int(row.argmax())
            results.append({"label": prepared.label_names[best], "probability": row[best].item(),
                            "probabilities": dict(zip(prepared.label_names, row.tolist()))})
    return [{"text": text, **result} for text, result in zip(texts, results)]


def texts_to_label(run_dir: Path, texts: list[str], file: str | None, column: str | None) -> tuple[list[str], str]:
    """``predict``'s texts, given or read from a file (its ``column``, else the run's text
    column), and the column name they go under in the output."""
    from tunelab.data.sources import read_texts
    from tunelab.errors import UserError

    if bool(texts) == bool(file):
        raise UserError("give the texts to label, or --file FILE (one of them): "
                        "tunelab predict RUN_DIR \"a gripping film\"")
    if column and not file:
        raise UserError("--column names the text column of --file FILE; give the file too")
    if file:
        return read_texts(Path(file), column, run_config(run_dir).data.text_column)
    return texts, "text"


def check_output(output: Path, inputs: list[Path]) -> None:
    """Where ``predict --output`` writes must be a file in an existing folder, not an input."""
    from tunelab.errors import UserError

    output = output.expanduser()
    if output.is_dir():
        raise UserError(f"--output {output} is a directory; give a file name, e.g. {output / 'predictions.csv'}")
    if not output.parent.is_dir():
        raise UserError(f"--output {output}: the folder {output.parent} does not exist")
    if any(output.resolve() == p.expanduser().resolve() for p in inputs):
        raise UserError(f"--output {output} is the input file; write the predictions elsewhere")


def write_predictions(output: Path, results: list[dict[str, Any]], text_column: str) -> None:
    """A CSV: the text, the predicted label, its probability, then every label's probability
    (``probability_<label>``), one row per text in input order."""
    from tunelab import runs

    names = list(results[0]["probabilities"]) if results else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([text_column, "label", "probability", *(f"probability_{name}" for name in names)])
    for r in results:
        writer.writerow([r["text"], r["label"], repr(r["probability"]), *(repr(r["probabilities"][n]) for n in names)])
    runs.atomic_write_text(output.expanduser(), buffer.getvalue())
