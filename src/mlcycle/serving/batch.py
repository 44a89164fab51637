"""Batch scoring: every event of a day, scored by the champion on offline features.

The features come from the same FeatureService as online scoring, through the point-in-time join
(as of each event), so a batch score equals what the online path would have answered then.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from mlcycle import flavors
from mlcycle.data.validation import load_table
from mlcycle.features import entity_frame, open_project_store, plan_for, training_set
from mlcycle.features.store import REQUEST_TIME
from mlcycle.project.config import ProjectConfig
from mlcycle.registry import aliases as registry
from mlcycle.registry.tracking import FEATURES_TAG, THRESHOLD_TAG, load_version
from mlcycle.training.fit import matrix


def score_frame(
    model: Any, features: list[str], threshold: float, frame: pd.DataFrame, flavor: flavors.Flavor | None = None
) -> pd.DataFrame:
    """Scores for feature rows: the model's columns in the recorded order, one prediction by the
    model's flavor (xgboost when not given: a Booster, as loaded before flavors existed)."""
    scores = (flavor or flavors.XGBoostFlavor()).predict(model, matrix(frame, features))
    # A regression has no threshold (NaN): no decision rather than a False one.
    decision = pd.array([None] * len(scores), dtype="boolean") if np.isnan(threshold) else scores >= threshold
    return pd.DataFrame({"score": scores, "decision": decision}, index=frame.index)


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


def _offline_rows(
    cfg: ProjectConfig, start: pd.Timestamp, end: pd.Timestamp
) -> tuple[pd.DataFrame, pd.DataFrame, list]:
    """The table's events in ``[start, end)`` and their point-in-time feature rows (same order)."""
    table = load_table(cfg)
    ts = table[cfg.table.timestamp]
    rows = table[(ts >= start) & (ts < end)].reset_index(drop=True)
    store = open_project_store(cfg)
    fields = plan_for(store, cfg.features.feature_service).request_fields
    entities = entity_frame(rows, cfg.table.entities, fields, cfg.table.timestamp)
    frame = training_set(store, entities, cfg.features.feature_service) if len(rows) else entities
    return rows, frame, [f for f in fields if f != REQUEST_TIME]


def _json_rows(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    if not columns:
        return ["{}"] * len(frame)
    return frame[columns].to_json(orient="records", lines=True, date_format="iso").splitlines()


def score_day(cfg: ProjectConfig, day: date, alias: str = registry.CHAMPION) -> tuple[Path, int, str]:
    """Score the events of ``day`` (UTC) with the model behind ``alias``; write parquet."""
    mv, model, features, threshold, flavor = registered_model(cfg, alias)

    start = pd.Timestamp(datetime.combine(day, datetime.min.time(), UTC))
    rows, frame, _ = _offline_rows(cfg, start, start + timedelta(days=1))
    scored = score_frame(model, features, threshold, frame, flavor)
    t = cfg.table
    ids = {t.event_id: rows[t.event_id].to_numpy()} if t.event_id else {}
    out = pd.DataFrame(
        {
            **ids,
            **{key: rows[key].to_numpy() for key in t.entities},
            "event_timestamp": rows[t.timestamp].to_numpy(),
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
    """Log what the model behind ``alias`` would have answered for the events in
    ``[start, end)``, at their own time: the prediction history of a model put in production
    before the first request reached this machine (the demo's past days; a backfill after an
    outage of the log). Features come through the point-in-time join, as for batch scoring, so each
    row equals the online answer at that moment; ``request_id`` starts with ``backfill-``."""
    import uuid

    from mlcycle.serving.prediction_store import write_logged_frame

    mv, model, features, threshold, flavor = registered_model(cfg, alias)
    rows, frame, fields = _offline_rows(cfg, pd.Timestamp(start), pd.Timestamp(end))
    if rows.empty:
        return 0, str(mv.version)
    scored = score_frame(model, features, threshold, frame, flavor)
    t = cfg.table
    event = rows[t.timestamp]
    records = pd.DataFrame(
        {
            "request_id": [f"backfill-{uuid.uuid4().hex}" for _ in range(len(rows))],
            "logged_at": event.to_numpy(),
            "event_id": rows[t.event_id].astype(str).to_numpy() if t.event_id else None,
            "entities": _json_rows(frame, list(t.entities)),
            "request": _json_rows(frame, fields),
            "request_unix": (event.astype("int64") // 10**9).to_numpy(),
            "variant": "champion",
            "model_version": str(mv.version),
            "shadow": False,
            "score": scored["score"].to_numpy(dtype=float),
            "decision": scored["decision"].astype(object).where(scored["decision"].notna(), None).to_numpy(),
            "threshold": threshold,
            "features_missing": "",
            "features": frame[features].to_json(orient="records", lines=True).splitlines(),
        }
    )
    return write_logged_frame(cfg, records), str(mv.version)
