"""Backup and restore (mlcycle.ops.backup), and the drill: a project with a champion and a history is
backed up, its data/ destroyed, restored; then the same aliases, history and audit, the same
scores from /predict after `features publish`, and `reproduce` with identical metrics. A second
restore into another directory proves MLflow's absolute locations follow the move. Bad input: a
non-empty destination, a restore over state, a damaged or changed backup — refused, nothing
written."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import httpx
import pandas as pd
import pytest
from tests.conftest import clone_project
from typer.testing import CliRunner

from mlcycle.cli.app import app
from mlcycle.flows import load_flow
from mlcycle.ops import backup as backups
from mlcycle.ops.service_process import ServiceProcess
from mlcycle.project.config import ProjectConfig
from mlcycle.registry import aliases as registry
from mlcycle.registry import tracking

pytestmark = pytest.mark.slow


def run_train(cfg: ProjectConfig) -> dict:
    return load_flow(cfg.root, "training", "train")(config=str(cfg.root / "mlcycle.yaml"))


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def state(cfg: ProjectConfig) -> dict:
    """What must survive: aliases, the promotion log as `history` and `audit` print it, versions' tags."""
    client = registry.client_for(cfg)
    config = ["--config", str(cfg.root / "mlcycle.yaml")]
    return {
        "aliases": registry.aliases_of(client, cfg.model.name),
        "tags": {v.version: v.tags for v in registry.versions(client, cfg.model.name)},
        "history": cli("history", *config),
        "audit": json.loads(cli("audit", "--json", *config)),
        "audit_v2": {k: v for k, v in json.loads(cli("audit", "2", "--json", *config)).items() if k != "created"},
    }


def scores(cfg: ProjectConfig, bodies: list[dict]) -> list[tuple]:
    service = ServiceProcess(cfg, env={"MLCYCLE_WORKERS": "1"})
    service.start()
    try:
        with httpx.Client(base_url=service.url, trust_env=False, timeout=30) as client:
            answers = [client.post("/predict", json=b).json() for b in bodies]
    finally:
        service.stop()
    return [(a["score"], a["model_version"], a["variant"], tuple(a["features_missing"])) for a in answers]


def test_the_drill_back_up_destroy_restore(training_project: ProjectConfig, prefect_server, tmp_path: Path) -> None:
    from fraud.traffic import request_body

    cfg = clone_project(training_project, tmp_path / "p")
    assert run_train(cfg)["alias"] == "champion"
    second = run_train(cfg)
    assert second["alias"] == "challenger", second["failed"]
    log = registry.PromotionLog(cfg.promotion_log_uri)
    registry.promote(registry.client_for(cfg), log, cfg.model.name, "2", "drill: a history to keep", "person:drill")
    tx = pd.read_parquet(cfg.raw_dir / "transactions.parquet")
    at = (tx["event_timestamp"].max() + pd.Timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    bodies = [
        {"request": {**request_body(r)["request"], "timestamp": at}}
        for _, r in tx.sample(20, random_state=5).iterrows()
    ]
    before, served_before = state(cfg), scores(cfg, bodies)
    assert {s[1] for s in served_before} == {"2"}

    dest = tmp_path / "backup"
    out = cli("backup", str(dest), "--config", str(cfg.root / "mlcycle.yaml"))
    assert "left out data/feast" in out
    manifest = json.loads((dest / "manifest.json").read_text())
    assert "data/mlflow.db" in manifest["files"] and "project/mlcycle.yaml" in manifest["files"]

    shutil.rmtree(cfg.data_path)  # the loss
    assert "restored" in cli("restore", str(dest), "--into", str(cfg.root))
    assert state(cfg) == before
    cli("features", "publish", "--fresh", "--config", str(cfg.root / "mlcycle.yaml"))
    assert scores(cfg, bodies) == served_before
    result = tracking.reproduce(cfg, "2")
    assert result.data_hash_matches and result.identical, [r for r in result.rows if r[1] != r[2]][:5]

    # Elsewhere (an empty machine): the project's files come from the backup, MLflow's locations move.
    other = tmp_path / "elsewhere"
    _, moved = backups.restore(dest, other, out=lambda _: None)
    assert moved.root == other.resolve()
    assert (other / "mlcycle.yaml").read_bytes() == (cfg.root / "mlcycle.yaml").read_bytes()
    client = registry.client_for(moved)
    experiment = client.get_experiment_by_name(moved.tracking.experiment)
    assert experiment.artifact_location.startswith(moved.data_path.as_uri() + "/"), experiment.artifact_location
    with sqlite3.connect(moved.data_path / "mlflow.db") as db:  # no location left under the old project
        for table, column in (
            ("experiments", "artifact_location"),
            ("runs", "artifact_uri"),
            ("model_versions", "storage_location"),
            ("logged_models", "artifact_location"),
        ):
            rows = db.execute(f"SELECT count(*) FROM {table} WHERE instr({column}, ?) > 0", (str(cfg.data_path),))
            assert rows.fetchone()[0] == 0, table
    shutil.rmtree(cfg.root)  # the first copy gone: the second reads its own artifacts
    _, model = tracking.load_version(moved, "2")
    assert model is not None


def test_bad_input_is_refused_and_nothing_is_written(training_project: ProjectConfig, tmp_path: Path) -> None:
    cfg = clone_project(training_project, tmp_path / "p")
    with pytest.raises(backups.BackupError, match=r"holds no registry to back up.*mlcycle train"):
        backups.backup(cfg, tmp_path / "too-early")
    registry.client_for(cfg)  # a registry (its experiment), enough to back up
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "something").write_text("x")
    with pytest.raises(backups.BackupError, match="exists and is not empty"):
        backups.backup(cfg, occupied)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied", "p"]  # no partial backup left anywhere

    dest = tmp_path / "b"
    backups.backup(cfg, dest, out=lambda _: None)
    with pytest.raises(backups.BackupError, match=r"is not empty: a restore never writes over.*mlcycle down"):
        backups.restore(dest, cfg.root)  # the project still has its state

    empty = tmp_path / "empty"
    damaged = tmp_path / "damaged"
    shutil.copytree(dest, damaged)
    victim = next(p for p in sorted((damaged / "data").rglob("*.parquet")))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    with pytest.raises(backups.BackupError, match="does not match the manifest's sha256"):
        backups.restore(damaged, empty)
    (damaged / "data" / "extra.txt").write_text("planted")
    with pytest.raises(backups.BackupError, match="not in the manifest"):
        backups.restore(damaged, empty)
    assert not empty.exists() or not any(empty.iterdir())  # nothing half-restored

    (empty / "mlcycle.yaml").parent.mkdir(parents=True, exist_ok=True)
    (empty / "mlcycle.yaml").write_text("project: other\n")  # a different project lives there
    with pytest.raises(backups.BackupError, match="differs from the backup's copy"):
        backups.restore(dest, empty)
    assert not (empty / "data").exists()
