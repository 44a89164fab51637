"""``/predict`` is an event too: scored requests go to the project's event stream, off the request path.

With ``streaming.publish_requests`` on, the service hands every scored request to a
``RequestPublisher``. It only appends to a bounded in-memory queue (``submit`` never waits on the
network); a background thread publishes the queue in batches (``EventStream.publish_many``, one
MULTI/EXEC round trip per batch of ``encode(row, SOURCE_API)``), waking when a batch is full or
every ``wake_s`` (20 ms). The stream consumer (``mlcycle stream``) then applies each event to its
entity's window aggregates and appends it to the offline source; it does not score it again
(``source=api``): the caller already has its answer.

**The published row** is the request as received — entity keys, request fields (a field sent as
null stays null) and the event id ``table.event_id`` names — with the event time in the column
``table.timestamp``: the request's ``timestamp``, or the time it was scored when it has none.

**A request without an event id** is published with the scorer's ``request_id`` as its event id:
the consumer needs an id to apply an event exactly once (a redelivery changes nothing), and the
request id is unique per request. When the contract types the event id as an integer (an int64
id column), the id is the request id's 128 random bits folded into
[1, 2**63 - 1], so the consumer's contract check does not dead-letter the event; a string id is
the request id's hex text. Such an id is the service's, not the caller's: a later label cannot join
it, which is no loss since the caller sent none to join on.

**Not on the critical path.** A broker that is down or unreachable is found by the background
thread (the client's connect timeout is 0.5 s, with one retry); ``/predict`` answers as if nothing
happened. A failed batch stays at the head of the queue and is retried with a backoff (0.1 s
doubling to 2 s), so a broker restart loses nothing as long as the queue holds; the client opens a
new connection by itself once the broker is back. A full queue (``queue_limit``, 10,000 events)
refuses the newest event and counts it in ``dropped_total``: memory stays bounded through a long
outage, and the events already queued keep their order. Failures are counted per attempt
(``publish_failures_total``) and logged at most once a minute, without credentials. Delivery is at
least once (a reply lost after MULTI/EXEC is retried): the consumer keys its writes on the event id.

**Lag.** ``lag_ms`` is the time from the hand-off (just after scoring) to the end of the publishing
round trip, p50/p99 over the last 5,000 events. What a caller waits for its own event to reach its
entity's online aggregates is that lag (at most ``wake_s`` plus a round trip while the broker is
healthy) plus the consumer's part: an idle consumer's blocking read returns as soon as an entry
arrives (``streaming.block_ms`` bounds an idle wait, it does not add to it), a busy one first
finishes its current batch (``streaming.batch_size`` events), then processes the event (features
written online: the consumer's ``freshness_ms``). Measured on a shared 2-core machine
(``test_publish_lag_measured``: local broker, one request at a time): 22 ms median, 27 ms p99 from
``submit`` to the entry being readable from the stream — the 20 ms wake is nearly all of it (a
single request never fills a batch); the consumer's share comes on top and was not measured here.

**The consumer's figures** (``read_stats``) are read at ``/metrics`` scrape time by
``StreamFigures``: with a short timeout, cached for a second, and absent when the broker cannot be
reached, so a scrape never fails or hangs on the broker.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mlcycle.project.config import ProjectConfig
from mlcycle.serving.request_schema import TIMESTAMP_FIELD
from mlcycle.settings import redact
from mlcycle.streaming.broker import BrokerError, EventStream, connect
from mlcycle.streaming.consumer import broker_url, read_stats, stream_keys
from mlcycle.streaming.events import SOURCE_API, StreamConfigError, encode

log = logging.getLogger("mlcycle.streaming.publisher")

QUEUE_LIMIT = 10_000
BATCH_MAX = 500  # events per MULTI/EXEC: one round trip, and a transaction Redis executes in about a millisecond
WAKE_S = 0.02
RETRY_MIN_S = 0.1
RETRY_MAX_S = 2.0
LOG_EVERY_S = 60.0
REPORT_EVERY_S = 0.5
RECENT = 5_000  # events whose publish lag the quantiles describe
INT_ID_SPACE = 2**63 - 1

# /metrics: a scrape must answer even when the broker does not. No retry, sub-second timeouts, and
# the answer (or its absence) reused for a second, however often the endpoint is scraped.
SCRAPE_CONNECT_TIMEOUT_S = 0.25
SCRAPE_SOCKET_TIMEOUT_S = 0.5
SCRAPE_CACHE_S = 1.0


class HasRequestId(Protocol):
    request_id: str


@dataclass(frozen=True)
class PublisherStats:
    """The publisher's figures since it started (levels now, totals since start)."""

    published_total: int = 0
    publish_failures_total: int = 0
    dropped_total: int = 0
    queue_depth: int = 0
    lag_ms_p50: float | None = None
    lag_ms_p99: float | None = None


@dataclass(frozen=True)
class PublisherReport:
    """What a metrics sink needs: increments since the previous report for the counters (a sink adds
    them; Prometheus counters only go up), and the current levels for the gauges."""

    published: int
    failures: int
    dropped: int
    queue_depth: int
    lag_ms_p50: float | None
    lag_ms_p99: float | None


@dataclass(frozen=True)
class _Queued:
    request: Mapping[str, Any]
    request_id: str
    scored_at: datetime
    enqueued: float  # time.monotonic() at the hand-off


def integer_event_ids(cfg: ProjectConfig) -> bool:
    """Whether the contract types the event id as an integer (as ``request_schema`` decides it)."""
    from mlcycle.data.validation import table_schema

    try:
        column = table_schema(cfg).columns.get(cfg.table.event_id)
    except Exception:  # no readable contract: a text id is as good as any
        return False
    return column is not None and column.dtype is not None and "int" in str(column.dtype)


def fallback_event_id(request_id: str, integer: bool) -> str | int:
    """The event id of a request that carries none: its request id, as an integer in [1, 2**63 - 1]
    when the project's ids are integers (128 random bits folded: unique in practice)."""
    if not integer:
        return request_id
    return int(request_id, 16) % INT_ID_SPACE + 1


class RequestPublisher:
    """Scored requests → the project's event stream, from a background thread.

    ``submit`` is the only call on the request path: it appends to a bounded queue and returns.
    ``report`` (optional) receives a ``PublisherReport`` from the background thread at most every
    ``REPORT_EVERY_S`` while something changes, and once at ``stop``: the service turns it into
    Prometheus metrics there, so each worker process reports its own publisher.

    ``start=False`` leaves the thread unstarted until ``start()``: the queue then only fills (tests
    use it to check the bound deterministically)."""

    def __init__(
        self,
        cfg: ProjectConfig,
        client: redis.Redis | None = None,
        *,
        queue_limit: int = QUEUE_LIMIT,
        batch_max: int = BATCH_MAX,
        wake_s: float = WAKE_S,
        report: Callable[[PublisherReport], None] | None = None,
        start: bool = True,
    ) -> None:
        if not cfg.table.event_id:
            raise StreamConfigError(
                "streaming.publish_requests needs table.event_id in the config: the consumer applies an event "
                "once by its id"
            )
        if queue_limit < 1 or batch_max < 1:
            raise ValueError(f"queue_limit={queue_limit}, batch_max={batch_max}: both must be at least 1")
        self.event_id = cfg.table.event_id
        self.timestamp = cfg.table.timestamp
        self.integer_ids = integer_event_ids(cfg)
        self.url = broker_url(cfg)
        # No ensure_group: the consumer creates its group from id 0, so events published before it
        # exists are still read, and the publisher needs no broker at start-up.
        self.stream = EventStream(client or connect(self.url), stream_keys(cfg).events, cfg.streaming.group)
        self.queue_limit, self.batch_max, self.wake_s = queue_limit, batch_max, wake_s
        self._report = report
        self._queue: deque[_Queued] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._published = self._failures = self._dropped = 0
        self._lags: deque[float] = deque(maxlen=RECENT)
        self._reported = PublisherStats()
        self._reported_at = 0.0
        self._failing_since_log = 0
        self._logged_at = -math.inf
        self._outage_logged = False
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    def __repr__(self) -> str:
        return f"RequestPublisher({self.stream!r}, queued={len(self._queue)})"

    # ------------------------------------------------------------------ request path
    def submit(self, requests: Sequence[Mapping[str, Any]], scored: Sequence[HasRequestId]) -> int:
        """Queue scored requests for publishing; returns how many were queued (the rest were dropped:
        the queue was full). Never blocks on the broker and never raises for it."""
        if not requests:
            return 0
        now, enqueued = datetime.now(UTC), time.monotonic()
        with self._lock:
            room = max(self.queue_limit - len(self._queue), 0)
            taken = min(room, len(requests))
            for request, answer in itertools.islice(zip(requests, scored, strict=True), taken):
                self._queue.append(_Queued(request, answer.request_id, now, enqueued))
            self._dropped += len(requests) - taken
            full = len(self._queue) >= self.batch_max
        if full:
            self._wake.set()
        return taken

    # ------------------------------------------------------------------ figures
    def stats(self) -> PublisherStats:
        with self._lock:
            lags = np.fromiter(self._lags, float) if self._lags else None
            published, failures, dropped, depth = self._published, self._failures, self._dropped, len(self._queue)
        p50 = p99 = None
        if lags is not None:
            p50, p99 = (round(float(q), 3) for q in np.quantile(lags, [0.5, 0.99]))
        return PublisherStats(published, failures, dropped, depth, p50, p99)

    # ------------------------------------------------------------------ thread
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="mlcycle-request-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Publish what is queued if the broker answers (one attempt), then stop the thread. Waits at
        most about ``timeout`` (the service's shutdown must not hang on a dead broker); what is still
        queued then is lost, and was counted in ``queue_depth``."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> RequestPublisher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            if backoff:
                self._stop.wait(backoff)  # not woken by a full batch: a down broker is not hammered
            else:
                self._wake.wait(self.wake_s)
                self._wake.clear()
            try:
                backoff = self._drain(backoff)
                self._maybe_report()
            except Exception:  # a bug here must not end publishing for the life of the process
                log.exception("request publisher: unexpected error; continuing")
                backoff = RETRY_MAX_S
        if not backoff:  # last flush, unless the broker just failed
            try:
                self._drain(0.0)
            except Exception:
                log.exception("request publisher: unexpected error in the final flush")
        self._maybe_report(force=True)

    def _drain(self, backoff: float) -> float:
        """Publish queued events, a batch per round trip, until the queue is empty or the broker
        fails; returns the wait before the next attempt (0 after a success)."""
        while True:
            with self._lock:
                batch = list(itertools.islice(self._queue, self.batch_max))
            if not batch:
                return 0.0
            rows, unusable = self._encode(batch)
            try:
                self.stream.publish_many(rows)
            except (BrokerError, redis.RedisError, OSError) as exc:
                self._failed(exc)
                return min(RETRY_MAX_S, max(RETRY_MIN_S, backoff * 2))
            done = time.monotonic()
            self._recovered()  # before the counters move: whoever sees them published sees the message too
            with self._lock:
                # Only this thread removes, and submit only appends: the head is still this batch.
                for _ in batch:
                    self._queue.popleft()
                self._published += len(rows)
                self._dropped += unusable
                self._lags.extend((done - q.enqueued) * 1000 for q in batch)
            if len(batch) < self.batch_max:
                return 0.0

    def _encode(self, batch: Sequence[_Queued]) -> tuple[list[dict[str, str]], int]:
        """The batch's stream entries, and how many events could not be encoded (counted as dropped:
        a row that cannot become JSON would otherwise block the head of the queue for ever)."""
        rows: list[dict[str, str]] = []
        unusable = 0
        for queued in batch:
            try:
                rows.append(encode(self.row(queued.request, queued.request_id, queued.scored_at), SOURCE_API))
            except (TypeError, ValueError) as exc:
                unusable += 1
                log.error("request %s not published, its row is not JSON: %s", queued.request_id, exc)
        return rows, unusable

    def row(self, request: Mapping[str, Any], request_id: str, scored_at: datetime) -> dict[str, Any]:
        """The event a scored request becomes (see the module's docstring)."""
        row = {k: v for k, v in request.items() if k != TIMESTAMP_FIELD}
        if row.get(self.event_id) is None:
            row[self.event_id] = fallback_event_id(request_id, self.integer_ids)
        row[self.timestamp] = request.get(TIMESTAMP_FIELD) or scored_at
        return row

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            self._failures += 1
        self._failing_since_log += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:  # a flapping broker: still one message a minute
            log.warning(
                "could not publish scored requests (%d failed attempts since the last message; %d events queued, "
                "retrying): %s",
                self._failing_since_log, len(self._queue), redact(f"{type(exc).__name__}: {exc}"),
            )  # fmt: skip
            self._logged_at, self._failing_since_log, self._outage_logged = now, 0, True

    def _recovered(self) -> None:
        if self._outage_logged:
            log.warning("publishing scored requests again (broker at %s)", redact(self.url))
            self._outage_logged = False

    def _maybe_report(self, force: bool = False) -> None:
        if self._report is None:
            return
        now = time.monotonic()
        if not force and now - self._reported_at < REPORT_EVERY_S:
            return
        current = self.stats()
        if current == self._reported and not force:
            return
        before, self._reported, self._reported_at = self._reported, current, now
        try:
            self._report(
                PublisherReport(
                    published=current.published_total - before.published_total,
                    failures=current.publish_failures_total - before.publish_failures_total,
                    dropped=current.dropped_total - before.dropped_total,
                    queue_depth=current.queue_depth,
                    lag_ms_p50=current.lag_ms_p50,
                    lag_ms_p99=current.lag_ms_p99,
                )
            )
        except Exception:
            log.exception("request publisher: the metrics report failed")


# ---------------------------------------------------------------------- the consumer's figures
CONSUMER_COUNTERS = {
    "events_total": "Events the stream consumer read (since it started)",
    "applied_total": "Events applied to their entity's aggregates",
    "duplicates_total": "Events already applied (a redelivery or a replay): nothing changed",
    "dead_total": "Poison events moved to the dead-letter stream",
    "scored_total": "Events the consumer scored",
    "unscored_total": "Events left unscored (no model ready, store down); their features were applied",
}
CONSUMER_GAUGES = {
    "events_per_s": ("events_per_s", "Events read per second (recent)"),
    "lag": ("lag_events", "Entries in the stream not yet delivered to the consumer group"),
    "pending": ("pending_events", "Entries delivered and not yet acknowledged"),
    "freshness_ms_p50": ("freshness_p50_ms", "Event time to online write, median of recent events (ms)"),
    "freshness_ms_p99": ("freshness_p99_ms", "Event time to online write, p99 of recent events (ms)"),
    "scoring_ms_p50": ("scoring_p50_ms", "Consumer scoring time per event, median (ms)"),
    "scoring_ms_p99": ("scoring_p99_ms", "Consumer scoring time per event, p99 (ms)"),
    "updated_unix": ("updated_timestamp_seconds", "When the consumer last recorded its figures (unix time)"),
}
CONSUMER_PREFIX = "mlcycle_stream_consumer_"


def scrape_client(url: str) -> redis.Redis:
    """A client for reading figures at scrape time: sub-second timeouts, no retry (the next scrape is
    the retry). Not ``broker.connect``'s, whose retry exists for the consumer's and publisher's writes."""
    return redis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=SCRAPE_CONNECT_TIMEOUT_S,
        socket_timeout=SCRAPE_SOCKET_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )


class StreamFigures:
    """The stream consumer's figures as Prometheus text, for the service's ``/metrics``.

    Read at scrape time (``read_stats``: the consumer's hash, the group's lag and pending count) and
    reused for ``cache_s``, so a scrape every second costs the broker three commands, not one set per
    scraper. Nothing when the broker cannot be reached, when it holds no consumer figures and the
    service does not publish, or when the read fails: the rest of ``/metrics`` answers as always.

    Rendered with prometheus_client's metric families on a private registry, not the service's
    Gauges: those live in BentoML's multiprocess files, where a value once written cannot be made
    absent again, and a stale consumer figure would then look current."""

    def __init__(
        self, cfg: ProjectConfig, client: redis.Redis | None = None, *, publishing: bool | None = None,
        cache_s: float = SCRAPE_CACHE_S,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self.client = client or scrape_client(broker_url(cfg))
        self.publishing = cfg.streaming.publish_requests if publishing is None else publishing
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: tuple[float, str] | None = None

    def figures(self) -> dict[str, float]:
        """The consumer's figures as numbers ({} when there are none to show or the broker is away)."""
        try:
            raw = read_stats(self.cfg, self.client)
        except (BrokerError, redis.RedisError, OSError) as exc:
            log.debug("stream figures unavailable: %s", redact(str(exc)))
            return {}
        if "events_total" not in raw and not self.publishing:
            return {}  # no consumer has run against this broker, and this service does not publish
        out: dict[str, float] = {}
        for key, value in raw.items():
            if key in CONSUMER_COUNTERS or key in CONSUMER_GAUGES:
                try:
                    out[key] = float(value)
                except ValueError:  # "" (no group yet) or a consumer's name
                    continue
        return out

    def render(self) -> str:
        """Prometheus text exposition of ``figures()`` (cached), "" when there are none."""
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.cache_s:
                return self._cached[1]
            text = _exposition(self.figures())
            self._cached = (time.monotonic(), text)
            return text


def _exposition(figures: Mapping[str, float]) -> str:
    if not figures:
        return ""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

    families: list[Metric] = []
    for key, doc in CONSUMER_COUNTERS.items():
        if key in figures:
            family = CounterMetricFamily(CONSUMER_PREFIX + key.removesuffix("_total"), doc)
            family.add_metric([], figures[key])
            families.append(family)
    for key, (name, doc) in CONSUMER_GAUGES.items():
        if key in figures:
            families.append(GaugeMetricFamily(CONSUMER_PREFIX + name, doc, value=figures[key]))

    class Figures:
        def collect(self) -> Iterator[Metric]:
            return iter(families)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Figures())  # type: ignore[arg-type]
    return generate_latest(registry).decode("utf-8")
