"""BentoML service: POST /predict scores a request with the model the rollout policy picks.

Thin on purpose: the request schema and HTTP concerns live here; features, routing, models and
the prediction log live in ``mlcycle.serving``. Run it with
``bentoml serve services.service:ScoringService`` from the project directory
(``MLCYCLE_CONFIG`` names another project's config).

Errors: a malformed body or a bad field is a 400 naming the field (BentoML's validation; numbers are
strict: ``true`` or ``"120.5"`` for a number is a 400, not 1.0 or 120.5); a form or multipart body
is a 415 (the APIs take JSON); a wrong API or admin token is 401; no champion yet, or the registry /
online store unreachable, is a 503 whose body names the dependency (the detail is in the log only).
A client error is one WARNING line in the log, without a traceback (BentoML logs every 4xx as
``[ERROR] Exception on …`` with one): tracebacks are for our bugs. ``mlcycle_errors_total`` counts
every failed API request by reason. A category the feature definitions do not know is scored, and
named in ``unknown_categories`` (and ``features_missing``) of the answer, and counted.

Access: without ``MLCYCLE_API_KEY`` only loopback clients are served (``mlcycle serve`` binds
127.0.0.1 and refuses a non-loopback ``--host`` without a key); with it, ``/predict``,
``/predict_batch`` and ``/rollout/status`` need ``x-api-key``. ``/admin/*`` need ``x-admin-token``.
Probes (``/livez``, ``/readyz``) and ``/metrics`` are open. The API docs are at ``/docs`` (also
``/``): a self-contained page, no third-party script; the OpenAPI document is ``/docs.json``, which
declares every status each API answers (``api_answers``) and the tokens it takes.

Events: with ``streaming.publish_requests`` on, every scored request is also published to the
project's event stream (``mlcycle.streaming.publisher``), off the request path: a broker that is
down costs ``/predict`` nothing, and is counted in ``mlcycle_stream_publish*``. ``/metrics`` also
shows the stream consumer's figures (``mlcycle_stream_consumer_*``), read from the broker at scrape
time, when it can be reached and there are figures to show, and the newest monitoring check's figures
(``mlcycle_monitor_*``: drift share, score PSI, realized and estimated ROC-AUC, verdicts).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
import os
from collections import Counter
from http import HTTPStatus
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import HTMLResponse, JSONResponse

import mlcycle  # noqa: F401  (telemetry off before the stack is imported)
from mlcycle.features.store import FeatureStoreUnavailable
from mlcycle.monitoring.figures import MonitorFigures
from mlcycle.ops.service_process import is_loopback
from mlcycle.project.config import load_config
from mlcycle.registry import aliases as registry
from mlcycle.registry import governance
from mlcycle.serving import rollout, tokens
from mlcycle.serving.batching import MicroBatcher
from mlcycle.serving.openapi import (
    Answer,
    ErrorMessage,
    HeaderToken,
    ServeDocument,
    ValidationFailure,
    openapi_document,
)
from mlcycle.serving.request_schema import request_model
from mlcycle.serving.scorer import NotReady, Scored, Scorer
from mlcycle.serving.workers import service_workers
from mlcycle.streaming.publisher import PublisherReport, RequestPublisher, StreamFigures

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
errors = bentoml.metrics.Counter(
    name="mlcycle_errors", documentation="Failed API requests, by reason", labelnames=["reason"]
)
batch_sizes = bentoml.metrics.Histogram(
    name="mlcycle_predict_batch_size",
    documentation="/predict calls scored together, per batch of the micro-batcher",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
# Each metric's child per label set, looked up once per process: ``labels()`` takes the metric's
# lock and builds its key from keyword arguments on every call, three times per request.
_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, cached."""
    key = (id(metric), values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*values)
    return found


unknown_categories = bentoml.metrics.Counter(
    name="mlcycle_unknown_categories",
    documentation="Scored requests with a category the feature definitions do not know, per field",
    labelnames=["field"],
)


class PublisherMetrics:
    """The request publisher's figures as this worker's metrics, fed by the publisher's thread.
    Counters add increments; gauges sum (queue depth) or take the worst (lag) over live workers."""

    def __init__(self) -> None:
        self.published = bentoml.metrics.Counter(
            name="mlcycle_stream_published", documentation="Scored requests published as events"
        )
        self.failures = bentoml.metrics.Counter(
            name="mlcycle_stream_publish_failures", documentation="Failed attempts to publish a batch (retried)"
        )
        self.dropped = bentoml.metrics.Counter(
            name="mlcycle_stream_publish_dropped", documentation="Scored requests not published: the queue was full"
        )
        self.depth = bentoml.metrics.Gauge(
            name="mlcycle_stream_publish_queue_depth", documentation="Scored requests waiting to be published",
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.lag_p50, self.lag_p99 = (
            bentoml.metrics.Gauge(
                name=f"mlcycle_stream_publish_lag_{q}_ms",
                documentation=f"Scoring to published, {q} of recent requests (ms; worst worker)",
                multiprocess_mode="livemax",
            )
            for q in ("p50", "p99")
        )

    def __call__(self, report: PublisherReport) -> None:
        self.published.inc(report.published)
        self.failures.inc(report.failures)
        self.dropped.inc(report.dropped)
        self.depth.set(report.queue_depth)
        if report.lag_ms_p50 is not None and report.lag_ms_p99 is not None:
            self.lag_p50.set(report.lag_ms_p50)
            self.lag_p99.set(report.lag_ms_p99)


# HTTP status of a failed API request → the reason label of mlcycle_errors_total.
ERROR_REASONS = {
    400: "validation", 401: "unauthorized", 403: "unauthorized", 413: "too_large", 415: "unsupported_media_type",
    422: "validation", 503: "unavailable", 504: "timeout",
}  # fmt: skip
OTHER_CLIENT_ERROR, SERVER_ERROR = "client_error", "server_error"


# The request model, generated at start from the project's FeatureService (entity keys, request
# fields) and its contract (types, bounds, nullability): mlcycle.request_schema. BentoML reads it
# from this module when it builds the APIs, so it is made at import.
CONFIG = load_config(os.environ.get("MLCYCLE_CONFIG"))
Request = request_model(CONFIG)
# `mlcycle up` starts the broker and sets MLCYCLE_STREAM_PUBLISH=1 for the service it starts.
PUBLISHING = CONFIG.streaming.publish_requests or os.environ.get("MLCYCLE_STREAM_PUBLISH") == "1"
# Only a publishing service has these (a counter at 0 would claim a publisher that does not exist).
publisher_metrics = PublisherMetrics() if PUBLISHING else None


class Prediction(BaseModel):
    score: float | None = None
    decision: bool | None = None
    model_version: str | None = None
    variant: str | None = None
    features_missing: list[str] = []
    unknown_categories: list[str] = Field([], description="Request fields whose value the features do not know.")
    request_id: str | None = None
    error: str | None = None


class RolloutStatus(BaseModel):
    """The answer of ``/rollout/status``: built through this model so the document declares its shape."""

    ready: bool
    not_ready_reason: str | None = Field(description="Why the service cannot score (no internals); null when ready.")
    models: dict[str, str] = Field(description="Alias → the model version it serves (e.g. champion: '3').")
    policy: rollout.RolloutPolicy


class Rollback(BaseModel):
    """The answer of ``/admin/rollback``: the alias moves made, or (409) none and why."""

    moves: list[str] = Field(description="One line per alias moved, e.g. 'champion: 3 -> 2'.")
    error: str | None = Field(None, description="Only on a 409: why nothing was rolled back.")


class TrafficChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: rollout.Mode
    percent: Annotated[float, Field(strict=True, ge=0, le=100)] = 0.0  # strict: `false` is not 0
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class JsonBodiesOnly:
    """ASGI middleware: a form or multipart POST is a 415 naming the content type.

    BentoML hands such a body to its form parser rather than to JSON validation: a malformed one
    (no boundary, bad framing) fails there with a 500, and a well-formed one is read as form fields,
    so the answer would be a misleading "transaction: Field required". Every API here takes JSON.
    """

    FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
    # BentoML refuses this one itself, with a body that is a list (``[{"error": …}]``), unlike every
    # other error: refused here with the same answer as a form.
    REFUSED_TYPES = (*FORM_TYPES, "application/vnd.bentoml+pickle")

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            # The first content-type header, as BentoML reads it.
            raw = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
            media = raw.decode("latin-1").split(";")[0].strip().lower()
            if media in self.REFUSED_TYPES:
                message = f"unsupported content-type '{media}': send the body as JSON (content-type: application/json)"
                await JSONResponse({"error": message}, status_code=415)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class CountErrors:
    """ASGI middleware: every failed request to an API route counts in ``mlcycle_errors_total`` by
    reason. Counted at the edge, from the status sent, because BentoML answers validation errors
    (400) and token errors (401) before the API function runs, and the 415 above never reaches it."""

    def __init__(self, app, routes: frozenset[str]) -> None:
        self.app, self.routes = app, routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        status = 0

        async def watch(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            errors.labels(reason=SERVER_ERROR).inc()
            raise
        if status >= 400:
            errors.labels(reason=error_reason(status)).inc()


def error_reason(status: int) -> str:
    return ERROR_REASONS.get(status, OTHER_CLIENT_ERROR if status < 500 else SERVER_ERROR)


class DocsPage:
    """ASGI middleware: ``GET /docs`` (and ``/``, where BentoML's stock page loads Google Tag
    Manager and Swagger UI) answer a self-contained page listing the endpoints, linking the raw
    OpenAPI document at ``/docs.json``. No script, no third-party request."""

    PATHS = ("/", "/docs", "/docs/")

    def __init__(self, app, page: str) -> None:
        self.app, self.page = app, page

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and scope["path"] in self.PATHS:
            await HTMLResponse(self.page)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def docs_page(apis: dict) -> str:
    """The endpoint list, from the service's own API definitions (routes and docstrings)."""
    rows = "".join(
        f"<tr><td>POST</td><td><code>{html.escape(m.route)}</code></td>"
        f"<td>{html.escape((m.doc or '').strip().splitlines()[0] if m.doc else '')}</td></tr>"
        for m in sorted(apis.values(), key=lambda m: m.route)
    )
    probes = (
        ("/livez", "alive"),
        ("/readyz", "200 once a champion and the feature store are loaded"),
        ("/metrics", "Prometheus metrics"),
        ("/docs.json", "OpenAPI document (request and answer schemas)"),
    )
    rows += "".join(f"<tr><td>GET</td><td><code>{p}</code></td><td>{d}</td></tr>" for p, d in probes)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>scoring service</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:.2em 1em;border-bottom:1px solid #ddd}</style>"
        "</head><body><h1>scoring service</h1>"
        "<p>Request bodies are JSON; the schemas are in the <a href='/docs.json'>OpenAPI document</a>. "
        "<code>/predict</code>, <code>/predict_batch</code> and <code>/rollout/status</code> need the "
        "<code>x-api-key</code> header when <code>MLCYCLE_API_KEY</code> is set; <code>/admin/*</code> need "
        "<code>x-admin-token</code>.</p><table>" + rows + "</table></body></html>"
    )


class ClientErrorsOneLine(logging.Filter):
    """BentoML logs every rejected request as ``[ERROR] Exception on /predict [POST]`` with a full
    traceback (264 tracebacks for 264 bad requests buried the one real failure). A client error —
    a validation error, or one of BentoML's exceptions with a 4xx code — becomes one WARNING line
    naming the fields at fault (never their values); anything else keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            status = 400
            where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        elif isinstance(exc, bentoml.exceptions.BentoMLException) and exc.error_code.value < 500:
            status, where = exc.error_code.value, str(exc)
        else:
            return True
        path = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.msg, record.args = "client error %d on %s (%s): %s", (status, path, error_reason(status), where[:500])
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


def install_log_filter() -> None:
    """On BentoML's HTTP app logger, once per process (the worker configures logging first)."""
    logger = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, ClientErrorsOneLine) for f in logger.filters):
        logger.addFilter(ClientErrorsOneLine())


def _token_ok(ctx: bentoml.Context, variable: str, header: str) -> bool:
    """Constant-time check of a token from the environment; no variable set means not required."""
    expected = os.environ.get(variable)
    if not expected:
        return True
    given = ctx.request.headers.get(header, "")
    # Digests of equal length: compare_digest leaks the length of its inputs otherwise.
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest())


def _caller_ok(ctx: bentoml.Context) -> bool:
    """The API key's check. Without ``MLCYCLE_API_KEY`` only loopback clients are served: a
    service started some other way than ``mlcycle serve`` (``bentoml serve``'s default host is
    0.0.0.0, a container's too) must not answer the network without a key."""
    if not os.environ.get("MLCYCLE_API_KEY"):
        client = ctx.request.client
        return client is not None and is_loopback(client.host)
    return _token_ok(ctx, "MLCYCLE_API_KEY", "x-api-key")


def _require_caller(ctx: bentoml.Context) -> None:
    if not _caller_ok(ctx):
        if not os.environ.get("MLCYCLE_API_KEY"):
            raise Unauthorized("no MLCYCLE_API_KEY set: only loopback clients are served")
        raise Unauthorized("missing or wrong x-api-key")


# BentoML's access log writes a line per request (about 0.2 ms of the worker's time, the prediction
# log and /metrics already record every request): MLCYCLE_ACCESS_LOG=1 turns it back on.
ACCESS_LOG = os.environ.get("MLCYCLE_ACCESS_LOG", "0").lower() in ("1", "true", "yes")
# Worker processes (each with its own models, store connection and prediction-log writer).
WORKERS = service_workers(CONFIG.profile, os.environ.get("MLCYCLE_WORKERS"), os.cpu_count())
# OpenTelemetry spans for the scoring routes (BentoML makes one per request, exported nowhere unless
# a tracing exporter is configured): MLCYCLE_TRACING=1 keeps them.
TRACING = os.environ.get("MLCYCLE_TRACING", "0").lower() in ("1", "true", "yes")
UNTRACED = [] if TRACING else ["/predict", "/predict_batch"]


@bentoml.service(name="mlcycle", traffic={"timeout": 30}, workers=WORKERS,
                  logging={"access": {"enabled": ACCESS_LOG}}, tracing={"excluded_urls": UNTRACED})  # fmt: skip
class ScoringService:
    def __init__(self) -> None:
        install_log_filter()
        for reason in {*ERROR_REASONS.values(), OTHER_CLIENT_ERROR, SERVER_ERROR}:
            errors.labels(reason=reason)  # every reason listed from the start, at 0
        self.cfg = CONFIG
        self.scorer = Scorer(self.cfg, refresh_seconds=float(os.environ.get("MLCYCLE_REFRESH_SECONDS", "2")))
        self.scorer.load()
        self.scorer.start_refresh()  # aliases and policy re-read off the request path
        self.publisher = RequestPublisher(self.cfg, report=publisher_metrics) if PUBLISHING else None
        self.stream_figures = StreamFigures(self.cfg)
        self.monitor_figures = MonitorFigures(self.cfg)
        self.batcher: MicroBatcher[dict, Scored] = MicroBatcher(
            self._score_rows, max_size=64, observe=batch_sizes.observe
        )

    @bentoml.on_shutdown
    def _stop_publisher(self) -> None:
        """Flush what is queued (one attempt, about a second at most) before the worker exits."""
        if self.publisher is not None:
            self.publisher.stop()

    def __metrics__(self, content: str) -> str:
        """BentoML's hook for ``/metrics`` (run in a thread): the stream consumer's figures and the newest
        monitoring check's (``mlcycle_monitor_*``) appended."""
        return content + self.stream_figures.render() + self.monitor_figures.render()

    def __is_ready__(self) -> bool:
        if not self.scorer.ready:
            self.scorer.load()  # retry: the registry or the store may be back
        return self.scorer.ready

    def _score_rows(self, rows: list[dict]) -> list[Scored]:
        """Score, publish and count a list of requests (one call of ``/predict_batch``, or the
        ``/predict`` calls the micro-batcher gathered)."""
        results = self.scorer.score(rows)
        if self.publisher is not None:  # a queue append: the broker is the publisher thread's business
            self.publisher.submit(rows, results)
        self._count(results)
        return results

    def _count(self, results: list[Scored]) -> None:
        # Counters once per batch and label set (each increment is a write to a shared memory map).
        counted = Counter((r.variant, r.model_version) for r in results)
        for (variant, version), n in counted.items():
            child(predictions, variant, version).inc(n)
        for r in results:
            child(scores, r.variant).observe(r.score)
        for name, n in Counter(name for r in results for name in r.unknown_categories).items():
            child(unknown_categories, name).inc(n)

    @bentoml.api(route="/predict")
    async def predict(self, request: Request, ctx: bentoml.Context) -> Prediction:
        """Score one request."""
        # On the event loop, not BentoML's thread pool: a score is about a millisecond of CPU under
        # the GIL either way, and the hand-off to a pool thread and back cost as much again. The
        # calls that arrive together are scored together (``MicroBatcher``: one store read, one
        # model call); a lone call is scored on the loop's next turn.
        _require_caller(ctx)
        with child(latency, "predict").time():
            try:
                result = await self.batcher.submit(request.model_dump())
            except (NotReady, FeatureStoreUnavailable) as exc:  # a short reason; the detail is logged
                ctx.response.status_code = 503
                return Prediction(error=f"service unavailable: {exc}")
        return Prediction(**result.__dict__)

    @bentoml.api(route="/predict_batch")
    def predict_batch(
        self, requests: Annotated[list[Request], Field(min_length=1, max_length=MAX_BATCH)],
        ctx: bentoml.Context,
    ) -> list[Prediction]:  # fmt: skip
        """Score up to 1000 requests in one call."""
        _require_caller(ctx)
        with child(latency, "predict_batch").time():
            try:
                results = self._score_rows([r.model_dump() for r in requests])
            except (NotReady, FeatureStoreUnavailable) as exc:  # a short reason; the detail is logged
                ctx.response.status_code = 503
                return [Prediction(error=f"service unavailable: {exc}")]
        return [Prediction(**r.__dict__) for r in results]

    @bentoml.api(route="/rollout/status")
    def rollout_status(self, ctx: bentoml.Context) -> dict:
        """What serves now: aliases with their versions and the traffic policy (API key or admin token)."""
        given = ctx.request.headers.get("x-admin-token", "")
        admin = bool(given) and tokens.principal_for(given, tokens.tokens_file(self.cfg.data_path)) is not None
        if not admin:
            _require_caller(ctx)
        self.scorer.refresh()
        return RolloutStatus(
            ready=self.scorer.ready,
            not_ready_reason=self.scorer.unavailable,
            models={alias: slot.version for alias, slot in self.scorer.slots.items()},
            policy=self.scorer.policy,
        ).model_dump(mode="json")

    def _admin(self, ctx: bentoml.Context, role: str, action: str) -> tuple[str, str | None]:
        """The principal whose token this is, and the refusal if its role does not allow ``action``
        (answered as a 403 naming the rule, and logged). No or an unknown token: 401."""
        path = tokens.tokens_file(self.cfg.data_path)
        if not tokens.configured(path):
            raise Unauthorized("admin endpoints are off: issue a token (mlcycle token issue NAME)")
        name = tokens.principal_for(ctx.request.headers.get("x-admin-token", ""), path)
        if name is None:
            raise Unauthorized("missing, wrong or revoked x-admin-token")
        principal = governance.Principal(name, True, "service-token")
        try:
            governance.require_role(self.cfg.governance, principal, role, action)
        except governance.Refused as exc:
            log = registry.PromotionLog(self.cfg.promotion_log_uri)
            governance.record_refusal(log, self.cfg.model.name, None, principal, exc)
            ctx.response.status_code = 403
            return name, str(exc)
        return f"{name} (service token)", None

    @bentoml.api(route="/admin/traffic")
    def set_traffic(self, change: TrafficChange, ctx: bentoml.Context) -> dict:
        """Change the rollout policy (admin token required; recorded in the promotion log)."""
        who, refused = self._admin(ctx, "operator", "change the traffic")
        if refused:
            return ErrorMessage(error=refused).model_dump()
        client = registry.client_for(self.cfg)
        log = registry.PromotionLog(self.cfg.promotion_log_uri)
        policy = rollout.write_policy(
            client, log, self.cfg.model.name, rollout.RolloutPolicy(mode=change.mode, percent=change.percent),
            change.reason, who=who,
        )  # fmt: skip
        self.scorer.refresh(force=True)  # apply now, not at the next refresh
        return policy.model_dump(mode="json")

    @bentoml.api(route="/admin/rollback")
    def rollback(self, reason: Annotated[str, Field(min_length=1, max_length=500)], ctx: bentoml.Context) -> dict:
        """Champion back to the previous one, traffic to champion-only (admin token required)."""
        who, refused = self._admin(ctx, "operator", "roll back")
        if refused:
            return Rollback(moves=[], error=refused).model_dump()
        client = registry.client_for(self.cfg)
        log = registry.PromotionLog(self.cfg.promotion_log_uri)
        try:
            events = rollout.rollback(client, log, self.cfg.model.name, reason, who=who)
        except rollout.NothingToRollBack as exc:  # nothing changed: a conflict with the state, not our bug
            ctx.response.status_code = 409
            return Rollback(moves=[], error=str(exc)).model_dump()
        self.scorer.refresh(force=True)
        moves = [f"{e.alias}: {e.from_version} -> {e.to_version}" for e in events]
        return Rollback(moves=moves).model_dump(exclude_none=True)


# The first added is the outermost: errors are counted after every other middleware answered.
ScoringService.add_asgi_middleware(CountErrors, routes=frozenset(m.route for m in ScoringService.apis.values()))
ScoringService.add_asgi_middleware(DocsPage, page=docs_page(ScoringService.apis))
ScoringService.add_asgi_middleware(JsonBodiesOnly)


# Every status each API answers, as /docs.json declares it (mlcycle.serving.openapi: BentoML's own
# document declares 200/400/404/500 for every API, a string `detail`, and drops null from answers).
# tests/test_init_project_e2e.py runs schemathesis against a live service to hold them to its answers.
def api_answers() -> dict[str, list[Answer]]:
    """The declared answers per route; the 401s depend on which tokens are configured."""
    keyed = bool(os.environ.get("MLCYCLE_API_KEY"))
    fault = (
        "The body is not valid JSON, or a field is at fault: `detail` names each one by its location "
        "(`loc`, e.g. ['request', 'timestamp'])."
    )
    common = [
        Answer(400, fault, ValidationFailure),
        Answer(415, "The body is a form or multipart (or BentoML's pickle): send JSON.", ErrorMessage),
        Answer(500, "Our bug (logged with its traceback); the caller gets no detail.", ErrorMessage),
        Answer(504, "Not answered within the service's 30 s.", ErrorMessage),
    ]
    no_key = "A caller from another host: without MLCYCLE_API_KEY only loopback callers are served."
    caller = Answer(401, "A missing or wrong x-api-key." if keyed else no_key, ErrorMessage)
    admin = Answer(401, "A missing, wrong or revoked x-admin-token, or no admin token at all (admin off).",
                   ErrorMessage)  # fmt: skip
    role = Answer(403, "The token's principal lacks the role (governance.roles): the message names it.",
                  ErrorMessage)  # fmt: skip
    down = (
        "No champion yet, or the registry or the online store unreachable: `error` names the dependency "
        "(the detail is in the service's log), every other field is null."
    )
    batch_down = down + " One item, whatever the batch's size."
    nothing = "Nothing to roll back to (nothing changed): `error` says why."
    not_ready = "Not ready: no champion yet, or a dependency unreachable (/rollout/status says which)."
    return {
        "/predict": [Answer(200, "Scored.", Prediction), caller, Answer(503, down, Prediction), *common],
        "/predict_batch": [
            Answer(200, "Scored: one answer per request, in order.", list[Prediction]),
            caller,
            Answer(503, batch_down, list[Prediction]),
            *common,
        ],
        "/rollout/status": [Answer(200, "What serves now.", RolloutStatus), caller, *common],
        "/admin/traffic": [Answer(200, "The policy now in force.", rollout.RolloutPolicy), admin, role, *common],
        "/admin/rollback": [
            Answer(200, "Rolled back: the alias moves.", Rollback),
            admin,
            Answer(403, role.description, Rollback),
            Answer(409, nothing, Rollback),
            *common,
        ],
        "/readyz": [Answer(503, not_ready)],
    }


def api_security() -> tuple[list[HeaderToken], dict[str, list[str]]]:
    """The header tokens the document declares, as configured: the API key only when one is set
    (otherwise loopback callers need none), the admin token on the admin endpoints always."""
    api_key = HeaderToken("ApiKey", "x-api-key", "MLCYCLE_API_KEY of the service.")
    admin = HeaderToken("AdminToken", "x-admin-token", "A principal's admin token (mlcycle token issue NAME).")
    security: dict[str, list[str]] = {"/admin/traffic": ["AdminToken"], "/admin/rollback": ["AdminToken"]}
    if os.environ.get("MLCYCLE_API_KEY"):
        security |= {"/predict": ["ApiKey"], "/predict_batch": ["ApiKey"], "/rollout/status": ["ApiKey"]}
        if tokens.configured(tokens.tokens_file(CONFIG.data_path)):  # an admin token reads the status too
            security["/rollout/status"] = ["ApiKey", "AdminToken"]
    return [api_key, admin], security


def api_document() -> dict[str, Any]:
    """The OpenAPI document served at /docs.json."""
    tokens, security = api_security()
    base = ScoringService.openapi_spec.asdict()
    return openapi_document(base, ScoringService.apis, api_answers(), tokens=tokens, security=security)


ScoringService.add_asgi_middleware(ServeDocument, path="/docs.json", build=api_document)
