"""A project copied with its data (cp -r, a backup restored elsewhere, a test's clone) keeps the
original's Feast registry, which names the original's SQLite online store by absolute path:
`features publish` in the copy must rebuild its own, never change the original's tables."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.conftest import clone_project

from mlcycle.features import pipeline, store
from mlcycle.project.config import ProjectConfig


def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_publishing_a_copy_leaves_the_originals_online_store_alone(project: ProjectConfig, tmp_path: Path) -> None:
    original = project.feast_dir / "online_store.db"
    before = tables(original)
    assert "mlcycle_fraud_user_txn_stats" in before
    copy = clone_project(project, tmp_path / "copy")
    fs_yaml = store.fs_yaml_for(copy)
    named = store.copied_registry(copy.feature_repo_path, fs_yaml)  # the copy's registry names the original's
    assert {Path(p).resolve() for p in named} == {original.resolve()}
    pipeline.publish_features(copy)
    assert store.copied_registry(copy.feature_repo_path, fs_yaml) == []  # its own now
    assert tables(original) == before
    assert "mlcycle_fraud_user_txn_stats" in tables(copy.feast_dir / "online_store.db")
