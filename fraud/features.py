"""The fraud project's transformations: raw transactions → the feature tables its Feast repo reads.

Point-in-time rule: a feature row stamped ``t`` uses only events strictly before ``t``.

- ``user_txn_stats``: after each transaction, the user's rolling aggregates over 1h / 24h / 7d /
  30d (count, sum, mean amount, distinct merchants) — declared (``USER_AGGREGATIONS``, or the
  project config's ``features.aggregations``), computed by the declarative engine — stamped one microsecond *after* the
  transaction. A training row for a transaction at ``t`` therefore joins the state left by the
  user's previous transactions, never its own; and the latest row, materialized online, is exactly
  what the offline join returns for a request arriving after it, so training and serving agree.
- ``merchant_stats``: a nightly snapshot per merchant stamped at midnight ``D``: volume over the
  7 days before ``D`` and a fraud rate from labels that *arrived* (``label_available_at``) in the
  90 days before ``D`` — not from labels of the same transactions that were still unknown then.
- ``user_profile``: static attributes stamped at signup.

The aggregates run in DuckDB (window functions over RANGE frames), which keeps 10M transactions
to seconds rather than the minutes a pandas groupby-rolling takes.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from mlcycle.features.aggregations import AggregationSpec
from mlcycle.features.transform import aggregation_table, unix_seconds
from mlcycle.project.config import ProjectConfig

WINDOWS = {"1h": "1 HOUR", "24h": "24 HOUR", "7d": "7 DAY", "30d": "30 DAY"}
MERCHANT_VOLUME_DAYS = 7
MERCHANT_LABEL_DAYS = 90
# Bayesian shrinkage of the merchant fraud rate toward a prior, so a merchant with three labels
# and one fraud does not look 33% fraudulent.
FRAUD_RATE_PRIOR = 0.01
FRAUD_RATE_PRIOR_WEIGHT = 20.0

USER_STATS_FEATURES = [
    f"{stat}_{w}" for w in WINDOWS for stat in ("txn_count", "amount_sum", "amount_mean", "distinct_merchants")
] + ["last_txn_unix"]
MERCHANT_FEATURES = [
    "merchant_txn_count_7d",
    "merchant_amount_mean_7d",
    "merchant_labelled_90d",
    "merchant_fraud_rate_90d",
]
PROFILE_FEATURES = ["home_country", "age_band", "signup_unix"]


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


# The per-user rolling aggregates, declared (mlcycle.features.aggregations): what the project's
# config (``features.aggregations.user_txn_stats``) declares, and the default when it says nothing.
USER_AGGREGATIONS = AggregationSpec(
    entities=("user_id",),
    aggregations=[
        agg
        for w in WINDOWS
        for agg in (
            {"function": "count", "window": w, "name": f"txn_count_{w}"},
            {"function": "sum", "column": "amount", "window": w, "name": f"amount_sum_{w}"},
            {"function": "mean", "column": "amount", "window": w, "name": f"amount_mean_{w}"},
            {"function": "count_distinct", "column": "merchant_id", "window": w, "name": f"distinct_merchants_{w}"},
        )
    ],
)


def user_txn_stats(
    transactions: pd.DataFrame, con: duckdb.DuckDBPyConnection | None = None, spec: AggregationSpec | None = None
) -> pd.DataFrame:
    """The declared per-user aggregates (the library's engine, ``aggregation_table``), plus the time
    of the user's last transaction, which the request-time features turn into "seconds since"."""
    return aggregation_table(transactions, spec or USER_AGGREGATIONS, con, last_event="last_txn_unix")


def merchant_stats(transactions: pd.DataFrame, con: duckdb.DuckDBPyConnection | None = None) -> pd.DataFrame:
    con = con or _connect()
    con.register("tx", transactions[["merchant_id", "event_timestamp", "amount", "is_fraud", "label_available_at"]])
    sql = f"""
        WITH bounds AS (
            SELECT date_trunc('day', min(event_timestamp)) + INTERVAL 1 DAY AS first_day,
                   date_trunc('day', max(event_timestamp)) + INTERVAL 1 DAY AS last_day
            FROM tx
        ),
        days AS (SELECT unnest(generate_series(first_day - INTERVAL 1 DAY, last_day, INTERVAL 1 DAY)) AS day
                 FROM bounds),
        merchants AS (SELECT DISTINCT merchant_id FROM tx),
        volume AS (
            SELECT merchant_id, date_trunc('day', event_timestamp) AS day,
                   count(*) AS n, sum(amount) AS amount
            FROM tx GROUP BY ALL
        ),
        labels AS (
            SELECT merchant_id, date_trunc('day', label_available_at) AS day,
                   count(*) AS labelled, sum(is_fraud) AS frauds
            FROM tx GROUP BY ALL
        ),
        grid AS (
            SELECT m.merchant_id, d.day,
                   coalesce(v.n, 0) AS n, coalesce(v.amount, 0) AS amount,
                   coalesce(l.labelled, 0) AS labelled, coalesce(l.frauds, 0) AS frauds
            FROM merchants m CROSS JOIN days d
            LEFT JOIN volume v ON v.merchant_id = m.merchant_id AND v.day = d.day
            LEFT JOIN labels l ON l.merchant_id = m.merchant_id AND l.day = d.day
        ),
        rolled AS (
            -- The row stamped at midnight D sums the days before D only (1 PRECEDING).
            SELECT merchant_id, day AS event_timestamp,
                   sum(n) OVER wv AS merchant_txn_count_7d,
                   sum(amount) OVER wv AS amount_7d,
                   sum(labelled) OVER wl AS merchant_labelled_90d,
                   sum(frauds) OVER wl AS frauds_90d
            FROM grid
            WINDOW wv AS (PARTITION BY merchant_id ORDER BY day
                          ROWS BETWEEN {MERCHANT_VOLUME_DAYS} PRECEDING AND 1 PRECEDING),
                   wl AS (PARTITION BY merchant_id ORDER BY day
                          ROWS BETWEEN {MERCHANT_LABEL_DAYS} PRECEDING AND 1 PRECEDING)
        )
        SELECT merchant_id, event_timestamp,
               coalesce(merchant_txn_count_7d, 0)::BIGINT AS merchant_txn_count_7d,
               CASE WHEN merchant_txn_count_7d > 0 THEN amount_7d / merchant_txn_count_7d END
                   AS merchant_amount_mean_7d,
               coalesce(merchant_labelled_90d, 0)::BIGINT AS merchant_labelled_90d,
               (coalesce(frauds_90d, 0) + {FRAUD_RATE_PRIOR * FRAUD_RATE_PRIOR_WEIGHT})
                   / (coalesce(merchant_labelled_90d, 0) + {FRAUD_RATE_PRIOR_WEIGHT})
                   AS merchant_fraud_rate_90d
        FROM rolled
        ORDER BY event_timestamp, merchant_id
    """
    return con.execute(sql).df()


def user_profile(users: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": users["user_id"].astype("int64"),
            "event_timestamp": users["signup_timestamp"],
            "home_country": users["home_country"].astype(str),
            "age_band": users["age_band"].astype(object).where(users["age_band"].notna(), None),
            "signup_unix": unix_seconds(users["signup_timestamp"]),
        }
    )


def build_tables(transactions: pd.DataFrame, cfg: ProjectConfig) -> dict[str, pd.DataFrame]:
    """The project's transformations (``table.transformations`` in mlcycle.yaml): from the
    *validated* transactions and the users file beside them, the three tables the Feast repo reads."""
    return build_feature_tables(
        transactions, pd.read_parquet(cfg.raw_dir / "users.parquet"), cfg.features.aggregations.get("user_txn_stats")
    )


def build_feature_tables(
    transactions: pd.DataFrame, users: pd.DataFrame, user_aggregations: AggregationSpec | None = None
) -> dict[str, pd.DataFrame]:
    con = _connect()
    return {
        "user_txn_stats": user_txn_stats(transactions, con, user_aggregations),
        "merchant_stats": merchant_stats(transactions, con),
        "user_profile": user_profile(users),
    }
