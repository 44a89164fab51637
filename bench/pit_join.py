"""Benchmark: point-in-time training set for 1M entity rows through the FeatureService vs raw DuckDB.

Both sides start from the same pandas entity frame and end with a pandas frame of the same rows:
the Feast side through ``FeatureStore.get_historical_features`` (offline store
``AsofDuckDBOfflineStore`` + the on-demand view), the raw side as one hand-written DuckDB
``ASOF LEFT JOIN`` per view with the TTLs and the on-demand features written in SQL. The two are
checked row for row, then timed alternately (median of several rounds, so machine noise hits both).
The raw side converts through Arrow, its fastest route to pandas (DuckDB's .df() took twice as long).

    uv run python bench/pit_join.py [--rows 1000000] [--rounds 3]

Target: Feast path within 2x of raw DuckDB.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from fraud.generator import CATEGORIES, CHANNELS, read_dataset

import mlcycle  # noqa: F401  (telemetry off)
from mlcycle.features import apply_repo, entity_frame, open_store, pipeline, plan_for, training_set
from mlcycle.project.files import copy_project

TARGET_RATIO = 2.0

VIEWS = {  # alias: (table, join key, TTL in days)
    "u": ("user_txn_stats", "user_id", 30),
    "m": ("merchant_stats", "merchant_id", 2),
    "p": ("user_profile", "user_id", 3650),
}
ODFV_SQL = """
       ln(1 + greatest(amount, 0)) AS log_amount,
       CASE WHEN amount_mean_30d > 0 THEN amount / amount_mean_30d END AS amount_to_user_mean_30d,
       (request_unix // 3600) % 24 AS hour_of_day,
       CASE WHEN home_country IS NOT NULL AND country != home_country THEN 1 ELSE 0 END AS is_foreign,
       (request_unix - signup_unix) / 86400.0 AS account_age_days,
       (request_unix - last_txn_unix)::DOUBLE AS secs_since_last_txn,
       coalesce(list_position({CATEGORIES}, merchant_category) - 1, -1) AS merchant_category_code,
       coalesce(list_position({CHANNELS}, channel) - 1, -1) AS channel_code
"""


def raw_sql(con: duckdb.DuckDBPyConnection, features_dir: Path, with_odfv: bool) -> str:
    """The leanest hand-written form: one ASOF LEFT JOIN per view, a TTL CASE per column."""
    cols, joins = ["e.*"], []
    for alias, (table, key, ttl_days) in VIEWS.items():
        path = features_dir / f"{table}.parquet"
        names = [
            c
            for c in con.sql(f"SELECT * FROM read_parquet('{path}') LIMIT 0").columns
            if c not in (key, "event_timestamp")
        ]
        fresh = f"{alias}.event_timestamp >= e.event_timestamp - INTERVAL {ttl_days} DAY"
        cols += [f"CASE WHEN {fresh} THEN {alias}.{c} END AS {c}" for c in names]
        joins.append(
            f"ASOF LEFT JOIN read_parquet('{path}') {alias} "
            f"ON e.{key} = {alias}.{key} AND e.event_timestamp >= {alias}.event_timestamp"
        )
    joined = f"SELECT {', '.join(cols)} FROM entity_df e {' '.join(joins)}"
    if not with_odfv:
        return f"{joined} ORDER BY e.__row"
    odfv = ODFV_SQL.format(CATEGORIES=list(CATEGORIES), CHANNELS=list(CHANNELS))
    return f"SELECT * EXCLUDE (__row), {odfv} FROM ({joined}) ORDER BY __row"


def raw_duckdb(entity: pd.DataFrame, features_dir: Path, with_odfv: bool = True) -> pd.DataFrame:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("entity_df", entity.assign(__row=np.arange(len(entity))))
    return con.sql(raw_sql(con, features_dir, with_odfv)).to_arrow_table().to_pandas()


def compare(feast_df: pd.DataFrame, raw_df: pd.DataFrame, columns: list[str]) -> dict[str, int]:
    bad = {}
    for col in columns:
        a = pd.to_numeric(feast_df[col], errors="coerce").to_numpy(float)
        b = pd.to_numeric(raw_df[col], errors="coerce").to_numpy(float)
        n = int((~np.isclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True)).sum())
        if n:
            bad[col] = n
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="entity rows (transactions)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per side")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mlcycle-bench-") as tmp:
        data = {
            "seed": 1,
            "days": 90,
            "n_transactions": args.rows,
            "n_users": max(2000, args.rows // 10),
            "n_merchants": max(300, args.rows // 100),
        }
        cfg = copy_project(Path(__file__).resolve().parents[1], Path(tmp), data)
        t = time.perf_counter()
        pipeline.generate_data(cfg)
        dataset = read_dataset(cfg.raw_dir)
        pipeline.build_features(cfg)
        apply_repo(cfg.feature_repo_path)
        print(
            f"setup: {args.rows:,} transactions generated, features built, repo applied "
            f"in {time.perf_counter() - t:.1f}s"
        )
        store = open_store(cfg.feature_repo_path)
        service = cfg.features.feature_service
        columns = list(plan_for(store, service).model_features)
        entity = entity_frame(dataset.transactions, cfg.table.entities, plan_for(store, service).request_fields)

        feast_df = training_set(store, entity, service)
        raw_df = raw_duckdb(entity, cfg.features_dir)
        assert len(feast_df) == len(raw_df) == len(entity), (len(feast_df), len(raw_df), len(entity))
        mismatch = compare(feast_df, raw_df, columns)
        non_null = float(feast_df[columns].notna().to_numpy().mean())
        print(
            f"check: {len(entity):,} rows x {len(columns)} features, "
            f"{'identical' if not mismatch else f'MISMATCH {mismatch}'} ({non_null:.1%} non-null)"
        )

        feast_s, raw_s, join_s = [], [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            training_set(store, entity, service)
            feast_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            raw_duckdb(entity, cfg.features_dir)
            raw_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            raw_duckdb(entity, cfg.features_dir, with_odfv=False)
            join_s.append(time.perf_counter() - t)

    feast_med, raw_med = statistics.median(feast_s), statistics.median(raw_s)
    ratio = feast_med / raw_med
    print()
    print(f"{'path':<44}{'median s':>10}{'min s':>10}{'rows/s':>14}")
    print(
        f"{'Feast FeatureService (AsofDuckDBOfflineStore)':<44}{feast_med:>10.2f}{min(feast_s):>10.2f}"
        f"{len(entity) / feast_med:>14,.0f}"
    )
    print(
        f"{'raw DuckDB ASOF JOIN (same rows, SQL ODFV)':<44}{raw_med:>10.2f}{min(raw_s):>10.2f}"
        f"{len(entity) / raw_med:>14,.0f}"
    )
    join_med = statistics.median(join_s)
    print(
        f"{'raw DuckDB ASOF JOIN only (no ODFV columns)':<44}{join_med:>10.2f}{min(join_s):>10.2f}"
        f"{len(entity) / join_med:>14,.0f}"
    )
    print(f"{'ratio Feast / raw (same rows)':<44}{ratio:>10.2f}")
    print(f"{'ratio Feast / raw join only':<44}{feast_med / join_med:>10.2f}")
    ok = ratio <= TARGET_RATIO and not mismatch
    print(f"RESULT pit_join_ratio {ratio:.2f} x target {TARGET_RATIO} {'PASS' if ok else 'FAIL'}")
    if not ok:
        sys.exit(1)  # a benchmark that fails its target fails `make bench`


if __name__ == "__main__":
    main()
