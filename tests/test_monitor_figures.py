"""The newest monitoring check as Prometheus metrics (mlcycle.monitoring.figures): parsed back with
prometheus_client's own parser and checked by promtool; the values are the ones the hand-written
summaries hold, and what a check did not measure is absent."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlcycle.monitoring.figures import MonitorFigures
from mlcycle.project.config import ProjectConfig


def summary(run: Path, **values: object) -> None:
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps(values))


def parsed(text: str) -> dict[str, tuple[dict, float]]:
    return {s.name: (s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_newest_check_is_exported_and_unmeasured_figures_are_absent(tmp_path: Path) -> None:
    cfg = ProjectConfig.model_validate({"model": {"name": "m"}})
    cfg.root = tmp_path
    figures = MonitorFigures(cfg)
    assert figures.render() == ""  # before the first check
    summary(cfg.monitoring_dir / "20261201T000000Z", champion_version="2", rows=10, enough_rows=True,
            feature_drift=[{"drifted": True}], drift_detected=True)  # fmt: skip
    summary(cfg.monitoring_dir / "20261203T000000Z", champion_version="3", rows=4000, enough_rows=True,
            checked_at="2026-12-03T00:00:05+00:00",
            feature_drift=[{"drifted": True}, {"drifted": False}, {"drifted": False}, {"drifted": True}],
            prediction_drift={"psi": 0.27}, decay={"roc_auc": None, "state": "not_measurable"},
            estimate={"roc_auc": 0.81, "roc_auc_ci": [0.78, 0.84]},
            drift_detected=True, performance_decayed=False, estimated_decay=True)  # fmt: skip
    (cfg.monitoring_dir / "reference").mkdir()  # not a run: never read
    got = parsed(figures.render())
    assert got["mlcycle_monitor_drift_share"] == ({"version": "3"}, 0.5)  # 2 of 4 features
    assert got["mlcycle_monitor_score_psi"][1] == 0.27 and got["mlcycle_monitor_rows"][1] == 4000
    assert (got["mlcycle_monitor_roc_auc_estimated"][1], got["mlcycle_monitor_roc_auc_estimated_low"][1],
            got["mlcycle_monitor_roc_auc_estimated_high"][1]) == (0.81, 0.78, 0.84)  # fmt: skip
    assert "mlcycle_monitor_roc_auc_realized" not in got  # not measured: absent, not 0
    assert (got["mlcycle_monitor_drift_detected"][1], got["mlcycle_monitor_performance_decayed"][1],
            got["mlcycle_monitor_estimated_decay"][1]) == (1.0, 0.0, 1.0)  # fmt: skip
    assert got["mlcycle_monitor_checked_timestamp_seconds"][1] == 1796256005.0  # 2026-12-03T00:00:05Z
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run make install (Debian's prometheus package)")
    checked = subprocess.run([promtool, "check", "metrics"], input=figures.render(), capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
