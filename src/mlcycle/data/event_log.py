"""Events that arrived on the stream, kept as the offline source's newest part.

The stream consumer appends every applied event here (one parquet file per batch, written to a
temporary name and renamed, so a reader never sees half a file) *before* it acknowledges the batch.
A consumer killed after the write and before the acknowledgement gets the batch again and writes
it again: delivery is at-least-once, so readers keep one row per event id (the first written).
That makes the next feature build and training set contain each streamed event exactly once.

Stream events carry no label (it arrives later): they feed the feature tables (window aggregates
over every event) and never a training row on their own.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd

from mlcycle.data import privacy
from mlcycle.project.config import ProjectConfig

PART_GLOB = "part-*.parquet"


def events_dir(cfg: ProjectConfig) -> Path:
    return cfg.data_path / "stream" / "events"


SINK = "event_log"


def check_privacy(cfg: ProjectConfig) -> None:
    """At the consumer's start: the key when a rule hashes, and no rule on a column the feature build
    keys or orders events by (entity keys, event id, time): those stay as the table holds them."""
    privacy.check_writer(cfg.privacy, SINK)
    t = cfg.table
    keyed = [c for c in privacy.rules(cfg.privacy, SINK) if c in {*t.entities, t.event_id, t.timestamp}]
    if keyed:
        raise ValueError(
            f"privacy: {', '.join(keyed)} is a key of the feature build and must be kept in the event log (the "
            f"offline source the next features build reads): set event_log: keep for it in mlcycle.yaml"
        )


def append_events(cfg: ProjectConfig, frame: pd.DataFrame, first_id: str) -> Path | None:
    """One batch of applied events as a new part file; ``first_id`` (the batch's first stream id)
    orders the parts by arrival. Written as the project's privacy rules allow (``event_log``)."""
    if frame.empty:
        return None
    frame = privacy.redact(frame, cfg.privacy, SINK)
    directory = events_dir(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"part-{first_id.replace('-', '_')}-{uuid.uuid4().hex[:8]}"
    tmp = directory / f".{stem}.tmp"
    frame.to_parquet(tmp, index=False, coerce_timestamps="us", allow_truncated_timestamps=True)
    os.replace(tmp, directory / f"{stem}.parquet")
    return directory / f"{stem}.parquet"


def read_events(cfg: ProjectConfig) -> pd.DataFrame:
    """Every streamed event once (the first copy of a redelivered one), in arrival order."""
    parts = sorted(events_dir(cfg).glob(PART_GLOB)) if events_dir(cfg).is_dir() else []
    if not parts:
        return pd.DataFrame()
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    event_id = cfg.table.event_id
    if event_id and event_id in frame:
        frame = frame.drop_duplicates(subset=[event_id], keep="first", ignore_index=True)
    return frame


def with_streamed(cfg: ProjectConfig, table: pd.DataFrame) -> pd.DataFrame:
    """The table plus the streamed events it does not hold yet (by event id): the events a feature
    build aggregates over. Columns a streamed event lacks (its label) are missing; the table's
    representation (dtypes) is kept where the values allow it."""
    streamed = read_events(cfg)
    event_id = cfg.table.event_id
    if streamed.empty or not event_id or event_id not in table:
        return table
    streamed = streamed[~streamed[event_id].isin(table[event_id])]
    if streamed.empty:
        return table
    streamed = streamed[[c for c in table.columns if c in streamed.columns]]
    for column in streamed.columns:
        if isinstance(table[column].dtype, pd.DatetimeTZDtype):
            streamed[column] = pd.to_datetime(streamed[column], utc=True).astype(table[column].dtype)
        elif isinstance(table[column].dtype, pd.CategoricalDtype):
            streamed[column] = streamed[column].astype("object")
    out = pd.concat([table.astype({c: "object" for c in table.columns if isinstance(table[c].dtype,
                     pd.CategoricalDtype)}), streamed], ignore_index=True)  # fmt: skip
    for column in table.columns:
        if isinstance(table[column].dtype, pd.CategoricalDtype):
            out[column] = out[column].astype("category")
    return out
