"""``mlcycle init``: a runnable project from one table.

:func:`init_project` reads a parquet or CSV table, checks it can carry the lifecycle
(:func:`mlcycle.project.contract_inference.check_table`), infers its data contract, decides what each column
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
- ``README.md``: what was inferred, what was left out, the commands in order;
- ``monitoring/prometheus-rules.yml``: the service's objectives (``serving.slo``) as Prometheus
  recording and alerting rules (:mod:`mlcycle.project.slo_rules`).

Which column becomes what: the event time, the label, its arrival time, the entity keys, the event
id and the protected attribute are never model inputs. Every other column comes in the request and
reaches the model through the on-demand view: a number as ``<col>_value`` (float), a yes/no as
``<col>_value`` (1.0 / 0.0), a category as ``<col>_code`` (its index in the contract's sorted set;
-1 for a missing or unknown value). Identifier-like text, timestamps and columns with no usable
value are left out and listed. With entity keys, each entity gets counts of its events over the
windows the table's span supports and the mean of the first numeric fields over the two longest,
computed point in time by the declarative engine (``features.aggregations``), and the seconds since
its last earlier event (``<table>_secs_since_last``, NaN for its first).

The text files are rendered from template files shipped in the package (``mlcycle/templates/``,
:mod:`mlcycle.project.templates`); this module decides every value and hands them over as data. The
reference project's ``feature_repo/feature_store*.yaml`` and ``prefect.yaml`` come from the same
templates (:func:`reference_files`), so the two cannot drift apart.

Nothing is written for a bad table, bad arguments or a template that cannot be rendered: the project
is assembled in a temporary directory beside the target, validated (``load_config`` must accept it),
then moved into place.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mlcycle.project.bentofile import bento_name_of
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
from mlcycle.project.pii_inference import propose_pii
from mlcycle.project.templates import TemplateError, render

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
    privacy: dict[str, dict] = field(default_factory=dict)  # column → proposed PII rule (pii_inference)

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
    roles = {spec.timestamp: "timestamp", spec.label: "label", **dict.fromkeys(entities, "entity"),
             **({ev: "event_id"} if ev else {}), **({label_available_at: "label_available_at"}
             if label_available_at else {})}  # fmt: skip
    plan.privacy = propose_pii(frame, roles, now=plan.end)
    return plan, prepared


# ------------------------------------------------------------------------------------------ files
# Every generated text file is a template under mlcycle/templates/ (rendered by
# mlcycle.project.templates): what follows only decides the values and hands them over as data.

CONFIG_TEMPLATE = "mlcycle.yaml.j2"
FEATURES_TEMPLATE = "feature_repo/features.py.j2"
FEATURE_STORE_TEMPLATE = "feature_repo/feature_store.yaml.j2"
PREFECT_TEMPLATE = "prefect.yaml.j2"
README_TEMPLATE = "README.md.j2"
# The Feast configs of both profiles (mlcycle.features.store picks one by the project's profile).
FEATURE_STORE_FILES = {False: "feature_store.yaml", True: "feature_store.scale.yaml"}
# mlcycle's flows, by their key in prefect.yaml.j2: (module of mlcycle.flows, flow function).
FLOWS: dict[str, tuple[str, str]] = {
    "train": ("training", "train"),
    "monitor": ("monitoring", "monitor"),
    "retrain": ("retraining", "retrain"),
    "rollout": ("rollout", "rollout_flow"),
    "batch_score": ("batch_score", "batch_score"),
    "retention": ("retention", "retention"),
    "backup": ("backup", "backup"),
}


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


def _described(plan: _Plan, source: Path) -> dict[str, Any]:
    """What both mlcycle.yaml and the README say about the table and its roles."""
    spec = plan.spec
    return {
        "project": plan.project,
        "source": source.name,
        "rows": spec.rows,
        "task": spec.task,
        "spec": spec,
        "positive_rate": None if plan.positive_rate is None else f"{plan.positive_rate:.2%}",
        "label_delay": plan.label_delay,
        "event_id": plan.event_id,
        "protected": plan.protected,
        "windows": plan.windows,
    }


def _config_text(plan: _Plan, source: Path) -> str:
    """mlcycle.yaml, with the gates, checks and windows fitted to the table's task, size and pace."""
    spec = plan.spec
    cls = spec.task == "classification"
    rate = plan.positive_rate or 0.0
    window = _monitoring_window(plan.rows_per_day)
    per_window = plan.rows_per_day * window
    quality: dict[str, Any] = {"min_rows": int(min(1000, max(100, spec.rows // 5))), "min_label_rate": None}
    if cls and rate:
        # A third to three times the table's rate: outside it the label is broken, not the world.
        quality.update(min_label_rate=_round_sig(rate / 3), max_label_rate=min(1.0, _round_sig(min(0.99, rate * 3))))
    gates = {
        # A random ranking's PR-AUC is the positive rate: ask for a quarter of the way from there to a
        # perfect 1 (for rare positives about 1.25x their rate; for common ones not above 1).
        "min_pr_auc": _round_sig(min(0.95, max(0.01, rate + 0.25 * (1 - rate)))) if cls else None,
        # What predicting the mean scores: the label's standard deviation (0 when it has none).
        "max_rmse": None if cls else _round_up_sig(plan.label_std or 0.0),
    }
    monitoring = {
        "rows_per_day": f"{plan.rows_per_day:.4g}",
        "window_days": window,
        "rows_per_window": f"{per_window:.0f}",
        "min_rows": int(max(100, min(500, per_window // 2))),
        "lookback_days": window * 14,
    }
    return render(
        CONFIG_TEMPLATE,
        **_described(plan, source),
        date=f"{datetime.now(UTC):%Y-%m-%d}",
        classification=cls,
        table=plan.table,
        aggregations=plan.aggregations,
        model_name=_model_name(plan.project),
        quality=quality,
        gates=gates,
        monitoring=monitoring,
        few_positives=cls and rate < 0.1,
        privacy={c: ({k: v for k, v in p.items() if k != "why"}, p["why"]) for c, p in plan.privacy.items()},
    )


def _ttl(window: timedelta) -> tuple[str, int]:
    """A view's ttl as ``timedelta``'s largest whole unit (``days=30``, not ``seconds=2592000``)."""
    seconds = int(window.total_seconds())
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds % size == 0:
            return unit, seconds // size
    return "seconds", seconds


def _features_py(plan: _Plan, source: Path) -> str:
    """The project's Feast definitions as Python source (imported by ``feast apply``)."""
    from mlcycle.project.aggregations import parse_window

    p = plan.project
    views = []
    for name, agg in plan.aggregations.items():
        unit, count = _ttl(max(parse_window(a["window"]) for a in agg["aggregations"]))
        fields = [
            {"name": a["name"], "dtype": "Int64" if a["function"] == "count" else "Float64"}
            for a in agg["aggregations"]
        ]
        views.append(
            {"name": name, "entity": agg["entities"][0], "ttl_unit": unit, "ttl_count": count, "fields": fields}
        )
    # Only what the definitions use: a project's own lint must pass on the generated file.
    feast = {"FeatureService", "Field", "RequestSource"}
    feast |= {"Entity", "FeatureView", "FileSource", "ValueType"} if views else set()
    types = {"Float64", "Int64"} | ({"Bool"} if plan.boolean else set()) | ({"String"} if plan.categorical else set())
    dtype = {**dict.fromkeys(plan.numeric, "Float64"), **dict.fromkeys(plan.boolean, "Bool")}
    dtype.update(dict.fromkeys(plan.categorical, "String"))
    outputs = [
        {"name": plan.output_name(c), "dtype": "Int64" if c in plan.categorical else "Float64"}
        for c in plan.request_fields
    ]
    return render(
        FEATURES_TEMPLATE,
        project=p,
        source=source.name,
        feast_imports=sorted(feast),
        types=sorted(types),
        entities=[{"name": e, "value_type": t} for e, t in plan.entity_types.items()],
        views=views,
        feature_timestamp=FEATURE_TIMESTAMP,
        last_event_suffix=LAST_EVENT_SUFFIX,
        recency_suffix=RECENCY_SUFFIX,
        request_fields=[{"name": c, "dtype": dtype[c]} for c in plan.request_fields],
        outputs=outputs + [{"name": n, "dtype": "Float64"} for n in plan.recency.values()],
        numeric={c: plan.output_name(c) for c in plan.numeric},
        boolean={c: plan.output_name(c) for c in plan.boolean},
        categories={c: list(v) for c, v in plan.categorical.items()},
        recency=plan.recency,
        odfv_sources=[f"{p}_request", *(v["name"] for v in views)],
        service_features=[*(f"model_inputs({v['name']})" for v in views), f"{p}_request_features"],
    )


def _flow_source(module: str) -> Path:
    """The file of mlcycle's generic flow ``module`` inside the installed package (a wheel's
    site-packages or a checkout's src/), found from the root package so nothing above is imported."""
    import importlib.resources

    root = importlib.resources.files("mlcycle")
    return Path(str(root / FLOWS_PACKAGE.rpartition(".")[2] / f"{module}.py"))


def _prefect_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prefect")
    except PackageNotFoundError:
        return None


def _prefect_yaml(
    project: str, *, own_flows: bool, names: dict[str, str], parameters: dict[str, str], model_name: str | None
) -> str:
    """prefect.yaml: mlcycle's flows as deployments, of an init project or of the reference one.

    An init project's entrypoints are module paths into the installed package (no colon, so Prefect 3
    imports ``mlcycle.flows.training.train`` instead of loading a file relative to the project: a newer
    mlcycle fixes every project); the reference project's are its own ``flows/<module>.py`` files.
    Deployment names are unique per flow on a Prefect server, so an init project's are all its own
    name (``train/<project>``), beside the reference's ``train/train``.
    """
    entrypoints = {
        key: f"{FLOWS_DIR}/{module}.py:{function}" if own_flows else f"{FLOWS_PACKAGE}.{module}.{function}"
        for key, (module, function) in FLOWS.items()
    }
    return render(
        PREFECT_TEMPLATE,
        project=project,
        prefect_version=_prefect_version(),
        own_flows=own_flows,
        names=names,
        entrypoints=entrypoints,
        parameters=parameters,
        model_name=model_name,
        bento_name=bento_name_of(project),
    )


def _readme(plan: _Plan, source: Path) -> str:
    """README.md: what was inferred and left out, and the commands to run, in order."""
    assert plan.end is not None and plan.replay_since is not None  # set by _plan
    return render(
        README_TEMPLATE,
        **_described(plan, source),
        positive_class=repr(plan.spec.positive_label),
        replay_since=f"{plan.replay_since:%Y-%m-%d}",
        first_day=f"{plan.end - plan.span:%Y-%m-%d}",
        last_day=f"{plan.end:%Y-%m-%d}",
        request_fields=plan.request_fields,
        model_features=plan.model_features,
        aggregations=bool(plan.aggregations),
        last_event_suffix=LAST_EVENT_SUFFIX,
        recency_suffix=RECENCY_SUFFIX,
        flows_package=FLOWS_PACKAGE,
        flows_dir=FLOWS_DIR,
        prefect_file=PREFECT_FILE,
        left_out=plan.left_out,
        notes=plan.notes,
    )


def reference_files(root: str | Path = ".") -> dict[Path, str]:
    """The files of the reference project at ``root`` that init's own templates render, path →
    text: its Feast configs (both profiles) and prefect.yaml. One template for both keeps them from
    drifting apart; a test holds the committed files equal to this. The reference's deployments are
    its ``flows/<module>.py`` files, named for their flow (``train/train``, ``batch_score/batch-score``),
    run with its mlcycle.yaml by default (no parameters), and ``retrain`` starts on any model's events."""
    root = Path(root)
    project = yaml.safe_load((root / CONFIG_NAME).read_text())["project"]
    files = {
        root / FEATURE_REPO / file: render(FEATURE_STORE_TEMPLATE, project=project, scale=scale)
        for scale, file in FEATURE_STORE_FILES.items()
    }
    names = {key: key.replace("_", "-") for key in FLOWS}
    files[root / PREFECT_FILE] = _prefect_yaml(project, own_flows=True, names=names, parameters={}, model_name=None)
    return files


def write_reference_files(root: str | Path = ".") -> list[Path]:
    """Write :func:`reference_files` over the committed ones (after a template changes); the paths written."""
    files = reference_files(root)
    for path, text in files.items():
        path.write_text(text)
    return list(files)


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

    Raises :class:`~mlcycle.project.contract_inference.TableError` for a table that cannot carry the
    lifecycle (naming the column and the fix) and :class:`InitError` for arguments or a target
    directory that cannot be used (:class:`TargetNotEmpty` when it holds files and ``force`` is
    false). On any error nothing is written: the target is absent or as it was.
    """
    from mlcycle.project.bentofile import BENTOFILE, bentofile_yaml
    from mlcycle.project.config import ConfigError, load_config
    from mlcycle.project.slo_rules import RULES_FILE, rules_yaml
    from mlcycle.project.workflow import WORKFLOW_FILE, workflow_yaml

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
        try:
            (tmp / CONFIG_NAME).write_text(_config_text(plan, source))
            for scale, file in FEATURE_STORE_FILES.items():
                (tmp / FEATURE_REPO / file).write_text(render(FEATURE_STORE_TEMPLATE, project=project, scale=scale))
            features = _features_py(plan, source)
            compile(features, FEATURES_FILE, "exec")  # a syntax error here is init's bug: caught before writing
            (tmp / FEATURE_REPO / FEATURES_FILE).write_text(features)
            prefect = _prefect_yaml(
                project,
                own_flows=False,
                names=dict.fromkeys(FLOWS, project),
                parameters={"config": CONFIG_NAME},
                model_name=_model_name(project),
            )
            _check_prefect_yaml(yaml.safe_load(prefect))  # init's bug if not: caught before writing
            (tmp / PREFECT_FILE).write_text(prefect)
            (tmp / "README.md").write_text(_readme(plan, source))
            (tmp / WORKFLOW_FILE).parent.mkdir(parents=True)  # CI/CD: `mlcycle ci` on PRs, main → canary
            (tmp / WORKFLOW_FILE).write_text(workflow_yaml(project, generator=False))
        except TemplateError as exc:  # a template of the installed package that cannot be rendered
            raise InitError(f"a project file could not be rendered: {exc.message}", None, exc.fix) from exc
        (tmp / ".gitignore").write_text("data/\n__pycache__/\n")
        try:
            cfg = load_config(tmp / CONFIG_NAME)
        except ConfigError as exc:  # init's own bug, or a config change it does not know yet
            raise InitError(f"the generated config does not validate: {exc}", None, "report this as a bug") from None
        try:  # from the validated config: what the Bento carries is what the config names
            (tmp / BENTOFILE).write_text(bentofile_yaml(cfg))
            (tmp / RULES_FILE).parent.mkdir(parents=True)  # serving.slo as Prometheus rules
            (tmp / RULES_FILE).write_text(rules_yaml(cfg))
        except TemplateError as exc:
            raise InitError(f"a project file could not be rendered: {exc.message}", None, exc.fix) from exc
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
