"""The monitoring dashboard: one Evidently snapshot per monitor run in a local Evidently workspace
(``data/monitoring/workspace``), which ``mlcycle up`` serves with ``evidently ui``.

Evidently 0.7's dashboards plot metric values of a project's snapshots over the snapshots' times.
mlcycle's own figures (computed by ``mlcycle.monitoring`` over the whole window) are not Evidently
metrics, so each run's figures become a one-row table that Evidently summarises with ``MeanValue``
per column: the mean of one value is the value, and a panel picks a figure by its column. KPIs, when
the check carries them (``result.kpis["metrics"]``), are recorded as ``SumValue`` per KPI, so the
KPI panel shows every KPI without knowing their names in advance. The run's Evidently drift report
(``drift_report.snapshot.json`` beside the HTML, written by ``report.evidently_report``) is merged
into the same snapshot: opening a point of the dashboard shows that run's drift report.

The project (named after ``cfg.project``) and its panels are created on first use; panels missing
from an existing project are added, others are left as they are (a person may have arranged them).
Writes to the workspace are serialised with a file lock (two monitor runs at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mlcycle.monitoring.report import SNAPSHOT_NAME
from mlcycle.project.config import ProjectConfig

if TYPE_CHECKING:
    from mlcycle.monitoring.job import CheckResult

log = logging.getLogger("mlcycle.monitoring")

WORKSPACE_NAME = "workspace"
TAB = "Monitoring"
FIGURE_METRIC = "MeanValue"  # one figure per column of a one-row table
KPI_METRIC = "SumValue"  # one KPI per column, likewise: the KPI panel takes every SumValue
KPI_PREFIX = "kpi."

# The figures of one check, by column: what the panels plot.
DRIFT_SHARE = "drift_share"
SCORE_PSI = "score_psi"
ROC_AUC_REALIZED = "roc_auc_realized"
ROC_AUC_ESTIMATED = "roc_auc_estimated"
ROC_AUC_ESTIMATED_LOW = "roc_auc_estimated_low"
ROC_AUC_ESTIMATED_HIGH = "roc_auc_estimated_high"
ROC_AUC_BOUND = "roc_auc_bound"
DRIFT_DETECTED = "drift_detected"
PERFORMANCE_DECAYED = "performance_decayed"
ESTIMATED_DECAY = "estimated_decay"
KPI_BREACHED = "kpi_breached"
ROWS = "rows"


@dataclass(frozen=True)
class PanelSpec:
    title: str
    kind: str  # line | bar
    metric: str
    columns: tuple[tuple[str, str], ...]  # (column, legend); empty: every series of the metric
    subtitle: str = ""


PANELS: tuple[PanelSpec, ...] = (
    PanelSpec("Share of drifted features", "line", FIGURE_METRIC, ((DRIFT_SHARE, "drifted share"),),
              "features judged drifted by mlcycle.monitoring / features compared"),
    PanelSpec("Score PSI", "line", FIGURE_METRIC, ((SCORE_PSI, "score PSI"),),
              "population stability of the champion's scores against its held-out window"),
    PanelSpec("ROC-AUC: realized and estimated", "line", FIGURE_METRIC, (
        (ROC_AUC_REALIZED, "realized (matured labels)"), (ROC_AUC_ESTIMATED, "estimated (no labels, CBPE)"),
        (ROC_AUC_ESTIMATED_LOW, "estimate: interval low"), (ROC_AUC_ESTIMATED_HIGH, "estimate: interval high"),
        (ROC_AUC_BOUND, "alert bound"),
    ), "realized on the newest matured windows; estimated on the current window, with its interval"),
    PanelSpec("Verdicts (1 = raised)", "bar", FIGURE_METRIC, (
        (DRIFT_DETECTED, "drift"), (PERFORMANCE_DECAYED, "decay"), (ESTIMATED_DECAY, "estimated decay"),
        (KPI_BREACHED, "KPI breached"),
    ), "the verdicts of each check: the events it emitted"),
    PanelSpec("KPIs", "line", KPI_METRIC, (), "the business KPIs (kpis:) of each check's newest matured window"),
    PanelSpec("Answered predictions per window", "bar", FIGURE_METRIC, ((ROWS, "rows"),)),
)  # fmt: skip


def workspace_path(cfg: ProjectConfig) -> Path:
    return cfg.monitoring_dir / WORKSPACE_NAME


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def figures(result: CheckResult) -> dict[str, float]:
    """The check's figures by column: those the service's ``/metrics`` shows (``monitoring.figures``,
    the same definitions), the estimate's alert bound and, with KPIs, their verdict. A figure the
    check did not measure is left out (a gap in its line, never a 0 that would read as a value)."""
    from mlcycle.monitoring.figures import figures as metric_figures

    summary = result.as_dict()
    out = {k: v for k, (v, _) in metric_figures(summary).items() if k != "checked_timestamp_seconds"}
    if (bound := _number((result.estimate or {}).get("bound"))) is not None and ROC_AUC_ESTIMATED in out:
        out[ROC_AUC_BOUND] = bound
    if KPI_BREACHED in summary and (summary.get("kpis") or {}).get("metrics"):
        out[KPI_BREACHED] = 1.0 if summary[KPI_BREACHED] else 0.0
    return out


def kpis(result: CheckResult) -> dict[str, float]:
    """The KPIs' values when the check has them (``result.kpis["metrics"]``: name, value, …), by
    column ``kpi.<name>``; a KPI without a value (too few matured outcomes) is left out."""
    raw = getattr(result, "kpis", None) or {}
    out = {}
    for metric in raw.get("metrics") or []:
        number = _number(metric.get("value")) if isinstance(metric, dict) else None
        if number is not None and metric.get("name"):
            out[KPI_PREFIX + str(metric["name"])] = number
    return out


def _naive_utc(moment: datetime | str) -> datetime:
    """Evidently compares snapshot times naively: UTC without a zone."""
    stamp = pd.Timestamp(moment)
    stamp = stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")
    return stamp.tz_localize(None).to_pydatetime()


def snapshot(cfg: ProjectConfig, result: CheckResult, when: datetime) -> Any:
    """The Evidently snapshot of one check: its figures (and KPIs) as metrics at ``when``, with the
    run's drift report merged in when it was written."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.core.report import Snapshot
    from evidently.metrics import MeanValue, SumValue

    values, kpi_values = figures(result), kpis(result)
    row = pd.DataFrame([{**values, **kpi_values}], dtype="float64")
    metrics = [MeanValue(column=c) for c in values] + [SumValue(column=c) for c in kpi_values]
    dataset = Dataset.from_pandas(row, data_definition=DataDefinition(numerical_columns=list(row.columns)))
    metadata = {
        "champion_version": str(result.champion_version),
        "window_start": result.window_start,
        "window_end": result.window_end,
        "checked_at": result.checked_at,
    }
    tags = ["mlcycle-monitor"] + [name for name, raised in (
        ("drift", result.drift_detected), ("decay", result.performance_decayed),
        ("estimated-decay", result.estimated_decay), ("kpi-breached", values.get(KPI_BREACHED))) if raised]  # fmt: skip
    name = f"{cfg.model.name} v{result.champion_version}: window {result.window_start} → {result.window_end}"
    snap = Report(metrics).run(dataset, None, timestamp=when, metadata=metadata, tags=tags, name=name)
    drift_path = Path(result.report_html).parent / SNAPSHOT_NAME if result.report_html else None
    if drift_path is not None and drift_path.exists():
        try:
            drift = Snapshot.load(drift_path)
        except Exception as exc:  # an unreadable report leaves the figures; it is logged, not raised
            log.warning("dashboard: the drift report %s could not be read (%s): figures only", drift_path, exc)
        else:
            snap._metrics = {**snap._metrics, **drift._metrics}
            snap._top_level_metrics = [*snap._top_level_metrics, *drift._top_level_metrics]
            snap._widgets = [*snap._widgets, *drift._widgets]
            snap._tests_widgets = [*snap._tests_widgets, *drift._tests_widgets]
    return snap


def _panel(spec: PanelSpec) -> Any:
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import bar_plot_panel, line_plot_panel

    values = [
        PanelMetric(legend=legend, metric=spec.metric, metric_labels={"column": column})
        for column, legend in spec.columns
    ] or [PanelMetric(metric=spec.metric)]
    build = bar_plot_panel if spec.kind == "bar" else line_plot_panel
    return build(title=spec.title, values=values, description=spec.subtitle or None, size="half")


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".mlcycle.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def project(workspace: Any, cfg: ProjectConfig) -> Any:
    """The workspace's project for ``cfg.project``, created with its panels on first use; a panel
    missing from it (by title) is added."""
    found = workspace.search_project(cfg.project)
    proj = found[0] if found else workspace.create_project(
        cfg.project, description=f"mlcycle monitoring of {cfg.model.name}: one snapshot per monitor run"
    )  # fmt: skip
    from evidently.sdk.models import DashboardTabModel

    # One save of the whole model: Evidently 0.7.23's add_panel lists a panel twice in an existing tab.
    model = workspace.get_dashboard(proj.id)
    present = {p.title for p in model.panels}
    missing = [_panel(spec) for spec in PANELS if spec.title not in present]
    if missing:
        tab = next((t for t in model.tabs if t.title == TAB), None)
        if tab is None:
            tab = DashboardTabModel(title=TAB, panels=[])
            model.tabs.append(tab)
        for panel in missing:
            model.panels.append(panel)
            tab.panels.append(panel.id)
        workspace.save_dashboard(proj.id, model)
    return proj


def expire(workspace: Any, directory: Path, project_id: Any, days: int | None, now: datetime | None = None) -> int:
    """Remove the project's snapshots written more than ``days`` ago (``privacy.retention_days.monitoring``,
    as for the reports they carry); returns how many. Judged by when each was written (its file's
    time), not by its place on the dashboard, which for a replayed table is its own calendar."""
    if days is None:
        return 0
    limit = (now or datetime.now(UTC)).timestamp() - days * 86_400
    removed = 0
    for path in sorted((directory / str(project_id) / "snapshots").glob("*.json")):
        if path.stat().st_mtime < limit:
            workspace.delete_run(project_id, path.stem)
            removed += 1
    if removed:
        log.info("dashboard: %d snapshots older than %d days removed from %s", removed, days, directory)
    return removed


def record(cfg: ProjectConfig, result: CheckResult, now: datetime | str | None = None) -> str:
    """Add the check as a snapshot of the project's dashboard; returns the snapshot's id.

    ``now`` is the snapshot's time on the dashboard: by default the window's end, the time the
    figures describe, on the prediction log's own calendar as ``run_check`` uses it (live traffic:
    the check's time; a replayed table: its own dates, so backfilled checks spread over them)."""
    from evidently.ui.workspace import Workspace

    when = _naive_utc(now if now is not None else result.window_end)
    snap = snapshot(cfg, result, when)
    directory = workspace_path(cfg)
    with _locked(directory):
        workspace = Workspace(str(directory))
        proj = project(workspace, cfg)
        ref = workspace.add_run(proj.id, snap)
        expire(workspace, directory, proj.id, cfg.privacy.retention_days.monitoring)
    log.info("dashboard: check of v%s at %s recorded in %s (project %s)", result.champion_version,
             when.replace(tzinfo=UTC).isoformat(), directory, cfg.project)  # fmt: skip
    return str(ref.id)
