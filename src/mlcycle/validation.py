"""The data contract for raw transactions: what must hold before a row may become a feature.

The contract is a pandera schema (declarative, with per-check failure cases) rather than
hand-written checks. Validation is lazy: every broken check is collected, then summarised per
column and check with the count of offending rows and a few examples, so a person can fix the
upstream in one go instead of one error at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pandera.pandas as pa
from sklearn.metrics import roc_auc_score

from mlcycle.config import QualitySpec
from mlcycle.data import CATEGORIES, CHANNELS, COUNTRIES
from mlcycle.decisions import CheckResult, Verdict, at_least, at_most, within

TZ_DTYPE = pd.DatetimeTZDtype("ns", "UTC")
CATEGORICAL_COLUMNS = ("merchant_category", "country", "channel")
INTEGER_COLUMNS = {"transaction_id": "int64", "user_id": "int64", "merchant_id": "int64", "is_fraud": "int8"}
# Dataframe-wide checks name the columns they relate, for the report.
FRAME_CHECK_COLUMNS = {"label_after_event": "label_available_at"}
MAX_AMOUNT = 1_000_000.0
LEAK_SAMPLE_ROWS = 200_000


@dataclass(frozen=True)
class CheckFailure:
    """One broken check: which column, which check, how many rows, and a few offending values."""

    column: str
    check: str
    rows: int
    examples: tuple[str, ...] = ()

    def __str__(self) -> str:
        ex = f" (e.g. {', '.join(self.examples)})" if self.examples else ""
        if self.check == "column is missing":
            return f"column '{self.column}' is missing"
        if self.check.startswith("dtype "):
            return f"column '{self.column}': expected {self.check}{ex}"
        return f"column '{self.column}': check '{self.check}' failed for {self.rows} row(s){ex}"


@dataclass(frozen=True)
class ContractReport:
    rows: int
    failures: tuple[CheckFailure, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        if self.ok:
            return f"data contract passed: {self.rows} rows"
        lines = [f"data contract failed on {self.rows} rows:"] + [f"  - {f}" for f in self.failures]
        return "\n".join(lines)


class ContractViolation(ValueError):
    """Raised when data breaks the contract; carries the full report."""

    def __init__(self, report: ContractReport):
        super().__init__(report.summary())
        self.report = report


def _one_of(values: Iterable[object], name: str) -> pa.Check:
    """A membership check under a stable name (pandera's built-in ``isin`` names itself by the
    whole value list, which makes a poor message and a poor key)."""
    allowed = list(values)
    return pa.Check(lambda s: s.isin(allowed), name=name)


def transaction_schema(now: datetime | None = None, extra_categories: Iterable[str] = ()) -> pa.DataFrameSchema:
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
                "float64", [pa.Check.gt(0), pa.Check(lambda s: s < MAX_AMOUNT, name="finite_and_below_max")]
            ),
            "merchant_category": pa.Column("category", _one_of([*CATEGORIES, *extra_categories], "known_category")),
            "country": pa.Column("category", _one_of(COUNTRIES, "known_country")),
            "channel": pa.Column("category", _one_of(CHANNELS, "known_channel"), nullable=True),
            "is_fraud": pa.Column("int8", pa.Check.isin([0, 1])),
            "label_available_at": pa.Column(TZ_DTYPE),
        },
        checks=[
            pa.Check(
                lambda df: df["label_available_at"] >= df["event_timestamp"],
                name="label_after_event",
            )
        ],
        unique=["transaction_id"],
        report_duplicates="all",
        strict=False,
        name="transactions",
    )


def normalize_transactions(df: pd.DataFrame) -> pd.DataFrame:
    """Representation-only fixes at the edge (strings → category, integer width, timestamp unit → ns).

    Nothing that changes a value: a wrong type (amounts as text, naive timestamps) is left for the
    contract to reject by name.
    """
    df = df.copy()
    for col in CATEGORICAL_COLUMNS:
        if col in df and (df[col].dtype == object or pd.api.types.is_string_dtype(df[col].dtype)):
            df[col] = df[col].astype("category")
    for col, width in INTEGER_COLUMNS.items():
        if col in df and pd.api.types.is_integer_dtype(df[col].dtype) and not df[col].isna().any():
            df[col] = df[col].astype(width)
    for col in ("event_timestamp", "label_available_at"):
        if col in df and isinstance(df[col].dtype, pd.DatetimeTZDtype):
            df[col] = df[col].dt.tz_convert("UTC").dt.as_unit("ns")
    return df


def _summarise(cases: pd.DataFrame) -> tuple[CheckFailure, ...]:
    """pandera's failure cases (one row per offending value) → one line per column and check."""
    out = []
    # A missing column is reported with the schema's name as "column" and the column as the case.
    missing = cases["check"] == "column_in_dataframe"
    cases = cases.assign(column=cases["column"].where(~missing, cases["failure_case"]).astype(str))
    # A dataframe-wide check lists every column of each failing row: count rows, not values.
    frame_wide = cases["check"].isin(list(FRAME_CHECK_COLUMNS)) & cases["index"].notna()
    for check, group in cases[frame_wide].groupby("check", sort=False):
        rows = group["index"].nunique()
        out.append(CheckFailure(FRAME_CHECK_COLUMNS.get(str(check), "*"), str(check), rows))
    for (column, check), group in cases[~frame_wide].groupby(["column", "check"], sort=False, dropna=False):
        examples = tuple(str(v) for v in group["failure_case"].drop_duplicates().head(3))
        rows = group["index"].nunique() if group["index"].notna().any() else len(group)
        if check == "column_in_dataframe":
            check, rows, examples = "column is missing", 0, ()
        elif str(check).startswith("dtype("):
            check, rows, examples = f"dtype {str(check)[7:-2]}", 0, tuple(f"got {e}" for e in examples[:1])
        elif check == "not_nullable":
            check = "not null"
        elif check in ("field_uniqueness", "multiple_fields_uniqueness"):
            check = "unique"
        out.append(CheckFailure(str(column), str(check), rows, examples))
    return tuple(out)


def validate_transactions(
    df: pd.DataFrame, now: datetime | None = None, extra_categories: Iterable[str] = ()
) -> ContractReport:
    """Check ``df`` against the contract; never raises for bad data, returns the report."""
    schema = transaction_schema(now, extra_categories)
    try:
        schema.validate(df, lazy=True)
    except pa.errors.SchemaErrors as exc:
        return ContractReport(rows=len(df), failures=_summarise(exc.failure_cases))
    return ContractReport(rows=len(df))


def require_valid(df: pd.DataFrame, now: datetime | None = None, extra_categories: Iterable[str] = ()) -> None:
    report = validate_transactions(df, now, extra_categories)
    if not report.ok:
        raise ContractViolation(report)


def load_transactions(path: str | Path) -> pd.DataFrame:
    """Read a transactions file (parquet or CSV) into the contract's representation."""
    path = Path(path)
    if path.suffix == ".csv":
        df = pd.read_csv(path)
        for col in ("event_timestamp", "label_available_at"):
            if col in df:
                parsed = pd.to_datetime(df[col], errors="coerce", utc=False)
                df[col] = parsed if parsed.notna().all() else df[col]
    else:
        df = pd.read_parquet(path)
    return normalize_transactions(df)


def check_training_set(frame: pd.DataFrame, features: list[str], label: str, spec: QualitySpec) -> Verdict:
    """Quality and leakage checks on a training set, before anything is trained on it.

    Label rate within bounds, null rate per feature below its bound, no single feature that predicts
    the label almost perfectly (a leak: the label, or something computed after it, got in), and no
    feature clock later than the event it describes.
    """
    checks = [at_least("rows", float(len(frame)), float(spec.min_rows))]
    y = frame[label].to_numpy() if label in frame else None
    if y is None:
        return Verdict("training-set quality", (*checks, CheckResult("label_present", None, None, ">=", False, label)))
    checks.append(within("label_rate", float(y.mean()) if len(y) else None, spec.min_label_rate, spec.max_label_rate))
    missing = [f for f in features if f not in frame]
    if missing:
        checks.append(CheckResult("features_present", None, None, ">=", False, f"missing: {', '.join(missing)}"))
    present = [f for f in features if f in frame]
    null_rates = frame[present].isna().mean()
    for feature in present:
        bound = spec.null_rate_overrides.get(feature, spec.max_null_rate)
        checks.append(at_most(f"null_rate[{feature}]", float(null_rates[feature]), bound))
    if 0 < y.sum() < len(y):
        # On a bounded sample: a leak shows as an AUC near 1 on 200k rows as clearly as on 10M.
        rows = frame.sample(min(len(frame), LEAK_SAMPLE_ROWS), random_state=0)
        sample = rows[present].apply(pd.to_numeric, errors="coerce")
        y_sample = rows[label].to_numpy()
        auc = {}
        for feature in present:
            values = sample[feature]
            known = values.notna().to_numpy()
            if known.sum() > 10 and 0 < y_sample[known].sum() < known.sum() and values[known].nunique() > 1:
                score = roc_auc_score(y_sample[known], values[known])
                auc[feature] = max(score, 1 - score)
        worst = max(auc, key=auc.get) if auc else None
        checks.append(
            at_most(
                "max_single_feature_auc",
                auc[worst] if worst else 0.5,
                spec.max_single_feature_auc,
                f"most predictive alone: {worst}" if worst else "",
                by_feature={k: round(v, 4) for k, v in sorted(auc.items(), key=lambda kv: -kv[1])[:5]},
            )
        )
    if "request_unix" in frame:
        clocks = [c for c in frame.columns if c.endswith("_unix") and c != "request_unix"]
        event = pd.to_numeric(frame["request_unix"], errors="coerce")
        late = sum(int((pd.to_numeric(frame[c], errors="coerce") > event).sum()) for c in clocks)
        checks.append(at_most("feature_after_event_rows", float(late), 0.0, f"clocks checked: {', '.join(clocks)}"))
    return Verdict("training-set quality", tuple(checks))
