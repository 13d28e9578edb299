"""The run directory: config.yaml, metrics.jsonl, summary.json, checkpoint/ and state/.

``checkpoint/`` holds the best-validation trained tensors (safetensors) and what is needed to
rebuild the model (the config sits next to it). ``state/`` is the latest mid-training
checkpoint: trained tensors, optimizer, scheduler, RNG and loop position, for ``--resume``.
Every file is written to a temporary name and renamed, so a kill never leaves half a file.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINT = "checkpoint"
STATE = "state"


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # Clones make tied or strided tensors plain, which safetensors requires.
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def save_checkpoint(run_dir: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    folder = run_dir / CHECKPOINT
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / "model.safetensors", tensors)
    write_json(folder / "meta.json", meta)


def checkpoint_bytes(run_dir: Path) -> int:
    return (run_dir / CHECKPOINT / "model.safetensors").stat().st_size


def save_state(run_dir: Path, tensors: dict[str, torch.Tensor], optimizer, scheduler, progress: dict[str, Any],
               process_rngs: list[torch.Tensor] | None = None) -> None:
    """A complete snapshot to resume from. Written to state.tmp/, then swapped in whole.
    ``process_rngs``: every process's torch generator state (by process index), so that each
    process of a multi-process run draws its own dropout masks again after a resume."""
    tmp = run_dir / (STATE + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_tensors(tmp / "model.safetensors", tensors)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
    rng = {"torch": torch.get_rng_state()}
    rng.update({f"process{i}": state for i, state in enumerate(process_rngs or [])})
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(tmp / "rng.safetensors"))
    py_state = random.getstate()
    np_state = np.random.get_state()
    write_json(tmp / "progress.json", {**progress, "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
                                       "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]]})
    old = run_dir / (STATE + ".old")
    if (run_dir / STATE).exists():
        os.replace(run_dir / STATE, old)
    os.replace(tmp, run_dir / STATE)
    shutil.rmtree(old, ignore_errors=True)


def load_state(run_dir: Path, optimizer, scheduler, process: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    folder = run_dir / STATE
    tensors = load_tensors(folder / "model.safetensors")
    optim = torch.load(folder / "optim.pt", weights_only=True)
    optimizer.load_state_dict(optim["optimizer"])
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
    """A finished run needs no resume snapshot (for full fine-tuning it is 3x the model)."""
    shutil.rmtree(run_dir / STATE, ignore_errors=True)


def git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str]:
    import platform

    import accelerate
    import datasets
    import transformers

    import tunelab

    return {"tunelab": tunelab.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "datasets": datasets.__version__}
