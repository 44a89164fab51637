"""xgboost trained on a Dask cluster with its own distributed integration (``xgboost.dask``).

The training set's partitions stay on the workers that built them (``features.distributed``); each
worker builds its share of the quantile sketch and the histograms, and the booster that comes back
is a plain ``xgb.Booster``: the same flavor, the same MLflow model, the same serving as a booster
trained on one node. The recipe is ``fit.fit_xgboost``'s (weighted positives, early stopping on the
validation rows). Not bit-identical to one node: each worker sketches its own rows' quantiles and
xgboost merges the sketches, so the histogram bins, and with them the trees, differ slightly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlcycle.project.config import ModelSpec
from mlcycle.training.fit import TrainedModel, model_threshold, xgboost_params


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
