"""Train/serve skew contract: for the same entities at the same moment, the offline training row
and the online vector are equal — on-demand features included — through real Feast stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from fraud.generator import read_dataset

from mlcycle.features import entity_frame, online_vector, plan_for, skew_report, training_set
from mlcycle.features import store as store_module
from mlcycle.project.config import ProjectConfig


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


KEYS = ["user_id", "merchant_id"]


def compare_at(store, sample: pd.DataFrame, when: datetime, service: str) -> tuple[dict, pd.DataFrame]:
    when = when.replace(microsecond=0)
    plan = plan_for(store, service)
    request = entity_frame(sample, KEYS, plan.request_fields).drop(columns=[*KEYS, "event_timestamp"])
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


def test_online_enforces_ttl_like_the_offline_join(project: ProjectConfig, feature_store, sample: pd.DataFrame) -> None:
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


def test_hand_encoded_requests_match_offline_rows(project: ProjectConfig, feature_store) -> None:
    """Requests as a client would send them — plain Python values, a missing channel as None —
    not built by the same helper as the offline entity rows."""
    tx = read_dataset(project.raw_dir).transactions.drop_duplicates("user_id", keep="last").tail(40)
    when = datetime.now(UTC).replace(microsecond=0)
    requests = [
        {
            "amount": float(r.amount),
            "country": str(r.country),
            "merchant_category": str(r.merchant_category),
            "channel": None if pd.isna(r.channel) or i % 4 == 0 else str(r.channel),
            "request_unix": int(when.timestamp()),
        }
        for i, r in enumerate(tx.itertuples())
    ]
    keys = [{"user_id": int(r.user_id), "merchant_id": int(r.merchant_id)} for r in tx.itertuples()]
    service = project.features.feature_service
    online = online_vector(feature_store, keys, requests, service, now=when)
    entity = pd.DataFrame(keys).assign(event_timestamp=pd.Timestamp(when), **pd.DataFrame(requests))
    offline = training_set(feature_store, entity, service)
    assert skew_report(online, offline, plan_for(feature_store, service).model_features) == {}
    assert (online.loc[[r["channel"] is None for r in requests], "channel_code"] == -1).all()


def test_online_never_returns_values_stamped_after_the_request(
    project: ProjectConfig, feature_store, sample: pd.DataFrame
) -> None:
    """A replayed (earlier) request must not see features written later: they are missing."""
    recent = sample.iloc[:150]
    earlier = recent["event_timestamp"].min() - pd.Timedelta(hours=1)
    keys = recent[["user_id", "merchant_id"]].to_dict("records")
    plan = plan_for(feature_store, project.features.feature_service)
    request = entity_frame(recent, KEYS, plan.request_fields).drop(columns=[*KEYS, "event_timestamp"])
    request["request_unix"] = int(earlier.timestamp())
    online = online_vector(
        feature_store, keys, request.to_dict("records"), project.features.feature_service, now=earlier
    )
    assert online["txn_count_30d"].isna().all()
    assert online["secs_since_last_txn"].isna().all()  # never negative
    assert all("txn_count_30d" in m for m in online["features_missing"])


def test_online_vector_names_what_is_missing_from_the_request(project: ProjectConfig, feature_store) -> None:
    with pytest.raises(ValueError, match="request fields missing: amount"):
        online_vector(
            feature_store,
            [{"user_id": 1, "merchant_id": 1}],
            [{"country": "US", "merchant_category": "grocery", "channel": "pos"}],
            project.features.feature_service,
        )
    with pytest.raises(ValueError, match="entity keys missing: merchant_id"):
        online_vector(
            feature_store,
            [{"user_id": 1}],
            [{"amount": 1.0, "country": "US", "merchant_category": "grocery", "channel": "pos"}],
            project.features.feature_service,
        )


@pytest.mark.parametrize("shift", [timedelta(0), timedelta(days=3), timedelta(days=20), timedelta(days=-9)])
def test_direct_read_equals_feasts_online_read(
    project: ProjectConfig, feature_store, sample: pd.DataFrame, shift: timedelta
) -> None:
    """The serving path reads each view through the online store's ``online_read``; Feast's own
    ``get_online_features`` must give the same vectors — values, TTL nulls (3 days: the merchant
    snapshot's 2-day TTL; 20 days: the quiet users' 30-day TTL), rows stamped after the request (9
    days back), unknown users and merchants, ``features_missing`` — column for column."""
    service = project.features.feature_service
    when = (datetime.now(UTC) + shift).replace(microsecond=0)
    plan = plan_for(feature_store, service)
    request = entity_frame(sample, KEYS, plan.request_fields).drop(columns=[*KEYS, "event_timestamp"])
    request["request_unix"] = int(when.timestamp())
    keys = sample[KEYS].to_dict("records")
    direct = online_vector(feature_store, keys, request.to_dict("records"), service, now=when)
    feast = online_vector(feature_store, keys, request.to_dict("records"), service, now=when, engine="feast")
    pd.testing.assert_frame_equal(direct, feast)
    # Not vacuous: each case has values and missing values.
    assert direct["txn_count_30d"].notna().any() and direct["txn_count_30d"].isna().any()
    if shift == timedelta(days=3):
        assert direct["merchant_txn_count_7d"].isna().all()


def test_direct_read_reads_each_view_once_per_entity(
    project: ProjectConfig, feature_store, sample: pd.DataFrame, monkeypatch
) -> None:
    """A batch with repeated entities: one ``online_read`` per feature view, each entity key once,
    and every row still gets its entity's values."""
    service = project.features.feature_service
    plan = plan_for(feature_store, service)
    rows = pd.concat([sample.head(20)] * 3, ignore_index=True)
    request = entity_frame(rows, KEYS, plan.request_fields).drop(columns=[*KEYS, "event_timestamp"])
    calls: list[tuple[str, int]] = []
    real = store_module._SqliteReader.read  # the local profile's online store is SQLite

    def counting(self, view, keys, wanted):
        calls.append((view.name, len(keys)))
        return real(self, view, keys, wanted)

    monkeypatch.setattr(store_module._SqliteReader, "read", counting)
    online = online_vector(feature_store, rows[KEYS].to_dict("records"), request.to_dict("records"), service)
    views = sorted(name for name, _ in calls)
    assert views == sorted(r.view.name for r in plan.reads) and len(views) == len(set(views))
    by_view = dict(calls)
    assert by_view["user_txn_stats"] == rows["user_id"].nunique() == 20
    assert by_view["merchant_stats"] == rows["merchant_id"].nunique()
    first = online.iloc[:20].reset_index(drop=True)
    for k in (1, 2):
        pd.testing.assert_frame_equal(online.iloc[20 * k : 20 * (k + 1)].reset_index(drop=True), first)
