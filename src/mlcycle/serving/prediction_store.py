"""Where the prediction log lives, by profile: parquet files (``local``) or a PostgreSQL table (``scale``).

Serving, the rollout flow, monitoring and the CLI go through ``open_prediction_log`` /
``read_logged_predictions`` / ``write_logged_frame`` and never name a backend. Profile ``scale``
runs several scoring replicas on several hosts: files on one host's disk would give each reader a
partial log, so every replica inserts into one table and every reader queries it.

``SqlPredictionLog`` has ``PredictionLog``'s interface (``append`` / ``written`` / ``close``) and
keeps ``append`` off the request path the same way: records go on an in-memory queue and a
background thread inserts them in batches (every ``flush_rows`` records or ``flush_seconds``), one
transaction per batch, so a reader never sees half a batch. A batch that cannot be inserted
(PostgreSQL restarting) is kept and retried with the next one, up to ``max_pending`` records;
beyond that the oldest are dropped and logged — serving must not run out of memory waiting for a
database. Records queued but not yet inserted are lost if the process dies (at most
``flush_seconds`` of traffic): the local journal of ``mlcycle.prediction_log`` covers files only.

Rows read back have the columns and types of ``read_predictions``: the ``features`` column stays
the JSON text the scorer wrote, so the monitoring and canary code read both backends alike.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import pandas as pd
import sqlalchemy as sa

from mlcycle import settings as scale
from mlcycle.data import privacy
from mlcycle.project.config import ProjectConfig
from mlcycle.serving.prediction_log import (
    COLUMNS,
    SHADOW_SUFFIX,
    PredictionLog,
    expand,
    read_predictions,
    write_frame,
)

log = logging.getLogger("mlcycle.prediction_store")

TABLE = "mlcycle_predictions"


class PredictionWriter(Protocol):
    """What the scorer needs from a prediction log, whichever backend holds it."""

    def append(self, records: Iterable[Mapping[str, Any]]) -> None: ...

    @property
    def written(self) -> int: ...

    def close(self, timeout: float = 10.0) -> None: ...


def predictions_table(metadata: sa.MetaData | None = None) -> sa.Table:
    """The table: one column per ``COLUMNS`` entry, plus an id that orders rows of the same instant."""
    return sa.Table(
        TABLE,
        metadata or sa.MetaData(),
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("event_id", sa.String(128), index=True),
        sa.Column("entities", sa.Text),  # JSON text, as in the parquet log
        sa.Column("request", sa.Text),
        sa.Column("request_unix", sa.BigInteger),
        sa.Column("variant", sa.String(32)),
        sa.Column("model_version", sa.String(32)),
        sa.Column("shadow", sa.Boolean),
        sa.Column("score", sa.Float),
        sa.Column("decision", sa.Boolean),
        sa.Column("threshold", sa.Float),
        sa.Column("latency_ms", sa.Float),
        sa.Column("features_missing", sa.Text),
        sa.Column("features", sa.Text),  # JSON text, as in the parquet log
        sa.Column("error", sa.Text),
    )


@lru_cache(maxsize=8)
def _engine_and_table(url: str) -> tuple[sa.Engine, sa.Table]:
    """One engine (connection pool) per database and process, the table created if missing."""
    scale.ensure_database(url)
    engine = sa.create_engine(url, pool_pre_ping=True)
    table = predictions_table()
    table.metadata.create_all(engine, checkfirst=True)
    return engine, table


def _plain(value: Any) -> Any:
    """A value psycopg can send: numpy scalars as Python ones, NaN/NaT/NA as NULL."""
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value


def _rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{c: _plain(r.get(c)) for c in COLUMNS} for r in records]


class SqlPredictionLog:
    """``PredictionLog``'s interface over a SQL table (see the module docstring)."""

    def __init__(
        self, url: str, flush_rows: int = 2000, flush_seconds: float = 1.0, max_pending: int = 200_000
    ) -> None:
        # No connection here: the database is reached from the writer thread, so a service starts
        # (and says why it is not ready) while PostgreSQL is down, instead of crashing in __init__.
        self.url = url
        self.flush_rows, self.flush_seconds, self.max_pending = flush_rows, flush_seconds, max_pending
        # Records wait in a deque; the writer wakes every ``flush_seconds``, or when ``flush_rows`` wait
        # (a queue woke it once per record: a thread switch on every answer).
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self._closing = False
        self._written = 0
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="prediction-log-sql", daemon=True)
        self._thread.start()

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        self._pending.extend(dict(record) for record in records)
        # While the database fails, retry once per interval only, not at every record past flush_rows.
        if len(self._pending) >= self.flush_rows and not self._failing:
            self._wake.set()

    @property
    def written(self) -> int:
        """Records committed so far (what a reader of the table can already see)."""
        return self._written

    def close(self, timeout: float = 10.0) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        pending: list[dict[str, Any]] = []
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            closing = self._closing
            while self._pending:
                pending.append(self._pending.popleft())
            if closing:
                if left := self._flush(pending):
                    log.error("prediction log: closing with %d records not inserted; they are lost", len(left))
                return
            pending = self._flush(pending)

    def _flush(self, pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert ``pending`` in one transaction; returns what is left to retry (nothing on success)."""
        if not pending:
            return pending
        try:
            self._insert(_rows(pending))
        except Exception as exc:  # a database outage must not take serving down, but it must be seen
            if not self._failing:  # the first failure with its traceback, then one line per retry
                log.exception("prediction log: %d records not inserted into %s, retrying", len(pending), TABLE)
            else:
                log.warning("prediction log: %d records waiting for %s: %s", len(pending), TABLE, exc)
            self._failing = True
            if len(pending) > self.max_pending:
                dropped = len(pending) - self.max_pending
                log.error("prediction log: %d oldest records dropped (more than %d waiting)", dropped, self.max_pending)
                pending = pending[dropped:]
            return pending
        if self._failing:
            log.warning("prediction log: inserting into %s again (%d records caught up)", TABLE, len(pending))
            self._failing = False
        self._written += len(pending)
        return []

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        """One transaction: a reader sees the whole batch or none of it.

        On PostgreSQL through psycopg, one ``COPY ... FROM STDIN``: an ``executemany`` of a thousand
        ``INSERT`` statements cost the database (on the same cores as the service, on a small host)
        and the writer thread several times more, and took throughput from the requests."""
        engine, table = _engine_and_table(self.url)  # retried on the next batch if this fails
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
                copy_rows(conn.connection.driver_connection, rows)
            else:
                conn.execute(table.insert(), rows)


def copy_rows(connection: Any, rows: list[dict[str, Any]]) -> None:
    """``rows`` into the table by ``COPY`` on a psycopg connection, inside its open transaction."""
    statement = f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN"  # our own names: plain identifiers
    with connection.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row([row[c] for c in COLUMNS])


def read_sql_predictions(url: str, since: datetime | None = None) -> pd.DataFrame:
    """Every logged prediction in the table (optionally since a time), oldest first — the frame
    ``read_predictions`` returns for the parquet log."""
    engine, table = _engine_and_table(url)
    query = sa.select(*(table.c[c] for c in COLUMNS)).order_by(table.c.logged_at, table.c.id)
    if since is not None:
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        query = query.where(table.c.logged_at >= since)
    with engine.connect() as conn:
        frame = pd.DataFrame(conn.execute(query).all(), columns=COLUMNS)
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    frame["logged_at"] = pd.to_datetime(frame["logged_at"], utc=True)
    for column in ("score", "threshold", "latency_ms"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame


def write_sql_frame(url: str, frame: pd.DataFrame) -> int:
    """Insert already-scored records (a backfill) in one transaction."""
    engine, table = _engine_and_table(url)
    rows = _rows(frame.reindex(columns=COLUMNS).to_dict("records"))
    with engine.begin() as conn:
        for start in range(0, len(rows), 10_000):
            conn.execute(table.insert(), rows[start : start + 10_000])
    return len(rows)


# ----------------------------------------------------------------------------- privacy
SINK = "prediction_log"
LOGGED_JSON = ("entities", "request", "features")


def redact_record(record: Mapping[str, Any], cfg: ProjectConfig, key: bytes | None) -> dict[str, Any]:
    """One log row as the project's privacy rules let the prediction log keep it: the tagged fields
    of its JSON columns and, when the event id is tagged, the event id."""
    out = dict(record)
    policy = cfg.privacy
    for column in LOGGED_JSON:
        out[column] = privacy.redact_json(out.get(column), policy, SINK, key)
    event_id = cfg.table.event_id
    if event_id and out.get("event_id") is not None:
        out["event_id"] = privacy.redact_mapping({event_id: out["event_id"]}, policy, SINK, key).get(event_id)
    return out


class RedactingWriter:
    """A prediction log writer behind the project's privacy rules and capture rate: a record is
    redacted (and sampled) before the writer sees it, so neither its journal nor its table nor its
    parquet ever holds a clear value the rules hash or drop."""

    def __init__(self, inner: PredictionWriter, cfg: ProjectConfig, key: bytes | None) -> None:
        self.inner, self.cfg, self.key = inner, cfg, key
        self.rate = cfg.privacy.capture.rate

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        kept = [r for r in records if privacy.sampled(str(r.get("request_id", "")), self.rate, SHADOW_SUFFIX)]
        if kept:
            self.inner.append([redact_record(r, self.cfg, self.key) for r in kept])

    @property
    def written(self) -> int:
        return self.inner.written

    def close(self, timeout: float = 10.0) -> None:
        self.inner.close(timeout)


def _guarded(cfg: ProjectConfig) -> tuple[bool, bytes | None]:
    """Whether the log needs the privacy wrapper, and the key (``MissingKey`` at start when a hash
    rule has none: a writer that would write clear values never starts)."""
    key = privacy.pii_key(cfg.privacy, (SINK,))
    return bool(privacy.rules(cfg.privacy, SINK)) or cfg.privacy.capture.rate < 1, key


# ----------------------------------------------------------------------------- by profile
def open_prediction_log(cfg: ProjectConfig, **options: Any) -> PredictionWriter:
    """The project's prediction log writer: parquet under data/predictions, or the table; behind the
    project's privacy rules when it declares any."""
    guarded, key = _guarded(cfg)
    writer: PredictionWriter
    if cfg.profile == "scale":
        writer = SqlPredictionLog(cfg.scale.tracking_uri, **options)
    else:
        writer = PredictionLog(cfg.predictions_dir, **options)
    return RedactingWriter(writer, cfg, key) if guarded else writer


def read_logged_predictions(cfg: ProjectConfig, since: datetime | None = None) -> pd.DataFrame:
    """Every prediction the project logged (optionally since a time), oldest first."""
    if cfg.profile == "scale":
        return expand(read_sql_predictions(cfg.scale.tracking_uri, since))
    return expand(read_predictions(cfg.predictions_dir, since))


def write_logged_frame(cfg: ProjectConfig, frame: pd.DataFrame) -> int:
    """Write already-scored records (a backfill) where the project's readers will find them."""
    guarded, key = _guarded(cfg)
    if guarded:
        frame = pd.DataFrame([redact_record(r, cfg, key) for r in frame.to_dict("records")], columns=frame.columns)
    if cfg.profile == "scale":
        return write_sql_frame(cfg.scale.tracking_uri, frame)
    return write_frame(cfg.predictions_dir, frame)
