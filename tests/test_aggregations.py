"""Declarative window aggregations: declarations, the DuckDB engine against an oracle and hand-worked
cases, and the incremental engine against the DuckDB one event for event.

The oracle is a plain loop — for each event, select the entity's events with
``t - window < time <= t`` (NumPy masks) and aggregate the non-missing values in Python — so it
shares no code or SQL with either engine.
"""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast.aggregation import Aggregation as FeastAggregation
from pydantic import ValidationError

from mlcycle.features.aggregations import (
    BAD_NAME,
    BAD_WINDOW,
    DUPLICATE_NAME,
    MISSING_COLUMN,
    UNEXPECTED_COLUMN,
    UNKNOWN_FUNCTION,
    AggregationSpec,
    IncrementalAggregator,
    WindowAggregation,
    aggregate_at,
    compute_offline,
    format_window,
    grid,
    parse_window,
)

T0 = pd.Timestamp("2024-03-01 00:00:00")
NUMERIC = ["sum", "mean", "min", "max"]


def full_spec(entities: tuple[str, ...], windows: tuple[str, ...]) -> AggregationSpec:
    """Per window: count, sum/mean/min/max of ``x``, count_distinct of ``c`` and of ``x``."""
    aggs: list[dict] = []
    for w in windows:
        aggs.append({"function": "count", "window": w})
        aggs += grid(NUMERIC, [w], "x")
        aggs += [{"function": "count_distinct", "column": c, "window": w} for c in ("c", "x")]
    return AggregationSpec(entities=entities, timestamp="ts", aggregations=aggs)


def oracle(mine: dict[str, np.ndarray], t: np.datetime64, spec: AggregationSpec) -> dict[str, float]:
    """The aggregates of one entity's events (``mine``: column → array) in ``(t - window, t]``."""
    out: dict[str, float] = {}
    for agg in spec.aggregations:
        inside = (mine[spec.timestamp] > t - np.timedelta64(agg.window)) & (mine[spec.timestamp] <= t)
        if agg.function == "count":
            out[agg.output_name] = int(inside.sum())
            continue
        values = [v for v in mine[agg.column][inside] if not pd.isna(v)]
        if agg.function == "count_distinct":
            out[agg.output_name] = len(set(values))
        elif not values:
            out[agg.output_name] = math.nan
        else:
            fn = {"sum": np.sum, "mean": np.mean, "min": np.min, "max": np.max}[agg.function]
            out[agg.output_name] = float(fn(np.asarray(values, dtype=float)))
    return out


def by_entity(events: pd.DataFrame, spec: AggregationSpec) -> dict[tuple, dict[str, np.ndarray]]:
    cols = [spec.timestamp, *spec.columns]
    return {
        key if isinstance(key, tuple) else (key,): {c: group[c].to_numpy() for c in cols}
        for key, group in events.groupby(list(spec.entities))
    }


def brute_force(events: pd.DataFrame, spec: AggregationSpec) -> pd.DataFrame:
    """For each event, the oracle over its entity's events at the event's time."""
    groups = by_entity(events, spec)
    keys = list(spec.entities)
    rows = []
    for row in events[[*keys, spec.timestamp]].itertuples(index=False):
        key, t = tuple(row[:-1]), row[-1]
        state = oracle(groups[key], t.to_datetime64(), spec)
        rows.append({**dict(zip(keys, key, strict=True)), spec.timestamp: t, **state})
    return pd.DataFrame(rows)


def assert_same(got: pd.DataFrame, want: pd.DataFrame, spec: AggregationSpec) -> None:
    """Same rows (matched by keys and timestamp after sorting) and the same values, NaN equal to NaN;
    counts are integers and exact, the rest equal to 1e-9."""
    order = [*spec.entities, spec.timestamp]
    got = got.sort_values(order, kind="stable").reset_index(drop=True)
    want = want.sort_values(order, kind="stable").reset_index(drop=True)
    assert len(got) == len(want)
    for k in order:
        assert (got[k].to_numpy() == want[k].to_numpy()).all(), k
    for name, agg in zip(spec.output_names, spec.aggregations, strict=True):
        g, w = got[name].to_numpy(dtype=float), want[name].to_numpy(dtype=float)
        if agg.function in ("count", "count_distinct"):
            assert got[name].dtype.kind == "i", name
            np.testing.assert_array_equal(g, w, err_msg=name)
        else:
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=name)


def generated_events(n: int, entities: int, seed: int, span_hours: int) -> pd.DataFrame:
    """Events on whole minutes (so ties and pairs exactly one window apart happen), a quiet stretch in
    the middle (windows empty out and refill), ~10% missing ``x``, a categorical ``c`` with missing
    values, two entity keys."""
    rng = np.random.default_rng(seed)
    minutes = rng.integers(0, span_hours * 60, n)
    gap = (minutes > span_hours * 20) & (minutes < span_hours * 35)
    minutes[gap & (rng.random(n) < 0.9)] += span_hours * 15
    x = np.round(rng.normal(50, 20, n), 2)
    x[rng.random(n) < 0.1] = np.nan
    c = rng.choice(np.array(["a", "b", "c", "d", "e", "f"], dtype=object), n)
    c[rng.random(n) < 0.05] = None
    events = pd.DataFrame(
        {
            "k1": rng.integers(0, entities, n),
            "k2": rng.choice(np.array(["p", "q"], dtype=object), n),
            "ts": T0 + pd.to_timedelta(minutes, unit="min"),
            "x": x,
            "c": c,
        }
    )
    return events.sort_values("ts", kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------ declarations
@pytest.mark.parametrize(
    ("text", "seconds", "label"),
    [
        ("1h", 3600, "1h"),
        ("24h", 86400, "24h"),
        ("7d", 7 * 86400, "7d"),
        ("30d", 30 * 86400, "30d"),
        ("15m", 900, "15m"),
        ("2w", 14 * 86400, "14d"),
        ("90s", 90, "90s"),
        (" 48H ", 2 * 86400, "2d"),
    ],
)
def test_window_text_parses_and_labels(text: str, seconds: int, label: str) -> None:
    assert parse_window(text) == timedelta(seconds=seconds)
    assert format_window(parse_window(text)) == label


def test_default_output_names_and_feast_mapping() -> None:
    spec = AggregationSpec(
        entities=("k",),
        aggregations=[
            {"function": "count", "window": "1h"},
            {"function": "sum", "column": "x", "window": "24h"},
            {"function": "count_distinct", "column": "c", "window": timedelta(days=30)},
            {"function": "mean", "column": "x", "window": "7d", "name": "avg_x_week"},
        ],
    )
    assert spec.output_names == ["count_1h", "sum_x_24h", "count_distinct_c_30d", "avg_x_week"]
    assert spec.windows == [timedelta(hours=1), timedelta(days=1), timedelta(days=7), timedelta(days=30)]
    assert spec.columns == ["x", "c"]
    feast = spec.to_feast()
    assert all(isinstance(a, FeastAggregation) for a in feast)
    assert (feast[1].function, feast[1].column, feast[1].time_window) == ("sum", "x", timedelta(days=1))
    assert [a.name for a in feast] == spec.output_names  # Feast registers our names, not its {fn}_{col}_{s}s
    back = [WindowAggregation.from_feast(FeastAggregation.from_proto(a.to_proto())) for a in feast]

    def shape(a: WindowAggregation) -> tuple:
        return a.function, a.column, a.window, a.output_name

    assert [shape(a) for a in back] == [shape(a) for a in spec.aggregations]
    hopping = FeastAggregation(
        column="x", function="sum", time_window=timedelta(hours=1), slide_interval=timedelta(minutes=5)
    )
    with pytest.raises(ValueError, match="slide_interval"):
        WindowAggregation.from_feast(hopping)
    assert len(grid(["sum", "mean"], ["1h", "7d"], "x")) == 4


def one(function: str, window: object = "1h", **kw: object) -> dict:
    return {"function": function, "window": window, **kw}


@pytest.mark.parametrize(
    ("aggregations", "error_type", "message"),
    [
        ([one("median", column="x")], UNKNOWN_FUNCTION, "unknown aggregation function 'median'"),
        ([one("avg", column="x")], UNKNOWN_FUNCTION, "use one of count, sum, mean, min, max, count_distinct"),
        ([one("sum", "1.5h", column="x")], BAD_WINDOW, "bad window '1.5h'"),
        ([one("sum", "1 hour", column="x")], BAD_WINDOW, "bad window '1 hour'"),
        ([one("sum", "0h", column="x")], BAD_WINDOW, "positive"),
        ([one("sum", 3600, column="x")], BAD_WINDOW, "bad window 3600"),
        ([one("sum", timedelta(milliseconds=1500), column="x")], BAD_WINDOW, "whole number of seconds"),
        ([one("count_distinct")], MISSING_COLUMN, "count_distinct needs a column"),
        ([one("sum", column="")], MISSING_COLUMN, "sum needs a column"),
        ([one("count", column="x")], UNEXPECTED_COLUMN, "count counts events and takes no column (got 'x')"),
        ([one("sum", column="x y")], BAD_NAME, "output name 'sum_x y_1h' is not a valid feature name"),
        (
            [one("sum", column="x"), one("sum", "60m", column="x")],
            DUPLICATE_NAME,
            "duplicate output name 'sum_x_1h' (aggregations 0 and 1)",
        ),
        ([one("count", name="k")], DUPLICATE_NAME, "output name 'k' (aggregation 0) is also a key column"),
    ],
)
def test_bad_declarations_give_named_errors(aggregations: list[dict], error_type: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        AggregationSpec(entities=("k",), aggregations=aggregations)
    errors = [e for e in info.value.errors() if e["type"].startswith("aggregation_")]
    assert [e["type"] for e in errors] == [error_type]  # one error, of the named type
    assert message in errors[0]["msg"]


def test_spec_needs_an_entity_and_an_aggregation() -> None:
    with pytest.raises(ValidationError, match="entities"):
        AggregationSpec(entities=(), aggregations=[one("count")])
    with pytest.raises(ValidationError, match="aggregations"):
        AggregationSpec(entities=("k",), aggregations=[])


# ---------------------------------------------------------------------------------- offline engine
def test_offline_hand_worked_boundaries_ties_and_missing_values() -> None:
    """Entity 1, window 1h:
    00:00 x=10 c=a | 00:30 x=NaN c=b | 01:00 x=4 c=a and 01:00 x=6 c=None (a tie) | 02:00:00.000001 x=1 c=a
    - at 01:00 the 00:00 event is exactly 1h old: out. Each tied event sees both 01:00 events.
    - at 02:00:00.000001 the 01:00 events are 1h + 1µs old: out; only the event itself is left.
    - the NaN is counted by count, ignored by the others; None is no distinct value.
    Entity 2's event (x=100 at 00:30) does not leak into entity 1."""
    hour = pd.Timedelta("1h")
    events = pd.DataFrame(
        {
            "k": [1, 1, 1, 1, 1, 2],
            "ts": [T0, T0 + hour / 2, T0 + hour, T0 + hour, T0 + 2 * hour + pd.Timedelta("1us"), T0 + hour / 2],
            "x": [10.0, np.nan, 4.0, 6.0, 1.0, 100.0],
            "c": ["a", "b", "a", None, "a", "z"],
        }
    )
    aggregations = [one("count"), *grid(NUMERIC, ["1h"], "x"), one("count_distinct", column="c")]
    spec = AggregationSpec(entities=("k",), timestamp="ts", aggregations=aggregations)
    got = compute_offline(events, spec).sort_values(["k", "ts"], kind="stable").reset_index(drop=True)
    want = {
        "count_1h": [1, 2, 3, 3, 1, 1],
        "sum_x_1h": [10.0, 10.0, 10.0, 10.0, 1.0, 100.0],
        "mean_x_1h": [10.0, 10.0, 5.0, 5.0, 1.0, 100.0],
        "min_x_1h": [10.0, 10.0, 4.0, 4.0, 1.0, 100.0],
        "max_x_1h": [10.0, 10.0, 6.0, 6.0, 1.0, 100.0],
        "count_distinct_c_1h": [1, 2, 2, 2, 1, 1],
    }
    assert got["k"].tolist() == [1, 1, 1, 1, 1, 2]
    for name, values in want.items():
        assert got[name].tolist() == values, name
    assert_same(got, brute_force(events, spec), spec)
    # One row per (entity, timestamp) on request: the tie collapses.
    assert len(compute_offline(events, spec, deduplicate=True)) == 5


def test_offline_all_missing_window_is_missing_not_zero() -> None:
    events = pd.DataFrame({"k": [1, 1], "ts": [T0, T0 + pd.Timedelta("2h")], "x": [np.nan, np.nan]})
    aggregations = [*grid(NUMERIC, ["1h"], "x"), one("count"), one("count_distinct", column="x")]
    got = compute_offline(events, AggregationSpec(entities=("k",), timestamp="ts", aggregations=aggregations))
    assert got[["sum_x_1h", "mean_x_1h", "min_x_1h", "max_x_1h"]].isna().all().all()
    assert got["count_1h"].tolist() == [1, 1]
    assert got["count_distinct_x_1h"].tolist() == [0, 0]


def test_offline_matches_brute_force_on_generated_events() -> None:
    """600 events, two keys, windows 1h/6h/24h: ties, pairs exactly a window apart, gaps, missing values."""
    events = generated_events(600, entities=4, seed=1, span_hours=72)
    spec = full_spec(("k1", "k2"), ("1h", "6h", "24h"))
    ts = events.groupby(["k1", "k2"])["ts"]
    assert (ts.diff() == pd.Timedelta(0)).any(), "the data should have ties"
    assert any((ts.diff(n) == pd.Timedelta("1h")).any() for n in range(1, 5)), "and pairs exactly 1h apart"
    assert_same(compute_offline(events, spec), brute_force(events, spec), spec)


def test_offline_reads_parquet_and_treats_stored_nan_as_missing(tmp_path: Path) -> None:
    """A parquet file may hold real NaN (not null) in a float column: it is missing there too. (pyarrow
    leaves NaN out of the column statistics, which DuckDB would otherwise trust.)"""
    events = generated_events(300, entities=3, seed=2, span_hours=24)
    x = pa.array(events["x"].to_numpy(), from_pandas=False)  # NaN kept as NaN, not null
    assert x.null_count == 0 and np.isnan(x.to_numpy()).sum() > 0
    table = pa.table(
        {
            "k1": pa.array(events["k1"]),
            "k2": pa.array(events["k2"]),
            "ts": pa.array(events["ts"].astype("datetime64[us]")),
            "x": x,
            "c": pa.array(events["c"]),
        }
    )
    path = tmp_path / "events.parquet"
    pq.write_table(table, path)
    spec = full_spec(("k1", "k2"), ("1h", "6h"))
    from_file = compute_offline(path, spec)
    from_frame = compute_offline(events, spec)
    from_frame["ts"] = from_frame["ts"].astype(from_file["ts"].dtype)
    assert_same(from_file, from_frame, spec)


def test_offline_input_errors_name_the_column() -> None:
    events = pd.DataFrame({"k": [1], "ts": [T0], "x": [1.0], "s": ["a"]})

    def spec(*aggregations: dict, entities: tuple[str, ...] = ("k",)) -> AggregationSpec:
        return AggregationSpec(entities=entities, timestamp="ts", aggregations=aggregations)

    with pytest.raises(ValueError, match="lack column 'y' that aggregation 'sum_y_1h' reads"):
        compute_offline(events, spec(one("sum", column="y")))
    with pytest.raises(ValueError, match="lack the key column 'other'"):
        compute_offline(events, spec(one("count"), entities=("other",)))
    with pytest.raises(ValueError, match="max needs a numeric column, 's' is VARCHAR"):
        compute_offline(events, spec(one("max", column="s")))
    with pytest.raises(ValueError, match="1 events have no timestamp in 'ts'"):
        compute_offline(pd.DataFrame({"k": [1, 1], "ts": [T0, pd.NaT]}), spec(one("count")))


# ------------------------------------------------------------------------------ incremental engine
def test_incremental_equals_offline_event_for_event() -> None:
    """20k events through ``update`` in time order (150 x 2 entities, 40 days, windows 1h/24h/7d/30d);
    after the last event of each (entity, timestamp) group the answer equals the offline row (every
    row of a tied group carries that state offline)."""
    events = generated_events(20_000, entities=150, seed=3, span_hours=24 * 40)
    spec = full_spec(("k1", "k2"), ("1h", "24h", "7d", "30d"))
    offline = compute_offline(events, spec, deduplicate=True)
    engine = IncrementalAggregator(spec)
    answers: dict[tuple, dict] = {}
    for k1, k2, ts, x, c in events[["k1", "k2", "ts", "x", "c"]].itertuples(index=False):
        answers[(k1, k2, ts)] = engine.update((k1, k2), ts, {"x": x, "c": c})  # the last of a tie wins
    streamed = pd.DataFrame([{"k1": k[0], "k2": k[1], "ts": k[2], **v} for k, v in answers.items()])
    assert len(streamed) == len(offline) < len(events)  # there were ties
    assert_same(streamed, offline, spec)


def test_incremental_query_equals_oracle_and_does_not_move_the_clock() -> None:
    """``query`` at times after each entity's last event (0, 30 min, 1h, 1h + 1µs, ... a week) equals the
    oracle, and leaves the state as it was."""
    events = generated_events(400, entities=3, seed=4, span_hours=48)
    spec = full_spec(("k1", "k2"), ("1h", "6h"))
    engine = IncrementalAggregator(spec)
    for row in events.itertuples(index=False):
        engine.update((row.k1, row.k2), row.ts, {"x": row.x, "c": row.c})
    groups = by_entity(events, spec)
    for key, mine in groups.items():
        last = pd.Timestamp(mine["ts"].max())
        for offset in ("0s", "30min", "1h", "1h 1us", "5h", "6h", "6h 1us", "7d"):
            at = last + pd.Timedelta(offset)
            got, want = engine.query(key, at), oracle(mine, at.to_datetime64(), spec)
            assert got.keys() == want.keys()
            for name, value in want.items():
                assert got[name] == pytest.approx(value, rel=1e-9, nan_ok=True), (key, offset, name)
    # Querying a week ahead changed nothing: a later event still sees the entity's recent history.
    key, mine = next(iter(groups.items()))
    t = pd.Timestamp(mine["ts"].max()) + pd.Timedelta("1min")
    after = engine.update(key, t, {"x": 1.0, "c": "a"})
    assert after["count_1h"] == int((mine["ts"] > (t - pd.Timedelta("1h")).to_datetime64()).sum()) + 1


def test_incremental_refuses_late_events_and_missing_columns() -> None:
    spec = full_spec(("k",), ("1h",))
    engine = IncrementalAggregator(spec)
    engine.update(1, T0 + pd.Timedelta("10min"), {"x": 1.0, "c": "a"})
    engine.update(2, T0, {"x": 1.0, "c": "a"})  # another entity may be behind
    engine.update(1, T0 + pd.Timedelta("10min"), {"x": 2.0, "c": "a"})  # a tie is fine
    with pytest.raises(ValueError, match="older than its last event"):
        engine.update(1, T0, {"x": 1.0, "c": "a"})
    with pytest.raises(ValueError, match="precedes its last event"):
        engine.query(1, T0)
    with pytest.raises(KeyError, match="lacks column 'c'"):
        engine.update(1, T0 + pd.Timedelta("1h"), {"x": 1.0})
    unknown = engine.query(99, T0)
    assert unknown["count_1h"] == 0 and unknown["count_distinct_c_1h"] == 0 and math.isnan(unknown["sum_x_1h"])


def test_incremental_prune_forgets_idle_entities() -> None:
    spec = AggregationSpec(entities=("k",), aggregations=[one("count"), one("sum", "1d", column="x")])
    engine = IncrementalAggregator(spec)
    engine.update("a", T0, {"x": 1})
    engine.update("b", T0 + pd.Timedelta("12h"), {"x": 2})
    assert engine.prune(T0 + pd.Timedelta("1d")) == 1  # "a" is exactly a day old: out of every window
    assert len(engine) == 1
    assert engine.query("b", T0 + pd.Timedelta("1d")) == {"count_1h": 0, "sum_x_24h": 2.0}


def test_a_declaration_dumped_to_json_loads_again_as_written() -> None:
    """A training run logs its config as JSON and ``reproduce`` loads it back: windows must come
    back as the text they were declared with, not ISO 8601 durations the parser refuses."""
    from mlcycle.project.config import ProjectConfig

    raw = {"features": {"aggregations": {"t": {"entities": ["k"], "aggregations": [
        {"function": "count", "window": "24h"}, {"function": "sum", "column": "x", "window": "7d"}]}}}}  # fmt: skip
    cfg = ProjectConfig.model_validate(raw)
    dumped = cfg.model_dump(mode="json")
    assert [a["window"] for a in dumped["features"]["aggregations"]["t"]["aggregations"]] == ["24h", "7d"]
    assert ProjectConfig.model_validate(dumped).features.aggregations == cfg.features.aggregations


def test_expiry_rows_hand_worked() -> None:
    """Events of one key at 00:00 (x=10) and 00:30 (x=4), windows 1h and 2h, ``expiries``: the state
    at every instant it changes — each event, and each instant an event leaves a window (t + w, when
    ``(t+w-w, t+w]`` no longer holds t) — worked out by hand, with the entity's last event."""
    t0 = pd.Timestamp("2026-03-01 00:00", tz="UTC")
    events = pd.DataFrame({"k": [1, 1], "ts": [t0, t0 + pd.Timedelta(minutes=30)], "x": [10.0, 4.0]})
    spec = AggregationSpec(
        entities=("k",),
        timestamp="ts",
        aggregations=[
            one("count", window="1h", name="count_1h"),
            one("sum", window="1h", column="x", name="sum_x_1h"),
            one("count", window="2h", name="count_2h"),
            one("sum", window="2h", column="x", name="sum_x_2h"),
        ],
    )
    got = compute_offline(events, spec, deduplicate=True, expiries=True).sort_values("ts").reset_index(drop=True)
    minutes = [0, 30, 60, 90, 120, 150]
    assert list(got["ts"]) == [t0 + pd.Timedelta(minutes=m) for m in minutes]
    assert list(got["count_1h"]) == [1, 2, 1, 0, 0, 0]
    np.testing.assert_array_equal(got["sum_x_1h"], [10, 14, 4, np.nan, np.nan, np.nan])
    assert list(got["count_2h"]) == [1, 2, 2, 2, 1, 0]
    np.testing.assert_array_equal(got["sum_x_2h"], [10, 14, 14, 14, 4, np.nan])
    last = t0.value // 1000 + 30 * 60 * 1_000_000
    assert list(got["__last_t"]) == [t0.value // 1000, *[last] * 5]
    # The incremental engine's query at each instant says the same (the stream's timers use it).
    engine = IncrementalAggregator(spec)
    for t, x in zip(events["ts"], events["x"], strict=True):
        engine.update(1, t, {"x": x})
    for row in got.iloc[2:].itertuples(index=False):
        online = engine.query(1, row.ts)
        assert (online["count_1h"], online["count_2h"]) == (row.count_1h, row.count_2h)
        np.testing.assert_array_equal([online["sum_x_1h"], online["sum_x_2h"]], [row.sum_x_1h, row.sum_x_2h])


def test_aggregate_at_equals_the_offline_engine_at_every_instant_a_state_changes() -> None:
    """600 events (ties, missing values, pairs a window apart, a quiet stretch), every function over
    1h/6h/24h: at each instant the offline engine has a row for (every event and every instant an
    event leaves a window), ``aggregate_at`` over the entity's events gives that row."""
    events = generated_events(600, entities=3, seed=11, span_hours=72)
    spec = full_spec(("k1", "k2"), ("1h", "6h", "24h"))
    offline = compute_offline(events, spec, deduplicate=True, expiries=True)
    micros = (pd.to_datetime(events["ts"], utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
    by_entity = {
        key: [(int(t), [None if pd.isna(v) else v for v in vals]) for t, *vals in
              zip(micros[group.index], *(group[c] for c in spec.columns), strict=True)]
        for key, group in events.groupby(["k1", "k2"])
    }  # fmt: skip
    checked = 0
    for row in offline.itertuples(index=False):
        stamp = pd.Timestamp(row.ts)
        at = ((stamp.tz_localize("UTC") if stamp.tz is None else stamp) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(
            microseconds=1
        )
        got = aggregate_at(spec, by_entity[(row.k1, row.k2)], at)
        for name in spec.output_names:
            want = getattr(row, name)
            assert (math.isnan(got[name]) and pd.isna(want)) or got[name] == pytest.approx(want, rel=1e-12), name
        checked += 1
    assert checked > 600  # events and the instants they leave windows
