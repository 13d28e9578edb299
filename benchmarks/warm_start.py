#!/usr/bin/env python3
"""What forking each run from the warm server (tunelab.warm) saves a comparison, against cold
processes, in the same session.

The same ``tunelab compare --quick`` (the embedded minilm-l6 and rt-snippets, a few steps per
method) runs with ``TUNELAB_WARM_START=1`` and ``=0``, alternating, ``--repeats`` times each.
Prints the wall time per comparison and per run, the ratio warm / cold, and whether the two
give the same results (every results.csv column but the timings).

    python benchmarks/warm_start.py [--methods head,bitfit,lora,ia3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEASURED = ("time", "per_second", "latency", "memory")
"""results.csv columns that measure this machine's speed and memory, not the runs' results."""


def compare(methods: str, output: Path, warm: bool) -> float:
    env = {**os.environ, "TUNELAB_WARM_START": "1" if warm else "0"}
    command = [sys.executable, "-m", "tunelab.cli", "compare", "--quick", "--methods", methods, "--output",
               str(output), "--no-progress"]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def results(output: Path) -> dict[str, dict[str, str]]:
    with open(output / "results.csv", newline="") as fh:
        return {row["method"]: {k: v for k, v in row.items() if not any(m in k for m in MEASURED)}
                for row in csv.DictReader(fh)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="head,bitfit,lora,ia3")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    runs = len(args.methods.split(","))
    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for warm in (False, True):
                output = Path(tmp) / f"{'warm' if warm else 'cold'}-{repeat}"
                times[warm].append(compare(args.methods, output, warm))
                print(f"{'warm' if warm else 'cold'} #{repeat + 1}: {times[warm][-1]:.1f} s", flush=True)
        same = results(Path(tmp) / "warm-0") == results(Path(tmp) / "cold-0")
    cold, warm = statistics.median(times[False]), statistics.median(times[True])
    print(f"\n{runs} runs per comparison ({args.methods}), median of {args.repeats}:")
    print(f"cold processes: {cold:.1f} s ({cold / runs:.1f} s per run)")
    print(f"warm server:    {warm:.1f} s ({warm / runs:.1f} s per run)")
    print(f"warm / cold: {warm / cold:.2f}; saved {(cold - warm) / runs:.1f} s per run")
    print(f"same results (every column but timings): {same}")


if __name__ == "__main__":
    main()
