"""Statistical primitives (mlcycle.stats) against answers that do not come from the code under test:
hand-worked examples, published values, SciPy / statsmodels, and simulation with fixed seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from mlcycle.serving.canary import auc_se as canary_auc_se
from mlcycle.serving.canary import psi as canary_psi
from mlcycle.stats import (
    abs_interval,
    auc_se,
    chi2_two_sample,
    mean_difference_ci,
    mean_ratio_ci,
    proportion_difference_ci,
    psi,
    psi_noise_floor,
    total_variation,
    wilson_interval,
    z_for,
)


def test_psi_on_deciles_matches_a_hand_worked_example() -> None:
    # Reference 0..999: its deciles hold 100 values each. The current sample puts 150 values in each
    # of the first four deciles, 50 in the next four and 100 in the last two (1,000 values).
    reference = np.arange(1000)
    current = np.repeat(np.arange(50, 1000, 100), [150] * 4 + [50] * 4 + [100] * 2)
    # Without smoothing: 4 × 0.05 ln(0.15/0.10) + 4 × (−0.05) ln(0.05/0.10) = 0.2 (ln 1.5 + ln 2) = 0.2197.
    assert psi(reference, current) == pytest.approx(0.2 * (math.log(1.5) + math.log(2)), abs=0.003)
    # With add-half smoothing (documented): shares (count + 0.5) / (1000 + 5).
    smoothed = 4 * (50 / 1005) * math.log(150.5 / 100.5) + 4 * (-50 / 1005) * math.log(50.5 / 100.5)
    assert psi(reference, current) == pytest.approx(smoothed, rel=1e-12)
    assert psi(reference, reference) == 0.0


def test_psi_of_a_binary_feature_is_not_zero() -> None:
    """Issue 10 item 1: a binary feature going from 7% to 90% ones scored 0.0 (one distinct decile edge).
    By hand: (0.9 − 0.07) ln(0.9/0.07) + (0.1 − 0.93) ln(0.1/0.93) = 2.1197 + 1.8509 = 3.9706."""
    reference = np.repeat([1.0, 0.0], [7_000, 93_000])
    current = np.repeat([1.0, 0.0], [90_000, 10_000])
    assert psi(reference, current) == pytest.approx(3.9706, abs=0.002)
    assert canary_psi(reference, current) == psi(reference, current)  # the re-export is the same function


def test_psi_of_a_three_valued_feature_sees_the_shift_between_the_upper_values() -> None:
    """{0,1,2} from 50/30/20 to 50/5/45 scored ~1e-5 (values 1 and 2 shared one bin). By hand:
    0 + (0.05 − 0.30) ln(0.05/0.30) + (0.45 − 0.20) ln(0.45/0.20) = 0.4479 + 0.2027 = 0.6507.
    (29,990 / 20,010 rather than 30,000 / 20,000: the 80% quantile then falls on a 2, as it does in
    about half of random samples, and the old decile edges merged the 1s and 2s.)"""
    reference = np.repeat([0, 1, 2], [50_000, 29_990, 20_010])
    current = np.repeat([0, 1, 2], [50_000, 5_000, 45_000])
    assert psi(reference, current) == pytest.approx(0.6507, abs=0.001)
    assert canary_psi(reference, current) == psi(reference, current)  # what canary / monitoring use


def test_psi_sees_a_change_in_the_tied_mass_of_a_zero_inflated_feature() -> None:
    """A feature 95% zeros, the rest continuous (many distinct values): its decile edges are {0, max},
    one bin, and PSI was 0 whatever the zeros did. 95% → 60% zeros, by hand on (zero, non-zero):
    (0.60 − 0.95) ln(0.60/0.95) + (0.40 − 0.05) ln(0.40/0.05) = 0.1608 + 0.7278 = 0.8886."""
    rng = np.random.default_rng(4)
    reference = np.where(rng.random(100_000) < 0.95, 0.0, rng.exponential(10, 100_000))
    current = np.where(rng.random(100_000) < 0.60, 0.0, rng.exponential(10, 100_000))
    assert psi(reference, current) == pytest.approx(0.8886, abs=0.01)
    assert canary_psi(reference, current) == psi(reference, current)
    assert psi(reference, np.where(rng.random(100_000) < 0.95, 0.0, rng.exponential(10, 100_000))) < 0.01


def test_psi_counts_values_never_seen_in_the_reference() -> None:
    # Reference {0, 1} half and half; the current sample has 20% of a new value 2: three bins,
    # (0, 1, unseen) = reference (500, 500, 0), current (400, 400, 200), add-half smoothed.
    reference = np.repeat([0, 1], [500, 500])
    current = np.repeat([0, 1, 2], [400, 400, 200])
    e = np.array([500.5, 500.5, 0.5]) / 1001.5
    a = np.array([400.5, 400.5, 200.5]) / 1001.5
    by_hand = sum((x - y) * math.log(x / y) for x, y in zip(a, e, strict=True))
    assert psi(reference, current) == pytest.approx(by_hand, rel=1e-12)
    # PSI is the symmetric KL divergence: SciPy's entropy gives the same number.
    assert psi(reference, current) == pytest.approx(stats.entropy(a, e) + stats.entropy(e, a), rel=1e-9)


def test_psi_noise_floor_matches_simulation() -> None:
    """Two samples of one distribution score about (bins − 1)(1/n1 + 1/n2): 0.4 at 45 a side (not 0.2)."""
    assert psi_noise_floor(10, 45, 45) == pytest.approx(0.4)
    rng = np.random.default_rng(11)
    draws = [psi(rng.normal(size=500), rng.normal(size=500)) for _ in range(400)]
    assert np.mean(draws) == pytest.approx(psi_noise_floor(10, 500, 500), rel=0.15)


def test_auc_standard_error_hand_worked_and_by_simulation() -> None:
    # Hanley & McNeil (1982), AUC 0.8 on 50 + 50: Q1 = 0.8/1.2, Q2 = 2·0.64/1.8,
    # var = (0.16 + 49 (Q1 − 0.64) + 49 (Q2 − 0.64)) / 2500 = 0.0019804, SE 0.0445.
    assert auc_se(0.8, 50, 50) == pytest.approx(0.0445, abs=5e-5)
    assert canary_auc_se(0.8, 50, 50) == auc_se(0.8, 50, 50)
    # Under the exponential model the formula is derived for (positives ~ Exp(mean 4), negatives ~
    # Exp(1): AUC = 4/5), the spread of 2,000 simulated AUCs (Mann-Whitney on ranks) matches it.
    rng = np.random.default_rng(3)
    positives, negatives = rng.exponential(4.0, (2000, 40)), rng.exponential(1.0, (2000, 400))
    ranks = stats.rankdata(np.hstack([positives, negatives]), axis=1)
    aucs = (ranks[:, :40].sum(axis=1) - 40 * 41 / 2) / (40 * 400)
    assert auc_se(0.8, 40, 400) == pytest.approx(aucs.std(), rel=0.08)


def test_wilson_interval_matches_the_published_example_and_statsmodels() -> None:
    # Newcombe (1998), single proportion, 81/263: Wilson 0.2553 to 0.3662.
    low, high = wilson_interval(81 / 263, 263)
    assert (low, high) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    for x, n in [(0, 30), (30, 30), (3, 7), (140, 200)]:
        assert wilson_interval(x / n, n) == pytest.approx(proportion_confint(x, n, method="wilson"), abs=1e-6)


def test_proportion_difference_matches_newcombe_and_statsmodels() -> None:
    # Newcombe (1998), difference of proportions, 56/70 − 48/80: method 10 gives 0.0524 to 0.3339.
    diff, low, high = proportion_difference_ci(56 / 70, 70, 48 / 80, 80)
    assert diff == pytest.approx(0.2)
    assert (low, high) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    for x1, n1, x2, n2 in [(25, 30, 15, 30), (3900, 5000, 2750, 5000), (30, 30, 20, 40), (2, 50, 0, 60)]:
        expected = confint_proportions_2indep(x1, n1, x2, n2, method="newcomb", compare="diff")
        got = proportion_difference_ci(x1 / n1, n1, x2 / n2, n2)
        assert got[1:] == pytest.approx(expected, abs=1e-6)


def test_bonferroni_quantile_and_absolute_interval() -> None:
    assert z_for(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_for(0.95, 3) == pytest.approx(stats.norm.ppf(1 - 0.05 / 6))  # 2.394
    assert abs_interval(0.1, 0.3) == (0.1, 0.3)
    assert abs_interval(-0.3, -0.1) == (0.1, 0.3)
    assert abs_interval(-0.05, 0.2) == (0.0, 0.2)


def test_mean_difference_matches_welch_on_large_samples() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(0, 1, 4000), rng.normal(0.1, 2, 3000)
    diff, low, high = mean_difference_ci(a, b)
    welch = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(b.mean() - a.mean())
    assert (low, high) == pytest.approx((welch.low, welch.high), abs=2e-3)  # z vs t quantile at ~4,000 df


def test_mean_ratio_interval_covers_the_true_change() -> None:
    """2,000 samples of 400 from a lognormal whose mean is 12% above the reference's: the 95% interval
    of the relative change contains 0.12 in about 95% of them (delta method on the log ratio)."""
    rng = np.random.default_rng(8)
    reference = rng.lognormal(0.0, 0.5, 200_000)
    current = rng.lognormal(math.log(1.12), 0.5, (2000, 400))
    _, low, high = mean_ratio_ci(reference, current)
    coverage = np.mean((low <= 0.12) & (high >= 0.12))
    assert 0.93 <= coverage <= 0.97
    change, low1, high1 = mean_ratio_ci(reference, current[0])  # one sample: plain numbers
    assert float(change) == pytest.approx(current[0].mean() / reference.mean() - 1)
    assert low1 < change < high1


def test_two_sample_chi_squared_is_scipy_contingency_and_drops_empty_categories() -> None:
    reference, current = np.array([600, 300, 100, 0]), np.array([250, 200, 50, 0])
    expected = stats.chi2_contingency(np.array([[600, 300, 100], [250, 200, 50]]), correction=False)
    assert chi2_two_sample(reference, current) == pytest.approx((expected.statistic, expected.pvalue, 2))
    # By hand, total variation: ½ (|0.6 − 0.5| + |0.3 − 0.4| + |0.1 − 0.1|) = 0.1.
    assert total_variation(reference, current) == pytest.approx(0.1)
    assert math.isnan(chi2_two_sample(np.array([5, 0]), np.array([7, 0]))[1])  # one category: no test
    # Two categories: the plain Pearson statistic, no Yates correction. By hand, 30/70 vs 45/55: expected
    # 37.5 / 62.5 per row, every |O − E| = 7.5, chi2 = 7.5² (2/37.5 + 2/62.5) = 4.8 (Yates: 7² (…) = 4.18).
    assert chi2_two_sample(np.array([30, 70]), np.array([45, 55]))[0] == pytest.approx(4.8)


def _delong_by_definition(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """DeLong's variance of AUC_a − AUC_b from its definition: the m×n kernel ψ(x, y) = 1, ½, 0
    per (positive, negative) pair, its row and column means, their covariances. O(m·n): slow, plain."""
    pos, neg = y.astype(bool), ~y.astype(bool)
    v10, v01 = [], []
    for s in (a, b):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    m, n = pos.sum(), neg.sum()
    d10, d01 = v10[0] - v10[1], v01[0] - v01[1]
    return float(np.sqrt(d10.var(ddof=1) / m + d01.var(ddof=1) / n))


def test_delong_matches_its_definition_and_sklearn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    from mlcycle.stats import delong_paired

    rng = np.random.default_rng(17)
    y = rng.random(600) < 0.1
    a = np.round(np.where(y, rng.normal(1, 1, 600), rng.normal(0, 1, 600)), 1)  # rounded: ties
    b = np.round(a + rng.normal(0, 0.7, 600), 1)
    auc_a, auc_b, se = delong_paired(y, a, b)
    assert auc_a == pytest.approx(roc_auc_score(y, a)) and auc_b == pytest.approx(roc_auc_score(y, b))
    assert se == pytest.approx(_delong_by_definition(y, a, b), rel=1e-9)


def test_delong_paired_interval_covers_a_zero_difference_95_percent_of_the_time() -> None:
    """Simulation: two models with the same true AUC (their scores are the same signal plus
    independent noise of the same size), 400 data sets of 3,000 rows with 3% positives."""
    from mlcycle.stats import delong_paired

    rng = np.random.default_rng(23)
    covered = 0
    for _ in range(400):
        y = rng.random(3000) < 0.03
        signal = np.where(y, 1.5, 0.0) + rng.normal(0, 1, 3000)
        a, b = signal + rng.normal(0, 0.5, 3000), signal + rng.normal(0, 0.5, 3000)
        auc_a, auc_b, se = delong_paired(y, a, b)
        covered += abs(auc_a - auc_b) <= 1.959964 * se
    assert 0.92 <= covered / 400 <= 0.98  # binomial sd of the share at 95%: 1.1 points


def test_ranking_metrics_match_a_hand_worked_example_with_a_tie() -> None:
    from mlcycle.stats import ranking_metrics

    # Scores 0.9 (pos), 0.8 (neg), 0.8 (pos), 0.1 (neg). Pairs (pos, neg): 0.9>0.8, 0.9>0.1, 0.8=0.8
    # (half), 0.8>0.1 → AUC = 3.5 / 4. Distinct thresholds: 0.9 → R=1/2, P=1; 0.8 → R=1, P=2/3;
    # AP = 1/2·1 + 1/2·2/3 = 5/6.
    auc, ap = ranking_metrics(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.8, 0.1]))
    assert auc == pytest.approx(3.5 / 4) and ap == pytest.approx(5 / 6)
    assert ranking_metrics(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3])) == (None, None)
    assert ranking_metrics(np.array([1, 1]), np.array([0.1, 0.2])) == (None, None)
    with pytest.raises(ValueError, match="1 of 3 scores are NaN"):  # as scikit-learn refuses them
        ranking_metrics(np.array([1, 0, 1]), np.array([0.9, np.nan, 0.2]))


def test_ranking_metrics_equal_sklearn_with_ties_and_on_subsets_of_one_ranking() -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    from mlcycle.stats import descending, ranking_metrics, ranking_metrics_ranked

    rng = np.random.default_rng(3)
    for trial in range(300):
        n = int(rng.integers(2, 400))
        y = (rng.random(n) < rng.uniform(0.01, 0.9)).astype(int)
        # Half the trials on a handful of distinct scores: ties everywhere.
        s = rng.integers(0, int(rng.integers(1, 12)), n) / 10 if trial % 2 else rng.random(n)
        auc, ap = ranking_metrics(y, s)
        if 0 < y.sum() < n:
            assert auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
            assert ap == pytest.approx(average_precision_score(y, s), abs=1e-12)
        else:
            assert (auc, ap) == (None, None)
        # A subset taken in the whole set's ranking is ranked: same answer as sklearn on the subset.
        order = descending(s)
        keep = rng.random(n) < 0.5
        sub_y, sub_s = y[order][keep[order]], s[order][keep[order]]
        if 0 < sub_y.sum() < len(sub_y):
            auc, ap = ranking_metrics_ranked(sub_y, sub_s)
            assert auc == pytest.approx(roc_auc_score(y[keep], s[keep]), abs=1e-12)
            assert ap == pytest.approx(average_precision_score(y[keep], s[keep]), abs=1e-12)
