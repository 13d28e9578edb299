"""``tunelab export``: a trained run as files other tools load without tunelab.

- ``peft`` (:mod:`tunelab.export.peft_format`): the adapter in PEFT's own format, for
  ``peft.PeftModel.from_pretrained(base, DIR)``;
- ``merged`` (:mod:`tunelab.export.merged`): base + method folded into plain weights, for
  transformers' ``from_pretrained(DIR)``; a classifier, for ``pipeline("text-classification")``.

Which methods have which format, and how they write it, is each method's own (its options'
``export_formats``, its module's ``peft_adapter``, its modules' ``merge``).

Every refusal (:mod:`tunelab.export.support`) comes before anything is loaded or written. The
export is written into a temporary sibling of the output directory, loaded back the way a user
would load it and compared with the run's own outputs on a probe batch, and only then renamed
into place: a crash or a failed check leaves no half export, and the run directory is only read.
"""

from __future__ import annotations

import os
import shutil
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from tunelab.catalog import sha256_file
from tunelab.errors import UserError
from tunelab.export.support import FORMATS


def check_output(output: Path) -> None:
    """The output must be a new or empty directory: an export never mixes with other files."""
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; give a directory that does not exist yet or is empty")
    if output.is_dir() and any(output.iterdir()):
        raise UserError(f"--output {output} exists and is not empty; give a new or empty directory")


def check_request(run_dir: Path, fmt: str, output: Path):
    """The run's config, once every cheap check passed: format, run, output, method."""
    from tunelab.evaluate import run_config

    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    cfg = run_config(run_dir)  # refuses a directory without config.yaml or checkpoint
    check_output(output)
    reason = cfg.task.export_refusal(fmt) or cfg.method.export_refusal(fmt, cfg.task.causal)
    if reason:
        raise UserError(reason)
    return cfg


@contextmanager
def staging(output: Path) -> Iterator[Path]:
    """A temporary sibling of ``output`` to write into, renamed to ``output`` when the block
    completes and removed when it fails."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.export-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if output.is_dir():
            output.rmdir()  # checked empty; rename cannot replace a directory everywhere
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_run(run_dir: Path, fmt: str, output: Path) -> dict:
    """Export the run in ``run_dir`` as ``fmt`` into the new directory ``output``; returns what
    export.json records."""
    cfg = check_request(run_dir, fmt, output)
    with staging(output) as folder, warnings.catch_warnings():
        # transformers' deprecation notices about calls PEFT makes into it are not the user's to act on
        warnings.simplefilter("ignore", FutureWarning)
        record = write_export(run_dir, cfg, fmt, folder)
    return record


def write_export(run_dir: Path, cfg, fmt: str, folder: Path) -> dict:
    from tunelab import runs
    from tunelab.evaluate import rebuild_run
    from tunelab.export import merged, peft_format
    from tunelab.export.common import check_same, is_classifier, outputs, probe
    from tunelab.export.readme import readme

    _, prepared = rebuild_run(run_dir)
    model = prepared.model.cpu().eval()
    classifier = is_classifier(model)
    ids, mask = probe(model.config.vocab_size)
    reference = outputs(model, ids, mask)  # before the export consumes the model
    record = describe(run_dir, cfg, fmt, prepared.label_names if classifier else None)
    if fmt == "peft":
        record.update(peft_format.write(cfg, prepared, folder))
        loaded = peft_format.load(cfg, folder, len(prepared.label_names or []))
    else:
        record.update(merged.write(cfg, prepared, folder))
        loaded = merged.load(folder, classifier)
    skip = record.get("virtual_positions_in_outputs", 0)
    record["check"] = check_same(reference, outputs(loaded, ids, mask, skip), f"{fmt} model")
    runs.atomic_write_text(folder / "README.md", readme(fmt, record))  # PEFT's model card makes way for ours
    record["files"] = sorted(p.name for p in folder.iterdir()) + ["export.json"]
    runs.write_json(folder / "export.json", record)
    return record


def describe(run_dir: Path, cfg, fmt: str, labels: list[str] | None) -> dict:
    """What export.json records of where the export comes from."""
    import peft
    import safetensors

    from tunelab import runs
    from tunelab.models.loading import resolve

    checkpoint = run_dir / runs.CHECKPOINT / "model.safetensors"
    record = {"format": fmt, "method": cfg.method.name, "task": cfg.task.name, "run_dir": str(run_dir.resolve()),
              "checkpoint_sha256": sha256_file(checkpoint),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "base_model": cfg.model.name, "base_model_path": resolve(cfg.model), "revision": cfg.model.revision,
              "method_options": cfg.method.model_dump(mode="json"),
              "versions": {**runs.versions(), "peft": peft.__version__, "safetensors": safetensors.__version__},
              "tunelab_git": runs.git_hash()}
    if labels is not None:
        record["head"] = {**cfg.task.head_description(), "num_labels": len(labels), "labels": list(labels)}
    return record
