"""Prefect flow ``train``: the table → contract → training set → checks → model → gates → registry.

Thin on purpose: each task calls one function of the ``mlcycle`` library; retries sit on the tasks
that do I/O. Run it as ``mlcycle train``, as ``python -m mlcycle.flows.training [CONFIG]``, or as
the ``train`` deployment in ``prefect.yaml``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

import mlcycle  # noqa: F401  (telemetry off before the stack is imported)
from mlcycle.data import privacy, validation
from mlcycle.decisions import Verdict
from mlcycle.features import distributed as engine
from mlcycle.features import open_project_store, pipeline, plan_for
from mlcycle.project.config import PrivacySpec, ProjectConfig, load_config
from mlcycle.registry import tracking
from mlcycle.registry.aliases import client_for
from mlcycle.training import distributed as cluster
from mlcycle.training import fit as training
from mlcycle.training import gates
from mlcycle.training.evaluation import EvaluationReport

IO = {"retries": 2, "retry_delay_seconds": 3, "cache_policy": NO_CACHE}
CPU = {"cache_policy": NO_CACHE}


class TrainingRejected(RuntimeError):
    """The data or the training set failed its checks: nothing was trained or registered."""


@task(name="load-table", **IO)
def load_table(cfg: ProjectConfig) -> pd.DataFrame:
    return validation.load_table(cfg)


@task(name="validate-contract", **CPU)
def validate_contract(cfg: ProjectConfig, table: pd.DataFrame) -> validation.ContractReport:
    report = validation.validate_table(table, cfg)
    _refuse_broken_contract(report)
    return report


def _refuse_broken_contract(report: validation.ContractReport) -> None:
    if not report.ok:
        create_markdown_artifact(f"```\n{report.summary()}\n```", key="data-contract", description="contract failed")
        raise validation.ContractViolation(report)


@task(name="build-training-set", **IO)
def build_training_set(
    cfg: ProjectConfig, as_of: datetime | None, window_days: int | None
) -> tuple[pd.DataFrame, list[str]]:
    frame = pipeline.build_training_set(cfg, as_of, window_days)
    features = list(plan_for(open_project_store(cfg), cfg.features.feature_service).model_features)
    return frame, features


@task(name="check-training-set", **CPU)
def check_training_set(cfg: ProjectConfig, frame: pd.DataFrame, features: list[str]) -> Verdict:
    verdict = validation.check_training_set(frame, features, cfg.table.label, cfg.quality, cfg.task)
    return _refuse_failed_set(cfg, verdict, frame)


def _refuse_failed_set(cfg: ProjectConfig, verdict: Verdict, frame: pd.DataFrame | None) -> Verdict:
    """The checks as an artifact; a failed set is logged as a rejected run and stops the flow
    (``frame`` None: the set is on a cluster)."""
    create_markdown_artifact(verdict.markdown(), key="training-set-checks", description="training-set checks")
    if not verdict.passed:
        run_id = tracking.log_rejected_training_set(cfg, verdict, frame)
        raise TrainingRejected(
            f"training set rejected ({', '.join(c.name for c in verdict.failed)}); report in MLflow run {run_id}"
        )
    return verdict


@task(name="snapshot-training-set", **CPU)
def snapshot_training_set(frame: pd.DataFrame, directory: str, policy: PrivacySpec | None = None) -> tracking.Snapshot:
    return tracking.write_snapshot(frame, Path(directory), policy)


@task(name="train-candidate", **CPU)
def train_candidate(cfg: ProjectConfig, frame: pd.DataFrame, features: list[str]) -> training.Candidate:
    return training.train_candidate(frame, features, cfg.model, label=cfg.table.label, task=cfg.task,
                                    slices=cfg.table.slices, protected=cfg.table.protected)  # fmt: skip


@task(name="measure-latency", **CPU)
def measure_latency(candidate: training.Candidate) -> dict[str, float]:
    return training.measure_latency(candidate)


@task(name="score-champion", **IO)
def score_champion(cfg: ProjectConfig, test: pd.DataFrame) -> EvaluationReport | None:
    return tracking.champion_report(client_for(cfg), cfg, test)


@task(name="run-gates", **CPU)
def run_gates(cfg: ProjectConfig, candidate: training.Candidate, champion: EvaluationReport | None) -> Verdict:
    verdict = gates.run_gates(candidate.report, cfg.gates, champion, protected=cfg.table.protected)
    create_markdown_artifact(verdict.markdown(), key="evaluation-gates", description="evaluation gates")
    return verdict


@task(name="log-and-register", **IO)
def log_and_register(
    cfg: ProjectConfig,
    frame: pd.DataFrame | None,
    candidate: training.Candidate,
    quality: Verdict,
    verdict: Verdict,
    champion: EvaluationReport | None,
    snapshot: tracking.Snapshot,
    triggered_by: str | None = None,
) -> tracking.TrainingRecord:
    who = f"flow:train/{flow_run.get_name() or 'local'}"
    return tracking.log_and_register(cfg, frame, candidate, quality, verdict, champion, who, snapshot, triggered_by)


def _train_here(
    cfg: ProjectConfig, as_of: datetime | None, window_days: int | None, triggered_by: str | None
) -> tuple[training.Candidate, Verdict, tracking.TrainingRecord]:
    logger = get_run_logger()
    table = load_table(cfg)
    validate_contract(cfg, table)
    frame, features = build_training_set(cfg, as_of, window_days)
    logger.info("training set: %d rows x %d features, label mean %.4g", len(frame), len(features),
                frame[cfg.table.label].mean())  # fmt: skip
    # The snapshot is written while the training set is checked and split: those keep one core
    # busy, parquet encoding the other. It is done long before the latency is measured.
    staging = tempfile.mkdtemp(prefix="mlcycle-snapshot-")
    snapshot = snapshot_training_set.submit(frame, staging, cfg.privacy)
    try:
        quality = check_training_set(cfg, frame, features)
        candidate = train_candidate(cfg, frame, features)
        written = snapshot.result()
        measure_latency(candidate)
        champion = score_champion(cfg, candidate.split.test)
        verdict = run_gates(cfg, candidate, champion)
        record = log_and_register(cfg, frame, candidate, quality, verdict, champion, written, triggered_by)
    finally:
        snapshot.wait()
        shutil.rmtree(staging, ignore_errors=True)
    return candidate, verdict, record


# --- model.engine: dask -------------------------------------------------------------------------------


@task(name="build-on-cluster", **CPU)
def build_on_cluster(
    cfg: ProjectConfig, client: Any, as_of: datetime | None, window_days: int | None
) -> tuple[engine.ClusterTrainingSet, list[str]]:
    built = engine.placed_training_set(cfg, client, as_of, window_days)
    _refuse_broken_contract(built.contract)
    features = list(plan_for(open_project_store(cfg), cfg.features.feature_service).model_features)
    return built, features


@task(name="check-on-cluster", **CPU)
def check_on_cluster(cfg: ProjectConfig, client: Any, built: engine.ClusterTrainingSet, features: list[str]) -> Verdict:
    verdict = cluster.check_on_cluster(client, built.parts, built.owners, features, cfg.table.label, cfg.quality)
    return _refuse_failed_set(cfg, verdict, None)


@task(name="snapshot-from-cluster", **CPU)  # no retries: a lost worker's partitions are gone
def snapshot_from_cluster(
    cfg: ProjectConfig, client: Any, built: engine.ClusterTrainingSet, directory: str
) -> tracking.Snapshot:
    # One partition in this process at a time.
    frames = (engine.watched(client, built.owners, part.result) for part in built.parts)
    return tracking.write_partitioned_snapshot(frames, Path(directory), cfg.privacy, len(built.workers), built.ranks)


@task(name="train-on-cluster", **CPU)
def train_on_cluster(
    cfg: ProjectConfig, client: Any, built: engine.ClusterTrainingSet, features: list[str]
) -> training.Candidate:
    return cluster.train_candidate_on_cluster(client, built.parts, built.owners, features, cfg.model,
                                              label=cfg.table.label, slices=cfg.table.slices,
                                              protected=cfg.table.protected)  # fmt: skip


def _train_on_cluster(
    cfg: ProjectConfig, as_of: datetime | None, window_days: int | None, triggered_by: str | None
) -> tuple[training.Candidate, Verdict, tracking.TrainingRecord]:
    """The same steps, with the table checked, the training set built and the booster trained on the
    Dask cluster, partition by partition; gates, MLflow and the registry as on one node."""
    logger = get_run_logger()
    with engine.cluster_client() as client:
        built, features = build_on_cluster(cfg, client, as_of, window_days)
        logger.info("training set on the cluster: %d partitions on %d workers, %d features",
                    len(built.parts), len(set(built.owners)), len(features))  # fmt: skip
        quality = check_on_cluster(cfg, client, built, features)
        staging = tempfile.mkdtemp(prefix="mlcycle-snapshot-")
        try:
            written = snapshot_from_cluster(cfg, client, built, staging)
            candidate = train_on_cluster(cfg, client, built, features)
            measure_latency(candidate)
            champion = score_champion(cfg, candidate.split.test)
            verdict = run_gates(cfg, candidate, champion)
            record = log_and_register(cfg, None, candidate, quality, verdict, champion, written, triggered_by)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return candidate, verdict, record


@flow(name="train", log_prints=True)
def train(
    config: str | None = None,
    as_of: datetime | None = None,
    window_days: int | None = None,
    triggered_by: str | None = None,
) -> dict[str, Any]:
    """Train, evaluate and (if every gate passes) register a model on the matured labels known
    at ``as_of`` (now), of the latest ``window_days`` (default ``model.train_window_days``).
    ``triggered_by``: who or what asked for it (an event, a schedule), recorded on the version for
    separation of duties; default the principal this process runs as."""
    logger = get_run_logger()
    cfg = load_config(config)
    privacy.check_writer(cfg.privacy, "training_snapshot")  # no key, no run: never a clear value written
    if cfg.model.engine == "dask":
        candidate, verdict, record = _train_on_cluster(cfg, as_of, window_days, triggered_by)
    else:
        candidate, verdict, record = _train_here(cfg, as_of, window_days, triggered_by)
    o = candidate.report.overall
    if cfg.task == "regression":
        measured = f"RMSE {o.rmse:.4g} · MAE {o.mae:.4g} · R² {o.r2:.3f}"
        metrics = {"rmse": o.rmse, "mae": o.mae, "r2": o.r2}
    else:
        measured = f"ROC-AUC {o.roc_auc:.4f} · PR-AUC {o.pr_auc:.4f} · recall {o.recall:.3f} at threshold " + (
            f"{candidate.report.threshold:.3f}"
        )
        metrics = {"roc_auc": o.roc_auc, "pr_auc": o.pr_auc}
    summary = (
        f"## {'Registered' if record.passed else 'Rejected'}: {cfg.model.name}"
        + (f" v{record.version} → `{record.alias}`" if record.passed else "")
        + f"\n\n{measured} · MLflow run `{record.run_id}`\n\n"
        + (f"Model card: `{record.card_html}`\n\n" if record.card_html else "")
        + verdict.markdown()
    )
    create_markdown_artifact(summary, key="training-summary", description="training result")
    logger.info(summary.splitlines()[0])
    for reason in verdict.reasons:
        logger.info("refused: %s", reason)
    return {
        "run_id": record.run_id,
        "passed": record.passed,
        "version": record.version,
        "alias": record.alias,
        "failed": list(record.failed),
        # Per refusing gate: its measured value, interval (with its confidence level) and bound.
        "reasons": list(verdict.reasons),
        "task": cfg.task,
        **metrics,
        "model_card": str(record.card_html) if record.card_html else None,
    }


if __name__ == "__main__":
    result = train(sys.argv[1] if len(sys.argv) > 1 else str(Path.cwd() / "mlcycle.yaml"))
    print(result)
