"""The model registry: MLflow aliases (``champion``, ``challenger``) plus an append-only log.

MLflow aliases say what serves now but keep no history (stages are deprecated, and an alias move
overwrites the last one), so every move goes through ``move_alias``, which also appends a row —
when, which alias, from which version to which, who or what, and why — to the promotion log, a
SQL table (SQLite by default, PostgreSQL in profile ``scale``). ``mlcycle history`` reads it.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import mlflow
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mlcycle import settings as scale
from mlcycle.project.config import ProjectConfig
from mlcycle.registry import audit_chain as chain

CHAMPION = "champion"
CHALLENGER = "challenger"
# What a row of the promotion log records (``action``): an ordinary alias move, or a rollback —
# which must not count as a promotion when the next rollback looks for "the previous champion".
# A row written before ``action`` existed is ``legacy``: a move, unless it went back to the champion
# before the current one — what the old rollback did — and then it is replayed as a rollback.
MOVE, ROLLBACK, LEGACY = "move", "rollback", "legacy"
# Registered model names mlcycle accepts: they go into MLflow filter strings, so no quotes.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\- ]{0,255}")


def client_for(cfg: ProjectConfig) -> MlflowClient:
    """Point MLflow at the project's tracking store and make sure the experiment exists there
    (and, in profile ``scale``, its PostgreSQL database: MLflow creates tables, not databases)."""
    scale.ensure_database(cfg.tracking_uri)
    if (store := scale.ObjectStore.from_env()) is not None:
        scale.ensure_object_store(store)  # the bucket answers with these keys; MLflow's S3 client configured
    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.tracking_uri)
    client = MlflowClient(cfg.tracking_uri, cfg.tracking_uri)
    ensure_experiment(client, cfg.tracking.experiment, cfg.artifact_uri)
    mlflow.set_experiment(cfg.tracking.experiment)
    return client


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str) -> None:
    """Create ``name`` with its artifacts under the project's artifact root: MLflow's default is
    ``./mlruns`` of whatever directory the process runs in, outside the project's data (and its backups)."""
    if client.get_experiment_by_name(name) is None:
        try:
            client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as exc:
            # Another process (a service retrying its start-up, a flow) created it in between.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def actor() -> str:
    """Who acts: MLCYCLE_ACTOR (set by flows and services), else the OS user."""
    if value := os.environ.get("MLCYCLE_ACTOR"):
        return value
    try:
        return f"user:{getpass.getuser()}"
    except OSError:
        return "user:unknown"


@dataclass(frozen=True)
class PromotionEvent:
    at: datetime
    model: str
    alias: str
    from_version: str | None
    to_version: str | None
    actor: str
    reason: str
    action: str = MOVE


class PromotionLog:
    """Append-only and tamper-evident: rows are inserted, never updated or deleted, and each carries
    the hash of the one before (``audit_chain``), so ``verify`` finds an edited, deleted or reordered
    row. The one update ever made is the sealing of rows an older mlcycle wrote (``_seal_legacy``)."""

    def __init__(self, uri: str):
        self.engine, self.table = scale.log_table(
            uri,
            "mlcycle_promotion_log",
            sa.Column("alias", sa.String(64), nullable=False),
            sa.Column("from_version", sa.String(32)),
            sa.Column("to_version", sa.String(32)),
            sa.Column("actor", sa.String(256), nullable=False),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("action", sa.String(32)),  # NULL in rows written before it existed: a move
            sa.Column("prev_hash", sa.String(64)),  # NULL only in rows written before the chain
            sa.Column("row_hash", sa.String(64)),
        )
        self._add_missing_columns()
        self._seal_legacy()

    def _add_missing_columns(self) -> None:
        """A log created by an older mlcycle lacks ``action`` and the hashes: add them (nullable, so
        old rows stay)."""
        wanted = {"action": "VARCHAR(32)", "prev_hash": "VARCHAR(64)", "row_hash": "VARCHAR(64)"}
        for name, kind in wanted.items():
            if name in self._columns():
                continue
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.text(f"ALTER TABLE {self.table.name} ADD COLUMN {name} {kind}"))
            except sa.exc.DBAPIError:  # another process added it first
                if name not in self._columns():
                    raise

    def _columns(self) -> set[str]:
        return {c["name"] for c in sa.inspect(self.engine).get_columns(self.table.name)}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[sa.Connection]:
        """A transaction holding the log's write lock, so that two appenders (threads, processes,
        hosts) never both link to the same last row: SQLite's ``BEGIN IMMEDIATE`` (the database's
        one writer lock, waited for up to 30 s), PostgreSQL's ``SHARE ROW EXCLUSIVE`` table lock
        (conflicts with itself and with writes, not with readers)."""
        with self.engine.connect() as conn:
            dialect = self.engine.dialect.name
            if dialect == "sqlite":
                # pysqlite begins its own (deferred) transaction only before DML, so ours comes first.
                conn.exec_driver_sql("PRAGMA busy_timeout = 30000")
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif dialect == "postgresql":
                conn.execute(sa.text(f"LOCK TABLE {self.table.name} IN SHARE ROW EXCLUSIVE MODE"))
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def _last_hash(self, conn: sa.Connection) -> str:
        c = self.table.c
        query = sa.select(c.row_hash).where(c.row_hash.is_not(None)).order_by(c.id.desc()).limit(1)
        return conn.execute(query).scalar() or chain.GENESIS

    def _insert(self, conn: sa.Connection, content: dict[str, Any]) -> None:
        content = {**content, "at": chain.utc(content["at"])}  # SQLite drops the zone: store UTC
        prev = self._last_hash(conn)
        conn.execute(self.table.insert().values(**content, prev_hash=prev, row_hash=chain.row_hash(content, prev)))

    def _seal_legacy(self) -> None:
        """Hash, once, the rows of a log written before the chain existed, and record it in a
        ``seal`` row. Only when no row has a hash yet: an unhashed row after the chain started was
        written around it, and sealing it would hide that (``verify`` reports it instead)."""
        c = self.table.c
        with self.engine.connect() as conn:  # the common case, without the write lock
            first = conn.execute(sa.select(c.id, c.row_hash).order_by(c.id).limit(1)).first()
        if first is None or first.row_hash is not None:
            return
        with self._locked() as conn:
            if conn.execute(sa.select(sa.func.count(c.row_hash))).scalar():
                return  # another process sealed it, or the chain has started: nothing to seal
            rows = conn.execute(sa.select(self.table).order_by(c.id)).mappings().all()
            prev = chain.GENESIS
            for row in rows:
                digest = chain.row_hash(row, prev)
                conn.execute(self.table.update().where(c.id == row["id"]).values(prev_hash=prev, row_hash=digest))
                prev = digest
            reason = (
                f"sealed {len(rows)} rows (ids {rows[0]['id']}-{rows[-1]['id']}) written before the hash chain:"
                " they are vouched for from this row on, not before"
            )
            note = PromotionEvent(datetime.now(UTC), "", "", None, None, "mlcycle", reason, chain.SEAL)
            self._insert(conn, {name: getattr(note, name) for name in chain.CONTENT})

    def append(self, event: PromotionEvent) -> None:
        with self._locked() as conn:
            self._insert(conn, {name: getattr(event, name) for name in chain.CONTENT})

    def history(self, model: str | None = None, limit: int | None = None) -> list[PromotionEvent]:
        c = self.table.c
        query = sa.select(self.table).where(sa.or_(c.action.is_(None), c.action != chain.SEAL)).order_by(c.id.desc())
        if model:
            query = query.where(c.model == model)
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            PromotionEvent(
                at=row["at"] if row["at"].tzinfo else row["at"].replace(tzinfo=UTC),
                **{k: row[k] for k in ("model", "alias", "from_version", "to_version", "actor", "reason")},
                action=row["action"] or LEGACY,
            )
            for row in rows
        ]

    def rows(self, model: str | None = None) -> list[chain.ChainRow]:
        """The rows as stored, hashes included, oldest first (all of them: the chain is the log's)."""
        c = self.table.c
        query = sa.select(self.table).order_by(c.id)
        if model is not None:
            query = query.where(c.model == model)
        with self.engine.connect() as conn:
            found = conn.execute(query).mappings().all()
        return [
            chain.ChainRow(row["id"], {k: row[k] for k in chain.CONTENT}, row["prev_hash"], row["row_hash"])
            for row in found
        ]

    def verify(self) -> chain.Verification:
        """Check the whole chain, oldest row first; the first row that breaks it is named."""
        return chain.verify(self.rows())


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def move_alias(
    client: MlflowClient,
    log: PromotionLog,
    name: str,
    alias: str,
    version: str | None,
    reason: str,
    who: str | None = None,
    action: str = MOVE,
) -> PromotionEvent:
    """Point ``alias`` at ``version`` (None removes it) and record the move (``action`` says whether
    it was a rollback, which champion_lineage reads)."""
    previous = version_by_alias(client, name, alias)
    if version is None:
        if previous is not None:
            client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, str(version))
    event = PromotionEvent(
        at=datetime.now(UTC),
        model=name,
        alias=alias,
        from_version=str(previous.version) if previous else None,
        to_version=str(version) if version is not None else None,
        actor=who or actor(),
        reason=reason,
        action=action,
    )
    log.append(event)
    return event


def promote(
    client: MlflowClient, log: PromotionLog, name: str, version: str, reason: str, who: str | None = None
) -> list[PromotionEvent]:
    """Make ``version`` the champion; it stops being the challenger if it was one."""
    client.get_model_version(name, str(version))  # fails clearly on an unknown version
    events = [move_alias(client, log, name, CHAMPION, str(version), reason, who)]
    challenger = version_by_alias(client, name, CHALLENGER)
    if challenger is not None and str(challenger.version) == str(version):
        events.append(move_alias(client, log, name, CHALLENGER, None, f"promoted to {CHAMPION}", who))
    return events


def champion_lineage(log: PromotionLog, name: str) -> list[str]:
    """The champions that are still "behind" the current one, oldest first: the promotion log's
    champion moves replayed, where a promotion pushes a version and a rollback pops one. So after
    v1 → v2 → v3 and one rollback the lineage is [1, 2]; a second rollback goes to v1, not back to
    v3 (taking the last move's ``from_version`` would undo the first rollback)."""
    lineage: list[str] = []
    moves = [e for e in reversed(log.history(name)) if e.alias == CHAMPION]  # history is newest first
    for event in moves:
        if event.to_version is None:  # the champion alias removed: what came before no longer applies
            lineage.clear()
        elif event.action == ROLLBACK or (
            event.action == LEGACY and len(lineage) >= 2 and lineage[-2] == event.to_version
        ):
            if lineage:
                lineage.pop()
            if not lineage or lineage[-1] != event.to_version:
                lineage.append(event.to_version)
        elif not lineage or lineage[-1] != event.to_version:
            lineage.append(event.to_version)
    return lineage


def checked_name(name: str) -> str:
    """``name`` if it is a registered-model name mlcycle accepts; it goes into an MLflow filter string,
    where a quote would change the query (``x' OR name LIKE '%``)."""
    if not MODEL_NAME.fullmatch(name):
        raise ValueError(
            f"registered model name {name!r}: use letters, digits, '.', '_', '-' or spaces (at most 256 characters)"
        )
    return name


def versions(client: MlflowClient, name: str) -> Iterator[ModelVersion]:
    try:
        found = client.search_model_versions(f"name = '{checked_name(name)}'")
    except MlflowException:
        return iter(())
    return iter(sorted(found, key=lambda v: int(v.version)))


def aliases_of(client: MlflowClient, name: str) -> dict[str, str]:
    """version → comma-separated aliases."""
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return {}
    out: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        out.setdefault(str(version), []).append(alias)
    return {v: ", ".join(sorted(a)) for v, a in out.items()}


def run_summary(client: MlflowClient, version: ModelVersion) -> dict[str, Any]:
    run = client.get_run(version.run_id)
    m = run.data.metrics
    return {
        "version": str(version.version),
        "run_id": version.run_id,
        "created": datetime.fromtimestamp(version.creation_timestamp / 1000, UTC),
        "roc_auc": m.get("test.roc_auc"),
        "pr_auc": m.get("test.pr_auc"),
        "recall": m.get("test.recall"),
        "rmse": m.get("test.rmse"),
        "mae": m.get("test.mae"),
        "p99_ms": m.get("latency_ms.p99"),
        "gates": run.data.tags.get("mlcycle.gates", "?"),
        "failed_gates": run.data.tags.get("mlcycle.failed_gates", ""),
        "data_hash": run.data.tags.get("mlcycle.data_hash", "")[:12],
        "features": json.loads(version.tags.get("mlcycle.features", "[]")),
    }
