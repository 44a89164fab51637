"""BentoML service: POST /predict scores a card transaction with the model the rollout policy picks.

Thin on purpose: the request schema and HTTP concerns live here; features, routing, models and
the prediction log live in ``mlcycle.serving``. Run it with
``bentoml serve services.fraud_service:FraudService`` from the project directory
(``MLCYCLE_CONFIG`` names another project's config).

Errors: a malformed body or a bad field is a 400 naming the field (BentoML's validation); a form or
multipart body is a 415 (the APIs take JSON); a wrong API or admin token is 401; no champion yet,
or the registry / online store unreachable, is a 503 whose body says which.
"""

from __future__ import annotations

import hmac
import math
import os
from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Literal

import bentoml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import JSONResponse

import mlcycle  # noqa: F401  (telemetry off before the stack is imported)
from mlcycle import registry, rollout
from mlcycle.config import load_config
from mlcycle.features.store import FeatureStoreUnavailable
from mlcycle.serving import NotReady, Scorer

MAX_BATCH = 1000
INT64_MAX = 2**63 - 1  # ids are int64 in the online store and the prediction log

# The service asks the registry at start-up, on each readiness probe while not ready, and every few
# seconds for alias moves, and retries on its own schedule. MLflow's HTTP defaults (7 retries with
# exponential backoff, 120 s timeouts) held start-up for over 4 minutes when the registry was down,
# and every request past its 30 s timeout (a 504): fail fast instead. Values set by an operator win.
MLFLOW_CLIENT_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
for _key, _value in MLFLOW_CLIENT_LIMITS.items():
    os.environ.setdefault(_key, _value)


class Unauthorized(bentoml.exceptions.BentoMLException):
    """A wrong or missing token: 401 (BentoML answers it without echoing the token)."""

    error_code = HTTPStatus.UNAUTHORIZED


predictions = bentoml.metrics.Counter(
    name="mlcycle_predictions", documentation="Scored requests", labelnames=["variant", "model_version"]
)
scores = bentoml.metrics.Histogram(
    name="mlcycle_score",
    documentation="Score distribution per variant",
    labelnames=["variant"],
    buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0),
)
latency = bentoml.metrics.Histogram(
    name="mlcycle_predict_seconds",
    documentation="Time to score a request (features + model), per call",
    labelnames=["endpoint"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
errors = bentoml.metrics.Counter(name="mlcycle_errors", documentation="Failed requests", labelnames=["kind"])


class Transaction(BaseModel):
    """An authorization request."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)] | None = Field(
        None, description="The caller's id, logged with the prediction."
    )
    user_id: Annotated[int, Field(strict=True, gt=0, le=INT64_MAX)]
    merchant_id: Annotated[int, Field(strict=True, gt=0, le=INT64_MAX)]
    amount: Annotated[float, Field(gt=0, lt=1_000_000, description="Positive, finite, below 1M.")]
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166 alpha-2 of the merchant.")]
    merchant_category: Annotated[str, Field(min_length=1, max_length=40)]
    channel: Literal["pos", "ecom", "contactless"] | None = None
    timestamp: datetime | None = Field(None, description="Request time (default: now; no offset: UTC).")

    @field_validator("amount")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("amount must be a finite number")
        return value


class Prediction(BaseModel):
    score: float | None = None
    decision: bool | None = None
    model_version: str | None = None
    variant: str | None = None
    features_missing: list[str] = []
    request_id: str | None = None
    error: str | None = None


class TrafficChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: rollout.Mode
    percent: Annotated[float, Field(ge=0, le=100)] = 0.0
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class JsonBodiesOnly:
    """ASGI middleware: a form or multipart POST is a 415 naming the content type.

    BentoML hands such a body to its form parser rather than to JSON validation: a malformed one
    (no boundary, bad framing) fails there with a 500, and a well-formed one is read as form fields,
    so the answer would be a misleading "transaction: Field required". Every API here takes JSON.
    """

    FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            # The first content-type header, as BentoML reads it.
            raw = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
            media = raw.decode("latin-1").split(";")[0].strip().lower()
            if media in self.FORM_TYPES:
                message = f"unsupported content-type '{media}': send the body as JSON (content-type: application/json)"
                await JSONResponse({"error": message}, status_code=415)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _token_ok(ctx: bentoml.Context, variable: str, header: str) -> bool:
    """Constant-time check of a token from the environment; no variable set means not required."""
    expected = os.environ.get(variable)
    if not expected:
        return True
    given = ctx.request.headers.get(header, "")
    return hmac.compare_digest(given.encode(), expected.encode())


@bentoml.service(name="fraud", traffic={"timeout": 30}, workers=1)
class FraudService:
    def __init__(self) -> None:
        self.cfg = load_config(os.environ.get("MLCYCLE_CONFIG"))
        self.scorer = Scorer(self.cfg, refresh_seconds=float(os.environ.get("MLCYCLE_REFRESH_SECONDS", "2")))
        self.scorer.load()

    def __is_ready__(self) -> bool:
        if not self.scorer.ready:
            self.scorer.load()  # retry: the registry or the store may be back
        return self.scorer.ready

    def _score(self, transactions: list[Transaction], ctx: bentoml.Context, endpoint: str) -> list[Prediction]:
        if not _token_ok(ctx, "MLCYCLE_API_KEY", "x-api-key"):
            errors.labels(kind="auth").inc()
            raise Unauthorized("missing or wrong x-api-key")
        with latency.labels(endpoint=endpoint).time():
            try:
                results = self.scorer.score([t.model_dump() for t in transactions])
            except (NotReady, FeatureStoreUnavailable) as exc:
                errors.labels(kind="unavailable").inc()
                ctx.response.status_code = 503
                return [Prediction(error=f"service unavailable: {exc}")]
        for r in results:
            predictions.labels(variant=r.variant, model_version=r.model_version).inc()
            scores.labels(variant=r.variant).observe(r.score)
        return [Prediction(**r.__dict__) for r in results]

    @bentoml.api(route="/predict")
    def predict(self, transaction: Transaction, ctx: bentoml.Context) -> Prediction:
        """Score one transaction."""
        return self._score([transaction], ctx, "predict")[0]

    @bentoml.api(route="/predict_batch")
    def predict_batch(
        self, transactions: Annotated[list[Transaction], Field(min_length=1, max_length=MAX_BATCH)],
        ctx: bentoml.Context,
    ) -> list[Prediction]:  # fmt: skip
        """Score up to 1000 transactions in one call."""
        return self._score(transactions, ctx, "predict_batch")

    @bentoml.api(route="/rollout/status")
    def rollout_status(self) -> dict:
        """What serves now: aliases with their versions and the traffic policy."""
        self.scorer.refresh()
        return {
            "ready": self.scorer.ready,
            "not_ready_reason": self.scorer.not_ready_reason,
            "models": {alias: slot.version for alias, slot in self.scorer.slots.items()},
            "policy": self.scorer.policy.model_dump(mode="json"),
        }

    def _admin(self, ctx: bentoml.Context) -> None:
        if not os.environ.get("MLCYCLE_ADMIN_TOKEN"):
            raise Unauthorized("admin endpoints are off: set MLCYCLE_ADMIN_TOKEN")
        if not _token_ok(ctx, "MLCYCLE_ADMIN_TOKEN", "x-admin-token"):
            raise Unauthorized("missing or wrong x-admin-token")

    @bentoml.api(route="/admin/traffic")
    def set_traffic(self, change: TrafficChange, ctx: bentoml.Context) -> dict:
        """Change the rollout policy (admin token required; recorded in the promotion log)."""
        self._admin(ctx)
        client = registry.client_for(self.cfg)
        log = registry.PromotionLog(self.cfg.promotion_log_uri)
        policy = rollout.write_policy(
            client, log, self.cfg.model.name, rollout.RolloutPolicy(mode=change.mode, percent=change.percent),
            change.reason, who="api:admin",
        )  # fmt: skip
        self.scorer.refresh(force=True)  # apply now, not at the next refresh
        return policy.model_dump(mode="json")

    @bentoml.api(route="/admin/rollback")
    def rollback(self, reason: Annotated[str, Field(min_length=1, max_length=500)], ctx: bentoml.Context) -> dict:
        """Champion back to the previous one, traffic to champion-only (admin token required)."""
        self._admin(ctx)
        client = registry.client_for(self.cfg)
        log = registry.PromotionLog(self.cfg.promotion_log_uri)
        events = rollout.rollback(client, log, self.cfg.model.name, reason, who="api:admin")
        self.scorer.refresh(force=True)
        return {"moves": [f"{e.alias}: {e.from_version} -> {e.to_version}" for e in events]}


FraudService.add_asgi_middleware(JsonBodiesOnly)
