"""MLflow runs for training: everything needed to judge, trace and reproduce a model.

Each run logs parameters, metrics overall and by slice, the gate and training-set reports, the
model with signature and input example, the data snapshot (parquet) and its hash, the
FeatureService and feature list, the git commit, the config, the seed and the lockfile's hash.
A run that passes every gate is registered and gets ``challenger`` (``champion`` if there is none);
one that fails is tagged with the failed gates and no alias moves.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sklearn
import xgboost as xgb
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from mlcycle import flavors
from mlcycle.data import lineage, privacy
from mlcycle.decisions import Verdict
from mlcycle.project.config import PrivacySpec, ProjectConfig
from mlcycle.registry import aliases as registry
from mlcycle.registry import gate, governance, model_card
from mlcycle.training.evaluation import EvaluationReport, evaluate
from mlcycle.training.fit import Candidate, baseline_parameters, matrix

SNAPSHOT_ARTIFACT = "data/training_set.parquet"
CONFIG_ARTIFACT = "config/mlcycle.json"
FEATURES_TAG = "mlcycle.features"
THRESHOLD_TAG = "mlcycle.threshold"
PARTITIONS_TAG = "mlcycle.partition_rows"
WORKERS_TAG = "mlcycle.dask_workers"
RANKS_TAG = "mlcycle.partition_workers"


def pip_requirements() -> list[str]:
    """Given explicitly: MLflow's inference re-imports everything in a subprocess for minutes."""
    return [
        f"mlflow=={mlflow.__version__}",
        f"xgboost=={xgb.__version__}",
        f"scikit-learn=={sklearn.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
    ]


@dataclass(frozen=True)
class TrainingRecord:
    run_id: str
    passed: bool
    version: str | None
    alias: str | None
    failed: tuple[str, ...]
    card_md: Path | None
    card_html: Path | None


def lineage_tags(cfg: ProjectConfig, data_hash: str) -> dict[str, str]:
    return {
        "mlcycle.data_hash": data_hash,
        "mlcycle.git_commit": lineage.git_commit(cfg.root),
        "mlcycle.lockfile_hash": lineage.lockfile_hash(cfg.root),
        "mlcycle.feature_service": cfg.features.feature_service,
        "mlcycle.seed": str(cfg.model.seed),
    }


def champion_report(client: MlflowClient, cfg: ProjectConfig, test: pd.DataFrame) -> EvaluationReport | None:
    """The current champion scored on the candidate's evaluation window (same rows, its own
    threshold and feature list), or None when there is no champion or it cannot score these rows."""
    champion = registry.version_by_alias(client, cfg.model.name, registry.CHAMPION)
    if champion is None:
        return None
    features = json.loads(champion.tags.get(FEATURES_TAG, "[]"))
    if not features or any(f not in test for f in features):
        return None
    flavor, model = load_version(cfg, str(champion.version))
    scores = flavor.predict(model, matrix(test, features))
    threshold = float(champion.tags.get(THRESHOLD_TAG, 0.5))
    return evaluate(test, scores, cfg.table.label, threshold, task=cfg.task)


def load_version(cfg: ProjectConfig, version: str) -> tuple[flavors.Flavor, Any]:
    """A registered version's flavor (read from its MLmodel file) and model, loaded by registry URI
    only, with the project's allowlist for what a scikit-learn model may construct."""
    uri = f"models:/{cfg.model.name}/{version}"
    flavor = flavors.flavor_of(uri, allowed_prefixes=cfg.model.allowed_prefixes)
    return flavor, flavor.load(uri)


def log_rejected_training_set(cfg: ProjectConfig, quality: Verdict, frame: pd.DataFrame | None) -> str:
    """A training set that failed its checks: a FAILED run with the report, nothing registered.
    ``frame`` None: the set is on a cluster (its rows are the checks' ``rows``, it has no hash here)."""
    registry.client_for(cfg)
    with mlflow.start_run(run_name="rejected-training-set") as run:
        mlflow.set_tags(
            {
                **lineage_tags(cfg, lineage.frame_hash(frame) if frame is not None else ""),
                "mlcycle.stage": "quality",
                "mlcycle.gates": "failed",
                "mlcycle.failed_gates": ", ".join(c.name for c in quality.failed),
            }
        )
        mlflow.log_dict(quality.to_dict(), "reports/training_set_quality.json")
        mlflow.log_text(quality.markdown(), "reports/training_set_quality.md")
        rows = len(frame) if frame is not None else next((c.value for c in quality.checks if c.name == "rows"), None)
        if rows is not None:
            mlflow.log_metric("rows", rows)
    mlflow.MlflowClient().set_terminated(run.info.run_id, status="FAILED")
    return run.info.run_id


@dataclass(frozen=True)
class Snapshot:
    """The training set as logged: a parquet file and the hash of its bytes (the data's id). Written
    from a cluster's partitions, each partition is one row group, and ``partition_rows`` and ``workers``
    record how they were placed (a reproduction places them the same way)."""

    path: Path
    data_hash: str
    partition_rows: tuple[int, ...] = ()
    workers: int = 0  # the cluster's size
    partition_ranks: tuple[int, ...] = ()  # each partition's worker, by its index in address order


def write_snapshot(frame: pd.DataFrame, directory: Path, policy: PrivacySpec | None = None) -> Snapshot:
    """Write the training set into ``directory``; the snapshot's id is the hash of the file's bytes.

    Separate from ``log_and_register`` so that a flow can write it while the training set is being
    checked: parquet encoding runs outside the GIL, on the core the checks leave idle."""
    path = Path(directory) / "training_set.parquet"
    frame = privacy.redact(frame, policy, "training_snapshot")  # the project's PII rules (mlcycle.data.privacy)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    # Dictionary encoding only where it pays (strings): tried on every float column of a million
    # rows, it doubled the write time (0.86 s against 0.46 s) for a file 3 % smaller.
    strings = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    pq.write_table(table, path, use_dictionary=strings)
    return Snapshot(path, lineage.file_hash(path))


def write_partitioned_snapshot(
    frames: Iterable[pd.DataFrame], directory: Path, policy: PrivacySpec | None, workers: int, ranks: Sequence[int]
) -> Snapshot:
    """The training set written one partition at a time (one row group each), so that the writer
    holds one partition, never the set. Categories are written as text: partitions each carry their
    own category lists, which one parquet schema cannot hold."""
    path = Path(directory) / "training_set.parquet"
    writer: pq.ParquetWriter | None = None
    rows: list[int] = []
    try:
        for frame in frames:
            frame = privacy.redact(frame, policy, "training_snapshot")
            categorical = [c for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)]
            if categorical:
                frame = frame.astype({c: object for c in categorical})
            # A text column with no value in this partition would be typed null, which the next
            # partition's text cannot be cast to (nor this one to the first's text): text it is.
            empty_text = [c for c in frame.columns if frame[c].dtype == object and frame[c].isna().all()]
            table = pa.Table.from_pandas(frame, preserve_index=False)
            for name in empty_text:
                index = table.schema.get_field_index(name)
                table = table.set_column(index, name, table.column(name).cast(pa.string()))
            if writer is None:
                strings = [
                    f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
                ]
                writer = pq.ParquetWriter(path, table.schema, use_dictionary=strings)
            else:
                table = table.cast(writer.schema)
            writer.write_table(table, row_group_size=max(len(table), 1))
            rows.append(len(table))
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError("no partition to write: the training set is empty")
    return Snapshot(path, lineage.file_hash(path), tuple(rows), workers, tuple(ranks))


def read_partition(path: Path, rows: Sequence[int], k: int) -> pd.DataFrame:
    """Partition ``k`` of a partitioned snapshot (``rows``: the recorded rows per partition)."""
    handle = pq.ParquetFile(path)
    start, group, seen = sum(rows[:k]), 0, 0
    while seen < start:  # an empty partition wrote an empty row group: walk by rows, not by index
        seen += handle.metadata.row_group(group).num_rows
        group += 1
    while group < handle.num_row_groups and handle.metadata.row_group(group).num_rows == 0 and rows[k] > 0:
        group += 1
    table = handle.read_row_group(group)
    if table.num_rows != rows[k]:
        raise ValueError(f"partition {k} of {path.name} holds {table.num_rows} rows, {rows[k]} recorded")
    return table.to_pandas()


def log_and_register(
    cfg: ProjectConfig,
    frame: pd.DataFrame | None,
    candidate: Candidate,
    quality: Verdict,
    gates: Verdict,
    champion: EvaluationReport | None,
    who: str | None = None,
    snapshot: Snapshot | None = None,
    triggered_by: str | None = None,
) -> TrainingRecord:
    """Log the run; register the model and move an alias if every gate passed. ``snapshot``: the
    training set already written by ``write_snapshot`` (of this ``frame``), else it is written here."""
    client = registry.client_for(cfg)
    log = registry.PromotionLog(cfg.promotion_log_uri)
    model, report = candidate.model, candidate.report
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name="train") as run:
        if snapshot is None:
            if frame is None:
                raise ValueError("log_and_register needs the training set or its snapshot")
            snapshot = write_snapshot(frame, Path(tmp), cfg.privacy)
        data_hash = snapshot.data_hash
        tags = lineage_tags(cfg, data_hash)
        tags.update(
            {
                "mlcycle.stage": "training",
                "mlcycle.gates": "passed" if gates.passed else "failed",
                "mlcycle.failed_gates": ", ".join(c.name for c in gates.failed),
                # Gates the data could not decide, let through under the ``warn`` policy: never silent.
                "mlcycle.gate_warnings": "; ".join(f"{c.name}: {c.detail}" for c in gates.warnings)[:4000],
                FEATURES_TAG: json.dumps(model.features),
                flavors.FLAVOR_TAG: model.flavor.name,
            }
        )
        if snapshot.partition_rows:
            tags.update({"mlcycle.engine": "dask", PARTITIONS_TAG: json.dumps(list(snapshot.partition_rows)),
                         WORKERS_TAG: str(snapshot.workers),
                         RANKS_TAG: json.dumps(list(snapshot.partition_ranks))})  # fmt: skip
        mlflow.set_tags(tags)
        prefix = "xgb" if model.flavor.name == "xgboost" else model.flavor.name
        params: dict[str, Any] = {
            **{f"{prefix}.{k}": v for k, v in model.params.items() if k != "eval_metric"},
            "flavor": model.flavor.name,
            **({"best_iteration": model.best_iteration} if model.best_iteration is not None else {}),
            **({"trained_rounds": model.trained_rounds} if model.trained_rounds is not None else {}),
            "threshold_rule": cfg.model.threshold,
            "feature_service": cfg.features.feature_service,
            "n_features": len(model.features),
            "valid_start": str(candidate.split.valid_start),
            "test_start": str(candidate.split.test_start),
            "train_rows": len(candidate.split.train),
        }
        mlflow.log_params(params)
        mlflow.log_dict(gates.to_dict(), "reports/gates.json")
        mlflow.log_text(gates.markdown(), "reports/gates.md")
        mlflow.log_dict(quality.to_dict(), "reports/training_set_quality.json")
        mlflow.log_dict(report.to_dict(), "reports/evaluation.json")
        mlflow.log_dict(cfg.model_dump(mode="json"), CONFIG_ARTIFACT)
        mlflow.log_dict({"features": model.features, "split": candidate.split.describe()}, "features.json")
        mlflow.log_artifact(str(snapshot.path), "data")
        example = candidate.split.test[model.features].head(5).astype("float64")
        logged = model.flavor.log(
            model.model,
            "model",
            signature=infer_signature(example, model.predict(example)),
            input_example=example,
            pip_requirements=pip_requirements(),
        )
        model_uri = logged.model_uri
        # Metrics after the model, linked to it in the same write: logged before, MLflow's
        # log_model would read every metric's history back and write them all again for the
        # model (0.4 s for the ~150 slice metrics of a run).
        metrics = report.flat_metrics()
        metrics.update(
            {f"baseline.{k}": v for k, v in candidate.baseline_report.flat_metrics().items() if k.startswith("test.")}
        )
        if champion is not None:
            metrics.update({f"champion.{k}": v for k, v in champion.flat_metrics().items() if k.startswith("test.")})
        mlflow.log_metrics(metrics, model_id=logged.model_id)
        linear = "ridge" if cfg.task == "regression" else "logistic"
        with mlflow.start_run(run_name=f"baseline-{linear}", nested=True):
            mlflow.log_metrics(candidate.baseline_report.flat_metrics())
            mlflow.log_dict(baseline_parameters(candidate.baseline, model.features), "baseline.json")
        run_id = run.info.run_id

    if not gates.passed:
        return TrainingRecord(run_id, False, None, None, tuple(c.name for c in gates.failed), None, None)
    version_tags = {
        FEATURES_TAG: json.dumps(model.features),
        THRESHOLD_TAG: str(model.threshold),
        flavors.FLAVOR_TAG: model.flavor.name,
        "mlcycle.feature_service": cfg.features.feature_service,
        "mlcycle.data_hash": data_hash,
        "mlcycle.run_id": run_id,
    }
    if os.environ.get(gate.GATE_URL_ENV):  # profile scale with authentication: the gate registers
        try:
            version = gate.GateClient.from_env().register(run_id, model_uri, version_tags, triggered_by)
        except governance.Refused as exc:
            return TrainingRecord(run_id, False, None, None, (str(exc),), None, None)
        alias = registry.CHALLENGER  # the gate's rule: an approver makes any version champion
        card = write_model_card(cfg, client, run_id, version, [alias], candidate, quality, gates, data_hash)
        return TrainingRecord(run_id, True, version, alias, (), *card)
    principal = governance.current_principal()  # the principal this process runs as, not the run's name
    try:
        governance.require_role(cfg.governance, principal, "trainer", "register a version")
    except governance.Refused as exc:
        governance.record_refusal(log, cfg.model.name, None, principal, exc)
        return TrainingRecord(run_id, False, None, None, (str(exc),), None, None)

    version = str(mlflow.register_model(model_uri, cfg.model.name).version)
    for key, value in version_tags.items():
        client.set_model_version_tag(cfg.model.name, version, key, value)
    governance.mark_registered(client, cfg.model.name, version, principal.name, triggered_by or principal.name)
    has_champion = registry.version_by_alias(client, cfg.model.name, registry.CHAMPION) is not None
    # The first model serves at once only for a principal who may move champion; else it waits as
    # the challenger for an approver (`mlcycle approve`, then `mlcycle promote`).
    first = not has_champion and governance.holds(cfg.governance, principal, "approver")
    alias = registry.CHAMPION if first else registry.CHALLENGER
    o = report.overall
    measured = (
        f"rmse {o.rmse:.4g}, mae {o.mae:.4g}"
        if cfg.task == "regression"
        else f"roc_auc {o.roc_auc:.4f}, pr_auc {o.pr_auc:.4f}"
    )
    reason = f"gates passed ({measured})" + ("; first model" if first else "")
    registry.move_alias(client, log, cfg.model.name, alias, version, reason, who)
    md_path, html_path = write_model_card(cfg, client, run_id, version, [alias], candidate, quality, gates, data_hash)
    return TrainingRecord(run_id, True, version, alias, (), md_path, html_path)


def write_model_card(
    cfg: ProjectConfig,
    client: MlflowClient,
    run_id: str,
    version: str,
    aliases: list[str],
    candidate: Candidate,
    quality: Verdict,
    gates: Verdict,
    data_hash: str,
) -> tuple[Path, Path]:
    card = model_card.CardInput(
        model_name=cfg.model.name,
        version=version,
        run_id=run_id,
        feature_service=cfg.features.feature_service,
        features=candidate.model.features,
        training_window=candidate.split.describe(),
        data_hash=data_hash,
        git_commit=lineage.git_commit(cfg.root),
        lockfile_hash=lineage.lockfile_hash(cfg.root),
        params={k: v for k, v in candidate.model.params.items() if k != "eval_metric"},
        report=candidate.report,
        baseline=candidate.baseline_report,
        gates=gates,
        quality=quality,
        aliases=aliases,
    )
    text = model_card.render_markdown(card)
    out = cfg.data_path / "model_cards"
    out.mkdir(parents=True, exist_ok=True)
    md_path = out / f"{cfg.model.name}-v{version}.md"
    html_path = out / f"{cfg.model.name}-v{version}.html"
    md_path.write_text(text)
    html_path.write_text(model_card.render_html(text, f"{cfg.model.name} v{version}"))
    client.log_artifact(run_id, str(md_path), "model_card")
    client.log_artifact(run_id, str(html_path), "model_card")
    return md_path, html_path


@dataclass(frozen=True)
class Reproduction:
    version: str
    run_id: str
    data_hash: str
    data_hash_matches: bool
    rows: list[tuple[str, float, float]]  # metric, recorded, reproduced

    @property
    def identical(self) -> bool:
        return self.data_hash_matches and all(
            np.isclose(a, b, rtol=0, atol=1e-12) or (np.isnan(a) and np.isnan(b)) for _, a, b in self.rows
        )


class ReproductionError(RuntimeError):
    """The version cannot be retrained as it was (another cluster shape); the message says what to set."""


def _reproduce_on_cluster(
    snapshot: Path, rows: list[int], ranks: list[int], workers: int, features: list[str], spec: Any,
    where: dict[str, Any],
) -> Candidate:  # fmt: skip
    """Retrain a version trained on a Dask cluster: each recorded partition read from the snapshot
    (one at a time) and placed on the worker it was trained on, on a cluster of as many workers
    (``MLCYCLE_DASK_SCHEDULER``'s, else a local one): xgboost.dask's trees depend on which rows each
    worker sketches, so another cluster size trains another model."""
    from mlcycle.features import distributed as engine
    from mlcycle.training.distributed import train_candidate_on_cluster

    with engine.cluster_client(workers=workers) as client:
        client.wait_for_workers(workers, timeout=120)
        names = engine.workers_of(client)
        if len(names) != workers:
            raise ReproductionError(
                f"this version was trained on {workers} Dask workers and this cluster has {len(names)}: xgboost.dask "
                f"trains another model on another split of the rows; reproduce on a cluster of {workers} workers "
                f"({engine.SCHEDULER_ENV}, or unset it for a local one)"
            )
        owners = [names[rank] for rank in ranks]
        parts = [client.scatter(read_partition(snapshot, rows, k), workers=[owners[k]]) for k in range(len(rows))]
        return train_candidate_on_cluster(client, parts, owners, features, spec, **where)


class SnapshotExpired(FileNotFoundError):
    """The data a version was trained on is no longer kept: it cannot be reproduced."""


def reproduce(cfg: ProjectConfig, version: str) -> Reproduction:
    """Retrain a registered version from its recorded data snapshot, config and seed, and compare
    every recorded metric (latency excepted: it measures the machine, not the model)."""
    client = registry.client_for(cfg)
    mv = client.get_model_version(cfg.model.name, str(version))
    run = client.get_run(mv.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            snapshot = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path=SNAPSHOT_ARTIFACT, dst_path=tmp
            )
        except (MlflowException, OSError) as exc:
            raise SnapshotExpired(
                f"v{version}'s training snapshot ({SNAPSHOT_ARTIFACT} of run {mv.run_id}) is gone — removed by "
                "retention (privacy.retention_days.snapshots) once no live version needed it, or by hand; "
                f"v{version} cannot be reproduced ({type(exc).__name__})"
            ) from None
        actual_hash = lineage.file_hash(snapshot)
        recorded_cfg = mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/{CONFIG_ARTIFACT}")
        recorded = ProjectConfig.model_validate(recorded_cfg)
        features = json.loads(run.data.tags[FEATURES_TAG])
        where = {"label": recorded.table.label, "slices": recorded.table.slices, "protected": recorded.table.protected}
        if PARTITIONS_TAG in run.data.tags:
            rows, workers = json.loads(run.data.tags[PARTITIONS_TAG]), int(run.data.tags[WORKERS_TAG])
            ranks = json.loads(run.data.tags.get(RANKS_TAG, "null")) or [k % workers for k in range(len(rows))]
            candidate = _reproduce_on_cluster(Path(snapshot), rows, ranks, workers, features, recorded.model, where)
        else:
            from mlcycle.training.fit import train_candidate

            frame = pd.read_parquet(snapshot)
            candidate = train_candidate(frame, features, recorded.model, task=recorded.task, **where)  # type: ignore[arg-type]
    recorded_hash = run.data.tags.get("mlcycle.data_hash", "")
    again = candidate.report.flat_metrics()
    rows = [
        (name, float(value), float(again.get(name, float("nan"))))
        for name, value in sorted(run.data.metrics.items())
        if name in again and not name.startswith("latency_ms")
    ]
    return Reproduction(str(version), mv.run_id, recorded_hash, recorded_hash == actual_hash, rows)
