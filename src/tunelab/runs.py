"""The run directory: config.yaml, metrics.jsonl, summary.json, checkpoint/ and state/.

``checkpoint/`` holds the best-validation trained tensors (safetensors) and what is needed to
rebuild the model (the config sits next to it). ``state/`` is the latest mid-training
checkpoint: trained tensors, optimizer, scheduler, RNG and loop position, for ``--resume``.
Every file is written to a temporary name and renamed, so a kill never leaves half a file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tunelab.errors import UserError
from tunelab.files import append_line, atomic_write_bytes, atomic_write_text, write_json  # noqa: F401 - used here and by callers of runs
from tunelab.sharding import local_optimizer_state

CHECKPOINT = "checkpoint"
STATE = "state"
PREVIOUS_STATE = "state.prev"
"""The snapshot before the latest, kept so that a damaged latest one is not the end of a run."""
MODEL_FILE = "model.safetensors"
CHECKSUMS = "checksums.json"
"""sha256 of the files a run writes once (vocab.json); the checkpoint's and each snapshot's are
in their own folders, swapped in with them."""


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    append_line(run_dir / "metrics.jsonl", json.dumps(record))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # Clones make tied or strided tensors plain, which safetensors requires.
    with written_aside(tmp):
        save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


@contextlib.contextmanager
def written_aside(tmp: Path):
    """A file written by a library (safetensors, torch.save) under a temporary name: removed if the
    write fails, and a full disk reported as the OSError it is (the libraries raise their own
    error types with the OS error in the text)."""
    try:
        yield
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if not isinstance(exc, OSError) and ("No space left" in str(exc) or "write failed" in str(exc)) \
                and shutil.disk_usage(tmp.parent).free < 1 << 20:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp)) from exc
        raise


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def save_checkpoint(run_dir: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """The best checkpoint, with its tensors' sha256 in meta.json, swapped in whole (a kill or a
    full disk halfway leaves the previous checkpoint as it was)."""
    with folder_aside(run_dir / (CHECKPOINT + ".tmp")) as tmp:
        save_tensors(tmp / MODEL_FILE, tensors)
        write_json(tmp / "meta.json", {**meta, "sha256": {MODEL_FILE: sha256_file(tmp / MODEL_FILE)}})
        swap_in(tmp, run_dir / CHECKPOINT)


@contextlib.contextmanager
def folder_aside(tmp: Path):
    """A fresh temporary folder to fill and swap in; gone again if anything fails on the way."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_in(tmp: Path, folder: Path, keep: Path | None = None) -> None:
    """Put a fully written folder in place of ``folder``; the old one goes to ``keep`` (or away)."""
    old = keep or folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except BaseException:
        if old.exists() and not folder.exists():
            os.replace(old, folder)  # the previous one back in its place
        raise
    if keep is None:
        shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_checksum(run_dir: Path, name: str) -> None:
    """Note a file written once per run (the LSTM's vocab.json) in the run's checksums.json."""
    known = read_json(run_dir / CHECKSUMS) or {}
    write_json(run_dir / CHECKSUMS, {**known, name: sha256_file(run_dir / name)})


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (ValueError, UnicodeDecodeError):
        return None


def checksums(run_dir: Path) -> dict[str, str]:
    """Every checksum the run recorded, by the file's path in the run directory."""
    found = dict(read_json(run_dir / CHECKSUMS) or {})
    meta = read_json(run_dir / CHECKPOINT / "meta.json") or {}
    found.update({f"{CHECKPOINT}/{name}": sha for name, sha in (meta.get("sha256") or {}).items()})
    return found


def verify(run_dir: Path, name: str) -> None:
    """Refuse a file of the run whose sha256 is not the one recorded when it was written (a copy
    or download cut short, a file overwritten): one line naming it and what to do."""
    path = run_dir / name
    summary = read_json(run_dir / "summary.json") or {}
    expected, source = (summary.get("checksums") or {}).get(name), "summary.json"
    if expected is None:
        expected, source = checksums(run_dir).get(name), ("checkpoint/meta.json" if name.startswith(CHECKPOINT)
                                                           else CHECKSUMS)
    if expected is not None and path.is_file() and sha256_file(path) != expected:
        raise UserError(f"{run_dir / name} is damaged (sha256 differs from {source}): re-run or restore it")


def load_checked_tensors(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    """A safetensors file of the run, verified first; one that is not a complete safetensors
    file (a run written before checksums) is refused the same way, never half-read."""
    verify(run_dir, name)
    try:
        return load_tensors(run_dir / name)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a broken file
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"{run_dir / name} is damaged (not a complete safetensors file: {first}): "
                        f"re-run or restore it") from None


def checkpoint_bytes(run_dir: Path) -> int:
    return (run_dir / CHECKPOINT / "model.safetensors").stat().st_size


def save_state(run_dir: Path, tensors: dict[str, torch.Tensor], optimizer_state: dict[str, Any], scheduler,
               progress: dict[str, Any], process_rngs: list[torch.Tensor] | None = None) -> None:
    """A complete snapshot to resume from. Written to state.tmp/, then swapped in whole.
    ``optimizer_state``: the optimizer's ``state_dict()``, whole (tunelab.sharding gathers a
    sharded one).
    ``process_rngs``: every process's torch generator state (by process index), so that each
    process of a multi-process run draws its own dropout masks again after a resume."""
    with folder_aside(run_dir / (STATE + ".tmp")) as tmp:
        save_tensors(tmp / "model.safetensors", tensors)
        with written_aside(tmp / "optim.pt"):
            torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        rng = {"torch": torch.get_rng_state()}
        rng.update({f"process{i}": state for i, state in enumerate(process_rngs or [])})
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        with written_aside(tmp / "rng.safetensors"):
            save_file(rng, str(tmp / "rng.safetensors"))
        py_state = random.getstate()
        np_state = np.random.get_state()
        write_json(tmp / "progress.json", {**progress, "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
                                           "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]]})
        write_json(tmp / CHECKSUMS, {p.name: sha256_file(p) for p in sorted(tmp.iterdir())})
        swap_in(tmp, run_dir / STATE, keep=run_dir / PREVIOUS_STATE)


def damaged_in(folder: Path) -> str | None:
    """The first file of a snapshot folder that is missing or not what its checksums.json says."""
    expected = read_json(folder / CHECKSUMS)
    if expected is None:
        return None if not (folder / CHECKSUMS).exists() else CHECKSUMS  # an older snapshot has none
    for name, sha in expected.items():
        if not (folder / name).is_file() or sha256_file(folder / name) != sha:
            return name
    return None


def has_snapshot(run_dir: Path) -> bool:
    return (run_dir / STATE).is_dir() or (run_dir / PREVIOUS_STATE).is_dir()


def snapshot(run_dir: Path) -> Path:
    """The snapshot to resume from: the latest if it is whole, else the one before it (said on
    stderr); a damaged snapshot with no good one before it is one error line."""
    latest, previous = run_dir / STATE, run_dir / PREVIOUS_STATE
    bad = damaged_in(latest) if latest.is_dir() else "(missing)"
    if bad is None:
        return latest
    why = f"{latest / bad} is damaged (sha256 differs from {latest / CHECKSUMS})" if latest.is_dir() else \
        f"{latest} is missing (the run was stopped while it was being replaced)"
    if previous.is_dir() and damaged_in(previous) is None:
        print(f"{why}; resuming from the snapshot before it ({previous})", file=sys.stderr)
        return previous
    raise UserError(f"{why} and there is no good snapshot before it: start the run again with --output.overwrite true")


def load_state(run_dir: Path, optimizer, scheduler, process: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    folder = snapshot(run_dir)
    tensors = load_tensors(folder / "model.safetensors")
    optim = torch.load(folder / "optim.pt", weights_only=True)
    optimizer.load_state_dict(local_optimizer_state(optimizer, optim["optimizer"]))  # a sharded one takes its slices
    scheduler.load_state_dict(optim["scheduler"])
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng.get(f"process{process}", rng["torch"]))
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[k] for k in sorted(rng) if k.startswith("cuda")])
    progress = json.loads((folder / "progress.json").read_text())
    version, internal, gauss = progress.pop("python_rng")
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = progress.pop("numpy_rng")
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return tensors, progress


def remove_state(run_dir: Path) -> None:
    """A finished run needs no resume snapshots (for full fine-tuning each is 3x the model)."""
    shutil.rmtree(run_dir / STATE, ignore_errors=True)
    shutil.rmtree(run_dir / PREVIOUS_STATE, ignore_errors=True)


def git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str]:
    import platform

    import accelerate
    import datasets
    import transformers

    from tunelab.version import __version__

    return {"tunelab": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "datasets": datasets.__version__}
