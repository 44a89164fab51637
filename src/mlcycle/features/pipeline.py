"""The data → features part of the loop, as plain functions the CLI and the Prefect flows call.

Order matters and is enforced here: the project's table passes its data contract *before* any
feature table is written, so a bad file never reaches the feature store.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from mlcycle import storage
from mlcycle.data import event_log, privacy, validation
from mlcycle.data.labels import encode_labels
from mlcycle.data.lineage import file_hash
from mlcycle.data.validation import ContractReport, ContractViolation
from mlcycle.features import store, transform
from mlcycle.project.config import EVENT_ID_FIX, ProjectConfig, slice_specs
from mlcycle.project.hooks import project_object

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureBuild:
    report: ContractReport
    tables: dict[str, Path]
    rows: dict[str, int]
    data_hash: str


def generate_data(cfg: ProjectConfig, overrides: dict[str, Any] | None = None) -> str:
    """Example data from the project's own generator (``generator`` in the config); returns its summary."""
    if not cfg.generator:
        raise ValueError(
            "this project names no generator: put your table at table.path "
            f"({cfg.table.path}) or name one as generator: 'module:function' in the config"
        )
    return str(project_object(cfg, cfg.generator)(cfg, dict(overrides or {})))


def build_features(
    cfg: ProjectConfig, table_path: str | Path | None = None, now: datetime | None = None
) -> FeatureBuild:
    """Validate the project's table, then write the feature tables. Raises ``ContractViolation``
    (and writes nothing) when the data breaks the contract.

    A file given as ``table_path`` becomes, once valid, the project's table, so the labels of the
    training set come from the same data as its features."""
    raw_path = cfg.table_path
    path = Path(table_path or raw_path)
    table = validation.load_table(cfg, path)
    report = validation.validate_table(table, cfg, now=now)
    if not report.ok:
        raise ContractViolation(report)
    if path.resolve() != raw_path.resolve():
        raw_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = raw_path.with_suffix(".parquet.tmp")
        table.to_parquet(tmp, index=False)
        tmp.replace(raw_path)
        path = raw_path
    # The feature tables aggregate over every event: the table's and those the stream applied
    # since (each once, by event id), so the next training set's features contain them.
    tables = transform.build_tables(event_log.with_streamed(cfg, table), cfg)
    paths = transform.write_tables(tables, cfg.features_dir)
    # With an object store, the table and the feature tables are there too: another host (a
    # monitoring host's labels, a cluster's workers) reads them from it (mlcycle.storage).
    for written in (path, *paths.values()):
        storage.publish(cfg.project, cfg.root, Path(written))
    rows = {name: len(frame) for name, frame in tables.items()}
    return FeatureBuild(report=report, tables=paths, rows=rows, data_hash=file_hash(path))


def publish_features(cfg: ProjectConfig, end: datetime | None = None, fresh: bool = False) -> datetime:
    """``feast apply`` then ``feast materialize-incremental`` up to ``end`` (default now), in-process.

    ``fresh``: after the feature tables were rebuilt from scratch, an incremental load would only
    pick up rows newer than the last one. Locally the registry and online store are files and are
    removed; in profile ``scale`` they are shared servers, so only this project's online rows are
    deleted and every view is reloaded in full (also the way to refill a Redis that lost its data)."""
    # A copied project's registry manages the original's online store: start this one afresh
    # rather than let `feast apply` change the original's tables.
    if cfg.profile == "local" and not fresh and (foreign := store.copied_registry(cfg.feature_repo_path,
                                                                                 store.fs_yaml_for(cfg))):  # fmt: skip
        logger.warning("the Feast registry in %s manages another project's online store (%s): rebuilding "
                       "this project's registry and online store", cfg.feast_dir, foreign[0])  # fmt: skip
        fresh = True
    if fresh and cfg.profile == "local":
        shutil.rmtree(cfg.feast_dir, ignore_errors=True)
    fs_yaml = store.fs_yaml_for(cfg)
    store.apply_repo(cfg.feature_repo_path, fs_yaml)
    fs = store.open_store(cfg.feature_repo_path, fs_yaml)
    if fresh and cfg.profile == "scale":
        store.clear_online(fs)
        return store.materialize(fs, end, full=True)
    return store.materialize(fs, end)


def default_as_of(now: datetime | None = None) -> pd.Timestamp:
    """The labels-known-at time when none is given: the start of the current UTC day.

    A training set depends on the instant it is cut at (which events have matured, which labels
    have arrived). Cutting at "now" made two trainings minutes apart learn from different rows and
    made a gate's verdict depend on the time of day it ran; cutting at the day's start gives every
    training on one day the same rows, so a retrain is comparable with the model trained that morning."""
    moment = pd.Timestamp(now or datetime.now(UTC))
    moment = moment.tz_localize("UTC") if moment.tz is None else moment.tz_convert("UTC")
    return moment.floor("D")


def label_arrival(table: pd.DataFrame, cfg: ProjectConfig) -> pd.Series:
    """When each row's label became known: its own column, or the event time plus the fixed delay."""
    t = cfg.table
    if t.label_available_at:
        return table[t.label_available_at]
    return table[t.timestamp] + pd.Timedelta(days=t.label_delay_days)


class NoEventId(ValueError):
    """The project declares no event id (``table.event_id``), so a label cannot be joined to the
    prediction that was logged for its event. Callers that can do without labels (monitoring's
    drift) check ``cfg.table.event_id`` first and report what they cannot measure instead."""


def labels_frame(table: pd.DataFrame, cfg: ProjectConfig) -> pd.DataFrame:
    """The table's labels in the lifecycle's own names (``event_id``, ``event_timestamp``, ``label``,
    ``label_available_at``): what monitoring and the canary join logged predictions with. Raises
    ``NoEventId`` when the project declares none: there is nothing to join on."""
    t = cfg.table
    if not t.event_id:
        raise NoEventId(
            f"table.event_id is not set: labels cannot be joined back to logged predictions; {EVENT_ID_FIX}"
        )
    return pd.DataFrame(
        {
            # As the prediction log holds it (a hashed event id joins its hashed log rows).
            "event_id": privacy.as_logged(table[t.event_id].astype(str), t.event_id, cfg.privacy).to_numpy(),
            "event_timestamp": table[t.timestamp].to_numpy(),
            "label": label_values(table[t.label], cfg).to_numpy(),
            "label_available_at": label_arrival(table, cfg).to_numpy(),
        }
    )


def label_values(labels: pd.Series, cfg: ProjectConfig) -> pd.Series:
    """Classification labels as 0/1 (the configured positive value is 1), regression as floats."""
    return encode_labels(labels, cfg.task, cfg.table.positive_label)


def labelled_entities(
    table: pd.DataFrame,
    cfg: ProjectConfig,
    as_of: datetime | None = None,
    window_days: int | None = None,
    request_fields: Sequence[str] = (),
    carried: Sequence[str] = (),
) -> pd.DataFrame:
    """Entity rows with their label as known at ``as_of`` (default: the start of today, UTC), for
    matured events only. ``carried`` names more of the table's columns to keep beside them (the
    evaluation's slices, ``carried_columns``): they pass the point-in-time join untouched.

    Labels often arrive unevenly: positives (a dispute, a default) within days, negatives only when
    a window closes without one. So only events older than the label delay are used, and of those
    only the rows whose own label had arrived by ``as_of``. A row whose label has not arrived is
    unknown, not negative: counting a late positive as 0 would teach the model it was fine. Never a
    label nobody could have seen at ``as_of``.
    """
    t = cfg.table
    as_of_ts = default_as_of() if as_of is None else pd.Timestamp(as_of)
    as_of_ts = as_of_ts.tz_localize("UTC") if as_of_ts.tz is None else as_of_ts.tz_convert("UTC")
    cutoff = as_of_ts - pd.Timedelta(days=t.label_delay_days)
    events = table[t.timestamp]
    mask = events <= cutoff
    if window_days is not None:
        mask &= events > cutoff - pd.Timedelta(days=window_days)
    mask &= label_arrival(table, cfg) <= as_of_ts
    mask &= table[t.label].notna()
    rows = table.loc[mask]
    entities = store.entity_frame(rows, t.entities, request_fields, t.timestamp)
    if t.event_id:
        entities[t.event_id] = rows[t.event_id].to_numpy()
    for col in carried:
        if col not in entities:
            entities[col] = rows[col].to_numpy()
    entities[t.label] = label_values(rows[t.label], cfg).to_numpy()
    return entities


def carried_columns(cfg: ProjectConfig, table: pd.DataFrame, plan: store.ServicePlan) -> list[str]:
    """The table's columns that the evaluation slices and the protected attribute read and that the
    feature service does not give: kept beside the training rows, never model inputs.

    A protected attribute is rightly no model input (``mlcycle init`` leaves it out of every view),
    yet the evaluation must group rows by it and the fairness gate compare those groups. A column
    the service produces (a view's feature, an on-demand output) is left to the join: its value as
    of the event is the one the service computes, and carrying the table's beside it would make two
    columns of one name; one the entity rows hold already (a request field, a key) is not repeated.
    The model reads only ``plan.model_features``, so a carried column never reaches its matrix."""
    t = cfg.table
    given = {ref.split(":", 1)[1] for ref in plan.view_refs} | set(plan.model_features)
    given |= {f.name for odfv in plan.odfvs for f in odfv.features}
    given |= {*plan.request_fields, *t.entities, t.timestamp, t.label, *filter(None, [t.event_id])}
    wanted = dict.fromkeys(s.column for s in slice_specs(t.slices, t.protected))
    return [col for col in wanted if col in table.columns and col not in given]


def build_training_set(
    cfg: ProjectConfig, as_of: datetime | None = None, window_days: int | None = None
) -> pd.DataFrame:
    """Point-in-time training rows (features + label, and the table's columns the evaluation slices
    by: ``carried_columns``) for every matured labelled event of the latest ``window_days``
    (default ``model.train_window_days``; None there: all of them)."""
    table = validation.load_table(cfg)
    window = window_days or cfg.model.train_window_days
    fs = store.open_project_store(cfg)
    plan = store.plan_for(fs, cfg.features.feature_service)
    carried = carried_columns(cfg, table, plan)
    entities = labelled_entities(table, cfg, as_of, window, plan.request_fields, carried)
    return store.training_set(fs, entities, cfg.features.feature_service)


def summarize_training_set(frame: pd.DataFrame, model_features: list[str]) -> pd.DataFrame:
    """Per feature: null rate and mean — what a person checks first in a new training set."""
    numeric = frame[model_features].apply(pd.to_numeric, errors="coerce")
    return pd.DataFrame({"null_rate": numeric.isna().mean(), "mean": numeric.mean()}).round(4)
