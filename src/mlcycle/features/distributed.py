"""Training sets built partition by partition on a Dask cluster, where each partition's rows are read.

A point-in-time join is per entity row (each row's features as they were at its own timestamp), so
the labelled table can be cut into time ranges and each range joined on its own: the union is the
single-node training set, row for row. Each Dask task reads only its range of the table (parquet
filters on the timestamp column), applies the same steps as ``pipeline.build_training_set`` —
the contract's representation, ``labelled_entities`` for the same ``as_of`` and window, the
project's Feast store — and returns its rows; the driver reads only the timestamp column, to place
the cuts. Nothing gathers the table into one process.

The cluster: ``MLCYCLE_DASK_SCHEDULER`` (``tcp://host:port``) when set, else a local one (processes,
loopback, its HTTP endpoint on a free loopback port) for the duration of the call. Workers need the
project's config and ``feature_repo/`` at the same path, and the driver's MLCYCLE_* settings (checked
by hash before any task); the table and the feature tables they read from object storage when their
host has no copy (``mlcycle.storage``).
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlcycle import storage
from mlcycle.data import validation
from mlcycle.project.config import DEFAULT_CONFIG_NAME, ProjectConfig, load_config

SCHEDULER_ENV = "MLCYCLE_DASK_SCHEDULER"


class EngineError(RuntimeError):
    """The cluster cannot be reached or used; the message names the variable to set."""


@contextlib.contextmanager
def cluster_client(workers: int = 2) -> Iterator[Any]:
    """A Dask client: on ``MLCYCLE_DASK_SCHEDULER`` when set, else on a local cluster of ``workers``
    single-threaded processes on loopback, closed on exit."""
    from distributed import Client

    address = os.environ.get(SCHEDULER_ENV, "").strip()
    if address:
        try:
            client = Client(address, timeout="10s")
        except OSError as exc:
            raise EngineError(f"{SCHEDULER_ENV}={address}: no Dask scheduler answers there ({exc}); start one "
                              f"or unset {SCHEDULER_ENV} for a local cluster") from None  # fmt: skip
        try:
            yield client
        finally:
            client.close()
        return
    with local_cluster(workers) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers, timeout=120)  # they start in processes of their own
        yield client


def local_cluster(workers: int) -> Any:
    """A cluster on this machine whose scheduler, like its workers, runs in a process of its own:
    xgboost.dask runs its tracker in the scheduler's process, and a tracker that meets a lost worker
    can abort that process — it must not be the flow's. Loopback, HTTP endpoint on a free port."""
    from distributed.deploy.subprocess import SubprocessCluster

    return SubprocessCluster(host="127.0.0.1", n_workers=workers, threads_per_worker=1,
                             dashboard_address="127.0.0.1:0", worker_class="distributed.Worker")  # fmt: skip


def cuts(
    cfg: ProjectConfig, partitions: int, after: pd.Timestamp | None = None, until: pd.Timestamp | None = None
) -> list[pd.Timestamp]:
    """Boundaries of ``partitions`` time ranges of about equal rows among the events in
    ``(after, until]`` (those a training set can use), from the timestamp column alone."""
    import pyarrow.parquet as pq

    column = cfg.table.timestamp
    table = storage.fetch(cfg.project, cfg.root, cfg.table_path)  # another host's table: from the store
    times = pd.Series(pq.read_table(table, columns=[column]).column(column).to_pandas())
    times = pd.to_datetime(times, utc=True).dropna()
    if until is not None:
        times = times[times <= until]
    if after is not None:
        times = times[times > after]
    times = times.sort_values()
    if times.empty:
        return []
    inner = [times.iloc[int(len(times) * k / partitions)] for k in range(1, partitions)]
    return sorted(set(inner))


def _table_range(cfg: ProjectConfig, low: pd.Timestamp | None, high: pd.Timestamp | None) -> pd.DataFrame:
    """Rows ``[low, high)`` of the project's table (brought from the object store on another host),
    in the contract's representation."""
    path = storage.fetch(cfg.project, cfg.root, cfg.table_path)
    return validation.normalize_table(_range(path, cfg.table.timestamp, low, high), validation.table_schema(cfg))


def _range(path: Path, column: str, low: pd.Timestamp | None, high: pd.Timestamp | None) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind = pq.read_schema(path).field(column).type
    naive = pa.types.is_timestamp(kind) and kind.tz is None

    def bound(moment: pd.Timestamp) -> pd.Timestamp:  # compared in the column's own kind of time
        return moment.tz_convert("UTC").tz_localize(None) if naive else moment

    import pyarrow.compute as pc

    field = pc.field(column)
    keep = None
    if low is not None:
        keep = field >= bound(low)
    if high is not None:
        keep = field < bound(high) if keep is None else keep & (field < bound(high))
    if keep is not None and low is None:
        keep = keep | field.is_null()  # rows without a time go to the first range: the contract refuses them there
    return pq.read_table(path, filters=keep).to_pandas()


def training_partition(
    config: str, low: pd.Timestamp | None, high: pd.Timestamp | None, as_of: datetime | None, window: int | None
) -> pd.DataFrame:
    """One range's training rows, in a worker: what ``pipeline.build_training_set`` does, on
    ``[low, high)`` of the table only."""
    cfg = load_config(config)
    table = _table_range(cfg, low, high)
    return _joined(cfg, table, as_of, window)


def checked_partition(
    config: str, low: pd.Timestamp | None, high: pd.Timestamp | None, as_of: datetime | None, window: int | None
) -> tuple[validation.ContractReport, np.ndarray | None, pd.DataFrame]:
    """One range, in a worker: its rows checked against the contract (as ``validate_table`` checks the
    whole table), the hashes of its distinct event ids (for duplicates across ranges) and its
    training rows — none when the range breaks the contract: bad rows never train."""
    cfg = load_config(config)
    table = _table_range(cfg, low, high)
    report = validation.validate_table(table, cfg)
    ids = None
    if cfg.table.event_id and cfg.table.event_id in table:
        ids = np.unique(pd.util.hash_array(table[cfg.table.event_id].astype(str).to_numpy(dtype=object)))
    if not report.ok:
        return report, ids, table.iloc[:0]
    return report, ids, _joined(cfg, table, as_of, window)


def _joined(cfg: ProjectConfig, table: pd.DataFrame, as_of: datetime | None, window: int | None) -> pd.DataFrame:
    from mlcycle.features import pipeline, store

    fs = store.open_project_store(cfg)
    plan = store.plan_for(fs, cfg.features.feature_service)
    carried = pipeline.carried_columns(cfg, table, plan)
    entities = pipeline.labelled_entities(table, cfg, as_of, window, plan.request_fields, carried)
    if entities.empty:
        return entities
    return store.training_set(fs, entities, cfg.features.feature_service)


def partitioned_training_set(
    cfg: ProjectConfig,
    client: Any,
    as_of: datetime | None = None,
    window_days: int | None = None,
    partitions: int = 4,
) -> list[Any]:
    """Futures of the training set's partitions, one per time range, computed on the cluster. The
    table must be parquet (its row groups are read by range)."""
    if cfg.table_path.suffix.lower() != ".parquet":
        raise EngineError(f"{cfg.table_path}: the dask engine reads parquet tables by range; convert it to parquet")
    from mlcycle.features.pipeline import default_as_of

    config = str(cfg.root / DEFAULT_CONFIG_NAME)
    window = window_days or cfg.model.train_window_days
    # Cut where the usable events are (matured by as_of, inside the window): each range gets work.
    moment = pd.Timestamp(as_of) if as_of is not None else default_as_of()
    until = (moment.tz_localize("UTC") if moment.tz is None else moment) - pd.Timedelta(days=cfg.table.label_delay_days)
    after = until - pd.Timedelta(days=window) if window is not None else None
    bounds: list[pd.Timestamp | None] = [None, *cuts(cfg, partitions, after, until), None]
    return [client.submit(training_partition, config, low, high, as_of, window, pure=False)
            for low, high in itertools.pairwise(bounds)]  # fmt: skip


@dataclass
class ClusterTrainingSet:
    """A training set held on the cluster: one future per time range, each pinned to its worker
    (``owners``: range k on the k-th worker in address order, round robin), and the table's contract
    report merged over the ranges."""

    parts: list[Any]
    owners: list[str]
    contract: validation.ContractReport
    workers: list[str] = field(default_factory=list)  # the cluster's workers in address order

    @property
    def ranks(self) -> list[int]:
        """Each partition's worker as its index in ``workers`` (what a reproduction places by)."""
        return [self.workers.index(owner) for owner in self.owners]


WATCH_INTERVAL_S = 0.5
LOSS_GRACE_S = 10.0


def watched(client: Any, owners: list[str], fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` (a blocking call on the cluster), stopped with an ``EngineError`` as
    soon as a worker that holds a partition leaves the cluster. Partitions are pinned to their
    workers (for reproducible placement), so a lost one could otherwise wait for its worker forever;
    a restarted worker comes back under another address. Nothing is registered after such a stop:
    the caller's flow fails, and running it again builds everything anew."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="mlcycle-cluster")
    call = pool.submit(fn, *args, **kwargs)
    silent = 0.0  # seconds the scheduler has not answered
    try:
        while True:
            try:
                return call.result(timeout=WATCH_INTERVAL_S)
            except TimeoutError:
                pass
            except Exception as exc:
                # A peer's failure can reach us before the scheduler has seen the worker go: look
                # again for a while before calling it an error of its own.
                answered = False
                for _ in range(int(LOSS_GRACE_S / WATCH_INTERVAL_S)):
                    lost = _lost(client, owners)
                    if lost:
                        raise _lost_error(lost, exc) from exc
                    answered = answered or lost is not None
                    time.sleep(WATCH_INTERVAL_S)
                if not answered:
                    raise _silent_error(LOSS_GRACE_S) from exc
                raise
            lost = _lost(client, owners)
            silent = silent + WATCH_INTERVAL_S if lost is None else 0.0
            if lost:
                raise _lost_error(lost, None)
            if silent >= LOSS_GRACE_S:
                raise _silent_error(silent)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def gather(client: Any, futures: list[Any], owners: list[str]) -> list[Any]:
    """``client.gather(futures)``, watched for lost workers (:func:`watched`)."""
    return watched(client, owners, client.gather, futures)  # type: ignore[no-any-return]


def _lost(client: Any, owners: list[str]) -> list[str] | None:
    """The owners the scheduler no longer lists (asked now, not from the client's cached view); None
    when the scheduler does not answer (the caller counts how long)."""
    try:
        present = set(client.nthreads())
    except Exception:
        return None
    return sorted(set(owners) - present)


def _silent_error(seconds: float) -> EngineError:
    return EngineError(f"the Dask scheduler has not answered for {seconds:.0f} s; nothing was registered: check it "
                       f"({SCHEDULER_ENV}) and run the training again")  # fmt: skip


def _lost_error(lost: list[str], cause: BaseException | None) -> EngineError:
    why = f" ({type(cause).__name__}: {str(cause).strip().splitlines()[0][:200]})" if cause else ""
    return EngineError(
        f"Dask worker {', '.join(lost)} left the cluster while it held training partitions{why}; nothing was "
        "registered: run the training again once the cluster is whole"
    )


# What decides where a worker reads and writes: it must see what the driver sees. Compared by hash,
# so no value (a URL may carry a password) leaves either side.
SHARED_SETTINGS = ("MLCYCLE_PROFILE", "MLCYCLE_PG_URL", "MLCYCLE_REDIS_URL", "MLCYCLE_REDIS_PREFIX",
                   "MLCYCLE_S3_ENDPOINT", "MLCYCLE_S3_BUCKET", "MLCYCLE_S3_PREFIX")  # fmt: skip


def settings_fingerprint() -> dict[str, str]:
    """Per shared setting, a hash of this process's value (empty when unset)."""
    import hashlib

    return {name: hashlib.sha256(os.environ.get(name, "").encode()).hexdigest()[:16] for name in SHARED_SETTINGS}


def check_worker_settings(client: Any) -> None:
    """Every worker runs with the driver's profile settings, or an ``EngineError`` names the ones that
    differ: a worker with another ``MLCYCLE_REDIS_PREFIX`` would join against another Feast project."""
    mine = settings_fingerprint()
    theirs = client.run(settings_fingerprint)
    differ = sorted({name for values in theirs.values() for name, value in values.items() if mine.get(name) != value})
    if differ:
        raise EngineError(f"the Dask workers run with other {', '.join(differ)} than this process: start them with "
                          "the same MLCYCLE_* environment (values are compared by hash, never sent)")  # fmt: skip


def workers_of(client: Any) -> list[str]:
    """The cluster's workers in address order: the placement of partitions follows it."""
    workers = sorted(client.nthreads())  # the scheduler's current list, not the client's cached view
    if not workers:
        raise EngineError(f"the Dask cluster has no worker; start one, or unset {SCHEDULER_ENV} for a local cluster")
    return workers


def placed_training_set(
    cfg: ProjectConfig,
    client: Any,
    as_of: datetime | None = None,
    window_days: int | None = None,
    partitions: int | None = None,
) -> ClusterTrainingSet:
    """The whole table checked and the training set built, range by range on the cluster, each range
    on a fixed worker, so that the same cluster size places the same rows on the same ranks (what a
    reproduction needs). A contract failure leaves no training rows on the cluster."""
    if cfg.table_path.suffix.lower() != ".parquet":
        raise EngineError(f"{cfg.table_path}: the dask engine reads parquet tables by range; convert it to parquet")
    from mlcycle.features.pipeline import default_as_of

    config = str(cfg.root / DEFAULT_CONFIG_NAME)
    window = window_days or cfg.model.train_window_days
    moment = pd.Timestamp(as_of) if as_of is not None else default_as_of()
    moment = moment.tz_localize("UTC") if moment.tz is None else moment
    # Every task cuts its labels at this one instant: left to each worker, a run crossing midnight
    # would build some ranges with one day's labels and the rest with the next day's.
    as_of = moment.to_pydatetime()
    until = moment - pd.Timedelta(days=cfg.table.label_delay_days)
    after = until - pd.Timedelta(days=window) if window is not None else None
    bounds: list[pd.Timestamp | None] = [None, *cuts(cfg, partitions or cfg.model.partitions, after, until), None]
    workers = workers_of(client)
    check_worker_settings(client)
    owners = [workers[k % len(workers)] for k in range(len(bounds) - 1)]
    checked = [
        client.submit(checked_partition, config, low, high, as_of, window, pure=False, workers=[owner],
                      allow_other_workers=False)
        for (low, high), owner in zip(itertools.pairwise(bounds), owners, strict=True)
    ]  # fmt: skip
    pairs = list(zip(checked, owners, strict=True))
    reports = gather(client, [client.submit(operator.getitem, c, 0, workers=[o]) for c, o in pairs], owners)
    ids = gather(client, [client.submit(operator.getitem, c, 1, workers=[o]) for c, o in pairs], owners)
    parts = [client.submit(operator.getitem, c, 2, workers=[o], allow_other_workers=False) for c, o in pairs]
    contract = merge_reports(reports, ids, cfg.table.event_id)
    if not contract.ok:
        for part in parts:  # released, not cancelled: cancelling tasks others depend on can drop the client
            part.release()
        return ClusterTrainingSet([], [], contract, workers)
    # A range with no labelled row (labels not arrived, a small table cut finely) holds no training
    # row and not even the feature columns: it is dropped, unless every range is empty (the checks
    # then refuse the set for its rows).
    rows = gather(client, [client.submit(len, p, workers=[o]) for p, o in zip(parts, owners, strict=True)], owners)
    kept = [k for k, n in enumerate(rows) if n] or [0]
    for k, part in enumerate(parts):
        if k not in kept:
            part.release()
    return ClusterTrainingSet([parts[k] for k in kept], [owners[k] for k in kept], contract, workers)


def merge_reports(
    reports: list[validation.ContractReport], ids: list[np.ndarray | None], event_id: str | None
) -> validation.ContractReport:
    """One report for the table: the ranges' failures summed per column and check, and event ids that
    repeat across ranges (each range checked its own) counted as a failure of ``unique``."""
    merged: dict[tuple[str, str], validation.CheckFailure] = {}
    for report in reports:
        for f in report.failures:
            seen = merged.get((f.column, f.check))
            if seen is None:
                merged[(f.column, f.check)] = f
            else:
                examples = tuple(dict.fromkeys([*seen.examples, *f.examples]))[:3]
                merged[(f.column, f.check)] = validation.CheckFailure(f.column, f.check, seen.rows + f.rows, examples)
    known = [h for h in ids if h is not None]
    if event_id and known:
        _, counts = np.unique(np.concatenate(known), return_counts=True)
        repeated = int(counts[counts > 1].sum())
        if repeated:
            key = (event_id, "unique")
            seen = merged.get(key)
            rows = repeated + (seen.rows if seen else 0)
            merged[key] = validation.CheckFailure(event_id, "unique", rows, seen.examples if seen else ())
    return validation.ContractReport(sum(r.rows for r in reports), tuple(merged.values()))
