"""Decay on delayed labels: each row is judged on its own label, late positives are not negatives,
the share still missing is estimated, and an interval that straddles a bound is "not measurable".

Expected answers come from hand-worked tables, from the simulated world's own truth (which rows
are positive although their label has not arrived) and from a bootstrap, not from the code's formulas.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mlcycle.monitoring import drift as monitoring
from mlcycle.monitoring.job import held_out_rows
from mlcycle.project.config import MonitoringSpec

AS_OF = pd.Timestamp("2026-06-30 12:00", tz="UTC")
# The reference project's names for the event id and the label (monitoring takes them as parameters).
COLUMNS = monitoring.LabelColumns(event_id="transaction_id", label="is_fraud")


def day(n: float) -> pd.Timestamp:
    return AS_OF - pd.Timedelta(days=n)


def test_a_late_positive_is_left_out_not_counted_as_negative() -> None:
    """62 answers on one day 40 days ago (matured: the 30-day window closed on day -10).

    | rows  | score | flagged | truth | label arrives | judged as |
    | 60    | 0.1   | no      | 0     | day -10       | 0         |
    | c     | 0.9   | yes     | 1     | day -30       | 1         |
    | d     | 0.8   | yes     | 1     | day +5 (late) | left out  |

    Counting d as 0 (no chargeback yet) gave precision 1/2; judged on arrived labels: 1/1. 61 of 62
    labels are in (98.4%, above the 98% coverage floor), so the window is judged."""
    at = day(40) + pd.Timedelta(hours=12)
    n = 62
    predictions = pd.DataFrame({"transaction_id": np.arange(1, n + 1), "predicted_at": [at] * n,
                                "score": [0.1] * 60 + [0.9, 0.8], "decision": [False] * 60 + [True, True]})  # fmt: skip
    arrives = [day(10)] * 60 + [day(30), AS_OF + pd.Timedelta(days=5)]
    labels = pd.DataFrame({"transaction_id": np.arange(1, n + 1), "is_fraud": np.array([0] * 60 + [1, 1], "int8"),
                           "event_timestamp": [at] * n, "label_available_at": arrives})  # fmt: skip
    windows = monitoring.performance_windows(
        predictions, labels, AS_OF, maturity_days=30, lookback_days=14, columns=COLUMNS
    )
    (judged,) = [w for w in windows if w.predictions]
    assert judged.matured
    assert (judged.predictions, judged.positives, judged.unlabelled) == (62, 1, 1)
    assert judged.precision == 1.0 and judged.recall == 1.0


def test_a_window_whose_negatives_are_still_being_confirmed_is_not_judged() -> None:
    """31 days ago: the dispute window has closed, but the negatives' confirmations lag by up to two
    days. 100 answers, 2 positives (labelled within days), 98 negatives of which only 49 confirmed:
    the labelled rows would be 2/51 = 3.9% positive against 2% in truth, so the window waits."""
    at = day(31) + pd.Timedelta(hours=1)
    n = 100
    positive = np.r_[np.ones(2), np.zeros(98)].astype(bool)
    arrives = [day(25)] * 2 + [day(0.5)] * 49 + [AS_OF + pd.Timedelta(days=1)] * 49
    predictions = pd.DataFrame({"transaction_id": np.arange(1, n + 1), "predicted_at": [at] * n,
                                "score": np.where(positive, 0.9, 0.1), "decision": positive})  # fmt: skip
    labels = pd.DataFrame({"transaction_id": np.arange(1, n + 1), "is_fraud": positive.astype("int8"),
                           "event_timestamp": [at] * n, "label_available_at": arrives})  # fmt: skip
    windows = monitoring.performance_windows(
        predictions, labels, AS_OF, maturity_days=30, lookback_days=14, columns=COLUMNS
    )
    (window,) = [w for w in windows if w.predictions]
    assert window.end + pd.Timedelta(days=30) <= AS_OF  # past the dispute window by the calendar …
    assert not window.matured and window.roc_auc is None and window.unlabelled == 49  # … but not judged


def _world(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """120 days of answers; 5% positive; positive labels arrive 1 + lognormal(median 10 d, σ 0.6)
    days later (about 4% after 30 days), negative ones when the 30-day window closes (+0–2 days)."""
    rng = np.random.default_rng(seed)
    at = AS_OF - pd.Timedelta(days=120) + pd.to_timedelta(rng.uniform(0, 120 * 86400, n), unit="s")
    positive = rng.random(n) < 0.05
    score = np.clip(np.where(positive, 0.7, 0.2) + rng.normal(0, 0.2, n), 0, 1)
    delay = np.where(positive, 1 + rng.lognormal(np.log(10), 0.6, n), 30 + rng.uniform(0, 2, n))
    ids = np.arange(1, n + 1)
    predictions = pd.DataFrame({"transaction_id": ids, "predicted_at": at, "score": score, "decision": score >= 0.5})
    labels = pd.DataFrame({"transaction_id": ids, "is_fraud": positive.astype("int8"), "event_timestamp": at,
                           "label_available_at": at + pd.to_timedelta(delay, unit="D")})  # fmt: skip
    return predictions, labels


def test_the_share_of_positive_labels_still_missing_is_estimated_close_to_the_truth() -> None:
    predictions, labels = _world(600_000, seed=11)
    spec = MonitoringSpec(decay_rolling_windows=7, decay_lookback_days=14, min_roc_auc=0.5)
    verdict, windows = monitoring.decay_verdict(predictions, labels, AS_OF, 30, spec, columns=COLUMNS)
    pooled = [w for w in windows if w.matured and w.predictions][-7:]
    in_pool = (predictions["predicted_at"] >= pooled[0].start) & (predictions["predicted_at"] < pooled[-1].end)
    truth = labels[in_pool.to_numpy()]
    arrived = truth["label_available_at"] <= AS_OF
    positive = truth["is_fraud"].astype(bool)
    # The world's own truth: positives of the judged windows whose label is still on its way.
    true_share = (positive & ~arrived).sum() / positive.sum()
    assert 0.015 < true_share < 0.06  # the world has late labels to find
    assert verdict.positives == (positive & arrived).sum()  # late ones are not counted as negatives
    assert verdict.predictions == arrived.sum() and verdict.unlabelled == (~arrived).sum()
    late = verdict.late_labels
    assert late is not None and late["basis"] > 1000
    # ~1,750 positives in the pool, ~60 of them late: a binomial sd of ~0.4 points on the share.
    assert late["share"] == pytest.approx(true_share, abs=0.012), (late, true_share)


def test_decay_straddling_its_floor_is_not_measurable_and_does_not_alert() -> None:
    """40 positives, ROC-AUC a little under the floor: the point estimate is below 0.85 but a
    bootstrap interval reaches well above it, so the data cannot say the model decayed."""
    rng = np.random.default_rng(5)
    n_pos, n_neg = 40, 2000
    at = day(35) + pd.to_timedelta(rng.uniform(0, 86400, n_pos + n_neg), unit="s")
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(bool)
    score = np.where(y, rng.normal(1.4, 1, n_pos + n_neg), rng.normal(0, 1, n_pos + n_neg))
    auc = roc_auc_score(y, score)
    ids = np.arange(1, len(y) + 1)
    predictions = pd.DataFrame({"transaction_id": ids, "predicted_at": at, "score": score, "decision": score > 1.5})
    labels = pd.DataFrame({"transaction_id": ids, "is_fraud": y.astype("int8"), "event_timestamp": at,
                           "label_available_at": at + pd.Timedelta(days=3)})  # fmt: skip
    boot = []
    for _ in range(400):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            boot.append(roc_auc_score(y[i], score[i]))
    low, high = np.percentile(boot, [2.5, 97.5])
    floor = round(auc + 0.01, 3)
    assert low < floor < high, (auc, low, high)  # the independent interval straddles the floor
    spec = MonitoringSpec(min_roc_auc=floor, decay_min_positives=30, decay_rolling_windows=3)
    verdict, _ = monitoring.decay_verdict(predictions, labels, AS_OF, 30, spec, columns=COLUMNS)
    assert verdict.roc_auc == pytest.approx(auc) and verdict.roc_auc < floor
    assert verdict.state == "not_measurable" and not verdict.alert, verdict
    assert verdict.roc_auc_ci[0] < floor < verdict.roc_auc_ci[1]
    assert any("not measurable" in r for r in verdict.reasons)


def test_the_champions_reference_scores_come_from_its_held_out_window() -> None:
    """MLflow records ``test_start`` as ``str(pd.Timestamp)``; the rows from it on are the ones the
    model was evaluated on, never fitted on."""
    times = pd.date_range("2026-01-01", periods=10, freq="D", tz="UTC")
    snapshot = pd.DataFrame({"event_timestamp": times, "x": range(10)})
    held_out = held_out_rows(snapshot, str(pd.Timestamp("2026-01-08", tz="UTC")))
    assert held_out["x"].tolist() == [7, 8, 9]
    with pytest.raises(RuntimeError, match="test_start"):
        held_out_rows(snapshot, None)
