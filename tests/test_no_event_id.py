"""A project whose table has no event id, and what `up`, `status` and `monitor` make of it (issue 22).

Without an event id no later label joins a logged prediction, and the event stream cannot apply an
event once. Monitoring must still judge everything that needs no label (feature drift, score drift,
missing rates) and call decay not measurable, saying why and what fixes it; `up` must not start a
stream consumer that would exit at once, and must say why; `status` must say why a piece exited.
An `init` project has no services/ and no Makefile: `up` runs mlcycle's generic service and tells
how to stop with `mlcycle down`.

Fast: the decisions are functions of the config (no server starts); the one process started here
is a two-line Python script whose own last words the test knows.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import copy_project
from typer.testing import CliRunner

from mlcycle.cli.app import app
from mlcycle.features.pipeline import NoEventId, labels_frame
from mlcycle.monitoring import drift as monitoring
from mlcycle.monitoring.job import CheckResult
from mlcycle.ops import stack
from mlcycle.project.config import MonitoringSpec, ProjectConfig, load_config
from mlcycle.project.scaffold import init_project

START = pd.Timestamp("2022-05-01", tz="UTC")


def _table(n: int = 2_000, seed: int = 3) -> pd.DataFrame:
    """Readings of devices: no column is unique per row under an id-like name, so none is an event id."""
    rng = np.random.default_rng(seed)
    at = START + pd.to_timedelta(np.sort(rng.choice(40 * 86_400, n, replace=False)), unit="s")
    load = rng.normal(0, 1, n)
    return pd.DataFrame(
        {
            "device_id": rng.integers(1, 150, n),
            "read_at": at,
            "load": load.round(4),
            "mode": rng.choice(["eco", "normal", "boost"], n),
            "failed": (rng.random(n) < 1 / (1 + np.exp(-(load - 1.5)))).astype(int),
        }
    )


def _init(tmp: Path, *, event_id: bool, name: str) -> ProjectConfig:
    table = _table()
    if event_id:
        table.insert(0, "reading_id", np.arange(1, len(table) + 1))
    source = tmp / f"{name}.parquet"
    table.to_parquet(source, index=False)
    result = init_project(tmp / name, source, timestamp="read_at", label="failed", entities=["device_id"])
    return load_config(result.config)


@pytest.fixture(scope="module")
def no_id(tmp_path_factory: pytest.TempPathFactory) -> ProjectConfig:
    cfg = _init(tmp_path_factory.mktemp("no-id"), event_id=False, name="devices")
    assert cfg.table.event_id is None, "the table was made without an id column"
    return cfg


@pytest.fixture(scope="module")
def with_id(tmp_path_factory: pytest.TempPathFactory) -> ProjectConfig:
    cfg = _init(tmp_path_factory.mktemp("with-id"), event_id=True, name="devices")
    assert cfg.table.event_id == "reading_id"
    return cfg


# ------------------------------------------------------------------------------------------ monitor


def test_init_says_what_a_table_without_an_event_id_costs(no_id: ProjectConfig) -> None:
    readme = " ".join((no_id.root / "README.md").read_text().split())
    assert "reports performance decay as not measurable" in readme and "starts no event stream" in readme


def test_labels_without_an_event_id_are_a_named_error_that_says_the_fix(no_id: ProjectConfig) -> None:
    with pytest.raises(NoEventId) as caught:
        labels_frame(pd.read_parquet(no_id.table_path), no_id)
    assert "set table.event_id" in str(caught.value)


def test_decay_without_an_event_id_is_not_measurable_and_says_why() -> None:
    """Predictions and labels that would decide decay if they could be joined: the verdict must
    still be "not measurable" (no id to join on), never "ok" and never an alert."""
    rng = np.random.default_rng(0)
    n = 4_000
    at = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.sort(rng.uniform(0, 60 * 86_400, n)), unit="s")
    y = rng.random(n) < 0.2
    predictions = pd.DataFrame({"predicted_at": at, "score": np.where(y, 0.9, 0.1), "decision": y})
    labels = pd.DataFrame({"event_timestamp": at, "label": y.astype(int)})
    verdict, windows = monitoring.decay_verdict(
        predictions, labels, datetime(2026, 3, 15, tzinfo=UTC), 7.0, MonitoringSpec(), 0.9,
        columns=monitoring.LabelColumns(event_id=None, available_at=None),
    )  # fmt: skip
    assert verdict.state == "not_measurable" and not verdict.alert and not verdict.judged
    assert windows == []
    (reason,) = verdict.reasons
    assert "table.event_id" in reason and "set table.event_id" in reason and "yet" not in reason


def test_the_summary_keeps_the_drift_verdicts_and_says_decay_is_not_measurable() -> None:
    verdict, _ = monitoring.decay_verdict(
        pd.DataFrame(), pd.DataFrame(), datetime(2026, 3, 15, tzinfo=UTC), 7.0, MonitoringSpec(),
        columns=monitoring.LabelColumns(event_id=None),
    )  # fmt: skip
    drifted = {"feature": "load", "psi": 0.8, "pvalue": 1e-30, "missing_current": 0.0, "drifted": True,
               "reasons": ("PSI 0.80 > 0.2",)}  # fmt: skip
    steady = {**drifted, "feature": "mode", "psi": 0.01, "pvalue": 0.5, "drifted": False, "reasons": ()}
    result = CheckResult(
        checked_at="2026-03-15T00:00:00+00:00", champion_version="1", window_start="2026-03-08T00:00:00+00:00",
        window_end="2026-03-15T00:00:00+00:00", rows=5_000, enough_rows=True, drifted_features=["load"],
        feature_drift=[drifted, steady], prediction_drift=None, decay=verdict.as_dict(), decay_windows=[],
        upstream_anomalies=[],
    )  # fmt: skip
    text = result.markdown()
    assert "| load | 0.800 |" in text and "**drift**" in text and "| mode | 0.010 |" in text
    assert "Not measurable: no event id declared (table.event_id)" in text and "set table.event_id" in text
    assert "Not measurable yet" not in text
    assert result.drift_detected and not result.performance_decayed
    assert result.evidence()["decay"]["state"] == "not_measurable"


# ------------------------------------------------------------------------------------------ up


def test_up_does_not_plan_the_stream_without_an_event_id_and_says_why(no_id: ProjectConfig) -> None:
    plan = stack.plan_up(no_id)
    assert stack.CONSUMER not in plan.start and stack.BROKER not in plan.start
    assert "table.event_id" in plan.skipped[stack.CONSUMER] and "set table.event_id" in plan.skipped[stack.CONSUMER]
    (line,) = plan.lines()
    assert line.startswith(f"{stack.BROKER} and {stack.CONSUMER} not started:"), line
    # A service started by `up` publishes each request as an event only where the stream runs: in
    # this project the publisher would refuse to start, and the service with it.
    _, env, _ = stack.service_launch(no_id, 3999)
    assert "MLCYCLE_STREAM_PUBLISH" not in env


def test_up_plans_the_stream_where_the_table_has_an_event_id(with_id: ProjectConfig) -> None:
    plan = stack.plan_up(with_id)
    assert stack.CONSUMER in plan.start and stack.BROKER in plan.start and plan.skipped == {}
    _, env, _ = stack.service_launch(with_id, 3999)
    assert env["MLCYCLE_STREAM_PUBLISH"] == "1"


def test_up_in_an_init_project_runs_the_generic_service_and_says_mlcycle_down(no_id: ProjectConfig) -> None:
    assert not (no_id.root / "services").exists() and not (no_id.root / "Makefile").exists()
    plan = stack.plan_up(no_id)
    assert stack.SERVICE in plan.start and stack.SERVICE not in plan.skipped
    assert plan.service == "mlcycle.service:ScoringService"  # the installed package's, no checkout needed
    cmd, _, url = stack.service_launch(no_id, 3999)
    assert "mlcycle.service:ScoringService" in cmd and url.endswith(":3999")
    assert cmd[cmd.index("--working-dir") + 1] == str(no_id.root)
    table = stack.format_table({"scoring service": url}, no_id)
    assert "mlcycle down" in table and "make" not in table
    assert "make" not in stack.not_ready_hint(no_id)


def test_a_project_with_its_own_service_and_makefile_keeps_them(tmp_path: Path) -> None:
    cfg = copy_project(tmp_path / "reference")  # the reference project: its own services/
    assert stack.plan_up(cfg).service == "services.service:ScoringService"
    assert "make" not in stack.stop_hint(cfg)
    (cfg.root / "Makefile").write_text("NAME := x\nup: ## start\n\tmlcycle up\ndown: ## stop\n\tmlcycle down\n")
    assert stack.stop_hint(cfg) == "mlcycle down (or: make down)"
    (cfg.root / "Makefile").write_text("down := later\nup:\n\tmlcycle up\n")  # a variable, not a target
    assert "make" not in stack.stop_hint(cfg)


# ------------------------------------------------------------------------------------------ status


def test_status_says_why_a_piece_exited(tmp_path: Path) -> None:
    """A process `up` launched that wrote its reason and exited: `status` shows that reason, not
    only that the pid file is stale."""
    cfg = copy_project(tmp_path / "project")
    last_words = "cannot stream: the test's own reason to stop"
    script = f"print('stream consumer started'); print('some progress'); import sys; sys.exit({last_words!r})"
    record = stack.launch(cfg, stack.CONSUMER, [sys.executable, "-c", script], "", stack.child_env(cfg))
    assert stack._CHILDREN[record.pid].wait(60) == 1
    (row,) = stack.status(cfg)
    assert row.name == stack.CONSUMER and not row.running
    assert row.health.startswith("exited: ") and last_words in row.health, row.health
    shown = CliRunner().invoke(app, ["status", "--config", str(cfg.root / "mlcycle.yaml")])
    assert shown.exit_code == 0 and last_words in " ".join(shown.output.split()), shown.output

    # A second start appends to the same log: only its own output counts.
    record = stack.launch(cfg, stack.CONSUMER, [sys.executable, "-c", "print('finished quietly')"], "",
                          stack.child_env(cfg))  # fmt: skip
    assert stack._CHILDREN[record.pid].wait(60) == 0
    (row,) = stack.status(cfg)
    assert "finished quietly" in row.health and last_words not in row.health, row.health


def test_a_consumer_that_announced_itself_and_exited_is_not_healthy(tmp_path: Path) -> None:
    """`mlcycle stream` prints its launch token first, then checks the config: `up` took the token
    for health and reported "healthy" for a consumer that had already exited."""
    cfg = copy_project(tmp_path / "project")
    script = (
        "import os, sys; print(f\"stream consumer started ({os.environ['MLCYCLE_STACK_ID']})\", flush=True); "
        "sys.exit('cannot stream: the test says so')"
    )
    record = stack.launch(cfg, stack.CONSUMER, [sys.executable, "-c", script], "", stack.child_env(cfg))
    assert stack._CHILDREN[record.pid].wait(60) == 1
    assert f"stream consumer started ({record.token})" in Path(record.log).read_text()
    result = stack.wait_healthy(cfg, [stack.CONSUMER], out=lambda _: None)[stack.CONSUMER]
    assert isinstance(result, stack.StackError) and "exited before it was healthy" in str(result)
    assert "cannot stream: the test says so" in str(result)
