"""The data contract: bad files are rejected by column and check, and nothing reaches the store."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from fraud.contract import load as load_transactions
from fraud.contract import validate as validate_transactions

from mlcycle.data.validation import ContractViolation
from mlcycle.features import pipeline
from mlcycle.project.config import ProjectConfig


@pytest.fixture(scope="module")
def good(project: ProjectConfig) -> pd.DataFrame:
    return load_transactions(project.raw_dir / "transactions.parquet").head(5000)


def snapshot(*dirs: Path) -> dict[str, str]:
    """Content hash of every file below ``dirs``: proves a failed run wrote nothing."""
    out = {}
    for d in dirs:
        for path in sorted(d.rglob("*")):
            if path.is_file():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_generated_data_passes(good: pd.DataFrame) -> None:
    report = validate_transactions(good)
    assert report.ok, report.summary()


def corrupt_missing_column(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["amount"])


def corrupt_wrong_dtype(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(amount=df["amount"].astype(str))


def corrupt_future_timestamp(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.loc[df.index[:7], "event_timestamp"] = pd.Timestamp("2099-01-01", tz="UTC")
    df.loc[df.index[:7], "label_available_at"] = pd.Timestamp("2099-02-01", tz="UTC")
    return df


@pytest.mark.parametrize(
    ("corrupt", "column", "check", "rows"),
    [
        (corrupt_missing_column, "amount", "column is missing", None),
        (corrupt_wrong_dtype, "amount", "dtype float64", None),
        (corrupt_future_timestamp, "event_timestamp", "not_in_future", 7),
    ],
)
def test_bad_file_is_rejected_by_name_and_the_store_is_untouched(
    project: ProjectConfig, good: pd.DataFrame, tmp_path: Path, corrupt, column: str, check: str, rows
) -> None:
    bad_path = tmp_path / "transactions.parquet"
    corrupt(good).to_parquet(bad_path, index=False)
    before = snapshot(project.features_dir, project.feast_dir)
    with pytest.raises(ContractViolation) as info:
        pipeline.build_features(project, bad_path)
    assert snapshot(project.features_dir, project.feast_dir) == before
    failures = {(f.column, f.check): f for f in info.value.report.failures}
    assert (column, check) in failures, info.value.report.summary()
    assert f"column '{column}'" in str(info.value)
    if rows is not None:
        assert failures[(column, check)].rows == rows


def test_every_broken_check_is_reported_at_once(good: pd.DataFrame) -> None:
    df = good.copy()
    df.loc[df.index[:3], "amount"] = -5.0
    df.loc[df.index[3:5], "transaction_id"] = df["transaction_id"].iloc[10]
    df["merchant_category"] = df["merchant_category"].cat.add_categories(["casino"])
    df.loc[df.index[:4], "merchant_category"] = "casino"
    df.loc[df.index[:2], "label_available_at"] = df["event_timestamp"].iloc[0] - pd.Timedelta(days=1)
    report = validate_transactions(df)
    found = {(f.column, f.check): f.rows for f in report.failures}
    assert found[("amount", "greater_than(0)")] == 3
    assert found[("transaction_id", "unique")] == 3  # the two copies and the original
    assert found[("merchant_category", "known_category")] == 4
    assert found[("label_available_at", "label_after_event")] == 2
    assert "casino" in report.summary()


def test_a_new_category_passes_once_admitted(good: pd.DataFrame) -> None:
    df = good.copy()
    df["merchant_category"] = df["merchant_category"].cat.add_categories(["crypto"])
    df.loc[df.index[:4], "merchant_category"] = "crypto"
    assert not validate_transactions(df).ok
    assert validate_transactions(df, extra_categories=["crypto"]).ok


def test_csv_with_naive_timestamps_is_rejected(good: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "tx.csv"
    good.assign(event_timestamp=good["event_timestamp"].dt.tz_localize(None)).to_csv(path, index=False)
    report = validate_transactions(load_transactions(path), now=datetime.now(UTC))
    assert ("event_timestamp", "dtype datetime64[ns, UTC]") in {(f.column, f.check) for f in report.failures}


def test_naive_now_and_nullable_integers_are_handled(good: pd.DataFrame) -> None:
    naive_now = datetime.now(UTC).replace(tzinfo=None)
    assert validate_transactions(good, now=naive_now).ok
    df = good.copy()
    df["user_id"] = df["user_id"].astype("Int64")
    df.loc[df.index[:2], "user_id"] = pd.NA
    from fraud.contract import schema

    from mlcycle.data.validation import normalize_table

    report = validate_transactions(normalize_table(df, schema()))
    assert not report.ok
    assert any(f.column == "user_id" for f in report.failures)
