"""Profile ``scale`` against the machine's real PostgreSQL and Redis: Feast online store on Redis and
registry in PostgreSQL, MLflow and the promotion log in PostgreSQL, the prediction log in a table —
and a Redis outage under live traffic, which the service must answer with 503s and survive.

Isolation: every test state lives in a database this module creates (``mlcycle_test_<random>``,
plus its ``_prefect`` sibling) and drops at teardown, and under a Feast project
(``mlcycle_fraud_t<random>``) whose Redis keys are deleted at teardown — only those. The outage test
stops a redis-server of its own on a free port, never the machine's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import psycopg
import pytest
import redis
import yaml
from fraud.traffic import request_body
from psycopg import sql
from tests.conftest import SMALL_DATA, TEST_GATES, copy_project

from mlcycle import settings as scale
from mlcycle.features import entity_frame, open_project_store, pipeline, plan_for, skew_report, training_set
from mlcycle.features.store import online_vector
from mlcycle.flows import load_flow
from mlcycle.monitoring.job import answered_predictions
from mlcycle.ops import stack
from mlcycle.ops.service_process import ServiceProcess, free_port
from mlcycle.project.config import ConfigError, ProjectConfig, load_config
from mlcycle.registry import aliases as registry
from mlcycle.serving.prediction_log import COLUMNS
from mlcycle.serving.prediction_store import TABLE, SqlPredictionLog, read_logged_predictions, read_sql_predictions
from mlcycle.serving.scorer import Scorer

pytestmark = pytest.mark.slow

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
MACHINE_REDIS = "redis://127.0.0.1:6379/0"
# Small world, loose gates: this module checks where state goes, not model quality.
DATA = {**SMALL_DATA, "n_transactions": 12000, "n_users": 1200, "n_merchants": 200}
LOOSE_GATES = {**TEST_GATES, "min_roc_auc": 0.5, "min_pr_auc": 0.0, "max_fairness_gap": 1.0, "fairness_min_support": 1}


def _reachable() -> str | None:
    """Why the machine's servers cannot be used, or None."""
    try:
        with psycopg.connect(f"{PG_SERVER}/postgres", connect_timeout=3):
            pass
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_SERVER} unreachable: {exc}"
    try:
        redis.Redis.from_url(MACHINE_REDIS, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        return f"Redis at {MACHINE_REDIS} unreachable: {exc}"
    return None


def drop_database(name: str) -> None:
    """Drop a database this module created; FORCE closes pools still open in this process
    (MLflow's, Feast's registry's, the prediction log's)."""
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_exists(name: str) -> bool:
    with psycopg.connect(f"{PG_SERVER}/postgres") as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def project_keys(client: redis.Redis, project: str) -> list[bytes]:
    """Feast ends every Redis key with the project name (serialized entity key + project)."""
    suffix = project.encode()
    return [k for k in client.scan_iter(match=b"*" + suffix, count=1000) if k.endswith(suffix)]


@dataclass
class ScaleWorld:
    database: str
    prefix: str
    project: str  # the Feast project: mlcycle_fraud_<prefix>
    pg_url: str
    redis_url: str


@pytest.fixture(scope="module")
def world() -> Iterator[ScaleWorld]:
    """The environment of profile scale, pointed at a fresh database and Redis prefix; both are
    removed at teardown, whatever the tests did."""
    if reason := _reachable():
        pytest.skip(reason)
    token = secrets.token_hex(4)
    w = ScaleWorld(
        database=f"mlcycle_test_{token}",
        prefix=f"t{token}",
        project=f"mlcycle_fraud_t{token}",
        pg_url=f"{PG_SERVER}/mlcycle_test_{token}",
        redis_url=MACHINE_REDIS,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLCYCLE_PROFILE", raising=False)  # the project's file says scale
        mp.setenv("MLCYCLE_PG_URL", w.pg_url)
        mp.setenv("MLCYCLE_REDIS_URL", w.redis_url)
        mp.setenv("MLCYCLE_REDIS_PREFIX", w.prefix)
        try:
            yield w
        finally:
            client = redis.Redis.from_url(MACHINE_REDIS)
            keys = project_keys(client, w.project)
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
            assert project_keys(client, w.project) == []
            for name in (w.database, w.database + scale.PREFECT_DATABASE_SUFFIX):
                drop_database(name)
            scale.forget_ensured()


@pytest.fixture(scope="module")
def scale_project(world: ScaleWorld, tmp_path_factory: pytest.TempPathFactory) -> ProjectConfig:
    """A small project whose mlcycle.yaml says ``profile: scale``: data built, features published."""
    root = tmp_path_factory.mktemp("scale") / "p"
    copy_project(root, DATA, {"gates": LOOSE_GATES})
    raw = yaml.safe_load((root / "mlcycle.yaml").read_text())
    raw["profile"] = "scale"
    (root / "mlcycle.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(root / "mlcycle.yaml")
    assert cfg.profile == "scale"
    pipeline.generate_data(cfg)
    pipeline.build_features(cfg)
    pipeline.publish_features(cfg)
    return cfg


@pytest.fixture(scope="module")
def trained(scale_project: ProjectConfig, prefect_server) -> dict:
    """The training flow run once on the scale project: MLflow and the promotion log on PostgreSQL."""
    result = load_flow(scale_project.root, "training", "train")(config=str(scale_project.root / "mlcycle.yaml"))
    assert result["alias"] == registry.CHAMPION, result.get("failed")
    return result


def pg_rows(world: ScaleWorld, query: str, *params: object) -> list[tuple]:
    with psycopg.connect(world.pg_url) as conn:
        return conn.execute(query, params).fetchall()


# ----------------------------------------------------------------------------- settings
def test_profile_settings_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mlcycle.yaml").write_text("profile: local\n")
    monkeypatch.setenv("MLCYCLE_PROFILE", "scale")
    monkeypatch.setenv("MLCYCLE_PG_URL", "postgresql://u:p%40w@db.internal:6543/fraud")
    monkeypatch.setenv("MLCYCLE_REDIS_URL", "rediss://:secret@cache.internal:6380/2")
    monkeypatch.setenv("MLCYCLE_REDIS_PREFIX", "team_a")
    cfg = load_config(tmp_path / "mlcycle.yaml")
    assert cfg.profile == "scale"
    assert cfg.tracking_uri == cfg.promotion_log_uri == "postgresql+psycopg://u:p%40w@db.internal:6543/fraud"
    assert cfg.scale.prefect_database_url == "postgresql+asyncpg://u:p%40w@db.internal:6543/fraud_prefect"
    env = cfg.scale.feast_env()
    assert env["MLCYCLE_FEAST_PROJECT_SUFFIX"] == "_team_a"
    assert env["MLCYCLE_FEAST_REDIS"].startswith("cache.internal:6380,db=2,password=secret,ssl=true,")
    assert "retry=null" in env["MLCYCLE_FEAST_REDIS"]  # fail fast: no 10 s backoff per request
    monkeypatch.setenv("MLCYCLE_REDIS_PREFIX", "no-dashes; or spaces")
    with pytest.raises(ConfigError, match="MLCYCLE_REDIS_PREFIX"):
        load_config(tmp_path / "mlcycle.yaml")
    monkeypatch.delenv("MLCYCLE_PROFILE")
    monkeypatch.delenv("MLCYCLE_REDIS_PREFIX")
    assert load_config(tmp_path / "mlcycle.yaml").tracking_uri.startswith("sqlite:///")


def test_prefect_server_gets_its_own_postgres_database(world: ScaleWorld, tmp_path: Path) -> None:
    (tmp_path / "mlcycle.yaml").write_text("profile: scale\n")
    cfg = load_config(tmp_path / "mlcycle.yaml")
    env = stack.prefect_database_env(cfg)
    name = world.database + "_prefect"
    assert env == {"PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"}
    assert database_exists(name)  # created if missing; dropped by the fixture, never by the library
    (tmp_path / "mlcycle.yaml").write_text("profile: local\n")
    assert stack.prefect_database_env(load_config(tmp_path / "mlcycle.yaml")) == {}


# ----------------------------------------------------------------------------- the loop on scale
def test_features_on_redis_and_postgres_match_the_offline_rows(world: ScaleWorld, scale_project: ProjectConfig):
    cfg = scale_project
    fs = open_project_store(cfg)
    assert fs.project == world.project
    assert fs.config.online_store.type == "redis" and fs.config.registry.registry_type == "sql"
    assert len(project_keys(redis.Redis.from_url(world.redis_url), world.project)) > 0
    registered = pg_rows(world, "SELECT feature_view_name FROM feature_views WHERE project_id = %s", world.project)
    assert {r[0] for r in registered} >= {"user_txn_stats", "merchant_stats", "user_profile"}
    assert not cfg.feast_dir.exists()  # no SQLite registry or online store on the side

    # The train/serve skew check of test_train_serve_skew.py, through Redis.
    tx = pd.read_parquet(cfg.raw_dir / "transactions.parquet")
    sample = tx.drop_duplicates("user_id", keep="last").tail(150).reset_index(drop=True)
    when = datetime.now(UTC).replace(microsecond=0)
    plan = plan_for(fs, cfg.features.feature_service)
    request = entity_frame(sample, ["user_id", "merchant_id"], plan.request_fields).drop(
        columns=["user_id", "merchant_id", "event_timestamp"]
    )
    request["request_unix"] = int(when.timestamp())
    keys = sample[["user_id", "merchant_id"]]
    service = cfg.features.feature_service
    online = online_vector(fs, keys.to_dict("records"), request.to_dict("records"), service, now=when)
    offline = training_set(fs, keys.assign(event_timestamp=pd.Timestamp(when), **request), service)
    assert skew_report(online, offline, plan_for(fs, service).model_features) == {}
    assert online["txn_count_30d"].notna().mean() > 0.9  # not vacuous: the values came from Redis


@pytest.mark.parametrize("shift_days", [0, 3, -9])
def test_direct_redis_read_equals_feasts_online_read(scale_project: ProjectConfig, shift_days: int) -> None:
    """The serving path reads Redis in one pipeline (``_RedisReader``); Feast's ``get_online_features``
    gives the same vectors: values, the merchant snapshot's 2-day TTL (3 days on), rows stamped after
    the request (9 days back), unknown users and merchants, ``features_missing``."""
    cfg = scale_project
    fs = open_project_store(cfg)
    service = cfg.features.feature_service
    tx = pd.read_parquet(cfg.raw_dir / "transactions.parquet")
    sample = tx.drop_duplicates("user_id", keep="last").tail(100).reset_index(drop=True)
    sample.loc[:4, ["user_id", "merchant_id"]] = 10**7  # unknown entities
    when = (datetime.now(UTC) + timedelta(days=shift_days)).replace(microsecond=0)
    plan = plan_for(fs, service)
    request = entity_frame(sample, ["user_id", "merchant_id"], plan.request_fields).drop(
        columns=["user_id", "merchant_id", "event_timestamp"]
    )
    request["request_unix"] = int(when.timestamp())
    keys = sample[["user_id", "merchant_id"]].to_dict("records")
    direct = online_vector(fs, keys, request.to_dict("records"), service, now=when)
    feast = online_vector(fs, keys, request.to_dict("records"), service, now=when, engine="feast")
    pd.testing.assert_frame_equal(direct, feast)
    # Which rows' 30-day count is missing, worked out from the transactions and the view's declared
    # TTL, not from either read: the user is unknown; or its online row — the state after its last
    # transaction, stamped 1 µs later and read in whole seconds — is stamped after the request, or
    # is older than the TTL. Here: 0 days, only the unknown five; 3 days on, the same (a 30-day TTL);
    # 9 days back, every row (each of these users transacted in the last 9 days).
    ttl_s = fs.get_feature_view("user_txn_stats").ttl.total_seconds()
    last = pd.to_datetime(tx.groupby("user_id")["event_timestamp"].max(), utc=True)
    stamped = last.reindex(sample["user_id"]) + pd.Timedelta(microseconds=1)
    seconds = [None if pd.isna(t) else math.floor(t.timestamp()) for t in stamped]
    when_s = int(when.timestamp())
    expected = [s is None or s > when_s or when_s - s > ttl_s for s in seconds]
    assert direct["txn_count_30d"].isna().tolist() == expected
    assert sum(expected) == (100 if shift_days == -9 else 5)  # the cases this test names all occur


def test_training_registry_and_promotion_log_live_in_postgres(
    world: ScaleWorld, scale_project: ProjectConfig, trained: dict
) -> None:
    cfg = scale_project
    version = str(trained["version"])
    aliases = pg_rows(world, "SELECT name, alias, version FROM registered_model_aliases")
    assert (cfg.model.name, registry.CHAMPION, int(version)) in aliases
    moves = pg_rows(world, "SELECT model, alias, to_version FROM mlcycle_promotion_log")
    assert (cfg.model.name, registry.CHAMPION, version) in moves
    history = registry.PromotionLog(cfg.promotion_log_uri).history(cfg.model.name)
    assert history and history[0].to_version == version
    assert not (cfg.data_path / "mlflow.db").exists() and not (cfg.data_path / "promotions.db").exists()
    # Artifacts stay on files (object storage in production): the model is loadable from there.
    assert any((cfg.data_path / "mlartifacts").rglob("MLmodel"))


def test_scorer_logs_predictions_to_postgres(world: ScaleWorld, scale_project: ProjectConfig, trained: dict) -> None:
    cfg = scale_project
    tx = pd.read_parquet(cfg.raw_dir / "transactions.parquet")
    requests = [request_body(r)["request"] for r in tx.tail(40).itertuples()]
    since = datetime.now(UTC)
    scorer = Scorer(cfg)
    try:
        scorer.load()
        assert scorer.ready, scorer.not_ready_reason
        results = scorer.score(requests)
    finally:
        scorer.close()
    assert scorer.prediction_log.written == len(requests)
    assert pg_rows(world, f"SELECT count(*) FROM {TABLE} WHERE logged_at >= %s", since)[0][0] == len(requests)
    assert not cfg.predictions_dir.exists()  # nothing went to parquet

    logged = read_logged_predictions(cfg, since)
    # The log's own columns, then the entity keys and request fields expanded from their JSON.
    assert list(logged.columns)[: len(COLUMNS)] == COLUMNS
    assert {"user_id", "merchant_id", "amount", "country"} <= set(logged.columns[len(COLUMNS) :])
    assert str(logged["logged_at"].dtype) == "datetime64[ns, UTC]"
    by_id = logged.set_index("request_id")
    for request, result in zip(requests, results, strict=True):
        row = by_id.loc[result.request_id]
        assert row["score"] == pytest.approx(result.score)
        assert row["model_version"] == result.model_version == str(trained["version"])
        assert int(row["event_id"]) == request["transaction_id"]  # the event id, under the log's own name
        assert set(json.loads(row["features"])) == set(scorer.plan.model_features)
    # What monitoring reads from the table: the features the model saw, as columns.
    answered = answered_predictions(cfg, since)
    assert len(answered) == len(requests) and "txn_count_30d" in answered.columns
    assert read_logged_predictions(cfg, datetime.now(UTC)).empty


def _record(request_id: str) -> dict:
    return {"request_id": request_id, "logged_at": datetime.now(UTC), "user_id": 1, "merchant_id": 2,
            "score": 0.5, "shadow": False, "variant": "champion", "request_unix": 0}  # fmt: skip


def test_sql_prediction_log_keeps_a_refused_batch_and_retries(world: ScaleWorld, monkeypatch) -> None:
    """PostgreSQL refusing a batch (a restart, a failover) costs no records: the batch waits for the next try."""
    calls: list[int] = []
    insert = SqlPredictionLog._insert
    checked = threading.Event()

    def refuse_once(self: SqlPredictionLog, rows: list[dict]) -> None:
        if calls:  # the retry (0.2 s on) waits until the test has seen the refused batch kept
            assert checked.wait(60), "the test never checked the refused batch"
        calls.append(len(rows))
        if len(calls) == 1:
            raise OSError("connection refused (simulated)")
        insert(self, rows)

    monkeypatch.setattr(SqlPredictionLog, "_insert", refuse_once)
    since = datetime.now(UTC)
    writer = SqlPredictionLog(scale.ScaleSettings.from_env().tracking_uri, flush_seconds=0.2)
    writer.append([_record("first")])
    deadline = time.monotonic() + 30
    while not calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert calls == [1] and writer.written == 0  # refused, kept
    checked.set()
    writer.append([_record("second")])
    writer.close()
    assert writer.written == 2
    logged = read_sql_predictions(scale.ScaleSettings.from_env().tracking_uri, since)
    assert set(logged["request_id"]) == {"first", "second"}


def test_sql_prediction_log_copies_awkward_values_exactly(world: ScaleWorld) -> None:
    """The batch goes in by COPY: text with tabs, newlines, backslashes and quotes, empty text,
    NULLs, booleans and floats come back as they were sent."""
    since = datetime.now(UTC)
    odd = 'tab\there\nnew line \\ back "quoted" \\N not null'
    records = [
        {**_record("awkward"), "request": json.dumps({"note": odd}), "features_missing": "", "error": odd,
         "score": 0.1 + 0.2, "decision": True, "threshold": 1e-300, "latency_ms": None, "event_id": None},
        {**_record("plain"), "score": None, "decision": None, "shadow": True},
    ]  # fmt: skip
    writer = SqlPredictionLog(scale.ScaleSettings.from_env().tracking_uri, flush_seconds=0.1)
    writer.append(records)
    writer.close()
    assert writer.written == 2
    logged = read_sql_predictions(scale.ScaleSettings.from_env().tracking_uri, since).set_index("request_id")
    awkward, plain = logged.loc["awkward"], logged.loc["plain"]
    assert json.loads(awkward["request"]) == {"note": odd} and awkward["error"] == odd
    assert awkward["features_missing"] == "" and awkward["score"] == 0.1 + 0.2 and awkward["threshold"] == 1e-300
    assert bool(awkward["decision"]) is True and awkward["event_id"] is None and math.isnan(awkward["latency_ms"])
    assert math.isnan(plain["score"]) and plain["decision"] is None and bool(plain["shadow"]) is True


def test_sql_prediction_log_starts_without_a_database() -> None:
    """A service must start (and report itself not ready) while PostgreSQL is down, not crash."""
    writer = SqlPredictionLog(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere", flush_seconds=0.1)
    writer.append([_record("lost")])
    writer.close(timeout=30)
    assert writer.written == 0


# ----------------------------------------------------------------------------- fault: Redis stops
@dataclass
class Traffic:
    """Requests sent one after another in the background, every answer kept (time, status, body)."""

    client: httpx.Client
    payload: dict
    answers: list[tuple[float, int, dict]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # how long each answer took
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                r = self.client.post("/predict", json=self.payload)
                self.answers.append((time.monotonic(), r.status_code, r.json()))
            except httpx.HTTPError as exc:  # a transport error is a finding too
                self.answers.append((time.monotonic(), -1, {"error": repr(exc)}))
            self.seconds.append(self.answers[-1][0] - sent)
            time.sleep(0.05)

    def wait_for(self, predicate, timeout: float, after: float = 0.0) -> tuple[float, int, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for answer in list(self.answers):
                if answer[0] >= after and predicate(answer):
                    return answer
            time.sleep(0.1)
        tail = [(s, b.get("error") or b.get("model_version")) for _, s, b in self.answers[-5:]]
        raise AssertionError(f"no such answer within {timeout:.0f}s; last answers: {tail}")

    def stop(self) -> None:
        self._stop.set()


class PrivateRedis:
    """A redis-server of this test's own on a free port, without persistence."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.pidfile = workdir / f"redis-{self.port}.pid"
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        subprocess.run(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "yes", "--dir", str(self.workdir),
             "--pidfile", str(self.pidfile), "--logfile", str(self.workdir / f"redis-{self.port}.log")],
            check=True,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"private redis-server on port {self.port} did not answer")
            time.sleep(0.1)

    def stop(self) -> None:
        """``SHUTDOWN NOSAVE`` on our port; then make sure the recorded pid (ours) is gone."""
        pid = int(self.pidfile.read_text()) if self.pidfile.exists() else None
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True, timeout=10)
        deadline = time.monotonic() + 10
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def test_redis_outage_is_a_503_and_serving_recovers_by_itself(
    world: ScaleWorld, scale_project: ProjectConfig, trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = scale_project
    cache = PrivateRedis(tmp_path)
    cache.start()
    service = None
    traffic = None
    try:
        monkeypatch.setenv("MLCYCLE_REDIS_URL", cache.url)  # the service inherits it
        pipeline.publish_features(cfg, fresh=True)  # a new, empty Redis: full load
        tx = pd.read_parquet(cfg.raw_dir / "transactions.parquet")
        known = next(tx.drop_duplicates("user_id", keep="last").tail(1).itertuples())
        service = ServiceProcess(cfg, env={"MLCYCLE_REFRESH_SECONDS": "0.5"}).start()
        pid = service.proc.pid
        with httpx.Client(base_url=service.url, trust_env=False, timeout=30) as client:
            traffic = Traffic(client, request_body(known))
            thread = threading.Thread(target=traffic.run, daemon=True)
            thread.start()
            traffic.wait_for(lambda a: a[1] == 200 and a[2]["features_missing"] == [], timeout=60)

            stopped_at = time.monotonic()
            cache.stop()
            _, _, down = traffic.wait_for(lambda a: a[1] == 503, timeout=30, after=stopped_at)
            assert "online feature store unavailable" in down["error"], down

            cache.start()  # same port, empty: this Redis keeps nothing on disk
            restarted_at = time.monotonic()  # it answers from here on (start() waits for its PING)
            pipeline.publish_features(cfg, fresh=True)  # refill it, from this process
            republished_at = time.monotonic()
            recovered_at, _, _ = traffic.wait_for(lambda a: a[1] == 200 and a[2]["features_missing"] == [],
                                                  timeout=60, after=republished_at)  # fmt: skip
            deadline = time.monotonic() + 60  # a few more answers after recovery; only a hang guard
            while sum(a[0] > recovered_at for a in list(traffic.answers)) < 5 and time.monotonic() < deadline:
                time.sleep(0.1)
            traffic.stop()
            thread.join(10)

        assert service.proc.poll() is None and service.proc.pid == pid, "the service must not restart"
        statuses = {status for _, status, _ in traffic.answers}
        assert statuses <= {200, 503}, f"only 200 or 503, never a 500 or a dropped connection: {statuses}"
        outage = [a for a in traffic.answers if a[1] == 503]
        assert all("online feature store" in body["error"] for _, _, body in outage)
        # 503s only while Redis was down (an answer in flight at either edge may straddle it).
        assert all(stopped_at - 1 <= at <= restarted_at + 5 for at, _, _ in outage)
        after = [a for a in traffic.answers if a[0] > recovered_at]
        assert after and all(status == 200 and not body["features_missing"] for _, status, body in after)
        took = sorted(t for t, (_, status, _) in zip(traffic.seconds, traffic.answers, strict=True) if status == 503)
        print(f"\n{len(traffic.answers)} requests: {len(outage)} answered 503 while Redis was down "
              f"(median {1000 * took[len(took) // 2]:.0f} ms, slowest {1000 * took[-1]:.0f} ms); "
              f"first full answer {recovered_at - republished_at:.1f}s after the refill")  # fmt: skip
    finally:
        if traffic is not None:
            traffic.stop()
        if service is not None:
            service.stop()
        cache.stop()


def test_the_stream_consumer_on_redis_equals_the_offline_engine_with_late_events(
    world: ScaleWorld, scale_project: ProjectConfig
) -> None:
    """Profile scale: the broker is the machine's Redis and so is Feast's online store, which keeps
    a row only if it is newer than the stored one. The later half of a burst arrives first, then the
    earlier half: late events that change the state of the same newest instant must still reach the
    online store (written a microsecond later), and the rows equal the offline engine's."""
    from tests.test_streaming import _assert_equal, _drain, _events, _publish

    from mlcycle.data import validation
    from mlcycle.streaming.broker import connect
    from mlcycle.streaming.consumer import StreamConsumer, open_stream, stream_keys

    client = connect(world.redis_url)
    stream = open_stream(scale_project, client)
    try:
        now = pd.Timestamp(datetime.now(UTC))
        users = [int(u) for u in validation.load_table(scale_project)["user_id"].drop_duplicates().head(5)]
        events = _events(scale_project, 200, seed=12, users=users, end=now).sort_values("event_timestamp")
        consumer = StreamConsumer(scale_project, stream, name="redis", scorer=False)
        consumer.bootstrap(now=now)
        _publish(stream, events.iloc[100:])
        _drain(consumer)
        _publish(stream, events.iloc[:100])  # older than what was applied: late, inside the windows
        _drain(consumer)
        assert consumer.totals["applied"] == 200
        _assert_equal(scale_project, users, consumer, events)
    finally:
        for key in client.scan_iter(match=f"{stream_keys(scale_project).ns}*"):
            client.delete(key)
        client.close()


def test_the_drill_in_profile_scale(world: ScaleWorld, scale_project: ProjectConfig, trained: dict, tmp_path) -> None:
    """Back up, destroy (the test's database dropped, its Redis keys deleted, data/ removed),
    restore, `features publish --fresh`: the same aliases, history and audit, the same scores
    (the scorer /predict runs, in this process), and `reproduce` with identical metrics."""
    from typer.testing import CliRunner

    from mlcycle.cli.app import app
    from mlcycle.ops import backup as backups
    from mlcycle.registry import tracking

    cfg = scale_project
    config = ["--config", str(cfg.root / "mlcycle.yaml")]

    def cli(*args: str) -> str:
        result = CliRunner().invoke(app, [*args, *config])
        assert result.exit_code == 0, result.output
        return result.output

    def scored() -> list[tuple]:
        tx = pd.read_parquet(cfg.raw_dir / "transactions.parquet")
        scorer = Scorer(cfg)
        try:
            scorer.load()
            assert scorer.ready, scorer.not_ready_reason
            results = scorer.score([request_body(r)["request"] for r in tx.tail(20).itertuples()])
        finally:
            scorer.close()
        return [(r.score, r.model_version, tuple(r.features_missing)) for r in results]

    def state() -> dict:
        client = registry.client_for(cfg)
        return {
            "aliases": registry.aliases_of(client, cfg.model.name),
            "history": cli("history"),
            "audit": json.loads(cli("audit", "--json")),
            "v1": {k: v for k, v in json.loads(cli("audit", "1", "--json")).items() if k != "created"},
        }

    # What a restore brings back is the online store as the feature tables make it: streamed
    # aggregates (the consumer test above wrote some) are not in a backup (docs/operations.md).
    pipeline.publish_features(cfg, fresh=True)
    before, scores_before = state(), scored()
    dest = tmp_path / "backup"
    manifest = backups.backup(cfg, dest, out=lambda _: None)
    assert f"postgres/{world.database}.dump" in manifest.files and manifest.database == world.database
    assert world.pg_url not in (dest / "manifest.json").read_text()

    drop_database(world.database)  # the loss: the database, the online store, the files
    client = redis.Redis.from_url(MACHINE_REDIS)
    keys = project_keys(client, world.project)
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    shutil.rmtree(cfg.data_path, ignore_errors=True)
    assert not database_exists(world.database)

    backups.restore(dest, cfg.root, out=lambda _: None)
    with pytest.raises(backups.BackupError, match=r"database .* has \d+ tables"):  # never over state
        backups.restore(dest, tmp_path / "again", out=lambda _: None)
    pipeline.publish_features(cfg, fresh=True)
    assert state() == before
    assert scored() == scores_before
    result = tracking.reproduce(cfg, "1")
    assert result.data_hash_matches and result.identical


# ----------------------------------------------------------------------------- protect, on the servers
# After the drill: these remove rows, and the drill compares the project with itself.
def test_sql_retention_deletes_exactly_the_rows_before_the_cutoff(world: ScaleWorld, scale_project) -> None:
    """Rows stamped in 1999 by hand, ``now`` = 2000-01-01, 3 days: the cut-off is 1999-12-29 00:00, so
    the 20th, 25th and 28th go and the 30th stays; every row of the real runs (2026) is newer and stays."""
    from mlcycle.monitoring import retention
    from mlcycle.serving.prediction_store import write_sql_frame

    url = scale.ScaleSettings.from_env().tracking_uri
    days = ["1999-12-20", "1999-12-25", "1999-12-28T23:59:59", "1999-12-30"]
    frame = pd.DataFrame([{**_record(f"old-{d}"), "logged_at": pd.Timestamp(d, tz="UTC")} for d in days])
    write_sql_frame(url, frame)
    before = pg_rows(world, f"SELECT count(*) FROM {TABLE}")[0][0]
    result = retention.expire_prediction_log(scale_project, 3, datetime(2000, 1, 1, tzinfo=UTC))
    assert (result.removed, result.kept) == (3, before - 3)
    left = pg_rows(world, f"SELECT request_id FROM {TABLE} WHERE logged_at < '2000-01-01'")
    assert left == [("old-1999-12-30",)]


def test_forget_on_postgres_and_redis(world: ScaleWorld, scale_project: ProjectConfig) -> None:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from mlcycle.ops import forget as erasure
    from mlcycle.registry import governance as gov
    from mlcycle.serving.prediction_store import open_prediction_log

    cfg = scale_project
    users = pd.read_parquet(cfg.table_path, columns=["user_id"])["user_id"].astype(int)
    gone, kept = (int(u) for u in users.value_counts().index[:2])
    writer = open_prediction_log(cfg, flush_seconds=0.05)
    writer.append([{**_record(f"forget-{i}"), "entities": json.dumps({"user_id": u})}
                   for i, u in enumerate([gone] * 3 + [kept] * 2)])  # fmt: skip
    writer.close()

    def logged(user: int) -> int:  # PostgreSQL's own JSON operator: another route than forget's
        query = f"SELECT count(*) FROM {TABLE} WHERE (entities::json->>'user_id') = %s"
        return pg_rows(world, query, str(user))[0][0]

    def online_key(user: int) -> bytes:
        proto = EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=user)])
        return serialize_entity_key(proto, entity_key_serialization_version=3) + world.project.encode()

    client = redis.Redis.from_url(world.redis_url)
    expected, kept_rows = logged(gone), logged(kept)
    assert expected >= 3 and client.exists(online_key(gone)) and client.exists(online_key(kept))
    filenode = f"SELECT pg_relation_filenode('{TABLE}')"
    before = pg_rows(world, filenode)[0][0]

    report = erasure.forget(cfg, f"user_id={gone}", gov.Principal("olga", True, "test"))
    assert report.incomplete == []
    removed = {r.store: r.count for r in report.removed}
    assert removed["prediction log"] == expected and removed["online store"] == 1
    assert logged(gone) == 0 and logged(kept) == kept_rows
    assert not client.exists(online_key(gone)) and client.exists(online_key(kept))
    last = registry.PromotionLog(cfg.promotion_log_uri).history(limit=1)[0]
    assert last.action == "forget" and last.actor == "olga" and f"prediction log {expected}" in last.reason
    # The table was written anew (VACUUM FULL gives it a new file): a plain VACUUM leaves the deleted
    # rows' bytes in the old file's pages.
    assert pg_rows(world, filenode)[0][0] != before

    # A key that JSON writers escape ("/" and non-ASCII, as pandas writes the batch log's entities)
    # is found all the same.
    odd = "x/\u00e9"
    escaped = pd.DataFrame({"user_id": [odd]}).to_json(orient="records", lines=True).strip()
    assert "\\/" in escaped and "\\u00e9" in escaped  # the writer escaped both, as the batch log's does
    writer = open_prediction_log(cfg, flush_seconds=0.05)
    writer.append([{**_record("forget-odd"), "entities": escaped}])
    writer.close()
    odd_report = erasure.forget(cfg, f"user_id={odd}", gov.Principal("olga", True, "test"))
    assert {r.store: r.count for r in odd_report.removed}["prediction log"] == 1
    assert pg_rows(world, f"SELECT count(*) FROM {TABLE} WHERE (entities::json->>'user_id') = %s", odd)[0][0] == 0
