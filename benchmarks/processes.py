#!/usr/bin/env python3
"""One process against two on the CPU (gloo), the same run and the same global batch.

Trains minilm-l6 + LoRA on rt-snippets twice, one run after the other: ``tunelab train`` alone
with batch 2B, and ``torchrun --nproc_per_node 2 -m tunelab.cli train`` with batch B on each
process (the same global batches, cut in two). Prints, per run, the time in training steps,
tokens/s, wall time and test accuracy, the ratio of the two, and the largest difference
between the two checkpoints (docs/RESULTS.md has a measured table):

    python benchmarks/processes.py [--train 2000] [--batch 16] [--threads-per-process 1]

Two processes on two cores each get one core: do not expect a speed-up there, only the cost
of the gradient all-reduce. ``--threads-per-process`` sets OMP_NUM_THREADS for the two-process
run (the one-process run uses every core).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tunelab.launch import free_port


def train_args(run_dir: Path, batch: int, train: int) -> list[str]:
    return ["train", "--config", "configs/minilm-l6/rt-snippets-lora.yaml", "--data.max_train_examples", str(train),
            "--data.max_validation_examples", "200", "--data.max_test_examples", "500", "--train.epochs", "1",
            "--train.batch_size", str(batch), "--output.dir", str(run_dir)]


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=16, help="per process in the two-process run")
    parser.add_argument("--threads-per-process", type=int, default=1)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="tunelab-processes-"))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    one = timed([sys.executable, "-m", "tunelab.cli", *train_args(out / "one", 2 * args.batch, args.train)], env)
    two = timed([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                 "--master_port", str(free_port()), "-m", "tunelab.cli",
                 *train_args(out / "two", args.batch, args.train)],
                {**env, "OMP_NUM_THREADS": str(args.threads_per_process)})
    rows = []
    for name, wall in (("1 process", one), ("2 processes", two)):
        s = json.loads((out / name.split()[0].replace("1", "one").replace("2", "two") / "summary.json").read_text())
        rows.append((name, s["num_processes"], s["train_time_s"], s["tokens_per_second"], wall, s["test"]["accuracy"]))
    print("| run | processes | train time (s) | tokens/s | wall (s) | test accuracy |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n, train_s, tok_s, wall, acc in rows:
        print(f"| {name} | {n} | {train_s:.1f} | {tok_s:,.0f} | {wall:.1f} | {acc:.4f} |")
    print(f"\ntwo processes / one: tokens/s x{rows[1][3] / rows[0][3]:.2f}, wall x{rows[1][4] / rows[0][4]:.2f}")
    from safetensors.torch import load_file

    a, b = (load_file(str(out / d / "checkpoint" / "model.safetensors")) for d in ("one", "two"))
    # Not zero here: the body's dropout draws other masks on each process than on one. Without
    # dropout the two end equal (tests/test_multiprocess.py).
    print(f"largest checkpoint difference: {max((a[k] - b[k]).abs().max().item() for k in a):.2e} (dropout on)")
    print(f"runs in {out}")


if __name__ == "__main__":
    main()
