"""Evaluation: metrics overall and per slice, and single-row inference latency.

Slices are where an average hides harm. The project declares them (``table.slices``: a column's
values as groups, or a numeric column cut into named bins) and names its protected attribute
(``table.protected``), which is always a slice too, for the fairness gate. A slice too small to
measure says so (``n``, ``positives``) instead of reporting a noisy number as if it were one.

Two task types: binary classification (scores are probabilities of the positive class, judged at a
decision threshold) and regression (scores are predicted values; errors are prediction − label).
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from mlcycle.project.config import SliceSpec, slice_specs
from mlcycle.stats import descending, ranking_metrics_ranked

Task = Literal["classification", "regression"]
UNKNOWN = "unknown"  # the group of rows whose slicing value is missing


@dataclass(frozen=True)
class Metrics:
    n: int
    positives: int
    roc_auc: float | None
    pr_auc: float | None
    accuracy: float
    precision: float | None
    recall: float | None  # = true-positive rate
    f1: float | None
    fpr: float | None
    brier: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ranked_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> Metrics:
    """Classification metrics at ``threshold`` of rows already ranked by descending score
    (``mlcycle.stats.descending``): the ROC-AUC and PR-AUC come from one pass over them, and the
    counts at the threshold do not care about the order."""
    y = np.asarray(y).astype(int)
    scores = np.asarray(scores, dtype=float)
    pred = scores >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    tn = int((~pred & (y == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if recall == 0 else None)
    roc_auc, pr_auc = ranking_metrics_ranked(y, scores)
    return Metrics(
        n=len(y),
        positives=int(y.sum()),
        roc_auc=roc_auc,
        pr_auc=pr_auc,
        accuracy=(tp + tn) / len(y) if len(y) else float("nan"),
        precision=precision,
        recall=recall,
        f1=f1,
        fpr=fp / (fp + tn) if fp + tn else None,
        brier=float(np.mean((scores - y) ** 2)) if len(y) else float("nan"),
    )


@dataclass(frozen=True)
class RegressionMetrics:
    """Errors of a regression (error = prediction − label). ``sq_error_sd`` and ``abs_error_sd``
    (sample standard deviations of the squared and absolute errors) are what intervals on RMSE and
    MAE are built from (mlcycle.stats); None below two rows."""

    n: int
    mean_label: float | None
    rmse: float | None
    mae: float | None
    r2: float | None  # None when the label is constant (no variance to explain) or n < 2
    sq_error_sd: float | None = None
    abs_error_sd: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def regression_metrics(y: np.ndarray, predictions: np.ndarray) -> RegressionMetrics:
    y = np.asarray(y, dtype=float)
    pred = np.asarray(predictions, dtype=float)
    n = len(y)
    if n == 0:
        return RegressionMetrics(0, None, None, None, None)
    err = pred - y
    sq, ab = err * err, np.abs(err)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return RegressionMetrics(
        n=n,
        mean_label=float(y.mean()),
        rmse=math.sqrt(float(sq.mean())),
        mae=float(ab.mean()),
        r2=1.0 - float(sq.sum()) / ss_tot if n > 1 and ss_tot > 0 else None,
        sq_error_sd=float(sq.std(ddof=1)) if n > 1 else None,
        abs_error_sd=float(ab.std(ddof=1)) if n > 1 else None,
    )


def _bin_labels(spec: SliceSpec) -> list[str]:
    if spec.labels is not None:
        return list(spec.labels)
    edges = list(spec.bins or [])
    return [f"[{a:g}, {b:g})" for a, b in itertools.pairwise(edges)]


def _slice_values(frame: pd.DataFrame, spec: SliceSpec) -> pd.Series:
    """One slice's group per row, as text; a missing value (or one outside every bin) is ``unknown``."""
    if spec.column not in frame:
        raise ValueError(
            f"evaluation slice {spec.key!r}: column {spec.column!r} is not in the evaluation rows "
            f"(they have: {', '.join(map(str, list(frame.columns)[:30]))}); fix table.slices / table.protected"
        )
    values = frame[spec.column]
    if spec.bins is not None:
        numeric = pd.to_numeric(values, errors="coerce")
        groups = pd.cut(numeric, spec.bins, labels=_bin_labels(spec), right=False)
        return groups.astype(object).where(groups.notna(), UNKNOWN).astype(str)
    return values.astype(object).where(values.notna(), UNKNOWN).astype(str)


def slice_columns(frame: pd.DataFrame, slices: Sequence[SliceSpec] = (), protected: str | None = None) -> pd.DataFrame:
    """The slicing groups of each row, one column per slice (``SliceSpec.key``): a numeric column
    with ``bins`` is cut into left-closed bins named by ``labels`` (default ``[a, b)``); any other
    column gives its values as text; a missing value is ``unknown``. The protected attribute is
    always a slice (``slice_specs``). A slice column the rows lack is an error naming it."""
    specs = slice_specs(slices, protected)
    return pd.DataFrame({s.key: _slice_values(frame, s) for s in specs}, index=frame.index)


def metric_safe(label: str) -> str:
    """A slice label MLflow accepts in a metric name ("65+" → "65plus", "<20" → "lt20")."""
    text = label.replace("+", "plus").replace("<", "lt").replace(">", "gt")
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", text)


SLICE_KEYS: dict[str, tuple[str, ...]] = {
    "classification": ("n", "positives", "roc_auc", "pr_auc", "precision", "recall", "fpr"),
    "regression": ("n", "mean_label", "rmse", "mae", "r2"),
}
OVERALL_SKIP: dict[str, tuple[str, ...]] = {"classification": (), "regression": ("sq_error_sd", "abs_error_sd")}


@dataclass
class EvaluationReport:
    threshold: float  # classification's decision threshold; NaN for regression (no decision)
    overall: Metrics | RegressionMetrics
    slices: dict[str, dict[str, Metrics | RegressionMetrics]]
    latency_ms: dict[str, float] = field(default_factory=dict)
    # The rows' labels and scores, kept in memory (never logged) so that two models evaluated on
    # the same rows can be compared pairwise (mlcycle.gates: DeLong on the ROC-AUC difference, or
    # the paired difference of squared errors).
    labels: np.ndarray | None = field(default=None, repr=False, compare=False)
    scores: np.ndarray | None = field(default=None, repr=False, compare=False)
    task: Task = "classification"

    def flat_metrics(self, prefix: str = "") -> dict[str, float]:
        """MLflow-ready ``{name: value}``: overall as ``test.roc_auc`` (``test.rmse``), slices as
        ``slice.<attribute>.<group>.recall``; missing values are left out rather than logged as 0.
        Regression has no threshold, so none is logged."""
        out: dict[str, float] = {}
        skip = OVERALL_SKIP[self.task]
        for key, value in self.overall.as_dict().items():
            if value is not None and key not in skip:
                out[f"{prefix}test.{key}"] = float(value)
        for attribute, groups in self.slices.items():
            for group, m in groups.items():
                for key in SLICE_KEYS[self.task]:
                    value = getattr(m, key)
                    if value is not None:
                        out[f"{prefix}slice.{attribute}.{metric_safe(group)}.{key}"] = float(value)
        for key, value in self.latency_ms.items():
            out[f"{prefix}latency_ms.{key}"] = value
        if self.task == "classification":
            out[f"{prefix}threshold"] = self.threshold
        return out

    def slice_table(self) -> pd.DataFrame:
        rows = [
            {"attribute": a, "group": g, **m.as_dict()} for a, groups in self.slices.items() for g, m in groups.items()
        ]
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "threshold": self.threshold,
            "overall": self.overall.as_dict(),
            "slices": {a: {g: m.as_dict() for g, m in groups.items()} for a, groups in self.slices.items()},
            "latency_ms": self.latency_ms,
        }


def evaluate(
    frame: pd.DataFrame,
    scores: np.ndarray,
    label: str,
    threshold: float,
    *,
    task: Task = "classification",
    slices: Sequence[SliceSpec] = (),
    protected: str | None = None,
) -> EvaluationReport:
    """Metrics of ``scores`` against ``frame[label]``, overall and per group of every slice (the
    declared ``slices`` and the ``protected`` attribute). Classification judges decisions at
    ``threshold``; regression ignores it (the report's threshold is NaN)."""
    if task not in SLICE_KEYS:
        raise ValueError(f"unknown task {task!r}: expected classification or regression")
    y = frame[label].to_numpy()
    scores = np.asarray(scores, float)
    if task == "regression":
        threshold = math.nan
    groups_of = slice_columns(frame, slices, protected)
    # Classification ranks the rows once; every slice's group is taken in that order, so it is
    # ranked too (regression needs no order, and takes the identity).
    order = descending(scores) if task == "classification" else np.arange(len(y))
    y_r, s_r = y[order], scores[order]

    def measured(rows: np.ndarray) -> Metrics | RegressionMetrics:
        if task == "regression":
            return regression_metrics(y_r[rows], s_r[rows])
        return _ranked_metrics(y_r[rows], s_r[rows], threshold)

    by_slice: dict[str, dict[str, Metrics | RegressionMetrics]] = {}
    for attribute in groups_of.columns:
        codes, names = pd.factorize(groups_of[attribute].to_numpy()[order])
        by_slice[attribute] = {str(names[k]): measured(codes == k) for k in np.argsort(names.astype(str))}
    overall = measured(np.ones(len(y), dtype=bool))
    return EvaluationReport(threshold, overall, by_slice, labels=np.asarray(y), scores=scores, task=task)


def single_row_latency(
    predict_one: Callable[[np.ndarray], Any], rows: np.ndarray, n: int = 300, rounds: int = 3
) -> dict[str, float]:
    """p50 / p99 of scoring one row at a time, in-process (what a request pays for the model).

    The median over ``rounds`` rounds: on a shared machine one round's p99 can catch a burst of
    preemption that says nothing about the model."""
    for i in range(min(20, len(rows))):  # warm-up
        predict_one(rows[i : i + 1])
    p50s, p99s = [], []
    for _ in range(rounds):
        timings = np.empty(n)
        for i in range(n):
            row = rows[i % len(rows) : i % len(rows) + 1]
            t = time.perf_counter()
            predict_one(row)
            timings[i] = (time.perf_counter() - t) * 1000
        p50s.append(np.percentile(timings, 50))
        p99s.append(np.percentile(timings, 99))
    return {"p50": float(np.median(p50s)), "p99": float(np.median(p99s))}
