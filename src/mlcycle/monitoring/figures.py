"""The newest monitoring check's figures as Prometheus metrics, for the service's ``/metrics``.

One Prometheus then sees the service (latency, errors) and the model (drift share, score PSI,
realized and estimated ROC-AUC, each verdict's state) side by side, and its rules can alert on
either. The figures are read from the newest ``data/monitoring/<UTC stamp>/summary.json`` (what the
monitor flow wrote), re-read only when a newer check appears; a figure a check could not measure
is absent from the exposition, never a 0 that would read as a value.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from mlcycle.project.config import ProjectConfig

PREFIX = "mlcycle_monitor_"
STAMP = "%Y%m%dT%H%M%SZ"
VERDICTS = ("drift_detected", "performance_decayed", "estimated_decay")


def newest_summary(directory: Path) -> Path | None:
    """The summary of the newest check: run directories are named by their UTC stamp."""
    if not directory.is_dir():
        return None
    runs = []
    for run in directory.iterdir():
        try:
            datetime.strptime(run.name, STAMP)
        except ValueError:
            continue
        if (run / "summary.json").is_file():
            runs.append(run)
    return max(runs, key=lambda r: r.name) / "summary.json" if runs else None


def figures(summary: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """Metric name (without the prefix) → (value, help) for what the check measured."""
    out: dict[str, tuple[float, str]] = {}
    drift = summary.get("feature_drift") or []
    if drift and summary.get("enough_rows"):
        share = sum(1 for d in drift if d.get("drifted")) / len(drift)
        out["drift_share"] = (share, "Share of monitored features judged drifted in the newest check")
    psi = (summary.get("prediction_drift") or {}).get("psi")
    if psi is not None:
        out["score_psi"] = (float(psi), "PSI of the champion's scores, newest check against its reference")
    decay = summary.get("decay") or {}
    if decay.get("roc_auc") is not None:
        out["roc_auc_realized"] = (float(decay["roc_auc"]), "ROC-AUC on matured labels (pooled newest windows)")
    estimate = summary.get("estimate") or {}
    if estimate.get("roc_auc") is not None:
        out["roc_auc_estimated"] = (float(estimate["roc_auc"]), "Label-free expected ROC-AUC of the newest window")
        ci = estimate.get("roc_auc_ci")
        if ci:
            out["roc_auc_estimated_low"] = (float(ci[0]), "Lower bound of the expected ROC-AUC's interval")
            out["roc_auc_estimated_high"] = (float(ci[1]), "Upper bound of the expected ROC-AUC's interval")
    out["rows"] = (float(summary.get("rows") or 0), "Answered predictions in the newest check's window")
    for verdict in VERDICTS:
        if verdict in summary:
            out[verdict] = (1.0 if summary[verdict] else 0.0, f"1 when the newest check's {verdict} verdict fired")
    checked = summary.get("checked_at")
    if checked:
        out["checked_timestamp_seconds"] = (datetime.fromisoformat(checked).timestamp(), "When the check ran (unix)")
    return out


def exposition(summary: dict[str, Any]) -> str:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily, Metric

    version = str(summary.get("champion_version") or "")
    families: list[Metric] = []
    for name, (value, doc) in figures(summary).items():
        family = GaugeMetricFamily(PREFIX + name, doc, labels=["version"])
        family.add_metric([version], value)
        families.append(family)

    class Figures:
        def collect(self) -> Iterator[Metric]:
            return iter(families)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Figures())  # type: ignore[arg-type]
    return generate_latest(registry).decode("utf-8")


class MonitorFigures:
    """``render()``: the newest check's figures as Prometheus text ("" before the first check);
    re-read only when a newer summary appears."""

    def __init__(self, cfg: ProjectConfig) -> None:
        self.directory = cfg.monitoring_dir
        self._lock = threading.Lock()
        self._cached: tuple[Path, float, str] | None = None

    def render(self) -> str:
        path = newest_summary(self.directory)
        if path is None:
            return ""
        with self._lock:
            try:
                mtime = path.stat().st_mtime
                if self._cached and self._cached[0] == path and self._cached[1] == mtime:
                    return self._cached[2]
                text = exposition(json.loads(path.read_text()))
            except (OSError, ValueError):
                return ""  # a summary being written or unreadable: the rest of /metrics answers
            self._cached = (path, mtime, text)
            return text
