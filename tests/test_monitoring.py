"""Drift statistics: equal to independent NumPy / SciPy computations, and on generated data with a
known shift, flagging exactly the shifted columns — and nothing on a window without drift."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlcycle import monitoring
from mlcycle.canary import psi
from mlcycle.config import DataSpec, DriftSpec, MonitoringSpec
from mlcycle.data import generate
from mlcycle.monitoring import ReferenceStats, feature_drift, prediction_drift, reference_stats

SPEC = MonitoringSpec()
NUMERIC, CATEGORICAL = ["amount"], ["merchant_category", "channel", "country"]
DRIFT_DAY = 60


def windows(seed: int, **knobs) -> tuple[pd.DataFrame, pd.DataFrame]:
    drift = DriftSpec(start_day=DRIFT_DAY, **knobs) if knobs else DriftSpec()
    spec = DataSpec(seed=seed, start=datetime(2026, 1, 1, tzinfo=UTC), days=90, n_users=4000, n_merchants=500,
                    n_transactions=60000, drift=drift)  # fmt: skip
    tx = generate(spec).transactions
    cut = pd.Timestamp(spec.start) + pd.Timedelta(days=DRIFT_DAY)
    return tx[tx["event_timestamp"] < cut], tx[tx["event_timestamp"] >= cut]


def flagged(reference: pd.DataFrame, current: pd.DataFrame) -> set[str]:
    ref = reference_stats(reference, NUMERIC, CATEGORICAL)
    return {d.feature for d in feature_drift(ref, current, SPEC) if d.drifted}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_exactly_the_shifted_column_is_flagged(seed: int) -> None:
    assert flagged(*windows(seed)) == set()  # same stream, later window: no alarm
    assert flagged(*windows(seed, amount_inflation=1.6)) == {"amount"}
    assert flagged(*windows(seed, new_category="crypto", new_category_share=0.15)) == {"merchant_category"}


def test_new_category_and_missing_rate_are_named() -> None:
    reference, current = windows(4, new_category="crypto", new_category_share=0.15)
    current = current.copy()
    current["channel"] = current["channel"].cat.add_categories([]).where(np.arange(len(current)) % 3 != 0)
    drift = {d.feature: d for d in feature_drift(reference_stats(reference, NUMERIC, CATEGORICAL), current, SPEC)}
    assert drift["merchant_category"].new_categories == ("crypto",)
    assert any("new categories crypto" in r for r in drift["merchant_category"].reasons)
    assert any(r.startswith("missing") for r in drift["channel"].reasons)


def test_statistics_match_independent_computations() -> None:
    rng = np.random.default_rng(0)
    ref, cur = rng.lognormal(3, 1, 20000), rng.lognormal(3.1, 1, 8000)
    frame_ref, frame_cur = pd.DataFrame({"amount": ref}), pd.DataFrame({"amount": cur})
    d = feature_drift(reference_stats(frame_ref, ["amount"], []), frame_cur, SPEC)[0]
    # KS: the largest distance between the two empirical CDFs, computed by hand.
    grid = np.sort(np.concatenate([ref, cur]))
    ecdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
    assert d.statistic == pytest.approx(np.max(np.abs(ecdf(ref) - ecdf(cur))))
    assert d.wasserstein == pytest.approx(stats.wasserstein_distance(ref, cur))
    # PSI on the reference deciles, by hand (add-half smoothing as documented).
    edges = np.quantile(ref, np.linspace(0, 1, 11))
    edges[0], edges[-1] = -np.inf, np.inf
    e = (np.histogram(ref, edges)[0] + 0.5) / (len(ref) + 5)
    a = (np.histogram(cur, edges)[0] + 0.5) / (len(cur) + 5)
    assert d.psi == pytest.approx(np.sum((a - e) * np.log(a / e)))
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-9)


def test_chi_squared_matches_a_hand_computation() -> None:
    ref = pd.DataFrame({"c": ["a"] * 600 + ["b"] * 300 + ["c"] * 100})
    cur = pd.DataFrame({"c": ["a"] * 250 + ["b"] * 200 + ["c"] * 50})
    d = feature_drift(reference_stats(ref, [], ["c"]), cur, SPEC)[0]
    observed = np.array([250, 200, 50])
    expected = np.array([0.6, 0.3, 0.1]) * 500
    assert d.statistic == pytest.approx(np.sum((observed - expected) ** 2 / expected))
    assert d.pvalue == pytest.approx(stats.chi2.sf(d.statistic, df=2))


def test_prediction_drift_alerts_on_a_mean_shift_above_ten_percent() -> None:
    rng = np.random.default_rng(1)
    ref = rng.beta(0.5, 10, 20000)
    assert not prediction_drift(ref, rng.beta(0.5, 10, 5000), SPEC).alert
    shifted = prediction_drift(ref, rng.beta(0.5, 10, 5000) * 1.25, SPEC)
    assert shifted.alert and shifted.mean_change == pytest.approx(0.25, abs=0.05)


def test_reference_stats_round_trip(tmp_path: Path) -> None:
    reference, _ = windows(5)
    ref = reference_stats(reference, NUMERIC, CATEGORICAL)
    ref.save(tmp_path / "ref")
    again = ReferenceStats.load(tmp_path / "ref")
    assert again.rows == ref.rows and again.missing == ref.missing and again.categorical == ref.categorical
    np.testing.assert_array_equal(again.numeric["amount"], ref.numeric["amount"])


def _predictions(n: int, start: pd.Timestamp, days: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    at = start + pd.to_timedelta(rng.uniform(0, days * 86400, n), unit="s")
    fraud = rng.random(n) < 0.05
    score = np.clip(np.where(fraud, 0.6, 0.2) + rng.normal(0, 0.2, n), 0, 1)
    predictions = pd.DataFrame({"transaction_id": np.arange(1, n + 1), "predicted_at": at, "score": score,
                                "decision": score >= 0.5})  # fmt: skip
    delay = np.where(fraud, rng.uniform(2, 10, n), 30 + rng.uniform(0, 2, n))
    transactions = pd.DataFrame({"transaction_id": np.arange(1, n + 1), "is_fraud": fraud.astype("int8"),
                                 "label_available_at": at + pd.to_timedelta(delay, unit="D")})  # fmt: skip
    return predictions, transactions


def test_decay_scores_only_matured_windows_on_the_labels_known_then() -> None:
    from sklearn.metrics import roc_auc_score

    as_of = pd.Timestamp("2026-06-30 12:00", tz="UTC")
    predictions, transactions = _predictions(40_000, as_of - pd.Timedelta(days=60), 60, seed=1)
    windows = monitoring.performance_windows(predictions, transactions, as_of, maturity_days=30, lookback_days=14)
    matured = [w for w in windows if w.matured]
    immature = [w for w in windows if not w.matured and w.predictions]
    assert matured and immature
    # Only windows whose end is 30 days before as_of are scored: the newer ones have their frauds
    # labelled already but not their legitimate rows — an AUC there would be inflated.
    assert all(w.end + pd.Timedelta(days=30) <= as_of for w in matured)
    assert all(w.roc_auc is None and w.precision is None for w in immature)
    for w in matured[-3:]:
        rows = predictions[(predictions["predicted_at"] >= w.start) & (predictions["predicted_at"] < w.end)]
        labels = transactions.set_index("transaction_id").loc[rows["transaction_id"]]
        known = (labels["label_available_at"] <= as_of).to_numpy() & labels["is_fraud"].to_numpy().astype(bool)
        assert w.roc_auc == pytest.approx(roc_auc_score(known, rows["score"]))
        assert w.positives == known.sum()


def test_decay_alerts_on_a_worse_model_and_not_on_an_unchanged_one() -> None:
    as_of = pd.Timestamp("2026-06-30 12:00", tz="UTC")
    spec = MonitoringSpec(min_roc_auc=0.85)
    good, transactions = _predictions(40_000, as_of - pd.Timedelta(days=60), 60, seed=2)
    verdict, _ = monitoring.decay_verdict(good, transactions, as_of, 30, spec, baseline_roc_auc=0.9)
    assert verdict.judged and not verdict.alert, verdict
    worse = good.assign(score=np.random.default_rng(3).permutation(good["score"].to_numpy()))
    verdict, _ = monitoring.decay_verdict(worse, transactions, as_of, 30, spec, baseline_roc_auc=0.9)
    assert verdict.judged and verdict.alert and verdict.roc_auc < 0.6, verdict


def test_broken_upstream_is_told_apart_from_drift() -> None:
    from mlcycle.data import break_upstream

    reference, current = windows(5)
    stats = monitoring.reference_stats(reference, ["amount"], ["merchant_category", "channel"])
    spec = MonitoringSpec()
    assert monitoring.upstream_anomalies(stats, current, spec) == []
    inflated = windows(5, amount_inflation=1.5)[1]
    assert monitoring.upstream_anomalies(stats, inflated, spec) == []  # drift, not a broken feed
    found = monitoring.upstream_anomalies(stats, break_upstream(current), spec)
    assert [f.split(":")[0] for f in found] == ["merchant_category", "channel"], found
    constant = current.assign(amount=9.99)
    assert monitoring.upstream_anomalies(stats, constant, spec) == ["amount: constant 9.99 (varied in the reference)"]
