"""The generator: deterministic for a seed, realistic, and each drift knob changes only its target."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from fraud.generator import CARD_LIMIT, CATEGORIES, DataSpec, DriftSpec, generate
from scipy import stats

BASE = DataSpec(
    seed=11,
    start=datetime(2026, 1, 1, tzinfo=UTC),
    days=90,
    n_users=3000,
    n_merchants=400,
    n_transactions=60000,
)
DRIFT_DAY = 60


@pytest.fixture(scope="module")
def baseline() -> pd.DataFrame:
    return generate(BASE).transactions


def drifted(**knobs) -> pd.DataFrame:
    return generate(BASE.model_copy(update={"drift": DriftSpec(start_day=DRIFT_DAY, **knobs)})).transactions


def changed_columns(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    return [c for c in a.columns if not a[c].astype(str).equals(b[c].astype(str))]


def test_same_seed_same_data_other_seed_other_data(baseline: pd.DataFrame) -> None:
    again = generate(BASE)
    pd.testing.assert_frame_equal(baseline, again.transactions)
    other = generate(BASE.model_copy(update={"seed": 12})).transactions
    assert not baseline["amount"].equals(other["amount"])


def test_stream_is_realistic(baseline: pd.DataFrame) -> None:
    tx = baseline
    assert len(tx) == BASE.n_transactions
    assert tx["transaction_id"].is_unique
    assert tx["event_timestamp"].is_monotonic_increasing
    assert 0.015 < tx["is_fraud"].mean() < 0.03  # target 2%
    # Heavy-tailed amounts: the 99.9th percentile is far beyond the median.
    assert tx["amount"].quantile(0.999) / tx["amount"].median() > 20
    assert (tx["amount"] > 0).all() and tx["amount"].max() <= CARD_LIMIT
    # Labels arrive late: chargebacks after days to weeks, legitimate ones after the dispute window.
    delay = (tx["label_available_at"] - tx["event_timestamp"]).dt.total_seconds() / 86400
    assert 5 < delay[tx["is_fraud"] == 1].median() < 25
    assert delay[tx["is_fraud"] == 0].min() >= BASE.label_maturity_days
    # Missing values at realistic rates.
    assert 0.005 < tx["channel"].isna().mean() < 0.03
    # Fraud concentrates at night and abroad, which is what the features must be able to see.
    hour = tx["event_timestamp"].dt.hour
    night = hour.isin(range(0, 6))
    assert tx.loc[night, "is_fraud"].mean() > 3 * tx.loc[~night, "is_fraud"].mean()


def test_users_have_signup_age_band_and_home_country() -> None:
    users = generate(BASE).users
    assert {"user_id", "signup_timestamp", "age_band", "home_country"} <= set(users.columns)
    assert 0.01 < users["age_band"].isna().mean() < 0.06
    start = pd.Timestamp(BASE.start)
    assert (users["signup_timestamp"] > start).mean() == pytest.approx(0.15, abs=0.03)


def test_transactions_never_precede_signup() -> None:
    data = generate(BASE)
    signup = data.users.set_index("user_id")["signup_timestamp"]
    tx = data.transactions
    assert (tx["event_timestamp"].to_numpy() >= signup.loc[tx["user_id"]].to_numpy()).all()


def test_amount_inflation_changes_only_amounts_after_the_drift_day(baseline: pd.DataFrame) -> None:
    shifted = drifted(amount_inflation=1.5)
    assert changed_columns(baseline, shifted) == ["amount"]
    after = baseline["event_timestamp"] >= pd.Timestamp(BASE.start) + pd.Timedelta(days=DRIFT_DAY)
    pd.testing.assert_series_equal(baseline.loc[~after, "amount"], shifted.loc[~after, "amount"])
    ratio = shifted.loc[after, "amount"].median() / baseline.loc[after, "amount"].median()
    assert ratio == pytest.approx(1.5, rel=0.01)
    ks = stats.ks_2samp(np.log(baseline.loc[after, "amount"]), np.log(shifted.loc[after, "amount"]))
    assert ks.pvalue < 1e-12


def test_new_category_appears_only_after_the_drift_day(baseline: pd.DataFrame) -> None:
    shifted = drifted(new_category="crypto", new_category_share=0.1)
    assert changed_columns(baseline, shifted) == ["merchant_category"]
    after = shifted["event_timestamp"] >= pd.Timestamp(BASE.start) + pd.Timedelta(days=DRIFT_DAY)
    is_new = shifted["merchant_category"] == "crypto"
    assert not is_new[~after].any()
    assert 0.04 < is_new[after].mean() < 0.2
    # The rows that moved came from every known category, roughly in proportion: a chi-squared test
    # of the known categories' shares before vs after the drift (among rows that did not move).
    before_counts = shifted.loc[~after, "merchant_category"].value_counts().reindex(CATEGORIES)
    after_counts = shifted.loc[after & ~is_new, "merchant_category"].value_counts().reindex(CATEGORIES)
    assert stats.chi2_contingency(np.vstack([before_counts, after_counts])).pvalue > 1e-4


def test_concept_drift_changes_the_fraud_pattern_not_the_legitimate_traffic(baseline: pd.DataFrame) -> None:
    shifted = drifted(concept_drift=True)
    keys = ["user_id", "merchant_id", "event_timestamp", "amount"]

    def legit(df: pd.DataFrame) -> pd.DataFrame:
        return df.loc[df["is_fraud"] == 0, keys].sort_values(keys).reset_index(drop=True)

    pd.testing.assert_frame_equal(legit(baseline), legit(shifted))
    cut = pd.Timestamp(BASE.start) + pd.Timedelta(days=DRIFT_DAY)

    def fraud_after(df: pd.DataFrame) -> pd.DataFrame:
        return df[(df["is_fraud"] == 1) & (df["event_timestamp"] >= cut)]

    old, new = fraud_after(baseline), fraud_after(shifted)
    # The old pattern was night-time and high-value; the new one is daytime and small.
    night_old = old["event_timestamp"].dt.hour.isin(range(0, 6))
    night_new = new["event_timestamp"].dt.hour.isin(range(0, 6))
    table = [[night_old.sum(), (~night_old).sum()], [night_new.sum(), (~night_new).sum()]]
    assert stats.chi2_contingency(table).pvalue < 1e-12
    assert stats.ks_2samp(old["amount"], new["amount"]).pvalue < 1e-12
    assert new["amount"].median() < old["amount"].median() / 5
    # Fraud before the drift day is untouched.
    before = lambda df: df[(df["is_fraud"] == 1) & (df["event_timestamp"] < cut - pd.Timedelta(days=3))]  # noqa: E731
    pd.testing.assert_frame_equal(
        before(baseline)[keys].reset_index(drop=True), before(shifted)[keys].reset_index(drop=True)
    )


def test_drift_spec_rejects_a_start_outside_the_stream() -> None:
    with pytest.raises(ValueError, match="start_day"):
        DataSpec(days=30, drift=DriftSpec(start_day=30, amount_inflation=2.0))


def test_drift_spec_rejects_knobs_without_a_start_and_known_categories() -> None:
    with pytest.raises(ValueError, match="start_day"):
        DriftSpec(amount_inflation=1.5)
    with pytest.raises(ValueError, match="already a known category"):
        DriftSpec(start_day=3, new_category="grocery")
