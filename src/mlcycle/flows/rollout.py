"""Prefect flow ``rollout``: step the challenger's traffic 5% → 25% → 50% → 100% under automated
canary analysis, then promote it — or roll back by itself when a guard trips.

The canary is bound to the two versions it started with: the analysis reads only their rows of the
prediction log, and if the challenger (or champion) alias moves while it runs — a retraining, a
person — the flow stops without promoting: judging v3 and promoting v2 must be impossible.

Each step sets the policy in the registry (every replica obeys within seconds), waits until both
versions have served enough requests since the policy changed, and judges them from the prediction
log (error rate, p99 latency, score PSI, paired agreement on a shadow step, AUC / precision on
matured labels). A check the data cannot decide yet keeps the step waiting, up to
``max_wait_seconds``; still undecided then, the canary ends *undecided*: traffic back to the
champion, nothing promoted, the challenger kept for a person or a later canary. Thin: the analysis
is ``mlcycle.canary``, the policy ``mlcycle.rollout``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, pause_flow_run, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput
from prefect.runtime import flow_run

import mlcycle  # noqa: F401  (telemetry off before the stack is imported)
from mlcycle.data.validation import load_table
from mlcycle.decisions import Verdict
from mlcycle.features.pipeline import labels_frame
from mlcycle.monitoring import canary_estimate
from mlcycle.project.config import ProjectConfig, load_config
from mlcycle.registry import aliases as registry
from mlcycle.registry import audit, gate, governance
from mlcycle.serving import canary, rollout
from mlcycle.serving.prediction_store import read_logged_predictions

IO = {"retries": 2, "retry_delay_seconds": 2, "cache_policy": NO_CACHE}
EVIDENCE_TAG = "mlcycle.canary.evidence"  # the canary's steps, on the version the approver reads
TAG_LIMIT = 5000  # characters MLflow keeps in a tag value


class ApprovalDecision(RunInput):
    """What `mlcycle approve|reject VERSION` sends a rollout paused for it. Only a wake-up call:
    the decision itself is read back from the registry, where its checks recorded it."""

    version: str
    approve: bool


def _who() -> str:
    """The principal this process runs as, with the run that acted: every traffic move is on record."""
    return f"{governance.current_principal()} via flow:rollout/{flow_run.get_name() or 'local'}"


@task(name="set-traffic", **IO)
def set_traffic(cfg: ProjectConfig, percent: float, reason: str) -> rollout.RolloutPolicy:
    """A step of 0% is a shadow step: the challenger scores every request and answers none."""
    client = registry.client_for(cfg)
    log = registry.PromotionLog(cfg.promotion_log_uri)
    policy = (
        rollout.RolloutPolicy(mode="shadow") if percent <= 0 else rollout.RolloutPolicy(mode="canary", percent=percent)
    )
    return rollout.write_policy(client, log, cfg.model.name, policy, reason, _who())


@task(name="aliases", **IO)
def aliases(cfg: ProjectConfig) -> tuple[str | None, str | None]:
    """(challenger, champion) versions in the registry now."""
    client = registry.client_for(cfg)
    found = [registry.version_by_alias(client, cfg.model.name, a) for a in (registry.CHALLENGER, registry.CHAMPION)]
    return tuple(str(v.version) if v is not None else None for v in found)  # type: ignore[return-value]


def moved(bound: tuple[str, str], now: tuple[str | None, str | None]) -> str | None:
    """Why the canary no longer judges what it started with, or None."""
    names = (registry.CHALLENGER, registry.CHAMPION)
    changes = [f"{n} v{b} → {'v' + c if c else 'none'}" for n, b, c in zip(names, bound, now, strict=True) if b != c]
    return "; ".join(changes) or None


@task(name="collect-predictions", **IO)
def collect(
    cfg: ProjectConfig, since: datetime, versions: tuple[str, str], wait_s: float, max_wait_s: float
) -> pd.DataFrame:
    """Wait (bounded) until both versions have enough requests since ``since``; matured labels attached."""
    challenger_version, champion_version = versions
    deadline = time.monotonic() + max_wait_s
    time.sleep(wait_s)
    while True:
        predictions = read_logged_predictions(cfg, since)
        champion, challenger = canary.variant_rows(predictions, challenger_version, champion_version)
        if min(len(champion), len(challenger)) >= cfg.canary.min_requests or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if not cfg.table.event_id:  # no event id: no label joins a request (the quality check says so)
        return canary.attach_labels(predictions, pd.DataFrame(), datetime.now(UTC), 0.0, "label", key=None)
    labels = labels_frame(load_table(cfg), cfg)  # the lifecycle's names: event_id, label, label_available_at
    return canary.attach_labels(predictions, labels, datetime.now(UTC), cfg.table.label_delay_days, "label")


@task(name="analyze-canary", cache_policy=NO_CACHE)
def analyze(cfg: ProjectConfig, predictions: pd.DataFrame, versions: tuple[str, str], percent: float) -> Verdict:
    verdict = canary.analyze(predictions, cfg.canary, challenger_version=versions[0], champion_version=versions[1],
                             looks=cfg.canary.max_looks, shadow=percent <= 0, task=cfg.task)  # fmt: skip
    estimated = ""
    if cfg.task == "classification" and canary.enough_data(verdict):
        try:  # while labels are missing: both arms' label-free estimates, shown (and judged if configured)
            compared = canary_estimate.compare_versions(
                cfg,
                predictions,
                champion_version=versions[1],
                challenger_version=versions[0],
                looks=cfg.canary.max_looks,
            )
        except Exception as exc:  # the estimate is evidence beside the canary's checks, never its failure
            get_run_logger().warning(
                "label-free estimates of the canary not available: %s: %s", type(exc).__name__, exc
            )
        else:
            estimated = "\n" + compared.markdown()
            if cfg.canary.judge_on_estimates:
                verdict = Verdict(verdict.kind, verdict.checks + compared.checks)
    step = "shadow" if percent <= 0 else f"{percent:g}%"
    title = f"### canary of v{versions[0]} against v{versions[1]}, {step}\n\n"
    if (rate := cfg.privacy.capture.rate) < 1:  # the log keeps a sample: the counts are of logged requests
        title += (
            f"Read from a {rate:.0%} capture sample of the requests (privacy.capture.rate): sample sizes and "
            "canary.min_requests count logged requests, so each step waits about 1/rate times longer.\n\n"
        )
    create_markdown_artifact(title + verdict.markdown() + estimated, key=f"canary-{int(percent)}")
    return verdict


@task(name="promote-challenger", **IO)
def promote(cfg: ProjectConfig, versions: tuple[str, str], reason: str) -> str | None:
    """Promote the bound challenger — unless an alias moved since the last check, or the rules
    refuse it (then say why). With ``rollout.require_approval`` the move carries out a recorded
    approval; without, the flow's own principal must hold the approver role (open projects: all)."""
    client = registry.client_for(cfg)
    log = registry.PromotionLog(cfg.promotion_log_uri)
    if why := moved(versions, aliases.fn(cfg)):
        return why
    # The process's principal (the worker's service identity under `mlcycle up`) holds the role, or
    # not; the run's name goes into the record beside it.
    me = governance.current_principal()
    principal = governance.Principal(me.name, me.authenticated, f"{me.via}, flow:rollout/{flow_run.get_name()}")
    try:
        required = cfg.rollout.require_approval
        if os.environ.get(gate.GATE_URL_ENV):  # profile scale with authentication: the gate moves it
            gate.GateClient.from_env().promote(versions[0], reason, on_behalf_of_approval=required)
        else:
            governance.promote(client, log, cfg.governance, cfg.model.name, versions[0], reason, principal, required,
                               on_behalf_of_approval=required)  # fmt: skip
    except governance.Refused as exc:
        return str(exc)
    rollout.write_policy(client, log, cfg.model.name, rollout.RolloutPolicy(), "canary complete", _who())
    return None


@task(name="request-approval", **IO)
def request_approval(cfg: ProjectConfig, version: str, champion: str, steps: list[dict[str, Any]]) -> str:
    """Put the canary's evidence where the approver reads it: a Prefect artifact and the MLflow
    version's tag; the traffic stays where the last step left it while the person decides."""
    lines = [f"### v{version} passed its canary against v{champion}: approve or reject", ""]
    for step in steps:
        name = "shadow" if step["percent"] <= 0 else f"{step['percent']:g}%"
        lines += [f"**{name}**: {step['state']}", *(f"- {c}" for c in step["checks"]), ""]
    lines += [f"`mlcycle approve {version} --note …` or `mlcycle reject {version} --note …`"]
    text = "\n".join(lines)
    create_markdown_artifact(text, key="approval-request", description=f"canary evidence for v{version}")
    client = registry.client_for(cfg)
    client.set_model_version_tag(cfg.model.name, version, EVIDENCE_TAG, text[:TAG_LIMIT])
    return text


@task(name="record-canary-step", **IO)
def record_steps(cfg: ProjectConfig, version: str, steps: list[dict[str, Any]]) -> None:
    """Each step's verdict on the version itself, so `mlcycle audit VERSION` shows the canary's
    evidence after the flow run's logs are gone (the latest steps kept within MLflow's tag limit)."""
    kept = list(steps)
    while len(kept) > 1 and len(json.dumps(kept)) > TAG_LIMIT:
        kept = kept[1:]
    text = json.dumps(kept)[:TAG_LIMIT]
    registry.client_for(cfg).set_model_version_tag(cfg.model.name, version, audit.CANARY_TAG, text)


@task(name="read-approval", **IO)
def read_approval(cfg: ProjectConfig, version: str) -> governance.Approval:
    return governance.approval_of(registry.client_for(cfg).get_model_version(cfg.model.name, version))


def await_approval(cfg: ProjectConfig, version: str, champion: str, steps: list[dict[str, Any]]) -> governance.Approval:
    """Wait for a person's decision on ``version``, paused in this process (a Prefect pause, not a
    suspend, so nothing re-runs); the decision is what the registry records, checked when it was
    made, not what the wake-up call says."""
    logger = get_run_logger()
    approval = read_approval(cfg, version)
    if approval.valid or approval.state == governance.REJECTED:
        return approval
    request_approval(cfg, version, champion, steps)
    logger.warning("v%s passed its canary and waits for an approver (up to %d s): mlcycle approve %s --note … | "
                   "mlcycle reject %s --note …", version, cfg.rollout.approval_timeout_s, version, version)  # fmt: skip
    deadline = time.monotonic() + cfg.rollout.approval_timeout_s
    while time.monotonic() < deadline:
        try:
            pause_flow_run(wait_for_input=ApprovalDecision, timeout=max(10, int(deadline - time.monotonic())),
                           poll_interval=2)  # fmt: skip
        except Exception as exc:  # the pause timed out (Prefect's FlowPauseTimeout) or could not be kept
            logger.warning("no decision on v%s: %s", version, exc)
            break
        approval = read_approval(cfg, version)
        if approval.valid or approval.state == governance.REJECTED:
            return approval
        logger.warning("woken without a recorded decision on v%s (%s): waiting on", version, approval.line())
    return read_approval(cfg, version)


@task(name="roll-back", **IO)
def roll_back(cfg: ProjectConfig, reason: str) -> None:
    client = registry.client_for(cfg)
    rollout.abort_canary(client, registry.PromotionLog(cfg.promotion_log_uri), cfg.model.name, reason, _who())


@task(name="end-canary", **IO)
def end_canary(cfg: ProjectConfig, reason: str) -> None:
    """Traffic back to the champion, aliases untouched (an undecided canary, or one whose alias moved)."""
    client = registry.client_for(cfg)
    log = registry.PromotionLog(cfg.promotion_log_uri)
    rollout.write_policy(client, log, cfg.model.name, rollout.RolloutPolicy(mode="champion-only"), reason, _who())


@flow(name="rollout", log_prints=True)
def rollout_flow(
    config: str | None = None, wait_seconds: float = 20.0, max_wait_seconds: float = 600.0
) -> dict[str, Any]:
    """Canary the current challenger; promote it, roll it back, or end undecided, with the evidence of each step."""
    logger = get_run_logger()
    cfg = load_config(config)
    challenger, champion = aliases(cfg)
    if challenger is None or champion is None:
        raise RuntimeError("a canary needs both a champion and a challenger alias")
    versions = (challenger, champion)
    version = challenger
    steps: list[dict[str, Any]] = []

    def aborted(why: str, percent: float) -> dict[str, Any]:
        reason = f"canary of v{version} aborted at {percent:g}%: alias moved ({why}); not promoted"
        logger.error(reason)
        end_canary(cfg, reason)
        return {"outcome": "aborted", "version": version, "reason": reason, "steps": steps}

    for percent in cfg.canary.steps:
        if percent >= 100:
            break
        step = "shadow" if percent <= 0 else f"{percent:g}%"
        policy = set_traffic(cfg, percent, f"canary step {step} for v{version} against v{champion}")
        since = policy.updated_at or datetime.now(UTC)  # the window starts at this policy's change
        deadline = time.monotonic() + max_wait_seconds
        looks = 0  # analyses with enough requests: at most max_looks, each interval widened for them
        while True:
            if why := moved(versions, aliases(cfg)):
                return aborted(why, percent)
            left = max(0.0, deadline - time.monotonic())
            predictions = collect(cfg, since, versions, min(wait_seconds, left), left)
            verdict = analyze(cfg, predictions, versions, percent)
            looks += canary.enough_data(verdict)
            if verdict.state != "not_measurable" or time.monotonic() >= deadline or looks >= cfg.canary.max_looks:
                break
            logger.info("canary %s: waiting (%s)", step, "; ".join(c.line() for c in verdict.undecided))
        if why := moved(versions, aliases(cfg)):
            return aborted(why, percent)
        steps.append({"percent": percent, "passed": verdict.passed, "state": verdict.state,
                      "checks": [c.line() for c in verdict.checks],
                      "warnings": [c.name for c in verdict.warnings]})  # fmt: skip
        record_steps(cfg, version, steps)
        logger.info("canary %s: %s", step, verdict.state)
        if verdict.state == "fail":
            failed = ", ".join(c.name for c in verdict.measured_failures)
            roll_back(cfg, f"canary of v{version} failed at {step}: {failed}")
            return {"outcome": "rolled back", "version": version, "failed": failed, "steps": steps}
        if verdict.state == "not_measurable":
            undecided = ", ".join(c.name for c in verdict.undecided)
            reason = (f"canary of v{version} undecided at {step} after {looks} looks: {undecided} "
                      "not measurable; not promoted, challenger kept")  # fmt: skip
            end_canary(cfg, reason)
            return {"outcome": "undecided", "version": version, "undecided": undecided, "reason": reason,
                    "steps": steps}  # fmt: skip
    passed = ", ".join("shadow" if s["percent"] <= 0 else f"{s['percent']:g}%" for s in steps)
    warned = sorted({w for s in steps for w in s["warnings"]})
    note = f" (not judged, accepted by config: {', '.join(warned)})" if warned else ""
    if cfg.rollout.require_approval:
        approval = await_approval(cfg, version, champion, steps)
        if not approval.valid:
            outcome = "rejected" if approval.state == governance.REJECTED else "undecided"
            reason = f"canary of v{version} passed; not promoted: {approval.line()}"
            end_canary(cfg, reason)
            return {"outcome": outcome, "version": version, "reason": reason, "steps": steps}
    if why := promote(cfg, versions, f"canary passed at {passed}{note}"):
        if "refused" in why:
            end_canary(cfg, f"canary of v{version} passed; not promoted: {why}")
            return {"outcome": "refused", "version": version, "reason": why, "steps": steps}
        return aborted(why, 100.0)
    return {"outcome": "promoted", "version": version, "steps": steps, "warnings": warned}


if __name__ == "__main__":
    print(rollout_flow(sys.argv[1] if len(sys.argv) > 1 else None))
