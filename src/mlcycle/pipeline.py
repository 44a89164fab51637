"""The data → features part of the loop, as plain functions the CLI and the Prefect flows call.

Order matters and is enforced here: raw transactions pass the data contract *before* any feature
table is written, so a bad file never reaches the feature store.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from mlcycle.config import ProjectConfig
from mlcycle.data import Dataset, generate
from mlcycle.features import engineering, store
from mlcycle.lineage import file_hash
from mlcycle.validation import ContractReport, ContractViolation, load_transactions, validate_transactions


@dataclass(frozen=True)
class FeatureBuild:
    report: ContractReport
    tables: dict[str, Path]
    rows: dict[str, int]
    data_hash: str


def generate_data(cfg: ProjectConfig) -> tuple[Dataset, dict[str, Path]]:
    dataset = generate(cfg.data)
    return dataset, dataset.write(cfg.raw_dir)


def build_features(
    cfg: ProjectConfig, transactions_path: str | Path | None = None, now: datetime | None = None
) -> FeatureBuild:
    """Validate raw transactions, then write the feature tables. Raises ``ContractViolation``
    (and writes nothing) when the data breaks the contract.

    A file given as ``transactions_path`` becomes, once valid, the project's raw transactions, so
    the labels of the training set come from the same data as its features."""
    raw_path = cfg.raw_dir / "transactions.parquet"
    tx_path = Path(transactions_path or raw_path)
    transactions = load_transactions(tx_path)
    report = validate_transactions(transactions, now=now)
    if not report.ok:
        raise ContractViolation(report)
    if tx_path.resolve() != raw_path.resolve():
        tmp = raw_path.with_suffix(".parquet.tmp")
        transactions.to_parquet(tmp, index=False)
        tmp.replace(raw_path)
        tx_path = raw_path
    users = pd.read_parquet(cfg.raw_dir / "users.parquet")
    tables = engineering.build_feature_tables(transactions, users, cfg.features.aggregations.get("user_txn_stats"))
    paths = tables.write(cfg.features_dir)
    rows = {name: len(getattr(tables, name)) for name in paths}
    return FeatureBuild(report=report, tables=paths, rows=rows, data_hash=file_hash(tx_path))


def publish_features(cfg: ProjectConfig, end: datetime | None = None, fresh: bool = False) -> datetime:
    """``feast apply`` then ``feast materialize-incremental`` up to ``end`` (default now), in-process.

    ``fresh``: after the feature tables were rebuilt from scratch, an incremental load would only
    pick up rows newer than the last one. Locally the registry and online store are files and are
    removed; in profile ``scale`` they are shared servers, so only this project's online rows are
    deleted and every view is reloaded in full (also the way to refill a Redis that lost its data)."""
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


def labelled_entities(
    transactions: pd.DataFrame,
    as_of: datetime | None = None,
    maturity_days: float = 30.0,
    window_days: int | None = None,
) -> pd.DataFrame:
    """Entity rows with their label as known at ``as_of`` (default: the start of today, UTC), for
    matured events only.

    Fraud labels (chargebacks) arrive within days, legitimate ones only when the dispute window
    closes: among recent events, the known labels are almost all fraud. So only events older than
    ``maturity_days`` are used, and of those only the rows whose own label had arrived by ``as_of``
    (``label_available_at``). A row whose label has not arrived is unknown, not legitimate: a few
    percent of chargebacks arrive after the dispute window, and counting them as 0 would teach the
    model that those frauds were fine. Never the label the generator knows but nobody could have seen.
    """
    as_of_ts = default_as_of() if as_of is None else pd.Timestamp(as_of)
    as_of_ts = as_of_ts.tz_localize("UTC") if as_of_ts.tz is None else as_of_ts.tz_convert("UTC")
    cutoff = as_of_ts - pd.Timedelta(days=maturity_days)
    mask = transactions["event_timestamp"] <= cutoff
    if window_days is not None:
        mask &= transactions["event_timestamp"] > cutoff - pd.Timedelta(days=window_days)
    mask &= transactions["label_available_at"] <= as_of_ts
    rows = transactions.loc[mask]
    entities = store.entity_frame(rows)
    entities["transaction_id"] = rows["transaction_id"].to_numpy()
    entities["is_fraud"] = rows["is_fraud"].to_numpy().astype("int8")
    return entities


def build_training_set(
    cfg: ProjectConfig, as_of: datetime | None = None, window_days: int | None = None
) -> pd.DataFrame:
    """Point-in-time training rows (features + label) for every matured labelled transaction of the
    latest ``window_days`` (default ``model.train_window_days``; None there: all of them)."""
    transactions = load_transactions(cfg.raw_dir / "transactions.parquet")
    window = window_days or cfg.model.train_window_days
    entities = labelled_entities(transactions, as_of, cfg.table.label_delay_days, window)
    fs = store.open_project_store(cfg)
    return store.training_set(fs, entities, cfg.features.feature_service)


def summarize_training_set(frame: pd.DataFrame, model_features: list[str]) -> pd.DataFrame:
    """Per feature: null rate and mean — what a person checks first in a new training set."""
    numeric = frame[model_features].apply(pd.to_numeric, errors="coerce")
    return pd.DataFrame({"null_rate": numeric.isna().mean(), "mean": numeric.mean()}).round(4)
