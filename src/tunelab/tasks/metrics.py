"""What a task's metrics mean: direction, kind, and where each example's share of it is written.

Each task declares its metrics on its options class (:mod:`tunelab.tasks.options`); a run
writes the declarations into ``summary.json`` (``metrics``), and the report reads them from
there: which way is better, which interval a metric gets, and which fields of
``predictions.jsonl`` give its per-example values. The report knows no metric by name.

Three kinds cover every metric tunelab reports:

- ``proportion``: the share of examples with a property (accuracy, invalid rate); the field
  holds a boolean per example; interval: Wilson; paired test with one seed: exact McNemar.
- ``mean``: the mean of a number per example (ROUGE, a pair's DPO reward, a classifier's
  loss); interval: a bootstrap over the examples.
- ``ratio``: a sum over examples divided by another sum (the token-mean loss of a language
  model: summed NLL over predicted tokens), optionally through ``exp`` (perplexity); interval:
  a bootstrap over the examples of the ratio of sums.

A ``count`` (an lm run's evaluated ``tokens``) is shown but neither judged nor tested.
Pydantic and the standard library only: the comparison's own process reads these.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

Kind = Literal["proportion", "mean", "ratio", "count"]


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool | None = True
    """None for a diagnostic (a DPO log-probability) that no method wins by."""
    kind: Kind = "mean"
    field: str | None = None
    """The predictions.jsonl field with each example's value (the numerator of a ratio);
    None: the metric has no per-example value there (no interval, no paired test)."""
    denominator: str | None = None
    """Ratio: the field with each example's denominator (its predicted tokens)."""
    exp: bool = False
    """Ratio: the metric is exp(sum / sum) (perplexity from the summed NLL)."""
    in_results: bool = False
    """Not a split's metric but a number of the task's own results (summary.json under the
    task's name) at the dotted path ``field``; shown as a column, without an interval."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "name"}

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> "Metric":
        known = set(cls.__dataclass_fields__) - {"name"}
        return cls(name, **{k: v for k, v in data.items() if k in known})

    @property
    def tested(self) -> bool:
        """Whether examples give it per-example values to compare two runs on."""
        return self.field is not None and self.kind != "count" and not self.in_results

    @property
    def has_interval(self) -> bool:
        """A proportion gets Wilson's interval from its count alone; a mean or ratio needs the
        per-example values for a bootstrap."""
        return not self.in_results and (self.kind == "proportion" or self.tested)

    def per_example(self, record: dict[str, Any]) -> tuple[float, float] | None:
        """One example's (numerator, denominator) from its predictions.jsonl record; the
        denominator is 1 except for a ratio. None where the record lacks the value."""
        if not self.tested:
            return None
        value = record.get(self.field)
        if value is None:
            return None
        denominator = 1.0 if self.denominator is None else record.get(self.denominator)
        if denominator is None:
            return None
        return float(value), float(denominator)

    def aggregate(self, numerator: float, denominator: float) -> float:
        """The metric from summed per-example values: a mean, a share or a ratio of sums."""
        value = numerator / denominator if denominator else math.nan
        return math.exp(value) if self.exp else value


@dataclass(frozen=True)
class Scatter:
    """Two report columns against each other, one point per method (DPO's reward-KL frontier)."""
    x: str
    y: str
    file: str
    caption: str
    x_label: str
    y_label: str
    title: str


def declarations(metrics: tuple[Metric, ...] | list[Metric]) -> dict[str, dict[str, Any]]:
    """Metric name -> its declaration, as summary.json carries it."""
    return {m.name: m.to_dict() for m in metrics}


def from_declarations(data: dict[str, dict[str, Any]] | None) -> dict[str, Metric]:
    return {name: Metric.from_dict(name, spec or {}) for name, spec in (data or {}).items()}
