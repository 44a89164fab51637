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

import os
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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

from mlcycle import storage
from mlcycle.settings import ObjectStore, ObjectStoreError

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
    # A file this host does not have is read where another host published it (mlcycle.storage).
    return storage.readable_uri(FileSource.get_uri_for_file_path(repo_path, data_source.path))


def _read_repo_relative(data_source: DataSource, repo_path: str) -> ibis.Table:
    if isinstance(data_source, FileSource) and "://" not in data_source.path:
        return ibis.read_parquet(source_path(data_source, repo_path))
    return _read_data_source(data_source, repo_path)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _connect(threads: int | None, sql: str = "") -> duckdb.DuckDBPyConnection:
    """A connection in UTC that never downloads an extension; one that reads ``s3://`` sources
    (``sql`` names them) loads httpfs from its package and the object store's keys."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute("SET TimeZone = 'UTC'")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if "'s3://" in sql:
        _attach_object_store(con)
    return con


def httpfs_extension() -> Path:
    """DuckDB's httpfs extension as the ``duckdb-extension-httpfs`` package installed it: loaded from
    that file, so nothing is downloaded at run time."""
    try:
        import duckdb_extension_httpfs
    except ImportError:
        raise ObjectStoreError("reading feature tables from object storage needs the duckdb-extension-httpfs "
                               "package (a dependency of mlcycle): reinstall mlcycle") from None  # fmt: skip
    path = Path(duckdb_extension_httpfs.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    path = path / "httpfs.duckdb_extension"
    if not path.is_file():
        raise ObjectStoreError(f"duckdb-extension-httpfs has no build for DuckDB {duckdb.__version__} ({path.parent} "
                               "missing): install the httpfs package of DuckDB's version")  # fmt: skip
    return path


def _attach_object_store(con: duckdb.DuckDBPyConnection) -> None:
    store = ObjectStore.from_env()
    if store is None:
        raise ObjectStoreError("a feature source is in object storage (s3://) but MLCYCLE_S3_ENDPOINT and "
                               "MLCYCLE_S3_BUCKET are not set")  # fmt: skip
    con.execute(f"LOAD {_literal(str(httpfs_extension()))}")
    endpoint = urlsplit(store.endpoint)
    secret = (f"CREATE SECRET mlcycle_store (TYPE s3, KEY_ID {_literal(os.environ['AWS_ACCESS_KEY_ID'])}, "
              f"SECRET {_literal(os.environ['AWS_SECRET_ACCESS_KEY'])}, ENDPOINT {_literal(endpoint.netloc)}, "
              f"URL_STYLE 'path', USE_SSL {'true' if endpoint.scheme == 'https' else 'false'}, "
              f"REGION {_literal(store.region)})")  # fmt: skip
    try:
        con.execute(secret)
    except duckdb.Error as exc:  # its text may quote the statement, keys included
        raise ObjectStoreError(f"DuckDB refused the object store's settings ({type(exc).__name__})") from None


def _run(sql: str, threads: int | None) -> pa.Table:
    """One DuckDB statement, in UTC, on ``threads`` (None: every core)."""
    con = _connect(threads, sql)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


class AsofRetrievalJob(RetrievalJob):
    """Runs the ASOF joins lazily, when the frame is asked for; Feast applies on-demand views after.

    DuckDB sees only the entity rows' id, keys and time; the joined feature columns come back in
    row order and are set beside the entity frame the caller gave, which never leaves memory."""

    def __init__(
        self,
        statements: list[str],
        entity_df: pd.DataFrame,
        join_columns: list[str],
        threads: int | None,
        on_demand_feature_views: list[OnDemandFeatureView],
        full_feature_names: bool,
        metadata: RetrievalMetadata,
    ) -> None:
        super().__init__()
        self._statements = statements
        self._entity_df = entity_df
        self._join_columns = join_columns
        self._threads = threads
        self._odfvs = on_demand_feature_views
        self._full_feature_names = full_feature_names
        self._metadata = metadata

    @property
    def sql(self) -> str:
        return ";\n".join(self._statements)

    def feature_columns(self) -> pa.Table:
        """The views' feature columns, one row per entity row, in the entity rows' order."""
        con = _connect(self._threads, self.sql)
        try:
            con.register("entity_df", self._entity_df[[ROW_ID, *self._join_columns]])
            columns: dict[str, pa.ChunkedArray] = {}
            for statement in self._statements:
                table = con.sql(statement).to_arrow_table()
                columns.update(zip(table.column_names, table.columns, strict=True))
        finally:
            con.close()
        return pa.table(columns) if columns else pa.table({"_": pa.nulls(len(self._entity_df))}).drop_columns(["_"])

    def _entity_frame(self) -> pd.DataFrame:
        return self._entity_df.drop(columns=[ROW_ID]).reset_index(drop=True)

    def to_frame(self) -> pd.DataFrame:
        """The entity rows with the views' features, as pandas: what ``to_df`` gives, without sending
        the entity columns through Arrow and back (about a second on a million rows with strings).

        Column by column, without a copy: the entity columns are the job's own copy of the caller's
        frame (``prepare_entity_df``), the feature columns fresh from Arrow. Dropping the row id,
        resetting the index and concatenating copied a million rows twice more (0.8 s)."""
        features = self.feature_columns().to_pandas()
        entities = self._entity_df
        columns = {c: entities[c].array for c in entities.columns if c != ROW_ID and c not in features.columns}
        columns.update({c: features[c].array for c in features.columns})
        return pd.DataFrame(columns, copy=False)

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        entities = pa.Table.from_pandas(self._entity_frame(), preserve_index=False)
        features = self.feature_columns()
        for name in features.column_names:
            if name in entities.column_names:
                entities = entities.drop_columns([name])
        for name, column in zip(features.column_names, features.columns, strict=True):
            entities = entities.append_column(name, column)
        return entities

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self.to_frame()

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
    """SQL reading one view's source, plus its key map and (source column, output column) pairs.

    Besides the keys and features it gives ``__ts`` (the event time) and ``__order``, the struct
    the join's inequality compares: (event time, created time, file row). Two rows of one entity at
    one timestamp would leave an ASOF join on the time alone free to pick either; on the struct it
    picks the latest created, then the row written last (an upsert's meaning) — Feast's rule, and
    the rule materialization uses, so online equals offline. Breaking ties inside the join costs
    one sort; a window over every feature row (the earlier way) cost another."""
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
    ts = f"{_quote(source.timestamp_field)}::TIMESTAMPTZ"
    created = source.created_timestamp_column
    never = "'-infinity'::TIMESTAMPTZ"  # no created time: below any created time
    tie = f"coalesce({_quote(created)}::TIMESTAMPTZ, {never})" if created else never
    cols = [f"{_quote(c)} AS {_quote(k)}" for c, k in zip(key_cols, key_map, strict=True)]
    cols += [f"{ts} AS __ts", f"{{'t': {ts}, 'c': {tie}, 'r': file_row_number}} AS __order"]
    cols += [f"{_quote(c)} AS {_quote(o)}" for c, o in pairs]
    path = _literal(source_path(source, repo_path))
    sql = f"SELECT {', '.join(cols)} FROM read_parquet({path}, file_row_number = true)"
    return sql, [o for _, o in pairs], key_map, pairs


def _tie_order(created: str | None) -> str:
    """Which of several rows at one timestamp wins: the latest created, then the last written."""
    return (f"{_quote(created)} DESC, " if created else "") + "file_row_number DESC"


# The entity side of the struct comparison: at the entity's time, after every created time and row.
_ENTITY_ORDER = "{{'t': e.{ts}, 'c': 'infinity'::TIMESTAMPTZ, 'r': 9223372036854775807}}"


def build_asof_sql(
    feature_views: list[FeatureView],
    feature_refs: list[str],
    event_timestamp_col: str,
    repo_path: Any,
    full_feature_names: bool,
) -> list[str]:
    """One statement per view: the entity rows (``entity_df``: row id, keys, time), ASOF LEFT
    JOINed to the view, TTL applied, in row-id order, giving the view's feature columns only.

    Per view, on the narrow entity rows, as a hand-written join would: chaining the views in one
    statement carried every entity column and every earlier view's features through each join's
    sort, and sent the entity columns through DuckDB and back, when they are already in memory."""
    statements = []
    for fv in feature_views:
        sql, outputs, key_map, _ = _feature_view_query(fv, feature_refs, repo_path, full_feature_names)
        on = [f"e.{_quote(entity_col)} = f.{_quote(fv_col)}" for fv_col, entity_col in key_map.items()]
        on.append(_ENTITY_ORDER.format(ts=_quote(event_timestamp_col)) + " >= f.__order")
        ttl_seconds = fv.ttl.total_seconds() if fv.ttl else 0
        selects = []
        for out in outputs:
            if ttl_seconds > 0:
                fresh = f"f.__ts >= e.{_quote(event_timestamp_col)} - to_microseconds({int(ttl_seconds * 1_000_000)})"
                selects.append(f"CASE WHEN {fresh} THEN f.{_quote(out)} END AS {_quote(out)}")
            else:
                selects.append(f"f.{_quote(out)}")
        if not selects:
            continue
        statements.append(
            f"WITH f AS ({sql}) SELECT {', '.join(selects)} FROM entity_df e "
            f"ASOF LEFT JOIN f ON {' AND '.join(on)} ORDER BY e.{ROW_ID}"
        )
    return statements


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
        join_keys = offline_utils.get_expected_join_keys(project, feature_views, registry)
        offline_utils.assert_expected_columns_in_entity_df(schema, join_keys, event_col)
        prepared = prepare_entity_df(entity_df, event_col)
        statements = build_asof_sql(feature_views, feature_refs, event_col, config.repo_path, full_feature_names)
        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        ts = prepared[event_col]
        metadata = RetrievalMetadata(
            features=feature_refs,
            keys=[c for c in entity_df.columns if c != event_col],
            min_event_timestamp=ts.min().to_pydatetime() if len(ts) else None,
            max_event_timestamp=ts.max().to_pydatetime() if len(ts) else None,
        )
        return AsofRetrievalJob(
            statements=statements,
            entity_df=prepared,
            join_columns=[*sorted(join_keys), event_col],
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
