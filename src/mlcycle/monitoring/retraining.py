"""Guard against blind retraining, and the human gate that overrides it.

Drift is a reason to retrain only if the data is right. When the data contract fails, or the
drift looks like a broken upstream (a feature suddenly all null or constant, a category list
replaced), retraining would teach the model the bug and the gates would compare it against a
champion on the same broken window. So the retraining flow stops, raises an alert and waits for a
person: ``mlcycle approve RUN`` (the data is right: retrain) or ``mlcycle reject RUN``.

Retraining is single-flight: drift and decay events, the weekly schedule and a person can all start
one, and two at once would move the challenger alias under a canary still judging the first. So a
lock (``single_flight``: a PostgreSQL advisory lock in profile ``scale``, which holds across hosts; a
``flock`` locally) admits one at a time, and a durable record (``RetrainingLog``, beside the
promotion log) lets one monitoring check start one retraining and keeps a cooldown after each
retraining that trained. The check's summary path arrives in an event payload: it is read only
from under the project's monitoring directory (``checked_summary_path``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from prefect.input import RunInput

from mlcycle import settings as scale
from mlcycle.data.validation import load_table, validate_table
from mlcycle.project.config import ProjectConfig

BLOCKED_EVENT = "mlcycle.retraining.blocked"
DRIFT_EVENT = "mlcycle.drift.detected"
DECAY_EVENT = "mlcycle.performance.decayed"
# The label-free estimate's whole interval below the bound: an early warning for a person, which starts
# no retraining by itself (the matured labels are the judge; the estimate is blind to concept drift).
ESTIMATED_DECAY_EVENT = "mlcycle.performance.estimated_decay"


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
    report = validate_table(load_table(cfg), cfg)
    if not report.ok:
        reasons += [f"data contract: {failure}" for failure in report.failures]
    if summary is not None:
        checked.append("upstream anomalies in the monitoring window")
        reasons += [f"broken upstream? {a}" for a in summary.get("upstream_anomalies", [])]
    return GuardResult(not reasons, tuple(reasons), tuple(checked))


def load_summary(path: str | None) -> dict[str, Any] | None:
    """The triggering check's summary; pass the path through ``checked_summary_path`` first."""
    if not path or "{{" in path:  # a trigger whose event carried no summary renders nothing useful
        return None
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"monitoring summary {p} not found: was data/ removed since the check ran?")
    return json.loads(p.read_text())


def checked_summary_path(cfg: ProjectConfig, path: str | None) -> str | None:
    """The triggering check's summary path, if it is one of this project's monitoring summaries.

    It comes from an event payload, which anyone who can emit an event controls: only a file under
    the project's monitoring directory is read, so an event cannot make the flow read (or make its
    evidence point at) an arbitrary file. None for no path, or a trigger template that rendered
    nothing; ValueError for a path elsewhere."""
    if not path or "{{" in path:
        return None
    root = cfg.monitoring_dir.resolve()
    resolved = Path(path).resolve()  # symlinks and '..' resolved before the check
    if not resolved.is_relative_to(root) or resolved.suffix != ".json":
        raise ValueError(f"summary_path {path!r} is not a monitoring summary of this project (a .json file under "
                         f"{root}): refused")  # fmt: skip
    return str(resolved)


class RetrainingLog:
    """Append-only record of retraining runs, beside the promotion log (SQLite, or PostgreSQL in
    profile ``scale``): which check a run claimed, when it trained, how it ended. Durable and shared
    by every host, so "this check already started a retraining" and the cooldown hold across
    processes, restarts and workers."""

    CLAIMED, TRAINING, DONE = "claimed", "training", "done"

    def __init__(self, uri: str):
        self.engine, self.table = scale.log_table(
            uri,
            "mlcycle_retraining_log",
            sa.Column("run", sa.String(256), nullable=False),
            sa.Column("step", sa.String(32), nullable=False),
            sa.Column("trigger", sa.String(256)),
            sa.Column("summary_path", sa.Text),
            sa.Column("outcome", sa.Text),
        )

    def append(self, model: str, run: str, step: str, trigger: str | None = None, summary_path: str | None = None,
               outcome: str | None = None, at: datetime | None = None) -> None:  # fmt: skip
        row = {"at": at or datetime.now(UTC), "model": model, "run": run, "step": step, "trigger": trigger,
               "summary_path": summary_path, "outcome": outcome}  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(self.table.insert().values(**row))

    def _latest(self, *where: Any) -> Any:
        query = sa.select(self.table).where(*where).order_by(self.table.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            return conn.execute(query).mappings().first()

    def claimed_by(self, model: str, summary_path: str) -> str | None:
        """The run that already claimed this check (one check emits drift and decay: one retraining)."""
        t = self.table.c
        row = self._latest(t.model == model, t.step == self.CLAIMED, t.summary_path == summary_path)
        return row["run"] if row else None

    def last_training(self, model: str) -> tuple[datetime, str] | None:
        """When the latest retraining started to train, and which run."""
        row = self._latest(self.table.c.model == model, self.table.c.step == self.TRAINING)
        if row is None:
            return None
        at = row["at"] if row["at"].tzinfo else row["at"].replace(tzinfo=UTC)
        return at, row["run"]

    def latest_run(self, model: str) -> str | None:
        row = self._latest(self.table.c.model == model)
        return f"{row['run']} ({row['step']} at {row['at']:%Y-%m-%d %H:%M:%S})" if row else None


def cooling_down(cfg: ProjectConfig, log: RetrainingLog, now: datetime | None = None) -> str | None:
    """Why a retraining must not train now (the last one trained within ``retraining.cooldown_hours``), or None."""
    hours = cfg.retraining.cooldown_hours
    last = log.last_training(cfg.model.name) if hours > 0 else None
    if last is None:
        return None
    at, run = last
    until = at + timedelta(hours=hours)
    if (now or datetime.now(UTC)) >= until:
        return None
    return (f"cooldown: the retraining {run} trained at {at:%Y-%m-%d %H:%M:%S} UTC, within retraining.cooldown_hours"
            f"={hours:g}; next retraining allowed from {until:%Y-%m-%d %H:%M:%S} UTC")  # fmt: skip


def lock_key(model: str) -> int:
    """A signed 64-bit key for PostgreSQL's advisory lock, stable across hosts and processes."""
    return int.from_bytes(hashlib.sha256(f"mlcycle.retrain:{model}".encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def single_flight(cfg: ProjectConfig) -> Iterator[bool]:
    """Hold the project's retraining lock for the block; yields False (immediately) if another
    retraining holds it. Profile ``scale``: a PostgreSQL advisory lock on the promotion log's
    database, so workers on different hosts exclude each other, and a dead holder's lock goes with
    its connection. Profile ``local``: an exclusive ``flock`` on ``data/retraining.lock``, which
    the kernel releases when the holder dies (one host by definition)."""
    uri = cfg.promotion_log_uri
    if uri.startswith("postgresql"):
        scale.ensure_database(uri)
        engine = sa.create_engine(uri, poolclass=sa.pool.NullPool)  # closing must end the session
        key = lock_key(cfg.model.name)
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                held = bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
                try:
                    yield held
                finally:
                    if held:
                        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            engine.dispose()
        return
    path = cfg.data_path / "retraining.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


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


def resume_paused(flow_name: str, run_input: dict[str, Any], api: str | None = None) -> list[str]:
    """Wake every paused run of ``flow_name`` with ``run_input``; the ids of those woken. A rollout
    waiting for an approval is woken this way after the decision was recorded in the registry."""
    from prefect.flow_runs import resume_flow_run

    woken = []
    for run in blocked_runs(api, flow_name):
        with _api(api):
            resume_flow_run(UUID(run["id"]), run_input=run_input)
        woken.append(run["id"])
    return woken


def blocked_runs(api: str | None = None, flow_name: str = "retrain") -> list[dict[str, Any]]:
    """Paused runs of ``flow_name`` (a retraining, by default) waiting for a person, newest first."""
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
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))),
        )
    return [
        {"id": str(r.id), "name": r.name, "since": (r.state.timestamp if r.state else datetime.now(UTC)).isoformat()}
        for r in sorted(runs, key=lambda r: r.expected_start_time or datetime.min.replace(tzinfo=UTC), reverse=True)
    ]
