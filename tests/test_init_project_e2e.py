"""A table no example uses, through `mlcycle init` and the whole real stack.

init → features build/publish (Feast) → train (Prefect flow, MLflow registry) → serve (BentoML) →
/predict (valid and bad input) → replay (the table's later rows as live traffic, on the table's
own 2019 calendar) → monitor (drift found where this test put it) → batch-score. Once for a binary
label with an entity (window aggregations looked up online), once for a regression without entity
(every feature in the request). The expected answers come from how the table was made: which
column drifts, what the scores must lie in; not from the code under test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from unittest import mock

import httpx
import numpy as np
import pandas as pd
import pytest
import schemathesis
import yaml
from typer.testing import CliRunner

from mlcycle.cli.app import app
from mlcycle.features import entity_frame, online_vector, pipeline, plan_for, skew_report, training_set
from mlcycle.features.store import open_project_store
from mlcycle.flows import load_flow
from mlcycle.monitoring import job as monitoring_job
from mlcycle.ops.service_process import ServiceProcess
from mlcycle.project.config import ProjectConfig, load_config
from mlcycle.registry import aliases as registry
from mlcycle.serving import batch
from mlcycle.serving.replay import replay

pytestmark = pytest.mark.slow

START = pd.Timestamp("2019-01-01", tz="UTC")
DAYS = 180
REPLAY_FROM = START + pd.Timedelta(days=160)  # the last 20 days are replayed as live traffic
SHIFT = 2.5  # standard deviations `pressure` moves by in the replayed days: the drift to find


def make_table(n: int, seed: int, task: str) -> pd.DataFrame:
    """Visits of customers over 180 days of 2019: two numeric readings (one with missing values),
    a category with missing values, a label that depends on them; from REPLAY_FROM on, `pressure`
    shifts (the world changed there, nothing else did)."""
    rng = np.random.default_rng(seed)
    at = START + pd.to_timedelta(np.sort(rng.uniform(0, DAYS * 86400, n)), unit="s")
    customer = rng.integers(1, 600, n)
    pressure = rng.normal(0, 1, n)
    later = at >= REPLAY_FROM
    pressure = np.where(later, pressure + SHIFT, pressure)
    dose = np.round(rng.gamma(2.0, 1.5, n), 3)
    dose[rng.random(n) < 0.05] = np.nan
    ward = rng.choice(["north", "south", "east", "west"], n, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    ward[rng.random(n) < 0.03] = None
    effect = 0.9 * np.nan_to_num(dose, nan=2.0) - 0.8 * np.where(later, pressure - SHIFT, pressure)
    effect += np.select([ward == "north", ward == "east"], [0.8, -0.6], 0.0)
    frame = pd.DataFrame(
        {"visit_id": np.arange(1, n + 1), "seen_at": at, "pressure": pressure.round(4), "dose": dose, "ward": ward}
    )
    if task == "classification":
        frame["customer_id"] = customer
        frame["recovered"] = (rng.random(n) < 1 / (1 + np.exp(-(effect - 2.0)))).astype(int)
    else:
        frame["stay_days"] = np.round(5 + 2.0 * effect + rng.normal(0, 1.0, n), 3)
    return frame


def init(tmp: Path, table: pd.DataFrame, args: list[str]) -> ProjectConfig:
    data = tmp / "visits.csv"  # CSV: init reads text timestamps too
    table.assign(seen_at=table["seen_at"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")).to_csv(data, index=False)
    project = tmp / "project"
    result = CliRunner().invoke(app, ["init", str(project), "--data", str(data), "--timestamp", "seen_at", *args])
    assert result.exit_code == 0, result.output
    return load_config(project / "mlcycle.yaml")


def run_lifecycle(cfg: ProjectConfig, good: dict, bad: dict, bad_field: str) -> dict:
    """features → train (as of the replay start) → serve → predict → replay → monitor → batch-score."""
    build = pipeline.build_features(cfg)
    assert build.report.ok
    pipeline.publish_features(cfg, end=REPLAY_FROM.to_pydatetime())
    trained = load_flow(cfg.root, "training", "train")(config=str(cfg.root / "mlcycle.yaml"), as_of=REPLAY_FROM)
    assert trained["alias"] == registry.CHAMPION, trained
    client = registry.client_for(cfg)
    assert registry.version_by_alias(client, cfg.model.name, registry.CHAMPION) is not None

    service = ServiceProcess(cfg)
    service.start()
    try:
        with httpx.Client(base_url=service.url, trust_env=False, timeout=30) as http:
            # At a 2019 time too: an answer at "now" would be the log's latest event and move the
            # monitoring window to today.
            ok = http.post("/predict", json={"request": {**good, "timestamp": REPLAY_FROM.isoformat()}})
            assert ok.status_code == 200, ok.text
            refused = http.post("/predict", json={"request": bad})
            assert refused.status_code == 400 and bad_field in refused.text, refused.text
            schema = http.get("/docs.json").json()
            assert bad_field in str(schema)  # OpenAPI shows the project's own fields
        sent = replay(cfg, service.url, REPLAY_FROM, progress=False)
        assert sent.ok == sent.rows > 0 and not sent.stopped, sent.summary()
    finally:
        service.stop()
    check = monitoring_job.run_check(cfg)  # the latest window of the log, by event time: 2019
    assert pd.Timestamp(check.window_end) < pd.Timestamp("2020-01-01", tz="UTC")
    scored_day = (REPLAY_FROM + pd.Timedelta(days=3)).date()
    path, rows, _ = batch.score_day(cfg, scored_day)
    scores = pd.read_parquet(path)
    assert rows == len(scores) > 0
    return {"predict": ok.json(), "check": check, "batch": scores}


@pytest.fixture(scope="module")
def classification(tmp_path_factory, prefect_server) -> tuple[ProjectConfig, dict]:
    table = make_table(20_000, seed=11, task="classification")
    args = ["--label", "recovered", "--entity", "customer_id", "--label-delay", "7d", "--event-id", "visit_id"]
    cfg = init(tmp_path_factory.mktemp("init-cls"), table, args)
    good = {"visit_id": 1, "customer_id": 7, "pressure": 0.3, "dose": 1.2, "ward": "north"}
    out = run_lifecycle(cfg, good, {**good, "pressure": "high"}, "pressure")
    return cfg, out


def test_a_classification_table_with_an_entity_runs_the_whole_loop(classification) -> None:
    _, out = classification
    answer = out["predict"]
    assert 0.0 <= answer["score"] <= 1.0 and answer["model_version"] == "1"
    assert out["batch"]["score"].between(0, 1).all()
    drifted = set(out["check"].drifted_features)
    assert any(f.startswith("pressure") for f in drifted), out["check"].feature_drift
    assert not any(f.startswith("dose") for f in drifted), out["check"].feature_drift


def test_the_other_commands_work_in_an_init_project(classification) -> None:
    """history, reproduce (the same metrics from the recorded snapshot) and the feast CLI itself."""
    cfg, _ = classification
    config = str(cfg.root / "mlcycle.yaml")
    shown = CliRunner().invoke(app, ["history", "--config", config])
    assert shown.exit_code == 0 and "champion" in shown.output, shown.output
    again = CliRunner().invoke(app, ["reproduce", "1", "--config", config])
    assert again.exit_code == 0 and "identical" in again.output, again.output
    feast = subprocess.run([str(Path(sys.executable).parent / "feast"), "feature-views", "list"],
                           cwd=cfg.feature_repo_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert feast.returncode == 0 and "customer_id_stats" in feast.stdout, feast.stderr[-2000:]


def test_an_unknown_category_on_an_init_project_is_reported_not_refused(classification) -> None:
    """Checked against the contract's category set: init wrote ward's four values there."""
    from mlcycle.serving.scorer import Scorer

    cfg, _ = classification
    scorer = Scorer(cfg, log_predictions=False)
    scorer.load()
    assert scorer.ready, scorer.not_ready_reason
    good = {"visit_id": 2, "customer_id": 7, "pressure": 0.3, "dose": 1.2}
    known, strange = scorer.score([{**good, "ward": "north"}, {**good, "ward": "upstairs"}])
    assert known.unknown_categories == [] and strange.unknown_categories == ["ward"]


def test_online_vectors_equal_offline_rows_on_an_init_project(classification) -> None:
    """Train/serve skew: after publishing up to now, the online vector of an entity's next request
    equals the point-in-time offline row at the same instant (aggregations and request features)."""
    cfg, _ = classification
    pipeline.publish_features(cfg, end=datetime.now(UTC))
    store = open_project_store(cfg)
    plan = plan_for(store, cfg.features.feature_service)
    table = pd.read_parquet(cfg.table_path)
    last = table.drop_duplicates("customer_id", keep="last").tail(120).reset_index(drop=True)
    # An hour after the table's last event: every entity's latest state is known then, and within
    # the views' TTL for the entities seen in the last month (the table's calendar, not today's).
    when = (table[cfg.table.timestamp].max() + pd.Timedelta(hours=1)).to_pydatetime().replace(microsecond=0)
    keys = list(cfg.table.entities)
    request = entity_frame(last, keys, plan.request_fields, cfg.table.timestamp).drop(
        columns=[*keys, "event_timestamp"]
    )
    request["request_unix"] = int(when.timestamp())
    online = online_vector(store, last[keys].to_dict("records"), request.to_dict("records"), plan.name, now=when)
    offline = training_set(store, last[keys].assign(event_timestamp=pd.Timestamp(when), **request), plan.name)
    assert skew_report(online, offline, plan.model_features) == {}
    aggregated = [f for f in plan.model_features if f.startswith("customer")]
    assert aggregated and online[aggregated].notna().to_numpy().mean() > 0.5  # not vacuous


API_KEY, ADMIN = "contract-api-key", "contract-admin-token"
# Every phase and every check of `schemathesis run`, on every operation of /docs.json. Derandomized
# (the same cases every run, so a CI failure is one anybody reproduces) and bounded (about a thousand
# requests); nothing learned from an earlier run (no cache, no example database) or from the answers
# (a request id or a policy's time fed back into the next cases would make each run draw others).
CONTRACT: dict = {
    "seed": 22,
    "workers": 1,
    "cache": {"enabled": False},
    "generation": {"deterministic": True, "max-examples": 100, "database": "none"},
    "phases": {
        "examples": {"extra-data-sources": {"responses": False}},
        "coverage": {"extra-data-sources": {"responses": False}},
        "fuzzing": {"extra-data-sources": {"responses": False}, "error-feedback": {"enabled": False}},
    },
    "auth": {"openapi": {"ApiKey": {"api_key": API_KEY}, "AdminToken": {"api_key": ADMIN}}},
}


@dataclass
class ContractRun:
    failures: list[str]  # as `schemathesis run` reports them: the check, the answer, a curl to replay
    statuses: dict[str, set[int]]  # per operation, the statuses the service answered
    stop_reason: str


def run_contract(schema: schemathesis.BaseSchema) -> ContractRun:
    """Run schemathesis's engine (what `schemathesis run` runs) in this process, and collect what
    it found. ``schemathesis.pytest.from_fixture``, its way to test a server a fixture starts, fails
    on pytest 9.2 (it sets ``Function._nodeid``, which pytest no longer has)."""
    from schemathesis.core.failures import format_failures
    from schemathesis.engine import events, from_schema

    found: list[str] = []
    statuses: dict[str, set[int]] = {}
    stop_reason = "no EngineFinished event"
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for case_id, interaction in recorder.interactions.items():
                if interaction.response is not None:
                    label = recorder.cases[case_id].value.operation.label if case_id in recorder.cases else "?"
                    statuses.setdefault(label, set()).add(interaction.response.status_code)
            for case_id, checks in recorder.checks.items():
                failed = [check.failure_info for check in checks if check.failure_info is not None]
                if failed:
                    interaction = recorder.interactions.get(case_id)
                    text = format_failures(
                        case_id=case_id,
                        response=interaction.response if interaction is not None else None,
                        failures=[info.failure for info in failed],
                        curl=failed[0].code_sample,
                        config=schema.config.output,
                    )
                    found.append(f"{recorder.label}: {text}")
        elif isinstance(event, events.NonFatalError):
            found.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            found.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            stop_reason = str(event.stop_reason)
            found.extend(f"after the run: {failure.title}: {failure.message}" for failure in event.failures)
    return ContractRun(found, statuses, stop_reason)


@pytest.fixture
def contract_api(classification, tmp_path_factory) -> Iterator[schemathesis.BaseSchema]:
    """The OpenAPI document of the classification project's service, as it serves it. The service
    runs on a copy of the project with its registry (the fuzz moves the traffic policy and logs
    predictions at any time; the copy keeps that from the other tests), for this test only, with an
    API key and an admin token, so every guarded answer is tried with and without them."""
    cfg, _ = classification
    root = tmp_path_factory.mktemp("contract") / "project"
    shutil.copytree(cfg.root, root, ignore=shutil.ignore_patterns("__pycache__", "service.log"))
    env = {"MLCYCLE_API_KEY": API_KEY, "MLCYCLE_ADMIN_TOKEN": ADMIN, "MLCYCLE_WORKERS": "1"}
    service = ServiceProcess(load_config(root / "mlcycle.yaml"), env=env)
    service.start()
    try:
        with httpx.Client(base_url=service.url, trust_env=False, timeout=30) as http:
            document = http.get("/docs.json").json()
        # The calls go out through `requests`: no proxy variables, or loopback calls would leave.
        config = schemathesis.Config.from_dict({**CONTRACT, "base-url": service.url})
        with mock.patch.dict(os.environ, {k: "" for k in os.environ if k.lower().endswith("_proxy")}):
            yield schemathesis.openapi.from_dict(document, config=config)
    finally:
        service.stop()


def test_the_api_document_is_true_to_every_answer_of_an_init_projects_service(contract_api) -> None:
    """Issue 22: schemathesis against /docs.json found a 400's `detail` a list where the document
    said a string, a 200's `error` null where it said a non-nullable string, and 401 and 409
    undeclared. Now every status, content type and body is one the document declares; a
    schema-valid request is taken, an invalid one refused, a guarded operation refused without its
    token, an undeclared method refused."""
    run = run_contract(contract_api)
    assert run.failures == [], "\n\n".join(run.failures)
    assert run.stop_reason == "completed"
    # Not vacuous: every API was called, and answered with its declared successes and refusals.
    for operation in ("POST /predict", "POST /predict_batch", "POST /rollout/status", "POST /admin/traffic"):
        assert {200, 400, 401} <= run.statuses.get(operation, set()), (operation, run.statuses)
    assert {400, 401, 409} <= run.statuses.get("POST /admin/rollback", set()), run.statuses  # v1 only: 409


def test_a_regression_table_without_entity_runs_the_whole_loop(tmp_path_factory, prefect_server) -> None:
    table = make_table(12_000, seed=5, task="regression")
    args = ["--label", "stay_days", "--task", "regression", "--label-delay", "2d", "--event-id", "visit_id"]
    cfg = init(tmp_path_factory.mktemp("init-reg"), table, args)
    assert cfg.task == "regression" and cfg.table.entities == []
    # This one trains LightGBM: the flavor goes through train → serve → batch-score like xgboost's.
    raw = yaml.safe_load((cfg.root / "mlcycle.yaml").read_text())
    raw["model"] = {**raw.get("model", {}), "flavor": "lightgbm", "params": {"num_leaves": 15}}
    (cfg.root / "mlcycle.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(cfg.root / "mlcycle.yaml")
    good = {"visit_id": 1, "pressure": 0.3, "dose": 1.2, "ward": "east"}
    out = run_lifecycle(cfg, good, {**good, "dose": True}, "dose")
    answer = out["predict"]
    # The label is 5 + 2 * effect + noise: a typical stay lies well inside (-20, 40) days.
    assert -20 < answer["score"] < 40 and answer["features_missing"] == []
    assert np.isfinite(out["batch"]["score"]).all()
    champion = registry.version_by_alias(registry.client_for(cfg), cfg.model.name, registry.CHAMPION)
    assert champion.tags["mlcycle.flavor"] == "lightgbm"
    drifted = set(out["check"].drifted_features)
    assert any(f.startswith("pressure") for f in drifted), out["check"].feature_drift
    assert date.fromisoformat(out["check"].window_end[:10]).year == 2019


def test_a_table_without_an_event_id_is_monitored_and_up_leaves_the_stream_out(
    tmp_path_factory, prefect_server
) -> None:
    """Issue 22: a table with no event id reached a champion and served, then `mlcycle monitor`
    crashed (no label joins a prediction without an id). Now drift is judged, decay is "not
    measurable" with the reason and the fix, and `up` does not plan a stream consumer that would
    exit at once; the generic service runs, and `mlcycle down` is the way to stop."""
    from mlcycle.ops import stack

    table = make_table(12_000, seed=17, task="classification").drop(columns=["visit_id"])
    cfg = init(tmp_path_factory.mktemp("init-no-id"), table, ["--label", "recovered", "--entity", "customer_id",
                                                              "--label-delay", "7d"])  # fmt: skip
    assert cfg.table.event_id is None
    good = {"customer_id": 7, "pressure": 0.3, "dose": 1.2, "ward": "north"}
    out = run_lifecycle(cfg, good, {**good, "pressure": "high"}, "pressure")
    check = out["check"]
    assert any(f.startswith("pressure") for f in check.drifted_features), check.feature_drift
    assert check.prediction_drift is not None  # scores judged: they need no label
    assert check.decay["state"] == "not_measurable" and "set table.event_id" in check.decay["reasons"][0]

    shown = CliRunner().invoke(app, ["monitor", "--config", str(cfg.root / "mlcycle.yaml")])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())  # the console wraps long lines
    assert "| pressure" in text and "**drift**" in text
    assert "Not measurable: no event id declared (table.event_id)" in text and "set table.event_id" in text

    plan = stack.plan_up(cfg)
    assert stack.CONSUMER not in plan.start and stack.SERVICE in plan.start
    assert any("table.event_id" in line for line in plan.lines())
    assert "make" not in stack.format_table({}, cfg) and "mlcycle down" in stack.format_table({}, cfg)
