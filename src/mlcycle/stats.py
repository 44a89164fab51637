"""Statistical primitives behind every decision: distribution shift, interval estimates, two-sample tests.

One place, NumPy / SciPy only, no knowledge of what the numbers mean: gates, canary analysis and
monitoring call these and judge the results against their own bounds (mlcycle.decisions). Every
estimate that a decision rests on comes with an interval, because a point estimate on a small
sample decides on noise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

Z95 = 1.959964
PSI_BINS = 10
# A feature with at most this many distinct values in the reference is binned per value: decile
# edges collapse on repeated values (a binary feature has one distinct decile edge) and adjacent
# values end up merged, which hid a 7% → 90% shift entirely.
PSI_MAX_DISCRETE = 10


def psi_from_counts(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI of two histograms on the same bins: Σ (a − e) ln(a / e) over the bins' shares.

    Add-half smoothing on both sides: a bin empty on one side (small samples, a value never seen
    before) weighs as a large but finite term instead of log(0)."""
    e_counts, a_counts = np.asarray(expected, float), np.asarray(actual, float)
    k = len(e_counts)
    e = (e_counts + 0.5) / (e_counts.sum() + 0.5 * k)
    a = (a_counts + 0.5) / (a_counts.sum() + 0.5 * k)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_counts(expected: np.ndarray, actual: np.ndarray, bins: int = PSI_BINS) -> tuple[np.ndarray, np.ndarray]:
    """The two histograms PSI compares: ``expected``'s deciles (``bins`` quantile bins, the outer
    ones open-ended). When decile edges coincide (repeated values): with at most ``PSI_MAX_DISCRETE``
    distinct values in ``expected``, one bin per distinct value plus one for values of ``actual``
    never seen in ``expected`` (only when there are any); with more, the tied edges as bins of their
    own (``_point_mass_counts``). NaNs are dropped."""
    expected, actual = np.asarray(expected, float), np.asarray(actual, float)
    expected, actual = expected[~np.isnan(expected)], actual[~np.isnan(actual)]
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)))
    # Quantile edges that coincide mean repeated values: only then is the distinct-value count worth
    # computing (a sort of the reference), so a continuous feature pays nothing for the check.
    if len(edges) < bins + 1:
        values = np.unique(expected)
        if len(values) <= PSI_MAX_DISCRETE:
            return _per_value_counts(values, expected, actual)
        return _point_mass_counts(edges, expected, actual)
    edges[0], edges[-1] = -np.inf, np.inf
    return np.histogram(expected, edges)[0], np.histogram(actual, edges)[0]


def _point_mass_counts(cuts: np.ndarray, expected: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bins for a feature with many distinct values and heavy ties (zero-inflated, long-tailed counts):
    each distinct decile edge is a bin of its own (the tied mass), and so is each open interval
    between, below and above them; bins empty on both sides are dropped. On deciles a feature 95%
    zeros has edges {0, max} only: one bin, and PSI 0 whatever happens to the zeros."""

    def index(x: np.ndarray) -> np.ndarray:
        left, right = np.searchsorted(cuts, x, "left"), np.searchsorted(cuts, x, "right")
        return np.where(right > left, 2 * left + 1, 2 * left)  # odd: on a cut; even: between cuts

    k = 2 * len(cuts) + 1
    e_counts, a_counts = np.bincount(index(expected), minlength=k), np.bincount(index(actual), minlength=k)
    keep = (e_counts + a_counts) > 0
    return e_counts[keep], a_counts[keep]


def _per_value_counts(values: np.ndarray, expected: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    def count(x: np.ndarray) -> tuple[np.ndarray, int]:
        idx = np.clip(np.searchsorted(values, x), 0, len(values) - 1)
        known = values[idx] == x
        return np.bincount(idx[known], minlength=len(values)), int((~known).sum())

    e_counts, _ = count(expected)
    a_counts, unseen = count(actual)
    if unseen:
        return np.append(e_counts, 0), np.append(a_counts, unseen)
    return e_counts, a_counts


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of ``actual`` against ``expected`` (see ``psi_counts`` for the
    bins). Symmetric KL divergence of the two binned distributions; NaN when either side is empty."""
    expected, actual = np.asarray(expected, float), np.asarray(actual, float)
    if not (~np.isnan(expected)).any() or not (~np.isnan(actual)).any():
        return float("nan")
    return psi_from_counts(*psi_counts(expected, actual, bins))


def psi_noise_floor(bins: int, n1: int, n2: int) -> float:
    """Expected PSI between two samples of one distribution: about (bins − 1)(1/n1 + 1/n2)
    (PSI is twice a symmetric KL, whose chi-squared approximation has bins − 1 degrees of freedom).
    10 bins, 45 a side: 9 × 2/45 = 0.4."""
    return (bins - 1) * (1 / n1 + 1 / n2)


def auc_se(auc: float, positives: int, negatives: int) -> float:
    """Standard error of a ROC-AUC (Hanley & McNeil, 1982): it grows fast as positives get few."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / (
        positives * negatives
    )
    return math.sqrt(max(var, 0.0))


def z_for(confidence: float = 0.95, comparisons: int = 1) -> float:
    """Two-sided normal quantile for ``confidence``, Bonferroni-adjusted over ``comparisons``."""
    return float(stats.norm.ppf(1 - (1 - confidence) / (2 * max(comparisons, 1))))


def wilson_interval(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` trials. Unlike p ± z·SE it
    stays inside [0, 1] and does not collapse to a point at p = 0 or 1 (a 30/30 recall is not certain)."""
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion_difference_ci(p1: float, n1: float, p2: float, n2: float, z: float = Z95) -> tuple[float, float, float]:
    """``p1 − p2`` with Newcombe's hybrid score interval (1998, method 10), built from the two Wilson
    intervals. Chosen over the Wald interval because rates near 0 or 1 on tens of trials (a recall
    of 28/30) are exactly where Wald is too narrow."""
    l1, u1 = wilson_interval(p1, n1, z)
    l2, u2 = wilson_interval(p2, n2, z)
    diff = p1 - p2
    low = diff - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = diff + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return diff, low, high


def abs_interval(low: float, high: float) -> tuple[float, float]:
    """Interval of ``|x|`` given an interval ``[low, high]`` of ``x``."""
    if low >= 0:
        return low, high
    if high <= 0:
        return -high, -low
    return 0.0, max(-low, high)


def mean_difference_ci(reference: np.ndarray, current: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """``mean(current) − mean(reference)`` with a normal (Welch) interval: the two samples may have
    different variances and sizes."""
    a, b = np.asarray(reference, float), np.asarray(current, float)
    diff = float(b.mean() - a.mean())
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if min(len(a), len(b)) > 1 else math.inf
    return diff, diff - z * se, diff + z * se


def mean_ratio_ci(reference: np.ndarray, current: np.ndarray, z: float = Z95) -> tuple[Any, Any, Any]:
    """Relative change of the mean, ``mean(current) / mean(reference) − 1``, with an interval from the
    delta method on the log ratio (the ratio of two means is skewed; its log is close to normal).

    ``current`` may be 2-D, one sample per row (many windows judged at once; then the three results
    are arrays). The means must be positive (scores, rates): otherwise the interval is (-inf, inf)."""
    a, b = np.asarray(reference, float), np.asarray(current, float)
    ma, mb, n = float(a.mean()), b.mean(axis=-1), b.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        change = mb / ma - 1 if ma > 0 else np.full_like(mb, math.inf)
        if ma <= 0 or len(a) < 2 or n < 2:
            unbounded = np.full_like(mb, math.inf)
            return change[()], -unbounded[()], unbounded[()]
        se = np.sqrt(a.var(ddof=1) / (len(a) * ma * ma) + b.var(ddof=1, axis=-1) / (n * mb * mb))
        log_ratio = np.log(mb / ma)
        ok = mb > 0
        low = np.where(ok, np.expm1(log_ratio - z * se), -math.inf)
        high = np.where(ok, np.expm1(log_ratio + z * se), math.inf)
    return change[()], low[()], high[()]


def chi2_two_sample(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, float, int]:
    """Chi-squared test of homogeneity on the 2 × k table of counts: do both samples come from one
    categorical distribution? Both sides are samples (a goodness-of-fit test against reference
    shares would treat the reference as exact and overstate significance when it is small).
    Plain Pearson statistic, without Yates' correction for two categories, so that every table is
    judged alike. Categories empty on both sides are dropped. Returns (statistic, p-value, degrees of
    freedom); NaNs when fewer than two categories or an empty side remain."""
    table = np.vstack([np.asarray(reference_counts, float), np.asarray(current_counts, float)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return float("nan"), float("nan"), 0
    result = stats.chi2_contingency(table, correction=False)
    return float(result.statistic), float(result.pvalue), int(result.dof)


def total_variation(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Total variation distance between two categorical distributions given as counts: the share of
    rows that would have to change category. An effect size independent of the sample sizes (unlike
    Cramér's V, which shrinks when one sample is much larger than the other)."""
    a, b = np.asarray(reference_counts, float), np.asarray(current_counts, float)
    if a.sum() <= 0 or b.sum() <= 0:
        return float("nan")
    return float(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())


def descending(scores: np.ndarray) -> np.ndarray:
    """The order that ranks ``scores`` from highest to lowest. Computed once, it serves every subset
    of the rows: a subset taken in this order is already ranked (``ranking_metrics_ranked``), which
    is how the slices of one evaluation share one sort. The order among tied scores is arbitrary:
    the metrics group ties, so it cannot matter, and NumPy's default sort is 4x a stable one."""
    return np.argsort(-np.asarray(scores, dtype=float))


def ranking_metrics_ranked(y: np.ndarray, scores: np.ndarray) -> tuple[float, float] | tuple[None, None]:
    """``(roc_auc, average_precision)`` of binary labels ``y`` against ``scores`` already ranked from
    highest to lowest, or ``(None, None)`` when one class is absent (neither is defined then).

    Exact, ties included, and the same definitions as scikit-learn's ``roc_auc_score`` (area under
    the ROC curve through one point per distinct score: a tie counts half) and
    ``average_precision_score`` (Σ (R_k − R_k−1) · P_k over distinct scores, no interpolation), in
    one pass over the ranked rows instead of one sort and one validation per call: an evaluation
    computes both for a dozen slices of two models, and a training-set check for every feature."""
    y = np.asarray(y)
    n = len(y)
    hits = np.cumsum(y != 0, dtype=np.int64)
    positives = int(hits[-1]) if n else 0
    if positives == 0 or positives == n:
        return None, None
    s = np.asarray(scores, dtype=float)
    if np.isnan(s).any():  # NaN ranks nowhere: a model that returns one is broken, not "ranked last"
        raise ValueError(f"ranking metrics: {int(np.isnan(s).sum())} of {n} scores are NaN")
    last_of_score = np.r_[np.flatnonzero(s[1:] != s[:-1]), n - 1]  # the last row of each distinct score
    tp = hits[last_of_score]
    fp = last_of_score + 1 - tp
    negatives = n - positives
    # Trapezoids between consecutive ROC points, from (0, 0): Σ Δfp · (tp + tp_prev) / 2.
    tp_prev = np.r_[0, tp[:-1]]
    d_fp = np.diff(fp, prepend=0)
    auc = float(np.dot(d_fp, tp + tp_prev)) / (2.0 * positives * negatives)
    d_tp = np.diff(tp, prepend=0)
    ap = float(np.dot(d_tp, tp / (tp + fp))) / positives
    return auc, ap


def ranking_metrics(y: np.ndarray, scores: np.ndarray) -> tuple[float, float] | tuple[None, None]:
    """``ranking_metrics_ranked`` on rows in any order."""
    order = descending(scores)
    return ranking_metrics_ranked(np.asarray(y)[order], np.asarray(scores, dtype=float)[order])


def _midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    from scipy.stats import rankdata

    return rankdata(x, method="average")


def delong_paired(y: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> tuple[float, float, float]:
    """ROC-AUC of two models scored on the same rows, and the standard error of their difference
    (DeLong, DeLong & Clarke-Pearson 1988, in Sun & Xu's 2014 midrank form): ``(auc_a, auc_b, se)``.

    Paired, because both models judge the same rows: their errors move together, so the difference
    is much firmer than two separate AUC intervals suggest (and much less firm than a point estimate
    against a 0.005 tolerance pretends)."""
    y = np.asarray(y).astype(bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    m, n = len(pos), len(neg)
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least two positives and two negatives, got {m} and {n}")
    v10, v01 = [], []
    for s in (np.asarray(scores_a, float), np.asarray(scores_b, float)):
        tx, ty, tz = _midranks(s[pos]), _midranks(s[neg]), _midranks(np.r_[s[pos], s[neg]])
        v10.append((tz[:m] - tx) / n)  # per positive: share of negatives it outranks
        v01.append(1.0 - (tz[m:] - ty) / m)  # per negative: share of positives that outrank it
    aucs = [float(v.mean()) for v in v10]
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return aucs[0], aucs[1], float(np.sqrt(max(var, 0.0)))


# --- errors of a regression -----------------------------------------------------------------------


def t_quantile(confidence: float, dof: float) -> float:
    """Two-sided Student t quantile; the normal one for infinite degrees of freedom."""
    if not math.isfinite(dof):
        return z_for(confidence)
    return float(stats.t.ppf(1 - (1 - confidence) / 2, max(dof, 1.0)))


def mse_interval(mse: float, sd_squared: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Interval of a mean squared error from its summary: ``mse`` (the mean of the squared errors),
    ``sd_squared`` (their sample standard deviation) and ``n`` rows.

    Delta method on log(MSE) with a Student t quantile (n − 1 degrees of freedom): the mean of
    squared errors is skewed to the right and bounded below by 0, so a symmetric interval around it
    reaches too low and not high enough; on the log scale it is close to symmetric. Simulated
    coverage of a nominal 95% (normal errors, 4,000 runs): 93% at n = 30, 94% at n = 100, 95% from
    n = 200. Heavy-tailed errors cover less (Student t with 5 df: 89% at n = 100, 93% at n = 1,000),
    as does any interval built on the mean of the squares. (0, inf) when there are fewer than two
    rows, (0, 0) when every error is 0."""
    if n < 2 or not math.isfinite(mse) or not math.isfinite(sd_squared):
        return 0.0, math.inf
    if mse <= 0:
        return 0.0, 0.0
    half = t_quantile(confidence, n - 1) * sd_squared / (math.sqrt(n) * mse)
    return mse * math.exp(-half), mse * math.exp(half)


def rmse_interval(errors: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(rmse, low, high)`` of errors (prediction − label), by ``mse_interval`` (its square roots)."""
    squared = np.square(np.asarray(errors, float))
    n = len(squared)
    if n == 0:
        return float("nan"), 0.0, math.inf
    mse = float(squared.mean())
    sd = float(squared.std(ddof=1)) if n > 1 else math.inf
    low, high = mse_interval(mse, sd, n, confidence)
    return math.sqrt(mse), math.sqrt(low), math.sqrt(high)


def paired_mean_difference_ci(
    a: np.ndarray, b: np.ndarray, confidence: float = 0.95
) -> tuple[float, float, float, float]:
    """``mean(a − b)`` over paired rows with the paired Student t interval: ``(diff, low, high, se)``.

    Paired, because both come from the same rows (two models' squared errors on one evaluation
    window): what the rows share cancels in the differences, so the interval is that of the
    differences, usually far narrower than two separate intervals. Fewer than two pairs: (-inf, inf)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    if n == 0:
        return float("nan"), -math.inf, math.inf, math.inf
    diff = float(d.mean())
    if n < 2:
        return diff, -math.inf, math.inf, math.inf
    se = float(d.std(ddof=1)) / math.sqrt(n)
    half = t_quantile(confidence, n - 1) * se
    return diff, diff - half, diff + half, se


def log_ratio_interval(
    mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float, n_b: int, z: float = Z95
) -> tuple[float, float, float]:
    """``log(mean_b / mean_a)`` of two independent samples' positive means (from their summaries)
    with a delta-method interval: ``(log_ratio, low, high)``. On the log scale the ratio of two means
    is close to symmetric, and the interval of ``|log ratio|`` (``abs_interval``) judges "one is at
    most k times the other" either way round. Unbounded when a mean is not positive or a side has
    fewer than two rows."""
    if mean_a <= 0 or mean_b <= 0 or n_a < 2 or n_b < 2:
        ratio = math.log(mean_b / mean_a) if mean_a > 0 and mean_b > 0 else math.inf
        return ratio, -math.inf, math.inf
    log_ratio = math.log(mean_b / mean_a)
    se = math.sqrt(sd_a**2 / (n_a * mean_a**2) + sd_b**2 / (n_b * mean_b**2))
    return log_ratio, log_ratio - z * se, log_ratio + z * se


# --- group-sequential tests (several looks at accumulating data) ---------------------------------


def obrien_fleming_spending(fraction: Any, alpha: float = 0.05) -> Any:
    """Lan–DeMets spending function of O'Brien–Fleming type for a two-sided test of total ``alpha``:
    the type I error spent by information fraction ``t`` (0 < t ≤ 1), ``α/2`` per side as the
    one-sided function ``2 − 2 Φ(z_{1−α/4} / √t)`` (the convention of Jennison & Turnbull, gsDesign
    and rpact), so ``4 − 4 Φ(z_{1−α/4} / √t)`` in all. Spends almost nothing at early looks (an early
    stop needs an overwhelming difference) and all of ``alpha`` at ``t = 1``."""
    t = np.clip(np.asarray(fraction, float), 1e-12, 1.0)
    return (4 - 4 * stats.norm.cdf(z_for(1 - alpha / 2) / np.sqrt(t)))[()]


def group_sequential_bounds(fractions: Any, alpha: float = 0.05, grid: int = 401) -> np.ndarray:
    """Two-sided critical values ``c_k`` for looks at increasing information fractions ``fractions``
    (the last normally 1): stop at the first look with ``|Z_k| ≥ c_k``. Each look spends
    ``α(t_k) − α(t_{k−1})`` of the O'Brien–Fleming-type function (``obrien_fleming_spending``), so the
    chance of any false stop over all the looks is ``α(t_K)``, ``alpha`` when the last look is at 1.

    Exact under the canonical joint distribution (``Z_k`` = score statistic over √information:
    independent increments, ``corr(Z_j, Z_k) = √(t_j / t_k)``), computed by the recursive numerical
    integration of Armitage, McPherson & Rowe (1969) on the continuation regions (Simpson's rule,
    ``grid`` points). One look at ``t = 1``: the fixed-sample ``z_{1−α/2}``. Looks may be unequally
    spaced and their number need not be planned: the spending function fixes each look's share."""
    t = np.asarray(fractions, float)
    if t.ndim != 1 or not len(t) or (t <= 0).any() or (np.diff(t) <= 0).any() or t[-1] > 1 + 1e-12:
        raise ValueError(f"information fractions must increase within (0, 1], got {fractions!r}")
    spent = np.diff(np.r_[0.0, obrien_fleming_spending(t, alpha)])
    bounds = np.empty(len(t))
    nodes = weights = density = None  # of S_{k−1} = Z_{k−1} √t_{k−1} on its continuation region
    previous = 0.0
    for k, (tk, share) in enumerate(zip(t, spent, strict=True)):
        step = tk - previous
        before = None if density is None else (nodes, weights * density, step)
        # The probability of stopping here falls as the bound rises: find the bound that spends `share`.
        high = 40.0
        if share <= 0 or _exit_probability(high, tk, before) >= share:
            bounds[k] = high
        else:
            bounds[k] = _brentq(lambda c, tk=tk, before=before, share=share: _exit_probability(c, tk, before) - share,
                                0.0, high)  # fmt: skip
        b = bounds[k] * math.sqrt(tk)
        new_nodes = np.linspace(-b, b, grid)
        h = new_nodes[1] - new_nodes[0]
        new_weights = np.full(grid, 2.0)
        new_weights[1::2] = 4.0
        new_weights[0] = new_weights[-1] = 1.0
        new_weights *= h / 3
        if density is None:
            new_density = stats.norm.pdf(new_nodes / math.sqrt(tk)) / math.sqrt(tk)
        else:
            sd = math.sqrt(step)
            kernel = stats.norm.pdf((new_nodes[:, None] - nodes[None, :]) / sd) / sd
            new_density = kernel @ (weights * density)
        nodes, weights, density, previous = new_nodes, new_weights, new_density, tk
    return bounds


def _exit_probability(c: float, tk: float, before: tuple[np.ndarray, np.ndarray, float] | None) -> float:
    """P(|Z_k| ≥ c and no earlier stop): from the weighted density of S_{k−1} on its continuation
    region (``before``: nodes, density × quadrature weights, the information step); the first look
    has none."""
    if before is None:
        return float(2 * stats.norm.sf(c))
    nodes, mass, step = before
    b, sd = c * math.sqrt(tk), math.sqrt(step)
    return float(np.dot(mass, stats.norm.cdf((-b - nodes) / sd) + stats.norm.sf((b - nodes) / sd)))


def _brentq(f: Any, low: float, high: float) -> float:
    from scipy.optimize import brentq

    return float(brentq(f, low, high, xtol=1e-10))


def sequential_z(x_a: np.ndarray, x_b: np.ndarray) -> tuple[float, float, float]:
    """``mean(b) − mean(a)`` of two independent arms' per-unit values, its standard error and the z
    statistic (Welch; pooled when both arms are constant): what each look of a group-sequential
    comparison judges. NaN z below two a side."""
    a, b = np.asarray(x_a, float), np.asarray(x_b, float)
    if len(a) < 2 or len(b) < 2:
        return float("nan"), math.inf, float("nan")
    diff = float(b.mean() - a.mean())
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    if se == 0:
        # Both arms constant (no flag at all in one, every one flagged in the other): Welch has no
        # spread to scale by, and an infinite z would stop any look. Under the null hypothesis both
        # arms are one distribution, so the pooled sample's variance is the spread to use, as the
        # two-proportion z-test pools for rates. Equal constants: no difference, z = 0.
        pooled = float(np.concatenate([a, b]).var(ddof=1))
        se = math.sqrt(pooled * (1 / len(a) + 1 / len(b)))
        if se == 0:
            return diff, 0.0, 0.0
    return diff, se, diff / se


def skewed_mean_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of a skewed sample with Hall's (1992) skewness-corrected interval: ``(mean, low, high)``.

    Per-prediction costs are mostly zero with a long right tail (a missed positive costs its own value), and
    there the symmetric t interval reaches too low and not high enough: simulated coverage of a
    nominal 95% on 2,000 predictions of which 2% cost a lognormal sum, 93%. Hall's monotone
    transformation of the t statistic, ``g(t) = t + a t² + a² t³ / 3 + b`` with ``a = γ / (3√n)``,
    ``b = γ / (6√n)`` (γ the sample skewness), corrects the first-order skew; inverted at the normal
    quantiles it gives 94% there with both tails near 2.5%, and the t interval's width when γ = 0.
    The correction is capped at ``a = 1 / (6z)`` (extreme skewness; see below). Fewer than three
    finite values: (-inf, inf); all values equal: a zero-width interval."""
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n < 3:
        return (float(x.mean()) if n else float("nan")), -math.inf, math.inf
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    if sd == 0:
        return mean, mean, mean
    gamma = n / ((n - 1) * (n - 2)) * float(np.sum(((x - mean) / sd) ** 3))  # sample skewness, bias-adjusted
    z, se = z_for(confidence), sd / math.sqrt(n)
    # A first-order correction: past a = 1/(6z) (about 0.085 at 95%) the cubic's inverse at −z leaves
    # its useful range and the upper end runs away (one outlier among few costs: skewness 40 put it at
    # 4x the bootstrap's). The correction is capped there, where it stays close to the bootstrap.
    a = math.copysign(min(abs(gamma) / (3 * math.sqrt(n)), 1 / (6 * z)), gamma)
    b = a / 2

    def inverse(y: float) -> float:
        return y - b if abs(a) < 1e-12 else (np.cbrt(1 + 3 * a * (y - b)) - 1) / a

    return mean, mean - se * float(inverse(z)), mean - se * float(inverse(-z))
