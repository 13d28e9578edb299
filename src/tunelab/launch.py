"""How a training process is started, alone or as N processes by a launcher, and the
Accelerator that sees them.

A launcher is the command that starts the ranks, given as its words before ``-m tunelab.cli``:
``torchrun --nproc_per_node 2`` (CPU or GPU) or ``accelerate launch --num_processes 2`` (GPU).
Every process it starts dies with it: torchrun puts each rank in its own session, so a launcher
killed without warning would otherwise leave its ranks training on, holding the run directory.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys

from tunelab.errors import UserError


def die_with_parent() -> None:
    """Linux: this process is killed when its parent dies (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def started_by_launcher() -> bool:
    """True in a rank that torchrun or ``accelerate launch`` started."""
    return os.environ.get("LOCAL_RANK") is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1


PORT_OPTIONS = {"torchrun": ("--master_port", "--master-port", "--rdzv_endpoint", "--rdzv-endpoint", "--standalone"),
                "accelerate": ("--main_process_port", "--main-process-port")}
"""A launcher's options that say where its processes meet; without one, each run gets a free port."""


def tunelab_command(launcher: str | None) -> list[str]:
    """The words that run ``tunelab.cli``: this Python, or the launcher's command with ``-m``.

    torchrun and accelerate launch meet on one default port (29500): two runs at once (a sweep's
    workers) would collide, so a launcher that names no port is given a free one."""
    if not launcher:
        return [sys.executable, "-m", "tunelab.cli"]
    words = shlex.split(launcher)
    kind = "torchrun" if any(w.endswith("torchrun") or w == "torch.distributed.run" for w in words) else \
        "accelerate" if words and words[0].endswith("accelerate") else None
    if kind and not any(w.split("=")[0] in PORT_OPTIONS[kind] for w in words):
        at = words.index("launch") + 1 if kind == "accelerate" and "launch" in words else len(words)
        words[at:at] = [PORT_OPTIONS[kind][0], str(free_port())]
    return [*words, "-m", "tunelab.cli"]


def free_port() -> int:
    """A port no process listens on now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_accelerator(cfg):
    """Accelerate's view of the processes: one, or every rank that torchrun or ``accelerate
    launch`` started (NCCL on GPUs, gloo on CPUs).

    Each global batch is the one a single process would draw with batch_size x processes
    examples, cut into one slice per process (``split_batches``), so N processes see the same
    data order as one process with the N-fold batch.
    """
    import torch
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import DistributedDataParallelKwargs

    # Accelerate picks gloo only when told to use the CPU: started by torchrun on a machine
    # without a GPU, every rank would otherwise train alone on all the data.
    cpu = cfg.train.cpu or (started_by_launcher() and not torch.cuda.is_available())
    # The seedable sampler reshuffles from (seed + epoch), so a resumed run sees the same order.
    loader_cfg = DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.train.seed, split_batches=True)
    # Some trainable weights may take no part in a task's loss (BERT's pooler under full
    # fine-tuning): DDP must be told, or it waits for their gradients forever.
    unused = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.train.grad_accum, cpu=cpu, dataloader_config=loader_cfg,
                              kwargs_handlers=[unused])
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != expected:
        raise UserError(f"started as one of {expected} processes, but the run sees {accelerator.num_processes}; "
                        f"on a CPU-only machine use torchrun (see the README, 'Several processes')")
    return accelerator
