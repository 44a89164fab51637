"""Reading a user's table and inferring a data contract from it: the first step of making a project.

Three steps, each usable alone:

* :func:`read_table` reads parquet or CSV and nothing more (CSV timestamps stay text here: parsing
  them is a decision :func:`check_table` makes with the column's role in hand).
* :func:`check_table` checks that the table can carry the lifecycle at all (the named columns exist,
  the event time parses on one clock, the label fits the task, one row per entity key and time,
  column names Feast and SQL accept) and describes it as a :class:`TableSpec`. Every problem is a
  :class:`TableError` that names the column and the fix, raised before anything is written: the
  caller writes a project only after this has passed.
* :func:`infer_contract` describes every column (kind, dtype, null rate, range, category set) and
  turns that description into a pandera schema the same table passes, plus a YAML text the user
  reads and tightens. :func:`contract_from_yaml` builds the schema back from that text, through the
  same code path, so the file on disk *is* the contract rather than a report about it.

The contract is about broken data (a unit change, a sign flip, a new code from a renamed upstream
field, a join that stopped matching), not about drift: bounds are the observed extremes widened by
a margin, so the table the contract was inferred from always passes and ordinary shifts inside the
observed range are left to drift monitoring.
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa
import yaml

Task = Literal["classification", "regression"]
Kind = Literal["numeric", "categorical", "boolean", "timestamp", "identifier"]
KINDS: tuple[str, ...] = ("numeric", "categorical", "boolean", "timestamp", "identifier")
TASKS: tuple[str, ...] = ("classification", "regression")

TZ_DTYPE = pd.DatetimeTZDtype("ns", "UTC")
# Feast entities, features and the offline store's SQL all take plain identifiers.
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# DuckDB's reserved keywords (``duckdb_keywords()`` where category = 'reserved', DuckDB 1.x): the
# offline store's SQL cannot use them unquoted, and Postgres reserves nearly the same set. ``user``
# is reserved by Postgres (the registry and prediction logs) though not by DuckDB.
_SQL_RESERVED_WORDS = (
    "all analyse analyze and any array as asc asymmetric both case cast check collate column constraint create "
    "default deferrable desc describe distinct do else end except false fetch for foreign from group having in "
    "initially intersect into lambda lateral leading limit not null offset on only or order pivot pivot_longer "
    "pivot_wider placing primary qualify references returning select show some summarize symmetric table then to "
    "trailing true union unique unpivot user using variadic when where window with"
)
SQL_RESERVED = frozenset(_SQL_RESERVED_WORDS.split())
# Names Feast gives its own columns: the entity frame's event time, and the placeholder entity of an
# entity-less feature view. A user column of that name would be overwritten in a join.
FEAST_RESERVED = frozenset({"event_timestamp", "__dummy", "__dummy_id"})

MIN_ROWS = 200
MAX_CATEGORIES = 50
# A category set is a contract only if the table saw every value several times: at least this many
# rows per distinct value on average, else the column is an identifier or free text.
MIN_ROWS_PER_CATEGORY = 10
NULL_MARGIN = 0.05
RANGE_MARGIN = 0.10
POSITIVE_WORDS = frozenset({"1", "1.0", "true", "t", "yes", "y", "positive", "pos"})
# The start of an ISO 8601 date: how a text column is recognised as timestamps without being named.
_ISO_DATE = r"^\s*\d{4}-\d{2}-\d{2}"


class TableError(ValueError):
    """A table ``init`` cannot use: the message names the column (when there is one) and the fix."""

    def __init__(self, message: str, column: str | None = None, fix: str = "") -> None:
        super().__init__(f"{message}. Fix: {fix}" if fix else message)
        self.column = column
        self.fix = fix


# --------------------------------------------------------------------------------------- reading


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a parquet or CSV table by its suffix; nothing is parsed beyond what the format carries.

    CSV timestamps stay text: whether a column is a timestamp, and which clock it is on, is decided
    by :func:`check_table`, which knows the column's role and can say what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(f"no table at {path}", fix="give the path of an existing .parquet or .csv file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix == ".csv":
            frame = pd.read_csv(path)
        else:
            raise TableError(
                f"cannot read {path.name}: unsupported file type '{path.suffix}'",
                fix="save the table as .parquet (keeps types and time zones) or .csv",
            )
    except pd.errors.EmptyDataError as exc:
        raise TableError(f"{path.name} is empty", fix="give a table with a header and rows") from exc
    if frame.empty:
        raise TableError(f"{path.name} has no rows", fix="give a table with at least one row per event")
    return frame


# --------------------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class TableSpec:
    """What :func:`check_table` found: the roles of the named columns and how to read the table.

    ``timestamp_columns`` are every column read as a timestamp (the event time, the label's arrival
    time, and text columns that are ISO dates throughout). ``label_values`` is ``(negative,
    positive)`` for classification and empty for regression. ``notes`` are the decisions taken on
    the user's behalf (a naive clock taken as UTC, a positive class chosen), to be shown to them.
    """

    timestamp: str
    label: str
    entities: tuple[str, ...]
    task: Task
    label_available_at: str | None
    rows: int
    columns: tuple[str, ...]
    timestamp_columns: tuple[str, ...]
    label_values: tuple[Any, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def features(self) -> tuple[str, ...]:
        """Columns that are neither keys, times nor the label: the candidates for features."""
        roles = {self.timestamp, self.label, *self.entities, *filter(None, [self.label_available_at])}
        return tuple(c for c in self.columns if c not in roles)

    @property
    def positive_label(self) -> Any:
        return self.label_values[1] if self.label_values else None


def _close_matches(name: str, columns: Iterable[str]) -> list[str]:
    """Columns a user probably meant: a case-insensitive match first, then difflib's near spellings."""
    columns = [str(c) for c in columns]
    lowered = {c.lower(): c for c in columns}
    exact = [lowered[name.lower()]] if name.lower() in lowered else []
    near = [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)]
    return list(dict.fromkeys(exact + near))


def _suggest_name(name: str) -> str:
    """A name Feast and SQL accept, as close to the original as possible."""
    out = re.sub(r"[^A-Za-z0-9_]+", "_", name.strip()).strip("_") or "column"
    if out[0].isdigit():
        out = f"c_{out}"
    if out.lower() in SQL_RESERVED or out.lower() in FEAST_RESERVED:
        out = f"{out.strip('_')}_value"
    return out


def _check_names(columns: Sequence[str], timestamp: str) -> None:
    """Every column must be usable as a Feast field and an unquoted SQL identifier.

    All columns, not only the named ones: ``init`` makes every other column a feature.
    """
    for col in columns:
        if not isinstance(col, str):
            raise TableError(f"column {col!r} has a non-text name", str(col), f"rename it, e.g. to 'c_{col}'")
        fix = f"rename it, e.g. to '{_suggest_name(col)}'"
        if not NAME_PATTERN.match(col):
            raise TableError(
                f"column '{col}' is not a name Feast and SQL can use (letters, digits and _ only, not starting "
                "with a digit)",
                col,
                fix,
            )
        if col.lower() in SQL_RESERVED:
            raise TableError(f"column '{col}' is a reserved word in SQL", col, fix)
        if col in FEAST_RESERVED and col != timestamp:
            raise TableError(f"column '{col}' clashes with a column Feast adds itself", col, fix)
    seen: dict[str, str] = {}
    for col in columns:
        other = seen.setdefault(col.lower(), col)
        if other != col:
            raise TableError(
                f"columns '{other}' and '{col}' differ only in case, and SQL does not tell them apart",
                col,
                f"rename one of them, e.g. '{col}' to '{col}_2'",
            )
    dupes = sorted({c for c in columns if list(columns).count(c) > 1})
    if dupes:
        raise TableError(f"column '{dupes[0]}' appears more than once", dupes[0], "give every column its own name")


def _zone_of(tail: str) -> str | None:
    """The UTC offset a timestamp's text ends with (normalised to ±HH:MM), or None for a naive one."""
    tail = tail.rstrip()
    if tail.endswith(("Z", "z", "UTC")):
        return "+00:00"
    # A naive date's tail (-MM-DD) has no four digits after its sign, so it is not read as an offset.
    if m := re.search(r"([+-])(\d{2}):?(\d{2})$", tail):
        return f"{m[1]}{m[2]}:{m[3]}"
    if m := re.search(r":\d{2}([+-])(\d{2})$", tail):
        return f"{m[1]}{m[2]}:00"
    return None


def _parse_timestamps(series: pd.Series, column: str, *, allow_null: bool) -> tuple[pd.Series, str]:
    """Read a column as instants in UTC, or say which values stop it and how to fix them.

    Returns the parsed column and a note (empty when nothing was assumed). Naive values are taken as
    UTC (the usual meaning of an export's clock) and noted; a mix of offsets, or of naive and
    offset values, is refused: each row may well be an unambiguous instant, but a table whose rows
    were written on different clocks is usually two sources stitched together, and the monitoring
    calendar needs one clock.
    """
    fix_utc = (
        f"convert '{column}' to UTC before init (e.g. pd.to_datetime(df['{column}'], utc=True)) and write it as UTC"
    )
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        parsed, note = series.dt.tz_convert("UTC"), ""
    elif pd.api.types.is_datetime64_dtype(series.dtype):
        parsed, note = series.dt.tz_localize("UTC"), f"'{column}' has no time zone: taken as UTC"
    elif pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
        raise TableError(
            f"column '{column}' holds numbers ({series.dtype}), not timestamps",
            column,
            f"convert it to timestamps first, e.g. pd.to_datetime(df['{column}'], unit='s', utc=True) for Unix seconds",
        )
    else:
        parsed = pd.to_datetime(series, utc=True, format="ISO8601", errors="coerce")
        bad = series.notna() & parsed.isna()
        if bad.any():
            # Not ISO 8601 throughout: accept one consistent other format pandas can infer, or name the rows.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "could not infer format": answered below
                inferred = pd.to_datetime(series, utc=True, errors="coerce")
            if (series.notna() & inferred.isna()).any():
                examples = ", ".join(repr(v) for v in series[bad].drop_duplicates().head(3))
                raise TableError(
                    f"column '{column}': {int(bad.sum())} of {int(series.notna().sum())} values do not parse as "
                    f"timestamps (e.g. {examples})",
                    column,
                    "write them as ISO 8601 (e.g. 2024-03-01T12:00:00Z), or remove or repair those rows",
                )
            parsed = inferred
        # Parsed with utc=True, every value is an instant; whether they were written on one clock is
        # read from the text's ends (the last 6 characters hold any offset: fast on a million rows).
        text = series.dropna().astype(str)
        zones = {_zone_of(t) for t in text.str[-6:].unique()}
        if len(zones) > 1:
            offsets = sorted(z for z in zones if z)
            what = (
                "some values carry a UTC offset and some do not"
                if None in zones
                else f"values are on {len(offsets)} different UTC offsets ({', '.join(offsets[:4])})"
            )
            raise TableError(f"column '{column}' mixes time zones: {what}", column, fix_utc)
        note = f"'{column}' has no time zone: taken as UTC" if zones == {None} else ""
    parsed = parsed.dt.as_unit("ns")
    if not allow_null and parsed.isna().any():
        raise TableError(
            f"column '{column}': {int(parsed.isna().sum())} rows have no timestamp",
            column,
            "give every row its event time, or drop the rows without one",
        )
    return parsed, note


def _looks_like_timestamps(series: pd.Series) -> bool:
    """A column read as timestamps without being named: a datetime dtype, or ISO dates throughout."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return True
    if not (series.dtype == object or pd.api.types.is_string_dtype(series.dtype)):
        return False
    values = series.dropna()
    if values.empty or not values.map(lambda v: isinstance(v, str)).all():
        return False
    return bool(values.str.match(_ISO_DATE).all())


def _check_label(series: pd.Series, column: str, task: Task) -> tuple[tuple[Any, ...], list[str]]:
    """The label fits the task; returns (negative, positive) for classification and notes."""
    values = series.dropna()
    if values.empty:
        raise TableError(f"label '{column}' has no values", column, "give the label for the rows that have one")
    notes = []
    if series.isna().any():
        notes.append(f"label '{column}' is missing on {series.isna().mean():.1%} of rows (not yet known?)")
    if task == "regression":
        if pd.api.types.is_bool_dtype(series.dtype) or values.map(lambda v: isinstance(v, bool | np.bool_)).all():
            raise TableError(
                f"label '{column}' is true/false, not a quantity",
                column,
                "use --task classification for a yes/no label",
            )
        if not pd.api.types.is_numeric_dtype(series.dtype):
            numbers = pd.to_numeric(values, errors="coerce")
            if numbers.isna().any():
                examples = ", ".join(repr(v) for v in values[numbers.isna()].drop_duplicates().head(3))
                raise TableError(
                    f"label '{column}' must be numeric for regression, but {int(numbers.isna().sum())} values are "
                    f"text (e.g. {examples})",
                    column,
                    "repair those values, or use --task classification if the label is a class",
                )
            notes.append(f"label '{column}' is numbers written as text: read as numbers")
        return (), notes
    distinct = list(pd.unique(values))
    if len(distinct) == 1:
        raise TableError(
            f"label '{column}' has one value only ({distinct[0]!r}): a classifier needs both classes",
            column,
            "use a table (or a longer period) that has examples of both outcomes",
        )
    if len(distinct) > 2:
        shown = ", ".join(repr(_py(v)) for v in sorted(distinct, key=str)[:5])
        raise TableError(
            f"label '{column}' has {len(distinct)} distinct values ({shown}{', …' if len(distinct) > 5 else ''}), "
            "but classification here is binary",
            column,
            f"map it to 0/1 (e.g. df['{column}'] = (df['{column}'] == <positive value>).astype(int)), "
            "or use --task regression if it is a quantity",
        )
    low, high = sorted((_py(v) for v in distinct), key=lambda v: (str(type(v)), v))
    if pd.api.types.is_bool_dtype(series.dtype):
        return (False, True), notes
    if {low, high} == {0, 1}:
        return (0, 1), notes
    positives = [v for v in (low, high) if str(v).lower() in POSITIVE_WORDS]
    if len(positives) == 1:
        positive = positives[0]
        why = "it reads as yes/true"
    else:
        counts = values.map(_py).value_counts()
        positive = counts.idxmin() if counts.iloc[0] != counts.iloc[-1] else high
        why = "it is the rarer one, the event a model usually looks for"
    negative = low if positive == high else high
    notes.append(
        f"label '{column}' has the two values {negative!r} and {positive!r}: {positive!r} is taken as the positive "
        f"class because {why}; map the label to 0/1 to choose otherwise"
    )
    return (negative, positive), notes


def check_table(
    frame: pd.DataFrame,
    timestamp: str,
    label: str,
    entities: Sequence[str] = (),
    task: str = "classification",
    label_available_at: str | None = None,
    *,
    min_rows: int = MIN_ROWS,
) -> TableSpec:
    """Check that ``frame`` can be made a project, and describe it; raise :class:`TableError` if not.

    Reads only: the frame is not modified and nothing is written, so a caller that writes a project
    after this returns writes nothing for a bad table. The first problem found is raised, in the
    order a user would fix them (a missing column before a value inside it).
    """
    entities = tuple(entities)
    if frame.empty:
        raise TableError("the table has no rows", fix="give a table with at least one row per event")
    if task not in TASKS:
        raise TableError(f"unknown task '{task}'", fix=f"use one of: {', '.join(TASKS)}")
    named = [("timestamp", timestamp), ("label", label)] + [("entity", e) for e in entities]
    if label_available_at:
        named.append(("label-available-at", label_available_at))
    columns = [str(c) for c in frame.columns]
    for role, col in named:
        if col not in frame.columns:
            matches = _close_matches(col, columns)
            hint = f"did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""
            raise TableError(
                f"the {role} column '{col}' is not in the table" + (f"; {hint}" if hint else ""),
                col,
                f"name one of the table's columns ({', '.join(columns[:12])}{', …' if len(columns) > 12 else ''})",
            )
    names = [c for _, c in named]
    for col in names:
        if names.count(col) > 1:
            raise TableError(f"column '{col}' is named for more than one role", col, "give each role its own column")
    _check_names(list(frame.columns), timestamp)
    for col in entities:
        missing = frame[col].isna()
        if missing.any():
            raise TableError(
                f"entity key '{col}' is missing on {int(missing.sum())} rows",
                col,
                "drop those rows or fill the key: a row without its key cannot be looked up or joined",
            )
    if len(frame) < min_rows:
        raise TableError(
            f"the table has {len(frame)} rows; at least {min_rows} are needed to train, validate and test a model",
            fix="give a longer period or more entities",
        )

    notes: list[str] = []
    parsed = {}
    parsed[timestamp], note = _parse_timestamps(frame[timestamp], timestamp, allow_null=False)
    notes += [note] if note else []
    if label_available_at:
        parsed[label_available_at], note = _parse_timestamps(
            frame[label_available_at], label_available_at, allow_null=True
        )
        notes += [note] if note else []
        early = parsed[label_available_at] < parsed[timestamp]
        if early.any():
            first = early.idxmax()
            raise TableError(
                f"column '{label_available_at}': {int(early.sum())} rows have their label before the event (e.g. "
                f"row {first}: label at {parsed[label_available_at][first]}, event at {parsed[timestamp][first]})",
                label_available_at,
                f"a label becomes known at or after its event: repair those rows, or check that '{timestamp}' and "
                f"'{label_available_at}' are on the same clock",
            )
    for col in columns:
        if col not in parsed and col not in (label, *entities) and _looks_like_timestamps(frame[col]):
            parsed[col], note = _parse_timestamps(frame[col], col, allow_null=True)
            notes += [note] if note else []

    label_values, label_notes = _check_label(frame[label], label, task)  # type: ignore[arg-type]
    notes += label_notes

    if entities:
        keys = frame[list(entities)].assign(**{timestamp: parsed[timestamp]})
        dup = keys.duplicated(keep=False)
        if dup.any():
            first = keys[dup].iloc[0]
            example = ", ".join(f"{k}={_py(v)!r}" for k, v in first.items())
            groups = int(keys[dup].drop_duplicates().shape[0])
            raise TableError(
                f"{int(dup.sum())} rows share their entity key and time with another row ({groups} keys, e.g. "
                f"{example}): Feast keeps one row per key and time, so the others would be lost",
                timestamp,
                "aggregate them into one row per key and time, or add the column that tells them apart as "
                "another --entity",
            )

    return TableSpec(
        timestamp=timestamp,
        label=label,
        entities=entities,
        task=task,  # type: ignore[arg-type]
        label_available_at=label_available_at,
        rows=len(frame),
        columns=tuple(columns),
        timestamp_columns=tuple(parsed),
        label_values=label_values,
        notes=tuple(notes),
    )


def prepare_table(frame: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """The table in the representation its contract checks: timestamps as UTC instants (ns), a
    regression label as float. Representation only (like the normalising step in :mod:`mlcycle.validation`):
    no value changes, so the contract still sees what the user's data holds."""
    out = frame.copy()
    for col in spec.timestamp_columns:
        out[col], _ = _parse_timestamps(out[col], col, allow_null=col != spec.timestamp)
    if spec.task == "regression" and not pd.api.types.is_numeric_dtype(out[spec.label].dtype):
        out[spec.label] = pd.to_numeric(out[spec.label], errors="coerce")
    return out


# --------------------------------------------------------------------------------------- inferring


@dataclass(frozen=True)
class ColumnContract:
    """One column's rule, and what it was inferred from.

    The rule (``kind``, ``dtype``, ``max_null_rate``, ``min``, ``max``, ``values``) is what the schema
    checks and what the YAML carries; the ``observed_*`` fields and ``note`` are the evidence, shown
    in the YAML's comments for the user to judge.
    """

    name: str
    kind: Kind
    role: str = "feature"
    dtype: str | None = None
    max_null_rate: float = 0.0
    min: float | None = None
    max: float | None = None
    values: tuple[Any, ...] | None = None
    observed_dtype: str = ""
    observed_null_rate: float = 0.0
    observed_min: float | None = None
    observed_max: float | None = None
    distinct: int = 0
    note: str = ""

    @property
    def flagged(self) -> bool:
        """An identifier or free text that is not a key: a person should say whether it is a feature."""
        return self.kind == "identifier" and self.role != "entity"


@dataclass(frozen=True)
class InferredContract:
    """The inferred contract: per-column rules, the pandera schema, and its YAML text."""

    name: str
    rows: int
    columns: tuple[ColumnContract, ...]
    unique: tuple[str, ...]
    schema: pa.DataFrameSchema
    yaml: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def column(self, name: str) -> ColumnContract:
        return next(c for c in self.columns if c.name == name)

    @property
    def flagged(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.flagged)


def _py(value: Any) -> Any:
    """numpy scalars → Python ones, for YAML and for readable messages."""
    return value.item() if isinstance(value, np.generic) else value


def _ceil(x: float, digits: int) -> float:
    """Round up to ``digits`` decimals, ignoring float noise (0.07 must not become 0.0701)."""
    return math.ceil(round(x * 10**digits, 6)) / 10**digits


def _widen(lo: float, hi: float, margin: float) -> tuple[float, float]:
    """Observed [lo, hi] widened by ``margin`` × span on each side, rounded outward to 3 significant
    digits of the span so the YAML reads 0 … 110 rather than -0.0123 … 109.98765."""
    span = hi - lo if hi > lo else (abs(hi) or 1.0)
    low, high = lo - margin * span, hi + margin * span
    if lo >= 0:
        # No negative value in the table: non-negativity is usually meaning (counts, prices, durations),
        # not an accident of the sample, so the margin does not open the door to negatives.
        low = max(0.0, low)
    digits = 2 - math.floor(math.log10(span))
    step = 10.0**-digits
    low_r, high_r = math.floor(low / step) * step, math.ceil(high / step) * step
    return (round(low_r, max(digits, 0)), round(high_r, max(digits, 0)))


def _kind(series: pd.Series, role: str, max_categories: int) -> tuple[Kind, str]:
    """A column's kind, and a note when the kind is a judgement a person should look at."""
    values = series.dropna()
    if role == "entity":
        return "identifier", "entity key: checked for presence and type, not for a range or a set"
    if role == "event_id":
        # Ids grow with time: a range observed today would reject tomorrow's rows.
        return "identifier", "event id: joins a later label to its prediction; checked for presence and type only"
    if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(series.dtype):
        return "timestamp", ""
    if pd.api.types.is_bool_dtype(series.dtype) or (
        not values.empty and values.map(lambda v: isinstance(v, bool | np.bool_)).all()
    ):
        return "boolean", ""
    if pd.api.types.is_numeric_dtype(series.dtype):
        return "numeric", ""
    distinct = values.nunique()
    if distinct <= max_categories and distinct * MIN_ROWS_PER_CATEGORY <= len(values):
        return "categorical", ""
    return "identifier", (
        f"flagged: {distinct} distinct values in {len(values)} rows — an identifier or free text, not a category "
        "set; decide whether it is a feature"
    )


def _infer_column(
    name: str, original: pd.Series, series: pd.Series, role: str, null_margin: float, range_margin: float, **kw: Any
) -> ColumnContract:
    kind, note = _kind(series, role, kw["max_categories"])
    if role == "label" and kw["label_values"]:
        kind, note = "categorical", "the label's two classes"
    observed_null = float(series.isna().mean())
    # No null in the table → declared non-null: with n rows, 0 nulls bounds the true rate below 3/n
    # (rule of three), and a margin there would hide the broken join a non-null column exists to catch.
    allowed = 0.0 if observed_null == 0 else min(1.0, _ceil(observed_null + null_margin, 4))
    if role in ("entity", "timestamp", "event_id"):
        allowed = 0.0
    values = series.dropna()
    common = dict(
        name=name,
        kind=kind,
        role=role,
        max_null_rate=allowed,
        observed_dtype=str(original.dtype),
        observed_null_rate=observed_null,
        distinct=int(values.nunique()),
        note=note,
    )
    if kind == "numeric":
        finite = values[np.isfinite(values.astype(float))].astype(float)
        if finite.empty:
            return ColumnContract(dtype="float64", **{**common, "note": "no finite value: no range"})
        lo, hi = float(finite.min()), float(finite.max())
        low, high = _widen(lo, hi, range_margin)
        if len(finite) < len(values):  # ±inf in the table: that side stays open, or the table would fail
            low = None if values.min() == -np.inf else low
            high = None if values.max() == np.inf else high
        return ColumnContract(dtype="float64", min=low, max=high, observed_min=lo, observed_max=hi, **common)
    if kind == "categorical":
        seen = kw["label_values"] if role == "label" and kw["label_values"] else pd.unique(values)
        ordered = tuple(sorted((_py(v) for v in seen), key=lambda v: (str(type(v)), v)))
        return ColumnContract(values=ordered, **common)
    if kind == "timestamp":
        return ColumnContract(dtype=str(TZ_DTYPE), **common)
    if kind == "identifier" and pd.api.types.is_integer_dtype(series.dtype):
        return ColumnContract(dtype="int64", **common)
    return ColumnContract(**common)


def infer_contract(
    frame: pd.DataFrame,
    spec: TableSpec,
    *,
    name: str = "table",
    null_margin: float = NULL_MARGIN,
    range_margin: float = RANGE_MARGIN,
    max_categories: int = MAX_CATEGORIES,
    event_id: str | None = None,
) -> InferredContract:
    """Infer each column's rule from ``frame`` (checked by :func:`check_table` into ``spec``).

    Ranges are the observed min/max widened by ``range_margin`` of the span, not quantiles: a
    quantile bound rejects its own training table (0.1% of rows lie beyond a 99.9% quantile), so
    the contract would raise false alarms from day one, and a shift inside the range is drift, which
    monitoring measures with the distributions at hand. The contract catches what is broken. The
    schema checks :func:`prepare_table`'s representation of a table; ``frame`` itself is not changed.
    ``event_id`` names the row id column: an identifier, never null, with no range (ids grow).
    """
    prepared = prepare_table(frame, spec)
    roles = {c: "feature" for c in spec.columns}
    roles.update({e: "entity" for e in spec.entities})
    roles[spec.timestamp] = "timestamp"
    roles[spec.label] = "label"
    if spec.label_available_at:
        roles[spec.label_available_at] = "label_available_at"
    if event_id:
        if roles.get(event_id, "feature") != "feature":
            raise TableError(
                f"column '{event_id}' is the {roles[event_id]} and cannot also be the event id",
                event_id,
                "name a column that identifies each row",
            )
        roles[event_id] = "event_id"
    columns = tuple(
        _infer_column(
            col,
            frame[col],
            prepared[col],
            roles[col],
            null_margin,
            range_margin,
            max_categories=max_categories,
            label_values=spec.label_values,
        )
        for col in spec.columns
    )
    unique = (*spec.entities, spec.timestamp) if spec.entities else ()
    text = contract_to_yaml(
        columns, unique, name=name, rows=len(frame), null_margin=null_margin, range_margin=range_margin
    )
    return InferredContract(
        name=name,
        rows=len(frame),
        columns=columns,
        unique=unique,
        schema=build_schema(columns, unique, name),
        yaml=text,
        notes=spec.notes,
    )


# --------------------------------------------------------------------------------------- the schema


def _one_of(values: Iterable[Any], name: str) -> pa.Check:
    """A membership check under a stable name (as in :mod:`mlcycle.validation`: pandera's ``isin``
    names itself by the whole value list); ``statistics`` keeps the set for comparison and reports."""
    allowed = list(values)
    return pa.Check(lambda s: s.isin(allowed), name=name, statistics={"values": allowed})


def _max_null_rate(rate: float) -> pa.Check:
    """pandera's ``nullable`` is all or nothing; a tolerance needs a check that sees the nulls."""
    return pa.Check(
        lambda s: bool(s.isna().mean() <= rate), name="max_null_rate", ignore_na=False, statistics={"max": rate}
    )


def build_schema(
    columns: Sequence[ColumnContract], unique: Sequence[str] = (), name: str = "table"
) -> pa.DataFrameSchema:
    """The pandera schema for column rules. The one place rules become checks: the inferred
    contract and :func:`contract_from_yaml` both come through here, so they check the same things."""
    out = {}
    for col in columns:
        checks: list[pa.Check] = []
        if col.min is not None:
            checks.append(pa.Check.ge(col.min))
        if col.max is not None:
            checks.append(pa.Check.le(col.max))
        if col.values is not None:
            checks.append(_one_of(col.values, "known_values"))
        if col.kind == "boolean":
            checks.append(_one_of([True, False], "boolean"))
        if 0 < col.max_null_rate < 1:
            checks.append(_max_null_rate(col.max_null_rate))
        out[col.name] = pa.Column(
            pd.api.types.pandas_dtype(col.dtype) if col.dtype else None,
            checks,
            nullable=col.max_null_rate > 0,
            # Numbers are checked as float64: an integer column that gains a null becomes float in
            # pandas, and the contract is about values, not pandas' storage of them.
            coerce=col.kind == "numeric",
            name=col.name,
        )
    return pa.DataFrameSchema(
        out,
        unique=list(unique) or None,
        report_duplicates="all",
        strict=False,
        name=name,
    )


# --------------------------------------------------------------------------------------- YAML

_RULE_KEYS = ("kind", "role", "dtype", "max_null_rate", "min", "max", "values")


def _y(value: Any) -> str:
    """One YAML scalar or flow list, quoted where YAML would misread it ('yes', '1', 'null')."""
    return yaml.safe_dump(_py(value), default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.6g}"


def contract_to_yaml(
    columns: Sequence[ColumnContract],
    unique: Sequence[str] = (),
    *,
    name: str = "table",
    rows: int = 0,
    null_margin: float = NULL_MARGIN,
    range_margin: float = RANGE_MARGIN,
) -> str:
    """The contract as YAML for a person: one block per column, each bound with a comment saying
    what it came from. Written by hand because YAML libraries do not write comments."""
    lines = [
        f"# Data contract inferred by mlcycle from a table of {rows} rows.",
        "# Every bound below was taken from that table with a margin; the comment beside it says from what.",
        "# Tighten them to what you know to be true; delete a line to drop that check.",
        f"#   max_null_rate: the observed null rate + {null_margin} (at most 1); no null seen -> 0 (non-null).",
        f"#   min / max: the observed min / max widened by {range_margin:.0%} of the observed span",
        "#              (not below 0 when no value was negative).",
        "#   values: every value seen, for text columns with few distinct values.",
        f"name: {_y(name)}",
    ]
    if unique:
        lines.append(f"unique: {_y(list(unique))}  # one row per entity key and event time")
    lines.append("columns:")
    for col in columns:
        lines.append(f"  {_y(col.name)}:")
        lines.append(f"    kind: {col.kind}" + (f"  # {col.note}" if col.note else ""))
        lines.append(f"    role: {col.role}")
        if col.dtype:
            why = {"numeric": "coerced: integers and floats alike", "timestamp": "read as instants in UTC"}.get(
                col.kind, "as read"
            )
            lines.append(f"    dtype: {_y(col.dtype)}  # observed {col.observed_dtype}; {why}")
        if col.observed_null_rate == 0:
            seen = f"no null in {rows} rows"
        else:
            seen = f"observed {col.observed_null_rate:.4f}"
            seen += (
                f" + margin {null_margin}"
                if col.role not in ("entity", "timestamp")
                else ", but this role is never null"
            )
        lines.append(f"    max_null_rate: {_y(col.max_null_rate)}  # {seen}")
        span = (col.observed_max or 0) - (col.observed_min or 0)
        if col.min is not None:
            lines.append(
                f"    min: {_y(col.min)}  # observed min {_fmt(col.observed_min)} - {range_margin:.0%} of span "
                f"{_fmt(span)}" + (", not below 0" if col.min == 0 and (col.observed_min or 0) >= 0 else "")
            )
        if col.max is not None:
            lines.append(
                f"    max: {_y(col.max)}  # observed max {_fmt(col.observed_max)} + {range_margin:.0%} of span "
                f"{_fmt(span)}"
            )
        if col.values is not None:
            lines.append(f"    values: {_y(list(col.values))}  # {len(col.values)} values seen")
    return "\n".join(lines) + "\n"


def contract_from_yaml(text: str) -> pa.DataFrameSchema:
    """Build the schema from the contract's YAML (as written by :func:`contract_to_yaml`, then
    perhaps tightened by hand). Unknown keys and kinds are errors naming the column: a misspelt
    bound silently ignored would be a check the user believes in and does not have."""
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict) or not isinstance(raw.get("columns"), dict):
        raise ValueError("a contract needs a 'columns:' mapping, one entry per column")
    columns = []
    for col_name, entry in raw["columns"].items():
        entry = entry or {}
        unknown = sorted(set(entry) - set(_RULE_KEYS))
        if unknown:
            raise ValueError(
                f"contract column '{col_name}': unknown key(s) {', '.join(unknown)} (known: {', '.join(_RULE_KEYS)})"
            )
        kind = entry.get("kind")
        if kind not in KINDS:
            raise ValueError(f"contract column '{col_name}': kind must be one of {', '.join(KINDS)}, not {kind!r}")
        values = entry.get("values")
        columns.append(
            ColumnContract(
                name=str(col_name),
                kind=kind,
                role=entry.get("role", "feature"),
                dtype=entry.get("dtype"),
                max_null_rate=float(entry.get("max_null_rate", 0.0)),
                min=entry.get("min"),
                max=entry.get("max"),
                values=tuple(values) if values is not None else None,
            )
        )
    return build_schema(columns, raw.get("unique") or (), raw.get("name", "table"))
