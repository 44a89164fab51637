"""The data contract of a project's table: what must hold before a row may become a feature.

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

import numpy as np
import pandas as pd
import pandera.pandas as pa

from mlcycle import storage
from mlcycle.decisions import CheckResult, Verdict, at_least, at_most, within
from mlcycle.project.config import ProjectConfig, QualitySpec
from mlcycle.stats import ranking_metrics

TZ_DTYPE = pd.DatetimeTZDtype("ns", "UTC")
# Dataframe-wide checks name the columns they relate, for the report.
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


def one_of(values: Iterable[object], name: str) -> pa.Check:
    """A membership check under a stable name (pandera's built-in ``isin`` names itself by the
    whole value list, which makes a poor message and a poor key)."""
    allowed = list(values)
    # The set as the check's statistics: the serving schema reads a request field's categories there.
    return pa.Check(lambda s: s.isin(allowed), name=name, statistics={"allowed_values": allowed})


def _summarise(cases: pd.DataFrame, frame_checks: dict[str, str]) -> tuple[CheckFailure, ...]:
    """pandera's failure cases (one row per offending value) → one line per column and check.
    ``frame_checks`` names the schema's dataframe-wide checks and the column each one is about."""
    out = []
    # A missing column is reported with the schema's name as "column" and the column as the case.
    missing = cases["check"] == "column_in_dataframe"
    cases = cases.assign(column=cases["column"].where(~missing, cases["failure_case"]).astype(str))
    # A dataframe-wide check lists every column of each failing row: count rows, not values.
    frame_wide = cases["check"].isin(list(frame_checks)) & cases["index"].notna()
    for check, group in cases[frame_wide].groupby("check", sort=False):
        rows = group["index"].nunique()
        out.append(CheckFailure(frame_checks.get(str(check), "*"), str(check), rows))
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


def _builtin_schema(cfg: ProjectConfig) -> pa.DataFrameSchema:
    """Without a contract file: the roles the config names, with their basic types."""
    t = cfg.table
    columns = {t.timestamp: pa.Column(TZ_DTYPE), t.label: pa.Column(nullable=False)}
    for key in t.entities:
        columns[key] = pa.Column(nullable=False)
    if t.label_available_at:
        columns[t.label_available_at] = pa.Column(TZ_DTYPE, nullable=True)
    if t.event_id:
        columns[t.event_id] = pa.Column(nullable=False)
    return pa.DataFrameSchema(columns, strict=False, name="table")


def table_schema(cfg: ProjectConfig, now: datetime | None = None) -> pa.DataFrameSchema:
    """The project's data contract: ``table.contract`` is a contract YAML (``mlcycle init`` writes
    one, a person tightens it), or ``module:function`` returning a pandera schema for ``now``
    (the way out for checks a YAML cannot say); none: the roles' basic types only."""
    ref = cfg.table.contract
    if ref is None:
        return _builtin_schema(cfg)
    if ref.endswith((".yaml", ".yml")):
        from mlcycle.project.contract_inference import contract_from_yaml

        return contract_from_yaml(cfg.resolve(Path(ref)).read_text())
    from mlcycle.project.hooks import project_object

    return project_object(cfg, ref)(now=now)


def label_after_event(arrival: str, event: str) -> pa.Check:
    """A label does not arrive before its event (a missing arrival is the contract's business)."""
    return pa.Check(
        lambda df: df[arrival].isna() | (df[arrival] >= df[event]),
        name="label_after_event",
        statistics={"column": arrival},
    )


def _role_schema(cfg: ProjectConfig, now: datetime | None) -> pa.DataFrameSchema:
    """What holds for every project whatever its contract says: event times known and not in the
    future, a label that arrives after its event, one row per event id."""
    t = cfg.table
    now_ts = pd.Timestamp(now or datetime.now(UTC))
    now_ts = now_ts.tz_localize("UTC") if now_ts.tz is None else now_ts.tz_convert("UTC")
    columns = {t.timestamp: pa.Column(TZ_DTYPE, pa.Check(lambda s: s <= now_ts, name="not_in_future"))}
    checks = []
    if t.label_available_at:
        arrival, event = t.label_available_at, t.timestamp
        checks.append(label_after_event(arrival, event))
    if t.event_id:
        columns[t.event_id] = pa.Column(nullable=False, unique=True, report_duplicates="all")
    return pa.DataFrameSchema(columns, checks=checks, strict=False, name="table roles")


def normalize_table(df: pd.DataFrame, schema: pa.DataFrameSchema | None = None) -> pd.DataFrame:
    """Representation-only fixes at the edge, driven by the contract's dtypes: text → category where
    the contract says category, integer width, timestamps → UTC nanoseconds. Nothing that changes a
    value: a wrong type (numbers as text, naive timestamps) is left for the contract to reject by name."""
    df = df.copy()
    for name, column in schema.columns.items() if schema is not None else ():
        if name not in df or column.dtype is None:
            continue
        want = str(column.dtype)
        have = df[name].dtype
        if want == "category" and (pd.api.types.is_object_dtype(have) or pd.api.types.is_string_dtype(have)):
            df[name] = df[name].astype("category")
        elif want.startswith("int") and pd.api.types.is_integer_dtype(have) and not df[name].isna().any():
            df[name] = df[name].astype(want)
    for name in df.columns:
        if isinstance(df[name].dtype, pd.DatetimeTZDtype):
            df[name] = df[name].dt.tz_convert("UTC").dt.as_unit("ns")
    return df


def read_table_file(path: str | Path, timestamp_columns: Iterable[str] = ()) -> pd.DataFrame:
    """A table file (parquet or CSV, read as ``mlcycle init`` reads it) as it is; CSV timestamps of
    the named columns parsed when every value parses (otherwise left as text for the contract to
    reject by name)."""
    from mlcycle.project.contract_inference import read_table

    df = read_table(path)
    if Path(path).suffix.lower() == ".csv":
        for col in timestamp_columns:
            if col in df:
                parsed = pd.to_datetime(df[col], errors="coerce", utc=False)
                df[col] = parsed if parsed.notna().all() else df[col]
    return df


def load_table(cfg: ProjectConfig, path: str | Path | None = None) -> pd.DataFrame:
    """The project's table (or another file of the same shape) in its contract's representation."""
    t = cfg.table
    where = path or storage.fetch(cfg.project, cfg.root, cfg.table_path)  # another host's table: from the store
    df = read_table_file(where, [c for c in (t.timestamp, t.label_available_at) if c])
    return normalize_table(df, table_schema(cfg))


def validate_frame(df: pd.DataFrame, schema: pa.DataFrameSchema) -> ContractReport:
    """Check ``df`` against ``schema``; never raises for bad data, returns the report."""
    try:
        schema.validate(df, lazy=True)
    except pa.errors.SchemaErrors as exc:
        # A dataframe-wide check says in its statistics which column it is about (``column``).
        frame_checks = {c.name: (c.statistics or {}).get("column", "*") for c in schema.checks}
        return ContractReport(rows=len(df), failures=_summarise(exc.failure_cases, frame_checks))
    return ContractReport(rows=len(df))


def validate_table(df: pd.DataFrame, cfg: ProjectConfig, now: datetime | None = None) -> ContractReport:
    """The project's contract and the rules every table keeps (:func:`_role_schema`), in one report."""
    contract = validate_frame(df, table_schema(cfg, now))
    roles = validate_frame(df, _role_schema(cfg, now))
    seen = {(f.column, f.check) for f in contract.failures}
    extra = tuple(f for f in roles.failures if (f.column, f.check) not in seen)
    return ContractReport(rows=len(df), failures=contract.failures + extra)


def _strongest_alone(name: str, strength: dict[str, float], bound: float, nothing: float) -> CheckResult:
    """The leak check: the feature that alone predicts the label best must stay within ``bound``
    (``nothing``: the value when no feature could be scored); the five strongest as evidence."""
    worst = max(strength, key=strength.__getitem__) if strength else None
    return at_most(
        name,
        strength[worst] if worst else nothing,
        bound,
        f"most predictive alone: {worst}" if worst else "",
        by_feature={k: round(v, 4) for k, v in sorted(strength.items(), key=lambda kv: -kv[1])[:5]},
    )


def _leak_sample(n: int) -> np.ndarray:
    """Positions of at most ``LEAK_SAMPLE_ROWS`` rows, seeded (the same rows on every run)."""
    if n <= LEAK_SAMPLE_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, LEAK_SAMPLE_ROWS, replace=False))


@dataclass(frozen=True)
class TrainingSetStats:
    """What the training-set checks of a classification read, in a form that adds up: the engine that
    builds a training set in partitions computes one per partition and merges them
    (:func:`merge_training_set_stats`), so no process holds the whole set."""

    rows: int
    label_sum: float | None  # None: the label column is missing
    nulls: dict[str, int]  # per present feature
    missing: tuple[str, ...]  # features absent from the set
    late: int | None  # rows with a feature clock after the event (None: no request clock)
    clocks: tuple[str, ...]
    sample: pd.DataFrame  # the leak check's rows: present features and the label


def training_set_stats(
    frame: pd.DataFrame, features: list[str], label: str, sample: np.ndarray | None = None
) -> TrainingSetStats:
    """``sample``: positions of the rows the leak check scores (default ``_leak_sample``)."""
    present = [f for f in features if f in frame]
    has_label = label in frame
    take = _leak_sample(len(frame)) if sample is None else sample
    late, clocks = None, ()
    if "request_unix" in frame:
        clocks = tuple(c for c in frame.columns if c.endswith("_unix") and c != "request_unix")
        event = pd.to_numeric(frame["request_unix"], errors="coerce")
        late = sum(int((pd.to_numeric(frame[c], errors="coerce") > event).sum()) for c in clocks)
    return TrainingSetStats(
        rows=len(frame),
        label_sum=float(frame[label].sum()) if has_label else None,
        # column by column: ``frame[present]`` would copy the whole set first
        nulls={f: int(frame[f].isna().sum()) for f in present},
        missing=tuple(f for f in features if f not in frame),
        late=late,
        clocks=clocks,
        # the sampled rows first: selecting the columns first would copy every row of them
        sample=frame.take(take)[[*present, *([label] if has_label else [])]].reset_index(drop=True),
    )


def merge_training_set_stats(parts: list[TrainingSetStats]) -> TrainingSetStats:
    """The statistics of the partitions' union (their samples concatenated in partition order)."""
    first = parts[0]
    lates = [p.late for p in parts if p.late is not None]
    return TrainingSetStats(
        rows=sum(p.rows for p in parts),
        label_sum=None if any(p.label_sum is None for p in parts) else sum(p.label_sum or 0.0 for p in parts),
        nulls={f: sum(p.nulls.get(f, 0) for p in parts) for f in first.nulls},
        missing=first.missing,
        late=sum(lates) if lates else None,
        clocks=first.clocks,
        sample=pd.concat([p.sample for p in parts], ignore_index=True),
    )


def training_set_verdict(stats: TrainingSetStats, label: str, spec: QualitySpec) -> Verdict:
    """The classification checks on a training set's statistics (see :func:`check_training_set`)."""
    checks = [at_least("rows", float(stats.rows), float(spec.min_rows))]
    if stats.label_sum is None:
        return Verdict("training-set quality", (*checks, CheckResult("label_present", None, None, ">=", False, label)))
    checks.append(
        within(
            "label_rate", stats.label_sum / stats.rows if stats.rows else None, spec.min_label_rate, spec.max_label_rate
        )
    )
    if stats.missing:
        checks.append(CheckResult("features_present", None, None, ">=", False, f"missing: {', '.join(stats.missing)}"))
    for feature, nulls in stats.nulls.items():
        bound = spec.null_rate_overrides.get(feature, spec.max_null_rate)
        checks.append(at_most(f"null_rate[{feature}]", nulls / stats.rows if stats.rows else float("nan"), bound))
    if 0 < stats.label_sum < stats.rows:
        # On a bounded sample: a leak shows as an AUC near 1 on 200k rows as clearly as on 10M.
        y_sample = stats.sample[label].to_numpy()
        auc = {}
        for feature in stats.nulls:
            values = pd.to_numeric(stats.sample[feature], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            known = ~np.isnan(values)
            v, yk = values[known], y_sample[known]
            if known.sum() > 10 and v.min() < v.max():
                score, _ = ranking_metrics(yk, v)
                if score is not None:
                    auc[feature] = max(score, 1 - score)
        checks.append(_strongest_alone("max_single_feature_auc", auc, spec.max_single_feature_auc, 0.5))
    if stats.late is not None:
        checks.append(
            at_most("feature_after_event_rows", float(stats.late), 0.0, f"clocks checked: {', '.join(stats.clocks)}")
        )
    return Verdict("training-set quality", tuple(checks))


def check_training_set(
    frame: pd.DataFrame, features: list[str], label: str, spec: QualitySpec, task: str = "classification"
) -> Verdict:
    """Quality and leakage checks on a training set, before anything is trained on it.

    Label rate within bounds, null rate per feature below its bound, no single feature that predicts
    the label almost perfectly (a leak: the label, or something computed after it, got in), and no
    feature clock later than the event it describes.
    """
    if task != "regression":
        return training_set_verdict(training_set_stats(frame, features, label), label, spec)
    checks = [at_least("rows", float(len(frame)), float(spec.min_rows))]
    if label not in frame:
        return Verdict("training-set quality", (*checks, CheckResult("label_present", None, None, ">=", False, label)))
    checks += regression_label_checks(frame, features, label, spec)
    missing = [f for f in features if f not in frame]
    if missing:
        checks.append(CheckResult("features_present", None, None, ">=", False, f"missing: {', '.join(missing)}"))
    for feature in [f for f in features if f in frame]:
        bound = spec.null_rate_overrides.get(feature, spec.max_null_rate)
        checks.append(at_most(f"null_rate[{feature}]", float(frame[feature].isna().mean()), bound))
    if "request_unix" in frame:
        clocks = [c for c in frame.columns if c.endswith("_unix") and c != "request_unix"]
        event = pd.to_numeric(frame["request_unix"], errors="coerce")
        late = sum(int((pd.to_numeric(frame[c], errors="coerce") > event).sum()) for c in clocks)
        checks.append(at_most("feature_after_event_rows", float(late), 0.0, f"clocks checked: {', '.join(clocks)}"))
    return Verdict("training-set quality", tuple(checks))


# --- the training set's label, for regression ---------------------------------------------------------


def regression_label_checks(
    frame: pd.DataFrame, features: list[str], label: str, spec: QualitySpec
) -> list[CheckResult]:
    """The regression counterpart of the training set's label-rate and single-feature-leak checks
    (``check_training_set`` runs those for classification):

    - ``label_numeric``: every label is a finite number (a missing or text label cannot be learnt);
    - ``label_distinct_values``: at least two values (a constant label leaves nothing to learn);
    - ``max_single_feature_spearman``: no feature alone ranks the label almost perfectly (|Spearman
      ρ| above ``spec.max_single_feature_spearman``): a leak — the label, or something computed after
      it. Rank correlation, so a monotone transform of the label is caught as well as a copy.
      Computed on at most 200k rows (a seeded sample): a leak shows as clearly there."""
    if label not in frame:
        return [CheckResult("label_present", None, None, ">=", False, f"no column {label!r} in the training set")]
    y = pd.to_numeric(frame[label], errors="coerce").to_numpy(dtype=float)
    bad = int((~np.isfinite(y)).sum())
    why = f"{bad:,} of {len(y):,} rows have a missing or non-numeric label" if bad else "every label is a number"
    checks = [at_most("label_numeric", float(bad), 0.0, why)]
    finite = y[np.isfinite(y)]
    distinct = len(np.unique(finite))
    spread = f"mean {finite.mean():.4g}, sd {finite.std():.4g}" if len(finite) else "no labels"
    checks.append(at_least("label_distinct_values", float(distinct), 2.0, spread))
    if distinct < 2:
        return checks
    present = [f for f in features if f in frame]
    rows = frame.take(_leak_sample(len(frame)))
    target = pd.to_numeric(rows[label], errors="coerce")
    rho: dict[str, float] = {}
    for feature in present:
        values = pd.to_numeric(rows[feature], errors="coerce")
        known = values.notna() & target.notna()
        if known.sum() > 10 and values[known].nunique() > 1:
            value = values[known].corr(target[known], method="spearman")
            if np.isfinite(value):
                rho[feature] = abs(float(value))
    checks.append(_strongest_alone("max_single_feature_spearman", rho, spec.max_single_feature_spearman, 0.0))
    return checks
