"""``mlcycle init``: a runnable project from one table.

:func:`init_project` reads a parquet or CSV table, checks it can carry the lifecycle
(:func:`mlcycle.contract_inference.check_table`), infers its data contract, decides what each column
is for, and writes a project directory that every command runs in without an edit:

- ``mlcycle.yaml``: the table's columns by role, the declared per-entity aggregations, the model,
  and gates / monitoring / canary defaults fitted to the task and the table's size and pace, with
  comments saying why;
- ``contract.yaml``: the inferred pandera contract, for the user to read and tighten;
- ``data/raw/<table>.parquet``: the table itself, timestamps as UTC microseconds (``data/`` is
  git-ignored);
- ``feature_repo/``: ``feature_store.yaml`` (and the ``scale`` profile's), and ``features.py``: the
  entities, one FeatureView of declared aggregations per entity (with the entity's last-event clock),
  a RequestSource of the event's own fields, an on-demand view that turns them (and the clocks) into
  model inputs, and the FeatureService;
- ``prefect.yaml``: the deployments of mlcycle's Prefect flows (those of the reference project, named
  for this one), whose entrypoints are module paths into the installed package (``mlcycle.flows.*``),
  never a copy, so a newer mlcycle fixes every project; ``prefect deploy --all`` runs from the
  project directory;
- ``README.md``: what was inferred, what was left out, the commands in order.

Which column becomes what: the event time, the label, its arrival time, the entity keys, the event
id and the protected attribute are never model inputs. Every other column comes in the request and
reaches the model through the on-demand view: a number as ``<col>_value`` (float), a yes/no as
``<col>_value`` (1.0 / 0.0), a category as ``<col>_code`` (its index in the contract's sorted set;
-1 for a missing or unknown value). Identifier-like text, timestamps and columns with no usable
value are left out and listed. With entity keys, each entity gets counts of its events over the
windows the table's span supports and the mean of the first numeric fields over the two longest,
computed point in time by the declarative engine (``features.aggregations``), and the seconds since
its last earlier event (``<table>_secs_since_last``, NaN for its first).

Nothing is written for a bad table or bad arguments: the project is assembled in a temporary
directory beside the target, validated (``load_config`` must accept it), then moved into place.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mlcycle.project.contract_inference import (
    MAX_CATEGORIES,
    ColumnContract,
    InferredContract,
    TableError,
    TableSpec,
    _close_matches,
    check_table,
    infer_contract,
    prepare_table,
    read_table,
)

__all__ = ["InitError", "InitResult", "TableError", "TargetNotEmpty", "init_project", "project_name"]

CONFIG_NAME = "mlcycle.yaml"
CONTRACT_NAME = "contract.yaml"
FEATURE_REPO = "feature_repo"
FEATURES_FILE = "features.py"
# Candidate windows of the per-entity aggregations, shortest first.
WINDOWS: tuple[tuple[str, timedelta], ...] = (
    ("1h", timedelta(hours=1)),
    ("24h", timedelta(hours=24)),
    ("7d", timedelta(days=7)),
    ("30d", timedelta(days=30)),
)
MAX_AGGREGATIONS = 16  # per entity: enough to carry recency and volume, few enough to read
# A window no entity ever has two events within carries nothing: kept only if at least this share
# of events has an earlier event of the same entity inside it (the longest window is always kept).
MIN_WINDOW_SHARE = 0.01
MAX_PROTECTED_VALUES = 20  # the fairness gate compares groups: a protected attribute is a few groups
# Fields the serving layer adds to, or reads from, every request: a column of that name would clash.
REQUEST_RESERVED = frozenset({"request_unix", "timestamp", "request_id", "features_missing", "score"})
ID_NAME = re.compile(r"(^id$|_id$|^id_|uuid|guid)", re.IGNORECASE)
DEFAULT_LABEL_DELAY = "30d"
# The time column of every feature table `mlcycle features build` writes (the state after each event,
# stamped 1 µs later): the FileSources' timestamp_field. And the column it adds to each declared table:
# ``<table>_last_event_unix``, the entity's last event (Unix seconds), which the on-demand view turns into
# ``<table>_secs_since_last``. Both as mlcycle.features.transform writes them (a test holds them equal).
FEATURE_TIMESTAMP = "event_timestamp"
LAST_EVENT_SUFFIX = "_last_event_unix"
RECENCY_SUFFIX = "_secs_since_last"
PREFECT_FILE = "prefect.yaml"
FLOWS_DIR = "flows"  # a project's own flow files, if it keeps any (mlcycle.flows.load_flow prefers them)
# The package of mlcycle's generic flows, named as text: the project layer writes entrypoints into it
# and checks they are shipped, without importing it (it sits above this layer).
FLOWS_PACKAGE = "mlcycle.flows"


class InitError(ValueError):
    """Arguments or a target directory ``init`` cannot use: the message names what and the fix."""

    def __init__(self, message: str, column: str | None = None, fix: str = "") -> None:
        super().__init__(f"{message}. Fix: {fix}" if fix else message)
        self.column = column
        self.fix = fix


class TargetNotEmpty(InitError):
    """The target directory already holds files (and ``force`` was not given)."""


@dataclass(frozen=True)
class InitResult:
    """What ``init`` wrote and decided; ``notes`` are the decisions to show the user."""

    directory: Path
    project: str
    config: Path
    written: tuple[Path, ...]
    notes: tuple[str, ...]
    request_fields: tuple[str, ...]
    model_features: tuple[str, ...]
    left_out: dict[str, str] = field(default_factory=dict)
    aggregations: dict[str, tuple[str, ...]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ names


def project_name(text: str) -> str:
    """A project name every store accepts (Feast project, SQLite table, MLflow experiment, Python
    identifier prefix): lower case, letters, digits and underscores, not starting with a digit."""
    name = re.sub(r"[^a-z0-9]+", "_", text.strip().lower()).strip("_")
    if not name:
        return "project"
    return f"p_{name}" if name[0].isdigit() else name


def _table_name(path: Path) -> str:
    stem = path.name
    for suffix in (".parquet", ".pq", ".csv"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return project_name(stem) if stem else "events"


def _stem(entity: str) -> str:
    """``customer_id`` → ``customer``: the prefix of an entity's feature names."""
    stem = re.sub(r"(_id|_key|id)$", "", entity, flags=re.IGNORECASE)
    return stem if stem and re.match(r"^[A-Za-z_]", stem) else entity


# ------------------------------------------------------------------------------------------ plan


@dataclass
class _Plan:
    """What each column is for, decided from the table and its contract."""

    project: str
    table: str
    spec: TableSpec
    contract: InferredContract
    event_id: str | None
    protected: str | None
    label_delay: str
    numeric: list[str] = field(default_factory=list)
    boolean: list[str] = field(default_factory=list)
    categorical: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    entity_types: dict[str, str] = field(default_factory=dict)  # entity → INT64 | STRING
    aggregations: dict[str, dict] = field(default_factory=dict)  # table name → AggregationSpec dict
    windows: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    span: timedelta = timedelta(0)
    end: pd.Timestamp | None = None
    replay_since: pd.Timestamp | None = None  # a date with the latest tenth of the rows after it
    rows_per_day: float = 0.0
    positive_rate: float | None = None
    label_std: float | None = None

    @property
    def request_fields(self) -> list[str]:
        """The event's own attributes, as the request carries them (table order)."""
        wanted = {*self.numeric, *self.boolean, *self.categorical}
        return [c for c in self.spec.columns if c in wanted]

    def output_name(self, col: str) -> str:
        return f"{col}_code" if col in self.categorical else f"{col}_value"

    @property
    def odfv_outputs(self) -> list[str]:
        return [self.output_name(c) for c in self.request_fields]

    @property
    def aggregation_features(self) -> list[str]:
        return [a["name"] for spec in self.aggregations.values() for a in spec["aggregations"]]

    @property
    def recency(self) -> dict[str, str]:
        """Per aggregation table: its last-event column (a view feature, not a model input) → the
        seconds-since-last model input the on-demand view computes from it."""
        return {t + LAST_EVENT_SUFFIX: t + RECENCY_SUFFIX for t in self.aggregations}

    @property
    def model_features(self) -> list[str]:
        return self.aggregation_features + list(self.recency.values()) + self.odfv_outputs


def _require_column(frame: pd.DataFrame, col: str, role: str) -> None:
    if col not in frame.columns:
        matches = _close_matches(col, [str(c) for c in frame.columns])
        hint = f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""
        shown = ", ".join(str(c) for c in list(frame.columns)[:12])
        raise TableError(f"the {role} column '{col}' is not in the table{hint}", col, f"name one of: {shown}")


def _event_id(frame: pd.DataFrame, given: str | None, taken: set[str], notes: list[str]) -> str | None:
    """The given event id (checked: present, never missing, one value per row), or a column named
    like an id that is unique per row, or None."""
    if given:
        _require_column(frame, given, "event id")
        if given in taken:
            raise TableError(
                f"column '{given}' already has another role", given, "name a column that identifies each row"
            )
        col = frame[given]
        if col.isna().any():
            raise TableError(
                f"event id '{given}' is missing on {int(col.isna().sum())} rows", given,
                "give every row its id (it joins a later label back to the prediction), or leave --event-id out",
            )  # fmt: skip
        dup = col.duplicated(keep=False)
        if dup.any():
            raise TableError(
                f"event id '{given}' repeats: {int(dup.sum())} rows share an id with another row (e.g. "
                f"{col[dup].iloc[0]!r})", given,
                "name a column with one value per row, or leave --event-id out",
            )  # fmt: skip
        return given
    for col in frame.columns:
        if col in taken or col in REQUEST_RESERVED or not ID_NAME.search(str(col)):
            continue
        series = frame[col]
        if pd.api.types.is_float_dtype(series.dtype) or series.isna().any():
            continue
        if series.is_unique:
            notes.append(
                f"event id: '{col}' (unique per row, named like an id) identifies each row; requests carry it so "
                "a later label joins its prediction (set table.event_id to change)"
            )
            return str(col)
    notes.append(
        "no event id: no column is unique per row and named like an id, so a label that arrives later cannot be "
        "joined to a logged prediction by id: `mlcycle monitor` judges drift but reports performance decay as not "
        "measurable, and `mlcycle up` starts no event stream; add one and set table.event_id (or pass --event-id)"
    )
    return None


def _entity_type(frame: pd.DataFrame, entity: str) -> str:
    dtype = frame[entity].dtype
    if pd.api.types.is_integer_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        return "INT64"
    if pd.api.types.is_float_dtype(dtype) and np.all(np.mod(frame[entity].to_numpy(dtype=float), 1) == 0):
        return "INT64"  # integers read as floats (a CSV export): written back as integers
    return "STRING"


def _numeric_id(series: pd.Series, col: str, rule: ColumnContract) -> bool:
    """Whole numbers under an id-like name with many values: an identifier stored as a number."""
    if not ID_NAME.search(col) or rule.distinct <= MAX_CATEGORIES:
        return False
    values = series.dropna()
    if pd.api.types.is_integer_dtype(series.dtype):
        return True
    return bool(np.all(np.mod(values.to_numpy(dtype=float), 1) == 0))


def _not_reserved(col: str) -> None:
    """A column a request carries must not take the name of a field the serving layer sets or answers."""
    if col in REQUEST_RESERVED:
        raise TableError(
            f"column '{col}' has the name of a field the serving layer sets itself", col,
            f"rename it, e.g. to '{col}_value'",
        )  # fmt: skip


def _classify_columns(plan: _Plan, frame: pd.DataFrame) -> None:
    spec, contract = plan.spec, plan.contract
    roles = {spec.timestamp, spec.label, *spec.entities, *filter(None, [spec.label_available_at])}
    roles |= {c for c in (plan.event_id, plan.protected) if c}
    for col in spec.columns:
        if col in roles:
            continue
        rule: ColumnContract = contract.column(col)
        _not_reserved(col)
        if rule.observed_null_rate >= 1.0:
            plan.left_out[col] = "always missing"
        elif rule.kind == "numeric":
            if rule.observed_min is None:
                plan.left_out[col] = "no finite value"
            elif rule.distinct <= 1 and rule.observed_null_rate == 0:
                plan.left_out[col] = "constant: one value in every row"
            elif _numeric_id(frame[col], col, rule):
                plan.left_out[col] = (
                    f"identifier-like: named like an id, {rule.distinct} distinct whole numbers — numbers that "
                    "identify rather than measure; add it if its order means something"
                )
            else:
                plan.numeric.append(col)
        elif rule.kind == "boolean":
            plan.boolean.append(col)
        elif rule.kind == "categorical":
            if len(rule.values or ()) <= 1 and rule.observed_null_rate == 0:
                plan.left_out[col] = "constant: one value in every row"
            else:
                plan.categorical[col] = tuple(str(v) for v in rule.values or ())
        elif rule.kind == "timestamp":
            plan.left_out[col] = (
                "a timestamp: as a raw clock a model learns the calendar; turn it into a duration (e.g. seconds "
                "before the event) in a transformation if it matters"
            )
        else:
            plan.left_out[col] = (
                f"identifier-like: {rule.distinct} distinct values in {contract.rows} rows, not a category set; "
                "add it (or a coarser version of it) if it is meaningful"
            )
    if not plan.request_fields and not spec.entities:
        raise TableError(
            "no column is left to learn from: every column is a role (time, label, keys, id) or was left out ("
            + ", ".join(f"{c}: {why}" for c, why in plan.left_out.items())
            + ")",
            fix="give a table with at least one numeric, yes/no or category column besides the roles, or an --entity",
        )


def _protected(col: str | None, contract: InferredContract) -> None:
    if not col:
        return
    rule = contract.column(col)
    distinct = rule.distinct
    if rule.kind in ("categorical", "boolean") or (rule.kind == "numeric" and distinct <= MAX_PROTECTED_VALUES):
        return
    raise TableError(
        f"protected attribute '{col}' has {distinct} distinct values ({rule.kind}): the fairness gate compares "
        "a few groups",
        col,
        f"add a column of bands (e.g. {col}_band with a handful of ranges) and pass it as --protected",
    )


def _windows(frame: pd.DataFrame, spec: TableSpec, times: pd.Series) -> tuple[list[tuple[str, timedelta]], list[str]]:
    """The candidate windows the table's span supports and in which some entity has an earlier event."""
    notes = []
    span = times.max() - times.min()
    kept = [(name, w) for name, w in WINDOWS if w <= span] or [WINDOWS[0]]
    dropped = [name for name, w in WINDOWS if w > span]
    if dropped:
        notes.append(f"aggregation windows {', '.join(dropped)} dropped: longer than the table's span ({span})")
    useful = []
    for entity in spec.entities:
        gaps = (
            pd.DataFrame({"k": frame[entity].to_numpy(), "t": times.to_numpy()})
            .sort_values(["k", "t"], kind="stable")
            .groupby("k", sort=False)["t"]
            .diff()
            .dropna()
        )
        for name, w in kept:
            share = float((gaps < w).sum()) / max(len(frame), 1)
            if share >= MIN_WINDOW_SHARE and name not in useful:
                useful.append(name)
    chosen = [(n, w) for n, w in kept if n in useful] or [kept[-1]]
    empty = [n for n, _ in kept if n not in {c for c, _ in chosen}]
    if empty:
        notes.append(
            f"aggregation windows {', '.join(empty)} dropped: fewer than {MIN_WINDOW_SHARE:.0%} of events have an "
            "earlier event of the same entity within them"
        )
    return chosen, notes


def _declare_aggregations(plan: _Plan, frame: pd.DataFrame, times: pd.Series) -> None:
    spec = plan.spec
    if not spec.entities:
        return
    windows, notes = _windows(frame, spec, times)
    plan.notes.extend(notes)
    plan.windows = [n for n, _ in windows]
    longest = [n for n, _ in windows][-2:]
    taken = set(spec.columns) | set(plan.odfv_outputs) | {FEATURE_TIMESTAMP, "request_unix"}
    room = max(0, (MAX_AGGREGATIONS - len(windows)) // max(len(longest), 1))
    numeric = plan.numeric[:room]
    if len(plan.numeric) > room:
        plan.notes.append(
            f"per-entity means of {', '.join(numeric) or 'no column'} only (at most {MAX_AGGREGATIONS} aggregations "
            "per entity); declare more under features.aggregations"
        )

    def declare(prefix: str) -> list[dict]:
        aggs = [{"function": "count", "window": n, "name": f"{prefix}_count_{n}"} for n, _ in windows]
        for col in numeric:
            aggs += [
                {"function": "mean", "column": col, "window": n, "name": f"{prefix}_{col}_mean_{n}"} for n in longest
            ]
        return aggs

    for entity in spec.entities:
        table = f"{entity}_stats"
        # The table's recency columns: its last event (a view feature) and the seconds since it (a model input).
        recency = [table + LAST_EVENT_SUFFIX, table + RECENCY_SUFFIX]
        # ``customer_id`` → ``customer_count_24h``; the whole key name if that would clash with a column.
        for prefix in dict.fromkeys([_stem(entity), entity]):
            aggs = declare(prefix)
            clash = next((n for n in [*recency, *(a["name"] for a in aggs)] if n in taken), None)
            if clash is None:
                break
        else:
            raise TableError(
                f"column '{clash}' has the name of a generated aggregation feature", clash,
                f"rename it, e.g. to '{clash}_raw'",
            )  # fmt: skip
        taken.update([*recency, *(a["name"] for a in aggs)])
        plan.aggregations[table] = {"entities": [entity], "timestamp": spec.timestamp, "aggregations": aggs}


def _check_generated_names(plan: _Plan) -> None:
    """Request fields, keys and generated features share one namespace in Feast's joins and in the
    serving layer: a column whose name is another's generated feature would be overwritten."""
    seen: dict[str, str] = {}
    names = [(c, c) for c in plan.spec.entities] + [(c, c) for c in plan.request_fields]
    names += [(plan.output_name(c), c) for c in plan.request_fields]
    for name, source in names:
        if name in seen and seen[name] != source:
            made_from = source if seen[name] == name else seen[name]
            raise TableError(
                f"column '{name}' has the name of the feature made from '{made_from}'",
                name,
                f"rename it, e.g. to '{name}_raw'",
            )
        seen[name] = source


def _label_delay(
    label_delay: str | None, spec: TableSpec, parsed: pd.DataFrame, times: pd.Series, notes: list[str]
) -> str:
    from pydantic_core import PydanticCustomError

    from mlcycle.project.aggregations import parse_window

    if label_delay is None and spec.label_available_at:
        delay = (parsed[spec.label_available_at] - times).dropna()
        if delay.empty:
            raise TableError(
                f"column '{spec.label_available_at}' is empty: no label has arrived", spec.label_available_at,
                "give the arrival time of the labels that are known, or use --label-delay",
            )  # fmt: skip
        p99 = delay.quantile(0.99)
        if p99 <= pd.Timedelta(days=1):
            label_delay = f"{max(1, math.ceil(p99 / pd.Timedelta(hours=1)))}h"
        else:
            label_delay = f"{math.ceil(p99 / pd.Timedelta(days=1))}d"
        notes.append(
            f"label delay {label_delay}: 99% of labels arrived within {p99} of their event (the longest took "
            f"{delay.max()}); a window is judged once this long has passed"
        )
    elif label_delay is None:
        label_delay = DEFAULT_LABEL_DELAY
        notes.append(
            f"label delay {label_delay} (the default): each label is taken as known {label_delay} after its event; "
            "pass --label-delay or --label-available-at if yours arrive sooner or later"
        )
    try:
        window = parse_window(label_delay)
    except PydanticCustomError as exc:
        raise InitError(f"--label-delay {label_delay!r}: {exc}", None, "write e.g. 12h, 7d or 30d") from None
    span = times.max() - times.min()
    if window >= span:
        raise InitError(
            f"the label delay {label_delay} is longer than the table's span ({span}): no label would be known "
            "before the table ends, so nothing could be trained",
            None,
            "give a longer table, or a shorter --label-delay if labels arrive sooner",
        )
    matured = float((times <= times.max() - window).mean())
    if matured < 0.5:
        notes.append(
            f"only {matured:.0%} of rows have a known label by the table's end ({label_delay} delay): training "
            "uses those"
        )
    return label_delay.strip().lower()


def _plan(
    frame: pd.DataFrame,
    *,
    timestamp: str,
    label: str,
    entities: Sequence[str],
    label_delay: str | None,
    label_available_at: str | None,
    task: str,
    protected: str | None,
    event_id: str | None,
    project: str,
    table: str,
) -> tuple[_Plan, pd.DataFrame]:
    entities = tuple(dict.fromkeys(entities))
    spec = check_table(frame, timestamp, label, entities, task, label_available_at)
    notes = list(spec.notes)
    taken = {timestamp, label, *entities, *filter(None, [label_available_at])}
    if protected:
        _require_column(frame, protected, "protected")
        if protected in taken:
            raise TableError(
                f"column '{protected}' already has another role", protected, "name the protected attribute"
            )
        taken.add(protected)
    ev = _event_id(frame, event_id, taken, notes)
    for col in (*entities, *filter(None, [ev])):
        _not_reserved(col)
    contract = infer_contract(frame, spec, name=table, event_id=ev)
    _protected(protected, contract)
    prepared = prepare_table(frame, spec)
    times = prepared[timestamp]
    delay = _label_delay(label_delay, spec, prepared, times, notes)
    plan = _Plan(project, table, spec, contract, ev, protected, delay, notes=notes)
    plan.span = times.max() - times.min()
    plan.end = times.max()
    plan.replay_since = times.quantile(0.9).floor("D")
    plan.rows_per_day = len(frame) / max(plan.span / pd.Timedelta(days=1), 1 / 24)
    if task == "classification":
        plan.positive_rate = float((prepared[label].dropna() == spec.positive_label).mean())
    else:
        plan.label_std = float(pd.to_numeric(prepared[label], errors="coerce").std())
    for entity in entities:
        plan.entity_types[entity] = _entity_type(frame, entity)
    _classify_columns(plan, frame)
    _declare_aggregations(plan, frame, times)
    _check_generated_names(plan)
    return plan, prepared


# ------------------------------------------------------------------------------------------ files


def _y(value: Any) -> str:
    """One YAML scalar or flow collection."""
    if isinstance(value, np.generic):
        value = value.item()
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip().removesuffix("...").strip()
    )


def _round_sig(x: float, digits: int = 2) -> float:
    if x <= 0 or not math.isfinite(x):
        return 0.0
    return round(x, max(0, digits - 1 - math.floor(math.log10(x))))


def _round_up_sig(x: float, digits: int = 3) -> float:
    if x <= 0 or not math.isfinite(x):
        return 0.0
    step = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return round(math.ceil(x / step) * step, max(0, digits - 1 - math.floor(math.log10(x))))


def _model_name(project: str) -> str:
    """The registered model's name (model.name; the resource the monitor's events are about)."""
    return f"{project}-model"


def _monitoring_window(rows_per_day: float) -> int:
    """Days per monitoring window: the shortest of 1, 7, 30, 90 that holds about a thousand rows."""
    for days in (1, 7, 30, 90):
        if rows_per_day * days >= 1000:
            return days
    return 90


def _config_text(plan: _Plan, source: Path) -> str:
    """mlcycle.yaml as text: YAML libraries do not write comments, and the comments are the point."""
    spec, p = plan.spec, plan.project
    cls = spec.task == "classification"
    window = _monitoring_window(plan.rows_per_day)
    per_window = plan.rows_per_day * window
    lines: list[str] = []

    def put(text: str = "", comment: str = "", indent: int = 0) -> None:
        line = " " * indent + text
        if comment:
            line = f"{line.ljust(30)} # {comment}" if text else f"{line}# {comment}"
        lines.append(line.rstrip())

    def note(text: str, indent: int = 0) -> None:
        for part in textwrap.wrap(text, 100 - indent - 2):
            lines.append(" " * indent + "# " + part)

    note(
        f"mlcycle project '{p}', written by `mlcycle init` from {source.name} ({spec.rows} rows) on "
        f"{datetime.now(UTC):%Y-%m-%d}. One file drives the project (mlcycle.config.ProjectConfig; unknown keys "
        "are errors). Paths are relative to this file; generated state goes to data/ (git-ignored). README.md "
        "says what was inferred and which commands to run."
    )
    put(f"project: {_y(p)}")
    put("profile: local", "local: SQLite + files, nothing to start | scale: Redis + PostgreSQL")
    put(f"task: {spec.task}")
    put()
    note(
        "The event table and the role of each column the lifecycle reads. contract.yaml describes every "
        "column; feature_repo/features.py says which ones the model uses and how."
    )
    put("table:")
    put(f"path: data/raw/{plan.table}.parquet", "the table, as init read it (UTC timestamps)", 2)
    put(f"contract: {CONTRACT_NAME}", "inferred from the table: read it and tighten it", 2)
    put(f"timestamp: {_y(spec.timestamp)}", "when the event happened (UTC)", 2)
    put(f"label: {_y(spec.label)}", "what the model predicts", 2)
    if cls:
        put(f"positive_label: {_y(spec.positive_label)}", f"the class scored ({plan.positive_rate:.2%} of rows)", 2)
    if plan.event_id:
        put(f"event_id: {_y(plan.event_id)}", "requests carry it, so a later label joins its prediction", 2)
    else:
        put(comment="event_id: none — no column identifies each row; add one so labels join predictions", indent=2)
    put(
        f"entities: {_y(list(spec.entities))}",
        "features looked up per key online" if spec.entities else "none: every feature comes in the request",
        2,
    )
    if spec.label_available_at:
        put(f"label_available_at: {_y(spec.label_available_at)}", "when each row's label became known", 2)
        put(f"label_delay: {plan.label_delay}", "maturity horizon: 99% of labels arrive within it", 2)
    else:
        put(f"label_delay: {plan.label_delay}", "each label is taken as known this long after its event", 2)
    if plan.protected:
        put(f"protected: {_y(plan.protected)}", "fairness gates compare its groups; never a model input", 2)
        put("slices:", "evaluation metrics per group", 2)
        put(f"- {{column: {_y(plan.protected)}}}", indent=4)
    else:
        put(comment="protected: <column>      a protected attribute for the fairness gates (optional)", indent=2)
        put(comment="slices: [{column: <column>}]      evaluation metrics per group (optional)", indent=2)
    put(comment="transformations: module:function      your own table → feature tables (optional)", indent=2)
    put()
    put("serving:")
    if spec.entities:
        put(f"routing_key: {_y(spec.entities[0])}", f"a canary keeps each {spec.entities[0]} on one model", 2)
    else:
        put("routing_key: request_id", "no entity: a canary routes each request on its own", 2)
    put()
    put("features:")
    put(f"feature_repo: {FEATURE_REPO}", indent=2)
    put(f"feature_service: {p}_v1", "feature_repo/features.py: the model's inputs, offline and online", 2)
    if plan.aggregations:
        note(
            "Per-entity window aggregations, declared once: computed point in time offline (the state after "
            "each event, stamped 1 µs later, so a row never sees its own event) and published online. Windows: "
            f"{', '.join(plan.windows)} (those the table's span and pace support).",
            2,
        )
        put("aggregations:", indent=2)
        for name, agg in plan.aggregations.items():
            put(f"{name}:", indent=4)
            put(f"entities: {_y(agg['entities'])}", indent=6)
            put(f"timestamp: {_y(agg['timestamp'])}", indent=6)
            put("aggregations:", indent=6)
            for a in agg["aggregations"]:
                put(f"- {_y(a)}", indent=8)
    else:
        put(comment="aggregations: none — without an entity every feature comes in the request", indent=2)
    put()
    put("model:")
    put(f"name: {_y(_model_name(p))}", "registered model name in MLflow", 2)
    put("flavor: xgboost", "or lightgbm, or sklearn with estimator: <dotted path>", 2)
    if cls:
        put("threshold: max_f1", "decision threshold picked on the validation slice", 2)
    put()
    put("tracking:")
    put(f"experiment: {_y(p)}", indent=2)
    put()
    put("quality:", "checks on the training set, before training: failing one stops the run")
    put(f"min_rows: {int(min(1000, max(100, spec.rows // 5)))}", "fewer training rows: no training", 2)
    if cls and plan.positive_rate:
        r = plan.positive_rate
        put(f"min_label_rate: {_round_sig(r / 3)}", f"a third to three times the table's {r:.2%}: outside,", 2)
        put(f"max_label_rate: {min(1.0, _round_sig(min(0.99, r * 3)))}", "the label is broken, not the world", 2)
    put()
    put("gates:", "a candidate must meet these to be registered with an alias")
    if cls:
        r = plan.positive_rate or 0.0
        put("min_roc_auc: 0.65", "clearly better than chance; raise it once you know what a good model", 2)
        put(comment="reaches on this table", indent=2)
        # A random ranking's PR-AUC is the positive rate: ask for a quarter of the way from there to
        # a perfect 1 (for rare positives about 1.25x their rate; for common ones not above 1).
        put(
            f"min_pr_auc: {_round_sig(min(0.95, max(0.01, r + 0.25 * (1 - r))))}",
            "a quarter of the way from the positive rate (a random ranking's PR-AUC) to 1",
            2,
        )
    else:
        std = _round_up_sig(plan.label_std or 0.0)
        if std > 0:
            put(f"max_rmse: {std}", "the label's standard deviation: what predicting the mean scores", 2)
        put("max_regression_rmse: 0.02", "at most 2% worse than the champion on the same rows", 2)
    note(
        "A gate the data cannot decide (an interval straddling its bound): block refuses the model, warn "
        "registers it with the warning in its model card.",
        2,
    )
    put(
        "when_unmeasurable: {min_roc_auc: block, min_pr_auc: block, max_rmse: block, no_regression: block,",
        indent=2,
    )
    put("fairness: warn, max_p99_latency_ms: block}", indent=22)
    put()
    put("monitoring:")
    note(
        f"The table holds about {plan.rows_per_day:.4g} rows a day: windows of {window} day(s) hold about "
        f"{per_window:.0f}.",
        2,
    )
    put(f"window_days: {window}", "the current window: the latest days of the log, by event time", 2)
    put(f"min_rows: {int(max(100, min(500, per_window // 2)))}", "fewer predictions in the window: no verdict", 2)
    put(f"decay_window_days: {window}", "a performance window, judged once its labels have matured", 2)
    put(f"decay_lookback_days: {window * 14}", indent=2)
    if cls:
        put("min_roc_auc: 0.6", "alert below this ROC-AUC on matured labels (or 0.05 below the test's)", 2)
    put()
    put("canary:")
    note("A shadow step first (0: the challenger scores every request, the champion answers), then shares.", 2)
    put("steps: [0, 5, 25, 50, 100]", indent=2)
    note(
        f"Labels take {plan.label_delay}; a canary lasts minutes, so its own requests have no matured labels: "
        "online quality is reported as not judged, and the canary decides on errors, latency, score PSI and "
        "the two models' agreement. Offline, the gates compared them on the same matured window.",
        2,
    )
    if cls:
        put("auc_without_matured_labels: warn", indent=2)
        if (plan.positive_rate or 0) < 0.1:
            note("Few positives: the kappa of the two models' flags needs more pairs than a canary sees.", 2)
            put("flag_kappa_on_unmeasurable: warn", indent=2)
    else:
        put("rmse_without_matured_labels: warn", indent=2)
    put()
    put("retraining:")
    put("cooldown_hours: 6", "none within this long of a retraining that trained", 2)
    put("train_window_days: null", "every matured day; a number of days forgets an older world", 2)
    return "\n".join(lines) + "\n"


_FEATURES_HEADER = '''\
"""Feast definitions of project {project}, written by `mlcycle init` from {source} — edit freely.

Definitions only: the tables behind the views are built by `mlcycle features build` (the declared
aggregations of mlcycle.yaml) into ../data/features/. Paths are relative to this directory.
"""

{imports}'''


def _q(text: str) -> str:
    """A double-quoted Python string literal (JSON's escapes are Python's too)."""
    return json.dumps(text, ensure_ascii=False)


def _lit(value: Any, indent: int = 4) -> str:
    """A Python literal in the house style (double quotes), one item per line when long."""
    if isinstance(value, str):
        return _q(value)
    if isinstance(value, dict):
        items = [f"{_q(k)}: {_lit(v, indent + 4)}" for k, v in value.items()]
        open_, close = "{", "}"
    else:
        items = [_lit(v, indent + 4) for v in value]
        open_, close = "[", "]"
    flat = open_ + ", ".join(items) + close
    if len(flat) + indent <= 100:
        return flat
    pad = " " * (indent + 4)
    return open_ + "\n" + "".join(f"{pad}{item},\n" for item in items) + " " * indent + close


def _names(names: Sequence[str], indent: int = 4) -> str:
    """A list of Python expressions (names, calls), one per line when long."""
    flat = "[" + ", ".join(names) + "]"
    if len(flat) + indent + 20 <= 100:
        return flat
    pad = " " * (indent + 4)
    return "[\n" + "".join(f"{pad}{n},\n" for n in names) + " " * indent + "]"


def _timedelta_code(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds % size == 0:
            return f"timedelta({unit}={seconds // size})"
    return f"timedelta(seconds={seconds})"


def _imports(plan: _Plan) -> str:
    """Only what the definitions use: a project's own lint must pass on the generated file."""
    feast = ["FeatureService", "Field", "RequestSource"]
    types = {"Float64", "Int64"}
    types |= {"Bool"} if plan.boolean else set()
    types |= {"String"} if plan.categorical else set()
    lines = []
    if plan.aggregations:
        feast += ["Entity", "FeatureView", "FileSource", "ValueType"]
        lines += ["from datetime import timedelta", ""]
    lines += [
        f"from feast import {', '.join(sorted(feast))}",
        "from feast.on_demand_feature_view import on_demand_feature_view",
        f"from feast.types import {', '.join(sorted(types))}",
    ]
    if plan.aggregations:
        lines += ["", 'FEATURES_DIR = "../data/features"']
    return "\n".join(lines) + "\n"


def _features_py(plan: _Plan, source: Path) -> str:
    """The project's Feast definitions as Python source (imported by ``feast apply``)."""
    from mlcycle.project.aggregations import parse_window

    p = plan.project
    header = _FEATURES_HEADER.format(project=p, source=source.name, imports=_imports(plan))
    out = [header]
    for entity, vtype in plan.entity_types.items():
        out.append(
            f"\n{entity}_entity = Entity(\n"
            f"    name={_q(entity)},\n"
            f"    join_keys=[{_q(entity)}],\n"
            f"    value_type=ValueType.{vtype},\n"
            f"    description={_q(f'The key {entity} of the table.')},\n"
            ")\n"
        )
    views = []
    for name, agg in plan.aggregations.items():
        ttl = max(parse_window(a["window"]) for a in agg["aggregations"])
        entity = agg["entities"][0]
        fields = "".join(
            f"        Field(name={_q(a['name'])}, dtype={'Int64' if a['function'] == 'count' else 'Float64'}),\n"
            for a in agg["aggregations"]
        )
        # The entity's last event as of the row: the on-demand view's input for the seconds since it.
        fields += f"        Field(name={_q(name + LAST_EVENT_SUFFIX)}, dtype=Int64),\n"
        out.append(
            f"\n{name}_source = FileSource(\n"
            f"    name={_q(name + '_source')},\n"
            f'    path=f"{{FEATURES_DIR}}/{name}.parquet",\n'
            f"    timestamp_field={_q(FEATURE_TIMESTAMP)},\n"
            ")\n"
            f"\n{name} = FeatureView(\n"
            f"    name={_q(name)},\n"
            f"    entities=[{entity}_entity],\n"
            "    # Past the longest window every aggregate is empty: an older row says nothing about now.\n"
            f"    ttl={_timedelta_code(ttl)},\n"
            f"    schema=[\n{fields}    ],\n"
            f"    source={name}_source,\n"
            "    online=True,\n"
            f"    description={_q(f'Aggregations per {entity} (features.aggregations.{name}), as of each event')},\n"
            ")\n"
        )
        views.append(name)
    ftype = {"numeric": "Float64", "boolean": "Bool", "categorical": "String"}

    def kind(col: str) -> str:
        return "categorical" if col in plan.categorical else "boolean" if col in plan.boolean else "numeric"

    req_fields = "".join(f"        Field(name={_q(c)}, dtype={ftype[kind(c)]}),\n" for c in plan.request_fields)
    out.append(
        f"\n{p}_request = RequestSource(\n"
        f"    name={_q(p + '_request')},\n"
        f"    schema=[\n{req_fields}"
        '        Field(name="request_unix", dtype=Int64),  # the event time (Unix seconds), set by the service\n'
        "    ],\n"
        '    description="The event\'s own fields, as a request carries them.",\n'
        ")\n"
    )
    schema = "".join(
        f"        Field(name={_q(plan.output_name(c))}, dtype={'Int64' if c in plan.categorical else 'Float64'}),\n"
        for c in plan.request_fields
    )
    schema += "".join(f"        Field(name={_q(n)}, dtype=Float64),\n" for n in plan.recency.values())
    numeric = {c: plan.output_name(c) for c in plan.numeric}
    boolean = {c: plan.output_name(c) for c in plan.boolean}
    categories = {c: list(v) for c, v in plan.categorical.items()}
    recency = ""
    if plan.recency:
        recency = (
            "    # Seconds since the entity's last earlier event (its view's last-event clock): NaN when it has\n"
            "    # none, or none within the view's ttl.\n"
            f"    recency = {_lit(plan.recency)}\n"
            '    request = numbers(inputs["request_unix"])\n'
            "    for col, name in recency.items():\n"
            "        out[name] = request - numbers(inputs[col])\n"
        )
    description = "Request fields → model inputs: numbers as floats, yes/no as 1/0, categories as codes."
    if plan.recency:
        description = "Model inputs: request fields (numbers, yes/no as 1/0, category codes), secs since last event."
    out.append(
        "\n\n@on_demand_feature_view(\n"
        # The views are sources for their last-event clocks (views without them in the model's inputs).
        f"    sources={_names([f'{p}_request', *views])},\n"
        f"    schema=[\n{schema}    ],\n"
        '    mode="python",\n'
        f"    description={_q(description)},\n"
        ")\n"
        f"def {p}_request_features(inputs: dict) -> dict:\n"
        "    # Feast runs this function from its source text in a fresh namespace: imports and constants\n"
        "    # must live inside it. mlcycle passes NumPy columns (one row online, millions offline) and\n"
        "    # takes arrays back; Feast (`feast apply`, its feature server) passes lists and gets lists.\n"
        "    import numpy as np\n"
        "\n"
        f"    numeric = {_lit(numeric)}\n"
        f"    boolean = {_lit(boolean)}\n"
        "    # A category's code is its index in the contract's sorted set; missing or unknown: -1.\n"
        f"    categories = {_lit(categories)}\n"
        "\n"
        "    def number(value) -> float:  # missing or not a number: NaN\n"
        "        try:\n"
        "            return float(value)\n"
        "        except (TypeError, ValueError):\n"
        "            return np.nan\n"
        "\n"
        "    def numbers(values) -> np.ndarray:\n"
        '        if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":\n'
        '            return values.astype("float64")\n'
        '        return np.array([number(v) for v in values], dtype="float64")\n'
        "\n"
        "    out = {}\n"
        "    for col, name in numeric.items():\n"
        "        out[name] = numbers(inputs[col])\n"
        "    yes_no = {True: 1.0, False: 0.0}  # 1 and 0 too (they equal True and False)\n"
        "    for col, name in boolean.items():\n"
        "        out[name] = np.array([yes_no.get(v, np.nan) if v is not None else np.nan for v in inputs[col]])\n"
        "    for col, values in categories.items():\n"
        "        codes = {v: i for i, v in enumerate(values)}\n"
        "        known = [-1 if v is None else codes.get(str(v), -1) for v in inputs[col]]\n"
        '        out[f"{col}_code"] = np.array(known, dtype="int64")\n'
        f"{recency}"
        "    first = next(iter(inputs.values()))\n"
        "    return {k: v.tolist() for k, v in out.items()} if isinstance(first, list) else out\n"
    )
    if views:
        out.append(
            "\n\ndef model_inputs(view: FeatureView):\n"
            f'    """The view\'s features but ``<view>{LAST_EVENT_SUFFIX}``: an input of the on-demand view\'s\n'
            f"    ``<view>{RECENCY_SUFFIX}``, not of the model (a raw clock would let it learn the calendar).\n"
            '    """\n'
            f'    return view[[f.name for f in view.schema if f.name != view.name + "{LAST_EVENT_SUFFIX}"]]\n'
        )
    features = _names([*(f"model_inputs({v})" for v in views), f"{p}_request_features"])
    out.append(
        f"\n\n{p}_v1 = FeatureService(\n"
        f"    name={_q(p + '_v1')},\n"
        f"    features={features},\n"
        f"    description={_q(f'Inputs of the {p} model: one service builds training sets and online vectors.')},\n"
        ")\n"
    )
    return "".join(out)


def _feature_store_yaml(project: str, scale: bool) -> str:
    if scale:
        return textwrap.dedent(
            f"""\
            # Profile `scale` (profile: scale in mlcycle.yaml, or MLCYCLE_PROFILE=scale): online store on Redis,
            # registry in PostgreSQL, so any number of scoring replicas and materialization jobs share one state.
            # The ${{…}} values are derived by mlcycle (mlcycle/scale.py) from MLCYCLE_REDIS_URL, MLCYCLE_REDIS_PREFIX
            # and MLCYCLE_PG_URL. For the feast CLI, from here:
            #   eval "$(mlcycle scale-env)" && feast -f feature_store.scale.yaml apply
            project: mlcycle_{project}${{MLCYCLE_FEAST_PROJECT_SUFFIX}}
            provider: local
            registry:
              registry_type: sql
              path: ${{MLCYCLE_FEAST_REGISTRY_URL}}
              cache_ttl_seconds: 60
              # Materializing flips a view to MATERIALIZING in the shared registry; without this, scoring
              # replicas that refresh their registry cache meanwhile refuse to read that view (503s).
              serve_features_while_materializing: true
              sqlalchemy_config_kwargs:
                echo: false
                pool_pre_ping: true   # a restarted PostgreSQL leaves dead pooled connections behind
            offline_store:
              # Unchanged from the local profile: DuckDB reads the feature files directly.
              type: mlcycle.features.offline_store.AsofDuckDBOfflineStore
            online_store:
              type: redis
              connection_string: ${{MLCYCLE_FEAST_REDIS}}
            entity_key_serialization_version: 3
            """
        )
    return textwrap.dedent(
        f"""\
        # Embedded defaults (profile `local`): everything under ../data/ (git-ignored), nothing to start.
        # Paths are relative to this directory, so `feast` works from here: `cd feature_repo && feast apply`.
        project: mlcycle_{project}
        provider: local
        registry:
          registry_type: file
          path: ../data/feast/registry.db
          cache_ttl_seconds: 60
        offline_store:
          # DuckDB ASOF LEFT JOIN for point-in-time training sets: keeps every entity row.
          type: mlcycle.features.offline_store.AsofDuckDBOfflineStore
        online_store:
          type: sqlite
          path: ../data/feast/online_store.db
        entity_key_serialization_version: 3
        """
    )


def _flow_entrypoint(module: str, function: str) -> str:
    """A module-path entrypoint (``mlcycle.flows.training.train``): no colon, so Prefect 3 imports it
    from the installed package instead of loading a file relative to the project directory."""
    return f"{FLOWS_PACKAGE}.{module}.{function}"


def _flow_source(module: str) -> Path:
    """The file of mlcycle's generic flow ``module`` inside the installed package (a wheel's
    site-packages or a checkout's src/), found from the root package so nothing above is imported."""
    import importlib.resources

    root = importlib.resources.files("mlcycle")
    return Path(str(root / FLOWS_PACKAGE.rpartition(".")[2] / f"{module}.py"))


# The deployments of the reference project's prefect.yaml, named for this project: (module of
# mlcycle.flows, function, deployment purpose, tag, extra lines). Deployment names are unique per flow on a Prefect
# server, so every project's are its own name (``train/<project>``), beside the reference's ``train/train``.
_DEPLOYMENTS: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "training",
        "train",
        "Train, evaluate and (if every gate passes) register the model of project {p}.",
        "training",
        "",
    ),
    (
        "monitoring",
        "monitor",
        "Check the champion: feature and score drift, matured-label quality, Evidently report; emit events.",
        "monitoring",
        """\
    schedules:
      - cron: "0 * * * *"
        timezone: UTC
""",
    ),
    (
        "retraining",
        "retrain",
        "Retrain on the latest matured window (guarded; pauses for a person on broken data); canary the challenger.",
        "retraining",
        """\
    schedules:
      - cron: "0 4 * * 1"   # weekly, whatever the monitors say
        timezone: UTC
    # Started by the monitor's events about this project's model (the resource is model.name in
    # mlcycle.yaml: change both together). One check may emit both; the flow runs once per check.
    triggers:
      - type: event
        enabled: true
        match:
          prefect.resource.id: {resource}
        expect:
          - mlcycle.drift.detected
          - mlcycle.performance.decayed
        parameters:
          config: {config}
          trigger: "{{{{ event.event }}}}"
          summary_path: "{{{{ event.payload.summary_path }}}}"
""",
    ),
    (
        "rollout",
        "rollout_flow",
        "Canary the challenger 5% -> 25% -> 50% under automated analysis; promote or roll back.",
        "rollout",
        "",
    ),
    (
        "batch_score",
        "batch_score",
        "Score yesterday's events with the champion (offline features).",
        "batch",
        """\
    schedules:
      - cron: "30 2 * * *"
        timezone: UTC
""",
    ),
)


def _prefect_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prefect")
    except PackageNotFoundError:
        return None


def _prefect_yaml(plan: _Plan) -> str:
    """prefect.yaml of the project: the reference project's deployments, entrypoints in the installed
    mlcycle package (module paths), named and tagged for the project, each reading its mlcycle.yaml."""
    p = plan.project
    config = _y(CONFIG_NAME)
    version = _prefect_version()
    head = textwrap.dedent(
        f"""\
        # Prefect deployments of project {p}: mlcycle's flows, imported from the installed package
        # (module-path entrypoints), on a local process work pool. From this directory:
        #   prefect server start                                  # another terminal
        #   prefect work-pool create mlcycle-local --type process
        #   prefect deploy --all
        #   prefect worker start --pool mlcycle-local             # another terminal
        #   prefect deployment run train/{p}
        # No pull section: `prefect deploy` records this directory as the working directory, so the worker
        # runs each flow here, where config: {CONFIG_NAME} (relative to it), feature_repo/ and data/ are.
        name: {_y(p)}
        """
    )
    lines = [head.rstrip("\n")]
    if version:
        lines.append(f"prefect-version: {version}")
    lines += [
        "",
        "build: null",
        "push: null",
        "",
        "definitions:",
        "  work_pool: &local_pool",
        "    name: mlcycle-local",
        "    work_queue_name: default",
        "    job_variables: {}",
        "",
        "deployments:",
    ]
    for module, function, description, tag, extra in _DEPLOYMENTS:
        lines += [
            f"  - name: {_y(p)}",
            f"    description: {_y(description.format(p=p))}",
            f"    entrypoint: {_flow_entrypoint(module, function)}",
            f"    parameters: {{config: {config}}}",
            f"    tags: [mlcycle, {_y(p)}, {tag}]",
            "    work_pool: *local_pool",
        ]
        if extra:
            lines.append(extra.format(resource=_y(f"mlcycle.model.{_model_name(p)}"), config=config).rstrip("\n"))
    return "\n".join(lines) + "\n"


def _readme(plan: _Plan, source: Path) -> str:
    spec = plan.spec
    p = plan.project
    lines = [
        f"# {p}",
        "",
        f"An mlcycle project made by `mlcycle init` from `{source.name}`: {spec.rows} rows, "
        f"{spec.task}, events from the table's own calendar. Every command below runs from this directory.",
        "",
        "## Run it",
        "",
        "```bash",
        "mlcycle features build      # validate the table against contract.yaml, build the feature tables",
        "mlcycle features publish    # feast apply + materialize into the online store",
        "mlcycle train               # train, evaluate, gate, register the champion",
        "mlcycle serve               # the scoring service on http://127.0.0.1:3000 (another terminal)",
        f"mlcycle replay --since {plan.replay_since:%Y-%m-%d}   # the table's rows from then on, as live traffic",
        "mlcycle monitor             # drift and delayed-label quality over the latest window of the log",
        "```",
        "",
        "`mlcycle replay` sends each row with its own event time, so the prediction log and monitoring run on "
        f"the table's calendar (it spans {plan.end - plan.span:%Y-%m-%d} to {plan.end:%Y-%m-%d}). The date "
        "above leaves the latest tenth of the rows; pick any date after the training cut (rows the model did "
        "not learn from). `--rate N` paces it at N requests a second.",
        "",
        "## What was inferred",
        "",
        f"- event time `{spec.timestamp}`, label `{spec.label}`"
        + (
            f" (positive class {spec.positive_label!r}, {plan.positive_rate:.2%} of rows)"
            if plan.positive_rate is not None
            else ""
        )
        + (f", label known at `{spec.label_available_at}`" if spec.label_available_at else "")
        + f", label delay {plan.label_delay}",
        "- entity keys: "
        + (", ".join(f"`{e}`" for e in spec.entities) or "none — each row is scored from the request"),
        f"- event id: `{plan.event_id}`"
        if plan.event_id
        else "- event id: none — labels that arrive later cannot be joined "
        "to logged predictions by id, so monitoring cannot judge the served model on them; add a unique row id "
        "column and set `table.event_id`",
    ]
    if plan.protected:
        lines.append(
            f"- protected attribute `{plan.protected}`: a fairness gate and evaluation slice, never a model input"
        )
    lines += [
        "- request fields (what `/predict` takes besides the keys and `timestamp`): "
        + (", ".join(f"`{c}`" for c in plan.request_fields) or "none"),
        f"- model inputs ({len(plan.model_features)}): " + ", ".join(f"`{c}`" for c in plan.model_features),
        "  - `<col>_value`: a number (or yes/no as 1/0) as sent; `<col>_code`: a category's index in the "
        "contract's set, -1 for missing or unknown",
    ]
    if plan.aggregations:
        lines.append(
            f"  - per entity: counts of its events over {', '.join(plan.windows)} and means of numeric fields "
            "(features.aggregations in mlcycle.yaml), each as of the event, never including it"
        )
        lines.append(
            f"  - `<table>{RECENCY_SUFFIX}`: seconds since the entity's last earlier event (empty for its first, "
            f"or past the view's ttl), from the feature table's `<table>{LAST_EVENT_SUFFIX}`"
        )
    lines += [
        "",
        "## Schedule it with Prefect",
        "",
        f"The commands above run mlcycle's own flows (`{FLOWS_PACKAGE}.*`, from the installed package: a newer "
        f"mlcycle updates them). `{PREFECT_FILE}` holds their deployments, named `{plan.project}`: `train`, "
        "`monitor` (hourly), `retrain` (weekly, and on the monitor's drift or decay events about this model), "
        "`rollout`, `batch_score` (nightly). Each reads this directory's `mlcycle.yaml`. To change a flow, "
        f"write `{FLOWS_DIR}/<module>.py` here (the mlcycle commands then run it) and point its entrypoint at "
        f"`{FLOWS_DIR}/<module>.py:<function>`.",
        "",
        "```bash",
        "prefect server start                                   # another terminal",
        "prefect work-pool create mlcycle-local --type process",
        "prefect deploy --all                                   # from this directory",
        "prefect worker start --pool mlcycle-local              # another terminal",
        f"prefect deployment run train/{plan.project}",
        "```",
    ]
    if plan.left_out:
        lines += ["", "## Left out", "", "Not model inputs; add them if they are meaningful:", ""]
        lines += [f"- `{c}`: {why}" for c, why in plan.left_out.items()]
    if plan.notes:
        lines += ["", "## Decisions taken for you", ""] + [f"- {n}" for n in plan.notes]
    lines += [
        "",
        "## Tighten it",
        "",
        "- `contract.yaml`: every bound was taken from this table with a margin (the comment beside it says "
        "from what). Narrow ranges to what you know is true, drop categories that should not occur, lower "
        "`max_null_rate` where a missing value means a broken upstream. `mlcycle features build` enforces it.",
        "- `mlcycle.yaml`: the gates (`gates:`) are floors for any table; raise them once you know what a good "
        "model reaches here. Monitoring windows were sized to the table's pace.",
        "- `feature_repo/features.py`: the request fields and the on-demand view; add derived features there, "
        "declare more aggregations in `mlcycle.yaml`, or name your own `table.transformations`.",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ writing


def _prepared_for_disk(prepared: pd.DataFrame, plan: _Plan) -> pd.DataFrame:
    out = prepared.copy()
    for col in plan.spec.timestamp_columns:
        out[col] = pd.to_datetime(out[col], utc=True).dt.floor("us").dt.as_unit("us")
    for entity, vtype in plan.entity_types.items():
        if vtype == "INT64" and not pd.api.types.is_integer_dtype(out[entity].dtype):
            out[entity] = out[entity].astype("int64")
        elif vtype == "STRING" and not (
            pd.api.types.is_string_dtype(out[entity].dtype) and out[entity].map(type).eq(str).all()
        ):
            out[entity] = out[entity].astype(str)
    return out


def _target(directory: Path, force: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise InitError(f"{directory} is a file, not a directory", None, "choose a directory name for the project")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        shown = ", ".join(sorted(p.name for p in directory.iterdir())[:5])
        raise TargetNotEmpty(
            f"{directory} is not empty ({shown})",
            None,
            "choose a new directory, or pass --force to overwrite the files init writes",
        )


def _move_into(tmp: Path, directory: Path) -> list[Path]:
    """Move the assembled project into ``directory``: one rename when it does not exist, else file by
    file (each an atomic replace), keeping files init does not write."""
    files = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file())
    if not directory.exists():
        os.replace(tmp, directory)
        return [directory / f for f in files]
    for rel in files:
        dest = directory / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, dest)
    return [directory / f for f in files]


def init_project(
    directory: str | Path,
    data: str | Path,
    timestamp: str,
    label: str,
    entities: Iterable[str] = (),
    label_delay: str | None = None,
    label_available_at: str | None = None,
    task: str = "classification",
    protected: str | None = None,
    event_id: str | None = None,
    name: str | None = None,
    force: bool = False,
) -> InitResult:
    """Write a runnable project into ``directory`` from the table at ``data``.

    Raises :class:`~mlcycle.contract_inference.TableError` for a table that cannot carry the
    lifecycle (naming the column and the fix) and :class:`InitError` for arguments or a target
    directory that cannot be used (:class:`TargetNotEmpty` when it holds files and ``force`` is
    false). On any error nothing is written: the target is absent or as it was.
    """
    from mlcycle.project.config import ConfigError, load_config

    directory = Path(directory).absolute()
    source = Path(data)
    _target(directory, force)
    project = project_name(name or directory.name)
    table = _table_name(source)
    frame = read_table(source)
    plan, prepared = _plan(
        frame,
        timestamp=timestamp,
        label=label,
        entities=list(entities),
        label_delay=label_delay,
        label_available_at=label_available_at,
        task=task,
        protected=protected,
        event_id=event_id,
        project=project,
        table=table,
    )

    created = [d for d in [directory.parent, *directory.parent.parents] if not d.exists()]
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.init-", dir=directory.parent))
    try:
        (tmp / "data" / "raw").mkdir(parents=True)
        (tmp / FEATURE_REPO).mkdir()
        _prepared_for_disk(prepared, plan).to_parquet(tmp / "data" / "raw" / f"{table}.parquet", index=False)
        (tmp / CONTRACT_NAME).write_text(plan.contract.yaml)
        (tmp / CONFIG_NAME).write_text(_config_text(plan, source))
        (tmp / FEATURE_REPO / "feature_store.yaml").write_text(_feature_store_yaml(project, scale=False))
        (tmp / FEATURE_REPO / "feature_store.scale.yaml").write_text(_feature_store_yaml(project, scale=True))
        features = _features_py(plan, source)
        compile(features, FEATURES_FILE, "exec")  # a syntax error here is init's bug: caught before writing
        (tmp / FEATURE_REPO / FEATURES_FILE).write_text(features)
        prefect = _prefect_yaml(plan)
        _check_prefect_yaml(yaml.safe_load(prefect))  # init's bug if not: caught before writing
        (tmp / PREFECT_FILE).write_text(prefect)
        (tmp / "README.md").write_text(_readme(plan, source))
        (tmp / ".gitignore").write_text("data/\n__pycache__/\n")
        try:
            cfg = load_config(tmp / CONFIG_NAME)
        except ConfigError as exc:  # init's own bug, or a config change it does not know yet
            raise InitError(f"the generated config does not validate: {exc}", None, "report this as a bug") from None
        _check_config(cfg, plan)
        written = _move_into(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in created:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return InitResult(
        directory=directory,
        project=project,
        config=directory / CONFIG_NAME,
        written=tuple(written),
        notes=tuple(plan.notes),
        request_fields=tuple(plan.request_fields),
        model_features=tuple(plan.model_features),
        left_out=dict(plan.left_out),
        aggregations={k: tuple(a["name"] for a in v["aggregations"]) for k, v in plan.aggregations.items()},
    )


def _check_prefect_yaml(doc: Any) -> None:
    """Every deployment's entrypoint is a flow function shipped in the installed package (a wheel
    built without a flow module must fail here, not at ``prefect deploy``)."""
    for deployment in doc["deployments"]:
        module, _, function = deployment["entrypoint"].removeprefix(f"{FLOWS_PACKAGE}.").rpartition(".")
        path = _flow_source(module)
        if not path.is_file() or f"def {function}(" not in path.read_text():
            raise InitError(
                f"{PREFECT_FILE}: entrypoint {deployment['entrypoint']} is not a flow of the installed mlcycle",
                None,
                "report this as a bug",
            )


def _check_config(cfg: Any, plan: _Plan) -> None:
    """The loaded config says what the plan decided (a slip in the template must not pass silently)."""
    expected = {
        "table.timestamp": (cfg.table.timestamp, plan.spec.timestamp),
        "table.label": (cfg.table.label, plan.spec.label),
        "table.entities": (list(cfg.table.entities), list(plan.spec.entities)),
        "table.event_id": (cfg.table.event_id, plan.event_id),
        "features.aggregations": (sorted(cfg.features.aggregations), sorted(plan.aggregations)),
    }
    for key, (got, want) in expected.items():
        if got != want:
            raise InitError(f"the generated config says {key}={got!r}, not {want!r}", None, "report this as a bug")
