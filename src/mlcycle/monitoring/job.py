"""One monitoring check of the champion: its reference against the prediction log's current window.

The statistics live in ``mlcycle.monitoring`` (pure functions); this module gathers their inputs
from where they are kept — the champion's training snapshot in MLflow, the prediction log, the raw
the table for delayed labels — and writes what people and flows read afterwards: a summary
(JSON + Markdown), an Evidently report (HTML + JSON), and an MLflow run holding all of it.

The reference side is summarised once per champion version and cached under
``data/monitoring/reference/v<N>/``: later checks only read it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlcycle.data import privacy
from mlcycle.data.validation import load_table
from mlcycle.decisions import Verdict, not_measurable
from mlcycle.features.pipeline import labels_frame
from mlcycle.monitoring import drift as monitoring
from mlcycle.project.config import EVENT_ID_FIX, ProjectConfig
from mlcycle.registry import aliases as registry
from mlcycle.registry.tracking import FEATURES_TAG, SNAPSHOT_ARTIFACT, THRESHOLD_TAG, load_version
from mlcycle.serving.prediction_store import read_logged_predictions
from mlcycle.training.fit import TIME_COLUMN

log = logging.getLogger("mlcycle.monitoring")

# Codes of the categorical request fields (``<field>_code``): monitored through the fields themselves.
CODE_SUFFIX = "_code"
MONITORING_EXPERIMENT_SUFFIX = "-monitoring"
# Bumped when what the cached reference holds changes (2: scores from the held-out window; 3: its labels
# and the decision threshold, which calibrate the label-free estimate; 4: the held-out window's span).
REFERENCE_FORMAT = 4
ESTIMATE_SUMMARY_KEYS = ("state", "roc_auc", "roc_auc_ci", "precision", "recall", "rows", "expected_positives",
                         "bound", "reasons")  # fmt: skip
KPI_SUMMARY_KEYS = ("window_start", "window_end", "outcomes", "breached", "metrics", "error")
DECAY_SUMMARY_KEYS = ("state", "roc_auc", "roc_auc_ci", "precision", "recall", "positives", "reasons", "late_labels",
                      "rmse", "rmse_ci", "mae", "baseline_rmse")  # fmt: skip


@dataclass(frozen=True)
class ChampionReference:
    version: str
    stats: monitoring.ReferenceStats
    scores: np.ndarray  # the champion's scores on its reference sample
    sample: pd.DataFrame  # rows for the Evidently report
    numeric: list[str]
    categorical: list[str]
    baseline_roc_auc: float | None
    baseline_rmse: float | None = None
    labels: np.ndarray | None = None  # classification: the held-out window's labels (1 = positive), as ``scores``
    threshold: float = 0.5  # the champion's decision threshold
    # The held-out window's first and last event time (ISO): the estimate is calibrated on those rows,
    # so it is not checked against the labels of answers from that span.
    held_out_span: tuple[str, str] | None = None


MONITORING_SINK = "monitoring"


def held_out_rows(snapshot: pd.DataFrame, test_start: str | None) -> pd.DataFrame:
    """The rows of a training snapshot that the model was evaluated on, not fitted on: from the
    run's recorded ``test_start`` on (the time split is by event time)."""
    if not test_start:
        raise RuntimeError("the champion's run records no test_start: retrain it to monitor its scores")
    start = pd.Timestamp(test_start)
    times = snapshot[TIME_COLUMN]
    start = start.tz_localize("UTC") if start.tz is None and times.dt.tz is not None else start
    held_out = snapshot[times >= start]
    if held_out.empty:
        raise RuntimeError(f"no snapshot rows at or after test_start {test_start}")
    return held_out


def categorical_fields(cfg: ProjectConfig, frame: pd.DataFrame) -> list[str]:
    """The request fields that are categories (text in the training rows): their drift is judged on
    the values themselves, not on the codes the model sees."""
    from mlcycle.features import open_project_store, plan_for
    from mlcycle.features.store import REQUEST_TIME

    fields = plan_for(open_project_store(cfg), cfg.features.feature_service).request_fields
    return [
        f for f in fields
        if f != REQUEST_TIME and f in frame.columns and not pd.api.types.is_numeric_dtype(frame[f].dtype)
    ]  # fmt: skip


def _reference_dir(cfg: ProjectConfig, version: str) -> Path:
    return cfg.monitoring_dir / "reference" / f"v{version}"


def champion_reference(cfg: ProjectConfig) -> ChampionReference:
    """The reference of the current champion, computed on first use and cached per version."""
    client = registry.client_for(cfg)
    mv = registry.version_by_alias(client, cfg.model.name, registry.CHAMPION)
    if mv is None:
        raise RuntimeError(f"no champion for '{cfg.model.name}': train and promote a model first (mlcycle train)")
    return version_reference(cfg, mv)


def version_reference(cfg: ProjectConfig, mv: Any) -> ChampionReference:
    """The reference of a registered version (``mv``, a ModelVersion): its training inputs' statistics,
    its scores and labels on its own held-out window; computed on first use, cached per version."""
    import mlflow

    from mlcycle.training.fit import matrix

    client = registry.client_for(cfg)
    version = str(mv.version)
    directory = _reference_dir(cfg, version)
    meta_path = directory / "meta.json"
    if not meta_path.exists() or json.loads(meta_path.read_text()).get("format") != REFERENCE_FORMAT:
        features = json.loads(mv.tags[FEATURES_TAG])
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=SNAPSHOT_ARTIFACT, dst_path=tmp)
            frame = pd.read_parquet(path)
        run = client.get_run(mv.run_id)
        held_out = held_out_rows(frame, run.data.params.get("test_start"))
        sample_n = min(len(frame), cfg.monitoring.reference_sample)
        frame = frame.sample(sample_n, random_state=0) if sample_n < len(frame) else frame
        categorical = categorical_fields(cfg, frame)
        codes = {c + CODE_SUFFIX for c in categorical}
        numeric = [f for f in features if f not in codes]
        # What monitoring may keep (privacy: monitoring): a feature it may not keep as a number is not
        # compared as one; the model still scores the rows as they are (its own inputs).
        hidden = privacy.rules(cfg.privacy, MONITORING_SINK)
        numeric = [f for f in numeric if f not in hidden]
        categorical = [c for c in categorical if hidden.get(c, ("keep",))[0] != "drop"]
        frame = privacy.redact(frame, cfg.privacy, MONITORING_SINK)
        # Inputs: the whole training snapshot (what the model learned the world to be). Scores: only
        # the held-out evaluation window, because scores on the rows a model was fitted on are
        # in-sample (more confident than it will ever be on new rows) and would read as drift.
        stats = monitoring.reference_stats(frame, numeric, categorical, sample=cfg.monitoring.reference_sample)
        flavor, model = load_version(cfg, version)
        scores = flavor.predict(model, matrix(held_out, features)).astype(float)
        directory.mkdir(parents=True, exist_ok=True)
        stats.save(directory / "stats")
        np.save(directory / "scores.npy", scores)
        if cfg.task == "classification":
            # The snapshot's labels are already 0/1 (the training set encodes them: label_values).
            np.save(directory / "labels.npy", held_out[cfg.table.label].to_numpy().astype(int))
        keep = min(len(held_out), cfg.monitoring.evidently_sample)
        sample = privacy.redact(held_out[[*numeric, *categorical]], cfg.privacy, MONITORING_SINK)
        sample = sample.assign(score=scores).sample(keep, random_state=0)
        sample.to_parquet(directory / "sample.parquet", index=False)
        baseline = run.data.metrics.get("test.roc_auc")
        meta = {"format": REFERENCE_FORMAT, "version": version, "numeric": numeric, "categorical": categorical,
                "baseline_roc_auc": baseline, "baseline_rmse": run.data.metrics.get("test.rmse"),
                "rows": len(frame), "score_rows": len(held_out),
                "held_out_span": [held_out[TIME_COLUMN].min().isoformat(), held_out[TIME_COLUMN].max().isoformat()],
                "scores_from": "held-out evaluation window", "run_id": mv.run_id,
                "threshold": float(mv.tags.get(THRESHOLD_TAG, 0.5)),
                "computed_at": datetime.now(UTC).isoformat()}  # fmt: skip
        meta_path.write_text(json.dumps(meta, indent=2))
        log.info("reference for v%s: inputs from %d training rows, scores from %d held-out rows, cached in %s",
                 version, len(frame), len(held_out), directory)  # fmt: skip
    meta = json.loads(meta_path.read_text())
    return ChampionReference(
        version=version,
        stats=monitoring.ReferenceStats.load(directory / "stats"),
        scores=np.load(directory / "scores.npy"),
        sample=pd.read_parquet(directory / "sample.parquet"),
        numeric=meta["numeric"],
        categorical=meta["categorical"],
        baseline_roc_auc=meta["baseline_roc_auc"],
        baseline_rmse=meta.get("baseline_rmse"),
        labels=np.load(directory / "labels.npy") if (directory / "labels.npy").exists() else None,
        threshold=float(meta.get("threshold", 0.5)),
        held_out_span=tuple(meta["held_out_span"]) if meta.get("held_out_span") else None,
    )


def _estimate_line(estimate: dict[str, Any]) -> str:
    if estimate.get("roc_auc") is None:
        return "Not measurable: " + "; ".join(
            r.removeprefix("not measurable: ") for r in estimate.get("reasons") or ["-"]
        )
    ci = estimate.get("roc_auc_ci")
    state = {"pass": "fine", "fail": "**decayed (estimated)**"}.get(estimate.get("state", ""), "**not measurable yet**")
    ci_text = f" ({estimate['confidence']:.0%} interval {ci[0]:.3f}–{ci[1]:.3f})" if ci else ""
    calibration = estimate.get("calibration") or {}
    return (
        f"Expected ROC-AUC {estimate['roc_auc']:.3f}{ci_text}, precision {estimate['precision'] or float('nan'):.3f}, "
        f"recall {estimate['recall'] or float('nan'):.3f} on {estimate['rows']:,} answers "
        f"({estimate['expected_positives']:.1f} expected positives), against the champion's test "
        f"{estimate['baseline_roc_auc']:.3f} less the allowed drop (bound {estimate['bound']:.3f}): {state}. "
        f"Calibrated on the champion's held-out window ({calibration.get('calibration_rows', 0):,} rows, expected "
        f"calibration error {calibration.get('ece_after', float('nan')):.3f}). Blind to concept drift: the inputs "
        f"meaning something new shows only in the matured labels below."
    )


def calibration(ref: ChampionReference) -> Any:
    """The champion's map from scores to probabilities for the label-free estimate (fitted on its
    held-out window), the ``NotMeasurable`` that says why there is none, or None without labels.
    A check fits it once and hands it to ``label_free_estimate`` and ``estimate_windows``."""
    from mlcycle.monitoring import estimate as cbpe

    if ref.labels is None:
        return None
    try:
        return cbpe.calibrate(ref.scores, ref.labels)
    except cbpe.NotMeasurable as exc:
        return exc


def estimate_windows(
    ref: ChampionReference, answers: pd.DataFrame, windows: list[dict[str, Any]], fitted: Any = None
) -> None:
    """Beside each matured window's realized ROC-AUC, what the estimate said of the same answers
    without their labels: the record of how far the estimate can be trusted on this model.
    ``fitted``: ``calibration(ref)`` when the caller has it (else fitted here)."""
    from mlcycle.monitoring import estimate as cbpe

    judged = [w for w in windows if w.get("matured") and w.get("roc_auc") is not None]
    if not judged or ref.labels is None or answers.empty:
        return
    calibrator = fitted if fitted is not None else calibration(ref)
    if not isinstance(calibrator, cbpe.Calibrator):
        return
    times = answers["predicted_at"]
    span = [pd.Timestamp(t) for t in ref.held_out_span] if ref.held_out_span else None
    for w in judged:
        start, end = pd.Timestamp(w["start"]), pd.Timestamp(w["end"])
        if span and start <= _as_utc(span[1]) and end > _as_utc(span[0]):
            # The calibration was fitted on the held-out window's labels: checked against answers from
            # the same span, the estimate would be graded on its own training data.
            w["estimate_skipped"] = "the window overlaps the champion's held-out window, which calibrated the estimate"
            continue
        part = answers.loc[(times >= pd.Timestamp(w["start"])) & (times < pd.Timestamp(w["end"])), "score"]
        scores = part.to_numpy(float)
        if not len(scores):
            continue
        result = cbpe.estimate(calibrator.apply(scores), scores, ref.threshold, seed=0)
        ci = result.interval("roc_auc")
        w["estimated_roc_auc"] = result.roc_auc
        w["estimated_roc_auc_ci"] = list(ci) if ci else None


def _as_utc(moment: pd.Timestamp) -> pd.Timestamp:
    return moment.tz_localize("UTC") if moment.tzinfo is None else moment


def label_free_estimate(
    cfg: ProjectConfig, ref: ChampionReference, scores: np.ndarray, fitted: Any = None
) -> dict[str, Any]:
    """``estimate_verdict``'s summary section alone."""
    return estimate_verdict(cfg, ref, scores, fitted)[0]


def estimate_verdict(
    cfg: ProjectConfig, ref: ChampionReference, scores: np.ndarray, fitted: Any = None
) -> tuple[dict[str, Any], Verdict]:
    """The window's expected ROC-AUC, precision and recall from its scores alone (CBPE, calibrated on
    the champion's held-out window), judged against the champion's test ROC-AUC minus
    ``monitoring.max_roc_auc_drop``: what the labels will most likely say, weeks before they do.

    Under concept drift (the same inputs now meaning something else) the estimate cannot move: the
    decay check on matured labels remains the judge, and the two are shown side by side."""
    from mlcycle.monitoring import estimate as cbpe

    def unmeasured(why: str) -> tuple[dict[str, Any], Verdict]:
        check = not_measurable("estimated_roc_auc", None, ">=", why, "wait")
        verdict = Verdict(cbpe.KIND, (check,))
        return {"state": "not_measurable", "alert": False, "reasons": [why], "verdict": verdict.to_dict()}, verdict

    if cfg.task != "classification" or ref.labels is None or ref.baseline_roc_auc is None:
        return unmeasured("not measurable: the champion's reference has no held-out labels (classification only)")
    calibrator = fitted if fitted is not None else calibration(ref)
    if isinstance(calibrator, cbpe.NotMeasurable):
        return unmeasured(f"not measurable: calibration: {calibrator.detail}")
    result = cbpe.estimate(calibrator.apply(scores), scores, ref.threshold, seed=0) if len(scores) else None
    if result is None:
        return unmeasured("not measurable: no answer of the champion in the window")
    verdict = cbpe.estimated_decay(result, ref.baseline_roc_auc, cfg.monitoring.max_roc_auc_drop)
    check = verdict.checks[0]
    ci = result.interval("roc_auc")
    return {
        "state": verdict.state,
        "alert": verdict.state == "fail",
        "roc_auc": result.roc_auc,
        "roc_auc_ci": list(ci) if ci else None,
        "precision": result.precision,
        "recall": result.recall,
        "rows": result.n,
        "expected_positives": result.expected_positives,
        "baseline_roc_auc": ref.baseline_roc_auc,
        "bound": check.bound,
        "confidence": result.confidence,
        "calibration": calibrator.evidence(),
        "reasons": [check.line()],
        "verdict": verdict.to_dict(),
    }, verdict


def answered_predictions(cfg: ProjectConfig, since: datetime | None = None) -> pd.DataFrame:
    """Answered, non-shadow predictions with ``predicted_at`` (request time) and the features the
    model saw expanded into columns."""
    frame = read_logged_predictions(cfg, since)  # entity keys and request fields expanded
    if frame.empty:
        return frame.assign(predicted_at=pd.Series(dtype="datetime64[ns, UTC]"))
    frame = frame[~frame["shadow"].astype(bool) & frame["error"].isna() & frame["score"].notna()]
    frame = frame.assign(predicted_at=pd.to_datetime(frame["request_unix"].astype("int64"), unit="s", utc=True))
    features = pd.DataFrame.from_records([json.loads(f) if f else {} for f in frame["features"]], index=frame.index)
    features = features.drop(columns=[c for c in features.columns if c in frame.columns])
    frame = pd.concat([frame.drop(columns=["features"]), features], axis=1).reset_index(drop=True)
    return privacy.redact(frame, cfg.privacy, MONITORING_SINK)


@dataclass
class CheckResult:
    """Everything one check found; ``summary.json`` is this, and the events carry parts of it."""

    checked_at: str
    champion_version: str
    window_start: str
    window_end: str
    rows: int
    enough_rows: bool
    drifted_features: list[str]
    feature_drift: list[dict[str, Any]]
    prediction_drift: dict[str, Any] | None
    decay: dict[str, Any]
    decay_windows: list[dict[str, Any]]
    upstream_anomalies: list[str]
    skipped: list[str] = field(default_factory=list)
    report_html: str | None = None
    report_json: str | None = None
    summary_path: str | None = None
    mlflow_run_id: str | None = None
    sampled: float = 1.0  # the prediction log's capture rate (privacy.capture.rate): it reads a sample
    estimate: dict[str, Any] = field(default_factory=dict)  # the label-free estimate of the window (CBPE)
    kpis: dict[str, Any] = field(default_factory=dict)  # business KPIs on the newest matured window (kpis:)
    # Every decision of the check, by name: "drift", "score_drift", "decay", "estimated_decay",
    # "kpi.<name>". The flags below are their states; the sections above are their evidence laid
    # out for reading. (A result built by hand without verdicts falls back on the sections' flags.)
    verdicts: dict[str, Verdict] = field(default_factory=dict)

    def _failed(self, *names: str) -> bool | None:
        """Whether any named verdict failed; None when the check carries no verdicts."""
        if not self.verdicts:
            return None
        return any(v.state == "fail" for k, v in self.verdicts.items() if k in names or k.split(".")[0] in names)

    @property
    def drift_detected(self) -> bool:
        failed = self._failed("drift", "score_drift")
        if failed is None:
            failed = bool(self.drifted_features) or bool((self.prediction_drift or {}).get("alert"))
        return self.enough_rows and failed

    @property
    def performance_decayed(self) -> bool:
        failed = self._failed("decay")
        return bool(self.decay.get("alert")) if failed is None else failed

    @property
    def estimated_decay(self) -> bool:
        """The label-free estimate's whole interval is below the bound (never on a straddling one)."""
        failed = self._failed("estimated_decay")
        return self.enough_rows and (bool(self.estimate.get("alert")) if failed is None else failed)

    @property
    def kpi_breached(self) -> bool:
        """A KPI's whole interval is beyond its bound (never a straddling or unmeasurable one)."""
        failed = self._failed("kpi")
        return bool(self.kpis.get("breached")) if failed is None else failed

    def as_dict(self) -> dict[str, Any]:
        out = asdict(replace(self, verdicts={}))
        out["verdicts"] = _jsonable({name: v.to_dict() for name, v in self.verdicts.items()})
        out["drift_detected"], out["performance_decayed"] = self.drift_detected, self.performance_decayed
        out["estimated_decay"] = self.estimated_decay
        out["kpi_breached"] = self.kpi_breached
        return out

    def evidence(self) -> dict[str, Any]:
        """What an event carries: enough to act on and to find the rest."""
        drifted = [d for d in self.feature_drift if d["drifted"]]
        return {
            "champion_version": self.champion_version,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "rows": self.rows,
            "drifted_features": {d["feature"]: list(d["reasons"]) for d in drifted},
            "prediction_drift": self.prediction_drift,
            "decay": {k: self.decay.get(k) for k in DECAY_SUMMARY_KEYS},
            "estimate": {k: self.estimate.get(k) for k in ESTIMATE_SUMMARY_KEYS},
            "kpis": {k: self.kpis.get(k) for k in KPI_SUMMARY_KEYS},
            "upstream_anomalies": self.upstream_anomalies,
            "summary_path": self.summary_path,
            "report_html": self.report_html,
            "mlflow_run_id": self.mlflow_run_id,
        }

    def markdown(self) -> str:
        head = "drift detected" if self.drift_detected else "no drift"
        decay = self.decay
        lines = [
            f"## Monitoring of v{self.champion_version}: {head}"
            + (", **performance decayed**" if self.performance_decayed else ""),
            "",
            f"Window {self.window_start} → {self.window_end}: {self.rows:,} answered predictions"
            + ("" if self.enough_rows else " (too few for a drift verdict)")
            + (f" (a {self.sampled:.0%} capture sample of the answers)" if self.sampled < 1 else ""),
            "",
        ]
        if self.upstream_anomalies:
            lines += ["### Looks like a broken upstream", "", *[f"- {a}" for a in self.upstream_anomalies], ""]
        lines += ["### Features", "", "| feature | PSI | KS / χ² p | missing | verdict |", "|---|---|---|---|---|"]
        for d in sorted(self.feature_drift, key=lambda d: -d["psi"]):
            p = "" if d["pvalue"] is None or d["pvalue"] != d["pvalue"] else f"{d['pvalue']:.1e}"
            verdict = "**drift**: " + "; ".join(d["reasons"]) if d["drifted"] else "ok"
            lines.append(f"| {d['feature']} | {d['psi']:.3f} | {p} | {d['missing_current']:.1%} | {verdict} |")
        if self.prediction_drift:
            pd_ = self.prediction_drift
            lines += ["", "### Scores", "",
                      f"PSI {pd_['psi']:.3f}, KS {pd_['ks_statistic']:.3f}, mean {pd_['mean_reference']:.4f} → "
                      f"{pd_['mean_current']:.4f} ({pd_['mean_change']:+.1%}, 95% CI "
                      f"{_pct(pd_.get('mean_change_low'), '−∞')} … {_pct(pd_.get('mean_change_high'), '+∞')})"
                      + (" — **alert**: " + "; ".join(pd_.get("reasons") or ()) if pd_["alert"] else "")]  # fmt: skip
        lines += ["", "### Estimated performance (label-free, CBPE)", "", _estimate_line(self.estimate)]
        lines += ["", "### Performance on matured labels", ""]
        if decay.get("rmse") is not None:
            ci = decay.get("rmse_ci")
            ci_text = f" (95% CI {ci[0]:.4g}–{ci[1]:.4g})" if ci else ""
            state = {"ok": "fine", "decayed": "**decayed**"}.get(decay.get("state", ""), "**not measurable yet**")
            base = decay.get("baseline_rmse")
            lines.append(
                f"Newest matured windows: RMSE {decay['rmse']:.4g}{ci_text}, MAE {decay['mae']:.4g} (champion's test "
                f"RMSE {base if base is not None else float('nan'):.4g}): {state}"
                + (": " + "; ".join(decay["reasons"]) if decay.get("reasons") else "")
            )
        elif decay.get("roc_auc") is not None and decay.get("positives"):
            ci = decay.get("roc_auc_ci")
            ci_text = f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else ""
            state = {"ok": "fine", "decayed": "**decayed**"}.get(decay.get("state", ""), "**not measurable yet**")
            lines.append(
                f"Newest {decay['windows']} matured windows: ROC-AUC {decay['roc_auc']:.3f}{ci_text} (champion's "
                f"test {decay['baseline_roc_auc'] or float('nan'):.3f}), precision {decay['precision']:.3f}, "
                f"recall {decay['recall']:.3f} on {decay['predictions']:,} labelled predictions / "
                f"{decay['positives']} positives: {state}"
                + (": " + "; ".join(decay["reasons"]) if decay.get("reasons") else "")
            )
        else:
            text = "; ".join(decay.get("reasons") or ["no matured labels"])
            # "not measurable: …" (no event id) is not a matter of waiting; "not measurable yet" is.
            measurable_later = not text.lower().startswith("not measurable")
            lines.append(f"Not measurable yet: {text}" if measurable_later else text[0].upper() + text[1:])
        if decay.get("unlabelled"):
            lines.append(f"\n{decay['unlabelled']:,} matured predictions whose own label has not arrived are left out.")
        if decay.get("late_labels"):
            lines.append(f"\nLate labels: {decay['late_labels']['line']}.")
        judged = [w for w in self.decay_windows if w["matured"] and w.get("roc_auc") is not None]
        if judged:
            lines += ["", "| window | predictions | positives | ROC-AUC | estimated (no labels) | precision | recall |",
                      "|---" * 7 + "|"]  # fmt: skip
            for w in judged:
                est = w.get("estimated_roc_auc")
                ci = w.get("estimated_roc_auc_ci")
                est_text = "—" if est is None else f"{est:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
                lines.append(f"| {w['start'][:10]} | {w['predictions']:,} | {w['positives']} | {w['roc_auc']:.3f} | "
                             f"{est_text} | {w['precision']:.3f} | {w['recall']:.3f} |")  # fmt: skip
        pending = sum(1 for w in self.decay_windows if not w["matured"] and w["predictions"])
        if pending:
            lines.append(f"\n{pending} newer windows wait for their labels to mature.")
        if self.kpis:
            from mlcycle.monitoring import kpi

            lines += ["", "### Business KPIs (matured outcomes)", ""]
            if self.kpis.get("error"):
                lines.append(f"**Not measurable**: {self.kpis['error']}")
            lines += kpi.markdown(self.kpis)
        if self.verdicts:
            lines += ["", "### Verdicts", "", "| verdict | state | checks | what decided it |", "|---|---|---|---|"]
            for name, v in self.verdicts.items():
                why = "; ".join(c.detail for c in (v.failed or v.checks) if c.detail)[:300] or "—"
                lines.append(f"| {name} | {v.state.replace('_', ' ')} | {len(v.checks)} | {why} |")
        if self.skipped:
            lines += ["", "Skipped: " + "; ".join(self.skipped)]
        if self.report_html:
            lines += ["", f"Evidently report: `{self.report_html}`"]
        if self.mlflow_run_id:
            lines += [f"MLflow run: `{self.mlflow_run_id}`"]
        return "\n".join(lines)


def run_check(
    cfg: ProjectConfig,
    as_of: datetime | None = None,
    window_days: float | None = None,
    since: datetime | None = None,
) -> CheckResult:
    """Drift, prediction drift, decay and upstream anomalies of the champion at ``as_of`` (now)."""
    spec = cfg.monitoring
    ref = champion_reference(cfg)
    if as_of is None:
        # The log's own calendar: the latest window by event time (a replayed table from 2019 is
        # monitored as 2019; live traffic's latest event is now).
        answered = answered_predictions(cfg)
        latest = answered["predicted_at"].max() if len(answered) else pd.NaT
        as_of = (latest + pd.Timedelta(seconds=1)).to_pydatetime() if pd.notna(latest) else datetime.now(UTC)
    else:
        as_of = as_of or datetime.now(UTC)
        answered = None
    # Request times are logged in whole seconds: a window starting mid-second keeps that second.
    start = (since or as_of - timedelta(days=window_days or spec.window_days)).replace(microsecond=0)
    lookback_days = max(spec.decay_lookback_days, cfg.kpis.window_days if cfg.kpis.metrics else 0)
    lookback = as_of - timedelta(days=lookback_days + cfg.table.label_delay_days + 2)
    if answered is None:
        answered = answered_predictions(cfg, min(start, lookback))
    current = answered[(answered["predicted_at"] >= start) & (answered["predicted_at"] < as_of)]
    enough = len(current) >= spec.min_rows
    skipped = []
    numeric = list(ref.numeric)
    span = (current["predicted_at"].max() - current["predicted_at"].min()) if len(current) else pd.Timedelta(0)
    if span < pd.Timedelta(hours=20):
        daily = set(spec.daily_cycle_features)
        skipped += [f"{f} (the window spans {span} < 1 day)" for f in numeric if f in daily]
        numeric = [f for f in numeric if f not in daily]
    stats = monitoring.ReferenceStats(
        {k: v for k, v in ref.stats.numeric.items() if k in numeric}, ref.stats.categorical, ref.stats.missing,
        ref.stats.rows,
    )  # fmt: skip
    drift = monitoring.feature_drift(stats, current, spec) if len(current) else []
    # Scores and quality are the champion's own: answers of an earlier champion (before a
    # promotion) or of a canary's challenger say nothing about it. Inputs are inputs, whoever scored.
    own = current["model_version"].astype(str) == ref.version
    scores = current.loc[own, "score"].to_numpy(float)
    score_drift = monitoring.prediction_drift(ref.scores, scores, spec) if len(scores) else None
    prediction = score_drift.as_dict() if score_drift else None
    anomalies = monitoring.upstream_anomalies(stats, current, spec) if enough else []
    # Without an event id no label joins a logged prediction: decay is reported as not measurable
    # (with the fix), and everything above, which needs no label, stands.
    table = load_table(cfg) if cfg.table.event_id else None
    if table is not None:
        labels, columns = labels_frame(table, cfg), monitoring.LIFECYCLE_COLUMNS
    else:
        labels, columns = pd.DataFrame(), monitoring.LabelColumns(event_id=None)
    verdict, windows = monitoring.decay_verdict(
        answered[answered["model_version"].astype(str) == ref.version],
        labels,
        as_of,
        cfg.table.label_delay_days,
        spec,
        ref.baseline_roc_auc,
        columns=columns,
        task=cfg.task,
        baseline_rmse=ref.baseline_rmse,
    )
    champion_answers = answered[answered["model_version"].astype(str) == ref.version]
    decay_windows = [_jsonable(w.as_dict()) for w in windows]
    fitted = calibration(ref)  # once per check, for the window's estimate and the matured days'
    estimate_windows(ref, champion_answers, decay_windows, fitted)
    estimate, estimated = estimate_verdict(cfg, ref, scores, fitted)
    kpis, kpi_decisions = kpi_verdicts(cfg, answered, table, as_of)
    verdicts = {
        "drift": monitoring.drift_verdict(drift, len(current), spec),
        "score_drift": score_drift.verdict() if score_drift else Verdict("score_drift", (not_measurable(
            "score PSI", spec.psi_drift, "<=", "no answer of the champion in the window", "wait"),)),
        "decay": verdict.verdict(),
        "estimated_decay": estimated,
        **{f"kpi.{name}": v for name, v in kpi_decisions.items()},
    }  # fmt: skip
    return CheckResult(
        checked_at=datetime.now(UTC).isoformat(timespec="seconds"),
        champion_version=ref.version,
        window_start=pd.Timestamp(start).isoformat(timespec="seconds"),
        window_end=pd.Timestamp(as_of).isoformat(timespec="seconds"),
        rows=len(current),
        enough_rows=enough,
        drifted_features=[d.feature for d in drift if d.drifted] if enough else [],
        feature_drift=[_jsonable(d.as_dict()) for d in drift],
        prediction_drift=_jsonable(prediction) if prediction else None,
        decay=_jsonable(verdict.as_dict()),
        decay_windows=decay_windows,
        upstream_anomalies=anomalies,
        skipped=skipped,
        sampled=cfg.privacy.capture.rate,
        estimate=_jsonable(estimate),
        kpis=_jsonable(kpis),
        verdicts=verdicts,
    )


def kpi_report(
    cfg: ProjectConfig, answered: pd.DataFrame, table: pd.DataFrame | None, as_of: datetime
) -> dict[str, Any]:
    """``kpi_verdicts``' summary section alone."""
    return kpi_verdicts(cfg, answered, table, as_of)[0]


def kpi_verdicts(
    cfg: ProjectConfig, answered: pd.DataFrame, table: pd.DataFrame | None, as_of: datetime
) -> tuple[dict[str, Any], dict[str, Verdict]]:
    """The configured KPIs (``kpis:``) of every answer in the newest matured window, joined to the
    outcome table by event id; ``{}`` when none is configured. An outcome table that cannot be joined
    (no such column, duplicate ids) or a project without an event id leaves every KPI not measurable
    with the fix in ``error``: it never stops the rest of the check."""
    from mlcycle.monitoring import kpi

    spec = cfg.kpis
    if not spec.metrics:
        return {}, {}
    try:
        if not cfg.table.event_id:
            raise kpi.KpiJoinError(
                f"no outcome can be joined to a logged prediction without an event id: {EVENT_ID_FIX}"
            )
        outcomes = kpi_outcomes(cfg, table)
    except (kpi.KpiJoinError, FileNotFoundError) as exc:
        log.error("KPIs not measurable: %s", exc)
        report = kpi.evaluate(answered.iloc[:0], _empty_outcomes(), spec, as_of, cfg.table.label_delay_days)
        return {**report.as_dict(), "error": str(exc)}, report.verdicts
    report = kpi.evaluate(answered, outcomes, spec, as_of, cfg.table.label_delay_days, sampled=cfg.privacy.capture.rate)
    return report.as_dict(), report.verdicts


def kpi_outcomes(cfg: ProjectConfig, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """The outcome table of ``kpis.outcomes`` as ``kpi.outcome_frame`` (the project's own table, or a
    parquet file), its event ids as the prediction log holds them (hashed when privacy says so)."""
    from mlcycle.monitoring import kpi

    o, t = cfg.kpis.outcomes, cfg.table
    own = o.path == "table"
    if own:
        frame, source = (table if table is not None else load_table(cfg)), f"the project's table ({cfg.table_path})"
    else:
        path = cfg.resolve(Path(o.path))
        frame, source = pd.read_parquet(path), f"the outcome table {path}"
    out = kpi.outcome_frame(
        frame,
        event_id=o.event_id or t.event_id or "",
        outcome=o.outcome or t.label,
        available_at=o.available_at or (t.label_available_at if own else None),
        timestamp=o.timestamp or (t.timestamp if own else None),
        maturity_days=t.label_delay_days,
        positive_label=t.positive_label,
        columns=kpi.weight_columns(cfg.kpis),
        source=source,
        is_label=own and (o.outcome or t.label) == t.label,
    )
    if t.event_id:
        out[kpi.EVENT_ID] = privacy.as_logged(out[kpi.EVENT_ID].astype(str), t.event_id, cfg.privacy).to_numpy()
    return out


def _empty_outcomes() -> pd.DataFrame:
    from mlcycle.monitoring import kpi

    return pd.DataFrame({kpi.EVENT_ID: [], kpi.POSITIVE: [], kpi.AVAILABLE_AT: pd.Series(dtype="datetime64[ns, UTC]")})


def write_reports(cfg: ProjectConfig, result: CheckResult, current: pd.DataFrame | None = None) -> Path:
    """Summary (JSON + Markdown) and the Evidently report in ``data/monitoring/<time>/``."""
    from mlcycle.monitoring.report import evidently_report

    stamp = result.checked_at.replace(":", "").replace("-", "").replace("+0000", "Z")
    directory = cfg.monitoring_dir / stamp
    directory.mkdir(parents=True, exist_ok=True)
    ref = champion_reference(cfg)
    if current is None:
        answered = answered_predictions(cfg, pd.Timestamp(result.window_start).to_pydatetime())
        current = answered[answered["predicted_at"] < pd.Timestamp(result.window_end)]
    if len(current):
        cols = [c for c in [*ref.numeric, *ref.categorical, "score"] if c in current.columns]
        files = evidently_report(
            ref.sample[cols], current[cols].reset_index(drop=True), [c for c in ref.numeric if c in cols],
            [c for c in ref.categorical if c in cols], directory, score="score",
            max_rows=cfg.monitoring.evidently_sample, title=f"{cfg.model.name} v{ref.version}: drift",
        )  # fmt: skip
        result.report_html, result.report_json = str(files.html), str(files.json)
    result.summary_path = str(directory / "summary.json")
    (directory / "summary.md").write_text(result.markdown())
    Path(result.summary_path).write_text(json.dumps(result.as_dict(), indent=2, default=str))
    return directory


def log_to_mlflow(cfg: ProjectConfig, result: CheckResult, directory: Path) -> str:
    """One MLflow run per check, in the ``<experiment>-monitoring`` experiment: metrics to chart
    over time, the reports as artifacts."""
    import mlflow

    client = registry.client_for(cfg)
    registry.ensure_experiment(client, cfg.tracking.experiment + MONITORING_EXPERIMENT_SUFFIX, cfg.artifact_uri)
    mlflow.set_experiment(cfg.tracking.experiment + MONITORING_EXPERIMENT_SUFFIX)
    with mlflow.start_run(run_name=f"monitor v{result.champion_version}") as run:
        mlflow.set_tags({
            "mlcycle.stage": "monitoring", "mlcycle.champion_version": result.champion_version,
            "mlcycle.drift_detected": str(result.drift_detected), "mlcycle.performance_decayed":
            str(result.performance_decayed), "mlcycle.upstream_anomalies": str(bool(result.upstream_anomalies)),
        })  # fmt: skip
        metrics = {"rows": float(result.rows), "drifted_features": float(len(result.drifted_features))}
        for d in result.feature_drift:
            metrics[f"psi.{d['feature']}"] = float(d["psi"])
        if result.prediction_drift:
            metrics["score.psi"] = float(result.prediction_drift["psi"])
            metrics["score.mean_change"] = float(result.prediction_drift["mean_change"])
        for key in ("roc_auc", "precision", "recall", "rmse", "mae"):
            if result.decay.get(key) is not None:
                metrics[f"matured.{key}"] = float(result.decay[key])
        for m in result.kpis.get("metrics") or ():
            if m.get("value") is not None:
                metrics[f"kpi.{m['name']}"] = float(m["value"])
        mlflow.log_metrics(metrics)
        result.mlflow_run_id = run.info.run_id
        Path(result.summary_path or directory / "summary.json").write_text(
            json.dumps(result.as_dict(), indent=2, default=str)
        )
        (directory / "summary.md").write_text(result.markdown())
        from mlcycle.monitoring.report import SNAPSHOT_NAME

        # Evidently's whole snapshot (as large as the report) is the dashboard's, read from data/: the
        # run keeps the report, the summary and the rest.
        for path in sorted(directory.iterdir()):
            if path.name == SNAPSHOT_NAME:
                continue
            if path.is_dir():
                mlflow.log_artifacts(str(path), f"monitoring/{path.name}")
            else:
                mlflow.log_artifact(str(path), "monitoring")
    mlflow.set_experiment(cfg.tracking.experiment)
    return run.info.run_id


def load_result(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _pct(value: float | None, unbounded: str) -> str:
    """A relative change as a signed percentage; an end of an interval that has none (a reference
    mean of zero; stored as null, JSON has no infinity) as ``unbounded``."""
    return unbounded if value is None or not np.isfinite(value) else f"{value:+.1%}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None  # JSON has no NaN or infinity
    return value
