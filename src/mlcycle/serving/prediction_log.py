"""The prediction log: every scored request, for monitoring and canary analysis to read.

Writing is off the request path: ``append`` puts records on an in-memory queue and returns; a
background thread writes them in batches (every ``flush_rows`` records or ``flush_seconds``) as
parquet files partitioned by day (``date=YYYY-MM-DD/part-….parquet``). Each file is written to a
temporary name and renamed, so a reader never sees half a file. ``close`` drains the queue.

The log holds who asked what, with the answer: its files are the service user's alone (``FILE_MODE``,
directories ``DIR_MODE``), whatever the umask — a 0644 journal let every user of the machine read it.
"""

from __future__ import annotations

import collections
import fcntl
import json
import logging
import os
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

# The same columns for every project: who (entity keys) and what (the request's own fields) as
# JSON text, so one log and one table serve any use case; readers expand them (``expand``).
COLUMNS = [
    "request_id", "logged_at", "event_id", "entities", "request", "request_unix", "variant", "model_version",
    "shadow", "score", "decision", "threshold", "latency_ms", "features_missing", "features", "error",
]  # fmt: skip
JSON_COLUMNS = ("entities", "request")


JOURNAL_DIR = "_journal"
# A shadow answer is logged under the answered request's id plus this, so the two pair exactly.
SHADOW_SUFFIX = "-shadow"
FILE_MODE = 0o600
DIR_MODE = 0o700


def _private_dir(path: Path) -> None:
    """Create ``path`` (and parents) owner-only; parents that already exist are left as they are."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


class PredictionLog:
    """Acknowledged means durable: ``append`` writes the records to a journal file (one ``write``
    into the kernel's page cache, so a killed process loses nothing it returned an answer for)
    before it returns; a background thread turns them into parquet in batches and deletes the
    journal segments it has written. A journal left by a dead process (its lock released) is
    recovered into parquet when the next log opens on the directory, by the next reader, or by
    ``recover``.

    A segment stays locked until its records are in parquet and it is deleted: a lock released
    earlier would let a reader take a live writer's segment for a dead one's and write its records
    a second time. A batch that fails to write stays queued and locked, and is tried again."""

    def __init__(self, directory: str | Path, flush_rows: int = 2000, flush_seconds: float = 1.0):
        self.directory = Path(directory)
        _private_dir(self.directory)
        self.journal_dir = self.directory / JOURNAL_DIR
        _private_dir(self.journal_dir)
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        # Records wait in a deque; the writer wakes every ``flush_seconds``, or when ``flush_rows``
        # are waiting, not per record (a queue woke it per request: a thread switch and the GIL
        # handed over on every answer).
        self._pending: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        self._wake = threading.Event()
        self._closing = False
        self._lock = threading.Lock()
        self._written = 0
        self._name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._segment = 0
        self._fd = self._open_segment()
        self._finished: dict[int, int] = {}  # segment -> its fd, still locked, until it is written
        recover(self.directory)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def _segment_path(self, segment: int) -> Path:
        return self.journal_dir / f"{self._name}-{segment:08d}.jsonl"

    def _open_segment(self) -> int:
        """A new segment, locked before it appears under its name: a reader that found it unlocked
        in between would take it for a dead writer's (and this writer's lock would then fail)."""
        path = self._segment_path(self._segment)
        staging = path.with_name(f".{path.name}.new")  # not a ``*.jsonl``: no reader looks at it
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held until the segment is written and deleted
        staging.rename(path)
        return fd

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        records = [dict(r) for r in records]
        if not records:
            return
        data = "".join(json.dumps(r, default=_json_default) + "\n" for r in records).encode()
        with self._lock:
            os.write(self._fd, data)
            segment = self._segment
            self._pending.extend((segment, record) for record in records)
        if len(self._pending) >= self.flush_rows:
            self._wake.set()

    @property
    def written(self) -> int:
        """Records in parquet so far (what a reader of the log can already see)."""
        return self._written

    def close(self, timeout: float = 10.0) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)

    def _rotate(self) -> int:
        """Start a new journal segment; returns the last one whose records are all queued. The
        finished segment keeps its lock (``_finished``) until it is written and deleted."""
        with self._lock:
            self._finished[self._segment] = self._fd
            done = self._segment
            self._segment += 1
            self._fd = self._open_segment()
        return done

    def _release(self, upto: int, delete: bool) -> None:
        """Unlock the finished segments up to ``upto``; deleted first, so no reader ever finds one
        of them unlocked (``recover`` skips a file that is gone by the time it holds the lock)."""
        for segment in [s for s in self._finished if s <= upto]:
            if delete:
                self._segment_path(segment).unlink(missing_ok=True)
            os.close(self._finished.pop(segment))

    def _run(self) -> None:
        pending: list[tuple[int, dict[str, Any]]] = []
        closing = failed = False
        done = -1
        while not closing:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            closing = self._closing
            if not (self._pending or pending or closing):
                continue
            if not failed or closing:  # a retry keeps the segments it has: one open file per round would pile up
                done = self._rotate()
            # Everything of the finished segments is in the deque by now (appended under the lock).
            while self._pending:
                pending.append(self._pending.popleft())
            failed = not self._flush([r for segment, r in pending if segment <= done])
            if not failed:
                pending = [(segment, r) for segment, r in pending if segment > done]
                self._release(done, delete=True)
            # else: the records stay queued and their segments locked, for the next round
        if not pending and not self._pending:
            with self._lock:
                self._segment_path(self._segment).unlink(missing_ok=True)
                os.close(self._fd)
        else:  # never written here: unlocked, the journal is any reader's to recover
            self._release(self._segment - 1, delete=False)
            os.close(self._fd)

    def _flush(self, batch: list[dict[str, Any]]) -> bool:
        if not batch:
            return True
        try:
            _write_part(self.directory, pd.DataFrame(batch), datetime.now(UTC).strftime("%Y-%m-%d"))
            self._written += len(batch)
            return True
        except Exception:  # a broken disk must not take serving down, but it must be seen
            log.exception("prediction log: %d records stay in the journal, not written to %s", len(batch),
                          self.directory)  # fmt: skip
            return False


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def _write_part(directory: Path, frame: pd.DataFrame, day: str) -> None:
    frame = frame.reindex(columns=COLUMNS)
    part = directory / f"date={day}"
    _private_dir(part)
    name = f"part-{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = part / f".{name}.tmp"
    # Created owner-only from the start (pyarrow would create it 0666 minus the umask).
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "wb") as handle:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), handle)
    tmp.replace(part / name)


def recover(directory: str | Path) -> int:
    """Turn the journals of dead writers into parquet; returns the records recovered. A journal
    whose lock is held belongs to a live writer and is left alone; a torn last line (the process
    died mid-write, before it could answer) is dropped."""
    journal_dir = Path(directory) / JOURNAL_DIR
    recovered = 0
    for path in sorted(journal_dir.glob("*.jsonl")) if journal_dir.is_dir() else []:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    continue
            except (BlockingIOError, FileNotFoundError):
                continue  # a live writer's, or another reader recovered it first
            records = []
            for line in path.read_text().splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
            if records:
                frame = pd.DataFrame(records)
                frame["logged_at"] = pd.to_datetime(frame["logged_at"], utc=True, format="ISO8601")
                for day, part in frame.groupby(frame["logged_at"].dt.strftime("%Y-%m-%d")):
                    _write_part(Path(directory), part, str(day))
                recovered += len(records)
                log.warning("prediction log: recovered %d records from %s", len(records), path.name)
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return recovered


def read_predictions(directory: str | Path, since: datetime | None = None) -> pd.DataFrame:
    """Every logged prediction (optionally since a time), oldest first.

    Dead writers' journals are recovered first: a service killed before it could flush (a crash, a
    stop that ran out of time) would otherwise hide its last answers from monitoring until the next
    service started."""
    directory = Path(directory)
    recover(directory)
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
    days = pd.to_datetime(frame["logged_at"], utc=True).dt.strftime("%Y-%m-%d")
    for day, part in frame.groupby(days, sort=True):
        _write_part(Path(directory), part, str(day))
    return len(frame)


def expand(frame: pd.DataFrame) -> pd.DataFrame:
    """The entity keys and request fields (JSON text in the log) as columns of their own, beside
    the log's columns (which win a name clash)."""
    parts = [frame]
    for column in JSON_COLUMNS:
        if column in frame and len(frame):
            values = pd.DataFrame.from_records([json.loads(v) if v else {} for v in frame[column]], index=frame.index)
            parts.append(values.drop(columns=[c for c in values.columns if c in frame.columns]))
    return pd.concat(parts, axis=1) if len(parts) > 1 else frame
