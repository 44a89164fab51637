"""Evaluation: metrics overall and per slice, and single-row inference latency.

Slices are where an average hides harm: by the protected attribute (age band), by amount band and
for new vs established users. A slice too small to measure says so (``n``, ``positives``) instead
of reporting a noisy number as if it were one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    roc_auc_score,
)

AMOUNT_BANDS = [0, 20, 100, 500, np.inf]
AMOUNT_LABELS = ["<20", "20-100", "100-500", "500+"]
NEW_USER_DAYS = 30


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


def metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> Metrics:
    y = np.asarray(y).astype(int)
    scores = np.asarray(scores, dtype=float)
    pred = scores >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    tn = int((~pred & (y == 0)).sum())
    both = 0 < y.sum() < len(y)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if recall == 0 else None)
    return Metrics(
        n=len(y),
        positives=int(y.sum()),
        roc_auc=float(roc_auc_score(y, scores)) if both else None,
        pr_auc=float(average_precision_score(y, scores)) if both else None,
        accuracy=(tp + tn) / len(y) if len(y) else float("nan"),
        precision=precision,
        recall=recall,
        f1=f1,
        fpr=fp / (fp + tn) if fp + tn else None,
        brier=float(brier_score_loss(y, scores)) if len(y) else float("nan"),
    )


def slice_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The slicing attributes of each row, from columns every training set carries."""
    age = frame["age_band"] if "age_band" in frame else pd.Series(None, index=frame.index)
    account_age = pd.to_numeric(frame.get("account_age_days"), errors="coerce")
    return pd.DataFrame(
        {
            "age_band": age.astype(object).where(age.notna(), "unknown").astype(str),
            "amount_band": pd.cut(frame["amount"], AMOUNT_BANDS, labels=AMOUNT_LABELS, right=False).astype(str),
            "user_tenure": np.where(account_age < NEW_USER_DAYS, "new", "established"),
        },
        index=frame.index,
    )


def metric_safe(label: str) -> str:
    """A slice label MLflow accepts in a metric name ("65+" → "65plus", "<20" → "lt20")."""
    text = label.replace("+", "plus").replace("<", "lt").replace(">", "gt")
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", text)


@dataclass
class EvaluationReport:
    threshold: float
    overall: Metrics
    slices: dict[str, dict[str, Metrics]]
    latency_ms: dict[str, float] = field(default_factory=dict)
    # The rows' labels and scores, kept in memory (never logged) so that two models evaluated on
    # the same rows can be compared pairwise (mlcycle.gates: DeLong on the ROC-AUC difference).
    labels: np.ndarray | None = field(default=None, repr=False, compare=False)
    scores: np.ndarray | None = field(default=None, repr=False, compare=False)

    def flat_metrics(self, prefix: str = "") -> dict[str, float]:
        """MLflow-ready ``{name: value}``: overall as ``test.roc_auc``, slices as
        ``slice.age_band.25-34.recall``; missing values are left out rather than logged as 0."""
        out: dict[str, float] = {}
        for key, value in self.overall.as_dict().items():
            if value is not None:
                out[f"{prefix}test.{key}"] = float(value)
        for attribute, groups in self.slices.items():
            for group, m in groups.items():
                for key in ("n", "positives", "roc_auc", "pr_auc", "precision", "recall", "fpr"):
                    value = getattr(m, key)
                    if value is not None:
                        out[f"{prefix}slice.{attribute}.{metric_safe(group)}.{key}"] = float(value)
        for key, value in self.latency_ms.items():
            out[f"{prefix}latency_ms.{key}"] = value
        out[f"{prefix}threshold"] = self.threshold
        return out

    def slice_table(self) -> pd.DataFrame:
        rows = [
            {"attribute": a, "group": g, **m.as_dict()} for a, groups in self.slices.items() for g, m in groups.items()
        ]
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "overall": self.overall.as_dict(),
            "slices": {a: {g: m.as_dict() for g, m in groups.items()} for a, groups in self.slices.items()},
            "latency_ms": self.latency_ms,
        }


def evaluate(frame: pd.DataFrame, scores: np.ndarray, label: str, threshold: float) -> EvaluationReport:
    y = frame[label].to_numpy()
    slices = slice_columns(frame)
    by_slice: dict[str, dict[str, Metrics]] = {}
    for attribute in slices.columns:
        groups = {}
        for group, idx in slices.groupby(attribute).groups.items():
            pos = frame.index.get_indexer(idx)
            groups[str(group)] = metrics(y[pos], scores[pos], threshold)
        by_slice[attribute] = dict(sorted(groups.items()))
    return EvaluationReport(threshold, metrics(y, scores, threshold), by_slice, labels=np.asarray(y),
                            scores=np.asarray(scores, float))  # fmt: skip


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
