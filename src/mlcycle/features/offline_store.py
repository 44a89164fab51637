"""A Feast offline store whose point-in-time join is DuckDB's native ``ASOF LEFT JOIN``.

Why not Feast's own stores: the file/dask store drops entity rows that have no feature value inside
the TTL instead of returning nulls (a training set built that way silently loses new entities'
events), and the DuckDB store's join (an inequality join, a dedup, then a left join, through ibis)
is heavy on large entity frames. An ASOF LEFT JOIN is exactly the point-in-time join: for each
entity row, the latest feature row at or before its timestamp, and nulls — never a dropped row —
where there is none or it is older than the view's TTL.

Everything else (materialization, pulling, writing) is the DuckDB store's; sources are resolved
relative to the feature repo, so ``feature_repo/`` can use paths like ``../data/features/x.parquet``
from whatever directory the ``feast`` CLI or the library runs in.

Use it in ``feature_store.yaml``::

    offline_store:
        type: mlcycle.features.offline_store.AsofDuckDBOfflineStore
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import ibis
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast.data_source import DataSource
from feast.feature_view import FeatureView
from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.duckdb import (
    DuckDBOfflineStore,
    DuckDBOfflineStoreConfig,
    _read_data_source,
    _write_data_source,
)
from feast.infra.offline_stores.file_source import FileSource, SavedDatasetFileStorage
from feast.infra.offline_stores.ibis import (
    pull_all_from_table_or_query_ibis,
    pull_latest_from_table_or_query_ibis,
)
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from feast.saved_dataset import SavedDatasetStorage
from pydantic import StrictStr

ROW_ID = "__mlcycle_row"


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    type: StrictStr = "mlcycle.features.offline_store.AsofDuckDBOfflineStore"
    threads: int | None = None
    """DuckDB threads for the join; None lets DuckDB use every core."""


def source_path(data_source: DataSource, repo_path: Any) -> str:
    """Absolute path of a file source, relative paths taken from the feature repo."""
    if not isinstance(data_source, FileSource):
        raise TypeError(
            f"AsofDuckDBOfflineStore reads parquet FileSources; '{data_source.name}' is a {type(data_source).__name__}"
        )
    return FileSource.get_uri_for_file_path(repo_path, data_source.path)


def _read_repo_relative(data_source: DataSource, repo_path: str) -> ibis.Table:
    if isinstance(data_source, FileSource) and "://" not in data_source.path:
        return ibis.read_parquet(source_path(data_source, repo_path))
    return _read_data_source(data_source, repo_path)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _run(sql: str, threads: int | None, entity_df: pd.DataFrame | None = None) -> pa.Table:
    """One DuckDB statement, in UTC, on ``threads`` (None: every core), with the entity rows if any."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        if entity_df is not None:
            con.register("entity_df", entity_df)
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


class AsofRetrievalJob(RetrievalJob):
    """Runs the ASOF join lazily, when the frame is asked for; Feast applies on-demand views after."""

    def __init__(
        self,
        sql: str,
        entity_df: pd.DataFrame,
        threads: int | None,
        on_demand_feature_views: list[OnDemandFeatureView],
        full_feature_names: bool,
        metadata: RetrievalMetadata,
    ) -> None:
        super().__init__()
        self._sql = sql
        self._entity_df = entity_df
        self._threads = threads
        self._odfvs = on_demand_feature_views
        self._full_feature_names = full_feature_names
        self._metadata = metadata

    @property
    def sql(self) -> str:
        return self._sql

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        return _run(self._sql, self._threads, self._entity_df).drop_columns([ROW_ID])

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return self._odfvs

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return self._metadata

    def persist(self, storage: SavedDatasetStorage, allow_overwrite: bool = False, timeout: int | None = None):
        if not isinstance(storage, SavedDatasetFileStorage):
            raise TypeError("AsofRetrievalJob persists to SavedDatasetFileStorage (parquet) only")
        path = storage.file_options.uri
        if not allow_overwrite and Path(path).exists():
            raise FileExistsError(f"{path} exists; pass allow_overwrite=True to replace it")
        pq.write_table(self.to_arrow(timeout=timeout), path)


class SQLRetrievalJob(RetrievalJob):
    """One DuckDB statement over parquet files, no entity rows: the latest row per entity for
    materialization, with the same tie rule as the point-in-time join."""

    def __init__(self, sql: str, threads: int | None) -> None:
        super().__init__()
        self._sql = sql
        self._threads = threads

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        return _run(self._sql, self._threads)

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    @property
    def full_feature_names(self) -> bool:
        return False

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return []

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return None

    def persist(self, storage: SavedDatasetStorage, allow_overwrite: bool = False, timeout: int | None = None):
        raise NotImplementedError("the latest-row pull is read by materialization, not persisted")


def _local_file(data_source: DataSource) -> bool:
    return isinstance(data_source, FileSource) and "://" not in data_source.path


def _pull_sql(
    config: RepoConfig,
    data_source: DataSource,
    join_keys: list[str],
    features: list[str],
    timestamp: str,
    created: str | None,
    start: datetime | None,
    end: datetime | None,
    latest_per_entity: bool,
) -> str:
    """A source's rows in ``[start, end]``, one per (entity, timestamp) by the join's tie rule —
    or, ``latest_per_entity``, only each entity's latest."""
    keys = [_quote(k) for k in join_keys]
    cols = [*keys, *(_quote(f) for f in features), _quote(timestamp)] + ([_quote(created)] if created else [])
    ts = f"{_quote(timestamp)}::TIMESTAMPTZ"
    where = [f"{ts} >= {_literal(_utc_text(start))}::TIMESTAMPTZ"] if start else []
    where += [f"{ts} <= {_literal(_utc_text(end))}::TIMESTAMPTZ"] if end else []
    partition = keys if latest_per_entity else [*keys, _quote(timestamp)]
    order = ([f"{_quote(timestamp)} DESC"] if latest_per_entity else []) + [_tie_order(created)]
    return (
        f"SELECT {', '.join(cols)} FROM read_parquet({_literal(source_path(data_source, config.repo_path))}, "
        "file_row_number = true) "
        + (f"WHERE {' AND '.join(where)} " if where else "")
        + f"QUALIFY row_number() OVER (PARTITION BY {', '.join(partition)} ORDER BY {', '.join(order)}) = 1"
    )


def _utc_text(moment: datetime) -> str:
    stamp = pd.Timestamp(moment)
    stamp = stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")
    return stamp.isoformat()


def _feature_view_query(
    fv: FeatureView, feature_refs: list[str], repo_path: Any, full_feature_names: bool
) -> tuple[str, list[str], dict[str, str], list[tuple[str, str]]]:
    """SQL reading one view's source, plus its key map and (source column, output column) pairs."""
    source = fv.batch_source
    if source is None:
        raise ValueError(f"feature view '{fv.name}' has no batch_source and cannot be queried")
    prefix = fv.projection.name_to_use()
    out_prefix = fv.projection.name_alias or fv.name
    reverse_mapping = {feature: column for column, feature in (source.field_mapping or {}).items()}
    features = [ref.split(":", 1)[1] for ref in feature_refs if ref.startswith(f"{prefix}:")]
    pairs = [(reverse_mapping.get(f, f), f"{out_prefix}__{f}" if full_feature_names else f) for f in features]
    key_map = fv.projection.join_key_map or {e.name: e.name for e in fv.entity_columns}
    key_cols = [reverse_mapping.get(k, k) for k in key_map]
    ts = source.timestamp_field
    created = source.created_timestamp_column
    cols = [f"{_quote(c)} AS {_quote(k)}" for c, k in zip(key_cols, key_map, strict=True)]
    cols += [f"{_quote(ts)}::TIMESTAMPTZ AS __ts"] + [f"{_quote(c)} AS {_quote(o)}" for c, o in pairs]
    path = _literal(source_path(source, repo_path))
    sql = f"SELECT {', '.join(cols)} FROM read_parquet({path}, file_row_number = true)"
    # Two rows of one entity at one timestamp: an ASOF join would pick either, at random. Ties are
    # broken by the latest created timestamp, as Feast specifies, and then by the row written last
    # (an upsert's meaning) — the same rule materialization uses, so online equals offline.
    keys = ", ".join(_quote(c) for c in key_cols)
    sql += f" QUALIFY row_number() OVER (PARTITION BY {keys}, {_quote(ts)} ORDER BY {_tie_order(created)}) = 1"
    return sql, [o for _, o in pairs], key_map, pairs


def _tie_order(created: str | None) -> str:
    """Which of several rows at one timestamp wins: the latest created, then the last written."""
    return (f"{_quote(created)} DESC, " if created else "") + "file_row_number DESC"


def build_asof_sql(
    feature_views: list[FeatureView],
    feature_refs: list[str],
    event_timestamp_col: str,
    repo_path: Any,
    full_feature_names: bool,
) -> str:
    """One statement: the entity rows, ASOF LEFT JOINed to each view, TTL applied, order kept."""
    ctes, selects, joins = [], [], []
    for i, fv in enumerate(feature_views):
        sql, outputs, key_map, _ = _feature_view_query(fv, feature_refs, repo_path, full_feature_names)
        alias = f"f{i}"
        ctes.append(f"{alias}_src AS ({sql})")
        on = [f"e.{_quote(entity_col)} = {alias}.{_quote(fv_col)}" for fv_col, entity_col in key_map.items()]
        on.append(f"e.{_quote(event_timestamp_col)} >= {alias}.__ts")
        joins.append(f"ASOF LEFT JOIN {alias}_src {alias} ON {' AND '.join(on)}")
        ttl_seconds = fv.ttl.total_seconds() if fv.ttl else 0
        for out in outputs:
            if ttl_seconds > 0:
                fresh = (
                    f"{alias}.__ts >= e.{_quote(event_timestamp_col)} - to_microseconds({int(ttl_seconds * 1_000_000)})"
                )
                selects.append(f"CASE WHEN {fresh} THEN {alias}.{_quote(out)} END AS {_quote(out)}")
            else:
                selects.append(f"{alias}.{_quote(out)}")
    with_clause = f"WITH {', '.join(ctes)}" if ctes else ""
    select_list = ", ".join(["e.*", *selects])
    return f"{with_clause} SELECT {select_list} FROM entity_df e {' '.join(joins)} ORDER BY e.{ROW_ID}"


def prepare_entity_df(entity_df: pd.DataFrame, event_timestamp_col: str) -> pd.DataFrame:
    """Entity timestamps in UTC (naive ones are taken as UTC, as Feast does) and a row id for order."""
    ts = pd.to_datetime(entity_df[event_timestamp_col], utc=True)  # naive → UTC; mixed offsets → UTC
    out = entity_df.assign(**{event_timestamp_col: ts})
    out[ROW_ID] = range(len(out))
    return out


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        if not isinstance(entity_df, pd.DataFrame):
            raise TypeError("AsofDuckDBOfflineStore takes the entity rows as a pandas DataFrame, not SQL")
        schema = dict(zip(entity_df.columns, entity_df.dtypes, strict=True))
        event_col = offline_utils.infer_event_timestamp_from_entity_df(schema)
        offline_utils.assert_expected_columns_in_entity_df(
            schema, offline_utils.get_expected_join_keys(project, feature_views, registry), event_col
        )
        prepared = prepare_entity_df(entity_df, event_col)
        sql = build_asof_sql(feature_views, feature_refs, event_col, config.repo_path, full_feature_names)
        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        ts = prepared[event_col]
        metadata = RetrievalMetadata(
            features=feature_refs,
            keys=[c for c in entity_df.columns if c != event_col],
            min_event_timestamp=ts.min().to_pydatetime() if len(ts) else None,
            max_event_timestamp=ts.max().to_pydatetime() if len(ts) else None,
        )
        return AsofRetrievalJob(
            sql=sql,
            entity_df=prepared,
            threads=getattr(config.offline_store, "threads", None),
            on_demand_feature_views=odfvs,
            full_feature_names=full_feature_names,
            metadata=metadata,
        )

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime,
        end_date: datetime,
    ) -> RetrievalJob:
        if _local_file(data_source):
            sql = _pull_sql(config, data_source, join_key_columns, feature_name_columns, timestamp_field,
                            created_timestamp_column, start_date, end_date, latest_per_entity=True)  # fmt: skip
            return SQLRetrievalJob(sql, getattr(config.offline_store, "threads", None))
        return pull_latest_from_table_or_query_ibis(
            config=config,
            data_source=data_source,
            join_key_columns=join_key_columns,
            feature_name_columns=feature_name_columns,
            timestamp_field=timestamp_field,
            created_timestamp_column=created_timestamp_column,
            start_date=start_date,
            end_date=end_date,
            data_source_reader=_read_repo_relative,
            data_source_writer=_write_data_source,
            staging_location=config.offline_store.staging_location,
            staging_location_endpoint_override=config.offline_store.staging_location_endpoint_override,
        )

    @staticmethod
    def pull_all_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> RetrievalJob:
        if _local_file(data_source):
            # Feast's materialization pulls every row and keeps the latest per entity by sorting on
            # the timestamp, which leaves a tie to chance: ties are settled here, by the join's rule.
            sql = _pull_sql(config, data_source, join_key_columns, feature_name_columns, timestamp_field,
                            created_timestamp_column, start_date, end_date, latest_per_entity=False)  # fmt: skip
            return SQLRetrievalJob(sql, getattr(config.offline_store, "threads", None))
        return pull_all_from_table_or_query_ibis(
            config=config,
            data_source=data_source,
            join_key_columns=join_key_columns,
            feature_name_columns=feature_name_columns,
            timestamp_field=timestamp_field,
            created_timestamp_column=created_timestamp_column,
            start_date=start_date,
            end_date=end_date,
            data_source_reader=_read_repo_relative,
            data_source_writer=_write_data_source,
            staging_location=config.offline_store.staging_location,
            staging_location_endpoint_override=config.offline_store.staging_location_endpoint_override,
        )


__all__ = ["AsofDuckDBOfflineStore", "AsofDuckDBOfflineStoreConfig", "AsofRetrievalJob", "build_asof_sql"]
