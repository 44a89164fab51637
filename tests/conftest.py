"""Shared fixtures: a copy of the project in a temporary directory, on small generated data.

The copy has the real ``feature_repo/`` and config, so every test runs the real Feast repo, the
real offline store and real files — only the data is smaller. It is built once per session.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

import mlcycle  # noqa: F401  (telemetry off before the stack is imported)
from mlcycle.config import ProjectConfig, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_DATA = {"seed": 7, "days": 60, "n_users": 2000, "n_merchants": 300, "n_transactions": 20000}


def copy_project(dest: Path, data: dict | None = None) -> ProjectConfig:
    """A runnable project at ``dest``: config + feature repo, with ``data`` overriding the spec."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        REPO_ROOT / "feature_repo", dest / "feature_repo", ignore=shutil.ignore_patterns("__pycache__")
    )
    raw = yaml.safe_load((REPO_ROOT / "mlcycle.yaml").read_text())
    raw["data"] = {**raw.get("data", {}), **(data or {})}
    (dest / "mlcycle.yaml").write_text(yaml.safe_dump(raw))
    return load_config(dest / "mlcycle.yaml")


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> ProjectConfig:
    """Small data generated, validated, turned into features, applied and materialized."""
    from mlcycle import pipeline

    cfg = copy_project(tmp_path_factory.mktemp("project"), SMALL_DATA)
    pipeline.generate_data(cfg)
    pipeline.build_features(cfg)
    pipeline.publish_features(cfg)
    return cfg


@pytest.fixture(scope="session")
def feature_store(project: ProjectConfig):
    from mlcycle.features import open_store

    return open_store(project.feature_repo_path)
