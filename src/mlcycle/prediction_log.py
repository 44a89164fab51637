"""The prediction log: every scored request, for monitoring and canary analysis to read.

Writing is off the request path: ``append`` puts records on an in-memory queue and returns; a
background thread writes them in batches (every ``flush_rows`` records or ``flush_seconds``) as
parquet files partitioned by day (``date=YYYY-MM-DD/part-….parquet``). Each file is written to a
temporary name and renamed, so a reader never sees half a file. ``close`` drains the queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("mlcycle.prediction_log")

COLUMNS = [
    "request_id", "logged_at", "user_id", "merchant_id", "transaction_id", "amount", "country",
    "merchant_category", "channel", "request_unix", "variant", "model_version", "shadow", "score",
    "decision", "threshold", "latency_ms", "features_missing", "features", "error",
]  # fmt: skip


class PredictionLog:
    def __init__(self, directory: str | Path, flush_rows: int = 2000, flush_seconds: float = 1.0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._written = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        for record in records:
            self._queue.put(dict(record))

    @property
    def written(self) -> int:
        """Records on disk so far (what a reader of the log can already see)."""
        return self._written

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        batch: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.flush_seconds
        while True:
            try:
                item = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                item = ...
            if item is None:
                self._flush(batch)
                return
            if item is not ...:
                batch.append(item)
            if len(batch) >= self.flush_rows or (batch and time.monotonic() >= deadline):
                self._flush(batch)
                batch = []
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + self.flush_seconds

    def _flush(self, batch: list[dict[str, Any]]) -> None:
        if not batch:
            return
        try:
            frame = pd.DataFrame(batch).reindex(columns=COLUMNS)
            day = datetime.now(UTC).strftime("%Y-%m-%d")
            part = self.directory / f"date={day}"
            part.mkdir(parents=True, exist_ok=True)
            name = f"part-{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = part / f".{name}.tmp"
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
            tmp.replace(part / name)
            self._written += len(batch)
        except Exception:  # a broken disk must not take serving down, but it must be seen
            log.exception("prediction log: %d records could not be written to %s", len(batch), self.directory)


def read_predictions(directory: str | Path, since: datetime | None = None) -> pd.DataFrame:
    """Every logged prediction (optionally since a time), oldest first."""
    directory = Path(directory)
    files = sorted(directory.glob("date=*/part-*.parquet"))
    if since is not None:
        day = since.astimezone(UTC).strftime("%Y-%m-%d")
        files = [f for f in files if f.parent.name >= f"date={day}"]
    if not files:
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    frame["logged_at"] = pd.to_datetime(frame["logged_at"], utc=True)
    if since is not None:
        frame = frame[frame["logged_at"] >= pd.Timestamp(since)]
    return frame.sort_values("logged_at", kind="stable").reset_index(drop=True)


def write_frame(directory: str | Path, frame: pd.DataFrame) -> int:
    """Write already-scored records (a backfill) into the day partitions of their ``logged_at``."""
    directory = Path(directory)
    frame = frame.reindex(columns=COLUMNS)
    days = pd.to_datetime(frame["logged_at"], utc=True).dt.strftime("%Y-%m-%d")
    for day, part in frame.groupby(days, sort=True):
        folder = directory / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = folder / f".{name}.tmp"
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), tmp)
        tmp.replace(folder / name)
    return len(frame)
