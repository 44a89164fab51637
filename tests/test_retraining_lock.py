"""Retraining is single-flight with a cooldown, and trusts no path from an event: unit level, on a
temporary project (the flows' end-to-end behaviour is in test_retraining.py / test_flow_faults.py)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from mlcycle.monitoring import retraining
from mlcycle.project.config import ProjectConfig, load_config

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def cfg(tmp_path: Path) -> ProjectConfig:
    (tmp_path / "mlcycle.yaml").write_text("project: t\nretraining:\n  cooldown_hours: 6\n")
    cfg = load_config(tmp_path / "mlcycle.yaml")
    cfg.monitoring_dir.mkdir(parents=True)
    return cfg


# ----------------------------------------------------------------------------- the event's path
def test_a_summary_under_the_monitoring_directory_is_accepted(cfg: ProjectConfig) -> None:
    summary = cfg.monitoring_dir / "20260101T000000" / "summary.json"
    summary.parent.mkdir()
    summary.write_text("{}")
    assert retraining.checked_summary_path(cfg, str(summary)) == str(summary.resolve())
    assert retraining.checked_summary_path(cfg, None) is None
    assert retraining.checked_summary_path(cfg, "{{ event.payload.summary_path }}") is None


def test_a_path_outside_the_monitoring_directory_is_refused(cfg: ProjectConfig, tmp_path: Path) -> None:
    """Issue 10, security: the flow read a path from an event payload and wrote a marker beside it."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (cfg.monitoring_dir / "link").symlink_to(outside)
    refused = [
        "/etc/passwd",
        "/etc/summary.json",
        str(cfg.monitoring_dir / ".." / ".." / "mlcycle.json"),
        str(cfg.monitoring_dir / "link" / "summary.json"),  # a symlink out of the directory
        str(cfg.monitoring_dir / "x" / "summary.txt"),
    ]
    for path in refused:
        with pytest.raises(ValueError, match="not a monitoring summary of this project"):
            retraining.checked_summary_path(cfg, path)
    assert not (outside / "retrain.claimed").exists() and not Path("/etc/retrain.claimed").exists()


# ----------------------------------------------------------------------------- single flight
def test_one_retraining_at_a_time_in_one_process(cfg: ProjectConfig) -> None:
    with retraining.single_flight(cfg) as first:
        assert first
        with retraining.single_flight(cfg) as second:
            assert not second
    with retraining.single_flight(cfg) as again:
        assert again  # released on exit


HOLD = textwrap.dedent(
    """
    import sys, time
    from mlcycle.monitoring import retraining
    from mlcycle.project.config import load_config
    with retraining.single_flight(load_config(sys.argv[1])) as held:
        print("held" if held else "busy", flush=True)
        sys.stdin.readline()
    """
)


def test_the_lock_holds_across_processes_and_dies_with_its_holder(cfg: ProjectConfig) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(cfg.root / "mlcycle.yaml")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with retraining.single_flight(cfg) as held:
            assert not held
    finally:
        holder.kill()  # a dead worker must not leave the lock behind
        holder.wait(30)
    with retraining.single_flight(cfg) as held:
        assert held


def _pg_reachable() -> bool:
    try:
        with psycopg.connect(f"{PG_SERVER}/postgres", connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.mark.skipif(not _pg_reachable(), reason=f"no PostgreSQL at {PG_SERVER}")
def test_profile_scale_uses_a_postgresql_advisory_lock(cfg: ProjectConfig, monkeypatch) -> None:
    """Two hosts share only the database: the lock is PostgreSQL's, held by a session, visible in
    pg_locks, and gone when the session ends."""
    monkeypatch.setenv("MLCYCLE_PG_URL", f"{PG_SERVER}/postgres")
    scale = cfg.model_copy(update={"profile": "scale", "model": cfg.model.model_copy(update={
        "name": f"lock-test-{secrets.token_hex(4)}"})})  # fmt: skip
    key = retraining.lock_key(scale.model.name)
    query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND classid = %s"
    parts = (key & 0xFFFFFFFF, (key >> 32) & 0xFFFFFFFF)  # bigint key: high half in classid, low in objid
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as other:
        with retraining.single_flight(scale) as held:
            assert held
            assert other.execute(query, parts).fetchone()[0] == 1
            # Another session (another host) cannot take it.
            assert other.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0] is False
            with retraining.single_flight(scale) as second:
                assert not second
        assert other.execute(query, parts).fetchone()[0] == 0
        assert other.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0] is True
        with retraining.single_flight(scale) as held:
            assert not held  # the other session holds it now
        other.execute("SELECT pg_advisory_unlock(%s)", (key,))


# ----------------------------------------------------------------------------- durable record
def test_the_cooldown_skips_a_retraining_within_it_with_a_reason(cfg: ProjectConfig) -> None:
    log = retraining.RetrainingLog(cfg.promotion_log_uri)
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert retraining.cooling_down(cfg, log, now) is None  # never trained
    log.append(cfg.model.name, "run-a", log.CLAIMED, "mlcycle.drift.detected", "/x/summary.json", at=now)
    assert retraining.cooling_down(cfg, log, now) is None  # claimed, not trained (e.g. refused by a person)
    log.append(cfg.model.name, "run-a", log.TRAINING, "mlcycle.drift.detected", at=now - timedelta(hours=2))
    why = retraining.cooling_down(cfg, log, now)
    assert why is not None and "run-a" in why and "cooldown_hours=6" in why and "2026-03-01 16:00:00" in why
    assert retraining.cooling_down(cfg, log, now + timedelta(hours=4, seconds=1)) is None
    # The record is durable: a new process (a new log object on the same database) sees it.
    assert retraining.cooling_down(cfg, retraining.RetrainingLog(cfg.promotion_log_uri), now) == why
    off = cfg.model_copy(update={"retraining": cfg.retraining.model_copy(update={"cooldown_hours": 0})})
    assert retraining.cooling_down(off, log, now) is None


def test_one_check_is_claimed_once(cfg: ProjectConfig) -> None:
    log = retraining.RetrainingLog(cfg.promotion_log_uri)
    assert log.claimed_by(cfg.model.name, "/m/1/summary.json") is None
    log.append(cfg.model.name, "run-a", log.CLAIMED, "mlcycle.drift.detected", "/m/1/summary.json")
    assert log.claimed_by(cfg.model.name, "/m/1/summary.json") == "run-a"
    assert log.claimed_by(cfg.model.name, "/m/2/summary.json") is None
    assert log.claimed_by("other-model", "/m/1/summary.json") is None


def test_the_lock_file_is_private(cfg: ProjectConfig) -> None:
    with retraining.single_flight(cfg):
        pass
    assert os.stat(cfg.data_path / "retraining.lock").st_mode & 0o077 == 0
