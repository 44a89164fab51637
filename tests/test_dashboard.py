"""The monitoring dashboard: monitor runs as snapshots of an Evidently workspace, served by the
Evidently UI the way ``mlcycle up`` starts it, and looked at in a headless chromium.

Three hand-made checks on three days (score PSI 0.05, 0.12, 0.31; the third with decay, a drift
report and a KPI) go into a workspace through ``dashboard.record``; ``stack.start_evidently_ui``
serves it on a free loopback port (one server), its API is asked for the panels' series, and
chromium (Debian's package, which ``make install`` installs) renders the project's dashboard page:
once for its DOM, once for a screenshot kept in the test's directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import copy_project
from tests.servers import http_client

from mlcycle.monitoring import dashboard
from mlcycle.monitoring.job import CheckResult
from mlcycle.monitoring.report import evidently_report
from mlcycle.net import free_port
from mlcycle.ops import stack

CHROMIUM = "chromium"
DAYS = ("2026-03-01", "2026-03-02", "2026-03-03")
PSI = (0.05, 0.12, 0.31)
ESTIMATED = (0.91, 0.88, 0.79)
REALIZED = (0.92, None, 0.77)  # the second day has no matured labels: a gap, not a 0


def check(day: int, report_html: str | None = None) -> CheckResult:
    drifted = ["amount", "hour"][:day]  # 0, 1, 2 of 4 features
    features = ["amount", "hour", "merchant", "country"]
    decayed = REALIZED[day] is not None and REALIZED[day] < 0.8
    ci = [ESTIMATED[day] - 0.02, ESTIMATED[day] + 0.02]
    estimate = {"roc_auc": ESTIMATED[day], "roc_auc_ci": ci, "bound": 0.82, "alert": ci[1] < 0.82, "state": "pass"}
    result = CheckResult(
        checked_at=f"{DAYS[day]}T06:00:00+00:00",
        champion_version="3",
        window_start=f"{DAYS[day]}T00:00:00+00:00",
        window_end=f"{DAYS[day]}T06:00:00+00:00",
        rows=1000 + day,
        enough_rows=True,
        drifted_features=drifted,
        feature_drift=[{"feature": f, "psi": 0.3 if f in drifted else 0.01, "drifted": f in drifted} for f in features],
        prediction_drift={"psi": PSI[day], "alert": PSI[day] > 0.25},
        decay={"roc_auc": REALIZED[day], "alert": decayed, "state": "decayed" if decayed else "ok"},
        decay_windows=[],
        upstream_anomalies=[],
        estimate=estimate,
        report_html=report_html,
    )
    if day == 2 and "kpis" in CheckResult.__dataclass_fields__:
        result.kpis = {"metrics": [{"name": "fraud_loss", "value": 1234.5, "state": "pass"}], "breached": []}
    return result


def _drift_report(directory: Path) -> str:
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"amount": rng.normal(50, 10, 300), "score": rng.uniform(0, 1, 300)})
    cur = pd.DataFrame({"amount": rng.normal(80, 10, 300), "score": rng.uniform(0.3, 1, 300)})
    return str(evidently_report(ref, cur, ["amount"], [], directory, score="score", title="drift").html)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("dashboard")
    cfg = copy_project(root / "project")
    ids = []
    for day in range(3):
        html = _drift_report(root / "report") if day == 2 else None
        ids.append(dashboard.record(cfg, check(day, html), datetime.fromisoformat(f"{DAYS[day]}T06:00:00")))
    return cfg, ids


def test_record_builds_one_project_with_its_panels(recorded) -> None:
    from evidently.ui.workspace import Workspace

    cfg, ids = recorded
    workspace = Workspace(str(dashboard.workspace_path(cfg)))
    projects = workspace.search_project(cfg.project)
    assert len(projects) == 1, "one project, however many runs"
    project = projects[0]
    model = workspace.get_dashboard(project.id)
    assert [p.title for p in model.panels] == [p.title for p in dashboard.PANELS]
    assert [(t.title, t.panels) for t in model.tabs] == [(dashboard.TAB, [p.id for p in model.panels])], "each once"
    assert sorted(str(i) for i in workspace.list_runs(project.id)) == sorted(ids)
    # The third run carries its drift report: Evidently's own drift metrics and widgets.
    third = workspace.get_run(project.id, ids[2])
    kinds = {r.metric_value_location.metric.params["type"] for r in third.metric_results.values()}
    assert "evidently:metric_v2:DriftedColumnsCount" in kinds and "evidently:metric_v2:MeanValue" in kinds
    assert len(third.widgets) > 2
    first = workspace.get_run(project.id, ids[0])
    assert first.timestamp == datetime(2026, 3, 1, 6)


def test_figures_leave_unmeasured_out() -> None:
    values = dashboard.figures(check(1))
    assert dashboard.ROC_AUC_REALIZED not in values, "no matured labels: no point, never a 0"
    assert values[dashboard.SCORE_PSI] == 0.12 and values[dashboard.DRIFT_SHARE] == 0.25
    assert values[dashboard.ROC_AUC_ESTIMATED_LOW] == pytest.approx(0.86)
    assert values[dashboard.DRIFT_DETECTED] == 1.0 and values[dashboard.PERFORMANCE_DECAYED] == 0.0


def _series(client, url: str, project_id: str, metric: str, labels: dict[str, str]) -> dict:
    """The UI's own API for a panel's points: the series and the snapshots (``sources``) they come from."""
    body = {"series_filter": [{"tags": [], "metadata": {}, "metric": f"evidently:metric_v2:{metric}",
                               "metric_labels": labels}]}  # fmt: skip
    response = client.post(f"{url}/api/v2/snapshots/{project_id}/data_series_batch", json=body)
    assert response.status_code in (200, 201), response.text
    return response.json()


def _chromium(args: list[str], profile: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=20000", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_evidently_ui_serves_the_panels_with_data(recorded, tmp_path: Path) -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.fail("chromium not found: run `make install` (it installs Debian's chromium package as root)")
    cfg, ids = recorded
    port = free_port()
    url = stack.start_evidently_ui(cfg, port, wait=True, out=print)
    try:
        assert url == f"http://127.0.0.1:{port}"
        rows = {r.name: r for r in stack.status(cfg)}
        assert rows[stack.EVIDENTLY_UI].health == "healthy"
        with http_client() as client:
            projects = client.get(f"{url}/api/projects").json()
            project_id = next(p["id"] for p in projects if p["name"] == cfg.project)
            panels = client.get(f"{url}/api/v2/dashboards/{project_id}").json()["panels"]
            assert [p["title"] for p in panels] == [p.title for p in dashboard.PANELS]
            psi = _series(client, url, project_id, "MeanValue", {"column": dashboard.SCORE_PSI})
            assert [s["values"] for s in psi["series"]] == [list(PSI)]
            assert [src["timestamp"] for src in psi["sources"]] == [f"{day}T06:00:00" for day in DAYS]
            realized = _series(client, url, project_id, "MeanValue", {"column": dashboard.ROC_AUC_REALIZED})
            assert [s["values"] for s in realized["series"]] == [[REALIZED[0], REALIZED[2]]]
            assert [src["timestamp"][:10] for src in realized["sources"]] == [DAYS[0], DAYS[2]], "day 2: no point"
            share = _series(client, url, project_id, "MeanValue", {"column": dashboard.DRIFT_SHARE})
            assert [s["values"] for s in share["series"]] == [[0.0, 0.25, 0.5]]
            # A monitor run while the UI runs: the UI picks the new snapshot up by itself (it watches the workspace).
            later = check(2)
            later.prediction_drift = {"psi": 0.4, "alert": True}
            ids.append(dashboard.record(cfg, later, datetime(2026, 3, 4, 6)))
            for _ in range(60):
                psi = _series(client, url, project_id, "MeanValue", {"column": dashboard.SCORE_PSI})
                if len(psi["series"][0]["values"]) == 4:
                    break
                time.sleep(0.5)
            assert psi["series"][0]["values"] == [*PSI, 0.4]
            if "kpis" in CheckResult.__dataclass_fields__:
                kpi = _series(client, url, project_id, dashboard.KPI_METRIC, {})
                values = [(s["params"]["column"], s["values"]) for s in kpi["series"]]
                assert values == [("kpi.fraud_loss", [1234.5, 1234.5])]

        page = f"{url}/projects/{project_id}"
        dom = _chromium(["--dump-dom", page], tmp_path / "chrome-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        text = dom.stdout
        for spec in dashboard.PANELS:
            assert spec.title in text, f"panel {spec.title!r} not rendered; DOM:\n{text[:3000]}"
        shot = Path(cfg.root) / "dashboard.png"
        taken = _chromium(["--window-size=1400,2400", f"--screenshot={shot}", page], tmp_path / "chrome-shot")
        assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
        print(f"\nscreenshot: {shot}")
    finally:
        outcome = stack.down(cfg, out=print)
    assert outcome[stack.EVIDENTLY_UI] == "stopped"
    assert not stack.pid_path(cfg, stack.EVIDENTLY_UI).exists()


def test_panels_are_added_once(recorded) -> None:
    from evidently.ui.workspace import Workspace

    cfg, _ = recorded
    workspace = Workspace(str(dashboard.workspace_path(cfg)))
    before = workspace.get_dashboard(dashboard.project(workspace, cfg).id)
    after = workspace.get_dashboard(dashboard.project(workspace, cfg).id)
    assert after == before and len(after.panels) == len(dashboard.PANELS)


def test_snapshots_expire_with_the_monitoring_reports(tmp_path: Path) -> None:
    """``privacy.retention_days.monitoring`` holds for the dashboard's snapshots too: judged by when
    each was written, not by its (replayed) time on the dashboard."""
    from evidently.ui.workspace import Workspace

    cfg = copy_project(tmp_path / "project", sections={"privacy": {"retention_days": {"monitoring": 2}}})
    old = dashboard.record(cfg, check(0))
    directory = dashboard.workspace_path(cfg)
    [project] = Workspace(str(directory)).search_project(cfg.project)
    written = directory / str(project.id) / "snapshots" / f"{old}.json"
    three_days_ago = time.time() - 3 * 86_400
    os.utime(written, (three_days_ago, three_days_ago))
    new = dashboard.record(cfg, check(1))
    assert [str(i) for i in Workspace(str(directory)).list_runs(project.id)] == [new]
