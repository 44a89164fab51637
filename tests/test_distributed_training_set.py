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


def _canonical(frame: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Rows in one order and categories as text: partitions see their own category lists."""
    out = frame.copy()
    for name in out.columns:
        if isinstance(out[name].dtype, pd.CategoricalDtype):
            out[name] = out[name].astype(object)
    return out.sort_values(order, kind="stable").reset_index(drop=True)[sorted(out.columns)]


def test_the_distributed_training_set_is_the_single_node_one_row_for_row(training_project: ProjectConfig) -> None:
    cfg = training_project
    as_of = pipeline.default_as_of().to_pydatetime()  # once, for both (the data is dated relative to today)
    single = pipeline.build_training_set(cfg, as_of)
    with distributed.cluster_client(workers=2) as client:
        futures = distributed.partitioned_training_set(cfg, client, as_of, partitions=4)
        parts = client.gather(futures)
        workers = {w for w in client.who_has(futures).values() for w in w}
    assert len(parts) == 4 and all(len(p) for p in parts)
    assert len(workers) >= 1
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
