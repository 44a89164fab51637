"""Label-free performance estimation for classification (confidence-based, "CBPE").

Labels arrive late, or never: a decay check on matured labels (``mlcycle.monitoring.drift``) speaks
weeks after the model went wrong. When the model's scores are calibrated probabilities, the labels
the current window will get are, row by row, Bernoulli draws with those probabilities, so the
confusion matrix and ROC-AUC they will produce can be computed *before* they arrive: their
expectation, and how far one realisation of the labels may fall from it.

That holds under covariate shift (the rows change, P(y | x) does not), which is the shift the
reference calibration survives. It cannot hold under concept drift: when P(y | x) changes while the
scores do not, every number here stays where it was while the real performance moves. An estimate
is a warning that arrives early, never a replacement for the decay check on labels.

Pure functions, data in and data out: the monitoring job gathers the champion's held-out window
(scores and labels) and the current window's scores, and judges the result with ``estimated_decay``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

from mlcycle.decisions import OnUnmeasurable, Verdict, interval_check, not_measurable

# Isotonic regression on fewer labelled rows of either class fits noise: its steps are as tall as
# one label, and every estimate downstream inherits that staircase as if it were the truth.
MIN_CALIBRATION_POSITIVES = 20
MIN_CALIBRATION_NEGATIVES = 20
# With fewer expected rows of a class, the interval of a ROC-AUC (or a recall) spans most of [0, 1]
# and the simulated draws often hold no row of that class at all: nothing worth judging.
MIN_EXPECTED_POSITIVES = 10.0
MIN_EXPECTED_NEGATIVES = 10.0
DEFAULT_BOOT = 200
DEFAULT_CONFIDENCE = 0.95
ECE_BINS = 10
CALIBRATION_FOLDS = 5
# Simulated label draws are generated this many cells (rows × draws) at a time, so a large window
# costs bounded memory, not n_boot copies of itself.
_CHUNK_CELLS = 4_000_000
METRICS = ("roc_auc", "precision", "recall", "f1")
KIND = "performance.estimated_decay"


class NotMeasurable(ValueError):
    """The data cannot support the requested estimate; ``detail`` says what is missing, so a caller
    can turn it into a not-measurable check instead of a silent pass."""

    def __init__(self, detail: str, **evidence: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.evidence = evidence


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Σ_b (n_b / n) |mean(y) − mean(p)| over ``bins`` equal-mass bins of ``probabilities``.

    Equal-mass rather than equal-width bins: scores crowd near 0 on imbalanced data, and equal-width
    bins would judge calibration on a few hundred rows in one bin and a handful in the others."""
    p, y = np.asarray(probabilities, float), np.asarray(labels, float)
    if len(p) == 0:
        return float("nan")
    order = np.argsort(p, kind="stable")
    total = 0.0
    for part in np.array_split(order, min(bins, len(p))):
        total += len(part) * abs(float(y[part].mean()) - float(p[part].mean()))
    return total / len(p)


@dataclass(frozen=True)
class Calibrator:
    """A monotone map from the model's scores to probabilities, fitted on a labelled reference window.

    ``ece_before`` reads the raw scores as probabilities (meaningless when they are not in [0, 1]:
    NaN then). ``ece_after`` is cross-fitted (each fold judged by a map fitted without it): the
    same rows that fitted an isotonic map would show it almost perfectly calibrated."""

    model: Any  # sklearn.isotonic.IsotonicRegression
    n: int
    positives: int
    negatives: int
    ece_before: float
    ece_after: float
    floor: float  # probabilities are kept within [floor, 1 − floor]

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of ``scores``. Kept off exact 0 and 1: a reference of n rows with
        no positive in its lowest step shows the rate there is below about 1/n, not that it is zero,
        and a probability of 0 would remove those rows from every interval."""
        p = self.model.predict(np.asarray(scores, float))
        return np.clip(p, self.floor, 1.0 - self.floor)

    def evidence(self) -> dict[str, Any]:
        return {
            "calibration_rows": self.n,
            "calibration_positives": self.positives,
            "calibration_negatives": self.negatives,
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
        }


def _isotonic(scores: np.ndarray, labels: np.ndarray) -> Any:
    from sklearn.isotonic import IsotonicRegression

    return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, labels)


def calibrate(scores: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> Calibrator:
    """Isotonic regression of ``labels`` on ``scores`` over the reference window (the champion's
    held-out window: its training rows would show the model better calibrated than it is).

    Isotonic because it assumes only that a higher score means a higher probability — the one thing a
    ranking model promises — and so corrects any monotone distortion (a boosted model's squashed
    scores, a resampled training set's inflated base rate). Raises ``NotMeasurable`` when either class
    has too few rows to fit it."""
    s = np.asarray(scores, float)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"calibrate: scores {s.shape} and labels {y.shape} must be two 1-D arrays of one length")
    if np.isnan(s).any():
        raise ValueError(f"calibrate: {int(np.isnan(s).sum())} of {len(s)} scores are NaN")
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives < MIN_CALIBRATION_POSITIVES or negatives < MIN_CALIBRATION_NEGATIVES:
        raise NotMeasurable(
            f"{positives} positives and {negatives} negatives in the reference window; calibration needs at least "
            f"{MIN_CALIBRATION_POSITIVES} and {MIN_CALIBRATION_NEGATIVES}",
            calibration_positives=positives,
            calibration_negatives=negatives,
        )
    yf = y.astype(float)
    in_unit = bool(s.min() >= 0.0 and s.max() <= 1.0)
    ece_before = expected_calibration_error(s, yf) if in_unit else float("nan")
    folds = np.random.default_rng(seed).permutation(len(s)) % CALIBRATION_FOLDS
    out_of_fold = np.empty(len(s))
    for k in range(CALIBRATION_FOLDS):
        held = folds == k
        out_of_fold[held] = _isotonic(s[~held], yf[~held]).predict(s[held])
    return Calibrator(
        model=_isotonic(s, yf),
        n=len(s),
        positives=positives,
        negatives=negatives,
        ece_before=ece_before,
        ece_after=expected_calibration_error(out_of_fold, yf),
        floor=0.5 / len(s),
    )


@dataclass(frozen=True)
class Estimate:
    """What the labels of a window are expected to show, and how far one realisation may stray.

    Point values are analytic expectations under y_i ~ Bernoulli(p_i). ``intervals`` are percentile
    intervals of the metric over simulated label draws: the spread of the labels that will actually
    arrive around the expectation, given the probabilities. They do not include the error of the
    calibration itself (a reference window far larger than the current one keeps that small), nor
    anything concept drift does."""

    n: int
    threshold: float
    expected_positives: float
    expected_negatives: float
    tp: float
    fp: float
    fn: float
    tn: float
    roc_auc: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    intervals: dict[str, tuple[float, float] | None]
    confidence: float
    n_boot: int
    measurable: bool
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def interval(self, metric: str) -> tuple[float, float] | None:
        return self.intervals.get(metric)

    def evidence(self) -> dict[str, Any]:
        """The numbers a check built on this estimate carries, so a reader can redo the judgement."""
        return {
            "n": self.n,
            "expected_positives": self.expected_positives,
            "expected_negatives": self.expected_negatives,
            "threshold": self.threshold,
            "confusion": {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn},
            "estimates": {m: getattr(self, m) for m in METRICS},
            "intervals": {m: (None if v is None else list(v)) for m, v in self.intervals.items()},
            "n_boot": self.n_boot,
            "method": "CBPE: expectation over y ~ Bernoulli(calibrated p); percentile interval of simulated labels",
            **self.extra,
        }


def expected_roc_auc(probabilities: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC-AUC the labels are expected to give: Σ_{i≠j} p_i (1 − p_j) (1[s_i > s_j] + ½ 1[s_i = s_j]) over
    Σ_{i≠j} p_i (1 − p_j) — expected concordant positive/negative pairs over expected pairs.

    One sort and cumulative sums instead of the n² pairs: each row's share is its positive weight
    times the negative weight ranked strictly below it, plus half of its tied group's negative
    weight other than its own. None when no pair is expected (every p is 0, or every p is 1)."""
    p = np.asarray(probabilities, float)
    s = np.asarray(scores, float)
    order = np.argsort(s, kind="stable")
    p, s = p[order], s[order]
    w = 1.0 - p
    group = np.cumsum(np.r_[True, s[1:] != s[:-1]]) - 1 if len(s) else np.zeros(0, int)
    group_neg = np.bincount(group, weights=w)
    below = np.cumsum(group_neg) - group_neg
    numerator = float(np.dot(p, below[group] + 0.5 * (group_neg[group] - w)))
    pairs = float(p.sum() * w.sum() - np.dot(p, w))
    return numerator / pairs if pairs > 0 else None


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _simulate(
    p: np.ndarray, ranks: np.ndarray, predicted: np.ndarray, n_boot: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Each metric's realised value on ``n_boot`` label draws y ~ Bernoulli(p), by matrix products:
    AUC from the rank sum of the positives (Mann–Whitney, midranks: a tie counts half, as in
    scikit-learn), the confusion matrix from the predicted-positive mask."""
    n = len(p)
    pred = predicted.astype(float)
    npred = float(pred.sum())
    out: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    chunk = max(1, _CHUNK_CELLS // max(n, 1))
    done = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        while done < n_boot:
            b = min(chunk, n_boot - done)
            y = (rng.random((b, n)) < p).astype(float)
            pos = y.sum(axis=1)
            neg = n - pos
            rank_sum = y @ ranks
            out["roc_auc"].append(
                np.where((pos > 0) & (neg > 0), (rank_sum - pos * (pos + 1) / 2) / (pos * neg), np.nan)
            )
            tp = y @ pred
            out["precision"].append(np.full(b, np.nan) if npred == 0 else tp / npred)
            out["recall"].append(np.where(pos > 0, tp / pos, np.nan))
            out["f1"].append(np.where(npred + pos > 0, 2 * tp / (npred + pos), np.nan))
            done += b
    return {m: np.concatenate(v) for m, v in out.items()}


def estimate(
    probabilities: np.ndarray,
    scores: np.ndarray | None = None,
    threshold: float = 0.5,
    *,
    seed: int | np.random.Generator = 0,
    n_boot: int = DEFAULT_BOOT,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Estimate:
    """Expected ROC-AUC, precision, recall, F1 and confusion matrix of a window from its calibrated
    ``probabilities``, with an interval for each.

    ``scores`` are the model's raw scores: they rank the rows and meet the decision ``threshold``
    (a row is predicted positive when its score is at least the threshold). Isotonic probabilities
    are a staircase with long ties, so ranking by them would invent ties the model never made;
    without ``scores`` the probabilities rank and decide. Precision's expectation is exact (the
    predicted-positive count is fixed by the scores); recall, F1 and ROC-AUC are ratios of
    expectations, which differ from the expected ratio by O(1/n).

    Not measurable (``measurable`` False, with the point values still filled in for the record)
    when fewer than ``MIN_EXPECTED_POSITIVES`` positives or ``MIN_EXPECTED_NEGATIVES`` negatives are
    expected."""
    p = np.asarray(probabilities, float)
    s = p if scores is None else np.asarray(scores, float)
    if p.ndim != 1 or s.shape != p.shape:
        raise ValueError(f"estimate: probabilities {p.shape} and scores {s.shape} must be two 1-D arrays of one length")
    if np.isnan(p).any() or np.isnan(s).any():
        raise ValueError("estimate: NaN among the probabilities or scores")
    if len(p) and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError("estimate: probabilities must lie in [0, 1]; calibrate the scores first")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"estimate: confidence {confidence} must be in (0, 1)")
    n = len(p)
    predicted = s >= threshold
    w = 1.0 - p
    tp, fp = float(p[predicted].sum()), float(w[predicted].sum())
    fn, tn = float(p[~predicted].sum()), float(w[~predicted].sum())
    positives, negatives = tp + fn, fp + tn
    auc = expected_roc_auc(p, s) if n else None
    values = {
        "roc_auc": auc,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, positives),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }
    short = []
    if positives < MIN_EXPECTED_POSITIVES:
        short.append(f"{positives:.1f} expected positives (< {MIN_EXPECTED_POSITIVES:g})")
    if negatives < MIN_EXPECTED_NEGATIVES:
        short.append(f"{negatives:.1f} expected negatives (< {MIN_EXPECTED_NEGATIVES:g})")
    intervals: dict[str, tuple[float, float] | None] = dict.fromkeys(METRICS)
    if not short and n_boot > 0:
        rng = np.random.default_rng(seed)
        draws = _simulate(p, rankdata(s, method="average"), predicted, n_boot, rng)
        tail = 100 * (1 - confidence) / 2
        for metric, realised in draws.items():
            realised = realised[np.isfinite(realised)]
            if len(realised) and values[metric] is not None:
                low, high = np.percentile(realised, [tail, 100 - tail])
                intervals[metric] = (float(low), float(high))
    detail = "; ".join(short) if short else ""
    if not short and n_boot <= 0:
        detail = "no simulated draws (n_boot = 0): point values without intervals"
    return Estimate(
        n=n,
        threshold=float(threshold),
        expected_positives=positives,
        expected_negatives=negatives,
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
        intervals=intervals,
        confidence=confidence,
        n_boot=int(n_boot),
        measurable=not short and n_boot > 0,
        detail=detail,
        **values,
    )


def estimated_decay(
    result: Estimate,
    baseline_auc: float,
    tolerance: float,
    *,
    policy: OnUnmeasurable = "wait",
    name: str = "estimated_roc_auc",
) -> Verdict:
    """Judge the estimated ROC-AUC against the champion's ``baseline_auc`` minus ``tolerance``.

    Failed when the whole interval is below that bound, passed when it is wholly above, not
    measurable when it straddles the bound or the window is too small: an alert on a straddling
    interval would retrain on noise, a pass would be silence by default. ``policy`` says what a not
    measurable check means to the caller (``wait`` by default: nothing is decided yet). A pass says
    nothing about concept drift, which this estimate cannot see."""
    bound = baseline_auc - tolerance
    context = {"baseline_roc_auc": baseline_auc, "tolerance": tolerance, **result.evidence()}
    ci = result.interval("roc_auc")
    if not result.measurable or result.roc_auc is None or ci is None:
        why = result.detail or "no expected ROC-AUC for this window"
        detail = f"{why}; {result.n} rows, {result.expected_positives:.1f} expected positives"
        check = not_measurable(name, bound, ">=", detail, policy, value=result.roc_auc, **context)
        return Verdict(KIND, (check,))
    low, high = ci
    detail = (
        f"label-free estimate on {result.n} rows ({result.expected_positives:.1f} expected positives) against the "
        f"champion's {baseline_auc:.4g} minus {tolerance:g}"
    )
    check = interval_check(
        name, result.roc_auc, low, high, bound, ">=", policy, detail, confidence=result.confidence, **context
    )
    return Verdict(KIND, (check,))
