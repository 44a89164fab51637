"""``/predict`` as an event: the request publisher and the consumer's figures for ``/metrics``, on a
real broker (the local profile's redis-server, started once for the module, with a password so the
logs can be checked for it).

The publisher class is tested directly, not through ``bentoml serve``: the service tests start their
service in a module fixture of tests/test_serving.py (with a trained champion and a Prefect server),
which another module cannot reuse, and a second service would cost minutes of a shared machine for
what is a queue append in the service. No mocks, no timing thresholds: waits poll until a condition
holds, with a deadline that only guards against a hang. The lag test measures and prints; it
asserts nothing about time."""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from mlcycle.net import free_port
from mlcycle.project.config import ProjectConfig, load_config
from mlcycle.serving.scorer import Scored
from mlcycle.streaming.broker import LocalRedisServer, Message, connect
from mlcycle.streaming.consumer import open_stream, stream_keys
from mlcycle.streaming.events import SOURCE_API, EventSchema
from mlcycle.streaming.publisher import (
    PublisherReport,
    RequestPublisher,
    StreamFigures,
    fallback_event_id,
    scrape_client,
)

pytestmark = pytest.mark.timeout(120)

REPO_ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 30.0
_names = itertools.count()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {HANG_GUARD_S} s (hang guard): {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def password() -> str:
    return "pw-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, password: str) -> Iterator[LocalRedisServer]:
    with LocalRedisServer(tmp_path_factory.mktemp("broker"), password=password) as broker:
        yield broker


@pytest.fixture(scope="module")
def base_config() -> ProjectConfig:
    """The reference project's config (read only: its contract types the event id as int64)."""
    return load_config(REPO_ROOT / "mlcycle.yaml")


def project_on(base: ProjectConfig, port: int, *, publish: bool = True) -> ProjectConfig:
    """The project with a stream namespace of its own (each test its own keys), on ``port``."""
    streaming = base.streaming.model_copy(update={"local_port": port, "publish_requests": publish})
    return base.model_copy(update={"project": f"pubtest{next(_names)}", "profile": "local", "streaming": streaming})


@pytest.fixture
def cfg(base_config: ProjectConfig, server: LocalRedisServer) -> ProjectConfig:
    return project_on(base_config, server.port)


@pytest.fixture
def client(server: LocalRedisServer) -> Iterator[redis.Redis]:
    c = connect(server.url)
    yield c
    c.close()


def request(transaction_id: int | None = None, **extra: object) -> dict:
    """A request as the service's model dumps it (every field present, optional ones as None)."""
    return {"transaction_id": transaction_id, "user_id": 7, "merchant_id": 11, "amount": 42.5, "country": "US",
            "merchant_category": "grocery", "channel": None, "timestamp": None, **extra}  # fmt: skip


def answers(n: int) -> list[Scored]:
    return [Scored(0.1, False, "1", "champion", request_id=secrets.token_hex(16)) for _ in range(n)]


def entries(client: redis.Redis, cfg: ProjectConfig) -> list[Message]:
    raw = client.xrange(stream_keys(cfg).events, "-", "+")
    return [Message(i.decode(), {k.decode(): v.decode() for k, v in f.items()}, 1) for i, f in raw]


def test_publishes_each_request_as_an_api_event_the_consumer_accepts(cfg, client) -> None:
    sent_at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    requests = [request(1001), request(None, channel="pos"), request(1003, timestamp=sent_at)]
    scored = answers(3)
    scored[1].request_id = "1" + "0" * 30 + "5"  # the request without an event id: 2**124 + 5
    reports: list[PublisherReport] = []
    with RequestPublisher(cfg, client, report=reports.append) as publisher:
        before = datetime.now(UTC)
        assert publisher.submit(requests, scored) == 3
        wait_for(lambda: publisher.stats().published_total == 3, "3 requests published")
        stats = publisher.stats()
    after = datetime.now(UTC)
    assert (stats.dropped_total, stats.publish_failures_total, stats.queue_depth) == (0, 0, 0)
    assert stats.lag_ms_p50 is not None and stats.lag_ms_p99 is not None

    messages = entries(client, cfg)
    assert [m.fields["source"] for m in messages] == [SOURCE_API] * 3
    # What the consumer will make of them: no poison, the ids and times as documented.
    events, poison = EventSchema(cfg).decode(messages)
    assert poison == []
    # Its event id is its request id's 128 bits folded into [1, 2**63 - 1] (the project's ids are
    # int64), by hand: 2**63 = 1 (mod 2**63 - 1), so 2**124 + 5 = 2**61 + 5, and + 1 = 2**61 + 6.
    assert [e.event_id for e in events] == ["1001", "2305843009213693958", "1003"]
    assert all(e.source == SOURCE_API for e in events)
    assert before <= events[0].timestamp <= after  # no timestamp sent: the time it was scored
    assert events[2].timestamp == sent_at
    assert "timestamp" not in events[0].row  # the event time is in the table's column, not the request's
    for event, sent in zip(events, requests, strict=True):
        for key in ("user_id", "merchant_id", "amount", "country", "merchant_category", "channel"):
            assert event.row[key] == sent[key], key
    # The metrics sink saw every publish, as increments that add up to the totals.
    assert sum(r.published for r in reports) == 3
    assert reports[-1].queue_depth == 0


def test_a_text_event_id_falls_back_to_the_request_id_itself() -> None:
    rid = secrets.token_hex(16)
    assert fallback_event_id(rid, integer=False) == rid
    # Folded into [1, 2**63 - 1], worked by hand: 0x2a = 42 -> 43; 2**63 - 1 itself -> 0 + 1 = 1;
    # 2**128 - 1 = 3 (mod 2**63 - 1, as 2**63 = 1) -> 4.
    assert fallback_event_id("0" * 30 + "2a", integer=True) == 43
    assert fallback_event_id(f"{2**63 - 1:032x}", integer=True) == 1
    assert fallback_event_id("f" * 32, integer=True) == 4


def test_broker_down_submit_never_raises_failures_counted_then_published_after_restart(
    cfg, server: LocalRedisServer, password: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect(server.url)
    publisher = RequestPublisher(cfg, client)
    try:
        assert publisher.submit([request(1)], answers(1)) == 1
        wait_for(lambda: publisher.stats().published_total == 1, "published while the broker is up")
        server.stop()
        caplog.set_level(logging.WARNING, logger="mlcycle.streaming.publisher")
        # While the broker is down, submit is a queue append: it returns with the count queued and
        # raises nothing, whatever the background thread is going through.
        assert publisher.submit([request(2), request(3)], answers(2)) == 2
        wait_for(lambda: publisher.stats().publish_failures_total >= 3, "three failed attempts")
        assert publisher.submit([request(4)], answers(1)) == 1
        stats = publisher.stats()
        assert stats.published_total == 1
        assert stats.queue_depth == 3  # held for a retry, not lost
        failures = [r for r in caplog.records if "could not publish" in r.getMessage()]
        assert len(failures) == 1  # logged once a minute at most, not per attempt
        assert password not in caplog.text

        server.start()  # same port, same data: the same client reconnects by itself
        assert publisher.submit([request(5)], answers(1)) == 1
        wait_for(lambda: publisher.stats().published_total == 5, "everything published after the restart")
        assert publisher.stats().queue_depth == 0
        assert any("publishing scored requests again" in r.getMessage() for r in caplog.records)
        assert password not in caplog.text
    finally:
        if not server.running:
            server.start()
        publisher.stop()
        client.close()
    reader = connect(server.url)
    try:
        ids = [EventSchema(cfg).decode(entries(reader, cfg))[0][i].event_id for i in range(5)]
    finally:
        reader.close()
    assert ids == ["1", "2", "3", "4", "5"]  # in order, each once (the AOF kept the first)


def test_a_full_queue_drops_the_newest_and_counts_them(cfg, client) -> None:
    publisher = RequestPublisher(cfg, client, queue_limit=10, batch_max=4, start=False)
    assert publisher.submit([request(i) for i in range(1, 8)], answers(7)) == 7
    assert publisher.submit([request(i) for i in range(8, 16)], answers(8)) == 3
    assert publisher.submit([request(16)], answers(1)) == 0
    stats = publisher.stats()
    assert (stats.queue_depth, stats.dropped_total, stats.published_total) == (10, 6, 0)
    publisher.start()
    try:
        wait_for(lambda: publisher.stats().published_total == 10, "the queued ten published")
    finally:
        publisher.stop()
    events, poison = EventSchema(cfg).decode(entries(client, cfg))
    assert poison == []
    assert [e.event_id for e in events] == [str(i) for i in range(1, 11)]  # the oldest kept, in order


def test_publish_lag_measured(cfg, client, record_property) -> None:
    """Hand-off to the entry being readable from the stream, one request at a time on an idle
    publisher (what a single caller sees); printed, not asserted (the machine is shared)."""
    key = stream_keys(cfg).events
    lags_ms: list[float] = []
    last = "0-0"
    with RequestPublisher(cfg, client) as publisher:
        for i in range(1, 101):
            started = time.perf_counter()
            publisher.submit([request(i)], answers(1))
            deadline = time.monotonic() + HANG_GUARD_S
            reply = None
            while not reply and time.monotonic() < deadline:  # each block stays under the socket timeout
                reply = client.xread({key: last}, count=1, block=1000)
            lags_ms.append((time.perf_counter() - started) * 1000)
            assert reply, "no entry within the hang guard"
            last = reply[0][1][-1][0]
    internal = publisher.stats()  # after stop: the thread counts a batch just after its round trip
    p50, p99 = np.quantile(lags_ms, [0.5, 0.99])
    record_property("publish_lag_ms_p50", round(float(p50), 2))
    record_property("publish_lag_ms_p99", round(float(p99), 2))
    print(f"\npublish lag, submit to readable: p50 {p50:.1f} ms, p99 {p99:.1f} ms (100 requests); "
          f"publisher's own lag_ms p50 {internal.lag_ms_p50} p99 {internal.lag_ms_p99}")  # fmt: skip
    assert internal.published_total == 100


# ---------------------------------------------------------------------- the consumer's figures
def test_consumer_figures_are_prometheus_text_read_at_scrape_time(cfg, client, server) -> None:
    open_stream(cfg, client)  # the group, as the consumer creates it
    stats = {"events_total": "42", "applied_total": "40", "duplicates_total": "1", "dead_total": "1",
             "scored_total": "30", "unscored_total": "0", "events_per_s": "12.5", "freshness_ms_p50": "8.0",
             "freshness_ms_p99": "30.5", "scoring_ms_p50": "1.2", "scoring_ms_p99": "4.0",
             "updated_unix": "1700000000.5", "consumer": "host-1"}  # fmt: skip
    client.hset(stream_keys(cfg).stats, mapping=stats)
    client.xadd(stream_keys(cfg).events, {"event": "{}", "source": "stream"})  # one entry not yet read
    figures = StreamFigures(cfg, scrape_client(server.url), cache_s=3600.0)
    text = figures.render()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["mlcycle_stream_consumer_events_total"] == 42
    assert samples["mlcycle_stream_consumer_dead_total"] == 1
    assert samples["mlcycle_stream_consumer_events_per_s"] == 12.5
    assert samples["mlcycle_stream_consumer_freshness_p99_ms"] == 30.5
    assert samples["mlcycle_stream_consumer_scoring_p50_ms"] == 1.2
    assert samples["mlcycle_stream_consumer_lag_events"] == 1
    assert samples["mlcycle_stream_consumer_pending_events"] == 0
    assert samples["mlcycle_stream_consumer_updated_timestamp_seconds"] == 1700000000.5
    # Cached: a scrape within cache_s does not read the broker again.
    client.hset(stream_keys(cfg).stats, "events_total", "43")
    assert figures.render() == text
    assert "43" in StreamFigures(cfg, scrape_client(server.url)).render()


def test_no_consumer_figures_without_a_consumer_or_a_broker(base_config, server) -> None:
    # A broker with no consumer figures, and a service that does not publish: nothing to show.
    scraper = scrape_client(server.url)  # the test broker has a password; the local profile's has none
    assert StreamFigures(project_on(base_config, server.port, publish=False), scraper).render() == ""
    # A publishing service shows the group's lag once the group exists, consumer or not.
    publishing = project_on(base_config, server.port)
    open_stream(publishing, scraper)
    assert "mlcycle_stream_consumer_lag_events 0.0" in StreamFigures(publishing, scraper).render()
    # Wrong credentials read as an unreachable broker: absent.
    assert StreamFigures(publishing).render() == ""
    # No broker at all: absent, and no error for the scrape.
    nowhere = project_on(base_config, free_port())
    assert StreamFigures(nowhere).render() == ""


def test_submit_with_an_unreachable_broker_is_counted_not_raised(base_config) -> None:
    """A broker that was never there (the service started with publishing on and no broker)."""
    cfg = project_on(base_config, free_port())
    with RequestPublisher(cfg) as publisher:
        assert publisher.submit([request(1)], answers(1)) == 1
        wait_for(lambda: publisher.stats().publish_failures_total >= 1, "a failed attempt")
        assert publisher.stats().queue_depth == 1
