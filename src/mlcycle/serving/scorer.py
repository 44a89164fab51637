"""Online scoring: online features → the model the rollout policy picks → a logged answer.

Models come from the registry by alias, never from a path in a request. ``Scorer.refresh`` re-reads
the aliases and the rollout policy (a few milliseconds against the registry) at most every
``refresh_seconds``, and reloads a model only when its alias points at another version — so a
promotion, a rollback or a traffic change reaches a running service within seconds, no restart.

What a caller sees of a failure is a short reason naming the dependency (``unavailable``); the
detail (exception text, the registry's URI) goes to the server's log only: it tells an attacker
where the registry is and what runs it, and tells a caller nothing it can act on.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from mlcycle import flavors
from mlcycle.features.store import (
    REQUEST_TIME,
    FeatureStoreUnavailable,
    Vectors,
    online_columns,
    open_project_store,
    plan_for,
)
from mlcycle.project.config import ProjectConfig
from mlcycle.registry import aliases as registry
from mlcycle.registry.tracking import FEATURES_TAG, THRESHOLD_TAG, load_version
from mlcycle.serving import rollout
from mlcycle.serving.prediction_log import SHADOW_SUFFIX
from mlcycle.serving.prediction_store import open_prediction_log
from mlcycle.settings import redact
from mlcycle.training.fit import for_single_rows

log = logging.getLogger("mlcycle.serving")

# Short reasons for callers (503 bodies, /rollout/status); the detail is logged.
STORE_UNAVAILABLE = "online feature store unavailable"
REGISTRY_UNAVAILABLE = "model registry unavailable"
# A request field F whose on-demand feature ``F_code`` is negative was not among the categories the
# feature definitions know (they map an unknown value to -1): the answer says so.
CATEGORY_CODE_SUFFIX = "_code"


class NotReady(RuntimeError):
    """The service cannot score yet (no champion, registry or feature store unreachable)."""


@dataclass
class ModelSlot:
    alias: str
    version: str
    model: Any  # whatever the version's flavor loads (an xgboost Booster, a scikit-learn estimator…)
    features: list[str]
    threshold: float
    flavor: flavors.Flavor = field(default_factory=flavors.XGBoostFlavor)

    def predict(self, vectors: Vectors, rows: np.ndarray | None = None) -> np.ndarray:
        """Scores of ``vectors`` (of the ``rows`` mask only, when given)."""
        x = vectors.matrix(self.features)
        return self.flavor.predict(self.model, x if rows is None else x[rows])


@dataclass
class Scored:
    """One answer, as returned to the caller."""

    score: float
    decision: bool | None
    model_version: str
    variant: str
    features_missing: list[str] = field(default_factory=list)
    request_id: str = ""
    unknown_categories: list[str] = field(default_factory=list)


class Scorer:
    def __init__(self, cfg: ProjectConfig, refresh_seconds: float = 2.0, log_predictions: bool = True):
        self.cfg = cfg
        self.refresh_seconds = refresh_seconds
        self.store = None
        self.plan = None
        self.categories: dict[str, frozenset[str]] = {}
        self.slots: dict[str, ModelSlot] = {}
        self.policy = rollout.RolloutPolicy()
        self.not_ready_reason: str | None = "not loaded yet"  # the detail, for the server's log
        self.unavailable: str | None = "models not loaded yet"  # the short reason callers get
        self._checked = 0.0
        self._lock = threading.Lock()
        self._refresher: threading.Thread | None = None
        self._stop = threading.Event()
        self.prediction_log = open_prediction_log(cfg) if log_predictions else None

    # ----------------------------------------------------------------- loading
    @property
    def ready(self) -> bool:
        return self.not_ready_reason is None

    def load(self) -> None:
        """Open the feature store and load the models; on failure, say why in ``not_ready_reason``."""
        try:
            if self.store is None:
                store = open_project_store(self.cfg)
                self.plan = plan_for(store, self.cfg.features.feature_service)
                self.categories = category_sets(self.cfg, self.plan.request_fields)
                self.store = store
        except Exception as exc:
            self._not_ready(STORE_UNAVAILABLE, f"online feature store: {type(exc).__name__}: {exc}")
            return
        try:
            self._refresh_models(force=True)
        except Exception as exc:  # unreachable, refusing, or a model that does not load
            detail = f"model registry at {redact(self.cfg.tracking_uri)}: {type(exc).__name__}: {exc}"
            self._not_ready(REGISTRY_UNAVAILABLE, detail)
            return
        if registry.CHAMPION not in self.slots:
            reason = f"no '{registry.CHAMPION}' alias on model '{self.cfg.model.name}' yet"
            self.not_ready_reason = self.unavailable = reason
        else:
            self.not_ready_reason = self.unavailable = None

    def start_refresh(self) -> None:
        """Re-read aliases and policy every ``refresh_seconds`` in a background thread, so no request
        waits on the registry (a refresh inline cost one request in every few seconds 5-30 ms: the
        p99). While not ready, the thread retries ``load``."""
        if self._refresher is not None:
            return
        self._stop.clear()
        self._refresher = threading.Thread(target=self._refresh_loop, name="mlcycle-registry-refresh", daemon=True)
        self._refresher.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(max(self.refresh_seconds, 0.05)):
            try:
                self.load() if not self.ready else self.refresh(force=True)
            except Exception:  # never let the refresher die: the next round retries
                log.exception("background registry refresh failed")

    def _not_ready(self, unavailable: str, detail: str) -> None:
        self.unavailable, self.not_ready_reason = unavailable, redact(detail)
        log.error("not ready: %s", self.not_ready_reason)

    def refresh(self, force: bool = False) -> None:
        """Pick up alias and policy changes (rate-limited unless forced; cheap when nothing changed)."""
        if not force and time.monotonic() - self._checked < self.refresh_seconds:
            return
        try:
            self._refresh_models(force=False)
            if registry.CHAMPION in self.slots and self.store is not None:
                self.not_ready_reason = self.unavailable = None
        except Exception as exc:  # registry unreachable: keep serving what is loaded
            log.warning("registry refresh failed, serving the models already loaded: %s", redact(str(exc)))

    def _refresh_models(self, force: bool) -> None:
        with self._lock:
            self._checked = time.monotonic()
            client = registry.client_for(self.cfg)
            name = self.cfg.model.name
            for alias in (registry.CHAMPION, registry.CHALLENGER):
                mv = registry.version_by_alias(client, name, alias)
                current = self.slots.get(alias)
                if mv is None:
                    self.slots.pop(alias, None)
                    continue
                if not force and current is not None and current.version == str(mv.version):
                    continue
                # By registry URI only; the flavor comes from the version's MLmodel file.
                flavor, model = load_version(self.cfg, str(mv.version))
                self.slots[alias] = ModelSlot(
                    alias,
                    str(mv.version),
                    # Requests are single rows: an xgboost Booster runs one thread per prediction.
                    for_single_rows(flavor, model),
                    json.loads(mv.tags.get(FEATURES_TAG, "[]")),
                    float(mv.tags.get(THRESHOLD_TAG, 0.5)),
                    flavor,
                )
                log.info("loaded %s v%s as %s", name, mv.version, alias)
            self.policy = rollout.read_policy(client, name)

    # ----------------------------------------------------------------- scoring
    def score(self, requests: list[dict[str, Any]]) -> list[Scored]:
        """Score a batch of requests. Raises ``NotReady`` or ``FeatureStoreUnavailable`` (→ 503),
        whose message is the short reason for the caller; the detail is logged here."""
        if self._refresher is None:  # no background refresher (a batch job, a test): refresh inline
            self.refresh()
        if not self.ready:
            raise NotReady(self.unavailable or "not ready")
        started = time.perf_counter()
        now = datetime.now(UTC)
        plan = self.plan
        keys = [{k: r.get(k) for k in plan.join_keys} for r in requests]
        fields = [
            {f: r.get(f) for f in plan.request_fields if f != REQUEST_TIME}
            | {REQUEST_TIME: _unix(r.get("timestamp") or now)}
            for r in requests
        ]
        request_ids = [_request_id() for _ in requests]
        routing_key = self.cfg.routing_key
        route_by = [r.get(routing_key) if routing_key else rid for r, rid in zip(requests, request_ids, strict=True)]
        try:
            vectors = online_columns(self.store, keys, fields, self.plan.name, now=now)
        except FeatureStoreUnavailable as exc:
            log.error("online feature store unavailable: %s", redact(str(exc.__cause__ or exc)))
            raise FeatureStoreUnavailable(STORE_UNAVAILABLE) from None
        features_seconds = time.perf_counter() - started
        unknown = _unknown_categories(fields, vectors, self.categories)
        slots, policy = dict(self.slots), self.policy
        champion, challenger = slots[registry.CHAMPION], slots.get(registry.CHALLENGER)
        variants = np.array([rollout.route(policy, key, challenger is not None) for key in route_by])
        routed = variants.copy()  # what the policy chose: the log keeps it, even when the champion stands in
        scores = np.empty(len(requests))
        versions = np.empty(len(requests), dtype=object)
        errors: list[str | None] = [None] * len(requests)
        on_champion = variants == "champion"
        if on_champion.any():
            scores[on_champion] = champion.predict(vectors, on_champion)
            versions[on_champion] = champion.version
        if (~on_champion).any():
            rows = ~on_champion
            try:
                scores[~on_champion] = challenger.predict(vectors, rows)
                versions[~on_champion] = challenger.version
            except Exception as exc:  # a failing challenger must not fail the request: champion answers
                log.error("challenger v%s failed, champion answers: %s", challenger.version, exc)
                scores[~on_champion] = champion.predict(vectors, rows)
                versions[~on_champion] = champion.version
                idx = np.flatnonzero(~on_champion)
                for i in idx:
                    errors[i] = f"challenger v{challenger.version}: {type(exc).__name__}: {exc}"[:300]
                variants[~on_champion] = "champion"
        latency_ms = (time.perf_counter() - started) * 1000 / max(len(requests), 1)
        thresholds = np.where(versions == champion.version, champion.threshold,
                              challenger.threshold if challenger else champion.threshold)  # fmt: skip
        results = [
            Scored(
                score=float(scores[i]),
                decision=_decision(scores[i], thresholds[i]),
                model_version=str(versions[i]),
                variant=str(variants[i]),
                features_missing=_missing(vectors, i, unknown[i]),
                request_id=request_ids[i],
                unknown_categories=unknown[i],
            )
            for i in range(len(requests))
        ]
        if self.prediction_log is not None:
            records = [
                self._record(requests[i], fields[i], vectors, i, r, thresholds[i], latency_ms, errors[i], False)
                | {"variant": str(routed[i])}
                for i, r in enumerate(results)
            ]
            if policy.mode == "shadow" and challenger is not None:
                ids = [r.request_id for r in results]
                records += self._shadow(requests, fields, vectors, challenger, features_seconds, unknown, ids)
            self.prediction_log.append(records)
        return results

    def _shadow(self, requests, fields, vectors, challenger: ModelSlot, features_seconds: float,
                unknown: list[list[str]], request_ids: list[str]) -> list[dict]:  # fmt: skip
        """The challenger scores every request; its answers are logged only. Its latency is its own:
        the shared feature lookup plus its own prediction (the canary compares the two models' p99,
        so logging the champion's time here made a slow challenger look as fast as the champion).
        Its request id is the answered request's plus ``SHADOW_SUFFIX``: the pair is exact."""
        started = time.perf_counter()
        try:
            shadow = challenger.predict(vectors)
            error = None
        except Exception as exc:
            shadow = np.full(len(requests), np.nan)
            error = f"challenger v{challenger.version}: {type(exc).__name__}: {exc}"[:300]
        latency_ms = (features_seconds + time.perf_counter() - started) * 1000 / max(len(requests), 1)
        out = []
        for i in range(len(requests)):
            scored = Scored(float(shadow[i]), _decision(shadow[i], challenger.threshold), challenger.version,
                            "challenger", _missing(vectors, i, unknown[i]), request_ids[i] + SHADOW_SUFFIX,
                            unknown[i])  # fmt: skip
            out.append(self._record(requests[i], fields[i], vectors, i, scored, challenger.threshold,
                                    latency_ms, error, True))  # fmt: skip
        return out

    def _record(self, request, fields, vectors: Vectors, i: int, scored: Scored, threshold, latency_ms, error,
                shadow) -> dict:  # fmt: skip
        """One log row, the same columns for every project: the entity keys, the request's own fields
        and the feature vector the model saw, each as JSON text, beside the answer."""
        features = {f: column[i] for f, column in vectors.as_lists(self.plan.model_features).items()}
        event_id = request.get(self.cfg.table.event_id) if self.cfg.table.event_id else None
        return {
            "request_id": scored.request_id,
            "logged_at": datetime.now(UTC),
            "event_id": None if event_id is None else str(event_id),
            "entities": _json({k: _plain(request.get(k)) for k in self.plan.join_keys}),
            "request": _json({k: _plain(v) for k, v in fields.items() if k != REQUEST_TIME}),
            "request_unix": fields[REQUEST_TIME],
            "variant": scored.variant,
            "model_version": scored.model_version,
            "shadow": shadow,
            "score": scored.score,
            "decision": scored.decision,
            "threshold": float(threshold),
            "latency_ms": latency_ms,
            "features_missing": ",".join(scored.features_missing),
            "features": _json(features),
            "error": error,
        }

    def close(self) -> None:
        self._stop.set()
        if self.prediction_log is not None:
            self.prediction_log.close()


def _missing(vectors: Vectors, i: int, unknown: list[str]) -> list[str]:
    """Features without a usable value for request ``i``: absent ones, and the code of an unknown
    category (the model has no value it learned for it), so the prediction log shows both."""
    return [*vectors.features_missing[i], *(f + CATEGORY_CODE_SUFFIX for f in unknown)]


def _unknown_categories(
    fields: list[dict[str, Any]], vectors: Vectors, categories: dict[str, frozenset[str]]
) -> list[list[str]]:
    """Per request, the request fields whose value is not among the categories the model knows: a
    value outside the contract's category set, or a field F whose on-demand code ``F_code`` is below
    0 (the feature definitions map an unknown value there). A missing value is absent, not unknown.
    Reported in the answer and the metrics, never scored silently."""
    coded = [f for f in (fields[0] if fields else {}) if f + CATEGORY_CODE_SUFFIX in vectors.columns]
    codes = {f: vectors.columns[f + CATEGORY_CODE_SUFFIX] for f in coded}
    out = []
    for i, row in enumerate(fields):
        bad = [f for f in coded if row.get(f) is not None and codes[f][i] < 0]
        bad += [f for f, known in categories.items()
                if f not in bad and row.get(f) is not None and str(row[f]) not in known]  # fmt: skip
        out.append(bad)
    return out


def category_sets(cfg: ProjectConfig, request_fields: Sequence[str]) -> dict[str, frozenset[str]]:
    """The contract's category set of each request field that has one (a membership check)."""
    from mlcycle.data.validation import table_schema

    try:
        schema = table_schema(cfg)
    except Exception as exc:  # the contract is the build's business; serving goes on without sets
        log.warning("contract not readable, unknown categories found by feature codes only: %s", exc)
        return {}
    out = {}
    for name in request_fields:
        column = schema.columns.get(name)
        for check in column.checks if column is not None else ():
            allowed = (check.statistics or {}).get("allowed_values")
            if allowed is not None:
                out[name] = frozenset(str(v) for v in allowed)
    return out


def _decision(score: float, threshold: float) -> bool | None:
    """Above the threshold; no threshold (a regression's is NaN): no decision, not a False one."""
    return None if np.isnan(threshold) else bool(score >= threshold)


def _unix(at: datetime) -> int:
    """Seconds since the epoch; a time without an offset is UTC (the server's local zone means
    nothing to a caller, and local-time conversion fails outright for year 1)."""
    return int((at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp())


# Request ids: 128 random bits from a generator seeded from the OS once per process (uuid4 reads
# os.urandom per id: a system call, 12 us each here, 12 ms of a 1,000-row batch).
_ids = random.Random()
_ids_pid = os.getpid()


def _request_id() -> str:
    global _ids_pid
    if os.getpid() != _ids_pid:  # a forked worker must not repeat its parent's sequence
        _ids.seed(os.urandom(32))
        _ids_pid = os.getpid()
    return f"{_ids.getrandbits(128):032x}"


def _json(value: Any) -> str:
    """JSON text of a log record's field (compact; NaN as null). orjson: the three texts of each
    record were a fifth of a 1,000-row batch's time in the standard library's encoder."""
    return orjson.dumps(value).decode()


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


__all__ = ["FeatureStoreUnavailable", "ModelSlot", "NotReady", "Scored", "Scorer"]
