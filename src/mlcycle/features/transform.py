"""The project's table → feature tables (parquet sources for Feast), point in time.

Two ways, one interface. By default the tables are the project's declared window aggregations
(``features.aggregations``), one table per declaration, computed by the declarative engine. A
project whose features need more names its own function in ``table.transformations``
(``module:function`` in the project directory): it receives the *validated* table and the config
and returns ``{table name: frame}``; it may call :func:`declared_tables` for the declared part and
add its own tables. That is the way out when declarations are not enough.

Point-in-time rule for aggregation tables: the state after an event at ``t`` is stamped
``t + 1 µs``, so a training row for an event at ``t`` joins the state left by earlier events only,
and the latest state, materialized online, is what a request arriving after it sees.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlcycle.features.aggregations import AggregationSpec, compute_offline
from mlcycle.project.config import ProjectConfig
from mlcycle.project.hooks import project_object

Transformations = Callable[[pd.DataFrame, ProjectConfig], Mapping[str, pd.DataFrame]]
STATE_DELAY = pd.Timedelta(microseconds=1)
# The time column of every feature table (the Feast sources' timestamp_field), whatever the
# project's table calls its event time.
FEATURE_TIMESTAMP = "event_timestamp"
# Each declared table also says when its entity's last event was (``<table>_last_event_unix``):
# a short window's count of 0 means something else an hour after the last event than a month after.
LAST_EVENT_SUFFIX = "_last_event_unix"


def unix_seconds(ts: pd.Series) -> np.ndarray:
    """Whole seconds since the epoch, whatever the series' unit (ns, us, ms, s)."""
    utc = pd.to_datetime(ts, utc=True)
    return ((utc - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype="int64")


def aggregation_table(
    events: pd.DataFrame, spec: AggregationSpec, con: Any = None, last_event: str | None = None
) -> pd.DataFrame:
    """The declared aggregates after each event (window ``(t - w, t]``), stamped one microsecond
    later. Events of one entity at the same instant share one state: one row per (entity, time),
    so the point-in-time join has no ties. With ``spec.expire_on_time``, also the state at each
    instant an event leaves a window, stamped the same way. ``last_event`` names a column to add:
    the entity's latest event at or before each row (Unix seconds)."""
    columns = sorted({*spec.entities, spec.timestamp, *spec.columns})
    expiries = spec.expire_on_time
    out = compute_offline(events[columns], spec, deduplicate=True, expiries=expiries, con=con)
    stamped = pd.to_datetime(out.pop(spec.timestamp), utc=True)
    out[FEATURE_TIMESTAMP] = stamped + STATE_DELAY
    if expiries:
        last_us = out.pop("__last_t").to_numpy(dtype="int64")
        if last_event:
            out[last_event] = last_us // 1_000_000
    elif last_event:
        out[last_event] = unix_seconds(stamped)
    return out.sort_values([FEATURE_TIMESTAMP, *spec.entities], kind="stable").reset_index(drop=True)


def last_event_column(table: str, spec: AggregationSpec) -> str:
    """The column of ``table`` that says when its entity's last event was (Unix seconds)."""
    return spec.last_event_column or table + LAST_EVENT_SUFFIX


def declared_tables(events: pd.DataFrame, cfg: ProjectConfig, con: Any = None) -> dict[str, pd.DataFrame]:
    """One table per declaration in ``features.aggregations``, over the project's event time."""
    tables = {}
    for name, spec in cfg.features.aggregations.items():
        if spec.timestamp != cfg.table.timestamp and spec.timestamp not in events:
            spec = spec.model_copy(update={"timestamp": cfg.table.timestamp})
        tables[name] = aggregation_table(events, spec, con, last_event=last_event_column(name, spec))
    return tables


def build_tables(events: pd.DataFrame, cfg: ProjectConfig) -> dict[str, pd.DataFrame]:
    """The project's feature tables: its own transformations if it names them, else its declarations."""
    if cfg.table.transformations:
        hook: Transformations = project_object(cfg, cfg.table.transformations)
        tables = dict(hook(events, cfg))
    else:
        tables = declared_tables(events, cfg)
    for name, frame in tables.items():
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"transformations returned {type(frame).__name__} for table '{name}': expected a DataFrame")
    return tables


def write_tables(tables: Mapping[str, pd.DataFrame], directory: str | Path) -> dict[str, Path]:
    """Each table atomically (temp file + rename), so a reader never sees half a file. Microsecond
    timestamps: DuckDB reads nanosecond parquet as TIMESTAMPTZ_NS, which Feast cannot cast."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in tables.items():
        path = directory / f"{name}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        frame.to_parquet(tmp, index=False, coerce_timestamps="us")
        tmp.replace(path)
        paths[name] = path
    return paths
