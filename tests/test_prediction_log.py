"""The prediction log loses nothing it acknowledged: a record is in the journal before ``append``
returns, a killed writer's journal is recovered into parquet, and a live writer's is left alone."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlcycle.serving.prediction_log import JOURNAL_DIR, PredictionLog, read_predictions, recover


def records(n: int, start: int = 0) -> list[dict]:
    now = datetime.now(UTC)
    return [{"request_id": f"r{i}", "logged_at": now, "user_id": i, "merchant_id": 1, "score": i / (n + start),
             "decision": False, "shadow": False, "variant": "champion", "features": "{}"}
            for i in range(start, start + n)]  # fmt: skip


def test_closed_log_has_every_record_in_parquet_and_no_journal(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, flush_rows=300, flush_seconds=0.05)
    for i in range(0, 1000, 100):
        log.append(records(100, i))
    log.close()
    frame = read_predictions(tmp_path)
    assert sorted(frame["request_id"]) == sorted(f"r{i}" for i in range(1000))
    assert list((tmp_path / JOURNAL_DIR).iterdir()) == []


def test_records_of_a_killed_writer_are_recovered_and_a_live_writers_journal_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_prediction_log import records
        from mlcycle.serving.prediction_log import PredictionLog
        log = PredictionLog({str(tmp_path)!r}, flush_seconds=3600)
        log.append(records(500))
        print("acknowledged", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL and "acknowledged" in proc.stdout, proc.stderr[-2000:]
    assert not list(tmp_path.glob("date=*/*.parquet"))  # nothing reached parquet before the kill

    live = PredictionLog(tmp_path / "live", flush_seconds=3600)
    live.append(records(10, 1000))
    assert recover(tmp_path / "live") == 0  # its writer holds the lock
    assert read_predictions(tmp_path / "live").empty  # a reader leaves a live writer's journal alone

    # Monitoring reading after the service died unflushed: the reader recovers the journal first.
    with caplog.at_level(logging.WARNING, logger="mlcycle.prediction_log"):
        assert sorted(read_predictions(tmp_path)["request_id"]) == sorted(f"r{i}" for i in range(500))
    assert "recovered 500 records" in caplog.text
    assert recover(tmp_path) == 0  # once only
    live.close()
    assert len(read_predictions(tmp_path / "live")) == 10


def test_readers_never_take_a_live_writers_segments(tmp_path: Path) -> None:
    """Readers recovering dead writers' journals while a live writer rotates and flushes every few
    milliseconds: every record reaches parquet exactly once, and no read fails. (A segment unlocked
    before it was written and deleted was taken for a dead writer's: its records written twice.)"""
    log = PredictionLog(tmp_path, flush_seconds=0.002)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                recover(tmp_path)
            except BaseException as error:  # any failure is the finding
                errors.append(error)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(0, 2000, 10):
            log.append(records(10, i))
            time.sleep(0.001)
    finally:
        log.close()
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    ids = read_predictions(tmp_path)["request_id"]
    assert len(ids) == 2000 and set(ids) == {f"r{i}" for i in range(2000)}
    assert list((tmp_path / JOURNAL_DIR).iterdir()) == []


def test_a_batch_that_fails_to_write_stays_queued_and_is_written_once(tmp_path: Path, monkeypatch) -> None:
    """A disk error on three flushes in a row: the records stay in the journal (locked: the writer
    lives), the retries do not open a segment each, and the records go into parquet once, when the
    disk is back; the next segments' flush does not delete them."""
    from mlcycle.serving import prediction_log

    write_part = prediction_log._write_part
    failures: list[int] = []
    disk_back = threading.Event()

    def fail_until_back(directory: Path, frame, day: str) -> None:
        if not disk_back.is_set():
            failures.append(len(frame))
            raise OSError("no space left on device (simulated)")
        write_part(directory, frame, day)

    monkeypatch.setattr(prediction_log, "_write_part", fail_until_back)
    log = PredictionLog(tmp_path, flush_seconds=0.02)
    log.append(records(30))
    deadline = time.monotonic() + 30  # only a hang guard
    while len(failures) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert failures[:3] == [30, 30, 30]
    assert recover(tmp_path) == 0  # a live writer's journal, failed batch included: not a reader's
    assert len(list((tmp_path / JOURNAL_DIR).glob("*.jsonl"))) == 2  # the failed segment and the current one
    disk_back.set()
    log.append(records(20, 30))
    log.close()
    ids = read_predictions(tmp_path)["request_id"]
    assert sorted(ids) == sorted(f"r{i}" for i in range(50))
    assert list((tmp_path / JOURNAL_DIR).iterdir()) == []


@pytest.mark.slow
def test_service_killed_during_traffic_loses_no_acknowledged_prediction(
    training_project, prefect_server: str, tmp_path: Path
) -> None:
    """SIGKILL the whole ``bentoml serve`` process group while requests are in flight: every
    request_id that came back with a 200 is in the log once the next writer (or ``recover``) ran."""
    import threading

    import httpx
    import pandas as pd
    from fraud.traffic import request_body

    from conftest import clone_project
    from mlcycle.flows import load_flow
    from mlcycle.ops.service_process import ServiceProcess

    cfg = clone_project(training_project, tmp_path / "p")
    assert load_flow(cfg.root, "training", "train")(config=str(cfg.root / "mlcycle.yaml"))["alias"] == "champion"
    service = ServiceProcess(cfg)
    service.start()
    tx = pd.read_parquet(cfg.raw_dir / "transactions.parquet").tail(3000)
    acknowledged: list[str] = []
    stop = threading.Event()

    def send(rows: pd.DataFrame) -> None:
        with httpx.Client(base_url=service.url, trust_env=False, timeout=10) as client:
            for row in rows.itertuples(index=False):
                if stop.is_set():
                    return
                try:
                    r = client.post("/predict", json=request_body(row))
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acknowledged.append(r.json()["request_id"])

    threads = [threading.Thread(target=send, args=(part,)) for part in (tx.iloc[i::4] for i in range(4))]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acknowledged) < 300 and time.monotonic() < deadline:
            time.sleep(0.1)
        # Every process of the service, workers included (BentoML starts its worker in a process
        # group of its own): no shutdown hook runs, whatever was only queued in memory is gone.
        import psutil

        tree = [psutil.Process(service.proc.pid), *psutil.Process(service.proc.pid).children(recursive=True)]
        for proc in tree:
            proc.kill()
        psutil.wait_procs(tree, timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        service.stop()
    assert len(acknowledged) >= 300
    recover(cfg.predictions_dir)
    logged = set(read_predictions(cfg.predictions_dir)["request_id"])
    missing = [r for r in acknowledged if r not in logged]
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged predictions lost"
