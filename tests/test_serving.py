"""The scoring service through a real ``bentoml serve`` process, real Feast online store and real
MLflow registry: bad input, routing, shadow, rollback without restart, automated canary analysis."""

from __future__ import annotations

import json
import threading
import time

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from tests.conftest import clone_project

from mlcycle import registry, rollout
from mlcycle.config import ProjectConfig
from mlcycle.pipeline import build_training_set
from mlcycle.prediction_log import read_predictions
from mlcycle.project import load_flow
from mlcycle.service_process import ServiceProcess
from mlcycle.tracking import FEATURES_TAG, THRESHOLD_TAG, pip_requirements
from mlcycle.traffic import request_body
from mlcycle.training import matrix

pytestmark = pytest.mark.slow
ADMIN = "test-admin-token"
# Loose latency slack: tests must not pass or fail on wall-clock time (the guard's logic is tested
# on synthetic logs in test_canary.py).
CANARY = {"steps": [20.0, 50.0, 100.0], "min_requests": 100, "min_labelled": 50, "p99_latency_slack_ms": 1000.0}


def train(cfg: ProjectConfig) -> dict:
    return load_flow(cfg.root, "training", "train")(config=str(cfg.root / "mlcycle.yaml"))


@pytest.fixture(scope="module")
def served(training_project: ProjectConfig, prefect_server, tmp_path_factory):
    """A project with a champion (v1) and a challenger (v2), and its service running."""
    root = tmp_path_factory.mktemp("served") / "p"
    cfg = clone_project(training_project, root, {"canary": CANARY})
    assert train(cfg)["alias"] == "champion"
    second = train(cfg)
    assert second["alias"] == "challenger", second["failed"]
    service = ServiceProcess(cfg, env={"MLCYCLE_REFRESH_SECONDS": "0.5", "MLCYCLE_ADMIN_TOKEN": ADMIN})
    service.start()
    client = httpx.Client(base_url=service.url, trust_env=False, timeout=30)
    try:
        tx = pd.read_parquet(cfg.raw_dir / "transactions.parquet")
        yield cfg, client, tx
    finally:
        client.close()
        service.stop()


body = request_body


def set_traffic(client: httpx.Client, mode: str, percent: float = 0.0) -> None:
    r = client.post("/admin/traffic", json={"change": {"mode": mode, "percent": percent, "reason": "test"}},
                    headers={"x-admin-token": ADMIN})  # fmt: skip
    assert r.status_code == 200, r.text


GOOD = {"user_id": 2, "merchant_id": 5, "amount": 120.5, "country": "US", "merchant_category": "grocery"}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ('{"transaction": {"user_id": 2,', ""),  # malformed JSON
        ({"transaction": {**GOOD, "user_id": "2"}}, "user_id"),
        ({"transaction": {**GOOD, "amount": -5}}, "amount"),
        ({"transaction": {**GOOD, "amount": 0}}, "amount"),
        ({"transaction": {**GOOD, "amount": 1e400}}, "amount"),
        ({"transaction": {**GOOD, "amount": "NaN"}}, "amount"),
        ({"transaction": {k: v for k, v in GOOD.items() if k != "merchant_id"}}, "merchant_id"),
        ({"transaction": {**GOOD, "country": "usa"}}, "country"),
        ({"transaction": {**GOOD, "channel": "carrier-pigeon"}}, "channel"),
        ({"transaction": {**GOOD, "model_path": "/etc/passwd"}}, "model_path"),
        ({}, "transaction"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(served, payload, field: str) -> None:
    _, client, _ = served
    content = payload if isinstance(payload, str) else json.dumps(payload)
    r = client.post("/predict", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    if field:
        assert field in json.dumps(r.json()), r.text


def test_unknown_user_is_scored_and_says_what_was_missing(served) -> None:
    _, client, _ = served
    r = client.post("/predict", json={"transaction": {**GOOD, "user_id": 10**9, "merchant_id": 10**9}})
    assert r.status_code == 200, r.text
    out = r.json()
    assert 0 <= out["score"] <= 1 and out["model_version"]
    assert "txn_count_30d" in out["features_missing"] and "merchant_fraud_rate_90d" in out["features_missing"]


def test_batch_form_and_metrics(served) -> None:
    _, client, tx = served
    rows = [body(r)["transaction"] for r in tx.tail(25).itertuples()]
    r = client.post("/predict_batch", json={"transactions": rows})
    assert r.status_code == 200 and len(r.json()) == 25
    assert client.post("/predict_batch", json={"transactions": []}).status_code == 400
    metrics = client.get("/metrics").text
    assert "mlcycle_predictions_total" in metrics and "mlcycle_score_bucket" in metrics


def test_admin_endpoints_need_the_token(served) -> None:
    _, client, _ = served
    change = {"change": {"mode": "canary", "percent": 50, "reason": "x"}}
    assert client.post("/admin/traffic", json=change).status_code == 401
    assert client.post("/admin/traffic", json=change, headers={"x-admin-token": "wrong"}).status_code == 401


def test_canary_routing_is_proportional_and_sticky(served) -> None:
    _, client, tx = served
    set_traffic(client, "canary", 30)
    time.sleep(1.2)
    users = tx.drop_duplicates("user_id").head(800)
    variants = {}
    for row in users.itertuples():
        variants[int(row.user_id)] = client.post("/predict", json=body(row)).json()["variant"]
    share = np.mean([v == "challenger" for v in variants.values()])
    assert 0.25 < share < 0.35, share
    expected = {u: rollout.route(rollout.RolloutPolicy(mode="canary", percent=30), u, True) for u in variants}
    assert variants == expected  # the service routes exactly as the library's hash says: sticky
    again = [client.post("/predict", json=body(r)).json()["variant"] for r in users.head(100).itertuples()]
    assert again == [variants[int(u)] for u in users.head(100)["user_id"]]
    set_traffic(client, "champion-only")


def test_shadow_scores_are_logged_never_returned(served) -> None:
    cfg, client, tx = served
    rows = list(tx.tail(60).itertuples())
    # One request time for both passes: features such as seconds-since-last-transaction move with
    # the clock, so the same request sent later would legitimately score differently.
    at = pd.Timestamp.now(tz="UTC").isoformat()
    payloads = [{"transaction": {**body(r)["transaction"], "timestamp": at}} for r in rows]
    set_traffic(client, "champion-only")
    time.sleep(1.2)
    before = [client.post("/predict", json=p).json() for p in payloads]
    set_traffic(client, "shadow")
    time.sleep(1.2)
    since = pd.Timestamp.now(tz="UTC")
    during = [client.post("/predict", json=p).json() for p in payloads]
    assert [(d["variant"], d["model_version"], d["score"]) for d in during] == [
        (b["variant"], b["model_version"], b["score"]) for b in before
    ]
    time.sleep(1.5)  # the log is written off the request path
    logged = read_predictions(cfg.predictions_dir, since.to_pydatetime())
    shadow = logged[logged["shadow"]]
    assert len(shadow) >= len(rows) and (shadow["variant"] == "challenger").all()
    set_traffic(client, "champion-only")


def test_promotion_and_rollback_reach_the_running_service(served) -> None:
    cfg, client, tx = served
    row = next(tx.tail(1).itertuples())
    client_ml = registry.client_for(cfg)
    log = registry.PromotionLog(cfg.promotion_log_uri)
    champion = str(registry.version_by_alias(client_ml, cfg.model.name, registry.CHAMPION).version)
    challenger = str(registry.version_by_alias(client_ml, cfg.model.name, registry.CHALLENGER).version)
    registry.promote(client_ml, log, cfg.model.name, challenger, "test promotion")
    assert wait_for_version(client, body(row), challenger)
    rollout.rollback(client_ml, log, cfg.model.name, "test rollback")
    assert wait_for_version(client, body(row), champion)
    registry.move_alias(client_ml, log, cfg.model.name, registry.CHALLENGER, challenger, "restore for later tests")


def wait_for_version(client: httpx.Client, payload: dict, version: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.post("/predict", json=payload).json()["model_version"] == version:
            return True
        time.sleep(0.2)
    return False


def register_challenger(cfg: ProjectConfig, booster: xgb.Booster, features: list[str]) -> str:
    """A challenger registered straight into MLflow (as a broken pipeline might)."""
    registry.client_for(cfg)
    with mlflow.start_run(run_name="test-challenger"):
        info = mlflow.xgboost.log_model(booster, name="model", pip_requirements=pip_requirements())
    version = str(mlflow.register_model(info.model_uri, cfg.model.name).version)
    client = registry.client_for(cfg)
    client.set_model_version_tag(cfg.model.name, version, FEATURES_TAG, json.dumps(features))
    client.set_model_version_tag(cfg.model.name, version, THRESHOLD_TAG, "0.5")
    registry.move_alias(client, registry.PromotionLog(cfg.promotion_log_uri), cfg.model.name,
                        registry.CHALLENGER, version, "test")  # fmt: skip
    return version


def run_canary_with_traffic(cfg: ProjectConfig, client: httpx.Client, tx: pd.DataFrame) -> dict:
    stop = threading.Event()
    rows = list(tx.sample(4000, random_state=1).itertuples())

    def traffic() -> None:
        i = 0
        while not stop.is_set() and i < 20000:
            client.post("/predict", json=body(rows[i % len(rows)]))
            i += 1

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        flow = load_flow(cfg.root, "rollout", "rollout_flow")
        return flow(config=str(cfg.root / "mlcycle.yaml"), wait_seconds=2.0, max_wait_seconds=90.0)
    finally:
        stop.set()
        thread.join(30)


def champion_booster(cfg: ProjectConfig) -> tuple[xgb.Booster, list[str]]:
    mv = registry.version_by_alias(registry.client_for(cfg), cfg.model.name, registry.CHAMPION)
    return mlflow.xgboost.load_model(f"models:/{cfg.model.name}/{mv.version}"), json.loads(mv.tags[FEATURES_TAG])


def test_canary_rolls_back_a_challenger_that_errors(served) -> None:
    cfg, client, tx = served
    booster, features = champion_booster(cfg)
    bad = register_challenger(cfg, booster, [*features, "no_such_feature"])
    result = run_canary_with_traffic(cfg, client, tx)
    assert result["outcome"] == "rolled back" and result["version"] == bad
    assert "error_rate_increase" in result["failed"]
    assert registry.version_by_alias(registry.client_for(cfg), cfg.model.name, registry.CHALLENGER) is None


def test_canary_rolls_back_a_challenger_whose_scores_shift(served) -> None:
    cfg, client, tx = served
    _, features = champion_booster(cfg)
    frame = build_training_set(cfg)
    # Trained on inverted labels: a model whose scores sit at the other end of the range.
    data = xgb.DMatrix(matrix(frame, features), label=1 - frame["is_fraud"])
    inverted = xgb.train({"max_depth": 3, "objective": "binary:logistic", "seed": 0}, data, num_boost_round=20)
    bad = register_challenger(cfg, inverted, features)
    result = run_canary_with_traffic(cfg, client, tx)
    assert result["outcome"] == "rolled back" and result["version"] == bad
    assert "score_psi" in result["failed"]


def test_canary_promotes_a_good_challenger(served) -> None:
    cfg, client, tx = served
    candidate = train(cfg)
    assert candidate["alias"] == "challenger", candidate["failed"]
    result = run_canary_with_traffic(cfg, client, tx)
    assert result["outcome"] == "promoted", result
    assert [s["percent"] for s in result["steps"]] == [20.0, 50.0]
    assert str(registry.version_by_alias(registry.client_for(cfg), cfg.model.name, registry.CHAMPION).version) == str(
        candidate["version"]
    )
    assert rollout.read_policy(registry.client_for(cfg), cfg.model.name).mode == "champion-only"
    row = next(tx.tail(1).itertuples())
    assert wait_for_version(client, body(row), str(candidate["version"]))


def test_online_store_unreachable_is_a_503_that_says_so_and_recovers(served) -> None:
    """Take the SQLite online store's tables away under the running service, then give them back:
    503 with the reason while they are gone, scores again once they are back, no restart."""
    import sqlite3

    cfg, client, tx = served
    row = next(tx.tail(1).itertuples())
    db = cfg.feast_dir / "online_store.db"

    def rename_tables(suffix_from: str, suffix_to: str) -> None:
        with sqlite3.connect(db) as conn:
            names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for name in names:
                if name.endswith(suffix_from) and name.startswith("mlcycle_fraud_"):
                    base = name[: len(name) - len(suffix_from)] if suffix_from else name
                    conn.execute(f'ALTER TABLE "{name}" RENAME TO "{base}{suffix_to}"')

    rename_tables("", "_offline")
    try:
        r = client.post("/predict", json=body(row))
        assert r.status_code == 503, r.text
        assert "online feature store unavailable" in r.json()["error"]
        assert r.json()["score"] is None  # never a silent default score
    finally:
        rename_tables("_offline", "")
    assert client.post("/predict", json=body(row)).status_code == 200
