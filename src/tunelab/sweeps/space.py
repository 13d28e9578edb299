"""A sweep config: a run config plus what to search, how, and what for.

```yaml
model: {name: minilm-l6}          # ... every section of a run config, shared by the trials
method: {name: lora}
search:                            # dotted config key -> what it takes
  method.r: [4, 8, 16]             #   a list: the grid's values (or a choice for tpe/random)
  method.alpha: 2 * method.r       #   an expression of other keys: tied, not searched
  train.lr: {low: 5.0e-4, high: 5.0e-3, log: true}   # a range (tpe / random only)
points:                            # or, for a grid that is not a product, the points themselves
  - {method.r: 16, method.alpha: 64}
sampler: grid                      # grid | tpe | random
objective: {metric: accuracy, direction: maximize}   # a validation metric of the task
trials: 12                         # tpe / random; a grid runs every point
pruner: none                       # none | median | hyperband
```

Everything is checked here, before a study or a directory exists: every searched key must
be a key of the run config (the valid ones are listed), every value the config accepts (each
grid point and both ends of a range validate as a run config), the objective a metric the task
reports on validation.
"""

from __future__ import annotations

import ast
import itertools
import operator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from tunelab.config import RunConfig, Tracker, deep_merge, describe_validation_error, read_yaml_mapping, validate_config
from tunelab.errors import UserError
from tunelab.schema import Strict
from tunelab.shipped import resolve_config

RUN_SECTIONS = ("model", "data", "task", "method", "train", "eval")


class Range(Strict):
    low: float
    high: float
    log: bool = False
    integer: bool = False
    """Whole numbers only (``suggest_int``)."""


class Choice(Strict):
    choices: list[Any] = Field(min_length=1)


class Objective(Strict):
    metric: str = "accuracy"
    """A validation metric of the task (its best-validation checkpoint's value is the trial's)."""
    direction: Literal["maximize", "minimize"] = "maximize"


class SweepOutput(Strict):
    dir: str | None = None
    """The sweep directory: the study's journal, one run directory per trial, the report.
    None: runs/sweep-<model>-<data>-<method>."""
    track: list[Tracker] = []
    """Trackers every trial logs to, grouped by the sweep directory's name."""


class SweepSettings(Strict):
    search: dict[str, Any] = {}
    points: list[dict[str, Any]] | None = None
    """A grid given point by point (``{key: value, ...}`` each), for grids that are not the
    product of their keys' values (seed 002: r in 16, 128, 196 with alpha 4r, and r 16 with alpha 256)."""
    sampler: Literal["grid", "tpe", "random"] = "grid"
    objective: Objective = Objective()
    trials: int | None = Field(None, ge=1, le=10_000)
    """Trials to run with tpe / random (a grid runs each point once; fewer with this set)."""
    pruner: Literal["none", "median", "hyperband"] = "none"
    """Stop a trial whose validation objective is worse than the median of the trials before it
    at the same step (median), or by successive halving (hyperband); none: every trial runs out."""
    pruner_startup_trials: int = Field(5, ge=0)
    """The median pruner prunes nothing until this many trials have finished."""
    seed: int = 0
    """Seed of the sampler (tpe / random)."""
    launcher: str | None = None
    """Start each trial's training with this launcher, e.g. ``torchrun --nproc_per_node 2`` or
    ``accelerate launch --num_processes 2``. How trials run, not what they are: a sweep may
    continue with another launcher."""
    output: SweepOutput = SweepOutput()

    @field_validator("search")
    @classmethod
    def _dotted(cls, search: dict[str, Any]) -> dict[str, Any]:
        for key in search:
            check_dotted(key)
        return search


def check_dotted(key: str) -> None:
    if key.count(".") != 1 or key.split(".")[0] not in RUN_SECTIONS:
        raise ValueError(f"search key {key!r} must be section.key, e.g. train.lr, with a section among "
                         f"{', '.join(RUN_SECTIONS)}")


class Space(BaseModel):
    """The checked sweep: the base run config, the searched and the tied keys."""

    base: dict[str, Any]
    grid: dict[str, list[Any]] = {}
    """Key -> its values: the grid is their product, unless ``listed`` gives the points."""
    listed: list[dict[str, Any]] | None = None
    ranges: dict[str, Range] = {}
    tied: dict[str, str] = {}
    """Key -> an arithmetic expression of searched keys."""
    settings: SweepSettings

    def points(self) -> list[dict[str, Any]]:
        """Every grid point (searched keys only), in a fixed order."""
        if self.listed is not None:
            return [dict(point) for point in self.listed]
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]

    def run_config(self, params: dict[str, Any], run_dir: Path) -> RunConfig:
        """The run config of one trial: the base with the searched values and the tied ones."""
        values = {**params, **{key: evaluate(expr, params) for key, expr in self.tied.items()}}
        # A sweep's trials are grouped by the sweep directory; a tuned comparison's by its own.
        group = self.base.get("output", {}).get("group") or run_dir.parent.name
        overrides: dict[str, Any] = {"output": {"dir": str(run_dir), "group": group}}
        for key, value in values.items():
            section, name = key.split(".")
            overrides.setdefault(section, {})[name] = value
        return validate_config(deep_merge(self.base, overrides))

    def suggest(self, trial) -> dict[str, Any]:
        """An Optuna trial's values of the searched keys (the fixed ones of an enqueued point, or
        the sampler's); a list or mapping value is stored as JSON text and given back as itself."""
        from tunelab.study import encode  # Optuna's helpers: not imported by every `tunelab` process

        params = {}
        for key, values in self.grid.items():
            chosen = trial.suggest_categorical(key, [encode({key: v})[key] for v in values])
            params[key] = next(v for v in values if encode({key: v})[key] == chosen)
        for key, rng in self.ranges.items():
            if rng.integer:
                params[key] = trial.suggest_int(key, int(rng.low), int(rng.high), log=rng.log)
            else:
                params[key] = cast(rng, trial.suggest_float(key, rng.low, rng.high, log=rng.log))
        return params

    @property
    def size(self) -> int:
        """How many trials the sweep runs."""
        if self.settings.sampler == "grid":
            return min(len(self.points()), self.settings.trials or len(self.points()))
        return self.settings.trials or 10


def load_space(path: str | Path, trials: int | None = None) -> Space:
    path = resolve_config(path)
    if not path.is_file():
        raise UserError(f"sweep config not found: {path}")
    raw = read_yaml_mapping(path, "model, data, task, method, train, eval, search, sampler, objective, ...")
    sweep_keys = {k: raw.pop(k) for k in list(raw) if k in SweepSettings.model_fields}
    if "search" not in sweep_keys and "points" not in sweep_keys:
        raise UserError(f"{path} has no `search`; a sweep config is a run config plus search: {{section.key: values}}")
    if trials is not None:
        sweep_keys["trials"] = trials
    try:
        settings = SweepSettings.model_validate(sweep_keys)
    except ValidationError as exc:
        raise UserError(describe_validation_error(exc, sweep_keys, SweepSettings)) from None
    if settings.output.track:  # what the trials' configs carry (and the sweep's sweep.yaml)
        raw = deep_merge(raw, {"output": {"track": settings.output.track}})
    return build_space(raw, settings)


def build_space(base: dict[str, Any], settings: SweepSettings) -> Space:
    grid, ranges, tied = {}, {}, {}
    listed = listed_points(base, settings)
    if listed is not None:
        grid = {key: list(dict.fromkeys(p[key] for p in listed)) for key in listed[0]}
    for key, spec in settings.search.items():
        check_key(base, key)
        if isinstance(spec, str):
            tied[key] = spec
        elif isinstance(spec, list) or (isinstance(spec, dict) and "choices" in spec):
            values = spec if isinstance(spec, list) else Choice.model_validate(spec).choices
            if not values:
                raise UserError(f"search.{key}: the list of values is empty; give at least one")
            grid[key] = values
        elif isinstance(spec, dict):
            ranges[key] = parse_range(key, spec)
        else:
            raise UserError(f"search.{key}: give a list of values, a {{low, high, log}} range or an expression "
                            f"(got {spec!r})")
    if settings.sampler == "grid" and ranges:
        raise UserError(f"search.{next(iter(ranges))}: a range cannot be a grid; give a list of values, or use "
                        "sampler: tpe or random")
    if not grid and not ranges:
        raise UserError("search has only tied keys (or none); search at least one key with values or a range, "
                        "or give the grid's points")
    for key, expr in tied.items():
        unknown = expression_names(expr) - set(grid) - set(ranges)
        if unknown:
            raise UserError(f"search.{key}: the expression {expr!r} names {', '.join(sorted(unknown))}, which is not "
                            f"searched; searched keys: {', '.join([*grid, *ranges])}")
    space = Space(base=base, grid=grid, listed=listed, ranges=ranges, tied=tied, settings=settings)
    check_values(space)
    return space


def listed_points(base: dict[str, Any], settings: SweepSettings) -> list[dict[str, Any]] | None:
    """``points`` checked: the same searched keys in each, each a config key, none also in ``search``."""
    if settings.points is None:
        return None
    if not settings.points or settings.sampler != "grid":
        raise UserError("points: give at least one point, and use them with sampler: grid")
    keys = list(settings.points[0])
    for point in settings.points:
        if list(point) != keys:
            raise UserError(f"points: every point names the same keys ({', '.join(keys)}); got {', '.join(point)}")
    for key in keys:
        try:
            check_dotted(key)
        except ValueError as exc:
            raise UserError(f"points: {exc}") from None
        check_key(base, key)
        if key in settings.search:
            raise UserError(f"points: {key} is in search too; give it in one place")
    return settings.points


def parse_range(key: str, spec: dict) -> Range:
    try:
        rng = Range.model_validate(spec)
    except ValidationError as exc:
        raise UserError(f"search.{key}: {describe_validation_error(exc, spec, Range)}") from None
    if rng.low >= rng.high:
        raise UserError(f"search.{key}: low {rng.low:g} must be below high {rng.high:g}")
    if rng.log and rng.low <= 0:
        raise UserError(f"search.{key}: a log range needs low > 0 (got {rng.low:g})")
    return rng


def check_key(base: dict[str, Any], key: str) -> None:
    """A searched key must be a key of its section's config class (its method's, its task's)."""
    section, name = key.split(".")
    probe = validate_config(deep_merge(base, {"output": {"dir": "probe"}}))
    fields = type(getattr(probe, section)).model_fields
    if name not in fields:
        raise UserError(f"search key {key!r} is not a config key; keys of {section} here: {', '.join(sorted(fields))}")


def check_values(space: Space) -> None:
    """Every grid point and both ends of every range make a valid run config."""
    corners = [dict(zip(space.ranges, ends)) for ends in
               itertools.product(*[(r.low, r.high) for r in space.ranges.values()])] or [{}]
    for point in space.points()[:1000]:
        for corner in corners:
            try:
                space.run_config({**point, **{k: cast(space.ranges[k], v) for k, v in corner.items()}}, Path("probe"))
            except UserError as exc:
                raise UserError(f"search {dict(**point, **corner)}: {exc}") from None
    metrics = validate_config(deep_merge(space.base, {"output": {"dir": "probe"}})).task.validation_metrics()
    if space.settings.objective.metric not in metrics:
        raise UserError(f"objective.metric {space.settings.objective.metric!r} is not reported on validation by this "
                        f"task; it reports: {', '.join(metrics)}")


def cast(rng: Range, value: float) -> float | int:
    return round(value) if rng.integer else value


OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
             ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow, ast.USub: operator.neg}


def expression_names(expr: str) -> set[str]:
    return {dotted(node) for node in ast.walk(parse_expression(expr)) if isinstance(node, ast.Attribute)}


def parse_expression(expr: str) -> ast.expr:
    try:
        return ast.parse(expr, mode="eval").body
    except SyntaxError:
        raise UserError(f"search expression {expr!r} is not arithmetic of searched keys, e.g. 4 * method.r") from None


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    raise UserError(f"search expression part {ast.unparse(node)!r} is not a section.key name")


def evaluate(expr: str, values: dict[str, Any]) -> Any:
    """An arithmetic expression (+ - * / // ** and numbers) of searched keys, e.g. ``4 * method.r``."""

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Attribute):
            return values[dotted(node)]
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](walk(node.operand))
        raise UserError(f"search expression {expr!r}: only numbers, section.key names and + - * / // ** are allowed")

    return walk(parse_expression(expr))
