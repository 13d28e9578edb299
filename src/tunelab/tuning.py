"""Equal tuning for a comparison: every method's search, its trials' points, its choice.

Each method of a tuned comparison (``tune:`` in its config, or ``tunelab compare --tune``) is
searched with the same number of trials on the validation split: by default its learning rate
on a log scale around the value its entry gives, plus any keys the comparison or the method's
own entry adds (``methods.lora.tune.search: {method.r: [4, 8, 16]}``), written as a sweep's
``search`` is (:mod:`tunelab.sweeps.space`). The trial that is best on validation gives the
configuration of the method's final runs, the only runs that see the test split.

No torch and no Optuna here: the comparison's own process plans with it, and the report reads
the trials' ``trial.json`` back with it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.compare_config import CompareConfig, TuneConfig
from tunelab.config import RunConfig, validate_config
from tunelab.errors import UserError
from tunelab.sweeps.space import Objective, Range, Space, SweepSettings, build_space, cast
from tunelab.tasks import select_metric

ENTRY_KEYS = ("search",)
"""What a method's own ``tune:`` may hold."""
TRIAL_FILE = "trial.json"
"""In each trial's run directory: its searched values, objective, state (for the report)."""
TUNE_DIR = "tune"
"""Under the comparison directory: tune/<method>/trial-NN, one run directory per trial."""


@dataclass
class Tuning:
    """One method's search, checked."""
    entry: str
    space: Space
    """The base is the method's run config (seed offset 0); its searched and tied keys."""
    settings: TuneConfig
    metric: str
    """The validation metric optimised."""
    higher_is_better: bool
    points: list[dict[str, Any]] | None
    """Every trial's searched values (grid and random samplers); None for TPE, which asks."""

    @property
    def direction(self) -> str:
        return "maximize" if self.higher_is_better else "minimize"

    def description(self) -> str:
        """The search as one canonical text: a directory's study refuses a different one."""
        # The base as set, defaults left out: an option a later tunelab adds (with its default)
        # does not make a study it started look like another search. `output`: each machine's own.
        base = validate_config(self.space.base).model_dump(mode="json", exclude_defaults=True)
        return json.dumps({"trials": self.settings.trials, "sampler": self.settings.sampler, "seed": self.settings.seed,
                           "metric": self.metric, "search": self.settings.search | search_of(self.space),
                           "base": {k: v for k, v in base.items() if k != "output"}}, sort_keys=True, default=str)

    def trial_config(self, params: dict[str, Any], run_dir: Path) -> RunConfig:
        """A trial's run: validation only, the test split never evaluated."""
        cfg = self.space.run_config(params, run_dir)
        cfg.eval.test = False
        return cfg

    def final_config(self, params: dict[str, Any], seed_offset: int, run_dir: Path) -> RunConfig:
        cfg = self.space.run_config(params, run_dir)
        cfg.train.seed += seed_offset
        return cfg


def search_of(space: Space) -> dict[str, Any]:
    return {**{k: list(v) for k, v in space.grid.items()}, **{k: r.model_dump() for k, r in space.ranges.items()},
            **space.tied}


def entry_settings(cfg: CompareConfig, entry: str) -> dict[str, Any]:
    """The method's own ``tune:`` (only ``search``), checked."""
    own = ((cfg.methods or {}).get(entry) or {}).get("tune") or {}
    if not isinstance(own, dict) or any(key not in ENTRY_KEYS for key in own):
        bad = next(iter(own), own) if isinstance(own, dict) else own
        raise UserError(f"methods.{entry}.tune: unknown key {bad!r}; "
                        f"a method's own tune takes: {', '.join(ENTRY_KEYS)} "
                        f"(trials, sampler and pruner are the comparison's, the same for every method)")
    search = own.get("search") or {}
    if not isinstance(search, dict):
        raise UserError(f"methods.{entry}.tune.search must map section.key to values, e.g. {{method.r: [4, 8, 16]}}")
    return search


def tuning_for(cfg: CompareConfig, entry: str, base: RunConfig) -> Tuning | None:
    """The method's search, or None where the comparison is not tuned or the method trains nothing."""
    settings = cfg.tune
    if settings is None or not type(base.method).trains:
        return None
    where = f"methods.{entry}.tune" if entry_settings(cfg, entry) else "tune"
    lr = base.train.lr
    search = {"train.lr": {"low": lr / settings.lr_factor, "high": lr * settings.lr_factor, "log": True},
              **settings.search, **entry_settings(cfg, entry)}
    metric = settings.metric or select_metric(base)[0]
    try:
        higher = base.task.is_higher_better(metric)
    except KeyError as exc:
        raise UserError(f"tune.metric: {exc.args[0]}") from None
    sweep = SweepSettings(search=search, sampler="tpe" if settings.sampler == "tpe" else "random",
                          objective=Objective(metric=metric, direction="maximize" if higher else "minimize"),
                          trials=settings.trials, seed=settings.seed)
    raw = base.model_dump(mode="json")
    try:
        space = build_space(raw, sweep)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    except ValueError as exc:  # a malformed key (not section.key)
        raise UserError(f"{where}: {exc}") from None
    points = None
    if settings.sampler == "grid":
        points = grid_points(space, settings.trials, where)
    elif settings.sampler == "random":
        points = random_points(space, settings.trials, settings.seed)
    return Tuning(entry, space, settings, metric, higher, points)


def grid_points(space: Space, trials: int, where: str) -> list[dict[str, Any]]:
    """One range cut into ``trials`` evenly spaced values, or lists whose product has ``trials``
    points: every method's grid has the same size, or the budgets would differ."""
    if space.ranges and (len(space.ranges) > 1 or space.grid):
        raise UserError(f"{where}: sampler grid cuts one range into tune.trials values; with several searched keys "
                        f"give them as lists whose product has {trials} points, or use sampler random or tpe")
    if space.ranges:
        key, rng = next(iter(space.ranges.items()))
        values = spaced(rng, trials)
        if len(set(values)) < trials:
            raise UserError(f"{where}: {key} from {rng.low:g} to {rng.high:g} has fewer than {trials} distinct "
                            f"values for a grid; widen it or lower tune.trials")
        return [{key: value} for value in values]
    points = space.points()
    if len(points) != trials:
        raise UserError(f"{where}: the grid has {len(points)} points and tune.trials is {trials}; "
                        f"every method gets the same number of trials, so give lists whose product is {trials}, "
                        f"or use sampler random or tpe")
    return points


def spaced(rng: Range, count: int) -> list[float | int]:
    """``count`` evenly spaced values from low to high (log-spaced on a log range); one value
    is the middle (the geometric mean on a log range: the entry's own learning rate)."""
    if rng.log:
        low, high = math.log(rng.low), math.log(rng.high)
        values = [math.exp(low + (high - low) * (i / (count - 1) if count > 1 else 0.5)) for i in range(count)]
    else:
        values = [rng.low + (rng.high - rng.low) * (i / (count - 1) if count > 1 else 0.5) for i in range(count)]
    if count > 1:  # the ends exactly, not exp(log(x)) a rounding away from them
        values[0], values[-1] = rng.low, rng.high
    return [cast(rng, min(max(v, rng.low), rng.high)) for v in values]


def random_points(space: Space, trials: int, seed: int) -> list[dict[str, Any]]:
    """``trials`` draws, the k-th from a generator seeded by (seed, k): every method gets the
    same draws (the same relative places in its ranges), and a resumed comparison the same points."""
    points = []
    for k in range(trials):
        rng = np.random.default_rng([seed, k])
        point: dict[str, Any] = {key: values[int(rng.integers(len(values)))] for key, values in space.grid.items()}
        for key, r in space.ranges.items():
            u = float(rng.random())
            value = math.exp(math.log(r.low) + u * (math.log(r.high) - math.log(r.low))) if r.log \
                else r.low + u * (r.high - r.low)
            point[key] = cast(r, value)
        points.append(point)
    return points


def decode(space: Space, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's stored values as config values (lists and mappings are stored as JSON text)."""
    out = {}
    for key, value in params.items():
        if key in space.grid:
            out[key] = next((v for v in space.grid[key] if json.dumps(v) == value or v == value), value)
        elif key in space.ranges:
            out[key] = cast(space.ranges[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# What a trial leaves for the report, and what the report reads back


def write_trial(run_dir: Path, tuning: Tuning, index: int, frozen) -> None:
    """A trial's values, objective and state (``frozen``: its Optuna FrozenTrial), in its run
    directory: the report is rebuilt from run directories alone."""
    from tunelab.files import write_json

    run_dir.mkdir(parents=True, exist_ok=True)
    last = max(frozen.intermediate_values, default=None)
    write_json(run_dir / TRIAL_FILE, {
        "entry": tuning.entry, "index": index, "params": decode(tuning.space, frozen.params),
        "state": frozen.state.name.lower(), "value": frozen.value, "metric": tuning.metric,
        "direction": tuning.direction, "steps": last,
        "last_value": frozen.intermediate_values[last] if last is not None else None,
        "ranges": {key: rng.model_dump() for key, rng in tuning.space.ranges.items()}})



def read_trials(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """Method -> its trials' records (trial.json) under ``directory``/tune, by trial index."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((directory / TUNE_DIR).glob(f"*/trial-*/{TRIAL_FILE}")):
        record = json.loads(path.read_text(encoding="utf-8"))
        found.setdefault(record["entry"], []).append(record)
    return {entry: sorted(records, key=lambda r: r["index"]) for entry, records in found.items()}


def chosen(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The completed trial best on validation (the first of equals); None before any completed."""
    done = [r for r in records if r["state"] == "complete" and r.get("value") is not None]
    if not done:
        return None
    sign = 1 if done[0]["direction"] == "maximize" else -1
    return max(done, key=lambda r: (sign * r["value"], -r["index"]))


def at_edge(records: list[dict[str, Any]]) -> list[str]:
    """The searched ranges whose chosen value is the lowest or highest value tried: the best may
    lie beyond the range (widen it). Needs at least three trials that ran."""
    best = chosen(records)
    ran = [r for r in records if r["state"] in ("complete", "pruned")]
    if best is None or len(ran) < 3:
        return []
    found = []
    for key in best.get("ranges", {}):
        tried = sorted(r["params"][key] for r in ran if key in r["params"])
        if best["params"][key] in (tried[0], tried[-1]):
            side = "lowest" if best["params"][key] == tried[0] else "highest"
            found.append(f"{key} = {best['params'][key]:.3g} is the {side} value tried")
    return found
