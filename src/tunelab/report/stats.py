"""The statistics the report needs, in plain Python and NumPy (no scipy).

- the Wilson score interval of a proportion (Wilson 1927, "Probable inference, the law of
  succession, and statistical inference"): unlike the normal approximation p ± z·sqrt(p(1-p)/n)
  it stays inside [0, 1] and does not shrink to a point at p = 0 or 1;
- the exact McNemar test of two classifiers on the same examples (McNemar 1947): only the
  discordant pairs count, b (the first right, the second wrong) and c (the other way round);
  under "equally good" each is a fair coin flip, so the two-sided p-value is a binomial tail;
- the percentile bootstrap over test examples (Efron & Tibshirani 1993, ch. 13) for a metric that
  is a mean or a ratio of sums (ROUGE, perplexity, a DPO reward, a loss);
- a paired bootstrap over seeds and examples for rows with several seeds: each replicate draws
  the test examples once for both methods (they are paired) and each method's seeds apart (they
  are not), so the spread from seed to seed counts as well as the examples (the hierarchical
  bootstrap of Ren et al. 2010, "Nonparametric bootstrapping for hierarchical data");
- Holm's step-down correction of several p-values (Holm 1979), which keeps the chance of any
  false "worse" among all the comparisons of a report at alpha;
- the smallest difference a test could have detected (its minimum detectable effect at 80 %
  power), so that "cannot be told apart" is read as "not larger than this", not "equal".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

Z95 = NormalDist().inv_cdf(0.975)
"""The normal quantile of a two-sided 95 % interval, 1.959964…"""
RESAMPLES = 2000
"""Bootstrap replicates: the Monte Carlo error of a 95 % percentile bound is then about a tenth
of the interval's own width."""
POWER = 0.8


def wilson_interval(proportion: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``proportion`` observed over ``n`` trials (n > 0):

        centre = (p + z²/2n) / (1 + z²/n)
        half   = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²)
    """
    if n <= 0:
        raise ValueError(f"a proportion needs at least one trial, got n={n}")
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (proportion + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(proportion * (1 - proportion) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value of ``b`` and ``c`` discordant pairs:
    p = min(1, 2 · Σ_{k ≤ min(b, c)} C(b+c, k) / 2^(b+c)); 1 when there is no discordant pair."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts are never negative, got b={b}, c={c}")
    n = b + c
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    # Integer true division is correctly rounded even where 2**n is far beyond a float.
    return min(1.0, 2 * tail / 2**n)


def discordant(first: dict[int, bool], second: dict[int, bool]) -> tuple[int, int]:
    """(b, c) of two runs' per-example correctness on the same example ids: b where only
    ``first`` is right, c where only ``second`` is."""
    b = sum(1 for i, right in first.items() if right and not second[i])
    c = sum(1 for i, right in first.items() if not right and second[i])
    return b, c


# --------------------------------------------------------------------------------------------
# Metrics that are a mean or a ratio of sums over the test examples


@dataclass
class Samples:
    """Per-example values of one metric for one run or a row of seeds: ``numerators`` and
    ``denominators`` of shape (seeds, examples), the metric of seed s being
    ``aggregate(sum(numerators[s]) / sum(denominators[s]))`` (denominators are 1 for a mean)."""

    numerators: np.ndarray
    denominators: np.ndarray
    exp: bool = False

    @classmethod
    def of(cls, numerators, denominators=None, exp: bool = False) -> "Samples":
        num = np.atleast_2d(np.asarray(numerators, dtype=np.float64))
        den = np.ones_like(num) if denominators is None else np.atleast_2d(np.asarray(denominators, dtype=np.float64))
        if num.shape != den.shape:
            raise ValueError(f"numerators {num.shape} and denominators {den.shape} differ in shape")
        return cls(num, den, exp)

    @property
    def examples(self) -> int:
        return self.numerators.shape[1]

    def statistic(self, seeds: np.ndarray | None = None, examples: np.ndarray | None = None) -> np.ndarray | float:
        """The metric averaged over the (drawn) seeds, on the (drawn) examples. With ``seeds`` of
        shape (R, S) and ``examples`` of shape (R, n), one value per replicate."""
        num, den = self.numerators, self.denominators
        if seeds is None:
            value = num.sum(axis=1) / den.sum(axis=1)  # (S,)
            value = np.exp(value) if self.exp else value
            return float(value.mean())
        # (R, S, n): replicate r's seed draw, each seed on replicate r's example draw
        rows = seeds[:, :, None]
        cols = examples[:, None, :]
        value = num[rows, cols].sum(axis=2) / den[rows, cols].sum(axis=2)  # (R, S)
        value = np.exp(value) if self.exp else value
        return value.mean(axis=1)


def _draws(rng: np.random.Generator, count: int, size: int, resamples: int) -> np.ndarray:
    return rng.integers(0, count, size=(resamples, size))


def bootstrap_interval(samples: Samples, level: float = 0.95, resamples: int = RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of the metric over the test examples, at the seeds'
    mean. The seeds are not resampled: the interval is the test set's uncertainty; their spread
    is reported beside it as a standard deviation. (BCa was tried: on means and ratios of a few
    hundred examples its coverage matched the percentile interval's, 93-95 %, so the simpler one
    stays.)"""
    rng = np.random.default_rng(seed)
    n, s = samples.examples, samples.numerators.shape[0]
    if n == 0:
        raise ValueError("a bootstrap needs at least one example")
    every_seed = np.broadcast_to(np.arange(s), (resamples, s))
    replicates = _chunked(lambda r, ex: samples.statistic(every_seed[:r], ex), rng, n, resamples)
    tail = (1 - level) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return float(low), float(high)


def _chunked(statistic, rng: np.random.Generator, n: int, resamples: int, chunk: int = 200) -> np.ndarray:
    """``statistic(r, examples)`` over ``resamples`` draws of the examples, a chunk at a time
    (bounded memory for large test sets)."""
    out = []
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        out.append(statistic(r, _draws(rng, n, n, r)))
    return np.concatenate(out)


@dataclass
class PairedResult:
    difference: float
    """The first metric minus the second, at the seeds' means, on all the examples."""
    p: float
    """Two-sided bootstrap p-value of "no difference"."""
    standard_error: float
    """The bootstrap standard deviation of the difference."""


def paired_bootstrap(first: Samples, second: Samples, resamples: int = RESAMPLES, seed: int = 0,
                     resample_seeds: bool = True) -> PairedResult:
    """A paired bootstrap test of two runs (or rows of seeds) on the same test examples.

    Each replicate draws n examples with replacement, the same ones for both (the pairing), and,
    with ``resample_seeds``, each side's seeds with replacement apart; the difference of the two
    statistics is recorded. The p-value is twice the smaller share of replicates on either side
    of zero (the percentile interval of the difference inverted), with the usual +1 so that it
    is never 0 from finitely many replicates.
    """
    if first.examples != second.examples:
        raise ValueError(f"paired samples need the same examples ({first.examples} and {second.examples})")
    rng = np.random.default_rng(seed)
    n, s1, s2 = first.examples, first.numerators.shape[0], second.numerators.shape[0]
    differences = []
    for start in range(0, resamples, 200):
        r = min(200, resamples - start)
        examples = _draws(rng, n, n, r)
        if resample_seeds:
            seeds1, seeds2 = _draws(rng, s1, s1, r), _draws(rng, s2, s2, r)
        else:
            seeds1, seeds2 = np.broadcast_to(np.arange(s1), (r, s1)), np.broadcast_to(np.arange(s2), (r, s2))
        differences.append(first.statistic(seeds1, examples) - second.statistic(seeds2, examples))
    d = np.concatenate(differences)
    below, above = int((d <= 0).sum()), int((d >= 0).sum())
    p = min(1.0, 2 * (min(below, above) + 1) / (resamples + 1))
    return PairedResult(first.statistic() - second.statistic(), p, float(d.std(ddof=1)))


# --------------------------------------------------------------------------------------------
# Several comparisons, and what a test could have seen


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values in the input order: sorted ascending, the i-th (from 0) of m is
    multiplied by m - i, then made non-decreasing and capped at 1. Rejecting where the adjusted
    p < alpha keeps the family-wise error at alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def detectable_difference(standard_error: float, alpha: float = 0.05, power: float = POWER) -> float:
    """The smallest true difference a two-sided test at ``alpha`` finds with probability ``power``,
    given the standard error of the observed difference: (z_{1-alpha/2} + z_power) · SE."""
    normal = NormalDist()
    return (normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)) * standard_error


def mcnemar_standard_error(b: int, c: int, n: int) -> float:
    """The standard error of a difference of two proportions on the same n examples under "no
    difference", from the discordant pairs: sqrt(b + c) / n."""
    return math.sqrt(b + c) / n if n else math.nan
