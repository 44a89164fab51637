"""Rollout policy: which model answers which request. OSS BentoML has no traffic splitting; this is it.

The policy lives in the registry (a tag on the registered model), so every replica reads the same
one, and every change is appended to the promotion log like an alias move. Routing is sticky: a
request's bucket is a hash of its routing key (``serving.routing_key``, default the first entity
key), so the same entity meets the same model for the whole canary.

Modes:
- ``champion-only``: every request is scored by the champion.
- ``shadow``: the challenger scores every request too; its score is logged, never returned.
- ``canary``: ``percent`` of routing keys (by hash) get the challenger's answer.
- ``ab``: a fixed split like canary, judged by a stopping rule instead of stepped up.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Literal

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict, Field

from mlcycle.registry import aliases as registry

POLICY_TAG = "mlcycle.rollout"
Mode = Literal["champion-only", "shadow", "canary", "ab"]
Variant = Literal["champion", "challenger"]
BUCKETS = 10_000


class RolloutPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Mode = "champion-only"
    percent: float = Field(0.0, ge=0, le=100, description="Share of routing keys on the challenger (canary / ab).")
    salt: str = Field("mlcycle", description="Change it to reshuffle which routing keys are in the canary.")
    updated_at: datetime | None = None
    updated_by: str | None = None
    reason: str | None = None

    def label(self) -> str:
        return f"{self.mode}:{self.percent:g}" if self.mode in ("canary", "ab") else self.mode


def bucket(key: object, salt: str) -> int:
    """A stable bucket in [0, 10000) for a routing key: the same key, the same bucket, in every replica."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def route(policy: RolloutPolicy, key: object, has_challenger: bool) -> Variant:
    """The variant whose answer this routing key gets (shadow scoring is decided separately)."""
    if not has_challenger or policy.mode not in ("canary", "ab"):
        return "champion"
    return "challenger" if bucket(key, policy.salt) < policy.percent * BUCKETS / 100 else "champion"


def read_policy(client: MlflowClient, model_name: str) -> RolloutPolicy:
    try:
        tags = client.get_registered_model(model_name).tags or {}
    except MlflowException:
        return RolloutPolicy()
    raw = tags.get(POLICY_TAG)
    return RolloutPolicy.model_validate(json.loads(raw)) if raw else RolloutPolicy()


def write_policy(
    client: MlflowClient,
    log: registry.PromotionLog,
    model_name: str,
    policy: RolloutPolicy,
    reason: str,
    who: str | None = None,
) -> RolloutPolicy:
    """Store a new policy and record the change (alias ``traffic`` in the promotion log)."""
    previous = read_policy(client, model_name)
    actor = who or registry.actor()
    policy = policy.model_copy(update={"updated_at": datetime.now(UTC), "updated_by": actor, "reason": reason})
    client.set_registered_model_tag(model_name, POLICY_TAG, policy.model_dump_json())
    log.append(
        registry.PromotionEvent(
            at=policy.updated_at,
            model=model_name,
            alias="traffic",
            from_version=previous.label(),
            to_version=policy.label(),
            actor=actor,
            reason=reason,
        )
    )
    return policy


class NothingToRollBack(RuntimeError):
    """No earlier champion to go back to (or the history cannot say which): nothing was changed."""


def rollback_target(client: MlflowClient, log: registry.PromotionLog, model_name: str) -> tuple[str, str]:
    """(current champion, the champion before it) from the promotion log's lineage; raises
    NothingToRollBack, saying why, when there is none."""
    current = registry.version_by_alias(client, model_name, registry.CHAMPION)
    if current is None:
        raise NothingToRollBack(f"{model_name} has no champion: nothing to roll back")
    lineage = registry.champion_lineage(log, model_name)
    version = str(current.version)
    if not lineage or lineage[-1] != version:
        known = f"v{lineage[-1]}" if lineage else "none"
        raise NothingToRollBack(
            f"the champion is v{version} but the promotion log's last champion is {known}: the alias was moved "
            "outside mlcycle, so the log cannot say what came before it. Choose a version: mlcycle promote VERSION"
        )
    if len(lineage) < 2:
        raise NothingToRollBack(
            f"nothing to roll back to: v{version} is the first champion of {model_name} in the promotion log "
            "(every earlier one was already rolled back)"
        )
    return version, lineage[-2]


def rollback(
    client: MlflowClient, log: registry.PromotionLog, model_name: str, reason: str, who: str | None = None
) -> list[registry.PromotionEvent]:
    """Champion back to the champion before it, walking the history backwards (v3 → v2 → v1: a
    rollback is recorded as one and never counts as a promotion), traffic to champion-only, and the
    challenger alias removed: a rollback stops everything in flight — a running canary of that
    challenger aborts, since it sees its alias move — and a new challenger comes from a retraining
    (or ``mlcycle promote``/an alias move by hand), judged against the restored champion. ``who``:
    the identity to record (a service passes its caller's); default MLCYCLE_ACTOR or the OS user.

    Raises NothingToRollBack before changing anything when there is no earlier champion."""
    current, previous = rollback_target(client, log, model_name)
    actor = who or registry.actor()
    said = f"rollback of v{current}: {reason}"  # readable in `mlcycle history`; the action column is the record
    write_policy(client, log, model_name, RolloutPolicy(mode="champion-only"), said, actor)
    events = [registry.move_alias(client, log, model_name, registry.CHAMPION, previous, said, actor, registry.ROLLBACK)]
    if registry.version_by_alias(client, model_name, registry.CHALLENGER) is not None:
        events.append(registry.move_alias(client, log, model_name, registry.CHALLENGER, None,
                                          f"cleared by the {said}", actor))  # fmt: skip
    return events


def abort_canary(
    client: MlflowClient, log: registry.PromotionLog, model_name: str, reason: str, who: str | None = None
) -> list[registry.PromotionEvent]:
    """Stop a canary: all traffic back to the champion, the challenger alias removed (rejected)."""
    write_policy(client, log, model_name, RolloutPolicy(mode="champion-only"), reason, who)
    if registry.version_by_alias(client, model_name, registry.CHALLENGER) is None:
        return []
    return [registry.move_alias(client, log, model_name, registry.CHALLENGER, None, reason, who)]
