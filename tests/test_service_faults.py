"""Faults at the scoring service's edges, through a real ``bentoml serve``: the model registry is
unreachable when the service starts, then comes back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
import xgboost as xgb
from tests.conftest import clone_project
from tests.servers import LOOPBACK, START_S, VENV_BIN, running_server

from mlcycle import registry
from mlcycle.config import ProjectConfig
from mlcycle.features.store import open_project_store, plan_for
from mlcycle.service_process import ServiceProcess, free_port
from mlcycle.tracking import FEATURES_TAG, THRESHOLD_TAG, pip_requirements

pytestmark = pytest.mark.slow
GOOD = {"user_id": 2, "merchant_id": 5, "amount": 120.5, "country": "US", "merchant_category": "grocery"}
# A normal start takes 20 s to 2 min on a loaded 2-core machine; with MLflow's default HTTP retries
# (7, exponential backoff) a start against an unreachable registry took over 4 minutes.
UP_WITHIN_S = 180.0


def register_champion(cfg: ProjectConfig) -> str:
    """A small model on the feature service's inputs, registered as champion (a training run would
    take a minute; the service only needs a loadable model with its feature list)."""
    features = list(plan_for(open_project_store(cfg), cfg.features.feature_service).model_features)
    rng = np.random.default_rng(0)
    data = xgb.DMatrix(rng.normal(size=(200, len(features))), label=rng.integers(0, 2, 200))
    booster = xgb.train({"max_depth": 2, "objective": "binary:logistic"}, data, num_boost_round=3)
    client = registry.client_for(cfg)
    with mlflow.start_run(run_name="test-champion"):
        info = mlflow.xgboost.log_model(booster, name="model", pip_requirements=pip_requirements())
    version = str(mlflow.register_model(info.model_uri, cfg.model.name).version)
    client.set_model_version_tag(cfg.model.name, version, FEATURES_TAG, json.dumps(features))
    client.set_model_version_tag(cfg.model.name, version, THRESHOLD_TAG, "0.5")
    registry.move_alias(client, registry.PromotionLog(cfg.promotion_log_uri), cfg.model.name,
                        registry.CHAMPION, version, "test: registry back")  # fmt: skip
    return version


def wait_until_ready(client: httpx.Client, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return True
        time.sleep(0.5)
    return False


def test_registry_unreachable_at_start_is_not_ready_says_why_and_recovers(
    training_project: ProjectConfig, tmp_path: Path
) -> None:
    port = free_port()  # nobody listens there until the registry "comes back" below
    uri = f"http://{LOOPBACK}:{port}"
    cfg = clone_project(training_project, tmp_path / "p", {"tracking": {"tracking_uri": uri}})
    service = ServiceProcess(cfg, env={"MLCYCLE_REFRESH_SECONDS": "0.5"})
    log_from = service.log_path.stat().st_size if service.log_path.exists() else 0
    service.start(timeout=UP_WITHIN_S, ready=False)  # up, answering, but not ready
    try:
        with httpx.Client(base_url=service.url, trust_env=False, timeout=60) as client:
            assert client.get("/readyz").status_code == 503
            r = client.post("/predict", json={"transaction": GOOD})
            # 503 with the reason, within BentoML's 30 s request timeout (a 504 before the fix).
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert f"model registry at {uri}" in error and "Connection refused" in error, error
            assert r.json()["score"] is None

            # The log says why, naming the registry and the connection error; and MLflow's HTTP
            # client does not spend minutes retrying (MLflow's default is 7 retries per call).
            log = service.log_path.read_bytes()[log_from:].decode(errors="replace")
            reasons = [line for line in log.splitlines() if "not ready: model registry at " + uri in line]
            assert reasons and "Connection refused" in reasons[0], log[-3000:]
            before_first = log[: log.index(reasons[0])]
            assert before_first.count("Retrying (") <= 1, before_first[-3000:]

            # The registry comes back (with a champion): the service becomes ready by itself.
            mlflow_server = [
                str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{cfg.data_path / 'mlflow.db'}",
                "--default-artifact-root", cfg.artifact_uri, "--host", LOOPBACK, "--port", str(port), "--workers", "1",
            ]  # fmt: skip
            with running_server(mlflow_server, health_path="/health", port=port, timeout=START_S,
                                log_path=tmp_path / "mlflow.log", cwd=tmp_path):  # fmt: skip
                version = register_champion(cfg)
                assert wait_until_ready(client, timeout=60), service.log_tail()
                r = client.post("/predict", json={"transaction": GOOD})
                assert r.status_code == 200, r.text
                assert r.json()["model_version"] == version and 0 <= r.json()["score"] <= 1
    finally:
        service.stop()
