"""Feature tables against a brute-force recomputation from raw events: no look-ahead anywhere."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fraud.features import FRAUD_RATE_PRIOR, FRAUD_RATE_PRIOR_WEIGHT
from fraud.generator import read_dataset

from mlcycle.features import entity_frame, plan_for, training_set
from mlcycle.project.config import ProjectConfig


@pytest.fixture(scope="module")
def raw(project: ProjectConfig) -> pd.DataFrame:
    return read_dataset(project.raw_dir).transactions


def test_training_rows_use_only_earlier_events(project: ProjectConfig, feature_store, raw: pd.DataFrame) -> None:
    """For sampled transactions, user aggregates in the training row equal a recomputation over the
    user's events strictly before the transaction (within each window)."""
    rows = raw.sample(400, random_state=3).sort_values("event_timestamp")
    out = training_set(
        feature_store,
        entity_frame(
            rows, ["user_id", "merchant_id"], plan_for(feature_store, project.features.feature_service).request_fields
        ),
        project.features.feature_service,
    )
    by_user = {u: g for u, g in raw.groupby("user_id")}
    for (_, tx), (_, got) in zip(rows.iterrows(), out.iterrows(), strict=True):
        history = by_user[tx["user_id"]]
        before = history[history["event_timestamp"] < tx["event_timestamp"]]
        if before.empty:
            assert pd.isna(got["txn_count_30d"])
            continue
        anchor = before["event_timestamp"].max()  # the state left by the previous transaction
        for window, delta in (("1h", "1h"), ("24h", "24h"), ("7d", "7D"), ("30d", "30D")):
            span = before[before["event_timestamp"] > anchor - pd.Timedelta(delta)]  # window (t - w, t]
            if tx["event_timestamp"] - anchor > pd.Timedelta(days=30):
                assert pd.isna(got[f"txn_count_{window}"])
                continue
            assert got[f"txn_count_{window}"] == len(span)
            assert got[f"amount_sum_{window}"] == pytest.approx(span["amount"].sum())
            assert got[f"distinct_merchants_{window}"] == span["merchant_id"].nunique()
        assert got["secs_since_last_txn"] == (tx["event_timestamp"] - anchor).total_seconds()


def test_merchant_fraud_rate_uses_only_labels_already_available(project: ProjectConfig, raw: pd.DataFrame) -> None:
    table = pd.read_parquet(project.features_dir / "merchant_stats.parquet")
    rng = np.random.default_rng(5)
    picks = table.iloc[rng.choice(len(table), 150, replace=False)]
    for _, row in picks.iterrows():
        day = row["event_timestamp"]
        tx = raw[raw["merchant_id"] == row["merchant_id"]]
        arrived = tx[
            (tx["label_available_at"] < day) & (tx["label_available_at"] >= day.normalize() - pd.Timedelta(days=90))
        ]
        expected = (arrived["is_fraud"].sum() + FRAUD_RATE_PRIOR * FRAUD_RATE_PRIOR_WEIGHT) / (
            len(arrived) + FRAUD_RATE_PRIOR_WEIGHT
        )
        assert row["merchant_labelled_90d"] == len(arrived)
        assert row["merchant_fraud_rate_90d"] == pytest.approx(expected)
        volume = tx[(tx["event_timestamp"] < day) & (tx["event_timestamp"] >= day - pd.Timedelta(days=7))]
        assert row["merchant_txn_count_7d"] == len(volume)
