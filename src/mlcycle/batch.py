"""Batch scoring: every transaction of a day, scored by the champion on offline features.

The features come from the same FeatureService as online scoring, through the point-in-time join
(as of each transaction), so a batch score equals what the online path would have answered then.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from mlcycle import flavors, registry
from mlcycle.config import ProjectConfig
from mlcycle.features import entity_frame, open_project_store, training_set
from mlcycle.tracking import FEATURES_TAG, THRESHOLD_TAG, load_version
from mlcycle.training import matrix
from mlcycle.validation import load_transactions


def score_frame(
    model: Any, features: list[str], threshold: float, frame: pd.DataFrame, flavor: flavors.Flavor | None = None
) -> pd.DataFrame:
    """Scores for feature rows: the model's columns in the recorded order, one prediction by the
    model's flavor (xgboost when not given: a Booster, as loaded before flavors existed)."""
    scores = (flavor or flavors.XGBoostFlavor()).predict(model, matrix(frame, features))
    return pd.DataFrame({"score": scores, "decision": scores >= threshold}, index=frame.index)


def registered_model(
    cfg: ProjectConfig, alias: str = registry.CHAMPION
) -> tuple[ModelVersion, Any, list[str], float, flavors.Flavor]:
    """The version behind ``alias`` with what scoring needs: model, feature order, threshold, flavor."""
    client = registry.client_for(cfg)
    mv = registry.version_by_alias(client, cfg.model.name, alias)
    if mv is None:
        raise RuntimeError(f"no '{alias}' alias on model '{cfg.model.name}': train and register a model first")
    flavor, model = load_version(cfg, str(mv.version))
    features = json.loads(mv.tags[FEATURES_TAG])
    threshold = float(mv.tags.get(THRESHOLD_TAG, 0.5))
    return mv, model, features, threshold, flavor


def score_day(cfg: ProjectConfig, day: date, alias: str = registry.CHAMPION) -> tuple[Path, int, str]:
    """Score the transactions of ``day`` (UTC) with the model behind ``alias``; write parquet."""
    mv, model, features, threshold, flavor = registered_model(cfg, alias)

    transactions = load_transactions(cfg.raw_dir / "transactions.parquet")
    start = pd.Timestamp(datetime.combine(day, datetime.min.time(), UTC))
    ts = transactions["event_timestamp"]
    rows = transactions[(ts >= start) & (ts < start + timedelta(days=1))]
    frame = training_set(open_project_store(cfg), entity_frame(rows), cfg.features.feature_service)
    scored = score_frame(model, features, threshold, frame, flavor)
    out = pd.DataFrame(
        {
            "transaction_id": rows["transaction_id"].to_numpy(),
            "user_id": rows["user_id"].to_numpy(),
            "merchant_id": rows["merchant_id"].to_numpy(),
            "event_timestamp": rows["event_timestamp"].to_numpy(),
            "score": scored["score"].to_numpy(),
            "decision": scored["decision"].to_numpy(),
            "model_version": str(mv.version),
            "scored_at": datetime.now(UTC),
        }
    )
    directory = cfg.data_path / "batch_scores" / f"date={day.isoformat()}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "scores.parquet"
    tmp = path.with_suffix(".parquet.tmp")
    out.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path, len(out), str(mv.version)


def backfill_prediction_log(
    cfg: ProjectConfig, start: datetime, end: datetime, alias: str = registry.CHAMPION
) -> tuple[int, str]:
    """Log what the model behind ``alias`` would have answered for the transactions in
    ``[start, end)``, at their own time: the prediction history of a model put in production
    before the first request reached this machine (the demo's past days; a backfill after an
    outage of the log). Features come through the point-in-time join, as for batch scoring, so each
    row equals the online answer at that moment; ``request_id`` starts with ``backfill-``."""
    import uuid

    from mlcycle.prediction_store import write_logged_frame

    mv, model, features, threshold, flavor = registered_model(cfg, alias)
    transactions = load_transactions(cfg.raw_dir / "transactions.parquet")
    ts = transactions["event_timestamp"]
    rows = transactions[(ts >= pd.Timestamp(start)) & (ts < pd.Timestamp(end))].reset_index(drop=True)
    if rows.empty:
        return 0, str(mv.version)
    frame = training_set(open_project_store(cfg), entity_frame(rows), cfg.features.feature_service)
    scored = score_frame(model, features, threshold, frame, flavor)
    event = rows["event_timestamp"]
    records = pd.DataFrame(
        {
            "request_id": [f"backfill-{uuid.uuid4().hex}" for _ in range(len(rows))],
            "logged_at": event.to_numpy(),
            "user_id": rows["user_id"].to_numpy(),
            "merchant_id": rows["merchant_id"].to_numpy(),
            "transaction_id": rows["transaction_id"].to_numpy(),
            "amount": rows["amount"].to_numpy(),
            "country": rows["country"].astype(str).to_numpy(),
            "merchant_category": rows["merchant_category"].astype(str).to_numpy(),
            "channel": rows["channel"].astype(object).where(rows["channel"].notna(), None).astype(object),
            "request_unix": (event.astype("int64") // 10**9).to_numpy(),
            "variant": "champion",
            "model_version": str(mv.version),
            "shadow": False,
            "score": scored["score"].to_numpy(dtype=float),
            "decision": scored["decision"].to_numpy(dtype=bool),
            "threshold": threshold,
            "features_missing": "",
            "features": frame[features].to_json(orient="records", lines=True).splitlines(),
        }
    )
    return write_logged_frame(cfg, records), str(mv.version)
