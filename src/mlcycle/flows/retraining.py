"""Prefect flow ``retrain``: started by a drift or decay event, a schedule, or by hand.

One at a time (a lock held across hosts in profile ``scale``), once per monitoring check, and not
within ``retraining.cooldown_hours`` of the last retraining that trained. The check's summary path
comes from an event and is read only if it is under the project's monitoring directory.

Guard first (data contract; a broken upstream in the triggering check): if it trips, the flow
emits ``mlcycle.retraining.blocked``, writes why, and pauses for a person (``mlcycle approve RUN``
or ``mlcycle reject RUN``). Otherwise — or once approved — it runs the ``train`` flow on the latest
matured window (``retraining.train_window_days``; every gate, including the comparison with the
champion on the same recent test window), and hands a new ``challenger`` over to the ``rollout`` flow.
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow, get_run_logger, pause_flow_run, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run

import mlcycle  # noqa: F401  (telemetry off before the stack is imported)
from mlcycle.flows import load_flow
from mlcycle.monitoring import retraining
from mlcycle.project.config import ProjectConfig, load_config

IO = {"retries": 2, "retry_delay_seconds": 3, "cache_policy": NO_CACHE}


@task(name="guard", **IO)
def check_guard(cfg: ProjectConfig, summary_path: str | None) -> retraining.GuardResult:
    return retraining.guard(cfg, retraining.load_summary(summary_path))


@flow(name="retrain", log_prints=True)
def retrain(
    config: str | None = None,
    trigger: str = "manual",
    summary_path: str | None = None,
    rollout: bool | None = None,
    wait_seconds: float = 20.0,
    max_wait_seconds: float = 600.0,
    ignore_cooldown: bool = False,
) -> dict[str, Any]:
    """Retrain on the latest matured window unless the data looks broken; canary a new challenger.

    Single-flight: one retraining at a time per model, whatever started it (events, the weekly
    schedule, a person), held through its canary, so nothing moves the challenger alias under a
    canary that is judging it; and none trains within ``retraining.cooldown_hours`` of the last one
    that did (``ignore_cooldown`` for a person who means it)."""
    logger = get_run_logger()
    cfg = load_config(config)
    summary_path = retraining.checked_summary_path(cfg, summary_path)  # an event's payload: checked first
    run_name = flow_run.get_name() or "local"
    with retraining.single_flight(cfg) as held:
        log = retraining.RetrainingLog(cfg.promotion_log_uri)
        if not held:
            reason = f"another retraining is running ({log.latest_run(cfg.model.name) or 'holder unknown'})"
            logger.info("skipped: %s", reason)
            return {"outcome": "skipped", "trigger": trigger, "reason": reason}
        if summary_path and (holder := log.claimed_by(cfg.model.name, summary_path)):
            logger.info("the check %s already started retraining (%s): nothing to do", summary_path, holder)
            return {"outcome": "duplicate", "trigger": trigger, "held_by": holder}
        log.append(cfg.model.name, run_name, log.CLAIMED, trigger, summary_path)
        out = _retrain(cfg, log, run_name, trigger, summary_path, rollout, wait_seconds, max_wait_seconds,
                       ignore_cooldown)  # fmt: skip
        log.append(cfg.model.name, run_name, log.DONE, trigger, summary_path, str(out["outcome"]))
        return out


def _retrain(
    cfg: ProjectConfig,
    log: retraining.RetrainingLog,
    run_name: str,
    trigger: str,
    summary_path: str | None,
    rollout: bool | None,
    wait_seconds: float,
    max_wait_seconds: float,
    ignore_cooldown: bool,
) -> dict[str, Any]:
    logger = get_run_logger()
    logger.info("retraining triggered by %s (check: %s)", trigger, summary_path or "none")
    # The guard before the cooldown: a broken upstream is worth a person's attention even when no
    # retraining would run now.
    verdict = check_guard(cfg, summary_path)
    create_markdown_artifact(verdict.markdown(), key="retraining-guard", description="retraining guard")
    decision = None
    if not verdict.passed:
        run_id = flow_run.get_id()
        emit_event(
            event=retraining.BLOCKED_EVENT,
            resource={"prefect.resource.id": f"mlcycle.model.{cfg.model.name}", "prefect.resource.name": "retraining"},
            payload={"reasons": list(verdict.reasons), "flow_run_id": run_id, "trigger": trigger,
                     "summary_path": summary_path},
        )  # fmt: skip
        logger.error(
            "ALERT: retraining blocked, waiting for a person (%ss): %s\n  approve: mlcycle approve %s\n"
            "  reject:  mlcycle reject %s", cfg.retraining.approval_timeout_s, "; ".join(verdict.reasons), run_id,
            run_id,
        )  # fmt: skip
        decision = pause_flow_run(
            wait_for_input=retraining.Decision, timeout=cfg.retraining.approval_timeout_s, poll_interval=2
        )
        logger.info("decision by %s: %s (%s)", decision.who, "approve" if decision.approve else "reject", decision.note)
        if not decision.approve:
            return {"outcome": "refused", "trigger": trigger, "reasons": list(verdict.reasons), "by": decision.who}
    if not ignore_cooldown and (why := retraining.cooling_down(cfg, log)):
        logger.info("skipped: %s", why)
        return {"outcome": "skipped", "trigger": trigger, "reason": why}
    log.append(cfg.model.name, run_name, log.TRAINING, trigger, summary_path)
    train = load_flow(cfg.root, "training", "train")
    from mlcycle.registry.governance import current_principal

    asked = current_principal().name if trigger == "manual" else trigger  # a person, else the event or schedule
    result = train(config=str(cfg.root / "mlcycle.yaml"), window_days=cfg.retraining.train_window_days,
                   triggered_by=asked)  # fmt: skip
    out: dict[str, Any] = {"trigger": trigger, "training": result, "approved_by": decision.who if decision else None}
    if not result["passed"]:
        return {**out, "outcome": "rejected by the gates"}
    if result["alias"] != "challenger":
        return {**out, "outcome": f"registered v{result['version']} as {result['alias']}"}
    if not (cfg.retraining.rollout if rollout is None else rollout):
        return {**out, "outcome": f"v{result['version']} is challenger (rollout off)"}
    rollout_flow = load_flow(cfg.root, "rollout", "rollout_flow")
    canary = rollout_flow(config=str(cfg.root / "mlcycle.yaml"), wait_seconds=wait_seconds,
                          max_wait_seconds=max_wait_seconds)  # fmt: skip
    return {**out, "outcome": f"v{result['version']} {canary['outcome']}", "rollout": canary}


if __name__ == "__main__":
    print(retrain(sys.argv[1] if len(sys.argv) > 1 else None))
