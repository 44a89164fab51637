"""Declarative per-entity window aggregations: one definition, several engines.

A project declares *what* it wants — "per ``entity``, the ``sum`` of ``column`` over ``7d``" — and
the engines decide *how*:

- :func:`compute_offline` computes every declared aggregate for every event in one DuckDB query
  (window functions over RANGE frames), for building point-in-time correct feature tables;
- :class:`IncrementalAggregator` keeps per-entity state and updates it event by event, for a
  stream consumer that publishes the same features online.

Both engines implement one definition, so a feature computed offline for training equals the one a
stream computes for serving (a test holds them equal event for event).

Semantics (shared by both engines):

- **Window.** The aggregate "after" an event at ``t`` covers the entity's events with timestamps in
  ``(t - window, t]``: the event itself is included, an event exactly ``window`` earlier is not.
  Timestamps are compared at microsecond resolution (finer parts are floored), naive timestamps are
  read as UTC.
- **Ties.** Events of one entity at the same timestamp are all in each other's window (SQL RANGE
  "peers"): offline, every one of them carries the state after the whole group. The incremental
  engine cannot see the future, so its answer equals the offline one after the *last* event of a
  tied group (and :meth:`IncrementalAggregator.query` at that time) — which is what an online store
  keyed by (entity, timestamp) ends up holding.
- **Missing values** (None / NaN / NA): ``sum``, ``mean``, ``min``, ``max`` and ``count_distinct``
  ignore them, as SQL does; ``count`` counts events, whatever their values. With no non-missing
  value in the window ``sum``/``mean``/``min``/``max`` are missing (NaN), as SQL's NULL — not 0.
- **Types.** ``count`` and ``count_distinct`` are integers; the others are floats (the column is
  read as DOUBLE).

The declarations map onto Feast's own :class:`feast.aggregation.Aggregation` (``to_feast``), which
Feast registers on a ``StreamFeatureView`` but does not compute: Feast's class validates nothing
(any function name, any window, no entity keys), so ours is a small pydantic model that checks a
declaration when it is loaded and converts to Feast's shape for the registry. The declarations live
in ``mlcycle.project.aggregations`` (the project config validates them and sits below this stage);
every name is re-exported here.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from mlcycle.project.aggregations import (  # the declarations, re-exported: one place to import both from
    BAD_NAME,
    BAD_WINDOW,
    DUPLICATE_NAME,
    FUNCTIONS,
    MISSING_COLUMN,
    NUMERIC_FUNCTIONS,
    UNEXPECTED_COLUMN,
    UNKNOWN_FUNCTION,
    AggregationSpec,
    Function,
    WindowAggregation,
    format_window,
    grid,
    parse_window,
)

__all__ = [
    "BAD_NAME",
    "BAD_WINDOW",
    "DUPLICATE_NAME",
    "FUNCTIONS",
    "MISSING_COLUMN",
    "NUMERIC_FUNCTIONS",
    "UNEXPECTED_COLUMN",
    "UNKNOWN_FUNCTION",
    "AggregationSpec",
    "Function",
    "IncrementalAggregator",
    "WindowAggregation",
    "aggregate_at",
    "compute_offline",
    "format_window",
    "grid",
    "offline_sql",
    "parse_window",
]


# ------------------------------------------------------------------------------------------ offline
def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def offline_sql(
    spec: AggregationSpec,
    source: str,
    float_columns: Iterable[str] = (),
    deduplicate: bool = False,
    expiries: bool = False,
) -> str:
    """The DuckDB query computing ``spec`` for every event of ``source`` (a table name or a FROM expression).

    Frames run over integer microseconds, ``RANGE BETWEEN window-1µs PRECEDING AND CURRENT ROW``: that is
    ``(t - window, t]`` exactly, whatever the timestamp type (a nanosecond timestamp minus an interval
    would not be). ``float_columns`` get NaN turned into NULL, so that a NaN read from a file is missing,
    as pandas' NaN already is. ``deduplicate`` keeps one row per (entity, timestamp) — tied rows carry
    identical values anyway.

    ``expiries`` adds the states at the instants events leave windows (``t + window`` for every event
    and window; an event at ``t`` is outside ``(t + w - w, t + w]``): rows with no event of their own
    (null values, not counted), deduplicated with any event at the same instant. Every row then also
    has ``__last_t``, the entity's latest event at or before it (epoch microseconds).
    """
    keys = ", ".join(_quote(k) for k in spec.entities)
    ts = _quote(spec.timestamp)
    floats = set(float_columns)
    prepared = [f"epoch_us({ts}) AS __t"]
    for col in spec.columns:
        if col in floats:
            prepared.append(
                f"CASE WHEN isnan({_quote(col)}) THEN NULL ELSE {_quote(col)} END AS {_quote('__v_' + col)}"
            )
    windows = {w: f"w{i}" for i, w in enumerate(spec.windows)}
    exprs = []
    for agg in spec.aggregations:
        frame = windows[agg.window]
        col = ""
        if agg.column is not None:
            col = _quote("__v_" + agg.column) if agg.column in floats else _quote(agg.column)
        if agg.function == "count":
            expr = "count(*)"
        elif agg.function == "count_distinct":
            expr = f"count(DISTINCT {col})"
        else:
            sql_function = {"sum": "sum", "mean": "avg", "min": "min", "max": "max"}[agg.function]
            expr = f"{sql_function}({col}::DOUBLE)"
        exprs.append(f"{expr} OVER {frame} AS {_quote(agg.output_name)}")
    window_defs = ",\n       ".join(
        f"{name} AS (PARTITION BY {keys} ORDER BY __t "
        f"RANGE BETWEEN {w // timedelta(microseconds=1) - 1} PRECEDING AND CURRENT ROW)"
        for w, name in windows.items()
    )
    if not expiries:
        qualify = f"\nQUALIFY row_number() OVER (PARTITION BY {keys}, __t) = 1" if deduplicate else ""
        return (
            f"SELECT {keys}, {ts},\n       " + ",\n       ".join(exprs) + "\n"
            f"FROM (SELECT *, {', '.join(prepared)} FROM {source})\n"
            f"WINDOW {window_defs}{qualify}"
        )
    # Events (``__e`` = 1) and, per window, a valueless row where each event leaves it (``__e`` null):
    # ``count(*)`` becomes ``count(__e)``; the other functions skip the nulls already.
    values = [c for c in spec.columns]
    source_cols = [_quote(k) for k in spec.entities] + ["__t", "1 AS __e"]
    source_cols += [_quote("__v_" + c) if c in floats else _quote(c) for c in values]
    names = [_quote("__v_" + c) if c in floats else _quote(c) for c in values]
    events = f"SELECT {', '.join(source_cols)} FROM (SELECT *, {', '.join(prepared)} FROM {source})"
    leaving = [
        f"SELECT {keys}, __t + {w // timedelta(microseconds=1)} AS __t, NULL AS __e"
        + "".join(f", NULL AS {n}" for n in names)
        + " FROM __events_only"
        for w in spec.windows
    ]
    exprs = [e.replace("count(*) OVER", "count(__e) OVER") for e in exprs]
    return (
        f"WITH __events_only AS ({events}),\n"
        f"__rows AS (SELECT * FROM __events_only UNION ALL {' UNION ALL '.join(leaving)})\n"
        f"SELECT {keys}, make_timestamp(__t)::TIMESTAMPTZ AS {ts},\n       " + ",\n       ".join(exprs) + ",\n"
        f"       max(CASE WHEN __e = 1 THEN __t END) OVER (PARTITION BY {keys} ORDER BY __t "
        "RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS __last_t\n"
        f"FROM __rows\n"
        f"WINDOW {window_defs}\n"
        f"QUALIFY row_number() OVER (PARTITION BY {keys}, __t ORDER BY __e NULLS LAST) = 1"
    )


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def compute_offline(
    events: pd.DataFrame | str | Path,
    spec: AggregationSpec,
    *,
    deduplicate: bool = False,
    expiries: bool = False,
    con: duckdb.DuckDBPyConnection | None = None,
) -> pd.DataFrame:
    """Every declared aggregate after every event: one row per event (row order unspecified).

    ``events`` is a DataFrame or a parquet path (read by DuckDB, never through pandas). The output
    has the entity keys, the event timestamp (as given) and one column per declaration: a feature
    table for Feast, point-in-time correct as of each event (see the module's semantics). A key or
    source column the events lack, a non-numeric column under sum/mean/min/max, or a missing
    timestamp is a ``ValueError`` naming it.
    """
    con = con or _connect()
    if isinstance(events, pd.DataFrame):
        con.register("__events", events)
        source = "__events"
    else:
        # can_have_nan: pyarrow leaves NaN out of a column's min/max statistics, and DuckDB would then
        # assume no NaN and fold ``isnan`` to false (duckdb/duckdb#7803, #25521): NaN would leak into sums.
        source = f"read_parquet({_sql_string(str(events))}, can_have_nan = true)"
    types = {row[0]: row[1] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    _check_columns(spec, types)
    ts = _quote(spec.timestamp)
    missing_ts = con.execute(f"SELECT count(*) FROM {source} WHERE {ts} IS NULL").fetchone()
    if missing_ts and missing_ts[0]:
        raise ValueError(f"{missing_ts[0]} events have no timestamp in {spec.timestamp!r}: drop or fix them first")
    floats = [c for c in spec.columns if types[c] in ("DOUBLE", "FLOAT")]
    return con.execute(offline_sql(spec, source, floats, deduplicate, expiries)).df()


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_NUMERIC_TYPES = re.compile(r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|U\w*INT|FLOAT|DOUBLE|DECIMAL.*|BOOLEAN)$")


def _check_columns(spec: AggregationSpec, types: Mapping[str, str]) -> None:
    for key in (*spec.entities, spec.timestamp):
        if key not in types:
            raise ValueError(f"events lack the key column {key!r}; they have {sorted(types)}")
    if not types[spec.timestamp].startswith(("TIMESTAMP", "DATE")):
        raise ValueError(f"timestamp column {spec.timestamp!r} is {types[spec.timestamp]}, not a timestamp")
    for agg in spec.aggregations:
        if agg.column is None:
            continue
        if agg.column not in types:
            raise ValueError(f"events lack column {agg.column!r} that aggregation {agg.output_name!r} reads")
        if agg.function in NUMERIC_FUNCTIONS and not _NUMERIC_TYPES.match(types[agg.column]):
            raise ValueError(
                f"aggregation {agg.output_name!r}: {agg.function} needs a numeric column, "
                f"{agg.column!r} is {types[agg.column]}"
            )


# -------------------------------------------------------------------------------------- incremental
def _micros(timestamp: datetime | pd.Timestamp | np.datetime64 | int) -> int:
    """Epoch microseconds (floored), naive read as UTC — what ``epoch_us`` gives offline; an int is taken as µs."""
    if isinstance(timestamp, int | np.integer):
        return int(timestamp)
    ts = pd.Timestamp(timestamp)
    if ts is pd.NaT:
        raise ValueError("event without a timestamp")
    return ts.value // 1000


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float | np.floating) and math.isnan(value)


class _Extreme:
    """Min (or max) over a sliding window: a monotonic deque of (time, value), O(1) amortized per event."""

    __slots__ = ("items", "sign")

    def __init__(self, sign: float) -> None:
        self.sign = sign  # +1 keeps the minimum at the front, -1 the maximum
        self.items: deque[tuple[int, float]] = deque()

    def add(self, t: int, v: float) -> None:
        key = self.sign * v
        while self.items and self.sign * self.items[-1][1] >= key:
            self.items.pop()
        self.items.append((t, v))

    def expire(self, cutoff: int) -> None:
        while self.items and self.items[0][0] <= cutoff:
            self.items.popleft()

    def value(self, cutoff: int) -> float:
        for t, v in self.items:  # without mutation: the first entry still inside the window
            if t > cutoff:
                return v
        return math.nan


class _WindowState:
    """One entity's events inside one window, with the running accumulators of its aggregations.

    Slots are the values the window's aggregations read: numeric slots (float, None when missing) feed
    sums/means/extremes; raw slots (the value as given, None when missing) feed distinct counts.
    """

    __slots__ = ("distinct", "events", "extremes", "n", "sums")

    def __init__(self, n_numeric: int, n_raw: int, extremes: list[tuple[int, float]]) -> None:
        self.events: deque[tuple[int, tuple[Any, ...], tuple[Any, ...]]] = deque()
        self.sums = [0.0] * n_numeric
        self.n = [0] * n_numeric
        self.distinct: list[dict[Any, int]] = [{} for _ in range(n_raw)]
        self.extremes = [(slot, _Extreme(sign)) for slot, sign in extremes]

    def add(self, t: int, nums: tuple[float | None, ...], raws: tuple[Any, ...]) -> None:
        self.events.append((t, nums, raws))
        for i, v in enumerate(nums):
            if v is not None:
                self.sums[i] += v
                self.n[i] += 1
        for i, v in enumerate(raws):
            if v is not None:
                counts = self.distinct[i]
                counts[v] = counts.get(v, 0) + 1
        for slot, extreme in self.extremes:
            v = nums[slot]
            if v is not None:
                extreme.add(t, v)

    def expire(self, cutoff: int) -> None:
        events = self.events
        while events and events[0][0] <= cutoff:
            _, nums, raws = events.popleft()
            for i, v in enumerate(nums):
                if v is not None:
                    self.n[i] -= 1
                    # Back to an exact zero when the window empties, so subtraction error cannot build up.
                    self.sums[i] = self.sums[i] - v if self.n[i] else 0.0
            for i, v in enumerate(raws):
                if v is not None:
                    counts = self.distinct[i]
                    if counts[v] == 1:
                        del counts[v]
                    else:
                        counts[v] -= 1
        for _, extreme in self.extremes:
            extreme.expire(cutoff)

    def snapshot(self, cutoff: int) -> tuple[int, list[float], list[int], list[int], dict[tuple[int, float], float]]:
        """(count, sums, non-missing counts, distinct counts, extremes by slot) as if expired at ``cutoff``,
        without changing the state (a query must not move an entity's clock)."""
        sums, n = list(self.sums), list(self.n)
        gone: list[dict[Any, int]] = [{} for _ in self.distinct]
        count = len(self.events)
        for t, nums, raws in self.events:
            if t > cutoff:
                break
            count -= 1
            for i, v in enumerate(nums):
                if v is not None:
                    n[i] -= 1
                    sums[i] = sums[i] - v if n[i] else 0.0
            for i, v in enumerate(raws):
                if v is not None:
                    gone[i][v] = gone[i].get(v, 0) + 1
        distinct = [
            len(counts) - sum(1 for v, k in gone[i].items() if counts[v] == k) for i, counts in enumerate(self.distinct)
        ]
        extremes = {(slot, extreme.sign): extreme.value(cutoff) for slot, extreme in self.extremes}
        return count, sums, n, distinct, extremes


@lru_cache(maxsize=256)
def _plan(spec: AggregationSpec) -> tuple[tuple[str, ...], tuple[tuple[int, tuple[tuple[str, str, int], ...]], ...]]:
    """The declarations by window, resolved once per spec (its columns and windows are derived on
    every access): output order, and per window (in microseconds) its (output, function, column index)."""
    columns = spec.columns
    return tuple(spec.output_names), tuple(
        (w // timedelta(microseconds=1),
         tuple((a.output_name, a.function, columns.index(a.column) if a.column else -1)
               for a in spec.aggregations if a.window == w))
        for w in spec.windows
    )  # fmt: skip


def aggregate_at(spec: AggregationSpec, events: Sequence[tuple[int, Sequence[Any]]], at: int) -> dict[str, float | int]:
    """Every declared aggregate at instant ``at`` (epoch microseconds) from one entity's events,
    given as (time, values in ``spec.columns`` order) **sorted by time**: the window
    ``(at - w, at]``, missing values (None, NaN) skipped as in SQL, sums by ``math.fsum``; events after ``at``
    are ignored. A third engine of the same definition, for a caller that holds an entity's events
    and needs one instant (a stream consumer rebuilding a row): no state kept, and each window's
    values of a column read once for all the aggregations over them."""
    order, by_window = _plan(spec)
    times = [t for t, _ in events]
    end = bisect_right(times, at)
    out: dict[str, float | int] = {}
    for window_us, aggs in by_window:
        inside = events[bisect_right(times, at - window_us, 0, end) : end]
        present: dict[int, list[Any]] = {}
        numbers: dict[int, list[float]] = {}
        for name, function, i in aggs:
            if function == "count":
                out[name] = len(inside)
                continue
            values = present.get(i)
            if values is None:
                values = present[i] = [x for _, v in inside if (x := v[i]) is not None and x == x]
            if function == "count_distinct":
                out[name] = len(set(values))
                continue
            floats = numbers.get(i)
            if floats is None:
                floats = numbers[i] = [float(v) for v in values]
            if not floats:
                out[name] = math.nan
            elif function == "sum":
                out[name] = math.fsum(floats)
            elif function == "mean":
                out[name] = math.fsum(floats) / len(floats)
            elif function == "min":
                out[name] = min(floats)
            else:
                out[name] = max(floats)
    return {name: out[name] for name in order}


class IncrementalAggregator:
    """The same declarations, updated one event at a time (what a stream consumer calls).

    State is per entity and per window: the events still inside the window, running sums and counts,
    monotonic deques for min/max and value counts for distinct counts — O(1) amortized per event and
    aggregation, memory proportional to the events inside the longest window. Events of one entity
    must come in non-decreasing time order (a late event is refused: its effect on already-published
    states could not be undone); different entities are independent.

    An entity is a key value, or a tuple of values when the spec has several keys.
    """

    def __init__(self, spec: AggregationSpec) -> None:
        self.spec = spec
        self._entities: dict[Hashable, tuple[int, list[_WindowState]]] = {}  # entity → (last time, states)
        self._windows_us = [w // timedelta(microseconds=1) for w in spec.windows]
        self._numeric: list[list[str]] = []  # per window: columns read as numbers
        self._raw: list[list[str]] = []  # per window: columns read as values (distinct counts)
        self._extremes: list[list[tuple[int, float]]] = []
        self._outputs: list[tuple[str, str, int, int]] = []  # (name, function, window index, slot)
        for w in spec.windows:
            aggs = [a for a in spec.aggregations if a.window == w]
            numeric = list(dict.fromkeys(a.column for a in aggs if a.function in NUMERIC_FUNCTIONS))
            raw = list(dict.fromkeys(a.column for a in aggs if a.function == "count_distinct"))
            extremes = {
                (numeric.index(a.column), 1.0 if a.function == "min" else -1.0)
                for a in aggs
                if a.function in ("min", "max")
            }
            self._numeric.append(numeric)  # type: ignore[arg-type]
            self._raw.append(raw)  # type: ignore[arg-type]
            self._extremes.append(sorted(extremes))
        for agg in spec.aggregations:
            wi = spec.windows.index(agg.window)
            if agg.function in NUMERIC_FUNCTIONS:
                slot = self._numeric[wi].index(agg.column)  # type: ignore[arg-type]
            elif agg.function == "count_distinct":
                slot = self._raw[wi].index(agg.column)  # type: ignore[arg-type]
            else:
                slot = -1
            self._outputs.append((agg.output_name, agg.function, wi, slot))
        self._columns = spec.columns

    def __len__(self) -> int:
        """Entities with state."""
        return len(self._entities)

    def _new_states(self) -> list[_WindowState]:
        return [
            _WindowState(len(num), len(raw), ext)
            for num, raw, ext in zip(self._numeric, self._raw, self._extremes, strict=True)
        ]

    def update(self, entity: Hashable, timestamp: Any, values: Mapping[str, Any]) -> dict[str, float | int]:
        """Add one event and return the entity's aggregates right after it (the event included).

        ``values`` must hold every source column (missing values as None/NaN); extra keys are ignored.
        """
        t = _micros(timestamp)
        try:
            row = {c: values[c] for c in self._columns}
        except KeyError as err:
            raise KeyError(f"event for entity {entity!r} lacks column {err.args[0]!r}") from None
        last, states = self._entities.get(entity, (None, None))
        if states is None:
            states = self._new_states()
        elif t < last:  # type: ignore[operator]
            raise ValueError(
                f"event for entity {entity!r} at {pd.Timestamp(t, unit='us')} is older than its last event at "
                f"{pd.Timestamp(last, unit='us')}: events of one entity must come in time order"
            )
        self._entities[entity] = (t, states)
        for wi, state in enumerate(states):
            nums = tuple(None if _missing(v := row[c]) else float(v) for c in self._numeric[wi])
            raws = tuple(None if _missing(v := row[c]) else v for c in self._raw[wi])
            state.add(t, nums, raws)
            state.expire(t - self._windows_us[wi])
        return self._read(states, t, mutated=True)

    def query(self, entity: Hashable, at: Any) -> dict[str, float | int]:
        """The entity's aggregates as of ``at`` without adding an event (the window ``(at - window, at]``).

        ``at`` must not precede the entity's last event (older events may be gone). An unknown entity has
        counts 0 and missing values elsewhere, like an entity whose events all left the windows.
        """
        t = _micros(at)
        last, states = self._entities.get(entity, (None, None))
        if states is None:
            states = self._new_states()
        elif t < last:  # type: ignore[operator]
            raise ValueError(
                f"query for entity {entity!r} at {pd.Timestamp(t, unit='us')} precedes its last event at "
                f"{pd.Timestamp(last, unit='us')}"
            )
        return self._read(states, t, mutated=False)

    def _read(self, states: list[_WindowState], t: int, mutated: bool) -> dict[str, float | int]:
        snaps = []
        for wi, state in enumerate(states):
            cutoff = t - self._windows_us[wi]
            if mutated:  # already expired at t: read the accumulators as they are
                snaps.append(
                    (
                        len(state.events),
                        state.sums,
                        state.n,
                        [len(c) for c in state.distinct],
                        {(slot, e.sign): e.value(cutoff) for slot, e in state.extremes},
                    )
                )
            else:
                snaps.append(state.snapshot(cutoff))
        out: dict[str, float | int] = {}
        for name, function, wi, slot in self._outputs:
            count, sums, n, distinct, extremes = snaps[wi]
            if function == "count":
                out[name] = count
            elif function == "count_distinct":
                out[name] = distinct[slot]
            elif function == "sum":
                out[name] = sums[slot] if n[slot] else math.nan
            elif function == "mean":
                out[name] = sums[slot] / n[slot] if n[slot] else math.nan
            else:
                out[name] = extremes[(slot, 1.0 if function == "min" else -1.0)]
        return out

    def prune(self, now: Any) -> int:
        """Forget entities with no event inside the longest window as of ``now``; returns how many.

        Their aggregates as of ``now`` are the empty ones (:meth:`query` answers the same for them), so a
        long-running consumer's memory follows the active entities, not every entity ever seen.
        """
        cutoff = _micros(now) - max(self._windows_us)
        stale = [e for e, (last, _) in self._entities.items() if last <= cutoff]
        for entity in stale:
            del self._entities[entity]
        return len(stale)
