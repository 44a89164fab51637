"""The promotion log's hash chain (issue 24, item 4): every row carries the hash of the one before, so
``verify`` (``mlcycle audit --verify``) names an edited, deleted, swapped or inserted row; appends from
threads and processes racing each other never fork the chain; a log an older mlcycle wrote is sealed
once. Against SQLite in a temporary directory and PostgreSQL at 127.0.0.1:5432 in a database this
module creates (``mlcycle_test_<random>``) and drops."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql
from typer.testing import CliRunner

from mlcycle import settings as scale
from mlcycle.cli.app import app
from mlcycle.project.config import load_config
from mlcycle.registry import aliases as registry
from mlcycle.registry import audit_chain as chain

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
TABLE = "mlcycle_promotion_log"


def _pg_unreachable() -> str | None:
    try:
        with psycopg.connect(f"{PG_SERVER}/postgres", connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_SERVER} unreachable: {exc}"


@pytest.fixture(params=["sqlite", "postgresql"])
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for one promotion log: a SQLite file, or a PostgreSQL database
    created here and dropped at teardown (FORCE closes the pools the test left open)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'promotions.db'}"
        return
    if reason := _pg_unreachable():
        pytest.skip(reason)
    name = f"mlcycle_test_{secrets.token_hex(4)}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        scale.forget_ensured()


def event(i: int, model: str = "m", who: str = "person:alice") -> registry.PromotionEvent:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i, microseconds=i)
    return registry.PromotionEvent(at, model, "champion", str(i) if i else None, str(i + 1), who, f"reason {i}")


def filled(uri: str, n: int) -> registry.PromotionLog:
    log = registry.PromotionLog(uri)
    for i in range(n):
        log.append(event(i, model="m" if i % 3 else "other"))
    return log


def execute(log: registry.PromotionLog, statement: str, **params: object) -> None:
    with log.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def test_an_untouched_log_of_50_appends_verifies(uri: str) -> None:
    log = filled(uri, 50)
    result = log.verify()
    rows = log.rows()
    assert (result.ok, result.checked, result.broken_id) == (True, 50, None)
    assert rows[0].prev_hash == chain.GENESIS
    assert all(b.prev_hash == a.row_hash for a, b in itertools.pairwise(rows))
    assert result.head == rows[-1].row_hash
    # What history returns is untouched by the chain (newest first, the event as appended).
    assert log.history("m", limit=1)[0] == event(49)
    # The hash is over the canonical content: recomputing it from the stored row gives it back.
    assert chain.row_hash(rows[7].content, rows[7].prev_hash) == rows[7].row_hash


def test_an_edited_reason_is_named(uri: str) -> None:
    log = filled(uri, 10)
    execute(log, f"UPDATE {TABLE} SET reason = 'approved by the board' WHERE id = 6")
    result = log.verify()
    assert (result.ok, result.broken_id, result.problem) == (False, 6, "edited")
    assert result.reason is not None and result.reason.startswith("row 6:")


def test_an_edited_timestamp_is_named(uri: str) -> None:
    log = filled(uri, 5)
    # As text, the way SQLAlchemy stores it in SQLite: a datetime parameter would go through sqlite3's
    # global adapters, which Feast's SQLite online store, once imported, sets to epoch integers.
    execute(log, f"UPDATE {TABLE} SET at = :at WHERE id = 3", at="2025-06-01 00:00:00.000000")
    assert (log.verify().broken_id, log.verify().problem) == (3, "edited")


def test_a_deleted_middle_row_is_detected(uri: str) -> None:
    log = filled(uri, 10)
    execute(log, f"DELETE FROM {TABLE} WHERE id = 5")
    result = log.verify()
    assert (result.ok, result.broken_id, result.problem) == (False, 6, "link")
    assert "row 4" in str(result.reason)


def test_a_deleted_first_row_is_detected(uri: str) -> None:
    log = filled(uri, 4)
    execute(log, f"DELETE FROM {TABLE} WHERE id = 1")
    assert (log.verify().broken_id, log.verify().problem) == (2, "link")


@pytest.mark.parametrize("with_hashes", [True, False], ids=["whole-rows", "content-only"])
def test_two_swapped_rows_are_detected(uri: str, with_hashes: bool) -> None:
    log = filled(uri, 8)
    columns = [*chain.CONTENT, *(["prev_hash", "row_hash"] if with_hashes else [])]
    table = log.table
    with log.engine.begin() as conn:
        a, b = (conn.execute(sa.select(table).where(table.c.id == i)).mappings().one() for i in (3, 4))
        conn.execute(table.update().where(table.c.id == 3).values({c: b[c] for c in columns}))
        conn.execute(table.update().where(table.c.id == 4).values({c: a[c] for c in columns}))
    result = log.verify()
    assert (result.ok, result.broken_id) == (False, 3)
    assert result.problem == ("link" if with_hashes else "edited")


def test_an_inserted_row_is_detected(uri: str) -> None:
    log = filled(uri, 6)
    # A copy of row 3, hashes and all, slipped in at the end: it does not link to row 6.
    columns = ", ".join([*chain.CONTENT, "prev_hash", "row_hash"])
    execute(log, f"INSERT INTO {TABLE} ({columns}) SELECT {columns} FROM {TABLE} WHERE id = 3")
    result = log.verify()
    assert (result.broken_id, result.problem) == (7, "link")


def test_a_row_written_around_the_chain_is_named_and_never_sealed(uri: str) -> None:
    log = filled(uri, 6)
    execute(
        log,
        f"INSERT INTO {TABLE} (at, model, alias, to_version, actor, reason, action) "
        "VALUES (:at, 'm', 'champion', '1', 'mallory', 'nobody saw', 'move')",
        at="2026-02-01 00:00:00.000000",  # text: see test_an_edited_timestamp_is_named
    )
    log.append(event(99))  # links past it, to row 6
    reopened = registry.PromotionLog(uri)  # the chain has started: the unhashed row stays unhashed
    result = reopened.verify()
    assert (result.broken_id, result.problem) == (7, "unhashed")
    assert [r.row_hash for r in reopened.rows()][6] is None


def _append_many(uri: str, who: str, n: int, start: threading.Event) -> None:
    log = registry.PromotionLog(uri)
    start.wait()
    for i in range(n):
        log.append(registry.PromotionEvent(datetime.now(UTC), "m", "champion", None, str(i), who, "race"))


def assert_one_unforked_chain(log: registry.PromotionLog, total: int) -> None:
    rows = log.rows()
    assert len(rows) == total
    assert len({r.prev_hash for r in rows}) == total  # no two rows link to the same previous one
    result = log.verify()
    assert (result.ok, result.checked) == (True, total), result.reason


def test_appends_from_racing_threads_never_fork_the_chain(uri: str) -> None:
    registry.PromotionLog(uri)  # the table exists before the race (creating it is not what is tested)
    start = threading.Event()
    threads = [threading.Thread(target=_append_many, args=(uri, f"t{k}", 15, start)) for k in range(6)]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join(timeout=120)
    assert_one_unforked_chain(registry.PromotionLog(uri), 6 * 15)


APPENDER = """
import os, sys, time
from datetime import UTC, datetime
from mlcycle.registry import aliases as registry
uri, go, who, n = sys.argv[1:]
log = registry.PromotionLog(uri)
while not os.path.exists(go):
    time.sleep(0.002)
for i in range(int(n)):
    log.append(registry.PromotionEvent(datetime.now(UTC), "m", "champion", None, str(i), who, "race"))
"""


def test_appends_from_racing_processes_never_fork_the_chain(uri: str, tmp_path: Path) -> None:
    registry.PromotionLog(uri)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", APPENDER, uri, str(go), f"p{k}", "30"], env=os.environ.copy())
        for k in range(3)
    ]
    go.touch()  # each process starts appending as soon as it has imported and opened the log
    for p in procs:
        assert p.wait(timeout=180) == 0
    assert_one_unforked_chain(registry.PromotionLog(uri), 3 * 30)


def old_log(uri: str, moves: list[tuple[str | None, str, str]], with_action: bool) -> None:
    """A promotion log as an older mlcycle wrote it: no hash columns (and maybe no ``action``)."""
    engine = sa.create_engine(uri)
    table = sa.Table(
        TABLE,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("from_version", sa.String(32)),
        sa.Column("to_version", sa.String(32)),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        *([sa.Column("action", sa.String(32))] if with_action else []),
    )
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        for i, (prev, to, why) in enumerate(moves, 1):
            conn.execute(table.insert().values(at=datetime(2026, 1, i), model="m", alias="champion",
                                               from_version=prev, to_version=to, actor="x", reason=why))  # fmt: skip
    engine.dispose()


@pytest.mark.parametrize("with_action", [False, True], ids=["before-action", "before-hashes"])
def test_a_log_from_before_the_chain_is_sealed_once_and_then_guarded(uri: str, with_action: bool) -> None:
    moves = [(None, "1", "first"), ("1", "2", "better"), ("2", "3", "better"), ("3", "2", "bad release")]
    old_log(uri, moves, with_action)
    log = registry.PromotionLog(uri)
    result = log.verify()
    assert (result.ok, result.checked) == (True, 5)  # 4 old rows + the seal row
    assert result.notes and "sealed 4 rows (ids 1-4)" in result.notes[0]
    # History and the rollback replay read the old rows as before; the seal row is not a move.
    assert [e.reason for e in log.history()] == ["bad release", "better", "better", "first"]
    assert registry.champion_lineage(log, "m") == ["1", "2"]
    log.append(event(10))
    registry.PromotionLog(uri)  # opening again seals nothing more
    assert (log.verify().ok, log.verify().checked, len(log.verify().notes)) == (True, 6, 1)
    execute(log, f"UPDATE {TABLE} SET reason = 'planned' WHERE id = 4")
    assert (log.verify().broken_id, log.verify().problem) == (4, "edited")


def test_threads_opening_an_old_log_at_once_seal_it_once(uri: str) -> None:
    old_log(uri, [(None, "1", "first"), ("1", "2", "second")], with_action=False)
    threads = [threading.Thread(target=registry.PromotionLog, args=(uri,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    result = registry.PromotionLog(uri).verify()
    assert (result.ok, result.checked, len(result.notes)) == (True, 3, 1)


def test_audit_cli_lists_the_rows_and_verifies_the_chain(tmp_path: Path) -> None:
    (tmp_path / "mlcycle.yaml").write_text("project: t\nmodel:\n  name: m\n")
    cfg = load_config(tmp_path / "mlcycle.yaml")
    log = registry.PromotionLog(cfg.promotion_log_uri)
    for i in range(3):
        log.append(event(i))
    config = ["--config", str(tmp_path / "mlcycle.yaml")]
    runner = CliRunner()

    listed = runner.invoke(app, ["audit", *config])
    assert listed.exit_code == 0, listed.output
    assert log.rows()[1].row_hash[:12] in listed.output and "reason 2" in listed.output
    as_json = runner.invoke(app, ["audit", "--json", *config])
    assert [r["id"] for r in json.loads(as_json.output)] == [1, 2, 3]
    one = runner.invoke(app, ["audit", "2", *config])  # a version's record (tests/test_governance.py) needs it
    assert one.exit_code == 1 and "m has no version 2" in one.output

    ok = runner.invoke(app, ["audit", "--verify", *config])
    assert ok.exit_code == 0 and "3 rows checked" in ok.output
    execute(log, f"UPDATE {TABLE} SET actor = 'person:mallory' WHERE id = 2")
    broken = runner.invoke(app, ["audit", "--verify", *config])
    assert broken.exit_code == 1
    assert "row 2" in broken.output and "edited" in broken.output
    report = runner.invoke(app, ["audit", "--verify", "--json", *config])
    assert report.exit_code == 1 and '"broken_row_id": 2' in report.output
