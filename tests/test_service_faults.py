"""Faults and guards at the scoring service's edges, through one real ``bentoml serve`` for the
module: the model registry is unreachable when the service starts, then comes back; the service
runs with an API key and an admin token, so every token check is tried against it."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import mlflow
import numpy as np
import pytest
import schemathesis
import xgboost as xgb
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import clone_project
from tests.servers import LOOPBACK, START_S, VENV_BIN, running_server

from mlcycle.features.store import open_project_store, plan_for
from mlcycle.ops.service_process import ServiceProcess, free_port
from mlcycle.project.config import ProjectConfig
from mlcycle.registry import aliases as registry
from mlcycle.registry.tracking import FEATURES_TAG, THRESHOLD_TAG, pip_requirements

pytestmark = pytest.mark.slow
GOOD = {"user_id": 2, "merchant_id": 5, "amount": 120.5, "country": "US", "merchant_category": "grocery"}
# A normal start takes 20 s to 2 min on a loaded 2-core machine; with MLflow's default HTTP retries
# (7, exponential backoff) a start against an unreachable registry took over 4 minutes.
UP_WITHIN_S = 180.0
API_KEY = "test-api-key"
ADMIN = "test-admin-token"
KEY = {"x-api-key": API_KEY}


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


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels`` (0 when absent)."""
    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@dataclass
class Guarded:
    cfg: ProjectConfig
    client: httpx.Client
    service: ServiceProcess
    registry_uri: str
    champion: str
    down_predict: httpx.Response  # answers while the registry was unreachable
    down_batch: httpx.Response
    down_status: httpx.Response
    down_log: str


@pytest.fixture(scope="module")
def guarded(training_project: ProjectConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    """The service started while its registry is unreachable (answers recorded), then the registry
    comes back with a champion and the service becomes ready by itself."""
    tmp_path = tmp_path_factory.mktemp("faults")
    port = free_port()  # nobody listens there until the registry "comes back" below
    uri = f"http://{LOOPBACK}:{port}"
    cfg = clone_project(training_project, tmp_path / "p", {"tracking": {"tracking_uri": uri}})
    env = {"MLCYCLE_REFRESH_SECONDS": "0.5", "MLCYCLE_API_KEY": API_KEY, "MLCYCLE_ADMIN_TOKEN": ADMIN}
    service = ServiceProcess(cfg, env=env)
    log_from = service.log_path.stat().st_size if service.log_path.exists() else 0
    with contextlib.ExitStack() as stack:
        service.start(timeout=UP_WITHIN_S, ready=False)  # up, answering, but not ready
        stack.callback(service.stop)
        client = stack.enter_context(httpx.Client(base_url=service.url, trust_env=False, timeout=60))
        assert client.get("/readyz").status_code == 503
        down_predict = client.post("/predict", json={"request": GOOD}, headers=KEY)
        down_batch = client.post("/predict_batch", json={"requests": [GOOD, GOOD]}, headers=KEY)
        down_status = client.post("/rollout/status", headers=KEY)
        down_log = service.log_path.read_bytes()[log_from:].decode(errors="replace")

        # The registry comes back (with a champion): the service becomes ready by itself.
        mlflow_server = [
            str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{cfg.data_path / 'mlflow.db'}",
            "--default-artifact-root", cfg.artifact_uri, "--host", LOOPBACK, "--port", str(port), "--workers", "1",
        ]  # fmt: skip
        stack.enter_context(running_server(mlflow_server, health_path="/health", port=port, timeout=START_S,
                                           log_path=tmp_path / "mlflow.log", cwd=tmp_path))  # fmt: skip
        champion = register_champion(cfg)
        assert wait_until_ready(client, timeout=60), service.log_tail()
        yield Guarded(cfg, client, service, uri, champion, down_predict, down_batch, down_status, down_log)


def test_registry_unreachable_at_start_is_a_503_naming_the_dependency_and_nothing_more(guarded: Guarded) -> None:
    r = guarded.down_predict
    # 503 with the reason, within BentoML's 30 s request timeout (a 504 before the fix).
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "service unavailable: model registry unavailable", r.text
    assert r.json()["score"] is None
    # No internals for the caller: where the registry is, what the exception said.
    port = guarded.registry_uri.rsplit(":", 1)[1]
    for internal in (guarded.registry_uri, port, "Connection refused", "Error", "mlflow"):
        assert internal not in r.text, r.text
    status = guarded.down_status
    assert status.status_code == 200 and status.json()["not_ready_reason"] == "model registry unavailable"
    assert guarded.registry_uri not in status.text and "Connection refused" not in status.text, status.text

    # The log says why, naming the registry and the connection error; and MLflow's HTTP client
    # does not spend minutes retrying (MLflow's default is 7 retries per call).
    log = guarded.down_log
    reasons = [line for line in log.splitlines() if "not ready: model registry at " + guarded.registry_uri in line]
    assert reasons and "Connection refused" in reasons[0], log[-3000:]
    before_first = log[: log.index(reasons[0])]
    assert before_first.count("Retrying (") <= 1, before_first[-3000:]


def test_the_api_document_declares_the_answers_of_a_service_whose_registry_is_down(guarded: Guarded) -> None:
    """Issue 22: a 503 and a 401 were answers /docs.json did not declare, so a client generated from
    it could not read them. Each answer recorded here is checked against the document the service
    serves (its status declared, its content type, its body valid against the declared schema)."""
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    client = guarded.client
    api = schemathesis.openapi.from_dict(client.get("/docs.json").json())
    text_amount = {"request": {**GOOD, "amount": "120.5"}}  # a 400 naming the field
    answers = [
        ("/predict", {"request": GOOD}, guarded.down_predict, 503),
        ("/predict_batch", {"requests": [GOOD, GOOD]}, guarded.down_batch, 503),
        ("/predict", {"request": GOOD}, client.post("/predict", json={"request": GOOD}), 401),
        ("/admin/rollback", {"reason": "test"}, client.post("/admin/rollback", json={"reason": "test"}), 401),
        ("/predict", text_amount, client.post("/predict", json=text_amount, headers=KEY), 400),
    ]
    checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
    for path, body, response, status in answers:
        assert response.status_code == status, (path, response.text)
        api[path]["POST"].Case(body=body).validate_response(response, checks=checks)
    assert guarded.down_batch.json()[0]["error"] == "service unavailable: model registry unavailable"


def test_the_service_recovers_by_itself_when_the_registry_comes_back(guarded: Guarded) -> None:
    r = guarded.client.post("/predict", json={"request": GOOD}, headers=KEY)
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == guarded.champion and 0 <= r.json()["score"] <= 1


def test_the_api_key_guards_predict_batch_and_rollout_status(guarded: Guarded) -> None:
    client = guarded.client
    calls = [
        ("/predict", {"request": GOOD}),
        ("/predict_batch", {"requests": [GOOD, GOOD]}),
        ("/rollout/status", None),
    ]
    before = metric(client, "mlcycle_errors_total", reason="unauthorized")
    refused = 0
    for path, payload in calls:
        for headers in ({}, {"x-api-key": "wrong"}, {"x-api-key": API_KEY + "x"}, {"x-admin-token": "wrong"}):
            r = client.post(path, json=payload, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert API_KEY not in r.text
            refused += 1
        r = client.post(path, json=payload, headers=KEY)
        assert r.status_code == 200, (path, r.text)
    # The admin token reads the rollout status too (an operator's dashboard needs no API key).
    status = client.post("/rollout/status", headers={"x-admin-token": ADMIN})
    assert status.status_code == 200 and status.json()["models"]["champion"] == guarded.champion, status.text
    assert metric(client, "mlcycle_errors_total", reason="unauthorized") - before == refused


def test_admin_endpoints_need_the_admin_token_not_the_api_key(guarded: Guarded) -> None:
    client = guarded.client
    for headers in ({}, {"x-admin-token": "wrong"}, {"x-admin-token": API_KEY}, KEY):
        r = client.post("/admin/rollback", json={"reason": "test"}, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        change = {"change": {"mode": "shadow", "percent": 0, "reason": "test"}}
        assert client.post("/admin/traffic", json=change, headers=headers).status_code == 401
    # With the token it is let through (one champion and no earlier one: nothing to roll back to).
    r = client.post("/admin/rollback", json={"reason": "test"}, headers={"x-admin-token": ADMIN})
    assert r.status_code in (200, 409), r.text
    assert client.post("/predict", json={"request": GOOD}, headers=KEY).json()["model_version"] == guarded.champion
