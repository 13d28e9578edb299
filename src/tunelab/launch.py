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


MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
"""``train.precision`` as Accelerate's ``mixed_precision``: autocast of the forward passes, the
weights kept float32."""
CPU_BF16 = ("train.precision bf16 on the CPU saves little: bfloat16 autocast measured 0.8-1.1x the fp32 step time and "
            "8% less activation memory on a 2-core CPU with bfloat16 instructions (avx512_bf16), and its speed "
            "depends on those (README, 'Precision and memory')")
"""Said once per run on stderr: what bf16 on a CPU was measured to give (the README has the numbers)."""


def check_precision(precision: str, on_cpu: bool) -> None:
    """Refuse, in one line, a precision the device cannot run as asked.

    fp16 on the CPU: torch's CPU autocast has float16, but Accelerate turns neither it nor the
    gradient scaler on for a CPU, so the run would silently be fp32. bf16 on a GPU without
    bfloat16 arithmetic (before Ampere) would be emulated, or refused by Accelerate mid-start."""
    import torch

    if precision == "fp16" and on_cpu:
        raise UserError("train.precision fp16 needs a CUDA GPU (on the CPU Accelerate would run it as plain fp32, "
                        "without autocast or gradient scaling); use bf16 or fp32 here")
    if precision == "bf16" and not on_cpu and not bf16_supported(torch):
        raise UserError(f"train.precision bf16: this GPU ({torch.cuda.get_device_name()}) has no bfloat16 "
                        "arithmetic; use fp16 (with gradient scaling) or fp32")


def bf16_supported(torch) -> bool:
    """Native bfloat16 on the current CUDA device (emulation does not count)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.4 has no such argument and never counted emulation
        return torch.cuda.is_bf16_supported()


def make_accelerator(cfg, shard: bool = True):
    """Accelerate's view of the processes: one, or every rank that torchrun or ``accelerate
    launch`` started (NCCL on GPUs, gloo on CPUs). ``shard``: the model is sharded over them
    where ``train.fsdp`` asks (tunelab.sharding); False: each process holds it whole (evaluating
    a saved run).

    Each global batch is the one a single process would draw with batch_size x processes
    examples, cut into one slice per process (``split_batches``), so N processes see the same
    data order as one process with the N-fold batch.
    """
    import torch
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    from tunelab import sharding

    # Accelerate picks gloo only when told to use the CPU: started by torchrun on a machine
    # without a GPU, every rank would otherwise train alone on all the data.
    cpu = cfg.train.cpu or (started_by_launcher() and not torch.cuda.is_available())
    # The seedable sampler reshuffles from (seed + epoch), so a resumed run sees the same order.
    loader_cfg = DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.train.seed, split_batches=True)
    # Some trainable weights may take no part in a task's loss (BERT's pooler under full
    # fine-tuning): DDP must be told, or it waits for their gradients forever.
    unused = DistributedDataParallelKwargs(find_unused_parameters=True)
    check_precision(cfg.train.precision, cpu or not torch.cuda.is_available())
    mixed = MIXED_PRECISION[cfg.train.precision]  # the config decides, whatever `accelerate launch` was told
    # Accelerate keeps one state per process and refuses a second mixed precision in it; a process
    # that trains runs of different precisions one after another (the Python API, a notebook)
    # starts that state anew, keeping the processes' own (PartialState).
    if AcceleratorState._shared_state.get("_mixed_precision", mixed) != mixed:
        AcceleratorState._reset_state()
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    plugin = sharding.fsdp_plugin(cfg, expected, cpu or not torch.cuda.is_available()) if shard else None
    if plugin is None:  # the config decides, whatever `accelerate launch --use_fsdp` was told
        os.environ.pop("ACCELERATE_USE_FSDP", None)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.train.grad_accum, cpu=cpu, dataloader_config=loader_cfg,
                              kwargs_handlers=[unused], mixed_precision=mixed, fsdp_plugin=plugin)
    sharding.shard_on_cpu(accelerator, plugin)
    if cfg.train.precision == "bf16" and accelerator.device.type == "cpu" and accelerator.is_main_process:
        print(f"warning: {CPU_BF16}", file=sys.stderr)
    if accelerator.num_processes != expected:
        raise UserError(f"started as one of {expected} processes, but the run sees {accelerator.num_processes}; "
                        f"on a CPU-only machine use torchrun (see the README, 'Several processes')")
    return accelerator
