"""The scheduled backup (mlcycle.ops.backup.scheduled_backup, the ``backup`` deployment's flow): each run
writes ``mlcycle backup``'s directory into ``backup.dest/<UTC stamp>/`` and keeps the newest
``backup.keep`` of this project's; nothing else in ``dest`` is touched. Without ``backup.dest`` a run
writes nothing and says "not configured", never "done". The projects here are tiny and hand-made (a
SQLite registry file, one artifact, the config), so the expected stamps and files are worked out here."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlcycle.ops import backup as backups
from mlcycle.project.config import ProjectConfig, load_config

# Three daily runs; the third a few seconds late (the stamp has seconds).
RUNS = [
    datetime(2026, 3, 10, 1, 45, 0, tzinfo=UTC),
    datetime(2026, 3, 11, 1, 45, 0, tzinfo=UTC),
    datetime(2026, 3, 12, 1, 45, 7, tzinfo=UTC),
]
STAMPS = ["20260310T014500Z", "20260311T014500Z", "20260312T014507Z"]


def tiny_project(root: Path, backup: dict | None) -> ProjectConfig:
    """A project with a registry database (one table, two rows), one artifact and its config."""
    (root / "data" / "artifacts").mkdir(parents=True)
    with sqlite3.connect(root / "data" / "mlflow.db") as db:
        db.execute("CREATE TABLE t (id INTEGER, name TEXT)")
        db.executemany("INSERT INTO t VALUES (?, ?)", [(1, "a"), (2, "b")])
    db.close()
    (root / "data" / "artifacts" / "model.txt").write_text("weights")
    (root / "mlcycle.yaml").write_text(json.dumps({"project": "tiny", **({"backup": backup} if backup else {})}))
    return load_config(root / "mlcycle.yaml")


def quiet(_: str) -> None:
    pass


def test_stamps_are_read_only_in_their_own_spelling() -> None:
    assert backups.stamp_of("20260312T014507Z") == datetime(2026, 3, 12, 1, 45, 7, tzinfo=UTC)
    assert [backups.stamp_of(n) for n in ("2026031T014507Z", "20260312T014507", "manual", "20261312T000000Z")] == [
        None,
        None,
        None,
        None,
    ]


def test_three_runs_with_keep_2_leave_the_two_newest_and_nothing_else_touched(tmp_path: Path) -> None:
    cfg = tiny_project(tmp_path / "p", {"dest": "../backups", "keep": 2})  # relative: to the project
    dest = tmp_path / "backups"
    assert cfg.backup.dest == Path("../backups") and cfg.backup.keep == 2
    # What else lives in dest: a note, a manual backup (not a stamp), a stamp-named directory without
    # a manifest, and a scheduled backup of another project. None of them is this project's to prune.
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    backups.backup(cfg, dest / "manual", out=quiet)
    (dest / "20200101T000000Z").mkdir()
    (dest / "20200101T000000Z" / "mine.txt").write_text("not a backup")
    shutil.copytree(dest / "manual", dest / "20200102T000000Z")
    foreign = json.loads((dest / "20200102T000000Z" / "manifest.json").read_text())
    (dest / "20200102T000000Z" / "manifest.json").write_text(json.dumps({**foreign, "project": "other"}))

    results = [backups.scheduled_backup(cfg, now, out=quiet) for now in RUNS]

    assert [r.status for r in results] == ["done", "done", "done"]
    assert [r.path for r in results] == [dest / s for s in STAMPS]
    assert [r.pruned for r in results] == [[], [], [dest / STAMPS[0]]]  # the third run removes the first
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        ["notes.txt", "manual", "20200101T000000Z", "20200102T000000Z", STAMPS[1], STAMPS[2]]
    )
    assert (dest / "notes.txt").read_text() == "keep me"
    assert (dest / "20200101T000000Z" / "mine.txt").read_text() == "not a backup"
    assert backups.verify(dest / "manual").project == "tiny"
    assert backups.scheduled_backups(dest, "tiny") == [dest / STAMPS[1], dest / STAMPS[2]]
    assert backups.scheduled_backups(dest, "other") == [dest / "20200102T000000Z"]

    # The result says what the manifest says: the registry, the artifact and the config, their bytes.
    newest = results[-1]
    manifest = backups.verify(newest.path)
    assert sorted(manifest.files) == ["data/artifacts/model.txt", "data/mlflow.db", "project/mlcycle.yaml"]
    assert newest.files == 3
    on_disk = sum((newest.path / rel).stat().st_size for rel in manifest.files)
    assert newest.bytes == manifest.total_bytes == on_disk
    assert manifest.files["data/artifacts/model.txt"]["bytes"] == len("weights")
    assert newest.as_dict()["pruned"] == [str(dest / STAMPS[0])]


def test_a_scheduled_backup_restores(tmp_path: Path) -> None:
    cfg = tiny_project(tmp_path / "p", {"dest": str(tmp_path / "backups"), "keep": 7})
    result = backups.scheduled_backup(cfg, RUNS[0], out=quiet)
    assert result.status == "done" and result.path == tmp_path / "backups" / STAMPS[0]

    manifest, restored = backups.restore(result.path, tmp_path / "elsewhere", out=quiet)
    assert manifest.project == restored.project == "tiny"
    assert restored.backup.dest == cfg.backup.dest  # the config came back with the data
    assert (restored.data_path / "artifacts" / "model.txt").read_text() == "weights"
    with sqlite3.connect(restored.data_path / "mlflow.db") as db:
        assert db.execute("SELECT id, name FROM t ORDER BY id").fetchall() == [(1, "a"), (2, "b")]
    db.close()


def test_without_backup_dest_nothing_is_written_and_the_status_says_not_configured(tmp_path: Path) -> None:
    cfg = tiny_project(tmp_path / "p", None)
    assert cfg.backup.dest is None and cfg.backup.keep == 7
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = backups.scheduled_backup(cfg, RUNS[0], out=quiet)
    assert result.status == "not configured" and result.status != "done"
    assert "not configured" in result.message and "backup.dest" in result.message
    assert result.path is None and result.pruned == [] and result.bytes == 0
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep"):
        ProjectConfig.model_validate({"backup": {"dest": "/b", "keep": 0}})
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        ProjectConfig.model_validate({"backup": {"destination": "/b"}})
    cfg = tiny_project(tmp_path / "p", {"dest": "data/backups"})
    with pytest.raises(backups.BackupError, match="inside the project's data directory"):
        backups.scheduled_backup(cfg, RUNS[0], out=quiet)
    assert not (cfg.data_path / "backups").exists()
    with pytest.raises(ValueError, match="timezone-aware"):
        backups.scheduled_backup(tiny_project(tmp_path / "q", {"dest": "b"}), datetime(2026, 3, 10), out=quiet)


@pytest.mark.slow
def test_the_flow_reports_what_it_did(tmp_path: Path, prefect_server) -> None:
    from mlcycle.flows.backup import backup as flow

    off = tiny_project(tmp_path / "off", None)
    answer = flow(config=str(off.root / "mlcycle.yaml"))
    assert answer["status"] == "not configured" and answer["path"] is None

    on = tiny_project(tmp_path / "on", {"dest": "../backups", "keep": 1})
    earlier = backups.scheduled_backup(on, RUNS[0], out=quiet).path
    answer = flow(config=str(on.root / "mlcycle.yaml"))
    assert answer["status"] == "done" and answer["pruned"] == [str(earlier)]
    assert backups.scheduled_backups(tmp_path / "backups", "tiny") == [Path(answer["path"])]
    assert answer["bytes"] == backups.verify(Path(answer["path"])).total_bytes > 0
