"""The registry gate: the one writer of the model registry's state in profile ``scale``.

An MLflow tracking server with its basic-auth app authenticates every caller, but its permissions
are per registered model, not per alias: EDIT on a model lets a principal create versions, set
version tags *and* point any alias — ``champion`` included — at any version (docs/governance.md).
So trainers get no EDIT on the registered model; one **registrar** account holds it (MANAGE, as the
model's creator), and only this gate holds the registrar's password. The gate

1. authenticates the caller *against the MLflow server itself* (``verify``: the caller's own
   credentials must pass the server's basic auth), so a wrong, expired or changed password is
   refused here exactly as MLflow refuses it, with the rule named (``authentication``);
2. applies mlcycle's rules (``governance.require_role``, ``governance.decide``,
   ``governance.promote``) to ``Principal(user, authenticated=True, via="mlflow-basic-auth")``;
3. only then makes the change, as the registrar, and records it in the promotion log.

This module holds the identity check, the operations (functions of an MLflow client, the
promotion log and an authenticated principal) and ``GateClient``, what callers use with their own
MLflow credentials. The HTTP server is ``mlcycle.ops.registry_gate`` — it also rolls back, which
needs ``serving.rollout``, a layer above this one — and runs as its own process, because MLflow's
client reads credentials from the process environment: the registrar's password is in the gate's
environment and nowhere else.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httpx
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlcycle.project.config import GovernanceSpec, ProjectConfig
from mlcycle.registry import aliases as registry
from mlcycle.registry import governance as gov

VIA = "mlflow-basic-auth"
AUTHENTICATION = "authentication"  # the rule a refused credential breaks
CURRENT_USER_PATH = "/api/2.0/mlflow/users/current"  # answers 200 to any valid credential, 401 otherwise
REGISTRAR = "mlcycle-registrar"
REGISTRAR_USERNAME_ENV, REGISTRAR_PASSWORD_ENV = "MLCYCLE_REGISTRAR_USERNAME", "MLCYCLE_REGISTRAR_PASSWORD"
REGISTRAR_PASSWORD_FILE_ENV = "MLCYCLE_REGISTRAR_PASSWORD_FILE"
GATE_URL_ENV = "MLCYCLE_REGISTRY_GATE_URL"
# Version tags a trainer may hand over with a registration (how the version scores and where it
# came from). The approval state, who trained it and the gates record are the gate's to write.
CALLER_TAGS = frozenset(
    {*gov.SCORING_TAGS, "mlcycle.data_hash", "mlcycle.run_id"}
) - {gov.STATE_TAG, gov.GATES_TAG}  # fmt: skip


class Unauthenticated(gov.Refused):
    """The MLflow server did not accept the caller's credentials."""

    def __init__(self, message: str):
        super().__init__(AUTHENTICATION, message)


# ----------------------------------------------------------------------------- identity
def verify(tracking_url: str, username: str | None, password: str | None, timeout: float = 10.0) -> gov.Principal:
    """The caller as the MLflow server knows them: an authenticated ``Principal`` if the server
    accepts ``username``/``password`` (its basic auth: a changed password stops working at once),
    else ``Unauthenticated`` naming the rule. Raises ``ConnectionError`` if the server cannot answer."""
    if not username or not password:
        raise Unauthenticated(
            "no credentials: authenticate with your MLflow user and password "
            "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
        )
    try:
        with httpx.Client(trust_env=False, timeout=timeout) as http:
            response = http.get(tracking_url.rstrip("/") + CURRENT_USER_PATH, auth=(username, password))
    except httpx.HTTPError as exc:
        raise ConnectionError(f"MLflow server {tracking_url} did not answer: {exc}") from exc
    if response.status_code == HTTPStatus.UNAUTHORIZED:
        raise Unauthenticated(
            f"the MLflow server at {tracking_url} did not accept the password of {username!r} "
            "(wrong, expired or changed); only a user the server authenticates may change the registry"
        )
    if response.status_code != HTTPStatus.OK:
        raise ConnectionError(f"MLflow server {tracking_url}: HTTP {response.status_code} {response.text[:200]}")
    name = response.json().get("user", {}).get("username", username)
    return gov.Principal(name, True, VIA)


def is_server(tracking_uri: str | None) -> bool:
    """True where the registry is reached through a tracking server (profile ``scale`` with auth),
    False for a database or file store, which authenticates nobody."""
    return bool(tracking_uri) and str(tracking_uri).startswith(("http://", "https://"))


def principal_for(tracking_uri: str | None, environ: Mapping[str, str] = os.environ) -> gov.Principal:
    """Who this process is. Through a tracking server: the MLflow user of ``MLFLOW_TRACKING_USERNAME``
    / ``MLFLOW_TRACKING_PASSWORD``, verified by the server now (``Unauthenticated`` if it refuses or
    none is set). Without one (profile ``local``): ``governance.current_principal()``, unauthenticated."""
    if not is_server(tracking_uri):
        return gov.current_principal()
    return verify(str(tracking_uri), environ.get("MLFLOW_TRACKING_USERNAME"), environ.get("MLFLOW_TRACKING_PASSWORD"))


# ----------------------------------------------------------------------------- the operations
@dataclass(frozen=True)
class GateSettings:
    tracking_url: str
    model: str
    governance: GovernanceSpec
    promotion_log_uri: str
    require_approval: bool = False

    @classmethod
    def from_config(cls, cfg: ProjectConfig, tracking_url: str, promotion_log_uri: str | None = None) -> GateSettings:
        return cls(
            tracking_url, cfg.model.name, cfg.governance, promotion_log_uri or cfg.promotion_log_uri,
            cfg.rollout.require_approval,
        )  # fmt: skip


def ensure_model(client: MlflowClient, name: str) -> None:
    """Create the registered model if missing — as the registrar, who thereby holds MANAGE on it."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(registry.checked_name(name))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def _source_of_run(client: MlflowClient, run_id: str, source: str) -> None:
    """Refuse a version whose artifact is not the run's: the approval binds run and artifact."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise gov.Refused("unknown-run", f"no run {run_id}") from None
    if source.startswith("models:/m-"):
        model = client.get_logged_model(source[len("models:/") :].split("/")[0])
        if model.source_run_id == run_id:
            return
    elif source == run.info.artifact_uri or source.startswith(run.info.artifact_uri.rstrip("/") + "/"):
        return
    raise gov.Refused("source", f"{source} is not an artifact of run {run_id}")


def register(
    client: MlflowClient,
    log: registry.PromotionLog,
    settings: GateSettings,
    principal: gov.Principal,
    run_id: str,
    source: str,
    tags: Mapping[str, str] | None = None,
    triggered_by: str | None = None,
) -> str:
    """Register the run's artifact as a new version of the model, pending approval, and make it the
    ``challenger``. Needs the trainer role and a run whose gates passed (its ``mlcycle.gates`` tag)."""
    name = settings.model
    try:
        gov.require_role(settings.governance, principal, "trainer", f"register a version of {name}")
        _source_of_run(client, run_id, source)
        if client.get_run(run_id).data.tags.get(gov.GATES_TAG) != "passed":
            raise gov.Refused(
                "gates", f"run {run_id} has no record of passing the gates; only gated runs are registered"
            )
        if foreign := sorted(set(tags or {}) - CALLER_TAGS):
            raise gov.Refused("tags", f"the gate writes {', '.join(foreign)} itself; a registration may carry only "
                                      f"{', '.join(sorted(CALLER_TAGS))}")  # fmt: skip
    except gov.Refused as exc:
        raise gov.record_refusal(log, name, None, principal, exc) from None
    ensure_model(client, name)
    version = str(client.create_model_version(name, source, run_id=run_id).version)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, str(value))
    gov.mark_registered(client, name, version, principal.name, triggered_by or principal.name)
    registry.move_alias(client, log, name, registry.CHALLENGER, version, "registered through the gate", str(principal))
    return version


def set_challenger(
    client: MlflowClient, log: registry.PromotionLog, settings: GateSettings, principal: gov.Principal, version: str
) -> registry.PromotionEvent:
    """Point ``challenger`` at an existing, gated, not rejected version (trainer role)."""
    name = settings.model
    try:
        gov.require_role(settings.governance, principal, "trainer", f"make v{version} the challenger")
        try:
            found = client.get_model_version(name, str(version))
        except MlflowException:
            raise gov.Refused("unknown-version", f"{name} has no version {version}") from None
        if (found.tags or {}).get(gov.GATES_TAG) != "passed":
            raise gov.Refused("gates", f"v{version} has no record of passing the gates")
        if gov.approval_of(found).state == gov.REJECTED:
            raise gov.Refused("rejected", f"v{version} was rejected; it never serves")
    except gov.Refused as exc:
        raise gov.record_refusal(log, name, str(version), principal, exc) from None
    client.set_model_version_tag(name, str(version), gov.CHANGED_BY_TAG, principal.name)
    return registry.move_alias(client, log, name, registry.CHALLENGER, str(version), "set through the gate",
                               str(principal))  # fmt: skip


def decide(
    client: MlflowClient, log: registry.PromotionLog, settings: GateSettings, principal: gov.Principal,
    version: str, approve: bool, note: str,
) -> gov.Approval:  # fmt: skip
    return gov.decide(client, log, settings.governance, settings.model, str(version), principal, approve, note)


def promote(
    client: MlflowClient, log: registry.PromotionLog, settings: GateSettings, principal: gov.Principal,
    version: str, reason: str, on_behalf_of_approval: bool = False,
) -> list[registry.PromotionEvent]:  # fmt: skip
    """``governance.promote``. ``on_behalf_of_approval`` (the rollout flow carrying out an approver's
    recorded decision after the canary) needs no approver role but the operator role: otherwise
    anyone could promote an approved version before its canary ended."""
    if on_behalf_of_approval:
        try:
            gov.require_role(settings.governance, principal, "operator", f"carry out the approval of v{version}")
        except gov.Refused as exc:
            raise gov.record_refusal(log, settings.model, str(version), principal, exc) from None
    return gov.promote(client, log, settings.governance, settings.model, str(version), reason, principal,
                       settings.require_approval, on_behalf_of_approval)  # fmt: skip


def basic_credentials(header: str | None) -> tuple[str | None, str | None]:
    """(username, password) from an ``Authorization: Basic`` header; (None, None) if absent or not basic."""
    if not header or not header.lower().startswith("basic "):
        return None, None
    try:
        username, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return username, password


def registrar_credentials(environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """The registrar's user and password: ``MLCYCLE_REGISTRAR_PASSWORD`` or the file that
    ``MLCYCLE_REGISTRAR_PASSWORD_FILE`` names (never a command-line argument: ``ps`` shows those)."""
    username = environ.get(REGISTRAR_USERNAME_ENV, REGISTRAR)
    password = environ.get(REGISTRAR_PASSWORD_ENV)
    if not password and (path := environ.get(REGISTRAR_PASSWORD_FILE_ENV)):
        with open(path) as f:
            password = f.read().strip()
    if not password:
        raise SystemExit(f"the gate needs the registrar's password: set {REGISTRAR_PASSWORD_FILE_ENV} "
                         f"(a file only the gate can read) or {REGISTRAR_PASSWORD_ENV}")  # fmt: skip
    return username, password


# ----------------------------------------------------------------------------- the callers' side
class GateClient:
    """What the CLI and the flows call instead of moving aliases themselves in profile ``scale``:
    the caller's own MLflow credentials, the gate's decision. A refusal raises ``governance.Refused``
    (``Unauthenticated`` for a refused credential) with the gate's rule and message."""

    def __init__(self, url: str, username: str | None, password: str | None, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self._auth = (username or "", password or "")
        self.timeout = timeout

    @classmethod
    def from_env(cls, url: str | None = None) -> GateClient:
        return cls(url or os.environ[GATE_URL_ENV], os.environ.get("MLFLOW_TRACKING_USERNAME"),
                   os.environ.get("MLFLOW_TRACKING_PASSWORD"))  # fmt: skip

    def call(self, operation: str, **body: Any) -> dict[str, Any]:
        with httpx.Client(trust_env=False, timeout=self.timeout) as http:
            if operation == "whoami":
                response = http.get(f"{self.url}/v1/whoami", auth=self._auth)
            else:
                response = http.post(f"{self.url}/v1/{operation}", json=body, auth=self._auth)
        try:
            payload = response.json()
        except ValueError:  # not the gate answering (a proxy, a crash page)
            payload = {"error": response.text[:300]}
        if response.status_code == HTTPStatus.UNAUTHORIZED:
            raise _refused(Unauthenticated, payload)
        if response.status_code == HTTPStatus.FORBIDDEN:
            raise _refused(gov.Refused, payload)
        if response.status_code != HTTPStatus.OK:
            raise RuntimeError(f"registry gate {self.url}: HTTP {response.status_code}: {payload.get('error')}")
        return payload

    def whoami(self) -> gov.Principal:
        payload = self.call("whoami")
        return gov.Principal(payload["principal"], payload["authenticated"], payload["via"])

    def register(self, run_id: str, source: str, tags: Mapping[str, str] | None = None,
                 triggered_by: str | None = None) -> str:  # fmt: skip
        return str(self.call("register", run_id=run_id, source=source, tags=dict(tags or {}),
                             triggered_by=triggered_by)["version"])  # fmt: skip

    def set_challenger(self, version: str) -> dict[str, Any]:
        return self.call("challenger", version=str(version))

    def approve(self, version: str, note: str) -> str:
        return str(self.call("approve", version=str(version), note=note)["approval"])

    def reject(self, version: str, note: str) -> str:
        return str(self.call("reject", version=str(version), note=note)["approval"])

    def promote(self, version: str, reason: str, on_behalf_of_approval: bool = False) -> list[dict[str, Any]]:
        return list(self.call("promote", version=str(version), reason=reason,
                              on_behalf_of_approval=on_behalf_of_approval)["events"])  # fmt: skip

    def rollback(self, reason: str) -> list[dict[str, Any]]:
        return list(self.call("rollback", reason=reason)["events"])


def _refused(kind: type[gov.Refused], payload: Mapping[str, Any]) -> gov.Refused:
    """Rebuild the gate's refusal (its message already reads ``refused (<rule>): …``)."""
    message = str(payload.get("error", ""))
    prefix = f"refused ({payload.get('rule')}): "
    detail = message[len(prefix) :] if message.startswith(prefix) else message
    return kind(detail) if kind is Unauthenticated else kind(str(payload.get("rule")), detail)
