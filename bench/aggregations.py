"""Benchmark: declarative window aggregations (``mlcycle.features.aggregations``) vs a hand-written DuckDB query.

Generated events (default 1M rows, 5,000 entities over 90 days, timestamps to the second, a float
column with 1% missing values and a categorical column of 300 values) are written once to parquet.
On that file:

- declarative: ``compute_offline(path, spec)`` with ``spec`` = 4 windows (1h, 24h, 7d, 30d) x
  (count, sum, mean, count_distinct) per entity — checks of the input included;
- hand-written: the minimum DuckDB SQL for the same table, written here independently (a copy of
  the engine's SQL would check nothing): ``count(*)``, ``sum``, ``avg``, ``count(DISTINCT)`` over
  ``RANGE BETWEEN INTERVAL <w> - INTERVAL 1 MICROSECOND PRECEDING AND CURRENT ROW`` (the window
  ``(t - w, t]``), straight on ``read_parquet``.

Both return a pandas DataFrame. They are first checked to give the same rows and values, then timed
alternately; each side's best of ``--repeat`` runs is reported. For scale, the incremental engine
(what a stream consumer calls per event) is timed on the first ``--stream-rows`` events.

    uv run python bench/aggregations.py [--rows 1000000] [--entities 5000] [--repeat 3] [--stream-rows 100000]

Target: the declarative engine within 2x of the hand-written query.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

import mlcycle  # noqa: F401  (telemetry off)
from mlcycle.features.aggregations import AggregationSpec, IncrementalAggregator, compute_offline

TARGET_RATIO = 2.0
WINDOWS = {"1h": "1 HOUR", "24h": "24 HOUR", "7d": "7 DAY", "30d": "30 DAY"}


def generate(rows: int, entities: int, days: int = 90, seed: int = 0) -> pd.DataFrame:
    """Skewed activity (a few busy entities, many quiet ones), whole-second timestamps: ties and
    events exactly one window apart occur, as in real logs."""
    rng = np.random.default_rng(seed)
    weights = rng.pareto(1.5, entities) + 0.1
    entity = rng.choice(entities, rows, p=weights / weights.sum())
    seconds = np.sort(rng.integers(0, days * 86400, rows))
    value = np.round(rng.lognormal(3.0, 1.0, rows), 2)
    value[rng.random(rows) < 0.01] = np.nan
    return pd.DataFrame(
        {
            "entity_id": entity.astype("int64"),
            "event_timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(seconds, unit="s"),
            "value": value,
            "category": rng.integers(0, 300, rows).astype("int64"),
        }
    )


def spec() -> AggregationSpec:
    aggregations = []
    for w in WINDOWS:
        aggregations += [
            {"function": "count", "window": w},
            {"function": "sum", "column": "value", "window": w},
            {"function": "mean", "column": "value", "window": w},
            {"function": "count_distinct", "column": "category", "window": w},
        ]
    return AggregationSpec(entities=("entity_id",), aggregations=aggregations)


def hand_written(con: duckdb.DuckDBPyConnection, path: Path) -> pd.DataFrame:
    """The minimum SQL, written by hand."""
    sql = f"""
        SELECT entity_id, event_timestamp,
          count(*) OVER w1 AS n_1h, sum(value) OVER w1 AS s_1h, avg(value) OVER w1 AS m_1h,
          count(DISTINCT category) OVER w1 AS d_1h,
          count(*) OVER w24 AS n_24h, sum(value) OVER w24 AS s_24h, avg(value) OVER w24 AS m_24h,
          count(DISTINCT category) OVER w24 AS d_24h,
          count(*) OVER w7 AS n_7d, sum(value) OVER w7 AS s_7d, avg(value) OVER w7 AS m_7d,
          count(DISTINCT category) OVER w7 AS d_7d,
          count(*) OVER w30 AS n_30d, sum(value) OVER w30 AS s_30d, avg(value) OVER w30 AS m_30d,
          count(DISTINCT category) OVER w30 AS d_30d
        FROM read_parquet('{path}')
        WINDOW
          w1 AS (PARTITION BY entity_id ORDER BY event_timestamp
                 RANGE BETWEEN INTERVAL 1 HOUR - INTERVAL 1 MICROSECOND PRECEDING AND CURRENT ROW),
          w24 AS (PARTITION BY entity_id ORDER BY event_timestamp
                  RANGE BETWEEN INTERVAL 24 HOUR - INTERVAL 1 MICROSECOND PRECEDING AND CURRENT ROW),
          w7 AS (PARTITION BY entity_id ORDER BY event_timestamp
                 RANGE BETWEEN INTERVAL 7 DAY - INTERVAL 1 MICROSECOND PRECEDING AND CURRENT ROW),
          w30 AS (PARTITION BY entity_id ORDER BY event_timestamp
                  RANGE BETWEEN INTERVAL 30 DAY - INTERVAL 1 MICROSECOND PRECEDING AND CURRENT ROW)
    """
    return con.execute(sql).df()


def compare(mine: pd.DataFrame, hand: pd.DataFrame, aggregations: AggregationSpec) -> list[str]:
    """Differences (empty: identical). Rows matched after sorting by entity and time; a tie's rows
    carry identical values on both sides, so their order does not matter."""
    keys = ["entity_id", "event_timestamp"]
    mine = mine.sort_values(keys, kind="stable").reset_index(drop=True)
    hand = hand.sort_values(keys, kind="stable").reset_index(drop=True)
    if len(mine) != len(hand):
        return [f"rows: {len(mine)} vs {len(hand)}"]
    bad = [k for k in keys if not (mine[k].to_numpy() == hand[k].to_numpy()).all()]
    short = {"count": "n", "sum": "s", "mean": "m", "count_distinct": "d"}
    for agg in aggregations.aggregations:
        name = f"{short[agg.function]}_{agg.output_name.rsplit('_', 1)[1]}"
        a, b = mine[agg.output_name].to_numpy(dtype=float), hand[name].to_numpy(dtype=float)
        if not np.allclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True):
            bad.append(f"{agg.output_name} vs {name}: {int((~np.isclose(a, b, equal_nan=True)).sum())} rows differ")
    return bad


def best_of(repeat: int, *funcs: Callable[[], object]) -> list[float]:
    """Best wall time of each function over ``repeat`` alternating rounds (order swapped each round)."""
    times: list[list[float]] = [[] for _ in funcs]
    for r in range(repeat):
        order = range(len(funcs)) if r % 2 == 0 else reversed(range(len(funcs)))
        for i in order:
            t = time.perf_counter()
            funcs[i]()
            times[i].append(time.perf_counter() - t)
    return [min(t) for t in times]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="events")
    parser.add_argument("--entities", type=int, default=5000, help="distinct entities")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per side (best is reported)")
    parser.add_argument("--stream-rows", type=int, default=100_000, help="events through the incremental engine")
    args = parser.parse_args()
    started = time.perf_counter()
    aggregations = spec()

    t = time.perf_counter()
    events = generate(args.rows, args.entities)
    with tempfile.TemporaryDirectory(prefix="mlcycle-bench-agg-") as tmp:
        path = Path(tmp) / "events.parquet"
        events.to_parquet(path, index=False, coerce_timestamps="us")
        threads = duckdb.execute("SELECT current_setting('threads')").fetchone()[0]  # type: ignore[index]
        print(f"setup: {len(events):,} events, {events['entity_id'].nunique():,} entities, "
              f"{path.stat().st_size / 1e6:.1f} MB parquet, in {time.perf_counter() - t:.1f}s; "
              f"{len(aggregations.aggregations)} aggregates ({', '.join(WINDOWS)} x count, sum, mean, count_distinct); "
              f"duckdb {duckdb.__version__}, {threads} "
              "threads")  # fmt: skip

        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        mine = compute_offline(path, aggregations)
        hand = hand_written(con, path)
        mismatch = compare(mine, hand, aggregations)
        print(f"check: declarative and hand-written {'identical (rel 1e-9)' if not mismatch else 'DIFFER'} "
              f"on {len(mine):,} rows x {len(aggregations.aggregations)} aggregates")  # fmt: skip
        for line in mismatch[:20]:
            print(f"  {line}")
        assert not mismatch, f"{len(mismatch)} columns differ"
        del mine, hand

        mine_s, hand_s = best_of(args.repeat, lambda: compute_offline(path, aggregations),
                                 lambda: hand_written(con, path))  # fmt: skip

    n = len(events)
    stream = events.iloc[: args.stream_rows]
    engine = IncrementalAggregator(aggregations)
    t = time.perf_counter()
    for entity, ts, value, category in stream.itertuples(index=False):
        engine.update(entity, ts, {"value": value, "category": category})
    stream_s = time.perf_counter() - t

    ratio = mine_s / hand_s
    print()
    print(f"window aggregations over {n:,} events (best of {args.repeat}, alternating)")
    header = f"{'path':<66} | {'best s':>7} | {'events/s':>11} | {'ratio':>5}"
    print(header)
    print("-" * len(header))
    print(f"{'declarative: compute_offline(parquet, spec) (with input checks)':<66} | {mine_s:>7.2f} | "
          f"{n / mine_s:>11,.0f} | {ratio:>5.2f}")  # fmt: skip
    print(f"{'hand-written DuckDB window query, read_parquet':<66} | {hand_s:>7.2f} | {n / hand_s:>11,.0f} | "
          f"{1.0:>5.2f}")  # fmt: skip
    print(f"{f'incremental engine, update() per event ({len(stream):,} events, one run)':<66} | {stream_s:>7.2f} | "
          f"{len(stream) / stream_s:>11,.0f} |")  # fmt: skip
    print(f"total runtime {time.perf_counter() - started:.0f}s")
    print()
    print(f"RESULT aggregations_ratio {ratio:.2f} x target {TARGET_RATIO} {verdict(ratio <= TARGET_RATIO)}")
    if ratio > TARGET_RATIO:
        sys.exit(1)


if __name__ == "__main__":
    main()
