"""xgboost trained on a Dask cluster with its own distributed integration (``xgboost.dask``).

The training set's partitions stay on the workers that built them (``features.distributed``); each
worker builds its share of the quantile sketch and the histograms, and the booster that comes back
is a plain ``xgb.Booster``: the same flavor, the same MLflow model, the same serving as a booster
trained on one node. The recipe is ``fit.fit_xgboost``'s (weighted positives, early stopping on the
validation rows). Not bit-identical to one node: each worker sketches its own rows' quantiles and
xgboost merges the sketches, so the histogram bins, and with them the trees, differ slightly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlcycle.data import validation
from mlcycle.features import distributed as engine
from mlcycle.project.config import ModelSpec, QualitySpec, SliceSpec
from mlcycle.training.evaluation import evaluate
from mlcycle.training.fit import (
    BASELINE_SAMPLE_ROWS,
    TIME_COLUMN,
    Candidate,
    TimeSplit,
    TrainedModel,
    baseline_scores,
    fit_baseline,
    matrix,
    model_threshold,
    split_instants,
    xgboost_params,
)


def columns_of(frame: pd.DataFrame, features: list[str], label: str) -> pd.DataFrame:
    """The model's inputs as float32 and the label: what each worker keeps of its partition."""
    out = frame[features].apply(pd.to_numeric, errors="coerce").astype("float32")
    out[label] = pd.to_numeric(frame[label], errors="coerce").astype("float32")
    return out


def fit_xgboost_dask(
    client: Any, train: Any, valid: Any, features: list[str], label: str, spec: ModelSpec, valid_frame: pd.DataFrame
) -> TrainedModel:
    """``train`` and ``valid``: dask DataFrames of ``columns_of`` (persisted on the workers).
    ``valid_frame``: the validation rows in one frame, for the decision threshold (small: it is the
    validation slice, not the table)."""
    import xgboost as xgb
    import xgboost.dask  # registers xgb.dask

    positives = float(train[label].sum().compute())
    rows = int(train.shape[0].compute())
    params = xgboost_params(spec.xgboost, spec.seed, (rows - positives) / max(positives, 1.0))
    # Each worker trains with the threads Dask gives it: model.xgboost.nthread is one machine's
    # setting, and on a worker of one thread it would oversubscribe the cores (the trees do not change).
    params["nthread"] = max(1, min(client.nthreads().values()))
    dtrain = xgb.dask.DaskQuantileDMatrix(client, train[features], train[label], feature_names=features)
    dvalid = xgb.dask.DaskQuantileDMatrix(client, valid[features], valid[label], feature_names=features, ref=dtrain)
    out = xgb.dask.train(client, params, dtrain, num_boost_round=spec.xgboost.num_boost_round,
                         evals=[(dvalid, "valid")], early_stopping_rounds=spec.xgboost.early_stopping_rounds,
                         verbose_eval=False)  # fmt: skip
    booster = out["booster"]
    best = int(booster.best_iteration)
    booster = booster[: best + 1]
    from mlcycle import flavors

    model = TrainedModel(booster, features, 0.5, params, best, out["history"].get("valid", {}), flavors.XGBoostFlavor())
    scores = model.predict(valid_frame)
    model.threshold = model_threshold(
        valid_frame[label].to_numpy(), np.asarray(scores), spec.threshold, "classification"
    )
    return model


# --- the candidate, trained where its partitions are ------------------------------------------------


def _pinned(client: Any, fn: Any, parts: list[Any], owners: list[str], *args: Any) -> list[Any]:
    """``fn(part, *args)`` on each part's own worker: nothing moves, and the same rows stay on the
    same ranks from one run to the next (xgboost.dask's result depends on which rows each rank sketches)."""
    return [client.submit(fn, part, *args, workers=[owner], allow_other_workers=False, pure=False)
            for part, owner in zip(parts, owners, strict=True)]  # fmt: skip


def _times(frame: pd.DataFrame) -> pd.Series:
    return frame[TIME_COLUMN]


def _rows_between(frame: pd.DataFrame, low: pd.Timestamp | None, high: pd.Timestamp | None) -> pd.DataFrame:
    ts = frame[TIME_COLUMN]
    keep = np.ones(len(frame), dtype=bool)
    if low is not None:
        keep &= (ts >= low).to_numpy()
    if high is not None:
        keep &= (ts < high).to_numpy()
    return frame[keep]


def _model_columns(
    frame: pd.DataFrame, low: pd.Timestamp | None, high: pd.Timestamp | None, features: list[str], label: str
) -> pd.DataFrame:
    return columns_of(_rows_between(frame, low, high), features, label)


def _stats(frame: pd.DataFrame, features: list[str], label: str, take: int, seed: int) -> validation.TrainingSetStats:
    positions = np.arange(len(frame))
    if take < len(frame):
        positions = np.sort(np.random.default_rng(seed).choice(len(frame), take, replace=False))
    return validation.training_set_stats(frame, features, label, positions)


def _baseline_sample(frame: pd.DataFrame, high: pd.Timestamp, features: list[str], label: str, share: float,
                     seed: int) -> pd.DataFrame:  # fmt: skip
    rows = _rows_between(frame, None, high)[[*features, label]]
    return rows if share >= 1 else rows.sample(frac=share, random_state=seed)


def part_rows(client: Any, parts: list[Any], owners: list[str]) -> list[int]:
    """Rows per partition (the snapshot records them: a reproduction cuts the same partitions)."""
    return [int(n) for n in engine.gather(client, _pinned(client, len, parts, owners), owners)]


def check_on_cluster(
    client: Any, parts: list[Any], owners: list[str], features: list[str], label: str, spec: QualitySpec
) -> Any:
    """The training-set checks of ``validation.check_training_set`` from per-partition statistics; the
    leak check's sample is drawn from each partition in proportion to its rows (seeded by its index)."""
    sizes = part_rows(client, parts, owners)
    total = sum(sizes)
    takes = [n if total <= validation.LEAK_SAMPLE_ROWS else round(validation.LEAK_SAMPLE_ROWS * n / total)
             for n in sizes]  # fmt: skip
    stats = engine.gather(client, [
        client.submit(_stats, part, features, label, take, k, workers=[owner], allow_other_workers=False, pure=False)
        for k, (part, owner, take) in enumerate(zip(parts, owners, takes, strict=True))
    ], owners)  # fmt: skip
    return validation.training_set_verdict(validation.merge_training_set_stats(stats), label, spec)


def train_candidate_on_cluster(
    client: Any,
    parts: list[Any],
    owners: list[str],
    features: list[str],
    spec: ModelSpec,
    *,
    label: str,
    slices: Sequence[SliceSpec] = (),
    protected: str | None = None,
) -> Candidate:
    """``fit.train_candidate`` on a training set held on the cluster: the same time split (its
    instants from the timestamp column alone), the booster trained by ``xgboost.dask`` on the
    training rows where they are, the baseline on a seeded sample of them. The driver holds the
    timestamp column, the validation and test slices (for the threshold, the evaluation and the
    gates) and the baseline's sample; the training slice never leaves the workers."""
    import dask.dataframe as dd

    stamps = pd.concat(engine.gather(client, _pinned(client, _times, parts, owners), owners), ignore_index=True)
    valid_start, test_start = split_instants(stamps, spec.valid_fraction, spec.test_fraction)
    train_stamps = stamps[stamps < valid_start]
    valid = pd.concat(engine.gather(client, _pinned(client, _rows_between, parts, owners, valid_start, test_start),
                                    owners), ignore_index=True)  # fmt: skip
    test = pd.concat(engine.gather(client, _pinned(client, _rows_between, parts, owners, test_start, None), owners),
                     ignore_index=True)  # fmt: skip
    for name, rows in (("train", train_stamps), ("valid", valid), ("test", test)):
        if rows.empty:
            raise ValueError(f"time split left the {name} slice empty ({len(stamps)} rows in all)")
    meta = columns_of(valid.head(0), features, label)
    train_parts = _pinned(client, _model_columns, parts, owners, None, valid_start, features, label)
    valid_parts = _pinned(client, _model_columns, parts, owners, valid_start, test_start, features, label)
    train = dd.from_delayed(train_parts, meta=meta, verify_meta=False)
    valid_dd = dd.from_delayed(valid_parts, meta=meta, verify_meta=False)
    model = engine.watched(client, owners, fit_xgboost_dask, client, train, valid_dd, features, label, spec, valid)
    where = {"task": "classification", "slices": slices, "protected": protected}
    report = evaluate(test, model.predict(test), label, model.threshold, **where)  # type: ignore[arg-type]
    share = min(1.0, BASELINE_SAMPLE_ROWS / max(len(train_stamps), 1))
    sample = pd.concat(
        engine.gather(client, [
            client.submit(_baseline_sample, part, valid_start, features, label, share, spec.seed + k,
                          workers=[owner], allow_other_workers=False, pure=False)
            for k, (part, owner) in enumerate(zip(parts, owners, strict=True))
        ], owners), ignore_index=True,
    )  # fmt: skip
    baseline = fit_baseline(sample, features, label, spec.seed)
    valid_scores = baseline_scores(baseline, matrix(valid, features))
    base_threshold = model_threshold(valid[label].to_numpy(), valid_scores, spec.threshold, "classification")
    test_scores = baseline_scores(baseline, matrix(test, features))
    baseline_report = evaluate(test, test_scores, label, base_threshold, **where)  # type: ignore[arg-type]
    # The training slice as the run records it (its rows and time window): its timestamps only.
    split = TimeSplit(train_stamps.to_frame(TIME_COLUMN), valid, test, valid_start, test_start)
    return Candidate(model, baseline, split, report, baseline_report)
