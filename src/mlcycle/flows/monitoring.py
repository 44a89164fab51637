"""Prefect flow ``monitor``: the champion's inputs, scores and matured-label quality, checked.

Scheduled (``prefect.yaml``), or by hand (``mlcycle monitor``). It writes a summary (Markdown
artifact, JSON), an Evidently report (HTML + JSON, offline), an MLflow run and a snapshot of the
Evidently UI's dashboard (``data/monitoring/workspace``), and emits the events
that start retraining: ``mlcycle.drift.detected`` and ``mlcycle.performance.decayed``, each carrying
the evidence and the path of the summary (and ``mlcycle.kpi.breached`` when a business KPI's whole
interval is beyond its bound: an alert, not a retraining trigger). Thin: the work is ``mlcycle.monitoring_job``.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

import mlcycle  # noqa: F401  (telemetry off before the stack is imported)
from mlcycle.monitoring import job as monitoring_job
from mlcycle.monitoring.kpi import KPI_EVENT
from mlcycle.monitoring.retraining import DECAY_EVENT, DRIFT_EVENT, ESTIMATED_DECAY_EVENT
from mlcycle.project.config import ProjectConfig, load_config

IO = {"retries": 2, "retry_delay_seconds": 3, "cache_policy": NO_CACHE}


@task(name="check-champion", **IO)
def check(cfg: ProjectConfig, as_of: datetime | None, window_days: float | None, since: datetime | None):
    return monitoring_job.run_check(cfg, as_of, window_days, since)


@task(name="write-reports", **IO)
def reports(cfg: ProjectConfig, result: monitoring_job.CheckResult) -> Path:
    return monitoring_job.write_reports(cfg, result)


@task(name="log-to-mlflow", **IO)
def log_run(cfg: ProjectConfig, result: monitoring_job.CheckResult, directory: Path) -> str:
    return monitoring_job.log_to_mlflow(cfg, result, directory)


@task(name="record-dashboard", cache_policy=NO_CACHE)
def dashboard(cfg: ProjectConfig, result: monitoring_job.CheckResult) -> str | None:
    """The check as a snapshot of the Evidently UI's dashboard (``mlcycle up`` serves it). A failure
    here is logged and never fails monitoring: the checks, reports and events do not depend on it."""
    try:
        from mlcycle.monitoring import dashboard as monitoring_dashboard

        return monitoring_dashboard.record(cfg, result)
    except Exception as exc:  # whatever Evidently raises, monitoring goes on
        get_run_logger().warning("the dashboard snapshot was not recorded: %s: %s", type(exc).__name__, exc)
        return None


def _emit(name: str, cfg: ProjectConfig, result: monitoring_job.CheckResult) -> None:
    emit_event(
        event=name,
        resource={
            "prefect.resource.id": f"mlcycle.model.{cfg.model.name}",
            "prefect.resource.name": cfg.model.name,
            "mlcycle.champion_version": result.champion_version,
        },
        payload=result.evidence(),
    )


@flow(name="monitor", log_prints=True)
def monitor(
    config: str | None = None,
    as_of: datetime | None = None,
    window_days: float | None = None,
    since: datetime | None = None,
) -> dict[str, Any]:
    """Check the champion on the prediction log; emit drift / decay events with the evidence."""
    logger = get_run_logger()
    cfg = load_config(config)
    result = check(cfg, as_of, window_days, since)
    directory = reports(cfg, result)
    log_run(cfg, result, directory)
    dashboard(cfg, result)
    create_markdown_artifact(result.markdown(), key="monitoring-summary", description="monitoring check")
    if result.report_html:
        create_link_artifact(Path(result.report_html).as_uri(), link_text="Evidently drift report (HTML, offline)",
                             key="evidently-report", description=result.report_html)  # fmt: skip
    events = []
    if result.drift_detected:
        _emit(DRIFT_EVENT, cfg, result)
        events.append(DRIFT_EVENT)
    if result.performance_decayed:
        _emit(DECAY_EVENT, cfg, result)
        events.append(DECAY_EVENT)
    if result.estimated_decay:
        _emit(ESTIMATED_DECAY_EVENT, cfg, result)
        events.append(ESTIMATED_DECAY_EVENT)
    if result.kpi_breached:
        _emit(KPI_EVENT, cfg, result)
        events.append(KPI_EVENT)
    logger.info(
        "v%s: %d rows, drifted %s, score drift %s, matured ROC-AUC %s; events %s; summary %s",
        result.champion_version, result.rows, result.drifted_features or "none",
        bool((result.prediction_drift or {}).get("alert")), result.decay.get("roc_auc"), events or "none",
        result.summary_path,
    )  # fmt: skip
    if result.upstream_anomalies:
        logger.warning("looks like a broken upstream: %s", "; ".join(result.upstream_anomalies))
    return {**result.as_dict(), "events": events}


if __name__ == "__main__":
    print(monitor(sys.argv[1] if len(sys.argv) > 1 else None))
