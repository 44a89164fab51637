"""Prefect flow ``batch_score``: score every transaction of a day with the champion (offline features
from the same FeatureService) and write the scores with the model version to parquet."""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

import mlcycle  # noqa: F401  (telemetry off before the stack is imported)
from mlcycle.project.config import load_config
from mlcycle.serving import batch


@task(name="score-day", retries=2, retry_delay_seconds=3, cache_policy=NO_CACHE)
def score_day(config: str | None, day: date) -> tuple[str, int, str]:
    path, rows, version = batch.score_day(load_config(config), day)
    return str(path), rows, version


@flow(name="batch_score", log_prints=True)
def batch_score(config: str | None = None, day: date | None = None) -> dict[str, Any]:
    """Score ``day`` (default: yesterday, UTC)."""
    day = day or (datetime.now(UTC) - timedelta(days=1)).date()
    path, rows, version = score_day(config, day)
    get_run_logger().info("scored %d events of %s with v%s → %s", rows, day, version, path)
    create_markdown_artifact(f"Scored **{rows:,}** events of {day} with v{version}: `{path}`", key="batch-score")
    return {"day": day.isoformat(), "rows": rows, "model_version": version, "path": path}


if __name__ == "__main__":
    print(batch_score(sys.argv[1] if len(sys.argv) > 1 else None))
