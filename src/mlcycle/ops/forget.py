"""``mlcycle forget ENTITY=KEY``: one entity's rows out of every store mlcycle keeps them in.

An erasure request ("forget customer 42") has to reach every copy mlcycle made, and say plainly
where copies remain that it may not touch. Per store:

- **prediction log** (profile local: the day partitions, rewritten without the entity's rows; a
  dead writer's journal is recovered into parquet first, a live writer's journal is searched and,
  if it holds the entity, the run is reported incomplete. Profile scale: the rows deleted, then
  ``VACUUM`` so the dead tuples go from the table's files too);
- **online store** (Feast's SQLite tables with ``secure_delete`` and a WAL checkpoint, so the
  bytes go from the file and not only from the index; Redis: the entity's hash);
- **event sets** (the stream consumer's per-entity state in Redis, its version keys and expiry
  timer) and the **stream entries** that carry the entity (events, dead letters); on the local
  broker the append-only file is rewritten, or the deleted commands would stay in it;
- **offline event log** and the **feature tables** mlcycle built (rewritten without the rows).

A row matches when the entity column holds the key (as text: ``7``, ``7.0`` and ``"7"`` are one
key, as ``privacy`` hashes them) or the key's HMAC token where a sink hashes the column.

What it does not change, and says: training snapshots (MLflow artifacts a registered version was
trained on: ``reproduce`` needs them; archiving the version lets retention expire them), and the
inputs mlcycle reads but does not own (the project's table): their rows are counted so the owner
can remove them at the source before the next ``features build``.

The promotion log records who asked and what was removed, naming the entity's column and a
reference (the key's HMAC token when ``MLCYCLE_PII_KEY`` is set, else a random reference printed
once to the operator) — never the key itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from mlcycle import settings, storage
from mlcycle.data import event_log, privacy
from mlcycle.project.config import ProjectConfig
from mlcycle.registry import aliases as registry
from mlcycle.registry import governance
from mlcycle.registry.tracking import SNAPSHOT_ARTIFACT

ACTION = "forget"
FILE_MODE = 0o600


class ForgetError(ValueError):
    """The request cannot be carried out as given (an entity that is not a key, a key found nowhere)."""


@dataclass
class Removed:
    store: str
    count: int = 0
    unit: str = "rows"
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        extra = f" ({'; '.join(self.notes)})" if self.notes else ""
        return f"{self.store}: removed {self.count} {self.unit}{extra}"


@dataclass
class SnapshotHit:
    """A training snapshot that still holds the entity, and the versions trained on it."""

    run_id: str
    rows: int
    versions: list[tuple[str, str]]  # (version, approval state)


@dataclass
class ForgetReport:
    entity: str
    reference: str
    removed: list[Removed]
    snapshots: list[SnapshotHit]
    inputs: dict[str, int]  # an input mlcycle reads (not its own) → rows of the entity it holds
    incomplete: list[str]  # what could not be reached: the request is not done until these are

    @property
    def total(self) -> int:
        return sum(r.count for r in self.removed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "reference": self.reference,
            "removed": {r.store: {"count": r.count, "unit": r.unit, "notes": r.notes} for r in self.removed},
            "snapshots": [{"run_id": s.run_id, "rows": s.rows, "versions": s.versions} for s in self.snapshots],
            "inputs": self.inputs,
            "incomplete": self.incomplete,
        }


# ----------------------------------------------------------------------------- matching
@dataclass(frozen=True)
class Target:
    """What identifies the entity's rows: its column, the key as text, and its token when hashed."""

    column: str
    key: str
    token: str | None

    def __contains__(self, value: Any) -> bool:
        if value is None or (isinstance(value, float) and value != value):
            return False
        text = privacy.as_text(value)
        return text == self.key or (self.token is not None and text == self.token)

    def mask(self, values: pd.Series) -> pd.Series:
        return values.map(lambda v: v in self).astype(bool)


def parse_request(text: str) -> tuple[str, str]:
    """``ENTITY=KEY`` split once; both parts non-empty."""
    column, sep, key = text.partition("=")
    if not sep or not column.strip() or not key.strip():
        raise ForgetError(f"{text!r}: give the entity as COLUMN=KEY, e.g. customer_id=42")
    return column.strip(), key.strip()


def entity_columns(cfg: ProjectConfig) -> list[str]:
    """The columns mlcycle keys rows by: the table's entities and every aggregation table's."""
    names = list(cfg.table.entities)
    for spec in cfg.features.aggregations.values():
        names += [e for e in spec.entities if e not in names]
    return names


def target_for(cfg: ProjectConfig, column: str, key: str) -> Target:
    known = entity_columns(cfg)
    if column not in known:
        raise ForgetError(
            f"{column} is not an entity of project {cfg.project}: forget works by entity key, one of "
            f"{', '.join(known) or '(none: table.entities is empty)'} (table.entities in mlcycle.yaml)"
        )
    secret = privacy.pii_key()
    return Target(column, privacy.as_text(key), privacy.hash_value(key, secret) if secret else None)


# ----------------------------------------------------------------------------- files
def _rewrite_without(path: Path, keep: pd.Series, frame: pd.DataFrame) -> None:
    """The file again without the dropped rows (written aside and renamed), or gone if none is left."""
    if not keep.any():
        path.unlink()
        return
    tmp = path.with_name(f".{path.name}.forget")
    frame[keep.to_numpy()].to_parquet(tmp, index=False)
    os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)


def _forget_in_parquet(paths: Iterable[Path], matches: Callable[[pd.DataFrame], pd.Series]) -> int:
    removed = 0
    for path in paths:
        frame = pd.read_parquet(path)
        if frame.empty:
            continue
        hit = matches(frame)
        if hit.any():
            removed += int(hit.sum())
            _rewrite_without(path, ~hit, frame)
    return removed


def _entities_match(target: Target) -> Callable[[pd.DataFrame], pd.Series]:
    """A prediction-log frame's rows whose ``entities`` JSON names the entity with the key."""

    def matches(frame: pd.DataFrame) -> pd.Series:
        if "entities" not in frame:
            return pd.Series(False, index=frame.index)

        def one(text: Any) -> bool:
            if not isinstance(text, str) or not text:
                return False
            try:
                return json.loads(text).get(target.column) in target
            except (ValueError, AttributeError):
                return False

        return frame["entities"].map(one).astype(bool)

    return matches


def forget_prediction_log(cfg: ProjectConfig, target: Target) -> tuple[Removed, list[str]]:
    if cfg.profile == "scale":
        return _forget_sql_predictions(cfg, target), []
    from mlcycle.serving.prediction_log import JOURNAL_DIR, recover

    result = Removed("prediction log")
    directory = cfg.predictions_dir
    if not directory.is_dir():
        return result, []
    recover(directory)  # a dead writer's journal into parquet first, so it is searched below too
    # A live writer's journal is read before the parquet is listed: a record it moves to parquet in
    # between is then either found in the parquet or counted here, never missed by both.
    incomplete = []
    live = 0
    for segment in sorted((directory / JOURNAL_DIR).glob("*.jsonl")):
        try:
            text = segment.read_text(errors="replace")
        except FileNotFoundError:
            continue  # written out and removed since the listing: its records are in the parquet now
        for line in text.splitlines():
            try:
                entities = json.loads(line).get("entities")
                entities = json.loads(entities) if isinstance(entities, str) else entities
            except (ValueError, AttributeError):
                continue
            live += isinstance(entities, dict) and entities.get(target.column) in target
    result.count = _forget_in_parquet(sorted(directory.glob("date=*/*.parquet")), _entities_match(target))
    if live:
        incomplete.append(
            f"prediction log: {live} records of the entity are in a running service's journal, not yet in "
            "parquet: run forget again in a few seconds (the service writes its journal out every second)"
        )
    return result, incomplete


# Characters every JSON writer (json, pandas' ujson) writes as themselves: a key of only these can be
# searched in JSON text as it is.
_VERBATIM_IN_JSON = re.compile(r"[A-Za-z0-9 _.:@+,;=#%()*!?~^$'|{}\[\]-]*\Z")


def _forget_sql_predictions(cfg: ProjectConfig, target: Target) -> Removed:
    import sqlalchemy as sa

    from mlcycle.serving.prediction_store import TABLE

    result = Removed("prediction log")
    engine = sa.create_engine(cfg.scale.tracking_uri, hide_parameters=True)  # an error must not print the key
    try:
        with engine.begin() as conn:
            if not sa.inspect(conn).has_table(TABLE):
                return result
            query = sa.select(sa.column("id"), sa.column("entities")).select_from(sa.table(TABLE))
            needles = [target.key] + ([target.token] if target.token else [])
            if all(_VERBATIM_IN_JSON.match(n) for n in needles):
                # A key JSON writes verbatim narrows the rows to decode; any other (a "/" or
                # non-ASCII, which pandas writes escaped) would be missed by LIKE: every row is read.
                query = query.where(sa.or_(*(sa.column("entities").contains(n, autoescape=True) for n in needles)))
            match = _entities_match(target)
            ids = []
            for rows in conn.execute(query.execution_options(yield_per=20_000)).partitions():
                frame = pd.DataFrame(rows, columns=["id", "entities"])
                ids += [int(i) for i in frame.loc[match(frame), "id"]]
            for start in range(0, len(ids), 1000):
                chunk = ids[start : start + 1000]
                conn.execute(sa.text(f"DELETE FROM {TABLE} WHERE id IN ({','.join(map(str, chunk))})"))
            result.count = len(ids)
        if engine.dialect.name == "postgresql" and (result.count or _dead_tuples(engine, TABLE)):
            # Also when nothing was removed now: a run that deleted and then failed to rewrite leaves
            # dead tuples, and running forget again must finish that.
            # A deleted tuple's bytes stay in the table's pages until they are reused; a plain VACUUM
            # only marks the space free. VACUUM FULL writes the table and its indexes anew (writers
            # wait for it). The write-ahead log and base backups keep the rows until they age out.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                mine = (
                    "SELECT pg_get_userbyid(relowner) = current_user FROM pg_class WHERE relname = :t AND relkind = 'r'"
                )
                owner = conn.execute(sa.text(mine), {"t": TABLE}).scalar()
                if not owner:  # PostgreSQL only warns and skips the table for anyone else
                    raise PermissionError(f"VACUUM FULL of {TABLE} needs the table's owner: run forget as that role")
                conn.execute(sa.text(f"VACUUM FULL {TABLE}"))
            result.notes.append("table rewritten (VACUUM FULL); PostgreSQL's WAL and backups age out on their own")
    finally:
        engine.dispose()
    return result


def _dead_tuples(engine: Any, table: str) -> int:
    import sqlalchemy as sa

    with engine.connect() as conn:
        query = sa.text("SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables WHERE relname = :t")
        return int(conn.execute(query, {"t": table}).scalar() or 0)


def forget_event_log(cfg: ProjectConfig, target: Target) -> Removed:
    result = Removed("offline event log")
    directory = event_log.events_dir(cfg)
    if directory.is_dir():
        result.count = _forget_in_parquet(sorted(directory.glob(event_log.PART_GLOB)), _column_match(target))
    return result


def _column_match(target: Target) -> Callable[[pd.DataFrame], pd.Series]:
    def matches(frame: pd.DataFrame) -> pd.Series:
        if target.column not in frame:
            return pd.Series(False, index=frame.index)
        return target.mask(frame[target.column])

    return matches


def forget_feature_tables(cfg: ProjectConfig, target: Target) -> Removed:
    """The feature tables here and, with an object store, their published copies: those this host has
    not got are fetched first, and every table is published again after the rewrite (a removed one
    is deleted there), so a copy another host reads holds no row the local files do not."""
    result = Removed("feature tables")
    published = storage.published_under(cfg.project, cfg.root, cfg.features_dir)
    borrowed = [p for p in published if not p.exists()]  # another host's: fetched for this request only
    for path in published:
        storage.fetch(cfg.project, cfg.root, path)
    local = sorted(cfg.features_dir.rglob("*.parquet")) if cfg.features_dir.is_dir() else []
    result.count = _forget_in_parquet(local, _column_match(target))
    for path in sorted({*published, *local}):
        if path.exists():
            storage.publish(cfg.project, cfg.root, path)
        else:
            storage.remove(cfg.project, cfg.root, path)
    for path in borrowed:  # not left here as files of this host's own, which it would read from then on
        path.unlink(missing_ok=True)
    return result


def forget_monitoring(cfg: ProjectConfig, target: Target) -> Removed:
    """Monitoring keeps model inputs, not keys; an entity column kept as an input is searched too."""
    result = Removed("monitoring samples")
    if cfg.monitoring_dir.is_dir():
        result.count = _forget_in_parquet(sorted(cfg.monitoring_dir.rglob("*.parquet")), _column_match(target))
    return result


# ----------------------------------------------------------------------------- online store
def _proto_value(value: Any) -> Any:
    kind = value.WhichOneof("val")
    return None if kind is None else getattr(value, kind)


def _key_matches(entity_key: Any, target: Target) -> bool:
    for name, value in zip(entity_key.join_keys, entity_key.entity_values, strict=False):
        if name == target.column:
            return _proto_value(value) in target
    return False


def forget_online(cfg: ProjectConfig, target: Target) -> tuple[Removed, list[str]]:
    from feast.infra.key_encoding_utils import deserialize_entity_key, serialize_entity_key_prefix
    from feast.infra.online_stores.sqlite import SqliteOnlineStore, _table_id

    from mlcycle.features import open_project_store

    result = Removed("online store")
    try:
        store = open_project_store(cfg)
        views = [v for v in store.list_feature_views() if target.column in v.join_keys]
    except Exception as exc:
        if cfg.profile == "local" and not cfg.feast_dir.exists():
            return result, []  # never published: no online store
        return result, [f"online store: the feature store did not open ({type(exc).__name__}: {exc}); fix it and "
                        "run forget again"]  # fmt: skip
    config = store.config
    version = config.entity_key_serialization_version
    online = store.provider.online_store
    if isinstance(online, SqliteOnlineStore):
        path = Path(SqliteOnlineStore._get_db_path(config))
        if not path.exists():
            return result, []
        versioned = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
            db.execute("PRAGMA secure_delete = ON")  # freed pages are zeroed, not left readable
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for view in views:
                table = _table_id(config.project, view, versioned)
                if table not in tables:
                    continue
                keys = [k for (k,) in db.execute(f'SELECT DISTINCT entity_key FROM "{table}"')]
                gone = [k for k in keys if _key_matches(deserialize_entity_key(k, version), target)]
                for key in gone:
                    db.execute(f'DELETE FROM "{table}" WHERE entity_key = ?', (key,))
                result.count += len(gone)
            db.commit()
            busy = _checkpoint(db)
        result.unit = "entity rows"
        if busy:
            return result, [
                "online store: a reader kept the SQLite file's write-ahead log open, so the log still holds the "
                "removed rows' old pages; stop the service (mlcycle down) and run forget again"
            ]
        return result, []
    from feast.infra.online_stores.redis import RedisOnlineStore

    if not isinstance(online, RedisOnlineStore):
        return result, [f"online store: {type(online).__name__} is not one forget can search (SQLite, Redis)"]
    client = online._get_client(config.online_store)
    project = config.project.encode()
    seen: set[tuple[str, ...]] = set()
    for view in views:
        if tuple(view.join_keys) in seen:
            continue  # one Redis hash holds every view of the same keys
        seen.add(tuple(view.join_keys))
        prefix = serialize_entity_key_prefix(list(view.join_keys), entity_key_serialization_version=version)
        for redis_key in client.scan_iter(prefix + b"*" + project, count=1000):
            raw = redis_key[: -len(project)]
            if _key_matches(deserialize_entity_key(raw, version), target):
                result.count += int(client.delete(redis_key))
    result.unit = "entity rows"
    return result, []


def _checkpoint(db: sqlite3.Connection, tries: int = 50, pause_s: float = 0.1) -> bool:
    """Copy the write-ahead log into the database file and truncate it, so the deleted rows' old
    pages leave the log too; True when readers kept it busy through every try. A database not in
    WAL mode has no log (the pragma answers -1 frames) and is never busy."""
    for _ in range(tries):
        busy, _frames, _copied = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if not busy:
            return False
        time.sleep(pause_s)
    return True


# ----------------------------------------------------------------------------- broker
def forget_broker(cfg: ProjectConfig, target: Target) -> tuple[list[Removed], list[str]]:
    """The consumer's event sets and the stream entries that carry the entity."""
    import redis

    from mlcycle.streaming.broker import connect, remove_entries
    from mlcycle.streaming.consumer import broker_url, stream_keys

    sets, entries = Removed("event sets", unit="entities"), Removed("stream entries", unit="entries")
    keys = stream_keys(cfg)
    aof = cfg.data_path / "stream" / "broker"
    client = connect(broker_url(cfg))
    try:
        client.ping()
    except redis.exceptions.RedisError:
        if cfg.profile == "scale" or any(aof.glob("appendonly*")):
            where = "its append-only file in data/stream/broker" if cfg.profile == "local" else "Redis"
            return [sets, entries], [
                f"event broker unreachable: the event sets and stream entries in {where} were not searched; "
                "start it (mlcycle up) and run forget again"
            ]
        return [sets, entries], []  # never started: nothing was streamed
    try:
        for table_name, spec in cfg.features.aggregations.items():
            if target.column not in spec.entities:
                continue
            index = list(spec.entities).index(target.column)
            head = keys.state(table_name, "")
            for state in client.scan_iter(match=head.replace("[", "\\[") + "*", count=1000):
                name = state.decode()
                if name.endswith((":v", ":written")):
                    continue
                try:
                    values = json.loads(name[len(head) :])
                except ValueError:
                    continue
                if isinstance(values, list) and len(values) > index and values[index] in target:
                    entity = name[len(head) :]
                    client.delete(name, name + ":v", name + ":written")
                    client.zrem(keys.timers, f"{table_name}\x1f{entity}")
                    sets.count += 1
        for stream in (keys.events, keys.dead):
            gone = []
            for entry_id, fields in client.xrange(stream):
                if _entry_row(fields).get(target.column) in target:
                    gone.append(entry_id)
            entries.count += remove_entries(client, stream, gone)
        if cfg.profile == "local":  # every time: an earlier run may have removed and then failed to rewrite
            _rewrite_aof(client)
            if sets.count or entries.count:
                entries.notes.append("the broker's append-only file rewritten")
        elif (sets.count or entries.count) and _persists(client):
            return [sets, entries], [
                "event broker: the entity's entries are gone from Redis's memory, but this Redis writes snapshots or "
                "an append-only file, which keep them until it rewrites them: its operator runs BGREWRITEAOF (or "
                "BGSAVE), then the request is complete"
            ]
    except (redis.exceptions.RedisError, RuntimeError, TimeoutError) as exc:
        return [sets, entries], [f"event broker: {exc}; run forget again"]
    return [sets, entries], []


def _persists(client: Any) -> bool:
    """Whether a Redis writes its data to disk (an append-only file, or a snapshot schedule); a Redis
    that will not say (CONFIG refused) is taken to persist."""
    import redis

    try:
        return bool(client.info("persistence").get("aof_enabled")) or bool(client.config_get("save").get("save"))
    except redis.exceptions.RedisError:
        return True


def _entry_row(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """An entry's event row: an event's ``event`` field, or a dead letter's ``payload`` (the parked
    entry's fields as JSON, whose ``event`` is the row). Unwrapped by shape, not by trying keys, so
    a table with its own ``event`` or ``payload`` column is not unwrapped a second time."""
    entry = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
    try:
        if "event" in entry:
            row = json.loads(entry["event"])
        elif "payload" in entry:
            parked = json.loads(entry["payload"])
            row = json.loads(parked["event"]) if isinstance(parked, dict) and "event" in parked else None
        else:
            row = None
    except (ValueError, TypeError):
        return {}
    return row if isinstance(row, dict) else {}


def _rewrite_aof(client: Any, timeout_s: float = 120.0) -> None:
    """An append-only file keeps every command ever applied, the deleted ones' writes included,
    until it is rewritten from what the server now holds. Returns once the rewritten file is in
    place: the rewrite is a forked child, counted in ``total_forks`` (no snapshotting runs here)."""
    if not client.info("persistence").get("aof_enabled"):
        return
    forks = int(client.info("stats").get("total_forks", 0))
    client.bgrewriteaof()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = client.info("persistence")
        started = int(client.info("stats").get("total_forks", 0)) > forks
        if started and not state.get("aof_rewrite_in_progress") and not state.get("aof_rewrite_scheduled"):
            if state.get("aof_last_bgrewrite_status", "ok") != "ok":
                raise RuntimeError("the broker's append-only file rewrite failed: see its log in data/stream/broker")
            return
        time.sleep(0.05)
    raise TimeoutError(f"the broker's append-only file was not rewritten within {timeout_s:.0f} s")


# ----------------------------------------------------------------------------- what stays
def snapshots_holding(cfg: ProjectConfig, target: Target) -> list[SnapshotHit]:
    """Training snapshots (MLflow run artifacts) that hold the entity, and the versions trained on them."""
    from urllib.parse import unquote, urlsplit

    client = registry.client_for(cfg)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        return []
    trained_on: dict[str, list[tuple[str, str]]] = {}
    for version in registry.versions(client, cfg.model.name):
        if version.run_id:
            state = governance.approval_of(version).state
            trained_on.setdefault(version.run_id, []).append((str(version.version), state))
    hits = []
    for run in client.search_runs([experiment.experiment_id], max_results=5000):
        parts = urlsplit(run.info.artifact_uri)
        if parts.scheme in ("", "file"):
            rows = _rows_in(Path(unquote(parts.path)) / SNAPSHOT_ARTIFACT, target)
        else:  # object storage: read through MLflow's artifact store, into a directory removed at once
            import tempfile

            names = {a.path for a in client.list_artifacts(run.info.run_id, SNAPSHOT_ARTIFACT.rsplit("/", 1)[0])}
            if SNAPSHOT_ARTIFACT not in names:
                continue
            with tempfile.TemporaryDirectory(prefix="mlcycle-forget-") as directory:
                rows = _rows_in(Path(client.download_artifacts(run.info.run_id, SNAPSHOT_ARTIFACT, directory)), target)
        if rows:
            hits.append(SnapshotHit(run.info.run_id, rows, sorted(trained_on.get(run.info.run_id, []))))
    return hits


def _rows_in(path: Path, target: Target) -> int:
    """The entity's rows in a snapshot file (0 when there is none or it has no such column)."""
    if not path.exists() or target.column not in pq.read_schema(path).names:
        return 0
    return int(target.mask(pd.read_parquet(path, columns=[target.column])[target.column]).sum())


def inputs_holding(cfg: ProjectConfig, target: Target) -> dict[str, int]:
    """The entity's rows in the project's table, and in its copy in the object store (the owner's
    fix at the source reaches it with the next ``features build``, which publishes the table)."""
    holding = {str(cfg.table_path): _rows_in(cfg.table_path, target)}
    store = settings.ObjectStore.from_env()
    if store is not None and cfg.table_path in storage.published_under(cfg.project, cfg.root, cfg.table_path.parent):
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / cfg.table_path.name
            key = storage.key_of(store, cfg.project, cfg.root, cfg.table_path)
            store.client().download_file(store.bucket, key, str(copy))  # type: ignore[attr-defined]
            holding[f"s3://{store.bucket}/{key}"] = _rows_in(copy, target)
    return {where: rows for where, rows in holding.items() if rows}


# ----------------------------------------------------------------------------- the request
def forget(
    cfg: ProjectConfig, request: str, principal: governance.Principal, now: datetime | None = None
) -> ForgetReport:
    """Remove the entity's rows from every store mlcycle owns; record it; report what remains.

    ``ForgetError`` for an entity that is not a key, or a key found nowhere (a typo must not read as
    done). ``governance.Refused`` without the operator or approver role (refusals are recorded)."""
    column, key = parse_request(request)
    target = target_for(cfg, column, key)
    log = registry.PromotionLog(cfg.promotion_log_uri)
    try:
        governance.require_role(cfg.governance, principal, ("operator", "approver"), "forget an entity")
    except governance.Refused as exc:
        raise governance.record_refusal(log, cfg.model.name, None, principal, exc) from None
    removed: list[Removed] = []
    incomplete: list[str] = []

    def attempt(stores: tuple[str, ...], step: Callable[[], Any]) -> Any:
        """One store's step; its failure is reported (and the request recorded as incomplete) while
        the other stores are still done, so one broken store never hides what was removed."""
        try:
            return step()
        except Exception as exc:  # any store's own error: named, the request left incomplete
            text = str(exc).replace(target.key, "<key>")
            text = text.replace(target.token, "<token>") if target.token else text
            incomplete.append(f"{' and '.join(stores)}: failed ({type(exc).__name__}: {text}); fix it and run "
                              "forget again")  # fmt: skip
            return None

    def one(step: Callable[[ProjectConfig, Target], Removed], store: str) -> None:
        removed.append(attempt((store,), lambda: step(cfg, target)) or Removed(store))

    def several(step: Callable[[ProjectConfig, Target], tuple[Any, list[str]]], stores: tuple[str, ...]) -> None:
        done = attempt(stores, lambda: step(cfg, target))
        found, missing = done if done is not None else ([Removed(s) for s in stores], [])
        removed.extend(found if isinstance(found, list) else [found])
        incomplete.extend(missing)

    several(forget_prediction_log, ("prediction log",))
    several(forget_online, ("online store",))
    several(forget_broker, ("event sets", "stream entries"))
    one(forget_event_log, "offline event log")
    one(forget_feature_tables, "feature tables")
    one(forget_monitoring, "monitoring samples")
    snapshots = attempt(("training snapshots",), lambda: snapshots_holding(cfg, target)) or []
    inputs = attempt(("inputs",), lambda: inputs_holding(cfg, target)) or {}
    reference = target.token or f"ref:{secrets.token_hex(8)}"
    if not any(r.count for r in removed) and not snapshots and not inputs and not incomplete:
        raise ForgetError(
            f"no row with {column}={key} in the prediction log, online store, event sets, stream, offline event "
            f"log, feature tables, training snapshots or the table: check the key as the table writes it (text, "
            f"no quotes); nothing was changed or recorded"
        )
    counts = ", ".join(f"{r.store} {r.count}" for r in removed if r.count) or "nothing mlcycle owns"
    kept = f"; {len(snapshots)} training snapshots still hold it" if snapshots else ""
    reason = f"forgot {column} {reference}: removed {counts}{kept}" + ("; INCOMPLETE" if incomplete else "")
    log.append(registry.PromotionEvent(now or datetime.now(UTC), cfg.model.name, "privacy", None, None,
                                       str(principal), reason, ACTION))  # fmt: skip
    return ForgetReport(column, reference, removed, snapshots, inputs, incomplete)
