"""The data → features part of the loop, as plain functions the CLI and the Prefect flows call.

Order matters and is enforced here: raw transactions pass the data contract *before* any feature
table is written, so a bad file never reaches the feature store.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from mlcycle.config import ProjectConfig
from mlcycle.data import Dataset, generate, read_dataset
from mlcycle.features import engineering, store
from mlcycle.validation import ContractReport, ContractViolation, load_transactions, validate_transactions


@dataclass(frozen=True)
class FeatureBuild:
    report: ContractReport
    tables: dict[str, Path]
    rows: dict[str, int]
    data_hash: str


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes: the data snapshot id recorded with everything built from it."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def generate_data(cfg: ProjectConfig) -> tuple[Dataset, dict[str, Path]]:
    dataset = generate(cfg.data)
    return dataset, dataset.write(cfg.raw_dir)


def build_features(
    cfg: ProjectConfig, transactions_path: str | Path | None = None, now: datetime | None = None
) -> FeatureBuild:
    """Validate the raw transactions, then write the feature tables. Raises ``ContractViolation``
    (and writes nothing) when the data breaks the contract."""
    tx_path = Path(transactions_path or cfg.raw_dir / "transactions.parquet")
    transactions = load_transactions(tx_path)
    report = validate_transactions(transactions, now=now)
    if not report.ok:
        raise ContractViolation(report)
    users = pd.read_parquet(cfg.raw_dir / "users.parquet")
    tables = engineering.build_feature_tables(transactions, users)
    paths = tables.write(cfg.features_dir)
    rows = {name: len(getattr(tables, name)) for name in paths}
    return FeatureBuild(report=report, tables=paths, rows=rows, data_hash=file_hash(tx_path))


def publish_features(cfg: ProjectConfig, end: datetime | None = None, fresh: bool = False) -> datetime:
    """``feast apply`` then ``feast materialize-incremental`` up to ``end`` (default now), in-process.

    ``fresh`` first removes the local registry and online store: after the feature tables were
    rebuilt from scratch, an incremental load would only pick up rows newer than the last one."""
    if fresh and cfg.profile == "local":
        shutil.rmtree(cfg.feast_dir, ignore_errors=True)
    store.apply_repo(cfg.feature_repo_path)
    return store.materialize(store.open_store(cfg.feature_repo_path), end)


def labelled_entities(
    transactions: pd.DataFrame, as_of: datetime | None = None, start: datetime | None = None
) -> pd.DataFrame:
    """Transactions whose label is known at ``as_of`` (default now), from ``start`` on, as entity rows
    with their label. A label that arrives later must not be used, or the training set leaks."""
    as_of_ts = pd.Timestamp(as_of or datetime.now(UTC))
    mask = transactions["label_available_at"] <= as_of_ts
    if start is not None:
        mask &= transactions["event_timestamp"] >= pd.Timestamp(start)
    known = transactions.loc[mask]
    entities = store.entity_frame(known)
    entities["transaction_id"] = known["transaction_id"].to_numpy()
    entities["is_fraud"] = known["is_fraud"].astype("int8").to_numpy()
    return entities


def build_training_set(
    cfg: ProjectConfig, as_of: datetime | None = None, start: datetime | None = None
) -> pd.DataFrame:
    dataset = read_dataset(cfg.raw_dir)
    entities = labelled_entities(dataset.transactions, as_of, start)
    fs = store.open_store(cfg.feature_repo_path)
    return store.training_set(fs, entities, cfg.features.feature_service)


def summarize_training_set(frame: pd.DataFrame, model_features: list[str]) -> pd.DataFrame:
    """Per feature: null rate and mean — what a person checks first in a new training set."""
    numeric = frame[model_features].apply(pd.to_numeric, errors="coerce")
    return pd.DataFrame({"null_rate": numeric.isna().mean(), "mean": numeric.mean()}).round(4)
