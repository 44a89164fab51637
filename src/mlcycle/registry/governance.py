"""Who may change what in the registry, and the approval a candidate needs before it serves.

MLflow aliases say what serves; nothing in MLflow says who decided it, and its permissions cannot
tell ``challenger`` from ``champion`` (one permission covers every alias of a model). So every state
change that matters goes through here, in one place:

- **Principals.** Where an MLflow tracking server authenticates callers, the principal is its
  user; where nothing does (profile ``local``), the OS user, recorded as ``os:<login>`` and
  labelled unauthenticated, never passed off as verified.
- **Roles** (``governance.roles`` in mlcycle.yaml): trainer, approver, operator, viewer. A project
  that declares none runs open (every principal holds every role), which the record says.
- **Approval states** on each version, as MLflow version tags (``mlcycle.approval``: pending,
  approved, rejected, archived, with who, when and why), mirrored in the promotion log; a refusal
  is logged too, so the audit shows attempts, not only successes.
- **Separation of duties.** Whoever trained, triggered or last changed a candidate may not approve
  it, unless ``governance.self_approval`` names them (then the record says so).
- **An approval binds to the candidate as it was** (a fingerprint of its run, artifact and the
  tags that change how it scores): change any of them and the approval no longer counts.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mlcycle import flavors
from mlcycle.project.config import GovernanceSpec
from mlcycle.registry import aliases as registry

PENDING, APPROVED, REJECTED, ARCHIVED = "pending", "approved", "rejected", "archived"
STATE_TAG = "mlcycle.approval"
BY_TAG, AT_TAG, NOTE_TAG = "mlcycle.approval.by", "mlcycle.approval.at", "mlcycle.approval.note"
AUTHENTICATED_TAG = "mlcycle.approval.authenticated"
FINGERPRINT_TAG = "mlcycle.approval.fingerprint"
ARCHIVED_BY_TAG, ARCHIVED_AT_TAG = "mlcycle.archived.by", "mlcycle.archived.at"
ARCHIVED_NOTE_TAG = "mlcycle.archived.note"
TRAINED_BY_TAG, TRIGGERED_BY_TAG, CHANGED_BY_TAG = "mlcycle.trained_by", "mlcycle.triggered_by", "mlcycle.changed_by"
GATES_TAG = "mlcycle.gates"  # "passed": only versions that passed every gate are registered
# What an approval covers besides the run and the artifact: tags that change how the version scores.
SCORING_TAGS = ("mlcycle.features", "mlcycle.threshold", flavors.FLAVOR_TAG, "mlcycle.feature_service")
APPROVAL = "approval"  # the promotion log's alias column for approval decisions and refusals
APPROVED_ACTION, REJECTED_ACTION, REFUSED_ACTION = "approved", "rejected", "refused"


class Refused(PermissionError):
    """A state change the rules forbid; ``rule`` names the rule, the message says who may instead."""

    def __init__(self, rule: str, message: str):
        super().__init__(f"refused ({rule}): {message}")
        self.rule = rule


@dataclass(frozen=True)
class Principal:
    """Who acts. ``authenticated`` only when a server verified it (never for an OS user)."""

    name: str
    authenticated: bool
    via: str  # "os-user", "mlflow-basic-auth", "flow", "service-token"

    def __str__(self) -> str:
        return self.name if self.authenticated else f"{self.name} (unauthenticated, {self.via})"


def os_principal() -> Principal:
    """The person at this terminal, as the OS names them: what profile local can say, no more."""
    try:
        login = getpass.getuser()
    except OSError:
        login = "unknown"
    return Principal(f"os:{login}", False, "os-user")


def current_principal() -> Principal:
    """The principal of this process: ``MLCYCLE_PRINCIPAL`` where a flow or service was given its
    own identity (recorded as such, unauthenticated unless a server verified it), else the OS user."""
    if name := os.environ.get("MLCYCLE_PRINCIPAL"):
        return Principal(name, False, "environment")
    return os_principal()


# ----------------------------------------------------------------------------- roles
def members(spec: GovernanceSpec, names: list[str]) -> set[str]:
    """Principals named directly or through ``group:<name>``."""
    out: set[str] = set()
    for name in names:
        out |= set(spec.groups.get(name[6:], [])) if name.startswith("group:") else {name}
    return out


def holds(spec: GovernanceSpec, principal: Principal, role: str) -> bool:
    return not spec.roles or principal.name in members(spec, spec.roles.get(role, []))  # type: ignore[call-overload]


def require_role(spec: GovernanceSpec, principal: Principal, role: str | tuple[str, ...], action: str) -> None:
    """Refused unless ``principal`` holds ``role`` (or one of several); the message names who does."""
    wanted = (role,) if isinstance(role, str) else role
    if any(holds(spec, principal, r) for r in wanted):
        return
    who = sorted(set().union(*(members(spec, spec.roles.get(r, [])) for r in wanted)))  # type: ignore[call-overload]
    names = " or ".join(wanted)
    raise Refused(
        "role",
        f"{principal} may not {action}: that needs the {names} role, which "
        + (f"{', '.join(who)} hold" if who else "nobody holds")
        + f" (governance.roles.{wanted[0]} in mlcycle.yaml)",
    )


# ----------------------------------------------------------------------------- approval state
def fingerprint(version: ModelVersion) -> str:
    """What an approval is of: the run, the artifact and the tags that change how it scores."""
    tags = version.tags or {}
    content = {"run_id": version.run_id, "source": version.source, **{t: tags.get(t) for t in SCORING_TAGS}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Approval:
    version: str
    state: str
    by: str | None
    at: str | None
    note: str | None
    current: bool  # an approval of the candidate as it is now (fingerprint unchanged)

    @property
    def valid(self) -> bool:
        return self.state == APPROVED and self.current

    def line(self) -> str:
        if self.state == PENDING:
            return f"v{self.version}: pending approval"
        stale = "" if self.current or self.state != APPROVED else " — VOID: the version changed since"
        return f"v{self.version}: {self.state} by {self.by} at {self.at} ({self.note or 'no note'}){stale}"


def approval_of(version: ModelVersion) -> Approval:
    tags = version.tags or {}
    state = tags.get(STATE_TAG, PENDING)
    return Approval(
        str(version.version), state, tags.get(BY_TAG), tags.get(AT_TAG), tags.get(NOTE_TAG),
        tags.get(FINGERPRINT_TAG) == fingerprint(version),
    )  # fmt: skip


def mark_registered(client: MlflowClient, name: str, version: str, trained_by: str, triggered_by: str) -> None:
    """A new version starts pending, with who trained it and who or what asked for it."""
    for key, value in {STATE_TAG: PENDING, TRAINED_BY_TAG: trained_by, TRIGGERED_BY_TAG: triggered_by,
                       CHANGED_BY_TAG: trained_by, GATES_TAG: "passed"}.items():  # fmt: skip
        client.set_model_version_tag(name, version, key, value)


def record_refusal(
    log: registry.PromotionLog, name: str, version: str | None, principal: Principal, exc: Refused
) -> Refused:
    """Put a refused attempt in the promotion log (the audit shows attempts, not only successes)."""
    log.append(registry.PromotionEvent(datetime.now(UTC), name, APPROVAL, None, version, str(principal),
                                       str(exc), REFUSED_ACTION))  # fmt: skip
    return exc


def decide(
    client: MlflowClient,
    log: registry.PromotionLog,
    spec: GovernanceSpec,
    name: str,
    version: str,
    principal: Principal,
    approve: bool,
    note: str,
) -> Approval:
    """Approve or reject ``version``, the current candidate (the ``challenger``), as ``principal``.

    Refused, with the rule named and the refusal logged, when the principal lacks the approver
    role, when the version is not the candidate or is already decided, when its gates are not on
    record, or when the principal trained, triggered or last changed it (separation of duties). A
    rejection also takes the ``challenger`` alias away, so a rejected version never serves."""
    verb = "approve" if approve else "reject"
    try:
        require_role(spec, principal, "approver", f"{verb} v{version}")
        try:
            found = client.get_model_version(name, str(version))
        except MlflowException:
            raise Refused("unknown-version", f"{name} has no version {version}") from None
        candidate = registry.version_by_alias(client, name, registry.CHALLENGER)
        if candidate is None or str(candidate.version) != str(version):
            now = f"v{candidate.version}" if candidate is not None else "none"
            raise Refused("not-the-candidate", f"v{version} is not the candidate (the challenger is {now})")
        tags = found.tags or {}
        if tags.get(GATES_TAG) != "passed":
            raise Refused("gates", f"v{version} has no record of passing the gates; only gated versions are approved")
        current = approval_of(found)
        if current.state in (APPROVED, REJECTED) and current.current:
            raise Refused("decided", f"v{version} is already {current.state} by {current.by} at {current.at}")
        involved = {tags.get(TRAINED_BY_TAG), tags.get(TRIGGERED_BY_TAG), tags.get(CHANGED_BY_TAG)}
        excepted = principal.name in members(spec, spec.self_approval)
        if spec.separation_of_duties and principal.name in involved and not excepted:
            roles = ", ".join(
                f"{k} {tags.get(t)}" for k, t in (("trained by", TRAINED_BY_TAG), ("triggered by", TRIGGERED_BY_TAG),
                                                  ("last changed by", CHANGED_BY_TAG)) if tags.get(t)
            )  # fmt: skip
            raise Refused(
                "separation-of-duties",
                f"{principal} may not {verb} v{version}: it was {roles}; another approver must decide "
                "(or name the principal in governance.self_approval)",
            )
    except Refused as exc:
        raise record_refusal(log, name, str(version), principal, exc) from None
    state = APPROVED if approve else REJECTED
    at = datetime.now(UTC).isoformat(timespec="seconds")
    why = note or "no note"
    for key, value in {STATE_TAG: state, BY_TAG: principal.name, AT_TAG: at, NOTE_TAG: why,
                       AUTHENTICATED_TAG: str(principal.authenticated).lower(),
                       FINGERPRINT_TAG: fingerprint(found)}.items():  # fmt: skip
        client.set_model_version_tag(name, str(version), key, value)
    reason = f"{state}: {why}" + (" (self-approval under governance.self_approval)" if excepted and approve else "")
    log.append(registry.PromotionEvent(datetime.now(UTC), name, APPROVAL, None, str(version), str(principal), reason,
                                       APPROVED_ACTION if approve else REJECTED_ACTION))  # fmt: skip
    if not approve:
        registry.move_alias(client, log, name, registry.CHALLENGER, None, f"v{version} rejected: {why}", str(principal))
    return approval_of(client.get_model_version(name, str(version)))


def promote(
    client: MlflowClient,
    log: registry.PromotionLog,
    spec: GovernanceSpec,
    name: str,
    version: str,
    reason: str,
    principal: Principal,
    require_approval: bool,
    on_behalf_of_approval: bool = False,
) -> list[registry.PromotionEvent]:
    """Move ``champion`` to ``version`` — only for an approver, and, when approval is required,
    only for a version approved as it is now; never for a rejected one. Refusals are logged.

    ``on_behalf_of_approval``: the caller (the rollout flow) carries out an approver's recorded
    decision instead of deciding: no role of its own is needed, but a valid approval always is."""
    try:
        if not on_behalf_of_approval:
            require_role(spec, principal, "approver", f"make v{version} champion")
        try:
            found = client.get_model_version(name, str(version))
        except MlflowException:
            raise Refused("unknown-version", f"{name} has no version {version}") from None
        approval = approval_of(found)
        require_approval = require_approval or on_behalf_of_approval
        if approval.state == REJECTED:
            raise Refused("rejected", f"v{version} was rejected by {approval.by} ({approval.note}); it never serves")
        if require_approval and not approval.valid:
            raise Refused(
                "approval-required",
                f"v{version} is not approved ({approval.line()}); rollout.require_approval is on: "
                f"an approver runs `mlcycle approve {version} --note …`",
            )
    except Refused as exc:
        raise record_refusal(log, name, str(version), principal, exc) from None
    if approval.valid:
        reason = f"{reason}; approved by {approval.by} at {approval.at}"
    events = registry.promote(client, log, name, str(version), reason, str(principal))
    replaced = {e.from_version for e in events if e.alias == registry.CHAMPION and e.from_version}
    for old in replaced - {str(version)}:
        archive(client, name, old, principal, f"replaced by v{version} as champion")
    return events


def archive(client: MlflowClient, name: str, version: str, principal: Principal, why: str) -> None:
    """A version that no longer serves: archived, with who, when and why (its approval tags stay,
    so the audit still shows who once approved it). A rollback may bring it back to serve."""
    at = datetime.now(UTC).isoformat(timespec="seconds")
    for key, value in {STATE_TAG: ARCHIVED, ARCHIVED_BY_TAG: principal.name, ARCHIVED_AT_TAG: at,
                       ARCHIVED_NOTE_TAG: why}.items():  # fmt: skip
        client.set_model_version_tag(name, str(version), key, value)
