"""The fraud project's data contract: what must hold for a raw transaction before it may become a
feature. In Python rather than YAML because some checks depend on the moment of validation (no
transaction in the future) and on a person's decision (a new merchant category admitted)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pandera.pandas as pa

from fraud.generator import CATEGORIES, CHANNELS, COUNTRIES
from mlcycle.data.validation import (
    TZ_DTYPE,
    ContractReport,
    label_after_event,
    normalize_table,
    one_of,
    read_table_file,
    validate_frame,
)

MAX_AMOUNT = 1_000_000.0


def schema(now: datetime | None = None, extra_categories: Iterable[str] = ()) -> pa.DataFrameSchema:
    """The contract. ``now`` bounds timestamps (default: the wall clock at validation time);
    ``extra_categories`` admits merchant categories beyond the known set, once a person has
    decided a new category is legitimate rather than a broken upstream."""
    now_ts = pd.Timestamp(now or datetime.now(UTC))
    now_ts = now_ts.tz_localize("UTC") if now_ts.tz is None else now_ts.tz_convert("UTC")
    positive_id = [pa.Check.gt(0)]
    return pa.DataFrameSchema(
        {
            "transaction_id": pa.Column("int64", positive_id),
            "user_id": pa.Column("int64", positive_id),
            "merchant_id": pa.Column("int64", positive_id),
            "event_timestamp": pa.Column(TZ_DTYPE, pa.Check(lambda s: s <= now_ts, name="not_in_future")),
            "amount": pa.Column(
                "float64",
                [
                    pa.Check.gt(0),
                    pa.Check(
                        lambda s: s < MAX_AMOUNT, name="finite_and_below_max", statistics={"max_value": MAX_AMOUNT}
                    ),
                ],
            ),
            "merchant_category": pa.Column("category", one_of([*CATEGORIES, *extra_categories], "known_category")),
            "country": pa.Column("category", one_of(COUNTRIES, "known_country")),
            "channel": pa.Column("category", one_of(CHANNELS, "known_channel"), nullable=True),
            "is_fraud": pa.Column("int8", pa.Check.isin([0, 1])),
            "label_available_at": pa.Column(TZ_DTYPE),
        },
        checks=[label_after_event("label_available_at", "event_timestamp")],
        unique=["transaction_id"],
        report_duplicates="all",
        strict=False,
        name="transactions",
    )


def validate(df: pd.DataFrame, now: datetime | None = None, extra_categories: Iterable[str] = ()) -> ContractReport:
    """The transactions contract alone (the project's pipeline adds the rules every table keeps)."""
    return validate_frame(df, schema(now, extra_categories))


def load(path: str | Path) -> pd.DataFrame:
    """A transactions file (parquet or CSV) in the contract's representation."""
    return normalize_table(read_table_file(path, ("event_timestamp", "label_available_at")), schema())
