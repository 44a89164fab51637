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
from mlcycle.project.config import ProjectConfig, load_config
from mlcycle.project.files import copy_project as project_copy

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_DATA = {"seed": 7, "days": 60, "n_users": 2000, "n_merchants": 300, "n_transactions": 20000}


def copy_project(dest: Path, data: dict | None = None, sections: dict | None = None) -> ProjectConfig:
    cfg = project_copy(REPO_ROOT, dest, data)
    if sections:
        raw = yaml.safe_load((dest / "mlcycle.yaml").read_text())
        for section, values in sections.items():
            raw[section] = {**raw.get(section, {}), **values}
        (dest / "mlcycle.yaml").write_text(yaml.safe_dump(raw))
        cfg = load_config(dest / "mlcycle.yaml")
    return cfg


@pytest.fixture(scope="session", autouse=True)
def one_training_day_per_session():
    """Trainings cut their labels at the start of the current UTC day (``pipeline.default_as_of``),
    and the session's data ends at the midnight it was generated on. A session that crosses midnight
    would cut its later trainings a day later than its earlier ones (different rows, different
    models): the session keeps the day it started on, as one clock for every in-process training."""
    from mlcycle.features import pipeline

    original = pipeline.default_as_of
    day = original()
    pipeline.default_as_of = lambda now=None: day if now is None else original(now)
    yield day
    pipeline.default_as_of = original


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> ProjectConfig:
    """Small data generated, validated, turned into features, applied and materialized."""
    return built_project(tmp_path_factory.mktemp("project"), SMALL_DATA)


@pytest.fixture(scope="session")
def feature_store(project: ProjectConfig):
    from mlcycle.features import open_store

    return open_store(project.feature_repo_path)


TRAINING_DATA = {"seed": 21, "days": 90, "n_users": 12000, "n_merchants": 800, "n_transactions": 150000}
GENERATED_ONLY = shutil.ignore_patterns("mlflow.db", "mlartifacts", "promotions.db", "model_cards", "__pycache__")


# Tests must not pass or fail on wall-clock time (shared, noisy machines): the latency gate's
# logic is tested on synthetic reports (test_quality_checks.py); flows here run with a loose bound.
TEST_GATES = {"max_p99_latency_ms": 1000.0}


def built_project(root: Path, data: dict) -> ProjectConfig:
    from mlcycle.features import pipeline

    cfg = copy_project(root, data, {"gates": TEST_GATES})
    pipeline.generate_data(cfg)
    pipeline.build_features(cfg)
    pipeline.publish_features(cfg)
    return cfg


def clone_project(cfg: ProjectConfig, dest: Path, config_overrides: dict | None = None) -> ProjectConfig:
    """A copy of a built project (data, features, Feast stores) without its MLflow state, so each
    test starts with an empty registry. Feast paths are relative, so the copy works as is."""
    shutil.copytree(cfg.root, dest, ignore=GENERATED_ONLY)
    if config_overrides:
        raw = yaml.safe_load((dest / "mlcycle.yaml").read_text())
        for section, values in config_overrides.items():
            raw[section] = {**raw.get(section, {}), **values}
        (dest / "mlcycle.yaml").write_text(yaml.safe_dump(raw))
    return load_config(dest / "mlcycle.yaml")


@pytest.fixture(scope="session")
def training_project(tmp_path_factory: pytest.TempPathFactory) -> ProjectConfig:
    """Big enough for stable metrics and per-age-band fairness (about 400 test positives)."""
    return built_project(tmp_path_factory.mktemp("training"), TRAINING_DATA)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory):
    """One real ``prefect server start`` (SQLite, private PREFECT_HOME) for the whole session.

    A real server rather than the test harness: deployment triggers and automations (the drift
    event that starts retraining) only run in a full server. Flows in this process and CLI
    subprocesses (``prefect deploy``) both talk to it through PREFECT_API_URL."""
    import os

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from mlcycle.net import free_port
    from servers import LOOPBACK, SLOW_START_S, VENV_BIN, running_server, server_env

    home = tmp_path_factory.mktemp("prefect_home")
    port = free_port()
    url = f"http://{LOOPBACK}:{port}/api"
    env = server_env(PREFECT_HOME=str(home), PREFECT_SERVER_API_HOST=LOOPBACK, PREFECT_API_URL=url,
                     PREFECT_SERVER_API_PORT=str(port))  # fmt: skip
    cmd = [str(VENV_BIN / "prefect"), "server", "start", "--host", LOOPBACK, "--port", str(port)]
    previous = os.environ.get("PREFECT_API_URL")
    with running_server(cmd, health_path="/api/health", port=port, log_path=home / "server.log",
                        timeout=SLOW_START_S, env=env, cwd=home):  # fmt: skip
        os.environ["PREFECT_API_URL"] = url
        try:
            with temporary_settings({PREFECT_API_URL: url}):
                yield url
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous
