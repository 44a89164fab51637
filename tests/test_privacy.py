"""PII declared once (``privacy:``), enforced at every sink's write point (mlcycle.data.privacy).

The HMAC values are worked out here with ``hmac``/``hashlib`` (an oracle independent of the module);
the end-to-end test trains, serves and monitors a project that hashes ``user_id`` and reads back
every file and database the project wrote for a clear id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from mlcycle.data import privacy
from mlcycle.project.config import PrivacySpec, load_config

KEY_HEX = "0f" * 32
TEXT_KEY = "correct horse battery staple"


def oracle(value: str, key: bytes) -> str:
    return "hmac:" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def policy(**columns) -> PrivacySpec:
    return PrivacySpec.model_validate({"columns": columns})


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setenv(privacy.KEY_ENV, KEY_HEX)
    return bytes.fromhex(KEY_HEX)


# ----------------------------------------------------------------------------- the policy
def test_hash_is_keyed_hmac_sha256_of_the_values_text(key: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = pd.DataFrame({"user_id": [17, 17, 4, None], "email": ["a@x.org", "b@y.org", None, "a@x.org"]})
    out = privacy.redact(frame, policy(user_id={"pii": "direct"}, email={"pii": "direct"}), "prediction_log")
    # 17 as int, and the float 17.0 the null turned the column into, are the same text "17": joins hold.
    assert list(out["user_id"]) == [oracle("17", key), oracle("17", key), oracle("4", key), None]
    assert list(out["email"]) == [oracle("a@x.org", key), oracle("b@y.org", key), None, oracle("a@x.org", key)]
    assert frame["email"].iloc[0] == "a@x.org"  # the caller's frame is left as it was
    # Idempotent: a token is not hashed again (monitoring reads what the log already hashed).
    again = privacy.redact(out, policy(user_id={"pii": "direct"}, email={"pii": "direct"}), "monitoring")
    assert again["email"].tolist() == out["email"].tolist()
    # A date hashes as its ISO text, from a frame's column as from one value.
    dates = privacy.redact(
        pd.DataFrame({"d": pd.to_datetime(["2020-01-02"])}), policy(d={"pii": "direct"}), "monitoring"
    )
    assert dates["d"].iloc[0] == oracle("2020-01-02T00:00:00", key)
    # A key that is not hex is used as its text.
    monkeypatch.setenv(privacy.KEY_ENV, TEXT_KEY)
    text = privacy.redact(frame, policy(email={"pii": "direct"}), "training_snapshot")
    assert text["email"].iloc[1] == oracle("b@y.org", TEXT_KEY.encode())


def test_per_sink_keep_drop_coarsen(key: bytes) -> None:
    rules = policy(
        email={"pii": "direct", "training_snapshot": "keep", "monitoring": "drop"},
        age={"pii": "quasi", "action": "coarsen", "bands": [0, 18, 30, 65]},
        born={"pii": "quasi", "action": "coarsen", "unit": "month"},
        note={"pii": "direct", "action": "drop"},
    )
    frame = pd.DataFrame(
        {
            "email": ["a@x.org"],
            "age": [29.5],
            "born": pd.to_datetime(["1987-03-14"]),
            "note": ["call me"],
            "amount": [3.0],
        }
    )
    logged = privacy.redact(frame, rules, "prediction_log")
    assert logged.to_dict("records") == [
        {"email": oracle("a@x.org", key), "age": "18-30", "born": "1987-03", "amount": 3.0}
    ]
    assert privacy.redact(frame, rules, "training_snapshot")["email"].iloc[0] == "a@x.org"
    assert "email" not in privacy.redact(frame, rules, "monitoring")
    assert privacy.coarsen_value(-1, rules.columns["age"]) == "<0"
    assert privacy.coarsen_value(70, rules.columns["age"]) == ">=65"
    assert privacy.coarsen_value("18-30", rules.columns["age"]) == "18-30"  # coarse already
    # The event log is the table's continuation: only a rule of its own (or the column's) applies.
    assert privacy.redact(frame, rules, "event_log")["email"].iloc[0] == "a@x.org"
    assert "note" not in privacy.redact(frame, rules, "event_log")
    # Records (a request's JSON) follow the same rules.
    text = privacy.redact_json(json.dumps({"email": "a@x.org", "age": 70, "x": 1}), rules, "prediction_log")
    assert json.loads(text) == {"email": oracle("a@x.org", key), "age": ">=65", "x": 1}


def test_nothing_declared_changes_nothing() -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "mlcycle.yaml")
    assert cfg.privacy == PrivacySpec() and cfg.privacy.capture.rate == 1.0
    frame = pd.DataFrame({"user_id": [1, 2]})
    assert privacy.redact(frame, cfg.privacy, "prediction_log") is frame


def test_config_refuses_coarsen_without_bands_and_bad_rates() -> None:
    with pytest.raises(ValueError, match="coarsen needs bands"):
        policy(age={"pii": "quasi", "action": "coarsen"})
    with pytest.raises(ValueError, match="coarsened but has no bands"):
        PrivacySpec.model_validate({"columns": {"age": {"pii": "quasi"}}, "defaults": {"quasi": "coarsen"}})
    with pytest.raises(ValueError):
        PrivacySpec.model_validate({"capture": {"rate": 0}})
    with pytest.raises(ValueError, match="Extra inputs"):
        policy(age={"pii": "quasi", "prediction_logg": "drop"})


def test_capture_sampling_is_deterministic_and_keeps_shadow_pairs() -> None:
    ids = [f"req-{i}" for i in range(4000)]
    kept = [i for i in ids if privacy.sampled(i, 0.25)]
    assert 0.22 < len(kept) / len(ids) < 0.28
    assert kept == [i for i in ids if privacy.sampled(i, 0.25)]
    assert all(privacy.sampled(i + "-shadow", 0.25, "-shadow") for i in kept)
    assert all(privacy.sampled(i, 1.0) for i in ids)


# ----------------------------------------------------------------------------- a missing key
def test_a_missing_key_refuses_every_writer_and_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import copy_project
    from mlcycle.data import event_log
    from mlcycle.registry.tracking import write_snapshot
    from mlcycle.serving.prediction_store import open_prediction_log

    monkeypatch.delenv(privacy.KEY_ENV, raising=False)
    cfg = copy_project(tmp_path / "p", sections={"privacy": {"columns": {"user_id": {"pii": "direct"}}}})
    with pytest.raises(privacy.MissingKey) as refused:
        open_prediction_log(cfg)
    message = str(refused.value)
    assert "MLCYCLE_PII_KEY" in message and "secrets.token_hex(32)" in message and "user_id" in message
    assert not cfg.predictions_dir.exists() or not any(cfg.predictions_dir.rglob("*.*"))
    with pytest.raises(privacy.MissingKey):
        write_snapshot(pd.DataFrame({"user_id": [5], "x": [1.0]}), tmp_path, cfg.privacy)
    assert not (tmp_path / "training_set.parquet").exists()
    # The event log keeps entity keys (the next feature build joins on them), so no key is needed
    # there; a rule that would hash one is refused with its fix.
    event_log.check_privacy(cfg)
    hashing_a_key = {"columns": {"user_id": {"pii": "direct", "event_log": "hash"}}}
    bad = copy_project(tmp_path / "q", sections={"privacy": hashing_a_key})
    monkeypatch.setenv(privacy.KEY_ENV, KEY_HEX)
    with pytest.raises(ValueError, match="event_log: keep"):
        event_log.check_privacy(bad)


def test_the_prediction_log_journal_and_parquet_hold_tokens_only(
    tmp_path: Path, key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import copy_project
    from mlcycle.features.pipeline import labels_frame
    from mlcycle.serving.prediction_log import read_predictions
    from mlcycle.serving.prediction_store import RedactingWriter, open_prediction_log

    sections = {"privacy": {"columns": {"user_id": {"pii": "direct"}, "transaction_id": {"pii": "direct"},
                                        "country": {"pii": "quasi", "prediction_log": "drop"}},
                            "capture": {"rate": 0.5}}}  # fmt: skip
    cfg = copy_project(tmp_path / "p", sections=sections)
    writer = open_prediction_log(cfg, flush_seconds=0.05)
    assert isinstance(writer, RedactingWriter)
    records = [
        {"request_id": f"r{i}", "logged_at": pd.Timestamp.now(tz="UTC"), "event_id": str(9000 + i),
         "entities": json.dumps({"user_id": 4242 + i, "merchant_id": 7}),
         "request": json.dumps({"user_id": 4242 + i, "country": "ZZ", "amount": 1.5}),
         "features": json.dumps({"amount_sum_1h": 3.0}), "score": 0.1, "shadow": False}
        for i in range(200)
    ]  # fmt: skip
    writer.append(records)
    writer.close()
    frame = read_predictions(cfg.predictions_dir)
    expected = [r["request_id"] for r in records if privacy.sampled(r["request_id"], 0.5)]
    assert sorted(frame["request_id"]) == sorted(expected) and 70 < len(expected) < 130
    for row in frame.itertuples():
        i = int(row.request_id[1:])
        assert json.loads(row.entities) == {"user_id": oracle(str(4242 + i), key), "merchant_id": 7}
        assert json.loads(row.request) == {"user_id": oracle(str(4242 + i), key), "amount": 1.5}
        assert row.event_id == oracle(str(9000 + i), key)
    # No clear id anywhere under the log's directory (journal included).
    for path in cfg.predictions_dir.rglob("*"):
        if path.is_file():
            blob = _text_of(path)
            assert '"ZZ"' not in blob and not re.search(r'"user_id": ?4\d{3}\b', blob), path
    # Labels join the hashed event ids: monitoring's and the canary's join still finds its rows.
    table = pd.DataFrame({"transaction_id": [9001], "event_timestamp": [pd.Timestamp("2026-01-01", tz="UTC")],
                          "is_fraud": [1], "label_available_at": [pd.Timestamp("2026-01-02", tz="UTC")]})  # fmt: skip
    assert labels_frame(table, cfg)["event_id"].iloc[0] == oracle("9001", key)


# ----------------------------------------------------------------------------- init's proposals
def test_init_proposes_pii_for_ids_emails_phones_names_birth_dates_and_free_text() -> None:
    from mlcycle.project.pii_inference import propose_pii

    rng = np.random.default_rng(3)
    n = 300
    frame = pd.DataFrame(
        {
            "customer_id": rng.integers(1, 50, n),
            "contact": [f"person{i}@example.org" for i in range(n)],
            "contact_number": [f"+44 20 7946 {i:04d}" for i in range(n)],
            "full_name": [f"Ada Lovelace {i}" for i in range(n)],
            "dob": pd.to_datetime("1950-01-01") + pd.to_timedelta(rng.integers(0, 18000, n), unit="D"),
            "complaint": [f"the parcel {i} arrived late and the box was open when it came" for i in range(n)],
            "age": rng.integers(18, 90, n),
            "amount": rng.random(n),
            "ts": pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC"),
        }
    )
    roles = {"customer_id": "entity", "ts": "timestamp"}
    found = propose_pii(frame, roles, now=pd.Timestamp("2025-01-01", tz="UTC"))
    assert found["contact"] == {"pii": "direct", "why": "values are e-mail addresses"}
    assert found["contact_number"]["why"] == "values are phone numbers"
    assert found["full_name"]["pii"] == "direct"
    assert found["dob"] == {"pii": "quasi", "action": "coarsen", "unit": "year", "why": "an exact date of birth"}
    assert found["complaint"]["action"] == "drop"
    assert found["age"]["bands"] == [0, 18, 30, 45, 65, 120]
    assert found["customer_id"]["why"] == "an entity key"
    assert "amount" not in found and "ts" not in found
    # What init writes (commented out) is a valid privacy section once uncommented.
    PrivacySpec.model_validate({"columns": {c: {k: v for k, v in p.items() if k != "why"} for c, p in found.items()}})


def test_init_writes_the_proposals_commented_out(tmp_path: Path) -> None:
    from mlcycle.project.scaffold import init_project

    rng = np.random.default_rng(5)
    n = 600
    table = pd.DataFrame(
        {
            "customer_id": rng.integers(1, 40, n),
            "email": [f"c{i % 40}@example.org" for i in range(n)],
            "ts": pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.sort(rng.choice(86400 * 60, n)), "s"),
            "spend": rng.random(n) * 100,
            "churned": (rng.random(n) < 0.2).astype("int64"),
        }
    )
    path = tmp_path / "t.parquet"
    table.to_parquet(path, index=False)
    init_project(tmp_path / "proj", path, timestamp="ts", label="churned", entities=["customer_id"],
                 label_delay="7d")  # fmt: skip
    text = (tmp_path / "proj" / "mlcycle.yaml").read_text()
    assert "# privacy:" in text and load_config(tmp_path / "proj" / "mlcycle.yaml").privacy == PrivacySpec()
    block = text[text.index("# privacy:") :]
    uncommented = yaml.safe_load("\n".join(line[2:].split("  #")[0] for line in block.splitlines()))
    spec = PrivacySpec.model_validate(uncommented["privacy"])
    assert spec.columns["email"].pii == "direct" and spec.columns["customer_id"].pii == "direct"


# ----------------------------------------------------------------------------- end to end
def _text_of(path: Path) -> str:
    """A file's content as text: parquet decoded (every cell), SQLite dumped, other bytes as UTF-8."""
    if path.suffix == ".parquet" or path.name.endswith(".parquet.tmp"):
        table = pq.read_table(path)
        return json.dumps(table.to_pylist(), default=str)
    head = path.read_bytes()[:16]
    if head.startswith(b"SQLite format 3"):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return "\n".join(db.iterdump())
    return path.read_bytes().decode("utf-8", "replace")


@pytest.mark.slow
def test_hashed_ids_appear_in_no_file_or_table_mlcycle_wrote(
    training_project, prefect_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx
    from fraud.traffic import request_body

    from conftest import clone_project
    from mlcycle.flows import load_flow
    from mlcycle.monitoring import job
    from mlcycle.ops.service_process import ServiceProcess
    from mlcycle.registry import tracking
    from mlcycle.serving.prediction_store import read_logged_predictions

    monkeypatch.setenv(privacy.KEY_ENV, KEY_HEX)
    key = bytes.fromhex(KEY_HEX)
    cfg = clone_project(training_project, tmp_path / "p", {"privacy": {"columns": {"user_id": {"pii": "direct"}}}})
    # The inputs (the table, feature tables, Feast stores): what mlcycle reads to serve, keyed by the ids.
    before = {p: p.stat().st_mtime_ns for p in cfg.data_path.rglob("*") if p.is_file()}

    # Without the key the service does not start, and says how to make one; nothing is logged.
    keyless = ServiceProcess(cfg, env={"MLCYCLE_WORKERS": "1", privacy.KEY_ENV: ""})
    outcome: list[BaseException | None] = []

    def start() -> None:
        try:
            keyless.start(timeout=120, ready=False)
            outcome.append(None)
        except (RuntimeError, TimeoutError) as exc:
            outcome.append(exc)

    starting = threading.Thread(target=start, daemon=True)
    starting.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and starting.is_alive() and "MLCYCLE_PII_KEY" not in keyless.log_tail(400):
        time.sleep(0.5)
    keyless.stop()  # BentoML keeps its server up while the worker fails: stopped once it said why
    starting.join(30)
    assert outcome != [None], "the service started without the key"
    assert "MLCYCLE_PII_KEY" in keyless.log_tail(400)
    assert not cfg.predictions_dir.exists() or not any(cfg.predictions_dir.rglob("*.parquet"))

    trained = load_flow(cfg.root, "training", "train")(config=str(cfg.root / "mlcycle.yaml"))
    assert trained["alias"] == "champion", trained

    tx = pd.read_parquet(cfg.raw_dir / "transactions.parquet")
    at = (tx["event_timestamp"].max() + pd.Timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    sample = tx.drop_duplicates("user_id").sample(40, random_state=11)
    bodies = [{"request": {**request_body(r)["request"], "timestamp": at}} for _, r in sample.iterrows()]
    sent = {int(b["request"]["user_id"]) for b in bodies}
    service = ServiceProcess(cfg, env={"MLCYCLE_WORKERS": "1", privacy.KEY_ENV: KEY_HEX})
    service.start()
    try:
        with httpx.Client(base_url=service.url, trust_env=False, timeout=30) as client:
            for body in bodies:
                assert client.post("/predict", json=body).status_code == 200
    finally:
        service.stop()

    logged = read_logged_predictions(cfg)
    assert len(logged) == len(bodies)
    assert set(logged["user_id"]) == {oracle(str(u), key) for u in sent}  # joins by id still work
    result = job.run_check(cfg, window_days=3650)
    assert result.sampled == 1.0
    job.write_reports(cfg, result)
    # Reproduce trains from the snapshot with hashed ids (they are no model input) to the same model.
    reproduced = tracking.reproduce(cfg, "1")
    assert reproduced.data_hash_matches and reproduced.identical

    snapshots = list(cfg.data_path.rglob("training_set.parquet"))
    assert snapshots and all(
        pq.read_table(s, columns=["user_id"]).column(0).to_pylist()[0].startswith("hmac:") for s in snapshots
    )
    written = [p for p in cfg.data_path.rglob("*") if p.is_file() and before.get(p) != p.stat().st_mtime_ns]
    assert any("predictions" in p.parts for p in written) and any("monitoring" in p.parts for p in written)
    clear = re.compile(r"user_id\W{1,4}(" + "|".join(str(u) for u in sorted(sent)) + r")\b")
    # The detector finds clear ids where they are: the input table mlcycle reads (decoded the same way).
    assert clear.search(_text_of(cfg.raw_dir / "transactions.parquet"))
    leaks = {}
    for path in written:
        text = _text_of(path)
        if (m := clear.search(text)) is not None:
            leaks[str(path.relative_to(cfg.root))] = text[max(0, m.start() - 80) : m.end() + 80]
        # A parquet column user_id holds tokens only.
        if path.suffix == ".parquet" and "user_id" in pq.read_schema(path).names:
            values = pq.read_table(path, columns=["user_id"]).column(0).to_pylist()
            assert all(v is None or str(v).startswith("hmac:") for v in values), path
    assert not leaks, leaks
