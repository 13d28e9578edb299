"""The report's statistics against hand computations on small fixed inputs, and simulations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunelab.report.stats import (
    Z95,
    Samples,
    bootstrap_interval,
    detectable_difference,
    discordant,
    holm,
    mcnemar_exact,
    mcnemar_standard_error,
    paired_bootstrap,
    wilson_interval,
)


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


def test_holm_on_a_worked_example():
    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> x4 = 0.02, x3 = 0.03, x2 = 0.06, x1 = 0.04 -> kept non-decreasing: 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5] and holm([]) == []
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    # at alpha 0.05 Holm rejects 0.005 and 0.01 only, where unadjusted tests would reject all four
    assert [p < 0.05 for p in holm([0.01, 0.04, 0.03, 0.005])] == [True, False, False, True]


def test_the_bootstrap_interval_covers_a_known_mean_in_at_least_93_of_200_draws():
    """200 test sets of 300 examples drawn from a skewed distribution (exponential, mean 1):
    the 95 % interval must contain the true mean in at least 186 of them."""
    rng = np.random.default_rng(2026)
    covered = sum(low <= 1.0 <= high for low, high in
                  (bootstrap_interval(Samples.of(rng.exponential(1.0, 300)), seed=k) for k in range(200)))
    assert covered >= 186, covered


def test_the_bootstrap_interval_of_a_ratio_of_sums_covers_the_true_perplexity():
    rng = np.random.default_rng(7)
    covered = 0
    for k in range(200):  # windows of 20-200 tokens, NLL per token ~ Gamma(2, 0.5): mean 1, perplexity e
        tokens = rng.integers(20, 200, 300)
        nll = rng.gamma(2.0, 0.5, 300) * tokens
        low, high = bootstrap_interval(Samples.of(nll, tokens, exp=True), seed=k)
        covered += low <= math.e <= high
    assert covered >= 186, covered


def test_the_paired_bootstrap_sees_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.2, 500)
    shifted = paired_bootstrap(Samples.of(base + 0.01), Samples.of(base), resample_seeds=False)
    assert shifted.difference == pytest.approx(0.01) and shifted.p < 0.001  # paired: a tiny shift on the same examples
    noisy = paired_bootstrap(Samples.of(base + rng.normal(0, 0.2, 500)), Samples.of(base), resample_seeds=False)
    assert noisy.p > 0.05
    same = paired_bootstrap(Samples.of(base), Samples.of(base))
    assert same.difference == 0 and same.p == 1.0 and same.standard_error == 0


def test_the_seed_aware_test_is_not_misled_by_one_lucky_seed():
    """One seed of A is far better than B; A's other seeds are far worse. The first seed alone
    gives p < 0.001; over seeds and examples, A and B cannot be told apart."""
    rng = np.random.default_rng(3)
    n = 400
    a = (rng.random((3, n)) < np.array([[0.9], [0.6], [0.6]])).astype(float)  # seed 0 lucky
    b = rng.random((3, n)) < 0.75
    first_only = paired_bootstrap(Samples.of(a[0]), Samples.of(b[0].astype(float)), resample_seeds=False)
    assert first_only.p < 0.001
    a = Samples.of(a)
    seeds = paired_bootstrap(a, Samples.of(b.astype(float)))
    assert seeds.p > 0.05 and seeds.standard_error > 3 * first_only.standard_error  # the seeds' spread counts


def test_the_detectable_difference_by_the_normal_quantiles():
    # (1.959964 + 0.841621) x 0.01 at alpha 0.05, 80 % power
    assert detectable_difference(0.01) == pytest.approx(0.0280159, abs=1e-6)
    assert detectable_difference(0.01, alpha=0.025) > detectable_difference(0.01)
    assert mcnemar_standard_error(10, 6, 400) == pytest.approx(4 / 400)
