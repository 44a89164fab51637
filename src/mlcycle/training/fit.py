"""Training: split by time, fit the project's model flavor (and a linear baseline beside it), pick a threshold.

Time is explicit. The training set is cut at two instants: the model learns on the past, stops
early and picks its threshold on the slice after it, and is evaluated on the latest slice — the
same order in which it will meet data in production. No random shuffle crosses time.

Two tasks. Classification: scores are probabilities of the positive class, a decision threshold is
chosen (or fixed), the baseline is a logistic regression. Regression: scores are predicted values,
there is no threshold (NaN is recorded, never a max-F1 search), the baseline is a ridge regression.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import precision_recall_curve
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlcycle import flavors
from mlcycle.project.config import ModelSpec, SliceSpec, XGBoostParams
from mlcycle.training.evaluation import EvaluationReport, evaluate, single_row_latency

Task = Literal["classification", "regression"]
TIME_COLUMN = "event_timestamp"
BASELINE_SAMPLE_ROWS = 100_000
NO_THRESHOLD = math.nan  # a regression's threshold: it makes no decision


@dataclass(frozen=True)
class TimeSplit:
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    valid_start: pd.Timestamp
    test_start: pd.Timestamp

    def describe(self) -> dict[str, Any]:
        def window(df: pd.DataFrame) -> dict[str, Any]:
            return {
                "rows": len(df),
                "from": str(df[TIME_COLUMN].min()),
                "to": str(df[TIME_COLUMN].max()),
            }

        return {"train": window(self.train), "valid": window(self.valid), "test": window(self.test)}


def split_instants(ts: pd.Series, valid_fraction: float, test_fraction: float) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Where the validation and the test slices start: time quantiles of the rows' timestamps (the
    cluster engine computes them from the timestamp column alone, the same way)."""
    return pd.Timestamp(ts.quantile(1 - valid_fraction - test_fraction)), pd.Timestamp(ts.quantile(1 - test_fraction))


def split_by_time(frame: pd.DataFrame, valid_fraction: float, test_fraction: float) -> TimeSplit:
    """Cut at time quantiles; rows at one instant all fall on the same side of a cut."""
    ts = frame[TIME_COLUMN]
    valid_start, test_start = split_instants(ts, valid_fraction, test_fraction)
    train = frame[ts < valid_start]
    valid = frame[(ts >= valid_start) & (ts < test_start)]
    test = frame[ts >= test_start]
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        if part.empty:
            raise ValueError(f"time split left the {name} slice empty ({len(frame)} rows in all)")
    return TimeSplit(train, valid, test, pd.Timestamp(valid_start), pd.Timestamp(test_start))


def matrix(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """The model's input: features in the recorded order, as float32 with NaN for missing.

    Numeric columns (the usual case) convert in one step; a column of Python objects (an online
    response) is parsed as numbers first."""
    sub = frame[features]
    if all(pd.api.types.is_numeric_dtype(dtype) for dtype in sub.dtypes):
        return sub.to_numpy(dtype=np.float32, na_value=np.nan)
    return sub.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32, na_value=np.nan)


@dataclass
class TrainedModel:
    """A fitted model of any flavor (an ``xgb.Booster``, a scikit-learn estimator…) with what the
    lifecycle records beside it. ``flavor`` scores it; ``best_iteration`` is for early-stopped flavors."""

    model: Any
    features: list[str]
    threshold: float  # NaN for regression
    params: dict[str, Any]
    best_iteration: int | None
    history: dict[str, list[float]] = field(default_factory=dict)
    flavor: flavors.Flavor = field(default_factory=flavors.XGBoostFlavor)
    task: Task = "classification"

    @property
    def trained_rounds(self) -> int | None:
        """Rounds actually boosted (early stopping included), before the trees were cut back."""
        if self.best_iteration is None:
            return None
        return max((len(v) for v in self.history.values()), default=self.best_iteration + 1)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.flavor.predict(self.model, matrix(frame, self.features))


def model_flavor(spec: ModelSpec) -> flavors.Flavor:
    """The flavor the config names, with its estimator and allowlist."""
    return flavors.flavor_for(spec.flavor, estimator=spec.estimator, allowed_prefixes=spec.allowed_prefixes)


def for_single_rows(flavor: flavors.Flavor, model: Any) -> Any:
    """The model as a server scoring single rows should hold it: an xgboost Booster runs one thread
    per prediction (OpenMP workers that spin after each call compete with request handling on a
    small machine). Other flavors are returned as they are. A Booster is copied, not changed."""
    if flavor.name == "xgboost":
        model = model.copy()
        model.set_param({"nthread": 1})
    return model


def xgboost_params(
    p: XGBoostParams, seed: int, pos_weight: float = 1.0, task: Task = "classification"
) -> dict[str, Any]:
    """Booster parameters. Regression: squared error, early-stopped on RMSE, no class weight."""
    common = {
        "tree_method": "hist",
        "max_depth": p.max_depth,
        "eta": p.learning_rate,
        "subsample": p.subsample,
        "colsample_bytree": p.colsample_bytree,
        "min_child_weight": p.min_child_weight,
        "nthread": p.nthread,
        "seed": seed,
    }
    if task == "regression":
        return {"objective": "reg:squarederror", "eval_metric": ["rmse"], **common}
    return {
        "objective": "binary:logistic",
        "eval_metric": ["aucpr", "auc"],
        **common,
        # Positives are rare: weigh them up, but only by the square root of the imbalance, which
        # keeps scores closer to probabilities (the Brier score is a tracked metric).
        "scale_pos_weight": float(np.sqrt(pos_weight)),
    }


def fit_xgboost(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    features: list[str],
    label: str,
    spec: ModelSpec,
    task: Task = "classification",
) -> TrainedModel:
    y_train = train[label].to_numpy()
    if task == "regression":
        params = xgboost_params(spec.xgboost, spec.seed, task=task)
    else:
        positives = max(int(y_train.sum()), 1)
        params = xgboost_params(spec.xgboost, spec.seed, (len(y_train) - positives) / positives)
    dtrain = xgb.DMatrix(matrix(train, features), label=y_train, feature_names=features)
    dvalid = xgb.DMatrix(matrix(valid, features), label=valid[label].to_numpy(), feature_names=features)
    history: dict[str, dict[str, list[float]]] = {}
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=spec.xgboost.num_boost_round,
        evals=[(dvalid, "valid")],
        early_stopping_rounds=spec.xgboost.early_stopping_rounds,
        evals_result=history,
        verbose_eval=False,
    )
    best = int(booster.best_iteration)
    booster = booster[: best + 1]  # keep only the trees up to the best round
    model = TrainedModel(booster, features, 0.5, params, best, history.get("valid", {}), flavors.XGBoostFlavor(), task)
    model.threshold = model_threshold(valid[label].to_numpy(), model.predict(valid), spec.threshold, task)
    return model


def model_threshold(y: np.ndarray, scores: np.ndarray, rule: float | str, task: Task) -> float:
    """Classification: ``choose_threshold``; regression: NaN (no decision, nothing searched)."""
    return NO_THRESHOLD if task == "regression" else choose_threshold(y, scores, rule)


def fit_model(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    features: list[str],
    label: str,
    spec: ModelSpec,
    task: Task = "classification",
) -> TrainedModel:
    """Fit the flavor the config names. xgboost keeps its own recipe (``fit_xgboost``: for
    classification weighted positives and aucpr early stopping, for regression squared error and
    RMSE early stopping); other flavors fit through ``Flavor.fit`` with the config's ``model.params``."""
    flavor = model_flavor(spec)
    if flavor.name == "xgboost":
        return fit_xgboost(train, valid, features, label, spec, task)
    fitted = flavor.fit(
        matrix(train, features),
        train[label].to_numpy(),
        matrix(valid, features),
        valid[label].to_numpy(),
        dict(spec.params),
        spec.seed,
        task,
        feature_names=features,
    )
    model = TrainedModel(fitted.model, features, 0.5, fitted.params, fitted.best_iteration, fitted.history, flavor,
                         task)  # fmt: skip
    model.threshold = model_threshold(valid[label].to_numpy(), model.predict(valid), spec.threshold, task)
    return model


def choose_threshold(y: np.ndarray, scores: np.ndarray, rule: float | str) -> float:
    """A fixed threshold, or the one that maximises F1 on the given (validation) slice."""
    if not isinstance(rule, str):
        return float(rule)
    precision, recall, thresholds = precision_recall_curve(y, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))]) if len(thresholds) else 0.5


def fit_baseline(
    train: pd.DataFrame, features: list[str], label: str, seed: int, task: Task = "classification"
) -> Pipeline:
    """A linear model beside the project's model: what it must clearly beat — a logistic regression
    (classification) or a ridge regression (regression), on imputed, standardised inputs. Fitted on
    at most 100k rows (a seeded sample): it is a reference line, and a linear model of a few dozen
    inputs has converged long before that (200k cost a second more per training run of 1M rows)."""
    if task == "regression":
        last: tuple[str, Any] = ("ridge", Ridge(alpha=1.0))
    else:
        last = ("logit", LogisticRegression(max_iter=500, class_weight="balanced", random_state=seed))
    baseline = Pipeline(
        [("impute", SimpleImputer(strategy="median", keep_empty_features=True)), ("scale", StandardScaler()), last]
    )
    sample = train.sample(min(len(train), BASELINE_SAMPLE_ROWS), random_state=seed)
    baseline.fit(matrix(sample, features), sample[label].to_numpy())
    return baseline


def baseline_parameters(baseline: Pipeline, features: list[str]) -> dict[str, Any]:
    """The fitted linear baseline in full, as plain numbers: per feature the imputed median, the
    standardisation and the coefficient, plus the intercept. The baseline is a reference line,
    never served: recorded this way it can be read (which features a linear model leans on) and
    recomputed by hand, with no serialised estimator to trust — skops alone took 2 s to import."""
    impute, scale, last = (step for _, step in baseline.steps)
    coef = np.ravel(last.coef_)
    return {
        "model": type(last).__name__,
        "intercept": float(np.ravel(last.intercept_)[0]),
        "features": {
            name: {
                "median": float(impute.statistics_[i]),
                "mean": float(scale.mean_[i]),
                "scale": float(scale.scale_[i]),
                "coefficient": float(coef[i]),
            }
            for i, name in enumerate(features)
        },
    }


def baseline_scores(baseline: Pipeline, X: np.ndarray, task: Task = "classification") -> np.ndarray:
    """The baseline's scores: P(positive class), or the predicted value."""
    if task == "regression":
        return np.asarray(baseline.predict(X), dtype=float)
    return baseline.predict_proba(X)[:, 1]


@dataclass
class Candidate:
    """A trained model with its evaluation, and the baseline beside it."""

    model: TrainedModel
    baseline: Pipeline
    split: TimeSplit
    report: EvaluationReport
    baseline_report: EvaluationReport


def train_candidate(
    frame: pd.DataFrame,
    features: list[str],
    spec: ModelSpec,
    *,
    label: str,
    task: Task = "classification",
    slices: Sequence[SliceSpec] = (),
    protected: str | None = None,
) -> Candidate:
    """Split by time, fit, evaluate on the latest slice (overall, per declared slice and per group
    of the protected attribute). Deterministic for a frame and a spec (``mlcycle reproduce`` relies
    on it); latency is measured separately, as it is not. ``label``, ``task``, ``slices`` and
    ``protected`` are the project's (``cfg.table.label``, ``cfg.task``, ``cfg.table.slices``,
    ``cfg.table.protected``)."""
    split = split_by_time(frame, spec.valid_fraction, spec.test_fraction)
    model = fit_model(split.train, split.valid, features, label, spec, task)
    where = {"task": task, "slices": slices, "protected": protected}
    report = evaluate(split.test, model.predict(split.test), label, model.threshold, **where)
    baseline = fit_baseline(split.train, features, label, spec.seed, task)
    valid_scores = baseline_scores(baseline, matrix(split.valid, features), task)
    base_threshold = model_threshold(split.valid[label].to_numpy(), valid_scores, spec.threshold, task)
    test_scores = baseline_scores(baseline, matrix(split.test, features), task)
    baseline_report = evaluate(split.test, test_scores, label, base_threshold, **where)
    return Candidate(model, baseline, split, report, baseline_report)


def measure_latency(candidate: Candidate) -> dict[str, float]:
    """Single-row latency as the service pays it: one thread per prediction (the service's boosters
    run with nthread=1). With all cores, OpenMP's thread hand-off dominates one row and its tail
    follows whatever else the machine runs: 0.4 ms idle, 28 ms beside a canary's traffic."""
    model = candidate.model
    rows = matrix(candidate.split.test, model.features)
    held = for_single_rows(model.flavor, model.model)
    latency = single_row_latency(lambda row: model.flavor.predict(held, row), rows)
    candidate.report.latency_ms = latency
    return latency
