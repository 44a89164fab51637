"""Guard against blind retraining, and the human gate that overrides it.

Drift is a reason to retrain only if the data is right. When the data contract fails, or the
drift looks like a broken upstream (a feature suddenly all null or constant, a category list
replaced), retraining would teach the model the bug and the gates would compare it against a
champion on the same broken window. So the retraining flow stops, raises an alert and waits for a
person: ``mlcycle approve RUN`` (the data is right: retrain) or ``mlcycle reject RUN``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.input import RunInput

from mlcycle.config import ProjectConfig
from mlcycle.validation import load_transactions, validate_transactions

BLOCKED_EVENT = "mlcycle.retraining.blocked"
DRIFT_EVENT = "mlcycle.drift.detected"
DECAY_EVENT = "mlcycle.performance.decayed"


class Decision(RunInput):
    """What a person answers to a blocked retraining (``mlcycle approve|reject RUN``)."""

    approve: bool
    who: str = "unknown"
    note: str = ""


@dataclass(frozen=True)
class GuardResult:
    passed: bool
    reasons: tuple[str, ...]
    checked: tuple[str, ...] = field(default_factory=tuple)

    def markdown(self) -> str:
        head = "## Retraining guard: " + ("passed" if self.passed else "**blocked**")
        body = [f"- {r}" for r in self.reasons] or ["- nothing wrong found"]
        return "\n".join([head, "", "Checked: " + ", ".join(self.checked), "", *body])


def guard(cfg: ProjectConfig, summary: dict[str, Any] | None) -> GuardResult:
    """Is it safe to retrain? The raw data must pass the contract and the monitoring check that
    triggered the retraining (``summary``) must not show a broken upstream."""
    reasons: list[str] = []
    checked = ["data contract"]
    report = validate_transactions(load_transactions(cfg.raw_dir / "transactions.parquet"))
    if not report.ok:
        reasons += [f"data contract: {failure}" for failure in report.failures]
    if summary is not None:
        checked.append("upstream anomalies in the monitoring window")
        reasons += [f"broken upstream? {a}" for a in summary.get("upstream_anomalies", [])]
    return GuardResult(not reasons, tuple(reasons), tuple(checked))


def load_summary(path: str | None) -> dict[str, Any] | None:
    if not path or "{{" in path:  # a trigger whose event carried no summary renders nothing useful
        return None
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"monitoring summary {p} not found: was data/ removed since the check ran?")
    return json.loads(p.read_text())


def claim(summary_path: str | None, run_name: str) -> str | None:
    """Make sure one monitoring check starts one retraining, though it may emit two events
    (drift and decay): the first run creates ``retrain.claimed`` beside the summary; a later one
    gets the name of the run that holds it."""
    if not summary_path or "{{" in summary_path:
        return None
    marker = Path(summary_path).parent / "retrain.claimed"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return marker.read_text().strip() or "another run"
    with os.fdopen(fd, "w") as fh:
        fh.write(run_name)
    return None


def api_url(cfg: ProjectConfig) -> str | None:
    """The Prefect API to talk to: PREFECT_API_URL, else the server ``mlcycle up`` recorded."""
    if url := os.environ.get("PREFECT_API_URL"):
        return url
    from mlcycle import stack

    record = stack.Record.read(stack.pid_path(cfg, stack.PREFECT_SERVER))
    return f"{record.url}/api" if record else None


def _api(url: str | None) -> contextlib.AbstractContextManager:
    """Prefect settings are fixed when prefect is imported; a URL found later applies through them."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: url}) if url else contextlib.nullcontext()


def decide(flow_run_id: str, approve: bool, who: str, note: str = "", api: str | None = None) -> None:
    """Resume a blocked retraining with a person's decision."""
    from prefect.flow_runs import resume_flow_run

    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        raise ValueError(f"'{flow_run_id}' is not a flow-run id (a UUID, as the alert prints it)") from None
    with _api(api):
        resume_flow_run(run_id, run_input={"approve": approve, "who": who, "note": note})


def blocked_runs(api: str | None = None) -> list[dict[str, Any]]:
    """Paused retraining runs waiting for a person, newest first."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )

    with _api(api), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))),
        )
    return [
        {"id": str(r.id), "name": r.name, "since": (r.state.timestamp if r.state else datetime.now(UTC)).isoformat()}
        for r in sorted(runs, key=lambda r: r.expected_start_time or datetime.min.replace(tzinfo=UTC), reverse=True)
    ]
