"""The training set built partition by partition on a real Dask cluster (mlcycle.features.distributed)
equals the single-node one (pipeline.build_training_set), row for row and cell by cell.

The cluster is a local one of two worker processes (``distributed.LocalCluster``): each task reads
its own time range of the table and joins it against the project's Feast store in its own process.
"""

from __future__ import annotations

import pandas as pd
import pytest

from mlcycle.features import distributed, pipeline
from mlcycle.project.config import ProjectConfig

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def cluster(training_project: ProjectConfig):
    """One local cluster, one as_of and the single-node training set for the module's tests."""
    as_of = pipeline.default_as_of().to_pydatetime()  # once, for both sides (the data is dated relative to today)
    single = pipeline.build_training_set(training_project, as_of)
    with distributed.cluster_client(workers=2) as client:
        client.wait_for_workers(2, timeout=120)  # both idle before any task: each is given a share
        yield client, as_of, single


def _canonical(frame: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Rows in one order and categories as text: partitions see their own category lists."""
    out = frame.copy()
    for name in out.columns:
        if isinstance(out[name].dtype, pd.CategoricalDtype):
            out[name] = out[name].astype(object)
    return out.sort_values(order, kind="stable").reset_index(drop=True)[sorted(out.columns)]


def test_the_distributed_training_set_is_the_single_node_one_row_for_row(
    training_project: ProjectConfig, cluster
) -> None:
    cfg, (client, as_of, single) = training_project, cluster
    futures = distributed.partitioned_training_set(cfg, client, as_of, partitions=4)
    parts = client.gather(futures)
    assert len(parts) == 4 and all(len(p) for p in parts)
    assert len({w for owners in client.who_has(futures).values() for w in owners}) == 2  # both workers built some
    joined = pd.concat(parts, ignore_index=True)
    assert len(joined) == len(single) > 1000
    order = [cfg.table.event_id or cfg.table.timestamp]
    pd.testing.assert_frame_equal(_canonical(joined, order), _canonical(single, order), check_dtype=False)


def test_an_unreachable_scheduler_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcycle.net import free_port

    monkeypatch.setenv(distributed.SCHEDULER_ENV, f"tcp://127.0.0.1:{free_port()}")
    with (
        pytest.raises(
            distributed.EngineError, match=r"MLCYCLE_DASK_SCHEDULER=tcp://127\.0\.0\.1:\d+: no Dask scheduler"
        ),
        distributed.cluster_client(),
    ):
        pass


def test_xgboost_trained_on_the_cluster_ranks_like_one_trained_on_one_node(
    training_project: ProjectConfig, cluster
) -> None:
    """The same split and recipe, the partitions left on the workers: the booster xgboost.dask returns
    is a plain booster, and on the held-out rows its ROC-AUC (scikit-learn's) is within 0.02 of the
    single-node booster's. Not identical: each worker sketches its own rows' quantiles."""
    import dask.dataframe as dd
    from sklearn.metrics import roc_auc_score

    from mlcycle.features import open_project_store, plan_for
    from mlcycle.training import distributed as cluster_training
    from mlcycle.training import fit

    cfg, spec, label = training_project, training_project.model, training_project.table.label
    client, as_of, single = cluster
    features = list(plan_for(open_project_store(cfg), cfg.features.feature_service).model_features)
    split = fit.split_by_time(single, spec.valid_fraction, spec.test_fraction)
    one = fit.fit_xgboost(split.train, split.valid, features, label, spec)

    def kept(frame: pd.DataFrame) -> pd.DataFrame:
        return cluster_training.columns_of(frame, features, label).assign(t=frame[fit.TIME_COLUMN].to_numpy())

    parts = client.map(kept, distributed.partitioned_training_set(cfg, client, as_of, partitions=4))
    frame = dd.from_delayed(parts, meta=kept(single.head(1)).iloc[:0])
    train = frame[frame["t"] < split.valid_start].persist()
    valid = frame[(frame["t"] >= split.valid_start) & (frame["t"] < split.test_start)].persist()
    model = cluster_training.fit_xgboost_dask(client, train, valid, features, label, spec, split.valid)
    assert type(model.model) is type(one.model)  # xgb.Booster: the same flavor and serving
    truth = split.test[label].to_numpy()
    on_one = roc_auc_score(truth, one.predict(split.test))
    on_cluster = roc_auc_score(truth, model.predict(split.test))
    assert on_cluster > 0.8 and abs(on_cluster - on_one) <= 0.02, (on_cluster, on_one)


def test_the_placed_set_and_its_checks_are_the_single_node_ones(training_project: ProjectConfig, cluster) -> None:
    """What the training flow's cluster engine uses: the table checked and the set built range by
    range on pinned workers, then the training-set checks from per-partition statistics — equal to
    ``validate_table`` and ``check_training_set`` on the single-node set (every row is in the leak
    check's sample below 200k rows, so even its AUCs agree)."""
    from mlcycle.data import validation
    from mlcycle.features import open_project_store, plan_for
    from mlcycle.training import distributed as cluster_training

    cfg, (client, as_of, single) = training_project, cluster
    built = distributed.placed_training_set(cfg, client, as_of, partitions=4)
    assert built.contract.ok and built.contract.rows == len(pd.read_parquet(cfg.table_path))
    assert sorted(set(built.owners)) == built.workers and len(built.parts) == 4
    joined = pd.concat(client.gather(built.parts), ignore_index=True)
    order = [cfg.table.event_id or cfg.table.timestamp]
    pd.testing.assert_frame_equal(_canonical(joined, order), _canonical(single, order), check_dtype=False)

    label = cfg.table.label
    features = list(plan_for(open_project_store(cfg), cfg.features.feature_service).model_features)
    assert len(single) < validation.LEAK_SAMPLE_ROWS
    got = cluster_training.check_on_cluster(client, built.parts, built.owners, features, label, cfg.quality)
    expected = validation.check_training_set(single, features, label, cfg.quality)
    assert [c.name for c in got.checks] == [c.name for c in expected.checks]
    for mine, theirs in zip(got.checks, expected.checks, strict=True):
        assert mine.passed == theirs.passed and mine.value == pytest.approx(theirs.value, abs=1e-9), mine.name
