"""Retention (mlcycle.monitoring.retention): each sink loses what is older than its days and keeps
the rest; a snapshot a live version needs is kept, an archived version's goes and `reproduce` then
says why. Ages are set by hand against a fixed `now`, so the expected counts are worked out here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import pytest

from mlcycle.monitoring import retention
from mlcycle.project.config import ProjectConfig
from mlcycle.registry import aliases as registry
from mlcycle.registry import governance as gov
from mlcycle.registry import tracking

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def project(tmp_path: Path, **days: int) -> ProjectConfig:
    cfg = ProjectConfig.model_validate({"model": {"name": "m"}, "privacy": {"retention_days": days}})
    cfg.root = tmp_path
    return cfg


def test_prediction_log_days_before_the_cutoff_day_go_whole(tmp_path: Path) -> None:
    cfg = project(tmp_path, prediction_log=3)  # cut-off 2026-03-07 12:00: that day stays, whole
    for day in ("2026-03-01", "2026-03-06", "2026-03-07", "2026-03-10"):
        part = cfg.predictions_dir / f"date={day}"
        part.mkdir(parents=True)
        (part / "part-1.parquet").write_bytes(b"x")
    (cfg.predictions_dir / "_journal").mkdir()  # not a day: never touched
    result = retention.expire_prediction_log(cfg, 3, NOW)
    assert (result.removed, result.kept) == (2, 2)
    assert sorted(p.name for p in cfg.predictions_dir.iterdir()) == ["_journal", "date=2026-03-07", "date=2026-03-10"]
    assert retention.expire_prediction_log(cfg, None, NOW).line() == "prediction_log: kept (no retention_days set)"


def test_monitoring_reports_older_than_the_cutoff_go_and_references_stay(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    stamps = {"20260301T000000Z": True, "20260307T115959Z": True, "20260307T120001Z": False, "20260310T110000Z": False}
    for stamp in stamps:
        (cfg.monitoring_dir / stamp).mkdir(parents=True)
    (cfg.monitoring_dir / "reference" / "v1").mkdir(parents=True)
    result = retention.expire_monitoring(cfg, 3, NOW)
    assert (result.removed, result.kept) == (2, 2)
    left = {p.name for p in cfg.monitoring_dir.iterdir()}
    assert left == {s for s, gone in stamps.items() if not gone} | {"reference"}


def test_snapshots_a_live_version_needs_stay_and_reproduce_says_when_one_expired(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    client = registry.client_for(cfg)
    client.create_registered_model("m")
    runs = {}
    for name in ("live", "archived", "unregistered"):
        with mlflow.start_run(run_name=name) as run:
            snapshot = tmp_path / "training_set.parquet"
            snapshot.write_bytes(name.encode())
            mlflow.log_artifact(str(snapshot), "data")
        runs[name] = run.info.run_id
    for name in ("live", "archived"):
        version = client.create_model_version("m", source=f"runs:/{runs[name]}/model", run_id=runs[name]).version
        if name == "archived":
            gov.archive(client, "m", str(version), gov.Principal("alice", True, "test"), "replaced")

    def exists(name: str) -> bool:
        uri = client.get_run(runs[name]).info.artifact_uri
        return (Path(uri.removeprefix("file://")) / tracking.SNAPSHOT_ARTIFACT).exists()

    assert all(exists(n) for n in runs)
    young = retention.expire_snapshots(cfg, 5, datetime.now(UTC))  # every run is newer than 5 days
    assert (young.removed, young.kept) == (0, 3)
    later = datetime.now(UTC) + timedelta(days=10)
    result = retention.expire_snapshots(cfg, 5, later)
    assert (result.removed, result.kept) == (2, 1)
    assert (exists("live"), exists("archived"), exists("unregistered")) == (True, False, False)
    assert any("v1 needs it for reproduce" in note for note in result.notes)
    with pytest.raises(tracking.SnapshotExpired, match=r"v2's training snapshot .* is gone .*cannot be reproduced"):
        tracking.reproduce(cfg, "2")
