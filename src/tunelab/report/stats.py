"""The two small statistics the report needs, in plain Python (no scipy).

- the Wilson score interval of a proportion (Wilson 1927, "Probable inference, the law of
  succession, and statistical inference"): unlike the normal approximation p ± z·sqrt(p(1-p)/n)
  it stays inside [0, 1] and does not shrink to a point at p = 0 or 1;
- the exact McNemar test of two classifiers on the same examples (McNemar 1947): only the
  discordant pairs count, b (the first right, the second wrong) and c (the other way round);
  under "equally good" each is a fair coin flip, so the two-sided p-value is a binomial tail.
"""

from __future__ import annotations

import math
from statistics import NormalDist

Z95 = NormalDist().inv_cdf(0.975)
"""The normal quantile of a two-sided 95 % interval, 1.959964…"""


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
