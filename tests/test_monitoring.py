"""Drift statistics: equal to independent NumPy / SciPy computations, and on generated data with a
known shift, flagging exactly the shifted columns — and nothing on a window without drift."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

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
