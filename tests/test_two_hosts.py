"""Two hosts that share nothing but servers: PostgreSQL, Redis, a SeaweedFS S3 server and a Dask
scheduler, each of this module's own (a database, a key prefix, a bucket, a local cluster).

Host A is a project directory with its data: it builds the features and trains on the cluster
(``model.engine: dask``). Host B is a second directory with the project's code and config only — no
``data/`` — whose processes serve (a BentoML process) and monitor (an ``mlcycle monitor`` process).
Host B's service loads host A's champion from the registry and the object store and answers with
the scores host A's own scorer gives (the single-host run); host B's monitoring builds the
champion's reference from the training snapshot in the object store and reads the labels from the
table host A published there (byte for byte the file host A wrote).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
import redis
import yaml
from fraud.traffic import request_body
from tests.conftest import copy_project
from tests.test_scale_profile import (
    DATA,
    LOOSE_GATES,
    MACHINE_REDIS,
    PG_SERVER,
    _reachable,
    drop_database,
    project_keys,
)

from mlcycle import settings as scale
from mlcycle.features import pipeline
from mlcycle.flows import load_flow
from mlcycle.ops.s3server import LocalS3Server
from mlcycle.ops.service_process import ServiceProcess
from mlcycle.project.config import ProjectConfig, load_config
from mlcycle.registry import aliases as registry
from mlcycle.serving.scorer import Scorer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
KEY, SECRET = "mlcycle-hosts", "s3-secret-for-two-hosts"
VENV_BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[dict[str, str]]:
    """The shared servers, pointed at by the environment both hosts' processes inherit."""
    if reason := _reachable():
        pytest.skip(reason)
    from distributed import LocalCluster

    token = secrets.token_hex(4)
    database, project = f"mlcycle_test_{token}", f"mlcycle_fraud_t{token}"
    with LocalS3Server(tmp_path_factory.mktemp("s3"), KEY, SECRET) as s3, pytest.MonkeyPatch.context() as mp:
        env = {"MLCYCLE_PG_URL": f"{PG_SERVER}/{database}", "MLCYCLE_REDIS_URL": MACHINE_REDIS,
               "MLCYCLE_REDIS_PREFIX": f"t{token}", "MLCYCLE_S3_ENDPOINT": s3.endpoint,
               "MLCYCLE_S3_BUCKET": f"hosts-{uuid.uuid4().hex[:12]}", "MLCYCLE_S3_CREATE_BUCKET": "1",
               "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
               "MLFLOW_S3_ENDPOINT_URL": s3.endpoint}  # fmt: skip
        mp.delenv("MLCYCLE_PROFILE", raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        try:
            # The scheduler's workers start with the same environment (they read the same servers).
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                              dashboard_address="127.0.0.1:0") as cluster:  # fmt: skip
                mp.setenv("MLCYCLE_DASK_SCHEDULER", cluster.scheduler_address)
                yield {**env, "project": project}
        finally:
            client = redis.Redis.from_url(MACHINE_REDIS)
            keys = project_keys(client, project)
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
            for name in (database, database + scale.PREFECT_DATABASE_SUFFIX):
                drop_database(name)
            scale.forget_ensured()


@pytest.fixture(scope="module")
def host_a(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[ProjectConfig, dict]:
    root = tmp_path_factory.mktemp("host_a") / "p"
    copy_project(root, DATA, {"gates": LOOSE_GATES, "model": {"engine": "dask", "partitions": 4}})
    raw = yaml.safe_load((root / "mlcycle.yaml").read_text())
    raw["profile"] = "scale"
    (root / "mlcycle.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(root / "mlcycle.yaml")
    pipeline.generate_data(cfg)
    pipeline.build_features(cfg)
    pipeline.publish_features(cfg)
    result = load_flow(cfg.root, "training", "train")(config=str(cfg.root / "mlcycle.yaml"))
    assert result["passed"] and result["alias"] == registry.CHAMPION, result
    return cfg, result


def test_host_b_serves_and_monitors_host_a_champion_from_the_servers_alone(
    host_a: tuple[ProjectConfig, dict], tmp_path: Path
) -> None:
    cfg_a, trained = host_a
    root_b = tmp_path / "host_b" / "p"
    shutil.copytree(cfg_a.root, root_b, ignore=shutil.ignore_patterns("data", "__pycache__"))
    cfg_b = load_config(root_b / "mlcycle.yaml")
    assert not cfg_b.data_path.exists() and not cfg_b.table_path.exists()

    tx = pd.read_parquet(cfg_a.table_path)
    bodies = [request_body(r) for r in tx.drop_duplicates("user_id", keep="last").tail(30).itertuples()]
    scorer = Scorer(cfg_a)  # the single-host answer: host A scoring in its own process
    try:
        scorer.load()
        assert scorer.ready, scorer.not_ready_reason
        expected = scorer.score([b["request"] for b in bodies])
    finally:
        scorer.close()

    service = ServiceProcess(cfg_b).start()
    try:
        with httpx.Client(base_url=service.url, trust_env=False, timeout=30) as client:
            answers = [client.post("/predict", json=body) for body in bodies]
    finally:
        service.stop()
    assert [a.status_code for a in answers] == [200] * len(bodies), answers[0].text
    for answer, mine in zip(answers, expected, strict=True):
        body = answer.json()
        assert body["model_version"] == str(trained["version"]) == mine.model_version
        assert body["features_missing"] == []
        assert body["score"] == pytest.approx(mine.score, rel=1e-9, abs=1e-12)

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("MLCYCLE_DASK_SCHEDULER", None)  # host B has no part in training
    done = subprocess.run([str(VENV_BIN / "mlcycle"), "monitor", "--config", str(root_b / "mlcycle.yaml")],
                          cwd=root_b, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    meta = json.loads((cfg_b.monitoring_dir / "reference" / f"v{trained['version']}" / "meta.json").read_text())
    assert meta["run_id"] == trained["run_id"]  # built from host A's training snapshot, read from S3
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (cfg_a.table_path, cfg_b.table_path)]
    assert digest[0] == digest[1]  # the labels' table host A published, fetched whole
    summaries = sorted(cfg_b.monitoring_dir.rglob("summary.json"))
    assert summaries, list(cfg_b.monitoring_dir.rglob("*"))[:20]
    summary = json.loads(summaries[-1].read_text())
    assert summary["champion_version"] == str(trained["version"])
    assert summary["rows"] >= len(bodies)  # host B's answers (and host A's) from the shared prediction log
    assert not (cfg_b.data_path / "mlartifacts").exists()
