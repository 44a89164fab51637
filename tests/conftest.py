"""Shared fixtures: a copy of the project in a temporary directory, on small generated data.

The copy has the real ``feature_repo/`` and config, so every test runs the real Feast repo, the
real offline store and real files — only the data is smaller. It is built once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import mlcycle  # noqa: F401  (telemetry off before the stack is imported)
from mlcycle.config import ProjectConfig
from mlcycle.project import copy_project as project_copy

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_DATA = {"seed": 7, "days": 60, "n_users": 2000, "n_merchants": 300, "n_transactions": 20000}


def copy_project(dest: Path, data: dict | None = None) -> ProjectConfig:
    return project_copy(REPO_ROOT, dest, data)


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
