"""Train/serve skew contract: for the same entities at the same moment, the offline training row
and the online vector are equal — on-demand features included — through real Feast stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from mlcycle.config import ProjectConfig
from mlcycle.data import read_dataset
from mlcycle.features import entity_frame, online_vector, plan_for, skew_report, training_set


@pytest.fixture(scope="module")
def sample(project: ProjectConfig) -> pd.DataFrame:
    """Last requests of 150 users seen in the past 8 days, 150 last seen 12-28 days ago, and 5
    unknown users at an unknown merchant."""
    tx = read_dataset(project.raw_dir).transactions
    last = tx.drop_duplicates("user_id", keep="last")
    age = pd.Timestamp(datetime.now(UTC)) - last["event_timestamp"]
    recent = last[age < pd.Timedelta(days=8)].tail(150)
    quiet = last[(age > pd.Timedelta(days=12)) & (age < pd.Timedelta(days=28))].tail(150)
    assert len(recent) == len(quiet) == 150
    unknown = recent.head(5).assign(user_id=[10**7 + i for i in range(5)], merchant_id=10**7)
    return pd.concat([recent, quiet, unknown], ignore_index=True)


def compare_at(store, sample: pd.DataFrame, when: datetime, service: str) -> tuple[dict, pd.DataFrame]:
    when = when.replace(microsecond=0)
    request = entity_frame(sample).drop(columns=["user_id", "merchant_id", "event_timestamp"])
    request["request_unix"] = int(when.timestamp())
    keys = sample[["user_id", "merchant_id"]].reset_index(drop=True)
    online = online_vector(store, keys.to_dict("records"), request.to_dict("records"), service, now=when)
    offline = training_set(store, keys.assign(event_timestamp=pd.Timestamp(when), **request), service)
    return skew_report(online, offline, plan_for(store, service).model_features), online


def test_online_equals_offline_now(project: ProjectConfig, feature_store, sample: pd.DataFrame) -> None:
    service = project.features.feature_service
    skew, online = compare_at(feature_store, sample, datetime.now(UTC), service)
    assert skew == {}
    # The comparison is not vacuous: most known users have history, the unknown ones have none.
    has_history = online["txn_count_30d"].notna()
    assert has_history.iloc[:300].mean() > 0.9
    assert not has_history.iloc[300:].any()
    assert all("txn_count_30d" in missing for missing in online["features_missing"].iloc[300:])


def test_online_enforces_ttl_like_the_offline_join(
    project: ProjectConfig, feature_store, sample: pd.DataFrame
) -> None:
    """Twenty days on, the quiet users' stats are older than the 30-day TTL: the offline join
    nulls them, while Feast's online read alone still returns them."""
    service = project.features.feature_service
    later = datetime.now(UTC) + timedelta(days=20)
    skew, online = compare_at(feature_store, sample, later, service)
    assert skew == {}
    recent, quiet = online.iloc[:150], online.iloc[150:300]
    assert quiet["txn_count_30d"].isna().all()
    assert recent["txn_count_30d"].notna().mean() > 0.9
    raw = feature_store.get_online_features(
        features=["user_txn_stats:txn_count_30d"], entity_rows=[{"user_id": int(u)} for u in quiet["user_id"]]
    ).to_dict()
    assert sum(v is not None for v in raw["txn_count_30d"]) > 100, "Feast alone returns stale values"
