"""Unsafe defaults, closed (issue 10), checked without starting a server: passwords redacted
everywhere they could leave the process, prediction-log files private, the service bound to
loopback unless a key protects it, the shadow challenger's latency its own. The running service's
side (tokens, strict types, unknown categories, error log and metrics) is in test_serving.py and
test_service_faults.py, on the servers those modules start once."""

from __future__ import annotations

import logging
import os
import re
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from tests.conftest import REPO_ROOT, copy_project
from typer.testing import CliRunner

from mlcycle.features.store import Vectors
from mlcycle.ops import stack
from mlcycle.ops.service_process import ExposedWithoutKey, check_exposure, is_loopback
from mlcycle.project.config import ConfigError, ProjectConfig, load_config
from mlcycle.serving import rollout
from mlcycle.serving import scorer as serving
from mlcycle.serving.prediction_log import PredictionLog
from mlcycle.settings import redact

SECRET = "hunter2-S3cret"


# ----------------------------------------------------------------------------- redaction
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://postgres:hunter2@db:5432/mlcycle", "postgresql://postgres:***@db:5432/mlcycle"),
        ("postgresql+psycopg://u:p@ss:w@db/x?sslmode=require", "postgresql+psycopg://u:***@db/x?sslmode=require"),
        ("redis://:pw@cache:6379/0 and postgresql://a:b@c/d", "redis://:***@cache:6379/0 and postgresql://a:***@c/d"),
        ("cache:6379,db=0,password=pw,socket_timeout=5", "cache:6379,db=0,password=***,socket_timeout=5"),
        ("postgresql://db/x?user=u&password=pw", "postgresql://db/x?user=u&password=***"),
        # Nothing to hide: unchanged.
        ("postgresql://postgres@127.0.0.1:5432/mlcycle", "postgresql://postgres@127.0.0.1:5432/mlcycle"),
        ("sqlite:////tmp/p/data/mlflow.db", "sqlite:////tmp/p/data/mlflow.db"),
        ("http://127.0.0.1:5000/health user@example.com", "http://127.0.0.1:5000/health user@example.com"),
    ],
)
def test_redact_hides_every_password_and_nothing_else(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_config_errors_do_not_print_the_database_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLCYCLE_PROFILE", "scale")
    monkeypatch.setenv("MLCYCLE_PG_URL", f"mysql://fraud:{SECRET}@db.internal:3306/mlcycle")  # not PostgreSQL
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.yaml")
    message = str(caught.value)
    assert "MLCYCLE_PG_URL" in message and "db.internal" in message, message  # still says what is wrong
    assert SECRET not in message, message


@pytest.fixture
def scale_with_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ProjectConfig:
    cfg = copy_project(tmp_path / "p")
    monkeypatch.setenv("MLCYCLE_PROFILE", "scale")
    monkeypatch.setenv("MLCYCLE_PG_URL", f"postgresql://fraud:{SECRET}@127.0.0.1:5432/mlcycle")
    return load_config(cfg.root / "mlcycle.yaml")


def test_the_mlflow_ui_gets_the_password_in_its_environment_not_on_its_command_line(
    scale_with_password: ProjectConfig,
) -> None:
    cfg = scale_with_password
    assert SECRET in cfg.tracking_uri  # the premise: profile scale's tracking URI carries the password
    cmd, env = stack.mlflow_ui_launch(cfg, 5000)
    assert SECRET not in " ".join(cmd), cmd  # `ps` shows arguments to every user of the machine
    assert "--backend-store-uri" not in cmd
    assert env["MLFLOW_BACKEND_STORE_URI"] == cfg.tracking_uri  # MLflow still gets the whole URI


def test_log_header_and_pid_file_are_redacted_and_the_process_is_still_recognised(tmp_path: Path) -> None:
    """A command that does carry a secret (any launched command): neither the log header nor the pid
    file repeats it, and ``status``/``down`` still recognise the process as theirs."""
    cfg = copy_project(tmp_path / "p")
    command = [sys.executable, "-c", "import time; time.sleep(60)", f"postgresql://u:{SECRET}@h/db"]
    record = stack.launch(cfg, "secretive", command, "", stack.child_env(cfg))
    try:
        pid_file = stack.pid_path(cfg, "secretive").read_text()
        assert SECRET not in pid_file and "postgresql://u:***@h/db" in pid_file
        assert SECRET not in Path(record.log).read_text()
        reread = stack.Record.read(stack.pid_path(cfg, "secretive"))
        assert reread is not None and stack._runs_command(record.pid, reread.command)
        assert stack.is_running(reread)
    finally:
        assert stack.stop_record(record) == "stopped"


# ----------------------------------------------------------------------------- prediction log files
def test_prediction_log_files_and_directories_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)  # the most permissive umask: modes come from the code, not the environment
    try:
        log = PredictionLog(tmp_path / "predictions", flush_rows=1_000_000, flush_seconds=3600)
        log.append([{"request_id": "r1", "user_id": 1, "amount": 12.5, "logged_at": pd.Timestamp.now(tz="UTC")}])
        journals = list((tmp_path / "predictions" / "_journal").glob("*.jsonl"))
        assert journals
        for journal in journals:
            assert stat.S_IMODE(os.stat(journal).st_mode) == 0o600, oct(os.stat(journal).st_mode)
        log.close()
    finally:
        os.umask(old)
    parts = list((tmp_path / "predictions").glob("date=*/part-*.parquet"))
    assert parts, "the record reached parquet"
    for path in [*parts, *(p.parent for p in parts)]:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode & 0o077 == 0, f"{path}: {oct(mode)} is readable or writable by others"
    for directory in (tmp_path / "predictions", tmp_path / "predictions" / "_journal"):
        assert stat.S_IMODE(os.stat(directory).st_mode) & 0o022 == 0, f"{directory} is writable by others"


# ----------------------------------------------------------------------------- serve: loopback by default
@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_need_no_key(host: str) -> None:
    assert is_loopback(host)
    check_exposure(host, environ={})


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "fraud.example.com"])
def test_an_exposed_host_needs_the_api_key(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ExposedWithoutKey) as caught:
        check_exposure(host, environ={})
    assert "MLCYCLE_API_KEY" in str(caught.value) and host in str(caught.value)
    check_exposure(host, environ={"MLCYCLE_API_KEY": "k"})


def _serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> tuple[object, list[list[str]]]:
    """``mlcycle serve`` through its CLI, with the final exec captured instead of run."""
    from mlcycle.cli.app import app

    execs: list[list[str]] = []
    monkeypatch.setattr(os, "execvpe", lambda path, argv, env: execs.append(list(argv)))
    monkeypatch.chdir(tmp_path)  # serve changes directory; the fixture changes it back
    result = CliRunner().invoke(app, ["serve", "--config", str(REPO_ROOT / "mlcycle.yaml"), *args])
    return result, execs


def test_serve_binds_loopback_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLCYCLE_API_KEY", raising=False)
    result, execs = _serve(monkeypatch, tmp_path, "--port", "3123")
    assert result.exit_code == 0, result.output
    [argv] = execs
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "3123"


def test_serve_refuses_to_expose_without_a_key_and_says_how(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLCYCLE_API_KEY", raising=False)
    result, execs = _serve(monkeypatch, tmp_path, "--host", "0.0.0.0")
    assert result.exit_code == 2 and execs == [], result.output
    assert "MLCYCLE_API_KEY" in result.output and "x-api-key" in result.output

    monkeypatch.setenv("MLCYCLE_API_KEY", "a-key")
    result, execs = _serve(monkeypatch, tmp_path, "--host", "0.0.0.0")
    assert result.exit_code == 0, result.output
    assert execs[0][execs[0].index("--host") + 1] == "0.0.0.0"


def test_demo_help_and_readme_agree_on_how_long_the_demo_takes() -> None:
    from mlcycle.cli.app import app

    helped = CliRunner().invoke(app, ["demo", "--help"], terminal_width=200).output
    readme = (REPO_ROOT / "README.md").read_text()
    pattern = r"(\d+)\s*[–-]\s*(\d+)\s*minutes"
    in_help, in_readme = re.search(pattern, " ".join(helped.split())), re.search(r"`make demo` took " + pattern, readme)
    assert in_help and in_readme, helped
    assert in_help.groups() == in_readme.groups()


# ----------------------------------------------------------------------------- shadow latency
class FakeClock:
    """``time`` for mlcycle.serving: advances only when a fake step says it took time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


def test_shadow_challenger_latency_is_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Features take 10 ms, the champion 100 ms and the challenger 300 ms for a batch of two: per
    request the champion's rows log 55 ms and the shadow rows 155 ms (each model's own time plus
    the shared feature lookup). Before the fix both logged the champion's 55 ms."""
    clock = FakeClock()
    monkeypatch.setattr(serving, "time", clock)
    features = ["f1", "merchant_category_code"]

    def online_columns(store, keys, fields, name, now):
        clock.now += 0.010
        return Vectors({"f1": np.array([1.0, 2.0]), "merchant_category_code": np.array([0, -1])}, [[], []])

    def model(version: str, seconds: float, score: float):
        def predict(vectors: Vectors, rows: np.ndarray | None = None) -> np.ndarray:
            clock.now += seconds
            return np.full(len(vectors) if rows is None else int(rows.sum()), score)

        return SimpleNamespace(alias=version, version=version, threshold=0.5, features=features, predict=predict)

    logged: list[dict] = []
    monkeypatch.setattr(serving, "online_columns", online_columns)
    scorer = serving.Scorer(ProjectConfig(), log_predictions=False)
    scorer.refresh = lambda force=False: None
    scorer.not_ready_reason = scorer.unavailable = None
    scorer.plan = SimpleNamespace(
        name="fraud_model_v1", model_features=tuple(features), join_keys=("user_id", "merchant_id"),
        request_fields=("amount", "country", "merchant_category", "channel", "request_unix"),
    )  # fmt: skip
    scorer.slots = {"champion": model("1", 0.100, 0.2), "challenger": model("2", 0.300, 0.9)}
    scorer.policy = rollout.RolloutPolicy(mode="shadow")
    scorer.prediction_log = SimpleNamespace(append=logged.extend)

    requests = [
        {"user_id": u, "merchant_id": 5, "amount": 10.0, "country": "US", "merchant_category": c, "channel": None}
        for u, c in ((1, "grocery"), (2, "NaN"))
    ]
    answers = scorer.score(requests)
    assert [a.variant for a in answers] == ["champion", "champion"]
    champion_rows = [r for r in logged if not r["shadow"]]
    shadow_rows = [r for r in logged if r["shadow"]]
    assert [r["latency_ms"] for r in champion_rows] == pytest.approx([55.0, 55.0])
    assert [r["latency_ms"] for r in shadow_rows] == pytest.approx([155.0, 155.0])
    # The second request's category has no code: reported in the answer and in the log, both rows.
    assert [a.unknown_categories for a in answers] == [[], ["merchant_category"]]
    assert [r["features_missing"] for r in shadow_rows] == ["", "merchant_category_code"]


# ----------------------------------------------------------------------------- client errors in the log
def test_a_client_error_is_one_warning_line_and_a_server_error_keeps_its_traceback() -> None:
    """BentoML's ``log_exception`` call, as it makes it for a 400 and for a 500."""
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from pydantic import BaseModel, ValidationError
        from services.service import ClientErrorsOneLine
    finally:
        sys.path.remove(str(REPO_ROOT))

    class Body(BaseModel):
        amount: float

    logger = logging.getLogger("test.bentoml.http_app")
    logger.addFilter(ClientErrorsOneLine())
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        try:
            Body.model_validate({"amount": "secret-value"})
        except ValidationError:
            logger.error("Exception on %s [%s]", "/predict", "POST", exc_info=True)
        try:
            raise KeyError("a bug")
        except KeyError:
            logger.error("Exception on %s [%s]", "/predict", "POST", exc_info=True)
    finally:
        logger.removeHandler(handler)
    client, server = records
    assert client.levelno == logging.WARNING and client.exc_info is None
    line = logging.Formatter().format(client)
    assert "\n" not in line and "/predict" in line and "amount" in line and "secret-value" not in line, line
    assert server.levelno == logging.ERROR and server.exc_info is not None
    assert "Traceback" in logging.Formatter().format(server)


@pytest.mark.parametrize(
    ("profile", "override", "cores", "expected"),
    [
        ("local", None, 2, 1),  # the demo and the tests share the cores: one worker
        ("local", "3", 2, 3),
        ("scale", None, 2, 2),  # one per core
        ("scale", None, 64, 8),  # at most 8 by default
        ("scale", None, None, 1),  # cores unknown
        ("scale", "1", 16, 1),
        ("scale", " ", 4, 4),  # blank: not set
    ],
)
def test_service_workers_follow_the_profile_and_the_override(profile, override, cores, expected) -> None:
    from mlcycle.serving.workers import service_workers

    assert service_workers(profile, override, cores) == expected


@pytest.mark.parametrize("override", ["0", "-2", "two", "1.5"])
def test_a_bad_worker_count_is_refused_by_name(override: str) -> None:
    from mlcycle.serving.workers import service_workers

    with pytest.raises(ConfigError, match="MLCYCLE_WORKERS"):
        service_workers("scale", override, 2)
