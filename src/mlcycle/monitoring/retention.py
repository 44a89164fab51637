"""Retention: what each sink wrote is removed once it is older than ``privacy.retention_days``.

Each sink is expired where its data lives, by its own notion of age:

- **prediction log**: profile local drops whole ``date=YYYY-MM-DD`` partitions of days before the
  cut-off (a day goes at once, never half of it); profile scale deletes the rows logged before it.
- **monitoring reports**: the run directories (``data/monitoring/<UTC stamp>``) older than the
  cut-off; the champions' references are kept.
- **training snapshots**: the ``data/training_set.parquet`` artifact of runs older than the cut-off,
  unless a registered version that is not archived was trained on it: ``reproduce`` needs it. An
  expired snapshot makes ``reproduce`` say so, not fail obscurely.
- **event stream**: broker entries older than the cut-off that the consumer group is done with
  (acknowledged, hence in the offline event log); pending or undelivered entries stay.

Every run reports per sink what it removed and what it kept, so the log says what happened.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from mlcycle.project.config import ProjectConfig
from mlcycle.registry import aliases as registry
from mlcycle.registry import governance
from mlcycle.registry.tracking import SNAPSHOT_ARTIFACT

STAMP = "%Y%m%dT%H%M%SZ"


@dataclass
class SinkResult:
    sink: str
    days: int | None
    removed: int = 0
    kept: int = 0
    unit: str = "files"
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.days is None:
            return f"{self.sink}: kept (no retention_days set)"
        extra = f" ({'; '.join(self.notes)})" if self.notes else ""
        return f"{self.sink}: removed {self.removed} {self.unit} older than {self.days} days, kept {self.kept}{extra}"


def cutoff(now: datetime, days: int) -> datetime:
    return now.astimezone(UTC) - timedelta(days=days)


def expire_prediction_log(cfg: ProjectConfig, days: int | None, now: datetime) -> SinkResult:
    result = SinkResult("prediction_log", days, unit="days" if cfg.profile == "local" else "rows")
    if days is None:
        return result
    limit = cutoff(now, days)
    if cfg.profile == "scale":
        import sqlalchemy as sa

        from mlcycle.serving.prediction_store import TABLE

        engine = sa.create_engine(cfg.scale.tracking_uri)
        try:
            with engine.begin() as conn:
                if not sa.inspect(conn).has_table(TABLE):
                    return result
                result.removed = conn.execute(sa.text(f"DELETE FROM {TABLE} WHERE logged_at < :limit"),
                                              {"limit": limit}).rowcount  # fmt: skip
                result.kept = int(conn.execute(sa.text(f"SELECT count(*) FROM {TABLE}")).scalar() or 0)
        finally:
            engine.dispose()
        return result
    first_kept = f"date={limit.date().isoformat()}"
    for part in sorted(cfg.predictions_dir.glob("date=*")):
        if part.is_dir() and part.name < first_kept:  # a whole day before the cut-off's day
            shutil.rmtree(part)
            result.removed += 1
        elif part.is_dir():
            result.kept += 1
    return result


def expire_monitoring(cfg: ProjectConfig, days: int | None, now: datetime) -> SinkResult:
    result = SinkResult("monitoring", days, unit="reports")
    if days is None or not cfg.monitoring_dir.exists():
        return result
    limit = cutoff(now, days)
    for run in sorted(cfg.monitoring_dir.iterdir()):
        try:
            stamp = datetime.strptime(run.name, STAMP).replace(tzinfo=UTC)
        except ValueError:
            continue  # references and anything else that is not a run's directory
        if stamp < limit:
            shutil.rmtree(run)
            result.removed += 1
        else:
            result.kept += 1
    return result


def _local_path(uri: str) -> Path | None:
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return Path(unquote(parts.path))
    return None


def expire_snapshots(cfg: ProjectConfig, days: int | None, now: datetime) -> SinkResult:
    result = SinkResult("snapshots", days, unit="snapshots")
    if days is None:
        return result
    client = registry.client_for(cfg)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        return result
    needed: dict[str, str] = {}  # run id → the live version that needs its snapshot
    for version in registry.versions(client, cfg.model.name):
        if governance.approval_of(version).state != governance.ARCHIVED and version.run_id:
            needed[version.run_id] = str(version.version)
    limit_ms = int(cutoff(now, days).timestamp() * 1000)
    for run in client.search_runs([experiment.experiment_id], max_results=5000):
        if not _has_snapshot(run.info.artifact_uri):
            continue
        if run.info.start_time >= limit_ms:
            result.kept += 1
        elif run.info.run_id in needed:
            result.kept += 1
            result.notes.append(f"kept {run.info.run_id[:8]}: v{needed[run.info.run_id]} needs it for reproduce")
        else:
            _delete_snapshot(run.info.artifact_uri)
            result.removed += 1
    return result


def _has_snapshot(artifact_uri: str) -> bool:
    """Whether the run's artifacts still hold its snapshot: a file under a local root, or an object
    in the store MLflow's artifact repository for the URI reaches (an ``s3://`` bucket)."""
    root = _local_path(artifact_uri)
    if root is not None:
        return (root / SNAPSHOT_ARTIFACT).exists()
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    folder, name = SNAPSHOT_ARTIFACT.rsplit("/", 1)
    listed = get_artifact_repository(artifact_uri).list_artifacts(folder)
    return any(item.path.rsplit("/", 1)[-1] == name for item in listed)


def _delete_snapshot(artifact_uri: str) -> None:
    root = _local_path(artifact_uri)
    if root is not None:
        (root / SNAPSHOT_ARTIFACT).unlink()
        return
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(artifact_uri).delete_artifacts(SNAPSHOT_ARTIFACT)


def trim_stream(cfg: ProjectConfig, days: int | None, now: datetime) -> SinkResult:
    result = SinkResult("stream", days, unit="entries")
    if days is None:
        return result
    import redis

    from mlcycle.streaming.broker import BrokerUnavailable
    from mlcycle.streaming.consumer import open_stream

    try:
        stream = open_stream(cfg)
        result.removed = stream.trim_done(int(cutoff(now, days).timestamp() * 1000))
        result.kept = int(stream.client.xlen(stream.stream))
    except (BrokerUnavailable, redis.exceptions.RedisError) as exc:
        result.notes.append(f"broker unreachable, nothing trimmed: {exc}")
    return result


def run_retention(cfg: ProjectConfig, now: datetime | None = None) -> list[SinkResult]:
    """Expire every sink by ``cfg.privacy.retention_days``; what each removed and kept."""
    now = now or datetime.now(UTC)
    days = cfg.privacy.retention_days
    return [
        expire_prediction_log(cfg, days.prediction_log, now),
        expire_monitoring(cfg, days.monitoring, now),
        expire_snapshots(cfg, days.snapshots, now),
        trim_stream(cfg, days.stream, now),
    ]


def as_dict(results: list[SinkResult]) -> dict[str, Any]:
    return {r.sink: {"days": r.days, "removed": r.removed, "kept": r.kept, "unit": r.unit, "notes": r.notes}
            for r in results}  # fmt: skip
