"""Point-in-time correctness through real Feast, on hand-built feature tables with known answers.

Feast 0.67's file offline store drops entity rows that have no feature value inside the TTL; the
project's offline store must keep every row, with nulls, and never show a value written after the
event.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fraud.features import USER_STATS_FEATURES
from tests.conftest import copy_project

from mlcycle.features import apply_repo, open_store, training_set

T0 = pd.Timestamp("2026-03-01 12:00:00", tz="UTC")
US = pd.Timedelta(microseconds=1)
USER_TTL = timedelta(days=30)
MERCHANT_TTL = timedelta(days=2)
TIE_AT = T0 + pd.Timedelta(days=1)


def user_row(user_id: int, ts: pd.Timestamp, count_1h: int) -> dict:
    row = {f: 0.0 for f in USER_STATS_FEATURES}
    row.update(user_id=user_id, event_timestamp=ts, txn_count_1h=count_1h, amount_mean_30d=10.0 * count_1h)
    row["last_txn_unix"] = int(ts.timestamp())
    return row


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    cfg = copy_project(tmp_path_factory.mktemp("pit"))
    features: Path = cfg.features_dir
    features.mkdir(parents=True)
    users = pd.DataFrame(
        [
            user_row(1, T0 + US, 1),  # state after user 1's transaction at T0
            user_row(1, T0 + pd.Timedelta(hours=2), 2),
            user_row(2, T0 - pd.Timedelta(days=40), 5),  # older than the 30-day TTL at T0
            # Two rows of user 7 at one timestamp and no created timestamp: the one written last wins.
            *[user_row(7, TIE_AT, n) for n in (5, 6, 7, 8)],
        ]
    )
    int_cols = [c for c in USER_STATS_FEATURES if c.startswith(("txn_count", "distinct")) or c == "last_txn_unix"]
    users[int_cols] = users[int_cols].astype("int64")
    users.to_parquet(features / "user_txn_stats.parquet", index=False, coerce_timestamps="us")
    pd.DataFrame(
        {
            "merchant_id": [10, 10],
            "event_timestamp": [T0.normalize(), T0.normalize() + pd.Timedelta(days=1)],
            "merchant_txn_count_7d": np.array([100, 200], dtype="int64"),
            "merchant_amount_mean_7d": [20.0, 30.0],
            "merchant_labelled_90d": np.array([50, 60], dtype="int64"),
            "merchant_fraud_rate_90d": [0.02, 0.03],
        }
    ).to_parquet(features / "merchant_stats.parquet", index=False, coerce_timestamps="us")
    pd.DataFrame(
        {
            "user_id": np.array([1, 2], dtype="int64"),
            "event_timestamp": [T0 - pd.Timedelta(days=100)] * 2,
            "home_country": ["DE", "US"],
            "age_band": ["25-34", None],
            "signup_unix": np.array([int((T0 - pd.Timedelta(days=100)).timestamp())] * 2, dtype="int64"),
        }
    ).to_parquet(features / "user_profile.parquet", index=False, coerce_timestamps="us")
    apply_repo(cfg.feature_repo_path)
    return open_store(cfg.feature_repo_path)


CASES = [
    # tag, user, merchant, event time, expected txn_count_1h (None = null), expected merchant count
    ("before first feature row", 1, 10, T0, None, 100),
    ("value written after the event is ignored", 1, 10, T0 + pd.Timedelta(hours=1), 1, 100),
    ("exactly at a feature timestamp", 1, 10, T0 + pd.Timedelta(hours=2), 2, 100),
    ("exactly at the TTL boundary", 1, 10, T0 + pd.Timedelta(hours=2) + USER_TTL, 2, None),
    (
        "one second past the TTL",
        1,
        10,
        T0 + pd.Timedelta(hours=2) + USER_TTL + pd.Timedelta(seconds=1),
        None,
        None,
    ),
    ("only an expired row", 2, 10, T0, None, 100),
    ("user with no feature rows at all", 3, 10, T0, None, 100),
    ("merchant next day", 1, 10, T0.normalize() + pd.Timedelta(days=1, hours=5), 2, 200),
    ("merchant snapshot expired", 1, 10, T0.normalize() + pd.Timedelta(days=3, hours=1), 2, None),
    ("unknown merchant", 1, 99, T0 + pd.Timedelta(hours=3), 2, None),
    ("duplicate of an earlier row", 1, 10, T0 + pd.Timedelta(hours=1), 1, 100),
    ("tie at one timestamp, no created timestamp", 7, 10, TIE_AT + pd.Timedelta(hours=1), 8, 200),
]


def test_known_answers(store) -> None:
    entity = pd.DataFrame(
        {
            "tag": [c[0] for c in CASES],
            "user_id": [c[1] for c in CASES],
            "merchant_id": [c[2] for c in CASES],
            "event_timestamp": [c[3] for c in CASES],
            "amount": 40.0,
            "country": "DE",
            "merchant_category": "grocery",
            "channel": "pos",
        }
    )
    entity["request_unix"] = entity["event_timestamp"].astype("int64") // 10**9
    out = training_set(store, entity, "fraud_model_v1")

    assert len(out) == len(entity), "every entity row must come back"
    assert out["tag"].tolist() == entity["tag"].tolist(), "in the order given"
    # The training set is the caller's to change: writing into it leaves the entity rows alone.
    before = entity.copy()
    out.loc[0, "amount"] = -1.0
    out.loc[0, "tag"] = "changed"
    pd.testing.assert_frame_equal(entity, before)
    for (tag, *_, want_user, want_merchant), (_, row) in zip(CASES, out.iterrows(), strict=True):
        got_user = None if pd.isna(row["txn_count_1h"]) else int(row["txn_count_1h"])
        got_merchant = None if pd.isna(row["merchant_txn_count_7d"]) else int(row["merchant_txn_count_7d"])
        assert (got_user, got_merchant) == (want_user, want_merchant), tag


def test_on_demand_features_use_the_point_in_time_values(store) -> None:
    entity = pd.DataFrame(
        {
            "user_id": [1, 3],
            "merchant_id": [10, 10],
            "event_timestamp": [T0 + pd.Timedelta(hours=1)] * 2,
            "amount": [40.0, 40.0],
            "country": ["FR", "FR"],
            "merchant_category": ["electronics", "no-such-category"],
            "channel": ["ecom", None],
        }
    )
    entity["request_unix"] = entity["event_timestamp"].astype("int64") // 10**9
    out = training_set(store, entity, "fraud_model_v1")
    known, unknown = out.iloc[0], out.iloc[1]
    assert known["amount_to_user_mean_30d"] == pytest.approx(40.0 / 10.0)  # mean as of T0, not T0+2h
    assert known["secs_since_last_txn"] == pytest.approx(3600.0)
    assert known["is_foreign"] == 1  # FR vs home DE
    assert known["hour_of_day"] == 13
    assert known["account_age_days"] == pytest.approx(100 + 1 / 24)
    assert known["merchant_category_code"] == 4 and known["channel_code"] == 1
    # An unknown user has no history: nulls, not invented zeros; unknown codes are -1.
    assert pd.isna(unknown["amount_to_user_mean_30d"]) and pd.isna(unknown["secs_since_last_txn"])
    assert unknown["is_foreign"] == 0 and unknown["merchant_category_code"] == -1
    assert unknown["channel_code"] == -1


def test_entity_timestamps_in_any_zone_or_unit_mean_the_same_instant(store) -> None:
    instant = T0 + pd.Timedelta(hours=1)
    forms = {
        "utc": pd.Series([instant]),
        "naive (taken as UTC)": pd.Series([instant.tz_localize(None)]),
        "berlin": pd.Series([instant.tz_convert("Europe/Berlin")]),
        "microseconds": pd.Series([instant]).dt.as_unit("us"),
        "string with offset": pd.Series([instant.tz_convert("America/New_York").isoformat()]),
    }
    for name, ts in forms.items():
        entity = pd.DataFrame(
            {"user_id": [1], "merchant_id": [10], "event_timestamp": ts, "amount": [40.0], "country": ["DE"]}
        ).assign(merchant_category="grocery", channel="pos", request_unix=int(instant.timestamp()))
        out = training_set(store, entity, "fraud_model_v1")
        assert out["txn_count_1h"].iloc[0] == 1, name


def test_a_tie_without_a_created_timestamp_is_won_online_by_the_same_row_as_offline(store) -> None:
    """Materialization picks the latest row per entity with the same tie rule as the training join:
    the row written last (here the fourth of four at one instant), so serving sees what training saw."""
    window = {"start_date": (TIE_AT - pd.Timedelta(days=1)).to_pydatetime(),
              "end_date": (TIE_AT + pd.Timedelta(hours=1)).to_pydatetime()}  # fmt: skip
    store.materialize(**window, feature_views=["user_txn_stats"])
    online = store.get_online_features(features=["user_txn_stats:txn_count_1h"], entity_rows=[{"user_id": 7}])
    assert online.to_dict()["txn_count_1h"] == [8]


def test_ties_go_to_the_latest_created_then_to_the_row_written_last(tmp_path: Path) -> None:
    """Hand-worked: user 1 has four rows at T0 — created T0+2h, T0+5h, none, T0+3h — so the second
    (latest created, though not written last) wins; user 2's two rows have no created time and user
    3's two the same one: the one written last wins. Before T0 (user 1, a microsecond): nothing."""
    import duckdb
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Int64

    from mlcycle.features.offline_store import build_asof_sql, prepare_entity_df

    h = pd.Timedelta(hours=1)
    pd.DataFrame(
        {
            "user_id": np.array([1, 1, 1, 1, 2, 2, 3, 3], dtype="int64"),
            "ts": [T0] * 8,
            "created": [T0 + 2 * h, T0 + 5 * h, pd.NaT, T0 + 3 * h, pd.NaT, pd.NaT, T0 + h, T0 + h],
            "v": np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype="int64"),
        }
    ).to_parquet(tmp_path / "ties.parquet", index=False)
    view = FeatureView(
        name="ties",
        entities=[Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)],
        schema=[Field(name="user_id", dtype=Int64), Field(name="v", dtype=Int64)],
        source=FileSource(
            path=str(tmp_path / "ties.parquet"), timestamp_field="ts", created_timestamp_column="created"
        ),
        ttl=timedelta(days=1),
    )
    entity = pd.DataFrame({"user_id": [1, 2, 3, 1], "event_timestamp": [T0 + h, T0, T0, T0 - US]})
    (statement,) = build_asof_sql([view], ["ties:v"], "event_timestamp", tmp_path, full_feature_names=False)
    con = duckdb.connect()
    con.register("entity_df", prepare_entity_df(entity, "event_timestamp"))
    assert con.sql(statement).fetchall() == [(2,), (6,), (8,), (None,)]
