"""Rollback walks the champion history backwards, and the canary's status window: unit level, on a
local SQLite MLflow registry and promotion log in a temporary directory (no servers)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from mlcycle.cli.app import app
from mlcycle.project.config import ProjectConfig, load_config
from mlcycle.registry import aliases as registry
from mlcycle.serving import rollout
from mlcycle.serving.prediction_log import COLUMNS, write_frame


@pytest.fixture
def project(tmp_path: Path) -> tuple[ProjectConfig, object, registry.PromotionLog]:
    """A project with versions 1–4 registered (no models behind them: only aliases are exercised)."""
    (tmp_path / "mlcycle.yaml").write_text("project: t\nmodel:\n  name: m\n")
    cfg = load_config(tmp_path / "mlcycle.yaml")
    client = registry.client_for(cfg)
    client.create_registered_model(cfg.model.name)
    (tmp_path / "artifact").mkdir()
    for _ in range(4):
        client.create_model_version(cfg.model.name, str(tmp_path / "artifact"), run_id=None)
    return cfg, client, registry.PromotionLog(cfg.promotion_log_uri)


def champion(cfg: ProjectConfig, client) -> str | None:
    mv = registry.version_by_alias(client, cfg.model.name, registry.CHAMPION)
    return str(mv.version) if mv else None


def test_two_rollbacks_walk_back_to_v1_and_a_third_says_there_is_nothing_left(project) -> None:
    """Issue 10, item 3: v1 → v2 → v3; rollback → v2; rollback → v1 (it went back to v3 before);
    a third rollback changes nothing and says why."""
    cfg, client, log = project
    for version in ("1", "2", "3"):
        registry.promote(client, log, cfg.model.name, version, f"promote v{version}")
    rollout.rollback(client, log, cfg.model.name, "v3 misbehaves")
    assert champion(cfg, client) == "2"
    rollout.rollback(client, log, cfg.model.name, "v2 misbehaves too")
    assert champion(cfg, client) == "1"
    rows = len(log.history(cfg.model.name))
    with pytest.raises(rollout.NothingToRollBack, match="nothing to roll back to"):
        rollout.rollback(client, log, cfg.model.name, "and v1?")
    assert champion(cfg, client) == "1" and len(log.history(cfg.model.name)) == rows  # nothing changed
    moves = [(e.from_version, e.to_version, e.action) for e in log.history(cfg.model.name) if e.alias == "champion"]
    assert moves[:2] == [("2", "1", "rollback"), ("3", "2", "rollback")]


def test_a_promotion_after_a_rollback_is_rolled_back_to_the_champion_before_it(project) -> None:
    cfg, client, log = project
    for version in ("1", "2", "3"):
        registry.promote(client, log, cfg.model.name, version, "promote")
    rollout.rollback(client, log, cfg.model.name, "v3 bad")  # → v2
    registry.promote(client, log, cfg.model.name, "4", "promote v4")
    assert registry.champion_lineage(log, cfg.model.name) == ["1", "2", "4"]
    rollout.rollback(client, log, cfg.model.name, "v4 bad")
    assert champion(cfg, client) == "2"
    rollout.rollback(client, log, cfg.model.name, "v2 bad")
    assert champion(cfg, client) == "1"


def test_rollback_clears_the_challenger_and_stops_the_canary(project) -> None:
    """docs/operations.md: traffic to champion-only, challenger cleared (a canary of it aborts)."""
    cfg, client, log = project
    registry.promote(client, log, cfg.model.name, "1", "first")
    registry.promote(client, log, cfg.model.name, "2", "second")
    registry.move_alias(client, log, cfg.model.name, registry.CHALLENGER, "3", "retrained")
    rollout.write_policy(client, log, cfg.model.name, rollout.RolloutPolicy(mode="canary", percent=25), "canary")
    events = rollout.rollback(client, log, cfg.model.name, "incident", who="person:alice")
    assert champion(cfg, client) == "1"
    assert registry.version_by_alias(client, cfg.model.name, registry.CHALLENGER) is None
    assert rollout.read_policy(client, cfg.model.name).mode == "champion-only"
    assert [(e.alias, e.to_version, e.actor) for e in events] == [
        ("champion", "1", "person:alice"),
        ("challenger", None, "person:alice"),
    ]


def test_a_champion_moved_outside_the_log_is_not_guessed(project) -> None:
    cfg, client, log = project
    registry.promote(client, log, cfg.model.name, "1", "first")
    registry.promote(client, log, cfg.model.name, "2", "second")
    client.set_registered_model_alias(cfg.model.name, registry.CHAMPION, "4")  # by hand, in MLflow
    with pytest.raises(rollout.NothingToRollBack, match="moved outside mlcycle"):
        rollout.rollback(client, log, cfg.model.name, "?")
    assert champion(cfg, client) == "4"


def test_cli_rollback_records_who_and_exits_non_zero_when_nothing_is_left(project, monkeypatch) -> None:
    """The principal is who runs the command (no typed name); with roles declared, only an approver
    or an operator rolls back, and a refusal moves nothing and is on the record."""
    cfg, client, log = project
    registry.promote(client, log, cfg.model.name, "1", "first")
    registry.promote(client, log, cfg.model.name, "2", "second")
    config = ["--config", str(cfg.root / "mlcycle.yaml")]
    monkeypatch.setenv("MLCYCLE_PRINCIPAL", "alice")
    first = CliRunner().invoke(app, ["rollback", "--reason", "bad", *config])
    assert first.exit_code == 0, first.output
    assert "champion: v2 → v1" in first.output
    assert log.history(cfg.model.name, limit=1)[0].actor == "alice (unauthenticated, environment)"
    assert CliRunner().invoke(app, ["rollback", "--by", "person:bob", *config]).exit_code == 2  # no typed names
    second = CliRunner().invoke(app, ["rollback", "--reason", "again", *config])
    assert second.exit_code == 1
    assert "nothing to roll back to" in " ".join(second.output.split())
    assert champion(cfg, client) == "1"

    registry.promote(client, log, cfg.model.name, "2", "again")
    text = (cfg.root / "mlcycle.yaml").read_text()
    (cfg.root / "mlcycle.yaml").write_text(text + "\ngovernance:\n  roles: {operator: [oncall], trainer: [alice]}\n")
    refused = CliRunner().invoke(app, ["rollback", "--reason", "mine", *config])
    assert refused.exit_code == 1 and "needs the approver or operator role, which oncall hold" in refused.output
    assert champion(cfg, client) == "2" and log.history(cfg.model.name, limit=1)[0].action == "refused"
    monkeypatch.setenv("MLCYCLE_PRINCIPAL", "oncall")
    assert CliRunner().invoke(app, ["rollback", "--reason", "paged", *config]).exit_code == 0
    assert champion(cfg, client) == "1"


def test_a_promotion_log_from_before_the_action_column_is_upgraded(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(uri)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE mlcycle_promotion_log (id INTEGER PRIMARY KEY, at DATETIME NOT NULL, "
                             "model VARCHAR(256) NOT NULL, alias VARCHAR(64) NOT NULL, from_version VARCHAR(32), "
                             "to_version VARCHAR(32), actor VARCHAR(256) NOT NULL, reason TEXT NOT NULL)"))  # fmt: skip
        # v1 → v2 → v3, then the old rollback (its reason the user's text) back to v2.
        moves = [("NULL", 1, "first"), ("'1'", 2, "better"), ("'2'", 3, "better"), ("'3'", 2, "bad release")]
        old_rows = ", ".join(f"('2026-01-0{i} 00:00:00', 'm', 'champion', {prev}, '{to}', 'x', '{why}')"
                             for i, (prev, to, why) in enumerate(moves, 1))  # fmt: skip
        conn.execute(sa.text("INSERT INTO mlcycle_promotion_log (at, model, alias, from_version, to_version, "
                             f"actor, reason) VALUES {old_rows}"))  # fmt: skip
    log = registry.PromotionLog(uri)
    assert [(e.to_version, e.action) for e in log.history("m")][-1] == ("1", "legacy")
    # The old rollback (back to the champion before the current one) is replayed as a rollback:
    # the next rollback goes to v1, not back to v3.
    assert registry.champion_lineage(log, "m") == ["1", "2"]


@pytest.mark.parametrize("name", ["m' OR name LIKE '%", 'a"b', "", "x\\y", "n\x00"])
def test_a_model_name_that_would_change_the_mlflow_filter_is_refused(project, name: str) -> None:
    _, client, _ = project
    with pytest.raises(ValueError, match="registered model name"):
        list(registry.versions(client, name))


def test_versions_of_a_valid_name(project) -> None:
    cfg, client, _ = project
    assert [str(v.version) for v in registry.versions(client, cfg.model.name)] == ["1", "2", "3", "4"]


def _rows(n: int, variant: str, version: str, at: datetime) -> pd.DataFrame:
    frame = pd.DataFrame({c: [None] * n for c in COLUMNS})
    frame["request_id"] = [f"{variant}-{version}-{i}-{at.timestamp()}" for i in range(n)]
    frame["logged_at"] = pd.Timestamp(at)
    frame["user_id"], frame["merchant_id"], frame["transaction_id"] = range(n), 1, range(n)
    frame["amount"], frame["request_unix"] = 10.0, int(at.timestamp())
    frame["variant"], frame["model_version"], frame["shadow"] = variant, version, False
    frame["score"], frame["decision"], frame["threshold"], frame["latency_ms"] = 0.1, False, 0.5, 5.0
    frame["features_missing"], frame["features"] = "", "{}"
    return frame


def test_rollout_status_does_not_count_rows_after_the_canary_ended(project) -> None:
    """Issue 10, "found by trying it": after the canary ended and the challenger alias was removed,
    status counted 22 "challenger" predictions (a replica logs under the old policy until its next
    refresh). No canary runs then; while one runs, only the two aliased versions' rows since the
    policy changed count."""
    cfg, client, log = project
    registry.promote(client, log, cfg.model.name, "1", "first")
    registry.move_alias(client, log, cfg.model.name, registry.CHALLENGER, "2", "retrained")
    rollout.abort_canary(client, log, cfg.model.name, "canary failed")
    after = rollout.read_policy(client, cfg.model.name).updated_at + timedelta(microseconds=1)
    write_frame(
        cfg.predictions_dir, pd.concat([_rows(22, "challenger", "2", after), _rows(300, "champion", "1", after)])
    )
    out = CliRunner().invoke(app, ["rollout", "status", "--config", str(cfg.root / "mlcycle.yaml")])
    assert out.exit_code == 0, out.output
    assert "no canary running" in out.output and "challenger 22" not in out.output

    # A canary of v3 now: v2's late rows and rows before the policy change are not v3's evidence.
    registry.move_alias(client, log, cfg.model.name, registry.CHALLENGER, "3", "retrained again")
    policy = rollout.write_policy(client, log, cfg.model.name, rollout.RolloutPolicy(mode="canary", percent=50), "go")
    later = policy.updated_at + timedelta(seconds=1)
    write_frame(cfg.predictions_dir, pd.concat([_rows(5, "challenger", "3", policy.updated_at - timedelta(seconds=5)),
                                                _rows(40, "challenger", "2", later),
                                                _rows(7, "challenger", "3", later),
                                                _rows(250, "champion", "1", later)]))  # fmt: skip
    out = CliRunner().invoke(app, ["rollout", "status", "--config", str(cfg.root / "mlcycle.yaml")])
    assert out.exit_code == 0, out.output
    assert "v3 against v1" in out.output
    assert "challenger 7" in out.output and "champion 250" in out.output, out.output


def test_rollout_status_in_ab_mode_takes_and_records_a_look_of_the_sequential_test(project) -> None:
    """Each `rollout status` in ab mode is a look, remembered for the next process: 300 a side, then
    600 (10% vs 12% flagged, planned 686 per arm by the flag-rate formula): two looks, no stop."""
    from mlcycle.monitoring import ab

    cfg, client, log = project
    registry.promote(client, log, cfg.model.name, "1", "first")
    registry.move_alias(client, log, cfg.model.name, registry.CHALLENGER, "2", "retrained")
    policy = rollout.write_policy(client, log, cfg.model.name, rollout.RolloutPolicy(mode="ab", percent=50), "a/b")
    later = policy.updated_at + timedelta(seconds=1)

    def arm(variant: str, version: str, flagged_every: int, at: datetime) -> pd.DataFrame:
        rows = _rows(300, variant, version, at)
        rows["decision"] = np.arange(300) % flagged_every == 0
        return rows

    config = ["rollout", "status", "--config", str(cfg.root / "mlcycle.yaml")]
    write_frame(cfg.predictions_dir, pd.concat([arm("champion", "1", 10, later), arm("challenger", "2", 8, later)]))
    first = CliRunner().invoke(app, config)
    assert first.exit_code == 0, first.output
    assert "A/B on flag_rate: 300 champion / 300 challenger values, planned 686 per arm" in first.output
    assert "look 1: n 300 / 300" in first.output and "continue" in first.output
    later = later + timedelta(seconds=5)
    write_frame(cfg.predictions_dir, pd.concat([arm("champion", "1", 10, later), arm("challenger", "2", 8, later)]))
    second = CliRunner().invoke(app, config)
    assert "look 2: n 600 / 600" in second.output, second.output
    [record] = json.loads(ab.looks_path(cfg).read_text()).values()
    assert [[look["n_champion"], look["n_challenger"]] for look in record["looks"]] == [[300, 300], [600, 600]]
    assert record["planned_per_arm"] == 686
