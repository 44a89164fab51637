"""Prefect flow ``rollout``: step the challenger's traffic 5% → 25% → 50% → 100% under automated
canary analysis, then promote it — or roll back by itself when a guard trips.

Each step sets the policy in the registry (every replica obeys within seconds), waits until both
variants have served enough requests since the step began, and judges them from the prediction
log (error rate, p99 latency, score PSI, and AUC / precision where labels have matured). Thin:
the analysis is ``mlcycle.canary``, the policy ``mlcycle.rollout``.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

import mlcycle  # noqa: F401  (telemetry off before the stack is imported)
from mlcycle import canary, registry, rollout
from mlcycle.config import ProjectConfig, load_config
from mlcycle.decisions import Verdict
from mlcycle.prediction_store import read_logged_predictions
from mlcycle.validation import load_transactions

IO = {"retries": 2, "retry_delay_seconds": 2, "cache_policy": NO_CACHE}


def _who() -> str:
    return f"flow:rollout/{flow_run.get_name() or 'local'}"


@task(name="set-traffic", **IO)
def set_traffic(cfg: ProjectConfig, percent: float, reason: str) -> rollout.RolloutPolicy:
    client = registry.client_for(cfg)
    log = registry.PromotionLog(cfg.promotion_log_uri)
    policy = rollout.RolloutPolicy(mode="canary", percent=percent)
    return rollout.write_policy(client, log, cfg.model.name, policy, reason, _who())


@task(name="collect-predictions", **IO)
def collect(cfg: ProjectConfig, since: datetime, wait_s: float, max_wait_s: float) -> pd.DataFrame:
    """Wait (bounded) until both variants have enough requests since ``since``; labels attached."""
    deadline = time.monotonic() + max_wait_s
    time.sleep(wait_s)
    while True:
        predictions = read_logged_predictions(cfg, since)
        champion = ((predictions["variant"] == "champion") & ~predictions["shadow"].astype(bool)).sum()
        challenger = (predictions["variant"] == "challenger").sum()
        if min(champion, challenger) >= cfg.canary.min_requests or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    transactions = load_transactions(cfg.raw_dir / "transactions.parquet")
    return canary.attach_labels(predictions, transactions, pd.Timestamp(datetime.now(UTC)))


@task(name="analyze-canary", cache_policy=NO_CACHE)
def analyze(cfg: ProjectConfig, predictions: pd.DataFrame, percent: float) -> Verdict:
    verdict = canary.analyze(predictions, cfg.canary)
    create_markdown_artifact(f"### canary at {percent:g}%\n\n" + verdict.markdown(), key=f"canary-{int(percent)}")
    return verdict


@task(name="promote-challenger", **IO)
def promote(cfg: ProjectConfig, version: str, reason: str) -> None:
    client = registry.client_for(cfg)
    log = registry.PromotionLog(cfg.promotion_log_uri)
    registry.promote(client, log, cfg.model.name, version, reason, _who())
    rollout.write_policy(client, log, cfg.model.name, rollout.RolloutPolicy(), "canary complete", _who())


@task(name="roll-back", **IO)
def roll_back(cfg: ProjectConfig, reason: str) -> None:
    client = registry.client_for(cfg)
    rollout.abort_canary(client, registry.PromotionLog(cfg.promotion_log_uri), cfg.model.name, reason, _who())


@flow(name="rollout", log_prints=True)
def rollout_flow(
    config: str | None = None, wait_seconds: float = 20.0, max_wait_seconds: float = 600.0
) -> dict[str, Any]:
    """Canary the current challenger; promote it or roll back, with the evidence of each step."""
    logger = get_run_logger()
    cfg = load_config(config)
    client = registry.client_for(cfg)
    challenger = registry.version_by_alias(client, cfg.model.name, registry.CHALLENGER)
    champion = registry.version_by_alias(client, cfg.model.name, registry.CHAMPION)
    if challenger is None or champion is None:
        raise RuntimeError("a canary needs both a champion and a challenger alias")
    version = str(challenger.version)
    steps: list[dict[str, Any]] = []
    for percent in cfg.canary.steps:
        if percent >= 100:
            break
        since = datetime.now(UTC)
        set_traffic(cfg, percent, f"canary step {percent:g}% for v{version}")
        predictions = collect(cfg, since, wait_seconds, max_wait_seconds)
        verdict = analyze(cfg, predictions, percent)
        steps.append({"percent": percent, "passed": verdict.passed, "checks": [c.line() for c in verdict.checks]})
        logger.info("canary %g%%: %s", percent, "passed" if verdict.passed else "FAILED")
        if not verdict.passed:
            failed = ", ".join(c.name for c in verdict.failed)
            roll_back(cfg, f"canary of v{version} failed at {percent:g}%: {failed}")
            return {"outcome": "rolled back", "version": version, "failed": failed, "steps": steps}
    passed = ", ".join(f"{s['percent']:g}%" for s in steps)
    promote(cfg, version, f"canary passed at {passed}")
    return {"outcome": "promoted", "version": version, "steps": steps}


if __name__ == "__main__":
    print(rollout_flow(sys.argv[1] if len(sys.argv) > 1 else None))
