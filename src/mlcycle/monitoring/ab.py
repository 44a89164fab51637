"""An A/B rollout judged by a group-sequential test whose looks are remembered between analyses.

In ``ab`` mode every analysis (``mlcycle rollout status``) is a look at the accumulating data: the
champion's and the challenger's per-prediction values (the 0/1 decision for ``flag_rate``, or a
KPI's value on matured outcomes), each arm in arrival order. ``kpi.sequential_ab`` stops at the
first look whose z reaches its O'Brien–Fleming-type bound, and those bounds depend on the looks
actually taken, so they are recorded: ``data/rollout/ab-looks.json`` keeps, per A/B (the traffic
change that started it, the two versions and the metric), the plan, each look's count per arm and
the decision once reached.

- A look is recorded with its statistic and bound when it is taken, and never recomputed: rows
  that change later (an outcome arriving late inside an earlier look's span, a row forgotten)
  must not re-run past looks, which would be more tests than the spending allows for.
- A repeated analysis without new rows is not a look: it would spend α on no information.
- After a stop, later analyses report the stop and take no look (more peeking would inflate the
  false-positive rate the spending function guarantees); a recorded decision is never changed.
- For a KPI, each arm's values are in the order their outcomes became known, so the series only
  grows at its end.
- The plan (per arm) is fixed at the first look: ``canary.ab_planned_per_arm``, else the
  two-proportion sample size for ``canary.ab_minimum_detectable_effect`` on the flag rate. The look
  that reaches it spends what is left of α and ends the test either way.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlcycle.monitoring import kpi
from mlcycle.project.config import ProjectConfig
from mlcycle.serving.canary import variant_rows

FLAG_RATE = "flag_rate"
FILE_MODE = 0o600


@dataclass
class ABRecord:
    """One A/B's looks so far: what ``look`` reads and writes."""

    key: str
    metric: str
    planned_per_arm: int
    alpha: float
    looks: list[dict[str, float]] = field(default_factory=list)  # each look as taken (SequentialLook's fields)
    decision: str = "continue"


def looks_path(cfg: ProjectConfig) -> Path:
    return cfg.data_path / "rollout" / "ab-looks.json"


def ab_key(model: str, started_at: Any, champion: str, challenger: str, metric: str) -> str:
    """One A/B: a new traffic change, another pair of versions or another metric starts a new test."""
    return f"{model}|{pd.Timestamp(started_at).isoformat()}|v{champion}|v{challenger}|{metric}"


def _records(path: Path) -> dict[str, dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else {}


def load(path: Path, key: str) -> ABRecord | None:
    raw = _records(path).get(key)
    return ABRecord(**raw) if raw else None


def _save(path: Path, record: ABRecord) -> None:
    records = _records(path)
    records[record.key] = asdict(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(records, indent=2))
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)


def look(
    path: Path,
    key: str,
    champion: np.ndarray,
    challenger: np.ndarray,
    *,
    metric: str,
    planned_per_arm: int,
    alpha: float,
) -> kpi.SequentialResult:
    """Take a look at both arms' values (each in arrival order) if they hold new information and the
    test has not stopped; record it; return the test's state over every look taken."""
    record = load(path, key) or ABRecord(key, metric, int(planned_per_arm), float(alpha))
    looks = [kpi.SequentialLook(**taken) for taken in record.looks]  # type: ignore[arg-type]
    if record.decision == "continue":
        step = kpi.next_look(
            champion, challenger, [taken.fraction for taken in looks], record.planned_per_arm, record.alpha
        )
        if step is not None:
            looks.append(step)
            record.decision = kpi.look_decision(step)
            record.looks = [asdict(taken) for taken in looks]
            _save(path, record)
    return kpi.SequentialResult(tuple(looks), record.alpha, record.decision)  # type: ignore[arg-type]


def arm_values(
    predictions: pd.DataFrame,
    champion_version: str,
    challenger_version: str,
    metric: str = FLAG_RATE,
    *,
    outcomes: pd.DataFrame | None = None,
    metric_spec: Any = None,
    as_of: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-prediction values of each arm in arrival order: the 0/1 decision by ``logged_at`` (then
    request id), or a KPI's value, for the predictions whose outcome had arrived by ``as_of``, by the
    outcome's arrival."""
    arms = []
    for rows in variant_rows(predictions, challenger_version, champion_version):
        rows = rows.sort_values(["logged_at", "request_id"], kind="stable")
        if metric == FLAG_RATE:
            arms.append(rows["decision"].fillna(False).astype(bool).to_numpy(float))
            continue
        joined, _missing = kpi.join_outcomes(rows, outcomes, as_of) if len(rows) else (rows, 0)
        if len(joined):  # in the order the outcomes became known: a late one joins the end, not the middle
            joined = joined.sort_values([kpi.AVAILABLE_AT, "request_id"], kind="stable")
        arms.append(kpi.per_prediction(joined, metric_spec) if len(joined) else np.array([]))
    return arms[0], arms[1]
