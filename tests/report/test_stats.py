"""The report's two statistics against hand computations on small fixed inputs."""

from __future__ import annotations

import math

import pytest

from tunelab.report.stats import Z95, discordant, mcnemar_exact, wilson_interval


def test_mcnemar_known_table():
    # b=10, c=2: p = 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 * (1 + 12 + 66) / 4096
    assert mcnemar_exact(10, 2) == 2 * (1 + 12 + 66) / 4096 == 0.03857421875
    assert mcnemar_exact(2, 10) == 0.03857421875  # two-sided: symmetric in b and c


def test_mcnemar_small_tables_by_hand():
    assert mcnemar_exact(0, 0) == 1.0  # no discordant pair: nothing tells the two apart
    assert mcnemar_exact(4, 1) == 2 * (1 + 5) / 32 == 0.375
    assert mcnemar_exact(6, 0) == 2 * 1 / 64 == 0.03125
    assert mcnemar_exact(1, 0) == 1.0  # 2 * 1/2
    assert mcnemar_exact(5, 5) == 1.0  # 2 * 638/1024 > 1: capped


def test_mcnemar_large_counts_neither_overflow_nor_exceed_one():
    assert mcnemar_exact(1000, 1000) == 1.0
    assert 0.0 <= mcnemar_exact(2000, 0) < 1e-300
    # b=60, c=40: near the chi-square approximation with continuity correction (19²/100 = 3.61, p ≈ 0.057)
    assert mcnemar_exact(60, 40) == pytest.approx(0.0569, abs=5e-4)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_wilson_81_of_100_by_the_closed_form():
    z, n, p = 1.959964, 100, 0.81
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    low, high = wilson_interval(p, n, z=z)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-15)
    assert (low, high) == pytest.approx((0.72221, 0.87485), abs=1e-5)  # worked out by hand, to 5 decimals
    assert low < p < high and (p - low) > (high - p)  # pulled towards 1/2: not symmetric around p


def test_wilson_at_the_ends_stays_in_zero_one():
    z = 1.959964
    low, high = wilson_interval(0.0, 10, z=z)
    assert low == 0.0 and high == pytest.approx((z**2 / 10) / (1 + z**2 / 10), abs=1e-15)  # 0.2775
    low, high = wilson_interval(1.0, 10, z=z)
    assert high == pytest.approx(1.0, abs=1e-15) and low == pytest.approx(1 - (z**2 / 10) / (1 + z**2 / 10), abs=1e-15)
    with pytest.raises(ValueError):
        wilson_interval(0.5, 0)


def test_the_default_is_the_95_percent_quantile():
    assert Z95 == pytest.approx(1.959964, abs=1e-6)
    assert wilson_interval(0.81, 100) == pytest.approx(wilson_interval(0.81, 100, z=1.959964), abs=1e-6)


def test_discordant_pairs():
    first = {0: True, 1: True, 2: False, 3: False, 4: True}
    second = {0: True, 1: False, 2: True, 3: False, 4: False}
    assert discordant(first, second) == (2, 1)  # b: ids 1, 4; c: id 2
    assert discordant(second, first) == (1, 2)
