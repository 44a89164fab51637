"""One version's history in one record: who trained it on what, what the gates and the canary
measured, who decided and why, and every alias and traffic move that touched it.

Everything comes from where it was written at the time — the version's tags and its run's
``reports/gates.json`` in the registry, the rows of the promotion log — never from a summary kept on
the side, so the record cannot disagree with the sources it is read from. The log's hash chain is
verified with it: an audit of an edited log says so instead of presenting the edited rows.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlcycle.decisions import CheckResult
from mlcycle.registry import aliases as registry
from mlcycle.registry import audit_chain as chain
from mlcycle.registry import governance

GATES_ARTIFACT = "reports/gates.json"
CANARY_TAG = "mlcycle.canary.steps"  # each canary step's verdict, as JSON (the rollout writes it)


class UnknownVersion(LookupError):
    """The model has no such version: nothing to audit."""


@dataclass(frozen=True)
class VersionAudit:
    model: str
    version: str
    run_id: str | None
    created: str | None
    trained_by: str | None
    triggered_by: str | None
    last_changed_by: str | None
    data_hash: str | None
    git_commit: str | None
    aliases: list[str]
    approval: governance.Approval
    authenticated: bool | None  # whether the approver's identity was verified by a server
    gates: list[dict[str, Any]]  # each gate: name, status, line (value, bound, detail)
    gate_source: str  # where the gates were read from, or why they could not be
    canary: list[dict[str, Any]]  # each step: percent, state, checks (lines)
    events: list[dict[str, Any]]  # promotion-log rows that name this version, oldest first
    chain: dict[str, Any] = field(default_factory=dict)  # the log's verification

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["approval"] = {
            "state": self.approval.state,
            "by": self.approval.by,
            "at": self.approval.at,
            "note": self.approval.note,
            "current": self.approval.current,
            "authenticated": self.authenticated,
        }
        del out["authenticated"]
        return out


def _check(entry: dict[str, Any]) -> dict[str, Any]:
    """A gate as logged (``Verdict.to_dict``), rebuilt to print the line the gate printed."""
    known = {f.name for f in fields(CheckResult)}
    values = {k: v for k, v in entry.items() if k in known}
    if isinstance(values.get("bound"), list):
        values["bound"] = tuple(values["bound"])
    check = CheckResult(**values)
    return {"name": check.name, "status": check.status, "line": check.line(), "evidence": check.evidence}


def gates_of(client: MlflowClient, run_id: str | None) -> tuple[list[dict[str, Any]], str]:
    if not run_id:
        return [], "no run recorded on the version"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, GATES_ARTIFACT, tmp)
        except (MlflowException, OSError) as exc:
            return [], f"run {run_id} has no {GATES_ARTIFACT}: {exc}"
        logged = json.loads(Path(path).read_text())
    return [_check(c) for c in logged.get("checks", [])], f"run {run_id} {GATES_ARTIFACT}"


def _mentions(event: chain.ChainRow, version: str) -> bool:
    c = event.content
    if version in (c["from_version"], c["to_version"]):
        return True
    return re.search(rf"\bv{re.escape(version)}\b", str(c["reason"] or "")) is not None


def version_audit(client: MlflowClient, log: registry.PromotionLog, name: str, version: str) -> VersionAudit:
    try:
        found = client.get_model_version(name, str(version))
    except MlflowException:
        raise UnknownVersion(f"{name} has no version {version}") from None
    tags = found.tags or {}
    run_id = tags.get("mlcycle.run_id") or found.run_id
    commit = None
    if run_id:
        try:
            commit = client.get_run(run_id).data.tags.get("mlcycle.git_commit")
        except MlflowException:
            commit = None
    gates, source = gates_of(client, run_id)
    try:
        canary = json.loads(tags.get(CANARY_TAG, "[]"))
    except json.JSONDecodeError:
        canary = [{"state": "unreadable", "checks": [tags.get(CANARY_TAG, "")[:200]]}]
    rows = log.rows(name)
    events = [
        {"id": r.id, **{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.content.items()}}
        for r in rows
        if _mentions(r, str(version))
    ]
    authenticated = tags.get(governance.AUTHENTICATED_TAG)
    created = found.creation_timestamp
    return VersionAudit(
        model=name,
        version=str(version),
        run_id=run_id,
        created=None if created is None else datetime.fromtimestamp(created / 1000, UTC).isoformat(timespec="seconds"),
        trained_by=tags.get(governance.TRAINED_BY_TAG),
        triggered_by=tags.get(governance.TRIGGERED_BY_TAG),
        last_changed_by=tags.get(governance.CHANGED_BY_TAG),
        data_hash=tags.get("mlcycle.data_hash"),
        git_commit=commit,
        aliases=sorted(found.aliases or []),
        approval=governance.approval_of(found),
        authenticated=None if authenticated is None else authenticated == "true",
        gates=gates,
        gate_source=source,
        canary=canary,
        events=events,
        chain=log.verify().as_dict(),
    )
