#!/usr/bin/env python3
"""``tunelab plan``'s estimate against ``tunelab profile``'s measured step, component by component.

For each (model, method, batch, length) point the planner estimates one fp32 step on the CPU
(``--target cpu``: full-width dropout masks, the math attention under dropout) from the model's
config alone, and ``tunelab profile --cpu`` measures the same step on random weights: the
encoder as a classifier, the decoder as a causal LM (``--task.name lm``, every token predicted).
Prints a markdown table (the planner's relative error per component and for the total) and,
with ``--json FILE``, every number.

    python benchmarks/plan_vs_profile.py [--points minilm-l6:lora:8:64 ...] [--json plan.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tunelab.config import load_config  # noqa: E402
from tunelab.planner.activations import Settings  # noqa: E402
from tunelab.planner.anatomy import anatomy_for  # noqa: E402
from tunelab.planner.estimate import plan  # noqa: E402
from tunelab.profile import profile_model  # noqa: E402

POINTS = [f"{model}:{method}:{batch}:{length}"
          for model, shapes in (("minilm-l6", ((8, 64), (32, 128))), ("smollm2-135m", ((4, 64), (8, 128))))
          for method in ("lora", "full", "head") for batch, length in shapes]
COMPONENTS = ("weights", "gradients", "optimizer", "activations", "total")


def measure(point: str) -> dict:
    model, method, batch, length = point.split(":")
    overrides = {"model": {"name": model}, "method": {"name": method}}
    if model.startswith("smollm2"):
        overrides["task"] = {"name": "lm"}  # the decoder as what it is: a causal LM
    cfg = load_config(None, overrides)
    settings = Settings(batch_size=int(batch), seq_len=int(length), target="cpu")
    planned = plan(anatomy_for(cfg), settings)
    started = time.perf_counter()
    measured = profile_model(cfg, int(batch), int(length), cpu=True)
    measured["total_bytes"] = measured["backward_peak_bytes"]
    row = {"point": point, "profile_seconds": round(time.perf_counter() - started, 1)}
    for name in COMPONENTS:
        row[f"{name}_planned"] = planned[f"{name}_bytes"]
        row[f"{name}_measured"] = measured[f"{name}_bytes"]
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | method | batch × length | " + " | ".join(f"{c} MB: plan / profile" for c in COMPONENTS)
             + " | total error |", "|---" * (len(COMPONENTS) + 4) + "|"]
    for row in rows:
        model, method, batch, length = row["point"].split(":")
        cells = [f"{row[f'{c}_planned'] / 1e6:.1f} / {row[f'{c}_measured'] / 1e6:.1f}" for c in COMPONENTS]
        error = row["total_planned"] / row["total_measured"] - 1
        lines.append(f"| {model} | {method} | {batch} × {length} | " + " | ".join(cells) + f" | {error:+.1%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", nargs="+", default=POINTS, help="model:method:batch:length ...")
    parser.add_argument("--json", help="also write every number here")
    args = parser.parse_args(argv)
    rows = []
    for point in args.points:
        rows.append(measure(point))
        print(f"{point}: plan {rows[-1]['total_planned'] / 1e6:.1f} MB, profile {rows[-1]['total_measured'] / 1e6:.1f}"
              f" MB ({rows[-1]['profile_seconds']} s)", file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
